//! [`NodeCore`]: replicas, rounds, apply and request completion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use flotilla_raftgroup::{
    ConfChange, ConfState, Config, EntryKind, Error as RaftError, Message, MessageBody, Proposed,
    RawNode, Ready, Role, Snapshot, SnapshotMeta, NO_NODE,
};
use flotilla_transport::{Frame, FrameBuilder, GroupId, NodeId, RemovedNotice};

use super::snapshots::{ReplicaMeta, SnapshotStore};
use crate::group_log::GroupLog;
use crate::range::{
    Command, CommandResult, KeySpan, KeyValue, Proposal, RangeState, SnapshotError,
};
use crate::wal::{Wal, WalError, WriteBatch};

mod admin;
mod gc;
mod transfer;

use self::admin::AdminOp;
pub use self::admin::ReplicaChange;
use self::transfer::{IncomingSnapshot, OutgoingSnapshot};

/// The log index (and term) every bootstrapped range starts at, as in TiKV:
/// a bootstrapped replica's log begins with a snapshot at this index, so a
/// replica added later (whose log is empty) can never be sent entries from
/// index 1 — which would not tell it the range's span or initial members —
/// and always starts from a snapshot instead.
pub const BOOTSTRAP_INDEX: u64 = 5;

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
    /// A replica snapshots its range and compacts its log once this many
    /// entries were applied since its last snapshot. A leader waits (up to
    /// four times as long) until its followers have the entries, so that a
    /// follower a little behind is not sent a whole snapshot.
    pub snapshot_after_entries: u64,
    /// Size of the chunks a snapshot is streamed in.
    pub snapshot_chunk_bytes: usize,
    /// Chunks one round sends, over all transfers: bounds how long a
    /// snapshot delays the node's other traffic.
    pub snapshot_chunks_per_round: usize,
    /// Every this many ticks the node frees WAL segments no group needs, and
    /// snapshots (or rewrites forward) the groups that pin old ones.
    pub wal_maintenance_every_ticks: u64,
    /// The number of WAL segments beyond which groups pinning older ones are
    /// snapshotted or rewritten forward, so the WAL's size stays bounded.
    pub wal_segments_target: usize,
    /// A membership change or leadership transfer not done after this many
    /// ticks fails with [`NodeError::Timeout`]. It is longer than
    /// `request_timeout_ticks`: a new replica may need a snapshot first.
    pub admin_timeout_ticks: u64,
    /// Whether rounds send every peer node this core's liveness beat. A
    /// node split among several cores (one per worker thread) lets only one
    /// of them send it, so that a node pair exchanges one beat per tick
    /// rather than one per core; the others still track peer liveness from
    /// the beats they receive.
    pub sends_liveness: bool,
    /// (this core's worker, the node's worker count): the core hosts only
    /// the groups [`worker_of`] gives its worker, however many the WAL and
    /// the snapshot store hold.
    pub worker: (usize, usize),
}

/// The worker owning `group` on a node with `workers` workers: Fibonacci
/// hashing — the group id times 2^64/φ (mod 2^64) is the fraction
/// `group·φ mod 1`, which multiply-shift scales onto `0..workers`. The
/// fractions of consecutive ids are spread almost evenly over [0, 1), so
/// groups spread evenly over workers for every worker count (reducing the
/// hash modulo the count instead leaves some counts badly skewed).
/// Deterministic and the same on every node and every boot; `workers == 0`
/// counts as 1.
pub fn worker_of(group: GroupId, workers: usize) -> usize {
    let fraction = group.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((u128::from(fraction) * workers.max(1) as u128) >> 64) as usize
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            raft: Config::new(1),
            request_timeout_ticks: 50,
            quiesce_after_idle_ticks: 20,
            peer_down_after_ticks: 10,
            incarnation: 0,
            snapshot_after_entries: 10_000,
            snapshot_chunk_bytes: crate::range::DEFAULT_CHUNK_BYTES,
            snapshot_chunks_per_round: 4,
            wal_maintenance_every_ticks: 50,
            wal_segments_target: 4,
            admin_timeout_ticks: 500,
            sends_liveness: true,
            worker: (0, 1),
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
    /// A read of one key from this node's replica as it is: no leader is
    /// asked, so the value may be stale (but never one that was not
    /// committed).
    StaleGet { key: Vec<u8> },
    /// A scan of this node's replica as it is; see [`Request::StaleGet`].
    StaleScan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    },
    /// Adds or removes a replica of the range. Must be sent to the leader.
    /// Completes once the group's configuration (as applied here) has the
    /// change: an added replica is a voter, a removed one is gone.
    ChangeReplicas(ReplicaChange),
    /// Hands the range's leadership to `target`; completes once this node
    /// sees `target` lead.
    TransferLeader { target: NodeId },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Write(CommandResult),
    Value(Option<Vec<u8>>),
    Rows(Vec<KeyValue>),
    /// A membership change or leadership transfer is done.
    Done,
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
    /// The request must go to the group's leader, which this node is not.
    #[error("group {group}: this node is not the leader (leader: {leader:?}); send it there")]
    NotLeader {
        group: GroupId,
        leader: Option<NodeId>,
    },
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
    /// Stored data (a snapshot, a tombstone) failed verification.
    #[error("corruption: {0}")]
    Corruption(String),
    /// An IO error reading or writing the node's files.
    #[error("io: {0}")]
    Io(String),
}

