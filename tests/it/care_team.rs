//! What the assigned ECM provider sends back about a member, through the
//! real HTTP interface: the Lead Care Manager (`POST /fhir/CareTeam`), its
//! assessments (`POST /fhir/QuestionnaireResponse`, `/fhir/DocumentReference`)
//! and the releases it obtained (`POST /fhir/Consent`), each delivered to
//! the mock county and plan endpoints under consent.

use base64::Engine as _;
use cws_gateway::config::Config;
use cws_gateway::serve::Running;
use cwsgw_scenario::mock::MockEndpoint;
use serde_json::{json, Value};

use crate::common::{self, repo, sha, COUNTY_TOKEN, OPS_TOKEN};

const MCP_A: &str = "care-team-mcp-a";
const COMPASS: &str = "care-team-compass";
const BRIGHT: &str = "care-team-bright";
const CODES: &str = "https://gateway.example.org/fhir/CodeSystem";

fn extra() -> String {
    format!(
        r#"
[[clients]]
id = "mcp-a"
organization = "mcp-a"
token_sha256 = "{a}"

[[clients]]
id = "compass"
organization = "ecm-compass"
token_sha256 = "{c}"

[[clients]]
id = "bright"
organization = "ecm-bright"
token_sha256 = "{b}"
"#,
        a = sha(MCP_A),
        c = sha(COMPASS),
        b = sha(BRIGHT),
    )
}

/// The gateway with the county, plan A and the two providers as mock
/// endpoints.
struct Gw {
    running: Running,
    http: reqwest::Client,
    county: MockEndpoint,
    mcp_a: MockEndpoint,
    _dir: tempfile::TempDir,
}

impl Gw {
    async fn start() -> Gw {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let county = MockEndpoint::start().await.unwrap();
        let mcp_a = MockEndpoint::start().await.unwrap();
        let compass = MockEndpoint::start().await.unwrap();
        let bright = MockEndpoint::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The default body limit (1 MiB), so an attachment over the inline
        // cap reaches the gateway's own check.
        let mut text = common::config_text(dir.path(), &extra())
            .replace("max_body_bytes = 65536", "max_body_bytes = 1048576");
        for (org, mock) in [
            ("county-fresno", &county),
            ("mcp-a", &mcp_a),
            ("ecm-compass", &compass),
            ("ecm-bright", &bright),
        ] {
            text = common::org_with(&text, org, &format!("endpoint = \"{}\"", mock.base_url()));
        }
        text.push_str(
            "\n[delivery]\nmax_attempts = 3\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\ntimeout_ms = 1000\nconnect_timeout_ms = 500\nlease_ms = 5000\nshutdown_grace_ms = 500\nconcurrency = 4\n",
        );
        let cfg = Config::from_toml(&text, "test").expect("care team test config");
        let running = cws_gateway::serve::start(cfg).await.unwrap();
        Gw {
            running,
            http: reqwest::Client::new(),
            county,
            mcp_a,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, body).await
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

    /// The member enrolled in plan A, referred by the county under the
    /// youth's verbal consent, authorized by plan A and assigned to
    /// Compass: the member's Patient id and the assigned Task.
    async fn assigned(&self) -> (String, Value) {
        for (t, n) in [
            ("case.opened", "001-court-ordered-fr"),
            ("placement.changed", "001-resource-family"),
            ("enrollment.updated", "001-plan-a"),
            ("consent.recorded", "001-referral-verbal"),
        ] {
            let (s, b) = self.post("/cws/events", COUNTY_TOKEN, &golden(t, n)).await;
            assert_eq!(s, 202, "{t}: {b}");
        }
        let (s, b) = self
            .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-CT1"))
            .await;
        assert_eq!(s, 201, "{b}");
        let task = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .find(|r| r["resourceType"] == "Task")
            .unwrap();
        let id = task["id"].as_str().unwrap().to_string();
        let mut t = task.clone();
        t["status"] = json!("accepted");
        let (s, accepted) = self
            .send(reqwest::Method::PUT, &format!("/fhir/Task/{id}"), MCP_A, &t)
            .await;
        assert_eq!(s, 200, "{accepted}");
        let mut t = accepted.clone();
        t["owner"] = json!({"reference": "Organization/ecm-compass"});
        let (s, assigned) = self
            .send(reqwest::Method::PUT, &format!("/fhir/Task/{id}"), MCP_A, &t)
            .await;
        assert_eq!(s, 200, "{assigned}");
        (mapping::uuid5("patient|cin|91000001A"), assigned)
    }

    /// A release of information Compass obtained from the youth, naming
    /// `to` and covering `categories`: posted, its id.
    async fn release(&self, pid: &str, to: &[&str], categories: &[&str]) -> String {
        let mut c = common::consent(
            "unused",
            pid,
            "release_of_information",
            "youth",
            to,
            categories,
        );
        c.as_object_mut().unwrap().remove("id");
        c["dateTime"] = json!(format!("2026-01-2{}T09:00:00Z", to.len()));
        let (s, b) = self.post("/fhir/Consent", COMPASS, &c).await;
        assert!(s == 201 || s == 200, "{b}");
        b["id"].as_str().unwrap().to_string()
    }
}

fn golden(t: &str, name: &str) -> Value {
    let p = repo()
        .join("tests/golden/case_event")
        .join(t)
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
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

/// The CareTeam an ECM provider posts: the Lead Care Manager a contained
/// PractitionerRole of a contained Practitioner, with a phone and an email.
fn lead_care_manager(pid: &str) -> Value {
    json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": format!("Patient/{pid}")},
        "contained": [
            {"resourceType": "Practitioner", "id": "lcm", "name": [{"family": "Nguyen", "given": ["Lee"]}]},
            {"resourceType": "PractitionerRole", "id": "lcm-role", "practitioner": {"reference": "#lcm"},
             "organization": {"reference": "Organization/ecm-compass"},
             "telecom": [{"system": "phone", "value": "559-555-0100", "use": "work"},
                         {"system": "email", "value": "lee.nguyen@compass.example.org"}]}
        ],
        "participant": [{"role": [{"coding": [{"system": format!("{CODES}/ecm-care-team-role"), "code": "lead-care-manager"}]}],
            "member": {"reference": "#lcm-role"}}]})
}

