//! `flotilla-bench`: flotilla's throughput suite. Every benchmark measures a
//! baseline in the same run and reports ratios against it.

mod node;

#[global_allocator]
static ALLOCATOR: node::CountingAllocator = node::CountingAllocator;
mod wal;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "flotilla-bench", about = "flotilla's throughput benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The shared WAL against raft-engine: groups × writer threads × entries
    /// per write, 256-byte entries, every write synced; plus the disk's own
    /// write+fdatasync figures (4 KiB and 1 MiB, one loop; 4 KiB, two loops
    /// at once) and WAL recovery time.
    Wal(WalArgs),
    /// One node with many ranges: open and restart time, memory per idle
    /// range, CPU with every range quiesced; then cluster write throughput
    /// with one raft worker per node against `--workers`.
    Node(NodeArgs),
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Ranges on the node.
    #[arg(long, default_value_t = 10_000)]
    ranges: u64,
    /// Seconds of idle CPU measurement.
    #[arg(long, default_value_t = 10.0)]
    idle_seconds: f64,
    /// Where the node keeps its data.
    #[arg(long, default_value = "target/flotilla-bench/node")]
    dir: PathBuf,
    /// Raft worker threads per node (default: the engine's, the machine's
    /// parallelism up to 8).
    #[arg(long)]
    workers: Option<usize>,
    /// Seconds of the write-throughput phase, per worker count (0 skips it).
    #[arg(long, default_value_t = 5.0)]
    throughput_seconds: f64,
    /// Nodes of the throughput cluster (every range on each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    throughput_nodes: u64,
    /// Ranges of the throughput cluster.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    throughput_ranges: u64,
    /// Concurrent clients of the throughput phase, each with one put in
    /// flight.
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    clients: usize,
}

