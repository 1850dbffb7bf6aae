//! The key span a range serves.

use std::fmt;

use super::command::{InvalidArgument, MAX_KEY_BYTES};

/// A half-open key span `[start, end)`.
///
/// Keys order as byte strings. An empty `start` is the smallest key, so it
/// means "from the beginning of the keyspace"; an empty `end` means +infinity,
/// because no finite key can bound the last range of the keyspace. With those
/// two conventions the ranges of a cluster tile the keyspace with no gap and no
/// special "unbounded" type in the wire formats.
///
/// Invariant (checked by [`KeySpan::new`], so every value holds it): `end` is
/// empty or `start < end`, and both bounds are at most [`MAX_KEY_BYTES`] long.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpan {
    start: Vec<u8>,
    end: Vec<u8>,
}

impl KeySpan {
    /// Makes the span `[start, end)`; `end` empty means +infinity.
    ///
    /// Bounds longer than a key may be cannot be split points or range
    /// boundaries, and an inverted or empty span would serve nothing, so both
    /// are refused here rather than discovered later.
    pub fn new(start: Vec<u8>, end: Vec<u8>) -> Result<Self, InvalidArgument> {
        for bound in [&start, &end] {
            if bound.len() > MAX_KEY_BYTES {
                return Err(InvalidArgument::KeyTooLong {
                    len: bound.len() as u64,
                });
            }
        }
        if !end.is_empty() && end <= start {
            return Err(InvalidArgument::EndBeforeStart);
        }
        Ok(KeySpan { start, end })
    }

    /// The span of the whole keyspace, served by the first range of a cluster.
    pub fn full() -> Self {
        KeySpan {
            start: Vec::new(),
            end: Vec::new(),
        }
    }

    /// The inclusive lower bound.
    pub fn start(&self) -> &[u8] {
        &self.start
    }

    /// The exclusive upper bound; empty means +infinity.
    pub fn end(&self) -> &[u8] {
        &self.end
    }

    /// The exclusive upper bound, `None` when the span is unbounded.
    pub fn end_bound(&self) -> Option<&[u8]> {
        if self.end.is_empty() {
            None
        } else {
            Some(&self.end)
        }
    }

    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end_bound().is_none_or(|end| key < end)
    }

    /// Whether the interval `[start, end)` lies inside this span (`end` `None`
    /// meaning +infinity). An empty interval at the span's upper edge counts as
    /// inside: it touches no key, so nothing is misrouted.
    pub fn covers(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        if start < self.start.as_slice() {
            return false;
        }
        match (self.end_bound(), end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(span_end), Some(end)) => end <= span_end && start <= span_end,
        }
    }
}

impl fmt::Display for KeySpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, ", DisplayKey(&self.start))?;
        write!(f, "{})", DisplayBound(&self.end))
    }
}

/// Shows a key in messages: printable ASCII as is, other bytes escaped, and
/// long keys shortened so one error line stays readable.
pub(crate) struct DisplayKey<'a>(pub(crate) &'a [u8]);

/// Shows an upper bound in messages, where empty means +infinity.
pub(crate) struct DisplayBound<'a>(pub(crate) &'a [u8]);

impl fmt::Display for DisplayBound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("+inf")
        } else {
            DisplayKey(self.0).fmt(f)
        }
    }
}

/// How many bytes of a key an error message shows.
const DISPLAY_KEY_BYTES_MAX: usize = 64;

impl fmt::Display for DisplayKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let shown = &self.0[..self.0.len().min(DISPLAY_KEY_BYTES_MAX)];
        for &b in shown {
            write!(f, "{}", std::ascii::escape_default(b))?;
        }
        if shown.len() < self.0.len() {
            write!(f, "...\" ({} bytes)", self.0.len())
        } else {
            f.write_str("\"")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: &[u8], end: &[u8]) -> KeySpan {
        KeySpan::new(start.to_vec(), end.to_vec()).unwrap()
    }

    #[test]
    fn empty_end_means_unbounded() {
        let s = span(b"m", b"");
        assert!(s.contains(b"m"));
        assert!(s.contains(b"\xff\xff\xff"));
        assert!(!s.contains(b"l"));
        assert!(KeySpan::full().contains(b""));
    }

    #[test]
    fn end_is_exclusive() {
        let s = span(b"b", b"d");
        assert!(s.contains(b"b"));
        assert!(s.contains(b"c\xff"));
        assert!(!s.contains(b"d"));
    }

    #[test]
    fn inverted_or_empty_spans_are_refused() {
        assert_eq!(
            KeySpan::new(b"b".to_vec(), b"a".to_vec()),
            Err(InvalidArgument::EndBeforeStart)
        );
        assert_eq!(
            KeySpan::new(b"b".to_vec(), b"b".to_vec()),
            Err(InvalidArgument::EndBeforeStart)
        );
        let long = vec![b'k'; MAX_KEY_BYTES + 1];
        assert!(matches!(
            KeySpan::new(long, Vec::new()),
            Err(InvalidArgument::KeyTooLong { .. })
        ));
    }

    #[test]
    fn covers_checks_both_bounds() {
        let s = span(b"b", b"d");
        assert!(s.covers(b"b", Some(b"d")));
        assert!(s.covers(b"d", Some(b"d")));
        assert!(!s.covers(b"a", Some(b"c")));
        assert!(!s.covers(b"b", Some(b"e")));
        assert!(!s.covers(b"b", None));
        assert!(span(b"b", b"").covers(b"c", None));
    }

    #[test]
    fn display_escapes_and_shortens() {
        assert_eq!(span(b"a\x00", b"").to_string(), "[\"a\\x00\", +inf)");
        let long = DisplayKey(&[b'x'; 100]).to_string();
        assert!(long.ends_with("...\" (100 bytes)"), "{long}");
    }
}
