//! SQLite implementation of [`Store`]: the embedded default.
//!
//! Shape:
//! * **one writer thread** (see `writer.rs`) owns the only read-write
//!   connection and does group commit: concurrent `append` / `complete` /
//!   `fail` / `requeue` requests arriving over a bounded channel share one
//!   transaction and one fsync;
//! * **a small pool of read-only connections** serves reads through
//!   `tokio::task::spawn_blocking`; WAL lets them read while the writer
//!   writes, and a read that starts after `append` returned sees the record;
//! * the database runs with `journal_mode=WAL`, `synchronous=FULL` (fsync of
//!   the WAL at every commit; `NORMAL` on request), `foreign_keys=ON` and a
//!   busy timeout.
//!
//! Storage conventions: timestamps are INTEGER unix microseconds (UTC), so
//! times read back are truncated to microseconds; JSON is compact TEXT; all
//! SQL is in `sql.rs`, the schema in `migrations/sqlite/`.
//!
//! Every async method must be called inside a Tokio runtime (reads use
//! `spawn_blocking`).
//!
//! Dropping the store closes the request channel and joins the writer
//! thread, which first finishes everything already queued.

mod migrate;
mod rows;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::MetricsRecorder;
use crate::resource::prepare_writes;
use crate::{
    validate_input, AppendOutcome, JournalId, JournalRecord, JournalStats, NewInput, ResourceWrite,
    Store, StoreError, StoreMetrics, StoredResource, MAX_PATIENT_ID_LEN, MAX_PENDING_PAGE,
    MAX_RESOURCE_ID_LEN, MAX_RESOURCE_TYPE_LEN,
};
use writer::WriteOp;

/// Highest SQLite schema (migration) version this binary can run against.
pub fn sqlite_schema_version() -> i64 {
    migrate::latest_version()
}

/// How long a connection waits on a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Write requests that may wait for the writer before senders wait too.
const WRITE_QUEUE_CAPACITY: usize = 4096;
/// Upper bound on `read_connections`.
const MAX_READ_CONNECTIONS: usize = 64;
/// Upper bound on `max_batch`.
const MAX_BATCH_LIMIT: usize = 8192;

/// Tuning for [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most requests per group commit. Default 512; 1 = one commit per
    /// message (the benchmark reference). Clamped to 1..=8192.
    pub max_batch: usize,
    /// Default true: `synchronous=FULL`, fsync the WAL at every commit.
    /// False: `synchronous=NORMAL` (a power loss may lose the last commits —
    /// breaks the ACK promise; for tests and benchmarks only).
    pub synchronous_full: bool,
    /// Read-only connections in the pool. Default 4; clamped to 1..=64.
    pub read_connections: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            max_batch: 512,
            synchronous_full: true,
            read_connections: 4,
        }
    }
}

