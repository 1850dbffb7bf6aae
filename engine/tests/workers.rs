//! Nodes with several raft worker threads: requests reach the worker owning
//! their group, frames are split among workers, a restart with another
//! worker count recovers everything, and liveness keeps idle groups quiet.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::node::{NodeConfig, NodeCore, RangeDescriptor};
use flotilla::range::KeySpan;
use flotilla::runtime::worker_of;
use flotilla::{Bootstrap, Db, Node, NodeOptions};
use flotilla_transport::local::LocalNetwork;
use flotilla_transport::FrameBuilder;

const NODES: [u64; 3] = [1, 2, 3];
const TICK_MS: u64 = 5;

fn open_node(
    network: &LocalNetwork,
    id: u64,
    dir: &Path,
    bootstrap: Bootstrap,
    workers: usize,
) -> Node {
    let (transport, inbox) = network.register(id, 65_536);
    let mut options = NodeOptions::new(id, dir, bootstrap);
    options.workers = workers;
    options.tick_interval = Duration::from_millis(TICK_MS);
    options.node = NodeConfig {
        // 5 ms ticks on a loaded 2-core machine: give requests 2 s.
        request_timeout_ticks: 400,
        // A peer is declared down after 200 ms of silence: long enough not
        // to be fooled by a starved thread, short enough that the quiet
        // tests see a node whose beats are missing declared down.
        peer_down_after_ticks: 40,
        ..NodeConfig::default()
    };
    options.wal.segment_bytes = 4 << 20;
    options.wal.zero_fill_segments = false;
    let node = Node::open(options, Arc::new(transport), inbox)
        .unwrap_or_else(|e| panic!("open node {id}: {e}"));
    assert_eq!(node.workers(), workers);
    node
}

/// Three nodes with `workers` workers each, over `dirs`, on a fresh network.
fn cluster(
    dirs: &[tempfile::TempDir],
    bootstrap: &Bootstrap,
    workers: usize,
) -> (LocalNetwork, Vec<Node>) {
    let network = LocalNetwork::new(11);
    let nodes = NODES
        .iter()
        .zip(dirs)
        .map(|(&id, dir)| open_node(&network, id, dir.path(), bootstrap.clone(), workers))
        .collect();
    (network, nodes)
}

fn dirs() -> Vec<tempfile::TempDir> {
    NODES
        .iter()
        .map(|_| tempfile::tempdir().expect("temporary directory"))
        .collect()
}

fn even(ranges: u64) -> Bootstrap {
    Bootstrap::EvenSplits {
        count: ranges,
        nodes: NODES.to_vec(),
    }
}

/// A key in range `i` of `ranges` even splits (they split on the first two
/// key bytes).
fn key_in_range(i: u64, ranges: u64) -> Vec<u8> {
    let prefix = ((i * 65_536 + 65_535) / ranges) as u16;
    let mut key = prefix.to_be_bytes().to_vec();
    key.extend_from_slice(format!("/key-{i}").as_bytes());
    key
}

