//! Three node cores, many ranges each, on real WALs: writes and linearizable
//! reads through any node, quiescence of idle groups, one WAL sync per round
//! for all groups, and a restart that recovers every range from the WAL.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla::node::snapshots::DirSnapshotStore;
use flotilla::node::{NodeConfig, NodeCore, NodeError, RangeDescriptor, Request, Response};
use flotilla::range::{Command, CommandResult, KeySpan};
use flotilla::wal::{Wal, WalConfig};
use flotilla_transport::FrameBuilder;

const NODES: [u64; 3] = [1, 2, 3];

fn ranges(count: u64) -> Vec<RangeDescriptor> {
    // Even splits of the key space by the first byte of the key.
    (0..count)
        .map(|i| {
            let start = if i == 0 {
                Vec::new()
            } else {
                vec![(i * 256 / count) as u8]
            };
            let end = if i + 1 == count {
                Vec::new()
            } else {
                vec![((i + 1) * 256 / count) as u8]
            };
            RangeDescriptor {
                group: i + 1,
                span: KeySpan::new(start, end).unwrap(),
                replicas: NODES.to_vec(),
                generation: 1,
            }
        })
        .collect()
}

fn range_of(ranges: &[RangeDescriptor], key: &[u8]) -> u64 {
    ranges.iter().find(|r| r.span.contains(key)).unwrap().group
}

struct Cluster {
    dirs: BTreeMap<u64, tempfile::TempDir>,
    cores: BTreeMap<u64, NodeCore>,
    ranges: Vec<RangeDescriptor>,
    results: BTreeMap<u64, Result<Response, NodeError>>,
    frames_sent: u64,
    frames_by_pair: BTreeMap<(u64, u64), u64>,
}

fn open(dir: &std::path::Path, id: u64, ranges: &[RangeDescriptor]) -> NodeCore {
    let wal = Arc::new(
        Wal::open(
            dir,
            WalConfig {
                segment_bytes: 1 << 20,
                zero_fill_segments: false,
                ..WalConfig::default()
            },
        )
        .unwrap(),
    );
    let snapshots = Arc::new(DirSnapshotStore::open(dir.join("snap")).unwrap());
    NodeCore::open(id, wal, snapshots, NodeConfig::default(), ranges).unwrap()
}

impl Cluster {
    fn new(range_count: u64) -> Self {
        let ranges = ranges(range_count);
        let mut dirs = BTreeMap::new();
        let mut cores = BTreeMap::new();
        for id in NODES {
            let dir = tempfile::tempdir().unwrap();
            cores.insert(id, open(dir.path(), id, &ranges));
            dirs.insert(id, dir);
        }
        Cluster {
            dirs,
            cores,
            ranges,
            results: BTreeMap::new(),
            frames_sent: 0,
            frames_by_pair: BTreeMap::new(),
        }
    }

    /// Rounds and message delivery until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = 0;
            let mut frames = Vec::new();
            for core in self.cores.values_mut() {
                let mut out = FrameBuilder::new(core.id());
                moved += core.round(&mut out).unwrap();
                frames.extend(out.finish());
                for (id, result) in core.take_completions() {
                    self.results.insert(id, result);
                }
            }
            for frame in frames {
                self.frames_sent += 1;
                *self
                    .frames_by_pair
                    .entry((frame.from, frame.to))
                    .or_default() += 1;
                if frame
                    .heartbeat
                    .as_ref()
                    .is_some_and(|h| h.groups.is_empty() && h.acks.is_empty())
                    && frame.messages.is_empty()
                {
                    // A bare liveness beat: delivered, but it moves nothing.
                } else {
                    moved += 1;
                }
                if let Some(core) = self.cores.get_mut(&frame.to) {
                    core.receive(frame);
                }
            }
            if moved == 0 {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for core in self.cores.values_mut() {
                core.tick();
            }
            self.settle();
        }
    }

    /// Like a client: retries while the range has no leader.
    fn request(&mut self, node: u64, key: &[u8], request: Request) -> Result<Response, NodeError> {
        let group = range_of(&self.ranges, key);
        for _ in 0..100 {
            let id = self
                .cores
                .get_mut(&node)
                .unwrap()
                .submit(group, request.clone());
            let result = loop {
                self.settle();
                if let Some(result) = self.results.remove(&id) {
                    break result;
                }
                self.tick(1);
            };
            if !matches!(result, Err(NodeError::Unavailable(_))) {
                return result;
            }
            self.tick(1);
        }
        panic!("range {group} stayed unavailable");
    }

    fn put(&mut self, node: u64, key: &[u8], value: &[u8]) {
        let command = Command::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let result = self.request(node, key, Request::Write(command));
        assert_eq!(result, Ok(Response::Write(CommandResult::Applied)));
    }

    fn get(&mut self, node: u64, key: &[u8]) -> Option<Vec<u8>> {
        match self.request(node, key, Request::Get { key: key.to_vec() }) {
            Ok(Response::Value(value)) => value,
            other => panic!("get {key:?} at node {node}: {other:?}"),
        }
    }
}

