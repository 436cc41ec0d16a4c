//! The single writer thread and its group commit.
//!
//! The thread owns the only read-write connection. It blocks for one
//! request, drains up to `max_batch - 1` more that are already queued
//! (without waiting, and within a byte budget), runs them all in ONE
//! `BEGIN IMMEDIATE` transaction, commits (one WAL fsync with
//! `synchronous=FULL`), records the latency, and only then replies to each
//! request.
//!
//! Invariants:
//! * **No reply says Ok before the commit that contains its change
//!   returned.** If the commit fails, every request of the batch gets
//!   [`StoreError::Commit`].
//! * **One bad request does not poison its batch:** each request runs inside
//!   its own savepoint; on error only that savepoint is rolled back and that
//!   request alone gets the error.
//! * When every sender is gone (the store was dropped), the thread finishes
//!   what is queued and exits, closing the connection.

use std::time::Instant;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, now_micros, to_micros};
use super::sql;
use crate::metrics::MetricsRecorder;
use crate::resource::{content_of, with_version_meta, PreparedWrite};
use crate::{truncate_str, AppendOutcome, JournalId, NewInput, StoreError, StoredResource};
use crate::{JournalState, MAX_ERROR_LEN};

/// Soft cap on the raw bytes of appends drained into one batch.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A request for the writer thread.
pub(crate) enum WriteOp {
    Append {
        input: NewInput,
        /// `input.meta`, already serialized and size-checked.
        meta: String,
        reply: Reply<AppendOutcome>,
    },
    Complete {
        id: JournalId,
        writes: Vec<PreparedWrite>,
        reply: Reply<Vec<StoredResource>>,
    },
    Fail {
        id: JournalId,
        error: String,
        reply: Reply<()>,
    },
    Requeue {
        from: JournalId,
        to: JournalId,
        reply: Reply<u64>,
    },
}

impl WriteOp {
    fn weight(&self) -> usize {
        match self {
            WriteOp::Append { input, .. } => input.raw.len(),
            _ => 0,
        }
    }
}

/// A request's result, held until its batch is committed.
enum Outcome {
    Append(Reply<AppendOutcome>, Result<AppendOutcome, StoreError>),
    Complete(
        Reply<Vec<StoredResource>>,
        Result<Vec<StoredResource>, StoreError>,
    ),
    Unit(Reply<()>, Result<(), StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
}

impl Outcome {
    fn is_err(&self) -> bool {
        match self {
            Outcome::Append(_, r) => r.is_err(),
            Outcome::Complete(_, r) => r.is_err(),
            Outcome::Unit(_, r) => r.is_err(),
            Outcome::Count(_, r) => r.is_err(),
        }
    }

    /// Send the result; when the batch did not commit, an Ok becomes
    /// `Commit(reason)`. A caller that went away is ignored.
    fn deliver(self, commit_failed: Option<&str>) {
        fn fix<T>(r: Result<T, StoreError>, failed: Option<&str>) -> Result<T, StoreError> {
            match (r, failed) {
                (Ok(_), Some(why)) => Err(StoreError::Commit(why.to_string())),
                (r, _) => r,
            }
        }
        match self {
            Outcome::Append(tx, r) => drop(tx.send(fix(r, commit_failed))),
            Outcome::Complete(tx, r) => drop(tx.send(fix(r, commit_failed))),
            Outcome::Unit(tx, r) => drop(tx.send(fix(r, commit_failed))),
            Outcome::Count(tx, r) => drop(tx.send(fix(r, commit_failed))),
        }
    }
}

/// The writer thread body.
pub(crate) fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    metrics: &MetricsRecorder,
) {
    let max_batch = max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch.min(1024));
    while let Some(first) = rx.blocking_recv() {
        metrics.dequeued();
        let mut bytes = first.weight();
        batch.push(first);
        while batch.len() < max_batch && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    metrics.dequeued();
                    bytes = bytes.saturating_add(op.weight());
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        commit_batch(&conn, batch.drain(..), metrics);
    }
    // Channel closed and drained: dropping `conn` closes the database.
}

fn commit_batch(
    conn: &Connection,
    batch: impl ExactSizeIterator<Item = WriteOp>,
    metrics: &MetricsRecorder,
) {
    let started = Instant::now();
    let size = batch.len();
    let mut outcomes = Vec::with_capacity(size);
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let why = format!("begin: {e}");
        for op in batch {
            outcome_without_running(op).deliver(Some(&why));
        }
        return;
    }
    let mut aborted: Option<String> = None;
    for op in batch {
        if aborted.is_some() {
            outcomes.push(outcome_without_running(op));
            continue;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT op") {
            aborted = Some(format!("savepoint: {e}"));
            outcomes.push(outcome_without_running(op));
            continue;
        }
        let outcome = execute(conn, op);
        let end = if outcome.is_err() {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")
        } else {
            conn.execute_batch("RELEASE op")
        };
        if let Err(e) = end {
            aborted = Some(format!("savepoint release: {e}"));
        }
        outcomes.push(outcome);
    }
    let commit = match aborted {
        Some(why) => Err(why),
        None => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
    };
    match commit {
        Ok(()) => {
            let (mut appended, mut duplicates) = (0, 0);
            for o in &outcomes {
                match o {
                    Outcome::Append(_, Ok(AppendOutcome::Inserted(_))) => appended += 1,
                    Outcome::Append(_, Ok(AppendOutcome::Duplicate(_))) => duplicates += 1,
                    _ => {}
                }
            }
            metrics.record_commit(started.elapsed().as_secs_f64(), size, appended, duplicates);
            for o in outcomes {
                o.deliver(None);
            }
        }
        Err(why) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            for o in outcomes {
                o.deliver(Some(&why));
            }
        }
    }
}

