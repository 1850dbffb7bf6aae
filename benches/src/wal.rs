//! `flotilla-bench wal`: flotilla's shared WAL against TiKV's `raft-engine`
//! on one workload, in one run, beside what the disk itself can do.
//!
//! Workload: G groups, 256-byte entries, every write synced; W writer
//! threads, each owning a disjoint set of groups (group `g` belongs to
//! thread `g % W`) and appending consecutive indexes to them round-robin,
//! E entries per write. Every cell starts from an empty directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flotilla::wal::{LogEntry, Wal, WalConfig, WriteBatch};
use hdrhistogram::Histogram;

/// Payload bytes of every entry.
pub const ENTRY_BYTES: usize = 256;

/// One cell of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    pub groups: u64,
    pub threads: usize,
    pub entries_per_write: usize,
}

/// What one engine did in one cell.
#[derive(Clone, Debug)]
pub struct CellResult {
    pub engine: &'static str,
    pub cell: Cell,
    pub entries: u64,
    pub writes: u64,
    pub seconds: f64,
    pub syncs: Option<u64>,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
}

impl CellResult {
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.seconds
    }

    pub fn mb_per_sec(&self) -> f64 {
        (self.entries as f64 * ENTRY_BYTES as f64) / self.seconds / 1e6
    }

    pub fn writes_per_sec(&self) -> f64 {
        self.writes as f64 / self.seconds
    }

    pub fn syncs_per_sec(&self) -> Option<f64> {
        self.syncs.map(|s| s as f64 / self.seconds)
    }
}

/// A log engine under test.
pub trait BenchLog: Sync {
    fn name(&self) -> &'static str;
    /// Appends `count` entries to `group` starting at `first_index` and
    /// returns once they are durable.
    fn write(&self, group: u64, first_index: u64, count: usize, payload: &[u8]);
    /// Syncs issued since open, when the engine exposes them.
    fn syncs(&self) -> Option<u64>;
}

/// flotilla's WAL.
pub struct FlotillaLog {
    wal: Wal,
}

impl FlotillaLog {
    pub fn open(dir: &Path, config: WalConfig) -> Self {
        let wal = Wal::open(dir, config).unwrap_or_else(|e| panic!("open flotilla WAL: {e}"));
        FlotillaLog { wal }
    }
}

impl BenchLog for FlotillaLog {
    fn name(&self) -> &'static str {
        "flotilla"
    }

    fn write(&self, group: u64, first_index: u64, count: usize, payload: &[u8]) {
        let entries = (0..count as u64)
            .map(|i| LogEntry {
                index: first_index + i,
                term: 1,
                kind: 0,
                data: payload.to_vec(),
            })
            .collect();
        let mut batch = WriteBatch::new();
        batch.add_entries(group, entries);
        self.wal
            .append(batch)
            .unwrap_or_else(|e| panic!("flotilla append: {e}"));
    }

    fn syncs(&self) -> Option<u64> {
        Some(self.wal.stats().syncs)
    }
}

#[derive(Clone)]
struct RaftEngineEntry;

impl raft_engine::MessageExt for RaftEngineEntry {
    type Entry = raft::eraftpb::Entry;

    fn index(entry: &Self::Entry) -> u64 {
        entry.index
    }
}

/// TiKV's raft-engine, configured as TiKV runs it except that batch
/// compression is off: the payloads are random, so lz4 would only burn CPU.
pub struct RaftEngineLog {
    engine: raft_engine::Engine,
}

impl RaftEngineLog {
    pub fn open(dir: &Path) -> Self {
        let config = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            batch_compression_threshold: raft_engine::ReadableSize(0),
            ..raft_engine::Config::default()
        };
        let engine =
            raft_engine::Engine::open(config).unwrap_or_else(|e| panic!("open raft-engine: {e}"));
        RaftEngineLog { engine }
    }
}

/// raft-engine counts syncs in a prometheus histogram of the default
/// registry; its sample count is the number of syncs.
fn raft_engine_syncs() -> u64 {
    prometheus::gather()
        .iter()
        .filter(|family| family.get_name() == "raft_engine_sync_log_duration_seconds")
        .flat_map(|family| family.get_metric().iter())
        .map(|metric| metric.get_histogram().get_sample_count())
        .sum()
}

