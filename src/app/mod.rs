//! Wires the pipeline together and runs it until shutdown. Tests start chatd through
//! [`start`] exactly as the binary does.

mod background;
mod shutdown;

use std::fs::{File, TryLockError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{
    Authenticator, ClaimChecks, ExternalKeys, SecretSource, Verifier, resolve_secret,
};
use crate::config::Config;
use crate::error::Chain;
use crate::fds::{self, Limit};
use crate::http::{self, Admission, AllowedOrigins, AppState, RateLimiter};
use crate::hub::{Hub, QueueBounds};
use crate::integrity::Integrity;
use crate::pipeline::accept::Acceptor;
use crate::pipeline::bus::{EventBus, LocalBus};
use crate::pipeline::fanout;
use crate::pipeline::outbox::Outbox;
use crate::pipeline::relay::{Backoff, Relay};
use crate::store::DeadLetters;
use crate::store::{self, StoreHealth};
use crate::telemetry::Metrics;

pub use shutdown::shutdown_signal;

/// The outbox, inside `DATA_DIR`.
pub const OUTBOX_FILE: &str = "outbox.db";
const LOCK_FILE: &str = "lock";
/// How often idle rate-limit buckets are dropped.
const LIMITER_SWEEP: Duration = Duration::from_secs(30);
/// How often recorded histogram samples are folded into buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// How often the store is asked whether it is there.
const STORE_PROBE: Duration = Duration::from_secs(5);

/// A chatd that is serving.
pub struct RunningApp {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    stopped: JoinHandle<()>,
}

impl RunningApp {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when `METRICS_PORT` moved it off the main port.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Shuts down gracefully and returns once everything has stopped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        // The supervisor task only ends by finishing its sequence.
        let _ = self.stopped.await;
    }
}

