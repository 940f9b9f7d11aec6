//! Writes one batch to the store and records the outcome of every entry in its [`Ledger`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use metrics::{counter, histogram};
use tokio_util::sync::CancellationToken;

use super::Backoff;
use crate::error::Chain;
use crate::model::{Failure, Message};
use crate::store::{MessageStore, StoreError, StoreHealth, WriteOutcome};
use crate::telemetry::{self, BatchResult};

/// Where the relay's entries wait until the store has them, and where the outcome of each
/// write is recorded: the local outbox ([`super::OutboxLedger`]), or in cluster mode the
/// stream's shared consumer ([`super::stream`]).
#[async_trait]
pub(super) trait Ledger: Send + Sync + 'static {
    type Entry: Send + Sync + 'static;

    fn message(entry: &Self::Entry) -> &Message;

    /// How many times the store refused this entry before.
    fn attempts(entry: &Self::Entry) -> u32;

    /// The store has these entries. False if `stop` came first.
    async fn stored(&self, entries: Vec<Self::Entry>, stop: &CancellationToken) -> bool;

    /// The store refused `entry` for the `attempts`-th time, the last one if `dead`. Returns
    /// whether the relay's dispatcher retries it after its backoff, or `Stopped`.
    async fn refused(
        &self,
        entry: Self::Entry,
        failure: Failure,
        attempts: u32,
        dead: bool,
        stop: &CancellationToken,
    ) -> Refused<Self::Entry>;

    /// The store is away and these entries wait in a writer until it is back: they stay this
    /// writer's meanwhile.
    async fn waiting(&self, _entries: Vec<&Self::Entry>) {}
}

/// What became of a refused entry.
pub(super) enum Refused<E> {
    /// The dispatcher retries it after its backoff.
    RetryLater(E),
    /// Recorded: retried elsewhere, or dead.
    Recorded,
    Stopped,
}

pub(super) struct BatchWriter<L> {
    pub ledger: L,
    pub store: Arc<dyn MessageStore>,
    pub health: Arc<StoreHealth>,
    pub backoff: Backoff,
    pub max_attempts: u32,
}

impl<L: Ledger> BatchWriter<L> {
    /// Writes a batch once and returns the entries the store refused that the dispatcher
    /// retries after their backoff, their failure already recorded; this writer is free for
    /// other work meanwhile. Returns early at `stop`.
    ///
    /// Only a message the store refuses on its own spends an attempt. An unavailable store is
    /// nobody's fault: the batch waits (backing off as the outage goes on) and spends nothing.
    /// A write that fails as a whole for another reason is split in halves, spending nothing,
    /// until the message that makes it fail is written alone.
    pub(super) async fn write(
        &self,
        batch: Vec<L::Entry>,
        stop: &CancellationToken,
    ) -> Vec<L::Entry> {
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
                    self.ledger
                        .waiting(parts.iter().flatten().chain(&part).collect())
                        .await;
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
    async fn insert(&self, part: &[L::Entry]) -> Result<Vec<WriteOutcome>, StoreError> {
        let messages: Vec<_> = part.iter().map(|e| L::message(e).clone()).collect();
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

    /// Records each entry's outcome and adds the refused entries the dispatcher retries to
    /// `refused`; false if `stop` came first.
    async fn record(
        &self,
        part: Vec<L::Entry>,
        outcomes: Vec<WriteOutcome>,
        refused: &mut Vec<L::Entry>,
        stop: &CancellationToken,
    ) -> bool {
        let mut stored = Vec::new();
        for (entry, outcome) in part.into_iter().zip(outcomes) {
            let failure = match outcome {
                Ok(()) => {
                    stored.push(entry);
                    continue;
                }
                Err(failure) => failure,
            };
            let attempts = L::attempts(&entry) + 1;
            let dead = attempts >= self.max_attempts;
            // The store's text can quote the message (a duplicate key's value), so only its
            // kind is logged above debug.
            let (id, kind) = (&L::message(&entry).id, &failure.kind);
            tracing::debug!(%id, error = %failure.message, "store refused a message");
            if dead {
                counter!(telemetry::DEAD_LETTERS).increment(1);
                tracing::error!(%id, attempts, %kind, "message dead-lettered");
            } else {
                tracing::warn!(%id, attempts, %kind, "message write failed, will retry");
            }
            match self
                .ledger
                .refused(entry, failure, attempts, dead, stop)
                .await
            {
                Refused::RetryLater(entry) => refused.push(entry),
                Refused::Recorded => {}
                Refused::Stopped => return false,
            }
        }
        stored.is_empty() || self.ledger.stored(stored, stop).await
    }
}
