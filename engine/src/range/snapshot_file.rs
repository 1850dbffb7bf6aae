//! Snapshot files of a range, and the chunked stream that carries the same
//! bytes to a replica that needs them.
//!
//! A snapshot lets the Raft log be truncated below its index and brings a
//! lagging or new replica up to date, so a bad one must never be accepted:
//! every byte is covered by a crc32, every length is checked before it is
//! trusted, and loading re-checks the state machine's invariants (keys sorted,
//! inside the span, within the limits). Damage is reported as
//! [`SnapshotError::Corrupt`] with the byte offset of the damaged frame.
//!
//! # Files
//!
//! One directory per range. A snapshot is `snap-{index:020}-{term:020}.snap`,
//! written atomically: the bytes go to `snap-…snap.{pid}-{n}.tmp` in the same
//! directory, which is fsynced, renamed over the final name, and then the
//! directory is fsynced so the rename itself survives a crash. A crash leaves
//! either the old set of snapshots or the new one, plus perhaps a temp file
//! that [`latest`] ignores and [`remove_older`] deletes.
//!
//! # Stream format, version 1
//!
//! The file is a stream of frames. All integers are little-endian. Offsets
//! below are within each frame.
//!
//! **Header** (first, once):
//!
//! | offset | size | field                                           |
//! |--------|------|-------------------------------------------------|
//! | 0      | 8    | magic `b"FLOTSNAP"`                             |
//! | 8      | 4    | format version (1)                              |
//! | 12     | 4    | header length `H`, crc included                 |
//! | 16     | 8    | applied index                                   |
//! | 24     | 8    | applied term                                    |
//! | 32     | 4    | span start length `s` (≤ 4 KiB)                 |
//! | 36     | 4    | span end length `e` (≤ 4 KiB; 0 = +infinity)    |
//! | 40     | 4    | conf state length `c` (≤ [`MAX_CONF_STATE_BYTES`]) |
//! | 44     | s+e+c| span start, span end, conf state                |
//! | H-4    | 4    | crc32 of bytes 0..H-4                           |
//!
//! **Pairs frame** (zero or more; frame number `seq` counts from 0):
//!
//! | offset | size | field                                                 |
//! |--------|------|-------------------------------------------------------|
//! | 0      | 4    | magic `b"SPRS"`                                       |
//! | 4      | 4    | payload length `L`                                    |
//! | 8      | 4    | pair count `n` (≥ 1)                                  |
//! | 12     | 4    | crc32 of `seq` as u64, bytes 0..12, and the payload   |
//! | 16     | L    | `n` × (key length u32, key, value length u32, value)  |
//!
//! Keys ascend strictly across the whole stream. A frame closes once its
//! payload would pass [`PAIRS_FRAME_TARGET_BYTES`], except that a single pair
//! larger than that gets a frame of its own, so `L` is at most one maximal
//! pair. Folding `seq` into the crc means a frame moved to another position
//! fails its check.
//!
//! **End frame** (last, once; nothing may follow):
//!
//! | offset | size | field                                                        |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 4    | magic `b"SEND"`                                              |
//! | 4      | 8    | total pair count                                             |
//! | 12     | 8    | pairs frame count                                            |
//! | 20     | 4    | crc32 of the header crc, every pairs frame crc (u32 each, in order), and bytes 0..20 |
//!
//! The end frame's crc chains every other crc, so it covers the whole stream:
//! a file cut at a frame boundary, or missing a frame, fails it.
//!
//! # Chunks
//!
//! For transfer, [`SnapshotChunks`] cuts the same stream into chunks of at
//! most `chunk_bytes`, each with its own header so the receiver checks every
//! chunk as it arrives and can ask for one to be resent:
//!
//! | offset | size | field                                    |
//! |--------|------|------------------------------------------|
//! | 0      | 4    | magic `b"FSCH"`                          |
//! | 4      | 4    | payload length                           |
//! | 8      | 8    | snapshot applied index                   |
//! | 16     | 8    | snapshot applied term                    |
//! | 24     | 8    | chunk sequence number, from 0            |
//! | 32     | 4    | crc32 of bytes 0..32 and the payload     |
//! | 36     | …    | payload: the next bytes of the stream    |
//!
//! Concatenating the payloads gives exactly the bytes of the snapshot file,
//! so a receiver may also write them to disk as they come.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use super::codec::Reader;
use super::command::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use super::span::{DisplayKey, KeySpan};
use super::state_machine::RangeState;

/// Magic at the start of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"FLOTSNAP";
/// Version of the stream format; bump on any incompatible change.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Largest conf state a snapshot carries. A Raft configuration is a few
/// dozen ids; the bound keeps the header, and so what a reader must buffer
/// before it can check a checksum, small.
pub const MAX_CONF_STATE_BYTES: usize = 64 * 1024;
/// Size at which a pairs frame closes. It bounds how much a reader buffers
/// before a checksum confirms the bytes, and how much a damaged frame hides.
pub const PAIRS_FRAME_TARGET_BYTES: usize = 64 * 1024;
/// Bytes of a chunk's header.
pub const CHUNK_HEADER_BYTES: usize = 36;
/// Smallest `chunk_bytes` [`SnapshotChunks`] accepts: below it the headers
/// would outweigh the payload.
pub const MIN_CHUNK_BYTES: usize = 64;
/// A chunk size that keeps a snapshot stream from delaying other traffic on a
/// shared connection for long while costing little per-chunk overhead.
pub const DEFAULT_CHUNK_BYTES: usize = 1024 * 1024;

const HEADER_FIXED_BYTES: usize = 44;
const HEADER_MAX_BYTES: usize = HEADER_FIXED_BYTES + 2 * MAX_KEY_BYTES + MAX_CONF_STATE_BYTES + 4;
const FRAME_HEADER_BYTES: usize = 16;
const END_FRAME_BYTES: usize = 24;
/// The two length prefixes of a pair.
const PAIR_FIXED_BYTES: usize = 8;
const PAIRS_PAYLOAD_MAX_BYTES: usize = PAIR_FIXED_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES;
const PAIRS_MAGIC: [u8; 4] = *b"SPRS";
const END_MAGIC: [u8; 4] = *b"SEND";
const CHUNK_MAGIC: [u8; 4] = *b"FSCH";
const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";
/// `snap-` + 20 digits + `-` + 20 digits + `.snap`.
const SNAPSHOT_NAME_BYTES: usize = 5 + 20 + 1 + 20 + 5;
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Makes temp names unique within this process, so two writers of the same
/// snapshot never share a temp file.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Everything that can go wrong with a snapshot file. Each variant says what
/// to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// An operating-system IO error.
    #[error("snapshot IO error on {}: {source}", path.display())]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is damaged or is not a snapshot. It must not be used: load an
    /// older snapshot and replay more log, or fetch a snapshot from a peer.
    #[error(
        "corrupt snapshot {} at byte offset {offset}: {reason}; do not use it, \
         fall back to an older snapshot or fetch one from a peer",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damaged frame or field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The caller's conf state is larger than [`MAX_CONF_STATE_BYTES`].
    #[error("conf state is {bytes} bytes; a snapshot carries at most {MAX_CONF_STATE_BYTES}")]
    ConfStateTooLarge {
        /// Its size.
        bytes: usize,
    },
    /// `chunk_bytes` is below [`MIN_CHUNK_BYTES`].
    #[error("chunk_bytes {chunk_bytes} is below the minimum of {MIN_CHUNK_BYTES}")]
    ChunkBytesTooSmall {
        /// The size asked for.
        chunk_bytes: usize,
    },
}

