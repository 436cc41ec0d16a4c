//! The patient's context for a decision: the Consents that count, the
//! member's plan, assigned ECM provider, case and referrals, loaded once per
//! patient per request or attempt ([`PatientContext`]).

use chrono::{DateTime, Utc};

use consent::{ConsentKind, ConsentRecord, Purpose};
use serde_json::Value;

use crate::config::{Config, OrgKind};

use super::codec::str_of;
#[allow(unused_imports)]
use super::*;

/// Does a stored consent count for disclosures? A `referral_verbal`
/// consent counts only when its record shows the four things the Guide for
/// CWS (*Consent*) asks every consent record to show — the provider and
/// service, the information shared, the duration and the right to
/// withdraw were explained — as its `consent-explained` extension with all
/// four flags true. One recorded before the flags were required (no
/// extension) or with a flag false or missing counts for nothing: the
/// family is asked again and a new consent recorded (`docs/consent.md`,
/// "Consents recorded before the four flags"). Other kinds are not
/// affected.
pub fn consent_counts(record: &ConsentRecord, consent: &Value) -> bool {
    record.kind != ConsentKind::ReferralVerbal
        || Explained::from_fhir(consent).is_some_and(|e| e.first_missing().is_none())
}

/// What the gateway knows of a patient that consent decisions depend on.
#[derive(Debug, Clone, Default)]
pub struct PatientContext {
    pub patient_id: String,
    /// The consents that count ([`consent_counts`]).
    pub consents: Vec<ConsentRecord>,
    /// Referral consents on file that do not count: their records do not
    /// show the four explained flags ([`consent_counts`]). Never decided
    /// on; kept so that they can be shown.
    pub not_counted: Vec<ConsentRecord>,
    /// What each consent shows was explained, by consent id (for `explain`).
    pub explained: Vec<(String, Explained)>,
    pub member_mcp: Option<String>,
    pub assigned_ecm: Option<String>,
    /// The member's self-referrals: ServiceRequest id → the organizations
    /// it was made to (its performer, its Tasks' owners and authorizing MCP).
    pub self_referrals: Vec<(String, Vec<String>)>,
    pub source_county: Option<String>,
    /// An active CWS case of the member is a Family Maintenance case.
    pub family_maintenance: bool,
    /// The member has an active CWS case (an active EpisodeOfCare).
    pub case_open: bool,
}

/// The resource types [`PatientContext`] is derived from.
pub const CONTEXT_TYPES: [&str; 5] = [
    "Consent",
    "ServiceRequest",
    "Task",
    "Coverage",
    "EpisodeOfCare",
];

/// `EpisodeOfCare.type` code of a Family Maintenance case.
pub const FAMILY_MAINTENANCE: &str = "family_maintenance";

/// The CWS case component of an EpisodeOfCare (`type[].coding[].code` in
/// the `cws-case-component` code system).
pub fn case_component(episode: &Value) -> Option<&str> {
    episode
        .get("type")?
        .as_array()?
        .iter()
        .filter_map(|t| t.get("coding").and_then(Value::as_array))
        .flatten()
        .find(|c| {
            str_of(c, "system").is_some_and(|s| s.ends_with("/CodeSystem/cws-case-component"))
        })
        .and_then(|c| str_of(c, "code"))
}

