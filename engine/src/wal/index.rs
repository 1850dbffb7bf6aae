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
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::batch::{GroupId, HardState, LogEntry, WalItem, ENTRY_OVERHEAD_BYTES};
use super::file::SegmentFile;
use super::format::{self, EntrySpan};
use super::WalError;

/// A map keyed by group, hashed cheaply and deterministically (the
/// simulator needs every run of a seed to do the same thing).
pub(crate) type GroupMap<V> = HashMap<GroupId, V, BuildHasherDefault<GroupHasher>>;

/// Fibonacci hashing of a group id, folded so the low bits (the bucket)
/// depend on all of the id.
#[derive(Default)]
pub(crate) struct GroupHasher(u64);

impl Hasher for GroupHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

/// Where one entry lives: 24 bytes, one per live entry of every group.
/// Offsets fit in 32 bits because segments are at most 4 GiB (checked when
/// configured and when recovered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    pub term: u64,
    pub seq: u64,
    pub offset: u32,
    pub len: u32,
}

/// One group's log.
///
/// Invariants: `first >= 1`; `entries[i]` is the entry with index
/// `first + i`; `last = first - 1 + entries.len()`; `cache` holds runs of
/// consecutive entries, in order and without gaps, ending at `last` when
/// not empty.
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
    cache: VecDeque<CachedRun>,
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

/// Cached entries `first..=last` of a group, all written in one batch:
/// their encodings lie in `batch`, where the group's [`EntryLoc`]s say
/// (`base` is the segment offset of `batch[0]`). One record per appended
/// run, not per entry, so caching a 16-entry append costs one reference
/// count and one push. The batch's buffer lives until its last cached run
/// leaves, so the memory held can exceed the cache bound by at most one
/// batch per group still partly cached.
#[derive(Clone, Debug)]
struct CachedRun {
    first: u64,
    last: u64,
    batch: Arc<Vec<u8>>,
    base: u64,
    /// What the run counts against the cache bound: the sum of
    /// [`entry_cost_bytes`] over its entries.
    cost: usize,
}

/// What one cached entry counts against the cache bound:
/// [`LogEntry::size_bytes`] of the decoded entry.
fn entry_cost_bytes(loc: &EntryLoc) -> usize {
    loc.len as usize - format::ENTRY_FIXED_BYTES + ENTRY_OVERHEAD_BYTES
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
        self.cache.front().map_or(self.last() + 1, |run| run.first)
    }

    /// Cost of entries `lo..=hi` (all in the log).
    fn cost_of(&self, lo: u64, hi: u64) -> usize {
        let at = |i: u64| (i - self.first) as usize;
        self.entries
            .range(at(lo)..=at(hi))
            .map(entry_cost_bytes)
            .sum()
    }

    /// Uncaches entries `>= from`; call before the log drops them.
    fn uncache_from(&mut self, from: u64, delta: &mut CacheDelta) {
        while let Some(run) = self.cache.back() {
            if run.first >= from {
                let run = self.cache.pop_back().expect("back checked");
                delta.remove(run.cost, 1);
            } else if run.last >= from {
                let cost = self.cost_of(from, run.last);
                let run = self.cache.back_mut().expect("back checked");
                run.last = from - 1;
                run.cost -= cost;
                delta.remove(cost, 0);
                break;
            } else {
                break;
            }
        }
    }

    /// Uncaches entries `< to`; call before the log drops them.
    fn uncache_below(&mut self, to: u64, delta: &mut CacheDelta) {
        while let Some(run) = self.cache.front() {
            if run.last < to {
                let run = self.cache.pop_front().expect("front checked");
                delta.remove(run.cost, 1);
            } else if run.first < to {
                let cost = self.cost_of(run.first, to - 1);
                let run = self.cache.front_mut().expect("front checked");
                run.first = to;
                run.cost -= cost;
                delta.remove(cost, 0);
                break;
            } else {
                break;
            }
        }
    }

    fn uncache_all(&mut self, delta: &mut CacheDelta) {
        for run in self.cache.drain(..) {
            delta.remove(run.cost, 1);
        }
    }
}

/// Whether items come from a live append (with the batch they were encoded
/// in, which the cache keeps) or from the recovery scan.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ApplyMode<'a> {
    Live(&'a BatchBytes),
    Recovery,
}

/// The global byte bound of the entry cache. Runs are evicted in the order
/// they were inserted (FIFO across groups). The queue holds one key per
/// cached run, its last index: evicting the key evicts the group's cached
/// runs up to it. It may hold stale keys of entries already truncated,
/// which are skipped.
#[derive(Debug, Default)]
struct CacheBudget {
    bytes: usize,
    bytes_max: usize,
    fifo: VecDeque<(GroupId, u64)>,
    /// Runs cached.
    live: usize,
}

