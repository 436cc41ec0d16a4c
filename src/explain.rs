//! `explain`: what a recipient may see of a youth now, why, what not, and
//! what consent would change that — `cws-gateway explain --patient CIN
//! --recipient ORG` and `GET /ops/decisions?patient=…&recipient=…`
//! (operators; the lookup is audited as an operator `read`).
//!
//! The patient is found by Medi-Cal CIN through the search index (the
//! `identifier` token `{canonical_base}/identifier/medi-cal-cin|CIN`, else a
//! bare-value match on an identifier typed `MA`); the HTTP endpoint also
//! accepts a Patient id. The answer is `Policy::explain` over the patient's
//! current context (consents and what each shows was explained, plan,
//! assigned ECM provider, whom self-referrals were made to) at
//! `now`, one line per consent category, plus the context it relied on
//! (ids only) and, under `context.not_counted`, the referral consents on
//! file that count for nothing with the explained flags their records do
//! not show (`missing`), so a privacy officer sees them. The output names
//! the patient by id, never by CIN or name.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use consent::{Effect, Purpose};
use serde_json::{json, Value};
use store::{ResourceQuery, Store};

use crate::audit::{self, AuditEntry, Interaction};
use crate::config::{Config, OrgKind};
use crate::disclosure::{self, PatientContext};
use crate::edge::ClientCert;
use crate::edge::{fhir_json, operation_outcome, ApiError};
use crate::resources::index::{identifier_token, IDENTIFIER_VALUE};
use crate::state::Core;

/// Why an explanation could not be given (no PHI: the CIN is not echoed).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// No Patient has that CIN (or id).
    #[error("no patient with that identifier is known")]
    UnknownPatient,
    /// The recipient is not a configured organization.
    #[error("recipient {0} is not a configured organization")]
    UnknownRecipient(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

fn has_ma_identifier(p: &Value, value: &str) -> bool {
    p.get("identifier")
        .and_then(Value::as_array)
        .is_some_and(|ids| {
            ids.iter().any(|i| {
                i.get("value").and_then(Value::as_str) == Some(value)
                    && i.pointer("/type/coding")
                        .and_then(Value::as_array)
                        .is_some_and(|c| {
                            c.iter()
                                .any(|c| c.get("code").and_then(Value::as_str) == Some("MA"))
                        })
            })
        })
}

/// The Patient id of a Medi-Cal CIN, if known (the most recently updated
/// active Patient when several carry it).
pub async fn patient_by_cin(
    cfg: &Config,
    store: &dyn Store,
    cin: &str,
) -> Result<Option<String>, store::StoreError> {
    if cin.is_empty() || cin.len() > 64 {
        return Ok(None);
    }
    let system = format!("{}/identifier/medi-cal-cin", cfg.server.canonical_base);
    let q = ResourceQuery {
        resource_type: "Patient".into(),
        params: vec![("identifier".into(), vec![identifier_token(&system, cin)])],
        limit: 20,
        ..ResourceQuery::default()
    };
    let mut found = store.resource_search(&q).await?;
    if found.is_empty() {
        let q = ResourceQuery {
            resource_type: "Patient".into(),
            params: vec![(IDENTIFIER_VALUE.into(), vec![cin.to_string()])],
            limit: 20,
            ..ResourceQuery::default()
        };
        found = store
            .resource_search(&q)
            .await?
            .into_iter()
            .filter(|p| has_ma_identifier(&p.body, cin))
            .collect();
    }
    // Prefer active patients (a merged-away record is inactive), newest first.
    found.sort_by_key(|p| {
        (
            p.body.get("active") != Some(&Value::Bool(false)),
            p.last_updated,
        )
    });
    Ok(found.pop().map(|p| p.id))
}

fn purpose_code(p: Purpose) -> &'static str {
    match p {
        Purpose::Referral => "referral",
        Purpose::CareCoordination => "care_coordination",
        Purpose::Notification => "notification",
        Purpose::Pull => "pull",
    }
}

/// Parse a purpose code (`pull` when absent).
pub fn parse_purpose(s: Option<&str>) -> Option<Purpose> {
    Some(match s.unwrap_or("pull") {
        "pull" => Purpose::Pull,
        "referral" => Purpose::Referral,
        "care_coordination" => Purpose::CareCoordination,
        "notification" => Purpose::Notification,
        _ => return None,
    })
}

