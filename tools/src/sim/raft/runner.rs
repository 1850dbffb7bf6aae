//! Runs a range of seeds on several threads. Each seed's outcome depends
//! only on the seed; which thread ran it does not matter, and failures are
//! returned sorted by seed.

use std::ops::Range;
use std::time::Duration;

use super::{run_seed, Failure, Options};
use crate::sim::parallel::run_seeds;

pub use crate::sim::parallel::Progress;

/// The outcome of a range of seeds.
#[derive(Debug)]
pub struct Summary {
    pub passed: u64,
    /// Sorted by seed.
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
    pub threads: usize,
}

impl Summary {
    pub fn seeds_per_second(&self) -> f64 {
        let total = self.passed + self.failures.len() as u64;
        total as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs every seed of `seeds` on `threads` threads. `on_failure` sees each
/// failure as it is found; `on_progress` is called every couple of seconds.
pub fn run_range(
    seeds: Range<u64>,
    options: &Options,
    threads: usize,
    mut on_failure: impl FnMut(&Failure),
    on_progress: impl FnMut(&Progress),
) -> Summary {
    let mut passed = 0u64;
    let mut failures = Vec::new();
    let stats = run_seeds(
        seeds,
        threads,
        |seed| run_seed(seed, options).outcome.err(),
        |outcome| match outcome {
            None => {
                passed += 1;
                false
            }
            Some(failure) => {
                on_failure(&failure);
                failures.push(failure);
                true
            }
        },
        on_progress,
    );
    failures.sort_by_key(|failure: &Failure| failure.seed);
    Summary {
        passed,
        failures,
        elapsed: stats.elapsed,
        threads: stats.threads,
    }
}
