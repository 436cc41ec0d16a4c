//! The FHIR pull API: read and search of the stored resources, filtered by
//! the consent engine for the caller, plus `POST /fhir/CarePlan|Consent`
//! ([`write`]) and AuditEvent for operators.
//!
//! ## Consent at every exit (the HAPI consent model: decide, then mask)
//! Every resource that leaves — a read, each search match, each `_include` —
//! goes through [`Gate::judge`]: `Disclosure::decide` for the caller's
//! organization with purpose `Pull`, against the patient's context loaded
//! once per patient per request, then `apply_obligations` (masks, Part 2
//! notice) on a permit. Invariants:
//! - **A withheld read is a 404 with exactly the body of a true 404**: no
//!   existence leak.
//! - **A withheld search match is omitted**, and the page is refilled from
//!   the store until `_count` permitted matches or the store is exhausted
//!   (bounded by [`MAX_SCAN`] rows per request; past it the page is returned
//!   short, with a `next` link).
//! - **`Bundle.total` never counts what is withheld**: it is present only on
//!   a single, complete page (no cursor, no `next`), where it equals the
//!   number of `match` entries; on paged results it is omitted. `_count=0`
//!   answers the total alone (no entries), counted the same way.
//! - Operators bypass consent and see everything; every operator read is
//!   audited (`read`). For everyone else every disclosure and every refusal
//!   is audited; the batch is appended before the response is sent.
//! - Paging is keyset paging on `(last_updated, id)` (the store stamps
//!   strictly increasing `last_updated`), with an opaque base64url cursor in
//!   `Bundle.link[next]`; rows inserted between pages sort after the cursor,
//!   so paging never skips or repeats.

pub mod index;
pub mod params;
pub mod validate;
pub mod write;

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use store::StoredResource;

use crate::api::{fhir_json, operation_outcome, ApiError, AppState};
use crate::audit::{self, AuditEntry, Interaction};
use crate::auth::{Access, Caller, ClientCert};
use crate::config::OrgKind;
use crate::disclosure::{apply_obligations, PatientContext, CONTEXT_TYPES};

/// Organization kinds that may read and search.
pub const READ_KINDS: &[OrgKind] = &[
    OrgKind::Mcp,
    OrgKind::EcmProvider,
    OrgKind::County,
    OrgKind::Operator,
];

/// Most store rows examined for one search request.
pub const MAX_SCAN: usize = 2000;
/// Most distinct patients whose context one request loads (a search page
/// stops short, with a `next` link, rather than load more).
pub const MAX_PATIENTS_PER_REQUEST: usize = 256;
/// Most resource references in one audit record (a request that names more
/// — at most [`MAX_SCAN`] plus its includes — writes one record per this
/// many, in order). Keeps every body well under the store's size cap.
pub const MAX_ENTITIES_PER_AUDIT: usize = 1000;
/// `AuditEvent.entity.detail.type` marking a resource disclosed or withheld.
pub const DETAIL_DISCLOSURE: &str = "disclosure";
/// `AuditEvent.entity.detail.type` of the rule and reason a resource was
/// withheld for.
pub const DETAIL_REASON: &str = "reason";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// The `/fhir` routes (besides `/fhir/metadata`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/{rtype}", get(search).post(write::create))
        .route(
            "/fhir/{rtype}/$validate",
            axum::routing::post(write::validate_op),
        )
        .route("/fhir/{rtype}/{id}", get(read).put(update))
}

