//! Replica garbage collection: destroying a replica that was removed from
//! its group, once nothing it holds can matter to the group.
//!
//! A replica learns of its own removal by applying the configuration change
//! that removes it. One cut off at that moment never does: nobody sends it
//! entries any more, and it keeps campaigning (harmlessly — pre-vote stops
//! it from disrupting anyone; a learner just waits) and keeps its data
//! forever. CockroachDB's replica GC queue asks the range descriptor in the
//! meta range; flotilla has no meta range yet, so the voters answer
//! instead. A replica that has heard from no leader for an election
//! timeout sends its configuration's voters a probe; a voter whose applied
//! configuration does not include the sender of a probe (or of any message
//! of the group) tells it so, with the committed entry (index and term) its
//! knowledge is as of: a [`RemovedNotice`].
//!
//! A replica that did apply its own removal is not destroyed at once
//! either: until a voter of the new configuration has applied the change
//! too, the others may still be in the joint configuration and need its
//! vote (a leader removing itself commits the change alone and must hand
//! leadership over first). So it lingers, probing, until a voter's notice
//! confirms the removal, and never while it still leads.
//!
//! Node ids name replicas here (a re-added node is the same Raft peer), so
//! a notice may be older than a re-addition and must not destroy the new
//! replica. The receiver destroys its replica only when nothing it holds
//! can matter to the group any more:
//!
//! - Everything up to the notice's index `A` is committed, and the
//!   configuration as of `A` excludes the receiver. A re-addition would be
//!   a later entry `K > A`, and every entry the receiver acknowledged as a
//!   member again (or a snapshot it installed) lies at or after `K`.
//! - So the replica is kept if it applied `A` or more (it knows as much as
//!   the sender, and handles its own removal or re-addition), if its
//!   snapshot is past `A` (someone sent it a newer state: it was re-added),
//!   or if its log holds entry `A` with term `A`'s term AND entries after
//!   it (they came from a leader that knew the configuration at `A`, and
//!   such a leader sends to the receiver only if it was re-added).
//! - Otherwise its log ends at or before `A`, or diverges from the
//!   committed log there: whatever it holds beyond the committed prefix
//!   was never committed and never will be. Its vote is protected by the
//!   tombstone, which records its term: a replica is recreated only by a
//!   leader of a later term.

use flotilla_transport::{NodeId, RemovedNotice};

use super::{is_member, Replica};

/// The notice `replica` (hosted on node `me`) owes node `from`, which sent
/// it a message or a probe: one if `from` is not in the configuration
/// `replica` has applied. `None` if `from` is a member, or if this replica
/// cannot speak for the group: it was never initialized, or it is not a
/// voter (a removed replica must not condemn others).
pub(super) fn notice_for(me: NodeId, replica: &Replica, from: NodeId) -> Option<RemovedNotice> {
    if from == me || !replica.initialized() {
        return None;
    }
    let conf = replica.raft.conf_state();
    if !conf.voters.contains(&me) || is_member(conf, from) {
        return None;
    }
    let index = replica.state.applied_index();
    let term = replica.raft.log_term(index)?;
    Some(RemovedNotice {
        group: replica.descriptor.group,
        index,
        term,
    })
}

/// Whether `notice` still proves that `replica` may be destroyed (see the
/// module docs for why each case keeps or destroys it).
pub(super) fn notice_applies(replica: &Replica, notice: &RemovedNotice) -> bool {
    if replica.state.applied_index() >= notice.index {
        return false;
    }
    if replica.raft.storage().snapshot_meta().index > notice.index {
        return false;
    }
    let matches_at_notice = replica.raft.log_term(notice.index) == Some(notice.term);
    !(matches_at_notice && replica.raft.last_index() > notice.index)
}

/// The nodes a replica of `conf` hosted on `me` probes: every voter but
/// itself.
pub(super) fn probe_targets(me: NodeId, conf: &flotilla_raftgroup::ConfState) -> Vec<NodeId> {
    let voters: std::collections::BTreeSet<NodeId> = conf
        .voters
        .iter()
        .chain(&conf.voters_outgoing)
        .copied()
        .filter(|&voter| voter != me)
        .collect();
    voters.into_iter().collect()
}
