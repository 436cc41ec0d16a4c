//! `POST /ecm/referrals`: an ECM referral form (the DHCS ECM referral
//! form, `profiles/ecm-referral.schema.json`) → `ServiceRequest` + `Task`
//! (+ `Consent` for an inline attestation), 201 with a `collection` Bundle
//! and `Location: /fhir/ServiceRequest/{id}`.
//!
//! Rules, checked before anything is journaled (a refusal is 422
//! `business-rule` naming the field and what to do):
//! - `referrer.organizationId` is the caller's organization (else 403);
//! - the member is in managed care: an `active` Coverage whose payor is a
//!   configured MCP (`enrollment.updated` writes it); FFS or share of cost →
//!   "enroll the member in a Medi-Cal plan first"; a plan code no
//!   configured MCP serves in the county → refused as such;
//! - `selfReferral: true` only for a real self-referral: the member, a
//!   parent, a legal guardian or a caregiver referring themselves
//!   (`referrer.relationship` `self`, `parent`, `legal_guardian` or
//!   `caregiver`), never from a county — a county's referral is the SW's,
//!   which needs the youth's or family's consent (Guide for CWS, section
//!   Consent). Otherwise 422 naming `selfReferral`;
//! - unless a self-referral (or an MCP referring to itself), an **active
//!   `referral_verbal` consent naming every receiving organization** (the MCP,
//!   and the preferred ECM provider when it becomes the performer), granted
//!   by the youth or NMD, a parent or a legal guardian: either stored
//!   (`consentId` narrows the search to that consent) or attested inline in
//!   `consent` with all four `explained` flags true and a grantor
//!   `cwsgw_consent::validate_grantor` accepts for the member's age (the SW
//!   or the court → 422 naming `consent.grantor.role`).
//!
//! Ids are uuid5 of `servicerequest|{referrer}|{referralId}` (and `task|…`,
//! `consent|referral|…`); times come from the journal's `received_at`, so a
//! replay derives the same resources and answers 200 with what is stored.
//!
//! The `Task` (Gravity SDOH referral pattern): intent `order`, status
//! `requested`, `focus` the ServiceRequest, `for` the Patient, `requester`
//! the referrer, `owner` the MCP (which decides), extension
//! `{base}/StructureDefinition/authorizing-mcp` (the MCP, kept when the owner
//! becomes the assigned ECM provider), `restriction.period.end` = the
//! authorization-decision deadline (5 working days, 72 h expedited), and
//! `input` = assignment recommendations in the program's order (existing
//! contracted care manager — Wraparound, HCPCFC, CCS, ICC — then the
//! preferred provider; PCP and behavioral health provider are not known to
//! the gateway yet).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use consent::{Category, ConsentKind};
use serde_json::{json, Value};
use store::{InputKind, NewInput, Store, StoredResource};

pub mod batch;
mod complete;

use super::Ingress;
use crate::clocks::{self as deadlines, ClockSpec};
use crate::config::{Config, OrgKind};
use crate::disclosure;
use crate::edge::{body_rejection, fhir_json, parse_json, ApiError, ClientCert};
use crate::journal::{self, read_back, Appended, Derived};
use crate::records::coverage::{managed, Managed};
use crate::records::{eligibility, orgs, patients};
use crate::resources::{collection, is_internal, rid, write_of, AUTHORIZING_MCP_EXT};
use crate::state::Core;

pub const STREAMLINED_EXT: &str = "/StructureDefinition/streamlined-authorization";

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// Ids of the resources a referral creates.
pub fn ids(referrer: &str, referral_id: &str) -> (String, String, String) {
    (
        rid(&format!("servicerequest|{referrer}|{referral_id}")),
        rid(&format!("task|{referrer}|{referral_id}")),
        rid(&format!("consent|referral|{referrer}|{referral_id}")),
    )
}

/// `referrer.relationship` values of a self-referral: the member, a parent,
/// a legal guardian or a caregiver referring themselves (Guide for CWS,
/// section Consent: a parent, caregiver or NMD referring themselves needs no
/// referral consent).
pub const SELF_REFERRAL_RELATIONSHIPS: [&str; 4] =
    ["self", "parent", "legal_guardian", "caregiver"];

/// Who may grant the referral consent: the youth or NMD, a parent or a
/// legal guardian — never the SW or the court.
const REFERRAL_GRANTORS: [consent::GrantorRole; 4] = [
    consent::GrantorRole::Youth,
    consent::GrantorRole::Nmd,
    consent::GrantorRole::Parent,
    consent::GrantorRole::LegalGuardian,
];

/// An active referral consent, granted by the youth or the family, whose
/// record shows the four explained flags (`disclosure::consent_counts`),
/// naming every org in `receivers`.
pub fn find_consent(
    resources: &[StoredResource],
    receivers: &[String],
    consent_id: Option<&str>,
    now: DateTime<Utc>,
) -> Option<String> {
    resources
        .iter()
        .filter(|r| r.resource_type == "Consent")
        .filter(|r| {
            consent_id.is_none_or(|cid| {
                r.body
                    .get("identifier")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|i| s(i, "/value") == Some(cid))
            })
        })
        .filter_map(|r| {
            disclosure::consent_from_fhir(&r.body)
                .filter(|c| disclosure::consent_counts(c, &r.body))
        })
        .find(|c| {
            c.kind == ConsentKind::ReferralVerbal
                && REFERRAL_GRANTORS.contains(&c.grantor_role)
                && receivers.iter().all(|o| c.names(o))
                && c.start <= now
                && c.end.is_none_or(|e| e > now)
                && c.withdrawn_at.is_none_or(|w| w > now)
        })
        .map(|c| c.id)
}