impl BenchLog for RaftEngineLog {
    fn name(&self) -> &'static str {
        "raft-engine"
    }

    fn write(&self, group: u64, first_index: u64, count: usize, payload: &[u8]) {
        let entries: Vec<raft::eraftpb::Entry> = (0..count as u64)
            .map(|i| raft::eraftpb::Entry {
                index: first_index + i,
                term: 1,
                data: payload.to_vec().into(),
                ..Default::default()
            })
            .collect();
        let mut batch = raft_engine::LogBatch::with_capacity(count);
        batch
            .add_entries::<RaftEngineEntry>(group, &entries)
            .unwrap_or_else(|e| panic!("raft-engine batch: {e}"));
        self.engine
            .write(&mut batch, true)
            .unwrap_or_else(|e| panic!("raft-engine write: {e}"));
    }

    fn syncs(&self) -> Option<u64> {
        Some(raft_engine_syncs())
    }
}

/// A deterministic, incompressible payload.
pub fn payload() -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..ENTRY_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Runs one cell for `duration` against `log`.
pub fn run_cell(log: &dyn BenchLog, cell: Cell, duration: Duration) -> CellResult {
    let payload = payload();
    let stop = AtomicBool::new(false);
    let entries = AtomicU64::new(0);
    let writes = AtomicU64::new(0);
    let syncs_before = log.syncs();
    let started = Instant::now();
    let histograms: Vec<Histogram<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cell.threads)
            .map(|thread| {
                let (payload, stop, entries, writes) = (&payload, &stop, &entries, &writes);
                scope.spawn(move || {
                    let mut latency = Histogram::<u64>::new(3).expect("histogram");
                    let mine: Vec<u64> = (1..=cell.groups)
                        .filter(|g| (*g as usize) % cell.threads == thread)
                        .collect();
                    if mine.is_empty() {
                        return latency;
                    }
                    let mut next_index = vec![1u64; mine.len()];
                    let mut turn = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let slot = turn % mine.len();
                        turn += 1;
                        let begin = Instant::now();
                        log.write(
                            mine[slot],
                            next_index[slot],
                            cell.entries_per_write,
                            payload,
                        );
                        let _ = latency.record(begin.elapsed().as_micros() as u64);
                        next_index[slot] += cell.entries_per_write as u64;
                        entries.fetch_add(cell.entries_per_write as u64, Ordering::Relaxed);
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    latency
                })
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().expect("writer thread"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    for h in &histograms {
        latency.add(h).expect("same bounds");
    }
    let syncs = match (syncs_before, log.syncs()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    CellResult {
        engine: log.name(),
        cell,
        entries: entries.load(Ordering::Relaxed),
        writes: writes.load(Ordering::Relaxed),
        seconds,
        syncs,
        latency_us_p50: latency.value_at_quantile(0.50),
        latency_us_p99: latency.value_at_quantile(0.99),
        latency_us_p999: latency.value_at_quantile(0.999),
    }
}

/// Sequential write + fdatasync of `block` bytes in a loop, into a
/// preallocated file that was already written once (so no extent
/// conversion is measured). With `loops` > 1, that many threads run the
/// loop at once on the same file, each in its own part of it, showing how
/// many syncs the disk completes with more than one in flight. A WAL that
/// keeps one sync in flight at a time is bounded by the one-loop figure.
#[derive(Clone, Debug)]
pub struct DiskResult {
    pub block_bytes: usize,
    pub loops: usize,
    pub syncs_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
}

pub fn measure_disk(
    dir: &Path,
    block_bytes: usize,
    loops: usize,
    duration: Duration,
) -> DiskResult {
    let path = dir.join("disk-probe.bin");
    let file_bytes: u64 = 256 << 20;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..(file_bytes >> 20) {
        file.write_all(&chunk).expect("prefill");
    }
    file.sync_all().expect("sync prefill");
    let part_bytes = file_bytes / loops as u64;
    let started = Instant::now();
    let per_loop: Vec<(u64, Histogram<u64>)> = std::thread::scope(|scope| {
        let file = &file;
        let handles: Vec<_> = (0..loops as u64)
            .map(|part| {
                scope.spawn(move || {
                    let block = vec![0xa5u8; block_bytes];
                    let mut latency = Histogram::<u64>::new(3).expect("histogram");
                    let (start, end) = (part * part_bytes, (part + 1) * part_bytes);
                    let mut offset = start;
                    let mut ops = 0u64;
                    while started.elapsed() < duration {
                        if offset + block_bytes as u64 > end {
                            offset = start;
                        }
                        let begin = Instant::now();
                        file.write_all_at(&block, offset).expect("write");
                        file.sync_data().expect("fdatasync");
                        let _ = latency.record(begin.elapsed().as_micros() as u64);
                        offset += block_bytes as u64;
                        ops += 1;
                    }
                    (ops, latency)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("disk loop"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let mut ops = 0u64;
    for (n, h) in &per_loop {
        ops += n;
        latency.add(h).expect("same histogram bounds");
    }
    DiskResult {
        block_bytes,
        loops,
        syncs_per_sec: ops as f64 / seconds,
        mb_per_sec: ops as f64 * block_bytes as f64 / seconds / 1e6,
        latency_us_p50: latency.value_at_quantile(0.5),
        latency_us_p99: latency.value_at_quantile(0.99),
    }
}

/// One thread waking another and being woken back, in a loop: each leg is
/// the hand-off every synced write pays once (the writer sleeps until
/// whoever syncs wakes it). On a virtual machine a wake-up that crosses
/// vCPUs can cost far more than the syscalls, and it bounds how fast
/// closed-loop writers turn around between syncs, whatever the engine; so
/// the report prints it beside the disk's figures.
#[derive(Clone, Debug)]
pub struct WakeResult {
    pub round_trips_per_sec: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
}

/// Ping-pong between two unpinned threads with `park`/`unpark` (a futex
/// each way), timed per round trip.
pub fn measure_wake(duration: Duration) -> WakeResult {
    // Odd: the ponger's move; even: the pinger's.
    let turn = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let pinger = std::thread::current();
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let mut round_trips = 0u64;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let (turn, done) = (&turn, &done);
        let ponger = scope.spawn(move || {
            let mut expect = 1u64;
            loop {
                while turn.load(Ordering::Acquire) != expect {
                    if done.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::park();
                }
                turn.store(expect + 1, Ordering::Release);
                pinger.unpark();
                expect += 2;
            }
        });
        while started.elapsed() < duration {
            let begin = Instant::now();
            let serve = turn.load(Ordering::Relaxed) + 1;
            turn.store(serve, Ordering::Release);
            ponger.thread().unpark();
            while turn.load(Ordering::Acquire) != serve + 1 {
                std::thread::park();
            }
            let _ = latency.record(begin.elapsed().as_micros() as u64);
            round_trips += 1;
        }
        done.store(true, Ordering::Release);
        ponger.thread().unpark();
    });
    WakeResult {
        round_trips_per_sec: round_trips as f64 / started.elapsed().as_secs_f64(),
        latency_us_p50: latency.value_at_quantile(0.5),
        latency_us_p99: latency.value_at_quantile(0.99),
    }
}

/// Writes about `total_bytes` spread over `groups` groups through flotilla's
/// WAL (64 KiB batches), then times reopening it.
pub fn measure_recovery(dir: &Path, groups: u64, total_bytes: u64) -> (Duration, Duration, u64) {
    let entry_bytes = 4096usize;
    let entries_per_group_write = 4usize;
    let payload = vec![0x3cu8; entry_bytes];
    let write_started = Instant::now();
    let wal = Wal::open(dir, WalConfig::default()).expect("open WAL");
    let mut written = 0u64;
    let mut next_index = vec![1u64; groups as usize + 1];
    let mut group = 1u64;
    while written < total_bytes {
        let mut batch = WriteBatch::new();
        for _ in 0..4 {
            let first = next_index[group as usize];
            let entries = (0..entries_per_group_write as u64)
                .map(|i| LogEntry {
                    index: first + i,
                    term: 1,
                    kind: 0,
                    data: payload.clone(),
                })
                .collect();
            batch.add_entries(group, entries);
            next_index[group as usize] += entries_per_group_write as u64;
            written += (entry_bytes * entries_per_group_write) as u64;
            group = group % groups + 1;
        }
        wal.append(batch).expect("append");
    }
    let write_time = write_started.elapsed();
    drop(wal);
    let open_started = Instant::now();
    let wal = Wal::open(dir, WalConfig::default()).expect("reopen WAL");
    let recovery = open_started.elapsed();
    let recovered_groups = wal.groups().len() as u64;
    (write_time, recovery, recovered_groups)
}

/// Fresh, empty directory for one run of one engine. The previous run's
/// files are deleted and everything is flushed first, so neither engine
/// pays for the other's leftovers during its run.
pub fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(200));
    dir
}

/// The run with the median throughput (the upper one of an even count).
pub fn median_run(mut runs: Vec<CellResult>) -> CellResult {
    assert!(!runs.is_empty(), "at least one run per cell");
    runs.sort_by(|a, b| a.entries_per_sec().total_cmp(&b.entries_per_sec()));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ping_pong_runs_round_trips_and_stops() {
        let wake = measure_wake(Duration::from_millis(100));
        assert!(wake.round_trips_per_sec > 0.0);
        assert!(wake.latency_us_p50 <= wake.latency_us_p99);
    }
}
