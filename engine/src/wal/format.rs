//! The on-disk byte format of the WAL, with its encoder and decoder.
//!
//! All integers are little-endian.
//!
//! # Files
//!
//! A WAL directory holds:
//!
//! - `{seq:016}.wal`: a segment, `segment_bytes` long, preallocated.
//! - `{seq:016}.spare`: a freed segment kept for reuse (recycling), or a file
//!   made ahead of time for segment `seq`. Its bytes are stale; it becomes a
//!   segment again by renaming it to `.tmp`, rewriting its header and renaming
//!   it into place. The sequence in the name only identifies the spare.
//! - `{seq:016}.tmp`: segment `seq` being created (a new file or a reused
//!   spare). Left over only by a crash during creation, and deleted on open.
//!
//! # Segment header (32 bytes, at offset 0)
//!
//! | offset | size | field                                        |
//! |--------|------|----------------------------------------------|
//! | 0      | 8    | magic `b"FLOTWAL\0"`                         |
//! | 8      | 4    | format version (1)                           |
//! | 12     | 4    | header length (32)                           |
//! | 16     | 8    | segment sequence, equal to the file name     |
//! | 24     | 4    | crc32 of bytes 0..24                         |
//! | 28     | 4    | zero                                         |
//!
//! # Records (from offset 32, each at a 16-byte aligned offset)
//!
//! | offset | size | field                                                |
//! |--------|------|------------------------------------------------------|
//! | 0      | 4    | payload length `len`                                 |
//! | 4      | 4    | crc32, see below                                     |
//! | 8      | 4    | record kind: 1 = batch, 2 = seal                     |
//! | 12     | 4    | record magic `0x52574C46` (`"FLWR"`)                 |
//! | 16     | len  | payload                                              |
//! |        |      | zero padding up to the next multiple of 16           |
//!
//! The crc is crc32 (IEEE, `crc32fast`) over: the segment sequence as 8 bytes,
//! then record bytes 0..4 and 8..16, then the payload. Seeding it with the
//! sequence means a record left over in a recycled segment never validates
//! under the segment's new sequence, and a record copied to a wrong place
//! does not either.
//!
//! Payloads start 16-byte aligned so that a future zero-copy reader (rkyv) can
//! read them in place.
//!
//! A *seal* record has an empty payload and is the last record of every
//! segment except the active one. It lets recovery tell "this segment ended
//! here" from "the rest of this segment was lost", so damage at the end of a
//! non-final segment is reported instead of mistaken for a torn tail.
//!
//! # Batch payload
//!
//! A sequence of items, back to back, until the payload ends. Each item starts
//! with a one-byte tag:
//!
//! | tag | item             | fields after the tag                                  |
//! |-----|------------------|-------------------------------------------------------|
//! | 1   | `Entries`        | group u64, count u32, then `count` entries            |
//! | 2   | `HardState`      | group u64, term u64, vote u64, commit u64             |
//! | 3   | `TruncateSuffix` | group u64, from_index u64                             |
//! | 4   | `CompactPrefix`  | group u64, to_index u64                               |
//! | 5   | `SnapshotMarker` | group u64, index u64, term u64                        |
//! | 6   | `GroupRemoved`   | group u64                                             |
//!
//! An entry is: index u64, term u64, kind u8, data length u32, data, then a
//! crc32 (seeded with the group id) over the entry's preceding bytes. The
//! entry crc lets the WAL verify a single entry read back from a segment long
//! after the record's crc was checked, without re-reading the whole record.
//! Entries in one item have consecutive indexes.
//!
//! The decoder never panics and never allocates more than the input can
//! justify: every count is checked against the bytes that remain.

use thiserror::Error;

use super::batch::{GroupId, HardState, LogEntry, WalItem};

/// Magic at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLOTWAL\0";
/// Version of this format; bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Length of a record header.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Alignment of record starts (and so of payloads).
pub const RECORD_ALIGN: usize = 16;
/// Magic in every record header, to find candidate records cheaply.
pub const RECORD_MAGIC: u32 = 0x5257_4C46;
/// Space a seal record takes; every segment keeps this much free for it.
pub const SEAL_BYTES: usize = RECORD_HEADER_BYTES;

