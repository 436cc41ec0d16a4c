-- 0002_outbox_audit_search: search index, outbox, audit chain, SMART jti
-- cache and deadline clocks. Conventions as in 0001 (INTEGER unix
-- microseconds UTC, compact JSON TEXT). This one migration replaces the
-- "0002_outbox / 0003_audit" plan sketched in 0001's header.

-- Search tokens of the CURRENT version of each resource; replaced on every
-- write of that resource. Exact string match only.
CREATE TABLE resource_index (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (resource_type, param, value, id)
) WITHOUT ROWID;
CREATE INDEX resource_index_resource ON resource_index (resource_type, id);

-- Keyset paging order of resource_search.
CREATE INDEX resources_type_updated_id ON resources (resource_type, last_updated, id);

-- Durable deliveries. AUTOINCREMENT: ids are never reused, so "older" (lower
-- id) stays meaningful for per-(endpoint, ordering_key) ordering.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint     TEXT    NOT NULL,
    ordering_key TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'delivered', 'dead', 'withheld', 'dropped')),
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    not_before   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    last_error   TEXT,
    lease_owner  TEXT,
    lease_until  INTEGER,
    journal_id   INTEGER REFERENCES journal (id)
);
-- Claims scan due pending rows; the head-of-line check looks up older
-- pending rows of the same key; depth/list group by endpoint and state.
CREATE INDEX outbox_due ON outbox (state, not_before, id);
CREATE INDEX outbox_key ON outbox (endpoint, ordering_key, state, id);
CREATE INDEX outbox_endpoint_state ON outbox (endpoint, state, id);
CREATE INDEX outbox_journal ON outbox (journal_id);

-- Append-only, hash-chained audit trail; seq from 1 without gaps.
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    recorded   INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    patient_id TEXT,
    recipient  TEXT,
    body       TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
);
CREATE INDEX audit_patient ON audit (patient_id, seq);
CREATE INDEX audit_recipient ON audit (recipient, seq);

-- The chain head: exactly one row, read and updated in the appending
-- transaction (PostgreSQL locks it with SELECT … FOR UPDATE).
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- SMART client assertion ids seen and not yet expired.
CREATE TABLE jti_cache (
    client_id  TEXT    NOT NULL,
    jti        TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) WITHOUT ROWID;
CREATE INDEX jti_cache_expiry ON jti_cache (expires_at);

-- Deadline clocks, keyed by a deterministic caller-made id.
CREATE TABLE clocks (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    patient_id TEXT,
    started_at INTEGER NOT NULL,
    due_at     INTEGER NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('open', 'met', 'cancelled')),
    closed_at  INTEGER
);
CREATE INDEX clocks_state_due ON clocks (state, due_at, id);
CREATE INDEX clocks_due ON clocks (due_at, id);
CREATE INDEX clocks_subject ON clocks (subject, due_at);
