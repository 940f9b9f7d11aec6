//! Which connections the accept loop lets in: at most `HTTP_MAX_CONNECTIONS` open in all
//! (WebSockets included, for as long as they live), and from one client address at most
//! `HTTP_MAX_PENDING_PER_CLIENT` that are slow to send their first request head, the mark of a
//! slowloris flood. A connection turned away is answered with a minimal 503 and closed, so the
//! file descriptors never run out and one address cannot starve the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry::RefusalReason;

/// How long a connection may go without a whole request head before it counts against its
/// address's pending cap. Ordinary clients send their head within milliseconds of connecting,
/// so a burst of them (a page load, a test opening ninety requests at once, a benchmark
/// opening thousands of sockets) never counts, however many arrive together.
pub const PENDING_GRACE: Duration = Duration::from_secs(1);

/// Why a connection was turned away: the `reason` label of
/// `chat_http_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `HTTP_MAX_CONNECTIONS` are open.
    Connections,
    /// The address already has `HTTP_MAX_PENDING_PER_CLIENT` slow connections.
    PendingPerClient,
}

impl Refusal {
    /// Its series of `chat_http_connections_refused_total`.
    pub fn reason(self) -> RefusalReason {
        match self {
            Refusal::Connections => RefusalReason::Connections,
            Refusal::PendingPerClient => RefusalReason::PendingPerClient,
        }
    }

    /// The whole response: a 503 with the contract's error body, then the connection closes.
    pub fn response(self) -> Vec<u8> {
        let error = match self {
            Refusal::Connections => "the server has too many connections open, try again later",
            Refusal::PendingPerClient => {
                "too many connections from your address have not sent their request yet"
            }
        };
        let body = super::newline::with_newline(serde_json::json!({ "error": error }).to_string());
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

pub struct Admission {
    open: AtomicUsize,
    max_open: usize,
    /// Slow connections by address; an address leaves with its last one.
    slow: Mutex<HashMap<IpAddr, usize>>,
    max_slow_per_client: usize,
}

impl Admission {
    pub fn new(max_open: usize, max_pending_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max_open,
            slow: Mutex::new(HashMap::new()),
            max_slow_per_client: max_pending_per_client,
        })
    }

    /// A place for a connection just accepted from `peer`, kept until the [`Ticket`] (and every
    /// clone of it: an upgraded WebSocket holds one) is dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Arc<Ticket>, Refusal> {
        let peer = peer.to_canonical();
        if self.slow_from(peer) >= self.max_slow_per_client {
            return Err(Refusal::PendingPerClient);
        }
        // The place is taken first, so concurrent accepts cannot both pass and overshoot.
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_open {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Connections);
        }
        Ok(Arc::new(Ticket {
            admission: self.clone(),
            peer,
            accepted_at: Instant::now(),
            state: AtomicU8::new(FRESH),
        }))
    }

    fn slow_from(&self, peer: IpAddr) -> usize {
        self.lock().get(&peer).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map is left consistent between statements: a panic elsewhere cannot break it.
        self.slow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// No whole request head yet, not counted against the address.
const FRESH: u8 = 0;
/// No whole request head past [`PENDING_GRACE`]: counted against the address.
const SLOW: u8 = 1;
/// A whole request head arrived (or the connection is gone): never counted again.
const DONE: u8 = 2;
/// Slow beyond the address's share: answered 503 when its transport is dropped.
const REFUSED: u8 = 3;

/// One admitted connection.
pub struct Ticket {
    admission: Arc<Admission>,
    peer: IpAddr,
    accepted_at: Instant,
    state: AtomicU8,
}

impl Ticket {
    /// The connection sent a whole request head: it no longer counts as pending, whatever it
    /// does next (keep-alive requests, a WebSocket).
    pub fn head_received(&self) {
        if self.state.swap(DONE, Ordering::AcqRel) == SLOW {
            self.uncount();
        }
    }

    /// Completes, with the refusal, only if the connection is still without a whole request
    /// head at [`PENDING_GRACE`] after its accept and its address already has its share of slow
    /// connections; otherwise never (a slow connection within the share is counted and waits
    /// for its head or `HTTP_HEADER_TIMEOUT`).
    pub async fn refused_when_slow(&self) -> Refusal {
        tokio::time::sleep_until(self.accepted_at + PENDING_GRACE).await;
        match self.count_as_slow() {
            Some(refusal) => refusal,
            None => std::future::pending().await,
        }
    }

    /// Counts a connection still without its head against its address, or refuses it when the
    /// address has its share already. The state changes under the map's lock, so a head
    /// arriving meanwhile uncounts only what was counted.
    fn count_as_slow(&self) -> Option<Refusal> {
        let mut slow = self.admission.lock();
        let count = slow.entry(self.peer).or_insert(0);
        let over = *count >= self.admission.max_slow_per_client;
        let next = if over { REFUSED } else { SLOW };
        let fresh = self
            .state
            .compare_exchange(FRESH, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        match (fresh, over) {
            (true, true) => return Some(Refusal::PendingPerClient),
            (true, false) => *count += 1,
            (false, _) => {}
        }
        if *count == 0 {
            slow.remove(&self.peer);
        }
        None
    }

    /// The connection was refused for being slow: its transport answers 503 as it closes.
    pub fn is_refused(&self) -> bool {
        self.state.load(Ordering::Acquire) == REFUSED
    }

    fn uncount(&self) {
        let mut slow = self.admission.lock();
        if let Some(count) = slow.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                slow.remove(&self.peer);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.state.swap(DONE, Ordering::AcqRel) == SLOW {
            self.uncount();
        }
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn refusals_are_answered_as_the_contract_says() {
        for refusal in [Refusal::Connections, Refusal::PendingPerClient] {
            let response = String::from_utf8(refusal.response()).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
            assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
            assert!(
                head.ends_with(&format!("content-length: {}", body.len())),
                "{head}"
            );
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(body["error"].is_string(), "{body}");
        }
    }

    #[test]
    fn open_connections_are_capped_and_a_closed_one_frees_its_place() {
        let admission = Admission::new(2, 64);
        let first = admission.admit(A).unwrap();
        let _second = admission.admit(B).unwrap();
        assert_eq!(admission.admit(A).err(), Some(Refusal::Connections));
        drop(first);
        assert!(admission.admit(A).is_ok());
    }

    /// What [`Ticket::refused_when_slow`] does once the grace has passed.
    #[test]
    fn only_slow_connections_count_and_only_beyond_the_share_are_refused() {
        let admission = Admission::new(100, 2);
        let quick = admission.admit(A).unwrap();
        let slow: Vec<_> = (0..3).map(|_| admission.admit(A).unwrap()).collect();
        quick.head_received();
        assert_eq!(
            quick.count_as_slow(),
            None,
            "a connection with its head never counts"
        );
        assert_eq!(slow[0].count_as_slow(), None);
        assert_eq!(slow[1].count_as_slow(), None);
        assert_eq!(slow[2].count_as_slow(), Some(Refusal::PendingPerClient));
        assert!(slow[2].is_refused() && !slow[1].is_refused());
        // The address's share is taken: new connections from it are refused at once, others not.
        assert_eq!(admission.admit(A).err(), Some(Refusal::PendingPerClient));
        assert!(admission.admit(B).is_ok());
        // A slow connection that finally sends its head frees its place in the share.
        slow[0].head_received();
        assert!(admission.admit(A).is_ok());
        drop(slow);
        assert!(
            admission.lock().is_empty(),
            "no address is kept once it has nothing slow"
        );
        drop(quick);
        assert_eq!(admission.open.load(Ordering::Relaxed), 0);
    }
}