const TAG_ENTRIES: u8 = 1;
const TAG_HARD_STATE: u8 = 2;
const TAG_TRUNCATE: u8 = 3;
const TAG_COMPACT: u8 = 4;
const TAG_MARKER: u8 = 5;
const TAG_REMOVED: u8 = 6;

/// Bytes of an encoded entry besides its data.
pub const ENTRY_FIXED_BYTES: usize = 8 + 8 + 1 + 4 + 4;
/// Bytes of an `Entries` item header (tag, group, count).
const ENTRIES_HEADER_BYTES: usize = 1 + 8 + 4;

/// Why bytes did not decode. Recovery turns these into `WalError::Corruption`
/// (or a torn tail); they never escape as panics.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The input ended inside a structure.
    #[error("truncated {what}: needed {needed} bytes at offset {offset}, have {available}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Offset (within the decoded buffer) where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that remain.
        available: usize,
    },
    /// The segment header does not start with [`SEGMENT_MAGIC`].
    #[error("bad segment magic")]
    BadSegmentMagic,
    /// The segment was written by an unknown format version.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// The header's checksum does not match.
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    /// The header names another segment than the file name does.
    #[error("segment header says sequence {found}, file name says {expected}")]
    SequenceMismatch {
        /// Sequence from the file name.
        expected: u64,
        /// Sequence in the header.
        found: u64,
    },
    /// No record magic where a record should start.
    #[error("no record magic")]
    BadRecordMagic,
    /// The record kind is unknown.
    #[error("unknown record kind {0}")]
    UnknownRecordKind(u32),
    /// The length field points past the end of the segment (or is inconsistent).
    #[error("record length {len} exceeds the {available} bytes left in the segment")]
    BadRecordLength {
        /// Claimed payload length.
        len: u64,
        /// Bytes available after the header.
        available: usize,
    },
    /// The record's checksum does not match its bytes.
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    RecordChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes.
        computed: u32,
    },
    /// An item starts with an unknown tag.
    #[error("unknown item tag {tag} at payload offset {offset}")]
    UnknownItemTag {
        /// The tag byte.
        tag: u8,
        /// Where the item starts in the payload.
        offset: usize,
    },
    /// Entries inside one item do not have consecutive indexes.
    #[error("group {group}: entry index {found} where {expected} was expected")]
    NonContiguousEntries {
        /// Group of the item.
        group: GroupId,
        /// Index that should have come next.
        expected: u64,
        /// Index found.
        found: u64,
    },
    /// An entry's own checksum does not match.
    #[error("group {group}: entry checksum mismatch")]
    EntryChecksum {
        /// Group of the entry.
        group: GroupId,
    },
    /// A seal record carries a payload.
    #[error("seal record with a {0}-byte payload")]
    SealWithPayload(u32),
}

/// File name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:016}.wal")
}

/// File name of a spare made from segment `seq`.
pub fn spare_file_name(seq: u64) -> String {
    format!("{seq:016}.spare")
}

/// File name of segment `seq` while it is being created.
pub fn temp_file_name(seq: u64) -> String {
    format!("{seq:016}.tmp")
}

/// File name of a spare for segment `seq` while it is being prepared ahead
/// of time (see `purge::create_spare`).
pub fn preparing_file_name(seq: u64) -> String {
    format!("{seq:016}.prep")
}

/// What a file in the WAL directory is, judging by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    /// A segment with this sequence.
    Segment(u64),
    /// A spare (recyclable) file that used to be this segment.
    Spare(u64),
    /// An interrupted creation (of a segment, `.tmp`, or of a spare,
    /// `.prep`).
    Temp(u64),
}

