//! The single writer thread and its group commit.
//!
//! The thread owns the only read-write connection. It blocks for one
//! request, drains up to `max_batch - 1` more that are already queued
//! (without waiting, and within a byte budget), runs them in ONE
//! `BEGIN IMMEDIATE` transaction, commits (one WAL fsync with
//! `synchronous=FULL`), records the latency, and only then replies to each
//! request.
//!
//! **Appends first, the rest on a time budget.** Journal appends are what a
//! sender waits for before its ACK, so every transaction runs all the
//! appends it drained, then the other requests (completions, outbox, audit
//! …) in arrival order only until [`OTHER_WORK_BUDGET`] has passed (at
//! least one per transaction, so they always progress; while no append has
//! come for a while the budget is longer, [`QUIET_WORK_BUDGET`], so a
//! translation backlog is committed with fewer fsyncs). What is left waits,
//! in order, for the next transaction. An append therefore never queues
//! behind a long run of completions: before this, a translation worker
//! catching up between two paced messages put up to 256 completions in
//! front of the next append, and that transaction's length was the ACK p99.
//! With the WAL sync thread two more rules keep an append's transaction
//! short: a transaction that carries appends runs only one other request,
//! and an append that arrives while a transaction runs other requests joins
//! it at once and the transaction commits (the append waits behind one
//! request, not a budget). Measured (`bench ingest`, six interleaved pairs):
//! the paced ACK median fell from 3.4 to 2.1 ms.
//! Moving appends ahead of other requests drained with them is safe: an
//! append only inserts a new journal row, which no other request of the
//! same batch can have read.
//!
//! Invariants:
//! * **No reply says Ok before the commit that contains its change
//!   returned.** If the commit fails, every request of the batch gets
//!   [`StoreError::Commit`].
//! * **One bad request does not poison its batch:** each request runs inside
//!   its own savepoint; on error only that savepoint is rolled back and that
//!   request alone gets the error.
//! * **Resource stamps are strictly increasing:** the writer keeps the last
//!   `last_updated` it handed out (initialised from the database at open)
//!   and stamps every changing write with `max(now, last + 1µs)`. Batches
//!   commit in stamp order, so a reader's keyset cursor never sees a later
//!   commit sort before it.
//! * When every sender is gone (the store was dropped), the thread finishes
//!   what is queued and exits, closing the connection.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, from_micros, now_micros, to_micros};
use super::sql;
use super::wal_sync::{Committed, WalSync};
use crate::audit::{seal, PreparedAudit};
use crate::metrics::MetricsRecorder;
use crate::resource::{content_of, with_version_meta, PreparedWrite};
use crate::{
    truncate_str, AppendOutcome, AuditRecord, ClockRow, CompletionResult, Delivery,
    DeliveryOutcome, DeliveryState, JournalId, NewDelivery, NewInput, OutboxId, StoreError,
    StoredResource,
};
use crate::{JournalState, MAX_ERROR_LEN};

/// Soft cap on the raw bytes of appends drained into one batch.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A delivery with its payload already serialized and size-checked.
pub(crate) struct PreparedDelivery {
    pub item: NewDelivery,
    pub payload: String,
}

/// A validated [`crate::Completion`].
pub(crate) struct PreparedCompletion {
    pub writes: Vec<PreparedWrite>,
    pub deliveries: Vec<PreparedDelivery>,
    pub audits: Vec<PreparedAudit>,
    pub clocks: Vec<ClockRow>,
}

/// A request for the writer thread.
pub(crate) enum WriteOp {
    Append {
        input: NewInput,
        /// `input.meta`, already serialized and size-checked.
        meta: String,
        /// Its seq in the intake log, when it is logged: then it is durable
        /// already, and is answered as soon as its transaction commits (see
        /// `intake_log`).
        logged: Option<u64>,
        reply: Reply<AppendOutcome>,
    },
    Complete {
        id: JournalId,
        completion: PreparedCompletion,
        reply: Reply<CompletionResult>,
    },
    PutResources {
        writes: Vec<PreparedWrite>,
        reply: Reply<Vec<StoredResource>>,
    },
    Fail {
        id: JournalId,
        error: String,
        reply: Reply<bool>,
    },
    Requeue {
        from: JournalId,
        to: JournalId,
        reply: Reply<u64>,
    },
    Enqueue {
        items: Vec<PreparedDelivery>,
        reply: Reply<Vec<OutboxId>>,
    },
    Claim {
        worker: String,
        endpoint: Option<String>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
        reply: Reply<Vec<Delivery>>,
    },
    Finish {
        id: OutboxId,
        worker: String,
        outcome: DeliveryOutcome,
        reply: Reply<()>,
    },
    OutboxRetry {
        id: OutboxId,
        reply: Reply<bool>,
    },
    OutboxDrop {
        id: OutboxId,
        reply: Reply<bool>,
    },
    AuditAppend {
        entries: Vec<PreparedAudit>,
        reply: Reply<Vec<AuditRecord>>,
    },
    JtiUse {
        client_id: String,
        jti: String,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
        reply: Reply<bool>,
    },
    ClockUpsert {
        clocks: Vec<ClockRow>,
        reply: Reply<()>,
    },
    /// From the WAL sync thread: it has answered everything handed to it
    /// (ends a hold, see [`commit_batch`]). Not a request: never run.
    Wake,
}

impl WriteOp {
    fn weight(&self) -> usize {
        match self {
            WriteOp::Append { input, .. } => input.raw.len(),
            _ => 0,
        }
    }
}

/// State the writer keeps between requests.
pub(crate) struct WriterState {
    /// Last resource stamp handed out (unix µs).
    last_stamp: i64,
    /// The intake log this store owns, if any: a logged append that fails
    /// in the journal freezes its applied mark (see [`freeze_mark`]).
    pub(crate) intake: Option<Arc<super::intake_log::Shared>>,
}