/// The SQLite store. Cheap to share behind an `Arc`; see the module docs.
pub struct SqliteStore {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<WriteOp>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<ReadPool>,
    metrics: Arc<MetricsRecorder>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path`: creates parent
    /// directories, switches to WAL, sets the busy timeout, runs migrations,
    /// starts the writer thread and opens the read pool.
    pub fn open(path: &Path, opts: SqliteOptions) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let open_err = |reason: String| StoreError::Open {
            path: shown.clone(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_err(format!("cannot create directory: {e}")))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(e.to_string()))?;
        configure_writer(&conn, opts.synchronous_full).map_err(|e| open_err(e.to_string()))?;
        migrate::migrate(&conn)?;

        let readers = (0..opts.read_connections.clamp(1, MAX_READ_CONNECTIONS))
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| open_err(format!("read connection: {e}")))?;

        let metrics = Arc::new(MetricsRecorder::default());
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let max_batch = opts.max_batch.clamp(1, MAX_BATCH_LIMIT);
        let thread_metrics = Arc::clone(&metrics);
        let writer = std::thread::Builder::new()
            .name("cwsgw-store-writer".to_string())
            .spawn(move || writer::run(conn, rx, max_batch, &thread_metrics))
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;

        Ok(SqliteStore {
            tx: Some(tx),
            writer: Some(writer),
            readers: Arc::new(ReadPool::new(readers)),
            metrics,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        // Reserve first: if this future is dropped while the queue is full,
        // nothing was queued and the depth gauge stays right.
        let permit = tx.reserve().await.map_err(|_| StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.metrics.enqueued();
        permit.send(make(reply));
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| StoreError::Internal(format!("read task: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued and exit.
        drop(self.tx.take());
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

fn configure_writer(conn: &Connection, synchronous_full: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL required"
        )));
    }
    conn.pragma_update(
        None,
        "synchronous",
        if synchronous_full { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// A fixed set of read-only connections, checked out one per read.
struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    available: Condvar,
}

impl ReadPool {
    fn new(conns: Vec<Connection>) -> Self {
        ReadPool {
            idle: Mutex::new(conns),
            available: Condvar::new(),
        }
    }

    /// Run `f` on an idle connection, waiting for one if all are busy.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(c) = idle.pop() {
                    break c;
                }
                idle = self.available.wait(idle).unwrap_or_else(|e| e.into_inner());
            }
        };
        let guard = Checkout {
            pool: self,
            conn: Some(conn),
        };
        match guard.conn.as_ref() {
            Some(c) => f(c),
            None => Err(StoreError::Internal("read connection missing".to_string())),
        }
    }
}

/// Returns the connection to the pool even if the read panics.
struct Checkout<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            // A read left open by an error must not pin an old snapshot.
            if !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c);
            self.pool.available.notify_one();
        }
    }
}

/// Run `f` inside one read transaction (one consistent snapshot).
fn snapshot<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN")?;
    let out = f(conn);
    let _ = conn.execute_batch("COMMIT");
    out
}

fn query_resources(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredResource>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params, rows::resource_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(rows::stored_resource(row?)?);
    }
    Ok(out)
}

fn plausible_resource_key(resource_type: &str, id: &str) -> bool {
    !resource_type.is_empty()
        && resource_type.len() <= MAX_RESOURCE_TYPE_LEN
        && !id.is_empty()
        && id.len() <= MAX_RESOURCE_ID_LEN
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn append(&self, input: NewInput) -> Result<AppendOutcome, StoreError> {
        let meta = validate_input(&input)?;
        self.write(|reply| WriteOp::Append { input, meta, reply })
            .await
    }

    async fn journal_get(&self, id: JournalId) -> Result<Option<JournalRecord>, StoreError> {
        self.read(move |conn| {
            conn.query_row(&sql::journal_get(), [id], rows::journal_row)
                .optional()?
                .map(rows::journal_record)
                .transpose()
        })
        .await
    }

    async fn journal_pending(
        &self,
        after: JournalId,
        limit: usize,
    ) -> Result<Vec<JournalRecord>, StoreError> {
        let limit = limit.min(MAX_PENDING_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let mut stmt = conn.prepare(&sql::journal_pending())?;
            let rows = stmt.query_map(params![after, limit], rows::journal_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(rows::journal_record(row?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn journal_stats(&self) -> Result<JournalStats, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(sql::JOURNAL_STATS)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut stats = JournalStats::default();
            for row in rows {
                let (state, n) = row?;
                let n = u64::try_from(n).unwrap_or(0);
                match state.parse() {
                    Ok(crate::JournalState::Pending) => stats.pending += n,
                    Ok(crate::JournalState::Processed) => stats.processed += n,
                    Ok(crate::JournalState::Failed) => stats.failed += n,
                    Err(_) => return Err(StoreError::Corrupt("journal: bad state".to_string())),
                }
                stats.total += n;
            }
            Ok(stats)
        })
        .await
    }

    async fn complete(
        &self,
        id: JournalId,
        writes: Vec<ResourceWrite>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let writes = prepare_writes(writes)?;
        self.write(|reply| WriteOp::Complete { id, writes, reply })
            .await
    }

    async fn fail(&self, id: JournalId, error: &str) -> Result<(), StoreError> {
        let error = crate::truncate_str(error, crate::MAX_ERROR_LEN).to_string();
        self.write(|reply| WriteOp::Fail { id, error, reply }).await
    }

    async fn requeue(&self, from: JournalId, to: JournalId) -> Result<u64, StoreError> {
        if from > to {
            return Ok(0);
        }
        self.write(|reply| WriteOp::Requeue { from, to, reply })
            .await
    }

    async fn resource_get(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        if !plausible_resource_key(resource_type, id) {
            return Ok(None);
        }
        let (t, i) = (resource_type.to_string(), id.to_string());
        self.read(move |conn| {
            conn.query_row(&sql::resource_get(), params![t, i], rows::resource_row)
                .optional()?
                .map(rows::stored_resource)
                .transpose()
        })
        .await
    }

    async fn resource_history(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        if !plausible_resource_key(resource_type, id) {
            return Ok(Vec::new());
        }
        let (t, i) = (resource_type.to_string(), id.to_string());
        self.read(move |conn| {
            snapshot(conn, |conn| {
                let mut all = query_resources(conn, &sql::resource_history(), params![t, i])?;
                let current = conn
                    .query_row(&sql::resource_get(), params![t, i], rows::resource_row)
                    .optional()?
                    .map(rows::stored_resource)
                    .transpose()?;
                all.extend(current);
                Ok(all)
            })
        })
        .await
    }

    async fn resources_by_patient(
        &self,
        patient_id: &str,
        resource_type: Option<&str>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        if patient_id.is_empty() || patient_id.len() > MAX_PATIENT_ID_LEN {
            return Ok(Vec::new());
        }
        let p = patient_id.to_string();
        let t = resource_type.map(str::to_string);
        self.read(move |conn| match t {
            Some(t) => query_resources(conn, &sql::resources_by_patient_and_type(), params![p, t]),
            None => query_resources(conn, &sql::resources_by_patient(), params![p]),
        })
        .await
    }

    async fn resource_count(&self, resource_type: Option<&str>) -> Result<u64, StoreError> {
        let t = resource_type.map(str::to_string);
        self.read(move |conn| {
            let n: i64 = match t {
                Some(t) => conn.query_row(sql::RESOURCE_COUNT_TYPE, [t], |r| r.get(0))?,
                None => conn.query_row(sql::RESOURCE_COUNT_ALL, [], |r| r.get(0))?,
            };
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.tx.as_ref().is_none_or(|tx| tx.is_closed()) {
            return Err(StoreError::Closed);
        }
        self.read(|conn| {
            conn.query_row(sql::PING, [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }

    fn metrics(&self) -> StoreMetrics {
        self.metrics.snapshot()
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.join("; ")
    }

    /// The hot queries must not scan the journal table (its rows hold the raw blobs).
    #[test]
    fn hot_queries_use_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        migrate::migrate(&conn).unwrap();
        let pending = plan(
            &conn,
            &sql::journal_pending()
                .replace("?1", "0")
                .replace("?2", "10"),
        );
        assert!(pending.contains("journal_state"), "{pending}");
        let stats = plan(&conn, sql::JOURNAL_STATS);
        assert!(stats.contains("journal_state"), "{stats}");
        let by_patient = plan(&conn, &sql::resources_by_patient().replace("?1", "'p'"));
        assert!(by_patient.contains("resources_patient"), "{by_patient}");
    }
}
