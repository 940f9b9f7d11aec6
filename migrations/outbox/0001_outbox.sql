-- The durable local outbox: every accepted message until the store has it.
-- AUTOINCREMENT keeps seq from ever being reused after deletes, so the relay's cursor
-- (everything after the last seq it took) can never skip a new row.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL,
    sender          TEXT NOT NULL,
    content         TEXT NOT NULL,
    participants    TEXT NOT NULL,   -- canonical participants as a JSON array
    created_at      INTEGER NOT NULL, -- milliseconds since the Unix epoch
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    first_failed_at INTEGER,
    last_failed_at  INTEGER,
    dead            INTEGER NOT NULL DEFAULT 0 -- 1: spent its attempts, kept for operators
);

CREATE INDEX outbox_pending ON outbox (dead, seq);
