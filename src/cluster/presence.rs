//! Which instances are alive: each publishes a heartbeat every [`INTERVAL`] to its own subject
//! of the instances stream, which keeps one message per subject for [`TTL`]. The stream's
//! message count is then the number of instances heard from within the TTL: an instance that
//! stops gracefully removes its heartbeat at once; one that dies is forgotten within the TTL.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::error::Chain;

pub const INTERVAL: Duration = Duration::from_secs(5);
/// Three intervals: one late or lost heartbeat does not make an instance look dead.
pub const TTL: Duration = Duration::from_secs(15);

/// The instances heard from within [`TTL`], this one included.
pub async fn live(cluster: &Cluster) -> Result<u64, async_nats::Error> {
    Ok(cluster.instances.get_info().await?.state.messages)
}

/// Publishes the first heartbeat; once it is acknowledged, the others wait for this instance.
pub async fn announce(cluster: &Cluster) -> Result<(), async_nats::Error> {
    let subject = subject(cluster);
    let ack = cluster
        .jetstream
        .publish(subject, cluster.instance.clone().into())
        .await?;
    ack.await?;
    Ok(())
}

/// Beats until `stop`, then removes this instance's heartbeat.
pub async fn run(cluster: Cluster, stop: CancellationToken) {
    let mut beats = tokio::time::interval(INTERVAL);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beats.tick() => {}
            () = stop.cancelled() => break,
        }
        if let Err(e) = announce(&cluster).await {
            tracing::debug!(error = %Chain(e.as_ref()), "heartbeat not published");
            // A NATS server that restarted has forgotten the stream, kept in memory only.
            let config = cluster.instances.cached_info().config.clone();
            if let Err(e) = cluster.jetstream.get_or_create_stream(config).await {
                tracing::debug!(error = %Chain(&e), "the instances stream cannot be created yet");
            }
        }
    }
    if let Err(e) = cluster.instances.purge().filter(subject(&cluster)).await {
        tracing::debug!(error = %Chain(&e), "heartbeat not removed; it expires by itself");
    }
}

/// This process's subject: its origin in hex, since an `INSTANCE_ID` may hold characters that
/// mean something in a subject ('.', '*', '>', spaces).
fn subject(cluster: &Cluster) -> String {
    let name = &cluster.instances.cached_info().config.name;
    let hex: String = cluster.origin.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{name}.{hex}")
}
