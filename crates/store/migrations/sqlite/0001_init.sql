-- 0001_init: journal, current resources and resource history.
--
-- Conventions (SQLite backend):
--   * every timestamp is INTEGER unix microseconds, UTC;
--   * JSON (meta, body) is TEXT holding compact serde_json output;
--   * journal.state is one of 'pending' | 'processed' | 'failed'.
--
-- Later migrations (not built yet) will add:
--   * 0002_outbox: per-recipient delivery rows (state, attempts, next_attempt_at,
--     claimed_by/claimed_until), claimed with BEGIN IMMEDIATE here and
--     FOR UPDATE SKIP LOCKED on PostgreSQL;
--   * 0003_audit: append-only AuditEvent rows for every disclosure and refusal.

CREATE TABLE journal (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL,
    source_org   TEXT    NOT NULL,
    dedup_key    TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    raw          BLOB    NOT NULL,
    meta         TEXT    NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'processed', 'failed')),
    processed_at INTEGER,
    error        TEXT,
    UNIQUE (kind, dedup_key)
);

-- Workers scan pending records in id order, and stats count by state,
-- without touching the (possibly large) raw blobs.
CREATE INDEX journal_state ON journal (state, id);

CREATE TABLE resources (
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    INTEGER NOT NULL CHECK (version_id >= 1),
    last_updated  INTEGER NOT NULL,
    patient_id    TEXT,
    body          TEXT    NOT NULL,
    PRIMARY KEY (resource_type, id)
);

CREATE INDEX resources_patient ON resources (patient_id, resource_type);
CREATE INDEX resources_type_updated ON resources (resource_type, last_updated);

-- Every superseded version; the current version lives only in `resources`.
CREATE TABLE resource_history (
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  INTEGER NOT NULL,
    patient_id    TEXT,
    body          TEXT    NOT NULL,
    PRIMARY KEY (resource_type, id, version_id)
);