/// Everything decided about a referral before it is written.
struct Plan {
    patient_id: String,
    mcp: String,
    performer: String,
    consent: Option<Value>,
    consent_ref: Option<String>,
    streamlined: bool,
    /// The facts the referral is evaluated on (stored facts plus what its
    /// `criteria` states), the engine's evaluation of them as of the
    /// referral, and whether `criteria` stated any facts.
    facts: Option<Value>,
    evaluation: Option<program::Evaluation>,
    criteria_stated: bool,
}

/// Check the rules; `resources` are the patient's stored resources.
fn plan(
    ingress: &Ingress,
    doc: &Value,
    caller: &crate::auth::Caller,
    resources: &[StoredResource],
    now: DateTime<Utc>,
) -> Result<Plan, ApiError> {
    let cfg = &ingress.cfg;
    let base = cfg.server.canonical_base.as_str();
    let cin = s(doc, "/member/cin").unwrap_or("");
    let patient_id = patients::cin_patient_id(cin);
    let mcp = match managed(cfg, resources) {
        Managed::Mcp(m) => m,
        Managed::NotManaged => {
            return Err(ApiError::rule(
                "the member is not in Medi-Cal managed care (fee-for-service or share of cost): enroll the member in a Medi-Cal plan first",
                Some("member.cin"),
            ))
        }
        Managed::NoMcp => {
            return Err(ApiError::rule(
                "no configured MCP serves the member's plan code in the member's county: correct the enrollment (enrollment.updated) or the gateway configuration",
                Some("member.cin"),
            ))
        }
        // No enrollment known (a community referral before the county, if
        // any, has sent one): the referral's own word on the plan stands,
        // as the Referral Standards let any referrer name it.
        Managed::Unknown => match named_mcp(cfg, doc)? {
            Some(m) => m,
            None => {
                return Err(ApiError::rule(
                    "no Medi-Cal managed care enrollment is known for the member: name the member's plan (mcpId, or member.planCode with member.address.county), or send enrollment.updated first",
                    Some("mcpId"),
                ))
            }
        },
    };
    let preferred = s(doc, "/preferredEcmProviderId").filter(|p| orgs::contracted(cfg, p, &mcp));
    let performer = preferred.unwrap_or(&mcp).to_string();
    let mut receivers = vec![mcp.clone()];
    if performer != mcp {
        receivers.push(performer.clone());
    }
    let self_referral = doc.get("selfReferral") == Some(&Value::Bool(true));
    if self_referral {
        check_self_referral(doc, caller)?;
    }
    let own_plan = caller.kind == OrgKind::Mcp && caller.org_id == mcp;
    let (mut consent, mut consent_ref) = (None, None);
    if !(self_referral || own_plan) {
        if let Some(inline) = doc.get("consent") {
            let explained = disclosure::Explained::from_input(inline.get("explained"));
            if let Some(flag) = explained.first_missing() {
                let at = format!("consent.explained.{flag}");
                return Err(ApiError::rule(
                    "the referral consent must show that the provider and service, the information shared, the duration and the right to withdraw were explained",
                    Some(&at),
                ));
            }
            let role_code = s(inline, "/grantor/role").unwrap_or("");
            let role = disclosure::grantor_from_code(role_code).ok_or_else(|| {
                ApiError::invalid("unknown grantor role", Some("consent.grantor.role"))
            })?;
            let birth = chrono::NaiveDate::parse_from_str(
                s(doc, "/member/birthDate").unwrap_or(""),
                "%Y-%m-%d",
            )
            .map_err(|_| ApiError::invalid("birthDate is not a date", Some("member.birthDate")))?;
            let on_s = s(inline, "/obtainedOn").unwrap_or("");
            let on = chrono::NaiveDate::parse_from_str(on_s, "%Y-%m-%d").map_err(|_| {
                ApiError::invalid("obtainedOn is not a date", Some("consent.obtainedOn"))
            })?;
            consent::validate_grantor(
                ConsentKind::ReferralVerbal,
                &[Category::Referral],
                role,
                birth,
                on,
            )
            .map_err(|e| ApiError::rule(e.to_string(), Some("consent.grantor.role")))?;
            let (_, _, cid) = ids(&caller.org_id, s(doc, "/referralId").unwrap_or(""));
            let recorded = now.to_rfc3339_opts(SecondsFormat::Secs, true);
            let cats = vec!["referral".to_string()];
            let idsys = format!("{base}/identifier/{}/referral-id", caller.org_id);
            let mut c = disclosure::consent_to_fhir(&disclosure::ConsentSpec {
                canonical_base: base,
                id: &cid,
                identifier: Some((&idsys, s(doc, "/referralId").unwrap_or(""))),
                patient_id: &patient_id,
                kind: "referral_verbal",
                grantor_role: role_code,
                grantor_name: s(inline, "/grantor/name"),
                recorded_by_org: &caller.org_id,
                recorded_at: &recorded,
                recipients: &receivers,
                categories: &cats,
                start: on_s,
                end: None,
            });
            disclosure::add_explained(&mut c, base, &explained);
            consent_ref = Some(cid);
            consent = Some(c);
        } else {
            consent_ref = find_consent(resources, &receivers, s(doc, "/consentId"), now);
            if consent_ref.is_none() {
                let text = format!(
                    "no active referral consent (referral_verbal) given by the youth, a parent or a legal guardian names {}: record it with a consent.recorded event (kind referral_verbal, recipients {:?}) or attest it inline in `consent`",
                    receivers.join(" and "),
                    receivers
                );
                let at = if doc.get("consentId").is_some() {
                    "consentId"
                } else {
                    "consent"
                };
                return Err(ApiError::rule(text, Some(at)));
            }
        }
    }
    let claimed: Vec<&str> = doc
        .get("populationsOfFocus")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let stated = criteria_facts(doc)?;
    let criteria_stated = !stated.is_empty();
    let facts = referral_facts(resources, &patient_id, stated);
    let evaluation = facts
        .as_ref()
        .and_then(|f| eligibility::evaluate(f, program::pacific::local_date(now)));
    // Streamlined authorization (ECM Policy Guide VIII, Figure 5): the
    // referring ECM provider is contracted with the member's plan for a
    // claimed POF and of a provider type paired with it
    // (`mappings/referral/streamlined-authorization.csv`) — and what the
    // county has sent does not refute that POF (a CCS child the county
    // shows is not in child welfare is not streamlined for POF 8).
    let refuted = |pof: &str| evaluation.as_ref().is_some_and(|ev| pof_refuted(ev, pof));
    let streamlined = ingress
        .streamlined
        .eligible_pofs(cfg, &caller.org_id, &mcp, &claimed)
        .into_iter()
        .any(|p| !refuted(p));
    Ok(Plan {
        patient_id,
        mcp,
        performer,
        consent,
        consent_ref,
        streamlined,
        facts,
        evaluation,
        criteria_stated,
    })
}

