//! The FHIR pull API: read and search of the stored resources, filtered by
//! the consent engine for the caller, plus `POST /fhir/CarePlan|Consent`
//! ([`crate::sources::fhir_write`]) and AuditEvent for operators.
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

pub mod params;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use store::StoredResource;

use crate::audit::{self, Interaction};
use crate::auth::{Access, Caller};
use crate::config::OrgKind;
use crate::disclosure::CONTEXT_TYPES;
use crate::edge::ClientCert;
use crate::edge::{fhir_json, operation_outcome, ApiError};
use crate::gate::{absent_costs_alike, Gate, Verdict};
use crate::resources::index;
use crate::sources::{fhir_write, Ingress};
use crate::state::Core;
use axum::extract::FromRef;
use std::sync::Arc;

/// Organization kinds that may read and search.
pub const READ_KINDS: &[OrgKind] = &[
    OrgKind::Mcp,
    OrgKind::EcmProvider,
    OrgKind::County,
    OrgKind::Operator,
];

/// Organization kinds that may read one resource by id: [`READ_KINDS`]
/// and community referrers (only [`REFERRER_READ_TYPES`]).
pub const REFERRER_READ_KINDS: &[OrgKind] = &[
    OrgKind::Mcp,
    OrgKind::EcmProvider,
    OrgKind::County,
    OrgKind::Operator,
    OrgKind::Referrer,
];

/// What a community referrer may read by id: its referrals' Task and
/// ServiceRequest (the consent gate decides what of them it sees).
pub const REFERRER_READ_TYPES: &[&str] = &["Task", "ServiceRequest"];

/// Most store rows examined for one search request.
pub const MAX_SCAN: usize = 2000;
/// The `/fhir` routes (besides `/fhir/metadata`).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Core: FromRef<S>,
    Arc<Ingress>: FromRef<S>,
{
    Router::new()
        .route("/fhir/{rtype}", get(search).post(fhir_write::create))
        .route(
            "/fhir/{rtype}/$validate",
            axum::routing::post(fhir_write::validate_op),
        )
        .route("/fhir/{rtype}/{id}", get(read).put(update))
}

/// `PUT /fhir/{type}/{id}`: only Task is updatable (its lifecycle lives in
/// `sources::task_update`); any other type answers 405.
async fn update(
    state: State<Core>,
    ingress: State<Arc<Ingress>>,
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
    // with `edge::RefusalAudited`.
    crate::sources::task_update::put_task(state, ingress, cert, headers, Path(id), body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
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
    State(state): State<Core>,
    cert: ClientCert,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state
        .auth
        .authenticate(&headers, &cert, REFERRER_READ_KINDS)?;
    // A community referrer reads its own referrals (the Task and the
    // ServiceRequest, as the consent rules show a requester) and nothing else.
    if caller.kind == OrgKind::Referrer && !REFERRER_READ_TYPES.contains(&rtype.as_str()) {
        return Err(ApiError::Forbidden(caller.kind.as_str()));
    }
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
    State(state): State<Core>,
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

async fn audit_read(state: &Core, caller: &Caller, id: &str) -> Result<Response, ApiError> {
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
    state: &Core,
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
