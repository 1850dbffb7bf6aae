//! The world of one run: nodes, network, oracle and clock, and the loop
//! that advances them one tick at a time.
//!
//! A tick: faults (until the calm phase), restarts that are due, a `tick()`
//! for every live node, persistence that completes, client and host
//! operations, delivery of every due message (each one an event), the
//! liveness layer and the garbage collection of removed nodes. The oracle
//! checks the node an event touched right after the event.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_raftgroup::{ConfState, LogStorage, MemStorage, NodeId, Role};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::host::{NodeState, Slot};
use super::network::{Network, Partition};
use super::oracle::{violation, Checked, Oracle, Property};
use super::params::Params;
use super::state_machine::write_payload;
use super::trace::{Event, Trace};
use super::{Options, PlantedBug, Stats};

/// Once faults stop, the cluster must make progress (commit more, or apply
/// more on some member) at least once every this many election timeouts
/// until every member has applied the whole committed log, the calm-phase
/// writes included.
pub const LIVENESS_ELECTION_TIMEOUTS: u64 = 20;
/// However it progresses, the calm phase ends by this many election
/// timeouts...
const CALM_DEADLINE_ELECTION_TIMEOUTS: u64 = 100;
/// ...plus this many ticks per entry the furthest-behind member lags.
const CALM_DEADLINE_TICKS_PER_LAG_ENTRY: u64 = 20;
/// Message delays once faults stop; an eighth of the shortest election
/// timeout any seed configures.
const CALM_DELAY_TICKS_MAX: u64 = 1;
/// Writes proposed once faults stop, all of which must commit everywhere.
const CALM_WRITES: u64 = 4;
/// The log of every node is compared with the oracle in full this often.
const FULL_SCAN_EVERY_TICKS: u64 = 64;
/// Node ids are never reused; this bounds how many a run creates.
pub const NODE_IDS_MAX: NodeId = 40;

/// A read in progress.
#[derive(Clone, Copy, Debug)]
pub struct ReadRecord {
    pub node: NodeId,
    /// The highest commit index anywhere when the read was requested.
    pub floor: u64,
    pub served: bool,
}

/// What the transport tells a sender about one of its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// An `InstallSnapshot` arrived, or was lost.
    Snapshot { delivered: bool },
    /// An `Append` could not reach its receiver (down or cut off).
    Unreachable,
}

/// A report for the node that sent a message, in the incarnation that sent
/// it.
#[derive(Clone, Copy, Debug)]
pub struct HostReport {
    pub sender: NodeId,
    pub incarnation: u64,
    pub to: NodeId,
    pub kind: ReportKind,
}

/// The calm phase: no more faults; the liveness check runs.
#[derive(Debug)]
pub struct Calm {
    pub deadline: u64,
    /// The last [`World::progress_mark`] seen, and when it changed.
    pub progress: u64,
    pub progress_at: u64,
    pub writes: Vec<u64>,
    pub pad_bytes: usize,
    pub proposed_at: Option<u64>,
}

#[derive(Debug)]
pub struct World {
    pub seed: u64,
    pub params: Params,
    calm_at: u64,
    pub planted: Option<PlantedBug>,
    pub rng: ChaCha8Rng,
    pub now: u64,
    pub slots: BTreeMap<NodeId, Slot>,
    pub net: Network,
    pub partition: Option<Partition>,
    pub oracle: Oracle,
    pub trace: Trace,
    pub reads: BTreeMap<u64, ReadRecord>,
    pub reports: Vec<HostReport>,
    /// Nodes to crash as soon as the event at hand is over.
    pub crash_soon: Vec<NodeId>,
    /// `(follower, leader)` → since when the follower cannot reach the
    /// leader it follows.
    pub cut_since: BTreeMap<(NodeId, NodeId), u64>,
    /// Terms whose leader was checked for completeness.
    pub completeness_checked: BTreeSet<u64>,
    pub calm: Option<Calm>,
    pub next_write: u64,
    pub next_read: u64,
    pub next_node: NodeId,
    pub bootstrap_conf: ConfState,
    pub stats: Stats,
}