/// Classifies a directory entry; `None` for files that are not the WAL's.
pub fn parse_file_name(name: &str) -> Option<FileRole> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 16 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq: u64 = stem.parse().ok()?;
    match ext {
        "wal" => Some(FileRole::Segment(seq)),
        "spare" => Some(FileRole::Spare(seq)),
        "tmp" | "prep" => Some(FileRole::Temp(seq)),
        _ => None,
    }
}

/// Rounds `n` up to the record alignment.
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(RECORD_ALIGN as u64) * RECORD_ALIGN as u64
}

/// Encodes the header of segment `seq`.
pub fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks the header of the segment whose file name says `expected_seq`.
pub fn decode_segment_header(bytes: &[u8], expected_seq: u64) -> Result<(), FormatError> {
    let h = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(FormatError::Truncated {
            what: "segment header",
            offset: 0,
            needed: SEGMENT_HEADER_BYTES,
            available: bytes.len(),
        })?;
    if h[0..8] != SEGMENT_MAGIC {
        return Err(FormatError::BadSegmentMagic);
    }
    let stored_crc = u32_at(h, 24);
    if crc32fast::hash(&h[0..24]) != stored_crc {
        return Err(FormatError::HeaderChecksum);
    }
    let version = u32_at(h, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let found = u64_at(h, 16);
    if found != expected_seq {
        return Err(FormatError::SequenceMismatch {
            expected: expected_seq,
            found,
        });
    }
    Ok(())
}

/// Kind of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A write batch: items of many groups.
    Batch,
    /// End of a segment.
    Seal,
}

impl RecordKind {
    fn code(self) -> u32 {
        match self {
            RecordKind::Batch => 1,
            RecordKind::Seal => 2,
        }
    }
}

fn record_crc(seq: u64, header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&header[0..4]);
    hasher.update(&header[8..16]);
    hasher.update(payload);
    hasher.finalize()
}

/// Starts a record in `out`: reserves its header. Append the payload to `out`,
/// then call [`finish_record`] with the returned start.
pub fn begin_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + RECORD_HEADER_BYTES, 0);
    start
}

/// Completes the record begun at `start`: fills the header, checksums it with
/// `seq`, and pads `out` to the record alignment.
pub fn finish_record(out: &mut Vec<u8>, start: usize, seq: u64, kind: RecordKind) {
    let payload_len = out.len() - start - RECORD_HEADER_BYTES;
    let len = u32::try_from(payload_len).expect("record payload is bounded by the segment size");
    let (head, payload) = out[start..].split_at_mut(RECORD_HEADER_BYTES);
    head[0..4].copy_from_slice(&len.to_le_bytes());
    head[8..12].copy_from_slice(&kind.code().to_le_bytes());
    head[12..16].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    let crc = record_crc(seq, head, payload);
    head[4..8].copy_from_slice(&crc.to_le_bytes());
    let padded = align_up(out.len() as u64) as usize;
    out.resize(padded, 0);
}

/// The header of a record whose payload is known only by its length and by
/// `payload_crc`, a hasher fed exactly the payload's bytes. Lets a record be
/// written from several buffers without assembling it; the bytes equal what
/// [`begin_record`] and [`finish_record`] produce for the same payload.
pub fn record_header(
    seq: u64,
    kind: RecordKind,
    payload_len: usize,
    payload_crc: &crc32fast::Hasher,
) -> [u8; RECORD_HEADER_BYTES] {
    let len = u32::try_from(payload_len).expect("record payload is bounded by the segment size");
    let mut head = [0u8; RECORD_HEADER_BYTES];
    head[0..4].copy_from_slice(&len.to_le_bytes());
    head[8..12].copy_from_slice(&kind.code().to_le_bytes());
    head[12..16].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&head[0..4]);
    hasher.update(&head[8..16]);
    hasher.combine(payload_crc);
    head[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
    head
}

/// Zero bytes after a `payload_len` payload up to the record alignment.
pub fn record_padding_bytes(payload_len: usize) -> usize {
    record_bytes(payload_len) as usize - RECORD_HEADER_BYTES - payload_len
}

