//! ECM eligibility per child: a facts document kept per Patient, updated by
//! every relevant case event, evaluated with `cwsgw_program::evaluate`, and
//! the current result stored as an `Observation`.
//!
//! - The **facts** (`{ child, enrollment?, placement?, case?, history? }`,
//!   the shapes of the case events) live in a `Basic` resource
//!   `uuid5("ecm-facts|{patientId}")` (code `{base}/CodeSystem/gateway-record`
//!   `ecm-facts`, the JSON in extension `{base}/StructureDefinition/ecm-facts`).
//!   Each event replaces its own section; `case.closed` sets `case.closedOn`
//!   when the case ids match and, since a closed case ends current foster
//!   care, sets `placement.endedOn` to the closure date when the placement
//!   began on or before it (the case ids match, or no case is on record).
//! - The **result** is an `Observation` `uuid5("ecm-eligibility|{patientId}")`:
//!   code `{base}/CodeSystem/ecm-eligibility` `ecm-pof-evaluation`,
//!   `valueBoolean` = eligible, one `component` per met POF
//!   (`{base}/CodeSystem/ecm-pof`), `effectiveDateTime` = the as-of date, and
//!   the whole evaluation (with reason codes) in extension
//!   `{base}/StructureDefinition/ecm-evaluation` (valueString JSON).
//! - The as-of date is the **event's** `occurredAt` date (Pacific), never
//!   the wall clock, so a replay derives byte-identical resources.
//!   `GET /cws/eligibility/{patientId}` evaluates the stored facts as of today.
//! - That answer is a **disclosure**, decided per caller and audited like a
//!   FHIR read (`docs/consent.md`, "Eligibility answers"): the child's
//!   county and operators see all of it; an MCP or ECM provider the consent
//!   engine lets read the child's Patient or referral ServiceRequest sees
//!   `eligible`, the POF codes and the reason codes — a reason's text and
//!   evidence (case, placement, aid code …) only where the engine permits a
//!   record of that reason's categories (a release covering `case`,
//!   `placement` …); anyone else gets the 404 of an unknown patient.

use chrono::NaiveDate;
use program::{Evaluation, Facts};
use serde_json::{json, Value};

use consent::{Category, Purpose};

use crate::config::OrgKind;
use crate::disclosure::{PatientContext, CONTEXT_TYPES};
use crate::resources::rid;

pub const FACTS_EXT: &str = "/StructureDefinition/ecm-facts";
pub const EVALUATION_EXT: &str = "/StructureDefinition/ecm-evaluation";
pub const ECM_POF_CS: &str = "/CodeSystem/ecm-pof";

/// Id of the facts record of a patient.
pub fn facts_id(patient_id: &str) -> String {
    rid(&format!("ecm-facts|{patient_id}"))
}

/// Id of the eligibility Observation of a patient.
pub fn observation_id(patient_id: &str) -> String {
    rid(&format!("ecm-eligibility|{patient_id}"))
}

/// The facts JSON stored in a facts record.
pub fn facts_of(record: &Value) -> Option<Value> {
    record
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with(FACTS_EXT))
        })
        .and_then(|e| e.get("valueString"))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
}

