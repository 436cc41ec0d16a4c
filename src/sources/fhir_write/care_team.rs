//! What the assigned ECM provider sends back about a member: the Lead Care
//! Manager (`CareTeam`) and its assessments (`QuestionnaireResponse`,
//! `DocumentReference`).
//!
//! - **Who may post.** Only the ECM provider that owns an open ECM Task of
//!   the member (accepted or in progress) — the assigned provider
//!   ([`open_assignments`]). Another organization that may see the member is
//!   refused (403); one that may not is told the Patient is not known, as
//!   for a CarePlan.
//! - **Shape** ([`shape_problems`]): a CareTeam names a Lead Care Manager
//!   (a participant whose role is the configured coding) as a contained
//!   Practitioner or PractitionerRole with a name and a telecom contact; a
//!   DocumentReference is coded as an ECM assessment (type or category) and
//!   carries each attachment by `url` or inline `data` of at most the
//!   configured size.
//! - **The 30-day assessment clock** ([`assessment_closes_clock`]): a
//!   completed assessment meets the open `ecm-assessment` clocks of the
//!   provider's ECM Tasks of the member (Guide for CWS: assessment within 30
//!   days of the assignment).
//!
//! The codes and the attachment cap are data:
//! `mappings/care_team/care-team.toml`.

use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use store::{ClockRow, Store};

use crate::auth::Caller;
use crate::config::OrgKind;
use crate::disclosure::org_of;
use crate::resources::validate::Issue;

/// The table's file in the mappings tree.
pub const FILE: &str = "care_team/care-team.toml";

/// The types only the assigned ECM provider may create.
pub const CARE_TEAM_TYPES: &[&str] = &["CareTeam", "QuestionnaireResponse", "DocumentReference"];

/// One coding of the table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    /// The system: exact, or (starting with `/`) the end of the gateway's own.
    pub system: String,
    pub code: String,
}

impl Code {
    fn matches(&self, coding: &Value) -> bool {
        let system = coding.get("system").and_then(Value::as_str).unwrap_or("");
        let code = coding.get("code").and_then(Value::as_str).unwrap_or("");
        let system_ok = if self.system.starts_with('/') {
            system.ends_with(&self.system)
        } else {
            system == self.system
        };
        system_ok && code == self.code
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeadCareManager {
    roles: Vec<Code>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Assessment {
    document_codings: Vec<Code>,
    max_attachment_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    lead_care_manager: LeadCareManager,
    assessment: Assessment,
}

/// The care-team rules (`mappings/care_team/care-team.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CareTeamRules {
    /// CareTeam.participant.role codings of the Lead Care Manager.
    pub lcm_roles: Vec<Code>,
    /// DocumentReference.type / .category codings of an ECM assessment.
    pub assessment_codings: Vec<Code>,
    /// Largest inline attachment, decoded bytes.
    pub max_attachment_bytes: usize,
}

/// Why the table was refused (start-up error).
#[derive(Debug, thiserror::Error)]
pub enum CareTeamRulesError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl CareTeamRules {
    /// Parse and check the table: at least one role and one assessment
    /// coding, a cap above zero.
    pub fn parse(text: &str) -> Result<CareTeamRules, CareTeamRulesError> {
        let t: Table = toml::from_str(text)
            .map_err(|e| CareTeamRulesError::Invalid(e.message().to_string()))?;
        if t.lead_care_manager.roles.is_empty() {
            return Err(CareTeamRulesError::Invalid(
                "[lead_care_manager].roles: at least one coding is needed".into(),
            ));
        }
        if t.assessment.document_codings.is_empty() {
            return Err(CareTeamRulesError::Invalid(
                "[assessment].document_codings: at least one coding is needed".into(),
            ));
        }
        if t.assessment.max_attachment_bytes == 0 {
            return Err(CareTeamRulesError::Invalid(
                "[assessment].max_attachment_bytes: must be above 0".into(),
            ));
        }
        Ok(CareTeamRules {
            lcm_roles: t.lead_care_manager.roles,
            assessment_codings: t.assessment.document_codings,
            max_attachment_bytes: t.assessment.max_attachment_bytes,
        })
    }

    /// The table from the mappings tree: `dir/care_team/care-team.toml`
    /// when `dir` is given and holds it, else the built-in file.
    pub fn load(dir: Option<&Path>) -> Result<CareTeamRules, CareTeamRulesError> {
        let text = crate::embedded::mapping_file(dir, FILE)
            .map_err(|e| CareTeamRulesError::Read {
                path: e.path,
                reason: e.reason,
            })?
            .unwrap_or_default();
        CareTeamRules::parse(&text)
    }
}

fn codings(concepts: Option<&Value>) -> Vec<&Value> {
    let list: Vec<&Value> = match concepts {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    };
    list.into_iter()
        .filter_map(|c| c.get("coding").and_then(Value::as_array))
        .flatten()
        .collect()
}

/// The contained resource `#id` names.
fn contained<'a>(res: &'a Value, reference: Option<&Value>) -> Option<&'a Value> {
    let local = reference?
        .get("reference")
        .and_then(Value::as_str)?
        .strip_prefix('#')?;
    res.get("contained")?
        .as_array()?
        .iter()
        .find(|c| c.get("id").and_then(Value::as_str) == Some(local))
}

