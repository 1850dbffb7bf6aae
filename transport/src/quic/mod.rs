//! The QUIC transport: frames between nodes over quinn, with mutual TLS
//! against the cluster CA (see [`crate::tls`]).
//!
//! # Connections
//!
//! One connection per node pair, used in both directions. The node with
//! the lower id dials; the higher one accepts (so two nodes never race to
//! open two connections, and the acceptor knows a connection from a higher
//! id is a mistake). The dialer reconnects when the connection is lost,
//! after an exponential backoff from `reconnect_min` to `reconnect_max`
//! plus up to a quarter of random jitter (so a restarted node is not hit by
//! every peer at the same instant). A newer connection from the same peer
//! replaces the older one: after a restart the peer dials again before the
//! old connection has timed out.
//!
//! # Identity
//!
//! The TLS handshake refuses any peer whose certificate the CA did not
//! sign, before a byte of application data is read. After it, the peer is
//! who its certificate says ([`crate::tls::identity_of`]), nothing else:
//! the dialer checks the certificate names the node it dialed, the
//! acceptor takes the certificate's node id as the peer's id, and a frame
//! whose `from` differs from it closes the connection. There is no
//! "hello" in which a peer claims an id: nothing it could claim would be
//! trusted over its certificate. A client identity is served only when a
//! [`ClientHandler`] is given, and only with calls — never a Raft frame.
//!
//! Nodes dial node N by the server name `node-N.flotilla`
//! ([`crate::tls::node_server_name`]), which every node certificate
//! carries, so rustls' own name check already fails the handshake with a
//! certificate of another node. That check is a second line only (an
//! operator may put any DNS name in a certificate); the URI identity is
//! the binding one.
//!
//! # Streams
//!
//! Each direction of a node connection has two long-lived unidirectional
//! streams ([`codec`] has the bytes): one for Raft traffic, one for
//! snapshot chunks, which [`Transport::send`] splits off into a frame of
//! their own (same `from` and `to`). The Raft stream has the higher send
//! priority and each stream its own flow-control window, so a large
//! snapshot never delays a heartbeat. Order is kept per stream: Raft frames
//! arrive in the order they were sent, snapshot frames too, but a snapshot
//! frame may overtake Raft frames sent before it or fall behind later ones.
//!
//! # Bounds
//!
//! Each peer has two send queues (Raft and snapshot) of `queue_frames_max`
//! frames each. Frames sent while the peer is unreachable wait there;
//! when a queue is full `send` fails with [`TransportError::QueueFull`] and
//! the frame is dropped (Raft tolerates loss). A frame over
//! `frame_bytes_max` is dropped by the sender and, if one arrives anyway,
//! closes the connection. Received frames are handed to the inbox with
//! `try_send`: a full inbox drops them (counted) rather than stall the
//! connection.

pub mod codec;

mod backoff;
mod client;
mod peer;
mod stats;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::tls::{Credentials, Identity, TlsError, TlsFiles};
use crate::{Frame, NodeId, Transport, TransportError};

pub use client::QuicClient;

use peer::Peer;
use stats::{DropReason, EndpointCounters};

/// Application close codes, sent with a reason text.
mod close {
    use quinn::VarInt;
    /// The node is shutting down.
    pub(crate) const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// The peer's identity is not welcome (unknown node, wrong node, wrong
    /// direction, a client where no clients are served).
    pub(crate) const REFUSED: VarInt = VarInt::from_u32(1);
    /// The peer broke the protocol: a malformed frame, an oversized one, a
    /// forged sender, an unexpected stream.
    pub(crate) const PROTOCOL: VarInt = VarInt::from_u32(2);
    /// A newer connection from the same peer took this one's place.
    pub(crate) const REPLACED: VarInt = VarInt::from_u32(3);
}

/// How many calls one client may have in flight on its connection.
const CLIENT_CALLS_CONCURRENT_MAX: u32 = 256;
/// Unidirectional streams a node connection uses per direction.
const NODE_STREAMS: u32 = 2;
/// Default of [`QuicConfig::idle_timeout`], and a client's.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`QuicConfig::keep_alive`], and a client's.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Settings of a [`QuicTransport`].
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// This node; its certificate must name it.
    pub node: NodeId,
    /// The UDP address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Every other node of the cluster and where it listens. An entry for
    /// `node` itself is ignored.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The cluster CA and this node's certificate and key.
    pub tls: TlsFiles,
    /// Frames waiting per peer, for each of its two streams.
    pub queue_frames_max: usize,
    /// The largest frame archive sent or accepted, in bytes (at most
    /// `u32::MAX`). Also bounds client requests.
    pub frame_bytes_max: usize,
    /// The first delay before redialing a lost peer.
    pub reconnect_min: Duration,
    /// The longest delay between dials of an unreachable peer.
    pub reconnect_max: Duration,
    /// A connection silent this long is dead. Also bounds a handshake.
    pub idle_timeout: Duration,
    /// How often a quiet connection is pinged; below `idle_timeout`.
    pub keep_alive: Duration,
}

