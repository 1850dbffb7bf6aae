//! What the leader knows about one follower's log, and how it sends to it.

use super::inflights::Inflights;

/// How the leader is sending to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's match is unknown: one append at a time until one
    /// succeeds.
    Probe,
    /// The follower is known to match; appends stream optimistically up to
    /// the inflight limits.
    Replicate,
    /// A snapshot is on its way; nothing else is sent until it is reported.
    Snapshot,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated on the follower.
    pub(crate) matched: u64,
    /// Next index to send. Invariant: `matched < next`.
    pub(crate) next: u64,
    pub(crate) state: ProgressState,
    /// Index of the snapshot in flight, in `Snapshot` state.
    pub(crate) pending_snapshot: u64,
    /// In `Probe` state: an append is outstanding, wait for its answer (or
    /// the next heartbeat response) before sending another.
    pub(crate) probe_sent: bool,
    /// Heard from since the last check-quorum.
    pub(crate) recent_active: bool,
    /// The highest heartbeat round the follower acknowledged.
    pub(crate) acked_round: u64,
    pub(crate) inflights: Inflights,
}

impl Progress {
    pub(crate) fn new(next: u64, max_inflight_msgs: usize, max_inflight_bytes: u64) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            probe_sent: false,
            recent_active: false,
            acked_round: 0,
            inflights: Inflights::new(max_inflight_msgs, max_inflight_bytes),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub(crate) fn become_probe(&mut self) {
        let after_snapshot = self.pending_snapshot + 1;
        let was_snapshot = self.state == ProgressState::Snapshot;
        self.reset_state(ProgressState::Probe);
        self.next = if was_snapshot {
            (self.matched + 1).max(after_snapshot)
        } else {
            self.matched + 1
        };
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub(crate) fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// Records a successful append up to `index`; false if it was stale.
    pub(crate) fn maybe_update(&mut self, index: u64) -> bool {
        let updated = self.matched < index;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// Records that entries up to `last` were just sent (replicate state).
    pub(crate) fn sent_entries(&mut self, last: u64, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                self.next = last + 1;
                self.inflights.add(last, bytes);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }

    /// Handles a rejected append of `rejected` (the message's prev index)
    /// with the follower's hint. Returns false when the rejection is stale.
    pub(crate) fn maybe_decrease_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot => true,
        }
    }
}
