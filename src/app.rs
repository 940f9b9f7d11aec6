//! Wires the pipeline together and runs it until shutdown. Tests start chatd through
//! [`start`] exactly as the binary does.

use std::fs::{File, TryLockError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, SecretSource, resolve_secret};
use crate::bus::{EventBus, LocalBus};
use crate::config::Config;
use crate::fanout;
use crate::http::{self, AppState, RateLimiter};
use crate::hub::Hub;
use crate::ingest::Ingest;
use crate::outbox::{Backoff, DeadLetters, Outbox, Relay, StoreHealth};
use crate::store::{self, MessageStore, StoreError};

/// The outbox, inside `DATA_DIR`.
pub const OUTBOX_FILE: &str = "outbox.db";
const LOCK_FILE: &str = "lock";
/// How often idle rate-limit buckets are dropped.
const LIMITER_SWEEP: Duration = Duration::from_secs(30);

/// A chatd that is serving.
pub struct RunningApp {
    addr: SocketAddr,
    shutdown: CancellationToken,
    stopped: JoinHandle<()>,
}

impl RunningApp {
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
pub async fn start(config: Config) -> anyhow::Result<RunningApp> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating DATA_DIR {}", config.data_dir.display()))?;
    let data_dir_lock = lock_data_dir(&config.data_dir)?;
    let (secret, source) = resolve_secret(&config).context("reading the JWT secret")?;
    if source == SecretSource::Development {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            "JWT_SECRET is not set: using a development secret kept in DATA_DIR. Set JWT_SECRET in production."
        );
    }
    let outbox = Arc::new(
        Outbox::open(&config.data_dir.join(OUTBOX_FILE), config.outbox_queue)
            .context("opening the outbox")?,
    );
    let store = store::open(&config.store, &config.data_dir)
        .await
        .context("opening the store")?;
    let bus: Arc<dyn EventBus> = Arc::new(LocalBus::new(config.bus_capacity));
    let hub = Arc::new(Hub::new());
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
        config.instance_id.clone(),
    );
    let migrated = apply_migrations(store.as_ref()).await?;
    let retry = Backoff::new(config.relay.retry_base, config.relay.retry_max);
    pipeline.spawn(migrate_then_relay(
        store.clone(),
        migrated,
        retry,
        relay,
        pipeline_stop.clone(),
    ));
    pipeline.spawn(sweep_rate_limiter(limiter.clone(), pipeline_stop.clone()));

    let listener = TcpListener::bind((config.host, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = store.backend(), pending = outbox.counts().pending, "listening");

    let shutdown = CancellationToken::new();
    let sockets = TaskTracker::new();
    let state = AppState {
        auth: Arc::new(Authenticator::new(&secret)),
        ingest: Arc::new(Ingest::new(outbox.clone(), bus)),
        outbox: outbox.clone(),
        dead_letters: Arc::new(DeadLetters::new(store.clone())),
        store,
        store_health,
        hub,
        limiter,
        admin_token: config.admin_token.as_deref().map(Arc::from),
        limits: config.limits,
        socket: config.socket,
        connections_require_auth: config.connections_require_auth,
        sockets: sockets.clone(),
        shutdown: shutdown.clone(),
    };
    let service = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(
        axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    let stopping = Stopping {
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
        shutdown,
        stopped,
    })
}

/// Everything graceful shutdown has to stop, in the order it stops them.
struct Stopping {
    shutdown: CancellationToken,
    timeout: Duration,
    server: JoinHandle<std::io::Result<()>>,
    sockets: TaskTracker,
    outbox: Arc<Outbox>,
    pipeline: TaskTracker,
    pipeline_stop: CancellationToken,
    /// Released only once everything else has stopped.
    data_dir_lock: File,
}

impl Stopping {
    /// Waits for shutdown, then: stop accepting and finish the requests in flight (every 202
    /// already given is in the outbox), close the sockets with 1001, let the relay drain the
    /// outbox until `SHUTDOWN_TIMEOUT`, and stop the pipeline. What is still pending stays in the
    /// outbox for the next start.
    async fn run(self) {
        self.shutdown.cancelled().await;
        let deadline = tokio::time::Instant::now() + self.timeout;
        tracing::info!("shutting down");

        let server = self.server;
        tokio::pin!(server);
        match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "the HTTP server failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "the HTTP server task failed"),
            Err(_) => {
                tracing::warn!("requests still open at the shutdown timeout were cut off");
                server.abort();
            }
        }

        self.sockets.close();
        if tokio::time::timeout_at(deadline, self.sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sockets did not finish closing before the shutdown timeout");
        }

        let draining = Instant::now();
        match tokio::time::timeout_at(deadline, self.outbox.drained()).await {
            Ok(()) => tracing::info!(took = ?draining.elapsed(), "outbox drained"),
            Err(_) => tracing::warn!(
                pending = self.outbox.counts().pending,
                "shutdown timeout: pending messages stay in the outbox for the next start"
            ),
        }
        self.pipeline_stop.cancel();
        self.pipeline.close();
        self.pipeline.wait().await;
        drop(self.data_dir_lock);
        tracing::info!("stopped");
    }
}

/// Applies the store's migrations before serving; `false` if the store is away, in which
/// case they are retried in the background while messages wait in the outbox. Any other
/// failure stops start-up.
async fn apply_migrations(store: &dyn MessageStore) -> anyhow::Result<bool> {
    match store.migrate().await {
        Ok(applied) => {
            log_applied(store, applied);
            Ok(true)
        }
        Err(StoreError::Unavailable(reason)) => {
            tracing::warn!(%reason, "the store is unavailable: serving anyway, messages wait in the outbox");
            Ok(false)
        }
        Err(e) => Err(e).context("applying the store's migrations"),
    }
}

/// Applies the migrations if start-up could not, retrying while the store is away, then
/// relays the outbox into the store.
async fn migrate_then_relay(
    store: Arc<dyn MessageStore>,
    migrated: bool,
    retry: Backoff,
    relay: Relay,
    stop: CancellationToken,
) {
    if !migrated {
        let mut failures = 0;
        loop {
            match store.migrate().await {
                Ok(applied) => {
                    log_applied(store.as_ref(), applied);
                    break;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "store migrations not applied yet, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(retry.delay(failures)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }
    relay.run(stop).await;
}

fn log_applied(store: &dyn MessageStore, applied: Vec<String>) {
    for name in applied {
        tracing::info!(migration = %name, store = store.backend(), "migration applied");
    }
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

async fn sweep_rate_limiter(limiter: Arc<RateLimiter>, stop: CancellationToken) {
    let mut every = tokio::time::interval(LIMITER_SWEEP);
    loop {
        tokio::select! {
            _ = every.tick() => limiter.evict_idle(std::time::Instant::now()),
            () = stop.cancelled() => break,
        }
    }
}
