//! The closed-loop referral compliance view through the real interfaces:
//! referrals posted and decided over HTTP, then `GET /ops/referrals`, the
//! `cwsgw_referral*` lines of `/metrics` and `cws-gateway referrals` on the
//! store the gateway left.

use std::path::Path;
use std::time::Duration;

use cws_gateway::config::Config;
use cws_gateway::serve::Running;
use cwsgw_scenario::mock::MockEndpoint;
use serde_json::{json, Value};

use crate::common::{self, repo, sha, COUNTY_TOKEN, OPS_TOKEN};

const MCP_A_TOKEN: &str = "rv-mcp-a-token";

fn config_text(dir: &Path, mocks: &[(&str, &MockEndpoint)]) -> String {
    let extra = format!(
        "\n[[clients]]\nid = \"mcp-a\"\norganization = \"mcp-a\"\ntoken_sha256 = \"{}\"\n",
        sha(MCP_A_TOKEN)
    );
    let mut text = common::config_text(dir, &extra);
    for (org, mock) in mocks {
        text = common::org_with(&text, org, &format!("endpoint = \"{}\"", mock.base_url()));
    }
    text.push_str(
        "\n[delivery]\nmax_attempts = 3\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\ntimeout_ms = 1000\nconnect_timeout_ms = 500\nlease_ms = 5000\nshutdown_grace_ms = 500\nconcurrency = 4\n",
    );
    text
}

struct Gw {
    running: Running,
    http: reqwest::Client,
}

impl Gw {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value, String) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.running.http_addr))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value, String) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let (s, b, _) = self
            .send(reqwest::Method::POST, path, token, Some(body))
            .await;
        (s, b)
    }
}

