//! The ways in: one folder per source, each the same shape — the handler
//! (authenticate, parse, check, journal, answer), a deterministic derive
//! (journaled bytes → resources, clocks, routing input) and its tests:
//!
//! | source | endpoint | journal kind |
//! |---|---|---|
//! | [`adt`] | MLLP, `POST /hl7/v2` | `adt` |
//! | [`case_event`] | `POST /cws/events` | `case_event` |
//! | [`referral`] | `POST /ecm/referrals` | `referral` |
//! | [`task_update`] | `PUT /fhir/Task/{id}` | `fhir_write` |
//! | [`fhir_write`] | `POST /fhir/{CarePlan,Consent,CareTeam,QuestionnaireResponse,DocumentReference}` | `fhir_write` |
//!
//! Every source follows the journal's one sequence ([`crate::journal`]):
//! append the input (durable before any 2xx or ACK), replay a duplicate from
//! the journaled bytes, derive, route and complete in one transaction.
//! `docs/county.md` is the integrator's guide to the county endpoints.
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

pub mod adt;
pub mod case_event;
pub mod fhir_write;
pub mod referral;
pub mod rtf;
pub mod schemas;
pub mod task_update;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::routing::post;
use axum::Router;

use crate::config::Config;
use crate::edge::ApiError;
use crate::records::precedence;
use crate::state::Core;

/// What the sources' handlers need beyond [`Core`]'s basics.
pub struct Ingress {
    pub cfg: Arc<Config>,
    pub engine: Arc<mapping::Engine>,
    pub schemas: schemas::Schemas,
    pub calendar: program::Calendar,
    /// Which source's Patient demographics stand (`mappings/patient-precedence.toml`).
    pub precedence: Arc<precedence::Precedence>,
    /// What each case event does beyond its FHIR
    /// (`mappings/case_event/effects.toml`).
    pub effects: case_event::effects::Effects,
    /// How a Lead Care Manager and an ECM assessment are coded
    /// (`mappings/care_team/care-team.toml`).
    pub care_team: fhir_write::care_team::CareTeamRules,
    /// Which ECM provider types get streamlined authorization for which POF
    /// (`mappings/referral/streamlined-authorization.csv`).
    pub streamlined: crate::records::orgs::Streamlined,
    /// Set once the delivery workers exist (`serve::start`); writes are
    /// routed in their own transaction when it is set.
    pub routing: std::sync::OnceLock<crate::routing::Routing>,
}

impl Ingress {
    /// Compile the schemas and pick the holiday calendar (the embedded
    /// California table, or `calendar.holidays_file` from the configuration).
    pub fn new(cfg: Arc<Config>, engine: Arc<mapping::Engine>) -> anyhow::Result<Ingress> {
        let schemas = schemas::Schemas::compile()?;
        // The FHIR R4 schema of the writable types, compiled once per process.
        crate::resources::validate::FhirValidator::global()?;
        let calendar = crate::clocks::calendar_from_config(&cfg)?;
        let precedence =
            precedence::Precedence::load(cfg.mappings.dir.as_deref()).map_err(|e| {
                let at = match &cfg.mappings.dir {
                    Some(d) => format!("mappings.dir {}", d.display()),
                    None => crate::embedded::EMBEDDED_MAPPINGS.to_string(),
                };
                anyhow::anyhow!("{at}: {}: {e}", precedence::FILE)
            })?;
        let effects =
            case_event::effects::Effects::load(cfg.mappings.dir.as_deref()).map_err(|e| {
                let at = match &cfg.mappings.dir {
                    Some(d) => format!("mappings.dir {}", d.display()),
                    None => crate::embedded::EMBEDDED_MAPPINGS.to_string(),
                };
                anyhow::anyhow!("{at}: {}: {e}", case_event::effects::FILE)
            })?;
        let care_team = fhir_write::care_team::CareTeamRules::load(cfg.mappings.dir.as_deref())
            .map_err(|e| {
                let at = match &cfg.mappings.dir {
                    Some(d) => format!("mappings.dir {}", d.display()),
                    None => crate::embedded::EMBEDDED_MAPPINGS.to_string(),
                };
                anyhow::anyhow!("{at}: {}: {e}", fhir_write::care_team::FILE)
            })?;
        let streamlined = crate::records::orgs::Streamlined::load(cfg.mappings.dir.as_deref())
            .map_err(|e| {
                let at = match &cfg.mappings.dir {
                    Some(d) => format!("mappings.dir {}", d.display()),
                    None => crate::embedded::EMBEDDED_MAPPINGS.to_string(),
                };
                anyhow::anyhow!("{at}: {}: {e}", crate::records::orgs::STREAMLINED_FILE)
            })?;
        Ok(Ingress {
            cfg,
            engine,
            schemas,
            calendar,
            precedence: Arc::new(precedence),
            effects,
            care_team,
            streamlined,
            routing: std::sync::OnceLock::new(),
        })
    }
}

/// The sources' HTTP routes (ADT over HTTP is the edge's, beside MLLP),
/// for any router state that yields [`Core`] and [`Ingress`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Core: FromRef<S>,
    Arc<Ingress>: FromRef<S>,
{
    Router::new()
        .route("/cws/events", post(case_event::post_event))
        .route("/ecm/referrals", post(referral::post_referral))
        .route("/ecm/referrals/$batch", post(referral::batch::post_batch))
}

/// The start-up recovery pass over every journaled input kind the HTTP
/// sources own ([`crate::journal::recover`]).
pub async fn recover(ingress: &Arc<Ingress>, store: &dyn store::Store) -> Result<usize, ApiError> {
    let case_events = case_event::CaseEvents(ingress.clone());
    let referrals = referral::Referrals(ingress.clone());
    let writes = fhir_write::FhirWrites(ingress.clone());
    crate::journal::recover(store, &[&case_events, &referrals, &writes]).await
}
