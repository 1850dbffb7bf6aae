//! Snapshots and log compaction (Raft paper §7).

mod common;

use common::{encode_state, Cluster};
use flotilla_raftgroup::{LogStorage, MessageBody, ProgressState};

fn compact_leader(cluster: &mut Cluster, leader: u64) {
    let applied = cluster.nodes[&leader].applied();
    let conf = cluster.nodes[&leader].conf_state().clone();
    let data = encode_state(&cluster.applied[&leader]);
    cluster
        .node(leader)
        .storage_mut()
        .create_snapshot(applied, conf, data)
        .unwrap();
}

/// A follower that needs compacted entries gets a snapshot, restores its
/// state machine from it, and then follows the log again.
#[test]
fn lagging_follower_restores_from_a_snapshot() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.isolate(3);
    for i in 0..20u8 {
        cluster.propose(1, &[i]);
    }
    compact_leader(&mut cluster, 1);
    assert!(cluster.nodes[&1].storage().first_index() > 2);
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(
        cluster.count_sent(|m| m.to == 3 && matches!(m.body, MessageBody::InstallSnapshot { .. })),
        1
    );
    // Delivery succeeded: the host reports it and replication resumes.
    cluster.node(1).report_snapshot(3, true);
    cluster.propose(1, b"after");
    cluster.tick_all(3);
    assert_eq!(cluster.applied[&3], cluster.applied[&1]);
    assert_eq!(cluster.applied[&3].len(), 21);
    let progress = cluster.nodes[&1].progress();
    let follower = progress.iter().find(|p| p.node == 3).unwrap();
    assert_eq!(follower.state, ProgressState::Replicate);
}

/// A failed snapshot is reported and retried.
#[test]
fn failed_snapshot_is_retried() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.isolate(3);
    for i in 0..5u8 {
        cluster.propose(1, &[i]);
    }
    compact_leader(&mut cluster, 1);
    cluster.heal();
    // The snapshot is lost on the way.
    cluster.drop_if = Box::new(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }));
    cluster.tick_all(2);
    let sent_once = cluster.count_sent(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }));
    assert_eq!(sent_once, 1);
    // While it is pending, nothing else is sent to that follower.
    cluster.tick_all(4);
    assert_eq!(
        cluster.count_sent(|m| matches!(m.body, MessageBody::InstallSnapshot { .. })),
        1
    );
    cluster.node(1).report_snapshot(3, false);
    cluster.drop_if = Box::new(|_| false);
    cluster.tick_all(4);
    assert_eq!(
        cluster.count_sent(|m| matches!(m.body, MessageBody::InstallSnapshot { .. })),
        2
    );
    cluster.node(1).report_snapshot(3, true);
    cluster.tick_all(3);
    assert_eq!(cluster.applied[&3], cluster.applied[&1]);
}

/// A replica restarts from its snapshot plus the log after it.
#[test]
fn restart_from_snapshot_and_log() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    for i in 0..10u8 {
        cluster.propose(1, &[i]);
    }
    let applied = cluster.nodes[&2].applied();
    let conf = cluster.nodes[&2].conf_state().clone();
    let data = encode_state(&cluster.applied[&2]);
    cluster
        .node(2)
        .storage_mut()
        .create_snapshot(applied - 3, conf, data.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    // The snapshot above is deliberately older than what was applied: the
    // state machine image must match its index, so rebuild it.
    let image = encode_state(&cluster.applied[&2][..cluster.applied[&2].len() - 3]);
    let mut storage = cluster.crash(2);
    let meta = storage.snapshot().unwrap().meta;
    storage = {
        let mut rebuilt =
            flotilla_raftgroup::MemStorage::new_with_conf_state(meta.conf_state.clone());
        rebuilt
            .apply_snapshot(flotilla_raftgroup::Snapshot { meta, data: image })
            .unwrap();
        let entries = storage
            .entries(storage.first_index(), storage.last_index() + 1, u64::MAX)
            .unwrap();
        rebuilt.append(&entries).unwrap();
        rebuilt.set_hard_state(storage.hard_state());
        rebuilt
    };
    cluster.restart(2, storage);
    cluster.tick_all(3);
    assert_eq!(cluster.applied[&2], cluster.applied[&1]);
}
