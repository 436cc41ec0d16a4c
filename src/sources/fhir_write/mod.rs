//! `POST /fhir/CarePlan` and `POST /fhir/Consent` (ECM providers and
//! counties), and `POST /fhir/CareTeam`, `/fhir/QuestionnaireResponse`,
//! `/fhir/DocumentReference` (the member's assigned ECM provider only, see
//! [`care_team`]): validate, journal, store, answer 201.
//!
//! Order of effects (the journal-before-2xx invariant): the request is
//! validated purely, then journaled (`InputKind::FhirWrite`, raw body kept),
//! then one `complete_with` stores the resource with its search tokens and
//! the `create` audit record and marks the journal record processed, and
//! only then is 201 sent with `Location`. A retried POST of the same body
//! yields the same deterministic id and the journal's dedup key makes it a
//! no-op (200 with the stored resource).
//!
//! Validation (422 `OperationOutcome`, one issue per problem, each with its
//! `expression`; `POST /fhir/{type}/$validate` runs the same checks and
//! stores nothing, see [`validate_op`]):
//! - the FHIR R4 JSON Schema of the type and the project's rules for it
//!   ([`crate::resources::validate`]: unknown elements, codes outside a
//!   required value set, wrong types and formats, required elements), at most
//!   [`crate::resources::validate::MAX_ISSUES`] issues;
//! - `resourceType` matches the URL; `id`, when given, is a valid FHIR id;
//!   without one the resource is assigned [`deterministic_id`] (a Consent
//!   too);
//! - CarePlan: `subject` references a Patient the caller may see; a
//!   CarePlan without `author` gets the caller's Organization as author;
//! - Consent: our shape (see `disclosure`): `patient`, the consent-kind
//!   category, the grantor-role extension, `dateTime`, `provision.actor` and
//!   `provision.class`; the grantor is checked with
//!   `cwsgw_consent::validate_grantor` against the Patient's `birthDate`;
//!   a `referral_verbal` Consent carries the `consent-explained` extension
//!   with all four flags true.
//! - CareTeam, QuestionnaireResponse, DocumentReference: `subject`
//!   references a Patient the caller may see, the caller is the member's
//!   assigned ECM provider (else 403) and the resource has the gateway's
//!   shape ([`care_team::shape_problems`]: a reachable Lead Care Manager; an
//!   assessment coding and a bounded attachment). A CareTeam without
//!   `managingOrganization` is made the caller's. A completed assessment
//!   meets the open 30-day `ecm-assessment` clocks of the provider's Tasks of
//!   the member, in the same transaction.
//! - Security labels the sender put in `meta.security` are kept as sent
//!   (never lowered).
//!
//! Routing the resource onward is the delivery worker's business.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::{InputKind, JournalRecord, NewInput, Store};

pub mod care_team;

use super::Ingress;
use crate::audit::{self, AuditEntry, Interaction};
use crate::auth::{Access, Caller};
use crate::config::OrgKind;
use crate::disclosure::{self, ref_id};
use crate::edge::{fhir_json, operation_outcome, ApiError, ClientCert};
use crate::gate::{Gate, Verdict};
use crate::journal::{self, Derived, RouteMeta};
use crate::resources::validate::{self, FhirValidator, Issue};
use crate::resources::{strip_meta, write_of};
use crate::state::Core;

/// Organization kinds that may create.
pub const WRITE_KINDS: &[OrgKind] = &[OrgKind::EcmProvider, OrgKind::County];
/// Types that may be created.
pub const CREATE_TYPES: &[&str] = &[
    "CarePlan",
    "Consent",
    "CareTeam",
    "QuestionnaireResponse",
    "DocumentReference",
];

/// Is the request body FHIR JSON?
pub fn json_content_type(headers: &HeaderMap) -> bool {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/fhir+json" || media == "application/json"
}

/// Deterministic id of a created resource without one: a digest of the
/// creating organization and the body.
pub fn deterministic_id(rtype: &str, org: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(rtype.as_bytes());
    h.update(b"\n");
    h.update(org.as_bytes());
    h.update(b"\n");
    h.update(body);
    let hex = hex::encode(h.finalize());
    let prefix = match rtype {
        "Consent" => "cons",
        "CareTeam" => "ct",
        "QuestionnaireResponse" => "qr",
        "DocumentReference" => "doc",
        _ => "cp",
    };
    format!("{prefix}-{}", hex.get(..40).unwrap_or(&hex))
}