/// `PUT /fhir/{type}/{id}`: only Task is updatable (its lifecycle lives in
/// `county::tasks`); any other type answers 405.
async fn update(
    state: State<AppState>,
    cert: ClientCert,
    headers: HeaderMap,
    Path((rtype, id)): Path<(String, String)>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if rtype != "Task" {
        return fhir_json(
            StatusCode::METHOD_NOT_ALLOWED,
            &operation_outcome(
                "error",
                "not-supported",
                "this resource type cannot be updated here; only Task supports PUT",
                None,
            ),
        );
    }
    // put_task answers an absent Task as it answers a withheld one (the
    // same consent decision and audit) and marks the 403 it audits itself
    // with `api::RefusalAudited`.
    crate::county::tasks::put_task(state, cert, headers, Path(id), body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The work a withheld answer's consent decision costs, done for an absent
/// one: a patient context read (as [`Gate::judge`] loads for a withheld
/// resource's patient), so that missing and withheld answer in the same
/// time as well as with the same status and body. Every exit that answers
/// "absent" and "withheld" alike calls it on its absent path: FHIR reads,
/// a create's subject Patient
/// (`write::visible_patient`); `GET /cws/eligibility/{patient}` makes the
/// reads of its own decision instead, and `PUT /fhir/Task/{id}` judges a
/// stand-in Task (`county::tasks::put_task`). The result is thrown away (a failed
/// read changes nothing).
pub async fn absent_costs_alike(state: &AppState, key: &str) {
    let _ = PatientContext::load(&state.cfg, state.store.as_ref(), key).await;
}

/// The 404 of an unknown or withheld resource (identical bodies).
fn not_found(rtype: &str, id: &str) -> Response {
    fhir_json(
        StatusCode::NOT_FOUND,
        &operation_outcome(
            "error",
            "not-found",
            &format!("{rtype}/{id} is not known"),
            None,
        ),
    )
}

fn unknown_type() -> Response {
    fhir_json(
        StatusCode::NOT_FOUND,
        &operation_outcome(
            "error",
            "not-supported",
            "this resource type is not served",
            None,
        ),
    )
}

/// 400 for a refused search parameter.
fn bad_param(e: &params::ParamError) -> Response {
    let code = if e.unsupported {
        "not-supported"
    } else {
        "invalid"
    };
    fhir_json(
        StatusCode::BAD_REQUEST,
        &operation_outcome("error", code, &e.to_string(), Some(&e.param)),
    )
}

/// The outcome of consent for one resource.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Send this (obligations applied).
    Permit(Value),
    /// Withhold; `rule reason` for the audit.
    Withhold(String),
}

/// Consent decisions and audit records of one request.
pub struct Gate<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    now: DateTime<Utc>,
    contexts: HashMap<String, PatientContext>,
    /// Every resource decided, in order: patient, `Type/id`, `None` when
    /// disclosed or `Some(rule reason)` when withheld.
    seen: Vec<(Option<String>, String, Option<String>)>,
    interaction: Interaction,
    /// Per patient: may the caller see the member (and so its plan)? See
    /// [`Gate::sees_member`].
    member_seen: HashMap<String, bool>,
}

