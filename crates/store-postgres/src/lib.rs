//! PostgreSQL implementation of the gateway's [`Store`]: several gateway
//! instances sharing one database.
//!
//! [`PgStore::open`] connects (clear one-line errors for an unreachable
//! server, wrong credentials or a missing database), applies the embedded
//! forward-only migrations under an advisory lock (several instances may
//! start at once; a database migrated by a newer binary is refused with
//! [`StoreError::MigrationsNewer`]), builds a connection pool and starts the
//! append writer task. It must be called inside a Tokio runtime.
//!
//! # How the invariants of [`store`] hold across instances
//!
//! * **Durable before Ok:** every write is a committed transaction with
//!   `synchronous_commit = on` (forced per connection).
//! * **Journal dedup** is the `UNIQUE (kind, dedup_key)` constraint with
//!   `INSERT … ON CONFLICT DO NOTHING`: whichever instance commits first
//!   wins; the other gets `Duplicate(original id)`.
//! * **Group commit for ingest:** one writer task per instance batches
//!   concurrent appends into one multi-row insert (see `writer.rs`) and
//!   replies after the commit.
//! * **Resource stamps strictly increase across instances:** every
//!   resource-writing transaction first locks the one-row `stamp_clock`
//!   (`SELECT … FOR UPDATE`), stamps its writes with
//!   `max(clock_timestamp(), last + 1µs)` and stores the last stamp. The row
//!   lock is held to COMMIT, so resource writes commit in stamp order and
//!   keyset paging over `(last_updated, id)` stays stable.
//! * **Call order within an instance:** resource-writing calls
//!   (`complete_with` with writes, `put_resources`) take a FIFO turn as
//!   their first await, so calls issued in journal order (the translation
//!   worker's batches) commit in that order, as with SQLite's single writer.
//!   Across instances, the order is the order in which they take the stamp
//!   lock.
//! * **`complete_with` is idempotent across instances:** the journal row is
//!   locked `FOR UPDATE`; a second completion waits, then sees `processed`
//!   and writes nothing.
//! * **Outbox:** claims are `SELECT … FOR UPDATE SKIP LOCKED` plus a lease
//!   (`lease_owner`, `lease_until`), so two instances never claim one row and
//!   a dead instance's claims are claimable by another once the lease ends.
//!   Head-of-line per `(endpoint, ordering_key)`: only the oldest Pending row
//!   of a key is claimable, and enqueuers of one key serialise on a
//!   transaction advisory lock, so within a key id order is commit order and
//!   no claimer can see a newer row without the older one.
//! * **Audit chain never forks:** the `audit_head` row is locked
//!   `FOR UPDATE` by the appending transaction.
//! * **`jti` replay cache** is a shared table: the insert-or-take-over-expired
//!   upsert is one statement, so two instances cannot both accept a `jti`.
//!
//! Lock order (no deadlocks between the store's own transactions):
//! `stamp_clock` → journal row → outbox key advisory locks (ascending) →
//! `audit_head`; clocks are upserted in id order.
//!
//! Text keys use the `"C"` collation so ordering (`ORDER BY id`, keyset
//! cursors) is byte order, as in SQLite.
//!
//! # TLS
//!
//! This build has no TLS: `sslmode=disable` and `sslmode=prefer` (which
//! falls back to plain TCP) work, `sslmode=require` is refused at open with
//! [`StoreError::Unsupported`]. Run the gateway next to the database, on a
//! private network, or through a TLS-terminating proxy such as PgBouncer
//! with `server_tls_sslmode`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod migrate;
mod rows;
#[cfg(feature = "test-support")]
pub mod testing;
mod writer;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use store::backend::{self, CheckedAudit, CheckedWrite, CommitMetrics};
use store::{
    AppendOutcome, AuditRecord, ClockRow, Completion, CompletionResult, Delivery, DeliveryOutcome,
    DeliveryState, InputKind, JournalId, JournalRecord, JournalStats, NewAudit, NewDelivery,
    NewInput, OutboxId, ResourceQuery, ResourceWrite, Store, StoreError, StoreMetrics,
    StoredResource, WithContext,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use error::{pg, pool};
pub use migrate::latest_version as pg_schema_version;
use rows::{col, Db};

/// Append requests that may wait for the writer before senders wait too.
const WRITE_QUEUE_CAPACITY: usize = 4096;
/// Upper bound on `pool_size`.
const MAX_POOL_SIZE: usize = 256;
/// Upper bound on `max_batch`.
const MAX_BATCH_LIMIT: usize = 8192;
/// Audit rows read per round trip by `audit_verify`.
const VERIFY_PAGE: i64 = 1000;
/// Expired `jti` rows purged per call.
const JTI_PURGE_LIMIT: i64 = 64;

/// Tuning for [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections in the pool (per instance). Default 16; clamped to 2..=256.
    pub pool_size: usize,
    /// Most appends per group commit. Default 512; clamped to 1..=8192.
    pub max_batch: usize,
    /// How long to wait for a TCP connection (and, in the pool, for a free
    /// connection). Default 5 s.
    pub connect_timeout: Duration,
    /// Audit keys (from outside the database): the last seals new audit
    /// records, all verify (see `store::audit`). Default none.
    pub audit_keys: store::AuditKeys,
    /// Open only a database that already holds the gateway's schema: an
    /// operator command that reads a store must not create one. Default
    /// false (`serve` creates and migrates it).
    pub require_existing: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            max_batch: 512,
            connect_timeout: Duration::from_secs(5),
            audit_keys: store::AuditKeys::none(),
            require_existing: false,
        }
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`; see the crate docs.
pub struct PgStore {
    pool: Pool,
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<writer::AppendReq>>,
    metrics: Arc<CommitMetrics>,
    shown: String,
    /// FIFO turn for resource-writing calls: they take the shared stamp
    /// lock in the order they were called (see `write_turn` in the docs).
    write_turn: tokio::sync::Mutex<()>,
    audit_keys: store::AuditKeys,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.shown)
            .finish_non_exhaustive()
    }
}

/// True for `postgres://…` and `postgresql://…` URLs.
pub fn is_postgres_url(url: &str) -> bool {
    let url = url.trim();
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    /// Connect, migrate (under an advisory lock), build the pool and start
    /// the append writer. Errors are one line and carry no password.
    pub async fn open(url: &str, opts: PgOptions) -> Result<Self, StoreError> {
        if !is_postgres_url(url) {
            return Err(StoreError::InvalidUrl(
                "a PostgreSQL URL starts with postgres:// or postgresql://".to_string(),
            ));
        }
        let mut cfg: tokio_postgres::Config = url.trim().parse().map_err(|e| {
            StoreError::InvalidUrl(format!(
                "PostgreSQL URL: {}",
                backend::truncate(&format!("{e}"), 120)
            ))
        })?;
        let shown = error::shown_url(&cfg);
        if matches!(cfg.get_ssl_mode(), SslMode::Require) {
            return Err(StoreError::Unsupported(format!(
                "{shown}: sslmode=require needs TLS, which this build does not include; \
                 use sslmode=disable on a private network or a TLS-terminating proxy"
            )));
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(opts.connect_timeout);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("cws-gateway");
        }
        // Durable-before-Ok does not depend on the server's default.
        cfg.options("-c synchronous_commit=on");

        let (mut client, conn) = cfg
            .connect(NoTls)
            .await
            .map_err(|e| error::connect(e, &shown))?;
        let driver = tokio::spawn(conn);
        if opts.require_existing {
            let present = client
                .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
                .await
                .map_err(|e| error::connect(e, &shown))?;
            if !present.get::<_, bool>(0) {
                drop(client);
                let _ = driver.await;
                return Err(StoreError::Open {
                    path: shown,
                    reason: "holds no gateway store (it was never served); \
                             commands that read a store do not create one"
                        .to_string(),
                });
            }
        }
        let migrated = migrate::migrate(&mut client).await;
        drop(client);
        let _ = driver.await;
        migrated?;

        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.clamp(2, MAX_POOL_SIZE))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.connect_timeout.saturating_mul(2)))
            .create_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: format!("connection pool: {e}"),
            })?;

        let metrics = Arc::new(CommitMetrics::default());
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        tokio::spawn(writer::run(
            pool.clone(),
            shown.clone(),
            rx,
            opts.max_batch.clamp(1, MAX_BATCH_LIMIT),
            Arc::clone(&metrics),
        ));
        Ok(PgStore {
            pool,
            tx: Some(tx),
            metrics,
            shown,
            write_turn: tokio::sync::Mutex::new(()),
            audit_keys: opts.audit_keys,
        })
    }

    /// The database, as `postgres://user@host:port/db` (no password).
    pub fn database(&self) -> &str {
        &self.shown
    }

    /// Stop handing out connections; in-flight work finishes. Later calls
    /// fail with [`StoreError::Closed`].
    pub fn close(&self) {
        self.pool.close();
    }

    async fn conn(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| pool(e, &self.shown))
    }

    /// Record a committed write transaction in the metrics.
    fn committed(&self, started: std::time::Instant) {
        self.metrics
            .record_commit(started.elapsed().as_secs_f64(), 1, 0, 0);
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued and exit.
        drop(self.tx.take());
    }
}

