-- Reconnect recovery (/ws?since=<id>) reads every channel of one user after an id. Without an
-- index that scanned every message newer than `since` and tested its participants; with one
-- row per (participant, message), ordered by id, it reads exactly the rows it returns.
-- Ids are commit-ordered UUIDs, so `id > since ORDER BY id` is "what came after since".
CREATE TABLE message_participants (
    user TEXT NOT NULL,
    id   TEXT NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;

INSERT OR IGNORE INTO message_participants (user, id)
    SELECT json_each.value, messages.id FROM messages, json_each(messages.participants);
