//! The cluster's bus (`NATS_URL`): each instance publishes what its outbox committed to the
//! JetStream stream every instance shares, and reads the whole stream back, from the moment it
//! started, into a local broadcast channel for its fan-out. Its own messages come back that way
//! too, so every socket of a cluster sees the messages of one instance in that instance's
//! commit order, and the messages of all in the stream's one order.
//!
//! Exactly once per instance: a publish is retried with the message id as `Nats-Msg-Id`, so
//! JetStream stores a retried message once; the reader is an ordered consumer, which tracks
//! stream sequences and recreates itself after the last one it saw, so it neither skips nor
//! repeats one through a NATS restart. A retry later than JetStream's duplicate window (NATS
//! away for longer) is caught by the reader: each instance publishes in its commit order, which
//! is its id order, so a message whose id is not above the last one read from the same
//! process is a repeat. (By process, not by `INSTANCE_ID`: two instances given one id by
//! mistake, or a restart after the clock went back, must not look like repeats.)
//!
//! Two bounded queues, each with a policy when full (see CONCURRENCY.md):
//! - outgoing, `BUS_CAPACITY` events between the journal and the publisher. While NATS is away
//!   the publisher retries the oldest batch with backoff and the queue fills; an event that
//!   finds it full is not carried to any instance, and this instance's sockets are told to
//!   reconnect with `since` (4009) as when the fan-out falls behind. The message itself is
//!   committed: the relay stores it, and history has it.
//! - the local broadcast channel, `BUS_CAPACITY` events, exactly as [`super::LocalBus`].
//!
//! It also remembers the newest [`REMEMBERED`] events it handed on, in the stream's order,
//! for reconnect recovery ([`EventBus::recent`]): a socket that reconnects with the id of one
//! of them gets what followed it exactly, whichever instance accepted each.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, context::PublishError};
use chrono::Utc;
use futures_util::StreamExt;
use metrics::{counter, gauge};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{EventBus, Item, Recent, Subscription};
use crate::cluster::{Cluster, ORIGIN_HEADER};
use crate::error::Chain;
use crate::model::{Event, Message};
use crate::pipeline::relay::Backoff;
use crate::telemetry;

/// Most events sent to NATS before their acknowledgements are awaited.
const PUBLISH_BATCH: usize = 256;
/// Events remembered for reconnect recovery: about 6 MiB of typical messages; at 1,000
/// messages/s across the cluster, the last 16 s.
const REMEMBERED: usize = 16_384;
/// Publishing processes a reader remembers; past that (restarts over a long life) it forgets
/// them all, which only gives up catching repeats older than JetStream's duplicate window.
const MAX_ORIGINS: usize = 1024;

pub struct NatsBus {
    outgoing: mpsc::Sender<Arc<Event>>,
    local: broadcast::Sender<Item>,
    remembered: Arc<Mutex<Remembered>>,
    /// Set by the first event dropped since the publisher last succeeded, so that an outage
    /// logs its drops once rather than once per message.
    dropping: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("reading JetStream stream {stream}")]
pub struct ReadError {
    stream: String,
    #[source]
    source: async_nats::Error,
}

impl NatsBus {
    /// Starts reading the stream from now on (before anything is published, so this instance
    /// misses none of its own messages) and publishing, both on `tasks` until `stop`.
    pub async fn start(
        cluster: &Cluster,
        capacity: usize,
        backoff: Backoff,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Self, ReadError> {
        let failed = |source| ReadError {
            stream: cluster.stream.cached_info().config.name.clone(),
            source,
        };
        let info = cluster
            .stream
            .get_info()
            .await
            .map_err(|e| failed(e.into()))?;
        let last_seen = info.state.last_sequence;
        let messages = read_after(cluster, last_seen).await.map_err(failed)?;
        let local = broadcast::Sender::new(capacity);
        let (outgoing, queued) = mpsc::channel(capacity);
        let remembered = Arc::new(Mutex::new(Remembered {
            events: VecDeque::new(),
            through: last_seen,
        }));
        let reader = Reader {
            cluster: cluster.clone(),
            local: local.clone(),
            remembered: remembered.clone(),
            backoff,
            last_seen,
            newest: NewestByOrigin::default(),
        };
        tasks.spawn(reader.run(messages, stop.clone()));
        let dropping = Arc::new(AtomicBool::new(false));
        let publisher = Publisher {
            jetstream: cluster.jetstream.clone(),
            subject: cluster.subject.clone(),
            origin: cluster.origin.clone(),
            backoff,
            dropping: dropping.clone(),
        };
        tasks.spawn(publisher.run(queued, stop.clone()));
        Ok(Self {
            outgoing,
            local,
            remembered,
            dropping,
        })
    }
}

impl EventBus for NatsBus {
    fn publish(&self, event: Arc<Event>) {
        if self.outgoing.try_send(event).is_err() {
            counter!(telemetry::BUS_DROPPED).increment(1);
            if !self.dropping.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the bus's outgoing queue is full (NATS is slow or away): messages go to the store without live delivery until it drains"
                );
            }
            let _ = self.local.send(Item::Lost(1));
        }
    }

    fn subscribe(&self) -> Subscription {
        Subscription(self.local.subscribe())
    }

    fn recent(&self, since: &str, keep: &dyn Fn(&Event) -> bool) -> Option<Recent> {
        let remembered = self.remembered.lock().expect("remembered events lock");
        let at = remembered
            .events
            .iter()
            .rposition(|event| event.message.id == since)?;
        let events = remembered
            .events
            .iter()
            .skip(at + 1)
            .filter(|event| keep(event))
            .cloned()
            .collect();
        Some(Recent {
            events,
            through: remembered.through,
        })
    }
}

