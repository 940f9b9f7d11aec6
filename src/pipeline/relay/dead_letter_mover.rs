//! The dead-letter mover: the relay marks an entry dead in the outbox once the store refused it
//! on every attempt; this task carries it into the store's dead letters and only then removes
//! it from the outbox, so a dead letter is never dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Backoff;
use crate::error::Chain;
use crate::pipeline::outbox::{Outbox, OutboxError};
use crate::store::{MessageStore, StoreError};

/// How often the mover looks for dead entries it was not told about (after a restart, say).
const SWEEP: Duration = Duration::from_secs(30);
/// Dead entries moved per outbox read.
const MOVE_BATCH: usize = 100;

/// Why dead letters could not be moved this time: reading or updating the outbox, or writing
/// to the store.
#[derive(Debug, thiserror::Error)]
enum MoveError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(super) struct DeadLetterMover {
    pub outbox: Arc<Outbox>,
    pub store: Arc<dyn MessageStore>,
    pub wake: Arc<Notify>,
    pub backoff: Backoff,
}

impl DeadLetterMover {
    /// Moves what is dead now, then again when woken or every `SWEEP`, until `stop`. While
    /// the store does not take them, it retries with backoff.
    pub async fn run(self, stop: CancellationToken) {
        let failed = |e: &MoveError, failures| {
            tracing::warn!(error = %Chain(e), failures, "dead letters wait in the outbox until the store takes them");
        };
        loop {
            if self
                .backoff
                .retry(&stop, || self.move_all(), failed)
                .await
                .is_none()
            {
                break;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(SWEEP) => {}
                () = stop.cancelled() => break,
            }
        }
    }

    /// Moves every dead entry into the store. Each is written to the store before it leaves
    /// the outbox; writing one twice (after a failure in between) replaces it with itself.
    async fn move_all(&self) -> Result<(), MoveError> {
        loop {
            let entries = self.outbox.dead_entries(MOVE_BATCH).await?;
            if entries.is_empty() {
                return Ok(());
            }
            let mut moved = Vec::with_capacity(entries.len());
            for (seq, letter) in &entries {
                self.store.put_dead_letter(letter).await?;
                tracing::info!(id = %letter.id(), kind = %letter.error.kind, "dead letter stored");
                moved.push(*seq);
            }
            self.outbox.forget_dead(moved).await?;
        }
    }
}
