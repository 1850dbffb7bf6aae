//! Opening a WAL: scan every segment in order, verify every record, rebuild
//! the index, and decide whether damage is a torn tail (repair) or
//! corruption (refuse).
//!
//! # Torn tail or corruption?
//!
//! The writer never has more than one record that is not yet durable: a
//! record is written only after the previous record's sync returned, and a
//! segment is sealed (with a synced seal record) before the next one is
//! created. So a crash can damage only the final record of the last segment.
//! Recovery therefore accepts an invalid record as a torn tail only if:
//!
//! 1. it is in the last segment (every earlier segment must end with a valid
//!    seal record), and
//! 2. no valid record follows it anywhere in that segment (every 16-byte
//!    aligned offset after it is checked; stale records in a recycled segment
//!    do not count, their checksums are seeded with another sequence).
//!
//! Anything else is [`WalError::Corruption`] naming the segment and offset:
//! a record that was followed by a valid record was synced (the follower was
//! only written after its sync), and dropping it would lose an acknowledged
//! write. A record that passes its checksum but does not decode, or breaks
//! the log rules, is corruption too.
//!
//! The directory and the last segment are synced once at open: files and
//! records recovered from the page cache after a process crash (or a failed
//! sync) become durable before anything builds on them.
//!
//! What this cannot tell apart: bit rot in the very last synced record with
//! nothing written after it looks exactly like a torn write, and is treated
//! as one (as every WAL that checksums records does).

use std::sync::Arc;

use super::file::WalFs;
use super::format::{self, EntrySpan, FileRole, RecordKind};
use super::index::{ApplyMode, Index};
use super::writer::Tail;
use super::{purge, WalConfig, WalError, WritePosition};

/// What recovery found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments: usize,
    /// Batch records replayed.
    pub records: u64,
    /// Where the log ended. `tail_discarded` says whether non-zero bytes
    /// (a torn record, or stale bytes of a recycled segment) were found
    /// there and will be overwritten.
    pub end: WritePosition,
    /// The end was not clean zeros.
    pub tail_discarded: bool,
    /// Leftover temporary or surplus spare files removed.
    pub files_removed: usize,
}

pub(crate) struct Recovered {
    pub index: Index,
    pub tail: Tail,
    pub spares: Vec<u64>,
    pub report: RecoveryReport,
}

pub(crate) fn recover(fs: &Arc<dyn WalFs>, config: &WalConfig) -> Result<Recovered, WalError> {
    let fs: &dyn WalFs = &**fs;
    let dir_err = |e| WalError::io(fs.path(""), e);
    let mut segments = Vec::new();
    let mut spares = Vec::new();
    let mut remove = Vec::new();
    for name in fs.list().map_err(dir_err)? {
        match format::parse_file_name(&name) {
            Some(FileRole::Segment(seq)) => segments.push(seq),
            Some(FileRole::Spare(seq)) => spares.push(seq),
            Some(FileRole::Temp(_)) => remove.push(name),
            None => {}
        }
    }
    segments.sort_unstable();
    spares.sort_unstable();
    while spares.len() > config.recycle_segments_max {
        let seq = spares.pop().expect("longer than the limit");
        remove.push(format::spare_file_name(seq));
    }
    let mut report = RecoveryReport {
        files_removed: remove.len(),
        ..RecoveryReport::default()
    };
    for name in &remove {
        fs.remove(name)
            .map_err(|e| WalError::io(fs.path(name), e))?;
    }
    // Always: a rename or create whose directory sync failed before the
    // crash is visible now but not durable; make what recovery sees durable.
    fs.sync_dir().map_err(dir_err)?;
    let mut index = Index::new(config.cache_bytes_max);
    let Some(&last_seq) = segments.last() else {
        let from_spare = purge::take_spare(fs, &mut spares, 1)?;
        let file = purge::provide_segment(fs, config, from_spare, 1)?;
        index.segments.insert(1, Arc::clone(&file));
        index.active_seq = 1;
        let tail = Tail {
            seq: 1,
            file,
            offset: format::SEGMENT_HEADER_BYTES as u64,
            sealed: false,
            scratch: Default::default(),
        };
        report.end = WritePosition {
            segment: 1,
            offset: tail.offset,
        };
        return Ok(Recovered {
            index,
            tail,
            spares,
            report,
        });
    };
    for pair in segments.windows(2) {
        if pair[1] != pair[0] + 1 {
            let missing = pair[0] + 1;
            return Err(WalError::Corruption {
                segment: missing,
                path: fs.path(&format::segment_file_name(missing)),
                offset: 0,
                reason: format!(
                    "segment file missing: segments {} and {} exist but nothing between them",
                    pair[0], pair[1]
                ),
            });
        }
    }
    index.replay_from_origin = segments[0] == 1;
    let mut tail = None;
    for &seq in &segments {
        let name = format::segment_file_name(seq);
        let path = fs.path(&name);
        let io = |e| WalError::io(path.clone(), e);
        let file = fs.open(&name).map_err(io)?;
        let corrupt = |offset: u64, reason: String| WalError::Corruption {
            segment: seq,
            path: path.clone(),
            offset,
            reason,
        };
        if file.size_bytes() > WalConfig::SEGMENT_BYTES_MAX {
            return Err(corrupt(
                0,
                format!(
                    "segment file is {} bytes, more than the {} a segment may have",
                    file.size_bytes(),
                    WalConfig::SEGMENT_BYTES_MAX
                ),
            ));
        }
        let bytes = file.read_at(0, file.size_bytes() as usize).map_err(io)?;
        format::decode_segment_header(&bytes, seq).map_err(|e| corrupt(0, e.to_string()))?;
        let is_last = seq == last_seq;
        let scan = scan_segment(seq, &bytes, is_last, &mut index, &mut report)
            .map_err(|(offset, reason)| corrupt(offset, reason))?;
        drop(bytes);
        report.segments += 1;
        index.segments.insert(seq, Arc::clone(&file));
        if is_last {
            // What recovery just read may still be only in the page cache
            // (the process died, not the machine). Make it durable before
            // anyone acts on it.
            file.sync_data().map_err(io)?;
            report.end = WritePosition {
                segment: seq,
                offset: scan.end,
            };
            report.tail_discarded = scan.tail_discarded;
            tail = Some(Tail {
                seq,
                file,
                offset: scan.end,
                sealed: scan.sealed,
                scratch: Default::default(),
            });
        }
    }
    index.active_seq = last_seq;
    index.finish_recovery();
    Ok(Recovered {
        index,
        tail: tail.expect("the last segment was scanned"),
        spares,
        report,
    })
}

