//! SQLite implementation of [`Store`]: the embedded default.
//!
//! Shape:
//! * **one writer thread** (see `writer.rs`) owns the only read-write
//!   connection and does group commit: every write (`append`,
//!   `complete_with`, `put_resources`, `fail`, `requeue`, outbox enqueue /
//!   claim / finish / retry / drop, `audit_append`, `jti_use`,
//!   `clock_upsert`) goes over one bounded channel, and requests queued
//!   together share one transaction and one fsync. Claims are writes too, so
//!   two workers can never lease the same row;
//! * **a small pool of read-only connections** serves reads; WAL lets them
//!   read while the writer writes, and a read that starts after `append`
//!   returned sees the record. Short reads (one resource, a page of at most
//!   [`INLINE_MAX_ROWS`] rows, one journal or outbox row) run on the calling
//!   thread when a connection is idle; every other read, and a short one
//!   that would have to wait for a connection, goes through
//!   `tokio::task::spawn_blocking` (see [`SqliteStore::read_short`]);
//! * the database runs with `journal_mode=WAL`, `foreign_keys=ON` and a
//!   busy timeout; by default the writer commits with `synchronous=NORMAL`
//!   and **a WAL sync thread** (`wal_sync.rs`) fsyncs the WAL before any
//!   reply of a batch is sent, so the fsync of one batch overlaps the next
//!   ([`Durability`]);
//! * **a checkpoint thread** copies the WAL into the database file;
//! * **the intake log** (`intake_log.rs`, [`SqliteOptions::intake_log`]):
//!   an append is written to an append-only log file and answered once the
//!   log's own sync thread fsynced it and its journal transaction committed
//!   (without waiting for the WAL fsync); what a crash left only in the log
//!   is replayed into the journal at the next open.
//!
//! Storage conventions: timestamps are INTEGER unix microseconds (UTC), so
//! times read back are truncated to microseconds; JSON is compact TEXT; all
//! SQL is in `sql.rs`, the schema in `migrations/sqlite/`.
//!
//! Every async method must be called inside a Tokio runtime (reads may use
//! `spawn_blocking`).
//!
//! Dropping the store closes the request channel and joins the writer
//! thread, which first finishes everything already queued.

mod intake_log;
mod migrate;
mod rows;
mod sql;
mod wal_sync;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use chrono::{DateTime, Utc};
use rusqlite::types::Value as SqlValue;

use crate::audit::{prepare_audits, AuditKeys, ChainVerifier, MAX_AUDIT_PAGE};
use crate::clock::{check_clock_subjects, check_clocks, check_jti, MAX_CLOCK_PAGE};
use crate::metrics::MetricsRecorder;
use crate::outbox::{check_worker, prepare_deliveries, MAX_OUTBOX_PAGE};
use crate::resource::prepare_writes;
use crate::search::{check_query, QueryCheck, MAX_SEARCH_PAGE};
use crate::{
    validate_input, AppendOutcome, AuditRecord, ClockRow, Completion, CompletionResult, Delivery,
    DeliveryOutcome, DeliveryState, Durable, InputKind, JournalId, JournalRecord, JournalStats,
    NewAudit, NewDelivery, NewInput, OutboxId, ResourceQuery, ResourceWrite, Store, StoreError,
    StoreMetrics, StoredResource, WithContext, MAX_PATIENT_ID_LEN, MAX_PENDING_PAGE,
    MAX_RESOURCE_ID_LEN, MAX_RESOURCE_TYPE_LEN,
};
use rows::to_micros;
use writer::{PreparedCompletion, PreparedDelivery, WriteOp, WriterState};

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
/// Largest page (`ResourceQuery::limit`) a search reads on the calling
/// thread ([`SqliteStore::read_short`]); the FHIR API's default page asks
/// for 76 rows (`_count` 50 and half again).
const INLINE_MAX_ROWS: usize = 100;
/// Upper bound on `max_batch`.
const MAX_BATCH_LIMIT: usize = 8192;

/// Tuning for [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most requests per group commit. Default 512; 1 = one commit per
    /// message (the benchmark reference). Clamped to 1..=8192.
    pub max_batch: usize,
    /// When a commit is on disk before its replies; default
    /// [`Durability::Pipelined`].
    pub durability: Durability,
    /// Read-only connections in the pool. Default 4; clamped to 1..=64.
    pub read_connections: usize,
    /// WAL frames (pages) after which the writer restarts the log under
    /// sustained writes ([`Checkpointer`]). Default 16,384 (~64 MiB);
    /// clamped to 64..=1,048,576. The WAL file is trimmed to five times
    /// this when the log restarts.
    pub wal_restart_frames: usize,
    /// Zero-fill the WAL file at open to the length the log reaches under
    /// sustained intake before it restarts (four times
    /// `wal_restart_frames` frames, ~258 MiB by default), so that commits
    /// overwrite blocks already on disk instead of growing the file. Default
    /// off; the gateway's `serve` turns it on (`[store] wal_preallocate`).
    /// See [`wal_sync::preallocate`].
    pub wal_preallocate: bool,
    /// Make appends durable in the intake log (`intake_log.rs`) instead of
    /// waiting for the journal's WAL fsync. Default on; only with
    /// [`Durability::Pipelined`]. Its two segment files are zero-filled at
    /// open when `wal_preallocate` is on.
    pub intake_log: bool,
    /// Audit keys (from outside the database): the last seals new audit
    /// records, all verify. Default none: unkeyed (version 1) records while
    /// the chain is unkeyed (see [`crate::audit`]).
    pub audit_keys: AuditKeys,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            max_batch: 512,
            durability: Durability::Pipelined,
            read_connections: 4,
            wal_restart_frames: WAL_RESTART_FRAMES,
            wal_preallocate: false,
            intake_log: true,
            audit_keys: AuditKeys::none(),
        }
    }
}

