//! Durable storage for the gateway behind one async trait, [`Store`].
//!
//! The store holds:
//!
//! * the **journal** — every accepted input (HL7 v2 ADT, county case event,
//!   ECM referral, FHIR write) exactly as received, keyed by
//!   `(kind, dedup_key)`, with a processing state (`pending` → `processed` or
//!   `failed`, and back to `pending` on replay);
//! * the **resources** — the current version of every FHIR resource derived
//!   from the journal, with every superseded version kept in a history table,
//!   and a **search index** of caller-computed tokens (see [`search`]);
//! * the **outbox** — durable deliveries to recipient endpoints, claimed by
//!   workers with leases, ordered per `(endpoint, ordering_key)` (see
//!   [`outbox`]);
//! * the **audit trail** — an append-only chain (HMAC-SHA256 under a key
//!   kept outside the database; SHA-256 for older records) of every
//!   disclosure, refusal and read (see [`audit`], [`audit_checkpoint`]);
//! * the SMART **`jti` replay cache** and **deadline clocks** (see [`clock`]).
//!
//! Translation, routing and delivery are all derived from the journal, so a
//! crash loses nothing that was acknowledged and a mapping fix can be replayed
//! over past input ([`Store::requeue`]).
//!
//! # Tables (SQLite names; PostgreSQL uses the same)
//!
//! | table | holds | key |
//! |---|---|---|
//! | `schema_migrations` | applied migrations | version |
//! | `journal` | inputs as received, processing state | id; unique (kind, dedup_key) |
//! | `resources` | current version of each resource | (resource_type, id) |
//! | `resource_history` | superseded versions | (resource_type, id, version_id) |
//! | `resource_index` | search tokens of the current version | (resource_type, param, value, id) |
//! | `outbox` | deliveries and their state, attempts, lease | id (never reused) |
//! | `audit` | hash-chained audit records | seq (1.., no gaps) |
//! | `audit_head` | the chain head (last seq, hash, version): one row | id = 1 |
//! | `audit_patients` | every patient each audit record names | (patient_id, seq) |
//! | `jti_cache` | SMART assertion ids until they expire | (client_id, jti) |
//! | `clocks` | deadline clocks | caller-made id |
//!
//! # Architecture invariants
//!
//! * **An input is durable (committed and fsync'd) before [`Store::append`]
//!   returns `Ok`.** The gateway sends an HL7 ACK or HTTP 2xx only after that.
//! * **Appends are idempotent:** the same `(kind, dedup_key)` again returns
//!   [`AppendOutcome::Duplicate`] with the original id and writes nothing.
//! * **[`Store::complete_with`] is one transaction:** resource upserts (and
//!   their index rows), outbox inserts, audit appends, clock upserts and the
//!   journal state change commit together or not at all. Completing an
//!   already-processed record changes nothing at all (so an older
//!   translation seen twice never overwrites a newer one, and no delivery or
//!   audit record is duplicated).
//! * **Resource stamps (`last_updated`) strictly increase** per store for
//!   every write that changes something, so keyset paging over
//!   `(last_updated, id)` is stable under concurrent inserts.
//! * **Outbox order:** only the oldest Pending item of an
//!   `(endpoint, ordering_key)` is claimable; a lease is owned by one worker
//!   and only the owner's outcome is applied ([`StoreError::LeaseLost`]).
//! * **The audit chain never forks:** its head is read and extended inside
//!   the writing transaction; [`Store::audit_verify`] finds the first record
//!   that does not match.
//! * **No PHI in errors:** [`StoreError`] messages carry ids, counts, field
//!   names and SQLite diagnostics, never payload values.
//!
//! # Backends
//!
//! [`SqliteStore`] is the embedded default: one writer thread doing group
//! commit (concurrent appends, completions, outbox outcomes and audit
//! appends share one transaction and one fsync) and a small pool of
//! read-only connections (see [`sqlite`]). The PostgreSQL backend (several
//! gateway instances sharing one database) lives in the
//! `cwsgw-store-postgres` crate — claims with `FOR UPDATE SKIP LOCKED`, the
//! audit head with a row lock — and passes the same suite in `conformance`
//! (feature `conformance`); it uses the shared checks in [`backend`].
//! [`open_url`] opens SQLite URLs; the gateway opens `postgres://` URLs
//! with that crate.
//!
//! # Limits
//!
//! Inputs are bounded (see the `MAX_*` constants here and in the
//! submodules); oversized input is rejected with [`StoreError::Invalid`]
//! before it reaches the database. Pages are clamped.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod audit;
pub mod audit_checkpoint;
#[doc(hidden)]
pub mod backend;
pub mod clock;
#[cfg(any(test, feature = "conformance"))]
// Test code behind a feature, for other backends' test suites: like
// `assert!`, it reports a failed check by panicking, and the gateway never
// builds it.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod conformance;
mod metrics;
pub mod outbox;
mod resource;
pub mod search;
pub mod sqlite;

