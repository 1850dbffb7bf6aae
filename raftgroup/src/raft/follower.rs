//! The follower: accepting appends, heartbeats and snapshots from the
//! leader, and forwarding what only the leader can do.

use super::{CampaignKind, Raft};
use crate::log::AppendOutcome;
use crate::storage::LogStorage;
use crate::types::{Message, MessageBody, ReadState};

impl<S: LogStorage> Raft<S> {
    pub(crate) fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. } => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_append(m);
            }
            MessageBody::Heartbeat { .. } => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_heartbeat(m);
            }
            MessageBody::InstallSnapshot { .. } => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_snapshot(m);
            }
            MessageBody::TimeoutNow => self.hup(CampaignKind::Transfer),
            MessageBody::ReadIndexResponse { request, index } => {
                self.reads_awaiting_apply.push(ReadState { request, index });
            }
            // Forwarded from another follower that thinks we lead: pass it on.
            MessageBody::Propose { .. }
            | MessageBody::ReadIndex { .. }
            | MessageBody::TransferLeader { .. }
                if self.lead != crate::types::NO_NODE && self.cfg.forward_proposals =>
            {
                let lead = self.lead;
                self.send(lead, 0, m.body);
            }
            _ => {}
        }
    }

    /// Figure 2, AppendEntries receiver.
    pub(crate) fn handle_append(&mut self, m: Message) {
        let MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } = m.body
        else {
            return;
        };
        let contiguous = entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == prev_index + 1 + i as u64 && e.term >= prev_term);
        if !contiguous {
            // Malformed: entries must follow `prev_index` without gaps.
            return;
        }
        if prev_index < self.log.committed {
            // Everything up to our commit index is known to match.
            let body = MessageBody::AppendResponse {
                index: self.log.committed,
                reject: false,
                hint_index: 0,
                hint_term: 0,
            };
            self.send(m.from, self.term, body);
            return;
        }
        match self
            .log
            .maybe_append(prev_index, prev_term, commit, entries)
        {
            AppendOutcome::Matched { last_new_index } => {
                let body = MessageBody::AppendResponse {
                    index: last_new_index,
                    reject: false,
                    hint_index: 0,
                    hint_term: 0,
                };
                self.send(m.from, self.term, body);
            }
            AppendOutcome::Rejected => {
                // Fast backtracking: name the last index whose term could
                // still match, so the leader skips whole terms at once.
                let probe = prev_index.min(self.log.last_index());
                let (hint_index, hint_term) = self.log.find_conflict_by_term(probe, prev_term);
                let body = MessageBody::AppendResponse {
                    index: prev_index,
                    reject: true,
                    hint_index,
                    hint_term,
                };
                self.send(m.from, self.term, body);
            }
            // Only a leader violating Raft sends this; never let it rewrite
            // committed entries.
            AppendOutcome::ConflictsWithCommitted => {}
        }
    }

    pub(crate) fn handle_heartbeat(&mut self, m: Message) {
        let MessageBody::Heartbeat {
            commit,
            round,
            quiesce,
        } = m.body
        else {
            return;
        };
        self.log.commit_to(commit.min(self.log.last_index()));
        if quiesce && self.can_quiesce_as_follower(commit) {
            // Nothing to answer: the leader went quiet and must stay so.
            self.quiesced = true;
            self.shrink_buffers();
            return;
        }
        self.send(m.from, self.term, MessageBody::HeartbeatResponse { round });
    }

    pub(crate) fn handle_snapshot(&mut self, m: Message) {
        let MessageBody::InstallSnapshot { snapshot } = m.body else {
            return;
        };
        let index = snapshot.meta.index;
        let restored = self.restore(*snapshot);
        let matched = if restored { index } else { self.log.committed };
        let body = MessageBody::AppendResponse {
            index: matched,
            reject: false,
            hint_index: 0,
            hint_term: 0,
        };
        self.send(m.from, self.term, body);
    }

    /// Installs a snapshot unless the log already covers it. Returns whether
    /// the log was replaced.
    fn restore(&mut self, snapshot: crate::types::Snapshot) -> bool {
        let meta = &snapshot.meta;
        if meta.index <= self.log.committed {
            return false;
        }
        if self.log.match_term(meta.index, meta.term) {
            // Our log has the snapshot's last entry: just commit up to it.
            self.log.commit_to(meta.index);
            return false;
        }
        let conf = meta.conf_state.clone();
        let next = meta.index + 1;
        self.log.restore(snapshot);
        self.tracker.set_conf(conf, next);
        true
    }
}
