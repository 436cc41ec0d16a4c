//! Validation and bookkeeping shared by every backend, for backends that
//! live in other crates (the PostgreSQL store).
//!
//! These wrappers expose the exact checks the SQLite backend applies, so
//! every backend rejects the same input with the same [`StoreError`] and
//! computes resource content, version meta and the audit chain the same
//! way. They are not part of the gateway's storage API: only backends
//! should call them.

use chrono::{DateTime, Utc};

use crate::audit::{AuditKey, AuditKeys, ChainVerifier};
use crate::metrics::MetricsRecorder;
use crate::search::QueryCheck;
use crate::{
    AuditRecord, ClockRow, NewAudit, NewDelivery, NewInput, ResourceQuery, ResourceWrite,
    SearchToken, StoreError, StoreMetrics,
};

/// A validated resource write: body reduced to its content (no version meta).
#[derive(Debug, Clone)]
pub struct CheckedWrite {
    /// FHIR resource type.
    pub resource_type: String,
    /// FHIR logical id.
    pub id: String,
    /// Patient compartment id.
    pub patient_id: Option<String>,
    /// The body without `meta.versionId` / `meta.lastUpdated`.
    pub content: serde_json::Value,
    /// Deduplicated search tokens.
    pub index: Vec<SearchToken>,
}

/// A validated audit record with its canonical body text.
#[derive(Debug, Clone)]
pub struct CheckedAudit {
    /// Record time, truncated to microseconds.
    pub recorded: DateTime<Utc>,
    /// Record kind.
    pub kind: String,
    /// Patient id, if any.
    pub patient_id: Option<String>,
    /// Recipient, if any.
    pub recipient: Option<String>,
    /// The body as given.
    pub body: serde_json::Value,
    /// The body's canonical form for the version it is sealed as
    /// ([`crate::audit::canonical_body`]): what is hashed and stored.
    pub canonical: String,
    /// Every patient the record names (the `audit_patients` rows).
    pub patients: Vec<String>,
    /// The key to seal it with (the ring's current key), if any.
    pub key: Option<std::sync::Arc<AuditKey>>,
}

/// Check an input for [`crate::Store::append`]; returns the serialized meta.
pub fn check_input(input: &NewInput) -> Result<String, StoreError> {
    crate::validate_input(input)
}

/// Check resource writes (count, type, id, body, tokens).
pub fn check_writes(writes: Vec<ResourceWrite>) -> Result<Vec<CheckedWrite>, StoreError> {
    Ok(crate::resource::prepare_writes(writes)?
        .into_iter()
        .map(|w| CheckedWrite {
            resource_type: w.resource_type,
            id: w.id,
            patient_id: w.patient_id,
            content: w.content,
            index: w.index,
        })
        .collect())
}

/// A stored body reduced to its content (for the "unchanged" comparison).
pub fn content_of(body: serde_json::Value) -> serde_json::Value {
    crate::resource::content_of(body)
}

/// Content with `meta.versionId` and `meta.lastUpdated` set.
pub fn with_version_meta(
    content: serde_json::Value,
    version: i64,
    at: DateTime<Utc>,
) -> serde_json::Value {
    crate::resource::with_version_meta(content, version, at)
}

/// Check deliveries; returns each serialized payload, in order.
pub fn check_deliveries(items: &[NewDelivery]) -> Result<Vec<String>, StoreError> {
    crate::outbox::prepare_deliveries(items)
}

/// Check a worker id.
pub fn check_worker(worker: &str) -> Result<(), StoreError> {
    crate::outbox::check_worker(worker)
}

/// Check audit records and compute their canonical bodies; `keys`' current
/// key will seal them.
pub fn check_audits(
    entries: Vec<NewAudit>,
    keys: &AuditKeys,
) -> Result<Vec<CheckedAudit>, StoreError> {
    Ok(crate::audit::prepare_audits(entries, keys)?
        .into_iter()
        .map(|a| CheckedAudit {
            recorded: a.recorded,
            kind: a.kind,
            patient_id: a.patient_id,
            recipient: a.recipient,
            body: a.body,
            canonical: a.canonical,
            patients: a.patients,
            key: a.key,
        })
        .collect())
}

