//! Learners, joint-consensus membership changes and leadership transfer.

mod common;

use common::Cluster;
use flotilla_raftgroup::{
    ConfChange, ConfChangeKind, ConfChangeSingle, ConfState, Error, MemStorage, MessageBody, Role,
};

fn change(kind: ConfChangeKind, node: u64) -> ConfChange {
    ConfChange {
        changes: vec![ConfChangeSingle { kind, node }],
        auto_leave: true,
    }
}

fn propose_change(cluster: &mut Cluster, leader: u64, cc: &ConfChange) {
    cluster.node(leader).propose_conf_change(cc).unwrap();
    cluster.handle_ready(leader);
    cluster.settle();
    cluster.tick_all(3);
}

/// Learners receive the log but do not vote and do not count for commit.
#[test]
fn learners_replicate_but_neither_vote_nor_count() {
    let mut cluster = Cluster::with(&[1, 2], &[3], common::default_config);
    assert!(cluster.elect(1));
    cluster.propose(1, b"a");
    assert_eq!(cluster.applied[&3], vec![b"a".to_vec()]);
    // With voter 2 gone, the learner cannot make a quorum.
    cluster.isolate(2);
    cluster.node(1).propose(b"b".to_vec()).unwrap();
    cluster.handle_ready(1);
    cluster.settle();
    assert_eq!(cluster.applied[&1], vec![b"a".to_vec()]);
    // A learner never campaigns.
    for _ in 0..50 {
        cluster.tick(3);
    }
    assert_eq!(cluster.nodes[&3].role(), Role::Follower);
}

/// Adding a voter goes through a joint configuration and leaves it by
/// itself (auto-leave).
#[test]
fn add_voter_enters_and_leaves_a_joint_configuration() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    // A joining replica starts from the group's bootstrap configuration and
    // replays the log (or receives a snapshot) to learn what changed since.
    cluster.add_node(
        4,
        MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3])),
    );
    propose_change(&mut cluster, 1, &change(ConfChangeKind::AddVoter, 4));
    let conf = cluster.nodes[&1].conf_state().clone();
    assert_eq!(conf, ConfState::with_voters([1, 2, 3, 4]));
    assert_eq!(cluster.nodes[&4].conf_state(), &conf);
    cluster.propose(1, b"after");
    assert_eq!(cluster.applied[&4], vec![b"after".to_vec()]);
}

/// While joint, both majorities are needed: the old configuration alone
/// cannot commit.
#[test]
fn joint_configuration_needs_both_majorities() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    let explicit = ConfChange {
        changes: vec![
            ConfChangeSingle {
                kind: ConfChangeKind::AddVoter,
                node: 4,
            },
            ConfChangeSingle {
                kind: ConfChangeKind::AddVoter,
                node: 5,
            },
            ConfChangeSingle {
                kind: ConfChangeKind::Remove,
                node: 3,
            },
        ],
        auto_leave: false,
    };
    propose_change(&mut cluster, 1, &explicit);
    assert!(cluster.nodes[&1].conf_state().is_joint());
    // Nodes 4 and 5 do not exist: the incoming majority {1,2,4,5} lacks a
    // quorum, so nothing commits even though {1,2,3} all have it.
    let before = cluster.nodes[&1].committed();
    cluster.propose(1, b"x");
    assert_eq!(cluster.nodes[&1].committed(), before);
}

/// At most one membership change may be pending.
#[test]
fn only_one_membership_change_may_be_pending() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.isolate(1);
    cluster
        .node(1)
        .propose_conf_change(&change(ConfChangeKind::AddLearner, 4))
        .unwrap();
    assert_eq!(
        cluster
            .node(1)
            .propose_conf_change(&change(ConfChangeKind::AddLearner, 5)),
        Err(Error::ConfChangePending)
    );
}

/// Removing the leader: it keeps leading through the joint configuration,
/// then steps down; the others elect a new leader and go on.
#[test]
fn removing_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    propose_change(&mut cluster, 1, &change(ConfChangeKind::Remove, 1));
    assert_ne!(cluster.nodes[&1].role(), Role::Leader);
    assert_eq!(
        cluster.nodes[&2].conf_state(),
        &ConfState::with_voters([2, 3])
    );
    cluster.tick_all(40);
    let leaders: Vec<u64> = cluster
        .leaders()
        .into_iter()
        .filter(|&id| id != 1)
        .collect();
    assert_eq!(leaders.len(), 1);
    cluster.propose(leaders[0], b"after");
    assert_eq!(cluster.applied[&2].last(), Some(&b"after".to_vec()));
}

/// Leadership transfer: the target is caught up, then told to campaign.
#[test]
fn leader_transfer_catches_up_the_target_then_sends_timeout_now() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.isolate(3);
    cluster.propose(1, b"a");
    cluster.heal();
    cluster.node(1).transfer_leader(3).unwrap();
    assert_eq!(
        cluster.node(1).propose(b"no".to_vec()),
        Err(Error::TransferInProgress { target: 3 })
    );
    cluster.handle_ready(1);
    cluster.settle();
    assert_eq!(cluster.nodes[&3].role(), Role::Leader);
    assert_eq!(cluster.leader_of(1), 3);
    assert_eq!(
        cluster.count_sent(|m| matches!(m.body, MessageBody::TimeoutNow)),
        1
    );
}

/// A transfer to an unreachable target is abandoned after an election
/// timeout, and proposals are accepted again.
#[test]
fn leader_transfer_is_aborted_after_an_election_timeout() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.isolate(3);
    cluster.node(1).transfer_leader(3).unwrap();
    assert!(cluster.node(1).propose(b"x".to_vec()).is_err());
    for _ in 0..10 {
        cluster.tick(1);
        cluster.settle();
    }
    assert_eq!(cluster.nodes[&1].transfer_target(), None);
    assert!(cluster.node(1).propose(b"x".to_vec()).is_ok());
    assert_eq!(cluster.nodes[&1].role(), Role::Leader);
}
