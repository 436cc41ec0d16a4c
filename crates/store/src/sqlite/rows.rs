//! Row encoding and decoding for the SQLite backend. Decoding never panics:
//! an unreadable value is [`StoreError::Corrupt`] naming the table, column
//! and row id (never the value).

use chrono::{DateTime, Utc};
use rusqlite::Row;

use crate::{
    AuditRecord, ClockRow, Delivery, DeliveryState, JournalRecord, JournalState, StoreError,
    StoredResource,
};

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

/// Raw outbox columns.
pub(crate) struct DeliveryRow {
    id: i64,
    endpoint: String,
    ordering_key: String,
    kind: String,
    payload: String,
    state: String,
    attempts: i64,
    not_before: i64,
    created_at: i64,
    updated_at: i64,
    last_error: Option<String>,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    journal_id: Option<i64>,
}

pub(crate) fn delivery_row(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        ordering_key: r.get(2)?,
        kind: r.get(3)?,
        payload: r.get(4)?,
        state: r.get(5)?,
        attempts: r.get(6)?,
        not_before: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        last_error: r.get(10)?,
        lease_owner: r.get(11)?,
        lease_until: r.get(12)?,
        journal_id: r.get(13)?,
    })
}

pub(crate) fn delivery(row: DeliveryRow) -> Result<Delivery, StoreError> {
    let id = row.id;
    let what = format!("outbox {id}");
    let corrupt = |col: &str| StoreError::Corrupt(format!("outbox {id}: bad {col}"));
    Ok(Delivery {
        id,
        endpoint: row.endpoint,
        ordering_key: row.ordering_key,
        kind: row.kind,
        payload: serde_json::from_str(&row.payload).map_err(|_| corrupt("payload"))?,
        state: row
            .state
            .parse::<DeliveryState>()
            .map_err(|_| corrupt("state"))?,
        attempts: u32::try_from(row.attempts).map_err(|_| corrupt("attempts"))?,
        not_before: from_micros(row.not_before, &what)?,
        created_at: from_micros(row.created_at, &what)?,
        updated_at: from_micros(row.updated_at, &what)?,
        last_error: row.last_error,
        lease_owner: row.lease_owner,
        lease_until: row.lease_until.map(|t| from_micros(t, &what)).transpose()?,
        journal_id: row.journal_id,
    })
}

/// Raw audit columns.
pub(crate) struct AuditRow {
    seq: i64,
    recorded: i64,
    kind: String,
    patient_id: Option<String>,
    recipient: Option<String>,
    body: String,
    prev_hash: String,
    hash: String,
    version: i32,
    key_id: Option<String>,
}

pub(crate) fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get(0)?,
        recorded: r.get(1)?,
        kind: r.get(2)?,
        patient_id: r.get(3)?,
        recipient: r.get(4)?,
        body: r.get(5)?,
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
        version: r.get(8)?,
        key_id: r.get(9)?,
    })
}

pub(crate) fn audit_record(row: AuditRow) -> Result<AuditRecord, StoreError> {
    let seq = row.seq;
    Ok(AuditRecord {
        seq,
        recorded: from_micros(row.recorded, &format!("audit {seq}"))?,
        kind: row.kind,
        patient_id: row.patient_id,
        recipient: row.recipient,
        body: serde_json::from_str(&row.body)
            .map_err(|_| StoreError::Corrupt(format!("audit {seq}: bad body")))?,
        prev_hash: row.prev_hash,
        hash: row.hash,
        version: row.version,
        key_id: row.key_id,
    })
}

/// Raw clock columns.
pub(crate) struct ClockDbRow {
    id: String,
    kind: String,
    subject: String,
    patient_id: Option<String>,
    started_at: i64,
    due_at: i64,
    state: String,
    closed_at: Option<i64>,
}

pub(crate) fn clock_row(r: &Row<'_>) -> rusqlite::Result<ClockDbRow> {
    Ok(ClockDbRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        subject: r.get(2)?,
        patient_id: r.get(3)?,
        started_at: r.get(4)?,
        due_at: r.get(5)?,
        state: r.get(6)?,
        closed_at: r.get(7)?,
    })
}

pub(crate) fn clock(row: ClockDbRow) -> Result<ClockRow, StoreError> {
    let what = format!("clock {}", row.id);
    Ok(ClockRow {
        started_at: from_micros(row.started_at, &what)?,
        due_at: from_micros(row.due_at, &what)?,
        closed_at: row.closed_at.map(|t| from_micros(t, &what)).transpose()?,
        id: row.id,
        kind: row.kind,
        subject: row.subject,
        patient_id: row.patient_id,
        state: row.state,
    })
}
