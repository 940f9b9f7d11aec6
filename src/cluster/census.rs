//! How many sockets users have open, across the cluster (`POST /api/connections`): the
//! instance asked counts its own, asks every other on the census subject, and adds the
//! answers of as many instances as [`presence`](super::presence) says are alive, waiting at
//! most [`GATHER_TIMEOUT`]. A dead instance's sockets are never counted (it cannot answer);
//! until its heartbeat expires, a count waits out the timeout for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Subscriber};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Cluster, ORIGIN_HEADER, presence};
use crate::error::Chain;
use crate::hub::Hub;
use crate::model::UserId;

/// How long a count waits for the other instances' answers.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(1);

/// Counts sockets: this instance's hub, and the other instances' in cluster mode.
pub struct Census {
    hub: Arc<Hub>,
    cluster: Option<Cluster>,
}

impl Census {
    pub fn new(hub: Arc<Hub>, cluster: Option<Cluster>) -> Self {
        Self { hub, cluster }
    }

    /// Each user's open sockets, in the order asked. When NATS cannot be asked, the count is
    /// this instance's alone.
    pub async fn count(&self, users: &[UserId]) -> Vec<u64> {
        let mut counts = local(&self.hub, users.iter().map(UserId::as_str));
        if let Some(cluster) = &self.cluster
            && let Err(e) = gather(cluster, users, &mut counts).await
        {
            tracing::warn!(error = %Chain(e.as_ref()), "the other instances could not be asked; counting this one's sockets only");
        }
        counts
    }
}

fn local<'a>(hub: &Hub, users: impl Iterator<Item = &'a str>) -> Vec<u64> {
    users.map(|user| hub.connections(user) as u64).collect()
}

/// Adds the other live instances' counts to `counts`.
async fn gather(
    cluster: &Cluster,
    users: &[UserId],
    counts: &mut [u64],
) -> Result<(), async_nats::Error> {
    let others = presence::live(cluster).await?.saturating_sub(1);
    if others == 0 {
        return Ok(());
    }
    let client = &cluster.client;
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    let asked: Vec<&str> = users.iter().map(UserId::as_str).collect();
    client
        .publish_with_reply_and_headers(
            cluster.census_subject.clone(),
            inbox,
            origin(cluster),
            serde_json::to_vec(&asked)?.into(),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + GATHER_TIMEOUT;
    let mut answered = HashSet::new();
    while (answered.len() as u64) < others {
        let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await else {
            tracing::debug!(
                answered = answered.len(),
                others,
                "not every instance answered the count in time"
            );
            break;
        };
        let from = answer.headers.as_ref().and_then(|h| h.get(ORIGIN_HEADER));
        let Some(from) = from.map(|f| f.to_string()) else {
            continue;
        };
        let Ok(theirs) = serde_json::from_slice::<Vec<u64>>(&answer.payload) else {
            continue;
        };
        if theirs.len() == counts.len() && answered.insert(from) {
            for (count, their) in counts.iter_mut().zip(theirs) {
                *count += their;
            }
        }
    }
    Ok(())
}

/// Subscribes to the other instances' counts; once it returns, the server has the
/// subscription.
pub async fn listen(cluster: &Cluster) -> Result<Subscriber, async_nats::Error> {
    let requests = cluster
        .client
        .subscribe(cluster.census_subject.clone())
        .await?;
    cluster.client.flush().await?;
    Ok(requests)
}

/// Answers the other instances' counts with this instance's sockets, until `stop`.
pub async fn answer(
    cluster: Cluster,
    mut requests: Subscriber,
    hub: Arc<Hub>,
    stop: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            request = requests.next() => request,
            () = stop.cancelled() => return,
        };
        let Some(request) = request else { return };
        let from = request.headers.as_ref().and_then(|h| h.get(ORIGIN_HEADER));
        let own = from.is_some_and(|f| f.as_str() == cluster.origin);
        let (Some(reply), false) = (request.reply, own) else {
            continue;
        };
        let Ok(users) = serde_json::from_slice::<Vec<String>>(&request.payload) else {
            continue;
        };
        let counts = local(&hub, users.iter().map(String::as_str));
        let payload = serde_json::to_vec(&counts).expect("numbers serialize");
        if let Err(e) = cluster
            .client
            .publish_with_headers(reply, origin(&cluster), payload.into())
            .await
        {
            tracing::debug!(error = %Chain(&e), "a connection count could not be answered");
        }
    }
}

fn origin(cluster: &Cluster) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ORIGIN_HEADER, cluster.origin.as_str());
    headers
}
