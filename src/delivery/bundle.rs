//! What one attempt sends: the outbox payload read back, every resource
//! re-decided by the consent engine *now*, obligations applied, and the FHIR
//! Bundle built from the current stored versions; plus the AuditEvents of the
//! disclosure and of each refusal.
//!
//! Invariants: a denied resource is never in the Bundle; a notification
//! whose focus (the Encounter) is denied is withheld whole (a MessageHeader
//! must focus on something); a package with nothing permitted is withheld.

use chrono::{DateTime, SecondsFormat, Utc};
use consent::Decision;
use serde_json::{json, Value};

use crate::config::Config;
use crate::disclosure::{apply_obligations, Disclosure, PatientContext};
use crate::outbox::Payload;

/// The Da Vinci notification event code system.
pub const DAVINCI_EVENT_CS: &str =
    "http://hl7.org/fhir/us/davinci-alerts/CodeSystem/notification-event";

/// One resource's decision at attempt time.
#[derive(Debug, Clone)]
pub struct Decided {
    /// `Type/id`.
    pub reference: String,
    pub decision: Decision,
}

/// The result of preparing an attempt.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Something to send.
    Send {
        bundle: Value,
        disclosed: Vec<Decided>,
        refused: Vec<Decided>,
    },
    /// Nothing may go (or nothing is left); `reason` is a stable code.
    Withheld {
        reason: String,
        refused: Vec<Decided>,
    },
}

/// The Task projection sent as referral status: status, statusReason,
/// owner, businessStatus, focus, for, requester, lastModified, the
/// closed-loop referral's dates (the `referral-status-date` and
/// `notice-of-action-sent` extensions; docs/mcp-ecm.md), the
/// `previous-owner` extension for the consent decision only (stripped
/// before sending) (plus `intent`,
/// required by FHIR, and the security labels, which are never dropped). The requester is the
/// referral's own referrer, whom rule R4 sends the status to.
pub fn task_status_projection(task: &Value) -> Value {
    let mut out = json!({"resourceType": "Task"});
    for k in [
        "id",
        "status",
        "statusReason",
        "businessStatus",
        "intent",
        "owner",
        "focus",
        "for",
        "requester",
        "lastModified",
    ] {
        if let Some(v) = task.get(k) {
            out[k] = v.clone();
        }
    }
    // The closed-loop referral's dates: when the status last changed and
    // when the member's Notice of Action went out (dates only; not the
    // authorizing-mcp extension, which names the member's plan).
    let dates: Vec<Value> = task
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.get("url").and_then(Value::as_str).is_some_and(|u| {
                u.ends_with(crate::records::clr::STATUS_DATE_EXT)
                    || u.ends_with(crate::resources::NOA_SENT_EXT)
                    || u.ends_with(crate::resources::PREVIOUS_OWNER_EXT)
            })
        })
        .cloned()
        .collect();
    if !dates.is_empty() {
        out["extension"] = Value::Array(dates);
    }
    if let Some(sec) = task.pointer("/meta/security") {
        out["meta"] = json!({"security": sec});
    }
    out
}

/// Remove the `previous-owner` extension from a projected Task (and the
/// `extension` array when nothing is left in it).
fn strip_previous_owner(task: &mut Value) {
    let Some(a) = task.get_mut("extension").and_then(Value::as_array_mut) else {
        return;
    };
    a.retain(|e| {
        !e.get("url")
            .and_then(Value::as_str)
            .is_some_and(|u| u.ends_with(crate::resources::PREVIOUS_OWNER_EXT))
    });
    if a.is_empty() {
        if let Some(o) = task.as_object_mut() {
            o.remove("extension");
        }
    }
}

/// `Disclosure::decide` with the delivery's own view of the resource (a
/// status-only projection is decided as such).
pub fn decide(
    disclosure: &Disclosure,
    res: &Value,
    recipient_org: &str,
    purpose: consent::Purpose,
    pctx: &PatientContext,
    now: DateTime<Utc>,
    status_only: bool,
) -> Decision {
    disclosure.decide_with(res, recipient_org, purpose, pctx, now, status_only)
}

