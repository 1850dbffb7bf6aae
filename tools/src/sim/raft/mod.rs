//! The seeded Raft simulator: one group of real
//! [`flotilla_raftgroup::RawNode`]s over a simulated network, disk and
//! clock, with an oracle that checks Raft's safety properties after every
//! event and liveness once the faults stop.
//!
//! # What a run does
//!
//! The seed draws the cluster (1–7 voters, 0–2 learners), the Raft settings
//! (pre-vote, check-quorum, ReadIndex or lease reads, small message and
//! inflight limits to exercise flow control), the network (loss,
//! duplication, delays that reorder) and the rates of faults and
//! operations. For the first 70% of `ticks` the run injects crashes and
//! partitions while clients propose, read, change the membership, transfer
//! leadership, snapshot and compact, and quiesce idle leaders. Then the
//! faults stop: partitions heal, crashed nodes restart, nothing is lost any
//! more, and a leader must commit a handful of new writes and every member
//! must apply the whole committed log. Progress is required at least every
//! [`LIVENESS_ELECTION_TIMEOUTS`] election timeouts: how long a
//! lagging member takes to catch up depends on the seed's message size and
//! inflight limits, so a fixed deadline would only measure throughput.
//!
//! # The host model
//!
//! Each node's host follows the contract on [`flotilla_raftgroup::Ready`]
//! exactly. Persisting sometimes takes a few ticks: the `messages` of the
//! Ready are on the wire already, the node takes no input meanwhile, and a
//! crash in that window loses the Ready. A crash keeps exactly what the
//! host persisted (the node's `MemStorage`); a restart rebuilds the state
//! machine from the storage's snapshot and lets Raft replay the committed
//! entries after it. A host answers `report_snapshot` when the network
//! delivers or loses a snapshot, declares a leader dead after it has been
//! unreachable for two election timeouts (`leader_unreachable`), and
//! destroys a removed node once no member's configuration mentions it.
//!
//! # What is checked
//!
//! See [`oracle`] and [`Property`]: election safety, log matching (on
//! persisted logs and on every append a leader sends), committed entries
//! never change, leader completeness, applied state is a prefix of the
//! committed log, configuration agreement, commit index and durable state
//! never go back, reads are linearizable (a read sees every write committed
//! anywhere before it was asked), and liveness after healing.

mod checks;
mod faults;
mod host;
mod network;
mod ops;
pub mod oracle;
mod params;
mod ready;
pub mod runner;
pub mod state_machine;
mod trace;
mod world;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use oracle::{Oracle, Property, Violation};
pub use trace::RECENT_EVENTS_MAX;
pub use world::LIVENESS_ELECTION_TIMEOUTS;

/// Ticks of a run unless told otherwise.
pub const DEFAULT_TICKS: u64 = 600;

/// A bug planted in the simulated host, to prove that the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Followers answer reads from their own state machine at once,
    /// without asking the leader.
    StaleFollowerReads,
    /// The host persists hard states without the vote, so a restarted node
    /// may vote twice in one term.
    ForgetVote,
}

/// How to run a seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Length of the run; faults stop after 70% of it.
    pub ticks: u64,
    /// Print every event as it happens.
    pub verbose: bool,
    /// Keep every event of the run in [`Report::trace`].
    pub keep_trace: bool,
    pub planted_bug: Option<PlantedBug>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ticks: DEFAULT_TICKS,
            verbose: false,
            keep_trace: false,
            planted_bug: None,
        }
    }
}

/// Counters of a run that passed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub ticks: u64,
    pub events: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub committed: u64,
    pub writes_committed: u64,
    pub reads_served: u64,
    pub leader_terms: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub snapshots_installed: u64,
    pub compactions: u64,
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
            "raft",
        )
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub outcome: Result<Stats, Failure>,
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

/// Runs one seed to the end. A panic in the code under test is reported as
/// a failure of [`Property::Panic`].
pub fn run_seed(seed: u64, options: &Options) -> Report {
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
        tick: world.now,
        recent_events: world.trace.recent(),
    });
    Report {
        seed,
        outcome,
        trace: world.trace.take_all(),
    }
}
