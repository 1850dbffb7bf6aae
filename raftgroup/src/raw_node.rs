//! The interface a host drives: inputs go in through [`RawNode`]'s methods,
//! work to do comes out as a [`Ready`].

use crate::config::Config;
use crate::error::{Error, Result};
use crate::raft::{Proposed, Raft};
use crate::storage::LogStorage;
use crate::tracker::ProgressState;
use crate::types::{
    ConfChange, ConfState, Entry, EntryKind, HardState, Message, NodeId, ReadState, Role, Snapshot,
    SoftState,
};

/// Work the host must do, in this order:
///
/// 1. Send `messages` at once. They are the leader's appends, heartbeats,
///    snapshots and read confirmations, which may leave before the leader's
///    own entries are durable (Raft thesis §10.2.1): the leader counts
///    itself toward a quorum only once `advance` reports them persisted.
/// 2. Persist, in this order, `snapshot` (if any), `entries` (replacing any
///    suffix of the stored log they overwrite) and `hard_state` (if any).
///    When `must_sync` is set they must be durable (fsync) before step 3.
/// 3. Send `persisted_messages`: votes, append responses and everything a
///    non-leader sends. They promise that the state of step 2 is durable.
/// 4. Apply `snapshot` to the state machine if any, then apply
///    `committed_entries` in order (calling [`RawNode::apply_conf_change`]
///    for `ConfChange` entries). Committed entries are always persisted
///    locally already.
/// 5. Serve `read_states`: their index is at or below what the host has
///    applied, so reading the state machine now is linearizable.
/// 6. Call [`RawNode::advance`] with the `Ready`.
///
/// No other method of the `RawNode` may be called between `ready()` and
/// `advance()`.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub committed_entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub read_states: Vec<ReadState>,
    pub must_sync: bool,
}

/// One replica of a Raft group, driven by its host. Pure: no threads, no
/// clock, no IO.
pub struct RawNode<S: LogStorage> {
    raft: Raft<S>,
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    /// Between `ready()` and `advance()`: what the Ready handed out.
    in_flight: Option<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    applied_to: u64,
}

impl<S: LogStorage> std::fmt::Debug for RawNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawNode")
            .field("id", &self.raft.id)
            .field("term", &self.raft.term)
            .field("role", &self.raft.role)
            .field("leader", &self.raft.lead)
            .field("committed", &self.raft.log.committed)
            .field("applied", &self.raft.log.applied)
            .field("last_index", &self.raft.log.last_index())
            .finish()
    }
}

/// A snapshot of one follower's replication state, as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressView {
    pub node: NodeId,
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
}

impl<S: LogStorage> RawNode<S> {
    /// Creates a replica over `storage`, which holds its persisted hard
    /// state, configuration and log.
    pub fn new(config: Config, storage: S) -> Result<Self> {
        let raft = Raft::new(config, storage)?;
        let prev_hard_state = raft.hard_state();
        let prev_soft_state = raft.soft_state();
        Ok(RawNode {
            raft,
            prev_hard_state,
            prev_soft_state,
            in_flight: None,
        })
    }

    fn check_not_in_flight(&self) {
        debug_assert!(
            self.in_flight.is_none(),
            "RawNode used between ready() and advance()"
        );
    }

    /// Advances the logical clock by one tick. Quiesced replicas ignore it.
    pub fn tick(&mut self) {
        self.check_not_in_flight();
        self.raft.tick();
    }

    /// Steps a message from a peer.
    pub fn step(&mut self, message: Message) -> Result<()> {
        self.check_not_in_flight();
        self.raft.step(message)
    }