/// How the SQLite store makes a commit durable before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` and the WAL sync thread: a batch's replies are
    /// sent after an `fdatasync` of the WAL that began after its `COMMIT`;
    /// the writer runs the next batch meanwhile, and one fsync covers every
    /// commit made while the previous one ran. The default. Measured in
    /// docs/performance.md (stop 11); the reasoning is in `wal_sync.rs`.
    Pipelined,
    /// `synchronous=FULL`: SQLite fsyncs the WAL inside every `COMMIT` and
    /// the writer waits for it (the "one commit per message" reference of
    /// `bench ingest`).
    Inline,
    /// `synchronous=NORMAL` and no sync before answering: a power loss may
    /// lose acknowledged commits. Tests and experiments only.
    Unsynced,
}

/// The SQLite store. Cheap to share behind an `Arc`; see the module docs.
pub struct SqliteStore {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<WriteOp>>,
    writer: Option<JoinHandle<()>>,
    /// The WAL sync thread ([`Durability::Pipelined`]); it exits after the
    /// writer, which holds its channel.
    syncer: Option<JoinHandle<()>>,
    /// Shared with the sync thread: set once a WAL fsync failed, after which
    /// the store refuses writes (and [`Store::ping`] fails).
    sync_state: Option<Arc<wal_sync::SyncState>>,
    checkpointer: Option<Checkpointer>,
    readers: Arc<ReadPool>,
    metrics: Arc<MetricsRecorder>,
    /// The intake log, when this store owns it (see `intake_log.rs`).
    log: Option<intake_log::IntakeLog>,
    path: PathBuf,
    audit_keys: AuditKeys,
}

