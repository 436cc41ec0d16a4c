//! The outside corpus: ADT messages that HL7 libraries published by others
//! ship as fixtures (`tests/corpus/`, origins and licences in its README).
//! Nobody here wrote them, so they test what our own goldens cannot: real
//! free text (names with spaces, OIDs, odd separators and encodings).
//!
//! Every message is sent over real MLLP to a started gateway whose one extra
//! `adt_source` lists every MSH-4 found in the corpus (computed from the files
//! here), must get the positive ACKs its MSH-15/16 ask for (none when they
//! ask for none), and must be translated without failure. Each is also
//! translated through the worker's code path (`translate::Offline`) and the
//! Bundle checked with the invariants the goldens hold too (`invariants.rs`):
//! valid against the FHIR R4 JSON Schema, ids unique, every reference
//! resolving inside the Bundle, nothing empty, two runs byte-identical.
//! `CORPUS_DUMP=dir` writes the Bundles there for review by eye. The outputs
//! are not blessed as goldens.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;
use crate::invariants;

/// Every `*.hl7` under `tests/corpus/`, sorted.
fn corpus_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read tests/corpus") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "hl7") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join("tests/corpus"), &mut out);
    out.sort();
    out
}

fn corpus() -> &'static Vec<(String, Vec<u8>)> {
    static C: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    C.get_or_init(|| {
        let root = repo().join("tests/corpus");
        corpus_files()
            .into_iter()
            .map(|p| {
                let name = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
                (name, std::fs::read(&p).expect("read corpus file"))
            })
            .collect()
    })
}

fn header(bytes: &[u8]) -> hl7v2::Header {
    hl7v2::parse(bytes, &hl7v2::ParseOptions::default())
        .message
        .expect("corpus message parses")
        .header()
}

/// The test configuration plus one `adt_source` listing every MSH-4 of the
/// corpus (those the base configuration already lists stay where they are).
fn corpus_config(dir: &Path) -> cws_gateway::config::Config {
    let taken = ["STMARY", "VALLEYHIE"];
    let facilities: BTreeSet<String> = corpus()
        .iter()
        .map(|(_, b)| header(b).sending_facility)
        .filter(|f| !taken.contains(&f.as_str()))
        .collect();
    let list: Vec<String> = facilities
        .iter()
        .map(|f| serde_json::to_string(f).expect("string"))
        .collect();
    let extra = format!(
        "\n[[organizations]]\nid = \"outside-corpus\"\nkind = \"adt_source\"\n\
         name = \"Outside sample messages\"\nsending_facilities = [{}]\n",
        list.join(", ")
    );
    cws_gateway::config::Config::from_toml(&config_text(dir, &extra), "corpus")
        .expect("corpus config")
}

#[test]
fn the_corpus_has_enough_adt_messages_from_independent_sources() {
    let c = corpus();
    let sources: BTreeSet<&str> = c.iter().filter_map(|(n, _)| n.split('/').next()).collect();
    assert!(c.len() >= 60, "only {} corpus messages", c.len());
    assert!(sources.len() >= 3, "only {} sources", sources.len());
    for (name, bytes) in c {
        assert_eq!(header(bytes).message_code, "ADT", "{name}");
    }
    // Every file's origin is recorded.
    let readme = std::fs::read_to_string(repo().join("tests/corpus/README.md")).expect("README");
    for (name, _) in c {
        assert!(readme.contains(name.as_str()), "{name} not in README");
    }
}

#[test]
fn every_corpus_message_translates_to_a_valid_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-15T10:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let off = cws_gateway::translate::Offline::new(corpus_config(dir.path()), at)
        .expect("offline translator");
    let mut failures = Vec::new();
    for (name, bytes) in corpus() {
        let first = match off.translate(bytes) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!("{name}: not translated: {e}"));
                continue;
            }
        };
        if let Some(dir) = std::env::var_os("CORPUS_DUMP") {
            // For reviewing the outputs by eye (they are not goldens).
            let file = Path::new(&dir).join(name.replace('/', "__") + ".json");
            let text = serde_json::to_string_pretty(&first).unwrap_or_default();
            std::fs::create_dir_all(&dir).expect("CORPUS_DUMP dir");
            std::fs::write(file, text).expect("write CORPUS_DUMP file");
        }
        let mut problems = invariants::check_bundle(&first);
        let once = serde_json::to_vec(&first).unwrap_or_default();
        let again = off
            .translate(bytes)
            .map(|b| serde_json::to_vec(&b).unwrap_or_default())
            .unwrap_or_default();
        problems.extend(invariants::second_run(&once, &again));
        if !problems.is_empty() {
            failures.push(format!("{name}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus messages fail:\n{}",
        failures.len(),
        corpus().len(),
        failures.join("\n")
    );
}

/// Whether an enhanced-mode ACK type asks for an ACK of a successful message.
fn wants_ack(kind: &str) -> bool {
    !matches!(kind, "NE" | "ER")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_message_is_acked_over_mllp_and_translated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = cws_gateway::serve::start(corpus_config(dir.path()))
        .await
        .expect("gateway starts");
    let mut s = Conn::connect(gw.mllp_addr).await;
    for (i, (name, bytes)) in corpus().iter().enumerate() {
        let h = header(bytes);
        let enhanced = !h.accept_ack_type.is_empty() || !h.application_ack_type.is_empty();
        let expected: Vec<&str> = if !enhanced {
            vec!["AA"]
        } else {
            let mut v = Vec::new();
            if wants_ack(&h.accept_ack_type) {
                v.push("CA");
            }
            if wants_ack(&h.application_ack_type) {
                v.push("AA");
            }
            v
        };
        s.send(bytes).await;
        for code in &expected {
            let ack = s.recv().await;
            assert_eq!(field(&ack, "MSA", 1), *code, "{name}: {ack}");
            assert_eq!(field(&ack, "MSA", 2), h.control_id, "{name}: {ack}");
        }
        // A message of ours right after: its ACK must be the next frame,
        // so a message that asked for no ACK got none (bounded, no sleep).
        let probe = format!("PROBE{i}");
        let ack = s.roundtrip(adt("A08", &probe, "STMARY").as_bytes()).await;
        assert_eq!(
            field(&ack, "MSA", 2),
            probe,
            "{name}: unexpected reply {ack}"
        );
    }
    wait_translated(gw.store.as_ref()).await;
    let stats = settled_stats(gw.store.as_ref()).await;
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.total as usize, corpus().len() * 2, "{stats:?}");
    gw.stop().await;
}