    /// Proposes one entry of application data.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<Proposed> {
        self.propose_batch(vec![data])
    }

    /// Proposes several entries at once; they are appended contiguously.
    pub fn propose_batch(&mut self, data: Vec<Vec<u8>>) -> Result<Proposed> {
        self.check_not_in_flight();
        let entries = data
            .into_iter()
            .map(|data| Entry {
                term: 0,
                index: 0,
                kind: EntryKind::Normal,
                data: data.into(),
            })
            .collect();
        self.raft.propose(entries)
    }

    /// Proposes a membership change (leader only).
    pub fn propose_conf_change(&mut self, change: &ConfChange) -> Result<Proposed> {
        self.check_not_in_flight();
        self.raft.propose_conf_change(change)
    }

    /// Applies a committed membership change and returns the configuration
    /// now in force.
    pub fn apply_conf_change(&mut self, change: &ConfChange) -> Result<ConfState> {
        self.raft.apply_conf_change(change)
    }

    /// Requests a linearizable read; it comes back in `Ready::read_states`
    /// with the same `request` id, or is silently dropped if leadership is
    /// lost (the host times it out).
    pub fn read_index(&mut self, request: u64) -> Result<()> {
        self.check_not_in_flight();
        self.raft.read_index(request)
    }

    /// Asks the leader to hand leadership to `target`.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<()> {
        self.check_not_in_flight();
        self.raft.transfer_leader(target)
    }

    /// Starts an election now (used by tests and by hosts that bootstrap).
    pub fn campaign(&mut self) {
        self.check_not_in_flight();
        self.raft.hup(crate::raft::CampaignKind::PreElection);
    }

    /// Reports whether a snapshot sent to `to` was delivered.
    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        self.raft.report_snapshot(to, delivered);
    }

    /// Reports that `to` could not be reached.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raft.report_unreachable(to);
    }

    /// Whether the leader may quiesce now.
    pub fn can_quiesce(&self) -> bool {
        self.raft.can_quiesce()
    }

    /// Quiesces an idle leader; returns whether it did. The quiesce
    /// heartbeats come out in the next `Ready`.
    pub fn quiesce(&mut self) -> bool {
        self.check_not_in_flight();
        self.raft.quiesce()
    }

    /// Whether this replica ignores ticks.
    pub fn is_quiesced(&self) -> bool {
        self.raft.quiesced
    }

    /// Resumes ticking (any message also wakes a replica).
    pub fn wake(&mut self) {
        self.check_not_in_flight();
        self.raft.wake();
    }

    /// The leader's node is known to be down: forget it and campaign within
    /// a few ticks (a random delay of up to half an election timeout, so
    /// that followers told at once do not split the vote).
    pub fn leader_unreachable(&mut self) {
        self.check_not_in_flight();
        self.raft.leader_unreachable();
    }

    /// As [`RawNode::leader_unreachable`], campaigning after `delay_ticks`
    /// ticks unless a leader shows up first. Hosts that know which replicas
    /// survive stagger them by rank so that one campaigns alone.
    pub fn leader_unreachable_in(&mut self, delay_ticks: u64) {
        self.check_not_in_flight();
        self.raft.leader_unreachable_in(delay_ticks);
    }

    fn release_applied_reads(&mut self) -> Vec<ReadState> {
        let applied = self.raft.log.applied;
        let waiting = &mut self.raft.reads_awaiting_apply;
        if waiting.iter().all(|r| r.index > applied) {
            return Vec::new();
        }
        let (ready, still_waiting): (Vec<ReadState>, Vec<ReadState>) =
            waiting.drain(..).partition(|r| r.index <= applied);
        *waiting = still_waiting;
        ready
    }

    /// Whether `ready()` would return any work.
    pub fn has_ready(&self) -> bool {
        let raft = &self.raft;
        raft.soft_state() != self.prev_soft_state
            || raft.hard_state() != self.prev_hard_state
            || raft.log.unstable_snapshot().is_some()
            || !raft.log.unstable_entries().is_empty()
            || raft.log.has_committed_to_apply()
            || !raft.msgs.is_empty()
            || !raft.msgs_after_persist.is_empty()
            || (raft.role == Role::Leader && (raft.broadcast_pending || raft.reads.round_wanted()))
            || raft
                .reads_awaiting_apply
                .iter()
                .any(|r| r.index <= raft.log.applied)
    }

    /// Collects the work to do. See [`Ready`] for the order to do it in.
    pub fn ready(&mut self) -> Result<Ready> {
        self.check_not_in_flight();
        self.raft.flush_broadcast();
        self.raft.flush_read_round();
        let raft = &mut self.raft;
        let mut ready = Ready::default();
        let soft_state = raft.soft_state();
        if soft_state != self.prev_soft_state {
            ready.soft_state = Some(soft_state);
            self.prev_soft_state = soft_state;
        }
        let hard_state = raft.hard_state();
        if hard_state != self.prev_hard_state {
            ready.must_sync = hard_state.term != self.prev_hard_state.term
                || hard_state.vote != self.prev_hard_state.vote;
            ready.hard_state = Some(hard_state);
            self.prev_hard_state = hard_state;
        }
        if let Some(snapshot) = raft.log.unstable_snapshot() {
            ready.snapshot = Some(snapshot.clone());
            ready.must_sync = true;
        }
        let committed = raft
            .log
            .committed_to_apply(raft.cfg.max_committed_bytes_per_ready)
            .map_err(Error::Storage)?;
        ready.entries = raft.log.take_unstable();
        if !ready.entries.is_empty() {
            ready.must_sync = true;
        }
        raft.reduce_uncommitted(&committed);
        let applied_to = committed.last().map_or(raft.log.applied, |e| e.index);
        ready.committed_entries = committed;
        ready.messages = std::mem::take(&mut raft.msgs);
        ready.persisted_messages = std::mem::take(&mut raft.msgs_after_persist);
        ready.read_states = self.release_applied_reads();
        self.in_flight = Some(InFlight { applied_to });
        Ok(ready)
    }

    /// Tells Raft the `Ready` was handled: persisted, sent and applied.
    pub fn advance(&mut self, ready: Ready) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        let raft = &mut self.raft;
        if ready.snapshot.is_some() {
            raft.log.snapshot_persisted();
        }
        raft.log.applied_to(in_flight.applied_to);
        if raft.role == Role::Leader {
            raft.self_persisted();
            raft.maybe_auto_leave();
        }
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raft.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// The leader this replica knows of, or `NO_NODE`.
    pub fn leader(&self) -> NodeId {
        self.raft.lead
    }

    /// The commit index.
    pub fn committed(&self) -> u64 {
        self.raft.log.committed
    }

    /// The index the host has applied.
    pub fn applied(&self) -> u64 {
        self.raft.log.applied
    }

    /// The last index in the log (persisted or not).
    pub fn last_index(&self) -> u64 {
        self.raft.log.last_index()
    }

    /// The term of entry `index`, if it is still in the log.
    pub fn log_term(&self, index: u64) -> Option<u64> {
        self.raft.log.term(index).ok()
    }

    /// The first index still in the log.
    pub fn first_index(&self) -> u64 {
        self.raft.log.first_index()
    }

    /// The configuration in force.
    pub fn conf_state(&self) -> &ConfState {
        self.raft.tracker.conf_state()
    }

    /// The hard state as of now (persisted after the next `Ready`).
    pub fn hard_state(&self) -> HardState {
        self.raft.hard_state()
    }

    /// The leader's view of every member's replication; empty elsewhere.
    pub fn progress(&self) -> Vec<ProgressView> {
        if self.raft.role != Role::Leader {
            return Vec::new();
        }
        self.raft
            .tracker
            .iter()
            .map(|(node, p)| ProgressView {
                node,
                matched: p.matched,
                next: p.next,
                state: p.state,
            })
            .collect()
    }

    /// The leadership transfer in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        match self.raft.lead_transferee {
            crate::types::NO_NODE => None,
            target => Some(target),
        }
    }

    /// Bytes proposed at this leader and not yet committed.
    pub fn uncommitted_bytes(&self) -> u64 {
        self.raft.uncommitted_bytes
    }

    /// The log storage (for hosts that own it through the node).
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// Mutable access to the log storage, to persist a `Ready` into it.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }
}
