//! The key-value state machine of one range.
//!
//! Every replica applies the same committed entries in the same order, so
//! [`RangeState::apply`] must be a pure function of the state and the entry:
//! no clocks, no randomness, no hash iteration order, no dependence on what
//! the local node knows beyond the state itself. Span checks therefore happen
//! here, at apply time, against the span the state holds at that index, and
//! not at proposal time against a cache that may differ between replicas.

use std::collections::BTreeMap;
use std::ops::Bound;

use thiserror::Error;

use super::command::{
    Command, CommandResult, InvalidArgument, Proposal, RejectReason, MAX_KEY_BYTES,
};
use super::span::{DisplayKey, KeySpan};

/// Errors of reads and splits, which happen outside the log and so may fail
/// instead of producing a replicated result.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RangeError {
    /// The request itself is malformed; fix it.
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] InvalidArgument),
    /// The key is not in this range: the caller's range cache is stale.
    /// Refresh the range descriptor and retry at the right range.
    #[error(
        "key {} is outside the range {span}; refresh the range cache and retry",
        DisplayKey(key)
    )]
    KeyOutsideSpan {
        /// The key asked for.
        key: Vec<u8>,
        /// This range's span.
        span: KeySpan,
    },
    /// A split key must lie strictly inside the span so both halves serve at
    /// least one possible key; pick another split key.
    #[error(
        "split key {} is not strictly inside the range {span}",
        DisplayKey(key)
    )]
    SplitKeyNotInside {
        /// The proposed split key.
        key: Vec<u8>,
        /// This range's span.
        span: KeySpan,
    },
}

/// The replicated key-value state of one range.
///
/// Invariants, kept by every method and checked again when a snapshot is
/// loaded:
/// - every key in `data` lies in `span`, and is 1 to [`MAX_KEY_BYTES`] long;
///   every value is at most
///   [`MAX_VALUE_BYTES`](super::command::MAX_VALUE_BYTES) long;
/// - `bytes` is the sum of key and value lengths over `data`;
/// - `applied_index` and `applied_term` only grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeState {
    span: KeySpan,
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: u64,
    applied_index: u64,
    applied_term: u64,
}

