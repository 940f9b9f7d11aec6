//! The sockets connected to this instance, by user. The fan-out hands each socket's writer task
//! a frame without waiting: a socket that cannot keep up is evicted, never waited for.

mod socket;

use std::borrow::Borrow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::UserId;

pub use socket::serve;

/// One serialized message, shared by every socket it goes to.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The message's id, to recognise it at a recovery's seam.
    pub id: Arc<str>,
    pub text: Utf8Bytes,
    pub accepted_at: Instant,
}

struct SocketHandle {
    id: u64,
    frames: mpsc::Sender<Frame>,
    evicted: CancellationToken,
}

pub struct Hub {
    sockets: DashMap<UserId, Vec<SocketHandle>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    limits: SocketLimits,
}

/// How many sockets may be open.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    pub per_user: usize,
    pub total: usize,
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
    pub evicted: usize,
}

impl Hub {
    pub fn new(limits: SocketLimits) -> Self {
        Self {
            sockets: DashMap::new(),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            limits,
        }
    }

    /// Registers a socket for `user` with a send queue of `capacity` frames. The socket is
    /// reachable from now until the [`Registration`] is dropped.
    pub fn register(
        self: &Arc<Self>,
        user: UserId,
        capacity: usize,
    ) -> Result<(Registration, mpsc::Receiver<Frame>), Full> {
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
        let (frames, receiver) = mpsc::channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        sockets.push(SocketHandle {
            id,
            frames,
            evicted: evicted.clone(),
        });
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

    /// Queues `frame` on every socket of every recipient without waiting. A socket whose queue
    /// is full is evicted: it leaves the hub at once and its writer closes it with 4008.
    pub fn deliver<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a str>,
        frame: &Frame,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        let mut evicted = Vec::new();
        for user in recipients {
            let Some(sockets) = self.sockets.get(user) else {
                continue;
            };
            for socket in sockets.iter() {
                match socket.frames.try_send(frame.clone()) {
                    Ok(()) => delivery.queued += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        socket.evicted.cancel();
                        evicted.push((sockets.key().clone(), socket.id));
                    }
                    // The writer is gone and its registration is about to be dropped.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        // Removed after the loop, once the map's read guards are released.
        for (user, id) in evicted {
            self.unregister(&user, id);
            delivery.evicted += 1;
        }
        delivery
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
    use super::*;

    fn frame() -> Frame {
        Frame {
            id: Arc::from("id"),
            text: Utf8Bytes::from_static("{}"),
            accepted_at: Instant::now(),
        }
    }

    #[tokio::test]
    async fn counts_follow_registrations() {
        let hub = Arc::new(Hub::new(SocketLimits {
            per_user: 4,
            total: 8,
        }));
        let alice = UserId::parse("alice").unwrap();
        let (first, _rx1) = hub.register(alice.clone(), 4).unwrap();
        let (second, _rx2) = hub.register(alice.clone(), 4).unwrap();
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
        let hub = Arc::new(Hub::new(SocketLimits {
            per_user: 2,
            total: 3,
        }));
        let user = |name: &str| UserId::parse(name).unwrap();
        let (a1, _r1) = hub.register(user("a"), 1).unwrap();
        let (_a2, _r2) = hub.register(user("a"), 1).unwrap();
        assert_eq!(hub.register(user("a"), 1).err(), Some(Full::User(2)));
        let (_b1, _r3) = hub.register(user("b"), 1).unwrap();
        assert_eq!(hub.register(user("c"), 1).err(), Some(Full::Server(3)));
        assert_eq!(hub.open(), 3, "refusals leave no trace");
        drop(a1);
        assert!(
            hub.register(user("c"), 1).is_ok(),
            "a closed socket frees its place"
        );
    }

    #[tokio::test]
    async fn a_full_queue_evicts_that_socket_alone() {
        let hub = Arc::new(Hub::new(SocketLimits {
            per_user: 4,
            total: 8,
        }));
        let (slow, _slow_rx) = hub.register(UserId::parse("slow").unwrap(), 1).unwrap();
        let (_fast, mut fast_rx) = hub.register(UserId::parse("fast").unwrap(), 8).unwrap();
        assert_eq!(
            hub.deliver(["slow", "fast"], &frame()),
            Delivery {
                queued: 2,
                evicted: 0
            }
        );
        assert_eq!(
            hub.deliver(["slow", "fast"], &frame()),
            Delivery {
                queued: 1,
                evicted: 1
            }
        );
        assert_eq!(
            hub.deliver(["slow", "fast"], &frame()),
            Delivery {
                queued: 1,
                evicted: 0
            }
        );
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
        for _ in 0..3 {
            assert!(fast_rx.try_recv().is_ok());
        }
    }
}
