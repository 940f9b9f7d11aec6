//! The broadcast bus between accepting a message and delivering it to sockets.
//!
//! [`EventBus`] is the seam between one process and a cluster: [`LocalBus`] is one process's
//! broadcast channel (the default), into which the outbox's journal publishes; [`NatsBus`]
//! reads the NATS JetStream stream that every instance appends to (the cluster's outbox) into
//! the same kind of local [`Subscription`]. Only live delivery rides the bus; persistence reads
//! the durable outbox, so a subscriber that falls behind costs live frames (clients catch up
//! from history), never stored messages.

mod local;
mod nats;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::Event;

pub use local::LocalBus;
pub use nats::NatsBus;

pub trait EventBus: Send + Sync + 'static {
    fn subscribe(&self) -> Subscription;
    /// What the bus remembers of its live stream after `since` that `keep` keeps, and where
    /// that stream stands now: a reconnect's replay in the bus's own order, exact at the seam.
    /// `None` when the bus remembers nothing after `since` it can place (the in-process bus
    /// remembers nothing; the outbox and the store have it all).
    fn recent(&self, since: Since<'_>, keep: &dyn Fn(&Event) -> bool) -> Option<Recent>;
}

/// Where a reconnect's replay starts.
#[derive(Debug, Clone, Copy)]
pub enum Since<'a> {
    /// After this message, if the bus remembers it.
    Id(&'a str),
    /// After this stream sequence (cluster mode): whatever the bus remembers past it.
    Sequence(u64),
}

/// What a bus remembers after a given point.
pub struct Recent {
    pub events: Vec<Arc<Event>>,
    /// The stream sequence of the oldest event the bus remembers (`through + 1` when it
    /// remembers none): from there on, `events` holds all that `keep` kept.
    pub from: u64,
    /// The stream sequence of the last event the bus has handed to its subscribers: every later
    /// one reaches a socket registered now, live.
    pub through: u64,
}

/// What a subscriber receives.
#[derive(Debug)]
pub enum Received {
    Event(Arc<Event>),
    /// This many events were skipped: the subscriber fell behind.
    Missed(u64),
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