/// Why a received chunk was refused. The first five leave the assembler as it
/// was, so the transfer continues once the right chunk arrives; the others
/// end it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The chunk's own header or checksum is bad (damaged in transit).
    /// Ask the sender to resend it.
    #[error("bad snapshot chunk: {reason}; ask the sender to resend it")]
    BadChunk {
        /// What is wrong.
        reason: String,
    },
    /// A chunk already received; drop it.
    #[error("snapshot chunk {seq} was already received")]
    Duplicate {
        /// Its sequence number.
        seq: u64,
    },
    /// A chunk arrived before the ones preceding it; resend from `expected`.
    #[error(
        "snapshot chunk {got} arrived while chunk {expected} was expected; resend from {expected}"
    )]
    OutOfOrder {
        /// The next chunk the assembler needs.
        expected: u64,
        /// The chunk that arrived.
        got: u64,
    },
    /// The chunk belongs to another snapshot than the chunks before it.
    #[error(
        "chunk of snapshot {index}/{term} arrived during the transfer of snapshot \
         {expected_index}/{expected_term}"
    )]
    WrongSnapshot {
        /// Applied index of the snapshot being assembled.
        expected_index: u64,
        /// Applied term of the snapshot being assembled.
        expected_term: u64,
        /// Applied index the chunk names.
        index: u64,
        /// Applied term the chunk names.
        term: u64,
    },
    /// The snapshot is already complete; the chunk is surplus.
    #[error("snapshot chunk {seq} arrived after the snapshot was complete")]
    AfterEnd {
        /// Its sequence number.
        seq: u64,
    },
    /// The chunks arrived intact but the snapshot they carry is damaged: the
    /// sender's copy is bad. Abandon this transfer and request a new snapshot.
    #[error("snapshot stream corrupt at byte offset {offset}: {reason}; request a new snapshot")]
    Corrupt {
        /// Offset in the stream (equal to the offset in the file).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// [`SnapshotAssembler::finish`] was called before the end of the stream.
    #[error("snapshot transfer incomplete after {chunks} chunks")]
    Incomplete {
        /// Chunks accepted so far.
        chunks: u64,
    },
    /// An earlier [`TransferError::Corrupt`] ended this transfer.
    #[error("snapshot transfer already failed as corrupt; start a new one")]
    Aborted,
}

/// A snapshot read back and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSnapshot {
    /// The range's state at the snapshot's index.
    pub state: RangeState,
    /// The opaque conf state the writer stored alongside.
    pub conf_state: Vec<u8>,
}

/// The result of [`latest`].
#[derive(Debug)]
pub struct FoundSnapshot {
    /// The file loaded.
    pub path: PathBuf,
    /// Its contents.
    pub snapshot: LoadedSnapshot,
    /// Newer snapshot files that failed verification, newest first. They were
    /// passed over, not deleted; log them, because a corrupt snapshot means
    /// damaged storage.
    pub skipped: Vec<SnapshotError>,
}

/// The name of the snapshot file for `index` and `term`.
pub fn snapshot_file_name(index: u64, term: u64) -> String {
    format!("snap-{index:020}-{term:020}{SNAPSHOT_SUFFIX}")
}

