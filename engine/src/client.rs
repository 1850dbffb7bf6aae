//! The client protocol: how a program outside the node's process talks to
//! it. A request is one message, its answer one message; the transport
//! (QUIC in `flotilla start`) carries the bytes and knows nothing of them.
//!
//! - **Codec.** [`ClientRequest`] and [`ClientResponse`] are rkyv archives
//!   behind a 4-byte header: three magic bytes (`FLQ` for a request, `FLR`
//!   for a response, so that one is never mistaken for the other) and the
//!   protocol version ([`PROTOCOL_VERSION`]). A peer speaking another
//!   version is told so by name instead of having its bytes misread.
//!   Decoding validates the archive (bytecheck) before using it: bad bytes
//!   are an [`Error::InvalidArgument`], never a panic.
//! - **Server.** [`serve`] decodes a request, runs it on a [`Db`] and
//!   encodes the answer. Every failure, a request that does not decode
//!   included, is answered as a [`WireError`], which maps one to one onto
//!   [`Error`], message included.
//! - **Client.** [`RemoteDb`] has the methods of [`Db`] and sends them over
//!   one [`Caller`] per node, failing over between nodes by the rule in its
//!   docs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_transport::{GroupId, NodeId};
use rkyv::{Archive, Deserialize, Serialize};

use crate::db::{Db, Error};
use crate::node::RangeDescriptor;
use crate::range::{Command, CommandResult, KeySpan, KeyValue};

/// The protocol version this build speaks; the fourth byte of every
/// message. Raise it with any change to the archived types: a node and a
/// client of different versions then refuse each other's messages with an
/// error that says so, rather than misreading them.
pub const PROTOCOL_VERSION: u8 = 1;
/// The first bytes of a request.
const REQUEST_MAGIC: [u8; 3] = *b"FLQ";
/// The first bytes of a response.
const RESPONSE_MAGIC: [u8; 3] = *b"FLR";
/// Magic and version.
const HEADER_BYTES: usize = 4;

/// The most rows one scan request may ask for. A scan's answer is one
/// message held in memory on both sides, so its size needs a bound the
/// client chooses knowingly: a larger limit is refused (not silently cut,
/// which a client would misread as the end of the range). Read further by
/// scanning again from the last key returned.
pub const SCAN_LIMIT_MAX: u64 = 10_000;

/// How long [`RemoteDb`] waits for one node's answer by default. A healthy
/// node answers every request within its own deadlines (a client request
/// in about a second, a membership change in up to `admin_timeout_ticks`,
/// 10 s by default, and a request without a leader is retried for 5 s), so
/// this only catches a node or connection that went silent.
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// A request to a node: one [`Db`] operation.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ClientRequest {
    /// [`Db::put`].
    Put { key: Vec<u8>, value: Vec<u8> },
    /// [`Db::get`]: linearizable.
    Get { key: Vec<u8> },
    /// [`Db::get_stale`]: the answering node's replica as it is.
    GetStale { key: Vec<u8> },
    /// [`Db::delete`].
    Delete { key: Vec<u8> },
    /// [`Db::cas`]: `None` as `expected` means "absent", as `new` "remove".
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
    /// [`Db::scan`]; `limit` is at most [`SCAN_LIMIT_MAX`].
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u64,
    },
    /// [`Db::scan_stale`]; `limit` is at most [`SCAN_LIMIT_MAX`].
    ScanStale {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u64,
    },
    /// [`Db::batch`].
    Batch(Vec<WireCommand>),
    /// [`Db::ranges`]: the descriptors the answering node routes by.
    Ranges,
    /// [`Db::add_replica`].
    AddReplica { group: GroupId, node: NodeId },
    /// [`Db::remove_replica`].
    RemoveReplica { group: GroupId, node: NodeId },
    /// [`Db::transfer_leader`].
    TransferLeader { group: GroupId, target: NodeId },
}

/// One operation of a batch: a [`Command`] other than a batch (batches do
/// not nest, so the wire type cannot express one).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WireCommand {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// A node's answer to a [`ClientRequest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ClientResponse {
    /// A put or a membership or leadership change is done.
    Done,
    /// The value of a get.
    Value(Option<Vec<u8>>),
    /// A delete: whether the key existed.
    Deleted { existed: bool },
    /// A cas: whether it swapped, and the value it found.
    Cas {
        swapped: bool,
        current: Option<Vec<u8>>,
    },
    /// The pairs of a scan, in key order.
    Rows(Vec<KeyValue>),
    /// What a batch did.
    Batch(WireBatchResult),
    /// The node's range descriptors.
    Ranges(Vec<WireRange>),
    /// The request failed.
    Error(WireError),
}

/// The outcome of a batch ([`CommandResult::Batch`] or
/// [`CommandResult::BatchAborted`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WireBatchResult {
    /// Every operation took effect; one result per operation, in order.
    Committed(Vec<WireOpResult>),
    /// The cas at `failed_op` failed, so none took effect.
    Aborted {
        failed_op: u32,
        current: Option<Vec<u8>>,
    },
}

