//! Who may see what, through the real HTTP interface: the eligibility
//! endpoint as a consent-decided, audited disclosure; the scope each route
//! needs (one table, one layer); client-assertion replay and `nbf`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::common::{self, repo, sha, COUNTY_TOKEN, OPS_TOKEN, STMARY_TOKEN};

const KERN: &str = "access-kern-token";
const PLAN_A: &str = "access-plan-a-token";
const PLAN_B: &str = "access-plan-b-token";

fn extra() -> String {
    let jwks = repo()
        .join("tests/fixtures/smart/plan-a.jwks.json")
        .display()
        .to_string();
    format!(
        r#"
[[clients]]
id = "kern"
organization = "county-kern"
token_sha256 = "{kern}"

[[clients]]
id = "plan-a"
organization = "mcp-a"
token_sha256 = "{a}"

[[clients]]
id = "plan-b"
organization = "mcp-b"
token_sha256 = "{b}"

[[clients]]
id = "plan-a-backend"
organization = "mcp-a"
jwks_file = "{jwks}"
scopes = ["system/*.read", "system/Task.write"]

[[clients]]
id = "fresno-backend"
organization = "county-fresno"
jwks_file = "{jwks}"
"#,
        kern = sha(KERN),
        a = sha(PLAN_A),
        b = sha(PLAN_B),
    )
}

struct Gw {
    running: cws_gateway::serve::Running,
    http: reqwest::Client,
    base: String,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
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
        let cfg = cws_gateway::config::Config::from_toml(
            &common::config_text(dir.path(), &extra()),
            "test",
        )
        .expect("access test config");
        let running = cws_gateway::serve::start(cfg).await.unwrap();
        let base = format!("http://{}", running.http_addr);
        Gw {
            running,
            http: reqwest::Client::new(),
            base,
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
            req = req
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
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

    async fn event(&self, doc: &Value) {
        let a = self.post("/cws/events", COUNTY_TOKEN, doc).await;
        assert_eq!(a.status, 202, "{}", a.text);
    }

    /// The eligibility audit records of `patient`, oldest first.
    async fn eligibility_audits(&self, patient: &str) -> Vec<store::AuditRecord> {
        self.running
            .store
            .audit_list(0, 1000, Some(patient), None)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.body["outcomeDesc"]
                    .as_str()
                    .is_some_and(|d| d.contains("eligibility"))
            })
            .collect()
    }

    /// GET the eligibility of `patient` and check that exactly one audit
    /// record, of `kind` for `org`, was appended for it.
    async fn eligibility(&self, patient: &str, token: &str, org: &str, kind: &str) -> Answer {
        let before = self.eligibility_audits(patient).await.len();
        let a = self
            .get(&format!("/cws/eligibility/{patient}"), token)
            .await;
        let after = self.eligibility_audits(patient).await;
        assert_eq!(after.len(), before + 1, "one AuditEvent per answer");
        let last = after.last().unwrap();
        assert_eq!(last.recipient.as_deref(), Some(org));
        assert_eq!(last.kind, kind, "{}", last.body);
        assert_eq!(last.body["resourceType"], "AuditEvent");
        assert_eq!(
            last.body["entity"][0]["what"]["reference"],
            format!("Patient/{patient}")
        );
        a
    }
}

