//! Availability under hostile clients, through the real listeners: half-open
//! HTTP connections, dribbling and crowding MLLP peers, and a process out of
//! file descriptors. Small limits and timeouts in the test configurations;
//! the assertions' time bounds are generous (a loaded 2-core machine).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;

/// The test configuration with `server_extra` added to `[server]` and
/// `mllp_extra` to `[mllp]`.
fn limited_config(dir: &Path, server_extra: &str, mllp_extra: &str) -> String {
    config_text(dir, "")
        .replace(
            "max_body_bytes = 65536",
            &format!("max_body_bytes = 65536\n{server_extra}"),
        )
        .replace(
            "idle_timeout_secs = 5",
            &format!("idle_timeout_secs = 5\n{mllp_extra}"),
        )
}

async fn start_with(text: &str) -> cws_gateway::serve::Running {
    let cfg = cws_gateway::config::Config::from_toml(text, "t").expect("test config");
    cws_gateway::serve::start(cfg).await.expect("start")
}

/// A TCP connection to `to` from the loopback address `from` (all of
/// 127.0.0.0/8 is loopback on Linux, so 127.0.0.2 is a distinct peer).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind the client address");
    socket.connect(to).await.expect("connect")
}

/// An MLLP sender on a given stream (e.g. bound to another loopback address).
struct Sender {
    s: TcpStream,
    dec: hl7v2::mllp::FrameDecoder,
}

impl Sender {
    fn new(s: TcpStream) -> Sender {
        Sender {
            s,
            dec: hl7v2::mllp::FrameDecoder::new(1 << 20),
        }
    }

    /// Send one framed message, read one framed reply (bounded: 30 s).
    async fn roundtrip(&mut self, payload: &[u8]) -> String {
        self.s
            .write_all(&hl7v2::mllp::frame(payload))
            .await
            .expect("write");
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(hl7v2::mllp::FrameEvent::Frame(f)) = self.dec.next_event() {
                return String::from_utf8(f).expect("utf8 ack");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.s.read(&mut buf))
                .await
                .expect("ACK within 30 s")
                .expect("read");
            assert!(n > 0, "connection closed before a reply");
            self.dec.push(&buf[..n]);
        }
    }
}

