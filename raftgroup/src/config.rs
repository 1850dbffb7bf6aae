//! Tunables of one Raft group, validated before use.

use crate::error::{Error, Result};
use crate::types::{NodeId, NO_NODE};

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Every batch of reads is confirmed by one heartbeat round that a
    /// quorum acknowledges (ReadIndex, Raft thesis §6.4).
    #[default]
    ReadIndex,
    /// Reads are served on the leader's lease: a quorum acknowledged a
    /// heartbeat sent less than `election_ticks - lease_margin_ticks` ago, so
    /// no other leader can exist yet. Requires `check_quorum`, and assumes
    /// tick rates drift apart by less than the margin.
    Lease,
}

/// Configuration of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id; never 0.
    pub id: NodeId,
    /// Ticks without hearing from a leader before a follower campaigns. The
    /// actual timeout is drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u64,
    /// Ticks between heartbeats; must be less than `election_ticks`.
    pub heartbeat_ticks: u64,
    /// Seed of the election-timeout randomization, so that simulations
    /// replay exactly. Hosts should pass something random per replica.
    pub seed: u64,
    /// Run a pre-vote round before bumping the term (thesis §9.6).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an
    /// election timeout, and followers reject votes while they hear from
    /// their leader.
    pub check_quorum: bool,
    /// Followers forward proposals, reads and transfer requests to the leader.
    pub forward_proposals: bool,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Ticks of the lease given up to absorb clock-rate drift (lease reads).
    pub lease_margin_ticks: u64,
    /// Maximum bytes of entries in one append message (at least one entry is
    /// always sent).
    pub max_size_per_msg: u64,
    /// Maximum append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Maximum bytes of entries in flight to one follower (0 = unlimited).
    pub max_inflight_bytes: u64,
    /// Maximum bytes of proposed but uncommitted entries at the leader
    /// (0 = unlimited). A proposal is always accepted when nothing is
    /// uncommitted, so a single large entry cannot block forever.
    pub max_uncommitted_bytes: u64,
    /// Maximum bytes of committed entries handed out in one `Ready`.
    pub max_committed_bytes_per_ready: u64,
    /// The index the host's state machine has applied; on restart Raft
    /// hands out committed entries after it.
    pub applied: u64,
}

impl Config {
    /// A configuration with the defaults used in production for `id`.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 2,
            seed: id,
            pre_vote: true,
            check_quorum: true,
            forward_proposals: true,
            read_mode: ReadMode::ReadIndex,
            lease_margin_ticks: 1,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_inflight_bytes: 0,
            max_uncommitted_bytes: 0,
            max_committed_bytes_per_ready: 16 << 20,
            applied: 0,
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<()> {
        if self.id == NO_NODE {
            return Err(Error::InvalidConfig("id must not be 0".into()));
        }
        if self.heartbeat_ticks == 0 {
            return Err(Error::InvalidConfig("heartbeat_ticks must be > 0".into()));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(Error::InvalidConfig(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if self.max_inflight_msgs == 0 {
            return Err(Error::InvalidConfig("max_inflight_msgs must be > 0".into()));
        }
        if self.read_mode == ReadMode::Lease && !self.check_quorum {
            return Err(Error::InvalidConfig(
                "read_mode = Lease requires check_quorum".into(),
            ));
        }
        if self.read_mode == ReadMode::Lease && self.lease_margin_ticks >= self.election_ticks {
            return Err(Error::InvalidConfig(
                "lease_margin_ticks must be less than election_ticks".into(),
            ));
        }
        Ok(())
    }
}
