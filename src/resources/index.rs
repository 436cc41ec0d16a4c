//! Search tokens: the pure function that turns a resource into the
//! [`SearchToken`]s the store indexes, and the matching query encodings.
//!
//! **Invariant: every writer of resources computes `ResourceWrite.index` with
//! [`tokens`]** (the translation worker in
//! `sources::adt::worker::Translator::prepare`, the HTTP sources through
//! `resources::write_of`). The FHIR search API finds resources only through
//! these tokens (plus the store's `patient_id` column for `patient`/`subject`
//! and its `last_updated` column for `_lastUpdated`), so a resource written
//! without them is invisible to token searches.
//!
//! Encodings (the store gives tokens no meaning; it matches strings exactly):
//! - `identifier` = `system|value`, or `|value` when the identifier has no
//!   system; `identifier:value` = the bare `value` (any system);
//! - `patient` = `Patient/id` of the patient the resource belongs to
//!   (`mapping::patient_reference`, plus `Task.for`, which that function does
//!   not read); serves both `patient` and `subject` searches;
//! - `status` = the code;
//! - `owner`, `requester`, `focus` = the reference as written, `Type/id`
//!   (absolute URLs are reduced to their last two segments).
//!
//! Limits: at most [`MAX_TOKENS`] tokens and values of at most
//! [`MAX_TOKEN_VALUE`] bytes; anything longer is not indexed (and so not
//! searchable), never truncated into a wrong match.

use serde_json::Value;
use store::SearchToken;

/// Most tokens one resource yields (the store's own cap is 256).
pub const MAX_TOKENS: usize = 128;
/// Longest token value indexed, in bytes (the store's own cap is 512).
pub const MAX_TOKEN_VALUE: usize = 512;

/// Token parameter of a bare identifier value (matches any system).
pub const IDENTIFIER_VALUE: &str = "identifier:value";

/// The search tokens of `resource` (empty for anything that is not an object
/// with a `resourceType`). Deterministic and duplicate-free.
pub fn tokens(resource: &Value) -> Vec<SearchToken> {
    let mut out: Vec<SearchToken> = Vec::new();
    let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
        return out;
    };
    let mut push = |param: &str, value: String| {
        if value.is_empty() || value.len() > MAX_TOKEN_VALUE || out.len() >= MAX_TOKENS {
            return;
        }
        let t = SearchToken::new(param, value);
        if !out.contains(&t) {
            out.push(t);
        }
    };
    if let Some(ids) = resource.get("identifier") {
        // Some resources have a single Identifier, most an array.
        let list: Vec<&Value> = match ids {
            Value::Array(a) => a.iter().collect(),
            v @ Value::Object(_) => vec![v],
            _ => Vec::new(),
        };
        for id in list {
            let Some(value) = id.get("value").and_then(Value::as_str) else {
                continue;
            };
            let system = id.get("system").and_then(Value::as_str).unwrap_or("");
            push("identifier", identifier_token(system, value));
            push(IDENTIFIER_VALUE, value.to_string());
        }
    }
    if let Some(p) = patient_of(resource) {
        push("patient", format!("Patient/{p}"));
    }
    if let Some(s) = resource.get("status").and_then(Value::as_str) {
        push("status", s.to_string());
    }
    if rtype == "Task" {
        for (param, elem) in [("owner", "owner"), ("requester", "requester")] {
            if let Some(r) = resource.get(elem).and_then(reference_of) {
                push(param, r);
            }
        }
        if let Some(r) = resource.get("focus").and_then(reference_of) {
            push("focus", r);
        }
    }
    out
}

/// The patient a resource belongs to, when its id is well formed.
pub fn patient_of(resource: &Value) -> Option<String> {
    // `mapping::patient_reference` reads subject, patient, beneficiary, a
    // Task's `for` and target; only well-formed ids are indexed.
    mapping::patient_reference(resource).filter(|id| crate::config::valid_fhir_id(id))
}

/// The `identifier` token of `system|value` (`|value` without a system).
pub fn identifier_token(system: &str, value: &str) -> String {
    format!("{system}|{value}")
}

/// `Type/id` of a Reference (`{"reference": "..."}`), absolute URLs and
/// `_history` suffixes reduced; `None` for contained (`#x`) or malformed ones.
pub fn reference_of(reference: &Value) -> Option<String> {
    let r = reference.get("reference").and_then(Value::as_str)?;
    normalize_reference(r)
}

/// Normalize a reference string to `Type/id`.
pub fn normalize_reference(r: &str) -> Option<String> {
    let r = r.split("/_history/").next().unwrap_or(r);
    let mut parts = r.trim_end_matches('/').rsplit('/');
    let id = parts.next()?;
    let t = parts.next()?;
    let type_ok = t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric());
    let id_ok = crate::config::valid_fhir_id(id);
    (type_ok && id_ok).then(|| format!("{t}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn has(t: &[SearchToken], p: &str, v: &str) -> bool {
        t.contains(&SearchToken::new(p, v))
    }

    #[test]
    fn task_tokens() {
        let task = json!({
            "resourceType": "Task", "id": "t1", "status": "requested",
            "identifier": [{"system": "urn:x", "value": "T-1"}, {"value": "loose"}],
            "owner": {"reference": "Organization/ecm-compass"},
            "requester": {"reference": "https://gw.example/fhir/Organization/mcp-a/_history/2"},
            "focus": {"reference": "ServiceRequest/sr1"},
            "for": {"reference": "Patient/p1"}
        });
        let t = tokens(&task);
        assert!(has(&t, "identifier", "urn:x|T-1"));
        assert!(has(&t, IDENTIFIER_VALUE, "T-1"));
        assert!(has(&t, "identifier", "|loose"));
        assert!(has(&t, IDENTIFIER_VALUE, "loose"));
        assert!(has(&t, "status", "requested"));
        assert!(has(&t, "owner", "Organization/ecm-compass"));
        assert!(has(&t, "requester", "Organization/mcp-a"));
        assert!(has(&t, "focus", "ServiceRequest/sr1"));
        assert!(has(&t, "patient", "Patient/p1"));
        assert_eq!(t.len(), 9);
    }

    #[test]
    fn owner_is_only_a_task_parameter_and_bad_input_yields_nothing() {
        let sr = json!({"resourceType": "ServiceRequest", "requester": {"reference": "Organization/x"}, "status": "active", "subject": {"reference": "Patient/p9"}});
        let t = tokens(&sr);
        assert_eq!(
            t,
            vec![
                SearchToken::new("patient", "Patient/p9"),
                SearchToken::new("status", "active")
            ]
        );
        let pat = json!({"resourceType": "Patient", "id": "p3"});
        assert_eq!(
            tokens(&pat),
            vec![SearchToken::new("patient", "Patient/p3")]
        );
        assert!(tokens(&json!([1, 2])).is_empty());
        assert!(tokens(&json!({"status": "x"})).is_empty());
        let long = "x".repeat(MAX_TOKEN_VALUE + 1);
        assert!(tokens(&json!({"resourceType": "Task", "status": long})).is_empty());
    }

    #[test]
    fn references_normalize() {
        assert_eq!(
            normalize_reference("Patient/p1").as_deref(),
            Some("Patient/p1")
        );
        assert_eq!(
            normalize_reference("http://h/fhir/Patient/p1/_history/3").as_deref(),
            Some("Patient/p1")
        );
        assert_eq!(normalize_reference("#contained"), None);
        assert_eq!(normalize_reference("p1"), None);
        assert_eq!(normalize_reference("patient/p1"), None);
    }
}
