//! The QUIC transport over loopback: frames flow both ways between real
//! endpoints, snapshots do not hold up heartbeats, restarted peers come
//! back, and peers without the right certificate — or with the right one
//! and the wrong bytes — are turned away without disturbing the others.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use flotilla_raftgroup::{Message, MessageBody};
use flotilla_transport::quic::codec;
use flotilla_transport::quic::{ClientHandler, QuicClient, QuicConfig, QuicError, QuicTransport};
use flotilla_transport::tls::{self, Credentials, TlsFiles};
use flotilla_transport::{Frame, GroupMessage, Heartbeat, NodeId, SnapshotChunk, Transport};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::runtime::Runtime;

/// Long enough for a loopback handshake on a loaded two-core machine.
const PATIENCE: Duration = Duration::from_secs(10);
/// An address nobody listens on, for peers that are never dialed.
const NOWHERE: &str = "127.0.0.1:9";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A CA and node certificates for `nodes` in a fresh directory.
fn certificates(nodes: &[NodeId]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tls::init_ca(dir.path()).unwrap();
    for &node in nodes {
        tls::issue_node_cert(dir.path(), node, &["127.0.0.1".to_string()]).unwrap();
    }
    dir
}

fn config(
    dir: &Path,
    node: NodeId,
    listen: SocketAddr,
    peers: &BTreeMap<NodeId, SocketAddr>,
) -> QuicConfig {
    let mut config = QuicConfig::new(node, listen, peers.clone(), TlsFiles::node(dir, node));
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config
}

struct Node {
    transport: Arc<QuicTransport>,
    inbox: Receiver<Frame>,
}

fn start_node(
    dir: &Path,
    runtime: &Runtime,
    node: NodeId,
    listen: SocketAddr,
    peers: &BTreeMap<NodeId, SocketAddr>,
    clients: Option<Arc<dyn ClientHandler>>,
) -> Node {
    let (sender, inbox) = crossbeam_channel::bounded(4096);
    let transport = QuicTransport::start(
        config(dir, node, listen, peers),
        runtime.handle(),
        sender,
        clients,
    )
    .unwrap();
    Node { transport, inbox }
}

/// Starts `ids` (ascending) highest first: a node dials only higher ids,
/// so each one's peers are already listening when it starts. `extra` peers
/// are known to everyone and never started.
fn start_cluster(
    dir: &Path,
    runtime: &Runtime,
    ids: &[NodeId],
    extra: &[NodeId],
) -> BTreeMap<NodeId, Node> {
    let mut peers: BTreeMap<NodeId, SocketAddr> = ids
        .iter()
        .chain(extra)
        .map(|&id| (id, NOWHERE.parse().unwrap()))
        .collect();
    let mut nodes = BTreeMap::new();
    for &id in ids.iter().rev() {
        let node = start_node(
            dir,
            runtime,
            id,
            "127.0.0.1:0".parse().unwrap(),
            &peers,
            None,
        );
        peers.insert(id, node.transport.local_addr());
        nodes.insert(id, node);
    }
    nodes
}

fn raft_frame(from: NodeId, to: NodeId, tick: u64) -> Frame {
    let mut frame = Frame::new(from, to);
    frame.messages.push(GroupMessage {
        group: tick % 7,
        message: Message {
            from,
            to,
            term: 3,
            body: MessageBody::AppendResponse {
                index: tick,
                reject: false,
                hint_index: 0,
                hint_term: 0,
            },
        },
    });
    frame.heartbeat = Some(Heartbeat {
        tick,
        ..Heartbeat::default()
    });
    frame
        .payloads
        .push(format!("{from}->{to}#{tick}").into_bytes());
    frame
}

fn heartbeat_frame(from: NodeId, to: NodeId, tick: u64) -> Frame {
    let mut frame = Frame::new(from, to);
    frame.heartbeat = Some(Heartbeat {
        tick,
        ..Heartbeat::default()
    });
    frame
}

fn chunk(group: u64, bytes: usize) -> SnapshotChunk {
    SnapshotChunk {
        group,
        term: 5,
        chunk: (0..bytes).map(|i| (i as u64 * 31 + group) as u8).collect(),
    }
}

fn tick_of(frame: &Frame) -> Option<u64> {
    frame.heartbeat.as_ref().map(|h| h.tick)
}

