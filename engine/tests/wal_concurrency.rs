//! Many threads appending at once: each append returns only when durable,
//! syncs are shared, and a crash in the middle keeps every acknowledged batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use flotilla::wal::sim_fs::SimFs;
use flotilla::wal::{LogEntry, SyncMode, Wal, WalConfig, WalError, WalFs, WriteBatch};

const THREADS: u64 = 8;

fn entry(group: u64, index: u64) -> LogEntry {
    LogEntry {
        index,
        term: 1,
        kind: 0,
        data: vec![(group * 31 + index) as u8; 200 + (index % 7) as usize * 100],
    }
}

fn batch(group: u64, index: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.add_entries(group, vec![entry(group, index)]);
    b
}

/// Each thread appends to its own group and checks what it can see right
/// after each acknowledgement. Returns how many batches each thread got
/// acknowledged before the first error.
fn hammer(wal: &Wal, per_thread: u64) -> Vec<u64> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..=THREADS)
            .map(|group| {
                let stop = &stop;
                s.spawn(move || {
                    let mut last_position = None;
                    for index in 1..=per_thread {
                        if stop.load(Ordering::Relaxed) {
                            return index - 1;
                        }
                        match wal.append(batch(group, index)) {
                            Ok(position) => {
                                assert!(Some(position) > last_position, "positions grow");
                                last_position = Some(position);
                                assert_eq!(wal.last_index(group), index, "visible once durable");
                            }
                            Err(_) => {
                                stop.store(true, Ordering::Relaxed);
                                return index - 1;
                            }
                        }
                    }
                    per_thread
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn check_groups(wal: &Wal, acked: &[u64]) {
    for (k, &n) in acked.iter().enumerate() {
        let group = k as u64 + 1;
        let last = wal.last_index(group);
        // The batch in flight when the power went may or may not survive.
        assert!(
            last == n || last == n + 1,
            "group {group}: {n} acknowledged, {last} recovered"
        );
        for e in wal.entries(group, 1, last + 1, u64::MAX).unwrap() {
            assert_eq!(e, entry(group, e.index));
        }
    }
}

/// Every group-commit strategy, for tests that must hold under each.
const MODES: [SyncMode; 3] = [
    SyncMode::Adaptive,
    SyncMode::LeaderFollower,
    SyncMode::SyncThread,
];

#[test]
fn eight_threads_share_syncs_on_a_real_disk() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 256 << 10,
            cache_bytes_max: 32 << 10,
            sync_mode: mode,
            ..WalConfig::default()
        };
        let wal = Wal::open(dir.path(), config.clone()).unwrap();
        let acked = hammer(&wal, 150);
        assert_eq!(acked, vec![150; THREADS as usize]);
        let stats = wal.stats();
        assert_eq!(stats.batches, 150 * THREADS);
        assert!(stats.rotations >= 2, "{stats:?}");
        // Group commit: concurrent batches share records and syncs.
        assert!(
            stats.records < stats.batches,
            "{mode:?}: {} records for {} batches",
            stats.records,
            stats.batches
        );
        drop(wal);
        let wal = Wal::open(dir.path(), config).unwrap();
        check_groups(&wal, &acked);
    }
}

#[test]
fn crash_during_concurrent_appends_keeps_every_acknowledged_batch() {
    for (seed, mode) in [
        (1, SyncMode::LeaderFollower),
        (2, SyncMode::SyncThread),
        (3, SyncMode::Adaptive),
        (4, SyncMode::LeaderFollower),
        (5, SyncMode::SyncThread),
        (6, SyncMode::Adaptive),
    ] {
        let fs = SimFs::new(seed);
        fs.set_tear_percent(50);
        let config = WalConfig {
            segment_bytes: 64 << 10,
            cache_bytes_max: 0,
            sync_mode: mode,
            prepare_in_background: false,
            ..WalConfig::default()
        };
        let wal = Wal::open_with_fs(Arc::new(fs.clone()), config.clone()).unwrap();
        fs.power_cut_in(150 + seed * 37);
        let acked = hammer(&wal, 400);
        assert!(fs.is_powered_off());
        assert!(acked.iter().sum::<u64>() > 50, "{acked:?}");
        drop(wal);
        fs.crash();
        let wal = Wal::open_with_fs(Arc::new(fs.clone()), config).unwrap();
        check_groups(&wal, &acked);
    }
}

#[test]
fn appends_reads_purges_and_rewrites_run_concurrently() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 64 << 10,
            cache_bytes_max: 16 << 10,
            sync_mode: mode,
            recycle_segments_max: 2,
            ..WalConfig::default()
        };
        let wal = Wal::open(dir.path(), config.clone()).unwrap();
        let writers_done = AtomicBool::new(false);
        let writers_finished = AtomicU64::new(0);
        const WRITERS: u64 = 6;
        const PER_WRITER: u64 = 300;
        std::thread::scope(|s| {
            for group in 1..=WRITERS {
                let (wal, finished) = (&wal, &writers_finished);
                s.spawn(move || {
                    // Counts the writer as finished even if it panics, so the
                    // test fails instead of hanging.
                    let _finished = Finished(finished);
                    for index in 1..=PER_WRITER {
                        wal.append(batch(group, index)).unwrap();
                        // Keep a short live tail, as a host that snapshots.
                        if index % 25 == 0 {
                            let mut b = WriteBatch::new();
                            b.compact_prefix(group, index - 5);
                            wal.append(b).unwrap();
                        }
                    }
                });
            }
            let (wal, done) = (&wal, &writers_done);
            s.spawn(move || loop {
                // One more pass once the writers are done: on a loaded
                // machine this thread may not have run at all while they
                // wrote.
                let last = done.load(Ordering::Relaxed);
                for p in wal.groups_pinning(2) {
                    wal.rewrite_forward(p.group).unwrap();
                }
                wal.purge().unwrap();
                if last {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            });
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    for group in 1..=WRITERS {
                        let (first, last) = (wal.first_index(group), wal.last_index(group));
                        // Compaction may race ahead of the read; anything
                        // returned must be exactly what was written.
                        match wal.entries(group, first, last + 1, u64::MAX) {
                            Ok(got) => {
                                for e in got {
                                    assert_eq!(e, entry(group, e.index));
                                }
                            }
                            Err(WalError::EntryCompacted { .. }) => {}
                            Err(e) => panic!("group {group}: {e}"),
                        }
                    }
                }
            });
            while writers_finished.load(Ordering::Relaxed) < WRITERS {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            writers_done.store(true, Ordering::Relaxed);
        });
        assert!(
            wal.stats().segments_freed > 0,
            "{mode:?}: nothing was purged"
        );
        let segments = wal.segment_count();
        drop(wal);
        let wal = Wal::open(dir.path(), config).unwrap();
        assert_eq!(wal.segment_count(), segments);
        for group in 1..=WRITERS {
            assert_eq!(wal.first_index(group), PER_WRITER - 5);
            assert_eq!(wal.last_index(group), PER_WRITER);
            for e in wal
                .entries(group, PER_WRITER - 5, PER_WRITER + 1, u64::MAX)
                .unwrap()
            {
                assert_eq!(e, entry(group, e.index));
            }
        }
    }
}

