//! Oracles and exits (issue 14 items 10 and 11), through the real HTTP
//! interface: a caller who may not see a member learns nothing about them
//! from a status, a text or a noticeably different time; every exit that
//! returns patient data is decided and audited.

use std::time::{Duration, Instant};

use cws_gateway::api::route_scopes::{Exit, ROUTE_EXITS};
use cwsgw_scenario::mock::MockEndpoint;
use serde_json::{json, Value};

use crate::common::{self, repo, sha, COUNTY_TOKEN, OPS_TOKEN};

const KERN: &str = "oracles-kern-token";
const PLAN_A: &str = "oracles-plan-a-token";
const PLAN_B: &str = "oracles-plan-b-token";

struct Gw {
    running: cws_gateway::serve::Running,
    http: reqwest::Client,
    base: String,
    mocks: Vec<MockEndpoint>,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: u16,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

impl Gw {
    async fn start() -> Gw {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let mut mocks = Vec::new();
        for _ in 0..3 {
            mocks.push(MockEndpoint::start().await.unwrap());
        }
        let extra = format!(
            r#"
[[clients]]
id = "kern"
organization = "county-kern"
token_sha256 = "{kern}"

[[clients]]
id = "plan-a"
organization = "mcp-a"
token_sha256 = "{pa}"

[[clients]]
id = "plan-b"
organization = "mcp-b"
token_sha256 = "{pb}"
"#,
            kern = sha(KERN),
            pa = sha(PLAN_A),
            pb = sha(PLAN_B),
        );
        let mut text = common::config_text(dir.path(), &extra);
        for (org, mock) in ["mcp-a", "mcp-b", "ecm-compass"].into_iter().zip(&mocks) {
            let endpoint = format!("endpoint = \"{}\"", mock.base_url());
            text = common::org_with(&text, org, &endpoint);
        }
        let cfg =
            cws_gateway::config::Config::from_toml(&text, "test").expect("oracles test config");
        let running = cws_gateway::serve::start(cfg).await.unwrap();
        let base = format!("http://{}", running.http_addr);
        Gw {
            running,
            http: reqwest::Client::new(),
            base,
            mocks,
            _dir: dir,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            // A referral batch is NDJSON: one form, one line; a return
            // file is CSV, given as a JSON string.
            req = match (path.ends_with("/$batch"), b.as_str()) {
                (_, Some(csv)) if path.starts_with("/ecm/rtf") => {
                    req.header("content-type", "text/csv").body(csv.to_string())
                }
                (true, _) => req
                    .header("content-type", "application/x-ndjson")
                    .body(b.to_string()),
                _ => req
                    .header("content-type", "application/fhir+json")
                    .body(b.to_string()),
            };
        }
        let resp = req.send().await.unwrap();
        Answer {
            status: resp.status().as_u16(),
            text: resp.text().await.unwrap_or_default(),
        }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    async fn put(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.send(reqwest::Method::PUT, path, token, Some(body))
            .await
    }

    async fn event(&self, doc: &Value) {
        let a = self.post("/cws/events", COUNTY_TOKEN, doc).await;
        assert_eq!(a.status, 202, "{}", a.text);
    }

    async fn audits(&self) -> Vec<store::AuditRecord> {
        self.running
            .store
            .audit_list(0, 100_000, None, None)
            .await
            .unwrap()
    }

    /// Everything the mock endpoints have received so far.
    fn delivered(&self) -> usize {
        self.mocks.iter().map(|m| m.received().len()).sum()
    }
}

fn golden(t: &str, name: &str) -> Value {
    let p = repo()
        .join("tests/golden/case_event")
        .join(t)
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn pid(cin: &str) -> String {
    mapping::uuid5(&format!("patient|cin|{cin}"))
}

/// A Fresno child in plan A (91000001A) and a fee-for-service member
/// (92000002B), both sent by Fresno.
async fn members(gw: &Gw) {
    for (t, n) in [
        ("case.opened", "001-court-ordered-fr"),
        ("placement.changed", "001-resource-family"),
        ("enrollment.updated", "001-plan-a"),
        ("enrollment.updated", "002-fee-for-service"),
    ] {
        gw.event(&golden(t, n)).await;
    }
    common::wait_translated(gw.running.store.as_ref()).await;
}

fn referral(id: &str, cin: &str, referrer: &str) -> Value {
    json!({
        "referralId": id,
        "member": {"cin": cin, "name": {"given": ["Alex"], "family": "Rivera"}, "birthDate": "2010-03-15"},
        "referrer": {"organizationId": referrer, "name": "Dana Ortiz", "role": "social worker", "relationship": "county social worker"},
        "selfReferral": false,
        "populationsOfFocus": ["8"],
        "criteria": "in foster care",
        "expedited": false
    })
}

fn refusals_for(audits: &[store::AuditRecord], org: &str, patient: Option<&str>) -> usize {
    audits
        .iter()
        .filter(|r| {
            r.kind == "refusal"
                && r.recipient.as_deref() == Some(org)
                && patient.is_none_or(|p| r.patient_id.as_deref() == Some(p))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_errors_tell_a_stranger_nothing_about_the_member() {
    let gw = Gw::start().await;
    members(&gw).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = gw.delivered();
    let before = gw.audits().await;

    // Kern (not the member's county, no consent) and plan B (not the
    // member's plan): enrolled, fee-for-service and unknown members get
    // one and the same answer, naming no plan.
    let mut bodies = Vec::new();
    for (token, org) in [(KERN, "county-kern"), (PLAN_B, "mcp-b")] {
        for (i, cin) in ["91000001A", "92000002B", "99999999Z"].iter().enumerate() {
            let a = gw
                .post(
                    "/ecm/referrals",
                    token,
                    &referral(&format!("R-{org}-{i}"), cin, org),
                )
                .await;
            assert_eq!(a.status, 422, "{org} {cin}: {}", a.text);
            assert!(
                !a.text.contains("mcp-a") && !a.text.contains("fee-for-service"),
                "{}",
                a.text
            );
            assert_eq!(
                a.json()["issue"][0]["diagnostics"],
                cws_gateway::sources::referral::REFUSED_FOR_MEMBER
            );
            bodies.push(a.json());
        }
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");

    // The member's own county is told why (here: the consent it lacks,
    // naming the member's plan).
    let a = gw
        .post(
            "/ecm/referrals",
            COUNTY_TOKEN,
            &referral("R-fresno", "91000001A", "county-fresno"),
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.text);
    assert!(a.text.contains("mcp-a"), "{}", a.text);

    // Every refusal is audited, with the member named.
    let after = gw.audits().await;
    for (org, n) in [("county-kern", 3), ("mcp-b", 3), ("county-fresno", 1)] {
        assert_eq!(
            refusals_for(&after, org, None) - refusals_for(&before, org, None),
            n,
            "{org}"
        );
    }
    for cin in ["91000001A", "92000002B", "99999999Z"] {
        let p = pid(cin);
        assert!(
            refusals_for(&after, "county-kern", Some(&p))
                > refusals_for(&before, "county-kern", Some(&p)),
            "{cin}"
        );
    }
    // Nothing was journaled, routed or delivered for a refusal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.delivered(), delivered);
    gw.running.stop().await;
}

/// An accepted referral's answer is a disclosure: it shows the referrer
/// what it may see and is audited. A parent's self-referral through plan B
/// (the member is in plan A) answers plan B with its Task's status alone —
/// no ServiceRequest, no owner, nothing naming plan A — and the child's
/// county gets its referral whole; each answer is one AuditEvent listing
/// what was disclosed and withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_referral_shows_and_audits_only_what_the_referrer_may_see() {
    let gw = Gw::start().await;
    members(&gw).await;
    let child = pid("91000001A");
    let mut r = referral("R-self-b", "91000001A", "mcp-b");
    r["selfReferral"] = json!(true);
    r["referrer"] = json!({"organizationId": "mcp-b", "name": "Maria Rivera",
        "role": "member services", "relationship": "parent"});
    let before = gw.audits().await.len();
    let a = gw.post("/ecm/referrals", PLAN_B, &r).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert!(!a.text.contains("mcp-a"), "{}", a.text);
    let entries = a.json()["entry"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1, "{}", a.text);
    let task = &entries[0]["resource"];
    assert_eq!(task["resourceType"], "Task");
    assert_eq!(task["status"], "requested");
    assert!(task.get("owner").is_none(), "{task}");
    let (sr_id, task_id, _) = cws_gateway::sources::referral::ids("mcp-b", "R-self-b");
    let after = gw.audits().await;
    let mine: Vec<_> = after[before..]
        .iter()
        .filter(|r| r.recipient.as_deref() == Some("mcp-b"))
        .collect();
    assert_eq!(mine.len(), 1, "one AuditEvent for the answer");
    let rec = mine[0];
    assert_eq!(rec.kind, "disclosure");
    assert_eq!(rec.patient_id.as_deref(), Some(child.as_str()));
    assert_eq!(
        rec.body["outcomeDesc"],
        "disclosure: 1 disclosed, 1 withheld"
    );
    let outcome = |what: &str| {
        rec.body["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["what"]["reference"] == what)
            .map(|e| e["detail"][0]["valueString"].clone())
    };
    assert_eq!(
        outcome(&format!("ServiceRequest/{sr_id}")),
        Some(json!("withheld"))
    );
    assert_eq!(
        outcome(&format!("Task/{task_id}")),
        Some(json!("disclosed"))
    );

    // The child's county, with the family's referral consent: the whole
    // answer, audited as disclosed.
    gw.event(&golden("consent.recorded", "001-referral-verbal"))
        .await;
    common::wait_translated(gw.running.store.as_ref()).await;
    let before = gw.audits().await.len();
    let a = gw
        .post(
            "/ecm/referrals",
            COUNTY_TOKEN,
            &referral("R-fresno-ok", "91000001A", "county-fresno"),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert!(a.text.contains("Organization/mcp-a"), "{}", a.text);
    let types: Vec<String> = a.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
        .collect();
    assert!(types.contains(&"ServiceRequest".to_string()) && types.contains(&"Task".to_string()));
    let after = gw.audits().await;
    let mine: Vec<_> = after[before..]
        .iter()
        .filter(|r| r.recipient.as_deref() == Some("county-fresno"))
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].kind, "disclosure");
    assert_eq!(
        mine[0].body["outcomeDesc"],
        format!("disclosure: {} disclosed, 0 withheld", types.len())
    );
    gw.running.stop().await;
}

/// A patient, a referral ServiceRequest and a Task of Fresno's to plan A,
/// stored directly; no consent for anyone else.
async fn seeded_task(gw: &Gw, tag: &str) -> (String, String) {
    let p = format!("oracle-p-{tag}");
    let sr = format!("oracle-sr-{tag}");
    let t = format!("oracle-t-{tag}");
    common::seed(
        gw.running.store.as_ref(),
        vec![
            common::patient(&p, &format!("9300000{tag}"), "2010-03-15"),
            common::service_request(&sr, &p),
            common::task(&t, &p, &sr, "requested", "mcp-a"),
        ],
    )
    .await;
    (p, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_on_a_task_the_caller_may_not_see_is_the_404_of_an_absent_one() {
    let gw = Gw::start().await;
    let (p, t) = seeded_task(&gw, "1").await;
    let before = gw.audits().await;
    let update = |id: &str| json!({"resourceType": "Task", "id": id, "status": "accepted", "intent": "order"});
    let hidden = gw
        .put(&format!("/fhir/Task/{t}"), PLAN_B, &update(&t))
        .await;
    let absent = gw
        .put("/fhir/Task/oracle-t-none", PLAN_B, &update("oracle-t-none"))
        .await;
    assert_eq!(hidden.status, 404, "{}", hidden.text);
    assert_eq!(absent.status, 404, "{}", absent.text);
    assert_eq!(hidden.json(), absent.json());
    // Nothing changed, both refusals audited.
    let stored = gw
        .running
        .store
        .resource_get("Task", &t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body["status"], "requested");
    let after = gw.audits().await;
    assert_eq!(
        refusals_for(&after, "mcp-b", None) - refusals_for(&before, "mcp-b", None),
        2
    );
    assert!(refusals_for(&after, "mcp-b", Some(&p)) > 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.delivered(), 0);
    gw.running.stop().await;
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Withheld and missing reads: the same 404 and about the same time (the
/// missing id is audited like the withheld one). Prints both medians.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_and_missing_reads_answer_alike_in_body_and_time() {
    let gw = Gw::start().await;
    let (p, _) = seeded_task(&gw, "2").await;
    let n: usize = std::env::var("ORACLE_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let missing = "oracle-p-none";
    let withheld_path = format!("/fhir/Patient/{p}");
    let missing_path = format!("/fhir/Patient/{missing}");
    let w = gw.get(&withheld_path, PLAN_B).await;
    let m = gw.get(&missing_path, PLAN_B).await;
    assert_eq!((w.status, m.status), (404, 404));
    assert_eq!(w.text.replace(&p, "X"), m.text.replace(missing, "X"));
    let before = gw.audits().await.len();
    let (mut tw, mut tm) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t0 = Instant::now();
        let a = gw.get(&withheld_path, PLAN_B).await;
        tw.push(t0.elapsed());
        let t0 = Instant::now();
        let b = gw.get(&missing_path, PLAN_B).await;
        tm.push(t0.elapsed());
        assert_eq!((a.status, b.status), (404, 404));
    }
    let after = gw.audits().await.len();
    assert_eq!(
        after - before,
        2 * n,
        "every read, withheld or missing, audited"
    );
    let (mw, mm) = (median(&mut tw), median(&mut tm));
    println!(
        "oracle timing: {n} reads each, median withheld {:.3} ms, median missing {:.3} ms",
        mw.as_secs_f64() * 1e3,
        mm.as_secs_f64() * 1e3
    );
    let (lo, hi) = if mw < mm { (mw, mm) } else { (mm, mw) };
    // The same work on both paths: within a third of each other, or 0.15
    // ms on a loaded machine.
    assert!(
        hi.saturating_sub(lo) < Duration::from_micros(150).max(hi / 3),
        "withheld {mw:?} vs missing {mm:?}"
    );
    gw.running.stop().await;
}

/// Time `n` interleaved pairs of requests — `f(true)` the withheld one,
/// `f(false)` the absent one — check both give the same status and body,
/// print the medians and check they are close: within a third of each
/// other, or 0.15 ms on a loaded machine (the bound of the FHIR read test).
///
/// Warm-up pairs go first (connections, caches, prepared statements); the
/// pairs alternate which request goes first, so neither side always pays
/// for what the other leaves behind (a commit still syncing, a cold
/// cache); medians, so a descheduled request on a loaded machine moves
/// neither side.
async fn alike_in_time<F, Fut>(label: &str, n: usize, mut f: F)
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let w = f(true).await;
    let m = f(false).await;
    assert_eq!(w.status, m.status, "{label}: {} / {}", w.text, m.text);
    assert_eq!(w.text, m.text, "{label}: the same body");
    for _ in 0..WARM_UP_PAIRS {
        f(true).await;
        f(false).await;
    }
    // A time difference a caller could use is systematic: it shows in
    // every round. A spike on a shared, loaded machine shows in one. So a
    // round within the bound passes, and only ROUNDS rounds outside it fail.
    let mut last = String::new();
    for round in 1..=ROUNDS {
        let (mut tw, mut tm) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            for withheld in [i % 2 == 0, i % 2 == 1] {
                let t0 = Instant::now();
                let a = f(withheld).await;
                let took = t0.elapsed();
                assert_eq!(a.status, w.status, "{label}");
                if withheld {
                    tw.push(took);
                } else {
                    tm.push(took);
                }
            }
        }
        let (mw, mm) = (median(&mut tw), median(&mut tm));
        println!(
            "oracle timing, {label}, round {round}: {n} each, median withheld {:.3} ms, median absent {:.3} ms",
            mw.as_secs_f64() * 1e3,
            mm.as_secs_f64() * 1e3
        );
        let (lo, hi) = if mw < mm { (mw, mm) } else { (mm, mw) };
        if hi.saturating_sub(lo) < Duration::from_micros(150).max(hi / 3) {
            return;
        }
        last = format!("withheld {mw:?} vs absent {mm:?}");
    }
    panic!("{label}: in each of {ROUNDS} rounds, {last}");
}

/// Measurement rounds before a time difference counts as systematic.
const ROUNDS: usize = 3;

/// Pairs sent before [`alike_in_time`] measures.
const WARM_UP_PAIRS: usize = 10;

/// Beyond FHIR reads: a Task PUT, an eligibility request and a Consent
/// create about a member the caller may not see cost what the same request
/// about an absent one costs (the absent path makes the consent decision's
/// reads too), with the same status and body. Prints the medians
/// (`ORACLE_READS=300 cargo test --test it oracles::other_exits --
/// --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_exits_answer_withheld_and_absent_alike_in_time() {
    let gw = Gw::start().await;
    members(&gw).await;
    let (p, t) = seeded_task(&gw, "4").await;
    let n: usize = std::env::var("ORACLE_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let update = |id: &str| json!({"resourceType": "Task", "id": id, "status": "accepted", "intent": "order"});
    let (hidden, absent) = (update(&t), update("oracle-t-none"));
    alike_in_time("PUT /fhir/Task", n, |w| {
        let (path, body) = if w {
            (format!("/fhir/Task/{t}"), &hidden)
        } else {
            ("/fhir/Task/oracle-t-none".to_string(), &absent)
        };
        let gw = &gw;
        async move { gw.put(&path, PLAN_B, body).await }
    })
    .await;
    let child = pid("91000001A");
    alike_in_time("GET /cws/eligibility", n, |w| {
        let path = if w {
            format!("/cws/eligibility/{child}")
        } else {
            format!("/cws/eligibility/{}", pid("99999999Z"))
        };
        let gw = &gw;
        async move { gw.get(&path, KERN).await }
    })
    .await;
    let consent_about = |patient: &str| {
        common::consent(
            "oracle-c-time",
            patient,
            "release_of_information",
            "youth",
            &["county-kern"],
            &["case"],
        )
    };
    let (seen_not, none) = (consent_about(&p), consent_about("oracle-p-none"));
    alike_in_time("POST /fhir/Consent", n, |w| {
        let body = if w { &seen_not } else { &none };
        let gw = &gw;
        async move { gw.post("/fhir/Consent", KERN, body).await }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.delivered(), 0);
    gw.running.stop().await;
}

/// One request through an exit: method, route pattern, path, token, body,
/// expected status (0: any).
type Check = (
    &'static str,
    &'static str,
    String,
    &'static str,
    Option<Value>,
    u16,
);

/// Issue 14 item 11: one request through every exit the route table
/// declares as patient data yields an AuditEvent; the list below must cover
/// the table (a new patient-data route needs a check here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_patient_data_exit_writes_an_audit_event() {
    let gw = Gw::start().await;
    members(&gw).await;
    let (p, t) = seeded_task(&gw, "3").await;
    let child = pid("91000001A");
    let consent = common::consent(
        "oracle-c",
        &p,
        "release_of_information",
        "youth",
        &["county-kern"],
        &["case"],
    );
    // The month's return file, as plan B would send it, naming plan A's
    // referral Task: not plan B's, so refused and audited. The row's CIN
    // is any well-formed one; the audit names the Task's own member.
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let dialect = cws_gateway::sources::rtf::dialect::Dialect::load(
        None,
        cws_gateway::sources::rtf::dialect::DEFAULT,
        &cws_gateway::records::clr::Vocabulary::builtin(),
    )
    .unwrap();
    let return_file = format!(
        "{}\n93000003A,,,,mcp-a,,{t},,,,Authorized,{month}-01,\n",
        dialect.headers().join(",")
    );
    let checks: Vec<Check> = vec![
        (
            "GET",
            "/ops/rtf",
            format!("/ops/rtf?mcp=mcp-a&month={month}"),
            OPS_TOKEN,
            None,
            200,
        ),
        (
            "POST",
            "/ecm/rtf",
            "/ecm/rtf".into(),
            PLAN_B,
            Some(Value::String(return_file)),
            200,
        ),
        (
            "POST",
            "/ecm/referrals",
            "/ecm/referrals".into(),
            KERN,
            Some(referral("R-exit", "91000001A", "county-kern")),
            422,
        ),
        (
            "POST",
            "/ecm/referrals/$batch",
            "/ecm/referrals/$batch".into(),
            KERN,
            Some(referral("R-exit-batch", "91000001A", "county-kern")),
            200,
        ),
        (
            "GET",
            "/cws/eligibility/{patient_id}",
            format!("/cws/eligibility/{child}"),
            KERN,
            None,
            404,
        ),
        (
            "GET",
            "/ops/deadlines",
            "/ops/deadlines?all=true".into(),
            OPS_TOKEN,
            None,
            200,
        ),
        (
            "GET",
            "/ops/decisions",
            format!("/ops/decisions?patient={child}&recipient=mcp-b&purpose=pull"),
            OPS_TOKEN,
            None,
            200,
        ),
        (
            "GET",
            "/fhir/{rtype}",
            format!("/fhir/Patient?_id={p}"),
            PLAN_B,
            None,
            200,
        ),
        (
            "POST",
            "/fhir/{rtype}",
            "/fhir/Consent".into(),
            KERN,
            Some(consent.clone()),
            422,
        ),
        (
            "POST",
            "/fhir/{rtype}/$validate",
            "/fhir/Consent/$validate".into(),
            KERN,
            Some(consent),
            0,
        ),
        (
            "GET",
            "/fhir/{rtype}/{id}",
            format!("/fhir/Task/{t}"),
            PLAN_B,
            None,
            404,
        ),
        (
            "PUT",
            "/fhir/{rtype}/{id}",
            format!("/fhir/Task/{t}"),
            PLAN_B,
            Some(json!({"resourceType": "Task", "id": t, "status": "accepted", "intent": "order"})),
            404,
        ),
    ];
    let declared: std::collections::BTreeSet<(&str, &str)> = ROUTE_EXITS
        .iter()
        .filter(|r| matches!(r.exit, Exit::PatientData { .. }))
        .map(|r| (r.method, r.path))
        .collect();
    let checked: std::collections::BTreeSet<(&str, &str)> =
        checks.iter().map(|c| (c.0, c.1)).collect();
    assert_eq!(
        declared, checked,
        "every patient-data exit has a check here"
    );
    // Exits whose AuditEvent must name the seeded member: the file lists
    // them, the import refused their Task.
    let names_member: std::collections::BTreeSet<(&str, &str)> =
        [("GET", "/ops/rtf"), ("POST", "/ecm/rtf")].into();
    for (method, route, path, token, body, status) in checks {
        let before = gw.audits().await.len();
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let a = gw.send(m, &path, token, body.as_ref()).await;
        if status != 0 {
            assert_eq!(a.status, status, "{method} {route}: {}", a.text);
        }
        let after = gw.audits().await;
        assert!(after.len() > before, "{method} {route} wrote no AuditEvent");
        assert!(
            after[before..]
                .iter()
                .all(|r| r.body["resourceType"] == "AuditEvent"),
            "{method} {route}"
        );
        if names_member.contains(&(method, route)) {
            assert!(
                after[before..].iter().any(|r| {
                    store::audit::patients_of(r.patient_id.as_deref(), &r.body).contains(&p)
                }),
                "{method} {route}: no AuditEvent names Patient/{p}: {:?}",
                after[before..]
                    .iter()
                    .map(|r| r.body.to_string())
                    .collect::<Vec<_>>()
            );
        }
    }
    // The export's row and the import's refusal are in the member's own
    // accounting of disclosures.
    let mine = gw
        .running
        .store
        .audit_list(0, 100_000, Some(&p), None)
        .await
        .unwrap();
    let desc = |r: &store::AuditRecord| r.body["outcomeDesc"].as_str().unwrap_or("").to_string();
    assert!(
        mine.iter()
            .any(|r| r.kind == "read" && desc(r).contains("rtf export mcp-a")),
        "{:?}",
        mine.iter().map(desc).collect::<Vec<_>>()
    );
    assert!(
        mine.iter().any(|r| r.kind == "refusal"
            && r.recipient.as_deref() == Some("mcp-b")
            && desc(r).contains("rtf import")),
        "{:?}",
        mine.iter().map(desc).collect::<Vec<_>>()
    );
    gw.running.stop().await;
}