impl WriterState {
    /// Read the highest stamp in use.
    pub(crate) fn load(conn: &Connection) -> Result<Self, StoreError> {
        let last_stamp = conn
            .prepare_cached(sql::RESOURCE_MAX_UPDATED)?
            .query_row([], |r| r.get(0))?;
        Ok(WriterState {
            last_stamp,
            intake: None,
        })
    }

    /// A stamp strictly after every earlier one (and not before now).
    fn stamp(&mut self) -> Result<DateTime<Utc>, StoreError> {
        let now = to_micros(now_micros());
        let next = now.max(self.last_stamp.saturating_add(1));
        let at = from_micros(next, "resource stamp")?;
        self.last_stamp = next;
        Ok(at)
    }
}

/// Sends a held result; the argument is the commit failure, if any.
type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;

/// A request's result, held until its batch is committed (and, with the
/// WAL sync thread, synced).
pub(crate) struct Outcome {
    is_err: bool,
    /// For the metrics: what an append did.
    append: Option<AppendOutcome>,
    /// A logged append's seq: answered at its commit, not after the WAL
    /// sync (the intake log made it durable).
    logged: Option<u64>,
    /// Sends the result; when the batch did not commit, an Ok becomes
    /// `Commit(reason)`. A caller that went away is ignored.
    send: Deliver,
}

impl Outcome {
    fn new<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Outcome {
        Outcome {
            is_err: result.is_err(),
            append: None,
            logged: None,
            send: Box::new(move |failed| {
                let result = match (result, failed) {
                    (Ok(_), Some(why)) => Err(StoreError::Commit(why.to_string())),
                    (r, _) => r,
                };
                let _ = reply.send(result);
            }),
        }
    }

    /// The outcome of [`WriteOp::Wake`], which is never run: nobody waits.
    fn nothing() -> Outcome {
        Outcome {
            is_err: false,
            append: None,
            logged: None,
            send: Box::new(|_| {}),
        }
    }

    pub(crate) fn deliver(self, commit_failed: Option<&str>) {
        (self.send)(commit_failed);
    }
}

/// Time one transaction spends on requests other than appends once it has
/// run at least one of them; the rest waits for the next transaction.
///
/// Measured with `cws-gateway bench ingest` (see docs/performance.md): with
/// no budget, a paced sender's ACK p99 was the length of the longest
/// completion run (16–26 ms); the budget bounds what an append can wait
/// behind to about one budget plus one fsync. Since appends join a running
/// transaction (`commit_batch`), the budget mostly bounds how much
/// completion data the next fsync carries: 0.5 ms instead of 1 ms took the
/// paced ACK p99 from 9.1 / 10.0 / 8.5 to 8.4 / 8.0 / 7.6 ms in three
/// interleaved pairs (0.25 ms: no better; 3 ms: worse), at ~3 % slower
/// translation catch-up.
const OTHER_WORK_BUDGET: Duration = Duration::from_micros(500);

/// The budget while intake is quiet (no append for [`INTAKE_QUIET_AFTER`]):
/// longer transactions, fewer fsyncs, while translation catches up.
const QUIET_WORK_BUDGET: Duration = Duration::from_millis(8);
const INTAKE_QUIET_AFTER: Duration = Duration::from_millis(50);

/// Requests other than appends the writer holds (drained, not yet run)
/// before it stops draining the channel for more of them.
const MAX_CARRIED: usize = 4096;