/// May `recipient_org` see the member — the child's county
/// (`records::eligibility::is_childs_county`), or an organization the
/// consent engine lets read the member's `patient` (purpose pull)? The
/// question a FHIR read asks before it shows a referrer a Task's status
/// with its owner (`gate::Gate`): the owner says which plan or provider
/// the member is with.
pub fn sees_member(
    disclosure: &Disclosure,
    recipient_org: &str,
    pctx: &PatientContext,
    patient: Option<&Value>,
    now: DateTime<Utc>,
) -> bool {
    crate::records::eligibility::is_childs_county(disclosure, recipient_org, pctx, patient, now)
        || patient.is_some_and(|p| {
            disclosure
                .decide(p, recipient_org, consent::Purpose::Pull, pctx, now)
                .is_permit()
        })
}

fn split_ref(r: &str) -> Option<(&str, &str)> {
    let (t, id) = r.split_once('/')?;
    (!t.is_empty() && !id.is_empty() && !id.contains('/')).then_some((t, id))
}

/// Decide and build. `resources` are the current stored bodies of the
/// payload's references, in payload order (`None` = no longer stored).
/// `member_seen` is [`sees_member`] for the recipient: a status-only
/// package (a referral's status to its requester) carries the Task's owner
/// only to a recipient that may see the member, as a FHIR read by that
/// recipient shows it.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    cfg: &Config,
    disclosure: &Disclosure,
    delivery_id: i64,
    recipient_org: &str,
    payload: &Payload,
    resources: &[(String, Option<Value>)],
    pctx: &PatientContext,
    member_seen: bool,
    now: DateTime<Utc>,
) -> Prepared {
    let Some(purpose) = payload.purpose() else {
        return Prepared::Withheld {
            reason: "bad-payload".into(),
            refused: Vec::new(),
        };
    };
    let status_only = payload.is_status_only();
    let mut permitted: Vec<(String, Value)> = Vec::new();
    let mut disclosed = Vec::new();
    let mut refused = Vec::new();
    for (reference, body) in resources {
        let Some(body) = body else { continue };
        let body =
            if status_only && body.get("resourceType").and_then(Value::as_str) == Some("Task") {
                task_status_projection(body)
            } else {
                body.clone()
            };
        let d = decide(
            disclosure,
            &body,
            recipient_org,
            purpose.consent_purpose(),
            pctx,
            now,
            status_only,
        );
        if d.is_permit() {
            let mut shown = apply_obligations(&body, &d);
            if status_only {
                // The previous owner is kept in the projection only for the
                // decision (consent rule R12 tells the former provider);
                // the status sent names no earlier provider.
                strip_previous_owner(&mut shown);
            }
            if status_only && !member_seen {
                if let Some(o) = shown.as_object_mut() {
                    o.remove("owner");
                }
            }
            permitted.push((reference.clone(), shown));
            disclosed.push(Decided {
                reference: reference.clone(),
                decision: d,
            });
        } else {
            refused.push(Decided {
                reference: reference.clone(),
                decision: d,
            });
        }
    }
    if permitted.is_empty() {
        let reason = refused
            .first()
            .map(|r| r.decision.reason.clone())
            .unwrap_or_else(|| "nothing-to-send".into());
        return Prepared::Withheld { reason, refused };
    }
    let base = &cfg.server.canonical_base;
    let timestamp = now.to_rfc3339_opts(SecondsFormat::Millis, true);
    let bundle = if let Some(event) = &payload.event {
        let Some(focus) = payload.focus.as_deref() else {
            return Prepared::Withheld {
                reason: "bad-payload".into(),
                refused,
            };
        };
        if !permitted.iter().any(|(r, _)| r == focus) {
            return Prepared::Withheld {
                reason: "focus-withheld".into(),
                refused,
            };
        }
        let endpoint = cfg
            .organization(recipient_org)
            .and_then(|o| o.endpoint.clone())
            .unwrap_or_default();
        let header = json!({
            "resourceType": "MessageHeader",
            "id": format!("outbox-{delivery_id}"),
            "eventCoding": {"system": DAVINCI_EVENT_CS, "code": event},
            "destination": [{"endpoint": endpoint, "receiver": {"reference": format!("Organization/{recipient_org}")}}],
            "source": {"name": "cws-gateway", "endpoint": base},
            "focus": [{"reference": focus}]
        });
        let mut entries = vec![
            json!({"fullUrl": format!("{base}/MessageHeader/outbox-{delivery_id}"), "resource": header}),
        ];
        for (r, body) in &permitted {
            entries.push(json!({"fullUrl": format!("{base}/{r}"), "resource": body}));
        }
        json!({
            "resourceType": "Bundle",
            "id": format!("outbox-{delivery_id}"),
            "type": "message",
            "timestamp": timestamp,
            "entry": entries
        })
    } else {
        let entries: Vec<Value> = permitted
            .iter()
            .filter_map(|(r, body)| {
                split_ref(r)?;
                Some(json!({
                    "fullUrl": format!("{base}/{r}"),
                    "resource": body,
                    "request": {"method": "PUT", "url": r}
                }))
            })
            .collect();
        json!({
            "resourceType": "Bundle",
            "id": format!("outbox-{delivery_id}"),
            "type": "transaction",
            "timestamp": timestamp,
            "entry": entries
        })
    };
    Prepared::Send {
        bundle,
        disclosed,
        refused,
    }
}

