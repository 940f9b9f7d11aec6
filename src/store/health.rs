use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// What chatd last saw of its store, from the relay's writes and the periodic probe: read by
/// `/health`, `/ready` and the `chat_store_up` gauge.
#[derive(Debug)]
pub struct StoreHealth {
    up: AtomicBool,
    migrated: AtomicBool,
    consecutive_outages: AtomicU32,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            migrated: AtomicBool::new(false),
            consecutive_outages: AtomicU32::new(0),
        }
    }
}

impl StoreHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Ready to serve history: reachable, with every migration applied.
    pub fn is_ready(&self) -> bool {
        self.is_up() && self.migrated.load(Ordering::Relaxed)
    }

    pub fn migrated(&self) {
        self.migrated.store(true, Ordering::Relaxed);
    }

    pub fn reachable(&self) {
        self.consecutive_outages.store(0, Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
    }

    /// Records an outage and returns how many have come in a row.
    pub fn unreachable(&self) -> u32 {
        self.up.store(false, Ordering::Relaxed);
        self.consecutive_outages.fetch_add(1, Ordering::Relaxed) + 1
    }
}