/// The writer thread body. With `sync`, replies of a committed batch go to
/// the WAL sync thread, which sends them after the fsync
/// ([`super::wal_sync`]); without, SQLite synced inside `COMMIT` (or the
/// store is not durable) and they are sent at once.
pub(crate) fn run(
    conn: Connection,
    mut state: WriterState,
    mut rx: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    metrics: &MetricsRecorder,
    sync: Option<WalSync>,
    restart_wal: &super::WalRestart,
) {
    let max_batch = max_batch.max(1);
    let mut appends = Vec::with_capacity(max_batch.min(1024));
    // Requests other than appends, in arrival order, drained but not yet run.
    let mut others: VecDeque<WriteOp> = VecDeque::new();
    let mut open = true;
    let mut last_append: Option<Instant> = None;
    while open || !others.is_empty() {
        if open && others.is_empty() {
            // Nothing carried over: block for the next request.
            match rx.blocking_recv() {
                Some(WriteOp::Wake) => continue,
                Some(op) => {
                    metrics.dequeued();
                    push(op, &mut appends, &mut others);
                }
                None => open = false,
            }
        }
        let mut bytes: usize = appends.iter().map(WriteOp::weight).sum();
        // Appends are drained even while many other requests are carried:
        // an append must not wait in the channel behind them.
        while open
            && appends.len() < max_batch
            && others.len() < MAX_CARRIED
            && bytes < MAX_BATCH_BYTES
        {
            match rx.try_recv() {
                Ok(WriteOp::Wake) => {}
                Ok(op) => {
                    metrics.dequeued();
                    bytes = bytes.saturating_add(op.weight());
                    push(op, &mut appends, &mut others);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if appends.is_empty() && others.is_empty() {
            continue;
        }
        if !appends.is_empty() {
            last_append = Some(Instant::now());
        }
        let intake_busy = last_append.is_some_and(|t| t.elapsed() < INTAKE_QUIET_AFTER);
        let budget = if !open {
            // Closing: finish what is queued without splitting it up.
            Duration::MAX
        } else if intake_busy {
            OTHER_WORK_BUDGET
        } else {
            QUIET_WORK_BUDGET
        };
        let requested = restart_wal.requested.load(Ordering::Relaxed);
        if requested > 0 && (!intake_busy || requested >= restart_wal.busy_frames()) {
            restart_wal.requested.store(0, Ordering::Relaxed);
            // The checkpoint thread has copied nearly the whole (long) WAL:
            // copy the rest, so that this transaction's BEGIN starts the
            // log from the beginning (see `Checkpointer` in `mod.rs`). It
            // holds this thread for the copy and a database fsync, so while
            // appends keep coming it waits for a longer WAL.
            let _ = super::checkpoint_passive(&conn);
        }
        let mut hold = sync.as_ref().map(|sync| Hold {
            sync,
            rx: &mut rx,
            open: &mut open,
        });
        commit_batch(
            &conn,
            &mut state,
            &mut appends,
            &mut others,
            budget,
            max_batch,
            metrics,
            hold.as_mut(),
        );
    }
    // Channel closed and drained: dropping `sync` lets the sync thread answer
    // what it holds and exit; dropping `conn` closes the database.
}

fn push(op: WriteOp, appends: &mut Vec<WriteOp>, others: &mut VecDeque<WriteOp>) {
    match op {
        WriteOp::Append { .. } => appends.push(op),
        WriteOp::Wake => {}
        _ => others.push_back(op),
    }
}

/// What [`commit_batch`] needs to hold its transaction open while the WAL
/// sync thread is busy.
pub(crate) struct Hold<'a> {
    pub sync: &'a WalSync,
    pub rx: &'a mut mpsc::Receiver<WriteOp>,
    /// Cleared when the channel turns out to be closed.
    pub open: &'a mut bool,
}

/// One transaction: every request of `appends`, then requests of `others`
/// from the front while `budget` lasts (at least one, at most
/// `max_batch` requests in all); the ones not run stay in `others`.
///
/// **Hold while the disk is busy.** With the WAL sync thread (`hold`), if
/// it is still syncing earlier commits, committing now would not make this
/// batch durable any sooner: its fsync could only start after the running
/// one. So a transaction without appends stays open and takes the requests
/// that arrive meanwhile (other requests within the same budget; later ones
/// carried, in order) until the sync thread is idle (it sends
/// [`WriteOp::Wake`]), an append arrives, the batch is full or the channel
/// closes; then it commits. Without the hold, the writer committed every
/// few audit records while one fsync ran, and those extra commits cost CPU
/// (`bench api` search: 1.7 instead of 2.2–2.5 requests per commit, 12–17 %
/// fewer requests/s). Appends are never held: holding them too lost
/// send-and-wait ingest in 4 of 4 interleaved pairs (the disk idles between
/// two fsyncs for a wake-up and a commit; docs/performance.md, stop 11).
#[allow(clippy::too_many_arguments)]
fn commit_batch(
    conn: &Connection,
    state: &mut WriterState,
    appends: &mut Vec<WriteOp>,
    others: &mut VecDeque<WriteOp>,
    budget: Duration,
    max_batch: usize,
    metrics: &MetricsRecorder,
    mut hold: Option<&mut Hold<'_>>,
) {
    let started = Instant::now();
    let sync = hold.as_ref().map(|h| h.sync);
    if let Some(why) = sync.and_then(|s| s.state.failed.get()) {
        // A WAL fsync failed: nothing committed since can be vouched for,
        // so nothing more is written (see `wal_sync`).
        refused_logged(state, appends.iter().filter_map(logged_seq), why);
        for op in appends.drain(..).chain(others.drain(..)) {
            outcome_without_running(op, why).deliver(None);
        }
        return;
    }
    let mut outcomes = Vec::with_capacity(appends.len() + 8);
    // Rows changed before this transaction: one that changes none (an idle
    // outbox claim, a duplicate append) writes nothing to the WAL, so it is
    // neither counted as a commit nor given an fsync of its own.
    let changes_before = conn.total_changes();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let why = format!("begin: {e}");
        refused_logged(state, appends.iter().filter_map(logged_seq), &why);
        // Fail the appends (their senders answer with a NAK and may resend);
        // carried requests wait for the next transaction.
        for op in appends.drain(..) {
            outcome_without_running(op, &why).deliver(None);
        }
        // A failing BEGIN with only carried requests must not spin: fail the
        // oldest so every request still gets an answer.
        if let Some(op) = others.pop_front() {
            outcome_without_running(op, &why).deliver(None);
        }
        return;
    }
    let mut aborted: Option<String> = None;
    let mut run_one = |op: WriteOp, aborted: &mut Option<String>, outcomes: &mut Vec<Outcome>| {
        if aborted.is_some() {
            outcomes.push(outcome_without_running(op, "batch aborted"));
            return;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT op") {
            *aborted = Some(format!("savepoint: {e}"));
            outcomes.push(outcome_without_running(op, "batch aborted"));
            return;
        }
        let outcome = execute(conn, state, op);
        let end = if outcome.is_err {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")
        } else {
            conn.execute_batch("RELEASE op")
        };
        if let Err(e) = end {
            *aborted = Some(format!("savepoint release: {e}"));
        }
        outcomes.push(outcome);
    };
    let has_appends = !appends.is_empty();
    for op in appends.drain(..) {
        run_one(op, &mut aborted, &mut outcomes);
    }
    let others_started = Instant::now();
    let mut ran_others = 0usize;
    // With the WAL sync thread, a transaction that carries appends runs one
    // other request only (progress), so its commit and its fsync stay small;
    // the rest runs in the next transaction, which stays open during that
    // fsync (the hold below) and so costs no extra fsync.
    let budget = if has_appends && hold.is_some() {
        Duration::ZERO
    } else {
        budget
    };
    // An append that arrives while this transaction (without appends) runs
    // other requests joins it at once, and the transaction commits: the
    // append waits behind one request, not the whole budget.
    let mut joined_append = false;
    while outcomes.len() < max_batch || ran_others == 0 {
        if ran_others > 0 && others_started.elapsed() >= budget {
            break;
        }
        let Some(op) = others.pop_front() else { break };
        run_one(op, &mut aborted, &mut outcomes);
        ran_others += 1;
        let Some(h) = hold.as_mut().filter(|h| !has_appends && *h.open) else {
            continue;
        };
        if others.len() >= MAX_CARRIED {
            continue;
        }
        match h.rx.try_recv() {
            Ok(WriteOp::Wake) | Err(mpsc::error::TryRecvError::Empty) => {}
            Ok(op @ WriteOp::Append { .. }) => {
                metrics.dequeued();
                run_one(op, &mut aborted, &mut outcomes);
                joined_append = true;
                break;
            }
            Ok(op) => {
                metrics.dequeued();
                others.push_back(op);
            }
            Err(mpsc::error::TryRecvError::Disconnected) => *h.open = false,
        }
    }
    // Appends are not held: an ACK waits for them, and committing them at
    // once lets their fsync start the moment the running one ends.
    if let Some(h) = hold.as_mut().filter(|_| !has_appends && !joined_append) {
        h.sync.state.holding.store(true, Ordering::SeqCst);
        while aborted.is_none()
            && outcomes.len() < max_batch
            && others.len() < MAX_CARRIED
            && h.sync.state.in_flight.load(Ordering::SeqCst) > 0
        {
            match h.rx.blocking_recv() {
                Some(WriteOp::Wake) => {}
                Some(op @ WriteOp::Append { .. }) => {
                    metrics.dequeued();
                    run_one(op, &mut aborted, &mut outcomes);
                    break;
                }
                Some(op) => {
                    metrics.dequeued();
                    if others.is_empty() && others_started.elapsed() < budget {
                        run_one(op, &mut aborted, &mut outcomes);
                    } else {
                        others.push_back(op);
                    }
                }
                None => {
                    *h.open = false;
                    break;
                }
            }
        }
        h.sync.state.holding.store(false, Ordering::SeqCst);
    }
    let size = outcomes.len();
    // The intake log's mark: every logged append up to here is a journal
    // row once this commits (they arrive in seq order; one that failed was
    // answered with its error, and its sender resends).
    // A transaction that changed nothing (duplicates only) leaves the mark:
    // replaying a duplicate is harmless, and it stays no commit.
    let failed_logged = outcomes
        .iter()
        .filter(|o| o.logged.is_some() && (o.is_err || aborted.is_some()))
        .count();
    freeze_mark(
        state,
        failed_logged,
        aborted.as_deref().unwrap_or("append failed"),
    );
    let applied_seq = outcomes
        .iter()
        .filter_map(|o| o.logged)
        .max()
        .filter(|_| conn.total_changes() != changes_before)
        .filter(|_| !state.intake.as_ref().is_some_and(|l| l.mark_frozen()));
    if let (Some(seq), None) = (applied_seq, aborted.as_ref()) {
        if let Err(e) = conn
            .prepare_cached(sql::INTAKE_LOG_APPLIED)
            .and_then(|mut s| s.execute([seq as i64]))
        {
            aborted = Some(format!("intake log mark: {e}"));
        }
    }
    let commit = match aborted {
        Some(why) => Err(why),
        None => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
    };
    match commit {
        Ok(()) => {
            let wrote = conn.total_changes() != changes_before;
            let (mut appended, mut duplicates) = (0, 0);
            for o in &outcomes {
                match o.append {
                    Some(AppendOutcome::Inserted(_)) => appended += 1,
                    Some(AppendOutcome::Duplicate(_)) => duplicates += 1,
                    None => {}
                }
            }
            // Counted now when answered now (its latency ends at the
            // commit): without the WAL sync thread, or when it answers
            // logged appends (the sync thread then does not count it again).
            let recorded = sync.is_none() || outcomes.iter().any(|o| o.logged.is_some());
            if recorded {
                metrics.record_transaction(
                    wrote,
                    started.elapsed().as_secs_f64(),
                    size,
                    appended,
                    duplicates,
                );
            }
            match sync {
                Some(s) => {
                    // Logged appends are durable in the intake log: answer
                    // them now; the rest waits for the WAL sync.
                    let (early, outcomes): (Vec<Outcome>, Vec<Outcome>) =
                        outcomes.into_iter().partition(|o| o.logged.is_some());
                    let last = early.iter().filter_map(|o| o.logged).max();
                    for o in early {
                        o.deliver(None);
                    }
                    answered(state, last.into_iter());
                    let committed = Committed {
                        started,
                        wrote,
                        recorded,
                        size,
                        appended,
                        duplicates,
                        applied_seq,
                        outcomes,
                    };
                    // Blocks while the sync thread is MAX_PENDING_BATCHES
                    // behind (backpressure). It only hangs up if it died.
                    s.state.in_flight.fetch_add(1, Ordering::SeqCst);
                    if let Err(std::sync::mpsc::SendError(c)) = s.tx.send(committed) {
                        s.state.in_flight.fetch_sub(1, Ordering::SeqCst);
                        for o in c.outcomes {
                            o.deliver(Some("WAL sync thread stopped"));
                        }
                    }
                }
                None => {
                    for o in outcomes {
                        o.deliver(None);
                    }
                }
            }
        }
        Err(why) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            refused_logged(state, outcomes.iter().filter_map(|o| o.logged), &why);
            for o in outcomes {
                o.deliver(Some(&why));
            }
        }
    }
}

