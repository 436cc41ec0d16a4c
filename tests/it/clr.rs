//! The closed-loop referral lifecycle through `PUT /fhir/Task/{id}`: the
//! CLR status and coded closure reason on the Task, every change told to
//! the referrer, the case county, the provider and the plan (mock
//! endpoints), the proof of each delivery, and the clocks each change opens
//! and closes (docs/mcp-ecm.md "Closed-loop referral states").

use std::time::Duration;

use cwsgw_scenario::mock::MockEndpoint;
use serde_json::{json, Value};
use store::ClockRow;

use crate::common::*;

const BRIGHT_TOKEN: &str = "clr-bright-token";
const STATUS: &str = "https://gateway.example.org/CodeSystem/ecm-referral-status";
const REASON: &str = "https://gateway.example.org/CodeSystem/ecm-referral-closure-reason";
const NOA_SENT: &str = "https://gateway.example.org/StructureDefinition/notice-of-action-sent";

struct Clr {
    gw: cws_gateway::serve::Running,
    http: reqwest::Client,
    county: MockEndpoint,
    mcp_a: MockEndpoint,
    compass: MockEndpoint,
    bright: MockEndpoint,
    _dir: tempfile::TempDir,
}

impl Clr {
    /// A gateway whose county, plan A and the two providers are mocks, the
    /// member `p1` known (case in Fresno, referral consent for plan A) and
    /// a referral Task `t` made by `requester` to plan A, in `status`,
    /// owned by `owner`.
    async fn start(task_id: &str, requester: &str, status: &str, owner: &str) -> Clr {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (county, mcp_a, compass, bright) = (
            MockEndpoint::start().await.unwrap(),
            MockEndpoint::start().await.unwrap(),
            MockEndpoint::start().await.unwrap(),
            MockEndpoint::start().await.unwrap(),
        );
        let extra = format!(
            "{}\n[[clients]]\nid = \"bright\"\norganization = \"ecm-bright\"\ntoken_sha256 = \"{}\"\n",
            fhir_extra(),
            sha(BRIGHT_TOKEN)
        );
        let mut text = config_text(dir.path(), &extra);
        for (org, mock) in [
            ("county-fresno", &county),
            ("mcp-a", &mcp_a),
            ("ecm-compass", &compass),
            ("ecm-bright", &bright),
        ] {
            text = org_with(&text, org, &format!("endpoint = \"{}\"", mock.base_url()));
        }
        text = text.replace(
            "[server]\n",
            "[server]\ncanonical_base = \"https://gateway.example.org\"\n",
        );
        text.push_str(
            "\n[delivery]\nmax_attempts = 3\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\ntimeout_ms = 1000\nconnect_timeout_ms = 500\nlease_ms = 5000\nshutdown_grace_ms = 500\nconcurrency = 4\n",
        );
        let cfg = cws_gateway::config::Config::from_toml(&text, "test").expect("clr test config");
        let gw = cws_gateway::serve::start(cfg).await.unwrap();
        let mut t = task(task_id, "p1", "sr1", status, owner);
        t["requester"] = json!({"reference": format!("Organization/{requester}")});
        t["extension"] = json!([{"url": "https://gateway.example.org/StructureDefinition/authorizing-mcp",
            "valueReference": {"reference": "Organization/mcp-a"}}]);
        let mut sr = service_request("sr1", "p1");
        sr["requester"] = json!({"reference": format!("Organization/{requester}")});
        seed(
            gw.store.as_ref(),
            vec![
                patient("p1", "91000001A", "2010-03-15"),
                consent(
                    "c1",
                    "p1",
                    "referral_verbal",
                    "youth",
                    &["mcp-a"],
                    &["referral"],
                ),
                json!({"resourceType": "EpisodeOfCare", "id": "eoc1", "status": "active",
                    "patient": {"reference": "Patient/p1"},
                    "managingOrganization": {"reference": "Organization/county-fresno"}}),
                sr,
                t,
            ],
        )
        .await;
        Clr {
            gw,
            http: reqwest::Client::new(),
            county,
            mcp_a,
            compass,
            bright,
            _dir: dir,
        }
    }

