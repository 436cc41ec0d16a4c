//! Declarative mapping engine: HL7 v2 (and JSON) inputs → FHIR R4 JSON.
//!
//! # Design
//!
//! Mappings are YAML files an analyst can review (`mappings/**/*.yaml`, see
//! `mappings/README.md`): an id, a semver version, a source kind, named
//! deterministic *keys*, and resource *templates* built from a closed set of
//! functions ([`FUNCTIONS`]). Concept maps are CSV files in
//! `mappings/terminology/`. At [`Engine::load`] everything is compiled into a
//! plan — paths parsed, concept maps hashed, names resolved — so translating
//! a message does no parsing of the mapping and no regex work.
//!
//! Translation has two phases. Phase 1 decides which resources exist
//! (`when`, `for_each`) and their ids (`uuid5(ID_NAMESPACE, key)`); phase 2
//! evaluates the bodies, which may reference any resource of phase 1
//! (`$ref`, `$refs`). The engine stamps `resourceType`, `id` and `meta`
//! (`meta.source` = `{canonical_base}/mapping/{id}|{version}`, plus
//! sensitivity labels) and wraps everything in a `transaction` Bundle of
//! `PUT` entries, in declaration order.
//!
//! Output is built structurally, never by text templating: the compiled
//! template tree is walked and written by a small JSON writer (every string
//! escaped, object keys pre-sorted at load so the bytes equal
//! `serde_json::to_vec` of the same `Value`). An element that turns out empty
//! is rolled back by truncating the buffer. [`Engine::translate_adt_into`] is
//! that fast path; [`Engine::translate_adt`] parses its bytes into a
//! `serde_json::Value`.
//!
//! # Code map
//!
//! - `expr` — the template language: YAML → [`FUNCTIONS`]-only node tree.
//! - `path` — HL7 (`PID-3[2].4.1`, `.5`) and JSON (`child.name.given`) paths.
//! - `source` — the `Source` trait (cursors, `get`, `each`) and its HL7 v2
//!   and JSON implementations.
//! - `eval` — evaluation (`eval` for scalars/conditions, `emit` for JSON).
//! - `engine` — loading, the two phases, Bundle assembly, sensitivity labels.
//! - `terminology` — CSV concept maps; `datetime` — DTM → FHIR date/dateTime.
//!
//! The input is read through the [`source`] abstraction (cursors + compiled
//! paths): HL7 v2 messages via the `hl7v2` crate, and JSON documents.
//!
//! # Invariants
//!
//! - **Output is a pure function of (mapping plan, input, context)**: no
//!   clocks, no randomness, sorted object keys — two runs are byte-identical.
//! - **No empty strings, arrays or objects are ever emitted.**
//! - **Translation never panics on input**; malformed values are omitted.
//! - **Errors carry ids, codes and locations, never PHI.**
//! - **The same visit yields the same Encounter id in every message** (ids
//!   are hashes of documented keys, not of message ids).

mod datetime;
mod engine;
mod error;
mod eval;
mod expr;
mod path;
mod source;
mod terminology;

pub use datetime::{to_date, to_datetime};
pub use engine::{AdtContext, Engine, JsonContext, MappingInfo, Sensitivity};
pub use error::{MappingError, TranslateError};
pub use eval::{uuid5, ID_NAMESPACE};
pub use expr::{SourceKind, FUNCTIONS};

use serde_json::Value;

/// The Patient a resource belongs to: `Patient.id` for a Patient, else the
/// id in its `subject`, `patient` or (first Patient) `target` reference.
pub fn patient_reference(resource: &Value) -> Option<String> {
    let id_of = |r: &Value| {
        r.get("reference")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("Patient/"))
            .filter(|id| !id.is_empty())
            .map(str::to_string)
    };
    if resource.get("resourceType").and_then(Value::as_str) == Some("Patient") {
        return resource
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    for field in ["subject", "patient", "beneficiary"] {
        if let Some(id) = resource.get(field).and_then(id_of) {
            return Some(id);
        }
    }
    match resource.get("target") {
        Some(Value::Array(a)) => a.iter().find_map(id_of),
        Some(v) => id_of(v),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patient_reference_finds_the_patient() {
        assert_eq!(
            patient_reference(&json!({"resourceType": "Patient", "id": "p1"})).as_deref(),
            Some("p1")
        );
        assert_eq!(
            patient_reference(
                &json!({"resourceType": "Encounter", "subject": {"reference": "Patient/p2"}})
            )
            .as_deref(),
            Some("p2")
        );
        assert_eq!(
            patient_reference(&json!({"resourceType": "Provenance", "target": [{"reference": "Encounter/e"}, {"reference": "Patient/p3"}]}))
                .as_deref(),
            Some("p3")
        );
        assert_eq!(
            patient_reference(&json!({"resourceType": "Organization", "id": "o"})),
            None
        );
    }
}