/// Do the county's facts refute `pof`? Not met by the evaluation, and
/// either POF 8 (child welfare involvement is the county's own record, so
/// the county's silence refutes it) or a criterion of the POF was evaluated
/// and not met (e.g. aged out). A POF the county's facts say nothing about
/// (homelessness, a pregnancy) stays the referrer's word.
pub fn pof_refuted(ev: &program::Evaluation, pof: &str) -> bool {
    !ev.pofs.iter().any(|p| p == pof)
        && (pof == "8"
            || ev.reasons.iter().any(|r| {
                r.pof.as_deref() == Some(pof) && r.outcome == program::eligibility::NOT_MET
            }))
}

/// A self-referral is the member, a parent, a legal guardian or a caregiver
/// referring themselves; it waives the referral consent, so it is refused
/// (422 naming `selfReferral`) for any other relationship and from a county,
/// whose referrals are the SW's.
fn check_self_referral(doc: &Value, caller: &crate::auth::Caller) -> Result<(), ApiError> {
    if caller.kind == OrgKind::County {
        return Err(ApiError::rule(
            "a county's referral is the social worker's and needs the youth's or family's verbal referral consent: set selfReferral to false and record the consent (consent.recorded) or attest it inline in `consent`",
            Some("selfReferral"),
        ));
    }
    let relationship = s(doc, "/referrer/relationship").unwrap_or("");
    if !SELF_REFERRAL_RELATIONSHIPS.contains(&relationship) {
        return Err(ApiError::rule(
            "selfReferral is only for the member, a parent, a legal guardian or a caregiver referring themselves (referrer.relationship self, parent, legal_guardian or caregiver); otherwise set it to false and give the referral consent",
            Some("selfReferral"),
        ));
    }
    Ok(())
}

/// `criteria` keys that are eligibility facts (`other` in the facts
/// document, camelCase as in `cwsgw_program::facts::OtherFacts`): a
/// structured `criteria` object may state them, and the engine then
/// evaluates the referral with them (e.g. POF 7: `ccsEnrolled` and
/// `complexSocialFactors`). Other keys stay informative.
pub const CRITERIA_FACTS: &[(&str, CriteriaType)] = &[
    ("ccsEnrolled", CriteriaType::Bool),
    ("complexSocialFactors", CriteriaType::Codes),
    ("smhsEligible", CriteriaType::Bool),
    ("dmcEligible", CriteriaType::Bool),
    ("homeless", CriteriaType::Bool),
    ("correctionalReleaseOn", CriteriaType::Date),
];

/// The JSON type a criteria fact must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriteriaType {
    Bool,
    /// An array of at most 64 short codes.
    Codes,
    /// `YYYY-MM-DD`.
    Date,
}