pub(super) struct Scan {
    /// Offset where the next record goes (or of the seal).
    pub(super) end: u64,
    pub(super) sealed: bool,
    pub(super) tail_discarded: bool,
}

/// Replays one segment into `index`. `Err((offset, reason))` is corruption.
pub(super) fn scan_segment(
    seq: u64,
    bytes: &[u8],
    is_last: bool,
    index: &mut Index,
    report: &mut RecoveryReport,
) -> Result<Scan, (u64, String)> {
    let mut off = format::SEGMENT_HEADER_BYTES;
    loop {
        if off + format::SEAL_BYTES > bytes.len() {
            return Err((
                off as u64,
                "segment is full but has no seal record (every segment keeps room for one)".into(),
            ));
        }
        let err = match format::read_record(seq, &bytes[off..]) {
            Ok(view) if view.kind == RecordKind::Seal => {
                return Ok(Scan {
                    end: off as u64,
                    sealed: true,
                    tail_discarded: false,
                });
            }
            Ok(view) => {
                replay_record(seq, off as u64, view.payload, index)
                    .map_err(|reason| (off as u64, reason))?;
                report.records += 1;
                off += view.total_bytes as usize;
                continue;
            }
            Err(err) => err,
        };
        if !is_last {
            return Err((
                off as u64,
                format!("invalid record in a segment that is not the last one: {err}"),
            ));
        }
        if let Some(next) = find_valid_record(seq, bytes, off + format::RECORD_ALIGN) {
            return Err((
                off as u64,
                format!(
                    "invalid record ({err}) followed by a valid record at offset {next}, \
                     so this is damage to synced data, not a torn tail"
                ),
            ));
        }
        let header = &bytes[off..off + format::RECORD_HEADER_BYTES];
        return Ok(Scan {
            end: off as u64,
            sealed: false,
            tail_discarded: header.iter().any(|&b| b != 0),
        });
    }
}

/// Decodes a checksum-valid batch record and applies its items.
fn replay_record(seq: u64, offset: u64, payload: &[u8], index: &mut Index) -> Result<(), String> {
    let items = format::decode_payload(payload)
        .map_err(|e| format!("record passed its checksum but does not decode: {e}"))?;
    let base = offset + format::RECORD_HEADER_BYTES as u64;
    for decoded in items {
        let spans: Vec<EntrySpan> = decoded
            .spans
            .iter()
            .map(|s| EntrySpan {
                offset: base + s.offset,
                len: s.len,
            })
            .collect();
        index
            .apply(&decoded.item, seq, &spans, ApplyMode::Recovery)
            .map_err(|reason| format!("record breaks the log rules: {reason}"))?;
    }
    Ok(())
}

/// The first offset at or after `from` (aligned) holding a record that is
/// valid for segment `seq`.
fn find_valid_record(seq: u64, bytes: &[u8], from: usize) -> Option<usize> {
    let magic = format::RECORD_MAGIC.to_le_bytes();
    (from..bytes.len().saturating_sub(format::RECORD_HEADER_BYTES - 1))
        .step_by(format::RECORD_ALIGN)
        .find(|&off| {
            bytes[off + 12..off + 16] == magic && format::read_record(seq, &bytes[off..]).is_ok()
        })
}
