//! The glue between stored FHIR resources and the pure consent engine
//! (`cwsgw_consent`): what a Consent resource means, what a resource is (its
//! labels, category, patient), who a recipient is, and what the patient's
//! situation is (referrer, plan, assigned ECM provider) — then one `decide`
//! that every exit calls, and `apply_obligations` that masks what a permit
//! allows only in part.
//!
//! **Architecture Invariant: consent is decided at the moment of disclosure.**
//! Nothing here caches a decision; callers ask `decide` right before each
//! delivery attempt and each read.
//!
//! ## The Consent resource (what `consent.recorded`, inline referral consents
//! and `POST /fhir/Consent` produce, and what this module reads)
//! - `status`: `active`, or `inactive` once withdrawn;
//! - `scope` = consentscope `patient-privacy`;
//! - `category`: LOINC 59284-0 and a coding `{base}/CodeSystem/consent-kind`
//!   `referral_verbal | release_of_information | part2_written`;
//! - `patient`, `dateTime` (recorded), `organization` (the recording county or provider);
//! - extension `{base}/StructureDefinition/consent-grantor-role` (valueCode
//!   `youth|nmd|parent|legal_guardian|social_worker|court`), extension
//!   `{base}/StructureDefinition/consent-explained` (what the record shows
//!   was explained: sub-extensions `provider`, `informationShared`,
//!   `duration`, `rightToWithdraw`, each a valueBoolean — see
//!   `docs/consent.md`) and, after a withdrawal,
//!   `{base}/StructureDefinition/consent-withdrawn-at` (valueDateTime);
//! - `provision`: `type` permit, `period`, `actor[]` (role v3-ParticipationType
//!   `IRCP`, reference `Organization/{id}`), `class[]` codes from
//!   `{base}/CodeSystem/consent-category`, `securityLabel[]` for the sensitive
//!   categories (`ETH`, `PSY`, `HIV`, `SEX`).
//!
//! Systems are matched on their path suffix, so a change of `canonical_base`
//! does not orphan existing consents.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use consent::{Category, ConsentKind, ConsentRecord, Decision, GrantorRole, Obligation, Purpose};
use serde_json::{json, Value};

use crate::config::{Config, OrgKind};

pub const CONSENT_KIND_CS: &str = "/CodeSystem/consent-kind";
pub const CONSENT_CATEGORY_CS: &str = "/CodeSystem/consent-category";
pub const GRANTOR_EXT: &str = "/StructureDefinition/consent-grantor-role";
pub const WITHDRAWN_EXT: &str = "/StructureDefinition/consent-withdrawn-at";
pub const SELF_REFERRAL_EXT: &str = "/StructureDefinition/self-referral";
pub const EXPLAINED_EXT: &str = "/StructureDefinition/consent-explained";
/// The four things every referral consent record shows were explained
/// (Guide for CWS, section Consent), as the input and the FHIR extension
/// name them.
pub const EXPLAINED_FLAGS: [&str; 4] = [
    "provider",
    "informationShared",
    "duration",
    "rightToWithdraw",
];
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A FHIR dateTime: RFC 3339, or a date (the start of that day, UTC).
pub fn parse_fhir_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // A FHIR date (YYYY-MM-DD) means the start of that day (UTC).
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc())
}

/// The organization id of a reference like `Organization/mcp-a`.
pub fn org_of(reference: &Value) -> Option<String> {
    let r = str_of(reference, "reference")?;
    r.strip_prefix("Organization/").map(str::to_string)
}

/// The id of a `Type/id` reference (last two path segments also accepted).
pub fn ref_id(reference: &Value, rtype: &str) -> Option<String> {
    let r = str_of(reference, "reference")?;
    let mut parts = r.rsplit('/');
    let id = parts.next()?;
    let t = parts.next()?;
    (t == rtype).then(|| id.to_string())
}

