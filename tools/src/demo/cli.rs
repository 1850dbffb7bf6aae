//! The `flotilla demo` command line: settings in, figures out, and a last
//! line that starts with `demo: ok` or `demo: FAILED`, matching the exit
//! status.

use std::process::ExitCode;

use clap::Args;

use super::{DemoOptions, DemoReport, IdleReport};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Ranges (Raft groups), each replicated on all three nodes.
    #[arg(long, default_value_t = 64)]
    ranges: u64,
    /// Seconds of workload.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Keep the nodes' data, settings, certificates and logs here instead
    /// of a temporary directory.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Do not kill a node.
    #[arg(long)]
    no_kill: bool,
    /// First measure the cluster at rest for this many seconds: frames per
    /// node pair per tick and CPU per node, once every range quiesced.
    #[arg(long, default_value_t = 0.0)]
    idle_seconds: f64,
    /// Milliseconds per Raft tick.
    #[arg(long, default_value_t = 20)]
    tick_ms: u64,
    /// Raft worker threads per node (default: the engine's).
    #[arg(long)]
    workers: Option<usize>,
}

/// Runs the demo and prints what it did.
pub fn run(args: &DemoArgs) -> ExitCode {
    if args.ranges == 0 || args.clients == 0 || args.seconds <= 0.0 || args.idle_seconds < 0.0 {
        println!("demo: FAILED (--ranges, --clients and --seconds must be positive)");
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            println!("demo: FAILED (cannot find the flotilla binary to start nodes with: {error})");
            return ExitCode::FAILURE;
        }
    };
    let options = DemoOptions {
        ranges: args.ranges,
        seconds: args.seconds,
        clients: args.clients,
        data_dir: args.data_dir.clone(),
        kill: !args.no_kill,
        idle_seconds: args.idle_seconds,
        tick_ms: args.tick_ms,
        workers: args.workers,
        exe,
        ..DemoOptions::default()
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
    match runtime.block_on(super::run(options)) {
        Ok(report) => print_report(&report),
        Err(reason) => {
            println!("demo: FAILED ({reason})");
            ExitCode::FAILURE
        }
    }
}

fn print_idle(idle: &IdleReport) {
    let frames: Vec<String> = idle
        .frames_per_tick
        .iter()
        .map(|((from, to), f)| format!("{from}->{to} {f:.2}"))
        .collect();
    let worst = idle.frames_per_tick.values().copied().fold(0.0, f64::max);
    let cpu: Vec<String> = idle
        .cpu_percent
        .iter()
        .map(|(node, p)| format!("node {node} {p:.2}%"))
        .collect();
    println!(
        "demo: at rest for {:.1} s ({:.0} ticks, {} replicas awake at the end): frames per node \
         pair per tick: {} (most {worst:.2}); CPU of a core: {}",
        idle.seconds,
        idle.ticks,
        idle.awake_groups,
        frames.join(", "),
        cpu.join(", ")
    );
}

fn print_report(report: &DemoReport) -> ExitCode {
    if let Some(idle) = &report.idle {
        print_idle(idle);
    }
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
            println!(
                "demo: killed node {node} (it led {leaders} ranges); every range had a leader \
                 again after {ms} ms; {} writes acknowledged after that",
                report.writes_after_failover
            );
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
    if let Some(first) = report.failures.first() {
        println!(
            "demo: FAILED ({} problems, first: {first}; logs in {})",
            report.failures.len(),
            report.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "demo: ok ({ops:.0} ops/s, write p99 {} us{failover}, {} keys verified)",
        report.write_us.1, report.keys_checked
    );
    ExitCode::SUCCESS
}