#[test]
fn ranges_elect_write_read_quiesce_and_recover() {
    let mut cluster = Cluster::new(40);
    cluster.tick(40);
    let leaders: usize = cluster.cores.values().map(NodeCore::leader_count).sum();
    assert_eq!(leaders, 40, "every range elects one leader");

    // Writes through every node (followers forward), reads through others.
    let keys: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b, b'k']).collect();
    for (i, key) in keys.iter().enumerate() {
        let node = NODES[i % 3];
        cluster.put(node, key, format!("v{i}").as_bytes());
    }
    for (i, key) in keys.iter().enumerate() {
        let node = NODES[(i + 1) % 3];
        assert_eq!(cluster.get(node, key), Some(format!("v{i}").into_bytes()));
    }
    assert_eq!(cluster.get(2, b"\x07absent"), None);

    // A key outside the range asked for is a typed error.
    let wrong = cluster
        .cores
        .get_mut(&1)
        .unwrap()
        .submit(1, Request::Get { key: vec![255] });
    cluster.settle();
    assert!(matches!(
        cluster.results.remove(&wrong),
        Some(Err(NodeError::RangeMismatch(_)))
    ));

    // Idle groups quiesce: nothing is ticked any more.
    cluster.tick(60);
    for core in cluster.cores.values() {
        assert_eq!(
            core.awake_count(),
            0,
            "node {} still has awake groups",
            core.id()
        );
    }

    // Restart node 3 from its WAL: every range is rebuilt by replaying it.
    cluster.cores.remove(&3);
    let dir = cluster.dirs[&3].path().to_path_buf();
    let ranges = cluster.ranges.clone();
    cluster.cores.insert(3, open(&dir, 3, &ranges));
    cluster.tick(5);
    for (i, key) in keys.iter().enumerate().step_by(7) {
        assert_eq!(cluster.get(3, key), Some(format!("v{i}").into_bytes()));
    }
}

#[test]
fn one_wal_sync_serves_many_groups_per_round() {
    let mut cluster = Cluster::new(64);
    cluster.tick(40);
    // 64 writes to 64 different ranges in the same round at node 1.
    let ids: Vec<u64> = (0..64u64)
        .map(|i| {
            let key = vec![(i * 4) as u8, 1];
            let group = range_of(&cluster.ranges, &key);
            cluster.cores.get_mut(&1).unwrap().submit(
                group,
                Request::Write(Command::Put {
                    key,
                    value: b"x".to_vec(),
                }),
            )
        })
        .collect();
    let mut out = FrameBuilder::new(1);
    let core = cluster.cores.get_mut(&1).unwrap();
    let groups_in_round = core.round(&mut out).unwrap();
    assert!(
        groups_in_round >= 20,
        "{groups_in_round} groups in one round"
    );
    let frames: Vec<_> = out.finish().collect();
    assert!(
        frames.len() <= 2,
        "one frame per destination node, got {}",
        frames.len()
    );
    for frame in frames {
        if let Some(core) = cluster.cores.get_mut(&frame.to) {
            core.receive(frame);
        }
    }
    cluster.settle();
    for id in ids {
        assert_eq!(
            cluster.results.remove(&id),
            Some(Ok(Response::Write(CommandResult::Applied)))
        );
    }
}

