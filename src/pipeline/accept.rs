//! Accepting a message: the outbox gives it its id and makes it durable, and only then is it
//! delivered live. In one process the outbox is the local journal, which hands each commit to
//! the bus in commit order; in cluster mode it is the stream the instances share, which every
//! instance's bus reads.

use std::sync::Arc;
use std::time::Instant;

use super::outbox::{Appended, Draft, Outbox, OutboxError, StreamOutbox};
use crate::model::{Channel, UserId};

/// The first stage: turns a validated send into a durable outbox entry.
pub struct Acceptor {
    outbox: Durable,
}

/// Where an accepted message is durable before its sender hears 202.
enum Durable {
    Local(Arc<Outbox>),
    Stream(Arc<StreamOutbox>),
}

impl Acceptor {
    /// One process: messages are durable in the local outbox.
    pub fn local(outbox: Arc<Outbox>) -> Self {
        Self {
            outbox: Durable::Local(outbox),
        }
    }

    /// Cluster mode: messages are durable once the stream has them.
    pub fn stream(outbox: Arc<StreamOutbox>) -> Self {
        Self {
            outbox: Durable::Stream(outbox),
        }
    }

    /// Returns the accepted message once it is durable. A client that hangs up mid-commit
    /// changes nothing: the journal commits and publishes whether or not anyone waits (and a
    /// publish to the stream, once sent, is stored or not whether or not anyone waits).
    pub async fn accept(
        &self,
        sender: &UserId,
        channel: &Channel,
        content: String,
        idempotency_key: Option<String>,
    ) -> Result<Appended, OutboxError> {
        let draft = Draft {
            sender: sender.clone(),
            channel: channel.clone(),
            content,
            idempotency_key,
            accepted_at: Instant::now(),
        };
        let appended = match &self.outbox {
            Durable::Local(outbox) => outbox.append(draft).await?,
            Durable::Stream(outbox) => outbox.append(draft).await?,
        };
        if !appended.repeated {
            metrics::counter!(crate::telemetry::MESSAGES_ACCEPTED).increment(1);
        }
        Ok(appended)
    }
}
