//! One Raft group's log as `raftgroup` sees it ([`LogStorage`]), stored in the
//! node's shared [`Wal`].
//!
//! The WAL keeps entries, hard state and compaction points of every group;
//! this adapter adds what the WAL does not own — the group's latest snapshot
//! (its index, term and configuration, which the host loads from the range's
//! snapshot file on restart) — and converts between the WAL's plain records
//! and Raft's types. [`GroupLog::stage_ready`] turns the persistence part of
//! a `Ready` into WAL items, so that one worker round can put the `Ready`s
//! of many groups into ONE write batch and ONE sync.

use std::sync::Arc;

use flotilla_raftgroup::{
    ConfState, Entry, EntryKind, HardState, InitialState, LogStorage, Ready, Snapshot,
    SnapshotMeta, StorageError,
};

use crate::wal::{self, GroupId, LogEntry, Wal, WalError, WriteBatch};

/// The log of one group over the shared WAL.
#[derive(Debug, Clone)]
pub struct GroupLog {
    wal: Arc<Wal>,
    group: GroupId,
    /// The latest snapshot the host made or installed. Its data may be
    /// empty when the host streams snapshot contents separately.
    snapshot: Snapshot,
}

fn entry_from_wal(entry: LogEntry) -> Entry {
    Entry {
        term: entry.term,
        index: entry.index,
        kind: if entry.kind == EntryKind::ConfChange as u8 {
            EntryKind::ConfChange
        } else {
            EntryKind::Normal
        },
        data: entry.data.into(),
    }
}

fn entry_to_wal(entry: &Entry) -> LogEntry {
    LogEntry {
        index: entry.index,
        term: entry.term,
        kind: entry.kind as u8,
        data: entry.data.to_vec(),
    }
}

fn storage_error(error: WalError) -> StorageError {
    match error {
        WalError::EntryCompacted { index, .. } => StorageError::Compacted(index),
        WalError::EntryUnavailable { index, .. } => StorageError::Unavailable(index),
        other => StorageError::Other(other.to_string()),
    }
}

impl GroupLog {
    /// A new group whose initial configuration is `conf_state` (bootstrap).
    pub fn bootstrap(wal: Arc<Wal>, group: GroupId, conf_state: ConfState) -> Self {
        GroupLog {
            wal,
            group,
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    conf_state,
                },
                data: Vec::new(),
            },
        }
    }

    /// A group recovered after a restart: `snapshot` is its latest snapshot
    /// (from the range's snapshot file), the rest comes from the WAL.
    pub fn recover(wal: Arc<Wal>, group: GroupId, snapshot: Snapshot) -> Self {
        GroupLog {
            wal,
            group,
            snapshot,
        }
    }

    /// The group's id in the WAL.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The latest snapshot's metadata.
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot.meta
    }

    /// Adds the persistence part of `ready` to `batch`: a snapshot marker,
    /// the entries (which replace any conflicting suffix) and the hard state.
    /// The snapshot itself becomes this log's snapshot once the batch is
    /// durable, which the caller reports with [`GroupLog::install_snapshot`].
    pub fn stage_ready(&self, ready: &Ready, batch: &mut WriteBatch) {
        if let Some(snapshot) = &ready.snapshot {
            batch.snapshot_marker(self.group, snapshot.meta.index, snapshot.meta.term);
        }
        if !ready.entries.is_empty() {
            batch.add_entries(self.group, ready.entries.iter().map(entry_to_wal).collect());
        }
        if let Some(hard_state) = ready.hard_state {
            batch.set_hard_state(
                self.group,
                wal::HardState {
                    term: hard_state.term,
                    vote: hard_state.vote,
                    commit: hard_state.commit,
                },
            );
        }
    }

    /// Records a snapshot received from the leader (after its marker is
    /// durable in the WAL).
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        if snapshot.meta.index > self.snapshot.meta.index {
            self.snapshot = snapshot;
        }
    }

    /// Records a snapshot the host made of its own state at `index` (which
    /// must be applied) and stages the compaction of the entries it covers.
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        if index <= self.snapshot.meta.index {
            return Err(StorageError::Compacted(index));
        }
        let term = self.term(index)?;
        self.snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        };
        batch.compact_prefix(self.group, index + 1);
        Ok(())
    }
}

impl LogStorage for GroupLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let hard_state = self
            .wal
            .hard_state(self.group)
            .map(|hs| HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            })
            .unwrap_or_default();
        let mut hard_state = hard_state;
        hard_state.commit = hard_state.commit.max(self.snapshot.meta.index);
        hard_state.term = hard_state.term.max(self.snapshot.meta.term);
        Ok(InitialState {
            hard_state,
            conf_state: self.snapshot.meta.conf_state.clone(),
        })
    }

    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.snapshot.meta.index {
            return Err(StorageError::Compacted(low));
        }
        self.wal
            .entries(self.group, low, high, max_bytes)
            .map(|entries| entries.into_iter().map(entry_from_wal).collect())
            .map_err(storage_error)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.snapshot.meta.index {
            return Ok(self.snapshot.meta.term);
        }
        if index < self.snapshot.meta.index {
            return Err(StorageError::Compacted(index));
        }
        self.wal.term(self.group, index).map_err(storage_error)
    }

    fn first_index(&self) -> u64 {
        self.wal
            .first_index(self.group)
            .max(self.snapshot.meta.index + 1)
    }

    fn last_index(&self) -> u64 {
        self.wal
            .last_index(self.group)
            .max(self.snapshot.meta.index)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}
