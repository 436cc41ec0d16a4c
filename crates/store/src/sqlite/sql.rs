//! Every SQL statement of the SQLite backend, in one place.
//!
//! Timestamps are INTEGER unix microseconds (UTC); JSON is TEXT. A
//! PostgreSQL backend gets its own `sql.rs` with the same statement names.

/// Embedded, forward-only migrations: `(version, name, sql)`, ascending.
/// Never edit a released migration; add a new file.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "outbox_audit_search",
        include_str!("../../migrations/sqlite/0002_outbox_audit_search.sql"),
    ),
    (
        3,
        "audit_keyed",
        include_str!("../../migrations/sqlite/0003_audit_keyed.sql"),
    ),
    (
        4,
        "drop_redundant_index",
        include_str!("../../migrations/sqlite/0004_drop_redundant_index.sql"),
    ),
    (
        5,
        "audit_jcs",
        include_str!("../../migrations/sqlite/0005_audit_jcs.sql"),
    ),
    (
        6,
        "intake_log",
        include_str!("../../migrations/sqlite/0006_intake_log.sql"),
    ),
];

/// The intake log's applied mark (`intake_log.rs`), raised in the
/// transaction that journals the appends it covers.
pub(crate) const INTAKE_LOG_APPLIED: &str =
    "UPDATE intake_log SET applied_seq = ?1 WHERE id = 1 AND applied_seq < ?1";

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
/// Params: id, processed_at, error. Only a pending record.
pub(crate) const JOURNAL_MARK_FAILED: &str = "UPDATE journal
    SET state = 'failed', processed_at = ?2, error = ?3
    WHERE id = ?1 AND state = 'pending'";
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
/// Params: kind, lower bound (the prefix), upper bound, key length in bytes,
/// the key to leave out. A range over the unique `(kind, dedup_key)` index
/// (BINARY collation: byte order).
pub(crate) const JOURNAL_KEY_PREFIX_EXISTS: &str = "SELECT 1 FROM journal
    WHERE kind = ?1 AND dedup_key >= ?2 AND dedup_key < ?3
      AND length(CAST(dedup_key AS BLOB)) = ?4 AND dedup_key <> ?5
      AND id < coalesce(
          (SELECT id FROM journal WHERE kind = ?1 AND dedup_key = ?5),
          9223372036854775807)
    LIMIT 1";

// ---- resources ----

const RESOURCE_COLUMNS: &str = "resource_type, id, version_id, last_updated, patient_id, body";

pub(crate) fn resource_get() -> String {
    format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE resource_type = ?1 AND id = ?2")
}
/// Params: resource_type, the ids as one JSON array of strings (one
/// statement text for any number of ids; a primary-key lookup each).
pub(crate) fn resource_get_many() -> String {
    format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources
         WHERE resource_type = ?1 AND id IN (SELECT value FROM json_each(?2)) ORDER BY id"
    )
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
/// Params: patient_id, then `n` resource types.
pub(crate) fn resources_by_patient_types(n: usize) -> String {
    let marks: Vec<String> = (0..n).map(|i| format!("?{}", i + 2)).collect();
    format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources
         WHERE patient_id = ?1 AND resource_type IN ({}) ORDER BY resource_type, id",
        marks.join(", ")
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

/// Highest stamp in use, so stamps stay increasing across restarts.
pub(crate) const RESOURCE_MAX_UPDATED: &str =
    "SELECT COALESCE(MAX(last_updated), 0) FROM resources";

// ---- search index ----

/// Params: resource_type, id.
pub(crate) const INDEX_DELETE: &str =
    "DELETE FROM resource_index WHERE resource_type = ?1 AND id = ?2";
/// A resource's tokens, in (param, value) order. Params: resource_type, id.
pub(crate) const INDEX_OF_RESOURCE: &str = "SELECT param, value FROM resource_index
    WHERE resource_type = ?1 AND id = ?2 ORDER BY param, value";
/// Params: resource_type, id, param, value.
pub(crate) const INDEX_INSERT: &str = "INSERT INTO resource_index
    (resource_type, id, param, value) VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT DO NOTHING";

/// The shape of one search; parameters are bound in this order:
/// resource_type, (driver name, driver value), ids…, for each other param
/// (name, values…), patient_id, each last_updated bound, cursor
/// (last_updated, last_updated, id), limit.
pub(crate) struct SearchShape<'a> {
    /// Drive the search from one selective single-valued token (bound
    /// first: resource type, param, value) instead of scanning the type.
    pub driver: bool,
    pub ids: usize,
    pub values_per_param: Vec<usize>,
    pub patient: bool,
    pub cmps: &'a [crate::Cmp],
    pub after: bool,
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Without a driver, SQLite walks `resources_type_updated_id` in
/// `(last_updated, id)` order and probes the token index per row: right for
/// dense filters (`status=requested` matches most rows, the first page is
/// found early), but linear in the number of resources of the type for a
/// selective one. A `patient` or `identifier` token matches a handful of
/// rows, so those searches start from the token's primary key
/// (`CROSS JOIN` fixes the join order) and sort the few matches: measured
/// with `bench api` (docs/performance.md) and checked by
/// `EXPLAIN QUERY PLAN` in the tests below.
pub(crate) fn resource_search(shape: &SearchShape<'_>) -> String {
    let mut sql = String::from(if shape.driver {
        "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.patient_id, r.body
         FROM resource_index d CROSS JOIN resources r
         WHERE d.resource_type = ? AND d.param = ? AND d.value = ?
         AND r.resource_type = d.resource_type AND r.id = d.id"
    } else {
        "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.patient_id, r.body
         FROM resources r WHERE r.resource_type = ?"
    });
    if shape.ids > 0 {
        sql.push_str(&format!(" AND r.id IN ({})", placeholders(shape.ids)));
    }
    for &n in &shape.values_per_param {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM resource_index x
               WHERE x.resource_type = r.resource_type AND x.id = r.id
               AND x.param = ? AND x.value IN ({}))",
            placeholders(n)
        ));
    }
    if shape.patient {
        sql.push_str(" AND r.patient_id = ?");
    }
    for cmp in shape.cmps {
        sql.push_str(&format!(" AND r.last_updated {} ?", cmp.sql_op()));
    }
    if shape.after {
        sql.push_str(" AND (r.last_updated > ? OR (r.last_updated = ? AND r.id > ?))");
    }
    sql.push_str(" ORDER BY r.last_updated, r.id LIMIT ?");
    sql
}

