//! Clients: a program holding a client certificate calls a node, one
//! bidirectional stream per call (a length-prefixed request, then a
//! length-prefixed response; see [`super::codec`]). [`QuicClient`] is the
//! calling side, [`serve`] the node's.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, ConnectionError, ReadExactError, RecvStream, SendStream, WriteError};
use tracing::{debug, info, warn};

use super::codec::LENGTH_PREFIX_BYTES;
use super::{
    close, is_tls_failure, peer_identity, ClientHandler, QuicError, Shared, IDLE_TIMEOUT,
    KEEP_ALIVE,
};
use crate::tls::{node_server_name, Credentials, Identity, TlsFiles};
use crate::NodeId;

/// The largest response a client accepts, like a node's default
/// `frame_bytes_max`.
const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// A client connected to one node. Calls may run concurrently; dropping
/// the client closes the connection.
#[derive(Debug)]
pub struct QuicClient {
    node: NodeId,
    connection: Connection,
    /// Kept for the connection's lifetime: it drives the socket.
    _endpoint: quinn::Endpoint,
}

impl QuicClient {
    /// Connects to node `node` at `addr` with the client certificate in
    /// `tls`. Fails if the node's certificate does not name `node`. A node
    /// that serves no clients closes the connection right after the
    /// handshake: that shows as [`QuicError::Refused`], here or on the
    /// first call.
    pub async fn connect(
        addr: SocketAddr,
        node: NodeId,
        tls: &TlsFiles,
    ) -> Result<QuicClient, QuicError> {
        let credentials = Credentials::load(tls)?;
        if !matches!(credentials.identity(), Identity::Client(_)) {
            return Err(QuicError::Config(format!(
                "{} is the certificate of {}: a client needs a client certificate",
                tls.cert.display(),
                credentials.identity()
            )));
        }
        let crypto = QuicClientConfig::try_from(credentials.client_config()?)
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        // The node opens no streams towards a client.
        config.transport_config(super::transport_config(IDLE_TIMEOUT, KEEP_ALIVE, 0, 0)?);
        let bind: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|source| QuicError::Bind { addr: bind, source })?;
        let connect_error = |reason: String| QuicError::Connect { addr, reason };
        let connection = endpoint
            .connect_with(config, addr, &node_server_name(node))
            .map_err(|error| connect_error(error.to_string()))?
            .await
            .map_err(|error| match connection_error(error) {
                QuicError::Connection(reason) => connect_error(reason),
                other => other,
            })?;
        let expected = Identity::Node(node);
        let actual = peer_identity(&connection)?;
        if actual != expected {
            connection.close(close::REFUSED, b"not the node dialed");
            return Err(QuicError::WrongPeer { expected, actual });
        }
        Ok(QuicClient {
            node,
            connection,
            _endpoint: endpoint,
        })
    }

    /// The node this client is connected to.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Sends `request` and waits for the node's response.
    pub async fn call(&self, request: Vec<u8>) -> Result<Vec<u8>, QuicError> {
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(connection_error)?;
        let prefix = length_prefix(request.len())?;
        write_message(&mut send, prefix, &request)
            .await
            .map_err(write_error)?;
        // Only fails if the stream is already finished or reset.
        let _ = send.finish();
        read_message(&mut recv, RESPONSE_BYTES_MAX).await
    }
}

