//! Loading rules (closed function set, unknown keys rejected with file and
//! path) and the JSON source.

use std::path::{Path, PathBuf};

use cwsgw_mapping::{Engine, JsonContext, MappingError};
use serde_json::json;

fn terminology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings/terminology")
}

fn load(yaml: &str) -> Result<Engine, MappingError> {
    Engine::from_yaml(Path::new("test.yaml"), yaml, Some(&terminology()))
}

const HEADER: &str = "id: t\nversion: 1.0.0\nsource: hl7v2\ndescription: test\n";

fn with_body(body: &str) -> String {
    format!("{HEADER}resources:\n  - name: p\n    type: Patient\n    key: {{$v: PID-3.1}}\n    body:\n{body}")
}

#[test]
fn the_shipped_mappings_load_and_describe_themselves() {
    let e = Engine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings")).unwrap();
    let infos = e.mappings();
    let adt = infos.iter().find(|m| m.id == "adt-to-fhir").unwrap();
    assert_eq!(adt.source, "hl7v2");
    assert_eq!(adt.message_types, ["ADT"]);
    assert!(adt.file.ends_with("adt/adt-to-fhir.yaml"));
    assert!(!adt.description.is_empty());
    assert!(!adt.golden.is_empty());
}

#[test]
fn unknown_function_is_rejected_with_file_and_path() {
    let e = load(&with_body("      gender: {$script: \"rm -rf\"}\n")).unwrap_err();
    assert_eq!(e.file, Path::new("test.yaml"));
    assert_eq!(e.path, "resources[0].body.gender.$script");
    assert!(e.reason.contains("unknown function"), "{e}");
}

#[test]
fn unknown_keys_are_rejected() {
    let e = load(&format!("{HEADER}colour: blue\nresources: []\n")).unwrap_err();
    assert_eq!(e.path, "colour");
    let e = load(&format!(
        "{HEADER}resources:\n  - name: p\n    type: Patient\n    key: x\n    bodyy: {{}}\n"
    ))
    .unwrap_err();
    assert_eq!(e.path, "resources[0].bodyy");
    let e = load(&with_body(
        "      gender: {$map: v2-0001-gender, $value: {$v: PID-8}, $colour: red}\n",
    ))
    .unwrap_err();
    assert_eq!(e.path, "resources[0].body.gender.$colour");
}

#[test]
fn unknown_names_and_bad_paths_are_rejected() {
    let e = load(&with_body(
        "      gender: {$map: no-such-map, $value: {$v: PID-8}}\n",
    ))
    .unwrap_err();
    assert!(e.reason.contains("unknown concept map"), "{e}");
    let e = load(&with_body("      x: {$key: nope}\n")).unwrap_err();
    assert!(e.reason.contains("unknown key"), "{e}");
    let e = load(&with_body("      x: {$ref: nope}\n")).unwrap_err();
    assert!(e.reason.contains("unknown resource"), "{e}");
    let e = load(&with_body("      x: {$v: pid-3}\n")).unwrap_err();
    assert_eq!(e.path, "resources[0].body.x.$v");
    let e = load(&with_body("      x: {$for_each: PID-3, $do: {$v: .1}}\n")).unwrap_err();
    assert!(e.reason.contains("quoted"), "{e}");
    let e = load(&with_body("      id: {$v: PID-3.1}\n")).unwrap_err();
    assert!(e.reason.contains("set by the engine"), "{e}");
}