impl NodeError {
    fn from_snapshot(error: SnapshotError) -> NodeError {
        match error {
            SnapshotError::Corrupt { .. } => NodeError::Corruption(error.to_string()),
            other => NodeError::Io(other.to_string()),
        }
    }
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
    /// A membership change or leadership transfer, driven on every tick
    /// and apply until its goal holds.
    Admin { submitted_tick: u64, op: AdminOp },
}

impl Pending {
    /// The tick after which the request fails with a timeout.
    fn deadline(&self, config: &NodeConfig) -> u64 {
        match self {
            Pending::Write { submitted_tick, .. } | Pending::Read { submitted_tick, .. } => {
                submitted_tick + config.request_timeout_ticks
            }
            Pending::Admin { submitted_tick, .. } => submitted_tick + config.admin_timeout_ticks,
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
    /// Snapshots assembled from a leader's chunks and handed to Raft, by
    /// index, kept until the next `Ready`: Raft installs at most one of them
    /// (the one its `Ready` names), and the others are then obsolete.
    received_snapshots: BTreeMap<u64, Box<(RangeState, ReplicaMeta)>>,
    /// The tick at which this replica saw its own removal applied; it is
    /// destroyed a little later, so that it can still tell the others what
    /// it knows (commit index, leadership hand-off).
    removed_at_tick: Option<u64>,
    /// A member told this replica that it belongs to no configuration of
    /// the group any more (see [`gc`]): it is destroyed in the next round
    /// if the notice still applies then.
    condemned: Option<RemovedNotice>,
    /// The index of the entry whose application removed this replica
    /// (meaningful with `removed_at_tick`).
    removed_index: u64,
    /// A voter of the configuration without this replica confirmed the
    /// removal: it has applied it too, so the group no longer needs this
    /// replica's vote (see [`gc`]).
    removal_confirmed: bool,
    /// Ticks since this replica last knew a leader (or since it saw its
    /// own removal): every election timeout of them, it probes the voters.
    leaderless_ticks: u64,
    /// The tick of the last message from the leader this replica knows.
    /// A learner never campaigns, so its leader stays named after the
    /// leader is gone: only silence tells it that it may be orphaned.
    leader_heard_tick: u64,
}

impl Replica {
    /// Whether this replica heard from another node it takes for the leader
    /// within an election timeout (of `election_ticks`) before `now`.
    fn hears_a_leader(&self, me: NodeId, now: u64, election_ticks: u64) -> bool {
        let leader = self.raft.leader();
        leader != NO_NODE
            && leader != me
            && now.saturating_sub(self.leader_heard_tick) <= election_ticks
    }
}

impl Replica {
    /// Whether the replica has its range's data: bootstrapped, recovered or
    /// given a snapshot. A replica created on first contact has none until
    /// its first snapshot arrives, and serves nothing.
    fn initialized(&self) -> bool {
        self.state.applied_index() > 0
    }

    /// The replicated metadata a snapshot of this replica carries.
    fn meta(&self) -> ReplicaMeta {
        ReplicaMeta {
            conf_state: self.raft.conf_state().clone(),
            recent_requests: self.recent_requests.iter().copied().collect(),
            generation: self.descriptor.generation,
        }
    }

    /// Replaces the dedupe window with a snapshot's.
    fn set_recent_requests(&mut self, ids: &[u64]) {
        self.recent_requests = ids.iter().copied().collect();
        self.recent_request_set = ids.iter().copied().collect();
    }

    /// Refreshes the descriptor's replica list from Raft's configuration.
    fn sync_replicas(&mut self) {
        self.descriptor.replicas = members(self.raft.conf_state()).into_iter().collect();
    }
}

/// Whether `node` is in the configuration, in any role. Allocates nothing:
/// it is asked of every message a replica receives.
fn is_member(conf: &ConfState, node: NodeId) -> bool {
    [
        &conf.voters,
        &conf.voters_outgoing,
        &conf.learners,
        &conf.learners_next,
    ]
    .iter()
    .any(|nodes| nodes.contains(&node))
}

/// Every node in a configuration, in any role.
fn members(conf: &ConfState) -> BTreeSet<NodeId> {
    conf.voters
        .iter()
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners)
        .chain(&conf.learners_next)
        .copied()
        .collect()
}

/// Why a round could not complete: nothing more can be made durable, so the
/// node must stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("snapshot store: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Raft installed a snapshot this node did not assemble: a bug, and
    /// continuing would lose the range's data.
    #[error("group {group}: raft installed snapshot {index}, which was never received")]
    MissingSnapshot { group: GroupId, index: u64 },
}

