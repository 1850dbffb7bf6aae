//! The in-memory index: for every group, where each live entry sits in the
//! segments, the term before the log, and the latest hard state; plus a
//! byte-bounded cache of recent entries.
//!
//! The index is the only reader of segments after recovery: it maps an entry
//! to `(segment, offset, len)`, reads those bytes (through the mapping on a
//! real disk), checks the entry's own checksum and its index and term, and
//! only then returns it.
//!
//! Applying an item follows the rules documented on [`WalItem`]. In
//! [`ApplyMode::Live`] the items were validated before they were written, so
//! a failure is a bug. In [`ApplyMode::Recovery`] the replay may start after
//! purged segments, so a group's start is [`Anchor::Unknown`] until an item
//! fixes it. A snapshot marker or a removal fixes it exactly; the first
//! `Entries` seen only lets recovery *infer* it. Purge never frees a segment
//! holding state a live group still needs (see `purge.rs`), so everything a
//! live group's final state depends on is in the replay; what precedes it
//! for that group is history of dead entries, or of an earlier incarnation
//! that was removed. For an inferred start, items that contradict it are
//! such history and re-anchor the group instead of failing. For an exact
//! start, a contradiction is corruption.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::batch::{GroupId, HardState, LogEntry, WalItem, ENTRY_OVERHEAD_BYTES};
use super::file::SegmentFile;
use super::format::{self, EntrySpan};
use super::WalError;

/// Where one entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    pub term: u64,
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
}

/// One group's log.
///
/// Invariants: `first >= 1`; `entries[i]` is the entry with index
/// `first + i`; `last = first - 1 + entries.len()`; `cache` holds the entries
/// with indexes `last + 1 - cache.len() ..= last`.
#[derive(Debug)]
pub(crate) struct GroupLog {
    pub first: u64,
    /// Term of entry `first - 1` (0 when unknown or `first == 1`).
    pub prev_term: u64,
    /// Segment that records `prev_term` (the entry `first - 1`, or the
    /// snapshot marker). Purge must keep it while it defines the log start.
    pub prev_seq: Option<u64>,
    pub entries: VecDeque<EntryLoc>,
    pub hard_state: Option<HardState>,
    /// Segment holding the latest hard state.
    pub hard_state_seq: u64,
    cache: VecDeque<CachedEntry>,
    anchor: Anchor,
}

/// The encoded bytes of one written batch; `base` is the segment offset of
/// `bytes[0]`. Cached entries point into it instead of owning copies, so
/// caching a batch costs one reference per entry and no allocation.
#[derive(Clone, Debug)]
pub(crate) struct BatchBytes {
    pub bytes: Arc<Vec<u8>>,
    pub base: u64,
}

/// A cached entry: where its encoding sits in the batch it was written
/// with. The batch's buffer lives until its last cached entry leaves, so the
/// memory held can exceed the cache bound by at most one batch per group
/// still partly cached.
#[derive(Clone, Debug)]
struct CachedEntry {
    index: u64,
    batch: Arc<Vec<u8>>,
    offset: u32,
    len: u32,
}

impl CachedEntry {
    /// What the entry counts against the cache bound:
    /// [`LogEntry::size_bytes`] of the decoded entry.
    fn cost_bytes(&self) -> usize {
        self.len as usize - format::ENTRY_FIXED_BYTES + ENTRY_OVERHEAD_BYTES
    }

    fn encoded(&self) -> &[u8] {
        &self.batch[self.offset as usize..(self.offset + self.len) as usize]
    }
}

/// How well recovery knows where a group's log starts (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anchor {
    /// Nothing seen yet that fixes the start.
    Unknown,
    /// Guessed from the first entries seen; contradictions re-anchor.
    Inferred,
    /// Known: a live group, or fixed by a marker or a removal.
    Exact,
}

impl GroupLog {
    fn fresh(anchor: Anchor) -> Self {
        Self {
            first: 1,
            prev_term: 0,
            prev_seq: None,
            entries: VecDeque::new(),
            hard_state: None,
            hard_state_seq: 0,
            cache: VecDeque::new(),
            anchor,
        }
    }

