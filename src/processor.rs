//! The translation worker: journal records → FHIR resources in the store.
//!
//! Translation is derived from the journal, never from the network: intake
//! hands the worker a job *after* the journal commit (a hint that saves a read),
//! and the worker also scans the journal for pending records at start-up and
//! whenever it is idle, so a crash or a full queue loses nothing — the record
//! is simply translated later. `Store::complete` is idempotent (a processed
//! record is not completed twice), so a record seen both ways is harmless.
//!
//! Order: jobs are translated in batches and completed in journal order within
//! a batch (the store's single writer applies them in the order sent), so an A01
//! followed by an A03 for the same visit ends as the A03 says.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::join_all;
use store::{JournalId, JournalRecord, ResourceWrite, Store};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
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

pub struct Job {
    id: JournalId,
    source_org: String,
    received_at: DateTime<Utc>,
    raw: Vec<u8>,
    reply: Option<oneshot::Sender<JobOutcome>>,
}

impl Job {
    /// A job for a freshly journaled record; with `want_reply`, the receiver
    /// yields its outcome.
    pub fn new(
        id: JournalId,
        source_org: String,
        received_at: DateTime<Utc>,
        raw: Vec<u8>,
        want_reply: bool,
    ) -> (Job, Option<oneshot::Receiver<JobOutcome>>) {
        let (reply, rx) = if want_reply {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        (
            Job {
                id,
                source_org,
                received_at,
                raw,
                reply,
            },
            rx,
        )
    }

    fn from_record(r: JournalRecord) -> Job {
        Job {
            id: r.id,
            source_org: r.source_org,
            received_at: r.received_at,
            raw: r.raw,
            reply: None,
        }
    }
}

/// Hands jobs to the worker without ever blocking intake.
#[derive(Clone)]
pub struct ProcessorHandle {
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

impl ProcessorHandle {
    /// A full queue drops the hint, not the message: the journal scan finds it.
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
}

/// Translates ADT journal records with the mapping engine.
pub struct Translator {
    pub cfg: Arc<Config>,
    pub engine: Arc<mapping::Engine>,
    /// Routing after translation (outbox rows in the same completion).
    pub router: Option<Arc<crate::routing::Router>>,
    /// Wakes the delivery workers after a completion queued deliveries.
    pub waker: Option<crate::delivery::Waker>,
    sensitivity: mapping::Sensitivity,
    parse_opts: hl7v2::ParseOptions,
}

impl Translator {
    pub fn new(cfg: Arc<Config>, engine: Arc<mapping::Engine>) -> Self {
        let sensitivity = cfg.sensitivity();
        let parse_opts = hl7v2::ParseOptions {
            default_charset: cfg.default_charset(),
            max_bytes: cfg.mllp.max_frame_bytes.max(cfg.server.max_body_bytes),
            ..hl7v2::ParseOptions::default()
        };
        Translator {
            cfg,
            engine,
            router: None,
            waker: None,
            sensitivity,
            parse_opts,
        }
    }

    /// Route translated resources to the outbox (see `routing`).
    pub fn with_routing(
        mut self,
        router: Arc<crate::routing::Router>,
        waker: crate::delivery::Waker,
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
        let heads = written.iter().map(WriteHead::of).collect();
        let route = crate::routing::RouteInput::from_adt_resources(written, source_org);
        Ok(Prepared { route, heads })
    }
}

/// What a store write needs besides the body.
#[derive(Debug)]
struct WriteHead {
    resource_type: String,
    id: String,
    patient_id: Option<String>,
    index: Vec<store::SearchToken>,
}

impl WriteHead {
    /// `None` for a resource without `resourceType` or `id` (not written).
    fn of(res: &serde_json::Value) -> Option<WriteHead> {
        let (Some(rt), Some(id)) = (
            res.get("resourceType").and_then(|v| v.as_str()),
            res.get("id").and_then(|v| v.as_str()),
        ) else {
            return None;
        };
        Some(WriteHead {
            resource_type: rt.to_string(),
            id: id.to_string(),
            patient_id: mapping::patient_reference(res),
            index: crate::fhir::index::tokens(res),
        })
    }

