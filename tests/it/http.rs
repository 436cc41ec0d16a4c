//! The HTTP edge: `POST /hl7/v2`, health, metrics, metadata, auth and limits.

use reqwest::StatusCode;

use crate::common::*;

async fn start() -> (tempfile::TempDir, cws_gateway::serve::Running, String) {
    let dir = tempfile::tempdir().unwrap();
    let running = cws_gateway::serve::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", running.http_addr);
    (dir, running, base)
}

fn post_hl7(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut r = client
        .post(format!("{base}/hl7/v2"))
        .header("Content-Type", "x-application/hl7-v2+er7")
        .body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_over_http_has_the_same_semantics() {
    let (_dir, gw, base) = start().await;
    let c = reqwest::Client::new();
    let msg = adt("A01", "HTTP1", "STMARY").into_bytes();
    let resp = post_hl7(&c, &base, Some(STMARY_TOKEN), msg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "x-application/hl7-v2+er7"
    );
    let ack = resp.text().await.unwrap();
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "HTTP1");
    // Duplicate → AA again, one journal record.
    let ack = post_hl7(&c, &base, Some(STMARY_TOKEN), msg)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 1);
    // Over HTTP, MSH-4 must be one of the caller's own facilities.
    let other = adt("A01", "HTTP2", "VALLEYHIE").into_bytes();
    let ack = post_hl7(&c, &base, Some(STMARY_TOKEN), other)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
    // Unparseable → AE with ERR.
    let ack = post_hl7(&c, &base, Some(STMARY_TOKEN), b"garbage".to_vec())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(field(&ack, "MSA", 1), "AE", "{ack}");
    // Enhanced mode: the commit ACK and the application ACK, in that order.
    let enh = adt("A01", "HTTP3", "STMARY").replacen("|P|2.5.1\r", "|P|2.5.1|||AL|AL\r", 1);
    let body = post_hl7(&c, &base, Some(STMARY_TOKEN), enh.into_bytes())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let codes: Vec<String> = body
        .split('\r')
        .filter(|s| s.starts_with("MSA|"))
        .map(|s| s.split('|').nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(codes, vec!["CA", "AA"], "{body}");
    wait_translated(gw.store.as_ref()).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_media_type_and_size_limits() {
    let (_dir, gw, base) = start().await;
    let c = reqwest::Client::new();
    let msg = adt("A01", "AUTH1", "STMARY").into_bytes();
    // No token → 401 OperationOutcome.
    let resp = post_hl7(&c, &base, None, msg.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let oo: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    // Unknown token → 401.
    let resp = post_hl7(&c, &base, Some("nope"), msg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A county may not post ADT → 403.
    let resp = post_hl7(&c, &base, Some(COUNTY_TOKEN), msg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let oo: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(oo["issue"][0]["code"], "forbidden");
    // Wrong media type → 415.
    let resp = c
        .post(format!("{base}/hl7/v2"))
        .bearer_auth(STMARY_TOKEN)
        .header("Content-Type", "application/json")
        .body(msg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Over the body limit (64 KiB in the test config): answered in HL7, an
    // AR with ERR 102 (permanent), not plain text; MSA-2 names the message
    // when its head shows MSH-10.
    let resp = post_hl7(&c, &base, Some(STMARY_TOKEN), vec![b'x'; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "x-application/hl7-v2+er7"
    );
    let ack = resp.text().await.unwrap();
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
    assert!(ack.contains("\rERR|"), "{ack}");
    assert!(ack.contains("102^"), "{ack}");
    let mut big = adt("A01", "HTTPBIG1", "STMARY");
    big.push_str("NTE|1||");
    big.push_str(&"x".repeat(200_000));
    big.push('\r');
    let ack = post_hl7(&c, &base, Some(STMARY_TOKEN), big.into_bytes())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "HTTPBIG1");
    assert!(ack.contains("exceeds the limit of 65536 bytes"), "{ack}");
    assert!(!ack.contains("resend later"), "{ack}");
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_metadata() {
    let (_dir, gw, base) = start().await;
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let msg = adt("A03", "MET1", "STMARY").into_bytes();
    post_hl7(&c, &base, Some(STMARY_TOKEN), msg)
        .send()
        .await
        .unwrap();
    // Metrics are for operators.
    assert_eq!(
        c.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.get(format!("{base}/metrics"))
            .bearer_auth(STMARY_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    wait_translated(gw.store.as_ref()).await;
    let needles = [
        "cwsgw_hl7_messages_received_total{type=\"ADT^A03\"} 1",
        "cwsgw_hl7_acks_total{code=\"AA\",type=\"ADT^A03\"} 1",
        "cwsgw_journal_commit_seconds_count",
        "cwsgw_translate_queue_depth",
        "cwsgw_journal_records{state=\"processed\"} 1",
        "cwsgw_translations_total{outcome=\"ok\"} 1",
    ];
    // The worker counts a translation after its store commit returns, so the
    // journal can show nothing pending a moment before the counter moves:
    // read the metrics until every line is there, for at most 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = c
            .get(format!("{base}/metrics"))
            .bearer_auth(OPS_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if needles.iter().all(|n| text.contains(n)) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for needle in needles {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // No PHI in metrics: not the name, not the CIN.
    assert!(!text.contains("Rivera") && !text.contains("91000001A"));
    // /fhir/metadata serves the CapabilityStatement from conformance/, unauthenticated.
    let resp = c.get(format!("{base}/fhir/metadata")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let mut file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("conformance/CapabilityStatement.json")).unwrap(),
    )
    .unwrap();
    // The file as is, but for this instance's own URLs.
    cws_gateway::serve::set_live_urls(&mut file, &base, &format!("{base}/auth/token"));
    assert_eq!(served, file);
    assert_eq!(
        served["rest"][0]["security"]["extension"][0]["extension"][0]["valueUri"],
        format!("{base}/auth/token")
    );
    gw.stop().await;
}

/// Every request the HTTP API answers is counted in
/// `cwsgw_http_requests_total` by route template and status class: refusals
/// too, and a path no route matched under `unmatched` (never the path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_counted_by_route_and_status_class() {
    let (_dir, gw, base) = start().await;
    let c = reqwest::Client::new();
    for _ in 0..3 {
        let resp = c.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = c
        .get(format!("{base}/no/such/Rivera"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let msg = adt("A01", "REQ1", "STMARY").into_bytes();
    let resp = post_hl7(&c, &base, Some(STMARY_TOKEN), msg)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Counted before the response leaves, so the next scrape has them all.
    let scrape = || async {
        let resp = c
            .get(format!("{base}/metrics"))
            .bearer_auth(OPS_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.unwrap()
    };
    let text = scrape().await;
    for line in [
        "# TYPE cwsgw_http_requests_total counter",
        "cwsgw_http_requests_total{route=\"/healthz\",status=\"2xx\"} 3",
        "cwsgw_http_requests_total{route=\"/metrics\",status=\"4xx\"} 1",
        "cwsgw_http_requests_total{route=\"unmatched\",status=\"4xx\"} 1",
        "cwsgw_http_requests_total{route=\"/hl7/v2\",status=\"2xx\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains("Rivera"), "{text}");
    // The scrape itself counts once it is answered.
    let text = scrape().await;
    assert!(
        text.contains("cwsgw_http_requests_total{route=\"/metrics\",status=\"2xx\"} 1\n"),
        "{text}"
    );
    assert_eq!(gw.metrics.http_requests.get("/metrics", "2xx"), 2);
    gw.stop().await;
}

/// With no traffic the gateway writes nothing. Its pollers still run (a
/// delivery worker per endpoint claims every 250 ms, the translation worker
/// scans the journal), but a poll that finds nothing is no commit and costs
/// no WAL fsync; the two counters used to climb about 9 a second at idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_neither_commits_nor_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let text = org_with(
        &config_text(dir.path(), ""),
        "mcp-a",
        r#"endpoint = "http://127.0.0.1:9/fhir""#,
    );
    let cfg = cws_gateway::config::Config::from_toml(&text, "test").unwrap();
    let gw = cws_gateway::serve::start(cfg).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let m = gw.store.metrics();
    assert_eq!((m.commits, m.wal_syncs), (0, 0), "{m:?}");
    gw.stop().await;
}

/// The CapabilityStatement must match what the server does: every declared
/// resource interaction answers, and nothing undeclared is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_statement_matches_what_is_served() {
    let (_dir, gw, base) = start().await;
    let c = reqwest::Client::new();
    let cs: serde_json::Value =
        serde_json::from_str(cws_gateway::serve::CAPABILITY_STATEMENT).unwrap();
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let declared: Vec<String> = cs["rest"][0]["resource"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["type"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for rt in [
        "Patient",
        "Encounter",
        "Condition",
        "ServiceRequest",
        "Task",
        "CarePlan",
        "Consent",
        "CareTeam",
        "QuestionnaireResponse",
        "DocumentReference",
        "Provenance",
        "AuditEvent",
        "MessageHeader",
    ] {
        let status = c
            .get(format!("{base}/fhir/{rt}"))
            .bearer_auth(OPS_TOKEN)
            .send()
            .await
            .unwrap()
            .status();
        if declared.iter().any(|d| d == rt) {
            assert_eq!(status, StatusCode::OK, "{rt} is declared but not served");
        } else {
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{rt} is served but not declared"
            );
        }
    }
    gw.stop().await;
}
