//! The oracle: everything the cluster ever revealed, and the Raft safety
//! properties (Raft paper, Figure 3) checked against it.
//!
//! It remembers, for the whole run:
//! - the leader of every term (election safety);
//! - every log entry any node ever held or sent, keyed by `(index, term)`,
//!   with a digest of its payload and the term of the entry before it. If a
//!   pair `(index, term)` always names the same payload and the same previous
//!   term, then by induction any two logs that agree on an entry agree on
//!   everything before it (log matching);
//! - the committed log, one fact per index, learned from whichever node
//!   first reports an index committed. Every later report must agree
//!   (committed entries never change), every state machine must equal the
//!   committed prefix it claims to have applied, and every new leader must
//!   hold what was committed before its term (leader completeness);
//! - the configuration after every committed membership change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use flotilla_raftgroup::{
    confchange, ConfChange, ConfState, Entry, EntryKind, Message, MessageBody, NodeId, Snapshot,
};

use super::state_machine::{chain_step, entry_digest, is_write, write_id, StateMachine};

/// A safety or liveness property the simulator checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    /// At most one leader per term.
    ElectionSafety,
    /// A leader holds every entry committed before its term.
    LeaderCompleteness,
    /// Two logs with an entry of the same index and term agree on it and on
    /// everything before it.
    LogMatching,
    /// A committed entry never changes or disappears.
    CommittedNeverChanges,
    /// A state machine is always a prefix of the committed log.
    AppliedPrefix,
    /// The configuration a node applied is the committed one.
    ConfigAgreement,
    /// A node's commit index never decreases while it runs.
    CommitMonotonic,
    /// Persisted term, vote and commit never go back.
    DurableStateMonotonic,
    /// A read sees every write committed before it was requested.
    LinearizableRead,
    /// The `RawNode` kept the `Ready` contract and its API promises.
    ReadyContract,
    /// After faults stop, a leader is elected, new writes commit and every
    /// member converges within the bound.
    Liveness,
    /// The code under test panicked.
    Panic,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Property::ElectionSafety => "election safety (one leader per term)",
            Property::LeaderCompleteness => "leader completeness",
            Property::LogMatching => "log matching",
            Property::CommittedNeverChanges => "committed entries never change",
            Property::AppliedPrefix => "applied state is a prefix of the committed log",
            Property::ConfigAgreement => "configuration agreement",
            Property::CommitMonotonic => "commit index never decreases",
            Property::DurableStateMonotonic => "durable term/vote/commit never go back",
            Property::LinearizableRead => "linearizable reads",
            Property::ReadyContract => "Ready contract",
            Property::Liveness => "liveness after healing",
            Property::Panic => "no panic",
        };
        f.write_str(name)
    }
}

/// A property found violated, with what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: Property,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.property, self.detail)
    }
}

/// The result of a check.
pub type Checked<T = ()> = Result<T, Violation>;

/// Builds a [`Violation`].
pub fn violation(property: Property, detail: impl Into<String>) -> Violation {
    Violation {
        property,
        detail: detail.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryFact {
    digest: u64,
    prev_term: u64,
}

/// What the oracle knows about one committed index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CommittedFact {
    term: u64,
    kind: EntryKind,
    digest: u64,
    /// The term of the node that first reported the index committed. The
    /// leader that committed it had this term or an earlier one, so every
    /// leader of a later term must hold the entry.
    observed_term: u64,
    /// The state machine after applying this index.
    writes: u64,
    chain: u64,
}

/// The oracle of one run. See the module docs.
#[derive(Debug)]
pub struct Oracle {
    leaders: BTreeMap<u64, NodeId>,
    entries: BTreeMap<(u64, u64), EntryFact>,
    /// `committed[i - 1]` is index `i`.
    committed: Vec<CommittedFact>,
    /// The configuration in force after the entry at the key; key 0 is the
    /// bootstrap configuration.
    confs: BTreeMap<u64, ConfState>,
    /// Every node that was ever a member of a committed configuration.
    ever_members: BTreeSet<NodeId>,
    /// Write id → the first index it was committed at.
    writes: BTreeMap<u64, u64>,
    /// The highest commit index any node ever had.
    max_commit_seen: u64,
}

fn members(conf: &ConfState) -> impl Iterator<Item = NodeId> + '_ {
    conf.voters
        .iter()
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners)
        .chain(&conf.learners_next)
        .copied()
}

