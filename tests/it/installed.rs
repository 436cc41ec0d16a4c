//! The built binary as an operator runs it after `cargo install`: from a
//! directory outside the checkout, with no `mappings/` or `config/` beside
//! it. Mappings, terminology and the demo configuration are built in; paths
//! in a configuration file resolve against that file's directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cws-gateway")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary run in `dir`, without the caller's `CWSGW_*` settings.
fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .env_remove("CWSGW_CONFIG")
        .env_remove("CWSGW_DATABASE_URL")
        .env_remove("CWSGW_HTTP_ADDR")
        .env_remove("CWSGW_MLLP_ADDR")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    cmd(dir).args(args).output().expect("run the binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scratch directory outside the checkout.
fn outside() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    assert!(
        !d.path().starts_with(repo()),
        "the temp dir is outside the checkout"
    );
    d
}

const GOLDEN_001: &str = "tests/golden/adt/adt-to-fhir/001-a01-admit-v251.hl7";
const GOLDEN_002: &str = "tests/golden/adt/adt-to-fhir/002-a03-discharge-same-visit.hl7";

#[test]
fn translate_works_from_any_directory() {
    let tmp = outside();
    let msg = std::fs::read(repo().join(GOLDEN_001)).expect("golden");
    std::fs::write(tmp.path().join("msg.hl7"), &msg).expect("write");
    let at = "2026-01-15T10:00:00Z";
    let out = run(
        tmp.path(),
        &["translate", "--kind", "adt", "--received-at", at, "msg.hl7"],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let single: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a Bundle");
    assert_eq!(single["resourceType"], "Bundle");

    // A batch: the same Bundle bytes as one line each, through the fast path.
    let second = std::fs::read(repo().join(GOLDEN_002)).expect("golden");
    let mut batch = msg.clone();
    batch.extend_from_slice(b"\r\n\r\n");
    batch.extend_from_slice(&second);
    std::fs::write(tmp.path().join("batch.hl7"), &batch).expect("write");
    let out = run(
        tmp.path(),
        &[
            "translate",
            "--kind",
            "adt",
            "--received-at",
            at,
            "--batch",
            "batch.hl7",
        ],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout)
        .expect("utf-8")
        .lines()
        .collect();
    assert_eq!(lines.len(), 2, "{}", text(&out.stdout));
    assert_eq!(lines[0], serde_json::to_string(&single).expect("json"));
    assert!(text(&out.stderr).contains("translated 2, failed 0"));

    // One bad message: its OperationOutcome line, the counts, exit non-zero.
    batch.extend_from_slice(b"\n\nnot an HL7 message\n");
    std::fs::write(tmp.path().join("bad.hl7"), &batch).expect("write");
    let out = run(
        tmp.path(),
        &["translate", "--kind", "adt", "--batch", "bad.hl7"],
    );
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("json");
    assert_eq!(last["resourceType"], "OperationOutcome");
    let err = text(&out.stderr);
    assert!(
        err.contains("translated 2, failed 1") && err.contains("1 of 3 messages failed"),
        "{err}"
    );

    // A missing input file: one line naming it, non-zero.
    let out = run(
        tmp.path(),
        &["translate", "--kind", "adt", "--batch", "nope.hl7"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nope.hl7"));
}

#[test]
fn eligibility_works_from_any_directory_and_names_missing_fields() {
    let tmp = outside();
    let facts = r#"{"child": {"birthDate": "2012-01-01"},
        "enrollment": {"aidCode": "4M", "planCode": "A", "feeForService": false, "shareOfCost": false}}"#;
    std::fs::write(tmp.path().join("facts.json"), facts).expect("write");
    let out = run(
        tmp.path(),
        &["eligibility", "--as-of", "2026-02-01", "facts.json"],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ev["eligible"], true, "{ev}");

    let missing = facts.replace(r#""aidCode": "4M", "#, "");
    std::fs::write(tmp.path().join("missing.json"), missing).expect("write");
    let out = run(tmp.path(), &["eligibility", "missing.json"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("enrollment.aidCode"), "{err}");
}

/// A config file in its own directory, with a relative database path.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join("gw.toml");
    let mut f = std::fs::File::create(&path).expect("create");
    write!(
        f,
        "[server]\nhttp_addr = \"127.0.0.1:0\"\nmllp_addr = \"127.0.0.1:0\"\n\n[store]\nurl = \"sqlite://data/gw.db\"\n{extra}"
    )
    .expect("write");
    path
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn serve_with_a_config_elsewhere() {
    let tmp = outside();
    // A county client (the demo's token) to post a case event.
    let county = "\n[[organizations]]\nid = \"county-fresno\"\nkind = \"county\"\nname = \"Fresno\"\ncounty = \"Fresno\"\n\n[[clients]]\nid = \"fresno\"\norganization = \"county-fresno\"\ntoken_sha256 = \"9015c473cbdcfa0c4484da4bd7d81358b50de8745aebb133544bd402016732df\"\n";
    let conf = write_config(&tmp.path().join("etc"), county);
    let cwd = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let mut child = cmd(&cwd)
        .args(["serve", "--config"])
        .arg(&conf)
        // A key for the audit chain, for builds that require one (ignored by
        // those that do not).
        .env(
            "CWSGW_AUDIT_KEY",
            "installed-test:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut http = None;
    while http.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            http = line
                .strip_prefix("listening http=")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string);
        }
    }
    if http.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the gateway did not print its address; stderr: {}",
            errors.join().unwrap_or_default()
        );
    }
    let result = std::panic::catch_unwind(|| {
        let http = http.clone().unwrap_or_default();
        let reply = http_get(&http, "/readyz");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let reply = http_get(&http, "/healthz");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        // `[store] wal_preallocate` is on by default: the WAL was zero-filled
        // at start to its longest length (4 × 16,384 frames of a 24-byte
        // header and a 4 KiB page, after the 32-byte file header).
        let wal = tmp.path().join("etc/data/gw.db-wal");
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(len, 32 + 4 * 16_384 * (4096 + 24), "WAL length");
        every_violation_is_one_issue(&http);
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    // The relative database path resolved against the config's directory.
    assert!(tmp.path().join("etc/data/gw.db").exists());
    assert!(!cwd.join("data").exists());
}

/// A `case.opened` missing both `socialWorker` and `child.birthDate`, with a
/// bad `child.sex`: 422 with one issue per violation, no value echoed.
fn every_violation_is_one_issue(addr: &str) {
    let golden = repo().join("tests/golden/case_event/case.opened/001-court-ordered-fr.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden).expect("golden")).expect("json");
    let obj = doc.as_object_mut().expect("object");
    obj.remove("socialWorker");
    doc["child"]
        .as_object_mut()
        .expect("child")
        .remove("birthDate");
    doc["child"]["sex"] = "PHI-LIKE-VALUE".into();
    let body = doc.to_string();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "POST /cws/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer demo-county-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 422"), "{reply}");
    let json = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let oo: serde_json::Value = serde_json::from_str(json).expect("an OperationOutcome");
    let issues = oo["issue"].as_array().expect("issues");
    let exprs: Vec<&str> = issues
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    for want in ["socialWorker", "child.birthDate", "child.sex"] {
        assert!(exprs.contains(&want), "{want} not in {exprs:?}");
    }
    assert!(issues.iter().all(|i| i["code"] == "invalid"));
    assert!(!json.contains("PHI-LIKE-VALUE"), "{json}");
}

#[test]
fn a_missing_mappings_dir_fails_with_one_line_naming_key_and_path() {
    let tmp = outside();
    let conf = write_config(
        &tmp.path().join("etc"),
        "\n[mappings]\ndir = \"missing-mappings\"\n",
    );
    let want = tmp.path().join("etc/missing-mappings");
    for args in [&["serve", "--config"][..], &["check-config"][..]] {
        let out = cmd(tmp.path()).args(args).arg(&conf).output().expect("run");
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("mappings.dir") && err.contains(&want.display().to_string()),
            "{args:?}: {err}"
        );
    }
    // A config named without a directory: relative to the working directory.
    let out = cmd(&tmp.path().join("etc"))
        .args(["check-config", "gw.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&want.display().to_string()), "{err}");
    // Nothing was created for the store of a gateway that did not start.
    assert!(!tmp.path().join("etc/data/gw.db").exists());
}

/// Issue 15 item 7: the commands that read a store never create one. From
/// a directory with no store, without a config, with a config whose
/// database is missing, or with a config file that does not exist: exit
/// non-zero, one line naming what is missing, and nothing created.
#[test]
fn store_reading_commands_never_create_a_store() {
    let tmp = outside();
    let commands: [&[&str]; 6] = [
        &["audit", "verify"],
        &["dlq", "list"],
        &["dlq", "retry", "1"],
        &["dlq", "drop", "1"],
        &["deadlines"],
        &["explain", "--patient", "91000001A", "--recipient", "mcp-a"],
    ];
    let default_db = tmp.path().join("gateway-data/gateway.db");
    let conf = write_config(&tmp.path().join("etc"), "");
    let conf_db = tmp.path().join("etc/data/gw.db");
    let env_db = tmp.path().join("elsewhere/env.db");
    for args in commands {
        let cases: Vec<(Output, PathBuf, &str)> = vec![
            (run(tmp.path(), args), default_db.clone(), "no store at"),
            (
                cmd(tmp.path())
                    .args(args)
                    .arg("--config")
                    .arg(&conf)
                    .output()
                    .expect("run"),
                conf_db.clone(),
                "no store at",
            ),
            (
                cmd(tmp.path())
                    .args(args)
                    .env(
                        "CWSGW_DATABASE_URL",
                        format!("sqlite://{}", env_db.display()),
                    )
                    .output()
                    .expect("run"),
                env_db.clone(),
                "no store at",
            ),
            (
                cmd(tmp.path())
                    .args(args)
                    .args(["--config", "missing.toml"])
                    .output()
                    .expect("run"),
                tmp.path().join("missing.toml"),
                "no config at",
            ),
        ];
        for (out, missing, what) in cases {
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
            let err = text(&out.stderr);
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.starts_with("error: ")
                    && err.contains(what)
                    && err.contains(&missing.display().to_string()),
                "{args:?}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // Nothing was created anywhere.
    assert!(!tmp.path().join("gateway-data").exists());
    assert!(!tmp.path().join("etc/data").exists());
    assert!(!tmp.path().join("elsewhere").exists());
}

/// A store as a gateway leaves it (one patient, for `explain`), and a
/// config naming it with the FHIR test organizations.
fn existing_store(dir: &Path) -> PathBuf {
    let conf = dir.join("gw.toml");
    std::fs::write(
        &conf,
        crate::common::config_text(dir, &crate::common::fhir_extra()),
    )
    .expect("write");
    let cfg = cws_gateway::config::Config::from_file(&conf).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = cws_gateway::serve::open_store(&cfg).await.expect("store");
        crate::common::seed(
            store.as_ref(),
            vec![crate::common::patient("p1", "91000001A", "2010-03-15")],
        )
        .await;
    });
    conf
}

/// `--config` before or after the subcommand, or from `CWSGW_CONFIG`: the
/// same answer.
#[test]
fn config_is_accepted_in_any_position() {
    let tmp = outside();
    let conf = existing_store(tmp.path());
    let conf_s = conf.display().to_string();
    let c = conf_s.as_str();
    for forms in [
        vec![
            vec!["dlq", "list", "--config", c],
            vec!["dlq", "--config", c, "list"],
            vec!["--config", c, "dlq", "list"],
        ],
        vec![
            vec!["deadlines", "--overdue", "--config", c],
            vec!["--config", c, "deadlines", "--overdue"],
        ],
        vec![
            vec!["audit", "verify", "--config", c],
            vec!["audit", "--config", c, "verify"],
        ],
        vec![vec!["check-config", c], vec!["check-config", "--config", c]],
    ] {
        let mut first = None;
        for args in &forms {
            let out = run(tmp.path(), args);
            assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
            let stdout = text(&out.stdout);
            match &first {
                None => first = Some(stdout),
                Some(f) => assert_eq!(f, &stdout, "{args:?}"),
            }
        }
        // CWSGW_CONFIG names it too.
        let bare: Vec<&str> = forms[0]
            .iter()
            .copied()
            .filter(|a| *a != "--config" && *a != c)
            .collect();
        let out = cmd(tmp.path())
            .args(&bare)
            .env("CWSGW_CONFIG", &conf)
            .output()
            .expect("run");
        assert!(out.status.success(), "{bare:?}: {}", text(&out.stderr));
        assert_eq!(
            first.as_deref(),
            Some(text(&out.stdout).as_str()),
            "{bare:?}"
        );
    }
}

/// A reader that closes stdout early (`| head`) ends the command quietly:
/// exit 0, no panic, nothing on stderr. The read end is closed before the
/// command writes, so every write meets a closed pipe.
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let tmp = outside();
    let conf = existing_store(tmp.path());
    let conf_s = conf.display().to_string();
    let golden = repo().join(GOLDEN_001).display().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec![
            "explain",
            "--patient",
            "91000001A",
            "--recipient",
            "mcp-a",
            "--config",
            &conf_s,
        ],
        vec!["dlq", "list", "--config", &conf_s],
        vec!["audit", "verify", "--config", &conf_s],
        vec!["check-config", &conf_s],
        vec!["translate", "--kind", "adt", &golden],
        vec!["translate", "--kind", "adt", "--batch", &golden],
    ];
    for args in commands {
        let mut child = cmd(tmp.path())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(
            !err.contains("error") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

/// `check-config` and `serve` refuse a configuration naming a secret
/// environment variable that is not set: one line naming the key and the
/// variable, before anything listens or is stored.
#[test]
fn check_config_and_serve_fail_on_a_missing_secret() {
    let tmp = outside();
    let plan = "\n[[organizations]]\nid = \"mcp-a\"\nkind = \"mcp\"\nname = \"Plan A\"\nplan_codes = [\"A\"]\ncounties = [\"Fresno\"]\nendpoint = \"http://127.0.0.1:9/fhir\"\nendpoint_auth = { bearer_token_env = \"CWSGW_IT_PLAN_A_TOKEN_UNSET\" }\n";
    let conf = write_config(&tmp.path().join("etc"), plan);
    for args in [&["check-config"][..], &["serve", "--config"][..]] {
        let out = cmd(tmp.path())
            .args(args)
            .arg(&conf)
            .env_remove("CWSGW_IT_PLAN_A_TOKEN_UNSET")
            .env(
                "CWSGW_AUDIT_KEY",
                "installed-test:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            )
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("organizations[0] (mcp-a).endpoint_auth.bearer_token_env")
                && err.contains("CWSGW_IT_PLAN_A_TOKEN_UNSET"),
            "{args:?}: {err}"
        );
        assert!(!text(&out.stdout).contains("listening"), "{args:?}");
    }
    assert!(!tmp.path().join("etc/data/gw.db").exists());
    // Set, the same configuration checks out.
    let out = cmd(tmp.path())
        .args(["check-config"])
        .arg(&conf)
        .env("CWSGW_IT_PLAN_A_TOKEN_UNSET", "a-token")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("configuration OK"));
}

/// On PostgreSQL too: a command that reads a store, pointed at a database
/// the gateway never served, is one line naming it and exit 1, and leaves
/// the database as it was (no schema created), so the next try still says
/// so. (`serve` creates and migrates the schema as before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_reading_commands_never_create_a_postgres_store() {
    let db = store_postgres::testing::TestDb::create()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tmp = outside();
    let commands: [&[&str]; 3] = [&["audit", "verify"], &["dlq", "list"], &["deadlines"]];
    for _ in 0..2 {
        for args in commands {
            let out = cmd(tmp.path())
                .args(args)
                .env("CWSGW_DATABASE_URL", &db.url)
                .env("CWSGW_AUDIT_KEY", format!("k1:{}", "ab".repeat(32)))
                .output()
                .expect("run");
            assert!(!out.status.success(), "{args:?} succeeded");
            let err = text(&out.stderr);
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.starts_with("error: ") && err.contains("holds no gateway store"),
                "{args:?}: {err}"
            );
        }
    }
    // Nothing was created: a store that requires the schema still finds none.
    let opts = store_postgres::PgOptions {
        require_existing: true,
        ..store_postgres::PgOptions::default()
    };
    assert!(store_postgres::PgStore::open(&db.url, opts).await.is_err());
    db.drop_db().await.unwrap_or_else(|e| panic!("{e}"));
}

