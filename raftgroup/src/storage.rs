//! The log as the host stores it, seen through a small trait, and an
//! in-memory implementation for tests, simulations and benchmarks.
//!
//! Raft keeps entries it has not yet handed out for persistence in its own
//! unstable buffer; everything the host has persisted is read back through
//! [`LogStorage`]. The engine implements the trait over the shared WAL.

use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, Snapshot, SnapshotMeta};

/// What a replica starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

/// Read access to the persisted log of one group.
///
/// Invariant: entries `first_index()..=last_index()` are readable and the
/// term of `first_index() - 1` (the snapshot's index) is known.
pub trait LogStorage {
    /// The persisted hard state and the configuration as of the snapshot.
    fn initial_state(&self) -> Result<InitialState, StorageError>;
    /// Entries `[low, high)`, stopping once `max_bytes` is exceeded but always
    /// returning at least one entry when `low < high`.
    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// The term of entry `index`, for `first_index() - 1 <= index <= last_index()`.
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// The first index still in the log (snapshot index + 1).
    fn first_index(&self) -> u64;
    /// The last index in the log (the snapshot index when the log is empty).
    fn last_index(&self) -> u64;
    /// The latest snapshot, to send to a follower that needs compacted
    /// entries. May answer `SnapshotTemporarilyUnavailable`.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// Collects entries from the front of `entries` while their total size stays
/// within `max_bytes`, always keeping at least one.
pub(crate) fn limit_size(entries: &mut Vec<Entry>, max_bytes: u64) {
    if entries.len() <= 1 {
        return;
    }
    let mut total = 0u64;
    let keep = entries
        .iter()
        .take_while(|entry| {
            total += entry.size_bytes();
            total <= max_bytes
        })
        .count()
        .max(1);
    entries.truncate(keep);
}

/// An in-memory [`LogStorage`]. Appends and compactions are explicit calls,
/// made by the host after it handles a `Ready`.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// Entries after the snapshot; `entries[i].index == snapshot.meta.index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// A storage whose group starts with these voters (bootstrap).
    pub fn new_with_conf_state(conf_state: ConfState) -> Self {
        MemStorage {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 0,
                    term: 0,
                    conf_state,
                },
                data: Vec::new(),
            },
            ..MemStorage::default()
        }
    }

    fn offset(&self) -> u64 {
        self.snapshot.meta.index + 1
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Persists a hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Appends entries, replacing any conflicting suffix.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index < self.offset() {
            return Err(StorageError::Compacted(first.index));
        }
        let position = (first.index - self.offset()) as usize;
        if position > self.entries.len() {
            return Err(StorageError::Other(format!(
                "append at {} leaves a gap after {}",
                first.index,
                self.last_index()
            )));
        }
        self.entries.truncate(position);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Installs a snapshot received from the leader, dropping the log.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        if snapshot.meta.index <= self.snapshot.meta.index {
            return Err(StorageError::Other(format!(
                "snapshot at {} is older than the current one at {}",
                snapshot.meta.index, self.snapshot.meta.index
            )));
        }
        self.hard_state.commit = self.hard_state.commit.max(snapshot.meta.index);
        self.hard_state.term = self.hard_state.term.max(snapshot.meta.term);
        self.entries.clear();
        self.snapshot = snapshot;
        Ok(())
    }

    /// Records a snapshot the host made of its own state at `index` (which
    /// must be applied, hence in the log) and drops the entries it covers.
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        if index <= self.snapshot.meta.index {
            return Err(StorageError::Compacted(index));
        }
        let term = self.term(index)?;
        self.compact(index + 1)?;
        self.snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state,
            },
            data,
        };
        Ok(())
    }

    /// Drops entries before `first_kept`; the snapshot must cover them.
    fn compact(&mut self, first_kept: u64) -> Result<(), StorageError> {
        if first_kept <= self.offset() {
            return Ok(());
        }
        if first_kept > self.last_index() + 1 {
            return Err(StorageError::Unavailable(first_kept));
        }
        let drop = (first_kept - self.offset()) as usize;
        self.entries.drain(..drop);
        Ok(())
    }
}

impl LogStorage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            conf_state: self.snapshot.meta.conf_state.clone(),
        })
    }

    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if low < self.offset() {
            return Err(StorageError::Compacted(low));
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable(high - 1));
        }
        let start = (low - self.offset()) as usize;
        let end = (high - self.offset()) as usize;
        let mut total = 0u64;
        let mut out = Vec::with_capacity(end - start);
        for entry in &self.entries[start..end] {
            total += entry.size_bytes();
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.snapshot.meta.index {
            return Ok(self.snapshot.meta.term);
        }
        if index < self.offset() {
            return Err(StorageError::Compacted(index));
        }
        self.entries
            .get((index - self.offset()) as usize)
            .map(|entry| entry.term)
            .ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> u64 {
        self.offset()
    }

    fn last_index(&self) -> u64 {
        self.snapshot.meta.index + self.entries.len() as u64
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}