impl QuicConfig {
    /// Settings with the defaults: 1024 frames per queue, 64 MiB frames,
    /// reconnects between 100 ms and 5 s, a 10 s idle timeout and a 2 s
    /// keep-alive.
    pub fn new(
        node: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        tls: TlsFiles,
    ) -> Self {
        QuicConfig {
            node,
            listen,
            peers,
            tls,
            queue_frames_max: 1024,
            frame_bytes_max: 64 << 20,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            idle_timeout: IDLE_TIMEOUT,
            keep_alive: KEEP_ALIVE,
        }
    }

    fn validate(&self) -> Result<(), QuicError> {
        let invalid = |reason: String| Err(QuicError::Config(reason));
        if self.queue_frames_max == 0 {
            return invalid("queue_frames_max must be at least 1".into());
        }
        if self.frame_bytes_max == 0 || self.frame_bytes_max > u32::MAX as usize {
            return invalid(format!(
                "frame_bytes_max must be between 1 and {} (a u32 length prefix), not {}",
                u32::MAX,
                self.frame_bytes_max
            ));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return invalid(format!(
                "reconnect_min ({:?}) must be above zero and at most reconnect_max ({:?})",
                self.reconnect_min, self.reconnect_max
            ));
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return invalid(format!(
                "keep_alive ({:?}) must be above zero and below idle_timeout ({:?}), or idle \
                 connections would time out",
                self.keep_alive, self.idle_timeout
            ));
        }
        Ok(())
    }
}

/// How one peer is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub connected: bool,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Frames `send` could not queue (queue full) or that were too large.
    pub frames_dropped: u64,
    pub last_received: Option<Instant>,
}

/// Totals over all peers and the endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicStats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Frames `send` could not queue (queue full) or that were too large.
    pub frames_dropped: u64,
    /// Frames received and dropped because the inbox was full.
    pub inbox_full: u64,
    /// Malformed, oversized or forged frames and requests; each closed its
    /// connection.
    pub malformed_frames: u64,
    /// Connections refused: failed TLS handshakes and unwelcome identities.
    pub connections_refused: u64,
    /// Connections established with a peer after an earlier one.
    pub reconnects: u64,
}

/// Why the QUIC transport or a client could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid QUIC transport settings: {0}")]
    Config(String),
    #[error("cannot listen on UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// This side rejected the peer's certificate (not signed by the CA,
    /// not valid for the node dialed).
    #[error("the TLS handshake failed: {0}")]
    Handshake(String),
    #[error("expected {expected}, but the peer's certificate is {actual}'s")]
    WrongPeer {
        expected: Identity,
        actual: Identity,
    },
    #[error("a message of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
}

/// Answers client calls: one request in, one response out, on a
/// bidirectional stream of the client's connection. Calls of one client
/// run concurrently (up to 256 in flight).
pub trait ClientHandler: Send + Sync + std::fmt::Debug + 'static {
    fn handle(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>>;
}

/// State shared by the transport handle and its tasks.
pub(crate) struct Shared {
    node: NodeId,
    config: QuicConfig,
    endpoint: quinn::Endpoint,
    dial_config: quinn::ClientConfig,
    peers: BTreeMap<NodeId, Arc<Peer>>,
    inbox: Sender<Frame>,
    clients: Option<Arc<dyn ClientHandler>>,
    stopped: AtomicBool,
    shutdown: watch::Sender<bool>,
    counters: EndpointCounters,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node", &self.node)
            .field("listen", &self.endpoint.local_addr().ok())
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .field("serves_clients", &self.clients.is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Hands a received frame to the node; a full inbox drops it.
    fn deliver(&self, peer: &Peer, frame: Frame) {
        match self.inbox.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => peer.counters.dropped(peer.node, DropReason::InboxFull),
            // The node stopped reading: as good as shut down.
            Err(TrySendError::Disconnected(_)) => {
                peer.counters.dropped(peer.node, DropReason::InboxFull)
            }
        }
    }

    /// Resolves when the transport shuts down.
    async fn stopping(&self) {
        let mut shutdown = self.shutdown.subscribe();
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    }

