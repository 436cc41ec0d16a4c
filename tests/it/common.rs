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

/// The hex SHA-256 of a token, as `token_sha256` in a client's table wants it.
pub fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

/// The organizations every test gateway knows (`tests/fixtures/orgs.toml`,
/// one copy for all the tests).
pub const ORGS: &str = include_str!("../fixtures/orgs.toml");

/// `text` (a configuration) with `lines` added to the table of organization
/// `org` — an `endpoint`, an `endpoint_auth`, an `ack_mode` … that only
/// some tests want.
pub fn org_with(text: &str, org: &str, lines: &str) -> String {
    let id = format!("id = \"{org}\"\n");
    assert!(text.contains(&id), "organization {org} is not configured");
    text.replacen(&id, &format!("{id}{}\n", lines.trim_end()), 1)
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
# Hundreds of short-lived gateways: no ~258 MiB WAL fill for each.
wal_preallocate = false

[audit]
demo_key = true
[mappings]
dir = "{mappings}"

[mllp]
max_frame_bytes = 16384
idle_timeout_secs = 5

[sensitivity]
psychiatric_locations = ["PSYCH"]
sud_locations = ["DETOX"]

{orgs}
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
        orgs = ORGS,
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

/// The journal's figures once it shows every acknowledged message (an ACK
/// means durable: with the SQLite store's intake log the journal row follows
/// it by a commit). Bounded.
pub async fn settled_stats(store: &dyn store::Store) -> store::JournalStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.metrics().intake_unjournaled > 0 {
        assert!(
            Instant::now() < deadline,
            "acknowledged appends not journaled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.journal_stats().await.expect("stats")
}

/// Wait (bounded) until the journal shows every acknowledged message and
/// has nothing pending.
pub async fn wait_translated(store: &dyn store::Store) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = settled_stats(store).await;
        if s.pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "journal still pending: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- FHIR API, SMART and audit fixtures -------------------------------

pub const MCP_TOKEN: &str = "mcp-a-test-token";
pub const MCP_B_TOKEN: &str = "mcp-b-test-token";
pub const ECM_TOKEN: &str = "ecm-test-token";
pub const BASE: &str = "https://gateway.example.org/fhir";
pub const CIN_SYSTEM: &str = "https://gateway.example.org/fhir/identifier/medi-cal-cin";

/// Clients for the FHIR API tests (appended to `config_text`).
pub fn fhir_extra() -> String {
    format!(
        r#"
[[clients]]
id = "plan-a"
organization = "mcp-a"
token_sha256 = "{mcp}"

[[clients]]
id = "plan-b"
organization = "mcp-b"
token_sha256 = "{mcpb}"

[[clients]]
id = "compass"
organization = "ecm-compass"
token_sha256 = "{ecm}"

[[clients]]
id = "plan-a-backend"
organization = "mcp-a"
jwks_file = "{jwks}"

[[clients]]
id = "compass-backend"
organization = "ecm-compass"
jwks_file = "{jwks}"

[[clients]]
id = "ops-backend"
organization = "ops"
jwks_file = "{jwks}"
"#,
        mcp = sha(MCP_TOKEN),
        mcpb = sha(MCP_B_TOKEN),
        ecm = sha(ECM_TOKEN),
        jwks = repo()
            .join("tests/fixtures/smart/plan-a.jwks.json")
            .display(),
    )
}

pub fn fhir_config(dir: &Path) -> Config {
    Config::from_toml(&config_text(dir, &fhir_extra()), "test").expect("fhir test config")
}

/// Start a gateway with the FHIR test configuration.
pub async fn start_fhir() -> (tempfile::TempDir, cws_gateway::serve::Running, String) {
    let dir = tempfile::tempdir().unwrap();
    let running = cws_gateway::serve::start(fhir_config(dir.path()))
        .await
        .unwrap();
    let base = format!("http://{}", running.http_addr);
    (dir, running, base)
}

/// Store resources directly, with their index tokens (as every writer must).
pub async fn seed(store: &dyn store::Store, resources: Vec<serde_json::Value>) {
    let writes = resources
        .into_iter()
        .map(|r| store::ResourceWrite {
            resource_type: r["resourceType"].as_str().unwrap().to_string(),
            id: r["id"].as_str().unwrap().to_string(),
            patient_id: cws_gateway::resources::index::patient_of(&r),
            index: cws_gateway::resources::index::tokens(&r),
            body: r,
        })
        .collect();
    store.put_resources(writes).await.unwrap();
}

pub fn patient(id: &str, cin: &str, birth: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Patient", "id": id,
        "identifier": [{"system": CIN_SYSTEM, "value": cin,
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MA"}]}}],
        "birthDate": birth,
        "address": [{"city": "Fresno"}]
    })
}

pub fn service_request(id: &str, pid: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "ServiceRequest", "id": id, "status": "active", "intent": "order",
        "identifier": [{"system": "urn:sr", "value": format!("SR-{id}")}],
        "subject": {"reference": format!("Patient/{pid}")},
        "requester": {"reference": "Organization/county-fresno"},
        "performer": [{"reference": "Organization/mcp-a"}]
    })
}

pub fn task(id: &str, pid: &str, sr: &str, status: &str, owner: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Task", "id": id, "status": status, "intent": "order",
        "identifier": [{"system": "urn:task", "value": format!("T-{id}")}],
        "for": {"reference": format!("Patient/{pid}")},
        "focus": {"reference": format!("ServiceRequest/{sr}")},
        "owner": {"reference": format!("Organization/{owner}")},
        "requester": {"reference": "Organization/county-fresno"}
    })
}

/// A Consent in the gateway's shape.
pub fn consent(
    id: &str,
    pid: &str,
    kind: &str,
    grantor: &str,
    recipients: &[&str],
    categories: &[&str],
) -> serde_json::Value {
    let r: Vec<String> = recipients.iter().map(|s| s.to_string()).collect();
    let c: Vec<String> = categories.iter().map(|s| s.to_string()).collect();
    let mut consent =
        cws_gateway::disclosure::consent_to_fhir(&cws_gateway::disclosure::ConsentSpec {
            canonical_base: BASE,
            id,
            identifier: None,
            patient_id: pid,
            kind,
            grantor_role: grantor,
            grantor_name: None,
            recorded_by_org: "county-fresno",
            recorded_at: "2026-01-10T09:00:00Z",
            recipients: &r,
            categories: &c,
            start: "2026-01-10",
            end: None,
        });
    // A referral consent counts only when its record shows the four
    // explained flags (docs/consent.md); the fixture's does.
    if kind == "referral_verbal" {
        cws_gateway::disclosure::add_explained(
            &mut consent,
            BASE,
            &cws_gateway::disclosure::Explained::ALL,
        );
    }
    consent
}
