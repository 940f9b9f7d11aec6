//! The cluster's bus (`NATS_URL`): every instance reads the whole JetStream stream that the
//! instances append accepted messages to (the cluster's outbox, `outbox::StreamOutbox`), from
//! the moment it started, into a local broadcast channel for its fan-out. Its own messages come
//! back that way too, so every socket of a cluster sees messages in the stream's one order.
//!
//! Exactly once per instance: the reader is an ordered consumer, which tracks stream sequences
//! and recreates itself after the last one it saw, so it neither skips nor repeats one through
//! a NATS restart; and a message whose id it still remembers (below) is a repeated publish
//! (an idempotent send published again after JetStream's duplicate window), not handed on.
//!
//! The local broadcast channel holds `BUS_CAPACITY` events, exactly as [`super::LocalBus`]'s.
//! The reader also remembers the newest [`REMEMBERED`] events it handed on, in the stream's
//! order, for reconnect recovery ([`EventBus::recent`]): a socket that reconnects after one of
//! them gets what followed it exactly, whichever instance accepted each.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use chrono::Utc;
use futures_util::StreamExt;
use metrics::counter;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{EventBus, Recent, Since, Subscription};
use crate::cluster::Cluster;
use crate::error::Chain;
use crate::model::{Event, Message};
use crate::pipeline::relay::Backoff;
use crate::telemetry;

/// Events remembered for reconnect recovery: about 6 MiB of typical messages; at 1,000
/// messages/s across the cluster, the last 16 s.
const REMEMBERED: usize = 16_384;
pub struct NatsBus {
    local: broadcast::Sender<Arc<Event>>,
    remembered: Arc<Mutex<Remembered>>,
}

#[derive(Debug, thiserror::Error)]
#[error("reading JetStream stream {stream}")]
pub struct ReadError {
    stream: String,
    #[source]
    source: async_nats::Error,
}

impl NatsBus {
    /// Starts reading the stream from now on, on `tasks` until `stop`: before this instance
    /// accepts anything, so it misses none of its own messages.
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
        let remembered = Arc::new(Mutex::new(Remembered {
            events: VecDeque::new(),
            ids: HashSet::new(),
            through: last_seen,
        }));
        let reader = Reader {
            cluster: cluster.clone(),
            local: local.clone(),
            remembered: remembered.clone(),
            backoff,
            last_seen,
        };
        tasks.spawn(reader.run(messages, stop.clone()));
        Ok(Self { local, remembered })
    }
}

impl EventBus for NatsBus {
    fn subscribe(&self) -> Subscription {
        Subscription(self.local.subscribe())
    }

    fn recent(&self, since: Since<'_>, keep: &dyn Fn(&Event) -> bool) -> Option<Recent> {
        let remembered = self.remembered.lock().expect("remembered events lock");
        let events = &remembered.events;
        let skip = match since {
            Since::Id(id) => events.iter().rposition(|event| event.message.id == id)? + 1,
            Since::Sequence(after) => events.partition_point(|event| sequence(event) <= after),
        };
        Some(Recent {
            events: events
                .iter()
                .skip(skip)
                .filter(|event| keep(event))
                .cloned()
                .collect(),
            from: events
                .front()
                .map_or(remembered.through + 1, |event| sequence(event)),
            through: remembered.through,
        })
    }
}

fn sequence(event: &Event) -> u64 {
    event.message.sequence.unwrap_or_default()
}

/// The newest events the reader handed on, their ids, and the sequence of the last.
struct Remembered {
    events: VecDeque<Arc<Event>>,
    ids: HashSet<String>,
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
    local: broadcast::Sender<Arc<Event>>,
    remembered: Arc<Mutex<Remembered>>,
    backoff: Backoff,
    last_seen: u64,
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
        let message = match serde_json::from_slice::<Message>(&message.payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "a message on the stream is not a chatd message; skipped");
                return;
            }
        };
        // Remembered and handed on under one lock: a recovery that reads what is remembered
        // sees exactly the events its socket will not get live.
        let mut remembered = self.remembered.lock().expect("remembered events lock");
        remembered.through = self.last_seen;
        if !remembered.ids.insert(message.id.clone()) {
            tracing::debug!(id = %message.id, "a repeated publish; skipped");
            return;
        }
        let event = Arc::new(received(message, self.last_seen));
        if remembered.events.len() == REMEMBERED
            && let Some(oldest) = remembered.events.pop_front()
        {
            remembered.ids.remove(&oldest.message.id);
        }
        remembered.events.push_back(event.clone());
        let _ = self.local.send(event);
    }
}

/// An event read from the stream. Its accepted instant is rebuilt from the message's time, so
/// delivery latency counts from acceptance on whichever instance took it (within the clocks'
/// skew between machines).
fn received(mut message: Message, sequence: u64) -> Event {
    let age = (Utc::now() - message.created_at)
        .to_std()
        .unwrap_or(Duration::ZERO);
    let now = Instant::now();
    message.sequence = Some(sequence);
    Event {
        accepted_at: now.checked_sub(age).unwrap_or(now),
        message,
    }
}
