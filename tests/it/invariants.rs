//! The invariants every FHIR output of the gateway must hold, whatever its
//! source: valid against the FHIR R4 JSON Schema (`profiles/fhir.schema.json`),
//! resource ids unique within a Bundle, every reference resolving (inside
//! the Bundle, or to a resource the caller says exists), no empty string,
//! array or object and no null anywhere. The fourth — the same input gives
//! byte-identical output on a second run — is the caller's to check (it needs
//! two runs); [`second_run`] words its failure.
//!
//! Used by the outside-corpus test (`corpus.rs`) and the golden harness
//! (`golden.rs`), and by tests that only want the schema check
//! ([`schema_errors`]).

use std::collections::HashSet;
use std::sync::OnceLock;

use serde_json::Value;

use crate::common::repo;

/// The FHIR R4 JSON Schema, compiled once.
pub fn schema() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let text =
            std::fs::read_to_string(repo().join("profiles/fhir.schema.json")).expect("schema");
        let schema: Value = serde_json::from_str(&text).expect("schema JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    })
}

/// The first `max` schema errors of one resource, each naming the element.
pub fn schema_errors(r: &Value, max: usize) -> Vec<String> {
    schema()
        .iter_errors(r)
        .take(max)
        .map(|err| {
            let mut text = err.to_string();
            text.truncate(300);
            format!(
                "schema: {} {}: {text}",
                r["resourceType"].as_str().unwrap_or("?"),
                err.instance_path()
            )
        })
        .collect()
}

/// Every `reference` string under `v`.
pub fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("reference", Value::String(s)) => out.push(s),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The local references (`#id`) a resource's `contained` resources answer to.
fn contained_refs(r: &Value) -> HashSet<String> {
    r["contained"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["id"].as_str().map(|id| format!("#{id}")))
        .collect()
}

/// Where `v` holds an empty string, array or object, or a null.
pub fn empties(path: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.trim().is_empty() => out.push(format!("empty string at {path}")),
        Value::Array(a) if a.is_empty() => out.push(format!("empty array at {path}")),
        Value::Object(m) if m.is_empty() => out.push(format!("empty object at {path}")),
        Value::Null => out.push(format!("null at {path}")),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| empties(&format!("{path}[{i}]"), x, out)),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| empties(&format!("{path}.{k}"), x, out)),
        _ => {}
    }
}

/// The invariants for one output: a Bundle (its entries checked one by one
/// too, so the errors name the element) or a single resource. A reference
/// resolves when a Bundle entry answers to it (its `request.url`, its
/// `fullUrl`, or `Type/id`), a contained resource of the resource holding
/// it answers to it (`#id`), or `exists(reference)` says so. The problems
/// found; none is a pass.
pub fn check(out: &Value, exists: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut problems = Vec::new();
    empties("$", out, &mut problems);
    if !schema().is_valid(out) {
        problems.push(format!(
            "the {} is not valid against the FHIR R4 schema",
            out["resourceType"].as_str().unwrap_or("output")
        ));
    }
    if out["resourceType"] != "Bundle" {
        problems.extend(schema_errors(out, 3));
        let mut refs = Vec::new();
        collect_refs(out, &mut refs);
        let local = contained_refs(out);
        for rf in refs {
            if !local.contains(rf) && !exists(rf) {
                problems.push(format!("dangling reference {rf}"));
            }
        }
        return problems;
    }
    let entries = out["entry"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if entries.is_empty() {
        problems.push("no entries".into());
    }
    let mut targets: HashSet<String> = HashSet::new();
    for e in entries {
        let r = &e["resource"];
        problems.extend(schema_errors(r, 3));
        for k in [&e["request"]["url"], &e["fullUrl"]] {
            if let Some(s) = k.as_str() {
                targets.insert(s.to_string());
            }
        }
        if let (Some(t), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) {
            targets.insert(format!("{t}/{id}"));
        }
    }
    let mut ids = HashSet::new();
    for e in entries {
        let r = &e["resource"];
        let id = r["id"].as_str().unwrap_or_default();
        if !ids.insert(id) {
            problems.push(format!("duplicate id {id}"));
        }
        let mut refs = Vec::new();
        collect_refs(r, &mut refs);
        let local = contained_refs(r);
        for rf in refs {
            if !targets.contains(rf) && !local.contains(rf) && !exists(rf) {
                problems.push(format!("dangling reference {rf}"));
            }
        }
    }
    problems
}

/// [`check`] for a self-contained Bundle: every reference inside it.
pub fn check_bundle(b: &Value) -> Vec<String> {
    check(b, &|_| false)
}

/// The problem to report when two runs of the same input differ, or none.
pub fn second_run(first: &[u8], second: &[u8]) -> Option<String> {
    (first != second).then(|| {
        let at = first
            .iter()
            .zip(second)
            .position(|(a, b)| a != b)
            .unwrap_or(first.len().min(second.len()));
        format!("two runs differ (first at byte {at})")
    })
}
