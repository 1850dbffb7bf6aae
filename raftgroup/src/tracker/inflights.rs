//! Flow control toward one follower: the append messages sent and not yet
//! acknowledged, bounded by count and by bytes.

use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    /// (last index of the message, bytes of its entries), oldest first.
    sent: VecDeque<(u64, u64)>,
    bytes: u64,
    max_msgs: usize,
    /// 0 means no byte limit.
    max_bytes: u64,
}

impl Inflights {
    pub(crate) fn new(max_msgs: usize, max_bytes: u64) -> Self {
        Inflights {
            sent: VecDeque::new(),
            bytes: 0,
            max_msgs,
            max_bytes,
        }
    }

    pub(crate) fn add(&mut self, last_index: u64, bytes: u64) {
        self.sent.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is at or below `index`.
    pub(crate) fn free_to(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.sent.front() {
            if last > index {
                break;
            }
            self.bytes -= bytes;
            self.sent.pop_front();
        }
    }

    /// Frees the oldest message (used when the follower is known alive but
    /// the window stays full, so that lost messages cannot stall it).
    pub(crate) fn free_first(&mut self) {
        if let Some((_, bytes)) = self.sent.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.sent.len() >= self.max_msgs || (self.max_bytes > 0 && self.bytes >= self.max_bytes)
    }

    /// Releases the window's memory (it must be empty or resettable).
    pub(crate) fn shrink(&mut self) {
        self.sent = VecDeque::new();
        self.bytes = 0;
    }

    pub(crate) fn reset(&mut self) {
        self.sent.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.sent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_by_count_and_by_bytes() {
        let mut by_count = Inflights::new(2, 0);
        by_count.add(1, 100);
        assert!(!by_count.is_full());
        by_count.add(2, 100);
        assert!(by_count.is_full());
        by_count.free_to(1);
        assert!(!by_count.is_full());

        let mut by_bytes = Inflights::new(100, 150);
        by_bytes.add(1, 100);
        assert!(!by_bytes.is_full());
        by_bytes.add(2, 100);
        assert!(by_bytes.is_full());
        by_bytes.free_to(2);
        assert_eq!(by_bytes.count(), 0);
        assert!(!by_bytes.is_full());
    }
}
