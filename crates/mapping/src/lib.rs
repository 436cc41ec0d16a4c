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
//! that fast path; [`Engine::translate_adt_resources`] is the same and also
//! returns each resource's byte range (the gateway's worker parses only
//! those, one `Value` per resource); [`Engine::translate_adt`] parses its
//! bytes into a `serde_json::Value`.
//!
//! # Performance
//!
//! The hot path (`translate_adt_into`) avoids per-value work that used to
//! dominate:
//!
//! - **Field index.** `source::Hl7Source` splits every non-empty field the
//!   mappings can read (`source::FieldSet`, collected from every template
//!   path at load; other fields read as absent, unread segments are not
//!   split at all) into repetitions and components once, starting from
//!   `hl7v2`'s own field byte spans (`Segment::field_spans`), in one
//!   byte-class-table pass per field (offsets, not strings). Its three
//!   vectors (each over 1 KiB, past malloc's fast path) are kept per thread
//!   for the next message. A `$for_each` cursor over a repetition carries
//!   that repetition's index entry, so a relative path (`.5`) is one
//!   component read; an absolute one is a segment scan plus a few
//!   bounds-checked index operations. A unit test checks the index against
//!   `hl7v2`'s accessors for every golden input and odd delimiter sets.
//!   Values are unescaped only when their repetition contains the escape
//!   character and trimmed only when an end is not visible ASCII.
//! - **Pre-rendered JSON.** Object/array templates whose members are all
//!   literals become one `Node::Const` at load; string literals, object
//!   keys (`,"name":`, the comma included) and concept-map targets (each
//!   string and the whole Coding) are rendered at load. Keys of at most 32
//!   bytes are written as one fixed-size block cut back to length (no
//!   `memcpy` call per key). Literal, stamped (`resourceType`, `id`, `meta`)
//!   and `$ref` members are written in place by the object writer, without
//!   a recursive `emit` or an escape check (types and ids are validated).
//! - **No formatting machinery** on the hot path: references (`Type/id`)
//!   are built once per resource into one per-message byte buffer and
//!   borrowed (`$ref`, `fullUrl`, `request.url`), `meta.source` and
//!   `meta.security` are pre-rendered, dates are formatted by hand on the
//!   stack (`datetime::DtText`, no `str::parse`, no `String`); `$concat`,
//!   `$join`, `$lower` and path members are written straight into the
//!   output. Keys and resource ids are written by the same `write_body`
//!   (generic over a JSON or a plain-text sink) into one reused buffer: no
//!   `String` per key, concatenation or id. Conditions (`$if`, `$where`)
//!   are decided without building a `Val` (`Eval::holds`).
//! - **Deterministic ids**: `uuid5` is a one-shot SHA-1 of
//!   `namespace ‖ key` on the stack (`sha1.rs`, checked against the `uuid`
//!   crate), formatted into a `[u8; 36]`.
//! - **JSON strings** are checked 8 bytes at a time (SWAR, the tail as one
//!   overlapping word) and copied in one piece when nothing needs escaping;
//!   escaping is out of line.
//! - Pooled cursor vectors for `$for_each`/`$find`; small concept maps (all
//!   the shipped ones) probed linearly by codes packed into a `u64`, larger
//!   ones by FNV hash; a linear duplicate check instead of a `HashSet`.
//!
//! Measured on golden 001 (the `bench translate` input: 702-byte ADT^A01,
//! 6.5 KB Bundle) with `examples/profile_translate.rs` (parse + translate),
//! release build, instruction counts (repeatable on a shared machine):
//!
//! ```text
//! export CARGO_TARGET_DIR=/tmp/tgt-mapping
//! cargo build --release -p cwsgw-mapping --example profile_translate
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.2000 \
//!     $CARGO_TARGET_DIR/release/examples/profile_translate 2000 into
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.0 \
//!     $CARGO_TARGET_DIR/release/examples/profile_translate 0 into
//! # per message = (total(2000) - total(0)) / 2000; callgrind_annotate for the split
//! ```
//!
//! | per message                         | first   | then    | before  | now     |
//! |-------------------------------------|---------|---------|---------|---------|
//! | parse + `translate_adt_into`        | 327.0 k | 157.9 k | 133.8 k | 108.6 k |
//! | parse + `translate_adt` (`Value`)   | 737.9 k | 579.0 k | 558.9 k | 533.7 k |
//! | of which `hl7v2::parse` alone       | 16.4 k  | 16.4 k  | 15.0 k  | 13.5 k  |
//!
//! `cargo bench -p cwsgw-mapping --bench translate`, 3 interleaved runs
//! each of the 133.8 k and the 108.7 k build (machine at load ≈ 1 on 2
//! cores): 114 k / 115 k / 115 k → 143 k / 146 k / 143 k CPU msg/s (wall
//! 114 k → 130–146 k); noisy, the instruction counts are the reference.
//! The goal of ≤ 70 k instructions per message is **not reached**. Golden
//! 001 reads nearly every field it has; the same message with nine more
//! segments no mapping reads (PD1, ROL, 3 OBX, 2 AL1, IN1, GT1; 1.5 KB)
//! went 162.6 k → 122.9 k (134.9 k before only read fields were indexed).
//! What remains per message on golden 001 (self cost, `callgrind_annotate`):
//!
//! - template walking ≈ 34 k: `emit` (with the inlined object writer and
//!   key writes) ≈ 20 k, `write_body` ≈ 8.3 k, `emit_items` ≈ 3.6 k,
//!   `eval` ≈ 2.4 k — about 176 `emit` calls (62 objects, 174 members, 92 of
//!   them nested structures), 94 `write_body` calls;
//! - path lookups ≈ 17 k: `rep_value` ≈ 7.9 k (≈ 105 reads of ≈ 70
//!   instructions), `get` ≈ 4.3 k, absolute `value` ≈ 2.1 k, `each` ≈ 3 k;
//!   repeated reads of one component in `$first`/`$if` chains are still not
//!   memoised (too few repeats on this input to pay for a cache);
//! - the field index ≈ 10.7 k (≈ 580 bytes scanned at ≈ 8 instructions,
//!   ≈ 90 fields, ≈ 120 components, ≈ 40 repetitions);
//! - `hl7v2::parse` ≈ 11 k self (13.5 k with its allocations);
//! - SHA-1 ≈ 7 k (5 one-block ids; 1.4 k per compression, already unrolled
//!   — only SHA-NI, i.e. `unsafe`, would cut it) plus ≈ 1.2 k formatting;
//! - JSON string writing ≈ 4.5 k plus `memcpy` ≈ 3.6 k; allocation ≈ 5 k
//!   (≈ 27 per message: the `Message`'s own, the evaluator's vectors);
//!   Bundle assembly and phase 1 ≈ 4.2 k; dates ≈ 2.1 k; concept maps
//!   ≈ 1.3 k.
//!
//! Further large cuts need structural changes rather than local tuning: a
//! flat compiled plan for the templates (an op list with explicit
//! rollback marks instead of ~270 recursive calls) and one fused scan for
//! fields and components in `hl7v2` (today `parse` finds the fields, the
//! index rescans them for components). Tried and dropped (measured no
//! gain or a loss): an 8-bytes-at-a-time component scan (fields are too
//! short: +2 k), forcing the component read inline (+0.4 k), a
//! `Val::Dt` variant on the stack (a bigger `Val` everywhere: +0.2 k),
//! padded fixed-size copies of literals and concept-map strings (±0),
//! splitting `emit` into a thin dispatcher (±0).
//!
//! # Code map
//!
//! - `expr` — the template language: YAML → [`FUNCTIONS`]-only node tree.
//! - `path` — HL7 (`PID-3[2].4.1`, `.5`) and JSON (`child.name.given`) paths.
//! - `source` — the `Source` trait (cursors, `get`, `each`) and its HL7 v2
//!   and JSON implementations.
//! - `eval` — evaluation (`eval` for scalars/conditions, `emit` for JSON).
//! - `engine` — loading, the two phases, Bundle assembly, sensitivity labels.
//! - `pieces` — shared pieces (`common/*.yaml`, `{$use: NAME, $with: …}`):
//!   parameterised templates expanded where they are used, at load, so the
//!   plan is the one of the template written out.
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

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod csvrows;
mod datetime;
mod engine;
mod error;
mod eval;
mod expr;
mod icd10;
mod path;
mod pieces;
mod sha1;
mod source;
mod terminology;
pub mod text;
mod uri;

