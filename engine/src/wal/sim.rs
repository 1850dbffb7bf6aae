//! A seeded crash-recovery simulation of the WAL, and the oracle it checks
//! against.
//!
//! [`run_seed`] drives the real WAL code over [`SimFs`]: random batches over
//! about 50 groups (appends, conflicting overwrites, hard states, truncations,
//! compactions, snapshot markers, removals), purges, rewrites, injected IO
//! errors and power cuts at random operations, crashes that tear the last
//! unsynced write, and reopens. After every reopen the recovered log of every
//! group must equal the [`Oracle`]: every acknowledged batch is there, and a
//! batch whose append failed is either wholly there or wholly absent. The
//! same seed replays the same run exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::batch::{GroupId, HardState, LogEntry, WalItem, WriteBatch};
use super::sim_fs::{SimFs, SimRng};
use super::{SyncMode, Wal, WalConfig, WalError};

/// The reference model of one group's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OracleGroup {
    /// First index that may be in the log.
    pub first: u64,
    /// Term of entry `first - 1`.
    pub prev_term: u64,
    /// Entries `first..`.
    pub entries: Vec<LogEntry>,
    /// Latest hard state.
    pub hard_state: Option<HardState>,
}

impl Default for OracleGroup {
    fn default() -> Self {
        Self {
            first: 1,
            prev_term: 0,
            entries: Vec::new(),
            hard_state: None,
        }
    }
}

impl OracleGroup {
    /// Last index in the log.
    pub fn last(&self) -> u64 {
        self.first - 1 + self.entries.len() as u64
    }

    fn is_default(&self) -> bool {
        self.first == 1
            && self.prev_term == 0
            && self.entries.is_empty()
            && self.hard_state.is_none()
    }
}

/// The WAL's semantics written as plainly as possible: a map of groups to
/// vectors. Tests and the simulator compare the WAL against it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Oracle {
    groups: BTreeMap<GroupId, OracleGroup>,
}

impl Oracle {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The groups with any state.
    pub fn groups(&self) -> &BTreeMap<GroupId, OracleGroup> {
        &self.groups
    }

    /// `(first, last)` of `group`.
    pub fn bounds(&self, group: GroupId) -> (u64, u64) {
        self.groups
            .get(&group)
            .map_or((1, 0), |g| (g.first, g.last()))
    }

    /// Applies `batch` whole, or returns why it is invalid and changes nothing.
    pub fn apply(&mut self, batch: &WriteBatch) -> Result<(), String> {
        let mut next = self.clone();
        for item in batch.items() {
            next.apply_item(item)?;
        }
        *self = next;
        Ok(())
    }

    fn apply_item(&mut self, item: &WalItem) -> Result<(), String> {
        let group = item.group();
        if let WalItem::GroupRemoved { .. } = item {
            self.groups.remove(&group);
            return Ok(());
        }
        let g = self.groups.entry(group).or_default();
        match item {
            WalItem::Entries { entries, .. } => {
                if let Some(head) = entries.first() {
                    let i = head.index;
                    if i == 0 || i < g.first || i > g.last() + 1 {
                        return Err(format!("group {group}: gap at {i}"));
                    }
                    for (k, e) in entries.iter().enumerate() {
                        if e.index != i + k as u64 {
                            return Err(format!("group {group}: not consecutive"));
                        }
                    }
                    g.entries.truncate((i - g.first) as usize);
                    g.entries.extend(entries.iter().cloned());
                }
            }
            WalItem::HardState { state, .. } => g.hard_state = Some(*state),
            WalItem::TruncateSuffix { from_index, .. } => {
                if *from_index < g.first {
                    return Err(format!("group {group}: truncate below first"));
                }
                let keep = ((from_index - g.first) as usize).min(g.entries.len());
                g.entries.truncate(keep);
            }
            WalItem::CompactPrefix { to_index, .. } => {
                if *to_index > g.last() + 1 {
                    return Err(format!("group {group}: compact past last"));
                }
                if *to_index > g.first {
                    let n = (to_index - g.first) as usize;
                    g.prev_term = g.entries[n - 1].term;
                    g.entries.drain(..n);
                    g.first = *to_index;
                }
            }
            WalItem::SnapshotMarker { index, term, .. } => {
                g.first = index + 1;
                g.prev_term = *term;
                g.entries.clear();
            }
            WalItem::GroupRemoved { .. } => {}
        }
        if g.is_default() {
            self.groups.remove(&group);
        }
        Ok(())
    }

