//! The leader's bookkeeping: the configuration (voters, learners, joint
//! halves), each member's [`Progress`], and votes of an election.

mod inflights;
mod progress;

pub(crate) use progress::Progress;
pub use progress::ProgressState;

use crate::quorum::{self, VoteResult};
use crate::types::{ConfState, NodeId};

#[derive(Debug)]
pub(crate) struct ProgressTracker {
    conf: ConfState,
    /// Every member of either configuration, learners included, sorted by id.
    progress: Vec<(NodeId, Progress)>,
    votes: Vec<(NodeId, bool)>,
    scratch: Vec<u64>,
    max_inflight_msgs: usize,
    max_inflight_bytes: u64,
}

impl ProgressTracker {
    pub(crate) fn new(max_inflight_msgs: usize, max_inflight_bytes: u64) -> Self {
        ProgressTracker {
            conf: ConfState::default(),
            progress: Vec::new(),
            votes: Vec::new(),
            scratch: Vec::new(),
            max_inflight_msgs,
            max_inflight_bytes,
        }
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// Switches to a new configuration, keeping the progress of members that
    /// stay and starting new members at `next_index`.
    pub(crate) fn set_conf(&mut self, conf: ConfState, next_index: u64) {
        let mut members: Vec<NodeId> = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners)
            .chain(&conf.learners_next)
            .copied()
            .collect();
        members.sort_unstable();
        members.dedup();
        let mut old = std::mem::take(&mut self.progress);
        self.progress = members
            .into_iter()
            .map(|id| {
                let kept = old
                    .iter()
                    .position(|(old_id, _)| *old_id == id)
                    .map(|at| old.swap_remove(at).1);
                let progress = kept.unwrap_or_else(|| {
                    Progress::new(next_index, self.max_inflight_msgs, self.max_inflight_bytes)
                });
                (id, progress)
            })
            .collect();
        self.conf = conf;
    }

    pub(crate) fn is_voter(&self, id: NodeId) -> bool {
        self.conf.voters.binary_search(&id).is_ok()
            || self.conf.voters_outgoing.binary_search(&id).is_ok()
    }

    /// Whether `id` is the only voter (a single-node group).
    pub(crate) fn is_singleton(&self, id: NodeId) -> bool {
        self.conf.voters == [id] && self.conf.voters_outgoing.is_empty()
    }

    pub(crate) fn get(&self, id: NodeId) -> Option<&Progress> {
        self.progress
            .iter()
            .find(|(member, _)| *member == id)
            .map(|(_, progress)| progress)
    }

    pub(crate) fn get_mut(&mut self, id: NodeId) -> Option<&mut Progress> {
        self.progress
            .iter_mut()
            .find(|(member, _)| *member == id)
            .map(|(_, progress)| progress)
    }

    pub(crate) fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.progress.iter().map(|(id, _)| *id)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (NodeId, &mut Progress)> {
        self.progress
            .iter_mut()
            .map(|(id, progress)| (*id, progress))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (NodeId, &Progress)> {
        self.progress.iter().map(|(id, progress)| (*id, progress))
    }

    fn value_of(progress: &[(NodeId, Progress)], id: NodeId, f: impl Fn(&Progress) -> u64) -> u64 {
        progress
            .iter()
            .find(|(member, _)| *member == id)
            .map_or(0, |(_, p)| f(p))
    }

    /// The highest index a quorum has replicated.
    pub(crate) fn committed_index(&mut self) -> u64 {
        let progress = &self.progress;
        quorum::joint_index(
            &self.conf.voters,
            &self.conf.voters_outgoing,
            &mut self.scratch,
            |id| Self::value_of(progress, id, |p| p.matched),
        )
    }

    /// The highest heartbeat round a quorum has acknowledged.
    pub(crate) fn acked_round(&mut self) -> u64 {
        let progress = &self.progress;
        quorum::joint_index(
            &self.conf.voters,
            &self.conf.voters_outgoing,
            &mut self.scratch,
            |id| Self::value_of(progress, id, |p| p.acked_round),
        )
    }

    /// Whether a quorum was heard from since the last check; clears the
    /// marks of everyone but `self_id`.
    pub(crate) fn quorum_active(&mut self, self_id: NodeId) -> bool {
        let progress = &self.progress;
        let active = quorum::joint_vote(&self.conf.voters, &self.conf.voters_outgoing, |id| {
            Some(id == self_id || Self::value_of(progress, id, |p| p.recent_active as u64) == 1)
        }) == VoteResult::Won;
        for (id, progress) in &mut self.progress {
            progress.recent_active = *id == self_id;
        }
        active
    }

    pub(crate) fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records a vote (the first answer of each voter counts).
    pub(crate) fn record_vote(&mut self, id: NodeId, granted: bool) {
        if !self.votes.iter().any(|(voter, _)| *voter == id) {
            self.votes.push((id, granted));
        }
    }

    pub(crate) fn tally_votes(&self) -> VoteResult {
        let votes = &self.votes;
        quorum::joint_vote(&self.conf.voters, &self.conf.voters_outgoing, |id| {
            votes
                .iter()
                .find(|(voter, _)| *voter == id)
                .map(|(_, granted)| *granted)
        })
    }

    /// Voters of both halves, without duplicates.
    pub(crate) fn voter_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .conf
            .voters
            .iter()
            .chain(&self.conf.voters_outgoing)
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
