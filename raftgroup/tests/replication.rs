//! Log replication and commitment: Raft paper §5.3, §5.4 and Figures 7–8.

mod common;

use common::{entries_with_terms, Cluster};
use flotilla_raftgroup::{
    ConfState, Error, HardState, MemStorage, Message, MessageBody, Proposed, Role,
};

fn storage_with(terms: &[u64], term: u64) -> MemStorage {
    let mut storage = MemStorage::new_with_conf_state(ConfState::default());
    storage.append(&entries_with_terms(terms)).unwrap();
    storage.set_hard_state(HardState {
        term,
        vote: 0,
        commit: 0,
    });
    storage
}

fn with_conf(mut storage: MemStorage, voters: &[u64]) -> MemStorage {
    let entries = {
        use flotilla_raftgroup::LogStorage;
        let last = storage.last_index();
        storage.entries(1, last + 1, u64::MAX).unwrap()
    };
    let hs = storage.hard_state();
    storage = MemStorage::new_with_conf_state(ConfState::with_voters(voters.iter().copied()));
    storage.append(&entries).unwrap();
    storage.set_hard_state(hs);
    storage
}

/// Log Matching: if two logs contain an entry with the same index and term,
/// the logs are identical in all entries up through that index.
#[test]
fn log_matching_after_leader_changes() {
    let mut cluster = Cluster::new(&[1, 2, 3, 4, 5]);
    for round in 0..12u64 {
        let leader = (round % 5) + 1;
        cluster.heal();
        if !cluster.elect(leader) {
            cluster.tick_all(30);
        }
        let Some(&current) = cluster.leaders().first() else {
            continue;
        };
        // Propose while one follower is cut off, so logs diverge.
        cluster.isolate((round + 2) % 5 + 1);
        if cluster.nodes[&current].role() == Role::Leader {
            let _ = cluster
                .node(current)
                .propose(format!("r{round}").into_bytes());
            cluster.handle_ready(current);
            cluster.settle();
        }
    }
    cluster.heal();
    cluster.tick_all(40);
    let logs: Vec<_> = (1..=5).map(|id| cluster.log(id)).collect();
    for a in &logs {
        for b in &logs {
            for (x, y) in a.iter().zip(b.iter()) {
                if x.index == y.index && x.term == y.term {
                    let upto = x.index as usize;
                    assert_eq!(a[..upto], b[..upto], "logs differ before a matching entry");
                }
            }
        }
    }
}

/// Leader Completeness: a committed entry is present in the logs of all
/// later leaders. State Machine Safety: no two nodes apply different
/// entries at the same index.
#[test]
fn leader_completeness_and_state_machine_safety() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.propose(1, b"a");
    cluster.propose(1, b"b");
    let committed = cluster.nodes[&1].committed();
    // Node 3 misses the next entries; then the leader is replaced.
    cluster.isolate(3);
    cluster.propose(1, b"c");
    cluster.heal();
    cluster.isolate(1);
    // Node 3 cannot win: its log lacks a committed entry.
    cluster.elect(3);
    assert_ne!(cluster.nodes[&3].role(), Role::Leader);
    cluster.tick_all(30);
    let leader = *cluster
        .leaders()
        .iter()
        .find(|&&id| id != 1)
        .expect("a new leader");
    assert_eq!(leader, 2, "only node 2 has every committed entry");
    let log = cluster.log(leader);
    assert!(log.len() as u64 >= committed);
    cluster.heal();
    cluster.propose(leader, b"d");
    cluster.tick_all(5);
    let applied: Vec<_> = (1..=3).map(|id| cluster.applied[&id].clone()).collect();
    assert_eq!(applied[0], applied[1]);
    assert_eq!(applied[1], applied[2]);
    assert_eq!(
        applied[0],
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
}

