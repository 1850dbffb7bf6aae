//! A real `kill -9`: a child process appends to the WAL from several
//! threads and reports every acknowledged batch on stdout; the parent kills
//! it mid-stream, reopens the WAL and finds every acknowledged entry.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::wal::{LogEntry, Wal, WalConfig, WriteBatch};

const CHILD_ENV: &str = "FLOTILLA_WAL_KILL_CHILD_DIR";
const THREADS: u64 = 4;
const GROUPS_PER_THREAD: u64 = 8;

fn wal_config() -> WalConfig {
    WalConfig {
        segment_bytes: 1 << 20,
        ..WalConfig::default()
    }
}

fn payload(group: u64, index: u64) -> Vec<u8> {
    format!("group {group} entry {index} ")
        .repeat(8)
        .into_bytes()
}

/// The child: append until killed (or 60 s pass), printing `ack G I` once
/// entries up to `I` of group `G` are durable.
fn child(dir: &str) {
    let wal = Arc::new(Wal::open(dir, wal_config()).expect("child opens the WAL"));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (wal, out) = (Arc::clone(&wal), Arc::clone(&out));
            scope.spawn(move || {
                let groups: Vec<u64> = (0..GROUPS_PER_THREAD)
                    .map(|g| thread * GROUPS_PER_THREAD + g + 1)
                    .collect();
                let mut next = vec![1u64; groups.len()];
                let mut turn = 0usize;
                while Instant::now() < deadline {
                    let slot = turn % groups.len();
                    turn += 1;
                    let group = groups[slot];
                    let count = 1 + (turn % 5) as u64;
                    let entries = (0..count)
                        .map(|i| LogEntry {
                            index: next[slot] + i,
                            term: 1,
                            kind: 0,
                            data: payload(group, next[slot] + i),
                        })
                        .collect();
                    let mut batch = WriteBatch::new();
                    batch.add_entries(group, entries);
                    wal.append(batch).expect("child append");
                    next[slot] += count;
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ack {group} {}", next[slot] - 1).unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

#[test]
fn kill_dash_nine_loses_no_acknowledged_write() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut process = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_dash_nine_loses_no_acknowledged_write",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let stdout = process.stdout.take().unwrap();
    let mut acked = std::collections::BTreeMap::<u64, u64>::new();
    let mut acks = 0;
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Some(rest) = line.strip_prefix("ack ") else {
            continue;
        };
        let mut parts = rest.split(' ').map(|p| p.parse::<u64>().unwrap());
        let (group, index) = (parts.next().unwrap(), parts.next().unwrap());
        let slot = acked.entry(group).or_default();
        *slot = (*slot).max(index);
        acks += 1;
        if acks >= 3000 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    // SIGKILL: no destructors, no flushing, mid-append on several threads.
    process.kill().expect("kill -9 the writer");
    process.wait().unwrap();
    assert!(acks > 100, "the writer acknowledged only {acks} batches");

    let wal = Wal::open(dir.path(), wal_config()).expect("reopen after kill -9");
    for (&group, &index) in &acked {
        let last = wal.last_index(group);
        assert!(
            last >= index,
            "group {group}: acknowledged {index}, recovered {last}"
        );
        let entries = wal.entries(group, 1, last + 1, u64::MAX).unwrap();
        assert_eq!(
            entries.len() as u64,
            last,
            "group {group} log is not contiguous"
        );
        for entry in entries {
            assert_eq!(entry.data, payload(group, entry.index), "group {group}");
        }
    }
}