    /// Compares one group of `wal` with the model.
    pub fn check_group(&self, wal: &Wal, group: GroupId) -> Result<(), String> {
        let model = self.groups.get(&group).cloned().unwrap_or_default();
        let (first, last) = (wal.first_index(group), wal.last_index(group));
        if (first, last) != (model.first, model.last()) {
            return Err(format!(
                "group {group}: WAL holds {first}..={last}, oracle {}..={}",
                model.first,
                model.last()
            ));
        }
        let prev = wal
            .term(group, first - 1)
            .map_err(|e| format!("group {group}: term(first - 1): {e}"))?;
        if prev != model.prev_term {
            return Err(format!(
                "group {group}: term({}) is {prev}, oracle says {}",
                first - 1,
                model.prev_term
            ));
        }
        if wal.hard_state(group) != model.hard_state {
            return Err(format!(
                "group {group}: hard state {:?}, oracle {:?}",
                wal.hard_state(group),
                model.hard_state
            ));
        }
        let entries = wal
            .entries(group, first, last + 1, u64::MAX)
            .map_err(|e| format!("group {group}: entries: {e}"))?;
        if entries != model.entries {
            return Err(format!("group {group}: entries differ from the oracle"));
        }
        Ok(())
    }

    /// Compares every group of `wal` with the model.
    pub fn check(&self, wal: &Wal) -> Result<(), String> {
        let wal_groups: BTreeSet<GroupId> = wal.groups().into_iter().collect();
        let model_groups: BTreeSet<GroupId> = self.groups.keys().copied().collect();
        if wal_groups != model_groups {
            let extra: Vec<_> = wal_groups.difference(&model_groups).collect();
            let missing: Vec<_> = model_groups.difference(&wal_groups).collect();
            return Err(format!(
                "group sets differ: WAL has extra {extra:?}, is missing {missing:?}"
            ));
        }
        for &group in &model_groups {
            self.check_group(wal, group)?;
        }
        Ok(())
    }
}

/// Generates valid random batches against a model of the log.
#[derive(Debug)]
pub struct BatchGen {
    groups: u64,
    term: u64,
}

impl BatchGen {
    /// Batches over groups `1..=groups`.
    pub fn new(groups: u64) -> Self {
        Self { groups, term: 1 }
    }

    /// A random batch valid on top of `oracle`.
    pub fn batch(&mut self, rng: &mut SimRng, oracle: &Oracle) -> WriteBatch {
        if rng.chance(5) {
            self.term += 1;
        }
        let mut bounds: HashMap<GroupId, (u64, u64)> = HashMap::new();
        let mut batch = WriteBatch::new();
        for _ in 0..rng.range(1, 6) {
            let group = rng.range(1, self.groups);
            let (first, last) = *bounds.entry(group).or_insert_with(|| oracle.bounds(group));
            let next = self.item(rng, &mut batch, group, first, last);
            bounds.insert(group, next);
        }
        batch
    }

