//! The shape of one run, drawn from its seed: cluster size, Raft settings,
//! network quality, fault rates and the mix of client operations. Rates are
//! per mille per tick.

use flotilla_raftgroup::{Config, NodeId, ReadMode};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Voters a configuration may hold.
pub const VOTERS_MAX: usize = 7;
/// Learners a configuration may hold.
pub const LEARNERS_MAX: usize = 3;

/// Network behaviour while faults are on (only delays and reordering stay
/// once they stop).
#[derive(Clone, Copy, Debug)]
pub struct NetParams {
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Share of messages that are delayed by 1..=`delay_ticks_max` ticks;
    /// the others arrive within the tick they were sent in.
    pub delay_per_mille: u32,
    pub delay_ticks_max: u64,
}

/// Faults injected before the calm phase.
#[derive(Clone, Copy, Debug)]
pub struct FaultParams {
    pub crash_per_mille: u32,
    /// Share of persisted votes after which the voter crashes at once (and
    /// comes back within a few ticks): whatever a vote promises must
    /// survive exactly that.
    pub crash_after_vote_per_mille: u32,
    pub partition_per_mille: u32,
    /// Share of `Ready`s whose persistence takes 1..=`persist_ticks_max`
    /// ticks, during which the node's messages to send first are already out.
    pub slow_persist_per_mille: u32,
    pub persist_ticks_max: u64,
}

/// Client and host operations.
#[derive(Clone, Copy, Debug)]
pub struct OpParams {
    pub propose_per_mille: u32,
    pub batch_max: u64,
    pub payload_pad_bytes_max: usize,
    pub read_per_mille: u32,
    pub conf_change_per_mille: u32,
    pub transfer_per_mille: u32,
    pub compact_per_mille: u32,
    pub quiesce_per_mille: u32,
}

/// Everything a seed decides before the run starts.
#[derive(Clone, Debug)]
pub struct Params {
    pub voters: u64,
    pub learners: u64,
    pub election_ticks: u64,
    pub heartbeat_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub read_mode: ReadMode,
    pub lease_margin_ticks: u64,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    pub max_inflight_bytes: u64,
    pub max_uncommitted_bytes: u64,
    pub max_committed_bytes_per_ready: u64,
    pub net: NetParams,
    pub faults: FaultParams,
    pub ops: OpParams,
}

/// Usually `usual`, sometimes (one time in `one_in`) a draw from `small`.
fn usually(
    rng: &mut ChaCha8Rng,
    one_in: u32,
    usual: u64,
    small: std::ops::RangeInclusive<u64>,
) -> u64 {
    if rng.gen_ratio(1, one_in) {
        rng.gen_range(small)
    } else {
        usual
    }
}

impl Params {
    pub fn generate(rng: &mut ChaCha8Rng) -> Self {
        let voters = [1, 2, 3, 3, 3, 4, 5, 5, 5, 6, 7][rng.gen_range(0..11)];
        let check_quorum = rng.gen_bool(0.6);
        let read_mode = if check_quorum && rng.gen_bool(0.5) {
            ReadMode::Lease
        } else {
            ReadMode::ReadIndex
        };
        let election_ticks = rng.gen_range(8..=12);
        let quiet = rng.gen_ratio(1, 4);
        Params {
            voters,
            learners: rng.gen_range(0..=2),
            election_ticks,
            heartbeat_ticks: rng.gen_range(1..=3),
            pre_vote: rng.gen_bool(0.6),
            check_quorum,
            read_mode,
            lease_margin_ticks: rng.gen_range(1..=2),
            max_size_per_msg: usually(rng, 3, 1 << 20, 40..=300),
            max_inflight_msgs: usually(rng, 3, 256, 1..=4) as usize,
            max_inflight_bytes: usually(rng, 4, 0, 100..=2000),
            max_uncommitted_bytes: usually(rng, 4, 0, 200..=4000),
            max_committed_bytes_per_ready: usually(rng, 4, 16 << 20, 30..=500),
            net: NetParams {
                drop_per_mille: [0, 10, 50, 150][rng.gen_range(0..4)],
                duplicate_per_mille: [0, 10, 50][rng.gen_range(0..3)],
                delay_per_mille: [0, 100, 300, 800][rng.gen_range(0..4)],
                delay_ticks_max: rng.gen_range(1..=4),
            },
            faults: FaultParams {
                crash_per_mille: [0, 5, 15, 40][rng.gen_range(0..4)],
                crash_after_vote_per_mille: [0, 0, 100, 300][rng.gen_range(0..4)],
                partition_per_mille: [0, 5, 15, 40][rng.gen_range(0..4)],
                slow_persist_per_mille: [0, 50, 200][rng.gen_range(0..3)],
                persist_ticks_max: rng.gen_range(1..=3),
            },
            ops: OpParams {
                propose_per_mille: if quiet { 20 } else { rng.gen_range(100..=700) },
                batch_max: rng.gen_range(1..=4),
                payload_pad_bytes_max: [0, 16, 120][rng.gen_range(0..3)],
                read_per_mille: rng.gen_range(20..=300),
                conf_change_per_mille: [0, 10, 30][rng.gen_range(0..3)],
                transfer_per_mille: [0, 5, 20][rng.gen_range(0..3)],
                compact_per_mille: [0, 10, 50][rng.gen_range(0..3)],
                quiesce_per_mille: if quiet { 200 } else { rng.gen_range(0..=30) },
            },
        }
    }

    /// The Raft configuration of node `id` in its `incarnation`, restarted
    /// with its state machine at `applied`.
    pub fn node_config(&self, run_seed: u64, id: NodeId, incarnation: u64, applied: u64) -> Config {
        Config {
            id,
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            seed: run_seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(id << 20)
                .wrapping_add(incarnation),
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            forward_proposals: true,
            read_mode: self.read_mode,
            lease_margin_ticks: self.lease_margin_ticks,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            max_inflight_bytes: self.max_inflight_bytes,
            max_uncommitted_bytes: self.max_uncommitted_bytes,
            max_committed_bytes_per_ready: self.max_committed_bytes_per_ready,
            applied,
        }
    }

    /// A one-line summary for the trace.
    pub fn summary(&self) -> String {
        format!(
            "election={} heartbeat={} pre_vote={} check_quorum={} read={:?} msg_bytes={} \
             inflight={}/{}B uncommitted={}B ready_bytes={} net={:?} faults={:?} ops={:?}",
            self.election_ticks,
            self.heartbeat_ticks,
            self.pre_vote,
            self.check_quorum,
            self.read_mode,
            self.max_size_per_msg,
            self.max_inflight_msgs,
            self.max_inflight_bytes,
            self.max_uncommitted_bytes,
            self.max_committed_bytes_per_ready,
            self.net,
            self.faults,
            self.ops
        )
    }
}
