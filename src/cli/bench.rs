//! `cws-gateway bench`: measurements of the real paths, printed as JSON lines.
//!
//! - `bench ingest`: a gateway on a temporary SQLite store (and, with
//!   `--database-url`, on a scratch PostgreSQL database, printed side by side), N MLLP connections
//!   sending ADT messages and waiting for each ACK (durable ingest) — in
//!   original mode (`AA`) and in enhanced mode (MSH-15 `AL`, MSH-16 `NE`:
//!   the commit ACK `CA`, the same durability point), each after translation
//!   has caught up — then a paced run at a fixed rate for ACK latency; next to
//!   it, in the same run, the reference: plain SQLite (WAL,
//!   `synchronous=FULL`) committing each raw message in its own transaction
//!   into a table with a text primary key.
//! - `bench translate`: ADT → FHIR Bundle (parse + map + serialize) on one core.
//! - `bench api`: FHIR read and search through the real API (static token of
//!   an MCP, consent filtering and audit on), next to the same JSON served
//!   from memory by a trivial axum route (the HTTP floor), in one run.
//!
//! - `bench delivery`: outbox → mock endpoint throughput with 1 and 4
//!   endpoints (consent decided per resource per attempt, audit appended),
//!   and ADT in (MLLP) → notification at the ECM provider mock, p50/p99.
//!
//! Every figure is the median of `--runs` runs; each run's number is printed too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use cws_gateway::config::Config;
use cwsgw_scenario::sample::{sample_adt, sample_adt_enhanced};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Durable MLLP ingest throughput, ACK latency, and the one-commit-per-message reference.
    Ingest {
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Messages per throughput run.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Rate of the latency run, messages per second (all connections together).
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Messages each connection keeps outstanding in the pipelined run.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Also measure PostgreSQL: a server URL whose role may CREATE
        /// DATABASE (a scratch database is created per run and dropped);
        /// printed next to SQLite. Needs a build with `--features
        /// bench-postgres`.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Outbox delivery throughput to local mock endpoints (1 and 4 endpoints)
    /// and ADT-in → notification-at-mock latency.
    Delivery {
        /// Deliveries per throughput run.
        #[arg(long, default_value_t = 2_000)]
        deliveries: usize,
        /// ADT messages in the latency run (sent one at a time).
        #[arg(long, default_value_t = 200)]
        adt: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// FHIR read/search throughput and p99 with consent filtering, next to serving JSON from memory.
    Api {
        /// Patients seeded (each with a consent, a ServiceRequest and a Task).
        #[arg(long, default_value_t = 500)]
        patients: usize,
        /// Requests per measured phase.
        #[arg(long, default_value_t = 5_000)]
        requests: usize,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also measure on PostgreSQL (a scratch database is created and
        /// dropped); printed after SQLite in the same run. Needs a build
        /// with `--features bench-postgres`.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// The monthly RTF export of one plan over a store of referral Tasks
    /// (seconds, peak RSS), beside the single-referral rate, in one run.
    Rtf {
        /// Members (a Patient and a referral Task each) in the store.
        #[arg(long, default_value_t = 100_000)]
        members: usize,
        /// Referrals sent one at a time per run for the referral rate.
        #[arg(long, default_value_t = 200)]
        referrals: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Referral intake: referrals/s one at a time and in NDJSON batches
    /// through the real HTTP paths, side by side in one run.
    Referrals {
        /// Referrals per run for each path.
        #[arg(long, default_value_t = 500)]
        referrals: usize,
        /// Lines per batch request (at most 1000).
        #[arg(long, default_value_t = 250)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// ADT → FHIR translation throughput on one core.
    Translate {
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingest {
            connections,
            messages,
            rate,
            runs,
            window,
            database_url,
        } => {
            let (conns, messages, rate, runs) = (
                connections.max(1),
                messages.max(100),
                rate.max(1),
                runs.max(1),
            );
            let window = window.max(2);
            let mut summaries = vec![ingest(conns, messages, rate, runs, window, None).await?];
            if let Some(url) = database_url {
                summaries.push(ingest(conns, messages, rate, runs, window, Some(url)).await?);
                crate::cli::emit(&format!(
                    "{}\n",
                    json!({"bench": "ingest", "side_by_side": summaries})
                ))?;
            }
            Ok(())
        }
        BenchCommand::Translate { seconds, runs } => translate(seconds.max(1), runs.max(1)),
        BenchCommand::Referrals {
            referrals,
            batch,
            runs,
        } => {
            crate::cli::bench_referrals::run(referrals.max(10), batch.clamp(1, 1000), runs.max(1))
                .await
        }
        BenchCommand::Rtf {
            members,
            referrals,
            runs,
        } => {
            crate::cli::bench_rtf::run(members.clamp(1, 1_000_000), referrals.max(10), runs.max(1))
                .await
        }
        BenchCommand::Delivery {
            deliveries,
            adt,
            runs,
        } => delivery(deliveries.max(10), adt.max(10), runs.max(1)).await,
        BenchCommand::Api {
            patients,
            requests,
            connections,
            runs,
            database_url,
        } => {
            let (patients, requests, conns, runs) = (
                patients.clamp(1, 100_000),
                requests.max(100),
                connections.clamp(1, 256),
                runs.max(1),
            );
            api(patients, requests, conns, runs, None).await?;
            if let Some(admin) = database_url {
                api(patients, requests, conns, runs, Some(admin)).await?;
            }
            Ok(())
        }
    }
}

fn delivery_config(
    dir: &std::path::Path,
    mcps: &[cwsgw_scenario::MockEndpoint],
    ecm: &cwsgw_scenario::MockEndpoint,
) -> anyhow::Result<Config> {
    use std::fmt::Write as _;
    let mut orgs = String::new();
    for (i, m) in mcps.iter().enumerate() {
        let _ = write!(
            orgs,
            "[[organizations]]\nid = \"mcp-{i}\"\nkind = \"mcp\"\nname = \"Plan {i}\"\nendpoint = \"{}\"\nplan_codes = [\"P{i}\"]\ncounties = [\"Fresno\"]\n\n",
            m.base_url()
        );
    }
    let text = format!(
        r#"
[server]
http_addr = "127.0.0.1:0"
mllp_addr = "127.0.0.1:0"
[store]
url = "sqlite://{db}"
[audit]
demo_key = true
[delivery]
max_attempts = 5
initial_backoff_ms = 100
max_backoff_ms = 1000
concurrency = 16
[[organizations]]
id = "county-fresno"
kind = "county"
name = "Fresno County DSS"
county = "Fresno"
[[organizations]]
id = "st-mary"
kind = "adt_source"
name = "St Mary Hospital"
sending_facilities = ["STMARY"]
[[organizations]]
id = "ecm-compass"
kind = "ecm_provider"
name = "Compass"
endpoint = "{ecm}"
mcps = ["mcp-0"]
{orgs}"#,
        db = dir.join("bench.db").display(),
        ecm = ecm.base_url(),
    );
    Ok(Config::from_toml(&text, "bench")?)
}

fn bench_write(r: serde_json::Value) -> store::ResourceWrite {
    let patient_id = cws_gateway::routing::patient_of(&r);
    store::ResourceWrite {
        resource_type: r["resourceType"].as_str().unwrap_or("").to_string(),
        id: r["id"].as_str().unwrap_or("").to_string(),
        patient_id,
        body: r,
        index: Vec::new(),
    }
}

fn bench_consent(
    patient: &str,
    id: &str,
    kind: &str,
    recipients: &[String],
    categories: &[String],
) -> serde_json::Value {
    let mut consent =
        cws_gateway::disclosure::consent_to_fhir(&cws_gateway::disclosure::ConsentSpec {
            canonical_base: "https://gateway.example.org/fhir",
            id,
            identifier: None,
            patient_id: patient,
            kind,
            grantor_role: "parent",
            grantor_name: None,
            recorded_by_org: "county-fresno",
            recorded_at: "2026-01-01T00:00:00Z",
            recipients,
            categories,
            start: "2026-01-01",
            end: None,
        });
    if kind == "referral_verbal" {
        explained(&mut consent);
    }
    consent
}

/// A referral consent counts only with the four points explained.
fn explained(consent: &mut serde_json::Value) {
    cws_gateway::disclosure::add_explained(
        consent,
        "https://gateway.example.org/fhir",
        &cws_gateway::disclosure::Explained::ALL,
    );
}

/// Deliveries per second from a full outbox to `endpoints` mocks.
async fn delivery_throughput(endpoints: usize, total: usize) -> anyhow::Result<f64> {
    use cwsgw_scenario::MockEndpoint;
    let dir = tempfile::tempdir()?;
    let mut mcps = Vec::new();
    for _ in 0..endpoints {
        mcps.push(MockEndpoint::start().await?);
    }
    let ecm = MockEndpoint::start().await?;
    let cfg = delivery_config(dir.path(), &mcps, &ecm)?;
    let running = cws_gateway::serve::start(cfg).await?;
    let store = running.store.clone();
    // 4 deliveries per patient per endpoint: order per patient is exercised.
    let patients = (total / (4 * endpoints)).max(1);
    let recipients: Vec<String> = (0..endpoints).map(|i| format!("mcp-{i}")).collect();
    let mut writes = Vec::new();
    for p in 0..patients {
        let pid = format!("bp{p}");
        writes.push(bench_write(json!({"resourceType": "ServiceRequest", "id": format!("sr-{pid}"),
            "status": "active", "intent": "order", "subject": {"reference": format!("Patient/{pid}")},
            "requester": {"reference": "Organization/county-fresno"}})));
        writes.push(bench_write(bench_consent(
            &pid,
            &format!("c-{pid}"),
            "referral_verbal",
            &recipients,
            &["referral".to_string()],
        )));
        if writes.len() >= 500 {
            store.put_resources(std::mem::take(&mut writes)).await?;
        }
    }
    if !writes.is_empty() {
        store.put_resources(writes).await?;
    }
    let mut items = Vec::new();
    for n in 0..total {
        let p = (n / endpoints) % patients;
        let e = n % endpoints;
        let pid = format!("bp{p}");
        items.push(store::NewDelivery {
            endpoint: format!("mcp-{e}"),
            ordering_key: pid.clone(),
            kind: "transaction".into(),
            payload: json!({"rule": "referral-to-performer", "purpose": "referral", "package": "referral",
                "patient": pid, "resources": [format!("ServiceRequest/sr-{pid}")]}),
            not_before: chrono::Utc::now(),
            journal_id: None,
        });
    }
    let start = Instant::now();
    for chunk in items.chunks(500) {
        store.outbox_enqueue(chunk.to_vec()).await?;
    }
    let deadline = start + Duration::from_secs(300);
    loop {
        let got: usize = mcps.iter().map(|m| m.accepted().len()).sum();
        if got >= total {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {got} of {total} delivered in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    running.stop().await;
    Ok(total as f64 / secs)
}

/// ADT A01 over MLLP (sent one at a time) → notification at the ECM mock.
async fn adt_notification_latency(n: usize) -> anyhow::Result<Vec<Duration>> {
    use cwsgw_scenario::MockEndpoint;
    let dir = tempfile::tempdir()?;
    let mcps = vec![MockEndpoint::start().await?];
    let ecm = MockEndpoint::start().await?;
    let cfg = delivery_config(dir.path(), &mcps, &ecm)?;
    let running = cws_gateway::serve::start(cfg).await?;
    let store = running.store.clone();
    let mut stream = TcpStream::connect(running.mllp_addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    // Learn the member's Patient id from a first (non-notifying) message.
    let seed = sample_adt(1)
        .replace("ADT^A01^ADT_A01", "ADT^A08^ADT_A01")
        .replace("EVN|A01", "EVN|A08");
    roundtrip(&mut stream, seed.as_bytes(), &mut buf, b"MSA|AA|").await?;
    let q = store::ResourceQuery {
        resource_type: "Patient".into(),
        limit: 10,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(p) = store.resource_search(&q).await?.first() {
            break p.id.clone();
        }
        anyhow::ensure!(Instant::now() < deadline, "the seed ADT was not translated");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let all = vec!["mcp-0".to_string(), "ecm-compass".to_string()];
    store
        .put_resources(vec![
            bench_write(json!({"resourceType": "Coverage", "id": "cov-b", "status": "active",
                "beneficiary": {"reference": format!("Patient/{pid}")}, "payor": [{"reference": "Organization/mcp-0"}]})),
            bench_write(json!({"resourceType": "ServiceRequest", "id": "sr-b", "status": "active", "intent": "order",
                "subject": {"reference": format!("Patient/{pid}")}, "requester": {"reference": "Organization/county-fresno"},
                "performer": [{"reference": "Organization/mcp-0"}]})),
            bench_write(json!({"resourceType": "Task", "id": "t-b", "status": "in-progress", "intent": "order",
                "for": {"reference": format!("Patient/{pid}")}, "focus": {"reference": "ServiceRequest/sr-b"},
                "owner": {"reference": "Organization/ecm-compass"}})),
            bench_write(bench_consent(&pid, "roi-b", "release_of_information", &all, &["case".to_string(), "health".to_string()])),
        ])
        .await?;
    let mut lat = Vec::new();
    for i in 0..n {
        // The same member (MRN/CIN of message 1), a new control id each time.
        let msg = sample_adt(1).replace("BENCH000000001", &format!("LAT{i:011}"));
        let t0 = Instant::now();
        roundtrip(&mut stream, msg.as_bytes(), &mut buf, b"MSA|AA|").await?;
        let deadline = t0 + Duration::from_secs(10);
        loop {
            let got = ecm.accepted();
            if let Some(r) = got.get(i) {
                lat.push(r.at.saturating_duration_since(t0));
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "notification {i} not delivered in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    running.stop().await;
    lat.sort();
    Ok(lat)
}

async fn delivery(total: usize, adt: usize, runs: usize) -> anyhow::Result<()> {
    let mut one = Vec::new();
    let mut four = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for run in 0..runs {
        let t1 = delivery_throughput(1, total).await?;
        let t4 = delivery_throughput(4, total).await?;
        let lat = adt_notification_latency(adt).await?;
        let (a, b) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        crate::cli::emit(&format!(
            "{}\n",
            json!({"bench": "delivery", "run": run + 1, "deliveries": total,
                "deliveries_per_sec_1_endpoint": t1.round(), "deliveries_per_sec_4_endpoints": t4.round(),
                "adt_messages": adt, "adt_to_notification_p50_ms": a, "adt_to_notification_p99_ms": b})
        ))?;
        one.push(t1);
        four.push(t4);
        p50.push(a);
        p99.push(b);
    }
    crate::cli::emit(&format!(
        "{}\n",
        json!({"bench": "delivery", "summary": "median", "runs": runs, "deliveries": total,
            "deliveries_per_sec_1_endpoint": median(&mut one).round(),
            "deliveries_per_sec_4_endpoints": median(&mut four).round(),
            "adt_messages": adt,
            "adt_to_notification_p50_ms": median(&mut p50), "adt_to_notification_p99_ms": median(&mut p99),
            "peak_rss_mib": peak_rss_mib()})
    ))?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Peak resident set size of this process, in MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn bench_config(
    dir: &std::path::Path,
    max_batch: usize,
    url: Option<&str>,
) -> anyhow::Result<Config> {
    let url = match url {
        Some(u) => u.to_string(),
        None => format!("sqlite://{}", dir.join("bench.db").display()),
    };
    let text = format!(
        r#"
[server]
http_addr = "127.0.0.1:0"
mllp_addr = "127.0.0.1:0"
[store]
url = "{url}"
max_batch = {max_batch}
[audit]
demo_key = true
[[organizations]]
id = "st-mary"
kind = "adt_source"
name = "St Mary Hospital"
sending_facilities = ["STMARY"]
"#
    );
    Ok(Config::from_toml(&text, "bench")?)
}

/// Send one framed message and read one framed ACK, whose MSA must start
/// with `expect` (`MSA|AA|` or `MSA|CA|`).
async fn roundtrip(
    stream: &mut TcpStream,
    msg: &[u8],
    buf: &mut Vec<u8>,
    expect: &[u8],
) -> anyhow::Result<()> {
    stream.write_all(&hl7v2::mllp::frame(msg)).await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the ACK");
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        if buf.ends_with(&[hl7v2::mllp::END, hl7v2::mllp::CR]) {
            anyhow::ensure!(
                buf.windows(expect.len()).any(|w| w == expect),
                "not the expected ACK: {}",
                String::from_utf8_lossy(buf)
            );
            return Ok(());
        }
    }
}

struct IngestResult {
    msgs_per_sec: f64,
    latencies: Vec<Duration>,
}

/// `total` messages over `conns` connections; with `rate`, paced; with
/// `enhanced`, in enhanced mode (AL/NE: one `CA` each).
async fn drive(
    addr: std::net::SocketAddr,
    conns: usize,
    total: usize,
    start_n: u64,
    rate: Option<u64>,
    window: usize,
    enhanced: bool,
) -> anyhow::Result<IngestResult> {
    if window > 1 {
        return drive_pipelined(addr, conns, total, start_n, window).await;
    }
    let per = total / conns;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let interval = rate.map(|r| Duration::from_secs_f64(conns as f64 / r as f64));
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(1024);
            let mut lat = Vec::with_capacity(per);
            let t0 = Instant::now();
            for i in 0..per {
                if let Some(iv) = interval {
                    let due = t0 + iv * i as u32;
                    tokio::time::sleep_until(due.into()).await;
                }
                let n = start_n + (c * per + i) as u64;
                let (msg, expect) = if enhanced {
                    (sample_adt_enhanced(n), b"MSA|CA|")
                } else {
                    (sample_adt(n), b"MSA|AA|")
                };
                let t = Instant::now();
                roundtrip(&mut stream, msg.as_bytes(), &mut buf, expect).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await.context("sender task")??);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(IngestResult {
        msgs_per_sec: (per * conns) as f64 / secs,
        latencies,
    })
}

/// Each connection keeps up to `window` messages outstanding (MLLP
/// pipelining); the gateway answers in order.
async fn drive_pipelined(
    addr: std::net::SocketAddr,
    conns: usize,
    total: usize,
    start_n: u64,
    window: usize,
) -> anyhow::Result<IngestResult> {
    let per = total / conns;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut dec = hl7v2::mllp::FrameDecoder::new(1 << 20);
            let mut sent_at = std::collections::VecDeque::with_capacity(window);
            let mut lat = Vec::with_capacity(per);
            let mut next = 0usize;
            let mut chunk = [0u8; 16 * 1024];
            while lat.len() < per {
                let mut out = Vec::new();
                while next < per && sent_at.len() < window {
                    let n = start_n + (c * per + next) as u64;
                    out.extend(hl7v2::mllp::frame(sample_adt(n).as_bytes()));
                    sent_at.push_back(Instant::now());
                    next += 1;
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                }
                let n = stream.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "connection closed before the ACK");
                dec.push(chunk.get(..n).unwrap_or(&[]));
                while let Some(ev) = dec.next_event() {
                    if let hl7v2::mllp::FrameEvent::Frame(f) = ev {
                        anyhow::ensure!(f.windows(7).any(|w| w == b"MSA|AA|"), "not an AA");
                        let t = sent_at.pop_front().context("more ACKs than messages")?;
                        lat.push(t.elapsed());
                    }
                }
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await.context("sender task")??);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(IngestResult {
        msgs_per_sec: (per * conns) as f64 / secs,
        latencies,
    })
}

/// The reference the ingest target is stated against: per message, ONE
/// transaction on plain SQLite (WAL, `synchronous=FULL`) inserting the raw
/// message into a table with a text primary key. One connection in a loop:
/// SQLite admits one writer, so more connections only add lock waits.
/// (On PostgreSQL: the same store with one commit per message.)
async fn reference_commit_rate(
    dir: &std::path::Path,
    pg_url: Option<&str>,
    total: usize,
    conns: usize,
) -> anyhow::Result<f64> {
    let Some(url) = pg_url else {
        let path = dir.join("reference.db");
        return tokio::task::spawn_blocking(move || plain_sqlite_reference(&path, total))
            .await
            .context("reference thread")?;
    };
    let store: Arc<dyn store::Store> = Arc::new(
        store_postgres::PgStore::open(
            url,
            store_postgres::PgOptions {
                max_batch: 1,
                ..store_postgres::PgOptions::default()
            },
        )
        .await?,
    );
    let per = total / conns;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let n = (c * per + i) as u64;
                store
                    .append(store::NewInput {
                        kind: store::InputKind::Adt,
                        source_org: "st-mary".into(),
                        dedup_key: format!("STMARY|REF{n}"),
                        received_at: chrono::Utc::now(),
                        raw: sample_adt(n).into_bytes(),
                        meta: json!({}),
                    })
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("reference task")??;
    }
    Ok((per * conns) as f64 / started.elapsed().as_secs_f64())
}

fn plain_sqlite_reference(path: &std::path::Path, total: usize) -> anyhow::Result<f64> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("CREATE TABLE messages (id TEXT PRIMARY KEY, raw TEXT NOT NULL)")?;
    let messages: Vec<(String, String)> = (0..total as u64)
        .map(|n| (format!("STMARY|REF{n}"), sample_adt(n)))
        .collect();
    let started = Instant::now();
    for (id, raw) in &messages {
        conn.execute_batch("BEGIN")?;
        conn.prepare_cached("INSERT INTO messages (id, raw) VALUES (?1, ?2)")?
            .execute(rusqlite::params![id, raw])?;
        conn.execute_batch("COMMIT")?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Where one send-and-wait round trip goes, from the gateway's own metrics
/// read before and after a run (means per message, in µs).
struct Stages {
    ack: (u64, f64),
    journal: (u64, f64),
    commits: u64,
    commit_sum: f64,
    syncs: u64,
    sync_sum: f64,
    intake_syncs: u64,
    intake_sync_sum: f64,
    /// CPU time of this process's threads by name (ns).
    cpu: std::collections::BTreeMap<String, u64>,
}

impl Stages {
    fn read(running: &cws_gateway::serve::Running) -> Self {
        let m = running.store.metrics();
        Stages {
            ack: running.metrics.ack_latency.count_and_sum(),
            journal: running.metrics.journal_wait.count_and_sum(),
            commits: m.commits,
            commit_sum: m.commit_seconds_sum,
            syncs: m.wal_syncs,
            sync_sum: m.wal_sync_seconds_sum,
            intake_syncs: m.intake_syncs,
            intake_sync_sum: m.intake_sync_seconds_sum,
            cpu: cpu_by_thread_name(),
        }
    }

    /// The breakdown of `run`'s mean round trip:
    /// * `client_round_trip`: what the sender measured, frame out to ACK in;
    /// * `gateway_handling`: complete frame → ACK ready (parse, checks, the
    ///   journal append, building the ACK);
    /// * `parse_check_build`: that minus the journal wait;
    /// * `journal_wait`: the append's wait for durability. With the SQLite
    ///   store's intake log (`intake_log: true`) that is the log's fsync
    ///   and, side by side, the writer thread's transaction; without, the
    ///   writer thread, its transaction and then the WAL fsync.
    ///   `commit_to_durable` is a commit's mean time from transaction start
    ///   to the point its replies went out (its commit when it answered
    ///   logged appends, else its WAL fsync; every transaction,
    ///   translation's included); `fsync` is the mean fsync an ACK waits
    ///   for (the log's, or the WAL's), `messages_per_fsync` how many ACKs
    ///   shared one, and `wal_fsync` the WAL's mean fsync;
    /// * `socket_and_scheduling`: the rest (reply write, both ends' reads
    ///   and task wake-ups on a shared 2-core machine);
    /// * `cpu_per_message`: CPU time per message of each kind of thread
    ///   (`/proc/self/task/*/schedstat`): the Tokio workers (MLLP server and
    ///   the in-process senders), the store's writer, its WAL sync,
    ///   intake-log sync and checkpoint threads. Unlike the wall-clock figures it hardly moves
    ///   with the machine's noise, so it shows what a change to the append
    ///   path saved.
    fn since(&self, before: &Stages, run: &IngestResult) -> serde_json::Value {
        let mean = |now: (u64, f64), then: (u64, f64)| {
            let n = now.0.saturating_sub(then.0);
            if n == 0 {
                0.0
            } else {
                (now.1 - then.1) / n as f64 * 1e6
            }
        };
        let client = if run.latencies.is_empty() {
            0.0
        } else {
            run.latencies.iter().map(|d| d.as_secs_f64()).sum::<f64>() / run.latencies.len() as f64
                * 1e6
        };
        let handling = mean(self.ack, before.ack);
        let journal = mean(self.journal, before.journal);
        let commit = mean(
            (self.commits, self.commit_sum),
            (before.commits, before.commit_sum),
        );
        let wal_fsync = mean((self.syncs, self.sync_sum), (before.syncs, before.sync_sum));
        let intake_fsync = mean(
            (self.intake_syncs, self.intake_sync_sum),
            (before.intake_syncs, before.intake_sync_sum),
        );
        let msgs = self.journal.0.saturating_sub(before.journal.0);
        // The fsync an ACK waits for: the intake log's where the store has
        // one, else the WAL's.
        let logged = self.intake_syncs > before.intake_syncs;
        let (fsync, syncs) = if logged {
            (intake_fsync, self.intake_syncs - before.intake_syncs)
        } else {
            (wal_fsync, self.syncs.saturating_sub(before.syncs))
        };
        let r = |x: f64| (x * 10.0).round() / 10.0;
        let cpu: serde_json::Map<String, serde_json::Value> = self
            .cpu
            .iter()
            .filter_map(|(name, now)| {
                let spent = now.saturating_sub(before.cpu.get(name).copied().unwrap_or(0));
                (msgs > 0 && spent > 0)
                    .then(|| (name.clone(), json!(r(spent as f64 / msgs as f64 / 1e3))))
            })
            .collect();
        json!({
            "client_round_trip": r(client),
            "gateway_handling": r(handling),
            "parse_check_build": r(handling - journal),
            "journal_wait": r(journal),
            "commit_to_durable": r(commit),
            "intake_log": logged,
            "fsync": r(fsync),
            "wal_fsync": r(wal_fsync),
            "messages_per_fsync": if syncs > 0 { r(msgs as f64 / syncs as f64) } else { 0.0 },
            "socket_and_scheduling": r(client - handling),
            "cpu_per_message": cpu,
        })
    }
}

/// One backend's ingest runs; returns its summary line (also printed).
/// A throwaway PostgreSQL database for one measurement, created on the
/// server `--database-url` names and dropped afterwards. Creating databases
/// is test tooling (`cwsgw-store-postgres`'s `test-support` feature), so it
/// is built only with `--features bench-postgres`: the production binary
/// carries none of it.
struct Scratch {
    url: String,
    #[cfg(feature = "bench-postgres")]
    db: store_postgres::testing::TestDb,
}

impl Scratch {
    async fn drop_db(self) -> anyhow::Result<()> {
        #[cfg(feature = "bench-postgres")]
        self.db.drop_db().await.map_err(|e| anyhow::anyhow!(e))?;
        let _ = self.url;
        Ok(())
    }
}

#[cfg(feature = "bench-postgres")]
async fn scratch_db(admin: &str) -> anyhow::Result<Scratch> {
    let db = store_postgres::testing::TestDb::create_on(admin)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(Scratch {
        url: db.url.clone(),
        db,
    })
}

#[cfg(not(feature = "bench-postgres"))]
async fn scratch_db(_admin: &str) -> anyhow::Result<Scratch> {
    anyhow::bail!(
        "--database-url creates and drops scratch databases, which this build leaves out; \
         build with `cargo build --release --features bench-postgres`"
    )
}

/// `pg_admin`: measure PostgreSQL, in a scratch database per run.
async fn ingest(
    conns: usize,
    messages: usize,
    rate: u64,
    runs: usize,
    window: usize,
    pg_admin: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let backend = if pg_admin.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let mut thr = Vec::new();
    let mut enh = Vec::new();
    let mut enh_p50 = Vec::new();
    let mut enh_p99 = Vec::new();
    let mut piped = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut paced_p50 = Vec::new();
    let mut paced_p99 = Vec::new();
    let mut reference = Vec::new();
    let mut catch_up = Vec::new();
    for run in 0..runs {
        let dir = tempfile::tempdir()?;
        let scratch = match &pg_admin {
            Some(admin) => Some(scratch_db(admin).await?),
            None => None,
        };
        let pg_url = scratch.as_ref().map(|db| db.url.clone());
        let cfg = bench_config(dir.path(), 512, pg_url.as_deref())?;
        let running = cws_gateway::serve::start(cfg).await?;
        let addr = running.mllp_addr;
        // Warm up (connections, page cache, mapping caches).
        drive(addr, conns, conns * 50, 900_000_000, None, 1, false).await?;
        // Send-and-wait in both acknowledgement modes, each starting with
        // translation caught up (on 2 cores the backlog one leaves would
        // slow the other).
        translation_catch_up(running.store.as_ref()).await?;
        let before = Stages::read(&running);
        let r = drive(
            addr,
            conns,
            messages,
            run as u64 * 10_000_000,
            None,
            1,
            false,
        )
        .await?;
        let r_stages = Stages::read(&running).since(&before, &r);
        translation_catch_up(running.store.as_ref()).await?;
        let before = Stages::read(&running);
        let e = drive(
            addr,
            conns,
            messages,
            700_000_000 + run as u64 * 10_000_000,
            None,
            1,
            true,
        )
        .await?;
        let e_stages = Stages::read(&running).since(&before, &e);
        let p = drive(
            addr,
            conns,
            messages,
            300_000_000 + run as u64 * 10_000_000,
            None,
            window,
            false,
        )
        .await?;
        let paced_total = (rate as usize * 3).max(conns);
        let paced = drive(
            addr,
            conns,
            paced_total,
            500_000_000 + run as u64 * 10_000_000,
            Some(rate),
            1,
            false,
        )
        .await?;
        let commits = running.store.metrics().commits;
        // Intake runs ahead of translation under load (the backlog waits in
        // the journal): how much was left when the last ACK arrived, and how
        // long translation took to catch up.
        let left = running.store.journal_stats().await?.pending;
        let caught_up_ms = translation_catch_up(running.store.as_ref()).await?;
        running.stop().await;
        let refr = reference_commit_rate(dir.path(), pg_url.as_deref(), messages.min(5_000), conns)
            .await?;
        if let Some(db) = scratch {
            db.drop_db().await?;
        }
        crate::cli::emit(&format!(
            "{}\n",
            json!({
                "bench": "ingest", "store": backend, "run": run + 1, "connections": conns, "messages": messages,
                "msgs_per_sec": r.msgs_per_sec.round(),
                "ack_p50_ms": percentile(&r.latencies, 0.5), "ack_p99_ms": percentile(&r.latencies, 0.99),
                "enhanced_al_ne_msgs_per_sec": e.msgs_per_sec.round(),
                "enhanced_ack_p50_ms": percentile(&e.latencies, 0.5), "enhanced_ack_p99_ms": percentile(&e.latencies, 0.99),
                "pipelined_window": window, "pipelined_msgs_per_sec": p.msgs_per_sec.round(),
                "pipelined_ack_p99_ms": percentile(&p.latencies, 0.99),
                "paced_rate": rate, "paced_ack_p50_ms": percentile(&paced.latencies, 0.5),
                "paced_ack_p99_ms": percentile(&paced.latencies, 0.99),
                "journal_commits": commits,
                "pending_at_last_ack": left, "translation_caught_up_ms": caught_up_ms,
                "reference_one_commit_per_msg_per_sec": refr.round(),
                "round_trip_us": r_stages, "enhanced_round_trip_us": e_stages,
            })
        ))?;
        thr.push(r.msgs_per_sec);
        enh.push(e.msgs_per_sec);
        enh_p50.push(percentile(&e.latencies, 0.5));
        enh_p99.push(percentile(&e.latencies, 0.99));
        piped.push(p.msgs_per_sec);
        p50.push(percentile(&r.latencies, 0.5));
        p99.push(percentile(&r.latencies, 0.99));
        paced_p50.push(percentile(&paced.latencies, 0.5));
        paced_p99.push(percentile(&paced.latencies, 0.99));
        reference.push(refr);
        catch_up.push(caught_up_ms);
    }
    let t = median(&mut thr);
    let et = median(&mut enh);
    let pt = median(&mut piped);
    let r = median(&mut reference);
    let summary = json!({
            "bench": "ingest", "store": backend, "summary": "median", "runs": runs, "connections": conns,
            "msgs_per_sec": t.round(), "ack_p50_ms": median(&mut p50), "ack_p99_ms": median(&mut p99),
            "enhanced_al_ne_msgs_per_sec": et.round(),
            "enhanced_ack_p50_ms": median(&mut enh_p50), "enhanced_ack_p99_ms": median(&mut enh_p99),
            "enhanced_vs_original": if t > 0.0 { (et / t * 100.0).round() / 100.0 } else { 0.0 },
            "paced_rate": rate, "paced_ack_p50_ms": median(&mut paced_p50), "paced_ack_p99_ms": median(&mut paced_p99),
            "reference_one_commit_per_msg_per_sec": r.round(),
            "speedup_vs_reference": if r > 0.0 { (t / r * 100.0).round() / 100.0 } else { 0.0 },
            "pipelined_window": window, "pipelined_msgs_per_sec": pt.round(),
            "pipelined_speedup_vs_reference": if r > 0.0 { (pt / r * 100.0).round() / 100.0 } else { 0.0 },
            "translation_caught_up_ms": median(&mut catch_up),
            "peak_rss_mib": peak_rss_mib(),
    });
    crate::cli::emit(&format!("{summary}\n"))?;
    Ok(summary)
}

/// Wait (at most 120 s) until no journal record is pending; milliseconds taken.
async fn translation_catch_up(store: &dyn store::Store) -> anyhow::Result<f64> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while store.journal_stats().await?.pending > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "translation did not catch up with intake within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((start.elapsed().as_secs_f64() * 10_000.0).round() / 10.0)
}

/// CPU time (ns) of this process's threads, summed by thread name, from
/// `/proc/self/task/*/{comm,schedstat}`; empty where /proc is not there.
fn cpu_by_thread_name() -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(comm), Some(ns)) = (
            std::fs::read_to_string(dir.join("comm")),
            schedstat_ns(&dir.join("schedstat")),
        ) else {
            continue;
        };
        *by_name.entry(comm.trim().to_string()).or_insert(0) += ns;
    }
    by_name
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (ns).
fn thread_cpu_ns() -> Option<u64> {
    schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat"))
}

/// The time on CPU (ns), the first field of a `schedstat` file.
fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn translate(seconds: u64, runs: usize) -> anyhow::Result<()> {
    let cfg = Config::default();
    let engine = cws_gateway::embedded::load_engine(&cfg)?;
    let off = cws_gateway::translate::Offline::new(cfg.clone(), chrono::Utc::now())?;
    let sensitivity = cfg.sensitivity();
    let opts = hl7v2::ParseOptions::default();
    let received = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ctx = mapping::AdtContext {
        canonical_base: &cfg.server.canonical_base,
        source_org_id: "st-mary",
        source_org_name: "St Mary Hospital",
        received_at: &received,
        sensitivity: &sensitivity,
    };
    let msgs: Vec<String> = (0..100).map(sample_adt).collect();
    let bytes_per_msg = msgs.iter().map(|m| m.len()).sum::<usize>() / msgs.len();
    // The naive baseline: split by CR and |, no model, no mapping.
    let naive = |m: &str| m.split('\r').map(|s| s.split('|').count()).sum::<usize>();
    let (mut wall, mut cpu, mut value_rates, mut naive_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(16 * 1024);
    for run in 0..runs {
        // The serialized path: bytes in → FHIR Bundle JSON bytes out.
        let (mut n, mut out_bytes) = (0u64, 0usize);
        let cpu0 = thread_cpu_ns();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(seconds) {
            for m in &msgs {
                let parsed = hl7v2::parse(m.as_bytes(), &opts);
                let msg = parsed.message.context("sample message parses")?;
                out.clear();
                engine
                    .translate_adt_into(&msg, &ctx, &mut out)
                    .map_err(|e| anyhow::anyhow!("{}", e.code))?;
                out_bytes += out.len();
                n += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu_secs = match (cpu0, thread_cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => secs,
        };
        // The worker's path: a serde_json Value per Bundle.
        let mut v = 0u64;
        let t1 = Instant::now();
        while t1.elapsed() < Duration::from_secs(1) {
            for m in msgs.iter().take(20) {
                let b = off
                    .translate(m.as_bytes())
                    .map_err(|e| anyhow::anyhow!(e))?;
                v += u64::from(b.is_object());
            }
        }
        let value_rate = v as f64 / t1.elapsed().as_secs_f64();
        let (mut k, mut c) = (0usize, 0u64);
        let t2 = Instant::now();
        while t2.elapsed() < Duration::from_secs(1) {
            for m in &msgs {
                k = k.wrapping_add(naive(m));
                c += 1;
            }
        }
        let naive_rate = c as f64 / t2.elapsed().as_secs_f64();
        crate::cli::emit(&format!(
            "{}\n",
            json!({"bench": "translate", "run": run + 1, "msgs_per_sec": (n as f64 / secs).round(),
                   "cpu_msgs_per_sec": (n as f64 / cpu_secs).round(), "bytes_in_per_msg": bytes_per_msg,
                   "bytes_out_per_msg": out_bytes / (n.max(1) as usize), "value_api_msgs_per_sec": value_rate.round(),
                   "naive_split_msgs_per_sec": naive_rate.round(), "checksum": k % 7})
        ))?;
        wall.push(n as f64 / secs);
        cpu.push(n as f64 / cpu_secs);
        value_rates.push(value_rate);
        naive_rates.push(naive_rate);
    }
    crate::cli::emit(&format!(
        "{}\n",
        json!({"bench": "translate", "summary": "median", "runs": runs, "threads": 1,
               "msgs_per_sec": median(&mut wall).round(), "cpu_msgs_per_sec": median(&mut cpu).round(),
               "value_api_msgs_per_sec": median(&mut value_rates).round(),
               "naive_split_msgs_per_sec": median(&mut naive_rates).round(), "peak_rss_mib": peak_rss_mib()})
    ))?;
    Ok(())
}

// ---- bench api ----------------------------------------------------------

const API_TOKEN: &str = "bench-mcp-token";

/// The request path of the i-th request of a phase.
type PathFn = Arc<dyn Fn(usize) -> String + Send + Sync>;

fn api_config(dir: &std::path::Path) -> anyhow::Result<Config> {
    use sha2::Digest;
    let text = format!(
        r#"
[server]
http_addr = "127.0.0.1:0"
mllp_addr = "127.0.0.1:0"
[store]
url = "sqlite://{}"
[audit]
demo_key = true
[[organizations]]
id = "county-fresno"
kind = "county"
name = "Fresno"
county = "Fresno"
[[organizations]]
id = "mcp-a"
kind = "mcp"
name = "Plan A"
plan_codes = ["A"]
counties = ["Fresno"]
[[clients]]
id = "bench"
organization = "mcp-a"
token_sha256 = "{}"
"#,
        dir.join("api.db").display(),
        hex::encode(sha2::Sha256::digest(API_TOKEN.as_bytes()))
    );
    Ok(Config::from_toml(&text, "bench")?)
}

fn api_seed(n: usize) -> Vec<store::ResourceWrite> {
    let mut out = Vec::new();
    let recipients = vec!["mcp-a".to_string()];
    let categories = vec!["referral".to_string()];
    for i in 0..n {
        let pid = format!("bp{i}");
        let mut consent =
            cws_gateway::disclosure::consent_to_fhir(&cws_gateway::disclosure::ConsentSpec {
                canonical_base: "https://gateway.example.org/fhir",
                id: &format!("bc{i}"),
                identifier: None,
                patient_id: &pid,
                kind: "referral_verbal",
                grantor_role: "youth",
                grantor_name: None,
                recorded_by_org: "county-fresno",
                recorded_at: "2026-01-10T09:00:00Z",
                recipients: &recipients,
                categories: &categories,
                start: "2026-01-10",
                end: None,
            });
        explained(&mut consent);
        let sr = json!({"resourceType": "ServiceRequest", "id": format!("bsr{i}"), "status": "active", "intent": "order",
            "subject": {"reference": format!("Patient/{pid}")}, "requester": {"reference": "Organization/county-fresno"},
            "performer": [{"reference": "Organization/mcp-a"}]});
        let task = json!({"resourceType": "Task", "id": format!("bt{i}"), "status": "requested", "intent": "order",
            "for": {"reference": format!("Patient/{pid}")}, "focus": {"reference": format!("ServiceRequest/bsr{i}")},
            "owner": {"reference": "Organization/mcp-a"}, "requester": {"reference": "Organization/county-fresno"}});
        for r in [consent, sr, task] {
            out.push(store::ResourceWrite {
                resource_type: r["resourceType"].as_str().unwrap_or_default().to_string(),
                id: r["id"].as_str().unwrap_or_default().to_string(),
                patient_id: Some(pid.clone()),
                index: cws_gateway::resources::index::tokens(&r),
                body: r,
            });
        }
    }
    out
}

/// A minimal HTTP/1.1 keep-alive GET client (the bench must not depend on a
/// client library); returns the status code.
async fn http_get(s: &mut TcpStream, path: &str, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {API_TOKEN}\r\nAccept: application/fhir+json\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let (head_end, len) = loop {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(buf.get(..p).unwrap_or(&[])).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            break (p + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
    let status = buf
        .get(9..12)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(status)
}

/// Run `requests` GETs over `conns` connections; (requests/s, p50 ms, p99 ms).
async fn api_phase(
    addr: std::net::SocketAddr,
    conns: usize,
    requests: usize,
    path_of: PathFn,
) -> anyhow::Result<(f64, f64, f64)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let next = next.clone();
        let path_of = path_of.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut buf = Vec::new();
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t = Instant::now();
                let status = http_get(&mut s, &path_of(i), &mut buf).await?;
                anyhow::ensure!(status == 200, "HTTP {status}");
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    Ok((
        all.len() as f64 / secs,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
    ))
}

async fn api(
    patients: usize,
    requests: usize,
    conns: usize,
    runs: usize,
    pg_admin: Option<String>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = api_config(dir.path())?;
    let scratch = match &pg_admin {
        Some(admin) => Some(scratch_db(admin).await?),
        None => None,
    };
    if let Some(db) = &scratch {
        cfg.store.url = db.url.clone();
    }
    let backend = if scratch.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let gw = cws_gateway::serve::start(cfg).await?;
    for chunk in api_seed(patients).chunks(900) {
        gw.store.put_resources(chunk.to_vec()).await?;
    }
    // The reference: the same Task JSON, from memory, through a trivial route.
    let sample = gw
        .store
        .resource_get("Task", "bt0")
        .await?
        .map(|r| r.body.to_string())
        .unwrap_or_default();
    let sample = Arc::new(sample);
    let reference = axum::Router::new().route(
        "/fhir/Task/{id}",
        axum::routing::get(move || {
            let body = sample.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
                    body.as_str().to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ref_addr = listener.local_addr()?;
    let ref_server = tokio::spawn(async move {
        let _ = axum::serve(listener, reference).await;
    });
    let n = patients;
    let read_path: PathFn = Arc::new(move |i| format!("/fhir/Task/bt{}", i % n));
    let search_path: PathFn =
        Arc::new(move |i| format!("/fhir/Task?patient=bp{}&status=requested", i % n));
    let phases: [(&str, std::net::SocketAddr, PathFn); 3] = [
        ("read", gw.http_addr, read_path.clone()),
        ("search", gw.http_addr, search_path),
        ("memory_reference", ref_addr, read_path),
    ];
    for (name, addr, path_of) in phases {
        // Warm-up.
        api_phase(addr, conns, requests.min(500), path_of.clone()).await?;
        let (mut rps, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let m0 = gw.store.metrics();
            let (r, a, b) = api_phase(addr, conns, requests, path_of.clone()).await?;
            let m1 = gw.store.metrics();
            // Group commit of the audit appends: requests per write
            // transaction and the mean commit time (begin → fsync'd commit).
            let commits = m1.commits.saturating_sub(m0.commits);
            let per_commit =
                (commits > 0).then(|| (requests as f64 / commits as f64 * 100.0).round() / 100.0);
            let syncs = m1.wal_syncs.saturating_sub(m0.wal_syncs);
            let per_sync =
                (syncs > 0).then(|| (requests as f64 / syncs as f64 * 100.0).round() / 100.0);
            let commit_ms = (commits > 0).then(|| {
                ((m1.commit_seconds_sum - m0.commit_seconds_sum) / commits as f64 * 1e5).round()
                    / 100.0
            });
            crate::cli::emit(&format!(
                "{}\n",
                json!({"bench": "api", "store": backend, "phase": name, "run": run, "requests_per_sec": r.round(), "p50_ms": a, "p99_ms": b,
                       "commits": commits, "requests_per_commit": per_commit, "commit_ms_mean": commit_ms,
                       "wal_syncs": syncs, "requests_per_wal_sync": per_sync})
            ))?;
            rps.push(r);
            p50.push(a);
            p99.push(b);
        }
        crate::cli::emit(&format!(
            "{}\n",
            json!({"bench": "api", "store": backend, "phase": name, "median_of": runs, "connections": conns,
                   "requests": requests, "patients": patients, "consent_filtering": name != "memory_reference",
                   "requests_per_sec": median(&mut rps).round(), "p50_ms": median(&mut p50), "p99_ms": median(&mut p99)})
        ))?;
    }
    let audits = gw.store.audit_list(0, 1, None, None).await?.len();
    anyhow::ensure!(audits > 0, "the API phases wrote no audit records");
    ref_server.abort();
    gw.stop().await;
    if let Some(db) = scratch {
        db.drop_db().await?;
    }
    Ok(())
}
