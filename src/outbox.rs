//! The outbox contract between routing (which writes a delivery row in the
//! transaction of the input that caused it) and the delivery workers (which
//! read it back and send it): the typed [`Payload`], the vocabulary of its
//! fields, and the [`Waker`] routing uses to tell the workers there is work.
//! Both sides use the one struct, so what is written is what is read.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use tokio::sync::Notify;

/// Most references one delivery carries (a larger package is cut and the
/// cut is logged by count).
pub const MAX_REFS: usize = 256;

/// One outbox row's payload (`docs/delivery.md`): which rule sent what to
/// whom and why. It names resources by reference only; the delivery worker
/// reads their current versions and decides consent again at send time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub rule: String,
    #[serde(default)]
    pub relation: String,
    pub purpose: String,
    pub package: String,
    pub patient: String,
    /// `Type/id` references, in send order.
    pub resources: Vec<String>,
    /// Notification: the Da Vinci event code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Notification: the focus reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub focus: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "micros"
    )]
    pub event_time: Option<DateTime<Utc>>,
}

/// Event times are written with microseconds, as the journal's.
fn micros<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        None => s.serialize_none(),
    }
}

impl Payload {
    /// The payload as stored.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A stored payload; `None` when it does not parse or names more than
    /// [`MAX_REFS`] resources.
    pub fn parse(v: &Value) -> Option<Payload> {
        let p = Payload::deserialize(v).ok()?;
        (p.resources.len() <= MAX_REFS).then_some(p)
    }

    pub fn purpose(&self) -> Option<RoutePurpose> {
        RoutePurpose::parse(&self.purpose)
    }

    pub fn is_status_only(&self) -> bool {
        self.package == Package::TaskStatus.as_str()
    }
}

/// Why the data is sent (maps onto the consent engine's `Purpose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutePurpose {
    Referral,
    CareCoordination,
    Notification,
}

impl RoutePurpose {
    pub fn as_str(&self) -> &'static str {
        match self {
            RoutePurpose::Referral => "referral",
            RoutePurpose::CareCoordination => "care_coordination",
            RoutePurpose::Notification => "notification",
        }
    }

    pub fn parse(s: &str) -> Option<RoutePurpose> {
        match s {
            "referral" => Some(RoutePurpose::Referral),
            "care_coordination" => Some(RoutePurpose::CareCoordination),
            "notification" => Some(RoutePurpose::Notification),
            _ => None,
        }
    }

    /// The consent engine's purpose.
    pub fn consent_purpose(&self) -> consent::Purpose {
        match self {
            RoutePurpose::Referral => consent::Purpose::Referral,
            RoutePurpose::CareCoordination => consent::Purpose::CareCoordination,
            RoutePurpose::Notification => consent::Purpose::Notification,
        }
    }
}

/// How the delivery goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    /// A `transaction` Bundle of `PUT {type}/{id}` entries, `POST {endpoint}`.
    Transaction,
    /// A `message` Bundle, `POST {endpoint}/$process-message`.
    Notification,
}

impl DeliveryKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryKind::Transaction => "transaction",
            DeliveryKind::Notification => "notification",
        }
    }
}

/// What is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Package {
    /// The ServiceRequest, its Tasks, the Patient and the patient's Consents.
    Referral,
    /// A Task projection: status, owner, businessStatus, focus, for.
    TaskStatus,
    /// The written resources of the trigger's type (all written, for events).
    Written,
    /// Encounter, Patient, Conditions of an ADT message.
    AdtNotification,
    /// The member's stored CarePlans, except those the recipient authored
    /// (the warm hand-off to a new ECM provider); nothing to send is not a
    /// refusal.
    CarePlans,
}

impl Package {
    pub fn as_str(&self) -> &'static str {
        match self {
            Package::Referral => "referral",
            Package::TaskStatus => "task_status",
            Package::Written => "written",
            Package::AdtNotification => "adt_notification",
            Package::CarePlans => "care_plans",
        }
    }
}