    /// Closes `connection` because of who the peer is.
    fn refuse(&self, connection: &Connection, reason: &'static str, detail: &str) {
        warn!(
            node = self.node,
            remote = %connection.remote_address(),
            reason,
            "refused a connection: {detail}"
        );
        self.counters.refused(reason);
        connection.close(close::REFUSED, detail.as_bytes());
    }

    /// Completes an incoming handshake and passes the connection to the
    /// task of the peer its certificate names, or serves it as a client.
    async fn admit(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let connection = match incoming.await {
            Ok(connection) => connection,
            Err(error) => {
                self.handshake_failed(remote, &error);
                return;
            }
        };
        let identity = match peer_identity(&connection) {
            Ok(identity) => identity,
            Err(error) => {
                self.refuse(&connection, "no_identity", &error.to_string());
                return;
            }
        };
        match identity {
            Identity::Node(id) => {
                let Some(peer) = self.peers.get(&id) else {
                    let detail = format!("node {id} is not a peer of node {}", self.node);
                    self.refuse(&connection, "unknown_node", &detail);
                    return;
                };
                if id > self.node {
                    let detail = format!(
                        "node {id} dialed node {}, but the lower id dials: node {} dials node {id}",
                        self.node, self.node
                    );
                    self.refuse(&connection, "wrong_direction", &detail);
                    return;
                }
                if let Err(error) = peer.incoming.try_send(connection) {
                    let detail = format!("node {id} is already connecting");
                    self.refuse(&error.into_inner(), "busy", &detail);
                }
            }
            Identity::Client(name) => match &self.clients {
                Some(handler) => {
                    let handler = Arc::clone(handler);
                    client::serve(Arc::clone(&self), connection, name, handler).await;
                }
                None => {
                    let detail = format!("node {} serves no clients", self.node);
                    self.refuse(&connection, "no_client_handler", &detail);
                }
            },
        }
    }

    /// Counts a failed handshake as refused when TLS failed it (a
    /// certificate the CA did not sign, a wrong name, no flotilla ALPN);
    /// a timeout is a network problem, not a refusal.
    fn handshake_failed(&self, remote: SocketAddr, error: &ConnectionError) {
        if is_tls_failure(error) {
            warn!(node = self.node, %remote, %error, "refused a connection: TLS handshake failed");
            self.counters.refused("handshake");
        } else {
            debug!(node = self.node, %remote, %error, "handshake failed");
        }
    }
}

/// The peer's identity, from the certificate it presented.
fn peer_identity(connection: &Connection) -> Result<Identity, QuicError> {
    let certificates = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| QuicError::Protocol("the peer presented no certificate".into()))?;
    let end_entity = certificates
        .first()
        .ok_or_else(|| QuicError::Protocol("the peer presented no certificate".into()))?;
    Ok(crate::tls::identity_of(end_entity)?)
}

/// Whether TLS (rather than the network) ended a handshake: QUIC carries
/// TLS alerts as transport error codes 0x100 to 0x1ff, raised locally or
/// received from the peer.
fn is_tls_failure(error: &ConnectionError) -> bool {
    let code = match error {
        ConnectionError::TransportError(error) => error.code,
        ConnectionError::ConnectionClosed(close) => close.error_code,
        _ => return false,
    };
    (0x100..0x200).contains(&u64::from(code))
}

/// QUIC settings of a connection: how many streams of each direction the
/// other side may open at once (the unidirectional ones carry frames, the
/// bidirectional ones client calls).
fn transport_config(
    idle_timeout: Duration,
    keep_alive: Duration,
    uni_streams: u32,
    bidi_streams: u32,
) -> Result<Arc<TransportConfig>, QuicError> {
    let idle = IdleTimeout::try_from(idle_timeout)
        .map_err(|_| QuicError::Config(format!("idle_timeout {idle_timeout:?} is too long")))?;
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(keep_alive))
        .max_concurrent_uni_streams(VarInt::from_u32(uni_streams))
        .max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams));
    Ok(Arc::new(transport))
}

