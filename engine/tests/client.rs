//! The client protocol against a real node: `serve` answering encoded
//! requests, and `RemoteDb` failing over between nodes by its documented
//! rule (reads move on, writes with an unknown outcome are `Timeout`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla::client::{
    decode_response, encode_request, encode_response, serve, Caller, ClientRequest, ClientResponse,
    RemoteDb, WireBatchResult, WireCommand, WireError, WireOpResult, SCAN_LIMIT_MAX,
};
use flotilla::node::NodeConfig;
use flotilla::range::{Command, CommandResult};
use flotilla::{Bootstrap, Db, Error, Node, NodeOptions};
use flotilla_transport::local::LocalNetwork;

/// A one-node cluster with two ranges (split at `0x80`).
struct OneNode {
    _dir: tempfile::TempDir,
    _network: LocalNetwork,
    node: Node,
}

fn one_node() -> OneNode {
    let dir = tempfile::tempdir().expect("temporary directory");
    let network = LocalNetwork::new(3);
    let (transport, inbox) = network.register(1, 1024);
    let mut options = NodeOptions::new(
        1,
        dir.path(),
        Bootstrap::EvenSplits {
            count: 2,
            nodes: vec![1],
        },
    );
    options.workers = 1;
    options.tick_interval = Duration::from_millis(5);
    options.node = NodeConfig {
        // 5 ms ticks on a loaded 2-core machine: give requests 2 s.
        request_timeout_ticks: 400,
        ..NodeConfig::default()
    };
    options.wal.segment_bytes = 4 << 20;
    options.wal.zero_fill_segments = false;
    let node = Node::open(options, Arc::new(transport), inbox).expect("open node 1");
    OneNode {
        _dir: dir,
        _network: network,
        node,
    }
}

async fn ask(db: &Db, request: ClientRequest) -> ClientResponse {
    decode_response(&serve(db, &encode_request(&request)).await).expect("a decodable response")
}

