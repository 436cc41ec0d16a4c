//! The golden harness: every input under `tests/golden/<source>/…`, for
//! every source, goes through a started gateway's real interface, and what
//! the gateway produced is compared with the input's expected file and held
//! to the shared invariants (`invariants.rs`). `tests/golden/README.md` says
//! what each directory holds, the input formats, and how to bless.
//!
//! Sources and their interfaces:
//! - `adt/**/*.hl7` — sent over MLLP; the output is every resource the
//!   gateway then stored (a `collection` Bundle, sorted by type and id), or,
//!   when the translation failed, an OperationOutcome naming the journal's
//!   error.
//! - `case_event/<type>/*.json` — `POST /cws/events` by the event county's
//!   client; the output is the answer (the stored resources).
//! - `referral/*.json` — `{"given": [...], "as": org, "body": form}`:
//!   `POST /ecm/referrals` by `as`; the output is the answer.
//! - `fhir_write/*.json` — `{"given": [...], "as": org, "type": T, "body":
//!   resource}`: `POST /fhir/T` by `as`; the output is the answer.
//! - `task_update/*.json` — `{"given": [...], "as": org, "task": {...}}`:
//!   `PUT /fhir/Task/{id}` by `as` of the Task the last given step produced,
//!   with the members of `task` replacing its own; the output is the answer.
//!
//! `given` lists other golden inputs (paths under `tests/golden`) run first
//! on the same gateway, in order (their own `given` first); they must
//! succeed, and their outputs are checked by their own goldens.
//!
//! Each input runs on a fresh gateway (empty SQLite store), twice: the two
//! outputs must be byte-identical. Values that are the time of the run are
//! written `<now>` (an instant within the run) and `<today>` (its date), so
//! the expected files do not depend on when the test ran.
//!
//! `CWSGW_BLESS=1` writes every expected file from the gateway's output (a
//! missing one is an error otherwise); review the diff before committing.
//!
//! The offline case-event translation (the binary's `translate --kind
//! case-event`) is checked here too, against `<name>.expected.json` as
//! before.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::common::{self, repo, sha, Conn};
use crate::invariants;

/// The sources the harness runs, each a directory of `tests/golden`.
const SOURCES: [&str; 5] = ["adt", "case_event", "fhir_write", "referral", "task_update"];

/// Organizations the goldens call as (`as`), each given a client whose
/// token is `golden-<org>`.
const CALLERS: [&str; 8] = [
    "county-fresno",
    "county-kern",
    "mcp-a",
    "mcp-b",
    "mcp-k",
    "ecm-compass",
    "ecm-bright",
    "ecm-bee",
];

fn root() -> PathBuf {
    repo().join("tests/golden")
}

fn token(org: &str) -> String {
    format!("golden-{org}")
}

fn bless() -> bool {
    std::env::var_os("CWSGW_BLESS").is_some_and(|v| v == "1")
}

/// Every input of a source, as paths relative to `tests/golden`, sorted.
fn inputs(source: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join(source), &mut files);
    let mut out: Vec<String> = files
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(root())
                .ok()?
                .to_string_lossy()
                .replace('\\', "/");
            let input = match source {
                "adt" => rel.ends_with(".hl7"),
                _ => {
                    rel.ends_with(".json")
                        && !rel.ends_with(".expected.json")
                        && rel != CASE_EVENT_GIVEN
                }
            };
            input.then_some(rel)
        })
        .collect();
    out.sort();
    out
}

/// `X.hl7` / `X.json` → `X.gateway.expected.json`.
fn expected_file(rel: &str) -> PathBuf {
    let stem = rel
        .strip_suffix(".hl7")
        .or_else(|| rel.strip_suffix(".json"))
        .unwrap_or(rel);
    root().join(format!("{stem}.gateway.expected.json"))
}

