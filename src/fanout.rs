//! The bus's delivery consumer: each event is serialized once and its bytes are shared by every
//! socket of every participant except the sender's.

use std::sync::Arc;

use ::metrics::counter;
use tokio_util::sync::CancellationToken;

use crate::bus::{Received, Subscription};
use crate::hub::{Frame, Hub};
use crate::metrics;
use crate::model::Event;

pub async fn run(mut subscription: Subscription, hub: Arc<Hub>, stop: CancellationToken) {
    loop {
        let received = tokio::select! {
            received = subscription.recv() => received,
            () = stop.cancelled() => break,
        };
        match received {
            Some(Received::Event(event)) => deliver(&hub, &event),
            Some(Received::Missed(missed)) => {
                counter!(metrics::FANOUT_MISSED).increment(missed);
                // Any socket may have needed what was skipped: none is left with a silent gap.
                let sockets = hub.lose_all();
                tracing::warn!(
                    missed,
                    sockets,
                    "fan-out fell behind the bus; every socket is told to reconnect with since (4009)"
                );
            }
            None => break,
        }
    }
}

fn deliver(hub: &Hub, event: &Event) {
    let message = &event.message;
    let recipients = message
        .participants
        .iter()
        .map(String::as_str)
        .filter(|p| *p != message.sender);
    let frame = Frame {
        id: Arc::from(message.id.as_str()),
        text: serde_json::to_string(message)
            .expect("a message always serializes")
            .into(),
        accepted_at: event.accepted_at,
    };
    let delivery = hub.deliver(recipients, &frame);
    if delivery.evicted > 0 {
        tracing::info!(sockets = delivery.evicted, "closing slow consumers");
    }
    if delivery.lost > 0 {
        tracing::info!(
            sockets = delivery.lost,
            "queues over their bound while still reading: those sockets are told to reconnect with since"
        );
    }
}
