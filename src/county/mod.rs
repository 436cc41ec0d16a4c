//! The county side of the gateway: case events (`POST /cws/events`), ECM
//! referrals (`POST /ecm/referrals`), the referral `Task` lifecycle
//! (`PUT /fhir/Task/{id}`), ECM eligibility (`GET /cws/eligibility/{patient}`,
//! `cws-gateway eligibility`) and the deadlines the program imposes
//! (`GET /ops/deadlines`, `cws-gateway deadlines`). `docs/county.md` is the
//! integrator's guide.
//!
//! # Flow of one request
//! 1. authenticate (organization kind), parse the JSON (bounded by the body
//!    limit), validate it against its JSON Schema (`profiles/`, compiled once
//!    at start-up in [`schemas::Schemas`]) — a violation is a 422
//!    `OperationOutcome` whose `expression` names the field;
//! 2. business checks that need configuration or stored data (county of the
//!    caller, consent, managed care, grantor) — refusals are 422
//!    `business-rule` and nothing is journaled;
//! 3. `Store::append` to the journal (dedup key per endpoint);
//! 4. derive the resources (mapping engine for case events, Rust builders
//!    for referrals and Task updates), then `Store::complete` writes them
//!    and marks the journal record processed in one transaction;
//! 5. answer 2xx with a `collection` Bundle of what was written.
//!
//! **Architecture Invariant: no 2xx before the input is durable.** Step 5
//! happens only after step 3 returned Ok; a crash between 3 and 4 leaves a
//! pending record that the same request again (idempotency key) completes,
//! or that [`recover`] finishes when the gateway starts.
//!
//! **Architecture Invariant: a replay answers the same.** A duplicate
//! (`AppendOutcome::Duplicate`) re-derives from the *journaled* bytes —
//! derivation is deterministic (ids are uuid5 of documented keys, times come
//! from the input, never the clock) — and answers the resources as stored,
//! with 200 instead of 202/201.
//!
//! Internal records — the per-child eligibility facts (a FHIR `Basic`
//! resource) and the deadline clocks (the store's clock table) — are written
//! in the same `Store::complete_with` transaction and are not returned in
//! answers. No PHI is logged: ids, types and counts only.

pub mod continuity;
pub mod deadlines;
pub mod eligibility;
pub mod error;
pub mod events;
pub mod orgs;
pub mod patients;
pub mod precedence;
pub mod referrals;
pub mod schemas;
pub mod tasks;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::api::AppState;
use crate::config::Config;

pub use error::CountyError;

/// Everything the county routes need beyond [`AppState`]'s basics.
pub struct County {
    pub cfg: Arc<Config>,
    pub engine: Arc<mapping::Engine>,
    pub schemas: schemas::Schemas,
    pub calendar: program::Calendar,
    /// Which source's Patient demographics stand (`mappings/patient-precedence.toml`).
    pub precedence: Arc<precedence::Precedence>,
    /// Set once the delivery workers exist (`serve::start`); writes are
    /// routed in their own transaction when it is set.
    pub routing: std::sync::OnceLock<crate::routing::Routing>,
}

impl County {
    /// Compile the schemas and pick the holiday calendar (the embedded
    /// California table, or `calendar.holidays_file` from the configuration).
    pub fn new(cfg: Arc<Config>, engine: Arc<mapping::Engine>) -> anyhow::Result<County> {
        let schemas = schemas::Schemas::compile()?;
        // The FHIR R4 schema of the writable types, compiled once per process.
        crate::fhir::validate::FhirValidator::global()?;
        let calendar = deadlines::calendar_from_config(&cfg)?;
        let precedence =
            precedence::Precedence::load(cfg.mappings.dir.as_deref()).map_err(|e| {
                let at = match &cfg.mappings.dir {
                    Some(d) => format!("mappings.dir {}", d.display()),
                    None => crate::serve::EMBEDDED_MAPPINGS.to_string(),
                };
                anyhow::anyhow!("{at}: {}: {e}", precedence::FILE)
            })?;
        Ok(County {
            cfg,
            engine,
            schemas,
            calendar,
            precedence: Arc::new(precedence),
            routing: std::sync::OnceLock::new(),
        })
    }
}

/// The county routes, merged into `api::router`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/cws/events", post(events::post_event))
        .route("/ecm/referrals", post(referrals::post_referral))
        .route(
            "/cws/eligibility/{patient_id}",
            get(eligibility::get_eligibility),
        )
        .route("/ops/deadlines", get(deadlines::get_deadlines))
}

/// A FHIR `collection` Bundle of resources.
pub fn collection(resources: &[Value], base: &str) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let t = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
            let id = r.get("id").and_then(Value::as_str).unwrap_or("");
            json!({"fullUrl": format!("{base}/{t}/{id}"), "resource": r})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

/// True for the internal `Basic` records that answers leave out.
pub fn is_internal(res: &Value) -> bool {
    res.get("resourceType").and_then(Value::as_str) == Some("Basic")
}

/// A deterministic resource id for a key (the mapping engine's uuid5).
pub fn rid(key: &str) -> String {
    mapping::uuid5(key)
}

/// Most journal records one recovery pass looks at.
const RECOVERY_PAGE: usize = 1000;

/// Finish county inputs a crash left journaled but not processed (appended,
/// then the process died before `complete_with`): case events and referrals
/// are derived again from the journaled bytes and committed; a referral the
/// rules now refuse, or a Task update that no longer applies, is marked
/// failed. ADT records are the translation worker's. Returns how many
/// records were settled (processed or failed).
pub async fn recover(county: &County, store: &dyn store::Store) -> Result<usize, CountyError> {
    use store::InputKind;
    let mut n = 0;
    let mut after = 0;
    loop {
        let pending = store.journal_pending(after, RECOVERY_PAGE).await?;
        let Some(last) = pending.last().map(|r| r.id) else {
            break;
        };
        after = last;
        for rec in pending {
            let outcome = match rec.kind {
                InputKind::CaseEvent => match error::parse_json(&rec.raw) {
                    Ok(doc) => {
                        match events::derive_locked(county, store, &doc, &rec.source_org).await {
                            // The Patients' locks are held until the commit.
                            Ok((d, _locks)) => {
                                events::settle(county, store, rec.id, d).await.map(|_| ())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                },
                InputKind::Referral => referrals::recover_one(county, store, &rec).await,
                _ => continue,
            };
            match outcome {
                Ok(()) => n += 1,
                Err(CountyError::Store(e)) => return Err(CountyError::Store(e)),
                Err(e) => {
                    tracing::warn!(journal_id = rec.id, error = %e, "county input could not be recovered");
                    store.fail(rec.id, "recovery-refused").await?;
                    n += 1;
                }
            }
        }
    }
    if n > 0 {
        tracing::info!(records = n, "recovered county inputs");
    }
    Ok(n)
}
