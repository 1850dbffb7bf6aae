//! The `flotilla` command line.

use std::ops::Range;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use flotilla_tools::sim::raft::runner::{run_range, Progress};
use flotilla_tools::sim::raft::{run_seed, Options, PlantedBug, DEFAULT_TICKS};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "flotilla: a multi-Raft storage engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seeded simulations of production code under faults.
    #[command(subcommand)]
    Sim(Sim),
    /// Look at a WAL directory without changing it.
    #[command(subcommand)]
    Wal(WalCommand),
    /// A local 3-node cluster doing real work: a mixed workload over many
    /// ranges, the busiest node killed part-way, every acknowledged write
    /// checked at the end.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Ranges (Raft groups), each replicated on all three nodes.
    #[arg(long, default_value_t = 64)]
    ranges: u64,
    /// Seconds of workload.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Keep the nodes' data here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Do not kill a node.
    #[arg(long)]
    no_kill: bool,
}

#[derive(Debug, Subcommand)]
enum Sim {
    /// Drive real raftgroup replicas through seeded fault schedules and
    /// check Raft's safety properties after every event.
    Raft(RaftArgs),
    /// Crash the WAL (on a simulated disk that loses unsynced bytes and
    /// tears writes) at random points and check what recovery returns.
    Wal(WalSimArgs),
    /// Drive 3 or 5 production node cores (many ranges each, WALs on
    /// simulated disks) through seeded faults with concurrent clients, and
    /// check the clients' history for linearizability.
    Cluster(flotilla_tools::sim::cluster::cli::ClusterArgs),
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Print the segments, groups (and with --records every record) of a WAL.
    Inspect {
        /// The WAL directory.
        dir: std::path::PathBuf,
        /// Also list every record with its items.
        #[arg(long)]
        records: bool,
    },
    /// Verify every record; exit non-zero on corruption.
    Check {
        /// The WAL directory.
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
struct WalSimArgs {
    /// Seeds to run, `A..B` (B excluded) or a single seed `A`.
    #[arg(long, value_parser = flotilla_tools::sim::parse_seeds)]
    seeds: Range<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
struct RaftArgs {
    /// Seeds to run, `A..B` (B excluded) or a single seed `A`.
    #[arg(long, value_parser = flotilla_tools::sim::parse_seeds)]
    seeds: Range<u64>,
    /// Print every event of every seed (runs the seeds one after another).
    #[arg(long)]
    verbose: bool,
    /// Ticks per run; faults stop after 70% of them.
    #[arg(long, default_value_t = DEFAULT_TICKS)]
    ticks: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Plant a bug in the simulated host, to watch the checks catch it.
    #[arg(long, value_enum)]
    plant_bug: Option<Bug>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Bug {
    /// Followers answer reads from their own state at once.
    StaleFollowerReads,
    /// Hard states are persisted without the vote.
    ForgetVote,
}

impl From<Bug> for PlantedBug {
    fn from(bug: Bug) -> Self {
        match bug {
            Bug::StaleFollowerReads => PlantedBug::StaleFollowerReads,
            Bug::ForgetVote => PlantedBug::ForgetVote,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(Sim::Raft(args)) => sim_raft(&args),
        Command::Sim(Sim::Wal(args)) => sim_wal(&args),
        Command::Sim(Sim::Cluster(args)) => flotilla_tools::sim::cluster::cli::run(&args),
        Command::Demo(args) => demo(args),
        Command::Wal(WalCommand::Inspect { dir, records }) => {
            match flotilla_tools::wal_cmd::inspect_dir(&dir, records) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Wal(WalCommand::Check { dir }) => {
            let (line, sound) = flotilla_tools::wal_cmd::check_dir(&dir);
            println!("{line}");
            if sound {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn demo(args: DemoArgs) -> ExitCode {
    if args.ranges == 0 || args.clients == 0 || args.seconds <= 0.0 {
        println!("demo: FAILED (--ranges, --clients and --seconds must be positive)");
        return ExitCode::FAILURE;
    }
    let options = flotilla_tools::demo::DemoOptions {
        ranges: args.ranges,
        seconds: args.seconds,
        clients: args.clients,
        data_dir: args.data_dir,
        kill: !args.no_kill,
        ..flotilla_tools::demo::DemoOptions::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            println!("demo: FAILED (cannot start a runtime: {error})");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flotilla_tools::demo::run(options)) {
        Ok(report) => {
            let ops = (report.writes + report.reads) as f64 / report.seconds;
            println!(
                "demo: {} writes and {} reads in {:.1} s = {ops:.0} ops/s ({} errors during failover)",
                report.writes, report.reads, report.seconds, report.errors
            );
            println!(
                "demo: write latency p50 {} us, p99 {} us, p99.9 {} us",
                report.write_us.0, report.write_us.1, report.write_us.2
            );
            println!(
                "demo: read latency p50 {} us, p99 {} us, p99.9 {} us",
                report.read_us.0, report.read_us.1, report.read_us.2
            );
            let failover = match (report.killed, report.failover_ms) {
                (Some((node, leaders)), Some(ms)) => {
                    println!("demo: killed node {node} (it led {leaders} ranges); every range had a leader again after {ms} ms");
                    format!(", failover {ms} ms")
                }
                (Some((node, _)), None) => {
                    println!("demo: killed node {node}; not every range got a new leader");
                    String::new()
                }
                _ => String::new(),
            };
            println!(
                "demo: checked {} keys: every acknowledged write reads back: {}",
                report.keys_checked,
                if report.failures.is_empty() {
                    "yes"
                } else {
                    "NO"
                }
            );
            for failure in report.failures.iter().take(10) {
                println!("demo: {failure}");
            }
            if report.failures.is_empty() {
                println!(
                    "demo: ok ({ops:.0} ops/s, write p99 {} us{failover}, {} keys verified)",
                    report.write_us.1, report.keys_checked
                );
                ExitCode::SUCCESS
            } else {
                println!(
                    "demo: FAILED ({} problems, first: {})",
                    report.failures.len(),
                    report.failures[0]
                );
                ExitCode::FAILURE
            }
        }
        Err(reason) => {
            println!("demo: FAILED ({reason})");
            ExitCode::FAILURE
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn sim_wal(args: &WalSimArgs) -> ExitCode {
    let threads = args.threads.unwrap_or_else(default_threads);
    let summary = flotilla_tools::wal_cmd::sim_wal(args.seeds.clone(), threads);
    for (seed, reason) in &summary.failures {
        println!("seed {seed} FAILED: {reason}");
    }
    let total = summary.passed + summary.failures.len() as u64;
    println!(
        "{:.1} seeds/s ({:.1} s on {threads} threads)",
        total as f64 / summary.seconds,
        summary.seconds
    );
    println!(
        "{} seeds passed, {} failed",
        summary.passed,
        summary.failures.len()
    );
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sim_raft(args: &RaftArgs) -> ExitCode {
    if args.ticks < 10 {
        eprintln!("--ticks must be at least 10");
        return ExitCode::FAILURE;
    }
    let options = Options {
        ticks: args.ticks,
        verbose: args.verbose,
        planted_bug: args.plant_bug.map(PlantedBug::from),
        ..Options::default()
    };
    let (passed, failed) = if args.verbose {
        sim_raft_verbose(args.seeds.clone(), &options)
    } else {
        sim_raft_parallel(args, &options)
    };
    println!("{passed} seeds passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn sim_raft_verbose(seeds: Range<u64>, options: &Options) -> (u64, u64) {
    let (mut passed, mut failed) = (0, 0);
    for seed in seeds {
        println!("=== seed {seed}");
        match run_seed(seed, options).outcome {
            Ok(stats) => {
                passed += 1;
                println!("seed {seed} passed: {stats:?}");
            }
            Err(failure) => {
                failed += 1;
                println!("{failure}");
            }
        }
    }
    (passed, failed)
}

fn sim_raft_parallel(args: &RaftArgs, options: &Options) -> (u64, u64) {
    let threads = args.threads.unwrap_or_else(default_threads);
    let summary = run_range(
        args.seeds.clone(),
        options,
        threads,
        |failure| eprintln!("seed {} FAILED: {}", failure.seed, failure.property),
        |progress: &Progress| {
            eprintln!(
                "{}/{} seeds, {} failed, {:.1} seeds/s",
                progress.done,
                progress.total,
                progress.failed,
                progress.seeds_per_second()
            )
        },
    );
    for failure in &summary.failures {
        println!("{failure}");
    }
    println!(
        "{:.1} seeds/s ({:.1} s on {} threads)",
        summary.seeds_per_second(),
        summary.elapsed.as_secs_f64(),
        summary.threads
    );
    (summary.passed, summary.failures.len() as u64)
}
