//! Client and host operations: proposals, reads, membership changes,
//! leadership transfers, snapshots with compaction, and quiescence.
//!
//! # Removing the leader
//!
//! Membership changes take effect when applied. When the leader removes
//! itself, it applies the change that leaves the joint configuration before
//! the other voters learn that it committed; until they do, they still count
//! the old leader in the outgoing half and need its vote. raftgroup covers
//! this twice: the removed leader hands leadership to the most up-to-date
//! voter, and every vote answer carries the voter's commit point, so even if
//! the old leader crashes and restarts as a non-voter, the candidates learn
//! from its answers that the change committed. Half of the time the
//! simulated host removes the leader directly, to exercise exactly that; the
//! other half it does what a placement driver does and transfers leadership
//! away first.

use flotilla_raftgroup::{ConfChange, ConfChangeKind, ConfChangeSingle, LogStorage, NodeId, Role};
use rand::seq::SliceRandom;
use rand::Rng;

use super::host::Slot;
use super::oracle::{violation, Checked, Property};
use super::params::{LEARNERS_MAX, VOTERS_MAX};
use super::state_machine::write_payload;
use super::trace::Event;
use super::world::{ReadRecord, World, NODE_IDS_MAX};
use super::PlantedBug;

/// Picks a node that does not exist yet.
const NEW_NODE: NodeId = 0;
/// Clients stop proposing while the leader holds more uncommitted entries
/// than this, so that the work left when faults stop stays bounded.
const BACKLOG_ENTRIES_MAX: u64 = 64;

