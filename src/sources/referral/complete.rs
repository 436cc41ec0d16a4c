//! The parts of the ECM Referral Standards (ECM Policy Guide VIII, "ECM
//! Referral Standards") the referral carries beyond the ServiceRequest's
//! own elements, so the MCP that decides receives all of them:
//!
//! - the referrer — a professional (hospital, PCP, clinic, CBO, school,
//!   county …) as a contained `PractitionerRole` (name as
//!   `practitioner.display`, role as `code.text`, phone and email as
//!   `telecom`, `organization` the referring organization); a member-side
//!   referrer (the member, a parent, guardian, caregiver or relative) as a
//!   contained `RelatedPerson` (name, relationship, phone, email) — named by
//!   the ServiceRequest's `referring-person` extension. The requester stays
//!   the referring Organization: routing and the consent rules know the
//!   referrer by it;
//! - the member's phone, address and preferred language on the Patient;
//! - the referral criteria: coded (`criteriaCodes`) and free text
//!   (`criteria` as text, `criteriaText`) as one more `reasonCode`;
//! - the member's current care managers: a configured organization as
//!   `Organization/{id}`, any other (not contracted, not configured) as a
//!   contained `PractitionerRole` with its name and contact, all listed in
//!   `supportingInfo`, so no reference dangles.
//!
//! Contained resources travel inside the ServiceRequest, so the referral
//! package (rule R2) carries them wherever the ServiceRequest goes.

use serde_json::{json, Value};

use crate::config::Config;

/// The ServiceRequest extension naming the person who referred (`#referrer`).
pub const REFERRING_PERSON_EXT: &str = "/StructureDefinition/referring-person";

/// `referrer.relationship` values of a member-side referrer (a
/// `RelatedPerson`); any other relationship is a professional's
/// (`PractitionerRole`).
pub const MEMBER_SIDE_RELATIONSHIPS: &[&str] = &[
    "self",
    "parent",
    "legal_guardian",
    "caregiver",
    "foster_parent",
    "resource_parent",
    "relative",
    "grandparent",
    "sibling",
    "family_member",
    "friend",
];

