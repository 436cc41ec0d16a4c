//! The decision: what a resource is to the consent engine
//! ([`resource_facts`]), who the recipient is ([`recipient`]),
//! [`Disclosure::decide`] at every exit, and the obligations a permit
//! carries ([`apply_obligations`], [`minimal_patient`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use consent::{Decision, Obligation, Purpose};
use serde_json::{json, Value};

use crate::config::{Config, OrgKind};

use super::codec::str_of;
#[allow(unused_imports)]
use super::*;

/// The engine's view of a resource: labels as received (never lowered),
/// the patient it belongs to, and its category.
pub fn resource_facts(res: &Value) -> Option<consent::ResourceFacts> {
    let resource_type = str_of(res, "resourceType")?.to_string();
    let id = str_of(res, "id").unwrap_or_default().to_string();
    let patient_id = mapping::patient_reference(res)?;
    let labels: Vec<String> = res
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| str_of(c, "code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let referral_package = matches!(resource_type.as_str(), "ServiceRequest" | "Task");
    let contains_placement_address = resource_type == "Patient"
        && res
            .get("address")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
    let referral = match resource_type.as_str() {
        "ServiceRequest" => Some(consent::ReferralFacts {
            referrer: res.get("requester").and_then(org_of),
            self_referral: is_self_referral(res),
            made_to: performers(res),
            former_owners: Vec::new(),
        }),
        "Task" => Some(consent::ReferralFacts {
            referrer: res.get("requester").and_then(org_of),
            // Whether the Task's referral was a self-referral is its
            // ServiceRequest's to say (`Disclosure::decide_with` adds it).
            self_referral: false,
            made_to: task_parties(res),
            former_owners: former_owners(res),
        }),
        _ => None,
    };
    // An active written authorization (a release of information or a
    // 42 CFR Part 2 consent) names its recipients (its actors): its record
    // may go back to a plan it names (rule R13). A verbal referral consent
    // or a withdrawn release names no one here.
    let consent_recipients = if resource_type == "Consent"
        && str_of(res, "status") == Some("active")
    {
        consent_from_fhir(res)
            .filter(|c| {
                matches!(
                    c.kind,
                    consent::ConsentKind::ReleaseOfInformation | consent::ConsentKind::Part2Written
                ) && c.withdrawn_at.is_none()
            })
            .map(|c| c.recipients)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Some(consent::ResourceFacts {
        resource_type,
        id,
        patient_id,
        labels,
        category: None,
        referral_package,
        status_only: false,
        contains_placement_address,
        referral,
        consent_recipients,
    })
}

/// A ServiceRequest marked as a self-referral (extension `self-referral` true).
pub(crate) fn is_self_referral(sr: &Value) -> bool {
    sr.get("extension")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter().any(|e| {
                str_of(e, "url").is_some_and(|u| u.ends_with(SELF_REFERRAL_EXT))
                    && e.get("valueBoolean") == Some(&Value::Bool(true))
            })
        })
}

/// The organizations a ServiceRequest names as performer.
pub(crate) fn performers(sr: &Value) -> Vec<String> {
    sr.get("performer")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(org_of).collect())
        .unwrap_or_default()
}

/// The organizations a referral Task was made to: its owner and its
/// authorizing MCP.
pub(crate) fn task_parties(task: &Value) -> Vec<String> {
    let mut out: Vec<String> = task.get("owner").and_then(org_of).into_iter().collect();
    let mcp = crate::resources::extension_org(task, crate::resources::AUTHORIZING_MCP_EXT);
    if let Some(m) = mcp.filter(|m| !out.contains(m)) {
        out.push(m);
    }
    out
}

/// The ECM providers a Task version says the plan moved it away from (its
/// `previous-owner` extension, set on the version that reassigned it).
fn former_owners(task: &Value) -> Vec<String> {
    crate::resources::extension_orgs(task, crate::resources::PREVIOUS_OWNER_EXT).collect()
}

/// The engine's view of a configured organization.
pub fn recipient(cfg: &Config, org_id: &str) -> Option<consent::Recipient> {
    let o = cfg.organization(org_id)?;
    let kind = match o.kind {
        OrgKind::County => consent::OrgKind::County,
        OrgKind::Mcp => consent::OrgKind::Mcp,
        OrgKind::EcmProvider => consent::OrgKind::EcmProvider,
        OrgKind::AdtSource => consent::OrgKind::AdtSource,
        OrgKind::Operator => consent::OrgKind::Operator,
        OrgKind::Referrer => consent::OrgKind::Referrer,
    };
    Some(consent::Recipient {
        org_id: o.id.clone(),
        kind,
        county: o.county.clone(),
        mcp_network: o.mcps.clone(),
    })
}

/// The one decision point every exit calls.
#[derive(Clone)]
pub struct Disclosure {
    pub policy: Arc<consent::Policy>,
    pub cfg: Arc<Config>,
}

impl Disclosure {
    pub fn new(cfg: Arc<Config>) -> Disclosure {
        Disclosure {
            policy: Arc::new(consent::Policy::default_policy()),
            cfg,
        }
    }

