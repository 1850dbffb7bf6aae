//! Counters of the QUIC transport, kept twice: as atomics behind
//! [`QuicTransport::peers`](super::QuicTransport::peers) and
//! [`QuicTransport::stats`](super::QuicTransport::stats) (for tests and
//! status pages), and as `metrics` counters (for Prometheus):
//!
//! | metric | labels |
//! |---|---|
//! | `flotilla_transport_frames_sent_total` | `peer` |
//! | `flotilla_transport_bytes_sent_total` | `peer` |
//! | `flotilla_transport_frames_received_total` | `peer` |
//! | `flotilla_transport_bytes_received_total` | `peer` |
//! | `flotilla_transport_frames_dropped_total` | `peer`, `reason` = `queue_full`, `inbox_full`, `too_large` |
//! | `flotilla_transport_malformed_frames_total` | `peer` (a node id or `client:{name}`) |
//! | `flotilla_transport_connections_refused_total` | `reason` |
//! | `flotilla_transport_reconnects_total` | `peer` |
//! | `flotilla_transport_peer_connected` (gauge, 0 or 1) | `peer` |
//!
//! Frames and bytes are counted as they cross the wire: one frame handed to
//! `send` with snapshot chunks and other traffic is two wire frames, and
//! bytes include the length prefix (not QUIC's own overhead).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::NodeId;

/// Why a frame did not reach the network or the inbox.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DropReason {
    /// The peer's send queue was full.
    QueueFull,
    /// This node's inbox was full when the frame arrived.
    InboxFull,
    /// The frame's archive was over `frame_bytes_max`.
    TooLarge,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::InboxFull => "inbox_full",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// What happened on the way to and from one peer.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) connected: AtomicBool,
    /// Set by the first connection; a later one is a reconnect.
    pub(crate) ever_connected: AtomicBool,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    /// Not queued for sending (queue full, too large).
    pub(crate) frames_dropped: AtomicU64,
    /// Received but not delivered: the inbox was full.
    pub(crate) inbox_full: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) last_received: Mutex<Option<Instant>>,
}

impl PeerCounters {
    pub(crate) fn sent(&self, peer: NodeId, bytes: usize) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        let peer = peer.to_string();
        metrics::counter!("flotilla_transport_frames_sent_total", "peer" => peer.clone())
            .increment(1);
        metrics::counter!("flotilla_transport_bytes_sent_total", "peer" => peer)
            .increment(bytes as u64);
    }

    pub(crate) fn received(&self, peer: NodeId, bytes: usize) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        *self.last_received.lock() = Some(Instant::now());
        let peer = peer.to_string();
        metrics::counter!("flotilla_transport_frames_received_total", "peer" => peer.clone())
            .increment(1);
        metrics::counter!("flotilla_transport_bytes_received_total", "peer" => peer)
            .increment(bytes as u64);
    }

    pub(crate) fn dropped(&self, peer: NodeId, reason: DropReason) {
        match reason {
            DropReason::InboxFull => &self.inbox_full,
            DropReason::QueueFull | DropReason::TooLarge => &self.frames_dropped,
        }
        .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "flotilla_transport_frames_dropped_total",
            "peer" => peer.to_string(),
            "reason" => reason.label()
        )
        .increment(1);
    }

    pub(crate) fn malformed(&self, peer: NodeId) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
        malformed(peer.to_string());
    }

    pub(crate) fn set_connected(&self, peer: NodeId, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        metrics::gauge!("flotilla_transport_peer_connected", "peer" => peer.to_string())
            .set(if connected { 1.0 } else { 0.0 });
        if connected && self.ever_connected.swap(true, Ordering::Relaxed) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flotilla_transport_reconnects_total", "peer" => peer.to_string())
                .increment(1);
        }
    }
}

/// Counters that belong to no configured peer.
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    pub(crate) refused: AtomicU64,
    /// Malformed input from clients.
    pub(crate) malformed: AtomicU64,
}

impl EndpointCounters {
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flotilla_transport_connections_refused_total", "reason" => reason)
            .increment(1);
    }

    pub(crate) fn client_malformed(&self, client: &str) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
        malformed(format!("client:{client}"));
    }
}

fn malformed(peer: String) {
    metrics::counter!("flotilla_transport_malformed_frames_total", "peer" => peer).increment(1);
}
