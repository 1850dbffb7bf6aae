//! The errors a Raft group reports to its host.

use crate::types::NodeId;

/// Errors from the log storage the host provides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested index is below the first available index.
    #[error("log entries requested at or below index {0} were compacted")]
    Compacted(u64),
    /// The requested index is above the last index.
    #[error("log entry {0} is not available")]
    Unavailable(u64),
    /// The snapshot is being produced; the leader will ask again later.
    #[error("snapshot is temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// Anything else the storage layer reports (IO, corruption).
    #[error("storage failure: {0}")]
    Other(String),
}

/// Errors returned to callers of the group's API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No leader is known: retry after an election.
    #[error("no leader is known for this group")]
    NoLeader,
    /// Proposal forwarding is off and this replica is not the leader.
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader { leader: Option<NodeId> },
    /// A leadership transfer is in progress; proposals are refused until it
    /// completes or is aborted (at most one election timeout).
    #[error("a leadership transfer to node {target} is in progress")]
    TransferInProgress { target: NodeId },
    /// The leader holds more uncommitted bytes than `max_uncommitted_bytes`.
    #[error("too many uncommitted bytes at the leader; retry later")]
    UncommittedLimit,
    /// A membership change is already pending (proposed and not applied).
    #[error("a membership change is already pending")]
    ConfChangePending,
    /// The membership change is not valid against the current configuration.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    /// The configuration handed to `RawNode::new` is not valid.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A snapshot or log request could not be served by storage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The operation needs a node that is not a member of the group.
    #[error("node {0} is not a member of the group")]
    NotMember(NodeId),
    /// A proposal was empty or this replica may not propose (a learner
    /// without a leader, or a removed replica).
    #[error("proposal dropped: {0}")]
    ProposalDropped(&'static str),
}

/// Shorthand for results with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
