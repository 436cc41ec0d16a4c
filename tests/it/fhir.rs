//! The FHIR pull API: every declared search parameter, paging under
//! concurrent inserts, consent filtering of reads, searches, totals and
//! `_include`, operator access and its audit, creates, content types.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

async fn get(c: &reqwest::Client, url: &str, token: &str) -> (StatusCode, Value) {
    let r = c.get(url).bearer_auth(token).send().await.unwrap();
    let s = r.status();
    let body = r.text().await.unwrap();
    (s, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array().and_then(|a| {
        a.iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str().map(String::from))
    })
}

/// Two youths: p1 with a verbal referral consent naming mcp-a, p2 with none.
async fn seed_two_youths(store: &dyn store::Store) {
    seed(
        store,
        vec![
            patient("p1", "91000001A", "2010-03-15"),
            patient("p2", "91000002B", "2011-05-01"),
            consent(
                "c1",
                "p1",
                "referral_verbal",
                "youth",
                &["mcp-a"],
                &["referral"],
            ),
            service_request("sr1", "p1"),
            service_request("sr2", "p2"),
            task("t1", "p1", "sr1", "requested", "mcp-a"),
            task("t2", "p2", "sr2", "requested", "mcp-a"),
            json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
                   "identifier": [{"system": "urn:enc", "value": "V1"}],
                   "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "Condition", "id": "cond1",
                   "identifier": [{"value": "COND-1"}],
                   "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "CarePlan", "id": "cp1", "status": "active", "intent": "plan",
                   "identifier": [{"system": "urn:cp", "value": "CP-1"}],
                   "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "Provenance", "id": "prov1", "recorded": "2026-01-10T09:00:00Z",
                   "target": [{"reference": "Patient/p1"}],
                   "agent": [{"who": {"reference": "Organization/county-fresno"}}]}),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_declared_search_parameter_works() {
    let (_dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    // What an assigned ECM provider sends back: its care team and assessments.
    seed(
        gw.store.as_ref(),
        vec![
            json!({"resourceType": "CareTeam", "id": "ct1", "status": "active",
                   "identifier": [{"system": "urn:ct", "value": "CT-1"}],
                   "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "QuestionnaireResponse", "id": "qr1", "status": "completed",
                   "identifier": {"system": "urn:qr", "value": "QR-1"},
                   "subject": {"reference": "Patient/p2"}}),
            json!({"resourceType": "DocumentReference", "id": "doc1", "status": "current",
                   "identifier": [{"value": "DOC-1"}],
                   "subject": {"reference": "Patient/p1"},
                   "content": [{"attachment": {"url": "https://ecm.example.org/d/1"}}]}),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let cin_q = format!("identifier={}|91000002B", CIN_SYSTEM.replace(':', "%3A"));
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("Patient", "_id=p2", vec!["p2"]),
        ("Patient", "identifier=91000001A", vec!["p1"]),
        ("Patient", &cin_q, vec!["p2"]),
        ("Patient", "_lastUpdated=ge2000-01-01", vec!["p1", "p2"]),
        ("Patient", "_lastUpdated=lt2000-01-01", vec![]),
        ("ServiceRequest", "patient=p1", vec!["sr1"]),
        (
            "ServiceRequest",
            "_id=sr1,sr2&_lastUpdated=ge2000-01-01",
            vec!["sr1", "sr2"],
        ),
        ("CarePlan", "_id=cp1&_lastUpdated=ge2000-01-01", vec!["cp1"]),
        ("Consent", "_id=c1&_lastUpdated=lt2100-01-01", vec!["c1"]),
        ("Consent", "identifier=none", vec![]),
        ("Encounter", "_id=e1&_lastUpdated=ge2000-01-01", vec!["e1"]),
        ("Condition", "_lastUpdated=ge2000-01-01", vec!["cond1"]),
        ("ServiceRequest", "subject=Patient/p2", vec!["sr2"]),
        (
            "ServiceRequest",
            "status=active&identifier=urn:sr|SR-sr1",
            vec!["sr1"],
        ),
        ("Task", "patient=Patient/p2", vec!["t2"]),
        ("Task", "subject=p1", vec!["t1"]),
        ("Task", "status=requested,accepted", vec!["t1", "t2"]),
        ("Task", "status=completed", vec![]),
        ("Task", "owner=Organization/mcp-a", vec!["t1", "t2"]),
        ("Task", "owner=mcp-b", vec![]),
        ("Task", "requester=county-fresno&focus=sr2", vec!["t2"]),
        ("Task", "identifier=|T-t1", vec![]),
        ("Task", "identifier=urn:task|T-t1", vec!["t1"]),
        (
            "Task",
            "_id=t1,t2&_lastUpdated=gt2000-01-01T00:00:00Z&_lastUpdated=le2100-01-01",
            vec!["t1", "t2"],
        ),
        (
            "CarePlan",
            "subject=p1&status=active&identifier=CP-1",
            vec!["cp1"],
        ),
        ("CarePlan", "patient=p2", vec![]),
        ("Consent", "patient=p1&status=active", vec!["c1"]),
        (
            "Encounter",
            "patient=p1&status=finished&identifier=urn:enc|V1",
            vec!["e1"],
        ),
        ("Encounter", "subject=p1", vec!["e1"]),
        ("Condition", "subject=p1&identifier=|COND-1", vec!["cond1"]),
        ("Condition", "patient=p1&_id=cond1", vec!["cond1"]),
        ("Provenance", "patient=p1", vec!["prov1"]),
        (
            "CareTeam",
            "patient=p1&status=active&identifier=urn:ct|CT-1",
            vec!["ct1"],
        ),
        (
            "CareTeam",
            "subject=p2&_id=ct1&_lastUpdated=ge2000-01-01",
            vec![],
        ),
        (
            "QuestionnaireResponse",
            "subject=Patient/p2&status=completed&identifier=QR-1",
            vec!["qr1"],
        ),
        (
            "QuestionnaireResponse",
            "patient=p1&_id=qr1&_lastUpdated=lt2100-01-01",
            vec![],
        ),
        (
            "DocumentReference",
            "patient=p1&status=current&identifier=|DOC-1",
            vec!["doc1"],
        ),
        (
            "DocumentReference",
            "subject=p1&_id=doc1&_lastUpdated=ge2000-01-01",
            vec!["doc1"],
        ),
        (
            "Provenance",
            "_id=prov1&_lastUpdated=ge2000-01-01",
            vec!["prov1"],
        ),
    ];
    for (rt, q, want) in &cases {
        let (s, b) = get(&c, &format!("{base}/fhir/{rt}?{q}"), OPS_TOKEN).await;
        assert_eq!(s, StatusCode::OK, "{rt}?{q}: {b}");
        assert_eq!(b["type"], "searchset");
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(sorted(ids(&b)), sorted(want.clone()), "{rt}?{q}");
        assert_eq!(b["total"], json!(want.len()), "{rt}?{q}");
    }
    // Every parameter declared in the CapabilityStatement was exercised above.
    let cs: Value = serde_json::from_str(cws_gateway::serve::CAPABILITY_STATEMENT).unwrap();
    for r in cs["rest"][0]["resource"].as_array().unwrap() {
        let rt = r["type"].as_str().unwrap();
        if rt == "AuditEvent" {
            continue;
        }
        for p in r["searchParam"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            assert!(
                cases.iter().any(|(t, q, _)| *t == rt
                    && q.split('&').any(|kv| kv.starts_with(&format!("{name}=")))),
                "{rt}.{name} is declared but not tested"
            );
        }
    }
    // _include=Task:focus
    let (_, b) = get(
        &c,
        &format!("{base}/fhir/Task?_id=t1&_include=Task:focus"),
        OPS_TOKEN,
    )
    .await;
    let inc: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(inc, vec!["sr1"]);
    // Strict handling: unknown parameter → 400 naming it; lenient: ignored.
    let (s, b) = get(&c, &format!("{base}/fhir/Patient?name=Rivera"), OPS_TOKEN).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(b["issue"][0]["expression"][0], "name");
    assert!(!b.to_string().contains("Rivera"), "no value echoed");
    let r = c
        .get(format!("{base}/fhir/Patient?name=Rivera&_id=p1"))
        .bearer_auth(OPS_TOKEN)
        .header("Prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    assert_eq!(ids(&b), vec!["p1"]);
    for bad in [
        "_lastUpdated=eq2026-01-01",
        "_count=x",
        "status=x",
        "_include=Patient:link",
    ] {
        let (s, _) = get(&c, &format!("{base}/fhir/Patient?{bad}"), OPS_TOKEN).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_stable_under_concurrent_inserts() {
    let (_dir, gw, base) = start_fhir().await;
    let store = gw.store.clone();
    let first: Vec<Value> = (0..7)
        .map(|i| patient(&format!("pg{i:02}"), &format!("9200000{i}A"), "2010-01-01"))
        .collect();
    seed(store.as_ref(), first).await;
    let c = reqwest::Client::new();
    let mut url = format!("{base}/fhir/Patient?_count=3");
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let (s, b) = get(&c, &url, OPS_TOKEN).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let page = ids(&b);
        assert!(page.len() <= 3);
        if pages == 0 {
            assert!(b.get("total").is_none(), "paged results carry no total");
        }
        seen.extend(page);
        pages += 1;
        // Between pages, new rows arrive (and one old row is rewritten).
        if pages == 1 {
            seed(
                store.as_ref(),
                vec![
                    patient("pg-new1", "93000001A", "2010-01-01"),
                    patient("pg00", "92000000A", "2010-01-02"),
                ],
            )
            .await;
        }
        match next_link(&b) {
            Some(n) => url = n,
            None => break,
        }
        assert!(pages < 20);
    }
    // Nothing repeated or skipped: every original row once (pg00 was seen on
    // page 1 and its rewrite sorts after the cursor, so it shows up again as
    // the new version — the new row too).
    let mut uniq = seen.clone();
    uniq.sort();
    uniq.dedup();
    for i in 0..7 {
        assert!(
            uniq.contains(&format!("pg{i:02}")),
            "pg{i:02} skipped: {seen:?}"
        );
    }
    assert!(uniq.contains(&"pg-new1".to_string()), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|s| *s == "pg-new1").count(),
        1,
        "{seen:?}"
    );
    for i in 1..7 {
        let id = format!("pg{i:02}");
        assert_eq!(seen.iter().filter(|s| **s == id).count(), 1, "{seen:?}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_filters_reads_searches_totals_and_includes() {
    let (_dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    // A later Task of p1: behind p2's withheld t2 in (last_updated, id) order.
    seed(
        gw.store.as_ref(),
        vec![task("t3", "p1", "sr1", "accepted", "mcp-a")],
    )
    .await;
    let c = reqwest::Client::new();
    // mcp-a is named by p1's referral consent: the referral package of p1.
    let (s, b) = get(&c, &format!("{base}/fhir/Task/t1"), MCP_TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["id"], "t1");
    // p2's Task is withheld: 404 with exactly the body of a true 404.
    let r = c
        .get(format!("{base}/fhir/Task/t2"))
        .bearer_auth(MCP_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let withheld = r.text().await.unwrap();
    let r = c
        .get(format!("{base}/fhir/Task/nope"))
        .bearer_auth(MCP_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let absent = r.text().await.unwrap();
    assert_eq!(
        withheld.replace("t2", "ID"),
        absent.replace("nope", "ID"),
        "a withheld read must look like a missing one"
    );
    // Encounter of p1: no release of information → withheld.
    let (s, _) = get(&c, &format!("{base}/fhir/Encounter/e1"), MCP_TOKEN).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Searches omit what is withheld, and total counts only what is returned.
    let (s, b) = get(&c, &format!("{base}/fhir/Task?status=requested"), MCP_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&b), vec!["t1"]);
    assert_eq!(b["total"], 1);
    // Page filling: with _count=1 the second page skips the withheld t2 and
    // still holds a match; paged results carry no total.
    let mut url = format!("{base}/fhir/Task?_count=1");
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (s, b) = get(&c, &url, MCP_TOKEN).await;
        assert_eq!(s, StatusCode::OK);
        assert!(b.get("total").is_none());
        seen.extend(ids(&b));
        match next_link(&b) {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(seen, vec!["t1", "t3"]);
    // _include is filtered the same way.
    let (_, b) = get(
        &c,
        &format!("{base}/fhir/Task?_include=Task:focus"),
        MCP_TOKEN,
    )
    .await;
    let all: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(all, vec!["t1", "t3", "sr1"]);
    assert_eq!(b["total"], 2, "total counts matches only");
    // Another plan, not named: nothing, and no hint of existence.
    let (_, b) = get(&c, &format!("{base}/fhir/Task"), MCP_B_TOKEN).await;
    assert_eq!(ids(&b), Vec::<String>::new());
    assert_eq!(b["total"], 0);
    // The operator sees everything.
    let (_, b) = get(&c, &format!("{base}/fhir/Task"), OPS_TOKEN).await;
    assert_eq!(sorted(ids(&b)), vec!["t1", "t2", "t3"]);
    let (s, _) = get(&c, &format!("{base}/fhir/Encounter/e1"), OPS_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    // Audit: disclosures and refusals for mcp-a, reads for ops.
    let recs = gw.store.audit_list(0, 1000, None, None).await.unwrap();
    let kinds = |org: &str, kind: &str| {
        recs.iter()
            .filter(|r| r.recipient.as_deref() == Some(org) && r.kind == kind)
            .count()
    };
    assert!(kinds("mcp-a", "disclosure") >= 4, "{recs:?}");
    assert!(kinds("mcp-a", "refusal") >= 3);
    assert!(kinds("mcp-b", "refusal") >= 1);
    assert!(kinds("ops", "read") >= 2);
    let refusal = recs
        .iter()
        .find(|r| r.kind == "refusal" && r.body.to_string().contains("Task/t2"))
        .unwrap();
    assert_eq!(refusal.body["resourceType"], "AuditEvent");
    assert_eq!(refusal.patient_id.as_deref(), Some("p2"));
    assert!(
        !refusal.body.to_string().contains("91000002B"),
        "no CIN in audit"
    );
    // Operators search the audit trail.
    let (s, b) = get(
        &c,
        &format!("{base}/fhir/AuditEvent?patient=p2&_count=200"),
        OPS_TOKEN,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!ids(&b).is_empty());
    let (s, _) = get(&c, &format!("{base}/fhir/AuditEvent"), MCP_TOKEN).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_care_plan_and_consent() {
    let (_dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    // The ECM provider holds a release for p1's care plans and case.
    seed(
        gw.store.as_ref(),
        vec![consent(
            "c-roi",
            "p1",
            "release_of_information",
            "youth",
            &["ecm-compass"],
            &["case", "health"],
        )],
    )
    .await;
    let c = reqwest::Client::new();
    let post = |rt: &str, body: Value, ctype: &str| {
        c.post(format!("{base}/fhir/{rt}"))
            .bearer_auth(ECM_TOKEN)
            .header("Content-Type", ctype)
            .body(body.to_string())
    };
    let cp = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}});
    let r = post("CarePlan", cp.clone(), "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["content-type"], "application/fhir+json");
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let created: Value =
        serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(
        loc.ends_with(&format!("/fhir/CarePlan/{id}/_history/1")),
        "{loc}"
    );
    assert_eq!(created["meta"]["security"][0]["code"], "PSY", "labels kept");
    // Stored, indexed and journaled.
    let (_, b) = get(&c, &format!("{base}/fhir/CarePlan?patient=p1"), OPS_TOKEN).await;
    assert!(ids(&b).contains(&id));
    assert_eq!(gw.store.journal_stats().await.unwrap().total, 1);
    // The same POST again: same id, not a second resource.
    let r = post("CarePlan", cp, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Bad: no subject / unknown patient / wrong type / wrong media type.
    let r = post(
        "CarePlan",
        json!({"resourceType": "CarePlan", "status": "active"}),
        "application/fhir+json",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b: Value = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    assert_eq!(b["issue"][0]["expression"][0], "CarePlan.subject");
    let r = post(
        "CarePlan",
        json!({"resourceType": "CarePlan", "subject": {"reference": "Patient/zz"}}),
        "application/fhir+json",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = post(
        "CarePlan",
        json!({"resourceType": "Consent", "subject": {"reference": "Patient/p1"}}),
        "application/fhir+json",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = post("CarePlan", json!({}), "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // An MCP may not create.
    let r = c
        .post(format!("{base}/fhir/CarePlan"))
        .bearer_auth(MCP_TOKEN)
        .header("Content-Type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Consent: a good one (the youth, 15, grants a release for case info).
    let good = consent(
        "c-new",
        "p1",
        "release_of_information",
        "youth",
        &["ecm-compass"],
        &["case"],
    );
    let r = post("Consent", good, "application/fhir+json")
        .send()
        .await
        .unwrap();
    let st = r.status();
    let b: Value = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(b["id"], "c-new");
    // A bad grantor: a social worker cannot release substance use records → 422 saying why.
    let bad = consent(
        "c-bad",
        "p1",
        "part2_written",
        "social_worker",
        &["ecm-compass"],
        &["substance_use"],
    );
    let r = post("Consent", bad, "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b: Value = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    assert_eq!(b["issue"][0]["code"], "business-rule");
    assert_eq!(b["issue"][0]["expression"][0], "Consent.extension");
    assert!(!b["issue"][0]["diagnostics"].as_str().unwrap().is_empty());
    // Not our shape.
    let mut shapeless = consent(
        "c-x",
        "p1",
        "release_of_information",
        "youth",
        &["ecm-compass"],
        &["case"],
    );
    shapeless["provision"]
        .as_object_mut()
        .unwrap()
        .remove("class");
    let r = post("Consent", shapeless, "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b: Value = serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    assert_eq!(b["issue"][0]["expression"][0], "Consent.provision.class");
    assert!(gw
        .store
        .resource_get("Consent", "c-bad")
        .await
        .unwrap()
        .is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_and_unknown_types() {
    let (_dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    let c = reqwest::Client::new();
    for accept in ["application/fhir+json", "application/json", "*/*"] {
        let r = c
            .get(format!("{base}/fhir/Patient/p1"))
            .bearer_auth(OPS_TOKEN)
            .header("Accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{accept}");
        assert_eq!(r.headers()["content-type"], "application/fhir+json");
        assert_eq!(r.headers()["etag"], "W/\"1\"");
    }
    let r = c
        .get(format!("{base}/fhir/Patient/p1"))
        .bearer_auth(OPS_TOKEN)
        .header("Accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    let (s, b) = get(&c, &format!("{base}/fhir/MessageHeader/x"), OPS_TOKEN).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b["resourceType"], "OperationOutcome");
    let r = c
        .get(format!("{base}/fhir/Patient/p1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(format!("{base}/fhir/Patient/p1"))
        .bearer_auth(STMARY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_what_may_and_may_not_be_seen() {
    let (dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    let c = reqwest::Client::new();
    let (s, b) = get(
        &c,
        &format!("{base}/ops/decisions?patient=91000001A&recipient=mcp-a&purpose=referral"),
        OPS_TOKEN,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["patient"], "p1");
    assert!(
        b["may_see"]
            .as_array()
            .unwrap()
            .contains(&json!("referral")),
        "{b}"
    );
    assert!(b["may_not_see"]
        .as_array()
        .unwrap()
        .contains(&json!("substance_use")));
    assert_eq!(b["context"]["consents"][0]["id"], "c1");
    assert!(
        !b.to_string().contains("91000001A"),
        "the CIN is not echoed"
    );
    let (s, _) = get(
        &c,
        &format!("{base}/ops/decisions?patient=00000000X&recipient=mcp-a"),
        OPS_TOKEN,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = get(
        &c,
        &format!("{base}/ops/decisions?patient=91000001A&recipient=mcp-a"),
        MCP_TOKEN,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    gw.stop().await;
    // The same through the CLI.
    let cfg_path = dir.path().join("gw.toml");
    std::fs::write(&cfg_path, config_text(dir.path(), &fhir_extra())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .args([
            "explain",
            "--patient",
            "91000001A",
            "--recipient",
            "mcp-a",
            "--purpose",
            "referral",
            "--config",
        ])
        .arg(&cfg_path)
        .env_remove("CWSGW_CONFIG")
        .env_remove("CWSGW_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["patient"], "p1");
    assert_eq!(cli["may_see"], b["may_see"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .args([
            "explain",
            "--patient",
            "00000000X",
            "--recipient",
            "mcp-a",
            "--config",
        ])
        .arg(&cfg_path)
        .env_remove("CWSGW_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("00000000X"),
        "no CIN echoed"
    );
}

/// A read and a search read the patient's consent context together with the
/// resource (`Store::*_with_context`) on every request: a Consent withdrawn
/// through another store handle on the same database (as another gateway
/// instance would) is honoured by the very next request, for reads and
/// searches alike, and both are audited as refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_withdrawn_through_another_store_is_seen_on_the_next_request() {
    let (dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    let c = reqwest::Client::new();
    let search = format!("{base}/fhir/Task?patient=p1&status=requested");
    // Permitted, twice (the second request finds nothing left over from the
    // first to reuse).
    for _ in 0..2 {
        let (s, b) = get(&c, &format!("{base}/fhir/Task/t1"), MCP_TOKEN).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = get(&c, &search, MCP_TOKEN).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ids(&b), vec!["t1"]);
    }
    // Another handle on the same database withdraws p1's referral consent.
    let other =
        store::SqliteStore::open(&dir.path().join("gw.db"), store::SqliteOptions::default())
            .unwrap();
    let mut withdrawn = consent(
        "c1",
        "p1",
        "referral_verbal",
        "youth",
        &["mcp-a"],
        &["referral"],
    );
    cws_gateway::disclosure::withdraw(&mut withdrawn, BASE, &chrono::Utc::now().to_rfc3339());
    seed(&other, vec![withdrawn]).await;
    drop(other);
    // The very next read and search are refused.
    let (s, _) = get(&c, &format!("{base}/fhir/Task/t1"), MCP_TOKEN).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = get(&c, &search, MCP_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&b), Vec::<String>::new());
    assert_eq!(b["total"], 0);
    let recs = gw
        .store
        .audit_list(0, 1000, Some("p1"), Some("mcp-a"))
        .await
        .unwrap();
    let kinds: Vec<&str> = recs.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "disclosure",
            "disclosure",
            "disclosure",
            "disclosure",
            "refusal",
            "refusal"
        ]
    );
    // Consent given again (a new version): permitted again at once.
    seed(
        gw.store.as_ref(),
        vec![consent(
            "c1",
            "p1",
            "referral_verbal",
            "youth",
            &["mcp-a"],
            &["referral"],
        )],
    )
    .await;
    let (s, b) = get(&c, &search, MCP_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&b), vec!["t1"]);
    gw.stop().await;
}

/// A search naming a patient reads that patient's context with the first
/// page; rows of the page are still decided each on its own patient's
/// context, and an operator's search (no consent) is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_search_decides_on_the_patients_own_context() {
    let (_dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    let c = reqwest::Client::new();
    let (s, b) = get(&c, &format!("{base}/fhir/Task?patient=p2"), MCP_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&b), Vec::<String>::new(), "p2 has no consent for mcp-a");
    let (_, b) = get(&c, &format!("{base}/fhir/Task?patient=p1"), MCP_TOKEN).await;
    assert_eq!(ids(&b), vec!["t1"]);
    let (_, b) = get(
        &c,
        &format!("{base}/fhir/Task?subject=Patient/p2"),
        OPS_TOKEN,
    )
    .await;
    assert_eq!(ids(&b), vec!["t2"]);
    // A patient with no matches: empty, total 0, and the query is still
    // audited (one `query` record, no entities).
    let (_, b) = get(&c, &format!("{base}/fhir/Task?patient=nobody"), MCP_TOKEN).await;
    assert_eq!(b["total"], 0);
    let last = gw
        .store
        .audit_list(0, 1000, None, Some("mcp-a"))
        .await
        .unwrap()
        .pop()
        .expect("an audit record for the empty search");
    assert_eq!(last.kind, "query");
    assert_eq!(last.body["entity"], serde_json::json!([]));
    gw.stop().await;
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: &Value,
    if_match: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut rb = c
        .request(method, url)
        .bearer_auth(token)
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string());
    if let Some(m) = if_match {
        rb = rb.header("If-Match", m);
    }
    let r = rb.send().await.unwrap();
    let s = r.status();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    (s, serde_json::from_str(&text).unwrap_or(Value::Null), etag)
}

/// Outbox rows in any state.
async fn outbox_rows(store: &dyn store::Store) -> u64 {
    store
        .outbox_depth()
        .await
        .unwrap()
        .iter()
        .map(|(_, _, n)| n)
        .sum()
}

fn expressions(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["expression"][0].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 15 item 3: invalid FHIR is refused (422, one issue per problem,
/// no value or unknown key echoed) and neither stored, journaled nor
/// routed; `$validate` runs the same checks and stores nothing; a Consent
/// without an id is assigned one; a Task update is validated too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fhir_writes_are_refused_and_validate_stores_nothing() {
    let (_dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    seed(
        gw.store.as_ref(),
        vec![consent(
            "c-roi",
            "p1",
            "release_of_information",
            "youth",
            &["ecm-compass"],
            &["case", "health"],
        )],
    )
    .await;
    let c = reqwest::Client::new();
    let post = reqwest::Method::POST;
    let good = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/p1"}});
    let mut bad_status = good.clone();
    bad_status["status"] = json!("nonsense-SECRET");
    let mut unknown = good.clone();
    unknown["foo-Jane-Doe"] = json!("x");
    unknown["activity"] = json!([{"detail": {"status": "SECRET2", "bar": 1}}]);
    let journal = || async { gw.store.journal_stats().await.unwrap().total };
    for (body, want) in [
        (&bad_status, vec!["CarePlan.status"]),
        (
            &unknown,
            vec![
                "CarePlan",
                "CarePlan.activity[0].detail",
                "CarePlan.activity[0].detail.status",
            ],
        ),
    ] {
        let (s, b, _) = send(
            &c,
            post.clone(),
            &format!("{base}/fhir/CarePlan"),
            ECM_TOKEN,
            body,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert_eq!(b["resourceType"], "OperationOutcome");
        let mut got = expressions(&b);
        got.sort();
        assert_eq!(got, want, "{b}");
        let text = b.to_string();
        for secret in ["SECRET", "Jane", "foo", "bar"] {
            assert!(!text.contains(secret), "{secret} echoed: {text}");
        }
        // The same body through $validate: 200, the same issues, nothing stored.
        let (s, v, _) = send(
            &c,
            post.clone(),
            &format!("{base}/fhir/CarePlan/$validate"),
            ECM_TOKEN,
            body,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["issue"], b["issue"]);
    }
    assert_eq!(journal().await, 0, "nothing journaled");
    let (_, b) = get(&c, &format!("{base}/fhir/CarePlan"), OPS_TOKEN).await;
    assert_eq!(ids(&b), vec!["cp1"], "nothing stored");
    assert_eq!(outbox_rows(gw.store.as_ref()).await, 0, "nothing routed");
    // $validate of a good one (also as Parameters): an information issue.
    let params = json!({"resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": good.clone()}]});
    for body in [&good, &params] {
        let (s, v, _) = send(
            &c,
            post.clone(),
            &format!("{base}/fhir/CarePlan/$validate"),
            ECM_TOKEN,
            body,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["issue"][0]["severity"], "information", "{v}");
    }
    assert_eq!(journal().await, 0, "$validate stores nothing");
    // Only writable types; only writers.
    let (s, _, _) = send(
        &c,
        post.clone(),
        &format!("{base}/fhir/Patient/$validate"),
        ECM_TOKEN,
        &json!({"resourceType": "Patient"}),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _, _) = send(
        &c,
        post.clone(),
        &format!("{base}/fhir/CarePlan/$validate"),
        STMARY_TOKEN,
        &good,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A Consent without an id is assigned one.
    let mut no_id = consent(
        "x",
        "p1",
        "release_of_information",
        "youth",
        &["ecm-compass"],
        &["case"],
    );
    no_id.as_object_mut().unwrap().remove("id");
    let (s, b, _) = send(
        &c,
        post.clone(),
        &format!("{base}/fhir/Consent"),
        ECM_TOKEN,
        &no_id,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let cid = b["id"].as_str().unwrap();
    assert!(cid.starts_with("cons-"), "{cid}");
    assert!(gw
        .store
        .resource_get("Consent", cid)
        .await
        .unwrap()
        .is_some());
    // A Task update with an element FHIR does not define, or a bad code.
    let mut t = task("t1", "p1", "sr1", "accepted", "mcp-a");
    t["foo"] = json!(1);
    let (s, b, _) = send(
        &c,
        reqwest::Method::PUT,
        &format!("{base}/fhir/Task/t1"),
        MCP_TOKEN,
        &t,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(expressions(&b), vec!["Task"]);
    let mut t = task("t1", "p1", "sr1", "accepted-ish", "mcp-a");
    t["priority"] = json!("whenever");
    let (s, b, _) = send(
        &c,
        reqwest::Method::PUT,
        &format!("{base}/fhir/Task/t1"),
        MCP_TOKEN,
        &t,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(expressions(&b), vec!["Task.status", "Task.priority"], "{b}");
    let stored = gw.store.resource_get("Task", "t1").await.unwrap().unwrap();
    assert_eq!(stored.body["status"], "requested");
    assert_eq!(stored.version_id, 1);
    gw.stop().await;
}

/// Issue 15 item 6: a PUT carrying a stale If-Match is 412 and changes
/// nothing (not journaled, not stored, not routed); a current one and none
/// at all update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_match_is_refused_and_changes_nothing() {
    let (_dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    let c = reqwest::Client::new();
    let url = format!("{base}/fhir/Task/t1");
    let put = |status: &str, if_match: Option<&'static str>| {
        let mut body = task("t1", "p1", "sr1", status, "mcp-a");
        // A closing status carries its coded closure reason (closed-loop
        // referral, docs/mcp-ecm.md).
        if matches!(status, "failed" | "completed") {
            body["statusReason"] = serde_json::json!({"coding": [{"system":
                "https://gateway.example.org/fhir/CodeSystem/ecm-referral-closure-reason", "code": "other"}],
                "text": "closed in the race"});
        }
        let c = c.clone();
        let url = url.clone();
        async move { send(&c, reqwest::Method::PUT, &url, MCP_TOKEN, &body, if_match).await }
    };
    let (s, b, etag) = put("accepted", Some("W/\"1\"")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(etag.as_deref(), Some("W/\"2\""));
    let journaled = gw.store.journal_stats().await.unwrap().total;
    let outbox = outbox_rows(gw.store.as_ref()).await;
    // The other party still holds version 1.
    let (s, b, _) = put("in-progress", Some("W/\"1\"")).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{b}");
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(b["issue"][0]["code"], "conflict");
    let stored = gw.store.resource_get("Task", "t1").await.unwrap().unwrap();
    assert_eq!(
        (stored.version_id, stored.body["status"].as_str()),
        (2, Some("accepted"))
    );
    assert_eq!(gw.store.journal_stats().await.unwrap().total, journaled);
    assert_eq!(
        outbox_rows(gw.store.as_ref()).await,
        outbox,
        "nothing routed"
    );
    // The current version, then no If-Match at all.
    let (s, b, etag) = put("in-progress", Some("W/\"2\"")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(etag.as_deref(), Some("W/\"3\""));
    let (s, b, _) = put("on-hold", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Two updates racing with the same (current) version: one wins, the
    // other is 412 — never both. (Bodies differ: a body sent before is a
    // replay of that update, docs/county.md.)
    let (a, b) = tokio::join!(
        put("failed", Some("W/\"4\"")),
        put("completed", Some("W/\"4\""))
    );
    let mut got = vec![a.0, b.0];
    got.sort();
    assert_eq!(
        got,
        vec![StatusCode::OK, StatusCode::PRECONDITION_FAILED],
        "{a:?} {b:?}"
    );
    let stored = gw.store.resource_get("Task", "t1").await.unwrap().unwrap();
    assert_eq!(stored.version_id, 5);
    // The CapabilityStatement says so.
    let cs: Value = serde_json::from_str(cws_gateway::serve::CAPABILITY_STATEMENT).unwrap();
    let task_cs = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Task")
        .unwrap();
    assert_eq!(task_cs["versioning"], "versioned-update");
    assert!(task_cs["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["code"] == "update"));
    // Every type declaring $validate serves it; no other does.
    for r in cs["rest"][0]["resource"].as_array().unwrap() {
        let rt = r["type"].as_str().unwrap();
        let declared = r["operation"]
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o["name"] == "validate"));
        let (s, _, _) = send(
            &c,
            reqwest::Method::POST,
            &format!("{base}/fhir/{rt}/$validate"),
            COUNTY_TOKEN,
            &json!({"resourceType": rt}),
            None,
        )
        .await;
        if declared {
            assert_eq!(s, StatusCode::OK, "{rt}/$validate is declared");
        } else {
            assert_ne!(s, StatusCode::OK, "{rt}/$validate is served, not declared");
        }
    }
    gw.stop().await;
}

/// Issue 15 item 8: `identifier=|value` finds an identifier without a
/// system (and only such); `_count=0` is the total alone, counting only
/// what the caller may see; too many repeats name the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_zero_identifier_without_system_and_repeat_limits() {
    let (_dir, gw, base) = start_fhir().await;
    seed_two_youths(gw.store.as_ref()).await;
    seed(
        gw.store.as_ref(),
        vec![json!({"resourceType": "Patient", "id": "p3",
            "identifier": [{"value": "LOCAL-9"}], "birthDate": "2012-01-01"})],
    )
    .await;
    let c = reqwest::Client::new();
    for (q, want) in [
        ("identifier=|LOCAL-9", vec!["p3"]),
        ("identifier=%7CLOCAL-9", vec!["p3"]),
        ("identifier=LOCAL-9", vec!["p3"]),
        // p1's CIN has a system: `|value` means "no system".
        ("identifier=|91000001A", vec![]),
        ("identifier=|LOCAL-9,|91000001A", vec!["p3"]),
    ] {
        let (s, b) = get(&c, &format!("{base}/fhir/Patient?{q}"), OPS_TOKEN).await;
        assert_eq!(s, StatusCode::OK, "{q}: {b}");
        assert_eq!(ids(&b), want, "{q}");
    }
    // _count=0: total, no entries; withheld matches are not counted.
    for (token, want) in [(OPS_TOKEN, 2), (MCP_TOKEN, 1), (MCP_B_TOKEN, 0)] {
        let (s, b) = get(&c, &format!("{base}/fhir/Task?_count=0"), token).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["type"], "searchset");
        assert_eq!(b["total"], want, "{b}");
        assert_eq!(b["entry"], json!([]), "{b}");
        assert!(next_link(&b).is_none());
    }
    let (_, b) = get(
        &c,
        &format!("{base}/fhir/Task?_count=0&status=requested&_include=Task:focus"),
        MCP_TOKEN,
    )
    .await;
    assert_eq!(
        (b["total"].clone(), b["entry"].clone()),
        (json!(1), json!([]))
    );
    // Too many repeats of one parameter: the 400 names that parameter.
    let q = vec!["status=requested"; 17].join("&");
    let (s, b) = get(&c, &format!("{base}/fhir/Task?_count=5&{q}"), OPS_TOKEN).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["issue"][0]["expression"][0], "status", "{b}");
    gw.stop().await;
}

/// Search query strings: `+` is a space and `%2B` a plus in a value; a `%`
/// without two hex digits or bytes that are not UTF-8 once decoded are a 400
/// naming what is wrong (not a search for a mangled value), never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_query_decoding_plus_escapes_and_malformed_input() {
    let (_dir, gw, base) = start_fhir().await;
    seed(
        gw.store.as_ref(),
        vec![
            json!({"resourceType": "Patient", "id": "p-plus",
                "identifier": [{"system": "urn:local", "value": "A+B"}], "birthDate": "2012-01-01"}),
            json!({"resourceType": "Patient", "id": "p-space",
                "identifier": [{"system": "urn:local", "value": "A B"}], "birthDate": "2012-01-02"}),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    for (q, want) in [
        ("identifier=urn:local%7CA%2BB", vec!["p-plus"]),
        ("identifier=urn:local%7CA+B", vec!["p-space"]),
        ("identifier=urn:local%7CA%20B", vec!["p-space"]),
        ("identifier=urn%3Alocal|A%2bB", vec!["p-plus"]),
    ] {
        let (s, b) = get(&c, &format!("{base}/fhir/Patient?{q}"), OPS_TOKEN).await;
        assert_eq!(s, StatusCode::OK, "{q}: {b}");
        assert_eq!(ids(&b), want, "{q}");
    }
    for (q, why) in [
        (
            "identifier=%zz",
            "a % is not followed by two hexadecimal digits",
        ),
        (
            "identifier=A%2",
            "a % is not followed by two hexadecimal digits",
        ),
        ("%G1=x", "a % is not followed by two hexadecimal digits"),
        ("identifier=%FF", "not UTF-8"),
        ("identifier=%C3%28", "not UTF-8"),
        ("_id=%E2%82", "not UTF-8"),
    ] {
        let (s, b) = get(&c, &format!("{base}/fhir/Patient?{q}"), OPS_TOKEN).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome", "{q}: {b}");
        assert_eq!(b["issue"][0]["code"], "invalid", "{q}: {b}");
        let text = b["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("the query string is malformed") && text.contains(why),
            "{q}: {b}"
        );
    }
    gw.stop().await;
}