/// The rows of a checked [`ResourceQuery`].
async fn search_rows(c: &impl Db, q: &ResourceQuery) -> Result<Vec<StoredResource>, StoreError> {
    let (sql, params) = search_sql(q);
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    c.rows(&sql, &refs)
        .await?
        .iter()
        .map(rows::resource)
        .collect()
}

/// A patient's current resources of `types`, ordered by (type, id); the
/// caller has checked the arguments.
async fn by_patient_types(
    c: &impl Db,
    patient_id: &str,
    types: &[&str],
) -> Result<Vec<StoredResource>, StoreError> {
    if !store::patient_types_can_match(patient_id, types) {
        return Ok(Vec::new());
    }
    let cols = rows::RESOURCE_COLUMNS;
    let sql = format!(
        "SELECT {cols} FROM resources WHERE patient_id = $1 AND resource_type = ANY($2)
         ORDER BY resource_type, id"
    );
    let types: Vec<String> = types.iter().map(|t| (*t).to_string()).collect();
    let found = c.rows(&sql, &[&patient_id, &types]).await?;
    found.iter().map(rows::resource).collect()
}

// ---- transaction bodies ----

/// Hands out resource stamps inside a transaction that holds the
/// `stamp_clock` row lock.
struct Stamper {
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    used: bool,
}

impl Stamper {
    async fn lock(tx: &impl Db) -> Result<Self, StoreError> {
        let row = tx
            .one(
                "SELECT ts, clock_timestamp() FROM stamp_clock WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await?;
        Ok(Stamper {
            last: col(&row, 0, "stamp_clock")?,
            now: rows::micros(col(&row, 1, "stamp_clock")?),
            used: false,
        })
    }

    fn next(&mut self) -> Result<DateTime<Utc>, StoreError> {
        let after = self
            .last
            .checked_add_signed(TimeDelta::microseconds(1))
            .ok_or_else(|| StoreError::Corrupt("stamp_clock: out of range".to_string()))?;
        let at = after.max(self.now);
        self.last = at;
        self.used = true;
        Ok(at)
    }

    async fn save(self, tx: &impl Db) -> Result<(), StoreError> {
        if self.used {
            tx.exec("UPDATE stamp_clock SET ts = $1 WHERE id = 1", &[&self.last])
                .await?;
        }
        Ok(())
    }
}

fn body_text(body: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(body)
        .map_err(|_| StoreError::Invalid("resource body is not serializable".to_string()))
}

async fn current(tx: &impl Db, t: &str, id: &str) -> Result<Option<StoredResource>, StoreError> {
    let sql = format!(
        "SELECT {} FROM resources WHERE resource_type = $1 AND id = $2",
        rows::RESOURCE_COLUMNS
    );
    tx.opt(&sql, &[&t, &id])
        .await?
        .map(|r| rows::resource(&r))
        .transpose()
}

async fn upsert_all(
    tx: &impl Db,
    stamps: &mut Stamper,
    writes: Vec<CheckedWrite>,
) -> Result<Vec<StoredResource>, StoreError> {
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(upsert(tx, stamps, w).await?);
    }
    Ok(out)
}

