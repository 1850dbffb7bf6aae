//! Keeping the WAL bounded: which segments are still needed, freeing the rest
//! (deleting or recycling them), and moving cold groups' state forward.
//!
//! A segment is needed while some group needs a record in it. A group needs:
//!
//! - the segment of its first live entry (its entries are read from there);
//! - the segment recording the term before its log (`prev_term`: the entry
//!   `first - 1`, or the snapshot marker), since recovery could not otherwise
//!   answer `term(first - 1)`;
//! - the segment holding its latest hard state.
//!
//! The oldest segments are freed once no group needs them; segments are freed
//! strictly oldest first, one directory sync each, so after any crash the
//! remaining segments are still a contiguous run.
//!
//! Hard states and the start of empty logs are cheap to restate, so
//! [`Wal::purge`] re-appends them for groups that would otherwise pin an old
//! segment. Live entries are not: [`Wal::groups_pinning`] names the groups
//! that hold old segments so the host can snapshot and compact them, or
//! [`Wal::rewrite_forward`] copies a cold group's live entries into the
//! active segment.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::batch::GroupId;
use super::file::{SegmentFile, WalFs};
use super::format;
use super::index::{GroupLog, Index};
use super::writer::Work;
use super::{Wal, WalConfig, WalError, WritePosition};

/// Why a group needs an old segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinReason {
    /// Its oldest live entry is there. Compact (after a snapshot) or
    /// [`Wal::rewrite_forward`] to release it.
    Entries,
    /// The term before its (non-empty) log is recorded there. Compact or
    /// rewrite forward to release it.
    LogStart,
    /// Only its latest hard state is there; [`Wal::purge`] restates it.
    HardState,
}

/// A group that keeps an old segment alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinningGroup {
    /// The group.
    pub group: GroupId,
    /// Oldest segment it needs.
    pub segment: u64,
    /// What it needs there.
    pub reason: PinReason,
    /// Its live entries.
    pub entries: u64,
}

/// What a purge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Segments kept as spares for reuse.
    pub segments_recycled: usize,
    /// Groups whose hard state or log start was re-appended.
    pub groups_restated: usize,
    /// Segments still held, the active one included.
    pub segments_remaining: usize,
}

/// The oldest segment `g` needs and why.
fn group_pin(g: &GroupLog) -> Option<(u64, PinReason)> {
    let mut pin: Option<(u64, PinReason)> = None;
    let mut consider = |seq: u64, reason: PinReason| {
        if pin.is_none_or(|(s, _)| seq < s) {
            pin = Some((seq, reason));
        }
    };
    if let Some(front) = g.entries.front() {
        consider(front.seq, PinReason::Entries);
    }
    if let Some(seq) = g.prev_seq {
        let reason = if g.entries.is_empty() {
            PinReason::HardState
        } else {
            PinReason::LogStart
        };
        consider(seq, reason);
    }
    if g.hard_state.is_some() {
        consider(g.hard_state_seq, PinReason::HardState);
    }
    pin
}

/// The oldest segment `g` needs for state that only a rewrite of its entries
/// can move.
fn entry_pin(g: &GroupLog) -> Option<u64> {
    let front = g.entries.front()?.seq;
    Some(g.prev_seq.map_or(front, |p| p.min(front)))
}

/// Groups whose cheap state (hard state, start of an empty log) pins a
/// segment that could otherwise be freed.
fn plan_restates(index: &Index) -> Vec<GroupId> {
    let Some(&oldest) = index.segments.keys().next() else {
        return Vec::new();
    };
    let limit = index
        .groups
        .values()
        .filter_map(entry_pin)
        .min()
        .unwrap_or(u64::MAX)
        .min(index.active_seq);
    if limit <= oldest {
        return Vec::new();
    }
    let mut groups: Vec<GroupId> = index
        .groups
        .iter()
        .filter(|(_, g)| group_pin(g).is_some_and(|(seq, _)| seq < limit))
        .map(|(&group, _)| group)
        .collect();
    groups.sort_unstable();
    groups
}

