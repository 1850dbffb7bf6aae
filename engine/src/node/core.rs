//! [`NodeCore`]: replicas, rounds, apply and request completion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use flotilla_raftgroup::{
    ConfChange, ConfState, Config, EntryKind, Error as RaftError, Message, Proposed, RawNode,
    Ready, Role, NO_NODE,
};
use flotilla_transport::{Frame, FrameBuilder, GroupId, NodeId};

use crate::group_log::GroupLog;
use crate::range::{Command, CommandResult, KeySpan, KeyValue, Proposal, RangeState};
use crate::wal::{Wal, WalError, WriteBatch};

/// Identifies one request to this node; completions carry it back.
pub type RequestId = u64;

/// A range and where it lives. The generation changes with every split,
/// merge or membership change, so a stale descriptor is recognisable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeDescriptor {
    pub group: GroupId,
    pub span: KeySpan,
    pub replicas: Vec<NodeId>,
    pub generation: u64,
}

/// Settings of a node's core.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Raft settings every group of this node starts from (the id and seed
    /// are set per group).
    pub raft: Config,
    /// A request not completed after this many ticks fails with
    /// [`NodeError::Timeout`] (its outcome is unknown).
    pub request_timeout_ticks: u64,
    /// A leader with no requests for this many ticks quiesces its group,
    /// if Raft agrees it is safe.
    pub quiesce_after_idle_ticks: u64,
    /// A peer node not heard from for this many ticks is declared down: the
    /// groups it led wake here and campaign (quiesced followers never time
    /// out by themselves).
    pub peer_down_after_ticks: u64,
    /// Which boot of this node's data this is; it must differ between boots
    /// (the runtime keeps a counter next to the WAL). Request ids carry it,
    /// so that a proposal made before a crash and committed after it can
    /// never complete a request of the new boot that reuses its number.
    pub incarnation: u64,
    /// Whether rounds send every peer node this core's liveness beat. A
    /// node split among several cores (one per worker thread) lets only one
    /// of them send it, so that a node pair exchanges one beat per tick
    /// rather than one per core; the others still track peer liveness from
    /// the beats they receive.
    pub sends_liveness: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            raft: Config::new(1),
            request_timeout_ticks: 50,
            quiesce_after_idle_ticks: 20,
            peer_down_after_ticks: 10,
            incarnation: 0,
            sends_liveness: true,
        }
    }
}

/// What a caller asks of a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A write (put, delete, cas, delete-range, batch), through the log.
    Write(Command),
    /// A linearizable read of one key.
    Get { key: Vec<u8> },
    /// A linearizable scan of `[start, end)`, at most `limit` pairs.
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Write(CommandResult),
    Value(Option<Vec<u8>>),
    Rows(Vec<KeyValue>),
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// This node has no replica of the group.
    #[error("no replica of group {0} on this node")]
    RangeNotFound(GroupId),
    /// The key is outside the range's span: refresh the range cache.
    #[error("range mismatch: {0}")]
    RangeMismatch(String),
    /// No leader is known for the group (an election is running).
    #[error("group {0} has no leader; retry")]
    Unavailable(GroupId),
    /// The request was not completed in time; it may or may not have taken
    /// effect.
    #[error("request timed out; its outcome is unknown")]
    Timeout,
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Raft refused the request (e.g. a leadership transfer is running); it
    /// was not proposed.
    #[error("refused by raft: {0}")]
    Refused(String),
    /// The node stopped (shutdown, or its WAL failed) with the request in
    /// flight: its outcome is unknown, as for a timeout.
    #[error("aborted: {0}; the outcome is unknown")]
    Aborted(String),
}

#[derive(Debug)]
enum Pending {
    /// The command is kept so that apply completes the request only with
    /// the result of exactly this command.
    Write {
        submitted_tick: u64,
        command: Command,
    },
    Read {
        submitted_tick: u64,
        request: Request,
    },
}

impl Pending {
    fn submitted_tick(&self) -> u64 {
        match self {
            Pending::Write { submitted_tick, .. } | Pending::Read { submitted_tick, .. } => {
                *submitted_tick
            }
        }
    }
}

/// What this node knows of another node's liveness.
#[derive(Debug, Clone, Copy)]
struct Peer {
    last_heard_tick: u64,
    down: bool,
}

/// Request ids a range remembers to drop duplicate proposals.
const RECENT_REQUESTS_MAX: usize = 1024;