// ---- outbox ----

const OUTBOX_COLUMNS: &str = "id, endpoint, ordering_key, kind, payload, state, attempts,
    not_before, created_at, updated_at, last_error, lease_owner, lease_until, journal_id";

/// Params: endpoint, ordering_key, kind, payload, not_before, now, journal_id.
pub(crate) const OUTBOX_INSERT: &str = "INSERT INTO outbox
    (endpoint, ordering_key, kind, payload, state, attempts, not_before,
     created_at, updated_at, journal_id)
    VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?6, ?7)
    RETURNING id";
pub(crate) const OUTBOX_IDS_BY_JOURNAL: &str =
    "SELECT id FROM outbox WHERE journal_id = ?1 ORDER BY id";

/// `o` has no older Pending row with the same (endpoint, ordering_key).
const OUTBOX_IS_HEAD: &str = "NOT EXISTS (SELECT 1 FROM outbox p
    WHERE p.endpoint = o.endpoint AND p.ordering_key = o.ordering_key
    AND p.state = 'pending' AND p.id < o.id)";

/// Params: worker, lease_until, updated_at, now, endpoint (nullable), limit.
/// Earliest due first, walking `outbox_due` so a backlog is not sorted on
/// every claim. (PostgreSQL: SELECT … FOR UPDATE SKIP LOCKED, then UPDATE.)
pub(crate) fn outbox_claim() -> String {
    format!(
        "UPDATE outbox SET lease_owner = ?1, lease_until = ?2, updated_at = ?3
         WHERE id IN (
             SELECT o.id FROM outbox o
             WHERE o.state = 'pending' AND o.not_before <= ?4
             AND (o.lease_until IS NULL OR o.lease_until <= ?4)
             AND (?5 IS NULL OR o.endpoint = ?5)
             AND {OUTBOX_IS_HEAD}
             ORDER BY o.not_before, o.id LIMIT ?6)
         RETURNING {OUTBOX_COLUMNS}"
    )
}
/// Params: id, worker, new state, attempts increment, new not_before
/// (nullable = keep), set_error (0/1), error, updated_at.
pub(crate) const OUTBOX_FINISH: &str = "UPDATE outbox
    SET state = ?3, attempts = attempts + ?4, not_before = COALESCE(?5, not_before),
        last_error = CASE WHEN ?6 = 1 THEN ?7 ELSE last_error END,
        lease_owner = NULL, lease_until = NULL, updated_at = ?8
    WHERE id = ?1 AND lease_owner = ?2 AND state = 'pending'";
/// Params: id, now.
pub(crate) const OUTBOX_RETRY: &str = "UPDATE outbox
    SET state = 'pending', attempts = 0, not_before = ?2, updated_at = ?2,
        lease_owner = NULL, lease_until = NULL
    WHERE id = ?1 AND state IN ('dead', 'withheld')";
/// Params: id, now.
pub(crate) const OUTBOX_DROP: &str = "UPDATE outbox
    SET state = 'dropped', updated_at = ?2 WHERE id = ?1 AND state = 'dead'";
pub(crate) fn outbox_get() -> String {
    format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?1")
}
/// Params: state, endpoint, limit (filters only present when asked for,
/// so the indexes apply).
pub(crate) fn outbox_list(state: bool, endpoint: bool) -> String {
    format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE 1 = 1{}{} ORDER BY id LIMIT ?3",
        if state { " AND state = ?1" } else { "" },
        if endpoint { " AND endpoint = ?2" } else { "" },
    )
}
pub(crate) const OUTBOX_DEPTH: &str = "SELECT endpoint, state, COUNT(*) FROM outbox
    GROUP BY endpoint, state ORDER BY endpoint, state";
