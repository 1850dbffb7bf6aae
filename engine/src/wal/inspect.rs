//! Read-only inspection of a WAL directory: what `flotilla wal inspect` and
//! `flotilla wal check` print.
//!
//! It applies exactly the rules recovery applies (it runs the same segment
//! scan and the same index rules) but never writes: no directory sync, no
//! removal of leftover files, no repair of a torn tail. So it can run on a
//! directory that a live node owns, or on a copy taken for a post-mortem.

use std::path::{Path, PathBuf};

use super::batch::{GroupId, HardState, WalItem};
use super::format::{self, FileRole, RecordKind};
use super::index::Index;
use super::recovery::{scan_segment, RecoveryReport};
use super::WalError;

/// One segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub seq: u64,
    pub path: PathBuf,
    pub file_bytes: u64,
    /// Batch records that verified.
    pub records: u64,
    /// Where the valid log ends in this segment.
    pub end_offset: u64,
    /// Ends with a seal record (every segment but the active one must).
    pub sealed: bool,
    /// Non-zero bytes after the end: a torn final record (or stale bytes of
    /// a recycled segment) that opening the WAL will discard.
    pub torn_tail: bool,
}

/// One group's state as the WAL would recover it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    pub group: GroupId,
    pub first_index: u64,
    pub last_index: u64,
    pub hard_state: Option<HardState>,
}

/// One record, for `--records` listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSummary {
    pub segment: u64,
    pub offset: u64,
    pub bytes: u64,
    pub seal: bool,
    /// One short line per item: `entries g=7 5..=9`, `hard_state g=7 ...`.
    pub items: Vec<String>,
}

/// Everything `inspect` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InspectReport {
    pub segments: Vec<SegmentSummary>,
    pub spare_files: usize,
    pub temp_files: usize,
    pub groups: Vec<GroupSummary>,
    pub records: Vec<RecordSummary>,
}

fn describe(item: &WalItem) -> String {
    match item {
        WalItem::Entries { group, entries } => match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => {
                format!("entries g={group} {}..={}", first.index, last.index)
            }
            _ => format!("entries g={group} (none)"),
        },
        WalItem::HardState { group, state } => format!(
            "hard_state g={group} term={} vote={} commit={}",
            state.term, state.vote, state.commit
        ),
        WalItem::TruncateSuffix { group, from_index } => {
            format!("truncate g={group} from={from_index}")
        }
        WalItem::CompactPrefix { group, to_index } => {
            format!("compact g={group} first_kept={to_index}")
        }
        WalItem::SnapshotMarker { group, index, term } => {
            format!("snapshot g={group} index={index} term={term}")
        }
        WalItem::GroupRemoved { group } => format!("removed g={group}"),
    }
}

fn list_records(seq: u64, bytes: &[u8], end: u64, out: &mut Vec<RecordSummary>) {
    let mut offset = format::SEGMENT_HEADER_BYTES as u64;
    while offset <= end {
        let Ok(record) = format::decode_record(seq, &bytes[offset as usize..]) else {
            return;
        };
        out.push(RecordSummary {
            segment: seq,
            offset,
            bytes: record.total_bytes,
            seal: record.kind == RecordKind::Seal,
            items: record.items.iter().map(|d| describe(&d.item)).collect(),
        });
        if record.kind == RecordKind::Seal {
            return;
        }
        offset += record.total_bytes;
    }
}

/// Verifies every record of the WAL in `dir` without changing anything.
/// Returns [`WalError::Corruption`] for damage anywhere but a torn final
/// record, exactly as opening the WAL would.
pub fn inspect(dir: &Path, with_records: bool) -> Result<InspectReport, WalError> {
    let io = |path: &Path, e| WalError::io(path.to_path_buf(), e);
    let mut report = InspectReport::default();
    let mut segments = Vec::new();
    for dirent in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let dirent = dirent.map_err(|e| io(dir, e))?;
        let name = dirent.file_name().to_string_lossy().into_owned();
        match format::parse_file_name(&name) {
            Some(FileRole::Segment(seq)) => segments.push(seq),
            Some(FileRole::Spare(_)) => report.spare_files += 1,
            Some(FileRole::Temp(_)) => report.temp_files += 1,
            None => {}
        }
    }
    segments.sort_unstable();
    let mut index = Index::new(0);
    let mut scan_report = RecoveryReport::default();
    for (position, &seq) in segments.iter().enumerate() {
        let path = dir.join(format::segment_file_name(seq));
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let corruption = |offset: u64, reason: String| WalError::Corruption {
            segment: seq,
            path: path.clone(),
            offset,
            reason,
        };
        if position > 0 && seq != segments[position - 1] + 1 {
            return Err(corruption(
                0,
                format!(
                    "segment {} is missing before it",
                    segments[position - 1] + 1
                ),
            ));
        }
        format::decode_segment_header(&bytes, seq).map_err(|e| corruption(0, e.to_string()))?;
        let records_before = scan_report.records;
        let is_last = position + 1 == segments.len();
        let scan = scan_segment(seq, &bytes, is_last, &mut index, &mut scan_report)
            .map_err(|(offset, reason)| corruption(offset, reason))?;
        if with_records {
            list_records(seq, &bytes, scan.end, &mut report.records);
        }
        report.segments.push(SegmentSummary {
            seq,
            path: path.clone(),
            file_bytes: bytes.len() as u64,
            records: scan_report.records - records_before,
            end_offset: scan.end,
            sealed: scan.sealed,
            torn_tail: scan.tail_discarded,
        });
    }
    index.finish_recovery();
    report.groups = index
        .groups()
        .into_iter()
        .map(|group| GroupSummary {
            group,
            first_index: index.first_index(group),
            last_index: index.last_index(group),
            hard_state: index.hard_state(group),
        })
        .collect();
    Ok(report)
}
