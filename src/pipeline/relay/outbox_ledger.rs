//! The local outbox as the relay's ledger: outcomes are recorded in the outbox, refused
//! entries wait out their backoff in the dispatcher, and dead ones are marked dead there until
//! the dead-letter mover has carried them into the store.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Backoff;
use super::writer::{Ledger, Refused};
use crate::error::Chain;
use crate::model::{Failure, Message};
use crate::pipeline::outbox::{Outbox, OutboxError, PendingEntry};

pub(super) struct OutboxLedger {
    pub outbox: Arc<Outbox>,
    pub backoff: Backoff,
    /// Woken when an entry is dead-lettered, so it moves to the store's dead letters at once.
    pub dead_letters: Arc<Notify>,
}

#[async_trait]
impl Ledger for OutboxLedger {
    type Entry = PendingEntry;

    fn message(entry: &PendingEntry) -> &Message {
        &entry.message
    }

    fn attempts(entry: &PendingEntry) -> u32 {
        entry.attempts
    }

    async fn stored(&self, entries: Vec<PendingEntry>, stop: &CancellationToken) -> bool {
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        self.until_recorded(stop, || self.outbox.mark_stored(seqs.clone()))
            .await
    }

    async fn refused(
        &self,
        mut entry: PendingEntry,
        failure: Failure,
        attempts: u32,
        dead: bool,
        stop: &CancellationToken,
    ) -> Refused<PendingEntry> {
        let seq = entry.seq;
        let recorded = self
            .until_recorded(stop, || {
                self.outbox
                    .record_failure(seq, failure.clone(), attempts, dead)
            })
            .await;
        if !recorded {
            return Refused::Stopped;
        }
        if dead {
            self.dead_letters.notify_one();
            return Refused::Recorded;
        }
        entry.attempts = attempts;
        Refused::RetryLater(entry)
    }
}

impl OutboxLedger {
    /// Retries an outbox update until it succeeds; false if `stop` came first. The dispatcher's
    /// cursor has moved past these entries, so giving up would strand them until a restart.
    /// In an outbox found corrupted, that restart is due anyway and the update may never
    /// succeed (a damaged page beside the row): it is given up so that this writer goes on
    /// draining what can still be read. The store has those entries, or they wait in the retry
    /// set; the rows stay in the outbox and would only be written again, idempotently.
    async fn until_recorded<F, Fut>(&self, stop: &CancellationToken, mut update: F) -> bool
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<(), OutboxError>> + Send,
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
