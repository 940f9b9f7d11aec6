use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// What chatd last saw of its store, from the periodic probe and the relay's writes: read by
/// `/health`, `/ready` and the `chat_store_up` gauge.
///
/// The store is up only while both agree: a store that answers the probe but cannot take a
/// write (read-only, full, its tables gone) is down, and so is one that takes writes but has
/// stopped answering the probe.
#[derive(Debug)]
pub struct StoreHealth {
    answers: AtomicBool,
    takes_writes: AtomicBool,
    migrated: AtomicBool,
    /// Relay writes refused in a row for the store's own reasons, for their backoff.
    write_outages: AtomicU32,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self {
            answers: AtomicBool::new(true),
            takes_writes: AtomicBool::new(true),
            migrated: AtomicBool::new(false),
            write_outages: AtomicU32::new(0),
        }
    }
}

impl StoreHealth {
    pub fn is_up(&self) -> bool {
        self.answers.load(Ordering::Relaxed) && self.takes_writes.load(Ordering::Relaxed)
    }

    /// Ready to serve history: reachable, with every migration applied.
    pub fn is_ready(&self) -> bool {
        self.is_up() && self.migrated.load(Ordering::Relaxed)
    }

    pub fn migrated(&self) {
        self.migrated.store(true, Ordering::Relaxed);
    }

    /// The probe (or a migration) got an answer.
    pub fn reachable(&self) {
        self.answers.store(true, Ordering::Relaxed);
    }

    /// The probe (or a migration) got no answer.
    pub fn unreachable(&self) {
        self.answers.store(false, Ordering::Relaxed);
    }

    /// The store took a write from the relay.
    pub fn write_taken(&self) {
        self.write_outages.store(0, Ordering::Relaxed);
        self.takes_writes.store(true, Ordering::Relaxed);
    }

    /// The store could not take a write for its own reasons; returns how many writes in a row
    /// it could not take.
    pub fn write_unavailable(&self) -> u32 {
        self.takes_writes.store(false, Ordering::Relaxed);
        self.write_outages.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_up_only_while_the_probe_and_the_writes_agree() {
        let health = StoreHealth::default();
        assert!(health.is_up());
        assert_eq!(health.write_unavailable(), 1);
        health.reachable();
        assert!(
            !health.is_up(),
            "answering pings does not undo a failed write"
        );
        assert_eq!(health.write_unavailable(), 2);
        health.write_taken();
        assert!(health.is_up());
        health.unreachable();
        health.write_taken();
        assert!(!health.is_up(), "a write does not undo a failed probe");
        health.reachable();
        assert!(health.is_up());
        assert_eq!(
            health.write_unavailable(),
            1,
            "a taken write resets the count"
        );
    }

    #[test]
    fn ready_needs_the_migrations_too() {
        let health = StoreHealth::default();
        assert!(!health.is_ready());
        health.migrated();
        assert!(health.is_ready());
        health.write_unavailable();
        assert!(!health.is_ready());
    }
}
