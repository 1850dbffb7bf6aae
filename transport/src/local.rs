//! The in-process transport: nodes of one process exchange frames through
//! bounded channels, with faults injected on the way — partitions (one-way
//! or both ways), random drops and random delays — for multi-node tests.
//! Randomness is seeded so a failing test can be rerun with the same faults
//! (timing between threads still varies).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Frame, NodeId, Transport, TransportError};

/// Counters of what the network did with frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub sent: u64,
    pub delivered: u64,
    /// Dropped by a partition, a random drop, or a missing destination.
    pub dropped: u64,
    /// Refused because the destination's queue was full.
    pub overflowed: u64,
}

#[derive(Debug)]
struct Faults {
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_rate: f64,
    delay: Option<(Duration, Duration)>,
    rng: ChaCha8Rng,
}

struct Delayed {
    due: Instant,
    seq: u64,
    frame: Frame,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Inner {
    nodes: RwLock<BTreeMap<NodeId, Sender<Frame>>>,
    faults: Mutex<Faults>,
    delayed: Mutex<BinaryHeap<Reverse<Delayed>>>,
    delayed_cv: Condvar,
    delayed_seq: AtomicU64,
    shutdown: AtomicBool,
    sent: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    overflowed: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNetwork")
            .field("nodes", &self.nodes.read().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn deliver(&self, frame: Frame) -> Result<(), TransportError> {
        let nodes = self.nodes.read();
        let Some(queue) = nodes.get(&frame.to) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let to = frame.to;
        match queue.try_send(frame) {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                Err(TransportError::QueueFull(to))
            }
            // The receiving node shut down: like a crashed peer.
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn delay_loop(&self) {
        let mut heap = self.delayed.lock();
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            match heap.peek().map(|Reverse(d)| d.due) {
                Some(due) if due <= now => {
                    if let Some(Reverse(delayed)) = heap.pop() {
                        drop(heap);
                        let _ = self.deliver(delayed.frame);
                        heap = self.delayed.lock();
                    }
                }
                Some(due) => {
                    let _ = self.delayed_cv.wait_until(&mut heap, due);
                }
                None => self.delayed_cv.wait(&mut heap),
            }
        }
    }
}

/// A network of in-process nodes. Dropping it stops delayed delivery.
#[derive(Debug)]
pub struct LocalNetwork {
    inner: Arc<Inner>,
    delay_thread: Option<JoinHandle<()>>,
}

impl LocalNetwork {
    /// A network whose random faults are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        let inner = Arc::new(Inner {
            nodes: RwLock::new(BTreeMap::new()),
            faults: Mutex::new(Faults {
                cut: BTreeSet::new(),
                drop_rate: 0.0,
                delay: None,
                rng: ChaCha8Rng::seed_from_u64(seed),
            }),
            delayed: Mutex::new(BinaryHeap::new()),
            delayed_cv: Condvar::new(),
            delayed_seq: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        });
        let worker = Arc::clone(&inner);
        let delay_thread = std::thread::Builder::new()
            .name("local-net-delay".into())
            .spawn(move || worker.delay_loop())
            .ok();
        LocalNetwork {
            inner,
            delay_thread,
        }
    }

    /// Adds node `node` with an inbound queue of `queue_frames_max` frames;
    /// returns its transport and the receiving end of its queue. Registering
    /// a node again (a restart) replaces its queue.
    pub fn register(
        &self,
        node: NodeId,
        queue_frames_max: usize,
    ) -> (LocalTransport, Receiver<Frame>) {
        let (sender, receiver) = crossbeam_channel::bounded(queue_frames_max.max(1));
        self.inner.nodes.write().insert(node, sender);
        let transport = LocalTransport {
            node,
            inner: Arc::clone(&self.inner),
        };
        (transport, receiver)
    }

    /// Removes a node (it crashed or left): frames to it are dropped.
    pub fn unregister(&self, node: NodeId) {
        self.inner.nodes.write().remove(&node);
    }

    /// Drops every frame from `from` to `to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.inner.faults.lock().cut.insert((from, to));
    }

    /// Cuts both ways between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut faults = self.inner.faults.lock();
        for &x in a {
            for &y in b {
                faults.cut.insert((x, y));
                faults.cut.insert((y, x));
            }
        }
    }

    /// Cuts `node` off from every registered node.
    pub fn isolate(&self, node: NodeId) {
        let others: Vec<NodeId> = self
            .inner
            .nodes
            .read()
            .keys()
            .copied()
            .filter(|&n| n != node)
            .collect();
        self.partition(&[node], &others);
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.inner.faults.lock().cut.clear();
    }

    /// Drops each frame with probability `rate` (0 to 1).
    pub fn set_drop_rate(&self, rate: f64) {
        self.inner.faults.lock().drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Delays each frame by a random duration in `[min, max]`; `None` for
    /// immediate delivery. Delayed frames may overtake each other.
    pub fn set_delay(&self, delay: Option<(Duration, Duration)>) {
        self.inner.faults.lock().delay = delay.map(|(a, b)| (a.min(b), a.max(b)));
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetworkStats {
        let i = &self.inner;
        NetworkStats {
            sent: i.sent.load(Ordering::Relaxed),
            delivered: i.delivered.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            overflowed: i.overflowed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LocalNetwork {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Relaxed);
        {
            let _heap = self.inner.delayed.lock();
            self.inner.delayed_cv.notify_all();
        }
        if let Some(thread) = self.delay_thread.take() {
            let _ = thread.join();
        }
    }
}

/// One node's handle on a [`LocalNetwork`].
#[derive(Debug, Clone)]
pub struct LocalTransport {
    node: NodeId,
    inner: Arc<Inner>,
}

impl Transport for LocalTransport {
    fn local_node(&self) -> NodeId {
        self.node
    }

    fn send(&self, frame: Frame) -> Result<(), TransportError> {
        let inner = &self.inner;
        if inner.shutdown.load(Ordering::Relaxed) {
            return Err(TransportError::Shutdown);
        }
        if !inner.nodes.read().contains_key(&frame.to) {
            return Err(TransportError::UnknownNode(frame.to));
        }
        inner.sent.fetch_add(1, Ordering::Relaxed);
        let delay = {
            let mut faults = inner.faults.lock();
            let rate = faults.drop_rate;
            let dropped = faults.cut.contains(&(frame.from, frame.to))
                || (rate > 0.0 && faults.rng.gen_bool(rate));
            if dropped {
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            faults.delay.map(|(min, max)| {
                if max > min {
                    faults.rng.gen_range(min..=max)
                } else {
                    min
                }
            })
        };
        match delay {
            Some(delay) if !delay.is_zero() => {
                let seq = inner.delayed_seq.fetch_add(1, Ordering::Relaxed);
                inner.delayed.lock().push(Reverse(Delayed {
                    due: Instant::now() + delay,
                    seq,
                    frame,
                }));
                inner.delayed_cv.notify_all();
                Ok(())
            }
            _ => inner.deliver(frame),
        }
    }
}
