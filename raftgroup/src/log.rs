//! The replica's view of its log: the host's persisted entries (through
//! [`LogStorage`]) plus the unstable suffix not yet handed out to persist.
//!
//! Invariants: `applied <= committed <= last_index()`; the unstable entries
//! are contiguous and start at `unstable_offset`; everything below
//! `unstable_offset` is in storage (or in the unstable snapshot).

use crate::error::{Error, Result, StorageError};
use crate::storage::{limit_size, LogStorage};
use crate::types::{Entry, Snapshot};

/// Where an append from the leader stands against the local log.
pub(crate) enum AppendOutcome {
    /// The log now matches the leader's up to `last_new_index`.
    Matched { last_new_index: u64 },
    /// `prev_index`/`prev_term` did not match.
    Rejected,
    /// The append would replace committed entries: a misbehaving leader.
    ConflictsWithCommitted,
}

pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    /// A snapshot received from the leader, not yet handed out to persist.
    unstable_snapshot: Option<Snapshot>,
    /// Entries not yet handed out to persist; `unstable[i].index == unstable_offset + i`.
    unstable: Vec<Entry>,
    unstable_offset: u64,
    /// Highest index known committed.
    pub(crate) committed: u64,
    /// Highest index the host has applied (handed out and advanced).
    pub(crate) applied: u64,
}

impl<S: LogStorage> RaftLog<S> {
    pub(crate) fn new(storage: S, committed: u64, applied: u64) -> Result<Self> {
        let first = storage.first_index();
        let last = storage.last_index();
        let snapshot_index = first - 1;
        if committed > last {
            return Err(Error::Storage(StorageError::Other(format!(
                "hard state commit {committed} is beyond the last index {last}"
            ))));
        }
        let committed = committed.max(snapshot_index);
        let applied = applied.clamp(snapshot_index, committed);
        Ok(RaftLog {
            storage,
            unstable_snapshot: None,
            unstable: Vec::new(),
            unstable_offset: last + 1,
            committed,
            applied,
        })
    }

    pub(crate) fn first_index(&self) -> u64 {
        match &self.unstable_snapshot {
            Some(snapshot) => snapshot.meta.index + 1,
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> u64 {
        if !self.unstable.is_empty() {
            return self.unstable_offset + self.unstable.len() as u64 - 1;
        }
        match &self.unstable_snapshot {
            Some(snapshot) => snapshot.meta.index,
            None => self.storage.last_index(),
        }
    }

    /// The highest index that is persisted (or handed out to persist in
    /// the `Ready` being handled): entries above it are still unstable.
    pub(crate) fn stable_index(&self) -> u64 {
        self.unstable_offset - 1
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.term(self.last_index()).unwrap_or(0)
    }

    /// The term of entry `index`; `Ok(0)` for index 0.
    pub(crate) fn term(&self, index: u64) -> std::result::Result<u64, StorageError> {
        if index == 0 {
            return Ok(0);
        }
        if let Some(snapshot) = &self.unstable_snapshot {
            if index == snapshot.meta.index {
                return Ok(snapshot.meta.term);
            }
            if index < snapshot.meta.index {
                return Err(StorageError::Compacted(index));
            }
        }
        if index >= self.unstable_offset {
            return self
                .unstable
                .get((index - self.unstable_offset) as usize)
                .map(|entry| entry.term)
                .ok_or(StorageError::Unavailable(index));
        }
        if self.unstable_snapshot.is_some() {
            return Err(StorageError::Unavailable(index));
        }
        self.storage.term(index)
    }

    pub(crate) fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index).is_ok_and(|t| t == term)
    }

