//! Executable scenarios: the seed workflows as declarative YAML files
//! (`tests/scenarios/*.yaml`), run through the public interfaces only — HTTP
//! requests as a configured client, HL7 messages over MLLP, and what the
//! in-process mock MCP/ECM endpoints received. The same runner replays the
//! demo's sample traffic.
//!
//! ```yaml
//! name: short title
//! source: the seed section it follows
//! config: config/scenarios.toml                     # optional; default config/demo.toml
//! steps:
//!   - name: county opens the case
//!     http: { method: POST, path: /cws/events, as: county-fresno, body: { … } }
//!     expect: { status: 202, json: { "/resourceType": Bundle } }
//!     save: { task: "/entry/1/resource/id" }        # JSON pointers into the reply
//!   - http: { method: POST, path: /ecm/rtf, as: ecm-compass, content_type: text/csv,
//!             body_text: "Member_CIN,…\n…" }          # a non-JSON body, sent as it is
//!   - mllp: "MSH|^~\\&|…\rPID|…"                    # one ER7 message
//!     expect: { ack: AA }
//!   - wait: { delivered_to: ecm-compass, contains: "notification-admit", within_ms: 5000 }
//!   - wait: { not_delivered_to: county-fresno, contains: "Encounter", for_ms: 500 }
//! ```
//! `${name}` in a path, a body string or a message is replaced by a saved
//! value (or a built-in: `${today}`, `${month}` (YYYY-MM), `${now}`, `${days_ago:N}`, `${days_ahead:N}`).
//! Every loop is bounded: waits have a deadline, requests a timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mock::MockEndpoint;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub source: Option<String>,
    /// The gateway configuration to run on, relative to the repository
    /// (default `config/demo.toml`).
    #[serde(default)]
    pub config: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub http: Option<HttpStep>,
    #[serde(default)]
    pub mllp: Option<String>,
    #[serde(default)]
    pub wait: Option<WaitStep>,
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub save: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    pub method: String,
    pub path: String,
    /// The organization id whose client token to use; none = no token.
    #[serde(default, rename = "as")]
    pub as_org: Option<String>,
    #[serde(default)]
    pub body: Option<Value>,
    /// A non-JSON body sent as it is (variables substituted), e.g. a CSV
    /// file; with `content_type`.
    #[serde(default)]
    pub body_text: Option<String>,
    /// The Content-Type of `body_text` (default `text/plain`).
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub status: Option<u16>,
    /// JSON pointer → expected value.
    #[serde(default)]
    pub json: BTreeMap<String, Value>,
    /// Substrings the reply must contain.
    #[serde(default)]
    pub contains: Vec<String>,
    /// Substrings the reply must not contain.
    #[serde(default)]
    pub not_contains: Vec<String>,
    /// MSA-1 of the (first) ACK.
    #[serde(default)]
    pub ack: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitStep {
    #[serde(default)]
    pub delivered_to: Option<String>,
    #[serde(default)]
    pub not_delivered_to: Option<String>,
    /// A substring of the delivered body.
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default = "default_within")]
    pub within_ms: u64,
    #[serde(default = "default_for")]
    pub for_ms: u64,
}

fn default_within() -> u64 {
    10_000
}
fn default_for() -> u64 {
    1_000
}

impl Scenario {
    pub fn from_yaml(text: &str, origin: &str) -> anyhow::Result<Scenario> {
        serde_yaml::from_str(text).with_context(|| format!("scenario {origin}"))
    }
}

/// Where the gateway and the mocks are, and how to call as each organization.
pub struct Target {
    pub http: SocketAddr,
    pub mllp: SocketAddr,
    pub tokens: HashMap<String, String>,
    pub mocks: HashMap<String, MockEndpoint>,
}

/// What a run did, for the demo's summary and for test failures.
#[derive(Debug, Default, Clone)]
pub struct RunLog {
    pub lines: Vec<String>,
}

fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(rest.get(..i).unwrap_or(""));
        let after = rest.get(i + 2..).unwrap_or("");
        let Some(end) = after.find('}') else {
            out.push_str(rest.get(i..).unwrap_or(""));
            return out;
        };
        let name = after.get(..end).unwrap_or("");
        out.push_str(
            &builtin(name)
                .or_else(|| vars.get(name).cloned())
                .unwrap_or_default(),
        );
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

