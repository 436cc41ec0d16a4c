//! County case events, ECM referrals, Task lifecycle, eligibility and
//! deadlines — through the real HTTP interface and the binary. The golden
//! tests of the case events (`tests/golden/case_event/`) are the golden
//! harness's (`golden.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cws_gateway::config::Config;
use cws_gateway::serve::Running;
use serde_json::{json, Value};

use crate::common::{self, repo, sha, COUNTY_TOKEN, OPS_TOKEN};

pub const MCP_A_TOKEN: &str = "mcp-a-test-token";
pub const MCP_B_TOKEN: &str = "mcp-b-test-token";
pub const COMPASS_TOKEN: &str = "compass-test-token";
pub const BRIGHT_TOKEN: &str = "bright-test-token";
pub const KERN_TOKEN: &str = "kern-test-token";

/// Clients added to the common test configuration (the organizations are
/// the shared fixture's, `tests/fixtures/orgs.toml`).
fn extra() -> String {
    format!(
        r#"
[[clients]]
id = "mcp-a"
organization = "mcp-a"
token_sha256 = "{a}"

[[clients]]
id = "mcp-b"
organization = "mcp-b"
token_sha256 = "{b}"

[[clients]]
id = "compass"
organization = "ecm-compass"
token_sha256 = "{c}"

[[clients]]
id = "bright"
organization = "ecm-bright"
token_sha256 = "{br}"

[[clients]]
id = "kern"
organization = "county-kern"
token_sha256 = "{k}"
"#,
        a = sha(MCP_A_TOKEN),
        b = sha(MCP_B_TOKEN),
        c = sha(COMPASS_TOKEN),
        br = sha(BRIGHT_TOKEN),
        k = sha(KERN_TOKEN),
    )
}

fn config(dir: &Path) -> Config {
    Config::from_toml(&common::config_text(dir, &extra()), "test").expect("county test config")
}

struct Gw {
    running: Running,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Gw {
    async fn start() -> Gw {
        // reqwest is built with `rustls-no-provider` (main installs ring at
        // start-up of the delivery path); a test client needs one too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let running = cws_gateway::serve::start(config(dir.path())).await.unwrap();
        Gw {
            running,
            http: reqwest::Client::new(),
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
    ) -> (u16, Value, Option<String>) {
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
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            loc,
        )
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let (s, b, _) = self.send(reqwest::Method::POST, path, token, body).await;
        (s, b)
    }

    async fn event(&self, body: &Value) -> (u16, Value) {
        self.post("/cws/events", COUNTY_TOKEN, body).await
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

fn golden_dir() -> PathBuf {
    repo().join("tests/golden/case_event")
}

fn golden(t: &str, name: &str) -> Value {
    let p = golden_dir().join(t).join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn with(mut v: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut v);
    v
}

fn types(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    e["resource"]["resourceType"]
                        .as_str()
                        .unwrap_or("")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn resource<'a>(bundle: &'a Value, t: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|e| &e["resource"])
                .find(|r| r["resourceType"] == t)
        })
        .unwrap_or_else(|| panic!("no {t} in {bundle}"))
}

fn issue_expr(oo: &Value) -> String {
    oo["issue"][0]["expression"][0]
        .as_str()
        .unwrap_or("")
        .to_string()
}

// ---------------------------------------------------------------- golden

fn assert_fhir_valid(what: &str, res: &Value) {
    let errs = crate::invariants::schema_errors(res, 5);
    assert!(
        errs.is_empty(),
        "{what}: {} is not valid FHIR R4:\n{}",
        res["resourceType"],
        errs.join("\n")
    );
}

fn offline_county() -> cws_gateway::sources::Ingress {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(config(dir.path()));
    let engine = cws_gateway::embedded::load_engine(&cfg).unwrap();
    cws_gateway::sources::Ingress::new(cfg, engine).unwrap()
}

