//! Group commit and segment rotation.
//!
//! Appenders encode their batch on their own thread, queue it, and wait. One
//! thread at a time runs a *round*: it takes every queued batch, validates
//! each against the log, writes them together as one record with one
//! `pwritev` (header, the batches' encoded bytes, padding: never assembled
//! in memory; the record crc is combined from crcs the appenders computed),
//! issues one `fdatasync`, applies them to the index, and wakes the
//! appenders it served: they all wait on one futex word of their round
//! ([`RoundSignal`]), so appenders queued for a later round sleep on. Who
//! runs rounds is the [`SyncMode`]: by default an appender that finds no
//! round running runs one itself, and the dedicated sync thread takes over
//! while appenders keep queueing.
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

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::batch::{GroupId, WalItem, WriteBatch};
use super::file::SegmentFile;
use super::format::{self, EntrySpan, RecordKind};
use super::index::{ApplyMode, BatchBytes, Index, Overlay};
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
    /// Buffers a round reuses, kept with the tail because rounds hold its
    /// lock. malloc was 8 % of the round thread's profile at 64 appenders
    /// and these were among its per-round sources; reusing them measured
    /// within noise (+4 % at 10,000 groups), so this is tidiness more than
    /// speed.
    pub scratch: RoundScratch,
}

/// Per-round working memory, cleared and reused by every round.
#[derive(Debug, Default)]
pub(crate) struct RoundScratch {
    overlay: Overlay,
    /// Absolute positions of one item's entries.
    spans: Vec<EntrySpan>,
    /// Where each unit of the record being written starts in its payload.
    payload_offsets: Vec<u64>,
}

/// What an appender asked for.
#[derive(Debug)]
pub(crate) enum Work {
    /// A caller's batch, already encoded. The appender holds a reference
    /// too, and drops it after the round: so the batch's buffers are freed
    /// on the thread that allocated them, not on the one running rounds
    /// (freeing another thread's memory was 6 % of that thread's time at
    /// 64 appenders).
    Batch(Arc<EncodedWork>),
    /// Re-append the current state of `groups` so old segments stop being
    /// needed. `full` also re-appends live entries; otherwise only the hard
    /// state and, for empty logs, the log start.
    Restate { groups: Vec<GroupId>, full: bool },
}

#[derive(Debug)]
pub(crate) struct Pending {
    ticket: u64,
    work: Work,
    waiter: Arc<Waiter>,
}

/// The queue between appenders and whoever runs rounds.
///
/// Invariant: while `runner` is not `Idle`, exactly one thread is running a
/// round or has been told to run the next one, and every queued appender
/// will be served by it or by a successor it names.
#[derive(Debug, Default)]
pub(crate) struct CommitQueue {
    pending: Vec<Pending>,
    /// Shared by every appender in `pending`.
    open: Arc<RoundSignal>,
    next_ticket: u64,
    runner: Runner,
    pub(crate) poisoned: Option<String>,
    pub shutdown: bool,
}

/// Who runs the round after an appender's.
enum Successor {
    None,
    SyncThread,
    /// One of the appenders of this (the open) round.
    Appender(Arc<RoundSignal>),
}

/// Who runs rounds at the moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Runner {
    /// Nobody: the next appender (or the sync thread, in
    /// [`SyncMode::SyncThread`]) takes the role.
    #[default]
    Idle,
    /// An appender, on its own call.
    Appender,
    /// The dedicated sync thread.
    SyncThread,
}

/// Where one appender's result lands. Written once by the round that
/// carried its work, before the round's [`RoundSignal`] says done.
#[derive(Debug, Default)]
pub(crate) struct Waiter {
    result: Mutex<Option<Result<WritePosition, WalError>>>,
}

impl Waiter {
    fn set(&self, result: Result<WritePosition, WalError>) {
        *self.result.lock() = Some(result);
    }

    fn take(&self) -> Result<WritePosition, WalError> {
        self.result.lock().take().unwrap_or_else(|| {
            Err(WalError::Poisoned {
                reason: "a round finished without answering an appender".into(),
            })
        })
    }
}

/// One futex word shared by every appender of one round, so a finished
/// round wakes all of them with one system call rather than one per
/// appender (measured: waking appenders one by one was a third of the CPU
/// at 64 appenders). Appenders queue into the *open* round (the next one to
/// be taken); taking it opens a new one.
#[derive(Debug, Default)]
pub(crate) struct RoundSignal {
    state: AtomicU32,
}