fn builtin(name: &str) -> Option<String> {
    let today = chrono::Utc::now().date_naive();
    let days = |s: &str| s.parse::<i64>().ok().map(chrono::Duration::days);
    match name {
        "today" => Some(today.to_string()),
        "month" => Some(today.format("%Y-%m").to_string()),
        "now" => Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "hl7_now" => Some(chrono::Utc::now().format("%Y%m%d%H%M%S+0000").to_string()),
        _ => {
            if let Some(n) = name.strip_prefix("days_ago:").and_then(days) {
                return Some((today - n).to_string());
            }
            if let Some(n) = name.strip_prefix("days_ahead:").and_then(days) {
                return Some((today + n).to_string());
            }
            None
        }
    }
}

fn substitute_json(v: &Value, vars: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => Value::String(substitute(s, vars)),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute_json(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute_json(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn msa1(ack: &str) -> String {
    ack.split(['\r', '\n'])
        .find(|s| s.starts_with("MSA"))
        .and_then(|s| s.split('|').nth(1))
        .unwrap_or("")
        .to_string()
}

async fn send_mllp(addr: SocketAddr, message: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .context("MLLP connect timed out")??;
    let payload = message.replace("\r\n", "\r").replace('\n', "\r");
    s.write_all(&hl7v2::mllp::frame(payload.trim_end().as_bytes()))
        .await?;
    let mut dec = hl7v2::mllp::FrameDecoder::new(1 << 20);
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(hl7v2::mllp::FrameEvent::Frame(f)) = dec.next_event() {
            return Ok(String::from_utf8_lossy(&f).to_string());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut buf))
            .await
            .context("no ACK within 15 s")??;
        if n == 0 {
            bail!("connection closed before the ACK");
        }
        dec.push(buf.get(..n).unwrap_or(&[]));
    }
}

fn check(expect: &Expect, status: Option<u16>, body: &str, json: &Value) -> anyhow::Result<()> {
    if let (Some(want), Some(got)) = (expect.status, status) {
        if want != got {
            bail!("status {got}, expected {want}: {}", truncate(body));
        }
    }
    for (ptr, want) in &expect.json {
        let got = lookup(json, ptr).unwrap_or(&Value::Null);
        if got != want {
            bail!("{ptr} is {got}, expected {want}: {}", truncate(body));
        }
    }
    for c in &expect.contains {
        if !body.contains(c.as_str()) {
            bail!("reply lacks {c:?}: {}", truncate(body));
        }
    }
    for c in &expect.not_contains {
        if body.contains(c.as_str()) {
            bail!("reply contains {c:?}");
        }
    }
    if let Some(want) = &expect.ack {
        let got = msa1(body);
        if &got != want {
            bail!("ACK {got}, expected {want}: {}", truncate(body));
        }
    }
    Ok(())
}

/// A JSON pointer, or `entry:Type/pointer` — the first Bundle entry whose
/// resource is of that type, then the pointer inside the resource.
fn lookup<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    let Some(rest) = path.strip_prefix("entry:") else {
        return json.pointer(path);
    };
    let (rtype, ptr) = rest.split_once('/')?;
    json.get("entry")?
        .as_array()?
        .iter()
        .filter_map(|e| e.get("resource"))
        .find(|r| r.get("resourceType").and_then(Value::as_str) == Some(rtype))?
        .pointer(&format!("/{ptr}"))
}