/// Encodes a complete record with `payload`.
pub fn encode_record(seq: u64, kind: RecordKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len() + RECORD_ALIGN);
    let start = begin_record(&mut out);
    out.extend_from_slice(payload);
    finish_record(&mut out, start, seq, kind);
    out
}

/// Bytes a record with a `payload_len` payload occupies, padding included.
pub fn record_bytes(payload_len: usize) -> u64 {
    align_up((RECORD_HEADER_BYTES + payload_len) as u64)
}

/// A record that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Kind of the record.
    pub kind: RecordKind,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// Bytes the record occupies including padding: the next record starts
    /// this far after this one.
    pub total_bytes: u64,
}

/// Reads the record at the start of `bytes` (which run to the end of the
/// segment) and verifies its checksum against segment `seq`.
pub fn read_record(seq: u64, bytes: &[u8]) -> Result<RecordView<'_>, FormatError> {
    let head = bytes
        .get(..RECORD_HEADER_BYTES)
        .ok_or(FormatError::Truncated {
            what: "record header",
            offset: 0,
            needed: RECORD_HEADER_BYTES,
            available: bytes.len(),
        })?;
    if u32_at(head, 12) != RECORD_MAGIC {
        return Err(FormatError::BadRecordMagic);
    }
    let kind = match u32_at(head, 8) {
        1 => RecordKind::Batch,
        2 => RecordKind::Seal,
        other => return Err(FormatError::UnknownRecordKind(other)),
    };
    let len = u32_at(head, 0);
    let available = bytes.len() - RECORD_HEADER_BYTES;
    if len as usize > available {
        return Err(FormatError::BadRecordLength {
            len: u64::from(len),
            available,
        });
    }
    let payload = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len as usize];
    let computed = record_crc(seq, head, payload);
    let stored = u32_at(head, 4);
    if computed != stored {
        return Err(FormatError::RecordChecksum { stored, computed });
    }
    if kind == RecordKind::Seal && len != 0 {
        return Err(FormatError::SealWithPayload(len));
    }
    Ok(RecordView {
        kind,
        payload,
        total_bytes: record_bytes(len as usize),
    })
}

/// Where one encoded entry sits inside a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntrySpan {
    /// Offset of the entry from the start of the payload (or batch).
    pub offset: u64,
    /// Encoded length, checksum included.
    pub len: u32,
}

/// An item with the positions of its entries (empty for non-entry items).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedItem {
    /// The item.
    pub item: WalItem,
    /// For `Entries`: one span per entry, in order.
    pub spans: Vec<EntrySpan>,
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Kind of the record.
    pub kind: RecordKind,
    /// Items of a batch record (empty for a seal).
    pub items: Vec<DecodedItem>,
    /// Bytes the record occupies including padding.
    pub total_bytes: u64,
}

/// Verifies and decodes the record at the start of `bytes` in segment `seq`.
/// This is the entry point for fuzzing: any input yields `Ok` or a typed
/// error.
pub fn decode_record(seq: u64, bytes: &[u8]) -> Result<DecodedRecord, FormatError> {
    let view = read_record(seq, bytes)?;
    let items = match view.kind {
        RecordKind::Batch => decode_payload(view.payload)?,
        RecordKind::Seal => Vec::new(),
    };
    Ok(DecodedRecord {
        kind: view.kind,
        items,
        total_bytes: view.total_bytes,
    })
}