impl RoundSignal {
    /// Appenders wait; nothing to do.
    const WAITING: u32 = 0;
    /// Leader/follower mode: one appender of this round should claim the
    /// leader role and run it.
    const LEAD: u32 = 1;
    /// The round finished; every appender's result is in its [`Waiter`].
    /// One appender was woken; the first to see this state wakes the rest.
    const DONE_WAKING: u32 = 2;
    /// The round finished and all its appenders were woken.
    const DONE: u32 = 3;

    /// Asks one of this round's appenders to lead it.
    fn request_leader(&self) {
        self.state.store(Self::LEAD, Ordering::Release);
        atomic_wait::wake_one(&self.state);
    }

    /// Says the round is done. Wakes only one appender: waking dozens costs
    /// the kernel microseconds each, and the thread running rounds has the
    /// next one to start, so the first appender up wakes the others (see
    /// [`RoundSignal::wait`]).
    fn finish(&self) {
        self.state.store(Self::DONE_WAKING, Ordering::Release);
        atomic_wait::wake_one(&self.state);
    }

    /// Blocks until the round is done (true) or this thread claimed the
    /// leader role (false).
    fn wait(&self) -> bool {
        loop {
            match self.state.load(Ordering::Acquire) {
                Self::DONE => return true,
                Self::DONE_WAKING => {
                    if self
                        .state
                        .compare_exchange(
                            Self::DONE_WAKING,
                            Self::DONE,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        atomic_wait::wake_all(&self.state);
                    }
                    return true;
                }
                Self::LEAD => {
                    if self
                        .state
                        .compare_exchange(
                            Self::LEAD,
                            Self::WAITING,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        return false;
                    }
                }
                _ => atomic_wait::wait(&self.state, Self::WAITING),
            }
        }
    }
}

/// What the background preparer should do next.
#[derive(Debug, Default)]
pub(crate) struct PrepareRequest {
    next_seq: Option<u64>,
    /// Sealed segments whose cached pages can be released (at most a few:
    /// one per rotation since the preparer last ran).
    release: Vec<Arc<dyn SegmentFile>>,
    pub shutdown: bool,
}

/// Items ready to be written: the entries' data was dropped once encoded
/// (see [`encode_work`]); `encoded` holds it.
#[derive(Debug)]
pub(crate) struct EncodedWork {
    items: Vec<WalItem>,
    encoded: Encoded,
}

