//! The threaded runtime of a node: K worker threads, each owning a
//! [`NodeCore`] over a disjoint share of the node's groups, take client
//! requests, frames from peers and ticks, run rounds (one WAL batch and one
//! sync per round for all of the worker's groups), send one frame per
//! destination through the [`Transport`], and complete the callers.
//!
//! - **Ownership.** Group `g` belongs to worker [`worker_of`]`(g, K)`: a
//!   fixed multiply-shift hash of the group id scaled onto `0..K`. It
//!   depends on nothing but the id and K, so every [`Db`] routes without
//!   asking, and a restart recomputes it — with the same or another K: every
//!   core opens over the one shared [`Wal`], which holds every group's log
//!   whichever worker wrote it. Replica state is owned by one thread, so it
//!   needs no locks; the workers' concurrent appends share fdatasyncs
//!   through the WAL's group commit.
//! - **Submissions.** A [`Db`] holds one queue per worker and puts each
//!   request on the queue of the worker owning its group. Queues are
//!   unbounded channels with a bound checked on send, since a bounded
//!   crossbeam channel allocates (and touches) its whole capacity up front,
//!   K times over here.
//! - **Incoming frames.** The transport delivers every frame for the node on
//!   one inbox. With K > 1 a demultiplexer thread splits each frame
//!   ([`Frame::split_by`]): a Raft message or coalesced heartbeat goes to the
//!   worker owning its group, and the liveness beat (sender and tick) to
//!   every worker, since each core tracks peer liveness itself (a peer not
//!   heard from is declared down and the groups it led campaign). Each
//!   worker's share is queued in order, so frames from one peer reach a
//!   worker in the order they arrived. With K = 1 the worker reads the inbox
//!   directly: no extra thread, no extra hop.
//! - **Outgoing liveness.** Each core beats every peer it shares a group
//!   with every tick, which would make K frames per node pair at rest. Only
//!   one worker per peer sends its beat: the lowest-numbered worker sharing
//!   a group with that peer — worker 0 for every peer unless it owns too few
//!   groups to share one with each. The workers publish their peer sets in
//!   a shared [`LivenessDirectory`] (peers appear as membership changes add
//!   replicas), and a worker drops a frame that carries nothing but the
//!   beat to a peer a lower-numbered worker also has.
//! - **Ticks.** There is no ticker thread: each worker sleeps until its own
//!   tick deadline, and every deadline starts from the same instant, so the
//!   workers tick together. A shared ticker would only add a thread and a
//!   hop, as every worker has to wake each tick anyway.
//!
//! Request ids stay unique where they must: per group, because one worker
//! of a node submits every request of a group (see [`NodeCore::submit`]).
//!
//! Shutdown drops the one stop sender every thread selects on; each worker
//! then fails what it has in flight and what is still queued for it.

use std::collections::{BTreeMap, BTreeSet};
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

/// The most worker threads a node accepts.
pub const WORKERS_MAX: usize = 64;
/// The default worker count's upper bound (DESIGN.md): every worker is a
/// thread with its own ticks and rounds, so a many-core machine gets more
/// only when asked.
const WORKERS_DEFAULT_MAX: usize = 8;
/// Requests a worker's queue holds; a [`Db`] refuses more (`Unavailable`)
/// rather than queue without bound behind a stalled worker.
pub(crate) const SUBMIT_QUEUE_MAX: usize = 65_536;
/// Frames a worker's queue holds when the inbox is unbounded; otherwise it
/// holds as many as the inbox. Beyond that the demultiplexer drops frames,
/// as a full inbox does (Raft tolerates the loss).
const FRAME_QUEUE_MAX: usize = 65_536;

pub use crate::node::worker_of;

/// The default worker count: the machine's parallelism, at most 8.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, WORKERS_DEFAULT_MAX)
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
    /// Raft worker threads, 1 to [`WORKERS_MAX`]; each owns the groups
    /// [`worker_of`] assigns it. Defaults to the machine's parallelism, at
    /// most 8. It may change between boots.
    pub workers: usize,
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
            workers: default_workers(),
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