/// How applying one item changed the cache.
#[derive(Debug, Default)]
struct CacheDelta {
    added_bytes: usize,
    removed_bytes: usize,
    removed_runs: usize,
    /// Last index of the run added, if one was.
    added_run_last: Option<u64>,
}

impl CacheDelta {
    fn remove(&mut self, bytes: usize, runs: usize) {
        self.removed_bytes += bytes;
        self.removed_runs += runs;
    }
}

#[derive(Debug)]
pub(crate) struct Index {
    /// A hash map: with 10,000 groups a tree lookup per applied item showed
    /// in the thread running rounds. Everything that lists groups sorts.
    pub groups: GroupMap<GroupLog>,
    /// Open segments by sequence, the active one included.
    pub segments: BTreeMap<u64, Arc<dyn SegmentFile>>,
    pub active_seq: u64,
    /// Recovery replays from the first segment ever written, so every group
    /// starts fresh and exactly known.
    pub replay_from_origin: bool,
    cache: CacheBudget,
}

impl Index {
    pub fn new(cache_bytes_max: usize) -> Self {
        Self {
            groups: GroupMap::default(),
            segments: BTreeMap::new(),
            active_seq: 0,
            replay_from_origin: false,
            cache: CacheBudget {
                bytes_max: cache_bytes_max,
                ..CacheBudget::default()
            },
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
        item: &WalItem,
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
            if let Some(mut g) = self.groups.remove(&group) {
                let mut delta = CacheDelta::default();
                g.uncache_all(&mut delta);
                self.account(group, &delta);
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
        let mut delta = CacheDelta::default();
        let result = apply_to_group(g, group, item, seq, spans, batch, &mut delta);
        let now_default = g.is_default();
        self.account(group, &delta);
        if live {
            if now_default {
                self.groups.remove(&group);
            }
            self.evict();
        }
        result
    }

    fn account(&mut self, group: GroupId, delta: &CacheDelta) {
        let c = &mut self.cache;
        c.bytes = c.bytes + delta.added_bytes - delta.removed_bytes;
        c.live -= delta.removed_runs;
        if let Some(last) = delta.added_run_last {
            c.live += 1;
            c.fifo.push_back((group, last));
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
            while g.cache.front().is_some_and(|run| run.last <= index) {
                let run = g.cache.pop_front().expect("front checked");
                self.cache.bytes -= run.cost;
                self.cache.live -= 1;
            }
        }
        // Keep the queue within a constant factor of the live runs: drop
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
        let mut groups: Vec<GroupId> = self.groups.keys().copied().collect();
        groups.sort_unstable();
        groups
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
            offset: u64::from(loc.offset),
            reason,
        };
        if !g.cache.is_empty() && index >= g.cache_first() {
            let run = &g.cache[g.cache.partition_point(|run| run.last < index)];
            let at = (u64::from(loc.offset) - run.base) as usize;
            // The bytes that were written, kept in memory: checked like a
            // read from the segment.
            return format::decode_entry(group, &run.batch[at..at + loc.len as usize])
                .map_err(|e| corrupt(format!("group {group} cached entry {index}: {e}")));
        }
        let file = self
            .segments
            .get(&loc.seq)
            .ok_or_else(|| corrupt(format!("group {group} entry {index}: segment is gone")))?;
        let bytes = file
            .read_at(u64::from(loc.offset), loc.len as usize)
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

/// Applies a non-removal item to one group, recording in `delta` how the
/// cache changed so the caller can keep the global budget.
#[allow(clippy::too_many_arguments)]
fn apply_to_group(
    g: &mut GroupLog,
    group: GroupId,
    item: &WalItem,
    seq: u64,
    spans: &[EntrySpan],
    batch: Option<&BatchBytes>,
    delta: &mut CacheDelta,
) -> Result<(), String> {
    match *item {
        WalItem::Entries { ref entries, .. } => {
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
                reanchor(g, i.max(1), delta);
            } else if !fits {
                return Err(format!(
                    "group {group}: entries start at {i}, log holds {}..={}",
                    g.first,
                    g.last()
                ));
            }
            if let Some(far) = spans.iter().find(|s| u32::try_from(s.offset).is_err()) {
                return Err(format!(
                    "group {group}: entry at offset {} is beyond the 4 GiB a segment may have",
                    far.offset
                ));
            }
            truncate_from(g, i, delta);
            let mut cost = 0;
            for (e, span) in entries.iter().zip(spans) {
                let loc = EntryLoc {
                    term: e.term,
                    seq,
                    offset: span.offset as u32,
                    len: span.len,
                };
                cost += entry_cost_bytes(&loc);
                g.entries.push_back(loc);
            }
            if let Some(batch) = batch {
                let last = i + entries.len() as u64 - 1;
                debug_assert!(spans.iter().all(|s| s.offset >= batch.base
                    && s.offset + u64::from(s.len) <= batch.base + batch.bytes.len() as u64));
                g.cache.push_back(CachedRun {
                    first: i,
                    last,
                    batch: Arc::clone(&batch.bytes),
                    base: batch.base,
                    cost,
                });
                delta.added_bytes += cost;
                delta.added_run_last = Some(last);
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
                    reanchor(g, from_index.max(1), delta);
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
            truncate_from(g, from_index, delta);
        }
        WalItem::CompactPrefix { to_index, .. } => {
            match g.anchor {
                Anchor::Unknown => return Ok(()),
                Anchor::Inferred if to_index > g.last() + 1 => {
                    reanchor(g, to_index.max(1), delta);
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
                g.uncache_below(to_index, delta);
                let n = (to_index - g.first) as usize;
                let prev = g.entries[n - 1];
                g.prev_term = prev.term;
                g.prev_seq = Some(prev.seq);
                g.entries.drain(..n);
                g.first = to_index;
            }
        }
        WalItem::SnapshotMarker { index, term, .. } => {
            let first = index
                .checked_add(1)
                .ok_or_else(|| format!("group {group}: snapshot index {index} overflows"))?;
            g.uncache_all(delta);
            g.first = first;
            g.prev_term = term;
            g.prev_seq = Some(seq);
            g.entries.clear();
            g.anchor = Anchor::Exact;
        }
        WalItem::GroupRemoved { .. } => unreachable!("handled by Index::apply"),
    }
    Ok(())
}

/// Recovery only: restarts an inferred log as empty at `first`.
fn reanchor(g: &mut GroupLog, first: u64, delta: &mut CacheDelta) {
    g.uncache_all(delta);
    g.first = first;
    g.prev_term = 0;
    g.prev_seq = None;
    g.entries.clear();
    g.anchor = Anchor::Inferred;
}

/// Drops entries with index `>= from` (no-op past the end).
fn truncate_from(g: &mut GroupLog, from: u64, delta: &mut CacheDelta) {
    if from > g.last() {
        return;
    }
    g.uncache_from(from, delta);
    let keep = (from - g.first) as usize;
    g.entries.truncate(keep);
}

/// Per-round view of `(first, last)` per group for validating batches before
/// they are written: the index's state plus the effect of batches accepted
/// earlier in the same round.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    bounds: GroupMap<(u64, u64)>,
    /// The batch being checked, reused between batches.
    local: GroupMap<(u64, u64)>,
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

    /// Forgets the previous round (keeping the memory).
    pub fn clear(&mut self) {
        self.bounds.clear();
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
            .apply(&item, 1, &spans, ApplyMode::Live(&batch))
            .unwrap();
        for round in 0..20_000u64 {
            let (item, spans, batch) = entries(5..=5 + round % 3, 10);
            index
                .apply(&item, 1, &spans, ApplyMode::Live(&batch))
                .unwrap();
            assert!(index.cache.bytes <= 2_000);
            assert!(index.cache.fifo.len() <= 2 * index.cache.live + 1024 + 3);
        }
        assert_eq!(index.last_index(1), 5 + 19_999 % 3);
        let g = &index.groups[&1];
        assert_eq!(g.cache.len(), index.cache.live);
        assert_eq!(g.cache.back().map(|run| run.last), Some(g.last()));
        let cost: usize = g.cache.iter().map(|run| run.cost).sum();
        assert_eq!(cost, index.cache.bytes);
        assert_eq!(cost, g.cost_of(g.cache_first(), g.last()));
        let last = index.entry(1, g.last()).unwrap();
        assert_eq!((last.index, last.data.len()), (g.last(), 10));
    }

    #[test]
    fn recovery_reanchors_inferred_starts_but_not_exact_ones() {
        let mut index = Index::new(0);
        // Replay starting after purged segments: group 1 is first seen at 7.
        let (item, spans, _) = entries(7..=9, 1);
        index.apply(&item, 3, &spans, ApplyMode::Recovery).unwrap();
        assert_eq!(index.first_index(1), 7);
        // History of dead entries contradicts the guess: re-anchor.
        let (item, spans, _) = entries(2..=3, 1);
        index.apply(&item, 3, &spans, ApplyMode::Recovery).unwrap();
        assert_eq!((index.first_index(1), index.last_index(1)), (2, 3));
        // A snapshot marker fixes the start: contradictions are corruption.
        let marker = WalItem::SnapshotMarker {
            group: 1,
            index: 10,
            term: 2,
        };
        index.apply(&marker, 3, &[], ApplyMode::Recovery).unwrap();
        let (item, spans, _) = entries(5..=5, 1);
        assert!(index.apply(&item, 3, &spans, ApplyMode::Recovery).is_err());
    }
}
