//! The embedded key-value API: [`Db`], a cloneable async handle onto a
//! node, and [`BlockingDb`] for callers without an async runtime.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use tokio::sync::oneshot;

use flotilla_transport::{GroupId, NodeId};

use crate::node::{NodeError, RangeDescriptor, ReplicaChange, Request, Response};
use crate::range::{Command, CommandResult, KeyValue, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::runtime::{worker_of, Submission, SUBMIT_QUEUE_MAX};
use crate::wal::WalError;

/// Errors of the public API. `Timeout` means the outcome is unknown; every
/// other error means the operation did not take effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No leader could be reached for the range within the deadline.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request did not complete in time; it may or may not have taken
    /// effect.
    #[error("timed out; the outcome is unknown")]
    Timeout,
    /// The operation (a membership change) must be asked of the range's
    /// leader; `leader` is the node this one believes leads, if any.
    #[error("not the leader of the range (leader: {leader:?}); ask the leader")]
    NotLeader { leader: Option<NodeId> },
    /// The keys fall in a range this node does not know, or span ranges.
    #[error("range mismatch: {0}")]
    RangeMismatch(String),
    /// The request is invalid: keys must be 1 to 4096 bytes, values at most
    /// 1 MiB, batches at most 1000 operations within one range, and a scan's
    /// end must not be before its start.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Stored data failed verification.
    #[error("corruption: {0}")]
    Corruption(String),
    /// An IO error.
    #[error("io: {0}")]
    Io(String),
    /// The node is shut down. A request that was in flight when it stopped
    /// may or may not have taken effect, as with `Timeout`.
    #[error("the node is shut down")]
    Shutdown,
}

impl Error {
    pub(crate) fn from_wal(error: WalError) -> Error {
        match error {
            WalError::Corruption { .. } => Error::Corruption(error.to_string()),
            other => Error::Io(other.to_string()),
        }
    }

    pub(crate) fn from_node(error: NodeError) -> Error {
        match error {
            NodeError::Unavailable(_) | NodeError::Refused(_) => {
                Error::Unavailable(error.to_string())
            }
            NodeError::Timeout => Error::Timeout,
            NodeError::RangeNotFound(_) | NodeError::RangeMismatch(_) => {
                Error::RangeMismatch(error.to_string())
            }
            NodeError::InvalidArgument(reason) => Error::InvalidArgument(reason),
            NodeError::Aborted(_) => Error::Shutdown,
            NodeError::NotLeader { leader, .. } => Error::NotLeader { leader },
            NodeError::Corruption(reason) => Error::Corruption(reason),
            NodeError::Io(reason) => Error::Io(reason),
        }
    }
}

/// How long a request keeps retrying while its range has no leader (and a
/// read, after a timeout).
const UNAVAILABLE_RETRY_FOR: Duration = Duration::from_secs(5);
const UNAVAILABLE_BACKOFF: Duration = Duration::from_millis(10);
/// The longest a caller waits for the node to answer one attempt.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(30);

