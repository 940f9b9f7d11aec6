-- How many dead-letter replays ended each way (replayed, failed, not_found), kept in the store
-- so that the server's chat_dlq_replays_total counts the CLI's replays and every instance's.
CREATE TABLE dead_letter_replays (
    result TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
