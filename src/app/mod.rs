//! Starts chatd and runs it until shutdown: checks, builds the [`pipeline`], binds, serves and
//! wires the shutdown. Tests start chatd through [`start`] exactly as the binary does.

mod pipeline;
mod preflight;
mod shutdown;
mod upkeep;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Verifier};
use crate::config::Config;
use crate::error::Chain;
use crate::http::{self, Admission, AllowedOrigins, AppState, RateLimiter, Shared};
use crate::telemetry::Metrics;
use pipeline::Pipeline;

pub use pipeline::OUTBOX_FILE;
pub use shutdown::shutdown_signal;

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
/// WebSockets on `HOST:PORT`. What can refuse a start without waiting on anything (the
/// limits, `DATA_DIR`, the keys, the TLS files, the ports) is checked first, so that a port in
/// use is found before migrations run, and `listening` is only logged once all of it held.
pub async fn start(mut config: Config) -> anyhow::Result<RunningApp> {
    let caps = preflight::fit_to_file_descriptors(&config)?;
    config.socket.limits.total = caps.sockets;
    let data_dir_lock = preflight::claim_data_dir(&config.data_dir)?;
    let (verifier, dev_tokens) = preflight::verifier(&config)?;
    let tls = preflight::tls(&config)?;
    let listener = bind(&config, config.port, "PORT").await?;
    let metrics_listener = match config.metrics_port {
        Some(port) => Some(bind(&config, port, "METRICS_PORT").await?),
        None => None,
    };
    let metrics = Metrics::install();
    // The caps sockets and connections are held against (a USE panel's limits).
    metrics::gauge!(crate::telemetry::WS_CONNECTIONS_MAX).set(caps.sockets as f64);
    metrics::gauge!(crate::telemetry::HTTP_CONNECTIONS_MAX).set(caps.connections as f64);
    metrics::gauge!(
        crate::telemetry::INSTANCE_INFO,
        "instance_id" => config.instance_id.clone(),
        "mode" => if config.cluster.is_some() { "cluster" } else { "single" },
    )
    .set(1.0);
    if config.cluster.is_none() {
        metrics::gauge!(crate::telemetry::BUS_CONNECTED).set(1.0);
    }
    let pipeline = Pipeline::start(&config).await?;
    let limiter = Arc::new(RateLimiter::new(config.rate_limit));
    upkeep::spawn(&pipeline, limiter.clone(), metrics.clone());

    let addr = listener.local_addr()?;
    tracing::info!(%addr, instance = %config.instance_id, store = pipeline.store.backend(), pending = pipeline.outbox.counts().pending, "listening");
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    if let Some(addr) = metrics_addr {
        tracing::info!(%addr, "serving /metrics");
    }

    let shutdown = CancellationToken::new();
    let sockets = TaskTracker::new();
    let auth = Auth {
        verifier,
        dev_tokens,
    };
    let state = http_state(
        &config, &pipeline, auth, metrics, limiter, &sockets, &shutdown,
    );
    if let Some(listener) = metrics_listener {
        let scrapes = axum::serve(listener, http::internal_router(state.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        pipeline.tasks.spawn(async move {
            if let Err(e) = scrapes.await {
                tracing::error!(error = %Chain(&e), "the metrics listener failed");
            }
        });
    }
    let server = tokio::spawn(http::serve_connections(
        listener,
        http::router(state),
        tls,
        config.http.header_timeout,
        Admission::new(caps.connections, config.http.max_pending_per_client),
        shutdown.clone(),
    ));

    let stopping = shutdown::Stopping {
        shutdown: shutdown.clone(),
        timeout: config.shutdown_timeout,
        server,
        sockets,
        outbox: pipeline.outbox,
        pipeline: pipeline.tasks,
        pipeline_stop: pipeline.stop,
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

/// Binds `HOST:port`; `setting` names where the port came from when that fails.
async fn bind(config: &Config, port: u16, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((config.host, port))
        .await
        .with_context(|| format!("binding {setting} {}:{port}", config.host))
}

/// What checks tokens, and what signs development sign-ins (if they are offered).
struct Auth {
    verifier: Verifier,
    dev_tokens: Option<Authenticator>,
}

/// What the handlers share.
fn http_state(
    config: &Config,
    pipeline: &Pipeline,
    auth: Auth,
    metrics: Metrics,
    limiter: Arc<RateLimiter>,
    sockets: &TaskTracker,
    shutdown: &CancellationToken,
) -> AppState {
    AppState::new(Shared {
        web_page: config
            .web_ui
            .then(|| crate::web::index_page(auth.dev_tokens.is_some())),
        auth: Arc::new(auth.verifier),
        dev_tokens: auth.dev_tokens.map(Arc::new),
        acceptor: pipeline.acceptor.clone(),
        outbox: pipeline.outbox.clone(),
        dead_letters: pipeline.dead_letters.clone(),
        metrics,
        metrics_on_main: config.metrics_port.is_none(),
        store: pipeline.store.clone(),
        store_health: pipeline.store_health.clone(),
        integrity: pipeline.integrity.clone(),
        hub: pipeline.hub.clone(),
        census: pipeline.census.clone(),
        instance: Arc::from(config.instance_id.as_str()),
        cluster: pipeline.cluster.clone(),
        bus: pipeline.bus.clone(),
        stream: pipeline.stream.clone(),
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
    })
}
