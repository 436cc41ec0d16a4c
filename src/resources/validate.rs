//! Validation of every FHIR write: HL7's FHIR R4 JSON Schema
//! (`profiles/fhir.schema.json`, built into the binary) for the resource's
//! own type, then the project's rules for that type. `POST /fhir/{type}`,
//! `PUT /fhir/Task/{id}` and `POST /fhir/{type}/$validate` all run
//! [`FhirValidator::check`].
//!
//! - **Schema.** Each writable type ([`WRITE_TYPES`]) is compiled once, at
//!   start (`sources::Ingress::new` calls [`FhirValidator::global`]),
//!   against its own definition `#/definitions/{Type}` — not the whole schema's
//!   `oneOf` over 147 resource types (its discriminator is not a JSON Schema
//!   keyword, so every document would be tried against every type). The
//!   definitions refer to one another (`contained` is any resource), so each
//!   validator still compiles most of the schema; measured in the unit test
//!   `compile_time_is_measured`.
//! - **Project rules** ([`type_rules`]): elements R4 requires (1..1) and
//!   required value-set bindings that the JSON Schema leaves open (it writes
//!   `CarePlan.status` as any `code`): `CarePlan.status`, `.intent`,
//!   `Task.status`, `.intent`, `.priority`, `CareTeam.status`,
//!   `QuestionnaireResponse.status`, `DocumentReference.status`. Consent's gateway shape is checked
//!   by `sources::fhir_write::consent_shape_problem` after the schema passes.
//!
//! - **Shared input checks** ([`crate::input_check`]): real, plausible
//!   dates (a `2026-02-30` or a 2099 birth date, which the schema's regex lets
//!   through) and no control or bidi characters, as for every JSON input.
//!
//! Every problem is one [`Issue`] whose `expression` is FHIRPath-like
//! (`CarePlan.activity[0].detail.status`); at most [`MAX_ISSUES`] are
//! listed, then one more saying that more were not. Texts name elements and
//! rules only — never an input value, and never the name of an element FHIR
//! does not define (a key is input too): such an issue names the element
//! that holds it.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use serde_json::{json, Value};

/// HL7's FHIR R4 JSON Schema, as shipped in `profiles/`.
pub const FHIR_SCHEMA: &str = include_str!("../../profiles/fhir.schema.json");

/// The types a client may write (create, update or `$validate`).
pub const WRITE_TYPES: &[&str] = &[
    "CarePlan",
    "Consent",
    "Task",
    "CareTeam",
    "QuestionnaireResponse",
    "DocumentReference",
];

/// Most issues one OperationOutcome lists; past it a last issue says more
/// were not listed.
pub const MAX_ISSUES: usize = 20;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// `OperationOutcome.issue.code` (`required`, `structure`, `value`,
    /// `code-invalid`, `invariant`, `business-rule`, `too-costly`).
    pub code: &'static str,
    /// What is wrong; names elements, never values.
    pub text: String,
    /// FHIRPath-like location (`CarePlan.status`); `None` for the last
    /// "more not listed" issue.
    pub expression: Option<String>,
}

impl Issue {
    /// An issue on `expression`.
    pub fn new(code: &'static str, expression: &str, text: impl Into<String>) -> Issue {
        Issue {
            code,
            text: text.into(),
            expression: Some(expression.to_string()),
        }
    }
}

/// The compiled schema of every writable type.
pub struct FhirValidator {
    types: Vec<(&'static str, Validator)>,
}

static GLOBAL: OnceLock<Result<FhirValidator, String>> = OnceLock::new();

impl FhirValidator {
    /// Compile the schema for each of `types` (each `#/definitions/{T}`).
    pub fn compile(types: &[&'static str]) -> anyhow::Result<FhirValidator> {
        let mut root: Value = serde_json::from_str(FHIR_SCHEMA)
            .map_err(|e| anyhow::anyhow!("the FHIR schema is not JSON: {e}"))?;
        let Some(obj) = root.as_object_mut() else {
            anyhow::bail!("the FHIR schema is not an object");
        };
        obj.remove("oneOf");
        obj.remove("discriminator");
        let mut out = Vec::with_capacity(types.len());
        for t in types {
            if !root
                .pointer(&format!("/definitions/{t}"))
                .is_some_and(Value::is_object)
            {
                anyhow::bail!("the FHIR schema defines no {t}");
            }
            root["$ref"] = json!(format!("#/definitions/{t}"));
            let v = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft6)
                .build(&root)
                .map_err(|e| anyhow::anyhow!("the FHIR schema for {t}: {e}"))?;
            out.push((*t, v));
        }
        Ok(FhirValidator { types: out })
    }

