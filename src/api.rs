//! The HTTP edge: routes, bearer-token authentication, and the one error type
//! that becomes a FHIR `OperationOutcome`.
//!
//! Authentication lives in [`crate::auth`] (static tokens and SMART Backend
//! Services); the FHIR pull API in [`crate::fhir`].
//!
//! Limits are layers: a body limit (`server.max_body_bytes`, 413 above it), a
//! per-request timeout (`server.request_timeout_ms`), and a concurrency limit.
//! `POST /hl7/v2` reads its body itself under the same limit so that an
//! oversize message is answered in HL7 (`AR` with ERR 102), as over MLLP.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use store::Store;

use crate::config::{Config, OrgKind};
use crate::intake::{AdtIntake, Via};
use crate::telemetry::Metrics;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub intake: Arc<AdtIntake>,
    pub metrics: Arc<Metrics>,
    /// Static bearer tokens and SMART Backend Services.
    pub auth: Arc<crate::auth::Auth>,
    pub capability: Arc<serde_json::Value>,
    /// County events, referrals, Task lifecycle, eligibility, deadlines.
    pub county: Arc<crate::county::County>,
    /// Routes what the HTTP writers store, and wakes the delivery workers.
    pub routing: crate::routing::Routing,
    /// The one consent decision point.
    pub disclosure: crate::disclosure::Disclosure,
    /// Public base URL (no trailing slash), for links and `Location`.
    pub base_url: Arc<String>,
}

pub use crate::auth::{Caller, ClientCert};

/// An error at the edge, rendered as an OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Unauthenticated,
    #[error("the bearer token is not known")]
    BadToken,
    #[error("the bearer token and the client certificate name different clients")]
    CredentialMismatch,
    #[error("organizations of kind {0} may not use this endpoint")]
    Forbidden(&'static str),
    #[error("the token's scopes do not cover this resource type and access")]
    InsufficientScope,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the store is not reachable")]
    Unavailable,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated | ApiError::BadToken | ApiError::CredentialMismatch => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) | ApiError::InsufficientScope => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated | ApiError::BadToken | ApiError::CredentialMismatch => {
                "login"
            }
            ApiError::Forbidden(_) | ApiError::InsufficientScope => "forbidden",
            ApiError::UnsupportedMediaType(_) => "structure",
            ApiError::Unavailable => "transient",
            ApiError::Internal(_) => "exception",
        }
    }
}

/// A FHIR OperationOutcome with one issue.
pub fn operation_outcome(
    severity: &str,
    code: &str,
    text: &str,
    expression: Option<&str>,
) -> serde_json::Value {
    let mut issue = json!({ "severity": severity, "code": code, "diagnostics": text });
    if let Some(e) = expression {
        issue["expression"] = json!([e]);
    }
    json!({ "resourceType": "OperationOutcome", "issue": [issue] })
}

pub fn fhir_json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    resp
}

/// Response extension of a 403 for the caller's organization kind (decided
/// in a handler): the kind, which the scope layer's refusal audit records
/// ([`crate::auth::routes::enforce`]).
#[derive(Debug, Clone, Copy)]
pub struct ForbiddenKind(pub &'static str);

/// Response extension of a 403 whose handler already appended its refusal
/// AuditEvent: the scope layer does not record it again.
#[derive(Debug, Clone, Copy)]
pub struct RefusalAudited;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = operation_outcome("error", self.code(), &self.to_string(), None);
        let mut resp = fhir_json(self.status(), &body);
        if let ApiError::Forbidden(kind) = self {
            resp.extensions_mut().insert(ForbiddenKind(kind));
        }
        if matches!(
            self,
            ApiError::Unauthenticated | ApiError::BadToken | ApiError::CredentialMismatch
        ) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The caller of a request: its bearer token and its connection's client
/// certificate (see [`crate::auth`]), checked against the allowed kinds.
pub(crate) fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    cert: &ClientCert,
    allowed: &[OrgKind],
) -> Result<Caller, ApiError> {
    state.auth.authenticate(headers, cert, allowed)
}

/// Every route, without state and layers. Each must have a row in
/// [`crate::auth::routes::ROUTE_SCOPES`] (the test below enumerates them).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hl7/v2", post(hl7_v2))
        .route("/fhir/metadata", get(metadata))
        .merge(crate::county::routes())
        .route("/auth/token", post(crate::auth::smart::token_endpoint))
        .route("/ops/decisions", get(crate::explain::decisions))
        .merge(crate::fhir::routes())
}

