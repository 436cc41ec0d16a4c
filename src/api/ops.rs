//! Operator endpoints on the stored state: `GET /ops/deadlines`,
//! `GET /ops/referrals`.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::clocks::{list, ts};
use crate::config::OrgKind;
use crate::edge::{fhir_json, ApiError, ClientCert};
use crate::state::Core;

#[derive(Debug, Deserialize)]
pub struct DeadlineQuery {
    #[serde(default)]
    pub overdue: Option<bool>,
    #[serde(default)]
    pub all: Option<bool>,
}

/// What a caller may ask of the compliance view: an operator anything; a
/// plan only its own referrals (`mcp` is its id, or absent and set to it);
/// a county only its own (`county` is its organization id or county name,
/// or absent and set to it). The figures are counts, days and ratios by
/// plan id, status and clock: no member is named, so the answer discloses
/// no patient data (route table: `Exit::NoPatientData`).
fn own_figures(
    kind: OrgKind,
    org_id: &str,
    county_name: Option<&str>,
    mut filter: crate::referrals_view::Filter,
) -> Result<crate::referrals_view::Filter, ApiError> {
    match kind {
        OrgKind::Mcp => {
            if filter.mcp.as_deref().is_some_and(|m| m != org_id) {
                return Err(ApiError::Denied(
                    "a plan sees the compliance figures of its own referrals only (mcp = its id)"
                        .into(),
                ));
            }
            filter.mcp = Some(org_id.to_string());
        }
        OrgKind::County => {
            let own = |c: &str| {
                c == org_id || county_name.is_some_and(|n| n.eq_ignore_ascii_case(c.trim()))
            };
            if filter.county.as_deref().is_some_and(|c| !own(c)) {
                return Err(ApiError::Denied(
                    "a county sees the compliance figures of its own referrals only (county = its organization id or county name)"
                        .into(),
                ));
            }
            filter.county = Some(org_id.to_string());
        }
        _ => {}
    }
    Ok(filter)
}

/// `GET /ops/deadlines[?overdue=true][&all=true]` (operator): open clocks by due time.
pub async fn get_deadlines(
    State(state): State<Core>,
    cert: ClientCert,
    headers: HeaderMap,
    Query(q): Query<DeadlineQuery>,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers, &cert, &[OrgKind::Operator])?;
    let now = Utc::now();
    let items = list(
        state.store.as_ref(),
        now,
        !q.all.unwrap_or(false),
        q.overdue.unwrap_or(false),
    )
    .await?;
    // The clocks name patients: an operator `read`, audited (durable)
    // before the answer, naming every patient and subject listed.
    let mut entities: Vec<String> = Vec::new();
    let mut named = std::collections::HashSet::new();
    for c in &items {
        for e in c
            .patient
            .iter()
            .map(|p| format!("Patient/{p}"))
            .chain(std::iter::once(c.subject.clone()))
        {
            if named.insert(e.clone()) {
                entities.push(e);
            }
        }
    }
    // One record per `gate::MAX_ENTITIES_PER_AUDIT` references (at least one).
    let chunks: Vec<&[String]> = if entities.is_empty() {
        vec![&[]]
    } else {
        entities
            .chunks(crate::gate::MAX_ENTITIES_PER_AUDIT)
            .collect()
    };
    let records = chunks
        .into_iter()
        .map(|chunk| {
            crate::audit::new_audit(&crate::audit::AuditEntry {
                kind: "read",
                interaction: crate::audit::Interaction::SearchType,
                caller: &caller,
                patient_id: None,
                entities: chunk.to_vec(),
                detail: Some(format!("deadlines: {} clocks", items.len())),
                recorded: now,
            })
        })
        .collect();
    state.store.audit_append(records).await.map_err(|e| {
        tracing::error!(error = %e, "deadlines audit append failed; nothing disclosed");
        ApiError::Store(e)
    })?;
    let overdue = items.iter().filter(|c| c.overdue).count();
    state
        .metrics
        .deadlines_overdue
        .store(overdue as i64, std::sync::atomic::Ordering::Relaxed);
    Ok(fhir_json(
        StatusCode::OK,
        &json!({"now": ts(now), "overdue": overdue, "clocks": items}),
    ))
}

/// `GET /ops/referrals[?mcp=ID][&county=NAME][&from=][&to=]` (operator):
/// the closed-loop referral compliance figures
/// ([`crate::referrals_view::view`]). Aggregates only — counts, days and
/// ratios by CLR status, clock and plan — so nothing about a member is
/// disclosed and nothing is audited.
pub async fn get_referrals(
    State(state): State<Core>,
    cert: ClientCert,
    headers: HeaderMap,
    Query(filter): Query<crate::referrals_view::Filter>,
) -> Result<Response, ApiError> {
    use crate::referrals_view::{view, ViewError};
    let caller = state.authenticate(
        &headers,
        &cert,
        &[OrgKind::Operator, OrgKind::Mcp, OrgKind::County],
    )?;
    let county_name = state
        .cfg
        .organization(&caller.org_id)
        .and_then(|o| o.county.clone());
    let filter = own_figures(caller.kind, &caller.org_id, county_name.as_deref(), filter)?;
    let started = std::time::Instant::now();
    let v = view(state.store.as_ref(), &state.cfg, filter, Utc::now())
        .await
        .map_err(|e| match e {
            ViewError::Filter(problems) => ApiError::Violations(
                problems
                    .into_iter()
                    .map(|(text, param)| crate::edge::Violation {
                        text,
                        expression: Some(param.to_string()),
                    })
                    .collect(),
            ),
            ViewError::Store(e) => ApiError::Store(e),
            ViewError::Rules(e) => ApiError::Internal(e),
        })?;
    tracing::debug!(
        referrals = v.referrals,
        ms = started.elapsed().as_millis() as u64,
        "referral compliance view"
    );
    let body = serde_json::to_value(&v).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(fhir_json(StatusCode::OK, &body))
}