/// A client request on its way to a worker.
pub(crate) struct Submission {
    pub(crate) group: GroupId,
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<Result<Response, NodeError>>,
}

/// Counters a node's runtime keeps, summed over its workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub rounds: u64,
    pub frames_sent: u64,
    pub leaders: usize,
    pub awake_groups: usize,
    /// Replicas hosted: the ranges this node holds a copy of, including
    /// new replicas still waiting for their first snapshot.
    pub ranges: usize,
    /// Replicas that are quiesced (`ranges - awake_groups`): idle, neither
    /// ticked nor heartbeating.
    pub quiesced_groups: usize,
}

impl NodeStats {
    /// The counters of two shares of a node added up.
    fn plus(self, other: NodeStats) -> NodeStats {
        NodeStats {
            rounds: self.rounds + other.rounds,
            frames_sent: self.frames_sent + other.frames_sent,
            leaders: self.leaders + other.leaders,
            awake_groups: self.awake_groups + other.awake_groups,
            ranges: self.ranges + other.ranges,
            quiesced_groups: self.quiesced_groups + other.quiesced_groups,
        }
    }
}

/// Reads a node's [`NodeStats`] without holding the [`Node`]: a status
/// page keeps one, so that serving it never keeps a node from shutting
/// down. After shutdown it reads the last counts.
#[derive(Clone, Debug)]
pub struct StatsReader {
    workers: Arc<[Arc<parking_lot::Mutex<NodeStats>>]>,
}

impl StatsReader {
    /// The node's counters, summed over its workers.
    pub fn read(&self) -> NodeStats {
        self.workers
            .iter()
            .map(|stats| *stats.lock())
            .fold(NodeStats::default(), NodeStats::plus)
    }
}

/// Which worker beats which peer: every worker's peer set, so that a
/// worker can tell which of its peers a lower-numbered worker also has and
/// leave their beats to it. Peer sets only grow; the version changes with
/// every publication, so workers recompute only then.
#[derive(Debug)]
struct LivenessDirectory {
    peers: parking_lot::RwLock<Vec<BTreeSet<NodeId>>>,
    version: std::sync::atomic::AtomicU64,
}

