//! Runs a range of seeds on several threads. Each seed's outcome depends
//! only on the seed; which thread ran it does not matter, and failures are
//! returned sorted by seed.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{run_seed, Failure, Options};

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
    mut on_progress: impl FnMut(&Progress),
) -> Summary {
    let start = Instant::now();
    let total = seeds.end.saturating_sub(seeds.start);
    let next = AtomicU64::new(seeds.start);
    let threads = threads.clamp(1, total.max(1) as usize);
    let (sender, receiver) = mpsc::channel::<Option<Failure>>();
    let mut passed = 0u64;
    let mut failures = Vec::new();
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
                let failure = run_seed(seed, options).outcome.err();
                if sender.send(failure).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        let mut last_progress = Instant::now();
        for outcome in receiver {
            match outcome {
                None => passed += 1,
                Some(failure) => {
                    on_failure(&failure);
                    failures.push(failure);
                }
            }
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
        elapsed: start.elapsed(),
        threads,
    }
}