fn assessment_response(pid: &str, status: &str) -> Value {
    json!({"resourceType": "QuestionnaireResponse", "status": status,
        "subject": {"reference": format!("Patient/{pid}")},
        "authored": "2026-02-03T10:00:00Z",
        "item": [{"linkId": "housing", "answer": [{"valueBoolean": true}]}]})
}

fn assessment_document(pid: &str, labels: &[&str], text: &str) -> Value {
    let mut d = json!({"resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": format!("{CODES}/ecm-document-type"), "code": "ecm-assessment"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "content": [{"attachment": {"contentType": "text/plain",
            "data": base64::engine::general_purpose::STANDARD.encode(text)}}]});
    if !labels.is_empty() {
        let sec: Vec<Value> = labels
            .iter()
            .map(|l| json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": l}))
            .collect();
        d["meta"] = json!({"security": sec});
    }
    d
}

/// Wait until `mock` received a request whose body mentions `needle`.
async fn wait_received(mock: &MockEndpoint, needle: &str) {
    for _ in 0..200 {
        if received(mock, needle) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing mentioning {needle} was delivered");
}

fn received(mock: &MockEndpoint, needle: &str) -> bool {
    mock.received()
        .iter()
        .any(|r| r.body.to_string().contains(needle))
}

/// The clock `code` of `subject` as `GET /ops/deadlines?all=true` lists it.
async fn clock(gw: &Gw, code: &str, subject: &str) -> Value {
    let (s, d) = gw.get("/ops/deadlines?all=true", OPS_TOKEN).await;
    assert_eq!(s, 200, "{d}");
    d["clocks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["clock"] == code && c["subject"] == subject)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The Lead Care Manager named by the assigned provider reaches the
/// county (under the release naming it) and the member's plan reads it
/// without one; a provider that is not assigned is refused and nothing of
/// its attempt is stored or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assigned_providers_lead_care_manager_reaches_the_county_and_no_other_may_name_one() {
    let gw = Gw::start().await;
    let (pid, _task) = gw.assigned().await;
    gw.release(&pid, &["county-fresno", "ecm-bright"], &["health", "case"])
        .await;
    let (s, ct) = gw
        .post("/fhir/CareTeam", COMPASS, &lead_care_manager(&pid))
        .await;
    assert_eq!(s, 201, "{ct}");
    let id = ct["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ct-"), "{id}");
    assert_eq!(
        ct["managingOrganization"][0]["reference"],
        "Organization/ecm-compass"
    );
    wait_received(&gw.county, &id).await;
    let sent = gw
        .county
        .received()
        .into_iter()
        .find(|r| r.body.to_string().contains(&id))
        .unwrap();
    assert!(
        sent.body.to_string().contains("559-555-0100"),
        "the social worker gets a way to reach the Lead Care Manager"
    );
    // The member's MCP reads it (plan network, consent R3).
    let (s, b) = gw
        .get(&format!("/fhir/CareTeam?patient={pid}"), MCP_A)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["total"], 1, "{b}");
    // Bright may see the member (the release names it) but is not assigned.
    let mut other = lead_care_manager(&pid);
    other["name"] = json!("another team");
    let (s, b) = gw.post("/fhir/CareTeam", BRIGHT, &other).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = gw
        .post(
            "/fhir/QuestionnaireResponse",
            BRIGHT,
            &assessment_response(&pid, "completed"),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    // `$validate` runs the same checks and stores nothing: the assigned
    // provider's CareTeam would pass, Bright's would be refused.
    let (s, ok) = gw.post("/fhir/CareTeam/$validate", COMPASS, &other).await;
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ok["issue"][0]["severity"], "information", "{ok}");
    let (s, no) = gw.post("/fhir/CareTeam/$validate", BRIGHT, &other).await;
    assert_eq!(s, 200, "{no}");
    assert_eq!(no["issue"][0]["code"], "forbidden", "{no}");
    // The county may not post one either.
    let (s, _) = gw
        .post("/fhir/CareTeam", COUNTY_TOKEN, &lead_care_manager(&pid))
        .await;
    assert_eq!(s, 403);
    let (_, all) = gw
        .get(&format!("/fhir/CareTeam?patient={pid}"), OPS_TOKEN)
        .await;
    assert_eq!(all["total"], 1, "{all}");
    // A CareTeam without a reachable Lead Care Manager is refused (422).
    let mut nameless = lead_care_manager(&pid);
    nameless["contained"][1]
        .as_object_mut()
        .unwrap()
        .remove("telecom");
    let (s, b) = gw.post("/fhir/CareTeam", COMPASS, &nameless).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(
        b["issue"][0]["expression"][0],
        "CareTeam.participant.member"
    );
    gw.running.stop().await;
}

/// A completed assessment meets the member's open 30-day assessment clock,
/// reaches the county and the plan under the release naming them, and is
/// searchable by those the consent gate permits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assessment_meets_the_30_day_clock_and_reaches_the_county_and_the_plan() {
    let gw = Gw::start().await;
    let (pid, task) = gw.assigned().await;
    let subject = format!("Task/{}", task["id"].as_str().unwrap());
    // The assignment opened the 30-day assessment clock on the Task.
    assert_eq!(
        clock(&gw, "ecm-assessment", &subject).await["status"],
        "open"
    );
    gw.release(&pid, &["county-fresno", "mcp-a"], &["health"])
        .await;
    // In progress: not yet the assessment.
    let (s, draft) = gw
        .post(
            "/fhir/QuestionnaireResponse",
            COMPASS,
            &assessment_response(&pid, "in-progress"),
        )
        .await;
    assert_eq!(s, 201, "{draft}");
    assert_eq!(
        clock(&gw, "ecm-assessment", &subject).await["status"],
        "open"
    );
    let (s, qr) = gw
        .post(
            "/fhir/QuestionnaireResponse",
            COMPASS,
            &assessment_response(&pid, "completed"),
        )
        .await;
    assert_eq!(s, 201, "{qr}");
    let id = qr["id"].as_str().unwrap().to_string();
    let met = clock(&gw, "ecm-assessment", &subject).await;
    assert_eq!(met["status"], "met", "{met}");
    assert!(met["closedAt"].is_string(), "{met}");
    wait_received(&gw.county, &id).await;
    wait_received(&gw.mcp_a, &id).await;
    // Read and search through the consent gate.
    for token in [COUNTY_TOKEN, MCP_A] {
        let (s, b) = gw
            .get(
                &format!("/fhir/QuestionnaireResponse?patient={pid}&status=completed"),
                token,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["total"], 1, "{b}");
        let (s, b) = gw
            .get(&format!("/fhir/QuestionnaireResponse/{id}"), token)
            .await;
        assert_eq!(s, 200, "{b}");
    }
    // An assessment document too; an oversize inline one is refused.
    let (s, doc) = gw
        .post(
            "/fhir/DocumentReference",
            COMPASS,
            &assessment_document(&pid, &[], "assessment text"),
        )
        .await;
    assert_eq!(s, 201, "{doc}");
    wait_received(&gw.county, doc["id"].as_str().unwrap()).await;
    let big = assessment_document(&pid, &[], &"x".repeat(600 * 1024));
    let (s, b) = gw.post("/fhir/DocumentReference", COMPASS, &big).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["issue"][0]["code"], "too-long", "{b}");
    gw.running.stop().await;
}

