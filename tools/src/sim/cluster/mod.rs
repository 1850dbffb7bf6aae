//! The seeded whole-cluster simulator: 3 or 5 production
//! [`flotilla::node::NodeCore`]s, each over its own [`flotilla::wal::Wal`]
//! on its own simulated disk ([`flotilla::wal::sim_fs::SimFs`]), hosting
//! 4–32 ranges, driven by simulated clients over a simulated network and
//! clock; the clients' history is checked for linearizability.
//!
//! # What a run does
//!
//! The seed draws the cluster (3 or 5 nodes, every node a replica of every
//! range; ranges are even splits of the key space by the first key byte),
//! the node and Raft settings (small election and request timeouts,
//! pre-vote, check-quorum, ReadIndex or lease reads, small message and
//! inflight limits on some seeds), the WAL's cache size (so some runs read
//! entries back from the segments), the network (loss, duplication,
//! per-frame delays that reorder) and the fault rates. Time is a global
//! loop: every tick each live node `tick()`s, then in each of
//! [`STEPS_PER_TICK`] steps idle clients submit, every node runs rounds
//! until it has no work, and due frames are delivered.
//!
//! For the first 70% of `ticks` faults are on: partitions into random
//! sides that heal after a while, frame loss and duplication, node crashes
//! (the core and WAL are dropped and `SimFs::crash` loses every unsynced
//! byte) either between rounds or as a power cut at the n-th file
//! operation, which fails the WAL write of a round midway and may tear it,
//! restarts (the WAL reopens on the same disk and `NodeCore::open`
//! recovers every range), forced campaigns (`NodeCore::campaign`) and
//! false suspicions of a live peer (`NodeCore::peer_down`). `NodeCore`
//! exposes no leader transfer, so there are none.
//!
//! Then the faults stop: partitions heal, crashed nodes restart, nothing
//! is lost any more and delays shrink. Within [`CALM_DEADLINE_TICKS`] every
//! range must have one leader all nodes agree on, every client must
//! complete three more operations with a definite outcome, and then one
//! reader per key must read it.
//!
//! # Clients and the history
//!
//! Each client is a process with at most one operation in flight: a read
//! (`Request::Get`), a put, a delete or a CAS on a small key set (half of
//! the operations on the keys of a few "hot" ranges), sent to its home
//! node (any node: followers forward), which it changes when that node is
//! down, sometimes after an error, and now and then at random. Values are
//! unique per write. Every operation is recorded in a
//! [`crate::history::Recorder`] with the simulated time; how an answer
//! becomes `ok`, `fail` or `info` is documented in [`client`].
//!
//! # What is checked
//!
//! The whole history, per key, with [`crate::history::check`]: a
//! `NotLinearizable` verdict, and also an undecided one, fails the seed.
//! An acknowledged write that is lost fails it too, through the reads that
//! follow (the final sweep reads every key). The node must answer every
//! request exactly once and with a response of the right kind, WAL
//! recovery must succeed after every crash, a round may fail only because
//! of a simulated power cut, and nothing may panic. A run is a pure
//! function of its seed; [`Options::replay_check`] runs each seed twice
//! and compares the histories.

pub mod cli;
mod client;
mod network;
mod params;
pub mod runner;
mod trace;
mod world;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use trace::RECENT_EVENTS_MAX;
pub use world::{CALM_DEADLINE_TICKS, STEPS_PER_TICK, STEP_NS};

use crate::history::Event as HistoryEvent;

/// Ticks of a run unless told otherwise; faults stop after 70% of them.
pub const DEFAULT_TICKS: u64 = 1000;

/// A bug planted in the simulated clients or nodes, to prove that the
/// checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A write is acknowledged as soon as it is proposed, before it
    /// committed or applied.
    AckWritesEarly,
    /// A node answers a read from the last value it returned or accepted
    /// for the key, without ReadIndex (as a follower serving its local
    /// state would).
    StaleLocalReads,
}

/// How to run a seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Length of the fault phase is 70% of this; the calm phase follows.
    pub ticks: u64,
    /// Print every event as it happens.
    pub verbose: bool,
    /// Keep every event of the run in [`Report::trace`].
    pub keep_trace: bool,
    /// Run every seed twice and require identical histories.
    pub replay_check: bool,
    /// A client gives up (`info`) on a request that `NodeCore` neither
    /// answered nor timed out in time, instead of failing the seed. Off by
    /// default; it lets a run look past that known defect for others.
    pub client_deadline: bool,
    /// Inject membership changes (add and remove replicas, each seed at
    /// its own rate, some seeds none). On by default.
    pub membership: bool,
    pub planted_bug: Option<PlantedBug>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ticks: DEFAULT_TICKS,
            verbose: false,
            keep_trace: false,
            replay_check: false,
            client_deadline: false,
            membership: true,
            planted_bug: None,
        }
    }
}