/// `true` when the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn post_hl7(base: &str, control_id: &str) -> String {
    reqwest::Client::new()
        .post(format!("{base}/hl7/v2"))
        .header("Content-Type", "x-application/hl7-v2+er7")
        .bearer_auth(STMARY_TOKEN)
        .body(adt("A01", control_id, "STMARY"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("HL7 over HTTP answered")
        .text()
        .await
        .expect("ACK body")
}

async fn readyz(base: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("/readyz answered")
        .status()
        .as_u16()
}

/// Keeps `n` half-open HTTP connections to `to` (each sends half a request
/// header, then nothing) until `stop`; a connection the server closes is
/// replaced at once. Returns how many the server closed.
fn half_open_flood(
    to: SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let closed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (stop, closed) = (stop.clone(), closed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(to).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: gw\r\n").await;
                    // Wait for the server to give up on the header, or for the end.
                    while !stop.load(Ordering::Relaxed) {
                        if closed_within(&mut s, Duration::from_millis(100)).await {
                            closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
        closed.load(Ordering::Relaxed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_http_connections_neither_stop_service_nor_writes() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_with(&limited_config(
        dir.path(),
        "max_connections = 8\nheader_timeout_secs = 1",
        "",
    ))
    .await;
    let base = format!("http://{}", gw.http_addr);
    let stop = Arc::new(AtomicBool::new(false));
    // Five times the cap, re-opened as soon as the server closes one.
    let flood = half_open_flood(gw.http_addr, 40, stop.clone());
    let mut most_open = 0;
    let saturated = Instant::now();
    while gw.metrics.http_slots_exhausted.get(&["max_connections"]) == 0 {
        assert!(
            saturated.elapsed() < Duration::from_secs(30),
            "the flood never filled server.max_connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A legitimate client is served while the flood goes on: the half-open
    // connections ahead of it are closed after the 1 s header timeout.
    let asked = Instant::now();
    let ack = post_hl7(&base, "FLOOD1").await;
    let took = asked.elapsed();
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(readyz(&base).await, 200);
    most_open = most_open.max(gw.metrics.http_connections.load(Ordering::Relaxed));
    eprintln!("HL7 over HTTP during the flood answered in {took:?}");
    assert!(took < Duration::from_secs(45), "served in {took:?}");
    for _ in 0..20 {
        most_open = most_open.max(gw.metrics.http_connections.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most_open <= 8, "{most_open} connections open, cap 8");

    stop.store(true, Ordering::Relaxed);
    let closed_by_server = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("the flood stops")
        .unwrap();
    assert!(
        closed_by_server >= 8,
        "the server closed only {closed_by_server} half-open connections"
    );

    // After the flood: writes work without a restart.
    let ack = post_hl7(&base, "FLOOD2").await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    let mut c = Conn::connect(gw.mllp_addr).await;
    let ack = c.roundtrip(adt("A01", "FLOOD3", "STMARY").as_bytes()).await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(readyz(&base).await, 200);
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbling_mllp_peer_is_closed_after_the_frame_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_with(&limited_config(dir.path(), "", "frame_timeout_secs = 1")).await;

    // One byte of a frame every 200 ms: each byte used to reset the timer.
    let mut s = TcpStream::connect(gw.mllp_addr).await.unwrap();
    let began = Instant::now();
    let message = hl7v2::mllp::frame(adt("A01", "DRIBBLE", "STMARY").as_bytes());
    let mut closed = false;
    for b in message.iter().take(message.len() - 2) {
        if s.write_all(&[*b]).await.is_err()
            || closed_within(&mut s, Duration::from_millis(200)).await
        {
            closed = true;
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "still open after 20 s of dribbling"
        );
    }
    let after = began.elapsed();
    assert!(
        closed,
        "the frame never completed, yet the connection stayed open"
    );
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    assert_eq!(gw.metrics.mllp_frame_errors.get(&["timeout"]), 1);
    assert_eq!(settled_stats(gw.store.as_ref()).await.total, 0);

    // A sender that completes its frames is not cut, however long it waits
    // between them (within the idle timeout, 5 s here).
    let mut c = Conn::connect(gw.mllp_addr).await;
    let ack = c
        .roundtrip(adt("A01", "STEADY1", "STMARY").as_bytes())
        .await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ack = c
        .roundtrip(adt("A01", "STEADY2", "STMARY").as_bytes())
        .await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    assert_eq!(gw.metrics.mllp_frame_errors.get(&["timeout"]), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mllp_address_cannot_take_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_with(&limited_config(
        dir.path(),
        "",
        "max_connections = 6\nmax_connections_per_peer = 4",
    ))
    .await;
    let per_peer = || gw.metrics.mllp_slots_exhausted.get(&["per_peer"]);

    // 127.0.0.2 opens ten connections; past its four the rest are closed.
    let mut crowd = Vec::new();
    for _ in 0..10 {
        crowd.push(connect_from("127.0.0.2", gw.mllp_addr).await);
    }
    let t = Instant::now();
    while per_peer() < 6 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "refused {}",
            per_peer()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut kept = Vec::new();
    for mut s in crowd {
        if !closed_within(&mut s, Duration::from_millis(300)).await {
            kept.push(s);
        }
    }
    assert_eq!(kept.len(), 4, "connections left to 127.0.0.2");

    // A real sender on another address is served at once — while the crowd
    // still holds its four (they close only after the 5 s idle timeout).
    let mut sender = Sender::new(connect_from("127.0.0.1", gw.mllp_addr).await);
    let ack = sender
        .roundtrip(adt("A01", "PEER1", "STMARY").as_bytes())
        .await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    for s in kept.iter_mut() {
        assert!(
            !closed_within(s, Duration::from_millis(1)).await,
            "the sender got a slot only because the crowd timed out"
        );
    }
    assert_eq!(per_peer(), 6);

    // Past the global cap (6: four from the crowd, the sender, and two more
    // from a third address) a connection waits for a slot instead of being
    // refused, and is served once one frees.
    let mut third = Vec::new();
    for _ in 0..2 {
        third.push(Sender::new(connect_from("127.0.0.3", gw.mllp_addr).await));
    }
    let t = Instant::now();
    while gw.metrics.mllp_slots_exhausted.get(&["max_connections"]) == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "nothing waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(kept);
    for (i, c) in third.iter_mut().enumerate() {
        let ack = c
            .roundtrip(adt("A01", &format!("THIRD{i}"), "STMARY").as_bytes())
            .await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    }
    assert_eq!(per_peer(), 6);
    gw.stop().await;
}

/// The gateway binary under `ulimit -n {limit}` (soft and hard, so it cannot
/// raise it), with its listening line read.
async fn spawn_limited(cfg: &Path, limit: u32) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {limit} && exec \"$0\" serve --config \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_cws-gateway"))
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("gateway started within 30 s")
        .unwrap()
        .expect("a listening line");
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|p| p.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    let (http, mllp) = (addr("http="), addr("mllp="));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, http, mllp)
}

/// The reproduction: connections use up every descriptor while a
/// sender writes. The WAL sync thread holds its descriptor, so running out
/// is not a failed fsync: the write during the flood is stored, and after
/// it the store takes writes and `/readyz` is 200 — no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_does_not_stop_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    // No cap that would save it: the default 1024 connections, 128 descriptors.
    std::fs::write(
        &cfg,
        limited_config(dir.path(), "header_timeout_secs = 2", ""),
    )
    .unwrap();
    let (mut child, http, mllp) = spawn_limited(&cfg, 128).await;
    let base = format!("http://{http}");
    // A sender connected before the flood.
    let mut sender = Sender::new(TcpStream::connect(mllp).await.unwrap());
    let ack = sender
        .roundtrip(adt("A01", "BEFORE", "STMARY").as_bytes())
        .await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");

    // 300 half-open connections: far more than the process may open.
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(mut s) = TcpStream::connect(http).await {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n").await;
            flood.push(s);
        }
    }
    // Writes while the descriptors are gone.
    for i in 0..3 {
        let ack = sender
            .roundtrip(adt("A01", &format!("DURING{i}"), "STMARY").as_bytes())
            .await;
        assert_eq!(field(&ack, "MSA", 1), "AA", "write during the flood: {ack}");
    }
    drop(flood);

    // After the flood: HTTP is served again, writes work, /readyz is 200.
    let t = Instant::now();
    let ready = loop {
        let r = reqwest::Client::new()
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = r {
            break r.status().as_u16();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "HTTP never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ready, 200);
    let ack = post_hl7(&base, "AFTER").await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    let ack = sender
        .roundtrip(adt("A01", "AFTER2", "STMARY").as_bytes())
        .await;
    assert_eq!(field(&ack, "MSA", 1), "AA", "{ack}");
    let _ = child.kill().await;
}
