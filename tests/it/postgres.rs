//! The gateway on PostgreSQL: MLLP ack/dedup/translation and HTTP on one
//! instance, then two instances sharing one database (load to both,
//! duplicates across instances, either serving readiness and metrics, one
//! stopped mid-delivery and the other completing its claims).
//!
//! Each test gets a fresh database on the server named by
//! `CWSGW_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! No server → FAIL, never skip.
//!
//! Delivery workers and referrals are not on main yet: the two-instance
//! test drives the outbox through each instance's store (claims with
//! leases), which is what the delivery worker will call.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use cws_gateway::config::Config;
use reqwest::StatusCode;
use serde_json::json;
use store::{DeliveryOutcome, DeliveryState, NewDelivery};
use store_postgres::testing::TestDb;

use crate::common::*;

async fn fresh() -> TestDb {
    // reqwest is built with `rustls-no-provider`: HTTP clients need one
    // installed (the binary installs it at start; tests do it here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match TestDb::create().await {
        Ok(db) => db,
        Err(e) => panic!("{e}"),
    }
}

/// The common test configuration with `store.url` = `url`.
fn pg_config(dir: &Path, url: &str) -> Config {
    let text = config_text(dir, "");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("url = \"sqlite://") {
                format!("url = \"{url}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = Config::from_toml(&text, "test").expect("test config");
    assert_eq!(cfg.store.url, url);
    cfg
}

async fn ops_get(c: &reqwest::Client, base: &str, path: &str) -> (StatusCode, String) {
    let r = c
        .get(format!("{base}{path}"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_and_http_on_postgres() {
    let db = fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = cws_gateway::serve::start(pg_config(dir.path(), &db.url))
        .await
        .unwrap();
    assert_eq!(gw.store.backend(), "postgres");
    let mut s = Conn::connect(gw.mllp_addr).await;
    let msg = adt("A01", "PG0001", "STMARY");
    for _ in 0..3 {
        let ack = s.roundtrip(msg.as_bytes()).await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
        assert_eq!(field(&ack, "MSA", 2), "PG0001");
    }
    let ack = s.roundtrip(adt("A01", "X1", "NOWHERE").as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AR", "{ack}");
    // Durable before the ACK, deduplicated.
    let stats = gw.store.journal_stats().await.unwrap();
    assert_eq!(stats.total, 1, "{stats:?}");
    assert_eq!(gw.store.metrics().duplicate_inputs, 2);
    wait_translated(gw.store.as_ref()).await;
    assert!(gw.store.resource_count(Some("Patient")).await.unwrap() >= 1);
    assert_eq!(gw.store.resource_count(Some("Encounter")).await.unwrap(), 1);

    let base = format!("http://{}", gw.http_addr);
    let c = reqwest::Client::new();
    let ready = c.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let (status, text) = ops_get(&c, &base, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("cwsgw_journal_records{state=\"processed\"} 1"),
        "{text}"
    );
    gw.stop().await;
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_database() {
    let db = fresh().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw1 = cws_gateway::serve::start(pg_config(d1.path(), &db.url))
        .await
        .unwrap();
    let gw2 = cws_gateway::serve::start(pg_config(d2.path(), &db.url))
        .await
        .unwrap();

    // Load to both, as a TCP load balancer would spread it; every message
    // is also re-sent to the other instance (a sender retrying after a
    // lost ACK lands elsewhere): both ACK AA, one journal record.
    let n = 40;
    let mut senders = Vec::new();
    for (first, second) in [
        (gw1.mllp_addr, gw2.mllp_addr),
        (gw2.mllp_addr, gw1.mllp_addr),
    ] {
        let start = if first == gw1.mllp_addr { 0 } else { n / 2 };
        senders.push(tokio::spawn(async move {
            let mut a = Conn::connect(first).await;
            let mut b = Conn::connect(second).await;
            for i in start..start + n / 2 {
                let id = format!("TWO{i:04}");
                let msg = adt("A01", &id, "STMARY");
                for conn in [&mut a, &mut b] {
                    let ack = conn.roundtrip(msg.as_bytes()).await;
                    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
                    assert_eq!(field(&ack, "MSA", 2), id);
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    for gw in [&gw1, &gw2] {
        let stats = gw.store.journal_stats().await.unwrap();
        assert_eq!(stats.total, n as u64, "{stats:?}");
    }
    let m1 = gw1.store.metrics();
    let m2 = gw2.store.metrics();
    assert_eq!(m1.appended_inputs + m2.appended_inputs, n as u64);
    assert_eq!(m1.duplicate_inputs + m2.duplicate_inputs, n as u64);
    wait_translated(gw1.store.as_ref()).await;
    assert_eq!(
        gw2.store.resource_count(Some("Encounter")).await.unwrap(),
        n as u64,
        "each visit translated once"
    );

    // Either instance serves readiness and metrics over the shared state.
    let c = reqwest::Client::new();
    for gw in [&gw1, &gw2] {
        let base = format!("http://{}", gw.http_addr);
        let ready = c.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let (status, text) = ops_get(&c, &base, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains(&format!("cwsgw_journal_records{{state=\"processed\"}} {n}")),
            "{text}"
        );
    }

    // Deliveries: 3 patients x 4 items. Instance 1 claims the heads, then is
    // stopped mid-delivery (its leases stay in the database).
    let items: Vec<NewDelivery> = (0..12)
        .map(|i| NewDelivery {
            endpoint: "mcp-1".into(),
            ordering_key: format!("patient-{}", i % 3),
            kind: "transaction".into(),
            payload: json!({"n": i}),
            not_before: Utc::now() - TimeDelta::seconds(1),
            journal_id: None,
        })
        .collect();
    let ids = gw1.store.outbox_enqueue(items).await.unwrap();
    let lease = Duration::from_secs(30);
    let claimed = gw1
        .store
        .outbox_claim("gw1", None, Utc::now(), lease, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3, "one head per patient");
    let store1 = gw1.store.clone();
    gw1.stop().await;
    // The survivor cannot take them while the lease lives...
    let early = gw2
        .store
        .outbox_claim("gw2", None, Utc::now(), lease, 10)
        .await
        .unwrap();
    assert!(early.is_empty(), "{early:?}");
    // ...and completes everything once it has ended.
    let later = Utc::now() + TimeDelta::seconds(31);
    let mut delivered = Vec::new();
    loop {
        let got = gw2
            .store
            .outbox_claim("gw2", None, later, lease, 10)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            gw2.store
                .outbox_finish(d.id, "gw2", DeliveryOutcome::Delivered)
                .await
                .unwrap();
            delivered.push(d.id);
        }
    }
    let unique: HashSet<i64> = delivered.iter().copied().collect();
    assert_eq!(delivered.len(), unique.len(), "exactly once");
    assert_eq!(unique, ids.iter().copied().collect::<HashSet<_>>());
    // The stopped instance's late outcome does not count.
    assert!(store1
        .outbox_finish(claimed[0].id, "gw1", DeliveryOutcome::Delivered)
        .await
        .is_err());
    drop(store1);
    assert_eq!(
        gw2.store.outbox_depth().await.unwrap(),
        vec![("mcp-1".to_string(), DeliveryState::Delivered, 12)]
    );

    // The survivor keeps taking traffic, including re-sends of old messages.
    let mut s = Conn::connect(gw2.mllp_addr).await;
    for id in ["TWO0001", "AFTER0001"] {
        let ack = s.roundtrip(adt("A01", id, "STMARY").as_bytes()).await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    }
    assert_eq!(gw2.store.journal_stats().await.unwrap().total, n as u64 + 1);
    gw2.stop().await;
    db.drop_db().await.unwrap();
}

/// Two gateways on one PostgreSQL database, referrals posted to both (as an
/// HTTP load balancer spreads them), one instance stopped while deliveries
/// are under way: every referral reaches the MCP exactly once, and either
/// instance serves the pull API over the shared data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_referral_exactly_once() {
    let db = fresh().await;
    let mcp = cwsgw_scenario::mock::MockEndpoint::start().await.unwrap();
    let make = |dir: &Path| {
        let mut cfg = Config::from_file(&repo().join("config/demo.toml")).unwrap();
        cfg.server.http_addr = "127.0.0.1:0".into();
        cfg.server.mllp_addr = "127.0.0.1:0".into();
        cfg.store.url = db.url.clone();
        cfg.mappings.dir = Some(repo().join("mappings"));
        for o in cfg.organizations.iter_mut() {
            if o.id == "mcp-a" {
                o.endpoint = Some(mcp.base_url());
            } else {
                o.endpoint = None;
            }
        }
        cfg.delivery.initial_backoff_ms = 50;
        cfg.delivery.max_backoff_ms = 500;
        let _ = dir;
        cfg.validate().unwrap();
        cfg
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw1 = cws_gateway::serve::start(make(d1.path())).await.unwrap();
    let gw2 = cws_gateway::serve::start(make(d2.path())).await.unwrap();
    let bases = [
        format!("http://{}", gw1.http_addr),
        format!("http://{}", gw2.http_addr),
    ];
    let c = reqwest::Client::new();
    let post = |base: &str, path: &str, body: serde_json::Value| {
        c.post(format!("{base}{path}"))
            .bearer_auth("demo-county-token")
            .header("Content-Type", "application/json")
            .body(body.to_string())
    };
    let n = 12;
    let today = Utc::now().date_naive().to_string();
    let now = Utc::now().to_rfc3339();
    for i in 0..n {
        let cin = format!("98{i:06}A");
        let child = json!({"clientId": format!("C-PG-{i}"), "cin": cin, "name": {"given": ["Pat"], "family": "Twin"}, "birthDate": "2012-01-01", "sex": "female"});
        // Events to one instance, the referral to the other.
        let (a, b) = (&bases[i % 2], &bases[(i + 1) % 2]);
        let r = post(a, "/cws/events", json!({"eventId": format!("pg-e-{i}"), "type": "enrollment.updated", "occurredAt": now, "county": "Fresno", "child": child,
            "enrollment": {"cin": cin, "aidCode": "4K", "planCode": "A", "feeForService": false, "shareOfCost": false, "effectiveOn": today}}))
            .send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "{}",
            r.text().await.unwrap()
        );
        let r = post(a, "/cws/events", json!({"eventId": format!("pg-c-{i}"), "type": "consent.recorded", "occurredAt": now, "county": "Fresno", "child": child,
            "consent": {"consentId": format!("PG-C-{i}"), "kind": "referral_verbal", "grantor": {"role": "parent", "name": "P Twin"},
                        "recipients": ["mcp-a"], "categories": ["referral"], "period": {"start": today},
                        "explained": {"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}}}))
            .send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let referral = json!({"referralId": format!("PG-R-{i}"), "member": {"cin": cin, "name": {"given": ["Pat"], "family": "Twin"}, "birthDate": "2012-01-01"},
            "referrer": {"organizationId": "county-fresno", "name": "SW", "role": "social worker", "relationship": "county social worker"},
            "selfReferral": false, "populationsOfFocus": ["8"], "criteria": "in foster care", "expedited": false, "consentId": format!("PG-C-{i}")});
        let r = post(b, "/ecm/referrals", referral.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        // The same referral again through the other instance: 200, not a second one.
        let r = post(a, "/ecm/referrals", referral).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        if i == n / 2 {
            // Stop instance 1 mid-run (graceful: in-flight claims are released).
            break;
        }
    }
    gw1.stop().await;
    // The rest go to the survivor only.
    let survivor = &bases[1];
    for i in (n / 2 + 1)..n {
        let cin = format!("98{i:06}A");
        let child = json!({"clientId": format!("C-PG-{i}"), "cin": cin, "name": {"given": ["Pat"], "family": "Twin"}, "birthDate": "2012-01-01", "sex": "female"});
        for (kind, body) in [(
            "enrollment.updated",
            json!({"cin": cin, "aidCode": "4K", "planCode": "A", "feeForService": false, "shareOfCost": false, "effectiveOn": today}),
        )] {
            let r = post(survivor, "/cws/events", json!({"eventId": format!("pg-e-{i}"), "type": kind, "occurredAt": now, "county": "Fresno", "child": child, "enrollment": body}))
                .send().await.unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
        }
        let referral = json!({"referralId": format!("PG-R-{i}"), "member": {"cin": cin, "name": {"given": ["Pat"], "family": "Twin"}, "birthDate": "2012-01-01"},
            "referrer": {"organizationId": "county-fresno", "name": "SW", "role": "social worker", "relationship": "county social worker"},
            "selfReferral": false, "populationsOfFocus": ["8"], "criteria": "in foster care", "expedited": false,
            "consent": {"obtainedOn": today, "obtainedBy": "SW", "grantor": {"role": "parent", "name": "P Twin"},
                        "explained": {"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}}});
        let r = post(survivor, "/ecm/referrals", referral)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }
    // Every ServiceRequest reaches the MCP exactly once (bounded wait).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let srs: Vec<u64> = mcp
            .put_counts()
            .iter()
            .filter(|(url, _)| url.starts_with("ServiceRequest/"))
            .map(|(_, c)| *c)
            .collect();
        if srs.len() == n {
            assert!(
                srs.iter().all(|c| *c == 1),
                "duplicates at the MCP: {srs:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} referrals delivered",
            srs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The survivor serves pulls over everything, including what instance 1 wrote.
    let r = c
        .get(format!("{survivor}/fhir/ServiceRequest?_count=50"))
        .bearer_auth("demo-plan-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bundle: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(bundle["entry"].as_array().map(|a| a.len()), Some(n));
    gw2.stop().await;
    db.drop_db().await.unwrap();
}

/// A control id reused for a different message, on two instances sharing
/// one database: the A01 on one and the A03 under the same MSH-10 on the
/// other are both processed (the Encounter finishes); a byte-identical resend
/// to either is a duplicate; the reuse is counted once, by the instance
/// that processed the A03 (either may translate a record of the shared
/// journal; the store lets only one complete it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_control_id_across_instances_on_postgres() {
    let db = fresh().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gw1 = cws_gateway::serve::start(pg_config(d1.path(), &db.url))
        .await
        .unwrap();
    let gw2 = cws_gateway::serve::start(pg_config(d2.path(), &db.url))
        .await
        .unwrap();
    let mut a = Conn::connect(gw1.mllp_addr).await;
    let mut b = Conn::connect(gw2.mllp_addr).await;
    let a01 = adt("A01", "PGREUSE1", "STMARY");
    let a03 = adt("A03", "PGREUSE1", "STMARY");
    let ack = a.roundtrip(a01.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    let ack = b.roundtrip(a03.as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(field(&ack, "MSA", 2), "PGREUSE1");
    // Resends to the other instance: duplicates.
    for (conn, msg) in [(&mut a, &a03), (&mut b, &a01)] {
        let ack = conn.roundtrip(msg.as_bytes()).await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    }
    let stats = gw1.store.journal_stats().await.unwrap();
    assert_eq!(stats.total, 2, "{stats:?}");
    assert_eq!(
        gw1.store.metrics().duplicate_inputs + gw2.store.metrics().duplicate_inputs,
        2
    );
    wait_translated(gw1.store.as_ref()).await;
    let q = store::ResourceQuery {
        resource_type: "Encounter".into(),
        limit: 10,
        ..Default::default()
    };
    let encounters = gw2.store.resource_search(&q).await.unwrap();
    assert_eq!(encounters.len(), 1);
    assert_eq!(
        encounters[0].body["status"], "finished",
        "{}",
        encounters[0].body
    );
    let counted = || {
        gw1.metrics.control_id_reuse.get("st-mary") + gw2.metrics.control_id_reuse.get("st-mary")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counted() < 1 {
        assert!(std::time::Instant::now() < deadline, "reuse not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both instances' workers scan the shared journal: give a second
    // translation of the A03 (which the store would refuse) time to be
    // miscounted before checking it was counted once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(counted(), 1);
    gw1.stop().await;
    gw2.stop().await;
    db.drop_db().await.unwrap();
}
