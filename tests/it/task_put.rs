//! `PUT /fhir/Task/{id}` replays only a true retry: the dedup key names the
//! version the update applies to, so the same body sent again after the
//! Task moved on is a new update, not a replay of the first.

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::*;

async fn put(c: &reqwest::Client, base: &str, status: &str) -> (StatusCode, Value) {
    let body = task("t1", "p1", "sr1", status, "mcp-a");
    let r = c
        .put(format!("{base}/fhir/Task/t1"))
        .bearer_auth(MCP_TOKEN)
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("PUT");
    let s = r.status();
    let text = r.text().await.expect("body");
    (s, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_body_after_the_task_moved_on_is_applied() {
    let (_dir, gw, base) = start_fhir().await;
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
            service_request("sr1", "p1"),
            task("t1", "p1", "sr1", "requested", "mcp-a"),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let before = gw.store.journal_stats().await.unwrap().total;
    // accepted → in-progress → on-hold → in-progress: the last body is
    // byte-identical to the second, from the same organization.
    for (step, status) in ["accepted", "in-progress", "on-hold", "in-progress"]
        .into_iter()
        .enumerate()
    {
        let (s, b) = put(&c, &base, status).await;
        assert_eq!(s, StatusCode::OK, "{status}: {b}");
        assert_eq!(b["status"], status, "step {step}: {b}");
        let stored = gw.store.resource_get("Task", "t1").await.unwrap().unwrap();
        assert_eq!(
            (stored.version_id, stored.body["status"].as_str()),
            (step as i64 + 2, Some(status)),
            "step {step}"
        );
    }
    // Four updates, four journal entries (none taken for a replay).
    let after = gw.store.journal_stats().await.unwrap().total;
    assert_eq!(after - before, 4);
    gw.stop().await;
}