/// Why a Consent is not in our shape, as (text, expression); None if fine.
pub fn consent_shape_problem(res: &Value) -> Option<(&'static str, &'static str)> {
    let ext_ok = res
        .get("extension")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter().any(|e| {
                e.get("url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u.ends_with(disclosure::GRANTOR_EXT))
                    && e.get("valueCode").and_then(Value::as_str).is_some()
            })
        });
    let kind_ok = res
        .get("category")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .filter_map(|c| c.get("coding").and_then(Value::as_array))
                .flatten()
                .any(|c| {
                    c.get("system")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.ends_with(disclosure::CONSENT_KIND_CS))
                        && c.get("code")
                            .and_then(Value::as_str)
                            .and_then(disclosure::kind_from_code)
                            .is_some()
                })
        });
    let non_empty = |ptr: &str| {
        res.pointer(ptr)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if res
        .get("patient")
        .and_then(|p| ref_id(p, "Patient"))
        .is_none()
    {
        return Some((
            "Consent.patient must reference a Patient",
            "Consent.patient",
        ));
    }
    if !kind_ok {
        return Some((
            "Consent.category needs a consent-kind coding (referral_verbal, release_of_information, part2_written)",
            "Consent.category",
        ));
    }
    if !ext_ok {
        return Some((
            "Consent needs the consent-grantor-role extension",
            "Consent.extension",
        ));
    }
    if res.get("dateTime").and_then(Value::as_str).is_none() {
        return Some(("Consent.dateTime is required", "Consent.dateTime"));
    }
    if !non_empty("/provision/actor") {
        return Some((
            "Consent.provision.actor must name the recipient organizations",
            "Consent.provision.actor",
        ));
    }
    if !non_empty("/provision/class") {
        return Some((
            "Consent.provision.class must list the consent categories",
            "Consent.provision.class",
        ));
    }
    if disclosure::consent_from_fhir(res).is_none() {
        return Some((
            "Consent is not in the gateway's shape (grantor role, kind or dateTime unreadable)",
            "Consent",
        ));
    }
    None
}

async fn visible_patient(
    state: &Core,
    caller: &Caller,
    patient_id: &str,
) -> Result<Option<store::StoredResource>, ApiError> {
    let mut gate = Gate::new(state, caller, Interaction::Read);
    let Some(p) = state.store.resource_get("Patient", patient_id).await? else {
        // Audited like a withheld one: the same answer, the same work (a
        // withheld Patient's decision reads its context).
        crate::gate::absent_costs_alike(state, patient_id).await;
        gate.absent(format!("Patient/{patient_id}"));
        gate.finish().await?;
        return Ok(None);
    };
    // A patient the caller may not see is "unknown": no existence leak.
    let v = gate.judge(&p).await?;
    Ok(match v {
        Verdict::Permit(_) => Some(p),
        Verdict::Withhold(_) => {
            gate.finish().await?;
            None
        }
    })
}

/// A create request that passed every check, ready to store.
struct Checked {
    res: Value,
    id: String,
    patient_id: String,
}

/// The checks of a create (and of `$validate`), in order: the R4 schema and
/// the type's rules ([`FhirValidator::check`]), the id (assigned when
/// absent), Consent's gateway shape, the subject Patient the caller may
/// see, a Consent's grantor. `Err` lists the problems (a 422 for a create).
async fn check_create(
    state: &Core,
    ingress: &Ingress,
    caller: &Caller,
    rtype: &str,
    body: &[u8],
    mut res: Value,
) -> Result<Result<Checked, Vec<Issue>>, ApiError> {
    let validator = FhirValidator::global().map_err(|e| {
        tracing::error!(error = %e, "the FHIR schema did not compile");
        ApiError::Internal("the FHIR schema is not available".into())
    })?;
    let issues = validator.check(rtype, &res);
    if !issues.is_empty() {
        return Ok(Err(issues));
    }
    let one =
        |code: &'static str, expr: &str, text: &str| Ok(Err(vec![Issue::new(code, expr, text)]));
    // A resource without an id is assigned one (deterministic, so a retried
    // POST is the same resource).
    let id = match res.get("id") {
        None => deterministic_id(rtype, &caller.org_id, body),
        Some(Value::String(s)) if crate::config::valid_fhir_id(s) => s.clone(),
        Some(_) => return one("value", &format!("{rtype}.id"), "id is not a valid FHIR id"),
    };
    res["id"] = json!(id);
    let patient_id = if rtype == "Consent" {
        if let Some((text, expr)) = consent_shape_problem(&res) {
            return one("invariant", expr, text);
        }
        res.get("patient").and_then(|p| ref_id(p, "Patient"))
    } else {
        res.get("subject").and_then(|p| ref_id(p, "Patient"))
    };
    let subject_expr = if rtype == "Consent" {
        "Consent.patient".to_string()
    } else {
        format!("{rtype}.subject")
    };
    let Some(patient_id) = patient_id else {
        return one(
            "invariant",
            &subject_expr,
            "the subject must reference a Patient",
        );
    };
    let Some(patient) = visible_patient(state, caller, &patient_id).await? else {
        return one(
            "invariant",
            &subject_expr,
            "the referenced Patient is not known",
        );
    };
    if rtype == "Consent" {
        if let Some(i) = check_grantor(&res, &patient.body) {
            return Ok(Err(vec![i]));
        }
    }
    let shape = care_team::shape_problems(&ingress.care_team, rtype, &res);
    if !shape.is_empty() {
        return Ok(Err(shape));
    }
    Ok(Ok(Checked {
        res,
        id,
        patient_id,
    }))
}