/// `serve` until it prints its addresses; what it wrote to stderr by then,
/// complete lines only (the process is killed, a last line may be cut).
fn serve_stderr(conf: &Path, env: &[(&str, &str)]) -> String {
    let tmp = outside();
    let mut c = cmd(tmp.path());
    c.args(["serve", "--config"])
        .arg(conf)
        .env("RUST_LOG", "info")
        .env_remove("CWSGW_LOG_FORMAT")
        .env(
            "CWSGW_AUDIT_KEY",
            "installed-test:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        );
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdout = child.stdout.take().expect("stdout");
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("listening http="));
    let _ = child.kill();
    let _ = child.wait();
    let mut err = errors.join().unwrap_or_default();
    assert!(listening, "the gateway did not start; stderr: {err}");
    match err.rfind('\n') {
        Some(i) => err.truncate(i + 1),
        None => err.clear(),
    }
    err
}

#[test]
fn logs_are_json_lines_when_asked_and_never_coloured_on_a_pipe() {
    let tmp = outside();
    let text_conf = write_config(&tmp.path().join("text"), "");
    let json_conf = write_config(&tmp.path().join("json"), "\n[log]\nformat = \"json\"\n");
    for (conf, env) in [
        (&json_conf, &[][..]),
        (&text_conf, &[("CWSGW_LOG_FORMAT", "json")][..]),
    ] {
        let err = serve_stderr(conf, env);
        let lines: Vec<&str> = err.lines().collect();
        assert!(!lines.is_empty(), "{} {env:?}: no log line", conf.display());
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
        }
    }
    // Text (the default) on a pipe: no ANSI escape codes.
    let err = serve_stderr(&text_conf, &[]);
    assert!(!err.trim().is_empty(), "no log line");
    assert!(!err.contains('\x1b'), "{err:?}");
    assert!(serde_json::from_str::<serde_json::Value>(err.lines().next().unwrap_or("")).is_err());
}