/// The newest events the reader handed on, and the sequence of the last.
struct Remembered {
    events: VecDeque<Arc<Event>>,
    through: u64,
}

/// An ordered consumer of the stream from the message after `sequence`.
async fn read_after(cluster: &Cluster, sequence: u64) -> Result<pull::Ordered, async_nats::Error> {
    let consumer = cluster
        .stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// Feeds the stream into the local broadcast channel, each message once, in the stream's
/// order. The ordered consumer lives in the NATS server's memory: after a reconnect (the
/// server may have restarted without it) or when its stream ends, a new one starts after
/// the last sequence read.
struct Reader {
    cluster: Cluster,
    local: broadcast::Sender<Item>,
    remembered: Arc<Mutex<Remembered>>,
    backoff: Backoff,
    last_seen: u64,
    newest: NewestByOrigin,
}

impl Reader {
    async fn run(mut self, mut messages: pull::Ordered, stop: CancellationToken) {
        let mut connections = self.cluster.connections.clone();
        connections.borrow_and_update();
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                changed = connections.changed() => match changed {
                    Ok(()) => None,
                    Err(_) => return,
                },
                () = stop.cancelled() => return,
            };
            match next {
                Some(Ok(message)) => self.forward(&message),
                Some(Err(e)) => {
                    tracing::warn!(error = %Chain(&e), "reading the stream; the reader carries on")
                }
                None => {
                    let failed = |e: &async_nats::Error, failures| {
                        tracing::warn!(error = %Chain(e.as_ref()), failures, "reading the stream again, retrying");
                    };
                    let again = self.backoff.retry(
                        &stop,
                        || read_after(&self.cluster, self.last_seen),
                        failed,
                    );
                    let Some(again) = again.await else { return };
                    messages = again;
                }
            }
        }
    }

    fn forward(&mut self, message: &jetstream::Message) {
        let Ok(info) = message.info() else {
            tracing::warn!("a message on the stream without its sequence; skipped");
            return;
        };
        self.last_seen = info.stream_sequence;
        counter!(telemetry::BUS_RECEIVED).increment(1);
        let origin = message.headers.as_ref().and_then(|h| h.get(ORIGIN_HEADER));
        match serde_json::from_slice::<Message>(&message.payload) {
            Ok(message) => {
                if let Some(origin) = origin
                    && !self.newest.admits(origin.as_str(), &message.id)
                {
                    tracing::debug!(id = %message.id, origin = %origin, "a repeated publish; skipped");
                    return;
                }
                let event = Arc::new(received(message, self.last_seen));
                // Remembered and handed on under one lock: a recovery that reads what is
                // remembered sees exactly the events its socket will not get live.
                let mut remembered = self.remembered.lock().expect("remembered events lock");
                if remembered.events.len() == REMEMBERED {
                    remembered.events.pop_front();
                }
                remembered.events.push_back(event.clone());
                remembered.through = self.last_seen;
                let _ = self.local.send(Item::Event(event));
            }
            Err(e) => {
                tracing::warn!(error = %e, "a message on the stream is not a chatd message; skipped");
            }
        }
    }
}

/// The last message id read from each publishing process (see [`Cluster::origin`]), at most
/// [`MAX_ORIGINS`] of them.
#[derive(Default)]
struct NewestByOrigin(HashMap<String, String>);