impl Wal {
    /// Frees every segment no group needs any more, oldest first, after
    /// restating hard states and empty-log starts that would otherwise keep
    /// old segments alive. Freed segments become spares (up to
    /// [`WalConfig::recycle_segments_max`]) or are deleted.
    ///
    /// Waits while the index holds a record whose sync has not returned,
    /// and fails with [`WalError::Poisoned`] once the WAL is poisoned (the
    /// index may then hold records whose sync failed): a crash could still
    /// undo those records, and with them the reason a segment is free.
    pub fn purge(&self) -> Result<PurgeReport, WalError> {
        let shared = &self.shared;
        let _one_purge_at_a_time = shared.purge_lock.lock();
        let mut report = PurgeReport::default();
        let restate = plan_restates(&shared.index.read());
        if !restate.is_empty() {
            report.groups_restated = restate.len();
            shared.submit(Work::Restate {
                groups: restate,
                full: false,
            })?;
        }
        let freed: Vec<(u64, Arc<dyn SegmentFile>)> = {
            // With this held and the WAL not poisoned, the index describes
            // only durable records.
            let _index_not_ahead = shared.index_ahead_of_disk.lock();
            shared.check_not_poisoned()?;
            let mut index = shared.index.write();
            let limit = index
                .groups
                .values()
                .filter_map(|g| group_pin(g).map(|(seq, _)| seq))
                .min()
                .unwrap_or(u64::MAX)
                .min(index.active_seq);
            let keep = index.segments.split_off(&limit);
            let freed = std::mem::replace(&mut index.segments, keep);
            report.segments_remaining = index.segments.len();
            freed.into_iter().collect()
        };
        for (seq, file) in freed {
            let len = file.size_bytes();
            drop(file);
            if self.retire_segment(seq, len)? {
                report.segments_recycled += 1;
            } else {
                report.segments_deleted += 1;
            }
            shared
                .counters
                .segments_freed
                .fetch_add(1, Ordering::Relaxed);
        }
        shared.publish_size();
        Ok(report)
    }

    /// Turns freed segment `seq` into a spare, or deletes it. Returns whether
    /// it was kept.
    fn retire_segment(&self, seq: u64, len: u64) -> Result<bool, WalError> {
        let shared = &self.shared;
        let fs = &*shared.fs;
        let name = format::segment_file_name(seq);
        let io = |e| WalError::io(fs.path(&name), e);
        // Held until the spare is listed: see `take_spare`.
        let mut spares = shared.spares.lock();
        // A spare made ahead of time may already carry this name (made for
        // segment `seq` but not used for it, or made on a stale request).
        let recycle = spares.len() < shared.config.recycle_segments_max
            && len == shared.config.segment_bytes
            && !spares.contains(&seq);
        if recycle {
            fs.rename(&name, &format::spare_file_name(seq))
                .map_err(io)?;
            fs.sync_dir().map_err(io)?;
            spares.push(seq);
        } else {
            fs.remove(&name).map_err(io)?;
            fs.sync_dir().map_err(io)?;
        }
        Ok(recycle)
    }

    /// Groups that keep segments alive beyond the newest `max_segments`, so
    /// the host can snapshot and compact them (or call
    /// [`Wal::rewrite_forward`]). Oldest pin first. Empty when the WAL holds
    /// at most `max_segments` segments.
    pub fn groups_pinning(&self, max_segments: usize) -> Vec<PinningGroup> {
        let index = self.shared.index.read();
        let seqs: Vec<u64> = index.segments.keys().copied().collect();
        if seqs.len() <= max_segments {
            return Vec::new();
        }
        let threshold = seqs[seqs.len() - max_segments.max(1)];
        let mut out: Vec<PinningGroup> = index
            .groups
            .iter()
            .filter_map(|(&group, g)| {
                let (segment, reason) = group_pin(g)?;
                (segment < threshold).then_some(PinningGroup {
                    group,
                    segment,
                    reason,
                    entries: g.entries.len() as u64,
                })
            })
            .collect();
        out.sort_by_key(|p| (p.segment, p.group));
        out
    }

    /// Re-appends `group`'s live entries, log start and hard state to the
    /// active segment so older segments stop being needed for it. Fails with
    /// [`WalError::BatchTooLarge`] if the live log does not fit in one
    /// record; snapshot and compact such a group instead.
    pub fn rewrite_forward(&self, group: GroupId) -> Result<WritePosition, WalError> {
        self.shared.submit(Work::Restate {
            groups: vec![group],
            full: true,
        })
    }

    /// Bytes the WAL occupies on disk: segments plus spares.
    pub fn total_bytes(&self) -> u64 {
        let segments: u64 = self
            .shared
            .index
            .read()
            .segments
            .values()
            .map(|f| f.size_bytes())
            .sum();
        let spares = self.shared.spares.lock().len() as u64 * self.shared.config.segment_bytes;
        segments + spares
    }

    /// Segments held, the active one included (spares not counted).
    pub fn segment_count(&self) -> usize {
        self.shared.index.read().segments.len()
    }

    /// Spare segment files ready for reuse.
    pub fn spare_count(&self) -> usize {
        self.shared.spares.lock().len()
    }
}

/// Takes the most recent spare out of `spares` for segment `seq`, renaming
/// its file to `seq`'s temporary name while the caller still holds the
/// spare-list lock. Returns whether there was a spare (it is now that
/// temporary file, for [`provide_segment`]).
///
/// Every change to a `.spare` name happens with the spare list locked:
/// recycling (`Wal::retire_segment`), preparing ahead
/// (`Shared::create_spare_now`) and taking (here). So whenever the lock is
/// free, the list names exactly the spare files in use. A spare must never
/// leave the list while its file still has the spare name: the name would
/// look free, and the preparer (which deletes a leftover file of the name it
/// creates) or purge (which renames a freed segment over it) would replace the
/// file a rotation is turning into the new segment.
pub(crate) fn take_spare(
    fs: &dyn WalFs,
    spares: &mut Vec<u64>,
    seq: u64,
) -> Result<bool, WalError> {
    let Some(old) = spares.pop() else {
        return Ok(false);
    };
    let name = format::spare_file_name(old);
    fs.rename(&name, &format::temp_file_name(seq))
        .map_err(|e| WalError::io(fs.path(&name), e))?;
    Ok(true)
}

