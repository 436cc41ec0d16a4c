//! The store conformance suite (the same one SQLite runs) against
//! PostgreSQL, each test in a fresh database. No PostgreSQL → these FAIL
//! with a message saying how to provide one; they never skip.

use std::sync::Arc;

use cwsgw_store_postgres::testing::TestDb;
use cwsgw_store_postgres::{PgOptions, PgStore};
use store::{conformance, Store};

async fn fresh() -> TestDb {
    match TestDb::create().await {
        Ok(db) => db,
        Err(e) => panic!("{e}"),
    }
}

async fn open(url: &str, opts: PgOptions) -> Arc<dyn Store> {
    Arc::new(PgStore::open(url, opts).await.expect("open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_group_commit() {
    let db = fresh().await;
    conformance::run_all(open(&db.url, PgOptions::default()).await).await;
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_one_commit_per_append() {
    let db = fresh().await;
    let opts = PgOptions {
        max_batch: 1,
        pool_size: 4,
        ..PgOptions::default()
    };
    conformance::run_all(open(&db.url, opts).await).await;
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_of_many_ids_in_one_read() {
    let db = fresh().await;
    conformance::resources_by_many_ids(&*open(&db.url, PgOptions::default()).await).await;
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_of_many_subjects_in_one_read() {
    let db = fresh().await;
    conformance::clocks_of_subjects(&*open(&db.url, PgOptions::default()).await).await;
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_database_with_data_after_reopen() {
    let db = fresh().await;
    {
        let store = open(&db.url, PgOptions::default()).await;
        conformance::run_all(store).await;
    }
    // Second run against the same (now non-empty) database, new instance.
    conformance::run_all(open(&db.url, PgOptions::default()).await).await;
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_durability_across_reopen() {
    let db = fresh().await;
    let url = db.url.clone();
    conformance::durability_across_reopen(move || {
        let url = url.clone();
        tokio::task::block_in_place(move || {
            tokio::runtime::Handle::current().block_on(async move {
                let s: Arc<dyn Store> = Arc::new(PgStore::open(&url, PgOptions::default()).await?);
                Ok(s)
            })
        })
    })
    .await;
    db.drop_db().await.unwrap();
}

/// Issue 16 on PostgreSQL: version-2 rows written before chain version 3
/// still verify, new rows are version 3, tampering is caught in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_audit_v2_chain_is_extended_with_v3_records() {
    let db = fresh().await;
    let url = db.url.clone();
    let exec_url = db.url.clone();
    conformance::audit_jcs_upgrade(
        move |keys| {
            let url = url.clone();
            async move {
                let opts = PgOptions {
                    audit_keys: keys,
                    ..PgOptions::default()
                };
                open(&url, opts).await
            }
        },
        move |sql| {
            let url = exec_url.clone();
            async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                let task = tokio::spawn(conn);
                client.batch_execute(&sql).await.expect("raw sql");
                drop(client);
                let _ = task.await;
            }
        },
    )
    .await;
    db.drop_db().await.unwrap();
}

/// Issue 14 item 8 on PostgreSQL: the keyed chain and its checkpoints catch
/// truncation and recompute-after-edit by someone without the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_audit_tamper_evidence() {
    let db = fresh().await;
    let url = db.url.clone();
    let exec_url = db.url.clone();
    conformance::audit_tamper_evidence(
        move |keys| {
            let url = url.clone();
            async move {
                let opts = PgOptions {
                    audit_keys: keys,
                    ..PgOptions::default()
                };
                open(&url, opts).await
            }
        },
        move |sql| {
            let url = exec_url.clone();
            async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                let task = tokio::spawn(conn);
                client.batch_execute(&sql).await.expect("raw sql");
                drop(client);
                let _ = task.await;
            }
        },
    )
    .await;
    db.drop_db().await.unwrap();
}

/// An idle delivery worker polls every 250 ms; a claim that finds nothing
/// due changes no row and is not counted as a commit (as on SQLite), so
/// the commit counter stands still on an idle gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_claims_are_no_commits() {
    let db = fresh().await;
    let store = open(&db.url, PgOptions::default()).await;
    for _ in 0..20 {
        let claimed = store
            .outbox_claim(
                "w",
                Some("mcp-a"),
                chrono::Utc::now(),
                std::time::Duration::from_secs(60),
                10,
            )
            .await
            .unwrap();
        assert!(claimed.is_empty());
    }
    let m = store.metrics();
    assert_eq!(m.commits, 0, "{m:?}");
    drop(store);
    db.drop_db().await.unwrap();
}