async fn put_every_range(db: &Db, ranges: u64, value: &str) {
    for i in 0..ranges {
        db.put(&key_in_range(i, ranges), format!("{value}-{i}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("put to range {i}: {e}"));
    }
}

async fn check_every_range(db: &Db, ranges: u64, value: &str) {
    for i in 0..ranges {
        let got = db
            .get(&key_in_range(i, ranges))
            .await
            .unwrap_or_else(|e| panic!("get from range {i}: {e}"));
        assert_eq!(
            got,
            Some(format!("{value}-{i}").into_bytes()),
            "range {i} holds the wrong value"
        );
    }
}

fn total_leaders(nodes: &[Node]) -> usize {
    nodes.iter().map(|n| n.stats().leaders).sum()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_per_node_serve_every_range_through_any_node() {
    let ranges = 64;
    // Both workers own groups, so requests and frames are really split.
    let owners: std::collections::BTreeSet<usize> =
        (1..=ranges).map(|group| worker_of(group, 2)).collect();
    assert_eq!(owners.len(), 2);
    let dirs = dirs();
    let (network, nodes) = cluster(&dirs, &even(ranges), 2);
    put_every_range(&nodes[0].db(), ranges, "v").await;
    check_every_range(&nodes[1].db(), ranges, "v").await;
    check_every_range(&nodes[2].db(), ranges, "v").await;
    // The stats sum over workers: every group has exactly one leader.
    wait_until("one leader per range", Duration::from_secs(10), || {
        total_leaders(&nodes) == ranges as usize
    });
    assert!(nodes.iter().all(|n| n.stats().rounds > 0));
    drop(nodes);
    drop(network);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_worker_count_recovers_every_value() {
    let ranges = 48;
    let dirs = dirs();
    let (network, nodes) = cluster(&dirs, &even(ranges), 2);
    put_every_range(&nodes[0].db(), ranges, "first").await;
    for node in nodes {
        node.shutdown();
    }
    drop(network);

    // Ownership is recomputed for three workers: most groups move, and
    // their logs are found in the shared WAL all the same.
    let moved = (1..=ranges)
        .filter(|&g| worker_of(g, 2) != worker_of(g, 3))
        .count();
    assert!(moved > 0);
    let (network, nodes) = cluster(&dirs, &even(ranges), 3);
    check_every_range(&nodes[1].db(), ranges, "first").await;
    put_every_range(&nodes[2].db(), ranges, "second").await;
    for node in nodes {
        node.shutdown();
    }
    drop(network);

    // And back to a single worker owning everything.
    let (network, nodes) = cluster(&dirs, &even(ranges), 1);
    check_every_range(&nodes[0].db(), ranges, "second").await;
    drop(nodes);
    drop(network);
}

/// Samples the cluster for `duration`; panics if any group wakes. Then
/// checks that each node sent at most one frame per peer per tick: only
/// liveness beats flow between quiet nodes, one per node pair and tick
/// whatever the number of workers.
fn assert_stays_quiet(nodes: &[Node], duration: Duration) {
    let frames_before: Vec<u64> = nodes.iter().map(|n| n.stats().frames_sent).collect();
    let started = Instant::now();
    while started.elapsed() < duration {
        for node in nodes {
            let awake = node.stats().awake_groups;
            assert_eq!(
                awake,
                0,
                "node {} woke {awake} groups after {:?} of quiet: a peer was declared down",
                node.id(),
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // A worker never ticks faster than its interval (a late tick delays the
    // next), so this bound holds however loaded the machine is.
    let ticks = started.elapsed().as_millis() as u64 / TICK_MS + 2;
    let peers = NODES.len() as u64 - 1;
    for (node, before) in nodes.iter().zip(frames_before) {
        let sent = node.stats().frames_sent - before;
        assert!(
            sent <= peers * ticks,
            "node {} sent {sent} frames in at most {ticks} ticks to {peers} peers",
            node.id()
        );
    }
}

/// Opens the cluster with two workers per node, writes a key to every
/// range through node 1, lets every group quiesce, checks the cluster
/// stays quiet, and reads the keys back through node 2.
async fn settle_and_stay_quiet(bootstrap: Bootstrap, ranges: u64) {
    let dirs = dirs();
    let (network, nodes) = cluster(&dirs, &bootstrap, 2);
    put_every_range(&nodes[0].db(), ranges, "v").await;
    wait_until("every group quiesced", Duration::from_secs(20), || {
        nodes.iter().all(|n| n.stats().awake_groups == 0)
    });
    // 200 ticks, five times the time after which a silent peer is declared
    // down (which wakes the groups it leads).
    assert_stays_quiet(&nodes, Duration::from_secs(1));
    check_every_range(&nodes[1].db(), ranges, "v").await;
    drop(nodes);
    drop(network);
}

fn descriptor(group: u64, start: &[u8], end: &[u8], replicas: &[u64]) -> RangeDescriptor {
    RangeDescriptor {
        group,
        span: KeySpan::new(start.to_vec(), end.to_vec()).expect("a key span"),
        replicas: replicas.to_vec(),
        generation: 1,
    }
}

/// The first group id owned by `worker` of two.
fn group_of_worker(worker: usize) -> u64 {
    (1..)
        .find(|&g| worker_of(g, 2) == worker)
        .expect("every worker owns some group id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesced_groups_stay_quiet_with_several_workers() {
    // Every worker's core hears the peers' liveness beats, though only one
    // worker per node sends them.
    settle_and_stay_quiet(even(16), 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_is_sent_when_worker_zero_owns_no_group() {
    // One group, owned by worker 1: worker 0 shares no group with any peer,
    // so worker 1 must send the node's liveness beats.
    let only = descriptor(group_of_worker(1), b"", b"", &NODES);
    settle_and_stay_quiet(Bootstrap::Ranges(vec![only]), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_peer_gets_liveness_from_one_worker_when_workers_share_peers() {
    // Worker 0 owns a group on nodes 1 and 2, worker 1 one on all three
    // nodes. On nodes 1 and 2 both workers' cores beat each other; node 3
    // hears from worker 1 only. One beat per node pair and tick still.
    let left = descriptor(group_of_worker(0), b"", &[0x80], &[1, 2]);
    let right = descriptor(group_of_worker(1), &[0x80], b"", &NODES);
    settle_and_stay_quiet(Bootstrap::Ranges(vec![left, right]), 2).await;
}

#[test]
fn a_core_sends_liveness_beats_only_if_configured_to() {
    let ranges = [descriptor(1, b"", b"", &NODES)];
    for sends_liveness in [true, false] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = flotilla::wal::WalConfig {
            segment_bytes: 1 << 20,
            zero_fill_segments: false,
            ..flotilla::wal::WalConfig::default()
        };
        let wal = Arc::new(flotilla::wal::Wal::open(dir.path(), config).expect("open the WAL"));
        let config = NodeConfig {
            sends_liveness,
            ..NodeConfig::default()
        };
        let snapshots = Arc::new(flotilla::node::snapshots::MemSnapshotStore::new());
        let mut core = NodeCore::open(1, wal, snapshots, config, &ranges).expect("open the core");
        // One tick: far from any election timeout, so only the liveness
        // beat has reason to leave.
        core.tick();
        let mut out = FrameBuilder::new(1);
        core.round(&mut out).expect("a round");
        let beaten: Vec<(u64, u64)> = out
            .finish()
            .filter_map(|f| f.heartbeat.map(|h| (f.to, h.tick)))
            .collect();
        let expected = if sends_liveness {
            vec![(2, 1), (3, 1)]
        } else {
            Vec::new()
        };
        assert_eq!(beaten, expected, "sends_liveness = {sends_liveness}");
    }
}
