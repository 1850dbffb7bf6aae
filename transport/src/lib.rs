//! flotilla-transport moves frames between flotilla nodes.
//!
//! A [`Frame`] carries everything one node sends another in one round: the
//! Raft messages of all its groups for that destination, at most one
//! coalesced [`Heartbeat`] (node liveness plus the term and commit index of
//! every awake group the two nodes share), and opaque payloads (forwarded
//! client requests and their replies), so that per-round cost is one frame
//! per destination node whatever the number of groups. Frames derive
//! `rkyv::Archive`: the QUIC transport sends them as length-prefixed,
//! validated archives.
//!
//! [`Transport`] is the seam the node runtime sends through. This crate has
//! the in-process implementation, [`local::LocalNetwork`], with fault
//! injection (drops, delays, partitions) for multi-node tests in one
//! process; the QUIC implementation is a later issue.

pub mod local;

use flotilla_raftgroup::{Message, MessageBody};
use rkyv::{Archive, Deserialize, Serialize};

/// A node of the cluster.
pub type NodeId = u64;
/// A Raft group (one per range).
pub type GroupId = u64;

/// One Raft message of one group.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupMessage {
    pub group: GroupId,
    pub message: Message,
}

/// One awake group's Raft heartbeat, coalesced: the leader's term and the
/// commit index it tells this follower, the heartbeat round (which confirms
/// reads and leases), and whether the group is quiescing. 40 bytes instead
/// of a whole Raft message.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupBeat {
    pub group: GroupId,
    pub term: u64,
    pub commit: u64,
    pub round: u64,
    pub quiesce: bool,
}

/// A follower's answer to a [`GroupBeat`], coalesced the same way.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GroupBeatAck {
    pub group: GroupId,
    pub term: u64,
    pub round: u64,
}

/// The liveness beat of a node pair: at most one per frame, and a node sends
/// one to every peer every tick. `groups` carries the Raft heartbeats of the
/// sender's awake groups for the receiver, `acks` the answers to the
/// receiver's; quiesced groups add nothing, so an idle node pair exchanges
/// one small frame per tick whatever the number of groups.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Heartbeat {
    /// The sender's tick counter: a receiver that sees it advance knows the
    /// sender's node is alive.
    pub tick: u64,
    pub groups: Vec<GroupBeat>,
    pub acks: Vec<GroupBeatAck>,
}

/// One chunk of a range snapshot a leader streams to a replica that needs
/// it. The chunk bytes are self-describing and checksummed (the engine's
/// snapshot chunk format: snapshot index and term, sequence number, crc);
/// `term` is the sending leader's term, which the receiver hands to Raft
/// with the assembled snapshot.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SnapshotChunk {
    pub group: GroupId,
    pub term: u64,
    pub chunk: Vec<u8>,
}

/// Everything one node sends another in one round.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Frame {
    pub from: NodeId,
    pub to: NodeId,
    pub messages: Vec<GroupMessage>,
    pub heartbeat: Option<Heartbeat>,
    /// Opaque to the transport: forwarded requests and replies.
    pub payloads: Vec<Vec<u8>>,
    /// Snapshot chunks, in sending order (a transfer spans several rounds,
    /// a bounded number of chunks per round).
    pub snapshot_chunks: Vec<SnapshotChunk>,
}

impl Frame {
    /// An empty frame from `from` to `to`.
    pub fn new(from: NodeId, to: NodeId) -> Self {
        Frame {
            from,
            to,
            messages: Vec::new(),
            heartbeat: None,
            payloads: Vec::new(),
            snapshot_chunks: Vec::new(),
        }
    }

    /// Whether the frame carries nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.heartbeat.is_none()
            && self.payloads.is_empty()
            && self.snapshot_chunks.is_empty()
    }

    /// The Raft messages the frame carries, with coalesced heartbeats and
    /// their answers expanded back into messages.
    pub fn into_messages(self) -> Vec<GroupMessage> {
        let (from, to) = (self.from, self.to);
        let mut messages = self.messages;
        if let Some(heartbeat) = self.heartbeat {
            messages.extend(heartbeat.groups.into_iter().map(|beat| GroupMessage {
                group: beat.group,
                message: Message {
                    from,
                    to,
                    term: beat.term,
                    body: MessageBody::Heartbeat {
                        commit: beat.commit,
                        round: beat.round,
                        quiesce: beat.quiesce,
                    },
                },
            }));
            messages.extend(heartbeat.acks.into_iter().map(|ack| GroupMessage {
                group: ack.group,
                message: Message {
                    from,
                    to,
                    term: ack.term,
                    body: MessageBody::HeartbeatResponse { round: ack.round },
                },
            }));
        }
        messages
    }
}

