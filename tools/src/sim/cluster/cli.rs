//! `flotilla sim cluster`: its arguments and what it prints. Lives beside
//! the simulator so that `main.rs` only names it.

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::runner::{run_range, Progress};
use super::{run_seed, Options, PlantedBug, DEFAULT_TICKS};

/// Arguments of `flotilla sim cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Seeds to run, `A..B` (B excluded) or a single seed `A`.
    #[arg(long, value_parser = crate::sim::parse_seeds)]
    seeds: Range<u64>,
    /// Write each seed's history to DIR/seed-{seed}.jsonl (HISTORY.md format).
    #[arg(long, value_name = "DIR")]
    history_dir: Option<PathBuf>,
    /// Print every event of every seed (runs the seeds one after another).
    #[arg(long)]
    verbose: bool,
    /// Ticks of the fault phase plus the calm phase's start; faults stop
    /// after 70% of them.
    #[arg(long, default_value_t = DEFAULT_TICKS)]
    ticks: u64,
    /// Run every seed twice and fail it if the histories differ.
    #[arg(long)]
    check_replay: bool,
    /// Clients give up (info) on requests the node neither answers nor
    /// times out, instead of failing the seed: looks past that defect.
    #[arg(long)]
    client_deadline: bool,
    /// Do not inject membership changes (adding and removing replicas),
    /// which every seed otherwise may.
    #[arg(long)]
    no_membership: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Plant a bug, to watch the linearizability check catch it.
    #[arg(long, value_enum)]
    plant_bug: Option<Bug>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Bug {
    /// Acknowledge writes as soon as they are proposed.
    AckWritesEarly,
    /// Answer reads from what the node saw last, without ReadIndex.
    StaleLocalReads,
}

impl From<Bug> for PlantedBug {
    fn from(bug: Bug) -> Self {
        match bug {
            Bug::AckWritesEarly => PlantedBug::AckWritesEarly,
            Bug::StaleLocalReads => PlantedBug::StaleLocalReads,
        }
    }
}

/// Runs the subcommand; the exit code is non-zero when a seed failed.
pub fn run(args: &ClusterArgs) -> ExitCode {
    if args.ticks < 20 {
        eprintln!("--ticks must be at least 20");
        return ExitCode::FAILURE;
    }
    if let Some(dir) = &args.history_dir {
        if let Err(error) = std::fs::create_dir_all(dir) {
            eprintln!("cannot create {}: {error}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let options = Options {
        ticks: args.ticks,
        verbose: args.verbose,
        replay_check: args.check_replay,
        client_deadline: args.client_deadline,
        membership: !args.no_membership,
        planted_bug: args.plant_bug.map(PlantedBug::from),
        ..Options::default()
    };
    let (passed, failed, write_errors) = if args.verbose {
        run_verbose(args, &options)
    } else {
        run_parallel(args, &options)
    };
    println!("{passed} seeds passed, {failed} failed");
    if failed > 0 || write_errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run_verbose(args: &ClusterArgs, options: &Options) -> (u64, u64, u64) {
    let (mut passed, mut failed, mut write_errors) = (0, 0, 0);
    for seed in args.seeds.clone() {
        println!("=== seed {seed}");
        let report = run_seed(seed, options);
        if let Some(dir) = &args.history_dir {
            if let Err((path, error)) = super::runner::write_history(dir, &report) {
                eprintln!("cannot write {}: {error}", path.display());
                write_errors += 1;
            }
        }
        match report.outcome {
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
    (passed, failed, write_errors)
}

fn run_parallel(args: &ClusterArgs, options: &Options) -> (u64, u64, u64) {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let summary = run_range(
        args.seeds.clone(),
        options,
        threads,
        args.history_dir.as_deref(),
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
    for (path, error) in &summary.write_errors {
        eprintln!("cannot write {}: {error}", path.display());
    }
    let totals = &summary.totals;
    println!(
        "passing seeds did {} client ops, {} crashes, {} partitions, {} snapshot chunks, \
         {} membership changes ({} completed)",
        totals.ops,
        totals.crashes,
        totals.partitions,
        totals.snapshot_chunks,
        totals.membership_changes,
        totals.membership_changes_done
    );
    println!(
        "{:.1} seeds/s ({:.1} s on {} threads)",
        summary.seeds_per_second(),
        summary.elapsed.as_secs_f64(),
        summary.threads
    );
    (
        summary.passed,
        summary.failures.len() as u64,
        summary.write_errors.len() as u64,
    )
}
