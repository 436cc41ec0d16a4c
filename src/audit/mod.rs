//! The audit trail of the FHIR API: one FHIR `AuditEvent` per disclosure,
//! refusal and operator read, appended to the store's hash-chained audit
//! table (`Store::audit_append`, one batch per request), served to operators
//! as `AuditEvent` resources, and checked by `cws-gateway audit verify`.
//!
//! Invariants:
//! - **Every request that returns or withholds patient data appends its
//!   records before the response is sent**; if the append fails, the request
//!   fails (503) and nothing is disclosed.
//! - Records carry ids, codes and counts only — resource references, the
//!   deciding rule and reason code — never names, CINs, birth dates or
//!   addresses (the audit body is itself served to operators and may be
//!   logged).
//! - Kinds: `disclosure` (resources returned to a non-operator caller),
//!   `refusal` (resources withheld from it, with the rule and reason), `read`
//!   (an operator read; operators bypass consent and every read is
//!   recorded), `create` (a resource received through the API).

pub mod trail;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use store::NewAudit;

use crate::auth::Caller;

/// `AuditEvent.subtype` codes (restful-interaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `GET /fhir/{type}/{id}`.
    Read,
    /// `GET /fhir/{type}?…`.
    SearchType,
    /// `POST /fhir/{type}`.
    Create,
    /// `PUT /fhir/{type}/{id}`.
    Update,
}

impl Interaction {
    fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::SearchType => "search-type",
            Interaction::Create => "create",
            Interaction::Update => "update",
        }
    }
    fn action(self) -> &'static str {
        match self {
            Interaction::Read => "R",
            Interaction::SearchType => "E",
            Interaction::Create => "C",
            Interaction::Update => "U",
        }
    }
}

/// What one audit record is about.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// `disclosure` | `refusal` | `read` | `create`.
    pub kind: &'static str,
    /// The interaction.
    pub interaction: Interaction,
    /// The caller.
    pub caller: &'a Caller,
    /// The patient concerned, if any.
    pub patient_id: Option<&'a str>,
    /// `Type/id` of every resource concerned.
    pub entities: Vec<String>,
    /// For refusals: `rule reason` codes; otherwise empty.
    pub detail: Option<String>,
    /// When.
    pub recorded: DateTime<Utc>,
}

/// The AuditEvent body of one entry.
pub fn audit_event(e: &AuditEntry<'_>) -> Value {
    let mut entity: Vec<Value> = Vec::new();
    if let Some(p) = e.patient_id {
        entity.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
        }));
    }
    for r in &e.entities {
        entity.push(json!({
            "what": {"reference": r},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"}
        }));
    }
    let refused = e.kind == "refusal";
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": e.interaction.code()}],
        "action": e.interaction.action(),
        "recorded": e.recorded.to_rfc3339_opts(SecondsFormat::Micros, true),
        "outcome": if refused { "4" } else { "0" },
        "purposeOfEvent": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": if e.caller.kind == crate::config::OrgKind::Operator { "HOPERAT" } else { "TREAT" }
        }]}],
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "who": {"reference": format!("Organization/{}", e.caller.org_id)},
            "altId": e.caller.client_id,
            "requestor": true
        }],
        "source": {"observer": {"display": "cws-gateway"}},
        "entity": entity,
    });
    let desc = match (e.kind, &e.detail) {
        (k, Some(d)) => format!("{k}: {d}"),
        (k, None) => format!("{k}: {} resource(s)", e.entities.len()),
    };
    ev["outcomeDesc"] = json!(desc);
    ev
}

/// The store record of one entry.
pub fn new_audit(e: &AuditEntry<'_>) -> NewAudit {
    NewAudit {
        recorded: e.recorded,
        kind: e.kind.to_string(),
        patient_id: e.patient_id.map(str::to_string),
        recipient: Some(e.caller.org_id.clone()),
        body: audit_event(e),
    }
}

/// A stored record as a FHIR AuditEvent (id = its sequence number, meta
/// carrying the chain hash).
pub fn record_to_fhir(r: &store::AuditRecord) -> Value {
    let mut b = r.body.clone();
    b["id"] = json!(r.seq.to_string());
    b["meta"] = json!({
        "lastUpdated": r.recorded.to_rfc3339_opts(SecondsFormat::Micros, true),
        "tag": [{"system": "urn:cws-gateway:audit-chain", "code": r.hash}]
    });
    b
}

/// `cws-gateway audit verify`: Ok(None) intact, Ok(Some(seq)) first broken link.
pub async fn verify(store: &dyn store::Store) -> Result<Option<i64>, store::StoreError> {
    store.audit_verify().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OrgKind;

    #[test]
    fn refusal_event_has_codes_not_phi() {
        let caller = Caller {
            client_id: "plan-a".into(),
            org_id: "mcp-a".into(),
            kind: OrgKind::Mcp,
            scopes: None,
        };
        let e = AuditEntry {
            kind: "refusal",
            interaction: Interaction::Read,
            caller: &caller,
            patient_id: Some("p1"),
            entities: vec!["Encounter/e1".into()],
            detail: Some("R1 deny.no-consent".into()),
            recorded: Utc::now(),
        };
        let ev = audit_event(&e);
        assert_eq!(ev["outcome"], "4");
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["agent"][0]["who"]["reference"], "Organization/mcp-a");
        assert_eq!(ev["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(ev["entity"][1]["what"]["reference"], "Encounter/e1");
        assert_eq!(ev["outcomeDesc"], "refusal: R1 deny.no-consent");
        let n = new_audit(&e);
        assert_eq!(n.kind, "refusal");
        assert_eq!(n.recipient.as_deref(), Some("mcp-a"));
    }
}
