//! One process's bus: a bounded broadcast channel.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{EventBus, Recent, Since, Subscription};
use crate::model::Event;

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

    /// Hands an accepted event to the subscribers. Never waits: it is called from the outbox's
    /// journal thread, in commit order.
    pub fn publish(&self, event: Arc<Event>) {
        // With no subscriber (none yet, or shutting down) there is no one to deliver to.
        let _ = self.sender.send(event);
    }
}

impl EventBus for LocalBus {
    fn subscribe(&self) -> Subscription {
        Subscription(self.sender.subscribe())
    }

    fn recent(&self, _since: Since<'_>, _keep: &dyn Fn(&Event) -> bool) -> Option<Recent> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::model::{Channel, Message, UserId};
    use crate::pipeline::bus::Received;

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
