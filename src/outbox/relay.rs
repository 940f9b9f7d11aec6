//! Drains the outbox into the store. The relay reads the durable outbox, never the broadcast
//! bus, so a lagging bus receiver cannot cost it an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Backoff, Outbox, PendingEntry};
use crate::config::RelaySettings;
use crate::store::{MessageStore, StoreError};

/// What the relay last saw of the store: shared with the health endpoint.
#[derive(Debug)]
pub struct StoreHealth {
    up: AtomicBool,
    consecutive_outages: AtomicU32,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            consecutive_outages: AtomicU32::new(0),
        }
    }
}

impl StoreHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn reachable(&self) {
        self.consecutive_outages.store(0, Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
    }

    /// Records an outage and returns how many have come in a row.
    fn unreachable(&self) -> u32 {
        self.up.store(false, Ordering::Relaxed);
        self.consecutive_outages.fetch_add(1, Ordering::Relaxed) + 1
    }
}

pub struct Relay {
    outbox: Arc<Outbox>,
    writer: Arc<BatchWriter>,
    settings: RelaySettings,
}

impl Relay {
    pub fn new(
        outbox: Arc<Outbox>,
        store: Arc<dyn MessageStore>,
        health: Arc<StoreHealth>,
        settings: RelaySettings,
    ) -> Self {
        let writer = BatchWriter {
            outbox: outbox.clone(),
            store,
            health,
            backoff: Backoff::new(settings.retry_base, settings.retry_max),
            max_attempts: settings.retry_attempts,
        };
        Self {
            outbox,
            writer: Arc::new(writer),
            settings,
        }
    }

    /// Hands batches of pending entries, oldest first, to at most `workers` concurrent writers
    /// until `stop`. A batch is only taken when a writer is free, so under load batches fill up.
    /// Entries still pending at `stop` stay in the outbox for the next start.
    pub async fn run(self, stop: CancellationToken) {
        let workers = Arc::new(Semaphore::new(self.settings.workers));
        let tasks = TaskTracker::new();
        let mut cursor = 0;
        loop {
            let permit = tokio::select! {
                permit = workers.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = stop.cancelled() => break,
            };
            let batch = match self
                .outbox
                .pending_after(cursor, self.settings.batch_size)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox failed");
                    if !sleep_unless_stopped(Duration::from_secs(1), &stop).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(last) = batch.last() else {
                drop(permit);
                tokio::select! {
                    () = self.outbox.new_work() => continue,
                    () = stop.cancelled() => break,
                }
            };
            cursor = last.seq;
            let writer = self.writer.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                writer.write(batch, &stop).await;
                drop(permit);
            });
        }
        tasks.close();
        tasks.wait().await;
    }
}

struct BatchWriter {
    outbox: Arc<Outbox>,
    store: Arc<dyn MessageStore>,
    health: Arc<StoreHealth>,
    backoff: Backoff,
    max_attempts: u32,
}

impl BatchWriter {
    /// Writes a batch until every entry is stored or dead-lettered, or `stop`.
    ///
    /// An unreachable store is nobody's fault: the batch waits (backing off as the outage goes
    /// on) without spending attempts. Only a message the store refuses spends its own attempts.
    async fn write(&self, mut batch: Vec<PendingEntry>, stop: &CancellationToken) {
        while !batch.is_empty() {
            let messages: Vec<_> = batch.iter().map(|e| e.message.clone()).collect();
            let outcomes = match self.store.insert_batch(&messages).await {
                Ok(outcomes) if outcomes.len() == batch.len() => {
                    self.health.reachable();
                    outcomes
                }
                Ok(outcomes) => {
                    let e = format!(
                        "store answered {} outcomes for {} messages",
                        outcomes.len(),
                        batch.len()
                    );
                    vec![Err(e); batch.len()]
                }
                Err(StoreError::Unavailable(reason)) => {
                    let outages = self.health.unreachable();
                    tracing::warn!(%reason, outages, "store unavailable, batch waits in the outbox");
                    if !sleep_unless_stopped(self.backoff.delay(outages), stop).await {
                        return;
                    }
                    continue;
                }
                Err(StoreError::Failed(reason)) => vec![Err(reason); batch.len()],
            };

            let mut stored = Vec::new();
            let mut retry = Vec::new();
            for (mut entry, outcome) in batch.into_iter().zip(outcomes) {
                match outcome {
                    Ok(()) => stored.push(entry.seq),
                    Err(error) => {
                        entry.attempts += 1;
                        let dead = entry.attempts >= self.max_attempts;
                        if dead {
                            tracing::error!(id = %entry.message.id, attempts = entry.attempts, %error, "message dead-lettered");
                        } else {
                            tracing::warn!(id = %entry.message.id, attempts = entry.attempts, %error, "message write failed, will retry");
                        }
                        if let Err(e) = self
                            .outbox
                            .record_failure(entry.seq, error, entry.attempts, dead)
                            .await
                        {
                            tracing::error!(error = %e, "recording a failed attempt failed");
                        }
                        if !dead {
                            retry.push(entry);
                        }
                    }
                }
            }
            if !stored.is_empty() {
                // If this fails the entries stay pending and are written again after a restart,
                // which the store's idempotent writes make harmless.
                if let Err(e) = self.outbox.mark_stored(stored).await {
                    tracing::error!(error = %e, "removing stored messages from the outbox failed");
                }
            }
            let Some(fewest) = retry.iter().map(|e| e.attempts).min() else {
                return;
            };
            if !sleep_unless_stopped(self.backoff.delay(fewest), stop).await {
                return;
            }
            batch = retry;
        }
    }
}

/// Sleeps for `delay`; false if `stop` came first.
async fn sleep_unless_stopped(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}