/// The result of one operation of a committed batch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WireOpResult {
    Applied,
    Cas {
        succeeded: bool,
        current: Option<Vec<u8>>,
    },
    Deleted {
        count: u64,
    },
}

/// A [`RangeDescriptor`] on the wire.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WireRange {
    pub group: GroupId,
    pub start: Vec<u8>,
    /// Empty means +infinity, as in [`KeySpan`].
    pub end: Vec<u8>,
    pub replicas: Vec<NodeId>,
    pub generation: u64,
}

/// An [`Error`] on the wire: one variant per variant, with its message, so
/// that a remote caller sees exactly the error a local one would.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WireError {
    Unavailable(String),
    Timeout,
    NotLeader { leader: Option<NodeId> },
    RangeMismatch(String),
    InvalidArgument(String),
    Corruption(String),
    Io(String),
    Shutdown,
}

impl From<&Error> for WireError {
    fn from(error: &Error) -> WireError {
        // Exhaustive on purpose: a new `Error` variant must get its own wire
        // variant (and a protocol version) rather than fall into another.
        match error {
            Error::Unavailable(message) => WireError::Unavailable(message.clone()),
            Error::Timeout => WireError::Timeout,
            Error::NotLeader { leader } => WireError::NotLeader { leader: *leader },
            Error::RangeMismatch(message) => WireError::RangeMismatch(message.clone()),
            Error::InvalidArgument(message) => WireError::InvalidArgument(message.clone()),
            Error::Corruption(message) => WireError::Corruption(message.clone()),
            Error::Io(message) => WireError::Io(message.clone()),
            Error::Shutdown => WireError::Shutdown,
        }
    }
}

impl From<WireError> for Error {
    fn from(error: WireError) -> Error {
        match error {
            WireError::Unavailable(message) => Error::Unavailable(message),
            WireError::Timeout => Error::Timeout,
            WireError::NotLeader { leader } => Error::NotLeader { leader },
            WireError::RangeMismatch(message) => Error::RangeMismatch(message),
            WireError::InvalidArgument(message) => Error::InvalidArgument(message),
            WireError::Corruption(message) => Error::Corruption(message),
            WireError::Io(message) => Error::Io(message),
            WireError::Shutdown => Error::Shutdown,
        }
    }
}

impl From<WireCommand> for Command {
    fn from(command: WireCommand) -> Command {
        match command {
            WireCommand::Put { key, value } => Command::Put { key, value },
            WireCommand::Delete { key } => Command::Delete { key },
            WireCommand::Cas { key, expected, new } => Command::Cas { key, expected, new },
            WireCommand::DeleteRange { start, end } => Command::DeleteRange { start, end },
        }
    }
}

impl TryFrom<Command> for WireCommand {
    type Error = Error;

    /// Fails for a nested batch, which no range would apply either.
    fn try_from(command: Command) -> Result<WireCommand, Error> {
        match command {
            Command::Put { key, value } => Ok(WireCommand::Put { key, value }),
            Command::Delete { key } => Ok(WireCommand::Delete { key }),
            Command::Cas { key, expected, new } => Ok(WireCommand::Cas { key, expected, new }),
            Command::DeleteRange { start, end } => Ok(WireCommand::DeleteRange { start, end }),
            Command::Batch(_) => Err(Error::InvalidArgument(
                "a batch cannot contain another batch; flatten it".into(),
            )),
        }
    }
}

impl From<&RangeDescriptor> for WireRange {
    fn from(range: &RangeDescriptor) -> WireRange {
        WireRange {
            group: range.group,
            start: range.span.start().to_vec(),
            end: range.span.end().to_vec(),
            replicas: range.replicas.clone(),
            generation: range.generation,
        }
    }
}

impl TryFrom<WireRange> for RangeDescriptor {
    type Error = Error;

    /// Fails for a span no range can have (its end before its start, a
    /// bound longer than a key).
    fn try_from(range: WireRange) -> Result<RangeDescriptor, Error> {
        let span = KeySpan::new(range.start, range.end).map_err(|e| {
            Error::InvalidArgument(format!(
                "range of group {} has a bad span: {e}",
                range.group
            ))
        })?;
        Ok(RangeDescriptor {
            group: range.group,
            span,
            replicas: range.replicas,
            generation: range.generation,
        })
    }
}

impl From<WireBatchResult> for CommandResult {
    fn from(result: WireBatchResult) -> CommandResult {
        match result {
            WireBatchResult::Committed(results) => CommandResult::Batch(
                results
                    .into_iter()
                    .map(|result| match result {
                        WireOpResult::Applied => CommandResult::Applied,
                        WireOpResult::Cas { succeeded, current } => {
                            CommandResult::CasResult { succeeded, current }
                        }
                        WireOpResult::Deleted { count } => CommandResult::Deleted { count },
                    })
                    .collect(),
            ),
            WireBatchResult::Aborted { failed_op, current } => {
                CommandResult::BatchAborted { failed_op, current }
            }
        }
    }
}