/// Encodes `item`, appending to `out`. For entries, pushes one span per entry
/// (offsets relative to the start of `out`).
pub fn encode_item(item: &WalItem, out: &mut Vec<u8>, spans: &mut Vec<EntrySpan>) {
    match item {
        WalItem::Entries { group, entries } => {
            out.push(TAG_ENTRIES);
            out.extend_from_slice(&group.to_le_bytes());
            let count = u32::try_from(entries.len()).expect("entry count is bounded by batch size");
            out.extend_from_slice(&count.to_le_bytes());
            for entry in entries {
                let offset = out.len() as u64;
                encode_entry(*group, entry, out);
                let len = (out.len() as u64 - offset) as u32;
                spans.push(EntrySpan { offset, len });
            }
        }
        WalItem::HardState { group, state } => {
            out.push(TAG_HARD_STATE);
            for v in [*group, state.term, state.vote, state.commit] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        WalItem::TruncateSuffix { group, from_index } => {
            out.push(TAG_TRUNCATE);
            out.extend_from_slice(&group.to_le_bytes());
            out.extend_from_slice(&from_index.to_le_bytes());
        }
        WalItem::CompactPrefix { group, to_index } => {
            out.push(TAG_COMPACT);
            out.extend_from_slice(&group.to_le_bytes());
            out.extend_from_slice(&to_index.to_le_bytes());
        }
        WalItem::SnapshotMarker { group, index, term } => {
            out.push(TAG_MARKER);
            for v in [*group, *index, *term] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        WalItem::GroupRemoved { group } => {
            out.push(TAG_REMOVED);
            out.extend_from_slice(&group.to_le_bytes());
        }
    }
}

/// Encoded size of `item`, without encoding it.
pub fn encoded_item_bytes(item: &WalItem) -> usize {
    match item {
        WalItem::Entries { entries, .. } => {
            ENTRIES_HEADER_BYTES
                + entries
                    .iter()
                    .map(|e| ENTRY_FIXED_BYTES + e.data.len())
                    .sum::<usize>()
        }
        WalItem::HardState { .. } => 1 + 32,
        WalItem::TruncateSuffix { .. } | WalItem::CompactPrefix { .. } => 1 + 16,
        WalItem::SnapshotMarker { .. } => 1 + 24,
        WalItem::GroupRemoved { .. } => 1 + 8,
    }
}

fn encode_entry(group: GroupId, entry: &LogEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.push(entry.kind);
    let data_len = u32::try_from(entry.data.len()).expect("entry data is bounded by batch size");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&entry.data);
    let crc = entry_crc(group, &out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn entry_crc(group: GroupId, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&group.to_le_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

/// Decodes one entry of `group` from exactly the bytes of its span and
/// verifies its checksum.
pub fn decode_entry(group: GroupId, bytes: &[u8]) -> Result<LogEntry, FormatError> {
    let mut r = Reader::new(bytes);
    let entry = r.entry(group)?;
    if r.pos != bytes.len() {
        return Err(FormatError::Truncated {
            what: "entry span",
            offset: r.pos,
            needed: bytes.len(),
            available: r.pos,
        });
    }
    Ok(entry)
}

/// Decodes a batch payload into its items.
pub fn decode_payload(payload: &[u8]) -> Result<Vec<DecodedItem>, FormatError> {
    let mut r = Reader::new(payload);
    let mut items = Vec::new();
    while r.pos < payload.len() {
        items.push(r.item()?);
    }
    Ok(items)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(FormatError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        Ok(u32_at(self.take(4, what)?, 0))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        Ok(u64_at(self.take(8, what)?, 0))
    }

    fn item(&mut self) -> Result<DecodedItem, FormatError> {
        let start = self.pos;
        let tag = self.u8("item tag")?;
        let mut spans = Vec::new();
        let item = match tag {
            TAG_ENTRIES => {
                let group = self.u64("entries group")?;
                let count = self.u32("entry count")? as usize;
                if count.saturating_mul(ENTRY_FIXED_BYTES) > self.remaining() {
                    return Err(FormatError::Truncated {
                        what: "entries",
                        offset: self.pos,
                        needed: count.saturating_mul(ENTRY_FIXED_BYTES),
                        available: self.remaining(),
                    });
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let offset = self.pos as u64;
                    let entry = self.entry(group)?;
                    if let Some(prev) = entries.last() {
                        let prev: &LogEntry = prev;
                        let expected = prev.index.wrapping_add(1);
                        if entry.index != expected || prev.index == u64::MAX {
                            return Err(FormatError::NonContiguousEntries {
                                group,
                                expected,
                                found: entry.index,
                            });
                        }
                    }
                    spans.push(EntrySpan {
                        offset,
                        len: (self.pos as u64 - offset) as u32,
                    });
                    entries.push(entry);
                }
                WalItem::Entries { group, entries }
            }
            TAG_HARD_STATE => WalItem::HardState {
                group: self.u64("hard state group")?,
                state: HardState {
                    term: self.u64("hard state term")?,
                    vote: self.u64("hard state vote")?,
                    commit: self.u64("hard state commit")?,
                },
            },
            TAG_TRUNCATE => WalItem::TruncateSuffix {
                group: self.u64("truncate group")?,
                from_index: self.u64("truncate index")?,
            },
            TAG_COMPACT => WalItem::CompactPrefix {
                group: self.u64("compact group")?,
                to_index: self.u64("compact index")?,
            },
            TAG_MARKER => WalItem::SnapshotMarker {
                group: self.u64("marker group")?,
                index: self.u64("marker index")?,
                term: self.u64("marker term")?,
            },
            TAG_REMOVED => WalItem::GroupRemoved {
                group: self.u64("removed group")?,
            },
            tag => return Err(FormatError::UnknownItemTag { tag, offset: start }),
        };
        Ok(DecodedItem { item, spans })
    }

    fn entry(&mut self, group: GroupId) -> Result<LogEntry, FormatError> {
        let start = self.pos;
        let index = self.u64("entry index")?;
        let term = self.u64("entry term")?;
        let kind = self.u8("entry kind")?;
        let data_len = self.u32("entry data length")? as usize;
        let data = self.take(data_len, "entry data")?.to_vec();
        let covered = &self.bytes[start..self.pos];
        let stored = self.u32("entry checksum")?;
        if entry_crc(group, covered) != stored {
            return Err(FormatError::EntryChecksum { group });
        }
        Ok(LogEntry {
            index,
            term,
            kind,
            data,
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn record_from_parts_equals_assembled_record() {
        let parts: [&[u8]; 3] = [b"first unit", b"", b"third, longer unit of bytes"];
        let mut payload_crc = crc32fast::Hasher::new();
        for part in parts {
            let mut h = crc32fast::Hasher::new();
            h.update(part);
            payload_crc.combine(&h);
        }
        let payload = parts.concat();
        let head = record_header(9, RecordKind::Batch, payload.len(), &payload_crc);
        let mut from_parts = head.to_vec();
        from_parts.extend_from_slice(&payload);
        from_parts.resize(from_parts.len() + record_padding_bytes(payload.len()), 0);
        assert_eq!(from_parts, encode_record(9, RecordKind::Batch, &payload));
        assert!(read_record(9, &from_parts).is_ok());
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> LogEntry {
        LogEntry {
            index,
            term,
            kind: 0,
            data: data.to_vec(),
        }
    }

    fn sample_items() -> Vec<WalItem> {
        vec![
            WalItem::Entries {
                group: 7,
                entries: vec![entry(5, 2, b"abc"), entry(6, 2, b""), entry(7, 3, &[9; 40])],
            },
            WalItem::HardState {
                group: 7,
                state: HardState {
                    term: 3,
                    vote: 2,
                    commit: 6,
                },
            },
            WalItem::TruncateSuffix {
                group: 9,
                from_index: 4,
            },
            WalItem::CompactPrefix {
                group: 9,
                to_index: 2,
            },
            WalItem::SnapshotMarker {
                group: 11,
                index: 100,
                term: 8,
            },
            WalItem::GroupRemoved { group: 12 },
        ]
    }

    fn encode_items(items: &[WalItem]) -> (Vec<u8>, Vec<EntrySpan>) {
        let mut out = Vec::new();
        let mut spans = Vec::new();
        for item in items {
            encode_item(item, &mut out, &mut spans);
        }
        (out, spans)
    }

    #[test]
    fn record_round_trips_every_item_kind() {
        let items = sample_items();
        let (payload, spans) = encode_items(&items);
        let expected: usize = items.iter().map(encoded_item_bytes).sum();
        assert_eq!(payload.len(), expected);
        let record = encode_record(42, RecordKind::Batch, &payload);
        assert_eq!(record.len() % RECORD_ALIGN, 0);
        let decoded = decode_record(42, &record).unwrap();
        assert_eq!(decoded.total_bytes, record.len() as u64);
        let got: Vec<WalItem> = decoded.items.iter().map(|d| d.item.clone()).collect();
        assert_eq!(got, items);
        let decoded_spans: Vec<EntrySpan> =
            decoded.items.iter().flat_map(|d| d.spans.clone()).collect();
        assert_eq!(decoded_spans, spans);
        for (span, e) in spans.iter().zip([5u64, 6, 7]) {
            let bytes = &payload[span.offset as usize..][..span.len as usize];
            assert_eq!(decode_entry(7, bytes).unwrap().index, e);
            assert!(matches!(
                decode_entry(8, bytes),
                Err(FormatError::EntryChecksum { .. })
            ));
        }
    }

    #[test]
    fn checksum_is_seeded_with_the_segment_sequence() {
        let (payload, _) = encode_items(&sample_items());
        let record = encode_record(1, RecordKind::Batch, &payload);
        assert!(decode_record(1, &record).is_ok());
        assert!(matches!(
            decode_record(2, &record),
            Err(FormatError::RecordChecksum { .. })
        ));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let (payload, _) = encode_items(&sample_items());
        let record = encode_record(3, RecordKind::Batch, &payload);
        let payload_end = RECORD_HEADER_BYTES + payload.len();
        for i in 0..payload_end {
            let mut bad = record.clone();
            bad[i] ^= 0x40;
            assert!(
                decode_record(3, &bad).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn segment_header_checks_magic_crc_version_and_sequence() {
        let h = encode_segment_header(77);
        assert_eq!(decode_segment_header(&h, 77), Ok(()));
        assert!(matches!(
            decode_segment_header(&h, 78),
            Err(FormatError::SequenceMismatch {
                expected: 78,
                found: 77
            })
        ));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(
            decode_segment_header(&bad, 77),
            Err(FormatError::BadSegmentMagic)
        );
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(
            decode_segment_header(&bad, 77),
            Err(FormatError::HeaderChecksum)
        );
        assert!(decode_segment_header(&h[..10], 77).is_err());
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(segment_file_name(12), "0000000000000012.wal");
        assert_eq!(
            parse_file_name("0000000000000012.wal"),
            Some(FileRole::Segment(12))
        );
        assert_eq!(
            parse_file_name(&spare_file_name(3)),
            Some(FileRole::Spare(3))
        );
        assert_eq!(parse_file_name(&temp_file_name(4)), Some(FileRole::Temp(4)));
        assert_eq!(
            parse_file_name(&preparing_file_name(5)),
            Some(FileRole::Temp(5))
        );
        assert_eq!(parse_file_name("12.wal"), None);
        assert_eq!(parse_file_name("000000000000001x.wal"), None);
        assert_eq!(parse_file_name("0000000000000012.log"), None);
    }

    #[test]
    fn seal_record_round_trips() {
        let record = encode_record(5, RecordKind::Seal, &[]);
        assert_eq!(record.len(), SEAL_BYTES);
        let d = decode_record(5, &record).unwrap();
        assert_eq!(d.kind, RecordKind::Seal);
        assert!(d.items.is_empty());
    }

    #[test]
    fn huge_entry_count_is_rejected_without_allocating() {
        let mut payload = vec![TAG_ENTRIES];
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_payload(&payload),
            Err(FormatError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(seq in 0u64..4, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_record(seq, &bytes);
            let _ = decode_payload(&bytes);
            let _ = decode_entry(seq, &bytes);
            let _ = decode_segment_header(&bytes, seq);
        }

        #[test]
        fn valid_record_with_garbage_payload_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // A checksum-valid record whose payload is arbitrary exercises the
            // item decoder past the checksum gate.
            let record = encode_record(9, RecordKind::Batch, &bytes);
            let _ = decode_record(9, &record);
        }
    }
}
