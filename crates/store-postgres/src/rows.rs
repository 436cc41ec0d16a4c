//! Row → domain conversions and the small query helper trait.
//!
//! Every conversion fails with [`StoreError::Corrupt`] (naming the table and
//! column, never the value) when a stored value cannot be decoded.

use chrono::{DateTime, Utc};
use store::{
    AuditRecord, ClockRow, Delivery, InputKind, JournalRecord, JournalState, StoreError,
    StoredResource,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::pg;

/// Statement parameters.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Run statements with the connection's statement cache: implemented by
/// pooled connections and by transactions.
#[async_trait::async_trait]
pub(crate) trait Db: Sync {
    /// Rows of a query.
    async fn rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError>;
    /// Affected row count of a statement.
    async fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError>;
    /// At most one row.
    async fn opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, params).await?.into_iter().next())
    }
    /// Exactly one row.
    async fn one(&self, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
        self.opt(sql, params)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a query returned no row".to_string()))
    }
}

#[async_trait::async_trait]
impl Db for deadpool_postgres::Client {
    async fn rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let st = self.prepare_cached(sql).await.map_err(pg)?;
        self.query(&st, params).await.map_err(pg)
    }
    async fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let st = self.prepare_cached(sql).await.map_err(pg)?;
        self.execute(&st, params).await.map_err(pg)
    }
}

#[async_trait::async_trait]
impl Db for deadpool_postgres::Transaction<'_> {
    async fn rows(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let st = self.prepare_cached(sql).await.map_err(pg)?;
        self.query(&st, params).await.map_err(pg)
    }
    async fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let st = self.prepare_cached(sql).await.map_err(pg)?;
        self.execute(&st, params).await.map_err(pg)
    }
}

/// A typed column, or `Corrupt(table.column)`.
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    what: &str,
) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|_| StoreError::Corrupt(format!("{what}: column {idx} cannot be decoded")))
}

fn json(text: &str, what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt(format!("{what}: bad JSON")))
}

pub(crate) const JOURNAL_COLUMNS: &str =
    "id, kind, source_org, dedup_key, received_at, raw, meta, state, processed_at, error";

pub(crate) fn journal(row: &Row) -> Result<JournalRecord, StoreError> {
    const W: &str = "journal";
    let id: i64 = col(row, 0, W)?;
    let kind: String = col(row, 1, W)?;
    let state: String = col(row, 7, W)?;
    let meta: String = col(row, 6, W)?;
    Ok(JournalRecord {
        id,
        kind: kind
            .parse::<InputKind>()
            .map_err(|_| StoreError::Corrupt(format!("journal {id}: bad kind")))?,
        source_org: col(row, 2, W)?,
        dedup_key: col(row, 3, W)?,
        received_at: col(row, 4, W)?,
        raw: col(row, 5, W)?,
        meta: json(&meta, "journal meta")?,
        state: state
            .parse::<JournalState>()
            .map_err(|_| StoreError::Corrupt(format!("journal {id}: bad state")))?,
        processed_at: col(row, 8, W)?,
        error: col(row, 9, W)?,
    })
}

pub(crate) const RESOURCE_COLUMNS: &str =
    "resource_type, id, version_id, last_updated, patient_id, body";

pub(crate) fn resource(row: &Row) -> Result<StoredResource, StoreError> {
    const W: &str = "resources";
    let body: String = col(row, 5, W)?;
    Ok(StoredResource {
        resource_type: col(row, 0, W)?,
        id: col(row, 1, W)?,
        version_id: col(row, 2, W)?,
        last_updated: col(row, 3, W)?,
        patient_id: col(row, 4, W)?,
        body: json(&body, "resource body")?,
    })
}

pub(crate) const OUTBOX_COLUMNS: &str =
    "id, endpoint, ordering_key, kind, payload, state, attempts,
    not_before, created_at, updated_at, last_error, lease_owner, lease_until, journal_id";

pub(crate) fn delivery(row: &Row) -> Result<Delivery, StoreError> {
    const W: &str = "outbox";
    let id: i64 = col(row, 0, W)?;
    let payload: String = col(row, 4, W)?;
    let state: String = col(row, 5, W)?;
    let attempts: i32 = col(row, 6, W)?;
    Ok(Delivery {
        id,
        endpoint: col(row, 1, W)?,
        ordering_key: col(row, 2, W)?,
        kind: col(row, 3, W)?,
        payload: json(&payload, "outbox payload")?,
        state: state
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("outbox {id}: bad state")))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("outbox {id}: bad attempts")))?,
        not_before: col(row, 7, W)?,
        created_at: col(row, 8, W)?,
        updated_at: col(row, 9, W)?,
        last_error: col(row, 10, W)?,
        lease_owner: col(row, 11, W)?,
        lease_until: col(row, 12, W)?,
        journal_id: col(row, 13, W)?,
    })
}

pub(crate) const AUDIT_COLUMNS: &str =
    "seq, recorded, kind, patient_id, recipient, body, prev_hash, hash, version, key_id";
/// [`AUDIT_COLUMNS`] of the table aliased `a`.
pub(crate) const AUDIT_COLUMNS_A: &str =
    "a.seq, a.recorded, a.kind, a.patient_id, a.recipient, a.body, a.prev_hash, a.hash, a.version, a.key_id";

pub(crate) fn audit(row: &Row) -> Result<AuditRecord, StoreError> {
    const W: &str = "audit";
    let body: String = col(row, 5, W)?;
    Ok(AuditRecord {
        seq: col(row, 0, W)?,
        recorded: col(row, 1, W)?,
        kind: col(row, 2, W)?,
        patient_id: col(row, 3, W)?,
        recipient: col(row, 4, W)?,
        body: json(&body, "audit body")?,
        prev_hash: col(row, 6, W)?,
        hash: col(row, 7, W)?,
        version: col(row, 8, W)?,
        key_id: col(row, 9, W)?,
    })
}

pub(crate) const CLOCK_COLUMNS: &str =
    "id, kind, subject, patient_id, started_at, due_at, state, closed_at";

pub(crate) fn clock(row: &Row) -> Result<ClockRow, StoreError> {
    const W: &str = "clocks";
    Ok(ClockRow {
        id: col(row, 0, W)?,
        kind: col(row, 1, W)?,
        subject: col(row, 2, W)?,
        patient_id: col(row, 3, W)?,
        started_at: col(row, 4, W)?,
        due_at: col(row, 5, W)?,
        state: col(row, 6, W)?,
        closed_at: col(row, 7, W)?,
    })
}

/// `t` truncated to microseconds (what timestamptz keeps).
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
