//! Writes one batch to the store and records the outcome of every entry in the outbox.

use std::sync::Arc;
use std::time::Instant;

use metrics::{counter, histogram};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Backoff;
use crate::error::Chain;
use crate::model::Failure;
use crate::pipeline::outbox::{Outbox, OutboxError, PendingEntry};
use crate::store::{MessageStore, StoreError, StoreHealth, WriteOutcome};
use crate::telemetry::{self, BatchResult};

pub(super) struct BatchWriter {
    pub outbox: Arc<Outbox>,
    pub store: Arc<dyn MessageStore>,
    pub health: Arc<StoreHealth>,
    pub backoff: Backoff,
    pub max_attempts: u32,
    /// Woken when an entry is dead-lettered, so it moves to the store's dead letters at once.
    pub dead_letters: Arc<Notify>,
}

impl BatchWriter {
    /// Writes a batch once and returns the entries the store refused that have attempts left,
    /// their failure already recorded in the outbox. The caller retries them after their
    /// backoff; this writer is free for other work meanwhile. Returns early at `stop`.
    ///
    /// Only a message the store refuses on its own spends an attempt. An unavailable store is
    /// nobody's fault: the batch waits (backing off as the outage goes on) and spends nothing.
    /// A write that fails as a whole for another reason is split in halves, spending nothing,
    /// until the message that makes it fail is written alone.
    pub(super) async fn write(
        &self,
        batch: Vec<PendingEntry>,
        stop: &CancellationToken,
    ) -> Vec<PendingEntry> {
        let mut refused = Vec::new();
        // Parts still to write, the next one last.
        let mut parts = vec![batch];
        while let Some(mut part) = parts.pop() {
            if stop.is_cancelled() {
                break;
            }
            let outcomes = match self.insert(&part).await {
                Ok(outcomes) => outcomes,
                Err(e @ StoreError::Unavailable(_)) => {
                    let outages = self.health.write_unavailable();
                    tracing::warn!(error = %Chain(&e), outages, "store unavailable, batch waits in the outbox");
                    if !self.backoff.wait(outages, stop).await {
                        break;
                    }
                    parts.push(part);
                    continue;
                }
                Err(e @ StoreError::Failed(_)) if part.len() > 1 => {
                    // The store's text can quote a message, so it is only logged at debug.
                    tracing::debug!(error = %Chain(&e), "batch write failed");
                    tracing::warn!(
                        messages = part.len(),
                        "batch write failed as a whole, splitting it to find the message at fault"
                    );
                    let second = part.split_off(part.len() / 2);
                    parts.push(second);
                    parts.push(part);
                    continue;
                }
                Err(StoreError::Failed(cause)) => {
                    vec![Err(Failure::new("store_error", Chain(&*cause).to_string()))]
                }
            };
            if !self.record(part, outcomes, &mut refused, stop).await {
                break;
            }
        }
        refused
    }

    /// Writes a part of a batch once: one outcome per message, or why the part failed as a
    /// whole.
    async fn insert(&self, part: &[PendingEntry]) -> Result<Vec<WriteOutcome>, StoreError> {
        let messages: Vec<_> = part.iter().map(|e| e.message.clone()).collect();
        let writing = Instant::now();
        let written = self.store.insert_batch(&messages).await;
        histogram!(telemetry::PERSIST_DURATION).record(writing.elapsed());
        let (result, written) = match written {
            Ok(outcomes) if outcomes.len() == part.len() => {
                self.health.write_taken();
                let result = if outcomes.iter().all(Result::is_ok) {
                    BatchResult::Ok
                } else {
                    BatchResult::Partial
                };
                (result, Ok(outcomes))
            }
            Ok(outcomes) => {
                let e = format!(
                    "store answered {} outcomes for {} messages",
                    outcomes.len(),
                    part.len()
                );
                (BatchResult::Failed, Err(StoreError::Failed(e.into())))
            }
            Err(e @ StoreError::Unavailable(_)) => (BatchResult::Unavailable, Err(e)),
            Err(e @ StoreError::Failed(_)) => (BatchResult::Failed, Err(e)),
        };
        result.count();
        written
    }

    /// Records each entry's outcome in the outbox and adds the refused entries that have
    /// attempts left to `refused`; false if `stop` came first.
    async fn record(
        &self,
        part: Vec<PendingEntry>,
        outcomes: Vec<WriteOutcome>,
        refused: &mut Vec<PendingEntry>,
        stop: &CancellationToken,
    ) -> bool {
        let mut stored = Vec::new();
        for (mut entry, outcome) in part.into_iter().zip(outcomes) {
            let failure = match outcome {
                Ok(()) => {
                    stored.push(entry.seq);
                    continue;
                }
                Err(failure) => failure,
            };
            entry.attempts += 1;
            let dead = entry.attempts >= self.max_attempts;
            // The store's text can quote the message (a duplicate key's value), so only its
            // kind is logged above debug.
            let (id, attempts, kind) = (&entry.message.id, entry.attempts, &failure.kind);
            tracing::debug!(%id, error = %failure.message, "store refused a message");
            if dead {
                counter!(telemetry::DEAD_LETTERS).increment(1);
                tracing::error!(%id, attempts, %kind, "message dead-lettered");
            } else {
                tracing::warn!(%id, attempts, %kind, "message write failed, will retry");
            }
            let seq = entry.seq;
            let recorded = self
                .until_recorded(stop, || {
                    self.outbox
                        .record_failure(seq, failure.clone(), attempts, dead)
                })
                .await;
            if !recorded {
                return false;
            }
            if dead {
                self.dead_letters.notify_one();
            } else {
                refused.push(entry);
            }
        }
        stored.is_empty()
            || self
                .until_recorded(stop, || self.outbox.mark_stored(stored.clone()))
                .await
    }

    /// Retries an outbox update until it succeeds; false if `stop` came first. The dispatcher's
    /// cursor has moved past these entries, so giving up would strand them until a restart.
    /// In an outbox found corrupted, that restart is due anyway and the update may never
    /// succeed (a damaged page beside the row): it is given up so that this writer goes on
    /// draining what can still be read. The store has those entries, or they wait in the retry
    /// set; the rows stay in the outbox and would only be written again, idempotently.
    async fn until_recorded<F, Fut>(&self, stop: &CancellationToken, mut update: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), OutboxError>>,
    {
        let attempt = || {
            let updated = update();
            async move {
                match updated.await {
                    Err(e) if self.outbox.is_corrupted() => {
                        tracing::warn!(error = %Chain(&e), "the outbox is corrupted: its bookkeeping is given up");
                        Ok(())
                    }
                    updated => updated,
                }
            }
        };
        let failed = |e: &OutboxError, failures| {
            tracing::error!(error = %Chain(e), failures, "updating the outbox failed, retrying");
        };
        self.backoff.retry(stop, attempt, failed).await.is_some()
    }
}
