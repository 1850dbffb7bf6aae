//! Committed proposals per second of a 3-voter group driven in memory, run
//! through flotilla's `RawNode` + `MemStorage` and through raft-rs 0.7's
//! `RawNode` + `MemStorage` in the same process, so that the ratio between
//! the two is measured on the same machine at the same moment.
//!
//! The workload is identical for both: node 1 is elected outside the timed
//! loop; a round proposes `batch` entries one `propose` call at a time, then
//! runs the ready/deliver loop until the leader has applied all of them.
//! Every replica persists its `Ready` into its `MemStorage`, moves messages
//! into the simulated network without cloning them, and "applies" committed
//! entries by checking their order and summing their lengths. Storage is
//! compacted every `COMPACT_EVERY_ENTRIES` entries so memory stays bounded.
//!
//! `cargo bench -p flotilla-benches --bench raft_core` runs criterion, with
//! ids `raft_core/{impl}/{payload}/{single|batch}` and elements/s.
//! `RAFT_CORE_SUMMARY=1 cargo bench -p flotilla-benches --bench raft_core`
//! instead measures every case for about 1.5 s per implementation in short
//! alternating slices, and prints the median proposals/s of each and the
//! median ratio flotilla/raft-rs of adjacent slices.

#[path = "raft_core/flotilla_replica.rs"]
mod flotilla_replica;
#[path = "raft_core/group.rs"]
mod group;
#[path = "raft_core/raftrs_replica.rs"]
mod raftrs_replica;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

use crate::flotilla_replica::FlotillaReplica;
use crate::group::{Group, Replica};
use crate::raftrs_replica::RaftRsReplica;

/// Payload sizes of the proposals, with their names in benchmark ids.
const PAYLOADS: [(&str, usize); 3] = [("16B", 16), ("256B", 256), ("4KiB", 4096)];

/// Proposals per round: one at a time, or a batch proposed by separate
/// `propose` calls before the loop runs.
const MODES: [(&str, usize); 2] = [("single", 1), ("batch", 64)];

/// One summary measurement slice; slices alternate between implementations.
const SUMMARY_SLICE: Duration = Duration::from_millis(150);
/// Slice pairs per case (about 1.5 s per implementation). The ratio reported
/// is the median of the pairs' ratios, which cancels load that drifts more
/// slowly than one pair.
const SUMMARY_SLICE_PAIRS: usize = 10;
/// How long each implementation runs untimed before a summary case, to warm
/// caches and the allocator.
const SUMMARY_WARMUP: Duration = Duration::from_millis(100);

fn bench_case<R: Replica>(
    bench_group: &mut BenchmarkGroup<'_, WallTime>,
    id: String,
    payload: &[u8],
    batch: usize,
) {
    let mut group = Group::<R>::elected();
    bench_group.bench_function(id, |b| {
        b.iter(|| group.round(black_box(payload), batch));
    });
    group.check_all_applied();
}

/// The two implementations of each case run one after the other, so that
/// each pair is measured under the same machine load.
fn benches(c: &mut Criterion) {
    let mut bench_group = c.benchmark_group("raft_core");
    for (payload_name, payload_bytes) in PAYLOADS {
        let payload = vec![0xA5u8; payload_bytes];
        for (mode_name, batch) in MODES {
            bench_group.throughput(Throughput::Elements(batch as u64));
            let case = format!("{payload_name}/{mode_name}");
            bench_case::<FlotillaReplica>(
                &mut bench_group,
                format!("flotilla/{case}"),
                &payload,
                batch,
            );
            bench_case::<RaftRsReplica>(
                &mut bench_group,
                format!("raft-rs/{case}"),
                &payload,
                batch,
            );
        }
    }
    bench_group.finish();
}

/// Runs rounds for about `duration`; returns proposals committed per second.
fn measure_slice<R: Replica>(
    group: &mut Group<R>,
    payload: &[u8],
    batch: usize,
    duration: Duration,
) -> f64 {
    let start = Instant::now();
    let mut proposals = 0u64;
    loop {
        group.round(payload, batch);
        proposals += batch as u64;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return proposals as f64 / elapsed.as_secs_f64();
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median proposals per second of flotilla and of raft-rs for one case, and
/// the median of the ratios of adjacent slices.
struct CaseSummary {
    flotilla: f64,
    raftrs: f64,
    ratio: f64,
}

fn summary_case(payload_bytes: usize, batch: usize) -> CaseSummary {
    let payload = vec![0xA5u8; payload_bytes];
    let mut flotilla = Group::<FlotillaReplica>::elected();
    let mut raftrs = Group::<RaftRsReplica>::elected();
    measure_slice(&mut flotilla, &payload, batch, SUMMARY_WARMUP);
    measure_slice(&mut raftrs, &payload, batch, SUMMARY_WARMUP);
    let mut flotilla_rates = Vec::with_capacity(SUMMARY_SLICE_PAIRS);
    let mut raftrs_rates = Vec::with_capacity(SUMMARY_SLICE_PAIRS);
    let mut ratios = Vec::with_capacity(SUMMARY_SLICE_PAIRS);
    for pair in 0..SUMMARY_SLICE_PAIRS {
        // Alternate which goes first so neither always follows the other.
        let (flotilla_rate, raftrs_rate) = if pair % 2 == 0 {
            let flotilla_rate = measure_slice(&mut flotilla, &payload, batch, SUMMARY_SLICE);
            let raftrs_rate = measure_slice(&mut raftrs, &payload, batch, SUMMARY_SLICE);
            (flotilla_rate, raftrs_rate)
        } else {
            let raftrs_rate = measure_slice(&mut raftrs, &payload, batch, SUMMARY_SLICE);
            let flotilla_rate = measure_slice(&mut flotilla, &payload, batch, SUMMARY_SLICE);
            (flotilla_rate, raftrs_rate)
        };
        flotilla_rates.push(flotilla_rate);
        raftrs_rates.push(raftrs_rate);
        ratios.push(flotilla_rate / raftrs_rate);
    }
    flotilla.check_all_applied();
    raftrs.check_all_applied();
    CaseSummary {
        flotilla: median(flotilla_rates),
        raftrs: median(raftrs_rates),
        ratio: median(ratios),
    }
}

fn summary() {
    println!(
        "{:<14} {:>16} {:>16} {:>17}",
        "case", "flotilla ops/s", "raft-rs ops/s", "flotilla/raft-rs"
    );
    for (payload_name, payload_bytes) in PAYLOADS {
        for (mode_name, batch) in MODES {
            let case = summary_case(payload_bytes, batch);
            println!(
                "{:<14} {:>16.0} {:>16.0} {:>16.2}x",
                format!("{payload_name}/{mode_name}"),
                case.flotilla,
                case.raftrs,
                case.ratio
            );
        }
    }
}

fn main() {
    if std::env::var_os("RAFT_CORE_SUMMARY").is_some_and(|v| v != "0") {
        summary();
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
