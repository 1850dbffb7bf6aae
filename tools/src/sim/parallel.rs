//! Runs a range of seeds on several threads, for every simulator. Each
//! seed's outcome depends only on the seed; which thread ran it does not
//! matter. Results come back to the calling thread as they finish, with
//! progress reports every couple of seconds.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// How a parallel run went, besides its results.
#[derive(Clone, Copy, Debug)]
pub struct RunStats {
    pub elapsed: Duration,
    pub threads: usize,
}

/// Runs `run(seed)` for every seed on up to `threads` threads. `collect`
/// receives each result on the calling thread and says whether the seed
/// failed; `on_progress` is called every couple of seconds.
pub fn run_seeds<T: Send>(
    seeds: Range<u64>,
    threads: usize,
    run: impl Fn(u64) -> T + Sync,
    mut collect: impl FnMut(T) -> bool,
    mut on_progress: impl FnMut(&Progress),
) -> RunStats {
    let start = Instant::now();
    let total = seeds.end.saturating_sub(seeds.start);
    let next = AtomicU64::new(seeds.start);
    let threads = threads.clamp(1, total.max(1) as usize);
    let (sender, receiver) = mpsc::channel::<T>();
    let (mut done, mut failed) = (0u64, 0u64);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let sender = sender.clone();
            let (next, run) = (&next, &run);
            let end = seeds.end;
            scope.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end || sender.send(run(seed)).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        let mut last_progress = Instant::now();
        for result in receiver {
            done += 1;
            failed += u64::from(collect(result));
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                on_progress(&Progress {
                    done,
                    total,
                    failed,
                    elapsed: start.elapsed(),
                });
            }
        }
    });
    RunStats {
        elapsed: start.elapsed(),
        threads,
    }
}