    pub fn last(&self) -> u64 {
        self.first - 1 + self.entries.len() as u64
    }

    /// True when the group is indistinguishable from one never written.
    fn is_default(&self) -> bool {
        self.first == 1
            && self.prev_term == 0
            && self.entries.is_empty()
            && self.hard_state.is_none()
    }

    fn cache_first(&self) -> u64 {
        self.last() + 1 - self.cache.len() as u64
    }
}

/// Whether items come from a live append (with the batch they were encoded
/// in, which the cache keeps) or from the recovery scan.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ApplyMode<'a> {
    Live(&'a BatchBytes),
    Recovery,
}

/// The global byte bound of the entry cache. Entries are evicted in the order
/// they were inserted (FIFO across groups). The queue holds one key per
/// appended run of entries, its last index: evicting the key evicts the
/// group's cached entries up to it, so a 16-entry append costs one key and
/// one group lookup at eviction instead of sixteen. It may hold stale keys
/// of entries already truncated, which are skipped.
#[derive(Debug, Default)]
struct CacheBudget {
    bytes: usize,
    bytes_max: usize,
    fifo: VecDeque<(GroupId, u64)>,
    live: usize,
}

#[derive(Debug)]
pub(crate) struct Index {
    pub groups: BTreeMap<GroupId, GroupLog>,
    /// Open segments by sequence, the active one included.
    pub segments: BTreeMap<u64, Arc<dyn SegmentFile>>,
    pub active_seq: u64,
    /// Recovery replays from the first segment ever written, so every group
    /// starts fresh and exactly known.
    pub replay_from_origin: bool,
    cache: CacheBudget,
    scratch: Scratch,
}

/// Buffers `apply` reuses so that applying an item allocates nothing.
#[derive(Debug, Default)]
struct Scratch {
    dropped: Vec<CachedEntry>,
    added: Vec<(u64, usize)>,
}

impl Index {
    pub fn new(cache_bytes_max: usize) -> Self {
        Self {
            groups: BTreeMap::new(),
            segments: BTreeMap::new(),
            active_seq: 0,
            replay_from_origin: false,
            cache: CacheBudget {
                bytes_max: cache_bytes_max,
                ..CacheBudget::default()
            },
            scratch: Scratch::default(),
        }
    }