    /// Whether a candidate's log with this last entry is at least as
    /// up-to-date as ours (Raft paper, §5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Appends entries, truncating any unstable suffix they replace. Entries
    /// must start at or below `last_index() + 1` and above `committed`.
    pub(crate) fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let after = first.index;
        assert!(
            after > self.committed,
            "append at {after} would overwrite committed entries up to {}",
            self.committed
        );
        let unstable_end = self.unstable_offset + self.unstable.len() as u64;
        if after <= self.unstable_offset {
            // The new entries replace part of the persisted log too; they
            // are persisted from `after` on and overwrite what is there.
            self.unstable_offset = after;
            self.unstable.clear();
        } else if after < unstable_end {
            self.unstable
                .truncate((after - self.unstable_offset) as usize);
        }
        if self.unstable.is_empty() {
            self.unstable = entries;
        } else {
            self.unstable.extend(entries);
        }
    }

    /// Handles the entries of an append from the leader (Figure 2, receiver
    /// steps 2–5).
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        commit: u64,
        mut entries: Vec<Entry>,
    ) -> AppendOutcome {
        if !self.match_term(prev_index, prev_term) {
            return AppendOutcome::Rejected;
        }
        let last_new_index = prev_index + entries.len() as u64;
        let conflict = self.find_conflict(&entries);
        if conflict != 0 {
            if conflict <= self.committed {
                return AppendOutcome::ConflictsWithCommitted;
            }
            let skip = (conflict - entries[0].index) as usize;
            entries.drain(..skip);
            self.append(entries);
        }
        self.commit_to(commit.min(last_new_index));
        AppendOutcome::Matched { last_new_index }
    }

    /// The index of the first entry whose term differs from ours, or which
    /// is beyond our log; 0 when every entry is already present.
    fn find_conflict(&self, entries: &[Entry]) -> u64 {
        entries
            .iter()
            .find(|entry| !self.match_term(entry.index, entry.term))
            .map_or(0, |entry| entry.index)
    }

    /// The largest index at or below `index` whose term is at most `term`
    /// (the fast backtracking rule: everything above it certainly conflicts).
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Ok(t) if t > term => index -= 1,
                Ok(t) => return (index, t),
                Err(_) => return (index, 0),
            }
        }
    }

    pub(crate) fn commit_to(&mut self, commit: u64) {
        if commit > self.committed {
            debug_assert!(commit <= self.last_index());
            self.committed = commit;
        }
    }

    /// Entries `[low, last]` for an append message, bounded by `max_bytes`.
    pub(crate) fn entries_from(
        &self,
        low: u64,
        max_bytes: u64,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        let high = self.last_index() + 1;
        self.slice(low, high, max_bytes)
    }

    /// Entries `[low, high)` from storage and the unstable suffix.
    pub(crate) fn slice(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if low < self.first_index() {
            return Err(StorageError::Compacted(low));
        }
        let mut out = Vec::new();
        if low < self.unstable_offset {
            let stored_high = high.min(self.unstable_offset);
            out = self.storage.entries(low, stored_high, max_bytes)?;
            if (out.len() as u64) < stored_high - low {
                return Ok(out);
            }
        }
        if high > self.unstable_offset {
            let from = low.max(self.unstable_offset) - self.unstable_offset;
            let to = high - self.unstable_offset;
            let Some(tail) = self.unstable.get(from as usize..to as usize) else {
                return Err(StorageError::Unavailable(high - 1));
            };
            out.extend_from_slice(tail);
            limit_size(&mut out, max_bytes);
        }
        Ok(out)
    }

    /// Whether committed entries are ready to apply.
    pub(crate) fn has_committed_to_apply(&self) -> bool {
        self.applied < self.apply_bound() && self.unstable_snapshot.is_none()
    }

    /// Entries are applied only once committed AND persisted locally.
    fn apply_bound(&self) -> u64 {
        self.committed.min(self.stable_index())
    }

    pub(crate) fn committed_to_apply(
        &self,
        max_bytes: u64,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        if !self.has_committed_to_apply() {
            return Ok(Vec::new());
        }
        self.slice(self.applied + 1, self.apply_bound() + 1, max_bytes)
    }

    pub(crate) fn unstable_entries(&self) -> &[Entry] {
        &self.unstable
    }

    pub(crate) fn unstable_snapshot(&self) -> Option<&Snapshot> {
        self.unstable_snapshot.as_ref()
    }

    /// Hands the unstable entries to the host to persist. From here on they
    /// are read back from storage, which has them once `advance` is called.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        self.unstable_offset += self.unstable.len() as u64;
        std::mem::take(&mut self.unstable)
    }

    /// The host persisted and applied the unstable snapshot.
    pub(crate) fn snapshot_persisted(&mut self) {
        if let Some(snapshot) = self.unstable_snapshot.take() {
            self.applied = self.applied.max(snapshot.meta.index);
        }
    }

    pub(crate) fn applied_to(&mut self, index: u64) {
        debug_assert!(index <= self.committed);
        self.applied = self.applied.max(index);
    }

    /// Replaces the log with a snapshot from the leader.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        self.committed = snapshot.meta.index;
        self.unstable_offset = snapshot.meta.index + 1;
        self.unstable.clear();
        self.unstable_snapshot = Some(snapshot);
    }
}