impl SqliteStore {
    /// Test support: the next WAL fsync fails as a dying disk's would (EIO),
    /// poisoning the store. No effect without the sync thread.
    #[cfg(feature = "test-support")]
    pub fn fail_next_wal_sync(&self) {
        if let Some(state) = &self.sync_state {
            state
                .fail_next
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Test support: the next fsync of the intake log fails as a dying
    /// disk's would (EIO), poisoning the log. No effect without the log.
    #[cfg(feature = "test-support")]
    pub fn fail_next_intake_sync(&self) {
        if let Some(log) = &self.log {
            log.shared()
                .fail_next
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
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
        let restart = Arc::new(WalRestart {
            requested: AtomicI64::new(0),
            frames: opts.wal_restart_frames.clamp(64, 1 << 20) as i64,
        });
        let page_size = configure_writer(&conn, opts.durability, &restart)
            .map_err(|e| open_err(e.to_string()))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrate::migrate(&conn)?;
        let metrics = Arc::new(MetricsRecorder::default());
        // The intake log: used with the WAL sync thread; opened in any case
        // when one is there, so appends a crash left only in it are replayed
        // into the journal (`intake_log.rs`).
        let use_log = opts.intake_log && opts.durability == Durability::Pipelined;
        let log = if use_log || intake_log::segment_paths(path)[0].exists() {
            let opened = intake_log::IntakeLog::open(
                path,
                &conn,
                use_log && opts.wal_preallocate,
                intake_log::SEGMENT_BYTES,
                Arc::clone(&metrics),
            )
            .map_err(open_err)?;
            match opened {
                intake_log::Opening::Owned(o) => {
                    if o.replayed > 0 {
                        tracing::warn!(
                            appends = o.replayed,
                            "replayed acknowledged appends from the intake log into the journal"
                        );
                        metrics.record_intake_replayed(o.replayed as u64);
                    }
                    use_log.then_some(o.log)
                }
                intake_log::Opening::HeldElsewhere => {
                    tracing::info!(
                        "another process holds this store's intake log; appends go through the journal alone"
                    );
                    None
                }
                intake_log::Opening::Busy(why) => {
                    tracing::warn!(
                        reason = %why,
                        "intake log not replayed at this open; appends go through the journal alone"
                    );
                    None
                }
            }
        } else {
            None
        };
        let mut state = WriterState::load(&conn)?;
        state.intake = log.as_ref().map(|l| Arc::clone(l.shared()));

        let readers = (0..opts.read_connections.clamp(1, MAX_READ_CONNECTIONS))
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| open_err(format!("read connection: {e}")))?;

        let checkpointer = Checkpointer::start(path, Arc::clone(&restart)).map_err(open_err)?;

        let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        if opts.wal_preallocate && opts.durability != Durability::Unsynced {
            // Before the writer thread starts: nothing writes the WAL now.
            let target = restart.preallocate_bytes(page_size);
            let wal = wal_sync::wal_path(path);
            let started = std::time::Instant::now();
            match fill_wal_under_write_lock(&conn, &wal, target) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    mib = n >> 20,
                    ms = started.elapsed().as_millis() as u64,
                    "WAL file zero-filled ahead of use"
                ),
                // Not fatal: commits then grow the file, as without it.
                Err(e) => tracing::warn!(
                    error = %e,
                    mib = target >> 20,
                    "could not zero-fill the WAL file ahead of use; going on without"
                ),
            }
        }
        // The WAL sync thread tells the intake log which seqs are durably
        // journaled.
        let log_shared = state.intake.clone();
        let (sync, syncer) = match opts.durability {
            Durability::Pipelined => {
                let wal = wal_sync::wal_path(path);
                // The WAL exists now (migrations wrote through it): make its
                // directory entry durable before anything is acknowledged.
                wal_sync::sync_dir(&wal)
                    .map_err(|e| open_err(format!("cannot sync the WAL's directory: {e}")))?;
                // Held by the sync thread for the store's life: no sync
                // needs a new descriptor (see `wal_sync`).
                let wal = wal_sync::WalFile::open(&wal)
                    .map_err(|e| open_err(format!("cannot open the WAL for syncing: {e}")))?;
                let (sync_tx, sync_rx) =
                    std::sync::mpsc::sync_channel(wal_sync::MAX_PENDING_BATCHES);
                let state = Arc::new(wal_sync::SyncState::default());
                let (shared, wake) = (Arc::clone(&state), tx.downgrade());
                let thread_metrics = Arc::clone(&metrics);
                let handle = std::thread::Builder::new()
                    .name("cwsgw-store-sync".to_string())
                    .spawn(move || {
                        wal_sync::run(wal, sync_rx, shared, wake, &thread_metrics, log_shared)
                    })
                    .map_err(|e| open_err(format!("cannot start WAL sync thread: {e}")))?;
                let sync = wal_sync::WalSync {
                    tx: sync_tx,
                    state: Arc::clone(&state),
                };
                (Some(sync), Some((handle, state)))
            }
            Durability::Inline | Durability::Unsynced => (None, None),
        };
        let (syncer, sync_state) = syncer.unzip();
        let max_batch = opts.max_batch.clamp(1, MAX_BATCH_LIMIT);
        let thread_metrics = Arc::clone(&metrics);
        let writer = std::thread::Builder::new()
            .name("cwsgw-store-writer".to_string())
            .spawn(move || writer::run(conn, state, rx, max_batch, &thread_metrics, sync, &restart))
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;

        Ok(SqliteStore {
            tx: Some(tx),
            writer: Some(writer),
            syncer,
            sync_state,
            checkpointer: Some(checkpointer),
            readers: Arc::new(ReadPool::new(readers)),
            metrics,
            log,
            path: path.to_path_buf(),
            audit_keys: opts.audit_keys,
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

    /// A short read — a key lookup, or a page of at most [`INLINE_MAX_ROWS`]
    /// rows from an index — runs on the calling thread when a connection is
    /// idle, and through [`SqliteStore::read`] when none is (it never waits
    /// for a connection on the caller's thread).
    ///
    /// Why: such a read takes tens of microseconds against pages the OS
    /// already caches, less than the two thread hand-offs of
    /// `spawn_blocking` (wake a blocking-pool thread, wake the task again).
    /// Measured with `bench api --patients 200 --requests 4000 --runs 3` on
    /// a quiet 2-core machine, two interleaved pairs of one binary with every
    /// read inline or none: FHIR search 4,714 / 4,888 → 5,995 / 6,149
    /// requests/s, read 5,408 / 5,741 → 7,143 / 7,083, p99 unchanged or
    /// lower (docs/performance.md, 2026-12-03, has the final figures). Scans,
    /// patient-wide loads, audit and outbox listings stay on the blocking
    /// pool, so a Tokio worker is never held for long.
    async fn read_short<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if let Some(conn) = self.readers.try_checkout() {
            return conn.run(f);
        }
        self.read(f).await
    }

    /// A read of at most `limit` rows: [`SqliteStore::read_short`] up to
    /// [`INLINE_MAX_ROWS`], else [`SqliteStore::read`].
    async fn read_rows<T: Send + 'static>(
        &self,
        limit: usize,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if limit <= INLINE_MAX_ROWS {
            self.read_short(f).await
        } else {
            self.read(f).await
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued and exit.
        drop(self.tx.take());
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        // The writer's exit hung up on the sync thread: it answers what it
        // holds and exits.
        if let Some(handle) = self.syncer.take() {
            let _ = handle.join();
        }
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
    }
}

/// How often the checkpointer copies committed WAL frames into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Checkpoints the WAL on its own connection and thread.
///
/// With SQLite's default auto-checkpoint, the commit that takes the WAL past
/// 1,000 pages copies them into the database file and fsyncs it before it
/// returns — on the writer thread, so every append waiting for that commit
/// waits for the checkpoint too. Measured before this (`bench ingest`,
/// 8 connections): the paced ACK p99 was 13–26 ms while the median was
/// ~2 ms, and the writer thread spent ~11 % of its time in fsync. The writer
/// now runs with `wal_autocheckpoint=0` and this thread runs a `PASSIVE`
/// checkpoint every [`CHECKPOINT_INTERVAL`]: it never takes the write lock,
/// so commits go on while it copies; when it has copied every frame and no
/// reader still needs them, the next write transaction starts the WAL from
/// the beginning again.
///
/// **Under sustained writes that moment never comes by itself**: a commit
/// lands between every checkpoint and the next write transaction, so the
/// WAL was never restarted and grew without bound — to 4 GB during one
/// `bench ingest` run (280 MB database). Every write then extended the file
/// (the kernel zeroed each new block: 15 % of the writer thread's CPU) and
/// every fsync also had to commit the file system's allocation metadata. So
/// once the WAL holds [`SqliteOptions::wal_restart_frames`] frames and a
/// checkpoint has copied all of them, this thread runs a few more (copying
/// what was committed meanwhile) and asks the writer to restart the log:
/// before a transaction the writer runs a `PASSIVE` checkpoint itself,
/// copying the rest, and that transaction's `BEGIN` starts the WAL from the
/// beginning, overwriting blocks that are allocated and cached. That
/// checkpoint holds the writer for its copy and the database fsync
/// (measured: 5–20 ms under full load), so while intake is busy the writer
/// takes the request only once the WAL is [`WalRestart::busy_frames`] long.
/// `journal_size_limit` ([`WalRestart::file_limit_bytes`]) trims a WAL that
/// grew longer (e.g. written by an older version).
struct Checkpointer {
    /// Dropping it stops the thread.
    stop: std::sync::mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

/// Default [`SqliteOptions::wal_restart_frames`]: about 64 MiB of 4 KiB
/// pages.
const WAL_RESTART_FRAMES: usize = 16_384;

/// A request from the checkpoint thread to the writer to restart the WAL.
pub(crate) struct WalRestart {
    /// 0, or the WAL's length (frames) when the checkpoint thread had
    /// copied all of it and asked for a restart.
    pub requested: AtomicI64,
    /// `SqliteOptions::wal_restart_frames`.
    pub frames: i64,
}

impl WalRestart {
    /// While intake is busy the writer restarts the WAL only at this length
    /// (the final copy holds it for 5–20 ms).
    pub(crate) fn busy_frames(&self) -> i64 {
        4 * self.frames
    }

    /// The WAL file's length, in bytes, when it holds
    /// [`WalRestart::busy_frames`] frames of `page_size` pages: what
    /// [`SqliteOptions::wal_preallocate`] zero-fills (within
    /// [`WalRestart::file_limit_bytes`], so a restart never trims it).
    fn preallocate_bytes(&self, page_size: i64) -> u64 {
        let frame = page_size.saturating_add(wal_sync::WAL_FRAME_HEADER);
        let bytes = self
            .busy_frames()
            .saturating_mul(frame)
            .saturating_add(wal_sync::WAL_HEADER);
        u64::try_from(bytes.min(self.file_limit_bytes(page_size))).unwrap_or(0)
    }

    /// `journal_size_limit`: one restart length more than
    /// [`WalRestart::busy_frames`], in bytes of `page_size` frames.
    fn file_limit_bytes(&self, page_size: i64) -> i64 {
        (self.busy_frames() + self.frames) * page_size
    }
}

/// A caught-up checkpoint: fewer frames than this were committed while the
/// previous one ran.
const CAUGHT_UP_FRAMES: i64 = 128;

/// One `PASSIVE` checkpoint: (frames in the WAL, frames copied), or `None`
/// if it could not run.
pub(crate) fn checkpoint_passive(conn: &Connection) -> Option<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
    .ok()
}

impl Checkpointer {
    fn start(path: &Path, restart: Arc<WalRestart>) -> Result<Checkpointer, String> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| format!("checkpoint connection: {e}"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| format!("checkpoint connection: {e}"))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("cwsgw-store-checkpoint".to_string())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    // PASSIVE: copy what no reader needs, never wait for locks.
                    // An error (the disk) is the writer's error too and is
                    // reported by its commits; this just tries again later.
                    let Some((mut log, mut copied)) = checkpoint_passive(&conn) else {
                        continue;
                    };
                    if log < restart.frames {
                        continue;
                    }
                    // A long log: catch up with what was committed while
                    // copying, then let the writer finish and restart it.
                    for _ in 0..8 {
                        let Some((now, done)) = checkpoint_passive(&conn) else {
                            break;
                        };
                        let behind = now - log;
                        (log, copied) = (now, done);
                        if behind < CAUGHT_UP_FRAMES {
                            break;
                        }
                    }
                    if copied == log {
                        restart.requested.store(log, Ordering::Relaxed);
                    }
                }
            })
            .map_err(|e| format!("cannot start checkpoint thread: {e}"))?;
        Ok(Checkpointer { stop, handle })
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.handle.join();
    }
}

