use std::time::Duration;

/// Exponential backoff with "equal jitter": the delay before try `n + 1` is half of
/// `base · 2ⁿ⁻¹` (capped at `max`) plus a random share of the other half, so retries spread out
/// without ever collapsing to zero.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
        }
    }

    /// The delay after the `failures`-th consecutive failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with_jitter(failures, rand::random())
    }

    /// The most the delay after `failures` failures can be.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    fn delay_with_jitter(&self, failures: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(failures);
        ceiling / 2 + (ceiling / 2).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_base_up_to_max() {
        let b = Backoff::new(100 * MS, 30_000 * MS);
        let ceilings: Vec<_> = (1..=10).map(|n| b.ceiling(n)).collect();
        assert_eq!(ceilings[..4], [100 * MS, 200 * MS, 400 * MS, 800 * MS]);
        assert_eq!(b.ceiling(9), 25_600 * MS);
        assert_eq!(b.ceiling(10), 30_000 * MS);
        assert_eq!(b.ceiling(u32::MAX), 30_000 * MS);
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let b = Backoff::new(100 * MS, 30_000 * MS);
        assert_eq!(b.delay_with_jitter(3, 0.0), 200 * MS);
        assert_eq!(b.delay_with_jitter(3, 1.0), 400 * MS);
        for _ in 0..1000 {
            let d = b.delay(3);
            assert!((200 * MS..=400 * MS).contains(&d), "{d:?}");
        }
    }
}