pub use audit::{AuditKeys, AuditRecord, NewAudit};
pub use clock::ClockRow;
pub use metrics::{StoreMetrics, COMMIT_SECONDS_BUCKETS};
pub use outbox::{Delivery, DeliveryOutcome, DeliveryState, NewDelivery, OutboxId};
pub use search::{Cmp, ResourceQuery, SearchToken};
pub use sqlite::{sqlite_schema_version, Durability, SqliteOptions, SqliteStore};

/// Journal record id: positive, strictly increasing in insertion order.
pub type JournalId = i64;

/// Largest raw input accepted by [`Store::append`] (16 MiB).
pub const MAX_RAW_BYTES: usize = 16 * 1024 * 1024;
/// Largest serialized `meta` accepted by [`Store::append`] (16 KiB).
pub const MAX_META_BYTES: usize = 16 * 1024;
/// Longest `source_org` (bytes).
pub const MAX_SOURCE_ORG_LEN: usize = 128;
/// Longest `dedup_key` (bytes).
pub const MAX_DEDUP_KEY_LEN: usize = 512;
/// Longest `resource_type` (bytes).
pub const MAX_RESOURCE_TYPE_LEN: usize = 64;
/// Longest resource id (bytes; FHIR allows 64).
pub const MAX_RESOURCE_ID_LEN: usize = 64;
/// Longest patient id (bytes).
pub const MAX_PATIENT_ID_LEN: usize = 64;
/// Most resource types one `resources_by_patient_types` call accepts.
pub const MAX_TYPES_PER_QUERY: usize = 16;

/// Validate the type list of `resources_by_patient_types`.
pub fn check_types(types: &[&str]) -> Result<(), StoreError> {
    if types.len() > MAX_TYPES_PER_QUERY {
        return Err(StoreError::Invalid(format!(
            "{} resource types in one query; at most {MAX_TYPES_PER_QUERY}",
            types.len()
        )));
    }
    Ok(())
}
/// Can `resources_by_patient_types(patient_id, types)` match anything? False
/// for no types or an id no patient can have (empty or too long): backends
/// answer empty without a query.
pub fn patient_types_can_match(patient_id: &str, types: &[&str]) -> bool {
    !patient_id.is_empty() && patient_id.len() <= MAX_PATIENT_ID_LEN && !types.is_empty()
}
/// Largest serialized resource body accepted by [`Store::complete`] (4 MiB).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most resource writes in one [`Store::complete`] call.
pub const MAX_WRITES_PER_COMPLETE: usize = 1000;
/// Longest error text kept by [`Store::fail`]; longer text is truncated.
pub const MAX_ERROR_LEN: usize = 512;
/// Largest page [`Store::journal_pending`] returns; larger limits are clamped.
pub const MAX_PENDING_PAGE: usize = 10_000;

/// The kind of a journaled input; part of the deduplication key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// An HL7 v2 ADT message (MLLP or `POST /hl7/v2`).
    Adt,
    /// A county case event (`POST /cws/events`).
    CaseEvent,
    /// An ECM referral form (`POST /ecm/referrals`).
    Referral,
    /// A FHIR write through the API (`PUT /fhir/Task/..`, `POST /fhir/CarePlan` ..).
    FhirWrite,
}

impl InputKind {
    /// Every kind, in declaration order.
    pub const ALL: [InputKind; 4] = [
        InputKind::Adt,
        InputKind::CaseEvent,
        InputKind::Referral,
        InputKind::FhirWrite,
    ];

    /// Stable storage name: `adt`, `case_event`, `referral`, `fhir_write`.
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Adt => "adt",
            InputKind::CaseEvent => "case_event",
            InputKind::Referral => "referral",
            InputKind::FhirWrite => "fhir_write",
        }
    }
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error parsing an [`InputKind`] or [`JournalState`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} name (expected one of: {expected})")]
pub struct ParseNameError {
    what: &'static str,
    expected: &'static str,
}

impl FromStr for InputKind {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InputKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(ParseNameError {
                what: "input kind",
                expected: "adt, case_event, referral, fhir_write",
            })
    }
}

/// One input to journal.
#[derive(Debug, Clone)]
pub struct NewInput {
    /// What the input is.
    pub kind: InputKind,
    /// Configuration id of the organization that sent it.
    pub source_org: String,
    /// Idempotency key, unique per kind, e.g. `"STMARY|MSG00001|{sha256 hex}"`
    /// (MSH-4|MSH-10|hash of the normalised message; before issue 13 ADT keys
    /// were MSH-4|MSH-10) or `"county-fresno|evt-123"`. Must not contain PHI.
    pub dedup_key: String,
    /// When the gateway received it. Stored with microsecond precision.
    pub received_at: DateTime<Utc>,
    /// The bytes exactly as received.
    pub raw: Vec<u8>,
    /// Small, non-PHI facts: message type, control id, event type ...
    pub meta: serde_json::Value,
}

