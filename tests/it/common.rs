//! Shared helpers for the integration tests: a real gateway on loopback ports
//! with a temporary SQLite store, and an MLLP client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cws_gateway::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const STMARY_TOKEN: &str = "stmary-test-token";
pub const COUNTY_TOKEN: &str = "county-test-token";
pub const OPS_TOKEN: &str = "ops-test-token";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

/// A test configuration: loopback port 0, the store under `dir`.
pub fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        r#"
[server]
http_addr = "127.0.0.1:0"
mllp_addr = "127.0.0.1:0"
max_body_bytes = 65536

[store]
url = "sqlite://{db}"

[mappings]
dir = "{mappings}"

[mllp]
max_frame_bytes = 16384
idle_timeout_secs = 5

[sensitivity]
psychiatric_locations = ["PSYCH"]
sud_locations = ["DETOX"]

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
id = "valley-hie"
kind = "adt_source"
name = "Valley HIE"
sending_facilities = ["VALLEYHIE"]

[[organizations]]
id = "ops"
kind = "operator"
name = "Operations"

[[clients]]
id = "st-mary-http"
organization = "st-mary"
token_sha256 = "{stmary}"

[[clients]]
id = "fresno"
organization = "county-fresno"
token_sha256 = "{county}"

[[clients]]
id = "ops"
organization = "ops"
token_sha256 = "{ops}"
{extra}
"#,
        db = dir.join("gw.db").display(),
        mappings = repo().join("mappings").display(),
        stmary = sha(STMARY_TOKEN),
        county = sha(COUNTY_TOKEN),
        ops = sha(OPS_TOKEN),
    )
}

pub fn config(dir: &Path) -> Config {
    Config::from_toml(&config_text(dir, ""), "test").expect("test config")
}

/// An ADT message with the given trigger, control id and facility.
pub fn adt(trigger: &str, control_id: &str, facility: &str) -> String {
    format!(
        "MSH|^~\\&|EPIC|{facility}|CWSGW|CWSGW|20260115083000||ADT^{trigger}^ADT_A01|{control_id}|P|2.5.1\r\
EVN|{trigger}|20260115083000\r\
PID|1||MRN1001^^^STMARY^MR~91000001A^^^CA-DHCS^MA||Rivera^Alex^J||20100315|M|||123 Main St^^Fresno^CA^93721||^PRN^PH^^^559^5550100\r\
PV1|1|I|3EAST^301^A^STMARY||||1234567^Chen^Linda|||MED||||7|||||V{control_id}|||||||||||||||||||||||||20260115082500\r"
    )
}

/// An MLLP client connection that keeps its decoder between reads (two
/// replies may arrive in one read).
pub struct Conn {
    pub s: TcpStream,
    dec: hl7v2::mllp::FrameDecoder,
}

impl Conn {
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Conn {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Conn {
            s,
            dec: hl7v2::mllp::FrameDecoder::new(1 << 20),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    pub async fn send(&mut self, payload: &[u8]) {
        self.send_raw(&hl7v2::mllp::frame(payload)).await;
    }

    /// Send one framed message, read one framed reply.
    pub async fn roundtrip(&mut self, payload: &[u8]) -> String {
        self.send(payload).await;
        self.recv().await
    }

    /// Read exactly one MLLP frame (bounded: 10 s).
    pub async fn recv(&mut self) -> String {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(hl7v2::mllp::FrameEvent::Frame(f)) = self.dec.next_event() {
                return String::from_utf8(f).expect("utf8 ack");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.s.read(&mut buf))
                .await
                .expect("ACK within 10 s")
                .expect("read");
            assert!(n > 0, "connection closed before a reply");
            self.dec.push(&buf[..n]);
        }
    }
}

/// The value of SEG-n in an ACK ("MSA", 1) → "AA".
pub fn field(msg: &str, seg: &str, n: usize) -> String {
    msg.split('\r')
        .find(|s| s.starts_with(seg))
        .and_then(|s| {
            let parts: Vec<&str> = s.split('|').collect();
            let idx = if seg == "MSH" { n - 1 } else { n };
            parts.get(idx).map(|p| p.to_string())
        })
        .unwrap_or_default()
}

/// Wait (bounded) until the journal has nothing pending.
pub async fn wait_translated(store: &dyn store::Store) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = store.journal_stats().await.expect("stats");
        if s.pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "journal still pending: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
