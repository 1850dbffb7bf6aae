//! `flotilla wal inspect|check` and `flotilla sim wal`, run as a user would.

use std::process::Command;

use flotilla::wal::inspect::inspect;
use flotilla::wal::{LogEntry, Wal, WalConfig, WriteBatch};

fn flotilla(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .expect("run flotilla");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn write_wal(dir: &std::path::Path) {
    let config = WalConfig {
        segment_bytes: 64 << 10,
        ..WalConfig::default()
    };
    let wal = Wal::open(dir, config).unwrap();
    for index in 1..=40u64 {
        let mut batch = WriteBatch::new();
        for group in [3u64, 9] {
            batch.add_entries(
                group,
                vec![LogEntry {
                    index,
                    term: 2,
                    kind: 0,
                    data: vec![7; 1500],
                }],
            );
        }
        wal.append(batch).unwrap();
    }
}

#[test]
fn check_and_inspect_a_sound_wal() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path());
    let path = dir.path().to_str().unwrap();
    let (ok, text) = flotilla(&["wal", "check", path]);
    assert!(ok, "{text}");
    assert!(text.starts_with("ok: "), "{text}");
    assert!(text.contains("40 records, 2 groups"), "{text}");
    let (ok, text) = flotilla(&["wal", "inspect", path, "--records"]);
    assert!(ok, "{text}");
    assert!(text.contains("group        3  entries 1..=40"), "{text}");
    assert!(text.contains("entries g=9 40..=40"), "{text}");
}

#[test]
fn check_fails_on_corruption_and_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_wal(dir.path());
    let report = inspect(dir.path(), true).unwrap();
    let record = &report.records[3];
    let segment = report
        .segments
        .iter()
        .find(|s| s.seq == record.segment)
        .unwrap();
    let mut bytes = std::fs::read(&segment.path).unwrap();
    bytes[record.offset as usize + 100] ^= 1;
    std::fs::write(&segment.path, bytes).unwrap();
    let (ok, text) = flotilla(&["wal", "check", dir.path().to_str().unwrap()]);
    assert!(!ok, "corruption must fail the check: {text}");
    assert!(
        text.contains(&format!("offset {}", record.offset)),
        "{text}"
    );
    let (ok, _) = flotilla(&["wal", "inspect", dir.path().to_str().unwrap()]);
    assert!(!ok);
}

#[test]
fn sim_wal_reports_seeds_passed() {
    let (ok, text) = flotilla(&["sim", "wal", "--seeds", "0..12"]);
    assert!(ok, "{text}");
    assert!(
        text.trim_end().ends_with("12 seeds passed, 0 failed"),
        "{text}"
    );
}
