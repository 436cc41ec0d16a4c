//! The translation worker: journal records → FHIR resources in the store.
//!
//! Translation is derived from the journal, never from the network: the
//! worker reads pending ADT records from the store in bounded chunks, in
//! journal order, and intake only wakes it (after the journal commit) with a
//! small hint — the raw message is not kept in memory between intake and
//! translation, so a backlog costs nothing but rows in the journal. A crash,
//! a full hint queue or a record that could not be completed (it stays
//! pending) loses nothing: the worker starts with a scan of the whole
//! journal and rescans it whenever it is idle. `Store::complete` is
//! idempotent (a processed record is not completed twice), so a record seen
//! twice is harmless.
//!
//! Order: records are translated in chunks and completed in journal order
//! (the store's single writer applies them in the order sent), so an A01
//! followed by an A03 for the same visit ends as the A03 says.
//!
//! Intake first: while appends are waiting for the journal (counted by
//! [`ProcessorHandle::intake`]), the worker reads small chunks and hands the
//! writer a few completions at a time, so an append never queues behind a
//! long completion transaction; when intake is quiet it works in large
//! chunks. Routing reads run with bounded concurrency.
//!
//! **A burst is journaled first and translated after** ([`Burst`]): while
//! messages arrive faster than [`BURST_RATE`] — a replay after an outage,
//! a batch load, never one feed's steady traffic — the worker defers
//! translation for up to [`MAX_DEFER`] at a time, then translates one chunk.
//! Translation and intake share the CPU and the disk (its completions write
//! ~150 KB of WAL per message and fsync it); deferring it lets senders be
//! acknowledged at the journal's own speed, and the backlog, durable in the
//! journal, is worked off as soon as the burst ends. Below the rate nothing
//! is deferred, so a steady feed's notifications keep their latency.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::join_all;
use futures_util::StreamExt as _;
use store::{JournalId, JournalRecord, ResourceWrite, Store};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::resources::Head;
use crate::telemetry::Metrics;

/// What became of a job, for an enhanced-mode application ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Translated,
    /// Not known in time; the record is durable and will be translated.
    Deferred,
    Failed {
        code: String,
        location: Option<String>,
    },
}

/// A hint for the worker: record `id` was journaled (and, for an
/// enhanced-mode application ACK, where to send its outcome).
pub struct Job {
    id: JournalId,
    reply: Option<oneshot::Sender<JobOutcome>>,
}

impl Job {
    /// A hint for a freshly journaled record; with `want_reply`, the
    /// receiver yields its outcome.
    pub fn new(id: JournalId, want_reply: bool) -> (Job, Option<oneshot::Receiver<JobOutcome>>) {
        let (reply, rx) = if want_reply {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        (Job { id, reply }, rx)
    }
}

/// Hands hints to the worker without ever blocking intake.
#[derive(Clone)]
pub struct ProcessorHandle {
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    appending: Arc<AtomicUsize>,
    /// Appends ever started: the worker's measure of the arrival rate.
    arrivals: Arc<AtomicU64>,
}

/// Counts one append in flight while it lives (see [`ProcessorHandle::intake`]).
pub struct IntakeGuard(Arc<AtomicUsize>);

impl Drop for IntakeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ProcessorHandle {
    /// A full queue drops the hint, not the message: the worker reads the
    /// journal, not the hints (a reply that cannot be queued is `Deferred`).
    pub fn submit(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.metrics
                    .translate_queue_depth
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(job)) => {
                if let Some(reply) = job.reply {
                    let _ = reply.send(JobOutcome::Deferred);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Intake is about to append to the journal: hold the guard until the
    /// append returned. While any is held the worker works in small steps.
    pub fn intake(&self) -> IntakeGuard {
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        self.appending.fetch_add(1, Ordering::Relaxed);
        IntakeGuard(self.appending.clone())
    }
}

/// Translates ADT journal records with the mapping engine.
pub struct Translator {
    pub cfg: Arc<Config>,
    pub engine: Arc<mapping::Engine>,
    /// Routing after translation (outbox rows in the same completion).
    pub router: Option<Arc<crate::routing::Router>>,
    /// Wakes the delivery workers after a completion queued deliveries.
    pub waker: Option<crate::outbox::Waker>,
    sensitivity: mapping::Sensitivity,
    parse_opts: hl7v2::ParseOptions,
    /// Which source's Patient demographics stand when a translated Patient
    /// is merged into the stored one (`mappings/patient-precedence.toml`).
    precedence: Arc<crate::records::precedence::Precedence>,
}

impl Translator {
    pub fn new(cfg: Arc<Config>, engine: Arc<mapping::Engine>) -> Self {
        let sensitivity = cfg.sensitivity();
        let parse_opts = hl7v2::ParseOptions {
            default_charset: cfg.default_charset(),
            max_bytes: cfg.mllp.max_frame_bytes.max(cfg.server.max_body_bytes),
            ..hl7v2::ParseOptions::default()
        };
        // The same file `Ingress::new` loads, and refuses at start-up when
        // it is broken: this load does not fail then, and without the file
        // Patients merge by the generic rules alone.
        let precedence = crate::records::precedence::Precedence::load(cfg.mappings.dir.as_deref())
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "patient precedence rules not loaded");
                crate::records::precedence::Precedence::default()
            });
        Translator {
            cfg,
            engine,
            router: None,
            waker: None,
            sensitivity,
            parse_opts,
            precedence: Arc::new(precedence),
        }
    }

