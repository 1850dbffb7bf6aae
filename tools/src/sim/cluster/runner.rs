//! Runs a range of seeds on several threads and, when asked, writes each
//! seed's history as `DIR/seed-{seed}.jsonl`. Each seed's outcome depends
//! only on the seed; which thread ran it does not matter, and failures are
//! returned sorted by seed.

use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{run_seed, Failure, Options, Report};
use crate::history::HistoryWriter;
use crate::sim::parallel::run_seeds;

pub use crate::sim::parallel::Progress;

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
    /// Counters summed over the passing seeds.
    pub totals: super::Stats,
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
    on_progress: impl FnMut(&Progress),
) -> Summary {
    let mut passed = 0u64;
    let mut totals = super::Stats::default();
    let mut failures = Vec::new();
    let mut write_errors = Vec::new();
    let stats = run_seeds(
        seeds,
        threads,
        |seed| {
            let report = run_seed(seed, options);
            let written = history_dir.and_then(|dir| write_history(dir, &report).err());
            (report.outcome, written)
        },
        |(outcome, write_error)| {
            write_errors.extend(write_error);
            match outcome {
                Ok(stats) => {
                    passed += 1;
                    totals.absorb(&stats);
                    false
                }
                Err(failure) => {
                    on_failure(&failure);
                    failures.push(failure);
                    true
                }
            }
        },
        on_progress,
    );
    failures.sort_by_key(|failure: &Failure| failure.seed);
    Summary {
        passed,
        failures,
        write_errors,
        elapsed: stats.elapsed,
        threads: stats.threads,
        totals,
    }
}
