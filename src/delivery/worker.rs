//! The outbox workers: one tokio task per endpoint (every configured
//! organization with an `endpoint`), claiming due items with a lease and
//! attempting them.
//!
//! ## One attempt
//! 1. Read the payload (references, rule, purpose, package).
//! 2. **Re-ask consent now**: `PatientContext::load` + a decision per resource
//!    at attempt time; denied resources are left out; obligations (masks,
//!    Part 2 notice) are applied; nothing left → `Withheld { reason }`. A
//!    referral's status (`task_status`) is decided as a FHIR read by its
//!    recipient: the Task's owner (which plan or provider the member is
//!    with) goes only to a recipient that may see the member
//!    (`bundle::sees_member`).
//! 3. Build the Bundle from the *current* stored versions (transaction of
//!    `PUT Type/id`, or a `message` Bundle for notifications) and POST it.
//! 4. Classify (see `policy`): 2xx → Delivered; transient → Retry with
//!    backoff + full jitter or `Retry-After`; permanent or out of attempts → Dead.
//! 5. Audit: **one AuditEvent per attempt** that disclosed or withheld
//!    anything, listing every resource with its outcome: kind `disclosure`
//!    once the recipient answered 2xx (what was sent, and what was left
//!    out), kind `refusal` when nothing was disclosed (all withheld, or the
//!    send failed while something was left out).
//!
//! ## Invariants
//! - **Order per (endpoint, patient)**: the store's claim returns only the
//!   head of each ordering key, so item 2 of a patient waits for item 1; other
//!   patients are claimed and sent concurrently (up to `concurrency`), so a
//!   stuck patient never blocks others.
//! - **At-least-once**: an item leaves Pending only through an outcome
//!   recorded after the attempt; a crash mid-attempt leaves the lease to
//!   expire and another worker retries (receivers see `PUT`s: harmless).
//! - **Graceful shutdown**: stop claiming, let in-flight attempts finish within
//!   `shutdown_grace_ms`, then `Release` (not counted as an attempt) what was
//!   claimed and not finished.
//! - **No PHI in logs or `last_error`**: ids, endpoint, error classes only.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::Value;
use store::{Delivery, DeliveryOutcome, NewAudit, Store, StoreError};
use tokio::sync::{watch, Notify};

use super::bundle::{self, Prepared};
use super::client::{SendResult, Sender};
use super::policy::{Jitter, RetryPolicy};
use crate::config::Config;
use crate::disclosure::{Disclosure, PatientContext};
use crate::outbox::Payload;
use crate::telemetry::Metrics;

/// How long an idle worker sleeps at most before looking again.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often the queue depth gauge is refreshed.
const DEPTH_EVERY: Duration = Duration::from_secs(2);
/// ADT notifications are due within this long of the event (seed 003 IX).
const ADT_DEADLINE_HOURS: i64 = 24;

/// Shared state of every worker.
pub struct DeliveryService {
    pub cfg: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub sender: Arc<Sender>,
    pub disclosure: Disclosure,
    pub metrics: Arc<Metrics>,
    pub policy: RetryPolicy,
    /// This process's id; the worker id is `{instance}/{endpoint}`.
    pub instance: String,
}

/// What became of one attempt (for tests and the bench).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    Retry(String),
    Dead(String),
    Withheld(String),
}