/// Seal the record after `prev_hash` at `seq`: `(version, key_id, hash)`
/// (see [`crate::audit`]); `Err` when `a` has no key and the head is keyed.
pub fn seal_audit(
    a: &CheckedAudit,
    head_version: i32,
    prev_hash: &str,
    seq: i64,
) -> Result<(i32, Option<String>, String), StoreError> {
    crate::audit::seal(
        a.key.as_deref(),
        head_version,
        prev_hash,
        seq,
        a.recorded,
        &a.kind,
        a.patient_id.as_deref(),
        a.recipient.as_deref(),
        &a.canonical,
    )
}

/// Check clocks.
pub fn check_clocks(clocks: &[ClockRow]) -> Result<(), StoreError> {
    crate::clock::check_clocks(clocks)
}

/// Check the subjects of one `clock_list_subjects`.
pub fn check_clock_subjects(subjects: &[String]) -> Result<(), StoreError> {
    crate::clock::check_clock_subjects(subjects)
}

/// Check a `(client_id, jti)` pair.
pub fn check_jti(client_id: &str, jti: &str) -> Result<(), StoreError> {
    crate::clock::check_jti(client_id, jti)
}

/// Check a search: `Ok(true)` = run it, `Ok(false)` = it can match nothing.
pub fn check_query(q: &ResourceQuery) -> Result<bool, StoreError> {
    Ok(matches!(crate::search::check_query(q)?, QueryCheck::Run))
}

/// The SQL comparison operator of a `_lastUpdated` prefix.
pub fn cmp_sql_op(c: crate::Cmp) -> &'static str {
    c.sql_op()
}

/// Truncate to at most `max` bytes on a char boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    crate::truncate_str(s, max)
}

/// Recomputes the audit chain record by record (see [`crate::audit`]).
#[derive(Debug, Default)]
pub struct AuditVerifier(ChainVerifier);

impl AuditVerifier {
    /// A verifier holding `keys`.
    pub fn new(keys: AuditKeys) -> Self {
        AuditVerifier(ChainVerifier::new(keys))
    }
    /// `Ok(Some(seq))` = the first record that breaks the chain; `Err` when
    /// a record is sealed with a key not held.
    pub fn check(&mut self, r: &AuditRecord) -> Result<Option<i64>, StoreError> {
        self.0.check(r)
    }
    /// The seq the next record must have.
    pub fn next_seq(&self) -> i64 {
        self.0.next_seq()
    }
    /// Compare the stored head with the last record checked.
    pub fn check_head(&self, head_seq: i64, head_hash: &str) -> Option<i64> {
        self.0.check_head(head_seq, head_hash)
    }
}

/// The write-path metrics every backend reports through [`crate::Store::metrics`].
#[derive(Debug, Default)]
pub struct CommitMetrics(MetricsRecorder);

impl CommitMetrics {
    /// A request was queued for a writer.
    pub fn enqueued(&self) {
        self.0.enqueued();
    }
    /// A writer took a request off its queue.
    pub fn dequeued(&self) {
        self.0.dequeued();
    }
    /// One commit of `batch` requests took `seconds`.
    pub fn record_commit(&self, seconds: f64, batch: usize, appended: u64, duplicates: u64) {
        self.0.record_commit(seconds, batch, appended, duplicates);
    }
    /// A snapshot, no IO.
    pub fn snapshot(&self) -> StoreMetrics {
        self.0.snapshot()
    }
}

/// The ids of one `resource_get_many` worth looking up, sorted and
/// deduplicated: those of a length a stored id can have (as
/// `resource_get` skips the others); none when the type is not a
/// resource type name. Too many ids is [`StoreError::Invalid`].
pub fn get_many_ids(resource_type: &str, ids: &[String]) -> Result<Vec<String>, StoreError> {
    if ids.len() > crate::search::MAX_GET_IDS {
        return Err(StoreError::Invalid(format!(
            "{} ids in one call (max {})",
            ids.len(),
            crate::search::MAX_GET_IDS
        )));
    }
    if !crate::valid_resource_type(resource_type) {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = ids
        .iter()
        .filter(|id| !id.is_empty() && id.len() <= crate::MAX_RESOURCE_ID_LEN)
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}