/// Result of [`Store::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// A new record, now durable.
    Inserted(JournalId),
    /// The `(kind, dedup_key)` was already journaled under this id; nothing written.
    Duplicate(JournalId),
}

impl AppendOutcome {
    /// The journal id, new or original.
    pub fn id(&self) -> JournalId {
        match *self {
            AppendOutcome::Inserted(id) | AppendOutcome::Duplicate(id) => id,
        }
    }

    /// True for [`AppendOutcome::Duplicate`].
    pub fn is_duplicate(&self) -> bool {
        matches!(self, AppendOutcome::Duplicate(_))
    }
}

/// The journal's answer to an append that is already durable.
pub type JournalAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AppendOutcome, StoreError>> + Send>>;

/// Result of [`Store::append_durable`]: the input is durable either way.
pub enum Durable {
    /// Journaled: what the journal made of it.
    Journaled(AppendOutcome),
    /// Durable before its journal row (the SQLite store's intake log): the
    /// journal's answer follows. An `Err` there does not lose the input: it
    /// is journaled at the store's next open (see the backend's docs).
    Logged(JournalAnswer),
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durable::Journaled(o) => f.debug_tuple("Journaled").field(o).finish(),
            Durable::Logged(_) => f.write_str("Logged(..)"),
        }
    }
}

/// Processing state of a journal record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JournalState {
    /// Not yet processed (new, or requeued for replay).
    Pending,
    /// Processed: its resources are stored.
    Processed,
    /// Processing failed; `error` says why.
    Failed,
}

impl JournalState {
    /// Stable storage name: `pending`, `processed`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalState::Pending => "pending",
            JournalState::Processed => "processed",
            JournalState::Failed => "failed",
        }
    }
}

impl fmt::Display for JournalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JournalState {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            JournalState::Pending,
            JournalState::Processed,
            JournalState::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or(ParseNameError {
            what: "journal state",
            expected: "pending, processed, failed",
        })
    }
}

/// A journaled input with its processing state.
#[derive(Debug, Clone)]
pub struct JournalRecord {
    /// Journal id.
    pub id: JournalId,
    /// Input kind.
    pub kind: InputKind,
    /// Sending organization id.
    pub source_org: String,
    /// Idempotency key.
    pub dedup_key: String,
    /// Receive time (microsecond precision).
    pub received_at: DateTime<Utc>,
    /// The bytes exactly as received.
    pub raw: Vec<u8>,
    /// Non-PHI facts given at append time.
    pub meta: serde_json::Value,
    /// Processing state.
    pub state: JournalState,
    /// When it was last processed or failed; `None` while pending.
    pub processed_at: Option<DateTime<Utc>>,
    /// Failure code/text when `state` is `Failed`.
    pub error: Option<String>,
}

/// Journal record counts by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// All records.
    pub total: u64,
    /// Pending records.
    pub pending: u64,
    /// Processed records.
    pub processed: u64,
    /// Failed records.
    pub failed: u64,
}

/// One resource to upsert in [`Store::complete`].
#[derive(Debug, Clone)]
pub struct ResourceWrite {
    /// FHIR resource type, e.g. `Patient`.
    pub resource_type: String,
    /// FHIR logical id (`[A-Za-z0-9\-.]{1,64}`).
    pub id: String,
    /// Logical id of the Patient this resource belongs to, for compartment search.
    pub patient_id: Option<String>,
    /// The resource as a JSON object. `resourceType`/`id`, when present, must
    /// match; when absent they are filled in. `meta.versionId` and
    /// `meta.lastUpdated` are ignored and replaced by the stored values.
    pub body: serde_json::Value,
    /// Search tokens of this version; they replace the resource's previous
    /// tokens, even when the body is unchanged (see [`search`]). Duplicates
    /// are ignored; at most [`search::MAX_TOKENS_PER_RESOURCE`].
    pub index: Vec<SearchToken>,
}

/// Everything one journal record's processing commits, atomically, in
/// [`Store::complete_with`].
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// Resource upserts (same rules as [`Store::complete`]).
    pub writes: Vec<ResourceWrite>,
    /// Outbox rows to queue; a `None` journal id becomes the completed record.
    pub deliveries: Vec<NewDelivery>,
    /// Audit records to append to the chain.
    pub audits: Vec<NewAudit>,
    /// Deadline clocks to upsert (by id).
    pub clocks: Vec<ClockRow>,
}

