//! Majority and joint-majority arithmetic: which index a quorum has, and
//! whether an election is won. Pure functions over sorted voter lists.

use crate::types::NodeId;

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided yet: some voters have not answered.
    Pending,
    Lost,
    Won,
}

/// The largest index that a majority of `voters` has, where `index_of`
/// gives each voter's acknowledged index. An empty configuration returns
/// `u64::MAX` so that it never constrains a joint configuration.
pub(crate) fn majority_index(
    voters: &[NodeId],
    scratch: &mut Vec<u64>,
    mut index_of: impl FnMut(NodeId) -> u64,
) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    scratch.clear();
    scratch.extend(voters.iter().map(|&id| index_of(id)));
    scratch.sort_unstable_by(|a, b| b.cmp(a));
    scratch[voters.len() / 2]
}

/// The index both majorities of a joint configuration have.
pub(crate) fn joint_index(
    incoming: &[NodeId],
    outgoing: &[NodeId],
    scratch: &mut Vec<u64>,
    mut index_of: impl FnMut(NodeId) -> u64,
) -> u64 {
    let a = majority_index(incoming, scratch, &mut index_of);
    let b = majority_index(outgoing, scratch, &mut index_of);
    a.min(b)
}

/// Counts votes of one majority configuration. `vote_of` answers
/// `Some(granted)` for voters that replied.
pub(crate) fn majority_vote(
    voters: &[NodeId],
    mut vote_of: impl FnMut(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0usize, 0usize);
    for &id in voters {
        match vote_of(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Counts votes of a joint configuration: both halves must win.
pub(crate) fn joint_vote(
    incoming: &[NodeId],
    outgoing: &[NodeId],
    mut vote_of: impl FnMut(NodeId) -> Option<bool>,
) -> VoteResult {
    let a = majority_vote(incoming, &mut vote_of);
    let b = majority_vote(outgoing, &mut vote_of);
    match (a, b) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_index_is_the_median_from_the_top() {
        let mut scratch = Vec::new();
        let voters = [1, 2, 3, 4, 5];
        let acked = |id: NodeId| [0, 10, 9, 8, 2, 1][id as usize];
        assert_eq!(majority_index(&voters, &mut scratch, acked), 8);
        assert_eq!(majority_index(&[1, 2], &mut scratch, acked), 9);
        assert_eq!(majority_index(&[], &mut scratch, acked), u64::MAX);
    }

    #[test]
    fn joint_index_needs_both_majorities() {
        let mut scratch = Vec::new();
        let acked = |id: NodeId| [0, 10, 10, 10, 1, 1][id as usize];
        assert_eq!(joint_index(&[1, 2, 3], &[3, 4, 5], &mut scratch, acked), 1);
        assert_eq!(joint_index(&[1, 2, 3], &[], &mut scratch, acked), 10);
    }

    #[test]
    fn votes_are_won_lost_or_pending() {
        let votes = |id: NodeId| [None, Some(true), Some(false), None][id as usize];
        assert_eq!(majority_vote(&[1, 2, 3], votes), VoteResult::Pending);
        assert_eq!(majority_vote(&[1], votes), VoteResult::Won);
        assert_eq!(majority_vote(&[2], votes), VoteResult::Lost);
        assert_eq!(joint_vote(&[1], &[2, 3], votes), VoteResult::Lost);
        assert_eq!(joint_vote(&[1], &[1, 3], votes), VoteResult::Pending);
        assert_eq!(joint_vote(&[1], &[1], votes), VoteResult::Won);
    }
}