/// The eligibility facts a structured `criteria` object states, checked
/// (422 naming `criteria.{key}` on a wrong type).
fn criteria_facts(doc: &Value) -> Result<serde_json::Map<String, Value>, ApiError> {
    let mut out = serde_json::Map::new();
    let Some(c) = doc.get("criteria").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (key, ty) in CRITERIA_FACTS {
        let Some(v) = c.get(*key) else { continue };
        let ok = match ty {
            CriteriaType::Bool => v.is_boolean(),
            CriteriaType::Codes => v.as_array().is_some_and(|a| {
                a.len() <= program::facts::MAX_SOCIAL_FACTORS
                    && a.iter()
                        .all(|x| x.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 64))
            }),
            CriteriaType::Date => v
                .as_str()
                .is_some_and(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()),
        };
        if !ok {
            let what = match ty {
                CriteriaType::Bool => "a boolean",
                CriteriaType::Codes => "an array of at most 64 codes",
                CriteriaType::Date => "a date (YYYY-MM-DD)",
            };
            let at = format!("criteria.{key}");
            return Err(ApiError::invalid(
                format!("{key} must be {what}"),
                Some(&at),
            ));
        }
        out.insert((*key).to_string(), v.clone());
    }
    Ok(out)
}

/// The facts the referral is evaluated on: the stored facts (county
/// events) with the facts the referral's `criteria` states merged into
/// `other`. None when the county has sent nothing about the member.
fn referral_facts(
    resources: &[StoredResource],
    pid: &str,
    stated: serde_json::Map<String, Value>,
) -> Option<Value> {
    let mut facts = resources
        .iter()
        .find(|r| r.resource_type == "Basic" && r.id == eligibility::facts_id(pid))
        .and_then(|r| eligibility::facts_of(&r.body))?;
    if !stated.is_empty() {
        if !facts.get("other").is_some_and(Value::is_object) {
            facts["other"] = json!({});
        }
        if let Some(o) = facts.get_mut("other").and_then(Value::as_object_mut) {
            o.extend(stated);
        }
    }
    Some(facts)
}

/// Assignment recommendations in the program's order.
fn recommendations(cfg: &Config, doc: &Value, mcp: &str, base: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut push = |org: &str, code: &str, out: &mut Vec<Value>| {
        if seen.iter().any(|x| x == org) || !orgs::contracted(cfg, org, mcp) {
            return;
        }
        seen.push(org.to_string());
        out.push(json!({
            "type": {"coding": [{"system": format!("{base}/CodeSystem/ecm-assignment-recommendation"), "code": code}]},
            "valueReference": {"reference": format!("Organization/{org}")}
        }));
    };
    for program in ["wraparound", "hcpcfc", "ccs", "icc"] {
        for cm in doc
            .get("currentCareManagers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if s(cm, "/program") == Some(program) {
                if let Some(o) = s(cm, "/organizationId") {
                    push(o, "existing-care-manager", &mut out);
                }
            }
        }
    }
    if let Some(p) = s(doc, "/preferredEcmProviderId") {
        push(p, "member-preference", &mut out);
    }
    out
}

/// The organization ids a Task's `input` recommends.
fn inputs_orgs(task: &Value) -> Vec<String> {
    task.get("input")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| s(i, "/valueReference/reference"))
        .filter_map(|r| r.strip_prefix("Organization/"))
        .map(str::to_string)
        .collect()
}

/// The MCP a referral names for a member whose enrollment the gateway does
/// not know: `mcpId` (a configured MCP), else `member.planCode` with the
/// member's county (`member.address.county`), the MCP serving that plan
/// code there. `Ok(None)` when it names none; an `mcpId` that is not a
/// configured MCP is refused by name.
fn named_mcp(cfg: &Config, doc: &Value) -> Result<Option<String>, ApiError> {
    if let Some(id) = s(doc, "/mcpId") {
        return match cfg.organization(id).filter(|o| o.kind == OrgKind::Mcp) {
            Some(o) => Ok(Some(o.id.clone())),
            None => Err(ApiError::rule(
                "mcpId is not a configured MCP",
                Some("mcpId"),
            )),
        };
    }
    let code = s(doc, "/member/planCode");
    let county = s(doc, "/member/address/county");
    Ok(match (code, county) {
        (Some(code), Some(county)) => orgs::mcp_for(cfg, code, county).map(|o| o.id.clone()),
        _ => None,
    })
}

