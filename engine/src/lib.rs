//! # flotilla: the embeddable multi-Raft storage engine
//!
//! A [`Node`] hosts many ranges of an ordered key space, each its own Raft
//! group, all writing through one shared write-ahead log ([`wal`]) so that
//! one `fdatasync` makes many groups' entries durable. A [`Db`] handle reads
//! and writes through any node: followers forward to leaders, reads are
//! linearizable (ReadIndex), and every error is typed ([`Error`]).
//!
//! ```
//! use std::sync::Arc;
//! use flotilla::{Bootstrap, Node, NodeOptions};
//! use flotilla_transport::local::LocalNetwork;
//!
//! # fn main() -> Result<(), flotilla::Error> {
//! let dir = tempfile::tempdir().map_err(|e| flotilla::Error::Io(e.to_string()))?;
//! // One node holding four ranges; a real cluster lists three or five
//! // nodes and connects them with a network transport.
//! let network = LocalNetwork::new(1);
//! let (transport, inbox) = network.register(1, 1024);
//! let options = NodeOptions::new(1, dir.path(), Bootstrap::EvenSplits { count: 4, nodes: vec![1] });
//! let node = Node::open(options, Arc::new(transport), inbox)?;
//!
//! let db = node.db().blocking(); // or `node.db()` from async code
//! db.put(b"greeting", b"hello")?;
//! assert_eq!(db.get(b"greeting")?, Some(b"hello".to_vec()));
//! let (swapped, _) = db.cas(b"greeting", Some(b"hello"), Some(b"bonjour"))?;
//! assert!(swapped);
//! node.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! Inside: [`node`] is the deterministic core that drives every replica of
//! a node (the same code runs under the seeded cluster simulator);
//! [`runtime`] runs it on worker threads (each group owned by one) with
//! ticks and a transport; [`wal`] is the log, [`group_log`] one group's view
//! of it for the Raft core, and [`range`] the key-value state machine with
//! its snapshot files. [`client`] is the protocol programs outside the
//! node's process speak to it: the codec, the server side over a [`Db`],
//! and [`client::RemoteDb`], the same operations with failover between
//! nodes.

pub mod client;
pub mod db;
pub mod group_log;
pub mod node;
pub mod range;
pub mod runtime;
pub mod wal;

pub use db::{BlockingDb, Db, Error};
pub use runtime::{Bootstrap, Node, NodeOptions, NodeStats, StatsReader};