impl DeliveryService {
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        sender: Arc<Sender>,
        instance: String,
    ) -> DeliveryService {
        let d = &cfg.delivery;
        let policy = RetryPolicy {
            max_attempts: d.max_attempts,
            initial_backoff: Duration::from_millis(d.initial_backoff_ms),
            max_backoff: Duration::from_millis(d.max_backoff_ms),
        };
        DeliveryService {
            disclosure: Disclosure::new(cfg.clone()),
            cfg,
            store,
            sender,
            metrics,
            policy,
            instance,
        }
    }

    fn worker_id(&self, endpoint: &str) -> String {
        format!("{}/{endpoint}", self.instance)
    }

    /// Attempt one claimed item and record its outcome.
    pub async fn attempt(&self, d: &Delivery, worker: &str, jitter: f64) -> AttemptResult {
        let now = Utc::now();
        let (outcome, result) = self.run_attempt(d, now, jitter).await;
        let label = match &outcome {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::Dead { .. } => "dead",
            DeliveryOutcome::Withheld { .. } => "withheld",
            DeliveryOutcome::Release => "released",
        };
        match self.store.outbox_finish(d.id, worker, outcome).await {
            Ok(()) => self.metrics.delivery.outcome(&d.endpoint, label),
            Err(e) => {
                tracing::warn!(delivery = d.id, endpoint = %d.endpoint, error = %e, "recording the delivery outcome failed");
            }
        }
        if label == "dead" {
            tracing::warn!(delivery = d.id, endpoint = %d.endpoint, attempts = d.attempts + 1, "delivery dead-lettered");
        }
        result
    }

    async fn run_attempt(
        &self,
        d: &Delivery,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> (DeliveryOutcome, AttemptResult) {
        let dead = |e: &str| {
            (
                DeliveryOutcome::Dead {
                    error: e.to_string(),
                },
                AttemptResult::Dead(e.to_string()),
            )
        };
        let retry_store = |e: &StoreError| {
            tracing::warn!(delivery = d.id, error = %e, "store read failed during a delivery attempt");
            let delay = self.policy.ceiling(1);
            (
                DeliveryOutcome::Retry {
                    not_before: now + chrono::Duration::from_std(delay).unwrap_or_default(),
                    error: "store".into(),
                },
                AttemptResult::Retry("store".into()),
            )
        };
        let Some(payload) = Payload::parse(&d.payload) else {
            return dead("bad-payload");
        };
        let Some(org) = self.cfg.organization(&d.endpoint) else {
            return dead("unknown-endpoint");
        };
        let Some(base) = org.endpoint.clone() else {
            return dead("no-endpoint-url");
        };
        // Consent is decided now, from what is stored now.
        let pctx =
            match PatientContext::load(&self.cfg, self.store.as_ref(), &payload.patient).await {
                Ok(p) => p,
                Err(e) => return retry_store(&e),
            };
        let mut resources: Vec<(String, Option<Value>)> = Vec::new();
        for (t, id) in bundle::references(&payload) {
            match self.store.resource_get(&t, &id).await {
                Ok(r) => resources.push((format!("{t}/{id}"), r.map(|r| r.body))),
                Err(e) => return retry_store(&e),
            }
        }
        // A referral's status carries the Task's owner only to a recipient
        // that may see the member (decided as a FHIR read decides it).
        let member_seen = if payload.is_status_only() {
            let patient = match self.store.resource_get("Patient", &payload.patient).await {
                Ok(p) => p.map(|p| p.body),
                Err(e) => return retry_store(&e),
            };
            bundle::sees_member(&self.disclosure, &d.endpoint, &pctx, patient.as_ref(), now)
        } else {
            true
        };
        let prepared = bundle::prepare(
            &self.cfg,
            &self.disclosure,
            d.id,
            &d.endpoint,
            &payload,
            &resources,
            &pctx,
            member_seen,
            now,
        );
        let (bundle, disclosed, refused) = match prepared {
            Prepared::Withheld { reason, refused } => {
                self.audit_attempt(d, &payload, &[], &refused, false, now)
                    .await;
                tracing::info!(delivery = d.id, endpoint = %d.endpoint, reason = %reason, "delivery withheld");
                return (
                    DeliveryOutcome::Withheld {
                        reason: reason.clone(),
                    },
                    AttemptResult::Withheld(reason),
                );
            }
            Prepared::Send {
                bundle,
                disclosed,
                refused,
            } => (bundle, disclosed, refused),
        };
        let url = if payload.event.is_some() {
            format!("{}/$process-message", base.trim_end_matches('/'))
        } else {
            base.clone()
        };
        let body = match serde_json::to_vec(&bundle) {
            Ok(b) => b,
            Err(_) => return dead("encode"),
        };
        self.metrics.delivery.attempt(&d.endpoint);
        match self.sender.post(&d.endpoint, &url, body).await {
            SendResult::Delivered { .. } => {
                let done = Utc::now();
                self.audit_attempt(d, &payload, &disclosed, &refused, true, done)
                    .await;
                self.close_adt_clock(d, &payload, done).await;
                self.close_notice_clocks(d, &payload, done).await;
                let latency = (done - d.created_at).to_std().unwrap_or_default();
                self.metrics.delivery.latency.observe(latency.as_secs_f64());
                if let (Some(_), Some(at)) = (&payload.event, payload.event_time) {
                    if done - at > chrono::Duration::hours(ADT_DEADLINE_HOURS) {
                        self.metrics
                            .delivery
                            .late_adt
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                (DeliveryOutcome::Delivered, AttemptResult::Delivered)
            }
            SendResult::Failed(f) => {
                // Nothing disclosed; what consent left out is still a refusal.
                if !refused.is_empty() {
                    self.audit_attempt(d, &payload, &[], &refused, false, now)
                        .await;
                }
                let attempts = d.attempts.saturating_add(1);
                let class = f.class().to_string();
                match self.policy.next_delay(&f, attempts, jitter) {
                    Some(delay) => (
                        DeliveryOutcome::Retry {
                            not_before: Utc::now()
                                + chrono::Duration::from_std(delay).unwrap_or_default(),
                            error: class.clone(),
                        },
                        AttemptResult::Retry(class),
                    ),
                    None => dead(&class),
                }
            }
        }
    }

    /// A delivered ADT notification meets its 24-hour clock (when one was
    /// opened: notifications to an ECM provider).
    async fn close_adt_clock(&self, d: &Delivery, payload: &Payload, at: DateTime<Utc>) {
        if payload.event.is_none() {
            return;
        }
        let Some(journal_id) = d.journal_id else {
            return;
        };
        let Some(subject) = crate::clocks::adt_clock_subject(payload, &d.endpoint, journal_id)
        else {
            return;
        };
        self.meet_clocks(d, &subject, at, |_| true).await;
    }

    /// A delivered notice meets the clock that measures it (the ECM
    /// provider told of its assignment, the social worker told of the
    /// enrollment: [`crate::clocks::met_by_delivery`]), at the delivery time.
    async fn close_notice_clocks(&self, d: &Delivery, payload: &Payload, at: DateTime<Utc>) {
        let ids = crate::clocks::met_by_delivery(&self.cfg, payload, &d.endpoint);
        let Some(task) = payload.resources.iter().find(|r| r.starts_with("Task/")) else {
            return;
        };
        if !ids.is_empty() {
            self.meet_clocks(d, task, at, |c| ids.contains(&c.id)).await;
        }
    }

    /// Close, at `at`, the open clocks of `subject` that `pick` chooses.
    /// A store failure is logged and leaves the clocks open (the delivery
    /// itself stands).
    async fn meet_clocks(
        &self,
        d: &Delivery,
        subject: &str,
        at: DateTime<Utc>,
        pick: impl Fn(&store::ClockRow) -> bool,
    ) {
        let open = match self.store.clock_list(true, None, Some(subject), 100).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(delivery = d.id, error = %e, "reading the clocks a delivery meets failed");
                return;
            }
        };
        let closed: Vec<_> = open
            .iter()
            .filter(|c| pick(c))
            .filter_map(|c| crate::clocks::close(c, at))
            .collect();
        if !closed.is_empty() {
            if let Err(e) = self.store.clock_upsert(closed).await {
                tracing::warn!(delivery = d.id, error = %e, "closing the clocks a delivery meets failed");
            }
        }
    }

    /// Append the attempt's one AuditEvent (see the module docs).
    async fn audit_attempt(
        &self,
        d: &Delivery,
        payload: &Payload,
        disclosed: &[bundle::Decided],
        refused: &[bundle::Decided],
        delivered: bool,
        at: DateTime<Utc>,
    ) {
        let body = bundle::audit_event(
            &self.cfg,
            d.id,
            &d.endpoint,
            payload,
            disclosed,
            refused,
            delivered,
            at,
        );
        let kind = if delivered && !disclosed.is_empty() {
            "disclosure"
        } else {
            "refusal"
        };
        let entry = NewAudit {
            recorded: at,
            kind: kind.to_string(),
            patient_id: Some(payload.patient.clone()),
            recipient: Some(d.endpoint.clone()),
            body,
        };
        if let Err(e) = self.store.audit_append(vec![entry]).await {
            tracing::error!(delivery = d.id, error = %e, "audit append failed");
        }
    }

    /// One endpoint's loop; returns on shutdown after the grace period.
    async fn run_endpoint(
        self: Arc<Self>,
        endpoint: String,
        wake: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let worker = self.worker_id(&endpoint);
        let lease = Duration::from_millis(self.cfg.delivery.lease_ms);
        let limit = self.cfg.delivery.concurrency;
        let grace = Duration::from_millis(self.cfg.delivery.shutdown_grace_ms);
        let mut jitter = Jitter::from_clock(&worker);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let claimed = match self
                .store
                .outbox_claim(&worker, Some(&endpoint), Utc::now(), lease, limit)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(endpoint = %endpoint, error = %e, "outbox claim failed");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                let sleep = match self.store.outbox_next_due().await {
                    Ok(Some(t)) => (t - Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .min(IDLE_POLL),
                    _ => IDLE_POLL,
                }
                .max(Duration::from_millis(5));
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(sleep) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let finished: Arc<Mutex<HashSet<i64>>> = Arc::new(Mutex::new(HashSet::new()));
            let units: Vec<f64> = claimed.iter().map(|_| jitter.unit()).collect();
            let batch = join_all(claimed.iter().zip(units).map(|(d, u)| {
                let finished = finished.clone();
                let worker = worker.clone();
                let me = self.clone();
                async move {
                    me.attempt(d, &worker, u).await;
                    if let Ok(mut f) = finished.lock() {
                        f.insert(d.id);
                    }
                }
            }));
            tokio::pin!(batch);
            let mut stopping = *shutdown.borrow();
            loop {
                tokio::select! {
                    _ = &mut batch => break,
                    _ = shutdown.changed(), if !stopping => { stopping = true; }
                    _ = tokio::time::sleep(grace), if stopping => {
                        // Grace over: give back what did not finish.
                        let done = finished.lock().map(|f| f.clone()).unwrap_or_default();
                        for d in claimed.iter().filter(|d| !done.contains(&d.id)) {
                            if self.store.outbox_finish(d.id, &worker, DeliveryOutcome::Release).await.is_ok() {
                                self.metrics.delivery.outcome(&d.endpoint, "released");
                            }
                        }
                        break;
                    }
                }
            }
        }
        tracing::debug!(endpoint = %endpoint, "delivery worker stopped");
    }
}

