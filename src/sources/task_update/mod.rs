//! `PUT /fhir/Task/{id}`: the referral Task lifecycle (Gravity SDOH
//! clinical referral statuses).
//!
//! Parties: the **requester** (`Task.requester`, the organization that made
//! this referral — the one its status goes to and that may read it, rule
//! R4; a PUT never changes it) and the **performers** — the authorizing MCP
//! (extension `authorizing-mcp`, the first owner) and, once assigned, the
//! ECM provider that owns the Task. Allowed transitions:
//!
//! | from | to | who |
//! |---|---|---|
//! | requested | accepted, rejected | performer |
//! | requested | requested, cancelled | requester |
//! | accepted | in-progress, on-hold, completed, failed | performer |
//! | in-progress | on-hold, completed, failed | performer |
//! | on-hold | in-progress, completed, failed | performer |
//! | requested, accepted, in-progress, on-hold | cancelled | requester |
//! | rejected, completed, failed, cancelled | the same | performer: the authorizing MCP recording the member's Notice of Action, nothing else |
//!
//! Each update carries the closed-loop referral (CLR) status in
//! `businessStatus` and, on a closed loop, the coded closure reason in
//! `statusReason` ([`lifecycle`]; docs/mcp-ecm.md "Closed-loop referral
//! states"): the caller's codes, checked against the shared vocabulary, or
//! the natural ones of the move; `rejected`, `completed` and `failed` need a
//! coded reason (a text-only rejection is coded `other`, a requester's
//! cancellation `withdrawn`). Only the authorizing MCP
//! may set `owner`, only to an `ecm_provider` contracted with it, and only
//! on an accepted (or being accepted) Task. A PUT may change `status`,
//! `statusReason`, `businessStatus`, `owner` and `note`; everything else is
//! kept as stored. Illegal transitions → 422 listing the allowed ones;
//! an organization that is not a party → 404 like no such Task when it may
//! not see the Task (403 only when it may read it); refusals are audited.
//!
//! The write is journaled (`InputKind::FhirWrite`, dedup key
//! `{org}|Task/{id}/_history/{version}|{sha256(body)}`, the version being
//! the one the PUT applies to) before the 200: only a retry of the same
//! body against the same version is a replay, so moving a Task A→B→A with
//! the same body applies the second A. Accepting or rejecting
//! closes the authorization-decision clock; accepting opens "SW told of
//! enrollment" and the 12-month authorization period; setting an owner
//! opens "ECM provider told of assignment" and (the first time) the 30-day
//! assessment; `reauthorized` renews the period for 6 months;
//! `provider-change-requested` opens the 30-day provider change, met when
//! the MCP names the new owner; a denial or discontinuation whose reason
//! owes a Notice of Action opens the member's notice clock, met by the
//! MCP's `notice-of-action-sent` record; closing cancels the clocks the
//! closed loop can no longer meet.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::{ClockRow, InputKind, NewInput, Store};

use super::referral::now_secs;
use super::Ingress;
use crate::audit::{self, AuditEntry, Interaction};
use crate::clocks::{self as deadlines, ClockSpec};
use crate::config::OrgKind;
use crate::disclosure;
use crate::edge::{
    body_rejection, fhir_json, operation_outcome, parse_json, ApiError, ClientCert, Violation,
};
use crate::journal::{self, read_back, Derived};
use crate::records::{clr, orgs};
use crate::resources::validate::FhirValidator;
use crate::resources::{strip_meta, write_of, AUTHORIZING_MCP_EXT, PREVIOUS_OWNER_EXT};

pub mod lifecycle;
use crate::state::Core;

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Requester,
    Performer,
}

const ACTIVE: &[&str] = &["requested", "accepted", "in-progress", "on-hold"];

