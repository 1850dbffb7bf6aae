//! Group commit and segment rotation.
//!
//! Appenders encode their batch on their own thread, queue it, and wait. One
//! thread at a time runs a *round*: it takes every queued batch, validates
//! each against the log, writes them together as one record with one
//! `pwrite`, issues one `fdatasync`, applies them to the index, and wakes the
//! appenders. Who runs rounds is the [`SyncMode`]: the first waiting appender
//! (leader/follower barrier) or a dedicated sync thread.
//!
//! A round writes one record per sync, and no record is written before the
//! previous one's sync returned. So at any moment at most one record of the
//! log is not durable, and after a crash only the very last record can be
//! damaged by the crash itself. Recovery relies on this to tell a torn tail
//! from corruption (see `recovery.rs`).
//!
//! When the next record does not fit, the round seals the segment (a seal
//! record, synced) and moves to the next one, reusing a spare if purge left
//! one.

use std::collections::{HashMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::batch::{GroupId, WalItem, WriteBatch};
use super::file::SegmentFile;
use super::format::{self, EntrySpan, RecordKind};
use super::index::{ApplyMode, Index, Overlay};
use super::{purge, Shared, SyncMode, WalError, WritePosition};

/// The active segment. Only the thread running a round touches it.
#[derive(Debug)]
pub(crate) struct Tail {
    pub seq: u64,
    pub file: Arc<dyn SegmentFile>,
    /// Where the next record goes.
    pub offset: u64,
    /// The segment ended with a seal; the next record needs a new segment.
    pub sealed: bool,
}

/// What an appender asked for.
#[derive(Debug)]
pub(crate) enum Work {
    /// A caller's batch, already encoded (`spans` relative to `bytes`).
    Batch {
        items: Vec<WalItem>,
        bytes: Vec<u8>,
        spans: Vec<EntrySpan>,
    },
    /// Re-append the current state of `groups` so old segments stop being
    /// needed. `full` also re-appends live entries; otherwise only the hard
    /// state and, for empty logs, the log start.
    Restate { groups: Vec<GroupId>, full: bool },
}

#[derive(Debug)]
pub(crate) struct Pending {
    ticket: u64,
    work: Work,
}

/// The queue between appenders and whoever runs rounds.
#[derive(Debug, Default)]
pub(crate) struct CommitQueue {
    pending: Vec<Pending>,
    next_ticket: u64,
    results: HashMap<u64, Result<WritePosition, WalError>>,
    leader_active: bool,
    poisoned: Option<String>,
    pub shutdown: bool,
}

/// What the background preparer should do next.
#[derive(Debug, Default)]
pub(crate) struct PrepareRequest {
    next_seq: Option<u64>,
    pub shutdown: bool,
}

/// A piece of a record: one batch or restate, ready to be written.
struct Unit {
    ticket: u64,
    items: Vec<WalItem>,
    bytes: Vec<u8>,
    spans: Vec<EntrySpan>,
    /// Only frees space (restates, compactions, markers, removals), so it may
    /// rotate into the one segment kept in reserve beyond
    /// `segment_count_max`: otherwise a full WAL could not be compacted.
    may_use_reserve: bool,
}

type RoundResults = Vec<(u64, Result<WritePosition, WalError>)>;

impl Shared {
    pub(crate) fn append(&self, batch: WriteBatch) -> Result<WritePosition, WalError> {
        if batch.is_empty() {
            return Err(WalError::InvalidBatch("the batch is empty".into()));
        }
        let items = batch.into_items();
        // Checked before encoding, so no length can overflow a format field.
        let size: u64 = items
            .iter()
            .map(|i| format::encoded_item_bytes(i) as u64)
            .sum();
        let max_bytes = self.config.record_payload_bytes_max();
        if size > max_bytes {
            return Err(WalError::BatchTooLarge {
                bytes: size,
                max_bytes,
            });
        }
        let (bytes, spans) = encode_items(&items);
        self.submit(Work::Batch {
            items,
            bytes,
            spans,
        })
    }

    /// Queues `work` and waits for its round to finish.
    pub(crate) fn submit(&self, work: Work) -> Result<WritePosition, WalError> {
        let mut q = self.commit.lock();
        if let Some(reason) = &q.poisoned {
            return Err(WalError::Poisoned {
                reason: reason.clone(),
            });
        }
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push(Pending { ticket, work });
        if self.config.sync_mode == SyncMode::SyncThread {
            self.work_cv.notify_one();
        }
        loop {
            if let Some(result) = q.results.remove(&ticket) {
                return result;
            }
            if self.config.sync_mode == SyncMode::LeaderFollower && !q.leader_active {
                self.lead_round(&mut q);
                continue;
            }
            self.done_cv.wait(&mut q);
        }
    }

    /// Runs one round as the leader: the queue lock is released while the IO
    /// happens, so followers keep queueing for the next round.
    fn lead_round(&self, q: &mut MutexGuard<'_, CommitQueue>) {
        q.leader_active = true;
        let work = std::mem::take(&mut q.pending);
        let poisoned = q.poisoned.clone();
        let tickets: Vec<u64> = work.iter().map(|p| p.ticket).collect();
        let outcome = MutexGuard::unlocked(q, || {
            panic::catch_unwind(AssertUnwindSafe(|| self.run_round(work, poisoned)))
        });
        q.leader_active = false;
        match outcome {
            Ok(results) => q.results.extend(results),
            Err(payload) => {
                // Followers must not wait forever for a leader that died.
                fail_after_panic(q, &tickets);
                self.done_cv.notify_all();
                panic::resume_unwind(payload);
            }
        }
        self.done_cv.notify_all();
        MutexGuard::unlocked(q, || self.prepare_spare_if_due());
    }

    /// Body of the dedicated sync thread.
    pub(crate) fn sync_thread_main(&self) {
        loop {
            let (work, poisoned) = {
                let mut q = self.commit.lock();
                while q.pending.is_empty() && !q.shutdown {
                    self.work_cv.wait(&mut q);
                }
                if q.pending.is_empty() {
                    return;
                }
                (std::mem::take(&mut q.pending), q.poisoned.clone())
            };
            let tickets: Vec<u64> = work.iter().map(|p| p.ticket).collect();
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.run_round(work, poisoned)));
            let mut q = self.commit.lock();
            match outcome {
                Ok(results) => q.results.extend(results),
                Err(_) => fail_after_panic(&mut q, &tickets),
            }
            drop(q);
            self.done_cv.notify_all();
            self.prepare_spare_if_due();
        }
    }

    fn poison(&self, reason: &WalError) {
        let mut q = self.commit.lock();
        if q.poisoned.is_none() {
            q.poisoned = Some(reason.to_string());
        }
    }

    /// Writes, syncs and indexes `work`; returns one result per ticket.
    fn run_round(&self, work: Vec<Pending>, poisoned: Option<String>) -> RoundResults {
        if let Some(reason) = poisoned {
            return work
                .into_iter()
                .map(|p| {
                    let err = WalError::Poisoned {
                        reason: reason.clone(),
                    };
                    (p.ticket, Err(err))
                })
                .collect();
        }
        let mut tail = self.tail.lock();
        let mut results = RoundResults::new();
        let mut units: VecDeque<Unit> = self.prepare_units(work, &tail, &mut results).into();
        while !units.is_empty() {
            if let Err(err) = self.write_record(&mut tail, &mut units, &mut results) {
                results.extend(units.iter().map(|u| (u.ticket, Err(err.duplicate()))));
                break;
            }
        }
        results
    }

    /// Validates batches and materializes restates (restates first: they
    /// describe the log as of the end of the previous round).
    fn prepare_units(
        &self,
        work: Vec<Pending>,
        tail: &Tail,
        results: &mut RoundResults,
    ) -> Vec<Unit> {
        let index = self.index.read();
        let mut units = Vec::with_capacity(work.len());
        let (restates, batches): (Vec<_>, Vec<_>) = work
            .into_iter()
            .partition(|p| matches!(p.work, Work::Restate { .. }));
        let here = WritePosition {
            segment: tail.seq,
            offset: tail.offset,
        };
        for p in restates {
            let Work::Restate { groups, full } = p.work else {
                continue;
            };
            match restate_items(
                &index,
                &groups,
                full,
                self.config.record_payload_bytes_max(),
            ) {
                Ok(items) if items.is_empty() => results.push((p.ticket, Ok(here))),
                Ok(items) => {
                    let (bytes, spans) = encode_items(&items);
                    let max_bytes = self.config.record_payload_bytes_max();
                    if bytes.len() as u64 > max_bytes {
                        let err = WalError::BatchTooLarge {
                            bytes: bytes.len() as u64,
                            max_bytes,
                        };
                        results.push((p.ticket, Err(err)));
                    } else {
                        units.push(Unit {
                            ticket: p.ticket,
                            items,
                            bytes,
                            spans,
                            may_use_reserve: true,
                        });
                    }
                }
                Err(err) => results.push((p.ticket, Err(err))),
            }
        }
        let mut overlay = Overlay::default();
        for p in batches {
            let Work::Batch {
                items,
                bytes,
                spans,
            } = p.work
            else {
                continue;
            };
            match overlay.validate(&index, &items) {
                Ok(()) => units.push(Unit {
                    ticket: p.ticket,
                    may_use_reserve: items.iter().all(|i| {
                        matches!(
                            i,
                            WalItem::CompactPrefix { .. }
                                | WalItem::SnapshotMarker { .. }
                                | WalItem::GroupRemoved { .. }
                                | WalItem::TruncateSuffix { .. }
                        )
                    }),
                    items,
                    bytes,
                    spans,
                }),
                Err(err) => results.push((p.ticket, Err(err))),
            }
        }
        units
    }

    /// Writes as many of `units` as fit into one record of the active segment
    /// (rotating first if not even the first fits), syncs it and applies it to
    /// the index. Returns how many units were written and where.
    ///
    /// Written units are taken from the front of `units` and their results
    /// pushed to `results`; on `Err` the units still queued were not written.
    fn write_record(
        &self,
        tail: &mut Tail,
        units: &mut VecDeque<Unit>,
        results: &mut RoundResults,
    ) -> Result<(), WalError> {
        self.ensure_room(tail, units[0].bytes.len(), units[0].may_use_reserve)?;
        let room = tail.file.size_bytes() - tail.offset - format::SEAL_BYTES as u64;
        let mut payload_len = 0usize;
        let mut count = 0;
        for unit in units.iter() {
            if format::record_bytes(payload_len + unit.bytes.len()) > room {
                break;
            }
            payload_len += unit.bytes.len();
            count += 1;
        }
        let mut buf = Vec::with_capacity(format::record_bytes(payload_len) as usize);
        let start = format::begin_record(&mut buf);
        let mut payload_offsets = Vec::with_capacity(count);
        for unit in units.iter().take(count) {
            payload_offsets.push((buf.len() - start - format::RECORD_HEADER_BYTES) as u64);
            buf.extend_from_slice(&unit.bytes);
        }
        format::finish_record(&mut buf, start, tail.seq, RecordKind::Batch);
        let position = WritePosition {
            segment: tail.seq,
            offset: tail.offset,
        };
        self.write_and_sync(tail, &buf)?;
        tail.offset += buf.len() as u64;
        let payload_base = position.offset + format::RECORD_HEADER_BYTES as u64;
        let mut index = self.index.write();
        for (unit, payload_offset) in units.drain(..count).zip(payload_offsets) {
            let ticket = unit.ticket;
            let applied = apply_unit(&mut index, unit, tail.seq, payload_base + payload_offset);
            if let Err(e) = &applied {
                self.poison(e);
            }
            results.push((ticket, applied.map(|()| position)));
        }
        drop(index);
        let c = &self.counters;
        c.records.fetch_add(1, Ordering::Relaxed);
        c.batches.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// `pwrite` + `fdatasync` on the active segment. A failure poisons the
    /// WAL: after a failed sync the kernel may have dropped the dirty pages,
    /// so nothing written since the last good sync can be trusted.
    fn write_and_sync(&self, tail: &Tail, buf: &[u8]) -> Result<(), WalError> {
        let name = format::segment_file_name(tail.seq);
        let started = std::time::Instant::now();
        let result = tail
            .file
            .write_at(tail.offset, buf)
            .and_then(|()| tail.file.sync_data())
            .map_err(|e| WalError::io(self.fs.path(&name), e));
        if let Err(e) = &result {
            self.poison(e);
        }
        let c = &self.counters;
        c.syncs.fetch_add(1, Ordering::Relaxed);
        c.bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        metrics::counter!("flotilla_wal_syncs_total").increment(1);
        metrics::counter!("flotilla_wal_written_bytes_total").increment(buf.len() as u64);
        metrics::histogram!("flotilla_wal_sync_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// Makes sure a record with a `payload_len` payload fits into the active
    /// segment, rotating if it does not.
    fn ensure_room(
        &self,
        tail: &mut Tail,
        payload_len: usize,
        may_use_reserve: bool,
    ) -> Result<(), WalError> {
        let need = format::record_bytes(payload_len) + format::SEAL_BYTES as u64;
        if !tail.sealed && tail.offset + need <= tail.file.size_bytes() {
            return Ok(());
        }
        self.rotate(tail, may_use_reserve)?;
        if tail.offset + need > tail.file.size_bytes() {
            return Err(WalError::BatchTooLarge {
                bytes: payload_len as u64,
                max_bytes: tail.file.size_bytes() - tail.offset - format::SEAL_BYTES as u64,
            });
        }
        Ok(())
    }

    /// Publishes the WAL's size as metrics: segments held and bytes on disk
    /// (segments are preallocated, so their count times their size is
    /// exact; spares count too).
    pub(crate) fn publish_size(&self) {
        let segments = self.index.read().segments.len();
        let spares = self.spares.lock().len();
        metrics::gauge!("flotilla_wal_segments").set(segments as f64);
        metrics::gauge!("flotilla_wal_bytes")
            .set(((segments + spares) as u64 * self.config.segment_bytes) as f64);
    }

    /// Seals the active segment and switches to the next one.
    fn rotate(&self, tail: &mut Tail, may_use_reserve: bool) -> Result<(), WalError> {
        if !tail.sealed {
            let seal = format::encode_record(tail.seq, RecordKind::Seal, &[]);
            self.write_and_sync(tail, &seal)?;
            tail.offset += seal.len() as u64;
            tail.sealed = true;
        }
        let segments = self.index.read().segments.len();
        let limit = self.config.segment_count_max + usize::from(may_use_reserve);
        if segments >= limit {
            return Err(WalError::Full { segments });
        }
        let seq = tail.seq + 1;
        let spare = self.spares.lock().pop();
        let file = purge::provide_segment(&*self.fs, &self.config, spare, seq)?;
        {
            let mut index = self.index.write();
            index.segments.insert(seq, Arc::clone(&file));
            index.active_seq = seq;
        }
        *tail = Tail {
            seq,
            file,
            offset: format::SEGMENT_HEADER_BYTES as u64,
            sealed: false,
        };
        self.counters.rotations.fetch_add(1, Ordering::Relaxed);
        self.publish_size();
        Ok(())
    }

    /// Once the active segment is half full, asks for the next segment's
    /// file to be created ahead of time (as a spare) so the rotating round
    /// does not pay for the allocation. Skipped when a round is running or a
    /// spare exists.
    fn prepare_spare_if_due(&self) {
        let Some(tail) = self.tail.try_lock() else {
            return;
        };
        let due = !tail.sealed && tail.offset * 2 >= tail.file.size_bytes();
        let next = tail.seq + 1;
        drop(tail);
        if !due || !self.spares.lock().is_empty() {
            return;
        }
        if self.config.prepare_in_background {
            self.prepare.lock().next_seq = Some(next);
            self.prepare_cv.notify_one();
        } else {
            self.create_spare_now(next);
        }
    }

    /// Creates spare `seq` unless a spare already exists. A failure is not an
    /// error of any append: rotation creates the file itself and reports the
    /// problem if it persists.
    fn create_spare_now(&self, seq: u64) {
        let mut spares = self.spares.lock();
        if spares.is_empty() && purge::create_spare(&*self.fs, &self.config, seq).is_ok() {
            spares.push(seq);
        }
    }

    /// Body of the background preparer thread.
    pub(crate) fn preparer_main(&self) {
        loop {
            let next = {
                let mut p = self.prepare.lock();
                while p.next_seq.is_none() && !p.shutdown {
                    self.prepare_cv.wait(&mut p);
                }
                if p.shutdown {
                    return;
                }
                p.next_seq.take()
            };
            if let Some(seq) = next {
                self.create_spare_now(seq);
            }
        }
    }
}

/// Poisons the WAL and fails `tickets` after a round panicked.
fn fail_after_panic(q: &mut CommitQueue, tickets: &[u64]) {
    let reason = "a WAL write round panicked".to_string();
    q.poisoned.get_or_insert_with(|| reason.clone());
    for &ticket in tickets {
        let err = WalError::Poisoned {
            reason: reason.clone(),
        };
        q.results.insert(ticket, Err(err));
    }
}

fn encode_items(items: &[WalItem]) -> (Vec<u8>, Vec<EntrySpan>) {
    let len: usize = items.iter().map(format::encoded_item_bytes).sum();
    let mut bytes = Vec::with_capacity(len);
    let mut spans = Vec::new();
    for item in items {
        format::encode_item(item, &mut bytes, &mut spans);
    }
    (bytes, spans)
}

/// Applies a written unit to the index; `base` is the segment offset of the
/// unit's first byte.
fn apply_unit(index: &mut Index, unit: Unit, seq: u64, base: u64) -> Result<(), WalError> {
    let mut spans = unit.spans.iter();
    for item in unit.items {
        let n = match &item {
            WalItem::Entries { entries, .. } => entries.len(),
            _ => 0,
        };
        let abs: Vec<EntrySpan> = spans
            .by_ref()
            .take(n)
            .map(|s| EntrySpan {
                offset: base + s.offset,
                len: s.len,
            })
            .collect();
        index
            .apply(item, seq, &abs, ApplyMode::Live)
            .map_err(|reason| WalError::Poisoned {
                reason: format!("index rejected a written item: {reason}"),
            })?;
    }
    Ok(())
}

/// The items that re-state `groups` as they are now. A full restate larger
/// than `max_bytes` fails before any entry is read back.
fn restate_items(
    index: &Index,
    groups: &[GroupId],
    full: bool,
    max_bytes: u64,
) -> Result<Vec<WalItem>, WalError> {
    let mut items = Vec::new();
    for &group in groups {
        let Some(g) = index.groups.get(&group) else {
            continue;
        };
        let empty = g.entries.is_empty();
        if full && !empty {
            let bytes: u64 = g.entries.iter().map(|l| u64::from(l.len)).sum();
            if bytes > max_bytes {
                return Err(WalError::BatchTooLarge { bytes, max_bytes });
            }
            items.push(WalItem::SnapshotMarker {
                group,
                index: g.first - 1,
                term: g.prev_term,
            });
            let entries = index.entries(group, g.first, g.last() + 1, u64::MAX)?;
            items.push(WalItem::Entries { group, entries });
        } else if empty && g.prev_seq.is_some() {
            items.push(WalItem::SnapshotMarker {
                group,
                index: g.first - 1,
                term: g.prev_term,
            });
        }
        if let Some(state) = g.hard_state {
            items.push(WalItem::HardState { group, state });
        }
    }
    Ok(items)
}
