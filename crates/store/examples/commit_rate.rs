//! Commit rate of the SQLite journal: 20,000 appends from 8 concurrent
//! send-and-wait tasks, one transaction per message (`max_batch = 1`) versus
//! group commit (`max_batch = 512`), both without the intake log (WAL
//! fsync'd by the sync thread before any append is answered), and group
//! commit with the intake log (`Store::append`: the log's fsync and the
//! journal transaction side by side), on a temporary file with the WAL and
//! log zero-filled. No network and no translation: the store alone.
//!
//! Prints one JSON line per mode, with the CPU time per append of the
//! store's writer, WAL sync and intake-log sync threads (from
//! `/proc/self/task`):
//! `{"bench":"sqlite_commit","mode":"one_per_message"|"group"|"group_intake_log",
//!   "msgs_per_sec":N,"writer_cpu_us_per_append":N,"wal_sync_cpu_us_per_append":N,
//!   "intake_sync_cpu_us_per_append":N}`
//!
//! Run: `cargo run -p cwsgw-store --release --example commit_rate`

use std::sync::Arc;
use std::time::Instant;

use cwsgw_store::{InputKind, NewInput, SqliteOptions, SqliteStore, Store};

const MESSAGES: usize = 20_000;
const TASKS: usize = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    for (mode, max_batch, intake_log) in [
        ("one_per_message", 1, false),
        ("group", 512, false),
        ("group_intake_log", 512, true),
    ] {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(
            &dir.path().join("bench.db"),
            SqliteOptions {
                max_batch,
                intake_log,
                wal_preallocate: true,
                ..SqliteOptions::default()
            },
        )?);
        let before = thread_cpu_ns();
        let elapsed = rt.block_on(run(Arc::clone(&store)))?;
        let after = thread_cpu_ns();
        let rate = MESSAGES as f64 / elapsed;
        // CPU per append of the store's own threads: what a change to the
        // append path costs or saves, with little of the machine's noise.
        let per_append = |name: &str| {
            let ns = |m: &std::collections::HashMap<String, u64>| m.get(name).copied().unwrap_or(0);
            let spent = ns(&after).saturating_sub(ns(&before));
            (spent as f64 / MESSAGES as f64 / 100.0).round() / 10.0
        };
        println!(
            "{}",
            serde_json::json!({
                "bench": "sqlite_commit",
                "mode": mode,
                "msgs_per_sec": rate.round() as u64,
                "writer_cpu_us_per_append": per_append("cwsgw-store-wri"),
                "wal_sync_cpu_us_per_append": per_append("cwsgw-store-syn"),
                "intake_sync_cpu_us_per_append": per_append("cwsgw-intake-sy"),
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

/// CPU time (ns) of this process's threads by name (`/proc/self/task`).
fn thread_cpu_ns() -> std::collections::HashMap<String, u64> {
    let mut by_name = std::collections::HashMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        if let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            *by_name.entry(comm.trim().to_string()).or_insert(0) += ns;
        }
    }
    by_name
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
                            // Each task a control-id range of its own, as
                            // eight senders would be: eight places in the
                            // dedup index.
                            dedup_key: format!("STMARY|MSG{t}{i:08}"),
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
