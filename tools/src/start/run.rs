//! `flotilla start`: one node as a process. It opens the node's data,
//! listens on QUIC for its peers and for clients, serves its status over
//! HTTP, and runs until SIGTERM or SIGINT, then stops in order: the
//! workers fail what is in flight, the transport closes its connections
//! (peers see a close, not a timeout), the status server stops.
//!
//! Client calls arrive on the transport ([`ClientHandler`]) and run on the
//! node's [`Db`] through [`flotilla::client::serve`]. The handler exists
//! before the node does (the node needs the transport to open), so calls
//! that arrive while the node is still opening are answered `Unavailable`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use flotilla::client::{encode_response, serve, ClientResponse, WireError};
use flotilla::{Db, Node};
use flotilla_transport::quic::{ClientHandler, QuicConfig, QuicTransport};
use flotilla_transport::tls::TlsFiles;
use flotilla_transport::Frame;

use super::config::Settings;
use super::status::{self, PeerView, StatusServer, StatusState};
use super::ShutdownSignals;

/// Frames the node's inbox holds; beyond that the transport drops them
/// (Raft tolerates the loss) rather than block its connections.
const INBOX_FRAMES_MAX: usize = 16_384;

/// Why the node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for SIGTERM/SIGINT: {0}")]
    Signals(std::io::Error),
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("transport: {0}")]
    Transport(#[from] flotilla_transport::quic::QuicError),
    #[error("opening the node: {0}")]
    Node(#[from] flotilla::Error),
    #[error("status server on {addr}: {source}")]
    Status {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Answers client calls with the node's [`Db`], once there is one.
#[derive(Debug, Default)]
struct DbHandler {
    db: OnceLock<Db>,
}

impl ClientHandler for DbHandler {
    fn handle(
        &self,
        request: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send + 'static>> {
        let db = self.db.get().cloned();
        Box::pin(async move {
            match db {
                Some(db) => serve(&db, &request).await,
                None => encode_response(&ClientResponse::Error(WireError::Unavailable(
                    "the node is still opening".to_string(),
                ))),
            }
        })
    }
}

/// Runs the node `settings` describe until a stop signal; `ready` is
/// called once the node is open and serving, with the status address
/// actually bound (port 0 picks one).
pub fn run(
    settings: Settings,
    ready: impl FnOnce(&Settings, Option<std::net::SocketAddr>),
) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flotilla-io")
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    // Listening first: a SIGTERM during startup still stops the node in
    // order once it is up.
    let signals = {
        let _entered = runtime.enter();
        ShutdownSignals::install().map_err(StartError::Signals)?
    };
    let metrics =
        status::install_metrics_recorder().map_err(|e| StartError::Metrics(e.to_string()))?;

    let (inbox_sender, inbox) = crossbeam_channel::bounded::<Frame>(INBOX_FRAMES_MAX);
    let handler = Arc::new(DbHandler::default());
    let tls = TlsFiles {
        ca_cert: settings.tls.ca.clone(),
        cert: settings.tls.cert.clone(),
        key: settings.tls.key.clone(),
    };
    let quic = QuicConfig::new(settings.id, settings.listen, settings.peers.clone(), tls);
    let transport = QuicTransport::start(
        quic,
        runtime.handle(),
        inbox_sender,
        Some(Arc::clone(&handler) as Arc<dyn ClientHandler>),
    )?;
    let opening = Instant::now();
    let node = match Node::open(settings.node_options(), transport.clone(), inbox) {
        Ok(node) => node,
        Err(error) => {
            transport.shutdown();
            return Err(error.into());
        }
    };
    // Cannot be set already: this is the only place that sets it.
    let _ = handler.db.set(node.db());
    tracing::info!(
        node = settings.id,
        ms = opening.elapsed().as_millis() as u64,
        "node open"
    );

    let (stop_status, status_stopped) = tokio::sync::watch::channel(false);
    let mut status_task = None;
    let mut status_addr = None;
    if let Some(addr) = settings.status {
        let server = runtime
            .block_on(StatusServer::bind(addr))
            .map_err(|source| StartError::Status { addr, source })?;
        status_addr = server.local_addr().ok();
        let peers_of = Arc::clone(&transport);
        let state = StatusState::new(
            &node,
            metrics,
            Arc::new(move || {
                peers_of
                    .peers()
                    .into_iter()
                    .map(|peer| PeerView {
                        node: peer.node,
                        addr: peer.addr,
                        connected: peer.connected,
                        last_heard_ms: peer.last_received.map(|t| t.elapsed().as_millis() as u64),
                        frames_sent: peer.frames_sent,
                        frames_received: peer.frames_received,
                    })
                    .collect()
            }),
        );
        let mut stopped = status_stopped.clone();
        status_task = Some(runtime.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            };
            server.run(state, shutdown).await
        }));
    }
    ready(&settings, status_addr);

    let signal = runtime.block_on(signals.wait());
    tracing::info!(node = settings.id, ?signal, "stopping");
    node.shutdown();
    transport.shutdown();
    let _ = stop_status.send(true);
    if let Some(task) = status_task {
        let _ = runtime.block_on(task);
    }
    Ok(())
}