/// Fold one (validated) case event into the facts document.
pub fn fold_event(facts: Option<Value>, event: &Value) -> Value {
    let mut f = facts.unwrap_or_else(|| json!({}));
    let old_cin = f.pointer("/child/cin").cloned();
    if let Some(child) = event.get("child") {
        f["child"] = child.clone();
        if child.get("cin").is_none() {
            if let Some(c) = old_cin {
                f["child"]["cin"] = c;
            }
        }
    }
    match event.get("type").and_then(Value::as_str).unwrap_or("") {
        "enrollment.updated" => {
            if let Some(e) = event.get("enrollment") {
                f["enrollment"] = e.clone();
                if f.pointer("/child/cin").is_none() {
                    if let Some(c) = e.get("cin") {
                        f["child"]["cin"] = c.clone();
                    }
                }
            }
        }
        "placement.changed" => {
            if let Some(p) = event.get("placement") {
                f["placement"] = p.clone();
            }
        }
        "case.opened" => {
            if let Some(c) = event.get("case") {
                f["case"] = c.clone();
            }
        }
        "case.closed" => {
            let on_record = f.pointer("/case/caseId");
            let same = on_record.is_some() && on_record == event.pointer("/case/caseId");
            let no_case = on_record.is_none();
            if let Some(d) = event.pointer("/case/closedOn") {
                if same {
                    f["case"]["closedOn"] = d.clone();
                }
                // A closed case ends current foster care: the placement ends on the closure date
                // (docs/program-rules.md, "Case closure ends current foster care").
                if same || no_case {
                    end_placement(&mut f, d);
                }
            }
        }
        "foster_care.history" => {
            if let Some(h) = event.get("history") {
                f["history"] = h.clone();
            }
        }
        _ => {}
    }
    f
}

/// Sets `placement.endedOn` to a case's closure date, when the placement on
/// record began on or before it and has not already ended earlier. A
/// placement that began after the closure is a new episode and is kept.
fn end_placement(f: &mut Value, closed_on: &Value) {
    let date = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
    };
    let Some(closed) = date(Some(closed_on)) else {
        return;
    };
    let Some(p) = f.get_mut("placement").filter(|p| p.is_object()) else {
        return;
    };
    let started = date(p.get("startDate"));
    let ended = date(p.get("endedOn"));
    if started.is_some_and(|s| s <= closed) && ended.is_none_or(|e| e > closed) {
        p["endedOn"] = closed_on.clone();
    }
}

/// Evaluate a facts document (None when it does not hold the facts shape).
pub fn evaluate(facts: &Value, as_of: NaiveDate) -> Option<Evaluation> {
    let bytes = serde_json::to_vec(facts).ok()?;
    let f = Facts::from_json(&bytes).ok()?;
    Some(program::evaluate(&f, as_of))
}

/// The facts record resource.
pub fn facts_record(base: &str, patient_id: &str, facts: &Value) -> Value {
    json!({
        "resourceType": "Basic",
        "id": facts_id(patient_id),
        "code": {"coding": [{"system": format!("{base}/CodeSystem/gateway-record"), "code": "ecm-facts"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "extension": [{"url": format!("{base}{FACTS_EXT}"), "valueString": facts.to_string()}]
    })
}

/// The eligibility Observation.
pub fn observation(base: &str, patient_id: &str, ev: &Evaluation, as_of: NaiveDate) -> Value {
    let components: Vec<Value> = ev
        .pofs
        .iter()
        .map(|p| {
            json!({"code": {"coding": [{"system": format!("{base}{ECM_POF_CS}"), "code": p}]}, "valueBoolean": true})
        })
        .collect();
    let mut o = json!({
        "resourceType": "Observation",
        "id": observation_id(patient_id),
        "status": "final",
        "code": {"coding": [{"system": format!("{base}/CodeSystem/ecm-eligibility"), "code": "ecm-pof-evaluation", "display": "ECM Populations of Focus evaluation"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": as_of.format("%Y-%m-%d").to_string(),
        "valueBoolean": ev.eligible,
        "extension": [{"url": format!("{base}{EVALUATION_EXT}"), "valueString": serde_json::to_string(ev).unwrap_or_default()}]
    });
    if !components.is_empty() {
        o["component"] = Value::Array(components);
    }
    o
}

/// The evaluation JSON stored on an eligibility Observation.
pub fn evaluation_of(obs: &Value) -> Option<Value> {
    obs.get("extension")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with(EVALUATION_EXT))
        })
        .and_then(|e| e.get("valueString"))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok())
}

pub const DECISION_TYPES: [&str; 6] = [
    "Patient",
    CONTEXT_TYPES[0],
    CONTEXT_TYPES[1],
    CONTEXT_TYPES[2],
    CONTEXT_TYPES[3],
    CONTEXT_TYPES[4],
];

/// The consent categories the text and evidence of a reason draw on. A
/// reason's details are shown only when the caller may see every one of
/// them; its code, POF and outcome are shown to anyone who may see the
/// answer at all.
pub fn reason_categories(code: &str) -> &'static [Category] {
    match code {
        // "current STRTP placement in foster care", "aid code 4M", a
        // foster care episode's end date.
        "pof8.current-foster-care" | "pof8.foster-care-last-12-months" => {
            &[Category::Case, Category::Placement]
        }
        c if c.starts_with("pof2.") || c.starts_with("pof7.") => &[Category::Health],
        "pof3.smhs" => &[Category::BehavioralHealth],
        "pof3.dmc" => &[Category::SubstanceUse],
        // Family Maintenance, adoption assistance, aged out, aid codes,
        // managed care, exclusions: the case file and its enrollment.
        _ => &[Category::Case],
    }
}

/// How much of the evaluation a caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Everything (the county of the child, operators).
    Full,
    /// `eligible`, POF codes, reason codes; the text and evidence only of
    /// the reasons at these indexes.
    Summary(Vec<usize>),
}