pub use datetime::{to_date, to_datetime};
pub use engine::{AdtContext, Engine, JsonContext, MappingInfo, Sensitivity};
pub use error::{MappingError, TranslateError};
pub use eval::{uuid5, ID_NAMESPACE};
pub use expr::{SourceKind, FUNCTIONS};
pub use pieces::{PieceInfo, PieceUse};

use serde_json::Value;

/// The Patient a resource belongs to: `Patient.id` for a Patient, else the
/// id in its `subject`, `patient`, `beneficiary`, `for` (Task) or (first
/// Patient) `target` reference, or (Appointment) a Patient participant.
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
    // `for` is the Task's patient (FHIR R4 Task.for).
    for field in ["subject", "patient", "beneficiary", "for"] {
        if let Some(id) = resource.get(field).and_then(id_of) {
            return Some(id);
        }
    }
    match resource.get("target") {
        Some(Value::Array(a)) => return a.iter().find_map(id_of),
        Some(v) => return id_of(v),
        None => {}
    }
    // An Appointment's patient is a participant (FHIR compartment: actor).
    resource
        .get("participant")
        .and_then(Value::as_array)?
        .iter()
        .find_map(|p| p.get("actor").and_then(id_of))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_appointments_patient_is_its_patient_participant() {
        let a = json!({"resourceType": "Appointment", "participant": [
            {"actor": {"reference": "Organization/ecm-1"}},
            {"actor": {"reference": "Patient/p9"}}]});
        assert_eq!(patient_reference(&a).as_deref(), Some("p9"));
        let none = json!({"resourceType": "Appointment", "participant": [
            {"actor": {"reference": "Organization/ecm-1"}}]});
        assert_eq!(patient_reference(&none), None);
    }

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
