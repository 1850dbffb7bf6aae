//! The public API on a real 3-node in-process cluster: nodes with threads,
//! WALs on disk, frames through the in-process transport.

use std::sync::Arc;
use std::time::Duration;

use flotilla::node::NodeConfig;
use flotilla::range::Command;
use flotilla::{Bootstrap, Error, Node, NodeOptions};
use flotilla_transport::local::LocalNetwork;

struct TestCluster {
    _dirs: Vec<tempfile::TempDir>,
    network: LocalNetwork,
    nodes: Vec<Option<Node>>,
}

fn cluster(ranges: u64) -> TestCluster {
    let network = LocalNetwork::new(7);
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let dir = tempfile::tempdir().unwrap();
        let (transport, inbox) = network.register(id, 65_536);
        let mut options = NodeOptions::new(
            id,
            dir.path(),
            Bootstrap::EvenSplits {
                count: ranges,
                nodes: vec![1, 2, 3],
            },
        );
        options.tick_interval = Duration::from_millis(5);
        options.node = NodeConfig {
            // 5 ms ticks on a loaded 2-core machine: give requests 2 s.
            request_timeout_ticks: 400,
            ..NodeConfig::default()
        };
        options.wal.segment_bytes = 4 << 20;
        options.wal.zero_fill_segments = false;
        nodes.push(Some(
            Node::open(options, Arc::new(transport), inbox).unwrap(),
        ));
        dirs.push(dir);
    }
    TestCluster {
        _dirs: dirs,
        network,
        nodes,
    }
}

fn key(i: u32) -> Vec<u8> {
    // Spread over the whole key space (ranges split on the first two bytes).
    let spread = i.wrapping_mul(2_654_435_761);
    let mut key = spread.to_be_bytes().to_vec();
    key.extend_from_slice(format!("-{i}").as_bytes());
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_linearizable_reads_through_every_node() {
    let cluster = cluster(16);
    let dbs: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| n.as_ref().unwrap().db())
        .collect();
    for i in 0..200u32 {
        dbs[i as usize % 3]
            .put(&key(i), format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    for i in 0..200u32 {
        let value = dbs[(i as usize + 1) % 3].get(&key(i)).await.unwrap();
        assert_eq!(value, Some(format!("v{i}").into_bytes()));
    }
    assert!(dbs[0].delete(&key(3)).await.unwrap());
    assert_eq!(dbs[1].get(&key(3)).await.unwrap(), None);
    let (ok, current) = dbs[2].cas(&key(4), Some(b"v4"), Some(b"w4")).await.unwrap();
    assert!(ok && current == Some(b"v4".to_vec()));
    let (ok, current) = dbs[0].cas(&key(4), Some(b"v4"), Some(b"x4")).await.unwrap();
    assert!(!ok && current == Some(b"w4".to_vec()));
    let rows = dbs[1].scan(&key(5), None, 3).await.unwrap();
    assert_eq!(rows[0].0, key(5));
    let stats = cluster.nodes[0].as_ref().unwrap().stats();
    assert!(stats.rounds > 0);
    drop(cluster.network);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors() {
    let cluster = cluster(4);
    let db = cluster.nodes[0].as_ref().unwrap().db();
    let long_key = vec![1u8; 5000];
    assert!(matches!(
        db.put(&long_key, b"v").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        db.put(b"", b"v").await,
        Err(Error::InvalidArgument(_))
    ));
    let big_value = vec![0u8; (1 << 20) + 1];
    assert!(matches!(
        db.put(b"k", &big_value).await,
        Err(Error::InvalidArgument(_))
    ));
    let across = vec![
        Command::Put {
            key: vec![0x00, 1],
            value: b"a".to_vec(),
        },
        Command::Put {
            key: vec![0xff, 1],
            value: b"b".to_vec(),
        },
    ];
    assert!(matches!(
        db.batch(across).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        db.scan(b"m", Some(b"a"), 10).await,
        Err(Error::InvalidArgument(_))
    ));
    let within = vec![
        Command::Put {
            key: vec![0x01, 1],
            value: b"a".to_vec(),
        },
        Command::Put {
            key: vec![0x01, 2],
            value: b"b".to_vec(),
        },
    ];
    db.batch(within).await.unwrap();
    assert_eq!(db.get(&[0x01, 2]).await.unwrap(), Some(b"b".to_vec()));
}

#[test]
fn the_blocking_facade_works_without_a_runtime() {
    let cluster = cluster(4);
    let db = cluster.nodes[1].as_ref().unwrap().db().blocking();
    db.put(b"hello", b"world").unwrap();
    assert_eq!(db.get(b"hello").unwrap(), Some(b"world".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_crash_loses_no_acknowledged_write() {
    let mut cluster = cluster(12);
    let db1 = cluster.nodes[0].as_ref().unwrap().db();
    for i in 0..120u32 {
        db1.put(&key(i), b"before").await.unwrap();
    }
    // Stop node 3 and cut it off: its ranges fail over to nodes 1 and 2.
    cluster.network.isolate(3);
    cluster.network.unregister(3);
    if let Some(node) = cluster.nodes[2].take() {
        node.shutdown();
    }
    let db2 = cluster.nodes[1].as_ref().unwrap().db();
    for i in 0..120u32 {
        assert_eq!(
            db2.get(&key(i)).await.unwrap(),
            Some(b"before".to_vec()),
            "key {i}"
        );
        db2.put(&key(i), b"after").await.unwrap();
    }
    for i in 0..120u32 {
        assert_eq!(db1.get(&key(i)).await.unwrap(), Some(b"after".to_vec()));
    }
}
