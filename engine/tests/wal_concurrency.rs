//! Many threads appending at once: each append returns only when durable,
//! syncs are shared, and a crash in the middle keeps every acknowledged batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use flotilla::wal::sim_fs::SimFs;
use flotilla::wal::{LogEntry, SyncMode, Wal, WalConfig, WalError, WriteBatch};

const THREADS: u64 = 8;

fn entry(group: u64, index: u64) -> LogEntry {
    LogEntry {
        index,
        term: 1,
        kind: 0,
        data: vec![(group * 31 + index) as u8; 200 + (index % 7) as usize * 100],
    }
}

fn batch(group: u64, index: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.add_entries(group, vec![entry(group, index)]);
    b
}

/// Each thread appends to its own group and checks what it can see right
/// after each acknowledgement. Returns how many batches each thread got
/// acknowledged before the first error.
fn hammer(wal: &Wal, per_thread: u64) -> Vec<u64> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..=THREADS)
            .map(|group| {
                let stop = &stop;
                s.spawn(move || {
                    let mut last_position = None;
                    for index in 1..=per_thread {
                        if stop.load(Ordering::Relaxed) {
                            return index - 1;
                        }
                        match wal.append(batch(group, index)) {
                            Ok(position) => {
                                assert!(Some(position) > last_position, "positions grow");
                                last_position = Some(position);
                                assert_eq!(wal.last_index(group), index, "visible once durable");
                            }
                            Err(_) => {
                                stop.store(true, Ordering::Relaxed);
                                return index - 1;
                            }
                        }
                    }
                    per_thread
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn check_groups(wal: &Wal, acked: &[u64]) {
    for (k, &n) in acked.iter().enumerate() {
        let group = k as u64 + 1;
        let last = wal.last_index(group);
        // The batch in flight when the power went may or may not survive.
        assert!(
            last == n || last == n + 1,
            "group {group}: {n} acknowledged, {last} recovered"
        );
        for e in wal.entries(group, 1, last + 1, u64::MAX).unwrap() {
            assert_eq!(e, entry(group, e.index));
        }
    }
}

#[test]
fn eight_threads_share_syncs_on_a_real_disk() {
    for mode in [SyncMode::LeaderFollower, SyncMode::SyncThread] {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 256 << 10,
            cache_bytes_max: 32 << 10,
            sync_mode: mode,
            ..WalConfig::default()
        };
        let wal = Wal::open(dir.path(), config.clone()).unwrap();
        let acked = hammer(&wal, 150);
        assert_eq!(acked, vec![150; THREADS as usize]);
        let stats = wal.stats();
        assert_eq!(stats.batches, 150 * THREADS);
        assert!(stats.rotations >= 2, "{stats:?}");
        // Group commit: concurrent batches share records and syncs.
        assert!(
            stats.records < stats.batches,
            "{mode:?}: {} records for {} batches",
            stats.records,
            stats.batches
        );
        drop(wal);
        let wal = Wal::open(dir.path(), config).unwrap();
        check_groups(&wal, &acked);
    }
}

#[test]
fn crash_during_concurrent_appends_keeps_every_acknowledged_batch() {
    for (seed, mode) in [
        (1, SyncMode::LeaderFollower),
        (2, SyncMode::SyncThread),
        (3, SyncMode::LeaderFollower),
        (4, SyncMode::SyncThread),
    ] {
        let fs = SimFs::new(seed);
        fs.set_tear_percent(50);
        let config = WalConfig {
            segment_bytes: 64 << 10,
            cache_bytes_max: 0,
            sync_mode: mode,
            prepare_in_background: false,
            ..WalConfig::default()
        };
        let wal = Wal::open_with_fs(Arc::new(fs.clone()), config.clone()).unwrap();
        fs.power_cut_in(150 + seed * 37);
        let acked = hammer(&wal, 400);
        assert!(fs.is_powered_off());
        assert!(acked.iter().sum::<u64>() > 50, "{acked:?}");
        drop(wal);
        fs.crash();
        let wal = Wal::open_with_fs(Arc::new(fs.clone()), config).unwrap();
        check_groups(&wal, &acked);
    }
}

#[test]
fn appends_reads_purges_and_rewrites_run_concurrently() {
    for mode in [SyncMode::LeaderFollower, SyncMode::SyncThread] {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 64 << 10,
            cache_bytes_max: 16 << 10,
            sync_mode: mode,
            recycle_segments_max: 2,
            ..WalConfig::default()
        };
        let wal = Wal::open(dir.path(), config.clone()).unwrap();
        let writers_done = AtomicBool::new(false);
        let writers_finished = AtomicU64::new(0);
        const WRITERS: u64 = 6;
        const PER_WRITER: u64 = 300;
        std::thread::scope(|s| {
            for group in 1..=WRITERS {
                let (wal, finished) = (&wal, &writers_finished);
                s.spawn(move || {
                    // Counts the writer as finished even if it panics, so the
                    // test fails instead of hanging.
                    let _finished = Finished(finished);
                    for index in 1..=PER_WRITER {
                        wal.append(batch(group, index)).unwrap();
                        // Keep a short live tail, as a host that snapshots.
                        if index % 25 == 0 {
                            let mut b = WriteBatch::new();
                            b.compact_prefix(group, index - 5);
                            wal.append(b).unwrap();
                        }
                    }
                });
            }
            let (wal, done) = (&wal, &writers_done);
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    for p in wal.groups_pinning(2) {
                        wal.rewrite_forward(p.group).unwrap();
                    }
                    wal.purge().unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            });
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    for group in 1..=WRITERS {
                        let (first, last) = (wal.first_index(group), wal.last_index(group));
                        // Compaction may race ahead of the read; anything
                        // returned must be exactly what was written.
                        match wal.entries(group, first, last + 1, u64::MAX) {
                            Ok(got) => {
                                for e in got {
                                    assert_eq!(e, entry(group, e.index));
                                }
                            }
                            Err(WalError::EntryCompacted { .. }) => {}
                            Err(e) => panic!("group {group}: {e}"),
                        }
                    }
                }
            });
            while writers_finished.load(Ordering::Relaxed) < WRITERS {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            writers_done.store(true, Ordering::Relaxed);
        });
        assert!(
            wal.stats().segments_freed > 0,
            "{mode:?}: nothing was purged"
        );
        let segments = wal.segment_count();
        drop(wal);
        let wal = Wal::open(dir.path(), config).unwrap();
        assert_eq!(wal.segment_count(), segments);
        for group in 1..=WRITERS {
            assert_eq!(wal.first_index(group), PER_WRITER - 5);
            assert_eq!(wal.last_index(group), PER_WRITER);
            for e in wal
                .entries(group, PER_WRITER - 5, PER_WRITER + 1, u64::MAX)
                .unwrap()
            {
                assert_eq!(e, entry(group, e.index));
            }
        }
    }
}

struct Finished<'a>(&'a AtomicU64);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