/// Why a frame could not be handed to the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The destination is not known to this transport.
    #[error("node {0} is unknown to the transport")]
    UnknownNode(NodeId),
    /// The destination's queue is full; Raft tolerates the loss, callers
    /// waiting for replies time out.
    #[error("the queue to node {0} is full")]
    QueueFull(NodeId),
    /// The transport was shut down.
    #[error("the transport is shut down")]
    Shutdown,
}

/// Sends frames to other nodes. Delivery is best effort: a frame may be
/// lost, delayed or reordered relative to frames to other nodes (frames to
/// one destination stay in order unless a fault injector reorders them).
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// This node's id.
    fn local_node(&self) -> NodeId;
    /// Queues `frame` for `frame.to`.
    fn send(&self, frame: Frame) -> Result<(), TransportError>;
}

/// Groups a round's outgoing Raft messages by destination node, so that the
/// round sends one frame per node.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    from: NodeId,
    frames: std::collections::BTreeMap<NodeId, Frame>,
}

impl FrameBuilder {
    /// A builder for frames sent by `from`.
    pub fn new(from: NodeId) -> Self {
        FrameBuilder {
            from,
            frames: std::collections::BTreeMap::new(),
        }
    }

    fn frame(&mut self, to: NodeId) -> &mut Frame {
        let from = self.from;
        self.frames
            .entry(to)
            .or_insert_with(|| Frame::new(from, to))
    }

    /// Adds a Raft message of `group` for node `to`. Heartbeats and their
    /// answers are coalesced into the frame's [`Heartbeat`].
    pub fn push_message(&mut self, to: NodeId, group: GroupId, message: Message) {
        let from = self.from;
        let frame = self.frame(to);
        if message.from == from && message.to == to {
            match message.body {
                MessageBody::Heartbeat {
                    commit,
                    round,
                    quiesce,
                } => {
                    let beat = GroupBeat {
                        group,
                        term: message.term,
                        commit,
                        round,
                        quiesce,
                    };
                    frame
                        .heartbeat
                        .get_or_insert_with(Heartbeat::default)
                        .groups
                        .push(beat);
                    return;
                }
                MessageBody::HeartbeatResponse { round } => {
                    let ack = GroupBeatAck {
                        group,
                        term: message.term,
                        round,
                    };
                    frame
                        .heartbeat
                        .get_or_insert_with(Heartbeat::default)
                        .acks
                        .push(ack);
                    return;
                }
                _ => {}
            }
        }
        frame.messages.push(GroupMessage { group, message });
    }

    /// Makes sure the frame to `to` carries a liveness beat stamped `tick`.
    pub fn liveness(&mut self, to: NodeId, tick: u64) {
        self.frame(to)
            .heartbeat
            .get_or_insert_with(Heartbeat::default)
            .tick = tick;
    }

    /// Replaces the coalesced heartbeat for node `to`.
    pub fn set_heartbeat(&mut self, to: NodeId, heartbeat: Heartbeat) {
        self.frame(to).heartbeat = Some(heartbeat);
    }

    /// Adds an opaque payload for node `to`.
    pub fn push_payload(&mut self, to: NodeId, payload: Vec<u8>) {
        self.frame(to).payloads.push(payload);
    }

    /// Adds a snapshot chunk for node `to`.
    pub fn push_snapshot_chunk(&mut self, to: NodeId, chunk: SnapshotChunk) {
        self.frame(to).snapshot_chunks.push(chunk);
    }

    /// The frames, one per destination.
    pub fn finish(self) -> impl Iterator<Item = Frame> {
        self.frames.into_values().filter(|f| !f.is_empty())
    }
}