fn golden(kind: &str, name: &str) -> Value {
    let p = repo().join(format!("tests/golden/case_event/{kind}/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn referral(id: &str) -> Value {
    json!({
        "referralId": id,
        "member": {"cin": "91000001A", "name": {"given": ["Alex"], "family": "Rivera"}, "birthDate": "2010-03-15"},
        "referrer": {"organizationId": "county-fresno", "name": "Dana Ortiz", "role": "social worker", "relationship": "county social worker"},
        "selfReferral": false,
        "populationsOfFocus": ["8"],
        "criteria": "in foster care",
        "expedited": false
    })
}

fn task_of(bundle: &Value) -> Value {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .find(|r| r["resourceType"] == "Task")
        .unwrap_or_else(|| panic!("no Task in {bundle}"))
}

async fn put_task(gw: &Gw, task: &Value, f: impl FnOnce(&mut Value)) -> Value {
    let mut t = task.clone();
    f(&mut t);
    let path = format!("/fhir/Task/{}", task["id"].as_str().unwrap());
    let (s, b, text) = gw
        .send(reqwest::Method::PUT, &path, MCP_A_TOKEN, Some(&t))
        .await;
    assert_eq!(s, 200, "{text}");
    b
}

fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Three referrals from the county: one authorized and assigned (its two
/// notices delivered on time), one denied, one still waiting. The figures
/// agree across the endpoint, the metrics and the command; filters select;
/// only an operator may ask; asking writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_compliance_figures_through_the_api_the_metrics_and_the_command() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let county = MockEndpoint::start().await.unwrap();
    let mcp_a = MockEndpoint::start().await.unwrap();
    let compass = MockEndpoint::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("gw.toml");
    let text = config_text(
        dir.path(),
        &[
            ("county-fresno", &county),
            ("mcp-a", &mcp_a),
            ("ecm-compass", &compass),
        ],
    );
    std::fs::write(&cfg_path, &text).unwrap();
    let cfg = Config::from_file(&cfg_path).unwrap();
    let base = cfg.server.canonical_base.clone();
    let gw = Gw {
        running: cws_gateway::serve::start(cfg).await.unwrap(),
        http: reqwest::Client::new(),
    };
    for (kind, name) in [
        ("case.opened", "001-court-ordered-fr"),
        ("placement.changed", "001-resource-family"),
        ("enrollment.updated", "001-plan-a"),
        ("consent.recorded", "001-referral-verbal"),
    ] {
        let (s, b) = gw
            .post("/cws/events", COUNTY_TOKEN, &golden(kind, name))
            .await;
        assert_eq!(s, 202, "{kind}: {b}");
    }
    let mut tasks = Vec::new();
    for id in ["R-V1", "R-V2", "R-V3"] {
        let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &referral(id)).await;
        assert_eq!(s, 201, "{b}");
        tasks.push(task_of(&b));
    }
    // R-V1: authorized, then assigned to a contracted provider.
    let accepted = put_task(&gw, &tasks[0], |t| t["status"] = json!("accepted")).await;
    // (No CLR code sent: the lifecycle derives `assigned`.)
    put_task(&gw, &accepted, |t| {
        t["owner"] = json!({"reference": "Organization/ecm-compass"});
        t.as_object_mut().unwrap().remove("businessStatus");
    })
    .await;
    // R-V2: not authorized, with a coded reason.
    let vocab = cws_gateway::records::clr::Vocabulary::builtin();
    let coding = vocab.closure_coding(&base, "not-eligible").unwrap();
    put_task(&gw, &tasks[1], |t| {
        t["status"] = json!("rejected");
        t["statusReason"] = json!({"coding": [coding], "text": "no population of focus"});
    })
    .await;

    // The two notices of R-V1 reach the county and the provider; the view
    // counts them once the deliveries meet their clocks.
    let mut v = Value::Null;
    for _ in 0..200 {
        let (s, b, text) = gw.get("/ops/referrals", OPS_TOKEN).await;
        assert_eq!(s, 200, "{text}");
        v = b;
        if v["daysToAssignment"]["count"] == 1
            && v["notices"]["byClock"]["sw-notified-of-enrollment"]["onTime"] == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(v["referrals"], 3, "{v}");
    assert_eq!(v["truncated"], false);
    assert_eq!(v["open"], json!({"assigned": 1, "received": 1}), "{v}");
    assert_eq!(v["closed"], json!({"not-authorized": 1}), "{v}");
    assert_eq!(
        v["openByMcp"]["mcp-a"],
        json!({"assigned": 1, "received": 1})
    );
    assert_eq!(
        v["overdueClocks"],
        json!({}),
        "nothing is past due yet: {v}"
    );
    // Both decisions were made within seconds of the referral.
    assert_eq!(v["daysToDecision"]["count"], 2, "{v}");
    assert_eq!(v["daysToDecision"]["median"], 0.0);
    assert_eq!(v["daysToAssignment"]["count"], 1, "{v}");
    let n = &v["notices"];
    assert_eq!(
        n["byClock"]["ecm-provider-told-of-assignment"]["onTime"], 1,
        "{v}"
    );
    assert_eq!(
        (n["late"].clone(), n["overdue"].clone()),
        (json!(0), json!(0)),
        "{v}"
    );
    assert_eq!(n["onTimeRatio"], 1.0, "{v}");
    // Nothing names a member: ids of plans, codes and counts only.
    let body = v.to_string();
    for phi in ["Rivera", "91000001A", "2010-03-15", "Alex"] {
        assert!(!body.contains(phi), "{phi} in {body}");
    }

    // Filters: plan, county (by name), period; unknown ones are named.
    let count = |path: &'static str| {
        let gw = &gw;
        async move {
            let (s, b, text) = gw.get(path, OPS_TOKEN).await;
            assert_eq!(s, 200, "{path}: {text}");
            b["referrals"].as_u64().unwrap()
        }
    };
    assert_eq!(count("/ops/referrals?mcp=mcp-a").await, 3);
    assert_eq!(count("/ops/referrals?mcp=mcp-b").await, 0);
    assert_eq!(count("/ops/referrals?county=Fresno").await, 3);
    assert_eq!(count("/ops/referrals?county=county-kern").await, 0);
    assert_eq!(count("/ops/referrals?to=2020-01-01").await, 0);
    let (s, b, _) = gw
        .get("/ops/referrals?mcp=ecm-compass&from=soon", OPS_TOKEN)
        .await;
    assert_eq!(s, 422, "{b}");
    let exprs: Vec<&str> = b["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert_eq!(exprs, ["mcp", "from"], "{b}");

    // A plan and a county see their own referrals' figures, and only
    // theirs: the filter is set to the caller, another plan or county is a
    // 403.
    let (s, b, text) = gw.get("/ops/referrals", MCP_A_TOKEN).await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(b["referrals"], 3, "{b}");
    assert_eq!(b["filter"]["mcp"], "mcp-a", "{b}");
    assert_eq!(gw.get("/ops/referrals?mcp=mcp-b", MCP_A_TOKEN).await.0, 403);
    let (s, b, text) = gw.get("/ops/referrals", COUNTY_TOKEN).await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(b["referrals"], 3, "{b}");
    let (s, _, _) = gw.get("/ops/referrals?county=Fresno", COUNTY_TOKEN).await;
    assert_eq!(s, 200);
    assert_eq!(
        gw.get("/ops/referrals?county=Kern", COUNTY_TOKEN).await.0,
        403
    );

    // The metrics carry the same figures; asking commits nothing.
    let mut commits = gw.running.store.metrics().commits;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = gw.running.store.metrics().commits;
        if now == commits {
            break;
        }
        commits = now;
    }
    let (s, _, metrics) = gw.get("/metrics", OPS_TOKEN).await;
    assert_eq!(s, 200);
    for line in [
        "cwsgw_referrals_open{status=\"assigned\",mcp=\"mcp-a\"} 1",
        "cwsgw_referrals_open{status=\"received\",mcp=\"mcp-a\"} 1",
        "cwsgw_referrals_closed{status=\"not-authorized\"} 1",
        "cwsgw_referral_notices_on_time_ratio 1.0",
        "cwsgw_referral_days{step=\"decision\",quantile=\"0.5\"} 0.0",
        "cwsgw_referrals_counted 3",
        "# TYPE cwsgw_referral_clocks_overdue gauge",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    let _ = gw.get("/ops/referrals?county=Fresno", OPS_TOKEN).await;
    assert_eq!(
        gw.running.store.metrics().commits,
        commits,
        "the view and the metrics only read"
    );
    gw.running.stop().await;

    // The command: the same figures from the store the gateway left.
    let cfg_s = cfg_path.to_str().unwrap();
    let (code, out, err) = run_bin(&["referrals", "--json", "--config", cfg_s]);
    assert_eq!(code, 0, "{err}");
    let cli: Value = serde_json::from_str(&out).unwrap();
    for k in [
        "referrals",
        "open",
        "closed",
        "daysToDecision",
        "daysToAssignment",
    ] {
        assert_eq!(cli[k], v[k], "{k}: {out}");
    }
    assert_eq!(cli["notices"]["onTimeRatio"], 1.0, "{out}");
    let (code, out, err) = run_bin(&["referrals", "--mcp", "mcp-a", "--config", cfg_s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("referrals 3 "), "{out}");
    assert!(
        out.contains("open loops:") && out.contains("assigned"),
        "{out}"
    );
    assert!(
        out.contains("notices on time                    100.0%"),
        "{out}"
    );
    let (code, _, err) = run_bin(&["referrals", "--county", "Nowhere", "--config", cfg_s]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: county names no"), "{err}");
    // It never creates a store.
    let empty = tempfile::tempdir().unwrap();
    let other = empty.path().join("gw.toml");
    std::fs::write(&other, common::config_text(empty.path(), "")).unwrap();
    let (code, out, err) = run_bin(&["referrals", "--config", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty() && err.contains("no store at"), "{err}");
    assert!(!empty.path().join("gw.db").exists());
}