impl TryFrom<CommandResult> for WireBatchResult {
    type Error = Error;

    /// Fails for a result a batch never has (a batch's operations are never
    /// batches, and a rejected batch is an error, not a result).
    fn try_from(result: CommandResult) -> Result<WireBatchResult, Error> {
        let unexpected =
            |result: &CommandResult| Error::Io(format!("unexpected batch result {result:?}"));
        match result {
            CommandResult::Batch(results) => results
                .into_iter()
                .map(|result| match result {
                    CommandResult::Applied => Ok(WireOpResult::Applied),
                    CommandResult::CasResult { succeeded, current } => {
                        Ok(WireOpResult::Cas { succeeded, current })
                    }
                    CommandResult::Deleted { count } => Ok(WireOpResult::Deleted { count }),
                    other => Err(unexpected(&other)),
                })
                .collect::<Result<Vec<_>, Error>>()
                .map(WireBatchResult::Committed),
            CommandResult::BatchAborted { failed_op, current } => {
                Ok(WireBatchResult::Aborted { failed_op, current })
            }
            other => Err(unexpected(&other)),
        }
    }
}

fn with_header(magic: [u8; 3], archive: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + archive.len());
    bytes.extend_from_slice(&magic);
    bytes.push(PROTOCOL_VERSION);
    bytes.extend_from_slice(archive);
    bytes
}

