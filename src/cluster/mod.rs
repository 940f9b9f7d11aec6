//! Cluster mode (`NATS_URL`): the instances of one chat service meet on a NATS server with
//! JetStream. This module connects an instance and makes sure the streams they share exist;
//! the bus (`pipeline::bus::NatsBus`) carries messages on one, [`presence`] keeps the other
//! (which instances are alive), and [`census`] counts sockets across the instances.

pub mod census;
pub mod presence;
mod stream;

use std::time::Duration;

use async_nats::{Event, jetstream};
use tokio::sync::watch;

use crate::config::ClusterSettings;

pub use stream::StreamError;

/// The header that names the process that sent a message: [`Cluster::origin`].
pub const ORIGIN_HEADER: &str = "Chatd-Origin";

/// One instance's connection to the cluster.
#[derive(Clone)]
pub struct Cluster {
    /// This instance's `INSTANCE_ID`.
    pub instance: String,
    /// This process, among all that ever joined the cluster: `INSTANCE_ID/<random>`, the
    /// random part new at each start. What instances tell each other apart by, so that a
    /// restart, or two instances given one `INSTANCE_ID` by mistake, never look like one.
    pub origin: String,
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    /// The stream every instance publishes accepted messages to.
    pub stream: jetstream::stream::Stream,
    /// The subject this instance publishes accepted messages on, inside the stream.
    pub subject: String,
    /// The live instances' heartbeats.
    pub instances: jetstream::stream::Stream,
    /// The idempotency keys' claims, each on a subject of its own.
    pub claims: jetstream::stream::Stream,
    /// Where instances ask each other how many sockets users have (core NATS, outside any
    /// stream).
    pub census_subject: String,
    /// How many times the client has connected: it changes at every reconnect, after which
    /// what lived only in the server's memory (an ephemeral consumer) may be gone.
    pub connections: watch::Receiver<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("NATS at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl Cluster {
    /// Whether the client is connected to NATS now (it reconnects by itself).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Connects and creates the streams if they are not there yet (idempotency keys kept for
    /// `key_window`), all within `NATS_CONNECT_TIMEOUT`. Once connected, the client reconnects
    /// by itself for as long as the instance runs.
    pub async fn connect(
        settings: &ClusterSettings,
        instance: &str,
        key_window: Duration,
    ) -> Result<Self, ClusterError> {
        let timeout = settings.connect_timeout;
        let url = settings.nats_url.clone();
        let (connected, connections) = watch::channel(0);
        let joined = async {
            let client = async_nats::ConnectOptions::new()
                .name(format!("chatd {instance}"))
                .connection_timeout(timeout)
                .event_callback(move |event| {
                    let connected = connected.clone();
                    async move { heard(event, &connected) }
                })
                .connect(url.as_str())
                .await
                .map_err(|source| match source.kind() {
                    async_nats::ConnectErrorKind::TimedOut => ClusterError::Timeout {
                        url: url.clone(),
                        timeout,
                    },
                    _ => ClusterError::Connect {
                        url: url.clone(),
                        source,
                    },
                })?;
            let jetstream = jetstream::new(client.clone());
            let stream = stream::messages(&jetstream, settings).await?;
            let instances = stream::instances(&jetstream, settings, presence::TTL).await?;
            let claims = stream::claims(&jetstream, settings, key_window).await?;
            Ok(Self {
                instance: instance.to_string(),
                origin: format!("{instance}/{:016x}", rand::random::<u64>()),
                client,
                jetstream,
                stream,
                subject: stream::subject(&settings.stream),
                instances,
                claims,
                census_subject: format!("_CHATD.{}.connections", settings.stream),
                connections,
            })
        };
        tokio::time::timeout(timeout, joined)
            .await
            .unwrap_or(Err(ClusterError::Timeout { url, timeout }))
    }
}

/// The client's connection events, logged for the operator and counted for the bus.
fn heard(event: Event, connected: &watch::Sender<u64>) {
    match event {
        Event::Connected => {
            metrics::gauge!(crate::telemetry::BUS_CONNECTED).set(1.0);
            connected.send_modify(|n| *n += 1);
            tracing::info!(connections = *connected.borrow(), "connected to NATS");
        }
        Event::Disconnected => {
            metrics::gauge!(crate::telemetry::BUS_CONNECTED).set(0.0);
            tracing::warn!("disconnected from NATS: reconnecting; messages wait to be published");
        }
        Event::LameDuckMode => tracing::warn!("the NATS server is shutting down (lame duck mode)"),
        // Repeats every attempt while NATS is away; the disconnection said it once.
        other => tracing::debug!(event = %other, "NATS client event"),
    }
}