/// Build every resource of an accepted referral.
fn build(
    ingress: &Ingress,
    doc: &Value,
    referrer: &str,
    p: &Plan,
    resources: &[StoredResource],
    received: DateTime<Utc>,
) -> Derived {
    let cfg = &ingress.cfg;
    let base = cfg.server.canonical_base.as_str();
    let referral_id = s(doc, "/referralId").unwrap_or("");
    let (sr_id, task_id, _) = ids(referrer, referral_id);
    let expedited = doc.get("expedited") == Some(&Value::Bool(true));
    let self_referral = doc.get("selfReferral") == Some(&Value::Bool(true));
    let authored = received.to_rfc3339_opts(SecondsFormat::Secs, true);
    let pid = &p.patient_id;
    let mut out: Vec<Value> = Vec::new();

    let m = doc.get("member").cloned().unwrap_or_default();
    let stored_patient = resources
        .iter()
        .find(|r| r.resource_type == "Patient" && r.id == *pid);
    match stored_patient {
        None => {
            let mut pat = json!({
                "resourceType": "Patient", "id": pid, "active": true,
                "identifier": [{
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MA", "display": "Patient Medicaid number"}]},
                    "system": format!("{base}/identifier/medi-cal-cin"), "value": s(&m, "/cin").unwrap_or("")
                }],
                "name": [{"use": "official", "family": s(&m, "/name/family").unwrap_or("")}],
                "birthDate": s(&m, "/birthDate").unwrap_or(""),
            });
            if let Some(g) = m
                .pointer("/name/given")
                .filter(|g| g.as_array().is_some_and(|a| !a.is_empty()))
            {
                pat["name"][0]["given"] = g.clone();
            }
            complete::merge_contact(&mut pat, &m);
            out.push(pat);
        }
        // The member is known (a county or hospital wrote the Patient): the
        // referral adds the contact details it lacks — a phone it does not
        // list, an address and a preferred language when it has none — and
        // never changes the name, birth date or anything the county stated
        // (`records::precedence` ranks demographics; contact details the
        // referral adds rank below none of them).
        Some(r) => {
            let mut pat = crate::resources::strip_meta(r.body.clone());
            if complete::merge_contact(&mut pat, &m) {
                out.push(pat);
            }
        }
    }
    // The engine's evaluation, beside the claimed POFs; facts the
    // referral's criteria state are kept in the facts record.
    // (`plan` evaluated them as of `received`: both callers pass one time.)
    let evaluation = &p.evaluation;
    if let (true, Some(f), Some(ev)) = (p.criteria_stated, p.facts.as_ref(), evaluation.as_ref()) {
        let as_of = program::pacific::local_date(received);
        out.push(eligibility::facts_record(base, pid, f));
        out.push(eligibility::observation(base, pid, ev, as_of));
    }
    let mut sr = json!({
        "resourceType": "ServiceRequest", "id": sr_id,
        "identifier": [{"system": format!("{base}/identifier/{referrer}/referral-id"), "value": referral_id}],
        "status": "active", "intent": "order",
        "code": {"coding": [{"system": format!("{base}/CodeSystem/ecm-service"), "code": "ecm", "display": "Enhanced Care Management"}]},
        "reasonCode": doc.get("populationsOfFocus").and_then(Value::as_array).into_iter().flatten()
            .filter_map(Value::as_str)
            .map(|p| json!({"coding": [{"system": format!("{base}{}", eligibility::ECM_POF_CS), "code": p}]}))
            .collect::<Vec<_>>(),
        "priority": if expedited { "urgent" } else { "routine" },
        "subject": {"reference": format!("Patient/{pid}")},
        "authoredOn": authored,
        "requester": {"reference": format!("Organization/{referrer}")},
        "performer": [{"reference": format!("Organization/{}", p.performer)}],
        "extension": [
            {"url": format!("{base}{}", disclosure::SELF_REFERRAL_EXT), "valueBoolean": self_referral},
            {"url": format!("{base}{AUTHORIZING_MCP_EXT}"), "valueReference": {"reference": format!("Organization/{}", p.mcp)}},
        ],
    });
    if let Some(reason) = complete::criteria_reason(doc, base) {
        if let Some(a) = sr["reasonCode"].as_array_mut() {
            a.push(reason);
        }
    }
    let mut support = Vec::new();
    let parts = complete::parts(cfg, doc, pid);
    if !parts.contained.is_empty() {
        sr["contained"] = Value::Array(parts.contained.clone());
    }
    if let Some(r) = &parts.person {
        if let Some(a) = sr["extension"].as_array_mut() {
            a.push(json!({"url": format!("{base}{}", complete::REFERRING_PERSON_EXT), "valueReference": {"reference": r}}));
        }
    }
    support.extend(parts.care_managers.iter().map(|r| json!({"reference": r})));
    if let Some(ev) = &evaluation {
        support.push(
            json!({"reference": format!("Observation/{}", eligibility::observation_id(pid))}),
        );
        let mut e = json!({"url": format!("{base}/StructureDefinition/ecm-eligibility"), "extension": [
            {"url": "eligible", "valueBoolean": ev.eligible}
        ]});
        for pof in &ev.pofs {
            if let Some(a) = e["extension"].as_array_mut() {
                a.push(json!({"url": "pof", "valueCoding": {"system": format!("{base}{}", eligibility::ECM_POF_CS), "code": pof}}));
            }
        }
        for r in &ev.reasons {
            if let Some(a) = e["extension"].as_array_mut() {
                a.push(json!({"url": "reason", "valueCode": r.code}));
            }
        }
        if let Some(a) = sr["extension"].as_array_mut() {
            a.push(e);
        }
    }
    if let Some(c) = &p.consent_ref {
        support.push(json!({"reference": format!("Consent/{c}")}));
    }
    if !support.is_empty() {
        sr["supportingInfo"] = Value::Array(support);
    }
    if let Some(n) = s(doc, "/notes") {
        sr["note"] = json!([{"text": n}]);
    }
    let decision_due = program::due(
        program::Clock::AuthorizationDecision,
        received,
        expedited,
        &ingress.calendar,
    );
    let mut task = json!({
        "resourceType": "Task", "id": task_id,
        "identifier": [{"system": format!("{base}/identifier/{referrer}/referral-id"), "value": referral_id}],
        "status": "requested", "intent": "order", "priority": if expedited { "urgent" } else { "routine" },
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": format!("ServiceRequest/{sr_id}")},
        "for": {"reference": format!("Patient/{pid}")},
        "authoredOn": authored, "lastModified": authored,
        "requester": {"reference": format!("Organization/{referrer}")},
        "owner": {"reference": format!("Organization/{}", p.mcp)},
        "restriction": {"period": {"end": decision_due.to_rfc3339_opts(SecondsFormat::Secs, true)}},
        "extension": [{"url": format!("{base}{AUTHORIZING_MCP_EXT}"), "valueReference": {"reference": format!("Organization/{}", p.mcp)}}],
    });
    if p.streamlined {
        if let Some(a) = task["extension"].as_array_mut() {
            a.push(json!({"url": format!("{base}{STREAMLINED_EXT}"), "valueBoolean": true}));
        }
    }
    let inputs = recommendations(cfg, doc, &p.mcp, base);
    if !inputs.is_empty() {
        task["input"] = Value::Array(inputs);
    }
    let recommended: Vec<String> = inputs_orgs(&task);
    out.push(sr);
    out.push(task);
    if let Some(c) = &p.consent {
        out.push(c.clone());
    }
    // Every Organization the referral names is stored with it: the
    // referrer, the plan, the performer and the care managers its Task
    // recommends, so no reference it makes dangles.
    let mut org_ids: Vec<&str> = Vec::new();
    for id in [referrer, p.mcp.as_str(), p.performer.as_str()]
        .into_iter()
        .chain(recommended.iter().map(String::as_str))
        .chain(parts.care_manager_orgs.iter().map(String::as_str))
    {
        if !org_ids.contains(&id) {
            org_ids.push(id);
        }
    }
    out.extend(orgs::organizations(cfg, &org_ids));
    let subject = format!("Task/{task_id}");
    let spec = |clock, expedited| ClockSpec {
        clock,
        patient_id: pid.clone(),
        subject: subject.clone(),
        start: received,
        expedited,
    };
    let mut clocks = vec![deadlines::open(
        &spec(program::Clock::AuthorizationDecision, expedited),
        &ingress.calendar,
    )];
    if p.streamlined {
        for c in [
            program::Clock::StreamlinedAuthorizationWindow,
            program::Clock::StreamlinedReferralDue,
        ] {
            clocks.push(deadlines::open(&spec(c, false), &ingress.calendar));
        }
    }
    Derived {
        writes: out.into_iter().map(write_of).collect(),
        clocks,
        audits: Vec::new(),
        route: Some(journal::RouteMeta {
            event: None,
            source_org: referrer.to_string(),
            out_of_county: false,
            event_time: Some(received),
        }),
    }
}