/// The (index, term) a snapshot file name encodes; `None` for any other name,
/// including temp files.
pub fn parse_snapshot_file_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(SNAPSHOT_SUFFIX)?;
    let (index, term) = rest.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(term) {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

/// The index of a temp file [`write_snapshot`] left behind.
fn parse_temp_file_name(name: &str) -> Option<u64> {
    let rest = name.strip_suffix(TEMP_SUFFIX)?;
    let base = rest.get(..SNAPSHOT_NAME_BYTES)?;
    rest[SNAPSHOT_NAME_BYTES..].strip_prefix('.')?;
    parse_snapshot_file_name(base).map(|(index, _)| index)
}

/// Writes `state` and `conf_state` to `dir` as the snapshot for the state's
/// applied index and term, atomically, and returns the file's path.
///
/// When this returns `Ok`, the file and its directory entry are durable. On
/// an error before the rename, no final file was created or replaced and the
/// temp file is removed; on an error syncing the directory after it, the new
/// file is complete but may not survive a crash, so treat it as not written.
pub fn write_snapshot(
    dir: &Path,
    state: &RangeState,
    conf_state: &[u8],
) -> Result<PathBuf, SnapshotError> {
    let mut frames = FrameEncoder::new(state, conf_state)?;
    let name = snapshot_file_name(state.applied_index(), state.applied_term());
    let final_path = dir.join(&name);
    let temp_path = dir.join(format!(
        "{name}.{}-{}{TEMP_SUFFIX}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_temp(&temp_path, &mut frames)
        .and_then(|()| fs::rename(&temp_path, &final_path).map_err(io_error(&final_path)));
    if let Err(e) = written {
        // Best effort: the original error matters more than a failed cleanup,
        // and a leftover temp file is ignored by `latest` anyway.
        let _ = fs::remove_file(&temp_path);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(final_path)
}

fn write_temp(path: &Path, frames: &mut FrameEncoder<'_>) -> Result<(), SnapshotError> {
    let file = File::create(path).map_err(io_error(path))?;
    let mut out = BufWriter::with_capacity(READ_BUFFER_BYTES, file);
    while let Some(frame) = frames.next_frame() {
        out.write_all(&frame).map_err(io_error(path))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| io_error(path)(e.into_error()))?;
    file.sync_all().map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Reads and verifies the snapshot at `path`. When the file name is a
/// snapshot name, the header must agree with it.
pub fn load_snapshot(path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(path)(e)),
        };
        decoder.feed(&buf[..n]).map_err(|e| e.in_file(path))?;
    }
    let loaded = decoder.finish().map_err(|e| e.in_file(path))?;
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_snapshot_file_name);
    let found = (loaded.state.applied_index(), loaded.state.applied_term());
    if let Some(named) = named.filter(|named| *named != found) {
        return Err(SnapshotError::Corrupt {
            path: path.to_path_buf(),
            offset: 16,
            reason: format!(
                "header says index {} term {}, file name says index {} term {}",
                found.0, found.1, named.0, named.1
            ),
        });
    }
    Ok(loaded)
}

/// Loads the newest snapshot in `dir` that verifies.
///
/// Temp files and other names are ignored. Newer files that fail
/// verification are passed over and listed in [`FoundSnapshot::skipped`].
/// `Ok(None)` means the directory holds no snapshot file at all; if it holds
/// some but none verifies, the newest one's [`SnapshotError::Corrupt`] is
/// returned, because starting from nothing would silently drop the data the
/// log no longer has. IO errors are returned as they happen, never skipped.
pub fn latest(dir: &Path) -> Result<Option<FoundSnapshot>, SnapshotError> {
    let mut candidates: Vec<(u64, u64, PathBuf)> = Vec::new();
    for_each_entry(dir, |name, path| {
        if let Some((index, term)) = parse_snapshot_file_name(name) {
            candidates.push((index, term, path));
        }
        Ok(())
    })?;
    candidates.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
    let mut skipped = Vec::new();
    for (_, _, path) in candidates {
        match load_snapshot(&path) {
            Ok(snapshot) => {
                return Ok(Some(FoundSnapshot {
                    path,
                    snapshot,
                    skipped,
                }))
            }
            Err(e @ SnapshotError::Corrupt { .. }) => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    match skipped.into_iter().next() {
        None => Ok(None),
        Some(newest) => Err(newest),
    }
}

/// Deletes the snapshot files, and the temp files left by interrupted writes,
/// whose index is below `keep_index`; returns how many it deleted. Pass the
/// index of a snapshot that [`latest`] verified, so cleanup never removes
/// the last good one.
pub fn remove_older(dir: &Path, keep_index: u64) -> Result<usize, SnapshotError> {
    let mut removed = 0;
    for_each_entry(dir, |name, path| {
        let index = parse_snapshot_file_name(name)
            .map(|(i, _)| i)
            .or_else(|| parse_temp_file_name(name));
        if index.is_some_and(|index| index < keep_index) {
            fs::remove_file(&path).map_err(io_error(&path))?;
            removed += 1;
        }
        Ok(())
    })?;
    Ok(removed)
}

fn for_each_entry(
    dir: &Path,
    mut f: impl FnMut(&str, PathBuf) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        // Names that are not UTF-8 are not ours.
        if let Some(name) = name.to_str() {
            f(name, entry.path())?;
        }
    }
    Ok(())
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot of one range as a sequence of chunks of at most
/// `chunk_bytes` each, for sending to a replica. See the module docs for the
/// chunk format; [`SnapshotAssembler`] is the receiving end.
///
/// It encodes lazily while borrowing the state, holding at most one chunk
/// plus one frame in memory.
#[derive(Debug)]
pub struct SnapshotChunks<'a> {
    frames: FrameEncoder<'a>,
    /// Stream bytes encoded but not yet sent, from `pending_pos`.
    pending: Vec<u8>,
    pending_pos: usize,
    payload_bytes_max: usize,
    index: u64,
    term: u64,
    seq: u64,
}

impl<'a> SnapshotChunks<'a> {
    /// Chunks of the snapshot of `state` with `conf_state`.
    pub fn new(
        state: &'a RangeState,
        conf_state: &[u8],
        chunk_bytes: usize,
    ) -> Result<Self, SnapshotError> {
        if chunk_bytes < MIN_CHUNK_BYTES {
            return Err(SnapshotError::ChunkBytesTooSmall { chunk_bytes });
        }
        Ok(SnapshotChunks {
            frames: FrameEncoder::new(state, conf_state)?,
            pending: Vec::new(),
            pending_pos: 0,
            payload_bytes_max: chunk_bytes - CHUNK_HEADER_BYTES,
            index: state.applied_index(),
            term: state.applied_term(),
            seq: 0,
        })
    }
}

impl Iterator for SnapshotChunks<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.pending.len() - self.pending_pos < self.payload_bytes_max {
            // Compact first so the buffer never holds more than one chunk of
            // old bytes: with small chunks and large frames, draining from the
            // front on every chunk would copy the frame over and over.
            self.pending.drain(..self.pending_pos);
            self.pending_pos = 0;
            while self.pending.len() < self.payload_bytes_max {
                match self.frames.next_frame() {
                    Some(frame) => self.pending.extend_from_slice(&frame),
                    None => break,
                }
            }
        }
        let available = self.pending.len() - self.pending_pos;
        if available == 0 {
            return None;
        }
        let n = available.min(self.payload_bytes_max);
        let payload = &self.pending[self.pending_pos..self.pending_pos + n];
        let chunk = encode_chunk(self.index, self.term, self.seq, payload);
        self.pending_pos += n;
        self.seq += 1;
        Some(chunk)
    }
}

fn encode_chunk(index: u64, term: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut chunk = Vec::with_capacity(CHUNK_HEADER_BYTES + payload.len());
    chunk.extend_from_slice(&CHUNK_MAGIC);
    chunk.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    chunk.extend_from_slice(&index.to_le_bytes());
    chunk.extend_from_slice(&term.to_le_bytes());
    chunk.extend_from_slice(&seq.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&chunk);
    crc.update(payload);
    chunk.extend_from_slice(&crc.finalize().to_le_bytes());
    chunk.extend_from_slice(payload);
    chunk
}

/// Rebuilds a verified snapshot from the chunks of [`SnapshotChunks`],
/// checking each chunk as it arrives.
#[derive(Debug, Default)]
pub struct SnapshotAssembler {
    decoder: FrameDecoder,
    /// (index, term) named by the first chunk; later chunks must agree.
    snapshot: Option<(u64, u64)>,
    next_seq: u64,
    failed: bool,
}

/// A chunk's header fields, after its checksum matched.
struct ChunkHeader {
    index: u64,
    term: u64,
    seq: u64,
}

impl SnapshotAssembler {
    /// An assembler waiting for chunk 0.
    pub fn new() -> Self {
        SnapshotAssembler::default()
    }