/// The access decision for one caller, with the `rule reason` the audit
/// record carries.
#[derive(Debug, Clone)]
pub struct Access {
    pub view: Option<View>,
    pub why: String,
}

/// The county whose client id the Patient carries (`identifier.assigner`
/// naming a configured county organization): it sent the case events the
/// child's facts come from.
fn assigning_county(cfg: &crate::config::Config, patient: Option<&Value>) -> Option<String> {
    patient?
        .get("identifier")?
        .as_array()?
        .iter()
        .filter_map(|i| i.pointer("/assigner/reference").and_then(Value::as_str))
        .filter_map(|r| r.strip_prefix("Organization/"))
        .filter_map(|o| cfg.organization(o))
        .find(|o| o.kind == OrgKind::County)
        .and_then(|o| o.county.clone())
}

/// May `caller_org` see the child's eligibility answer whole — is it the
/// child's county? The consent policy decides (its `views` row for
/// `answer: eligibility`, `R10-county-of-child` in the default policy):
/// asked with the member's context, whose case county is the county
/// managing the child's CWS case, and again with the county whose client
/// id the Patient carries as the case's county. `None`: no row names the
/// caller. The same question tells a referral's caller why it was refused
/// (`sources::referral::may_see_member`) and a referrer its Task's owner
/// (`gate::Gate`).
pub fn childs_county_view(
    disclosure: &crate::disclosure::Disclosure,
    caller_org: &str,
    pctx: &PatientContext,
    patient: Option<&Value>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<consent::ViewGrant> {
    let to = crate::disclosure::recipient(&disclosure.cfg, caller_org)?;
    let mut ctx = pctx.engine_context(Purpose::Pull, now);
    let policy = &disclosure.policy;
    let answer = consent::Answer::Eligibility;
    if let Some(g) = policy.whole_view(answer, &pctx.patient_id, &to, &ctx) {
        return Some(g);
    }
    let assigner = assigning_county(&disclosure.cfg, patient)?;
    if ctx.source_county.as_deref() == Some(assigner.as_str()) {
        return None;
    }
    ctx.source_county = Some(assigner);
    policy.whole_view(answer, &pctx.patient_id, &to, &ctx)
}

/// Is `caller_org` the child's county ([`childs_county_view`])?
pub fn is_childs_county(
    disclosure: &crate::disclosure::Disclosure,
    caller_org: &str,
    pctx: &PatientContext,
    patient: Option<&Value>,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    childs_county_view(disclosure, caller_org, pctx, patient, now).is_some()
}

/// Decide what `caller_org` sees of a patient's evaluation (pure but for
/// the policy): the child's county sees all (the policy's view row,
/// [`childs_county_view`]); anyone the consent engine lets
/// read the child's Patient or a referral ServiceRequest (purpose `pull`)
/// sees the summary, with each reason's details only where the engine
/// permits a record of that reason's categories (a release covering `case`,
/// `placement` …); anyone else sees nothing.
pub fn decide_access(
    disclosure: &crate::disclosure::Disclosure,
    caller_org: &str,
    pctx: &PatientContext,
    resources: &[store::StoredResource],
    ev: &Evaluation,
    now: chrono::DateTime<chrono::Utc>,
) -> Access {
    match basis(disclosure, caller_org, pctx, resources, now) {
        Basis::Full(why) => Access {
            view: Some(View::Full),
            why,
        },
        Basis::Refused(why) => Access { view: None, why },
        Basis::Summary(why) => Access {
            view: Some(View::Summary(detailed_reasons(
                disclosure, caller_org, pctx, ev, now,
            ))),
            why,
        },
    }
}

/// What a caller may see of a child's eligibility, decided before the
/// evaluation (so a refusal never evaluates, and costs what an unknown
/// patient's answer costs): each with the `rule reason` the audit carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// The child's county (the policy's view row).
    Full(String),
    /// The engine lets the caller read the child's Patient or a referral
    /// ServiceRequest: the summary, details per reason.
    Summary(String),
    /// Anyone else: the 404 of an unknown patient.
    Refused(String),
}