impl<'a> Gate<'a> {
    /// A gate for one request.
    pub fn new(state: &'a AppState, caller: &'a Caller, interaction: Interaction) -> Gate<'a> {
        Gate {
            state,
            caller,
            now: Utc::now(),
            contexts: HashMap::new(),
            seen: Vec::new(),
            interaction,
            member_seen: HashMap::new(),
        }
    }

    /// Can [`Gate::judge`] decide `r` without loading more than
    /// [`MAX_PATIENTS_PER_REQUEST`] patient contexts?
    pub fn has_room_for(&self, r: &StoredResource) -> bool {
        if self.caller.kind == OrgKind::Operator || self.contexts.len() < MAX_PATIENTS_PER_REQUEST {
            return true;
        }
        match r.patient_id.clone().or_else(|| index::patient_of(&r.body)) {
            Some(p) => self.contexts.contains_key(&p),
            None => true,
        }
    }

    /// Does the request still need `patient_id`'s context (a non-operator
    /// caller whose context for that patient is not loaded yet)?
    fn needs_context(&self, patient_id: &str) -> bool {
        self.caller.kind != OrgKind::Operator
            && !self.contexts.contains_key(patient_id)
            && self.contexts.len() < MAX_PATIENTS_PER_REQUEST
    }

    /// Take `patient_id`'s context from resources the store read together
    /// with the request's resources (`Store::*_with_context`, of
    /// [`CONTEXT_TYPES`]) instead of loading it at the first
    /// [`Gate::judge`]: the same [`PatientContext::from_resources`] over the
    /// same rows `PatientContext::load` reads, one store round trip fewer.
    fn preload(&mut self, patient_id: &str, context: &[StoredResource]) {
        if self.needs_context(patient_id) {
            let ctx = PatientContext::from_resources(&self.state.cfg, patient_id, context);
            self.contexts.insert(patient_id.to_string(), ctx);
        }
    }

    /// Decide one stored resource for the caller and remember it for the audit.
    pub async fn judge(&mut self, r: &StoredResource) -> Result<Verdict, ApiError> {
        let reference = format!("{}/{}", r.resource_type, r.id);
        let patient = r.patient_id.clone().or_else(|| index::patient_of(&r.body));
        if self.caller.kind == OrgKind::Operator {
            self.seen.push((patient, reference, None));
            return Ok(Verdict::Permit(r.body.clone()));
        }
        let Some(pid) = patient else {
            let why = "R1 deny.no-patient".to_string();
            self.seen.push((None, reference, Some(why.clone())));
            return Ok(Verdict::Withhold(why));
        };
        if !self.contexts.contains_key(&pid) {
            if self.contexts.len() >= MAX_PATIENTS_PER_REQUEST {
                return Err(ApiError::Internal(
                    "too many patients in one request".into(),
                ));
            }
            let ctx = PatientContext::load(&self.state.cfg, self.state.store.as_ref(), &pid)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "loading a patient context failed");
                    ApiError::Unavailable
                })?;
            self.contexts.insert(pid.clone(), ctx);
        }
        let Some(ctx) = self.contexts.get(&pid) else {
            return Err(ApiError::Internal("patient context missing".into()));
        };
        // `Disclosure::decide` finds the patient in the body
        // (`mapping::patient_reference`, which reads `Task.for`); a stored
        // Task whose body names none is decided on a view naming the patient
        // the store indexed it under.
        let view;
        let body = if r.resource_type == "Task" && mapping::patient_reference(&r.body).is_none() {
            let mut v = r.body.clone();
            v["subject"] = json!({"reference": format!("Patient/{pid}")});
            view = v;
            &view
        } else {
            &r.body
        };
        let d = self.state.disclosure.decide(
            body,
            &self.caller.org_id,
            consent::Purpose::Pull,
            ctx,
            self.now,
        );
        if d.effect == consent::Effect::Permit {
            self.seen.push((Some(pid), reference, None));
            return Ok(Verdict::Permit(apply_obligations(&r.body, &d)));
        }
        // R4: the referring organization always learns a referral's status —
        // a projection of the Task without clinical detail.
        if r.resource_type == "Task" {
            let projection = crate::delivery::bundle::task_status_projection(body);
            let d2 = self.state.disclosure.decide_with(
                &projection,
                &self.caller.org_id,
                consent::Purpose::Pull,
                ctx,
                self.now,
                true,
            );
            if d2.effect == consent::Effect::Permit {
                let mut body = apply_obligations(&projection, &d2);
                // The owner says which plan (or provider) the member is
                // with: only for a referrer that may see the member.
                if !self.sees_member(&pid).await? {
                    if let Some(o) = body.as_object_mut() {
                        o.remove("owner");
                    }
                }
                self.seen.push((Some(pid), reference, None));
                return Ok(Verdict::Permit(body));
            }
        }
        let why = format!("{} {}", d.rule, d.reason);
        self.seen.push((Some(pid), reference, Some(why.clone())));
        Ok(Verdict::Withhold(why))
    }

    /// May the caller see the member `pid` — the child's county
    /// (`county::eligibility::is_childs_county`), or an organization
    /// `Disclosure::decide` lets read the member's Patient (purpose pull)?
    /// Such a caller may learn the member's plan; a referrer that may not
    /// gets a Task's status (R4) without its owner. Needs `pid`'s context
    /// loaded (as [`Gate::judge`] does before asking).
    async fn sees_member(&mut self, pid: &str) -> Result<bool, ApiError> {
        if let Some(b) = self.member_seen.get(pid) {
            return Ok(*b);
        }
        let patient = self
            .state
            .store
            .resource_get("Patient", pid)
            .await
            .map_err(|_| ApiError::Unavailable)?;
        let Some(ctx) = self.contexts.get(pid) else {
            return Err(ApiError::Internal("patient context missing".into()));
        };
        let seen = crate::delivery::bundle::sees_member(
            &self.state.disclosure,
            self.caller.org_id.as_str(),
            ctx,
            patient.as_ref().map(|p| &p.body),
            self.now,
        );
        self.member_seen.insert(pid.to_string(), seen);
        Ok(seen)
    }

    /// Record a read of `reference`, which does not exist: withheld, for
    /// `R1 deny.not-found` (the audit of a missing id is the audit of a
    /// withheld one).
    fn absent(&mut self, reference: String) {
        self.seen
            .push((None, reference, Some("R1 deny.not-found".to_string())));
    }

    /// Record that `reference` (of `patient`) was shown to the caller
    /// without a consent decision here (operators' AuditEvent reads; a
    /// referral's answer to the child's county or the member's plan).
    pub fn shown(&mut self, patient: Option<String>, reference: String) {
        self.seen.push((patient, reference, None));
    }

    /// Append the audit record of a count-only search (`_count=0`): the
    /// caller was told how many resources it may see, and no resource, so
    /// it is one `query` AuditEvent (see [`count_event`]) — never a
    /// `disclosure` of the counted resources.
    pub async fn finish_count(self) -> Result<(), ApiError> {
        let entry = count_event(self.caller, self.interaction, self.now, &self.seen);
        self.state
            .store
            .audit_append(vec![entry])
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "audit append failed; nothing disclosed");
                ApiError::Unavailable
            })?;
        Ok(())
    }

    /// Append the request's audit record: **one AuditEvent for the whole
    /// request** (one per [`MAX_ENTITIES_PER_AUDIT`] resources beyond that),
    /// listing every resource disclosed or withheld (see [`request_event`]).
    ///
    /// A search that decided nothing (no match, or contradictory
    /// parameters) is still a query the caller made: it is recorded as one
    /// `query` AuditEvent with no entities, as IHE BALP records a query with
    /// an empty result. A read decides at least the missing id, so it never
    /// ends here empty.
    pub async fn finish(self) -> Result<(), ApiError> {
        let entries: Vec<store::NewAudit> = if self.seen.is_empty() {
            if self.interaction != Interaction::SearchType {
                return Ok(());
            }
            vec![audit::new_audit(&AuditEntry {
                kind: "query",
                interaction: self.interaction,
                caller: self.caller,
                patient_id: None,
                entities: Vec::new(),
                detail: Some("0 disclosed, 0 withheld".into()),
                recorded: self.now,
            })]
        } else {
            self.seen
                .chunks(MAX_ENTITIES_PER_AUDIT)
                .map(|chunk| request_event(self.caller, self.interaction, self.now, chunk))
                .collect()
        };
        self.state.store.audit_append(entries).await.map_err(|e| {
            tracing::error!(error = %e, "audit append failed; nothing disclosed");
            ApiError::Unavailable
        })?;
        Ok(())
    }
}

