//! The audit trail: one record per request, `cws-gateway audit verify`
//! detecting a tampered row, a truncated chain (against the signed
//! checkpoint) and a missing key, and `serve` refusing to run without a key.

use std::process::Command;

use reqwest::StatusCode;

use crate::common::*;

fn verify(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .env_remove("CWSGW_CONFIG")
        .env_remove("CWSGW_DATABASE_URL")
        .env_remove("CWSGW_AUDIT_KEY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_refusals_are_audited_and_tampering_is_detected() {
    let (dir, gw, base) = start_fhir().await;
    seed(
        gw.store.as_ref(),
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
            task("t1", "p1", "sr1", "requested", "mcp-a"),
            task("t2", "p2", "sr1", "requested", "mcp-a"),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let get = |url: String, tok: &'static str| c.get(url).bearer_auth(tok).send();
    assert_eq!(
        get(format!("{base}/fhir/Task/t1"), MCP_TOKEN)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get(format!("{base}/fhir/Task/t2"), MCP_TOKEN)
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(format!("{base}/fhir/Patient/p2"), OPS_TOKEN)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let recs = gw.store.audit_list(0, 100, None, None).await.unwrap();
    let summary: Vec<(String, Option<String>, Option<String>)> = recs
        .iter()
        .map(|r| (r.kind.clone(), r.recipient.clone(), r.patient_id.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("disclosure".into(), Some("mcp-a".into()), Some("p1".into())),
            ("refusal".into(), Some("mcp-a".into()), Some("p2".into())),
            ("read".into(), Some("ops".into()), Some("p2".into())),
        ]
    );
    assert_eq!(recs[0].body["entity"][1]["what"]["reference"], "Task/t1");
    assert_eq!(recs[1].body["outcome"], "4");
    let withheld = &recs[1].body["entity"][1];
    assert_eq!(withheld["what"]["reference"], "Task/t2");
    assert_eq!(withheld["detail"][0]["valueString"], "withheld");
    assert!(withheld["detail"][1]["valueString"]
        .as_str()
        .unwrap()
        .starts_with("R1 "));
    assert_eq!(
        recs[0].body["entity"][1]["detail"][0]["valueString"],
        "disclosed"
    );
    // Sealed with the (demo) key: chain version 3 (RFC 8785 bodies).
    assert!(recs
        .iter()
        .all(|r| r.version == 3 && r.key_id.as_deref() == Some("demo-only")));
    assert_eq!(
        recs[2].body["purposeOfEvent"][0]["coding"][0]["code"],
        "HOPERAT"
    );
    // Served to operators as AuditEvent resources.
    let r = get(format!("{base}/fhir/AuditEvent/2"), OPS_TOKEN)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ev: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap();
    assert_eq!(ev["id"], "2");
    assert_eq!(ev["meta"]["tag"][0]["code"], recs[1].hash);
    gw.stop().await;

    let cfg_path = dir.path().join("gw.toml");
    std::fs::write(&cfg_path, config_text(dir.path(), &fhir_extra())).unwrap();
    // `serve` wrote a signed checkpoint of the head beside the database
    // when it stopped (record 4: the operator's read of AuditEvent/2).
    let checkpoints = std::fs::read_to_string(dir.path().join("gw.db.audit-checkpoints")).unwrap();
    assert!(
        checkpoints.lines().last().unwrap().contains("\"seq\":4"),
        "{checkpoints}"
    );
    let (code, out) = verify(&cfg_path);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            "audit trail intact (4 records; checkpoint at record 4 matches)"
        )
    );
    let db = dir.path().join("gw.db");
    let sql = |stmt: &str| {
        let st = Command::new("sqlite3")
            .arg(&db)
            .arg(stmt)
            .status()
            .expect("the sqlite3 CLI is needed for this test");
        assert!(st.success());
    };
    // Truncation: the last record deleted and the head moved back. The
    // shorter chain is a valid chain; the checkpoint catches it.
    sql(
        "CREATE TABLE saved_audit AS SELECT * FROM audit WHERE seq = 4; \
         CREATE TABLE saved_ap AS SELECT * FROM audit_patients WHERE seq = 4;",
    );
    sql(
        "DELETE FROM audit WHERE seq = 4; DELETE FROM audit_patients WHERE seq = 4; \
         UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit WHERE seq = 3);",
    );
    let (code, out) = verify(&cfg_path);
    assert_eq!(
        (code, out.trim()),
        (
            1,
            "audit trail truncated: it ends at record 3, the checkpoint is at record 4"
        )
    );
    sql("INSERT INTO audit SELECT * FROM saved_audit; \
         INSERT INTO audit_patients SELECT * FROM saved_ap; \
         UPDATE audit_head SET seq = 4, hash = (SELECT hash FROM audit WHERE seq = 4);");
    let (code, _) = verify(&cfg_path);
    assert_eq!(code, 0);
    // Tamper with the second record's body through raw SQL.
    sql("UPDATE audit SET body = replace(body, 'Task/t2', 'Task/t9') WHERE seq = 2;");
    let (code, out) = verify(&cfg_path);
    assert_eq!((code, out.trim()), (1, "audit trail broken at record 2"));
    // Without the key the keyed chain cannot be verified at all.
    std::fs::write(
        &cfg_path,
        config_text(dir.path(), &fhir_extra()).replace("demo_key = true", "require_key = false"),
    )
    .unwrap();
    let (code, _) = verify(&cfg_path);
    assert_ne!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_start_without_an_audit_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &fhir_extra()).replace("demo_key = true\n", "");
    let cfg = cws_gateway::config::Config::from_toml(&text, "t").unwrap();
    let err = match cws_gateway::serve::start(cfg).await {
        Ok(_) => panic!("started without an audit key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no audit key"), "{err}");
}

