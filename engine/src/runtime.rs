//! The threaded runtime of a node: one worker thread drives the node's
//! [`NodeCore`] — it takes client requests, frames from peers and ticks,
//! runs rounds (one WAL batch and one sync per round for all groups), sends
//! one frame per destination through the [`Transport`], and completes the
//! callers.
//!
//! Departure from DESIGN.md, deliberate: one worker per node rather than K
//! workers owning disjoint groups. The core already batches every group's
//! work into one WAL record per round, so more workers would only add
//! parallel stepping and apply; they are worth their coordination cost only
//! once a profile shows stepping or apply as the bound, which none has yet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use flotilla_transport::{Frame, FrameBuilder, GroupId, NodeId, Transport};
use tokio::sync::oneshot;

use crate::db::{Db, Error};
use crate::node::snapshots::DirSnapshotStore;
use crate::node::{NodeConfig, NodeCore, NodeError, RangeDescriptor, Request, RequestId, Response};
use crate::range::KeySpan;
use crate::wal::{Wal, WalConfig};

/// How a node's ranges are laid out at bootstrap.
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// `count` ranges splitting the key space evenly by the first two key
    /// bytes, every range replicated on every node of `nodes`.
    EvenSplits { count: u64, nodes: Vec<NodeId> },
    /// Explicit descriptors.
    Ranges(Vec<RangeDescriptor>),
}

impl Bootstrap {
    /// The descriptors this layout stands for.
    pub fn descriptors(&self) -> Result<Vec<RangeDescriptor>, Error> {
        match self {
            Bootstrap::Ranges(ranges) => Ok(ranges.clone()),
            Bootstrap::EvenSplits { count, nodes } => {
                if *count == 0 || *count > 65_536 {
                    return Err(Error::InvalidArgument(format!(
                        "range count {count} must be between 1 and 65536"
                    )));
                }
                let bound = |i: u64| -> Vec<u8> {
                    if i == 0 || i == *count {
                        Vec::new()
                    } else {
                        ((i * 65_536 / count) as u16).to_be_bytes().to_vec()
                    }
                };
                (0..*count)
                    .map(|i| {
                        let span = KeySpan::new(bound(i), bound(i + 1))
                            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                        Ok(RangeDescriptor {
                            group: i + 1,
                            span,
                            replicas: nodes.clone(),
                            generation: 1,
                        })
                    })
                    .collect()
            }
        }
    }
}

/// Everything `Node::open` needs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub id: NodeId,
    /// Holds the WAL (`DIR/wal`) and the ranges' snapshots (`DIR/snap`).
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    /// Real time per Raft tick.
    pub tick_interval: Duration,
    pub node: NodeConfig,
    pub wal: WalConfig,
}

impl NodeOptions {
    /// Defaults for node `id` storing in `data_dir`.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, bootstrap: Bootstrap) -> Self {
        NodeOptions {
            id,
            data_dir: data_dir.into(),
            bootstrap,
            tick_interval: Duration::from_millis(20),
            node: NodeConfig::default(),
            wal: WalConfig::default(),
        }
    }
}

/// Counts boots of the node's data in `DIR/incarnation`, durably, so that
/// every boot gets a number no earlier boot had.
fn next_incarnation(data_dir: &std::path::Path) -> Result<u64, Error> {
    use std::io::Write as _;
    let path = data_dir.join("incarnation");
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| {
            Error::Corruption(format!("{} does not hold a number: {e}", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(e)),
    };
    let next = previous + 1;
    let temp = data_dir.join("incarnation.tmp");
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(next.to_string().as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, &path).map_err(io)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(next)
}

/// A client request on its way to the worker.
pub(crate) struct Submission {
    pub(crate) group: GroupId,
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Result<Response, NodeError>>,
}

/// Counters a node's runtime keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub rounds: u64,
    pub frames_sent: u64,
    pub leaders: usize,
    pub awake_groups: usize,
}

/// A running node. Dropping it shuts it down.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    submit: Sender<Submission>,
    stop: Sender<()>,
    stats: Arc<parking_lot::Mutex<NodeStats>>,
    ranges: Arc<Vec<RangeDescriptor>>,
    worker: Option<JoinHandle<()>>,
}