    /// Route translated resources to the outbox (see `routing`).
    pub fn with_routing(
        mut self,
        router: Arc<crate::routing::Router>,
        waker: crate::outbox::Waker,
    ) -> Self {
        self.router = Some(router);
        self.waker = Some(waker);
        self
    }

    /// One ADT message → its FHIR Bundle.
    pub fn translate_adt(
        &self,
        raw: &[u8],
        source_org: &str,
        received_at: &DateTime<Utc>,
    ) -> Result<serde_json::Value, JobOutcome> {
        self.with_adt(raw, source_org, received_at, |engine, msg, ctx| {
            engine.translate_adt(msg, ctx)
        })
    }

    /// Parse `raw` and run `f` with the engine, the message and its mapping
    /// context; a mapping error becomes a failed job.
    fn with_adt<R>(
        &self,
        raw: &[u8],
        source_org: &str,
        received_at: &DateTime<Utc>,
        f: impl FnOnce(
            &mapping::Engine,
            &hl7v2::Message,
            &mapping::AdtContext,
        ) -> Result<R, mapping::TranslateError>,
    ) -> Result<R, JobOutcome> {
        let parsed = hl7v2::parse(raw, &self.parse_opts);
        let Some(msg) = parsed.message else {
            return Err(JobOutcome::Failed {
                code: "unparseable".into(),
                location: None,
            });
        };
        let org_name = self
            .cfg
            .organization(source_org)
            .map(|o| o.name.as_str())
            .unwrap_or(source_org);
        let received = received_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let ctx = mapping::AdtContext {
            canonical_base: &self.cfg.server.canonical_base,
            source_org_id: source_org,
            source_org_name: org_name,
            received_at: &received,
            sensitivity: &self.sensitivity,
        };
        f(&self.engine, &msg, &ctx).map_err(|e| JobOutcome::Failed {
            code: e.code.to_string(),
            location: e.location.clone(),
        })
    }

    /// One ADT message → what the worker needs from its translation: the
    /// resources (for routing, then for `Store::complete_with`) with their
    /// type, id, patient and search tokens.
    ///
    /// The mapping engine writes the Bundle as JSON (its fast path) and says
    /// where each resource is; each resource is parsed once into the
    /// `Value` that routing reads and the store takes, and never copied.
    /// Same resources as parsing the Bundle (`translate_adt`) and taking
    /// its entries.
    pub fn prepare(
        &self,
        raw: &[u8],
        source_org: &str,
        received_at: &DateTime<Utc>,
    ) -> Result<Prepared, JobOutcome> {
        let mut buf = Vec::with_capacity(8 * 1024);
        let spans = self.with_adt(raw, source_org, received_at, |engine, msg, ctx| {
            engine.translate_adt_resources(msg, ctx, &mut buf)
        })?;
        let internal = || JobOutcome::Failed {
            code: "internal".into(),
            location: None,
        };
        // One UTF-8 check of the whole output instead of one per string.
        let text = std::str::from_utf8(&buf).map_err(|_| internal())?;
        let mut written = Vec::with_capacity(spans.len());
        for span in spans {
            let v = text
                .get(span)
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .ok_or_else(internal)?;
            written.push(v);
        }
        let heads = written.iter().map(Head::of).collect();
        let route = crate::routing::RouteInput::from_adt_resources(written, source_org);
        Ok(Prepared { route, heads })
    }
}

