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
}