    fn item(
        &self,
        rng: &mut SimRng,
        batch: &mut WriteBatch,
        group: GroupId,
        first: u64,
        last: u64,
    ) -> (u64, u64) {
        let roll = rng.below(100);
        match roll {
            0..=59 => {
                let start = if roll >= 50 && last >= first {
                    rng.range(first, last)
                } else {
                    last + 1
                };
                let n = rng.range(1, 4);
                let entries = (start..start + n)
                    .map(|index| random_entry(rng, index, self.term))
                    .collect();
                batch.add_entries(group, entries);
                (first, start + n - 1)
            }
            60..=79 => {
                let state = HardState {
                    term: self.term,
                    vote: rng.below(5),
                    commit: rng.range(0, last),
                };
                batch.set_hard_state(group, state);
                (first, last)
            }
            80..=85 => {
                let from = rng.range(first, last + 1);
                batch.truncate_suffix(group, from);
                (first, last.min(from - 1))
            }
            86..=94 => {
                let to = rng.range(first, last + 1);
                batch.compact_prefix(group, to);
                (first.max(to), last)
            }
            95..=97 => {
                let index = last + rng.below(5);
                batch.snapshot_marker(group, index, self.term);
                (index + 1, index)
            }
            _ => {
                batch.remove_group(group);
                (1, 0)
            }
        }
    }
}

fn random_entry(rng: &mut SimRng, index: u64, term: u64) -> LogEntry {
    let len = if rng.chance(3) {
        rng.range(500, 3000)
    } else {
        rng.below(400)
    } as usize;
    let fill = rng.next_u64() as u8;
    LogEntry {
        index,
        term,
        kind: (index % 3) as u8,
        data: (0..len).map(|i| fill.wrapping_add(i as u8)).collect(),
    }
}

/// What one simulated run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Steps taken.
    pub steps: u64,
    /// Batches acknowledged.
    pub appends_acked: u64,
    /// Appends that failed (injected faults); each was then checked to be
    /// recovered all or nothing.
    pub appends_failed: u64,
    /// Failed appends whose batch was found after recovery anyway.
    pub failed_appends_recovered: u64,
    /// Simulated crashes.
    pub crashes: u64,
    /// Reopens (after crashes and clean closes).
    pub reopens: u64,
    /// Reopens that found a torn or stale tail to discard.
    pub tails_discarded: u64,
    /// Segments freed by purges.
    pub segments_freed: u64,
    /// Groups rewritten forward.
    pub rewrites: u64,
    /// Most segments held at once.
    pub segments_max: usize,
    /// Appends refused with `WalError::Full`.
    pub appends_full: u64,
}

struct Run {
    rng: SimRng,
    fs: SimFs,
    config: WalConfig,
    wal: Option<Wal>,
    oracle: Oracle,
    report: SeedReport,
}

/// Runs one deterministic crash-recovery simulation. `Err` describes the
/// first divergence from the oracle; rerunning the seed reproduces it.
pub fn run_seed(seed: u64) -> Result<SeedReport, String> {
    let mut rng = SimRng::new(seed);
    let fs = SimFs::new(rng.next_u64());
    fs.set_tear_percent(rng.range(30, 100));
    let config = WalConfig {
        segment_bytes: [64u64 << 10, 128 << 10, 256 << 10][rng.below(3) as usize],
        cache_bytes_max: [0usize, 4 << 10, 64 << 10, 1 << 20][rng.below(4) as usize],
        sync_mode: [
            SyncMode::Adaptive,
            SyncMode::LeaderFollower,
            SyncMode::SyncThread,
        ][rng.below(3) as usize],
        recycle_segments_max: rng.below(3) as usize,
        segment_count_max: [3usize, 5, 8, 4096][rng.below(4) as usize],
        zero_fill_segments: rng.chance(50),
        // A background thread would make the order of file operations, and
        // so the injected faults, depend on scheduling.
        prepare_in_background: false,
    };
    let wal = Wal::open_with_fs(Arc::new(fs.clone()), config.clone())
        .map_err(|e| format!("seed {seed}: first open failed: {e}"))?;
    let mut run = Run {
        rng,
        fs,
        config,
        wal: Some(wal),
        oracle: Oracle::new(),
        report: SeedReport {
            seed,
            ..SeedReport::default()
        },
    };
    let steps = run.rng.range(300, 600);
    let mut gen = BatchGen::new(50);
    for step in 0..steps {
        run.report.steps = step + 1;
        run.step(&mut gen)
            .map_err(|e| format!("seed {seed}, step {step}: {e}"))?;
    }
    run.crash_and_reopen(None)
        .map_err(|e| format!("seed {seed}, final crash: {e}"))?;
    Ok(run.report)
}

