//! Membership changes by joint consensus and leadership transfer.

use super::Raft;
use crate::confchange;
use crate::error::{Error, Result};
use crate::storage::LogStorage;
use crate::types::{ConfChange, ConfState, Entry, EntryKind, MessageBody, NodeId, Role, NO_NODE};

impl<S: LogStorage> Raft<S> {
    /// Proposes a membership change. At most one may be pending: proposed
    /// and not yet applied.
    pub(crate) fn propose_conf_change(&mut self, change: &ConfChange) -> Result<super::Proposed> {
        if self.role != Role::Leader {
            return match self.lead {
                NO_NODE => Err(Error::NoLeader),
                lead => Err(Error::NotLeader { leader: Some(lead) }),
            };
        }
        if self.pending_conf_index > self.log.applied {
            return Err(Error::ConfChangePending);
        }
        // Validate against the configuration in force, which is also the one
        // the change will be applied to: nothing else can be pending.
        confchange::apply(self.tracker.conf_state(), change)?;
        let entry = Entry {
            term: 0,
            index: 0,
            kind: EntryKind::ConfChange,
            data: change.encode().into(),
        };
        self.append_proposal(vec![entry])
    }

    /// Applies a committed membership change; the host calls this when it
    /// applies the `ConfChange` entry. An invalid change leaves the
    /// configuration as it is, on every replica alike.
    pub(crate) fn apply_conf_change(&mut self, change: &ConfChange) -> Result<ConfState> {
        let next = confchange::apply(self.tracker.conf_state(), change)?;
        self.tracker
            .set_conf(next.clone(), self.log.last_index() + 1);
        if self.role != Role::Leader {
            return Ok(next);
        }
        if !self.tracker.is_voter(self.id) {
            self.hand_off_leadership();
            return Ok(next);
        }
        if self.lead_transferee != NO_NODE && !self.tracker.is_voter(self.lead_transferee) {
            self.lead_transferee = NO_NODE;
        }
        // The quorum changed: the commit index may move, new members need
        // entries, and reads may be confirmed by the new quorum.
        self.maybe_commit();
        self.broadcast_pending = true;
        self.on_round_acked();
        Ok(next)
    }

    /// A leader that is no longer a voter (removed, or demoted to learner)
    /// hands leadership to the voter with the highest match instead of just
    /// stepping down: the remaining voters may not know yet that the change
    /// committed, and while they still count this node in the outgoing half
    /// of a joint configuration they need its vote, which it refuses to any
    /// candidate that lacks its uncommitted tail. The transfer first brings
    /// the target up to date. Until it completes this node keeps leading
    /// without counting itself; `tick_leader` retries every election
    /// timeout.
    pub(crate) fn hand_off_leadership(&mut self) {
        let id = self.id;
        let target = self
            .tracker
            .voter_ids()
            .into_iter()
            .filter(|&voter| voter != id)
            .max_by_key(|&voter| self.tracker.get(voter).map_or(0, |p| p.matched));
        let Some(target) = target else {
            let term = self.term;
            self.become_follower(term, NO_NODE);
            return;
        };
        self.lead_transferee = NO_NODE;
        // Cannot fail: this node leads and `target` is a voter.
        let _ = self.transfer_leader(target);
    }

    /// Proposes the change that leaves a joint configuration entered with
    /// `auto_leave`, once the entering change has been applied.
    pub(crate) fn maybe_auto_leave(&mut self) {
        let conf = self.tracker.conf_state();
        if self.role == Role::Leader
            && conf.auto_leave
            && conf.is_joint()
            && self.pending_conf_index <= self.log.applied
        {
            // Cannot fail on a leader without a pending change, except for a
            // transfer in progress, in which case the next advance retries.
            let _ = self.propose_conf_change(&ConfChange::leave_joint());
        }
    }

    /// Hands leadership to `target`: brings it up to date, then tells it to
    /// campaign at once. Proposals are refused meanwhile; the transfer is
    /// abandoned after an election timeout.
    pub(crate) fn transfer_leader(&mut self, target: NodeId) -> Result<()> {
        match self.role {
            Role::Leader => {}
            Role::Follower if self.lead != NO_NODE => {
                let lead = self.lead;
                self.send(lead, 0, MessageBody::TransferLeader { target });
                return Ok(());
            }
            _ => return Err(Error::NoLeader),
        }
        if target == self.id {
            return Ok(());
        }
        if !self.tracker.is_voter(target) {
            return Err(Error::NotMember(target));
        }
        if self.lead_transferee == target {
            return Ok(());
        }
        self.wake();
        self.lead_transferee = target;
        self.election_elapsed = 0;
        let caught_up = self
            .tracker
            .get(target)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(target, self.term, MessageBody::TimeoutNow);
        } else {
            self.send_append(target, true);
        }
        Ok(())
    }
}
