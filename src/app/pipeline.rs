//! Builds the pipeline in reading order (outbox, bus, fan-out, relay with its dead-letter
//! mover, behind the store) and starts its tasks. What it returns is what HTTP needs.
//!
//! One switch chooses the outbox and the bus: with `NATS_URL` the instance joins a cluster,
//! whose outbox is the NATS stream the instances share ([`StreamOutbox`], drained by every
//! instance's [`StreamRelay`]) and whose bus reads that stream ([`NatsBus`]); without, the
//! local outbox and the in-process [`LocalBus`]. The local outbox is opened either way: in
//! cluster mode it takes no new message, and its relay stores what an earlier run of this
//! instance, on its own, left in it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::census::Census;
use crate::cluster::{Cluster, census, presence};
use crate::config::Config;
use crate::error::Chain;
use crate::hub::{Hub, QueueBounds};
use crate::integrity::Integrity;
use crate::pipeline::accept::Acceptor;
use crate::pipeline::bus::{EventBus, LocalBus, NatsBus};
use crate::pipeline::fanout;
use crate::pipeline::outbox::{OnCommit, Outbox, StreamOutbox};
use crate::pipeline::relay::stream::StreamRelay;
use crate::pipeline::relay::{Backoff, Relay};
use crate::store::{self, DeadLetters, MessageStore, Operator, StoreError, StoreHealth};

/// The outbox, inside `DATA_DIR`.
pub const OUTBOX_FILE: &str = "outbox.db";
/// Cluster mode: how long the shared consumer waits on a relay that holds a message and says
/// nothing, beyond the longest a relay can be silent (one store call, then one backoff), before
/// it hands the message to another relay.
const ACK_WAIT_MARGIN: Duration = Duration::from_secs(5);

/// The pipeline, running.
pub(super) struct Pipeline {
    pub acceptor: Arc<Acceptor>,
    pub outbox: Arc<Outbox>,
    /// Cluster mode: the outbox the instances share.
    pub stream: Option<Arc<StreamOutbox>>,
    pub store: Arc<dyn MessageStore>,
    pub store_health: Arc<StoreHealth>,
    pub dead_letters: Arc<DeadLetters>,
    pub hub: Arc<Hub>,
    pub census: Arc<Census>,
    /// `None`: one process.
    pub cluster: Option<Cluster>,
    pub bus: Arc<dyn EventBus>,
    /// Corruption the outbox or the embedded store meets while running: sticky until restart.
    pub integrity: Arc<Integrity>,
    /// The fan-out and the relay, and whatever else must run until the outbox has drained.
    pub tasks: TaskTracker,
    /// Stops [`Self::tasks`]; shutdown cancels it only after the outbox has drained.
    pub stop: CancellationToken,
}

impl Pipeline {
    /// Opens the outbox and the store, and starts the fan-out and the relay.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let integrity = Arc::new(Integrity::default());
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        // What has started stops again if a later step fails.
        let stop_if_failed = stop.clone().drop_guard();
        let backoff = Backoff::new(config.relay.retry_base, config.relay.retry_max);
        let cluster = match &config.cluster {
            Some(settings) => {
                let cluster =
                    Cluster::connect(settings, &config.instance_id, config.idempotency_window)
                        .await
                        .context("joining the cluster")?;
                tracing::info!(nats = %settings.nats_url, stream = %settings.stream, "cluster mode: the bus is the NATS stream");
                Some(cluster)
            }
            None => None,
        };
        let (bus, on_commit, stream): (Arc<dyn EventBus>, OnCommit, _) = match &cluster {
            Some(cluster) => {
                let ack_wait = config.relay.retry_max + config.store.timeout + ACK_WAIT_MARGIN;
                let stream = StreamOutbox::open(cluster, ack_wait).await?;
                let bus =
                    NatsBus::start(cluster, config.bus_capacity, backoff, &tasks, &stop).await?;
                (Arc::new(bus), Box::new(|_| {}), Some(Arc::new(stream)))
            }
            None => {
                let bus = Arc::new(LocalBus::new(config.bus_capacity));
                let publish = bus.clone();
                (bus, Box::new(move |event| publish.publish(event)), None)
            }
        };
        let outbox = Arc::new(
            Outbox::open(
                &config.data_dir.join(OUTBOX_FILE),
                config.outbox_queue,
                &config.instance_id,
                config.idempotency_window,
                on_commit,
                integrity.clone(),
            )
            .context("opening the outbox")?,
        );
        let store = store::open(&config.store, &config.data_dir, integrity.clone())
            .await
            .context("opening the store")?;
        let store_health = Arc::new(StoreHealth::default());
        let hub = Arc::new(Hub::new(
            config.socket.limits,
            QueueBounds {
                max_bytes: config.socket.queue_bytes,
                stall_timeout: config.socket.stall_timeout,
            },
        ));

