//! Linearizable reads: batched ReadIndex, follower reads, leases, and the
//! rule that a read is released only once apply reaches its index.

mod common;

use common::Cluster;
use flotilla_raftgroup::Role;
use flotilla_raftgroup::{
    ConfState, Config, Error, MemStorage, MessageBody, RawNode, ReadMode, ReadState,
};

fn heartbeats_from(cluster: &Cluster, leader: u64) -> usize {
    cluster.count_sent(|m| m.from == leader && matches!(m.body, MessageBody::Heartbeat { .. }))
}

/// Many pending reads share one heartbeat round.
#[test]
fn read_index_batches_many_reads_into_one_heartbeat_round() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.propose(1, b"w");
    let before = heartbeats_from(&cluster, 1);
    for request in 0..100 {
        cluster.node(1).read_index(request).unwrap();
    }
    cluster.handle_ready(1);
    cluster.settle();
    let rounds = heartbeats_from(&cluster, 1) - before;
    assert_eq!(rounds, 2, "one heartbeat per follower for all 100 reads");
    let reads = &cluster.reads[&1];
    assert_eq!(reads.len(), 100);
    let committed = cluster.nodes[&1].committed();
    assert!(reads.iter().all(|r| r.index == committed));
}

/// A read is not confirmed without a quorum: an isolated leader cannot
/// serve it.
#[test]
fn read_index_needs_a_quorum() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.isolate(1);
    cluster.node(1).read_index(7).unwrap();
    cluster.handle_ready(1);
    cluster.settle();
    assert!(cluster.reads.get(&1).is_none_or(|r| r.is_empty()));
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(cluster.reads[&1].len(), 1);
}

/// Followers request reads through the leader and serve them locally.
#[test]
fn followers_serve_read_index_reads() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.propose(1, b"w");
    cluster.node(2).read_index(42).unwrap();
    cluster.handle_ready(2);
    cluster.settle();
    let committed = cluster.nodes[&1].committed();
    assert_eq!(
        cluster.reads[&2],
        vec![ReadState {
            request: 42,
            index: committed
        }]
    );
    assert_eq!(cluster.node(3).read_index(1), Ok(()));
    let mut lonely = Cluster::new(&[1, 2, 3]);
    assert_eq!(lonely.node(2).read_index(1), Err(Error::NoLeader));
}

/// A read is released only once the host applied its index.
#[test]
fn reads_wait_for_apply_to_reach_their_index() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.propose(1, b"w");
    // Follower 3 stops receiving appends, so it cannot apply the next write.
    cluster.cut.insert((1, 3));
    cluster.propose(1, b"w2");
    cluster.cut.clear();
    cluster.drop_if = Box::new(|m| m.to == 3 && matches!(m.body, MessageBody::Append { .. }));
    cluster.node(3).read_index(9).unwrap();
    cluster.handle_ready(3);
    cluster.settle();
    assert!(
        cluster.reads.get(&3).is_none_or(|r| r.is_empty()),
        "the read's index is not applied at node 3 yet"
    );
    cluster.drop_if = Box::new(|_| false);
    cluster.tick_all(3);
    let index = cluster.nodes[&1].committed();
    assert_eq!(cluster.reads[&3], vec![ReadState { request: 9, index }]);
    assert!(cluster.nodes[&3].applied() >= index);
}

/// A new leader answers reads only after it committed an entry of its
/// term: before that its commit index may be behind.
#[test]
fn reads_wait_for_the_leaders_first_commit() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.drop_if = Box::new(|m| matches!(m.body, MessageBody::AppendResponse { .. }));
    assert!(cluster.elect(1));
    cluster.node(1).read_index(5).unwrap();
    cluster.handle_ready(1);
    cluster.tick_all(3);
    assert!(cluster.reads.get(&1).is_none_or(|r| r.is_empty()));
    cluster.drop_if = Box::new(|_| false);
    cluster.tick_all(3);
    assert_eq!(cluster.reads[&1].len(), 1);
}

/// Lease reads need check-quorum.
#[test]
fn lease_reads_require_check_quorum() {
    let mut config = Config::new(1);
    config.read_mode = ReadMode::Lease;
    config.check_quorum = false;
    let storage = MemStorage::new_with_conf_state(ConfState::with_voters([1]));
    assert!(matches!(
        RawNode::new(config, storage),
        Err(Error::InvalidConfig(_))
    ));
}

/// With a lease, reads are answered without a heartbeat round, and only
/// while the lease lasts.
#[test]
fn lease_reads_skip_the_heartbeat_round_while_the_lease_lasts() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], |c| c.read_mode = ReadMode::Lease);
    assert!(cluster.elect(1));
    cluster.tick_all(2); // a heartbeat round establishes the lease
    let before = heartbeats_from(&cluster, 1);
    cluster.node(1).read_index(1).unwrap();
    cluster.handle_ready(1);
    cluster.settle();
    assert_eq!(cluster.reads[&1].len(), 1);
    assert_eq!(heartbeats_from(&cluster, 1), before, "no round was needed");

    // Cut the leader off: once the lease runs out, reads wait for a quorum.
    cluster.isolate(1);
    for _ in 0..9 {
        cluster.tick(1);
    }
    cluster.node(1).read_index(2).unwrap();
    cluster.handle_ready(1);
    cluster.settle();
    assert_eq!(
        cluster.reads[&1].len(),
        1,
        "an expired lease must not answer"
    );
}

/// A follower that acknowledged a lease and restarts at once has forgotten
/// it; it must still not help elect a new leader while that lease may run,
/// or the old leader would answer reads a new leader already overwrote.
#[test]
fn a_restarted_follower_honours_a_lease_it_forgot() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], |c| c.read_mode = ReadMode::Lease);
    assert!(cluster.elect(1));
    cluster.propose(1, b"w");
    cluster.tick_all(2); // follower 2 acknowledges a heartbeat round: a lease
    let storage = cluster.crash(2);
    cluster.restart(2, storage);
    cluster.isolate(1);
    // Node 3 campaigns at once; restarted node 2 must not vote for it.
    cluster.node(3).campaign();
    cluster.handle_ready(3);
    cluster.settle();
    assert_ne!(cluster.nodes[&3].role(), Role::Leader);
    // The old leader still answers on its lease, and that is safe.
    cluster.node(1).read_index(1).unwrap();
    cluster.handle_ready(1);
    cluster.settle();
    assert_eq!(cluster.reads[&1].len(), 1);
    // Once an election timeout has passed the group elects a new leader.
    cluster.tick_all(40);
    assert!(cluster.leaders().iter().any(|&id| id != 1));
}