/// The typed error for a lost connection: a refusal by the node (its
/// close code, or a TLS alert it sent) is [`QuicError::Refused`], a
/// certificate this side rejected [`QuicError::Handshake`].
fn connection_error(error: ConnectionError) -> QuicError {
    match &error {
        ConnectionError::TransportError(_) if is_tls_failure(&error) => {
            QuicError::Handshake(error.to_string())
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == close::REFUSED => {
            QuicError::Refused(String::from_utf8_lossy(&close.reason).into_owned())
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == close::PROTOCOL => {
            QuicError::Protocol(String::from_utf8_lossy(&close.reason).into_owned())
        }
        _ if is_tls_failure(&error) => QuicError::Refused(format!("TLS: {error}")),
        _ => QuicError::Connection(error.to_string()),
    }
}

fn write_error(error: WriteError) -> QuicError {
    match error {
        WriteError::ConnectionLost(error) => connection_error(error),
        other => QuicError::Connection(other.to_string()),
    }
}

fn read_error(error: ReadExactError) -> QuicError {
    match error {
        ReadExactError::FinishedEarly(read) => {
            QuicError::Protocol(format!("the stream ended after {read} bytes of a message"))
        }
        ReadExactError::ReadError(quinn::ReadError::ConnectionLost(error)) => {
            connection_error(error)
        }
        ReadExactError::ReadError(error) => QuicError::Connection(error.to_string()),
    }
}

/// The length prefix of a message of `len` bytes, if a u32 can say it.
fn length_prefix(len: usize) -> Result<[u8; LENGTH_PREFIX_BYTES], QuicError> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| QuicError::TooLarge {
            len: len as u64,
            max: u32::MAX as usize,
        })
}

async fn write_message(
    send: &mut SendStream,
    prefix: [u8; LENGTH_PREFIX_BYTES],
    message: &[u8],
) -> Result<(), WriteError> {
    send.write_all(&prefix).await?;
    send.write_all(message).await
}

/// One length-prefixed message, at most `bytes_max` long.
async fn read_message(recv: &mut RecvStream, bytes_max: usize) -> Result<Vec<u8>, QuicError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(read_error)?;
    let len = u32::from_le_bytes(prefix);
    if u64::from(len) > bytes_max as u64 {
        return Err(QuicError::TooLarge {
            len: u64::from(len),
            max: bytes_max,
        });
    }
    let mut message = vec![0; len as usize];
    recv.read_exact(&mut message).await.map_err(read_error)?;
    Ok(message)
}

/// Serves client `name`'s calls on `connection` until it closes. Each call
/// runs in a task of its own; a client that breaks the protocol (an
/// oversized request, a unidirectional stream) loses its connection.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    connection: Connection,
    name: String,
    handler: Arc<dyn ClientHandler>,
) {
    info!(node = shared.node, client = %name, remote = %connection.remote_address(), "client connected");
    loop {
        tokio::select! {
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let call = serve_call(Arc::clone(&shared), connection.clone(), name.clone(), Arc::clone(&handler), send, recv);
                    tokio::spawn(call);
                }
                Err(error) => {
                    debug!(node = shared.node, client = %name, %error, "client connection ended");
                    return;
                }
            },
            stream = connection.accept_uni() => {
                if stream.is_ok() {
                    violation(&shared, &connection, &name, "a client opened a unidirectional stream");
                }
                return;
            }
        }
    }
}

async fn serve_call(
    shared: Arc<Shared>,
    connection: Connection,
    name: String,
    handler: Arc<dyn ClientHandler>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let request = match read_message(&mut recv, shared.config.frame_bytes_max).await {
        Ok(request) => request,
        Err(QuicError::TooLarge { len, max }) => {
            let reason = format!("a request of {len} bytes is over the limit of {max} bytes");
            violation(&shared, &connection, &name, &reason);
            return;
        }
        Err(QuicError::Protocol(reason)) => {
            violation(&shared, &connection, &name, &reason);
            return;
        }
        Err(error) => {
            debug!(node = shared.node, client = %name, %error, "a call ended before its request");
            return;
        }
    };
    let response = handler.handle(request).await;
    // On failure the client sees its call fail, never a silent empty answer.
    let sent = match length_prefix(response.len()) {
        Ok(prefix) => write_message(&mut send, prefix, &response)
            .await
            .map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match sent {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(error) => {
            warn!(node = shared.node, client = %name, %error, "could not send a response");
            let _ = send.reset(close::PROTOCOL);
        }
    }
}

fn violation(shared: &Shared, connection: &Connection, name: &str, reason: &str) {
    warn!(node = shared.node, client = %name, %reason, "closing a client connection: protocol violation");
    shared.counters.client_malformed(name);
    connection.close(close::PROTOCOL, reason.as_bytes());
}