async fn upsert(
    tx: &impl Db,
    stamps: &mut Stamper,
    w: CheckedWrite,
) -> Result<StoredResource, StoreError> {
    // The index always holds the tokens of the latest write of the resource.
    tx.exec(
        "DELETE FROM resource_index WHERE resource_type = $1 AND id = $2",
        &[&w.resource_type, &w.id],
    )
    .await?;
    if !w.index.is_empty() {
        let params: Vec<&str> = w.index.iter().map(|t| t.param.as_str()).collect();
        let values: Vec<&str> = w.index.iter().map(|t| t.value.as_str()).collect();
        tx.exec(
            "INSERT INTO resource_index (resource_type, id, param, value)
             SELECT $1, $2, p, v FROM unnest($3::text[], $4::text[]) AS t(p, v)
             ON CONFLICT DO NOTHING",
            &[&w.resource_type, &w.id, &params, &values],
        )
        .await?;
    }
    let Some(cur) = current(tx, &w.resource_type, &w.id).await? else {
        let at = stamps.next()?;
        let body = backend::with_version_meta(w.content, 1, at);
        let text = body_text(&body)?;
        tx.exec(
            "INSERT INTO resources (resource_type, id, version_id, last_updated, patient_id, body)
             VALUES ($1, $2, 1, $3, $4, $5)",
            &[&w.resource_type, &w.id, &at, &w.patient_id, &text],
        )
        .await?;
        return Ok(StoredResource {
            resource_type: w.resource_type,
            id: w.id,
            version_id: 1,
            last_updated: at,
            patient_id: w.patient_id,
            body,
        });
    };
    if cur.patient_id == w.patient_id && backend::content_of(cur.body.clone()) == w.content {
        return Ok(cur);
    }
    let version = cur.version_id.checked_add(1).ok_or_else(|| {
        StoreError::Corrupt(format!("{}/{}: version overflow", w.resource_type, w.id))
    })?;
    let at = stamps.next()?.max(cur.last_updated);
    let body = backend::with_version_meta(w.content, version, at);
    let text = body_text(&body)?;
    tx.exec(
        "INSERT INTO resource_history
            (resource_type, id, version_id, last_updated, patient_id, body)
         SELECT resource_type, id, version_id, last_updated, patient_id, body
         FROM resources WHERE resource_type = $1 AND id = $2",
        &[&w.resource_type, &w.id],
    )
    .await?;
    tx.exec(
        "UPDATE resources SET version_id = $3, last_updated = $4, patient_id = $5, body = $6
         WHERE resource_type = $1 AND id = $2",
        &[&w.resource_type, &w.id, &version, &at, &w.patient_id, &text],
    )
    .await?;
    Ok(StoredResource {
        resource_type: w.resource_type,
        id: w.id,
        version_id: version,
        last_updated: at,
        patient_id: w.patient_id,
        body,
    })
}

/// Queue deliveries. Enqueuers of one `(endpoint, ordering_key)` serialise
/// on a transaction advisory lock (taken in ascending hash order), so ids
/// of one key are assigned in commit order.
async fn enqueue(
    tx: &impl Db,
    items: Vec<(NewDelivery, String)>,
    journal: Option<JournalId>,
) -> Result<Vec<OutboxId>, StoreError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let keys: BTreeSet<String> = items
        .iter()
        .map(|(d, _)| format!("{}\u{1f}{}", d.endpoint, d.ordering_key))
        .collect();
    let keys: Vec<String> = keys.into_iter().collect();
    let hashes = tx
        .rows(
            "SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY h",
            &[&keys],
        )
        .await?;
    for h in hashes {
        let h: i64 = col(&h, 0, "outbox key hash")?;
        tx.rows("SELECT pg_advisory_xact_lock($1)", &[&h]).await?;
    }
    let mut ids = Vec::with_capacity(items.len());
    for (d, payload) in items {
        let jid = d.journal_id.or(journal);
        let row = tx
            .one(
                "INSERT INTO outbox (endpoint, ordering_key, kind, payload, state, attempts,
                    not_before, created_at, updated_at, journal_id)
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, clock_timestamp(), clock_timestamp(), $6)
                 RETURNING id",
                &[
                    &d.endpoint,
                    &d.ordering_key,
                    &d.kind,
                    &payload,
                    &rows::micros(d.not_before),
                    &jid,
                ],
            )
            .await?;
        ids.push(col(&row, 0, "outbox")?);
    }
    Ok(ids)
}

