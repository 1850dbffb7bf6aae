//! The world of one run: nodes (each a `NodeCore` over a `Wal` on its own
//! `SimFs`), the network, the clients and the clock, and the loop that
//! advances them.
//!
//! A tick: faults (until the calm phase), restarts that are due, one
//! `tick()` of every live node, then [`STEPS_PER_TICK`] steps. A step:
//! idle clients submit, every live node runs rounds until it has no work
//! (its frames go on the wire, its completions to the clients), then the
//! frames due now are delivered in random order. Simulated time is
//! [`STEP_NS`] per step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla::node::snapshots::{MemSnapshotStore, SnapshotStore};
use flotilla::node::{NodeConfig, NodeCore, RangeDescriptor, RequestId, Response};
use flotilla::node::{ReplicaChange, Request, RoundError};
use flotilla::range::KeySpan;
use flotilla::wal::sim_fs::SimFs;
use flotilla::wal::{Wal, WalConfig};
use flotilla_transport::{Frame, FrameBuilder, GroupId, NodeId};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::client::{describe_outcome, outcome_of, Client, ClientOp, ClientState, InFlight};
use super::network::{Network, Partition, SendFate};
use super::params::Params;
use super::trace::{Event, MsgInfo, Trace};
use super::{Options, PlantedBug, Property, Stats};
use crate::history::{self, Outcome, Recorder};

/// Steps between two ticks: rounds and deliveries happen several times a
/// tick, so a request can complete well within one.
pub const STEPS_PER_TICK: u64 = 4;
/// Simulated nanoseconds per step (a tick is a millisecond).
pub const STEP_NS: u64 = 250_000;
/// A node runs at most this many rounds per step; a round with work makes
/// Raft produce more only after messages arrive, so a handful suffice.
const ROUNDS_PER_STEP_MAX: usize = 8;
/// Once faults stop, every range must have a leader and every client must
/// complete [`CALM_DEFINITE_OPS`] operations, and then one read of every
/// key must complete, all within this many ticks.
pub const CALM_DEADLINE_TICKS: u64 = 400;
/// Definite completions each client needs in the calm phase.
const CALM_DEFINITE_OPS: u32 = 3;
/// How late after `request_timeout_ticks` a request may still be answered
/// (a `Timeout` fires on the first tick past the limit).
const TIMEOUT_SLACK_TICKS: u64 = 2;
/// Process ids of the final sweep's readers start here.
const SWEEP_PROCESS_BASE: u64 = 1_000;

/// A property the run broke.
#[derive(Debug)]
pub struct Violation {
    pub property: Property,
    pub detail: String,
}

pub type Checked<T = ()> = Result<T, Violation>;

fn violation<T>(property: Property, detail: impl Into<String>) -> Checked<T> {
    Err(Violation {
        property,
        detail: detail.into(),
    })
}

/// A node's disk and, while it runs, its core.
#[derive(Debug)]
struct Slot {
    fs: SimFs,
    /// Snapshots are durable once saved, so the store outlives crashes.
    snapshots: Arc<MemSnapshotStore>,
    core: Option<NodeCore>,
    incarnation: u64,
    restart_tick: u64,
    /// A power cut is scheduled and has not fired yet.
    power_cut_armed: bool,
}

/// A key clients use: its bytes, its name in the history, its range.
#[derive(Clone, Debug)]
struct Key {
    bytes: Vec<u8>,
    name: String,
    group: GroupId,
}

/// The calm phase: no more faults; the liveness checks run.
#[derive(Debug)]
struct Calm {
    deadline_tick: u64,
    leaders_agreed: bool,
    sweep_started: bool,
}

#[derive(Debug)]
pub struct World {
    pub seed: u64,
    pub params: Params,
    planted: Option<PlantedBug>,
    client_deadline: bool,
    membership: bool,
    calm_tick: u64,
    rng: ChaCha8Rng,
    pub tick: u64,
    step: u64,
    clock_ns: Arc<AtomicU64>,
    pub recorder: Recorder,
    node_config: NodeConfig,
    wal_config: WalConfig,
    ranges: Vec<RangeDescriptor>,
    keys: Vec<Key>,
    slots: BTreeMap<NodeId, Slot>,
    net: Network,
    partition: Option<Partition>,
    clients: Vec<Client>,
    /// Which client waits for which request at which node.
    waiting: BTreeMap<(NodeId, RequestId), usize>,
    /// Membership changes in flight, by node and request.
    admin_waiting: BTreeSet<(NodeId, RequestId)>,
    /// Requests whose outcome a planted bug already recorded.
    orphans: BTreeSet<(NodeId, RequestId)>,
    /// The last value each node returned or accepted per key (the planted
    /// stale reads answer from it).
    node_caches: BTreeMap<NodeId, BTreeMap<usize, Option<String>>>,
    /// The last value any client saw per key: what a CAS expects.
    last_seen: BTreeMap<usize, Option<String>>,
    next_value: u64,
    calm: Option<Calm>,
    pub trace: Trace,
    pub stats: Stats,
}