fn grantor_from_code(c: &str) -> Option<GrantorRole> {
    Some(match c {
        "youth" => GrantorRole::Youth,
        "nmd" => GrantorRole::Nmd,
        "parent" => GrantorRole::Parent,
        "legal_guardian" => GrantorRole::LegalGuardian,
        "social_worker" => GrantorRole::SocialWorker,
        "court" => GrantorRole::Court,
        _ => return None,
    })
}

pub fn kind_from_code(c: &str) -> Option<ConsentKind> {
    Some(match c {
        "referral_verbal" => ConsentKind::ReferralVerbal,
        "release_of_information" => ConsentKind::ReleaseOfInformation,
        "part2_written" => ConsentKind::Part2Written,
        _ => return None,
    })
}

pub fn category_from_code(c: &str) -> Option<Category> {
    Category::ALL.into_iter().find(|k| k.code() == c)
}

/// Read a FHIR Consent into the engine's record. `None` when it is not one of
/// ours (unknown kind, no patient, no grantor): such a Consent permits nothing.
pub fn consent_from_fhir(res: &Value) -> Option<ConsentRecord> {
    if str_of(res, "resourceType") != Some("Consent") {
        return None;
    }
    let id = str_of(res, "id")?.to_string();
    let patient_id = res.get("patient").and_then(|p| ref_id(p, "Patient"))?;
    let kind = res
        .get("category")?
        .as_array()?
        .iter()
        .flat_map(|c| {
            c.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|c| str_of(c, "system").is_some_and(|s| s.ends_with(CONSENT_KIND_CS)))
        .and_then(|c| str_of(c, "code"))
        .and_then(kind_from_code)?;
    let ext = |suffix: &str| -> Option<&Value> {
        res.get("extension")?
            .as_array()?
            .iter()
            .find(|e| str_of(e, "url").is_some_and(|u| u.ends_with(suffix)))
    };
    let grantor_role = ext(GRANTOR_EXT)
        .and_then(|e| str_of(e, "valueCode"))
        .and_then(grantor_from_code)?;
    let recorded_at = str_of(res, "dateTime").and_then(parse_fhir_time)?;
    let provision = res.get("provision");
    let recipients: Vec<String> = provision
        .and_then(|p| p.get("actor"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get("reference").and_then(org_of))
                .collect()
        })
        .unwrap_or_default();
    let categories: Vec<Category> = provision
        .and_then(|p| p.get("class"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|c| str_of(c, "system").is_some_and(|s| s.ends_with(CONSENT_CATEGORY_CS)))
                .filter_map(|c| str_of(c, "code").and_then(category_from_code))
                .collect()
        })
        .unwrap_or_default();
    let period = provision.and_then(|p| p.get("period"));
    let start = period
        .and_then(|p| str_of(p, "start"))
        .and_then(parse_fhir_time)
        .unwrap_or(recorded_at);
    let end = period
        .and_then(|p| str_of(p, "end"))
        .and_then(parse_fhir_time);
    let mut withdrawn_at = ext(WITHDRAWN_EXT)
        .and_then(|e| str_of(e, "valueDateTime"))
        .and_then(parse_fhir_time);
    if withdrawn_at.is_none() && str_of(res, "status") != Some("active") {
        // Not active and no withdrawal time: it counts for nothing, ever.
        withdrawn_at = Some(DateTime::<Utc>::MIN_UTC);
    }
    Some(ConsentRecord {
        id,
        kind,
        patient_id,
        grantor_role,
        recipients,
        categories,
        start,
        end,
        withdrawn_at,
        recorded_at,
    })
}

/// Everything needed to build a Consent resource.
#[derive(Debug, Clone)]
pub struct ConsentSpec<'a> {
    pub canonical_base: &'a str,
    pub id: &'a str,
    pub identifier: Option<(&'a str, &'a str)>,
    pub patient_id: &'a str,
    pub kind: &'a str,
    pub grantor_role: &'a str,
    pub grantor_name: Option<&'a str>,
    pub recorded_by_org: &'a str,
    pub recorded_at: &'a str,
    pub recipients: &'a [String],
    pub categories: &'a [String],
    pub start: &'a str,
    pub end: Option<&'a str>,
}

