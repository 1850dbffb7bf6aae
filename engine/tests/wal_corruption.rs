//! Damage on a real disk: torn tails are repaired, anything else is reported
//! with the segment and offset, never skipped.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use flotilla::wal::format::segment_file_name;
use flotilla::wal::{LogEntry, Wal, WalConfig, WalError, WriteBatch, WritePosition};

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 64 << 10,
        recycle_segments_max: 0,
        ..WalConfig::default()
    }
}

fn batch(group: u64, index: u64, size: usize) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.add_entries(
        group,
        vec![LogEntry {
            index,
            term: 1,
            kind: 0,
            data: vec![index as u8; size],
        }],
    );
    b
}

/// Appends entries 1..=n of group 1, returning each batch's position.
fn fill(dir: &Path, n: u64, size: usize) -> Vec<WritePosition> {
    let wal = Wal::open(dir, config()).unwrap();
    (1..=n)
        .map(|i| wal.append(batch(1, i, size)).unwrap())
        .collect()
}

fn poke(dir: &Path, segment: u64, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(dir.join(segment_file_name(segment)))
        .unwrap();
    file.write_all_at(bytes, offset).unwrap();
    file.sync_all().unwrap();
}

fn flip(dir: &Path, segment: u64, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(segment_file_name(segment)))
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).unwrap();
    file.write_all_at(&[b[0] ^ 0x10], offset).unwrap();
    file.sync_all().unwrap();
}

fn corruption(result: Result<Wal, WalError>) -> (u64, u64, String) {
    match result {
        Err(WalError::Corruption {
            segment,
            offset,
            reason,
            ..
        }) => (segment, offset, reason),
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("expected corruption, the WAL opened"),
    }
}

#[test]
fn flipped_byte_mid_log_is_reported_with_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 20, 100);
    let victim = positions[7];
    flip(dir.path(), victim.segment, victim.offset + 16 + 5);
    let (segment, offset, reason) = corruption(Wal::open(dir.path(), config()));
    assert_eq!((segment, offset), (victim.segment, victim.offset));
    assert!(reason.contains("followed by a valid record"), "{reason}");
    let message = Wal::open(dir.path(), config()).unwrap_err().to_string();
    assert!(
        message.contains(&format!("offset {}", victim.offset)),
        "{message}"
    );
}

#[test]
fn damage_at_the_end_of_a_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 200, 1000);
    let last_of_first = positions.iter().rev().find(|p| p.segment == 1).unwrap();
    assert!(positions.last().unwrap().segment >= 2);
    flip(dir.path(), 1, last_of_first.offset + 16 + 1);
    let (segment, offset, _) = corruption(Wal::open(dir.path(), config()));
    assert_eq!((segment, offset), (1, last_of_first.offset));
}

#[test]
fn torn_tail_is_repaired_and_earlier_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 10, 300);
    let last = *positions.last().unwrap();
    // A torn write: the record's second half never reached the disk.
    poke(dir.path(), last.segment, last.offset + 160, &[0u8; 200]);
    let wal = Wal::open(dir.path(), config()).unwrap();
    let report = wal.recovery_report();
    assert!(report.tail_discarded);
    assert_eq!(report.end, last);
    assert_eq!(wal.last_index(1), 9, "only the torn batch is gone");
    let got = wal.entries(1, 1, 10, u64::MAX).unwrap();
    assert!(got.iter().all(|e| e.data == vec![e.index as u8; 300]));
    wal.append(batch(1, 10, 50)).unwrap();
    wal.append(batch(1, 11, 50)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), config()).unwrap();
    assert!(!wal.recovery_report().tail_discarded);
    assert_eq!(wal.last_index(1), 11);
}

#[test]
fn garbage_after_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 5, 64);
    let end = Wal::open(dir.path(), config())
        .unwrap()
        .recovery_report()
        .end;
    assert!(end > *positions.last().unwrap());
    let garbage: Vec<u8> = (0..500u32).map(|i| (i * 7 + 3) as u8).collect();
    poke(dir.path(), end.segment, end.offset, &garbage);
    let wal = Wal::open(dir.path(), config()).unwrap();
    assert!(wal.recovery_report().tail_discarded);
    assert_eq!(wal.last_index(1), 5);
}

#[test]
fn damaged_header_and_missing_segment_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 200, 1000);
    let segments = positions.last().unwrap().segment;
    assert!(segments >= 3);
    poke(dir.path(), 2, 3, b"X");
    let (segment, offset, reason) = corruption(Wal::open(dir.path(), config()));
    assert_eq!((segment, offset), (2, 0), "{reason}");
    std::fs::remove_file(dir.path().join(segment_file_name(2))).unwrap();
    let (segment, _, reason) = corruption(Wal::open(dir.path(), config()));
    assert_eq!(segment, 2);
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn recycled_segments_never_resurrect_stale_records() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        recycle_segments_max: 4,
        ..config()
    };
    let wal = Wal::open(dir.path(), config.clone()).unwrap();
    let mut next = 1;
    for round in 0..4u64 {
        for _ in 0..120 {
            wal.append(batch(round + 1, next, 900)).unwrap();
            next += 1;
        }
        let mut compact = WriteBatch::new();
        compact.compact_prefix(round + 1, next);
        wal.append(compact).unwrap();
        wal.purge().unwrap();
        next = 1;
    }
    assert!(wal.stats().rotations >= 6);
    assert!(wal.spare_count() > 0);
    wal.append(batch(9, 1, 10)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), config).unwrap();
    assert_eq!(wal.groups(), vec![1, 2, 3, 4, 9]);
    for g in 1..=4 {
        assert_eq!(wal.first_index(g), 121);
        assert_eq!(wal.last_index(g), 120);
    }
    assert_eq!(
        wal.entries(9, 1, 2, u64::MAX).unwrap()[0].data,
        vec![1u8; 10]
    );
}

#[test]
fn bit_rot_under_a_running_wal_is_caught_when_the_entry_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        cache_bytes_max: 0,
        ..config()
    };
    let wal = Wal::open(dir.path(), config).unwrap();
    let mut positions = Vec::new();
    for i in 1..=5 {
        positions.push(wal.append(batch(1, i, 100)).unwrap());
    }
    assert_eq!(wal.entries(1, 1, 6, u64::MAX).unwrap().len(), 5);
    let third = positions[2];
    // Inside the entry's data: record header, item header, entry header.
    flip(dir.path(), third.segment, third.offset + 16 + 13 + 21 + 10);
    match wal.entries(1, 1, 6, u64::MAX) {
        Err(WalError::Corruption {
            segment,
            path,
            reason,
            ..
        }) => {
            assert_eq!(segment, third.segment);
            assert!(path.starts_with(dir.path()), "{}", path.display());
            assert!(reason.contains("entry 3"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(wal.entries(1, 4, 6, u64::MAX).unwrap().len(), 2);
}

/// The index keeps 32-bit offsets because no segment is larger than 4 GiB;
/// a larger segment file is damage, named, not a reason to panic.
#[test]
fn a_segment_file_over_4_gib_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3, 100);
    let path = dir.path().join(segment_file_name(1));
    // Sparse: no data is written.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(WalConfig::SEGMENT_BYTES_MAX + 4096).unwrap();
    drop(file);
    match Wal::open(dir.path(), config()) {
        Err(WalError::Corruption {
            segment, reason, ..
        }) => {
            assert_eq!(segment, 1);
            assert!(reason.contains("more than"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}
