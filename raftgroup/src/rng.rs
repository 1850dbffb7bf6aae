//! A tiny deterministic generator for election-timeout jitter. Raft needs a
//! few random numbers per election; a seeded SplitMix64 keeps the core free
//! of dependencies and makes every run replay exactly from its seed.

#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

/// SplitMix64's output function: a bijective 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator for `seed`. The seed is hashed first: the raw
    /// generator steps its state by a constant, so two seeds a multiple of
    /// that constant apart (as `node * constant` seeds are) would yield the
    /// same sequence shifted — and two replicas drawing the same election
    /// timeouts a draw apart can split every vote forever.
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64 {
            state: mix(seed ^ 0xD1B5_4A32_D192_ED03),
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// A number in `[low, high)`; `high` must exceed `low`.
    pub(crate) fn in_range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low)
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

    #[test]
    fn seeds_a_step_apart_do_not_yield_shifted_sequences() {
        for k in 1..50u64 {
            let mut ahead = SplitMix64::new(k.wrapping_mul(STEP));
            let mut behind = SplitMix64::new((k + 1).wrapping_mul(STEP));
            ahead.next_u64();
            let shifted = (0..8).all(|_| ahead.next_u64() == behind.next_u64());
            assert!(!shifted, "seed {k}·step and {}·step", k + 1);
        }
    }

    #[test]
    fn the_same_seed_replays() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..16 {
            assert_eq!(a.in_range(10, 20), b.in_range(10, 20));
        }
    }
}