/// The body as a JSON value, or the 400 saying it is not JSON.
#[allow(clippy::result_large_err)]
fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice::<Value>(body).map_err(|_| {
        fhir_json(
            StatusCode::BAD_REQUEST,
            &operation_outcome("error", "structure", "the body is not JSON", None),
        )
    })
}

/// `POST /fhir/{CarePlan|Consent}`.
pub async fn create(
    State(state): State<Core>,
    State(ingress): State<Arc<Ingress>>,
    cert: ClientCert,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state.auth.authenticate(&headers, &cert, WRITE_KINDS)?;
    if !CREATE_TYPES.contains(&rtype.as_str()) {
        return Ok(fhir_json(
            StatusCode::METHOD_NOT_ALLOWED,
            &operation_outcome(
                "error",
                "not-supported",
                "create is not supported on this resource type",
                None,
            ),
        ));
    }
    caller.require(&rtype, Access::Write)?;
    if !json_content_type(&headers) {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/fhir+json or application/json".into(),
        ));
    }
    let res = match parse_body(&body) {
        Ok(v) => v,
        Err(resp) => return Ok(resp),
    };
    let Checked {
        mut res,
        id,
        patient_id,
    } = match check_create(&state, &ingress, &caller, &rtype, &body, res).await? {
        Ok(c) => c,
        Err(issues) => return Ok(validate::unprocessable(&issues)),
    };
    // The Lead Care Manager and the assessments are the assigned ECM
    // provider's to send: another organization that may see the member is
    // refused (audited by the scope layer as a handler 403).
    let assessment_clocks = if care_team::CARE_TEAM_TYPES.contains(&rtype.as_str()) {
        if care_team::open_assignments(
            &state.cfg,
            state.store.as_ref(),
            &caller.org_id,
            &patient_id,
        )
        .await?
        .is_empty()
        {
            return Err(ApiError::Denied(NOT_ASSIGNED.into()));
        }
        care_team::open_assessment_clocks(&state.cfg, state.store.as_ref(), &caller, &patient_id)
            .await?
    } else {
        Vec::new()
    };
    fill_defaults(&rtype, &mut res, &caller.org_id);
    if let Some(existing) = state.store.resource_get(&rtype, &id).await? {
        if strip_meta(existing.body.clone()) != strip_meta(res.clone()) {
            return Ok(fhir_json(
                StatusCode::CONFLICT,
                &operation_outcome(
                    "error",
                    "conflict",
                    &format!("{rtype}/{id} exists; create with a new id"),
                    Some("id"),
                ),
            ));
        }
        return Ok(created(&state, StatusCode::OK, &existing));
    }
    let store: &dyn Store = state.store.as_ref();
    let received_at = Utc::now();
    let appended = journal::append(
        store,
        NewInput {
            kind: InputKind::FhirWrite,
            source_org: caller.org_id.clone(),
            dedup_key: format!("{rtype}/{id}"),
            received_at,
            raw: body.to_vec(),
            meta: json!({"resourceType": rtype, "id": id, "client": caller.client_id}),
        },
    )
    .await?;
    let journal_id = appended.id();
    // What is committed is derived from the journaled body and time, as a
    // recovery after a crash derives it.
    let at = match &appended {
        journal::Appended::Replay { received_at, .. } => *received_at,
        journal::Appended::Fresh(_) => received_at,
    };
    let derived = derive_create(
        &ingress,
        &caller,
        &rtype,
        &id,
        &patient_id,
        res,
        at,
        &assessment_clocks,
    );
    let stored = journal::settle_stored(Some(&state.routing), store, journal_id, derived).await?;
    let Some(stored) = stored.into_iter().next() else {
        return Err(ApiError::Internal("the store returned no resource".into()));
    };
    let status = if appended.processed() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    tracing::info!(resource = %format!("{rtype}/{id}"), org = %caller.org_id, "FHIR resource created");
    Ok(created(&state, status, &stored))
}