impl LivenessDirectory {
    fn new(workers: usize) -> Self {
        LivenessDirectory {
            peers: parking_lot::RwLock::new(vec![BTreeSet::new(); workers]),
            version: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records `worker`'s peers.
    fn publish(&self, worker: usize, peers: BTreeSet<NodeId>) {
        if let Some(slot) = self.peers.write().get_mut(worker) {
            *slot = peers;
        }
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The peers whose beat a lower-numbered worker than `worker` sends.
    fn elsewhere(&self, worker: usize) -> BTreeSet<NodeId> {
        self.peers
            .read()
            .iter()
            .take(worker)
            .flat_map(|peers| peers.iter().copied())
            .collect()
    }
}

/// A running node. Dropping it shuts it down.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    /// One queue per worker, indexed by [`worker_of`].
    submit: Arc<[Sender<Submission>]>,
    /// Dropping it disconnects every thread's stop receiver: the broadcast
    /// that stops them all.
    stop: Option<Sender<()>>,
    stats: Vec<Arc<parking_lot::Mutex<NodeStats>>>,
    ranges: Arc<Vec<RangeDescriptor>>,
    /// The workers, and the demultiplexer if there is one.
    threads: Vec<JoinHandle<()>>,
}

impl Node {
    /// Opens (bootstrapping or recovering) the node and starts its workers.
    /// Frames for this node arrive on `inbox`; frames it sends go through
    /// `transport`.
    pub fn open(
        options: NodeOptions,
        transport: Arc<dyn Transport>,
        inbox: Receiver<Frame>,
    ) -> Result<Node, Error> {
        let workers = options.workers;
        if workers == 0 || workers > WORKERS_MAX {
            return Err(Error::InvalidArgument(format!(
                "{workers} workers: a node runs 1 to {WORKERS_MAX}"
            )));
        }
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

        let mut owned: Vec<Vec<RangeDescriptor>> = vec![Vec::new(); workers];
        for descriptor in &ranges {
            owned[worker_of(descriptor.group, workers)].push(descriptor.clone());
        }
        let liveness = Arc::new(LivenessDirectory::new(workers));
        // Every core is open before any thread starts, so a failure leaves
        // nothing running.
        let mut cores = Vec::with_capacity(workers);
        for (worker, share) in owned.iter().enumerate() {
            let config = NodeConfig {
                sends_liveness: true,
                worker: (worker, workers),
                ..node_config.clone()
            };
            cores.push(
                NodeCore::open(
                    options.id,
                    Arc::clone(&wal),
                    Arc::clone(&snapshots) as Arc<dyn crate::node::snapshots::SnapshotStore>,
                    config,
                    share,
                )
                .map_err(Error::from_node)?,
            );
        }

        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut node = Node {
            id: options.id,
            submit: Arc::from(Vec::new()),
            stop: Some(stop),
            stats: Vec::with_capacity(workers),
            ranges: Arc::new(ranges),
            threads: Vec::with_capacity(workers + 1),
        };
        let frame_queues: Vec<Receiver<Frame>> = if workers == 1 {
            vec![inbox]
        } else {
            let (senders, receivers): (Vec<_>, Vec<_>) =
                (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
            let demux = Demux {
                queue_max: inbox.capacity().unwrap_or(FRAME_QUEUE_MAX),
                inbox,
                workers: senders,
                stopped: stopped.clone(),
            };
            // On an error here and below, dropping `node` stops and joins
            // the threads already started.
            node.spawn(format!("flotilla-demux-{}", options.id), move || {
                demux.run();
            })?;
            receivers
        };
        let mut submit = Vec::with_capacity(workers);
        // Every worker starts its tick clock at the same instant.
        let first_tick = Instant::now() + options.tick_interval;
        for (index, (core, frames)) in cores.into_iter().zip(frame_queues).enumerate() {
            let (sender, submissions) = crossbeam_channel::unbounded();
            submit.push(sender);
            let stats = Arc::new(parking_lot::Mutex::new(NodeStats::default()));
            node.stats.push(Arc::clone(&stats));
            let worker = Worker {
                core,
                transport: Arc::clone(&transport),
                inbox: frames,
                submissions,
                stopped: stopped.clone(),
                waiting: BTreeMap::new(),
                stats,
                tick_interval: options.tick_interval,
                next_tick: first_tick,
                index,
                liveness: Arc::clone(&liveness),
                peers_published: usize::MAX,
                liveness_version: u64::MAX,
                liveness_elsewhere: BTreeSet::new(),
            };
            node.spawn(format!("flotilla-node-{}-{index}", options.id), move || {
                worker.run();
            })?;
        }
        node.submit = Arc::from(submit);
        Ok(node)
    }

    fn spawn(&mut self, name: String, body: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(body)
            .map_err(|e| Error::Io(format!("spawning thread {name}: {e}")))?;
        self.threads.push(thread);
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// How many worker threads the node runs.
    pub fn workers(&self) -> usize {
        self.submit.len()
    }

    /// A cloneable handle for reads and writes through this node.
    pub fn db(&self) -> Db {
        Db::new(Arc::clone(&self.submit), Arc::clone(&self.ranges))
    }

    /// The node's counters, summed over its workers.
    pub fn stats(&self) -> NodeStats {
        self.stats_reader().read()
    }

    /// A reader of [`Node::stats`] that does not borrow the node.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            workers: self.stats.iter().cloned().collect(),
        }
    }

    /// Stops the workers; requests still in flight fail with `Shutdown`.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Splits the node's incoming frames among its workers.
struct Demux {
    inbox: Receiver<Frame>,
    /// One queue per worker, indexed by [`worker_of`].
    workers: Vec<Sender<Frame>>,
    stopped: Receiver<()>,
    queue_max: usize,
}

impl Demux {
    fn run(self) {
        let count = self.workers.len();
        loop {
            let frame = select! {
                recv(self.stopped) -> _ => return,
                recv(self.inbox) -> frame => match frame {
                    Ok(frame) => frame,
                    // The transport dropped the node: nothing more comes.
                    Err(_) => return,
                },
            };
            let parts = frame.split_by(count, |group| worker_of(group, count));
            for (part, worker) in parts.into_iter().zip(&self.workers) {
                // A worker that fell this far behind loses the frame, as it
                // would at a full inbox: Raft tolerates lost messages, and
                // blocking here would stall every other worker's input.
                if let Some(part) = part.filter(|_| worker.len() < self.queue_max) {
                    let _ = worker.send(part);
                }
            }
        }
    }
}

struct Worker {
    core: NodeCore,
    transport: Arc<dyn Transport>,
    /// The node's inbox with one worker, else this worker's share of it.
    inbox: Receiver<Frame>,
    submissions: Receiver<Submission>,
    stopped: Receiver<()>,
    waiting: BTreeMap<RequestId, oneshot::Sender<Result<Response, NodeError>>>,
    stats: Arc<parking_lot::Mutex<NodeStats>>,
    tick_interval: Duration,
    next_tick: Instant,
    /// This worker's number.
    index: usize,
    liveness: Arc<LivenessDirectory>,
    /// How many peers this worker last published.
    peers_published: usize,
    /// The directory version `liveness_elsewhere` was computed from.
    liveness_version: u64,
    /// Peers whose liveness beat a lower-numbered worker sends.
    liveness_elsewhere: BTreeSet<NodeId>,
}

/// Inputs taken per loop iteration before a round, so one round serves many.
const INPUTS_PER_ROUND_MAX: usize = 4096;

impl Worker {
    fn run(mut self) {
        loop {
            let timeout = self.next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(self.stopped) -> _ => break,
                recv(self.submissions) -> submission => match submission {
                    Ok(submission) => self.submit(submission),
                    Err(_) => break,
                },
                recv(self.inbox) -> frame => match frame {
                    Ok(frame) => self.core.receive(frame),
                    // No more frames will come (the transport or the
                    // demultiplexer is gone); waiting on a disconnected
                    // channel would return at once, forever.
                    Err(_) => self.inbox = crossbeam_channel::never(),
                },
                default(timeout) => {}
            }
            self.drain_inputs();
            if Instant::now() >= self.next_tick {
                self.core.tick();
                self.next_tick += self.tick_interval;
                if self.next_tick < Instant::now() {
                    self.next_tick = Instant::now() + self.tick_interval;
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
        // Requests still queued were never started. The queue outlives
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

    /// Publishes this worker's peers if they changed, and learns which
    /// beats other workers send if theirs did.
    fn refresh_liveness_duty(&mut self) {
        if self.core.peer_count() != self.peers_published {
            self.peers_published = self.core.peer_count();
            self.liveness
                .publish(self.index, self.core.peer_ids().collect());
        }
        let version = self.liveness.version();
        if version != self.liveness_version {
            self.liveness_version = version;
            self.liveness_elsewhere = self.liveness.elsewhere(self.index);
        }
    }

    fn run_rounds(&mut self) -> Result<(), crate::node::RoundError> {
        self.refresh_liveness_duty();
        loop {
            let mut out = FrameBuilder::new(self.core.id());
            let handled = self.core.round(&mut out)?;
            let mut frames = 0;
            for frame in out.finish() {
                if frame.is_liveness_only() && self.liveness_elsewhere.contains(&frame.to) {
                    continue;
                }
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
            stats.ranges = self.core.replica_count();
            stats.quiesced_groups = stats.ranges.saturating_sub(stats.awake_groups);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_of_is_stable_in_range_and_spreads_consecutive_groups() {
        for workers in 1..=WORKERS_MAX {
            let mut counts = vec![0usize; workers];
            for group in 1..=64 * workers as u64 {
                let worker = worker_of(group, workers);
                assert!(worker < workers);
                counts[worker] += 1;
            }
            // 64 groups per worker on average: none gets fewer than 60.
            assert!(
                counts.iter().all(|&c| c >= 60),
                "{workers} workers: {counts:?}"
            );
        }
        // Fixed values: ownership must not change between builds, or a
        // restart would route groups differently than documented.
        let owners: Vec<usize> = (1..=8).map(|g| worker_of(g, 3)).collect();
        assert_eq!(owners, vec![1, 0, 2, 1, 0, 2, 0, 2]);
        assert_eq!(worker_of(7, 0), 0);
    }

    #[test]
    fn every_peer_gets_liveness_from_exactly_one_worker() {
        // Worker 0 has peers 2 and 3, worker 1 peers 3 and 4, worker 2 peer
        // 4 only, worker 3 none.
        let directory = LivenessDirectory::new(4);
        let before = directory.version();
        directory.publish(1, BTreeSet::from([3, 4]));
        directory.publish(0, BTreeSet::from([2, 3]));
        directory.publish(2, BTreeSet::from([4]));
        assert_ne!(directory.version(), before);
        let elsewhere: Vec<BTreeSet<NodeId>> = (0..4).map(|w| directory.elsewhere(w)).collect();
        assert_eq!(elsewhere[0], BTreeSet::new());
        assert_eq!(elsewhere[1], BTreeSet::from([2, 3]));
        assert_eq!(elsewhere[2], BTreeSet::from([2, 3, 4]));
        // Each peer is beaten by exactly the lowest worker that has it.
        let published = [vec![2, 3], vec![3, 4], vec![4], vec![]];
        for peer in 2..=4 {
            let senders: Vec<usize> = (0..4)
                .filter(|&w| published[w].contains(&peer) && !elsewhere[w].contains(&peer))
                .collect();
            assert_eq!(senders.len(), 1, "peer {peer}: {senders:?}");
        }
        // A peer that appears later on worker 0 (a replica added there)
        // moves its beat to worker 0.
        directory.publish(0, BTreeSet::from([2, 3, 4]));
        assert!(directory.elsewhere(1).contains(&4));
    }

    #[test]
    fn stats_sum_every_worker_and_outlive_the_node() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let network = flotilla_transport::local::LocalNetwork::new(1);
        let (transport, inbox) = network.register(1, 16);
        let mut options = NodeOptions::new(
            1,
            dir.path(),
            Bootstrap::EvenSplits {
                count: 5,
                nodes: vec![1],
            },
        );
        options.workers = 3;
        options.tick_interval = Duration::from_millis(5);
        options.wal.zero_fill_segments = false;
        let node = Node::open(options, Arc::new(transport), inbox).expect("open node 1");
        let reader = node.stats_reader();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reader.read().leaders < 5 {
            assert!(Instant::now() < deadline, "no leaders: {:?}", reader.read());
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = node.stats();
        // Five ranges spread over three workers, each counted once.
        assert_eq!(stats.ranges, 5);
        assert_eq!(stats.awake_groups + stats.quiesced_groups, 5);
        node.shutdown();
        assert_eq!(reader.read().ranges, 5);
    }

    #[test]
    fn a_worker_count_out_of_bounds_is_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for workers in [0, WORKERS_MAX + 1] {
            let network = flotilla_transport::local::LocalNetwork::new(1);
            let (transport, inbox) = network.register(1, 16);
            let mut options = NodeOptions::new(
                1,
                dir.path(),
                Bootstrap::EvenSplits {
                    count: 2,
                    nodes: vec![1],
                },
            );
            options.workers = workers;
            assert!(matches!(
                Node::open(options, Arc::new(transport), inbox),
                Err(Error::InvalidArgument(_))
            ));
        }
    }
}
