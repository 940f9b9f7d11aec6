//! Graceful shutdown, in order.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Chain;
use crate::pipeline::outbox::Outbox;

/// Everything graceful shutdown has to stop, in the order it stops them.
pub(super) struct Stopping {
    pub shutdown: CancellationToken,
    pub timeout: Duration,
    pub server: JoinHandle<()>,
    pub sockets: TaskTracker,
    pub outbox: Arc<Outbox>,
    pub pipeline: TaskTracker,
    pub pipeline_stop: CancellationToken,
    /// Released only once everything else has stopped.
    pub data_dir_lock: File,
}

impl Stopping {
    /// Waits for shutdown, then: stop accepting and finish the requests in flight (every 202
    /// already given is in the outbox), close the sockets with 1001, let the relay drain the
    /// outbox until `SHUTDOWN_TIMEOUT`, and stop the pipeline. What is still pending stays in the
    /// outbox for the next start.
    pub async fn run(self) {
        self.shutdown.cancelled().await;
        let deadline = tokio::time::Instant::now() + self.timeout;
        tracing::info!("shutting down");

        let server = self.server;
        tokio::pin!(server);
        match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %Chain(&e), "the HTTP server task failed"),
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

/// Resolves at SIGINT (Ctrl-C) or SIGTERM: what starts a graceful shutdown.
pub async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
