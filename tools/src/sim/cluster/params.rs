//! The shape of one run, drawn from its seed: cluster and range counts, the
//! node and Raft settings, the WAL's memory budget, network quality, fault
//! rates and the client population. Rates are per mille per tick.

use flotilla::node::NodeConfig;
use flotilla::wal::{SyncMode, WalConfig};
use flotilla_raftgroup::{Config, ReadMode};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Network behaviour while faults are on. Once they stop nothing is lost
/// or duplicated and delays shrink to [`CALM_DELAY_STEPS_MAX`].
#[derive(Clone, Copy, Debug)]
pub struct NetParams {
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Share of frames delayed by up to `delay_steps_max` extra steps; the
    /// others arrive in the next step.
    pub delay_per_mille: u32,
    pub delay_steps_max: u64,
}

/// Extra delay of a frame once faults stop.
pub const CALM_DELAY_STEPS_MAX: u64 = 1;

/// Faults injected before the calm phase.
#[derive(Clone, Copy, Debug)]
pub struct FaultParams {
    pub crash_per_mille: u32,
    /// Share (per cent) of crashes that are power cuts in the middle of a
    /// WAL write rather than between rounds.
    pub power_cut_percent: u32,
    /// How many mutating file operations from now the power goes off.
    pub power_cut_ops_max: u64,
    /// Chance that a crash tears the last unsynced write (see `SimFs`).
    pub tear_percent: u64,
    pub down_ticks_max: u64,
    pub partition_per_mille: u32,
    pub partition_ticks_max: u64,
    /// A replica campaigns although its leader is fine.
    pub campaign_per_mille: u32,
    /// A node wrongly declares a live peer down (a failure detector's false
    /// suspicion), so the groups that peer leads campaign here.
    pub suspect_per_mille: u32,
    /// A group's leader is asked to add a replica on another node or to
    /// remove one (perhaps itself).
    pub membership_per_mille: u32,
}

/// Everything a seed decides before the run starts.
#[derive(Clone, Debug)]
pub struct Params {
    pub nodes: u64,
    pub ranges: u64,
    pub keys_per_range: u64,
    /// Half of all operations go to the keys of the first `hot_ranges`
    /// ranges, so keys see contention.
    pub hot_ranges: u64,
    pub clients: u64,
    /// A client waits up to this many steps between operations.
    pub think_steps_max: u64,
    pub election_ticks: u64,
    pub heartbeat_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub read_mode: ReadMode,
    pub lease_margin_ticks: u64,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    pub max_uncommitted_bytes: u64,
    pub max_committed_bytes_per_ready: u64,
    pub request_timeout_ticks: u64,
    pub quiesce_after_idle_ticks: u64,
    pub peer_down_after_ticks: u64,
    pub wal_cache_bytes_max: usize,
    /// Entries applied between a replica's snapshots: small values make
    /// snapshots, compaction and snapshot transfers routine.
    pub snapshot_after_entries: u64,
    /// Small chunks make a snapshot transfer span many frames and rounds.
    pub snapshot_chunk_bytes: usize,
    pub snapshot_chunks_per_round: usize,
    pub wal_maintenance_every_ticks: u64,
    pub net: NetParams,
    pub faults: FaultParams,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, choices: &[T]) -> T {
    choices[rng.gen_range(0..choices.len())]
}