/// A logged append may already be acknowledged (`Store::append_durable`)
/// when its journal row fails: it must then stay in the intake log until
/// the next open replays it. So after any logged append fails, the applied
/// mark never moves again in this run (a later batch's mark would pass over
/// it); the log keeps everything from here, and readiness fails until a
/// restart replays it (`IntakeLog::mark_frozen`).
fn freeze_mark(state: &WriterState, failed: usize, why: &str) {
    if failed == 0 {
        return;
    }
    if let Some(log) = &state.intake {
        if log.freeze_mark() {
            tracing::error!(
                appends = failed,
                reason = %why,
                "journaling logged appends failed; they stay in the intake log and are journaled at the next start: restart the gateway"
            );
        }
    }
}

/// Logged appends (their seqs) failed without being journaled: freeze the
/// mark ([`freeze_mark`]) and count them answered.
fn refused_logged(state: &WriterState, seqs: impl Iterator<Item = u64>, why: &str) {
    let seqs: Vec<u64> = seqs.collect();
    freeze_mark(state, seqs.len(), why);
    answered(state, seqs.into_iter());
}

/// The writer is answering the logged appends among `seqs` (for
/// `StoreMetrics::intake_unjournaled`).
fn answered(state: &WriterState, seqs: impl Iterator<Item = u64>) {
    if let (Some(log), Some(max)) = (&state.intake, seqs.max()) {
        log.answered(max);
    }
}

