//! Golden tests and corpus-wide invariants for the ADT → FHIR mappings.
//!
//! Every `*.hl7` under `tests/golden/adt` (repository root) is translated with
//! a fixed context and compared with its `.expected.json`. A missing expected
//! file is created; `UPDATE_GOLDEN=1` re-blesses all of them. The blessed
//! outputs are the specification: review diffs by eye.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cwsgw_mapping as mapping;
use mapping::{AdtContext, Engine, Sensitivity};
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        Engine::load(&root().join("mappings"))
            .unwrap_or_else(|e| panic!("mappings do not load: {e}"))
    })
}

fn sensitivity() -> &'static Sensitivity {
    static S: OnceLock<Sensitivity> = OnceLock::new();
    S.get_or_init(|| Sensitivity {
        psychiatric_locations: vec!["PSYCH".into(), "4WEST".into()],
        sud_locations: vec!["DETOX".into()],
        psychiatric_services: vec!["PSY".into()],
        sud_services: vec!["SUD".into()],
    })
}

fn ctx() -> AdtContext<'static> {
    AdtContext {
        canonical_base: "https://gateway.example.org/fhir",
        source_org_id: "st-mary",
        source_org_name: "St Mary Hospital",
        received_at: "2026-01-15T10:00:00Z",
        sensitivity: sensitivity(),
    }
}

/// Translate raw bytes: the Bundle, or `{"error": …}` when there is none.
fn translate(bytes: &[u8]) -> Value {
    let parsed = hl7v2::parse(bytes, &hl7v2::ParseOptions::default());
    let Some(msg) = parsed.message else {
        return json!({"error": {"code": "unparseable", "diagnostics": parsed.diagnostics.len()}});
    };
    match engine().translate_adt(&msg, &ctx()) {
        Ok(b) => b,
        Err(e) => json!({"error": {"code": e.code, "location": e.location, "text": e.text}}),
    }
}

fn golden_inputs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "hl7") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("tests/golden/adt"), &mut out);
    out.sort();
    assert!(
        out.len() >= 30,
        "expected at least 30 golden inputs, found {}",
        out.len()
    );
    out
}

fn outputs() -> &'static Vec<(PathBuf, Value)> {
    static O: OnceLock<Vec<(PathBuf, Value)>> = OnceLock::new();
    O.get_or_init(|| {
        golden_inputs()
            .into_iter()
            .map(|p| (p.clone(), translate(&std::fs::read(&p).unwrap())))
            .collect()
    })
}

fn bundles() -> impl Iterator<Item = (&'static PathBuf, &'static Value)> {
    outputs()
        .iter()
        .filter(|(_, v)| v.get("error").is_none())
        .map(|(p, v)| (p, v))
}

fn resources(b: &Value) -> impl Iterator<Item = &Value> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
}

/// The first JSON path where two values differ.
fn first_diff(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(l), Some(r)) => first_diff(&format!("{path}.{k}"), l, r),
                (l, r) => Some(format!("{path}.{k}: expected {l:?}, got {r:?}")),
            })
        }
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_diff(&format!("{path}[{i}]"), l, r))
            .or_else(|| {
                (x.len() != y.len())
                    .then(|| format!("{path}: expected {} items, got {}", x.len(), y.len()))
            }),
        _ => (a != b).then(|| format!("{path}: expected {a}, got {b}")),
    }
}