    fn write(self, body: serde_json::Value) -> ResourceWrite {
        ResourceWrite {
            resource_type: self.resource_type,
            id: self.id,
            patient_id: self.patient_id,
            index: self.index,
            body,
        }
    }
}

/// A translated message, ready for routing and the store.
#[derive(Debug)]
pub struct Prepared {
    /// The routing input; `route.written` holds the Bundle's resources, in
    /// Bundle order.
    pub route: crate::routing::RouteInput,
    /// Per resource of `route.written`.
    heads: Vec<Option<WriteHead>>,
}

impl Prepared {
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

/// The subject of the 24-hour "ADT data to the assigned ECM provider" clock
/// of one notification: its focus (the Encounter), the recipient and the
/// journal record of the ADT message (one clock per message and provider).
pub fn adt_clock_subject(
    payload: &crate::delivery::bundle::Payload,
    recipient: &str,
    journal_id: store::JournalId,
) -> Option<String> {
    let focus = payload.focus.as_ref().or(payload.resources.first())?;
    Some(format!("{focus}@{recipient}#{journal_id}"))
}

/// One open 24-hour clock (DOMAIN.md: ADT data to the assigned ECM provider
/// within 24 hours) per ADT notification queued for an ECM provider; the
/// delivery worker closes it when the notification is delivered.
fn adt_clocks(
    cfg: &Config,
    deliveries: &[store::NewDelivery],
    received: DateTime<Utc>,
    journal_id: store::JournalId,
) -> Vec<store::ClockRow> {
    let calendar = program::Calendar::default_ca();
    deliveries
        .iter()
        .filter(|d| {
            cfg.organization(&d.endpoint)
                .is_some_and(|o| o.kind == crate::config::OrgKind::EcmProvider)
        })
        .filter_map(|d| {
            let p = crate::delivery::bundle::Payload::parse(&d.payload)?;
            p.event.as_ref()?;
            let subject = adt_clock_subject(&p, &d.endpoint, journal_id)?;
            let spec = crate::county::deadlines::ClockSpec {
                clock: program::Clock::AdtToEcmProvider,
                patient_id: p.patient.clone(),
                subject,
                start: p.event_time.unwrap_or(received),
                expedited: false,
            };
            Some(crate::county::deadlines::open(&spec, &calendar))
        })
        .collect()
}

/// The resources of a Bundle as store writes, each with its search tokens.
///
/// Every writer of resources must compute `index` with
/// [`crate::fhir::index::tokens`]: the FHIR search API finds resources only
/// through those tokens.
pub fn bundle_writes(bundle: &serde_json::Value) -> Vec<ResourceWrite> {
    let Some(entries) = bundle.get("entry").and_then(|e| e.as_array()) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| e.get("resource"))
        .filter_map(|res| Some(WriteHead::of(res)?.write(res.clone())))
        .collect()
}

const BATCH: usize = 256;
const IDLE_SCAN: Duration = Duration::from_millis(500);

/// Start the worker; it stops when every handle is dropped and the queue is empty.
pub fn spawn(
    translator: Arc<Translator>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
) -> (ProcessorHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16_384);
    let handle = ProcessorHandle {
        tx,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(run(translator, store, metrics, rx));
    (handle, task)
}

async fn run(
    translator: Arc<Translator>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Job>,
) {
    // Catch up on whatever a previous run journaled but did not translate.
    scan_backlog(&translator, &store, &metrics).await;
    loop {
        let first = tokio::select! {
            job = rx.recv() => job,
            _ = tokio::time::sleep(IDLE_SCAN) => {
                scan_backlog(&translator, &store, &metrics).await;
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        metrics
            .translate_queue_depth
            .fetch_sub(batch.len() as i64, Ordering::Relaxed);
        batch.sort_by_key(|j| j.id);
        process_batch(&translator, &store, &metrics, batch).await;
    }
    tracing::debug!("translation worker stopped");
}

/// Translate every pending journal record (ADT), oldest first.
pub async fn scan_backlog(
    translator: &Arc<Translator>,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
) {
    let mut seen: HashSet<JournalId> = HashSet::new();
    loop {
        let records = match store.journal_pending(0, BATCH).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal backlog");
                return;
            }
        };
        let jobs: Vec<Job> = records
            .into_iter()
            .filter(|r| r.kind == store::InputKind::Adt && seen.insert(r.id))
            .map(Job::from_record)
            .collect();
        if jobs.is_empty() {
            return;
        }
        tracing::info!(records = jobs.len(), "translating journal backlog");
        process_batch(translator, store, metrics, jobs).await;
    }
}

async fn process_batch(
    translator: &Arc<Translator>,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    batch: Vec<Job>,
) {
    // CPU work off the async workers.
    let t = translator.clone();
    let translated = tokio::task::spawn_blocking(move || {
        batch
            .into_iter()
            .map(|job| {
                let r = t.prepare(&job.raw, &job.source_org, &job.received_at);
                (job, r)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let translated = match translated {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "translation task failed; records stay pending");
            return;
        }
    };
    // Phase 1: routing decisions (store reads, any order; results keep the
    // batch order).
    let routed = join_all(translated.into_iter().map(|(job, result)| {
        let store = store.clone();
        let translator = translator.clone();
        async move {
            let prepared = match result {
                Ok(prepared) => {
                    match &translator.router {
                        Some(router) => {
                            match router
                                .deliveries(store.as_ref(), &prepared.route, chrono::Utc::now(), None)
                                .await
                            {
                                Ok(d) => {
                                    let clocks = adt_clocks(&translator.cfg, &d, job.received_at, job.id);
                                    Ok((prepared.into_writes(), d, clocks))
                                }
                                Err(e) => {
                                    tracing::error!(journal_id = job.id, error = %e, "routing failed; record stays pending");
                                    Err(JobOutcome::Deferred)
                                }
                            }
                        }
                        None => Ok((prepared.into_writes(), Vec::new(), Vec::new())),
                    }
                }
                Err(outcome) => Err(outcome),
            };
            (job, prepared)
        }
    }))
    .await;
    // Phase 2: the commits, issued in journal order. Nothing is awaited in a
    // future before its store request is sent, and join_all polls each future
    // for the first time in order, so the store's single writer applies them
    // in journal order (an A01 then an A03 of one visit ends as the A03 says).
    let futs = routed.into_iter().map(|(job, prepared)| {
        let store = store.clone();
        let metrics = metrics.clone();
        let translator = translator.clone();
        async move {
            let outcome = match prepared {
                Ok((writes, deliveries, clocks)) => {
                    let queued = !deliveries.is_empty();
                    let completion = store::Completion {
                        writes,
                        deliveries,
                        clocks,
                        ..store::Completion::default()
                    };
                    match store.complete_with(job.id, completion).await {
                        Ok(_) => {
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
                    if let Err(e) = store.fail(job.id, &code).await {
                        tracing::error!(journal_id = job.id, error = %e, "marking failure failed");
                    }
                    JobOutcome::Failed { code, location }
                }
                Err(other) => other,
            };
            if let Some(reply) = job.reply {
                let _ = reply.send(outcome);
            }
        }
    });
    join_all(futs).await;
}