/// Extend the chain from its head, which this transaction locks.
async fn audit_append(
    tx: &impl Db,
    entries: Vec<CheckedAudit>,
) -> Result<Vec<AuditRecord>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let head = tx
        .one(
            "SELECT seq, hash, version FROM audit_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?;
    let mut seq: i64 = col(&head, 0, "audit_head")?;
    let mut prev: String = col(&head, 1, "audit_head")?;
    let mut head_version: i32 = col(&head, 2, "audit_head")?;
    let mut out = Vec::with_capacity(entries.len());
    for a in entries {
        seq = seq
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("audit: seq overflow".to_string()))?;
        let (version, key_id, hash) = backend::seal_audit(&a, head_version, &prev, seq)?;
        tx.exec(
            "INSERT INTO audit (seq, recorded, kind, patient_id, recipient, body, prev_hash, hash, version, key_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &seq,
                &a.recorded,
                &a.kind,
                &a.patient_id,
                &a.recipient,
                &a.canonical,
                &prev,
                &hash,
                &version,
                &key_id,
            ],
        )
        .await?;
        if !a.patients.is_empty() {
            tx.exec(
                "INSERT INTO audit_patients (patient_id, seq)
                 SELECT p, $2 FROM unnest($1::text[]) AS p ON CONFLICT DO NOTHING",
                &[&a.patients, &seq],
            )
            .await?;
        }
        head_version = version;
        out.push(AuditRecord {
            seq,
            recorded: a.recorded,
            kind: a.kind,
            patient_id: a.patient_id,
            recipient: a.recipient,
            body: a.body,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
            version,
            key_id,
        });
    }
    tx.exec(
        "UPDATE audit_head SET seq = $1, hash = $2, version = $3 WHERE id = 1",
        &[&seq, &prev, &head_version],
    )
    .await?;
    Ok(out)
}

/// Upsert clocks in id order (a fixed lock order between instances).
async fn clock_upsert(tx: &impl Db, mut clocks: Vec<ClockRow>) -> Result<(), StoreError> {
    clocks.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
    for c in &clocks {
        tx.exec(
            "INSERT INTO clocks (id, kind, subject, patient_id, started_at, due_at, state, closed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, subject = excluded.subject,
                patient_id = excluded.patient_id, started_at = excluded.started_at,
                due_at = excluded.due_at, state = excluded.state, closed_at = excluded.closed_at",
            &[
                &c.id,
                &c.kind,
                &c.subject,
                &c.patient_id,
                &rows::micros(c.started_at),
                &rows::micros(c.due_at),
                &c.state,
                &c.closed_at.map(rows::micros),
            ],
        )
        .await?;
    }
    Ok(())
}

fn checked_deliveries(items: Vec<NewDelivery>) -> Result<Vec<(NewDelivery, String)>, StoreError> {
    let payloads = backend::check_deliveries(&items)?;
    Ok(items.into_iter().zip(payloads).collect())
}

fn plausible_resource_key(resource_type: &str, id: &str) -> bool {
    !resource_type.is_empty()
        && resource_type.len() <= store::MAX_RESOURCE_TYPE_LEN
        && !id.is_empty()
        && id.len() <= store::MAX_RESOURCE_ID_LEN
}

/// `o` has no older Pending row with the same (endpoint, ordering_key).
const OUTBOX_IS_HEAD: &str = "NOT EXISTS (SELECT 1 FROM outbox p
    WHERE p.endpoint = o.endpoint AND p.ordering_key = o.ordering_key
    AND p.state = 'pending' AND p.id < o.id)";

