//! The audit trail: one record per read and refusal, and `cws-gateway audit
//! verify` detecting a tampered row.

use std::process::Command;

use reqwest::StatusCode;

use crate::common::*;

fn verify(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .env_remove("CWSGW_CONFIG")
        .env_remove("CWSGW_DATABASE_URL")
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
    // A true 404 discloses nothing and is not a refusal.
    assert_eq!(
        get(format!("{base}/fhir/Task/zz"), MCP_TOKEN)
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
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
    assert!(recs[1].body["outcomeDesc"].as_str().unwrap().contains("R1"));
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
    let (code, out) = verify(&cfg_path);
    assert_eq!((code, out.trim()), (0, "audit trail intact"));
    // Tamper with the second record's body through raw SQL.
    let db = dir.path().join("gw.db");
    let st = Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE audit SET body = replace(body, 'Task/t2', 'Task/t9') WHERE seq = 2;")
        .status()
        .expect("the sqlite3 CLI is needed for this test");
    assert!(st.success());
    let (code, out) = verify(&cfg_path);
    assert_eq!((code, out.trim()), (1, "audit trail broken at record 2"));
}
