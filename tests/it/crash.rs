//! Crash test: kill -9 the gateway process under load, restart it on the same
//! database, and prove that every ACKed message is in the journal and
//! translated, and that resending everything creates no duplicates.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::common::*;

struct Proc {
    child: Child,
    http: String,
    mllp: String,
}

async fn spawn_gateway(cfg_path: &Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cws-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(cfg_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("gateway started within 30 s")
        .unwrap()
        .expect("a listening line");
    // "listening http=127.0.0.1:X mllp=127.0.0.1:Y"
    let mut http = String::new();
    let mut mllp = String::new();
    for part in line.split_whitespace() {
        if let Some(v) = part.strip_prefix("http=") {
            http = v.to_string();
        }
        if let Some(v) = part.strip_prefix("mllp=") {
            mllp = v.to_string();
        }
    }
    assert!(
        !http.is_empty() && !mllp.is_empty(),
        "unexpected line: {line}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Proc { child, http, mllp }
}

async fn pending(http: &str) -> Option<u64> {
    let text = reqwest::Client::new()
        .get(format!("http://{http}/metrics"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("cwsgw_journal_records{state=\"pending\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

async fn terminate(mut p: Proc) {
    if let Some(pid) = p.child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), p.child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acked_message() {
    // The HTTP client below needs a process-wide rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("gw.toml");
    std::fs::write(&cfg_path, config_text(dir.path(), "")).unwrap();

    let mut gw = spawn_gateway(&cfg_path).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let sent: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for c in 0..4 {
        let addr = gw.mllp.clone();
        let acked = acked.clone();
        let sent = sent.clone();
        senders.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                return;
            };
            for i in 0..5000 {
                let id = format!("K{c}N{i:05}");
                sent.lock().unwrap().push(id.clone());
                let msg = adt(if i % 2 == 0 { "A01" } else { "A03" }, &id, "STMARY");
                use tokio::io::AsyncWriteExt;
                if s.write_all(&hl7v2::mllp::frame(msg.as_bytes()))
                    .await
                    .is_err()
                {
                    return;
                }
                let mut dec = hl7v2::mllp::FrameDecoder::new(1 << 16);
                let mut buf = [0u8; 4096];
                loop {
                    if let Some(hl7v2::mllp::FrameEvent::Frame(f)) = dec.next_event() {
                        let ack = String::from_utf8_lossy(&f).to_string();
                        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
                        acked.lock().unwrap().push(id.clone());
                        break;
                    }
                    use tokio::io::AsyncReadExt;
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => dec.push(&buf[..n]),
                    }
                }
            }
        }));
    }
    // Let load build up, then kill -9 mid-stream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.child.start_kill().unwrap(); // SIGKILL
    let _ = gw.child.wait().await;
    for s in senders {
        let _ = s.await;
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let sent: Vec<String> = sent.lock().unwrap().clone();
    assert!(acked.len() >= 300, "load did not build up: {}", acked.len());
    assert!(sent.len() > acked.len() || sent.len() == 20_000);

    // Restart on the same database; the backlog is translated.
    let gw = spawn_gateway(&cfg_path).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if pending(&gw.http).await == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlog not translated within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Resend everything that was sent (ACKed or not): all AA, nothing duplicated.
    let mut s = Conn::connect(&gw.mllp).await;
    for (i, id) in sent.iter().enumerate() {
        let msg = adt(
            if id.ends_with(['0', '2', '4', '6', '8']) {
                "A01"
            } else {
                "A03"
            },
            id,
            "STMARY",
        );
        let ack = s.roundtrip(msg.as_bytes()).await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "resend {i}: {ack}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(&gw.http).await != Some(0) {
        assert!(Instant::now() < deadline, "resent messages not translated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(gw).await;

    // Inspect the database directly.
    let store =
        store::SqliteStore::open(&dir.path().join("gw.db"), store::SqliteOptions::default())
            .unwrap();
    use store::Store;
    let stats = store.journal_stats().await.unwrap();
    let unique_sent: HashSet<&String> = sent.iter().collect();
    assert_eq!(
        stats.total as usize,
        unique_sent.len(),
        "one journal record per distinct message: {stats:?}"
    );
    assert_eq!(stats.pending, 0, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    let mut journaled = HashSet::new();
    for id in 1..=stats.total as i64 {
        let rec = store
            .journal_get(id)
            .await
            .unwrap()
            .expect("dense journal ids");
        assert_eq!(rec.state, store::JournalState::Processed);
        // Key: {MSH-4}|{MSH-10}|{content hash}.
        let mut key = rec.dedup_key.split('|');
        assert_eq!(key.next(), Some("STMARY"), "{}", rec.dedup_key);
        let control_id = key.next().unwrap_or_default().to_string();
        assert_eq!(key.next().map(str::len), Some(64), "{}", rec.dedup_key);
        journaled.insert(control_id);
    }
    for id in &acked {
        assert!(journaled.contains(id), "ACKed {id} is not in the journal");
    }
    // Every message has its own visit number: one Encounter per message.
    assert_eq!(
        store.resource_count(Some("Encounter")).await.unwrap() as usize,
        unique_sent.len()
    );
}