/// Why a CareTeam or an assessment from another organization is refused.
pub const NOT_ASSIGNED: &str =
    "only the ECM provider assigned to the member (owner of an accepted or in-progress ECM Task) may send its care team and assessments";

/// What the gateway fills in that the sender left out: a CarePlan's
/// `author` and a CareTeam's `managingOrganization` are the posting
/// organization. A care plan without an author is the posting
/// organization's: the warm hand-off (`care-plan-handoff` routing) never
/// sends a provider its own care plan.
fn fill_defaults(rtype: &str, res: &mut Value, org: &str) {
    let me = json!({"reference": format!("Organization/{org}")});
    match rtype {
        "CarePlan" if res.get("author").is_none() => res["author"] = me,
        "CareTeam" if res.get("managingOrganization").is_none() => {
            res["managingOrganization"] = json!([me])
        }
        _ => {}
    }
}

/// What a create commits: the resource (its id assigned, defaults filled
/// in by [`fill_defaults`]), the `create` audit record, a CarePlan's
/// 6-month review clock, a completed assessment's meeting of the open
/// `assessment_clocks` (the 30-day `ecm-assessment` clocks of the
/// provider's Tasks of the member, read before the journal append or at
/// recovery), routed as a write of the caller's organization. `at` is the
/// journal's received time: the audit record, the clock start and the
/// clock's meeting are there, so a recovery derives the same.
#[allow(clippy::too_many_arguments)]
pub fn derive_create(
    ingress: &Ingress,
    caller: &Caller,
    rtype: &str,
    id: &str,
    patient_id: &str,
    mut res: Value,
    at: DateTime<Utc>,
    assessment_clocks: &[store::ClockRow],
) -> Derived {
    res["id"] = json!(id);
    fill_defaults(rtype, &mut res, &caller.org_id);
    let closes_clock = care_team::assessment_closes_clock(rtype, &res);
    let mut write = write_of(res);
    write.patient_id = Some(patient_id.to_string());
    let audit = audit::new_audit(&AuditEntry {
        kind: "create",
        interaction: Interaction::Create,
        caller,
        patient_id: Some(patient_id),
        entities: vec![format!("{rtype}/{id}")],
        detail: None,
        recorded: at,
    });
    // A care plan is reviewed every 6 months (docs/program-rules.md timelines).
    let clocks: Vec<store::ClockRow> = match rtype {
        "CarePlan" => vec![crate::clocks::open(
            &crate::clocks::ClockSpec {
                clock: program::Clock::CarePlanReview,
                patient_id: patient_id.to_string(),
                subject: format!("CarePlan/{id}"),
                start: at,
                expedited: false,
            },
            &ingress.calendar,
        )],
        // The assessment within 30 days of the assignment (Guide for CWS,
        // ECM provider activities step 7) is met when it arrives.
        _ if closes_clock => crate::clocks::assessment_received(assessment_clocks, patient_id, at),
        _ => Vec::new(),
    };
    Derived {
        writes: vec![write],
        clocks,
        audits: vec![audit],
        // Routed (an ECM provider's CarePlan, Consent, CareTeam or
        // assessment → the county, an assessment and a release naming it →
        // the MCP; under consent at send time) in the same transaction.
        route: Some(RouteMeta {
            event: None,
            source_org: caller.org_id.clone(),
            out_of_county: false,
            event_time: None,
        }),
    }
}

/// FHIR writes (creates and Task updates) re-derived from the journal after
/// a crash. The checks passed before the input was journaled; a create is
/// derived again from its journaled body, id and time. A Task update is
/// applied again to the Task version it was checked against; if the Task
/// has moved on since, the update is refused (marked failed), as a second
/// update against an old version would be.
pub struct FhirWrites(pub Arc<Ingress>);

#[async_trait::async_trait]
impl journal::Source for FhirWrites {
    fn kind(&self) -> InputKind {
        InputKind::FhirWrite
    }