/// Why a consent in `context.not_counted` counts for nothing.
pub const NOT_COUNTED_WHY: &str = "a referral consent counts only when its record shows that the provider and service, the information shared, the duration and the right to withdraw were explained; this record does not show the flags under missing";

/// The explained flags a consent record does not show as `true` (false,
/// or missing; all four when the record has no `consent-explained`
/// extension), in [`disclosure::EXPLAINED_FLAGS`] order.
pub fn missing_flags(explained: Option<&disclosure::Explained>) -> Vec<&'static str> {
    let shown = explained.map_or([None; 4], |e| {
        [
            e.provider,
            e.information_shared,
            e.duration,
            e.right_to_withdraw,
        ]
    });
    disclosure::EXPLAINED_FLAGS
        .iter()
        .zip(shown)
        .filter(|(_, v)| *v != Some(true))
        .map(|(k, _)| *k)
        .collect()
}

/// Explain for a known Patient id.
pub async fn explain_patient(
    cfg: &Config,
    store: &dyn Store,
    patient_id: &str,
    recipient_org: &str,
    purpose: Purpose,
    now: DateTime<Utc>,
) -> Result<Value, ExplainError> {
    let to = disclosure::recipient(cfg, recipient_org)
        .ok_or_else(|| ExplainError::UnknownRecipient(recipient_org.to_string()))?;
    let ctx = PatientContext::load(cfg, store, patient_id).await?;
    let policy = consent::Policy::default_policy();
    let ex = policy.explain(
        patient_id,
        &to,
        &ctx.consents,
        &ctx.engine_context(purpose, now),
    );
    let may: Vec<&str> = ex
        .categories
        .iter()
        .filter(|c| c.effect == Effect::Permit)
        .map(|c| c.category.code())
        .collect();
    let may_not: Vec<&str> = ex
        .categories
        .iter()
        .filter(|c| c.effect != Effect::Permit)
        .map(|c| c.category.code())
        .collect();
    Ok(json!({
        "patient": patient_id,
        "recipient": recipient_org,
        "purpose": purpose_code(purpose),
        "at": now.to_rfc3339(),
        "may_see": may,
        "may_not_see": may_not,
        "categories": serde_json::to_value(&ex.categories).unwrap_or(Value::Null),
        "context": {
            "consents": ctx.consents.iter().map(|c| json!({
                "id": c.id,
                "kind": format!("{:?}", c.kind),
                "recipients": c.recipients,
                "grantor_role": c.grantor_role,
                "active": c.withdrawn_at.is_none_or(|w| w > now) && c.start <= now && c.end.is_none_or(|e| e > now),
                // What the record shows was explained (Guide for CWS, Consent);
                // null when the record carries no such extension.
                "explained": ctx.explained.iter().find(|(id, _)| *id == c.id).map(|(_, e)| e),
            })).collect::<Vec<_>>(),
            // Referral consents on file that count for nothing: the record
            // does not show the four explained flags (`disclosure::consent_counts`).
            "not_counted": ctx.not_counted.iter().map(|c| {
                let explained = ctx.explained.iter().find(|(id, _)| *id == c.id).map(|(_, e)| e);
                json!({
                    "id": c.id,
                    "kind": format!("{:?}", c.kind),
                    "recipients": c.recipients,
                    "grantor_role": c.grantor_role,
                    "explained": explained,
                    "missing": missing_flags(explained),
                    "why": NOT_COUNTED_WHY,
                })
            }).collect::<Vec<_>>(),
            "member_mcp": ctx.member_mcp,
            "assigned_ecm": ctx.assigned_ecm,
            "self_referral_to": ctx.self_referral_to(),
            "source_county": ctx.source_county,
        }
    }))
}

/// Explain by CIN (the CLI).
pub async fn explain_cin(
    cfg: &Config,
    store: &dyn Store,
    cin: &str,
    recipient_org: &str,
    purpose: Purpose,
    now: DateTime<Utc>,
) -> Result<Value, ExplainError> {
    let pid = patient_by_cin(cfg, store, cin)
        .await?
        .ok_or(ExplainError::UnknownPatient)?;
    let out = explain_patient(cfg, store, &pid, recipient_org, purpose, now).await?;
    audit_cli_read(
        store,
        Some(&pid),
        vec![format!("Patient/{pid}")],
        format!("explain for {recipient_org} (cli)"),
        now,
    )
    .await?;
    Ok(out)
}

