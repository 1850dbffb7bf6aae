//! Ranges: the key-value state machine each Raft group replicates, the
//! commands its log carries, and the snapshot files that let the log be
//! truncated and lagging replicas catch up.
//!
//! - [`command`]: [`Proposal`], [`Command`] and [`CommandResult`] with their
//!   versioned byte encoding and the request limits.
//! - [`span`]: [`KeySpan`], the `[start, end)` a range serves.
//! - [`state_machine`]: [`RangeState`], the ordered map, applied
//!   deterministically on every replica.
//! - [`snapshot_file`]: checksummed, atomically written snapshot files, and
//!   the chunked stream that carries the same bytes to another node.
//!
//! Nothing here does Raft, routing or threading; the node runtime decodes
//! committed entries, calls [`RangeState::apply`], and decides when to
//! snapshot.

mod codec;
pub mod command;
pub mod snapshot_file;
pub mod span;
pub mod state_machine;

pub use command::{
    Command, CommandResult, DecodeError, DecodeReason, InvalidArgument, Proposal, RejectReason,
    MAX_BATCH_BYTES, MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
pub use snapshot_file::{
    latest, load_snapshot, parse_snapshot_file_name, remove_older, snapshot_file_name,
    write_snapshot, FoundSnapshot, LoadedSnapshot, SnapshotAssembler, SnapshotChunks,
    SnapshotError, TransferError, DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES,
};
pub use span::KeySpan;
pub use state_machine::{KeyValue, RangeError, RangeState};
