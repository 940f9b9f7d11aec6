//! The relay in cluster mode: every instance's relay drains the NATS stream (the cluster's
//! outbox, [`StreamOutbox`]) into the store through one durable consumer that they share, so
//! each message is handed to one relay at a time and stays in the stream until a relay has
//! stored it, whichever instance accepted it and whether or not that instance still lives.
//!
//! The batching, the writers and their outage and refusal rules are the local relay's
//! ([`BatchWriter`]); what differs is the ledger ([`StreamLedger`]): an entry is acknowledged
//! to JetStream once stored; a refused one is handed back with the backoff as its redelivery
//! delay (any instance may take it then); one that spent its attempts goes to the store's dead
//! letters and is then terminated; and while the store is away, the writer holding a batch
//! tells JetStream it is still working on it, so it is not handed to another relay meanwhile.
//!
//! Attempts are counted by JetStream's deliveries: a delivery that ended because its relay
//! died (or did not answer within the consumer's `ack_wait`) counts as one, so a message the
//! store keeps refusing may reach its dead letter one attempt sooner per such loss. A message
//! the store takes is never dead-lettered.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::{AckKind, Acker};
use async_trait::async_trait;
use chrono::Utc;
use futures_util::StreamExt;
use metrics::gauge;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::writer::{BatchWriter, Ledger, Refused};
use super::{Backoff, LINGER};
use crate::config::RelaySettings;
use crate::error::Chain;
use crate::model::{DeadLetter, Failure, Message};
use crate::pipeline::outbox::StreamOutbox;
use crate::store::{MessageStore, StoreHealth};
use crate::telemetry;

/// How often the relay counts what waits in the stream and trims what was stored.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// How long a stored message stays in the stream: past JetStream's duplicate window, so that a
/// repeated publish of it is still recognised, and short enough that stored messages never
/// crowd out new ones (the stream refuses sends when full rather than drop unstored ones).
const KEEP_STORED: Duration = Duration::from_secs(10 * 60);

pub struct StreamRelay {
    outbox: Arc<StreamOutbox>,
    writer: Arc<BatchWriter<StreamLedger>>,
    settings: RelaySettings,
    backoff: Backoff,
}

/// A message the shared consumer handed to this relay.
struct StreamEntry {
    /// With its stream sequence, which the store keeps beside it.
    message: Message,
    /// Earlier deliveries of this message (see the module's doc).
    attempts: u32,
    acker: Acker,
}

struct StreamLedger {
    store: Arc<dyn MessageStore>,
    backoff: Backoff,
    /// Named in the dead letters this relay writes.
    instance: String,
}

impl StreamRelay {
    pub fn new(
        outbox: Arc<StreamOutbox>,
        store: Arc<dyn MessageStore>,
        health: Arc<StoreHealth>,
        settings: RelaySettings,
        backoff: Backoff,
        instance: &str,
    ) -> Self {
        let writer = BatchWriter {
            ledger: StreamLedger {
                store: store.clone(),
                backoff,
                instance: instance.to_string(),
            },
            store,
            health,
            backoff,
            max_attempts: settings.retry_attempts,
        };
        Self {
            outbox,
            writer: Arc::new(writer),
            settings,
            backoff,
        }
    }

    /// Hands batches from the shared consumer to at most `workers` concurrent writers until
    /// `stop`, and trims the stream meanwhile. What this relay held at `stop` and had not
    /// stored is redelivered to another relay after the consumer's `ack_wait`.
    pub async fn run(self, stop: CancellationToken) {
        let trimmer = tokio::spawn(trim(self.outbox.clone(), stop.clone()));
        let mut messages = None;
        let mut writers = JoinSet::new();
        loop {
            if writers.len() >= self.settings.workers {
                tokio::select! {
                    () = stop.cancelled() => break,
                    Some(_) = writers.join_next() => {}
                }
                continue;
            }
            let batch = tokio::select! {
                () = stop.cancelled() => break,
                batch = self.next_batch(&mut messages, &stop) => batch,
            };
            let Some(batch) = batch else { break };
            let (writer, stop) = (self.writer.clone(), stop.clone());
            // Refused entries go back to JetStream with their delay: none comes back here.
            writers.spawn(async move { writer.write(batch, &stop).await });
            while writers.try_join_next().is_some() {}
        }
        while writers.join_next().await.is_some() {}
        let _ = trimmer.await;
    }