fn truncate(s: &str) -> String {
    let mut t: String = s.chars().take(600).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

fn deliveries_matching(mock: &MockEndpoint, needle: Option<&str>) -> usize {
    mock.accepted()
        .iter()
        .filter(|r| needle.is_none_or(|n| r.body.to_string().contains(n)))
        .count()
}

/// Run one scenario; an error names the step that failed and why.
pub async fn run(scenario: &Scenario, target: &Target, log: &mut RunLog) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let mut vars: HashMap<String, String> = HashMap::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let label = step
            .name
            .clone()
            .unwrap_or_else(|| format!("step {}", i + 1));
        let result: anyhow::Result<()> = async {
            let expect = step.expect.clone().unwrap_or_default();
            if let Some(h) = &step.http {
                let path = substitute(&h.path, &vars);
                let url = format!("http://{}{}", target.http, path);
                let method = reqwest::Method::from_bytes(h.method.as_bytes())
                    .map_err(|_| anyhow!("bad method {}", h.method))?;
                let mut req = client.request(method, &url);
                if let Some(org) = &h.as_org {
                    let token = target
                        .tokens
                        .get(org)
                        .ok_or_else(|| anyhow!("no client token for {org}"))?;
                    req = req.bearer_auth(token);
                }
                if let Some(b) = &h.body {
                    req = req
                        .header("Content-Type", "application/fhir+json")
                        .body(substitute_json(b, &vars).to_string());
                }
                if let Some(t) = &h.body_text {
                    req = req
                        .header(
                            "Content-Type",
                            h.content_type.as_deref().unwrap_or("text/plain"),
                        )
                        .body(substitute(t, &vars));
                }
                let resp = req
                    .send()
                    .await
                    .with_context(|| format!("{} {path}", h.method))?;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                check(&expect, Some(status), &text, &json)?;
                for (var, ptr) in &step.save {
                    let v = lookup(&json, ptr)
                        .ok_or_else(|| anyhow!("reply has nothing at {ptr} to save as {var}"))?;
                    let s = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    vars.insert(var.clone(), s);
                }
                log.lines
                    .push(format!("{label}: {} {path} → {status}", h.method));
            } else if let Some(m) = &step.mllp {
                let ack = send_mllp(target.mllp, &substitute(m, &vars)).await?;
                check(&expect, None, &ack, &Value::Null)?;
                log.lines.push(format!("{label}: MLLP → {}", msa1(&ack)));
            } else if let Some(w) = &step.wait {
                if let Some(org) = &w.delivered_to {
                    let mock = target
                        .mocks
                        .get(org)
                        .ok_or_else(|| anyhow!("no mock endpoint for {org}"))?;
                    let needle = w.contains.as_deref().map(|s| substitute(s, &vars));
                    let deadline = Instant::now() + Duration::from_millis(w.within_ms);
                    while deliveries_matching(mock, needle.as_deref()) == 0 {
                        if Instant::now() > deadline {
                            bail!(
                                "nothing{} delivered to {org} within {} ms",
                                needle
                                    .as_deref()
                                    .map(|n| format!(" containing {n:?}"))
                                    .unwrap_or_default(),
                                w.within_ms
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    log.lines.push(format!("{label}: delivered to {org}"));
                }
                if let Some(org) = &w.not_delivered_to {
                    let mock = target
                        .mocks
                        .get(org)
                        .ok_or_else(|| anyhow!("no mock endpoint for {org}"))?;
                    let needle = w.contains.as_deref().map(|s| substitute(s, &vars));
                    tokio::time::sleep(Duration::from_millis(w.for_ms)).await;
                    let n = deliveries_matching(mock, needle.as_deref());
                    if n > 0 {
                        bail!("{n} deliveries to {org} that consent should have withheld");
                    }
                    log.lines.push(format!("{label}: withheld from {org}"));
                }
            } else {
                bail!("a step needs http, mllp or wait");
            }
            Ok(())
        }
        .await;
        result.with_context(|| format!("{}: {label}", scenario.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_saved_and_builtin_values() {
        let mut vars = HashMap::new();
        vars.insert("task".to_string(), "abc".to_string());
        assert_eq!(substitute("/fhir/Task/${task}", &vars), "/fhir/Task/abc");
        assert_eq!(substitute("${unknown}x", &vars), "x");
        assert_eq!(substitute("${today}", &vars).len(), 10);
        assert_eq!(substitute("open ${", &vars), "open ${");
    }

    #[test]
    fn looks_up_bundle_entries_by_type() {
        let b = serde_json::json!({"entry": [{"resource": {"resourceType": "Patient", "id": "p"}}, {"resource": {"resourceType": "Task", "id": "t"}}]});
        assert_eq!(
            lookup(&b, "entry:Task/id"),
            Some(&Value::String("t".into()))
        );
        assert_eq!(
            lookup(&b, "/entry/0/resource/id"),
            Some(&Value::String("p".into()))
        );
        assert_eq!(lookup(&b, "entry:CarePlan/id"), None);
    }

    #[test]
    fn scenario_files_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.extension().and_then(|e| e.to_str()) == Some("yaml") {
                let text = std::fs::read_to_string(&p).unwrap();
                Scenario::from_yaml(&text, &p.display().to_string()).unwrap();
            }
        }
    }
}