/// The writer connection's page cache, in KiB (negative for SQLite).
const WRITER_CACHE_KIB: i64 = -32 * 1024;

/// Set the writer connection up; returns the database's page size.
fn configure_writer(
    conn: &Connection,
    durability: Durability,
    restart: &WalRestart,
) -> rusqlite::Result<i64> {
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
        match durability {
            Durability::Inline => "FULL",
            Durability::Pipelined | Durability::Unsynced => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The writer's page cache: SQLite's default (2 MiB) holds little of the
    // search index a completion inserts into, so index and history pages
    // were re-read (`pread`) on most completions. Pages are allocated as
    // used, so a small store stays small.
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
    // Savepoint sub-journals (one per request) stay in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread ([`Checkpointer`]), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    conn.pragma_update(
        None,
        "journal_size_limit",
        restart.file_limit_bytes(page_size),
    )?;
    stable_plans(conn)?;
    Ok(page_size)
}

/// [`wal_sync::preallocate`] while holding SQLite's write lock (an open
/// `BEGIN IMMEDIATE`, rolled back after): no other connection — a second
/// process opened on the same file by mistake, or one still stopping during
/// a restart — can write frames past the end of the log meanwhile, where
/// the zeros go. If another connection holds the lock, the fill is skipped
/// at once (it is only an optimisation).
fn fill_wal_under_write_lock(conn: &Connection, wal: &Path, target: u64) -> std::io::Result<u64> {
    if let Err(e) = begin_immediate_within(conn, Duration::ZERO) {
        return Err(std::io::Error::other(format!(
            "another connection holds the database's write lock ({e})"
        )));
    }
    let filled = wal_sync::preallocate(wal, target);
    let _ = conn.execute_batch("ROLLBACK");
    filled
}

/// `BEGIN IMMEDIATE`, waiting at most `wait` for another connection's write
/// lock; the connection's usual busy timeout is restored either way.
pub(crate) fn begin_immediate_within(conn: &Connection, wait: Duration) -> rusqlite::Result<()> {
    let begun = conn
        .busy_timeout(wait)
        .and_then(|()| conn.execute_batch("BEGIN IMMEDIATE"));
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    begun
}

/// `SQLITE_DBCONFIG_ENABLE_QPSG` (query planner stability guarantee): plans
/// never depend on bound values. Without it SQLite (3.4x+) marks a statement
/// "re-prepare on bind" for a bound `LIMIT ?` (the value is coded into the
/// program) and for `col = ?` terms it weighs, and rusqlite clears the
/// bindings of every statement it returns to the statement cache — so each
/// such cached statement was parsed and planned again at every use (the
/// search: `sqlite3Reprepare` 8 % of the `bench api` profile, perf). Our
/// plans need no bound values: no `LIKE`, no `ANALYZE`/stat4, and the
/// search plans are fixed by their SQL shape (`sql.rs`, checked by
/// `EXPLAIN QUERY PLAN` tests).
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    stable_plans(&conn)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Prepared statements kept per connection (`prepare_cached`): more than
/// the distinct statements the hot paths run, so none is re-parsed. Before
/// the cache, SQL parsing (`sqlite3RunParser`, `yy_reduce`) was ~2.4 % of
/// the `bench api` CPU profile (perf); the throughput change was within
/// that bench's noise on this 2-core machine.
const STATEMENT_CACHE: usize = 128;

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
        Checkout {
            pool: self,
            conn: Some(conn),
        }
        .run(f)
    }

    /// An idle connection, if there is one now (never waits).
    fn try_checkout(&self) -> Option<Checkout<'_>> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        Some(Checkout {
            pool: self,
            conn: Some(conn),
        })
    }
}

/// Returns the connection to the pool even if the read panics.
struct Checkout<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Checkout<'_> {
    /// Run `f` on the checked-out connection, then return it to the pool.
    fn run<T>(self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self.conn.as_ref() {
            Some(c) => f(c),
            None => Err(StoreError::Internal("read connection missing".to_string())),
        }
    }
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
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, rows::resource_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(rows::stored_resource(row?)?);
    }
    Ok(out)
}

