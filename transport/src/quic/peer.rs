//! One peer node: its send queues, its counters, and the task that keeps
//! a connection to it up (dialing it or waiting for it) and runs the
//! streams of that connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn::{Connection, ReadExactError, RecvStream, SendStream};
use rkyv::util::AlignedVec;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::codec::{self, EncodedFrame, StreamKind, LENGTH_PREFIX_BYTES};
use super::stats::{DropReason, PeerCounters};
use super::{close, peer_identity, PeerStatus, QuicError, Shared};
use crate::tls::{node_server_name, Identity};
use crate::{Frame, NodeId, TransportError};

/// Connections from a peer waiting for its task: one, plus one that
/// replaces it after a restart.
const INCOMING_QUEUE: usize = 2;

/// A peer node, as `send` and the status pages see it.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) node: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) raft: mpsc::Sender<Frame>,
    pub(crate) snapshot: mpsc::Sender<Frame>,
    /// Connections the peer dialed, accepted by the endpoint.
    pub(crate) incoming: mpsc::Sender<Connection>,
    pub(crate) counters: PeerCounters,
}

impl Peer {
    /// A peer with empty queues, and the task that will drain them.
    pub(crate) fn new(
        node: NodeId,
        addr: SocketAddr,
        queue_frames_max: usize,
    ) -> (Arc<Peer>, PeerTask) {
        let (raft, raft_queue) = mpsc::channel(queue_frames_max);
        let (snapshot, snapshot_queue) = mpsc::channel(queue_frames_max);
        let (incoming, incoming_queue) = mpsc::channel(INCOMING_QUEUE);
        let peer = Arc::new(Peer {
            node,
            addr,
            raft,
            snapshot,
            incoming,
            counters: PeerCounters::default(),
        });
        let task = PeerTask {
            peer: Arc::clone(&peer),
            raft: raft_queue,
            snapshot: snapshot_queue,
            incoming: incoming_queue,
        };
        (peer, task)
    }

    /// Queues `frame` on `queue` (one of this peer's), or drops it.
    pub(crate) fn enqueue(
        &self,
        queue: &mpsc::Sender<Frame>,
        frame: Frame,
    ) -> Result<(), TransportError> {
        match queue.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped(self.node, DropReason::QueueFull);
                Err(TransportError::QueueFull(self.node))
            }
            // The peer's task ended: the transport is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TransportError::Shutdown),
        }
    }

    pub(crate) fn status(&self) -> PeerStatus {
        let c = &self.counters;
        PeerStatus {
            node: self.node,
            addr: self.addr,
            connected: c.connected.load(Ordering::Relaxed),
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
            last_received: *c.last_received.lock(),
        }
    }
}

/// The task of one peer; it owns the receiving ends of the peer's queues,
/// so frames wait in them while no connection is up.
#[derive(Debug)]
pub(crate) struct PeerTask {
    peer: Arc<Peer>,
    raft: mpsc::Receiver<Frame>,
    snapshot: mpsc::Receiver<Frame>,
    incoming: mpsc::Receiver<Connection>,
}

impl PeerTask {
    /// Keeps a connection to the peer up until the transport shuts down:
    /// dials it if this node has the lower id, else waits for it to dial.
    pub(crate) async fn run(self, shared: Arc<Shared>) {
        let PeerTask {
            peer,
            mut raft,
            mut snapshot,
            mut incoming,
        } = self;
        let mut queues = Queues {
            raft: &mut raft,
            snapshot: &mut snapshot,
        };
        tokio::select! {
            () = shared.stopping() => {}
            () = async {
                if shared.node < peer.node {
                    dial_loop(&shared, &peer, &mut queues).await;
                } else {
                    accept_loop(&shared, &peer, &mut queues, &mut incoming).await;
                }
            } => {}
        }
    }
}

struct Queues<'a> {
    raft: &'a mut mpsc::Receiver<Frame>,
    snapshot: &'a mut mpsc::Receiver<Frame>,
}

