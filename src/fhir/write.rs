//! `POST /fhir/CarePlan` and `POST /fhir/Consent` (ECM providers and
//! counties): validate, journal, store, answer 201.
//!
//! Order of effects (the journal-before-2xx invariant): the request is
//! validated purely, then journaled (`InputKind::FhirWrite`, raw body kept),
//! then one `complete_with` stores the resource with its search tokens and
//! the `create` audit record and marks the journal record processed, and
//! only then is 201 sent with `Location`. A retried POST of the same body
//! yields the same deterministic id and the journal's dedup key makes it a
//! no-op (200 with the stored resource).
//!
//! Validation (422 `OperationOutcome`, `expression` naming the element):
//! - `resourceType` matches the URL; `id`, when given, is a valid FHIR id;
//! - CarePlan: `subject` references a Patient the caller may see; a
//!   CarePlan without `author` gets the caller's Organization as author;
//! - Consent: our shape (see `disclosure`): `patient`, the consent-kind
//!   category, the grantor-role extension, `dateTime`, `provision.actor` and
//!   `provision.class`; the grantor is checked with
//!   `cwsgw_consent::validate_grantor` against the Patient's `birthDate`;
//!   a `referral_verbal` Consent carries the `consent-explained` extension
//!   with all four flags true.
//! - Security labels the sender put in `meta.security` are kept as sent
//!   (never lowered).
//!
//! Routing the resource onward is the delivery worker's business.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::{Completion, InputKind, NewInput, ResourceWrite};

use super::{Gate, Verdict};
use crate::api::{fhir_json, operation_outcome, ApiError, AppState};
use crate::audit::{self, AuditEntry, Interaction};
use crate::auth::ClientCert;
use crate::auth::{Access, Caller};
use crate::config::OrgKind;
use crate::disclosure::{self, ref_id};

/// Organization kinds that may create.
pub const WRITE_KINDS: &[OrgKind] = &[OrgKind::EcmProvider, OrgKind::County];
/// Types that may be created.
pub const CREATE_TYPES: &[&str] = &["CarePlan", "Consent"];

