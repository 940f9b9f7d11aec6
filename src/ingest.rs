//! Accepting a message: it gets its id, is committed to the outbox, and only then goes on the
//! bus for live delivery.

use std::sync::Arc;
use std::time::Instant;

use crate::bus::EventBus;
use crate::model::{Channel, Event, Message, UserId};
use crate::outbox::{Outbox, OutboxError};

pub struct Ingest {
    outbox: Arc<Outbox>,
    bus: Arc<dyn EventBus>,
}

impl Ingest {
    pub fn new(outbox: Arc<Outbox>, bus: Arc<dyn EventBus>) -> Self {
        Self { outbox, bus }
    }

    /// Returns the accepted message once it is durable. The append and the publish run in
    /// their own task, so a client that hangs up mid-commit cannot leave a stored message
    /// undelivered.
    pub async fn accept(
        &self,
        sender: &UserId,
        channel: &Channel,
        content: String,
    ) -> Result<Message, OutboxError> {
        let message = Message::accept(sender, channel, content);
        let accepted_at = Instant::now();
        let outbox = self.outbox.clone();
        let bus = self.bus.clone();
        let durable = message.clone();
        tokio::spawn(async move {
            outbox.append(durable.clone()).await?;
            ::metrics::counter!(crate::metrics::MESSAGES_ACCEPTED).increment(1);
            bus.publish(Arc::new(Event {
                message: durable,
                accepted_at,
            }));
            Ok::<_, OutboxError>(())
        })
        .await
        .map_err(|e| OutboxError::Storage(format!("accept task failed: {e}")))??;
        Ok(message)
    }
}
