//! Quiescence: an idle group stops ticking so that thousands of idle groups
//! cost nothing. Only the host decides when (it knows the group is idle);
//! Raft decides whether it is safe: every follower has every entry, all of
//! it is committed and applied, and nothing is in flight.

use super::Raft;
use crate::storage::LogStorage;
use crate::types::{Role, NO_NODE};

impl<S: LogStorage> Raft<S> {
    pub(crate) fn can_quiesce(&self) -> bool {
        let last = self.log.last_index();
        self.role == Role::Leader
            && !self.quiesced
            && self.log.unstable_entries().is_empty()
            && self.log.stable_index() == last
            && self.log.committed == last
            && self.log.applied == last
            && self.committed_in_current_term()
            && self.lead_transferee == NO_NODE
            && self.reads.is_empty()
            && self.reads_awaiting_apply.is_empty()
            && !self.broadcast_pending
            && self.pending_conf_index <= self.log.applied
            && !self.tracker.conf_state().is_joint()
            && self.tracker.iter().all(|(_, p)| p.matched == last)
    }

    /// Quiesces an idle leader and asks its followers to do the same.
    /// Returns false (and changes nothing) unless `can_quiesce`.
    pub(crate) fn quiesce(&mut self) -> bool {
        if !self.can_quiesce() {
            return false;
        }
        self.broadcast_heartbeat(true);
        // The lease ends here: a quiesced follower no longer refuses votes.
        self.reads.clear();
        self.quiesced = true;
        self.shrink_buffers();
        true
    }

    /// An idle group should cost as little memory as possible: buffers that
    /// grew while it was busy (inflight windows, read queues) are released.
    pub(crate) fn shrink_buffers(&mut self) {
        self.reads.shrink();
        // Reads confirmed and waiting for apply stay: they are released at
        // the next `Ready`, quiesced or not.
        if self.reads_awaiting_apply.is_empty() {
            self.reads_awaiting_apply = Vec::new();
        }
        for (_, progress) in self.tracker.iter_mut() {
            progress.inflights.shrink();
        }
    }

    /// A follower quiesces only when it has exactly the leader's log.
    pub(crate) fn can_quiesce_as_follower(&self, leader_commit: u64) -> bool {
        self.role == Role::Follower
            && self.log.committed == leader_commit
            && self.log.last_index() == leader_commit
            && self.log.stable_index() == leader_commit
    }

    /// Resumes ticking. A leader also gives every member a fresh
    /// check-quorum period and heartbeats at once so followers wake too.
    pub(crate) fn wake(&mut self) {
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        if self.role == Role::Leader {
            for (_, progress) in self.tracker.iter_mut() {
                progress.recent_active = true;
            }
            self.broadcast_heartbeat(false);
        }
    }

    /// The host learned that the leader's node is down (from node-level
    /// liveness): forget the leader and campaign within a few ticks instead
    /// of a whole election timeout, which a quiesced follower would never
    /// reach anyway. The delay is random (up to half an election timeout) so
    /// that the followers, all told at the same moment, do not all campaign
    /// in the same tick and split the vote.
    pub(crate) fn leader_unreachable(&mut self) {
        let delay = self.random_below(self.cfg.election_ticks / 2 + 1);
        self.leader_unreachable_in(delay);
    }

    /// As `leader_unreachable`, with the delay chosen by the host: a host
    /// that knows which replicas survive can stagger them by rank so that
    /// exactly one campaigns first.
    pub(crate) fn leader_unreachable_in(&mut self, delay_ticks: u64) {
        if self.role == Role::Leader {
            return;
        }
        self.wake();
        self.lead = NO_NODE;
        let timeout = self.randomized_election_timeout;
        self.election_elapsed = timeout.saturating_sub(delay_ticks.min(timeout - 1) + 1);
    }
}
