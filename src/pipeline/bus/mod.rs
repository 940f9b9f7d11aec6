//! The broadcast bus between accepting a message and delivering it to sockets.
//!
//! [`EventBus`] is the seam for running several instances: a Redis or NATS bus would publish to
//! the other instances and feed what they publish into the same kind of local [`Subscription`].
//! Only live delivery rides the bus; persistence reads the durable outbox, so a subscriber that
//! falls behind costs live frames (clients catch up from history), never stored messages.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::Event;

pub trait EventBus: Send + Sync + 'static {
    fn publish(&self, event: Arc<Event>);
    fn subscribe(&self) -> Subscription;
}

/// What a subscriber receives.
#[derive(Debug)]
pub enum Received {
    Event(Arc<Event>),
    /// The subscriber fell this many events behind and they were skipped.
    Missed(u64),
}

/// One process's bus: a bounded broadcast channel.
pub struct LocalBus {
    sender: broadcast::Sender<Arc<Event>>,
}

impl LocalBus {
    /// `capacity` events are kept for a subscriber that is behind; older ones are skipped.
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::Sender::new(capacity),
        }
    }
}

impl EventBus for LocalBus {
    fn publish(&self, event: Arc<Event>) {
        // With no subscriber (none yet, or shutting down) there is no one to deliver to.
        let _ = self.sender.send(event);
    }

    fn subscribe(&self) -> Subscription {
        Subscription(self.sender.subscribe())
    }
}

pub struct Subscription(broadcast::Receiver<Arc<Event>>);

impl Subscription {
    /// The next event; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.0.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Received::Missed(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::model::{Channel, Message, UserId};

    fn event(content: &str) -> Arc<Event> {
        let alice = UserId::parse("alice").unwrap();
        let channel = Channel::new(vec![alice.clone()], 1).unwrap();
        Arc::new(Event {
            message: Message::accept(&alice, &channel, content.into()),
            accepted_at: Instant::now(),
        })
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_much_it_missed() {
        let bus = LocalBus::new(2);
        let mut subscription = bus.subscribe();
        for i in 0..5 {
            bus.publish(event(&i.to_string()));
        }
        assert!(matches!(
            subscription.recv().await,
            Some(Received::Missed(3))
        ));
        let Some(Received::Event(e)) = subscription.recv().await else {
            panic!("expected an event")
        };
        assert_eq!(e.message.content, "3");
    }
}
