//! A small in-memory cluster for scenario tests: messages are queued and
//! delivered by the test, every `Ready` is handled by the book (persist,
//! send, apply, advance).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use flotilla_raftgroup::{
    ConfChange, ConfState, Config, Entry, EntryKind, MemStorage, Message, NodeId, RawNode,
    ReadState, Role, NO_NODE,
};

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, RawNode<MemStorage>>,
    /// What each node persisted, kept across `crash`.
    pub queue: VecDeque<Message>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Applied data entries per node (the state machine).
    pub applied: BTreeMap<NodeId, Vec<Vec<u8>>>,
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// Every message ever sent, for counting.
    pub sent: Vec<Message>,
    /// Every hard state persisted, per node, in order.
    pub persisted_hard_states: BTreeMap<NodeId, Vec<flotilla_raftgroup::HardState>>,
    configure: fn(&mut Config),
    /// Messages for which this returns true are dropped.
    pub drop_if: Box<dyn Fn(&Message) -> bool>,
}

pub fn default_config(_: &mut Config) {}

impl Cluster {
    pub fn new(voters: &[NodeId]) -> Self {
        Self::with(voters, &[], default_config)
    }

    pub fn with(voters: &[NodeId], learners: &[NodeId], configure: fn(&mut Config)) -> Self {
        let mut conf = ConfState::with_voters(voters.iter().copied());
        conf.learners = learners.to_vec();
        conf.learners.sort_unstable();
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            sent: Vec::new(),
            persisted_hard_states: BTreeMap::new(),
            configure,
            drop_if: Box::new(|_| false),
        };
        for &id in voters.iter().chain(learners) {
            cluster.add_node(id, MemStorage::new_with_conf_state(conf.clone()));
        }
        cluster
    }

    pub fn config(&self, id: NodeId) -> Config {
        let mut config = Config::new(id);
        config.seed = id * 7919;
        (self.configure)(&mut config);
        config
    }

    pub fn add_node(&mut self, id: NodeId, storage: MemStorage) {
        let node = RawNode::new(self.config(id), storage).expect("valid node");
        self.nodes.insert(id, node);
        self.applied.entry(id).or_default();
    }

    pub fn node(&mut self, id: NodeId) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Handles every pending `Ready` of `id`.
    pub fn handle_ready(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        while node.has_ready() {
            let ready = node.ready().expect("ready");
            for m in &ready.messages {
                self.sent.push(m.clone());
                self.queue.push_back(m.clone());
            }
            if let Some(snapshot) = &ready.snapshot {
                node.storage_mut()
                    .apply_snapshot(snapshot.clone())
                    .expect("snapshot persists");
                let restored: Vec<Vec<u8>> = decode_state(&snapshot.data);
                self.applied.insert(id, restored);
            }
            node.storage_mut().append(&ready.entries).expect("append");
            if let Some(hs) = ready.hard_state {
                node.storage_mut().set_hard_state(hs);
                self.persisted_hard_states.entry(id).or_default().push(hs);
            }
            for m in &ready.persisted_messages {
                self.sent.push(m.clone());
                self.queue.push_back(m.clone());
            }
            for entry in &ready.committed_entries {
                match entry.kind {
                    EntryKind::ConfChange => {
                        let change = ConfChange::decode(&entry.data).expect("decodes");
                        let _ = node.apply_conf_change(&change);
                    }
                    EntryKind::Normal if !entry.data.is_empty() => {
                        self.applied
                            .entry(id)
                            .or_default()
                            .push(entry.data.to_vec());
                    }
                    EntryKind::Normal => {}
                }
            }
            self.reads
                .entry(id)
                .or_default()
                .extend(ready.read_states.iter().copied());
            node.advance(ready);
        }
    }

    /// Delivers one queued message, unless its link is cut or its
    /// destination is gone. Returns false when the queue is empty.
    pub fn deliver_one(&mut self) -> bool {
        let Some(m) = self.queue.pop_front() else {
            return false;
        };
        if self.cut.contains(&(m.from, m.to)) || (self.drop_if)(&m) {
            return true;
        }
        let to = m.to;
        if let Some(node) = self.nodes.get_mut(&to) {
            node.step(m).expect("step");
            self.handle_ready(to);
        }
        true
    }

    /// Handles Readies and delivers messages until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.handle_ready(id);
            }
            if !self.deliver_one() {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    pub fn tick(&mut self, id: NodeId) {
        self.node(id).tick();
        self.handle_ready(id);
    }

    /// Ticks every node `n` times, settling after each round.
    pub fn tick_all(&mut self, n: usize) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.tick(id);
            }
            self.settle();
        }
    }

    /// Makes `id` campaign and settles; returns whether it became leader.
    pub fn elect(&mut self, id: NodeId) -> bool {
        self.node(id).campaign();
        self.handle_ready(id);
        self.settle();
        self.nodes[&id].role() == Role::Leader
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.role() == Role::Leader)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) {
        self.node(id)
            .propose(data.to_vec())
            .expect("proposal accepted");
        self.handle_ready(id);
        self.settle();
    }

    /// Cuts both directions between `id` and every other node.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for other in others {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Drops a node's volatile state; what it persisted stays.
    pub fn crash(&mut self, id: NodeId) -> MemStorage {
        let node = self.nodes.remove(&id).expect("node exists");
        self.queue.retain(|m| m.to != id && m.from != id);
        node.storage().clone()
    }

    pub fn restart(&mut self, id: NodeId, storage: MemStorage) {
        // The state machine is rebuilt from the snapshot and re-applied entries.
        let snapshot = flotilla_raftgroup::LogStorage::snapshot(&storage).expect("snapshot");
        self.applied.insert(id, decode_state(&snapshot.data));
        self.add_node(id, storage);
    }

    /// The persisted log of a node (entries after its snapshot).
    pub fn log(&self, id: NodeId) -> Vec<Entry> {
        let storage = self.nodes[&id].storage();
        let first = flotilla_raftgroup::LogStorage::first_index(storage);
        let last = flotilla_raftgroup::LogStorage::last_index(storage);
        flotilla_raftgroup::LogStorage::entries(storage, first, last + 1, u64::MAX)
            .expect("entries")
    }

    pub fn count_sent(&self, f: impl Fn(&Message) -> bool) -> usize {
        self.sent.iter().filter(|m| f(m)).count()
    }

    pub fn leader_of(&self, id: NodeId) -> NodeId {
        self.nodes.get(&id).map_or(NO_NODE, |n| n.leader())
    }
}

/// State machine snapshots: a length-prefixed list of applied payloads.
pub fn encode_state(applied: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in applied {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

pub fn decode_state(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        out.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    out
}

/// Builds a log of entries with the given terms, starting at index 1.
pub fn entries_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &term)| Entry {
            term,
            index: i as u64 + 1,
            kind: EntryKind::Normal,
            data: format!("t{term}i{}", i + 1).into_bytes().into(),
        })
        .collect()
}
