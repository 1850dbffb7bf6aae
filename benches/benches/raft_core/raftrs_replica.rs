//! raft-rs 0.7's `RawNode` over its `MemStorage`, as a replica of the
//! group, driven through `Ready` and `LightReady` as its docs prescribe.

use raft::prelude::{ConfState, Entry, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

use crate::group::{Applied, Replica, VOTERS};

pub struct RaftRsReplica {
    node: RawNode<MemStorage>,
}

/// The settings flotilla's `Config::new` uses, so both do the same work:
/// pre-vote, check-quorum, 1 MiB appends, 256 appends in flight, 16 MiB of
/// committed entries per ready. `batch_append` lets proposals made between
/// two readies share one append per follower, as flotilla always does.
fn config(id: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        batch_append: true,
        max_committed_size_per_ready: 16 << 20,
        ..Config::default()
    }
}

fn apply(applied: &mut Applied, entries: &[Entry]) {
    for entry in entries {
        applied.apply(entry.index, &entry.data);
    }
}

impl Replica for RaftRsReplica {
    type Message = Message;

    fn new(id: u64) -> Self {
        let voters: Vec<u64> = (1..=VOTERS).collect();
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters, vec![])));
        // Logging is discarded so that it does not dominate the profile.
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&config(id), storage, &logger).expect("valid config");
        RaftRsReplica { node }
    }

    fn destination(message: &Message) -> u64 {
        message.to
    }

    fn campaign(&mut self) {
        self.node.campaign().expect("campaign");
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    fn propose(&mut self, data: Vec<u8>) {
        self.node
            .propose(Vec::new(), data)
            .expect("the leader accepts proposals");
    }

    fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    fn step(&mut self, message: Message) {
        self.node.step(message).expect("step");
    }

    fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    fn handle_ready(&mut self, outbox: &mut Vec<Message>, applied: &mut Applied) {
        let mut ready = self.node.ready();
        outbox.append(&mut ready.take_messages());
        assert!(ready.snapshot().is_empty(), "no snapshot is ever sent");
        {
            let mut storage = self.node.store().wl();
            storage
                .append(ready.entries())
                .expect("append to MemStorage");
            if let Some(hard_state) = ready.hs() {
                storage.set_hardstate(hard_state.clone());
            }
        }
        outbox.append(&mut ready.take_persisted_messages());
        apply(applied, ready.committed_entries());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.store().wl().mut_hard_state().commit = commit;
        }
        outbox.append(&mut light.take_messages());
        apply(applied, light.committed_entries());
        self.node.advance_apply();
    }

    fn compact(&mut self, first_kept: u64) {
        self.node
            .store()
            .wl()
            .compact(first_kept)
            .expect("compact applied entries");
    }
}