/// A piece of a record: one batch or restate, ready to be written.
struct Unit {
    ticket: u64,
    work: Arc<EncodedWork>,
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
        let work = Arc::new(encode_work(items));
        let result = self.submit(Work::Batch(Arc::clone(&work)));
        drop(work);
        result
    }

    /// Queues `work` and waits for its round to finish.
    pub(crate) fn submit(&self, work: Work) -> Result<WritePosition, WalError> {
        let waiter = Arc::new(Waiter::default());
        let mut q = self.commit.lock();
        if let Some(reason) = &q.poisoned {
            return Err(WalError::Poisoned {
                reason: reason.clone(),
            });
        }
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push(Pending {
            ticket,
            work,
            waiter: Arc::clone(&waiter),
        });
        let round = Arc::clone(&q.open);
        let mut lead_now = false;
        let mut wake_sync_thread = false;
        if q.runner == Runner::Idle {
            if self.config.sync_mode == SyncMode::SyncThread {
                q.runner = Runner::SyncThread;
                wake_sync_thread = true;
            } else {
                q.runner = Runner::Appender;
                lead_now = true;
            }
        }
        drop(q);
        if wake_sync_thread {
            self.work_cv.notify_one();
        }
        if lead_now {
            self.lead_round();
        }
        while !round.wait() {
            self.lead_round();
        }
        waiter.take()
    }

    /// Takes the queued work as the next round, opening a new one.
    ///
    /// `recycled` (emptied by an earlier round) becomes the new queue, so
    /// appenders do not regrow one from nothing, under the queue's lock,
    /// every round.
    fn take_round(
        q: &mut CommitQueue,
        recycled: Vec<Pending>,
    ) -> (Vec<Pending>, Arc<RoundSignal>, Option<String>) {
        debug_assert!(recycled.is_empty());
        let work = std::mem::replace(&mut q.pending, recycled);
        let round = std::mem::take(&mut q.open);
        (work, round, q.poisoned.clone())
    }

    /// Runs one round on an appender's call (the runner is `Appender` and
    /// this thread holds the role). The queue lock is released while the IO
    /// happens, so others keep queueing for the next round. Afterwards the
    /// role is given up if nothing is queued; otherwise it goes to the sync
    /// thread ([`SyncMode::Adaptive`]) or to an appender of the next round
    /// ([`SyncMode::LeaderFollower`]).
    fn lead_round(&self) {
        let (work, round, poisoned) = Self::take_round(&mut self.commit.lock(), Vec::new());
        let waiters = waiters_of(&work);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            self.run_round(work, poisoned, &mut None).0
        }));
        let successor = {
            let mut q = self.commit.lock();
            if outcome.is_err() {
                self.poison_locked(&mut q, panic_reason);
            }
            if q.pending.is_empty() {
                q.runner = Runner::Idle;
                Successor::None
            } else if self.config.sync_mode == SyncMode::Adaptive {
                q.runner = Runner::SyncThread;
                Successor::SyncThread
            } else {
                Successor::Appender(Arc::clone(&q.open))
            }
        };
        // The successor starts its round while this thread wakes the
        // appenders it served.
        match successor {
            Successor::None => {}
            Successor::SyncThread => {
                self.work_cv.notify_one();
            }
            Successor::Appender(next) => next.request_leader(),
        }
        match outcome {
            Ok(results) => Finished {
                waiters,
                round,
                results,
            }
            .deliver(),
            Err(payload) => {
                // Followers must not wait forever for a leader that died.
                fail_after_panic(&waiters, &round);
                panic::resume_unwind(payload);
            }
        }
        self.prepare_spare_if_due();
    }

    /// Body of the dedicated sync thread: runs rounds while it holds the
    /// role and work is queued, then gives the role up.
    ///
    /// A finished round's appenders are woken once the next round's record
    /// is written and on its way to the disk, so the system calls that wake
    /// them overlap the disk's work instead of delaying it; with nothing
    /// queued they are woken at once.
    pub(crate) fn sync_thread_main(&self) {
        let mut finished: Option<Finished> = None;
        let mut recycled: Vec<Pending> = Vec::new();
        loop {
            let next = {
                let mut q = self.commit.lock();
                loop {
                    if q.runner == Runner::SyncThread {
                        if !q.pending.is_empty() {
                            break Some(Self::take_round(&mut q, std::mem::take(&mut recycled)));
                        }
                        q.runner = Runner::Idle;
                    }
                    if finished.is_some() {
                        break None;
                    }
                    if q.shutdown {
                        return;
                    }
                    self.work_cv.wait(&mut q);
                }
            };
            let Some((work, round, poisoned)) = next else {
                if let Some(done) = finished.take() {
                    done.deliver();
                }
                continue;
            };
            let waiters = waiters_of(&work);
            let mut wake_previous = finished.take();
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                let (results, emptied) = self.run_round(work, poisoned, &mut wake_previous);
                recycled = emptied;
                results
            }));
            if let Some(done) = wake_previous.take() {
                done.deliver();
            }
            // Before waking anyone: without a preparer thread this may do
            // file operations, and once an appender returns they would race
            // with whatever its caller does next (the simulator must see one
            // order of file operations per seed).
            self.prepare_spare_if_due();
            match outcome {
                Ok(results) => {
                    finished = Some(Finished {
                        waiters,
                        round,
                        results,
                    });
                }
                Err(_) => {
                    self.poison_locked(&mut self.commit.lock(), panic_reason);
                    fail_after_panic(&waiters, &round);
                }
            }
        }
    }

    fn poison(&self, reason: &WalError) {
        self.poison_locked(&mut self.commit.lock(), || reason.to_string());
    }

    /// Records the first reason the WAL was poisoned.
    fn poison_locked(&self, q: &mut CommitQueue, reason: impl FnOnce() -> String) {
        if q.poisoned.is_none() {
            q.poisoned = Some(reason());
            self.poisoned.store(true, Ordering::Release);
        }
    }

    /// Writes, syncs and indexes `work`; returns one result per ticket, and
    /// `work` emptied (for the queue to reuse). `on_written`, if given, is
    /// delivered once the first record is written and on its way to the
    /// disk (by the caller if no record is written).
    fn run_round(
        &self,
        mut work: Vec<Pending>,
        poisoned: Option<String>,
        on_written: &mut Option<Finished>,
    ) -> (RoundResults, Vec<Pending>) {
        let mut results = RoundResults::with_capacity(work.len());
        if let Some(reason) = poisoned {
            results.extend(work.drain(..).map(|p| {
                let err = WalError::Poisoned {
                    reason: reason.clone(),
                };
                (p.ticket, Err(err))
            }));
            return (results, work);
        }
        let mut tail = self.tail.lock();
        let mut units: VecDeque<Unit> = self
            .prepare_units(&mut work, &mut tail, &mut results)
            .into();
        while !units.is_empty() {
            if let Err(err) = self.write_record(&mut tail, &mut units, &mut results, on_written) {
                results.extend(units.iter().map(|u| (u.ticket, Err(err.duplicate()))));
                break;
            }
        }
        (results, work)
    }

    /// Validates batches and materializes restates (restates first: they
    /// describe the log as of the end of the previous round).
    fn prepare_units(
        &self,
        work: &mut Vec<Pending>,
        tail: &mut Tail,
        results: &mut RoundResults,
    ) -> Vec<Unit> {
        let index = self.index.read();
        let mut units = Vec::with_capacity(work.len());
        let here = WritePosition {
            segment: tail.seq,
            offset: tail.offset,
        };
        for p in work.iter() {
            let Work::Restate { groups, full } = &p.work else {
                continue;
            };
            match restate_items(
                &index,
                groups,
                *full,
                self.config.record_payload_bytes_max(),
            ) {
                Ok(items) if items.is_empty() => results.push((p.ticket, Ok(here))),
                Ok(items) => {
                    let work = encode_work(items);
                    let max_bytes = self.config.record_payload_bytes_max();
                    if work.encoded.bytes.len() as u64 > max_bytes {
                        let err = WalError::BatchTooLarge {
                            bytes: work.encoded.bytes.len() as u64,
                            max_bytes,
                        };
                        results.push((p.ticket, Err(err)));
                    } else {
                        units.push(Unit {
                            ticket: p.ticket,
                            work: Arc::new(work),
                            may_use_reserve: true,
                        });
                    }
                }
                Err(err) => results.push((p.ticket, Err(err))),
            }
        }
        let overlay = &mut tail.scratch.overlay;
        overlay.clear();
        for p in work.drain(..) {
            let Work::Batch(work) = p.work else {
                continue;
            };
            match overlay.validate(&index, &work.items) {
                Ok(()) => units.push(Unit {
                    ticket: p.ticket,
                    may_use_reserve: work.items.iter().all(|i| {
                        matches!(
                            i,
                            WalItem::CompactPrefix { .. }
                                | WalItem::SnapshotMarker { .. }
                                | WalItem::GroupRemoved { .. }
                                | WalItem::TruncateSuffix { .. }
                        )
                    }),
                    work,
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
        on_written: &mut Option<Finished>,
    ) -> Result<(), WalError> {
        self.ensure_room(
            tail,
            units[0].work.encoded.bytes.len(),
            units[0].may_use_reserve,
        )?;
        let room = tail.file.size_bytes() - tail.offset - format::SEAL_BYTES as u64;
        let mut payload_len = 0usize;
        let mut payload_crc = crc32fast::Hasher::new();
        let mut payload_offsets = std::mem::take(&mut tail.scratch.payload_offsets);
        payload_offsets.clear();
        for unit in units.iter() {
            let len = unit.work.encoded.bytes.len();
            if format::record_bytes(payload_len + len) > room {
                break;
            }
            payload_offsets.push(payload_len as u64);
            payload_crc.combine(&unit.work.encoded.crc);
            payload_len += len;
        }
        let count = payload_offsets.len();
        let head = format::record_header(tail.seq, RecordKind::Batch, payload_len, &payload_crc);
        let padding = [0u8; format::RECORD_ALIGN];
        let mut parts: Vec<&[u8]> = Vec::with_capacity(count + 2);
        parts.push(&head);
        parts.extend(
            units
                .iter()
                .take(count)
                .map(|u| u.work.encoded.bytes.as_slice()),
        );
        parts.push(&padding[..format::record_padding_bytes(payload_len)]);
        let position = WritePosition {
            segment: tail.seq,
            offset: tail.offset,
        };
        self.write_parts(tail, &parts)?;
        drop(parts);
        tail.offset += format::record_bytes(payload_len);
        if let Some(done) = on_written.take() {
            done.deliver();
        }
        // Indexed while the disk writes the record (the write-out started
        // above): at 64 appenders indexing takes about as long as the sync,
        // and doing it first made every round that much longer. So entries
        // are readable before they are durable; appenders still learn of
        // their batch only after the sync, a failed sync poisons the WAL,
        // reads included, and purge waits for the sync (see
        // `index_ahead_of_disk`).
        let payload_base = position.offset + format::RECORD_HEADER_BYTES as u64;
        let index_ahead_of_disk = self.index_ahead_of_disk.lock();
        let mut index = self.index.write();
        let spans = &mut tail.scratch.spans;
        let applied: Vec<(u64, Result<(), WalError>)> = units
            .drain(..count)
            .zip(payload_offsets.iter())
            .map(|(unit, &payload_offset)| {
                let ticket = unit.ticket;
                let base = payload_base + payload_offset;
                let applied = apply_unit(&mut index, unit, tail.seq, base, spans);
                if let Err(e) = &applied {
                    self.poison(e);
                }
                (ticket, applied)
            })
            .collect();
        drop(index);
        tail.scratch.payload_offsets = payload_offsets;
        let synced = self.sync_tail(tail);
        drop(index_ahead_of_disk);
        results.extend(applied.into_iter().map(|(ticket, applied)| {
            let outcome = match &synced {
                Ok(()) => applied.map(|()| position),
                Err(e) => Err(e.duplicate()),
            };
            (ticket, outcome)
        }));
        synced?;
        let c = &self.counters;
        c.records.fetch_add(1, Ordering::Relaxed);
        c.batches.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// `pwritev` + `fdatasync` on the active segment.
    fn write_and_sync(&self, tail: &Tail, parts: &[&[u8]]) -> Result<(), WalError> {
        self.write_parts(tail, parts)?;
        self.sync_tail(tail)
    }

    /// `pwritev` of `parts` at the tail, then starts writing them out to the
    /// disk without waiting (see [`SegmentFile::start_writeback`]). A
    /// failure poisons the WAL.
    fn write_parts(&self, tail: &Tail, parts: &[&[u8]]) -> Result<(), WalError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let result = tail.file.write_vectored_at(tail.offset, parts);
        if result.is_ok() {
            tail.file.start_writeback(tail.offset, len as u64);
        }
        self.counters
            .bytes_written
            .fetch_add(len as u64, Ordering::Relaxed);
        metrics::counter!("flotilla_wal_written_bytes_total").increment(len as u64);
        self.io_outcome(tail, result)
    }

    /// `fdatasync` of the active segment. A failure poisons the WAL: after a
    /// failed sync the kernel may have dropped the dirty pages, so nothing
    /// written since the last good sync can be trusted.
    fn sync_tail(&self, tail: &Tail) -> Result<(), WalError> {
        let started = std::time::Instant::now();
        let result = tail.file.sync_data();
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flotilla_wal_syncs_total").increment(1);
        metrics::histogram!("flotilla_wal_sync_seconds").record(started.elapsed().as_secs_f64());
        self.io_outcome(tail, result)
    }

    fn io_outcome(&self, tail: &Tail, result: std::io::Result<()>) -> Result<(), WalError> {
        result.map_err(|e| {
            let err = WalError::io(self.fs.path(&format::segment_file_name(tail.seq)), e);
            self.poison(&err);
            err
        })
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
            self.write_and_sync(tail, &[&seal])?;
            tail.offset += seal.len() as u64;
            tail.sealed = true;
        }
        let segments = self.index.read().segments.len();
        let limit = self.config.segment_count_max + usize::from(may_use_reserve);
        if segments >= limit {
            return Err(WalError::Full { segments });
        }
        // Sealed and synced: its pages can go back to the kernel for reuse.
        self.release_cache_of(Arc::clone(&tail.file));
        let seq = tail.seq + 1;
        let from_spare = purge::take_spare(&*self.fs, &mut self.spares.lock(), seq)?;
        let file = purge::provide_segment(&*self.fs, &self.config, from_spare, seq)?;
        {
            let mut index = self.index.write();
            index.segments.insert(seq, Arc::clone(&file));
            index.active_seq = seq;
        }
        tail.seq = seq;
        tail.file = file;
        tail.offset = format::SEGMENT_HEADER_BYTES as u64;
        tail.sealed = false;
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
    ///
    /// The request may be stale: a round can see no spare, then ask for one
    /// after the preparer has made it, and by the time the preparer gets
    /// here a rotation may have taken that spare. Then this makes the spare
    /// for the rotation after, named after a segment that now exists. That
    /// is harmless: a spare's name only identifies it (`retire_segment`
    /// checks for the clash), and a taken spare no longer has a `.spare`
    /// name (see `purge::take_spare`), so nothing here can touch it.
    ///
    /// The file is made without holding the spare list's lock (see
    /// `purge::create_spare`), so a round asking whether a spare exists
    /// never waits for one being zero-filled.
    fn create_spare_now(&self, seq: u64) {
        let _one_at_a_time = self.creating_spare.lock();
        if !self.spares.lock().is_empty() {
            return;
        }
        let Ok(prepared) = purge::create_spare(&*self.fs, &self.config, seq) else {
            return;
        };
        let mut spares = self.spares.lock();
        // Purge may have made a spare meanwhile; one is enough.
        if spares.is_empty()
            && self
                .fs
                .rename(&prepared, &format::spare_file_name(seq))
                .is_ok()
        {
            spares.push(seq);
        } else {
            drop(spares);
            let _ = self.fs.remove(&prepared);
        }
    }

    /// Releases the cached pages of a sealed segment, off the round's path
    /// when a preparer thread exists (dropping 64 MiB of pages takes
    /// milliseconds).
    fn release_cache_of(&self, file: Arc<dyn SegmentFile>) {
        if self.config.prepare_in_background {
            self.prepare.lock().release.push(file);
            self.prepare_cv.notify_one();
        } else {
            file.release_cache();
        }
    }

    /// Body of the background preparer thread.
    pub(crate) fn preparer_main(&self) {
        loop {
            let (next, release) = {
                let mut p = self.prepare.lock();
                while p.next_seq.is_none() && p.release.is_empty() && !p.shutdown {
                    self.prepare_cv.wait(&mut p);
                }
                if p.shutdown {
                    return;
                }
                (p.next_seq.take(), std::mem::take(&mut p.release))
            };
            for file in release {
                file.release_cache();
            }
            if let Some(seq) = next {
                self.create_spare_now(seq);
            }
        }
    }
}

fn panic_reason() -> String {
    "a WAL write round panicked".to_string()
}

/// The waiters of a round, in ticket order (the queue is filled in ticket
/// order).
fn waiters_of(work: &[Pending]) -> Vec<(u64, Arc<Waiter>)> {
    work.iter()
        .map(|p| (p.ticket, Arc::clone(&p.waiter)))
        .collect()
}

/// A round written and synced whose appenders are not woken yet.
pub(crate) struct Finished {
    waiters: Vec<(u64, Arc<Waiter>)>,
    round: Arc<RoundSignal>,
    results: RoundResults,
}

impl Finished {
    /// Hands every waiter of the round its result, then wakes them all. A
    /// round answers each of its tickets exactly once; a ticket left
    /// unanswered would hang its appender, so it is failed instead (and
    /// debug builds stop).
    fn deliver(self) {
        let Finished {
            waiters,
            round,
            results,
        } = self;
        let mut answered = vec![false; waiters.len()];
        for (ticket, result) in results {
            let slot = waiters
                .binary_search_by_key(&ticket, |(t, _)| *t)
                .expect("a round answers only its own tickets");
            debug_assert!(!answered[slot], "ticket {ticket} answered twice");
            answered[slot] = true;
            waiters[slot].1.set(result);
        }
        for ((ticket, waiter), done) in waiters.iter().zip(answered) {
            debug_assert!(done, "ticket {ticket} left unanswered");
            if !done {
                let reason = format!("ticket {ticket} was not answered by its round");
                waiter.set(Err(WalError::Poisoned { reason }));
            }
        }
        round.finish();
    }
}

/// Fails every waiter of a round that panicked (the WAL is poisoned).
fn fail_after_panic(waiters: &[(u64, Arc<Waiter>)], round: &RoundSignal) {
    for (_, waiter) in waiters {
        waiter.set(Err(WalError::Poisoned {
            reason: panic_reason(),
        }));
    }
    round.finish();
}

/// A batch's encoded bytes, the positions of its entries in them, and their
/// crc32 state (computed by the appender, so the round only combines).
#[derive(Debug)]
pub(crate) struct Encoded {
    bytes: Arc<Vec<u8>>,
    spans: Vec<EntrySpan>,
    crc: crc32fast::Hasher,
}

/// Encodes `items` (entry spans relative to the encoded bytes) and drops
/// the entries' data: from here on the encoded bytes are the only copy, and
/// the index caches entries by pointing into them. Dropping the data here
/// frees it on the thread that allocated it (the appender's), which is
/// cheaper than freeing thousands of buffers on the round's thread.
fn encode_work(mut items: Vec<WalItem>) -> EncodedWork {
    let len: usize = items.iter().map(format::encoded_item_bytes).sum();
    let entry_count: usize = items
        .iter()
        .map(|item| match item {
            WalItem::Entries { entries, .. } => entries.len(),
            _ => 0,
        })
        .sum();
    let mut bytes = Vec::with_capacity(len);
    let mut spans = Vec::with_capacity(entry_count);
    for item in &items {
        format::encode_item(item, &mut bytes, &mut spans);
    }
    for item in &mut items {
        if let WalItem::Entries { entries, .. } = item {
            for entry in entries {
                entry.data = Vec::new();
            }
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes);
    let encoded = Encoded {
        bytes: Arc::new(bytes),
        spans,
        crc,
    };
    EncodedWork { items, encoded }
}

/// Applies a written unit to the index; `base` is the segment offset of the
/// unit's first byte. `abs` is scratch space for entry positions.
fn apply_unit(
    index: &mut Index,
    unit: Unit,
    seq: u64,
    base: u64,
    abs: &mut Vec<EntrySpan>,
) -> Result<(), WalError> {
    let work = &unit.work;
    let batch = BatchBytes {
        bytes: Arc::clone(&work.encoded.bytes),
        base,
    };
    let mut spans = work.encoded.spans.iter();
    for item in &work.items {
        let n = match item {
            WalItem::Entries { entries, .. } => entries.len(),
            _ => 0,
        };
        abs.clear();
        abs.extend(spans.by_ref().take(n).map(|s| EntrySpan {
            offset: base + s.offset,
            len: s.len,
        }));
        index
            .apply(item, seq, abs, ApplyMode::Live(&batch))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use crate::wal::file::WalFs;
    use crate::wal::sim_fs::SimFs;
    use crate::wal::{LogEntry, Wal, WalConfig, WalError, WriteBatch};

    type OnceHook = Box<dyn FnOnce() + Send>;

    fn entry(index: u64) -> LogEntry {
        LogEntry {
            index,
            term: 1,
            kind: 0,
            data: vec![index as u8; 6000],
        }
    }

    /// 64 KiB segments without zero-filling or cache, so a few appends
    /// reach the points these tests need.
    fn small_segments(prepare_in_background: bool) -> WalConfig {
        WalConfig {
            segment_bytes: 64 << 10,
            cache_bytes_max: 0,
            zero_fill_segments: false,
            prepare_in_background,
            ..WalConfig::default()
        }
    }

    /// Appends entry `next` of group 1 and moves `next` on.
    fn append_next(wal: &Wal, next: &mut u64) {
        let mut b = WriteBatch::new();
        b.add_entries(1, vec![entry(*next)]);
        wal.append(b).unwrap();
        *next += 1;
    }

    fn spare_files(fs: &SimFs) -> Vec<String> {
        let names = fs.list().unwrap().into_iter();
        names.filter(|n| n.ends_with(".spare")).collect()
    }

    /// Regression: a round saw no spare and asked the preparer for spare `n`
    /// just after the preparer had made it; a rotation then took `{n}.spare`,
    /// and the preparer, serving the second request while the rotation was
    /// reusing the file, found the list empty, took the file for a leftover,
    /// deleted it and made a new one. The rotation renamed the new, headerless
    /// file into place while writing to the deleted one, and the list named a
    /// spare whose file the rotation had renamed away (`{n}.spare: NotFound`
    /// at the next rotation). Here the preparer's step runs at the moment
    /// the rotation writes the new segment's header.
    #[test]
    fn a_stale_prepare_request_leaves_a_spare_being_reused_alone() {
        let fs = SimFs::new(3);
        // Runs once, at the next segment header write.
        let hook: Arc<Mutex<Option<OnceHook>>> = Arc::default();
        let config = small_segments(false);
        let pending = Arc::clone(&hook);
        fs.set_header_write_hook(Some(Arc::new(move || {
            let once = pending.lock().take();
            if let Some(once) = once {
                once();
            }
        })));
        let wal = Wal::open_with_fs(Arc::new(fs.clone()), config.clone()).unwrap();
        let mut next = 1;
        let mut append = || append_next(&wal, &mut next);

        // Segment 1 is half full: spare 2 is made for the rotation into 2.
        while wal.spare_count() == 0 {
            append();
        }
        assert_eq!(spare_files(&fs), ["0000000000000002.spare"]);

        // The rotation into 2 takes spare 2 while the preparer serves a
        // second request for it.
        let shared = Arc::downgrade(&wal.shared);
        *hook.lock() = Some(Box::new(move || {
            shared.upgrade().unwrap().create_spare_now(2);
        }));
        while wal.stats().rotations == 0 {
            append();
        }
        assert!(hook.lock().is_none(), "the rotation wrote no header");
        assert_eq!(
            spare_files(&fs).len(),
            wal.spare_count(),
            "spare list and spare files disagree: {:?}",
            spare_files(&fs)
        );

        // Rotate on (taking the spare made meanwhile), then recover.
        while wal.stats().rotations < 3 {
            append();
        }
        let last = next - 1;
        drop(wal);
        fs.set_header_write_hook(None);
        let wal = Wal::open_with_fs(Arc::new(fs), config).unwrap();
        assert_eq!(wal.last_index(1), last);
        for e in wal.entries(1, 1, last + 1, u64::MAX).unwrap() {
            assert_eq!(e, entry(e.index));
        }
    }

    /// Regression: the preparer held the spare list's lock while it created
    /// and zero-filled a spare, and every round asks that list whether a
    /// spare exists once the active segment is half full; so appends stalled
    /// for as long as a segment took to zero-fill. Here the spare's creation
    /// is held until the appends are done.
    #[test]
    fn appends_do_not_wait_for_a_spare_being_made() {
        use std::sync::mpsc;
        use std::time::Duration;

        let fs = SimFs::new(7);
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let release_rx = Mutex::new(release_rx);
        fs.set_create_hook(Some(Arc::new(move |name: &str| {
            if name.ends_with(".prep") {
                let _ = entered_tx.lock().send(());
                let _ = release_rx.lock().recv_timeout(Duration::from_secs(30));
            }
        })));
        let config = small_segments(true);
        let wal = Arc::new(Wal::open_with_fs(Arc::new(fs.clone()), config).unwrap());
        let appender = {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut next = 1;
                let mut append = || append_next(&wal, &mut next);
                // Until the preparer is inside the spare's creation.
                while entered_rx.try_recv().is_err() {
                    append();
                }
                // The segment is at least half full: each of these rounds
                // asks for a spare.
                for _ in 0..3 {
                    append();
                }
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !appender.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = appender.is_finished();
        let _ = release_tx.send(());
        appender.join().unwrap();
        assert!(finished, "appends waited for the spare being made");
        fs.set_create_hook(None);
    }

    /// Entries are indexed while their record syncs; if the sync fails, the
    /// index describes a write that is not durable, so reads fail too.
    #[test]
    fn a_failed_sync_poisons_reads_as_well_as_appends() {
        let fs = SimFs::new(11);
        let wal = Wal::open_with_fs(Arc::new(fs.clone()), WalConfig::default()).unwrap();
        let mut b = WriteBatch::new();
        b.add_entries(1, vec![entry(1)]);
        wal.append(b).unwrap();
        assert_eq!(wal.entries(1, 1, 2, u64::MAX).unwrap(), vec![entry(1)]);

        // The next record's write succeeds, its sync fails.
        fs.fail_op_in(2);
        let mut b = WriteBatch::new();
        b.add_entries(1, vec![entry(2)]);
        let err = wal.append(b).unwrap_err();
        assert!(matches!(err, WalError::Io { .. }), "{err}");
        for err in [
            wal.entries(1, 1, 2, u64::MAX).unwrap_err(),
            wal.term(1, 1).unwrap_err(),
        ] {
            assert!(matches!(err, WalError::Poisoned { .. }), "{err}");
        }
        let mut b = WriteBatch::new();
        b.add_entries(2, vec![entry(1)]);
        let err = wal.append(b).unwrap_err();
        assert!(matches!(err, WalError::Poisoned { .. }), "{err}");

        // Reopening recovers what is durable.
        drop(wal);
        fs.clear_faults();
        fs.crash();
        let wal = Wal::open_with_fs(Arc::new(fs), WalConfig::default()).unwrap();
        assert_eq!(wal.last_index(1), 1);
    }
}