impl World {
    pub fn new(seed: u64, options: &Options) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = Params::generate(&mut rng);
        let voters: Vec<NodeId> = (1..=params.voters).collect();
        let learners: Vec<NodeId> = (params.voters + 1..=params.voters + params.learners).collect();
        let bootstrap_conf = ConfState {
            voters,
            learners,
            ..ConfState::default()
        };
        World {
            seed,
            calm_at: (options.ticks * 7 / 10).max(1),
            planted: options.planted_bug,
            rng,
            now: 0,
            slots: BTreeMap::new(),
            net: Network::new(),
            partition: None,
            oracle: Oracle::new(bootstrap_conf.clone()),
            trace: Trace::new(options.verbose, options.keep_trace),
            reads: BTreeMap::new(),
            reports: Vec::new(),
            crash_soon: Vec::new(),
            cut_since: BTreeMap::new(),
            completeness_checked: BTreeSet::new(),
            calm: None,
            next_write: seed << 24,
            next_read: 1,
            next_node: params.voters + params.learners + 1,
            bootstrap_conf,
            params,
            stats: Stats::default(),
        }
    }

    pub fn event(&mut self, event: Event) {
        self.trace.push(self.now, event);
    }

    /// Runs to the end: the calm phase converges, or a property fails.
    pub fn run(&mut self) -> Checked<Stats> {
        self.bootstrap()?;
        loop {
            self.now += 1;
            self.event(Event::Tick);
            if self.now == self.calm_at {
                self.enter_calm()?;
            }
            if self.calm.is_none() {
                self.inject_faults()?;
            }
            self.restart_due()?;
            self.tick_nodes()?;
            self.finish_due_persists()?;
            self.client_ops()?;
            self.deliver_due()?;
            self.liveness_layer()?;
            self.collect_removed();
            if self.now % FULL_SCAN_EVERY_TICKS == 0 {
                self.full_scan()?;
            }
            if self.calm_step()? {
                self.full_scan()?;
                return Ok(self.finish_stats());
            }
        }
    }

    fn finish_stats(&mut self) -> Stats {
        let mut stats = self.stats.clone();
        stats.ticks = self.now;
        stats.events = self.trace.count();
        stats.committed = self.oracle.committed_len();
        stats.writes_committed = self.oracle.writes_committed() as u64;
        stats.leader_terms = self.oracle.leader_terms() as u64;
        stats
    }

    fn bootstrap(&mut self) -> Checked {
        let conf = self.bootstrap_conf.clone();
        self.event(Event::Start {
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            settings: self.params.summary(),
        });
        for &id in conf.voters.iter().chain(&conf.learners) {
            self.slots.insert(
                id,
                Slot {
                    state: NodeState::Destroyed,
                    incarnation: 0,
                    persisted_commit: 0,
                },
            );
            self.start_host(id, MemStorage::new_with_conf_state(conf.clone()))?;
        }
        Ok(())
    }

    /// Ids of running nodes, in order.
    pub fn live_ids(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.host().is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ids of running nodes free to take input, in order.
    pub fn idle_ids(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.idle_host().is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The idle leader of the highest term, if any.
    pub fn idle_leader(&self) -> Option<NodeId> {
        self.slots
            .iter()
            .filter_map(|(id, slot)| slot.idle_host().map(|host| (*id, host)))
            .filter(|(_, host)| host.raw.role() == Role::Leader)
            .max_by_key(|(_, host)| host.raw.term())
            .map(|(id, _)| id)
    }

    pub fn is_busy(&self, id: NodeId) -> bool {
        self.slots
            .get(&id)
            .and_then(Slot::host)
            .is_some_and(|host| host.busy.is_some())
    }

    fn tick_nodes(&mut self) -> Checked {
        for id in self.live_ids() {
            let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
                continue;
            };
            if host.busy.is_some() {
                host.owed_ticks += 1;
                continue;
            }
            host.raw.tick();
            self.drain(id)?;
            self.after_event(id)?;
        }
        Ok(())
    }

    fn enter_calm(&mut self) -> Checked {
        let first = self.next_write;
        self.next_write += CALM_WRITES;
        let pad_bytes = self.params.ops.payload_pad_bytes_max;
        let election = self.params.election_ticks;
        // Catching up takes time proportional to the lag; the deadline only
        // stops a run that progresses forever without converging.
        let deadline = self.now
            + CALM_DEADLINE_ELECTION_TIMEOUTS * election
            + CALM_DEADLINE_TICKS_PER_LAG_ENTRY * self.max_lag_entries();
        self.calm = Some(Calm {
            deadline,
            writes: (first..first + CALM_WRITES).collect(),
            pad_bytes,
            proposed_at: None,
            progress: 0,
            progress_at: self.now,
        });
        self.event(Event::Calm {
            writes: (first, first + CALM_WRITES - 1),
        });
        self.net.lossy = false;
        self.net.calm_delay_ticks_max = Some(CALM_DELAY_TICKS_MAX);
        if self.partition.take().is_some() {
            self.event(Event::Heal);
        }
        let crashed: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, slot)| matches!(slot.state, NodeState::Crashed { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in crashed {
            self.restart(id)?;
        }
        Ok(())
    }

    /// How far the furthest-behind member is from the longest log.
    fn max_lag_entries(&self) -> u64 {
        let conf = self.oracle.current_conf();
        let members = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners);
        let logs = members.filter_map(|id| match &self.slots.get(id)?.state {
            NodeState::Live(host) => Some(host.raw.storage().last_index()),
            NodeState::Crashed { storage, .. } => Some(storage.last_index()),
            NodeState::Destroyed => None,
        });
        let (min, max) = logs.fold((u64::MAX, 0), |(min, max), last| {
            (min.min(last), max.max(last))
        });
        max.saturating_sub(min)
    }

    /// A number that grows whenever the cluster gets closer to converging:
    /// the committed log grows or some member applies more of it.
    fn progress_mark(&self) -> u64 {
        let conf = self.oracle.current_conf();
        let applied: u64 = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners)
            .filter_map(|id| self.slots.get(id)?.host())
            .map(|host| host.sm.applied)
            .sum();
        applied + self.oracle.committed_len()
    }

    /// One tick of the calm phase: (re)propose the calm writes at the
    /// leader, and see whether the cluster converged or stopped making
    /// progress. Returns whether the run is done.
    fn calm_step(&mut self) -> Checked<bool> {
        let Some(calm) = &self.calm else {
            return Ok(false);
        };
        let pending: Vec<u64> = calm
            .writes
            .iter()
            .copied()
            .filter(|&id| !self.oracle.write_committed(id))
            .collect();
        let election = self.params.election_ticks;
        let retry_due = calm.proposed_at.is_none_or(|at| self.now >= at + election);
        let pad_bytes = calm.pad_bytes;
        if !pending.is_empty() && retry_due {
            self.propose_calm_writes(&pending, pad_bytes)?;
        }
        if pending.is_empty() {
            if let Some(commit) = self.converged() {
                self.event(Event::Converged { commit });
                return Ok(true);
            }
        }
        let mark = self.progress_mark();
        let now = self.now;
        let Some(calm) = &mut self.calm else {
            return Ok(false);
        };
        if mark != calm.progress {
            calm.progress = mark;
            calm.progress_at = now;
        }
        let stalled = now - calm.progress_at >= LIVENESS_ELECTION_TIMEOUTS * election;
        if stalled || now >= calm.deadline {
            let why = if stalled {
                format!("no progress for {LIVENESS_ELECTION_TIMEOUTS} election timeouts")
            } else {
                "still not converged at the deadline".to_string()
            };
            return Err(violation(
                Property::Liveness,
                self.liveness_report(&why, &pending),
            ));
        }
        Ok(false)
    }

    fn propose_calm_writes(&mut self, pending: &[u64], pad_bytes: usize) -> Checked {
        let Some(leader) = self.idle_leader() else {
            return Ok(());
        };
        let Some(host) = self.slots.get_mut(&leader).and_then(Slot::host_mut) else {
            return Ok(());
        };
        let payloads = pending
            .iter()
            .map(|&id| write_payload(id, pad_bytes))
            .collect();
        let result = host.raw.propose_batch(payloads);
        if result.is_ok() {
            if let Some(calm) = &mut self.calm {
                calm.proposed_at = Some(self.now);
            }
        }
        let writes = (pending[0], pending[pending.len() - 1]);
        self.event(Event::Propose {
            node: leader,
            writes,
            result,
        });
        self.drain(leader)?;
        self.after_event(leader)
    }

    /// Every member of the committed configuration runs, agrees on one
    /// leader, and has committed and applied the whole committed log; the
    /// configuration is not joint. Returns the commit index.
    fn converged(&self) -> Option<u64> {
        let conf = self.oracle.current_conf();
        if conf.is_joint() {
            return None;
        }
        let target = self.oracle.committed_len();
        let mut leader = None;
        for id in conf.voters.iter().chain(&conf.learners) {
            let host = self.slots.get(id)?.idle_host()?;
            let raw = &host.raw;
            if raw.committed() != target || host.sm.applied != target {
                return None;
            }
            if raw.leader() == 0 || *leader.get_or_insert(raw.leader()) != raw.leader() {
                return None;
            }
        }
        let leader = self.slots.get(&leader?)?.idle_host()?;
        (leader.raw.role() == Role::Leader).then_some(target)
    }

    fn liveness_report(&self, why: &str, pending: &[u64]) -> String {
        let conf = self.oracle.current_conf();
        let mut report = format!(
            "{why} after faults stopped at tick {}; writes not committed: {pending:?}; \
             committed {}; messages in flight {}; configuration {conf:?}; nodes:",
            self.calm_at,
            self.oracle.committed_len(),
            self.net.in_flight()
        );
        for (id, slot) in &self.slots {
            let line = match &slot.state {
                NodeState::Live(host) => {
                    let raw = &host.raw;
                    format!(
                        "\n  {id}: {:?} term={} leader={} commit={} applied={} last={} \
                         busy={} quiesced={} conf={:?} progress={:?}",
                        raw.role(),
                        raw.term(),
                        raw.leader(),
                        raw.committed(),
                        host.sm.applied,
                        raw.last_index(),
                        host.busy.is_some(),
                        raw.is_quiesced(),
                        raw.conf_state(),
                        raw.progress()
                    )
                }
                NodeState::Crashed { .. } => format!("\n  {id}: crashed"),
                NodeState::Destroyed => format!("\n  {id}: destroyed"),
            };
            report.push_str(&line);
        }
        report
    }
}