/// A translated message, ready for routing and the store.
#[derive(Debug)]
pub struct Prepared {
    /// The routing input; `route.written` holds the Bundle's resources, in
    /// Bundle order.
    pub route: crate::routing::RouteInput,
    /// Per resource of `route.written`.
    heads: Vec<Option<Head>>,
}

impl Prepared {
    /// The ids of the Patients this record writes.
    fn patient_ids(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.heads.len()).filter_map(|i| self.patient_at(i).map(str::to_string))
    }

    /// The id of resource `i` when it is a Patient.
    fn patient_at(&self, i: usize) -> Option<&str> {
        self.heads
            .get(i)?
            .as_ref()
            .filter(|h| h.resource_type == "Patient")
            .map(|h| h.id.as_str())
    }

    /// Replace resource `i`'s body (and its search tokens and patient).
    fn replace(&mut self, i: usize, body: serde_json::Value) {
        if let (Some(head), Some(slot)) = (self.heads.get_mut(i), self.route.written.get_mut(i)) {
            *head = Head::of(&body);
            *slot = body;
        }
    }

    /// The store writes (what [`bundle_writes`] makes of the Bundle),
    /// taking the bodies from the routing input.
    pub fn into_writes(self) -> Vec<ResourceWrite> {
        self.heads
            .into_iter()
            .zip(self.route.written)
            .filter_map(|(h, body)| h.map(|h| h.write(body)))
            .collect()
    }
}

/// The resources of a Bundle as store writes, each with its search tokens.
///
/// Every writer of resources must compute `index` with
/// [`crate::resources::index::tokens`]: the FHIR search API finds resources only
/// through those tokens.
pub fn bundle_writes(bundle: &serde_json::Value) -> Vec<ResourceWrite> {
    let Some(entries) = bundle.get("entry").and_then(|e| e.as_array()) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| e.get("resource"))
        .filter_map(|res| Some(Head::of(res)?.write(res.clone())))
        .collect()
}

/// Records read per chunk when intake is quiet / while appends are waiting.
const CHUNK: usize = 256;
const CHUNK_BUSY: usize = 16;
/// Completions handed to the store's writer at a time while appends are waiting.
///
/// Measured (`bench ingest --runs 1 --messages 10000`, 2 interleaved pairs,
/// quiet machine): 1 instead of 2 raised send-and-wait ingest from
/// 2,754–2,893 to 3,405–4,176 msg/s, ACK p99 from ~11 to 8.2–8.8 ms and
/// pipelined ingest from 11.5–12.5k to 13.8–17.0k msg/s; the paced p99
/// stayed at 16–26 ms either way. Capping the quiet-time group at 16 changed
/// nothing measurable, so it is unbounded.
const COMPLETE_GROUP_BUSY: usize = 1;
/// Routing decisions (store reads) running at once.
const ROUTE_CONCURRENCY: usize = 8;
/// How long the worker waits for a hint before rescanning the journal.
const IDLE_SCAN: Duration = Duration::from_millis(500);
/// Hints queued (small: id and reply channel; the raw message stays in the journal).
const HINT_QUEUE: usize = 16_384;
/// Outcomes remembered for replies whose hint arrives after the record was done.
const RECENT_OUTCOMES: usize = 1024;

/// Start the worker; it stops when every handle is dropped and the journal
/// has no pending ADT record it has not tried.
pub fn spawn(
    translator: Arc<Translator>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
) -> (ProcessorHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(HINT_QUEUE);
    let appending = Arc::new(AtomicUsize::new(0));
    let arrivals = Arc::new(AtomicU64::new(0));
    let handle = ProcessorHandle {
        tx,
        metrics: metrics.clone(),
        appending: appending.clone(),
        arrivals: arrivals.clone(),
    };
    let worker = Worker {
        translator,
        store,
        metrics,
        appending,
        burst: Burst::new(arrivals),
    };
    let task = tokio::spawn(worker.run(rx));
    (handle, task)
}

struct Worker {
    translator: Arc<Translator>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    appending: Arc<AtomicUsize>,
    burst: Burst,
}

