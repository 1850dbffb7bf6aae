//! Behaviour of the WAL's public API that a Raft storage adapter relies on.

use std::sync::Arc;

use flotilla::wal::sim_fs::SimFs;
use flotilla::wal::{
    HardState, LogEntry, PinReason, SyncMode, Wal, WalConfig, WalError, WriteBatch,
};

fn entry(index: u64, term: u64, data: &[u8]) -> LogEntry {
    LogEntry {
        index,
        term,
        kind: 0,
        data: data.to_vec(),
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64, size: usize) -> Vec<LogEntry> {
    range
        .map(|i| entry(i, term, &vec![i as u8; size]))
        .collect()
}

fn small_config() -> WalConfig {
    WalConfig {
        segment_bytes: 64 << 10,
        cache_bytes_max: 0,
        prepare_in_background: false,
        ..WalConfig::default()
    }
}

fn sim_wal(fs: &SimFs, config: WalConfig) -> Wal {
    Wal::open_with_fs(Arc::new(fs.clone()), config).expect("open")
}

fn append_entries(wal: &Wal, group: u64, list: Vec<LogEntry>) {
    let mut b = WriteBatch::new();
    b.add_entries(group, list);
    wal.append(b).expect("append");
}

#[test]
fn one_batch_carries_many_groups_and_reads_back_after_reopen() {
    let fs = SimFs::new(1);
    let wal = sim_wal(&fs, small_config());
    let mut b = WriteBatch::new();
    b.add_entries(1, entries(1..=3, 1, 10))
        .add_entries(2, entries(1..=2, 4, 20))
        .set_hard_state(
            2,
            HardState {
                term: 4,
                vote: 2,
                commit: 1,
            },
        );
    wal.append(b).unwrap();
    for w in [wal, sim_wal(&fs, small_config())] {
        assert_eq!(w.groups(), vec![1, 2]);
        assert_eq!((w.first_index(1), w.last_index(1)), (1, 3));
        assert_eq!(w.entries(2, 1, 3, u64::MAX).unwrap(), entries(1..=2, 4, 20));
        assert_eq!(w.term(2, 2).unwrap(), 4);
        assert_eq!(w.term(2, 0).unwrap(), 0);
        assert_eq!(w.hard_state(2).unwrap().vote, 2);
        assert_eq!(w.hard_state(1), None);
    }
}

#[test]
fn conflicting_append_replaces_the_suffix() {
    let fs = SimFs::new(2);
    let wal = sim_wal(&fs, small_config());
    append_entries(&wal, 5, entries(1..=5, 1, 8));
    append_entries(&wal, 5, entries(3..=4, 2, 8));
    assert_eq!(wal.last_index(5), 4);
    assert_eq!(wal.term(5, 2).unwrap(), 1);
    assert_eq!(wal.term(5, 3).unwrap(), 2);
    let reopened = sim_wal(&fs, small_config());
    assert_eq!(reopened.last_index(5), 4);
    assert_eq!(reopened.term(5, 4).unwrap(), 2);
}

#[test]
fn truncate_compact_and_snapshot_marker_move_the_log_bounds() {
    let fs = SimFs::new(3);
    let wal = sim_wal(&fs, small_config());
    append_entries(&wal, 1, entries(1..=10, 3, 4));
    let mut b = WriteBatch::new();
    b.truncate_suffix(1, 8).compact_prefix(1, 4);
    wal.append(b).unwrap();
    assert_eq!((wal.first_index(1), wal.last_index(1)), (4, 7));
    assert_eq!(wal.term(1, 3).unwrap(), 3, "term before the log is kept");
    assert!(matches!(
        wal.term(1, 2),
        Err(WalError::EntryCompacted { first_index: 4, .. })
    ));
    assert!(matches!(
        wal.entries(1, 3, 5, u64::MAX),
        Err(WalError::EntryCompacted { .. })
    ));
    assert!(matches!(
        wal.entries(1, 4, 9, u64::MAX),
        Err(WalError::EntryUnavailable { last_index: 7, .. })
    ));
    let mut b = WriteBatch::new();
    b.snapshot_marker(1, 100, 9);
    wal.append(b).unwrap();
    let reopened = sim_wal(&fs, small_config());
    for w in [&wal, &reopened] {
        assert_eq!((w.first_index(1), w.last_index(1)), (101, 100));
        assert_eq!(w.term(1, 100).unwrap(), 9);
    }
    append_entries(&reopened, 1, entries(101..=102, 9, 4));
    assert_eq!(reopened.last_index(1), 102);
}

#[test]
fn invalid_batches_are_rejected_whole() {
    let fs = SimFs::new(4);
    let wal = sim_wal(&fs, small_config());
    append_entries(&wal, 1, entries(1..=3, 1, 4));
    let gap = {
        let mut b = WriteBatch::new();
        b.add_entries(2, entries(1..=1, 1, 4))
            .add_entries(1, entries(5..=6, 1, 4));
        b
    };
    assert!(matches!(wal.append(gap), Err(WalError::InvalidBatch(_))));
    assert_eq!(
        wal.last_index(2),
        0,
        "no part of an invalid batch is applied"
    );
    let mut not_consecutive = WriteBatch::new();
    not_consecutive.add_entries(1, vec![entry(4, 1, b""), entry(6, 1, b"")]);
    assert!(matches!(
        wal.append(not_consecutive),
        Err(WalError::InvalidBatch(_))
    ));
    let mut below_first = WriteBatch::new();
    below_first.compact_prefix(1, 3).truncate_suffix(1, 2);
    assert!(matches!(
        wal.append(below_first),
        Err(WalError::InvalidBatch(_))
    ));
    assert!(matches!(
        wal.append(WriteBatch::new()),
        Err(WalError::InvalidBatch(_))
    ));
    let mut too_big = WriteBatch::new();
    too_big.add_entries(1, vec![entry(4, 1, &vec![0; 70 << 10])]);
    assert!(matches!(
        wal.append(too_big),
        Err(WalError::BatchTooLarge { .. })
    ));
    assert_eq!(wal.last_index(1), 3);
}

#[test]
fn removed_groups_are_forgotten_and_can_start_over() {
    let fs = SimFs::new(5);
    let wal = sim_wal(&fs, small_config());
    append_entries(&wal, 9, entries(1..=4, 1, 4));
    let mut b = WriteBatch::new();
    b.remove_group(9);
    wal.append(b).unwrap();
    assert!(wal.groups().is_empty());
    append_entries(&wal, 9, entries(1..=1, 2, 4));
    let reopened = sim_wal(&fs, small_config());
    assert_eq!(reopened.groups(), vec![9]);
    assert_eq!(reopened.entries(9, 1, 2, u64::MAX).unwrap()[0].term, 2);
}

#[test]
fn max_bytes_limits_a_read_but_returns_at_least_one_entry() {
    let fs = SimFs::new(6);
    let wal = sim_wal(&fs, small_config());
    append_entries(&wal, 1, entries(1..=10, 1, 100));
    let one = wal.entries(1, 1, 11, 1).unwrap();
    assert_eq!(one.len(), 1);
    let size = one[0].size_bytes() as u64;
    assert_eq!(wal.entries(1, 1, 11, size * 3).unwrap().len(), 3);
    assert_eq!(wal.entries(1, 1, 11, size * 3 - 1).unwrap().len(), 2);
    assert_eq!(wal.entries(1, 4, 4, 0).unwrap().len(), 0);
}

#[test]
fn cache_is_bounded_and_old_entries_are_read_from_segments() {
    let fs = SimFs::new(7);
    let config = WalConfig {
        cache_bytes_max: 4 << 10,
        ..small_config()
    };
    let wal = sim_wal(&fs, config);
    for g in 1..=20u64 {
        append_entries(&wal, g, entries(1..=20, 1, 100));
    }
    assert!(
        wal.cache_bytes() <= 4 << 10,
        "cache holds {}",
        wal.cache_bytes()
    );
    assert!(wal.cache_bytes() > 0);
    for g in 1..=20u64 {
        assert_eq!(
            wal.entries(g, 1, 21, u64::MAX).unwrap(),
            entries(1..=20, 1, 100)
        );
    }
}

#[test]
fn segments_rotate_and_purge_frees_what_no_group_needs() {
    let fs = SimFs::new(8);
    let config = WalConfig {
        recycle_segments_max: 1,
        ..small_config()
    };
    let wal = sim_wal(&fs, config.clone());
    // A cold group pins the first segment.
    append_entries(&wal, 1, entries(1..=2, 1, 100));
    for i in 0..40u64 {
        append_entries(&wal, 2, entries(i * 10 + 1..=i * 10 + 10, 1, 400));
        let mut b = WriteBatch::new();
        b.compact_prefix(2, i * 10 + 11);
        wal.append(b).unwrap();
    }
    let before = wal.segment_count();
    assert!(before >= 3, "only {before} segments");
    assert_eq!(wal.purge().unwrap().segments_deleted, 0);
    assert_eq!(wal.segment_count(), before, "group 1 pins segment 1");
    let pinning = wal.groups_pinning(1);
    assert_eq!(pinning.len(), 1);
    assert_eq!(
        (pinning[0].group, pinning[0].segment, pinning[0].reason),
        (1, 1, PinReason::Entries)
    );
    wal.rewrite_forward(1).unwrap();
    let report = wal.purge().unwrap();
    assert_eq!(
        report.segments_recycled + report.segments_deleted,
        before - 1
    );
    assert_eq!(wal.segment_count(), 1);
    assert!(wal.groups_pinning(1).is_empty());
    // Spares (recycled or made ahead of time) stay within the configured bound.
    assert_eq!(wal.spare_count(), 1);
    assert_eq!(
        wal.total_bytes(),
        2 * config.segment_bytes,
        "one segment plus one spare"
    );
    drop(wal);
    let reopened = sim_wal(&fs, config);
    assert_eq!(
        reopened.entries(1, 1, 3, u64::MAX).unwrap(),
        entries(1..=2, 1, 100)
    );
    assert_eq!(reopened.first_index(2), 401);
    assert_eq!(reopened.term(2, 400).unwrap(), 1);
}

#[test]
fn purge_restates_hard_states_instead_of_keeping_old_segments() {
    let fs = SimFs::new(9);
    let wal = sim_wal(&fs, small_config());
    let hs = HardState {
        term: 7,
        vote: 3,
        commit: 0,
    };
    let mut b = WriteBatch::new();
    b.set_hard_state(1, hs).snapshot_marker(3, 50, 6);
    wal.append(b).unwrap();
    for i in 0..60u64 {
        append_entries(&wal, 2, entries(i * 10 + 1..=i * 10 + 10, 1, 400));
        let mut b = WriteBatch::new();
        b.compact_prefix(2, i * 10 + 11);
        wal.append(b).unwrap();
    }
    assert!(wal.segment_count() >= 3);
    let report = wal.purge().unwrap();
    assert_eq!(report.groups_restated, 2);
    assert_eq!(wal.segment_count(), 1);
    drop(wal);
    let reopened = sim_wal(&fs, small_config());
    assert_eq!(reopened.hard_state(1), Some(hs));
    assert_eq!(reopened.first_index(3), 51);
    assert_eq!(reopened.term(3, 50).unwrap(), 6);
}

#[test]
fn full_wal_refuses_appends_but_accepts_compaction() {
    let fs = SimFs::new(10);
    let config = WalConfig {
        segment_count_max: 2,
        ..small_config()
    };
    let wal = sim_wal(&fs, config);
    let mut next = 1u64;
    let err = loop {
        let mut b = WriteBatch::new();
        b.add_entries(1, entries(next..=next + 9, 1, 400));
        match wal.append(b) {
            Ok(_) => next += 10,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, WalError::Full { segments: 2 }), "{err}");
    let mut compact = WriteBatch::new();
    compact.compact_prefix(1, next);
    wal.append(compact)
        .expect("compaction may use the reserve segment");
    let report = wal.purge().unwrap();
    assert!(report.segments_deleted + report.segments_recycled >= 1);
    let mut b = WriteBatch::new();
    b.add_entries(1, entries(next..=next, 1, 10));
    wal.append(b).unwrap();
}

#[test]
fn invalid_config_is_rejected_with_the_field_named() {
    let fs = SimFs::new(11);
    let bad = WalConfig {
        segment_bytes: 1000,
        ..WalConfig::default()
    };
    let err = Wal::open_with_fs(Arc::new(fs), bad).unwrap_err();
    assert!(err.to_string().contains("segment_bytes"), "{err}");
}

#[test]
fn sync_thread_mode_behaves_like_leader_follower() {
    let fs = SimFs::new(12);
    let config = WalConfig {
        sync_mode: SyncMode::SyncThread,
        ..small_config()
    };
    let wal = sim_wal(&fs, config.clone());
    for i in 0..50u64 {
        append_entries(&wal, i % 5, entries(i / 5 + 1..=i / 5 + 1, 1, 300));
    }
    drop(wal);
    fs.crash();
    let reopened = sim_wal(&fs, config);
    for g in 0..5 {
        assert_eq!(reopened.last_index(g), 10);
    }
}

#[test]
fn purge_frees_nothing_on_the_strength_of_a_compaction_that_was_not_synced() {
    let fs = SimFs::new(12);
    let wal = sim_wal(&fs, small_config());
    let mut next = 1;
    while wal.segment_count() < 3 {
        append_entries(&wal, 1, entries(next..=next + 9, 1, 400));
        next += 10;
    }
    // The compaction is written but its sync fails, so a crash may lose it:
    // the segments it would free still hold group 1's only copy.
    fs.fail_op_in(2);
    let mut compact = WriteBatch::new();
    compact.compact_prefix(1, next);
    assert!(wal.append(compact).is_err());
    let purged = wal.purge();
    assert!(
        matches!(purged, Err(WalError::Poisoned { .. })),
        "{purged:?}"
    );
    drop(wal);
    fs.crash();
    let reopened = sim_wal(&fs, small_config());
    assert_eq!(reopened.first_index(1), 1);
    assert_eq!(
        reopened.entries(1, 1, next, u64::MAX).unwrap(),
        entries(1..=next - 1, 1, 400)
    );
}