/// Receives until `done` says so; panics after [`PATIENCE`].
fn receive_until(inbox: &Receiver<Frame>, what: &str, mut done: impl FnMut(Frame) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match inbox.recv_timeout(left) {
            Ok(frame) => {
                if done(frame) {
                    return;
                }
            }
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Sends a heartbeat from `from` to `to` every 20 ms until one arrives.
fn wait_connected(nodes: &BTreeMap<NodeId, Node>, from: NodeId, to: NodeId) {
    let deadline = Instant::now() + PATIENCE;
    let tick = u64::MAX / 2;
    loop {
        let _ = nodes[&from].transport.send(heartbeat_frame(from, to, tick));
        if let Ok(frame) = nodes[&to].inbox.recv_timeout(Duration::from_millis(20)) {
            if frame.from == from && tick_of(&frame) == Some(tick) {
                // Drain duplicates of the probe.
                std::thread::sleep(Duration::from_millis(20));
                while nodes[&to].inbox.try_recv().is_ok() {}
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {from} never reached node {to}"
        );
    }
}

fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn three_nodes_exchange_frames_both_ways_in_order() {
    let runtime = runtime();
    let dir = certificates(&[1, 2, 3]);
    let nodes = start_cluster(dir.path(), &runtime, &[1, 2, 3], &[]);
    let frames_per_pair = 30u64;
    // Sent at once, before any connection is up: they wait in the queues.
    let mut sent: BTreeMap<(NodeId, NodeId), Vec<Frame>> = BTreeMap::new();
    for tick in 0..frames_per_pair {
        for (&from, node) in &nodes {
            for &to in nodes.keys().filter(|&&to| to != from) {
                let mut frame = raft_frame(from, to, tick);
                if tick % 10 == 3 {
                    // One large chunk per pair, the others small.
                    let bytes = if tick == 3 { 3 << 20 } else { 10_000 };
                    frame.snapshot_chunks.push(chunk(tick, bytes));
                }
                node.transport.send(frame.clone()).unwrap();
                sent.entry((from, to)).or_default().push(frame);
            }
        }
    }
    for (&to, node) in &nodes {
        let mut raft: BTreeMap<NodeId, Vec<Frame>> = BTreeMap::new();
        let mut snapshots: BTreeMap<NodeId, Vec<SnapshotChunk>> = BTreeMap::new();
        let expected_frames = 2 * (frames_per_pair as usize + 3);
        let mut received = 0;
        receive_until(&node.inbox, &format!("frames at node {to}"), |frame| {
            assert_eq!(frame.to, to);
            if frame.snapshot_chunks.is_empty() {
                raft.entry(frame.from).or_default().push(frame);
            } else {
                // Split off: nothing but the chunks.
                assert!(frame.messages.is_empty() && frame.heartbeat.is_none());
                assert!(frame.payloads.is_empty());
                snapshots
                    .entry(frame.from)
                    .or_default()
                    .extend(frame.snapshot_chunks);
            }
            received += 1;
            received == expected_frames
        });
        for (&(from, dest), frames) in sent.iter().filter(|((_, dest), _)| *dest == to) {
            let mut expected_raft = Vec::new();
            let mut expected_chunks = Vec::new();
            for frame in frames {
                let mut frame = frame.clone();
                expected_chunks.append(&mut frame.snapshot_chunks);
                expected_raft.push(frame);
            }
            assert_eq!(
                raft[&from], expected_raft,
                "Raft frames {from} -> {dest}, in order"
            );
            assert_eq!(
                snapshots[&from], expected_chunks,
                "snapshot chunks {from} -> {dest}, in order"
            );
        }
    }
    for (&id, node) in &nodes {
        let stats = node.transport.stats();
        assert_eq!(
            stats.frames_sent,
            2 * (frames_per_pair + 3),
            "node {id}: {stats:?}"
        );
        assert_eq!(
            stats.frames_received,
            2 * (frames_per_pair + 3),
            "node {id}: {stats:?}"
        );
        assert!(stats.bytes_received > 2 * (3 << 20), "node {id}: {stats:?}");
        assert_eq!(
            stats.frames_dropped + stats.malformed_frames + stats.connections_refused,
            0
        );
        for peer in node.transport.peers() {
            assert!(peer.connected, "node {id}: {peer:?}");
            assert!(peer.last_received.is_some(), "node {id}: {peer:?}");
        }
    }
}

#[test]
fn a_heartbeat_overtakes_a_large_snapshot_chunk() {
    let runtime = runtime();
    let dir = certificates(&[1, 2]);
    let nodes = start_cluster(dir.path(), &runtime, &[1, 2], &[]);
    wait_connected(&nodes, 1, 2);
    // On one stream the heartbeat would queue behind 16 MiB that take
    // many round trips to cross (flow control), and behind the decoding
    // of the whole chunk.
    let mut snapshot = Frame::new(1, 2);
    snapshot.snapshot_chunks.push(chunk(1, 16 << 20));
    nodes[&1].transport.send(snapshot).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    nodes[&1].transport.send(heartbeat_frame(1, 2, 1)).unwrap();
    let mut order = Vec::new();
    receive_until(
        &nodes[&2].inbox,
        "the heartbeat and the snapshot",
        |frame| {
            order.push(if frame.snapshot_chunks.is_empty() {
                "heartbeat"
            } else {
                assert_eq!(frame.snapshot_chunks[0].chunk.len(), 16 << 20);
                "snapshot"
            });
            order.len() == 2
        },
    );
    assert_eq!(order, ["heartbeat", "snapshot"]);
}

/// Starts `node` on `listen`, retrying while the previous endpoint on
/// that port is still draining.
fn restart(
    dir: &Path,
    runtime: &Runtime,
    node: NodeId,
    listen: SocketAddr,
    peers: &BTreeMap<NodeId, SocketAddr>,
) -> Node {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (sender, inbox) = crossbeam_channel::bounded(4096);
        match QuicTransport::start(
            config(dir, node, listen, peers),
            runtime.handle(),
            sender,
            None,
        ) {
            Ok(transport) => return Node { transport, inbox },
            Err(QuicError::Bind { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("restarting node {node}: {error}"),
        }
    }
}

#[test]
fn frames_flow_again_after_either_peer_restarts() {
    let runtime = runtime();
    let dir = certificates(&[1, 2]);
    let mut nodes = start_cluster(dir.path(), &runtime, &[1, 2], &[]);
    wait_connected(&nodes, 1, 2);
    wait_connected(&nodes, 2, 1);
    let peers: BTreeMap<NodeId, SocketAddr> = nodes
        .iter()
        .map(|(&id, node)| (id, node.transport.local_addr()))
        .collect();
    // Node 2 accepts: node 1 must notice and dial the new process.
    // Node 1 dials: node 2 must accept the new process's connection.
    for (restarted, survivor) in [(2, 1), (1, 2)] {
        let old = nodes.remove(&restarted).unwrap();
        old.transport.shutdown();
        assert_eq!(
            old.transport
                .send(heartbeat_frame(restarted, 3 - restarted, 0)),
            Err(flotilla_transport::TransportError::Shutdown)
        );
        drop(old);
        let node = restart(dir.path(), &runtime, restarted, peers[&restarted], &peers);
        nodes.insert(restarted, node);
        wait_connected(&nodes, 1, 2);
        wait_connected(&nodes, 2, 1);
        let stats = nodes[&survivor].transport.stats();
        assert!(stats.reconnects >= 1, "node {survivor}: {stats:?}");
    }
}

// --- Rogue peers -----------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and key that no CA signed, claiming `uri` and `dns`.
fn self_signed(uri: &str, dns: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![dns.to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(uri.to_string().try_into().unwrap()));
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), key)
}

fn ca_roots(dir: &Path) -> Arc<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap())
        .unwrap();
    Arc::new(roots)
}

