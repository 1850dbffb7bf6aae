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
//! [`Transport`] is the seam the node runtime sends through. It has two
//! implementations:
//!
//! - [`quic::QuicTransport`], between processes: QUIC (quinn) with mutual
//!   TLS against the cluster's CA, one connection per node pair, Raft
//!   traffic and snapshot chunks on separate streams, bounded per-peer
//!   queues and reconnects with backoff. [`tls`] makes the CA and the node
//!   and client certificates and binds a node id to each certificate;
//!   [`quic::QuicClient`] lets a program with a client certificate call a
//!   node.
//! - [`local::LocalNetwork`], in one process, with fault injection (drops,
//!   delays, partitions) for multi-node tests.

pub mod local;
pub mod quic;
pub mod tls;

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

/// A member's answer to a message from a node that is not a member of the
/// group: as of the committed entry `index` (of term `term`), which the
/// sender has applied, the receiver's replica belongs to no configuration
/// of the group. A replica removed while it was cut off never applies its
/// own removal and would campaign forever; this notice lets it destroy
/// itself (the engine decides whether the notice still holds for it).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RemovedNotice {
    pub group: GroupId,
    pub index: u64,
    pub term: u64,
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
    /// Replica garbage collection notices, for groups whose configuration
    /// no longer includes the receiver.
    pub removed_notices: Vec<RemovedNotice>,
    /// Groups whose replica on the sender asks whether it is still a
    /// member: sent by a replica that has heard from no leader for a while
    /// or that saw its own removal. A voter whose configuration excludes
    /// the sender answers with a [`RemovedNotice`]; a member needs no
    /// answer (its leader will reach it).
    pub replica_probes: Vec<GroupId>,
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
            removed_notices: Vec::new(),
            replica_probes: Vec::new(),
        }
    }

    /// Whether the frame carries nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.heartbeat.is_none()
            && self.payloads.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.removed_notices.is_empty()
            && self.replica_probes.is_empty()
    }

    /// Whether the frame carries nothing but a liveness beat: no Raft
    /// message, no coalesced group heartbeat or answer, no payload, no
    /// snapshot chunk, no notice or probe. Such a frame only tells the receiver that
    /// the sender is alive.
    pub fn is_liveness_only(&self) -> bool {
        self.messages.is_empty()
            && self.payloads.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.removed_notices.is_empty()
            && self.replica_probes.is_empty()
            && self
                .heartbeat
                .as_ref()
                .is_some_and(|h| h.groups.is_empty() && h.acks.is_empty())
    }

    /// Splits the frame into `parts` frames, one per owner of its groups,
    /// for a node whose groups are divided among several workers: every
    /// Raft message, snapshot chunk, removal notice, probe and every coalesced
    /// [`GroupBeat`] and [`GroupBeatAck`] goes to part
    /// `owner(group) % parts`. If the frame carries a
    /// [`Heartbeat`], every part gets one with the same `tick` (the liveness
    /// of the sender concerns every worker, each tracking its peers itself);
    /// the opaque payloads go to part 0. Contents are moved, never cloned.
    ///
    /// The result has exactly `parts` entries, indexed by part; `None` where
    /// the frame has nothing for that part. `parts == 0` yields no parts.
    pub fn split_by(
        self,
        parts: usize,
        mut owner: impl FnMut(GroupId) -> usize,
    ) -> Vec<Option<Frame>> {
        if parts <= 1 {
            return if parts == 1 && !self.is_empty() {
                vec![Some(self)]
            } else {
                vec![None; parts]
            };
        }
        let Frame {
            from,
            to,
            messages,
            heartbeat,
            payloads,
            snapshot_chunks,
            removed_notices,
            replica_probes,
        } = self;
        let mut split: Vec<Frame> = (0..parts).map(|_| Frame::new(from, to)).collect();
        for message in messages {
            split[owner(message.group) % parts].messages.push(message);
        }
        for chunk in snapshot_chunks {
            split[owner(chunk.group) % parts]
                .snapshot_chunks
                .push(chunk);
        }
        for notice in removed_notices {
            split[owner(notice.group) % parts]
                .removed_notices
                .push(notice);
        }
        for group in replica_probes {
            split[owner(group) % parts].replica_probes.push(group);
        }
        if let Some(heartbeat) = heartbeat {
            for part in &mut split {
                part.heartbeat = Some(Heartbeat {
                    tick: heartbeat.tick,
                    groups: Vec::new(),
                    acks: Vec::new(),
                });
            }
            for beat in heartbeat.groups {
                if let Some(h) = &mut split[owner(beat.group) % parts].heartbeat {
                    h.groups.push(beat);
                }
            }
            for ack in heartbeat.acks {
                if let Some(h) = &mut split[owner(ack.group) % parts].heartbeat {
                    h.acks.push(ack);
                }
            }
        }
        split[0].payloads = payloads;
        split
            .into_iter()
            .map(|part| (!part.is_empty()).then_some(part))
            .collect()
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

    /// Adds a replica garbage collection notice for node `to`.
    pub fn push_removed_notice(&mut self, to: NodeId, notice: RemovedNotice) {
        self.frame(to).removed_notices.push(notice);
    }

    /// Asks node `to` whether this node's replica of `group` is still a
    /// member.
    pub fn push_replica_probe(&mut self, to: NodeId, group: GroupId) {
        self.frame(to).replica_probes.push(group);
    }

    /// The frames, one per destination.
    pub fn finish(self) -> impl Iterator<Item = Frame> {
        self.frames.into_values().filter(|f| !f.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(group: GroupId, index: u64) -> GroupMessage {
        GroupMessage {
            group,
            message: Message {
                from: 1,
                to: 2,
                term: 3,
                body: MessageBody::Append {
                    prev_index: index,
                    prev_term: 3,
                    entries: Vec::new(),
                    commit: index,
                },
            },
        }
    }

    /// A frame from node 1 to node 2 with two messages per group of
    /// `groups`, a beat for every group and an answer for every other one.
    fn busy_frame(groups: std::ops::Range<GroupId>, tick: u64) -> Frame {
        let mut frame = Frame::new(1, 2);
        let mut heartbeat = Heartbeat {
            tick,
            ..Heartbeat::default()
        };
        for group in groups {
            frame.messages.push(append(group, 10));
            frame.messages.push(append(group, 11));
            heartbeat.groups.push(GroupBeat {
                group,
                term: 3,
                commit: group,
                round: 7,
                quiesce: false,
            });
            if group % 2 == 0 {
                heartbeat.acks.push(GroupBeatAck {
                    group,
                    term: 3,
                    round: 8,
                });
            }
        }
        frame.heartbeat = Some(heartbeat);
        frame.payloads.push(b"forwarded".to_vec());
        frame
    }

    #[test]
    fn chunks_notices_and_probes_go_to_their_owners_and_are_never_liveness_only() {
        let parts = 3;
        let mut frame = Frame::new(1, 2);
        frame.heartbeat = Some(Heartbeat {
            tick: 4,
            ..Heartbeat::default()
        });
        for group in 1..20 {
            frame.snapshot_chunks.push(SnapshotChunk {
                group,
                term: 2,
                chunk: vec![group as u8; 3],
            });
            frame.removed_notices.push(RemovedNotice {
                group,
                index: group * 10,
                term: 2,
            });
            frame.replica_probes.push(group);
        }
        assert!(!frame.is_liveness_only(), "chunks are not a bare beat");
        for (index, part) in frame.split_by(parts, owner).into_iter().enumerate() {
            let part = part.unwrap_or_else(|| panic!("part {index} is missing"));
            for chunk in &part.snapshot_chunks {
                assert_eq!(owner(chunk.group) % parts, index);
            }
            for notice in &part.removed_notices {
                assert_eq!(owner(notice.group) % parts, index);
                assert_eq!(notice.index, notice.group * 10);
            }
            for &group in &part.replica_probes {
                assert_eq!(owner(group) % parts, index);
            }
            assert_eq!(
                (part.snapshot_chunks.len(), part.removed_notices.len()),
                (part.replica_probes.len(), part.replica_probes.len()),
                "part {index}"
            );
        }
        let mut notice_only = Frame::new(1, 2);
        notice_only.removed_notices.push(RemovedNotice {
            group: 1,
            index: 1,
            term: 1,
        });
        assert!(!notice_only.is_empty());
        notice_only.heartbeat = Some(Heartbeat::default());
        assert!(!notice_only.is_liveness_only());
        let mut probe_only = Frame::new(1, 2);
        probe_only.replica_probes.push(3);
        probe_only.heartbeat = Some(Heartbeat::default());
        assert!(!probe_only.is_empty() && !probe_only.is_liveness_only());
    }

    fn owner(group: GroupId) -> usize {
        // Deliberately uneven, and out of range for the split to reduce.
        (group * 7 + group / 3) as usize
    }

    fn sorted(mut messages: Vec<GroupMessage>) -> Vec<(GroupId, String)> {
        let mut keyed: Vec<(GroupId, String)> = messages
            .drain(..)
            .map(|m| (m.group, format!("{:?}", m.message)))
            .collect();
        keyed.sort();
        keyed
    }

    #[test]
    fn a_split_puts_every_message_with_its_owner_and_the_tick_with_everyone() {
        let parts = 3;
        let frame = busy_frame(1..40, 99);
        let whole = sorted(frame.clone().into_messages());
        let split = frame.split_by(parts, owner);
        assert_eq!(split.len(), parts);
        let mut rejoined = Vec::new();
        for (index, part) in split.into_iter().enumerate() {
            let part = part.unwrap_or_else(|| panic!("part {index} is missing"));
            assert_eq!((part.from, part.to), (1, 2));
            let heartbeat = part.heartbeat.as_ref().expect("every part has the tick");
            assert_eq!(heartbeat.tick, 99, "part {index}");
            for group in part
                .messages
                .iter()
                .map(|m| m.group)
                .chain(heartbeat.groups.iter().map(|b| b.group))
                .chain(heartbeat.acks.iter().map(|a| a.group))
            {
                assert_eq!(owner(group) % parts, index, "group {group} in part {index}");
            }
            assert_eq!(
                part.payloads.is_empty(),
                index != 0,
                "payloads go to part 0 only"
            );
            rejoined.extend(part.into_messages());
        }
        // Nothing lost, nothing duplicated: the parts hold exactly the
        // original messages, coalesced heartbeats included.
        assert_eq!(sorted(rejoined), whole);
    }

    #[test]
    fn a_frame_without_heartbeat_reaches_only_the_owners_of_its_messages() {
        let mut frame = Frame::new(1, 2);
        frame.messages.push(append(5, 1));
        frame.messages.push(append(5, 2));
        let split = frame.split_by(4, |group| group as usize);
        assert_eq!(split.len(), 4);
        for (index, part) in split.iter().enumerate() {
            assert_eq!(part.is_some(), index == 1, "part {index}");
        }
        let part = split[1].as_ref().expect("part 1");
        assert!(part.heartbeat.is_none());
        let indexes: Vec<u64> = part
            .messages
            .iter()
            .map(|m| match m.message.body {
                MessageBody::Append { prev_index, .. } => prev_index,
                _ => 0,
            })
            .collect();
        assert_eq!(indexes, vec![1, 2], "order within a part is kept");
    }

    #[test]
    fn a_liveness_only_frame_reaches_every_part() {
        let mut frame = Frame::new(1, 2);
        frame.heartbeat = Some(Heartbeat {
            tick: 5,
            ..Heartbeat::default()
        });
        assert!(frame.is_liveness_only());
        let split = frame.split_by(3, owner);
        assert_eq!(split.len(), 3);
        for part in split {
            let part = part.expect("every part gets the liveness beat");
            assert!(part.is_liveness_only());
            assert_eq!(part.heartbeat.map(|h| h.tick), Some(5));
        }
        assert!(!busy_frame(1..2, 5).is_liveness_only());
        assert!(!Frame::new(1, 2).is_liveness_only());
    }

    #[test]
    fn one_part_is_the_frame_itself_and_zero_parts_is_nothing() {
        let frame = busy_frame(1..5, 3);
        assert_eq!(frame.clone().split_by(1, owner), vec![Some(frame.clone())]);
        assert!(frame.split_by(0, owner).is_empty());
        assert_eq!(Frame::new(1, 2).split_by(1, owner), vec![None]);
        assert_eq!(Frame::new(1, 2).split_by(3, owner), vec![None, None, None]);
    }
}