    async fn recover(&self, store: &dyn Store, rec: &JournalRecord) -> Result<(), ApiError> {
        let ingress = &self.0;
        let meta = |k: &str| rec.meta.get(k).and_then(Value::as_str).unwrap_or("");
        let kind = ingress
            .cfg
            .organization(&rec.source_org)
            .map(|o| o.kind)
            .ok_or_else(|| ApiError::Denied("the writer is no longer configured".into()))?;
        let caller = Caller {
            client_id: meta("client").to_string(),
            org_id: rec.source_org.clone(),
            kind,
            scopes: None,
        };
        let body = crate::edge::parse_json(&rec.raw)?;
        let rtype = meta("resourceType");
        let id = meta("id");
        let derived = if rtype == "Task" {
            let stored = store
                .resource_get("Task", id)
                .await?
                .ok_or_else(|| ApiError::NotFound("the Task is gone".into()))?;
            let version = rec.meta.get("version").and_then(Value::as_i64);
            if version.is_some_and(|v| v != stored.version_id) {
                return Err(ApiError::rule(
                    "the Task changed since the update was checked",
                    None,
                ));
            }
            let clocks = crate::clocks::for_subject(store, &format!("Task/{id}")).await?;
            super::task_update::derive(
                ingress,
                &stored.body,
                &body,
                &rec.source_org,
                rec.received_at,
                &clocks,
            )?
        } else if CREATE_TYPES.contains(&rtype) {
            let patient = if rtype == "Consent" {
                body.get("patient")
            } else {
                body.get("subject")
            }
            .and_then(|p| ref_id(p, "Patient"))
            .ok_or_else(|| ApiError::invalid("the subject must reference a Patient", None))?;
            let assessment_clocks = if care_team::CARE_TEAM_TYPES.contains(&rtype) {
                care_team::open_assessment_clocks(&ingress.cfg, store, &caller, &patient).await?
            } else {
                Vec::new()
            };
            derive_create(
                ingress,
                &caller,
                rtype,
                id,
                &patient,
                body,
                rec.received_at,
                &assessment_clocks,
            )
        } else {
            return Err(ApiError::invalid(
                "not a FHIR write the gateway journals",
                None,
            ));
        };
        journal::settle(ingress.routing.get(), store, rec.id, derived).await?;
        Ok(())
    }
}

fn created(state: &Core, status: StatusCode, r: &store::StoredResource) -> Response {
    let mut resp = fhir_json(status, &r.body);
    let loc = format!(
        "{}/fhir/{}/{}/_history/{}",
        state.base_url, r.resource_type, r.id, r.version_id
    );
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", r.version_id)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// Check the grantor of a Consent against the Patient's birth date; the
/// issue explaining why when it may not grant.
fn check_grantor(res: &Value, patient: &Value) -> Option<Issue> {
    let rec = disclosure::consent_from_fhir(res)?;
    // A referral consent shows the four things explained (Guide for CWS,
    // Consent): the consent-explained extension with every flag true.
    if rec.kind == consent::ConsentKind::ReferralVerbal {
        let explained = disclosure::Explained::from_fhir(res).unwrap_or_default();
        if let Some(flag) = explained.first_missing() {
            return Some(Issue::new(
                "business-rule",
                "Consent.extension",
                format!("a referral consent must show, in the consent-explained extension, that the provider and service, the information shared, how long it is shared and the right to withdraw were explained; {flag} is not true"),
            ));
        }
    }
    let Some(birth) = patient
        .get("birthDate")
        .and_then(Value::as_str)
        .and_then(|b| chrono::NaiveDate::parse_from_str(b, "%Y-%m-%d").ok())
    else {
        return Some(Issue::new(
            "invariant",
            "Consent.extension",
            "the Patient has no birth date, so the grantor cannot be checked",
        ));
    };
    let categories: Vec<consent::Category> = rec.categories.clone();
    match consent::validate_grantor(
        rec.kind,
        &categories,
        rec.grantor_role,
        birth,
        rec.recorded_at.date_naive(),
    ) {
        Ok(()) => None,
        Err(e) => Some(Issue::new(
            "business-rule",
            "Consent.extension",
            e.to_string(),
        )),
    }
}

/// Organization kinds that may `$validate` (and so write) `rtype`.
fn validate_kinds(rtype: &str) -> &'static [OrgKind] {
    if rtype == "Task" {
        TASK_WRITE_KINDS
    } else {
        WRITE_KINDS
    }
}

