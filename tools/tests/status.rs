//! The status HTTP server of `flotilla start` over a real one-node node:
//! `/status` reports the node's counters and peers as JSON, `/metrics`
//! renders the engine's metrics, anything else is 404, and the server stops
//! when asked.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use flotilla::{Bootstrap, Node, NodeOptions};
use flotilla_tools::start::status::{
    install_metrics_recorder, PeerSource, PeerView, StatusServer, StatusState,
};
use flotilla_transport::local::LocalNetwork;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The process's recorder: installed once, before any node opens.
fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| install_metrics_recorder().expect("the only recorder of this process"))
        .clone()
}

struct OneNode {
    _dir: tempfile::TempDir,
    _network: LocalNetwork,
    node: Node,
}

/// A node with 4 ranges and 2 workers, once it leads all of them.
fn leading_node() -> OneNode {
    let dir = tempfile::tempdir().expect("temporary directory");
    let network = LocalNetwork::new(5);
    let (transport, inbox) = network.register(1, 1024);
    let mut options = NodeOptions::new(
        1,
        dir.path(),
        Bootstrap::EvenSplits {
            count: 4,
            nodes: vec![1],
        },
    );
    options.workers = 2;
    options.tick_interval = Duration::from_millis(5);
    options.wal.segment_bytes = 4 << 20;
    options.wal.zero_fill_segments = false;
    let node = Node::open(options, Arc::new(transport), inbox).expect("open node 1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.stats().leaders < 4 {
        assert!(Instant::now() < deadline, "no leaders: {:?}", node.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    OneNode {
        _dir: dir,
        _network: network,
        node,
    }
}

fn peers() -> PeerSource {
    Arc::new(|| {
        vec![
            PeerView {
                node: 2,
                addr: "10.0.0.2:7000".parse().unwrap(),
                connected: true,
                last_heard_ms: Some(12),
                frames_sent: 40,
                frames_received: 38,
            },
            PeerView {
                node: 3,
                addr: "10.0.0.3:7000".parse().unwrap(),
                connected: false,
                last_heard_ms: None,
                frames_sent: 0,
                frames_received: 0,
            },
        ]
    })
}

/// A running status server and the sender that stops it.
struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(state: StatusState) -> Running {
    let server = StatusServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind a free port");
    let addr = server.local_addr().expect("bound address");
    assert_ne!(addr.port(), 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.run(state, async {
        let _ = stopped.await;
    }));
    Running { addr, stop, server }
}

/// A response's status code, headers and body.
struct HttpResponse {
    code: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 GET over a fresh connection.
async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the status server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");
    let text = String::from_utf8(bytes).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers, then a body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    HttpResponse {
        code,
        head: head.to_string(),
        body: body.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_node_and_its_peers_as_json() {
    let metrics = recorder();
    let cluster = leading_node();
    let running = start(StatusState::new(&cluster.node, metrics, peers())).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let response = http_get(running.addr, "/status").await;
    assert_eq!(response.code, 200, "{}", response.body);
    assert!(response
        .head
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    let status: serde_json::Value = serde_json::from_str(&response.body).expect("JSON");
    assert_eq!(status["node"], 1);
    assert_eq!(status["workers"], 2);
    assert_eq!(status["ranges"], 4);
    assert_eq!(status["leaders"], 4);
    let awake = status["awake_groups"].as_u64().expect("awake_groups");
    let quiesced = status["quiesced_groups"].as_u64().expect("quiesced_groups");
    assert_eq!(awake + quiesced, 4, "{status}");
    assert!(status["uptime_ms"].as_u64().expect("uptime_ms") >= 20);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        status["peers"],
        serde_json::json!([
            {"node": 2, "addr": "10.0.0.2:7000", "connected": true, "last_heard_ms": 12,
             "frames_sent": 40, "frames_received": 38},
            {"node": 3, "addr": "10.0.0.3:7000", "connected": false, "last_heard_ms": null,
             "frames_sent": 0, "frames_received": 0},
        ])
    );
    let _ = running.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_render_the_engine_metrics_and_other_paths_are_404() {
    let metrics = recorder();
    let cluster = leading_node();
    cluster.node.db().put(b"k", b"v").await.expect("a put");
    let running = start(StatusState::new(&cluster.node, metrics, peers())).await;
    let response = http_get(running.addr, "/metrics").await;
    assert_eq!(response.code, 200);
    assert!(response
        .head
        .to_ascii_lowercase()
        .contains("content-type: text/plain; version=0.0.4"));
    assert!(
        response.body.contains("flotilla_awake_groups"),
        "{}",
        response.body
    );
    for path in ["/", "/statusx", "/metrics/extra"] {
        let response = http_get(running.addr, path).await;
        assert_eq!(response.code, 404, "{path}");
        assert!(
            response.body.contains("/status"),
            "{path}: {}",
            response.body
        );
    }
    let _ = running.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_when_shutdown_resolves() {
    let metrics = recorder();
    let cluster = leading_node();
    let running = start(StatusState::new(&cluster.node, metrics, peers())).await;
    assert_eq!(http_get(running.addr, "/status").await.code, 200);
    running
        .stop
        .send(())
        .expect("the server is listening for the stop");
    let served = tokio::time::timeout(Duration::from_secs(5), running.server)
        .await
        .expect("the server stops within 5 s")
        .expect("the server task did not panic");
    assert!(served.is_ok(), "{served:?}");
    assert!(tokio::net::TcpStream::connect(running.addr).await.is_err());
    // The status outlives neither the node nor the server: shutting the
    // node down is not held up by the state the server kept.
    cluster.node.shutdown();
}