/// Wakes the delivery workers (cheap to clone).
#[derive(Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// A waker over the workers' notifier.
    pub fn new(n: Arc<Notify>) -> Waker {
        Waker(n)
    }

    pub fn wake(&self) {
        self.0.notify_waiters();
    }
}

/// One notice of a referral Task: a delivery that carried the Task (its
/// status, or the referral package with it), to whom, by which routing
/// rule, when it was queued and — the proof of electronic notice — when
/// the recipient acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    /// The outbox row.
    pub outbox_id: i64,
    pub recipient: String,
    pub rule: String,
    pub package: String,
    /// `pending`, `delivered`, `dead`, `withheld`, `dropped`.
    pub state: String,
    pub enqueued: DateTime<Utc>,
    /// When the recipient answered 2xx: the `recorded` time of the
    /// delivery's `disclosure` AuditEvent (`None` until delivered).
    pub delivered_at: Option<DateTime<Utc>>,
    /// The sequence number of that AuditEvent in the audit chain.
    pub audit_seq: Option<i64>,
}

/// Most audit records [`notices_of`] reads for one member.
pub const MAX_NOTICE_AUDITS: usize = 20_000;

/// The notices of one Task (`task` = `Task/{id}`) of member `patient_id`,
/// by outbox id: every delivery attempt audited for the member that named
/// the Task (delivered, withheld or failed), and the rows still waiting to
/// be sent. The delivery time is the audit record's, so what this answers
/// is what an auditor finds in `GET /ops/audit?patient=…` (kind
/// `disclosure`, subtype `transmit`, `entity.detail[type=delivery]` =
/// `outbox/{id}`).
pub async fn notices_of(
    store: &dyn store::Store,
    patient_id: &str,
    task: &str,
) -> Result<Vec<Notice>, store::StoreError> {
    use std::collections::BTreeMap;
    let mut found: BTreeMap<i64, (Option<DateTime<Utc>>, Option<i64>)> = BTreeMap::new();
    let mut after = 0;
    let mut read = 0;
    loop {
        let page = store
            .audit_list(after, store::audit::MAX_AUDIT_PAGE, Some(patient_id), None)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        read += page.len();
        for rec in &page {
            let Some(id) = delivery_of(&rec.body, task) else {
                continue;
            };
            let slot = found.entry(id).or_insert((None, None));
            if rec.kind == "disclosure" && slot.0.is_none() {
                *slot = (Some(rec.recorded), Some(rec.seq));
            }
        }
        if page.len() < store::audit::MAX_AUDIT_PAGE || read >= MAX_NOTICE_AUDITS {
            break;
        }
    }
    let mut out = Vec::new();
    for (id, (delivered_at, audit_seq)) in found {
        if let Some(d) = store.outbox_get(id).await? {
            if let Some(n) = notice(&d, task, delivered_at, audit_seq) {
                out.push(n);
            }
        }
    }
    // Queued and not yet attempted: no audit record names them yet.
    let pending = store
        .outbox_list(
            Some(store::outbox::DeliveryState::Pending),
            None,
            store::outbox::MAX_OUTBOX_PAGE,
        )
        .await?;
    for d in pending {
        if out.iter().all(|n| n.outbox_id != d.id) {
            if let Some(n) = notice(&d, task, None, None) {
                out.push(n);
            }
        }
    }
    out.sort_by_key(|n| n.outbox_id);
    Ok(out)
}

/// The notice an outbox row is, when its payload names `task`.
fn notice(
    d: &store::outbox::Delivery,
    task: &str,
    delivered_at: Option<DateTime<Utc>>,
    audit_seq: Option<i64>,
) -> Option<Notice> {
    let p = Payload::parse(&d.payload)?;
    p.resources.iter().any(|r| r == task).then(|| Notice {
        outbox_id: d.id,
        recipient: d.endpoint.clone(),
        rule: p.rule.clone(),
        package: p.package.clone(),
        state: d.state.as_str().to_string(),
        enqueued: d.created_at,
        delivered_at,
        audit_seq,
    })
}