/// Dials the peer, runs the connection until it is lost, waits, dials
/// again. The backoff starts over only after a connection that lasted
/// `reconnect_max`: a peer that accepts the handshake and then closes the
/// connection at once (it refuses this node) is dialed less and less often.
async fn dial_loop(shared: &Shared, peer: &Peer, queues: &mut Queues<'_>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    loop {
        match dial(shared, peer).await {
            Ok(connection) => {
                let connected = Instant::now();
                session(shared, peer, &connection, queues).await;
                if connected.elapsed() >= config.reconnect_max {
                    backoff.reset();
                }
            }
            Err(error) => debug!(node = shared.node, peer = peer.node, %error, "dial failed"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// A connection to the peer whose certificate names it; anything else is
/// closed (and counted as refused).
async fn dial(shared: &Shared, peer: &Peer) -> Result<Connection, QuicError> {
    let addr = peer.addr;
    let connect_error = |reason: String| QuicError::Connect { addr, reason };
    let connecting = shared
        .endpoint
        .connect_with(
            shared.dial_config.clone(),
            addr,
            &node_server_name(peer.node),
        )
        .map_err(|error| connect_error(error.to_string()))?;
    let connection = connecting.await.map_err(|error| {
        shared.handshake_failed(addr, &error);
        connect_error(error.to_string())
    })?;
    let expected = Identity::Node(peer.node);
    match peer_identity(&connection) {
        Ok(actual) if actual == expected => Ok(connection),
        Ok(actual) => {
            let detail = format!("dialed node {} at {addr}, but {actual} answered", peer.node);
            shared.refuse(&connection, "wrong_node", &detail);
            Err(QuicError::WrongPeer { expected, actual })
        }
        Err(error) => {
            shared.refuse(&connection, "no_identity", &error.to_string());
            Err(error)
        }
    }
}

/// Runs the connections the peer dials, one at a time; a newer one
/// replaces the current one.
async fn accept_loop(
    shared: &Shared,
    peer: &Peer,
    queues: &mut Queues<'_>,
    incoming: &mut mpsc::Receiver<Connection>,
) {
    let mut next = None;
    loop {
        let connection = match next.take() {
            Some(connection) => connection,
            None => match incoming.recv().await {
                Some(connection) => connection,
                None => return,
            },
        };
        tokio::select! {
            () = session(shared, peer, &connection, queues) => {}
            newer = incoming.recv() => {
                info!(node = shared.node, peer = peer.node, "a newer connection replaces the current one");
                connection.close(close::REPLACED, b"replaced by a newer connection");
                next = newer;
            }
        }
    }
}

/// Why a connection's streams stopped.
enum End {
    /// The connection went away (closed, timed out, reset).
    Lost(String),
    /// The peer broke the protocol; the connection must be closed.
    Violation(String),
}

/// Marks the peer connected for as long as a session runs, however it
/// ends (a session is dropped when a newer connection replaces it).
struct Connected<'a>(&'a Peer);

impl<'a> Connected<'a> {
    fn new(peer: &'a Peer) -> Self {
        peer.counters.set_connected(peer.node, true);
        Connected(peer)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.counters.set_connected(self.0.node, false);
    }
}

/// Sends and receives on `connection` until it ends: two streams out
/// (Raft, snapshot), two in.
async fn session(shared: &Shared, peer: &Peer, connection: &Connection, queues: &mut Queues<'_>) {
    let _connected = Connected::new(peer);
    info!(node = shared.node, peer = peer.node, remote = %connection.remote_address(), "connected");
    let seen = AtomicU8::new(0);
    let end = tokio::select! {
        end = send_stream(shared, peer, connection, StreamKind::Raft, queues.raft) => end,
        end = send_stream(shared, peer, connection, StreamKind::Snapshot, queues.snapshot) => end,
        end = receive_stream(shared, peer, connection, &seen) => end,
        end = receive_stream(shared, peer, connection, &seen) => end,
    };
    match end {
        End::Lost(reason) => {
            info!(node = shared.node, peer = peer.node, %reason, "connection lost");
        }
        End::Violation(reason) => {
            warn!(node = shared.node, peer = peer.node, %reason, "closing the connection: protocol violation");
            peer.counters.malformed(peer.node);
            connection.close(close::PROTOCOL, reason.as_bytes());
        }
    }
}

/// Opens the stream of `kind` and writes the frames of `queue` to it.
async fn send_stream(
    shared: &Shared,
    peer: &Peer,
    connection: &Connection,
    kind: StreamKind,
    queue: &mut mpsc::Receiver<Frame>,
) -> End {
    let lost = |error: &dyn std::fmt::Display| End::Lost(error.to_string());
    let mut stream = match connection.open_uni().await {
        Ok(stream) => stream,
        Err(error) => return lost(&error),
    };
    // Quinn sends the pending data of higher-priority streams first: a
    // heartbeat overtakes snapshot bytes already queued.
    let priority = match kind {
        StreamKind::Raft => 1,
        StreamKind::Snapshot => 0,
    };
    if let Err(error) = stream.set_priority(priority) {
        return lost(&error);
    }
    if let Err(error) = stream.write_all(&kind.header()).await {
        return lost(&error);
    }
    loop {
        let Some(frame) = queue.recv().await else {
            return End::Lost("the transport is gone".into());
        };
        let encoded = match codec::encode_frame(&frame, shared.config.frame_bytes_max) {
            Ok(encoded) => encoded,
            Err(error) => {
                warn!(node = shared.node, peer = peer.node, %error, "dropped a frame that cannot be sent");
                peer.counters.dropped(peer.node, DropReason::TooLarge);
                continue;
            }
        };
        if let Err(error) = write_frame(&mut stream, &encoded).await {
            return lost(&error);
        }
        peer.counters.sent(peer.node, encoded.wire_bytes());
    }
}

async fn write_frame(
    stream: &mut SendStream,
    encoded: &EncodedFrame,
) -> Result<(), quinn::WriteError> {
    stream.write_all(&encoded.prefix()).await?;
    stream.write_all(encoded.archive()).await
}

/// Accepts one of the peer's streams and delivers its frames.
async fn receive_stream(
    shared: &Shared,
    peer: &Peer,
    connection: &Connection,
    seen: &AtomicU8,
) -> End {
    let mut stream = match connection.accept_uni().await {
        Ok(stream) => stream,
        Err(error) => return End::Lost(error.to_string()),
    };
    let mut header = [0u8; 4];
    if let Err(end) = read_exact(&mut stream, &mut header, true).await {
        return end;
    }
    let kind = match StreamKind::from_header(header) {
        Ok(kind) => kind,
        Err(error) => return End::Violation(error.to_string()),
    };
    let bit = match kind {
        StreamKind::Raft => 1,
        StreamKind::Snapshot => 2,
    };
    if seen.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
        return End::Violation(format!("a second {kind:?} stream"));
    }
    loop {
        match receive_frame(shared, peer, &mut stream).await {
            Ok(frame) => shared.deliver(peer, frame),
            Err(end) => return end,
        }
    }
}

/// Reads, validates and checks one frame.
async fn receive_frame(
    shared: &Shared,
    peer: &Peer,
    stream: &mut RecvStream,
) -> Result<Frame, End> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    read_exact(stream, &mut prefix, true).await?;
    let len = codec::decode_length(prefix, shared.config.frame_bytes_max)
        .map_err(|error| End::Violation(error.to_string()))?;
    let mut archive = AlignedVec::<16>::with_capacity(len);
    archive.resize(len, 0);
    read_exact(stream, &mut archive, false).await?;
    let frame =
        codec::decode_aligned(&archive).map_err(|error| End::Violation(error.to_string()))?;
    if frame.from != peer.node || frame.to != shared.node {
        return Err(End::Violation(format!(
            "a frame from node {} to node {} on the connection of node {} to node {}",
            frame.from, frame.to, peer.node, shared.node
        )));
    }
    peer.counters.received(peer.node, LENGTH_PREFIX_BYTES + len);
    Ok(frame)
}

/// Fills `buf`. A stream that ends cleanly where a frame could start
/// (`at_boundary`) is a closing peer; one that ends inside a frame broke
/// the protocol.
async fn read_exact(stream: &mut RecvStream, buf: &mut [u8], at_boundary: bool) -> Result<(), End> {
    match stream.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(ReadExactError::FinishedEarly(0)) if at_boundary => {
            Err(End::Lost("the peer finished its stream".into()))
        }
        Err(ReadExactError::FinishedEarly(read)) => Err(End::Violation(format!(
            "the stream ended {read} bytes into a {} byte read",
            buf.len()
        ))),
        Err(ReadExactError::ReadError(error)) => Err(End::Lost(error.to_string())),
    }
}
