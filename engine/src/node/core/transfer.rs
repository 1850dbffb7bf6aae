//! Snapshots in the node core: taking them (and compacting the log behind
//! them), streaming them in chunks to replicas that need them, and
//! installing the ones received.
//!
//! Raft decides *when* a follower needs a snapshot (its next entry was
//! compacted away); the node decides what it holds. A leader's
//! `InstallSnapshot` message never crosses the network: the core replaces it
//! with a stream of checksummed chunks of the range's current state (the
//! state at its applied index, which is at or past the snapshot Raft named,
//! so the follower ends up at least as far along), a bounded number per
//! round. The receiver verifies every chunk, and only once the whole
//! snapshot verified does it hand Raft an `InstallSnapshot` with the
//! snapshot's metadata, keeping the state aside until Raft's `Ready`
//! installs it. Lost chunks simply end the transfer: the leader reports it
//! delivered once sent, Raft probes the follower, finds it still behind, and
//! asks for another snapshot.

use std::collections::VecDeque;

use flotilla_raftgroup::{Message, MessageBody, Role, Snapshot, SnapshotMeta};
use flotilla_transport::{FrameBuilder, GroupId, NodeId, SnapshotChunk};

use super::{NodeConfig, NodeCore, Replica, RoundError};
use crate::node::snapshots::{ReplicaMeta, SnapshotStore};
use crate::range::{SnapshotAssembler, SnapshotChunks, TransferError};
use crate::wal::WriteBatch;

/// A snapshot on its way to another node.
#[derive(Debug)]
pub(super) struct OutgoingSnapshot {
    group: GroupId,
    to: NodeId,
    /// The leader's term when the transfer started; a transfer outlives
    /// neither the leadership nor the term.
    term: u64,
    chunks: VecDeque<Vec<u8>>,
    /// The snapshot could not be encoded: report it undelivered.
    failed: bool,
}

/// A snapshot being received.
#[derive(Debug)]
pub(super) struct IncomingSnapshot {
    from: NodeId,
    term: u64,
    assembler: SnapshotAssembler,
    /// Verified chunks that arrived ahead of a missing one, by sequence
    /// number: frames may be reordered or lost, and a resent transfer of the
    /// same snapshot fills the gap.
    early: std::collections::BTreeMap<u64, Vec<u8>>,
    early_bytes: usize,
}

/// Bytes of early chunks a transfer holds at most; beyond it they are
/// dropped, to come again with the next transfer.
const EARLY_CHUNK_BYTES_MAX: usize = 16 << 20;

impl IncomingSnapshot {
    fn new(from: NodeId, term: u64) -> Self {
        IncomingSnapshot {
            from,
            term,
            assembler: SnapshotAssembler::new(),
            early: std::collections::BTreeMap::new(),
            early_bytes: 0,
        }
    }

