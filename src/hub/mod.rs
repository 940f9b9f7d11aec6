//! The sockets connected to this instance, by user. The fan-out hands each socket's writer task
//! a frame without waiting: a socket that stopped reading is evicted, never waited for.

mod prelude;
mod queue;
mod socket;

use std::borrow::Borrow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio_util::sync::CancellationToken;

use crate::config::SocketLimits;
use crate::model::UserId;

pub use prelude::{Early, Interrupted, Prelude, Seam};
pub use queue::{Offer, QueueBounds, Receiver};
pub use socket::run_socket;

/// One serialized message, shared by every socket it goes to.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The message's id, to recognise it at a recovery's seam.
    pub id: Arc<str>,
    pub text: Utf8Bytes,
    pub accepted_at: Instant,
    /// Its place in the cluster's stream, to recognise it at a cluster recovery's seam.
    pub sequence: Option<u64>,
}

struct SocketHandle {
    id: u64,
    queue: queue::SendQueue,
}

pub struct Hub {
    sockets: DashMap<UserId, Vec<SocketHandle>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    limits: SocketLimits,
    bounds: QueueBounds,
}

/// Why a socket could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("at most {0} sockets per user are allowed")]
    User(usize),
    #[error("the server has its maximum of {0} sockets open")]
    Server(usize),
}

/// How one delivery went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub queued: usize,
    /// Sockets that stopped reading: closed with 4008.
    pub evicted: usize,
    /// Sockets that fell behind by more than their queue holds: they get what was queued,
    /// then 4009 (reconnect with `since`).
    pub lost: usize,
}

impl Hub {
    pub fn new(limits: SocketLimits, bounds: QueueBounds) -> Self {
        Self {
            sockets: DashMap::new(),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            limits,
            bounds,
        }
    }

    /// Registers a socket for `user`. The socket is reachable from now until the
    /// [`Registration`] is dropped.
    pub fn register(self: &Arc<Self>, user: UserId) -> Result<(Registration, Receiver), Full> {
        // The place in the total is taken first, so concurrent registrations cannot both pass
        // the check and overshoot it.
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.limits.total {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::Server(self.limits.total));
        }
        let mut sockets = self.sockets.entry(user.clone()).or_default();
        if sockets.len() >= self.limits.per_user {
            drop(sockets);
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::User(self.limits.per_user));
        }
        let (queue, receiver) = queue::channel(self.bounds);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = queue.evicted();
        sockets.push(SocketHandle { id, queue });
        drop(sockets);
        let registration = Registration {
            hub: self.clone(),
            user,
            id,
            evicted,
        };
        Ok((registration, receiver))
    }

    /// Open sockets of one user.
    pub fn connections(&self, user: &str) -> usize {
        self.sockets.get(user).map_or(0, |sockets| sockets.len())
    }

    /// Open sockets of everyone.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Queues `frame` on every socket of every recipient without waiting. A socket that must
    /// go (its reader stalled, or frames were lost for it) leaves the hub at once; its writer
    /// closes it.
    pub fn deliver<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a str>,
        frame: &Frame,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        let mut leaving = Vec::new();
        for user in recipients {
            let Some(sockets) = self.sockets.get(user) else {
                continue;
            };
            for socket in sockets.iter() {
                match socket.queue.offer(frame) {
                    Offer::Queued => delivery.queued += 1,
                    Offer::Evicted => {
                        delivery.evicted += 1;
                        leaving.push((sockets.key().clone(), socket.id));
                    }
                    Offer::Lost => {
                        delivery.lost += 1;
                        leaving.push((sockets.key().clone(), socket.id));
                    }
                    // The writer is gone and its registration is about to be dropped.
                    Offer::Closed => {}
                }
            }
        }
        // Removed after the loop, once the map's read guards are released.
        for (user, id) in leaving {
            self.unregister(&user, id);
        }
        delivery
    }

    /// Every socket may have missed frames (the fan-out fell behind the bus): each gets what
    /// is queued for it, then 4009. Returns how many sockets that was.
    pub fn lose_all(&self) -> usize {
        let mut leaving = Vec::new();
        for sockets in self.sockets.iter() {
            for socket in sockets.iter() {
                socket.queue.mark_lost();
                leaving.push((sockets.key().clone(), socket.id));
            }
        }
        for (user, id) in &leaving {
            self.unregister(user, *id);
        }
        leaving.len()
    }

    /// Removes a socket; a second call for the same socket (eviction, then the registration's
    /// drop) changes nothing.
    fn unregister(&self, user: &UserId, id: u64) {
        if let Entry::Occupied(mut sockets) = self.sockets.entry(user.clone()) {
            let before = sockets.get().len();
            sockets.get_mut().retain(|s| s.id != id);
            if sockets.get().len() < before {
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
            if sockets.get().is_empty() {
                // Users without sockets leave no trace: memory follows the sockets open now.
                sockets.remove();
            }
        }
    }
}

