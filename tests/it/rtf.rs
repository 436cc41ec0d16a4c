//! The monthly Return Transmission File through the real HTTP interface:
//! `GET /ops/rtf` (the plan's month file, operators) and `POST /ecm/rtf`
//! (a provider's return file): a round trip changes nothing, a provider's
//! closure is applied as a Task update (journaled and routed like a PUT),
//! the same file twice changes nothing the second time, and a malformed
//! file is reported row by row.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

const MCP_EXT: &str = "https://gateway.example.org/fhir/StructureDefinition/authorizing-mcp";

fn month() -> String {
    chrono::Utc::now().format("%Y-%m").to_string()
}

/// A referral Task of `mcp`, owned by `owner`, with CLR status `clr`.
fn referral(id: &str, pid: &str, status: &str, mcp: &str, owner: &str, clr: &str) -> Value {
    let v = cws_gateway::records::clr::Vocabulary::builtin();
    let mut t = task(id, pid, &format!("sr-{id}"), status, owner);
    t["authoredOn"] = json!(format!("{}-01T09:00:00Z", month()));
    t["extension"] =
        json!([{"url": MCP_EXT, "valueReference": {"reference": format!("Organization/{mcp}")}}]);
    t["businessStatus"] = v.business_status(BASE, clr).unwrap();
    t
}

/// The mock endpoints of the plan and the county (kept for the test's length).
type Mocks = (
    cwsgw_scenario::mock::MockEndpoint,
    cwsgw_scenario::mock::MockEndpoint,
);

async fn seeded() -> (
    tempfile::TempDir,
    cws_gateway::serve::Running,
    String,
    Mocks,
) {
    // The plan and the county have delivery endpoints (mocks), so what a
    // Task update routes is queued for them.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mcp = cwsgw_scenario::mock::MockEndpoint::start().await.unwrap();
    let county = cwsgw_scenario::mock::MockEndpoint::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = config_text(dir.path(), &fhir_extra());
    text = org_with(
        &text,
        "mcp-a",
        &format!("endpoint = \"{}\"", mcp.base_url()),
    );
    text = org_with(
        &text,
        "county-fresno",
        &format!("endpoint = \"{}\"", county.base_url()),
    );
    // The same configuration as a file, for the command line.
    std::fs::write(dir.path().join("gw.toml"), &text).unwrap();
    let gw =
        cws_gateway::serve::start(cws_gateway::config::Config::from_toml(&text, "test").unwrap())
            .await
            .unwrap();
    let base = format!("http://{}", gw.http_addr);
    let mut r = Vec::new();
    for (i, cin) in ["91000001A", "91000002B", "91000003C", "91000004D"]
        .iter()
        .enumerate()
    {
        let p = format!("p{}", i + 1);
        let mut pat = patient(&p, cin, "2010-03-15");
        pat["name"] = json!([{"family": format!("Family{}", i + 1), "given": ["Kid"]}]);
        r.push(pat);
        r.push(consent(
            &format!("c{}", i + 1),
            &p,
            "referral_verbal",
            "youth",
            &["mcp-a", "ecm-compass"],
            &["referral"],
        ));
        r.push(service_request(&format!("sr-t{}", i + 1), &p));
    }
    r.push(referral(
        "t1",
        "p1",
        "accepted",
        "mcp-a",
        "ecm-compass",
        "assigned",
    ));
    r.push(referral(
        "t2",
        "p2",
        "in-progress",
        "mcp-a",
        "ecm-compass",
        "enrolled",
    ));
    // Not yet assigned: the plan owns it; the provider is no party.
    r.push(referral(
        "t3",
        "p3",
        "requested",
        "mcp-a",
        "mcp-a",
        "received",
    ));
    // Another plan's referral: never in mcp-a's file.
    r.push(referral(
        "t4",
        "p4",
        "accepted",
        "mcp-b",
        "mcp-b",
        "authorized",
    ));
    seed(gw.store.as_ref(), r).await;
    (dir, gw, base, (mcp, county))
}

