//! The JSON Schemas of the county inputs (`profiles/case-events/*.schema.json`,
//! `profiles/ecm-referral.schema.json`), embedded in the binary and compiled
//! once at start-up. A violation becomes an error whose `expression` is the
//! offending field in FHIRPath-ish form (`child.birthDate`,
//! `consent.recipients[0]`); for a missing property it names the property.

use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use serde_json::Value;

use crate::edge::{ApiError, Violation};
use crate::resources::expression;

/// Every case event type, in the order `docs/county.md` lists them.
pub const EVENT_TYPES: [&str; 8] = [
    "case.opened",
    "placement.changed",
    "enrollment.updated",
    "consent.recorded",
    "consent.withdrawn",
    "cft.scheduled",
    "case.closed",
    "foster_care.history",
];

const EVENT_SCHEMAS: [&str; 8] = [
    include_str!("../../profiles/case-events/case.opened.schema.json"),
    include_str!("../../profiles/case-events/placement.changed.schema.json"),
    include_str!("../../profiles/case-events/enrollment.updated.schema.json"),
    include_str!("../../profiles/case-events/consent.recorded.schema.json"),
    include_str!("../../profiles/case-events/consent.withdrawn.schema.json"),
    include_str!("../../profiles/case-events/cft.scheduled.schema.json"),
    include_str!("../../profiles/case-events/case.closed.schema.json"),
    include_str!("../../profiles/case-events/foster_care.history.schema.json"),
];
const REFERRAL_SCHEMA: &str = include_str!("../../profiles/ecm-referral.schema.json");

/// Compiled validators.
pub struct Schemas {
    events: Vec<(&'static str, Validator)>,
    referral: Validator,
}

fn compile(name: &str, text: &str) -> anyhow::Result<Validator> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("schema {name} is not JSON: {e}"))?;
    jsonschema::validator_for(&v).map_err(|e| anyhow::anyhow!("schema {name}: {e}"))
}

impl Schemas {
    /// Compile every schema (fails only on a broken build).
    pub fn compile() -> anyhow::Result<Schemas> {
        let mut events = Vec::with_capacity(EVENT_TYPES.len());
        for (t, text) in EVENT_TYPES.iter().zip(EVENT_SCHEMAS) {
            events.push((*t, compile(t, text)?));
        }
        Ok(Schemas {
            events,
            referral: compile("ecm-referral", REFERRAL_SCHEMA)?,
        })
    }

    /// Validate a case event: its `type` picks the schema.
    pub fn validate_event(&self, doc: &Value) -> Result<&'static str, ApiError> {
        if !doc.is_object() {
            return Err(ApiError::invalid("a case event is a JSON object", None));
        }
        let t = doc
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid("the event type is missing", Some("type")))?;
        let Some((name, v)) = self.events.iter().find(|(n, _)| *n == t) else {
            return Err(ApiError::invalid(
                format!(
                    "unknown event type; expected one of {}",
                    EVENT_TYPES.join(", ")
                ),
                Some("type"),
            ));
        };
        check(v, doc)?;
        Ok(name)
    }

    /// Validate an ECM referral form.
    pub fn validate_referral(&self, doc: &Value) -> Result<(), ApiError> {
        check(&self.referral, doc)
    }
}

/// Most schema violations one response lists (one OperationOutcome issue
/// each); past it a last issue says that more were not listed.
pub const MAX_ISSUES: usize = 20;

/// Every violation (up to [`MAX_ISSUES`]), each naming its field: the
/// schema's, then [`crate::input_check`]'s. Texts name fields and schema
/// keywords, never input values (they may hold PHI).
fn check(v: &Validator, doc: &Value) -> Result<(), ApiError> {
    let mut found: Vec<Violation> = Vec::new();
    let mut more = false;
    for err in v.iter_errors(doc) {
        let at = expression(err.instance_path().as_str());
        let join = |p: &str| {
            if at.is_empty() {
                p.to_string()
            } else {
                format!("{at}.{p}")
            }
        };
        let items: Vec<(String, String)> = match err.kind() {
            ValidationErrorKind::Required { property } => {
                let p = property.as_str().unwrap_or("");
                vec![(
                    if p.is_empty() { at.clone() } else { join(p) },
                    "is required".to_string(),
                )]
            }
            // The unexpected keys are input (a key can carry PHI): the
            // issue names the object that holds them, never the keys.
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let what = if unexpected.len() == 1 {
                    "has a property the schema does not allow".to_string()
                } else {
                    format!(
                        "has {} properties the schema does not allow",
                        unexpected.len()
                    )
                };
                vec![(at.clone(), what)]
            }
            _ => vec![(at.clone(), String::new())],
        };
        for (expr, what) in items {
            let what = if what.is_empty() {
                format!(
                    "does not conform to the schema ({} rule)",
                    err.kind().keyword()
                )
            } else {
                what
            };
            if !add(&mut found, violation(expr, &what)) {
                more = true;
                break;
            }
        }
        if more {
            break;
        }
    }
    // The checks every JSON input shares (real, plausible dates; no control
    // or bidi characters), listed with the schema's.
    if !more {
        for p in crate::input_check::check(doc) {
            if !add(&mut found, violation(expression(&p.pointer), p.text)) {
                more = true;
                break;
            }
        }
    }
    if more {
        found.push(Violation {
            text: format!("more violations were not listed (at most {MAX_ISSUES} are reported)"),
            expression: None,
        });
    }
    match found.len() {
        0 => Ok(()),
        1 => {
            let v = found.remove(0);
            Err(ApiError::Invalid {
                text: v.text,
                expression: v.expression,
            })
        }
        _ => Err(ApiError::Violations(found)),
    }
}