    /// Feeds one chunk. Returns false when the transfer must be abandoned
    /// (its stream is corrupt).
    fn feed(&mut self, chunk: Vec<u8>) -> bool {
        match self.assembler.push(&chunk) {
            Ok(()) => {
                while let Some(next) = self.early.remove(&self.assembler.chunks_received()) {
                    self.early_bytes -= next.len();
                    if self.assembler.push(&next).is_err() {
                        return false;
                    }
                }
                true
            }
            // Surplus copies, and chunks damaged in transit (a resend
            // brings them again).
            Err(
                TransferError::Duplicate { .. }
                | TransferError::AfterEnd { .. }
                | TransferError::BadChunk { .. },
            ) => true,
            Err(TransferError::OutOfOrder { got, .. }) => {
                if self.early_bytes + chunk.len() <= EARLY_CHUNK_BYTES_MAX {
                    self.early_bytes += chunk.len();
                    self.early.insert(got, chunk);
                }
                true
            }
            Err(TransferError::WrongSnapshot {
                expected_index,
                index,
                ..
            }) => {
                if index > expected_index {
                    // A newer snapshot supersedes the one being assembled.
                    *self = IncomingSnapshot::new(self.from, self.term);
                    return self.feed(chunk);
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// Starts streaming `replica`'s current state to `to`.
pub(super) fn start(
    group: GroupId,
    replica: &Replica,
    to: NodeId,
    config: &NodeConfig,
) -> OutgoingSnapshot {
    let meta = replica.meta().encode();
    let chunks = SnapshotChunks::new(&replica.state, &meta, config.snapshot_chunk_bytes);
    let (chunks, failed) = match chunks {
        Ok(chunks) => (chunks.collect(), false),
        Err(error) => {
            tracing::error!(group, to, %error, "could not encode a snapshot to send");
            (VecDeque::new(), true)
        }
    };
    metrics::counter!("flotilla_snapshots_sent_total").increment(1);
    OutgoingSnapshot {
        group,
        to,
        term: replica.raft.term(),
        chunks,
        failed,
    }
}

/// Makes the snapshot Raft is installing on `replica` durable in `store`.
pub(super) fn persist_received(
    group: GroupId,
    replica: &Replica,
    meta: &SnapshotMeta,
    store: &dyn SnapshotStore,
) -> Result<(), RoundError> {
    let missing = RoundError::MissingSnapshot {
        group,
        index: meta.index,
    };
    let Some(received) = replica.received_snapshots.get(&meta.index) else {
        return Err(missing);
    };
    let (state, replica_meta) = &**received;
    store.save(group, state, &replica_meta.encode())?;
    Ok(())
}

/// Replaces `replica`'s state with the snapshot Raft installed (already
/// durable, see [`persist_received`]).
pub(super) fn install_received(replica: &mut Replica, snapshot: &Snapshot) {
    let Some(received) = replica.received_snapshots.remove(&snapshot.meta.index) else {
        return;
    };
    let (state, meta) = *received;
    replica
        .raft
        .storage_mut()
        .install_snapshot(snapshot.clone());
    replica.descriptor.span = state.span().clone();
    replica.descriptor.generation = meta.generation;
    replica.state = state;
    replica.set_recent_requests(&meta.recent_requests);
    replica.sync_replicas();
    metrics::counter!("flotilla_snapshots_installed_total").increment(1);
}

impl NodeCore {
    /// Sends the next chunks of the snapshot transfers, at most
    /// `snapshot_chunks_per_round` in all, and reports finished transfers
    /// to Raft. Returns 1 while transfers remain (the caller runs another
    /// round), else 0.
    pub(super) fn pump_snapshot_transfers(&mut self, out: &mut FrameBuilder) -> usize {
        let mut budget = self.config.snapshot_chunks_per_round.max(1);
        while let Some(transfer) = self.outgoing.front_mut() {
            let still_leading = self
                .replicas
                .get(&transfer.group)
                .is_some_and(|r| r.raft.role() == Role::Leader && r.raft.term() == transfer.term);
            if !still_leading {
                self.outgoing.pop_front();
                continue;
            }
            if budget == 0 {
                break;
            }
            if let Some(chunk) = transfer.chunks.pop_front() {
                metrics::counter!("flotilla_snapshot_bytes_sent_total")
                    .increment(chunk.len() as u64);
                let chunk = SnapshotChunk {
                    group: transfer.group,
                    term: transfer.term,
                    chunk,
                };
                out.push_snapshot_chunk(transfer.to, chunk);
                budget -= 1;
                continue;
            }
            let Some(done) = self.outgoing.pop_front() else {
                break;
            };
            if let Some(replica) = self.replicas.get_mut(&done.group) {
                replica.raft.report_snapshot(done.to, !done.failed);
                self.awake.insert(done.group);
                self.active.insert(done.group);
            }
        }
        usize::from(!self.outgoing.is_empty())
    }

    /// Feeds a received chunk to its group's transfer; a complete, verified
    /// snapshot goes to Raft.
    pub(super) fn receive_snapshot_chunk(&mut self, from: NodeId, chunk: SnapshotChunk) {
        let group = chunk.group;
        let incoming = self
            .incoming
            .entry(group)
            .and_modify(|incoming| {
                // A transfer from another leader or term replaces the old one.
                if incoming.from != from || incoming.term != chunk.term {
                    *incoming = IncomingSnapshot::new(from, chunk.term);
                }
            })
            .or_insert_with(|| IncomingSnapshot::new(from, chunk.term));
        if !incoming.feed(chunk.chunk) {
            self.incoming.remove(&group);
            metrics::counter!("flotilla_snapshot_transfers_abandoned_total").increment(1);
            return;
        }
        if !incoming.assembler.is_complete() {
            return;
        }
        let Some(incoming) = self.incoming.remove(&group) else {
            return;
        };
        let loaded = match incoming.assembler.finish() {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(group, from, %error, "dropped a corrupt snapshot transfer");
                metrics::counter!("flotilla_snapshot_transfers_abandoned_total").increment(1);
                return;
            }
        };
        let meta = match ReplicaMeta::decode(&loaded.conf_state) {
            Ok(meta) => meta,
            Err(error) => {
                tracing::warn!(group, from, %error, "dropped a snapshot with bad metadata");
                metrics::counter!("flotilla_snapshot_transfers_abandoned_total").increment(1);
                return;
            }
        };
        let message = Message {
            from,
            to: self.id,
            term: incoming.term,
            body: MessageBody::InstallSnapshot {
                snapshot: Box::new(Snapshot {
                    meta: SnapshotMeta {
                        index: loaded.state.applied_index(),
                        term: loaded.state.applied_term(),
                        conf_state: meta.conf_state.clone(),
                    },
                    data: Vec::new(),
                }),
            },
        };
        if !self.replicas.contains_key(&group) && !self.create_on_contact(group, &message) {
            return;
        }
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        metrics::counter!("flotilla_snapshots_received_total").increment(1);
        let index = loaded.state.applied_index();
        replica
            .received_snapshots
            .insert(index, Box::new((loaded.state, meta)));
        // A stale one is Raft's to ignore; the state is dropped after the
        // next `Ready`.
        let _ = replica.raft.step(message);
        self.awake.insert(group);
        self.active.insert(group);
    }

    /// Takes the snapshots due: writes each range's state durably, then
    /// stages the compaction of the log it covers into `batch`.
    pub(super) fn take_due_snapshots(&mut self, batch: &mut WriteBatch) -> Result<(), RoundError> {
        let threshold = self.config.snapshot_after_entries.max(1);
        for (group, forced) in std::mem::take(&mut self.snapshots_due) {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue;
            };
            let applied = replica.state.applied_index();
            let snapshot_index = replica.raft.storage().snapshot_meta().index;
            if !replica.initialized() || applied <= snapshot_index {
                continue;
            }
            if !forced && replica.leading && applied - snapshot_index < 4 * threshold {
                let id = self.id;
                let slowest = replica
                    .raft
                    .progress()
                    .iter()
                    .filter(|p| p.node != id)
                    .map(|p| p.matched)
                    .min()
                    .unwrap_or(applied);
                if slowest < applied {
                    // A follower still needs entries this would compact;
                    // the next apply asks again.
                    continue;
                }
            }
            self.snapshots
                .save(group, &replica.state, &replica.meta().encode())?;
            let conf = replica.raft.conf_state().clone();
            if let Err(error) =
                replica
                    .raft
                    .storage_mut()
                    .create_snapshot(applied, conf, Vec::new(), batch)
            {
                tracing::error!(group, applied, %error, "could not compact after a snapshot");
                continue;
            }
            metrics::counter!("flotilla_snapshots_created_total").increment(1);
        }
        Ok(())
    }
}
