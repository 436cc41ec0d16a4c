//! An in-process FHIR endpoint that records what it receives — for the
//! integration tests, `bench delivery` and the demo. It listens on loopback
//! only, answers POST `/…` (transactions) and POST `/…/$process-message`,
//! counts every `PUT` entry url (so duplicates are visible), and can be
//! scripted: a queue of responses (status, `Retry-After`, delay) consumed one
//! per request, and per-substring failures (e.g. fail every Bundle that
//! mentions one patient). A POST to a path ending in `/token` is answered as
//! an OAuth2 token endpoint (`{"access_token": "mock-token-N", "expires_in": 3600}`)
//! and counted, not recorded.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::watch;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Duration,
}

impl MockResponse {
    pub fn status(status: u16) -> MockResponse {
        MockResponse {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// One received request.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub at: Instant,
    pub authorization: Option<String>,
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<MockResponse>,
    fail_when: Vec<(String, u16)>,
    received: Vec<Received>,
    puts: BTreeMap<String, u64>,
    down: bool,
    tokens_issued: u64,
}

/// A running mock endpoint.
#[derive(Clone)]
pub struct MockEndpoint {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    _stop: Arc<watch::Sender<bool>>,
}

/// Most requests a mock keeps (older ones are counted, not kept).
const MAX_KEPT: usize = 100_000;

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path().ends_with("/token") {
        let n = match inner.lock() {
            Ok(mut g) => {
                g.tokens_issued += 1;
                g.tokens_issued
            }
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
        let form = String::from_utf8_lossy(&body);
        if !form.contains("grant_type=client_credentials") {
            return StatusCode::BAD_REQUEST.into_response();
        }
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            format!(
                r#"{{"access_token":"mock-token-{n}","token_type":"bearer","expires_in":3600}}"#
            ),
        )
            .into_response();
    }
    let text = String::from_utf8_lossy(&body).to_string();
    let (resp, down) = {
        let Ok(mut g) = inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let fail = g
            .fail_when
            .iter()
            .find(|(s, _)| text.contains(s.as_str()))
            .map(|(_, st)| MockResponse::status(*st));
        let r = fail
            .or_else(|| g.script.pop_front())
            .unwrap_or(MockResponse::status(200));
        (r, g.down)
    };
    if down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !resp.delay.is_zero() {
        tokio::time::sleep(resp.delay).await;
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut g) = inner.lock() {
        if (200..300).contains(&resp.status) {
            if let Some(entries) = parsed.get("entry").and_then(Value::as_array) {
                for e in entries {
                    if let Some(url) = e.pointer("/request/url").and_then(Value::as_str) {
                        *g.puts.entry(url.to_string()).or_insert(0) += 1;
                    }
                }
            }
        }
        if g.received.len() < MAX_KEPT {
            g.received.push(Received {
                path: uri.path().to_string(),
                at: Instant::now(),
                authorization: headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body: parsed,
                status: resp.status,
            });
        }
    }
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (
        status,
        [("content-type", "application/fhir+json")],
        r#"{"resourceType":"Bundle","type":"transaction-response"}"#,
    )
        .into_response();
    if let Some(ra) = resp.retry_after {
        if let Ok(v) = ra.parse() {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

impl MockEndpoint {
    /// Start on 127.0.0.1 with an OS-chosen port.
    pub async fn start() -> std::io::Result<MockEndpoint> {
        MockEndpoint::start_on("127.0.0.1:0").await
    }

    /// Start on a given loopback address.
    pub async fn start_on(addr: &str) -> std::io::Result<MockEndpoint> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .fallback(axum::routing::post(handle))
            .with_state(inner.clone());
        let (stop, mut rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await;
        });
        Ok(MockEndpoint {
            addr,
            inner,
            _stop: Arc::new(stop),
        })
    }

    /// The FHIR base URL to configure (`http://127.0.0.1:PORT/fhir`).
    pub fn base_url(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    /// Queue scripted answers (consumed one per request, then 200).
    pub fn script(&self, responses: impl IntoIterator<Item = MockResponse>) {
        self.with(|g| g.script.extend(responses));
    }

    /// Answer `status` to every request whose body contains `needle`.
    pub fn fail_when(&self, needle: &str, status: u16) {
        self.with(|g| g.fail_when.push((needle.to_string(), status)));
    }

    /// Stop failing on `needle`.
    pub fn clear_failures(&self) {
        self.with(|g| g.fail_when.clear());
    }

    /// While down, every request is answered 503 and not recorded.
    pub fn set_down(&self, down: bool) {
        self.with(|g| g.down = down);
    }

    /// Every recorded request.
    pub fn received(&self) -> Vec<Received> {
        self.with(|g| g.received.clone()).unwrap_or_default()
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// OAuth2 tokens issued by the `/token` path.
    pub fn tokens_issued(&self) -> u64 {
        self.with(|g| g.tokens_issued).unwrap_or(0)
    }

    /// How often each `PUT` url was accepted.
    pub fn put_counts(&self) -> BTreeMap<String, u64> {
        self.with(|g| g.puts.clone()).unwrap_or_default()
    }
}
