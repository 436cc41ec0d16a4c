//! Row encoding and decoding for the SQLite backend. Decoding never panics:
//! an unreadable value is [`StoreError::Corrupt`] naming the table, column
//! and row id (never the value).

use chrono::{DateTime, Utc};
use rusqlite::Row;

use crate::{JournalRecord, JournalState, StoreError, StoredResource};

/// Stored time representation: unix microseconds.
pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Corrupt(format!("{what}: timestamp out of range")))
}

/// Now, truncated to the stored precision.
pub(crate) fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Raw journal columns, converted to the domain type by [`journal_record`].
pub(crate) struct JournalRow {
    id: i64,
    kind: String,
    source_org: String,
    dedup_key: String,
    received_at: i64,
    raw: Vec<u8>,
    meta: String,
    state: String,
    processed_at: Option<i64>,
    error: Option<String>,
}

pub(crate) fn journal_row(r: &Row<'_>) -> rusqlite::Result<JournalRow> {
    Ok(JournalRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        source_org: r.get(2)?,
        dedup_key: r.get(3)?,
        received_at: r.get(4)?,
        raw: r.get(5)?,
        meta: r.get(6)?,
        state: r.get(7)?,
        processed_at: r.get(8)?,
        error: r.get(9)?,
    })
}

pub(crate) fn journal_record(row: JournalRow) -> Result<JournalRecord, StoreError> {
    let id = row.id;
    let corrupt = |col: &str| StoreError::Corrupt(format!("journal {id}: bad {col}"));
    Ok(JournalRecord {
        id,
        kind: row.kind.parse().map_err(|_| corrupt("kind"))?,
        source_org: row.source_org,
        dedup_key: row.dedup_key,
        received_at: from_micros(row.received_at, &format!("journal {id} received_at"))?,
        raw: row.raw,
        meta: serde_json::from_str(&row.meta).map_err(|_| corrupt("meta"))?,
        state: row
            .state
            .parse::<JournalState>()
            .map_err(|_| corrupt("state"))?,
        processed_at: row
            .processed_at
            .map(|t| from_micros(t, &format!("journal {id} processed_at")))
            .transpose()?,
        error: row.error,
    })
}

/// Raw resource columns.
pub(crate) struct ResourceRow {
    resource_type: String,
    id: String,
    version_id: i64,
    last_updated: i64,
    patient_id: Option<String>,
    body: String,
}

pub(crate) fn resource_row(r: &Row<'_>) -> rusqlite::Result<ResourceRow> {
    Ok(ResourceRow {
        resource_type: r.get(0)?,
        id: r.get(1)?,
        version_id: r.get(2)?,
        last_updated: r.get(3)?,
        patient_id: r.get(4)?,
        body: r.get(5)?,
    })
}

pub(crate) fn stored_resource(row: ResourceRow) -> Result<StoredResource, StoreError> {
    let what = format!(
        "{}/{} version {}",
        row.resource_type, row.id, row.version_id
    );
    let body = serde_json::from_str(&row.body)
        .map_err(|_| StoreError::Corrupt(format!("{what}: body is not JSON")))?;
    Ok(StoredResource {
        last_updated: from_micros(row.last_updated, &what)?,
        resource_type: row.resource_type,
        id: row.id,
        version_id: row.version_id,
        patient_id: row.patient_id,
        body,
    })
}
