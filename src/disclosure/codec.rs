//! The FHIR Consent codec: the gateway's Consent shape, read
//! ([`consent_from_fhir`]) and written ([`consent_to_fhir`], [`withdraw`],
//! [`add_explained`]), with the code systems and extensions it uses.

use chrono::{DateTime, Utc};

use consent::{Category, ConsentKind, ConsentRecord, GrantorRole};
use serde_json::{json, Value};

#[allow(unused_imports)]
use super::*;

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

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
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

/// A grantor role code (`youth`, `nmd`, `parent`, `legal_guardian`,
/// `social_worker`, `court`) as the consent engine's role.
pub fn grantor_from_code(c: &str) -> Option<GrantorRole> {
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
