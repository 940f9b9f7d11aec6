-- Reconnect recovery (/ws?since=<id>) reads the pending messages of one user's channels after an
-- id. Without an index that scanned every pending row and its participants; with one row per
-- (participant, pending message), ordered by id, it reads exactly the rows it returns.
-- Kept in step by triggers, in the journal's own transactions: a row is here exactly while its
-- message is pending (in the outbox and not dead), whatever statement changed the outbox.
CREATE TABLE outbox_recipients (
    user TEXT NOT NULL,
    id   TEXT NOT NULL,     -- the message's id (commit-ordered UUID v7)
    seq  INTEGER NOT NULL,  -- its outbox row
    PRIMARY KEY (user, id)
) WITHOUT ROWID;

CREATE TRIGGER outbox_recipients_append AFTER INSERT ON outbox WHEN NEW.dead = 0
BEGIN
    INSERT OR IGNORE INTO outbox_recipients (user, id, seq)
        SELECT value, NEW.id, NEW.seq FROM json_each(NEW.participants);
END;

CREATE TRIGGER outbox_recipients_leave AFTER DELETE ON outbox WHEN OLD.dead = 0
BEGIN
    DELETE FROM outbox_recipients
        WHERE id = OLD.id AND user IN (SELECT value FROM json_each(OLD.participants));
END;

CREATE TRIGGER outbox_recipients_dead AFTER UPDATE OF dead ON outbox
    WHEN OLD.dead = 0 AND NEW.dead = 1
BEGIN
    DELETE FROM outbox_recipients
        WHERE id = OLD.id AND user IN (SELECT value FROM json_each(OLD.participants));
END;

CREATE TRIGGER outbox_recipients_revived AFTER UPDATE OF dead ON outbox
    WHEN OLD.dead = 1 AND NEW.dead = 0
BEGIN
    INSERT OR IGNORE INTO outbox_recipients (user, id, seq)
        SELECT value, NEW.id, NEW.seq FROM json_each(NEW.participants);
END;

-- An outbox of an earlier version: its pending rows get their index rows now.
INSERT OR IGNORE INTO outbox_recipients (user, id, seq)
    SELECT json_each.value, outbox.id, outbox.seq
    FROM outbox, json_each(outbox.participants) WHERE outbox.dead = 0;