        tasks.spawn(fanout::run(bus.subscribe(), hub.clone(), stop.clone()));
        if let Some(cluster) = &cluster {
            join_census(cluster, &hub, &tasks, &stop).await?;
        }
        start_relay(
            config,
            backoff,
            (&outbox, stream.as_ref()),
            &store,
            &store_health,
            &tasks,
            &stop,
        )
        .await?;
        stop_if_failed.disarm();

        Ok(Self {
            census: Arc::new(Census::new(hub.clone(), cluster.clone())),
            cluster,
            bus,
            acceptor: Arc::new(match &stream {
                Some(stream) => Acceptor::stream(stream.clone()),
                None => Acceptor::local(outbox.clone()),
            }),
            stream,
            dead_letters: Arc::new(DeadLetters::new(store.clone(), Operator::Http)),
            outbox,
            store,
            store_health,
            hub,
            integrity,
            tasks,
            stop,
        })
    }
}

/// Answers the other instances' connection counts, then announces this instance, so that
/// none waits for an answer this instance cannot give yet.
async fn join_census(
    cluster: &Cluster,
    hub: &Arc<Hub>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let requests = census::listen(cluster)
        .await
        .map_err(anyhow::Error::from_boxed)
        .context("listening for the other instances' connection counts")?;
    tasks.spawn(census::answer(
        cluster.clone(),
        requests,
        hub.clone(),
        stop.clone(),
    ));
    presence::announce(cluster)
        .await
        .map_err(anyhow::Error::from_boxed)
        .context("announcing this instance")?;
    tasks.spawn(presence::run(cluster.clone(), stop.clone()));
    Ok(())
}

/// Starts the relay (and in cluster mode the stream's) once the store's migrations are
/// applied: before serving when the store is there, else in the background, retrying while
/// messages wait in the outbox. Any other migration failure stops start-up. One [`Backoff`]
/// paces the relays' retries, the dead-letter mover, the migrations' retries and the NATS
/// bus's.
async fn start_relay(
    config: &Config,
    backoff: Backoff,
    (outbox, stream): (&Arc<Outbox>, Option<&Arc<StreamOutbox>>),
    store: &Arc<dyn MessageStore>,
    health: &Arc<StoreHealth>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let relay = Relay::new(
        outbox.clone(),
        store.clone(),
        health.clone(),
        config.relay,
        backoff,
    );
    let stream_relay = stream.map(|stream| {
        StreamRelay::new(
            stream.clone(),
            store.clone(),
            health.clone(),
            config.relay,
            backoff,
            &config.instance_id,
        )
    });
    let already_migrated = match store.migrate().await {
        Ok(applied) => {
            migrated(store.as_ref(), health, applied);
            true
        }
        Err(e @ StoreError::Unavailable(_)) => {
            health.unreachable();
            tracing::warn!(error = %Chain(&e), "the store is unavailable: serving anyway, messages wait in the outbox");
            false
        }
        Err(e) => return Err(e).context("applying the store's migrations"),
    };
    let (store, health, stop) = (store.clone(), health.clone(), stop.clone());
    tasks.spawn(async move {
        if !already_migrated {
            let failed = |e: &StoreError, failures| {
                tracing::warn!(error = %Chain(e), failures, "store migrations not applied yet, retrying");
            };
            let Some(applied) = backoff.retry(&stop, || store.migrate(), failed).await else {
                return;
            };
            migrated(store.as_ref(), &health, applied);
        }
        match stream_relay {
            Some(stream_relay) => {
                tokio::join!(relay.run(stop.clone()), stream_relay.run(stop));
            }
            None => relay.run(stop).await,
        }
    });
    Ok(())
}

fn migrated(store: &dyn MessageStore, health: &StoreHealth, applied: Vec<String>) {
    for name in applied {
        tracing::info!(migration = %name, store = store.backend(), "migration applied");
    }
    health.reachable();
    health.migrated();
}