/// Parse `Type/id` references (bad ones are skipped).
pub fn references(payload: &Payload) -> Vec<(String, String)> {
    payload
        .resources
        .iter()
        .filter_map(|r| split_ref(r).map(|(t, id)| (t.to_string(), id.to_string())))
        .collect()
}

fn detail(decided: &Decided, payload: &Payload, delivery_id: i64) -> Vec<Value> {
    let d = &decided.decision;
    let mut out = vec![
        json!({"type": "rule", "valueString": d.rule}),
        json!({"type": "reason", "valueString": d.reason}),
        json!({"type": "routing-rule", "valueString": payload.rule}),
        json!({"type": "purpose", "valueString": payload.purpose}),
        json!({"type": "delivery", "valueString": format!("outbox/{delivery_id}")}),
    ];
    for c in d.consent_ids() {
        out.push(json!({"type": "consent", "valueString": format!("Consent/{c}")}));
    }
    out
}

/// The one AuditEvent of a delivery attempt: a disclosure (`outcome` 0,
/// the recipient answered 2xx) or a refusal (`outcome` 4, nothing
/// disclosed): type `rest`, subtype `transmit`, the recipient organization
/// as agent, the Patient (role 1) and one entity per resource decided
/// (role 4), each marked `detail[type=disclosure]` = `disclosed` or
/// `withheld`, with the consent rule, reason, consent ids, the routing rule
/// and the outbox id in its other `entity.detail`. Ids and codes only.
#[allow(clippy::too_many_arguments)]
pub fn audit_event(
    cfg: &Config,
    delivery_id: i64,
    recipient_org: &str,
    payload: &Payload,
    disclosed: &[Decided],
    withheld: &[Decided],
    delivered: bool,
    now: DateTime<Utc>,
) -> Value {
    let base = &cfg.server.canonical_base;
    let shown = if delivered { disclosed } else { &[] };
    let mut entities = vec![json!({
        "what": {"reference": format!("Patient/{}", payload.patient)},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}
    })];
    for (d, marker) in shown
        .iter()
        .map(|d| (d, "disclosed"))
        .chain(withheld.iter().map(|d| (d, "withheld")))
    {
        let mut detail = vec![json!({"type": "disclosure", "valueString": marker})];
        detail.extend(self::detail(d, payload, delivery_id));
        entities.push(json!({
            "what": {"reference": d.reference},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"},
            "detail": detail
        }));
    }
    let outcome_desc = format!(
        "{}: {} disclosed, {} withheld",
        if shown.is_empty() {
            "refusal"
        } else {
            "disclosure"
        },
        shown.len(),
        withheld.len()
    );
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": format!("{base}/CodeSystem/audit-event-subtype"), "code": "transmit"}],
        "action": "E",
        "recorded": now.to_rfc3339_opts(SecondsFormat::Micros, true),
        "outcome": if shown.is_empty() { "4" } else { "0" },
        "outcomeDesc": outcome_desc,
        "purposeOfEvent": [{"coding": [{"system": format!("{base}/CodeSystem/disclosure-purpose"), "code": payload.purpose}]}],
        "agent": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
             "who": {"reference": format!("Organization/{recipient_org}")}, "requestor": false},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "AUT"}]},
             "who": {"display": "cws-gateway outbox"}, "requestor": true}
        ],
        "source": {"observer": {"display": "cws-gateway"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
        "entity": entities
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_keeps_the_referral_dates_not_the_plan() {
        let t = json!({"resourceType": "Task", "id": "t1", "status": "rejected", "intent": "order",
            "for": {"reference": "Patient/p1"},
            "extension": [
                {"url": "https://gw/StructureDefinition/authorizing-mcp", "valueReference": {"reference": "Organization/mcp-a"}},
                {"url": "https://gw/StructureDefinition/referral-status-date", "valueDateTime": "2026-12-07T17:00:00Z"},
                {"url": "https://gw/StructureDefinition/notice-of-action-sent", "valueDateTime": "2026-12-08T17:00:00Z"}]});
        let p = task_status_projection(&t);
        let urls: Vec<&str> = p["extension"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "https://gw/StructureDefinition/referral-status-date",
                "https://gw/StructureDefinition/notice-of-action-sent"
            ]
        );
    }

    #[test]
    fn projection_keeps_only_status_fields_and_labels() {
        let t = json!({"resourceType": "Task", "id": "t1", "status": "accepted", "intent": "order",
            "owner": {"reference": "Organization/ecm-compass"}, "for": {"reference": "Patient/p1"},
            "focus": {"reference": "ServiceRequest/sr1"}, "description": "clinical notes",
            "input": [{"valueString": "detail"}], "meta": {"versionId": "3", "security": [{"code": "PSY"}]}});
        let p = task_status_projection(&t);
        assert_eq!(p["status"], "accepted");
        assert!(p.get("extension").is_none());
        assert_eq!(p["owner"]["reference"], "Organization/ecm-compass");
        assert!(p.get("description").is_none() && p.get("input").is_none());
        assert_eq!(p["meta"]["security"][0]["code"], "PSY");
        assert!(p["meta"].get("versionId").is_none());
        // The projection still names its patient (Task.for).
        let f = crate::disclosure::resource_facts(&p).unwrap();
        assert_eq!(f.patient_id, "p1");
    }

    #[test]
    fn a_status_push_carries_the_owner_only_to_a_recipient_that_sees_the_member() {
        let cfg = Config::from_toml(include_str!("../../tests/fixtures/orgs.toml"), "t").unwrap();
        let cfg = std::sync::Arc::new(cfg);
        let disclosure = Disclosure::new(cfg.clone());
        let task = json!({"resourceType": "Task", "id": "t1", "status": "accepted", "intent": "order",
            "owner": {"reference": "Organization/mcp-a"}, "for": {"reference": "Patient/p1"},
            "requester": {"reference": "Organization/mcp-b"}});
        let payload = Payload::parse(
            &json!({"rule": "task-status-to-referrer", "purpose": "care_coordination",
            "package": "task_status", "patient": "p1", "resources": ["Task/t1"]}),
        )
        .unwrap();
        let pctx = PatientContext::from_resources(&cfg, "p1", &[]);
        let now = Utc::now();
        let resources = vec![("Task/t1".to_string(), Some(task))];
        let sent = |seen: bool| match prepare(
            &cfg,
            &disclosure,
            1,
            "mcp-b",
            &payload,
            &resources,
            &pctx,
            seen,
            now,
        ) {
            Prepared::Send { bundle, .. } => bundle["entry"][0]["resource"].clone(),
            Prepared::Withheld { reason, .. } => panic!("withheld: {reason}"),
        };
        let hidden = sent(false);
        assert_eq!(hidden["status"], "accepted");
        assert!(hidden.get("owner").is_none(), "{hidden}");
        assert_eq!(sent(true)["owner"]["reference"], "Organization/mcp-a");
    }

    #[test]
    fn payload_round_trips() {
        let v = json!({"rule": "adt-notification", "purpose": "notification", "package": "adt_notification",
            "patient": "p1", "resources": ["Encounter/e1", "Patient/p1"], "event": "notification-admit",
            "focus": "Encounter/e1", "event_time": "2026-01-15T08:25:00Z"});
        let p = Payload::parse(&v).unwrap();
        assert_eq!(p.purpose(), Some(crate::outbox::RoutePurpose::Notification));
        assert_eq!(references(&p).len(), 2);
        assert!(Payload::parse(&json!({"rule": 1})).is_none());
    }
}
