//! The seeded Raft simulator: many seeds pass, a seed replays exactly, and
//! the checks fail when something is actually wrong.

use flotilla_raftgroup::{ConfState, Entry, EntryKind};
use flotilla_tools::sim::raft::runner::run_range;
use flotilla_tools::sim::raft::{run_seed, Options, Oracle, PlantedBug, Property, DEFAULT_TICKS};

/// Debug builds are an order of magnitude slower: shorter runs keep the
/// test reasonable there while release runs the default length.
fn ticks() -> u64 {
    if cfg!(debug_assertions) {
        300
    } else {
        DEFAULT_TICKS
    }
}

fn options() -> Options {
    Options {
        ticks: ticks(),
        ..Options::default()
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

#[test]
fn two_hundred_seeds_keep_every_property() {
    let summary = run_range(0..200, &options(), threads(), |_| {}, |_| {});
    let report: Vec<String> = summary.failures.iter().map(ToString::to_string).collect();
    assert!(report.is_empty(), "{}", report.join("\n\n"));
    assert_eq!(summary.passed, 200);
}

#[test]
fn a_seed_replays_its_exact_event_trace() {
    let options = Options {
        keep_trace: true,
        ..options()
    };
    for seed in [7, 4242] {
        let first = run_seed(seed, &options);
        let second = run_seed(seed, &options);
        assert!(first.outcome.is_ok(), "seed {seed}: {:?}", first.outcome);
        assert!(first.trace.len() > 1000, "seed {seed} did almost nothing");
        assert_eq!(first.trace, second.trace, "seed {seed} did not replay");
        assert_eq!(first.outcome.ok(), second.outcome.ok());
    }
    let other = run_seed(8, &options);
    assert_ne!(run_seed(7, &options).trace, other.trace);
}

#[test]
fn runs_do_real_work() {
    let mut committed = 0;
    let mut reads = 0;
    let mut snapshots = 0;
    let mut crashes = 0;
    let mut leader_terms = 0;
    for seed in 0..40 {
        let stats = run_seed(seed, &options())
            .outcome
            .unwrap_or_else(|failure| panic!("{failure}"));
        committed += stats.writes_committed;
        reads += stats.reads_served;
        snapshots += stats.snapshots_installed;
        crashes += stats.crashes;
        leader_terms += stats.leader_terms;
    }
    // Floors well below what 40 seeds do, scaled to the run length.
    let per_300_ticks = ticks() / 300;
    let floors = [
        (committed, 2000, "writes committed"),
        (reads, 400, "reads served"),
        (snapshots, 5, "snapshots installed"),
        (crashes, 20, "crashes"),
        (leader_terms, 50, "terms with a leader"),
    ];
    for (seen, floor, what) in floors {
        eprintln!("{seen} {what}");
        assert!(seen > floor * per_300_ticks, "only {seen} {what}");
    }
}

#[test]
fn the_oracle_rejects_a_conflicting_committed_entry() {
    let entry = |index, term, data: &[u8]| Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: data.to_vec().into(),
    };
    let mut oracle = Oracle::new(ConfState::with_voters([1, 2, 3]));
    oracle.observe_committed(1, 1, &entry(1, 1, b"x")).unwrap();
    oracle.observe_committed(1, 1, &entry(2, 1, b"y")).unwrap();
    oracle.observe_committed(2, 1, &entry(1, 1, b"x")).unwrap();
    let changed = oracle
        .observe_committed(3, 2, &entry(2, 2, b"z"))
        .unwrap_err();
    assert_eq!(changed.property, Property::CommittedNeverChanges);
    let gap = oracle
        .observe_committed(3, 2, &entry(4, 2, b"z"))
        .unwrap_err();
    assert_eq!(gap.property, Property::CommittedNeverChanges);
    assert_eq!(oracle.observe_leader(3, 1), Ok(true));
    assert_eq!(
        oracle.observe_leader(3, 2).unwrap_err().property,
        Property::ElectionSafety
    );
}

/// Runs seeds with a bug planted in the host and returns the properties
/// the simulator reported violated.
fn planted(bug: PlantedBug, seeds: std::ops::Range<u64>) -> Vec<Property> {
    let options = Options {
        planted_bug: Some(bug),
        ..options()
    };
    let summary = run_range(seeds, &options, threads(), |_| {}, |_| {});
    summary
        .failures
        .iter()
        .map(|failure| failure.property)
        .collect()
}

#[test]
fn reads_served_by_followers_without_the_leader_are_caught() {
    let found = planted(PlantedBug::StaleFollowerReads, 0..20);
    assert!(
        found
            .iter()
            .filter(|p| **p == Property::LinearizableRead)
            .count()
            >= 5,
        "stale reads went unnoticed: {found:?}"
    );
}

#[test]
fn votes_lost_in_a_crash_are_caught() {
    let found = planted(PlantedBug::ForgetVote, 0..200);
    assert!(
        found.contains(&Property::ElectionSafety),
        "double votes went unnoticed: {found:?}"
    );
}
