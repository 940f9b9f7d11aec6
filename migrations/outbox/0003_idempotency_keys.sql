-- Idempotency-Key on POST /api/messages: the first message accepted under a sender's key, kept
-- for IDEMPOTENCY_WINDOW so a retried send returns that message instead of storing another.
-- Written in the same transaction as the message's append, so a 202 and its key are durable
-- together; kept here rather than beside the message because the message leaves the outbox
-- once it is stored.
CREATE TABLE idempotency_keys (
    sender      TEXT NOT NULL,
    key         TEXT NOT NULL,
    message     TEXT NOT NULL,    -- the accepted message, in the contract's JSON format
    created_at  INTEGER NOT NULL, -- milliseconds since the Unix epoch
    PRIMARY KEY (sender, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
