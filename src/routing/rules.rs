//! The routing rules file (`conformance/routing-rules.yaml`): its data model,
//! loading and validation. Unknown keys and values are rejected; sizes are
//! bounded.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use crate::config::OrgKind;
pub use crate::outbox::{DeliveryKind, Package, RoutePurpose};

/// The rules shipped with the binary.
pub const DEFAULT_RULES: &str = include_str!("../../conformance/routing-rules.yaml");

/// Largest rules file accepted.
pub const MAX_RULES_BYTES: usize = 256 * 1024;
/// Most rules in one file.
pub const MAX_RULES: usize = 128;
/// Longest list inside a rule.
pub const MAX_LIST: usize = 64;

/// Why a rules file was refused (one line, no PHI: ids and keys only).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("routing rules: {0}")]
    Parse(String),
    #[error("routing rules: {0}")]
    Invalid(String),
}

/// Who receives, relative to the member and the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Relation {
    /// The organization a ServiceRequest names as `performer`.
    #[serde(rename = "service_request.performer")]
    ServiceRequestPerformer,
    /// The `owner` of the triggering Task.
    #[serde(rename = "task.owner")]
    TaskOwner,
    /// The ECM provider owning the member's open (accepted / in-progress) Task.
    #[serde(rename = "assigned_ecm")]
    AssignedEcm,
    /// The member's MCP (Coverage payor, else plan code + county, else the referral's MCP).
    #[serde(rename = "member_mcp")]
    MemberMcp,
    /// The requester of the member's newest referral.
    #[serde(rename = "referring_org")]
    ReferringOrg,
    /// The county organization owning the member's CWS case.
    #[serde(rename = "case_county")]
    CaseCounty,
    /// Every organization the triggering Appointment names as a
    /// participant (CFT invitees).
    #[serde(rename = "appointment.participants")]
    AppointmentParticipants,
    /// The MCP that authorized the triggering Task (its `authorizing-mcp`
    /// extension, else its owner when that is an MCP).
    #[serde(rename = "task.authorizing_mcp")]
    TaskAuthorizingMcp,
    /// The ECM provider the triggering Task was just taken from (its
    /// `previous-owner` extension, set only on the version that reassigned it).
    #[serde(rename = "task.previous_owner")]
    TaskPreviousOwner,
    /// The MCP that authorizes the triggering ServiceRequest (its
    /// `authorizing-mcp` extension, else the member's MCP): a referral's
    /// plan, which decides it, even when the referral names a preferred
    /// provider as performer.
    #[serde(rename = "service_request.authorizing_mcp")]
    ServiceRequestAuthorizingMcp,
}

impl Relation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Relation::ServiceRequestPerformer => "service_request.performer",
            Relation::TaskOwner => "task.owner",
            Relation::AssignedEcm => "assigned_ecm",
            Relation::MemberMcp => "member_mcp",
            Relation::ReferringOrg => "referring_org",
            Relation::CaseCounty => "case_county",
            Relation::AppointmentParticipants => "appointment.participants",
            Relation::TaskAuthorizingMcp => "task.authorizing_mcp",
            Relation::TaskPreviousOwner => "task.previous_owner",
            Relation::ServiceRequestAuthorizingMcp => "service_request.authorizing_mcp",
        }
    }
}

/// A condition a trigger may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The triggering Task's `owner` is a configured ECM provider.
    OwnerIsEcm,
    /// The member has an accepted / in-progress Task owned by an ECM provider.
    OpenEcmAssignment,
    /// The input says the placement is outside the case county.
    OutOfCounty,
    /// The triggering Consent names the recipient (`provision.actor`).
    NamesRecipient,
    /// The triggering Task was just taken from one ECM provider and given to
    /// another (it carries the `previous-owner` extension).
    OwnerChanged,
}

impl Condition {
    pub fn as_str(&self) -> &'static str {
        match self {
            Condition::OwnerIsEcm => "owner_is_ecm",
            Condition::OpenEcmAssignment => "open_ecm_assignment",
            Condition::OutOfCounty => "out_of_county",
            Condition::NamesRecipient => "names_recipient",
            Condition::OwnerChanged => "owner_changed",
        }
    }
}

/// What starts a rule. Every given field must match.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub statuses: Vec<String>,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub source_kinds: Vec<OrgKind>,
    #[serde(default)]
    pub require: Vec<Condition>,
}

/// One routing rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub trigger: Trigger,
    pub recipients: Vec<Relation>,
    pub purpose: RoutePurpose,
    pub kind: DeliveryKind,
    pub package: Package,
}

/// The whole rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingRules {
    pub version: u32,
    pub rules: Vec<Rule>,
}

impl RoutingRules {
    /// The shipped rules.
    pub fn default_rules() -> Result<RoutingRules, RulesError> {
        RoutingRules::from_yaml(DEFAULT_RULES)
    }

