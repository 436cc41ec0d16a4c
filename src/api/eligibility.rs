//! `GET /cws/eligibility/{patient_id}`: a child's ECM eligibility, as much
//! of it as the caller may see (the decision and the evaluation are in
//! [`crate::records::eligibility`]).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use crate::audit::{self, AuditEntry, Interaction};
use crate::config::OrgKind;
use crate::disclosure::PatientContext;
use crate::edge::{fhir_json, operation_outcome, ApiError, ClientCert};
use crate::records::eligibility::{
    answer, basis, detailed_reasons, evaluate, facts_id, facts_of, observation_id, Basis, View,
    DECISION_TYPES,
};
use crate::state::Core;

/// The one 404 of this endpoint: an unknown patient, and a patient the
/// caller may not know of, answer exactly this (same body, same headers).
pub fn not_found() -> Response {
    fhir_json(
        StatusCode::NOT_FOUND,
        &operation_outcome(
            "error",
            "not-found",
            "no eligibility is known for this patient",
            None,
        ),
    )
}

/// `GET /cws/eligibility/{patientId}` (county, mcp, ecm_provider, operator):
/// the stored facts evaluated as of today — a disclosure decided per caller
/// ([`basis`], then [`detailed_reasons`] for a summary: the decision of
/// [`crate::records::eligibility::decide_access`]) and audited like a FHIR
/// read: every answer, the refusals and unknown patients included, appends
/// its AuditEvent before the response is sent (503 and nothing disclosed if
/// that fails).
pub async fn get_eligibility(
    State(state): State<Core>,
    cert: ClientCert,
    headers: HeaderMap,
    Path(patient_id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(
        &headers,
        &cert,
        &[
            OrgKind::County,
            OrgKind::Mcp,
            OrgKind::EcmProvider,
            OrgKind::Operator,
        ],
    )?;
    let now = chrono::Utc::now();
    let operator = caller.kind == OrgKind::Operator;
    let audit = |kind: &'static str, patient: Option<&str>, detail: String| {
        let entities = patient
            .map(|p| vec![format!("Observation/{}", observation_id(p))])
            .unwrap_or_default();
        audit::new_audit(&AuditEntry {
            kind,
            interaction: Interaction::Read,
            caller: &caller,
            patient_id: patient,
            entities,
            detail: Some(format!("eligibility: {detail}")),
            recorded: now,
        })
    };
    if !crate::config::valid_fhir_id(&patient_id) {
        append(
            &state,
            audit("refusal", None, "not-found invalid-id".into()),
        )
        .await?;
        return Ok(not_found());
    }
    let record = state
        .store
        .resource_get("Basic", &facts_id(&patient_id))
        .await?;
    let today = program::pacific::local_date(now);
    // Who the caller is to this child, decided before anything is
    // evaluated: an unknown patient (no facts record) and a refused caller
    // make the same reads and the same decision, and neither evaluates.
    let (basis, pctx) = if operator {
        (Basis::Full("R0-operator permit.operator".into()), None)
    } else {
        let resources = state
            .store
            .resources_by_patient_types(&patient_id, &DECISION_TYPES)
            .await?;
        let pctx = PatientContext::from_resources(&state.cfg, &patient_id, &resources);
        let b = basis(&state.disclosure, &caller.org_id, &pctx, &resources, now);
        (b, Some(pctx))
    };
    let summary = match basis {
        Basis::Refused(why) => {
            let why = if record.is_some() {
                why
            } else {
                "not-found no-facts".into()
            };
            append(&state, audit("refusal", Some(&patient_id), why)).await?;
            return Ok(not_found());
        }
        Basis::Full(why) => Err(why),
        Basis::Summary(why) => Ok(why),
    };
    let ev = record
        .as_ref()
        .and_then(|r| facts_of(&r.body))
        .and_then(|f| evaluate(&f, today));
    let Some(ev) = ev else {
        append(
            &state,
            audit("refusal", Some(&patient_id), "not-found no-facts".into()),
        )
        .await?;
        return Ok(not_found());
    };
    let (view, why) = match summary {
        Err(why) => (View::Full, why),
        Ok(why) => {
            let detailed = pctx
                .as_ref()
                .map(|p| detailed_reasons(&state.disclosure, &caller.org_id, p, &ev, now))
                .unwrap_or_default();
            (View::Summary(detailed), why)
        }
    };
    let kind = if operator { "read" } else { "disclosure" };
    let shown = match &view {
        View::Full => "full".to_string(),
        View::Summary(d) => format!(
            "summary, details of {} of {} reasons",
            d.len(),
            ev.reasons.len()
        ),
    };
    append(
        &state,
        audit(kind, Some(&patient_id), format!("{why} ({shown})")),
    )
    .await?;
    Ok(fhir_json(
        StatusCode::OK,
        &answer(&patient_id, &ev, &view, today),
    ))
}

/// Append one audit record (durable) before the answer goes out.
async fn append(state: &Core, record: store::NewAudit) -> Result<(), ApiError> {
    state
        .store
        .audit_append(vec![record])
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::error!(error = %e, "eligibility audit append failed; nothing disclosed");
            ApiError::Store(e)
        })
}