impl Run {
    fn wal(&self) -> &Wal {
        self.wal.as_ref().expect("open between steps")
    }

    fn step(&mut self, gen: &mut BatchGen) -> Result<(), String> {
        let segments = self.wal().segment_count();
        self.report.segments_max = self.report.segments_max.max(segments);
        match self.rng.below(100) {
            0..=69 => self.append(gen),
            70..=72 => self.relieve_pins(),
            73..=75 => {
                let result = self.wal().purge();
                match result {
                    Ok(r) => {
                        self.report.segments_freed +=
                            (r.segments_deleted + r.segments_recycled) as u64;
                        Ok(())
                    }
                    Err(e) => self.recover_from_failure(None, e),
                }
            }
            76..=79 => {
                let group = self.rng.range(1, 50);
                let result = self.wal().rewrite_forward(group);
                match result {
                    Ok(_) => {
                        self.report.rewrites += 1;
                        Ok(())
                    }
                    Err(WalError::BatchTooLarge { .. }) => Ok(()),
                    Err(e) => self.recover_from_failure(None, e),
                }
            }
            80..=84 => self.crash_and_reopen(None),
            85..=86 => self.reopen(None),
            _ => {
                let group = self.rng.range(1, 50);
                self.oracle.check_group(self.wal(), group)?;
                self.check_bounded_read(group)
            }
        }
    }

    /// What a host does when the WAL grows: snapshot-and-compact or rewrite
    /// the groups pinning old segments, then purge.
    fn relieve_pins(&mut self) -> Result<(), String> {
        let pinning = self.wal().groups_pinning(2);
        for p in pinning.iter().take(8) {
            let result = if self.rng.chance(50) {
                self.report.rewrites += 1;
                self.wal().rewrite_forward(p.group).map(|_| ())
            } else {
                let (_, last) = self.oracle.bounds(p.group);
                let mut batch = WriteBatch::new();
                batch.compact_prefix(p.group, last + 1);
                let result = self.wal().append(batch.clone());
                if result.is_ok() {
                    self.report.appends_acked += 1;
                    self.oracle.apply(&batch)?;
                } else if let Err(e) = result {
                    self.report.appends_failed += 1;
                    return self.recover_from_failure(Some(batch), e);
                }
                Ok(())
            };
            match result {
                Ok(()) | Err(WalError::BatchTooLarge { .. }) => {}
                Err(e) => return self.recover_from_failure(None, e),
            }
        }
        match self.wal().purge() {
            Ok(r) => {
                self.report.segments_freed += (r.segments_deleted + r.segments_recycled) as u64;
                Ok(())
            }
            Err(e) => self.recover_from_failure(None, e),
        }
    }

    fn append(&mut self, gen: &mut BatchGen) -> Result<(), String> {
        let batch = gen.batch(&mut self.rng, &self.oracle);
        match self.rng.below(100) {
            0..=3 => self.fs.power_cut_in(self.rng.range(1, 8)),
            4..=6 => self.fs.fail_op_in(self.rng.range(1, 8)),
            _ => {}
        }
        match self.wal().append(batch.clone()) {
            Ok(_) => {
                self.report.appends_acked += 1;
                self.oracle
                    .apply(&batch)
                    .map_err(|e| format!("WAL accepted a batch the oracle rejects: {e}"))
            }
            Err(e @ WalError::InvalidBatch(_)) => Err(format!("WAL rejected a valid batch: {e}")),
            Err(WalError::Full { .. }) => {
                // Nothing was written; make room the way a host would.
                self.report.appends_full += 1;
                self.relieve_pins()
            }
            Err(e) => {
                self.report.appends_failed += 1;
                self.recover_from_failure(Some(batch), e)
            }
        }
    }

