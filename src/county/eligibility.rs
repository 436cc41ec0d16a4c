//! ECM eligibility per child: a facts document kept per Patient, updated by
//! every relevant case event, evaluated with `cwsgw_program::evaluate`, and
//! the current result stored as an `Observation`.
//!
//! - The **facts** (`{ child, enrollment?, placement?, case?, history? }`,
//!   the shapes of the case events) live in a `Basic` resource
//!   `uuid5("ecm-facts|{patientId}")` (code `{base}/CodeSystem/gateway-record`
//!   `ecm-facts`, the JSON in extension `{base}/StructureDefinition/ecm-facts`).
//!   Each event replaces its own section; `case.closed` sets `case.closedOn`
//!   when the case ids match.
//! - The **result** is an `Observation` `uuid5("ecm-eligibility|{patientId}")`:
//!   code `{base}/CodeSystem/ecm-eligibility` `ecm-pof-evaluation`,
//!   `valueBoolean` = eligible, one `component` per met POF
//!   (`{base}/CodeSystem/ecm-pof`), `effectiveDateTime` = the as-of date, and
//!   the whole evaluation (with reason codes) in extension
//!   `{base}/StructureDefinition/ecm-evaluation` (valueString JSON).
//! - The as-of date is the **event's** `occurredAt` date (Pacific), never
//!   the wall clock, so a replay derives byte-identical resources.
//!   `GET /cws/eligibility/{patientId}` evaluates the stored facts as of today.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::NaiveDate;
use program::{Evaluation, Facts};
use serde_json::{json, Value};

use super::error::CountyError;
use super::rid;
use crate::api::{authenticate, fhir_json, AppState};
use crate::auth::ClientCert;
use crate::config::OrgKind;

pub const FACTS_EXT: &str = "/StructureDefinition/ecm-facts";
pub const EVALUATION_EXT: &str = "/StructureDefinition/ecm-evaluation";
pub const ECM_POF_CS: &str = "/CodeSystem/ecm-pof";

/// Id of the facts record of a patient.
pub fn facts_id(patient_id: &str) -> String {
    rid(&format!("ecm-facts|{patient_id}"))
}

/// Id of the eligibility Observation of a patient.
pub fn observation_id(patient_id: &str) -> String {
    rid(&format!("ecm-eligibility|{patient_id}"))
}

/// The facts JSON stored in a facts record.
pub fn facts_of(record: &Value) -> Option<Value> {
    record
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with(FACTS_EXT))
        })
        .and_then(|e| e.get("valueString"))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
}

/// Fold one (validated) case event into the facts document.
pub fn fold_event(facts: Option<Value>, event: &Value) -> Value {
    let mut f = facts.unwrap_or_else(|| json!({}));
    let old_cin = f.pointer("/child/cin").cloned();
    if let Some(child) = event.get("child") {
        f["child"] = child.clone();
        if child.get("cin").is_none() {
            if let Some(c) = old_cin {
                f["child"]["cin"] = c;
            }
        }
    }
    match event.get("type").and_then(Value::as_str).unwrap_or("") {
        "enrollment.updated" => {
            if let Some(e) = event.get("enrollment") {
                f["enrollment"] = e.clone();
                if f.pointer("/child/cin").is_none() {
                    if let Some(c) = e.get("cin") {
                        f["child"]["cin"] = c.clone();
                    }
                }
            }
        }
        "placement.changed" => {
            if let Some(p) = event.get("placement") {
                f["placement"] = p.clone();
            }
        }
        "case.opened" => {
            if let Some(c) = event.get("case") {
                f["case"] = c.clone();
            }
        }
        "case.closed" => {
            let same = f.pointer("/case/caseId").is_some()
                && f.pointer("/case/caseId") == event.pointer("/case/caseId");
            if same {
                if let Some(d) = event.pointer("/case/closedOn") {
                    f["case"]["closedOn"] = d.clone();
                }
            }
        }
        "foster_care.history" => {
            if let Some(h) = event.get("history") {
                f["history"] = h.clone();
            }
        }
        _ => {}
    }
    f
}

/// Evaluate a facts document (None when it does not hold the facts shape).
pub fn evaluate(facts: &Value, as_of: NaiveDate) -> Option<Evaluation> {
    let bytes = serde_json::to_vec(facts).ok()?;
    let f = Facts::from_json(&bytes).ok()?;
    Some(program::evaluate(&f, as_of))
}

