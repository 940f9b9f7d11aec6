//! Reading pending entries around damaged pages of a corrupted outbox, so that every
//! acknowledged message still readable reaches the store.
//!
//! A query over a range of `seq`s fails as a whole when one page it walks is damaged. So a
//! failed range is cut in halves, and each half read again, down to single `seq`s: a `seq`
//! that still fails alone is unreadable and skipped. Reads go straight to the table's own
//! b-tree (`NOT INDEXED`), so a damaged index hides no row. The `seq`s skipped are remembered,
//! counted in `chat_outbox_rows_skipped_total` and logged, so that no later read pays for them
//! again and an operator knows which acknowledged messages were lost.

use std::sync::Mutex;

use metrics::counter;
use rusqlite::{Connection, OptionalExtension, params};

use super::PendingEntry;
use crate::sqlite_file;
use crate::telemetry;

/// The `seq`s found unreadable, as sorted, disjoint, inclusive ranges.
#[derive(Debug, Default)]
pub(super) struct Unreadable {
    ranges: Mutex<Vec<(i64, i64)>>,
}

impl Unreadable {
    /// The parts of `(after, last]` not known to be unreadable, as `(lo, hi]` ranges in order.
    fn gaps(&self, after: i64, last: i64) -> Vec<(i64, i64)> {
        let mut gaps = Vec::new();
        let mut lo = after;
        for &(first, end) in self.ranges.lock().expect("unreadable lock").iter() {
            if end <= lo {
                continue;
            }
            if first > last {
                break;
            }
            if first - 1 > lo {
                gaps.push((lo, first - 1));
            }
            lo = end;
        }
        if lo < last {
            gaps.push((lo, last));
        }
        gaps
    }

    /// Remembers `seqs` (ascending) and returns them as ranges, for the log.
    fn add(&self, seqs: &[i64]) -> Vec<(i64, i64)> {
        let mut found: Vec<(i64, i64)> = Vec::new();
        for &seq in seqs {
            match found.last_mut() {
                Some((_, end)) if *end + 1 == seq => *end = seq,
                _ => found.push((seq, seq)),
            }
        }
        let mut ranges = self.ranges.lock().expect("unreadable lock");
        ranges.extend(&found);
        ranges.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
        for &(first, end) in ranges.iter() {
            match merged.last_mut() {
                Some((_, last_end)) if *last_end + 1 >= first => *last_end = (*last_end).max(end),
                _ => merged.push((first, end)),
            }
        }
        *ranges = merged;
        found
    }
}

/// Up to `limit` pending entries after `after`, oldest first, reading around whatever cannot be
/// read. Fails only when the outbox's highest `seq` cannot be read either, or for an error that
/// is not corruption.
pub(super) fn pending_around(
    conn: &Connection,
    after: i64,
    limit: usize,
    unreadable: &Unreadable,
) -> rusqlite::Result<Vec<PendingEntry>> {
    // AUTOINCREMENT keeps the highest seq ever given apart from the table's pages.
    let last: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let Some(last) = last else {
        return Ok(Vec::new());
    };
    // Ranges still to read, the next one last.
    let mut todo: Vec<(i64, i64)> = unreadable.gaps(after, last);
    todo.reverse();
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    while let Some((lo, hi)) = todo.pop() {
        if entries.len() >= limit {
            break;
        }
        match read_range(conn, lo, hi, limit - entries.len()) {
            Ok(read) => entries.extend(read),
            Err(e) if !sqlite_file::is_corruption(&e) => return Err(e),
            Err(_) if hi - lo == 1 => skipped.push(hi),
            Err(_) => {
                let mid = lo + (hi - lo) / 2;
                todo.push((mid, hi));
                todo.push((lo, mid));
            }
        }
    }
    if !skipped.is_empty() {
        counter!(telemetry::OUTBOX_ROWS_SKIPPED).increment(skipped.len() as u64);
        for (first, end) in unreadable.add(&skipped) {
            tracing::error!(
                first_seq = first,
                last_seq = end,
                "outbox rows unreadable (corrupted pages), skipped: acknowledged messages with \
                 these seqs that were not yet stored are lost unless a backup of outbox.db has them"
            );
        }
    }
    Ok(entries)
}

