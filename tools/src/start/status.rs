//! The node's status HTTP server: `/metrics` in Prometheus' text format and
//! `/status` as JSON, on the status address (a plain-HTTP port meant for a
//! private network or localhost; the cluster's traffic is on QUIC).
//!
//! `/metrics` renders the process-wide `metrics` recorder, which the
//! process installs once ([`install_metrics_recorder`]) before it opens the
//! node, so that the engine's metrics from the first tick on are recorded.
//! `/status` reports the node's counters ([`flotilla::NodeStats`]) and its
//! peers. Peers belong to the transport, which this module does not know:
//! the caller passes a [`PeerSource`] that lists them.
//!
//! ```json
//! {"node":1,"version":"0.1.0","uptime_ms":5203,"workers":2,"ranges":64,
//!  "leaders":21,"awake_groups":3,"quiesced_groups":61,"rounds":1200,
//!  "frames_sent":2400,"peers":[{"node":2,"addr":"10.0.0.2:7000",
//!  "connected":true,"last_heard_ms":12}]}
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use flotilla::{Node, StatsReader};
use flotilla_transport::NodeId;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

/// How often the recorder's upkeep runs while the server does: it drains
/// histogram samples into their summaries, which would otherwise grow
/// until the next scrape.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// and returns the handle that renders it. It can be installed once per
/// process: a second call fails.
pub fn install_metrics_recorder() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new().install_recorder()
}

/// One peer node as the transport sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub node: NodeId,
    pub addr: SocketAddr,
    /// Whether a connection to it is open.
    pub connected: bool,
    /// Milliseconds since anything was heard from it; `None` if nothing
    /// ever was.
    pub last_heard_ms: Option<u64>,
    /// Frames sent to it and received from it since the node started.
    #[serde(default)]
    pub frames_sent: u64,
    #[serde(default)]
    pub frames_received: u64,
}

/// Lists the node's peers when `/status` is asked for.
pub type PeerSource = Arc<dyn Fn() -> Vec<PeerView> + Send + Sync>;

/// The body of `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: NodeId,
    /// The flotilla release.
    pub version: String,
    pub uptime_ms: u64,
    pub workers: usize,
    /// Replicas hosted here.
    pub ranges: usize,
    /// Ranges this node leads.
    pub leaders: usize,
    /// Replicas being ticked.
    pub awake_groups: usize,
    /// Idle replicas: neither ticked nor heartbeating.
    pub quiesced_groups: usize,
    /// Worker rounds that had work.
    pub rounds: u64,
    pub frames_sent: u64,
    pub peers: Vec<PeerView>,
}

/// What the status server reports from. It holds the node's counters, not
/// the node, so that serving status never keeps a node from shutting down.
#[derive(Clone)]
pub struct StatusState {
    node: NodeId,
    workers: usize,
    stats: StatsReader,
    started: Instant,
    peers: PeerSource,
    metrics: PrometheusHandle,
}

impl std::fmt::Debug for StatusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusState")
            .field("node", &self.node)
            .field("workers", &self.workers)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl StatusState {
    /// The state for `node`, whose uptime counts from now (make it when
    /// the node has opened).
    pub fn new(node: &Node, metrics: PrometheusHandle, peers: PeerSource) -> StatusState {
        StatusState {
            node: node.id(),
            workers: node.workers(),
            stats: node.stats_reader(),
            started: Instant::now(),
            peers,
            metrics,
        }
    }

    /// What `/status` answers now.
    pub fn report(&self) -> StatusReport {
        let stats = self.stats.read();
        StatusReport {
            node: self.node,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            workers: self.workers,
            ranges: stats.ranges,
            leaders: stats.leaders,
            awake_groups: stats.awake_groups,
            quiesced_groups: stats.quiesced_groups,
            rounds: stats.rounds,
            frames_sent: stats.frames_sent,
            peers: (self.peers)(),
        }
    }
}

async fn status(State(state): State<StatusState>) -> Response {
    match serde_json::to_string(&state.report()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the status: {error}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<StatusState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: this server has /status (JSON) and /metrics (Prometheus)\n",
    )
        .into_response()
}

/// A status server bound to its address, not yet serving: binding first
/// lets the caller learn the address (port 0 picks a free one) and fail
/// early if it is taken.
#[derive(Debug)]
pub struct StatusServer {
    listener: tokio::net::TcpListener,
}

impl StatusServer {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<StatusServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(StatusServer { listener })
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then finishes the requests being
    /// answered and returns.
    pub async fn run(
        self,
        state: StatusState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let handle = state.metrics.clone();
        let upkeep = tokio::spawn(async move {
            let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                interval.tick().await;
                handle.run_upkeep();
            }
        });
        let app = Router::new()
            .route("/status", get(status))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .with_state(state);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        upkeep.abort();
        served
    }
}

/// Binds `addr` and serves `/status` and `/metrics` until `shutdown`
/// resolves.
pub async fn serve(
    addr: SocketAddr,
    state: StatusState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    StatusServer::bind(addr).await?.run(state, shutdown).await
}
