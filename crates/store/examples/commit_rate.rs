//! Commit rate of the SQLite journal: 2000 appends from 8 concurrent tasks,
//! one commit per message (`max_batch = 1`) versus group commit
//! (`max_batch = 512`), both with `synchronous=FULL` on a temporary file.
//!
//! Prints one JSON line per mode:
//! `{"bench":"sqlite_commit","mode":"one_per_message"|"group","msgs_per_sec":N}`
//!
//! Run: `cargo run -p cwsgw-store --release --example commit_rate`

use std::sync::Arc;
use std::time::Instant;

use cwsgw_store::{InputKind, NewInput, SqliteOptions, SqliteStore, Store};

const MESSAGES: usize = 2000;
const TASKS: usize = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    for (mode, max_batch) in [("one_per_message", 1), ("group", 512)] {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(
            &dir.path().join("bench.db"),
            SqliteOptions {
                max_batch,
                ..SqliteOptions::default()
            },
        )?);
        let elapsed = rt.block_on(run(Arc::clone(&store)))?;
        let rate = MESSAGES as f64 / elapsed;
        println!(
            "{}",
            serde_json::json!({
                "bench": "sqlite_commit",
                "mode": mode,
                "msgs_per_sec": rate.round() as u64,
            })
        );
        eprintln!(
            "{mode}: {} commits, largest batch {}",
            store.metrics().commits,
            store.metrics().largest_batch
        );
    }
    Ok(())
}

async fn run(store: Arc<dyn Store>) -> Result<f64, Box<dyn std::error::Error>> {
    let raw = b"MSH|^~\\&|EPIC|STMARY|GW|CWS|20260101120000||ADT^A01|X|P|2.5.1\rEVN|A01\rPID|1||123^^^STMARY^MR\r".repeat(4);
    let started = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&store);
            let raw = raw.clone();
            tokio::spawn(async move {
                for i in (t..MESSAGES).step_by(TASKS) {
                    store
                        .append(NewInput {
                            kind: InputKind::Adt,
                            source_org: "st-mary".into(),
                            dedup_key: format!("STMARY|MSG{i:06}"),
                            received_at: chrono::Utc::now(),
                            raw: raw.clone(),
                            meta: serde_json::json!({"messageType": "ADT^A01"}),
                        })
                        .await?;
                }
                Ok::<_, cwsgw_store::StoreError>(())
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}
