//! # flotilla-raftgroup
//!
//! Raft for one group, as a pure state machine: messages, ticks and
//! proposals go in; a [`Ready`] describing what to persist, send and apply
//! comes out. No threads, no clock, no files, no sockets — the host (the
//! flotilla engine, a simulator, a benchmark) does all IO, which is what lets
//! a seeded simulator drive this exact code through thousands of fault
//! schedules.
//!
//! Implemented: elections with randomized timeouts, pre-vote and
//! check-quorum; replication with per-follower progress (probe, replicate,
//! snapshot), inflight limits by count and bytes, fast conflict backtracking
//! and an uncommitted-bytes limit; commitment only through entries of the
//! current term; proposal forwarding; batched ReadIndex and lease reads;
//! leadership transfer; learners and joint-consensus membership changes;
//! snapshots and host-driven compaction; quiescence.
//!
//! The ordering contract between persistence and messages is on [`Ready`].
//!
//! ```
//! use flotilla_raftgroup::{Config, ConfState, MemStorage, RawNode, Role};
//!
//! let storage = MemStorage::new_with_conf_state(ConfState::with_voters([1]));
//! let mut node = RawNode::new(Config::new(1), storage).unwrap();
//! node.campaign();
//! // One voter wins at once; persist and advance until the leader's
//! // election entry is committed and applied.
//! while node.has_ready() {
//!     let ready = node.ready().unwrap();
//!     if let Some(hs) = ready.hard_state {
//!         node.storage_mut().set_hard_state(hs);
//!     }
//!     node.storage_mut().append(&ready.entries).unwrap();
//!     node.advance(ready);
//! }
//! assert_eq!(node.role(), Role::Leader);
//! node.propose(b"hello".to_vec()).unwrap();
//! ```

pub mod confchange;
mod config;
mod error;
mod log;
pub mod quorum;
mod raft;
mod raw_node;
mod rng;
mod storage;
mod tracker;
mod types;

pub use config::{Config, ReadMode};
pub use error::{Error, Result, StorageError};
pub use raft::Proposed;
pub use raw_node::{ProgressView, RawNode, Ready};
pub use storage::{InitialState, LogStorage, MemStorage};
pub use tracker::ProgressState;
pub use types::{
    ArchivedEntry, ArchivedMessage, ArchivedMessageBody, ConfChange, ConfChangeKind,
    ConfChangeSingle, ConfState, Entry, EntryKind, HardState, Message, MessageBody, NodeId,
    ReadState, Role, Snapshot, SnapshotMeta, SoftState, ENTRY_OVERHEAD_BYTES, NO_NODE,
};