fn non_empty(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

/// Does a contained Practitioner or PractitionerRole name a person with a
/// way to reach them? (name on the Practitioner; telecom on either.)
fn names_a_reachable_person(res: &Value, member: &Value) -> bool {
    match member.get("resourceType").and_then(Value::as_str) {
        Some("Practitioner") => non_empty(member.get("name")) && non_empty(member.get("telecom")),
        Some("PractitionerRole") => {
            let Some(pr) = contained(res, member.get("practitioner")) else {
                return false;
            };
            pr.get("resourceType").and_then(Value::as_str) == Some("Practitioner")
                && non_empty(pr.get("name"))
                && (non_empty(member.get("telecom")) || non_empty(pr.get("telecom")))
        }
        _ => false,
    }
}

/// The gateway's rules for a CareTeam / QuestionnaireResponse /
/// DocumentReference beyond the R4 schema; every problem found.
pub fn shape_problems(rules: &CareTeamRules, rtype: &str, res: &Value) -> Vec<Issue> {
    let mut out = Vec::new();
    match rtype {
        "CareTeam" => {
            let lcm: Vec<&Value> = res
                .get("participant")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| {
                    codings(p.get("role"))
                        .iter()
                        .any(|c| rules.lcm_roles.iter().any(|r| r.matches(c)))
                })
                .collect();
            if lcm.is_empty() {
                out.push(Issue::new(
                    "business-rule",
                    "CareTeam.participant",
                    "a CareTeam names the Lead Care Manager: a participant whose role is the lead-care-manager coding",
                ));
            } else if !lcm.iter().any(|p| {
                contained(res, p.get("member")).is_some_and(|m| names_a_reachable_person(res, m))
            }) {
                out.push(Issue::new(
                    "business-rule",
                    "CareTeam.participant.member",
                    "the Lead Care Manager is a contained Practitioner (or a PractitionerRole of one) with a name and a telecom contact",
                ));
            }
        }
        "DocumentReference" => {
            let coded = codings(res.get("type"))
                .into_iter()
                .chain(codings(res.get("category")))
                .any(|c| rules.assessment_codings.iter().any(|r| r.matches(c)));
            if !coded {
                out.push(Issue::new(
                    "business-rule",
                    "DocumentReference.type",
                    "a DocumentReference is accepted only as an ECM assessment: its type or category carries an assessment coding",
                ));
            }
            for (i, content) in res
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let at = format!("DocumentReference.content[{i}].attachment");
                let att = content.get("attachment");
                let url = att.and_then(|a| a.get("url")).and_then(Value::as_str);
                let data = att.and_then(|a| a.get("data")).and_then(Value::as_str);
                match (url, data) {
                    (None, None) => out.push(Issue::new(
                        "required",
                        &at,
                        format!("{at} needs a url or inline data"),
                    )),
                    (_, Some(d)) => {
                        match base64::engine::general_purpose::STANDARD.decode(d.as_bytes()) {
                            Err(_) => out.push(Issue::new(
                                "value",
                                &format!("{at}.data"),
                                format!("{at}.data is not base64"),
                            )),
                            Ok(bytes) if bytes.len() > rules.max_attachment_bytes => {
                                out.push(Issue::new(
                                    "too-long",
                                    &format!("{at}.data"),
                                    format!(
                                        "{at}.data is larger than {} bytes: send the document by url",
                                        rules.max_attachment_bytes
                                    ),
                                ))
                            }
                            Ok(_) => {}
                        }
                    }
                    (Some(_), None) => {}
                }
            }
        }
        _ => {}
    }
    out
}

