//! Referral intake from every community source (issue 17): a `referrer`
//! organization (a hospital) posting referrals and confined to them, batch
//! intake (NDJSON and CSV) through the same path as a single POST, the
//! complete referral as the plan's endpoint receives it, the plan and a
//! preferred provider both receiving a referral, and streamlined
//! authorization per Population of Focus — all through the real HTTP
//! interface.

use std::path::Path;

use cws_gateway::config::Config;
use cws_gateway::serve::Running;
use cwsgw_scenario::mock::MockEndpoint;
use serde_json::{json, Value};

use crate::common::{self, sha, COUNTY_TOKEN};

const MERCY_TOKEN: &str = "mercy-referrer-token";
const LHD_TOKEN: &str = "lhd-ccs-token";
const SMHS_TOKEN: &str = "smhs-token";
const COMPASS_TOKEN: &str = "compass-intake-token";

/// Organizations and clients beside the shared fixture: a community
/// referrer (a hospital), and ECM providers of Figure 5 provider types.
fn extra() -> String {
    format!(
        r#"
[[organizations]]
id = "mercy-hospital"
kind = "referrer"
name = "Mercy Community Hospital"

[[organizations]]
id = "ecm-lhd"
kind = "ecm_provider"
name = "County Health CCS"
mcps = ["mcp-a"]
pofs = ["7"]
provider_type = "local_health_department_ccs"

[[organizations]]
id = "ecm-smhs"
kind = "ecm_provider"
name = "Valley Behavioral Health"
mcps = ["mcp-a"]
pofs = ["3"]
provider_type = "specialty_behavioral_health"

[[clients]]
id = "mercy"
organization = "mercy-hospital"
token_sha256 = "{m}"

[[clients]]
id = "lhd"
organization = "ecm-lhd"
token_sha256 = "{l}"

[[clients]]
id = "smhs"
organization = "ecm-smhs"
token_sha256 = "{s}"

[[clients]]
id = "compass-intake"
organization = "ecm-compass"
token_sha256 = "{c}"
"#,
        m = sha(MERCY_TOKEN),
        l = sha(LHD_TOKEN),
        s = sha(SMHS_TOKEN),
        c = sha(COMPASS_TOKEN),
    )
}

struct Gw {
    running: Running,
    http: reqwest::Client,
    mcp_a: MockEndpoint,
    compass: MockEndpoint,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path, mcp_a: &MockEndpoint, compass: &MockEndpoint) -> Config {
    let mut text = common::config_text(dir, &extra());
    text = common::org_with(
        &text,
        "mcp-a",
        &format!("endpoint = \"{}\"", mcp_a.base_url()),
    );
    text = common::org_with(
        &text,
        "ecm-compass",
        &format!("endpoint = \"{}\"", compass.base_url()),
    );
    text.push_str(
        "\n[delivery]\nmax_attempts = 3\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\ntimeout_ms = 1000\nconnect_timeout_ms = 500\nlease_ms = 5000\nshutdown_grace_ms = 500\nconcurrency = 4\n",
    );
    Config::from_toml(&text, "test").expect("referral intake test config")
}

