//! Timing runs behind the WAL's design choices. Ignored by default (they
//! need a release build and a quiet machine):
//!
//! ```text
//! cargo test -p flotilla --release --test wal_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Every figure is printed next to its baseline from the same run.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla::wal::{DiskFs, LogEntry, SyncMode, Wal, WalConfig, WalFs, WriteBatch};

const RUN: Duration = Duration::from_secs(2);

/// Appends `bytes`-sized writes at increasing offsets for `RUN`, syncing
/// each, and returns syncs per second.
fn pwrite_rate(path: &Path, bytes: usize) -> f64 {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    let buf = vec![0xabu8; bytes];
    let len = file.metadata().unwrap().len();
    let (start, mut n, mut offset) = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < RUN && offset + bytes as u64 <= len {
        file.write_all_at(&buf, offset).unwrap();
        file.sync_data().unwrap();
        offset += bytes as u64;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Same, but storing through a shared mapping and `msync`ing the range.
fn mmap_store_rate(path: &Path, bytes: usize) -> f64 {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: the file is private to this test, preallocated to `len`, and
    // nothing else maps or truncates it while the mapping lives.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
    let buf = vec![0xcdu8; bytes];
    let (start, mut n, mut offset) = (Instant::now(), 0u64, 0usize);
    while start.elapsed() < RUN && offset + bytes <= len {
        map[offset..offset + bytes].copy_from_slice(&buf);
        map.flush_range(offset, bytes).unwrap();
        offset += bytes;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "timing; run in release on a quiet machine"]
fn append_paths_fresh_written_and_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let fs = DiskFs::new(dir.path()).unwrap();
    for bytes in [4usize << 10, 64 << 10] {
        let name = format!("bench-{bytes}");
        fs.create(&name, 256 << 20).unwrap();
        let path = dir.path().join(&name);
        let fresh = pwrite_rate(&path, bytes);
        let written = pwrite_rate(&path, bytes);
        let mmap = mmap_store_rate(&path, bytes);
        println!(
            "{:>3} KiB per sync: pwrite+fdatasync into fresh fallocated extents {fresh:>8.0}/s; \
             into already-written extents {written:>8.0}/s ({:.2}x); \
             mmap store+msync into written extents {mmap:>8.0}/s ({:.2}x of pwrite written)",
            bytes >> 10,
            written / fresh,
            mmap / written
        );
        fs.remove(&name).unwrap();
    }
}

fn batch(group: u64, index: u64, entries: usize) -> WriteBatch {
    let mut b = WriteBatch::new();
    let list = (0..entries as u64)
        .map(|k| LogEntry {
            index: index + k,
            term: 1,
            kind: 0,
            data: vec![7u8; 256],
        })
        .collect();
    b.add_entries(group, list);
    b
}

/// Runs `threads` appenders for `RUN`; returns (batches/s, syncs/s, MB/s).
fn run_appenders(dir: &Path, mode: SyncMode, threads: u64, entries: usize) -> (f64, f64, f64) {
    let config = WalConfig {
        sync_mode: mode,
        segment_bytes: 64 << 20,
        ..WalConfig::default()
    };
    let wal = Wal::open(dir, config).unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let wal = &wal;
            s.spawn(move || {
                let mut index = 1;
                while start.elapsed() < RUN {
                    wal.append(batch(t + 1, index, entries)).unwrap();
                    index += entries as u64;
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let stats = wal.stats();
    (
        stats.batches as f64 / secs,
        stats.syncs as f64 / secs,
        stats.bytes_written as f64 / secs / 1e6,
    )
}

#[test]
#[ignore = "timing; run in release on a quiet machine"]
fn group_commit_leader_follower_vs_sync_thread() {
    for entries in [16usize, 256] {
        for threads in [1u64, 8] {
            let mut line = format!("{threads} thread(s), {entries} x 256 B entries per batch:");
            let mut base = None;
            for mode in [
                SyncMode::Adaptive,
                SyncMode::LeaderFollower,
                SyncMode::SyncThread,
            ] {
                let dir = tempfile::tempdir().unwrap();
                let (batches, syncs, mb) = run_appenders(dir.path(), mode, threads, entries);
                let ratio = batches / *base.get_or_insert(batches);
                line += &format!(
                    " {mode:?} {batches:.0} batches/s, {syncs:.0} syncs/s, {mb:.1} MB/s ({ratio:.2}x);"
                );
            }
            println!("{line}");
        }
    }
}

#[test]
#[ignore = "timing; run in release on a quiet machine"]
fn recovery_scan_rate() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        segment_bytes: 64 << 20,
        ..WalConfig::default()
    };
    let wal = Wal::open(dir.path(), config.clone()).unwrap();
    let mut index = vec![1u64; 1000];
    for round in 0..400u64 {
        let mut b = WriteBatch::new();
        for g in 0..50u64 {
            let group = (round * 50 + g) % 1000;
            let list = (0..8u64)
                .map(|k| LogEntry {
                    index: index[group as usize] + k,
                    term: 1,
                    kind: 0,
                    data: vec![1u8; 256],
                })
                .collect();
            index[group as usize] += 8;
            b.add_entries(group + 1, list);
        }
        wal.append(b).unwrap();
    }
    let bytes = wal.stats().bytes_written;
    drop(wal);
    let start = Instant::now();
    let wal = Wal::open(dir.path(), config).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "recovery: {} MB, {} records, {} groups in {:.1} ms ({:.0} MB/s)",
        bytes / 1_000_000,
        wal.recovery_report().records,
        wal.groups().len(),
        secs * 1e3,
        bytes as f64 / secs / 1e6
    );
}
