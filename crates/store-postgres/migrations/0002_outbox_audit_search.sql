-- 0002_outbox_audit_search: search index, outbox, audit chain, SMART jti
-- cache, deadline clocks (same semantics as the SQLite migration of the
-- same number), plus the shared resource stamp clock.

CREATE TABLE resource_index (
    resource_type text COLLATE "C" NOT NULL,
    id            text COLLATE "C" NOT NULL,
    param         text COLLATE "C" NOT NULL,
    value         text COLLATE "C" NOT NULL,
    PRIMARY KEY (resource_type, param, value, id)
);
CREATE INDEX resource_index_resource ON resource_index (resource_type, id);

-- The last resource stamp handed out, by any instance: exactly one row.
-- Every resource-writing transaction locks it first (SELECT … FOR UPDATE),
-- stamps its writes strictly after it and stores the last stamp, so
-- `last_updated` strictly increases across instances and commits happen in
-- stamp order (keyset paging stays stable).
CREATE TABLE stamp_clock (
    id int         PRIMARY KEY CHECK (id = 1),
    ts timestamptz NOT NULL
);
INSERT INTO stamp_clock (id, ts) VALUES (1, '1970-01-01T00:00:00Z');

-- Durable deliveries. Ids come from an identity sequence and are never
-- reused; enqueuers of one (endpoint, ordering_key) serialise on a
-- transaction advisory lock, so within a key id order is commit order.
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint     text COLLATE "C"        NOT NULL,
    ordering_key text COLLATE "C"        NOT NULL,
    kind         text COLLATE "C"        NOT NULL,
    payload      text COLLATE "C"        NOT NULL,
    state        text COLLATE "C"        NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'delivered', 'dead', 'withheld', 'dropped')),
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    not_before   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    last_error   text,
    lease_owner  text,
    lease_until  timestamptz,
    journal_id   bigint REFERENCES journal (id)
);
CREATE INDEX outbox_due ON outbox (not_before, id) WHERE state = 'pending';
CREATE INDEX outbox_key ON outbox (endpoint, ordering_key, id) WHERE state = 'pending';
CREATE INDEX outbox_endpoint_state ON outbox (endpoint, state, id);
CREATE INDEX outbox_state ON outbox (state, id);
CREATE INDEX outbox_journal ON outbox (journal_id);

-- Append-only, hash-chained audit trail; seq from 1 without gaps.
CREATE TABLE audit (
    seq        bigint      PRIMARY KEY,
    recorded   timestamptz NOT NULL,
    kind       text COLLATE "C"        NOT NULL,
    patient_id text,
    recipient  text,
    body       text COLLATE "C"        NOT NULL,
    prev_hash  text COLLATE "C"        NOT NULL,
    hash       text COLLATE "C"        NOT NULL
);
CREATE INDEX audit_patient ON audit (patient_id, seq);
CREATE INDEX audit_recipient ON audit (recipient, seq);

-- The chain head: one row, locked FOR UPDATE by the appending transaction.
CREATE TABLE audit_head (
    id   int    PRIMARY KEY CHECK (id = 1),
    seq  bigint NOT NULL,
    hash text COLLATE "C"   NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- SMART client assertion ids seen and not yet expired, shared by instances.
CREATE TABLE jti_cache (
    client_id  text COLLATE "C"        NOT NULL,
    jti        text COLLATE "C"        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX jti_cache_expiry ON jti_cache (expires_at);

CREATE TABLE clocks (
    id         text COLLATE "C"        PRIMARY KEY,
    kind       text COLLATE "C"        NOT NULL,
    subject    text COLLATE "C"        NOT NULL,
    patient_id text,
    started_at timestamptz NOT NULL,
    due_at     timestamptz NOT NULL,
    state      text COLLATE "C"        NOT NULL CHECK (state IN ('open', 'met', 'cancelled')),
    closed_at  timestamptz
);
CREATE INDEX clocks_state_due ON clocks (state, due_at, id);
CREATE INDEX clocks_due ON clocks (due_at, id);
CREATE INDEX clocks_subject ON clocks (subject, due_at);
