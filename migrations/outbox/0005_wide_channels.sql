-- 0004's (user, id) rows cost one write per participant at append and one more at removal,
-- inside the journal's group commit that every send waits for: a 200-member channel at 500
-- messages/s made the journal write 200,000 index rows a second, and sends stalled for seconds.
-- Channels of more than 32 participants ("wide") now get no per-user rows: their pending
-- messages are found through one partial index on id, and a reader checks membership in the
-- row's participants. Readers pay for the wide messages pending after their cursor; writers
-- pay one index entry per wide message, whatever its size. The 32 is repeated in every query
-- that reads these indexes (src/pipeline/outbox/recipients.rs): the planner matches the
-- partial index by the expression's text.
DROP TRIGGER outbox_recipients_append;
DROP TRIGGER outbox_recipients_leave;
DROP TRIGGER outbox_recipients_dead;
DROP TRIGGER outbox_recipients_revived;

CREATE TRIGGER outbox_recipients_append AFTER INSERT ON outbox
    WHEN NEW.dead = 0 AND json_array_length(NEW.participants) <= 32
BEGIN
    INSERT OR IGNORE INTO outbox_recipients (user, id, seq)
        SELECT value, NEW.id, NEW.seq FROM json_each(NEW.participants);
END;

CREATE TRIGGER outbox_recipients_leave AFTER DELETE ON outbox
    WHEN OLD.dead = 0 AND json_array_length(OLD.participants) <= 32
BEGIN
    DELETE FROM outbox_recipients
        WHERE id = OLD.id AND user IN (SELECT value FROM json_each(OLD.participants));
END;

CREATE TRIGGER outbox_recipients_dead AFTER UPDATE OF dead ON outbox
    WHEN OLD.dead = 0 AND NEW.dead = 1 AND json_array_length(OLD.participants) <= 32
BEGIN
    DELETE FROM outbox_recipients
        WHERE id = OLD.id AND user IN (SELECT value FROM json_each(OLD.participants));
END;

CREATE TRIGGER outbox_recipients_revived AFTER UPDATE OF dead ON outbox
    WHEN OLD.dead = 1 AND NEW.dead = 0 AND json_array_length(NEW.participants) <= 32
BEGIN
    INSERT OR IGNORE INTO outbox_recipients (user, id, seq)
        SELECT value, NEW.id, NEW.seq FROM json_each(NEW.participants);
END;

-- The wide messages' rows 0004 wrote: the partial index finds those messages now.
DELETE FROM outbox_recipients
    WHERE seq IN (SELECT seq FROM outbox WHERE json_array_length(participants) > 32);

CREATE INDEX outbox_wide ON outbox (id)
    WHERE dead = 0 AND json_array_length(participants) > 32;