impl NewestByOrigin {
    /// Whether `id` is above every id read from `origin` so far; if so, it is now the newest.
    fn admits(&mut self, origin: &str, id: &str) -> bool {
        match self.0.get_mut(origin) {
            Some(newest) if id <= newest.as_str() => false,
            Some(newest) => {
                id.clone_into(newest);
                true
            }
            None => {
                if self.0.len() >= MAX_ORIGINS {
                    self.0.clear();
                }
                self.0.insert(origin.to_string(), id.to_string());
                true
            }
        }
    }
}

/// An event read from the stream. Its accepted instant is rebuilt from the message's time, so
/// delivery latency counts from acceptance on whichever instance took it (within the clocks'
/// skew between machines).
fn received(message: Message, sequence: u64) -> Event {
    let age = (Utc::now() - message.created_at)
        .to_std()
        .unwrap_or(Duration::ZERO);
    let now = Instant::now();
    Event {
        accepted_at: now.checked_sub(age).unwrap_or(now),
        message,
        sequence: Some(sequence),
    }
}

/// Publishes the journal's events in their commit order: a batch is sent, then its
/// acknowledgements are awaited; from the first that failed, the rest is sent again after a
/// backoff (JetStream drops the repeats of those that had been stored).
struct Publisher {
    jetstream: jetstream::Context,
    subject: String,
    origin: String,
    backoff: Backoff,
    dropping: Arc<AtomicBool>,
}

impl Publisher {
    async fn run(self, mut queued: mpsc::Receiver<Arc<Event>>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let taken = tokio::select! {
                taken = queued.recv_many(&mut batch, PUBLISH_BATCH) => taken,
                () = stop.cancelled() => return,
            };
            if taken == 0 {
                return;
            }
            let mut failures = 0;
            while !batch.is_empty() {
                gauge!(telemetry::BUS_OUTGOING).set((batch.len() + queued.len()) as f64);
                match self.publish(&batch).await {
                    Ok(()) => {
                        batch.clear();
                        gauge!(telemetry::BUS_OUTGOING).set(queued.len() as f64);
                        self.dropping.store(false, Ordering::Relaxed);
                    }
                    Err((stored, e)) => {
                        batch.drain(..stored);
                        failures += 1;
                        counter!(telemetry::BUS_PUBLISH_RETRIES).increment(1);
                        tracing::warn!(error = %Chain(&e), failures, waiting = batch.len(), "publishing to NATS failed, retrying");
                        if !self.backoff.wait(failures, &stop).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sends every event, then awaits every acknowledgement. On failure: how many from the
    /// start were stored, and why the next was not.
    async fn publish(&self, batch: &[Arc<Event>]) -> Result<(), (usize, PublishError)> {
        let mut acks = Vec::with_capacity(batch.len());
        for event in batch {
            let message = &event.message;
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, message.id.as_str());
            headers.insert(ORIGIN_HEADER, self.origin.as_str());
            let payload = serde_json::to_vec(message).expect("a message always serializes");
            match self
                .jetstream
                .publish_with_headers(self.subject.clone(), headers, payload.into())
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => return Err((stored_before(acks).await, e)),
            }
        }
        let sent = acks.len();
        let mut stored = 0;
        for ack in acks {
            match ack.await {
                Ok(_) => stored += 1,
                Err(e) => return Err((stored, e)),
            }
        }
        counter!(telemetry::BUS_PUBLISHED).increment(sent as u64);
        Ok(())
    }
}

/// How many of the acknowledgements, from the first, came.
async fn stored_before(acks: Vec<jetstream::context::PublishAckFuture>) -> usize {
    let mut stored = 0;
    for ack in acks {
        if ack.await.is_err() {
            break;
        }
        stored += 1;
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_an_id_not_above_the_newest_from_its_process() {
        let mut newest = NewestByOrigin::default();
        assert!(newest.admits("a/1", "0002"));
        assert!(!newest.admits("a/1", "0002"), "the same id again");
        assert!(!newest.admits("a/1", "0001"), "an older one");
        assert!(newest.admits("a/1", "0003"));
        assert!(
            newest.admits("a/2", "0001"),
            "another process (a restart) has its own order"
        );
    }

    #[test]
    fn it_forgets_every_process_rather_than_grow() {
        let mut newest = NewestByOrigin::default();
        for i in 0..MAX_ORIGINS {
            assert!(newest.admits(&format!("p/{i}"), "0005"));
        }
        assert!(newest.admits("one/more", "0005"));
        assert_eq!(newest.0.len(), 1);
        assert!(newest.admits("p/0", "0001"), "forgotten");
    }
}
