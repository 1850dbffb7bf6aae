//! Validating and applying a membership change to a configuration. Every
//! non-empty change enters a joint configuration (old and new voters must
//! both agree on everything); the empty change leaves it (Raft thesis §4.3).

use crate::error::{Error, Result};
use crate::types::{ConfChange, ConfChangeKind, ConfState, NodeId, NO_NODE};

fn insert(set: &mut Vec<NodeId>, id: NodeId) {
    if let Err(at) = set.binary_search(&id) {
        set.insert(at, id);
    }
}

fn remove(set: &mut Vec<NodeId>, id: NodeId) {
    if let Ok(at) = set.binary_search(&id) {
        set.remove(at);
    }
}

/// The configuration that results from applying `change` to `current`, or
/// why the change is invalid.
pub fn apply(current: &ConfState, change: &ConfChange) -> Result<ConfState> {
    if change.is_leave_joint() {
        return leave_joint(current);
    }
    if current.is_joint() {
        return Err(Error::InvalidConfChange(
            "already in a joint configuration; leave it first".into(),
        ));
    }
    let mut seen: Vec<NodeId> = Vec::with_capacity(change.changes.len());
    let mut next = ConfState {
        voters: current.voters.clone(),
        voters_outgoing: current.voters.clone(),
        learners: current.learners.clone(),
        learners_next: Vec::new(),
        auto_leave: change.auto_leave,
    };
    for single in &change.changes {
        let node = single.node;
        if node == NO_NODE {
            return Err(Error::InvalidConfChange("node id 0 is reserved".into()));
        }
        if seen.contains(&node) {
            return Err(Error::InvalidConfChange(format!(
                "node {node} appears twice in one change"
            )));
        }
        seen.push(node);
        match single.kind {
            ConfChangeKind::AddVoter => {
                remove(&mut next.learners, node);
                insert(&mut next.voters, node);
            }
            ConfChangeKind::AddLearner => {
                remove(&mut next.voters, node);
                if next.voters_outgoing.binary_search(&node).is_ok() {
                    insert(&mut next.learners_next, node);
                } else {
                    insert(&mut next.learners, node);
                }
            }
            ConfChangeKind::Remove => {
                remove(&mut next.voters, node);
                remove(&mut next.learners, node);
            }
        }
    }
    if next.voters.is_empty() {
        return Err(Error::InvalidConfChange(
            "the change would leave no voters".into(),
        ));
    }
    Ok(next)
}

fn leave_joint(current: &ConfState) -> Result<ConfState> {
    if !current.is_joint() {
        return Err(Error::InvalidConfChange(
            "not in a joint configuration".into(),
        ));
    }
    let mut next = ConfState {
        voters: current.voters.clone(),
        voters_outgoing: Vec::new(),
        learners: current.learners.clone(),
        learners_next: Vec::new(),
        auto_leave: false,
    };
    for &node in &current.learners_next {
        insert(&mut next.learners, node);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfChangeSingle;

    fn change(kind: ConfChangeKind, node: NodeId) -> ConfChange {
        ConfChange {
            changes: vec![ConfChangeSingle { kind, node }],
            auto_leave: true,
        }
    }

    #[test]
    fn adding_a_voter_goes_through_a_joint_configuration() {
        let start = ConfState::with_voters([1, 2, 3]);
        let joint = apply(&start, &change(ConfChangeKind::AddVoter, 4)).unwrap();
        assert_eq!(joint.voters, vec![1, 2, 3, 4]);
        assert_eq!(joint.voters_outgoing, vec![1, 2, 3]);
        assert!(joint.is_joint());
        let done = apply(&joint, &ConfChange::leave_joint()).unwrap();
        assert_eq!(done, ConfState::with_voters([1, 2, 3, 4]));
    }

    #[test]
    fn demoting_a_voter_makes_it_a_learner_only_after_leaving() {
        let start = ConfState::with_voters([1, 2, 3]);
        let joint = apply(&start, &change(ConfChangeKind::AddLearner, 3)).unwrap();
        assert_eq!(joint.voters, vec![1, 2]);
        assert_eq!(joint.learners_next, vec![3]);
        assert!(joint.learners.is_empty());
        let done = apply(&joint, &ConfChange::leave_joint()).unwrap();
        assert_eq!(done.voters, vec![1, 2]);
        assert_eq!(done.learners, vec![3]);
    }

    #[test]
    fn invalid_changes_are_refused() {
        let start = ConfState::with_voters([1]);
        assert!(apply(&start, &change(ConfChangeKind::Remove, 1)).is_err());
        assert!(apply(&start, &ConfChange::leave_joint()).is_err());
        let joint = apply(&start, &change(ConfChangeKind::AddVoter, 2)).unwrap();
        assert!(apply(&joint, &change(ConfChangeKind::AddVoter, 3)).is_err());
        let twice = ConfChange {
            changes: vec![
                ConfChangeSingle {
                    kind: ConfChangeKind::AddVoter,
                    node: 2,
                },
                ConfChangeSingle {
                    kind: ConfChangeKind::Remove,
                    node: 2,
                },
            ],
            auto_leave: false,
        };
        assert!(apply(&start, &twice).is_err());
    }
}