fn logged_seq(op: &WriteOp) -> Option<u64> {
    match op {
        WriteOp::Append { logged, .. } => *logged,
        _ => None,
    }
}

/// An outcome for a request that never ran: `Commit(why)`.
fn outcome_without_running(op: WriteOp, why: &str) -> Outcome {
    fn never<T>(why: &str) -> Result<T, StoreError> {
        Err(StoreError::Commit(why.to_string()))
    }
    match op {
        WriteOp::Append { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::Complete { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::PutResources { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::Fail { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::Requeue { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::Enqueue { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::Claim { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::Finish { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::OutboxRetry { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::OutboxDrop { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::AuditAppend { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::JtiUse { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::ClockUpsert { reply, .. } => Outcome::new(reply, never(why)),
        WriteOp::Wake => Outcome::nothing(),
    }
}

fn execute(conn: &Connection, state: &mut WriterState, op: WriteOp) -> Outcome {
    match op {
        WriteOp::Append {
            input,
            meta,
            logged,
            reply,
        } => {
            let result = append(conn, &input, &meta);
            let done = result.as_ref().ok().copied();
            let mut o = Outcome::new(reply, result);
            o.append = done;
            o.logged = logged;
            o
        }
        WriteOp::Complete {
            id,
            completion,
            reply,
        } => Outcome::new(reply, complete(conn, state, id, completion)),
        WriteOp::PutResources { writes, reply } => {
            Outcome::new(reply, upsert_all(conn, state, writes))
        }
        WriteOp::Fail { id, error, reply } => Outcome::new(reply, fail(conn, id, &error)),
        WriteOp::Requeue { from, to, reply } => Outcome::new(reply, requeue(conn, from, to)),
        WriteOp::Enqueue { items, reply } => Outcome::new(reply, enqueue(conn, items, None)),
        WriteOp::Claim {
            worker,
            endpoint,
            now,
            lease_until,
            limit,
            reply,
        } => Outcome::new(
            reply,
            claim(conn, &worker, endpoint.as_deref(), now, lease_until, limit),
        ),
        WriteOp::Finish {
            id,
            worker,
            outcome,
            reply,
        } => Outcome::new(reply, finish(conn, id, &worker, outcome)),
        WriteOp::OutboxRetry { id, reply } => Outcome::new(
            reply,
            changed(conn.execute(sql::OUTBOX_RETRY, params![id, to_micros(now_micros())])),
        ),
        WriteOp::OutboxDrop { id, reply } => Outcome::new(
            reply,
            changed(conn.execute(sql::OUTBOX_DROP, params![id, to_micros(now_micros())])),
        ),
        WriteOp::AuditAppend { entries, reply } => Outcome::new(reply, audit_append(conn, entries)),
        WriteOp::JtiUse {
            client_id,
            jti,
            expires_at,
            now,
            reply,
        } => Outcome::new(reply, jti_use(conn, &client_id, &jti, expires_at, now)),
        WriteOp::ClockUpsert { clocks, reply } => Outcome::new(reply, clock_upsert(conn, &clocks)),
        WriteOp::Wake => Outcome::nothing(),
    }
}

fn changed(n: rusqlite::Result<usize>) -> Result<bool, StoreError> {
    Ok(n? > 0)
}

pub(crate) fn append(
    conn: &Connection,
    input: &NewInput,
    meta: &str,
) -> Result<AppendOutcome, StoreError> {
    let kind = input.kind.as_str();
    let inserted: Option<i64> = conn
        .prepare_cached(sql::JOURNAL_INSERT)?
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
    let existing: i64 = conn
        .prepare_cached(sql::JOURNAL_ID_BY_KEY)?
        .query_row(params![kind, input.dedup_key], |r| r.get(0))?;
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
    state: &mut WriterState,
    id: JournalId,
    c: PreparedCompletion,
) -> Result<CompletionResult, StoreError> {
    if journal_state(conn, id)? == JournalState::Processed {
        // Idempotent: report what is stored, write nothing.
        let mut resources = Vec::with_capacity(c.writes.len());
        for w in &c.writes {
            resources.extend(current(conn, &w.resource_type, &w.id)?);
        }
        let mut stmt = conn.prepare_cached(sql::OUTBOX_IDS_BY_JOURNAL)?;
        let deliveries = stmt
            .query_map([id], |r| r.get(0))?
            .collect::<Result<Vec<OutboxId>, _>>()?;
        return Ok(CompletionResult {
            resources,
            deliveries,
            already_processed: true,
        });
    }
    let resources = upsert_all(conn, state, c.writes)?;
    let deliveries = enqueue(conn, c.deliveries, Some(id))?;
    audit_append(conn, c.audits)?;
    clock_upsert(conn, &c.clocks)?;
    conn.prepare_cached(sql::JOURNAL_MARK_PROCESSED)?
        .execute(params![id, to_micros(now_micros())])?;
    Ok(CompletionResult {
        resources,
        deliveries,
        already_processed: false,
    })
}

/// The current version of a resource, on any connection (the writer's or a reader's).
pub(crate) fn current(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> Result<Option<StoredResource>, StoreError> {
    conn.prepare_cached(&sql::resource_get())?
        .query_row(params![resource_type, id], rows::resource_row)
        .optional()?
        .map(rows::stored_resource)
        .transpose()
}

fn upsert_all(
    conn: &Connection,
    state: &mut WriterState,
    writes: Vec<PreparedWrite>,
) -> Result<Vec<StoredResource>, StoreError> {
    let mut stored = Vec::with_capacity(writes.len());
    for w in writes {
        stored.push(upsert(conn, state, w)?);
    }
    Ok(stored)
}

fn upsert(
    conn: &Connection,
    state: &mut WriterState,
    w: PreparedWrite,
) -> Result<StoredResource, StoreError> {
    let Some(current) = current(conn, &w.resource_type, &w.id)? else {
        // Index rows are written and removed only with their resource, in
        // the same savepoint: a new resource has none to delete.
        insert_index(conn, &w)?;
        let now = state.stamp()?;
        let body = with_version_meta(w.content, 1, now);
        let text = body_text(&body)?;
        conn.prepare_cached(sql::RESOURCE_INSERT)?.execute(params![
            w.resource_type,
            w.id,
            to_micros(now),
            w.patient_id,
            text
        ])?;
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
        // Unchanged body: the tokens are replaced only if the caller's differ
        // (reading them is cheaper than rewriting two B-trees).
        if !same_index(conn, &w)? {
            replace_index(conn, &w)?;
        }
        return Ok(current);
    }
    replace_index(conn, &w)?;
    let version = current.version_id.checked_add(1).ok_or_else(|| {
        StoreError::Corrupt(format!("{}/{}: version overflow", w.resource_type, w.id))
    })?;
    // The stamp is above every stored one, so history stays ordered even if
    // the wall clock stepped back.
    let at = state.stamp()?.max(current.last_updated);
    let body = with_version_meta(w.content, version, at);
    let text = body_text(&body)?;
    conn.prepare_cached(sql::RESOURCE_TO_HISTORY)?
        .execute(params![w.resource_type, w.id])?;
    conn.prepare_cached(sql::RESOURCE_UPDATE)?.execute(params![
        w.resource_type,
        w.id,
        version,
        to_micros(at),
        w.patient_id,
        text
    ])?;
    Ok(StoredResource {
        resource_type: w.resource_type,
        id: w.id,
        version_id: version,
        last_updated: at,
        patient_id: w.patient_id,
        body,
    })
}

/// The index always holds the tokens of the latest write of the resource.
fn replace_index(conn: &Connection, w: &PreparedWrite) -> Result<(), StoreError> {
    conn.prepare_cached(sql::INDEX_DELETE)?
        .execute(params![w.resource_type, w.id])?;
    insert_index(conn, w)
}

/// Does the index hold exactly `w`'s tokens (as a set) already?
fn same_index(conn: &Connection, w: &PreparedWrite) -> Result<bool, StoreError> {
    let mut want: Vec<(&str, &str)> = w
        .index
        .iter()
        .map(|t| (t.param.as_str(), t.value.as_str()))
        .collect();
    want.sort_unstable();
    want.dedup();
    let mut stmt = conn.prepare_cached(sql::INDEX_OF_RESOURCE)?;
    let mut rows = stmt.query(params![w.resource_type, w.id])?;
    let mut n = 0usize;
    while let Some(r) = rows.next()? {
        let (param, value): (String, String) = (r.get(0)?, r.get(1)?);
        match want.get(n) {
            Some((p, v)) if *p == param && *v == value => n += 1,
            _ => return Ok(false),
        }
    }
    Ok(n == want.len())
}

fn insert_index(conn: &Connection, w: &PreparedWrite) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(sql::INDEX_INSERT)?;
    for t in &w.index {
        stmt.execute(params![w.resource_type, w.id, t.param, t.value])?;
    }
    Ok(())
}

fn enqueue(
    conn: &Connection,
    items: Vec<PreparedDelivery>,
    journal: Option<JournalId>,
) -> Result<Vec<OutboxId>, StoreError> {
    let now = to_micros(now_micros());
    let mut stmt = conn.prepare_cached(sql::OUTBOX_INSERT)?;
    let mut ids = Vec::with_capacity(items.len());
    for PreparedDelivery { item, payload } in items {
        let id: OutboxId = stmt.query_row(
            params![
                item.endpoint,
                item.ordering_key,
                item.kind,
                payload,
                to_micros(item.not_before),
                now,
                item.journal_id.or(journal)
            ],
            |r| r.get(0),
        )?;
        ids.push(id);
    }
    Ok(ids)
}

fn claim(
    conn: &Connection,
    worker: &str,
    endpoint: Option<&str>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let mut stmt = conn.prepare_cached(&sql::outbox_claim())?;
    let rows = stmt.query_map(
        params![
            worker,
            to_micros(lease_until),
            to_micros(now_micros()),
            to_micros(now),
            endpoint,
            limit
        ],
        rows::delivery_row,
    )?;
    let mut out = Vec::new();
    for row in rows {
        out.push(rows::delivery(row?)?);
    }
    out.sort_by_key(|d| d.id);
    Ok(out)
}

fn finish(
    conn: &Connection,
    id: OutboxId,
    worker: &str,
    outcome: DeliveryOutcome,
) -> Result<(), StoreError> {
    let short = |e: &str| truncate_str(e, MAX_ERROR_LEN).to_string();
    // (state, attempts increment, new not_before, set last_error, last_error)
    let (state, inc, not_before, set_error, error) = match outcome {
        DeliveryOutcome::Delivered => (DeliveryState::Delivered, 1, None, 1, None),
        DeliveryOutcome::Retry { not_before, error } => (
            DeliveryState::Pending,
            1,
            Some(to_micros(not_before)),
            1,
            Some(short(&error)),
        ),
        DeliveryOutcome::Dead { error } => (DeliveryState::Dead, 1, None, 1, Some(short(&error))),
        DeliveryOutcome::Withheld { reason } => {
            (DeliveryState::Withheld, 0, None, 1, Some(short(&reason)))
        }
        DeliveryOutcome::Release => (DeliveryState::Pending, 0, None, 0, None),
    };
    let n = conn.prepare_cached(sql::OUTBOX_FINISH)?.execute(params![
        id,
        worker,
        state.as_str(),
        inc,
        not_before,
        set_error,
        error,
        to_micros(now_micros())
    ])?;
    if n == 0 {
        return Err(StoreError::LeaseLost(id));
    }
    Ok(())
}

/// Extend the chain from its head, inside the current transaction.
fn audit_append(
    conn: &Connection,
    entries: Vec<PreparedAudit>,
) -> Result<Vec<AuditRecord>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let (mut seq, mut prev, mut head_version): (i64, String, i32) = conn
        .prepare_cached(sql::AUDIT_HEAD)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let mut stmt = conn.prepare_cached(sql::AUDIT_INSERT)?;
    let mut by_patient = conn.prepare_cached(sql::AUDIT_PATIENT_INSERT)?;
    let mut out = Vec::with_capacity(entries.len());
    for a in entries {
        seq = seq
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("audit: seq overflow".to_string()))?;
        let (version, key_id, hash) = seal(
            a.key.as_deref(),
            head_version,
            &prev,
            seq,
            a.recorded,
            &a.kind,
            a.patient_id.as_deref(),
            a.recipient.as_deref(),
            &a.canonical,
        )?;
        stmt.execute(params![
            seq,
            to_micros(a.recorded),
            a.kind,
            a.patient_id,
            a.recipient,
            a.canonical,
            prev,
            hash,
            version,
            key_id
        ])?;
        for p in &a.patients {
            by_patient.execute(params![p, seq])?;
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
    conn.prepare_cached(sql::AUDIT_HEAD_UPDATE)?
        .execute(params![seq, prev, head_version])?;
    Ok(out)
}

fn jti_use(
    conn: &Connection,
    client_id: &str,
    jti: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let now = to_micros(now);
    conn.prepare_cached(sql::JTI_PURGE)?.execute([now])?;
    let first: Option<i64> = conn
        .query_row(
            sql::JTI_USE,
            params![client_id, jti, to_micros(expires_at), now],
            |r| r.get(0),
        )
        .optional()?;
    Ok(first.is_some())
}

fn clock_upsert(conn: &Connection, clocks: &[ClockRow]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(sql::CLOCK_UPSERT)?;
    for c in clocks {
        stmt.execute(params![
            c.id,
            c.kind,
            c.subject,
            c.patient_id,
            to_micros(c.started_at),
            to_micros(c.due_at),
            c.state,
            c.closed_at.map(to_micros)
        ])?;
    }
    Ok(())
}

fn body_text(body: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(body)
        .map_err(|_| StoreError::Invalid("resource body is not serializable".to_string()))
}

/// Pending → failed; `false` (nothing changed) when the record had already
/// ended, `NotFound` when there is none (see [`crate::Store::fail`]).
fn fail(conn: &Connection, id: JournalId, error: &str) -> Result<bool, StoreError> {
    let error = truncate_str(error, MAX_ERROR_LEN);
    let n = conn
        .prepare_cached(sql::JOURNAL_MARK_FAILED)?
        .execute(params![id, to_micros(now_micros()), error])?;
    if n == 0 {
        // Already processed or failed, or no such record (NotFound).
        journal_state(conn, id)?;
        return Ok(false);
    }
    Ok(true)
}

fn requeue(conn: &Connection, from: JournalId, to: JournalId) -> Result<u64, StoreError> {
    if from > to {
        return Ok(0);
    }
    let n = conn
        .prepare_cached(sql::JOURNAL_REQUEUE)?
        .execute(params![from, to])?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InputKind;

    fn writer_conn() -> (Connection, WriterState) {
        let conn = Connection::open_in_memory().expect("in-memory database");
        super::super::migrate::migrate(&conn).expect("migrations");
        let state = WriterState::load(&conn).expect("writer state");
        (conn, state)
    }

    fn append_op(
        n: usize,
    ) -> (
        WriteOp,
        oneshot::Receiver<Result<AppendOutcome, StoreError>>,
    ) {
        let (reply, rx) = oneshot::channel();
        let input = NewInput {
            kind: InputKind::Adt,
            source_org: "st-mary".into(),
            dedup_key: format!("ST-MARY|{n}"),
            received_at: Utc::now(),
            raw: b"MSH|^~\\&|".to_vec(),
            meta: serde_json::json!({}),
        };
        (
            WriteOp::Append {
                input,
                meta: "{}".into(),
                logged: None,
                reply,
            },
            rx,
        )
    }

    /// A request other than an append that changes a row: it upserts
    /// clock `clock-{n}`. (A request that changes nothing makes a
    /// transaction that is no commit, see `commit_batch`, so it could not
    /// show how many transactions ran.)
    fn clock_op(n: usize) -> (WriteOp, oneshot::Receiver<Result<(), StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let now = Utc::now();
        let clock = ClockRow {
            id: format!("clock-{n}"),
            kind: "authorization-decision".into(),
            subject: format!("Task/{n}"),
            patient_id: None,
            started_at: now,
            due_at: now + chrono::Duration::hours(72),
            state: "open".into(),
            closed_at: None,
        };
        (
            WriteOp::ClockUpsert {
                clocks: vec![clock],
                reply,
            },
            rx,
        )
    }

    fn clocks_stored(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM clocks", [], |r| r.get(0))
            .expect("count clocks")
    }

    /// With the budget spent at once, a transaction runs every append it
    /// holds but only one other request; the others wait, in order, for the
    /// next transactions — and every request is answered once committed.
    #[test]
    fn appends_go_first_and_other_requests_run_on_a_budget() {
        let (conn, mut state) = writer_conn();
        let metrics = MetricsRecorder::default();
        let mut appends = Vec::new();
        let mut others = VecDeque::new();
        let mut others_rx = Vec::new();
        for n in 0..3 {
            let (op, rx) = clock_op(n);
            others.push_back(op);
            others_rx.push(rx);
        }
        let mut append_rx = Vec::new();
        for n in 0..4 {
            let (op, rx) = append_op(n);
            appends.push(op);
            append_rx.push(rx);
        }
        commit_batch(
            &conn,
            &mut state,
            &mut appends,
            &mut others,
            Duration::ZERO,
            512,
            &metrics,
            None,
        );
        assert!(appends.is_empty());
        assert_eq!(others.len(), 2, "one other request ran");
        assert_eq!(clocks_stored(&conn), 1);
        assert_eq!(metrics.snapshot().commits, 1);
        for mut rx in append_rx {
            assert!(matches!(rx.try_recv(), Ok(Ok(AppendOutcome::Inserted(_)))));
        }
        let mut others_rx = others_rx.into_iter();
        let mut first = others_rx.next().expect("first");
        assert!(
            matches!(first.try_recv(), Ok(Ok(()))),
            "the oldest ran first"
        );
        let mut second = others_rx.next().expect("second");
        assert!(second.try_recv().is_err(), "not answered before it ran");
        let mut third = others_rx.next().expect("third");
        // Two more transactions finish the rest, one request each, in order.
        for (left, stored) in [(1, 2), (0, 3)] {
            commit_batch(
                &conn,
                &mut state,
                &mut appends,
                &mut others,
                Duration::ZERO,
                512,
                &metrics,
                None,
            );
            assert_eq!(others.len(), left);
            assert_eq!(clocks_stored(&conn), stored);
            if left == 1 {
                assert!(matches!(second.try_recv(), Ok(Ok(()))));
                assert!(third.try_recv().is_err(), "not answered before it ran");
            }
        }
        assert!(matches!(third.try_recv(), Ok(Ok(()))));
        // Three transactions, each of which changed rows: three commits.
        let m = metrics.snapshot();
        assert_eq!((m.commits, m.appended_inputs, m.largest_batch), (3, 4, 5));
    }

    /// `max_batch` bounds one transaction, but never to zero other requests.
    #[test]
    fn a_full_batch_of_appends_still_runs_one_other_request() {
        let (conn, mut state) = writer_conn();
        let metrics = MetricsRecorder::default();
        let mut appends: Vec<WriteOp> = (0..2).map(|n| append_op(n).0).collect();
        let mut others: VecDeque<WriteOp> = (0..2).map(|n| clock_op(n).0).collect();
        commit_batch(
            &conn,
            &mut state,
            &mut appends,
            &mut others,
            Duration::MAX,
            2,
            &metrics,
            None,
        );
        assert_eq!(others.len(), 1);
        assert_eq!(metrics.snapshot().largest_batch, 3);
    }

    /// One [`commit_batch`] on a fresh database, with a WAL sync thread
    /// whose hand-over the test receives itself (budget 1 s, batches of
    /// 512): the batch it committed, and whether `rx` is still open.
    fn commit_with_sync(
        appends: &mut Vec<WriteOp>,
        others: &mut VecDeque<WriteOp>,
        rx: &mut mpsc::Receiver<WriteOp>,
    ) -> (Committed, bool) {
        let (conn, mut state) = writer_conn();
        let (tx, committed) = std::sync::mpsc::sync_channel(16);
        let sync = WalSync {
            tx,
            state: std::sync::Arc::new(super::super::wal_sync::SyncState::default()),
        };
        let mut open = true;
        commit_batch(
            &conn,
            &mut state,
            appends,
            others,
            Duration::from_secs(1),
            512,
            &MetricsRecorder::default(),
            Some(&mut Hold {
                sync: &sync,
                rx,
                open: &mut open,
            }),
        );
        let batch = committed
            .try_recv()
            .expect("committed and handed to the sync thread, without a hold");
        (batch, open)
    }

    /// With the sync thread, a transaction carrying appends runs one other
    /// request whatever the budget: its commit and fsync stay small.
    #[test]
    fn with_the_sync_thread_appends_commit_with_one_other_request() {
        let (_tx, mut rx) = mpsc::channel(8);
        let mut appends: Vec<WriteOp> = (0..2).map(|n| append_op(n).0).collect();
        let mut others: VecDeque<WriteOp> = (0..3).map(|n| clock_op(n).0).collect();
        let (batch, _) = commit_with_sync(&mut appends, &mut others, &mut rx);
        assert_eq!(others.len(), 2, "one other request ran");
        assert_eq!((batch.size, batch.appended), (3, 2));
        assert!(batch.wrote, "it changed rows: the sync thread fsyncs it");
    }

    /// An append that arrives while a transaction runs other requests joins
    /// it at once and the transaction commits; the requests not yet run stay
    /// carried, in order, with any other request that arrived meanwhile.
    #[test]
    fn an_arriving_append_joins_the_running_transaction_and_commits_it() {
        let (tx, mut rx) = mpsc::channel(8);
        let (late_other, mut late_other_rx) = clock_op(3);
        tx.try_send(late_other).unwrap();
        let (append, mut append_rx) = append_op(7);
        tx.try_send(append).unwrap();
        let mut appends = Vec::new();
        let mut others: VecDeque<WriteOp> = (0..3).map(|n| clock_op(n).0).collect();
        let (batch, open) = commit_with_sync(&mut appends, &mut others, &mut rx);
        // Ran: clock 1 (then carried the late one), clock 2, then the
        // append, which ended the transaction.
        assert_eq!((batch.size, batch.appended), (3, 1));
        assert!(batch.wrote);
        assert_eq!(others.len(), 2, "clock 3 and the late one stay carried");
        assert!(late_other_rx.try_recv().is_err(), "not run yet");
        assert!(
            append_rx.try_recv().is_err(),
            "answered only after the fsync"
        );
        for o in batch.outcomes {
            o.deliver(None);
        }
        assert!(matches!(
            append_rx.try_recv(),
            Ok(Ok(AppendOutcome::Inserted(_)))
        ));
        assert!(open);
    }
}