fn unprocessable(text: &str, expression: &str) -> Response {
    fhir_json(
        StatusCode::UNPROCESSABLE_ENTITY,
        &operation_outcome("error", "invariant", text, Some(expression)),
    )
}

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
    let prefix = if rtype == "Consent" { "cons" } else { "cp" };
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
    state: &AppState,
    caller: &Caller,
    patient_id: &str,
) -> Result<Option<store::StoredResource>, ApiError> {
    let mut gate = Gate::new(state, caller, Interaction::Read);
    let Some(p) = state
        .store
        .resource_get("Patient", patient_id)
        .await
        .map_err(|_| ApiError::Unavailable)?
    else {
        // Audited like a withheld one: the same answer, the same work.
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

/// `POST /fhir/{CarePlan|Consent}`.
pub async fn create(
    State(state): State<AppState>,
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
    let Ok(mut res) = serde_json::from_slice::<Value>(&body) else {
        return Ok(fhir_json(
            StatusCode::BAD_REQUEST,
            &operation_outcome("error", "structure", "the body is not JSON", None),
        ));
    };
    if !res.is_object() {
        return Ok(unprocessable(
            "the body must be a JSON object",
            "resourceType",
        ));
    }
    if res.get("resourceType").and_then(Value::as_str) != Some(rtype.as_str()) {
        return Ok(unprocessable(
            "resourceType must match the URL",
            "resourceType",
        ));
    }
    let patient_id = if rtype == "Consent" {
        if let Some((text, expr)) = consent_shape_problem(&res) {
            return Ok(unprocessable(text, expr));
        }
        res.get("patient").and_then(|p| ref_id(p, "Patient"))
    } else {
        res.get("subject").and_then(|p| ref_id(p, "Patient"))
    };
    let subject_expr = if rtype == "Consent" {
        "Consent.patient"
    } else {
        "CarePlan.subject"
    };
    let Some(patient_id) = patient_id else {
        return Ok(unprocessable(
            "the subject must reference a Patient",
            subject_expr,
        ));
    };
    let Some(patient) = visible_patient(&state, &caller, &patient_id).await? else {
        return Ok(unprocessable(
            "the referenced Patient is not known",
            subject_expr,
        ));
    };
    if rtype == "Consent" {
        if let Some(resp) = check_grantor(&res, &patient.body) {
            return Ok(resp);
        }
    }
    // A care plan without an author is the posting organization's: the
    // warm hand-off (`care-plan-handoff` routing) never sends a provider
    // its own care plan.
    if rtype == "CarePlan" && res.get("author").is_none() {
        res["author"] = json!({"reference": format!("Organization/{}", caller.org_id)});
    }
    let id = match res.get("id") {
        None => deterministic_id(&rtype, &caller.org_id, &body),
        Some(Value::String(s)) if crate::config::valid_fhir_id(s) => s.clone(),
        Some(_) => return Ok(unprocessable("id is not a valid FHIR id", "id")),
    };
    res["id"] = json!(id);
    if let Some(existing) = state
        .store
        .resource_get(&rtype, &id)
        .await
        .map_err(|_| ApiError::Unavailable)?
    {
        let mut a = existing.body.clone();
        if let Some(m) = a.get_mut("meta").and_then(Value::as_object_mut) {
            m.remove("versionId");
            m.remove("lastUpdated");
        }
        let mut b = res.clone();
        if let Some(m) = b.get_mut("meta").and_then(Value::as_object_mut) {
            m.remove("versionId");
            m.remove("lastUpdated");
        }
        let strip_empty_meta = |v: &mut Value| {
            if v.get("meta")
                .and_then(Value::as_object)
                .is_some_and(|m| m.is_empty())
            {
                if let Some(o) = v.as_object_mut() {
                    o.remove("meta");
                }
            }
        };
        strip_empty_meta(&mut a);
        strip_empty_meta(&mut b);
        if a != b {
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
    let now = Utc::now();
    let input = NewInput {
        kind: InputKind::FhirWrite,
        source_org: caller.org_id.clone(),
        dedup_key: format!("{rtype}/{id}"),
        received_at: now,
        raw: body.to_vec(),
        meta: json!({"resourceType": rtype, "id": id, "client": caller.client_id}),
    };
    let journal_id = match state.store.append(input).await {
        Ok(o) => o.id(),
        Err(e) => {
            tracing::error!(error = %e, "journaling a FHIR write failed");
            return Err(ApiError::Unavailable);
        }
    };
    let write = ResourceWrite {
        resource_type: rtype.clone(),
        id: id.clone(),
        patient_id: Some(patient_id.clone()),
        index: super::index::tokens(&res),
        body: res,
    };
    let audit = audit::new_audit(&AuditEntry {
        kind: "create",
        interaction: Interaction::Create,
        caller: &caller,
        patient_id: Some(&patient_id),
        entities: vec![format!("{rtype}/{id}")],
        detail: None,
        recorded: now,
    });
    // Route it (an ECM provider's CarePlan or Consent → the county, under
    // consent at send time) in the same transaction.
    let input = crate::routing::RouteInput {
        event: None,
        source_org: caller.org_id.clone(),
        written: vec![write.body.clone()],
        out_of_county: false,
        event_time: None,
    };
    let deliveries = state
        .routing
        .deliveries_for(state.store.as_ref(), &input)
        .await
        .map_err(|e| {
            tracing::error!(journal_id, error = %e, "routing a FHIR write failed");
            ApiError::Unavailable
        })?;
    let routed = !deliveries.is_empty();
    // A care plan is reviewed every 6 months (DOMAIN.md timelines).
    let clocks: Vec<store::ClockRow> = match (write.resource_type.as_str(), &write.patient_id) {
        ("CarePlan", Some(patient)) => vec![crate::county::deadlines::open(
            &crate::county::deadlines::ClockSpec {
                clock: program::Clock::CarePlanReview,
                patient_id: patient.clone(),
                subject: format!("CarePlan/{}", write.id),
                start: chrono::Utc::now(),
                expedited: false,
            },
            &state.county.calendar,
        )],
        _ => Vec::new(),
    };
    let done = state
        .store
        .complete_with(
            journal_id,
            Completion {
                writes: vec![write],
                audits: vec![audit],
                deliveries,
                clocks,
            },
        )
        .await
        .map_err(|e| {
            tracing::error!(journal_id, error = %e, "storing a FHIR write failed");
            ApiError::Unavailable
        })?;
    if routed {
        state.routing.waker.wake();
    }
    let Some(stored) = done.resources.into_iter().next() else {
        return Err(ApiError::Internal("the store returned no resource".into()));
    };
    let status = if done.already_processed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    tracing::info!(resource = %format!("{rtype}/{id}"), org = %caller.org_id, "FHIR resource created");
    Ok(created(&state, status, &stored))
}

fn created(state: &AppState, status: StatusCode, r: &store::StoredResource) -> Response {
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

/// Check the grantor of a Consent against the Patient's birth date; a 422
/// explaining why when it may not grant.
fn check_grantor(res: &Value, patient: &Value) -> Option<Response> {
    let rec = disclosure::consent_from_fhir(res)?;
    // A referral consent shows the four things explained (Guide for CWS,
    // Consent): the consent-explained extension with every flag true.
    if rec.kind == consent::ConsentKind::ReferralVerbal {
        let explained = disclosure::Explained::from_fhir(res).unwrap_or_default();
        if let Some(flag) = explained.first_missing() {
            return Some(fhir_json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &operation_outcome(
                    "error",
                    "business-rule",
                    &format!("a referral consent must show, in the consent-explained extension, that the provider and service, the information shared, how long it is shared and the right to withdraw were explained; {flag} is not true"),
                    Some("Consent.extension"),
                ),
            ));
        }
    }
    let Some(birth) = patient
        .get("birthDate")
        .and_then(Value::as_str)
        .and_then(|b| chrono::NaiveDate::parse_from_str(b, "%Y-%m-%d").ok())
    else {
        return Some(unprocessable(
            "the Patient has no birth date, so the grantor cannot be checked",
            "Consent.extension",
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
        Err(e) => Some(fhir_json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &operation_outcome(
                "error",
                "business-rule",
                &e.to_string(),
                Some("Consent.extension"),
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_valid() {
        let a = deterministic_id("CarePlan", "ecm-1", b"{}");
        assert_eq!(a, deterministic_id("CarePlan", "ecm-1", b"{}"));
        assert_ne!(a, deterministic_id("CarePlan", "ecm-2", b"{}"));
        assert!(crate::config::valid_fhir_id(&a));
        assert!(deterministic_id("Consent", "x", b"").starts_with("cons-"));
    }

    #[test]
    fn consent_shape_is_checked_element_by_element() {
        let base = "https://gw.example/fhir";
        let r = vec!["ecm-1".to_string()];
        let c = vec!["case".to_string()];
        let good = disclosure::consent_to_fhir(&disclosure::ConsentSpec {
            canonical_base: base,
            id: "c1",
            identifier: None,
            patient_id: "p1",
            kind: "release_of_information",
            grantor_role: "parent",
            grantor_name: None,
            recorded_by_org: "county-fresno",
            recorded_at: "2026-01-10T09:00:00Z",
            recipients: &r,
            categories: &c,
            start: "2026-01-10",
            end: None,
        });
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