impl Oracle {
    /// An oracle for a group bootstrapped with `bootstrap`.
    pub fn new(bootstrap: ConfState) -> Self {
        let ever_members = members(&bootstrap).collect();
        Oracle {
            leaders: BTreeMap::new(),
            entries: BTreeMap::new(),
            committed: Vec::new(),
            confs: BTreeMap::from([(0, bootstrap)]),
            ever_members,
            writes: BTreeMap::new(),
            max_commit_seen: 0,
        }
    }

    /// Records that `node` leads `term`. Returns whether this is news.
    pub fn observe_leader(&mut self, term: u64, node: NodeId) -> Checked<bool> {
        match self.leaders.get(&term) {
            Some(&known) if known == node => Ok(false),
            Some(&known) => Err(violation(
                Property::ElectionSafety,
                format!("nodes {known} and {node} both lead term {term}"),
            )),
            None => {
                self.leaders.insert(term, node);
                Ok(true)
            }
        }
    }

    /// How many terms had a leader.
    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }

    /// Records a run of consecutive entries that follow `(prev_index,
    /// prev_term)` in some node's log (persisted or sent), checking that each
    /// `(index, term)` always names the same entry after the same term.
    pub fn observe_entries(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: &[Entry],
    ) -> Checked {
        let mut prev = (prev_index, prev_term);
        for entry in entries {
            if entry.index != prev.0 + 1 {
                return Err(violation(
                    Property::LogMatching,
                    format!(
                        "entry {} follows index {} in one run of entries",
                        entry.index, prev.0
                    ),
                ));
            }
            if entry.term < prev.1 {
                return Err(violation(
                    Property::LogMatching,
                    format!(
                        "entry {} has term {} below the term {} of the entry before it",
                        entry.index, entry.term, prev.1
                    ),
                ));
            }
            let fact = EntryFact {
                digest: entry_digest(entry.kind, &entry.data),
                prev_term: prev.1,
            };
            match self.entries.get(&(entry.index, entry.term)) {
                Some(known) if *known == fact => {}
                Some(known) => {
                    return Err(violation(
                        Property::LogMatching,
                        format!(
                            "two different entries at index {} term {}: digests {:#x}/{:#x}, \
                             previous terms {}/{}",
                            entry.index,
                            entry.term,
                            known.digest,
                            fact.digest,
                            known.prev_term,
                            fact.prev_term
                        ),
                    ))
                }
                None => {
                    self.entries.insert((entry.index, entry.term), fact);
                }
            }
            prev = (entry.index, entry.term);
        }
        Ok(())
    }

    /// Records the entries an `Append` carries (the sending leader's view).
    pub fn observe_message(&mut self, message: &Message) -> Checked {
        match &message.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                ..
            } => self.observe_entries(*prev_index, *prev_term, entries),
            _ => Ok(()),
        }
    }

    /// `node`, at `node_term`, holds `entry` as committed.
    pub fn observe_committed(&mut self, node: NodeId, node_term: u64, entry: &Entry) -> Checked {
        let known_len = self.committed.len() as u64;
        if entry.index == 0 || entry.index > known_len + 1 {
            return Err(violation(
                Property::CommittedNeverChanges,
                format!(
                    "node {node} reports index {} committed but the committed history is \
                     known only up to {known_len}",
                    entry.index
                ),
            ));
        }
        let digest = entry_digest(entry.kind, &entry.data);
        if entry.index <= known_len {
            let known = self.committed[(entry.index - 1) as usize];
            if known.term != entry.term || known.kind != entry.kind || known.digest != digest {
                return Err(violation(
                    Property::CommittedNeverChanges,
                    format!(
                        "node {node} has committed index {} as term {} digest {digest:#x}, \
                         but term {} digest {:#x} was committed there",
                        entry.index, entry.term, known.term, known.digest
                    ),
                ));
            }
            return Ok(());
        }
        self.append_committed(node_term, entry, digest);
        Ok(())
    }

    fn append_committed(&mut self, node_term: u64, entry: &Entry, digest: u64) {
        let (mut writes, mut chain) = self.state_at(entry.index - 1);
        if is_write(entry) {
            writes += 1;
            chain = chain_step(chain, &entry.data);
            if let Some(id) = write_id(&entry.data) {
                self.writes.entry(id).or_insert(entry.index);
            }
        }
        self.committed.push(CommittedFact {
            term: entry.term,
            kind: entry.kind,
            digest,
            observed_term: node_term,
            writes,
            chain,
        });
        self.max_commit_seen = self.max_commit_seen.max(entry.index);
        if entry.kind == EntryKind::ConfChange {
            self.commit_conf_change(entry);
        }
    }

    /// Mirrors what every node does with a committed membership change: an
    /// undecodable or invalid change leaves the configuration as it is.
    fn commit_conf_change(&mut self, entry: &Entry) {
        let current = self.conf_at(entry.index - 1).clone();
        let next = ConfChange::decode(&entry.data)
            .ok()
            .and_then(|change| confchange::apply(&current, &change).ok());
        if let Some(next) = next {
            self.ever_members.extend(members(&next));
            self.confs.insert(entry.index, next);
        }
    }

    /// The state machine `(writes, chain)` after applying index `index`.
    fn state_at(&self, index: u64) -> (u64, u64) {
        match index {
            0 => (0, 0),
            i => {
                let fact = &self.committed[(i - 1) as usize];
                (fact.writes, fact.chain)
            }
        }
    }

    /// The term committed at `index`, if known.
    pub fn committed_term(&self, index: u64) -> Option<u64> {
        let at = index.checked_sub(1)?;
        self.committed.get(at as usize).map(|fact| fact.term)
    }

    /// The highest index known committed.
    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    /// A node's commit index; the highest ever is the floor of later reads.
    pub fn note_commit(&mut self, commit: u64) {
        self.max_commit_seen = self.max_commit_seen.max(commit);
    }

    /// Every write committed anywhere so far is at or below this index, so a
    /// read requested now must see at least it.
    pub fn read_floor(&self) -> u64 {
        self.max_commit_seen
    }

    /// The configuration in force after applying `index`.
    pub fn conf_at(&self, index: u64) -> &ConfState {
        match self.confs.range(..=index).next_back() {
            Some((_, conf)) => conf,
            None => unreachable!("the bootstrap configuration is at key 0"),
        }
    }

    /// The configuration of the whole committed log.
    pub fn current_conf(&self) -> &ConfState {
        self.conf_at(self.committed_len())
    }

    /// Whether `node` was ever a member of a committed configuration.
    pub fn was_member(&self, node: NodeId) -> bool {
        self.ever_members.contains(&node)
    }

    /// Whether write `id` was committed.
    pub fn write_committed(&self, id: u64) -> bool {
        self.writes.contains_key(&id)
    }

    /// How many distinct writes were committed.
    pub fn writes_committed(&self) -> usize {
        self.writes.len()
    }

    /// Checks a node's state machine against the committed prefix it claims.
    pub fn check_state(&self, node: NodeId, state: &StateMachine) -> Checked {
        if state.applied > self.committed_len() {
            return Err(violation(
                Property::AppliedPrefix,
                format!(
                    "node {node} applied up to {} but only {} is known committed",
                    state.applied,
                    self.committed_len()
                ),
            ));
        }
        let expected = self.state_at(state.applied);
        if (state.writes, state.chain) != expected {
            return Err(violation(
                Property::AppliedPrefix,
                format!(
                    "node {node} at applied index {} holds {} writes (chain {:#x}); the \
                     committed log there holds {} (chain {:#x})",
                    state.applied, state.writes, state.chain, expected.0, expected.1
                ),
            ));
        }
        let conf = self.conf_at(state.applied);
        if state.conf != *conf {
            return Err(violation(
                Property::ConfigAgreement,
                format!(
                    "node {node} at applied index {} is in configuration {:?}, the committed \
                     log says {conf:?}",
                    state.applied, state.conf
                ),
            ));
        }
        Ok(())
    }

    /// Checks a snapshot before a node installs it: its last entry and the
    /// state machine in it must be committed history.
    pub fn check_snapshot(&self, node: NodeId, snapshot: &Snapshot) -> Checked {
        let meta = &snapshot.meta;
        self.check_committed_point(node, meta.index, meta.term)?;
        let state = StateMachine::restore(snapshot).map_err(|error| {
            violation(
                Property::AppliedPrefix,
                format!("node {node} got an unreadable snapshot: {error}"),
            )
        })?;
        self.check_state(node, &state)
    }

    /// `(index, term)` is a point a node holds as committed (a snapshot's
    /// last entry): it must be committed history.
    pub fn check_committed_point(&self, node: NodeId, index: u64, term: u64) -> Checked {
        if index == 0 {
            return Ok(());
        }
        match self.committed_term(index) {
            Some(known) if known == term => Ok(()),
            Some(known) => Err(violation(
                Property::CommittedNeverChanges,
                format!(
                    "node {node} holds index {index} term {term} as committed, but term \
                     {known} was committed there"
                ),
            )),
            None => Err(violation(
                Property::CommittedNeverChanges,
                format!(
                    "node {node} holds index {index} term {term} as committed, beyond the \
                     committed history ({})",
                    self.committed_len()
                ),
            )),
        }
    }

    /// A leader of `term` must hold every entry that was known committed
    /// by a node of an earlier term. `log_term` is the leader's view of its
    /// log; indexes before `first_index` are covered by its snapshot.
    pub fn check_leader_completeness(
        &self,
        node: NodeId,
        term: u64,
        first_index: u64,
        log_term: impl Fn(u64) -> Option<u64>,
    ) -> Checked {
        let start = first_index.saturating_sub(1).max(1);
        for index in start..=self.committed_len() {
            let fact = &self.committed[(index - 1) as usize];
            if fact.observed_term >= term {
                continue;
            }
            if log_term(index) != Some(fact.term) {
                return Err(violation(
                    Property::LeaderCompleteness,
                    format!(
                        "node {node} leads term {term} without index {index} (term {}) that \
                         was committed by term {}; it holds term {:?} there",
                        fact.term,
                        fact.observed_term,
                        log_term(index)
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            data: data.to_vec().into(),
        }
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut oracle = Oracle::new(ConfState::with_voters([1, 2, 3]));
        assert_eq!(oracle.observe_leader(2, 1), Ok(true));
        assert_eq!(oracle.observe_leader(2, 1), Ok(false));
        let error = oracle.observe_leader(2, 3).unwrap_err();
        assert_eq!(error.property, Property::ElectionSafety);
    }

    #[test]
    fn a_changed_committed_entry_is_caught() {
        let mut oracle = Oracle::new(ConfState::with_voters([1, 2, 3]));
        oracle.observe_committed(1, 1, &entry(1, 1, b"a")).unwrap();
        oracle.observe_committed(2, 1, &entry(1, 1, b"a")).unwrap();
        let error = oracle
            .observe_committed(3, 2, &entry(1, 2, b"b"))
            .unwrap_err();
        assert_eq!(error.property, Property::CommittedNeverChanges);
    }

    #[test]
    fn a_log_matching_break_is_caught() {
        let mut oracle = Oracle::new(ConfState::with_voters([1, 2]));
        oracle
            .observe_entries(0, 0, &[entry(1, 1, b"a"), entry(2, 1, b"b")])
            .unwrap();
        let error = oracle
            .observe_entries(1, 2, &[entry(2, 1, b"b")])
            .unwrap_err();
        assert_eq!(error.property, Property::LogMatching);
    }
}
