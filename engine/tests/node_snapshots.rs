//! Snapshots and membership on real WALs and snapshot directories: a range
//! compacts its log behind snapshots, a replica added on a fourth node is
//! created on first contact and brought up by a chunked snapshot, then
//! promoted to voter; a replica is removed; the new replica restarts from
//! its snapshot plus the WAL with every value. Replica garbage collection:
//! a replica removed while cut off is destroyed once it can hear again,
//! and a leader that removes itself survives until it has handed over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use flotilla::node::snapshots::DirSnapshotStore;
use flotilla::node::{
    NodeConfig, NodeCore, NodeError, RangeDescriptor, ReplicaChange, Request, Response,
};
use flotilla::range::{Command, KeySpan};
use flotilla::wal::{Wal, WalConfig};
use flotilla_transport::FrameBuilder;

const GROUP: u64 = 1;

fn config() -> NodeConfig {
    NodeConfig {
        snapshot_after_entries: 8,
        // Small chunks: the transfer spans many frames and rounds.
        snapshot_chunk_bytes: 256,
        snapshot_chunks_per_round: 2,
        ..NodeConfig::default()
    }
}

fn open(dir: &std::path::Path, id: u64, ranges: &[RangeDescriptor]) -> NodeCore {
    let wal = Wal::open(
        dir.join("wal"),
        WalConfig {
            segment_bytes: 1 << 20,
            zero_fill_segments: false,
            ..WalConfig::default()
        },
    )
    .unwrap();
    let snapshots = Arc::new(DirSnapshotStore::open(dir.join("snap")).unwrap());
    NodeCore::open(id, Arc::new(wal), snapshots, config(), ranges).unwrap()
}

struct Cluster {
    dirs: BTreeMap<u64, tempfile::TempDir>,
    cores: BTreeMap<u64, NodeCore>,
    ranges: Vec<RangeDescriptor>,
    results: BTreeMap<u64, Result<Response, NodeError>>,
    chunks_sent: usize,
    /// Nodes cut off from every other: their frames, both ways, are lost.
    cut: BTreeSet<u64>,
    /// Checked after each step's rounds, before its frames are delivered:
    /// the node it names is cut off from then on (and the rule dropped).
    cut_when: Option<CutRule>,
}

type CutRule = Box<dyn FnMut(&BTreeMap<u64, NodeCore>) -> Option<u64>>;

impl Cluster {
    fn new() -> Self {
        let ranges = vec![RangeDescriptor {
            group: GROUP,
            span: KeySpan::full(),
            replicas: vec![1, 2, 3],
            generation: 1,
        }];
        let mut cluster = Cluster {
            dirs: BTreeMap::new(),
            cores: BTreeMap::new(),
            ranges,
            results: BTreeMap::new(),
            chunks_sent: 0,
            cut: BTreeSet::new(),
            cut_when: None,
        };
        // Node 4 hosts nothing at bootstrap.
        for id in 1..=4 {
            let dir = tempfile::tempdir().unwrap();
            cluster
                .cores
                .insert(id, open(dir.path(), id, &cluster.ranges));
            cluster.dirs.insert(id, dir);
        }
        cluster
    }

    fn step(&mut self) {
        let mut frames = Vec::new();
        for core in self.cores.values_mut() {
            core.tick();
            for _ in 0..50 {
                let mut out = FrameBuilder::new(core.id());
                let moved = core.round(&mut out).unwrap();
                frames.extend(out.finish());
                if moved == 0 {
                    break;
                }
            }
            for (id, result) in core.take_completions() {
                self.results.insert(id, result);
            }
        }
        if let Some(rule) = &mut self.cut_when {
            if let Some(node) = rule(&self.cores) {
                self.cut.insert(node);
                self.cut_when = None;
            }
        }
        for frame in frames {
            if self.cut.contains(&frame.from) || self.cut.contains(&frame.to) {
                continue;
            }
            self.chunks_sent += frame.snapshot_chunks.len();
            if let Some(core) = self.cores.get_mut(&frame.to) {
                core.receive(frame);
            }
        }
    }