fn golden(t: &str, name: &str) -> Value {
    let p = repo()
        .join("tests/golden/case_event")
        .join(t)
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A child of Fresno County: an open case, a placement, plan A.
async fn fresno_child(gw: &Gw) -> String {
    for (t, n) in [
        ("case.opened", "001-court-ordered-fr"),
        ("placement.changed", "001-resource-family"),
        ("enrollment.updated", "001-plan-a"),
    ] {
        gw.event(&golden(t, n)).await;
    }
    mapping::uuid5("patient|cin|91000001A")
}

/// Headers without the ones that differ from one response to the next.
fn comparable(h: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| k.as_str() != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    v.sort();
    v
}

fn details(b: &Value) -> usize {
    b["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("text").is_some() || r.get("evidence").is_some())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_is_a_consent_decided_audited_disclosure() {
    let gw = Gw::start().await;
    let pid = fresno_child(&gw).await;

    // The child's county sees everything.
    let own = gw
        .eligibility(&pid, COUNTY_TOKEN, "county-fresno", "disclosure")
        .await;
    assert_eq!(own.status, 200, "{}", own.text);
    let full = own.json();
    assert_eq!(full["view"], "full");
    assert_eq!(full["eligible"], true);
    assert!(full["pofs"].as_array().unwrap().iter().any(|p| p == "8"));
    assert_eq!(details(&full), full["reasons"].as_array().unwrap().len());
    assert!(own.text.contains("placement"), "{}", own.text);

    // An unknown patient: the reference 404, audited too.
    let unknown = gw
        .eligibility("no-such-child", COUNTY_TOKEN, "county-fresno", "refusal")
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["resourceType"], "OperationOutcome");
    let same_as_unknown = |a: &Answer, who: &str| {
        assert_eq!(a.status, 404, "{who}: {}", a.text);
        assert_eq!(a.text, unknown.text, "{who}: same body");
        assert_eq!(
            comparable(&a.headers),
            comparable(&unknown.headers),
            "{who}: same headers"
        );
    };

    // Another county, the member's plan without any referral consent, and an
    // unrelated plan: exactly the unknown patient's answer.
    let kern = gw.eligibility(&pid, KERN, "county-kern", "refusal").await;
    same_as_unknown(&kern, "another county");
    let plan_a = gw.eligibility(&pid, PLAN_A, "mcp-a", "refusal").await;
    same_as_unknown(&plan_a, "plan A before the referral consent");

    // A verbal referral consent naming plan A: it may see the referral
    // package, so it sees eligible, POF codes and reason codes — not the
    // case, placement or aid code behind them.
    gw.event(&golden("consent.recorded", "001-referral-verbal"))
        .await;
    let a = gw.eligibility(&pid, PLAN_A, "mcp-a", "disclosure").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let summary = a.json();
    assert_eq!(summary["view"], "summary");
    assert_eq!(summary["eligible"], full["eligible"]);
    assert_eq!(summary["pofs"], full["pofs"]);
    let codes = |b: &Value| -> Vec<Value> {
        b["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["code"].clone())
            .collect()
    };
    assert_eq!(codes(&summary), codes(&full));
    assert_eq!(details(&summary), 0, "{summary}");
    for leak in ["aid code", "placement", "foster care", "Family Maintenance"] {
        assert!(!a.text.contains(leak), "{leak} in {}", a.text);
    }

    // An unrelated plan still learns nothing, not even that the child exists.
    let b = gw.eligibility(&pid, PLAN_B, "mcp-b", "refusal").await;
    same_as_unknown(&b, "an unrelated plan");

    // A release naming plan A and covering case and placement opens the
    // details behind the foster care reasons.
    let mut roi = golden("consent.recorded", "002-roi-behavioral-health");
    roi["eventId"] = json!("evt-access-roi");
    roi["consent"]["consentId"] = json!("CONS-ACCESS-1");
    roi["consent"]["grantor"] = json!({"role": "parent", "name": "Maria Rivera"});
    roi["consent"]["recipients"] = json!(["mcp-a"]);
    roi["consent"]["categories"] = json!(["case", "placement"]);
    gw.event(&roi).await;
    let a = gw.eligibility(&pid, PLAN_A, "mcp-a", "disclosure").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let with_release = a.json();
    assert_eq!(with_release["view"], "summary");
    assert!(details(&with_release) > 0, "{with_release}");

    // Operators read everything, audited as a read.
    let ops = gw.eligibility(&pid, OPS_TOKEN, "ops", "read").await;
    assert_eq!(ops.status, 200);
    assert_eq!(ops.json()["view"], "full");
    gw.running.stop().await;
}

// ---------------------------------------------------------------- scopes

fn key(file: &str) -> EncodingKey {
    let pem = std::fs::read(repo().join("tests/fixtures/smart").join(file)).unwrap();
    EncodingKey::from_rsa_pem(&pem).unwrap()
}

fn assertion(base: &str, iss: &str, jti: &str, claims: Value) -> String {
    let mut h = Header::new(Algorithm::RS384);
    h.kid = Some("rsa-1".into());
    let now = chrono::Utc::now().timestamp();
    let mut c = json!({"iss": iss, "sub": iss, "aud": format!("{base}/auth/token"), "exp": now + 120, "jti": jti});
    if let (Some(o), Some(x)) = (c.as_object_mut(), claims.as_object()) {
        o.extend(x.clone());
    }
    jsonwebtoken::encode(&h, &c, &key("rsa-private.pem")).unwrap()
}

async fn token_req(gw: &Gw, assertion: &str, scope: &str) -> (u16, Value) {
    let enc = |s: &str| s.replace('/', "%2F").replace(' ', "+").replace('*', "%2A");
    let body = format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}&scope={}",
        "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer",
        enc(scope),
    );
    let r = gw
        .http
        .post(format!("{}/auth/token", gw.base))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (
        s,
        serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
    )
}