#[test]
fn idle_node_pairs_exchange_one_frame_per_tick() {
    let mut cluster = Cluster::new(200);
    cluster.tick(40);
    cluster.put(1, b"\x10a", b"v");
    cluster.tick(60); // every group quiesces
    for core in cluster.cores.values() {
        assert_eq!(core.awake_count(), 0);
    }
    cluster.frames_by_pair.clear();
    cluster.tick(20);
    for from in NODES {
        for to in NODES.iter().copied().filter(|&t| t != from) {
            assert_eq!(
                cluster
                    .frames_by_pair
                    .get(&(from, to))
                    .copied()
                    .unwrap_or(0),
                20,
                "{from} -> {to}: one frame per tick for 200 quiesced groups"
            );
        }
    }
}

#[test]
fn a_crashed_node_loses_no_acknowledged_write_and_its_ranges_get_new_leaders() {
    let mut cluster = Cluster::new(120);
    cluster.tick(40);
    let keys: Vec<Vec<u8>> = (0..=255u8).step_by(2).map(|b| vec![b, b'x']).collect();
    for (i, key) in keys.iter().enumerate() {
        cluster.put(NODES[i % 3], key, format!("before-{i}").as_bytes());
    }
    cluster.tick(60); // quiesce everything: followers stop ticking
    let victim = *NODES
        .iter()
        .max_by_key(|&&id| cluster.cores[&id].leader_count())
        .unwrap();
    let led: Vec<u64> = cluster
        .ranges
        .iter()
        .map(|r| r.group)
        .filter(|&g| cluster.cores[&victim].leader(g) == Some(victim))
        .collect();
    assert!(!led.is_empty());
    cluster.cores.remove(&victim);
    // Peer-down detection (10 ticks without a beat), then one election in
    // which the survivors are staggered so that one campaigns alone.
    cluster.tick(14);
    let survivors: Vec<u64> = NODES.iter().copied().filter(|&n| n != victim).collect();
    for &node in &survivors {
        assert_eq!(cluster.cores[&node].peers_down(), vec![victim]);
    }
    for group in led {
        let leader = cluster.cores[&survivors[0]].leader(group);
        assert!(
            leader.is_some_and(|l| l != victim),
            "group {group} has no new leader: {leader:?}"
        );
    }
    for (i, key) in keys.iter().enumerate() {
        let node = survivors[i % 2];
        assert_eq!(
            cluster.get(node, key),
            Some(format!("before-{i}").into_bytes())
        );
    }
    cluster.put(survivors[0], b"\x42after", b"ok");
    assert_eq!(
        cluster.get(survivors[1], b"\x42after"),
        Some(b"ok".to_vec())
    );
}

#[test]
fn the_node_reports_its_work_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut cluster = Cluster::new(8);
        cluster.tick(40);
        for i in 0..16u8 {
            cluster.put(1, &[i * 16, 1], b"v");
        }
        assert_eq!(cluster.get(2, &[0, 1]), Some(b"v".to_vec()));
        cluster.tick(60);
    });
    let values: Vec<(String, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_string(), value))
        .collect();
    let counter = |name: &str| -> u64 {
        values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum()
    };
    assert!(counter("flotilla_elections_won_total") >= 8);
    assert!(counter("flotilla_proposals_total") >= 16);
    assert!(counter("flotilla_reads_total") >= 1);
    assert!(counter("flotilla_applied_entries_total") >= 16 * 3);
    assert!(counter("flotilla_rounds_total") > 0);
    assert!(counter("flotilla_liveness_beats_total") >= 3 * 2 * 100);
    let quiesced = values
        .iter()
        .find(|(n, _)| n == "flotilla_quiesced_groups")
        .map(|(_, v)| match v {
            DebugValue::Gauge(g) => g.into_inner(),
            _ => -1.0,
        });
    // Gauges add every core's share: three nodes in this process, eight
    // groups each, all quiesced.
    assert_eq!(quiesced, Some(24.0), "every group quiesced at the end");
}
