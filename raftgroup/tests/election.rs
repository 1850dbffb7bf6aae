//! Elections: Raft paper §5.2 and the thesis' pre-vote and check-quorum.

mod common;

use common::Cluster;
use flotilla_raftgroup::{
    ConfState, Config, HardState, MemStorage, MessageBody, RawNode, Role, NO_NODE,
};

/// Election Safety: at most one leader can be elected in a given term.
#[test]
fn election_safety_at_most_one_leader_per_term() {
    let mut cluster = Cluster::new(&[1, 2, 3, 4, 5]);
    let mut leaders_by_term = std::collections::BTreeMap::new();
    for round in 0..40 {
        // Partition differently every round so elections race.
        cluster.heal();
        if round % 3 == 0 {
            cluster.isolate((round % 5) as u64 + 1);
        }
        cluster.tick_all(7);
        for (id, node) in &cluster.nodes {
            if node.role() == Role::Leader {
                let previous = leaders_by_term.insert(node.term(), *id);
                assert!(
                    previous.is_none() || previous == Some(*id),
                    "two leaders in term {}: {previous:?} and {id}",
                    node.term()
                );
            }
        }
    }
    assert!(!leaders_by_term.is_empty(), "no leader was ever elected");
}

/// The election timeout is drawn from [election, 2 * election) ticks.
#[test]
fn randomized_election_timeout_is_within_one_to_two_election_timeouts() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut config = Config::new(1);
        config.seed = seed;
        config.pre_vote = false;
        config.election_ticks = 10;
        let storage = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
        let mut node = RawNode::new(config, storage).unwrap();
        let mut ticks = 0;
        while node.role() == Role::Follower {
            node.tick();
            ticks += 1;
            assert!(ticks < 20, "no campaign within 2 * election ticks");
        }
        assert!(ticks >= 10, "campaigned after {ticks} ticks");
        seen.insert(ticks);
    }
    assert!(seen.len() > 5, "timeouts are not randomized: {seen:?}");
}

/// A vote is granted only after the vote is persisted: the response is a
/// persisted message and the Ready carries the hard state with the vote.
#[test]
fn votes_are_persisted_before_they_are_sent() {
    let storage = MemStorage::new_with_conf_state(ConfState::with_voters([1, 2, 3]));
    let mut node = RawNode::new(Config::new(2), storage).unwrap();
    let request = flotilla_raftgroup::Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    };
    node.step(request).unwrap();
    let ready = node.ready().unwrap();
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 1,
            vote: 1,
            commit: 0
        })
    );
    assert!(ready.must_sync);
    assert!(
        ready.messages.is_empty(),
        "a vote must not leave before persistence"
    );
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::VoteResponse {
            reject: false,
            pre_vote: false,
            ..
        }
    ));
    node.advance(ready);
    // After a restart from what was persisted, the node does not vote again.
    let mut storage = node.storage().clone();
    storage.set_hard_state(node.hard_state());
    let mut restarted = RawNode::new(Config::new(2), storage).unwrap();
    let rival = flotilla_raftgroup::Message {
        from: 3,
        to: 2,
        term: 1,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    };
    restarted.step(rival).unwrap();
    let ready = restarted.ready().unwrap();
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::VoteResponse { reject: true, .. }
    ));
}

/// A new leader appends an empty entry of its term (Raft paper §5.4.2, §8).
#[test]
fn new_leader_appends_an_empty_entry_of_its_term() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    let term = cluster.nodes[&1].term();
    let log = cluster.log(1);
    let last = log.last().unwrap();
    assert_eq!(last.term, term);
    assert!(last.data.is_empty());
    assert_eq!(cluster.nodes[&2].committed(), last.index);
}

/// Pre-vote: a node rejoining from a partition never bumps the term of a
/// healthy group.
#[test]
fn pre_vote_keeps_a_rejoining_node_from_disrupting_the_group() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    let term = cluster.nodes[&1].term();
    cluster.isolate(3);
    // Node 3 times out again and again while the others keep working.
    for _ in 0..10 {
        cluster.tick_all(5);
        cluster.propose(1, b"x");
    }
    assert_eq!(
        cluster.nodes[&3].term(),
        term,
        "pre-vote must not bump the term"
    );
    cluster.heal();
    cluster.tick_all(30);
    assert_eq!(cluster.nodes[&1].role(), Role::Leader);
    assert_eq!(cluster.nodes[&1].term(), term);
    assert_eq!(cluster.leader_of(3), 1);
}

/// Without pre-vote the same rejoin does bump the term: the scenario above
/// is what pre-vote buys.
#[test]
fn without_pre_vote_a_rejoining_node_bumps_the_term() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    assert!(cluster.elect(1));
    let term = cluster.nodes[&1].term();
    cluster.isolate(3);
    cluster.tick_all(40);
    assert!(cluster.nodes[&3].term() > term);
    cluster.heal();
    cluster.tick_all(40);
    let leader = cluster.leaders()[0];
    assert!(cluster.nodes[&leader].term() > term);
}

/// Check-quorum: a leader that has not heard from a quorum within an
/// election timeout steps down.
#[test]
fn check_quorum_leader_without_a_quorum_steps_down() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.isolate(1);
    cluster.tick_all(25);
    assert_ne!(cluster.nodes[&1].role(), Role::Leader);
    assert_eq!(cluster.leader_of(1), NO_NODE);

    let mut without = Cluster::with(&[1, 2, 3], &[], |c| {
        c.check_quorum = false;
        c.pre_vote = false;
    });
    assert!(without.elect(1));
    without.isolate(1);
    without.tick_all(25);
    assert_eq!(
        without.nodes[&1].role(),
        Role::Leader,
        "without check-quorum it stays"
    );
}

/// Check-quorum also gives followers a lease: they ignore vote requests
/// while they hear from their leader.
#[test]
fn followers_in_lease_ignore_vote_requests() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    let term = cluster.nodes[&1].term();
    let request = flotilla_raftgroup::Message {
        from: 3,
        to: 2,
        term: term + 1,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_index: 100,
            last_term: term,
            transfer: false,
        },
    };
    cluster.node(2).step(request).unwrap();
    assert_eq!(cluster.nodes[&2].term(), term);
    assert!(!cluster.node(2).has_ready());
}
