//! The bytes on a QUIC stream between two nodes.
//!
//! ```text
//! unidirectional stream, one per kind and direction, for the life of the
//! connection:
//!     header  4 bytes  b"FLQR" (Raft traffic) or b"FLQS" (snapshot chunks)
//!     frame*
//! frame:
//!     length  u32 little-endian, 1..=frame_bytes_max
//!     archive `length` bytes: the rkyv archive of one `Frame`
//!
//! bidirectional stream of a client, one per call:
//!     request   u32 little-endian length, then the request bytes
//!     response  u32 little-endian length, then the response bytes
//! ```
//!
//! Versioning is the TLS ALPN (`flotilla/1`), agreed before any of these
//! bytes flow. An archive is validated (rkyv's bytecheck) before anything
//! reads it; being pointer-relative, it needs the alignment it was written
//! with, so the receiver reads it into an [`AlignedVec`] (or
//! [`decode_archive`] copies it into one). The length is bounded by the
//! receiver's `frame_bytes_max` before any buffer is allocated for it.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::Frame;

/// Bytes of a frame's length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Which traffic a unidirectional stream carries. Snapshot chunks have a
/// stream of their own so that a large snapshot never delays a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// Raft messages, coalesced heartbeats and payloads.
    Raft,
    /// Snapshot chunks only.
    Snapshot,
}

impl StreamKind {
    /// The first bytes of a stream of this kind.
    pub const fn header(self) -> [u8; 4] {
        match self {
            StreamKind::Raft => *b"FLQR",
            StreamKind::Snapshot => *b"FLQS",
        }
    }

    /// The kind of a stream that starts with `header`.
    pub fn from_header(header: [u8; 4]) -> Result<StreamKind, FrameError> {
        match &header {
            b"FLQR" => Ok(StreamKind::Raft),
            b"FLQS" => Ok(StreamKind::Snapshot),
            _ => Err(FrameError::BadStreamHeader(header)),
        }
    }
}

/// Why bytes from a peer are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("stream header {0:02x?} is neither FLQR nor FLQS")]
    BadStreamHeader([u8; 4]),
    #[error("a frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("a frame of 0 bytes")]
    Empty,
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("not a valid frame archive: {0}")]
    Malformed(String),
}

/// A frame ready for the wire: its length prefix, then its archive.
#[derive(Debug)]
pub struct EncodedFrame {
    archive: AlignedVec,
}

impl EncodedFrame {
    /// The length prefix to write before [`EncodedFrame::archive`].
    pub fn prefix(&self) -> [u8; LENGTH_PREFIX_BYTES] {
        // `encode_frame` checked that the length fits in a u32.
        (self.archive.len() as u32).to_le_bytes()
    }

    /// The archive bytes.
    pub fn archive(&self) -> &[u8] {
        &self.archive
    }

    /// Prefix and archive.
    pub fn wire_bytes(&self) -> usize {
        LENGTH_PREFIX_BYTES + self.archive.len()
    }
}

/// Encodes `frame`; a frame whose archive is over `frame_bytes_max` bytes
/// (or over what a u32 prefix can say) is refused here, since the receiver
/// would drop the connection over it.
pub fn encode_frame(frame: &Frame, frame_bytes_max: usize) -> Result<EncodedFrame, FrameError> {
    let archive = rkyv::to_bytes::<rancor::Error>(frame)
        .map_err(|error| FrameError::Malformed(error.to_string()))?;
    let max = frame_bytes_max.min(u32::MAX as usize);
    if archive.len() > max {
        return Err(FrameError::TooLarge {
            len: archive.len() as u64,
            max,
        });
    }
    Ok(EncodedFrame { archive })
}

/// The archive length a prefix announces, checked against the limit
/// before anything is allocated for it.
pub fn decode_length(
    prefix: [u8; LENGTH_PREFIX_BYTES],
    frame_bytes_max: usize,
) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if u64::from(len) > frame_bytes_max as u64 {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: frame_bytes_max,
        });
    }
    Ok(len as usize)
}

