//! The outbound HTTP client: rustls (ring provider; the system roots plus an
//! optional extra CA bundle), connect and request timeouts, HTTP/1.1, no
//! redirects (a redirect is a permanent failure: a FHIR endpoint does not move
//! under a POST), and per-endpoint credentials — a bearer token from an
//! environment variable, or OAuth2 client credentials with the token cached
//! until shortly before it expires. Secrets are never logged or put in errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;

use super::policy::{classify_status, parse_retry_after, Failure};
use crate::config::{Config, EndpointAuth};

/// Largest response body read (the rest is discarded).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// A cached OAuth2 token is renewed this long before it expires.
const TOKEN_SLACK: Duration = Duration::from_secs(30);

/// Why the client could not be built (one line).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("delivery.ca_bundle_file {path}: {reason}")]
    CaBundle { path: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    until: Instant,
}

/// Reads a secret by environment variable name.
pub type SecretSource = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Sends Bundles; one per process, shared by every endpoint worker.
pub struct Sender {
    http: reqwest::Client,
    auth: HashMap<String, EndpointAuth>,
    tokens: Mutex<HashMap<String, CachedToken>>,
    env: SecretSource,
}

/// The result of one POST.
#[derive(Debug)]
pub enum SendResult {
    /// 2xx.
    Delivered { status: u16 },
    /// Anything else, classified.
    Failed(Failure),
}

/// Install the ring crypto provider once (reqwest's rustls backend picks it up).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Sender {
    /// Build from `[delivery]` and the organizations' `endpoint_auth`.
    pub fn new(cfg: &Config) -> Result<Sender, ClientError> {
        Sender::with_env(cfg, Arc::new(|k: &str| std::env::var(k).ok()))
    }

    /// As [`Sender::new`], reading secrets through `env` (tests).
    pub fn with_env(cfg: &Config, env: SecretSource) -> Result<Sender, ClientError> {
        install_crypto_provider();
        let d = &cfg.delivery;
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(d.connect_timeout_ms))
            .timeout(Duration::from_millis(d.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(d.concurrency.max(1))
            .user_agent(concat!("cws-gateway/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &d.ca_bundle_file {
            let pem = std::fs::read(path).map_err(|e| ClientError::CaBundle {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::CaBundle {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ClientError::CaBundle {
                    path: path.display().to_string(),
                    reason: "no certificate in the file".into(),
                });
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|e| ClientError::Build(e.to_string()))?;
        let auth = cfg
            .organizations
            .iter()
            .filter_map(|o| Some((o.id.clone(), o.endpoint_auth.clone()?)))
            .collect();
        Ok(Sender {
            http,
            auth,
            tokens: Mutex::new(HashMap::new()),
            env,
        })
    }

    /// The `Authorization` header value for an organization, if it has credentials.
    async fn authorization(&self, org: &str) -> Result<Option<String>, Failure> {
        let Some(auth) = self.auth.get(org) else {
            return Ok(None);
        };
        if let Some(var) = &auth.bearer_token_env {
            return match (self.env)(var) {
                Some(t) if !t.is_empty() => Ok(Some(format!("Bearer {t}"))),
                _ => Err(Failure::Transient {
                    class: "auth-token-missing",
                    retry_after: None,
                }),
            };
        }
        let (Some(url), Some(client_id), Some(secret_env)) =
            (&auth.token_url, &auth.client_id, &auth.client_secret_env)
        else {
            return Ok(None);
        };
        let mut cache = self.tokens.lock().await;
        if let Some(t) = cache.get(org) {
            if Instant::now() < t.until {
                return Ok(Some(format!("Bearer {}", t.token)));
            }
        }
        let secret = (self.env)(secret_env).ok_or(Failure::Transient {
            class: "auth-secret-missing",
            retry_after: None,
        })?;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", &secret),
        ];
        if let Some(scope) = &auth.scope {
            form.push(("scope", scope));
        }
        let oauth_failure = Failure::Transient {
            class: "auth-token-request",
            retry_after: None,
        };
        let resp = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|_| oauth_failure.clone())?;
        if !resp.status().is_success() {
            return Err(oauth_failure);
        }
        let body = read_limited(resp).await;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| oauth_failure.clone())?;
        let token = v
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .ok_or(oauth_failure)?
            .to_string();
        let ttl = v
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(300));
        cache.insert(
            org.to_string(),
            CachedToken {
                token: token.clone(),
                until: Instant::now() + ttl.saturating_sub(TOKEN_SLACK),
            },
        );
        Ok(Some(format!("Bearer {token}")))
    }

    /// Forget a cached OAuth2 token (after a 401).
    async fn forget_token(&self, org: &str) {
        self.tokens.lock().await.remove(org);
    }

    /// POST a FHIR Bundle to `url` as `org`.
    pub async fn post(&self, org: &str, url: &str, body: Vec<u8>) -> SendResult {
        let auth = match self.authorization(org).await {
            Ok(a) => a,
            Err(f) => return SendResult::Failed(f),
        };
        let mut req = self
            .http
            .post(url)
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let class = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                return SendResult::Failed(Failure::Transient {
                    class,
                    retry_after: None,
                });
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        // Drain (bounded) so the connection can be reused.
        let _ = read_limited(resp).await;
        if (200..300).contains(&status) {
            return SendResult::Delivered { status };
        }
        if status == 401 {
            self.forget_token(org).await;
        }
        SendResult::Failed(classify_status(status, retry_after))
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    out
}