fn read_json(rel: &str) -> Value {
    let p = root().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `case_event/given.json`: for an event input, the inputs run before it.
fn case_event_given() -> Value {
    read_json(CASE_EVENT_GIVEN)
}

const CASE_EVENT_GIVEN: &str = "case_event/given.json";

/// Every MSH-4 of the ADT goldens that the shared organizations do not list.
fn other_facilities() -> BTreeSet<String> {
    let listed = ["STMARY", "VALLEYHIE"];
    inputs("adt")
        .iter()
        .filter_map(|rel| {
            let bytes = std::fs::read(root().join(rel)).ok()?;
            let msg = hl7v2::parse(&bytes, &hl7v2::ParseOptions::default()).message?;
            Some(msg.header().sending_facility)
        })
        .filter(|f| !f.is_empty() && !listed.contains(&f.as_str()))
        .collect()
}

/// The harness's configuration: the shared one, a client for each caller,
/// and one more ADT source for the goldens' other sending facilities.
fn config(dir: &Path) -> cws_gateway::config::Config {
    let mut extra = String::new();
    for org in CALLERS {
        extra.push_str(&format!(
            "\n[[clients]]\nid = \"golden-{org}\"\norganization = \"{org}\"\ntoken_sha256 = \"{}\"\n",
            sha(&token(org))
        ));
    }
    let others: Vec<String> = other_facilities()
        .iter()
        .map(|f| serde_json::to_string(f).expect("string"))
        .collect();
    if !others.is_empty() {
        extra.push_str(&format!(
            "\n[[organizations]]\nid = \"golden-adt-others\"\nkind = \"adt_source\"\n\
             name = \"Other golden senders\"\nsending_facilities = [{}]\n",
            others.join(", ")
        ));
    }
    cws_gateway::config::Config::from_toml(&common::config_text(dir, &extra), "golden")
        .expect("golden harness config")
}

/// Every resource type the FHIR schema names (what a store scan asks for).
fn resource_types() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("profiles/fhir.schema.json")).expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    schema["discriminator"]["mapping"]
        .as_object()
        .expect("the schema's resource types")
        .keys()
        .cloned()
        .collect()
}

/// One run: a fresh gateway and what the steps so far left behind.
struct Run {
    running: cws_gateway::serve::Running,
    http: reqwest::Client,
    /// The Task the last step produced (what a `task_update` changes).
    task: Option<Value>,
    _dir: tempfile::TempDir,
}

type Step<'a> = Pin<Box<dyn Future<Output = Result<Value, String>> + 'a>>;

impl Run {
    async fn start() -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = cws_gateway::serve::start(config(dir.path()))
            .await
            .expect("gateway starts");
        Run {
            running,
            http: reqwest::Client::new(),
            task: None,
            _dir: dir,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        org: &str,
        body: &Value,
    ) -> Result<(u16, Value), String> {
        let resp = self
            .http
            .request(method, format!("http://{}{path}", self.running.http_addr))
            .bearer_auth(token(org))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| format!("{path}: {e}"))?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    /// Run one golden input (its `given` first); its output.
    fn input<'a>(&'a mut self, rel: &'a str) -> Step<'a> {
        Box::pin(async move {
            let source = rel.split('/').next().unwrap_or_default();
            if source == "adt" {
                return self.adt(rel).await;
            }
            let doc = read_json(rel);
            let given = if source == "case_event" {
                // An event document is the body as a county sends it; what
                // it needs first is in `case_event/given.json`.
                case_event_given()[rel].clone()
            } else {
                doc["given"].clone()
            };
            for g in given.as_array().into_iter().flatten() {
                let g = g
                    .as_str()
                    .ok_or(format!("{rel}: given is a list of paths"))?;
                self.input(g).await.map_err(|e| format!("given {g}: {e}"))?;
            }
            let as_org = doc["as"].as_str().unwrap_or_default().to_string();
            let (want, (status, out)) = match source {
                "case_event" => {
                    let county = doc["county"].as_str().unwrap_or_default().to_lowercase();
                    let org = format!("county-{county}");
                    let answer = self
                        .send(reqwest::Method::POST, "/cws/events", &org, &doc)
                        .await?;
                    (202, answer)
                }
                "referral" => {
                    let answer = self
                        .send(
                            reqwest::Method::POST,
                            "/ecm/referrals",
                            &as_org,
                            &doc["body"],
                        )
                        .await?;
                    (201, answer)
                }
                "fhir_write" => {
                    let rtype = doc["type"].as_str().unwrap_or_default();
                    let path = format!("/fhir/{rtype}");
                    let answer = self
                        .send(reqwest::Method::POST, &path, &as_org, &doc["body"])
                        .await?;
                    (201, answer)
                }
                "task_update" => {
                    let mut task = self
                        .task
                        .clone()
                        .ok_or(format!("{rel}: no Task from the given steps"))?;
                    let id = task["id"].as_str().unwrap_or_default().to_string();
                    for (k, v) in doc["task"].as_object().into_iter().flatten() {
                        task[k] = v.clone();
                    }
                    let path = format!("/fhir/Task/{id}");
                    let answer = self
                        .send(reqwest::Method::PUT, &path, &as_org, &task)
                        .await?;
                    (200, answer)
                }
                other => return Err(format!("no runner for source {other}")),
            };
            if status != want {
                return Err(format!("{rel}: HTTP {status} (wanted {want}): {out}"));
            }
            if out["resourceType"] == "Task" {
                self.task = Some(out.clone());
            } else if let Some(t) = out["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| &e["resource"])
                .find(|r| r["resourceType"] == "Task")
            {
                self.task = Some(t.clone());
            }
            Ok(out)
        })
    }

    /// Send an ADT message over MLLP and wait for its translation.
    async fn adt(&mut self, rel: &str) -> Result<Value, String> {
        let bytes = std::fs::read(root().join(rel)).map_err(|e| format!("{rel}: {e}"))?;
        let mut conn = Conn::connect(self.running.mllp_addr).await;
        let ack = conn.roundtrip(&bytes).await;
        let code = common::field(&ack, "MSA", 1);
        if !matches!(code.as_str(), "AA" | "CA") {
            return Err(format!("{rel}: ACK {code}"));
        }
        common::wait_translated(self.running.store.as_ref()).await;
        let stats = self
            .running
            .store
            .journal_stats()
            .await
            .map_err(|e| e.to_string())?;
        if stats.failed > 0 {
            let mut errors = Vec::new();
            for id in 1..=stats.total as i64 {
                if let Ok(Some(r)) = self.running.store.journal_get(id).await {
                    errors.extend(r.error);
                }
            }
            return Ok(json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "processing",
                    "diagnostics": format!("ACK {code}; translation failed: {}", errors.join("; "))}]
            }));
        }
        let stored = self.stored().await?;
        Ok(json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": stored
                .into_values()
                .map(|r| {
                    let url = format!(
                        "{}/{}/{}",
                        common::BASE,
                        r["resourceType"].as_str().unwrap_or_default(),
                        r["id"].as_str().unwrap_or_default()
                    );
                    json!({"fullUrl": url, "resource": r})
                })
                .collect::<Vec<_>>()
        }))
    }

    /// Every stored resource, by `Type/id`.
    async fn stored(&self) -> Result<BTreeMap<String, Value>, String> {
        let mut out = BTreeMap::new();
        for t in resource_types() {
            let q = store::ResourceQuery {
                resource_type: t.clone(),
                ids: Vec::new(),
                params: Vec::new(),
                patient_id: None,
                last_updated: Vec::new(),
                after: None,
                limit: 1000,
            };
            let found = self
                .running
                .store
                .resource_search(&q)
                .await
                .map_err(|e| format!("search {t}: {e}"))?;
            for r in found {
                out.insert(format!("{t}/{}", r.id), r.body);
            }
        }
        Ok(out)
    }
}