    /// Accepts the next chunk. See [`TransferError`] for which refusals leave
    /// the transfer able to continue.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), TransferError> {
        if self.failed {
            return Err(TransferError::Aborted);
        }
        let (header, payload) = parse_chunk(chunk)?;
        // The first chunk accepted, not merely the first one seen, fixes
        // which snapshot this is, so a stray chunk cannot hijack a transfer.
        let (expected_index, expected_term) = self.snapshot.unwrap_or((header.index, header.term));
        if (header.index, header.term) != (expected_index, expected_term) {
            return Err(TransferError::WrongSnapshot {
                expected_index,
                expected_term,
                index: header.index,
                term: header.term,
            });
        }
        if header.seq < self.next_seq {
            return Err(TransferError::Duplicate { seq: header.seq });
        }
        if header.seq > self.next_seq {
            return Err(TransferError::OutOfOrder {
                expected: self.next_seq,
                got: header.seq,
            });
        }
        if self.decoder.is_done() {
            return Err(TransferError::AfterEnd { seq: header.seq });
        }
        self.snapshot = Some((expected_index, expected_term));
        self.next_seq += 1;
        let fed = self
            .decoder
            .feed(payload)
            .and_then(|()| self.check_header_matches_chunks());
        fed.map_err(|e| {
            self.failed = true;
            TransferError::Corrupt {
                offset: e.offset,
                reason: e.reason,
            }
        })
    }

    /// Whether the end frame has arrived, so [`SnapshotAssembler::finish`]
    /// will succeed.
    pub fn is_complete(&self) -> bool {
        !self.failed && self.decoder.is_done()
    }

    /// Chunks accepted so far; also the sequence number of the next one.
    pub fn chunks_received(&self) -> u64 {
        self.next_seq
    }

    /// The verified snapshot.
    pub fn finish(self) -> Result<LoadedSnapshot, TransferError> {
        if self.failed {
            return Err(TransferError::Aborted);
        }
        if !self.decoder.is_done() {
            return Err(TransferError::Incomplete {
                chunks: self.next_seq,
            });
        }
        self.decoder.finish().map_err(|e| TransferError::Corrupt {
            offset: e.offset,
            reason: e.reason,
        })
    }

    fn check_header_matches_chunks(&self) -> Result<(), StreamError> {
        match (&self.decoder.header, self.snapshot) {
            (Some(h), Some(chunks)) if (h.applied_index, h.applied_term) != chunks => {
                Err(StreamError {
                    offset: 16,
                    reason: format!(
                        "stream header says index {} term {}, its chunks say index {} term {}",
                        h.applied_index, h.applied_term, chunks.0, chunks.1
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

fn parse_chunk(chunk: &[u8]) -> Result<(ChunkHeader, &[u8]), TransferError> {
    let bad = |reason: String| TransferError::BadChunk { reason };
    if chunk.len() < CHUNK_HEADER_BYTES {
        return Err(bad(format!(
            "{} bytes, shorter than a chunk header",
            chunk.len()
        )));
    }
    let mut r = Reader::new(chunk);
    let header_err = |e: super::codec::DecodeError| bad(e.to_string());
    let magic = r.take(4, "chunk magic").map_err(header_err)?;
    if magic != CHUNK_MAGIC {
        return Err(bad("bad chunk magic".to_string()));
    }
    let len = r.u32_le("payload length").map_err(header_err)?;
    let index = r.u64_le("index").map_err(header_err)?;
    let term = r.u64_le("term").map_err(header_err)?;
    let seq = r.u64_le("sequence").map_err(header_err)?;
    let stored = r.u32_le("checksum").map_err(header_err)?;
    let payload = &chunk[CHUNK_HEADER_BYTES..];
    if payload.len() as u64 != u64::from(len) {
        return Err(bad(format!(
            "header says {len} payload bytes, chunk has {}",
            payload.len()
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&chunk[..CHUNK_HEADER_BYTES - 4]);
    crc.update(payload);
    if crc.finalize() != stored {
        return Err(bad("checksum mismatch".to_string()));
    }
    Ok((ChunkHeader { index, term, seq }, payload))
}

/// Produces the stream's frames one at a time, so neither the file writer nor
/// the chunker ever holds more than one frame.
#[derive(Debug)]
struct FrameEncoder<'a> {
    header: Option<Vec<u8>>,
    pairs: Peekable<btree_map::Iter<'a, Vec<u8>, Vec<u8>>>,
    /// Chains the header's and every pairs frame's crc for the end frame.
    chain: crc32fast::Hasher,
    frames: u64,
    pair_count: u64,
    ended: bool,
}

impl<'a> FrameEncoder<'a> {
    fn new(state: &'a RangeState, conf_state: &[u8]) -> Result<Self, SnapshotError> {
        if conf_state.len() > MAX_CONF_STATE_BYTES {
            return Err(SnapshotError::ConfStateTooLarge {
                bytes: conf_state.len(),
            });
        }
        Ok(FrameEncoder {
            header: Some(encode_header(state, conf_state)),
            pairs: state.data().iter().peekable(),
            chain: crc32fast::Hasher::new(),
            frames: 0,
            pair_count: 0,
            ended: false,
        })
    }

    fn next_frame(&mut self) -> Option<Vec<u8>> {
        if let Some(header) = self.header.take() {
            self.chain.update(&header[header.len() - 4..]);
            return Some(header);
        }
        if self.ended {
            return None;
        }
        let mut batch = Vec::new();
        let mut payload_bytes = 0;
        while let Some((key, value)) = self.pairs.peek() {
            let pair_bytes = PAIR_FIXED_BYTES + key.len() + value.len();
            if !batch.is_empty() && payload_bytes + pair_bytes > PAIRS_FRAME_TARGET_BYTES {
                break;
            }
            batch.push((key.as_slice(), value.as_slice()));
            payload_bytes += pair_bytes;
            self.pairs.next();
        }
        if batch.is_empty() {
            self.ended = true;
            return Some(encode_end_frame(
                self.chain.clone(),
                self.pair_count,
                self.frames,
            ));
        }
        let frame = encode_pairs_frame(self.frames, &batch);
        self.chain.update(&frame[12..16]);
        self.frames += 1;
        self.pair_count += batch.len() as u64;
        Some(frame)
    }
}

fn encode_header(state: &RangeState, conf_state: &[u8]) -> Vec<u8> {
    let span = state.span();
    let len = HEADER_FIXED_BYTES + span.start().len() + span.end().len() + conf_state.len() + 4;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&state.applied_index().to_le_bytes());
    out.extend_from_slice(&state.applied_term().to_le_bytes());
    for part in [span.start(), span.end(), conf_state] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
    }
    for part in [span.start(), span.end(), conf_state] {
        out.extend_from_slice(part);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn encode_pairs_frame(seq: u64, pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let payload_bytes: usize = pairs
        .iter()
        .map(|(k, v)| PAIR_FIXED_BYTES + k.len() + v.len())
        .sum();
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload_bytes);
    frame.extend_from_slice(&PAIRS_MAGIC);
    frame.extend_from_slice(&(payload_bytes as u32).to_le_bytes());
    frame.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    for (key, value) in pairs {
        frame.extend_from_slice(&(key.len() as u32).to_le_bytes());
        frame.extend_from_slice(key);
        frame.extend_from_slice(&(value.len() as u32).to_le_bytes());
        frame.extend_from_slice(value);
    }
    let crc = pairs_frame_crc(seq, &frame[..12], &frame[FRAME_HEADER_BYTES..]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn pairs_frame_crc(seq: u64, head: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(head);
    crc.update(payload);
    crc.finalize()
}

fn encode_end_frame(mut chain: crc32fast::Hasher, pair_count: u64, frames: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(END_FRAME_BYTES);
    frame.extend_from_slice(&END_MAGIC);
    frame.extend_from_slice(&pair_count.to_le_bytes());
    frame.extend_from_slice(&frames.to_le_bytes());
    chain.update(&frame);
    frame.extend_from_slice(&chain.finalize().to_le_bytes());
    frame
}

/// Damage found in a stream, before it is known whether the stream came from
/// a file or from chunks.
#[derive(Debug)]
struct StreamError {
    offset: u64,
    reason: String,
}

impl StreamError {
    fn in_file(self, path: &Path) -> SnapshotError {
        SnapshotError::Corrupt {
            path: path.to_path_buf(),
            offset: self.offset,
            reason: self.reason,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    #[default]
    Header,
    Frames,
    Done,
}

#[derive(Debug)]
struct Header {
    span: KeySpan,
    applied_index: u64,
    applied_term: u64,
    conf_state: Vec<u8>,
}

/// Parses a stream fed in pieces of any size, verifying each frame as soon as
/// it is complete. Buffers at most one frame plus one piece.
#[derive(Debug, Default)]
struct FrameDecoder {
    /// Bytes received but not yet part of a complete frame.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    buf_offset: u64,
    stage: Stage,
    header: Option<Header>,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    chain: crc32fast::Hasher,
    frames: u64,
}

impl FrameDecoder {
    fn new() -> Self {
        FrameDecoder::default()
    }

    fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        if self.stage == Stage::Done && !bytes.is_empty() {
            return Err(StreamError {
                offset: self.buf_offset,
                reason: format!("{} bytes after the end frame", bytes.len()),
            });
        }
        self.buf.extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.buf);
        let mut pos = 0;
        let parsed = loop {
            let at = self.buf_offset + pos as u64;
            let step = match self.stage {
                Stage::Header => self.parse_header(&buf[pos..], at),
                Stage::Frames => self.parse_frame(&buf[pos..], at),
                Stage::Done if pos < buf.len() => Err(StreamError {
                    offset: at,
                    reason: format!("{} bytes after the end frame", buf.len() - pos),
                }),
                Stage::Done => Ok(0),
            };
            match step {
                Ok(0) => break Ok(()),
                Ok(used) => pos += used,
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        self.buf.drain(..pos);
        self.buf_offset += pos as u64;
        parsed
    }

    fn finish(self) -> Result<LoadedSnapshot, StreamError> {
        let reason = match (self.stage, self.buf.is_empty()) {
            (Stage::Header, _) => "the stream ends inside the header",
            (Stage::Frames, true) => "the stream ends before its end frame",
            (Stage::Frames, false) => "the stream ends inside a frame",
            (Stage::Done, _) => "",
        };
        let header = match (self.stage, self.header) {
            (Stage::Done, Some(header)) => header,
            _ => {
                return Err(StreamError {
                    offset: self.buf_offset,
                    reason: reason.to_string(),
                })
            }
        };
        // Keys were checked to ascend, so this builds the map in one pass.
        let data: BTreeMap<Vec<u8>, Vec<u8>> = self.pairs.into_iter().collect();
        let state = RangeState::from_verified_parts(
            header.span,
            header.applied_index,
            header.applied_term,
            data,
        );
        Ok(LoadedSnapshot {
            state,
            conf_state: header.conf_state,
        })
    }

    /// Parses the header at the start of `b`; returns the bytes it used, or 0
    /// when more input is needed.
    fn parse_header(&mut self, b: &[u8], at: u64) -> Result<usize, StreamError> {
        let err = |offset: u64, reason: String| {
            Err(StreamError {
                offset: at + offset,
                reason,
            })
        };
        if b.len() < 16 {
            return Ok(0);
        }
        if b[..8] != SNAPSHOT_MAGIC {
            return err(0, "bad magic: not a flotilla snapshot".to_string());
        }
        let version = le_u32(&b[8..12]);
        if version != SNAPSHOT_FORMAT_VERSION {
            return err(
                8,
                format!("unsupported format version {version}; this build reads 1"),
            );
        }
        let len = le_u32(&b[12..16]) as usize;
        if !(HEADER_FIXED_BYTES + 4..=HEADER_MAX_BYTES).contains(&len) {
            return err(12, format!("header length {len} is impossible"));
        }
        if b.len() < len {
            return Ok(0);
        }
        let stored = le_u32(&b[len - 4..len]);
        if crc32fast::hash(&b[..len - 4]) != stored {
            return err(0, "header checksum mismatch".to_string());
        }
        let applied_index = le_u64(&b[16..24]);
        let applied_term = le_u64(&b[24..32]);
        let start_len = le_u32(&b[32..36]) as usize;
        let end_len = le_u32(&b[36..40]) as usize;
        let conf_len = le_u32(&b[40..44]) as usize;
        if start_len > MAX_KEY_BYTES
            || end_len > MAX_KEY_BYTES
            || conf_len > MAX_CONF_STATE_BYTES
            || HEADER_FIXED_BYTES + start_len + end_len + conf_len + 4 != len
        {
            return err(
                32,
                "header field lengths disagree with the header length".to_string(),
            );
        }
        let mut pos = HEADER_FIXED_BYTES;
        let mut next = |n: usize| {
            let part = b[pos..pos + n].to_vec();
            pos += n;
            part
        };
        let (start, end, conf_state) = (next(start_len), next(end_len), next(conf_len));
        let span = match KeySpan::new(start, end) {
            Ok(span) => span,
            Err(e) => return err(HEADER_FIXED_BYTES as u64, format!("invalid span: {e}")),
        };
        self.header = Some(Header {
            span,
            applied_index,
            applied_term,
            conf_state,
        });
        self.chain.update(&stored.to_le_bytes());
        self.stage = Stage::Frames;
        Ok(len)
    }

    fn parse_frame(&mut self, b: &[u8], at: u64) -> Result<usize, StreamError> {
        if b.len() < 4 {
            return Ok(0);
        }
        match [b[0], b[1], b[2], b[3]] {
            PAIRS_MAGIC => self.parse_pairs(b, at),
            END_MAGIC => self.parse_end(b, at),
            magic => Err(StreamError {
                offset: at,
                reason: format!(
                    "unknown frame magic {magic:02x?}; expected a pairs or an end frame"
                ),
            }),
        }
    }

    fn parse_pairs(&mut self, b: &[u8], at: u64) -> Result<usize, StreamError> {
        let err = |offset: u64, reason: String| {
            Err(StreamError {
                offset: at + offset,
                reason,
            })
        };
        if b.len() < FRAME_HEADER_BYTES {
            return Ok(0);
        }
        let len = le_u32(&b[4..8]) as usize;
        let count = le_u32(&b[8..12]) as usize;
        let stored = le_u32(&b[12..16]);
        if len > PAIRS_PAYLOAD_MAX_BYTES {
            return err(
                4,
                format!("pairs frame of {len} bytes exceeds {PAIRS_PAYLOAD_MAX_BYTES}"),
            );
        }
        if count == 0 || count as u64 * (PAIR_FIXED_BYTES as u64 + 1) > len as u64 {
            return err(
                8,
                format!("{count} pairs cannot fit a {len}-byte pairs frame"),
            );
        }
        let total = FRAME_HEADER_BYTES + len;
        if b.len() < total {
            return Ok(0);
        }
        let payload = &b[FRAME_HEADER_BYTES..total];
        if pairs_frame_crc(self.frames, &b[..12], payload) != stored {
            return err(0, format!("pairs frame {} checksum mismatch", self.frames));
        }
        let payload_at = at + FRAME_HEADER_BYTES as u64;
        self.parse_pair_payload(payload, count)
            .map_err(|(offset, reason)| StreamError {
                offset: payload_at + offset as u64,
                reason,
            })?;
        self.chain.update(&stored.to_le_bytes());
        self.frames += 1;
        Ok(total)
    }

    /// Checks and collects the pairs of a frame whose checksum matched: a
    /// matching checksum proves the bytes are what the writer wrote, not that
    /// the writer was right, and the state machine's invariants are re-checked
    /// on the way in. Errors carry the offset within the payload.
    fn parse_pair_payload(&mut self, payload: &[u8], count: usize) -> Result<(), (usize, String)> {
        let Some(header) = &self.header else {
            return Err((0, "pairs frame before the header".to_string()));
        };
        let mut r = Reader::new(payload);
        let decode = |e: super::codec::DecodeError| (e.offset, e.reason.to_string());
        for _ in 0..count {
            let pair_at = r.pos();
            let key_len = r.u32_le("key length").map_err(decode)? as usize;
            if key_len == 0 || key_len > MAX_KEY_BYTES {
                return Err((
                    pair_at,
                    format!("key length {key_len} outside 1..={MAX_KEY_BYTES}"),
                ));
            }
            let key = r.take(key_len as u64, "key").map_err(decode)?;
            let value_len = r.u32_le("value length").map_err(decode)? as usize;
            if value_len > MAX_VALUE_BYTES {
                return Err((
                    pair_at,
                    format!("value length {value_len} exceeds {MAX_VALUE_BYTES}"),
                ));
            }
            let value = r.take(value_len as u64, "value").map_err(decode)?;
            if self
                .pairs
                .last()
                .is_some_and(|(last, _)| key <= last.as_slice())
            {
                return Err((pair_at, format!("key {} is out of order", DisplayKey(key))));
            }
            if !header.span.contains(key) {
                return Err((
                    pair_at,
                    format!(
                        "key {} is outside the span {}",
                        DisplayKey(key),
                        header.span
                    ),
                ));
            }
            self.pairs.push((key.to_vec(), value.to_vec()));
        }
        r.finish().map_err(|e| {
            (
                e.offset,
                "bytes after the last pair of the frame".to_string(),
            )
        })
    }

    fn parse_end(&mut self, b: &[u8], at: u64) -> Result<usize, StreamError> {
        let err = |offset: u64, reason: String| {
            Err(StreamError {
                offset: at + offset,
                reason,
            })
        };
        if b.len() < END_FRAME_BYTES {
            return Ok(0);
        }
        let mut chain = self.chain.clone();
        chain.update(&b[..20]);
        if chain.finalize() != le_u32(&b[20..24]) {
            return err(0, "end frame checksum mismatch".to_string());
        }
        let pairs = le_u64(&b[4..12]);
        let frames = le_u64(&b[12..20]);
        if pairs != self.pairs.len() as u64 || frames != self.frames {
            return err(
                4,
                format!(
                    "end frame counts {pairs} pairs in {frames} frames, the stream held {} in {}",
                    self.pairs.len(),
                    self.frames
                ),
            );
        }
        self.stage = Stage::Done;
        Ok(END_FRAME_BYTES)
    }
}

/// Reads a little-endian u32 from a slice the caller has sized to 4 bytes.
fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

/// Reads a little-endian u64 from a slice the caller has sized to 8 bytes.
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::command::{Command, Proposal};
    use proptest::prelude::*;

    /// A state over `[a, +inf)` holding `pairs` keys with `value_bytes` each,
    /// applied at index `index` in term 7.
    fn sample(pairs: usize, value_bytes: usize, index: u64) -> RangeState {
        let span = KeySpan::new(b"a".to_vec(), Vec::new()).unwrap();
        let mut state = RangeState::new(span);
        let mut ops = Vec::new();
        for i in 0..pairs {
            let value = vec![(i % 251) as u8; value_bytes];
            ops.push(Command::Put {
                key: format!("a{i:06}").into_bytes(),
                value,
            });
        }
        for (i, chunk) in ops.chunks(100).enumerate() {
            let proposal = Proposal {
                request_id: i as u64,
                command: Command::Batch(chunk.to_vec()),
            };
            state.apply(i as u64 + 1, 7, &proposal);
        }
        state.advance_applied(index.max(state.applied_index() + 1), 7);
        state
    }

    fn stream(state: &RangeState, conf: &[u8]) -> Vec<u8> {
        let mut frames = FrameEncoder::new(state, conf).unwrap();
        let mut out = Vec::new();
        while let Some(frame) = frames.next_frame() {
            out.extend_from_slice(&frame);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<LoadedSnapshot, StreamError> {
        let mut decoder = FrameDecoder::new();
        decoder.feed(bytes)?;
        decoder.finish()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn corrupt_offset(result: Result<LoadedSnapshot, SnapshotError>) -> u64 {
        match result {
            Err(SnapshotError::Corrupt { offset, .. }) => offset,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_snapshot_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = sample(300, 1000, 42);
        let path = write_snapshot(dir.path(), &state, b"conf").unwrap();
        assert_eq!(
            path,
            dir.path()
                .join("snap-00000000000000000042-00000000000000000007.snap")
        );
        assert_eq!(names(dir.path()).len(), 1, "no temp file is left behind");
        let loaded = load_snapshot(&path).unwrap();
        assert_eq!(
            loaded,
            LoadedSnapshot {
                state,
                conf_state: b"conf".to_vec()
            }
        );
    }

    #[test]
    fn empty_and_bounded_states_round_trip() {
        let span = KeySpan::new(b"b".to_vec(), b"q".to_vec()).unwrap();
        let state = RangeState::new(span);
        let loaded = decode(&stream(&state, b"")).unwrap();
        assert_eq!(loaded.state, state);
        assert!(loaded.conf_state.is_empty());
    }

    #[test]
    fn a_maximal_pair_gets_a_frame_of_its_own() {
        let mut state = RangeState::new(KeySpan::full());
        let big = Command::Put {
            key: vec![b'k'; MAX_KEY_BYTES],
            value: vec![7; MAX_VALUE_BYTES],
        };
        let small = Command::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        };
        state.apply(
            1,
            1,
            &Proposal {
                request_id: 1,
                command: Command::Batch(vec![small, big]),
            },
        );
        let bytes = stream(&state, b"");
        assert_eq!(decode(&bytes).unwrap().state, state);
    }

    #[test]
    fn every_flipped_byte_is_reported_at_or_before_it() {
        let state = sample(5, 3, 9);
        let bytes = stream(&state, b"cs");
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            match decode(&damaged) {
                Err(e) => assert!(e.offset <= i as u64, "flip at {i} reported at {}", e.offset),
                Ok(_) => panic!("flip at {i} was accepted"),
            }
        }
    }

    #[test]
    fn every_truncation_is_reported() {
        let state = sample(5, 3, 9);
        let bytes = stream(&state, b"cs");
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncation to {len} bytes was accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = decode(&longer).unwrap_err();
        assert_eq!(err.offset, bytes.len() as u64, "{}", err.reason);
    }

    #[test]
    fn damage_on_disk_is_corrupt_with_path_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let state = sample(3000, 100, 50);
        let path = write_snapshot(dir.path(), &state, b"").unwrap();
        let good = fs::read(&path).unwrap();
        let flip_at = good.len() / 2;
        let mut damaged = good.clone();
        damaged[flip_at] ^= 1;
        fs::write(&path, &damaged).unwrap();
        match load_snapshot(&path) {
            Err(SnapshotError::Corrupt {
                path: p,
                offset,
                reason,
            }) => {
                assert_eq!(p, path);
                assert!(
                    offset <= flip_at as u64 && flip_at as u64 - offset < 70_000,
                    "{offset}"
                );
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        fs::write(&path, &good[..good.len() - 10]).unwrap();
        corrupt_offset(load_snapshot(&path));
        // Cut exactly at the end frame: every frame before it still checks out.
        fs::write(&path, &good[..good.len() - END_FRAME_BYTES]).unwrap();
        assert_eq!(
            corrupt_offset(load_snapshot(&path)),
            (good.len() - END_FRAME_BYTES) as u64
        );
        fs::write(&path, b"").unwrap();
        assert_eq!(corrupt_offset(load_snapshot(&path)), 0);
    }

    #[test]
    fn a_frame_moved_to_another_position_fails_its_checksum() {
        let state = sample(3000, 100, 50);
        let mut encoder = FrameEncoder::new(&state, b"").unwrap();
        let frames: Vec<Vec<u8>> = std::iter::from_fn(|| encoder.next_frame()).collect();
        assert!(frames.len() > 4, "header, several pairs frames, end");
        let mut swapped = frames.clone();
        swapped.swap(1, 2);
        let err = decode(&swapped.concat()).unwrap_err();
        assert_eq!(err.offset, frames[0].len() as u64);
        assert!(
            err.reason.contains("pairs frame 0 checksum"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn valid_checksums_over_broken_invariants_are_still_refused() {
        let state = RangeState::new(KeySpan::new(b"b".to_vec(), b"m".to_vec()).unwrap());
        let header = encode_header(&state, b"");
        let reject = |pairs: &[(&[u8], &[u8])]| {
            let mut bytes = header.clone();
            bytes.extend_from_slice(&encode_pairs_frame(0, pairs));
            decode(&bytes).unwrap_err()
        };
        let unordered = reject(&[(b"d", b""), (b"c", b"")]);
        assert!(
            unordered.reason.contains("out of order"),
            "{}",
            unordered.reason
        );
        let outside = reject(&[(b"z", b"")]);
        assert!(
            outside.reason.contains("outside the span"),
            "{}",
            outside.reason
        );
        let empty_key = reject(&[(b"", b"v")]);
        assert!(
            empty_key.reason.contains("key length 0"),
            "{}",
            empty_key.reason
        );
    }

    #[test]
    fn header_and_file_name_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), &sample(2, 1, 5), b"").unwrap();
        let renamed = dir.path().join(snapshot_file_name(6, 7));
        fs::rename(&path, &renamed).unwrap();
        assert_eq!(corrupt_offset(load_snapshot(&renamed)), 16);
    }

    #[test]
    fn latest_skips_temp_files_and_corrupt_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        assert!(latest(dir.path()).unwrap().is_none());
        for index in [10, 20, 30] {
            write_snapshot(dir.path(), &sample(4, 2, index), b"").unwrap();
        }
        let newest = dir.path().join(snapshot_file_name(30, 7));
        let mut bytes = fs::read(&newest).unwrap();
        bytes[60] ^= 0xff;
        fs::write(&newest, &bytes).unwrap();
        let temp_name = format!("{}.1-0.tmp", snapshot_file_name(40, 7));
        fs::write(dir.path().join(&temp_name), b"half a snapshot").unwrap();
        fs::write(dir.path().join("notes.txt"), b"not a snapshot").unwrap();

        let found = latest(dir.path()).unwrap().unwrap();
        assert_eq!(found.path, dir.path().join(snapshot_file_name(20, 7)));
        assert_eq!(found.snapshot.state.applied_index(), 20);
        assert_eq!(found.skipped.len(), 1);
        assert!(
            matches!(&found.skipped[0], SnapshotError::Corrupt { path, .. } if *path == newest)
        );

        assert_eq!(remove_older(dir.path(), 20).unwrap(), 1);
        assert_eq!(
            remove_older(dir.path(), 41).unwrap(),
            3,
            "older snapshots and temp files go"
        );
        assert_eq!(names(dir.path()), ["notes.txt"]);
    }

    #[test]
    fn latest_refuses_a_directory_of_only_corrupt_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_snapshot(dir.path(), &sample(4, 2, 10), b"").unwrap();
        fs::write(&path, b"FLOTSNAP garbage").unwrap();
        assert!(matches!(
            latest(dir.path()),
            Err(SnapshotError::Corrupt { .. })
        ));
        assert!(matches!(
            latest(&dir.path().join("missing")),
            Err(SnapshotError::Io { .. })
        ));
    }

    #[test]
    fn file_names_parse_strictly() {
        assert_eq!(
            parse_snapshot_file_name(&snapshot_file_name(u64::MAX, 3)),
            Some((u64::MAX, 3))
        );
        for name in [
            "snap-1-2.snap",
            "snap-00000000000000000001-00000000000000000002.snap.1-0.tmp",
            "snap-0000000000000000000a-00000000000000000002.snap",
            "snap-99999999999999999999-00000000000000000002.snap",
        ] {
            assert_eq!(parse_snapshot_file_name(name), None, "{name}");
        }
        let temp = format!("{}.12-3.tmp", snapshot_file_name(5, 1));
        assert_eq!(parse_temp_file_name(&temp), Some(5));
    }

    #[test]
    fn oversized_inputs_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let state = sample(1, 1, 1);
        let conf = vec![0; MAX_CONF_STATE_BYTES + 1];
        assert!(matches!(
            write_snapshot(dir.path(), &state, &conf),
            Err(SnapshotError::ConfStateTooLarge { .. })
        ));
        assert!(names(dir.path()).is_empty());
        assert!(matches!(
            SnapshotChunks::new(&state, b"", MIN_CHUNK_BYTES - 1),
            Err(SnapshotError::ChunkBytesTooSmall { .. })
        ));
    }

    fn assemble(chunks: &[Vec<u8>]) -> Result<LoadedSnapshot, TransferError> {
        let mut assembler = SnapshotAssembler::new();
        for chunk in chunks {
            assembler.push(chunk)?;
        }
        assembler.finish()
    }

    #[test]
    fn chunks_are_bounded_and_carry_the_file_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let state = sample(500, 300, 77);
        let file = fs::read(write_snapshot(dir.path(), &state, b"conf").unwrap()).unwrap();
        for chunk_bytes in [MIN_CHUNK_BYTES, 1000, 70_000, DEFAULT_CHUNK_BYTES] {
            let chunks: Vec<Vec<u8>> = SnapshotChunks::new(&state, b"conf", chunk_bytes)
                .unwrap()
                .collect();
            assert!(
                chunks.iter().all(|c| c.len() <= chunk_bytes),
                "{chunk_bytes}"
            );
            let payloads: Vec<u8> = chunks
                .iter()
                .flat_map(|c| c[CHUNK_HEADER_BYTES..].iter().copied())
                .collect();
            assert_eq!(payloads, file, "chunk_bytes {chunk_bytes}");
            let loaded = assemble(&chunks).unwrap();
            assert_eq!(loaded.state, state);
            assert_eq!(loaded.conf_state, b"conf");
        }
    }

    #[test]
    fn the_assembler_refuses_bad_chunks_and_continues_after() {
        let state = sample(50, 20, 3);
        let chunks: Vec<Vec<u8>> = SnapshotChunks::new(&state, b"", 200).unwrap().collect();
        assert!(chunks.len() > 4);
        let mut a = SnapshotAssembler::new();
        let other = sample(50, 20, 4);
        let foreign: Vec<Vec<u8>> = SnapshotChunks::new(&other, b"", 200).unwrap().collect();
        assert_eq!(
            a.push(&foreign[1]),
            Err(TransferError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
        a.push(&chunks[0]).unwrap();

        let mut damaged = chunks[1].clone();
        damaged[CHUNK_HEADER_BYTES + 3] ^= 1;
        assert!(matches!(
            a.push(&damaged),
            Err(TransferError::BadChunk { .. })
        ));
        assert!(matches!(
            a.push(&chunks[1][..20]),
            Err(TransferError::BadChunk { .. })
        ));
        assert_eq!(a.push(&chunks[0]), Err(TransferError::Duplicate { seq: 0 }));
        assert_eq!(
            a.push(&chunks[2]),
            Err(TransferError::OutOfOrder {
                expected: 1,
                got: 2
            })
        );
        assert!(matches!(
            a.push(&foreign[1]),
            Err(TransferError::WrongSnapshot { index: 4, .. })
        ));

        for chunk in &chunks[1..chunks.len() - 1] {
            a.push(chunk).unwrap();
        }
        assert!(!a.is_complete());
        a.push(chunks.last().unwrap()).unwrap();
        assert!(a.is_complete());
        let seq = chunks.len() as u64;
        let surplus = encode_chunk(3, 7, seq, b"more");
        assert_eq!(a.push(&surplus), Err(TransferError::AfterEnd { seq }));
        assert_eq!(a.finish().unwrap().state, state);

        assert_eq!(
            assemble(&chunks[..chunks.len() - 1]),
            Err(TransferError::Incomplete { chunks: seq - 1 })
        );
    }

    #[test]
    fn intact_chunks_of_a_damaged_stream_end_the_transfer() {
        let state = sample(50, 20, 3);
        let mut bytes = stream(&state, b"");
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        let chunks: Vec<Vec<u8>> = bytes
            .chunks(100)
            .enumerate()
            .map(|(i, p)| encode_chunk(3, 7, i as u64, p))
            .collect();
        let mut a = SnapshotAssembler::new();
        let err = chunks
            .iter()
            .map(|c| a.push(c))
            .find_map(Result::err)
            .unwrap();
        assert!(matches!(err, TransferError::Corrupt { offset, .. } if offset <= at as u64));
        let next = chunks.len() as u64;
        assert_eq!(
            a.push(&encode_chunk(3, 7, next, b"")),
            Err(TransferError::Aborted)
        );
        assert_eq!(a.finish(), Err(TransferError::Aborted));

        // Chunks whose header names another snapshot than the stream inside.
        let relabelled: Vec<Vec<u8>> = stream(&state, b"")
            .chunks(100)
            .enumerate()
            .map(|(i, p)| encode_chunk(99, 7, i as u64, p))
            .collect();
        assert!(matches!(
            assemble(&relabelled),
            Err(TransferError::Corrupt { offset: 16, .. })
        ));
    }

    proptest! {
        #[test]
        fn chunked_transfer_round_trips(
            pairs in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 1..12),
                proptest::collection::vec(any::<u8>(), 0..40),
                0..40,
            ),
            chunk_bytes in MIN_CHUNK_BYTES..400,
            conf in proptest::collection::vec(any::<u8>(), 0..50),
        ) {
            let state = RangeState::from_verified_parts(KeySpan::full(), 11, 2, pairs);
            let chunks: Vec<Vec<u8>> = SnapshotChunks::new(&state, &conf, chunk_bytes).unwrap().collect();
            prop_assert!(chunks.iter().all(|c| c.len() <= chunk_bytes));
            let loaded = assemble(&chunks).unwrap();
            prop_assert_eq!(loaded.state, state);
            prop_assert_eq!(loaded.conf_state, conf);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            split in 0usize..300,
        ) {
            // Behind a valid header, so the fuzzing reaches the frame parsers.
            let mut framed = encode_header(&RangeState::new(KeySpan::full()), b"");
            framed.extend_from_slice(&bytes);
            for input in [&bytes, &framed] {
                let split = split.min(input.len());
                let mut d = FrameDecoder::new();
                if d.feed(&input[..split]).and_then(|()| d.feed(&input[split..])).is_ok() {
                    let _ = d.finish();
                }
                let mut a = SnapshotAssembler::new();
                let _ = a.push(input);
                let _ = a.push(&encode_chunk(0, 0, 0, input));
            }
        }
    }
}