/// An operator `read` by the command line (client and organization `cli`),
/// appended before the command prints what it read.
pub async fn audit_cli_read(
    store: &dyn Store,
    patient: Option<&str>,
    entities: Vec<String>,
    detail: String,
    now: DateTime<Utc>,
) -> Result<(), store::StoreError> {
    let caller = crate::auth::Caller {
        client_id: "cli".into(),
        org_id: "cli".into(),
        kind: OrgKind::Operator,
        scopes: None,
    };
    store
        .audit_append(vec![audit::new_audit(&AuditEntry {
            kind: "read",
            interaction: Interaction::Read,
            caller: &caller,
            patient_id: patient,
            entities,
            detail: Some(detail),
            recorded: now,
        })])
        .await
        .map(|_| ())
}

/// `GET /ops/decisions?patient=CIN|id&recipient=ORG[&purpose=…]` (operators).
pub async fn decisions(
    State(state): State<Core>,
    cert: ClientCert,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = state
        .auth
        .authenticate(&headers, &cert, &[OrgKind::Operator])?;
    let bad = |p: &str, text: &str| {
        fhir_json(
            StatusCode::BAD_REQUEST,
            &operation_outcome("error", "required", text, Some(p)),
        )
    };
    let Some(patient) = q.get("patient").filter(|p| !p.is_empty()) else {
        return Ok(bad("patient", "patient (a CIN or Patient id) is required"));
    };
    let Some(recipient) = q.get("recipient").filter(|p| !p.is_empty()) else {
        return Ok(bad(
            "recipient",
            "recipient (an organization id) is required",
        ));
    };
    let Some(purpose) = parse_purpose(q.get("purpose").map(String::as_str)) else {
        return Ok(bad(
            "purpose",
            "purpose must be pull, referral, care_coordination or notification",
        ));
    };
    let store = state.store.as_ref();
    let cfg = state.cfg.as_ref();
    let pid = match patient_by_cin(cfg, store, patient).await {
        Ok(Some(p)) => Some(p),
        Ok(None) if crate::config::valid_fhir_id(patient) => store
            .resource_get("Patient", patient)
            .await
            .map_err(|_| ApiError::Unavailable)?
            .map(|p| p.id),
        Ok(None) => None,
        Err(_) => return Err(ApiError::Unavailable),
    };
    let not_found = |text: &str| {
        fhir_json(
            StatusCode::NOT_FOUND,
            &operation_outcome("error", "not-found", text, None),
        )
    };
    let Some(pid) = pid else {
        return Ok(not_found("no patient with that identifier is known"));
    };
    let now = Utc::now();
    let body = match explain_patient(cfg, store, &pid, recipient, purpose, now).await {
        Ok(b) => b,
        Err(ExplainError::Store(_)) => return Err(ApiError::Unavailable),
        Err(e) => return Ok(not_found(&e.to_string())),
    };
    state
        .store
        .audit_append(vec![audit::new_audit(&AuditEntry {
            kind: "read",
            interaction: Interaction::Read,
            caller: &caller,
            patient_id: Some(&pid),
            entities: vec![format!("Patient/{pid}")],
            detail: Some(format!("explain for {recipient}")),
            recorded: now,
        })])
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let mut resp = fhir_json(StatusCode::OK, &body);
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disclosure::Explained;

    #[test]
    fn missing_flags_names_each_flag_not_shown_true() {
        assert_eq!(missing_flags(None), disclosure::EXPLAINED_FLAGS.to_vec());
        let partly = Explained {
            provider: Some(true),
            information_shared: Some(false),
            duration: None,
            right_to_withdraw: Some(true),
        };
        assert_eq!(
            missing_flags(Some(&partly)),
            vec![
                disclosure::EXPLAINED_FLAGS[1],
                disclosure::EXPLAINED_FLAGS[2]
            ]
        );
        let all = Explained {
            provider: Some(true),
            information_shared: Some(true),
            duration: Some(true),
            right_to_withdraw: Some(true),
        };
        assert!(missing_flags(Some(&all)).is_empty());
    }
}