/// Makes segment `seq` ready to write: reuses the spare [`take_spare`] left
/// as `seq`'s temporary file (`from_spare`) when it has the configured size,
/// otherwise creates a new preallocated file under that name. Either way the
/// header is written and synced under a name recovery deletes, then renamed
/// into place and the directory synced, so a `.wal` file always has a valid
/// header. The temporary name is only used by the thread rotating (or by
/// recovery, before anything else runs).
pub(crate) fn provide_segment(
    fs: &dyn WalFs,
    config: &WalConfig,
    from_spare: bool,
    seq: u64,
) -> Result<Arc<dyn SegmentFile>, WalError> {
    let name = format::segment_file_name(seq);
    let tmp = format::temp_file_name(seq);
    let reused = if from_spare {
        reuse_spare(fs, config, &tmp)?
    } else {
        None
    };
    let file = match reused {
        Some(file) => file,
        None => create_file(fs, config, &tmp)?,
    };
    let header = format::encode_segment_header(seq);
    let io = |e| WalError::io(fs.path(&name), e);
    file.write_at(0, &header).map_err(io)?;
    file.sync_data().map_err(io)?;
    fs.rename(&tmp, &name).map_err(io)?;
    fs.sync_dir().map_err(io)?;
    Ok(file)
}

/// Opens the taken spare, now named `name`, if it can be reused; deletes it
/// if it has the wrong size.
fn reuse_spare(
    fs: &dyn WalFs,
    config: &WalConfig,
    name: &str,
) -> Result<Option<Arc<dyn SegmentFile>>, WalError> {
    let io = |e| WalError::io(fs.path(name), e);
    let file = fs.open(name).map_err(io)?;
    if file.size_bytes() == config.segment_bytes {
        return Ok(Some(file));
    }
    drop(file);
    fs.remove(name).map_err(io)?;
    Ok(None)
}

/// Creates a preallocated file after checking for free space.
fn create_file(
    fs: &dyn WalFs,
    config: &WalConfig,
    name: &str,
) -> Result<Arc<dyn SegmentFile>, WalError> {
    // Left over by an earlier failed attempt, if at all.
    if fs
        .list()
        .map_err(|e| WalError::io(fs.path(name), e))?
        .iter()
        .any(|n| n == name)
    {
        fs.remove(name)
            .map_err(|e| WalError::io(fs.path(name), e))?;
    }
    let no_space = |available_bytes| WalError::NoSpace {
        path: fs.path(name),
        needed_bytes: config.segment_bytes,
        available_bytes,
    };
    let available = fs
        .available_bytes()
        .map_err(|e| WalError::io(fs.path(name), e))?;
    if available < config.segment_bytes {
        return Err(no_space(available));
    }
    let file = fs.create(name, config.segment_bytes).map_err(|e| {
        if e.kind() == std::io::ErrorKind::StorageFull {
            no_space(fs.available_bytes().unwrap_or(0))
        } else {
            WalError::io(fs.path(name), e)
        }
    })?;
    if config.zero_fill_segments {
        zero_fill(&*file).map_err(|e| WalError::io(fs.path(name), e))?;
    }
    Ok(file)
}

/// Writes zeros over the whole file and syncs, converting its extents to
/// "written" so later syncs do not also journal the conversion.
///
/// Paced: each MiB is written out to the disk and waited for before the
/// next (no cache flush), then one sync at the end. Writing all 64 MiB
/// before one sync would put that much in the disk's queue at once, and
/// every append syncing meanwhile would wait behind it; syncing every few
/// MiB instead (as before) interleaved sixteen cache flushes with the
/// appends' own (p99 of 3+ ms at 64 appenders).
fn zero_fill(file: &dyn SegmentFile) -> std::io::Result<()> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK_BYTES as usize];
    let len = file.size_bytes();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(CHUNK_BYTES);
        file.write_at(offset, &zeros[..n as usize])?;
        file.write_out(offset, n)?;
        offset += n;
    }
    file.sync_data()
}

/// Creates a spare file for future segment `seq` ahead of time, under a
/// name of its own that recovery deletes (a crash may interrupt it), and
/// returns that name. The caller renames it to its spare name while holding
/// the spare list's lock; creating it under that lock would stall every
/// rotation for as long as zero-filling a segment takes.
pub(crate) fn create_spare(
    fs: &dyn WalFs,
    config: &WalConfig,
    seq: u64,
) -> Result<String, WalError> {
    let name = format::preparing_file_name(seq);
    create_file(fs, config, &name)?;
    Ok(name)
}
