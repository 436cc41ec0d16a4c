//! Several `PgStore`s (gateway instances) on one database: claims, leases,
//! per-key order, audit chain, jti replay, journal dedup, stamps; plus the
//! start-up errors and migrations under concurrency.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use cwsgw_store_postgres::testing::{with_database, TestDb};
use cwsgw_store_postgres::{pg_schema_version, PgOptions, PgStore};
use serde_json::json;
use store::{
    AppendOutcome, DeliveryOutcome, DeliveryState, InputKind, NewAudit, NewDelivery, NewInput,
    ResourceQuery, ResourceWrite, Store, StoreError,
};

async fn fresh() -> TestDb {
    match TestDb::create().await {
        Ok(db) => db,
        Err(e) => panic!("{e}"),
    }
}

async fn two(db: &TestDb) -> (Arc<dyn Store>, Arc<dyn Store>) {
    let a = PgStore::open(&db.url, PgOptions::default()).await.unwrap();
    let b = PgStore::open(&db.url, PgOptions::default()).await.unwrap();
    (Arc::new(a), Arc::new(b))
}

fn input(key: &str) -> NewInput {
    NewInput {
        kind: InputKind::Adt,
        source_org: "st-mary".into(),
        dedup_key: key.into(),
        received_at: Utc::now(),
        raw: format!("MSH|^~\\&|{key}\r").into_bytes(),
        meta: json!({"messageType": "ADT^A01"}),
    }
}