/// Checks the header and returns the archive after it, copied to an
/// alignment rkyv can read in place (a transport's buffer has none).
fn archive_of(
    bytes: &[u8],
    magic: [u8; 3],
    what: &str,
) -> Result<rkyv::util::AlignedVec<16>, Error> {
    let invalid = |reason: String| Error::InvalidArgument(format!("bad client {what}: {reason}"));
    let (Some(found), Some(&version), Some(archive)) =
        (bytes.get(..3), bytes.get(3), bytes.get(HEADER_BYTES..))
    else {
        return Err(invalid(format!(
            "{} bytes are shorter than its {HEADER_BYTES}-byte header",
            bytes.len()
        )));
    };
    if found != magic {
        return Err(invalid(format!(
            "it starts with {found:02x?}, not the magic {magic:02x?} ({}): not a flotilla client {what}",
            String::from_utf8_lossy(&magic)
        )));
    }
    if version != PROTOCOL_VERSION {
        return Err(invalid(format!(
            "it is in protocol version {version}, and this build speaks version \
             {PROTOCOL_VERSION}; run the same flotilla release on clients and nodes"
        )));
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    Ok(aligned)
}

/// The bytes of `request`: header, then its archive.
pub fn encode_request(request: &ClientRequest) -> Vec<u8> {
    match rkyv::to_bytes::<rkyv::rancor::Error>(request) {
        Ok(archive) => with_header(REQUEST_MAGIC, &archive),
        // Serializing vectors into a growable buffer cannot fail.
        Err(error) => unreachable!("encoding a client request failed: {error}"),
    }
}

/// Reads a request; bytes that are not one (a wrong magic or version, a
/// truncated or damaged archive) are an [`Error::InvalidArgument`].
pub fn decode_request(bytes: &[u8]) -> Result<ClientRequest, Error> {
    let archive = archive_of(bytes, REQUEST_MAGIC, "request")?;
    rkyv::from_bytes::<ClientRequest, rkyv::rancor::Error>(&archive).map_err(|error| {
        Error::InvalidArgument(format!(
            "bad client request: the archive does not validate: {error}"
        ))
    })
}

/// The bytes of `response`: header, then its archive.
pub fn encode_response(response: &ClientResponse) -> Vec<u8> {
    match rkyv::to_bytes::<rkyv::rancor::Error>(response) {
        Ok(archive) => with_header(RESPONSE_MAGIC, &archive),
        // Serializing vectors into a growable buffer cannot fail.
        Err(error) => unreachable!("encoding a client response failed: {error}"),
    }
}

/// Reads a response; bytes that are not one are an
/// [`Error::InvalidArgument`].
pub fn decode_response(bytes: &[u8]) -> Result<ClientResponse, Error> {
    let archive = archive_of(bytes, RESPONSE_MAGIC, "response")?;
    rkyv::from_bytes::<ClientResponse, rkyv::rancor::Error>(&archive).map_err(|error| {
        Error::InvalidArgument(format!(
            "bad client response: the archive does not validate: {error}"
        ))
    })
}

/// Checks a scan's limit against [`SCAN_LIMIT_MAX`], on either side.
fn scan_limit(limit: u64) -> Result<usize, Error> {
    if limit > SCAN_LIMIT_MAX {
        return Err(Error::InvalidArgument(format!(
            "scan limit {limit}: one request returns at most {SCAN_LIMIT_MAX} rows; \
             scan again from the last key returned"
        )));
    }
    usize::try_from(limit)
        .map_err(|_| Error::InvalidArgument(format!("scan limit {limit} is too large")))
}

/// A client's scan limit as sent, refused here if a node would refuse it.
fn wire_limit(limit: usize) -> Result<u64, Error> {
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    scan_limit(limit)?;
    Ok(limit)
}

/// Answers one encoded request with an encoded response, running it on
/// `db`. Never fails: an error (bad bytes included) is itself the answer,
/// as [`ClientResponse::Error`].
pub async fn serve(db: &Db, request: &[u8]) -> Vec<u8> {
    let response = match decode_request(request) {
        Ok(request) => execute(db, request).await,
        Err(error) => Err(error),
    };
    encode_response(&response.unwrap_or_else(|error| ClientResponse::Error((&error).into())))
}

async fn execute(db: &Db, request: ClientRequest) -> Result<ClientResponse, Error> {
    Ok(match request {
        ClientRequest::Put { key, value } => {
            db.put(&key, &value).await?;
            ClientResponse::Done
        }
        ClientRequest::Get { key } => ClientResponse::Value(db.get(&key).await?),
        ClientRequest::GetStale { key } => ClientResponse::Value(db.get_stale(&key).await?),
        ClientRequest::Delete { key } => ClientResponse::Deleted {
            existed: db.delete(&key).await?,
        },
        ClientRequest::Cas { key, expected, new } => {
            let (swapped, current) = db.cas(&key, expected.as_deref(), new.as_deref()).await?;
            ClientResponse::Cas { swapped, current }
        }
        ClientRequest::Scan { start, end, limit } => {
            ClientResponse::Rows(db.scan(&start, end.as_deref(), scan_limit(limit)?).await?)
        }
        ClientRequest::ScanStale { start, end, limit } => ClientResponse::Rows(
            db.scan_stale(&start, end.as_deref(), scan_limit(limit)?)
                .await?,
        ),
        ClientRequest::Batch(commands) => {
            let commands = commands.into_iter().map(Command::from).collect();
            ClientResponse::Batch(db.batch(commands).await?.try_into()?)
        }
        ClientRequest::Ranges => {
            ClientResponse::Ranges(db.ranges().iter().map(WireRange::from).collect())
        }
        ClientRequest::AddReplica { group, node } => {
            db.add_replica(group, node).await?;
            ClientResponse::Done
        }
        ClientRequest::RemoveReplica { group, node } => {
            db.remove_replica(group, node).await?;
            ClientResponse::Done
        }
        ClientRequest::TransferLeader { group, target } => {
            db.transfer_leader(group, target).await?;
            ClientResponse::Done
        }
    })
}

/// Sends one encoded request to one node and returns its encoded answer.
/// The transport implements it (over QUIC in `flotilla start`); tests
/// implement it in-process.
pub trait Caller: Send + Sync + std::fmt::Debug {
    /// `Err` means no answer came back, for a reason the string gives. The
    /// request may or may not have reached the node and taken effect:
    /// [`RemoteDb`] assumes it may have.
    fn call(
        &self,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>>;
}

/// A [`Caller`] that reaches one node over QUIC with a client certificate
/// of the cluster's CA. It connects on first use, and again after the
/// connection is lost (a call that fails on a broken connection drops it,
/// so the next call redials); concurrent calls share one connection.
#[derive(Debug)]
pub struct QuicCaller {
    node: NodeId,
    addr: std::net::SocketAddr,
    tls: flotilla_transport::tls::TlsFiles,
    connection: tokio::sync::Mutex<Option<Arc<flotilla_transport::quic::QuicClient>>>,
}

impl QuicCaller {
    /// A caller of node `node` listening at `addr`, presenting the client
    /// certificate in `tls`.
    pub fn new(
        node: NodeId,
        addr: std::net::SocketAddr,
        tls: flotilla_transport::tls::TlsFiles,
    ) -> QuicCaller {
        QuicCaller {
            node,
            addr,
            tls,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    async fn connected(&self) -> Result<Arc<flotilla_transport::quic::QuicClient>, String> {
        let mut slot = self.connection.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(Arc::clone(client));
        }
        let client = flotilla_transport::quic::QuicClient::connect(self.addr, self.node, &self.tls)
            .await
            .map_err(|e| format!("node {} at {}: {e}", self.node, self.addr))?;
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }
}

impl Caller for QuicCaller {
    fn call(
        &self,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        Box::pin(async move {
            let client = self.connected().await?;
            match client.call(request).await {
                Ok(answer) => Ok(answer),
                Err(error) => {
                    // Whatever broke, the next call starts from a fresh
                    // connection (unless another call already made one).
                    let mut slot = self.connection.lock().await;
                    if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                        *slot = None;
                    }
                    Err(format!("node {} at {}: {error}", self.node, self.addr))
                }
            }
        })
    }
}

/// One node [`RemoteDb`] can ask.
#[derive(Debug)]
struct RemoteNode {
    id: NodeId,
    caller: Arc<dyn Caller>,
}

/// Whether retrying a request elsewhere could apply it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Reads (gets, scans, the range list): no effect, safe to ask again.
    Read,
    /// Writes and membership or leadership changes.
    Write,
}

impl Effect {
    fn of(request: &ClientRequest) -> Effect {
        match request {
            ClientRequest::Get { .. }
            | ClientRequest::GetStale { .. }
            | ClientRequest::Scan { .. }
            | ClientRequest::ScanStale { .. }
            | ClientRequest::Ranges => Effect::Read,
            ClientRequest::Put { .. }
            | ClientRequest::Delete { .. }
            | ClientRequest::Cas { .. }
            | ClientRequest::Batch(_)
            | ClientRequest::AddReplica { .. }
            | ClientRequest::RemoveReplica { .. }
            | ClientRequest::TransferLeader { .. } => Effect::Write,
        }
    }
}

/// Why one node did not serve a request.
enum Failure {
    /// No answer: the caller failed or the call timed out. The request may
    /// have been delivered.
    NoAnswer(String),
    /// An answer that does not decode: the node ran the request, or not.
    Garbled(Error),
    /// The node answered with an error.
    Refused(Error),
}

/// The operations of [`Db`] on a remote cluster: each request goes to one
/// node (any node serves any key: followers forward to leaders), and the
/// handle fails over to the next node when one cannot serve it.
///
/// # Failover
///
/// Requests go to the node that last answered, starting with the first
/// given. When a node does not serve a request the next one is asked, each
/// node at most once per request (plus one redirect, below), unless asking
/// again might apply the request twice:
///
/// - **Reads** (gets, scans, [`RemoteDb::ranges`]) have no effect, so they
///   move on after any failure that is not about the request itself: no
///   answer (the [`Caller`] failed or [`CALL_TIMEOUT_DEFAULT`] passed),
///   [`Error::Unavailable`], [`Error::Timeout`] or [`Error::Shutdown`]. When
///   no node serves the read the result is [`Error::Unavailable`] listing
///   each node's failure.
/// - **Writes** (put, delete, cas, batch) and membership or leadership
///   changes move on only after an error that guarantees they did not take
///   effect: [`Error::Unavailable`]. After no answer, or after
///   [`Error::Shutdown`] (a node stopping fails what is in flight, and it
///   may have been committed), the outcome is unknown and the result is
///   [`Error::Timeout`], without asking another node; the next request
///   starts at the next node. A [`Caller`] cannot tell "never sent" from
///   "sent, answer lost", so a write to a node that is down costs one
///   `Timeout` before the handle moves on.
///
///   Not even a put is retried: it is idempotent only without concurrent
///   writers. If another client's put of the same key lands between the
///   first attempt and the retry, the retry overwrites it, and this put
///   takes effect twice, which no linearizable history allows. A delete
///   retried would report the key absent; a cas, a failure it caused
///   itself.
/// - [`Error::NotLeader`] (a membership or leadership change asked of a
///   follower) sends the request once to the leader it names, if that is
///   one of this handle's nodes; nothing was done, so that is safe.
/// - Every other error (an invalid argument, a range mismatch, corruption,
///   IO) is about the request or the data, not the node: it is returned
///   as it is.
/// - An answer that does not decode (another protocol version) or is of
///   the wrong kind says nothing about what happened: for a read it is an
///   error ([`Error::InvalidArgument`], [`Error::Io`]), for a write
///   [`Error::Timeout`].
#[derive(Clone, Debug)]
pub struct RemoteDb {
    nodes: Arc<[RemoteNode]>,
    /// Index in `nodes` of the node the next request goes to first.
    preferred: Arc<AtomicUsize>,
    call_timeout: Duration,
}

impl RemoteDb {
    /// A handle over `nodes`: each node's id and how to call it. Node ids
    /// must be distinct, and there must be at least one.
    pub fn new(nodes: Vec<(NodeId, Arc<dyn Caller>)>) -> Result<RemoteDb, Error> {
        if nodes.is_empty() {
            return Err(Error::InvalidArgument(
                "a remote handle needs at least one node to call".into(),
            ));
        }
        let mut ids: Vec<NodeId> = nodes.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(Error::InvalidArgument(format!(
                "node {} is listed twice",
                pair[0]
            )));
        }
        Ok(RemoteDb {
            nodes: nodes
                .into_iter()
                .map(|(id, caller)| RemoteNode { id, caller })
                .collect(),
            preferred: Arc::new(AtomicUsize::new(0)),
            call_timeout: CALL_TIMEOUT_DEFAULT,
        })
    }

    /// Sets how long one node may take to answer before it counts as not
    /// answering ([`CALL_TIMEOUT_DEFAULT`] unless set).
    pub fn with_call_timeout(mut self, call_timeout: Duration) -> RemoteDb {
        self.call_timeout = call_timeout;
        self
    }

    /// Asks one node; `Ok` only for an answer that is not an error.
    async fn ask(&self, node: &RemoteNode, request: Vec<u8>) -> Result<ClientResponse, Failure> {
        let answer = match tokio::time::timeout(self.call_timeout, node.caller.call(request)).await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => return Err(Failure::NoAnswer(reason)),
            Err(_) => {
                return Err(Failure::NoAnswer(format!(
                    "no answer within {} ms",
                    self.call_timeout.as_millis()
                )))
            }
        };
        match decode_response(&answer) {
            Ok(ClientResponse::Error(error)) => Err(Failure::Refused(error.into())),
            Ok(response) => Ok(response),
            Err(error) => Err(Failure::Garbled(error)),
        }
    }

    fn index_of(&self, node: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == node)
    }

    /// Runs `request` by the failover rule of the type's docs.
    async fn call(&self, request: &ClientRequest) -> Result<ClientResponse, Error> {
        let bytes = encode_request(request);
        let effect = Effect::of(request);
        let count = self.nodes.len();
        let mut target = self.preferred.load(Ordering::Relaxed) % count;
        let mut redirected = false;
        let mut failures: Vec<String> = Vec::new();
        // Every node once, plus one redirect to a leader.
        for _ in 0..=count {
            let node = &self.nodes[target];
            let failure = match self.ask(node, bytes.clone()).await {
                Ok(response) => {
                    self.preferred.store(target, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(failure) => failure,
            };
            let unknown_outcome = |reason: String| {
                tracing::debug!(node = node.id, %reason, "write outcome unknown");
                // The next request starts elsewhere.
                self.preferred
                    .store((target + 1) % count, Ordering::Relaxed);
                Error::Timeout
            };
            match (failure, effect) {
                (Failure::NoAnswer(reason), Effect::Write) => return Err(unknown_outcome(reason)),
                (Failure::Garbled(error), Effect::Write) => {
                    return Err(unknown_outcome(error.to_string()))
                }
                (Failure::Refused(Error::Shutdown), Effect::Write) => {
                    return Err(unknown_outcome("the node shut down".into()))
                }
                (Failure::Garbled(error), Effect::Read) => return Err(error),
                (Failure::NoAnswer(reason), Effect::Read) => {
                    failures.push(format!("node {}: {reason}", node.id));
                }
                (Failure::Refused(error @ (Error::Timeout | Error::Shutdown)), Effect::Read)
                | (Failure::Refused(error @ Error::Unavailable(_)), _) => {
                    failures.push(format!("node {}: {error}", node.id));
                }
                (
                    Failure::Refused(Error::NotLeader {
                        leader: Some(leader),
                    }),
                    _,
                ) if !redirected && self.index_of(leader).is_some_and(|index| index != target) => {
                    redirected = true;
                    target = self.index_of(leader).unwrap_or(target);
                    continue;
                }
                (Failure::Refused(error), _) => return Err(error),
            }
            if failures.len() >= count {
                break;
            }
            target = (target + 1) % count;
        }
        Err(Error::Unavailable(format!(
            "no node could serve the request: {}",
            failures.join("; ")
        )))
    }

    /// What to return for an answer of the wrong kind: for a write, whose
    /// outcome it does not tell, [`Error::Timeout`].
    fn unexpected(request: &ClientRequest, response: &ClientResponse) -> Error {
        match Effect::of(request) {
            Effect::Read => Error::Io(format!("unexpected answer {response:?}")),
            Effect::Write => {
                tracing::debug!(?response, "unexpected answer to a write; outcome unknown");
                Error::Timeout
            }
        }
    }

    async fn done(&self, request: ClientRequest) -> Result<(), Error> {
        match self.call(&request).await? {
            ClientResponse::Done => Ok(()),
            other => Err(Self::unexpected(&request, &other)),
        }
    }

    async fn value(&self, request: ClientRequest) -> Result<Option<Vec<u8>>, Error> {
        match self.call(&request).await? {
            ClientResponse::Value(value) => Ok(value),
            other => Err(Self::unexpected(&request, &other)),
        }
    }

    async fn rows(&self, request: ClientRequest) -> Result<Vec<KeyValue>, Error> {
        match self.call(&request).await? {
            ClientResponse::Rows(rows) => Ok(rows),
            other => Err(Self::unexpected(&request, &other)),
        }
    }

    /// [`Db::put`].
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.done(ClientRequest::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .await
    }

    /// [`Db::delete`].
    pub async fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        let request = ClientRequest::Delete { key: key.to_vec() };
        match self.call(&request).await? {
            ClientResponse::Deleted { existed } => Ok(existed),
            other => Err(Self::unexpected(&request, &other)),
        }
    }

    /// [`Db::cas`].
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(bool, Option<Vec<u8>>), Error> {
        let request = ClientRequest::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        };
        match self.call(&request).await? {
            ClientResponse::Cas { swapped, current } => Ok((swapped, current)),
            other => Err(Self::unexpected(&request, &other)),
        }
    }

    /// [`Db::batch`]. A nested batch is refused here, as a node would.
    pub async fn batch(&self, commands: Vec<Command>) -> Result<CommandResult, Error> {
        let commands = commands
            .into_iter()
            .map(WireCommand::try_from)
            .collect::<Result<Vec<_>, Error>>()?;
        let request = ClientRequest::Batch(commands);
        match self.call(&request).await? {
            ClientResponse::Batch(result) => Ok(result.into()),
            other => Err(Self::unexpected(&request, &other)),
        }
    }

    /// [`Db::get`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.value(ClientRequest::Get { key: key.to_vec() }).await
    }

    /// [`Db::get_stale`]: stale as of whichever node answers.
    pub async fn get_stale(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.value(ClientRequest::GetStale { key: key.to_vec() })
            .await
    }

    /// [`Db::scan`]; `limit` is at most [`SCAN_LIMIT_MAX`].
    pub async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        self.rows(ClientRequest::Scan {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            limit: wire_limit(limit)?,
        })
        .await
    }

    /// [`Db::scan_stale`]; `limit` is at most [`SCAN_LIMIT_MAX`].
    pub async fn scan_stale(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        self.rows(ClientRequest::ScanStale {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            limit: wire_limit(limit)?,
        })
        .await
    }

    /// [`Db::ranges`] of whichever node answers.
    pub async fn ranges(&self) -> Result<Vec<RangeDescriptor>, Error> {
        let request = ClientRequest::Ranges;
        match self.call(&request).await? {
            ClientResponse::Ranges(ranges) => {
                ranges.into_iter().map(RangeDescriptor::try_from).collect()
            }
            other => Err(Self::unexpected(&request, &other)),
        }
    }

    /// [`Db::add_replica`]; sent on to the range's leader if the node
    /// asked names it.
    pub async fn add_replica(&self, group: GroupId, node: NodeId) -> Result<(), Error> {
        self.done(ClientRequest::AddReplica { group, node }).await
    }

    /// [`Db::remove_replica`]; sent on to the range's leader if the node
    /// asked names it.
    pub async fn remove_replica(&self, group: GroupId, node: NodeId) -> Result<(), Error> {
        self.done(ClientRequest::RemoveReplica { group, node })
            .await
    }

    /// [`Db::transfer_leader`]; sent on to the range's leader if the node
    /// asked names it.
    pub async fn transfer_leader(&self, group: GroupId, target: NodeId) -> Result<(), Error> {
        self.done(ClientRequest::TransferLeader { group, target })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_request() -> Vec<ClientRequest> {
        vec![
            ClientRequest::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            ClientRequest::Put {
                key: vec![0xff; 4096],
                value: Vec::new(),
            },
            ClientRequest::Get { key: b"k".to_vec() },
            ClientRequest::GetStale { key: b"k".to_vec() },
            ClientRequest::Delete { key: b"k".to_vec() },
            ClientRequest::Cas {
                key: b"k".to_vec(),
                expected: None,
                new: Some(b"n".to_vec()),
            },
            ClientRequest::Cas {
                key: b"k".to_vec(),
                expected: Some(b"e".to_vec()),
                new: None,
            },
            ClientRequest::Scan {
                start: b"a".to_vec(),
                end: Some(b"z".to_vec()),
                limit: 10,
            },
            ClientRequest::ScanStale {
                start: b"a".to_vec(),
                end: None,
                limit: SCAN_LIMIT_MAX,
            },
            ClientRequest::Batch(vec![
                WireCommand::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                },
                WireCommand::Delete { key: b"b".to_vec() },
                WireCommand::Cas {
                    key: b"c".to_vec(),
                    expected: Some(Vec::new()),
                    new: Some(b"3".to_vec()),
                },
                WireCommand::DeleteRange {
                    start: b"d".to_vec(),
                    end: Vec::new(),
                },
            ]),
            ClientRequest::Batch(Vec::new()),
            ClientRequest::Ranges,
            ClientRequest::AddReplica { group: 7, node: 4 },
            ClientRequest::RemoveReplica {
                group: u64::MAX,
                node: 1,
            },
            ClientRequest::TransferLeader {
                group: 2,
                target: 3,
            },
        ]
    }

    fn every_error() -> Vec<Error> {
        vec![
            Error::Unavailable("no leader".into()),
            Error::Timeout,
            Error::NotLeader { leader: Some(3) },
            Error::NotLeader { leader: None },
            Error::RangeMismatch("stale".into()),
            Error::InvalidArgument("key of 5000 bytes".into()),
            Error::Corruption("bad crc".into()),
            Error::Io("disk full".into()),
            Error::Shutdown,
        ]
    }

    fn every_response() -> Vec<ClientResponse> {
        let mut responses = vec![
            ClientResponse::Done,
            ClientResponse::Value(None),
            ClientResponse::Value(Some(b"v".to_vec())),
            ClientResponse::Deleted { existed: true },
            ClientResponse::Cas {
                swapped: false,
                current: Some(b"x".to_vec()),
            },
            ClientResponse::Rows(vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), Vec::new()),
            ]),
            ClientResponse::Rows(Vec::new()),
            ClientResponse::Batch(WireBatchResult::Committed(vec![
                WireOpResult::Applied,
                WireOpResult::Cas {
                    succeeded: true,
                    current: None,
                },
                WireOpResult::Deleted { count: 9 },
            ])),
            ClientResponse::Batch(WireBatchResult::Aborted {
                failed_op: 2,
                current: Some(b"c".to_vec()),
            }),
            ClientResponse::Ranges(vec![WireRange {
                group: 1,
                start: Vec::new(),
                end: vec![0x80, 0],
                replicas: vec![1, 2, 3],
                generation: 4,
            }]),
        ];
        responses.extend(
            every_error()
                .iter()
                .map(|e| ClientResponse::Error(e.into())),
        );
        responses
    }

    #[test]
    fn every_request_round_trips() {
        for request in every_request() {
            let bytes = encode_request(&request);
            assert_eq!(&bytes[..4], b"FLQ\x01");
            assert_eq!(decode_request(&bytes), Ok(request));
        }
    }

    #[test]
    fn every_response_round_trips() {
        for response in every_response() {
            let bytes = encode_response(&response);
            assert_eq!(&bytes[..4], b"FLR\x01");
            assert_eq!(decode_response(&bytes), Ok(response));
        }
    }

    #[test]
    fn every_error_maps_onto_the_wire_and_back_unchanged() {
        for error in every_error() {
            let wire = WireError::from(&error);
            assert_eq!(Error::from(wire), error);
        }
    }

    fn invalid_message(result: Result<impl std::fmt::Debug, Error>) -> String {
        match result {
            Err(Error::InvalidArgument(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn bytes_that_are_not_a_request_are_an_invalid_argument() {
        let good = encode_request(&ClientRequest::Get { key: b"k".to_vec() });
        assert!(invalid_message(decode_request(&[])).contains("shorter than its 4-byte header"));
        assert!(invalid_message(decode_request(b"FLQ")).contains("header"));
        assert!(invalid_message(decode_request(b"GET / HTTP/1.1\r\n")).contains("magic"));
        // A response is not a request, nor a request a response.
        let response = encode_response(&ClientResponse::Done);
        assert!(invalid_message(decode_request(&response)).contains("magic"));
        assert!(invalid_message(decode_response(&good)).contains("magic"));
        let mut newer = good.clone();
        newer[3] = PROTOCOL_VERSION + 1;
        let message = invalid_message(decode_request(&newer));
        assert!(message.contains("protocol version 2"), "{message}");
        // The header alone, and every truncation of the archive.
        for cut in 4..good.len() {
            let message = invalid_message(decode_request(&good[..cut]));
            assert!(
                message.contains("does not validate"),
                "cut at {cut}: {message}"
            );
        }
        let mut garbage = good[..4].to_vec();
        garbage.extend_from_slice(&[0xff; 64]);
        invalid_message(decode_request(&garbage));
    }

    #[test]
    fn damaged_messages_decode_or_fail_but_never_panic() {
        // Every single-byte change of every request and response: each
        // either still decodes (to something) or is refused; none panics.
        let mut refused = 0;
        for request in every_request() {
            let bytes = encode_request(&request);
            for at in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut damaged = bytes.clone();
                    damaged[at] ^= flip;
                    refused += usize::from(decode_request(&damaged).is_err());
                }
            }
        }
        for response in every_response() {
            let bytes = encode_response(&response);
            for at in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[at] ^= 0xff;
                refused += usize::from(decode_response(&damaged).is_err());
            }
        }
        // The header bytes alone are refused whenever changed.
        assert!(refused >= 4 * 3 * every_request().len());
    }

    #[test]
    fn a_nested_batch_has_no_wire_form() {
        let nested = Command::Batch(vec![Command::Delete { key: b"k".to_vec() }]);
        assert!(matches!(
            WireCommand::try_from(nested),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn batch_results_convert_both_ways() {
        let committed = CommandResult::Batch(vec![
            CommandResult::Applied,
            CommandResult::CasResult {
                succeeded: true,
                current: Some(b"c".to_vec()),
            },
            CommandResult::Deleted { count: 1 },
        ]);
        let aborted = CommandResult::BatchAborted {
            failed_op: 1,
            current: None,
        };
        for result in [committed, aborted] {
            let wire = WireBatchResult::try_from(result.clone()).expect("a batch result");
            assert_eq!(CommandResult::from(wire), result);
        }
        assert!(WireBatchResult::try_from(CommandResult::Applied).is_err());
    }

    #[test]
    fn a_range_with_a_bad_span_is_refused() {
        let range = WireRange {
            group: 3,
            start: b"z".to_vec(),
            end: b"a".to_vec(),
            replicas: vec![1],
            generation: 1,
        };
        let message = invalid_message(RangeDescriptor::try_from(range));
        assert!(message.contains("group 3"), "{message}");
    }
}