pub fn router(state: AppState) -> Router {
    let max_body = state.cfg.server.max_body_bytes;
    let timeout = Duration::from_millis(state.cfg.server.request_timeout_ms);
    routes()
        // The scope every matched route needs, in one place.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::routes::enforce,
        ))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(move |req, next| {
            with_timeout(req, next, timeout)
        }))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::telemetry::count_http_requests,
        ))
        .with_state(state)
}

async fn with_timeout(
    req: axum::extract::Request,
    next: axum::middleware::Next,
    timeout: Duration,
) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => fhir_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &operation_outcome("error", "timeout", "the request took too long", None),
        ),
    }
}

async fn not_found() -> Response {
    fhir_json(
        StatusCode::NOT_FOUND,
        &operation_outcome("error", "not-found", "no such endpoint", None),
    )
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store not reachable");
            ApiError::Unavailable.into_response()
        }
    }
}

async fn metrics(
    State(state): State<AppState>,
    cert: ClientCert,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers, &cert, &[OrgKind::Operator])?;
    let journal = state.store.journal_stats().await.ok();
    let text = state
        .metrics
        .render(&state.store.metrics(), journal.as_ref());
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}

async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !crate::fhir::accepts_json(&headers) {
        return fhir_json(
            StatusCode::NOT_ACCEPTABLE,
            &operation_outcome(
                "error",
                "not-supported",
                "only application/fhir+json and application/json are served",
                None,
            ),
        );
    }
    fhir_json(StatusCode::OK, &state.capability)
}

const HL7_MEDIA: &str = "x-application/hl7-v2+er7";

/// `POST /hl7/v2`: one ER7 message; the reply body is the ACK (in enhanced
/// mode, the commit ACK and then the application ACK, each a whole message,
/// separated by CR LF). Every HL7 answer — an oversize body's `AR` included —
/// is `200` with the ACK as the body: a sender's engine reads the ACK, and a
/// 4xx would look like a transport failure to retry.
async fn hl7_v2(
    State(state): State<AppState>,
    cert: ClientCert,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers, &cert, &[OrgKind::AdtSource])?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !(media == HL7_MEDIA || media == "application/hl7-v2" || media == "text/plain") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be {HL7_MEDIA}"
        )));
    }
    let max = state.cfg.server.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let acks = match read_limited(body, max, declared).await? {
        Ok(bytes) => {
            state
                .intake
                .handle(
                    &bytes,
                    &Via::Http {
                        org_id: caller.org_id,
                    },
                )
                .await
        }
        Err(Oversize { head, len }) => vec![state.intake.oversize(&head, len, max)],
    };
    let body = acks.join("\r\n");
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(HL7_MEDIA));
    Ok(resp)
}

/// A body over the limit: its first bytes (for MSA-2) and its size as far
/// as known (the declared length, or what was read before stopping).
struct Oversize {
    head: Vec<u8>,
    len: usize,
}

/// How much of an oversize body is kept to read its MSH.
const OVERSIZE_HEAD: usize = 8 * 1024;

