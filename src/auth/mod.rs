//! Who is calling: JWTs whose `id` claim is the user id, signed HS256 with the shared secret or,
//! with `JWT_PUBLIC_KEY` or `JWKS_URL`, RS256/ES256 by an external identity service. The
//! algorithm is pinned to the configured one either way.

mod external;
mod secret;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::model::UserId;

pub use external::ExternalKeys;
pub use secret::{SecretSource, resolve_secret, short_secret_warning};

/// Clock skew allowed on the time claims (`exp`, `nbf`, `iat`): the contract's ceiling.
const LEEWAY_SECS: u64 = 60;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Optional checks on `iss` and `aud` (`JWT_ISSUER`, `JWT_AUDIENCE`).
#[derive(Debug, Clone, Default)]
pub struct ClaimChecks {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// What the server verifies incoming tokens with.
pub enum Verifier {
    Shared(Authenticator),
    External {
        keys: ExternalKeys,
        checks: ClaimChecks,
    },
}

impl Verifier {
    pub async fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        match self {
            Self::Shared(authenticator) => authenticator.verify(token),
            Self::External { keys, checks } => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|e| AuthError::Invalid(describe(e.kind())))?;
                let (key, algorithm) = keys.key_for(header.kid.as_deref()).await?;
                verify_with(token, &key, &validation(algorithm, checks))
            }
        }
    }
}

fn validation(algorithm: Algorithm, checks: &ClaimChecks) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECS;
    // A token that is not valid yet is refused like an expired one (checked when present).
    validation.validate_nbf = true;
    // A configured issuer or audience must be present, not merely right when present.
    let mut required = vec!["exp"];
    if let Some(issuer) = &checks.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &checks.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without a configured audience a token's `aud` is not checked.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn verify_with(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<UserId, AuthError> {
    let data = jsonwebtoken::decode::<Claims>(token, key, validation)
        .map_err(|e| AuthError::Invalid(describe(e.kind())))?;
    // jsonwebtoken leaves `iat` alone. A token issued in the future comes from a clock that is
    // wrong (or a forger who hopes the token lives longer), so it gets the same leeway as `exp`.
    if data
        .claims
        .iat
        .is_some_and(|iat| iat > now().saturating_add(LEEWAY_SECS))
    {
        return Err(AuthError::Invalid(
            "issued in the future (iat): the issuer's clock is ahead".into(),
        ));
    }
    UserId::parse(data.claims.id).map_err(|e| AuthError::Invalid(format!("claim id: {e}")))
}