#[test]
fn message_text_in_a_uri_must_be_encoded() {
    for raw in [
        "      identifier: [{system: {$concat: [\"urn:x:\", {$v: PID-3.4.1}]}, value: {$v: PID-3.1}}]\n",
        "      identifier: [{system: {$v: PID-3.4.1}, value: {$v: PID-3.1}}]\n",
        "      identifier: [{system: {$first: [{$lower: {$v: PID-3.4.1}}, \"urn:y\"]}, value: x}]\n",
    ] {
        let e = load(&with_body(raw)).unwrap_err();
        assert!(e.reason.contains("$uri_segment"), "{raw}: {e}");
        assert!(e.path.ends_with(".system"), "{raw}: {}", e.path);
    }
    for ok in [
        "      identifier: [{system: {$concat: [\"urn:x:\", {$uri_segment: {$lower: {$v: PID-3.4.1}}}]}, value: x}]\n",
        "      identifier: [{system: {$urn_oid: {$v: PID-3.4.2}}, value: x}]\n",
        "      telecom: [{system: {$if: {$v: PID-13.4}, $then: email, $else: phone}, value: x}]\n",
    ] {
        load(&with_body(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn header_fields_are_checked() {
    let e =
        load("id: t\nversion: one\nsource: hl7v2\ndescription: d\nresources: []\n").unwrap_err();
    assert_eq!(e.path, "version");
    let e =
        load("id: t\nversion: 1.0.0\nsource: csv\ndescription: d\nresources: []\n").unwrap_err();
    assert_eq!(e.path, "source");
    let e = load("id: t\nversion: 1.0.0\nsource: hl7v2\nresources: []\n").unwrap_err();
    assert_eq!(e.path, "description");
}

#[test]
fn load_errors_name_the_file_on_disk() {
    let dir = std::env::temp_dir().join(format!("cwsgw-mapping-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("x")).unwrap();
    std::fs::write(
        dir.join("x/bad.yaml"),
        with_body("      gender: {$eval: x}\n"),
    )
    .unwrap();
    let e = Engine::load(&dir).unwrap_err();
    assert!(e.file.ends_with("x/bad.yaml"), "{e}");
    assert!(
        e.to_string()
            .contains("bad.yaml: resources[0].body.gender.$eval"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

const CASE_EVENT_MAPPING: &str = r#"
id: case-event-patient
version: 0.1.0
source: json
description: County case event child to Patient (sketch of the json source).
keys:
  patient:
    $first:
      - {$concat: ["patient|cin|", {$v: child.cin}]}
      - {$concat: ["patient|", {$v: county}, "|", {$v: child.clientId}]}
resources:
  - name: patient
    type: Patient
    required: true
    key: {$key: patient}
    body:
      identifier:
        - system: {$concat: [{$ctx: canonical_base}, /identifier/medi-cal-cin]}
          value!: {$v: child.cin}
      name:
        - family: {$v: child.name.family}
          given:
            $for_each: child.name.given
            $do: {$v: "."}
      gender: {$map: v2-0001-gender, $value: {$upper: {$v: child.sex}}, $part: code}
      birthDate: {$v: child.birthDate}
"#;

#[test]
fn json_source_maps_a_case_event() {
    let e = Engine::from_yaml(
        Path::new("case.yaml"),
        CASE_EVENT_MAPPING,
        Some(&terminology()),
    )
    .unwrap();
    let ev = json!({
        "eventId": "e1", "type": "case.opened", "county": "Fresno",
        "child": {"clientId": "C-1", "cin": "91234567A", "name": {"given": ["Sofia", "Marie"], "family": "Rivera"},
                  "birthDate": "2012-03-05", "sex": "f"}
    });
    let ctx = JsonContext {
        canonical_base: "https://gateway.example.org/fhir",
        source_org_id: "county-fresno",
        source_org_name: "Fresno County DSS",
        received_at: "2026-01-15T10:00:00Z",
    };
    let b = e.translate_json("case-event-patient", &ev, &ctx).unwrap();
    let p = &b["entry"][0]["resource"];
    // Same CIN → same Patient id as the ADT mapping produces.
    assert_eq!(
        p["id"],
        cwsgw_mapping::uuid5("patient|cin|91234567A").as_str()
    );
    assert_eq!(p["name"][0]["given"], json!(["Sofia", "Marie"]));
    assert_eq!(p["gender"], "female");
    assert_eq!(
        p["meta"]["source"],
        "https://gateway.example.org/fhir/mapping/case-event-patient|0.1.0"
    );
    // Without a CIN the county client id is the key; empty given names vanish.
    let ev2 = json!({"county": "Fresno", "child": {"clientId": "C-2", "name": {"given": [], "family": "Lee"}}});
    let b2 = e.translate_json("case-event-patient", &ev2, &ctx).unwrap();
    let p2 = &b2["entry"][0]["resource"];
    assert_eq!(
        p2["id"],
        cwsgw_mapping::uuid5("patient|Fresno|C-2").as_str()
    );
    assert!(p2.get("identifier").is_none());
    assert_eq!(p2["name"], json!([{"family": "Lee"}]));
    // A document with no usable id is refused with a stable code.
    let err = e
        .translate_json("case-event-patient", &json!({"child": {}}), &ctx)
        .unwrap_err();
    assert_eq!(err.code, "missing-id");
}

#[test]
fn patient_reference_reads_task_for() {
    let task =
        serde_json::json!({"resourceType": "Task", "id": "t", "for": {"reference": "Patient/p1"}});
    assert_eq!(
        cwsgw_mapping::patient_reference(&task).as_deref(),
        Some("p1")
    );
    let enc = serde_json::json!({"resourceType": "Encounter", "id": "e", "subject": {"reference": "Patient/p2"}});
    assert_eq!(
        cwsgw_mapping::patient_reference(&enc).as_deref(),
        Some("p2")
    );
}

/// Every string of a JSON document, with where it is.
fn strings<'a>(v: &'a serde_json::Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        serde_json::Value::String(s) => out.push((at, s)),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                strings(x, format!("{at}[{i}]"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                strings(x, format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn control_and_bidi_characters_are_stripped_from_hl7_values() {
    let e = Engine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings")).unwrap();
    // NUL, ESC and DEL as raw bytes, U+202E and U+2066 in UTF-8, C1 NEL, and
    // a control made by an escape (\X01\).
    let msg = "MSH|^~\\&|EPIC|STMARY|CWSGW|CWSGW|20260115083000||ADT^A01^ADT_A01|C\u{0}1|P|2.5.1|||||||UNICODE UTF-8\r\
EVN|A01|20260115083000\r\
PID|1||MRN1\u{1B}001^^^STMARY^MR||Ri\u{0}ve\u{202E}ra^Al\u{2066}ex\u{7F}^\\X01\\J||20100315|M|||1\u{85}23 Main St^^Fresno^CA^93721\r\
PV1|1|I|3EAST^301^A^STMARY|||||||MED||||7|||||V1\r";
    let parsed = hl7v2::parse(msg.as_bytes(), &hl7v2::ParseOptions::default());
    let m = parsed.message.expect("parses");
    let ctx = cwsgw_mapping::AdtContext {
        canonical_base: "https://gateway.example.org/fhir",
        source_org_id: "st-mary",
        source_org_name: "St Mary Hospital",
        received_at: "2026-01-15T10:00:00Z",
        sensitivity: &cwsgw_mapping::Sensitivity::default(),
    };
    let bundle = e.translate_adt(&m, &ctx).unwrap();
    let mut all = Vec::new();
    strings(&bundle, String::new(), &mut all);
    for (at, s) in &all {
        assert!(cwsgw_mapping::text::is_clean(s), "{at}: {s:?}");
    }
    let patient = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .unwrap();
    assert_eq!(patient["name"][0]["family"], "Rivera");
    assert_eq!(patient["name"][0]["given"], json!(["Alex", "J"]));
    assert_eq!(patient["address"][0]["line"][0], "123 Main St");
    assert_eq!(patient["identifier"][0]["value"], "MRN1001");
}