/// Read a request body of at most `max` bytes. Above that keep only its
/// head, and read (and drop) the rest up to a bound — so the client, still
/// sending, sees the answer rather than a reset — then stop. A declared
/// Content-Length above `max` is oversize whatever arrives.
async fn read_limited(
    body: Body,
    max: usize,
    declared: Option<usize>,
) -> Result<Result<Bytes, Oversize>, ApiError> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut over = declared.is_some_and(|d| d > max);
    let drain_limit = max.saturating_mul(4).max(1 << 20);
    let mut buf: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(max));
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::Internal("could not read the request body".into()))?;
        seen = seen.saturating_add(chunk.len());
        if !over && seen > max {
            over = true;
        }
        if over {
            let room = OVERSIZE_HEAD.saturating_sub(buf.len()).min(chunk.len());
            buf.extend_from_slice(chunk.get(..room).unwrap_or(&[]));
            if seen > drain_limit {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if over {
        buf.truncate(OVERSIZE_HEAD);
        return Ok(Err(Oversize {
            head: buf,
            len: declared.unwrap_or(0).max(seen),
        }));
    }
    Ok(Ok(Bytes::from(buf)))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;

    /// `(method, path pattern)` of every route of [`super::routes`], read
    /// from the router itself (its `Debug` form: route ids to paths, and each
    /// method router's `Allow` header).
    pub(crate) fn enumerate_routes() -> BTreeSet<(String, String)> {
        let all = format!("{:?}", super::routes());
        // The routes, not axum's own fallback router that follows them.
        let dbg = all.split("fallback_router").next().unwrap_or_default();
        let mut paths = std::collections::HashMap::new();
        let mut methods = std::collections::HashMap::new();
        let mut rest = dbg;
        while let Some(i) = rest.find("RouteId(") {
            rest = &rest[i + "RouteId(".len()..];
            let Some(close) = rest.find(')') else { break };
            let id = rest[..close].to_string();
            let after = &rest[close + 1..];
            if let Some(p) = after.strip_prefix(": \"") {
                if let Some(end) = p.find('"') {
                    paths.insert(id, p[..end].to_string());
                }
            } else if after.starts_with(": MethodRouter(") {
                let body = &after[..after.find("RouteId(").unwrap_or(after.len())];
                let key = "allow_header: Bytes(b\"";
                if let Some(a) = body.find(key) {
                    let list = &body[a + key.len()..];
                    let list = &list[..list.find('"').unwrap_or(0)];
                    methods.insert(id, list.to_string());
                }
            }
        }
        assert!(!paths.is_empty(), "no routes found in {dbg}");
        let mut out = BTreeSet::new();
        for (id, path) in &paths {
            let list = methods
                .get(id)
                .unwrap_or_else(|| panic!("no methods found for {path}"));
            for m in list.split(',').filter(|m| *m != "HEAD" && !m.is_empty()) {
                out.insert((m.to_string(), path.clone()));
            }
        }
        out
    }

    /// Issue 14 item 11: every route says what it discloses; a route that
    /// returns patient data names its decision and its audit.
    #[test]
    fn every_route_declares_its_disclosure_decision_and_audit() {
        use crate::auth::routes::{Exit, ROUTE_EXITS};
        let routes = enumerate_routes();
        let table: BTreeSet<(String, String)> = ROUTE_EXITS
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(table.len(), ROUTE_EXITS.len(), "duplicate rows");
        let missing: Vec<_> = routes.difference(&table).collect();
        assert!(
            missing.is_empty(),
            "routes that do not declare what they disclose: {missing:?}"
        );
        let stale: Vec<_> = table.difference(&routes).collect();
        assert!(
            stale.is_empty(),
            "rows for routes that do not exist: {stale:?}"
        );
        for r in ROUTE_EXITS {
            if let Exit::PatientData {
                decided_by,
                audited_by,
            } = r.exit
            {
                assert!(
                    !decided_by.trim().is_empty() && !audited_by.trim().is_empty(),
                    "{} {} returns patient data with no decision or no audit",
                    r.method,
                    r.path
                );
            }
        }
        // The functions the table names exist (a rename breaks this test).
        let _ = crate::county::eligibility::decide_access;
        let _ = crate::county::eligibility::get_eligibility;
        let _ = crate::county::deadlines::get_deadlines;
        let _ = crate::county::tasks::parties;
        let _ = crate::county::tasks::put_task;
        let _ = crate::county::referrals::post_referral;
        let _ = crate::county::referrals::REFUSED_FOR_MEMBER;
        let _ = crate::explain::decisions;
        let _ = crate::fhir::Gate::judge;
        let _ = crate::fhir::Gate::finish;
        let _ = crate::fhir::write::create;
    }

    #[test]
    fn every_route_names_its_scope() {
        use crate::auth::routes::ROUTE_SCOPES;
        let routes = enumerate_routes();
        assert!(routes.contains(&("PUT".into(), "/fhir/{rtype}/{id}".into())));
        let table: BTreeSet<(String, String)> = ROUTE_SCOPES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let missing: Vec<_> = routes.difference(&table).collect();
        assert!(
            missing.is_empty(),
            "routes without a scope requirement: {missing:?}"
        );
        let stale: Vec<_> = table.difference(&routes).collect();
        assert!(
            stale.is_empty(),
            "scope rows for routes that do not exist: {stale:?}"
        );
    }
}
