//! The host loop of one node, following the contract on
//! [`flotilla_raftgroup::Ready`]: send `messages`; persist snapshot, entries
//! and hard state (sometimes taking a few ticks, during which a crash loses
//! them); send `persisted_messages`; apply; serve reads; `advance`. And the
//! network side: sending, delivering and snapshot reports.

use flotilla_raftgroup::{
    ConfChange, EntryKind, LogStorage, Message, MessageBody, NodeId, ReadState, Ready, Role,
};
use rand::seq::SliceRandom;
use rand::Rng;

use super::host::{Busy, Slot};
use super::network::SendFate;
use super::oracle::{violation, Checked, Property, Violation};
use super::state_machine::StateMachine;
use super::trace::{Event, MsgInfo};
use super::world::{HostReport, ReportKind, World};
use super::PlantedBug;

/// A node whose `Ready`s never run out within this many rounds is stuck.
/// A restart may replay a long log one entry per `Ready` when
/// `max_committed_bytes_per_ready` is small, hence the headroom.
const READY_ROUNDS_MAX: usize = 100_000;
/// Delivery passes per tick; messages still due after them wait a tick.
const DELIVERY_PASSES_MAX: usize = 64;

fn contract(detail: String) -> Violation {
    violation(Property::ReadyContract, detail)
}

impl World {
    /// Handles `Ready`s of `id` until it has none or is busy persisting.
    pub fn drain(&mut self, id: NodeId) -> Checked {
        for _ in 0..READY_ROUNDS_MAX {
            let Some(host) = self.slots.get(&id).and_then(Slot::idle_host) else {
                return Ok(());
            };
            if !host.raw.has_ready() {
                return Ok(());
            }
            self.handle_ready(id)?;
        }
        Err(contract(format!(
            "node {id} still has a Ready after {READY_ROUNDS_MAX} rounds"
        )))
    }

