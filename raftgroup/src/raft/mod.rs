//! The Raft state machine of one replica. Each role's step function lives in
//! its own file: `election.rs` (pre-candidate and candidate), `leader.rs`,
//! `follower.rs`; `read.rs` holds ReadIndex and leases, `membership.rs`
//! configuration changes and leadership transfer, `quiesce.rs` quiescence.

mod election;
mod follower;
mod leader;
mod membership;
mod quiesce;
mod read;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::RaftLog;
use crate::rng::SplitMix64;
use crate::storage::LogStorage;
use crate::tracker::ProgressTracker;
use crate::types::{HardState, Message, MessageBody, NodeId, ReadState, Role, SoftState, NO_NODE};

pub(crate) use read::ReadQueue;

/// Why a campaign starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CampaignKind {
    /// A pre-vote round that does not change the term.
    PreElection,
    /// A real election in the next term.
    Election,
    /// A real election ordered by the leader (`TimeoutNow`); it overrides
    /// the voters' leader leases.
    Transfer,
}

pub(crate) struct Raft<S> {
    pub(crate) id: NodeId,
    /// Invariant: never decreases; persisted (with `vote`) before any
    /// message that depends on it is sent.
    pub(crate) term: u64,
    pub(crate) vote: NodeId,
    pub(crate) lead: NodeId,
    pub(crate) role: Role,
    pub(crate) log: RaftLog<S>,
    pub(crate) tracker: ProgressTracker,
    pub(crate) cfg: Config,

    /// Messages that may leave before the current `Ready` is persisted: the
    /// leader's appends, heartbeats, snapshots and read confirmations.
    pub(crate) msgs: Vec<Message>,
    /// Messages that may leave only after the `Ready` is persisted: votes,
    /// append responses and everything a non-leader sends.
    pub(crate) msgs_after_persist: Vec<Message>,

    /// Logical clock: ticks seen while awake. Leases are measured on it.
    pub(crate) ticks: u64,
    /// Leader: ticks since the last check-quorum (and transfer start).
    /// Others: ticks since the leader was last heard from.
    pub(crate) election_elapsed: u64,
    pub(crate) heartbeat_elapsed: u64,
    /// Drawn from `[election_ticks, 2 * election_ticks)` at every reset.
    pub(crate) randomized_election_timeout: u64,
    rng: SplitMix64,

    /// Leader: the transfer target, or `NO_NODE`.
    pub(crate) lead_transferee: NodeId,
    /// Leader: index of the last membership change proposed; no other may
    /// be proposed until it is applied.
    pub(crate) pending_conf_index: u64,
    /// Leader: bytes proposed and not yet committed.
    pub(crate) uncommitted_bytes: u64,
    /// Leader: appends must go out at the next `Ready` (new proposals or a
    /// new commit index), so that many proposals share one message.
    pub(crate) broadcast_pending: bool,
    pub(crate) reads: ReadQueue,
    /// Reads confirmed but waiting for apply to reach their index.
    pub(crate) reads_awaiting_apply: Vec<ReadState>,
    /// Whether this replica stopped ticking (see `quiesce.rs`).
    pub(crate) quiesced: bool,
    /// With lease reads, a replica that just started may have acknowledged a
    /// leader's lease before it went down, and has forgotten it: it acts as
    /// if in that lease for one election timeout after starting.
    restart_lease: bool,
}

