//! The shared write-ahead log.
//!
//! Every Raft group of a node writes through one log so that one `fdatasync`
//! makes many groups' entries durable at once. A caller hands a
//! [`WriteBatch`] (items of any number of groups) to [`Wal::append`], which
//! returns only when the batch is durable; concurrent callers share syncs
//! (group commit, see `writer.rs`).
//!
//! Layout of this module, one job per file:
//!
//! - `batch.rs`: the values callers write ([`LogEntry`], [`HardState`],
//!   [`WalItem`], [`WriteBatch`]).
//! - `format.rs`: the byte format, documented next to its encoder/decoder.
//! - `file.rs`: the file-layer traits and the real (pwrite + mmap) layer.
//! - `sim_fs.rs`: the simulated file layer (crashes, torn writes, faults).
//! - `writer.rs`: group commit and segment rotation.
//! - `index.rs`: per-group index, entry cache, reads.
//! - `purge.rs`: freeing, recycling and rewriting to keep the log bounded.
//! - `recovery.rs`: rebuilding the index at open; torn tail vs corruption.
//! - `sim.rs`: a seeded crash-recovery simulation against an oracle.
//!
//! Durability contract: when `append` returns `Ok`, the batch survives any
//! crash. When it returns `Err` (or never returns because the process died),
//! the batch is either fully recovered or not at all: one batch is never
//! split across records. Recovery never drops a record that was followed by
//! another valid record; damage that is not a torn tail is reported as
//! [`WalError::Corruption`], never skipped.
//!
//! ```
//! use std::sync::Arc;
//! use flotilla::wal::sim_fs::SimFs;
//! use flotilla::wal::{HardState, LogEntry, Wal, WalConfig, WriteBatch};
//!
//! // `Wal::open(dir, config)` on a real disk; a simulated one here.
//! let config = WalConfig { segment_bytes: 1 << 20, ..WalConfig::default() };
//! let wal = Wal::open_with_fs(Arc::new(SimFs::new(1)), config)?;
//! let mut batch = WriteBatch::new();
//! batch
//!     .add_entries(7, vec![LogEntry { index: 1, term: 1, kind: 0, data: b"put k v".to_vec() }])
//!     .set_hard_state(7, HardState { term: 1, vote: 2, commit: 0 })
//!     .add_entries(8, vec![LogEntry { index: 1, term: 3, kind: 0, data: Vec::new() }]);
//! wal.append(batch)?; // durable once this returns
//! assert_eq!(wal.last_index(7), 1);
//! assert_eq!(wal.entries(7, 1, 2, u64::MAX)?[0].data, b"put k v");
//! assert_eq!(wal.hard_state(7).map(|hs| hs.vote), Some(2));
//! # Ok::<(), flotilla::wal::WalError>(())
//! ```
//!
//! Known limits: if the newest segment file is deleted from outside, its
//! predecessor (sealed) looks like a clean end and its records are lost
//! without an error; a manifest would be needed to notice. Bit rot in the
//! very last record is indistinguishable from a torn write and is dropped
//! as one.

mod batch;
pub mod file;
pub mod format;
mod index;
pub mod inspect;
mod purge;
mod recovery;
pub mod sim;
pub mod sim_fs;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};
use thiserror::Error;

pub use batch::{GroupId, HardState, LogEntry, WalItem, WriteBatch};
pub use file::{DiskFs, ReadView, SegmentFile, WalFs};
pub use purge::{PinReason, PinningGroup, PurgeReport};
pub use recovery::RecoveryReport;

use index::Index;
use writer::{CommitQueue, Tail};