/// Validate deliveries and keep their serialized payloads.
fn prepare(items: Vec<NewDelivery>) -> Result<Vec<PreparedDelivery>, StoreError> {
    let payloads = prepare_deliveries(&items)?;
    Ok(items
        .into_iter()
        .zip(payloads)
        .map(|(item, payload)| PreparedDelivery { item, payload })
        .collect())
}

/// The SQL and bound values of a (checked) search.
/// Token params selective enough to drive a search (see `sql::resource_search`).
const DRIVING_PARAMS: [&str; 2] = ["patient", "identifier"];

fn search_sql(q: &ResourceQuery) -> (String, Vec<SqlValue>) {
    let mut values = vec![SqlValue::Text(q.resource_type.clone())];
    let driver = q
        .params
        .iter()
        .position(|(p, v)| v.len() == 1 && DRIVING_PARAMS.contains(&p.as_str()));
    if let Some((param, vals)) = driver.and_then(|i| q.params.get(i)) {
        values.push(SqlValue::Text(param.clone()));
        values.extend(vals.iter().map(|v| SqlValue::Text(v.clone())));
    }
    values.extend(q.ids.iter().map(|id| SqlValue::Text(id.clone())));
    let others: Vec<&(String, Vec<String>)> = q
        .params
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != driver)
        .map(|(_, p)| p)
        .collect();
    for (param, vals) in &others {
        values.push(SqlValue::Text(param.clone()));
        values.extend(vals.iter().map(|v| SqlValue::Text(v.clone())));
    }
    if let Some(p) = &q.patient_id {
        values.push(SqlValue::Text(p.clone()));
    }
    let cmps: Vec<crate::Cmp> = q.last_updated.iter().map(|(c, _)| *c).collect();
    values.extend(
        q.last_updated
            .iter()
            .map(|(_, t)| SqlValue::Integer(to_micros(*t))),
    );
    if let Some((at, id)) = &q.after {
        values.push(SqlValue::Integer(to_micros(*at)));
        values.push(SqlValue::Integer(to_micros(*at)));
        values.push(SqlValue::Text(id.clone()));
    }
    values.push(SqlValue::Integer(q.limit.min(MAX_SEARCH_PAGE) as i64));
    let shape = sql::SearchShape {
        driver: driver.is_some(),
        ids: q.ids.len(),
        values_per_param: others.iter().map(|(_, v)| v.len()).collect(),
        patient: q.patient_id.is_some(),
        cmps: &cmps,
        after: q.after.is_some(),
    };
    (sql::resource_search(&shape), values)
}

