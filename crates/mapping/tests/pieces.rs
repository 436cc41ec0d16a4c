//! Shared pieces (`common/*.yaml`, `$use`): binding, and the load errors
//! of a closed mechanism (unknown piece, parameter or key, cycles).

use std::path::{Path, PathBuf};

use cwsgw_mapping::{AdtContext, Engine, JsonContext, MappingError, Sensitivity};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped concept maps plus `files`, loaded as an embedded tree.
fn load(files: &[(&str, &str)]) -> Result<Engine, MappingError> {
    let term = repo().join("mappings/terminology");
    let mut owned: Vec<(PathBuf, String)> = std::fs::read_dir(&term)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let rel = Path::new("terminology").join(p.file_name().unwrap());
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    owned.extend(files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())));
    Engine::load_files(
        Path::new("embedded"),
        owned.iter().map(|(p, t)| (p.as_path(), t.as_str())),
    )
}

const LIB: &str = "\
pieces:
  telecom:
    description: an XTN as a ContactPoint
    source: hl7v2
    params:
      use: ContactPoint.use
    template:
      system: {$first: [{$map: v2-0202-telecom-system, $value: {$v: \".3\"}, $part: code}, phone]}
      value!: {$first: [{$v: \".4\"}, {$v: \".1\"}]}
      use: {$param: use}
  contact:
    description: a contact whose telecom is the telecom piece
    params:
      name: the name
      phones: where the phones are
    template:
      name: {text: {$param: name}}
      telecom: [{$for_each: {$param: phones}, $do: {$use: telecom, $with: {use: home}}}]
";

fn mapping(body: &str) -> String {
    format!(
        "id: t\nversion: 1.0.0\nsource: hl7v2\ndescription: test\nkeys:\n  home: {{$v: PID-3.4.1}}\nresources:\n  - name: p\n    type: Patient\n    key: {{$v: PID-3.1}}\n    body:\n{body}"
    )
}

const MSG: &[u8] = b"MSH|^~\\&|A|FAC|C|D|20260101||ADT^A01|1|P|2.5\rPID|1||ID1^^^HOSP||DOE^JANE||||||||555-1234^PRN^PH~^NET^Internet^jane@example.org|555-9999^WPN^PH\rNK1|1|DOE^JOHN|FTH||555-0000^PRN^PH";

fn translate(e: &Engine) -> Vec<u8> {
    let parsed = hl7v2::parse(MSG, &hl7v2::ParseOptions::default());
    let msg = parsed.message.unwrap();
    let sens = Sensitivity::default();
    let ctx = AdtContext {
        canonical_base: "https://x",
        source_org_id: "o",
        source_org_name: "O",
        received_at: "2026-01-01T00:00:00Z",
        sensitivity: &sens,
    };
    let mut out = Vec::new();
    e.translate_adt_into(&msg, &ctx, &mut out).unwrap();
    out
}

#[test]
fn a_use_translates_as_the_template_written_out() {
    let used = load(&[
        ("common/pieces.yaml", LIB),
        (
            "adt/t.yaml",
            &mapping(
                "      telecom:\n        - {$for_each: PID-13, $do: {$use: telecom, $with: {use: {$if: {$eq: [{$v: \".2\"}, NET]}, $then: home, $else: mobile}}}}\n        - {$for_each: PID-14, $do: {$use: telecom, $with: {use: work}}}\n      contact:\n        - $find: NK1\n          $do: {$use: contact, $with: {name: {$v: NK1-2.1}, phones: NK1-5}}\n",
            ),
        ),
    ])
    .unwrap();
    let written = load(&[(
        "adt/t.yaml",
        &mapping(
            "      telecom:\n        - $for_each: PID-13\n          $do:\n            system: {$first: [{$map: v2-0202-telecom-system, $value: {$v: \".3\"}, $part: code}, phone]}\n            value!: {$first: [{$v: \".4\"}, {$v: \".1\"}]}\n            use: {$if: {$eq: [{$v: \".2\"}, NET]}, $then: home, $else: mobile}\n        - $for_each: PID-14\n          $do:\n            system: {$first: [{$map: v2-0202-telecom-system, $value: {$v: \".3\"}, $part: code}, phone]}\n            value!: {$first: [{$v: \".4\"}, {$v: \".1\"}]}\n            use: work\n      contact:\n        - $find: NK1\n          $do:\n            name: {text: {$v: NK1-2.1}}\n            telecom:\n              - $for_each: NK1-5\n                $do:\n                  system: {$first: [{$map: v2-0202-telecom-system, $value: {$v: \".3\"}, $part: code}, phone]}\n                  value!: {$first: [{$v: \".4\"}, {$v: \".1\"}]}\n                  use: home\n",
        ),
    )])
    .unwrap();
    let out = translate(&used);
    assert_eq!(out, translate(&written));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let p = &v["entry"][0]["resource"];
    assert_eq!(
        p["telecom"],
        json!([
            {"system": "phone", "use": "mobile", "value": "555-1234"},
            {"system": "email", "use": "home", "value": "jane@example.org"},
            {"system": "phone", "use": "work", "value": "555-9999"}
        ])
    );
    assert_eq!(
        p["contact"],
        json!([{"name": {"text": "DOE"}, "telecom": [{"system": "phone", "use": "home", "value": "555-0000"}]}])
    );

    // Where each piece is used, the nested use under its outer piece.
    let pieces = used.pieces();
    let names: Vec<&str> = pieces.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["telecom", "contact"]);
    assert_eq!(pieces[0].file, Path::new("embedded/common/pieces.yaml"));
    assert_eq!(pieces[0].params, ["use"]);
    let at = |i: usize| {
        pieces[i]
            .used_by
            .iter()
            .map(|u| (u.mapping.as_str(), u.path.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        at(0),
        [
            ("t", "resources[0].body.telecom[0].$do"),
            ("t", "resources[0].body.telecom[1].$do"),
            (
                "t",
                "resources[0].body.contact[0].$do.$use(contact).telecom[0].$do"
            ),
        ]
    );
    assert_eq!(at(1), [("t", "resources[0].body.contact[0].$do")]);
    assert_eq!(pieces[0].used_by[0].file, Path::new("embedded/adt/t.yaml"));
}

#[test]
fn a_use_of_an_unknown_piece_names_the_mapping_and_the_path() {
    let e = load(&[
        ("common/pieces.yaml", LIB),
        (
            "adt/t.yaml",
            &mapping("      telecom: [{$for_each: PID-13, $do: {$use: phone}}]\n"),
        ),
    ])
    .unwrap_err();
    assert_eq!(e.file, Path::new("embedded/adt/t.yaml"));
    assert_eq!(e.path, "resources[0].body.telecom[0].$do.$use");
    assert!(e.reason.contains("unknown piece `phone`"), "{e}");
    assert!(e.reason.contains("contact, telecom"), "{e}");
    // Without a library (`from_yaml` loads none) every piece is unknown.
    let e = Engine::from_yaml(
        Path::new("t.yaml"),
        &mapping("      telecom: {$use: telecom, $with: {use: home}}\n"),
        None,
    )
    .unwrap_err();
    assert_eq!(e.path, "resources[0].body.telecom.$use");
    assert!(e.reason.contains("unknown piece"), "{e}");
}

#[test]
fn parameters_are_bound_exactly() {
    let lib = ("common/pieces.yaml", LIB);
    for (body, path, why) in [
        (
            "      telecom: [{$for_each: PID-13, $do: {$use: telecom}}]\n",
            "resources[0].body.telecom[0].$do.$use",
            "needs parameter `use`",
        ),
        (
            "      telecom: [{$for_each: PID-13, $do: {$use: telecom, $with: {}}}]\n",
            "resources[0].body.telecom[0].$do.$with",
            "needs parameter `use`",
        ),
        (
            "      telecom: [{$for_each: PID-13, $do: {$use: telecom, $with: {use: home, rank: 1}}}]\n",
            "resources[0].body.telecom[0].$do.$with.rank",
            "has no parameter `rank`",
        ),
        (
            "      telecom: [{$for_each: PID-13, $do: {$use: telecom, $with: home}}]\n",
            "resources[0].body.telecom[0].$do.$with",
            "expected a mapping",
        ),
        (
            "      telecom: [{$for_each: PID-13, $do: {$use: telecom, $wiht: {use: home}}}]\n",
            "resources[0].body.telecom[0].$do.$wiht",
            "unknown argument `$wiht`",
        ),
        (
            "      telecom: [{$for_each: PID-13, $do: {$use: [telecom]}}]\n",
            "resources[0].body.telecom[0].$do.$use",
            "expected a piece name",
        ),
        (
            "      telecom: {$param: use}\n",
            "resources[0].body.telecom.$param",
            "only for the template of a piece",
        ),
    ] {
        let e = load(&[lib, ("adt/t.yaml", &mapping(body))]).unwrap_err();
        assert_eq!(e.file, Path::new("embedded/adt/t.yaml"), "{body}");
        assert_eq!(e.path, path, "{body}: {e}");
        assert!(e.reason.contains(why), "{body}: {e}");
    }
}

#[test]
fn a_bound_value_is_checked_like_any_template() {
    // A binding may use the mapping's keys; a bad one is an error at the
    // place the piece puts it, naming the piece.
    load(&[
        ("common/pieces.yaml", LIB),
        (
            "adt/t.yaml",
            &mapping(
                "      contact: [{$use: contact, $with: {name: {$key: home}, phones: PID-13}}]\n",
            ),
        ),
    ])
    .unwrap();
    let e = load(&[
        ("common/pieces.yaml", LIB),
        (
            "adt/t.yaml",
            &mapping(
                "      contact: [{$use: contact, $with: {name: {$key: nope}, phones: PID-13}}]\n",
            ),
        ),
    ])
    .unwrap_err();
    assert_eq!(e.file, Path::new("embedded/adt/t.yaml"));
    assert_eq!(
        e.path,
        "resources[0].body.contact[0].$use(contact).name.text.$key"
    );
    assert!(e.reason.contains("unknown key `nope`"), "{e}");
    assert!(
        e.reason
            .contains("(in piece `contact` of embedded/common/pieces.yaml)"),
        "{e}"
    );
    // A path bound where the piece iterates is checked as a path.
    let e = load(&[
        ("common/pieces.yaml", LIB),
        (
            "adt/t.yaml",
            &mapping("      contact: [{$use: contact, $with: {name: x, phones: pid-13}}]\n"),
        ),
    ])
    .unwrap_err();
    assert_eq!(
        e.path,
        "resources[0].body.contact[0].$use(contact).telecom[0].$for_each"
    );
}

#[test]
fn a_piece_of_another_source_kind_is_rejected() {
    let json_mapping = "id: j\nversion: 1.0.0\nsource: json\ndescription: test\nresources:\n  - name: p\n    type: Patient\n    id: {$v: id}\n    body:\n      telecom: [{$for_each: phones, $do: {$use: telecom, $with: {use: home}}}]\n";
    let e = load(&[
        ("common/pieces.yaml", LIB),
        ("case_event/j.yaml", json_mapping),
    ])
    .unwrap_err();
    assert_eq!(e.path, "resources[0].body.telecom[0].$do.$use");
    assert!(e.reason.contains("reads hl7v2 input"), "{e}");
}

#[test]
fn a_piece_without_a_source_serves_json_mappings_too() {
    let lib = "pieces:\n  work_telecom:\n    description: work phone\n    params: {phone: the number}\n    template:\n      - $if: {$exists: {$param: phone}}\n        $then: {system: phone, value: {$param: phone}, use: work}\n";
    let m = "id: j\nversion: 1.0.0\nsource: json\ndescription: test\nresources:\n  - name: p\n    type: Patient\n    id: {$v: id}\n    body:\n      telecom: {$use: work_telecom, $with: {phone: {$v: worker.phone}}}\n";
    let e = load(&[("common/w.yaml", lib), ("case_event/j.yaml", m)]).unwrap();
    let ctx = JsonContext {
        canonical_base: "https://x",
        source_org_id: "o",
        source_org_name: "O",
        received_at: "2026-01-01T00:00:00Z",
    };
    let v = e
        .translate_json("j", &json!({"id": "c1", "worker": {"phone": "555"}}), &ctx)
        .unwrap();
    assert_eq!(
        v["entry"][0]["resource"]["telecom"],
        json!([{"system": "phone", "use": "work", "value": "555"}])
    );
    let v = e.translate_json("j", &json!({"id": "c1"}), &ctx).unwrap();
    assert!(v["entry"][0]["resource"].get("telecom").is_none());
}

#[test]
fn library_errors_name_the_library_file_and_path() {
    let m = mapping("      gender: {$v: PID-8}\n");
    for (lib, path, why) in [
        (
            "pieces:\n  a:\n    description: x\n    template: {x: {$use: b}}\n  b:\n    description: y\n    template: [{$use: a}]\n",
            "pieces.b.template[0].$use",
            "cycle of pieces: a -> b -> a",
        ),
        (
            "pieces:\n  a:\n    description: x\n    template: {x: {$use: nope}}\n",
            "pieces.a.template.x.$use",
            "unknown piece `nope`",
        ),
        (
            "pieces:\n  a:\n    description: x\n    owner: me\n    template: y\n",
            "pieces.a.owner",
            "unknown key `owner`",
        ),
        (
            "version: 2\npieces:\n  a: {description: x, template: y}\n",
            "version",
            "unknown key `version`",
        ),
        (
            "pieces:\n  a:\n    description: x\n    template: {x: {$ref: patient}}\n",
            "pieces.a.template.x.$ref",
            "pass the value as a parameter",
        ),
        (
            "pieces:\n  a:\n    description: x\n    params: {v: value}\n    template: {x: 1}\n",
            "pieces.a.params.v",
            "never used",
        ),
    ] {
        let e = load(&[("common/lib.yaml", lib), ("adt/t.yaml", &m)]).unwrap_err();
        assert_eq!(e.file, Path::new("embedded/common/lib.yaml"), "{lib}");
        assert_eq!(e.path, path, "{lib}: {e}");
        assert!(e.reason.contains(why), "{lib}: {e}");
    }
}

#[test]
fn libraries_load_from_disk_and_only_from_common() {
    let dir = std::env::temp_dir().join(format!("cwsgw-pieces-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("common/old")).unwrap();
    std::fs::create_dir_all(dir.join("adt")).unwrap();
    std::fs::create_dir_all(dir.join("terminology")).unwrap();
    std::fs::copy(
        repo().join("mappings/terminology/v2-0202-telecom-system.csv"),
        dir.join("terminology/v2-0202-telecom-system.csv"),
    )
    .unwrap();
    std::fs::write(dir.join("common/pieces.yaml"), LIB).unwrap();
    // Not a library (deeper than common/) and not a mapping.
    std::fs::write(dir.join("common/old/x.yaml"), "not: [a, library").unwrap();
    std::fs::write(
        dir.join("adt/t.yaml"),
        mapping("      telecom: [{$for_each: PID-13, $do: {$use: telecom, $with: {use: home}}}]\n"),
    )
    .unwrap();
    let e = Engine::load(&dir);
    std::fs::write(dir.join("common/pieces.yaml"), "pieces: [telecom]\n").unwrap();
    let bad = Engine::load(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let e = e.unwrap();
    assert_eq!(e.mappings().len(), 1);
    assert_eq!(e.pieces().len(), 2);
    assert!(e.pieces()[0].file.ends_with("common/pieces.yaml"));
    let bad = bad.unwrap_err();
    assert!(bad.file.ends_with("common/pieces.yaml"), "{bad}");
    assert_eq!(bad.path, "pieces");
}

/// Every shipped piece is used, and `mappings/README.md` names, for each,
/// exactly the mappings that use it (the review guide stays true).
#[test]
fn the_readme_says_where_each_shipped_piece_is_used() {
    let e = Engine::load(&repo().join("mappings")).unwrap();
    let readme = std::fs::read_to_string(repo().join("mappings/README.md")).unwrap();
    let ids: Vec<String> = e.mappings().into_iter().map(|m| m.id).collect();
    let pieces = e.pieces();
    assert!(pieces.len() >= 6, "{} pieces", pieces.len());
    for p in &pieces {
        assert!(!p.used_by.is_empty(), "piece `{}` is used nowhere", p.name);
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", p.name)))
            .unwrap_or_else(|| panic!("README has no row for piece `{}`", p.name));
        let used_in = row.rsplit('|').nth(1).unwrap_or_default();
        for id in &ids {
            let uses = p.used_by.iter().any(|u| &u.mapping == id);
            assert_eq!(
                used_in.contains(id.as_str()),
                uses,
                "README row of `{}`: {id} {}",
                p.name,
                if uses {
                    "missing"
                } else {
                    "named but not a user"
                }
            );
        }
    }
}
