-- The intake log's mark (see crates/store/src/sqlite/intake_log.rs): the
-- epoch of the running store's log, and the highest log seq whose journal
-- row is committed. It is written in the same transaction as the rows it
-- covers, so after a crash the log records above it are exactly the
-- acknowledged appends the journal may not have: they are replayed at open.
CREATE TABLE intake_log (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    epoch       INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL
);
INSERT INTO intake_log (id, epoch, applied_seq) VALUES (1, 0, 0);
