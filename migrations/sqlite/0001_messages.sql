-- The embedded store's history: one row per message, keyed by the message id so a message
-- written twice (retry, replay) is stored once.
CREATE TABLE messages (
    id           TEXT PRIMARY KEY NOT NULL,
    channel      TEXT NOT NULL,     -- canonical participants joined by ','
    sender       TEXT NOT NULL,
    content      TEXT NOT NULL,
    participants TEXT NOT NULL,     -- canonical participants as a JSON array
    created_at   INTEGER NOT NULL   -- milliseconds since the Unix epoch
) WITHOUT ROWID;

-- History reads one channel newest first, ties broken by id.
CREATE INDEX messages_channel_created ON messages (channel, created_at DESC, id DESC);