#[test]
fn golden_outputs_match() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (input, actual) in outputs() {
        let expected_path = input.with_extension("expected.json");
        let pretty = serde_json::to_string_pretty(actual).unwrap() + "\n";
        if update || !expected_path.exists() {
            std::fs::write(&expected_path, &pretty).unwrap();
            continue;
        }
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
        if let Some(d) = first_diff("$", &expected, actual) {
            failures.push(format!("{}: {d}", input.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (UPDATE_GOLDEN=1 to re-bless):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_input_except_the_no_pid_case_yields_a_bundle() {
    for (p, v) in outputs() {
        let name = p.file_name().unwrap().to_string_lossy();
        if name.contains("no-pid") {
            assert_eq!(v["error"]["code"], "missing-pid", "{name}");
        } else {
            assert_eq!(v["resourceType"], "Bundle", "{name}: {v}");
            assert_eq!(v["type"], "transaction");
        }
    }
}

#[test]
fn resource_ids_are_unique_within_each_bundle() {
    for (p, b) in bundles() {
        let mut seen = HashSet::new();
        for r in resources(b) {
            let key = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            );
            assert!(seen.insert(key.clone()), "{}: duplicate {key}", p.display());
        }
        let ids: Vec<&str> = resources(b).map(|r| r["id"].as_str().unwrap()).collect();
        let distinct: HashSet<&&str> = ids.iter().collect();
        assert_eq!(
            ids.len(),
            distinct.len(),
            "{}: an id is reused across types",
            p.display()
        );
    }
}

fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
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

#[test]
fn every_reference_resolves_inside_the_bundle() {
    for (p, b) in bundles() {
        let urls: HashSet<String> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["url"].as_str().unwrap().to_string())
            .collect();
        for e in b["entry"].as_array().unwrap() {
            let r = &e["resource"];
            assert_eq!(
                e["fullUrl"].as_str().unwrap(),
                format!(
                    "https://gateway.example.org/fhir/{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                )
            );
            let mut refs = Vec::new();
            collect_refs(r, &mut refs);
            for rf in refs {
                assert!(
                    urls.contains(rf),
                    "{}: dangling reference {rf}",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn two_runs_are_byte_identical() {
    for (p, first) in outputs() {
        let again = translate(&std::fs::read(p).unwrap());
        assert_eq!(
            serde_json::to_string(first).unwrap(),
            serde_json::to_string(&again).unwrap(),
            "{}",
            p.display()
        );
    }
}

#[test]
fn the_streamed_bytes_equal_the_serialized_value() {
    for p in golden_inputs() {
        let bytes = std::fs::read(&p).unwrap();
        let Some(msg) = hl7v2::parse(&bytes, &hl7v2::ParseOptions::default()).message else {
            continue;
        };
        let mut out = b"prefix".to_vec();
        match engine().translate_adt_into(&msg, &ctx(), &mut out) {
            Ok(()) => {
                let v = engine().translate_adt(&msg, &ctx()).unwrap();
                assert_eq!(
                    out[6..],
                    serde_json::to_vec(&v).unwrap()[..],
                    "{}",
                    p.display()
                );
            }
            Err(_) => assert_eq!(
                out,
                b"prefix",
                "{}: output left untouched on error",
                p.display()
            ),
        }
    }
}

#[test]
fn resource_spans_are_the_bundle_entries() {
    for p in golden_inputs() {
        let bytes = std::fs::read(&p).unwrap();
        let Some(msg) = hl7v2::parse(&bytes, &hl7v2::ParseOptions::default()).message else {
            continue;
        };
        let mut out = b"prefix".to_vec();
        match engine().translate_adt_resources(&msg, &ctx(), &mut out) {
            Ok(spans) => {
                let v = engine().translate_adt(&msg, &ctx()).unwrap();
                assert_eq!(out[6..], serde_json::to_vec(&v).unwrap()[..]);
                let entries = v["entry"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                assert_eq!(spans.len(), entries.len(), "{}", p.display());
                for (span, e) in spans.iter().zip(entries) {
                    assert_eq!(
                        out[span.clone()],
                        serde_json::to_vec(&e["resource"]).unwrap()[..],
                        "{}",
                        p.display()
                    );
                }
            }
            Err(_) => assert_eq!(out, b"prefix", "{}", p.display()),
        }
    }
}

fn assert_no_empties(path: &str, v: &Value) {
    match v {
        Value::String(s) => assert!(!s.trim().is_empty(), "empty string at {path}"),
        Value::Array(a) => {
            assert!(!a.is_empty(), "empty array at {path}");
            a.iter()
                .enumerate()
                .for_each(|(i, x)| assert_no_empties(&format!("{path}[{i}]"), x));
        }
        Value::Object(m) => {
            assert!(!m.is_empty(), "empty object at {path}");
            m.iter()
                .for_each(|(k, x)| assert_no_empties(&format!("{path}.{k}"), x));
        }
        Value::Null => panic!("null at {path}"),
        _ => {}
    }
}

#[test]
fn no_empty_strings_arrays_objects_or_nulls() {
    for (p, b) in bundles() {
        assert_no_empties(&p.display().to_string(), b);
    }
}

#[test]
fn every_resource_is_stamped_with_the_mapping_version() {
    let info = engine()
        .mappings()
        .into_iter()
        .find(|m| m.id == "adt-to-fhir")
        .unwrap();
    let want = format!(
        "https://gateway.example.org/fhir/mapping/adt-to-fhir|{}",
        info.version
    );
    for (_, b) in bundles() {
        for r in resources(b) {
            assert_eq!(r["meta"]["source"], want.as_str());
        }
    }
}

fn schema_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let text = std::fs::read_to_string(root().join("profiles/fhir.schema.json")).unwrap();
        let schema: Value = serde_json::from_str(&text).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    })
}

#[test]
fn every_bundle_validates_against_the_fhir_r4_schema() {
    let v = schema_validator();
    // The validator really checks: an unknown element and a bad code fail.
    let mut broken = find("001-a01").clone();
    broken["entry"][1]["resource"]["colour"] = json!("blue");
    assert!(!v.is_valid(&broken), "schema accepted an unknown element");
    let mut broken = find("001-a01").clone();
    broken["entry"][1]["resource"]["gender"] = json!("F");
    assert!(!v.is_valid(&broken), "schema accepted a bad gender code");
    let mut failures = Vec::new();
    for (p, b) in bundles() {
        let errs: Vec<String> = v
            .iter_errors(b)
            .take(10)
            .map(|e| format!("  {} at {}", e, e.instance_path()))
            .collect();
        if !errs.is_empty() {
            failures.push(format!("{}:\n{}", p.display(), errs.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "schema violations:\n{}",
        failures.join("\n")
    );
}

fn find(name: &str) -> &'static Value {
    outputs()
        .iter()
        .find(|(p, _)| p.to_string_lossy().contains(name))
        .map(|(_, v)| v)
        .unwrap()
}

fn of_type<'a>(b: &'a Value, t: &str) -> Vec<&'a Value> {
    resources(b).filter(|r| r["resourceType"] == t).collect()
}

#[test]
fn admit_and_discharge_of_the_same_visit_share_the_encounter_and_patient() {
    let a01 = find("001-a01");
    let a03 = find("002-a03");
    let e1 = of_type(a01, "Encounter");
    let e3 = of_type(a03, "Encounter");
    assert_eq!(e1[0]["id"], e3[0]["id"]);
    assert_eq!(e1[0]["status"], "in-progress");
    assert_eq!(e3[0]["status"], "finished");
    assert_eq!(
        of_type(a01, "Patient")[0]["id"],
        of_type(a03, "Patient")[0]["id"]
    );
    // The CIN decides the Patient id: uuid5 over "patient|cin|{CIN}".
    assert_eq!(
        of_type(a01, "Patient")[0]["id"],
        mapping::uuid5("patient|cin|91234567A").as_str()
    );
    // Different messages → different MessageHeader and Provenance.
    assert_ne!(
        of_type(a01, "Provenance")[0]["id"],
        of_type(a03, "Provenance")[0]["id"]
    );
}

#[test]
fn entries_come_in_the_documented_order() {
    let order = [
        "MessageHeader",
        "Patient",
        "Encounter",
        "Condition",
        "Provenance",
        "Organization",
    ];
    for (p, b) in bundles() {
        let ranks: Vec<usize> = resources(b)
            .map(|r| order.iter().position(|t| r["resourceType"] == *t).unwrap())
            .collect();
        assert!(
            ranks.windows(2).all(|w| w[0] <= w[1]),
            "{}: {ranks:?}",
            p.display()
        );
    }
}

fn security_codes(r: &Value) -> Vec<&str> {
    r["meta"]["security"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["code"].as_str().unwrap())
        .collect()
}

#[test]
fn sensitivity_labels_follow_diagnoses_locations_and_services() {
    let sud = find("025-dg1-f10");
    for t in ["Encounter", "Condition", "MessageHeader", "Provenance"] {
        for r in of_type(sud, t) {
            assert_eq!(security_codes(r), ["ETH", "R"], "{t}");
        }
    }
    assert!(security_codes(of_type(sud, "Patient")[0]).is_empty());
    let psy = find("026-dg1-f32");
    assert_eq!(security_codes(of_type(psy, "Encounter")[0]), ["PSY", "R"]);
    assert_eq!(security_codes(of_type(psy, "Provenance")[0]), ["PSY", "R"]);
    // A psychiatric unit labels the Encounter and its Conditions, not the message.
    let loc = find("027-psychiatric-location");
    assert_eq!(security_codes(of_type(loc, "Encounter")[0]), ["PSY", "R"]);
    assert_eq!(security_codes(of_type(loc, "Condition")[0]), ["PSY", "R"]);
    assert!(security_codes(of_type(loc, "MessageHeader")[0]).is_empty());
    let svc = find("030-sud-service");
    assert_eq!(security_codes(of_type(svc, "Encounter")[0]), ["ETH", "R"]);
    let plain = find("001-a01");
    assert!(resources(plain).all(|r| security_codes(r).is_empty()));
}

#[test]
fn merge_links_both_patients() {
    let b = find("015-a40-merge");
    let pats = of_type(b, "Patient");
    assert_eq!(pats.len(), 2);
    assert_eq!(pats[0]["link"][0]["type"], "replaces");
    assert_eq!(
        pats[0]["link"][0]["other"]["reference"],
        format!("Patient/{}", pats[1]["id"].as_str().unwrap())
    );
    assert_eq!(pats[1]["active"], false);
    assert_eq!(pats[1]["link"][0]["type"], "replaced-by");
}

#[test]
fn no_encounter_without_a_meaningful_pv1() {
    for name in ["013-a28", "014-a31", "021-a01-missing-pv1"] {
        assert!(of_type(find(name), "Encounter").is_empty(), "{name}");
    }
}

#[test]
fn character_sets_and_escapes_are_decoded() {
    let latin = find("024-latin1");
    assert_eq!(of_type(latin, "Patient")[0]["name"][0]["family"], "Muñoz");
    let bom = find("022-utf8-bom");
    assert_eq!(of_type(bom, "Patient")[0]["name"][0]["family"], "Zoë");
    let esc = find("018-escapes");
    let name = &of_type(esc, "Patient")[0]["name"][0];
    assert_eq!(name["family"], "O^Brien&Co");
    assert_eq!(name["given"][0], "Mary|Kate");
}

#[test]
fn transfer_keeps_the_prior_location_and_cancel_transfer_reverts() {
    let a02 = &of_type(find("003-a02"), "Encounter")[0]["location"];
    assert_eq!(a02[0]["status"], "active");
    assert!(a02[0]["location"]["display"]
        .as_str()
        .unwrap()
        .starts_with("4EAST"));
    assert_eq!(a02[1]["status"], "completed");
    assert!(a02[1]["location"]["display"]
        .as_str()
        .unwrap()
        .starts_with("3NORTH"));
    let a12 = &of_type(find("011-a12"), "Encounter")[0]["location"];
    assert_eq!(a12.as_array().unwrap().len(), 1);
    assert!(a12[0]["location"]["display"]
        .as_str()
        .unwrap()
        .starts_with("3NORTH"));
}

#[test]
fn duplicate_diagnosis_codes_make_one_condition() {
    let b = find("031-duplicate-dg1");
    assert_eq!(of_type(b, "Condition").len(), 2);
    assert_eq!(
        of_type(b, "Encounter")[0]["diagnosis"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn every_golden_directory_listed_by_a_mapping_exists() {
    for m in engine().mappings() {
        for g in &m.golden {
            assert!(root().join(g).exists(), "{}: golden `{g}` missing", m.id);
        }
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn corpus() -> &'static Vec<Vec<u8>> {
        static C: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        C.get_or_init(|| {
            golden_inputs()
                .iter()
                .map(|p| std::fs::read(p).unwrap())
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]
        #[test]
        fn mutated_inputs_never_panic(
            pick in 0usize..1000,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            inserts in proptest::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec![b'|', b'^', b'~', b'\\', b'&', b'\r', b'\n'])), 0..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let c = corpus();
            let mut bytes = c[pick % c.len()].clone();
            for (i, b) in flips {
                let n = bytes.len();
                if n > 0 { bytes[i.index(n)] = b; }
            }
            for (i, b) in inserts {
                let n = bytes.len();
                bytes.insert(i.index(n + 1), b);
            }
            if truncate {
                let n = bytes.len();
                bytes.truncate(cut.index(n + 1));
            }
            let out = translate(&bytes);
            // Whatever comes out is still free of empties when it is a Bundle.
            if out.get("error").is_none() {
                assert_no_empties("$", &out);
            }
        }
    }
}
