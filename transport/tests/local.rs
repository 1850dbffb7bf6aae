//! The in-process transport delivers frames and injects the faults it is
//! asked to.

use std::time::{Duration, Instant};

use flotilla_raftgroup::{Message, MessageBody};
use flotilla_transport::local::LocalNetwork;
use flotilla_transport::{
    ArchivedFrame, Frame, FrameBuilder, GroupBeat, Heartbeat, Transport, TransportError,
};

fn heartbeat_frame(from: u64, to: u64, tick: u64) -> Frame {
    let mut frame = Frame::new(from, to);
    frame.heartbeat = Some(Heartbeat {
        tick,
        groups: vec![GroupBeat {
            group: 7,
            term: 3,
            commit: 11,
            round: 4,
            quiesce: false,
        }],
        acks: Vec::new(),
    });
    frame
}

#[test]
fn frames_are_delivered_in_order() {
    let network = LocalNetwork::new(1);
    let (a, _) = network.register(1, 16);
    let (_b, inbox) = network.register(2, 16);
    for tick in 0..10 {
        a.send(heartbeat_frame(1, 2, tick)).unwrap();
    }
    let ticks: Vec<u64> = inbox
        .try_iter()
        .map(|f| f.heartbeat.unwrap().tick)
        .collect();
    assert_eq!(ticks, (0..10).collect::<Vec<_>>());
    assert_eq!(network.stats().delivered, 10);
}

#[test]
fn partitions_drop_frames_until_healed() {
    let network = LocalNetwork::new(2);
    let (a, a_inbox) = network.register(1, 16);
    let (b, b_inbox) = network.register(2, 16);
    network.cut(1, 2);
    a.send(heartbeat_frame(1, 2, 1)).unwrap();
    b.send(heartbeat_frame(2, 1, 1)).unwrap();
    assert_eq!(b_inbox.try_iter().count(), 0, "1 -> 2 is cut");
    assert_eq!(a_inbox.try_iter().count(), 1, "2 -> 1 is not");
    network.heal();
    network.isolate(2);
    a.send(heartbeat_frame(1, 2, 2)).unwrap();
    b.send(heartbeat_frame(2, 1, 2)).unwrap();
    assert_eq!(a_inbox.try_iter().count() + b_inbox.try_iter().count(), 0);
    network.heal();
    a.send(heartbeat_frame(1, 2, 3)).unwrap();
    assert_eq!(b_inbox.try_iter().count(), 1);
    assert_eq!(network.stats().dropped, 3);
}

#[test]
fn random_drops_follow_the_rate() {
    let network = LocalNetwork::new(3);
    let (a, _) = network.register(1, 16);
    let (_b, inbox) = network.register(2, 10_000);
    network.set_drop_rate(0.3);
    for tick in 0..2000 {
        a.send(heartbeat_frame(1, 2, tick)).unwrap();
    }
    let delivered = inbox.try_iter().count();
    assert!(
        (1200..1600).contains(&delivered),
        "{delivered} of 2000 delivered"
    );
}

#[test]
fn delayed_frames_arrive_later() {
    let network = LocalNetwork::new(4);
    let (a, _) = network.register(1, 16);
    let (_b, inbox) = network.register(2, 16);
    network.set_delay(Some((Duration::from_millis(30), Duration::from_millis(40))));
    let sent_at = Instant::now();
    a.send(heartbeat_frame(1, 2, 1)).unwrap();
    assert!(inbox.try_recv().is_err(), "not yet");
    let frame = inbox.recv_timeout(Duration::from_secs(2)).unwrap();
    assert!(sent_at.elapsed() >= Duration::from_millis(30));
    assert_eq!(frame.heartbeat.unwrap().tick, 1);
}

#[test]
fn full_queues_and_unknown_nodes_are_typed_errors() {
    let network = LocalNetwork::new(5);
    let (a, _) = network.register(1, 16);
    let (_b, _inbox) = network.register(2, 2);
    a.send(heartbeat_frame(1, 2, 1)).unwrap();
    a.send(heartbeat_frame(1, 2, 2)).unwrap();
    assert_eq!(
        a.send(heartbeat_frame(1, 2, 3)),
        Err(TransportError::QueueFull(2))
    );
    assert_eq!(
        a.send(heartbeat_frame(1, 9, 1)),
        Err(TransportError::UnknownNode(9))
    );
    network.unregister(2);
    assert_eq!(
        a.send(heartbeat_frame(1, 2, 4)),
        Err(TransportError::UnknownNode(2))
    );
}

#[test]
fn a_round_sends_one_frame_per_destination_with_heartbeats_coalesced() {
    let mut builder = FrameBuilder::new(1);
    let mut originals = Vec::new();
    for group in 0..100u64 {
        for to in [2u64, 3] {
            let message = Message {
                from: 1,
                to,
                term: 4,
                body: MessageBody::Heartbeat {
                    commit: group,
                    round: 9,
                    quiesce: group % 2 == 0,
                },
            };
            if to == 2 {
                originals.push(flotilla_transport::GroupMessage {
                    group,
                    message: message.clone(),
                });
            }
            builder.push_message(to, group, message);
        }
    }
    let append = Message {
        from: 1,
        to: 2,
        term: 4,
        body: MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: Vec::new(),
            commit: 0,
        },
    };
    builder.push_message(2, 5, append.clone());
    builder.liveness(3, 77);
    let frames: Vec<Frame> = builder.finish().collect();
    assert_eq!(frames.len(), 2, "one frame per destination");
    let to_two = frames[0].clone();
    assert_eq!(
        to_two.messages.len(),
        1,
        "only the append travels as a message"
    );
    assert_eq!(to_two.heartbeat.as_ref().unwrap().groups.len(), 100);
    assert_eq!(frames[1].heartbeat.as_ref().unwrap().tick, 77);
    let mut expanded = to_two.into_messages();
    assert_eq!(expanded.remove(0).message, append);
    assert_eq!(expanded, originals, "coalescing loses nothing");
}

#[test]
fn frames_are_validated_rkyv_archives() {
    let frame = heartbeat_frame(1, 2, 9);
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&frame).unwrap();
    let archived = rkyv::access::<ArchivedFrame, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(archived.to, 2);
    let back = rkyv::deserialize::<Frame, rkyv::rancor::Error>(archived).unwrap();
    assert_eq!(back, frame);
    let mut garbage = rkyv::util::AlignedVec::<16>::new();
    garbage.extend_from_slice(&[0xee; 48]);
    assert!(rkyv::access::<ArchivedFrame, rkyv::rancor::Error>(&garbage).is_err());
}
