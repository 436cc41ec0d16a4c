//! A real FHIR client library drives the pull API: the `fhir-sdk` crate's
//! client with its R4B models (wire-compatible with R4 for the resources
//! used here) reads a Patient and a Task, searches with paging, and updates
//! a Task with PUT — against data seeded through the county API.

use fhir_sdk::client::{Client, RequestSettings, SearchParameters, TokenSearch};
use fhir_sdk::header::{HeaderValue, AUTHORIZATION};
use fhir_sdk::r4b::codes::TaskStatus;
use fhir_sdk::r4b::resources::{Patient, Task};
use fhir_sdk::version::FhirR4B;
use serde_json::{json, Value};

use crate::common::*;

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
        "expedited": false,
        "currentCareManagers": [],
        "consent": {"obtainedOn": "2026-01-12", "obtainedBy": "Dana Ortiz", "grantor": {"role": "parent", "name": "Maria Rivera"},
            "explained": {"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}}
    })
}

async fn post(http: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = http
        .post(url)
        .bearer_auth(COUNTY_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, serde_json::from_str(&r.text().await.unwrap()).unwrap())
}

/// A fhir-sdk client for `{base}/fhir` sending `Authorization: Bearer {token}`
/// on every request (its `RequestSettings` headers), no retries.
fn sdk(base: &str, token: Option<&str>) -> Client<FhirR4B> {
    let mut settings = RequestSettings::default().retries(0);
    if let Some(t) = token {
        settings = settings.header(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    Client::<FhirR4B>::builder()
        .base_url(format!("{base}/fhir").parse().unwrap())
        .request_settings(settings)
        .build()
        .unwrap()
}

fn reference(r: &Option<fhir_sdk::r4b::types::Reference>) -> Option<&str> {
    r.as_ref().and_then(|r| r.reference.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_sdk_client_reads_searches_pages_and_updates_a_task() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (_dir, gw, base) = start_fhir().await;
    let http = reqwest::Client::new();

    // Seed through the public county API: an enrolled youth, two referrals.
    for (t, n) in [
        ("case.opened", "001-court-ordered-fr"),
        ("placement.changed", "001-resource-family"),
        ("enrollment.updated", "001-plan-a"),
    ] {
        let (s, b) = post(&http, format!("{base}/cws/events"), &golden(t, n)).await;
        assert_eq!(s, 202, "{t}: {b}");
    }
    let mut tasks = Vec::new();
    for id in ["R-SDK-1", "R-SDK-2"] {
        let (s, b) = post(&http, format!("{base}/ecm/referrals"), &referral(id)).await;
        assert_eq!(s, 201, "{b}");
        let task = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .find(|r| r["resourceType"] == "Task")
            .unwrap()
            .clone();
        tasks.push(task);
    }
    let task_id = tasks[0]["id"].as_str().unwrap().to_string();
    let patient_id = tasks[0]["for"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_string();

    // Plan A (the Tasks' owner) with its static bearer token.
    let client = sdk(&base, Some(MCP_TOKEN));

    // Read a Patient, typed.
    let patient: Patient = client
        .read::<Patient>(&patient_id)
        .await
        .unwrap()
        .expect("the Patient is visible to the plan");
    assert_eq!(patient.id.as_deref(), Some(patient_id.as_str()));
    assert_eq!(
        patient.birth_date,
        Some("2010-03-15".parse::<fhir_sdk::Date>().unwrap())
    );
    let cin = patient
        .identifier
        .iter()
        .flatten()
        .find(|i| i.system.as_deref() == Some(CIN_SYSTEM))
        .and_then(|i| i.value.as_deref());
    assert_eq!(cin, Some("91000001A"));

    // Read a Task, typed.
    let task: Task = client.read::<Task>(&task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Requested);
    assert_eq!(reference(&task.owner), Some("Organization/mcp-a"));
    assert_eq!(
        reference(&task.r#for),
        Some(format!("Patient/{patient_id}").as_str())
    );

    // Search by identifier.
    let page = client
        .search::<Patient>(SearchParameters::empty().and(TokenSearch::Standard {
            name: "identifier",
            system: Some(CIN_SYSTEM),
            code: Some("91000001A"),
            not: false,
        }))
        .await
        .unwrap();
    let found: Vec<&Patient> = page.matches().collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id.as_deref(), Some(patient_id.as_str()));

    // Search Task?owner= one per page, following Bundle.link[next].
    let first = client
        .search::<Task>(
            SearchParameters::empty()
                .and_raw("owner", "Organization/mcp-a")
                .and_raw("_count", 1),
        )
        .await
        .unwrap();
    let mut seen: Vec<String> = first
        .matches()
        .map(|t| t.id.clone().unwrap_or_default())
        .collect();
    assert_eq!(seen.len(), 1);
    assert!(first.next_page_url().is_some(), "a next link");
    let second = first.next_page().await.expect("a second page").unwrap();
    seen.extend(second.matches().map(|t| t.id.clone().unwrap_or_default()));
    if let Some(third) = second.next_page().await {
        let third = third.unwrap();
        assert_eq!(third.matches().count(), 0, "only two Tasks");
    }
    seen.sort();
    let mut expected: Vec<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(seen, expected);

    // Update (PUT) the Task: the plan accepts it.
    let mut accepted = task.clone();
    accepted.status = TaskStatus::Accepted;
    let (created, version) = client.update(&accepted, false).await.unwrap();
    assert!(!created);
    assert!(!version.is_empty());
    let reread: Task = client.read::<Task>(&task_id).await.unwrap().unwrap();
    assert_eq!(reread.status, TaskStatus::Accepted);
    assert_eq!(
        reread.meta.as_ref().and_then(|m| m.version_id.clone()),
        Some(version)
    );

    // A conditional update (If-Match) from the stale copy, read at version
    // 1, is refused (412) and changes nothing; from the current one it works.
    let mut stale = task.clone();
    stale.status = TaskStatus::InProgress;
    let err = client.update(&stale, true).await.unwrap_err();
    assert!(format!("{err:?}").contains("412"), "{err:?}");
    let still: Task = client.read::<Task>(&task_id).await.unwrap().unwrap();
    assert_eq!(still.status, TaskStatus::Accepted);
    let mut current = still.clone();
    current.status = TaskStatus::InProgress;
    let (_, v3) = client.update(&current, true).await.unwrap();
    assert_ne!(
        Some(v3),
        reread.meta.as_ref().and_then(|m| m.version_id.clone())
    );

    // Without a token the client gets the 401 as an error.
    let anonymous = sdk(&base, None);
    assert!(anonymous.read::<Task>(&task_id).await.is_err());
    gw.stop().await;
}
