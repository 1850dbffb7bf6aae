//! The in-memory 3-voter group both implementations run in: one loop that
//! handles every replica's `Ready` and delivers the messages, shared by both
//! so that the work around the Raft core is identical.

/// Voters of the group; replica `i` has id `i + 1` and node 1 leads.
pub const VOTERS: u64 = 3;

/// Passes of ready handling and delivery a round may take before the group
/// is declared stuck. A round commits in three passes and the election in a
/// few more; the bound only catches a group that stopped making progress.
const MAX_PASSES_PER_ROUND: usize = 32;

/// Entries applied everywhere before storage is compacted.
const COMPACT_EVERY_ENTRIES: u64 = 4096;

/// One replica with its storage, seen through what the driver needs.
pub trait Replica: Sized {
    type Message;

    /// A replica of the group `1..=VOTERS` with a fresh in-memory storage.
    fn new(id: u64) -> Self;
    fn destination(message: &Self::Message) -> u64;
    fn campaign(&mut self);
    fn is_leader(&self) -> bool;
    fn propose(&mut self, data: Vec<u8>);
    fn last_index(&self) -> u64;
    fn step(&mut self, message: Self::Message);
    fn has_ready(&self) -> bool;
    /// Handles one `Ready` in the order its contract asks: messages that
    /// may leave at once go to `outbox`, entries and hard state are
    /// persisted into storage, then the messages that wait for persistence
    /// go to `outbox`, committed entries are applied, and Raft is advanced.
    fn handle_ready(&mut self, outbox: &mut Vec<Self::Message>, applied: &mut Applied);
    /// Drops stored entries below `first_kept` (all applied everywhere).
    fn compact(&mut self, first_kept: u64);
}

/// The state machine: what a replica has applied.
#[derive(Clone, Copy, Debug, Default)]
pub struct Applied {
    pub index: u64,
    pub bytes: u64,
}

impl Applied {
    /// Applies the committed entry `index`, which must follow the last one.
    pub fn apply(&mut self, index: u64, data: &[u8]) {
        assert_eq!(index, self.index + 1, "committed entries out of order");
        self.index = index;
        self.bytes += data.len() as u64;
    }
}

/// A group of `VOTERS` replicas and the network between them.
pub struct Group<R: Replica> {
    replicas: Vec<R>,
    applied: Vec<Applied>,
    /// Messages sent and not yet delivered.
    in_flight: Vec<R::Message>,
    /// Reused buffer the messages of `in_flight` are delivered from.
    delivering: Vec<R::Message>,
    /// Payload bytes proposed since the group was elected.
    proposed_bytes: u64,
    /// Entries below this index are compacted away on every replica.
    first_kept: u64,
}

impl<R: Replica> Group<R> {
    /// A group whose node 1 is leader and has applied its election entry.
    pub fn elected() -> Self {
        let mut group = Group {
            replicas: (1..=VOTERS).map(R::new).collect(),
            applied: vec![Applied::default(); VOTERS as usize],
            in_flight: Vec::new(),
            delivering: Vec::new(),
            proposed_bytes: 0,
            first_kept: 1,
        };
        group.replicas[0].campaign();
        group.run_until_leader_applied_last();
        assert!(
            group.replicas[0].is_leader(),
            "node 1 did not win the election"
        );
        group
    }

    /// Proposes `batch` copies of `payload` one call at a time, then runs
    /// the group until the leader has applied them.
    pub fn round(&mut self, payload: &[u8], batch: usize) {
        let leader = &mut self.replicas[0];
        for _ in 0..batch {
            leader.propose(payload.to_vec());
        }
        self.proposed_bytes += (payload.len() * batch) as u64;
        self.run_until_leader_applied_last();
        assert_eq!(
            self.applied[0].bytes, self.proposed_bytes,
            "leader lost a proposal"
        );
        self.maybe_compact();
    }

    fn run_until_leader_applied_last(&mut self) {
        let target = self.replicas[0].last_index();
        for _ in 0..MAX_PASSES_PER_ROUND {
            self.handle_readies();
            if self.replicas[0].is_leader() && self.applied[0].index >= target {
                return;
            }
            self.deliver();
        }
        panic!("the group did not apply index {target} within {MAX_PASSES_PER_ROUND} passes");
    }

    fn handle_readies(&mut self) {
        for (replica, applied) in self.replicas.iter_mut().zip(&mut self.applied) {
            if replica.has_ready() {
                replica.handle_ready(&mut self.in_flight, applied);
            }
        }
    }

    fn deliver(&mut self) {
        std::mem::swap(&mut self.in_flight, &mut self.delivering);
        for message in self.delivering.drain(..) {
            let to = R::destination(&message);
            self.replicas[(to - 1) as usize].step(message);
        }
    }

    fn maybe_compact(&mut self) {
        let applied_everywhere = self.applied.iter().map(|a| a.index).min().unwrap_or(0);
        if applied_everywhere < self.first_kept + COMPACT_EVERY_ENTRIES {
            return;
        }
        for replica in &mut self.replicas {
            replica.compact(applied_everywhere);
        }
        self.first_kept = applied_everywhere;
    }

    /// Lets the followers learn the last commit index, then checks that
    /// every replica applied every proposal.
    pub fn check_all_applied(&mut self) {
        let target = self.replicas[0].last_index();
        for _ in 0..MAX_PASSES_PER_ROUND {
            if self.applied.iter().all(|a| a.index >= target) {
                break;
            }
            self.handle_readies();
            self.deliver();
        }
        for applied in &self.applied {
            assert_eq!(applied.index, target, "a replica did not apply everything");
            assert_eq!(
                applied.bytes, self.proposed_bytes,
                "a replica lost a proposal"
            );
        }
    }
}
