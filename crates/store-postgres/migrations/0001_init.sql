-- 0001_init: journal, current resources and resource history (PostgreSQL).
--
-- Same tables and semantics as the SQLite migration of the same number.
-- Conventions (PostgreSQL backend):
--   * timestamps are timestamptz (microsecond precision, UTC on the wire);
--   * JSON (meta, body, payload) is text holding compact serde_json output,
--     byte for byte what the gateway wrote;
--   * journal.state is one of 'pending' | 'processed' | 'failed'.

CREATE TABLE journal (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text COLLATE "C"        NOT NULL,
    source_org   text COLLATE "C"        NOT NULL,
    dedup_key    text COLLATE "C"        NOT NULL,
    received_at  timestamptz NOT NULL,
    raw          bytea       NOT NULL,
    meta         text COLLATE "C"        NOT NULL,
    state        text COLLATE "C"        NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'processed', 'failed')),
    processed_at timestamptz,
    error        text,
    -- Deduplication across every instance sharing the database:
    -- (facility, MSH-10) and (county, eventId) are dedup keys of a kind.
    CONSTRAINT journal_dedup UNIQUE (kind, dedup_key)
);

-- Workers scan pending records in id order; stats count by state.
CREATE INDEX journal_state ON journal (state, id);

CREATE TABLE resources (
    resource_type text COLLATE "C"        NOT NULL,
    id            text COLLATE "C"        NOT NULL,
    version_id    bigint      NOT NULL CHECK (version_id >= 1),
    last_updated  timestamptz NOT NULL,
    patient_id    text,
    body          text COLLATE "C"        NOT NULL,
    PRIMARY KEY (resource_type, id)
);

CREATE INDEX resources_patient ON resources (patient_id, resource_type, id);
CREATE INDEX resources_type_updated_id ON resources (resource_type, last_updated, id);

-- Every superseded version; the current version lives only in `resources`.
CREATE TABLE resource_history (
    resource_type text COLLATE "C"        NOT NULL,
    id            text COLLATE "C"        NOT NULL,
    version_id    bigint      NOT NULL,
    last_updated  timestamptz NOT NULL,
    patient_id    text,
    body          text COLLATE "C"        NOT NULL,
    PRIMARY KEY (resource_type, id, version_id)
);
