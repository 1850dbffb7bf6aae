//! Faults and the host's reactions to them: crashes that lose whatever was
//! not yet persisted, restarts from durable storage, partitions that heal,
//! the node-level liveness layer that wakes followers of an unreachable
//! leader, and the garbage collection of removed nodes.

use std::collections::BTreeMap;

use flotilla_raftgroup::{ConfState, LogStorage, MemStorage, NodeId, RawNode};
use rand::seq::SliceRandom;
use rand::Rng;

use super::host::{Host, NodeState, Slot};
use super::network::Partition;
use super::oracle::{violation, Checked, Property};
use super::state_machine::StateMachine;
use super::trace::Event;
use super::world::World;

/// Election timeouts a follower waits for an unreachable leader before its
/// host declares the leader's node dead. Longer than a lease, so a leader
/// cut off with a valid lease has lost it by then.
const LEADER_DEAD_ELECTION_TIMEOUTS: u64 = 2;
/// A quick reboot brings a node back within this many ticks.
const QUICK_REBOOT_TICKS_MAX: u64 = 3;

fn mentions(conf: &ConfState, id: NodeId) -> bool {
    conf.voters
        .iter()
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners)
        .chain(&conf.learners_next)
        .any(|&member| member == id)
}

impl World {
    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.gen_ratio(per_mille.min(1000), 1000)
    }

    pub fn inject_faults(&mut self) -> Checked {
        let faults = self.params.faults;
        match self.partition.as_ref().map(|partition| partition.heal_at) {
            Some(heal_at) if self.now >= heal_at => {
                self.partition = None;
                self.event(Event::Heal);
            }
            None if self.roll(faults.partition_per_mille) => self.partition_nodes(),
            _ => {}
        }
        if self.roll(faults.crash_per_mille) {
            self.crash_random();
        }
        Ok(())
    }

    fn partition_nodes(&mut self) {
        let ids: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, slot)| !matches!(slot.state, NodeState::Destroyed))
            .map(|(id, _)| *id)
            .collect();
        let sides = if self.rng.gen_ratio(1, 4) { 3 } else { 2 };
        let sides = ids
            .into_iter()
            .map(|id| (id, self.rng.gen_range(0..sides)))
            .collect();
        let election = self.params.election_ticks;
        let heal_at = self.now + self.rng.gen_range(election..=5 * election);
        let partition = Partition { sides, heal_at };
        self.stats.partitions += 1;
        self.event(Event::Partition(partition.groups()));
        self.partition = Some(partition);
    }

    /// Crashes a random running node, half the time one that is in the
    /// middle of persisting a `Ready` if there is one.
    fn crash_random(&mut self) {
        let live = self.live_ids();
        let busy: Vec<NodeId> = live
            .iter()
            .copied()
            .filter(|&id| self.is_busy(id))
            .collect();
        let pool = if !busy.is_empty() && self.rng.gen_bool(0.5) {
            busy
        } else {
            live
        };
        // Half the crashes are quick reboots, within the election that may
        // be running; the others last up to a few election timeouts.
        let down_ticks_max = if self.rng.gen_bool(0.5) {
            QUICK_REBOOT_TICKS_MAX
        } else {
            3 * self.params.election_ticks
        };
        if let Some(&id) = pool.choose(&mut self.rng) {
            self.crash(id, down_ticks_max);
        }
    }

    /// Crashes the nodes that asked for it during the last event, for a
    /// quick reboot.
    pub fn crash_now_those_due(&mut self) {
        for id in std::mem::take(&mut self.crash_soon) {
            self.crash(id, QUICK_REBOOT_TICKS_MAX);
        }
    }

    /// Drops the node's `RawNode` and volatile state; its storage keeps
    /// exactly what was persisted. It restarts within `down_ticks_max`.
    pub fn crash(&mut self, id: NodeId, down_ticks_max: u64) {
        let restart_at = self.now + self.rng.gen_range(1..=down_ticks_max);
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.host().is_none() {
            return;
        }
        let NodeState::Live(host) = std::mem::replace(&mut slot.state, NodeState::Destroyed) else {
            return;
        };
        let lost_ready = host.busy.is_some();
        slot.state = NodeState::Crashed {
            storage: host.raw.storage().clone(),
            restart_at,
        };
        self.stats.crashes += 1;
        self.event(Event::Crash {
            node: id,
            lost_ready,
        });
    }

    pub fn restart_due(&mut self) -> Checked {
        let due: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, slot)| {
                matches!(slot.state, NodeState::Crashed { restart_at, .. } if restart_at <= self.now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.restart(id)?;
        }
        Ok(())
    }

    pub fn restart(&mut self, id: NodeId) -> Checked {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Ok(());
        };
        let NodeState::Crashed { storage, .. } =
            std::mem::replace(&mut slot.state, NodeState::Destroyed)
        else {
            return Ok(());
        };
        slot.incarnation += 1;
        self.start_host(id, storage)
    }

    /// Starts a node over `storage`: the state machine comes from the
    /// storage's snapshot and Raft hands out the committed entries after it.
    pub fn start_host(&mut self, id: NodeId, storage: MemStorage) -> Checked {
        let contract = |detail: String| violation(Property::ReadyContract, detail);
        let snapshot = storage
            .snapshot()
            .map_err(|error| contract(format!("node {id}: no snapshot: {error}")))?;
        let sm = StateMachine::restore(&snapshot)
            .map_err(|error| contract(format!("node {id}: {error}")))?;
        self.oracle
            .check_committed_point(id, snapshot.meta.index, snapshot.meta.term)?;
        self.oracle.check_state(id, &sm)?;
        let Some(slot) = self.slots.get_mut(&id) else {
            return Ok(());
        };
        let config = self
            .params
            .node_config(self.seed, id, slot.incarnation, snapshot.meta.index);
        let raw = RawNode::new(config, storage)
            .map_err(|error| contract(format!("node {id}: RawNode::new failed: {error}")))?;
        if raw.committed() < slot.persisted_commit {
            return Err(violation(
                Property::DurableStateMonotonic,
                format!(
                    "node {id} restarts with commit {} below the {} it persisted",
                    raw.committed(),
                    slot.persisted_commit
                ),
            ));
        }
        let event = Event::Restart {
            node: id,
            incarnation: slot.incarnation,
            term: raw.term(),
            commit: raw.committed(),
            first_index: raw.first_index(),
            last_index: raw.last_index(),
        };
        slot.state = NodeState::Live(Box::new(Host {
            last_commit: raw.committed(),
            checked_commit: snapshot.meta.index,
            raw,
            sm,
            busy: None,
            owed_ticks: 0,
        }));
        self.event(event);
        self.drain(id)?;
        self.after_event(id)
    }

    /// Creates a node that is about to be added to the group. It starts
    /// from the bootstrap configuration, like every node, so that replaying
    /// the log from index 1 rebuilds the same configurations.
    pub fn create_node(&mut self, id: NodeId) -> Checked {
        self.slots.insert(
            id,
            Slot {
                state: NodeState::Destroyed,
                incarnation: 0,
                persisted_commit: 0,
            },
        );
        self.event(Event::Create { node: id });
        self.start_host(
            id,
            MemStorage::new_with_conf_state(self.bootstrap_conf.clone()),
        )
    }

    /// The host side of node-level liveness: a follower whose leader has
    /// been down or cut off for a while is told so, and campaigns (a
    /// quiesced follower would otherwise wait forever).
    pub fn liveness_layer(&mut self) -> Checked {
        let threshold = LEADER_DEAD_ELECTION_TIMEOUTS * self.params.election_ticks;
        let mut cut_since = BTreeMap::new();
        let mut declare = Vec::new();
        for id in self.idle_ids() {
            let Some(host) = self.slots.get(&id).and_then(Slot::host) else {
                continue;
            };
            let leader = host.raw.leader();
            if leader == 0 || leader == id || self.reachable(id, leader) {
                continue;
            }
            let since = self
                .cut_since
                .get(&(id, leader))
                .copied()
                .unwrap_or(self.now);
            if self.now - since >= threshold {
                declare.push((id, leader));
            } else {
                cut_since.insert((id, leader), since);
            }
        }
        self.cut_since = cut_since;
        for (id, leader) in declare {
            let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
                continue;
            };
            host.raw.leader_unreachable();
            self.event(Event::LeaderUnreachable { node: id, leader });
            self.drain(id)?;
            self.after_event(id)?;
        }
        Ok(())
    }

    fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        let up = self.slots.get(&to).and_then(Slot::host).is_some();
        up && self
            .partition
            .as_ref()
            .is_none_or(|p| p.connected(from, to))
    }

    /// Destroys nodes that were removed from the group, once every member
    /// runs with a configuration that no longer mentions them (until then a
    /// member may still need them to form a quorum).
    pub fn collect_removed(&mut self) {
        let conf = self.oracle.current_conf();
        if conf.is_joint() {
            return;
        }
        let members: Vec<NodeId> = conf.voters.iter().chain(&conf.learners).copied().collect();
        let doomed: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(id, slot)| {
                !matches!(slot.state, NodeState::Destroyed)
                    && !members.contains(id)
                    && self.oracle.was_member(**id)
            })
            .map(|(id, _)| *id)
            .filter(|&id| {
                members.iter().all(|member| {
                    self.slots
                        .get(member)
                        .and_then(Slot::host)
                        .is_some_and(|host| !mentions(&host.sm.conf, id))
                })
            })
            .collect();
        for id in doomed {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.state = NodeState::Destroyed;
                self.event(Event::Destroy { node: id });
            }
        }
    }
}