/// `AuditEntity.detail.type` of how many of a patient's resources a
/// count-only search counted.
pub const DETAIL_COUNTED: &str = "counted";

/// The AuditEvent of a count-only search (`_count=0`): kind `query`
/// (outcome 0), what the count reveals and nothing more — per patient
/// whose resources were counted, the `Patient` entity (role 1) with
/// `detail[type=counted]` = how many; no resource entities (none was
/// returned) and nothing about withheld resources but their number in
/// `outcomeDesc` (`query: count-only, {n} counted, {m} withheld`).
/// `patient_id` is set when the count concerns one patient.
pub fn count_event(
    caller: &Caller,
    interaction: Interaction,
    recorded: DateTime<Utc>,
    seen: &[(Option<String>, String, Option<String>)],
) -> store::NewAudit {
    let mut per_patient: Vec<(&str, usize)> = Vec::new();
    let mut counted = 0usize;
    for (p, _, why) in seen {
        if why.is_some() {
            continue;
        }
        counted += 1;
        let Some(p) = p.as_deref() else { continue };
        match per_patient.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n += 1,
            None => per_patient.push((p, 1)),
        }
    }
    let withheld = seen.len() - counted;
    let mut body = audit::audit_event(&AuditEntry {
        kind: "query",
        interaction,
        caller,
        patient_id: None,
        entities: Vec::new(),
        detail: None,
        recorded,
    });
    body["entity"] = Value::Array(
        per_patient
            .iter()
            .map(|(p, n)| {
                json!({
                    "what": {"reference": format!("Patient/{p}")},
                    "role": {"system": OBJECT_ROLE, "code": "1"},
                    "detail": [{"type": DETAIL_COUNTED, "valueString": n.to_string()}]
                })
            })
            .collect(),
    );
    body["outcomeDesc"] = json!(format!(
        "query: count-only, {counted} counted, {withheld} withheld"
    ));
    let single = match per_patient.as_slice() {
        [(p, _)] => Some(p.to_string()),
        _ => None,
    };
    store::NewAudit {
        recorded,
        kind: "query".to_string(),
        patient_id: single,
        recipient: Some(caller.org_id.clone()),
        body,
    }
}