    /// Decide whether `recipient_org` may receive `res` now. Unknown
    /// recipients and resources without a patient are denied (R1).
    pub fn decide(
        &self,
        res: &Value,
        recipient_org: &str,
        purpose: Purpose,
        pctx: &PatientContext,
        now: DateTime<Utc>,
    ) -> Decision {
        self.decide_with(res, recipient_org, purpose, pctx, now, false)
    }

    /// [`Disclosure::decide`] for a Task status projection (status, owner,
    /// business status — no clinical detail) when `status_only` (rule R4).
    pub fn decide_with(
        &self,
        res: &Value,
        recipient_org: &str,
        purpose: Purpose,
        pctx: &PatientContext,
        now: DateTime<Utc>,
        status_only: bool,
    ) -> Decision {
        let deny = |reason: &str| Decision {
            effect: consent::Effect::Deny,
            rule: "R1".into(),
            consent_id: None,
            reason: reason.into(),
            obligations: Vec::new(),
            votes: Vec::new(),
        };
        let Some(to) = recipient(&self.cfg, recipient_org) else {
            return deny("deny.unknown-recipient");
        };
        let Some(mut facts) = resource_facts(res) else {
            return deny("deny.no-patient");
        };
        facts.status_only = status_only;
        if facts.patient_id != pctx.patient_id {
            return deny("deny.patient-mismatch");
        }
        // A Task belongs to its ServiceRequest's referral: a self-referral
        // made to the plan (and provider) the ServiceRequest names.
        if let (Some(r), Some(focus)) = (
            facts.referral.as_mut(),
            res.get("focus").and_then(|f| ref_id(f, "ServiceRequest")),
        ) {
            if facts.resource_type == "Task" {
                if let Some((_, made_to)) = pctx.self_referrals.iter().find(|(id, _)| *id == focus)
                {
                    r.self_referral = true;
                    for o in made_to {
                        if !r.made_to.contains(o) {
                            r.made_to.push(o.clone());
                        }
                    }
                }
            }
        }
        let ctx = pctx.engine_context(purpose, now);
        let d = self.policy.decide(&facts, &to, &pctx.consents, &ctx);
        // A Patient the recipient may not see in full may still go as the
        // minimal Patient of a referral package (R2, or R3 in the plan
        // network); `apply_obligations` then cuts it down.
        if d.effect == consent::Effect::Deny && facts.resource_type == "Patient" && !status_only {
            let mut package = facts.clone();
            package.referral_package = true;
            let d2 = self.policy.decide(&package, &to, &pctx.consents, &ctx);
            if d2.effect == consent::Effect::Permit {
                return d2;
            }
        }
        d
    }
}

/// The minimal Patient of a referral package (rule R2): name, birth date,
/// sex, the Medi-Cal CIN, telecom, preferred language (`communication`, an
/// ECM Referral Standards element) and contacts (without their addresses) —
/// no address, no other identifiers, no extensions.
pub fn minimal_patient(p: &Value) -> Value {
    let mut out = json!({"resourceType": "Patient"});
    for k in [
        "id",
        "meta",
        "active",
        "name",
        "birthDate",
        "gender",
        "telecom",
        "communication",
        "link",
    ] {
        if let Some(v) = p.get(k) {
            out[k] = v.clone();
        }
    }
    let cin: Vec<Value> = p
        .get("identifier")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter(|i| {
                    i.pointer("/type/coding")
                        .and_then(Value::as_array)
                        .is_some_and(|c| c.iter().any(|c| str_of(c, "code") == Some("MA")))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if !cin.is_empty() {
        out["identifier"] = Value::Array(cin);
    }
    if let Some(contacts) = p.get("contact").and_then(Value::as_array) {
        let cut: Vec<Value> = contacts
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if let Some(o) = c.as_object_mut() {
                    o.remove("address");
                }
                c
            })
            .collect();
        out["contact"] = Value::Array(cut);
    }
    out
}

/// Apply a permit's obligations to a copy of the resource: masks remove the
/// named elements (`Patient.address` → the `address` element); the Part 2
/// notice adds the v3-ActCode `NORDSCLCD` (no redisclosure without consent)
/// label, which is never removed afterwards.
pub fn apply_obligations(res: &Value, decision: &Decision) -> Value {
    let mut out = if str_of(res, "resourceType") == Some("Patient")
        && matches!(decision.rule.as_str(), "R2" | "R3")
    {
        minimal_patient(res)
    } else {
        res.clone()
    };
    let rtype = str_of(res, "resourceType").unwrap_or("").to_string();
    for ob in &decision.obligations {
        match ob {
            Obligation::Mask { path } => {
                let mut parts = path.split('.');
                let (Some(t), Some(elem)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if t == rtype || t == "*" {
                    if let Some(o) = out.as_object_mut() {
                        o.remove(elem);
                    }
                    let sec = out["meta"]["security"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !sec.iter().any(|c| str_of(c, "code") == Some("REDACTED")) {
                        let mut sec = sec;
                        sec.push(json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED"}));
                        out["meta"]["security"] = Value::Array(sec);
                    }
                }
            }
            Obligation::NoRedisclosureNotice => {
                let mut sec = out["meta"]["security"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !sec.iter().any(|c| str_of(c, "code") == Some("NORDSCLCD")) {
                    sec.push(json!({"system": ACT_CODE, "code": "NORDSCLCD"}));
                    out["meta"]["security"] = Value::Array(sec);
                }
            }
        }
    }
    out
}
