-- Messages that spent every persistence attempt: the message as accepted, why it failed,
-- and when. Operators list, replay and purge them with `chatd dlq` or /admin/dead-letters.
CREATE TABLE dead_letters (
    id              TEXT PRIMARY KEY NOT NULL,  -- the message id
    sender          TEXT NOT NULL,
    content         TEXT NOT NULL,
    participants    TEXT NOT NULL,              -- canonical participants as a JSON array
    created_at      INTEGER NOT NULL,           -- milliseconds since the Unix epoch
    error_kind      TEXT NOT NULL,
    error_message   TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at INTEGER NOT NULL,
    last_failed_at  INTEGER NOT NULL,
    instance        TEXT NOT NULL
) WITHOUT ROWID;