struct Finished<'a>(&'a AtomicU64);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Spare segment files under concurrent rotation, preparation and purge.
//
// A spare is a file `{n}.spare` listed in the WAL's spare list. A rotation
// takes one from the list and turns it into the new segment; the preparer
// makes one ahead of time; purge renames freed segments into spares. These
// tests check that the list and the files on disk never disagree, whatever
// runs while a rotation is between taking a spare and putting it in place.

/// Names of the spare files on `fs`, sorted.
fn spare_files(fs: &dyn WalFs) -> Vec<String> {
    let mut names: Vec<String> = fs
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".spare"))
        .collect();
    names.sort();
    names
}

/// Holds the thread that writes a new segment's header (a rotation that has
/// taken its file but not yet renamed it into place) until the test lets it
/// go.
#[derive(Debug, Default)]
struct HeaderGate {
    state: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Debug, Default, PartialEq)]
enum GateState {
    #[default]
    Open,
    Armed,
    Holding,
    Released,
}

impl HeaderGate {
    /// Holds the next header write.
    fn arm(&self) {
        *self.state.lock().unwrap() = GateState::Armed;
    }

    /// Called before every header write.
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        if *state != GateState::Armed {
            return;
        }
        *state = GateState::Holding;
        self.cv.notify_all();
        while *state != GateState::Released {
            state = self.cv.wait(state).unwrap();
        }
        *state = GateState::Open;
    }

    fn wait_until_holding(&self) {
        let mut state = self.state.lock().unwrap();
        while *state != GateState::Holding {
            state = self.cv.wait(state).unwrap();
        }
    }

    fn release(&self) {
        *self.state.lock().unwrap() = GateState::Released;
        self.cv.notify_all();
    }
}

