//! Linearizable reads without log writes (Raft thesis §6.4).
//!
//! ReadIndex: the leader records its commit index when a read arrives and
//! serves the read once a quorum acknowledged a heartbeat round started after
//! that; every read that arrived before the round shares it. Lease: with
//! check-quorum, a quorum that acknowledged a round sent at tick `t` will not
//! elect another leader before `t + election_ticks`, so until then (less a
//! drift margin) the leader answers at once. Either way the read is released
//! to the host only once it has applied the read's index.

use std::collections::VecDeque;

use super::Raft;
use crate::config::ReadMode;
use crate::error::{Error, Result};
use crate::storage::LogStorage;
use crate::types::{MessageBody, NodeId, ReadState, Role, NO_NODE};

/// How many recent heartbeat rounds remember when they were sent (for the
/// lease). Older rounds are too old to give a lease anyway.
const ROUNDS_REMEMBERED_MAX: usize = 64;

#[derive(Debug)]
struct PendingRead {
    from: NodeId,
    request: u64,
    index: u64,
    /// The heartbeat round whose acknowledgement confirms this read.
    round: u64,
}

/// The leader's reads waiting for confirmation.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    /// The last heartbeat round started; never decreases.
    round: u64,
    /// (round, tick it was sent at), oldest first.
    round_ticks: VecDeque<(u64, u64)>,
    waiting: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its term:
    /// until then its commit index may be stale.
    held_for_commit: Vec<(NodeId, u64)>,
    /// A read waits for a round that has not started yet.
    round_wanted: bool,
}

impl ReadQueue {
    /// Starts heartbeat round `round + 1`. Its send tick is remembered only
    /// when leases are in use (`tick` is `Some`): it is what a lease is
    /// measured from, and nothing else needs it.
    pub(crate) fn start_round(&mut self, tick: Option<u64>) -> u64 {
        self.round += 1;
        if let Some(tick) = tick {
            self.round_ticks.push_back((self.round, tick));
            if self.round_ticks.len() > ROUNDS_REMEMBERED_MAX {
                self.round_ticks.pop_front();
            }
        }
        self.round_wanted = false;
        self.round
    }

    /// Gives back the memory of an idle group's queues (only what is
    /// empty: nothing waiting is ever dropped).
    pub(crate) fn shrink(&mut self) {
        if self.waiting.is_empty() {
            self.waiting = VecDeque::new();
        }
        if self.held_for_commit.is_empty() {
            self.held_for_commit = Vec::new();
        }
        self.round_ticks.shrink_to_fit();
    }

    pub(crate) fn clear(&mut self) {
        self.round_ticks.clear();
        self.waiting.clear();
        self.held_for_commit.clear();
        self.round_wanted = false;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.held_for_commit.is_empty()
    }

    pub(crate) fn round_wanted(&self) -> bool {
        self.round_wanted
    }

    fn tick_of(&self, round: u64) -> Option<u64> {
        self.round_ticks
            .iter()
            .find(|(r, _)| *r == round)
            .map(|(_, tick)| *tick)
    }
}

impl<S: LogStorage> Raft<S> {
    /// Requests a linearizable read identified by `request`.
    pub(crate) fn read_index(&mut self, request: u64) -> Result<()> {
        match self.role {
            Role::Leader => {
                self.wake();
                self.request_read(self.id, request);
                Ok(())
            }
            Role::Follower if self.lead != NO_NODE => {
                if !self.cfg.forward_proposals {
                    return Err(Error::NotLeader {
                        leader: Some(self.lead),
                    });
                }
                let lead = self.lead;
                self.send(lead, 0, MessageBody::ReadIndex { request });
                Ok(())
            }
            _ => Err(Error::NoLeader),
        }
    }

    pub(crate) fn request_read(&mut self, from: NodeId, request: u64) {
        if !self.committed_in_current_term() {
            self.reads.held_for_commit.push((from, request));
            return;
        }
        let index = self.log.committed;
        if self.tracker.is_singleton(self.id) || self.lease_valid() {
            self.deliver_read(from, request, index);
            return;
        }
        let round = self.reads.round + 1;
        self.reads.waiting.push_back(PendingRead {
            from,
            request,
            index,
            round,
        });
        self.reads.round_wanted = true;
    }

    fn deliver_read(&mut self, from: NodeId, request: u64, index: u64) {
        if from == self.id {
            self.reads_awaiting_apply.push(ReadState { request, index });
        } else {
            self.send(
                from,
                self.term,
                MessageBody::ReadIndexResponse { request, index },
            );
        }
    }

    /// A heartbeat response arrived: release every read whose round a
    /// quorum has now acknowledged.
    pub(crate) fn on_round_acked(&mut self) {
        if self.reads.waiting.is_empty() {
            return;
        }
        let acked = self.tracker.acked_round();
        while self.reads.waiting.front().is_some_and(|r| r.round <= acked) {
            if let Some(read) = self.reads.waiting.pop_front() {
                self.deliver_read(read.from, read.request, read.index);
            }
        }
    }

    pub(crate) fn release_reads_held_for_commit(&mut self) {
        let held = std::mem::take(&mut self.reads.held_for_commit);
        for (from, request) in held {
            self.request_read(from, request);
        }
    }

    /// Whether the leader may answer reads on its lease right now.
    pub(crate) fn lease_valid(&mut self) -> bool {
        if self.cfg.read_mode != ReadMode::Lease
            || self.role != Role::Leader
            || self.quiesced
            || self.lead_transferee != NO_NODE
        {
            return false;
        }
        let acked = self.tracker.acked_round();
        let Some(sent_at) = self.reads.tick_of(acked) else {
            return false;
        };
        let lease_ticks = self.cfg.election_ticks - self.cfg.lease_margin_ticks;
        self.ticks < sent_at + lease_ticks
    }

    /// Starts the heartbeat round that pending reads wait for.
    pub(crate) fn flush_read_round(&mut self) {
        if self.role == Role::Leader && self.reads.round_wanted() {
            self.broadcast_heartbeat(false);
        }
    }
}