/// The issue for `expr` (a field, or the whole document when empty).
fn violation(expr: String, what: &str) -> Violation {
    if expr.is_empty() {
        Violation {
            text: format!("the document {what}"),
            expression: None,
        }
    } else {
        Violation {
            text: format!("{expr} {what}"),
            expression: Some(expr),
        }
    }
}

/// Add `v` unless it is listed already; false (nothing added) once
/// [`MAX_ISSUES`] are listed.
fn add(found: &mut Vec<Violation>, v: Violation) -> bool {
    if found.contains(&v) {
        return true;
    }
    if found.len() == MAX_ISSUES {
        return false;
    }
    found.push(v);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_become_fhirpath() {
        assert_eq!(expression("/child/birthDate"), "child.birthDate");
        assert_eq!(expression("/consent/recipients/0"), "consent.recipients[0]");
        assert_eq!(expression(""), "");
    }

    #[test]
    fn every_violation_is_reported_with_its_field_and_no_value() {
        let s = Schemas::compile().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("tests/golden/case_event/case.opened");
        let input = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| !p.to_string_lossy().ends_with(".expected.json"))
            .unwrap();
        let mut doc: Value = serde_json::from_slice(&std::fs::read(input).unwrap()).unwrap();
        assert_eq!(s.validate_event(&doc).unwrap(), "case.opened");
        doc.as_object_mut().unwrap().remove("socialWorker");
        doc["child"].as_object_mut().unwrap().remove("birthDate");
        doc["child"]["sex"] = "SECRET-VALUE".into();
        let ApiError::Violations(vs) = s.validate_event(&doc).unwrap_err() else {
            panic!("expected several violations");
        };
        let exprs: Vec<_> = vs.iter().filter_map(|v| v.expression.clone()).collect();
        for want in ["socialWorker", "child.birthDate", "child.sex"] {
            assert!(exprs.iter().any(|e| e == want), "{want} not in {exprs:?}");
        }
        assert!(vs.iter().all(|v| !v.text.contains("SECRET")), "{vs:?}");
    }

    #[test]
    fn violations_are_capped() {
        let s = Schemas::compile().unwrap();
        let given: Vec<Value> = (0..40).map(Value::from).collect();
        let doc = serde_json::json!({"type": "case.opened", "child": {"name": {"given": given}}});
        let ApiError::Violations(vs) = s.validate_event(&doc).unwrap_err() else {
            panic!("expected several violations");
        };
        assert_eq!(vs.len(), MAX_ISSUES + 1);
        assert!(vs[MAX_ISSUES].text.contains("not listed"), "{vs:?}");
    }

    #[test]
    fn unknown_properties_are_named_by_their_parent_never_by_their_key() {
        let s = Schemas::compile().unwrap();
        let mut doc = serde_json::json!({"type": "case.opened"});
        for i in 0..3 {
            doc[format!("Jane-Doe-{i}")] = 1.into();
        }
        doc["child"] = serde_json::json!({"SSN-123-45-6789": "x"});
        let ApiError::Violations(vs) = s.validate_event(&doc).unwrap_err() else {
            panic!("expected several violations");
        };
        let all = format!("{vs:?}");
        assert!(!all.contains("Jane") && !all.contains("SSN"), "{all}");
        assert!(
            vs.iter().any(|v| v.expression.is_none()
                && v.text == "the document has 3 properties the schema does not allow"),
            "{all}"
        );
        assert!(
            vs.iter().any(|v| v.expression.as_deref() == Some("child")
                && v.text == "child has a property the schema does not allow"),
            "{all}"
        );
    }

    #[test]
    fn schemas_compile_and_name_fields() {
        let s = Schemas::compile().unwrap();
        let mut doc = serde_json::json!({
            "eventId": "e1", "type": "case.closed", "occurredAt": "2026-01-10T09:00:00Z",
            "county": "Fresno",
            "child": {"clientId": "C1", "name": {"family": "X"}, "birthDate": "2010-02-30x", "sex": "male"},
            "case": {"caseId": "K1", "reason": "adoption", "closedOn": "2026-01-10", "continueEcm": true}
        });
        let e = s.validate_event(&doc).unwrap_err();
        assert!(
            matches!(e, ApiError::Invalid { expression: Some(ref x), .. } if x == "child.birthDate"),
            "{e:?}"
        );
        doc["child"]["birthDate"] = "2010-02-20".into();
        assert_eq!(s.validate_event(&doc).unwrap(), "case.closed");
        doc["case"].as_object_mut().unwrap().remove("closedOn");
        let e = s.validate_event(&doc).unwrap_err();
        assert!(
            matches!(e, ApiError::Invalid { expression: Some(ref x), .. } if x == "case.closedOn"),
            "{e:?}"
        );
        doc["type"] = "case.reopened".into();
        assert!(
            matches!(s.validate_event(&doc).unwrap_err(), ApiError::Invalid { expression: Some(ref x), .. } if x == "type")
        );
    }
}