/// Arrivals per second from which intake counts as a burst. One hospital's
/// ADT feed is a few messages a second at its peak; the gateway translates
/// ~750–1,000 ADT messages a second on two cores, so above this rate the
/// backlog grows whether or not translation runs alongside.
pub const BURST_RATE: u64 = 1_000;
/// Longest a burst defers translation before one chunk is translated
/// anyway: a never-ending burst slows translation but cannot stop it.
pub const MAX_DEFER: Duration = Duration::from_secs(1);
/// The window the arrival rate is measured over.
const RATE_WINDOW: Duration = Duration::from_millis(100);
/// How often a deferring worker looks at the rate again.
const DEFER_TICK: Duration = Duration::from_millis(5);

/// [`Burst::defer`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defer {
    /// Translate now.
    No,
    /// Wait: a burst began deferring translation.
    Started,
    /// Wait: the burst's deferral goes on.
    Waiting,
}

/// The arrival rate, measured over [`RATE_WINDOW`]s, and how long
/// translation has been deferred for it.
struct Burst {
    arrivals: Arc<AtomicU64>,
    window_start: Instant,
    window_count: u64,
    /// Arrivals per second over the last complete window.
    rate: u64,
    deferring_since: Option<Instant>,
}

impl Burst {
    fn new(arrivals: Arc<AtomicU64>) -> Self {
        Burst {
            window_count: arrivals.load(Ordering::Relaxed),
            arrivals,
            window_start: Instant::now(),
            rate: 0,
            deferring_since: None,
        }
    }

    /// Whether to wait instead of translating now (at `now`). Once a
    /// deferral has lasted [`MAX_DEFER`], the answer is no, until
    /// [`Burst::translated`] starts the next one.
    fn defer(&mut self, now: Instant) -> Defer {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            let count = self.arrivals.load(Ordering::Relaxed);
            let n = count.saturating_sub(self.window_count);
            self.rate = (n as f64 / elapsed.as_secs_f64()) as u64;
            self.window_start = now;
            self.window_count = count;
        }
        if self.rate < BURST_RATE {
            self.deferring_since = None;
            return Defer::No;
        }
        match self.deferring_since {
            None => {
                self.deferring_since = Some(now);
                Defer::Started
            }
            Some(since) if now.saturating_duration_since(since) < MAX_DEFER => Defer::Waiting,
            Some(_) => Defer::No,
        }
    }

    /// A chunk was translated: a burst may defer the next one again.
    fn translated(&mut self) {
        self.deferring_since = None;
    }
}

/// Enhanced-mode senders waiting for a record's outcome.
#[derive(Default)]
struct Waiters {
    waiting: HashMap<JournalId, oneshot::Sender<JobOutcome>>,
    /// The latest outcomes, for a hint that arrives after its record was done.
    recent: VecDeque<(JournalId, JobOutcome)>,
    /// Highest journal id read so far: a hint at or below it was handled
    /// (or skipped) before the hint arrived.
    seen: JournalId,
}

impl Waiters {
    fn add(&mut self, job: Job, store: &Arc<dyn Store>) {
        let Some(reply) = job.reply else { return };
        if job.id > self.seen {
            self.waiting.insert(job.id, reply);
            return;
        }
        if let Some((_, o)) = self.recent.iter().find(|(id, _)| *id == job.id) {
            let _ = reply.send(o.clone());
            return;
        }
        // Done long ago (or left pending): ask the journal.
        let store = store.clone();
        tokio::spawn(async move {
            let outcome = match store.journal_get(job.id).await {
                Ok(Some(r)) => match r.state {
                    store::JournalState::Processed => JobOutcome::Translated,
                    store::JournalState::Failed => JobOutcome::Failed {
                        code: r.error.unwrap_or_default(),
                        location: None,
                    },
                    _ => JobOutcome::Deferred,
                },
                _ => JobOutcome::Deferred,
            };
            let _ = reply.send(outcome);
        });
    }

    fn done(&mut self, id: JournalId, outcome: JobOutcome) {
        if let Some(reply) = self.waiting.remove(&id) {
            let _ = reply.send(outcome.clone());
        }
        if self.recent.len() >= RECENT_OUTCOMES {
            self.recent.pop_front();
        }
        self.recent.push_back((id, outcome));
    }