/// The running workers.
pub struct Workers {
    pub service: Arc<DeliveryService>,
    wake: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    /// Start one worker per organization with an endpoint, plus the depth sampler.
    pub fn start(service: Arc<DeliveryService>) -> Workers {
        let wake = Arc::new(Notify::new());
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let endpoints: Vec<String> = service
            .cfg
            .organizations
            .iter()
            .filter(|o| o.endpoint.is_some())
            .map(|o| o.id.clone())
            .collect();
        // One Notify per process wakes every worker (notify_waiters).
        for e in endpoints {
            tasks.push(tokio::spawn(service.clone().run_endpoint(
                e,
                wake.clone(),
                rx.clone(),
            )));
        }
        let s = service.clone();
        let mut rx2 = rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Ok(rows) = s.store.outbox_depth().await {
                    s.metrics.delivery.set_depth(
                        rows.into_iter()
                            .map(|(e, st, n)| (e, st.as_str(), n))
                            .collect(),
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(DEPTH_EVERY) => {}
                    _ = rx2.changed() => break,
                }
            }
        }));
        Workers {
            service,
            wake,
            shutdown,
            tasks,
        }
    }

    /// A handle that wakes idle workers (call after enqueueing).
    pub fn waker(&self) -> crate::outbox::Waker {
        crate::outbox::Waker::new(self.wake.clone())
    }

    /// Stop claiming, let in-flight attempts finish within the grace period,
    /// release the rest.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let grace = Duration::from_millis(self.service.cfg.delivery.shutdown_grace_ms);
        for t in self.tasks {
            let _ = tokio::time::timeout(grace + Duration::from_secs(5), t).await;
        }
    }
}