/// The query of [`Store::resources_by_patient_types`], or `None` when it
/// cannot match (no types, or no plausible patient id).
fn context_sql(patient_id: &str, types: &[&str]) -> Option<(String, Vec<SqlValue>)> {
    if !crate::patient_types_can_match(patient_id, types) {
        return None;
    }
    let mut values = vec![SqlValue::Text(patient_id.to_string())];
    values.extend(types.iter().map(|t| SqlValue::Text((*t).to_string())));
    Some((sql::resources_by_patient_types(types.len()), values))
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
        // Logged: the journal's answer is already on its way while the log
        // syncs; Ok needs both (`intake_log.rs`).
        match self.append_durable(input).await? {
            Durable::Journaled(outcome) => Ok(outcome),
            Durable::Logged(answer) => answer.await,
        }
    }

    async fn append_durable(&self, input: NewInput) -> Result<Durable, StoreError> {
        let meta = validate_input(&input)?;
        let Some(log) = &self.log else {
            return self
                .write(|reply| WriteOp::Append {
                    input,
                    meta,
                    logged: None,
                    reply,
                })
                .await
                .map(Durable::Journaled);
        };
        // The record is written and handed to the writer under the log's
        // lock (seq order); the writer's transaction runs while the log
        // syncs, and this returns once the sync covered the record.
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        let permit = tx.reserve().await.map_err(|_| StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let body = intake_log::encode_body(&input, &meta);
        let seq = log.write(&body, |seq| {
            self.metrics.enqueued();
            permit.send(WriteOp::Append {
                input,
                meta,
                logged: Some(seq),
                reply,
            });
        })?;
        log.durable(seq).await?;
        Ok(Durable::Logged(Box::pin(async move {
            answer.await.map_err(|_| StoreError::Closed)?
        })))
    }

    async fn journal_get(&self, id: JournalId) -> Result<Option<JournalRecord>, StoreError> {
        self.read_short(move |conn| {
            conn.prepare_cached(&sql::journal_get())?
                .query_row([id], rows::journal_row)
                .optional()?
                .map(rows::journal_record)
                .transpose()
        })
        .await
    }

    async fn journal_key_prefix_exists(
        &self,
        kind: InputKind,
        prefix: &str,
        key_len: usize,
        except: &str,
    ) -> Result<bool, StoreError> {
        let Some((lower, upper)) = crate::key_prefix_range(prefix, key_len) else {
            return Ok(false);
        };
        let except = except.to_string();
        let key_len = key_len as i64;
        self.read_short(move |conn| {
            Ok(conn
                .prepare_cached(sql::JOURNAL_KEY_PREFIX_EXISTS)?
                .query_row(
                    params![kind.as_str(), lower, upper, key_len, except],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
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
            let mut stmt = conn.prepare_cached(&sql::journal_pending())?;
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
            let mut stmt = conn.prepare_cached(sql::JOURNAL_STATS)?;
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

    async fn complete_with(
        &self,
        id: JournalId,
        c: Completion,
    ) -> Result<CompletionResult, StoreError> {
        let writes = prepare_writes(c.writes)?;
        let deliveries = prepare(c.deliveries)?;
        let audits = prepare_audits(c.audits, &self.audit_keys)?;
        check_clocks(&c.clocks)?;
        let completion = PreparedCompletion {
            writes,
            deliveries,
            audits,
            clocks: c.clocks,
        };
        self.write(|reply| WriteOp::Complete {
            id,
            completion,
            reply,
        })
        .await
    }

    async fn put_resources(
        &self,
        writes: Vec<ResourceWrite>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let writes = prepare_writes(writes)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| WriteOp::PutResources { writes, reply })
            .await
    }

    async fn resource_search(&self, q: &ResourceQuery) -> Result<Vec<StoredResource>, StoreError> {
        if let QueryCheck::Empty = check_query(q)? {
            return Ok(Vec::new());
        }
        let (sql, values) = search_sql(q);
        self.read_rows(q.limit, move |conn| {
            query_resources(conn, &sql, rusqlite::params_from_iter(values.iter()))
        })
        .await
    }
    async fn fail(&self, id: JournalId, error: &str) -> Result<bool, StoreError> {
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
        self.read_short(move |conn| writer::current(conn, &t, &i))
            .await
    }

    async fn resource_get_many(
        &self,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let ids = crate::backend::get_many_ids(resource_type, ids)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&ids)
            .map_err(|e| StoreError::Internal(format!("resource ids: {e}")))?;
        let t = resource_type.to_string();
        self.read(move |conn| query_resources(conn, &sql::resource_get_many(), params![t, ids]))
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

    async fn resources_by_patient_types(
        &self,
        patient_id: &str,
        types: &[&str],
    ) -> Result<Vec<StoredResource>, StoreError> {
        crate::check_types(types)?;
        let Some((sql, values)) = context_sql(patient_id, types) else {
            return Ok(Vec::new());
        };
        self.read(move |conn| {
            query_resources(conn, &sql, rusqlite::params_from_iter(values.iter()))
        })
        .await
    }

    async fn resource_search_with_context(
        &self,
        q: &ResourceQuery,
        patient_id: &str,
        context_types: &[&str],
    ) -> Result<WithContext<Vec<StoredResource>>, StoreError> {
        crate::check_types(context_types)?;
        if let QueryCheck::Empty = check_query(q)? {
            return Ok(WithContext::default());
        }
        let (sql, values) = search_sql(q);
        let context = context_sql(patient_id, context_types);
        // One pool checkout, one snapshot.
        self.read_rows(q.limit, move |conn| {
            snapshot(conn, |conn| {
                let found = query_resources(conn, &sql, rusqlite::params_from_iter(values.iter()))?;
                let context = match context {
                    Some((sql, values)) if !found.is_empty() => {
                        query_resources(conn, &sql, rusqlite::params_from_iter(values.iter()))?
                    }
                    _ => Vec::new(),
                };
                Ok(WithContext { found, context })
            })
        })
        .await
    }

    async fn resource_get_with_context(
        &self,
        resource_type: &str,
        id: &str,
        context_types: &[&str],
    ) -> Result<WithContext<Option<StoredResource>>, StoreError> {
        crate::check_types(context_types)?;
        if !plausible_resource_key(resource_type, id) {
            return Ok(WithContext::default());
        }
        let (t, i) = (resource_type.to_string(), id.to_string());
        let types: Vec<String> = context_types.iter().map(|t| (*t).to_string()).collect();
        self.read_short(move |conn| {
            snapshot(conn, |conn| {
                let found = writer::current(conn, &t, &i)?;
                let types: Vec<&str> = types.iter().map(String::as_str).collect();
                let context = match found
                    .as_ref()
                    .and_then(|r| r.patient_id.as_deref())
                    .and_then(|p| context_sql(p, &types))
                {
                    Some((sql, values)) => {
                        query_resources(conn, &sql, rusqlite::params_from_iter(values.iter()))?
                    }
                    None => Vec::new(),
                };
                Ok(WithContext { found, context })
            })
        })
        .await
    }

    async fn resource_count(&self, resource_type: Option<&str>) -> Result<u64, StoreError> {
        let t = resource_type.map(str::to_string);
        self.read(move |conn| {
            let n: i64 = match t {
                Some(t) => conn
                    .prepare_cached(sql::RESOURCE_COUNT_TYPE)?
                    .query_row([t], |r| r.get(0))?,
                None => conn
                    .prepare_cached(sql::RESOURCE_COUNT_ALL)?
                    .query_row([], |r| r.get(0))?,
            };
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn outbox_enqueue(&self, items: Vec<NewDelivery>) -> Result<Vec<OutboxId>, StoreError> {
        let items = prepare(items)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| WriteOp::Enqueue { items, reply }).await
    }

    async fn outbox_claim(
        &self,
        worker: &str,
        endpoint: Option<&str>,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        check_worker(worker)?;
        let limit = limit.min(MAX_OUTBOX_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lease = chrono::Duration::from_std(lease)
            .map_err(|_| StoreError::Invalid("lease is too long".to_string()))?;
        let lease_until = now
            .checked_add_signed(lease)
            .ok_or_else(|| StoreError::Invalid("lease end is out of range".to_string()))?;
        let (worker, endpoint) = (worker.to_string(), endpoint.map(str::to_string));
        self.write(|reply| WriteOp::Claim {
            worker,
            endpoint,
            now,
            lease_until,
            limit,
            reply,
        })
        .await
    }

    async fn outbox_finish(
        &self,
        id: OutboxId,
        worker: &str,
        outcome: DeliveryOutcome,
    ) -> Result<(), StoreError> {
        check_worker(worker)?;
        let worker = worker.to_string();
        self.write(|reply| WriteOp::Finish {
            id,
            worker,
            outcome,
            reply,
        })
        .await
    }

    async fn outbox_get(&self, id: OutboxId) -> Result<Option<Delivery>, StoreError> {
        self.read_short(move |conn| {
            conn.prepare_cached(&sql::outbox_get())?
                .query_row([id], rows::delivery_row)
                .optional()?
                .map(rows::delivery)
                .transpose()
        })
        .await
    }

    async fn outbox_list(
        &self,
        state: Option<DeliveryState>,
        endpoint: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let limit = limit.min(MAX_OUTBOX_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let state = state.map(DeliveryState::as_str);
        let endpoint = endpoint.map(str::to_string);
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached(&sql::outbox_list(state.is_some(), endpoint.is_some()))?;
            let rows = stmt.query_map(params![state, endpoint, limit], rows::delivery_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(rows::delivery(row?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn outbox_retry(&self, id: OutboxId) -> Result<bool, StoreError> {
        self.write(|reply| WriteOp::OutboxRetry { id, reply }).await
    }

    async fn outbox_drop(&self, id: OutboxId) -> Result<bool, StoreError> {
        self.write(|reply| WriteOp::OutboxDrop { id, reply }).await
    }

    async fn outbox_depth(&self) -> Result<Vec<(String, DeliveryState, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(sql::OUTBOX_DEPTH)?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (endpoint, state, n) = row?;
                let state = state
                    .parse()
                    .map_err(|_| StoreError::Corrupt("outbox: bad state".to_string()))?;
                out.push((endpoint, state, u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
        .await
    }

    async fn outbox_next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(|conn| {
            let us: Option<i64> = conn
                .prepare_cached(&sql::outbox_next_due())?
                .query_row([], |r| r.get(0))?;
            us.map(|us| rows::from_micros(us, "outbox next due"))
                .transpose()
        })
        .await
    }

    async fn audit_append(&self, entries: Vec<NewAudit>) -> Result<Vec<AuditRecord>, StoreError> {
        let entries = prepare_audits(entries, &self.audit_keys)?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| WriteOp::AuditAppend { entries, reply })
            .await
    }

    async fn audit_list(
        &self,
        after_seq: i64,
        limit: usize,
        patient_id: Option<&str>,
        recipient: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = limit.min(MAX_AUDIT_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (p, r) = (
            patient_id.map(str::to_string),
            recipient.map(str::to_string),
        );
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql::audit_list(p.is_some(), r.is_some()))?;
            let rows = stmt.query_map(params![after_seq, p, r, limit], rows::audit_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(rows::audit_record(row?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn audit_verify(&self) -> Result<Option<i64>, StoreError> {
        let keys = self.audit_keys.clone();
        self.read(move |conn| {
            snapshot(conn, |conn| {
                let mut verifier = ChainVerifier::new(keys);
                let mut stmt = conn.prepare_cached(&sql::audit_all())?;
                let rows = stmt.query_map([], rows::audit_row)?;
                for row in rows {
                    let row = row?;
                    let record = match rows::audit_record(row) {
                        Ok(r) => r,
                        // An undecodable row is a broken link, not an I/O error.
                        Err(StoreError::Corrupt(_)) => {
                            return Ok(Some(verifier.next_seq()));
                        }
                        Err(e) => return Err(e),
                    };
                    if let Some(bad) = verifier.check(&record)? {
                        return Ok(Some(bad));
                    }
                }
                let (head_seq, head_hash): (i64, String) = conn
                    .prepare_cached(sql::AUDIT_HEAD)?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(verifier.check_head(head_seq, &head_hash))
            })
        })
        .await
    }

    async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(sql::AUDIT_HEAD)?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?)
        })
        .await
    }

    async fn jti_use(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        check_jti(client_id, jti)?;
        let (client_id, jti) = (client_id.to_string(), jti.to_string());
        self.write(|reply| WriteOp::JtiUse {
            client_id,
            jti,
            expires_at,
            now,
            reply,
        })
        .await
    }

    async fn clock_upsert(&self, clocks: Vec<ClockRow>) -> Result<(), StoreError> {
        check_clocks(&clocks)?;
        if clocks.is_empty() {
            return Ok(());
        }
        self.write(|reply| WriteOp::ClockUpsert { clocks, reply })
            .await
    }

    async fn clock_list(
        &self,
        open_only: bool,
        due_before: Option<DateTime<Utc>>,
        subject: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ClockRow>, StoreError> {
        let limit = limit.min(MAX_CLOCK_PAGE) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let due = due_before.map(to_micros);
        let subject = subject.map(str::to_string);
        self.read(move |conn| {
            let sql = sql::clock_list(open_only, due.is_some(), subject.is_some());
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![due, subject, limit], rows::clock_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(rows::clock(row?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn clock_list_subjects(
        &self,
        kind: Option<&str>,
        subjects: &[String],
    ) -> Result<Vec<ClockRow>, StoreError> {
        check_clock_subjects(subjects)?;
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let sql = sql::clock_list_subjects(kind.is_some());
        let subjects = serde_json::to_string(subjects)
            .map_err(|e| StoreError::Internal(format!("clock subjects: {e}")))?;
        let kind = kind.map(str::to_string);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = match &kind {
                Some(kind) => stmt.query_map(params![subjects, kind], rows::clock_row)?,
                None => stmt.query_map(params![subjects], rows::clock_row)?,
            };
            let mut out = Vec::new();
            for row in rows {
                out.push(rows::clock(row?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.tx.as_ref().is_none_or(|tx| tx.is_closed()) {
            return Err(StoreError::Closed);
        }
        // Ready means writable: after a failed WAL fsync every write is
        // refused until restart, so readiness fails too.
        if let Some(why) = self.sync_state.as_ref().and_then(|s| s.failed.get()) {
            return Err(StoreError::Commit(why.clone()));
        }
        if let Some(why) = self.log.as_ref().and_then(|l| l.failed()) {
            return Err(StoreError::Commit(why));
        }
        self.read_short(|conn| {
            conn.prepare_cached(sql::PING)?
                .query_row([], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }

    fn metrics(&self) -> StoreMetrics {
        let mut m = self.metrics.snapshot();
        m.intake_unjournaled = self.log.as_ref().map_or(0, |l| l.shared().unjournaled());
        m
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_reader_store(dir: &Path) -> SqliteStore {
        let opts = SqliteOptions {
            read_connections: 1,
            ..SqliteOptions::default()
        };
        SqliteStore::open(&dir.join("s.db"), opts).unwrap()
    }

    /// Readiness is writability: once a WAL fsync has failed (every write is
    /// refused until restart) `ping` fails with the reason, so `/readyz`
    /// answers 503.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ping_fails_once_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_reader_store(dir.path());
        store.ping().await.unwrap();
        let state = store.sync_state.as_ref().expect("pipelined by default");
        let _ = state.failed.set("WAL fsync failed (test)".to_string());
        match store.ping().await {
            Err(StoreError::Commit(why)) => assert!(why.contains("WAL fsync failed"), "{why}"),
            other => panic!("ping after a failed fsync: {other:?}"),
        }
    }

    /// A short read runs on the caller's thread while a connection is idle.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_read_runs_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = one_reader_store(dir.path());
        let caller = std::thread::current().id();
        let ran_on = store
            .read_short(|_| Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_eq!(ran_on, caller);
        // A long read never does.
        let ran_on = store
            .read(|_| Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_ne!(ran_on, caller);
    }

    /// With every connection checked out, a short read does not block the
    /// caller's thread: it waits on the blocking pool and completes once a
    /// connection is back.
    #[tokio::test(flavor = "current_thread")]
    async fn a_short_read_without_an_idle_connection_waits_off_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(one_reader_store(dir.path()));
        // Take the only connection away; another thread gives it back later.
        let conn = store.readers.idle.lock().unwrap().pop().unwrap();
        assert!(store.readers.try_checkout().is_none());
        let pool = Arc::clone(&store.readers);
        let giver = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            pool.idle.lock().unwrap().push(conn);
            pool.available.notify_one();
        });
        let s2 = Arc::clone(&store);
        let caller = std::thread::current().id();
        let read =
            tokio::spawn(async move { s2.read_short(|_| Ok(std::thread::current().id())).await });
        // On a current-thread runtime the read runs during this sleep; had
        // it waited for the connection on this thread, the sleep would end
        // only after the connection came back.
        let t = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "the caller's thread was blocked for {:?}",
            t.elapsed()
        );
        assert!(!read.is_finished(), "the read waits for the connection");
        let ran_on = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the read completes once the connection is back")
            .unwrap()
            .unwrap();
        assert_ne!(ran_on, caller);
        giver.join().unwrap();
        assert!(
            store.readers.try_checkout().is_some(),
            "returned to the pool"
        );
    }

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Plan with every parameter bound (to 1).
        let nulls = vec![SqlValue::Integer(1); stmt.parameter_count()];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows.join("; ")
    }

    /// Runs the search statement the way the store does (statement cache,
    /// different bound values each time); how often SQLite re-prepared it.
    fn search_reprepares(conn: &Connection) -> i32 {
        let mut reprepares = 0;
        for i in 0..4 {
            let q = ResourceQuery {
                resource_type: "Task".into(),
                params: vec![
                    ("patient".into(), vec![format!("Patient/p{i}")]),
                    ("status".into(), vec!["requested".into()]),
                ],
                limit: 31 + i,
                ..ResourceQuery::default()
            };
            let (sql, values) = search_sql(&q);
            let mut stmt = conn.prepare_cached(&sql).unwrap();
            let n = stmt
                .query_map(rusqlite::params_from_iter(values.iter()), |_| Ok(()))
                .unwrap()
                .count();
            assert_eq!(n, 0);
            reprepares = stmt.get_status(rusqlite::StatementStatus::RePrepare);
        }
        reprepares
    }

    /// With the planner stability guarantee on, a cached statement is
    /// prepared once; without it SQLite re-prepares the search at each use
    /// (bound `LIMIT ?`, and rusqlite clears bindings on return to the cache).
    #[test]
    fn cached_statements_are_not_reprepared() {
        let conn = Connection::open_in_memory().unwrap();
        migrate::migrate(&conn).unwrap();
        assert!(
            search_reprepares(&conn) > 0,
            "control: SQLite's default re-prepares on bind"
        );
        let conn = Connection::open_in_memory().unwrap();
        migrate::migrate(&conn).unwrap();
        stable_plans(&conn).unwrap();
        assert_eq!(search_reprepares(&conn), 0);
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
        let by_types = plan(&conn, &sql::resources_by_patient_types(5));
        assert!(by_types.contains("resources_patient"), "{by_types}");
        let claim = plan(&conn, &sql::outbox_claim());
        assert!(claim.contains("outbox_due"), "{claim}");
        assert!(claim.contains("outbox_key"), "head-of-line check: {claim}");
        assert!(!claim.contains("SCAN o"), "{claim}");
        assert!(!claim.contains("TEMP B-TREE"), "no sort per claim: {claim}");
        let next_due = plan(&conn, &sql::outbox_next_due());
        assert!(next_due.contains("outbox_due"), "{next_due}");
        let shape = sql::SearchShape {
            driver: false,
            ids: 0,
            values_per_param: vec![2],
            patient: false,
            cmps: &[crate::Cmp::Ge],
            after: true,
        };
        let search = plan(&conn, &sql::resource_search(&shape));
        assert!(!search.contains("SCAN r"), "{search}");
        assert!(!search.contains("SCAN x"), "{search}");
        // A patient search starts from that patient's tokens, not from every
        // resource of the type.
        let driven = sql::SearchShape {
            driver: true,
            ids: 0,
            values_per_param: vec![1],
            patient: false,
            cmps: &[crate::Cmp::Ge],
            after: true,
        };
        let search = plan(&conn, &sql::resource_search(&driven));
        assert!(search.starts_with("SEARCH d USING PRIMARY KEY"), "{search}");
        assert!(!search.contains("resources_type_updated_id"), "{search}");
        assert!(!search.contains("SCAN"), "{search}");
        let clocks = plan(&conn, &sql::clock_list(true, true, false));
        assert!(clocks.contains("clocks_state_due"), "{clocks}");
        let by_subject = plan(&conn, &sql::clock_list(false, false, true));
        assert!(by_subject.contains("clocks_subject"), "{by_subject}");
        let get_many = plan(&conn, &sql::resource_get_many());
        assert!(
            get_many.contains("SEARCH resources USING INDEX sqlite_autoindex_resources_1"),
            "{get_many}"
        );
        assert!(!get_many.contains("SCAN resources"), "{get_many}");
        for kind in [false, true] {
            let of_subjects = plan(&conn, &sql::clock_list_subjects(kind));
            assert!(of_subjects.contains("clocks_subject"), "{of_subjects}");
            assert!(!of_subjects.contains("SCAN clocks"), "{of_subjects}");
        }
        let audit = plan(&conn, &sql::audit_list(true, false));
        // The patient filter walks that patient's `audit_patients` rows.
        assert!(
            audit.starts_with("SEARCH ap USING PRIMARY KEY (patient_id=? AND seq>?)"),
            "{audit}"
        );
        assert!(!audit.contains("SCAN"), "{audit}");
        let list = plan(&conn, &sql::outbox_list(true, true));
        assert!(list.contains("outbox_endpoint_state"), "{list}");
    }
}