/// Everything that can go wrong in the WAL. Each variant says what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WalError {
    /// Bytes on disk are damaged somewhere other than a torn final record.
    /// The WAL refuses to open rather than silently losing acknowledged
    /// writes: restore the node from its peers or a backup.
    #[error(
        "WAL corruption in segment {segment} ({}) at byte offset {offset}: {reason}; \
         the log cannot be trusted past this point, rebuild this replica from its peers",
        path.display()
    )]
    Corruption {
        /// Sequence of the damaged segment.
        segment: u64,
        /// Its file.
        path: PathBuf,
        /// Byte offset of the damaged record within the segment.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An operating-system IO error.
    #[error("WAL IO error on {}: {source}", path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The disk has no room for another segment. Free space, or purge after
    /// snapshotting the groups [`Wal::groups_pinning`] names.
    #[error(
        "no space for a new WAL segment in {}: {needed_bytes} bytes needed, \
         {available_bytes} available; free disk space or purge the WAL",
        path.display()
    )]
    NoSpace {
        /// The directory.
        path: PathBuf,
        /// Size of a segment.
        needed_bytes: u64,
        /// Free bytes reported by the file system.
        available_bytes: u64,
    },
    /// The WAL reached [`WalConfig::segment_count_max`]. Snapshot or rewrite
    /// the groups [`Wal::groups_pinning`] names, purge, then retry.
    #[error(
        "WAL is full: {segments} segments reach segment_count_max; compact or rewrite the \
         groups pinning old segments (Wal::groups_pinning), purge, and retry"
    )]
    Full {
        /// Segments currently held.
        segments: usize,
    },
    /// The requested entry was compacted away; use the snapshot.
    #[error("group {group}: entry {index} is compacted (log starts at {first_index})")]
    EntryCompacted {
        /// Group asked for.
        group: GroupId,
        /// Index asked for.
        index: u64,
        /// First index still in the log.
        first_index: u64,
    },
    /// The requested entry is past the end of the log.
    #[error("group {group}: entry {index} is not in the log (last index is {last_index})")]
    EntryUnavailable {
        /// Group asked for.
        group: GroupId,
        /// Index asked for.
        index: u64,
        /// Last index in the log.
        last_index: u64,
    },
    /// The configuration cannot work; the message says which field.
    #[error("invalid WAL config: {0}")]
    InvalidConfig(String),
    /// The batch breaks a log rule (gap, truncating compacted entries, ...).
    /// Nothing of it was written.
    #[error("invalid write batch: {0}")]
    InvalidBatch(String),
    /// The batch cannot fit in one segment; split it or raise `segment_bytes`.
    #[error("batch of {bytes} bytes exceeds the {max_bytes}-byte limit of one WAL record")]
    BatchTooLarge {
        /// Encoded size of the batch.
        bytes: u64,
        /// Largest payload a record can hold.
        max_bytes: u64,
    },
    /// An earlier write or sync failed. After a failed `fdatasync` the page
    /// cache can no longer be trusted, so the WAL stops; reopen it to recover
    /// from what is really on disk.
    #[error("WAL stopped accepting writes after an earlier failure ({reason}); reopen it")]
    Poisoned {
        /// The first failure.
        reason: String,
    },
}

impl WalError {
    fn io(path: PathBuf, source: io::Error) -> Self {
        WalError::Io { path, source }
    }

    /// A copy for another waiter of the same failed round (`io::Error` is not
    /// `Clone`, so its kind and message are carried over).
    fn duplicate(&self) -> Self {
        match self {
            WalError::Corruption {
                segment,
                path,
                offset,
                reason,
            } => WalError::Corruption {
                segment: *segment,
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            WalError::Io { path, source } => WalError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            WalError::NoSpace {
                path,
                needed_bytes,
                available_bytes,
            } => WalError::NoSpace {
                path: path.clone(),
                needed_bytes: *needed_bytes,
                available_bytes: *available_bytes,
            },
            WalError::Full { segments } => WalError::Full {
                segments: *segments,
            },
            WalError::EntryCompacted {
                group,
                index,
                first_index,
            } => WalError::EntryCompacted {
                group: *group,
                index: *index,
                first_index: *first_index,
            },
            WalError::EntryUnavailable {
                group,
                index,
                last_index,
            } => WalError::EntryUnavailable {
                group: *group,
                index: *index,
                last_index: *last_index,
            },
            WalError::InvalidConfig(s) => WalError::InvalidConfig(s.clone()),
            WalError::InvalidBatch(s) => WalError::InvalidBatch(s.clone()),
            WalError::BatchTooLarge { bytes, max_bytes } => WalError::BatchTooLarge {
                bytes: *bytes,
                max_bytes: *max_bytes,
            },
            WalError::Poisoned { reason } => WalError::Poisoned {
                reason: reason.clone(),
            },
        }
    }
}

/// How concurrent appends share syncs. All give the same guarantees; they
/// differ in latency and CPU use, so all exist to be benchmarked
/// (`flotilla-bench wal --sync-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// An appender that finds no round running runs one itself, on its own
    /// call; if appenders queued meanwhile, the dedicated sync thread takes
    /// over and runs rounds until the queue is empty. A lone appender pays
    /// no thread hand-off (as with `LeaderFollower`), and under contention
    /// rounds follow each other without waking a new leader each time (as
    /// with `SyncThread`). Measured the fastest of the three in every cell
    /// compared (1, 16 and 64 appenders).
    #[default]
    Adaptive,
    /// The first waiting appender becomes the sync leader: it writes every
    /// queued batch as one record, syncs, and hands the role to an appender
    /// of the next round. No extra thread.
    LeaderFollower,
    /// A dedicated thread writes and syncs; appenders only enqueue and wait.
    SyncThread,
}

