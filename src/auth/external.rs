//! Tokens signed by an external identity service: one public key (`JWT_PUBLIC_KEY`, RS256 or
//! ES256), or the keys it publishes as a JWKS document (`JWKS_URL`), chosen by the token's
//! `kid`, cached, and fetched again when they are old or a new `kid` appears.
//!
//! An identity service that is down or hangs costs token checks nothing: the cache is read
//! under a lock never held across an await, one fetch at a time runs in a task of its own, a
//! token whose `kid` is cached is verified at once with the keys at hand (however old, while a
//! fetch is pending or failing), and failed fetches back off.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::watch;

use super::AuthError;
use crate::error::Chain;

/// Keys are fetched again after this long.
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// An unknown `kid` fetches again, at most this often (so a flood of made-up ids cannot make
/// chatd hammer the identity service). Also the first wait after a failed fetch, doubling with
/// each failure in a row up to [`JWKS_MAX_AGE`].
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(2);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a fetch starts a token with an unknown `kid` may still wait for it, when the
/// identity service has been answering: long enough for a service that is up, far shorter than
/// [`JWKS_TIMEOUT`]. A fetch running longer counts as hanging, and nobody waits for it.
const JWKS_QUICK: Duration = Duration::from_secs(1);

type Keys = HashMap<String, (DecodingKey, Algorithm)>;

/// The asymmetric algorithms an external key may use.
const ALLOWED: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];

pub enum ExternalKeys {
    Single {
        key: DecodingKey,
        algorithm: Algorithm,
    },
    Jwks(Jwks),
}

/// Why `JWT_PUBLIC_KEY` gives no key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {0}")]
    Read(String, #[source] std::io::Error),
    #[error("not an RSA or P-256 public key in PEM")]
    NotAKey(#[source] jsonwebtoken::errors::Error),
}

impl ExternalKeys {
    /// A PEM public key: the text itself, or `@/path/to/key.pem`. RSA keys verify RS256, P-256
    /// keys ES256.
    pub fn from_pem(setting: &str) -> Result<Self, KeyError> {
        let pem = match setting.strip_prefix('@') {
            Some(path) => std::fs::read(path).map_err(|e| KeyError::Read(path.into(), e))?,
            None => setting.as_bytes().to_vec(),
        };
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::Single {
                key,
                algorithm: Algorithm::RS256,
            });
        }
        DecodingKey::from_ec_pem(&pem)
            .map(|key| Self::Single {
                key,
                algorithm: Algorithm::ES256,
            })
            .map_err(KeyError::NotAKey)
    }

    pub fn from_jwks_url(url: &str) -> Self {
        Self::Jwks(Jwks(Arc::new(Shared {
            url: url.to_string(),
            client: reqwest::Client::builder()
                .timeout(JWKS_TIMEOUT)
                .build()
                .expect("a TLS-free client builds"),
            cache: Mutex::new(Cache::default()),
            fetches_ended: watch::Sender::new(0),
        })))
    }

    /// The key and algorithm that must have signed a token with this `kid`.
    pub async fn key_for(&self, kid: Option<&str>) -> Result<(DecodingKey, Algorithm), AuthError> {
        match self {
            Self::Single { key, algorithm } => Ok((key.clone(), *algorithm)),
            Self::Jwks(jwks) => {
                let kid =
                    kid.ok_or_else(|| AuthError::Invalid("the header names no kid".into()))?;
                jwks.key(kid).await
            }
        }
    }
}

pub struct Jwks(Arc<Shared>);

struct Shared {
    url: String,
    client: reqwest::Client,
    /// Held only to read or update, never across an await.
    cache: Mutex<Cache>,
    /// Bumped each time a fetch ends, for the tokens waiting for it.
    fetches_ended: watch::Sender<u64>,
}

#[derive(Default)]
struct Cache {
    keys: Keys,
    /// When the keys were last fetched.
    fetched: Option<Instant>,
    /// No fetch starts before this: [`JWKS_MIN_REFETCH`] after a success, the backoff after a
    /// failure.
    next_fetch: Option<Instant>,
    /// Failed fetches since the last that worked.
    failures: u32,
    /// When the fetch in flight, if any, started.
    in_flight: Option<Instant>,
}

impl Cache {
    fn fresh(&self, now: Instant) -> bool {
        self.fetched
            .is_some_and(|at| now.saturating_duration_since(at) < JWKS_MAX_AGE)
    }

    fn may_fetch(&self, now: Instant) -> bool {
        self.in_flight.is_none() && self.next_fetch.is_none_or(|at| now >= at)
    }
}

/// How long to wait before fetching again after `failures` failed fetches in a row: from
/// [`JWKS_MIN_REFETCH`], doubling, up to [`JWKS_MAX_AGE`].
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    JWKS_MIN_REFETCH
        .saturating_mul(1 << doublings)
        .min(JWKS_MAX_AGE)
}

