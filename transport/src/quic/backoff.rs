//! The delay before redialing a peer: doubling from `min` to `max`, each
//! delay stretched by a random 0 to 25 %, so that the peers of a restarted
//! node do not all dial it in the same instant (and keep not doing so).

use std::time::Duration;

use rand::Rng;

/// Jitter, as a fraction of the delay, at most.
const JITTER_MAX: f64 = 0.25;

#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// The next delay before jitter; `min <= next <= max`.
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// After a connection was established: the next loss waits `min`.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next dial, and the one after it doubled.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        base.mul_f64(1.0 + rand::thread_rng().gen_range(0.0..=JITTER_MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_with_bounded_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(700));
        let mut backoff = Backoff::new(min, max);
        let bases = [100, 200, 400, 700, 700];
        for base in bases {
            let base = Duration::from_millis(base);
            let delay = backoff.next_delay();
            assert!(
                delay >= base && delay <= base.mul_f64(1.0 + JITTER_MAX),
                "{delay:?} for {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min.mul_f64(1.0 + JITTER_MAX));
    }
}