/// A cloneable handle for reads and writes. Reads are linearizable: by
/// default through ReadIndex (one heartbeat round confirms the leader), or,
/// when the node runs with `ReadMode::Lease` (which needs check-quorum), from
/// the leader's lease without a round. `get_stale`/`scan_stale` read this
/// node's replica as it is, without asking the leader. Requests may go to
/// any node: followers forward to the leader.
#[derive(Clone, Debug)]
pub struct Db {
    /// The node's worker queues: a request goes to the worker owning its
    /// group ([`worker_of`]).
    submit: Arc<[Sender<Submission>]>,
    ranges: Arc<Vec<RangeDescriptor>>,
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "key of {} bytes: keys are 1 to {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn check_scan(start: &[u8], end: Option<&[u8]>) -> Result<(), Error> {
    check_key(start)?;
    if end.is_some_and(|end| end < start) {
        return Err(Error::InvalidArgument(format!(
            "scan end {end:?} is before its start {start:?}"
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "value of {} bytes: values are at most {MAX_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

impl Db {
    pub(crate) fn new(submit: Arc<[Sender<Submission>]>, ranges: Arc<Vec<RangeDescriptor>>) -> Db {
        Db { submit, ranges }
    }

    fn range_of(&self, key: &[u8]) -> Result<&RangeDescriptor, Error> {
        self.ranges
            .iter()
            .find(|r| r.span.contains(key))
            .ok_or_else(|| Error::RangeMismatch(format!("no range holds key {key:?}")))
    }

    async fn call(&self, key: &[u8], request: Request) -> Result<Response, Error> {
        let group = self.range_of(key)?.group;
        self.call_group(group, request).await
    }

    async fn call_group(&self, group: GroupId, request: Request) -> Result<Response, Error> {
        let queue = self
            .submit
            .get(worker_of(group, self.submit.len()))
            .ok_or(Error::Shutdown)?;
        let deadline = tokio::time::Instant::now() + UNAVAILABLE_RETRY_FOR;
        loop {
            let (reply, response) = oneshot::channel();
            let submission = Submission {
                group,
                request: request.clone(),
                reply,
            };
            // The queue is unbounded so that an idle node does not hold
            // its capacity in memory; this check bounds it (loosely: callers
            // racing past it may add a few more).
            if queue.len() >= SUBMIT_QUEUE_MAX {
                return Err(Error::Unavailable(
                    "the node's request queue is full".into(),
                ));
            }
            // Sending fails only once the worker has stopped.
            queue.send(submission).map_err(|_| Error::Shutdown)?;
            let is_read = matches!(
                request,
                Request::Get { .. }
                    | Request::Scan { .. }
                    | Request::StaleGet { .. }
                    | Request::StaleScan { .. }
            );
            // The node answers every request (with a timeout of its own);
            // this bound only guards against a node that vanished between
            // taking a request and answering it.
            let response = match tokio::time::timeout(ANSWER_WAIT_MAX, response).await {
                Ok(response) => response,
                Err(_) => return Err(Error::Timeout),
            };
            match response {
                Ok(Err(NodeError::Unavailable(_))) if tokio::time::Instant::now() < deadline => {
                    // No leader yet: nothing was proposed, so retrying is safe.
                    tokio::time::sleep(UNAVAILABLE_BACKOFF).await;
                }
                Ok(Err(NodeError::Timeout))
                    if is_read && tokio::time::Instant::now() < deadline =>
                {
                    // A read has no effect: after a timeout (a leader change
                    // lost its confirmation) it is simply asked again.
                }
                Ok(result) => return result.map_err(Error::from_node),
                Err(_) => return Err(Error::Shutdown),
            }
        }
    }

    async fn write(&self, key: &[u8], command: Command) -> Result<CommandResult, Error> {
        match self.call(key, Request::Write(command)).await? {
            Response::Write(CommandResult::Rejected(reason)) => {
                Err(Error::InvalidArgument(format!("{reason:?}")))
            }
            Response::Write(result) => Ok(result),
            other => Err(Error::Io(format!("unexpected response {other:?}"))),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        check_key(key)?;
        check_value(value)?;
        let command = Command::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.write(key, command).await.map(|_| ())
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        check_key(key)?;
        let command = Command::Delete { key: key.to_vec() };
        match self.write(key, command).await? {
            CommandResult::Deleted { count } => Ok(count > 0),
            other => Err(Error::Io(format!("unexpected result {other:?}"))),
        }
    }

    /// Sets `key` to `new` (or removes it, for `None`) if it currently holds
    /// `expected` (`None`: absent). Returns whether it did, and the value
    /// found.
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(bool, Option<Vec<u8>>), Error> {
        check_key(key)?;
        if let Some(value) = new {
            check_value(value)?;
        }
        let command = Command::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        };
        match self.write(key, command).await? {
            CommandResult::CasResult { succeeded, current } => Ok((succeeded, current)),
            other => Err(Error::Io(format!("unexpected result {other:?}"))),
        }
    }

    /// Applies several writes atomically. All keys must lie in one range.
    pub async fn batch(&self, commands: Vec<Command>) -> Result<CommandResult, Error> {
        let first = commands
            .iter()
            .find_map(command_key)
            .ok_or_else(|| Error::InvalidArgument("an empty batch".into()))?
            .to_vec();
        let group = self.range_of(&first)?.group;
        for key in commands.iter().filter_map(command_key) {
            if self.range_of(key)?.group != group {
                return Err(Error::InvalidArgument(format!(
                    "batch keys {first:?} and {key:?} lie in different ranges; a batch is atomic within one range"
                )));
            }
        }
        self.write(&first, Command::Batch(commands)).await
    }

    /// The value of `key` (linearizable).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        check_key(key)?;
        value_of(self.call(key, Request::Get { key: key.to_vec() }).await?)
    }

    /// Up to `limit` pairs with keys in `[start, end)`, in key order, from
    /// the range holding `start` (linearizable). Continue from the last key
    /// returned to read further.
    pub async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        check_scan(start, end)?;
        let request = Request::Scan {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            limit,
        };
        rows_of(self.call(start, request).await?)
    }

    /// The value of `key` in this node's replica, without asking the
    /// leader: fast and available without a quorum, but possibly stale (it
    /// is always a value that was committed at some point).
    pub async fn get_stale(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        check_key(key)?;
        value_of(
            self.call(key, Request::StaleGet { key: key.to_vec() })
                .await?,
        )
    }

    /// [`Db::scan`] over this node's replica, possibly stale; see
    /// [`Db::get_stale`].
    pub async fn scan_stale(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        check_scan(start, end)?;
        let request = Request::StaleScan {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            limit,
        };
        rows_of(self.call(start, request).await?)
    }

    /// The ranges this handle routes by (the bootstrap layout).
    pub fn ranges(&self) -> &[RangeDescriptor] {
        &self.ranges
    }

    async fn admin(&self, group: GroupId, request: Request) -> Result<(), Error> {
        match self.call_group(group, request).await? {
            Response::Done => Ok(()),
            other => Err(Error::Io(format!("unexpected response {other:?}"))),
        }
    }

    /// Adds a replica of range `group` on `node`: as a learner, which
    /// catches up (by snapshot if need be), then as a voter. Must be asked
    /// of the range's leader (else [`Error::NotLeader`]); returns once
    /// `node` is a voter.
    pub async fn add_replica(&self, group: GroupId, node: NodeId) -> Result<(), Error> {
        self.admin(group, Request::ChangeReplicas(ReplicaChange::Add(node)))
            .await
    }

    /// Removes `node`'s replica of range `group` (the leader's own
    /// included: it hands leadership off first). Must be asked of the
    /// range's leader; returns once the configuration no longer has `node`.
    pub async fn remove_replica(&self, group: GroupId, node: NodeId) -> Result<(), Error> {
        self.admin(group, Request::ChangeReplicas(ReplicaChange::Remove(node)))
            .await
    }

    /// Makes `target` (a voter) the leader of range `group`; returns once
    /// this node sees it lead. Writes to the range wait meanwhile.
    pub async fn transfer_leader(&self, group: GroupId, target: NodeId) -> Result<(), Error> {
        self.admin(group, Request::TransferLeader { target }).await
    }

    /// A blocking facade over this handle.
    pub fn blocking(&self) -> BlockingDb {
        BlockingDb { db: self.clone() }
    }
}

fn value_of(response: Response) -> Result<Option<Vec<u8>>, Error> {
    match response {
        Response::Value(value) => Ok(value),
        other => Err(Error::Io(format!("unexpected response {other:?}"))),
    }
}

fn rows_of(response: Response) -> Result<Vec<KeyValue>, Error> {
    match response {
        Response::Rows(rows) => Ok(rows),
        other => Err(Error::Io(format!("unexpected response {other:?}"))),
    }
}

fn command_key(command: &Command) -> Option<&[u8]> {
    match command {
        Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => Some(key),
        Command::DeleteRange { start, .. } => Some(start),
        Command::Batch(_) => None,
    }
}

/// The same operations as [`Db`], for callers without an async runtime.
/// Each call runs on a small private runtime; do not call it from inside an
/// async task.
#[derive(Clone, Debug)]
pub struct BlockingDb {
    db: Db,
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => panic!("cannot start a runtime for a blocking call: {error}"),
    }
}

impl BlockingDb {
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        block_on(self.db.put(key, value))
    }
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        block_on(self.db.get(key))
    }
    pub fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        block_on(self.db.delete(key))
    }
    pub fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<(bool, Option<Vec<u8>>), Error> {
        block_on(self.db.cas(key, expected, new))
    }
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        block_on(self.db.scan(start, end, limit))
    }
    pub fn batch(&self, commands: Vec<Command>) -> Result<CommandResult, Error> {
        block_on(self.db.batch(commands))
    }
    pub fn get_stale(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        block_on(self.db.get_stale(key))
    }
    pub fn add_replica(&self, group: GroupId, node: NodeId) -> Result<(), Error> {
        block_on(self.db.add_replica(group, node))
    }
    pub fn remove_replica(&self, group: GroupId, node: NodeId) -> Result<(), Error> {
        block_on(self.db.remove_replica(group, node))
    }
    pub fn transfer_leader(&self, group: GroupId, target: NodeId) -> Result<(), Error> {
        block_on(self.db.transfer_leader(group, target))
    }
}