impl Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// A socket's place in the hub; dropping it removes the socket.
pub struct Registration {
    hub: Arc<Hub>,
    user: UserId,
    id: u64,
    evicted: CancellationToken,
}

impl Registration {
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// Resolves when the fan-out gave up on this socket as a slow consumer.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.user, self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame() -> Frame {
        Frame {
            id: Arc::from("id"),
            text: Utf8Bytes::from_static("{}"),
            accepted_at: Instant::now(),
            sequence: None,
        }
    }

    fn hub(per_user: usize, total: usize) -> Arc<Hub> {
        Arc::new(Hub::new(
            SocketLimits { per_user, total },
            QueueBounds {
                max_bytes: 4,
                stall_timeout: Duration::ZERO,
            },
        ))
    }

    #[tokio::test]
    async fn counts_follow_registrations() {
        let hub = hub(4, 8);
        let alice = UserId::parse("alice").unwrap();
        let (first, _rx1) = hub.register(alice.clone()).unwrap();
        let (second, _rx2) = hub.register(alice.clone()).unwrap();
        assert_eq!((hub.connections("alice"), hub.open()), (2, 2));
        drop(first);
        assert_eq!((hub.connections("alice"), hub.open()), (1, 1));
        drop(second);
        assert_eq!((hub.connections("alice"), hub.open()), (0, 0));
        assert!(
            hub.sockets.is_empty(),
            "a user with no sockets must leave no entry"
        );
    }

    #[tokio::test]
    async fn sockets_are_capped_per_user_and_in_total() {
        let hub = hub(2, 3);
        let user = |name: &str| UserId::parse(name).unwrap();
        let (a1, _r1) = hub.register(user("a")).unwrap();
        let (_a2, _r2) = hub.register(user("a")).unwrap();
        assert_eq!(hub.register(user("a")).err(), Some(Full::User(2)));
        let (_b1, _r3) = hub.register(user("b")).unwrap();
        assert_eq!(hub.register(user("c")).err(), Some(Full::Server(3)));
        assert_eq!(hub.open(), 3, "refusals leave no trace");
        drop(a1);
        assert!(
            hub.register(user("c")).is_ok(),
            "a closed socket frees its place"
        );
    }

    #[tokio::test]
    async fn a_stalled_socket_is_evicted_alone() {
        let hub = hub(4, 8);
        let (slow, _slow_rx) = hub.register(UserId::parse("slow").unwrap()).unwrap();
        let (_fast, mut fast_rx) = hub.register(UserId::parse("fast").unwrap()).unwrap();
        let delivered = |queued, evicted| Delivery {
            queued,
            evicted,
            lost: 0,
        };
        assert_eq!(hub.deliver(["slow", "fast"], &frame()), delivered(2, 0));
        let mut batch = Vec::new();
        fast_rx.recv_many(&mut batch, 8).await;
        fast_rx.written(2);
        assert_eq!(hub.deliver(["slow", "fast"], &frame()), delivered(2, 0));
        fast_rx.recv_many(&mut batch, 8).await;
        fast_rx.written(2);
        // Slow has read nothing: 6 bytes would pass its 4-byte bound, and it made no progress.
        assert_eq!(hub.deliver(["slow", "fast"], &frame()), delivered(1, 1));
        assert_eq!(
            (hub.connections("slow"), hub.open()),
            (0, 1),
            "evicted sockets leave at once"
        );
        slow.evicted().await;
        drop(slow);
        assert_eq!(
            hub.open(),
            1,
            "dropping an evicted registration must not count it twice"
        );
        assert_eq!(fast_rx.recv_many(&mut batch, 8).await, 1);
        assert_eq!(batch.len(), 3);
    }

    #[tokio::test]
    async fn losing_all_lets_every_writer_drain_then_end() {
        let hub = hub(4, 8);
        let (_a, mut a_rx) = hub.register(UserId::parse("a").unwrap()).unwrap();
        hub.deliver(["a"], &frame());
        assert_eq!(hub.lose_all(), 1);
        assert_eq!(hub.open(), 0);
        let mut batch = Vec::new();
        assert_eq!(a_rx.recv_many(&mut batch, 8).await, 1, "what was queued");
        assert_eq!(a_rx.recv_many(&mut batch, 8).await, 0, "then the end");
        assert!(a_rx.lost());
    }
}
