//! Membership changes and leadership transfers requested through the node:
//! the steps the placement layer relies on.
//!
//! Adding a replica never adds a voter straight away: the node first joins
//! as a learner (it receives the log, by snapshot when it has nothing, but
//! counts toward no quorum), and only once it has caught up is it promoted
//! to voter through a joint configuration. A voter added empty would weaken
//! the quorum — with three voters and one slow new one, a single further
//! failure could stall the group — which is why CockroachDB and TiKV add
//! learners first too. Removal goes through a joint configuration as well,
//! so the leader may remove itself (Raft hands its leadership off).

use flotilla_raftgroup::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfState, Error as RaftError, ProgressState,
    Role, NO_NODE,
};
use flotilla_transport::{GroupId, NodeId};

use super::{is_member, NodeError, Pending, Replica, RequestId, Response};

/// A learner within this many entries of the leader's commit index, and
/// receiving entries in a pipeline, counts as caught up and is promoted.
const LEARNER_CAUGHT_UP_LAG: u64 = 64;

/// A change to a range's replica set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaChange {
    /// Add a replica on this node: learner first, voter once caught up.
    Add(NodeId),
    /// Remove this node's replica.
    Remove(NodeId),
}

impl ReplicaChange {
    /// Refuses a change that can never succeed.
    pub(super) fn validate(&self, group: GroupId, conf: &ConfState) -> Result<(), NodeError> {
        match *self {
            ReplicaChange::Add(NO_NODE) | ReplicaChange::Remove(NO_NODE) => Err(
                NodeError::InvalidArgument(format!("group {group}: node id 0 is not a node")),
            ),
            ReplicaChange::Remove(node) if conf.voters == [node] => {
                Err(NodeError::InvalidArgument(format!(
                    "group {group}: node {node} is the only voter; add another before removing it"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A request that completes when the group reaches a goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AdminOp {
    Change(ReplicaChange),
    Transfer(NodeId),
}

enum Step {
    Done,
    Wait,
    Fail(NodeError),
}

/// Moves every admin request of `replica` one step toward its goal, and
/// completes those that reached it (or cannot).
pub(super) fn drive(
    group: GroupId,
    replica: &mut Replica,
    completions: &mut Vec<(RequestId, Result<crate::node::Response, NodeError>)>,
) {
    let ops: Vec<(RequestId, AdminOp)> = replica
        .pending
        .iter()
        .filter_map(|(&id, p)| match p {
            Pending::Admin { op, .. } => Some((id, *op)),
            _ => None,
        })
        .collect();
    for (id, op) in ops {
        let step = match op {
            AdminOp::Transfer(target) if replica.raft.leader() == target => Step::Done,
            AdminOp::Transfer(_) => Step::Wait,
            AdminOp::Change(change) => step_change(group, replica, change),
        };
        let result = match step {
            Step::Wait => continue,
            Step::Done => Ok(Response::Done),
            Step::Fail(error) => Err(error),
        };
        replica.pending.remove(&id);
        completions.push((id, result));
    }
}

fn not_leader(group: GroupId, replica: &Replica) -> NodeError {
    let leader = replica.raft.leader();
    NodeError::NotLeader {
        group,
        leader: (leader != NO_NODE).then_some(leader),
    }
}

fn step_change(group: GroupId, replica: &mut Replica, change: ReplicaChange) -> Step {
    let conf = replica.raft.conf_state();
    let single = match change {
        ReplicaChange::Add(node) => {
            if !conf.is_joint() && conf.voters.contains(&node) {
                return Step::Done;
            }
            if conf.is_joint() {
                // The leader leaves the joint configuration by itself.
                return Step::Wait;
            }
            if conf.learners.contains(&node) {
                if !caught_up(replica, node) {
                    return Step::Wait;
                }
                ConfChangeSingle {
                    kind: ConfChangeKind::AddVoter,
                    node,
                }
            } else {
                ConfChangeSingle {
                    kind: ConfChangeKind::AddLearner,
                    node,
                }
            }
        }
        ReplicaChange::Remove(node) => {
            if !is_member(conf, node) {
                return Step::Done;
            }
            if conf.is_joint() {
                return Step::Wait;
            }
            ConfChangeSingle {
                kind: ConfChangeKind::Remove,
                node,
            }
        }
    };
    if replica.raft.role() != Role::Leader {
        return Step::Fail(not_leader(group, replica));
    }
    let proposal = ConfChange {
        changes: vec![single],
        auto_leave: true,
    };
    match replica.raft.propose_conf_change(&proposal) {
        Ok(_) => {
            metrics::counter!("flotilla_conf_changes_proposed_total").increment(1);
            Step::Wait
        }
        // One change at a time: ours (or another) is on its way.
        Err(RaftError::ConfChangePending) => Step::Wait,
        Err(RaftError::NoLeader | RaftError::NotLeader { .. }) => {
            Step::Fail(not_leader(group, replica))
        }
        Err(error) => Step::Fail(NodeError::Refused(error.to_string())),
    }
}

/// Whether learner `node` has (nearly) everything the leader committed.
fn caught_up(replica: &Replica, node: NodeId) -> bool {
    let committed = replica.raft.committed();
    replica.raft.progress().iter().any(|p| {
        p.node == node
            && p.state == ProgressState::Replicate
            && p.matched + LEARNER_CAUGHT_UP_LAG >= committed
    })
}
