//! The bus's delivery consumer: each event is serialized once and its bytes are shared by every
//! socket of every participant except the sender's.

use std::sync::Arc;

use metrics::counter;
use tokio_util::sync::CancellationToken;

use super::bus::{Received, Subscription};
use crate::hub::{Frame, Hub};
use crate::model::Event;
use crate::telemetry;

pub async fn run(mut subscription: Subscription, hub: Arc<Hub>, stop: CancellationToken) {
    loop {
        let received = tokio::select! {
            received = subscription.recv() => received,
            () = stop.cancelled() => break,
        };
        match received {
            Some(Received::Event(event)) => deliver(&hub, &event),
            Some(Received::Missed(missed)) => {
                counter!(telemetry::FANOUT_MISSED).increment(missed);
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
        sequence: event.message.sequence,
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::SocketLimits;
    use crate::hub::QueueBounds;
    use crate::model::{Channel, Message, UserId};
    use crate::pipeline::bus::{EventBus, LocalBus};

    #[tokio::test]
    async fn a_fan_out_that_fell_behind_the_bus_leaves_no_socket_with_a_silent_gap() {
        let hub = Arc::new(Hub::new(
            SocketLimits {
                per_user: 4,
                total: 8,
            },
            QueueBounds {
                max_bytes: 1 << 20,
                stall_timeout: Duration::from_secs(60),
            },
        ));
        let (alice, bob) = (
            UserId::parse("alice").unwrap(),
            UserId::parse("bob").unwrap(),
        );
        let (_registration, mut frames) = hub.register(bob.clone()).unwrap();
        let bus = LocalBus::new(2);
        let subscription = bus.subscribe();
        // Five events on a bus that keeps two, before the fan-out reads any: it must skip.
        let channel = Channel::new(vec![alice.clone(), bob], 2).unwrap();
        for i in 0..5 {
            bus.publish(Arc::new(Event {
                message: Message::accept(&alice, &channel, format!("m{i}")),
                accepted_at: Instant::now(),
            }));
        }
        let stop = CancellationToken::new();
        let fanout = tokio::spawn(run(subscription, hub.clone(), stop.clone()));

        let mut batch = Vec::new();
        let taken = frames.recv_many(&mut batch, 8).await;
        assert_eq!(
            taken, 0,
            "the skip reaches the socket before any later frame"
        );
        assert!(frames.lost(), "the socket is told it missed frames (4009)");
        assert_eq!(hub.open(), 0, "and it has left the hub");
        stop.cancel();
        fanout.await.unwrap();
    }
}
