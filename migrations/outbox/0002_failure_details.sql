-- The kind of the last failure (duplicate_key, constraint, ...) beside its text, and the
-- instance that recorded it, so a dead letter can say what failed and who gave up on it.
ALTER TABLE outbox ADD COLUMN error_kind TEXT;
ALTER TABLE outbox ADD COLUMN failed_by TEXT;