/// The SQL and parameters of a checked search.
fn search_sql(q: &ResourceQuery) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut p: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(q.resource_type.clone())];
    let mut sql = String::from(
        "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.patient_id, r.body
         FROM resources r WHERE r.resource_type = $1",
    );
    if !q.ids.is_empty() {
        p.push(Box::new(q.ids.clone()));
        sql.push_str(&format!(" AND r.id = ANY(${})", p.len()));
    }
    for (param, values) in &q.params {
        p.push(Box::new(param.clone()));
        p.push(Box::new(values.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM resource_index x
               WHERE x.resource_type = r.resource_type AND x.id = r.id
               AND x.param = ${} AND x.value = ANY(${}))",
            p.len() - 1,
            p.len()
        ));
    }
    if let Some(pid) = &q.patient_id {
        p.push(Box::new(pid.clone()));
        sql.push_str(&format!(" AND r.patient_id = ${}", p.len()));
    }
    for (cmp, at) in &q.last_updated {
        p.push(Box::new(rows::micros(*at)));
        sql.push_str(&format!(
            " AND r.last_updated {} ${}",
            backend::cmp_sql_op(*cmp),
            p.len()
        ));
    }
    if let Some((at, id)) = &q.after {
        p.push(Box::new(rows::micros(*at)));
        p.push(Box::new(id.clone()));
        sql.push_str(&format!(
            " AND (r.last_updated, r.id) > (${}, ${})",
            p.len() - 1,
            p.len()
        ));
    }
    p.push(Box::new(q.limit.min(store::search::MAX_SEARCH_PAGE) as i64));
    sql.push_str(&format!(
        " ORDER BY r.last_updated, r.id LIMIT ${}",
        p.len()
    ));
    (sql, p)
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn append(&self, input: NewInput) -> Result<AppendOutcome, StoreError> {
        let meta = backend::check_input(&input)?;
        let mut input = input;
        input.received_at = rows::micros(input.received_at);
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        let permit = tx.reserve().await.map_err(|_| StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.metrics.enqueued();
        permit.send(writer::AppendReq { input, meta, reply });
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn journal_get(&self, id: JournalId) -> Result<Option<JournalRecord>, StoreError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {} FROM journal WHERE id = $1",
            rows::JOURNAL_COLUMNS
        );
        c.opt(&sql, &[&id])
            .await?
            .map(|r| rows::journal(&r))
            .transpose()
    }

    async fn journal_key_prefix_exists(
        &self,
        kind: InputKind,
        prefix: &str,
        key_len: usize,
        except: &str,
    ) -> Result<bool, StoreError> {
        let Some((lower, upper)) = store::key_prefix_range(prefix, key_len) else {
            return Ok(false);
        };
        let key_len = i32::try_from(key_len).unwrap_or(i32::MAX);
        let c = self.conn().await?;
        // dedup_key is COLLATE "C": the range is byte order and uses the
        // unique (kind, dedup_key) index.
        let found = c
            .opt(
                "SELECT 1 FROM journal
                 WHERE kind = $1 AND dedup_key >= $2 AND dedup_key < $3
                   AND octet_length(dedup_key) = $4 AND dedup_key <> $5
                   AND id < coalesce(
                       (SELECT id FROM journal WHERE kind = $1 AND dedup_key = $5),
                       9223372036854775807)
                 LIMIT 1",
                &[&kind.as_str(), &lower, &upper, &key_len, &except],
            )
            .await?;
        Ok(found.is_some())
    }

    async fn journal_pending(
        &self,
        after: JournalId,
        limit: usize,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        let limit = limit.min(store::MAX_PENDING_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        let sql = format!(
            "SELECT {} FROM journal WHERE state = 'pending' AND id > $1 ORDER BY id LIMIT $2",
            rows::JOURNAL_COLUMNS
        );
        c.rows(&sql, &[&after, &limit])
            .await?
            .iter()
            .map(rows::journal)
            .collect()
    }

    async fn journal_stats(&self) -> Result<JournalStats, StoreError> {
        let c = self.conn().await?;
        let mut stats = JournalStats::default();
        for r in c
            .rows("SELECT state, COUNT(*) FROM journal GROUP BY state", &[])
            .await?
        {
            let state: String = col(&r, 0, "journal")?;
            let n = u64::try_from(col::<i64>(&r, 1, "journal")?).unwrap_or(0);
            match state.parse() {
                Ok(store::JournalState::Pending) => stats.pending += n,
                Ok(store::JournalState::Processed) => stats.processed += n,
                Ok(store::JournalState::Failed) => stats.failed += n,
                Err(_) => return Err(StoreError::Corrupt("journal: bad state".to_string())),
            }
            stats.total += n;
        }
        Ok(stats)
    }

    async fn complete_with(
        &self,
        id: JournalId,
        c: Completion,
    ) -> Result<CompletionResult, StoreError> {
        let writes = backend::check_writes(c.writes)?;
        let deliveries = checked_deliveries(c.deliveries)?;
        let audits = backend::check_audits(c.audits, &self.audit_keys)?;
        backend::check_clocks(&c.clocks)?;
        // First await: calls made in journal order keep that order.
        let _turn = if writes.is_empty() {
            None
        } else {
            Some(self.write_turn.lock().await)
        };
        let started = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let mut stamps = if writes.is_empty() {
            None
        } else {
            Some(Stamper::lock(&tx).await?)
        };
        let state = tx
            .opt("SELECT state FROM journal WHERE id = $1 FOR UPDATE", &[&id])
            .await?
            .ok_or(StoreError::NotFound(id))?;
        let state: String = col(&state, 0, "journal")?;
        if state == store::JournalState::Processed.as_str() {
            // Idempotent: report what is stored, write nothing.
            let mut resources = Vec::with_capacity(writes.len());
            for w in &writes {
                resources.extend(current(&tx, &w.resource_type, &w.id).await?);
            }
            let deliveries = tx
                .rows(
                    "SELECT id FROM outbox WHERE journal_id = $1 ORDER BY id",
                    &[&id],
                )
                .await?
                .iter()
                .map(|r| col(r, 0, "outbox"))
                .collect::<Result<Vec<OutboxId>, _>>()?;
            tx.rollback().await.map_err(pg)?;
            return Ok(CompletionResult {
                resources,
                deliveries,
                already_processed: true,
            });
        }
        let resources = match stamps.as_mut() {
            Some(s) => upsert_all(&tx, s, writes).await?,
            None => Vec::new(),
        };
        if let Some(s) = stamps {
            s.save(&tx).await?;
        }
        let deliveries = enqueue(&tx, deliveries, Some(id)).await?;
        audit_append(&tx, audits).await?;
        clock_upsert(&tx, c.clocks).await?;
        tx.exec(
            "UPDATE journal SET state = 'processed', processed_at = clock_timestamp(), error = NULL
             WHERE id = $1 AND state <> 'processed'",
            &[&id],
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        self.committed(started);
        Ok(CompletionResult {
            resources,
            deliveries,
            already_processed: false,
        })
    }

    async fn put_resources(
        &self,
        writes: Vec<ResourceWrite>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let writes = backend::check_writes(writes)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.write_turn.lock().await;
        let started = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let mut stamps = Stamper::lock(&tx).await?;
        let out = upsert_all(&tx, &mut stamps, writes).await?;
        stamps.save(&tx).await?;
        tx.commit().await.map_err(pg)?;
        self.committed(started);
        Ok(out)
    }

    async fn resource_search(&self, q: &ResourceQuery) -> Result<Vec<StoredResource>, StoreError> {
        if !backend::check_query(q)? {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        search_rows(&c, q).await
    }

    async fn fail(&self, id: JournalId, error: &str) -> Result<bool, StoreError> {
        let error = backend::truncate(error, store::MAX_ERROR_LEN);
        let started = std::time::Instant::now();
        let c = self.conn().await?;
        // Only a pending record. Two instances failing the same record: the
        // second waits for the first's row lock, re-reads the row, finds it
        // failed and changes nothing, so only one of them is told `true`.
        let n = c
            .exec(
                "UPDATE journal SET state = 'failed', processed_at = clock_timestamp(), error = $2
                 WHERE id = $1 AND state = 'pending'",
                &[&id, &error],
            )
            .await?;
        self.committed(started);
        if n > 0 {
            return Ok(true);
        }
        let exists = c
            .opt("SELECT 1 FROM journal WHERE id = $1", &[&id])
            .await?
            .is_some();
        if exists {
            Ok(false)
        } else {
            Err(StoreError::NotFound(id))
        }
    }

    async fn requeue(&self, from: JournalId, to: JournalId) -> Result<u64, StoreError> {
        if from > to {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let c = self.conn().await?;
        let n = c
            .exec(
                "UPDATE journal SET state = 'pending', processed_at = NULL, error = NULL
                 WHERE id BETWEEN $1 AND $2 AND state <> 'pending'",
                &[&from, &to],
            )
            .await?;
        self.committed(started);
        Ok(n)
    }

    async fn resource_get(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        if !plausible_resource_key(resource_type, id) {
            return Ok(None);
        }
        let c = self.conn().await?;
        current(&c, resource_type, id).await
    }

    async fn resource_get_many(
        &self,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let ids = backend::get_many_ids(resource_type, ids)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM resources WHERE resource_type = $1 AND id = ANY($2) ORDER BY id",
            rows::RESOURCE_COLUMNS
        );
        let c = self.conn().await?;
        c.rows(&sql, &[&resource_type, &ids])
            .await?
            .iter()
            .map(rows::resource)
            .collect()
    }

    async fn resource_history(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        if !plausible_resource_key(resource_type, id) {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        // One statement: one snapshot of history and current.
        let sql = format!(
            "SELECT {cols} FROM (
                SELECT {cols} FROM resource_history WHERE resource_type = $1 AND id = $2
                UNION ALL
                SELECT {cols} FROM resources WHERE resource_type = $1 AND id = $2
             ) v ORDER BY version_id",
            cols = rows::RESOURCE_COLUMNS
        );
        c.rows(&sql, &[&resource_type, &id])
            .await?
            .iter()
            .map(rows::resource)
            .collect()
    }

    async fn resources_by_patient_types(
        &self,
        patient_id: &str,
        types: &[&str],
    ) -> Result<Vec<StoredResource>, StoreError> {
        store::check_types(types)?;
        // Checked here too, so an empty answer takes no pool connection.
        if !store::patient_types_can_match(patient_id, types) {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        by_patient_types(&c, patient_id, types).await
    }

    // One pool checkout for both statements (each reads its own snapshot,
    // READ COMMITTED, as the two separate calls would).
    async fn resource_search_with_context(
        &self,
        q: &ResourceQuery,
        patient_id: &str,
        context_types: &[&str],
    ) -> Result<WithContext<Vec<StoredResource>>, StoreError> {
        store::check_types(context_types)?;
        if !backend::check_query(q)? {
            return Ok(WithContext::default());
        }
        let c = self.conn().await?;
        let found = search_rows(&c, q).await?;
        let context = if found.is_empty() {
            Vec::new()
        } else {
            by_patient_types(&c, patient_id, context_types).await?
        };
        Ok(WithContext { found, context })
    }

    async fn resource_get_with_context(
        &self,
        resource_type: &str,
        id: &str,
        context_types: &[&str],
    ) -> Result<WithContext<Option<StoredResource>>, StoreError> {
        store::check_types(context_types)?;
        if !plausible_resource_key(resource_type, id) {
            return Ok(WithContext::default());
        }
        let c = self.conn().await?;
        let found = current(&c, resource_type, id).await?;
        let context = match found.as_ref().and_then(|r| r.patient_id.as_deref()) {
            Some(p) => by_patient_types(&c, p, context_types).await?,
            None => Vec::new(),
        };
        Ok(WithContext { found, context })
    }

    async fn resources_by_patient(
        &self,
        patient_id: &str,
        resource_type: Option<&str>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        if patient_id.is_empty() || patient_id.len() > store::MAX_PATIENT_ID_LEN {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        let cols = rows::RESOURCE_COLUMNS;
        let found = match resource_type {
            Some(t) => {
                let sql = format!(
                    "SELECT {cols} FROM resources WHERE patient_id = $1 AND resource_type = $2
                     ORDER BY id"
                );
                c.rows(&sql, &[&patient_id, &t]).await?
            }
            None => {
                let sql = format!(
                    "SELECT {cols} FROM resources WHERE patient_id = $1 ORDER BY resource_type, id"
                );
                c.rows(&sql, &[&patient_id]).await?
            }
        };
        found.iter().map(rows::resource).collect()
    }

    async fn resource_count(&self, resource_type: Option<&str>) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let row = match resource_type {
            Some(t) => {
                c.one(
                    "SELECT COUNT(*) FROM resources WHERE resource_type = $1",
                    &[&t],
                )
                .await?
            }
            None => c.one("SELECT COUNT(*) FROM resources", &[]).await?,
        };
        Ok(u64::try_from(col::<i64>(&row, 0, "resources")?).unwrap_or(0))
    }

    async fn outbox_enqueue(&self, items: Vec<NewDelivery>) -> Result<Vec<OutboxId>, StoreError> {
        let items = checked_deliveries(items)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let ids = enqueue(&tx, items, None).await?;
        tx.commit().await.map_err(pg)?;
        self.committed(started);
        Ok(ids)
    }

    async fn outbox_claim(
        &self,
        worker: &str,
        endpoint: Option<&str>,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        backend::check_worker(worker)?;
        let limit = limit.min(store::outbox::MAX_OUTBOX_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lease = TimeDelta::from_std(lease)
            .map_err(|_| StoreError::Invalid("lease is too long".to_string()))?;
        let now = rows::micros(now);
        let lease_until = now
            .checked_add_signed(lease)
            .ok_or_else(|| StoreError::Invalid("lease end is out of range".to_string()))?;
        let sql = format!(
            "WITH picked AS (
                SELECT o.id FROM outbox o
                WHERE o.state = 'pending' AND o.not_before <= $4
                AND (o.lease_until IS NULL OR o.lease_until <= $4)
                AND ($5::text IS NULL OR o.endpoint = $5)
                AND {OUTBOX_IS_HEAD}
                ORDER BY o.not_before, o.id LIMIT $6
                FOR UPDATE OF o SKIP LOCKED)
             UPDATE outbox SET lease_owner = $1, lease_until = $2, updated_at = $3
             WHERE id IN (SELECT id FROM picked)
             RETURNING {}",
            rows::OUTBOX_COLUMNS
        );
        let started = std::time::Instant::now();
        let c = self.conn().await?;
        let updated = rows::micros(Utc::now());
        let mut out = c
            .rows(
                &sql,
                &[&worker, &lease_until, &updated, &now, &endpoint, &limit],
            )
            .await?
            .iter()
            .map(rows::delivery)
            .collect::<Result<Vec<_>, _>>()?;
        // An idle worker's poll that claimed nothing changed no row: no commit.
        if !out.is_empty() {
            self.committed(started);
        }
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    async fn outbox_finish(
        &self,
        id: OutboxId,
        worker: &str,
        outcome: DeliveryOutcome,
    ) -> Result<(), StoreError> {
        backend::check_worker(worker)?;
        let short = |e: &str| backend::truncate(e, store::MAX_ERROR_LEN).to_string();
        // (state, attempts increment, new not_before, set last_error, last_error)
        let (state, inc, not_before, set_error, error): (
            DeliveryState,
            i32,
            Option<DateTime<Utc>>,
            bool,
            Option<String>,
        ) = match outcome {
            DeliveryOutcome::Delivered => (DeliveryState::Delivered, 1, None, true, None),
            DeliveryOutcome::Retry { not_before, error } => (
                DeliveryState::Pending,
                1,
                Some(rows::micros(not_before)),
                true,
                Some(short(&error)),
            ),
            DeliveryOutcome::Dead { error } => {
                (DeliveryState::Dead, 1, None, true, Some(short(&error)))
            }
            DeliveryOutcome::Withheld { reason } => {
                (DeliveryState::Withheld, 0, None, true, Some(short(&reason)))
            }
            DeliveryOutcome::Release => (DeliveryState::Pending, 0, None, false, None),
        };
        let started = std::time::Instant::now();
        let c = self.conn().await?;
        let n = c
            .exec(
                "UPDATE outbox
                 SET state = $3, attempts = attempts + $4, not_before = COALESCE($5, not_before),
                     last_error = CASE WHEN $6 THEN $7 ELSE last_error END,
                     lease_owner = NULL, lease_until = NULL, updated_at = clock_timestamp()
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
                &[
                    &id,
                    &worker,
                    &state.as_str(),
                    &inc,
                    &not_before,
                    &set_error,
                    &error,
                ],
            )
            .await?;
        self.committed(started);
        if n == 0 {
            return Err(StoreError::LeaseLost(id));
        }
        Ok(())
    }

    async fn outbox_get(&self, id: OutboxId) -> Result<Option<Delivery>, StoreError> {
        let c = self.conn().await?;
        let sql = format!("SELECT {} FROM outbox WHERE id = $1", rows::OUTBOX_COLUMNS);
        c.opt(&sql, &[&id])
            .await?
            .map(|r| rows::delivery(&r))
            .transpose()
    }

    async fn outbox_list(
        &self,
        state: Option<DeliveryState>,
        endpoint: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let limit = limit.min(store::outbox::MAX_OUTBOX_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let state = state.map(DeliveryState::as_str);
        let sql = format!(
            "SELECT {} FROM outbox WHERE ($1::text IS NULL OR state = $1)
             AND ($2::text IS NULL OR endpoint = $2) ORDER BY id LIMIT $3",
            rows::OUTBOX_COLUMNS
        );
        let c = self.conn().await?;
        c.rows(&sql, &[&state, &endpoint, &limit])
            .await?
            .iter()
            .map(rows::delivery)
            .collect()
    }

    async fn outbox_retry(&self, id: OutboxId) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        let c = self.conn().await?;
        let n = c
            .exec(
                "UPDATE outbox SET state = 'pending', attempts = 0,
                    not_before = clock_timestamp(), updated_at = clock_timestamp(),
                    lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND state IN ('dead', 'withheld')",
                &[&id],
            )
            .await?;
        self.committed(started);
        Ok(n > 0)
    }

    async fn outbox_drop(&self, id: OutboxId) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        let c = self.conn().await?;
        let n = c
            .exec(
                "UPDATE outbox SET state = 'dropped', updated_at = clock_timestamp()
                 WHERE id = $1 AND state = 'dead'",
                &[&id],
            )
            .await?;
        self.committed(started);
        Ok(n > 0)
    }

    async fn outbox_depth(&self) -> Result<Vec<(String, DeliveryState, u64)>, StoreError> {
        let c = self.conn().await?;
        let mut out = Vec::new();
        for r in c
            .rows(
                "SELECT endpoint, state, COUNT(*) FROM outbox
                 GROUP BY endpoint, state ORDER BY endpoint, state",
                &[],
            )
            .await?
        {
            let endpoint: String = col(&r, 0, "outbox")?;
            let state: String = col(&r, 1, "outbox")?;
            let n: i64 = col(&r, 2, "outbox")?;
            let state = state
                .parse()
                .map_err(|_| StoreError::Corrupt("outbox: bad state".to_string()))?;
            out.push((endpoint, state, u64::try_from(n).unwrap_or(0)));
        }
        Ok(out)
    }

    async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let c = self.conn().await?;
        let sql = format!(
            "SELECT MIN(GREATEST(o.not_before, COALESCE(o.lease_until, o.not_before)))
             FROM outbox o WHERE o.state = 'pending' AND {OUTBOX_IS_HEAD}"
        );
        let row = c.one(&sql, &[]).await?;
        col(&row, 0, "outbox")
    }

    async fn audit_append(&self, entries: Vec<NewAudit>) -> Result<Vec<AuditRecord>, StoreError> {
        let entries = backend::check_audits(entries, &self.audit_keys)?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        let out = audit_append(&tx, entries).await?;
        tx.commit().await.map_err(pg)?;
        self.committed(started);
        Ok(out)
    }

    async fn audit_list(
        &self,
        after_seq: i64,
        limit: usize,
        patient_id: Option<&str>,
        recipient: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = limit.min(store::audit::MAX_AUDIT_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Filters only present when asked for, so the indexes apply; the
        // patient filter walks `audit_patients` (every patient a record names).
        let recipient_filter = if recipient.is_some() {
            " AND a.recipient = $3"
        } else {
            " AND $3::text IS NULL"
        };
        let sql = if patient_id.is_some() {
            format!(
                "SELECT {} FROM audit_patients ap JOIN audit a ON a.seq = ap.seq
                 WHERE ap.patient_id = $2 AND ap.seq > $1{recipient_filter} ORDER BY ap.seq LIMIT $4",
                rows::AUDIT_COLUMNS_A,
            )
        } else {
            format!(
                "SELECT {} FROM audit a WHERE a.seq > $1 AND $2::text IS NULL{recipient_filter} ORDER BY a.seq LIMIT $4",
                rows::AUDIT_COLUMNS_A,
            )
        };
        let c = self.conn().await?;
        c.rows(&sql, &[&after_seq, &patient_id, &recipient, &limit])
            .await?
            .iter()
            .map(rows::audit)
            .collect()
    }

    async fn audit_verify(&self) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn().await?;
        // One snapshot for the whole walk and the head.
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let mut verifier = backend::AuditVerifier::new(self.audit_keys.clone());
        let mut after = 0_i64;
        let sql = format!(
            "SELECT {} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            rows::AUDIT_COLUMNS
        );
        loop {
            let page = tx.rows(&sql, &[&after, &VERIFY_PAGE]).await?;
            let Some(last) = page.last() else { break };
            after = col(last, 0, "audit")?;
            for row in &page {
                let record = match rows::audit(row) {
                    Ok(r) => r,
                    // An undecodable row is a broken link, not an I/O error.
                    Err(StoreError::Corrupt(_)) => return Ok(Some(verifier.next_seq())),
                    Err(e) => return Err(e),
                };
                if let Some(bad) = verifier.check(&record)? {
                    return Ok(Some(bad));
                }
            }
        }
        let head = tx
            .one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
            .await?;
        let (seq, hash): (i64, String) =
            (col(&head, 0, "audit_head")?, col(&head, 1, "audit_head")?);
        tx.rollback().await.map_err(pg)?;
        Ok(verifier.check_head(seq, &hash))
    }

    async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        let c = self.conn().await?;
        let head = c
            .one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
            .await?;
        Ok((col(&head, 0, "audit_head")?, col(&head, 1, "audit_head")?))
    }

    async fn jti_use(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        backend::check_jti(client_id, jti)?;
        let (expires_at, now) = (rows::micros(expires_at), rows::micros(now));
        let started = std::time::Instant::now();
        let c = self.conn().await?;
        // Two autocommit statements, so no transaction holds row locks of
        // both (no deadlock between instances purging and using at once).
        c.exec(
            "DELETE FROM jti_cache WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM jti_cache WHERE expires_at <= $1
                LIMIT $2 FOR UPDATE SKIP LOCKED))",
            &[&now, &JTI_PURGE_LIMIT],
        )
        .await?;
        let first = c
            .opt(
                "INSERT INTO jti_cache (client_id, jti, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = excluded.expires_at
                 WHERE jti_cache.expires_at <= $4
                 RETURNING 1",
                &[&client_id, &jti, &expires_at, &now],
            )
            .await?;
        self.committed(started);
        Ok(first.is_some())
    }

    async fn clock_upsert(&self, clocks: Vec<ClockRow>) -> Result<(), StoreError> {
        backend::check_clocks(&clocks)?;
        if clocks.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        clock_upsert(&tx, clocks).await?;
        tx.commit().await.map_err(pg)?;
        self.committed(started);
        Ok(())
    }

    async fn clock_list(
        &self,
        open_only: bool,
        due_before: Option<DateTime<Utc>>,
        subject: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ClockRow>, StoreError> {
        let limit = limit.min(store::clock::MAX_CLOCK_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let due = due_before.map(rows::micros);
        let sql = format!(
            "SELECT {} FROM clocks WHERE 1 = 1{}{}{} ORDER BY due_at, id LIMIT $3",
            rows::CLOCK_COLUMNS,
            if open_only { " AND state = 'open'" } else { "" },
            if due.is_some() {
                " AND due_at < $1"
            } else {
                " AND $1::timestamptz IS NULL"
            },
            if subject.is_some() {
                " AND subject = $2"
            } else {
                " AND $2::text IS NULL"
            },
        );
        let c = self.conn().await?;
        c.rows(&sql, &[&due, &subject, &limit])
            .await?
            .iter()
            .map(rows::clock)
            .collect()
    }

    async fn clock_list_subjects(
        &self,
        kind: Option<&str>,
        subjects: &[String],
    ) -> Result<Vec<ClockRow>, StoreError> {
        backend::check_clock_subjects(subjects)?;
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM clocks WHERE subject = ANY($1){} ORDER BY subject, due_at, id",
            rows::CLOCK_COLUMNS,
            if kind.is_some() {
                " AND kind = $2"
            } else {
                " AND $2::text IS NULL"
            },
        );
        let c = self.conn().await?;
        c.rows(&sql, &[&subjects, &kind])
            .await?
            .iter()
            .map(rows::clock)
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.tx.as_ref().is_none_or(|tx| tx.is_closed()) {
            return Err(StoreError::Closed);
        }
        let c = self.conn().await?;
        c.one("SELECT 1", &[]).await?;
        Ok(())
    }

    fn metrics(&self) -> StoreMetrics {
        self.metrics.snapshot()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