/// Referrals re-derived from the journal after a crash: the caller is the
/// journal's source organization, times are the journal's.
pub struct Referrals(pub Arc<Ingress>);

#[async_trait::async_trait]
impl journal::Source for Referrals {
    fn kind(&self) -> InputKind {
        InputKind::Referral
    }

    async fn recover(&self, store: &dyn Store, rec: &store::JournalRecord) -> Result<(), ApiError> {
        let ingress = &self.0;
        let doc = parse_json(&rec.raw)?;
        let kind = ingress
            .cfg
            .organization(&rec.source_org)
            .map(|o| o.kind)
            .ok_or_else(|| ApiError::Denied("the referrer is no longer configured".into()))?;
        let caller = crate::auth::Caller {
            client_id: String::new(),
            org_id: rec.source_org.clone(),
            kind,
            scopes: None,
        };
        let pid = patients::cin_patient_id(s(&doc, "/member/cin").unwrap_or(""));
        let resources = store.resources_by_patient(&pid, None).await?;
        let p = plan(ingress, &doc, &caller, &resources, rec.received_at)?;
        let derived = build(
            ingress,
            &doc,
            &rec.source_org,
            &p,
            &resources,
            rec.received_at,
        );
        journal::settle(ingress.routing.get(), store, rec.id, derived).await?;
        Ok(())
    }
}

/// Organization kinds that may post referrals (single and batch): counties,
/// ECM providers, MCPs and community referrers (ECM Policy Guide VIII: most
/// referrals are expected from the community).
pub const REFERRAL_KINDS: &[OrgKind] = &[
    OrgKind::County,
    OrgKind::EcmProvider,
    OrgKind::Mcp,
    OrgKind::Referrer,
];

