//! Runs a range of seeds on several threads and, when asked, writes each
//! seed's history as `DIR/seed-{seed}.jsonl`. Each seed's outcome depends
//! only on the seed; which thread ran it does not matter, and failures are
//! returned sorted by seed.

use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{run_seed, Failure, Options, Report};
use crate::history::HistoryWriter;

/// How often progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Where a run of many seeds stands.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn seeds_per_second(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The outcome of a range of seeds.
#[derive(Debug)]
pub struct Summary {
    pub passed: u64,
    /// Sorted by seed.
    pub failures: Vec<Failure>,
    /// History files that could not be written, with the reason.
    pub write_errors: Vec<(PathBuf, String)>,
    pub elapsed: Duration,
    pub threads: usize,
}

impl Summary {
    pub fn seeds_per_second(&self) -> f64 {
        let total = self.passed + self.failures.len() as u64;
        total as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The file `seed`'s history goes to in `dir`.
pub fn history_path(dir: &Path, seed: u64) -> PathBuf {
    dir.join(format!("seed-{seed}.jsonl"))
}

/// Writes `report`'s history to `dir` in the `HISTORY.md` format.
///
/// # Errors
///
/// The file's, with its path.
pub fn write_history(dir: &Path, report: &Report) -> Result<(), (PathBuf, String)> {
    let path = history_path(dir, report.seed);
    let result = File::create(&path).and_then(|file| {
        let mut writer = HistoryWriter::new(BufWriter::new(file));
        writer.write_all(report.history.iter())?;
        writer.flush()
    });
    result.map_err(|error| (path, error.to_string()))
}

/// Runs every seed of `seeds` on `threads` threads, writing histories to
/// `history_dir` if given. `on_failure` sees each failure as it is found;
/// `on_progress` is called every couple of seconds.
pub fn run_range(
    seeds: Range<u64>,
    options: &Options,
    threads: usize,
    history_dir: Option<&Path>,
    mut on_failure: impl FnMut(&Failure),
    mut on_progress: impl FnMut(&Progress),
) -> Summary {
    let start = Instant::now();
    let total = seeds.end.saturating_sub(seeds.start);
    let next = AtomicU64::new(seeds.start);
    let threads = threads.clamp(1, total.max(1) as usize);
    type Outcome = (Option<Failure>, Option<(PathBuf, String)>);
    let (sender, receiver) = mpsc::channel::<Outcome>();
    let mut passed = 0u64;
    let mut failures = Vec::new();
    let mut write_errors = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let sender = sender.clone();
            let next = &next;
            let end = seeds.end;
            scope.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let report = run_seed(seed, options);
                let written = history_dir.and_then(|dir| write_history(dir, &report).err());
                if sender.send((report.outcome.err(), written)).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        let mut last_progress = Instant::now();
        for (failure, write_error) in receiver {
            match failure {
                None => passed += 1,
                Some(failure) => {
                    on_failure(&failure);
                    failures.push(failure);
                }
            }
            write_errors.extend(write_error);
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                on_progress(&Progress {
                    done: passed + failures.len() as u64,
                    total,
                    failed: failures.len() as u64,
                    elapsed: start.elapsed(),
                });
            }
        }
    });
    failures.sort_by_key(|failure: &Failure| failure.seed);
    Summary {
        passed,
        failures,
        write_errors,
        elapsed: start.elapsed(),
        threads,
    }
}