impl<S: LogStorage> Raft<S> {
    pub(crate) fn new(cfg: Config, storage: S) -> Result<Self> {
        cfg.validate()?;
        let initial = storage.initial_state()?;
        let log = RaftLog::new(storage, initial.hard_state.commit, cfg.applied)?;
        let mut tracker = ProgressTracker::new(cfg.max_inflight_msgs, cfg.max_inflight_bytes);
        tracker.set_conf(initial.conf_state, log.last_index() + 1);
        let mut raft = Raft {
            id: cfg.id,
            term: initial.hard_state.term,
            vote: initial.hard_state.vote,
            lead: NO_NODE,
            role: Role::Follower,
            log,
            tracker,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            ticks: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_ticks,
            rng: SplitMix64::new(cfg.seed ^ cfg.id.rotate_left(32)),
            lead_transferee: NO_NODE,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            broadcast_pending: false,
            reads: ReadQueue::default(),
            reads_awaiting_apply: Vec::new(),
            quiesced: false,
            // A replica that never saw a term (a new group) held no lease.
            restart_lease: cfg.read_mode == crate::config::ReadMode::Lease
                && initial.hard_state.term > 0,
            cfg,
        };
        let term = raft.term;
        raft.become_follower(term, NO_NODE);
        Ok(raft)
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.lead,
            role: self.role,
        }
    }

    /// Whether this replica may become leader: it is a voter and is not
    /// waiting for a snapshot to be persisted.
    pub(crate) fn promotable(&self) -> bool {
        self.tracker.is_voter(self.id) && self.log.unstable_snapshot().is_none()
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log
            .term(self.log.committed)
            .is_ok_and(|t| t == self.term)
    }

    /// Queues a message. Leader-only kinds may leave before persistence;
    /// everything else waits for it (see the `Ready` contract).
    pub(crate) fn send(&mut self, to: NodeId, term: u64, body: MessageBody) {
        debug_assert_ne!(to, self.id, "a replica never messages itself");
        let early = matches!(
            body,
            MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
                | MessageBody::ReadIndexResponse { .. }
        );
        let message = Message {
            from: self.id,
            to,
            term,
            body,
        };
        if early {
            self.msgs.push(message);
        } else {
            self.msgs_after_persist.push(message);
        }
    }

    /// A random number in `[0, bound)` from this replica's seeded generator.
    pub(crate) fn random_below(&mut self, bound: u64) -> u64 {
        self.rng.in_range(0, bound.max(1))
    }

    fn reset_randomized_election_timeout(&mut self) {
        let low = self.cfg.election_ticks;
        self.randomized_election_timeout = self.rng.in_range(low, 2 * low);
    }

    /// Clears per-term state when the term or the role changes.
    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = NO_NODE;
        }
        self.lead = NO_NODE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.lead_transferee = NO_NODE;
        self.tracker.reset_votes();
        let next = self.log.last_index() + 1;
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
        let stable = self.log.stable_index();
        let id = self.id;
        for (member, progress) in self.tracker.iter_mut() {
            *progress = crate::tracker::Progress::new(next, max_msgs, max_bytes);
            if member == id {
                progress.matched = stable;
            }
        }
        self.pending_conf_index = 0;
        self.uncommitted_bytes = 0;
        self.broadcast_pending = false;
        self.reads.clear();
        self.quiesced = false;
    }

    pub(crate) fn become_follower(&mut self, term: u64, lead: NodeId) {
        self.reset(term);
        self.lead = lead;
        self.role = Role::Follower;
    }

    pub(crate) fn tick(&mut self) {
        if self.quiesced {
            return;
        }
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(CampaignKind::PreElection);
        }
    }

    /// Whether this replica believes a leader is active and so refuses to
    /// help elect another (the leader lease of check-quorum, thesis §4.2.3).
    /// A leader always does: it gives up leadership through check-quorum. A
    /// quiesced follower never does: the leader gave up its lease when it
    /// quiesced, so no read depends on this follower's promise.
    fn in_lease(&self, candidate: NodeId) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        if self.restart_lease && self.ticks < self.cfg.election_ticks {
            return true;
        }
        match self.role {
            Role::Leader => true,
            _ => {
                !self.quiesced
                    && self.lead != NO_NODE
                    && self.lead != candidate
                    && self.election_elapsed < self.cfg.election_ticks
            }
        }
    }

    /// Handles a message from a peer (Raft paper, Figure 2, "Rules for
    /// Servers": a higher term always wins, a lower term is stale).
    pub(crate) fn step(&mut self, m: Message) -> Result<()> {
        if m.from == self.id || m.from == NO_NODE {
            return Ok(());
        }
        let forwarded = matches!(
            m.body,
            MessageBody::Propose { .. }
                | MessageBody::ReadIndex { .. }
                | MessageBody::TransferLeader { .. }
        );
        if (m.term == 0) != forwarded {
            // Only forwarded requests are term-free; anything else without a
            // term (or a forwarded request with one) is malformed.
            return Ok(());
        }
        let lease = self.in_lease(m.from);
        if self.quiesced {
            let from_leader = m.from == self.lead
                && m.term == self.term
                && matches!(m.body, MessageBody::Heartbeat { quiesce: true, .. });
            if !from_leader {
                self.wake();
            }
        }
        if m.term > self.term && m.term != 0 {
            match &m.body {
                MessageBody::RequestVote {
                    pre_vote, transfer, ..
                } => {
                    if lease && !transfer {
                        return Ok(());
                    }
                    if !pre_vote {
                        self.become_follower(m.term, NO_NODE);
                    }
                }
                MessageBody::VoteResponse {
                    pre_vote: true,
                    reject: false,
                    ..
                } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NO_NODE),
            }
        } else if m.term < self.term && m.term != 0 {
            self.step_stale(m);
            return Ok(());
        }
        match m.body {
            MessageBody::RequestVote { .. } => {
                self.handle_vote_request(m);
                return Ok(());
            }
            MessageBody::VoteResponse {
                commit,
                commit_term,
                ..
            } if self.role != Role::Leader => self.learn_commit(commit, commit_term),
            _ => {}
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::PreCandidate | Role::Candidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
        Ok(())
    }

    /// A message from an older term. A stale leader's append gets an answer
    /// so that it learns the new term and steps down; a stale pre-vote gets a
    /// rejection so the pre-candidate does not wait forever.
    fn step_stale(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                if self.cfg.check_quorum || self.cfg.pre_vote =>
            {
                let body = MessageBody::AppendResponse {
                    index: 0,
                    reject: true,
                    hint_index: 0,
                    hint_term: 0,
                };
                self.send(m.from, self.term, body);
            }
            MessageBody::RequestVote { pre_vote: true, .. } => {
                let body = self.vote_response(true, true);
                self.send(m.from, self.term, body);
            }
            _ => {}
        }
    }

    /// Proposes application data. On the leader the entry is appended and
    /// replicated at the next `Ready`; a follower forwards it.
    pub(crate) fn propose(&mut self, entries: Vec<crate::types::Entry>) -> Result<Proposed> {
        if entries.is_empty() {
            return Err(Error::ProposalDropped("empty proposal"));
        }
        match self.role {
            Role::Leader => self.append_proposal(entries),
            Role::Follower if self.lead != NO_NODE => {
                if !self.cfg.forward_proposals {
                    return Err(Error::NotLeader {
                        leader: Some(self.lead),
                    });
                }
                let lead = self.lead;
                self.send(lead, 0, MessageBody::Propose { entries });
                Ok(Proposed::Forwarded { to: lead })
            }
            _ => Err(Error::NoLeader),
        }
    }
}

/// What happened to a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposed {
    /// Appended to the leader's log at these indexes in this term; it is
    /// committed when an entry at `last_index` with `term` is applied.
    Appended {
        first_index: u64,
        last_index: u64,
        term: u64,
    },
    /// Sent to the leader; its fate shows only when applied.
    Forwarded { to: NodeId },
}