/// Issue 14 item 9: what one consent-restricted search of 256 Tasks (256
/// patients, half with a referral consent for the caller) writes to the
/// audit trail. Prints the numbers (`cargo test --test it audit_size --
/// --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_restricted_search_audit_size() {
    let (_dir, gw, base) = start_fhir().await;
    let mut resources = vec![service_request("sr1", "q0")];
    for i in 0..256 {
        let pid = format!("q{i}");
        resources.push(task(&format!("t{i}"), &pid, "sr1", "requested", "mcp-a"));
        if i % 2 == 0 {
            resources.push(consent(
                &format!("c{i}"),
                &pid,
                "referral_verbal",
                "youth",
                &["mcp-a"],
                &["referral"],
            ));
        }
    }
    seed(gw.store.as_ref(), resources).await;
    let before = gw.store.audit_head().await.unwrap().0;
    let r = reqwest::Client::new()
        .get(format!("{base}/fhir/Task?status=requested&_count=200"))
        .bearer_auth(MCP_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let b: serde_json::Value = r.json().await.unwrap();
    let matches = b["entry"].as_array().map_or(0, |e| e.len());
    let recs = gw.store.audit_list(before, 1000, None, None).await.unwrap();
    let bytes: usize = recs
        .iter()
        .map(|r| {
            store::audit::canonical_body(r.version, &r.body).map_or(0, |c| c.len())
                + r.hash.len()
                + r.prev_hash.len()
        })
        .sum();
    println!(
        "restricted search: {matches} disclosed of 256 scanned -> {} audit rows, {bytes} bytes (body + hashes)",
        recs.len()
    );
    assert_eq!(matches, 128);
    // One AuditEvent for the request (before: one per patient and outcome,
    // 256 rows), naming every patient and every Task with its outcome.
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(
        (r.kind.as_str(), r.patient_id.as_deref()),
        ("disclosure", None)
    );
    let entity = r.body["entity"].as_array().unwrap();
    assert_eq!(entity.len(), 512);
    let marked = |v: &str| {
        entity
            .iter()
            .filter(|e| e["detail"][0]["valueString"] == v)
            .count()
    };
    assert_eq!((marked("disclosed"), marked("withheld")), (128, 128));
    assert_eq!(
        r.body["outcomeDesc"],
        "disclosure: 128 disclosed, 128 withheld"
    );
    // Found under each patient it names.
    for p in ["q0", "q1", "q255"] {
        let under = gw
            .store
            .audit_list(before, 10, Some(p), None)
            .await
            .unwrap();
        assert_eq!(under.len(), 1, "{p}");
    }
    assert!(bytes < 100_000, "{bytes}");
    gw.stop().await;
}

/// A count-only search (`_count=0`) returns no resource: it is audited as
/// one `query` naming only what the count reveals — each patient whose
/// resources were counted, with how many — never as a disclosure of the
/// counted resources, and nothing of the withheld ones but their number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_only_search_is_audited_as_a_query() {
    let (_dir, gw, base) = start_fhir().await;
    let mut resources = vec![service_request("sr1", "k0")];
    for i in 0..4 {
        let pid = format!("k{i}");
        resources.push(task(&format!("kt{i}"), &pid, "sr1", "requested", "mcp-a"));
        if i < 2 {
            resources.push(consent(
                &format!("kc{i}"),
                &pid,
                "referral_verbal",
                "youth",
                &["mcp-a"],
                &["referral"],
            ));
        }
    }
    seed(gw.store.as_ref(), resources).await;
    let before = gw.store.audit_head().await.unwrap().0;
    let r = reqwest::Client::new()
        .get(format!("{base}/fhir/Task?status=requested&_count=0"))
        .bearer_auth(MCP_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (b["total"].clone(), b["entry"].clone()),
        (2.into(), serde_json::json!([]))
    );
    let recs = gw.store.audit_list(before, 10, None, None).await.unwrap();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.kind, "query");
    assert_eq!(r.body["outcome"], "0");
    assert_eq!(
        r.body["outcomeDesc"],
        "query: count-only, 2 counted, 2 withheld"
    );
    let entity = r.body["entity"].as_array().unwrap();
    let named: Vec<(String, String)> = entity
        .iter()
        .map(|e| {
            (
                e["what"]["reference"].as_str().unwrap().to_string(),
                e["detail"][0]["valueString"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        named,
        vec![
            ("Patient/k0".to_string(), "1".to_string()),
            ("Patient/k1".to_string(), "1".to_string())
        ]
    );
    assert!(
        !r.body.to_string().contains("Task/") && !r.body.to_string().contains("k2"),
        "{}",
        r.body
    );
    // Found under each counted patient, not under the withheld ones.
    for (p, n) in [("k0", 1), ("k1", 1), ("k2", 0), ("k3", 0)] {
        let under = gw
            .store
            .audit_list(before, 10, Some(p), None)
            .await
            .unwrap();
        assert_eq!(under.len(), n, "{p}");
    }
    gw.stop().await;
}