/// One group's writer: large entries, so a segment fills in a few appends.
struct GroupWriter<'a> {
    wal: &'a Wal,
    group: u64,
    next: u64,
}

impl GroupWriter<'_> {
    fn entry(group: u64, index: u64) -> LogEntry {
        LogEntry {
            index,
            term: 1,
            kind: 0,
            data: vec![(group * 7 + index) as u8; 6000],
        }
    }

    fn append(&mut self) {
        let mut b = WriteBatch::new();
        b.add_entries(self.group, vec![Self::entry(self.group, self.next)]);
        self.wal.append(b).unwrap();
        self.next += 1;
    }

    fn append_until(&mut self, done: impl Fn(&Wal) -> bool) {
        for _ in 0..1000 {
            if done(self.wal) {
                return;
            }
            self.append();
        }
        panic!("condition not reached after 1000 appends");
    }

    /// Compacts every entry: the group then only needs the segment of its
    /// last entry.
    fn compact_all(&mut self) {
        let mut b = WriteBatch::new();
        b.compact_prefix(self.group, self.next);
        self.wal.append(b).unwrap();
    }
}

/// Regression: purge recycled a freed segment `n` into `{n}.spare` while a
/// rotation was turning a spare of the same name (one prepared ahead of time
/// for segment `n`, left unused because recycled spares were taken first)
/// into the new segment. The recycled file replaced the one being reused, so
/// the new segment got the old segment's bytes, the active segment's writes
/// went to an unlinked file, and the spare list named a file that no longer
/// existed (`{n}.spare: NotFound` at the next rotation). Deterministic: the
/// rotation is held at its header write while purge runs.
#[test]
fn purge_recycling_while_a_rotation_takes_a_spare_keeps_list_and_files_in_step() {
    let fs = SimFs::new(7);
    let gate = Arc::new(HeaderGate::default());
    let config = WalConfig {
        segment_bytes: 64 << 10,
        cache_bytes_max: 0,
        recycle_segments_max: 3,
        zero_fill_segments: false,
        // Spares are prepared inline, so the sequence below is exact.
        prepare_in_background: false,
        ..WalConfig::default()
    };
    let held = Arc::clone(&gate);
    fs.set_header_write_hook(Some(Arc::new(move || held.pass())));
    let wal = Wal::open_with_fs(Arc::new(fs.clone()), config.clone()).unwrap();
    let rotations = |n: u64| move |wal: &Wal| wal.stats().rotations == n;
    let mut w = GroupWriter {
        wal: &wal,
        group: 1,
        next: 1,
    };

    // Segments 1..=4; once 4 is half full, spare 5 is prepared.
    w.append_until(rotations(3));
    w.append_until(|wal| wal.spare_count() == 1);
    assert_eq!(wal.stats().rotations, 3);
    assert_eq!(spare_files(&fs), ["0000000000000005.spare"]);

    // Free segments 1..=3: two are recycled on top of spare 5.
    w.compact_all();
    let report = wal.purge().unwrap();
    assert_eq!((report.segments_recycled, report.segments_deleted), (2, 1));
    assert_eq!(wal.spare_count(), 3);

    // Rotations into 5 and 6 take the recycled spares; spare 5 stays while
    // segment 5 exists.
    w.append_until(rotations(5));
    assert_eq!(spare_files(&fs), ["0000000000000005.spare"]);
    assert_eq!(wal.spare_count(), 1);

    // Segments 4 and 5 become free, but are not purged yet.
    w.append();
    w.compact_all();

    // The rotation into 7 takes spare 5; purge frees 4 and 5 meanwhile.
    gate.arm();
    let (report, mut w) = std::thread::scope(|s| {
        let rotating = s.spawn(move || {
            w.append_until(rotations(6));
            w
        });
        gate.wait_until_holding();
        let report = wal.purge().unwrap();
        gate.release();
        (report, rotating.join().unwrap())
    });
    assert_eq!(report.segments_recycled, 2, "{report:?}");
    assert_eq!(
        spare_files(&fs).len(),
        wal.spare_count(),
        "spare list and spare files disagree: {:?}",
        spare_files(&fs)
    );

    // Rotate through both recycled spares and a new file, then recover.
    w.append_until(rotations(9));
    let next = w.next;
    drop(wal);
    let wal = Wal::open_with_fs(Arc::new(fs.clone()), config).unwrap();
    assert_eq!(wal.last_index(1), next - 1);
    let first = wal.first_index(1);
    for e in wal.entries(1, first, next, u64::MAX).unwrap() {
        assert_eq!(e, GroupWriter::entry(1, e.index));
    }
}