    /// Waiters whose record was read but not translated (not ADT, or no
    /// longer pending): answer `Deferred`, never leave them hanging.
    fn settle(&mut self) {
        let seen = self.seen;
        self.waiting.retain(|id, _| *id > seen);
    }
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut waiters = Waiters::default();
        // Journal position of this pass; 0 = from the start (catches up on
        // whatever a previous run journaled but did not translate).
        let mut cursor: JournalId = 0;
        let mut open = true;
        loop {
            while let Ok(job) = rx.try_recv() {
                waiters.add(job, &self.store);
            }
            match self.burst.defer(Instant::now()) {
                Defer::No => {}
                _ if !open => {}
                step => {
                    if step == Defer::Started {
                        self.metrics.translation_deferrals.inc(&["intake_burst"]);
                    }
                    tokio::time::sleep(DEFER_TICK).await;
                    continue;
                }
            }
            let busy = self.appending.load(Ordering::Relaxed) > 0;
            let limit = if busy { CHUNK_BUSY } else { CHUNK };
            let records = match self.store.journal_pending(cursor, limit).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the journal; retrying");
                    if !open {
                        break;
                    }
                    tokio::time::sleep(IDLE_SCAN).await;
                    continue;
                }
            };
            let full = records.len() >= limit;
            if let Some(last) = records.last() {
                cursor = last.id;
                waiters.seen = waiters.seen.max(last.id);
            }
            let jobs: Vec<JournalRecord> = records
                .into_iter()
                .filter(|r| r.kind == store::InputKind::Adt)
                .collect();
            if !jobs.is_empty() {
                self.burst.translated();
                let n = jobs.len() as i64;
                for (id, outcome) in self.process(jobs).await {
                    waiters.done(id, outcome);
                }
                let _ = self.metrics.translate_queue_depth.fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |d| Some((d - n).max(0)),
                );
            }
            waiters.settle();
            if full {
                continue;
            }
            // Caught up with the journal.
            if !open {
                break;
            }
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => waiters.add(job, &self.store),
                    None => open = false,
                },
                _ = tokio::time::sleep(IDLE_SCAN) => {
                    // Idle: rescan from the start for records left pending.
                    cursor = 0;
                }
            }
        }
        tracing::debug!("translation worker stopped");
    }

    fn busy(&self) -> bool {
        self.appending.load(Ordering::Relaxed) > 0
    }

    /// Translate, route and complete `batch` (ADT records in journal order);
    /// the outcome of each.
    async fn process(&self, batch: Vec<JournalRecord>) -> Vec<(JournalId, JobOutcome)> {
        let (translator, store, metrics) = (&self.translator, &self.store, &self.metrics);
        let ids: Vec<JournalId> = batch.iter().map(|r| r.id).collect();
        // CPU work off the async workers; the raw bytes are dropped here.
        let t = translator.clone();
        let translated = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|r| {
                    let p = t.prepare(&r.raw, &r.source_org, &r.received_at);
                    (Done::of(r), p)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let translated = match translated {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "translation task failed; records stay pending");
                return ids
                    .into_iter()
                    .map(|id| (id, JobOutcome::Deferred))
                    .collect();
            }
        };
        // Phase 0: every translated Patient merged into the stored one
        // (demographic precedence), in journal order, under the Patients'
        // locks, held until the batch is committed.
        let (_patient_locks, translated) = self.merge_patients(translated).await;
        // Phase 1: routing decisions (store reads, a few at a time; results
        // keep the batch order).
        let routed: Vec<(Done, Result<Ready, JobOutcome>)> =
            futures_util::stream::iter(translated.into_iter().map(|(job, result)| async move {
                let prepared = match result {
                    Ok(prepared) => self.route(&job, prepared).await,
                    Err(outcome) => Err(outcome),
                };
                (job, prepared)
            }))
            .buffered(ROUTE_CONCURRENCY)
            .collect()
            .await;
        // Phase 2: the commits, issued in journal order. Nothing is awaited
        // in a future before its store request is sent, and join_all polls
        // each future for the first time in order, so the store's single
        // writer applies them in journal order (an A01 then an A03 of one
        // visit ends as the A03 says). While appends are waiting, a few at a
        // time: an append then queues behind at most a short transaction.
        let mut outcomes = Vec::with_capacity(routed.len());
        let mut rest = routed.into_iter().peekable();
        while rest.peek().is_some() {
            let group = if self.busy() {
                COMPLETE_GROUP_BUSY
            } else {
                usize::MAX
            };
            let futs = rest.by_ref().take(group).map(|(job, prepared)| {
                let store = store.clone();
                let metrics = metrics.clone();
                let translator = translator.clone();
                async move {
                    // This instance processed the record (another instance
                    // sharing the store may have completed it first).
                    let mut fresh = false;
                    let outcome = match prepared {
                        Ok(ready) => {
                            let queued = !ready.deliveries.is_empty();
                            let completion = store::Completion {
                                writes: ready.writes,
                                deliveries: ready.deliveries,
                                clocks: ready.clocks,
                                ..store::Completion::default()
                            };
                            match store.complete_with(job.id, completion).await {
                                Ok(done) => {
                                    fresh = !done.already_processed;
                                    if queued {
                                        if let Some(w) = &translator.waker {
                                            w.wake();
                                        }
                                    }
                                    metrics.translations.inc(&["ok"]);
                                    JobOutcome::Translated
                                }
                                Err(e) => {
                                    tracing::error!(journal_id = job.id, error = %e, "storing translation failed; record stays pending");
                                    JobOutcome::Deferred
                                }
                            }
                        }
                        Err(JobOutcome::Failed { code, location }) => {
                            tracing::warn!(journal_id = job.id, code = %code, "translation failed");
                            metrics.translations.inc(&["failed"]);
                            match store.fail(job.id, &code).await {
                                Ok(changed) => fresh = changed,
                                Err(e) => tracing::error!(journal_id = job.id, error = %e, "marking failure failed"),
                            }
                            JobOutcome::Failed { code, location }
                        }
                        Err(other) => other,
                    };
                    // A message under a control id its facility used before
                    // for another message: counted once, by the instance
                    // that processed it.
                    if fresh {
                        super::intake::note_reuse(
                            store.as_ref(),
                            &metrics,
                            job.id,
                            &job.source_org,
                            &job.dedup_key,
                        )
                        .await;
                    }
                    (job.id, outcome)
                }
            });
            outcomes.extend(join_all(futs).await);
        }
        outcomes
    }

    /// Merge each translated Patient into the stored one
    /// ([`crate::records::precedence::Precedence::merge_patient`]), record by
    /// record in journal order: a Patient written by an earlier record of
    /// the same batch merges into that record's result, not the stored one.
    /// Returns the locks of every Patient of the batch (hold them until the
    /// batch is committed) and the batch. A record whose stored Patient
    /// cannot be read stays pending (`Deferred`).
    async fn merge_patients(
        &self,
        translated: Vec<(Done, Result<Prepared, JobOutcome>)>,
    ) -> (
        crate::sources::case_event::PatientLocks,
        Vec<(Done, Result<Prepared, JobOutcome>)>,
    ) {
        let ids: Vec<String> = translated
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok())
            .flat_map(|p| p.patient_ids())
            .collect();
        if ids.is_empty() {
            return (Vec::new(), translated);
        }
        let locks = crate::records::patients::lock_patients(ids.iter().map(String::as_str)).await;
        let base = self.translator.cfg.server.canonical_base.as_str();
        // The stored Patients, read a few at a time (under the locks).
        let mut unique = ids;
        unique.sort_unstable();
        unique.dedup();
        let store = &self.store;
        let mut stored: HashMap<String, Result<Option<serde_json::Value>, ()>> =
            futures_util::stream::iter(unique.into_iter().map(|id| async move {
                let r = match store.resource_get("Patient", &id).await {
                    Ok(r) => Ok(r.map(|r| crate::resources::strip_meta(r.body))),
                    Err(e) => {
                        tracing::error!(error = %e, "reading a stored Patient failed; its records stay pending");
                        Err(())
                    }
                };
                (id, r)
            }))
            .buffered(ROUTE_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(translated.len());
        for (job, prepared) in translated {
            let Ok(mut prepared) = prepared else {
                out.push((job, prepared));
                continue;
            };
            // This record's merges, kept for the next records only when all
            // of its Patients could be read.
            let mut mine: Vec<(usize, String, serde_json::Value)> = Vec::new();
            let mut failed = false;
            for i in 0..prepared.route.written.len() {
                let Some(id) = prepared.patient_at(i).map(str::to_string) else {
                    continue;
                };
                // The latest state: the stored Patient, or what an earlier
                // record of this batch (or this one, e.g. an A40) made of it.
                let current = match mine.iter().rev().find(|(_, m, _)| *m == id) {
                    Some((_, _, b)) => Some(b.clone()),
                    None => match stored.get(&id) {
                        Some(Ok(c)) => c.clone(),
                        _ => {
                            failed = true;
                            break;
                        }
                    },
                };
                let body = self.translator.precedence.merge_patient(
                    current.as_ref(),
                    &prepared.route.written[i],
                    base,
                );
                mine.push((i, id, body));
            }
            if !failed {
                for (i, id, body) in mine {
                    stored.insert(id, Ok(Some(body.clone())));
                    prepared.replace(i, body);
                }
            }
            if failed {
                out.push((job, Err(JobOutcome::Deferred)));
            } else {
                out.push((job, Ok(prepared)));
            }
        }
        (locks, out)
    }

    /// The routing decisions and deadline clocks of one translated record.
    async fn route(&self, job: &Done, prepared: Prepared) -> Result<Ready, JobOutcome> {
        let Some(router) = &self.translator.router else {
            return Ok(Ready {
                writes: prepared.into_writes(),
                deliveries: Vec::new(),
                clocks: Vec::new(),
            });
        };
        match router
            .deliveries(
                self.store.as_ref(),
                &prepared.route,
                chrono::Utc::now(),
                None,
            )
            .await
        {
            Ok(deliveries) => {
                let clocks = crate::clocks::adt_clocks(
                    &self.translator.cfg,
                    &deliveries,
                    job.received_at,
                    job.id,
                );
                Ok(Ready {
                    writes: prepared.into_writes(),
                    deliveries,
                    clocks,
                })
            }
            Err(e) => {
                tracing::error!(journal_id = job.id, error = %e, "routing failed; record stays pending");
                Err(JobOutcome::Deferred)
            }
        }
    }
}