/// [`Basis`] for `caller_org` (pure but for the policy).
pub fn basis(
    disclosure: &crate::disclosure::Disclosure,
    caller_org: &str,
    pctx: &PatientContext,
    resources: &[store::StoredResource],
    now: chrono::DateTime<chrono::Utc>,
) -> Basis {
    let patient = resources
        .iter()
        .find(|r| r.resource_type == "Patient" && r.id == pctx.patient_id)
        .map(|r| &r.body);
    if let Some(g) = childs_county_view(disclosure, caller_org, pctx, patient, now) {
        return Basis::Full(format!("{} {}", g.rule, g.reason));
    }
    let mut refusal: Option<String> = None;
    let package = resources
        .iter()
        .filter(|r| r.resource_type == "Patient" || r.resource_type == "ServiceRequest");
    for r in package {
        if mapping::patient_reference(&r.body).as_deref() != Some(pctx.patient_id.as_str()) {
            continue;
        }
        let d = disclosure.decide(&r.body, caller_org, Purpose::Pull, pctx, now);
        let why = format!("{} {}", d.rule, d.reason);
        if d.effect == consent::Effect::Permit {
            return Basis::Summary(why);
        }
        if refusal.is_none() || r.resource_type == "Patient" {
            refusal = Some(why);
        }
    }
    Basis::Refused(refusal.unwrap_or_else(|| "R1 deny.no-consent".into()))
}

/// The reasons of a summary whose text and evidence the caller may see:
/// those whose categories ([`reason_categories`]) the engine permits a
/// record of, for this caller, every one.
pub fn detailed_reasons(
    disclosure: &crate::disclosure::Disclosure,
    caller_org: &str,
    pctx: &PatientContext,
    ev: &Evaluation,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<usize> {
    let cfg = &disclosure.cfg;
    // Each reason's details: a record of its categories, decided for the
    // caller like any other record of this patient.
    let record = json!({
        "resourceType": "Observation",
        "id": observation_id(&pctx.patient_id),
        "subject": {"reference": format!("Patient/{}", pctx.patient_id)}
    });
    let to = crate::disclosure::recipient(cfg, caller_org);
    let facts = crate::disclosure::resource_facts(&record);
    let ctx = pctx.engine_context(Purpose::Pull, now);
    let mut permitted: Vec<(Category, bool)> = Vec::new();
    let mut may_see = |c: Category| -> bool {
        if let Some((_, p)) = permitted.iter().find(|(k, _)| *k == c) {
            return *p;
        }
        let p = match (&to, &facts) {
            (Some(to), Some(f)) => {
                let mut f = f.clone();
                f.category = Some(c);
                disclosure
                    .policy
                    .decide(&f, to, &pctx.consents, &ctx)
                    .effect
                    == consent::Effect::Permit
            }
            _ => false,
        };
        permitted.push((c, p));
        p
    };
    ev.reasons
        .iter()
        .enumerate()
        .filter(|(_, r)| reason_categories(&r.code).iter().all(|c| may_see(*c)))
        .map(|(i, _)| i)
        .collect()
}

/// The answer body for a view.
pub fn answer(patient_id: &str, ev: &Evaluation, view: &View, as_of: NaiveDate) -> Value {
    let mut body = match view {
        View::Full => serde_json::to_value(ev).unwrap_or_default(),
        View::Summary(detailed) => {
            let reasons: Vec<Value> = ev
                .reasons
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    if detailed.contains(&i) {
                        serde_json::to_value(r).unwrap_or_default()
                    } else {
                        let mut o = json!({"code": r.code, "outcome": r.outcome});
                        if let Some(p) = &r.pof {
                            o["pof"] = json!(p);
                        }
                        o
                    }
                })
                .collect();
            json!({"eligible": ev.eligible, "pofs": ev.pofs, "reasons": reasons})
        }
    };
    body["patient"] = json!(format!("Patient/{patient_id}"));
    body["asOf"] = json!(as_of.format("%Y-%m-%d").to_string());
    body["observation"] = json!(format!("Observation/{}", observation_id(patient_id)));
    body["view"] = json!(match view {
        View::Full => "full",
        View::Summary(_) => "summary",
    });
    body
}