impl World {
    fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.gen_ratio(per_mille.min(1000), 1000)
    }

    pub fn client_ops(&mut self) -> Checked {
        let ops = self.params.ops;
        if self.chance(ops.read_per_mille) {
            self.op_read()?;
        }
        if self.chance(ops.compact_per_mille) {
            self.op_compact()?;
        }
        if self.calm.is_some() {
            return Ok(());
        }
        for _ in 0..3 {
            if self.chance(ops.propose_per_mille) {
                self.op_propose()?;
            }
        }
        if self.chance(ops.conf_change_per_mille) {
            self.op_conf_change()?;
        }
        if self.chance(ops.transfer_per_mille) {
            self.op_transfer()?;
        }
        if self.chance(ops.quiesce_per_mille) {
            self.op_quiesce()?;
        }
        Ok(())
    }

    fn pick_idle(&mut self) -> Option<NodeId> {
        self.idle_ids().choose(&mut self.rng).copied()
    }

    /// How many entries the leader that a proposal at `id` would reach
    /// holds uncommitted, if that is known.
    fn backlog_entries(&self, id: NodeId) -> u64 {
        let Some(host) = self.slots.get(&id).and_then(Slot::idle_host) else {
            return 0;
        };
        let leader = match host.raw.role() {
            Role::Leader => host,
            _ => match self.slots.get(&host.raw.leader()).and_then(Slot::idle_host) {
                Some(leader) => leader,
                None => return 0,
            },
        };
        leader
            .raw
            .last_index()
            .saturating_sub(leader.raw.committed())
    }

    fn op_propose(&mut self) -> Checked {
        let Some(id) = self.pick_idle() else {
            return Ok(());
        };
        if self.backlog_entries(id) > BACKLOG_ENTRIES_MAX {
            // Clients have a bounded number of writes outstanding.
            return Ok(());
        }
        let ops = self.params.ops;
        let count = self.rng.gen_range(1..=ops.batch_max);
        let first = self.next_write;
        self.next_write += count;
        let payloads = (first..first + count)
            .map(|write| write_payload(write, self.rng.gen_range(0..=ops.payload_pad_bytes_max)))
            .collect();
        let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
            return Ok(());
        };
        let result = host.raw.propose_batch(payloads);
        self.event(Event::Propose {
            node: id,
            writes: (first, first + count - 1),
            result,
        });
        self.drain(id)?;
        self.after_event(id)
    }

    fn op_read(&mut self) -> Checked {
        let Some(id) = self.pick_idle() else {
            return Ok(());
        };
        let request = self.next_read;
        self.next_read += 1;
        let floor = self.oracle.read_floor();
        self.reads.insert(
            request,
            ReadRecord {
                node: id,
                floor,
                served: false,
            },
        );
        let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
            return Ok(());
        };
        if self.planted == Some(PlantedBug::StaleFollowerReads) && host.raw.role() != Role::Leader {
            let applied = host.sm.applied;
            self.event(Event::ReadServed {
                node: id,
                request,
                index: applied,
                applied,
            });
            return self.check_read(id, request, applied, applied);
        }
        let result = host.raw.read_index(request);
        self.event(Event::ReadRequest {
            node: id,
            request,
            floor,
            result,
        });
        self.drain(id)?;
        self.after_event(id)
    }

    /// A membership change at the leader: one node added, promoted, demoted
    /// or removed, through a joint configuration left automatically.
    fn op_conf_change(&mut self) -> Checked {
        let Some(leader) = self.idle_leader() else {
            return Ok(());
        };
        let Some(host) = self.slots.get(&leader).and_then(Slot::host) else {
            return Ok(());
        };
        let conf = host.raw.conf_state().clone();
        if conf.is_joint() {
            return Ok(());
        }
        let mut options: Vec<(ConfChangeKind, NodeId)> = Vec::new();
        let room_for_new = self.next_node <= NODE_IDS_MAX;
        if conf.voters.len() < VOTERS_MAX {
            if room_for_new {
                options.push((ConfChangeKind::AddVoter, NEW_NODE));
            }
            options.extend(
                conf.learners
                    .iter()
                    .map(|&id| (ConfChangeKind::AddVoter, id)),
            );
        }
        if conf.learners.len() < LEARNERS_MAX {
            if room_for_new {
                options.push((ConfChangeKind::AddLearner, NEW_NODE));
            }
            if conf.voters.len() > 1 {
                options.extend(
                    conf.voters
                        .iter()
                        .map(|&id| (ConfChangeKind::AddLearner, id)),
                );
            }
        }
        if conf.voters.len() > 1 {
            options.extend(conf.voters.iter().map(|&id| (ConfChangeKind::Remove, id)));
        }
        options.extend(conf.learners.iter().map(|&id| (ConfChangeKind::Remove, id)));
        let Some(&(kind, mut target)) = options.choose(&mut self.rng) else {
            return Ok(());
        };
        if target == leader && kind != ConfChangeKind::AddVoter && self.rng.gen_bool(0.5) {
            // Like a placement driver, move leadership away before removing
            // or demoting the leader (see "Removing the leader" above).
            return self.transfer_away(leader, &conf.voters);
        }
        if target == NEW_NODE {
            target = self.next_node;
            self.next_node += 1;
            self.create_node(target)?;
        }
        let change = ConfChange {
            changes: vec![ConfChangeSingle { kind, node: target }],
            auto_leave: true,
        };
        let Some(host) = self.slots.get_mut(&leader).and_then(Slot::host_mut) else {
            return Ok(());
        };
        let result = host.raw.propose_conf_change(&change);
        self.event(Event::ConfChange {
            leader,
            kind,
            target,
            result,
        });
        self.drain(leader)?;
        self.after_event(leader)
    }

    fn transfer_away(&mut self, leader: NodeId, voters: &[NodeId]) -> Checked {
        let others: Vec<NodeId> = voters.iter().copied().filter(|&v| v != leader).collect();
        let Some(&target) = others.choose(&mut self.rng) else {
            return Ok(());
        };
        let Some(host) = self.slots.get_mut(&leader).and_then(Slot::host_mut) else {
            return Ok(());
        };
        let result = host.raw.transfer_leader(target);
        self.event(Event::Transfer {
            node: leader,
            target,
            result,
        });
        self.drain(leader)?;
        self.after_event(leader)
    }

    fn op_transfer(&mut self) -> Checked {
        let Some(id) = self.pick_idle() else {
            return Ok(());
        };
        let Some(host) = self.slots.get(&id).and_then(Slot::host) else {
            return Ok(());
        };
        let voters = host.raw.conf_state().voters.clone();
        let Some(&target) = voters.choose(&mut self.rng) else {
            return Ok(());
        };
        let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
            return Ok(());
        };
        let result = host.raw.transfer_leader(target);
        self.event(Event::Transfer {
            node: id,
            target,
            result,
        });
        self.drain(id)?;
        self.after_event(id)
    }

    /// The host snapshots its state machine at the applied index and
    /// compacts the log up to it.
    fn op_compact(&mut self) -> Checked {
        let Some(id) = self.pick_idle() else {
            return Ok(());
        };
        let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
            return Ok(());
        };
        let applied = host.sm.applied;
        if applied < host.raw.storage().first_index() {
            return Ok(());
        }
        let data = host.sm.encode();
        let conf = host.sm.conf.clone();
        host.raw
            .storage_mut()
            .create_snapshot(applied, conf, data)
            .map_err(|error| {
                violation(
                    Property::ReadyContract,
                    format!("node {id}: snapshot at applied {applied} refused: {error}"),
                )
            })?;
        self.stats.compactions += 1;
        self.event(Event::Compact {
            node: id,
            index: applied,
        });
        self.after_event(id)
    }

    fn op_quiesce(&mut self) -> Checked {
        let Some(leader) = self.idle_leader() else {
            return Ok(());
        };
        let Some(host) = self.slots.get_mut(&leader).and_then(Slot::host_mut) else {
            return Ok(());
        };
        if !host.raw.can_quiesce() || !host.raw.quiesce() {
            return Ok(());
        }
        self.event(Event::Quiesce { node: leader });
        self.drain(leader)?;
        self.after_event(leader)
    }
}