/// A release the provider obtained goes to the plan it names, whatever it
/// covers; one that does not name the plan does not go to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_goes_to_the_plan_it_names_and_only_then() {
    let gw = Gw::start().await;
    let (pid, _task) = gw.assigned().await;
    let not_naming = gw
        .release(&pid, &["county-fresno"], &["health", "case"])
        .await;
    let naming = gw
        .release(&pid, &["county-fresno", "mcp-a"], &["health", "case"])
        .await;
    wait_received(&gw.mcp_a, &naming).await;
    // Deliveries to one recipient about one member go in order: the first
    // release would have arrived before the second.
    assert!(!received(&gw.mcp_a, &not_naming));
    wait_received(&gw.county, &not_naming).await;
    let routed: Vec<String> = gw
        .running
        .store
        .audit_list(0, 10_000, Some(&pid), Some("mcp-a"))
        .await
        .unwrap()
        .iter()
        .map(|a| a.body.to_string())
        .filter(|b| b.contains("consent-to-mcp"))
        .collect();
    assert!(!routed.is_empty(), "the delivery to the plan is audited");
    // The record of a release naming the plan goes back to it whatever the
    // release covers (consent rule R13: seed 003 VIII, the member-level
    // record of written authorization is communicated back to the MCP).
    let health_only = gw.release(&pid, &["mcp-a"], &["health"]).await;
    wait_received(&gw.mcp_a, &health_only).await;
    gw.running.stop().await;
}