/// A node's QUIC transport. Dropping the last handle shuts it down.
#[derive(Debug)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl QuicTransport {
    /// Loads and checks the TLS files (the certificate must name
    /// `config.node`), listens on `config.listen`, and starts one task per
    /// peer on `runtime` that keeps the connection to it up. Received
    /// frames go to `inbox`; `clients` answers client calls (without it,
    /// client certificates are refused).
    pub fn start(
        config: QuicConfig,
        runtime: &tokio::runtime::Handle,
        inbox: Sender<Frame>,
        clients: Option<Arc<dyn ClientHandler>>,
    ) -> Result<Arc<QuicTransport>, QuicError> {
        config.validate()?;
        let credentials = Credentials::load_for(&config.tls, &Identity::Node(config.node))?;
        let crypto = QuicServerConfig::try_from(credentials.server_config()?)
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(transport_config(
            config.idle_timeout,
            config.keep_alive,
            NODE_STREAMS,
            CLIENT_CALLS_CONCURRENT_MAX,
        )?);
        let crypto = QuicClientConfig::try_from(credentials.client_config()?)
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let mut dial_config = quinn::ClientConfig::new(Arc::new(crypto));
        dial_config.transport_config(transport_config(
            config.idle_timeout,
            config.keep_alive,
            NODE_STREAMS,
            0,
        )?);

        let _entered = runtime.enter();
        let endpoint = quinn::Endpoint::server(server_config, config.listen).map_err(|source| {
            QuicError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| QuicError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut peers = BTreeMap::new();
        let mut tasks = Vec::new();
        for (&node, &addr) in config.peers.iter().filter(|(&n, _)| n != config.node) {
            let (peer, task) = Peer::new(node, addr, config.queue_frames_max);
            peers.insert(node, peer);
            tasks.push(task);
        }
        let shared = Arc::new(Shared {
            node: config.node,
            config,
            endpoint,
            dial_config,
            peers,
            inbox,
            clients,
            stopped: AtomicBool::new(false),
            shutdown: watch::Sender::new(false),
            counters: EndpointCounters::default(),
        });
        for task in tasks {
            runtime.spawn(task.run(Arc::clone(&shared)));
        }
        runtime.spawn(accept_loop(Arc::clone(&shared)));
        info!(node = shared.node, %local_addr, peers = shared.peers.len(), "QUIC transport started");
        Ok(Arc::new(QuicTransport { shared, local_addr }))
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every peer's state, by node id.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.shared
            .peers
            .values()
            .map(|peer| peer.status())
            .collect()
    }

    /// Totals over every peer and the endpoint.
    pub fn stats(&self) -> QuicStats {
        let mut stats = QuicStats {
            malformed_frames: self.shared.counters.malformed.load(Ordering::Relaxed),
            connections_refused: self.shared.counters.refused.load(Ordering::Relaxed),
            ..QuicStats::default()
        };
        for peer in self.shared.peers.values() {
            let c = &peer.counters;
            stats.frames_sent += c.frames_sent.load(Ordering::Relaxed);
            stats.bytes_sent += c.bytes_sent.load(Ordering::Relaxed);
            stats.frames_received += c.frames_received.load(Ordering::Relaxed);
            stats.bytes_received += c.bytes_received.load(Ordering::Relaxed);
            stats.frames_dropped += c.frames_dropped.load(Ordering::Relaxed);
            stats.inbox_full += c.inbox_full.load(Ordering::Relaxed);
            stats.malformed_frames += c.malformed.load(Ordering::Relaxed);
            stats.reconnects += c.reconnects.load(Ordering::Relaxed);
        }
        stats
    }

    /// Closes every connection (peers see a close, not a timeout) and stops
    /// the tasks; later sends fail with [`TransportError::Shutdown`].
    /// Frames still queued are dropped. Idempotent.
    pub fn shutdown(&self) {
        if self.shared.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared
            .endpoint
            .close(close::SHUTDOWN, b"node shutting down");
        self.shared.shutdown.send_replace(true);
        info!(node = self.shared.node, "QUIC transport shut down");
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for QuicTransport {
    fn local_node(&self) -> NodeId {
        self.shared.node
    }

    /// Queues `frame` for its destination without blocking: snapshot
    /// chunks on the snapshot queue, the rest on the Raft queue. The
    /// transport stamps its own id as the sender (the receiver would close
    /// the connection over any other). Fails with `QueueFull` if either
    /// part could not be queued — the other part may have been.
    fn send(&self, mut frame: Frame) -> Result<(), TransportError> {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(TransportError::Shutdown);
        }
        let Some(peer) = self.shared.peers.get(&frame.to) else {
            return Err(TransportError::UnknownNode(frame.to));
        };
        frame.from = self.shared.node;
        let chunks = std::mem::take(&mut frame.snapshot_chunks);
        let mut result = Ok(());
        if !chunks.is_empty() {
            let mut snapshot = Frame::new(frame.from, frame.to);
            snapshot.snapshot_chunks = chunks;
            result = peer.enqueue(&peer.snapshot, snapshot);
        }
        if !frame.is_empty() {
            result = result.and(peer.enqueue(&peer.raft, frame));
        }
        result
    }
}

/// Accepts incoming connections until the endpoint closes; each handshake
/// runs in a task of its own so a slow one delays no other.
async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        tokio::spawn(Arc::clone(&shared).admit(incoming));
    }
    debug!(node = shared.node, "endpoint closed");
}