/// Verifies and issues tokens for one secret, with the algorithm pinned to HS256.
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Self {
        Self::with_checks(secret, &ClaimChecks::default())
    }

    pub fn with_checks(secret: &[u8], checks: &ClaimChecks) -> Self {
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256, checks),
        }
    }

    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        verify_with(token, &self.decoding, &self.validation)
    }

    pub fn issue(&self, user: &UserId, ttl: Duration) -> String {
        let now = now();
        let claims = Claims {
            id: user.to_string(),
            iat: Some(now),
            exp: now.saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Why a token was refused, in words a client developer can act on.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidSignature => "the signature does not match".into(),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => "the algorithm is not the one configured".into(),
        ErrorKind::InvalidIssuer => "the issuer is not the one expected".into(),
        ErrorKind::InvalidAudience => "the audience is not the one expected".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the {claim} claim is missing"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the {claim} claim is malformed"),
        ErrorKind::Json(e) => format!("malformed claims: {e}"),
        _ => "not a well-formed JWT".into(),
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(claims: &serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[test]
    fn issued_tokens_verify() {
        let auth = Authenticator::new(b"secret");
        let alice = UserId::parse("alice").unwrap();
        let token = auth.issue(&alice, Duration::from_secs(60));
        assert_eq!(auth.verify(&token).unwrap(), alice);
        assert!(Authenticator::new(b"other").verify(&token).is_err());
    }

    #[test]
    fn original_tokens_verify() {
        let claims = serde_json::json!({"id": "alice", "iat": now(), "exp": now() + 60});
        let token = encode(&claims, Algorithm::HS256, b"secret");
        assert_eq!(
            Authenticator::new(b"secret")
                .verify(&token)
                .unwrap()
                .as_str(),
            "alice"
        );
    }

    #[test]
    fn refuses_what_the_contract_refuses() {
        let auth = Authenticator::new(b"secret");
        let refuse = |claims: serde_json::Value, alg| {
            assert!(
                auth.verify(&encode(&claims, alg, b"secret")).is_err(),
                "{claims}"
            );
        };
        refuse(serde_json::json!({"id": "alice"}), Algorithm::HS256);
        refuse(serde_json::json!({"exp": now() + 60}), Algorithm::HS256);
        refuse(
            serde_json::json!({"id": "", "exp": now() + 60}),
            Algorithm::HS256,
        );
        refuse(
            serde_json::json!({"id": "a,b", "exp": now() + 60}),
            Algorithm::HS256,
        );
        refuse(
            serde_json::json!({"id": "alice", "exp": now() - 61}),
            Algorithm::HS256,
        );
        refuse(
            serde_json::json!({"id": "alice", "exp": now() + 60}),
            Algorithm::HS512,
        );
        // Within the 60 s leeway an expired token still passes.
        let token = encode(
            &serde_json::json!({"id": "a", "exp": now() - 30}),
            Algorithm::HS256,
            b"secret",
        );
        assert!(auth.verify(&token).is_ok());
    }

    #[test]
    fn time_claims_in_the_future_are_refused_beyond_the_leeway() {
        let auth = Authenticator::new(b"secret");
        let verify = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({"id": "alice", "exp": now() + 600});
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            auth.verify(&encode(&claims, Algorithm::HS256, b"secret"))
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            verify(serde_json::json!({"nbf": now() + 120})).unwrap_err(),
            "invalid token: not valid yet (nbf is in the future)"
        );
        assert_eq!(
            verify(serde_json::json!({"iat": now() + 120})).unwrap_err(),
            "invalid token: issued in the future (iat): the issuer's clock is ahead"
        );
        // Within the leeway, and in the past, both pass.
        assert!(verify(serde_json::json!({"nbf": now() + 30, "iat": now() + 30})).is_ok());
        assert!(verify(serde_json::json!({"nbf": now() - 600, "iat": now() - 600})).is_ok());
        assert!(verify(serde_json::json!({"nbf": "soon"})).is_err());
    }

    #[test]
    fn refuses_alg_none() {
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = base64_url(format!(r#"{{"id":"alice","exp":{}}}"#, now() + 60).as_bytes());
        let auth = Authenticator::new(b"secret");
        assert!(auth.verify(&format!("{header}.{payload}.")).is_err());
        assert!(auth.verify("not a token").is_err());
    }

    fn base64_url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn refusals_say_why() {
        let auth = Authenticator::new(b"secret");
        let why = |claims: serde_json::Value, alg, secret: &[u8]| {
            auth.verify(&encode(&claims, alg, secret))
                .unwrap_err()
                .to_string()
        };
        let exp = now() + 60;
        assert_eq!(
            why(
                serde_json::json!({"id": "a", "exp": now() - 120}),
                Algorithm::HS256,
                b"secret"
            ),
            "invalid token: expired"
        );
        assert_eq!(
            why(
                serde_json::json!({"id": "a", "exp": exp}),
                Algorithm::HS256,
                b"other"
            ),
            "invalid token: the signature does not match"
        );
        assert_eq!(
            why(
                serde_json::json!({"id": "a", "exp": exp}),
                Algorithm::HS384,
                b"secret"
            ),
            "invalid token: the algorithm is not the one configured"
        );
        assert!(
            why(serde_json::json!({"id": "a"}), Algorithm::HS256, b"secret")
                .contains("missing field `exp`")
        );
        assert!(
            why(serde_json::json!({"exp": exp}), Algorithm::HS256, b"secret")
                .contains("missing field `id`")
        );
        assert_eq!(
            auth.verify("x.y.z").unwrap_err().to_string(),
            "invalid token: not a well-formed JWT"
        );
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    proptest::proptest! {
        #[test]
        fn no_string_panics_the_verifier(token in "\\PC{0,300}") {
            proptest::prop_assert!(Authenticator::new(b"secret").verify(&token).is_err());
        }

        #[test]
        fn a_tampered_token_never_names_anyone_else(position in 0usize..400, byte in 0u8..128) {
            let auth = Authenticator::new(b"secret");
            let token = auth.issue(&UserId::parse("alice").unwrap(), Duration::from_secs(60));
            let position = position % token.len();
            let mut bytes = token.into_bytes();
            proptest::prop_assume!(bytes[position] != byte);
            bytes[position] = byte;
            if let Ok(tampered) = String::from_utf8(bytes) {
                // Only the base64 padding-free tail of the signature can change without changing the
                // decoded bytes; anything that still verifies must still name alice.
                if let Ok(user) = auth.verify(&tampered) {
                    proptest::prop_assert_eq!(user.as_str(), "alice");
                }
            }
        }
    }
}