/// Result of [`Store::complete_with`].
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionResult {
    /// The stored resources, one per write, in order. When
    /// `already_processed`, the current versions (a write whose resource does
    /// not exist is left out).
    pub resources: Vec<StoredResource>,
    /// Ids of the queued deliveries, in order. When `already_processed`, the
    /// ids of every outbox row of this journal record.
    pub deliveries: Vec<OutboxId>,
    /// True when the record was already Processed and nothing was written.
    pub already_processed: bool,
}

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// FHIR resource type.
    pub resource_type: String,
    /// FHIR logical id.
    pub id: String,
    /// Version, starting at 1.
    pub version_id: i64,
    /// When this version was stored (microsecond precision).
    pub last_updated: DateTime<Utc>,
    /// Patient compartment id.
    pub patient_id: Option<String>,
    /// The resource, with `meta.versionId` and `meta.lastUpdated` set to the stored values.
    pub body: serde_json::Value,
}

/// What [`Store::resource_search_with_context`] and
/// [`Store::resource_get_with_context`] return: the answer, and the
/// patient's context resources read with it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WithContext<T> {
    /// The search matches, or the resource read.
    pub found: T,
    /// The patient's resources of the requested context types, ordered by
    /// `(resource_type, id)`.
    pub context: Vec<StoredResource>,
}

/// Everything that can go wrong in the store. Messages are one line and
/// carry no PHI (ids, counts, paths and field names only).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("cannot open database at {path}: {reason}")]
    Open {
        /// Database path or URL (without credentials).
        path: String,
        /// Why.
        reason: String,
    },
    /// A database server could not be reached.
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// The database was migrated by a newer gateway.
    #[error("database schema version {db} is newer than this binary supports ({binary}); run a newer cws-gateway or restore a matching backup")]
    MigrationsNewer {
        /// Highest version recorded in the database.
        db: i64,
        /// Highest version this binary knows.
        binary: i64,
    },
    /// A migration failed to apply (it was rolled back).
    #[error("migration {version} ({name}) failed: {reason}")]
    Migration {
        /// Migration version.
        version: i64,
        /// Migration name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The database URL is not understood.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The requested backend or feature is not available in this build.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The caller passed invalid or oversized input.
    #[error("invalid store input: {0}")]
    Invalid(String),
    /// A journal record that does not exist.
    #[error("journal record {0} not found")]
    NotFound(JournalId),
    /// The outbox item is not (or no longer) leased by this worker; nothing changed.
    #[error("outbox item {0} is not leased by this worker")]
    LeaseLost(OutboxId),
    /// A PostgreSQL error: SQLSTATE code and the server's message (never
    /// the DETAIL, which can echo row values).
    #[error("postgres: {0}")]
    Postgres(String),
    /// An SQLite error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A group commit failed; every request in the batch gets this error and
    /// nothing of the batch was written.
    #[error("commit failed: {0}")]
    Commit(String),
    /// Stored data that cannot be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The store has shut down.
    #[error("store is closed")]
    Closed,
    /// A background task failed unexpectedly.
    #[error("store task failed: {0}")]
    Internal(String),
}