#[derive(Debug)]
struct Replica {
    descriptor: RangeDescriptor,
    raft: RawNode<GroupLog>,
    state: RangeState,
    /// The ids of the last `RECENT_REQUESTS_MAX` proposals applied, oldest
    /// first. A proposal forwarded by a follower can reach the leader twice
    /// (a network that duplicates, a retry) and be appended twice; the
    /// second copy must not apply again (a write would undo later writes).
    /// Replicated state: every replica applies the same log, so every
    /// replica drops the same copies.
    recent_requests: std::collections::VecDeque<u64>,
    recent_request_set: BTreeSet<u64>,
    pending: BTreeMap<RequestId, Pending>,
    last_request_tick: u64,
    /// Whether this replica leads its group, as of its last `Ready`.
    leading: bool,
}

/// The deterministic core of a node. See the module docs.
#[derive(Debug)]
pub struct NodeCore {
    id: NodeId,
    wal: Arc<Wal>,
    config: NodeConfig,
    /// Boxed: a replica is about a kilobyte, and the map's nodes would
    /// otherwise hold eleven of them inline whether used or not.
    replicas: BTreeMap<GroupId, Box<Replica>>,
    /// Groups that received input since the last round.
    active: BTreeSet<GroupId>,
    /// Groups that are not quiesced: the only ones ticked.
    awake: BTreeSet<GroupId>,
    ticks: u64,
    next_request: u64,
    completions: Vec<(RequestId, Result<Response, NodeError>)>,
    /// Every node that shares a range with this one.
    peers: BTreeMap<NodeId, Peer>,
    /// A tick passed: the next round sends every peer its liveness beat.
    beat_due: bool,
    /// Groups led here, kept current from each `Ready`'s soft state.
    leaders: usize,
}

fn group_seed(node: NodeId, group: GroupId) -> u64 {
    node.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group.rotate_left(29)
}

impl NodeCore {
    /// Opens the node's replicas of `ranges` over `wal`: a group the WAL
    /// already knows is recovered (its committed entries are re-applied to a
    /// fresh state machine), a new one is bootstrapped with the descriptor's
    /// replicas as voters.
    pub fn open(
        id: NodeId,
        wal: Arc<Wal>,
        config: NodeConfig,
        ranges: &[RangeDescriptor],
    ) -> Result<NodeCore, NodeError> {
        let mut core = NodeCore {
            id,
            wal,
            config,
            replicas: BTreeMap::new(),
            active: BTreeSet::new(),
            awake: BTreeSet::new(),
            ticks: 0,
            next_request: 1,
            completions: Vec::new(),
            peers: BTreeMap::new(),
            beat_due: false,
            leaders: 0,
        };
        for descriptor in ranges.iter().filter(|d| d.replicas.contains(&id)) {
            for &peer in descriptor.replicas.iter().filter(|&&p| p != id) {
                core.peers.insert(
                    peer,
                    Peer {
                        last_heard_tick: 0,
                        down: false,
                    },
                );
            }
            core.add_replica(descriptor.clone())?;
        }
        Ok(core)
    }

    fn add_replica(&mut self, descriptor: RangeDescriptor) -> Result<(), NodeError> {
        let group = descriptor.group;
        let conf = ConfState::with_voters(descriptor.replicas.iter().copied());
        let log = GroupLog::bootstrap(Arc::clone(&self.wal), group, conf);
        let mut raft_config = self.config.raft.clone();
        raft_config.id = self.id;
        raft_config.seed = group_seed(self.id, group);
        raft_config.applied = 0;
        let raft = RawNode::new(raft_config, log)
            .map_err(|e| NodeError::InvalidArgument(format!("group {group}: {e}")))?;
        let state = RangeState::new(descriptor.span.clone());
        self.replicas.insert(
            group,
            Box::new(Replica {
                descriptor,
                raft,
                state,
                pending: BTreeMap::new(),
                last_request_tick: 0,
                leading: false,
                recent_requests: std::collections::VecDeque::new(),
                recent_request_set: BTreeSet::new(),
            }),
        );
        self.awake.insert(group);
        self.active.insert(group);
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The descriptors of the ranges hosted here.
    pub fn ranges(&self) -> impl Iterator<Item = &RangeDescriptor> {
        self.replicas.values().map(|r| &r.descriptor)
    }

    /// The leader this node knows for `group`, if any.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.replicas
            .get(&group)
            .map(|r| r.raft.leader())
            .filter(|&l| l != NO_NODE)
    }

