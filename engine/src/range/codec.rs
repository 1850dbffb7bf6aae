//! Byte-level helpers shared by the range encoders: canonical LEB128 varints,
//! length-prefixed byte strings, and a reader that checks every bound.
//!
//! The reader is the one place that touches untrusted input, so every other
//! decoder gets "never panics, never over-allocates" by going through it.

use thiserror::Error;

/// Why bytes did not decode. `offset` is where in the input the problem is.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("cannot decode at byte offset {offset}: {reason}")]
pub struct DecodeError {
    /// Byte offset within the decoded buffer.
    pub offset: usize,
    /// What is wrong there.
    pub reason: DecodeReason,
}

/// What made a decode fail.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeReason {
    /// The input ended inside a field.
    #[error("input ends inside {what}: {needed} bytes needed, {available} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the input.
        available: usize,
    },
    /// A varint runs past 64 bits.
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    /// A varint has redundant trailing zero groups; only the shortest
    /// encoding is accepted so that every value has exactly one encoding.
    #[error("varint is not minimally encoded")]
    VarintNotMinimal,
    /// The leading version byte names a format this build does not know.
    #[error("unsupported encoding version {0}; this build reads version 1")]
    UnsupportedVersion(u8),
    /// A tag byte names no known variant.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which enum the tag selects a variant of.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A batch inside a batch; the format has none, and refusing them bounds
    /// the decoder's recursion depth to one.
    #[error("batch nested inside a batch")]
    NestedBatch,
    /// A key span whose bounds are inverted or too long.
    #[error("invalid key span: {0}")]
    InvalidSpan(super::command::InvalidArgument),
    /// A count or length that does not fit this platform's `usize` or `u32`.
    #[error("{what} {value} is out of range")]
    OutOfRange {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// Bytes remain after a complete value.
    #[error("{0} unexpected bytes after the end of the value")]
    TrailingBytes(usize),
}

/// Appends `v` as an unsigned LEB128 varint (7 bits per byte, low first, high
/// bit set on every byte but the last).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a varint length and then the bytes.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends `None` as byte 0, `Some(b)` as byte 1 then `b` length-prefixed.
pub(crate) fn put_opt_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

/// A cursor over untrusted bytes. Every read checks the bytes that remain, so
/// a length prefix can never make the decoder allocate more than the input
/// holds.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn error_at(&self, offset: usize, reason: DecodeReason) -> DecodeError {
        DecodeError { offset, reason }
    }

    pub(crate) fn error(&self, reason: DecodeReason) -> DecodeError {
        self.error_at(self.pos, reason)
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if n > available as u64 {
            return Err(self.error(DecodeReason::Truncated {
                what,
                needed: n,
                available,
            }));
        }
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u32_le(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64_le(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads a canonical varint: at most 10 bytes, no overflow, no redundant
    /// trailing zero group.
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let byte = self.u8(what)?;
            let group = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(self.error_at(start, DecodeReason::VarintOverflow));
            }
            value |= group << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(self.error_at(start, DecodeReason::VarintNotMinimal));
                }
                return Ok(value);
            }
        }
        Err(self.error_at(start, DecodeReason::VarintOverflow))
    }

    /// Reads a varint that must fit a `usize`.
    pub(crate) fn varint_usize(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let v = self.varint(what)?;
        usize::try_from(v)
            .map_err(|_| self.error_at(at, DecodeReason::OutOfRange { what, value: v }))
    }

    /// Reads a length-prefixed byte string.
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.varint(what)?;
        self.take(len, what)
    }

    /// Reads what [`put_opt_bytes`] wrote.
    pub(crate) fn opt_bytes(
        &mut self,
        what: &'static str,
    ) -> Result<Option<&'a [u8]>, DecodeError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes(what)?)),
            tag => Err(self.error_at(at, DecodeReason::UnknownTag { what, tag })),
        }
    }

    /// Fails unless the whole input was consumed, so garbage appended to a
    /// value is noticed instead of ignored.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error(DecodeReason::TrailingBytes(n))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.varint("v"), Ok(v));
            assert_eq!(r.finish(), Ok(()));
        }
    }

    #[test]
    fn non_minimal_and_overflowing_varints_are_refused() {
        let reason = |bytes: &[u8]| Reader::new(bytes).varint("v").unwrap_err().reason;
        assert_eq!(reason(&[0x80, 0x00]), DecodeReason::VarintNotMinimal);
        assert_eq!(reason(&[0xff; 10]), DecodeReason::VarintOverflow);
        let mut eleven = vec![0xff; 9];
        eleven.push(0x02);
        assert_eq!(reason(&eleven), DecodeReason::VarintOverflow);
        assert!(matches!(reason(&[0x80]), DecodeReason::Truncated { .. }));
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        let err = Reader::new(&out).bytes("key").unwrap_err();
        assert!(matches!(
            err.reason,
            DecodeReason::Truncated {
                needed: u64::MAX,
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn any_u64_round_trips(v: u64) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(Reader::new(&out).varint("v"), Ok(v));
        }
    }
}
