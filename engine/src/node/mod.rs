//! The node: many ranges, each its own Raft group, on one shared WAL.
//!
//! [`NodeCore`] is the deterministic heart of a node. It owns every replica
//! hosted here (a `RawNode` over the group's slice of the WAL, plus the
//! range's key-value state machine) and is driven from outside: requests,
//! Raft messages and ticks go in; one [`NodeCore::round`] persists the work
//! of every group that has some in ONE WAL batch (one sync), puts the
//! outgoing messages into one frame per destination node, applies what
//! committed and completes the callers. Because it does no IO besides the
//! WAL (whose file layer can itself be simulated) and keeps no clock but
//! ticks, the same code runs under the threaded runtime and under the seeded
//! cluster simulator.
//!
//! Cost follows activity: only groups that received input since the last
//! round are looked at, and only awake (not quiesced) groups are ticked.
//! Node liveness is one beat per peer node per tick, carried in the frame
//! with the coalesced Raft heartbeats of the awake groups; a peer not heard
//! from for `peer_down_after_ticks` is declared down, and the groups it led
//! wake here and campaign.

mod core;
pub mod snapshots;

pub use self::core::{
    worker_of, NodeConfig, NodeCore, NodeError, RangeDescriptor, ReplicaChange, Request, RequestId,
    Response, RoundError, BOOTSTRAP_INDEX,
};
