//! `Engine::load_files` (an in-memory mappings tree, as a binary embeds it)
//! loads exactly what `Engine::load` loads from the directory.

use std::path::{Path, PathBuf};

use cwsgw_mapping::{AdtContext, Engine, Sensitivity};

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), text));
        }
    }
}

#[test]
fn in_memory_files_load_like_the_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings");
    let from_dir = Engine::load(&root).unwrap();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    let from_mem = Engine::load_files(
        Path::new("embedded"),
        files.iter().map(|(p, t)| (p.as_path(), t.as_str())),
    )
    .unwrap();
    let ids = |e: &Engine| {
        e.mappings()
            .into_iter()
            .map(|m| (m.id, m.version))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&from_dir), ids(&from_mem));
    // The shared pieces (common/) load from both, with the same uses.
    let pieces = |e: &Engine| {
        e.pieces()
            .into_iter()
            .map(|p| {
                let uses: Vec<_> = p.used_by.into_iter().map(|u| (u.mapping, u.path)).collect();
                (p.name, p.params, uses)
            })
            .collect::<Vec<_>>()
    };
    assert!(!pieces(&from_dir).is_empty());
    assert_eq!(pieces(&from_dir), pieces(&from_mem));
    assert!(from_mem
        .pieces()
        .iter()
        .all(|p| p.file.starts_with("embedded/common")));
    assert!(from_mem
        .mappings()
        .iter()
        .all(|m| m.file.starts_with("embedded")));

    let raw = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/golden/adt/adt-to-fhir/001-a01-admit-v251.hl7"),
    )
    .unwrap();
    let msg = hl7v2::parse(&raw, &hl7v2::ParseOptions::default())
        .message
        .unwrap();
    let sensitivity = Sensitivity::default();
    let ctx = AdtContext {
        canonical_base: "https://gateway.example.org/fhir",
        source_org_id: "st-mary",
        source_org_name: "St Mary Hospital",
        received_at: "2026-01-15T10:00:00Z",
        sensitivity: &sensitivity,
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    from_dir.translate_adt_into(&msg, &ctx, &mut a).unwrap();
    from_mem.translate_adt_into(&msg, &ctx, &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn in_memory_errors_name_the_file() {
    let err = Engine::load_files(
        Path::new("embedded"),
        [(Path::new("adt/broken.yaml"), "id: [unclosed")],
    )
    .unwrap_err();
    assert_eq!(err.file, Path::new("embedded/adt/broken.yaml"));
    // Data folders are not mappings; files deeper in terminology/ are ignored.
    let e = Engine::load_files(
        Path::new("embedded"),
        [
            (Path::new("calendar/x.yaml"), "not: a mapping"),
            (Path::new("terminology/deep/x.csv"), "garbage"),
        ],
    )
    .unwrap();
    assert!(e.mappings().is_empty());
}