/// WAL settings. [`WalConfig::default`] suits production; tests shrink
/// `segment_bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of every segment file. Larger segments mean fewer rotations but
    /// coarser purging. Multiple of 4096, between 64 KiB and 4 GiB.
    pub segment_bytes: u64,
    /// Bound on the bytes of recent entries kept in memory; older entries
    /// are read back from the segments.
    pub cache_bytes_max: usize,
    /// Group-commit strategy.
    pub sync_mode: SyncMode,
    /// Freed segments kept as spares for reuse (0 = delete them). Reusing
    /// already-written extents avoids the extent conversion a sync into a
    /// freshly allocated file pays.
    pub recycle_segments_max: usize,
    /// Appends fail with [`WalError::Full`] rather than grow past this many
    /// segments. One more segment is kept in reserve for writes that only
    /// free space (compactions, snapshot markers, removals, purge and
    /// `rewrite_forward`), so a full WAL can always be compacted.
    pub segment_count_max: usize,
    /// Write zeros over a new segment file once, before it is used. Syncs
    /// into freshly `fallocate`d (unwritten) extents also journal the extent
    /// conversion; measured 1.2–3.4× slower per sync than into written
    /// extents on this class of machine (`tests/wal_bench.rs`). Costs one
    /// extra write of the segment when it is created, normally ahead of
    /// time.
    ///
    /// That extra write is the largest cost left when appends never let a
    /// segment be recycled (`flotilla-bench wal`, 10,000 groups × 64
    /// writers × 16 entries): with spares made before the run, the cell ran
    /// 2.69 M entries/s against 2.13 M. Turning zero-fill off does not win
    /// it back: the 64-writer × 16-entry cells fell 4–12 % (the conversions
    /// cost more than the zeros), 16 writers × 1 entry fell 28 %, though p99
    /// at 64 writers dropped from 1.9 to 0.9 ms. Zero-filling through `O_DIRECT` with
    /// whole-page record writes saved CPU but no throughput.
    pub zero_fill_segments: bool,
    /// Create the next segment file on a background thread once the active
    /// segment is half full, so no append waits for it. Off: the thread that
    /// notices does it (the simulator uses this to stay deterministic).
    pub prepare_in_background: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            cache_bytes_max: 64 << 20,
            sync_mode: SyncMode::Adaptive,
            recycle_segments_max: 2,
            segment_count_max: 4096,
            zero_fill_segments: true,
            prepare_in_background: true,
        }
    }
}

impl WalConfig {
    /// Smallest allowed segment.
    pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
    /// Largest allowed segment (record lengths are 32-bit).
    pub const SEGMENT_BYTES_MAX: u64 = 4 << 30;

    fn validate(&self) -> Result<(), WalError> {
        if self.segment_bytes < Self::SEGMENT_BYTES_MIN
            || self.segment_bytes > Self::SEGMENT_BYTES_MAX
            || self.segment_bytes % 4096 != 0
        {
            return Err(WalError::InvalidConfig(format!(
                "segment_bytes = {} must be a multiple of 4096 between {} and {}",
                self.segment_bytes,
                Self::SEGMENT_BYTES_MIN,
                Self::SEGMENT_BYTES_MAX
            )));
        }
        if self.segment_count_max < 2 {
            return Err(WalError::InvalidConfig(format!(
                "segment_count_max = {} must be at least 2 (one to fill, one to rotate into)",
                self.segment_count_max
            )));
        }
        Ok(())
    }

    /// Largest batch payload one record can carry.
    pub fn record_payload_bytes_max(&self) -> u64 {
        self.segment_bytes
            - (format::SEGMENT_HEADER_BYTES + format::RECORD_HEADER_BYTES + format::SEAL_BYTES)
                as u64
    }
}