/// HL7 v3 RoleCode of a member-side relationship, where one fits.
fn role_code(relationship: &str) -> Option<(&'static str, &'static str)> {
    Some(match relationship {
        "self" => ("ONESELF", "self"),
        "parent" => ("PRN", "parent"),
        "legal_guardian" => ("GUARD", "guardian"),
        "grandparent" => ("GRPRN", "grandparent"),
        "sibling" => ("SIB", "sibling"),
        "family_member" | "relative" => ("FAMMEMB", "family member"),
        "foster_parent" | "resource_parent" => ("FSTPRN", "foster parent"),
        "friend" => ("FRND", "unrelated friend"),
        _ => return None,
    })
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// `telecom` of a phone and an email (either may be absent).
fn telecom(phone: Option<&str>, email: Option<&str>) -> Option<Value> {
    let mut t = Vec::new();
    if let Some(p) = phone {
        t.push(json!({"system": "phone", "value": p}));
    }
    if let Some(e) = email {
        t.push(json!({"system": "email", "value": e}));
    }
    (!t.is_empty()).then_some(Value::Array(t))
}

/// What the ServiceRequest contains and references beyond its own elements.
#[derive(Debug, Default)]
pub struct Parts {
    /// Contained resources (the referrer, care managers not configured).
    pub contained: Vec<Value>,
    /// `#referrer`, when the referral names a person.
    pub person: Option<String>,
    /// `supportingInfo` references of the current care managers.
    pub care_managers: Vec<String>,
    /// Configured organizations the care managers name (stored with the
    /// referral so their references resolve).
    pub care_manager_orgs: Vec<String>,
}

/// The referrer and the care managers of a referral form.
pub fn parts(cfg: &Config, doc: &Value, pid: &str) -> Parts {
    let mut out = Parts::default();
    let r = doc.get("referrer").cloned().unwrap_or_default();
    let relationship = s(&r, "/relationship").unwrap_or("");
    let org = s(&r, "/organizationId").unwrap_or("");
    if let Some(name) = s(&r, "/name") {
        let tel = telecom(s(&r, "/phone"), s(&r, "/email"));
        let mut person = if MEMBER_SIDE_RELATIONSHIPS.contains(&relationship) {
            let mut rel = json!({"text": relationship});
            if let Some((code, display)) = role_code(relationship) {
                rel["coding"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": code, "display": display}]);
            }
            json!({
                "resourceType": "RelatedPerson", "id": "referrer", "active": true,
                "patient": {"reference": format!("Patient/{pid}")},
                "relationship": [rel],
                "name": [{"text": name}],
            })
        } else {
            let mut pr = json!({
                "resourceType": "PractitionerRole", "id": "referrer", "active": true,
                "practitioner": {"display": name},
                "organization": {"reference": format!("Organization/{org}")},
                "code": [{"text": s(&r, "/role").unwrap_or("")}],
            });
            if !relationship.is_empty() {
                pr["specialty"] = json!([{"text": relationship}]);
            }
            pr
        };
        if let Some(t) = tel {
            person["telecom"] = t;
        }
        out.contained.push(person);
        out.person = Some("#referrer".into());
    }
    for (i, cm) in doc
        .get("currentCareManagers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let configured = s(cm, "/organizationId").filter(|o| cfg.organization(o).is_some());
        if let Some(o) = configured {
            let r = format!("Organization/{o}");
            if !out.care_managers.contains(&r) {
                out.care_managers.push(r);
                out.care_manager_orgs.push(o.to_string());
            }
            continue;
        }
        let id = format!("care-manager-{}", i + 1);
        let mut pr = json!({
            "resourceType": "PractitionerRole", "id": id, "active": true,
            "code": [{"text": format!("current care manager ({})", s(cm, "/program").unwrap_or("other"))}],
        });
        if let Some(n) = s(cm, "/name") {
            pr["practitioner"] = json!({"display": n});
        }
        if let Some(n) = s(cm, "/organizationName").or_else(|| s(cm, "/organizationId")) {
            pr["organization"] = json!({"display": n});
        }
        if let Some(t) = telecom(s(cm, "/phone"), s(cm, "/email")) {
            pr["telecom"] = t;
        }
        out.contained.push(pr);
        out.care_managers.push(format!("#{id}"));
    }
    out
}

/// The referral's criteria as one more `reasonCode`: coded criteria
/// (`criteriaCodes`, system `{base}/CodeSystem/ecm-referral-criterion`) and
/// the free text (`criteria` when it is text, else `criteriaText`, else a
/// structured criteria's `text`). None when the form gives neither.
pub fn criteria_reason(doc: &Value, base: &str) -> Option<Value> {
    let text = doc
        .get("criteria")
        .and_then(Value::as_str)
        .or_else(|| s(doc, "/criteriaText"))
        .or_else(|| s(doc, "/criteria/text"));
    let codes: Vec<Value> = doc
        .get("criteriaCodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|c| json!({"system": format!("{base}/CodeSystem/ecm-referral-criterion"), "code": c}))
        .collect();
    if text.is_none() && codes.is_empty() {
        return None;
    }
    let mut r = json!({});
    if !codes.is_empty() {
        r["coding"] = Value::Array(codes);
    }
    if let Some(t) = text {
        r["text"] = json!(t);
    }
    Some(r)
}

/// Add the form's member contact details to a Patient without changing
/// what it states: a phone it does not list, an address and a preferred
/// language when it has none. True when anything was added.
pub fn merge_contact(pat: &mut Value, member: &Value) -> bool {
    let mut changed = false;
    if let Some(ph) = s(member, "/phone") {
        let has = pat
            .get("telecom")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|t| s(t, "/value") == Some(ph)));
        if !has {
            let entry = json!({"system": "phone", "value": ph});
            match pat.get_mut("telecom").and_then(Value::as_array_mut) {
                Some(a) => a.push(entry),
                None => pat["telecom"] = json!([entry]),
            }
            changed = true;
        }
    }
    let no_address = pat
        .get("address")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    if let (true, Some(a)) = (no_address, member.get("address").filter(|a| a.is_object())) {
        let mut addr = json!({"use": "home"});
        for (from, to) in [
            ("line", "line"),
            ("city", "city"),
            ("state", "state"),
            ("postalCode", "postalCode"),
            ("county", "district"),
        ] {
            if let Some(v) = a.get(from) {
                addr[to] = v.clone();
            }
        }
        if addr.as_object().is_some_and(|o| o.len() > 1) {
            pat["address"] = json!([addr]);
            changed = true;
        }
    }
    let no_language = pat
        .get("communication")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    if let (true, Some(l)) = (no_language, s(member, "/preferredLanguage")) {
        pat["communication"] = json!([{"language": {"text": l}, "preferred": true}]);
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_details_are_added_never_overridden() {
        let mut p = json!({"resourceType": "Patient", "name": [{"family": "Rivera"}],
            "telecom": [{"system": "phone", "value": "555-0100"}],
            "communication": [{"language": {"text": "Spanish"}, "preferred": true}]});
        let m = json!({"name": {"family": "Other"}, "phone": "555-0199", "preferredLanguage": "English",
            "address": {"line": ["1 Main St"], "city": "Fresno", "county": "Fresno"}});
        assert!(merge_contact(&mut p, &m));
        assert_eq!(p["name"][0]["family"], "Rivera");
        assert_eq!(p["telecom"].as_array().unwrap().len(), 2);
        assert_eq!(p["communication"][0]["language"]["text"], "Spanish");
        assert_eq!(p["address"][0]["district"], "Fresno");
        // Nothing new the second time.
        assert!(!merge_contact(&mut p, &m));
    }

    #[test]
    fn criteria_text_and_codes_become_one_reason() {
        let r = criteria_reason(
            &json!({"criteria": "two ED visits", "criteriaCodes": ["ed-utilization"]}),
            "https://b",
        )
        .unwrap();
        assert_eq!(r["text"], "two ED visits");
        assert_eq!(r["coding"][0]["code"], "ed-utilization");
        assert!(criteria_reason(&json!({"criteria": {"homeless": true}}), "https://b").is_none());
    }
}