async fn export(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    mcp: &str,
) -> (StatusCode, String, String) {
    let r = c
        .get(format!("{base}/ops/rtf?mcp={mcp}&month={}", month()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (s, ct, r.text().await.unwrap())
}

async fn import(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    csv: &str,
) -> (StatusCode, Value) {
    let r = c
        .post(format!("{base}/ecm/rtf{query}"))
        .bearer_auth(token)
        .header("Content-Type", "text/csv")
        .body(csv.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status();
    (
        s,
        serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// Rows keyed by Referral_ID: header → cell.
fn rows(csv: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut rd = ::csv::Reader::from_reader(csv.as_bytes());
    let h: Vec<String> = rd.headers().unwrap().iter().map(str::to_string).collect();
    rd.records()
        .map(|r| {
            h.iter()
                .cloned()
                .zip(r.unwrap().iter().map(str::to_string))
                .collect()
        })
        .collect()
}

fn info(outcome: &Value) -> String {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["severity"] == "information")
        .map(|i| i["diagnostics"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn errors(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| i["diagnostics"].as_str().unwrap().to_string())
        .collect()
}

async fn outbox_to(gw: &cws_gateway::serve::Running, org: &str) -> u64 {
    gw.store
        .outbox_depth()
        .await
        .unwrap()
        .into_iter()
        .filter(|(o, _, _)| o == org)
        .map(|(_, _, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtf_round_trip_closes_a_loop_once() {
    let (_dir, gw, base, _mocks) = seeded().await;
    let c = reqwest::Client::new();

    let (s, ct, file) = export(&c, &base, OPS_TOKEN, "mcp-a").await;
    assert_eq!(s, StatusCode::OK, "{file}");
    assert!(ct.starts_with("text/csv"), "{ct}");
    let r = rows(&file);
    let ids: Vec<&str> = r.iter().map(|x| x["Referral_ID"].as_str()).collect();
    assert_eq!(ids.len(), 3, "{file}");
    for id in ["t1", "t2", "t3"] {
        assert!(ids.contains(&id), "{id}: {file}");
    }
    let t1 = r.iter().find(|x| x["Referral_ID"] == "t1").unwrap();
    assert_eq!(t1["Member_CIN"], "91000001A");
    assert_eq!(t1["Member_Last_Name"], "Family1");
    assert_eq!(t1["Member_DOB"], "2010-03-15");
    assert_eq!(t1["ECM_Provider_ID"], "ecm-compass");
    assert_eq!(t1["Referral_Status"], "Assigned");
    assert_eq!(t1["Authorization_Status"], "Authorized");
    assert!(!t1["Referral_Status_Date"].is_empty());
    // The export is an audited operator read naming the members.
    let all = gw.store.audit_list(0, 1000, None, None).await.unwrap();
    assert!(
        all.iter().any(|a| a.kind == "read"
            && a.body.to_string().contains("Patient/p1")
            && a.body.to_string().contains("rtf export")),
        "no audited read of the export"
    );

    // The provider returns the plan's file unchanged (minus the row of the
    // Task it is no party to): nothing changes.
    let journal_before = gw.store.journal_stats().await.unwrap().total;
    let mine: String = file
        .lines()
        .filter(|l| !l.contains(",t3,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (s, out) = import(&c, &base, ECM_TOKEN, "?mcp=mcp-a", &mine).await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert!(errors(&out).is_empty(), "{out}");
    assert_eq!(info(&out), "2 rows: 0 applied, 2 unchanged, 0 refused");
    assert_eq!(
        gw.store.journal_stats().await.unwrap().total,
        journal_before
    );

    // The provider closes t1 as Services Received and t2 as unable to reach.
    let closed = mine
        .lines()
        .map(|l| {
            if l.contains(",t1,") {
                close(l, "Closed", "Services Received")
            } else if l.contains(",t2,") {
                close(l, "Closed", "Unable to Reach")
            } else {
                l.to_string()
            }
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let to_mcp_before = outbox_to(&gw, "mcp-a").await + outbox_to(&gw, "county-fresno").await;
    let (s, out) = import(&c, &base, ECM_TOKEN, "?mcp=mcp-a", &closed).await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert!(errors(&out).is_empty(), "{out}");
    assert_eq!(info(&out), "2 rows: 2 applied, 0 unchanged, 0 refused");
    let t1 = gw.store.resource_get("Task", "t1").await.unwrap().unwrap();
    assert_eq!(t1.body["status"], "completed");
    assert_eq!(
        cws_gateway::records::clr::status_of(&t1.body),
        Some("closed")
    );
    assert_eq!(
        cws_gateway::records::clr::closure_reason_of(&t1.body),
        Some("services-received")
    );
    let t2 = gw.store.resource_get("Task", "t2").await.unwrap().unwrap();
    assert_eq!(t2.body["status"], "failed");
    assert_eq!(
        cws_gateway::records::clr::closure_reason_of(&t2.body),
        Some("unable-to-reach")
    );
    // Journaled as Task updates, one per applied row, and routed as a PUT
    // is (the referring county and the authorizing plan are told).
    let journal_after = gw.store.journal_stats().await.unwrap().total;
    assert_eq!(journal_after - journal_before, 2);
    let to_after = outbox_to(&gw, "mcp-a").await + outbox_to(&gw, "county-fresno").await;
    assert!(
        to_after > to_mcp_before,
        "no notification routed: {to_mcp_before} → {to_after}"
    );

    // The same file again: nothing changes.
    let (s, out) = import(&c, &base, ECM_TOKEN, "?mcp=mcp-a", &closed).await;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(info(&out), "2 rows: 0 applied, 2 unchanged, 0 refused");
    assert_eq!(gw.store.journal_stats().await.unwrap().total, journal_after);
    assert_eq!(
        gw.store
            .resource_get("Task", "t1")
            .await
            .unwrap()
            .unwrap()
            .version_id,
        t1.version_id
    );

    // Export again: the same statuses as imported.
    let (_, _, again) = export(&c, &base, OPS_TOKEN, "mcp-a").await;
    let r = rows(&again);
    let t1 = r.iter().find(|x| x["Referral_ID"] == "t1").unwrap();
    assert_eq!(
        (
            t1["Referral_Status"].as_str(),
            t1["Referral_Closure_Reason"].as_str()
        ),
        ("Closed", "Services Received")
    );
    let t2 = r.iter().find(|x| x["Referral_ID"] == "t2").unwrap();
    assert_eq!(
        (
            t2["Referral_Status"].as_str(),
            t2["Referral_Closure_Reason"].as_str()
        ),
        ("Closed", "Unable to Reach")
    );
    gw.stop().await;
}

/// A row with its status and closure reason replaced (the last three
/// columns are status, status date, closure reason).
fn close(line: &str, status: &str, reason: &str) -> String {
    let mut cells: Vec<String> = line.split(',').map(str::to_string).collect();
    let n = cells.len();
    cells[n - 3] = status.into();
    cells[n - 1] = reason.into();
    cells.join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_rtf_is_reported_row_by_row() {
    let (_dir, gw, base, _mocks) = seeded().await;
    let c = reqwest::Client::new();
    let (_, _, file) = export(&c, &base, OPS_TOKEN, "mcp-a").await;
    let header = file.lines().next().unwrap().to_string();
    let row_of = |id: &str| {
        file.lines()
            .find(|l| l.contains(&format!(",{id},")))
            .unwrap()
            .to_string()
    };
    let t1 = row_of("t1");
    let t2 = row_of("t2");
    let t3 = row_of("t3");
    let body = [
        header.clone(),
        // line 2: a bad CIN
        t1.replacen("91000001A", "9100001A", 1),
        // line 3: an unknown status code
        t2.replace(",Enrolled,", ",Finished,"),
        // line 4: too few columns
        "91000001A,Family1,t1".to_string(),
        // line 5: a Task the provider is no party to
        t3.clone(),
        // line 6: a Task that does not exist
        t1.replace(",t1,", ",t99,"),
        // line 7: the CIN of another member
        t2.replacen("91000002B", "91000001A", 1),
        // line 8: a good row (t1 enrolled)
        t1.replace(",Assigned,", ",Enrolled,"),
    ]
    .join("\n");
    let (s, out) = import(&c, &base, ECM_TOKEN, "?mcp=mcp-a", &body).await;
    assert_eq!(s, StatusCode::OK, "{out}");
    let e = errors(&out);
    assert_eq!(
        info(&out),
        "7 rows: 1 applied, 0 unchanged, 6 refused",
        "{out}"
    );
    let has =
        |prefix: &str, text: &str| e.iter().any(|x| x.starts_with(prefix) && x.contains(text));
    assert!(
        has("line 2, column Member_CIN:", "not a Medi-Cal CIN"),
        "{e:?}"
    );
    assert!(
        has("line 3, column Referral_Status:", "not a referral status"),
        "{e:?}"
    );
    assert!(has("line 4:", "3 columns, the header has 13"), "{e:?}");
    assert!(
        has("line 5, column Referral_ID:", "no referral with this id"),
        "{e:?}"
    );
    assert!(
        has("line 6, column Referral_ID:", "no referral with this id"),
        "{e:?}"
    );
    assert!(
        has(
            "line 7, column Member_CIN:",
            "not the CIN of the referral's member"
        ),
        "{e:?}"
    );
    // Absent and not-the-caller's read the same.
    let l5 = e.iter().find(|x| x.starts_with("line 5")).unwrap();
    let l6 = e.iter().find(|x| x.starts_with("line 6")).unwrap();
    assert_eq!(l5.replace("line 5", ""), l6.replace("line 6", ""));
    // The problems name lines and columns, never a cell's value.
    assert!(
        e.iter()
            .all(|x| !x.contains("9100001A") && !x.contains("Family")),
        "{e:?}"
    );
    // The good row was applied.
    let t1 = gw.store.resource_get("Task", "t1").await.unwrap().unwrap();
    assert_eq!(t1.body["status"], "in-progress");
    assert_eq!(
        cws_gateway::records::clr::status_of(&t1.body),
        Some("enrolled")
    );
    // t3 untouched.
    let t3s = gw.store.resource_get("Task", "t3").await.unwrap().unwrap();
    assert_eq!(t3s.version_id, 1);
    // The rows naming a Task not the provider's (t3) or none (t99) are one
    // refusal naming both Tasks and t3's member, found in p3's accounting.
    let refusals: Vec<_> = gw
        .store
        .audit_list(0, 1000, Some("p3"), Some("ecm-compass"))
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "refusal")
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let named: Vec<&str> = refusals[0].body["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["what"]["reference"].as_str())
        .collect();
    assert_eq!(named, ["Task/t3", "Patient/p3", "Task/t99"], "{named:?}");

    // A header that is not the plan's layout refuses the whole file.
    let (s, out) = import(
        &c,
        &base,
        ECM_TOKEN,
        "?mcp=mcp-a",
        "CIN,Status\n91000001A,Closed\n",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{out}");
    assert!(out.to_string().contains("expected Member_CIN,"), "{out}");
    // Not CSV: 415. No plan named by a provider: 422. A plan it is not
    // contracted with: 422.
    let r = c
        .post(format!("{base}/ecm/rtf?mcp=mcp-a"))
        .bearer_auth(ECM_TOKEN)
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, _) = import(&c, &base, ECM_TOKEN, "", &body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = import(&c, &base, ECM_TOKEN, "?mcp=mcp-b", &body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // The export is for operators only; a bad month is named.
    let (s, _, _) = export(&c, &base, ECM_TOKEN, "mcp-a").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let r = c
        .get(format!("{base}/ops/rtf?mcp=mcp-a&month=2026-13"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    gw.stop().await;
}

/// The binary run without the caller's `CWSGW_*` settings.
fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .args(args)
        .env_remove("CWSGW_CONFIG")
        .env_remove("CWSGW_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_rtf_writes_the_same_file_as_the_endpoint_and_never_creates_a_store() {
    let (dir, gw, base, _mocks) = seeded().await;
    let c = reqwest::Client::new();
    let (_, _, http_file) = export(&c, &base, OPS_TOKEN, "mcp-a").await;
    gw.stop().await;
    let conf = dir.path().join("gw.toml");
    let out_file = dir.path().join("rtf.csv");
    let m = month();
    let args = [
        "report",
        "rtf",
        "--config",
        conf.to_str().unwrap(),
        "--mcp",
        "mcp-a",
        "--month",
        &m,
        "--out",
        out_file.to_str().unwrap(),
    ];
    let out = cli(&args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), http_file);
    assert!(err.contains("rtf mcp-a") && err.contains("3 rows"), "{err}");
    assert!(
        !err.contains("91000001A") && !err.contains("Family1"),
        "no PHI on stderr: {err}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the file is the owner's only: {mode:o}");
    }
    // Without a store: refused in one line, nothing created.
    let empty = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&conf).unwrap().replace(
        dir.path().join("gw.db").to_str().unwrap(),
        empty.path().join("none.db").to_str().unwrap(),
    );
    let conf2 = empty.path().join("gw.toml");
    std::fs::write(&conf2, text).unwrap();
    let out = cli(&[
        "report",
        "rtf",
        "--config",
        conf2.to_str().unwrap(),
        "--mcp",
        "mcp-a",
        "--month",
        &m,
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(err.starts_with("error: no store at"), "{err}");
    assert!(!empty.path().join("none.db").exists());
    // A month that is not YYYY-MM is named.
    let out = cli(&[
        "report",
        "rtf",
        "--config",
        conf.to_str().unwrap(),
        "--mcp",
        "mcp-a",
        "--month",
        "2026-1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("month is YYYY-MM"));
}
