//! The leader: proposals, replication with per-follower flow control,
//! commitment (Raft paper §5.3, §5.4.2) and check-quorum.

use super::{Proposed, Raft};
use crate::error::{Error, Result, StorageError};
use crate::storage::LogStorage;
use crate::tracker::ProgressState;
use crate::types::{Entry, EntryKind, Message, MessageBody, NodeId, Role, NO_NODE};

impl<S: LogStorage> Raft<S> {
    pub(crate) fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.lead = self.id;
        self.role = Role::Leader;
        let id = self.id;
        let stable = self.log.stable_index();
        if let Some(own) = self.tracker.get_mut(id) {
            own.matched = stable;
            own.become_replicate();
        }
        // Any membership change still in the log may be uncommitted; no new
        // one may be proposed until everything up to here is applied.
        self.pending_conf_index = self.log.last_index();
        // An entry of the new term: committing it commits every earlier
        // entry (Raft paper §5.4.2, the rule Figure 8 illustrates).
        let entry = Entry {
            term,
            index: self.log.last_index() + 1,
            kind: EntryKind::Normal,
            data: bytes::Bytes::new(),
        };
        self.log.append(vec![entry]);
        self.broadcast_pending = true;
    }

    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.tracker.quorum_active(self.id) {
                let term = self.term;
                self.become_follower(term, NO_NODE);
                return;
            }
            if self.lead_transferee != NO_NODE {
                // The target did not take over within an election timeout.
                self.lead_transferee = NO_NODE;
            }
            if !self.tracker.is_voter(self.id) {
                self.hand_off_leadership();
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat(false);
        }
    }

    pub(crate) fn append_proposal(&mut self, mut entries: Vec<Entry>) -> Result<Proposed> {
        if self.lead_transferee != NO_NODE {
            return Err(Error::TransferInProgress {
                target: self.lead_transferee,
            });
        }
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let limit = self.cfg.max_uncommitted_bytes;
        if limit > 0 && self.uncommitted_bytes > 0 && self.uncommitted_bytes + bytes > limit {
            return Err(Error::UncommittedLimit);
        }
        let first_index = self.log.last_index() + 1;
        for (offset, entry) in entries.iter_mut().enumerate() {
            entry.term = self.term;
            entry.index = first_index + offset as u64;
            if entry.kind == EntryKind::ConfChange {
                self.pending_conf_index = entry.index;
            }
        }
        let last_index = first_index + entries.len() as u64 - 1;
        self.log.append(entries);
        self.uncommitted_bytes += bytes;
        self.broadcast_pending = true;
        self.wake();
        Ok(Proposed::Appended {
            first_index,
            last_index,
            term: self.term,
        })
    }

    /// Sends appends to every follower that can take them. Called when a
    /// `Ready` is built, so that all proposals and commit advances since the
    /// last `Ready` share one message per follower.
    pub(crate) fn flush_broadcast(&mut self) {
        if !self.broadcast_pending || self.role != Role::Leader {
            return;
        }
        self.broadcast_pending = false;
        let peers: Vec<NodeId> = self.tracker.members().filter(|&id| id != self.id).collect();
        for peer in peers {
            self.send_append(peer, true);
        }
    }

    /// Sends what `to` is missing, if its flow control allows. With
    /// `allow_empty` an append without entries still carries the commit
    /// index. Returns whether a message was sent.
    pub(crate) fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let Some(progress) = self.tracker.get(to) else {
            return false;
        };
        if progress.is_paused() {
            return false;
        }
        let next = progress.next;
        let last_index = self.log.last_index();
        if next > last_index && !allow_empty {
            return false;
        }
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let entries = self.log.entries_from(next, self.cfg.max_size_per_msg);
        let (prev_term, entries) = match (prev_term, entries) {
            (Ok(term), Ok(entries)) => (term, entries),
            (Err(StorageError::Compacted(_)), _) | (_, Err(StorageError::Compacted(_))) => {
                return self.send_snapshot(to);
            }
            // Storage could not serve the entries now; try again later.
            _ => return false,
        };
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let last_sent = entries.last().map_or(prev_index, |e| e.index);
        let sent_entries = !entries.is_empty();
        if let Some(progress) = self.tracker.get_mut(to) {
            if sent_entries || progress.state == ProgressState::Probe {
                progress.sent_entries(last_sent, bytes);
            }
        }
        let body = MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit: self.log.committed,
        };
        self.send(to, self.term, body);
        true
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let snapshot = match self.log.storage.snapshot() {
            Ok(snapshot) if !snapshot.is_empty() => snapshot,
            // Not ready, or nothing to send: the next heartbeat retries.
            _ => return false,
        };
        if let Some(progress) = self.tracker.get_mut(to) {
            progress.become_snapshot(snapshot.meta.index);
        }
        let body = MessageBody::InstallSnapshot {
            snapshot: Box::new(snapshot),
        };
        self.send(to, self.term, body);
        true
    }

    /// Sends a heartbeat to every follower, starting a new round that
    /// confirms pending reads and renews the lease.
    pub(crate) fn broadcast_heartbeat(&mut self, quiesce: bool) {
        let lease_tick =
            (self.cfg.read_mode == crate::config::ReadMode::Lease).then_some(self.ticks);
        let round = self.reads.start_round(lease_tick);
        let id = self.id;
        let committed = self.log.committed;
        let mut beats = Vec::new();
        for (member, progress) in self.tracker.iter_mut() {
            if member == id {
                progress.acked_round = round;
                continue;
            }
            beats.push((member, progress.matched.min(committed)));
        }
        for (member, commit) in beats {
            let body = MessageBody::Heartbeat {
                commit,
                round,
                quiesce,
            };
            self.send(member, self.term, body);
        }
    }

    /// Advances the commit index to what a quorum has, but only through an
    /// entry of the current term (Raft paper §5.4.2). Returns whether it
    /// advanced.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let index = self.tracker.committed_index();
        if index <= self.log.committed || index == u64::MAX {
            return false;
        }
        if !self.log.term(index).is_ok_and(|t| t == self.term) {
            return false;
        }
        let first_commit_in_term = !self.committed_in_current_term();
        self.log.commit_to(index);
        self.broadcast_pending = true;
        if first_commit_in_term {
            self.release_reads_held_for_commit();
        }
        true
    }

    /// The leader's own entries are durable up to the stable index.
    pub(crate) fn self_persisted(&mut self) {
        let stable = self.log.stable_index();
        let id = self.id;
        let updated = self
            .tracker
            .get_mut(id)
            .is_some_and(|own| own.maybe_update(stable));
        if updated {
            self.maybe_commit();
        }
    }

    pub(crate) fn step_leader(&mut self, m: Message) {
        match m.body {
            MessageBody::Propose { entries } => {
                // A forwarded proposal; if refused, the follower's caller
                // times out and retries.
                let _ = self.append_proposal(entries);
            }
            MessageBody::ReadIndex { request } => self.request_read(m.from, request),
            MessageBody::TransferLeader { target } => {
                let _ = self.transfer_leader(target);
            }
            MessageBody::AppendResponse {
                index,
                reject,
                hint_index,
                hint_term,
            } => self.handle_append_response(m.from, index, reject, hint_index, hint_term),
            MessageBody::HeartbeatResponse { round } => {
                let Some(progress) = self.tracker.get_mut(m.from) else {
                    return;
                };
                progress.recent_active = true;
                progress.probe_sent = false;
                if progress.state == ProgressState::Replicate && progress.inflights.is_full() {
                    // The follower is alive; if appends were lost, let one
                    // more through so the gap shows up as a rejection.
                    progress.inflights.free_first();
                }
                progress.acked_round = progress.acked_round.max(round);
                if progress.matched < self.log.last_index() {
                    // Even an empty append helps: it probes at `next - 1`,
                    // so an append lost in flight is found and resent.
                    self.send_append(m.from, true);
                }
                self.on_round_acked();
            }
            _ => {}
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        index: u64,
        reject: bool,
        hint_index: u64,
        hint_term: u64,
    ) {
        let probe_from = if reject && hint_term > 0 {
            self.log.find_conflict_by_term(hint_index, hint_term).0
        } else {
            hint_index
        };
        let last_index = self.log.last_index();
        let Some(progress) = self.tracker.get_mut(from) else {
            return;
        };
        progress.recent_active = true;
        if reject {
            if progress.maybe_decrease_to(index, probe_from) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        if !progress.maybe_update(index) {
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot if progress.matched >= progress.pending_snapshot => {
                progress.become_probe();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => progress.inflights.free_to(index),
        }
        let matched = progress.matched;
        self.maybe_commit();
        // Keep the pipeline full while there is more to send.
        while self.send_append(from, false) {}
        if from == self.lead_transferee && matched == last_index {
            self.send(from, self.term, MessageBody::TimeoutNow);
        }
    }

    /// The host reports whether the snapshot sent to `to` was delivered.
    pub(crate) fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.tracker.get_mut(to) else {
            return;
        };
        if progress.state != ProgressState::Snapshot {
            return;
        }
        if !delivered {
            progress.pending_snapshot = 0;
        }
        progress.become_probe();
        // Wait for the follower's append response (or a heartbeat) before
        // probing again.
        progress.probe_sent = delivered;
    }

    /// The host could not reach `to`: stop streaming optimistically.
    pub(crate) fn report_unreachable(&mut self, to: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(progress) = self.tracker.get_mut(to) {
            if progress.state == ProgressState::Replicate {
                progress.become_probe();
            }
        }
    }

    /// Committed entries were handed out: they no longer count against the
    /// uncommitted limit.
    pub(crate) fn reduce_uncommitted(&mut self, entries: &[Entry]) {
        if self.role != Role::Leader {
            return;
        }
        let bytes: u64 = entries
            .iter()
            .filter(|e| e.term == self.term)
            .map(Entry::size_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(bytes);
    }
}