/// The deterministic core of a node. See the module docs.
#[derive(Debug)]
pub struct NodeCore {
    id: NodeId,
    wal: Arc<Wal>,
    snapshots: Arc<dyn SnapshotStore>,
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
    /// Group → term at which this node's replica was removed. Messages of
    /// that term or older must not recreate it.
    tombstones: BTreeMap<GroupId, u64>,
    /// Replicas that saw their own removal, by group, waiting to be
    /// destroyed.
    removing: BTreeSet<GroupId>,
    /// Groups due for a snapshot and log compaction in the next round;
    /// `true` forces it (the group pins old WAL segments).
    snapshots_due: BTreeMap<GroupId, bool>,
    /// WAL items to persist with the next round's batch: where bootstrapped
    /// logs start, removed groups.
    staged: WriteBatch,
    /// Snapshots being streamed to other nodes, oldest first.
    outgoing: std::collections::VecDeque<OutgoingSnapshot>,
    /// Snapshots being received, by group.
    incoming: BTreeMap<GroupId, IncomingSnapshot>,
    /// A tick asked for WAL maintenance in the next round.
    maintenance_due: bool,
    /// Removal notices owed to non-members that sent us messages, sent
    /// with the next round (one per node and group).
    notices_due: BTreeMap<(NodeId, GroupId), RemovedNotice>,
    /// Probes to send with the next round: (voter, group).
    probes_due: BTreeSet<(NodeId, GroupId)>,
    /// The gauges this core last added to the node-wide ones (leaders,
    /// awake and quiesced groups): with several workers, each adds its own
    /// share rather than overwriting the others'.
    reported_gauges: [f64; 3],
}

fn group_seed(node: NodeId, group: GroupId) -> u64 {
    node.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group.rotate_left(29)
}

/// Where a replica's state comes from when the node opens.
enum Source {
    /// A range of the bootstrap layout that this node has no snapshot of.
    Bootstrap(RangeDescriptor),
    /// The replica's latest snapshot (the WAL holds the log after it).
    Snapshot(Box<crate::range::LoadedSnapshot>),
    /// Only the WAL knows the group: a replica created on first contact
    /// that never received its first snapshot. Its hard state (its vote)
    /// must survive, so it is recreated empty over the WAL.
    WalOnly,
}

