//! New entries handed from the journal to the relay in memory, so the relay does not read back
//! from disk what the accept path had just written.
//!
//! The journal pushes each group's new entries once their commit is durable, in commit order
//! (the order of their `seq`s). While nothing was dropped, the queue holds every entry after
//! the relay's cursor, in order. When it is full, the journal drops the group and marks the
//! queue *catching up*: the relay then reads the outbox file instead, from its cursor, until a
//! read comes back short, which means it has read everything committed so far. Everything
//! pushed after it emptied the queue for that read is either in the read (a duplicate, skipped
//! by `seq`) or committed after it (new, in order). A restart starts catching up: what an
//! earlier run left pending is only on disk.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::PendingEntry;

/// Most entries waiting in memory for the relay, about 4 MiB of typical messages: past that
/// (the store is slow or down) the relay reads the outbox file instead.
const CAPACITY: usize = 4096;

pub(super) struct Fresh {
    inner: Mutex<Inner>,
}

struct Inner {
    entries: VecDeque<PendingEntry>,
    /// Entries were dropped (or are only on disk): the relay reads the file until caught up.
    catching_up: bool,
    /// Counts the drops, so a read that raced one does not end the catch-up.
    drops: u64,
}

/// What the relay takes next.
pub(super) enum Next {
    /// Entries after the cursor, in order (possibly none: nothing new yet).
    Entries(Vec<PendingEntry>),
    /// Read the file from the cursor, then report with [`Fresh::read_from_disk`].
    ReadDisk { drops: u64 },
}

impl Fresh {
    /// A queue that starts by catching up on what an earlier run left in the file.
    pub(super) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                catching_up: true,
                drops: 0,
            }),
        }
    }

    /// A group's new entries, once durable, in commit order.
    pub(super) fn push(&self, group: Vec<PendingEntry>) {
        if group.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("fresh entries lock");
        if inner.entries.len() + group.len() > CAPACITY {
            // The relay reads these from the file instead.
            inner.catching_up = true;
            inner.drops += 1;
            inner.entries.clear();
            return;
        }
        inner.entries.extend(group);
    }

    /// Up to `limit` entries after `cursor`, or word to read the file instead.
    pub(super) fn next(&self, cursor: i64, limit: usize) -> Next {
        let mut inner = self.inner.lock().expect("fresh entries lock");
        if inner.catching_up {
            // Emptied before the read: whatever it held is committed, so the read has it.
            inner.entries.clear();
            return Next::ReadDisk { drops: inner.drops };
        }
        while inner.entries.front().is_some_and(|e| e.seq <= cursor) {
            inner.entries.pop_front();
        }
        let n = limit.min(inner.entries.len());
        Next::Entries(inner.entries.drain(..n).collect())
    }

    /// A read of the file asked for by [`Next::ReadDisk`] came back; `short` means it held
    /// everything committed when it ran. Unless entries were dropped since, the queue is
    /// complete again from there.
    pub(super) fn read_from_disk(&self, drops: u64, short: bool) {
        let mut inner = self.inner.lock().expect("fresh entries lock");
        if short && inner.drops == drops {
            inner.catching_up = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64) -> PendingEntry {
        PendingEntry::for_test(seq, 0)
    }

    fn seqs(next: Next) -> Vec<i64> {
        match next {
            Next::Entries(entries) => entries.iter().map(|e| e.seq).collect(),
            Next::ReadDisk { .. } => panic!("expected entries"),
        }
    }

    fn drops(next: Next) -> u64 {
        match next {
            Next::ReadDisk { drops } => drops,
            Next::Entries(_) => panic!("expected a read of the file"),
        }
    }

    #[test]
    fn it_starts_from_the_file_and_hands_out_pushed_entries_once_caught_up() {
        let fresh = Fresh::new();
        fresh.push(vec![entry(1), entry(2)]);
        let d = drops(fresh.next(0, 10));
        // A full read does not end the catch-up: there may be more on disk.
        fresh.read_from_disk(d, false);
        let d = drops(fresh.next(0, 10));
        fresh.read_from_disk(d, true);
        fresh.push(vec![entry(3), entry(4)]);
        fresh.push(vec![entry(5)]);
        assert_eq!(seqs(fresh.next(2, 2)), vec![3, 4]);
        assert_eq!(seqs(fresh.next(4, 10)), vec![5]);
        assert!(seqs(fresh.next(5, 10)).is_empty());
    }

    #[test]
    fn entries_the_read_already_had_are_skipped() {
        let fresh = Fresh::new();
        let d = drops(fresh.next(0, 10));
        // Pushed while the file was read: the read found 1 and 2, not 3.
        fresh.push(vec![entry(1), entry(2)]);
        fresh.push(vec![entry(3)]);
        fresh.read_from_disk(d, true);
        assert_eq!(seqs(fresh.next(2, 10)), vec![3]);
    }

    #[test]
    fn a_drop_during_a_read_keeps_it_catching_up() {
        let fresh = Fresh::new();
        let d = drops(fresh.next(0, 10));
        fresh.push((1..=CAPACITY as i64 + 1).map(entry).collect());
        fresh.read_from_disk(d, true);
        assert!(matches!(fresh.next(0, 10), Next::ReadDisk { .. }));
    }

    #[test]
    fn a_full_queue_drops_and_sends_the_relay_to_the_file() {
        let fresh = Fresh::new();
        let d = drops(fresh.next(0, 10));
        fresh.read_from_disk(d, true);
        fresh.push((1..=CAPACITY as i64).map(entry).collect());
        fresh.push(vec![entry(CAPACITY as i64 + 1)]);
        let d = drops(fresh.next(0, 10));
        fresh.read_from_disk(d, true);
        assert!(seqs(fresh.next(CAPACITY as i64 + 1, 10)).is_empty());
    }
}
