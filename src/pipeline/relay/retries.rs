//! Entries the store refused, waiting out their backoff in the dispatcher rather than in a
//! writer, so that no writer sits idle on their account.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use tokio::time::Instant;

use crate::pipeline::outbox::PendingEntry;

/// Refused entries by the time their next attempt is due, soonest first.
///
/// Bounded by the dispatcher, not here: it reads no new entries from the outbox while
/// [`RetrySet::has_room`] is false, and everything in the set came from a batch it read. So
/// the set holds at most its capacity plus what the writers had in flight when it filled up.
pub(super) struct RetrySet {
    waiting: BinaryHeap<Reverse<Waiting>>,
    capacity: usize,
}

impl RetrySet {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            waiting: BinaryHeap::new(),
            capacity,
        }
    }

    pub(super) fn schedule(&mut self, entry: PendingEntry, due: Instant) {
        self.waiting.push(Reverse(Waiting { due, entry }));
    }

    /// Whether the dispatcher may read new entries, some of which may end up here.
    pub(super) fn has_room(&self) -> bool {
        self.waiting.len() < self.capacity
    }

    /// When the soonest entry is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.waiting.peek().map(|Reverse(w)| w.due)
    }

    /// Up to `limit` entries due by `now`, soonest first.
    pub(super) fn take_due(&mut self, now: Instant, limit: usize) -> Vec<PendingEntry> {
        let mut due = Vec::new();
        while due.len() < limit && self.next_due().is_some_and(|at| at <= now) {
            let Some(Reverse(waiting)) = self.waiting.pop() else {
                break;
            };
            due.push(waiting.entry);
        }
        due
    }
}

/// Ordered by due time, then by outbox order.
struct Waiting {
    due: Instant,
    entry: PendingEntry,
}

impl Waiting {
    fn key(&self) -> (Instant, i64) {
        (self.due, self.entry.seq)
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(seq: i64) -> PendingEntry {
        PendingEntry::for_test(seq, 1)
    }

    fn seqs(entries: &[PendingEntry]) -> Vec<i64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn entries_come_out_when_due_soonest_first_at_most_limit_at_a_time() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut set = RetrySet::new(10);
        assert_eq!(set.next_due(), None);
        set.schedule(entry(1), now + ms(30));
        set.schedule(entry(2), now + ms(10));
        set.schedule(entry(3), now + ms(20));
        set.schedule(entry(4), now + ms(10));
        assert_eq!(set.next_due(), Some(now + ms(10)));
        assert!(set.take_due(now, 10).is_empty(), "nothing is due yet");
        assert_eq!(seqs(&set.take_due(now + ms(20), 2)), [2, 4]);
        assert_eq!(seqs(&set.take_due(now + ms(20), 2)), [3]);
        assert_eq!(set.next_due(), Some(now + ms(30)));
        assert_eq!(seqs(&set.take_due(now + ms(60), 5)), [1]);
        assert_eq!(set.next_due(), None);
    }

    #[test]
    fn it_has_room_below_its_capacity() {
        let now = Instant::now();
        let mut set = RetrySet::new(2);
        set.schedule(entry(1), now);
        assert!(set.has_room());
        set.schedule(entry(2), now);
        assert!(!set.has_room());
        set.take_due(now, 1);
        assert!(set.has_room());
    }
}