/// The handler.
pub async fn post_referral(
    State(state): State<Core>,
    State(ingress): State<Arc<Ingress>>,
    cert: ClientCert,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers, &cert, REFERRAL_KINDS)?;
    let bytes = body.map_err(|r| body_rejection(r, state.cfg.server.max_body_bytes))?;
    let accepted = accept(&state, &ingress, &caller, &bytes).await?;
    let mut resp = fhir_json(
        accepted.status,
        &collection(&accepted.visible, &state.cfg.server.canonical_base),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/fhir/ServiceRequest/{}", accepted.sr_id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// An accepted referral: 201 (new) or 200 (a replay of the same
/// `referralId` by the same referrer), the ids it derived and what of them
/// the caller may see.
#[derive(Debug)]
pub struct Accepted {
    pub status: StatusCode,
    pub referral_id: String,
    pub sr_id: String,
    pub task_id: String,
    pub visible: Vec<Value>,
}

/// One referral form, from its bytes to its answer: schema, the referrer
/// is the caller, the document's own rules, refusals before the journal
/// (audited), journal (dedup by referrer and `referralId`), derive, route,
/// and the answer for the caller. The single POST and every line of a
/// batch (`batch::post_batch`) go through here.
pub async fn accept(
    state: &Core,
    ingress: &Arc<Ingress>,
    caller: &crate::auth::Caller,
    bytes: &[u8],
) -> Result<Accepted, ApiError> {
    let doc = parse_json(bytes)?;
    ingress.schemas.validate_referral(&doc)?;
    if s(&doc, "/referrer/organizationId") != Some(caller.org_id.as_str()) {
        return Err(ApiError::Denied(
            "referrer.organizationId must be the caller's organization".into(),
        ));
    }
    // What the document alone decides is told to anyone, before anything
    // about the member is looked at (`plan` checks it again).
    if doc.get("selfReferral") == Some(&Value::Bool(true)) {
        check_self_referral(&doc, caller)?;
    }
    criteria_facts(&doc)?;
    if s(&doc, "/mcpId").is_some() {
        // Whether the named plan is a configured MCP is about the document,
        // not the member: told to anyone.
        named_mcp(&state.cfg, &doc)?;
    }
    let referral_id = s(&doc, "/referralId").unwrap_or("").to_string();
    let (sr_id, task_id, _) = ids(&caller.org_id, &referral_id);
    let known = state
        .store
        .resource_get("ServiceRequest", &sr_id)
        .await?
        .is_some();
    let received_at = now_secs();
    let pid = patients::cin_patient_id(s(&doc, "/member/cin").unwrap_or(""));
    if !known {
        // Refusals happen before the journal: nothing is stored or routed.
        let resources = state.store.resources_by_patient(&pid, None).await?;
        if let Err(e) = plan(ingress, &doc, caller, &resources, received_at) {
            return Err(refuse(state, caller, &pid, &resources, e, received_at).await);
        }
    }
    let store: &dyn Store = state.store.as_ref();
    let appended = journal::append(
        store,
        NewInput {
            kind: InputKind::Referral,
            source_org: caller.org_id.clone(),
            dedup_key: format!("{}|{referral_id}", caller.org_id),
            received_at,
            raw: bytes.to_vec(),
            meta: json!({"expedited": doc.get("expedited"), "selfReferral": doc.get("selfReferral")}),
        },
    )
    .await?;
    let jid = appended.id();
    let processed = appended.processed();
    let (raw_doc, t, status) = match appended {
        Appended::Fresh(_) => (doc, received_at, StatusCode::CREATED),
        Appended::Replay {
            raw, received_at, ..
        } => (parse_json(&raw)?, received_at, StatusCode::OK),
    };
    let stored = if processed {
        let (sr, task, cid) = ids(&caller.org_id, &referral_id);
        read_back(
            store,
            &[("ServiceRequest", sr), ("Task", task), ("Consent", cid)],
        )
        .await?
    } else {
        let resources = store.resources_by_patient(&pid, None).await?;
        let p = match plan(ingress, &raw_doc, caller, &resources, t) {
            Ok(p) => p,
            Err(e) => {
                let _ = store.fail(jid, "refused-on-replay").await;
                return Err(refuse(state, caller, &pid, &resources, e, t).await);
            }
        };
        let derived = build(ingress, &raw_doc, &caller.org_id, &p, &resources, t);
        journal::settle(ingress.routing.get(), store, jid, derived).await?
    };
    tracing::info!(
        journal_id = jid,
        resources = stored.len(),
        replay = processed,
        "ECM referral"
    );
    // The answer holds the ServiceRequest, the Task and any Consent — as
    // much of them as the caller may see, audited as a disclosure.
    let written: Vec<Value> = stored
        .into_iter()
        .filter(|r| !is_internal(r))
        .filter(|r| {
            matches!(
                s(r, "/resourceType"),
                Some("ServiceRequest" | "Task" | "Consent")
            )
        })
        .collect();
    let visible = answer_for_caller(state, caller, &pid, written).await?;
    Ok(Accepted {
        status,
        referral_id,
        sr_id,
        task_id,
        visible,
    })
}

/// What an accepted referral's answer (201, or 200 for a replay) shows the
/// caller, and its AuditEvent. The child's county, the member's plan and
/// the ECM providers contracted with it (a referral within their own
/// network), and whoever the consent engine lets read the member's Patient
/// ([`may_see_member`]) see the ServiceRequest, the Task and the Consent
/// whole: they know, or may know, the member's plan. Anyone else — a plan,
/// or a provider outside the member's plan, that posted a self-referral, a
/// county that is not the child's — sees each resource as a FHIR read
/// would show it (`gate::Gate::judge`, purpose pull): in practice its
/// Task's status (R4), without the owner, so the answer does not say which
/// plan the member is in. One AuditEvent (`Gate::finish`, interaction
/// create) lists every resource of the answer, disclosed or withheld.
async fn answer_for_caller(
    state: &Core,
    caller: &crate::auth::Caller,
    pid: &str,
    written: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let now = Utc::now();
    let resources = state.store.resources_by_patient(pid, None).await?;
    // The member's plan, and an ECM provider contracted with it, refer
    // within that plan's network: the answer names their own network.
    let in_plan_network = match managed(&state.cfg, &resources) {
        Managed::Mcp(m) => m == caller.org_id || orgs::contracted(&state.cfg, &caller.org_id, &m),
        _ => false,
    };
    let whole = in_plan_network || may_see_member(state, caller, pid, &resources, now);
    let mut gate = crate::gate::Gate::new(state, caller, crate::audit::Interaction::Create);
    let mut out = Vec::with_capacity(written.len());
    for body in written {
        let r = StoredResource {
            resource_type: s(&body, "/resourceType").unwrap_or("").to_string(),
            id: s(&body, "/id").unwrap_or("").to_string(),
            version_id: s(&body, "/meta/versionId")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            last_updated: now,
            patient_id: Some(pid.to_string()),
            body,
        };
        if whole {
            gate.shown(
                Some(pid.to_string()),
                format!("{}/{}", r.resource_type, r.id),
            );
            out.push(r.body);
        } else if let crate::gate::Verdict::Permit(b) = gate.judge(&r).await? {
            out.push(b);
        }
    }
    gate.finish().await?;
    Ok(out)
}

/// The one answer to a referral refused for a reason about the member
/// (coverage, plan, consent on file …) when the caller may not see the
/// member: it does not tell unknown, fee-for-service, share of cost and
/// enrolled apart, and names no plan.
pub const REFUSED_FOR_MEMBER: &str = "the referral cannot be accepted for this member as sent; with the member's county or Medi-Cal plan, check that the member is enrolled (enroll the member in a Medi-Cal plan first, enrollment.updated) and that the youth's or family's referral consent names the member's plan";

/// May `caller` see the member: the child's county, or an organization the
/// consent engine lets read the member's Patient (purpose `pull`)?
fn may_see_member(
    state: &Core,
    caller: &crate::auth::Caller,
    pid: &str,
    resources: &[StoredResource],
    now: DateTime<Utc>,
) -> bool {
    let pctx = disclosure::PatientContext::from_resources(&state.cfg, pid, resources);
    let patient = resources
        .iter()
        .find(|r| r.resource_type == "Patient" && r.id == pid)
        .map(|r| &r.body);
    if eligibility::is_childs_county(&state.disclosure, &caller.org_id, &pctx, patient, now) {
        return true;
    }
    patient.is_some_and(|p| {
        state
            .disclosure
            .decide(p, &caller.org_id, consent::Purpose::Pull, &pctx, now)
            .effect
            == consent::Effect::Permit
    })
}

/// A referral refused by [`plan`]: audited (a `refusal` naming the member,
/// with the real reason for operators), then answered — with the reason to
/// a caller who may see the member, else with [`REFUSED_FOR_MEMBER`], so a
/// refusal tells a stranger nothing about the member. Store failures pass
/// through.
async fn refuse(
    state: &Core,
    caller: &crate::auth::Caller,
    pid: &str,
    resources: &[StoredResource],
    e: ApiError,
    now: DateTime<Utc>,
) -> ApiError {
    let reason = match &e {
        ApiError::Invalid { expression, .. } | ApiError::BusinessRule { expression, .. } => {
            expression.clone().unwrap_or_else(|| "document".into())
        }
        ApiError::Violations(_) => "violations".into(),
        _ => return e,
    };
    let seen = may_see_member(state, caller, pid, resources, now);
    let record = crate::audit::new_audit(&crate::audit::AuditEntry {
        kind: "refusal",
        interaction: crate::audit::Interaction::Create,
        caller,
        patient_id: Some(pid),
        entities: Vec::new(),
        detail: Some(format!(
            "referral refused at {reason} ({}): {e}",
            if seen {
                "reason told"
            } else {
                "generic answer"
            }
        )),
        recorded: Utc::now(),
    });
    if let Err(err) = state.store.audit_append(vec![record]).await {
        tracing::error!(error = %err, "referral refusal audit append failed");
        return ApiError::Store(err);
    }
    if seen {
        e
    } else {
        ApiError::rule(REFUSED_FOR_MEMBER, Some("member"))
    }
}

/// Now, to the second (journal times round-trip through RFC 3339 exactly).
pub fn now_secs() -> DateTime<Utc> {
    let n = Utc::now();
    DateTime::from_timestamp(n.timestamp(), 0).unwrap_or(n)
}