impl NodeCore {
    /// Opens the node's replicas over `wal` and `snapshots`. A replica is
    /// recovered from its latest snapshot plus the WAL when it has one, else
    /// bootstrapped from `ranges` (the bootstrap layout: descriptors that
    /// name this node) at [`BOOTSTRAP_INDEX`] and recovered from the WAL.
    /// Committed entries after the snapshot are applied again to the
    /// restored state. Groups this node's replica was removed from stay
    /// removed.
    pub fn open(
        id: NodeId,
        wal: Arc<Wal>,
        snapshots: Arc<dyn SnapshotStore>,
        config: NodeConfig,
        ranges: &[RangeDescriptor],
    ) -> Result<NodeCore, NodeError> {
        let (worker, workers) = config.worker;
        let ours = |group: &GroupId| worker_of(*group, workers) == worker;
        let tombstones = snapshots.tombstones().map_err(NodeError::from_snapshot)?;
        let mut sources: BTreeMap<GroupId, Source> = BTreeMap::new();
        for group in wal.groups().into_iter().filter(ours) {
            sources.insert(group, Source::WalOnly);
        }
        for descriptor in ranges
            .iter()
            .filter(|d| d.replicas.contains(&id) && ours(&d.group))
        {
            sources.insert(descriptor.group, Source::Bootstrap(descriptor.clone()));
        }
        for group in snapshots.groups().map_err(NodeError::from_snapshot)? {
            if tombstones.contains_key(&group) || !ours(&group) {
                continue;
            }
            if let Some(loaded) = snapshots
                .load_latest(group)
                .map_err(NodeError::from_snapshot)?
            {
                sources.insert(group, Source::Snapshot(Box::new(loaded)));
            }
        }
        let mut core = NodeCore {
            id,
            wal,
            snapshots,
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
            tombstones,
            removing: BTreeSet::new(),
            snapshots_due: BTreeMap::new(),
            staged: WriteBatch::new(),
            outgoing: std::collections::VecDeque::new(),
            incoming: BTreeMap::new(),
            maintenance_due: false,
            notices_due: BTreeMap::new(),
            probes_due: BTreeSet::new(),
            reported_gauges: [0.0; 3],
        };
        for (group, source) in sources {
            if core.tombstones.contains_key(&group) {
                // Removed here: whatever the WAL still has of it goes now,
                // before a message could recreate the replica over it.
                if core.wal.groups().contains(&group) {
                    let mut removal = WriteBatch::new();
                    removal.remove_group(group);
                    core.wal
                        .append(removal)
                        .map_err(|e| NodeError::Io(format!("removing group {group}: {e}")))?;
                }
                continue;
            }
            match source {
                Source::Bootstrap(descriptor) => {
                    let conf = ConfState::with_voters(descriptor.replicas.iter().copied());
                    let snapshot = Snapshot {
                        meta: SnapshotMeta {
                            index: BOOTSTRAP_INDEX,
                            term: BOOTSTRAP_INDEX,
                            conf_state: conf,
                        },
                        data: Vec::new(),
                    };
                    let mut state = RangeState::new(descriptor.span.clone());
                    state.advance_applied(BOOTSTRAP_INDEX, BOOTSTRAP_INDEX);
                    if core.wal.last_index(group) < BOOTSTRAP_INDEX {
                        // The WAL's log of the group starts after the
                        // bootstrap snapshot too.
                        core.staged
                            .snapshot_marker(group, BOOTSTRAP_INDEX, BOOTSTRAP_INDEX);
                    }
                    core.insert_replica(descriptor, snapshot, state, &[])?;
                }
                Source::Snapshot(loaded) => {
                    let meta = ReplicaMeta::decode(&loaded.conf_state).map_err(|reason| {
                        NodeError::Corruption(format!("snapshot of group {group}: {reason}"))
                    })?;
                    let state = loaded.state;
                    let descriptor = RangeDescriptor {
                        group,
                        span: state.span().clone(),
                        replicas: members(&meta.conf_state).into_iter().collect(),
                        generation: meta.generation,
                    };
                    let snapshot = Snapshot {
                        meta: SnapshotMeta {
                            index: state.applied_index(),
                            term: state.applied_term(),
                            conf_state: meta.conf_state.clone(),
                        },
                        data: Vec::new(),
                    };
                    // The WAL record that follows a snapshot (the compaction
                    // behind one taken here, the marker of one received) may
                    // have been lost in a crash: make the WAL agree first.
                    let (index, term) = (snapshot.meta.index, snapshot.meta.term);
                    if core.wal.last_index(group) < index {
                        core.staged.snapshot_marker(group, index, term);
                    } else if core.wal.first_index(group) <= index {
                        core.staged.compact_prefix(group, index + 1);
                    }
                    core.insert_replica(descriptor, snapshot, state, &meta.recent_requests)?;
                }
                Source::WalOnly => core.insert_uninitialized(group)?,
            }
        }
        Ok(core)
    }

    /// Adds a replica whose log starts after `snapshot` and whose state
    /// machine is `state` (at the snapshot's index).
    fn insert_replica(
        &mut self,
        descriptor: RangeDescriptor,
        snapshot: Snapshot,
        state: RangeState,
        recent_requests: &[u64],
    ) -> Result<(), NodeError> {
        let group = descriptor.group;
        let applied = snapshot.meta.index;
        let log = GroupLog::recover(Arc::clone(&self.wal), group, snapshot);
        let mut raft_config = self.config.raft.clone();
        raft_config.id = self.id;
        raft_config.seed = group_seed(self.id, group);
        raft_config.applied = applied;
        let raft = RawNode::new(raft_config, log)
            .map_err(|e| NodeError::Corruption(format!("group {group}: {e}")))?;
        self.track_peers(&descriptor.replicas);
        let mut replica = Box::new(Replica {
            descriptor,
            raft,
            state,
            pending: BTreeMap::new(),
            last_request_tick: 0,
            leading: false,
            recent_requests: std::collections::VecDeque::new(),
            recent_request_set: BTreeSet::new(),
            received_snapshots: BTreeMap::new(),
            removed_at_tick: None,
            condemned: None,
            removed_index: 0,
            removal_confirmed: false,
            leaderless_ticks: 0,
            leader_heard_tick: self.ticks,
        });
        replica.set_recent_requests(recent_requests);
        self.replicas.insert(group, replica);
        self.awake.insert(group);
        self.active.insert(group);
        Ok(())
    }