fn delivery(key: &str, i: usize) -> NewDelivery {
    NewDelivery {
        endpoint: "mcp-1".into(),
        ordering_key: key.into(),
        kind: "transaction".into(),
        payload: json!({"n": i}),
        not_before: Utc::now() - TimeDelta::seconds(1),
        journal_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_dedup_across_instances() {
    let db = fresh().await;
    let (a, b) = two(&db).await;
    let n = 200;
    let mut handles = Vec::new();
    for i in 0..n {
        for s in [&a, &b] {
            let s = Arc::clone(s);
            handles.push(tokio::spawn(async move {
                (i, s.append(input(&format!("STMARY|M{i}"))).await.unwrap())
            }));
        }
    }
    let mut by_key: HashMap<usize, Vec<AppendOutcome>> = HashMap::new();
    for h in handles {
        let (i, out) = h.await.unwrap();
        by_key.entry(i).or_default().push(out);
    }
    for (i, outs) in &by_key {
        assert_eq!(outs.len(), 2);
        assert_eq!(outs[0].id(), outs[1].id(), "key {i}: one id");
        let inserted = outs.iter().filter(|o| !o.is_duplicate()).count();
        assert_eq!(inserted, 1, "key {i}: exactly one instance inserted");
    }
    assert_eq!(a.journal_stats().await.unwrap().total, n as u64);
    assert_eq!(b.journal_stats().await.unwrap().total, n as u64);
    drop((a, b));
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_double_claim_and_keep_key_order() {
    let db = fresh().await;
    let (a, b) = two(&db).await;
    // 20 keys x 15 items, enqueued concurrently through both instances.
    let mut enq = Vec::new();
    for k in 0..20 {
        for (j, s) in [&a, &b].into_iter().enumerate() {
            let s = Arc::clone(s);
            enq.push(tokio::spawn(async move {
                let key = format!("patient-{k}");
                let mut ids = Vec::new();
                for i in 0..8 {
                    if j == 1 && i == 7 {
                        break;
                    }
                    ids.extend(s.outbox_enqueue(vec![delivery(&key, i)]).await.unwrap());
                }
                ids
            }));
        }
    }
    let mut all_ids = HashSet::new();
    for h in enq {
        all_ids.extend(h.await.unwrap());
    }
    assert_eq!(all_ids.len(), 300);

    // Four workers, two per instance, deliver everything.
    let mut workers = Vec::new();
    for w in 0..4 {
        let s = Arc::clone(if w % 2 == 0 { &a } else { &b });
        workers.push(tokio::spawn(async move {
            let worker = format!("inst{}-w{w}", w % 2);
            let mut done = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                let got = s
                    .outbox_claim(&worker, None, Utc::now(), Duration::from_secs(60), 5)
                    .await
                    .unwrap();
                if got.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                idle = 0;
                for d in got {
                    assert_eq!(d.lease_owner.as_deref(), Some(worker.as_str()));
                    s.outbox_finish(d.id, &worker, DeliveryOutcome::Delivered)
                        .await
                        .unwrap();
                    done.push((d.id, d.ordering_key.clone(), Utc::now()));
                }
            }
            done
        }));
    }
    let mut delivered = Vec::new();
    for w in workers {
        delivered.extend(w.await.unwrap());
    }
    let ids: Vec<i64> = delivered.iter().map(|d| d.0).collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no item delivered twice");
    assert_eq!(unique, all_ids, "every item delivered");
    // Per key, delivery (finish) order is id order.
    let mut per_key: HashMap<String, Vec<(chrono::DateTime<Utc>, i64)>> = HashMap::new();
    for (id, key, at) in delivered {
        per_key.entry(key).or_default().push((at, id));
    }
    for (key, mut v) in per_key {
        v.sort();
        let order: Vec<i64> = v.iter().map(|x| x.1).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{key}: delivered in id order");
    }
    let depth = a.outbox_depth().await.unwrap();
    assert_eq!(
        depth,
        vec![("mcp-1".to_string(), DeliveryState::Delivered, 300)]
    );
    drop((a, b));
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_taken_over_by_the_other_instance() {
    let db = fresh().await;
    let (a, b) = two(&db).await;
    let ids = a
        .outbox_enqueue(vec![delivery("p1", 0), delivery("p1", 1)])
        .await
        .unwrap();
    let now = Utc::now();
    let lease = Duration::from_secs(30);
    let got = a.outbox_claim("a", None, now, lease, 10).await.unwrap();
    assert_eq!(got.len(), 1, "only the head of p1");
    assert_eq!(got[0].id, ids[0]);
    // Instance a "dies". Before the lease ends b gets nothing (and not the
    // second item either: per-key order).
    let before = b
        .outbox_claim("b", None, now + TimeDelta::seconds(10), lease, 10)
        .await
        .unwrap();
    assert!(before.is_empty(), "{before:?}");
    // After the lease, b takes it over.
    let later = now + TimeDelta::seconds(31);
    let took = b.outbox_claim("b", None, later, lease, 10).await.unwrap();
    assert_eq!(took.len(), 1);
    assert_eq!(took[0].id, ids[0]);
    assert_eq!(took[0].attempts, 0, "a claim counts no attempt");
    // a comes back: its outcome no longer counts.
    assert!(matches!(
        a.outbox_finish(ids[0], "a", DeliveryOutcome::Delivered).await,
        Err(StoreError::LeaseLost(id)) if id == ids[0]
    ));
    b.outbox_finish(ids[0], "b", DeliveryOutcome::Delivered)
        .await
        .unwrap();
    let next = b.outbox_claim("b", None, later, lease, 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, ids[1]);
    let first = a.outbox_get(ids[0]).await.unwrap().unwrap();
    assert_eq!(first.state, DeliveryState::Delivered);
    assert_eq!(first.attempts, 1);
    drop((a, b));
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chain_stays_linear_with_both_appending() {
    let db = fresh().await;
    let (a, b) = two(&db).await;
    let mut handles = Vec::new();
    for i in 0..40 {
        let s = Arc::clone(if i % 2 == 0 { &a } else { &b });
        handles.push(tokio::spawn(async move {
            s.audit_append(vec![
                NewAudit {
                    recorded: Utc::now(),
                    kind: "disclosure".into(),
                    patient_id: Some(format!("p{i}")),
                    recipient: Some("mcp-1".into()),
                    body: json!({"i": i}),
                },
                NewAudit {
                    recorded: Utc::now(),
                    kind: "read".into(),
                    patient_id: None,
                    recipient: None,
                    body: json!({"i": i, "second": true}),
                },
            ])
            .await
            .unwrap()
        }));
    }
    for h in handles {
        let recs = h.await.unwrap();
        assert_eq!(
            recs[1].seq,
            recs[0].seq + 1,
            "one call's records are adjacent"
        );
    }
    let all = a.audit_list(0, 1000, None, None).await.unwrap();
    assert_eq!(all.len(), 80);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1);
        if i > 0 {
            assert_eq!(r.prev_hash, all[i - 1].hash);
        }
    }
    assert_eq!(a.audit_verify().await.unwrap(), None);
    assert_eq!(b.audit_verify().await.unwrap(), None);
    drop((a, b));
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jti_replay_is_refused_across_instances() {
    let db = fresh().await;
    let (a, b) = two(&db).await;
    let now = Utc::now();
    let exp = now + TimeDelta::minutes(5);
    assert!(a.jti_use("client-1", "jti-1", exp, now).await.unwrap());
    assert!(!b.jti_use("client-1", "jti-1", exp, now).await.unwrap());
    // Racing first uses: exactly one instance accepts each jti.
    let mut handles = Vec::new();
    for i in 0..50 {
        for s in [&a, &b] {
            let s = Arc::clone(s);
            handles.push(tokio::spawn(async move {
                (
                    i,
                    s.jti_use("client-2", &format!("j{i}"), exp, now)
                        .await
                        .unwrap(),
                )
            }));
        }
    }
    let mut accepted: HashMap<i32, usize> = HashMap::new();
    for h in handles {
        let (i, ok) = h.await.unwrap();
        *accepted.entry(i).or_default() += usize::from(ok);
    }
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
    // Expired: reusable from the other instance.
    let later = exp + TimeDelta::seconds(1);
    assert!(b
        .jti_use("client-1", "jti-1", later + TimeDelta::minutes(5), later)
        .await
        .unwrap());
    drop((a, b));
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_strictly_increase_across_instances_and_paging_is_stable() {
    let db = fresh().await;
    let (a, b) = two(&db).await;
    let mut handles = Vec::new();
    for i in 0..60 {
        let s = Arc::clone(if i % 2 == 0 { &a } else { &b });
        handles.push(tokio::spawn(async move {
            s.put_resources(vec![ResourceWrite {
                resource_type: "Patient".into(),
                id: format!("p{i}"),
                patient_id: Some(format!("p{i}")),
                body: json!({"active": true}),
                index: Vec::new(),
            }])
            .await
            .unwrap()
        }));
    }
    let mut stamps = Vec::new();
    for h in handles {
        stamps.push(h.await.unwrap()[0].last_updated);
    }
    let unique: HashSet<_> = stamps.iter().copied().collect();
    assert_eq!(unique.len(), 60, "every stamp distinct");
    // Page through with a cursor through the other instance: all 60, once, in order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b
            .resource_search(&ResourceQuery {
                resource_type: "Patient".into(),
                after: after.clone(),
                limit: 7,
                ..ResourceQuery::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.last_updated, last.id.clone()));
        seen.extend(page.into_iter().map(|r| (r.last_updated, r.id)));
    }
    assert_eq!(seen.len(), 60);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    drop((a, b));
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_migrate_once() {
    let db = fresh().await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgStore::open(&url, PgOptions::default()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("every instance opens"));
    }
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=pg_schema_version()).collect::<Vec<_>>());
    drop(stores);
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let db = fresh().await;
    drop(PgStore::open(&db.url, PgOptions::default()).await.unwrap());
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')",
            &[],
        )
        .await
        .unwrap();
    match PgStore::open(&db.url, PgOptions::default()).await {
        Err(StoreError::MigrationsNewer { db: v, binary }) => {
            assert_eq!(v, 999);
            assert_eq!(binary, pg_schema_version());
        }
        other => panic!("expected MigrationsNewer, got {other:?}"),
    }
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_are_clear_and_carry_no_password() {
    // Nothing listens on port 1.
    let err = PgStore::open(
        "postgres://gw:hunter2@127.0.0.1:1/cws?connect_timeout=2",
        PgOptions::default(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unreachable(_)), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");

    // A role that does not exist: refused by the server's authentication.
    let admin: tokio_postgres::Config = cwsgw_store_postgres::testing::admin_url().parse().unwrap();
    let host = match admin.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let port = admin.get_ports().first().copied().unwrap_or(5432);
    let bad_user = format!("postgres://nobody_cwsgw:hunter2@{host}:{port}/postgres");
    let err = PgStore::open(&bad_user, PgOptions::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{msg}");
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");

    // A database that does not exist.
    let missing = with_database(
        &cwsgw_store_postgres::testing::admin_url(),
        "cwsgw_no_such_db",
    );
    let msg = PgStore::open(&missing, PgOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("does not exist"), "{msg}");

    // TLS is not in this build: said at once, not at the first query.
    let err = PgStore::open(
        "postgres://gw:hunter2@127.0.0.1:5432/cws?sslmode=require",
        PgOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unsupported(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"));
    assert!(matches!(
        PgStore::open("mysql://x", PgOptions::default()).await,
        Err(StoreError::InvalidUrl(_))
    ));
}
