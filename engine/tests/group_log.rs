//! Raft groups whose logs live in the shared WAL: many groups share one
//! write batch per round, and a restart recovers every group's log, hard
//! state and snapshot point.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla::group_log::GroupLog;
use flotilla::wal::{Wal, WalConfig, WriteBatch};
use flotilla_raftgroup::{ConfState, Config, EntryKind, LogStorage, RawNode, Role, Snapshot};

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 1 << 20,
        ..WalConfig::default()
    }
}

/// Runs every group's pending Readies, persisting all of them in ONE batch
/// per round; returns the data entries applied, per group.
fn round(
    wal: &Wal,
    nodes: &mut BTreeMap<u64, RawNode<GroupLog>>,
    applied: &mut BTreeMap<u64, Vec<Vec<u8>>>,
) -> usize {
    let mut batch = WriteBatch::new();
    let mut readies = Vec::new();
    for (group, node) in nodes.iter_mut() {
        if node.has_ready() {
            let ready = node.ready().unwrap();
            node.storage().stage_ready(&ready, &mut batch);
            readies.push((*group, ready));
        }
    }
    if !batch.is_empty() {
        wal.append(batch).unwrap();
    }
    let handled = readies.len();
    for (group, ready) in readies {
        let node = nodes.get_mut(&group).unwrap();
        for entry in &ready.committed_entries {
            if entry.kind == EntryKind::Normal && !entry.data.is_empty() {
                applied.entry(group).or_default().push(entry.data.to_vec());
            }
        }
        node.advance(ready);
    }
    handled
}

fn settle(
    wal: &Wal,
    nodes: &mut BTreeMap<u64, RawNode<GroupLog>>,
    applied: &mut BTreeMap<u64, Vec<Vec<u8>>>,
) {
    while round(wal, nodes, applied) > 0 {}
}

#[test]
fn many_groups_share_batches_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let groups: Vec<u64> = (1..=50).collect();
    let mut expected: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let snapshots: BTreeMap<u64, Snapshot>;
    {
        let wal = Arc::new(Wal::open(dir.path(), config()).unwrap());
        let mut nodes = BTreeMap::new();
        for &group in &groups {
            let log = GroupLog::bootstrap(Arc::clone(&wal), group, ConfState::with_voters([1]));
            let mut node = RawNode::new(Config::new(1), log).unwrap();
            node.campaign();
            nodes.insert(group, node);
        }
        let mut applied = BTreeMap::new();
        settle(&wal, &mut nodes, &mut applied);
        let syncs_before = wal.stats().syncs;
        for i in 0..20u32 {
            for &group in &groups {
                let data = format!("g{group}-{i}").into_bytes();
                nodes
                    .get_mut(&group)
                    .unwrap()
                    .propose(data.clone())
                    .unwrap();
                expected.entry(group).or_default().push(data);
            }
            settle(&wal, &mut nodes, &mut applied);
        }
        assert_eq!(applied, expected);
        // 50 groups × 20 proposals, yet about one sync per round.
        let syncs = wal.stats().syncs - syncs_before;
        assert!(
            syncs < 100,
            "{syncs} syncs for 1,000 proposals in 40 rounds"
        );

        // Every group snapshots at its applied index; odd groups compact.
        let mut batch = WriteBatch::new();
        let mut made = BTreeMap::new();
        for (&group, node) in nodes.iter_mut() {
            if group % 2 == 1 {
                let index = node.applied() - 5;
                let conf = node.conf_state().clone();
                node.storage_mut()
                    .create_snapshot(index, conf, Vec::new(), &mut batch)
                    .unwrap();
            }
            made.insert(group, node.storage().snapshot().unwrap());
        }
        wal.append(batch).unwrap();
        snapshots = made;
    }

    // Restart: the WAL plus each group's snapshot give back the same logs.
    let wal = Arc::new(Wal::open(dir.path(), config()).unwrap());
    let mut nodes = BTreeMap::new();
    for &group in &groups {
        let snapshot = snapshots[&group].clone();
        let applied_index = snapshot.meta.index;
        let log = GroupLog::recover(Arc::clone(&wal), group, snapshot);
        if group % 2 == 1 {
            assert_eq!(log.first_index(), applied_index + 1);
        } else {
            assert_eq!(log.first_index(), 1);
        }
        let mut cfg = Config::new(1);
        cfg.applied = applied_index;
        let node = RawNode::new(cfg, log).unwrap();
        assert_eq!(node.hard_state().term, 1);
        nodes.insert(group, node);
    }
    let mut replayed = BTreeMap::new();
    settle(&wal, &mut nodes, &mut replayed);
    for &group in &groups {
        let all = &expected[&group];
        let got = replayed.get(&group).cloned().unwrap_or_default();
        if group % 2 == 1 {
            // Only the five entries after the snapshot are replayed.
            assert_eq!(got, all[all.len() - 5..].to_vec(), "group {group}");
        } else {
            assert_eq!(&got, all, "group {group}");
        }
    }
    // And the groups work on: elect and write again.
    for node in nodes.values_mut() {
        node.campaign();
    }
    let mut applied = BTreeMap::new();
    settle(&wal, &mut nodes, &mut applied);
    for node in nodes.values_mut() {
        assert_eq!(node.role(), Role::Leader);
        node.propose(b"after".to_vec()).unwrap();
    }
    settle(&wal, &mut nodes, &mut applied);
    assert!(applied.values().all(|v| v == &vec![b"after".to_vec()]));
}