    /// Adds an empty replica of `group` that waits for its first snapshot.
    fn insert_uninitialized(&mut self, group: GroupId) -> Result<(), NodeError> {
        let descriptor = RangeDescriptor {
            group,
            span: KeySpan::full(),
            replicas: Vec::new(),
            generation: 0,
        };
        let empty = Snapshot {
            meta: SnapshotMeta {
                index: 0,
                term: 0,
                conf_state: ConfState::default(),
            },
            data: Vec::new(),
        };
        self.insert_replica(descriptor, empty, RangeState::new(KeySpan::full()), &[])
    }

    /// Starts watching the liveness of every node in `nodes`.
    fn track_peers(&mut self, nodes: &[NodeId]) {
        let ticks = self.ticks;
        for &peer in nodes.iter().filter(|&&p| p != self.id) {
            self.peers.entry(peer).or_insert(Peer {
                last_heard_tick: ticks,
                down: false,
            });
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The descriptors of the ranges hosted here (replicas still waiting
    /// for their first snapshot are not listed).
    pub fn ranges(&self) -> impl Iterator<Item = &RangeDescriptor> {
        self.replicas
            .values()
            .filter(|r| r.initialized())
            .map(|r| &r.descriptor)
    }

    /// The descriptor of this node's replica of `group`, if it has one with
    /// data.
    pub fn range(&self, group: GroupId) -> Option<&RangeDescriptor> {
        self.replicas
            .get(&group)
            .filter(|r| r.initialized())
            .map(|r| &r.descriptor)
    }

    /// The leader this node knows for `group`, if any.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.replicas
            .get(&group)
            .map(|r| r.raft.leader())
            .filter(|&l| l != NO_NODE)
    }

    /// The configuration of this node's replica of `group`, as applied.
    pub fn conf_state(&self, group: GroupId) -> Option<&ConfState> {
        self.replicas.get(&group).map(|r| r.raft.conf_state())
    }

    /// The index up to which this node's replica of `group` has applied.
    pub fn applied_index(&self, group: GroupId) -> Option<u64> {
        self.replicas.get(&group).map(|r| r.state.applied_index())
    }

    /// The index of the latest snapshot of this node's replica of `group`
    /// (its log holds only entries after it).
    pub fn snapshot_index(&self, group: GroupId) -> Option<u64> {
        self.replicas
            .get(&group)
            .map(|r| r.raft.storage().snapshot_meta().index)
    }

    /// A one-line account of this node's replica of `group`, for failure
    /// reports: Raft's view, whether it is ticked, and what waits on it.
    pub fn describe_group(&self, group: GroupId) -> String {
        match self.replicas.get(&group) {
            Some(r) => format!(
                "{:?} conf={:?} quiesced={} awake={} pending={} applied_state={} snapshot={} \
                 removed_at={:?}",
                r.raft,
                r.raft.conf_state(),
                r.raft.is_quiesced(),
                self.awake.contains(&group),
                r.pending.len(),
                r.state.applied_index(),
                r.raft.storage().snapshot_meta().index,
                r.removed_at_tick,
            ),
            None => format!(
                "no replica of group {group} (tombstone: {:?})",
                self.tombstones.get(&group)
            ),
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
            .filter(|r| r.initialized() && r.removed_at_tick.is_none())
            .ok_or(NodeError::RangeNotFound(group))?;
        let span = &replica.descriptor.span;
        match request {
            Request::Write(command) => {
                command
                    .validate()
                    .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
                let proposal = Proposal {
                    request_id,
                    command,
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
                        command: proposal.command,
                    },
                );
            }
            Request::Get { ref key } | Request::Scan { start: ref key, .. } => {
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
            Request::StaleGet { .. } | Request::StaleScan { .. } => {
                metrics::counter!("flotilla_stale_reads_total").increment(1);
                let response = serve_read(&replica.state, &request);
                self.completions.push((request_id, response));
                return Ok(());
            }
            Request::ChangeReplicas(change) => {
                if replica.pending.values().any(|p| {
                    matches!(
                        p,
                        Pending::Admin {
                            op: AdminOp::Change(_),
                            ..
                        }
                    )
                }) {
                    return Err(NodeError::Refused(format!(
                        "group {group}: a membership change is already in progress"
                    )));
                }
                if replica.raft.role() != Role::Leader {
                    return Err(NodeError::NotLeader {
                        group,
                        leader: Some(replica.raft.leader()).filter(|&l| l != NO_NODE),
                    });
                }
                change.validate(group, replica.raft.conf_state())?;
                replica.pending.insert(
                    request_id,
                    Pending::Admin {
                        submitted_tick: ticks,
                        op: AdminOp::Change(change),
                    },
                );
            }
            Request::TransferLeader { target } => {
                if !replica.raft.conf_state().voters.contains(&target) {
                    return Err(NodeError::InvalidArgument(format!(
                        "group {group}: node {target} is not a voter, so it cannot lead"
                    )));
                }
                if replica.raft.leader() != target {
                    replica
                        .raft
                        .transfer_leader(target)
                        .map_err(|e| raft_error(group, e))?;
                }
                replica.pending.insert(
                    request_id,
                    Pending::Admin {
                        submitted_tick: ticks,
                        op: AdminOp::Transfer(target),
                    },
                );
            }
        }
        replica.last_request_tick = ticks;
        self.awake.insert(group);
        self.active.insert(group);
        Ok(())
    }

    /// Handles a frame from another node: the sender is alive, its snapshot
    /// chunks go to their transfers, and its Raft messages (coalesced
    /// heartbeats expanded) go to their groups.
    pub fn receive(&mut self, mut frame: Frame) {
        if let Some(peer) = self.peers.get_mut(&frame.from) {
            peer.last_heard_tick = self.ticks;
            peer.down = false;
        }
        let from = frame.from;
        for chunk in std::mem::take(&mut frame.snapshot_chunks) {
            self.receive_snapshot_chunk(from, chunk);
        }
        for notice in std::mem::take(&mut frame.removed_notices) {
            self.receive_removed_notice(notice);
        }
        for group in std::mem::take(&mut frame.replica_probes) {
            if let Some(replica) = self.replicas.get(&group) {
                if let Some(notice) = gc::notice_for(self.id, replica, from) {
                    self.notices_due.insert((from, group), notice);
                }
            }
        }
        for message in frame.into_messages() {
            self.step(message.group, message.message);
        }
    }

    /// Every node sharing a range with this one (whose liveness it
    /// watches and which it beats every tick). The set only grows.
    pub fn peer_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    /// How many peers [`NodeCore::peer_ids`] yields.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Peers currently declared down.
    pub fn peers_down(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.down)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Steps a Raft message of `group` received from another node. A
    /// leader's message for a group this node has no replica of creates an
    /// empty one (the leader added this node; a snapshot will follow),
    /// unless the replica was removed at that term or later.
    pub fn step(&mut self, group: GroupId, message: Message) {
        // Snapshots travel as chunks; Raft sees them only once assembled
        // and verified here (see `receive_snapshot_chunk`).
        if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
            return;
        }
        if !self.replicas.contains_key(&group) && !self.create_on_contact(group, &message) {
            return;
        }
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        let from = message.from;
        if let Some(notice) = gc::notice_for(self.id, replica, from) {
            self.notices_due.insert((from, group), notice);
        }
        // A malformed or stale message is Raft's to ignore; nothing to report.
        let _ = replica.raft.step(message);
        if replica.raft.leader() == from {
            replica.leader_heard_tick = self.ticks;
        }
        self.awake.insert(group);
        self.active.insert(group);
    }

    /// A voter says this node's replica of `notice.group` belongs to no
    /// configuration of the group. A replica that applied its own removal
    /// takes it as the confirmation it waits for; another is condemned if
    /// the notice applies to it (the next round destroys it).
    fn receive_removed_notice(&mut self, notice: RemovedNotice) {
        let group = notice.group;
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        if replica.removed_at_tick.is_some() {
            if notice.index >= replica.removed_index {
                replica.removal_confirmed = true;
            }
            return;
        }
        // A replica that hears from a leader of its term is wanted by that
        // leader (leaders send to members only): the notice is older than
        // a re-addition. Destroying it now could leave it unrecreatable
        // at its term while the group needs its vote. Cut off from every
        // leader, it loses the leader within an election timeout and
        // takes the next notice.
        if replica.hears_a_leader(self.id, self.ticks, self.config.raft.election_ticks) {
            return;
        }
        if replica.condemned.is_some() || !gc::notice_applies(replica, &notice) {
            return;
        }
        replica.condemned = Some(notice);
        self.removing.insert(group);
        metrics::counter!("flotilla_replicas_condemned_total").increment(1);
    }

    /// Creates an empty replica of `group` for a leader's `message`, if it
    /// may. Returns whether the replica now exists.
    fn create_on_contact(&mut self, group: GroupId, message: &Message) -> bool {
        let from_leader = matches!(
            message.body,
            MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
        );
        if !from_leader || message.to != self.id {
            return false;
        }
        if let Some(&removed_term) = self.tombstones.get(&group) {
            if message.term <= removed_term {
                return false;
            }
        }
        if self.insert_uninitialized(group).is_err() {
            return false;
        }
        self.tombstones.remove(&group);
        self.track_peers(&[message.from]);
        metrics::counter!("flotilla_replicas_created_total").increment(1);
        true
    }

    /// Advances the logical clock: ticks every awake group, expires requests
    /// that waited too long, drives membership changes and transfers,
    /// quiesces idle leaders, and destroys removed replicas.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.beat_due = true;
        if self.config.wal_maintenance_every_ticks > 0
            && self.ticks % self.config.wal_maintenance_every_ticks == 0
        {
            self.maintenance_due = true;
        }
        self.detect_down_peers();
        let ticks = self.ticks;
        let idle = self.config.quiesce_after_idle_ticks;
        let mut asleep = Vec::new();
        for &group in &self.awake {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue;
            };
            replica.raft.tick();
            let config = &self.config;
            let expired: Vec<RequestId> = replica
                .pending
                .iter()
                .filter(|(_, p)| ticks > p.deadline(config))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                replica.pending.remove(&id);
                self.completions.push((id, Err(NodeError::Timeout)));
            }
            admin::drive(group, replica, &mut self.completions);
            if replica.pending.is_empty() {
                replica.pending = BTreeMap::new();
            }
            let election_ticks = self.config.raft.election_ticks;
            let unsure = (replica.raft.leader() != self.id
                && !replica.hears_a_leader(self.id, ticks, election_ticks))
                || (replica.removed_at_tick.is_some() && !replica.removal_confirmed);
            if unsure {
                replica.leaderless_ticks += 1;
                if replica.leaderless_ticks % self.config.raft.election_ticks.max(1) == 0 {
                    for voter in gc::probe_targets(self.id, replica.raft.conf_state()) {
                        self.probes_due.insert((voter, group));
                    }
                }
            } else {
                replica.leaderless_ticks = 0;
            }
            if replica.pending.is_empty()
                && replica.removed_at_tick.is_none()
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
    /// committed entries are applied and callers completed. Snapshots due
    /// are taken first (their compactions ride in the same batch), and
    /// snapshot transfers send their next chunks. Returns how many groups
    /// had work; call again while it is non-zero.
    pub fn round(&mut self, out: &mut FrameBuilder) -> Result<usize, RoundError> {
        if std::mem::take(&mut self.beat_due) {
            if self.config.sends_liveness {
                for &peer in self.peers.keys() {
                    out.liveness(peer, self.ticks);
                }
                metrics::counter!("flotilla_liveness_beats_total")
                    .increment(self.peers.len() as u64);
            }
            self.report_gauges();
        }
        for ((to, _), notice) in std::mem::take(&mut self.notices_due) {
            out.push_removed_notice(to, notice);
        }
        for (to, group) in std::mem::take(&mut self.probes_due) {
            out.push_replica_probe(to, group);
        }
        let mut batch = std::mem::take(&mut self.staged);
        if !self.removing.is_empty() {
            self.destroy_removed_replicas(&mut batch);
        }
        if std::mem::take(&mut self.maintenance_due) {
            self.maintain_wal()?;
        }
        self.take_due_snapshots(&mut batch)?;
        let transfers = self.pump_snapshot_transfers(out);
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
            // The leader's appends leave before its own entries are durable;
            // a snapshot Raft wants sent becomes a chunked transfer.
            for message in std::mem::take(&mut ready.messages) {
                if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                    self.outgoing.push_back(transfer::start(
                        group,
                        replica,
                        message.to,
                        &self.config,
                    ));
                } else {
                    out.push_message(message.to, group, message);
                }
            }
            if let Some(snapshot) = &ready.snapshot {
                // The installed snapshot must be durable before the WAL
                // says the log starts after it.
                transfer::persist_received(
                    group,
                    replica,
                    &snapshot.meta,
                    self.snapshots.as_ref(),
                )?;
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
            self.report_gauges();
        }
        for (group, ready) in readies {
            self.finish_ready(group, ready, out);
        }
        Ok(handled + transfers)
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
            transfer::install_received(replica, snapshot);
        }
        replica.received_snapshots = BTreeMap::new();
        let mut conf_changed = false;
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
                        if replica.raft.apply_conf_change(&change).is_ok() {
                            // Replicated: every replica bumps it at the same
                            // entry.
                            replica.descriptor.generation += 1;
                            conf_changed = true;
                        }
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
        if conf_changed {
            replica.sync_replicas();
            let replicas = replica.descriptor.replicas.clone();
            let removed = !replicas.contains(&self.id);
            if removed && replica.removed_at_tick.is_none() && replica.initialized() {
                replica.removed_at_tick = Some(self.ticks);
                replica.removed_index = replica.state.applied_index();
                replica.removal_confirmed = false;
                replica.leaderless_ticks = 0;
                self.removing.insert(group);
            }
            self.track_peers(&replicas);
        }
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        admin::drive(group, replica, &mut self.completions);
        let since_snapshot = replica
            .state
            .applied_index()
            .saturating_sub(replica.raft.storage().snapshot_meta().index);
        if since_snapshot >= self.config.snapshot_after_entries.max(1) {
            self.snapshots_due.entry(group).or_insert(false);
        }
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