#[derive(clap::Args, Debug)]
struct WalArgs {
    /// Seconds per cell and engine.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Where the logs are written (on the disk to measure).
    #[arg(long, default_value = "target/flotilla-bench")]
    dir: PathBuf,
    /// Only the 1- and 16-thread cells with 16 entries per write.
    #[arg(long)]
    quick: bool,
    /// Bytes written before timing recovery (0 skips the recovery figure).
    #[arg(long, default_value_t = 1 << 30)]
    recovery_bytes: u64,
    /// Run only these cells, written GROUPSxTHREADSxENTRIES (e.g.
    /// 10000x64x16); repeatable. For profiling one cell.
    #[arg(long, value_parser = parse_cell)]
    cell: Vec<wal::Cell>,
    /// Skip raft-engine (for profiling flotilla alone).
    #[arg(long)]
    flotilla_only: bool,
    /// Runs of each engine per cell, alternating flotilla and raft-engine;
    /// the table shows each engine's median run (by entries/s).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    repeat: usize,
    /// flotilla's group-commit strategy (to compare them).
    #[arg(long, value_enum, default_value_t = SyncModeArg::Adaptive)]
    sync_mode: SyncModeArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SyncModeArg {
    Adaptive,
    LeaderFollower,
    SyncThread,
}

impl From<SyncModeArg> for flotilla::wal::SyncMode {
    fn from(mode: SyncModeArg) -> Self {
        match mode {
            SyncModeArg::Adaptive => Self::Adaptive,
            SyncModeArg::LeaderFollower => Self::LeaderFollower,
            SyncModeArg::SyncThread => Self::SyncThread,
        }
    }
}

fn parse_cell(text: &str) -> Result<wal::Cell, String> {
    let parts: Vec<&str> = text.split('x').collect();
    let [groups, threads, entries] = parts.as_slice() else {
        return Err(format!("`{text}` is not GROUPSxTHREADSxENTRIES"));
    };
    let number = |s: &str| {
        s.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{s}` in `{text}` is not a positive number"))
    };
    Ok(wal::Cell {
        groups: number(groups)?,
        threads: number(threads)? as usize,
        entries_per_write: number(entries)? as usize,
    })
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Wal(args) => run_wal(args),
        Command::Node(args) => run_node(args),
    }
}

fn run_node(args: NodeArgs) {
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", args.dir.display()));
    let r = node::run(
        &args.dir,
        args.ranges,
        Duration::from_secs_f64(args.idle_seconds),
        args.workers,
    );
    let _ = std::fs::remove_dir_all(&args.dir);
    let grown = r.rss_after_kib.saturating_sub(r.rss_before_kib) * 1024;
    let heap = (r.heap_after - r.heap_before).max(0) as u64;
    let per_range = heap.saturating_sub(r.data_bytes) as f64 / r.ranges as f64;
    println!(
        "node: {} ranges on one node, {} raft workers",
        r.ranges, r.workers
    );
    println!(
        "  open {} ms, every range elected in {} more ms",
        r.open_ms, r.elect_ms
    );
    println!(
        "  one write per range: {} ms ({:.0} writes/s)",
        r.write_ms,
        r.ranges as f64 / (r.write_ms.max(1) as f64 / 1000.0)
    );
    println!("  memory: live heap grew {} KiB for {} KiB of data: {per_range:.0} bytes per idle range beyond the data (anonymous RSS grew {} KiB)", heap / 1024, r.data_bytes / 1024, grown / 1024);
    println!(
        "  idle, every range quiesced: {:.2}% of a core over {:.0} s",
        r.idle_cpu_percent, r.idle_seconds
    );
    println!("  restart (WAL replay of every range) {} ms, elected in {} more ms, read every value back in {} ms", r.restart_ms, r.restart_elect_ms, r.read_ms);
    println!(
        "{{\"bench\":\"node\",\"ranges\":{},\"workers\":{},\"open_ms\":{},\"elect_ms\":{},\"write_ms\":{},\"restart_ms\":{},\"restart_elect_ms\":{},\"read_ms\":{},\"bytes_per_idle_range\":{per_range:.0},\"idle_cpu_percent\":{:.3}}}",
        r.ranges, r.workers, r.open_ms, r.elect_ms, r.write_ms, r.restart_ms, r.restart_elect_ms, r.read_ms, r.idle_cpu_percent
    );
    if args.throughput_seconds > 0.0 {
        run_throughput(&args, r.workers);
    }
}

/// The throughput phase: one worker per node first (the baseline), then
/// `workers` if different, each on a fresh cluster.
fn run_throughput(args: &NodeArgs, workers: usize) {
    let counts: Vec<usize> = if workers == 1 {
        vec![1]
    } else {
        vec![1, workers]
    };
    let mut reports = Vec::new();
    for count in counts {
        let dir = args.dir.join(format!("throughput-{count}"));
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "throughput: {} nodes, {} ranges, {} clients, {} workers per node",
            args.throughput_nodes, args.throughput_ranges, args.clients, count
        );
        reports.push(node::throughput(
            &dir,
            args.throughput_nodes,
            args.throughput_ranges,
            count,
            args.clients,
            Duration::from_secs_f64(args.throughput_seconds),
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    let baseline = reports
        .first()
        .map_or(1.0, node::ThroughputReport::writes_per_sec);
    for t in &reports {
        println!(
            "throughput: {} nodes, {} ranges, {} clients, {} workers per node: {:.0} writes/s ({:.2}x one worker), p50 {} us, p99 {} us, p99.9 {} us, {} errors",
            t.nodes,
            t.ranges,
            t.clients,
            t.workers,
            t.writes_per_sec(),
            t.writes_per_sec() / baseline,
            t.latency_us_p50,
            t.latency_us_p99,
            t.latency_us_p999,
            t.errors
        );
    }
    for t in &reports {
        println!(
            "{{\"bench\":\"node_throughput\",\"nodes\":{},\"ranges\":{},\"clients\":{},\"workers\":{},\"seconds\":{:.3},\"writes_per_sec\":{:.1},\"ratio_to_one_worker\":{:.3},\"latency_us_p50\":{},\"latency_us_p99\":{},\"latency_us_p999\":{},\"errors\":{}}}",
            t.nodes,
            t.ranges,
            t.clients,
            t.workers,
            t.seconds,
            t.writes_per_sec(),
            t.writes_per_sec() / baseline,
            t.latency_us_p50,
            t.latency_us_p99,
            t.latency_us_p999,
            t.errors
        );
    }
}

fn run_wal(args: WalArgs) {
    let duration = Duration::from_secs_f64(args.seconds);
    std::fs::create_dir_all(&args.dir)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", args.dir.display()));
    let mut cells = Vec::new();
    let threads: &[usize] = if args.quick {
        &[1, 16]
    } else {
        &[1, 4, 16, 64]
    };
    let per_write: &[usize] = if args.quick { &[16] } else { &[1, 16] };
    for &t in threads {
        for &e in per_write {
            cells.push(wal::Cell {
                groups: 1000,
                threads: t,
                entries_per_write: e,
            });
        }
    }
    cells.push(wal::Cell {
        groups: 10_000,
        threads: 64,
        entries_per_write: 16,
    });
    if !args.cell.is_empty() {
        cells = args.cell.clone();
    }

    eprintln!("measuring the disk (write + fdatasync, preallocated and pre-written file)");
    let disk: Vec<wal::DiskResult> = if args.flotilla_only {
        Vec::new()
    } else {
        [(4096usize, 1usize), (1 << 20, 1), (4096, 2)]
            .iter()
            .map(|&(block, loops)| wal::measure_disk(&args.dir, block, loops, duration))
            .collect()
    };
    let wake =
        (!args.flotilla_only).then(|| wal::measure_wake(duration.min(Duration::from_secs(1))));

    let mut rows = Vec::new();
    for (i, &cell) in cells.iter().enumerate() {
        eprintln!(
            "[{}/{}] groups={} threads={} entries/write={}",
            i + 1,
            cells.len(),
            cell.groups,
            cell.threads,
            cell.entries_per_write
        );
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..args.repeat {
            let dir = wal::fresh_dir(&args.dir, "flotilla");
            let config = flotilla::wal::WalConfig {
                zero_fill_segments: std::env::var("FLOTILLA_BENCH_ZERO_FILL")
                    .map_or(true, |v| v != "0"),
                sync_mode: args.sync_mode.into(),
                ..flotilla::wal::WalConfig::default()
            };
            let flotilla = wal::FlotillaLog::open(&dir, config);
            ours.push(wal::run_cell(&flotilla, cell, duration));
            drop(flotilla);
            if args.flotilla_only {
                continue;
            }
            let dir = wal::fresh_dir(&args.dir, "raft-engine");
            let engine = wal::RaftEngineLog::open(&dir);
            theirs.push(wal::run_cell(&engine, cell, duration));
            drop(engine);
        }
        let ours = wal::median_run(ours);
        if args.flotilla_only {
            println!(
                "flotilla {}x{}x{}: {:.0} entries/s, p50 {} us, p99 {} us, {:.0} syncs/s",
                cell.groups,
                cell.threads,
                cell.entries_per_write,
                ours.entries_per_sec(),
                ours.latency_us_p50,
                ours.latency_us_p99,
                ours.syncs_per_sec().unwrap_or(0.0)
            );
            continue;
        }
        rows.push((ours, wal::median_run(theirs)));
    }
    let _ = std::fs::remove_dir_all(args.dir.join("flotilla"));
    let _ = std::fs::remove_dir_all(args.dir.join("raft-engine"));

    let recovery = (args.recovery_bytes > 0).then(|| {
        eprintln!(
            "writing {} MiB over 10,000 groups for the recovery figure",
            args.recovery_bytes >> 20
        );
        let dir = wal::fresh_dir(&args.dir, "recovery");
        let figures = wal::measure_recovery(&dir, 10_000, args.recovery_bytes);
        let _ = std::fs::remove_dir_all(&dir);
        figures
    });

    print_report(&disk, wake.as_ref(), &rows, recovery, args.repeat);
}

fn fmt_syncs(result: &wal::CellResult) -> String {
    result
        .syncs_per_sec()
        .map_or_else(|| "-".to_string(), |s| format!("{s:.0}"))
}

fn print_report(
    disk: &[wal::DiskResult],
    wake: Option<&wal::WakeResult>,
    rows: &[(wal::CellResult, wal::CellResult)],
    recovery: Option<(Duration, Duration, u64)>,
    repeat: usize,
) {
    println!();
    println!(
        "disk: write + fdatasync in a loop (same run; loops > 1: that many loops at once on one file)"
    );
    println!(
        "{:>10} {:>6} {:>12} {:>10} {:>10} {:>10}",
        "block", "loops", "syncs/s", "MB/s", "p50 us", "p99 us"
    );
    for d in disk {
        println!(
            "{:>10} {:>6} {:>12.0} {:>10.1} {:>10} {:>10}",
            d.block_bytes,
            d.loops,
            d.syncs_per_sec,
            d.mb_per_sec,
            d.latency_us_p50,
            d.latency_us_p99
        );
    }
    if let Some(w) = wake {
        println!();
        println!(
            "threads: one waking another and back (park/unpark, unpinned), same run: {:.0} round trips/s, p50 {} us, p99 {} us",
            w.round_trips_per_sec, w.latency_us_p50, w.latency_us_p99
        );
    }
    println!();
    println!(
        "WAL: 256-byte entries, every write synced; each engine's median of {repeat} alternating runs; ratio = flotilla / raft-engine entries/s"
    );
    println!(
        "{:>7} {:>7} {:>5} | {:>12} {:>8} {:>8} {:>8} {:>8} | {:>12} {:>8} {:>8} {:>8} {:>8} | {:>6}",
        "groups", "threads", "e/w",
        "flot e/s", "MB/s", "p50us", "p99us", "sync/s",
        "r-e e/s", "MB/s", "p50us", "p99us", "sync/s",
        "ratio"
    );
    for (ours, theirs) in rows {
        let c = ours.cell;
        println!(
            "{:>7} {:>7} {:>5} | {:>12.0} {:>8.1} {:>8} {:>8} {:>8} | {:>12.0} {:>8.1} {:>8} {:>8} {:>8} | {:>6.2}",
            c.groups,
            c.threads,
            c.entries_per_write,
            ours.entries_per_sec(),
            ours.mb_per_sec(),
            ours.latency_us_p50,
            ours.latency_us_p99,
            fmt_syncs(ours),
            theirs.entries_per_sec(),
            theirs.mb_per_sec(),
            theirs.latency_us_p50,
            theirs.latency_us_p99,
            fmt_syncs(theirs),
            ours.entries_per_sec() / theirs.entries_per_sec(),
        );
    }
    if let Some((write, open, groups)) = recovery {
        println!();
        println!(
            "recovery: wrote the WAL in {:.1} s; reopening it took {:.3} s and recovered {groups} groups",
            write.as_secs_f64(),
            open.as_secs_f64()
        );
    }
    println!();
    for d in disk {
        println!(
            "{{\"bench\":\"disk\",\"block_bytes\":{},\"loops\":{},\"syncs_per_sec\":{:.1},\"mb_per_sec\":{:.2},\"latency_us_p50\":{},\"latency_us_p99\":{}}}",
            d.block_bytes, d.loops, d.syncs_per_sec, d.mb_per_sec, d.latency_us_p50, d.latency_us_p99
        );
    }
    if let Some(w) = wake {
        println!(
            "{{\"bench\":\"wake\",\"round_trips_per_sec\":{:.1},\"latency_us_p50\":{},\"latency_us_p99\":{}}}",
            w.round_trips_per_sec, w.latency_us_p50, w.latency_us_p99
        );
    }
    for (ours, theirs) in rows {
        for r in [ours, theirs] {
            let c = r.cell;
            println!(
                "{{\"bench\":\"wal\",\"engine\":\"{}\",\"groups\":{},\"threads\":{},\"entries_per_write\":{},\"entries_per_sec\":{:.1},\"writes_per_sec\":{:.1},\"mb_per_sec\":{:.2},\"latency_us_p50\":{},\"latency_us_p99\":{},\"latency_us_p999\":{},\"syncs_per_sec\":{}}}",
                r.engine,
                c.groups,
                c.threads,
                c.entries_per_write,
                r.entries_per_sec(),
                r.writes_per_sec(),
                r.mb_per_sec(),
                r.latency_us_p50,
                r.latency_us_p99,
                r.latency_us_p999,
                r.syncs_per_sec().map_or("null".to_string(), |s| format!("{s:.1}")),
            );
        }
        let c = ours.cell;
        println!(
            "{{\"bench\":\"wal_ratio\",\"groups\":{},\"threads\":{},\"entries_per_write\":{},\"flotilla_over_raft_engine\":{:.3}}}",
            c.groups,
            c.threads,
            c.entries_per_write,
            ours.entries_per_sec() / theirs.entries_per_sec()
        );
    }
    if let Some((write, open, groups)) = recovery {
        println!(
            "{{\"bench\":\"wal_recovery\",\"groups\":{groups},\"write_seconds\":{:.3},\"recovery_seconds\":{:.3}}}",
            write.as_secs_f64(),
            open.as_secs_f64()
        );
    }
}