/// The frame's Raft messages (not its coalesced heartbeats), for the trace.
fn message_infos(frame: &Frame) -> Vec<MsgInfo> {
    frame
        .messages
        .iter()
        .map(|m| MsgInfo::of(m.group, &m.message))
        .collect()
}

/// Even splits of the key space by the first key byte. With more than three
/// nodes each range starts on three of them (rotating), so that adding a
/// replica has somewhere to go.
fn range_descriptors(count: u64, nodes: &[NodeId]) -> Vec<RangeDescriptor> {
    (0..count)
        .map(|i| {
            let bound = |i: u64| {
                if i == 0 || i == count {
                    Vec::new()
                } else {
                    vec![(i * 256 / count) as u8]
                }
            };
            let replicas = if nodes.len() <= 3 {
                nodes.to_vec()
            } else {
                (0..3)
                    .map(|k| nodes[(i as usize + k) % nodes.len()])
                    .collect()
            };
            RangeDescriptor {
                group: i + 1,
                span: KeySpan::new(bound(i), bound(i + 1))
                    .expect("even splits are ordered and non-empty"),
                replicas,
                generation: 1,
            }
        })
        .collect()
}

fn keys_of(ranges: &[RangeDescriptor], per_range: u64) -> Vec<Key> {
    let mut keys = Vec::new();
    for range in ranges {
        let first = range.span.start().first().copied().unwrap_or(0);
        for k in 0..per_range {
            let bytes = vec![first, b'a' + k as u8];
            assert!(range.span.contains(&bytes), "key outside its range");
            let name = bytes.iter().map(|b| format!("{b:02x}")).collect();
            keys.push(Key {
                bytes,
                name,
                group: range.group,
            });
        }
    }
    keys
}