/// What a run checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// The history of some key has no valid linearization.
    Linearizability,
    /// The checker could not decide some key within its budget.
    Undecided,
    /// After the faults stopped, a range had no agreed leader or a client
    /// could not complete its operations in time.
    Liveness,
    /// A WAL did not reopen, or `NodeCore::open` failed on it.
    Recovery,
    /// A round failed although no fault was injected.
    Storage,
    /// A node completed a request twice, one nobody submitted, with a
    /// response that does not fit the request, or never (not even with a
    /// `Timeout`).
    Completion,
    /// The simulator recorded a history the checker cannot read (a bug of
    /// the simulator).
    MalformedHistory,
    /// The same seed produced a different history on a second run.
    Determinism,
    /// Code under test panicked.
    Panic,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Property::Linearizability => "linearizability",
            Property::Undecided => "decidable history",
            Property::Liveness => "liveness after healing",
            Property::Recovery => "recovery",
            Property::Storage => "storage",
            Property::Completion => "request completion",
            Property::MalformedHistory => "well-formed history",
            Property::Determinism => "determinism",
            Property::Panic => "no panic",
        };
        f.write_str(name)
    }
}

/// Counters of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub ticks: u64,
    pub events: u64,
    pub ops: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    pub frames_sent: u64,
    pub frames_lost: u64,
    pub crashes: u64,
    pub power_cuts: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub campaigns: u64,
    /// Requests clients gave up on ([`Options::client_deadline`]).
    pub abandoned: u64,
    pub calm_ticks: u64,
    pub keys_checked: u64,
    /// Snapshot chunks sent (snapshot transfers to lagging or new replicas).
    pub snapshot_chunks: u64,
    /// Membership changes asked for, and those that completed.
    pub membership_changes: u64,
    pub membership_changes_done: u64,
}

impl Stats {
    /// Adds the counters of another run (for totals over many seeds).
    pub fn absorb(&mut self, other: &Stats) {
        self.ticks += other.ticks;
        self.ops += other.ops;
        self.crashes += other.crashes;
        self.partitions += other.partitions;
        self.snapshot_chunks += other.snapshot_chunks;
        self.membership_changes += other.membership_changes;
        self.membership_changes_done += other.membership_changes_done;
    }
}

/// A run that failed: which property, where, and what led to it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub property: Property,
    pub detail: String,
    pub tick: u64,
    pub recent_events: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::sim::write_failure(
            f,
            self.seed,
            self.tick,
            &self.property,
            &self.detail,
            &self.recent_events,
            "cluster",
        )
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub outcome: Result<Stats, Failure>,
    /// What the clients did, in the `HISTORY.md` format's order.
    pub history: Vec<HistoryEvent>,
    /// Every event, when [`Options::keep_trace`] was set.
    pub trace: Vec<String>,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}

fn run_once(seed: u64, options: &Options) -> Report {
    let mut world = world::World::new(seed, options);
    let result = catch_unwind(AssertUnwindSafe(|| world.run()));
    let outcome = match result {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(violation)) => Err((violation.property, violation.detail)),
        Err(payload) => Err((Property::Panic, panic_message(payload.as_ref()))),
    };
    let outcome = outcome.map_err(|(property, detail)| Failure {
        seed,
        property,
        detail,
        tick: world.tick,
        recent_events: world.trace.recent(),
    });
    Report {
        seed,
        outcome,
        history: world.recorder.events(),
        trace: world.trace.take_all(),
    }
}

/// Runs one seed to the end (twice with [`Options::replay_check`]). A panic
/// in the code under test is reported as a failure of [`Property::Panic`].
pub fn run_seed(seed: u64, options: &Options) -> Report {
    let mut report = run_once(seed, options);
    if !options.replay_check {
        return report;
    }
    let quiet = Options {
        verbose: false,
        ..options.clone()
    };
    let again = run_once(seed, &quiet);
    let same_outcome = match (&report.outcome, &again.outcome) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a.property == b.property && a.detail == b.detail,
        _ => false,
    };
    if report.outcome.is_ok() && !(same_outcome && report.history == again.history) {
        let first_difference = report
            .history
            .iter()
            .zip(&again.history)
            .position(|(a, b)| a != b)
            .unwrap_or(report.history.len().min(again.history.len()));
        report.outcome = Err(Failure {
            seed,
            property: Property::Determinism,
            detail: format!(
                "a second run differs: {} vs {} history events, first difference at event \
                 {first_difference}; outcomes {:?} vs {:?}",
                report.history.len(),
                again.history.len(),
                report.outcome.as_ref().ok(),
                again.outcome.as_ref().ok()
            ),
            tick: 0,
            recent_events: Vec::new(),
        });
    }
    report
}
