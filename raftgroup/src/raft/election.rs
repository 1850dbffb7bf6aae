//! Elections: pre-vote, vote, and the candidate roles (Raft paper §5.2,
//! thesis §9.6 for pre-vote).

use super::{CampaignKind, Raft};
use crate::quorum::VoteResult;
use crate::storage::LogStorage;
use crate::types::{EntryKind, Message, MessageBody, Role, NO_NODE};

impl<S: LogStorage> Raft<S> {
    /// Starts an election unless this replica cannot win one or must not
    /// start one now.
    pub(crate) fn hup(&mut self, kind: CampaignKind) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        if self.has_unapplied_conf_change() {
            // The configuration it would campaign under is about to change.
            return;
        }
        let kind = if kind == CampaignKind::PreElection && !self.cfg.pre_vote {
            CampaignKind::Election
        } else {
            kind
        };
        self.campaign(kind);
    }

    fn has_unapplied_conf_change(&self) -> bool {
        if self.log.committed <= self.log.applied {
            return false;
        }
        let low = self.log.applied + 1;
        let high = self.log.committed.min(self.log.stable_index()) + 1;
        match self.log.slice(low, high, u64::MAX) {
            Ok(entries) => entries.iter().any(|e| e.kind == EntryKind::ConfChange),
            Err(_) => true,
        }
    }

    fn campaign(&mut self, kind: CampaignKind) {
        let (vote_term, pre_vote) = match kind {
            CampaignKind::PreElection => {
                self.become_pre_candidate();
                (self.term + 1, true)
            }
            CampaignKind::Election | CampaignKind::Transfer => {
                self.become_candidate();
                (self.term, false)
            }
        };
        self.tracker.record_vote(self.id, true);
        if self.tracker.tally_votes() == VoteResult::Won {
            // A single voter wins its own election at once.
            if pre_vote {
                self.campaign(CampaignKind::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        for voter in self.tracker.voter_ids() {
            if voter == self.id {
                continue;
            }
            let body = MessageBody::RequestVote {
                pre_vote,
                last_index,
                last_term,
                transfer: kind == CampaignKind::Transfer,
            };
            self.send(voter, vote_term, body);
        }
    }

    fn become_pre_candidate(&mut self) {
        // The term and vote stay: a pre-vote promises nothing.
        self.tracker.reset_votes();
        self.lead = NO_NODE;
        self.role = Role::PreCandidate;
        self.quiesced = false;
    }

    fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    /// Answers a (pre-)vote request (Raft paper §5.2 and §5.4.1: grant only
    /// to a candidate whose log is at least as up-to-date).
    pub(crate) fn handle_vote_request(&mut self, m: Message) {
        let MessageBody::RequestVote {
            pre_vote,
            last_index,
            last_term,
            ..
        } = m.body
        else {
            return;
        };
        let can_vote = self.vote == m.from
            || (self.vote == NO_NODE && self.lead == NO_NODE)
            || (pre_vote && m.term > self.term);
        if can_vote && self.log.is_up_to_date(last_index, last_term) {
            // A granted vote answers in the request's term: for a pre-vote
            // that is the term the candidate would move to.
            let body = self.vote_response(pre_vote, false);
            self.send(m.from, m.term, body);
            if !pre_vote {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            let body = self.vote_response(pre_vote, true);
            self.send(m.from, self.term, body);
        }
    }

    /// A vote answer with the voter's commit point attached.
    pub(crate) fn vote_response(&self, pre_vote: bool, reject: bool) -> MessageBody {
        let commit = self.log.committed;
        MessageBody::VoteResponse {
            pre_vote,
            reject,
            commit,
            commit_term: self.log.term(commit).unwrap_or(0),
        }
    }

    /// A voter's commit point: if our log has the same entry there, Log
    /// Matching says everything up to it is identical, so it is committed
    /// here too. This is what lets voters that missed the commit of a leader's
    /// self-removal apply it and elect among themselves, instead of waiting
    /// for the removed leader's vote, which it may rightly refuse (its log
    /// is longer) or never give (it crashed and restarts as a non-voter).
    pub(crate) fn learn_commit(&mut self, commit: u64, commit_term: u64) {
        if commit > self.log.committed && self.log.match_term(commit, commit_term) {
            self.log.commit_to(commit);
        }
    }

    pub(crate) fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. } => {
                self.become_follower(m.term, m.from);
                self.handle_append(m);
            }
            MessageBody::Heartbeat { .. } => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageBody::InstallSnapshot { .. } => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            MessageBody::VoteResponse {
                pre_vote,
                reject,
                commit,
                commit_term,
            } => {
                let _ = (commit, commit_term);
                if pre_vote != (self.role == Role::PreCandidate) {
                    return;
                }
                self.tracker.record_vote(m.from, !reject);
                match self.tracker.tally_votes() {
                    VoteResult::Won if pre_vote => self.campaign(CampaignKind::Election),
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, NO_NODE);
                    }
                    VoteResult::Pending => {}
                }
            }
            // A pre-candidate has not left the leader's term: a read the
            // leader confirmed in that term is still valid (its safety rests
            // on the leader's quorum, not on us). Dropping it would leave the
            // caller waiting for a timeout.
            MessageBody::ReadIndexResponse { request, index }
                if self.role == Role::PreCandidate =>
            {
                self.reads_awaiting_apply
                    .push(crate::types::ReadState { request, index });
            }
            // No leader to forward to: proposals and reads are dropped and
            // their callers time out.
            _ => {}
        }
    }
}
