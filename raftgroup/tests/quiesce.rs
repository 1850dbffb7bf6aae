//! Quiescence: idle groups stop ticking and stay correct.

mod common;

use common::Cluster;
use flotilla_raftgroup::{MessageBody, Role};

fn quiet_cluster() -> Cluster {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.propose(1, b"a");
    cluster.tick_all(2);
    cluster
}

/// An idle leader may quiesce only when every follower matches the last
/// index and all is applied.
#[test]
fn quiesce_only_when_every_follower_has_everything() {
    let mut cluster = quiet_cluster();
    cluster.isolate(3);
    cluster.propose(1, b"b");
    assert!(
        !cluster.nodes[&1].can_quiesce(),
        "follower 3 lacks an entry"
    );
    assert!(!cluster.node(1).quiesce());
    cluster.heal();
    cluster.tick_all(2);
    assert!(cluster.nodes[&1].can_quiesce());
    assert!(cluster.node(1).quiesce());
    cluster.handle_ready(1);
    cluster.settle();
    for id in 1..=3 {
        assert!(cluster.nodes[&id].is_quiesced(), "node {id}");
    }
}

/// Quiesced replicas ignore ticks: no heartbeats, no elections.
#[test]
fn quiesced_groups_send_nothing_and_never_time_out() {
    let mut cluster = quiet_cluster();
    assert!(cluster.node(1).quiesce());
    cluster.handle_ready(1);
    cluster.settle();
    let before = cluster.sent.len();
    cluster.tick_all(100);
    assert_eq!(cluster.sent.len(), before, "a quiesced group sent messages");
    assert_eq!(cluster.nodes[&1].role(), Role::Leader);
}

/// A proposal (or any message, or `wake`) wakes the group.
#[test]
fn a_proposal_wakes_the_group() {
    let mut cluster = quiet_cluster();
    assert!(cluster.node(1).quiesce());
    cluster.handle_ready(1);
    cluster.settle();
    cluster.propose(1, b"b");
    for id in 1..=3 {
        assert!(!cluster.nodes[&id].is_quiesced(), "node {id}");
    }
    assert_eq!(cluster.applied[&3].last(), Some(&b"b".to_vec()));
    let before = cluster.sent.len();
    cluster.tick_all(4);
    assert!(
        cluster.sent.len() > before,
        "awake again: heartbeats resume"
    );
}

/// When the leader's node is known dead, the host calls
/// `leader_unreachable` on its followers: quiesced followers, which never
/// time out by themselves, campaign and elect a new leader.
#[test]
fn leader_unreachable_lets_quiesced_followers_elect_a_new_leader() {
    let mut cluster = quiet_cluster();
    assert!(cluster.node(1).quiesce());
    cluster.handle_ready(1);
    cluster.settle();
    let _ = cluster.crash(1);
    cluster.tick_all(100);
    assert!(
        cluster.leaders().is_empty(),
        "quiesced followers never time out"
    );
    for id in [2, 3] {
        cluster.node(id).leader_unreachable();
        cluster.handle_ready(id);
    }
    cluster.settle();
    cluster.tick_all(30);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1);
    cluster.propose(leaders[0], b"new");
    assert_eq!(cluster.applied[&3].last(), Some(&b"new".to_vec()));
    assert_eq!(cluster.applied[&2].last(), Some(&b"new".to_vec()));
}

/// A follower that missed the quiesce heartbeat keeps ticking; its pre-vote
/// wakes the group without deposing the live leader.
#[test]
fn a_follower_that_missed_quiescence_does_not_depose_the_leader() {
    let mut cluster = quiet_cluster();
    let term = cluster.nodes[&1].term();
    cluster.drop_if = Box::new(|m| m.to == 3 && matches!(m.body, MessageBody::Heartbeat { .. }));
    assert!(cluster.node(1).quiesce());
    cluster.handle_ready(1);
    cluster.settle();
    cluster.drop_if = Box::new(|_| false);
    assert!(!cluster.nodes[&3].is_quiesced());
    cluster.tick_all(40);
    assert_eq!(cluster.nodes[&1].role(), Role::Leader);
    assert_eq!(cluster.nodes[&1].term(), term);
}