/// The one AuditEvent of a request (the IHE BALP shape of a query or read):
/// the caller as agent, then per patient, in order of first appearance,
/// the `Patient` entity (role 1) followed by each resource of that patient
/// the request decided (role 4), every resource entity carrying
/// `detail[type=disclosure]` = `disclosed` or `withheld`, and for withheld
/// ones `detail[type=reason]` = `rule reason`. Kind (and `outcome`):
/// `read` for operators, `disclosure` (0) when anything was disclosed,
/// `refusal` (4) when everything was withheld. `patient_id` is set when the
/// request concerns one patient; the store indexes every named patient.
pub fn request_event(
    caller: &Caller,
    interaction: Interaction,
    recorded: DateTime<Utc>,
    seen: &[(Option<String>, String, Option<String>)],
) -> store::NewAudit {
    let withheld = seen.iter().filter(|s| s.2.is_some()).count();
    let disclosed = seen.len() - withheld;
    let kind = if caller.kind == OrgKind::Operator {
        "read"
    } else if disclosed > 0 {
        "disclosure"
    } else {
        "refusal"
    };
    // Patients in order of first appearance, each with its resources.
    let mut patients: Vec<&Option<String>> = Vec::new();
    for (p, _, _) in seen {
        if !patients.contains(&p) {
            patients.push(p);
        }
    }
    let mut entity: Vec<Value> = Vec::with_capacity(seen.len() + patients.len());
    for p in &patients {
        if let Some(id) = p {
            entity.push(json!({
                "what": {"reference": format!("Patient/{id}")},
                "role": {"system": OBJECT_ROLE, "code": "1"}
            }));
        }
        for (_, reference, why) in seen.iter().filter(|s| &&s.0 == p) {
            let mut detail = vec![json!({
                "type": DETAIL_DISCLOSURE,
                "valueString": if why.is_some() { "withheld" } else { "disclosed" }
            })];
            if let Some(why) = why {
                detail.push(json!({"type": DETAIL_REASON, "valueString": why}));
            }
            entity.push(json!({
                "what": {"reference": reference},
                "role": {"system": OBJECT_ROLE, "code": "4"},
                "detail": detail
            }));
        }
    }
    let mut body = audit::audit_event(&AuditEntry {
        kind,
        interaction,
        caller,
        patient_id: None,
        entities: Vec::new(),
        detail: None,
        recorded,
    });
    body["entity"] = Value::Array(entity);
    body["outcomeDesc"] = json!(format!(
        "{kind}: {disclosed} disclosed, {withheld} withheld"
    ));
    let single = match patients.as_slice() {
        [Some(p)] => Some(p.clone()),
        _ => None,
    };
    store::NewAudit {
        recorded,
        kind: kind.to_string(),
        patient_id: single,
        recipient: Some(caller.org_id.clone()),
        body,
    }
}

fn lenient(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
}

/// Does the caller accept a FHIR JSON response? (`Accept` absent, `*/*`,
/// `application/fhir+json`, `application/json`.)
pub fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(a) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    a.split(',').any(|m| {
        let m = m
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            m.as_str(),
            "*/*" | "application/*" | "application/fhir+json" | "application/json" | ""
        )
    })
}

fn not_acceptable() -> Response {
    fhir_json(
        StatusCode::NOT_ACCEPTABLE,
        &operation_outcome(
            "error",
            "not-supported",
            "only application/fhir+json and application/json are served",
            None,
        ),
    )
}