/// The v3-ActCode sensitivity label a consent category lifts, if any.
pub fn category_label(category: &str) -> Option<&'static str> {
    match category {
        "substance_use" => Some("ETH"),
        "behavioral_health" => Some("PSY"),
        "hiv" => Some("HIV"),
        "reproductive" => Some("SEX"),
        _ => None,
    }
}

/// Build the Consent resource described above (used for inline referral
/// consents; the case-event mapping produces the same shape).
pub fn consent_to_fhir(s: &ConsentSpec) -> Value {
    let base = s.canonical_base;
    let mut c = json!({
        "resourceType": "Consent",
        "id": s.id,
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]},
            {"coding": [{"system": format!("{base}{CONSENT_KIND_CS}"), "code": s.kind}]}
        ],
        "patient": {"reference": format!("Patient/{}", s.patient_id)},
        "dateTime": s.recorded_at,
        "organization": [{"reference": format!("Organization/{}", s.recorded_by_org)}],
        "extension": [{"url": format!("{base}{GRANTOR_EXT}"), "valueCode": s.grantor_role}],
        "provision": {
            "type": "permit",
            "period": {"start": s.start},
            "actor": s.recipients.iter().map(|r| json!({
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"reference": format!("Organization/{r}")}
            })).collect::<Vec<_>>(),
            "class": s.categories.iter().map(|c| json!({"system": format!("{base}{CONSENT_CATEGORY_CS}"), "code": c})).collect::<Vec<_>>()
        }
    });
    if let Some((system, value)) = s.identifier {
        c["identifier"] = json!([{"system": system, "value": value}]);
    }
    if let Some(name) = s.grantor_name {
        c["performer"] = json!([{"display": name}]);
    }
    if let Some(end) = s.end {
        c["provision"]["period"]["end"] = json!(end);
    }
    let labels: Vec<Value> = s
        .categories
        .iter()
        .filter_map(|c| category_label(c))
        .map(|l| json!({"system": ACT_CODE, "code": l}))
        .collect();
    if !labels.is_empty() {
        c["provision"]["securityLabel"] = Value::Array(labels);
    }
    if s.recipients.is_empty() {
        if let Some(p) = c["provision"].as_object_mut() {
            p.remove("actor");
        }
    }
    if s.categories.is_empty() {
        if let Some(p) = c["provision"].as_object_mut() {
            p.remove("class");
        }
    }
    c
}

/// Mark a Consent resource withdrawn at `at` (status inactive + extension).
pub fn withdraw(consent: &mut Value, canonical_base: &str, at: &str) {
    consent["status"] = json!("inactive");
    let ext = json!({"url": format!("{canonical_base}{WITHDRAWN_EXT}"), "valueDateTime": at});
    match consent.get_mut("extension").and_then(Value::as_array_mut) {
        Some(a) => {
            a.retain(|e| !str_of(e, "url").is_some_and(|u| u.ends_with(WITHDRAWN_EXT)));
            a.push(ext);
        }
        None => consent["extension"] = json!([ext]),
    }
}

/// What a consent record shows was explained (Guide for CWS, section
/// Consent): the provider and service, the information shared, for how
/// long, and the right to withdraw. `None` for a flag the record omits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explained {
    pub provider: Option<bool>,
    pub information_shared: Option<bool>,
    pub duration: Option<bool>,
    pub right_to_withdraw: Option<bool>,
}

impl Explained {
    /// All four points explained (what a counting referral consent shows).
    pub const ALL: Explained = Explained {
        provider: Some(true),
        information_shared: Some(true),
        duration: Some(true),
        right_to_withdraw: Some(true),
    };

