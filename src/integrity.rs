//! Corruption found while chatd runs. The start-up check ([`crate::sqlite_file::check_integrity`])
//! keeps a corrupted file from being served at all; a file that goes bad later is found by the
//! first query that reads a damaged page. That query's error is recorded here, once per file,
//! and stays until the process ends: a corrupted file does not heal itself, and only an
//! operator (restoring it, or moving it aside) makes it sound again.
//!
//! One [`Integrity`] per chatd, made in the app's wiring and handed to the outbox and the
//! embedded store, which report through a [`Watch`] on each of their files. `/ready` and
//! `/metrics` read it, and sends are refused while it holds anything.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sqlite_file;
use crate::telemetry::StorageFile;

/// chatd's two database files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// `outbox.db`: messages acknowledged and not yet in the store.
    Outbox,
    /// `messages.db`: the embedded store's history and dead letters.
    Store,
}

impl Database {
    pub const ALL: [Database; 2] = [Database::Outbox, Database::Store];

    /// Its name in `/ready` and in logs, the same as its `chat_storage_corrupted` series.
    pub fn label(self) -> &'static str {
        self.series().as_str()
    }

    pub fn series(self) -> StorageFile {
        match self {
            Database::Outbox => StorageFile::Outbox,
            Database::Store => StorageFile::Store,
        }
    }
}

/// A file found corrupted while running, and the error that showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub database: Database,
    pub path: PathBuf,
    pub error: String,
    /// What the file holds, which is what moving it aside would lose.
    pub holds: &'static str,
}

impl Corruption {
    /// What is wrong and what to do, in the words of the start-up check.
    pub fn advice(&self) -> String {
        format!(
            "{} is corrupted ({}). It holds {}. This chatd accepts no messages until it is \
             restarted on a sound file: stop it, then {}",
            self.path.display(),
            self.error,
            self.holds,
            sqlite_file::REMEDY
        )
    }
}

/// The corrupted files this chatd has found, at most one entry per file, in the order found.
#[derive(Debug, Default)]
pub struct Integrity {
    found: Mutex<Vec<Corruption>>,
}

impl Integrity {
    /// Records a corrupted file. The first report of each file is logged at ERROR; later ones
    /// (every query that meets the damage) change nothing.
    pub fn report(&self, corruption: Corruption) {
        let mut found = self.found.lock().expect("integrity lock");
        if found.iter().any(|c| c.database == corruption.database) {
            return;
        }
        tracing::error!(
            file = %corruption.path.display(),
            error = %corruption.error,
            "database file corrupted while running: not ready, sends refused. {}",
            corruption.advice()
        );
        found.push(corruption);
    }

    /// Every corrupted file found so far; empty while all is well.
    pub fn found(&self) -> Vec<Corruption> {
        self.found.lock().expect("integrity lock").clone()
    }

    pub fn is_corrupted(&self, database: Database) -> bool {
        self.found
            .lock()
            .expect("integrity lock")
            .iter()
            .any(|c| c.database == database)
    }
}

/// One database file's line to the [`Integrity`]: every SQLite error met on the file passes
/// through [`Watch::check`], which records those that mean the file is corrupted.
#[derive(Debug, Clone)]
pub struct Watch {
    integrity: Arc<Integrity>,
    database: Database,
    path: PathBuf,
    holds: &'static str,
}

impl Watch {
    pub fn new(
        integrity: Arc<Integrity>,
        database: Database,
        path: &Path,
        holds: &'static str,
    ) -> Self {
        Self {
            integrity,
            database,
            path: path.to_owned(),
            holds,
        }
    }

    /// Records `e` if it means this file is corrupted ([`sqlite_file::is_corruption`]).
    pub fn check(&self, e: &rusqlite::Error) {
        if sqlite_file::is_corruption(e) {
            self.integrity.report(Corruption {
                database: self.database,
                path: self.path.clone(),
                error: e.to_string(),
                holds: self.holds,
            });
        }
    }

    /// Whether this file was found corrupted.
    pub fn is_corrupted(&self) -> bool {
        self.integrity.is_corrupted(self.database)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::ffi;

    use super::*;

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn corruption_is_recorded_once_per_file_and_stays() {
        let integrity = Arc::new(Integrity::default());
        let outbox = Watch::new(
            integrity.clone(),
            Database::Outbox,
            Path::new("/data/outbox.db"),
            "acknowledged messages",
        );
        let store = Watch::new(
            integrity.clone(),
            Database::Store,
            Path::new("/data/messages.db"),
            "history",
        );
        // Errors that say nothing about the file leave it sound.
        outbox.check(&failure(ffi::SQLITE_BUSY));
        outbox.check(&failure(ffi::SQLITE_IOERR_WRITE));
        assert!(integrity.found().is_empty());

        outbox.check(&failure(ffi::SQLITE_CORRUPT));
        outbox.check(&failure(ffi::SQLITE_NOTADB));
        assert!(outbox.is_corrupted());
        assert!(!store.is_corrupted());
        let found = integrity.found();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].database, Database::Outbox);
        let advice = found[0].advice();
        assert!(
            advice.starts_with(
                "/data/outbox.db is corrupted (Error code 11: The database disk image"
            ),
            "{advice}"
        );
        assert!(
            advice.contains("It holds acknowledged messages"),
            "{advice}"
        );
        assert!(advice.contains(sqlite_file::REMEDY), "{advice}");

        store.check(&failure(ffi::SQLITE_CORRUPT_INDEX));
        assert!(store.is_corrupted());
        assert_eq!(integrity.found().len(), 2);
    }
}
