-- The conversations listing (GET /api/channels) reads one user's channels by their last
-- message, newest first. Without a table of its own that grouped every message of the user by
-- channel; with one row per (participant, channel) holding the channel's last message, kept
-- by the batch insert in the same transaction, a page reads exactly the rows it returns.
-- "Last" is the greatest (created_at, id), history's order, so writing a message again (a
-- retry, a replay) or out of order leaves the row as it should be.
CREATE TABLE channel_activity (
    user            TEXT NOT NULL,
    channel         TEXT NOT NULL,     -- canonical participants joined by ','
    last_created_at INTEGER NOT NULL,  -- milliseconds since the Unix epoch
    last_id         TEXT NOT NULL,     -- the id of the message with that time
    PRIMARY KEY (user, channel)
) WITHOUT ROWID;

CREATE INDEX channel_activity_recent
    ON channel_activity (user, last_created_at DESC, last_id DESC);

-- The messages stored before this table existed. `WHERE true` tells the parser that the
-- ON CONFLICT clause belongs to the INSERT, not to a join.
INSERT INTO channel_activity (user, channel, last_created_at, last_id)
    SELECT json_each.value, messages.channel, messages.created_at, messages.id
    FROM messages, json_each(messages.participants) WHERE true
    ON CONFLICT (user, channel) DO UPDATE SET
        last_created_at = excluded.last_created_at,
        last_id = excluded.last_id
    WHERE (excluded.last_created_at, excluded.last_id) > (last_created_at, last_id);
