//! A range of simulator seeds, as `flotilla sim wal --seeds A..B` runs them.

use flotilla::wal::sim::run_seed;

#[test]
fn simulator_seeds_pass() {
    let mut crashes = 0;
    let mut freed = 0;
    let mut failed_appends = 0;
    for seed in 0..24 {
        let report = run_seed(seed).unwrap_or_else(|e| panic!("{e}"));
        crashes += report.crashes;
        freed += report.segments_freed;
        failed_appends += report.appends_failed;
    }
    // The simulation must actually exercise crashes, purges and faults.
    assert!(crashes > 24, "{crashes} crashes");
    assert!(freed > 0, "no segment was ever freed");
    assert!(failed_appends > 0, "no fault ever hit an append");
}
