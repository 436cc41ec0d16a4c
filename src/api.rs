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

pub mod eligibility;
pub mod ops;
pub mod route_scopes;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::OrgKind;
use crate::edge::ClientCert;
use crate::edge::{fhir_json, operation_outcome, ApiError};
use crate::sources::adt::intake::AdtIntake;
use crate::sources::Ingress;
use crate::state::Core;

/// The router's state: the services every handler may use ([`Core`]),
/// and the ingress services only the sources' handlers use. Handlers take
/// the narrow part they need (`State<Core>`, `State<Arc<Ingress>>`,
/// `State<Arc<AdtIntake>>`) through [`FromRef`].
#[derive(Clone)]
pub struct Gateway {
    pub core: Core,
    /// Case events, referrals, Task updates and FHIR writes.
    pub ingress: Arc<Ingress>,
    /// ADT intake (`POST /hl7/v2`; MLLP holds its own handle).
    pub intake: Arc<AdtIntake>,
}

impl FromRef<Gateway> for Core {
    fn from_ref(g: &Gateway) -> Core {
        g.core.clone()
    }
}

impl FromRef<Gateway> for Arc<Ingress> {
    fn from_ref(g: &Gateway) -> Arc<Ingress> {
        g.ingress.clone()
    }
}

impl FromRef<Gateway> for Arc<AdtIntake> {
    fn from_ref(g: &Gateway) -> Arc<AdtIntake> {
        g.intake.clone()
    }
}

/// Every route, without state and layers. Each must have a row in
/// [`crate::api::route_scopes::ROUTE_SCOPES`] (the test below enumerates them).
pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hl7/v2", post(crate::sources::adt::http::hl7_v2))
        .route("/fhir/metadata", get(metadata))
        .merge(crate::sources::routes())
        .route(
            "/cws/eligibility/{patient_id}",
            get(eligibility::get_eligibility),
        )
        .route("/ops/deadlines", get(ops::get_deadlines))
        .route("/ops/rtf", get(crate::sources::rtf::get_rtf))
        .route("/ecm/rtf", post(crate::sources::rtf::post_rtf))
        .route("/ops/referrals", get(ops::get_referrals))
        .route("/auth/token", post(token::token_endpoint))
        .route("/ops/decisions", get(crate::explain::decisions))
        .merge(crate::fhir::routes())
}

pub fn router(state: Gateway) -> Router {
    let max_body = state.core.cfg.server.max_body_bytes;
    let timeout = Duration::from_millis(state.core.cfg.server.request_timeout_ms);
    routes()
        // The scope every matched route needs, in one place.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::api::route_scopes::enforce,
        ))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(move |req, next| {
            with_timeout(req, next, timeout)
        }))
        .layer(axum::middleware::from_fn_with_state(
            state.core.metrics.clone(),
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

async fn readyz(State(state): State<Core>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store not reachable");
            ApiError::Unavailable.into_response()
        }
    }
}

async fn metrics(
    State(state): State<Core>,
    cert: ClientCert,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authenticate(&headers, &cert, &[OrgKind::Operator])?;
    let journal = state.store.journal_stats().await.ok();
    let mut text = state
        .metrics
        .render(&state.store.metrics(), journal.as_ref());
    text.push_str(&referral_metrics(&state).await);
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}

/// The closed-loop referral figures as metrics
/// ([`crate::referrals_view::render_metrics`]): computed on a scrape at most
/// once per [`crate::referrals_view::METRICS_TTL`] (reads only, so an idle
/// gateway still commits nothing), the last text reused in between. A
/// failure leaves them out of this scrape and is logged.
async fn referral_metrics(state: &Core) -> String {
    use crate::referrals_view::{render_metrics, view, Filter, METRICS_TTL};
    state
        .metrics
        .referrals_text
        .get_or_compute(METRICS_TTL, || async {
            let started = std::time::Instant::now();
            match view(
                state.store.as_ref(),
                &state.cfg,
                Filter::default(),
                chrono::Utc::now(),
            )
            .await
            {
                Ok(v) => {
                    tracing::debug!(
                        referrals = v.referrals,
                        ms = started.elapsed().as_millis() as u64,
                        "referral metrics computed"
                    );
                    Some(render_metrics(&v))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "referral metrics not computed");
                    None
                }
            }
        })
        .await
}

async fn metadata(State(state): State<Core>, headers: HeaderMap) -> Response {
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
        use crate::api::route_scopes::{Exit, ROUTE_EXITS};
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
        let _ = crate::records::eligibility::decide_access;
        let _ = crate::records::eligibility::basis;
        let _ = crate::records::eligibility::detailed_reasons;
        let _ = crate::api::eligibility::get_eligibility;
        let _ = crate::api::ops::get_deadlines;
        let _ = crate::sources::rtf::get_rtf;
        let _ = crate::sources::rtf::audit_export;
        let _ = crate::sources::rtf::import;
        let _ = crate::api::ops::get_referrals;
        let _ = crate::sources::task_update::parties;
        let _ = crate::sources::task_update::put_task;
        let _ = crate::sources::referral::post_referral;
        let _ = crate::sources::referral::REFUSED_FOR_MEMBER;
        let _ = crate::explain::decisions;
        let _ = crate::gate::Gate::judge;
        let _ = crate::gate::Gate::finish;
        let _ = crate::gate::Gate::finish_count;
        let _ = crate::sources::fhir_write::create;
        let _ = crate::sources::fhir_write::derive_create;
        let _ = crate::sources::fhir_write::validate_op;
    }

    #[test]
    fn every_route_names_its_scope() {
        use crate::api::route_scopes::ROUTE_SCOPES;
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