impl Params {
    pub fn generate(rng: &mut ChaCha8Rng) -> Self {
        let ranges = rng.gen_range(4..=32);
        let check_quorum = rng.gen_bool(0.7);
        let read_mode = if check_quorum && rng.gen_bool(0.4) {
            ReadMode::Lease
        } else {
            ReadMode::ReadIndex
        };
        Params {
            nodes: pick(rng, &[3, 3, 5]),
            ranges,
            keys_per_range: rng.gen_range(2..=10),
            hot_ranges: rng.gen_range(1..=ranges.min(4)),
            clients: rng.gen_range(3..=8),
            think_steps_max: rng.gen_range(0..=8),
            election_ticks: rng.gen_range(8..=12),
            heartbeat_ticks: rng.gen_range(1..=3),
            pre_vote: rng.gen_bool(0.7),
            check_quorum,
            read_mode,
            lease_margin_ticks: rng.gen_range(1..=2),
            max_size_per_msg: pick(rng, &[1 << 20, 1 << 20, 300]),
            max_inflight_msgs: pick(rng, &[256, 256, 2]),
            max_uncommitted_bytes: pick(rng, &[0, 0, 2000]),
            max_committed_bytes_per_ready: pick(rng, &[16 << 20, 16 << 20, 200]),
            request_timeout_ticks: rng.gen_range(20..=60),
            quiesce_after_idle_ticks: rng.gen_range(5..=30),
            peer_down_after_ticks: rng.gen_range(6..=15),
            wal_cache_bytes_max: pick(rng, &[4 << 10, 64 << 10, 16 << 20]),
            snapshot_after_entries: pick(rng, &[4, 16, 64, 100_000]),
            snapshot_chunk_bytes: pick(rng, &[64, 512, 64 << 10]),
            snapshot_chunks_per_round: rng.gen_range(1..=4),
            wal_maintenance_every_ticks: pick(rng, &[3, 10, 50]),
            net: NetParams {
                drop_per_mille: pick(rng, &[0, 10, 50, 150]),
                duplicate_per_mille: pick(rng, &[0, 0, 10, 50]),
                delay_per_mille: pick(rng, &[0, 200, 500, 900]),
                delay_steps_max: rng.gen_range(1..=12),
            },
            faults: FaultParams {
                crash_per_mille: pick(rng, &[0, 5, 15, 30]),
                power_cut_percent: pick(rng, &[0, 50, 100]),
                power_cut_ops_max: rng.gen_range(1..=8),
                tear_percent: pick(rng, &[0, 50, 100]),
                down_ticks_max: rng.gen_range(5..=60),
                partition_per_mille: pick(rng, &[0, 5, 15, 40]),
                partition_ticks_max: rng.gen_range(5..=60),
                campaign_per_mille: pick(rng, &[0, 10, 40]),
                suspect_per_mille: pick(rng, &[0, 5, 20]),
                membership_per_mille: pick(rng, &[0, 10, 30, 60]),
            },
        }
    }

    /// The configuration of every node's core.
    pub fn node_config(&self) -> NodeConfig {
        let mut raft = Config::new(1);
        raft.election_ticks = self.election_ticks;
        raft.heartbeat_ticks = self.heartbeat_ticks;
        raft.pre_vote = self.pre_vote;
        raft.check_quorum = self.check_quorum;
        raft.read_mode = self.read_mode;
        raft.lease_margin_ticks = self.lease_margin_ticks;
        raft.max_size_per_msg = self.max_size_per_msg;
        raft.max_inflight_msgs = self.max_inflight_msgs;
        raft.max_uncommitted_bytes = self.max_uncommitted_bytes;
        raft.max_committed_bytes_per_ready = self.max_committed_bytes_per_ready;
        NodeConfig {
            raft,
            request_timeout_ticks: self.request_timeout_ticks,
            quiesce_after_idle_ticks: self.quiesce_after_idle_ticks,
            peer_down_after_ticks: self.peer_down_after_ticks,
            incarnation: 0,
            snapshot_after_entries: self.snapshot_after_entries,
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
            snapshot_chunks_per_round: self.snapshot_chunks_per_round,
            wal_maintenance_every_ticks: self.wal_maintenance_every_ticks,
            wal_segments_target: 2,
            admin_timeout_ticks: 4 * self.request_timeout_ticks,
            sends_liveness: true,
            worker: (0, 1),
        }
    }

    /// The WAL of every node: small segments so runs rotate, no background
    /// threads so runs replay exactly.
    pub fn wal_config(&self) -> WalConfig {
        WalConfig {
            segment_bytes: WalConfig::SEGMENT_BYTES_MIN,
            cache_bytes_max: self.wal_cache_bytes_max,
            sync_mode: SyncMode::LeaderFollower,
            zero_fill_segments: false,
            prepare_in_background: false,
            ..WalConfig::default()
        }
    }

    /// A one-line summary for the trace.
    pub fn summary(&self) -> String {
        format!(
            "nodes={} ranges={} keys/range={} hot={} clients={} think<={} election={} \
             heartbeat={} pre_vote={} check_quorum={} read={:?} msg_bytes={} inflight={} \
             uncommitted={}B ready_bytes={} timeout={} quiesce={} peer_down={} \
             wal_cache={}B snapshot_after={} chunk={}B chunks/round={} wal_maintenance={} \
             net={:?} faults={:?}",
            self.nodes,
            self.ranges,
            self.keys_per_range,
            self.hot_ranges,
            self.clients,
            self.think_steps_max,
            self.election_ticks,
            self.heartbeat_ticks,
            self.pre_vote,
            self.check_quorum,
            self.read_mode,
            self.max_size_per_msg,
            self.max_inflight_msgs,
            self.max_uncommitted_bytes,
            self.max_committed_bytes_per_ready,
            self.request_timeout_ticks,
            self.quiesce_after_idle_ticks,
            self.peer_down_after_ticks,
            self.wal_cache_bytes_max,
            self.snapshot_after_entries,
            self.snapshot_chunk_bytes,
            self.snapshot_chunks_per_round,
            self.wal_maintenance_every_ticks,
            self.net,
            self.faults
        )
    }
}
