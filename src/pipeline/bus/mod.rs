//! The broadcast bus between accepting a message and delivering it to sockets.
//!
//! [`EventBus`] is the seam between one process and a cluster: [`LocalBus`] is one process's
//! broadcast channel (the default); [`NatsBus`] publishes to a NATS JetStream stream and feeds
//! what every instance published into the same kind of local [`Subscription`]. Only live
//! delivery rides the bus; persistence reads the durable outbox, so a subscriber that falls
//! behind costs live frames (clients catch up from history), never stored messages.

mod local;
mod nats;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::Event;

pub use local::LocalBus;
pub use nats::NatsBus;

pub trait EventBus: Send + Sync + 'static {
    /// Hands an accepted event to the bus. Never waits: it is called from the outbox's journal
    /// thread, in commit order.
    fn publish(&self, event: Arc<Event>);
    fn subscribe(&self) -> Subscription;
    /// The events after the one whose id is `since` that `keep` keeps, from what the bus
    /// remembers of its live stream, and where that stream stands now: a reconnect's replay in
    /// the bus's own order, exact at the seam. `None` when the bus remembers no such event
    /// (the in-process bus remembers none; the outbox and the store have them).
    fn recent(&self, since: &str, keep: &dyn Fn(&Event) -> bool) -> Option<Recent>;
}

/// What a bus remembers after a given event.
pub struct Recent {
    pub events: Vec<Arc<Event>>,
    /// The stream sequence of the last event the bus has handed to its subscribers: every later
    /// one reaches a socket registered now, live.
    pub through: u64,
}

/// What a subscriber receives.
#[derive(Debug)]
pub enum Received {
    Event(Arc<Event>),
    /// This many events were skipped: the subscriber fell behind, or the bus lost them.
    Missed(u64),
}

/// What travels on a bus's local broadcast channel.
#[derive(Debug, Clone)]
enum Item {
    Event(Arc<Event>),
    /// Events the bus itself could not carry (see [`NatsBus`]), which every subscriber misses.
    Lost(u64),
}

pub struct Subscription(broadcast::Receiver<Item>);

impl Subscription {
    /// The next event; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.0.recv().await {
            Ok(Item::Event(event)) => Some(Received::Event(event)),
            Ok(Item::Lost(lost)) => Some(Received::Missed(lost)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Received::Missed(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