fn with_version_headers(mut resp: Response, r: &StoredResource) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", r.version_id)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn read(
    State(state): State<AppState>,
    cert: ClientCert,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.auth.authenticate(&headers, &cert, READ_KINDS)?;
    if !accepts_json(&headers) {
        return Ok(not_acceptable());
    }
    if rtype == params::AUDIT_EVENT.name {
        return audit_read(&state, &caller, &id).await;
    }
    if params::resource_def(&rtype).is_none() {
        return Ok(unknown_type());
    }
    caller.require(&rtype, Access::Read)?;
    if !crate::config::valid_fhir_id(&id) {
        return Ok(not_found(&rtype, "invalid"));
    }
    let mut gate = Gate::new(&state, &caller, Interaction::Read);
    let r = if caller.kind == OrgKind::Operator {
        state.store.resource_get(&rtype, &id).await
    } else {
        // The resource and its patient's context in one store read.
        state
            .store
            .resource_get_with_context(&rtype, &id, &CONTEXT_TYPES)
            .await
            .map(|w| {
                if let Some(p) = w.found.as_ref().and_then(|r| r.patient_id.as_deref()) {
                    gate.preload(p, &w.context);
                }
                w.found
            })
    };
    let Some(r) = r.map_err(|_| ApiError::Unavailable)? else {
        // Audited like a withheld read (the same durable append), so a
        // missing id and a withheld one answer alike, in time too.
        if caller.kind != OrgKind::Operator {
            // And a context read, as a withheld resource's patient costs.
            absent_costs_alike(&state, &id).await;
        }
        gate.absent(format!("{rtype}/{id}"));
        gate.finish().await?;
        return Ok(not_found(&rtype, &id));
    };
    let verdict = gate.judge(&r).await?;
    gate.finish().await?;
    Ok(match verdict {
        Verdict::Permit(body) => with_version_headers(fhir_json(StatusCode::OK, &body), &r),
        Verdict::Withhold(_) => not_found(&rtype, &id),
    })
}

fn entry(base: &str, body: Value, mode: &str) -> Value {
    let rt = body
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let id = body.get("id").and_then(Value::as_str).unwrap_or("");
    json!({
        "fullUrl": format!("{base}/fhir/{rt}/{id}"),
        "resource": body,
        "search": {"mode": mode}
    })
}

/// One page of consent-filtered matches.
struct Page {
    matches: Vec<Value>,
    /// Cursor after the last examined row, when the store may hold more.
    next: Option<(DateTime<Utc>, String)>,
}

async fn fill_page(gate: &mut Gate<'_>, s: &params::Search) -> Result<Page, ApiError> {
    let mut matches = Vec::new();
    let mut after = s.cursor.clone();
    let mut scanned = 0usize;
    loop {
        let remaining = s.count.saturating_sub(matches.len());
        let budget = MAX_SCAN.saturating_sub(scanned);
        if remaining == 0 || budget == 0 {
            // Filled or out of budget: the store may hold more.
            return Ok(Page {
                matches,
                next: after,
            });
        }
        let limit = (remaining + remaining / 2 + 1).min(budget).min(1000);
        let mut q = s.query.clone();
        q.after = after.clone();
        q.limit = limit;
        let rows = match s.patient.as_deref().filter(|p| gate.needs_context(p)) {
            // The matches and the searched patient's context in one store
            // read (rows indexed under another patient load theirs in
            // `judge`).
            Some(p) => gate
                .state
                .store
                .resource_search_with_context(&q, p, &CONTEXT_TYPES)
                .await
                .map(|w| {
                    if !w.found.is_empty() {
                        gate.preload(p, &w.context);
                    }
                    w.found
                }),
            None => gate.state.store.resource_search(&q).await,
        }
        .map_err(|e| {
            tracing::error!(error = %e, "resource search failed");
            ApiError::Unavailable
        })?;
        let n = rows.len();
        for (i, r) in rows.iter().enumerate() {
            if !gate.has_room_for(r) {
                // Too many distinct patients for one request: stop before
                // this row; the next page starts with it.
                return Ok(Page {
                    matches,
                    next: after,
                });
            }
            scanned += 1;
            after = Some((r.last_updated, r.id.clone()));
            if let Verdict::Permit(body) = gate.judge(r).await? {
                matches.push(body);
                if matches.len() == s.count {
                    let more = i + 1 < n || n == limit;
                    return Ok(Page {
                        matches,
                        next: if more { after } else { None },
                    });
                }
            }
        }
        if n < limit {
            return Ok(Page {
                matches,
                next: None,
            });
        }
    }
}