    fn steps(&mut self, count: usize) {
        for _ in 0..count {
            self.step();
        }
    }

    fn write(&mut self, node: u64, i: u32) -> Result<Response, NodeError> {
        let command = Command::Put {
            key: format!("key{i:03}").into_bytes(),
            value: vec![i as u8; 100],
        };
        self.call(node, Request::Write(command))
    }

    fn hosts(&self, node: u64) -> bool {
        self.cores[&node].range(GROUP).is_some()
    }

    fn leader(&self) -> Option<u64> {
        self.cores
            .iter()
            .find(|(&id, core)| core.leader(GROUP) == Some(id))
            .map(|(&id, _)| id)
    }

    fn wait_leader(&mut self) -> u64 {
        for _ in 0..500 {
            if let Some(leader) = self.leader() {
                return leader;
            }
            self.step();
        }
        panic!("no leader");
    }

    fn call(&mut self, node: u64, request: Request) -> Result<Response, NodeError> {
        let id = self.cores.get_mut(&node).unwrap().submit(GROUP, request);
        for _ in 0..2000 {
            if let Some(result) = self.results.remove(&id) {
                return result;
            }
            self.step();
        }
        panic!("request {id:#x} never completed");
    }
}

#[test]
fn snapshots_compact_bring_up_a_new_replica_and_survive_restart() {
    let mut cluster = Cluster::new();
    let leader = cluster.wait_leader();
    for i in 0..60u32 {
        let command = Command::Put {
            key: format!("key{i:03}").into_bytes(),
            value: vec![i as u8; 100],
        };
        let result = cluster.call(leader, Request::Write(command));
        assert!(matches!(result, Ok(Response::Write(_))), "{result:?}");
    }
    // Every replica snapshotted and compacted its log behind the snapshot.
    for id in 1..=3 {
        let snapshot = cluster.cores[&id].snapshot_index(GROUP).unwrap();
        assert!(
            snapshot > 5,
            "node {id} never snapshotted (index {snapshot})"
        );
    }

    // Add node 4: it has no replica; the leader's messages create one, and
    // (the log being compacted) a chunked snapshot fills it.
    assert!(cluster.cores[&4].range(GROUP).is_none());
    let added = cluster.call(leader, Request::ChangeReplicas(ReplicaChange::Add(4)));
    assert_eq!(added, Ok(Response::Done));
    assert!(cluster.chunks_sent > 1, "{} chunks", cluster.chunks_sent);
    let conf = cluster.cores[&leader].conf_state(GROUP).unwrap().clone();
    assert!(conf.voters.contains(&4), "{conf:?}");
    // Let node 4 apply the commit index it learns with the next heartbeat.
    for _ in 0..20 {
        cluster.step();
    }
    let stale = cluster.call(
        4,
        Request::StaleGet {
            key: b"key059".to_vec(),
        },
    );
    assert_eq!(stale, Ok(Response::Value(Some(vec![59; 100]))));

    // Remove a replica that is not the leader.
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let removed = cluster.call(
        leader,
        Request::ChangeReplicas(ReplicaChange::Remove(victim)),
    );
    assert_eq!(removed, Ok(Response::Done));
    for _ in 0..100 {
        cluster.step();
    }
    assert!(
        cluster.cores[&victim].range(GROUP).is_none(),
        "{}",
        cluster.cores[&victim].describe_group(GROUP)
    );

    // Node 4 restarts from its snapshot and WAL with every value.
    cluster.cores.remove(&4);
    let dir = cluster.dirs[&4].path().to_path_buf();
    let ranges = cluster.ranges.clone();
    cluster.cores.insert(4, open(&dir, 4, &ranges));
    for i in 0..60u32 {
        let value = cluster.call(
            4,
            Request::StaleGet {
                key: format!("key{i:03}").into_bytes(),
            },
        );
        assert_eq!(value, Ok(Response::Value(Some(vec![i as u8; 100]))));
    }
    // And a linearizable read through it reaches the leader.
    let read = cluster.call(
        4,
        Request::Get {
            key: b"key000".to_vec(),
        },
    );
    assert_eq!(read, Ok(Response::Value(Some(vec![0; 100]))));
}