    /// The next batch: waits for a first message, then lets up to `batch_size` gather for
    /// [`LINGER`]. `None` once `stop` came while (re)opening the consumer.
    async fn next_batch(
        &self,
        messages: &mut Option<pull::Stream>,
        stop: &CancellationToken,
    ) -> Option<Vec<StreamEntry>> {
        let mut batch = Vec::with_capacity(self.settings.batch_size);
        let mut failures = 0;
        let mut gathering_until = None;
        while batch.len() < self.settings.batch_size {
            let stream = match messages {
                Some(stream) => stream,
                None => {
                    let opened = self.backoff.retry(
                        stop,
                        || self.outbox.drain(self.settings.batch_size),
                        |e: &async_nats::Error, failures| {
                            tracing::warn!(error = %Chain(e.as_ref()), failures, "reading the stream's shared consumer, retrying");
                        },
                    );
                    messages.insert(opened.await?)
                }
            };
            let next = match gathering_until {
                None => stream.next().await,
                Some(at) => match tokio::time::timeout_at(at, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Some(Ok(delivered)) => {
                    failures = 0;
                    if let Some(entry) = entry(delivered).await {
                        batch.push(entry);
                        gathering_until.get_or_insert(Instant::now() + LINGER);
                    }
                }
                Some(Err(e)) => {
                    // NATS away: the consumer's requests time out until it is back.
                    failures += 1;
                    tracing::debug!(error = %Chain(&e), failures, "reading the stream's shared consumer");
                    if !batch.is_empty() {
                        break;
                    }
                    if !self.backoff.wait(failures, stop).await {
                        return None;
                    }
                }
                None => {
                    *messages = None;
                    if !batch.is_empty() {
                        break;
                    }
                }
            }
        }
        Some(batch)
    }
}

/// A delivery as a relay entry; a payload that is not a chatd message is terminated.
async fn entry(delivered: async_nats::jetstream::Message) -> Option<StreamEntry> {
    let (sequence, deliveries) = match delivered.info() {
        Ok(info) => (info.stream_sequence, info.delivered),
        Err(e) => {
            tracing::warn!(error = %Chain(e.as_ref()), "a delivery without its stream sequence; left for redelivery");
            return None;
        }
    };
    let (delivered, acker) = delivered.split();
    match serde_json::from_slice::<Message>(&delivered.payload) {
        Ok(mut message) => {
            message.sequence = Some(sequence);
            Some(StreamEntry {
                message,
                attempts: u32::try_from(deliveries.saturating_sub(1)).unwrap_or(u32::MAX),
                acker,
            })
        }
        Err(e) => {
            tracing::error!(error = %e, sequence, "a message on the stream is not a chatd message; dropped");
            let _ = acker.ack_with(AckKind::Term).await;
            None
        }
    }
}

#[async_trait]
impl Ledger for StreamLedger {
    type Entry = StreamEntry;

    fn message(entry: &StreamEntry) -> &Message {
        &entry.message
    }

    fn attempts(entry: &StreamEntry) -> u32 {
        entry.attempts
    }

    /// An acknowledgement that does not arrive (NATS away) only means a redelivery after
    /// `ack_wait`, and the store takes the message again as the same one.
    async fn stored(&self, entries: Vec<StreamEntry>, _stop: &CancellationToken) -> bool {
        for entry in entries {
            if let Err(e) = entry.acker.ack().await {
                tracing::debug!(error = %Chain(e.as_ref()), "acknowledging a stored message failed; it comes again");
            }
        }
        true
    }

    async fn refused(
        &self,
        entry: StreamEntry,
        failure: Failure,
        attempts: u32,
        dead: bool,
        stop: &CancellationToken,
    ) -> Refused<StreamEntry> {
        if !dead {
            let again = AckKind::Nak(Some(self.backoff.delay(attempts)));
            if let Err(e) = entry.acker.ack_with(again).await {
                tracing::debug!(error = %Chain(e.as_ref()), "handing a refused message back failed; it comes again after ack_wait");
            }
            return Refused::Recorded;
        }
        let now = Utc::now();
        let letter = DeadLetter {
            message: entry.message,
            error: failure,
            attempts,
            // The earlier attempts were made wherever JetStream delivered them; this relay
            // knows only its own.
            first_failed_at: now,
            last_failed_at: now,
            instance: self.instance.clone(),
        };
        let kept = self.backoff.retry(
            stop,
            || async {
                // Still working on it, however long the store takes the dead letter.
                let _ = entry.acker.ack_with(AckKind::Progress).await;
                self.store.put_dead_letter(&letter).await
            },
            |e, failures| {
                tracing::warn!(error = %Chain(e), failures, "a dead letter waits for the store");
            },
        );
        if kept.await.is_none() {
            return Refused::Stopped;
        }
        tracing::info!(id = %letter.id(), kind = %letter.error.kind, "dead letter stored");
        let _ = entry.acker.ack_with(AckKind::Term).await;
        Refused::Recorded
    }

    async fn waiting(&self, entries: Vec<&StreamEntry>) {
        for entry in entries {
            let _ = entry.acker.ack_with(AckKind::Progress).await;
        }
    }
}

/// At start and every [`TRIM_EVERY`]: publishes how many messages wait in the stream to be stored, and
/// removes from the stream what was stored more than [`KEEP_STORED`] ago. Every instance does
/// it; a purge below what was purged already changes nothing.
async fn trim(outbox: Arc<StreamOutbox>, stop: CancellationToken) {
    // The shared consumer's ack floor as it was at each tick: every message up to it is stored
    // (or dead-lettered), and the oldest of these past KEEP_STORED may go.
    let mut floors: VecDeque<(Instant, u64)> = VecDeque::new();
    // The first tick is at once: /health and the gauge have a count from the start.
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let progress = match outbox.progress().await {
            Ok(progress) => progress,
            Err(e) => {
                tracing::debug!(error = %Chain(e.as_ref()), "reading the shared consumer's progress");
                continue;
            }
        };
        gauge!(telemetry::STREAM_PENDING).set(progress.waiting as f64);
        let now = Instant::now();
        floors.push_back((now, progress.floor));
        let mut purge_through = None;
        while let Some(&(at, floor)) = floors.front()
            && now.duration_since(at) >= KEEP_STORED
        {
            purge_through = Some(floor);
            floors.pop_front();
        }
        if let Some(floor) = purge_through
            && let Err(e) = outbox.purge_through(floor).await
        {
            tracing::warn!(error = %Chain(e.as_ref()), "trimming stored messages from the stream");
        }
    }
}
