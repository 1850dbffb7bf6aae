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
    /// A local 3-node cluster of processes (QUIC, mutual TLS) doing real
    /// work: a mixed workload over many ranges, the busiest node killed
    /// part-way, every acknowledged write checked at the end.
    Demo(flotilla_tools::demo::cli::DemoArgs),
    /// Run one node of a cluster until SIGTERM or SIGINT.
    Start(flotilla_tools::start::config::StartArgs),
    /// Make the cluster's CA and the certificates of nodes and clients.
    #[command(subcommand)]
    Cert(flotilla_tools::cert::CertCommand),
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
        Command::Demo(args) => flotilla_tools::demo::cli::run(&args),
        Command::Start(args) => flotilla_tools::start::cli(&args),
        Command::Cert(command) => flotilla_tools::cert::run(&command),
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