/// Figure 7: whatever the followers' logs (missing entries, extra
/// uncommitted entries, both), the leader brings them to its own.
#[test]
fn figure_7_followers_converge_to_the_leader_log() {
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one
        &[1, 1, 1, 4],                         // (b) missing many
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra of a later term
        &[1, 1, 1, 4, 4, 4, 4],                // (e) missing and extra
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) long divergent suffix
    ];
    let voters: Vec<u64> = (1..=7).collect();
    let mut cluster = Cluster::new(&voters);
    cluster.nodes.clear();
    cluster.add_node(1, with_conf(storage_with(&leader_log, 7), &voters));
    for (i, log) in followers.iter().enumerate() {
        let id = i as u64 + 2;
        let term = *log.last().unwrap();
        cluster.add_node(id, with_conf(storage_with(log, term), &voters));
    }
    assert!(cluster.elect(1), "a, b, e and f vote for the leader");
    cluster.tick_all(10);
    let expected = cluster.log(1);
    assert_eq!(expected.len(), 11);
    for id in 2..=7 {
        assert_eq!(cluster.log(id), expected, "follower {id}");
    }
}

/// Figure 8: a leader never commits an entry of an earlier term by counting
/// replicas; only once an entry of its own term is replicated on a quorum.
#[test]
fn figure_8_entries_of_earlier_terms_are_not_committed_by_counting() {
    let voters = [1, 2, 3];
    let mut cluster = Cluster::with(&voters, &[], |c| c.max_size_per_msg = 1);
    cluster.nodes.clear();
    cluster.add_node(1, with_conf(storage_with(&[1, 2], 2), &voters));
    cluster.add_node(2, with_conf(storage_with(&[1], 2), &voters));
    cluster.add_node(3, with_conf(storage_with(&[1], 2), &voters));
    // The leader learns that the followers have index 2 (term 2) but not
    // that they have its own entry at index 3.
    cluster.drop_if = Box::new(
        |m: &Message| matches!(m.body, MessageBody::AppendResponse { index, reject: false, .. } if index >= 3),
    );
    assert!(cluster.elect(1));
    assert_eq!(cluster.nodes[&1].term(), 3);
    cluster.tick_all(3);
    let matched: Vec<u64> = cluster.nodes[&1]
        .progress()
        .iter()
        .map(|p| p.matched)
        .collect();
    assert_eq!(
        matched,
        vec![3, 2, 2],
        "a quorum has the term-2 entry at index 2"
    );
    assert_eq!(
        cluster.nodes[&1].committed(),
        0,
        "the term-2 entry must not commit"
    );
    cluster.drop_if = Box::new(|_| false);
    cluster.tick_all(3);
    assert_eq!(cluster.nodes[&1].committed(), 3);
}

/// Fast backtracking: a follower with a long conflicting suffix is fixed
/// with a constant number of rejections, not one per entry.
#[test]
fn conflict_hints_skip_whole_terms() {
    let mut leader_terms = vec![1u64];
    leader_terms.extend(std::iter::repeat_n(3, 100));
    let mut follower_terms = vec![1u64];
    follower_terms.extend(std::iter::repeat_n(2, 100));
    let voters = [1, 2, 3];
    let mut cluster = Cluster::new(&voters);
    cluster.nodes.clear();
    cluster.add_node(1, with_conf(storage_with(&leader_terms, 3), &voters));
    cluster.add_node(2, with_conf(storage_with(&follower_terms, 3), &voters));
    cluster.add_node(3, with_conf(storage_with(&leader_terms, 3), &voters));
    assert!(cluster.elect(1));
    cluster.tick_all(3);
    assert_eq!(cluster.log(2), cluster.log(1));
    let rejections = cluster.count_sent(|m| {
        m.from == 2 && matches!(m.body, MessageBody::AppendResponse { reject: true, .. })
    });
    assert!(rejections <= 2, "{rejections} rejections");
}