async fn search(
    State(state): State<AppState>,
    cert: ClientCert,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let caller = state.auth.authenticate(&headers, &cert, READ_KINDS)?;
    if !accepts_json(&headers) {
        return Ok(not_acceptable());
    }
    let pairs = match params::parse_form_pairs(query.as_deref().unwrap_or_default().as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            return Ok(fhir_json(
                StatusCode::BAD_REQUEST,
                &operation_outcome(
                    "error",
                    "invalid",
                    &format!("the query string is malformed: {e}"),
                    None,
                ),
            ))
        }
    };
    if rtype == params::AUDIT_EVENT.name {
        return audit_search(&state, &caller, &pairs, lenient(&headers)).await;
    }
    let Some(def) = params::resource_def(&rtype) else {
        return Ok(unknown_type());
    };
    caller.require(&rtype, Access::Read)?;
    let s = match params::parse(def, &pairs, lenient(&headers)) {
        Ok(s) => s,
        Err(e) => return Ok(bad_param(&e)),
    };
    let mut gate = Gate::new(&state, &caller, Interaction::SearchType);
    // `_count=0`: the count only — every match the caller may see (at most
    // MAX_SCAN rows examined; past that no total), no entries.
    let mut counted = None;
    let page = if s.empty {
        Page {
            matches: Vec::new(),
            next: None,
        }
    } else if s.count == 0 {
        let all = params::Search {
            count: MAX_SCAN,
            ..s.clone()
        };
        let p = fill_page(&mut gate, &all).await?;
        counted = Some(p.matches.len());
        Page {
            matches: Vec::new(),
            next: p.next,
        }
    } else {
        fill_page(&mut gate, &s).await?
    };
    let base = state.base_url.as_str();
    let mut entries: Vec<Value> = Vec::with_capacity(page.matches.len());
    let mut focus_refs: Vec<String> = Vec::new();
    for m in &page.matches {
        if s.include_focus {
            if let Some(r) = m.get("focus").and_then(index::reference_of) {
                if !focus_refs.contains(&r) {
                    focus_refs.push(r);
                }
            }
        }
    }
    let n_matches = page.matches.len();
    for m in page.matches {
        entries.push(entry(base, m, "match"));
    }
    for r in focus_refs {
        let Some((t, id)) = r.split_once('/') else {
            continue;
        };
        if params::resource_def(t).is_none() || !caller.may(t, Access::Read) {
            continue;
        }
        let found = state
            .store
            .resource_get(t, id)
            .await
            .map_err(|_| ApiError::Unavailable)?;
        if let Some(res) = found {
            if let Verdict::Permit(body) = gate.judge(&res).await? {
                entries.push(entry(base, body, "include"));
            }
        }
    }
    if counted.is_some() {
        gate.finish_count().await?;
    } else {
        gate.finish().await?;
    }
    let self_q = params::next_query(&s, "")
        .trim_end_matches("_cursor=")
        .trim_end_matches('&')
        .to_string();
    let mut links =
        vec![json!({"relation": "self", "url": format!("{base}/fhir/{rtype}?{self_q}")})];
    if let (Some((t, id)), false) = (&page.next, counted.is_some()) {
        let c = params::encode_cursor(*t, id);
        links.push(json!({"relation": "next", "url": format!("{base}/fhir/{rtype}?{}", params::next_query(&s, &c))}));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": entries,
    });
    if page.next.is_none() && s.cursor.is_none() {
        bundle["total"] = json!(counted.unwrap_or(n_matches));
    }
    if !s.ignored.is_empty() {
        // Tell a lenient caller what was ignored (names only).
        bundle["meta"] = json!({"tag": [{"system": "urn:cws-gateway:ignored-params", "code": s.ignored.join(",")}]});
    }
    Ok(fhir_json(StatusCode::OK, &bundle))
}

fn operator_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.kind != OrgKind::Operator {
        return Err(ApiError::Forbidden(caller.kind.as_str()));
    }
    caller.require("AuditEvent", Access::Read)
}

async fn audit_read(state: &AppState, caller: &Caller, id: &str) -> Result<Response, ApiError> {
    operator_only(caller)?;
    let Ok(seq) = id.parse::<i64>() else {
        return Ok(not_found("AuditEvent", "invalid"));
    };
    if seq < 1 {
        return Ok(not_found("AuditEvent", id));
    }
    let rows = state
        .store
        .audit_list(seq - 1, 1, None, None)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let Some(r) = rows.into_iter().find(|r| r.seq == seq) else {
        return Ok(not_found("AuditEvent", id));
    };
    let mut gate = Gate::new(state, caller, Interaction::Read);
    gate.shown(r.patient_id.clone(), format!("AuditEvent/{seq}"));
    gate.finish().await?;
    Ok(fhir_json(StatusCode::OK, &audit::record_to_fhir(&r)))
}