#[test]
fn mapped_consent_has_exactly_the_disclosure_shape() {
    let county = offline_county();
    let doc = golden("consent.recorded", "001-referral-verbal");
    let out = cws_gateway::sources::case_event::translate_offline(&county, &doc).unwrap();
    let mut mapped = resource(&out, "Consent").clone();
    mapped.as_object_mut().unwrap().remove("meta");
    let base = "https://gateway.example.org/fhir";
    let recipients = vec!["mcp-a".to_string(), "ecm-compass".to_string()];
    let cats = vec!["referral".to_string(), "case".to_string()];
    let pid = mapping::uuid5("patient|cin|91000001A");
    let idsys = format!("{base}/identifier/county-fresno/consent-id");
    let built = cws_gateway::disclosure::consent_to_fhir(&cws_gateway::disclosure::ConsentSpec {
        canonical_base: base,
        id: mapped["id"].as_str().unwrap(),
        identifier: Some((&idsys, "CONS-5")),
        patient_id: &pid,
        kind: "referral_verbal",
        grantor_role: "parent",
        grantor_name: Some("Maria Rivera"),
        recorded_by_org: "county-fresno",
        recorded_at: "2026-01-12T17:30:00Z",
        recipients: &recipients,
        categories: &cats,
        start: "2026-01-12",
        end: Some("2027-01-12"),
    });
    let mut built = built;
    let explained =
        cws_gateway::disclosure::Explained::from_input(doc.pointer("/consent/explained"));
    cws_gateway::disclosure::add_explained(&mut built, base, &explained);
    assert_eq!(mapped, built);
    // The four flags are kept, under the gateway's canonical base.
    let ext = mapped["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == format!("{base}/StructureDefinition/consent-explained"))
        .expect("consent-explained extension");
    let flags: Vec<(&str, bool)> = ext["extension"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap(),
                e["valueBoolean"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        vec![
            ("provider", true),
            ("informationShared", true),
            ("duration", true),
            ("rightToWithdraw", true)
        ]
    );
    let rec = cws_gateway::disclosure::consent_from_fhir(&mapped).unwrap();
    assert_eq!(rec.recipients, recipients);
}

// ---------------------------------------------------------------- events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_is_accepted_and_replays_idempotently() {
    let gw = Gw::start().await;
    let order = [
        (
            "case.opened",
            "001-court-ordered-fr",
            vec![
                "Patient",
                "Practitioner",
                "PractitionerRole",
                "EpisodeOfCare",
                "Organization",
                "Observation",
            ],
        ),
        (
            "placement.changed",
            "001-resource-family",
            vec!["Patient", "Observation"],
        ),
        (
            "enrollment.updated",
            "001-plan-a",
            vec!["Patient", "Coverage", "Organization"],
        ),
        (
            "consent.recorded",
            "001-referral-verbal",
            vec!["Patient", "Consent", "Organization"],
        ),
        (
            "consent.withdrawn",
            "001-withdraw",
            vec!["Patient", "Consent"],
        ),
        ("cft.scheduled", "001-cft", vec!["Patient", "Appointment"]),
        (
            "case.closed",
            "001-reunification",
            vec!["Patient", "EpisodeOfCare"],
        ),
        (
            "foster_care.history",
            "001-aged-out",
            vec!["Patient", "Observation"],
        ),
    ];
    for (t, name, want) in order {
        let doc = golden(t, name);
        let (s, b) = gw.event(&doc).await;
        assert_eq!(s, 202, "{t}: {b}");
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        let got = types(&b);
        for w in want {
            assert!(got.iter().any(|g| g == w), "{t}: no {w} in {got:?}");
        }
        assert!(
            !got.iter().any(|g| g == "Basic"),
            "internal records stay internal"
        );
        for e in b["entry"].as_array().unwrap() {
            assert_fhir_valid(t, &e["resource"]);
        }
        let count = gw.running.store.resource_count(None).await.unwrap();
        let (s2, b2) = gw.event(&doc).await;
        assert_eq!(s2, 200, "{t} replay: {b2}");
        assert_eq!(types(&b2), got, "{t}: same result on replay");
        assert_eq!(
            gw.running.store.resource_count(None).await.unwrap(),
            count,
            "{t}: nothing new on replay"
        );
    }
    let stats = gw.running.store.journal_stats().await.unwrap();
    assert_eq!(stats.total, 8, "one journal record per event");
    assert_eq!(stats.processed, 8);
    // The withdrawal made the consent inactive, with its time.
    let pid = mapping::uuid5("patient|cin|91000001A");
    let consents = gw
        .running
        .store
        .resources_by_patient(&pid, Some("Consent"))
        .await
        .unwrap();
    assert_eq!(consents.len(), 1);
    assert_eq!(consents[0].body["status"], "inactive");
    let rec = cws_gateway::disclosure::consent_from_fhir(&consents[0].body).unwrap();
    assert_eq!(
        rec.withdrawn_at.unwrap().to_rfc3339(),
        "2026-02-01T18:00:00+00:00"
    );
    // The case closure kept what the opening said.
    let eps = gw
        .running
        .store
        .resources_by_patient(&pid, Some("EpisodeOfCare"))
        .await
        .unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].body["status"], "finished");
    assert_eq!(eps[0].body["period"]["start"], "2026-01-10");
    assert_eq!(eps[0].body["period"]["end"], "2026-06-30");
    assert_eq!(
        eps[0].body["type"][0]["coding"][0]["code"],
        "family_reunification"
    );
    assert_eq!(
        eps[0].body["managingOrganization"]["reference"],
        "Organization/county-fresno"
    );
    // Coverage payor is the MCP serving plan A in Fresno.
    let cov = gw
        .running
        .store
        .resources_by_patient(&pid, Some("Coverage"))
        .await
        .unwrap();
    assert_eq!(cov[0].body["payor"][0]["reference"], "Organization/mcp-a");
    assert_eq!(cov[0].body["status"], "active");
    // Eligibility is queryable.
    let (s, e) = gw
        .get(&format!("/cws/eligibility/{pid}"), COUNTY_TOKEN)
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["eligible"], true);
    assert!(
        e["pofs"].as_array().unwrap().iter().any(|p| p == "8"),
        "{e}"
    );
    let (s, _) = gw
        .get(&format!("/cws/eligibility/{pid}"), common::STMARY_TOKEN)
        .await;
    assert_eq!(s, 403);
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_errors_name_the_field() {
    let gw = Gw::start().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            with(golden("case.opened", "001-court-ordered-fr"), |d| {
                d["child"]["birthDate"] = json!("15/03/2010")
            }),
            "child.birthDate",
        ),
        (
            with(golden("case.opened", "001-court-ordered-fr"), |d| {
                d["case"].as_object_mut().unwrap().remove("component");
            }),
            "case.component",
        ),
        (
            with(golden("placement.changed", "001-resource-family"), |d| {
                d["placement"]["kind"] = json!("hotel")
            }),
            "placement.kind",
        ),
        (
            with(golden("enrollment.updated", "001-plan-a"), |d| {
                d["enrollment"]["feeForService"] = json!("no")
            }),
            "enrollment.feeForService",
        ),
        (
            with(golden("consent.recorded", "001-referral-verbal"), |d| {
                d["consent"]["recipients"][1] = json!("not an id!")
            }),
            "consent.recipients[1]",
        ),
        (
            with(golden("consent.withdrawn", "001-withdraw"), |d| {
                d.as_object_mut().unwrap().remove("withdrawnAt");
            }),
            "withdrawnAt",
        ),
        (
            with(golden("cft.scheduled", "001-cft"), |d| {
                d["meeting"]["invitees"] = json!("mcp-a")
            }),
            "meeting.invitees",
        ),
        (
            with(golden("case.closed", "001-reunification"), |d| {
                d["case"]["reason"] = json!("moved")
            }),
            "case.reason",
        ),
        (
            with(golden("foster_care.history", "001-aged-out"), |d| {
                d["history"]["extra"] = json!(1)
            }),
            "history",
        ),
        (
            with(golden("case.closed", "001-reunification"), |d| {
                d["type"] = json!("case.reopened")
            }),
            "type",
        ),
    ];
    for (doc, expr) in cases {
        let (s, b) = gw.event(&doc).await;
        assert_eq!(s, 422, "{expr}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome");
        assert_eq!(issue_expr(&b), expr, "{b}");
        assert!(!b.to_string().contains("Rivera"), "no PHI in errors");
    }
    // Not JSON → 400; over the body limit → 413, both OperationOutcomes.
    let resp = gw
        .http
        .post(gw.url("/cws/events"))
        .bearer_auth(COUNTY_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let big = json!({"pad": "x".repeat(70_000)});
    let (s, b) = gw.event(&big).await;
    assert_eq!(s, 413);
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        0,
        "nothing invalid is journaled"
    );
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_county_and_wrong_caller_are_refused() {
    let gw = Gw::start().await;
    for (t, n) in [
        ("case.opened", "001-court-ordered-fr"),
        ("enrollment.updated", "001-plan-a"),
        ("foster_care.history", "001-aged-out"),
    ] {
        // Kern's client posting a Fresno event.
        let (s, b) = gw.post("/cws/events", KERN_TOKEN, &golden(t, n)).await;
        assert_eq!(s, 403, "{t}: {b}");
        // Fresno's client posting a Kern event.
        let doc = with(golden(t, n), |d| d["county"] = json!("Kern"));
        let (s, _) = gw.event(&doc).await;
        assert_eq!(s, 403);
    }
    let (s, _) = gw
        .post(
            "/cws/events",
            MCP_A_TOKEN,
            &golden("case.opened", "001-court-ordered-fr"),
        )
        .await;
    assert_eq!(s, 403, "an MCP may not post case events");
    let resp = gw
        .http
        .post(gw.url("/cws/events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Business rules on consents.
    let bad = with(golden("consent.recorded", "001-referral-verbal"), |d| {
        d["consent"]["recipients"] = json!(["mcp-zzz"])
    });
    let (s, b) = gw.event(&bad).await;
    assert_eq!(
        (s, issue_expr(&b)),
        (422, "consent.recipients[0]".to_string()),
        "{b}"
    );
    // A 15-year-old's substance-use consent must be the youth's own.
    let part2 = with(golden("consent.recorded", "001-referral-verbal"), |d| {
        d["consent"]["kind"] = json!("part2_written");
        d["consent"]["categories"] = json!(["substance_use"]);
    });
    let (s, b) = gw.event(&part2).await;
    assert_eq!(
        (s, issue_expr(&b)),
        (422, "consent.grantor.role".to_string()),
        "{b}"
    );
    assert_eq!(b["issue"][0]["code"], "business-rule");
    let (s, b) = gw.event(&golden("consent.withdrawn", "001-withdraw")).await;
    assert_eq!(
        (s, issue_expr(&b)),
        (422, "consentId".to_string()),
        "unknown consent: {b}"
    );
    assert_eq!(gw.running.store.journal_stats().await.unwrap().total, 0);
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_first_seen_without_cin_is_linked_when_the_cin_arrives() {
    let gw = Gw::start().await;
    let opened = golden("case.opened", "002-no-cin-prevention");
    let (s, b) = gw.event(&opened).await;
    assert_eq!(s, 202, "{b}");
    let old_id = resource(&b, "Patient")["id"].as_str().unwrap().to_string();
    // The enrollment brings the CIN (child without one, enrollment with one).
    let enr = golden("enrollment.updated", "002-fee-for-service");
    let (s, b) = gw.event(&enr).await;
    assert_eq!(s, 202, "{b}");
    let new_id = mapping::uuid5("patient|cin|92000002B");
    let patients: Vec<&Value> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Patient")
        .collect();
    assert_eq!(patients.len(), 2, "{b}");
    let old = patients
        .iter()
        .find(|p| p["id"] == old_id.as_str())
        .unwrap();
    assert_eq!(old["active"], false);
    assert_eq!(old["link"][0]["type"], "replaced-by");
    let new = patients
        .iter()
        .find(|p| p["id"] == new_id.as_str())
        .unwrap();
    assert_eq!(
        new["link"][0]["other"]["reference"],
        format!("Patient/{old_id}")
    );
    // FFS: coverage recorded as draft with the FFS payor display.
    assert_eq!(resource(&b, "Coverage")["status"], "draft");
    // A later CIN-less event lands on the CIN Patient.
    let later = with(golden("placement.changed", "001-resource-family"), |d| {
        d["eventId"] = json!("evt-099");
        d["child"] = opened["child"].clone();
    });
    let (s, b) = gw.event(&later).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(resource(&b, "Patient")["id"], new_id.as_str());
    // A client first seen WITH its CIN, then without: found by the client-id
    // identifier in the search index.
    assert_eq!(
        gw.event(&golden("case.opened", "001-court-ordered-fr"))
            .await
            .0,
        202
    );
    let cinless = with(golden("foster_care.history", "001-aged-out"), |d| {
        d["child"].as_object_mut().unwrap().remove("cin");
    });
    let (s, b) = gw.event(&cinless).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(
        resource(&b, "Patient")["id"],
        mapping::uuid5("patient|cin|91000001A").as_str()
    );
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_out_of_a_single_plan_county_starts_the_plan_determination_clock() {
    let gw = Gw::start().await;
    let kings = with(golden("placement.changed", "001-resource-family"), |d| {
        d["placement"]["county"] = json!("Kings")
    });
    assert_eq!(gw.event(&kings).await.0, 202);
    let fresno = with(golden("placement.changed", "001-resource-family"), |d| {
        d["eventId"] = json!("evt-011");
        d["occurredAt"] = json!("2026-02-02T10:00:00Z");
        d["placement"]["startDate"] = json!("2026-02-02");
    });
    assert_eq!(gw.event(&fresno).await.0, 202);
    let (s, d) = gw.get("/ops/deadlines", OPS_TOKEN).await;
    assert_eq!(s, 200, "{d}");
    let c = d["clocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["clock"] == "plan-determination")
        .expect("plan determination clock");
    assert_eq!(c["due"], "2026-02-03T10:00:00Z", "24 hours");
    assert_eq!(c["status"], "open");
    let (s, _) = gw.get("/ops/deadlines", COUNTY_TOKEN).await;
    assert_eq!(s, 403);
    gw.running.stop().await;
}

/// The clock of `kind` in `/ops/deadlines?all=true`.
async fn deadline(gw: &Gw, kind: &str) -> Option<Value> {
    let (s, d) = gw.get("/ops/deadlines?all=true", OPS_TOKEN).await;
    assert_eq!(s, 200, "{d}");
    d["clocks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["clock"] == kind)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_owes_the_family_a_notice_of_action_ten_days_before_it_starts() {
    // Guide for CWS, the plan-choice step: the eligibility worker sends the
    // Notice of Action at least 10 days before benefit activation.
    let gw = Gw::start().await;
    enrolled(&gw).await;
    assert!(deadline(&gw, "notice-of-action").await.is_none());
    // Plan B from 1 March, told on 2 February: the notice is due by the
    // end of 19 February (Pacific).
    let change = with(golden("enrollment.updated", "001-plan-a"), |d| {
        d["eventId"] = json!("evt-021");
        d["occurredAt"] = json!("2026-02-02T10:00:00-08:00");
        d["enrollment"]["planCode"] = json!("B");
        d["enrollment"]["effectiveOn"] = json!("2026-03-01");
    });
    let (s, b) = gw.event(&change).await;
    assert_eq!(s, 202, "{b}");
    let c = deadline(&gw, "notice-of-action").await.expect("NOA clock");
    let due =
        program::pacific::end_of_local_day(chrono::NaiveDate::from_ymd_opt(2026, 2, 19).unwrap());
    assert_eq!(c["due"], cws_gateway::clocks::ts(due).as_str(), "{c}");
    assert_eq!(c["status"], "open", "{c}");
    // The worker records the notice sent on 9 February: met on time.
    let sent = with(golden("enrollment.updated", "001-plan-a"), |d| {
        d["eventId"] = json!("evt-022");
        d["occurredAt"] = json!("2026-02-10T09:00:00-08:00");
        d["enrollment"]["planCode"] = json!("B");
        d["enrollment"]["effectiveOn"] = json!("2026-03-01");
        d["enrollment"]["noticeOfActionSentOn"] = json!("2026-02-09");
    });
    let (s, b) = gw.event(&sent).await;
    assert_eq!(s, 202, "{b}");
    let c = deadline(&gw, "notice-of-action").await.expect("NOA clock");
    assert_ne!(c["status"], "open", "{c}");
    let met =
        program::pacific::end_of_local_day(chrono::NaiveDate::from_ymd_opt(2026, 2, 9).unwrap());
    assert_eq!(c["closedAt"], cws_gateway::clocks::ts(met).as_str(), "{c}");
    // An enrollment that starts at once (no later benefit activation)
    // opens no notice clock.
    let same_day = with(golden("enrollment.updated", "001-plan-a"), |d| {
        d["eventId"] = json!("evt-023");
        d["occurredAt"] = json!("2026-03-05T09:00:00-08:00");
        d["enrollment"]["planCode"] = json!("A");
        d["enrollment"]["effectiveOn"] = json!("2026-03-05");
    });
    assert_eq!(gw.event(&same_day).await.0, 202);
    let c = deadline(&gw, "notice-of-action").await.expect("NOA clock");
    assert_ne!(c["status"], "open", "{c}");
    gw.running.stop().await;
}

// ---------------------------------------------------------------- referrals

fn referral(id: &str) -> Value {
    json!({
        "referralId": id,
        "member": {"cin": "91000001A", "name": {"given": ["Alex"], "family": "Rivera"}, "birthDate": "2010-03-15"},
        "referrer": {"organizationId": "county-fresno", "name": "Dana Ortiz", "role": "social worker", "relationship": "county social worker"},
        "selfReferral": false,
        "populationsOfFocus": ["8"],
        "criteria": "in foster care",
        "expedited": false,
        "currentCareManagers": [{"program": "wraparound", "organizationId": "ecm-compass"}, {"program": "other", "organizationId": "ecm-bright"}]
    })
}

fn attestation() -> Value {
    json!({"obtainedOn": "2026-01-12", "obtainedBy": "Dana Ortiz", "grantor": {"role": "parent", "name": "Maria Rivera"},
           "explained": {"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}})
}

/// A member enrolled in plan A with an open case and a placement.
async fn enrolled(gw: &Gw) {
    for (t, n) in [
        ("case.opened", "001-court-ordered-fr"),
        ("placement.changed", "001-resource-family"),
        ("enrollment.updated", "001-plan-a"),
    ] {
        let (s, b) = gw.event(&golden(t, n)).await;
        assert_eq!(s, 202, "{t}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_with_a_recorded_consent() {
    let gw = Gw::start().await;
    enrolled(&gw).await;
    // No consent yet: refused, nothing journaled for it.
    let before = gw.running.store.journal_stats().await.unwrap().total;
    let (s, b) = gw
        .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-1"))
        .await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["issue"][0]["code"], "business-rule");
    assert!(
        b["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("consent.recorded"),
        "{b}"
    );
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        before
    );
    // Record the consent, then refer.
    assert_eq!(
        gw.event(&golden("consent.recorded", "001-referral-verbal"))
            .await
            .0,
        202
    );
    let (s, b, loc) = gw
        .send(
            reqwest::Method::POST,
            "/ecm/referrals",
            COUNTY_TOKEN,
            &referral("R-1"),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["type"], "collection");
    let sr = resource(&b, "ServiceRequest");
    let task = resource(&b, "Task");
    assert_eq!(
        loc.as_deref(),
        Some(format!("/fhir/ServiceRequest/{}", sr["id"].as_str().unwrap()).as_str())
    );
    assert_eq!(sr["status"], "active");
    assert_eq!(sr["intent"], "order");
    assert_eq!(sr["priority"], "routine");
    assert_eq!(sr["code"]["coding"][0]["code"], "ecm");
    assert_eq!(sr["reasonCode"][0]["coding"][0]["code"], "8");
    assert_eq!(sr["requester"]["reference"], "Organization/county-fresno");
    assert_eq!(sr["performer"][0]["reference"], "Organization/mcp-a");
    assert!(sr["extension"].to_string().contains("self-referral"));
    assert!(
        sr["extension"].to_string().contains("pof8"),
        "the engine's evaluation is attached: {sr}"
    );
    assert!(sr["supportingInfo"].to_string().contains("Consent/"));
    assert_eq!(task["status"], "requested");
    assert_eq!(task["intent"], "order");
    assert_eq!(task["owner"]["reference"], "Organization/mcp-a");
    assert_eq!(
        task["focus"]["reference"],
        format!("ServiceRequest/{}", sr["id"].as_str().unwrap())
    );
    assert!(task["restriction"]["period"]["end"].is_string());
    // Existing contracted wraparound care manager first, then nothing else contracted & named.
    assert_eq!(
        task["input"][0]["valueReference"]["reference"],
        "Organization/ecm-compass"
    );
    assert_eq!(
        task["input"][0]["type"]["coding"][0]["code"],
        "existing-care-manager"
    );
    for e in b["entry"].as_array().unwrap() {
        assert_fhir_valid("referral", &e["resource"]);
    }
    // Replay: same answer, nothing new.
    let count = gw.running.store.resource_count(None).await.unwrap();
    let (s2, b2, loc2) = gw
        .send(
            reqwest::Method::POST,
            "/ecm/referrals",
            COUNTY_TOKEN,
            &referral("R-1"),
        )
        .await;
    assert_eq!(s2, 200, "{b2}");
    assert_eq!(loc2, loc);
    assert_eq!(types(&b2), types(&b));
    assert_eq!(resource(&b2, "Task")["id"], task["id"]);
    assert_eq!(gw.running.store.resource_count(None).await.unwrap(), count);
    // The authorization clock is open.
    let (_, d) = gw.get("/ops/deadlines", OPS_TOKEN).await;
    assert!(
        d["clocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["clock"] == "authorization-decision"
                && c["due"] == task["restriction"]["period"]["end"]),
        "{d}"
    );
    // After the withdrawal a new referral is refused again.
    assert_eq!(
        gw.event(&golden("consent.withdrawn", "001-withdraw"))
            .await
            .0,
        202
    );
    let (s, _) = gw
        .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-2"))
        .await;
    assert_eq!(s, 422);
    gw.running.stop().await;
}

/// A referral for a member the gateway knows no enrollment of is accepted
/// for the MCP it names — by `mcpId`, or by `member.planCode` with the
/// member's county — and goes to that MCP; naming no plan is a 422 (the
/// answer that tells a stranger nothing), an `mcpId` that is not a
/// configured MCP a 422 on `mcpId`. Known fee-for-service
/// or share of cost is still refused (`referral_refusals_self_referral_and_streamlined_window`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referral_for_a_member_without_a_known_enrollment_goes_to_the_plan_it_names() {
    let (gw, m) = Gw::start_with_mocks().await;
    let unnamed = with(referral("R-U1"), |r| r["consent"] = attestation());
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &unnamed).await;
    // A caller that cannot see the member gets the one answer that says
    // nothing about the member.
    assert_eq!((s, issue_expr(&b)), (422, "member".to_string()), "{b}");
    let unknown = with(referral("R-U2"), |r| {
        r["consent"] = attestation();
        r["mcpId"] = json!("county-fresno");
    });
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &unknown).await;
    assert_eq!((s, issue_expr(&b)), (422, "mcpId".to_string()), "{b}");
    let by_id = with(referral("R-U3"), |r| {
        r["consent"] = attestation();
        r["mcpId"] = json!("mcp-a");
    });
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &by_id).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(resource(&b, "Task")["status"], "requested", "{b}");
    let queued = |org: &'static str| {
        let store = gw.running.store.clone();
        async move { store.outbox_list(None, Some(org), 100).await.unwrap().len() }
    };
    assert_eq!(
        queued("mcp-a").await,
        1,
        "the referral goes to the plan it names"
    );
    let by_plan = with(referral("R-U4"), |r| {
        r["member"]["cin"] = json!("91000002B");
        r["member"]["planCode"] = json!("B");
        r["member"]["address"] = json!({"county": "Fresno"});
        r["consent"] = attestation();
    });
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &by_plan).await;
    assert_eq!(s, 201, "{b}");
    // Plan code B in Fresno is plan B.
    wait_received(&m.mcp_b, resource(&b, "Task")["id"].as_str().unwrap()).await;
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_with_an_inline_attestation() {
    let gw = Gw::start().await;
    enrolled(&gw).await;
    let missing = with(referral("R-10"), |r| {
        r["consent"] = attestation();
        r["consent"]["explained"]["duration"] = json!(false);
    });
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &missing).await;
    assert_eq!(
        (s, issue_expr(&b)),
        (422, "consent.explained.duration".to_string()),
        "{b}"
    );
    // A 15-year-old's referral consent may not come from... a youth under 12 rule does not apply; use a
    // child under 12 and the youth as grantor.
    let young = with(referral("R-11"), |r| {
        r["member"]["birthDate"] = json!("2018-05-05");
        r["consent"] = attestation();
        r["consent"]["grantor"]["role"] = json!("youth");
    });
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &young).await;
    assert_eq!(
        (s, issue_expr(&b)),
        (422, "consent.grantor.role".to_string()),
        "{b}"
    );
    let ok = with(referral("R-12"), |r| {
        r["consent"] = attestation();
        r["expedited"] = json!(true);
    });
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &ok).await;
    assert_eq!(s, 201, "{b}");
    let c = resource(&b, "Consent");
    assert_eq!(c["status"], "active");
    let rec = cws_gateway::disclosure::consent_from_fhir(c).unwrap();
    assert_eq!(rec.kind, consent::ConsentKind::ReferralVerbal);
    assert_eq!(rec.recipients, vec!["mcp-a".to_string()]);
    let sr = resource(&b, "ServiceRequest");
    assert_eq!(sr["priority"], "urgent");
    // Expedited: 72 hours from receipt.
    let task = resource(&b, "Task");
    let authored =
        chrono::DateTime::parse_from_rfc3339(task["authoredOn"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(
        task["restriction"]["period"]["end"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!((end - authored).num_hours(), 72);
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referral_refusals_self_referral_and_streamlined_window() {
    let gw = Gw::start().await;
    // Unknown member: no enrollment.
    let (s, b) = gw
        .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-20"))
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(b["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("enroll the member"));
    // FFS member: not in managed care.
    let ffs = with(golden("enrollment.updated", "001-plan-a"), |d| {
        d["eventId"] = json!("evt-ffs");
        d["enrollment"]["feeForService"] = json!(true);
        d["enrollment"].as_object_mut().unwrap().remove("planCode");
    });
    assert_eq!(gw.event(&ffs).await.0, 202);
    let (s, b) = gw
        .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-21"))
        .await;
    assert_eq!(s, 422);
    assert!(
        b["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("enroll the member in a Medi-Cal plan first"),
        "{b}"
    );
    // A plan code no MCP serves in Fresno.
    let z = with(golden("enrollment.updated", "001-plan-a"), |d| {
        d["eventId"] = json!("evt-z");
        d["enrollment"]["planCode"] = json!("K");
    });
    assert_eq!(gw.event(&z).await.0, 202);
    let (s, b) = gw
        .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-22"))
        .await;
    assert_eq!(s, 422);
    assert!(
        b["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("no configured MCP"),
        "{b}"
    );
    // Plan A. A county's referral is the SW's: `selfReferral` does not
    // waive the family's referral consent (Guide for CWS, Consent).
    let a = with(golden("enrollment.updated", "001-plan-a"), |d| {
        d["eventId"] = json!("evt-a")
    });
    assert_eq!(gw.event(&a).await.0, 202);
    let before = gw.running.store.journal_stats().await.unwrap().total;
    for relationship in ["county social worker", "parent"] {
        let (s, b) = gw
            .post(
                "/ecm/referrals",
                COUNTY_TOKEN,
                &with(referral("R-23"), |r| {
                    r["selfReferral"] = json!(true);
                    r["referrer"]["relationship"] = json!(relationship);
                }),
            )
            .await;
        assert_eq!(
            (s, issue_expr(&b)),
            (422, "selfReferral".to_string()),
            "{b}"
        );
        assert_eq!(b["issue"][0]["code"], "business-rule");
    }
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        before,
        "a refused self-referral is not journaled"
    );
    // A parent referring themselves through Compass needs no consent.
    let (s, b) = gw
        .post(
            "/ecm/referrals",
            COMPASS_TOKEN,
            &with(referral("R-23"), |r| {
                r["selfReferral"] = json!(true);
                r["referrer"] = json!({"organizationId": "ecm-compass", "name": "Maria Rivera",
                    "role": "parent", "relationship": "parent"});
            }),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert!(resource(&b, "ServiceRequest")["extension"]
        .to_string()
        .contains("\"valueBoolean\":true"));
    // A referrer may only refer as itself.
    let (s, _) = gw
        .post("/ecm/referrals", COMPASS_TOKEN, &referral("R-24"))
        .await;
    assert_eq!(s, 403);
    // Compass (wraparound, contracted with mcp-a) referring for POF 8 with a consent naming
    // mcp-a and itself as the preferred provider: streamlined window clocks.
    assert_eq!(
        gw.event(&golden("consent.recorded", "001-referral-verbal"))
            .await
            .0,
        202
    );
    let streamlined = with(referral("R-25"), |r| {
        r["referrer"]["organizationId"] = json!("ecm-compass");
        r["preferredEcmProviderId"] = json!("ecm-compass");
    });
    let (s, b) = gw.post("/ecm/referrals", COMPASS_TOKEN, &streamlined).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        resource(&b, "ServiceRequest")["performer"][0]["reference"],
        "Organization/ecm-compass"
    );
    assert!(resource(&b, "Task")["extension"]
        .to_string()
        .contains("streamlined-authorization"));
    let (_, d) = gw.get("/ops/deadlines", OPS_TOKEN).await;
    let clocks = d["clocks"].as_array().unwrap();
    let window = clocks
        .iter()
        .find(|c| c["clock"] == "streamlined-authorization-window")
        .expect("window clock");
    let due = clocks
        .iter()
        .find(|c| c["clock"] == "streamlined-referral-due")
        .expect("referral due clock");
    assert!(due["due"].as_str() < window["due"].as_str());
    // Bright (not a streamlined type) gets no window.
    let plain = with(referral("R-26"), |r| {
        r["referrer"]["organizationId"] = json!("ecm-bright");
        r["consent"] = attestation();
    });
    let (s, b) = gw.post("/ecm/referrals", BRIGHT_TOKEN, &plain).await;
    assert_eq!(s, 201, "{b}");
    assert!(!resource(&b, "Task")["extension"]
        .to_string()
        .contains("streamlined-authorization"));
    gw.running.stop().await;
}

// ---------------------------------------------------------------- Task lifecycle

async fn new_task(gw: &Gw, id: &str) -> Value {
    let (s, b) = gw
        .post(
            "/ecm/referrals",
            COUNTY_TOKEN,
            &with(referral(id), |r| r["consent"] = attestation()),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    resource(&b, "Task").clone()
}

async fn put_task(
    gw: &Gw,
    token: &str,
    task: &Value,
    status: &str,
    f: impl FnOnce(&mut Value),
) -> (u16, Value) {
    let mut t = task.clone();
    t["status"] = json!(status);
    f(&mut t);
    let (s, b, _) = gw
        .send(
            reqwest::Method::PUT,
            &format!("/fhir/Task/{}", task["id"].as_str().unwrap()),
            token,
            &t,
        )
        .await;
    (s, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lifecycle_by_the_right_and_wrong_organizations() {
    let gw = Gw::start().await;
    enrolled(&gw).await;
    let t = new_task(&gw, "T-1").await;
    // Wrong organizations that may not see the Task: the 404 of an absent
    // one (issue 14 item 10).
    assert_eq!(
        put_task(&gw, MCP_B_TOKEN, &t, "accepted", |_| {}).await.0,
        404
    );
    assert_eq!(
        put_task(&gw, COMPASS_TOKEN, &t, "accepted", |_| {}).await.0,
        404,
        "not yet the owner"
    );
    assert_eq!(
        put_task(&gw, KERN_TOKEN, &t, "cancelled", |_| {}).await.0,
        404
    );
    // Illegal transitions list the allowed ones.
    let (s, b) = put_task(&gw, MCP_A_TOKEN, &t, "completed", |_| {}).await;
    assert_eq!(s, 422);
    assert!(
        b["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("allowed: accepted, rejected"),
        "{b}"
    );
    let (s, _) = put_task(&gw, COUNTY_TOKEN, &t, "accepted", |_| {}).await;
    assert_eq!(s, 422, "the requester cannot accept");
    // Rejection needs a reason.
    let (s, b) = put_task(&gw, MCP_A_TOKEN, &t, "rejected", |_| {}).await;
    assert_eq!((s, issue_expr(&b)), (422, "Task.statusReason".to_string()));
    // Requester re-requests (edit), then the MCP accepts and assigns an uncontracted provider: refused.
    assert_eq!(
        put_task(&gw, COUNTY_TOKEN, &t, "requested", |_| {}).await.0,
        200
    );
    let (s, b) = put_task(&gw, MCP_A_TOKEN, &t, "accepted", |x| {
        x["owner"] = json!({"reference": "Organization/ecm-bee"})
    })
    .await;
    assert_eq!((s, issue_expr(&b)), (422, "Task.owner".to_string()), "{b}");
    let (s, acc) = put_task(&gw, MCP_A_TOKEN, &t, "accepted", |x| {
        x["owner"] = json!({"reference": "Organization/ecm-compass"})
    })
    .await;
    assert_eq!(s, 200, "{acc}");
    assert_eq!(acc["status"], "accepted");
    assert_eq!(acc["owner"]["reference"], "Organization/ecm-compass");
    // Same PUT again: a replay, same answer.
    let (s, again) = put_task(&gw, MCP_A_TOKEN, &t, "accepted", |x| {
        x["owner"] = json!({"reference": "Organization/ecm-compass"})
    })
    .await;
    assert_eq!(s, 200);
    assert_eq!(again["status"], "accepted");
    // The assigned provider works it.
    for st in ["in-progress", "on-hold", "in-progress"] {
        let (s, b) = put_task(&gw, COMPASS_TOKEN, &acc, st, |_| {}).await;
        assert_eq!(s, 200, "{st}: {b}");
    }
    let (s, _) = put_task(&gw, COMPASS_TOKEN, &acc, "requested", |_| {}).await;
    assert_eq!(s, 422);
    // Closing a loop needs a coded closure reason (closed-loop referral,
    // docs/mcp-ecm.md): without one, a 422 naming Task.statusReason.
    let (s, b) = put_task(&gw, COMPASS_TOKEN, &acc, "completed", |_| {}).await;
    assert_eq!(
        (s, issue_expr(&b)),
        (422, "Task.statusReason".to_string()),
        "{b}"
    );
    let (s, done) = put_task(&gw, COMPASS_TOKEN, &acc, "completed", |x| {
        x["statusReason"] = json!({"coding": [{"system": "https://gateway.example.org/fhir/CodeSystem/ecm-referral-closure-reason",
            "code": "services-received"}]})
    })
    .await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["businessStatus"]["coding"][0]["code"], "closed");
    let (s, b) = put_task(&gw, COUNTY_TOKEN, &acc, "cancelled", |_| {}).await;
    assert_eq!(s, 422, "completed is final: {b}");
    // Clocks: authorization closed, assignment and SW notice open.
    let (_, d) = gw.get("/ops/deadlines?all=true", OPS_TOKEN).await;
    let clocks = d["clocks"].as_array().unwrap();
    let auth = clocks
        .iter()
        .find(|c| c["clock"] == "authorization-decision")
        .unwrap();
    assert_eq!(auth["status"], "met");
    assert!(clocks
        .iter()
        .any(|c| c["clock"] == "ecm-provider-told-of-assignment" && c["status"] == "open"));
    assert!(clocks
        .iter()
        .any(|c| c["clock"] == "sw-notified-of-enrollment" && c["status"] == "open"));

    // A second task: rejected with a text reason (a client from before the
    // coded reasons): coded not-authorized, the reason `other`, the text kept.
    let t2 = new_task(&gw, "T-2").await;
    let (s, r) = put_task(&gw, MCP_A_TOKEN, &t2, "rejected", |x| {
        x["statusReason"] = json!({"text": "does not meet criteria"})
    })
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["businessStatus"]["coding"][0]["code"], "not-authorized");
    assert_eq!(r["statusReason"]["coding"][0]["code"], "other");
    assert_eq!(r["statusReason"]["text"], "does not meet criteria");
    assert_eq!(
        put_task(&gw, MCP_A_TOKEN, &r, "accepted", |_| {}).await.0,
        422
    );
    // A third: cancelled by the requester; then failed path on a fourth.
    let t3 = new_task(&gw, "T-3").await;
    assert_eq!(
        put_task(&gw, COUNTY_TOKEN, &t3, "cancelled", |_| {})
            .await
            .0,
        200
    );
    let t4 = new_task(&gw, "T-4").await;
    assert_eq!(
        put_task(&gw, MCP_A_TOKEN, &t4, "accepted", |_| {}).await.0,
        200
    );
    assert_eq!(
        put_task(&gw, MCP_A_TOKEN, &t4, "on-hold", |_| {}).await.0,
        200
    );
    assert_eq!(
        put_task(&gw, MCP_A_TOKEN, &t4, "failed", |x| {
            x["statusReason"] = json!({"coding": [{"system": "https://gateway.example.org/fhir/CodeSystem/ecm-referral-closure-reason",
                "code": "unable-to-reach"}]})
        })
        .await
        .0,
        200
    );
    // Unknown task → 404; the FHIR writes were journaled.
    let mut ghost = t4.clone();
    ghost["id"] = json!("no-such-task");
    let (s, _, _) = gw
        .send(
            reqwest::Method::PUT,
            "/fhir/Task/no-such-task",
            MCP_A_TOKEN,
            &ghost,
        )
        .await;
    assert_eq!(s, 404);
    gw.running.stop().await;
}

// ---------------------------------------------------------------- eligibility CLI

fn run_eligibility(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cws-gateway"));
    cmd.arg("eligibility").args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn eligibility_cli_on_fact_files() {
    let dir = tempfile::tempdir().unwrap();
    let child = |id: &str, birth: &str| json!({"clientId": id, "name": {"given": ["A"], "family": "R"}, "birthDate": birth, "sex": "female"});
    let enr = |ffs: bool| json!({"cin": "91000001A", "aidCode": "4M", "planCode": "A", "feeForService": ffs, "shareOfCost": false, "effectiveOn": "2026-01-01"});
    let files = [
        (
            "foster",
            json!({"child": child("C1", "2010-03-15"), "enrollment": enr(false),
            "placement": {"kind": "resource_family", "county": "Fresno", "startDate": "2026-01-12", "outOfCounty": false, "inFosterCare": true}}),
            true,
            "pof8",
        ),
        (
            "ffs",
            json!({"child": child("C2", "2010-03-15"), "enrollment": enr(true),
            "placement": {"kind": "ffa", "county": "Fresno", "startDate": "2025-10-01", "outOfCounty": false, "inFosterCare": true}}),
            false,
            "not-in-managed-care",
        ),
        (
            "aged-out",
            json!({"child": child("C3", "2002-01-01"), "enrollment": enr(false),
            "history": {"inFosterCareOn18thBirthday": true, "lastFosterCareEnd": "2023-01-01", "adoptionAssistance": false, "adoptionAssistanceDisability": false}}),
            true,
            "pof8.aged-out",
        ),
    ];
    for (name, facts, eligible, reason) in files {
        let p = dir.path().join(format!("{name}.json"));
        std::fs::write(&p, facts.to_string()).unwrap();
        let (code, out, err) =
            run_eligibility(&["--as-of", "2026-02-01", p.to_str().unwrap()], None);
        assert_eq!(code, 0, "{name}: {err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["eligible"], eligible, "{name}: {v}");
        assert!(v["reasons"].to_string().contains(reason), "{name}: {v}");
        if eligible {
            assert!(v["pofs"].as_array().unwrap().iter().any(|p| p == "8"));
        }
    }
    // stdin, and the age limit: aged-out youth past 26 is not eligible.
    let old = json!({"child": child("C4", "1995-01-01"), "enrollment": enr(false),
        "history": {"inFosterCareOn18thBirthday": true, "adoptionAssistance": false, "adoptionAssistanceDisability": false}});
    let (code, out, _) = run_eligibility(&["--as-of", "2026-02-01", "-"], Some(&old.to_string()));
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["eligible"], false, "{v}");
    // Bad input: exit 1, one readable line, no PHI.
    let (code, _, err) = run_eligibility(&["-"], Some("{\"child\": {\"name\": \"Rivera\"}}"));
    assert_eq!(code, 1);
    assert!(err.starts_with("error:"), "{err}");
    assert!(!err.contains("Rivera"));
    let (code, _, _) = run_eligibility(&["--as-of", "02/01/2026", "-"], Some(&old.to_string()));
    assert_eq!(code, 1);
}

// ---------------------------------------------------------------- CLI: translate, deadlines

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translate_and_deadlines_commands() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("gw.toml");
    std::fs::write(&cfg_path, common::config_text(dir.path(), &extra())).unwrap();
    let cfg_s = cfg_path.to_str().unwrap();
    // Offline translation of a case event = the golden output.
    let input = golden_dir().join("case.opened/001-court-ordered-fr.json");
    let (code, out, err) = run_bin(&[
        "translate",
        "--kind",
        "case-event",
        "--config",
        cfg_s,
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(
            golden_dir().join("case.opened/001-court-ordered-fr.expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(got, want);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"type": "case.opened"}"#).unwrap();
    let (code, _, err) = run_bin(&[
        "translate",
        "--kind",
        "case-event",
        "--config",
        cfg_s,
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("required"), "{err}");
    let (code, _, _) = run_bin(&[
        "translate",
        "--kind",
        "referral",
        "--config",
        cfg_s,
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "referrals need the store");
    // Deadlines from the store a gateway wrote.
    let running = cws_gateway::serve::start(Config::from_file(&cfg_path).unwrap())
        .await
        .unwrap();
    let gw = Gw {
        running,
        http: reqwest::Client::new(),
        _dir: tempfile::tempdir().unwrap(),
    };
    enrolled(&gw).await;
    let (s, b) = gw
        .post(
            "/ecm/referrals",
            COUNTY_TOKEN,
            &with(referral("R-CLI"), |r| r["consent"] = attestation()),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    gw.running.stop().await;
    let (code, out, err) = run_bin(&["deadlines", "--config", cfg_s]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["clock"], "authorization-decision");
    assert_eq!(
        lines[0]["due"],
        resource(&b, "Task")["restriction"]["period"]["end"]
    );
    let (code, out, _) = run_bin(&["deadlines", "--overdue", "--config", cfg_s]);
    assert_eq!(code, 0);
    assert!(out.trim().is_empty(), "nothing overdue yet: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_journaled_before_a_crash_are_finished_at_start() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // Journal an event and a referral as a crashed gateway would have left them.
    {
        let store = cws_gateway::serve::open_store(&cfg).await.unwrap();
        let now = chrono::Utc::now();
        for (eid, doc) in [
            ("evt-001", golden("case.opened", "001-court-ordered-fr")),
            ("evt-020", golden("enrollment.updated", "001-plan-a")),
        ] {
            store
                .append(store::NewInput {
                    kind: store::InputKind::CaseEvent,
                    source_org: "county-fresno".into(),
                    dedup_key: format!("Fresno|{eid}"),
                    received_at: now,
                    raw: doc.to_string().into_bytes(),
                    meta: json!({}),
                })
                .await
                .unwrap();
        }
        let r = with(referral("R-CRASH"), |r| r["consent"] = attestation());
        // A county "self-referral" journaled by an earlier version: refused
        // at recovery, never stored or routed.
        let bad = with(referral("R-CRASH-SELF"), |r| {
            r["selfReferral"] = json!(true)
        });
        for (key, doc) in [
            ("county-fresno|R-CRASH", r),
            ("county-fresno|R-CRASH-SELF", bad),
        ] {
            store
                .append(store::NewInput {
                    kind: store::InputKind::Referral,
                    source_org: "county-fresno".into(),
                    dedup_key: key.into(),
                    received_at: now,
                    raw: doc.to_string().into_bytes(),
                    meta: json!({}),
                })
                .await
                .unwrap();
        }
    }
    let running = cws_gateway::serve::start(cfg).await.unwrap();
    let stats = running.store.journal_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.processed, stats.failed),
        (0, 3, 1),
        "{stats:?}"
    );
    let (bad_sr, bad_task, _) =
        cws_gateway::sources::referral::ids("county-fresno", "R-CRASH-SELF");
    assert!(running
        .store
        .resource_get("ServiceRequest", &bad_sr)
        .await
        .unwrap()
        .is_none());
    assert!(
        running
            .store
            .outbox_list(None, None, 100)
            .await
            .unwrap()
            .iter()
            .all(|d| {
                let p = d.payload.to_string();
                !p.contains(&bad_sr) && !p.contains(&bad_task)
            }),
        "nothing of the refused self-referral is queued"
    );
    let pid = mapping::uuid5("patient|cin|91000001A");
    let srs = running
        .store
        .resources_by_patient(&pid, Some("ServiceRequest"))
        .await
        .unwrap();
    assert_eq!(srs.len(), 1);
    assert_eq!(
        running
            .store
            .resources_by_patient(&pid, Some("EpisodeOfCare"))
            .await
            .unwrap()
            .len(),
        1
    );
    running.stop().await;
}

// ---------------------------------------------------------------- who may open a referral

/// Mock endpoints of the county, the plans and the providers: what reaches each.
struct Mocks {
    county: cwsgw_scenario::mock::MockEndpoint,
    mcp_a: cwsgw_scenario::mock::MockEndpoint,
    mcp_b: cwsgw_scenario::mock::MockEndpoint,
    compass: cwsgw_scenario::mock::MockEndpoint,
    bright: cwsgw_scenario::mock::MockEndpoint,
}

impl Mocks {
    /// Every request the plans and providers other than `except` received.
    fn others(&self, except: &[&str]) -> Vec<(String, usize)> {
        [
            ("county-fresno", &self.county),
            ("mcp-a", &self.mcp_a),
            ("mcp-b", &self.mcp_b),
            ("ecm-compass", &self.compass),
            ("ecm-bright", &self.bright),
        ]
        .into_iter()
        .filter(|(o, _)| !except.contains(o))
        .map(|(o, m)| (o.to_string(), m.received().len()))
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

impl Gw {
    /// The county test gateway with every organization's endpoint a mock.
    async fn start_with_mocks() -> (Gw, Mocks) {
        use cwsgw_scenario::mock::MockEndpoint;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let m = Mocks {
            county: MockEndpoint::start().await.unwrap(),
            mcp_a: MockEndpoint::start().await.unwrap(),
            mcp_b: MockEndpoint::start().await.unwrap(),
            compass: MockEndpoint::start().await.unwrap(),
            bright: MockEndpoint::start().await.unwrap(),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut text = common::config_text(dir.path(), &extra());
        for (org, mock) in [
            ("county-fresno", &m.county),
            ("mcp-a", &m.mcp_a),
            ("mcp-b", &m.mcp_b),
            ("ecm-compass", &m.compass),
            ("ecm-bright", &m.bright),
        ] {
            text = common::org_with(&text, org, &format!("endpoint = \"{}\"", mock.base_url()));
        }
        text.push_str(
            "\n[delivery]\nmax_attempts = 3\ninitial_backoff_ms = 50\nmax_backoff_ms = 200\ntimeout_ms = 1000\nconnect_timeout_ms = 500\nlease_ms = 5000\nshutdown_grace_ms = 500\nconcurrency = 4\n",
        );
        let cfg = Config::from_toml(&text, "test").expect("county test config with endpoints");
        let running = cws_gateway::serve::start(cfg).await.unwrap();
        (
            Gw {
                running,
                http: reqwest::Client::new(),
                _dir: dir,
            },
            m,
        )
    }
}

/// Wait until `mock` received a request whose body mentions `needle`.
async fn wait_received(mock: &cwsgw_scenario::mock::MockEndpoint, needle: &str) {
    for _ in 0..200 {
        if mock
            .received()
            .iter()
            .any(|r| r.body.to_string().contains(needle))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing mentioning {needle} was delivered");
}

/// AuditEvents recorded for `recipient` about `patient` that refuse (or
/// withhold) something.
async fn refusals(gw: &Gw, patient: &str, recipient: &str) -> usize {
    gw.running
        .store
        .audit_list(0, 1000, Some(patient), Some(recipient))
        .await
        .unwrap()
        .iter()
        .filter(|a| a.kind == "refusal" || a.body.to_string().contains("\"withheld\""))
        .count()
}

fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_referral_is_a_real_one_and_opens_only_the_plan_it_was_made_to() {
    let (gw, m) = Gw::start_with_mocks().await;
    enrolled(&gw).await;
    let pid = mapping::uuid5("patient|cin|91000001A");
    let plan_b = |id: &str, relationship: &str| {
        with(referral(id), |r| {
            r["selfReferral"] = json!(true);
            r["referrer"] = json!({"organizationId": "mcp-b", "name": "Maria Rivera",
                "role": "member services", "relationship": relationship});
        })
    };
    // `selfReferral` with a referrer who is not the member, a parent, a
    // guardian or a caregiver: refused, nothing journaled or queued.
    let before = gw.running.store.journal_stats().await.unwrap().total;
    for relationship in [
        "health plan care manager",
        "county social worker",
        "Parent ",
    ] {
        let (s, b) = gw
            .post("/ecm/referrals", MCP_B_TOKEN, &plan_b("S-1", relationship))
            .await;
        assert_eq!(
            (s, issue_expr(&b)),
            (422, "selfReferral".to_string()),
            "{b}"
        );
        assert_eq!(b["issue"][0]["code"], "business-rule");
        assert!(!b.to_string().contains("Rivera"), "no PHI in errors");
    }
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        before
    );
    assert!(gw
        .running
        .store
        .outbox_list(None, None, 100)
        .await
        .unwrap()
        .is_empty());
    // A parent referring themselves through Plan B's member services: the
    // referral is made to the member's plan, Plan A.
    let (s, b) = gw
        .post("/ecm/referrals", MCP_B_TOKEN, &plan_b("S-2", "parent"))
        .await;
    assert_eq!(s, 201, "{b}");
    // Plan B's answer shows what Plan B may see: its Task's status, not
    // the ServiceRequest or the owner that name the member's plan.
    assert!(!b.to_string().contains("mcp-a"), "{b}");
    let (sr_id, task_id, _) = cws_gateway::sources::referral::ids("mcp-b", "S-2");
    assert_eq!(entry_ids(&b), vec![task_id.clone()], "{b}");
    let (s, sr) = gw
        .get(&format!("/fhir/ServiceRequest/{sr_id}"), MCP_A_TOKEN)
        .await;
    assert_eq!(
        (s, sr["performer"][0]["reference"].clone()),
        (200, json!("Organization/mcp-a"))
    );
    wait_received(&m.mcp_a, &sr_id).await;
    // Plan A reads the referral and the minimal Patient.
    let (s, _) = gw
        .get(&format!("/fhir/ServiceRequest/{sr_id}"), MCP_A_TOKEN)
        .await;
    assert_eq!(s, 200);
    let (s, p) = gw.get(&format!("/fhir/Patient/{pid}"), MCP_A_TOKEN).await;
    assert_eq!(s, 200, "{p}");
    assert!(p.get("address").is_none(), "the minimal Patient: {p}");
    // Nobody else: not the other plan, not the providers it was not made to.
    for (token, org) in [
        (MCP_B_TOKEN, "mcp-b"),
        (COMPASS_TOKEN, "ecm-compass"),
        (BRIGHT_TOKEN, "ecm-bright"),
    ] {
        for path in [
            format!("/fhir/ServiceRequest/{sr_id}"),
            format!("/fhir/Patient/{pid}"),
        ] {
            let (s, b) = gw.get(&path, token).await;
            assert_eq!(s, 404, "{org} {path}: {b}");
        }
        let (s, b) = gw
            .get(&format!("/fhir/ServiceRequest?patient={pid}"), token)
            .await;
        assert_eq!(s, 200);
        assert!(entry_ids(&b).is_empty(), "{org}: {b}");
        let (s, t) = gw.get(&format!("/fhir/Task/{task_id}"), token).await;
        if org == "mcp-b" {
            // Plan B made this referral: it learns its status, nothing more.
            assert_eq!(s, 200, "{t}");
            assert!(
                t.get("input").is_none() && t.get("restriction").is_none(),
                "{t}"
            );
            // Nor which plan the member is in: no owner.
            assert!(t.get("owner").is_none(), "{t}");
        } else {
            assert_eq!(s, 404, "{org}: {t}");
        }
        assert!(
            refusals(&gw, &pid, org).await > 0,
            "{org}: refusals audited"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        m.others(&["mcp-a"]).is_empty(),
        "{:?}",
        m.others(&["mcp-a"])
    );
    gw.running.stop().await;
}

/// The member enrolled, the youth's verbal referral consent recorded, and
/// the county's referral `id` posted: its Task.
async fn county_referral(gw: &Gw, id: &str) -> Value {
    enrolled(gw).await;
    assert_eq!(
        gw.event(&golden("consent.recorded", "001-referral-verbal"))
            .await
            .0,
        202
    );
    let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &referral(id)).await;
    assert_eq!(s, 201, "{b}");
    resource(&b, "Task").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_status_goes_only_to_that_tasks_requester() {
    let (gw, m) = Gw::start_with_mocks().await;
    let pid = mapping::uuid5("patient|cin|91000001A");
    let county_task = county_referral(&gw, "R-H1").await;
    let county_task_id = county_task["id"].as_str().unwrap().to_string();
    // Plan B then refers the same Plan A member, an ordinary referral.
    let theirs = with(referral("R-H2"), |r| {
        r["referrer"] = json!({"organizationId": "mcp-b", "name": "B care manager",
            "role": "care manager", "relationship": "health plan care manager"});
    });
    let (s, b) = gw.post("/ecm/referrals", MCP_B_TOKEN, &theirs).await;
    assert_eq!(s, 201, "{b}");
    let b_task_id = resource(&b, "Task")["id"].as_str().unwrap().to_string();
    assert_eq!(
        resource(&b, "Task")["requester"]["reference"],
        "Organization/mcp-b"
    );
    // Plan A accepts the county's Task: its status goes to the county only.
    // A PUT cannot move the Task's requester (only status, reasons, owner
    // and notes change).
    let (s, b) = put_task(&gw, MCP_A_TOKEN, &county_task, "accepted", |t| {
        t["requester"] = json!({"reference": "Organization/mcp-b"})
    })
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["requester"]["reference"], "Organization/county-fresno");
    wait_received(&m.county, &county_task_id).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(m.mcp_b.received().is_empty(), "nothing to plan B");
    assert!(gw
        .running
        .store
        .outbox_list(None, Some("mcp-b"), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(
        m.others(&["mcp-a", "county-fresno"]).is_empty(),
        "{:?}",
        m.others(&["mcp-a", "county-fresno"])
    );
    // Plan B reads its own Task's status, not the county's Task.
    let (s, b) = gw
        .get(&format!("/fhir/Task/{county_task_id}"), MCP_B_TOKEN)
        .await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = gw
        .get(&format!("/fhir/Task/{b_task_id}"), MCP_B_TOKEN)
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = gw
        .get(&format!("/fhir/Task?patient={pid}"), MCP_B_TOKEN)
        .await;
    assert_eq!(s, 200);
    assert_eq!(entry_ids(&b), vec![b_task_id.clone()], "{b}");
    assert_eq!(b["total"], 1, "the total counts only what is returned");
    assert!(refusals(&gw, &pid, "mcp-b").await > 0);
    // The county still reads its own Task's status; as the county of the
    // child's open case it also reads Plan B's referral's status (consent
    // rule R11: the case county is told each referral's status, whoever
    // referred), as a status-only Task.
    let (s, _) = gw
        .get(&format!("/fhir/Task/{county_task_id}"), COUNTY_TOKEN)
        .await;
    assert_eq!(s, 200);
    let (s, b) = gw
        .get(&format!("/fhir/Task/{b_task_id}"), COUNTY_TOKEN)
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("focus").is_some() || b.get("status").is_some(), "{b}");
    gw.running.stop().await;
}

/// The clocks that measure a notice are met by the delivery of that notice:
/// the social worker told of the enrollment (the status pushed to the
/// referring county) and the ECM provider told of its assignment (the
/// referral package pushed to the new owner). The assignment notice is due
/// 10 business days from the authorization, not from the later assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_clocks_are_met_by_the_deliveries_they_measure() {
    let (gw, m) = Gw::start_with_mocks().await;
    let task = county_referral(&gw, "R-N1").await;
    let id = task["id"].as_str().unwrap().to_string();
    let subject = format!("Task/{id}");
    // Authorized first; the status reaches the county.
    let (s, accepted) = put_task(&gw, MCP_A_TOKEN, &task, "accepted", |_| {}).await;
    assert_eq!(s, 200, "{accepted}");
    wait_received(&m.county, &id).await;
    // Assigned later; the referral package reaches the new owner.
    let (s, b) = put_task(&gw, MCP_A_TOKEN, &accepted, "accepted", |t| {
        t["owner"] = json!({"reference": "Organization/ecm-compass"})
    })
    .await;
    assert_eq!(s, 200, "{b}");
    wait_received(&m.compass, &id).await;
    let clock = |d: &Value, code: &str| -> Value {
        d["clocks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["clock"] == code && c["subject"] == subject.as_str())
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut d = Value::Null;
    for _ in 0..100 {
        d = gw.get("/ops/deadlines?all=true", OPS_TOKEN).await.1;
        if clock(&d, "sw-notified-of-enrollment")["status"] == "met"
            && clock(&d, "ecm-provider-told-of-assignment")["status"] == "met"
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sw = clock(&d, "sw-notified-of-enrollment");
    let assignment = clock(&d, "ecm-provider-told-of-assignment");
    assert_eq!(sw["status"], "met", "{d}");
    assert_eq!(assignment["status"], "met", "{d}");
    let auth = clock(&d, "authorization-decision");
    assert_eq!(auth["status"], "met", "{d}");
    assert_eq!(
        assignment["start"], auth["closedAt"],
        "the assignment notice counts from the authorization: {d}"
    );
    gw.running.stop().await;
}

/// A caller that may read a Task (a release naming it) but is neither its
/// requester nor a performer gets 403, audited once: `put_task`'s own
/// `not-a-party` refusal, marked `RefusalAudited` on the response, so the
/// scope layer adds no `refusal: forbidden` of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_put_by_a_reader_that_is_not_a_party_is_a_403_audited_once() {
    let gw = Gw::start().await;
    enrolled(&gw).await;
    let pid = mapping::uuid5("patient|cin|91000001A");
    let t = new_task(&gw, "T-NP").await;
    let release = common::consent(
        "kern-release",
        &pid,
        "release_of_information",
        "youth",
        &["county-kern"],
        &["referral", "case"],
    );
    common::seed(gw.running.store.as_ref(), vec![release]).await;
    let task_id = t["id"].as_str().unwrap();
    let (s, read) = gw.get(&format!("/fhir/Task/{task_id}"), KERN_TOKEN).await;
    assert_eq!(s, 200, "county-kern may read the Task: {read}");
    let before = gw
        .running
        .store
        .audit_list(0, 10_000, None, None)
        .await
        .unwrap()
        .len();
    let (s, b) = put_task(&gw, KERN_TOKEN, &t, "cancelled", |_| {}).await;
    assert_eq!(s, 403, "{b}");
    let after = gw
        .running
        .store
        .audit_list(0, 10_000, None, None)
        .await
        .unwrap();
    let new: Vec<String> = after[before..].iter().map(|a| a.body.to_string()).collect();
    assert_eq!(new.len(), 1, "one record for the 403: {new:?}");
    assert!(new[0].contains("not-a-party"), "{}", new[0]);
    gw.running.stop().await;
}

/// The Task entry of the first Bundle `mock` received that mentions `task_id`.
fn pushed_task(mock: &cwsgw_scenario::mock::MockEndpoint, task_id: &str) -> Value {
    mock.received()
        .iter()
        .flat_map(|r| r.body["entry"].as_array().cloned().unwrap_or_default())
        .map(|e| e["resource"].clone())
        .find(|r| r["resourceType"] == "Task" && r["id"] == task_id)
        .unwrap_or_else(|| panic!("no Task {task_id} pushed"))
}

/// Issue 14: a referral's status pushed to its referrer is decided as that
/// referrer's FHIR read: a plan that is not the member's plan gets the
/// status without the Task's owner (which plan the member is in); the
/// child's county, which sees the member, gets the owner. Each push is
/// audited as a disclosure to its recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_push_tells_a_referrer_only_what_its_read_shows() {
    let (gw, m) = Gw::start_with_mocks().await;
    enrolled(&gw).await;
    let pid = mapping::uuid5("patient|cin|91000001A");
    assert_eq!(
        gw.event(&golden("consent.recorded", "001-referral-verbal"))
            .await
            .0,
        202
    );
    let (s, b) = gw
        .post("/ecm/referrals", COUNTY_TOKEN, &referral("R-O1"))
        .await;
    assert_eq!(s, 201, "{b}");
    let county_task = resource(&b, "Task").clone();
    let theirs = with(referral("R-O2"), |r| {
        r["referrer"] = json!({"organizationId": "mcp-b", "name": "B care manager",
            "role": "care manager", "relationship": "health plan care manager"});
    });
    let (s, b) = gw.post("/ecm/referrals", MCP_B_TOKEN, &theirs).await;
    assert_eq!(s, 201, "{b}");
    let b_task = resource(&b, "Task").clone();
    let b_task_id = b_task["id"].as_str().unwrap().to_string();
    // Plan A (the member's plan) accepts both Tasks.
    for task in [&county_task, &b_task] {
        let (s, b) = put_task(&gw, MCP_A_TOKEN, task, "accepted", |_| {}).await;
        assert_eq!(s, 200, "{b}");
    }
    let stored = gw
        .running
        .store
        .resource_get("Task", &b_task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body["owner"]["reference"], "Organization/mcp-a");
    // Plan B: the status, not the owner — what its own read of the Task shows.
    wait_received(&m.mcp_b, &b_task_id).await;
    let pushed = pushed_task(&m.mcp_b, &b_task_id);
    assert_eq!(pushed["status"], "accepted", "{pushed}");
    assert!(pushed.get("owner").is_none(), "{pushed}");
    assert!(!pushed.to_string().contains("mcp-a"), "{pushed}");
    let (s, read) = gw
        .get(&format!("/fhir/Task/{b_task_id}"), MCP_B_TOKEN)
        .await;
    assert_eq!(s, 200, "{read}");
    assert!(read.get("owner").is_none(), "{read}");
    // The child's county sees the member: its push names the owner.
    let county_task_id = county_task["id"].as_str().unwrap();
    wait_received(&m.county, county_task_id).await;
    let pushed = pushed_task(&m.county, county_task_id);
    assert_eq!(pushed["owner"]["reference"], "Organization/mcp-a");
    // Both pushes audited as disclosures to their recipients.
    for (recipient, task_id) in [
        ("mcp-b", b_task_id.as_str()),
        ("county-fresno", county_task_id),
    ] {
        let audits = gw
            .running
            .store
            .audit_list(0, 1000, Some(&pid), Some(recipient))
            .await
            .unwrap();
        assert!(
            audits.iter().any(|a| a.kind == "disclosure"
                && a.body.to_string().contains(&format!("Task/{task_id}"))),
            "{recipient}: the push is audited"
        );
    }
    gw.running.stop().await;
}

/// `explain` shows a privacy officer the referral consents that count for
/// nothing (`context.not_counted`): the record without the explained flags
/// and the one with a flag false, each with the flags it does not show; the
/// counted consents do not list them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_referral_consents_that_do_not_count() {
    let gw = Gw::start().await;
    enrolled(&gw).await;
    let pid = mapping::uuid5("patient|cin|91000001A");
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
    let mut partly = common::consent(
        "partly-explained-consent",
        &pid,
        "referral_verbal",
        "parent",
        &["mcp-a"],
        &["referral"],
    );
    for e in partly["extension"].as_array_mut().unwrap() {
        if e["url"].as_str().unwrap().ends_with("/consent-explained") {
            for f in e["extension"].as_array_mut().unwrap() {
                if f["url"] == "duration" {
                    f["valueBoolean"] = json!(false);
                }
            }
        }
    }
    common::seed(gw.running.store.as_ref(), vec![old, partly]).await;
    let (s, b) = gw
        .get(
            &format!("/ops/decisions?patient={pid}&recipient=mcp-a&purpose=referral"),
            OPS_TOKEN,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let ctx = &b["context"];
    assert!(
        !ctx["consents"].to_string().contains("referral-consent")
            && !ctx["consents"].to_string().contains("partly-explained"),
        "{ctx}"
    );
    let not_counted = ctx["not_counted"].as_array().unwrap();
    let find = |id: &str| {
        not_counted
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {ctx}"))
            .clone()
    };
    let old = find("old-referral-consent");
    assert_eq!(
        old["missing"],
        json!([
            "provider",
            "informationShared",
            "duration",
            "rightToWithdraw"
        ])
    );
    assert!(old["explained"].is_null());
    assert_eq!(old["kind"], "ReferralVerbal");
    assert!(old["why"].as_str().unwrap().contains("explained"));
    let partly = find("partly-explained-consent");
    assert_eq!(partly["missing"], json!(["duration"]));
    assert_eq!(partly["explained"]["duration"], false);
    assert!(
        !b.to_string().contains("91000001A"),
        "the CIN is not echoed"
    );
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referral_consent_is_the_youths_or_the_familys() {
    let gw = Gw::start().await;
    enrolled(&gw).await;
    let before = gw.running.store.journal_stats().await.unwrap().total;
    for role in ["social_worker", "court"] {
        let recorded = with(golden("consent.recorded", "001-referral-verbal"), |d| {
            d["consent"]["grantor"]["role"] = json!(role);
        });
        let (s, b) = gw.event(&recorded).await;
        assert_eq!(
            (s, issue_expr(&b)),
            (422, "consent.grantor.role".to_string()),
            "{role}: {b}"
        );
        assert_eq!(b["issue"][0]["code"], "business-rule");
        let inline = with(referral("R-G1"), |r| {
            r["consent"] = attestation();
            r["consent"]["grantor"]["role"] = json!(role);
        });
        let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &inline).await;
        assert_eq!(
            (s, issue_expr(&b)),
            (422, "consent.grantor.role".to_string()),
            "{role}: {b}"
        );
        assert!(!b.to_string().contains("Rivera"), "no PHI in errors");
    }
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        before,
        "nothing refused is journaled"
    );
    // The youth (15) or a legal guardian may give it.
    for (n, role) in ["youth", "legal_guardian"].into_iter().enumerate() {
        let inline = with(referral(&format!("R-G{}", n + 2)), |r| {
            r["consent"] = attestation();
            r["consent"]["grantor"]["role"] = json!(role);
        });
        let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &inline).await;
        assert_eq!(s, 201, "{role}: {b}");
    }
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referral_consent_record_shows_what_was_explained() {
    let gw = Gw::start().await;
    enrolled(&gw).await;
    let before = gw.running.store.journal_stats().await.unwrap().total;
    for flag in [
        "provider",
        "informationShared",
        "duration",
        "rightToWithdraw",
    ] {
        let at = format!("consent.explained.{flag}");
        let falsy = with(golden("consent.recorded", "001-referral-verbal"), |d| {
            d["consent"]["explained"][flag] = json!(false);
        });
        let (s, b) = gw.event(&falsy).await;
        assert_eq!((s, issue_expr(&b)), (422, at.clone()), "{b}");
        assert_eq!(b["issue"][0]["code"], "business-rule");
        let missing = with(golden("consent.recorded", "001-referral-verbal"), |d| {
            d["consent"]["explained"]
                .as_object_mut()
                .unwrap()
                .remove(flag);
        });
        let (s, b) = gw.event(&missing).await;
        assert_eq!((s, issue_expr(&b)), (422, at.clone()), "{b}");
        let inline = with(referral("R-E1"), |r| {
            r["consent"] = attestation();
            r["consent"]["explained"][flag] = json!(false);
        });
        let (s, b) = gw.post("/ecm/referrals", COUNTY_TOKEN, &inline).await;
        assert_eq!((s, issue_expr(&b)), (422, at.clone()), "{b}");
    }
    assert_eq!(
        gw.running.store.journal_stats().await.unwrap().total,
        before,
        "nothing refused is journaled"
    );
    // A complete record keeps the four flags on the FHIR Consent, and
    // `explain` shows them.
    let (s, b) = gw
        .event(&golden("consent.recorded", "001-referral-verbal"))
        .await;
    assert_eq!(s, 202, "{b}");
    let c = resource(&b, "Consent");
    assert!(
        c["extension"]
            .to_string()
            .contains("/StructureDefinition/consent-explained"),
        "{c}"
    );
    let (s, b) = gw
        .post(
            "/ecm/referrals",
            COUNTY_TOKEN,
            &with(referral("R-E2"), |r| r["consent"] = attestation()),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let inline = resource(&b, "Consent");
    assert!(
        inline["extension"]
            .to_string()
            .contains("/StructureDefinition/consent-explained"),
        "{inline}"
    );
    let (s, e) = gw
        .get(
            "/ops/decisions?patient=91000001A&recipient=mcp-a",
            OPS_TOKEN,
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let consents = e["context"]["consents"].as_array().unwrap();
    assert_eq!(consents.len(), 2, "{e}");
    for c in consents {
        assert_eq!(
            c["explained"],
            json!({"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}),
            "{e}"
        );
    }
    gw.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_referral_consent_shows_what_was_explained() {
    let gw = Gw::start().await;
    enrolled(&gw).await;
    // Compass sees the member's minimal Patient under the family's consent.
    assert_eq!(
        gw.event(&golden("consent.recorded", "001-referral-verbal"))
            .await
            .0,
        202
    );
    let pid = mapping::uuid5("patient|cin|91000001A");
    let base = "https://gateway.example.org/fhir";
    let to = vec!["mcp-a".to_string()];
    let cats = vec!["referral".to_string()];
    let build = |id: &str| {
        cws_gateway::disclosure::consent_to_fhir(&cws_gateway::disclosure::ConsentSpec {
            canonical_base: base,
            id,
            identifier: None,
            patient_id: &pid,
            kind: "referral_verbal",
            grantor_role: "parent",
            grantor_name: None,
            recorded_by_org: "ecm-compass",
            recorded_at: "2026-01-20T10:00:00Z",
            recipients: &to,
            categories: &cats,
            start: "2026-01-20",
            end: None,
        })
    };
    let (s, b) = gw
        .post("/fhir/Consent", COMPASS_TOKEN, &build("c-posted-1"))
        .await;
    assert_eq!(
        (s, issue_expr(&b)),
        (422, "Consent.extension".to_string()),
        "{b}"
    );
    let mut partly = build("c-posted-2");
    let mut flags = cws_gateway::disclosure::Explained::from_input(Some(
        &json!({"provider": true, "informationShared": true, "duration": false, "rightToWithdraw": true}),
    ));
    cws_gateway::disclosure::add_explained(&mut partly, base, &flags);
    let (s, b) = gw.post("/fhir/Consent", COMPASS_TOKEN, &partly).await;
    assert_eq!(s, 422, "{b}");
    assert!(b.to_string().contains("duration"), "{b}");
    let mut whole = build("c-posted-3");
    flags.duration = Some(true);
    cws_gateway::disclosure::add_explained(&mut whole, base, &flags);
    let (s, b) = gw.post("/fhir/Consent", COMPASS_TOKEN, &whole).await;
    assert_eq!(s, 201, "{b}");
    gw.running.stop().await;
}