/// Where a batch landed: its record's segment and byte offset. Positions
/// grow with every append, so they order batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WritePosition {
    /// Segment sequence.
    pub segment: u64,
    /// Byte offset of the record in the segment.
    pub offset: u64,
}

/// Counters for monitoring and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records written since open.
    pub records: u64,
    /// Batches made durable since open.
    pub batches: u64,
    /// `fdatasync` calls since open (records plus seals).
    pub syncs: u64,
    /// Bytes written since open.
    pub bytes_written: u64,
    /// Segments created or reused since open.
    pub rotations: u64,
    /// Segments freed since open.
    pub segments_freed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    bytes_written: AtomicU64,
    rotations: AtomicU64,
    segments_freed: AtomicU64,
}

/// State shared by callers and the sync thread. Lock order:
/// `purge_lock` → `tail` → `index_ahead_of_disk` → `index` → `spares` →
/// `commit`, and
/// `creating_spare` → `spares`; `commit` is a leaf, never held while waiting
/// for IO or another lock. Each appender's result slot (`writer::Waiter`) is
/// a leaf too.
#[derive(Debug)]
struct Shared {
    fs: Arc<dyn WalFs>,
    config: WalConfig,
    commit: Mutex<CommitQueue>,
    /// Wakes the sync thread.
    work_cv: Condvar,
    tail: Mutex<Tail>,
    index: RwLock<Index>,
    /// Held by a round from applying a record to the index until that
    /// record's sync has returned (or failed and poisoned the WAL): the
    /// index runs ahead of the disk meanwhile, so entries can be read while
    /// the disk works. Purge takes it, so it never frees a segment on the
    /// strength of a compaction or removal that a crash could still undo.
    /// Not `tail`: a round holds that through rotations too, which may wait
    /// on file creation.
    index_ahead_of_disk: Mutex<()>,
    /// Spare segment files kept for reuse, by the sequence in their name
    /// (a freed segment's, or the one a spare was made ahead of time for).
    /// Whenever the lock is free this names exactly the `.spare` files in
    /// use: every create, rename or remove of a `.spare` name happens with
    /// it held (see `purge::take_spare`).
    spares: Mutex<Vec<u64>>,
    purge_lock: Mutex<()>,
    /// Held while a spare is created ahead of time (taken before `spares`,
    /// with nothing else held), so two creations never share a file name.
    creating_spare: Mutex<()>,
    /// Request to the background preparer: the sequence the next spare is
    /// for, or shutdown.
    prepare: Mutex<writer::PrepareRequest>,
    prepare_cv: Condvar,
    counters: Counters,
    /// Set with `CommitQueue::poisoned`, readable without its lock: reads
    /// fail once the WAL is poisoned, since the index may then describe
    /// writes whose sync failed.
    poisoned: AtomicBool,
}

impl Shared {
    fn check_not_poisoned(&self) -> Result<(), WalError> {
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        let reason = self.commit.lock().poisoned.clone();
        Err(WalError::Poisoned {
            reason: reason.unwrap_or_default(),
        })
    }

    /// The index names segments by file name only; errors leaving the WAL
    /// carry the full path.
    fn with_full_path(&self, err: WalError) -> WalError {
        match err {
            WalError::Corruption {
                segment,
                offset,
                reason,
                ..
            } => WalError::Corruption {
                segment,
                path: self.fs.path(&format::segment_file_name(segment)),
                offset,
                reason,
            },
            other => other,
        }
    }
}

/// The write-ahead log. Share it between threads by reference or `Arc`.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    sync_thread: Option<JoinHandle<()>>,
    preparer: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
}

