//! Accepting a message: the outbox gives it its id and commits it, and only then (from the
//! outbox's journal, in commit order) does it go on the bus for live delivery.

use std::sync::Arc;
use std::time::Instant;

use super::outbox::{Appended, Draft, Outbox, OutboxError};
use crate::model::{Channel, UserId};

/// The first stage: turns a validated send into a durable outbox entry.
pub struct Acceptor {
    outbox: Arc<Outbox>,
}

impl Acceptor {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self { outbox }
    }

    /// Returns the accepted message once it is durable. A client that hangs up mid-commit
    /// changes nothing: the journal commits and publishes whether or not anyone waits.
    pub async fn accept(
        &self,
        sender: &UserId,
        channel: &Channel,
        content: String,
        idempotency_key: Option<String>,
    ) -> Result<Appended, OutboxError> {
        let appended = self
            .outbox
            .append(Draft {
                sender: sender.clone(),
                channel: channel.clone(),
                content,
                idempotency_key,
                accepted_at: Instant::now(),
            })
            .await?;
        if !appended.repeated {
            metrics::counter!(crate::telemetry::MESSAGES_ACCEPTED).increment(1);
        }
        Ok(appended)
    }
}