/// Validates and deserializes one frame archive. Copies `archive` into an
/// aligned buffer first when it is not already aligned.
pub fn decode_archive(archive: &[u8]) -> Result<Frame, FrameError> {
    let mut aligned = AlignedVec::<16>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    decode_aligned(&aligned)
}

/// [`decode_archive`] without the copy, for a buffer read in place.
pub(crate) fn decode_aligned(archive: &AlignedVec) -> Result<Frame, FrameError> {
    rkyv::from_bytes::<Frame, rancor::Error>(archive)
        .map_err(|error| FrameError::Malformed(error.to_string()))
}

/// Decodes the first frame of `bytes` (length prefix and archive); returns
/// it with the number of bytes it took.
pub fn decode_wire(bytes: &[u8], frame_bytes_max: usize) -> Result<(Frame, usize), FrameError> {
    let Some(prefix) = bytes.get(..LENGTH_PREFIX_BYTES) else {
        return Err(FrameError::Truncated {
            needed: LENGTH_PREFIX_BYTES,
            available: bytes.len(),
        });
    };
    let mut raw = [0u8; LENGTH_PREFIX_BYTES];
    raw.copy_from_slice(prefix);
    let len = decode_length(raw, frame_bytes_max)?;
    let end = LENGTH_PREFIX_BYTES + len;
    let Some(archive) = bytes.get(LENGTH_PREFIX_BYTES..end) else {
        return Err(FrameError::Truncated {
            needed: end,
            available: bytes.len(),
        });
    };
    Ok((decode_archive(archive)?, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Heartbeat, SnapshotChunk};

    fn frame() -> Frame {
        let mut frame = Frame::new(1, 2);
        frame.heartbeat = Some(Heartbeat {
            tick: 9,
            ..Heartbeat::default()
        });
        frame.payloads.push(b"payload".to_vec());
        frame.snapshot_chunks.push(SnapshotChunk {
            group: 4,
            term: 2,
            chunk: vec![7; 1000],
        });
        frame
    }

    fn wire(frame: &Frame) -> Vec<u8> {
        let encoded = encode_frame(frame, 1 << 20).unwrap();
        let mut bytes = encoded.prefix().to_vec();
        bytes.extend_from_slice(encoded.archive());
        assert_eq!(bytes.len(), encoded.wire_bytes());
        bytes
    }

    #[test]
    fn a_frame_survives_the_wire_even_misaligned() {
        let mut bytes = vec![0xAA];
        bytes.extend(wire(&frame()));
        bytes.extend_from_slice(b"next");
        // Offset by one byte: the decoder must not rely on the caller's
        // alignment.
        let (decoded, used) = decode_wire(&bytes[1..], 1 << 20).unwrap();
        assert_eq!(decoded, frame());
        assert_eq!(&bytes[1 + used..], b"next");
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        assert_eq!(decode_length(5u32.to_le_bytes(), 5), Ok(5));
        assert_eq!(
            decode_length(6u32.to_le_bytes(), 5),
            Err(FrameError::TooLarge { len: 6, max: 5 })
        );
        assert_eq!(decode_length([0; 4], 5), Err(FrameError::Empty));
        let bytes = wire(&frame());
        assert!(matches!(
            decode_wire(&bytes, 16),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            encode_frame(&frame(), 16),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_and_garbage_input_are_errors() {
        let bytes = wire(&frame());
        for cut in [0, 3, 4, bytes.len() - 1] {
            assert!(
                matches!(
                    decode_wire(&bytes[..cut], 1 << 20),
                    Err(FrameError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut garbage = 64u32.to_le_bytes().to_vec();
        garbage.extend((0..64u8).map(|i| i.wrapping_mul(151)));
        assert!(matches!(
            decode_wire(&garbage, 1 << 20),
            Err(FrameError::Malformed(_))
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xFF;
        assert!(decode_wire(&flipped, 1 << 20).is_err());
    }

    #[test]
    fn stream_headers_name_their_kind() {
        for kind in [StreamKind::Raft, StreamKind::Snapshot] {
            assert_eq!(StreamKind::from_header(kind.header()), Ok(kind));
        }
        assert_eq!(
            StreamKind::from_header(*b"GET "),
            Err(FrameError::BadStreamHeader(*b"GET "))
        );
    }
}