impl Jwks {
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        let unknown = || AuthError::Invalid(format!("no key has the kid {kid}"));
        let (until, mut ended) = {
            let mut cache = self.0.lock();
            let now = Instant::now();
            let found = cache.keys.get(kid).cloned();
            if (found.is_none() || !cache.fresh(now)) && cache.may_fetch(now) {
                cache.in_flight = Some(now);
                tokio::spawn(Flight::run(self.0.clone()));
            }
            // A cached kid is verified with the keys at hand, whatever the fetch does.
            if let Some(found) = found {
                return Ok(found);
            }
            // An unknown one waits only for a fetch that is young, from a service that has
            // been answering; during an outage it is refused at once.
            let Some(started) = cache.in_flight.filter(|_| cache.failures == 0) else {
                return Err(unknown());
            };
            let until = started + JWKS_QUICK;
            if until <= now {
                return Err(unknown());
            }
            // Subscribed under the lock: the end of this fetch is a change it will see.
            (until, self.0.fetches_ended.subscribe())
        };
        let _ = tokio::time::timeout_at(until.into(), ended.changed()).await;
        self.0.lock().keys.get(kid).cloned().ok_or_else(unknown)
    }
}

/// The one fetch in flight. However it ends (even dropped unfinished, as at shutdown), the
/// cache records the outcome and stops counting it in flight.
struct Flight {
    shared: Arc<Shared>,
    outcome: Option<anyhow::Result<Keys>>,
}

impl Flight {
    async fn run(shared: Arc<Shared>) {
        let mut flight = Flight {
            shared,
            outcome: None,
        };
        flight.outcome = Some(flight.shared.fetch().await);
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| Err(anyhow::anyhow!("the fetch was stopped before it ended")));
        self.shared.record(outcome);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cache> {
        // Nothing panics while holding it; a poisoned cache is still a consistent one.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, outcome: anyhow::Result<Keys>) {
        let now = Instant::now();
        let mut cache = self.lock();
        cache.in_flight = None;
        match outcome {
            Ok(keys) => {
                let failures = std::mem::take(&mut cache.failures);
                cache.keys = keys;
                cache.fetched = Some(now);
                cache.next_fetch = Some(now + JWKS_MIN_REFETCH);
                drop(cache);
                if failures > 0 {
                    tracing::info!(url = %self.url, failures, "the JWKS is fetched again");
                }
            }
            // Keys already known stay usable while the identity service is away.
            Err(e) => {
                cache.failures = cache.failures.saturating_add(1);
                let failures = cache.failures;
                let retry_in = backoff(failures);
                cache.next_fetch = Some(now + retry_in);
                let stale_keys = cache.keys.len();
                drop(cache);
                tracing::warn!(
                    url = %self.url,
                    error = %Chain(&*e),
                    failures,
                    retry_in = ?retry_in,
                    stale_keys,
                    "fetching the JWKS failed; the keys already known are used meanwhile"
                );
            }
        }
        self.fetches_ended
            .send_modify(|ended| *ended = ended.wrapping_add(1));
    }

    async fn fetch(&self) -> anyhow::Result<Keys> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)?
            .json()
            .await
            .context("not a JWKS document")?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            let Some(algorithm) = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::from_str(&a.to_string()).ok())
                .filter(|a| ALLOWED.contains(a))
            else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid.clone(), (key, algorithm));
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Ample for anything here to happen on a busy machine; a test that waits longer fails.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// A `JWKS_URL` client whose cache holds one key (`cached`) that was never fetched, so it
    /// counts as too old: the next check fetches again.
    async fn stale_jwks() -> (Jwks, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let ExternalKeys::Jwks(jwks) = ExternalKeys::from_jwks_url(&url) else {
            unreachable!("a JWKS client")
        };
        jwks.0.lock().keys.insert(
            "cached".into(),
            (DecodingKey::from_secret(b"any"), Algorithm::ES256),
        );
        (jwks, listener)
    }

    #[test]
    fn failed_fetches_back_off_from_the_minimum_to_the_maximum_age() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(u32::MAX), JWKS_MAX_AGE);
    }

    #[tokio::test]
    async fn old_keys_are_used_while_their_refresh_hangs_and_one_fetch_runs() {
        let (jwks, listener) = stale_jwks().await;
        assert!(jwks.key("cached").await.is_ok());
        let started = jwks.0.lock().in_flight;
        assert!(started.is_some(), "answered while the fetch is in flight");
        // The fetch reaches the identity service, which never answers.
        let (_hung, _) = tokio::time::timeout(DEADLINE, listener.accept())
            .await
            .expect("a fetch")
            .unwrap();
        for _ in 0..10 {
            assert!(jwks.key("cached").await.is_ok());
        }
        assert_eq!(jwks.0.lock().in_flight, started, "still the one fetch");
    }

    #[tokio::test]
    async fn a_failed_fetch_is_recorded_and_backs_off() {
        let (jwks, listener) = stale_jwks().await;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let mut ended = jwks.0.fetches_ended.subscribe();
        let before = Instant::now();
        assert!(jwks.key("cached").await.is_ok());
        tokio::time::timeout(DEADLINE, ended.changed())
            .await
            .expect("the fetch ends")
            .unwrap();
        let (in_flight, failures, next_fetch) = {
            let cache = jwks.0.lock();
            (cache.in_flight, cache.failures, cache.next_fetch.unwrap())
        };
        assert_eq!((in_flight, failures), (None, 1));
        assert!(next_fetch >= before + JWKS_MIN_REFETCH);
        // The known key still verifies; an unknown one is refused without waiting for a fetch,
        // and none starts before the backoff has passed.
        assert!(jwks.key("cached").await.is_ok());
        assert!(jwks.key("unknown").await.is_err());
        assert!(jwks.0.lock().in_flight.is_none() || Instant::now() >= next_fetch);
    }
}