    /// PUT the stored Task with `change`'s members replacing its own.
    async fn put(&self, id: &str, token: &str, change: Value) -> (u16, Value) {
        let stored = self
            .gw
            .store
            .resource_get("Task", id)
            .await
            .unwrap()
            .unwrap()
            .body;
        let mut body = stored;
        if let Some(m) = body.as_object_mut() {
            m.remove("meta");
        }
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .http
            .put(format!("http://{}/fhir/Task/{id}", self.gw.http_addr))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn clock(&self, id: &str, code: &str) -> Option<ClockRow> {
        self.gw
            .store
            .clock_list(false, None, Some(&format!("Task/{id}")), 100)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.kind == code)
    }
}

fn status(code: &str) -> Value {
    json!({"coding": [{"system": STATUS, "code": code}]})
}

fn reason(code: &str, text: &str) -> Value {
    json!({"coding": [{"system": REASON, "code": code}], "text": text})
}

/// Wait until `mock` received `n` requests whose body mentions every needle.
async fn wait_for(mock: &MockEndpoint, needles: &[&str], n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let got: Vec<Value> = mock
            .received()
            .into_iter()
            .map(|r| r.body)
            .filter(|b| {
                let t = b.to_string();
                needles.iter().all(|x| t.contains(x))
            })
            .collect();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no delivery mentioning {needles:?}");
}