impl PatientContext {
    /// Derive the context from the patient's stored resources: Consents;
    /// the newest referral's performer (the MCP when no Coverage says);
    /// the self-referrals and whom each was made to; Task owners of accepted
    /// work; Coverage payor; the CWS case's managing county. The referrer is
    /// not the member's: it is read from each ServiceRequest and Task.
    pub fn from_resources(
        cfg: &Config,
        patient_id: &str,
        resources: &[store::StoredResource],
    ) -> PatientContext {
        let mut ctx = PatientContext {
            patient_id: patient_id.to_string(),
            ..PatientContext::default()
        };
        let kind_of = |org: &str| cfg.organization(org).map(|o| o.kind);
        let mut newest_sr: Option<&store::StoredResource> = None;
        let mut assigned_at = None;
        let mut task_parties_by_sr: Vec<(String, Vec<String>)> = Vec::new();
        for r in resources {
            let b = &r.body;
            match r.resource_type.as_str() {
                "Consent" => {
                    if let Some(c) = consent_from_fhir(b) {
                        if let Some(e) = Explained::from_fhir(b) {
                            ctx.explained.push((c.id.clone(), e));
                        }
                        if consent_counts(&c, b) {
                            ctx.consents.push(c);
                        } else {
                            ctx.not_counted.push(c);
                        }
                    }
                }
                "ServiceRequest" => {
                    if is_self_referral(b) {
                        ctx.self_referrals.push((r.id.clone(), performers(b)));
                    }
                    if newest_sr.is_none_or(|n| n.last_updated < r.last_updated) {
                        newest_sr = Some(r);
                    }
                }
                "Task" => {
                    if let Some(focus) = b.get("focus").and_then(|f| ref_id(f, "ServiceRequest")) {
                        task_parties_by_sr.push((focus, task_parties(b)));
                    }
                    // The newest assignment wins (a plan change may leave the
                    // former provider's Task open beside the new one).
                    let status = str_of(b, "status").unwrap_or("");
                    if matches!(status, "accepted" | "in-progress" | "on-hold" | "completed")
                        && assigned_at.is_none_or(|t| t <= r.last_updated)
                    {
                        if let Some(owner) = b.get("owner").and_then(org_of) {
                            if kind_of(&owner) == Some(OrgKind::EcmProvider) {
                                ctx.assigned_ecm = Some(owner);
                                assigned_at = Some(r.last_updated);
                            }
                        }
                    }
                }
                "Coverage" => {
                    let active = str_of(b, "status") == Some("active");
                    let payor = b
                        .get("payor")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find_map(org_of));
                    if let (true, Some(p)) = (active, payor) {
                        if kind_of(&p) == Some(OrgKind::Mcp) {
                            ctx.member_mcp = Some(p);
                        }
                    }
                }
                "EpisodeOfCare" => {
                    if let Some(org) = b.get("managingOrganization").and_then(org_of) {
                        ctx.source_county = cfg.organization(&org).and_then(|o| o.county.clone());
                    }
                    if str_of(b, "status") == Some("active") {
                        ctx.case_open = true;
                    }
                    if str_of(b, "status") == Some("active")
                        && case_component(b) == Some(FAMILY_MAINTENANCE)
                    {
                        ctx.family_maintenance = true;
                    }
                }
                _ => {}
            }
        }
        for (sr, made_to) in &mut ctx.self_referrals {
            for (_, parties) in task_parties_by_sr.iter().filter(|(f, _)| f == sr) {
                for p in parties {
                    if !made_to.contains(p) {
                        made_to.push(p.clone());
                    }
                }
            }
        }
        if let Some(sr) = newest_sr {
            let b = &sr.body;
            if ctx.member_mcp.is_none() {
                let performer = b
                    .get("performer")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find_map(org_of));
                if let Some(p) = performer {
                    if kind_of(&p) == Some(OrgKind::Mcp) {
                        ctx.member_mcp = Some(p);
                    }
                }
            }
        }
        ctx
    }

    /// Every organization a self-referral of the member was made to.
    pub fn self_referral_to(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for o in self.self_referrals.iter().flat_map(|(_, m)| m) {
            if !out.contains(o) {
                out.push(o.clone());
            }
        }
        out
    }

    /// Load from the store.
    pub async fn load(
        cfg: &Config,
        store: &dyn store::Store,
        patient_id: &str,
    ) -> Result<PatientContext, store::StoreError> {
        // Only the types the context reads: a youth's compartment grows with
        // every ADT message (Encounters, Conditions …); these stay small.
        let resources = store
            .resources_by_patient_types(patient_id, &CONTEXT_TYPES)
            .await?;
        Ok(PatientContext::from_resources(cfg, patient_id, &resources))
    }

    pub fn engine_context(&self, purpose: Purpose, now: DateTime<Utc>) -> consent::Context {
        consent::Context {
            now,
            purpose,
            assigned_ecm: self.assigned_ecm.clone(),
            member_mcp: self.member_mcp.clone(),
            self_referral_to: self.self_referral_to(),
            source_county: self.source_county.clone(),
            family_maintenance: self.family_maintenance,
            case_open: self.case_open,
        }
    }
}