    /// From an input `explained` object (`consent.recorded`, an inline
    /// referral consent); a flag that is absent or not a boolean is `None`.
    pub fn from_input(explained: Option<&Value>) -> Explained {
        let flag = |k: &str| explained.and_then(|e| e.get(k)).and_then(Value::as_bool);
        Explained {
            provider: flag(EXPLAINED_FLAGS[0]),
            information_shared: flag(EXPLAINED_FLAGS[1]),
            duration: flag(EXPLAINED_FLAGS[2]),
            right_to_withdraw: flag(EXPLAINED_FLAGS[3]),
        }
    }

    /// From a stored Consent's `consent-explained` extension.
    pub fn from_fhir(consent: &Value) -> Option<Explained> {
        let ext = consent
            .get("extension")?
            .as_array()?
            .iter()
            .find(|e| str_of(e, "url").is_some_and(|u| u.ends_with(EXPLAINED_EXT)))?;
        let subs = ext.get("extension").and_then(Value::as_array);
        let flag = |k: &str| {
            subs.into_iter()
                .flatten()
                .find(|e| str_of(e, "url") == Some(k))
                .and_then(|e| e.get("valueBoolean"))
                .and_then(Value::as_bool)
        };
        Some(Explained {
            provider: flag(EXPLAINED_FLAGS[0]),
            information_shared: flag(EXPLAINED_FLAGS[1]),
            duration: flag(EXPLAINED_FLAGS[2]),
            right_to_withdraw: flag(EXPLAINED_FLAGS[3]),
        })
    }

    fn flags(&self) -> [(&'static str, Option<bool>); 4] {
        [
            (EXPLAINED_FLAGS[0], self.provider),
            (EXPLAINED_FLAGS[1], self.information_shared),
            (EXPLAINED_FLAGS[2], self.duration),
            (EXPLAINED_FLAGS[3], self.right_to_withdraw),
        ]
    }

    /// The first of the four flags that is false or missing, if any: a
    /// referral consent that does not show all four is refused.
    pub fn first_missing(&self) -> Option<&'static str> {
        self.flags()
            .into_iter()
            .find(|(_, v)| *v != Some(true))
            .map(|(k, _)| k)
    }

    /// The `consent-explained` extension (flags the record omits are left
    /// out, never invented).
    pub fn to_extension(&self, canonical_base: &str) -> Value {
        let subs: Vec<Value> = self
            .flags()
            .into_iter()
            .filter_map(|(k, v)| v.map(|b| json!({"url": k, "valueBoolean": b})))
            .collect();
        json!({"url": format!("{canonical_base}{EXPLAINED_EXT}"), "extension": subs})
    }
}

/// Add the `consent-explained` extension to a Consent built by
/// [`consent_to_fhir`] (after the grantor-role extension, as the case-event
/// mapping writes it).
pub fn add_explained(consent: &mut Value, canonical_base: &str, explained: &Explained) {
    let ext = explained.to_extension(canonical_base);
    match consent.get_mut("extension").and_then(Value::as_array_mut) {
        Some(a) => {
            a.retain(|e| !str_of(e, "url").is_some_and(|u| u.ends_with(EXPLAINED_EXT)));
            a.push(ext);
        }
        None => consent["extension"] = json!([ext]),
    }
}

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
        }),
        "Task" => Some(consent::ReferralFacts {
            referrer: res.get("requester").and_then(org_of),
            // Whether the Task's referral was a self-referral is its
            // ServiceRequest's to say (`Disclosure::decide_with` adds it).
            self_referral: false,
            made_to: task_parties(res),
        }),
        _ => None,
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
    })
}

/// A ServiceRequest marked as a self-referral (extension `self-referral` true).
fn is_self_referral(sr: &Value) -> bool {
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
fn performers(sr: &Value) -> Vec<String> {
    sr.get("performer")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(org_of).collect())
        .unwrap_or_default()
}

