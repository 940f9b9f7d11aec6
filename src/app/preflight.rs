//! What start-up checks and claims before the pipeline opens: file descriptors, the data
//! directory and the keys tokens are checked against.

use std::fs::{File, TryLockError};
use std::path::Path;

use anyhow::Context;

use crate::auth::{
    Authenticator, ClaimChecks, ExternalKeys, SecretSource, Verifier, resolve_secret,
    short_secret_warning,
};
use crate::config::Config;
use crate::fds::{self, Limit};
use crate::http::tls_acceptor;
use tokio_rustls::TlsAcceptor;

const LOCK_FILE: &str = "lock";

/// Raises `ulimit -n` as far as it goes and fits the connection caps under it. A cap that
/// does not fit is a [`crate::config::ConfigError`]: nothing has been opened yet.
pub(super) fn fit_to_file_descriptors(config: &Config) -> anyhow::Result<fds::Caps> {
    let limit = Limit::raise().context("reading ulimit -n")?;
    let caps = fds::fit(config, limit)?;
    if let Some(wanted) = caps.lowered_from {
        tracing::warn!(
            max_connections = caps.sockets,
            default = wanted,
            ulimit_n = limit.soft,
            hard_limit = limit.hard,
            "MAX_CONNECTIONS lowered to what ulimit -n allows; raise the hard limit for more"
        );
    }
    Ok(caps)
}

/// The keys tokens are checked against: an identity service's, or the shared HS256 secret;
/// and, when that secret is the development one chatd generated (and no issuer or audience is
/// required, which its tokens would lack), what signs the page's development sign-ins.
pub(super) fn verifier(config: &Config) -> anyhow::Result<(Verifier, Option<Authenticator>)> {
    let identity = &config.identity;
    let checks = ClaimChecks {
        issuer: identity.issuer.clone(),
        audience: identity.audience.clone(),
    };
    if let Some(pem) = &identity.public_key {
        let keys = ExternalKeys::from_pem(pem).context("JWT_PUBLIC_KEY")?;
        return Ok((Verifier::External { keys, checks }, None));
    }
    if let Some(url) = &identity.jwks_url {
        let keys = ExternalKeys::from_jwks_url(url);
        return Ok((Verifier::External { keys, checks }, None));
    }
    let (secret, source) = resolve_secret(config).context("reading the JWT secret")?;
    if let Some(warning) = short_secret_warning(&secret, source) {
        tracing::warn!("{warning}");
    }
    if source == SecretSource::Development {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "JWT_SECRET is not set: using a development secret kept in DATA_DIR. Set JWT_SECRET in production."
        );
    }
    let plain = checks.issuer.is_none() && checks.audience.is_none();
    let dev_tokens =
        (source == SecretSource::Development && plain).then(|| Authenticator::new(&secret));
    Ok((
        Verifier::Shared(Authenticator::with_checks(&secret, &checks)),
        dev_tokens,
    ))
}

/// Creates `DATA_DIR` if it is missing and locks it. Two chatd processes on one `DATA_DIR`
/// would relay the same outbox: the second is refused. The operating system releases the lock
/// however the holder ends, `kill -9` included.
pub(super) fn claim_data_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating DATA_DIR {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => {
            anyhow::bail!("another chatd is already using DATA_DIR {}", dir.display())
        }
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The TLS acceptor when `TLS_CERT`/`TLS_KEY` are set: a missing or unreadable file stops
/// start-up before anything is bound.
pub(super) fn tls(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    let Some((cert, key)) = &config.http.tls else {
        return Ok(None);
    };
    let acceptor = tls_acceptor(cert, key)?;
    Ok(Some(acceptor))
}