impl Gw {
    async fn start() -> Gw {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mcp_a = MockEndpoint::start().await.unwrap();
        let compass = MockEndpoint::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let running = cws_gateway::serve::start(config(dir.path(), &mcp_a, &compass))
            .await
            .unwrap();
        Gw {
            running,
            http: reqwest::Client::new(),
            mcp_a,
            compass,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    async fn post_raw(&self, path: &str, token: &str, ct: &str, body: String) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, token, "application/fhir+json", body.to_string())
            .await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn attestation() -> Value {
    json!({"obtainedOn": "2026-01-12", "obtainedBy": "J. Park, RN", "grantor": {"role": "parent", "name": "Maria Lopez"},
           "explained": {"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}})
}

/// A hospital's community referral of a child the county never sent.
fn hospital_referral(id: &str, cin: &str) -> Value {
    json!({
        "referralId": id,
        "member": {"cin": cin, "name": {"given": ["Rosa"], "family": "Lopez"}, "birthDate": "2014-06-02",
                   "phone": "559-555-0111", "preferredLanguage": "Spanish",
                   "address": {"line": ["12 Elm St"], "city": "Fresno", "state": "CA", "postalCode": "93721", "county": "Fresno"}},
        "referrer": {"organizationId": "mercy-hospital", "name": "Jamie Park", "role": "ED social worker",
                     "phone": "559-555-0199", "email": "jpark@mercy.example.org", "relationship": "hospital social worker"},
        "selfReferral": false,
        "populationsOfFocus": ["3"],
        "criteria": "three ED visits this year for asthma and anxiety; family needs help coordinating care",
        "criteriaCodes": ["ed-utilization"],
        "expedited": true,
        "mcpId": "mcp-a",
        "currentCareManagers": [{"program": "other", "name": "Lee Wong", "organizationName": "Fresno Youth Outreach", "phone": "559-555-0123"}],
        "consent": attestation()
    })
}

/// Wait until `mock` received a Bundle mentioning `needle`; that Bundle.
async fn received(mock: &MockEndpoint, needle: &str) -> Value {
    for _ in 0..200 {
        if let Some(r) = mock
            .received()
            .into_iter()
            .find(|r| r.body.to_string().contains(needle))
        {
            return r.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing mentioning {needle} was delivered");
}

fn entry<'a>(bundle: &'a Value, t: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == t)
        .unwrap_or_else(|| panic!("no {t} in {bundle}"))
}

fn task_id(answer: &Value) -> String {
    entry(answer, "Task")["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referrer_refers_reads_its_own_referral_and_nothing_else() {
    let gw = Gw::start().await;
    let (s, b) = gw
        .post(
            "/ecm/referrals",
            MERCY_TOKEN,
            &hospital_referral("MH-1", "93000001A"),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let task = task_id(&b);
    // Its own referral's Task: readable (status, as the consent rules show
    // a requester).
    let (s, t) = gw.get(&format!("/fhir/Task/{task}"), MERCY_TOKEN).await;
    assert_eq!((s, t["status"].as_str()), (200, Some("requested")), "{t}");
    // Another organization's referral: not found for it.
    let county = json!({
        "referralId": "C-1",
        "member": {"cin": "93000002A", "name": {"family": "Diaz"}, "birthDate": "2012-01-01"},
        "referrer": {"organizationId": "county-fresno", "name": "Dana Ortiz", "role": "social worker", "relationship": "county social worker"},
        "selfReferral": false, "populationsOfFocus": ["8"], "expedited": false, "mcpId": "mcp-a", "consent": attestation()
    });
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &county).await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = gw
        .get(&format!("/fhir/Task/{}", task_id(&b)), MERCY_TOKEN)
        .await;
    assert_eq!(s, 404);
    // Every other endpoint: 403, each audited as a refusal of its kind.
    let before = refusal_count(&gw).await;
    let pid = entry(&b, "Task")["for"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    for (method, path) in [
        ("GET", format!("/fhir/{pid}")),
        ("GET", "/fhir/Task?status=requested".to_string()),
        ("GET", "/ops/referrals".to_string()),
        ("GET", "/ops/deadlines".to_string()),
        ("POST", "/cws/events".to_string()),
        ("PUT", format!("/fhir/Task/{task}")),
    ] {
        let req = match method {
            "GET" => gw.http.get(gw.url(&path)),
            "PUT" => gw.http.put(gw.url(&path)).body("{}"),
            _ => gw.http.post(gw.url(&path)).body("{}"),
        };
        let resp = req
            .bearer_auth(MERCY_TOKEN)
            .header("content-type", "application/fhir+json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{method} {path}");
    }
    assert_eq!(
        refusal_count(&gw).await - before,
        6,
        "one refusal audited per 403"
    );
    // A professional referrer cannot call its referral a self-referral.
    let mut selfref = hospital_referral("MH-2", "93000003A");
    selfref["selfReferral"] = json!(true);
    let (s, b) = gw.post("/ecm/referrals", MERCY_TOKEN, &selfref).await;
    assert_eq!(
        (s, b["issue"][0]["expression"][0].as_str()),
        (422, Some("selfReferral")),
        "{b}"
    );
    // Nor refer without the youth's or family's referral consent.
    let mut unconsented = hospital_referral("MH-3", "93000004A");
    unconsented.as_object_mut().unwrap().remove("consent");
    let (s, b) = gw.post("/ecm/referrals", MERCY_TOKEN, &unconsented).await;
    assert_eq!(s, 422, "{b}");
    gw.running.stop().await;
}

async fn refusal_count(gw: &Gw) -> usize {
    gw.running
        .store
        .audit_list(0, 5000, None, None)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.kind == "refusal" && a.body.to_string().contains("referrer"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_receives_the_complete_referral() {
    let gw = Gw::start().await;
    let (s, b) = gw
        .post(
            "/ecm/referrals",
            MERCY_TOKEN,
            &hospital_referral("MH-10", "93000010A"),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let task = task_id(&b);
    let got = received(&gw.mcp_a, &task).await;
    let sr = entry(&got, "ServiceRequest");
    // The referrer: a PractitionerRole of the hospital, with its contact.
    let contained = sr["contained"].as_array().unwrap();
    let who = contained.iter().find(|c| c["id"] == "referrer").unwrap();
    assert_eq!(who["resourceType"], "PractitionerRole");
    assert_eq!(who["practitioner"]["display"], "Jamie Park");
    assert_eq!(who["code"][0]["text"], "ED social worker");
    assert_eq!(
        who["organization"]["reference"],
        "Organization/mercy-hospital"
    );
    let tel = who["telecom"].to_string();
    assert!(
        tel.contains("559-555-0199") && tel.contains("jpark@mercy.example.org"),
        "{tel}"
    );
    assert!(sr["extension"].to_string().contains("#referrer"), "{sr}");
    assert_eq!(sr["requester"]["reference"], "Organization/mercy-hospital");
    // The criteria: POF code, coded criterion and the free text; expedited.
    let reasons = sr["reasonCode"].to_string();
    assert!(
        reasons.contains("\"3\"")
            && reasons.contains("ed-utilization")
            && reasons.contains("three ED visits"),
        "{reasons}"
    );
    assert_eq!(sr["priority"], "urgent");
    // The care manager the gateway does not know: contained, with contact.
    let cm = contained
        .iter()
        .find(|c| c["id"] == "care-manager-1")
        .unwrap();
    assert_eq!(cm["practitioner"]["display"], "Lee Wong");
    assert_eq!(cm["organization"]["display"], "Fresno Youth Outreach");
    assert!(cm["telecom"].to_string().contains("559-555-0123"));
    assert!(
        sr["supportingInfo"].to_string().contains("#care-manager-1"),
        "{sr}"
    );
    // The member: phone and preferred language in the Patient.
    let p = entry(&got, "Patient");
    assert!(p["telecom"].to_string().contains("559-555-0111"), "{p}");
    assert_eq!(p["communication"][0]["language"]["text"], "Spanish");
    // A parent referring: a RelatedPerson with relationship and contact.
    let mut parent = hospital_referral("MH-11", "93000011A");
    parent["referrer"] = json!({"organizationId": "mercy-hospital", "name": "Maria Lopez", "role": "mother",
        "phone": "559-555-0177", "email": "maria@example.org", "relationship": "parent"});
    let (s, b) = gw.post("/ecm/referrals", MERCY_TOKEN, &parent).await;
    assert_eq!(s, 201, "{b}");
    let got = received(&gw.mcp_a, &task_id(&b)).await;
    let sr = entry(&got, "ServiceRequest");
    let who = &sr["contained"][0];
    assert_eq!(who["resourceType"], "RelatedPerson");
    assert_eq!(who["relationship"][0]["coding"][0]["code"], "PRN");
    assert_eq!(who["name"][0]["text"], "Maria Lopez");
    assert!(who["telecom"].to_string().contains("maria@example.org"));
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_and_the_preferred_provider_both_receive_the_referral() {
    let gw = Gw::start().await;
    let mut r = hospital_referral("MH-20", "93000020A");
    r["populationsOfFocus"] = json!(["8"]);
    r["preferredEcmProviderId"] = json!("ecm-compass");
    let (s, b) = gw.post("/ecm/referrals", MERCY_TOKEN, &r).await;
    assert_eq!(s, 201, "{b}");
    let task = task_id(&b);
    let to_plan = received(&gw.mcp_a, &task).await;
    let to_provider = received(&gw.compass, &task).await;
    assert_eq!(
        entry(&to_plan, "ServiceRequest")["performer"][0]["reference"],
        "Organization/ecm-compass"
    );
    assert_eq!(entry(&to_provider, "Task")["id"], task.as_str());
    // One package each: the plan's outbox holds one referral delivery.
    let rows = gw
        .running
        .store
        .outbox_list(None, Some("mcp-a"), 100)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Without a preferred provider the plan is the performer and still
    // gets one delivery, not two.
    let (s, b) = gw
        .post(
            "/ecm/referrals",
            MERCY_TOKEN,
            &hospital_referral("MH-21", "93000021A"),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    received(&gw.mcp_a, &task_id(&b)).await;
    let rows = gw
        .running
        .store
        .outbox_list(None, Some("mcp-a"), 100)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    gw.running.stop().await;
}

/// Whether the stored Task of a referral's answer is streamlined.
async fn streamlined(gw: &Gw, answer: &Value) -> bool {
    let t = gw
        .running
        .store
        .resource_get("Task", &task_id(answer))
        .await
        .unwrap()
        .unwrap();
    t.body["extension"]
        .to_string()
        .contains("streamlined-authorization")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamlined_authorization_follows_figure_5_per_pof() {
    let gw = Gw::start().await;
    // (token, organization, claimed POF, streamlined?)
    let rows = [
        (LHD_TOKEN, "ecm-lhd", "7", true),
        (SMHS_TOKEN, "ecm-smhs", "3", true),
        // Contracted for POF 3 only: not for POF 8, though the type pairs.
        (SMHS_TOKEN, "ecm-smhs", "8", false),
        // A CCS program is not paired with POF 3.
        (LHD_TOKEN, "ecm-lhd", "3", false),
        (COMPASS_TOKEN, "ecm-compass", "8", true),
    ];
    for (i, (token, org, pof, want)) in rows.into_iter().enumerate() {
        let mut r = hospital_referral(&format!("SL-{i}"), &format!("9400000{i}A"));
        r["referrer"]["organizationId"] = json!(org);
        r["populationsOfFocus"] = json!([pof]);
        let (s, b) = gw.post("/ecm/referrals", token, &r).await;
        assert_eq!(s, 201, "{org} POF {pof}: {b}");
        assert_eq!(streamlined(&gw, &b).await, want, "{org} POF {pof}");
    }
    gw.running.stop().await;
}

fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|l| l.to_string() + "\n").collect()
}

fn statuses(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_line_and_replays_idempotently() {
    let gw = Gw::start().await;
    let mut bad = hospital_referral("MH-B2", "93000102A");
    bad["member"]["cin"] = json!("not-a-cin");
    let body = ndjson(&[
        hospital_referral("MH-B1", "93000101A"),
        bad,
        hospital_referral("MH-B3", "93000103A"),
    ]);
    let (s, b) = gw
        .post_raw(
            "/ecm/referrals/$batch",
            MERCY_TOKEN,
            "application/x-ndjson",
            body.clone(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["type"], "batch-response");
    assert_eq!(
        statuses(&b),
        ["201 Created", "422 Unprocessable Entity", "201 Created"]
    );
    let e = &b["entry"][1];
    assert!(
        e["extension"].to_string().contains("\"valueInteger\":2"),
        "{e}"
    );
    assert_eq!(
        e["response"]["outcome"]["issue"][0]["expression"][0],
        "member.cin"
    );
    assert!(b["entry"][0]["response"]["location"]
        .as_str()
        .unwrap()
        .starts_with("ServiceRequest/"));
    // The same file again: the accepted lines are replays, nothing new.
    let journaled = gw.running.store.journal_stats().await.unwrap().total;
    let (s, again) = gw
        .post_raw(
            "/ecm/referrals/$batch",
            MERCY_TOKEN,
            "application/x-ndjson",
            body,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        statuses(&again),
        ["200 OK", "422 Unprocessable Entity", "200 OK"]
    );
    assert_eq!(
        b["entry"][0]["response"]["location"],
        again["entry"][0]["response"]["location"]
    );
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        journaled
    );
    // A line naming another organization as referrer: 403 for that line.
    let mut other = hospital_referral("MH-B4", "93000104A");
    other["referrer"]["organizationId"] = json!("county-fresno");
    let (_, b) = gw
        .post_raw(
            "/ecm/referrals/$batch",
            MERCY_TOKEN,
            "application/x-ndjson",
            ndjson(&[other]),
        )
        .await;
    assert_eq!(statuses(&b), ["403 Forbidden"]);
    // CSV: the documented columns, one bad row.
    let csv = "referralId,memberCin,memberGiven,memberFamily,memberBirthDate,memberPhone,memberPreferredLanguage,referrerName,referrerRole,referrerPhone,referrerRelationship,selfReferral,populationsOfFocus,criteriaText,expedited,mcpId,consentObtainedOn,consentObtainedBy,consentGrantorRole,consentGrantorName,consentExplained\n\
MH-C1,93000111A,Ana,Ruiz,2013-02-03,559-555-0150,Spanish,Jamie Park,ED social worker,559-555-0199,hospital social worker,false,3,frequent ED use,false,mcp-a,2026-01-12,J. Park,parent,Rosa Ruiz,true\n\
MH-C2,93000112A,Ben,Ruiz,2013-02-03,,,Jamie Park,ED social worker,,hospital social worker,maybe,3,,false,mcp-a,2026-01-12,J. Park,parent,Rosa Ruiz,true\n";
    let (s, b) = gw
        .post_raw(
            "/ecm/referrals/$batch",
            MERCY_TOKEN,
            "text/csv",
            csv.to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(statuses(&b), ["201 Created", "422 Unprocessable Entity"]);
    assert!(b["entry"][1]["extension"]
        .to_string()
        .contains("\"valueInteger\":3"));
    let got = received(&gw.mcp_a, "MH-C1").await;
    assert!(entry(&got, "Patient")["communication"]
        .to_string()
        .contains("Spanish"));
    // Another format: 415; an organization kind that may not refer: 403.
    let (s, _) = gw
        .post_raw(
            "/ecm/referrals/$batch",
            MERCY_TOKEN,
            "text/plain",
            "x".into(),
        )
        .await;
    assert_eq!(s, 415);
    // An empty file, or a CSV header with no row: a 422 naming the body,
    // not an empty success.
    for (ct, body) in [
        ("application/x-ndjson", String::new()),
        ("application/x-ndjson", "\n\n".to_string()),
        (
            "text/csv",
            csv.lines().next().unwrap_or_default().to_string(),
        ),
    ] {
        let (s, b) = gw
            .post_raw("/ecm/referrals/$batch", MERCY_TOKEN, ct, body)
            .await;
        assert_eq!(s, 422, "{ct}: {b}");
        assert!(b.to_string().contains("no referral"), "{b}");
    }
    let (s, _) = gw
        .post_raw(
            "/ecm/referrals/$batch",
            common::STMARY_TOKEN,
            "text/csv",
            csv.to_string(),
        )
        .await;
    assert_eq!(s, 403);
    gw.running.stop().await;
}

fn case_event(t: &str, n: &str) -> Value {
    let p = common::repo()
        .join("tests/golden/case_event")
        .join(t)
        .join(format!("{n}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_members_patient_gains_contact_details_and_keeps_the_countys_name() {
    let gw = Gw::start().await;
    for (t, n) in [
        ("case.opened", "001-court-ordered-fr"),
        ("enrollment.updated", "001-plan-a"),
    ] {
        let (s, b) = gw
            .post("/cws/events", COUNTY_TOKEN, &case_event(t, n))
            .await;
        assert_eq!(s, 202, "{t}: {b}");
    }
    let r = json!({
        "referralId": "C-K1",
        "member": {"cin": "91000001A", "name": {"given": ["Alexander"], "family": "Rivers"}, "birthDate": "2010-03-15",
                   "phone": "559-555-0101", "preferredLanguage": "Spanish",
                   "address": {"line": ["44 Olive Ave"], "city": "Fresno", "state": "CA", "county": "Fresno"}},
        "referrer": {"organizationId": "county-fresno", "name": "Dana Ortiz", "role": "social worker", "relationship": "county social worker"},
        "selfReferral": false, "populationsOfFocus": ["8"], "expedited": false, "consent": attestation()
    });
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &r).await;
    assert_eq!(s, 201, "{b}");
    let pid = entry(&b, "Task")["for"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_string();
    let p = gw
        .running
        .store
        .resource_get("Patient", &pid)
        .await
        .unwrap()
        .unwrap()
        .body;
    // The county's name and birth date stand; the referral's differing
    // name is not taken.
    assert_eq!(p["name"][0]["family"], "Rivera", "{p}");
    assert!(!p.to_string().contains("Rivers"), "{p}");
    assert_eq!(p["birthDate"], "2010-03-15");
    // The contact details it lacked are added.
    assert!(p["telecom"].to_string().contains("559-555-0101"), "{p}");
    assert_eq!(p["communication"][0]["language"]["text"], "Spanish");
    // The plan receives them in the referral's minimal Patient.
    let got = received(&gw.mcp_a, &task_id(&b)).await;
    let sent = entry(&got, "Patient");
    assert!(
        sent["telecom"].to_string().contains("559-555-0101"),
        "{sent}"
    );
    assert_eq!(sent["communication"][0]["language"]["text"], "Spanish");
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referral_batch_command_prints_each_line_and_fails_on_a_refusal() {
    let gw = Gw::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bad = hospital_referral("MH-CLI2", "93000202A");
    bad["populationsOfFocus"] = json!(["42"]);
    let file = dir.path().join("referrals.ndjson");
    std::fs::write(
        &file,
        ndjson(&[hospital_referral("MH-CLI1", "93000201A"), bad]),
    )
    .unwrap();
    let run = |file: std::path::PathBuf, url: String| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
                .args(["referral-batch"])
                .arg(&file)
                .args(["--url", &url, "--token-env", "CWSGW_TEST_REFERRER_TOKEN"])
                .env("CWSGW_TEST_REFERRER_TOKEN", MERCY_TOKEN)
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let url = format!("http://{}", gw.running.http_addr);
    let (code, out, err) = run(file.clone(), url.clone()).await.unwrap();
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("line 1\t201")
            && lines[0].contains("MH-CLI1")
            && lines[0].contains("ServiceRequest/"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("line 2\t422") && lines[1].contains("populationsOfFocus"),
        "{out}"
    );
    assert!(err.contains("2 referrals: 1 accepted, 1 refused"), "{err}");
    // Only good lines: exit 0 (the accepted one is a replay now).
    std::fs::write(&file, ndjson(&[hospital_referral("MH-CLI1", "93000201A")])).unwrap();
    let (code, out, err) = run(file, url).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("line 1\t200"), "{out}");
    gw.running.stop().await;
}