impl Wal {
    /// Opens (or creates) the WAL in `dir` on the real file system,
    /// recovering its contents.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Wal, WalError> {
        let dir = dir.as_ref();
        let fs = DiskFs::new(dir).map_err(|e| WalError::io(dir.to_path_buf(), e))?;
        Self::open_with_fs(Arc::new(fs), config)
    }

    /// Opens the WAL on any file layer (the simulator uses this).
    pub fn open_with_fs(fs: Arc<dyn WalFs>, config: WalConfig) -> Result<Wal, WalError> {
        config.validate()?;
        let recovered = recovery::recover(&fs, &config)?;
        let recovery = recovered.report;
        let shared = Arc::new(Shared {
            fs,
            work_cv: Condvar::new(),
            commit: Mutex::new(CommitQueue::default()),
            tail: Mutex::new(recovered.tail),
            index: RwLock::new(recovered.index),
            index_ahead_of_disk: Mutex::new(()),
            spares: Mutex::new(recovered.spares),
            purge_lock: Mutex::new(()),
            creating_spare: Mutex::new(()),
            prepare: Mutex::new(writer::PrepareRequest::default()),
            prepare_cv: Condvar::new(),
            counters: Counters::default(),
            poisoned: AtomicBool::new(false),
            config,
        });
        let sync_thread = match shared.config.sync_mode {
            SyncMode::LeaderFollower => None,
            SyncMode::SyncThread | SyncMode::Adaptive => {
                let s = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name("wal-sync".into())
                    .spawn(move || s.sync_thread_main())
                    .map_err(|e| WalError::io(PathBuf::from("wal-sync thread"), e))?;
                Some(handle)
            }
        };
        let preparer = if shared.config.prepare_in_background {
            let s = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name("wal-prepare".into())
                .spawn(move || s.preparer_main())
                .map_err(|e| WalError::io(PathBuf::from("wal-prepare thread"), e))?;
            Some(handle)
        } else {
            None
        };
        Ok(Wal {
            shared,
            sync_thread,
            preparer,
            recovery,
        })
    }

    /// Appends `batch` and returns once it is durable. Concurrent calls share
    /// one sync. The batch is validated against the log first; an invalid
    /// batch is rejected whole with [`WalError::InvalidBatch`].
    ///
    /// Visibility: the batch is readable (entries, terms, indexes, hard
    /// state) from the moment its record is written, slightly before the
    /// sync makes it durable and this call returns; a leader may ship such
    /// entries, as Raft allows. If that sync fails, the WAL is poisoned:
    /// appends, [`Wal::entries`] and [`Wal::term`] fail from then on, and
    /// only reopening (which recovers what is durable) clears it.
    pub fn append(&self, batch: WriteBatch) -> Result<WritePosition, WalError> {
        self.shared.append(batch)
    }

    /// Entries `[lo, hi)` of `group`, stopping once their total
    /// [`LogEntry::size_bytes`] would exceed `max_bytes` (at least one entry is
    /// returned when the range is not empty).
    pub fn entries(
        &self,
        group: GroupId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<LogEntry>, WalError> {
        self.shared.check_not_poisoned()?;
        let result = self.shared.index.read().entries(group, lo, hi, max_bytes);
        result.map_err(|e| self.shared.with_full_path(e))
    }

    /// Term of entry `index` of `group`; also answers for `first_index - 1`
    /// (the entry before the log, known from compaction or the snapshot).
    pub fn term(&self, group: GroupId, index: u64) -> Result<u64, WalError> {
        self.shared.check_not_poisoned()?;
        self.shared.index.read().term(group, index)
    }

    /// First index that may be in the log (1 for an unknown group).
    pub fn first_index(&self, group: GroupId) -> u64 {
        self.shared.index.read().first_index(group)
    }

    /// Last index in the log (`first_index - 1` when empty).
    pub fn last_index(&self, group: GroupId) -> u64 {
        self.shared.index.read().last_index(group)
    }

    /// Latest hard state of `group` (see the visibility note on
    /// [`Wal::append`]).
    pub fn hard_state(&self, group: GroupId) -> Option<HardState> {
        self.shared.index.read().hard_state(group)
    }

    /// Groups with any state (entries, a hard state or a compacted start),
    /// in ascending order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared.index.read().groups()
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            records: c.records.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
            segments_freed: c.segments_freed.load(Ordering::Relaxed),
        }
    }

    /// Bytes of entries held in the cache (at most
    /// [`WalConfig::cache_bytes_max`]).
    pub fn cache_bytes(&self) -> usize {
        self.shared.index.read().cache_bytes()
    }

    /// What recovery found when this WAL was opened.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.recovery
    }

    /// The configuration in use.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(handle) = self.sync_thread.take() {
            self.shared.commit.lock().shutdown = true;
            self.shared.work_cv.notify_all();
            // A panic in the sync thread already failed its waiters.
            let _ = handle.join();
        }
        if let Some(handle) = self.preparer.take() {
            self.shared.prepare.lock().shutdown = true;
            self.shared.prepare_cv.notify_all();
            // The preparer only makes spares; its failure loses nothing.
            let _ = handle.join();
        }
    }
}
