//! flotilla: the embeddable multi-Raft storage engine.
//!
//! [`wal`] is the shared write-ahead log every Raft group of a node writes
//! through; [`group_log`] presents one group's part of it to the Raft core.
//! [`range`] is the key-value state machine of one range: its
//! commands, deterministic apply, and checksummed snapshot files. The node
//! runtime and the public `Node`/`Db` API are delivered by the node issue;
//! until they land nothing here pretends to be a working engine.

pub mod db;
pub mod group_log;
pub mod node;
pub mod range;
pub mod runtime;
pub mod wal;

pub use db::{BlockingDb, Db, Error};
pub use runtime::{Bootstrap, Node, NodeOptions, NodeStats};
