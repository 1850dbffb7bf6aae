//! The `Ready` ordering contract and the wire types.

mod common;

use common::Cluster;
use flotilla_raftgroup::{Entry, EntryKind, Message, MessageBody};

/// The leader's appends may leave before its entries are durable; the
/// follower's acknowledgement only after its own are.
#[test]
fn leader_appends_leave_early_and_acknowledgements_wait_for_persistence() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert!(cluster.elect(1));
    cluster.node(1).propose(b"x".to_vec()).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    assert_eq!(ready.entries.len(), 1);
    assert!(ready.must_sync);
    assert!(ready
        .messages
        .iter()
        .all(|m| matches!(m.body, MessageBody::Append { .. })));
    assert_eq!(ready.messages.len(), 2);
    // The leader does not count itself before `advance`: nothing commits.
    let committed = cluster.nodes[&1].committed();
    let appends = ready.messages.clone();
    cluster
        .node(1)
        .storage_mut()
        .append(&ready.entries)
        .unwrap();
    cluster.node(1).advance(ready);
    assert_eq!(cluster.nodes[&1].committed(), committed);

    cluster.node(2).step(appends[0].clone()).unwrap();
    let ready = cluster.node(2).ready().unwrap();
    assert_eq!(ready.entries.len(), 1);
    assert!(ready.messages.is_empty());
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::AppendResponse { reject: false, .. }
    ));
}

/// Committed entries are handed out only once persisted locally.
#[test]
fn committed_entries_are_never_ahead_of_local_persistence() {
    let mut cluster = Cluster::new(&[1]);
    assert!(cluster.elect(1));
    cluster.node(1).propose(b"x".to_vec()).unwrap();
    let ready = cluster.node(1).ready().unwrap();
    assert!(ready.committed_entries.is_empty());
    cluster
        .node(1)
        .storage_mut()
        .append(&ready.entries)
        .unwrap();
    cluster.node(1).advance(ready);
    let ready = cluster.node(1).ready().unwrap();
    assert_eq!(ready.committed_entries.len(), 1);
}

/// Messages and entries are rkyv archives that validate and read in place.
#[test]
fn messages_round_trip_through_validated_rkyv_archives() {
    let message = Message {
        from: 1,
        to: 2,
        term: 7,
        body: MessageBody::Append {
            prev_index: 4,
            prev_term: 6,
            entries: vec![Entry {
                term: 7,
                index: 5,
                kind: EntryKind::Normal,
                data: b"payload".to_vec().into(),
            }],
            commit: 3,
        },
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&message).unwrap();
    let archived =
        rkyv::access::<flotilla_raftgroup::ArchivedMessage, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(archived.term, 7);
    let back: Message = rkyv::deserialize::<Message, rkyv::rancor::Error>(archived).unwrap();
    assert_eq!(back, message);
    // Garbage does not validate.
    let mut garbage = rkyv::util::AlignedVec::<16>::new();
    garbage.extend_from_slice(&[0xff; 64]);
    assert!(
        rkyv::access::<flotilla_raftgroup::ArchivedMessage, rkyv::rancor::Error>(&garbage).is_err()
    );
}
