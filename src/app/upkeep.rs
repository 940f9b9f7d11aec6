//! Periodic upkeep beside the pipeline: idle rate-limit buckets dropped, histogram samples
//! folded, the store asked whether it is there.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::pipeline::Pipeline;

use crate::error::Chain;
use crate::http::RateLimiter;
use crate::store::{MessageStore, StoreHealth};
use crate::telemetry::Metrics;

/// How often idle rate-limit buckets are dropped.
const LIMITER_SWEEP: Duration = Duration::from_secs(30);
/// How often recorded histogram samples are folded into buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// How often the store is asked whether it is there.
const STORE_PROBE: Duration = Duration::from_secs(5);

/// Starts the upkeep beside the pipeline's tasks, stopping with them.
pub(super) fn spawn(pipeline: &Pipeline, limiter: Arc<RateLimiter>, metrics: Metrics) {
    let (tasks, stop) = (&pipeline.tasks, &pipeline.stop);
    let (store, health) = (pipeline.store.clone(), pipeline.store_health.clone());
    tasks.spawn(every(LIMITER_SWEEP, stop.clone(), move || {
        limiter.evict_idle(Instant::now());
        std::future::ready(())
    }));
    tasks.spawn(every(METRICS_UPKEEP, stop.clone(), move || {
        metrics.upkeep();
        std::future::ready(())
    }));
    tasks.spawn(every(STORE_PROBE, stop.clone(), move || {
        let (store, health) = (store.clone(), health.clone());
        async move { probe_store(store.as_ref(), &health).await }
    }));
}

/// Asks the store whether it is there, so `/ready` and `chat_store_up` are right even when no
/// message is being written.
async fn probe_store(store: &dyn MessageStore, health: &StoreHealth) {
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
async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut tick: F)
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