/// The outbox id of a delivery AuditEvent (subtype `transmit`) that names
/// `task` among its entities.
fn delivery_of(audit: &Value, task: &str) -> Option<i64> {
    let transmit = audit
        .get("subtype")?
        .as_array()?
        .iter()
        .any(|c| c.get("code").and_then(Value::as_str) == Some("transmit"));
    if !transmit {
        return None;
    }
    let entity = audit
        .get("entity")?
        .as_array()?
        .iter()
        .find(|e| e.pointer("/what/reference").and_then(Value::as_str) == Some(task))?;
    entity
        .get("detail")?
        .as_array()?
        .iter()
        .find(|d| d.get("type").and_then(Value::as_str) == Some("delivery"))
        .and_then(|d| d.get("valueString"))
        .and_then(Value::as_str)
        .and_then(|v| v.strip_prefix("outbox/"))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_payload_is_read_back_as_it_was_written() {
        let t = DateTime::parse_from_rfc3339("2026-01-15T08:30:00.5Z")
            .map(|t| t.with_timezone(&Utc))
            .ok();
        let p = Payload {
            rule: "adt-notification".into(),
            relation: "assigned_ecm".into(),
            purpose: "notification".into(),
            package: "adt_notification".into(),
            patient: "p1".into(),
            resources: vec!["Encounter/e1".into()],
            event: Some("notification-admit".into()),
            focus: Some("Encounter/e1".into()),
            event_time: t,
        };
        let v = p.to_value();
        assert_eq!(v["event_time"], json!("2026-01-15T08:30:00.500000Z"));
        assert_eq!(Payload::parse(&v), Some(p.clone()));
        let bare = Payload {
            event: None,
            focus: None,
            event_time: None,
            ..p
        }
        .to_value();
        assert!(bare.get("event").is_none() && bare.get("event_time").is_none());
    }

    #[test]
    fn a_payload_naming_too_many_resources_is_refused() {
        let refs: Vec<String> = (0..=MAX_REFS).map(|i| format!("Task/{i}")).collect();
        let v = json!({"rule": "r", "purpose": "referral", "package": "referral",
            "patient": "p", "resources": refs});
        assert!(Payload::parse(&v).is_none());
    }

    #[test]
    fn a_delivery_audit_names_its_outbox_row_for_the_task_it_carried() {
        let event = |subtype: &str, what: &str| {
            json!({"resourceType": "AuditEvent",
                "subtype": [{"system": "x", "code": subtype}],
                "entity": [
                    {"what": {"reference": "Patient/p1"}},
                    {"what": {"reference": what}, "detail": [
                        {"type": "disclosure", "valueString": "disclosed"},
                        {"type": "routing-rule", "valueString": "task-status-to-referrer"},
                        {"type": "delivery", "valueString": "outbox/42"}]}]})
        };
        assert_eq!(
            delivery_of(&event("transmit", "Task/t1"), "Task/t1"),
            Some(42)
        );
        assert_eq!(delivery_of(&event("transmit", "Task/t2"), "Task/t1"), None);
        assert_eq!(delivery_of(&event("read", "Task/t1"), "Task/t1"), None);
        let d = store::outbox::Delivery {
            id: 42,
            endpoint: "county-fresno".into(),
            ordering_key: "p1".into(),
            kind: "transaction".into(),
            payload: json!({"rule": "task-status-to-referrer", "purpose": "care_coordination",
                "package": "task_status", "patient": "p1", "resources": ["Task/t1"]}),
            state: store::outbox::DeliveryState::Delivered,
            attempts: 1,
            not_before: Utc::now(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_error: None,
            lease_owner: None,
            lease_until: None,
            journal_id: None,
        };
        let n = notice(&d, "Task/t1", Some(d.updated_at), Some(7)).unwrap();
        assert_eq!(
            (
                n.recipient.as_str(),
                n.rule.as_str(),
                n.state.as_str(),
                n.audit_seq
            ),
            (
                "county-fresno",
                "task-status-to-referrer",
                "delivered",
                Some(7)
            )
        );
        assert!(notice(&d, "Task/t9", None, None).is_none());
    }
}