    /// Parse and validate a rules file.
    pub fn from_yaml(text: &str) -> Result<RoutingRules, RulesError> {
        if text.len() > MAX_RULES_BYTES {
            return Err(RulesError::Invalid(format!(
                "file is {} bytes, more than {MAX_RULES_BYTES}",
                text.len()
            )));
        }
        let rules: RoutingRules = serde_yaml::from_str(text)
            .map_err(|e| RulesError::Parse(e.to_string().replace('\n', " ")))?;
        rules.validate()?;
        Ok(rules)
    }

    fn validate(&self) -> Result<(), RulesError> {
        if self.version != 1 {
            return Err(RulesError::Invalid(format!(
                "version {} is not supported (1)",
                self.version
            )));
        }
        if self.rules.len() > MAX_RULES {
            return Err(RulesError::Invalid(format!("more than {MAX_RULES} rules")));
        }
        let mut ids = HashSet::new();
        for r in &self.rules {
            if r.id.is_empty() || r.id.len() > 64 {
                return Err(RulesError::Invalid(
                    "a rule id must be 1-64 characters".into(),
                ));
            }
            if !ids.insert(r.id.as_str()) {
                return Err(RulesError::Invalid(format!("duplicate rule id {}", r.id)));
            }
            let t = &r.trigger;
            if t.resource.is_none() && t.events.is_empty() {
                return Err(RulesError::Invalid(format!(
                    "rule {}: the trigger needs a resource or events",
                    r.id
                )));
            }
            if r.recipients.is_empty() {
                return Err(RulesError::Invalid(format!("rule {}: no recipients", r.id)));
            }
            for len in [
                t.statuses.len(),
                t.events.len(),
                t.source_kinds.len(),
                t.require.len(),
                r.recipients.len(),
            ] {
                if len > MAX_LIST {
                    return Err(RulesError::Invalid(format!(
                        "rule {}: a list is longer than {MAX_LIST}",
                        r.id
                    )));
                }
            }
            if r.package == Package::AdtNotification && r.kind != DeliveryKind::Notification {
                return Err(RulesError::Invalid(format!(
                    "rule {}: package adt_notification goes as kind notification",
                    r.id
                )));
            }
            if r.kind == DeliveryKind::Notification && r.package != Package::AdtNotification {
                return Err(RulesError::Invalid(format!(
                    "rule {}: kind notification carries package adt_notification",
                    r.id
                )));
            }
            if (r.recipients.contains(&Relation::ServiceRequestPerformer)
                || r.recipients
                    .contains(&Relation::ServiceRequestAuthorizingMcp))
                && t.resource.as_deref() != Some("ServiceRequest")
            {
                return Err(RulesError::Invalid(format!(
                    "rule {}: service_request.performer and service_request.authorizing_mcp need a ServiceRequest trigger",
                    r.id
                )));
            }
            if t.require.contains(&Condition::NamesRecipient)
                && t.resource.as_deref() != Some("Consent")
            {
                return Err(RulesError::Invalid(format!(
                    "rule {}: names_recipient needs a Consent trigger",
                    r.id
                )));
            }
            if r.recipients.contains(&Relation::AppointmentParticipants)
                && t.resource.as_deref() != Some("Appointment")
            {
                return Err(RulesError::Invalid(format!(
                    "rule {}: appointment.participants needs an Appointment trigger",
                    r.id
                )));
            }
            let task_only = r.recipients.iter().any(|x| {
                matches!(
                    x,
                    Relation::TaskOwner
                        | Relation::TaskAuthorizingMcp
                        | Relation::TaskPreviousOwner
                )
            }) || r.package == Package::TaskStatus
                || t.require.contains(&Condition::OwnerChanged);
            if task_only && t.resource.as_deref() != Some("Task") {
                return Err(RulesError::Invalid(format!(
                    "rule {}: task.owner, task.authorizing_mcp, task.previous_owner, owner_changed and task_status need a Task trigger",
                    r.id
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for RoutingRules {
    /// The table `check-config` prints: one rule per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            let t = &r.trigger;
            let mut when = Vec::new();
            if let Some(res) = &t.resource {
                when.push(res.clone());
            }
            if !t.statuses.is_empty() {
                when.push(format!("status in [{}]", t.statuses.join(", ")));
            }
            if !t.events.is_empty() {
                when.push(format!("event in [{}]", t.events.join(", ")));
            }
            if !t.source_kinds.is_empty() {
                let k: Vec<&str> = t.source_kinds.iter().map(OrgKind::as_str).collect();
                when.push(format!("from [{}]", k.join(", ")));
            }
            for c in &t.require {
                when.push(c.as_str().to_string());
            }
            let to: Vec<&str> = r.recipients.iter().map(Relation::as_str).collect();
            writeln!(
                f,
                "  {:<26} {} -> {} ({}, {}, {})",
                r.id,
                when.join(" & "),
                to.join(" + "),
                r.purpose.as_str(),
                r.kind.as_str(),
                r.package.as_str()
            )?;
        }
        Ok(())
    }
}