/// Stress: rotations back to back while the background preparer makes
/// spares and a purger recycles freed segments into spares, on a real disk.
/// Before the fix, the preparer sometimes acted on a request for spare `n`
/// that had already been served (a round saw no spare and asked for one
/// just as the preparer made it) while a rotation was reusing `{n}.spare`:
/// it took the file for a leftover, deleted it and made a new one, so the
/// new segment was a headerless file, the active segment's writes went to an
/// unlinked file, and the list named a file that no longer existed.
#[test]
fn rotations_prepares_and_purges_keep_spares_and_files_in_step() {
    const GROUPS: u64 = 4;
    const READERS: u64 = 2;
    const ROTATIONS: u64 = 300;
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 64 << 10,
            cache_bytes_max: 0,
            sync_mode: mode,
            recycle_segments_max: 2,
            ..WalConfig::default()
        };
        let wal = Wal::open(dir.path(), config.clone()).unwrap();
        let done = AtomicBool::new(false);
        let next: Vec<u64> = std::thread::scope(|s| {
            let writers: Vec<_> = (1..=GROUPS)
                .map(|group| {
                    let (wal, done) = (&wal, &done);
                    s.spawn(move || {
                        // Stops everyone when this writer stops, even by
                        // panicking, so the test fails instead of hanging.
                        let _stop = StopOnDrop(done);
                        let mut w = GroupWriter {
                            wal,
                            group,
                            next: 1,
                        };
                        while !done.load(Ordering::Relaxed) {
                            w.append();
                            if w.next % 4 == 0 {
                                w.compact_all();
                            }
                            if wal.stats().rotations >= ROTATIONS {
                                done.store(true, Ordering::Relaxed);
                            }
                        }
                        w.next
                    })
                })
                .collect();
            let (wal, done) = (&wal, &done);
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    wal.purge().unwrap();
                }
            });
            // Readers keep the CPUs busy, so appenders and the preparer get
            // preempted at arbitrary points, as on a loaded machine.
            for _ in 0..READERS {
                s.spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        for group in 1..=GROUPS {
                            let (first, last) = (wal.first_index(group), wal.last_index(group));
                            match wal.entries(group, first, last + 1, u64::MAX) {
                                Ok(got) => {
                                    for e in got {
                                        assert_eq!(e, GroupWriter::entry(group, e.index));
                                    }
                                }
                                Err(WalError::EntryCompacted { .. }) => {}
                                Err(e) => panic!("group {group}: {e}"),
                            }
                        }
                    }
                });
            }
            writers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".spare"))
            .collect();
        assert_eq!(
            names.len(),
            wal.spare_count(),
            "{mode:?}: spare list and spare files disagree: {names:?}"
        );
        drop(wal);
        let wal = Wal::open(dir.path(), config).unwrap();
        for (k, &n) in next.iter().enumerate() {
            let group = k as u64 + 1;
            assert_eq!(wal.last_index(group), n - 1, "group {group}");
            let first = wal.first_index(group);
            for e in wal.entries(group, first, n, u64::MAX).unwrap() {
                assert_eq!(e, GroupWriter::entry(group, e.index));
            }
        }
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A round applies its record to the index before the record's sync
/// returns. A purge running in that window must not free segments on the
/// strength of it: here the compaction of every entry group 1 has is in the
/// index but not yet durable when purge runs, and the power fails before the
/// sync. The entries must all be there after recovery.
#[test]
fn purge_during_a_compactions_sync_frees_nothing_the_crash_needs() {
    let fs = SimFs::new(13);
    let config = WalConfig {
        segment_bytes: 64 << 10,
        cache_bytes_max: 0,
        prepare_in_background: false,
        ..WalConfig::default()
    };
    let wal = Arc::new(Wal::open_with_fs(Arc::new(fs.clone()), config.clone()).unwrap());
    let mut next = 1;
    while wal.segment_count() < 3 {
        let mut b = WriteBatch::new();
        b.add_entries(1, (next..next + 10).map(|i| entry(1, i)).collect());
        wal.append(b).unwrap();
        next += 10;
    }
    let purge_finished_in_window = Arc::new(AtomicBool::new(false));
    let purge_thread = Arc::new(Mutex::new(None));
    {
        let (wal, fs_in_hook) = (Arc::downgrade(&wal), fs.clone());
        let (finished, thread) = (
            Arc::clone(&purge_finished_in_window),
            Arc::clone(&purge_thread),
        );
        fs.set_sync_hook(Some(Arc::new(move || {
            let Some(wal) = wal.upgrade() else { return };
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            *thread.lock().unwrap() = Some(std::thread::spawn(move || {
                let purged = wal.purge();
                let _ = done_tx.send(());
                purged
            }));
            if done_rx
                .recv_timeout(std::time::Duration::from_millis(300))
                .is_ok()
            {
                finished.store(true, Ordering::SeqCst);
            }
            // The power fails before this sync.
            fs_in_hook.power_cut_in(1);
        })));
    }
    let mut compact = WriteBatch::new();
    compact.compact_prefix(1, next);
    assert!(
        wal.append(compact).is_err(),
        "the power failed before the sync"
    );
    fs.set_sync_hook(None);
    let purged = purge_thread
        .lock()
        .unwrap()
        .take()
        .expect("the hook ran")
        .join()
        .unwrap();
    assert!(
        !purge_finished_in_window.load(Ordering::SeqCst),
        "purge ran while a record was in the index but not durable: {purged:?}"
    );
    assert!(
        matches!(purged, Err(WalError::Poisoned { .. })),
        "{purged:?}"
    );
    drop(wal);
    fs.crash();
    let reopened = Wal::open_with_fs(Arc::new(fs.clone()), config).unwrap();
    assert_eq!(reopened.first_index(1), 1);
    assert_eq!(reopened.last_index(1), next - 1);
    let got = reopened.entries(1, 1, next, u64::MAX).unwrap();
    assert_eq!(got, (1..next).map(|i| entry(1, i)).collect::<Vec<_>>());
}
