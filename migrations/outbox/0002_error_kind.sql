-- The kind of the last failure (duplicate_key, constraint, ...) beside its text, so a dead
-- letter can say both.
ALTER TABLE outbox ADD COLUMN error_kind TEXT;