/// The storage interface of the gateway. Every backend implements it and
/// must pass `conformance::run_all`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Durable when Ok. Same (kind, dedup_key) again → Duplicate(original id), nothing written.
    async fn append(&self, input: NewInput) -> Result<AppendOutcome, StoreError>;
    /// Durable when Ok, possibly before its journal row exists (then a read
    /// started now may not see it yet): for a caller that only needs the
    /// input to be safe before it answers, such as an HL7 ACK. The default
    /// is [`Store::append`].
    async fn append_durable(&self, input: NewInput) -> Result<Durable, StoreError> {
        self.append(input).await.map(Durable::Journaled)
    }
    /// One journal record, or `None`.
    async fn journal_get(&self, id: JournalId) -> Result<Option<JournalRecord>, StoreError>;
    /// Is there a journal record of `kind` whose dedup key starts with
    /// `prefix`, is exactly `key_len` bytes long and is not `except` — and,
    /// when `except` is journaled, was journaled before it? (So of two
    /// messages under one control id only the later one is a reuse, on
    /// every instance, however late the question is asked.) One
    /// indexed range query over `(kind, dedup_key)` (keys compare
    /// byte-wise). What intake asks to notice a sender reusing a control id
    /// for a different message (keys `{MSH-4}|{MSH-10}|{hash}`). An empty
    /// prefix, or a `key_len` no key can have, answers false without a query.
    async fn journal_key_prefix_exists(
        &self,
        kind: InputKind,
        prefix: &str,
        key_len: usize,
        except: &str,
    ) -> Result<bool, StoreError>;
    /// Pending records with id > after, ascending, at most limit
    /// (clamped to [`MAX_PENDING_PAGE`]).
    async fn journal_pending(
        &self,
        after: JournalId,
        limit: usize,
    ) -> Result<Vec<JournalRecord>, StoreError>;
    /// Record counts by state.
    async fn journal_stats(&self) -> Result<JournalStats, StoreError>;
    /// One transaction: upsert every resource (new → version 1; body
    /// unchanged (ignoring meta.versionId/lastUpdated) and same patient →
    /// keep version, no new row in history; changed → version+1 and the
    /// previous version kept in a history table), then mark the journal
    /// record Processed. Returns the stored resources, one per write, in
    /// order. Idempotent: completing an already-processed record changes
    /// nothing and returns the current versions (see
    /// [`Store::complete_with`]).
    async fn complete(
        &self,
        id: JournalId,
        writes: Vec<ResourceWrite>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let c = Completion {
            writes,
            ..Completion::default()
        };
        Ok(self.complete_with(id, c).await?.resources)
    }
    /// ONE transaction: resource upserts (rules of [`Store::complete`]),
    /// outbox inserts, audit appends, clock upserts, journal → Processed.
    /// Idempotent: if the record is already Processed, change NOTHING (no
    /// writes, deliveries, audits or clocks; `processed_at` kept) and return
    /// the current stored versions with `already_processed: true` — an older
    /// translation seen twice never overwrites a newer one. Unknown record →
    /// [`StoreError::NotFound`]; any invalid part → nothing written.
    async fn complete_with(
        &self,
        id: JournalId,
        c: Completion,
    ) -> Result<CompletionResult, StoreError>;
    /// Upsert resources outside the journal (same version rules as
    /// [`Store::complete`], one transaction, no journal change).
    async fn put_resources(
        &self,
        writes: Vec<ResourceWrite>,
    ) -> Result<Vec<StoredResource>, StoreError>;
    /// Current resources matching `q`, ordered by `(last_updated, id)`
    /// ascending, at most `q.limit` (clamped to
    /// [`search::MAX_SEARCH_PAGE`]). See [`ResourceQuery`] for the semantics.
    async fn resource_search(&self, q: &ResourceQuery) -> Result<Vec<StoredResource>, StoreError>;
    /// Mark a pending record Failed with a short, PHI-free error code/text
    /// (truncated to [`MAX_ERROR_LEN`] bytes). `Ok(true)` when this call
    /// did; `Ok(false)` when the record was already processed or failed, and
    /// is left as it was: a record another instance completed is not turned
    /// into a failure, the first failure's text stays, and only one caller
    /// learns that it ended the record (as with
    /// [`CompletionResult::already_processed`]). [`StoreError::NotFound`]
    /// when there is no such record.
    async fn fail(&self, id: JournalId, error: &str) -> Result<bool, StoreError>;
    /// Put Processed/Failed records with id in [from, to] back to Pending
    /// (replay after a mapping fix). Returns how many.
    async fn requeue(&self, from: JournalId, to: JournalId) -> Result<u64, StoreError>;
    /// Current version of a resource, or `None`.
    async fn resource_get(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, StoreError>;
    /// Every version of a resource, oldest first, current last; empty when unknown.
    /// The current version of each of `ids` (of `resource_type`) that
    /// exists, ordered by id, in one read of primary-key lookups: what a
    /// report that names many resources needs (a `_id` search is a filter
    /// over the type's `_lastUpdated` order, not a key lookup). At most
    /// [`search::MAX_GET_IDS`] ids (more is [`StoreError::Invalid`]); ids
    /// that cannot exist are skipped, a repeated id answers once.
    async fn resource_get_many(
        &self,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredResource>, StoreError>;
    async fn resource_history(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Vec<StoredResource>, StoreError>;
    /// Current resources in a patient's compartment, optionally of one type,
    /// ordered by (resource_type, id).
    async fn resources_by_patient(
        &self,
        patient_id: &str,
        resource_type: Option<&str>,
    ) -> Result<Vec<StoredResource>, StoreError>;
    /// Current resources in a patient's compartment of any of `types`,
    /// ordered by (resource_type, id): what a consent or routing decision
    /// reads, without the compartment's clinical history. At most
    /// [`MAX_TYPES_PER_QUERY`] types (more → `Invalid`). The default asks
    /// once per type; backends answer in one query.
    async fn resources_by_patient_types(
        &self,
        patient_id: &str,
        types: &[&str],
    ) -> Result<Vec<StoredResource>, StoreError> {
        check_types(types)?;
        let mut sorted: Vec<&str> = types.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = Vec::new();
        for t in sorted {
            out.extend(self.resources_by_patient(patient_id, Some(t)).await?);
        }
        Ok(out)
    }
    /// [`Store::resource_search`] together with the compartment resources
    /// of `patient_id` of `context_types` (what
    /// [`Store::resources_by_patient_types`] returns, same order): what a
    /// consent decision over the matches reads, in one call — one round trip
    /// and, where the backend can (SQLite), one snapshot. `context` is empty
    /// when nothing matched. The default makes the two calls.
    async fn resource_search_with_context(
        &self,
        q: &ResourceQuery,
        patient_id: &str,
        context_types: &[&str],
    ) -> Result<WithContext<Vec<StoredResource>>, StoreError> {
        check_types(context_types)?;
        let found = self.resource_search(q).await?;
        let context = if found.is_empty() {
            Vec::new()
        } else {
            self.resources_by_patient_types(patient_id, context_types)
                .await?
        };
        Ok(WithContext { found, context })
    }
    /// [`Store::resource_get`] together with the compartment resources of
    /// the found resource's `patient_id` of `context_types` (as
    /// [`Store::resources_by_patient_types`]), in one call — one round trip
    /// and, where the backend can (SQLite), one snapshot. `context` is empty
    /// when the resource is unknown or has no `patient_id`. The default
    /// makes the two calls.
    async fn resource_get_with_context(
        &self,
        resource_type: &str,
        id: &str,
        context_types: &[&str],
    ) -> Result<WithContext<Option<StoredResource>>, StoreError> {
        check_types(context_types)?;
        let found = self.resource_get(resource_type, id).await?;
        let context = match found.as_ref().and_then(|r| r.patient_id.as_deref()) {
            Some(p) => self.resources_by_patient_types(p, context_types).await?,
            None => Vec::new(),
        };
        Ok(WithContext { found, context })
    }
    /// Number of current resources, optionally of one type.
    async fn resource_count(&self, resource_type: Option<&str>) -> Result<u64, StoreError>;
    /// Queue deliveries (one transaction); ids in order.
    async fn outbox_enqueue(&self, items: Vec<NewDelivery>) -> Result<Vec<OutboxId>, StoreError>;
    /// Claim up to `limit` (clamped to [`outbox::MAX_OUTBOX_PAGE`]) due items
    /// — Pending, `not_before <= now`, lease absent or expired — optionally
    /// of one endpoint, leasing them to `worker` until `now + lease`. Only
    /// the head of each `(endpoint, ordering_key)` is claimable: an item
    /// with an OLDER Pending item of the same key (leased or not) is not.
    /// Claiming counts no attempt. Earliest due are chosen first (by
    /// `not_before`, then id); the result is ordered by id.
    async fn outbox_claim(
        &self,
        worker: &str,
        endpoint: Option<&str>,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Apply an outcome to an item `worker` holds; otherwise
    /// [`StoreError::LeaseLost`] and nothing changes. Delivered/Retry/Dead
    /// count an attempt; Retry stays Pending with the new `not_before`;
    /// every outcome clears the lease; Release changes nothing else.
    async fn outbox_finish(
        &self,
        id: OutboxId,
        worker: &str,
        outcome: DeliveryOutcome,
    ) -> Result<(), StoreError>;
    /// One outbox item, or `None`.
    async fn outbox_get(&self, id: OutboxId) -> Result<Option<Delivery>, StoreError>;
    /// Items by id ascending, optionally filtered, at most `limit` (clamped
    /// to [`outbox::MAX_OUTBOX_PAGE`]).
    async fn outbox_list(
        &self,
        state: Option<DeliveryState>,
        endpoint: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Dead|Withheld → Pending with attempts 0 and not_before now; false if
    /// the item is in another state or unknown.
    async fn outbox_retry(&self, id: OutboxId) -> Result<bool, StoreError>;
    /// Dead → Dropped; false otherwise.
    async fn outbox_drop(&self, id: OutboxId) -> Result<bool, StoreError>;
    /// Item counts per (endpoint, state), ordered by endpoint then state name.
    async fn outbox_depth(&self) -> Result<Vec<(String, DeliveryState, u64)>, StoreError>;
    /// When the next Pending item may become claimable (for worker sleeping):
    /// the earliest, over heads of their ordering key, of `not_before` — or
    /// `lease_until` when a live lease ends later. `None` when nothing is Pending.
    async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Append to the hash chain (one transaction); the stored records in order.
    async fn audit_append(&self, entries: Vec<NewAudit>) -> Result<Vec<AuditRecord>, StoreError>;
    /// Records with seq > `after_seq`, ascending, optionally filtered, at most
    /// `limit` (clamped to [`audit::MAX_AUDIT_PAGE`]).
    async fn audit_list(
        &self,
        after_seq: i64,
        limit: usize,
        patient_id: Option<&str>,
        recipient: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// Recompute the chain from the start with the store's audit keys;
    /// Ok(None) when intact, Ok(Some(seq)) = the first record whose seq,
    /// prev_hash, hash or version does not match; `Err(Invalid)` when a
    /// record is sealed with a key the store does not hold.
    async fn audit_verify(&self) -> Result<Option<i64>, StoreError>;
    /// The chain head as stored: (last seq, its hash); (0, genesis) when
    /// empty.
    async fn audit_head(&self) -> Result<(i64, String), StoreError>;
    /// Record a client assertion id; Ok(true) on first use, Ok(false) if
    /// `(client_id, jti)` was seen and has not expired (at `now`). An expired
    /// entry may be reused. Expired rows are purged opportunistically.
    async fn jti_use(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Insert or replace clocks by id (one transaction).
    async fn clock_upsert(&self, clocks: Vec<ClockRow>) -> Result<(), StoreError>;
    /// Clocks ordered by (due_at, id): only `open` ones if `open_only`,
    /// optionally due strictly before `due_before` and of one subject; at
    /// most `limit` (clamped to [`clock::MAX_CLOCK_PAGE`]).
    async fn clock_list(
        &self,
        open_only: bool,
        due_before: Option<DateTime<Utc>>,
        subject: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ClockRow>, StoreError>;
    /// Every clock of the given subjects, only those of `kind` if given,
    /// ordered by (subject, due_at, id), in one read: what a report over
    /// many Tasks needs instead of one [`Store::clock_list`] per subject.
    /// At most [`clock::MAX_CLOCK_SUBJECTS_PER_CALL`] subjects (more is
    /// [`StoreError::Invalid`]); no subjects answer no clocks. A subject
    /// holds a few clocks, one per kind, so the answer stays near the
    /// number of subjects.
    async fn clock_list_subjects(
        &self,
        kind: Option<&str>,
        subjects: &[String],
    ) -> Result<Vec<ClockRow>, StoreError>;
    /// Succeeds when the database answers and the store accepts writes
    /// (readiness): a store that refuses every write until restart (SQLite
    /// after a failed WAL fsync) fails it.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Cheap snapshot of the write-path metrics, no IO.
    fn metrics(&self) -> StoreMetrics;
    /// Backend name: `"sqlite"`.
    fn backend(&self) -> &'static str;
}

/// Open the store a database URL names.
///
/// * `sqlite://relative/or/absolute/path.db` or `sqlite:path` → [`SqliteStore`]
///   (`sqlite:///abs/path.db` is absolute);
/// * `postgres://…` / `postgresql://…` → [`StoreError::Unsupported`]: this
///   crate has no PostgreSQL driver; open those with `cwsgw-store-postgres`;
/// * anything else (including in-memory SQLite, which could not keep the
///   durability promise) → [`StoreError::InvalidUrl`].
pub fn open_url(url: &str, opts: SqliteOptions) -> Result<Arc<dyn Store>, StoreError> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(StoreError::Unsupported(
            "PostgreSQL URLs are opened by cwsgw-store-postgres, not store::open_url".to_string(),
        ));
    }
    let path = sqlite_path_from_url(url)?;
    Ok(Arc::new(SqliteStore::open(&path, opts)?))
}

fn sqlite_path_from_url(url: &str) -> Result<PathBuf, StoreError> {
    let rest = if let Some(rest) = url.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = url.strip_prefix("sqlite:") {
        rest
    } else {
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s)
            .filter(|s| !s.is_empty() && s.len() <= 32)
            .unwrap_or("none");
        return Err(StoreError::InvalidUrl(format!(
            "scheme `{scheme}` is not supported; use sqlite://PATH or postgres://…"
        )));
    };
    if rest.is_empty() {
        return Err(StoreError::InvalidUrl(
            "sqlite URL has no file path; use sqlite://PATH".to_string(),
        ));
    }
    if rest == ":memory:" || rest.contains("mode=memory") {
        return Err(StoreError::InvalidUrl(
            "in-memory SQLite cannot keep acknowledged input durable; give a file path".to_string(),
        ));
    }
    if rest.contains('?') {
        return Err(StoreError::InvalidUrl(
            "query parameters in sqlite URLs are not supported; tune via configuration".to_string(),
        ));
    }
    Ok(PathBuf::from(rest))
}

/// The byte-wise range `[prefix, upper)` holding every key that starts with
/// `prefix`, for [`Store::journal_key_prefix_exists`]; `None` when no key of
/// `key_len` bytes can start with it (empty prefix, `key_len` shorter than
/// the prefix or longer than [`MAX_DEDUP_KEY_LEN`]) or when the prefix has
/// no upper bound (only `U+10FFFF` characters).
pub fn key_prefix_range(prefix: &str, key_len: usize) -> Option<(String, String)> {
    if prefix.is_empty() || key_len < prefix.len() || key_len > MAX_DEDUP_KEY_LEN {
        return None;
    }
    // Increment the last character that can be incremented, dropping the
    // ones after it: every string starting with `prefix` sorts below that
    // (UTF-8 byte order is code point order).
    let mut upper: Vec<char> = prefix.chars().collect();
    while let Some(last) = upper.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(c) = next {
            upper.push(c);
            return Some((prefix.to_string(), upper.into_iter().collect()));
        }
    }
    None
}

/// Validate an input before it is queued; returns the serialized `meta`.
pub(crate) fn validate_input(input: &NewInput) -> Result<String, StoreError> {
    if input.source_org.is_empty() || input.source_org.len() > MAX_SOURCE_ORG_LEN {
        return Err(StoreError::Invalid(format!(
            "source_org must be 1..={MAX_SOURCE_ORG_LEN} bytes"
        )));
    }
    if input.dedup_key.is_empty() || input.dedup_key.len() > MAX_DEDUP_KEY_LEN {
        return Err(StoreError::Invalid(format!(
            "dedup_key must be 1..={MAX_DEDUP_KEY_LEN} bytes"
        )));
    }
    if input.raw.len() > MAX_RAW_BYTES {
        return Err(StoreError::Invalid(format!(
            "raw input is {} bytes (max {MAX_RAW_BYTES})",
            input.raw.len()
        )));
    }
    let meta = serde_json::to_string(&input.meta)
        .map_err(|_| StoreError::Invalid("meta is not serializable".to_string()))?;
    if meta.len() > MAX_META_BYTES {
        return Err(StoreError::Invalid(format!(
            "meta is {} bytes (max {MAX_META_BYTES})",
            meta.len()
        )));
    }
    Ok(meta)
}

/// Truncate to at most `max` bytes on a char boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// Check a FHIR logical id: 1..=64 of `[A-Za-z0-9\-.]`.
pub(crate) fn valid_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RESOURCE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Check a FHIR resource type name: an ASCII letter, then letters/digits.
pub(crate) fn valid_resource_type(t: &str) -> bool {
    t.len() <= MAX_RESOURCE_TYPE_LEN
        && t.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && t.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_kind_round_trips_through_str_and_serde() {
        for k in InputKind::ALL {
            assert_eq!(k.as_str().parse::<InputKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert!("ADT".parse::<InputKind>().is_err());
        assert!("".parse::<InputKind>().is_err());
    }

    #[test]
    fn journal_state_round_trips() {
        for s in [
            JournalState::Pending,
            JournalState::Processed,
            JournalState::Failed,
        ] {
            assert_eq!(s.as_str().parse::<JournalState>().unwrap(), s);
        }
        assert!("done".parse::<JournalState>().is_err());
    }

    #[test]
    fn append_outcome_id() {
        assert_eq!(AppendOutcome::Inserted(3).id(), 3);
        assert_eq!(AppendOutcome::Duplicate(7).id(), 7);
        assert!(AppendOutcome::Duplicate(7).is_duplicate());
        assert!(!AppendOutcome::Inserted(7).is_duplicate());
    }

    #[test]
    fn sqlite_url_forms() {
        assert_eq!(
            sqlite_path_from_url("sqlite://data/g.db").unwrap(),
            PathBuf::from("data/g.db")
        );
        assert_eq!(
            sqlite_path_from_url("sqlite:///abs/g.db").unwrap(),
            PathBuf::from("/abs/g.db")
        );
        assert_eq!(
            sqlite_path_from_url("sqlite:g.db").unwrap(),
            PathBuf::from("g.db")
        );
        for bad in [
            "sqlite://",
            "sqlite:",
            "sqlite::memory:",
            "sqlite://g.db?mode=memory",
            "mysql://x",
            "g.db",
            "",
        ] {
            let err = sqlite_path_from_url(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidUrl(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn key_prefix_ranges() {
        assert_eq!(
            key_prefix_range("STMARY|M1|", 74),
            Some(("STMARY|M1|".to_string(), "STMARY|M1}".to_string()))
        );
        let (lo, hi) = key_prefix_range("a\u{10FFFF}", 10).unwrap();
        assert_eq!((lo.as_str(), hi.as_str()), ("a\u{10FFFF}", "b"));
        assert!("a\u{10FFFF}zz".as_bytes() < hi.as_bytes());
        assert_eq!(key_prefix_range("\u{D7FF}", 8).unwrap().1, "\u{E000}");
        assert!(key_prefix_range("", 10).is_none());
        assert!(key_prefix_range("abc", 2).is_none());
        assert!(key_prefix_range("abc", MAX_DEDUP_KEY_LEN + 1).is_none());
        assert!(key_prefix_range("\u{10FFFF}", 8).is_none());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_str("abc", 5), "abc");
        assert_eq!(truncate_str("abcdef", 3), "abc");
        // 'é' is two bytes; cutting inside it backs off.
        assert_eq!(truncate_str("aé", 2), "a");
    }

    #[test]
    fn fhir_id_and_type_rules() {
        assert!(valid_fhir_id("abc-1.2"));
        assert!(!valid_fhir_id(""));
        assert!(!valid_fhir_id("a/b"));
        assert!(!valid_fhir_id(&"x".repeat(65)));
        assert!(valid_resource_type("Patient"));
        assert!(!valid_resource_type("patient"));
        assert!(!valid_resource_type(""));
        assert!(!valid_resource_type("Pat/ient"));
    }
}