/// Organization kinds that take part in the Task lifecycle (`PUT`).
pub const TASK_WRITE_KINDS: &[OrgKind] = &[OrgKind::Mcp, OrgKind::EcmProvider, OrgKind::County];

/// `POST /fhir/{type}/$validate`: the checks of a write of `type`, nothing
/// stored. The body is the resource, or a `Parameters` whose `resource`
/// parameter holds it. FHIR's `$validate` answers **200 with an
/// OperationOutcome** whatever the verdict: one `information` issue when the
/// resource would be accepted, else the `error` issues a write would get
/// (422 there). 400 when the body is not JSON, 415 for another media type,
/// 405 for a type that cannot be written. A CarePlan or Consent gets every
/// check of a create (schema, type rules, Consent shape and grantor, the
/// subject Patient the caller may see); a Task gets the schema and the type
/// rules — whether a transition is allowed depends on the stored Task and
/// its caller and is checked by the `PUT` itself.
pub async fn validate_op(
    State(state): State<Core>,
    State(ingress): State<Arc<Ingress>>,
    cert: ClientCert,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state
        .auth
        .authenticate(&headers, &cert, validate_kinds(&rtype))?;
    if !validate::WRITE_TYPES.contains(&rtype.as_str()) {
        return Ok(fhir_json(
            StatusCode::METHOD_NOT_ALLOWED,
            &operation_outcome(
                "error",
                "not-supported",
                "$validate is supported only on the types that can be written",
                None,
            ),
        ));
    }
    caller.require(&rtype, Access::Write)?;
    if !json_content_type(&headers) {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/fhir+json or application/json".into(),
        ));
    }
    let mut res = match parse_body(&body) {
        Ok(v) => v,
        Err(resp) => return Ok(resp),
    };
    if res.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        let inner = res
            .get("parameter")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
            })
            .and_then(|p| p.get("resource"))
            .cloned();
        match inner {
            Some(r) => res = r,
            None => {
                return Ok(fhir_json(
                    StatusCode::BAD_REQUEST,
                    &operation_outcome(
                        "error",
                        "required",
                        "the Parameters have no resource parameter",
                        Some("Parameters.parameter"),
                    ),
                ))
            }
        }
    }
    let issues = if CREATE_TYPES.contains(&rtype.as_str()) {
        match check_create(&state, &ingress, &caller, &rtype, &body, res).await? {
            Ok(c) if care_team::CARE_TEAM_TYPES.contains(&rtype.as_str()) => {
                let assigned = care_team::open_assignments(
                    &state.cfg,
                    state.store.as_ref(),
                    &caller.org_id,
                    &c.patient_id,
                )
                .await?;
                if assigned.is_empty() {
                    vec![Issue::new(
                        "forbidden",
                        &format!("{rtype}.subject"),
                        NOT_ASSIGNED,
                    )]
                } else {
                    Vec::new()
                }
            }
            Ok(_) => Vec::new(),
            Err(issues) => issues,
        }
    } else {
        FhirValidator::global()
            .map_err(|_| ApiError::Internal("the FHIR schema is not available".into()))?
            .check(&rtype, &res)
    };
    let outcome = if issues.is_empty() {
        operation_outcome(
            "information",
            "informational",
            "the resource is valid: a write of it would pass these checks",
            None,
        )
    } else {
        validate::outcome(&issues)
    };
    Ok(fhir_json(StatusCode::OK, &outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh SQLite store and the demo configuration's ingress services.
    fn recovery_fixture() -> (tempfile::TempDir, Arc<dyn Store>, Arc<Ingress>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            store::SqliteStore::open(&dir.path().join("gw.db"), Default::default()).unwrap(),
        );
        let cfg = Arc::new(
            crate::config::Config::from_file(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"),
            )
            .unwrap(),
        );
        let engine = crate::embedded::load_engine(&cfg).unwrap();
        let ingress = Arc::new(Ingress::new(cfg, engine).unwrap());
        (dir, store, ingress)
    }

    /// A create journaled and not completed (the process died between the
    /// append and the commit) is finished by the start-up recovery pass,
    /// derived from the journaled body at the journal's time; a second
    /// pass finds nothing left.
    #[tokio::test]
    async fn a_create_journaled_before_a_crash_is_finished_at_start() {
        let (_dir, store, ingress) = recovery_fixture();
        let at = DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let body = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"}});
        store
            .append(NewInput {
                kind: InputKind::FhirWrite,
                source_org: "ecm-compass".into(),
                dedup_key: "CarePlan/cp1".into(),
                received_at: at,
                raw: body.to_string().into_bytes(),
                meta: json!({"resourceType": "CarePlan", "id": "cp1", "client": "compass"}),
            })
            .await
            .unwrap();
        let settled = crate::sources::recover(&ingress, store.as_ref())
            .await
            .unwrap();
        assert_eq!(settled, 1);
        let cp = store
            .resource_get("CarePlan", "cp1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cp.patient_id.as_deref(), Some("p1"));
        assert_eq!(cp.body["author"]["reference"], "Organization/ecm-compass");
        let clocks = store
            .clock_list(true, None, Some("CarePlan/cp1"), 10)
            .await
            .unwrap();
        assert_eq!(clocks.len(), 1);
        assert_eq!(
            clocks[0].started_at, at,
            "the clock starts at the journal's time"
        );
        assert!(store.journal_pending(0, 10).await.unwrap().is_empty());
        assert_eq!(
            crate::sources::recover(&ingress, store.as_ref())
                .await
                .unwrap(),
            0
        );
    }

    /// An assessment journaled before a crash is finished at start like any
    /// create, and meets the open 30-day assessment clock of the
    /// provider's Task then, at the journal's time.
    #[tokio::test]
    async fn an_assessment_journaled_before_a_crash_meets_its_clock_at_start() {
        let (_dir, store, ingress) = recovery_fixture();
        let at = DateTime::parse_from_rfc3339("2026-02-03T18:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let task = json!({"resourceType": "Task", "id": "t1", "status": "accepted", "intent": "order",
            "for": {"reference": "Patient/p1"}, "owner": {"reference": "Organization/ecm-compass"}});
        store.put_resources(vec![write_of(task)]).await.unwrap();
        let clock = crate::clocks::open(
            &crate::clocks::ClockSpec {
                clock: program::Clock::EcmAssessment,
                patient_id: "p1".into(),
                subject: "Task/t1".into(),
                start: at - chrono::Duration::days(12),
                expedited: false,
            },
            &ingress.calendar,
        );
        store.clock_upsert(vec![clock.clone()]).await.unwrap();
        let body = json!({"resourceType": "QuestionnaireResponse", "status": "completed",
            "subject": {"reference": "Patient/p1"}});
        store
            .append(NewInput {
                kind: InputKind::FhirWrite,
                source_org: "ecm-compass".into(),
                dedup_key: "QuestionnaireResponse/qr1".into(),
                received_at: at,
                raw: body.to_string().into_bytes(),
                meta: json!({"resourceType": "QuestionnaireResponse", "id": "qr1", "client": "compass"}),
            })
            .await
            .unwrap();
        assert_eq!(
            crate::sources::recover(&ingress, store.as_ref())
                .await
                .unwrap(),
            1
        );
        assert!(store
            .resource_get("QuestionnaireResponse", "qr1")
            .await
            .unwrap()
            .is_some());
        let rows = crate::clocks::for_subject(store.as_ref(), "Task/t1")
            .await
            .unwrap();
        let met = rows.iter().find(|r| r.id == clock.id).unwrap();
        assert_eq!(met.state, "met");
        assert_eq!(met.closed_at, Some(at));
    }

    /// A Task update whose Task moved on after it was checked is refused on
    /// recovery (marked failed), as a second update against an old version
    /// would be; one that still applies is finished.
    #[tokio::test]
    async fn a_task_update_is_recovered_only_against_the_version_it_was_checked_against() {
        let (_dir, store, ingress) = recovery_fixture();
        let at = Utc::now();
        let stale = json!({"resourceType": "Task", "id": "t1", "status": "accepted"});
        store
            .append(NewInput {
                kind: InputKind::FhirWrite,
                source_org: "mcp-a".into(),
                dedup_key: "mcp-a|Task/t1/_history/7|x".into(),
                received_at: at,
                raw: stale.to_string().into_bytes(),
                meta: json!({"resourceType": "Task", "id": "t1", "client": "plan-a", "version": 7}),
            })
            .await
            .unwrap();
        // No such Task (or not at version 7): refused, marked failed.
        assert_eq!(
            crate::sources::recover(&ingress, store.as_ref())
                .await
                .unwrap(),
            1
        );
        assert!(store.journal_pending(0, 10).await.unwrap().is_empty());
        assert!(store.resource_get("Task", "t1").await.unwrap().is_none());
    }

    /// A completed assessment meets the open `ecm-assessment` clocks it is
    /// given, at the journal's time; a draft meets none, and no other
    /// clock is touched.
    #[test]
    fn a_completed_assessment_meets_the_open_assessment_clocks() {
        let (_dir, _store, ingress) = recovery_fixture();
        let at = DateTime::parse_from_rfc3339("2026-02-03T18:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let open = |clock: program::Clock, subject: &str| {
            crate::clocks::open(
                &crate::clocks::ClockSpec {
                    clock,
                    patient_id: "p1".into(),
                    subject: subject.into(),
                    start: at - chrono::Duration::days(10),
                    expedited: false,
                },
                &ingress.calendar,
            )
        };
        let clocks = vec![
            open(program::Clock::EcmAssessment, "Task/t1"),
            open(program::Clock::AuthorizationDecision, "Task/t1"),
        ];
        let caller = Caller {
            client_id: "compass".into(),
            org_id: "ecm-compass".into(),
            kind: OrgKind::EcmProvider,
            scopes: None,
        };
        let qr = |status: &str| {
            json!({"resourceType": "QuestionnaireResponse", "status": status,
                "subject": {"reference": "Patient/p1"}})
        };
        let d = derive_create(
            &ingress,
            &caller,
            "QuestionnaireResponse",
            "qr1",
            "p1",
            qr("completed"),
            at,
            &clocks,
        );
        assert_eq!(d.clocks.len(), 1);
        assert_eq!(d.clocks[0].kind, "ecm-assessment");
        assert_eq!(d.clocks[0].state, "met");
        assert_eq!(d.clocks[0].closed_at, Some(at));
        let draft = derive_create(
            &ingress,
            &caller,
            "QuestionnaireResponse",
            "qr2",
            "p1",
            qr("in-progress"),
            at,
            &clocks,
        );
        assert!(draft.clocks.is_empty());
        // A CareTeam is stored as the posting provider's.
        let ct = derive_create(
            &ingress,
            &caller,
            "CareTeam",
            "ct1",
            "p1",
            json!({"resourceType": "CareTeam", "subject": {"reference": "Patient/p1"}}),
            at,
            &clocks,
        );
        assert!(ct.clocks.is_empty());
        assert_eq!(
            ct.writes[0].body["managingOrganization"][0]["reference"],
            "Organization/ecm-compass"
        );
    }

    #[test]
    fn every_writable_type_is_validated() {
        // A type made creatable (or updatable) must be compiled by the
        // validator: `check` refuses a type it has no schema for.
        for t in CREATE_TYPES.iter().chain(&["Task"]) {
            assert!(validate::WRITE_TYPES.contains(t), "{t}");
            let issues = FhirValidator::global()
                .unwrap()
                .check(t, &json!({"resourceType": t}));
            assert!(issues.iter().all(|i| i.code != "not-supported"), "{t}");
        }
        let issues = FhirValidator::global()
            .unwrap()
            .check("Patient", &json!({"resourceType": "Patient"}));
        assert_eq!(issues[0].code, "not-supported");
    }

    #[test]
    fn ids_are_deterministic_and_valid() {
        let a = deterministic_id("CarePlan", "ecm-1", b"{}");
        assert_eq!(a, deterministic_id("CarePlan", "ecm-1", b"{}"));
        assert_ne!(a, deterministic_id("CarePlan", "ecm-2", b"{}"));
        assert!(crate::config::valid_fhir_id(&a));
        assert!(deterministic_id("Consent", "x", b"").starts_with("cons-"));
        assert!(deterministic_id("CareTeam", "x", b"").starts_with("ct-"));
        assert!(deterministic_id("QuestionnaireResponse", "x", b"").starts_with("qr-"));
        assert!(deterministic_id("DocumentReference", "x", b"").starts_with("doc-"));
    }

    #[test]
    fn consent_shape_is_checked_element_by_element() {
        let good = crate::disclosure::sample_release_consent();
        assert_eq!(consent_shape_problem(&good), None);
        let mut no_actor = good.clone();
        no_actor["provision"]
            .as_object_mut()
            .unwrap()
            .remove("actor");
        assert_eq!(
            consent_shape_problem(&no_actor).unwrap().1,
            "Consent.provision.actor"
        );
        let mut no_ext = good.clone();
        no_ext.as_object_mut().unwrap().remove("extension");
        assert_eq!(
            consent_shape_problem(&no_ext).unwrap().1,
            "Consent.extension"
        );
        let mut no_patient = good;
        no_patient.as_object_mut().unwrap().remove("patient");
        assert_eq!(
            consent_shape_problem(&no_patient).unwrap().1,
            "Consent.patient"
        );
    }
}