    /// A one-line account of this node's replica of `group`, for failure
    /// reports: Raft's view, whether it is ticked, and what waits on it.
    pub fn describe_group(&self, group: GroupId) -> String {
        match self.replicas.get(&group) {
            Some(r) => format!(
                "{:?} quiesced={} awake={} pending={} applied_state={}",
                r.raft,
                r.raft.is_quiesced(),
                self.awake.contains(&group),
                r.pending.len(),
                r.state.applied_index()
            ),
            None => format!("no replica of group {group}"),
        }
    }

    /// Groups whose leader is this node.
    pub fn leader_count(&self) -> usize {
        self.leaders
    }

    /// Groups that are not quiesced.
    pub fn awake_count(&self) -> usize {
        self.awake.len()
    }

    /// Submits a request to `group`; its completion comes out of
    /// [`NodeCore::take_completions`] after later rounds.
    pub fn submit(&mut self, group: GroupId, request: Request) -> RequestId {
        // node (16 bits) | boot (16 bits) | counter (32 bits): unique on this
        // node across restarts (for 65,536 boots), and never equal to
        // another node's ids, since every replica applies every proposal.
        let request_id = ((self.id & 0xFFFF) << 48)
            | ((self.config.incarnation & 0xFFFF) << 32)
            | (self.next_request & 0xFFFF_FFFF);
        self.next_request += 1;
        if let Err(error) = self.try_submit(group, request_id, request) {
            self.completions.push((request_id, Err(error)));
        }
        request_id
    }

    fn try_submit(
        &mut self,
        group: GroupId,
        request_id: RequestId,
        request: Request,
    ) -> Result<(), NodeError> {
        let ticks = self.ticks;
        let replica = self
            .replicas
            .get_mut(&group)
            .ok_or(NodeError::RangeNotFound(group))?;
        let span = &replica.descriptor.span;
        match &request {
            Request::Write(command) => {
                command
                    .validate()
                    .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
                let proposal = Proposal {
                    request_id,
                    command: command.clone(),
                };
                match replica.raft.propose(proposal.encode()) {
                    Ok(Proposed::Appended { .. } | Proposed::Forwarded { .. }) => {}
                    Err(error) => return Err(raft_error(group, error)),
                }
                metrics::counter!("flotilla_proposals_total").increment(1);
                replica.pending.insert(
                    request_id,
                    Pending::Write {
                        submitted_tick: ticks,
                        command: command.clone(),
                    },
                );
            }
            Request::Get { key } | Request::Scan { start: key, .. } => {
                if !span.contains(key) {
                    return Err(NodeError::RangeMismatch(format!(
                        "key {key:?} is outside range {span}"
                    )));
                }
                replica
                    .raft
                    .read_index(request_id)
                    .map_err(|e| raft_error(group, e))?;
                metrics::counter!("flotilla_reads_total").increment(1);
                replica.pending.insert(
                    request_id,
                    Pending::Read {
                        submitted_tick: ticks,
                        request,
                    },
                );
            }
        }
        replica.last_request_tick = ticks;
        self.awake.insert(group);
        self.active.insert(group);
        Ok(())
    }

    /// Handles a frame from another node: the sender is alive, and its Raft
    /// messages (coalesced heartbeats expanded) go to their groups.
    pub fn receive(&mut self, frame: Frame) {
        if let Some(peer) = self.peers.get_mut(&frame.from) {
            peer.last_heard_tick = self.ticks;
            peer.down = false;
        }
        for message in frame.into_messages() {
            self.step(message.group, message.message);
        }
    }

    /// Peers currently declared down.
    pub fn peers_down(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.down)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Steps a Raft message of `group` received from another node.
    pub fn step(&mut self, group: GroupId, message: Message) {
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        // A malformed or stale message is Raft's to ignore; nothing to report.
        let _ = replica.raft.step(message);
        self.awake.insert(group);
        self.active.insert(group);
    }

