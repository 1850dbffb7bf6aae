//! The checks run after every event on the node it touched, and the
//! periodic full comparison of every log with the oracle.

use flotilla_raftgroup::{LogStorage, NodeId, Role};

use super::host::Slot;
use super::oracle::{violation, Checked, Property};
use super::world::World;

impl World {
    /// Checks node `id` after an event touched it: its commit index only
    /// grows, its committed prefix is the committed history, and a leader
    /// is alone in its term and holds everything committed before it.
    pub fn after_event(&mut self, id: NodeId) -> Checked {
        let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
            return Ok(());
        };
        let raw = &host.raw;
        let commit = raw.committed();
        if commit < host.last_commit {
            return Err(violation(
                Property::CommitMonotonic,
                format!(
                    "node {id} commit went from {} to {commit}",
                    host.last_commit
                ),
            ));
        }
        host.last_commit = commit;
        self.oracle.note_commit(commit);
        // Between ready() and advance() the RawNode's view of its log is
        // the storage, which lags behind the Ready being persisted.
        let settled = host.busy.is_none();
        if settled && (raw.applied() > commit || commit > raw.last_index()) {
            return Err(violation(
                Property::ReadyContract,
                format!(
                    "node {id} breaks applied <= committed <= last: {} <= {commit} <= {}",
                    raw.applied(),
                    raw.last_index()
                ),
            ));
        }
        let storage_error = |error| {
            violation(
                Property::ReadyContract,
                format!("node {id}: storage cannot serve its committed log: {error}"),
            )
        };
        // While busy, the storage still holds entries the pending Ready
        // replaces; the prefix is checked once it is persisted.
        let storage = raw.storage();
        let upto = commit.min(storage.last_index());
        if settled && upto > host.checked_commit {
            let snapshot_index = storage.first_index() - 1;
            let mut from = host.checked_commit + 1;
            if from <= snapshot_index {
                let term = storage.term(snapshot_index).map_err(storage_error)?;
                self.oracle
                    .check_committed_point(id, snapshot_index, term)?;
                from = snapshot_index + 1;
            }
            if from <= upto {
                let entries = storage
                    .entries(from, upto + 1, u64::MAX)
                    .map_err(storage_error)?;
                for entry in &entries {
                    self.oracle.observe_committed(id, raw.term(), entry)?;
                }
            }
            host.checked_commit = upto;
        }
        if raw.role() == Role::Leader {
            let term = raw.term();
            self.oracle.observe_leader(term, id)?;
            if settled && self.completeness_checked.insert(term) {
                self.oracle
                    .check_leader_completeness(id, term, raw.first_index(), |index| {
                        raw.log_term(index)
                    })?;
            }
        }
        Ok(())
    }

    /// Compares the whole persisted log and the state machine of every
    /// running node that is not in the middle of persisting with the oracle.
    pub fn full_scan(&mut self) -> Checked {
        for id in self.idle_ids() {
            let Some(host) = self.slots.get(&id).and_then(Slot::idle_host) else {
                continue;
            };
            let storage_error = |error| {
                violation(
                    Property::ReadyContract,
                    format!("node {id}: storage cannot serve its own log: {error}"),
                )
            };
            let storage = host.raw.storage();
            let (first, last) = (storage.first_index(), storage.last_index());
            if first <= last {
                let prev_term = storage.term(first - 1).map_err(storage_error)?;
                let entries = storage
                    .entries(first, last + 1, u64::MAX)
                    .map_err(storage_error)?;
                self.oracle
                    .observe_entries(first - 1, prev_term, &entries)?;
                let commit = host.raw.committed().min(last);
                let term = host.raw.term();
                for entry in entries.iter().take_while(|entry| entry.index <= commit) {
                    self.oracle.observe_committed(id, term, entry)?;
                }
            }
            self.oracle.check_state(id, &host.sm)?;
        }
        Ok(())
    }
}