    /// The process-wide validator of [`WRITE_TYPES`], compiled on first use
    /// (start-up calls this so no request pays for it).
    pub fn global() -> anyhow::Result<&'static FhirValidator> {
        GLOBAL
            .get_or_init(|| FhirValidator::compile(WRITE_TYPES).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Every problem of `resource` as a `rtype` (schema, then the type's
    /// rules), capped at [`MAX_ISSUES`]. Empty: valid.
    pub fn check(&self, rtype: &str, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        if !resource.is_object() {
            issues.push(Issue::new(
                "structure",
                rtype,
                "the body must be a JSON object",
            ));
            return issues;
        }
        if resource.get("resourceType").and_then(Value::as_str) != Some(rtype) {
            issues.push(Issue::new(
                "invariant",
                "resourceType",
                "resourceType must match the URL",
            ));
            return issues;
        }
        let Some((_, v)) = self.types.iter().find(|(t, _)| *t == rtype) else {
            issues.push(Issue::new(
                "not-supported",
                rtype,
                "this resource type cannot be written",
            ));
            return issues;
        };
        let mut more = false;
        for err in v.iter_errors(resource) {
            if !push(&mut issues, schema_issue(rtype, &err)) {
                more = true;
                break;
            }
        }
        if !more {
            for i in type_rules(rtype, resource) {
                if !push(&mut issues, i) {
                    more = true;
                    break;
                }
            }
        }
        if !more {
            for p in crate::input_check::check(resource) {
                let at = expression(rtype, &p.pointer);
                let text = format!("{at} {}", p.text);
                if !push(&mut issues, Issue::new("value", &at, text)) {
                    more = true;
                    break;
                }
            }
        }
        if more {
            issues.push(Issue {
                code: "too-costly",
                text: format!("more problems were not listed (at most {MAX_ISSUES} are reported)"),
                expression: None,
            });
        }
        issues
    }
}

/// Add `i` unless already there; false when the list is full.
fn push(issues: &mut Vec<Issue>, i: Issue) -> bool {
    if issues.contains(&i) {
        return true;
    }
    if issues.len() >= MAX_ISSUES {
        return false;
    }
    issues.push(i);
    true
}

/// `CarePlan` + `/activity/0/detail` → `CarePlan.activity[0].detail`.
pub fn expression(rtype: &str, pointer: &str) -> String {
    let rest = crate::resources::expression(pointer);
    match rest.as_str() {
        "" => rtype.to_string(),
        r if r.starts_with('[') => format!("{rtype}{r}"),
        r => format!("{rtype}.{r}"),
    }
}

/// One schema error as an issue, without the instance value.
fn schema_issue(rtype: &str, err: &jsonschema::ValidationError<'_>) -> Issue {
    let at = expression(rtype, err.instance_path().as_str());
    match err.kind() {
        ValidationErrorKind::Required { property } => {
            let p = property.as_str().unwrap_or("");
            let e = if p.is_empty() {
                at
            } else {
                format!("{at}.{p}")
            };
            let text = format!("{e} is required");
            Issue::new("required", &e, text)
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let text = if unexpected.len() == 1 {
                format!("{at} has an element that FHIR R4 does not define there")
            } else {
                format!(
                    "{at} has {} elements that FHIR R4 does not define there",
                    unexpected.len()
                )
            };
            Issue::new("structure", &at, text)
        }
        ValidationErrorKind::Enum { .. } => Issue::new(
            "code-invalid",
            &at,
            format!("{at} is not a code of the value set FHIR R4 requires"),
        ),
        ValidationErrorKind::Type { .. } => Issue::new(
            "structure",
            &at,
            format!("{at} has a JSON type its FHIR data type does not allow"),
        ),
        ValidationErrorKind::Pattern { .. } => Issue::new(
            "value",
            &at,
            format!("{at} is not in the format its FHIR data type requires"),
        ),
        ValidationErrorKind::Constant { .. } => {
            Issue::new("value", &at, format!("{at} has a value not allowed there"))
        }
        ValidationErrorKind::OneOfNotValid { .. }
        | ValidationErrorKind::OneOfMultipleValid { .. } => Issue::new(
            "structure",
            &at,
            format!("{at} is not a valid resource of a type allowed there"),
        ),
        k => Issue::new(
            "structure",
            &at,
            format!(
                "{at} does not conform to the FHIR R4 schema ({} rule)",
                k.keyword()
            ),
        ),
    }
}

/// request-status (CarePlan.status, required binding).
const REQUEST_STATUS: &[&str] = &[
    "draft",
    "active",
    "on-hold",
    "revoked",
    "completed",
    "entered-in-error",
    "unknown",
];
/// care-plan-intent (CarePlan.intent, required binding).
const CARE_PLAN_INTENT: &[&str] = &["proposal", "plan", "order", "option"];
/// request-priority (Task.priority, required binding).
const REQUEST_PRIORITY: &[&str] = &["routine", "urgent", "asap", "stat"];
/// care-team-status (CareTeam.status, required binding).
const CARE_TEAM_STATUS: &[&str] = &[
    "proposed",
    "active",
    "suspended",
    "inactive",
    "entered-in-error",
];
/// questionnaire-answers-status (QuestionnaireResponse.status, required binding).
const QR_STATUS: &[&str] = &[
    "in-progress",
    "completed",
    "amended",
    "entered-in-error",
    "stopped",
];
/// document-reference-status (DocumentReference.status, required binding).
const DOC_STATUS: &[&str] = &["current", "superseded", "entered-in-error"];

/// The project's rules for `rtype` beyond the JSON Schema (see the module
/// doc). Pure.
pub fn type_rules(rtype: &str, r: &Value) -> Vec<Issue> {
    let mut out = Vec::new();
    let mut required_code = |elem: &str, codes: Option<&[&str]>, required: bool| {
        let e = format!("{rtype}.{elem}");
        match r.get(elem) {
            None | Some(Value::Null) if required => {
                out.push(Issue::new("required", &e, format!("{e} is required")));
            }
            Some(Value::String(s)) if codes.is_some_and(|c| !c.contains(&s.as_str())) => {
                out.push(Issue::new(
                    "code-invalid",
                    &e,
                    format!("{e} is not a code of the value set FHIR R4 requires"),
                ));
            }
            // A wrong JSON type is the schema's issue.
            _ => {}
        }
    };
    match rtype {
        "CarePlan" => {
            required_code("status", Some(REQUEST_STATUS), true);
            required_code("intent", Some(CARE_PLAN_INTENT), true);
        }
        "Task" => {
            required_code("status", None, true);
            required_code("intent", None, true);
            required_code("priority", Some(REQUEST_PRIORITY), false);
        }
        "Consent" => {
            required_code("status", None, true);
        }
        "CareTeam" => {
            required_code("status", Some(CARE_TEAM_STATUS), false);
        }
        "QuestionnaireResponse" => {
            required_code("status", Some(QR_STATUS), true);
        }
        "DocumentReference" => {
            // `content` (1..*) the schema requires.
            required_code("status", Some(DOC_STATUS), true);
        }
        _ => {}
    }
    out
}

/// The 422 listing `issues`, one OperationOutcome issue each.
pub fn unprocessable(issues: &[Issue]) -> axum::response::Response {
    crate::edge::fhir_json(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        &outcome(issues),
    )
}

/// The OperationOutcome listing `issues` (severity `error`).
pub fn outcome(issues: &[Issue]) -> Value {
    let list: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut issue = json!({"severity": "error", "code": i.code, "diagnostics": i.text});
            if let Some(e) = &i.expression {
                issue["expression"] = json!([e]);
            }
            issue
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": list})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> &'static FhirValidator {
        FhirValidator::global().unwrap()
    }

    fn care_plan() -> Value {
        json!({"resourceType": "CarePlan", "id": "cp1", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "activity": [{"detail": {"status": "scheduled", "description": "x"}}]})
    }

    #[test]
    fn compile_time_is_measured() {
        let t = std::time::Instant::now();
        let one = FhirValidator::compile(&["CarePlan"]).unwrap();
        let per_type = t.elapsed();
        let t = std::time::Instant::now();
        let _all = FhirValidator::compile(WRITE_TYPES).unwrap();
        let all = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..100 {
            assert!(one.check("CarePlan", &care_plan()).is_empty());
        }
        let check = t.elapsed() / 100;
        eprintln!(
            "FHIR schema: {} bytes; compile CarePlan {per_type:?}, all {} write types {all:?}; one check {check:?}",
            FHIR_SCHEMA.len(),
            WRITE_TYPES.len()
        );
    }

    #[test]
    fn a_valid_care_plan_passes() {
        assert_eq!(v().check("CarePlan", &care_plan()), vec![]);
    }

    #[test]
    fn bad_codes_and_unknown_elements_are_issues_without_values() {
        let mut cp = care_plan();
        cp["status"] = json!("nonsense-SECRET");
        cp["Jane-Doe-SSN"] = json!("x");
        cp["activity"][0]["detail"]["status"] = json!("SECRET2");
        cp["activity"][0]["detail"]["foo-SECRET3"] = json!(1);
        let issues = v().check("CarePlan", &cp);
        let exprs: Vec<&str> = issues
            .iter()
            .filter_map(|i| i.expression.as_deref())
            .collect();
        for want in [
            "CarePlan",
            "CarePlan.status",
            "CarePlan.activity[0].detail.status",
            "CarePlan.activity[0].detail",
        ] {
            assert!(exprs.contains(&want), "{want} not in {issues:?}");
        }
        let all = format!("{issues:?}");
        assert!(!all.contains("SECRET") && !all.contains("Jane"), "{all}");
        let o = outcome(&issues);
        assert_eq!(o["issue"].as_array().unwrap().len(), issues.len());
    }

    #[test]
    fn required_elements_and_wrong_types() {
        let issues = v().check(
            "CarePlan",
            &json!({"resourceType": "CarePlan", "status": 3}),
        );
        let exprs: Vec<&str> = issues
            .iter()
            .filter_map(|i| i.expression.as_deref())
            .collect();
        assert!(exprs.contains(&"CarePlan.subject"), "{issues:?}");
        assert!(exprs.contains(&"CarePlan.intent"), "{issues:?}");
        assert!(exprs.contains(&"CarePlan.status"), "{issues:?}");
        let t = json!({"resourceType": "Task", "id": "t1", "status": "done", "intent": "order",
            "priority": "whenever"});
        let issues = v().check("Task", &t);
        let exprs: Vec<&str> = issues
            .iter()
            .filter_map(|i| i.expression.as_deref())
            .collect();
        assert_eq!(exprs, vec!["Task.status", "Task.priority"], "{issues:?}");
        let issues = v().check("Task", &json!({"resourceType": "Consent"}));
        assert_eq!(issues[0].expression.as_deref(), Some("resourceType"));
    }

    #[test]
    fn issues_are_capped() {
        let mut cp = care_plan();
        let notes: Vec<Value> = (0..40).map(|i| json!({"text": i})).collect();
        cp["note"] = Value::Array(notes);
        let issues = v().check("CarePlan", &cp);
        assert_eq!(issues.len(), MAX_ISSUES + 1, "{issues:?}");
        assert_eq!(issues[MAX_ISSUES].expression, None);
        assert!(issues[MAX_ISSUES].text.contains("not listed"));
    }

    #[test]
    fn the_gateway_consent_shape_is_valid_r4() {
        let consent = crate::disclosure::sample_release_consent();
        assert_eq!(v().check("Consent", &consent), vec![]);
    }

    #[test]
    fn expressions() {
        assert_eq!(expression("Task", ""), "Task");
        assert_eq!(expression("Task", "/note/2/text"), "Task.note[2].text");
    }
}
