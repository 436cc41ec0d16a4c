//! Group commit for journal appends.
//!
//! One task per [`crate::PgStore`] takes an append request, drains up to
//! `max_batch - 1` more that are already queued (within a byte budget),
//! writes them all with ONE multi-row `INSERT … ON CONFLICT DO NOTHING`
//! (one transaction, one WAL flush), and only after the commit replies to
//! each request.
//!
//! Invariants:
//! * **No reply says Ok before the commit that contains its row returned**
//!   (`synchronous_commit` is forced `on` for the session). If the statement
//!   fails, every request of the batch gets the error and nothing of the
//!   batch was written.
//! * **Dedup is the unique constraint**, so it holds across instances: a key
//!   inserted by another instance (committed, or committing concurrently —
//!   `ON CONFLICT` waits for it) is reported as `Duplicate(original id)`.
//!   Within a batch, the first request of a key wins.
//! * Ids are assigned in request order within a batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use store::backend::CommitMetrics;
use store::{AppendOutcome, NewInput, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::error::{pg, pool};

/// Soft cap on the raw bytes of appends drained into one batch.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// One queued append.
pub(crate) struct AppendReq {
    pub input: NewInput,
    /// Serialized, size-checked meta.
    pub meta: String,
    pub reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

const INSERT_BATCH: &str =
    "INSERT INTO journal (kind, source_org, dedup_key, received_at, raw, meta)
    SELECT k, s, d, r, b, m
    FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bytea[], $6::text[])
         WITH ORDINALITY AS t(k, s, d, r, b, m, n)
    ORDER BY n
    ON CONFLICT (kind, dedup_key) DO NOTHING
    RETURNING id, kind, dedup_key";

const EXISTING: &str = "SELECT j.id, j.kind, j.dedup_key FROM journal j
    JOIN unnest($1::text[], $2::text[]) AS t(k, d) ON j.kind = t.k AND j.dedup_key = t.d";

/// The writer task body: runs until every sender is gone and the queue is drained.
/// How often a batch is retried after a deadlock or serialization failure.
const DEADLOCK_RETRIES: u64 = 5;

/// PostgreSQL's "deadlock detected" (40P01) and "serialization failure"
/// (40001): the statement was rolled back and may be tried again.
fn is_retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres(m) if m.ends_with("(40P01)") || m.ends_with("(40001)"))
}

pub(crate) async fn run(
    pool_: Pool,
    shown: String,
    mut rx: mpsc::Receiver<AppendReq>,
    max_batch: usize,
    metrics: Arc<CommitMetrics>,
) {
    let max_batch = max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch.min(1024));
    while let Some(first) = rx.recv().await {
        metrics.dequeued();
        let mut bytes = first.input.raw.len();
        batch.push(first);
        while batch.len() < max_batch && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(req) => {
                    metrics.dequeued();
                    bytes = bytes.saturating_add(req.input.raw.len());
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let size = batch.len();
        // Two instances inserting overlapping keys in different orders can
        // deadlock; PostgreSQL then aborts one statement whole (nothing of it
        // is written), so the batch is simply tried again (bounded).
        let mut result = write_batch(&pool_, &shown, &batch).await;
        for attempt in 1..=DEADLOCK_RETRIES {
            match &result {
                Err(e) if is_retryable(e) => {
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
                    result = write_batch(&pool_, &shown, &batch).await;
                }
                _ => break,
            }
        }
        match result {
            Ok(outcomes) => {
                let appended = outcomes.iter().filter(|o| !o.is_duplicate()).count() as u64;
                metrics.record_commit(
                    started.elapsed().as_secs_f64(),
                    size,
                    appended,
                    size as u64 - appended,
                );
                for (req, out) in batch.drain(..).zip(outcomes) {
                    let _ = req.reply.send(Ok(out));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(StoreError::Commit(why.clone())));
                }
            }
        }
    }
}

async fn write_batch(
    pool_: &Pool,
    shown: &str,
    batch: &[AppendReq],
) -> Result<Vec<AppendOutcome>, StoreError> {
    let client = pool_.get().await.map_err(|e| pool(e, shown))?;
    let n = batch.len();
    let mut kinds = Vec::with_capacity(n);
    let mut orgs = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut received = Vec::with_capacity(n);
    let mut raws = Vec::with_capacity(n);
    let mut metas = Vec::with_capacity(n);
    for r in batch {
        kinds.push(r.input.kind.as_str());
        orgs.push(r.input.source_org.as_str());
        keys.push(r.input.dedup_key.as_str());
        received.push(r.input.received_at);
        raws.push(r.input.raw.as_slice());
        metas.push(r.meta.as_str());
    }
    // One statement in autocommit: one transaction, durable when it returns.
    let st = client.prepare_cached(INSERT_BATCH).await.map_err(pg)?;
    let rows = client
        .query(&st, &[&kinds, &orgs, &keys, &received, &raws, &metas])
        .await
        .map_err(pg)?;
    let mut inserted: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get(0).map_err(pg)?;
        inserted.insert((r.try_get(1).map_err(pg)?, r.try_get(2).map_err(pg)?), id);
    }
    let mut existing: HashMap<(String, String), i64> = HashMap::new();
    if inserted.len() < n {
        let st = client.prepare_cached(EXISTING).await.map_err(pg)?;
        for r in client.query(&st, &[&kinds, &keys]).await.map_err(pg)? {
            let id: i64 = r.try_get(0).map_err(pg)?;
            existing.insert((r.try_get(1).map_err(pg)?, r.try_get(2).map_err(pg)?), id);
        }
    }
    let mut out = Vec::with_capacity(n);
    for r in batch {
        let key = (r.input.kind.as_str().to_string(), r.input.dedup_key.clone());
        // The first request of a key inserted it; later ones are duplicates.
        if let Some(id) = inserted.remove(&key) {
            existing.insert(key, id);
            out.push(AppendOutcome::Inserted(id));
        } else if let Some(id) = existing.get(&key) {
            out.push(AppendOutcome::Duplicate(*id));
        } else {
            return Err(StoreError::Corrupt(
                "journal: a conflicting key has no row".to_string(),
            ));
        }
    }
    Ok(out)
}
