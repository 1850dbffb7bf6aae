//! Wire and log types. They derive `rkyv::Archive` so that the transport and
//! the WAL can validate and read them in place without copying.

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

/// Identifies a replica of a group. `0` is never a valid id: it means "none"
/// wherever a `NodeId` is optional in a message.
pub type NodeId = u64;

/// The id that means "no node" (no leader known, no vote cast).
pub const NO_NODE: NodeId = 0;

/// What an entry's payload means to the host.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum EntryKind {
    /// Opaque application data. An empty payload is the entry a new leader
    /// appends to commit entries of earlier terms (Raft paper, §5.4.2).
    #[default]
    Normal = 0,
    /// An encoded [`ConfChange`]; the host applies it with
    /// `RawNode::apply_conf_change` when it is committed.
    ConfChange = 1,
}

/// One log entry.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub kind: EntryKind,
    /// Shared, so that the copies an entry needs (the unstable log, one
    /// append per follower, the `Ready`, storage, committed entries) share
    /// one payload. Archived exactly like a `Vec<u8>`.
    pub data: Bytes,
}

/// Bytes an entry is charged for in flow control and size limits: its
/// payload plus a fixed allowance for index, term and kind.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// Size counted against `max_size_per_msg`, inflight and uncommitted
    /// byte limits.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// The state that must be durable before a vote or an append response is
/// sent: the current term, the vote cast in it, and the commit index.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct HardState {
    pub term: u64,
    pub vote: NodeId,
    pub commit: u64,
}

/// The membership of a group. When `voters_outgoing` is non-empty the group
/// is in a joint configuration and every decision needs a majority of both
/// `voters` and `voters_outgoing`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ConfState {
    /// Voters of the incoming (or only) configuration, sorted.
    pub voters: Vec<NodeId>,
    /// Voters of the outgoing configuration while joint, sorted; else empty.
    pub voters_outgoing: Vec<NodeId>,
    /// Learners, sorted. Never also a voter of either configuration.
    pub learners: Vec<NodeId>,
    /// Nodes that are voters of the outgoing configuration and will become
    /// learners when the joint configuration is left.
    pub learners_next: Vec<NodeId>,
    /// Whether the leader leaves the joint configuration by itself once the
    /// entering change has been applied.
    pub auto_leave: bool,
}

impl ConfState {
    /// A configuration of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        ConfState {
            voters,
            ..ConfState::default()
        }
    }

    /// Whether the configuration is joint.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }
}

/// Describes the state a snapshot captures.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The configuration as of `index`.
    pub conf_state: ConfState,
}

/// A snapshot: the state machine as of `meta.index`, opaque to Raft.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

impl Snapshot {
    /// Whether this is the empty snapshot (index 0), which stands for "none".
    pub fn is_empty(&self) -> bool {
        self.meta.index == 0
    }
}

/// How one node's role changes in a [`ConfChange`].
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum ConfChangeKind {
    AddVoter = 0,
    AddLearner = 1,
    Remove = 2,
}

/// One node's change within a [`ConfChange`].
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct ConfChangeSingle {
    pub kind: ConfChangeKind,
    pub node: NodeId,
}

/// A membership change. Every change with at least one element enters a
/// joint configuration (old and new voters must both agree); the change with
/// no elements leaves it. With `auto_leave` the leader proposes the leaving
/// change itself once the entering one is applied.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ConfChange {
    pub changes: Vec<ConfChangeSingle>,
    pub auto_leave: bool,
}

impl ConfChange {
    /// The change that leaves a joint configuration.
    pub fn leave_joint() -> Self {
        ConfChange::default()
    }

    /// Whether this is the change that leaves a joint configuration.
    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }

    /// Encodes the change as the payload of a `ConfChange` entry.
    pub fn encode(&self) -> Vec<u8> {
        match rkyv::to_bytes::<rkyv::rancor::Error>(self) {
            Ok(bytes) => bytes.into_vec(),
            // Serializing plain vectors into a growable buffer cannot fail.
            Err(error) => unreachable!("encoding a ConfChange failed: {error}"),
        }
    }

    /// Decodes the payload of a `ConfChange` entry, validating it first.
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::Error> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<ConfChange, rkyv::rancor::Error>(&aligned)
            .map_err(|error| crate::Error::InvalidConfChange(format!("undecodable: {error}")))
    }
}

/// A Raft message between two replicas of one group.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term; for a pre-vote request, the term it would
    /// campaign in; for a granted pre-vote response, the request's term.
    pub term: u64,
    pub body: MessageBody,
}

/// The kinds of message and what each carries.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum MessageBody {
    /// Leader → follower: entries after (`prev_index`, `prev_term`).
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    /// Follower → leader. On success `index` is the last index now known to
    /// match. On reject `index` is the rejected `prev_index` and the hint
    /// names the largest index at or below which the follower's log may
    /// match, with its term, so that the leader skips a whole term at once.
    AppendResponse {
        index: u64,
        reject: bool,
        hint_index: u64,
        hint_term: u64,
    },
    /// Candidate → voter. `transfer` is set when the campaign was started by
    /// `TimeoutNow`, which overrides the voter's leader lease.
    RequestVote {
        pre_vote: bool,
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    /// Every answer also carries the voter's commit point. A candidate whose
    /// log has that entry learns it is committed: without this, voters that
    /// missed the commit of a change removing the old leader could wait
    /// forever for that leader's vote (see `election.rs`).
    VoteResponse {
        pre_vote: bool,
        reject: bool,
        commit: u64,
        commit_term: u64,
    },
    /// Leader → follower liveness and commit. `round` numbers the heartbeat
    /// broadcast (it confirms ReadIndex batches and leases); `quiesce` asks
    /// the follower to stop ticking.
    Heartbeat {
        commit: u64,
        round: u64,
        quiesce: bool,
    },
    HeartbeatResponse {
        round: u64,
    },
    /// Leader → follower whose needed entries were compacted.
    InstallSnapshot {
        /// Boxed: this rare, large variant would otherwise set the size of
        /// every message.
        snapshot: Box<Snapshot>,
    },
    /// Leader → transfer target: campaign now.
    TimeoutNow,
    /// Follower → leader: proposals forwarded by a follower.
    Propose {
        entries: Vec<Entry>,
    },
    /// Follower → leader: a linearizable read requested at the follower.
    ReadIndex {
        request: u64,
    },
    /// Leader → follower: the read may be served once `index` is applied.
    ReadIndexResponse {
        request: u64,
        index: u64,
    },
    /// Follower → leader: a leadership transfer requested at the follower.
    TransferLeader {
        target: NodeId,
    },
}

impl MessageBody {
    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append_response",
            MessageBody::RequestVote { pre_vote: true, .. } => "pre_vote",
            MessageBody::RequestVote { .. } => "vote",
            MessageBody::VoteResponse { pre_vote: true, .. } => "pre_vote_response",
            MessageBody::VoteResponse { .. } => "vote_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::InstallSnapshot { .. } => "snapshot",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::Propose { .. } => "propose",
            MessageBody::ReadIndex { .. } => "read_index",
            MessageBody::ReadIndexResponse { .. } => "read_index_response",
            MessageBody::TransferLeader { .. } => "transfer_leader",
        }
    }
}

/// A linearizable read that may now be served: the host's state machine has
/// applied at least `index`, which was the leader's commit index when the
/// read was confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub request: u64,
    pub index: u64,
}

/// A replica's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the host may want to observe: who leads and what this
/// replica is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}
