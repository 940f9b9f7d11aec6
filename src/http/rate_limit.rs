//! A token bucket per caller on `/api/*`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::RateLimit;
use crate::model::UserId;

/// Whose bucket a request draws from: the token's user, or the address of a caller without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    User(UserId),
    Address(IpAddr),
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub struct RateLimiter {
    settings: RateLimit,
    per_second: f64,
    burst: f64,
    buckets: DashMap<RateKey, Bucket>,
}

impl RateLimiter {
    pub fn new(settings: RateLimit) -> Self {
        Self {
            settings,
            per_second: settings.per_second,
            burst: f64::from(settings.burst),
            buckets: DashMap::new(),
        }
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: RateKey, now: Instant) -> Result<(), Duration> {
        if self.settings.is_off() {
            return Ok(());
        }
        let mut bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.settings.time_to_earn(1.0 - bucket.tokens))
        }
    }

    /// Drops buckets that have been idle long enough to be full again: they are the same as no
    /// bucket, so memory follows recent callers, not every caller ever seen.
    pub fn evict_idle(&self, now: Instant) {
        if self.settings.is_off() {
            return;
        }
        let refill = self.settings.time_to_earn(self.burst);
        self.buckets
            .retain(|_, bucket| now.saturating_duration_since(bucket.refilled) < refill);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit { per_second, burst })
    }

    fn user(name: &str) -> RateKey {
        RateKey::User(UserId::parse(name).unwrap())
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let limiter = limiter(5.0, 10);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limiter.check(user("a"), start).is_ok());
        }
        let wait = limiter.check(user("a"), start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        assert!(
            limiter.check(user("b"), start).is_ok(),
            "buckets are per caller"
        );
        let later = start + Duration::from_millis(200);
        assert!(limiter.check(user("a"), later).is_ok());
        assert!(limiter.check(user("a"), later).is_err());
    }

    #[test]
    fn idle_buckets_are_evicted_once_full_again() {
        let limiter = limiter(5.0, 10);
        let start = Instant::now();
        for i in 0..1000 {
            limiter.check(user(&format!("u{i}")), start).unwrap();
        }
        limiter
            .check(user("recent"), start + Duration::from_secs(2))
            .unwrap();
        limiter.evict_idle(start + Duration::from_millis(1999));
        assert_eq!(limiter.tracked(), 1001);
        limiter.evict_idle(start + Duration::from_secs(2));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let limiter = limiter(0.0, 1);
        let now = Instant::now();
        for _ in 0..100 {
            assert!(limiter.check(user("a"), now).is_ok());
        }
        assert_eq!(limiter.tracked(), 0);
    }
}