impl World {
    pub fn new(seed: u64, options: &Options) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = Params::generate(&mut rng);
        let node_ids: Vec<NodeId> = (1..=params.nodes).collect();
        let ranges = range_descriptors(params.ranges, &node_ids);
        let keys = keys_of(&ranges, params.keys_per_range);
        let clock_ns = Arc::new(AtomicU64::new(0));
        let clock = Arc::clone(&clock_ns);
        let clients = (0..params.clients)
            .map(|i| Client {
                process: i + 1,
                home: node_ids[(i % params.nodes) as usize],
                state: ClientState::Idle { ready_step: 0 },
                sweep_key: None,
                definite_left: 0,
            })
            .collect();
        World {
            seed,
            node_config: params.node_config(),
            wal_config: params.wal_config(),
            net: Network::new(params.net),
            planted: options.planted_bug,
            client_deadline: options.client_deadline,
            membership: options.membership,
            calm_tick: (options.ticks * 7 / 10).max(1),
            rng,
            tick: 0,
            step: 0,
            recorder: Recorder::with_clock(move || clock.load(Ordering::Relaxed)),
            clock_ns,
            ranges,
            keys,
            slots: BTreeMap::new(),
            partition: None,
            clients,
            waiting: BTreeMap::new(),
            admin_waiting: BTreeSet::new(),
            orphans: BTreeSet::new(),
            node_caches: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            next_value: 1,
            calm: None,
            trace: Trace::new(options.verbose, options.keep_trace),
            stats: Stats::default(),
            params,
        }
    }

    fn event(&mut self, event: Event) {
        // Steps of a tick count from 1; events between ticks show step 0.
        let step = self.step - self.tick.saturating_sub(1) * STEPS_PER_TICK;
        self.trace.push(self.tick, step, event);
    }

    /// Runs to the end: the calm phase completes and the history checks,
    /// or a property fails.
    pub fn run(&mut self) -> Checked<Stats> {
        self.event(Event::Start {
            settings: self.params.summary(),
        });
        for id in 1..=self.params.nodes {
            let fs = SimFs::new(self.seed.wrapping_mul(0x100).wrapping_add(id));
            fs.set_tear_percent(self.params.faults.tear_percent);
            self.slots.insert(
                id,
                Slot {
                    fs,
                    snapshots: Arc::new(MemSnapshotStore::new()),
                    core: None,
                    incarnation: 0,
                    restart_tick: 0,
                    power_cut_armed: false,
                },
            );
            self.start_node(id)?;
        }
        loop {
            self.tick += 1;
            if self.tick == self.calm_tick {
                self.enter_calm()?;
            }
            if self.calm.is_none() {
                self.inject_faults();
            }
            self.restart_due()?;
            for slot in self.slots.values_mut() {
                if let Some(core) = &mut slot.core {
                    core.tick();
                }
            }
            for _ in 0..STEPS_PER_TICK {
                self.step += 1;
                self.clock_ns.store(self.step * STEP_NS, Ordering::Relaxed);
                self.clients_act()?;
                self.run_rounds()?;
                self.deliver_due();
            }
            self.check_overdue()?;
            if self.calm_progress()? {
                break;
            }
        }
        self.event(Event::Done { ticks: self.tick });
        self.check_history()?;
        let mut stats = self.stats.clone();
        stats.ticks = self.tick;
        stats.events = self.trace.count();
        Ok(stats)
    }

    fn up_ids(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.core.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn core_mut(&mut self, id: NodeId) -> Option<&mut NodeCore> {
        self.slots.get_mut(&id).and_then(|slot| slot.core.as_mut())
    }

    // ----- nodes: start, crash, restart ---------------------------------

    /// Every live node's account of `group`.
    fn describe_group(&self, group: u64) -> String {
        self.slots
            .iter()
            .filter_map(|(id, slot)| {
                slot.core
                    .as_ref()
                    .map(|c| format!("node {id}: {}", c.describe_group(group)))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn start_node(&mut self, id: NodeId) -> Checked {
        let slot = self.slots.get_mut(&id).expect("known node");
        let fs: Arc<dyn flotilla::wal::WalFs> = Arc::new(slot.fs.clone());
        let wal = match Wal::open_with_fs(fs, self.wal_config.clone()) {
            Ok(wal) => wal,
            Err(error) => {
                return violation(
                    Property::Recovery,
                    format!(
                        "node {id} (incarnation {}): the WAL does not reopen: {error}",
                        slot.incarnation + 1
                    ),
                )
            }
        };
        let report = wal.recovery_report();
        let config = flotilla::node::NodeConfig {
            incarnation: slot.incarnation + 1,
            ..self.node_config.clone()
        };
        let snapshots: Arc<dyn SnapshotStore> = slot.snapshots.clone();
        let core = match NodeCore::open(id, Arc::new(wal), snapshots, config, &self.ranges) {
            Ok(core) => core,
            Err(error) => {
                return violation(
                    Property::Recovery,
                    format!("node {id}: NodeCore::open failed after recovery: {error}"),
                )
            }
        };
        slot.core = Some(core);
        slot.incarnation += 1;
        slot.power_cut_armed = false;
        let incarnation = slot.incarnation;
        if incarnation > 1 {
            self.stats.restarts += 1;
            self.event(Event::Restart {
                node: id,
                incarnation,
                recovery: format!("{report:?}"),
            });
        }
        Ok(())
    }

    /// The node loses everything it did not sync; its clients learn
    /// nothing about the operations in flight there.
    fn crash(&mut self, id: NodeId, power_cut: bool) {
        let down_ticks = self.rng.gen_range(1..=self.params.faults.down_ticks_max);
        let slot = self.slots.get_mut(&id).expect("known node");
        slot.core = None;
        slot.fs.crash();
        slot.power_cut_armed = false;
        slot.restart_tick = self.tick + down_ticks;
        self.stats.crashes += 1;
        let lost: Vec<(NodeId, RequestId)> = self
            .waiting
            .range((id, 0)..=(id, RequestId::MAX))
            .map(|(&key, _)| key)
            .collect();
        self.orphans.retain(|(node, _)| *node != id);
        self.admin_waiting.retain(|(node, _)| *node != id);
        self.node_caches.remove(&id);
        let up = self.up_ids();
        for key in &lost {
            let index = self.waiting.remove(key).expect("listed above");
            let ready_step = self.step;
            let client = &mut self.clients[index];
            let ClientState::Waiting(in_flight) =
                std::mem::replace(&mut client.state, ClientState::Idle { ready_step })
            else {
                continue;
            };
            self.recorder.complete(in_flight.pending, Outcome::Info);
            if let Some(&other) = up.choose(&mut self.rng) {
                client.home = other;
            }
        }
        self.event(Event::Crash {
            node: id,
            power_cut,
            unknown_ops: lost.len(),
        });
    }

    fn restart_due(&mut self) -> Checked {
        let due: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.core.is_none() && slot.restart_tick <= self.tick)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.start_node(id)?;
        }
        Ok(())
    }

    // ----- faults -------------------------------------------------------

    fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.gen_ratio(per_mille, 1000)
    }

    fn inject_faults(&mut self) {
        let faults = self.params.faults;
        if self
            .partition
            .as_ref()
            .is_some_and(|p| p.heal_tick <= self.tick)
        {
            self.partition = None;
            self.event(Event::Heal);
        }
        if self.partition.is_none() && self.chance(faults.partition_per_mille) {
            self.partition_now();
        }
        if self.chance(faults.crash_per_mille) {
            self.crash_some_node();
        }
        let up = self.up_ids();
        if self.chance(faults.campaign_per_mille) {
            if let Some(&node) = up.choose(&mut self.rng) {
                let group = self.rng.gen_range(1..=self.params.ranges);
                self.core_mut(node).expect("up").campaign(group);
                self.stats.campaigns += 1;
                self.event(Event::Campaign { node, group });
            }
        }
        if self.chance(faults.campaign_per_mille) {
            if let Some(&node) = up.choose(&mut self.rng) {
                let group = self.rng.gen_range(1..=self.params.ranges);
                let target = self.rng.gen_range(1..=self.params.nodes);
                let accepted = self
                    .core_mut(node)
                    .expect("up")
                    .transfer_leader(group, target)
                    .is_ok();
                self.event(Event::Transfer {
                    node,
                    group,
                    target,
                    accepted,
                });
            }
        }
        if self.membership && self.chance(faults.membership_per_mille) {
            self.change_membership();
        }
        if self.chance(faults.suspect_per_mille) {
            if let Some(&node) = up.choose(&mut self.rng) {
                let others: Vec<NodeId> = (1..=self.params.nodes).filter(|&p| p != node).collect();
                let peer = *others.choose(&mut self.rng).expect("at least 3 nodes");
                self.core_mut(node).expect("up").peer_down(peer);
                self.event(Event::Suspect { node, peer });
            }
        }
    }

    /// Asks a group's leader to add a replica on a node that has none, or
    /// to remove one, keeping between two and four members.
    fn change_membership(&mut self) {
        let group = self.rng.gen_range(1..=self.params.ranges);
        let leader = self.up_ids().into_iter().find(|&id| {
            self.slots[&id]
                .core
                .as_ref()
                .is_some_and(|core| core.leader(group) == Some(id))
        });
        let Some(leader) = leader else {
            return;
        };
        let core = self.core_mut(leader).expect("up");
        let Some(conf) = core.conf_state(group).cloned() else {
            return;
        };
        let members: BTreeSet<NodeId> = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners)
            .copied()
            .collect();
        let outsiders: Vec<NodeId> = (1..=self.params.nodes)
            .filter(|n| !members.contains(n))
            .collect();
        let add = !outsiders.is_empty()
            && (members.len() <= 2 || (members.len() < 4 && self.rng.gen_bool(0.5)));
        let change = if add {
            ReplicaChange::Add(*outsiders.choose(&mut self.rng).expect("not empty"))
        } else if members.len() > 2 {
            let members: Vec<NodeId> = members.into_iter().collect();
            ReplicaChange::Remove(*members.choose(&mut self.rng).expect("not empty"))
        } else {
            return;
        };
        let core = self.core_mut(leader).expect("up");
        let request = core.submit(group, Request::ChangeReplicas(change));
        self.admin_waiting.insert((leader, request));
        self.stats.membership_changes += 1;
        self.event(Event::Membership {
            node: leader,
            group,
            change: format!("{change:?}"),
            request,
        });
    }

    /// Whether node `id`'s replica of `group` exists, has data, and counts
    /// itself a member.
    fn hosts(&self, id: NodeId, group: GroupId) -> bool {
        self.slots[&id].core.as_ref().is_some_and(|core| {
            core.range(group)
                .is_some_and(|range| range.replicas.contains(&id))
        })
    }

    fn partition_now(&mut self) {
        let sides_count = self.rng.gen_range(2..=3u8);
        let mut sides = BTreeMap::new();
        for id in 1..=self.params.nodes {
            sides.insert(id, self.rng.gen_range(0..sides_count));
        }
        let distinct: BTreeSet<u8> = sides.values().copied().collect();
        if distinct.len() < 2 {
            // Everyone on one side cuts nothing: split off one node.
            let lone = self.rng.gen_range(1..=self.params.nodes);
            let side = sides[&lone];
            sides.insert(lone, (side + 1) % sides_count);
        }
        let heal_tick = self.tick
            + self
                .rng
                .gen_range(1..=self.params.faults.partition_ticks_max);
        let partition = Partition { sides, heal_tick };
        self.stats.partitions += 1;
        self.event(Event::Partition(partition.groups()));
        self.partition = Some(partition);
    }

    fn crash_some_node(&mut self) {
        let candidates: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.core.is_some() && !slot.power_cut_armed)
            .map(|(&id, _)| id)
            .collect();
        let Some(&id) = candidates.choose(&mut self.rng) else {
            return;
        };
        let faults = self.params.faults;
        if self.rng.gen_range(0..100) < faults.power_cut_percent {
            let in_ops = self.rng.gen_range(1..=faults.power_cut_ops_max);
            let slot = self.slots.get_mut(&id).expect("candidate");
            slot.fs.power_cut_in(in_ops);
            slot.power_cut_armed = true;
            self.event(Event::PowerCutScheduled { node: id, in_ops });
        } else {
            self.crash(id, false);
        }
    }

    // ----- the calm phase -----------------------------------------------

    fn enter_calm(&mut self) -> Checked {
        self.event(Event::Calm);
        self.calm = Some(Calm {
            deadline_tick: self.tick + CALM_DEADLINE_TICKS,
            leaders_agreed: false,
            sweep_started: false,
        });
        self.net.lossy = false;
        self.net.calm = true;
        if self.partition.take().is_some() {
            self.event(Event::Heal);
        }
        let down: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.core.is_none())
            .map(|(&id, _)| id)
            .collect();
        for slot in self.slots.values_mut() {
            slot.fs.clear_faults();
            slot.power_cut_armed = false;
        }
        for id in down {
            self.start_node(id)?;
        }
        for client in &mut self.clients {
            client.definite_left = CALM_DEFINITE_OPS;
        }
        Ok(())
    }

    /// Groups for which the live nodes do not all name the same live
    /// leader that considers itself leader.
    fn groups_without_agreed_leader(&self) -> Vec<GroupId> {
        let cores: Vec<(&NodeId, &NodeCore)> = self
            .slots
            .iter()
            .filter_map(|(id, slot)| slot.core.as_ref().map(|core| (id, core)))
            .collect();
        self.ranges
            .iter()
            .map(|r| r.group)
            .filter(|&group| {
                // Only the replicas that count themselves members: a removed
                // one may linger a little, a new one may wait for data.
                let hosting: Vec<&(&NodeId, &NodeCore)> = cores
                    .iter()
                    .filter(|(&id, _)| self.hosts(id, group))
                    .collect();
                let named: BTreeSet<Option<NodeId>> =
                    hosting.iter().map(|(_, core)| core.leader(group)).collect();
                let agreed = match named.iter().next() {
                    Some(&Some(leader)) if named.len() == 1 => hosting
                        .iter()
                        .any(|(&id, core)| id == leader && core.leader(group) == Some(id)),
                    _ => false,
                };
                !agreed
            })
            .collect()
    }

    /// What each live node believes about `group`'s leader.
    fn leaders_by_node(&self, group: GroupId) -> Vec<(NodeId, Option<NodeId>)> {
        self.slots
            .iter()
            .filter_map(|(&id, slot)| slot.core.as_ref().map(|core| (id, core.leader(group))))
            .collect()
    }

    /// Advances the calm phase; true once it is complete.
    fn calm_progress(&mut self) -> Checked<bool> {
        let Some(calm) = &self.calm else {
            return Ok(false);
        };
        let (deadline_tick, leaders_agreed, sweep_started) =
            (calm.deadline_tick, calm.leaders_agreed, calm.sweep_started);
        let leaderless = self.groups_without_agreed_leader();
        if !leaders_agreed && leaderless.is_empty() {
            self.calm.as_mut().expect("calm").leaders_agreed = true;
            self.event(Event::LeadersAgreed);
        }
        let clients_done = self
            .clients
            .iter()
            .all(|c| c.definite_left == 0 && c.is_idle());
        if clients_done && !sweep_started {
            self.start_sweep();
        } else if clients_done && leaderless.is_empty() {
            self.stats.calm_ticks = self.tick + CALM_DEADLINE_TICKS - deadline_tick;
            return Ok(true);
        }
        if self.tick >= deadline_tick {
            let stuck: Vec<String> = self
                .clients
                .iter()
                .filter(|c| c.definite_left > 0 || !c.is_idle())
                .map(|c| match &c.state {
                    ClientState::Waiting(op) => format!(
                        "process {} waits for {} of {} at node {} (request {:#x}; leaders of \
                         group {} by node: {:?}; {})",
                        c.process,
                        op.op.describe(),
                        self.keys[op.key].name,
                        op.node,
                        op.request,
                        self.keys[op.key].group,
                        self.leaders_by_node(self.keys[op.key].group),
                        self.describe_group(self.keys[op.key].group)
                    ),
                    ClientState::Idle { .. } => format!(
                        "process {} still needs {} definite completions (home node {})",
                        c.process, c.definite_left, c.home
                    ),
                })
                .take(10)
                .collect();
            let leaderless_states: Vec<String> = leaderless
                .iter()
                .take(3)
                .map(|&group| format!("group {group}: {}", self.describe_group(group)))
                .collect();
            return violation(
                Property::Liveness,
                format!(
                    "{CALM_DEADLINE_TICKS} ticks after the faults stopped: groups without an \
                     agreed leader: {leaderless:?} ({leaderless_states:?}); stuck clients: \
                     {stuck:?}"
                ),
            );
        }
        Ok(false)
    }

    /// One reader per key reads it once: a write acknowledged and then
    /// lost shows up as a read that no order explains.
    fn start_sweep(&mut self) {
        self.calm.as_mut().expect("calm").sweep_started = true;
        let nodes = self.params.nodes;
        for key in 0..self.keys.len() {
            let home = self.rng.gen_range(1..=nodes);
            self.clients.push(Client {
                process: SWEEP_PROCESS_BASE + key as u64,
                home,
                state: ClientState::Idle {
                    ready_step: self.step,
                },
                sweep_key: Some(key),
                definite_left: 1,
            });
        }
        self.event(Event::Sweep {
            keys: self.keys.len(),
        });
    }

    // ----- clients ------------------------------------------------------

    fn clients_act(&mut self) -> Checked {
        for index in 0..self.clients.len() {
            let client = &self.clients[index];
            let ClientState::Idle { ready_step } = client.state else {
                continue;
            };
            if ready_step > self.step || (self.calm.is_some() && client.definite_left == 0) {
                continue;
            }
            self.issue(index)?;
        }
        Ok(())
    }

    fn choose_key(&mut self) -> usize {
        let per_range = self.params.keys_per_range as usize;
        let hot = self.params.hot_ranges as usize * per_range;
        if self.rng.gen_bool(0.5) {
            self.rng.gen_range(0..hot)
        } else {
            self.rng.gen_range(0..self.keys.len())
        }
    }

    fn new_value(&mut self) -> String {
        let value = format!("v{}", self.next_value);
        self.next_value += 1;
        value
    }

    fn choose_op(&mut self, key: usize) -> ClientOp {
        match self.rng.gen_range(0..100) {
            0..=39 => ClientOp::Read,
            40..=69 => ClientOp::Write(self.new_value()),
            70..=79 => ClientOp::Delete,
            _ => {
                let expected = if self.rng.gen_bool(0.75) {
                    self.last_seen.get(&key).cloned().flatten()
                } else {
                    None
                };
                ClientOp::Cas {
                    expected,
                    new: self.new_value(),
                }
            }
        }
    }

    fn issue(&mut self, index: usize) -> Checked {
        let up = self.up_ids();
        if up.is_empty() {
            return Ok(());
        }
        let switch = self.rng.gen_ratio(1, 20);
        let client = &mut self.clients[index];
        if switch || !up.contains(&client.home) {
            client.home = *up.choose(&mut self.rng).expect("not empty");
        }
        let (mut node, process, sweep_key) = (client.home, client.process, client.sweep_key);
        let (key, op) = match sweep_key {
            Some(key) => (key, ClientOp::Read),
            None => {
                let key = self.choose_key();
                (key, self.choose_op(key))
            }
        };
        // Ask a node that has the range, as a client's range cache would.
        let group = self.keys[key].group;
        if !self.hosts(node, group) {
            let hosting: Vec<NodeId> = up
                .iter()
                .copied()
                .filter(|&id| self.hosts(id, group))
                .collect();
            if let Some(&other) = hosting.choose(&mut self.rng) {
                node = other;
            }
        }
        let name = self.keys[key].name.clone();
        let group = self.keys[key].group;
        let pending = self.recorder.invoke(process, name.clone(), op.history_op());
        self.stats.ops += 1;
        if self.planted == Some(PlantedBug::StaleLocalReads) && op == ClientOp::Read {
            let cached = self
                .node_caches
                .get(&node)
                .and_then(|c| c.get(&key))
                .cloned();
            if let Some(value) = cached {
                // The planted bug: a node answers from what it saw last,
                // without asking the leader.
                self.recorder.complete(pending, Outcome::OkRead(value));
                self.planted_completion(index);
                return Ok(());
            }
        }
        let request = op.request(&self.keys[key].bytes);
        let core = self.core_mut(node).expect("chosen among the live nodes");
        let request_id = core.submit(group, request);
        self.event(Event::Invoke {
            process,
            node,
            group,
            key: name,
            op: op.describe(),
            request: request_id,
        });
        if self.planted == Some(PlantedBug::AckWritesEarly) && matches!(op, ClientOp::Write(_)) {
            // The planted bug: a write is acknowledged once proposed.
            self.recorder.complete(pending, Outcome::Ok);
            self.orphans.insert((node, request_id));
            self.planted_completion(index);
            return Ok(());
        }
        self.waiting.insert((node, request_id), index);
        self.clients[index].state = ClientState::Waiting(InFlight {
            node,
            request: request_id,
            key,
            op,
            pending,
            submitted_tick: self.tick,
        });
        Ok(())
    }

    /// `NodeCore` promises every request an answer within
    /// `request_timeout_ticks` (a `Timeout` at the latest). A request older
    /// than that plus [`TIMEOUT_SLACK_TICKS`] breaks the promise; with
    /// [`Options::client_deadline`] its client gives up on it instead.
    fn check_overdue(&mut self) -> Checked {
        let limit = self.params.request_timeout_ticks + TIMEOUT_SLACK_TICKS;
        let overdue: Vec<usize> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| match &c.state {
                ClientState::Waiting(op) => self.tick - op.submitted_tick > limit,
                ClientState::Idle { .. } => false,
            })
            .map(|(index, _)| index)
            .collect();
        for index in overdue {
            let ready_step = self.step;
            let state = std::mem::replace(
                &mut self.clients[index].state,
                ClientState::Idle { ready_step },
            );
            let ClientState::Waiting(op) = state else {
                continue;
            };
            if !self.client_deadline {
                return violation(
                    Property::Completion,
                    format!(
                        "node {} neither answered nor timed out request {:#x} ({} of {}, group \
                         {}) within {} ticks (request_timeout_ticks = {})",
                        op.node,
                        op.request,
                        op.op.describe(),
                        self.keys[op.key].name,
                        self.keys[op.key].group,
                        self.tick - op.submitted_tick,
                        self.params.request_timeout_ticks
                    ),
                );
            }
            self.waiting.remove(&(op.node, op.request));
            self.orphans.insert((op.node, op.request));
            self.stats.abandoned += 1;
            let process = self.clients[index].process;
            self.event(Event::Abandon {
                process,
                node: op.node,
                request: op.request,
            });
            self.recorder.complete(op.pending, Outcome::Info);
        }
        Ok(())
    }

    /// A planted bug answered the client's operation itself (ok).
    fn planted_completion(&mut self, index: usize) {
        self.stats.ok += 1;
        let ready_step = self.step + self.rng.gen_range(0..=self.params.think_steps_max);
        let client = &mut self.clients[index];
        client.state = ClientState::Idle { ready_step };
        client.definite_left = client.definite_left.saturating_sub(1);
    }

    fn complete(
        &mut self,
        node: NodeId,
        request: RequestId,
        result: Result<Response, flotilla::node::NodeError>,
    ) -> Checked {
        if self.orphans.remove(&(node, request)) {
            return Ok(());
        }
        if self.admin_waiting.remove(&(node, request)) {
            if result.is_ok() {
                self.stats.membership_changes_done += 1;
            }
            self.event(Event::MembershipDone {
                node,
                request,
                result: format!("{result:?}"),
            });
            return Ok(());
        }
        let Some(index) = self.waiting.remove(&(node, request)) else {
            return violation(
                Property::Completion,
                format!("node {node} completed request {request:#x}, which no client waits for: {result:?}"),
            );
        };
        let ready_step = self.step + self.rng.gen_range(0..=self.params.think_steps_max);
        let state = std::mem::replace(
            &mut self.clients[index].state,
            ClientState::Idle { ready_step },
        );
        let ClientState::Waiting(in_flight) = state else {
            return violation(
                Property::Completion,
                format!("request {request:#x} completed for an idle client"),
            );
        };
        let result_text = format!("{result:?}");
        let completed = match outcome_of(&in_flight.op, result) {
            Ok(completed) => completed,
            Err(detail) => {
                return violation(
                    Property::Completion,
                    format!(
                        "node {node}, request {request:#x} ({} of key {}): {detail}",
                        in_flight.op.describe(),
                        self.keys[in_flight.key].name
                    ),
                )
            }
        };
        self.learn(node, &in_flight, &completed.outcome);
        let process = self.clients[index].process;
        self.event(Event::Complete {
            process,
            node,
            request,
            outcome: format!("{} {result_text}", describe_outcome(&completed.outcome)),
        });
        match completed.outcome {
            Outcome::Ok | Outcome::OkRead(_) => self.stats.ok += 1,
            Outcome::Fail => self.stats.fail += 1,
            Outcome::Info => self.stats.info += 1,
        }
        let client = &mut self.clients[index];
        if completed.definite {
            client.definite_left = client.definite_left.saturating_sub(1);
        } else if self.rng.gen_bool(0.5) {
            // Like a client refreshing its idea of where the leader is.
            client.home = self.rng.gen_range(1..=self.params.nodes);
        }
        self.recorder.complete(in_flight.pending, completed.outcome);
        Ok(())
    }

    /// What an ok outcome tells about the key's value.
    fn learn(&mut self, node: NodeId, in_flight: &InFlight, outcome: &Outcome) {
        let value = match (outcome, &in_flight.op) {
            (Outcome::OkRead(value), _) => value.clone(),
            (Outcome::Ok, ClientOp::Write(value)) => Some(value.clone()),
            (Outcome::Ok, ClientOp::Cas { new, .. }) => Some(new.clone()),
            (Outcome::Ok, ClientOp::Delete) => None,
            _ => return,
        };
        self.last_seen.insert(in_flight.key, value.clone());
        self.node_caches
            .entry(node)
            .or_default()
            .insert(in_flight.key, value);
    }

    // ----- rounds and the network ---------------------------------------

    fn run_rounds(&mut self) -> Checked {
        for id in self.up_ids() {
            for _ in 0..ROUNDS_PER_STEP_MAX {
                let Some(core) = self.core_mut(id) else {
                    break;
                };
                let mut out = FrameBuilder::new(id);
                let result = core.round(&mut out);
                let completions = core.take_completions();
                for frame in out.finish() {
                    self.send(frame);
                }
                for (request, response) in completions {
                    self.complete(id, request, response)?;
                }
                match result {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) => {
                        self.round_failed(id, error)?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn round_failed(&mut self, id: NodeId, error: RoundError) -> Checked {
        let slot = &self.slots[&id];
        if slot.fs.is_powered_off() {
            self.stats.power_cuts += 1;
            self.crash(id, true);
            return Ok(());
        }
        violation(
            Property::Storage,
            format!("node {id}: a round failed without a simulated fault: {error}"),
        )
    }

    fn send(&mut self, frame: Frame) {
        let (from, to) = (frame.from, frame.to);
        let infos = message_infos(&frame);
        let messages = frame.messages.len();
        let beats = frame.heartbeat.as_ref().map_or(0, |h| h.groups.len());
        self.stats.frames_sent += 1;
        self.stats.snapshot_chunks += frame.snapshot_chunks.len() as u64;
        match self.net.send(&mut self.rng, self.step, frame) {
            SendFate::Lost => {
                self.stats.frames_lost += 1;
                self.event(Event::Lost {
                    from,
                    to,
                    why: "loss",
                    messages: infos,
                });
            }
            SendFate::Queued {
                delay_steps,
                duplicated,
            } => self.event(Event::Send {
                from,
                to,
                messages,
                beats,
                delay_steps,
                duplicated,
            }),
        }
    }

    fn deliver_due(&mut self) {
        let mut due = self.net.take_due(self.step);
        due.shuffle(&mut self.rng);
        for frame in due {
            let (from, to) = (frame.from, frame.to);
            if self
                .partition
                .as_ref()
                .is_some_and(|p| !p.connected(from, to))
            {
                self.stats.frames_lost += 1;
                self.event(Event::Lost {
                    from,
                    to,
                    why: "partition",
                    messages: message_infos(&frame),
                });
                continue;
            }
            let messages = message_infos(&frame);
            let Some(core) = self.core_mut(to) else {
                self.stats.frames_lost += 1;
                self.event(Event::Lost {
                    from,
                    to,
                    why: "receiver down",
                    messages,
                });
                continue;
            };
            core.receive(frame);
            self.event(Event::Deliver { from, to, messages });
        }
    }

    // ----- the history --------------------------------------------------

    fn check_history(&mut self) -> Checked {
        let events = self.recorder.events();
        let report = match history::check(&events) {
            Ok(report) => report,
            Err(malformed) => {
                return violation(
                    Property::MalformedHistory,
                    format!("the simulator recorded a malformed history: {malformed}"),
                )
            }
        };
        if report.violations().next().is_some() {
            return violation(Property::Linearizability, report.to_string());
        }
        if !report.is_linearizable() {
            return violation(Property::Undecided, report.to_string());
        }
        self.stats.keys_checked = report.keys as u64;
        Ok(())
    }
}
