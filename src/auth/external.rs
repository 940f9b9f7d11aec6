//! Tokens signed by an external identity service: one public key (`JWT_PUBLIC_KEY`, RS256 or
//! ES256), or the keys it publishes as a JWKS document (`JWKS_URL`), chosen by the token's
//! `kid`, cached, and fetched again when they are old or a new `kid` appears.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::RwLock;

use super::AuthError;
use crate::error::Chain;

/// Keys are fetched again after this long.
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// An unknown `kid` fetches again, at most this often (so a flood of made-up ids cannot make
/// chatd hammer the identity service).
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(2);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

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
        Self::Jwks(Jwks {
            url: url.to_string(),
            client: reqwest::Client::builder()
                .timeout(JWKS_TIMEOUT)
                .build()
                .expect("a TLS-free client builds"),
            cache: RwLock::new(Cache::default()),
        })
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

pub struct Jwks {
    url: String,
    client: reqwest::Client,
    cache: RwLock<Cache>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
}

impl Cache {
    fn fresh(&self) -> bool {
        self.fetched.is_some_and(|at| at.elapsed() < JWKS_MAX_AGE)
    }

    fn may_refetch(&self) -> bool {
        self.fetched
            .is_none_or(|at| at.elapsed() >= JWKS_MIN_REFETCH)
    }
}

impl Jwks {
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        {
            let cache = self.cache.read().await;
            if cache.fresh()
                && let Some(found) = cache.keys.get(kid)
            {
                return Ok(found.clone());
            }
        }
        let mut cache = self.cache.write().await;
        // Another caller may have fetched while this one waited for the lock.
        let known = cache.keys.contains_key(kid);
        if (!cache.fresh() || !known) && cache.may_refetch() {
            match self.fetch().await {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                }
                // Keys already known stay usable while the identity service is away.
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %Chain(&*e), "fetching the JWKS failed");
                }
            }
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError::Invalid(format!("no key has the kid {kid}")))
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, (DecodingKey, Algorithm)>> {
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