/// An owned key and its value, as reads return them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A write to undo if a batch aborts: the key and what it held before.
type UndoLog = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl RangeState {
    /// An empty range serving `span`, before any log entry is applied.
    pub fn new(span: KeySpan) -> Self {
        RangeState {
            span,
            data: BTreeMap::new(),
            bytes: 0,
            applied_index: 0,
            applied_term: 0,
        }
    }

    /// Rebuilds a state whose invariants the caller (the snapshot loader) has
    /// verified.
    pub(super) fn from_verified_parts(
        span: KeySpan,
        applied_index: u64,
        applied_term: u64,
        data: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Self {
        let bytes = data.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        RangeState {
            span,
            data,
            bytes,
            applied_index,
            applied_term,
        }
    }

    /// The map, for the snapshot encoder.
    pub(super) fn data(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.data
    }

    /// The keys this range serves.
    pub fn span(&self) -> &KeySpan {
        &self.span
    }

    /// Index of the last log entry reflected in this state.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Term of the last log entry reflected in this state.
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the range holds no key.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Key plus value bytes of all pairs, kept up to date on every write so
    /// the split policy can read it for thousands of ranges at no cost. It
    /// ignores the map's own overhead, hence "approximate" as a measure of
    /// memory, but it is exact and identical on every replica.
    pub fn approximate_bytes(&self) -> u64 {
        self.bytes
    }

    /// All pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.data.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Records that the log entry at `index` (of `term`) was applied without
    /// touching the map: empty leader entries and membership changes take
    /// log slots too, and the snapshot index must account for them.
    ///
    /// # Panics
    ///
    /// If `index` is not above the applied index or `term` is below the
    /// applied term. Applying an entry twice would corrupt the state (a
    /// delete counted twice, a CAS judged against its own effect), so a
    /// caller that replays wrongly is stopped before it does damage.
    pub fn advance_applied(&mut self, index: u64, term: u64) {
        assert!(
            index > self.applied_index,
            "entry {index} applied again: range already applied up to {}",
            self.applied_index
        );
        assert!(
            term >= self.applied_term,
            "entry {index} has term {term}, below applied term {}",
            self.applied_term
        );
        self.applied_index = index;
        self.applied_term = term;
    }

    /// Applies the committed entry at `index` (of `term`) carrying `proposal`.
    ///
    /// Deterministic: the result and the new state depend only on the old
    /// state and the arguments. An invalid command or one that reaches outside
    /// the span is rejected without changing the map; the applied index still
    /// advances, because the entry was consumed.
    ///
    /// # Panics
    ///
    /// As [`RangeState::advance_applied`], on an index already applied.
    pub fn apply(&mut self, index: u64, term: u64, proposal: &Proposal) -> CommandResult {
        self.advance_applied(index, term);
        let command = &proposal.command;
        if let Err(invalid) = command.validate() {
            return CommandResult::Rejected(RejectReason::Invalid(invalid));
        }
        if let Err(reason) = self.check_span(command) {
            return CommandResult::Rejected(reason);
        }
        match command {
            Command::Batch(ops) => self.apply_batch(ops),
            op => self.apply_op(op, None),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>, RangeError> {
        if key.is_empty() {
            return Err(InvalidArgument::EmptyKey.into());
        }
        if !self.span.contains(key) {
            return Err(RangeError::KeyOutsideSpan {
                key: key.to_vec(),
                span: self.span.clone(),
            });
        }
        Ok(self.data.get(key).map(Vec::as_slice))
    }

    /// Up to `limit` pairs with keys in `[start, end)` in key order (`end`
    /// `None`: no upper bound).
    ///
    /// `start` must lie in this range, or the request was misrouted. The end
    /// is clamped to the range's end: a scan over many ranges is served range
    /// by range, and the caller continues from [`KeySpan::end`] when fewer
    /// than `limit` pairs come back.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, RangeError> {
        if end.is_some_and(|end| end < start) {
            return Err(InvalidArgument::EndBeforeStart.into());
        }
        if !self.span.contains(start) {
            return Err(RangeError::KeyOutsideSpan {
                key: start.to_vec(),
                span: self.span.clone(),
            });
        }
        let end = match (end, self.span.end_bound()) {
            (Some(end), Some(span_end)) => Some(end.min(span_end)),
            (end, span_end) => end.or(span_end),
        };
        Ok(self
            .pairs_in(start, end)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// Splits the range at `key`: this state keeps `[start, key)`, and the
    /// returned state gets `[key, end)` with every pair whose key is at or
    /// after `key`. Both keep the applied index and term, the log position at
    /// which the split took effect.
    ///
    /// Deterministic, so every replica applying the split command produces the
    /// same two halves.
    pub fn split_at(&mut self, key: &[u8]) -> Result<RangeState, RangeError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(InvalidArgument::KeyTooLong {
                len: key.len() as u64,
            }
            .into());
        }
        let inside = key > self.span.start() && self.span.end_bound().is_none_or(|end| key < end);
        if !inside {
            return Err(RangeError::SplitKeyNotInside {
                key: key.to_vec(),
                span: self.span.clone(),
            });
        }
        let left_span = KeySpan::new(self.span.start().to_vec(), key.to_vec())?;
        let right_span = KeySpan::new(key.to_vec(), self.span.end().to_vec())?;
        let right_data = self.data.split_off(key);
        let right = RangeState::from_verified_parts(
            right_span,
            self.applied_index,
            self.applied_term,
            right_data,
        );
        self.bytes -= right.bytes;
        self.span = left_span;
        Ok(right)
    }

    fn check_span(&self, command: &Command) -> Result<(), RejectReason> {
        let outside_key = |key: &Vec<u8>| {
            Err(RejectReason::KeyOutsideSpan {
                key: key.clone(),
                span: self.span.clone(),
            })
        };
        match command {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => {
                if self.span.contains(key) {
                    Ok(())
                } else {
                    outside_key(key)
                }
            }
            Command::DeleteRange { start, end } => {
                let end_bound = if end.is_empty() {
                    None
                } else {
                    Some(end.as_slice())
                };
                if self.span.covers(start, end_bound) {
                    Ok(())
                } else {
                    Err(RejectReason::RangeOutsideSpan {
                        start: start.clone(),
                        end: end.clone(),
                        span: self.span.clone(),
                    })
                }
            }
            Command::Batch(ops) => ops.iter().try_for_each(|op| self.check_span(op)),
        }
    }

    /// Applies the operations in order; if a `Cas` fails, undoes the ones
    /// before it so the batch leaves no trace.
    fn apply_batch(&mut self, ops: &[Command]) -> CommandResult {
        let mut undo = UndoLog::new();
        let mut results = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match self.apply_op(op, Some(&mut undo)) {
                CommandResult::CasResult {
                    succeeded: false,
                    current,
                } => {
                    self.roll_back(undo);
                    // `validate` caps a batch at MAX_BATCH_OPS, far below u32::MAX.
                    return CommandResult::BatchAborted {
                        failed_op: i as u32,
                        current,
                    };
                }
                result => results.push(result),
            }
        }
        CommandResult::Batch(results)
    }

    /// Applies one validated, in-span, non-batch operation, recording what it
    /// overwrote in `undo` when given.
    fn apply_op(&mut self, op: &Command, mut undo: Option<&mut UndoLog>) -> CommandResult {
        match op {
            Command::Put { key, value } => {
                let old = self.insert(key.clone(), value.clone());
                if let Some(undo) = undo {
                    undo.push((key.clone(), old));
                }
                CommandResult::Applied
            }
            Command::Delete { key } => {
                let removed = self.remove(key);
                let count = u64::from(removed.is_some());
                if let (Some(undo), Some((k, v))) = (undo, removed) {
                    undo.push((k, Some(v)));
                }
                CommandResult::Deleted { count }
            }
            Command::Cas { key, expected, new } => {
                let current = self.data.get(key.as_slice()).cloned();
                if current != *expected {
                    return CommandResult::CasResult {
                        succeeded: false,
                        current,
                    };
                }
                let old = match new {
                    Some(value) => self.insert(key.clone(), value.clone()),
                    None => self.remove(key).map(|(_, v)| v),
                };
                if let Some(undo) = undo {
                    undo.push((key.clone(), old));
                }
                CommandResult::CasResult {
                    succeeded: true,
                    current,
                }
            }
            Command::DeleteRange { start, end } => {
                let end = if end.is_empty() {
                    None
                } else {
                    Some(end.as_slice())
                };
                let keys: Vec<Vec<u8>> =
                    self.pairs_in(start, end).map(|(k, _)| k.clone()).collect();
                let count = keys.len() as u64;
                for key in keys {
                    if let Some((k, v)) = self.remove(&key) {
                        if let Some(undo) = undo.as_deref_mut() {
                            undo.push((k, Some(v)));
                        }
                    }
                }
                CommandResult::Deleted { count }
            }
            Command::Batch(_) => {
                CommandResult::Rejected(RejectReason::Invalid(InvalidArgument::NestedBatch))
            }
        }
    }

    fn roll_back(&mut self, undo: UndoLog) {
        for (key, old) in undo.into_iter().rev() {
            match old {
                Some(value) => {
                    self.insert(key, value);
                }
                None => {
                    self.remove(&key);
                }
            }
        }
    }

    /// Pairs with keys in `[start, end)`; empty when `end < start`.
    fn pairs_in<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a {
        let bounds = match end {
            // BTreeMap::range panics on inverted bounds; an inverted interval
            // simply holds nothing.
            Some(end) if end < start => None,
            Some(end) => Some((
                Bound::Included(start.to_vec()),
                Bound::Excluded(end.to_vec()),
            )),
            None => Some((Bound::Included(start.to_vec()), Bound::Unbounded)),
        };
        bounds
            .into_iter()
            .flat_map(move |b| self.data.range::<Vec<u8>, _>(b))
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        let added = (key.len() + value.len()) as u64;
        let old = self.data.insert(key.clone(), value);
        self.bytes += added;
        if let Some(old) = &old {
            self.bytes -= (key.len() + old.len()) as u64;
        }
        old
    }

    fn remove(&mut self, key: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let removed = self.data.remove_entry(key);
        if let Some((k, v)) = &removed {
            self.bytes -= (k.len() + v.len()) as u64;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn span(start: &[u8], end: &[u8]) -> KeySpan {
        KeySpan::new(start.to_vec(), end.to_vec()).unwrap()
    }

    fn put(key: &[u8], value: &[u8]) -> Command {
        Command::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn cas(key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> Command {
        Command::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        }
    }

    fn delete_range(start: &[u8], end: &[u8]) -> Command {
        Command::DeleteRange {
            start: start.to_vec(),
            end: end.to_vec(),
        }
    }

    /// Applies commands at consecutive indexes, all in term 1.
    fn run(state: &mut RangeState, commands: &[Command]) -> Vec<CommandResult> {
        commands
            .iter()
            .map(|command| {
                let index = state.applied_index() + 1;
                state.apply(
                    index,
                    1,
                    &Proposal {
                        request_id: index,
                        command: command.clone(),
                    },
                )
            })
            .collect()
    }

    fn recount(state: &RangeState) -> u64 {
        state.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    #[test]
    fn put_get_delete() {
        let mut s = RangeState::new(KeySpan::full());
        let results = run(
            &mut s,
            &[put(b"a", b"1"), Command::Delete { key: b"a".to_vec() }],
        );
        assert_eq!(
            results,
            [CommandResult::Applied, CommandResult::Deleted { count: 1 }]
        );
        assert_eq!(s.get(b"a"), Ok(None));
        assert_eq!(
            run(&mut s, &[Command::Delete { key: b"a".to_vec() }]),
            [CommandResult::Deleted { count: 0 }]
        );
        assert_eq!(s.applied_index(), 3);
    }

    #[test]
    fn cas_with_absent_expectation_and_delete_on_success() {
        let mut s = RangeState::new(KeySpan::full());
        let results = run(
            &mut s,
            &[
                cas(b"k", None, Some(b"v1")),
                cas(b"k", None, Some(b"v2")),
                cas(b"k", Some(b"v1"), None),
            ],
        );
        assert_eq!(
            results,
            [
                CommandResult::CasResult {
                    succeeded: true,
                    current: None
                },
                CommandResult::CasResult {
                    succeeded: false,
                    current: Some(b"v1".to_vec())
                },
                CommandResult::CasResult {
                    succeeded: true,
                    current: Some(b"v1".to_vec())
                },
            ]
        );
        assert!(s.is_empty());
        assert_eq!(s.approximate_bytes(), 0);
    }

    #[test]
    fn keys_outside_the_span_are_rejected_without_effect() {
        let mut s = RangeState::new(span(b"b", b"d"));
        run(&mut s, &[put(b"b", b"1")]);
        let before = s.clone();
        let results = run(
            &mut s,
            &[
                put(b"d", b"x"),
                Command::Delete { key: b"a".to_vec() },
                cas(b"e", None, Some(b"x")),
                delete_range(b"b", b"e"),
                delete_range(b"a", b"c"),
                delete_range(b"b", b""),
                Command::Batch(vec![put(b"c", b"x"), put(b"z", b"x")]),
            ],
        );
        for r in &results {
            assert!(matches!(r, CommandResult::Rejected(_)), "{r:?}");
        }
        assert_eq!(
            results[0],
            CommandResult::Rejected(RejectReason::KeyOutsideSpan {
                key: b"d".to_vec(),
                span: span(b"b", b"d")
            })
        );
        assert_eq!(
            results[6],
            CommandResult::Rejected(RejectReason::KeyOutsideSpan {
                key: b"z".to_vec(),
                span: span(b"b", b"d")
            })
        );
        assert_eq!(
            s.get(b"c"),
            Ok(None),
            "a rejected batch leaves no partial write"
        );
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            before.iter().collect::<Vec<_>>()
        );
        assert_eq!(
            s.applied_index(),
            before.applied_index() + 7,
            "rejected entries are consumed"
        );
    }

    #[test]
    fn invalid_commands_are_rejected_at_apply() {
        let mut s = RangeState::new(KeySpan::full());
        let results = run(
            &mut s,
            &[put(b"", b"v"), Command::Batch(vec![Command::Batch(vec![])])],
        );
        assert_eq!(
            results,
            [
                CommandResult::Rejected(RejectReason::Invalid(InvalidArgument::EmptyKey)),
                CommandResult::Rejected(RejectReason::Invalid(InvalidArgument::NestedBatch)),
            ]
        );
        assert!(s.is_empty());
    }

    #[test]
    fn a_failed_cas_aborts_the_whole_batch() {
        let mut s = RangeState::new(KeySpan::full());
        run(&mut s, &[put(b"a", b"1"), put(b"b", b"2"), put(b"c", b"3")]);
        let before = s.clone();
        let results = run(
            &mut s,
            &[Command::Batch(vec![
                put(b"a", b"changed"),
                put(b"new", b"x"),
                delete_range(b"b", b"d"),
                cas(b"a", Some(b"changed"), Some(b"again")),
                cas(b"b", Some(b"2"), None),
            ])],
        );
        assert_eq!(
            results,
            [CommandResult::BatchAborted {
                failed_op: 4,
                current: None
            }]
        );
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            before.iter().collect::<Vec<_>>()
        );
        assert_eq!(s.approximate_bytes(), before.approximate_bytes());
    }

    #[test]
    fn a_committed_batch_sees_its_own_writes() {
        let mut s = RangeState::new(KeySpan::full());
        let results = run(
            &mut s,
            &[Command::Batch(vec![
                put(b"a", b"1"),
                cas(b"a", Some(b"1"), Some(b"2")),
                delete_range(b"", b""),
                put(b"b", b"3"),
            ])],
        );
        assert_eq!(
            results,
            [CommandResult::Batch(vec![
                CommandResult::Applied,
                CommandResult::CasResult {
                    succeeded: true,
                    current: Some(b"1".to_vec())
                },
                CommandResult::Deleted { count: 1 },
                CommandResult::Applied,
            ])]
        );
        assert_eq!(s.iter().collect::<Vec<_>>(), [(&b"b"[..], &b"3"[..])]);
    }

    #[test]
    #[should_panic(expected = "applied again")]
    fn applying_an_index_twice_is_refused() {
        let mut s = RangeState::new(KeySpan::full());
        run(&mut s, &[put(b"a", b"1")]);
        s.apply(
            1,
            1,
            &Proposal {
                request_id: 0,
                command: put(b"a", b"2"),
            },
        );
    }

    #[test]
    fn scan_limits_clamps_and_refuses_bad_intervals() {
        let mut s = RangeState::new(span(b"b", b"f"));
        run(
            &mut s,
            &[
                put(b"b", b"1"),
                put(b"c", b"2"),
                put(b"d", b"3"),
                put(b"e", b"4"),
            ],
        );
        let keys = |r: Vec<(Vec<u8>, Vec<u8>)>| r.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(s.scan(b"b", None, 2).unwrap()),
            [b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            keys(s.scan(b"c", Some(b"e"), 10).unwrap()),
            [b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(
            keys(s.scan(b"d", Some(b"zzz"), 10).unwrap()),
            [b"d".to_vec(), b"e".to_vec()]
        );
        assert_eq!(s.scan(b"c", Some(b"c"), 10), Ok(Vec::new()));
        assert_eq!(s.scan(b"b", None, 0), Ok(Vec::new()));
        assert_eq!(
            s.scan(b"d", Some(b"c"), 10),
            Err(RangeError::InvalidArgument(InvalidArgument::EndBeforeStart))
        );
        assert!(matches!(
            s.scan(b"a", None, 10),
            Err(RangeError::KeyOutsideSpan { .. })
        ));
        assert!(matches!(
            s.scan(b"f", None, 10),
            Err(RangeError::KeyOutsideSpan { .. })
        ));
        assert!(matches!(
            s.get(b"f"),
            Err(RangeError::KeyOutsideSpan { .. })
        ));
        assert_eq!(
            s.get(b""),
            Err(RangeError::InvalidArgument(InvalidArgument::EmptyKey))
        );
    }

    #[test]
    fn split_moves_keys_at_and_after_the_split_key() {
        let mut left = RangeState::new(span(b"b", b""));
        run(
            &mut left,
            &[
                put(b"b", b"1"),
                put(b"c", b"22"),
                put(b"cc", b"333"),
                put(b"d", b"4"),
            ],
        );
        let right = left.split_at(b"c").unwrap();
        assert_eq!(left.span(), &span(b"b", b"c"));
        assert_eq!(right.span(), &span(b"c", b""));
        assert_eq!(
            left.iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>(),
            [b"b".to_vec()]
        );
        assert_eq!(
            right.iter().map(|(k, _)| k.to_vec()).collect::<Vec<_>>(),
            [b"c".to_vec(), b"cc".to_vec(), b"d".to_vec()]
        );
        assert_eq!(left.approximate_bytes(), recount(&left));
        assert_eq!(right.approximate_bytes(), recount(&right));
        assert_eq!((right.applied_index(), right.applied_term()), (4, 1));
        let results = run(&mut left, &[put(b"c", b"x")]);
        assert!(matches!(
            results[0],
            CommandResult::Rejected(RejectReason::KeyOutsideSpan { .. })
        ));
    }

    #[test]
    fn split_keys_must_be_strictly_inside() {
        let mut s = RangeState::new(span(b"b", b"d"));
        for key in [&b"b"[..], b"a", b"d", b"e", b""] {
            assert!(
                matches!(s.split_at(key), Err(RangeError::SplitKeyNotInside { .. })),
                "{key:?}"
            );
        }
        assert!(matches!(
            s.split_at(&[b'c'; MAX_KEY_BYTES + 1]),
            Err(RangeError::InvalidArgument(
                InvalidArgument::KeyTooLong { .. }
            ))
        ));
        assert_eq!(
            s.span(),
            &span(b"b", b"d"),
            "a refused split changes nothing"
        );
    }

    /// The oracle: the same semantics written the plain way, with a cloned
    /// map standing in for the undo log.
    fn oracle_apply(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, command: &Command) -> CommandResult {
        fn one(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: &Command) -> CommandResult {
            match op {
                Command::Put { key, value } => {
                    map.insert(key.clone(), value.clone());
                    CommandResult::Applied
                }
                Command::Delete { key } => CommandResult::Deleted {
                    count: u64::from(map.remove(key).is_some()),
                },
                Command::Cas { key, expected, new } => {
                    let current = map.get(key).cloned();
                    let succeeded = current == *expected;
                    if succeeded {
                        match new {
                            Some(v) => map.insert(key.clone(), v.clone()),
                            None => map.remove(key),
                        };
                    }
                    CommandResult::CasResult { succeeded, current }
                }
                Command::DeleteRange { start, end } => {
                    let doomed: Vec<Vec<u8>> = map
                        .keys()
                        .filter(|k| *k >= start && (end.is_empty() || *k < end))
                        .cloned()
                        .collect();
                    for k in &doomed {
                        map.remove(k);
                    }
                    CommandResult::Deleted {
                        count: doomed.len() as u64,
                    }
                }
                Command::Batch(_) => unreachable!("the generator makes no nested batches"),
            }
        }
        match command {
            Command::Batch(ops) => {
                let mut scratch = map.clone();
                let mut results = Vec::new();
                for (i, op) in ops.iter().enumerate() {
                    match one(&mut scratch, op) {
                        CommandResult::CasResult {
                            succeeded: false,
                            current,
                        } => {
                            return CommandResult::BatchAborted {
                                failed_op: i as u32,
                                current,
                            };
                        }
                        r => results.push(r),
                    }
                }
                *map = scratch;
                CommandResult::Batch(results)
            }
            op => one(map, op),
        }
    }

    /// Keys from a tiny alphabet so operations collide often.
    fn small_key() -> impl Strategy<Value = Vec<u8>> {
        vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 1..3)
    }

    fn small_value() -> impl Strategy<Value = Vec<u8>> {
        vec(prop_oneof![Just(b'0'), Just(b'1')], 0..2)
    }

    fn op() -> impl Strategy<Value = Command> {
        prop_oneof![
            3 => (small_key(), small_value()).prop_map(|(key, value)| Command::Put { key, value }),
            1 => small_key().prop_map(|key| Command::Delete { key }),
            2 => (small_key(), proptest::option::of(small_value()), proptest::option::of(small_value()))
                .prop_map(|(key, expected, new)| Command::Cas { key, expected, new }),
            1 => (small_key(), prop_oneof![small_key(), Just(Vec::new())]).prop_map(|(a, b)| {
                if !b.is_empty() && b < a {
                    Command::DeleteRange { start: b, end: a }
                } else {
                    Command::DeleteRange { start: a, end: b }
                }
            }),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![4 => op(), 1 => vec(op(), 0..5).prop_map(Command::Batch)]
    }

    proptest! {
        #[test]
        fn apply_matches_a_btreemap_oracle(commands in vec(command(), 0..60)) {
            let mut state = RangeState::new(KeySpan::full());
            let mut oracle = BTreeMap::new();
            for (i, command) in commands.iter().enumerate() {
                let index = i as u64 + 1;
                let got = state.apply(index, 1, &Proposal { request_id: index, command: command.clone() });
                let want = oracle_apply(&mut oracle, command);
                prop_assert_eq!(got, want, "command {} = {:?}", i, command);
                prop_assert!(state.data == oracle);
                prop_assert_eq!(state.approximate_bytes(), recount(&state));
            }
        }

        #[test]
        fn replicas_applying_the_same_log_agree(commands in vec(command(), 0..40), split in small_key()) {
            let mut a = RangeState::new(KeySpan::full());
            let mut b = RangeState::new(KeySpan::full());
            let ra = run(&mut a, &commands);
            let rb = run(&mut b, &commands);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(&a, &b);
            let (right_a, right_b) = (a.split_at(&split).unwrap(), b.split_at(&split).unwrap());
            prop_assert_eq!(&right_a, &right_b);
            prop_assert_eq!(a.len() + right_a.len(), b.len() + right_b.len());
            prop_assert_eq!(a.approximate_bytes(), recount(&a));
            prop_assert_eq!(right_a.approximate_bytes(), recount(&right_a));
            prop_assert!(a.iter().all(|(k, _)| k < split.as_slice()));
            prop_assert!(right_a.iter().all(|(k, _)| k >= split.as_slice()));
        }

        #[test]
        fn scan_is_a_bounded_window_of_the_map(
            commands in vec(op(), 0..40),
            start in small_key(),
            end in proptest::option::of(small_key()),
            limit in 0usize..6,
        ) {
            let mut s = RangeState::new(KeySpan::full());
            run(&mut s, &commands);
            match s.scan(&start, end.as_deref(), limit) {
                Err(e) => prop_assert!(end.as_ref().is_some_and(|e| e < &start), "{}", e),
                Ok(got) => {
                    let want: Vec<(Vec<u8>, Vec<u8>)> = s
                        .data
                        .iter()
                        .filter(|(k, _)| **k >= start && end.as_ref().is_none_or(|e| *k < e))
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