/// `v` with the values that are the time of the run written `<now>` (an
/// instant between `from` and `to`, a second either side), `<after now>`
/// (a later instant: a due date computed from the time of the run) and
/// `<today>` (the UTC or Pacific date of either end).
fn normalize(v: &mut Value, from: DateTime<Utc>, to: DateTime<Utc>) {
    let slack = chrono::Duration::seconds(1);
    let pacific = chrono::FixedOffset::west_opt(8 * 3600).expect("offset");
    let days: HashSet<String> = [from, to]
        .iter()
        .flat_map(|t| {
            [
                t.date_naive().to_string(),
                t.with_timezone(&pacific).date_naive().to_string(),
            ]
        })
        .collect();
    fn walk(v: &mut Value, f: &dyn Fn(&str) -> Option<&'static str>) {
        match v {
            Value::String(s) => {
                if let Some(r) = f(s) {
                    *s = r.to_string();
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
            Value::Object(m) => m.values_mut().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    walk(v, &|s| {
        if days.contains(s) {
            return Some("<today>");
        }
        let t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
        if t > to + slack {
            // A due date computed from the time of the run (hours or
            // business days ahead, so not a fixed offset).
            Some("<after now>")
        } else {
            (t >= from - slack).then_some("<now>")
        }
    });
}

/// What one run of an input gave.
struct Once {
    /// The output as the gateway gave it (what the invariants check).
    raw: Value,
    /// The output with the time of the run written `<now>` / `<today>`
    /// (what is compared with the expected file and with the second run).
    normalized: Value,
    /// The `Type/id` of every resource stored at the end.
    stored: HashSet<String>,
}

/// Run one input on a fresh gateway.
async fn once(rel: &str) -> Result<Once, String> {
    let from = Utc::now();
    let mut run = Run::start().await;
    let out = run.input(rel).await;
    let stored = run.stored().await;
    run.running.stop().await;
    let to = Utc::now();
    let raw = out?;
    let mut normalized = raw.clone();
    normalize(&mut normalized, from, to);
    Ok(Once {
        raw,
        normalized,
        stored: stored?.into_keys().collect(),
    })
}

/// The first JSON path where two values differ.
fn first_diff(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
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

/// Run every input of `source` twice; compare, check, and bless on request.
async fn golden(source: &str) {
    let all = inputs(source);
    assert!(!all.is_empty(), "no golden inputs for {source}");
    let mut failures = Vec::new();
    for rel in &all {
        let first = match once(rel).await {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{rel}: {e}"));
                continue;
            }
        };
        let out = &first.normalized;
        let text = serde_json::to_string_pretty(out).expect("JSON") + "\n";
        let mut problems = invariants::check(&first.raw, &|r| first.stored.contains(r));
        match once(rel).await {
            Ok(again) => {
                let again = serde_json::to_string_pretty(&again.normalized).expect("JSON") + "\n";
                problems.extend(invariants::second_run(text.as_bytes(), again.as_bytes()));
            }
            Err(e) => problems.push(format!("second run: {e}")),
        }
        let exp = expected_file(rel);
        if bless() {
            std::fs::write(&exp, &text).unwrap_or_else(|e| panic!("{}: {e}", exp.display()));
        } else {
            match std::fs::read_to_string(&exp) {
                Ok(want) if want == text => {}
                Ok(want) => {
                    let want: Value = serde_json::from_str(&want).unwrap_or(Value::Null);
                    let at = first_diff("$", &want, out).unwrap_or_else(|| "formatting".into());
                    problems.push(format!("differs from {}: {at}", exp.display()));
                }
                Err(_) => problems.push(format!("no {} (bless it)", exp.display())),
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{rel}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {source} goldens fail (CWSGW_BLESS=1 re-blesses; review the diff):\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn every_golden_directory_is_a_source_the_harness_runs() {
    let mut dirs: Vec<String> = std::fs::read_dir(root())
        .expect("tests/golden")
        .filter_map(|e| {
            let p = e.ok()?.path();
            p.is_dir()
                .then(|| p.file_name()?.to_str().map(str::to_string))
                .flatten()
        })
        .collect();
    dirs.sort();
    let mut want: Vec<String> = SOURCES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(dirs, want, "a tests/golden directory without a runner");
    for s in SOURCES {
        assert!(!inputs(s).is_empty(), "no inputs for {s}");
    }
    // Every expected file belongs to an input.
    for s in SOURCES {
        let ins: HashSet<PathBuf> = inputs(s).iter().map(|r| expected_file(r)).collect();
        let mut stack = vec![root().join(s)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().ends_with(".gateway.expected.json") {
                    assert!(ins.contains(&p), "{} has no input", p.display());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_adt_through_the_gateway() {
    golden("adt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_case_events_through_the_gateway() {
    golden("case_event").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_fhir_writes_through_the_gateway() {
    golden("fhir_write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_referrals_through_the_gateway() {
    golden("referral").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_task_updates_through_the_gateway() {
    golden("task_update").await;
}

/// The offline translation of every case event (`cws-gateway translate
/// --kind case-event`, the binary) against `<name>.expected.json`: every
/// event type (a schema in `profiles/case-events/`) has goldens, two runs
/// agree, every resource and the Bundle are valid FHIR R4. `CWSGW_BLESS=1`
/// (or `UPDATE_GOLDEN=1`) re-blesses.
#[test]
fn golden_case_events_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("gw.toml");
    std::fs::write(&cfg_path, common::config_text(dir.path(), "")).expect("write config");
    let translate = |rel: &str| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
            .args(["translate", "--kind", "case-event", "--config"])
            .arg(&cfg_path)
            .arg(root().join(rel))
            .output()
            .expect("run cws-gateway translate");
        assert!(
            out.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let update = bless() || std::env::var_os("UPDATE_GOLDEN").is_some();
    let all = inputs("case_event");
    let types: Vec<String> = std::fs::read_dir(repo().join("profiles/case-events"))
        .expect("profiles/case-events")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".schema.json").map(str::to_string)
        })
        .collect();
    assert!(types.len() >= 8, "event types: {types:?}");
    for t in &types {
        assert!(
            all.iter()
                .any(|r| r.starts_with(&format!("case_event/{t}/"))),
            "no golden input for {t}"
        );
    }
    let mut mismatches = Vec::new();
    for rel in &all {
        let first = translate(rel);
        assert_eq!(first, translate(rel), "two runs differ: {rel}");
        let out: Value =
            serde_json::from_str(&first).unwrap_or_else(|e| panic!("{rel}: {e}: {first}"));
        for e in out["entry"].as_array().expect("entries") {
            let errs = invariants::schema_errors(&e["resource"], 5);
            assert!(
                errs.is_empty(),
                "{rel}: not valid FHIR R4:\n{}",
                errs.join("\n")
            );
        }
        let errs = invariants::schema_errors(&out, 5);
        assert!(
            errs.is_empty(),
            "{rel}: not valid FHIR R4:\n{}",
            errs.join("\n")
        );
        let text = serde_json::to_string_pretty(&out).expect("JSON") + "\n";
        let exp = root().join(rel.replace(".json", ".expected.json"));
        match std::fs::read_to_string(&exp) {
            Ok(want) if want == text => {}
            Ok(_) if !update => mismatches.push(exp.display().to_string()),
            _ => std::fs::write(&exp, &text).expect("write expected"),
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden mismatches (CWSGW_BLESS=1 to re-bless):\n{}",
        mismatches.join("\n")
    );
}