/// A record once translated (its raw bytes dropped).
struct Done {
    id: JournalId,
    received_at: DateTime<Utc>,
    /// For the control-id reuse count ([`super::intake::note_reuse`]).
    source_org: String,
    dedup_key: String,
}

impl Done {
    fn of(r: JournalRecord) -> Done {
        Done {
            id: r.id,
            received_at: r.received_at,
            source_org: r.source_org,
            dedup_key: r.dedup_key,
        }
    }
}

/// What one record's completion commits.
struct Ready {
    writes: Vec<ResourceWrite>,
    deliveries: Vec<store::NewDelivery>,
    clocks: Vec<store::ClockRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrive(burst: &mut Burst, n: u64) {
        burst.arrivals.fetch_add(n, Ordering::Relaxed);
    }

    #[test]
    fn a_steady_feed_is_never_deferred() {
        let mut b = Burst::new(Arc::new(AtomicU64::new(0)));
        let t0 = b.window_start;
        // 50 a window of 100 ms: 500 a second, under the burst rate.
        for w in 1..=50u32 {
            arrive(&mut b, 50);
            assert_eq!(b.defer(t0 + RATE_WINDOW * w), Defer::No, "window {w}");
        }
    }

    #[test]
    fn a_burst_defers_for_at_most_max_defer_then_one_chunk_runs() {
        let mut b = Burst::new(Arc::new(AtomicU64::new(0)));
        let t0 = b.window_start;
        // 300 in 100 ms: 3,000 a second.
        arrive(&mut b, 300);
        let t1 = t0 + RATE_WINDOW;
        assert_eq!(b.defer(t1), Defer::Started);
        assert_eq!(
            b.defer(t1 + DEFER_TICK),
            Defer::Waiting,
            "within the window"
        );
        // The burst goes on past MAX_DEFER: translation runs anyway.
        let mut t = t1;
        while t < t1 + MAX_DEFER {
            t += RATE_WINDOW;
            arrive(&mut b, 300);
            let d = b.defer(t);
            if t < t1 + MAX_DEFER {
                assert_eq!(d, Defer::Waiting, "at {:?}", t - t1);
            } else {
                assert_eq!(d, Defer::No, "after MAX_DEFER");
            }
        }
        // A chunk was translated: the next deferral starts afresh.
        b.translated();
        arrive(&mut b, 300);
        assert_eq!(b.defer(t + RATE_WINDOW), Defer::Started);
    }

    #[test]
    fn translation_resumes_once_the_burst_ends() {
        let mut b = Burst::new(Arc::new(AtomicU64::new(0)));
        let t0 = b.window_start;
        arrive(&mut b, 500);
        assert_eq!(b.defer(t0 + RATE_WINDOW), Defer::Started);
        // Nothing arrives in the next window.
        assert_eq!(b.defer(t0 + RATE_WINDOW * 2), Defer::No);
    }
}