/// `cws-gateway eligibility`: evaluate a facts file, print the JSON result.
pub fn run_cli(input: &[u8], as_of: Option<&str>) -> anyhow::Result<String> {
    let as_of = match as_of {
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| anyhow::anyhow!("--as-of must be YYYY-MM-DD"))?,
        None => program::pacific::local_date(chrono::Utc::now()),
    };
    let facts = Facts::from_json(input).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ev = program::evaluate(&facts, as_of);
    Ok(serde_json::to_string_pretty(&ev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: &str, extra: Value) -> Value {
        let mut e = json!({"type": t, "child": {"clientId": "C1", "name": {"family": "F"}, "birthDate": "2010-01-01", "sex": "female"}});
        if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        e
    }

    #[test]
    fn events_fold_into_facts_that_evaluate() {
        let f = fold_event(
            None,
            &ev(
                "enrollment.updated",
                json!({"enrollment": {"cin": "91000001A", "aidCode": "4M", "planCode": "A", "feeForService": false, "shareOfCost": false, "effectiveOn": "2026-01-01"}}),
            ),
        );
        assert_eq!(f["child"]["cin"], "91000001A");
        let f = fold_event(
            Some(f),
            &ev(
                "case.opened",
                json!({"case": {"caseId": "K", "component": "family_maintenance", "courtOrdered": false, "openedOn": "2025-06-01"}}),
            ),
        );
        let f = fold_event(
            Some(f),
            &ev(
                "case.closed",
                json!({"case": {"caseId": "K", "reason": "other", "closedOn": "2026-01-05", "continueEcm": true}}),
            ),
        );
        assert_eq!(f["case"]["closedOn"], "2026-01-05");
        assert_eq!(f["child"]["cin"], "91000001A", "a CIN once known is kept");
        let e = evaluate(&f, NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()).unwrap();
        assert!(e.eligible, "{e:?}");
        assert!(e.pofs.contains(&"8".to_string()));
        let obs = observation(
            "https://b",
            "p",
            &e,
            NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        );
        assert_eq!(evaluation_of(&obs).unwrap()["eligible"], true);
    }

    /// `case.closed` ends current foster care: the placement ends on the
    /// closure date, which starts the 12-month window of "in foster care
    /// within the last 12 months"; a case opened later does not make the old
    /// placement current again, and a placement after the closure is current.
    #[test]
    fn a_closed_case_ends_current_foster_care_at_the_closure_date() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let enr = json!({"enrollment": {"aidCode": "34", "planCode": "A", "feeForService": false, "shareOfCost": false}});
        let mut f = fold_event(None, &ev("enrollment.updated", enr));
        for (t, body) in [
            (
                "case.opened",
                json!({"case": {"caseId": "K", "component": "family_reunification", "courtOrdered": true, "openedOn": "2025-03-01"}}),
            ),
            (
                "placement.changed",
                json!({"placement": {"kind": "resource_family", "county": "Fresno", "outOfCounty": false, "inFosterCare": true, "startDate": "2025-03-02"}}),
            ),
        ] {
            f = fold_event(Some(f), &ev(t, body));
        }
        let codes = |f: &Value, on: &str| {
            let e = evaluate(f, day(on)).unwrap();
            let met: Vec<String> = e
                .reasons
                .iter()
                .filter(|r| r.outcome == "met")
                .map(|r| r.code.clone())
                .collect();
            (e.eligible, met)
        };
        assert_eq!(
            codes(&f, "2026-02-01"),
            (true, vec!["pof8.current-foster-care".to_string()])
        );
        // Another case's closure leaves this one and its placement alone.
        let other = fold_event(
            Some(f.clone()),
            &ev(
                "case.closed",
                json!({"case": {"caseId": "OTHER", "reason": "reunification", "closedOn": "2026-03-01", "continueEcm": true}}),
            ),
        );
        assert!(other.pointer("/placement/endedOn").is_none(), "{other}");
        f = fold_event(
            Some(f),
            &ev(
                "case.closed",
                json!({"case": {"caseId": "K", "reason": "reunification", "closedOn": "2026-03-01", "continueEcm": true}}),
            ),
        );
        assert_eq!(f["placement"]["endedOn"], "2026-03-01");
        // The day before the closure: still in care.
        assert_eq!(
            codes(&f, "2026-02-28"),
            (true, vec!["pof8.current-foster-care".to_string()])
        );
        // From the closure date: foster care within the last 12 months.
        let recent = (true, vec!["pof8.foster-care-last-12-months".to_string()]);
        assert_eq!(codes(&f, "2026-03-01"), recent);
        assert_eq!(codes(&f, "2027-03-01"), recent, "last day of the window");
        assert_eq!(codes(&f, "2027-03-02"), (false, vec![]));
        // A new case (Family Maintenance at home) does not make the old
        // placement current; a placement after the closure is a new episode.
        f = fold_event(
            Some(f),
            &ev(
                "case.opened",
                json!({"case": {"caseId": "K2", "component": "family_maintenance", "courtOrdered": false, "openedOn": "2026-05-01"}}),
            ),
        );
        assert!(!codes(&f, "2026-06-01")
            .1
            .contains(&"pof8.current-foster-care".to_string()));
        f = fold_event(
            Some(f),
            &ev(
                "placement.changed",
                json!({"placement": {"kind": "ffa", "county": "Fresno", "outOfCounty": false, "inFosterCare": true, "startDate": "2026-07-01"}}),
            ),
        );
        assert!(f.pointer("/placement/endedOn").is_none());
        assert!(codes(&f, "2026-07-02")
            .1
            .contains(&"pof8.current-foster-care".to_string()));
    }

    /// The child's county sees the whole answer because the policy's view
    /// row says so: with the row, Fresno (the case's county, or the county
    /// whose client id the Patient carries) sees it whole and Kern does
    /// not; the same policy without the row gives Fresno no view at all.
    #[test]
    fn the_policy_view_row_decides_that_the_childs_county_sees_all() {
        use std::sync::Arc;
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
        let text = std::fs::read_to_string(demo).unwrap()
            + "\n[[organizations]]\nid = \"county-kern\"\nkind = \"county\"\nname = \"Kern\"\ncounty = \"Kern\"\n";
        let cfg = Arc::new(crate::config::Config::from_toml(&text, "test").unwrap());
        let with_row = crate::disclosure::Disclosure::new(cfg.clone());
        let policy = consent::Policy::default_policy_text();
        let cut = policy
            .find("\nviews:")
            .expect("the default policy has a views section");
        let without_row = crate::disclosure::Disclosure {
            policy: Arc::new(consent::Policy::from_yaml(&policy[..cut]).unwrap()),
            cfg,
        };
        let f = fold_event(
            None,
            &ev(
                "placement.changed",
                json!({"placement": {"kind": "strtp", "county": "Fresno", "outOfCounty": false, "inFosterCare": true, "startDate": "2025-06-01"}}),
            ),
        );
        let e = evaluate(&f, NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()).unwrap();
        let now = chrono::Utc::now();
        let case = PatientContext {
            patient_id: "p1".into(),
            source_county: Some("Fresno".into()),
            ..PatientContext::default()
        };
        let a = decide_access(&with_row, "county-fresno", &case, &[], &e, now);
        assert_eq!(a.view, Some(View::Full));
        assert_eq!(a.why, "R10-county-of-child permit.case-county");
        let kern = decide_access(&with_row, "county-kern", &case, &[], &e, now);
        assert_eq!(kern.view, None, "{}", kern.why);
        let a = decide_access(&without_row, "county-fresno", &case, &[], &e, now);
        assert_eq!(a.view, None, "without the row: {}", a.why);
        // No case on file: the county whose client id the Patient carries.
        let patient = store::StoredResource {
            resource_type: "Patient".into(),
            id: "p1".into(),
            version_id: 1,
            last_updated: now,
            patient_id: Some("p1".into()),
            body: json!({"resourceType": "Patient", "id": "p1", "identifier": [
                {"system": "urn:x", "value": "C1", "assigner": {"reference": "Organization/county-fresno"}}]}),
        };
        let no_case = PatientContext {
            patient_id: "p1".into(),
            ..PatientContext::default()
        };
        let rs = std::slice::from_ref(&patient);
        assert_eq!(
            decide_access(&with_row, "county-fresno", &no_case, rs, &e, now).view,
            Some(View::Full)
        );
        assert_eq!(
            decide_access(&with_row, "county-kern", &no_case, rs, &e, now).view,
            None
        );
        assert_eq!(
            decide_access(&without_row, "county-fresno", &no_case, rs, &e, now).view,
            None
        );
    }

    #[test]
    fn a_summary_keeps_codes_and_drops_details_not_permitted() {
        let f = fold_event(
            None,
            &ev(
                "placement.changed",
                json!({"placement": {"kind": "strtp", "county": "Fresno", "outOfCounty": false, "inFosterCare": true, "startDate": "2025-06-01"}}),
            ),
        );
        let f = fold_event(
            Some(f),
            &ev(
                "enrollment.updated",
                json!({"enrollment": {"cin": "91000001A", "aidCode": "4M", "planCode": "A", "feeForService": false, "shareOfCost": false, "effectiveOn": "2026-01-01"}}),
            ),
        );
        let day = NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
        let e = evaluate(&f, day).unwrap();
        assert!(e.reasons.iter().any(|r| r.evidence.is_some()), "{e:?}");
        let full = answer("p", &e, &View::Full, day);
        assert_eq!(full["view"], "full");
        let none = answer("p", &e, &View::Summary(Vec::new()), day);
        assert_eq!(none["view"], "summary");
        assert_eq!(none["eligible"], full["eligible"]);
        assert_eq!(none["pofs"], full["pofs"]);
        let text = none.to_string();
        for leak in ["STRTP", "strtp", "4M", "foster care"] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
        for (a, b) in none["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .zip(full["reasons"].as_array().unwrap())
        {
            assert_eq!(a["code"], b["code"]);
            assert_eq!(a["outcome"], b["outcome"]);
        }
        let first = answer("p", &e, &View::Summary(vec![0]), day);
        assert_eq!(first["reasons"][0], full["reasons"][0]);
        assert_eq!(
            reason_categories("pof8.current-foster-care"),
            &[Category::Case, Category::Placement]
        );
        assert_eq!(reason_categories("pof3.dmc"), &[Category::SubstanceUse]);
        assert_eq!(reason_categories("not-in-managed-care"), &[Category::Case]);
    }
}