/// The facts record resource.
pub fn facts_record(base: &str, patient_id: &str, facts: &Value) -> Value {
    json!({
        "resourceType": "Basic",
        "id": facts_id(patient_id),
        "code": {"coding": [{"system": format!("{base}/CodeSystem/gateway-record"), "code": "ecm-facts"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "extension": [{"url": format!("{base}{FACTS_EXT}"), "valueString": facts.to_string()}]
    })
}

/// The eligibility Observation.
pub fn observation(base: &str, patient_id: &str, ev: &Evaluation, as_of: NaiveDate) -> Value {
    let components: Vec<Value> = ev
        .pofs
        .iter()
        .map(|p| {
            json!({"code": {"coding": [{"system": format!("{base}{ECM_POF_CS}"), "code": p}]}, "valueBoolean": true})
        })
        .collect();
    let mut o = json!({
        "resourceType": "Observation",
        "id": observation_id(patient_id),
        "status": "final",
        "code": {"coding": [{"system": format!("{base}/CodeSystem/ecm-eligibility"), "code": "ecm-pof-evaluation", "display": "ECM Populations of Focus evaluation"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": as_of.format("%Y-%m-%d").to_string(),
        "valueBoolean": ev.eligible,
        "extension": [{"url": format!("{base}{EVALUATION_EXT}"), "valueString": serde_json::to_string(ev).unwrap_or_default()}]
    });
    if !components.is_empty() {
        o["component"] = Value::Array(components);
    }
    o
}

/// The evaluation JSON stored on an eligibility Observation.
pub fn evaluation_of(obs: &Value) -> Option<Value> {
    obs.get("extension")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with(EVALUATION_EXT))
        })
        .and_then(|e| e.get("valueString"))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
}

/// `GET /cws/eligibility/{patientId}` (county, mcp, ecm_provider, operator):
/// the stored facts evaluated as of today, plus the stored result.
pub async fn get_eligibility(
    State(state): State<AppState>,
    cert: ClientCert,
    headers: HeaderMap,
    Path(patient_id): Path<String>,
) -> Result<Response, CountyError> {
    authenticate(
        &state,
        &headers,
        &cert,
        &[
            OrgKind::County,
            OrgKind::Mcp,
            OrgKind::EcmProvider,
            OrgKind::Operator,
        ],
    )?;
    if !crate::config::valid_fhir_id(&patient_id) {
        return Err(CountyError::NotFound("no such patient".into()));
    }
    let record = state
        .store
        .resource_get("Basic", &facts_id(&patient_id))
        .await?;
    let Some(facts) = record.as_ref().and_then(|r| facts_of(&r.body)) else {
        return Err(CountyError::NotFound(
            "no eligibility facts for this patient".into(),
        ));
    };
    let today = program::pacific::local_date(chrono::Utc::now());
    let ev = evaluate(&facts, today)
        .ok_or_else(|| CountyError::Internal("stored facts do not evaluate".into()))?;
    let mut body = serde_json::to_value(&ev).unwrap_or_default();
    body["patient"] = json!(format!("Patient/{patient_id}"));
    body["asOf"] = json!(today.format("%Y-%m-%d").to_string());
    body["observation"] = json!(format!("Observation/{}", observation_id(&patient_id)));
    Ok(fhir_json(StatusCode::OK, &body))
}

/// `cws-gateway eligibility`: evaluate a facts file, print the JSON result.
pub fn run_cli(input: &[u8], as_of: Option<&str>) -> anyhow::Result<String> {
    let as_of = match as_of {
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| anyhow::anyhow!("--as-of must be YYYY-MM-DD"))?,
        None => program::pacific::local_date(chrono::Utc::now()),
    };
    let facts = Facts::from_json(input).map_err(|e| anyhow::anyhow!("facts: {e}"))?;
    let ev = program::evaluate(&facts, as_of);
    Ok(serde_json::to_string_pretty(&ev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: &str, extra: Value) -> Value {
        let mut e = json!({"type": t, "child": {"clientId": "C1", "name": {"family": "F"}, "birthDate": "2010-01-01", "sex": "female"}});
        if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        e
    }

    #[test]
    fn events_fold_into_facts_that_evaluate() {
        let f = fold_event(
            None,
            &ev(
                "enrollment.updated",
                json!({"enrollment": {"cin": "91000001A", "aidCode": "4M", "planCode": "A", "feeForService": false, "shareOfCost": false, "effectiveOn": "2026-01-01"}}),
            ),
        );
        assert_eq!(f["child"]["cin"], "91000001A");
        let f = fold_event(
            Some(f),
            &ev(
                "case.opened",
                json!({"case": {"caseId": "K", "component": "family_maintenance", "courtOrdered": false, "openedOn": "2025-06-01"}}),
            ),
        );
        let f = fold_event(
            Some(f),
            &ev(
                "case.closed",
                json!({"case": {"caseId": "K", "reason": "other", "closedOn": "2026-01-05", "continueEcm": true}}),
            ),
        );
        assert_eq!(f["case"]["closedOn"], "2026-01-05");
        assert_eq!(f["child"]["cin"], "91000001A", "a CIN once known is kept");
        let e = evaluate(&f, NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()).unwrap();
        assert!(e.eligible, "{e:?}");
        assert!(e.pofs.contains(&"8".to_string()));
        let obs = observation(
            "https://b",
            "p",
            &e,
            NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        );
        assert_eq!(evaluation_of(&obs).unwrap()["eligible"], true);
    }
}