async fn token(gw: &Gw, client: &str, jti: &str, scope: &str) -> (String, String) {
    let (s, b) = token_req(gw, &assertion(&gw.base, client, jti, json!({})), scope).await;
    assert_eq!(s, 200, "{b}");
    (
        b["access_token"].as_str().unwrap().to_string(),
        b["scope"].as_str().unwrap().to_string(),
    )
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

fn assert_forbidden(a: &Answer, what: &str) {
    assert_eq!(a.status, 403, "{what}: {}", a.text);
    let b = a.json();
    assert_eq!(b["resourceType"], "OperationOutcome", "{what}");
    assert_eq!(b["issue"][0]["code"], "forbidden", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_enforces_its_scope() {
    let gw = Gw::start().await;
    let pid = fresno_child(&gw).await;
    gw.event(&golden("consent.recorded", "001-referral-verbal"))
        .await;

    // A county backend with only Patient.read: no referral, no eligibility.
    let (read_only, granted) = token(&gw, "fresno-backend", "s1", "system/Patient.read").await;
    assert_eq!(granted, "system/Patient.read");
    let a = gw
        .post("/ecm/referrals", &read_only, &referral("R-S1"))
        .await;
    assert_forbidden(&a, "referral with Patient.read");
    let a = gw.get(&format!("/cws/eligibility/{pid}"), &read_only).await;
    assert_forbidden(&a, "eligibility with Patient.read");
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        4,
        "nothing journaled for the refused referral"
    );
    // Each scope refusal is an AuditEvent: caller, method and route pattern,
    // never the path (which carries the patient id).
    let refusals: Vec<String> = gw
        .running
        .store
        .audit_list(0, 1000, None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "refusal")
        .map(|r| r.body.to_string())
        .filter(|b| b.contains("insufficient-scope"))
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(
        refusals[0].contains("POST /ecm/referrals"),
        "{}",
        refusals[0]
    );
    assert!(
        refusals[1].contains("GET /cws/eligibility/{patient_id}") && !refusals[1].contains(&pid),
        "{}",
        refusals[1]
    );
    // The same backend with the referral's scope refers.
    let (writer, _) = token(&gw, "fresno-backend", "s2", "system/ServiceRequest.write").await;
    let a = gw.post("/ecm/referrals", &writer, &referral("R-S1")).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let task = a.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .find(|r| r["resourceType"] == "Task")
        .unwrap();
    let task_id = task["id"].as_str().unwrap().to_string();
    let mut accept = task.clone();
    accept["status"] = json!("accepted");
    let put = |tok: String| {
        let accept = accept.clone();
        let path = format!("/fhir/Task/{task_id}");
        let gw = &gw;
        async move {
            gw.send(reqwest::Method::PUT, &path, &tok, Some(&accept))
                .await
        }
    };

    // The plan's backend: Task.read alone cannot accept.
    let (task_read, granted) = token(&gw, "plan-a-backend", "s3", "system/Task.read").await;
    assert_eq!(granted, "system/Task.read");
    assert_forbidden(&put(task_read).await, "accept with Task.read");
    // Its configured scopes let it hold Task.write (not CarePlan.write).
    let (task_write, granted) = token(
        &gw,
        "plan-a-backend",
        "s4",
        "system/Task.write system/CarePlan.write",
    )
    .await;
    assert_eq!(granted, "system/Task.write");
    let a = put(task_write).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["status"], "accepted");

    // Operator-only endpoints are scoped too (operators' static token passes).
    let (metrics_tok, _) = token(&gw, "plan-a-backend", "s5", "system/Task.read").await;
    assert_forbidden(&gw.get("/metrics", &metrics_tok).await, "metrics");
    assert_eq!(gw.get("/ops/deadlines", OPS_TOKEN).await.status, 200);
    // No credential is still 401, whatever the scope table says.
    let a = gw
        .http
        .post(format!("{}/ecm/referrals", gw.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status().as_u16(), 401);
    gw.running.stop().await;
}

/// Issue 14: every refusal is an AuditEvent, including a 403 a handler
/// decides (the caller's organization kind, a referrer that is not the
/// caller): one record per refusal, naming the caller, the method and the
/// route pattern — never the path, which can carry a patient id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_403_is_audited_once() {
    let gw = Gw::start().await;
    let pid = fresno_child(&gw).await;
    let refusals = |gw: &Gw| {
        let store = gw.running.store.clone();
        async move {
            store
                .audit_list(0, 1000, None, None)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.kind == "refusal")
                .collect::<Vec<_>>()
        }
    };
    let before = refusals(&gw).await.len();
    // A hospital (kind adt_source) asks for eligibility and for a Task.
    let a = gw
        .get(&format!("/cws/eligibility/{pid}"), STMARY_TOKEN)
        .await;
    assert_forbidden(&a, "a hospital's eligibility request");
    let a = gw.get("/fhir/Task/some-task", STMARY_TOKEN).await;
    assert_forbidden(&a, "a hospital's Task read");
    // A plan reads the audit trail (operators only).
    let a = gw.get("/fhir/AuditEvent", PLAN_B).await;
    assert_forbidden(&a, "a plan's AuditEvent search");
    // A county posts a referral in another organization's name.
    let mut r = referral("R-403");
    r["referrer"]["organizationId"] = json!("county-kern");
    let a = gw.post("/ecm/referrals", COUNTY_TOKEN, &r).await;
    assert_forbidden(&a, "a referral in another organization's name");
    let after = refusals(&gw).await;
    assert_eq!(after.len(), before + 4, "one refusal per 403");
    let new: Vec<(Option<String>, String)> = after[before..]
        .iter()
        .map(|r| {
            (
                r.recipient.clone(),
                r.body["outcomeDesc"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        new,
        vec![
            (
                Some("st-mary".to_string()),
                "refusal: organization-kind adt_source GET /cws/eligibility/{patient_id}"
                    .to_string()
            ),
            (
                Some("st-mary".to_string()),
                "refusal: organization-kind adt_source GET /fhir/{rtype}/{id}".to_string()
            ),
            (
                Some("mcp-b".to_string()),
                "refusal: organization-kind mcp GET /fhir/{rtype}".to_string()
            ),
            (
                Some("county-fresno".to_string()),
                "refusal: forbidden POST /ecm/referrals".to_string()
            ),
        ]
    );
    for r in &after[before..] {
        assert!(!r.body.to_string().contains(&pid), "{}", r.body);
        assert_eq!(r.body["outcome"], "4");
    }
    gw.running.stop().await;
}

/// A child under 12 with no parent or legal guardian: nobody the SW can
/// record grants the referral consent (not the SW, not the court, and
/// `caregiver` is no grantor role), so the county's referral with such a
/// consent is refused at `consent.grantor.role` and nothing is journaled.
/// The caregiver's way is a self-referral (Guide for CWS, "Consent": a
/// caregiver referring themselves needs no referral consent), made
/// through a plan, never the county; it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_under_12_without_a_parent_is_referred_by_the_caregiver_not_the_sw() {
    let gw = Gw::start().await;
    let _pid = fresno_child(&gw).await;
    let journaled = gw.running.store.journal_stats().await.unwrap().total;
    let under_12 = |id: &str, role: &str| {
        let mut r = referral(id);
        r["member"]["birthDate"] = json!("2018-04-02");
        r["consent"] = json!({"obtainedOn": "2026-01-12", "obtainedBy": "Dana Ortiz",
            "grantor": {"role": role, "name": "Dana Ortiz"},
            "explained": {"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}});
        r
    };
    for (i, role) in ["social_worker", "court", "caregiver"].iter().enumerate() {
        let a = gw
            .post(
                "/ecm/referrals",
                COUNTY_TOKEN,
                &under_12(&format!("R-U12-{i}"), role),
            )
            .await;
        assert_eq!(a.status, 422, "{role}: {}", a.text);
        assert_eq!(
            a.json()["issue"][0]["expression"][0],
            "consent.grantor.role",
            "{role}: {}",
            a.text
        );
    }
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        journaled,
        "nothing journaled for the refused referrals"
    );
    // The caregiver calls plan B's member services: a self-referral,
    // made to the member's plan, with no referral consent.
    let mut r = referral("R-U12-CAREGIVER");
    r["member"]["birthDate"] = json!("2018-04-02");
    r["selfReferral"] = json!(true);
    r["referrer"] = json!({"organizationId": "mcp-b", "name": "Rosa Vega",
        "role": "member services", "relationship": "caregiver"});
    let a = gw.post("/ecm/referrals", PLAN_B, &r).await;
    assert_eq!(a.status, 201, "{}", a.text);
    // The same from the county is not a self-referral.
    r["referralId"] = json!("R-U12-COUNTY");
    r["referrer"]["organizationId"] = json!("county-fresno");
    let a = gw.post("/ecm/referrals", COUNTY_TOKEN, &r).await;
    assert_eq!(a.status, 422, "{}", a.text);
    assert_eq!(a.json()["issue"][0]["expression"][0], "selfReferral");
    gw.running.stop().await;
}

/// A referral consent recorded before the four "explained" flags were
/// required (no `consent-explained` extension) counts for nothing: plan A,
/// which it names, does not see the child's eligibility, the county's
/// referral relying on it is refused at `consent`; the same consent
/// recorded again, showing the four flags, opens both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referral_consent_without_the_explained_flags_counts_for_nothing() {
    let gw = Gw::start().await;
    let pid = fresno_child(&gw).await;
    // As a consent.recorded of an earlier version stored it: no flags.
    let mut old = common::consent(
        "old-referral-consent",
        &pid,
        "referral_verbal",
        "parent",
        &["mcp-a"],
        &["referral"],
    );
    old["extension"]
        .as_array_mut()
        .unwrap()
        .retain(|e| !e["url"].as_str().unwrap().ends_with("/consent-explained"));
    common::seed(gw.running.store.as_ref(), vec![old]).await;
    let a = gw.eligibility(&pid, PLAN_A, "mcp-a", "refusal").await;
    assert_eq!(a.status, 404, "{}", a.text);
    let a = gw
        .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-OLD-CONSENT"))
        .await;
    assert_eq!(a.status, 422, "{}", a.text);
    assert_eq!(
        a.json()["issue"][0]["expression"][0],
        "consent",
        "{}",
        a.text
    );
    // Recorded again by the SW, showing what was explained: it counts.
    gw.event(&golden("consent.recorded", "001-referral-verbal"))
        .await;
    let a = gw.eligibility(&pid, PLAN_A, "mcp-a", "disclosure").await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = gw
        .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-NEW-CONSENT"))
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    gw.running.stop().await;
}

// ---------------------------------------------------------------- assertions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_cannot_be_replayed_within_the_leeway_or_used_early() {
    let gw = Gw::start().await;
    let now = chrono::Utc::now().timestamp();
    let scope = "system/Task.read";
    // Expired 10 s ago, within the 30 s leeway: accepted once…
    let late = assertion(
        &gw.base,
        "plan-a-backend",
        "late-1",
        json!({"exp": now - 10}),
    );
    let (s, b) = token_req(&gw, &late, scope).await;
    assert_eq!(s, 200, "{b}");
    // …and refused when replayed, although its exp has passed.
    let (s, b) = token_req(&gw, &late, scope).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    // nbf beyond the leeway: not valid yet.
    let early = assertion(
        &gw.base,
        "plan-a-backend",
        "early-1",
        json!({"nbf": now + 90}),
    );
    let (s, b) = token_req(&gw, &early, scope).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert!(
        b["error_description"].as_str().unwrap().contains("nbf"),
        "{b}"
    );
    // nbf within the leeway is clock skew: accepted.
    let skewed = assertion(
        &gw.base,
        "plan-a-backend",
        "skew-1",
        json!({"nbf": now + 5}),
    );
    let (s, b) = token_req(&gw, &skewed, scope).await;
    assert_eq!(s, 200, "{b}");
    gw.running.stop().await;
}
