use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

    /// Waits out the delay after `failures` failures; false if `stop` came first.
    pub async fn wait(&self, failures: u32, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.delay(failures)) => true,
            () = stop.cancelled() => false,
        }
    }

    /// Runs `attempt` until it succeeds, waiting out the backoff after each failure, which
    /// `failed` hears first (with how many in a row, for the log). `None` if `stop` came first:
    /// the one way every background task here retries.
    pub async fn retry<T, E, Fut>(
        &self,
        stop: &CancellationToken,
        mut attempt: impl FnMut() -> Fut,
        mut failed: impl FnMut(&E, u32),
    ) -> Option<T>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut failures = 0;
        loop {
            match attempt().await {
                Ok(done) => return Some(done),
                Err(e) => {
                    failures += 1;
                    failed(&e, failures);
                    if !self.wait(failures, stop).await {
                        return None;
                    }
                }
            }
        }
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

    #[tokio::test]
    async fn retry_tells_each_failure_and_returns_the_first_success() {
        let b = Backoff::new(MS, 2 * MS);
        let stop = CancellationToken::new();
        let mut attempts = 0;
        let mut told = Vec::new();
        let done = b
            .retry(
                &stop,
                || {
                    attempts += 1;
                    let n = attempts;
                    async move { if n < 4 { Err(n) } else { Ok("done") } }
                },
                |e: &u32, failures| told.push((*e, failures)),
            )
            .await;
        assert_eq!(done, Some("done"));
        assert_eq!(told, [(1, 1), (2, 2), (3, 3)]);
    }

    #[tokio::test]
    async fn retry_gives_up_when_stopped() {
        let b = Backoff::new(60_000 * MS, 60_000 * MS);
        let stop = CancellationToken::new();
        let result: Option<()> = b
            .retry(&stop, || async { Err(()) }, |_: &(), _| stop.cancel())
            .await;
        assert_eq!(result, None);
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