/// The Task ids of the member's open ECM assignments owned by the caller
/// (accepted or in progress, owner an ECM provider): empty when the caller
/// is not the member's assigned ECM provider.
pub async fn open_assignments(
    cfg: &crate::config::Config,
    store: &dyn Store,
    caller_org: &str,
    patient_id: &str,
) -> Result<Vec<String>, store::StoreError> {
    if cfg.organization(caller_org).map(|o| o.kind) != Some(OrgKind::EcmProvider) {
        return Ok(Vec::new());
    }
    let tasks = store
        .resources_by_patient_types(patient_id, &["Task"])
        .await?;
    let mut ids: Vec<String> = tasks
        .iter()
        .filter(|t| {
            matches!(
                t.body.get("status").and_then(Value::as_str),
                Some("accepted" | "in-progress")
            ) && t.body.get("owner").and_then(org_of).as_deref() == Some(caller_org)
        })
        .map(|t| t.id.clone())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Is `res` a completed assessment, the kind that meets the 30-day clock?
/// A QuestionnaireResponse `completed` or `amended`; a DocumentReference
/// `current`.
pub fn assessment_closes_clock(rtype: &str, res: &Value) -> bool {
    let status = res.get("status").and_then(Value::as_str);
    match rtype {
        "QuestionnaireResponse" => matches!(status, Some("completed" | "amended")),
        "DocumentReference" => status == Some("current"),
        _ => false,
    }
}

/// The open `ecm-assessment` clocks of the caller's ECM Tasks of the member
/// (the assessing provider meets its own assignment's clock, not another
/// provider's; `clocks::assessment_received` closes them).
pub async fn open_assessment_clocks(
    cfg: &crate::config::Config,
    store: &dyn Store,
    caller: &Caller,
    patient_id: &str,
) -> Result<Vec<ClockRow>, store::StoreError> {
    let mut out = Vec::new();
    for task in open_assignments(cfg, store, &caller.org_id, patient_id).await? {
        for c in crate::clocks::open_for(store, &format!("Task/{task}")).await? {
            if c.kind == program::Clock::EcmAssessment.code() {
                out.push(c);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> CareTeamRules {
        CareTeamRules::load(None).unwrap()
    }

    /// A CareTeam as an ECM provider posts it: the Lead Care Manager a
    /// contained PractitionerRole of a contained Practitioner.
    fn lcm_care_team() -> Value {
        json!({"resourceType": "CareTeam", "status": "active",
            "subject": {"reference": "Patient/p1"},
            "contained": [
                {"resourceType": "Practitioner", "id": "lcm", "name": [{"family": "Nguyen", "given": ["Lee"]}]},
                {"resourceType": "PractitionerRole", "id": "lcm-role", "practitioner": {"reference": "#lcm"},
                 "organization": {"reference": "Organization/ecm-compass"},
                 "telecom": [{"system": "phone", "value": "559-555-0100", "use": "work"}]}
            ],
            "participant": [{"role": [{"coding": [{"system": "https://gateway.example.org/fhir/CodeSystem/ecm-care-team-role", "code": "lead-care-manager"}]}],
                "member": {"reference": "#lcm-role"}}]})
    }

    #[test]
    fn the_shipped_table_loads() {
        let r = rules();
        assert_eq!(r.lcm_roles[0].code, "lead-care-manager");
        assert!(r
            .assessment_codings
            .iter()
            .any(|c| c.code == "ecm-assessment"));
        assert_eq!(r.max_attachment_bytes, 512 * 1024);
        assert!(CareTeamRules::parse("[lead_care_manager]\nroles = []\n[assessment]\ndocument_codings = [{system = \"x\", code = \"y\"}]\nmax_attachment_bytes = 1").is_err());
        assert!(CareTeamRules::parse("nonsense = 1").is_err());
    }

    #[test]
    fn a_care_team_names_a_reachable_lead_care_manager() {
        let r = rules();
        assert_eq!(shape_problems(&r, "CareTeam", &lcm_care_team()), vec![]);
        // A Practitioner named directly, with its own telecom, also does.
        let mut direct = lcm_care_team();
        direct["contained"][0]["telecom"] =
            json!([{"system": "email", "value": "lee@example.org"}]);
        direct["participant"][0]["member"] = json!({"reference": "#lcm"});
        assert_eq!(shape_problems(&r, "CareTeam", &direct), vec![]);
        // No Lead Care Manager role.
        let mut no_role = lcm_care_team();
        no_role["participant"][0]["role"][0]["coding"][0]["code"] = json!("member");
        assert_eq!(
            shape_problems(&r, "CareTeam", &no_role)[0]
                .expression
                .as_deref(),
            Some("CareTeam.participant")
        );
        // No way to reach them.
        let mut no_phone = lcm_care_team();
        no_phone["contained"][1]
            .as_object_mut()
            .unwrap()
            .remove("telecom");
        assert_eq!(
            shape_problems(&r, "CareTeam", &no_phone)[0]
                .expression
                .as_deref(),
            Some("CareTeam.participant.member")
        );
        // A member that is not contained is not a named person here.
        let mut external = lcm_care_team();
        external["participant"][0]["member"] = json!({"reference": "Practitioner/x"});
        assert_eq!(shape_problems(&r, "CareTeam", &external).len(), 1);
    }

    #[test]
    fn a_document_is_an_assessment_with_a_bounded_attachment() {
        let r = rules();
        let doc = |att: Value| {
            json!({"resourceType": "DocumentReference", "status": "current",
                "type": {"coding": [{"system": "http://loinc.org", "code": "51848-0"}]},
                "subject": {"reference": "Patient/p1"}, "content": [{"attachment": att}]})
        };
        let small = base64::engine::general_purpose::STANDARD.encode(b"assessment");
        assert_eq!(
            shape_problems(
                &r,
                "DocumentReference",
                &doc(json!({"contentType": "application/pdf", "data": small}))
            ),
            vec![]
        );
        assert_eq!(
            shape_problems(
                &r,
                "DocumentReference",
                &doc(json!({"url": "https://ecm.example.org/d/1"}))
            ),
            vec![]
        );
        let big =
            base64::engine::general_purpose::STANDARD.encode(vec![0u8; r.max_attachment_bytes + 1]);
        let issues = shape_problems(&r, "DocumentReference", &doc(json!({"data": big})));
        assert_eq!(issues[0].code, "too-long");
        assert_eq!(
            issues[0].expression.as_deref(),
            Some("DocumentReference.content[0].attachment.data")
        );
        assert_eq!(
            shape_problems(&r, "DocumentReference", &doc(json!({"title": "x"})))[0].code,
            "required"
        );
        let mut uncoded = doc(json!({"url": "https://ecm.example.org/d/1"}));
        uncoded["type"] = json!({"coding": [{"system": "http://loinc.org", "code": "11488-4"}]});
        assert_eq!(
            shape_problems(&r, "DocumentReference", &uncoded)[0]
                .expression
                .as_deref(),
            Some("DocumentReference.type")
        );
        // The gateway's own code, as a category, under any canonical base.
        uncoded["category"] = json!([{"coding": [{"system": "https://gw.example/fhir/CodeSystem/ecm-document-type", "code": "ecm-assessment"}]}]);
        assert_eq!(shape_problems(&r, "DocumentReference", &uncoded), vec![]);
    }

    /// The shipped routing rules: a care team goes to the case county, an
    /// assessment to the county and the member's MCP, a release the
    /// provider obtained to the county and to the MCP only when it names it.
    #[test]
    fn the_shipped_rules_route_care_team_data_and_a_release_only_to_the_plan_it_names() {
        use crate::routing::{MemberView, RouteInput, RoutingRules};
        let cfg = crate::config::Config::from_toml(
            r#"
[[organizations]]
id = "county-fresno"
kind = "county"
name = "Fresno"
county = "Fresno"
endpoint = "http://127.0.0.1:9001/fhir"

[[organizations]]
id = "mcp-a"
kind = "mcp"
name = "Plan A"
endpoint = "http://127.0.0.1:9101/fhir"
plan_codes = ["A"]
counties = ["Fresno"]

[[organizations]]
id = "ecm-compass"
kind = "ecm_provider"
name = "Compass"
endpoint = "http://127.0.0.1:9201/fhir"
mcps = ["mcp-a"]
"#,
            "t",
        )
        .unwrap();
        let rules = RoutingRules::default_rules().unwrap();
        let member = [
            json!({"resourceType": "Coverage", "id": "cov1", "status": "active",
                "beneficiary": {"reference": "Patient/p1"}, "payor": [{"reference": "Organization/mcp-a"}]}),
            json!({"resourceType": "EpisodeOfCare", "id": "ep1", "status": "active",
                "patient": {"reference": "Patient/p1"},
                "managingOrganization": {"reference": "Organization/county-fresno"}}),
            json!({"resourceType": "Task", "id": "t1", "status": "accepted", "intent": "order",
                "for": {"reference": "Patient/p1"}, "owner": {"reference": "Organization/ecm-compass"}}),
        ];
        let view = MemberView::from_resources(&cfg, "p1", &[], &member);
        assert_eq!(view.member_mcp.as_deref(), Some("mcp-a"));
        let routed = |written: Value| -> Vec<(String, String)> {
            let input = RouteInput {
                source_org: "ecm-compass".into(),
                written: vec![written],
                ..RouteInput::default()
            };
            rules
                .plan(&cfg, &input, &view)
                .deliveries
                .into_iter()
                .map(|d| (d.rule, d.recipient))
                .collect()
        };
        let pair = |r: &str, o: &str| (r.to_string(), o.to_string());
        let mut ct = lcm_care_team();
        ct["id"] = json!("ct1");
        assert_eq!(
            routed(ct),
            vec![pair("careteam-to-county", "county-fresno")]
        );
        let qr = json!({"resourceType": "QuestionnaireResponse", "id": "qr1", "status": "completed",
            "subject": {"reference": "Patient/p1"}});
        assert_eq!(
            routed(qr),
            vec![
                pair("assessment-response-to-county-and-mcp", "county-fresno"),
                pair("assessment-response-to-county-and-mcp", "mcp-a")
            ]
        );
        let doc = json!({"resourceType": "DocumentReference", "id": "d1", "status": "current",
            "subject": {"reference": "Patient/p1"}});
        assert_eq!(
            routed(doc),
            vec![
                pair("assessment-document-to-county-and-mcp", "county-fresno"),
                pair("assessment-document-to-county-and-mcp", "mcp-a")
            ]
        );
        let release = |to: &[&str]| {
            let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
            crate::disclosure::consent_to_fhir(&crate::disclosure::ConsentSpec {
                canonical_base: "https://gw.example/fhir",
                id: "c1",
                identifier: None,
                patient_id: "p1",
                kind: "release_of_information",
                grantor_role: "youth",
                grantor_name: None,
                recorded_by_org: "ecm-compass",
                recorded_at: "2026-01-20T09:00:00Z",
                recipients: &to,
                categories: &["health".to_string()],
                start: "2026-01-20",
                end: None,
            })
        };
        assert_eq!(
            routed(release(&["county-fresno", "mcp-a"])),
            vec![
                pair("consent-to-county", "county-fresno"),
                pair("consent-to-mcp", "mcp-a")
            ]
        );
        assert_eq!(
            routed(release(&["county-fresno"])),
            vec![pair("consent-to-county", "county-fresno")],
            "a release that does not name the plan does not go to it"
        );
    }

    #[test]
    fn only_a_completed_assessment_meets_the_clock() {
        let qr = |s: &str| json!({"resourceType": "QuestionnaireResponse", "status": s});
        assert!(assessment_closes_clock(
            "QuestionnaireResponse",
            &qr("completed")
        ));
        assert!(assessment_closes_clock(
            "QuestionnaireResponse",
            &qr("amended")
        ));
        assert!(!assessment_closes_clock(
            "QuestionnaireResponse",
            &qr("in-progress")
        ));
        assert!(assessment_closes_clock(
            "DocumentReference",
            &json!({"status": "current"})
        ));
        assert!(!assessment_closes_clock(
            "DocumentReference",
            &json!({"status": "entered-in-error"})
        ));
        assert!(!assessment_closes_clock(
            "CareTeam",
            &json!({"status": "active"})
        ));
    }
}
