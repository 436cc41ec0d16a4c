//! Every SQL statement of the SQLite backend, in one place.
//!
//! Timestamps are INTEGER unix microseconds (UTC); JSON is TEXT. A
//! PostgreSQL backend gets its own `sql.rs` with the same statement names.

/// Embedded, forward-only migrations: `(version, name, sql)`, ascending.
/// Never edit a released migration; add a new file.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../../migrations/sqlite/0001_init.sql"),
)];

pub(crate) const CREATE_SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";
pub(crate) const SELECT_MIGRATIONS: &str =
    "SELECT version, name FROM schema_migrations ORDER BY version";
pub(crate) const INSERT_MIGRATION: &str =
    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)";

// ---- journal: writes ----

/// Params: kind, source_org, dedup_key, received_at, raw, meta. Returns the
/// new id, or no row when (kind, dedup_key) exists.
pub(crate) const JOURNAL_INSERT: &str = "INSERT INTO journal
    (kind, source_org, dedup_key, received_at, raw, meta, state)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending')
    ON CONFLICT (kind, dedup_key) DO NOTHING
    RETURNING id";
pub(crate) const JOURNAL_ID_BY_KEY: &str =
    "SELECT id FROM journal WHERE kind = ?1 AND dedup_key = ?2";
pub(crate) const JOURNAL_STATE: &str = "SELECT state FROM journal WHERE id = ?1";
/// Params: id, processed_at. Leaves an already processed record untouched.
pub(crate) const JOURNAL_MARK_PROCESSED: &str = "UPDATE journal
    SET state = 'processed', processed_at = ?2, error = NULL
    WHERE id = ?1 AND state <> 'processed'";
/// Params: id, processed_at, error.
pub(crate) const JOURNAL_MARK_FAILED: &str = "UPDATE journal
    SET state = 'failed', processed_at = ?2, error = ?3
    WHERE id = ?1";
/// Params: from, to.
pub(crate) const JOURNAL_REQUEUE: &str = "UPDATE journal
    SET state = 'pending', processed_at = NULL, error = NULL
    WHERE id BETWEEN ?1 AND ?2 AND state <> 'pending'";

// ---- journal: reads ----

const JOURNAL_COLUMNS: &str =
    "id, kind, source_org, dedup_key, received_at, raw, meta, state, processed_at, error";

pub(crate) fn journal_get() -> String {
    format!("SELECT {JOURNAL_COLUMNS} FROM journal WHERE id = ?1")
}
pub(crate) fn journal_pending() -> String {
    format!(
        "SELECT {JOURNAL_COLUMNS} FROM journal
         WHERE state = 'pending' AND id > ?1 ORDER BY id LIMIT ?2"
    )
}
pub(crate) const JOURNAL_STATS: &str = "SELECT state, COUNT(*) FROM journal GROUP BY state";

// ---- resources ----

const RESOURCE_COLUMNS: &str = "resource_type, id, version_id, last_updated, patient_id, body";

pub(crate) fn resource_get() -> String {
    format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE resource_type = ?1 AND id = ?2")
}
pub(crate) fn resource_history() -> String {
    format!(
        "SELECT {RESOURCE_COLUMNS} FROM resource_history
         WHERE resource_type = ?1 AND id = ?2 ORDER BY version_id"
    )
}
pub(crate) fn resources_by_patient() -> String {
    format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources
         WHERE patient_id = ?1 ORDER BY resource_type, id"
    )
}
pub(crate) fn resources_by_patient_and_type() -> String {
    format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources
         WHERE patient_id = ?1 AND resource_type = ?2 ORDER BY id"
    )
}
pub(crate) const RESOURCE_COUNT_ALL: &str = "SELECT COUNT(*) FROM resources";
pub(crate) const RESOURCE_COUNT_TYPE: &str =
    "SELECT COUNT(*) FROM resources WHERE resource_type = ?1";
/// Params: resource_type, id, last_updated, patient_id, body (version 1).
pub(crate) const RESOURCE_INSERT: &str = "INSERT INTO resources
    (resource_type, id, version_id, last_updated, patient_id, body)
    VALUES (?1, ?2, 1, ?3, ?4, ?5)";
/// Copy the current version into history. Params: resource_type, id.
pub(crate) const RESOURCE_TO_HISTORY: &str = "INSERT INTO resource_history
    (resource_type, id, version_id, last_updated, patient_id, body)
    SELECT resource_type, id, version_id, last_updated, patient_id, body
    FROM resources WHERE resource_type = ?1 AND id = ?2";
/// Params: resource_type, id, version_id, last_updated, patient_id, body.
pub(crate) const RESOURCE_UPDATE: &str = "UPDATE resources
    SET version_id = ?3, last_updated = ?4, patient_id = ?5, body = ?6
    WHERE resource_type = ?1 AND id = ?2";

pub(crate) const PING: &str = "SELECT 1";
