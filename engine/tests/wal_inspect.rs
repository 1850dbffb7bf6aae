//! `wal::inspect` verifies a WAL directory without changing it.

use flotilla::wal::inspect::inspect;
use flotilla::wal::{LogEntry, Wal, WalConfig, WalError, WriteBatch};

fn write_wal(dir: &std::path::Path) {
    let config = WalConfig {
        segment_bytes: 64 << 10,
        ..WalConfig::default()
    };
    let wal = Wal::open(dir, config).unwrap();
    for index in 1..=60u64 {
        let mut batch = WriteBatch::new();
        for group in 1..=3u64 {
            batch.add_entries(
                group,
                vec![LogEntry {
                    index,
                    term: 1,
                    kind: 0,
                    data: vec![group as u8; 1000],
                }],
            );
        }
        wal.append(batch).unwrap();
    }
}

fn snapshot_dir(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn inspect_reports_segments_records_and_groups_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path());
    let before = snapshot_dir(dir.path());
    let report = inspect(dir.path(), true).unwrap();
    assert_eq!(before, snapshot_dir(dir.path()), "inspect must not write");
    assert!(
        report.segments.len() >= 3,
        "{} segments",
        report.segments.len()
    );
    assert_eq!(report.segments.iter().map(|s| s.records).sum::<u64>(), 60);
    assert!(report.segments[..report.segments.len() - 1]
        .iter()
        .all(|s| s.sealed));
    assert_eq!(report.groups.len(), 3);
    assert!(report
        .groups
        .iter()
        .all(|g| g.first_index == 1 && g.last_index == 60));
    assert_eq!(report.records.iter().filter(|r| !r.seal).count(), 60);
    assert!(report.records[0].items[0].starts_with("entries g=1 1..=1"));
}

#[test]
fn inspect_names_the_offset_of_corruption_and_tolerates_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path());
    let report = inspect(dir.path(), true).unwrap();
    // Flip a byte inside the second record of the first segment.
    let first = &report.segments[0];
    let target = report.records[1].offset + 40;
    let mut bytes = std::fs::read(&first.path).unwrap();
    bytes[target as usize] ^= 0x40;
    std::fs::write(&first.path, &bytes).unwrap();
    match inspect(dir.path(), false) {
        Err(WalError::Corruption {
            segment, offset, ..
        }) => {
            assert_eq!(segment, first.seq);
            assert_eq!(offset, report.records[1].offset);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    bytes[target as usize] ^= 0x40;
    std::fs::write(&first.path, &bytes).unwrap();

    // Tear the last record of the last segment: a torn tail, not an error.
    let last = report.segments.last().unwrap();
    let last_record = report
        .records
        .iter()
        .rev()
        .find(|r| r.segment == last.seq)
        .unwrap();
    let mut bytes = std::fs::read(&last.path).unwrap();
    bytes[(last_record.offset + 20) as usize] ^= 0xff;
    std::fs::write(&last.path, &bytes).unwrap();
    let torn = inspect(dir.path(), false).unwrap();
    assert!(torn.segments.last().unwrap().torn_tail);
    assert_eq!(torn.segments.iter().map(|s| s.records).sum::<u64>(), 59);
}
