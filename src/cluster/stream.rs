//! The JetStream stream the instances share: created by whichever instance starts first,
//! checked by every other.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::ClusterSettings;

/// How long JetStream remembers a message id to drop a repeated publish of it: a publish that
/// is retried after a lost acknowledgement is stored once. (A repeat from longer ago is caught
/// by the readers; see `pipeline::bus::nats`.)
const DUPLICATE_WINDOW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("creating or reading JetStream stream {name}")]
    Create {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error(
        "JetStream stream {name} exists but does not take subject {subject} (it takes {subjects:?}): \
         choose another NATS_STREAM or remove that stream"
    )]
    Foreign {
        name: String,
        subject: String,
        subjects: Vec<String>,
    },
}

/// The subject an instance publishes accepted messages on.
pub fn subject(stream: &str) -> String {
    format!("{stream}.messages")
}

/// The stream of accepted messages.
pub async fn messages(
    jetstream: &jetstream::Context,
    settings: &ClusterSettings,
) -> Result<stream::Stream, StreamError> {
    let name = &settings.stream;
    let config = stream::Config {
        name: name.clone(),
        description: Some("chatd: accepted messages, the cluster's outbox".into()),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        // The stream is the cluster's outbox, so nothing leaves it before a relay has stored it
        // (the relays remove what they stored, see `pipeline::relay::stream`): when it is full,
        // JetStream refuses new messages (their senders hear 503) rather than drop old ones.
        max_bytes: i64::try_from(settings.max_bytes).unwrap_or(i64::MAX),
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    let stream = ensure(jetstream, config, &subject(name)).await?;
    let kept = &stream.cached_info().config;
    if kept.discard != stream::DiscardPolicy::New || !kept.max_age.is_zero() {
        tracing::warn!(
            stream = %name,
            "the stream drops old messages (an earlier chatd's settings): one the relays have not stored yet could be lost; \
             set it to discard new messages with no age limit (nats stream edit) or remove it"
        );
    }
    Ok(stream)
}

/// The heartbeats of the live instances: one message per instance (the newest), each gone
/// `ttl` after it was sent, so the stream's message count is the number of live instances.
/// In memory: it is rebuilt within one heartbeat after a NATS restart.
pub async fn instances(
    jetstream: &jetstream::Context,
    settings: &ClusterSettings,
    ttl: Duration,
) -> Result<stream::Stream, StreamError> {
    let name = format!("{}_INSTANCES", settings.stream);
    let config = stream::Config {
        name: name.clone(),
        description: Some("chatd: a heartbeat per live instance".into()),
        subjects: vec![format!("{name}.*")],
        storage: stream::StorageType::Memory,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_messages_per_subject: 1,
        max_age: ttl,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    ensure(jetstream, config, &format!("{name}.x")).await
}

/// The idempotency keys' claims (see `pipeline::outbox::stream`): one message per claimed key
/// (its subject), each kept for `window`, on disk beside the messages.
pub async fn claims(
    jetstream: &jetstream::Context,
    settings: &ClusterSettings,
    window: Duration,
) -> Result<stream::Stream, StreamError> {
    let name = format!("{}_KEYS", settings.stream);
    let config = stream::Config {
        name: name.clone(),
        description: Some("chatd: Idempotency-Key claims, each with its first message".into()),
        subjects: vec![format!("{name}.*")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_messages_per_subject: 1,
        max_age: window,
        num_replicas: settings.replicas,
        ..Default::default()
    };
    ensure(jetstream, config, &format!("{name}.x")).await
}

/// Creates the stream unless an instance already has, then checks that it takes `subject`
/// (another application's stream of that name would not).
async fn ensure(
    jetstream: &jetstream::Context,
    config: stream::Config,
    subject: &str,
) -> Result<stream::Stream, StreamError> {
    let (name, replicas) = (config.name.clone(), config.num_replicas);
    let stream = jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|source| StreamError::Create {
            name: name.clone(),
            source,
        })?;
    let config = &stream.cached_info().config;
    if !config.subjects.iter().any(|s| covers(s, subject)) {
        return Err(StreamError::Foreign {
            name,
            subject: subject.to_string(),
            subjects: config.subjects.clone(),
        });
    }
    if config.num_replicas != replicas {
        tracing::warn!(
            stream = %name,
            replicas = config.num_replicas,
            configured = replicas,
            "the stream exists with another number of replicas than NATS_REPLICAS; it keeps its own"
        );
    }
    Ok(stream)
}

/// Whether a subject filter matches a subject: tokens split on '.', `*` matches one token and
/// a final `>` one or more.
fn covers(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn subject_filters_match_as_nats_matches_them() {
        assert!(covers("CHAT.>", "CHAT.messages"));
        assert!(covers("CHAT.*", "CHAT.messages"));
        assert!(covers("CHAT.messages", "CHAT.messages"));
        assert!(covers(">", "CHAT.messages"));
        assert!(!covers("CHAT.>", "CHAT"));
        assert!(!covers("CHAT.*", "CHAT.messages.x"));
        assert!(!covers("OTHER.>", "CHAT.messages"));
        assert!(!covers("CHAT.messages.x", "CHAT.messages"));
    }
}
