//! The seeded cluster simulator: seeds run production node cores to a
//! checked history, a seed replays exactly, histories are written in the
//! `HISTORY.md` format, and planted bugs are caught.

use flotilla_tools::history::{check, read_history};
use flotilla_tools::sim::cluster::runner::{history_path, run_range, Summary};
use flotilla_tools::sim::cluster::{run_seed, Options, PlantedBug, Property, DEFAULT_TICKS};

/// Debug builds are an order of magnitude slower: shorter runs there.
fn ticks() -> u64 {
    if cfg!(debug_assertions) {
        300
    } else {
        DEFAULT_TICKS
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

fn options() -> Options {
    Options {
        ticks: ticks(),
        ..Options::default()
    }
}

fn run(seeds: std::ops::Range<u64>, options: &Options) -> Summary {
    run_range(seeds, options, threads(), None, |_| {}, |_| {})
}

fn failures(summary: &Summary) -> String {
    let report: Vec<String> = summary.failures.iter().map(ToString::to_string).collect();
    report.join("\n\n")
}

/// Clients that give up on requests the node never answers (recording
/// them as unknown) still see a linearizable history on every seed.
#[test]
fn twenty_four_seeds_stay_linearizable() {
    let options = Options {
        client_deadline: true,
        ..options()
    };
    let summary = run(0..24, &options);
    assert!(summary.failures.is_empty(), "{}", failures(&summary));
    assert_eq!(summary.passed, 24);
}

/// `NodeConfig::request_timeout_ticks` promises every request an answer, a
/// `Timeout` at the latest. Fails while a request pending at a follower
/// whose group quiesces is never expired (see the cluster simulator's
/// report).
#[test]
fn every_request_is_answered_or_times_out() {
    let summary = run(0..24, &options());
    assert!(summary.failures.is_empty(), "{}", failures(&summary));
}

#[test]
fn a_seed_replays_its_exact_history_and_trace() {
    let options = Options {
        keep_trace: true,
        client_deadline: true,
        ..options()
    };
    for seed in [5, 77] {
        let first = run_seed(seed, &options);
        let second = run_seed(seed, &options);
        assert!(first.outcome.is_ok(), "seed {seed}: {:?}", first.outcome);
        assert!(first.history.len() > 500, "seed {seed} did almost nothing");
        assert_eq!(first.history, second.history, "seed {seed}: history");
        assert_eq!(first.trace, second.trace, "seed {seed}: trace");
        assert_eq!(first.outcome.ok(), second.outcome.ok());
    }
    let other = run_seed(6, &options);
    assert_ne!(run_seed(5, &options).history, other.history);
    let replayed = run_seed(
        5,
        &Options {
            replay_check: true,
            ..options
        },
    );
    assert!(replayed.outcome.is_ok(), "{:?}", replayed.outcome);
}

#[test]
fn runs_do_real_work() {
    let options = Options {
        client_deadline: true,
        ..options()
    };
    let mut totals = [0u64; 6];
    for seed in 0..24 {
        let stats = run_seed(seed, &options)
            .outcome
            .unwrap_or_else(|failure| panic!("{failure}"));
        for (total, seen) in totals.iter_mut().zip([
            stats.ok,
            stats.info,
            stats.crashes,
            stats.power_cuts,
            stats.partitions,
            stats.keys_checked,
        ]) {
            *total += seen;
        }
    }
    // Floors well below what 24 seeds do, scaled to the run length.
    let scale = ticks() / 300;
    let names = [
        "ok ops",
        "info ops",
        "crashes",
        "power cuts",
        "partitions",
        "keys",
    ];
    let floors = [5000, 20, 10, 3, 10, 500];
    for ((seen, floor), name) in totals.iter().zip(floors).zip(names) {
        eprintln!("{seen} {name}");
        assert!(*seen > floor * scale, "only {seen} {name}");
    }
}

#[test]
fn histories_are_written_in_the_history_format() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        client_deadline: true,
        ..options()
    };
    let summary = run_range(3..5, &options, 2, Some(dir.path()), |_| {}, |_| {});
    assert!(
        summary.write_errors.is_empty(),
        "{:?}",
        summary.write_errors
    );
    for seed in 3..5 {
        let file = std::fs::File::open(history_path(dir.path(), seed)).unwrap();
        let read = read_history(file).unwrap();
        assert_eq!(read, run_seed(seed, &options).history, "seed {seed}");
        assert!(check(&read).unwrap().is_linearizable());
    }
}

/// Runs seeds with a bug planted and returns how many were caught as not
/// linearizable.
fn caught(bug: PlantedBug) -> usize {
    let options = Options {
        planted_bug: Some(bug),
        client_deadline: true,
        ..options()
    };
    let summary = run(0..20, &options);
    summary
        .failures
        .iter()
        .filter(|failure| failure.property == Property::Linearizability)
        .count()
}

#[test]
fn writes_acknowledged_before_they_apply_are_caught() {
    let found = caught(PlantedBug::AckWritesEarly);
    assert!(found >= 15, "early acks caught on only {found} of 20 seeds");
}

#[test]
fn reads_served_from_local_state_without_read_index_are_caught() {
    let found = caught(PlantedBug::StaleLocalReads);
    assert!(
        found >= 15,
        "stale reads caught on only {found} of 20 seeds"
    );
}