/// A bare QUIC connection to `addr` with `tls`, bypassing the transport.
async fn raw_connect(
    mut tls: rustls::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    tls.alpn_protocols = vec![tls::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr,
            server_name,
        )
        .unwrap();
    let connection = connecting.await;
    (endpoint, connection)
}

/// A bare QUIC server with `tls`, posing as a node.
fn raw_server(runtime: &Runtime, mut tls: rustls::ServerConfig) -> quinn::Endpoint {
    tls.alpn_protocols = vec![tls::ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).unwrap();
    let _entered = runtime.enter();
    quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

/// Writes a Raft stream header and then `bytes` on a new stream; errors
/// are expected (the node may close the connection first) and ignored.
async fn write_stream(connection: &quinn::Connection, bytes: &[u8]) {
    if let Ok(mut stream) = connection.open_uni().await {
        let _ = stream.write_all(bytes).await;
        let _ = stream.finish();
    }
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let encoded = codec::encode_frame(frame, usize::MAX).unwrap();
    let mut bytes = codec::StreamKind::Raft.header().to_vec();
    bytes.extend_from_slice(&encoded.prefix());
    bytes.extend_from_slice(encoded.archive());
    bytes
}

/// The application close code the node closed `connection` with.
async fn close_code(connection: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(PATIENCE, connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
        _ => None,
    }
}

const REFUSED: Option<u64> = Some(1);
const PROTOCOL: Option<u64> = Some(2);

#[test]
fn a_self_signed_certificate_is_refused_in_the_handshake() {
    let runtime = runtime();
    let dir = certificates(&[1, 2]);
    // Node 2 accepts node 1; the impostor claims to be node 1.
    let nodes = start_cluster(dir.path(), &runtime, &[2], &[1]);
    let addr = nodes[&2].transport.local_addr();
    let (cert, key) = self_signed("flotilla://node/1", "node-1.flotilla");
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(ca_roots(dir.path()))
        .with_client_auth_cert(vec![cert.clone()], key.clone_key())
        .unwrap();
    runtime.block_on(async {
        let (_endpoint, connection) = raw_connect(client, addr, "node-2.flotilla").await;
        // TLS 1.3 clients finish first: the refusal may come as a close.
        if let Ok(connection) = connection {
            write_stream(&connection, &encoded(&heartbeat_frame(1, 2, 1))).await;
            let _ = tokio::time::timeout(PATIENCE, connection.closed()).await;
        }
    });
    eventually("node 2 counts the refusal", || {
        nodes[&2].transport.stats().connections_refused >= 1
    });
    assert!(nodes[&2]
        .inbox
        .recv_timeout(Duration::from_millis(200))
        .is_err());

    // The other way: node 1 dials "node 2", and a self-signed server answers.
    let (cert, key) = self_signed("flotilla://node/2", "node-2.flotilla");
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let impostor = raw_server(&runtime, server);
    let accepting = impostor.clone();
    let handshakes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let completed = Arc::clone(&handshakes);
    runtime.spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            if incoming.await.is_ok() {
                completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let peers = BTreeMap::from([(2, impostor.local_addr().unwrap())]);
    let dialer = start_node(
        dir.path(),
        &runtime,
        1,
        "127.0.0.1:0".parse().unwrap(),
        &peers,
        None,
    );
    dialer.transport.send(heartbeat_frame(1, 2, 1)).unwrap();
    eventually("node 1 refuses the self-signed server", || {
        dialer.transport.stats().connections_refused >= 1
    });
    assert!(!dialer.transport.peers()[0].connected);
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(dialer.transport.stats().frames_sent, 0);
}

#[test]
fn a_ca_signed_certificate_of_another_node_is_refused() {
    let runtime = runtime();
    let dir = certificates(&[1, 2]);
    // Node 5's certificate, also valid for the name node 1 dials node 2 by:
    // TLS alone accepts it, the identity check must not.
    let five = tls::issue_node_cert(dir.path(), 5, &["node-2.flotilla".into()]).unwrap();
    let server = Credentials::load(&five).unwrap().server_config().unwrap();
    let impostor = raw_server(&runtime, server);
    let peers = BTreeMap::from([(2, impostor.local_addr().unwrap())]);
    let dialer = start_node(
        dir.path(),
        &runtime,
        1,
        "127.0.0.1:0".parse().unwrap(),
        &peers,
        None,
    );
    dialer.transport.send(heartbeat_frame(1, 2, 1)).unwrap();
    runtime.block_on(async {
        let incoming = tokio::time::timeout(PATIENCE, impostor.accept())
            .await
            .unwrap()
            .unwrap();
        let connection = incoming.await.unwrap();
        // Closed before node 1 opened a single stream.
        let stream = tokio::time::timeout(PATIENCE, connection.accept_uni())
            .await
            .unwrap();
        assert!(stream.is_err(), "node 1 sent to node 5 posing as node 2");
        assert_eq!(close_code(&connection).await, REFUSED);
    });
    eventually("node 1 counts the refusal", || {
        dialer.transport.stats().connections_refused >= 1
    });
    assert_eq!(dialer.transport.stats().frames_sent, 0);
}

#[test]
fn an_accepted_peer_is_its_certificate_and_nothing_else() {
    let runtime = runtime();
    let dir = certificates(&[1, 2, 3, 9]);
    let nodes = start_cluster(dir.path(), &runtime, &[2], &[1, 3]);
    let addr = nodes[&2].transport.local_addr();
    let credentials = |node| Credentials::load(&TlsFiles::node(dir.path(), node)).unwrap();
    runtime.block_on(async {
        // Node 1's certificate, frames claiming to come from node 3.
        let (_endpoint, connection) = raw_connect(
            credentials(1).client_config().unwrap(),
            addr,
            "node-2.flotilla",
        )
        .await;
        let connection = connection.unwrap();
        write_stream(&connection, &encoded(&heartbeat_frame(3, 2, 1))).await;
        assert_eq!(close_code(&connection).await, PROTOCOL);
        // Node 9 is no peer of node 2; node 3 has the higher id, so node 2
        // dials it, never the other way.
        for stranger in [9, 3] {
            let (_endpoint, connection) = raw_connect(
                credentials(stranger).client_config().unwrap(),
                addr,
                "node-2.flotilla",
            )
            .await;
            let connection = connection.unwrap();
            write_stream(&connection, &encoded(&heartbeat_frame(stranger, 2, 1))).await;
            assert_eq!(close_code(&connection).await, REFUSED, "node {stranger}");
        }
    });
    let stats = nodes[&2].transport.stats();
    assert_eq!(stats.malformed_frames, 1, "{stats:?}");
    assert_eq!(stats.connections_refused, 2, "{stats:?}");
    assert_eq!(stats.frames_received, 0, "{stats:?}");
    assert!(nodes[&2].inbox.try_recv().is_err());
}

fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

fn counter(snapshotter: &Snapshotter, name: &str, label: (&str, &str)) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

#[test]
fn garbage_closes_only_the_connection_it_came_on() {
    let metrics = recorder();
    let runtime = runtime();
    let dir = certificates(&[1, 2, 3, 4]);
    // Node 1 is never started: its certificate is the attacker's.
    let nodes = start_cluster(dir.path(), &runtime, &[2, 3, 4], &[1]);
    for (from, to) in [(2, 4), (3, 4), (4, 2), (4, 3)] {
        wait_connected(&nodes, from, to);
    }
    let addr = nodes[&4].transport.local_addr();
    let attacker = Credentials::load(&TlsFiles::node(dir.path(), 1)).unwrap();
    let header = codec::StreamKind::Raft.header();
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut oversized = header.to_vec();
    oversized.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut undecodable = header.to_vec();
    undecodable.extend_from_slice(&1024u32.to_le_bytes());
    undecodable.extend_from_slice(&random[..1024]);
    let before = counter(
        metrics,
        "flotilla_transport_malformed_frames_total",
        ("peer", "1"),
    );
    for (what, bytes) in [
        ("random bytes", &random),
        ("an oversized length", &oversized),
        ("an undecodable archive", &undecodable),
    ] {
        runtime.block_on(async {
            let (_endpoint, connection) =
                raw_connect(attacker.client_config().unwrap(), addr, "node-4.flotilla").await;
            let connection = connection.unwrap();
            write_stream(&connection, bytes).await;
            assert_eq!(close_code(&connection).await, PROTOCOL, "{what}");
        });
    }
    assert_eq!(nodes[&4].transport.stats().malformed_frames, 3);
    assert!(
        counter(
            metrics,
            "flotilla_transport_malformed_frames_total",
            ("peer", "1")
        ) >= before + 3
    );
    // The real peers never noticed.
    for (from, to) in [(2, 4), (3, 4), (4, 2), (4, 3)] {
        nodes[&from]
            .transport
            .send(raft_frame(from, to, 77))
            .unwrap();
        receive_until(&nodes[&to].inbox, &format!("{from} -> {to}"), |frame| {
            frame.from == from && tick_of(&frame) == Some(77)
        });
    }
    for id in [2, 3] {
        assert_eq!(nodes[&id].transport.stats().malformed_frames, 0);
        assert_eq!(nodes[&id].transport.stats().reconnects, 0);
    }
}

/// Answers a call with the request reversed.
#[derive(Debug)]
struct Reverse;

impl ClientHandler for Reverse {
    fn handle(
        &self,
        mut request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>> {
        Box::pin(async move {
            request.reverse();
            request
        })
    }
}

#[test]
fn clients_call_nodes_that_serve_them_and_only_those() {
    let runtime = runtime();
    let dir = certificates(&[1, 2]);
    let alice = tls::issue_client_cert(dir.path(), "alice").unwrap();
    let peers = BTreeMap::new();
    let serving = start_node(
        dir.path(),
        &runtime,
        1,
        "127.0.0.1:0".parse().unwrap(),
        &peers,
        Some(Arc::new(Reverse)),
    );
    let silent = start_node(
        dir.path(),
        &runtime,
        2,
        "127.0.0.1:0".parse().unwrap(),
        &peers,
        None,
    );
    runtime.block_on(async {
        let client = QuicClient::connect(serving.transport.local_addr(), 1, &alice)
            .await
            .unwrap();
        let calls = (0..20u8).map(|i| client.call(vec![i, 1, 2, 3]));
        for (i, response) in (0..20u8).zip(futures_join(calls).await) {
            assert_eq!(response.unwrap(), vec![3, 2, 1, i]);
        }
        assert_eq!(client.call(Vec::new()).await.unwrap(), Vec::<u8>::new());

        // Expecting node 2 where node 1 answers: node 1's certificate is
        // not valid for the name node 2 is dialed by.
        let wrong = QuicClient::connect(serving.transport.local_addr(), 2, &alice).await;
        assert!(matches!(wrong, Err(QuicError::Handshake(_))), "{wrong:?}");

        let refused = match QuicClient::connect(silent.transport.local_addr(), 2, &alice).await {
            Ok(client) => client.call(b"hello".to_vec()).await.map(|_| ()),
            Err(error) => Err(error),
        };
        assert!(matches!(refused, Err(QuicError::Refused(_))), "{refused:?}");

        // A client certificate never carries Raft frames, even to a node
        // that serves clients.
        let credentials = Credentials::load(&alice).unwrap();
        let (_endpoint, connection) = raw_connect(
            credentials.client_config().unwrap(),
            serving.transport.local_addr(),
            "node-1.flotilla",
        )
        .await;
        let connection = connection.unwrap();
        write_stream(&connection, &encoded(&heartbeat_frame(2, 1, 1))).await;
        assert_eq!(close_code(&connection).await, PROTOCOL);
    });
    assert!(silent.transport.stats().connections_refused >= 1);
    assert_eq!(serving.transport.stats().malformed_frames, 1);
    assert!(serving.inbox.try_recv().is_err());
}

/// Awaits every future of `futures` concurrently, keeping their order.
async fn futures_join<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[test]
fn a_node_refuses_to_start_with_another_nodes_certificate_or_bad_settings() {
    let runtime = runtime();
    let dir = certificates(&[1, 2]);
    let good = config(
        dir.path(),
        1,
        "127.0.0.1:0".parse().unwrap(),
        &BTreeMap::new(),
    );
    let start = |config| {
        let (sender, _inbox) = crossbeam_channel::bounded(1);
        QuicTransport::start(config, runtime.handle(), sender, None).unwrap_err()
    };
    let error = start(QuicConfig {
        tls: TlsFiles::node(dir.path(), 2),
        ..good.clone()
    });
    assert!(
        matches!(error, QuicError::Tls(tls::TlsError::WrongIdentity { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("node-2.crt"), "{error}");
    let error = start(QuicConfig {
        keep_alive: good.idle_timeout,
        ..good.clone()
    });
    assert!(matches!(error, QuicError::Config(_)), "{error}");
    let error = start(QuicConfig {
        frame_bytes_max: u32::MAX as usize + 1,
        ..good
    });
    assert!(matches!(error, QuicError::Config(_)), "{error}");
}

#[test]
fn sends_to_unknown_nodes_and_over_full_queues_fail_without_blocking() {
    let runtime = runtime();
    let dir = certificates(&[1]);
    // Node 2 is never started: frames for it wait, then overflow.
    let peers = BTreeMap::from([(2, NOWHERE.parse().unwrap())]);
    let mut config = config(dir.path(), 1, "127.0.0.1:0".parse().unwrap(), &peers);
    config.queue_frames_max = 4;
    let (sender, _inbox) = crossbeam_channel::bounded(1);
    let transport = QuicTransport::start(config, runtime.handle(), sender, None).unwrap();
    assert_eq!(
        transport.send(heartbeat_frame(1, 7, 0)),
        Err(flotilla_transport::TransportError::UnknownNode(7))
    );
    let started = Instant::now();
    let results: Vec<_> = (0..10)
        .map(|tick| transport.send(heartbeat_frame(1, 2, tick)))
        .collect();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(results[..4].iter().all(Result::is_ok), "{results:?}");
    assert!(
        results[4..]
            .iter()
            .all(|r| *r == Err(flotilla_transport::TransportError::QueueFull(2))),
        "{results:?}"
    );
    assert_eq!(transport.peers()[0].frames_dropped, 6);
}