impl Node {
    /// Opens (bootstrapping or recovering) the node and starts its worker.
    /// Frames for this node arrive on `inbox`; frames it sends go through
    /// `transport`.
    pub fn open(
        options: NodeOptions,
        transport: Arc<dyn Transport>,
        inbox: Receiver<Frame>,
    ) -> Result<Node, Error> {
        let ranges = options.bootstrap.descriptors()?;
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| Error::Io(format!("{}: {e}", options.data_dir.display())))?;
        let wal_dir = options.data_dir.join("wal");
        std::fs::create_dir_all(&wal_dir)
            .map_err(|e| Error::Io(format!("{}: {e}", wal_dir.display())))?;
        let wal = Arc::new(Wal::open(&wal_dir, options.wal.clone()).map_err(Error::from_wal)?);
        let mut node_config = options.node.clone();
        node_config.raft.id = options.id;
        node_config.incarnation = next_incarnation(&options.data_dir)?;
        let snapshot_dir = options.data_dir.join("snap");
        let snapshots = Arc::new(DirSnapshotStore::open(&snapshot_dir).map_err(|e| {
            Error::Io(format!(
                "opening snapshots in {}: {e}",
                snapshot_dir.display()
            ))
        })?);
        let core = NodeCore::open(options.id, wal, snapshots, node_config, &ranges)
            .map_err(Error::from_node)?;
        let (submit, submissions) = crossbeam_channel::bounded(65_536);
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let stats = Arc::new(parking_lot::Mutex::new(NodeStats::default()));
        let worker_stats = Arc::clone(&stats);
        let tick_interval = options.tick_interval;
        let worker = std::thread::Builder::new()
            .name(format!("flotilla-node-{}", options.id))
            .spawn(move || {
                Worker {
                    core,
                    transport,
                    inbox,
                    submissions,
                    stopped,
                    waiting: BTreeMap::new(),
                    stats: worker_stats,
                    tick_interval,
                }
                .run();
            })
            .map_err(|e| Error::Io(format!("spawning the node worker: {e}")))?;
        Ok(Node {
            id: options.id,
            submit,
            stop,
            stats,
            ranges: Arc::new(ranges),
            worker: Some(worker),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// A cloneable handle for reads and writes through this node.
    pub fn db(&self) -> Db {
        Db::new(self.submit.clone(), Arc::clone(&self.ranges))
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        *self.stats.lock()
    }

    /// Stops the worker; requests still in flight fail with `Shutdown`.
    pub fn shutdown(mut self) {
        self.stop_worker();
    }

    fn stop_worker(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

struct Worker {
    core: NodeCore,
    transport: Arc<dyn Transport>,
    inbox: Receiver<Frame>,
    submissions: Receiver<Submission>,
    stopped: Receiver<()>,
    waiting: BTreeMap<RequestId, oneshot::Sender<Result<Response, NodeError>>>,
    stats: Arc<parking_lot::Mutex<NodeStats>>,
    tick_interval: Duration,
}

/// Inputs taken per loop iteration before a round, so one round serves many.
const INPUTS_PER_ROUND_MAX: usize = 4096;

impl Worker {
    fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick_interval;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(self.stopped) -> _ => break,
                recv(self.submissions) -> submission => match submission {
                    Ok(submission) => self.submit(submission),
                    Err(_) => break,
                },
                recv(self.inbox) -> frame => {
                    if let Ok(frame) = frame {
                        self.core.receive(frame);
                    }
                },
                default(timeout) => {}
            }
            self.drain_inputs();
            if Instant::now() >= next_tick {
                self.core.tick();
                next_tick += self.tick_interval;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.tick_interval;
                }
            }
            if let Err(error) = self.run_rounds() {
                // The WAL or the snapshot store failed (IO error, full
                // disk): nothing more can be made durable. Fail everything
                // waiting and stop.
                for (_, reply) in std::mem::take(&mut self.waiting) {
                    let _ =
                        reply.send(Err(NodeError::Aborted(format!("storage failure: {error}"))));
                }
                break;
            }
        }
        for (_, reply) in std::mem::take(&mut self.waiting) {
            let _ = reply.send(Err(NodeError::Aborted("node shut down".to_string())));
        }
        // Requests still queued were never started. The channel outlives
        // this worker (every `Db` holds a sender), so they must be answered
        // here or their callers would wait forever.
        while let Ok(submission) = self.submissions.try_recv() {
            let _ = submission
                .reply
                .send(Err(NodeError::Refused("node shut down".to_string())));
        }
    }

    fn submit(&mut self, submission: Submission) {
        let id = self.core.submit(submission.group, submission.request);
        self.waiting.insert(id, submission.reply);
    }

    fn drain_inputs(&mut self) {
        for _ in 0..INPUTS_PER_ROUND_MAX {
            if let Ok(submission) = self.submissions.try_recv() {
                self.submit(submission);
            } else if let Ok(frame) = self.inbox.try_recv() {
                self.core.receive(frame);
            } else {
                return;
            }
        }
    }

    fn run_rounds(&mut self) -> Result<(), crate::node::RoundError> {
        loop {
            let mut out = FrameBuilder::new(self.core.id());
            let handled = self.core.round(&mut out)?;
            let mut frames = 0;
            for frame in out.finish() {
                frames += 1;
                // Best effort: Raft tolerates lost messages.
                let _ = self.transport.send(frame);
            }
            for (id, result) in self.core.take_completions() {
                if let Some(reply) = self.waiting.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            let mut stats = self.stats.lock();
            stats.frames_sent += frames;
            stats.awake_groups = self.core.awake_count();
            if handled == 0 {
                return Ok(());
            }
            // Roles only change in rounds with work, so counting leaders
            // (which visits every group) is skipped on idle ticks.
            stats.rounds += 1;
            stats.leaders = self.core.leader_count();
        }
    }
}