    /// Bytes currently cached.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes
    }

    /// Applies one item written at segment `seq`; `spans` are the absolute
    /// segment offsets of its entries. `Err` carries the broken rule.
    pub fn apply(
        &mut self,
        item: WalItem,
        seq: u64,
        spans: &[EntrySpan],
        mode: ApplyMode<'_>,
    ) -> Result<(), String> {
        let group = item.group();
        let batch = match mode {
            ApplyMode::Live(batch) => Some(batch),
            ApplyMode::Recovery => None,
        };
        let live = batch.is_some();
        if let WalItem::GroupRemoved { .. } = item {
            if let Some(g) = self.groups.remove(&group) {
                self.uncache_all(g.cache.iter());
            }
            if !live {
                // Known from here on: a re-created group starts fresh.
                self.groups.insert(group, GroupLog::fresh(Anchor::Exact));
            }
            return Ok(());
        }
        let g = self.groups.entry(group).or_insert_with(|| {
            let exact = live || self.replay_from_origin;
            GroupLog::fresh(if exact {
                Anchor::Exact
            } else {
                Anchor::Unknown
            })
        });
        let mut dropped = std::mem::take(&mut self.scratch.dropped);
        let mut added = std::mem::take(&mut self.scratch.added);
        let result = apply_to_group(g, group, item, seq, spans, batch, &mut dropped, &mut added);
        let now_default = g.is_default();
        self.uncache_all(dropped.iter());
        for &(_, bytes) in &added {
            self.cache.bytes += bytes;
            self.cache.live += 1;
        }
        if let Some(&(last, _)) = added.last() {
            self.cache.fifo.push_back((group, last));
        }
        dropped.clear();
        added.clear();
        self.scratch = Scratch { dropped, added };
        if live {
            if now_default {
                self.groups.remove(&group);
            }
            self.evict();
        }
        result
    }

    fn uncache_all<'a>(&mut self, entries: impl Iterator<Item = &'a CachedEntry>) {
        for e in entries {
            self.cache.bytes -= e.cost_bytes();
            self.cache.live -= 1;
        }
    }

    fn evict(&mut self) {
        while self.cache.bytes > self.cache.bytes_max {
            let Some((group, index)) = self.cache.fifo.pop_front() else {
                break;
            };
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            while g.cache.front().is_some_and(|e| e.index <= index) {
                let e = g.cache.pop_front().expect("front checked");
                self.cache.bytes -= e.cost_bytes();
                self.cache.live -= 1;
            }
        }
        // Keep the queue within a constant factor of the live entries: drop
        // keys of entries no longer cached and all but the newest key of an
        // index that was truncated and appended again. Afterwards the queue
        // holds at most one key per cached entry, so this runs rarely.
        if self.cache.fifo.len() > 2 * self.cache.live + 1024 {
            let groups = &self.groups;
            let mut seen = std::collections::HashSet::new();
            let mut kept: VecDeque<(GroupId, u64)> = self
                .cache
                .fifo
                .iter()
                .rev()
                .filter(|&&(group, index)| {
                    groups.get(&group).is_some_and(|g| {
                        !g.cache.is_empty() && index >= g.cache_first() && index <= g.last()
                    }) && seen.insert((group, index))
                })
                .copied()
                .collect();
            kept.make_contiguous().reverse();
            self.cache.fifo = kept;
        }
    }

    /// Ends recovery: every group is anchored, default ones are dropped.
    pub fn finish_recovery(&mut self) {
        self.groups.retain(|_, g| !g.is_default());
        for g in self.groups.values_mut() {
            g.anchor = Anchor::Exact;
        }
    }

    pub fn first_index(&self, group: GroupId) -> u64 {
        self.groups.get(&group).map_or(1, |g| g.first)
    }

    pub fn last_index(&self, group: GroupId) -> u64 {
        self.groups.get(&group).map_or(0, GroupLog::last)
    }

    pub fn hard_state(&self, group: GroupId) -> Option<HardState> {
        self.groups.get(&group).and_then(|g| g.hard_state)
    }

    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.keys().copied().collect()
    }

    pub fn term(&self, group: GroupId, index: u64) -> Result<u64, WalError> {
        let Some(g) = self.groups.get(&group) else {
            return if index == 0 {
                Ok(0)
            } else {
                Err(WalError::EntryUnavailable {
                    group,
                    index,
                    last_index: 0,
                })
            };
        };
        if index + 1 == g.first {
            return Ok(g.prev_term);
        }
        if index < g.first {
            return Err(WalError::EntryCompacted {
                group,
                index,
                first_index: g.first,
            });
        }
        if index > g.last() {
            return Err(WalError::EntryUnavailable {
                group,
                index,
                last_index: g.last(),
            });
        }
        Ok(g.entries[(index - g.first) as usize].term)
    }

    pub fn entries(
        &self,
        group: GroupId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<LogEntry>, WalError> {
        let (first, last) = (self.first_index(group), self.last_index(group));
        if lo < first {
            return Err(WalError::EntryCompacted {
                group,
                index: lo,
                first_index: first,
            });
        }
        if hi > last + 1 {
            return Err(WalError::EntryUnavailable {
                group,
                index: hi - 1,
                last_index: last,
            });
        }
        let mut out = Vec::new();
        let mut total = 0u64;
        for index in lo..hi {
            let entry = self.entry(group, index)?;
            total += entry.size_bytes() as u64;
            if !out.is_empty() && total > max_bytes {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// One live entry: from the cache, or read back and verified.
    pub fn entry(&self, group: GroupId, index: u64) -> Result<LogEntry, WalError> {
        let g = &self.groups[&group];
        let loc = g.entries[(index - g.first) as usize];
        let corrupt = |reason: String| WalError::Corruption {
            segment: loc.seq,
            path: format::segment_file_name(loc.seq).into(),
            offset: loc.offset,
            reason,
        };
        if !g.cache.is_empty() && index >= g.cache_first() {
            let cached = &g.cache[(index - g.cache_first()) as usize];
            // The bytes that were written, kept in memory: checked like a
            // read from the segment.
            return format::decode_entry(group, cached.encoded())
                .map_err(|e| corrupt(format!("group {group} cached entry {index}: {e}")));
        }
        let file = self
            .segments
            .get(&loc.seq)
            .ok_or_else(|| corrupt(format!("group {group} entry {index}: segment is gone")))?;
        let bytes = file
            .read_at(loc.offset, loc.len as usize)
            .map_err(|e| corrupt(format!("group {group} entry {index}: read failed: {e}")))?;
        let entry = format::decode_entry(group, &bytes)
            .map_err(|e| corrupt(format!("group {group} entry {index}: {e}")))?;
        if entry.index != index || entry.term != loc.term {
            return Err(corrupt(format!(
                "group {group}: expected entry {index} term {}, found entry {} term {}",
                loc.term, entry.index, entry.term
            )));
        }
        Ok(entry)
    }
}

/// Applies a non-removal item to one group. Entries dropped from the cache
/// are pushed to `dropped`, and `(index, bytes)` of entries added to it to
/// `added`, so the caller can keep the global budget.
#[allow(clippy::too_many_arguments)]
fn apply_to_group(
    g: &mut GroupLog,
    group: GroupId,
    item: WalItem,
    seq: u64,
    spans: &[EntrySpan],
    batch: Option<&BatchBytes>,
    dropped: &mut Vec<CachedEntry>,
    added: &mut Vec<(u64, usize)>,
) -> Result<(), String> {
    match item {
        WalItem::Entries { entries, .. } => {
            let Some(head) = entries.first() else {
                return Ok(());
            };
            let i = head.index;
            if spans.len() != entries.len() {
                return Err(format!(
                    "group {group}: entry positions do not match entries"
                ));
            }
            let fits = i >= g.first && i <= g.last() + 1;
            if g.anchor == Anchor::Unknown || (g.anchor == Anchor::Inferred && !fits) {
                reanchor(g, i.max(1), dropped);
            } else if !fits {
                return Err(format!(
                    "group {group}: entries start at {i}, log holds {}..={}",
                    g.first,
                    g.last()
                ));
            }
            truncate_from(g, i, dropped);
            for (e, span) in entries.iter().zip(spans) {
                g.entries.push_back(EntryLoc {
                    term: e.term,
                    seq,
                    offset: span.offset,
                    len: span.len,
                });
            }
            if let Some(batch) = batch {
                for (e, span) in entries.iter().zip(spans) {
                    let cached = CachedEntry {
                        index: e.index,
                        batch: Arc::clone(&batch.bytes),
                        offset: u32::try_from(span.offset - batch.base)
                            .expect("an entry lies inside its batch"),
                        len: span.len,
                    };
                    added.push((e.index, cached.cost_bytes()));
                    g.cache.push_back(cached);
                }
            }
        }
        WalItem::HardState { state, .. } => {
            g.hard_state = Some(state);
            g.hard_state_seq = seq;
        }
        WalItem::TruncateSuffix { from_index, .. } => {
            match g.anchor {
                Anchor::Unknown => return Ok(()),
                Anchor::Inferred if from_index < g.first => {
                    reanchor(g, from_index.max(1), dropped);
                    return Ok(());
                }
                _ => {}
            }
            if from_index < g.first {
                return Err(format!(
                    "group {group}: truncate from {from_index} below first index {}",
                    g.first
                ));
            }
            truncate_from(g, from_index, dropped);
        }
        WalItem::CompactPrefix { to_index, .. } => {
            match g.anchor {
                Anchor::Unknown => return Ok(()),
                Anchor::Inferred if to_index > g.last() + 1 => {
                    reanchor(g, to_index.max(1), dropped);
                    return Ok(());
                }
                _ => {}
            }
            if to_index > g.last() + 1 {
                return Err(format!(
                    "group {group}: compact to {to_index} past last index {}",
                    g.last()
                ));
            }
            if to_index > g.first {
                let n = (to_index - g.first) as usize;
                let prev = g.entries[n - 1];
                g.prev_term = prev.term;
                g.prev_seq = Some(prev.seq);
                g.entries.drain(..n);
                g.first = to_index;
                while g.cache.front().is_some_and(|e| e.index < to_index) {
                    dropped.push(g.cache.pop_front().expect("front checked"));
                }
            }
        }
        WalItem::SnapshotMarker { index, term, .. } => {
            let first = index
                .checked_add(1)
                .ok_or_else(|| format!("group {group}: snapshot index {index} overflows"))?;
            g.first = first;
            g.prev_term = term;
            g.prev_seq = Some(seq);
            g.entries.clear();
            dropped.extend(g.cache.drain(..));
            g.anchor = Anchor::Exact;
        }
        WalItem::GroupRemoved { .. } => unreachable!("handled by Index::apply"),
    }
    Ok(())
}

/// Recovery only: restarts an inferred log as empty at `first`.
fn reanchor(g: &mut GroupLog, first: u64, dropped: &mut Vec<CachedEntry>) {
    g.first = first;
    g.prev_term = 0;
    g.prev_seq = None;
    g.entries.clear();
    dropped.extend(g.cache.drain(..));
    g.anchor = Anchor::Inferred;
}

/// Drops entries with index `>= from` (no-op past the end).
fn truncate_from(g: &mut GroupLog, from: u64, dropped: &mut Vec<CachedEntry>) {
    if from > g.last() {
        return;
    }
    let keep = (from - g.first) as usize;
    g.entries.truncate(keep);
    while g.cache.back().is_some_and(|e| e.index >= from) {
        dropped.push(g.cache.pop_back().expect("back checked"));
    }
}

/// Per-round view of `(first, last)` per group for validating batches before
/// they are written: the index's state plus the effect of batches accepted
/// earlier in the same round.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    bounds: HashMap<GroupId, (u64, u64)>,
    /// The batch being checked, reused between batches.
    local: HashMap<GroupId, (u64, u64)>,
}

impl Overlay {
    fn bounds(&self, index: &Index, group: GroupId) -> (u64, u64) {
        self.bounds.get(&group).copied().unwrap_or_else(|| {
            index
                .groups
                .get(&group)
                .map_or((1, 0), |g| (g.first, g.last()))
        })
    }

    /// Checks `items` in order against the log; on success records their
    /// effect so later batches of the round see it.
    pub fn validate(&mut self, index: &Index, items: &[WalItem]) -> Result<(), WalError> {
        let mut local = std::mem::take(&mut self.local);
        local.clear();
        for item in items {
            let group = item.group();
            let (first, last) = local
                .get(&group)
                .copied()
                .unwrap_or_else(|| self.bounds(index, group));
            match step_bounds(group, first, last, item) {
                Ok(next) => {
                    local.insert(group, next);
                }
                Err(reason) => {
                    self.local = local;
                    return Err(WalError::InvalidBatch(reason));
                }
            }
        }
        self.bounds.extend(local.drain());
        self.local = local;
        Ok(())
    }
}

/// The `(first, last)` of a group after `item`, or why the item is invalid.
fn step_bounds(
    group: GroupId,
    first: u64,
    last: u64,
    item: &WalItem,
) -> Result<(u64, u64), String> {
    match item {
        WalItem::Entries { entries, .. } => {
            let Some(head) = entries.first() else {
                return Ok((first, last));
            };
            let i = head.index;
            for (k, e) in entries.iter().enumerate() {
                if Some(e.index) != i.checked_add(k as u64) {
                    return Err(format!(
                        "group {group}: entries are not consecutive at position {k}"
                    ));
                }
            }
            if i == 0 || i < first || i > last + 1 {
                return Err(format!(
                    "group {group}: entries start at {i} but the log holds {first}..={last} \
                     (append at most at last + 1; snapshot first to start later)"
                ));
            }
            Ok((first, i - 1 + entries.len() as u64))
        }
        WalItem::HardState { .. } => Ok((first, last)),
        WalItem::TruncateSuffix { from_index, .. } => {
            if *from_index < first {
                return Err(format!(
                    "group {group}: truncate from {from_index} reaches below first index {first}"
                ));
            }
            Ok((first, last.min(from_index - 1)))
        }
        WalItem::CompactPrefix { to_index, .. } => {
            if *to_index > last + 1 {
                return Err(format!(
                    "group {group}: compact to {to_index} beyond last index {last} \
                     (use a snapshot marker to skip ahead)"
                ));
            }
            Ok((first.max(*to_index), last))
        }
        WalItem::SnapshotMarker { index, .. } => {
            if *index == u64::MAX {
                return Err(format!("group {group}: snapshot index overflows"));
            }
            Ok((index + 1, *index))
        }
        WalItem::GroupRemoved { .. } => Ok((1, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `Entries` item of group 1, its entry spans as if its batch
    /// started at segment offset 0, and that batch.
    fn entries(
        range: std::ops::RangeInclusive<u64>,
        size: usize,
    ) -> (WalItem, Vec<EntrySpan>, BatchBytes) {
        let entries: Vec<LogEntry> = range
            .map(|index| LogEntry {
                index,
                term: 1,
                kind: 0,
                data: vec![0; size],
            })
            .collect();
        let item = WalItem::Entries { group: 1, entries };
        let (mut bytes, mut spans) = (Vec::new(), Vec::new());
        format::encode_item(&item, &mut bytes, &mut spans);
        let batch = BatchBytes {
            bytes: Arc::new(bytes),
            base: 0,
        };
        (item, spans, batch)
    }

    #[test]
    fn cache_and_its_queue_stay_bounded_under_append_truncate_churn() {
        let mut index = Index::new(2_000);
        let (item, spans, batch) = entries(1..=4, 10);
        index
            .apply(item, 1, &spans, ApplyMode::Live(&batch))
            .unwrap();
        for round in 0..20_000u64 {
            let (item, spans, batch) = entries(5..=5 + round % 3, 10);
            index
                .apply(item, 1, &spans, ApplyMode::Live(&batch))
                .unwrap();
            assert!(index.cache.bytes <= 2_000);
            assert!(index.cache.fifo.len() <= 2 * index.cache.live + 1024 + 3);
        }
        assert_eq!(index.last_index(1), 5 + 19_999 % 3);
        let g = &index.groups[&1];
        assert_eq!(g.cache.len(), index.cache.live);
        assert_eq!(g.cache.back().map(|e| e.index), Some(g.last()));
        let last = index.entry(1, g.last()).unwrap();
        assert_eq!((last.index, last.data.len()), (g.last(), 10));
    }

    #[test]
    fn recovery_reanchors_inferred_starts_but_not_exact_ones() {
        let mut index = Index::new(0);
        // Replay starting after purged segments: group 1 is first seen at 7.
        let (item, spans, _) = entries(7..=9, 1);
        index.apply(item, 3, &spans, ApplyMode::Recovery).unwrap();
        assert_eq!(index.first_index(1), 7);
        // History of dead entries contradicts the guess: re-anchor.
        let (item, spans, _) = entries(2..=3, 1);
        index.apply(item, 3, &spans, ApplyMode::Recovery).unwrap();
        assert_eq!((index.first_index(1), index.last_index(1)), (2, 3));
        // A snapshot marker fixes the start: contradictions are corruption.
        let marker = WalItem::SnapshotMarker {
            group: 1,
            index: 10,
            term: 2,
        };
        index.apply(marker, 3, &[], ApplyMode::Recovery).unwrap();
        let (item, spans, _) = entries(5..=5, 1);
        assert!(index.apply(item, 3, &spans, ApplyMode::Recovery).is_err());
    }
}