/// An assessment labelled as behavioral health is withheld from the county
/// whose release covers health only, and the refusal is audited; the
/// county reads it neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_assessment_is_withheld_from_the_county_without_the_specific_consent() {
    let gw = Gw::start().await;
    let (pid, _task) = gw.assigned().await;
    gw.release(&pid, &["county-fresno"], &["health"]).await;
    let (s, labelled) = gw
        .post(
            "/fhir/DocumentReference",
            COMPASS,
            &assessment_document(&pid, &["PSY"], "behavioral health findings"),
        )
        .await;
    assert_eq!(s, 201, "{labelled}");
    let withheld = labelled["id"].as_str().unwrap().to_string();
    let (s, plain) = gw
        .post(
            "/fhir/QuestionnaireResponse",
            COMPASS,
            &assessment_response(&pid, "completed"),
        )
        .await;
    assert_eq!(s, 201, "{plain}");
    // The unlabelled one arrives; the labelled one, queued before it for
    // the same recipient and member, never did.
    wait_received(&gw.county, plain["id"].as_str().unwrap()).await;
    assert!(!received(&gw.county, &withheld));
    let refusals = gw
        .running
        .store
        .audit_list(0, 10_000, Some(&pid), Some("county-fresno"))
        .await
        .unwrap()
        .iter()
        .filter(|a| {
            let b = a.body.to_string();
            b.contains(&withheld) && b.contains("deny.behavioral-health-requires-consent")
        })
        .count();
    assert!(refusals >= 1, "the withholding is audited");
    let (s, b) = gw
        .get(&format!("/fhir/DocumentReference/{withheld}"), COUNTY_TOKEN)
        .await;
    assert_eq!(s, 404, "{b}");
    gw.running.stop().await;
}