/// Opens the outbox and the store, starts the relay and the fan-out, and serves HTTP and
/// WebSockets on `HOST:PORT`.
pub async fn start(mut config: Config) -> anyhow::Result<RunningApp> {
    let caps = fit_to_file_descriptors(&config)?;
    config.socket.limits.total = caps.sockets;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
    let data_dir_lock = lock_data_dir(&config.data_dir)?;
    let verifier = verifier(&config)?;
    let bus: Arc<dyn EventBus> = Arc::new(LocalBus::new(config.bus_capacity));
    // Corruption the outbox or the embedded store meets while running: sticky until restart.
    let integrity = Arc::new(Integrity::default());
    let outbox = Arc::new(
        Outbox::open(
            &config.data_dir.join(OUTBOX_FILE),
            config.outbox_queue,
            &config.instance_id,
            config.idempotency_window,
            Box::new({
                let bus = bus.clone();
                move |event| bus.publish(event)
            }),
            integrity.clone(),
        )
        .context("opening the outbox")?,
    );
    let metrics = Metrics::install();
    let store = store::open(&config.store, &config.data_dir, integrity.clone())
        .await
        .context("opening the store")?;
    let hub = Arc::new(Hub::new(
        config.socket.limits,
        QueueBounds {
            max_bytes: config.socket.queue_bytes,
            stall_timeout: config.socket.stall_timeout,
        },
    ));
    let store_health = Arc::new(StoreHealth::default());
    let limiter = Arc::new(RateLimiter::new(config.rate_limit));

    // The pipeline's consumers stop only after the outbox has drained.
    let pipeline_stop = CancellationToken::new();
    let pipeline = TaskTracker::new();
    pipeline.spawn(fanout::run(
        bus.subscribe(),
        hub.clone(),
        pipeline_stop.clone(),
    ));
    let relay = Relay::new(
        outbox.clone(),
        store.clone(),
        store_health.clone(),
        config.relay,
    );
    let migrated = background::apply_migrations(store.as_ref(), &store_health).await?;
    let retry = Backoff::new(config.relay.retry_base, config.relay.retry_max);
    pipeline.spawn(background::migrate_then_relay(
        store.clone(),
        store_health.clone(),
        migrated,
        retry,
        relay,
        pipeline_stop.clone(),
    ));
    pipeline.spawn(background::every(LIMITER_SWEEP, pipeline_stop.clone(), {
        let limiter = limiter.clone();
        move || {
            limiter.evict_idle(std::time::Instant::now());
            std::future::ready(())
        }
    }));
    pipeline.spawn(background::every(METRICS_UPKEEP, pipeline_stop.clone(), {
        let metrics = metrics.clone();
        move || {
            metrics.upkeep();
            std::future::ready(())
        }
    }));
    pipeline.spawn(background::every(STORE_PROBE, pipeline_stop.clone(), {
        let (store, health) = (store.clone(), store_health.clone());
        move || {
            let (store, health) = (store.clone(), health.clone());
            async move { background::probe_store(store.as_ref(), &health).await }
        }
    }));

    let listener = TcpListener::bind((config.host, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = store.backend(), pending = outbox.counts().pending, "listening");
    let metrics_listener = match config.metrics_port {
        Some(port) => {
            let listener = TcpListener::bind((config.host, port))
                .await
                .with_context(|| format!("binding METRICS_PORT {}:{port}", config.host))?;
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
            Some(listener)
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    let sockets = TaskTracker::new();
    let state = AppState {
        auth: Arc::new(verifier),
        acceptor: Arc::new(Acceptor::new(outbox.clone())),
        outbox: outbox.clone(),
        dead_letters: Arc::new(DeadLetters::new(store.clone())),
        metrics,
        metrics_on_main: metrics_listener.is_none(),
        store,
        store_health,
        integrity,
        hub,
        limiter,
        admin_token: config.admin_token.as_deref().map(Arc::from),
        limits: config.limits,
        socket: config.socket,
        connections_require_auth: config.connections_require_auth,
        recovery_limit: config.recovery_limit,
        recoveries: Arc::new(tokio::sync::Semaphore::new(config.recovery_concurrency)),
        request_timeout: config.http.request_timeout,
        origins: Arc::new(AllowedOrigins::new(config.http.allowed_origins.clone())),
        sockets: sockets.clone(),
        shutdown: shutdown.clone(),
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    if let Some(listener) = metrics_listener {
        let scrapes = axum::serve(listener, http::metrics_router(state.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        pipeline.spawn(async move {
            if let Err(e) = scrapes.await {
                tracing::error!(error = %Chain(&e), "the metrics listener failed");
            }
        });
    }
    let tls = match &config.http.tls {
        Some((cert, key)) => Some(http::tls_acceptor(cert, key)?),
        None => None,
    };
    let admission = Admission::new(caps.connections, config.http.max_pending_per_client);
    let server = tokio::spawn(http::serve(
        listener,
        http::router(state),
        tls,
        config.http.header_timeout,
        admission,
        shutdown.clone(),
    ));

    let stopping = shutdown::Stopping {
        shutdown: shutdown.clone(),
        timeout: config.shutdown_timeout,
        server,
        sockets,
        outbox,
        pipeline,
        pipeline_stop,
        data_dir_lock,
    };
    let stopped = tokio::spawn(stopping.run());
    Ok(RunningApp {
        addr,
        metrics_addr,
        shutdown,
        stopped,
    })
}

/// Raises `ulimit -n` as far as it goes and fits the connection caps under it. A cap that
/// does not fit is a [`crate::config::ConfigError`]: nothing has been opened yet.
fn fit_to_file_descriptors(config: &Config) -> anyhow::Result<fds::Caps> {
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

/// The keys tokens are checked against: an identity service's, or the shared HS256 secret.
fn verifier(config: &Config) -> anyhow::Result<Verifier> {
    let identity = &config.identity;
    let checks = ClaimChecks {
        issuer: identity.issuer.clone(),
        audience: identity.audience.clone(),
    };
    if let Some(pem) = &identity.public_key {
        let keys = ExternalKeys::from_pem(pem).context("JWT_PUBLIC_KEY")?;
        return Ok(Verifier::External { keys, checks });
    }
    if let Some(url) = &identity.jwks_url {
        let keys = ExternalKeys::from_jwks_url(url);
        return Ok(Verifier::External { keys, checks });
    }
    let (secret, source) = resolve_secret(config).context("reading the JWT secret")?;
    if source == SecretSource::Development {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "JWT_SECRET is not set: using a development secret kept in DATA_DIR. Set JWT_SECRET in production."
        );
    }
    Ok(Verifier::Shared(Authenticator::with_checks(
        &secret, &checks,
    )))
}

/// Two chatd processes on one `DATA_DIR` would relay the same outbox: the second is refused.
/// The operating system releases the lock however the holder ends, `kill -9` included.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
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
