//! flotilla's `RawNode` over its `MemStorage`, as a replica of the group.

use flotilla_raftgroup::{ConfState, Config, LogStorage, MemStorage, Message, RawNode, Role};

use crate::group::{Applied, Replica, VOTERS};

pub struct FlotillaReplica {
    node: RawNode<MemStorage>,
}

impl Replica for FlotillaReplica {
    type Message = Message;

    fn new(id: u64) -> Self {
        let storage = MemStorage::new_with_conf_state(ConfState::with_voters(1..=VOTERS));
        let node = RawNode::new(Config::new(id), storage).expect("valid config");
        FlotillaReplica { node }
    }

    fn destination(message: &Message) -> u64 {
        message.to
    }

    fn campaign(&mut self) {
        self.node.campaign();
    }

    fn is_leader(&self) -> bool {
        self.node.role() == Role::Leader
    }

    fn propose(&mut self, data: Vec<u8>) {
        self.node
            .propose(data)
            .expect("the leader accepts proposals");
    }

    fn last_index(&self) -> u64 {
        self.node.last_index()
    }

    fn step(&mut self, message: Message) {
        self.node.step(message).expect("step");
    }

    fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    fn handle_ready(&mut self, outbox: &mut Vec<Message>, applied: &mut Applied) {
        let mut ready = self.node.ready().expect("ready");
        outbox.append(&mut ready.messages);
        assert!(ready.snapshot.is_none(), "no snapshot is ever sent");
        let storage = self.node.storage_mut();
        storage
            .append(&ready.entries)
            .expect("append to MemStorage");
        if let Some(hard_state) = ready.hard_state {
            storage.set_hard_state(hard_state);
        }
        outbox.append(&mut ready.persisted_messages);
        for entry in &ready.committed_entries {
            applied.apply(entry.index, &entry.data);
        }
        self.node.advance(ready);
    }

    fn compact(&mut self, first_kept: u64) {
        let conf_state = self.node.conf_state().clone();
        let storage = self.node.storage_mut();
        if first_kept > storage.first_index() {
            storage
                .create_snapshot(first_kept - 1, conf_state, Vec::new())
                .expect("compact applied entries");
        }
    }
}
