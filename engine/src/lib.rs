//! flotilla: the embeddable multi-Raft storage engine.
//!
//! The write-ahead log, per-group log storage, range state machines, the node
//! runtime and the public `Node`/`Db` API are delivered by the WAL and node
//! issues. Until they land this crate exports nothing, so nothing can be
//! mistaken for a working engine.