    /// Advances the logical clock: ticks every awake group, expires requests
    /// that waited too long, and quiesces idle leaders.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.beat_due = true;
        self.detect_down_peers();
        let ticks = self.ticks;
        let timeout = self.config.request_timeout_ticks;
        let idle = self.config.quiesce_after_idle_ticks;
        let mut asleep = Vec::new();
        for &group in &self.awake {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue;
            };
            replica.raft.tick();
            let expired: Vec<RequestId> = replica
                .pending
                .iter()
                .filter(|(_, p)| ticks.saturating_sub(p.submitted_tick()) > timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                replica.pending.remove(&id);
                self.completions.push((id, Err(NodeError::Timeout)));
            }
            if replica.pending.is_empty() {
                replica.pending = BTreeMap::new();
            }
            if replica.pending.is_empty()
                && ticks.saturating_sub(replica.last_request_tick) > idle
                && replica.raft.can_quiesce()
            {
                replica.raft.quiesce();
            }
            // A group with requests waiting stays ticked, so that they time
            // out if their messages were lost.
            if replica.raft.is_quiesced() && !replica.raft.has_ready() && replica.pending.is_empty()
            {
                asleep.push(group);
            }
            self.active.insert(group);
        }
        for group in asleep {
            self.awake.remove(&group);
        }
    }

    fn detect_down_peers(&mut self) {
        let ticks = self.ticks;
        let limit = self.config.peer_down_after_ticks;
        let newly_down: Vec<NodeId> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| !p.down && ticks.saturating_sub(p.last_heard_tick) > limit)
            .map(|(&id, p)| {
                p.down = true;
                id
            })
            .collect();
        for peer in newly_down {
            self.peer_down(peer);
        }
    }

    /// Runs one round: every group with work persists into ONE WAL batch
    /// (one sync), its messages go into `out` (one frame per destination),
    /// committed entries are applied and callers completed. Returns how many
    /// groups had work; call again while it is non-zero.
    pub fn round(&mut self, out: &mut FrameBuilder) -> Result<usize, WalError> {
        if std::mem::take(&mut self.beat_due) {
            if self.config.sends_liveness {
                for &peer in self.peers.keys() {
                    out.liveness(peer, self.ticks);
                }
                metrics::counter!("flotilla_liveness_beats_total")
                    .increment(self.peers.len() as u64);
            }
            metrics::gauge!("flotilla_awake_groups").set(self.awake.len() as f64);
            metrics::gauge!("flotilla_quiesced_groups")
                .set(self.replicas.len().saturating_sub(self.awake.len()) as f64);
        }
        let mut batch = WriteBatch::new();
        let mut readies: Vec<(GroupId, Ready)> = Vec::new();
        for group in std::mem::take(&mut self.active) {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue;
            };
            if !replica.raft.has_ready() {
                continue;
            }
            let Ok(mut ready) = replica.raft.ready() else {
                continue;
            };
            if let Some(soft) = ready.soft_state {
                let leading = soft.role == Role::Leader;
                if leading && !replica.leading {
                    self.leaders += 1;
                    metrics::counter!("flotilla_elections_won_total").increment(1);
                } else if !leading && replica.leading {
                    self.leaders -= 1;
                }
                replica.leading = leading;
            }
            // The leader's appends leave before its own entries are durable.
            for message in std::mem::take(&mut ready.messages) {
                out.push_message(message.to, group, message);
            }
            replica.raft.storage().stage_ready(&ready, &mut batch);
            readies.push((group, ready));
        }
        if !batch.is_empty() {
            self.wal.append(batch)?;
        }
        let handled = readies.len();
        if handled > 0 {
            metrics::counter!("flotilla_rounds_total").increment(1);
            metrics::histogram!("flotilla_round_groups").record(handled as f64);
            metrics::gauge!("flotilla_leaders").set(self.leaders as f64);
        }
        for (group, ready) in readies {
            self.finish_ready(group, ready, out);
        }
        Ok(handled)
    }

    fn finish_ready(&mut self, group: GroupId, mut ready: Ready, out: &mut FrameBuilder) {
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        for message in std::mem::take(&mut ready.persisted_messages) {
            out.push_message(message.to, group, message);
        }
        if !ready.committed_entries.is_empty() {
            metrics::counter!("flotilla_applied_entries_total")
                .increment(ready.committed_entries.len() as u64);
        }
        if let Some(snapshot) = &ready.snapshot {
            replica
                .raft
                .storage_mut()
                .install_snapshot(snapshot.clone());
        }
        for entry in &ready.committed_entries {
            match entry.kind {
                EntryKind::Normal if entry.data.is_empty() => {
                    replica.state.advance_applied(entry.index, entry.term);
                }
                EntryKind::Normal => match Proposal::decode(&entry.data) {
                    Ok(proposal) if replica.recent_request_set.contains(&proposal.request_id) => {
                        // A duplicate of a proposal already applied.
                        replica.state.advance_applied(entry.index, entry.term);
                    }
                    Ok(proposal) => {
                        replica.recent_requests.push_back(proposal.request_id);
                        replica.recent_request_set.insert(proposal.request_id);
                        if replica.recent_requests.len() > RECENT_REQUESTS_MAX {
                            if let Some(old) = replica.recent_requests.pop_front() {
                                replica.recent_request_set.remove(&old);
                            }
                        }
                        let result = replica.state.apply(entry.index, entry.term, &proposal);
                        let ours = matches!(
                            replica.pending.get(&proposal.request_id),
                            Some(Pending::Write { command, .. }) if *command == proposal.command
                        );
                        if ours {
                            replica.pending.remove(&proposal.request_id);
                            self.completions
                                .push((proposal.request_id, Ok(Response::Write(result))));
                        }
                    }
                    // Not a proposal of ours: consumed without effect, the
                    // same way on every replica.
                    Err(_) => replica.state.advance_applied(entry.index, entry.term),
                },
                EntryKind::ConfChange => {
                    if let Ok(change) = ConfChange::decode(&entry.data) {
                        let _ = replica.raft.apply_conf_change(&change);
                    }
                    replica.state.advance_applied(entry.index, entry.term);
                }
            }
        }
        for read in &ready.read_states {
            let Some(Pending::Read { request, .. }) = replica.pending.remove(&read.request) else {
                continue;
            };
            let response = serve_read(&replica.state, &request);
            self.completions.push((read.request, response));
        }
        if replica.pending.is_empty() {
            // An emptied map keeps its root node; an idle range should not.
            replica.pending = BTreeMap::new();
        }
        replica.raft.advance(ready);
        if replica.raft.has_ready() {
            self.active.insert(group);
        }
    }

    /// Completions since the last call, in completion order.
    pub fn take_completions(&mut self) -> Vec<(RequestId, Result<Response, NodeError>)> {
        std::mem::take(&mut self.completions)
    }

    /// Makes this node's replica of `group` campaign now.
    pub fn campaign(&mut self, group: GroupId) {
        if let Some(replica) = self.replicas.get_mut(&group) {
            replica.raft.campaign();
            self.awake.insert(group);
            self.active.insert(group);
        }
    }

    /// Asks the leader of `group` (this node, or the leader it knows, to
    /// which the request is forwarded) to hand leadership to `target`.
    /// Proposals to the group are refused until the transfer completes or is
    /// abandoned after an election timeout.
    pub fn transfer_leader(&mut self, group: GroupId, target: NodeId) -> Result<(), NodeError> {
        let replica = self
            .replicas
            .get_mut(&group)
            .ok_or(NodeError::RangeNotFound(group))?;
        replica
            .raft
            .transfer_leader(target)
            .map_err(|e| raft_error(group, e))?;
        self.awake.insert(group);
        self.active.insert(group);
        Ok(())
    }

    /// The node `peer` is known to be down: every group it led wakes here
    /// and campaigns. The surviving replicas of a group are staggered by
    /// rank (position among the live replicas, which every survivor computes
    /// alike) so that one campaigns first and the vote does not split.
    pub fn peer_down(&mut self, peer: NodeId) {
        let stagger = (self.config.raft.election_ticks / 3).max(1);
        for (&group, replica) in &mut self.replicas {
            if replica.raft.leader() != peer {
                continue;
            }
            let rank = replica
                .descriptor
                .replicas
                .iter()
                .filter(|&&r| r != peer && !self.peers.get(&r).is_some_and(|p| p.down))
                .position(|&r| r == self.id)
                .unwrap_or(0) as u64;
            replica.raft.leader_unreachable_in(rank * stagger);
            self.awake.insert(group);
            self.active.insert(group);
        }
    }
}

fn raft_error(group: GroupId, error: RaftError) -> NodeError {
    match error {
        RaftError::NoLeader | RaftError::NotLeader { .. } => NodeError::Unavailable(group),
        other => NodeError::Refused(other.to_string()),
    }
}

fn serve_read(state: &RangeState, request: &Request) -> Result<Response, NodeError> {
    let mismatch = |e: crate::range::RangeError| match e {
        crate::range::RangeError::InvalidArgument(invalid) => {
            NodeError::InvalidArgument(invalid.to_string())
        }
        other => NodeError::RangeMismatch(other.to_string()),
    };
    match request {
        Request::Get { key } => state
            .get(key)
            .map(|v| Response::Value(v.map(<[u8]>::to_vec)))
            .map_err(mismatch),
        Request::Scan { start, end, limit } => state
            .scan(start, end.as_deref(), *limit)
            .map(Response::Rows)
            .map_err(mismatch),
        Request::Write(_) => Err(NodeError::InvalidArgument(
            "a write is not a read".to_string(),
        )),
    }
}