    /// After a failed operation: crash if the power went, else reopen.
    fn recover_from_failure(
        &mut self,
        batch: Option<WriteBatch>,
        _err: WalError,
    ) -> Result<(), String> {
        if self.fs.is_powered_off() || self.rng.chance(50) {
            self.crash_and_reopen(batch)
        } else {
            self.reopen(batch)
        }
    }

    fn crash_and_reopen(&mut self, uncertain: Option<WriteBatch>) -> Result<(), String> {
        self.wal = None;
        self.fs.crash();
        self.report.crashes += 1;
        self.open_and_check(uncertain)
    }

    fn reopen(&mut self, uncertain: Option<WriteBatch>) -> Result<(), String> {
        if self.fs.is_powered_off() {
            return self.crash_and_reopen(uncertain);
        }
        self.wal = None;
        self.fs.clear_faults();
        self.open_and_check(uncertain)
    }

    /// Reopens and checks the result against the oracle; a batch whose append
    /// failed may be present (whole) or absent.
    fn open_and_check(&mut self, uncertain: Option<WriteBatch>) -> Result<(), String> {
        let wal = Wal::open_with_fs(Arc::new(self.fs.clone()), self.config.clone())
            .map_err(|e| format!("reopen failed: {e}"))?;
        self.report.reopens += 1;
        if wal.recovery_report().tail_discarded {
            self.report.tails_discarded += 1;
        }
        let without = self.oracle.check(&wal);
        if without.is_err() {
            if let Some(batch) = uncertain {
                let mut with = self.oracle.clone();
                with.apply(&batch)
                    .map_err(|e| format!("failed batch was invalid: {e}"))?;
                with.check(&wal).map_err(|e| {
                    format!(
                        "recovered log matches neither without the failed batch ({}) nor with it ({e})",
                        without.clone().unwrap_err()
                    )
                })?;
                self.oracle = with;
                self.report.failed_appends_recovered += 1;
                self.wal = Some(wal);
                return Ok(());
            }
        }
        without?;
        self.wal = Some(wal);
        Ok(())
    }

    /// A read bounded by bytes returns a non-empty prefix within the bound.
    fn check_bounded_read(&mut self, group: GroupId) -> Result<(), String> {
        let (first, last) = self.oracle.bounds(group);
        if last < first {
            return Ok(());
        }
        let lo = self.rng.range(first, last);
        let hi = self.rng.range(lo + 1, last + 1);
        let max_bytes = self.rng.range(1, 400);
        let got = self
            .wal()
            .entries(group, lo, hi, max_bytes)
            .map_err(|e| format!("group {group}: bounded read: {e}"))?;
        let model = &self.oracle.groups()[&group].entries;
        let expected = &model[(lo - first) as usize..(hi - first) as usize];
        let total: u64 = got.iter().map(|e| e.size_bytes() as u64).sum();
        if got.is_empty()
            || got[..] != expected[..got.len()]
            || (got.len() > 1 && total > max_bytes)
        {
            return Err(format!(
                "group {group}: entries({lo}, {hi}, {max_bytes}) returned {} entries ({total} bytes)",
                got.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_seeds_pass() {
        for seed in 0..6 {
            let report = run_seed(seed).unwrap_or_else(|e| panic!("{e}"));
            assert!(report.appends_acked > 0);
            assert!(report.crashes > 0);
        }
    }

    #[test]
    fn a_seed_replays_identically() {
        assert_eq!(run_seed(42), run_seed(42));
    }

    #[test]
    fn the_oracle_rejects_gaps_and_applies_nothing_of_a_bad_batch() {
        let mut oracle = Oracle::new();
        let entry = |index| LogEntry {
            index,
            term: 1,
            kind: 0,
            data: vec![],
        };
        let mut ok = WriteBatch::new();
        ok.add_entries(1, vec![entry(1), entry(2)]);
        oracle.apply(&ok).unwrap();
        let mut bad = WriteBatch::new();
        bad.add_entries(1, vec![entry(3)])
            .add_entries(2, vec![entry(5)]);
        assert!(oracle.apply(&bad).is_err());
        assert_eq!(oracle.bounds(1), (1, 2));
    }
}
