//! The cluster's outbox (`NATS_URL`): the JetStream stream every instance shares. A message is
//! answered `202` only once JetStream has stored it (on `NATS_REPLICAS` servers), so an
//! acknowledged message never lives on one instance's disk; the relays of all instances drain
//! the stream into the store through one shared consumer (`relay::stream`), and every
//! instance's bus reads it for live delivery.
//!
//! Idempotency keys hold across instances in a stream of claims beside it, one subject per
//! key, each kept for `IDEMPOTENCY_WINDOW`: the first send with a key claims it with the
//! message it is about to publish (a publish that JetStream takes only while the key's subject
//! is empty, so only one instance can win), then publishes, then marks the claim published
//! (a publish that takes only over that claim). A repeat finds the claim and answers with its
//! message; if that message was never marked published (its instance died or lost NATS in
//! between), the repeat publishes it, under the same `Nats-Msg-Id`, so that the first send's
//! message is durable before anyone hears `202` for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use metrics::counter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Appended, Draft, OutboxError};
use crate::cluster::Cluster;
use crate::error::Chain;
use crate::model::{Message, UserId};
use crate::telemetry;

/// The shared consumer through which the relays drain the stream into the store.
const DRAIN_CONSUMER: &str = "chatd-store";
/// Most messages handed out by the shared consumer and not yet stored, across all instances:
/// beyond it, JetStream hands out no more until some are acknowledged.
const MAX_IN_FLIGHT: i64 = 50_000;

/// How many times a send looks for a claim that vanished between its create and its read
/// (the key expired in between) before it gives up with a 503.
const CLAIM_ATTEMPTS: usize = 3;

pub struct StreamOutbox {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subject: String,
    stream: stream::Stream,
    claims: stream::Stream,
    drain: jetstream::consumer::PullConsumer,
    /// What [`Self::progress`] last read as waiting; `u64::MAX` before the first read.
    waiting: AtomicU64,
}

/// How far the relays have drained the stream.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Every message up to this sequence is stored (or dead-lettered).
    pub floor: u64,
    /// Messages not stored yet: never handed out, or handed out and not acknowledged.
    pub waiting: u64,
}

/// An idempotency key's claim: the first message sent with it, and whether it is in the stream.
#[derive(Serialize, Deserialize)]
struct Claim {
    message: Message,
    published: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("opening the relays' shared consumer of JetStream stream {stream}")]
pub struct OpenError {
    stream: String,
    #[source]
    source: async_nats::Error,
}

impl StreamOutbox {
    /// Opens the relays' shared consumer (creating it if no instance has yet), which hands a
    /// message to another relay when the one holding it said nothing for `ack_wait`.
    pub async fn open(cluster: &Cluster, ack_wait: Duration) -> Result<Self, OpenError> {
        let drain = cluster
            .stream
            .get_or_create_consumer(
                DRAIN_CONSUMER,
                pull::Config {
                    durable_name: Some(DRAIN_CONSUMER.into()),
                    description: Some("chatd: every instance's relay, into the store".into()),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait,
                    max_ack_pending: MAX_IN_FLIGHT,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| OpenError {
                stream: cluster.stream.cached_info().config.name.clone(),
                source: e.into(),
            })?;
        Ok(Self {
            client: cluster.client.clone(),
            jetstream: cluster.jetstream.clone(),
            subject: cluster.subject.clone(),
            stream: cluster.stream.clone(),
            claims: cluster.claims.clone(),
            drain,
            waiting: AtomicU64::new(u64::MAX),
        })
    }

    /// Gives a draft its id and publishes it, returning once JetStream has stored it; with an
    /// idempotency key, a repeat gets the first message back instead.
    pub async fn append(&self, draft: Draft) -> Result<Appended, OutboxError> {
        // While the client reconnects it would hold the publish and send it later, after its
        // sender heard 503 and perhaps sent it again: refused at once instead.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(OutboxError::Stream("not connected to NATS".into()));
        }
        let mut message = Message::accept(&draft.sender, &draft.channel, draft.content.clone());
        let Some(key) = &draft.idempotency_key else {
            self.publish(&message).await?;
            return Ok(Appended {
                message,
                repeated: false,
            });
        };
        // One subject per claim: the claims stream's name, a dot, the claim's name.
        let stream = &self.claims.cached_info().config.name;
        let subject = format!("{stream}.{}", claim_name(&draft.sender, key));
        for _ in 0..CLAIM_ATTEMPTS {
            let claim = Claim {
                message,
                published: false,
            };
            if let Some(claimed) = self.put_claim(&subject, &claim, 0).await? {
                self.publish(&claim.message).await?;
                self.mark_published(&subject, &claim.message, claimed).await;
                return Ok(Appended {
                    message: claim.message,
                    repeated: false,
                });
            }
            message = claim.message;
            let first = match self.claims.get_last_raw_message_by_subject(&subject).await {
                Ok(first) => first,
                // Expired between the claim and this read: claim it again.
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(OutboxError::Stream(e.into())),
            };
            let claim: Claim = serde_json::from_slice(&first.payload)
                .map_err(|e| OutboxError::Stream(e.into()))?;
            if !draft.matches(&claim.message) {
                return Err(OutboxError::KeyReused);
            }
            if !claim.published {
                self.publish(&claim.message).await?;
                self.mark_published(&subject, &claim.message, first.sequence)
                    .await;
            }
            return Ok(Appended {
                message: claim.message,
                repeated: true,
            });
        }
        Err(OutboxError::Stream(
            "the idempotency key's claim expired at every attempt".into(),
        ))
    }

