//! The app's own background work: store migrations, the store probe, and periodic upkeep.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::error::Chain;
use crate::pipeline::relay::{Backoff, Relay};
use crate::store::{MessageStore, StoreError, StoreHealth};

/// Applies the store's migrations before serving; `false` if the store is away, in which case
/// they are retried in the background while messages wait in the outbox. Any other failure
/// stops start-up.
pub(super) async fn apply_migrations(
    store: &dyn MessageStore,
    health: &StoreHealth,
) -> anyhow::Result<bool> {
    match store.migrate().await {
        Ok(applied) => {
            migrated(store, health, applied);
            Ok(true)
        }
        Err(e @ StoreError::Unavailable(_)) => {
            health.unreachable();
            tracing::warn!(error = %Chain(&e), "the store is unavailable: serving anyway, messages wait in the outbox");
            Ok(false)
        }
        Err(e) => Err(e).context("applying the store's migrations"),
    }
}

/// Applies the migrations if start-up could not, retrying while the store is away, then
/// relays the outbox into the store.
pub(super) async fn migrate_then_relay(
    store: Arc<dyn MessageStore>,
    health: Arc<StoreHealth>,
    already_migrated: bool,
    retry: Backoff,
    relay: Relay,
    stop: CancellationToken,
) {
    if !already_migrated {
        let failed = |e: &StoreError, failures| {
            tracing::warn!(error = %Chain(e), failures, "store migrations not applied yet, retrying");
        };
        let Some(applied) = retry.retry(&stop, || store.migrate(), failed).await else {
            return;
        };
        migrated(store.as_ref(), &health, applied);
    }
    relay.run(stop).await;
}

fn migrated(store: &dyn MessageStore, health: &StoreHealth, applied: Vec<String>) {
    for name in applied {
        tracing::info!(migration = %name, store = store.backend(), "migration applied");
    }
    health.reachable();
    health.migrated();
}

/// Asks the store whether it is there, so `/ready` and `chat_store_up` are right even when no
/// message is being written.
pub(super) async fn probe_store(store: &dyn MessageStore, health: &StoreHealth) {
    match store.ping().await {
        Ok(()) => health.reachable(),
        Err(e) => {
            if health.is_up() {
                tracing::warn!(error = %Chain(&e), "the store stopped answering");
            }
            health.unreachable();
        }
    }
}

/// Runs `tick` every `period` until `stop`.
pub(super) async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => tick().await,
            () = stop.cancelled() => break,
        }
    }
}