/// Flow control: a follower in replicate state has at most
/// `max_inflight_msgs` appends outstanding.
#[test]
fn inflight_messages_are_bounded() {
    let mut cluster = Cluster::with(&[1, 2], &[], |c| {
        c.max_inflight_msgs = 3;
        c.max_size_per_msg = 1;
    });
    assert!(cluster.elect(1));
    // Follower 2 stops answering.
    cluster.cut.insert((2, 1));
    for i in 0..20u8 {
        cluster.node(1).propose(vec![i]).unwrap();
        cluster.handle_ready(1);
    }
    cluster.settle();
    let appends_with_entries = cluster.count_sent(|m| {
        m.to == 2
            && matches!(&m.body, MessageBody::Append { entries, .. } if entries.iter().any(|e| !e.data.is_empty()))
    });
    assert_eq!(appends_with_entries, 3);
}

/// Flow control by bytes: `max_inflight_bytes` bounds what is in flight.
#[test]
fn inflight_bytes_are_bounded() {
    let mut cluster = Cluster::with(&[1, 2], &[], |c| {
        c.max_inflight_msgs = 1000;
        c.max_inflight_bytes = 3000;
        c.max_size_per_msg = 1;
    });
    assert!(cluster.elect(1));
    cluster.cut.insert((2, 1));
    for _ in 0..20 {
        cluster.node(1).propose(vec![7; 1000]).unwrap();
        cluster.handle_ready(1);
    }
    cluster.settle();
    let appends = cluster.count_sent(|m| {
        m.to == 2
            && matches!(&m.body, MessageBody::Append { entries, .. } if entries.iter().any(|e| !e.data.is_empty()))
    });
    assert_eq!(appends, 3, "1,024 bytes each: the third reaches the limit");
}

/// The leader refuses proposals beyond `max_uncommitted_bytes`.
#[test]
fn uncommitted_bytes_are_bounded_at_the_leader() {
    let mut cluster = Cluster::with(&[1, 2, 3], &[], |c| c.max_uncommitted_bytes = 2000);
    assert!(cluster.elect(1));
    cluster.isolate(1);
    cluster.node(1).propose(vec![0; 1000]).unwrap();
    cluster.node(1).propose(vec![0; 900]).unwrap();
    assert_eq!(
        cluster.node(1).propose(vec![0; 1000]),
        Err(Error::UncommittedLimit)
    );
    cluster.handle_ready(1);
    cluster.heal();
    cluster.settle();
    cluster.tick_all(2);
    assert_eq!(cluster.nodes[&1].uncommitted_bytes(), 0);
    assert!(cluster.node(1).propose(vec![0; 1000]).is_ok());
}

/// Followers forward proposals to the leader; with forwarding off they
/// answer `NotLeader`; without a leader, `NoLeader`.
#[test]
fn proposal_forwarding_and_its_errors() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert_eq!(cluster.node(2).propose(b"x".to_vec()), Err(Error::NoLeader));
    assert!(cluster.elect(1));
    assert_eq!(
        cluster.node(2).propose(b"fwd".to_vec()),
        Ok(Proposed::Forwarded { to: 1 })
    );
    cluster.handle_ready(2);
    cluster.settle();
    cluster.tick_all(2);
    assert_eq!(cluster.applied[&3], vec![b"fwd".to_vec()]);

    let mut strict = Cluster::with(&[1, 2, 3], &[], |c| c.forward_proposals = false);
    assert!(strict.elect(1));
    assert_eq!(
        strict.node(2).propose(b"x".to_vec()),
        Err(Error::NotLeader { leader: Some(1) })
    );
}

/// Entries are applied only once committed, and committed entries reach
/// every replica.
#[test]
fn committed_entries_are_applied_everywhere_in_order() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    for i in 0..50u32 {
        cluster.node(1).propose(i.to_le_bytes().to_vec()).unwrap();
    }
    cluster.handle_ready(1);
    cluster.settle();
    cluster.tick_all(2);
    let expected: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_le_bytes().to_vec()).collect();
    for id in 1..=3 {
        assert_eq!(cluster.applied[&id], expected, "node {id}");
    }
}