fn put(key: &[u8], value: &[u8]) -> ClientRequest {
    ClientRequest::Put {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn get(key: &[u8]) -> ClientRequest {
    ClientRequest::Get { key: key.to_vec() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_reads_writes_and_batches() {
    let cluster = one_node();
    let db = cluster.node.db();
    assert_eq!(ask(&db, put(b"apple", b"red")).await, ClientResponse::Done);
    assert_eq!(
        ask(&db, put(b"avocado", b"green")).await,
        ClientResponse::Done
    );
    assert_eq!(
        ask(&db, get(b"apple")).await,
        ClientResponse::Value(Some(b"red".to_vec()))
    );
    assert_eq!(ask(&db, get(b"banana")).await, ClientResponse::Value(None));
    let cas = |expected: &[u8], new: &[u8]| ClientRequest::Cas {
        key: b"apple".to_vec(),
        expected: Some(expected.to_vec()),
        new: Some(new.to_vec()),
    };
    assert_eq!(
        ask(&db, cas(b"red", b"yellow")).await,
        ClientResponse::Cas {
            swapped: true,
            current: Some(b"red".to_vec())
        }
    );
    assert_eq!(
        ask(&db, cas(b"red", b"blue")).await,
        ClientResponse::Cas {
            swapped: false,
            current: Some(b"yellow".to_vec())
        }
    );
    let scan = ClientRequest::Scan {
        start: b"a".to_vec(),
        end: Some(b"b".to_vec()),
        limit: 10,
    };
    assert_eq!(
        ask(&db, scan).await,
        ClientResponse::Rows(vec![
            (b"apple".to_vec(), b"yellow".to_vec()),
            (b"avocado".to_vec(), b"green".to_vec()),
        ])
    );
    let batch = ClientRequest::Batch(vec![
        WireCommand::Put {
            key: b"cherry".to_vec(),
            value: b"dark".to_vec(),
        },
        WireCommand::Delete {
            key: b"avocado".to_vec(),
        },
        WireCommand::Cas {
            key: b"apple".to_vec(),
            expected: Some(b"yellow".to_vec()),
            new: None,
        },
    ]);
    assert_eq!(
        ask(&db, batch).await,
        ClientResponse::Batch(WireBatchResult::Committed(vec![
            WireOpResult::Applied,
            WireOpResult::Deleted { count: 1 },
            WireOpResult::Cas {
                succeeded: true,
                current: Some(b"yellow".to_vec())
            },
        ]))
    );
    assert_eq!(
        ask(
            &db,
            ClientRequest::Delete {
                key: b"cherry".to_vec()
            }
        )
        .await,
        ClientResponse::Deleted { existed: true }
    );
    let stale = ClientRequest::ScanStale {
        start: b"a".to_vec(),
        end: None,
        limit: 10,
    };
    assert_eq!(ask(&db, stale).await, ClientResponse::Rows(Vec::new()));
    match ask(&db, ClientRequest::Ranges).await {
        ClientResponse::Ranges(ranges) => {
            assert_eq!(ranges.len(), 2);
            assert_eq!(ranges[0].end, vec![0x80, 0]);
            assert_eq!(ranges[1].replicas, vec![1]);
        }
        other => panic!("expected the ranges, got {other:?}"),
    }
}

fn invalid_argument(response: ClientResponse) -> String {
    match response {
        ClientResponse::Error(WireError::InvalidArgument(message)) => message,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_bad_requests_with_typed_errors() {
    let cluster = one_node();
    let db = cluster.node.db();
    let oversized = invalid_argument(ask(&db, put(&[7u8; 5000], b"v")).await);
    assert!(oversized.contains("5000 bytes"), "{oversized}");
    let scan = ClientRequest::Scan {
        start: b"a".to_vec(),
        end: None,
        limit: SCAN_LIMIT_MAX + 1,
    };
    let too_many = invalid_argument(ask(&db, scan).await);
    assert!(too_many.contains("at most 10000 rows"), "{too_many}");
    let across = ClientRequest::Batch(vec![
        WireCommand::Put {
            key: vec![0x00, 1],
            value: b"a".to_vec(),
        },
        WireCommand::Put {
            key: vec![0xff, 1],
            value: b"b".to_vec(),
        },
    ]);
    invalid_argument(ask(&db, across).await);
    for garbage in [&b""[..], b"hello", b"FLQ\x09rest"] {
        let answer = decode_response(&serve(&db, garbage).await).expect("a decodable response");
        let message = invalid_argument(answer);
        assert!(message.starts_with("bad client request"), "{message}");
    }
    // Nothing of the refused requests took effect.
    assert_eq!(ask(&db, get(&[0x00, 1])).await, ClientResponse::Value(None));
}

#[test]
fn serve_can_run_on_any_tokio_worker() {
    // The transport's handler boxes `serve` as a `Send` future.
    fn send<T: Send>(_: &T) {}
    let cluster = one_node();
    let db = cluster.node.db();
    let future = serve(&db, b"");
    send(&future);
}

/// Serves requests in-process with `serve`, counting them.
#[derive(Debug)]
struct Local {
    db: Db,
    calls: AtomicUsize,
}

impl Caller for Local {
    fn call(
        &self,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { Ok(serve(&self.db, &request).await) })
    }
}

/// How a fake node behaves.
#[derive(Debug)]
enum Behaviour {
    /// The call fails: nothing comes back.
    Down,
    /// Never answers.
    Silent,
    /// Always gives this answer.
    Answer(Vec<u8>),
}

#[derive(Debug)]
struct Fake {
    behaviour: Behaviour,
    calls: AtomicUsize,
}

impl Caller for Fake {
    fn call(
        &self,
        _request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match &self.behaviour {
            Behaviour::Down => Box::pin(async { Err("connection refused".to_string()) }),
            Behaviour::Silent => Box::pin(std::future::pending()),
            Behaviour::Answer(bytes) => {
                let bytes = bytes.clone();
                Box::pin(async move { Ok(bytes) })
            }
        }
    }
}

fn fake(behaviour: Behaviour) -> Arc<Fake> {
    Arc::new(Fake {
        behaviour,
        calls: AtomicUsize::new(0),
    })
}

fn answering(response: ClientResponse) -> Arc<Fake> {
    fake(Behaviour::Answer(encode_response(&response)))
}

fn failing_with(error: WireError) -> Arc<Fake> {
    answering(ClientResponse::Error(error))
}

fn local(db: Db) -> Arc<Local> {
    Arc::new(Local {
        db,
        calls: AtomicUsize::new(0),
    })
}

fn remote(nodes: Vec<(u64, Arc<dyn Caller>)>) -> RemoteDb {
    RemoteDb::new(nodes).expect("a remote handle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_db_runs_every_operation_through_a_node() {
    let cluster = one_node();
    let db = remote(vec![(1, local(cluster.node.db()))]);
    db.put(b"k1", b"one").await.unwrap();
    db.put(b"k2", b"two").await.unwrap();
    assert_eq!(db.get(b"k1").await.unwrap(), Some(b"one".to_vec()));
    assert_eq!(db.get_stale(b"k2").await.unwrap(), Some(b"two".to_vec()));
    assert_eq!(
        db.cas(b"k1", Some(b"one"), Some(b"uno")).await.unwrap(),
        (true, Some(b"one".to_vec()))
    );
    assert_eq!(
        db.cas(b"k1", None, Some(b"x")).await.unwrap(),
        (false, Some(b"uno".to_vec()))
    );
    assert!(db.delete(b"k2").await.unwrap());
    assert!(!db.delete(b"k2").await.unwrap());
    let result = db
        .batch(vec![
            Command::Put {
                key: b"k3".to_vec(),
                value: b"three".to_vec(),
            },
            Command::Cas {
                key: b"k1".to_vec(),
                expected: Some(b"nope".to_vec()),
                new: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        result,
        CommandResult::BatchAborted {
            failed_op: 1,
            current: Some(b"uno".to_vec())
        }
    );
    let rows = db.scan(b"k", None, 10).await.unwrap();
    assert_eq!(rows, vec![(b"k1".to_vec(), b"uno".to_vec())]);
    assert_eq!(db.scan_stale(b"k", None, 10).await.unwrap(), rows);
    let ranges = db.ranges().await.unwrap();
    assert_eq!(ranges, cluster.node.db().ranges().to_vec());
    // Typed errors come back as they are, without asking another node.
    assert!(matches!(
        db.put(b"", b"v").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        db.scan(b"k", None, SCAN_LIMIT_MAX as usize + 1).await,
        Err(Error::InvalidArgument(_))
    ));
    let nested = Command::Batch(vec![Command::Delete { key: b"k".to_vec() }]);
    assert!(matches!(
        db.batch(vec![nested]).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_past_nodes_that_do_not_answer() {
    let cluster = one_node();
    let down = fake(Behaviour::Down);
    let shut = failing_with(WireError::Shutdown);
    let serving = local(cluster.node.db());
    cluster.node.db().put(b"k", b"v").await.unwrap();
    let db = remote(vec![
        (1, down.clone()),
        (2, shut.clone()),
        (3, serving.clone()),
    ]);
    assert_eq!(db.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(
        (
            down.calls.load(Ordering::Relaxed),
            shut.calls.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
    // The node that answered is asked first from now on.
    db.put(b"k", b"w").await.unwrap();
    assert_eq!(db.get(b"k").await.unwrap(), Some(b"w".to_vec()));
    assert_eq!(down.calls.load(Ordering::Relaxed), 1);
    assert_eq!(serving.calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_an_answer_is_a_timeout_and_is_not_sent_again() {
    let cluster = one_node();
    let down = fake(Behaviour::Down);
    let serving = local(cluster.node.db());
    let db = remote(vec![(1, down.clone()), (2, serving.clone())]);
    assert_eq!(db.put(b"k", b"v").await, Err(Error::Timeout));
    assert_eq!(
        serving.calls.load(Ordering::Relaxed),
        0,
        "the put was retried"
    );
    assert_eq!(cluster.node.db().get(b"k").await.unwrap(), None);
    // The next request starts at the next node.
    db.put(b"k", b"v").await.unwrap();
    assert_eq!(down.calls.load(Ordering::Relaxed), 1);
    assert_eq!(
        cluster.node.db().get(b"k").await.unwrap(),
        Some(b"v".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_stopping_node_is_a_timeout() {
    let cluster = one_node();
    let shut = failing_with(WireError::Shutdown);
    let serving = local(cluster.node.db());
    let db = remote(vec![(1, shut), (2, serving.clone())]);
    assert_eq!(db.cas(b"k", None, Some(b"v")).await, Err(Error::Timeout));
    assert_eq!(serving.calls.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_unavailable_goes_to_the_next_node() {
    let cluster = one_node();
    let unavailable = failing_with(WireError::Unavailable("no leader".into()));
    let serving = local(cluster.node.db());
    let db = remote(vec![(1, unavailable.clone()), (2, serving)]);
    db.put(b"k", b"v").await.unwrap();
    assert_eq!(unavailable.calls.load(Ordering::Relaxed), 1);
    assert_eq!(
        cluster.node.db().get(b"k").await.unwrap(),
        Some(b"v".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_counts_as_not_answering() {
    let cluster = one_node();
    let silent = fake(Behaviour::Silent);
    let serving = local(cluster.node.db());
    let db = remote(vec![(1, silent.clone()), (2, serving)])
        .with_call_timeout(Duration::from_millis(50));
    assert_eq!(db.get(b"k").await.unwrap(), None);
    let db = remote(vec![(1, silent), (2, local(cluster.node.db()))])
        .with_call_timeout(Duration::from_millis(50));
    assert_eq!(db.delete(b"k").await, Err(Error::Timeout));
}

#[tokio::test]
async fn when_no_node_answers_a_read_is_unavailable_naming_each() {
    let db = remote(vec![
        (1, fake(Behaviour::Down)),
        (2, failing_with(WireError::Unavailable("no leader".into()))),
        (3, failing_with(WireError::Timeout)),
    ]);
    match db.get(b"k").await {
        Err(Error::Unavailable(message)) => {
            for part in ["node 1: connection refused", "node 2:", "node 3:"] {
                assert!(message.contains(part), "{part} missing in {message}");
            }
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    // A write gets no further than the first node.
    assert_eq!(db.put(b"k", b"v").await, Err(Error::Timeout));
}

#[tokio::test]
async fn a_change_asked_of_a_follower_goes_to_the_leader_it_names() {
    let follower = failing_with(WireError::NotLeader { leader: Some(3) });
    let bystander = answering(ClientResponse::Done);
    let leader = answering(ClientResponse::Done);
    let db = remote(vec![
        (1, follower.clone()),
        (2, bystander.clone()),
        (3, leader.clone()),
    ]);
    db.transfer_leader(5, 2).await.unwrap();
    let calls = |f: &Fake| f.calls.load(Ordering::Relaxed);
    assert_eq!(
        (calls(&follower), calls(&bystander), calls(&leader)),
        (1, 0, 1)
    );
    // A leader this handle cannot reach is the caller's to find.
    let db = remote(vec![(
        1,
        failing_with(WireError::NotLeader { leader: Some(9) }),
    )]);
    assert_eq!(
        db.add_replica(5, 2).await,
        Err(Error::NotLeader { leader: Some(9) })
    );
}

#[tokio::test]
async fn answers_that_do_not_decode_are_not_trusted() {
    let db = remote(vec![
        (1, fake(Behaviour::Answer(b"FLR\x07junk".to_vec()))),
        (2, answering(ClientResponse::Done)),
    ]);
    // A read: the bytes say nothing happened, and another node would
    // likely answer the same way.
    assert!(matches!(db.get(b"k").await, Err(Error::InvalidArgument(_))));
    // A write: the node may have applied it.
    assert_eq!(db.put(b"k", b"v").await, Err(Error::Timeout));
    // An answer of the wrong kind is no better.
    let db = remote(vec![(1, answering(ClientResponse::Value(None)))]);
    assert_eq!(db.put(b"k", b"v").await, Err(Error::Timeout));
    assert!(matches!(db.scan(b"k", None, 1).await, Err(Error::Io(_))));
}

#[test]
fn a_remote_handle_needs_distinct_nodes() {
    assert!(matches!(
        RemoteDb::new(Vec::new()),
        Err(Error::InvalidArgument(_))
    ));
    let twice: Vec<(u64, Arc<dyn Caller>)> =
        vec![(4, fake(Behaviour::Down)), (4, fake(Behaviour::Down))];
    match RemoteDb::new(twice) {
        Err(Error::InvalidArgument(message)) => assert!(message.contains("node 4")),
        other => panic!("expected invalid argument, got {other:?}"),
    }
}
