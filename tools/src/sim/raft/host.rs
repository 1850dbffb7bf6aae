//! One simulated node as its host process sees it: a running `RawNode` with
//! its volatile state, or the durable storage a crash left behind.

use flotilla_raftgroup::{MemStorage, RawNode, Ready};

use super::state_machine::StateMachine;

/// A `Ready` whose persistence is still running. Its `messages` are already
/// on the wire; the `RawNode` may not be touched until it completes.
#[derive(Debug)]
pub struct Busy {
    pub ready: Ready,
    pub done_at: u64,
}

/// A running node.
#[derive(Debug)]
pub struct Host {
    /// Owns the node's storage. The host writes to it only in the persist
    /// step of a `Ready`, so at any moment it holds exactly what is durable.
    pub raw: RawNode<MemStorage>,
    /// Volatile: rebuilt from the storage's snapshot on restart.
    pub sm: StateMachine,
    pub busy: Option<Busy>,
    /// Ticks that arrived while busy, delivered once the `Ready` completes so
    /// the node's clock keeps pace with everyone else's.
    pub owed_ticks: u64,
    /// The commit index last seen in this incarnation.
    pub last_commit: u64,
    /// The persisted log has been compared with the oracle up to here.
    pub checked_commit: u64,
}

/// What is left of a node.
#[derive(Debug)]
pub enum NodeState {
    Live(Box<Host>),
    Crashed {
        storage: MemStorage,
        restart_at: u64,
    },
    /// Removed from the group and garbage-collected by its host.
    Destroyed,
}

/// A node id's slot in the world, across crashes.
#[derive(Debug)]
pub struct Slot {
    pub state: NodeState,
    pub incarnation: u64,
    /// The highest commit index this node ever persisted.
    pub persisted_commit: u64,
}

impl Slot {
    pub fn host(&self) -> Option<&Host> {
        match &self.state {
            NodeState::Live(host) => Some(host),
            _ => None,
        }
    }

    pub fn host_mut(&mut self) -> Option<&mut Host> {
        match &mut self.state {
            NodeState::Live(host) => Some(host),
            _ => None,
        }
    }

    /// Running and free to take input.
    pub fn idle_host(&self) -> Option<&Host> {
        self.host().filter(|host| host.busy.is_none())
    }
}