    /// Destroys the replicas that are due: condemned by a voter's notice
    /// that still applies, or removed long enough ago, confirmed by a voter
    /// and no longer leading (see [`gc`]). The tombstone goes first (so
    /// nothing recreates them from stale messages), then their snapshots,
    /// then — with this round's `batch`, before any message could recreate
    /// them — their WAL state. A removed replica that is a member again
    /// (re-added before it was destroyed) is kept.
    fn destroy_removed_replicas(&mut self, batch: &mut WriteBatch) {
        let linger = 2 * self.config.raft.election_ticks;
        let ticks = self.ticks;
        for group in std::mem::take(&mut self.removing) {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue;
            };
            if let Some(notice) = replica.condemned.take() {
                // Input since the notice may have shown the replica is
                // wanted after all (a snapshot of a re-addition).
                if !gc::notice_applies(replica, &notice) {
                    continue;
                }
            } else if replica.descriptor.replicas.contains(&self.id) {
                replica.removed_at_tick = None;
                replica.removal_confirmed = false;
                continue;
            } else {
                let due = replica
                    .removed_at_tick
                    .is_none_or(|at| ticks >= at + linger)
                    && replica.removal_confirmed
                    && !replica.leading;
                if !due {
                    self.removing.insert(group);
                    continue;
                }
            }
            let term = replica.raft.term();
            if let Err(error) = self.snapshots.remove(group, term) {
                // Keep the replica; the next tick tries again.
                tracing::error!(group, %error, "could not record a replica's removal");
                self.removing.insert(group);
                continue;
            }
            let Some(replica) = self.replicas.remove(&group) else {
                continue;
            };
            if replica.leading {
                self.leaders -= 1;
            }
            for (id, pending) in replica.pending {
                // A write may have been proposed and may yet commit on the
                // remaining replicas: its outcome is unknown.
                let error = match pending {
                    Pending::Write { .. } => NodeError::Timeout,
                    _ => NodeError::RangeNotFound(group),
                };
                self.completions.push((id, Err(error)));
            }
            self.tombstones.insert(group, term);
            self.awake.remove(&group);
            self.active.remove(&group);
            self.incoming.remove(&group);
            self.snapshots_due.remove(&group);
            batch.remove_group(group);
            metrics::counter!("flotilla_replicas_removed_total").increment(1);
        }
    }

    /// Adds this core's change in leaders, awake and quiesced groups to the
    /// node-wide gauges.
    fn report_gauges(&mut self) {
        let now = [
            self.leaders as f64,
            self.awake.len() as f64,
            self.replicas.len().saturating_sub(self.awake.len()) as f64,
        ];
        let names = [
            "flotilla_leaders",
            "flotilla_awake_groups",
            "flotilla_quiesced_groups",
        ];
        for ((name, value), reported) in names.iter().zip(now).zip(&mut self.reported_gauges) {
            if value != *reported {
                metrics::gauge!(*name).increment(value - *reported);
                *reported = value;
            }
        }
    }

    /// Frees WAL segments no group needs; groups hosted here that pin old
    /// segments are snapshotted (when they applied something since their
    /// last snapshot) or have their live entries rewritten forward.
    fn maintain_wal(&mut self) -> Result<(), RoundError> {
        let pinning = self.wal.groups_pinning(self.config.wal_segments_target);
        for pin in pinning {
            let Some(replica) = self.replicas.get(&pin.group) else {
                continue;
            };
            if !replica.initialized() {
                continue;
            }
            if replica.state.applied_index() > replica.raft.storage().snapshot_meta().index {
                self.snapshots_due.insert(pin.group, true);
            } else {
                self.wal.rewrite_forward(pin.group)?;
            }
        }
        self.wal.purge()?;
        Ok(())
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
        Request::Get { key } | Request::StaleGet { key } => state
            .get(key)
            .map(|v| Response::Value(v.map(<[u8]>::to_vec)))
            .map_err(mismatch),
        Request::Scan { start, end, limit } | Request::StaleScan { start, end, limit } => state
            .scan(start, end.as_deref(), *limit)
            .map(Response::Rows)
            .map_err(mismatch),
        _ => Err(NodeError::InvalidArgument(
            "only a read can be served from the state machine".to_string(),
        )),
    }
}

/// Counts for the runtime's [`crate::NodeStats`], apart from the core's
/// other accessors.
impl NodeCore {
    /// Replicas hosted here, including ones still waiting for their first
    /// snapshot (which [`NodeCore::ranges`] leaves out). Constant time, so
    /// the runtime can read it every round.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }
}