    fn handle_ready(&mut self, id: NodeId) -> Checked {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Ok(());
        };
        let incarnation = slot.incarnation;
        let Some(host) = slot.host_mut() else {
            return Ok(());
        };
        let mut ready = host
            .raw
            .ready()
            .map_err(|error| contract(format!("node {id}: ready() failed: {error}")))?;
        let term = host.raw.term();
        if let Some(soft) = ready.soft_state {
            self.event(Event::Role {
                node: id,
                term,
                role: soft.role,
                leader: soft.leader,
            });
            if soft.role == Role::Leader {
                self.oracle.observe_leader(term, id)?;
            }
        }
        for message in std::mem::take(&mut ready.messages) {
            self.send(message, incarnation)?;
        }
        let writes =
            ready.snapshot.is_some() || !ready.entries.is_empty() || ready.hard_state.is_some();
        let slow = self.params.faults.slow_persist_per_mille;
        if writes && self.calm.is_none() && slow > 0 && self.rng.gen_ratio(slow, 1000) {
            let done_at = self.now + self.rng.gen_range(1..=self.params.faults.persist_ticks_max);
            self.event(Event::PersistDeferred { node: id, done_at });
            if let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) {
                host.busy = Some(Busy { ready, done_at });
            }
            return Ok(());
        }
        self.finish_ready(id, ready)
    }

    /// Steps 2 to 6 of the contract.
    pub fn finish_ready(&mut self, id: NodeId, mut ready: Ready) -> Checked {
        let incarnation = self.slots.get(&id).map_or(0, |slot| slot.incarnation);
        self.persist(id, &ready)?;
        for message in std::mem::take(&mut ready.persisted_messages) {
            self.send(message, incarnation)?;
        }
        self.apply(id, &ready)?;
        self.serve_reads(id, &ready.read_states)?;
        let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
            return Ok(());
        };
        host.raw.advance(ready);
        if host.sm.applied != host.raw.applied() {
            return Err(contract(format!(
                "node {id}: the state machine applied {} but the RawNode says {}",
                host.sm.applied,
                host.raw.applied()
            )));
        }
        Ok(())
    }

    fn persist(&mut self, id: NodeId, ready: &Ready) -> Checked {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Ok(());
        };
        let Some(host) = slot.host_mut() else {
            return Ok(());
        };
        let storage_error = |error| contract(format!("node {id}: storage refused: {error}"));
        let before = host.raw.storage().hard_state();
        if let Some(snapshot) = &ready.snapshot {
            self.oracle.check_snapshot(id, snapshot)?;
            host.raw
                .storage_mut()
                .apply_snapshot(snapshot.clone())
                .map_err(storage_error)?;
        }
        if let Some(first) = ready.entries.first() {
            if first.index <= before.commit {
                return Err(violation(
                    Property::CommittedNeverChanges,
                    format!(
                        "node {id} overwrites its log from index {} but persisted commit {}",
                        first.index, before.commit
                    ),
                ));
            }
            let prev_term = host
                .raw
                .storage()
                .term(first.index - 1)
                .map_err(storage_error)?;
            self.oracle
                .observe_entries(first.index - 1, prev_term, &ready.entries)?;
            host.raw
                .storage_mut()
                .append(&ready.entries)
                .map_err(storage_error)?;
        }
        if let Some(mut hard_state) = ready.hard_state {
            let stored = host.raw.storage().hard_state();
            check_hard_state(id, stored, hard_state)?;
            let last_index = host.raw.storage().last_index();
            if hard_state.commit > last_index {
                return Err(contract(format!(
                    "node {id} persists commit {} beyond its persisted log ({last_index})",
                    hard_state.commit
                )));
            }
            let voted = hard_state.vote != 0 && hard_state.vote != stored.vote;
            if self.planted == Some(PlantedBug::ForgetVote) {
                hard_state.vote = 0;
            }
            host.raw.storage_mut().set_hard_state(hard_state);
            slot.persisted_commit = slot.persisted_commit.max(hard_state.commit);
            let crash_per_mille = self.params.faults.crash_after_vote_per_mille;
            if voted
                && self.calm.is_none()
                && crash_per_mille > 0
                && self.rng.gen_ratio(crash_per_mille, 1000)
            {
                self.crash_soon.push(id);
            }
        }
        if ready.snapshot.is_some() || !ready.entries.is_empty() || ready.hard_state.is_some() {
            self.event(Event::Persist {
                node: id,
                snapshot: ready.snapshot.as_ref().map(|s| s.meta.index),
                entries: ready
                    .entries
                    .first()
                    .zip(ready.entries.last())
                    .map(|(first, last)| (first.index, last.index)),
                hard_state: ready.hard_state,
            });
        }
        Ok(())
    }

    fn apply(&mut self, id: NodeId, ready: &Ready) -> Checked {
        let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
            return Ok(());
        };
        if let Some(snapshot) = &ready.snapshot {
            host.sm = StateMachine::restore(snapshot)
                .map_err(|error| contract(format!("node {id}: {error}")))?;
            self.oracle.check_state(id, &host.sm)?;
            self.stats.snapshots_installed += 1;
        }
        let term = host.raw.term();
        let mut conf_events = Vec::new();
        for entry in &ready.committed_entries {
            self.oracle.observe_committed(id, term, entry)?;
            if entry.index != host.sm.applied + 1 {
                return Err(contract(format!(
                    "node {id} got committed entry {} to apply after {}",
                    entry.index, host.sm.applied
                )));
            }
            host.sm.apply(entry);
            if entry.kind == EntryKind::ConfChange {
                let applied = ConfChange::decode(&entry.data)
                    .and_then(|change| host.raw.apply_conf_change(&change));
                if let Ok(conf) = applied {
                    conf_events.push(Event::ConfApplied {
                        node: id,
                        index: entry.index,
                        voters: conf.voters.clone(),
                        outgoing: conf.voters_outgoing.clone(),
                        learners: conf.learners.clone(),
                    });
                    host.sm.conf = conf;
                }
            }
            self.oracle.check_state(id, &host.sm)?;
        }
        let entries = ready
            .committed_entries
            .first()
            .zip(ready.committed_entries.last())
            .map(|(first, last)| (first.index, last.index));
        if ready.snapshot.is_some() || entries.is_some() {
            self.event(Event::Apply {
                node: id,
                snapshot: ready.snapshot.as_ref().map(|s| s.meta.index),
                entries,
            });
        }
        for event in conf_events {
            self.event(event);
        }
        Ok(())
    }

    fn serve_reads(&mut self, id: NodeId, read_states: &[ReadState]) -> Checked {
        let Some(host) = self.slots.get(&id).and_then(Slot::host) else {
            return Ok(());
        };
        let applied = host.sm.applied;
        for read in read_states {
            self.event(Event::ReadServed {
                node: id,
                request: read.request,
                index: read.index,
                applied,
            });
            self.check_read(id, read.request, read.index, applied)?;
        }
        Ok(())
    }

    /// A read served at `id` from a state machine at `applied`, released
    /// by Raft at `index`.
    pub fn check_read(&mut self, id: NodeId, request: u64, index: u64, applied: u64) -> Checked {
        if index > applied {
            return Err(violation(
                Property::LinearizableRead,
                format!(
                    "node {id} released read {request} at {index} before applying it ({applied})"
                ),
            ));
        }
        let Some(record) = self.reads.get_mut(&request) else {
            return Err(contract(format!("node {id} served unknown read {request}")));
        };
        if index < record.floor {
            return Err(violation(
                Property::LinearizableRead,
                format!(
                    "read {request} (asked at node {}) confirmed at index {index}, but {} was \
                     committed before it was asked",
                    record.node, record.floor
                ),
            ));
        }
        if !record.served {
            record.served = true;
            self.stats.reads_served += 1;
        }
        Ok(())
    }

    /// Hands a message to the network.
    pub fn send(&mut self, message: Message, incarnation: u64) -> Checked {
        self.oracle.observe_message(&message)?;
        let info = MsgInfo::of(&message);
        let fate = self.net.send(
            &mut self.rng,
            &self.params.net,
            self.now,
            message,
            incarnation,
        );
        match fate {
            SendFate::Dropped(message) => {
                self.stats.dropped += 1;
                self.event(Event::Drop {
                    msg: info,
                    why: "lost",
                });
                self.report_if_snapshot(&message, incarnation, false);
            }
            SendFate::Queued {
                delay_ticks,
                duplicated,
            } => self.event(Event::Send {
                msg: info,
                delay_ticks,
                duplicated,
            }),
        }
        Ok(())
    }

    fn report_if_snapshot(&mut self, message: &Message, incarnation: u64, delivered: bool) {
        if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
            self.reports.push(HostReport {
                sender: message.from,
                incarnation,
                to: message.to,
                kind: ReportKind::Snapshot { delivered },
            });
        }
    }

    /// The transport could not deliver an append: the receiver is down or
    /// cut off (a random loss goes unnoticed, as on a real network).
    fn report_if_append(&mut self, message: &Message, incarnation: u64) {
        if matches!(message.body, MessageBody::Append { .. }) {
            self.reports.push(HostReport {
                sender: message.from,
                incarnation,
                to: message.to,
                kind: ReportKind::Unreachable,
            });
        }
    }

    /// Delivers every due message, in random order, including the ones the
    /// deliveries themselves send within this tick.
    pub fn deliver_due(&mut self) -> Checked {
        for _ in 0..DELIVERY_PASSES_MAX {
            self.process_reports()?;
            let mut due = self.net.take_due(self.now);
            if due.is_empty() {
                return Ok(());
            }
            due.shuffle(&mut self.rng);
            let mut delivered_any = false;
            for envelope in due {
                if self.is_busy(envelope.msg.to) {
                    self.net.requeue(envelope);
                    continue;
                }
                delivered_any = true;
                self.deliver(envelope.msg, envelope.sender_incarnation)?;
                self.crash_now_those_due();
            }
            if !delivered_any {
                return Ok(());
            }
        }
        Ok(())
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.partition.as_ref().is_none_or(|p| p.connected(a, b))
    }

    fn deliver(&mut self, message: Message, incarnation: u64) -> Checked {
        let info = MsgInfo::of(&message);
        let (from, to) = (message.from, message.to);
        let why = if !self.connected(from, to) {
            Some("partition")
        } else if self.slots.get(&to).and_then(Slot::host).is_none() {
            Some("receiver down")
        } else {
            None
        };
        if let Some(why) = why {
            self.stats.dropped += 1;
            self.event(Event::Drop { msg: info, why });
            self.report_if_snapshot(&message, incarnation, false);
            self.report_if_append(&message, incarnation);
            return Ok(());
        }
        self.event(Event::Deliver(info));
        self.stats.delivered += 1;
        self.report_if_snapshot(&message, incarnation, true);
        let Some(host) = self.slots.get_mut(&to).and_then(Slot::host_mut) else {
            return Ok(());
        };
        host.raw
            .step(message)
            .map_err(|error| contract(format!("node {to}: step failed: {error}")))?;
        self.drain(to)?;
        self.after_event(to)
    }

    /// Tells senders what became of their messages, once they are free to
    /// hear it.
    fn process_reports(&mut self) -> Checked {
        let mut waiting = Vec::new();
        for report in std::mem::take(&mut self.reports) {
            let Some(slot) = self.slots.get_mut(&report.sender) else {
                continue;
            };
            if slot.incarnation != report.incarnation {
                continue;
            }
            let Some(host) = slot.host_mut() else {
                continue;
            };
            if host.busy.is_some() {
                waiting.push(report);
                continue;
            }
            match report.kind {
                ReportKind::Snapshot { delivered } => {
                    host.raw.report_snapshot(report.to, delivered);
                }
                ReportKind::Unreachable => host.raw.report_unreachable(report.to),
            }
            self.event(Event::Report {
                sender: report.sender,
                to: report.to,
                kind: report.kind,
            });
            self.drain(report.sender)?;
            self.after_event(report.sender)?;
        }
        self.reports.extend(waiting);
        Ok(())
    }

    /// Completes persistence that is due, then gives the node the ticks it
    /// missed meanwhile.
    pub fn finish_due_persists(&mut self) -> Checked {
        for id in self.live_ids() {
            let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
                continue;
            };
            if host
                .busy
                .as_ref()
                .is_none_or(|busy| busy.done_at > self.now)
            {
                continue;
            }
            let Some(busy) = host.busy.take() else {
                continue;
            };
            self.finish_ready(id, busy.ready)?;
            self.drain(id)?;
            self.pay_owed_ticks(id)?;
            self.after_event(id)?;
        }
        Ok(())
    }

    fn pay_owed_ticks(&mut self, id: NodeId) -> Checked {
        loop {
            let Some(host) = self.slots.get_mut(&id).and_then(Slot::host_mut) else {
                return Ok(());
            };
            if host.busy.is_some() || host.owed_ticks == 0 {
                return Ok(());
            }
            host.owed_ticks -= 1;
            host.raw.tick();
            self.drain(id)?;
        }
    }
}

fn check_hard_state(
    id: NodeId,
    stored: flotilla_raftgroup::HardState,
    next: flotilla_raftgroup::HardState,
) -> Checked {
    let regress = next.term < stored.term
        || next.commit < stored.commit
        || (next.term == stored.term && stored.vote != 0 && next.vote != stored.vote);
    if regress {
        return Err(violation(
            Property::DurableStateMonotonic,
            format!("node {id} persists {next:?} over {stored:?}"),
        ));
    }
    Ok(())
}