/// Statuses `party` may move a Task from `from` to.
pub fn allowed(from: &str, party: Party) -> Vec<&'static str> {
    match party {
        Party::Requester => {
            let mut v = Vec::new();
            if from == "requested" {
                v.push("requested");
            }
            if ACTIVE.contains(&from) {
                v.push("cancelled");
            }
            v
        }
        Party::Performer => match from {
            "requested" => vec!["accepted", "rejected"],
            "accepted" => vec!["accepted", "in-progress", "on-hold", "completed", "failed"],
            "in-progress" => vec!["in-progress", "on-hold", "completed", "failed"],
            "on-hold" => vec!["on-hold", "in-progress", "completed", "failed"],
            // A closed loop: only the record of the member's Notice of
            // Action, status unchanged (the authorizing MCP; `transition`).
            "rejected" => vec!["rejected"],
            "completed" => vec!["completed"],
            "failed" => vec!["failed"],
            "cancelled" => vec!["cancelled"],
            _ => Vec::new(),
        },
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The authorizing MCP of a stored Task.
pub fn authorizing_mcp(task: &Value) -> Option<String> {
    crate::resources::extension_org(task, AUTHORIZING_MCP_EXT)
}

/// Is `caller_org` the Task's requester, and is it a performer (the
/// authorizing MCP, or the ECM provider that owns the Task)?
pub fn parties(ingress: &Ingress, stored: &Value, caller_org: &str) -> (bool, bool) {
    let requester = stored.get("requester").and_then(disclosure::org_of);
    let owner = stored.get("owner").and_then(disclosure::org_of);
    let mcp = authorizing_mcp(stored).or_else(|| owner.clone());
    let is_performer = mcp.as_deref() == Some(caller_org)
        || (owner.as_deref() == Some(caller_org)
            && ingress
                .cfg
                .organization(caller_org)
                .is_some_and(|o| o.kind == OrgKind::EcmProvider));
    (requester.as_deref() == Some(caller_org), is_performer)
}

/// Apply a caller's update to the stored Task; returns the new Task and
/// the clock writes. Pure but for the clock records passed in.
pub fn transition(
    ingress: &Ingress,
    stored: &Value,
    update: &Value,
    caller_org: &str,
    now: DateTime<Utc>,
    clocks: &[ClockRow],
) -> Result<(Value, Vec<ClockRow>), ApiError> {
    let cfg = &ingress.cfg;
    let base = cfg.server.canonical_base.as_str();
    let vocab = lifecycle::vocabulary(cfg.mappings.dir.as_deref())?;
    let owner = stored.get("owner").and_then(disclosure::org_of);
    let mcp = authorizing_mcp(stored).or_else(|| owner.clone());
    let (is_requester, is_performer) = parties(ingress, stored, caller_org);
    if !is_performer && !is_requester {
        return Err(ApiError::Denied(NOT_A_PARTY.into()));
    }
    let is_mcp = mcp.as_deref() == Some(caller_org);
    let from = s(stored, "/status").unwrap_or("");
    let to = s(update, "/status")
        .ok_or_else(|| ApiError::invalid("status is required", Some("Task.status")))?;
    let mut ok = Vec::new();
    if is_performer {
        ok.extend(allowed(from, Party::Performer));
    }
    if is_requester {
        ok.extend(allowed(from, Party::Requester));
    }
    if !ok.contains(&to) {
        let list = if ok.is_empty() {
            "none (the Task is closed to this organization)".to_string()
        } else {
            ok.join(", ")
        };
        return Err(ApiError::rule(
            format!("cannot change the status from {from} to the one requested; allowed: {list}"),
            Some("Task.status"),
        ));
    }
    let task_ref = format!("Task/{}", s(stored, "/id").unwrap_or(""));
    let patient_id = stored
        .get("for")
        .and_then(|r| disclosure::ref_id(r, "Patient"))
        .unwrap_or_default();
    let expedited = s(stored, "/priority") == Some("urgent");
    let find = |clock: program::Clock| {
        let id = deadlines::clock_id(clock, &task_ref);
        clocks.iter().find(move |c| c.id == id)
    };
    let open_clock = |clock: program::Clock| find(clock).filter(|c| c.state == "open");
    let spec = |clock: program::Clock, start: DateTime<Utc>, expedited: bool| ClockSpec {
        clock,
        patient_id: patient_id.clone(),
        subject: task_ref.clone(),
        start,
        expedited,
    };
    // A closed loop takes one update only: the record of the member's
    // Notice of Action, by the authorizing MCP; nothing else changes.
    if lifecycle::FINAL.contains(&from) {
        if !is_mcp {
            return Err(ApiError::Denied(
                "only the authorizing MCP records the member's Notice of Action".into(),
            ));
        }
        let sent = lifecycle::noa_sent(update).map_err(|why| {
            ApiError::invalid(
                format!(
                    "a closed Task takes only the record of the member's Notice of Action: extension {base}{} with a valueDateTime ({why})",
                    lifecycle::NOA_SENT_EXT
                ),
                Some("Task.extension"),
            )
        })?;
        let Some(owed) = open_clock(program::Clock::MemberNoticeOfAction) else {
            return Err(ApiError::rule(
                "no Notice of Action is owed on this Task, or its sending is already recorded",
                Some("Task.extension"),
            ));
        };
        if sent < owed.started_at {
            return Err(ApiError::rule(
                "the Notice of Action cannot have been sent before the decision it notices",
                Some("Task.extension"),
            ));
        }
        let at = sent.min(now);
        let mut task = strip_meta(stored.clone());
        task["lastModified"] = json!(deadlines::ts(now));
        set_extension(
            &mut task,
            &format!("{base}{}", lifecycle::NOA_SENT_EXT),
            json!({"valueDateTime": deadlines::ts(at)}),
        );
        return Ok((task, deadlines::close(owed, at).into_iter().collect()));
    }
    let mut task = strip_meta(stored.clone());
    task["status"] = json!(to);
    task["lastModified"] = json!(now.to_rfc3339_opts(SecondsFormat::Secs, true));
    for k in ["statusReason", "note"] {
        if let Some(v) = update.get(k) {
            task[k] = v.clone();
        }
    }
    let mut writes = Vec::new();
    let new_owner = update.get("owner").and_then(disclosure::org_of);
    if update.get("owner").is_some() && new_owner.is_none() {
        return Err(ApiError::invalid(
            "owner must reference Organization/{id}",
            Some("Task.owner"),
        ));
    }
    // The previous-owner extension marks only the version that reassigned.
    let prev_url = format!("{base}{PREVIOUS_OWNER_EXT}");
    remove_extension(&mut task, &prev_url);
    let mut assigned = false;
    if let Some(o) = new_owner.filter(|o| Some(o) != owner.as_ref()) {
        if !is_mcp {
            return Err(ApiError::Denied(
                "only the authorizing MCP may assign the Task".into(),
            ));
        }
        let Some(m) = mcp.as_deref() else {
            return Err(ApiError::Denied("the Task has no authorizing MCP".into()));
        };
        if !orgs::contracted(cfg, &o, m) {
            return Err(ApiError::rule(
                "the owner must be an ECM provider contracted with the MCP",
                Some("Task.owner"),
            ));
        }
        if !matches!(to, "accepted" | "in-progress" | "on-hold") {
            return Err(ApiError::rule(
                "assign an ECM provider only on an accepted Task",
                Some("Task.owner"),
            ));
        }
        task["owner"] = json!({"reference": format!("Organization/{o}")});
        assigned = true;
        let former = owner.as_deref().filter(|p| {
            cfg.organization(p)
                .is_some_and(|x| x.kind == OrgKind::EcmProvider)
        });
        if let Some(p) = former {
            set_extension(
                &mut task,
                &prev_url,
                json!({"valueReference": {"reference": format!("Organization/{p}")}}),
            );
        }
        // The assignment notice is due 10 business days from the
        // authorization: now when this update authorizes, else when the
        // authorization decision was met (seed 003 §VIII "Assignment").
        let authorized_at = if from == "requested" {
            now
        } else {
            find(program::Clock::AuthorizationDecision)
                .and_then(|c| c.closed_at)
                .unwrap_or(now)
        };
        writes.push(deadlines::open(
            &spec(
                program::Clock::EcmProviderToldOfAssignment,
                authorized_at,
                false,
            ),
            &ingress.calendar,
        ));
        // The 30-day ECM assessment counts from the first assignment (seed
        // 000 step 7); the assessment's writer closes it
        // (`clocks::assessment_received`).
        if find(program::Clock::EcmAssessment).is_none() {
            writes.push(deadlines::open(
                &spec(program::Clock::EcmAssessment, now, false),
                &ingress.calendar,
            ));
        }
        // A provider change is carried out when the MCP names the new one.
        if let Some(c) = open_clock(program::Clock::ProviderChangeRequest) {
            writes.extend(deadlines::close(c, now));
        }
    }
    // The closed-loop referral status and closure reason.
    let prior = lifecycle::current_status(stored);
    // A code equal to the Task's current one is what the caller read and
    // sent back: the move's natural code applies.
    let sent = clr::status_of(update);
    // A code the gateway derives itself that does not fit the new status is
    // one read earlier and sent back stale: the natural code applies too.
    let given = sent.filter(|c| *c != prior).filter(|c| {
        !lifecycle::DERIVED.contains(c)
            || vocab
                .status(c)
                .is_some_and(|st| st.task_status.iter().any(|t| t == to))
    });
    let code = given.unwrap_or_else(|| lifecycle::derive_status(&vocab, from, to, prior, assigned));
    let reason = clr::closure_reason_of(update).or_else(|| {
        let closing = vocab.status(code).is_some_and(|s| s.needs_reason);
        closing
            .then(|| {
                lifecycle::derive_reason(
                    to,
                    is_requester && !is_performer,
                    lifecycle::has_reason_text(update),
                )
            })
            .flatten()
    });
    let mut problems: Vec<Violation> = vocab
        .check(to, Some(code), reason)
        .into_iter()
        .map(|(text, at)| Violation {
            text,
            expression: Some(at.to_string()),
        })
        .collect();
    let who = |text: &str| Violation {
        text: text.to_string(),
        expression: Some("Task.businessStatus".into()),
    };
    // A reauthorization renews the period, unless the update only echoes
    // the Task's current one (a client sending back what it read).
    let reauthorizes = sent == Some(lifecycle::REAUTHORIZED)
        && (prior != lifecycle::REAUTHORIZED
            || update.get("restriction") != stored.get("restriction"));
    if reauthorizes {
        if !is_mcp {
            problems.push(who("only the authorizing MCP reauthorizes ECM"));
        }
        if from == "requested" {
            problems.push(who("a referral not yet authorized cannot be reauthorized"));
        }
    }
    if given == Some(lifecycle::PROVIDER_CHANGE_REQUESTED) && !is_performer {
        problems.push(who(
            "a provider change is recorded by the authorizing MCP or the assigned ECM provider",
        ));
    }
    if !problems.is_empty() {
        return Err(ApiError::Violations(problems));
    }
    if let Some(bs) = vocab.business_status(base, code) {
        task["businessStatus"] = bs;
    }
    let final_status = vocab.status(code).is_some_and(|s| s.r#final);
    if let Some(r) = reason {
        if let Some(sr) = lifecycle::closure_status_reason(&vocab, base, update, r) {
            task["statusReason"] = sr;
        }
    }
    let changed = code != prior
        || to != from
        || reason != clr::closure_reason_of(stored)
        || clr::status_date_of(stored).is_none();
    if changed {
        clr::set_status_date(&mut task, base, &deadlines::ts(now));
    }
    if from == "requested" && matches!(to, "accepted" | "rejected") {
        if let Some(c) = open_clock(program::Clock::AuthorizationDecision) {
            writes.extend(deadlines::close(c, now));
        }
        if to == "accepted" {
            writes.push(deadlines::open(
                &spec(program::Clock::SwNotifiedOfEnrollment, now, expedited),
                &ingress.calendar,
            ));
            // The initial authorization period: 12 months (seed 003 §VIII
            // "Standard ECM Authorization Timeframes").
            let period = deadlines::open(
                &spec(program::Clock::AuthorizationPeriod, now, false),
                &ingress.calendar,
            );
            set_period(&mut task, now, period.due_at);
            writes.push(period);
        }
    }
    if reauthorizes {
        // A reauthorization: 6 months from the end of the period it renews
        // (from now when that has already ended).
        let current = open_clock(program::Clock::ReauthorizationPeriod)
            .or_else(|| open_clock(program::Clock::AuthorizationPeriod));
        let start = current.map_or(now, |c| c.due_at.max(now));
        if let Some(c) = open_clock(program::Clock::AuthorizationPeriod) {
            writes.extend(deadlines::close(c, now));
        }
        let period = deadlines::open(
            &spec(program::Clock::ReauthorizationPeriod, start, false),
            &ingress.calendar,
        );
        set_period(&mut task, start, period.due_at);
        writes.push(period);
    }
    if code == lifecycle::PROVIDER_CHANGE_REQUESTED
        && open_clock(program::Clock::ProviderChangeRequest).is_none()
    {
        writes.push(deadlines::open(
            &spec(program::Clock::ProviderChangeRequest, now, false),
            &ingress.calendar,
        ));
    }
    if final_status {
        // The member is owed a Notice of Action on a denial or a
        // discontinuation (seed 003 §VIII "Authorization", "NOA Process").
        let noa = reason
            .and_then(|r| vocab.closure_reason(r))
            .is_some_and(|r| r.notice_of_action);
        if noa && find(program::Clock::MemberNoticeOfAction).is_none() {
            writes.push(deadlines::open(
                &spec(program::Clock::MemberNoticeOfAction, now, expedited),
                &ingress.calendar,
            ));
        }
        // What the closed loop can no longer meet is cancelled.
        for clock in [
            program::Clock::AuthorizationDecision,
            program::Clock::AuthorizationPeriod,
            program::Clock::ReauthorizationPeriod,
            program::Clock::ProviderChangeRequest,
            program::Clock::EcmAssessment,
        ] {
            if let Some(c) = open_clock(clock) {
                if !writes.iter().any(|w| w.id == c.id) {
                    writes.extend(deadlines::cancel(c, now));
                }
            }
        }
    }
    Ok((task, writes))
}

/// Put `value`'s members on the extension `url` of `task`, replacing one
/// already there.
fn set_extension(task: &mut Value, url: &str, value: Value) {
    remove_extension(task, url);
    let mut ext = json!({"url": url});
    if let Some(m) = value.as_object() {
        for (k, v) in m {
            ext[k] = v.clone();
        }
    }
    if !task.get("extension").is_some_and(Value::is_array) {
        task["extension"] = json!([]);
    }
    if let Some(a) = task.get_mut("extension").and_then(Value::as_array_mut) {
        a.push(ext);
    }
}

fn remove_extension(task: &mut Value, url: &str) {
    if let Some(a) = task.get_mut("extension").and_then(Value::as_array_mut) {
        a.retain(|e| e.get("url").and_then(Value::as_str) != Some(url));
    }
    if task
        .get("extension")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        if let Some(m) = task.as_object_mut() {
            m.remove("extension");
        }
    }
}

/// The authorization period on the Task: `restriction.period` (start, end).
fn set_period(task: &mut Value, start: DateTime<Utc>, end: DateTime<Utc>) {
    task["restriction"] =
        json!({"period": {"start": deadlines::ts(start), "end": deadlines::ts(end)}});
}

/// The 403 text for a caller that may see the Task but is neither its
/// requester nor a performer.
pub const NOT_A_PARTY: &str =
    "the caller's organization is neither the requester nor a performer of this Task";

/// The stand-in judged for an absent Task, shaped like a stored one: the
/// Task id is its patient key, so the gate reads a patient context (none is
/// found for an id that names no patient) and decides, as for a withheld
/// Task. Never stored, shown or audited.
fn absent_task(id: &str) -> store::StoredResource {
    store::StoredResource {
        resource_type: "Task".into(),
        id: id.to_string(),
        version_id: 1,
        last_updated: Utc::now(),
        patient_id: Some(id.to_string()),
        body: json!({
            "resourceType": "Task",
            "id": id,
            "status": "requested",
            "intent": "order",
            "for": {"reference": format!("Patient/{id}")},
        }),
    }
}

/// Audit a refused `PUT` (durable before the answer): the same work for an
/// absent Task as for a withheld one.
async fn refused(
    state: &Core,
    caller: &crate::auth::Caller,
    patient: Option<&str>,
    id: &str,
    why: &str,
) -> Result<(), ApiError> {
    let record = audit::new_audit(&AuditEntry {
        kind: "refusal",
        interaction: Interaction::Update,
        caller,
        patient_id: patient,
        entities: vec![format!("Task/{id}")],
        detail: Some(format!("task update refused: {why}")),
        recorded: chrono::Utc::now(),
    });
    state.store.audit_append(vec![record]).await.map_err(|e| {
        tracing::error!(error = %e, "task refusal audit append failed");
        ApiError::Store(e)
    })?;
    Ok(())
}

/// What an accepted Task update commits: the new Task version, the clocks
/// it opens or closes, routed like any write of the caller's organization.
/// Deterministic in its inputs (`at` is the journal's received time).
pub fn derive(
    ingress: &Ingress,
    stored: &Value,
    update: &Value,
    from: &str,
    at: DateTime<Utc>,
    clocks: &[ClockRow],
) -> Result<Derived, ApiError> {
    let (task, clocks) = transition(ingress, stored, update, from, at, clocks)?;
    Ok(Derived {
        writes: vec![write_of(task)],
        clocks,
        audits: Vec::new(),
        route: Some(journal::RouteMeta {
            event: None,
            source_org: from.to_string(),
            ..Default::default()
        }),
    })
}

/// The journal record of a Task update by `caller` applying to `version`:
/// kind `FhirWrite`, dedup key `{org}|Task/{id}/_history/{version}|{sha256}`
/// — the version applied to (If-Match, when given, names it), so the same
/// body after the Task moved on is a new update and a retry is a replay.
/// `via` names a way in other than the PUT (the monthly return file), which
/// recovery derives as a PUT all the same.
pub fn journal_input(
    caller: &crate::auth::Caller,
    id: &str,
    version: i64,
    raw: Vec<u8>,
    status: Option<&str>,
    via: Option<&str>,
    now: DateTime<Utc>,
) -> NewInput {
    let digest = hex::encode(Sha256::digest(&raw));
    let mut meta = json!({"resourceType": "Task", "id": id, "status": status,
        "client": caller.client_id, "version": version});
    if let Some(v) = via {
        meta["via"] = json!(v);
    }
    NewInput {
        kind: InputKind::FhirWrite,
        source_org: caller.org_id.clone(),
        dedup_key: format!("{}|Task/{id}/_history/{version}|{digest}", caller.org_id),
        received_at: now,
        raw,
        meta,
    }
}

/// The handler.
pub async fn put_task(
    State(state): State<Core>,
    State(ingress): State<Arc<Ingress>>,
    cert: ClientCert,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(
        &headers,
        &cert,
        &[OrgKind::Mcp, OrgKind::EcmProvider, OrgKind::County],
    )?;
    let bytes = body.map_err(|r| body_rejection(r, state.cfg.server.max_body_bytes))?;
    let update = parse_json(&bytes)?;
    if s(&update, "/resourceType") != Some("Task") {
        return Err(ApiError::invalid(
            "the body must be a Task",
            Some("Task.resourceType"),
        ));
    }
    if s(&update, "/id") != Some(id.as_str()) {
        return Err(ApiError::invalid(
            "Task.id must equal the id in the URL",
            Some("Task.id"),
        ));
    }
    if !crate::config::valid_fhir_id(&id) {
        return Err(ApiError::NotFound("no such Task".into()));
    }
    // The R4 schema and the Task rules (one issue per problem; the body
    // alone decides, so before the Task is looked up).
    if let Some(resp) = check_task_body(&update) {
        return Ok(resp);
    }
    // One update of this Task at a time in this process, from the read of
    // the stored version (If-Match) to the stored update.
    let _task_lock = task_lock(&id).await;
    let store: &dyn Store = state.store.as_ref();
    let found = store.resource_get("Task", &id).await?;
    let absent = found.is_none();
    let stored = found.unwrap_or_else(|| absent_task(&id));
    // Absent, or not a party: a caller that may not see the Task gets the
    // 404 of an absent one (its existence is a fact about the member); one
    // that may read it (a release, R4 …) is told it is not a party. An
    // absent Task takes the same path as a withheld one: its stand-in
    // ([`absent_task`]) is judged by the consent gate (the patient context
    // read and the decisions) and the refusal audited, so both 404s make
    // the same reads and writes and answer in the same time.
    if absent || parties(&ingress, &stored.body, &caller.org_id) == (false, false) {
        let mut gate = crate::gate::Gate::new(&state, &caller, Interaction::Read);
        let verdict = gate.judge(&stored).await?;
        let visible = !absent && matches!(verdict, crate::gate::Verdict::Permit(_));
        let patient = stored
            .patient_id
            .clone()
            .or_else(|| crate::resources::index::patient_of(&stored.body));
        let (patient, why) = if absent {
            // The stand-in's patient key is the Task id, not a patient.
            (None, "not-found")
        } else {
            (patient, "not-a-party")
        };
        refused(&state, &caller, patient.as_deref(), &id, why).await?;
        if !visible {
            return Err(ApiError::NotFound("no such Task".into()));
        }
        // This refusal is audited here: the response says so (a typed
        // marker the scope layer reads), so it is not recorded twice.
        let mut resp = ApiError::Denied(NOT_A_PARTY.into()).into_response();
        resp.extensions_mut().insert(crate::edge::RefusalAudited);
        return Ok(resp);
    }
    // If-Match naming a version that is not the current one: 412, nothing
    // journaled, stored or routed (FHIR versioned update).
    if let Some(resp) = if_match_refusal(&headers, stored.version_id) {
        return Ok(resp);
    }
    let now = now_secs();
    let clocks = deadlines::for_subject(store, &format!("Task/{id}")).await?;
    // Check before the journal: a refused update is not stored.
    transition(
        &ingress,
        &stored.body,
        &update,
        &caller.org_id,
        now,
        &clocks,
    )?;
    let appended = journal::append(
        store,
        journal_input(
            &caller,
            &id,
            stored.version_id,
            bytes.to_vec(),
            s(&update, "/status"),
            None,
            now,
        ),
    )
    .await?;
    let jid = appended.id();
    let stored = if appended.processed() {
        read_back(store, &[("Task", id.clone())]).await?
    } else {
        let derived = derive(
            &ingress,
            &stored.body,
            &update,
            &caller.org_id,
            now,
            &clocks,
        )?;
        journal::settle(ingress.routing.get(), store, jid, derived).await?
    };
    tracing::info!(journal_id = jid, task = %id, "Task updated");
    let task = stored
        .into_iter()
        .find(|r| s(r, "/resourceType") == Some("Task"))
        .unwrap_or_default();
    let mut resp = fhir_json(StatusCode::OK, &task);
    // The new version, as reads give it (FHIR update: ETag = W/"versionId").
    if let Some(v) =
        s(&task, "/meta/versionId").and_then(|v| HeaderValue::from_str(&format!("W/\"{v}\"")).ok())
    {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// The 422 for a `PUT /fhir/Task/{id}` body that fails the R4 schema or
/// the Task rules ([`FhirValidator::check`]); `None` when it passes.
pub fn check_task_body(update: &Value) -> Option<Response> {
    let issues = match FhirValidator::global() {
        Ok(v) => v.check("Task", update),
        Err(e) => {
            tracing::error!(error = %e, "the FHIR schema did not compile");
            return Some(
                ApiError::Internal("the FHIR schema is not available".into()).into_response(),
            );
        }
    };
    (!issues.is_empty()).then(|| crate::resources::validate::unprocessable(&issues))
}

/// Does an `If-Match` header (`W/"3"`, `"3"`, a list, or `*`) name version
/// `version_id`? `None` when the request has no `If-Match`.
pub fn if_match(headers: &HeaderMap, version_id: i64) -> Option<bool> {
    let mut any = false;
    let want = version_id.to_string();
    for v in headers.get_all(header::IF_MATCH) {
        any = true;
        let Ok(v) = v.to_str() else { continue };
        for tag in v.split(',') {
            let tag = tag.trim();
            if tag == "*" {
                return Some(true);
            }
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            if tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) == Some(want.as_str()) {
                return Some(true);
            }
        }
    }
    any.then_some(false)
}

/// Per-Task locks of this process: `PUT /fhir/Task/{id}` holds its Task's
/// from before it reads the stored version until the update is stored, so
/// two updates of one Task on one gateway instance never both pass an
/// `If-Match` naming the same version. (Instances sharing a PostgreSQL
/// store do not share these locks.)
static TASK_LOCKS: std::sync::LazyLock<crate::locks::KeyedLocks> =
    std::sync::LazyLock::new(Default::default);

/// Take this process's lock of Task `id` (see `TASK_LOCKS`).
pub async fn task_lock(id: &str) -> tokio::sync::OwnedMutexGuard<()> {
    TASK_LOCKS.lock(id).await
}

/// The 412 of a `PUT` whose `If-Match` names a version that is not the
/// current one (FHIR versioned update); `None` when there is no `If-Match`
/// or it matches.
pub fn if_match_refusal(headers: &HeaderMap, version_id: i64) -> Option<Response> {
    (if_match(headers, version_id) == Some(false)).then(|| {
        fhir_json(
            StatusCode::PRECONDITION_FAILED,
            &operation_outcome(
                "error",
                "conflict",
                "If-Match does not name the current version; read the resource again and retry",
                None,
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(if_match(&HeaderMap::new(), 2), None);
        assert_eq!(if_match(&h("W/\"2\""), 2), Some(true));
        assert_eq!(if_match(&h("\"2\""), 2), Some(true));
        assert_eq!(if_match(&h("W/\"1\", W/\"2\""), 2), Some(true));
        assert_eq!(if_match(&h("*"), 7), Some(true));
        assert_eq!(if_match(&h("W/\"1\""), 2), Some(false));
        assert_eq!(if_match(&h("W/\"12\""), 2), Some(false));
        assert_eq!(if_match(&h("2"), 2), Some(false), "an entity tag is quoted");
        assert!(if_match_refusal(&h("W/\"1\""), 2).is_some());
        assert!(if_match_refusal(&HeaderMap::new(), 2).is_none());
    }

    /// The demo's organizations, the built-in mappings: what a non-HTTP
    /// caller (the RTF import) has.
    fn ingress() -> Ingress {
        let cfg = crate::config::Config::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"),
        )
        .unwrap();
        let cfg = Arc::new(cfg);
        let engine = crate::embedded::load_engine(&cfg).unwrap();
        Ingress::new(cfg, engine).unwrap()
    }

    fn stored(status: &str, owner: &str) -> Value {
        json!({"resourceType": "Task", "id": "t1", "status": status, "intent": "order",
            "for": {"reference": "Patient/p1"}, "focus": {"reference": "ServiceRequest/s1"},
            "requester": {"reference": "Organization/county-fresno"},
            "owner": {"reference": format!("Organization/{owner}")},
            "extension": [{"url": "https://gateway.example.org/fhir/StructureDefinition/authorizing-mcp",
                "valueReference": {"reference": "Organization/mcp-a"}}]})
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn kinds(rows: &[ClockRow]) -> Vec<(&str, &str)> {
        rows.iter()
            .map(|c| (c.kind.as_str(), c.state.as_str()))
            .collect()
    }

    #[test]
    fn the_lifecycle_opens_and_closes_its_clocks_without_http() {
        let ing = ingress();
        // Authorized and assigned on Christmas Eve 2026 (Pacific morning).
        let t0 = at("2026-12-24T17:00:00Z");
        let (task, rows) = transition(
            &ing,
            &stored("requested", "mcp-a"),
            &json!({"status": "accepted", "owner": {"reference": "Organization/ecm-compass"}}),
            "mcp-a",
            t0,
            &[],
        )
        .unwrap();
        assert_eq!(clr::status_of(&task), Some("assigned"));
        assert_eq!(clr::status_date_of(&task), Some("2026-12-24T17:00:00Z"));
        assert_eq!(
            task["restriction"]["period"]["start"],
            "2026-12-24T17:00:00Z"
        );
        // 12 months: the end of 24 Dec 2027, Pacific.
        assert_eq!(task["restriction"]["period"]["end"], "2027-12-25T07:59:59Z");
        let mut k = kinds(&rows);
        k.sort();
        assert_eq!(
            k,
            [
                ("authorization-period", "open"),
                ("ecm-assessment", "open"),
                ("ecm-provider-told-of-assignment", "open"),
                ("sw-notified-of-enrollment", "open"),
            ]
        );
        // The member asks for another provider; the plan names Bridges 20
        // days later: the clock is met, the former provider marked.
        let mut clocks = rows.clone();
        let t1 = t0 + chrono::Duration::days(10);
        let (task, rows) = transition(
            &ing,
            &json!(task),
            &json!({"status": "accepted", "businessStatus": {"coding": [{"system": "x/CodeSystem/ecm-referral-status", "code": "provider-change-requested"}]}}),
            "ecm-compass",
            t1,
            &clocks,
        )
        .unwrap();
        assert_eq!(kinds(&rows), [("provider-change-request", "open")]);
        assert_eq!(rows[0].due_at, at("2027-02-03T07:59:59Z"));
        clocks.extend(rows);
        let (task, rows) = transition(
            &ing,
            &task,
            &json!({"status": "in-progress", "owner": {"reference": "Organization/ecm-bridges"}}),
            "mcp-a",
            t1 + chrono::Duration::days(20),
            &clocks,
        )
        .unwrap();
        assert_eq!(clr::status_of(&task), Some("assigned"));
        assert_eq!(
            crate::routing::previous_owner(&ing.cfg, &task).as_deref(),
            Some("ecm-compass")
        );
        let mut k = kinds(&rows);
        k.sort();
        assert_eq!(
            k,
            [
                ("ecm-provider-told-of-assignment", "open"),
                ("provider-change-request", "met")
            ],
            "the assessment clock is not reopened"
        );
        // Closing without a coded reason: one issue per problem.
        let err = transition(
            &ing,
            &task,
            &json!({"status": "completed", "businessStatus": {"coding": [{"system": "x/CodeSystem/ecm-referral-status", "code": "nope"}]}}),
            "ecm-bridges",
            t1,
            &clocks,
        )
        .unwrap_err();
        match err {
            ApiError::Violations(v) => {
                let at: Vec<_> = v.iter().map(|x| x.expression.as_deref()).collect();
                assert_eq!(at, [Some("Task.businessStatus")], "{v:?}");
            }
            e => panic!("{e:?}"),
        }
        let err = transition(
            &ing,
            &task,
            &json!({"status": "completed"}),
            "ecm-bridges",
            t1,
            &clocks,
        )
        .unwrap_err();
        assert!(err.to_string().contains("care-plan-goals-met"), "{err}");
    }

    #[test]
    fn a_reauthorization_renews_from_the_end_of_the_period_and_a_notice_is_recorded_once() {
        let ing = ingress();
        let t0 = at("2026-08-31T17:00:00Z");
        let (task, mut clocks) = transition(
            &ing,
            &stored("requested", "mcp-a"),
            &json!({"status": "accepted"}),
            "mcp-a",
            t0,
            &[],
        )
        .unwrap();
        let reauth = json!({"status": "accepted", "businessStatus": {"coding": [{"system": "x/CodeSystem/ecm-referral-status", "code": "reauthorized"}]}});
        // The provider may not; the plan renews 6 months from the period's end.
        assert!(transition(&ing, &task, &reauth, "ecm-compass", t0, &clocks).is_err());
        let t1 = at("2027-08-01T17:00:00Z");
        let (task, rows) = transition(&ing, &task, &reauth, "mcp-a", t1, &clocks).unwrap();
        assert_eq!(
            task["restriction"]["period"]["start"],
            "2027-09-01T06:59:59Z"
        );
        assert_eq!(task["restriction"]["period"]["end"], "2028-03-01T07:59:59Z");
        let mut k = kinds(&rows);
        k.sort();
        assert_eq!(
            k,
            [
                ("authorization-period", "met"),
                ("reauthorization-period", "open")
            ]
        );
        clocks.retain(|c| !rows.iter().any(|r| r.id == c.id));
        clocks.extend(rows);
        // Discontinued (member declined): a Notice of Action is owed;
        // the open period is cancelled.
        let t2 = at("2027-10-01T17:00:00Z");
        let (task, rows) = transition(
            &ing,
            &task,
            &json!({"status": "failed", "statusReason": {"coding": [{"system": "x/CodeSystem/ecm-referral-closure-reason", "code": "member-declined"}]}}),
            "mcp-a",
            t2,
            &clocks,
        )
        .unwrap();
        let mut k = kinds(&rows);
        k.sort();
        assert_eq!(
            k,
            [
                ("member-notice-of-action", "open"),
                ("reauthorization-period", "cancelled")
            ]
        );
        clocks.retain(|c| !rows.iter().any(|r| r.id == c.id));
        clocks.extend(rows);
        // Recorded at the time the plan gives (not later than the update).
        let noa = |when: &str| json!({"status": "failed", "extension": [{"url": format!("x{}", lifecycle::NOA_SENT_EXT), "valueDateTime": when}]});
        let t3 = t2 + chrono::Duration::days(2);
        let (after, rows) = transition(
            &ing,
            &task,
            &noa("2027-10-02T18:00:00Z"),
            "mcp-a",
            t3,
            &clocks,
        )
        .unwrap();
        assert_eq!(kinds(&rows), [("member-notice-of-action", "met")]);
        assert_eq!(rows[0].closed_at, Some(at("2027-10-02T18:00:00Z")));
        assert_eq!(clr::status_of(&after), Some("closed"));
        let (_, rows) = transition(
            &ing,
            &task,
            &noa("2030-01-01T00:00:00Z"),
            "mcp-a",
            t3,
            &clocks,
        )
        .unwrap();
        assert_eq!(rows[0].closed_at, Some(t3), "never after the update");
        clocks.retain(|c| !rows.iter().any(|r| r.id == c.id));
        clocks.extend(rows);
        assert!(transition(
            &ing,
            &after,
            &noa("2027-10-02T18:00:00Z"),
            "mcp-a",
            t3,
            &clocks
        )
        .is_err());
    }

    #[tokio::test]
    async fn task_locks_serialize_one_task_only() {
        let a = task_lock("t-lock-1").await;
        // Another Task is not held up.
        let _b = task_lock("t-lock-2").await;
        let waiting = tokio::spawn(async { task_lock("t-lock-1").await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the same Task waits");
        drop(a);
        let _again = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