/// The first notice of `task` by routing rule `rule` once it left the
/// queue (delivered, withheld or dead).
async fn notice(c: &Clr, task: &str, rule: &str) -> cws_gateway::outbox::Notice {
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = cws_gateway::outbox::notices_of(c.gw.store.as_ref(), "p1", task)
            .await
            .unwrap();
        if let Some(n) = seen.iter().find(|n| n.rule == rule && n.state != "pending") {
            return n.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {rule} notice of {task}: {seen:?}");
}

/// The Task a delivered Bundle carries.
fn task_in(bundle: &Value) -> Value {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .find(|r| r["resourceType"] == "Task")
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_loop_is_told_to_every_party_and_closed_with_a_coded_reason() {
    let c = Clr::start("t1", "county-fresno", "requested", "mcp-a").await;
    // The plan authorizes and assigns: CLR `assigned`, the 12-month period.
    let (s, b) = c
        .put(
            "t1",
            MCP_TOKEN,
            json!({"status": "accepted", "owner": {"reference": "Organization/ecm-compass"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["businessStatus"]["coding"][0]["code"], "assigned");
    assert_eq!(b["businessStatus"]["coding"][0]["system"], STATUS);
    let start = b["restriction"]["period"]["start"].as_str().unwrap();
    let end = b["restriction"]["period"]["end"].as_str().unwrap();
    assert_eq!(
        &end[..4],
        &(start[..4].parse::<i32>().unwrap() + 1).to_string()
    );
    assert!(
        b["extension"].to_string().contains("referral-status-date"),
        "{b}"
    );
    for code in [
        "authorization-period",
        "ecm-assessment",
        "sw-notified-of-enrollment",
    ] {
        let k = c
            .clock("t1", code)
            .await
            .unwrap_or_else(|| panic!("{code}"));
        assert_eq!(k.patient_id.as_deref(), Some("p1"));
    }
    // The provider gets the referral package, the county (referrer and
    // case county) the status once.
    let to_compass = wait_for(&c.compass, &["\"t1\"", "ServiceRequest"], 1).await;
    assert_eq!(
        task_in(&to_compass[0])["businessStatus"]["coding"][0]["code"],
        "assigned"
    );
    wait_for(&c.county, &["\"t1\"", "assigned"], 1).await;
    // Outreach, then enrolled: each told to the plan (the change came from
    // the provider) and to the county.
    let (s, b) = c
        .put("t1", ECM_TOKEN, json!({"status": "in-progress"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["businessStatus"]["coding"][0]["code"], "outreach");
    wait_for(&c.mcp_a, &["\"t1\"", "outreach"], 1).await;
    let (s, b) = c
        .put(
            "t1",
            ECM_TOKEN,
            json!({"status": "in-progress", "businessStatus": status("enrolled")}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["businessStatus"]["coding"][0]["display"],
        "Enrolled, services started"
    );
    wait_for(&c.mcp_a, &["\"t1\"", "enrolled"], 1).await;
    wait_for(&c.county, &["\"t1\"", "enrolled"], 1).await;
    // Closing needs a coded reason: one issue naming Task.statusReason with
    // the known codes; nothing is journaled.
    let before = c.gw.store.journal_stats().await.unwrap().total;
    let (s, b) = c
        .put(
            "t1",
            ECM_TOKEN,
            json!({"status": "completed", "statusReason": {"text": "done"}}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    let issues = b["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "{b}");
    assert_eq!(issues[0]["expression"][0], "Task.statusReason");
    assert!(issues[0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("care-plan-goals-met"));
    assert_eq!(c.gw.store.journal_stats().await.unwrap().total, before);
    // A reason that does not go with the status and an unknown status: two issues.
    let (s, b) = c
        .put(
            "t1",
            ECM_TOKEN,
            json!({"status": "completed", "businessStatus": status("finished"),
                "statusReason": reason("unable-to-reach", "no answer")}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["issue"].as_array().unwrap().len(), 2, "{b}");
    // Goals met: closed with the reason; the member is owed a Notice of
    // Action; the clocks the closed loop cannot meet are cancelled.
    let (s, b) = c
        .put(
            "t1",
            ECM_TOKEN,
            json!({"status": "completed", "statusReason": reason("care-plan-goals-met", "all goals met")}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["businessStatus"]["coding"][0]["code"], "closed");
    assert_eq!(
        b["statusReason"]["coding"][0]["display"],
        "Member met all care plan goals"
    );
    assert_eq!(b["statusReason"]["text"], "all goals met");
    let noa = c.clock("t1", "member-notice-of-action").await.unwrap();
    assert_eq!(noa.state, "open");
    for code in ["authorization-period", "ecm-assessment"] {
        assert_eq!(
            c.clock("t1", code).await.unwrap().state,
            "cancelled",
            "{code}"
        );
    }
    wait_for(&c.mcp_a, &["\"t1\"", "care-plan-goals-met"], 1).await;
    wait_for(&c.county, &["\"t1\"", "care-plan-goals-met"], 1).await;
    // Only the plan records the Notice of Action; it meets the clock.
    let noa_body = json!({"status": "completed", "extension": [
        {"url": NOA_SENT, "valueDateTime": "2000-01-01T00:00:00Z"}]});
    let (s, b) = c.put("t1", ECM_TOKEN, noa_body.clone()).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = c.put("t1", MCP_TOKEN, noa_body).await;
    assert_eq!(s, 422, "a notice before the decision: {b}");
    let sent = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut with_ext =
        c.gw.store
            .resource_get("Task", "t1")
            .await
            .unwrap()
            .unwrap()
            .body["extension"]
            .clone();
    with_ext
        .as_array_mut()
        .unwrap()
        .push(json!({"url": NOA_SENT, "valueDateTime": sent}));
    let (s, b) = c
        .put(
            "t1",
            MCP_TOKEN,
            json!({"status": "completed", "extension": with_ext}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["businessStatus"]["coding"][0]["code"], "closed",
        "unchanged"
    );
    assert!(b["extension"].to_string().contains("notice-of-action-sent"));
    let noa = c.clock("t1", "member-notice-of-action").await.unwrap();
    assert_eq!(noa.state, "met");
    // Recorded once: a second record is refused.
    let (s, _) = c
        .put(
            "t1",
            MCP_TOKEN,
            json!({"status": "completed", "extension": with_ext}),
        )
        .await;
    assert_eq!(s, 422);
    // Proof of electronic notice: each party's deliveries with the time
    // the recipient acknowledged them, the audit record that says so.
    let mut notices = Vec::new();
    for _ in 0..100 {
        notices = cws_gateway::outbox::notices_of(c.gw.store.as_ref(), "p1", "Task/t1")
            .await
            .unwrap();
        if notices.iter().all(|n| n.state != "pending") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for org in ["county-fresno", "mcp-a", "ecm-compass"] {
        let n: Vec<_> = notices.iter().filter(|n| n.recipient == org).collect();
        assert!(!n.is_empty(), "{org}: {notices:?}");
        for x in n {
            assert_eq!(x.state, "delivered", "{x:?}");
            let at = x.delivered_at.expect("delivery time");
            assert!(at >= x.enqueued, "{x:?}");
            let seq = x.audit_seq.expect("audit record");
            let rec =
                c.gw.store
                    .audit_list(seq - 1, 1, Some("p1"), None)
                    .await
                    .unwrap();
            assert_eq!(rec[0].kind, "disclosure");
            assert_eq!(rec[0].recipient.as_deref(), Some(org));
            assert_eq!(rec[0].recorded, at);
        }
    }
    // One row per recipient per change: the county was referrer and case
    // county, and heard of each change once.
    let to_county: Vec<_> = notices
        .iter()
        .filter(|n| n.recipient == "county-fresno")
        .collect();
    let rules: std::collections::BTreeSet<&str> =
        to_county.iter().map(|n| n.rule.as_str()).collect();
    assert_eq!(
        rules.into_iter().collect::<Vec<_>>(),
        ["task-status-to-referrer"]
    );
    // Both notice clocks were met by their deliveries.
    for code in [
        "sw-notified-of-enrollment",
        "ecm-provider-told-of-assignment",
    ] {
        assert_eq!(c.clock("t1", code).await.unwrap().state, "met", "{code}");
    }
    c.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_change_is_carried_out_and_routed_to_the_former_provider() {
    let c = Clr::start("t2", "county-fresno", "in-progress", "ecm-compass").await;
    // The member asks the provider to change: the 30-day clock opens.
    let (s, b) = c
        .put(
            "t2",
            ECM_TOKEN,
            json!({"status": "in-progress", "businessStatus": status("provider-change-requested")}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let k = c.clock("t2", "provider-change-request").await.unwrap();
    assert_eq!(k.state, "open");
    wait_for(&c.mcp_a, &["\"t2\"", "provider-change-requested"], 1).await;
    // Only the plan assigns; the new provider must be contracted with it.
    let (s, _) = c
        .put(
            "t2",
            ECM_TOKEN,
            json!({"status": "in-progress", "owner": {"reference": "Organization/ecm-bright"}}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, b) = c
        .put(
            "t2",
            MCP_TOKEN,
            json!({"status": "in-progress", "owner": {"reference": "Organization/ecm-bright"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["businessStatus"]["coding"][0]["code"], "assigned");
    assert!(b["extension"].to_string().contains("previous-owner"), "{b}");
    assert_eq!(
        c.clock("t2", "provider-change-request")
            .await
            .unwrap()
            .state,
        "met"
    );
    // The new provider gets the referral package; the former one is told.
    wait_for(&c.bright, &["\"t2\"", "ServiceRequest"], 1).await;
    // The former provider is routed the change and told (consent rule
    // R12: the status of the version that moved the referral away from it),
    // with the delivery time recorded as proof.
    let former = notice(&c, "Task/t2", "task-status-to-former-provider").await;
    assert_eq!(former.recipient, "ecm-compass");
    assert_eq!(former.package, "task_status");
    assert_eq!(former.state, "delivered", "{former:?}");
    assert!(former.delivered_at.is_some(), "{former:?}");
    wait_for(&c.compass, &["\"t2\"", "assigned"], 1).await;
    let told = c
        .compass
        .received()
        .into_iter()
        .map(|r| task_in(&r.body))
        .filter(|t| t["id"] == "t2" && t["businessStatus"]["coding"][0]["code"] == "assigned")
        .count();
    assert_eq!(told, 1);
    // The status names no earlier provider, to anyone.
    for m in [&c.compass, &c.county, &c.mcp_a] {
        assert!(
            !m.received()
                .iter()
                .any(|r| r.body.to_string().contains("previous-owner")),
            "a status push carried the previous owner"
        );
    }
    // A later change is the new provider's: the former hears no more.
    let before = c.compass.received().len();
    let (s, b) = c
        .put(
            "t2",
            BRIGHT_TOKEN,
            json!({"status": "in-progress", "businessStatus": status("enrolled")}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        !b["extension"].to_string().contains("previous-owner"),
        "{b}"
    );
    wait_for(&c.mcp_a, &["\"t2\"", "enrolled"], 1).await;
    wait_for(&c.county, &["\"t2\"", "enrolled"], 1).await;
    assert_eq!(c.compass.received().len(), before);
    c.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_owes_the_member_a_notice_and_a_reauthorization_renews_the_period() {
    let c = Clr::start("t3", "county-fresno", "requested", "mcp-a").await;
    // A coded denial: not-authorized, the Notice of Action clock, the
    // decision clock closed.
    let (s, b) = c
        .put(
            "t3",
            MCP_TOKEN,
            json!({"status": "rejected", "statusReason": reason("not-eligible", "no POF")}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["businessStatus"]["coding"][0]["code"], "not-authorized");
    assert_eq!(
        c.clock("t3", "member-notice-of-action")
            .await
            .unwrap()
            .state,
        "open"
    );
    wait_for(&c.county, &["\"t3\"", "not-authorized"], 1).await;
    c.gw.stop().await;

    // An old client's text-only rejection still works: coded `other`, the
    // text kept, no Notice of Action tracked.
    let c = Clr::start("t4", "county-fresno", "requested", "mcp-a").await;
    let (s, b) = c
        .put(
            "t4",
            MCP_TOKEN,
            json!({"status": "rejected", "statusReason": {"text": "does not meet criteria"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["statusReason"]["coding"][0]["code"], "other");
    assert_eq!(b["statusReason"]["text"], "does not meet criteria");
    assert!(c.clock("t4", "member-notice-of-action").await.is_none());
    c.gw.stop().await;

    // Authorized, then reauthorized by the plan: 6 months from the end of
    // the 12-month period; the provider may not reauthorize.
    let c = Clr::start("t5", "county-fresno", "requested", "mcp-a").await;
    let (s, b) = c.put("t5", MCP_TOKEN, json!({"status": "accepted"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["businessStatus"]["coding"][0]["code"], "authorized");
    let first_end = b["restriction"]["period"]["end"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, b) = c
        .put(
            "t5",
            MCP_TOKEN,
            json!({"status": "accepted", "businessStatus": status("reauthorized")}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["restriction"]["period"]["start"], first_end.as_str());
    assert_eq!(
        c.clock("t5", "authorization-period").await.unwrap().state,
        "met"
    );
    let re = c.clock("t5", "reauthorization-period").await.unwrap();
    assert_eq!(re.state, "open");
    assert_eq!(
        cws_gateway::clocks::ts(re.due_at),
        b["restriction"]["period"]["end"].as_str().unwrap()
    );
    // Sending back what it read (the same period) does not renew again.
    let (s, b2) = c.put("t5", MCP_TOKEN, json!({"status": "accepted"})).await;
    assert_eq!(s, 200, "{b2}");
    assert_eq!(b2["restriction"], b["restriction"]);
    assert_eq!(b2["businessStatus"]["coding"][0]["code"], "reauthorized");
    c.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_case_county_is_told_when_another_organization_referred() {
    // A provider referred; the county owns the case. Routing queues the
    // status for the county; delivery asks the consent policy again.
    let c = Clr::start("t6", "ecm-bright", "requested", "mcp-a").await;
    let (s, b) = c
        .put(
            "t6",
            MCP_TOKEN,
            json!({"status": "accepted", "owner": {"reference": "Organization/ecm-compass"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    wait_for(&c.bright, &["\"t6\"", "assigned"], 1).await;
    let mut notices = Vec::new();
    for _ in 0..100 {
        notices = cws_gateway::outbox::notices_of(c.gw.store.as_ref(), "p1", "Task/t6")
            .await
            .unwrap();
        if notices
            .iter()
            .any(|n| n.recipient == "county-fresno" && n.state != "pending")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let county: Vec<_> = notices
        .iter()
        .filter(|n| n.recipient == "county-fresno")
        .collect();
    assert_eq!(county.len(), 1, "{notices:?}");
    assert_eq!(county[0].rule, "task-status-to-case-county");
    // Consent rule R11: the county of the open case is told each
    // referral's status, whoever referred; delivered, with its time.
    assert_eq!(county[0].state, "delivered", "{notices:?}");
    assert!(county[0].delivered_at.is_some());
    wait_for(&c.county, &["\"t6\"", "assigned"], 1).await;
    c.gw.stop().await;
}