#[test]
fn membership_requests_check_their_arguments() {
    let mut cluster = Cluster::new();
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let at_follower = cluster.call(follower, Request::ChangeReplicas(ReplicaChange::Add(4)));
    assert!(
        matches!(at_follower, Err(NodeError::NotLeader { .. })),
        "{at_follower:?}"
    );
    let no_node = cluster.call(leader, Request::ChangeReplicas(ReplicaChange::Add(0)));
    assert!(
        matches!(no_node, Err(NodeError::InvalidArgument(_))),
        "{no_node:?}"
    );
    let not_voter = cluster.call(leader, Request::TransferLeader { target: 4 });
    assert!(
        matches!(not_voter, Err(NodeError::InvalidArgument(_))),
        "{not_voter:?}"
    );
    let moved = cluster.call(leader, Request::TransferLeader { target: follower });
    assert_eq!(moved, Ok(Response::Done));
    assert_eq!(cluster.leader(), Some(follower));
}

#[test]
fn a_replica_removed_while_cut_off_is_collected_once_it_hears_again() {
    let mut cluster = Cluster::new();
    let leader = cluster.wait_leader();
    for i in 0..20 {
        assert!(cluster.write(leader, i).is_ok());
    }
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    cluster.cut.insert(victim);
    let removed = cluster.call(
        leader,
        Request::ChangeReplicas(ReplicaChange::Remove(victim)),
    );
    assert_eq!(removed, Ok(Response::Done));
    cluster.steps(200);
    // Cut off, it cannot know: it keeps its replica (and campaigns).
    assert!(cluster.hosts(victim));
    assert!(cluster.cores[&victim]
        .conf_state(GROUP)
        .unwrap()
        .voters
        .contains(&victim));

    cluster.cut.clear();
    cluster.steps(200);
    assert!(
        !cluster.hosts(victim),
        "{}",
        cluster.cores[&victim].describe_group(GROUP)
    );
    // The group carries on without it, and nothing recreates it.
    let leader = cluster.wait_leader();
    assert!(cluster.write(leader, 20).is_ok());
    cluster.steps(50);
    assert!(!cluster.hosts(victim));
}

#[test]
fn a_leader_removing_itself_is_kept_until_it_has_handed_over() {
    let mut cluster = Cluster::new();
    let old_leader = cluster.wait_leader();
    for i in 0..20 {
        assert!(cluster.write(old_leader, i).is_ok());
    }
    // Cut the leader off the moment it applies its own removal, before the
    // others can learn that the change committed: they are still in the
    // joint configuration and need its vote.
    cluster.cut_when = Some(Box::new(move |cores: &BTreeMap<u64, NodeCore>| {
        let conf = cores[&old_leader].conf_state(GROUP)?;
        let member = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .any(|&v| v == old_leader);
        (!member).then_some(old_leader)
    }));
    let id = cluster.cores.get_mut(&old_leader).unwrap().submit(
        GROUP,
        Request::ChangeReplicas(ReplicaChange::Remove(old_leader)),
    );
    cluster.steps(300);
    assert!(
        cluster.cut.contains(&old_leader),
        "the removal never applied"
    );
    // However long it is cut off, it must not destroy itself yet.
    assert!(
        cluster.hosts(old_leader),
        "destroyed before handing over: {}",
        cluster.cores[&old_leader].describe_group(GROUP)
    );

    cluster.cut.clear();
    cluster.steps(300);
    assert!(
        !cluster.hosts(old_leader),
        "{}",
        cluster.cores[&old_leader].describe_group(GROUP)
    );
    let leader = cluster.wait_leader();
    assert_ne!(leader, old_leader);
    assert!(cluster.write(leader, 20).is_ok());
    for i in 0..21 {
        let read = cluster.call(
            leader,
            Request::Get {
                key: format!("key{i:03}").into_bytes(),
            },
        );
        assert_eq!(read, Ok(Response::Value(Some(vec![i as u8; 100]))));
    }
    // The request itself ended, one way or another.
    assert!(cluster.results.contains_key(&id));
}