    /// Writes a claim over the one at sequence `over` on its subject (0: none yet), and
    /// returns its sequence; `None` if another claim came first.
    async fn put_claim(
        &self,
        subject: &str,
        claim: &Claim,
        over: u64,
    ) -> Result<Option<u64>, OutboxError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            over.to_string().as_str(),
        );
        let payload = serde_json::to_vec(claim).expect("a claim always serializes");
        match self.stored(subject.to_string(), headers, payload).await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(OutboxError::Stream(e.into())),
        }
    }

    /// Publishes to `subject` and waits until JetStream has stored it.
    async fn stored(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<PublishAck, PublishError> {
        self.jetstream
            .publish_with_headers(subject, headers, payload.into())
            .await?
            .await
    }

    /// Publishes a message with its id as `Nats-Msg-Id` (JetStream keeps one copy of a repeat
    /// within its duplicate window) and waits until the stream has it.
    async fn publish(&self, message: &Message) -> Result<(), OutboxError> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message.id.as_str());
        let payload = serde_json::to_vec(message).expect("a message always serializes");
        match self.stored(self.subject.clone(), headers, payload).await {
            Ok(_) => {
                counter!(telemetry::BUS_PUBLISHED).increment(1);
                Ok(())
            }
            Err(e) => {
                counter!(telemetry::BUS_PUBLISH_FAILURES).increment(1);
                Err(OutboxError::Stream(e.into()))
            }
        }
    }

    /// Marks a claim's message as in the stream. Failing here costs nothing but a publish:
    /// a repeat of the key publishes the message again, and JetStream keeps one copy.
    async fn mark_published(&self, subject: &str, message: &Message, claimed: u64) {
        let claim = Claim {
            message: message.clone(),
            published: true,
        };
        if let Err(e) = self.put_claim(subject, &claim, claimed).await {
            tracing::debug!(error = %Chain(&e), "marking an idempotency key's message published failed");
        }
    }

    /// The shared consumer's messages for one relay, `batch` requested at a time.
    pub async fn drain(&self, batch: usize) -> Result<pull::Stream, async_nats::Error> {
        Ok(self
            .drain
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await?)
    }

    /// How far the relays have drained the stream, from the shared consumer's state.
    pub async fn progress(&self) -> Result<Progress, async_nats::Error> {
        let info = self.drain.get_info().await?;
        let progress = Progress {
            floor: info.ack_floor.stream_sequence,
            waiting: info.num_pending + info.num_ack_pending as u64,
        };
        self.waiting.store(progress.waiting, Ordering::Relaxed);
        Ok(progress)
    }

    /// How many messages waited in the stream to be stored when last read (the relay reads it
    /// every few seconds); `None` before the first read.
    pub fn waiting(&self) -> Option<u64> {
        Some(self.waiting.load(Ordering::Relaxed)).filter(|&n| n != u64::MAX)
    }

    /// Removes every message up to `sequence`: the relays stored them.
    pub async fn purge_through(&self, sequence: u64) -> Result<(), async_nats::Error> {
        self.stream.purge().sequence(sequence + 1).await?;
        Ok(())
    }

    /// The messages with a sequence in `(after, before)` that `keep` keeps, in stream order:
    /// what a reconnect needs that the store may not have yet and the bus no longer remembers.
    /// Reads at most `most` of them before giving up with `None`.
    pub async fn scan(
        &self,
        after: u64,
        before: u64,
        most: u64,
        keep: &(dyn Fn(&Message) -> bool + Sync),
    ) -> Result<Option<Vec<Message>>, async_nats::Error> {
        if before <= after + 1 {
            return Ok(Some(Vec::new()));
        }
        if before - after - 1 > most {
            return Ok(None);
        }
        let mut found = Vec::new();
        let mut messages = self
            .stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await?
            .messages()
            .await?;
        while let Some(delivered) = messages.next().await {
            let delivered = delivered?;
            let sequence = delivered.info()?.stream_sequence;
            if sequence >= before {
                break;
            }
            if let Ok(mut message) = serde_json::from_slice::<Message>(&delivered.payload) {
                message.sequence = Some(sequence);
                if keep(&message) {
                    found.push(message);
                }
            }
            if sequence + 1 >= before {
                break;
            }
        }
        Ok(Some(found))
    }
}

/// A claim's name, the last token of its subject: a digest of the sender and its key, since
/// an `Idempotency-Key` may hold characters a NATS subject may not.
fn claim_name(sender: &UserId, key: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(sender.as_str().as_bytes());
    digest.update([0]);
    digest.update(key.as_bytes());
    digest
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_named_by_sender_and_key_in_characters_nats_takes() {
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let name = claim_name(&alice, "order 7/ä*>");
        assert_eq!(name.len(), 64);
        assert!(name.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(name, claim_name(&alice, "order 7/ä*>"));
        assert_ne!(name, claim_name(&bob, "order 7/ä*>"));
        assert_ne!(
            claim_name(&alice, "ab"),
            claim_name(&UserId::parse("alicea").unwrap(), "b")
        );
    }
}