/// The organizations a referral Task was made to: its owner and its
/// authorizing MCP.
fn task_parties(task: &Value) -> Vec<String> {
    let mut out: Vec<String> = task.get("owner").and_then(org_of).into_iter().collect();
    let mcp = task
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| {
            str_of(e, "url").is_some_and(|u| u.ends_with(crate::resources::AUTHORIZING_MCP_EXT))
        })
        .and_then(|e| e.get("valueReference"))
        .and_then(org_of);
    if let Some(m) = mcp.filter(|m| !out.contains(m)) {
        out.push(m);
    }
    out
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
    };
    Some(consent::Recipient {
        org_id: o.id.clone(),
        kind,
        county: o.county.clone(),
        mcp_network: o.mcps.clone(),
    })
}

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
        }
    }
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
/// sex, the Medi-Cal CIN, telecom and contacts (without their addresses) —
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

/// A release of information for `ecm-1` covering `case` (parent as
/// grantor, no end), in the gateway's Consent shape: the fixture the
/// Consent checks of `sources::fhir_write` and `resources::validate` test
/// against.
#[cfg(test)]
pub(crate) fn sample_release_consent() -> Value {
    let r = vec!["ecm-1".to_string()];
    let c = vec!["case".to_string()];
    consent_to_fhir(&ConsentSpec {
        canonical_base: "https://gw.example/fhir",
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://gateway.example.org/fhir";

    fn spec<'a>(recipients: &'a [String], categories: &'a [String]) -> ConsentSpec<'a> {
        ConsentSpec {
            canonical_base: BASE,
            id: "c1",
            identifier: Some(("urn:x", "CONS-1")),
            patient_id: "p1",
            kind: "release_of_information",
            grantor_role: "parent",
            grantor_name: Some("A Parent"),
            recorded_by_org: "county-fresno",
            recorded_at: "2026-01-10T09:00:00Z",
            recipients,
            categories,
            start: "2026-01-10",
            end: Some("2027-01-10"),
        }
    }

    #[test]
    fn consent_round_trips_through_fhir() {
        let r = vec!["mcp-a".to_string(), "ecm-compass".to_string()];
        let c = vec!["case".to_string(), "substance_use".to_string()];
        let fhir = consent_to_fhir(&spec(&r, &c));
        assert_eq!(fhir["provision"]["securityLabel"][0]["code"], "ETH");
        let rec = consent_from_fhir(&fhir).unwrap();
        assert_eq!(rec.id, "c1");
        assert_eq!(rec.patient_id, "p1");
        assert_eq!(rec.kind, ConsentKind::ReleaseOfInformation);
        assert_eq!(rec.grantor_role, GrantorRole::Parent);
        assert_eq!(rec.recipients, r);
        assert_eq!(rec.categories, vec![Category::Case, Category::SubstanceUse]);
        assert_eq!(rec.start.to_rfc3339(), "2026-01-10T00:00:00+00:00");
        assert!(rec.end.is_some());
        assert!(rec.withdrawn_at.is_none());
    }

    #[test]
    fn withdrawal_is_read_back() {
        let r = vec!["mcp-a".to_string()];
        let c = vec!["referral".to_string()];
        let mut fhir = consent_to_fhir(&spec(&r, &c));
        withdraw(&mut fhir, BASE, "2026-02-01T12:00:00Z");
        assert_eq!(fhir["status"], "inactive");
        let rec = consent_from_fhir(&fhir).unwrap();
        assert_eq!(
            rec.withdrawn_at.unwrap().to_rfc3339(),
            "2026-02-01T12:00:00+00:00"
        );
        // Inactive without a time: never valid.
        fhir["extension"]
            .as_array_mut()
            .unwrap()
            .retain(|e| !e["url"].as_str().unwrap().ends_with(WITHDRAWN_EXT));
        assert_eq!(
            consent_from_fhir(&fhir).unwrap().withdrawn_at,
            Some(DateTime::<Utc>::MIN_UTC)
        );
    }

    /// A referral consent whose record does not show the four explained
    /// flags — recorded before they were required, or with one false —
    /// does not count; a release without them does.
    #[test]
    fn only_an_explained_referral_consent_counts() {
        let r = vec!["mcp-a".to_string()];
        let c = vec!["referral".to_string()];
        let referral = |explained: Option<Explained>| {
            let mut s = spec(&r, &c);
            s.kind = "referral_verbal";
            let mut fhir = consent_to_fhir(&s);
            if let Some(e) = explained {
                add_explained(&mut fhir, BASE, &e);
            }
            let store = |id: &str, body: Value| store::StoredResource {
                resource_type: "Consent".into(),
                id: id.into(),
                version_id: 1,
                last_updated: Utc::now(),
                patient_id: Some("p1".into()),
                body,
            };
            store("c1", fhir)
        };
        let all = Explained::ALL;
        let one_false = Explained {
            duration: Some(false),
            ..all
        };
        let cfg = Config::default();
        for (explained, counts) in [(Some(all), true), (None, false), (Some(one_false), false)] {
            let res = referral(explained);
            let rec = consent_from_fhir(&res.body).unwrap();
            assert_eq!(consent_counts(&rec, &res.body), counts, "{explained:?}");
            let ctx = PatientContext::from_resources(&cfg, "p1", std::slice::from_ref(&res));
            assert_eq!(ctx.consents.len(), usize::from(counts), "{explained:?}");
            assert_eq!(ctx.not_counted.len(), usize::from(!counts), "{explained:?}");
        }
        let release = consent_to_fhir(&spec(&r, &c));
        let rec = consent_from_fhir(&release).unwrap();
        assert!(consent_counts(&rec, &release), "a release needs no flags");
    }

    #[test]
    fn explained_flags_round_trip_and_the_first_missing_is_named() {
        let r = vec!["mcp-a".to_string()];
        let c = vec!["referral".to_string()];
        let partly = Explained::from_input(Some(
            &json!({"provider": true, "informationShared": true, "duration": false}),
        ));
        assert_eq!(partly.first_missing(), Some("duration"));
        let mut fhir = consent_to_fhir(&spec(&r, &c));
        assert_eq!(Explained::from_fhir(&fhir), None);
        add_explained(&mut fhir, BASE, &partly);
        add_explained(&mut fhir, BASE, &partly);
        let exts: Vec<&Value> = fhir["extension"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["url"] == format!("{BASE}{EXPLAINED_EXT}"))
            .collect();
        assert_eq!(exts.len(), 1, "added once: {fhir}");
        // A flag the input omitted is left out, not invented.
        assert_eq!(exts[0]["extension"].as_array().unwrap().len(), 3);
        let back = Explained::from_fhir(&fhir).unwrap();
        assert_eq!(back, partly);
        assert_eq!(back.right_to_withdraw, None);
        // The grantor extension is still read.
        assert_eq!(
            consent_from_fhir(&fhir).unwrap().grantor_role,
            GrantorRole::Parent
        );
        let all = Explained::from_input(Some(
            &json!({"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}),
        ));
        assert_eq!(all.first_missing(), None);
        assert_eq!(
            Explained::from_input(None).first_missing(),
            Some("provider")
        );
    }

    #[test]
    fn a_referrals_own_resources_carry_its_referrer_and_recipients() {
        let sr = json!({"resourceType": "ServiceRequest", "id": "sr1",
            "subject": {"reference": "Patient/p1"},
            "requester": {"reference": "Organization/mcp-b"},
            "performer": [{"reference": "Organization/mcp-a"}],
            "extension": [{"url": format!("{BASE}{SELF_REFERRAL_EXT}"), "valueBoolean": true}]});
        let f = resource_facts(&sr).unwrap().referral.unwrap();
        assert_eq!(f.referrer.as_deref(), Some("mcp-b"));
        assert!(f.self_referral);
        assert_eq!(f.made_to, vec!["mcp-a".to_string()]);
        let task = json!({"resourceType": "Task", "id": "t1",
            "for": {"reference": "Patient/p1"},
            "focus": {"reference": "ServiceRequest/sr1"},
            "requester": {"reference": "Organization/county-fresno"},
            "owner": {"reference": "Organization/ecm-compass"},
            "extension": [{"url": format!("{BASE}{}", crate::resources::AUTHORIZING_MCP_EXT),
                "valueReference": {"reference": "Organization/mcp-a"}}]});
        let f = resource_facts(&task).unwrap().referral.unwrap();
        assert_eq!(f.referrer.as_deref(), Some("county-fresno"));
        assert!(!f.self_referral, "the ServiceRequest says");
        assert_eq!(
            f.made_to,
            vec!["ecm-compass".to_string(), "mcp-a".to_string()]
        );
        // The status projection keeps the requester R4 decides on.
        let p = crate::delivery::bundle::task_status_projection(&task);
        assert_eq!(
            resource_facts(&p)
                .unwrap()
                .referral
                .unwrap()
                .referrer
                .as_deref(),
            Some("county-fresno")
        );
        let patient = json!({"resourceType": "Patient", "id": "p1"});
        assert!(resource_facts(&patient).unwrap().referral.is_none());
    }

    #[test]
    fn foreign_consents_permit_nothing() {
        assert!(consent_from_fhir(
            &json!({"resourceType": "Consent", "id": "x", "patient": {"reference": "Patient/p"}})
        )
        .is_none());
        assert!(consent_from_fhir(&json!({"resourceType": "Patient", "id": "x"})).is_none());
    }

    #[test]
    fn referral_package_patient_is_minimal() {
        let p = json!({"resourceType": "Patient", "id": "p1", "birthDate": "2011-04-02", "gender": "male",
            "name": [{"family": "Demo"}], "address": [{"city": "Fresno"}],
            "identifier": [
                {"type": {"coding": [{"code": "MR"}]}, "value": "MRN1"},
                {"type": {"coding": [{"code": "MA"}]}, "value": "92000001A"}],
            "contact": [{"name": {"family": "Demo"}, "address": {"city": "Fresno"}}],
            "extension": [{"url": "x", "valueString": "y"}]});
        let d = Decision {
            effect: consent::Effect::Permit,
            rule: "R2".into(),
            consent_id: Some("c".into()),
            reason: "permit.referral-consent".into(),
            obligations: vec![],
            votes: vec![],
        };
        let out = apply_obligations(&p, &d);
        assert!(out.get("address").is_none() && out.get("extension").is_none());
        assert_eq!(out["identifier"].as_array().unwrap().len(), 1);
        assert_eq!(out["identifier"][0]["value"], "92000001A");
        assert!(out["contact"][0].get("address").is_none());
        assert_eq!(out["birthDate"], "2011-04-02");
        // Under another rule (a release), the Patient is not cut down.
        let d5 = Decision {
            rule: "R5".into(),
            ..d
        };
        assert!(apply_obligations(&p, &d5).get("address").is_some());
    }

    #[test]
    fn obligations_mask_and_label() {
        let res = json!({"resourceType": "Patient", "id": "p1", "address": [{"city": "Fresno"}], "meta": {"security": [{"system": ACT_CODE, "code": "ETH"}]}});
        let d = Decision {
            effect: consent::Effect::Permit,
            rule: "R7".into(),
            consent_id: None,
            reason: "permit".into(),
            obligations: vec![
                Obligation::Mask {
                    path: "Patient.address".into(),
                },
                Obligation::NoRedisclosureNotice,
            ],
            votes: vec![],
        };
        let out = apply_obligations(&res, &d);
        assert!(out.get("address").is_none());
        let codes: Vec<&str> = out["meta"]["security"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, vec!["ETH", "REDACTED", "NORDSCLCD"]);
    }
}
