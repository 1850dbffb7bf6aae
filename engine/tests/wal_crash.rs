//! Crash at every point of a workload: every acknowledged batch is recovered,
//! nothing that was never appended appears, a batch cut by the crash is all
//! or nothing, and every group's log stays contiguous.

use std::sync::Arc;

use flotilla::wal::sim::{BatchGen, Oracle};
use flotilla::wal::sim_fs::{SimFs, SimRng};
use flotilla::wal::{Wal, WalConfig, WriteBatch};

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 64 << 10,
        cache_bytes_max: 16 << 10,
        recycle_segments_max: 1,
        prepare_in_background: false,
        ..WalConfig::default()
    }
}

fn open(fs: &SimFs) -> Wal {
    Wal::open_with_fs(Arc::new(fs.clone()), config()).expect("recovery must succeed after a crash")
}

fn assert_contiguous(wal: &Wal) {
    for group in wal.groups() {
        let (first, last) = (wal.first_index(group), wal.last_index(group));
        let got = wal.entries(group, first, last + 1, u64::MAX).unwrap();
        for (k, e) in got.iter().enumerate() {
            assert_eq!(e.index, first + k as u64, "group {group} has a hole");
        }
    }
}

/// Runs the workload until the power cut, returning the acknowledged model
/// and the batch that was in flight when the power went.
fn run_until_cut(fs: &SimFs, seed: u64, cut_at_op: u64) -> (Oracle, Option<WriteBatch>) {
    let wal = open(fs);
    let mut rng = SimRng::new(seed);
    let mut gen = BatchGen::new(8);
    let mut oracle = Oracle::new();
    fs.power_cut_in(cut_at_op);
    for step in 0..150u64 {
        if step % 40 == 39 {
            // Purge renames and deletes files: cut those too.
            for p in wal.groups_pinning(1) {
                if wal.rewrite_forward(p.group).is_err() {
                    return (oracle, None);
                }
            }
            if wal.purge().is_err() {
                return (oracle, None);
            }
        }
        let batch = gen.batch(&mut rng, &oracle);
        match wal.append(batch.clone()) {
            Ok(_) => oracle.apply(&batch).unwrap(),
            Err(_) => return (oracle, Some(batch)),
        }
    }
    (oracle, None)
}

#[test]
fn power_cut_at_every_operation_loses_no_acknowledged_batch() {
    let mut cut_batches_recovered = 0;
    let mut ops_reached = 0;
    for cut in (1..=900u64).step_by(3) {
        let fs = SimFs::new(cut);
        fs.set_tear_percent(60);
        let (oracle, in_flight) = run_until_cut(&fs, 7, cut);
        if !fs.is_powered_off() {
            break;
        }
        ops_reached = cut;
        fs.crash();
        let wal = open(&fs);
        assert_contiguous(&wal);
        if oracle.check(&wal).is_ok() {
            continue;
        }
        let batch = in_flight.unwrap_or_else(|| {
            panic!("cut {cut}: {}", oracle.check(&wal).unwrap_err());
        });
        let mut with = oracle.clone();
        with.apply(&batch).unwrap();
        with.check(&wal)
            .unwrap_or_else(|e| panic!("cut {cut}: neither with nor without: {e}"));
        cut_batches_recovered += 1;
    }
    assert!(
        ops_reached > 300,
        "the workload ended after {ops_reached} operations"
    );
    // A batch whose sync never returned may survive whole; it must sometimes
    // (write landed, crash before the sync) and must never be partial.
    assert!(cut_batches_recovered > 0);
}

#[test]
fn crash_after_acknowledgement_keeps_everything_even_with_tearing() {
    for seed in 0..20u64 {
        let fs = SimFs::new(seed);
        fs.set_tear_percent(100);
        let wal = open(&fs);
        let mut rng = SimRng::new(seed);
        let mut gen = BatchGen::new(20);
        let mut oracle = Oracle::new();
        for _ in 0..100 {
            let batch = gen.batch(&mut rng, &oracle);
            wal.append(batch.clone()).unwrap();
            oracle.apply(&batch).unwrap();
        }
        drop(wal);
        fs.crash();
        let wal = open(&fs);
        oracle
            .check(&wal)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_contiguous(&wal);
    }
}