/// An outcome for a request that never ran (its batch is failing anyway).
fn outcome_without_running(op: WriteOp) -> Outcome {
    fn never<T>() -> Result<T, StoreError> {
        Err(StoreError::Commit("batch aborted".to_string()))
    }
    match op {
        WriteOp::Append { reply, .. } => Outcome::Append(reply, never()),
        WriteOp::Complete { reply, .. } => Outcome::Complete(reply, never()),
        WriteOp::Fail { reply, .. } => Outcome::Unit(reply, never()),
        WriteOp::Requeue { reply, .. } => Outcome::Count(reply, never()),
    }
}

fn execute(conn: &Connection, op: WriteOp) -> Outcome {
    match op {
        WriteOp::Append { input, meta, reply } => {
            Outcome::Append(reply, append(conn, &input, &meta))
        }
        WriteOp::Complete { id, writes, reply } => {
            Outcome::Complete(reply, complete(conn, id, writes))
        }
        WriteOp::Fail { id, error, reply } => Outcome::Unit(reply, fail(conn, id, &error)),
        WriteOp::Requeue { from, to, reply } => Outcome::Count(reply, requeue(conn, from, to)),
    }
}

fn append(conn: &Connection, input: &NewInput, meta: &str) -> Result<AppendOutcome, StoreError> {
    let kind = input.kind.as_str();
    let inserted: Option<i64> = conn
        .prepare(sql::JOURNAL_INSERT)?
        .query_row(
            params![
                kind,
                input.source_org,
                input.dedup_key,
                to_micros(input.received_at),
                input.raw,
                meta
            ],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = inserted {
        return Ok(AppendOutcome::Inserted(id));
    }
    let existing: i64 = conn.query_row(
        sql::JOURNAL_ID_BY_KEY,
        params![kind, input.dedup_key],
        |r| r.get(0),
    )?;
    Ok(AppendOutcome::Duplicate(existing))
}

fn journal_state(conn: &Connection, id: JournalId) -> Result<JournalState, StoreError> {
    let state: Option<String> = conn
        .query_row(sql::JOURNAL_STATE, [id], |r| r.get(0))
        .optional()?;
    let state = state.ok_or(StoreError::NotFound(id))?;
    state
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("journal {id}: bad state")))
}

fn complete(
    conn: &Connection,
    id: JournalId,
    writes: Vec<PreparedWrite>,
) -> Result<Vec<StoredResource>, StoreError> {
    journal_state(conn, id)?;
    let now = now_micros();
    let mut stored = Vec::with_capacity(writes.len());
    for w in writes {
        stored.push(upsert(conn, w, now)?);
    }
    conn.execute(sql::JOURNAL_MARK_PROCESSED, params![id, to_micros(now)])?;
    Ok(stored)
}

fn upsert(
    conn: &Connection,
    w: PreparedWrite,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<StoredResource, StoreError> {
    let current = conn
        .query_row(
            &sql::resource_get(),
            params![w.resource_type, w.id],
            rows::resource_row,
        )
        .optional()?
        .map(rows::stored_resource)
        .transpose()?;
    let Some(current) = current else {
        let body = with_version_meta(w.content, 1, now);
        let text = body_text(&body)?;
        conn.execute(
            sql::RESOURCE_INSERT,
            params![w.resource_type, w.id, to_micros(now), w.patient_id, text],
        )?;
        return Ok(StoredResource {
            resource_type: w.resource_type,
            id: w.id,
            version_id: 1,
            last_updated: now,
            patient_id: w.patient_id,
            body,
        });
    };
    if current.patient_id == w.patient_id && content_of(current.body.clone()) == w.content {
        return Ok(current);
    }
    let version = current.version_id.checked_add(1).ok_or_else(|| {
        StoreError::Corrupt(format!("{}/{}: version overflow", w.resource_type, w.id))
    })?;
    // Keep history ordered even if the wall clock stepped back.
    let at = now.max(current.last_updated);
    let body = with_version_meta(w.content, version, at);
    let text = body_text(&body)?;
    conn.execute(sql::RESOURCE_TO_HISTORY, params![w.resource_type, w.id])?;
    conn.execute(
        sql::RESOURCE_UPDATE,
        params![
            w.resource_type,
            w.id,
            version,
            to_micros(at),
            w.patient_id,
            text
        ],
    )?;
    Ok(StoredResource {
        resource_type: w.resource_type,
        id: w.id,
        version_id: version,
        last_updated: at,
        patient_id: w.patient_id,
        body,
    })
}

fn body_text(body: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(body)
        .map_err(|_| StoreError::Invalid("resource body is not serializable".to_string()))
}

fn fail(conn: &Connection, id: JournalId, error: &str) -> Result<(), StoreError> {
    let error = truncate_str(error, MAX_ERROR_LEN);
    let n = conn.execute(
        sql::JOURNAL_MARK_FAILED,
        params![id, to_micros(now_micros()), error],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(id));
    }
    Ok(())
}

fn requeue(conn: &Connection, from: JournalId, to: JournalId) -> Result<u64, StoreError> {
    if from > to {
        return Ok(0);
    }
    let n = conn.execute(sql::JOURNAL_REQUEUE, params![from, to])?;
    Ok(n as u64)
}