async fn audit_search(
    state: &AppState,
    caller: &Caller,
    pairs: &[(String, String)],
    lenient: bool,
) -> Result<Response, ApiError> {
    operator_only(caller)?;
    let mut count = params::DEFAULT_COUNT;
    let mut after: i64 = 0;
    let mut patient: Option<String> = None;
    let mut link_params: Vec<(String, String)> = Vec::new();
    let fail = |p: &str, m: &str, unsupported: bool| {
        bad_param(&params::ParamError {
            param: p.into(),
            message: m.into(),
            unsupported,
        })
    };
    for (k, v) in pairs {
        match k.as_str() {
            "_count" => match v.parse::<usize>() {
                Ok(n) => count = n.clamp(1, params::MAX_COUNT),
                Err(_) => return Ok(fail(k, "expected a non-negative integer", false)),
            },
            "_cursor" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => after = n,
                _ => return Ok(fail(k, "not a valid cursor", false)),
            },
            "patient" => {
                let id = v.strip_prefix("Patient/").unwrap_or(v);
                if !crate::config::valid_fhir_id(id) {
                    return Ok(fail(k, "not a valid id", false));
                }
                patient = Some(id.to_string());
            }
            _ if lenient => continue,
            _ => return Ok(fail(k, "not supported on this resource type", true)),
        }
        if k != "_cursor" {
            link_params.push((k.clone(), v.clone()));
        }
    }
    let rows = state
        .store
        .audit_list(after, count + 1, patient.as_deref(), None)
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let more = rows.len() > count;
    let rows: Vec<_> = rows.into_iter().take(count).collect();
    let base = state.base_url.as_str();
    let mut gate = Gate::new(state, caller, Interaction::SearchType);
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            gate.shown(r.patient_id.clone(), format!("AuditEvent/{}", r.seq));
            entry(base, audit::record_to_fhir(r), "match")
        })
        .collect();
    gate.finish().await?;
    let q: Vec<String> = link_params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                params::encode_component(k),
                params::encode_component(v)
            )
        })
        .collect();
    let mut links =
        vec![json!({"relation": "self", "url": format!("{base}/fhir/AuditEvent?{}", q.join("&"))})];
    if let (true, Some(last)) = (more, rows.last()) {
        let mut nq = q.clone();
        nq.push(format!("_cursor={}", last.seq));
        links.push(
            json!({"relation": "next", "url": format!("{base}/fhir/AuditEvent?{}", nq.join("&"))}),
        );
    }
    let mut bundle =
        json!({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries});
    if !more && after == 0 {
        bundle["total"] = json!(rows.len());
    }
    Ok(fhir_json(StatusCode::OK, &bundle))
}

impl IntoResponse for params::ParamError {
    fn into_response(self) -> Response {
        bad_param(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_only_search_is_a_query_naming_only_what_was_counted() {
        let caller = Caller {
            client_id: "plan-a".into(),
            org_id: "mcp-a".into(),
            kind: OrgKind::Mcp,
            scopes: None,
        };
        let seen = vec![
            (Some("p1".to_string()), "Task/t1".to_string(), None),
            (Some("p1".to_string()), "Task/t2".to_string(), None),
            (
                Some("p2".to_string()),
                "Task/t3".to_string(),
                Some("R1 deny.no-consent".to_string()),
            ),
        ];
        let e = count_event(&caller, Interaction::SearchType, Utc::now(), &seen);
        assert_eq!(e.kind, "query");
        assert_eq!(e.patient_id.as_deref(), Some("p1"));
        assert_eq!(e.body["outcome"], "0");
        assert_eq!(
            e.body["outcomeDesc"],
            "query: count-only, 2 counted, 1 withheld"
        );
        assert_eq!(
            e.body["entity"],
            json!([{
                "what": {"reference": "Patient/p1"},
                "role": {"system": OBJECT_ROLE, "code": "1"},
                "detail": [{"type": DETAIL_COUNTED, "valueString": "2"}]
            }])
        );
        // The same resources returned would have been a disclosure.
        let d = request_event(&caller, Interaction::SearchType, Utc::now(), &seen);
        assert_eq!(d.kind, "disclosure");
    }
}