/// Pending entries with `seq` in `(lo, hi]`, at most `limit`, read from the table itself. A
/// single `seq` is looked up exactly: a range scan steps to the row after its end to see that
/// it is done, which fails when that row is on the damaged page.
fn read_range(
    conn: &Connection,
    lo: i64,
    hi: i64,
    limit: usize,
) -> rusqlite::Result<Vec<PendingEntry>> {
    let entry = |row: &rusqlite::Row<'_>| {
        Ok(PendingEntry {
            seq: row.get(0)?,
            message: sqlite_file::message_from_row(row, 1)?,
            attempts: row.get(6)?,
        })
    };
    if hi - lo == 1 {
        return conn
            .prepare_cached(
                "SELECT seq, id, sender, content, participants, created_at, attempts
                 FROM outbox NOT INDEXED WHERE seq = ?1 AND dead = 0",
            )?
            .query_map([hi], entry)?
            .collect();
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "SELECT seq, id, sender, content, participants, created_at, attempts
         FROM outbox NOT INDEXED WHERE seq > ?1 AND seq <= ?2 AND dead = 0
         ORDER BY seq LIMIT ?3",
    )?
    .query_map(params![lo, hi, limit], entry)?
    .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sqlite_file::migrate;

    /// An outbox of `rows` pending rows of about 300 bytes each, checkpointed into its file.
    fn outbox(path: &Path, rows: i64) -> Connection {
        let mut conn = sqlite_file::open(path).unwrap();
        migrate(&mut conn, super::super::MIGRATIONS).unwrap();
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO outbox (id, sender, content, participants, created_at)
             SELECT printf('id-%05d', i), 'alice', printf('%0300d', i), '[\"alice\"]', i FROM n;
             PRAGMA wal_checkpoint(TRUNCATE);"
        ))
        .unwrap();
        conn
    }

    /// The table's leaf pages in key order, with how many rows each holds.
    fn leaves(conn: &Connection) -> Vec<(i64, i64)> {
        conn.prepare(
            "SELECT pageno, ncell FROM dbstat WHERE name = 'outbox' AND pagetype = 'leaf'
             ORDER BY path",
        )
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    fn garble(path: &Path, page: i64) {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(4096 * (page as u64 - 1)))
            .unwrap();
        file.write_all(&[0xA5; 4096]).unwrap();
    }

    fn seqs(entries: &[PendingEntry]) -> Vec<i64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn every_readable_row_is_read_and_the_damaged_page_is_skipped_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let conn = outbox(&path, 200);
        let leaves = leaves(&conn);
        assert!(leaves.len() >= 5, "{leaves:?}");
        drop(conn);
        // The third leaf holds the seqs after the first two leaves' rows.
        let first_lost = leaves[0].1 + leaves[1].1 + 1;
        let lost = first_lost..first_lost + leaves[2].1;
        garble(&path, leaves[2].0);

        let conn = sqlite_file::open(&path).unwrap();
        let whole = conn
            .prepare("SELECT seq FROM outbox WHERE seq > 0 ORDER BY seq")
            .unwrap()
            .query_map([], |row| row.get::<_, i64>(0))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>();
        assert!(sqlite_file::is_corruption(&whole.unwrap_err()));

        let unreadable = Unreadable::default();
        let read = pending_around(&conn, 0, 1000, &unreadable).unwrap();
        let expected: Vec<i64> = (1..=200).filter(|seq| !lost.contains(seq)).collect();
        assert_eq!(seqs(&read), expected);
        assert_eq!(read[0].message.content, format!("{:0300}", 1));
        assert_eq!(
            *unreadable.ranges.lock().unwrap(),
            [(lost.start, lost.end - 1)]
        );

        // In batches, from a cursor, as the relay reads: the same rows, nothing skipped again.
        let mut cursor = 0;
        let mut batched = Vec::new();
        loop {
            let batch = pending_around(&conn, cursor, 7, &unreadable).unwrap();
            let Some(last) = batch.last() else { break };
            cursor = last.seq;
            batched.extend(seqs(&batch));
        }
        assert_eq!(batched, expected);
        assert_eq!(unreadable.ranges.lock().unwrap().len(), 1);
    }

    #[test]
    fn known_unreadable_ranges_are_left_out_and_merged() {
        let unreadable = Unreadable::default();
        assert_eq!(unreadable.gaps(0, 10), [(0, 10)]);
        assert_eq!(unreadable.add(&[3, 4, 5, 8]), [(3, 5), (8, 8)]);
        assert_eq!(unreadable.gaps(0, 10), [(0, 2), (5, 7), (8, 10)]);
        assert_eq!(unreadable.gaps(4, 10), [(5, 7), (8, 10)]);
        assert_eq!(unreadable.gaps(0, 4), [(0, 2)]);
        assert_eq!(unreadable.gaps(8, 10), [(8, 10)]);
        unreadable.add(&[6, 7]);
        assert_eq!(*unreadable.ranges.lock().unwrap(), [(3, 8)]);
        assert_eq!(unreadable.gaps(0, 10), [(0, 2), (8, 10)]);
    }
}