pub(crate) fn outbox_next_due() -> String {
    format!(
        "SELECT MIN(CASE WHEN o.lease_until IS NOT NULL AND o.lease_until > o.not_before
                    THEN o.lease_until ELSE o.not_before END)
         FROM outbox o WHERE o.state = 'pending' AND {OUTBOX_IS_HEAD}"
    )
}

// ---- audit ----

const AUDIT_COLUMNS: &str =
    "seq, recorded, kind, patient_id, recipient, body, prev_hash, hash, version, key_id";

/// The chain head: seq, hash, version (PostgreSQL: `FOR UPDATE`).
pub(crate) const AUDIT_HEAD: &str = "SELECT seq, hash, version FROM audit_head WHERE id = 1";
/// Params: seq, hash, version.
pub(crate) const AUDIT_HEAD_UPDATE: &str =
    "UPDATE audit_head SET seq = ?1, hash = ?2, version = ?3 WHERE id = 1";
/// Params: seq, recorded, kind, patient_id, recipient, body, prev_hash,
/// hash, version, key_id.
pub(crate) const AUDIT_INSERT: &str = "INSERT INTO audit
    (seq, recorded, kind, patient_id, recipient, body, prev_hash, hash, version, key_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
/// Params: patient_id, seq.
pub(crate) const AUDIT_PATIENT_INSERT: &str =
    "INSERT OR IGNORE INTO audit_patients (patient_id, seq) VALUES (?1, ?2)";
/// Params: after_seq, patient_id, recipient, limit (filters only present
/// when asked for). The patient filter walks `audit_patients` (every patient
/// a record names) in seq order.
pub(crate) fn audit_list(patient: bool, recipient: bool) -> String {
    let cols = AUDIT_COLUMNS
        .split(", ")
        .map(|c| format!("a.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    if patient {
        format!(
            "SELECT {cols} FROM audit_patients ap JOIN audit a ON a.seq = ap.seq
             WHERE ap.patient_id = ?2 AND ap.seq > ?1{} ORDER BY ap.seq LIMIT ?4",
            if recipient {
                " AND a.recipient = ?3"
            } else {
                ""
            },
        )
    } else {
        format!(
            "SELECT {cols} FROM audit a WHERE a.seq > ?1{} ORDER BY a.seq LIMIT ?4",
            if recipient {
                " AND a.recipient = ?3"
            } else {
                ""
            },
        )
    }
}
pub(crate) fn audit_all() -> String {
    format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq")
}

// ---- SMART jti cache ----

/// Purge a bounded number of expired rows. Params: now.
pub(crate) const JTI_PURGE: &str = "DELETE FROM jti_cache WHERE (client_id, jti) IN
    (SELECT client_id, jti FROM jti_cache WHERE expires_at <= ?1 LIMIT 64)";
/// Insert, or take over an expired row. Returns a row on first use.
/// Params: client_id, jti, expires_at, now.
pub(crate) const JTI_USE: &str = "INSERT INTO jti_cache (client_id, jti, expires_at)
    VALUES (?1, ?2, ?3)
    ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = excluded.expires_at
    WHERE jti_cache.expires_at <= ?4
    RETURNING 1";

// ---- clocks ----

const CLOCK_COLUMNS: &str = "id, kind, subject, patient_id, started_at, due_at, state, closed_at";

/// Params in CLOCK_COLUMNS order.
pub(crate) const CLOCK_UPSERT: &str = "INSERT INTO clocks
    (id, kind, subject, patient_id, started_at, due_at, state, closed_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, subject = excluded.subject,
        patient_id = excluded.patient_id, started_at = excluded.started_at,
        due_at = excluded.due_at, state = excluded.state, closed_at = excluded.closed_at";
/// Params: due_before, subject, limit (filters only present when asked for).
pub(crate) fn clock_list(open_only: bool, due_before: bool, subject: bool) -> String {
    format!(
        "SELECT {CLOCK_COLUMNS} FROM clocks WHERE 1 = 1{}{}{} ORDER BY due_at, id LIMIT ?3",
        if open_only { " AND state = 'open'" } else { "" },
        if due_before { " AND due_at < ?1" } else { "" },
        if subject { " AND subject = ?2" } else { "" },
    )
}

/// Params: the subjects as one JSON array of strings, then the kind (when
/// asked for). One statement text for any number of subjects, so it stays
/// in the statement cache; `json_each` feeds the `clocks_subject` index.
pub(crate) fn clock_list_subjects(kind: bool) -> String {
    format!(
        "SELECT {CLOCK_COLUMNS} FROM clocks WHERE subject IN (SELECT value FROM json_each(?1)){} \
         ORDER BY subject, due_at, id",
        if kind { " AND kind = ?2" } else { "" },
    )
}

pub(crate) const PING: &str = "SELECT 1";
