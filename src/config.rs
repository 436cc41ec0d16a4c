//! Configuration: the TOML format of `docs/configuration.md`, validated purely before anything
//! starts (unknown keys rejected, one clear line per error), then environment
//! overrides (`CWSGW_HTTP_ADDR`, `CWSGW_MLLP_ADDR`, `CWSGW_DATABASE_URL`).
//!
//! Validation never does IO besides reading the file itself; binding ports and
//! opening the store happen later, in `serve`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub mllp: MllpConfig,
    #[serde(default)]
    pub mappings: MappingsConfig,
    #[serde(default)]
    pub sensitivity: SensitivityConfig,
    #[serde(default)]
    pub organizations: Vec<Organization>,
    #[serde(default)]
    pub clients: Vec<Client>,
    #[serde(default)]
    pub calendar: CalendarConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`: how log lines are written (to stderr; `RUST_LOG` is the filter).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json` (env `CWSGW_LOG_FORMAT`, which wins).
    #[serde(default)]
    pub format: LogFormat,
}

/// How a log line is written.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (ANSI colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json`, as in the file (case and surrounding blanks aside).
    pub fn parse(value: &str) -> Option<LogFormat> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// `[calendar]`: the working-day calendar of the deadline clocks.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// CSV `date,name` of holidays replacing the embedded California table.
    #[serde(default)]
    pub holidays_file: Option<PathBuf>,
}

/// `[auth]`: SMART Backend Services access tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of issued access tokens, seconds (1..=300).
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// Name of an environment variable holding the HMAC key (at least 32
    /// bytes) that signs issued access tokens. Instances sharing the key accept
    /// each other's tokens; without it a random per-process key is used.
    #[serde(default)]
    pub token_key_env: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl_secs: default_token_ttl(),
            token_key_env: None,
        }
    }
}

fn default_token_ttl() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    #[serde(default = "default_mllp_addr")]
    pub mllp_addr: String,
    #[serde(default = "default_canonical_base")]
    pub canonical_base: String,
    /// Largest HTTP request body accepted, in bytes (413 above it).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Per-request time limit for the HTTP API, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A connection must send a request's whole header within this many
    /// seconds of waiting for it (the first request, and each next one on a
    /// kept-alive connection), or it is closed (slowloris).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Most simultaneous HTTP connections; more wait in the kernel's accept
    /// queue (no descriptor is spent on them) until one closes.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// The gateway's public base URL (e.g. `https://gw.example.org`), used for
    /// the SMART token endpoint (`{public_url}/auth/token`, the required
    /// `aud` of client assertions) and paging links. Default
    /// `http://{bound http address}`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// `[server.tls]`: serve HTTPS on `http_addr` (absent = plain HTTP).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: the HTTP API's TLS listener. The files are read and
/// checked by `crate::tls::load` (at start and by `check-config`), not here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, end-entity certificate first.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate (PKCS#8, RSA or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificate(s): client certificates are requested and must
    /// chain to one of them. Absent = client certificates are not requested.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse the handshake of a client without a (valid) certificate.
    #[serde(default)]
    pub require_client_cert: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_addr: default_http_addr(),
            mllp_addr: default_mllp_addr(),
            canonical_base: default_canonical_base(),
            max_body_bytes: default_max_body(),
            request_timeout_ms: default_request_timeout_ms(),
            header_timeout_secs: default_header_timeout(),
            max_connections: default_http_max_connections(),
            public_url: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Most inputs committed together in one transaction (group commit).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// PostgreSQL only: connections in this instance's pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// SQLite only: `serve` zero-fills the WAL file at start to the length
    /// it reaches under sustained intake (~258 MiB), so commits overwrite
    /// blocks on disk instead of growing the file (cheaper fsyncs, faster
    /// ACKs). Costs well under a second at a first start and that much disk.
    #[serde(default = "default_true")]
    pub wal_preallocate: bool,
    /// SQLite only: an append is durable once it is in the intake log (a
    /// preallocated append-only file beside the database, fsynced by its
    /// own thread) and its journal transaction committed, the two side by
    /// side, instead of after the journal's WAL fsync. Faster ACKs; a crash
    /// that kept the log is replayed into the journal at the next start.
    #[serde(default = "default_true")]
    pub intake_log: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_store_url(),
            max_batch: default_max_batch(),
            pool_size: default_pool_size(),
            wal_preallocate: true,
            intake_log: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Whole-request time limit of one delivery attempt.
    #[serde(default = "default_delivery_timeout_ms")]
    pub timeout_ms: u64,
    /// TCP + TLS connect time limit.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Attempts in flight at once per endpoint (different patients).
    #[serde(default = "default_delivery_concurrency")]
    pub concurrency: usize,
    /// Extra PEM CA certificates trusted for outbound TLS (besides the system roots).
    #[serde(default)]
    pub ca_bundle_file: Option<PathBuf>,
    /// How long a claimed item stays leased to this instance.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// On shutdown, how long in-flight attempts may still run.
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Routing rules file; default: the shipped conformance/routing-rules.yaml.
    #[serde(default)]
    pub routing_rules_file: Option<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            timeout_ms: default_delivery_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            concurrency: default_delivery_concurrency(),
            ca_bundle_file: None,
            lease_ms: default_lease_ms(),
            shutdown_grace_ms: default_grace_ms(),
            routing_rules_file: None,
        }
    }
}

/// The MLLP listener (`[mllp]` in `docs/configuration.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpConfig {
    /// Largest framed message accepted; a larger one is answered `AR`.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// A connection that sends nothing for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// A frame must be complete within this many seconds of its first byte
    /// (of the first byte after the previous frame), or the connection is
    /// closed: a peer dribbling bytes does not hold a slot forever.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout_secs: u64,
    /// Most simultaneous MLLP connections; more wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most simultaneous MLLP connections from one peer IP address; more
    /// are closed at once (and counted), so one address cannot take every
    /// slot.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// Character set when MSH-18 is empty: `ASCII`, `UTF-8` or `8859/1`.
    #[serde(default = "default_charset")]
    pub default_charset: String,
}

impl Default for MllpConfig {
    fn default() -> Self {
        MllpConfig {
            max_frame_bytes: default_max_frame(),
            idle_timeout_secs: default_idle_timeout(),
            frame_timeout_secs: default_frame_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_peer: default_max_connections_per_peer(),
            default_charset: default_charset(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MappingsConfig {
    /// Directory holding the declarative mapping files and terminology;
    /// absent = the `mappings/` tree built into the binary.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// Locations and hospital services whose encounters are sensitive.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SensitivityConfig {
    #[serde(default)]
    pub psychiatric_locations: Vec<String>,
    #[serde(default)]
    pub sud_locations: Vec<String>,
    #[serde(default)]
    pub psychiatric_services: Vec<String>,
    #[serde(default)]
    pub sud_services: Vec<String>,
}

/// The ECM Populations of Focus an ECM provider may be contracted for
/// (`pofs`): the ECM Policy Guide's POF 1 (adults 1a, children and youth
/// 1b) to 9.
pub const POF_CODES: &[&str] = &["1a", "1b", "2", "3", "4", "5", "6", "7", "8", "9"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgKind {
    County,
    Mcp,
    EcmProvider,
    AdtSource,
    Operator,
    /// A community referrer (hospital, PCP, clinic, CBO, school, behavioral
    /// health, probation): may post ECM referrals and read its own
    /// referrals' status, nothing else.
    Referrer,
}

impl OrgKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrgKind::County => "county",
            OrgKind::Mcp => "mcp",
            OrgKind::EcmProvider => "ecm_provider",
            OrgKind::AdtSource => "adt_source",
            OrgKind::Operator => "operator",
            OrgKind::Referrer => "referrer",
        }
    }
}

/// Outbound credentials of an endpoint. Secrets are named, never inlined.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointAuth {
    pub bearer_token_env: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Organization {
    pub id: String,
    pub kind: OrgKind,
    pub name: String,
    pub county: Option<String>,
    pub endpoint: Option<String>,
    pub endpoint_auth: Option<EndpointAuth>,
    #[serde(default)]
    pub plan_codes: Vec<String>,
    #[serde(default)]
    pub counties: Vec<String>,
    #[serde(default)]
    pub mcps: Vec<String>,
    #[serde(default)]
    pub pofs: Vec<String>,
    pub provider_type: Option<String>,
    #[serde(default)]
    pub sending_facilities: Vec<String>,
    /// `adt_source` only: when commit ACKs are sent (default `as_requested`).
    pub ack_mode: Option<AckMode>,
    /// `mcp` only: the Return Transmission File dialect
    /// (`mappings/rtf/{name}.toml`; default `default`).
    pub rtf_dialect: Option<String>,
}

/// When an `adt_source`'s messages get their commit ACK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// As MSH-15 asks (`NE`: none).
    #[default]
    AsRequested,
    /// Always, even when MSH-15 says `NE` (for senders that wait regardless).
    Always,
}

impl Organization {
    /// The source's ACK mode (`as_requested` when not set).
    pub fn ack_mode(&self) -> AckMode {
        self.ack_mode.unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub id: String,
    pub organization: String,
    pub token_sha256: Option<String>,
    pub jwks_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the client's TLS certificate (DER), 64 hex
    /// characters, colons allowed: a connection presenting that certificate
    /// (verified against `server.tls.client_ca_file`) is this client.
    pub cert_sha256: Option<String>,
    /// The `system/` scopes this client may hold (SMART: the most it is
    /// granted; static token or certificate: its scopes). Absent: the
    /// organization kind's defaults (docs/auth.md).
    pub scopes: Option<Vec<String>>,
}

impl Client {
    /// `cert_sha256` as lowercase hex without colons (`None` if absent).
    pub fn cert_fingerprint(&self) -> Option<String> {
        self.cert_sha256.as_deref().map(normalize_fingerprint)
    }
}

/// A SHA-256 fingerprint as lowercase hex: colons and spaces dropped (as
/// `openssl x509 -fingerprint -sha256` prints it, or plain hex).
pub fn normalize_fingerprint(s: &str) -> String {
    s.chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn default_http_addr() -> String {
    "127.0.0.1:8080".into()
}
fn default_mllp_addr() -> String {
    "127.0.0.1:2575".into()
}
fn default_canonical_base() -> String {
    "https://gateway.example.org/fhir".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_pool_size() -> usize {
    16
}

fn default_store_url() -> String {
    "sqlite://gateway-data/gateway.db".into()
}
fn default_max_batch() -> usize {
    512
}
fn default_max_attempts() -> u32 {
    12
}
fn default_initial_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    300_000
}
fn default_delivery_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_delivery_concurrency() -> usize {
    8
}
fn default_lease_ms() -> u64 {
    60_000
}
fn default_grace_ms() -> u64 {
    5_000
}
fn default_max_frame() -> usize {
    1024 * 1024
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_max_connections() -> usize {
    256
}
fn default_frame_timeout() -> u64 {
    30
}
fn default_max_connections_per_peer() -> usize {
    16
}
fn default_header_timeout() -> u64 {
    10
}
fn default_http_max_connections() -> usize {
    1024
}
fn default_charset() -> String {
    "UTF-8".into()
}

/// Why a configuration was refused: one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Where a value of the effective configuration came from (for `check-config`).
pub const ENV_HTTP_ADDR: &str = "CWSGW_HTTP_ADDR";
pub const ENV_MLLP_ADDR: &str = "CWSGW_MLLP_ADDR";
pub const ENV_DATABASE_URL: &str = "CWSGW_DATABASE_URL";
pub const ENV_LOG_FORMAT: &str = "CWSGW_LOG_FORMAT";

impl Config {
    /// Parse TOML text; `origin` names the file in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: one_line(&e.to_string()),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read and validate a configuration file. Relative paths in it (files,
    /// directories, a `sqlite://` database) resolve against the file's own
    /// directory, so it works the same from any working directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut cfg = Config::from_toml(&text, &path.display().to_string())?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        // The default database (no `store.url`) stays under the working directory.
        let store_url_given = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("store")?.get("url").cloned())
            .is_some();
        cfg.resolve_paths(&dir, store_url_given);
        Ok(cfg)
    }

    /// Make every relative path of the configuration relative to `base`:
    /// `mappings.dir`, `calendar.holidays_file`, `delivery.ca_bundle_file`,
    /// `delivery.routing_rules_file`, `audit.key_file`,
    /// `audit.checkpoint_file`, `clients[].jwks_file`, the
    /// `server.tls` files and, when `store_url_given` (the file sets it), a
    /// `sqlite://` file in `store.url`.
    pub fn resolve_paths(&mut self, base: &Path, store_url_given: bool) {
        let mut paths: Vec<&mut PathBuf> = Vec::new();
        paths.extend(self.mappings.dir.as_mut());
        paths.extend(self.calendar.holidays_file.as_mut());
        paths.extend(self.delivery.ca_bundle_file.as_mut());
        paths.extend(self.delivery.routing_rules_file.as_mut());
        paths.extend(self.audit.key_file.as_mut());
        paths.extend(self.audit.checkpoint_file.as_mut());
        paths.extend(self.clients.iter_mut().filter_map(|c| c.jwks_file.as_mut()));
        if let Some(tls) = &mut self.server.tls {
            paths.push(&mut tls.cert_file);
            paths.push(&mut tls.key_file);
            paths.extend(tls.client_ca_file.as_mut());
        }
        for p in paths {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
        if !store_url_given {
            return;
        }
        let url = self.store.url.trim();
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        if let Some(rest) = rest {
            let p = Path::new(rest);
            if !rest.is_empty() && !rest.starts_with(':') && p.is_relative() {
                self.store.url = format!("sqlite://{}", base.join(p).display());
            }
        }
    }

    /// Apply `CWSGW_*` environment overrides, then validate again.
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        if let Some(v) = env.get(ENV_HTTP_ADDR) {
            self.server.http_addr = v.clone();
        }
        if let Some(v) = env.get(ENV_MLLP_ADDR) {
            self.server.mllp_addr = v.clone();
        }
        if let Some(v) = env.get(ENV_DATABASE_URL) {
            self.store.url = v.clone();
        }
        if let Some(v) = env.get(ENV_LOG_FORMAT) {
            self.log.format = LogFormat::parse(v).ok_or_else(|| {
                ConfigError::Invalid(vec![format!(
                    "{ENV_LOG_FORMAT}: {v:?} is not a log format (text or json)"
                )])
            })?;
        }
        self.validate()
    }

    /// Every problem at once, one line each, each naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        for (key, v) in [
            ("server.http_addr", &self.server.http_addr),
            ("server.mllp_addr", &self.server.mllp_addr),
        ] {
            if v.parse::<SocketAddr>().is_err() {
                errs.push(format!(
                    "{key}: \"{v}\" is not an address like 127.0.0.1:8080"
                ));
            }
        }
        if let Some(u) = &self.server.public_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) || u.ends_with('/') {
                errs.push(format!(
                    "server.public_url: \"{u}\" must be an http(s) URL without a trailing slash"
                ));
            }
        }
        if let Some(tls) = &self.server.tls {
            for (key, path) in [
                ("server.tls.cert_file", Some(&tls.cert_file)),
                ("server.tls.key_file", Some(&tls.key_file)),
                ("server.tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if path.is_some_and(|p| p.as_os_str().is_empty()) {
                    errs.push(format!("{key}: must not be empty"));
                }
            }
            if tls.require_client_cert && tls.client_ca_file.is_none() {
                errs.push(
                    "server.tls.require_client_cert: needs server.tls.client_ca_file (the CA client certificates must chain to)"
                        .into(),
                );
            }
        }
        if !(1..=300).contains(&self.auth.token_ttl_secs) {
            errs.push("auth.token_ttl_secs: must be between 1 and 300".to_string());
        }
        let base = &self.server.canonical_base;
        if !(base.starts_with("https://") || base.starts_with("http://")) || base.ends_with('/') {
            errs.push(format!(
                "server.canonical_base: \"{base}\" must be an http(s) URL without a trailing slash"
            ));
        }
        if self.server.max_body_bytes == 0 || self.server.max_body_bytes > 64 * 1024 * 1024 {
            errs.push("server.max_body_bytes: must be between 1 and 67108864".into());
        }
        if self.server.request_timeout_ms == 0 {
            errs.push("server.request_timeout_ms: must be positive".into());
        }
        let url = &self.store.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            errs.push(format!(
                "store.url: \"{}\" must start with sqlite:// or postgres://",
                redact_url(url)
            ));
        }
        if self.store.max_batch == 0 || self.store.max_batch > 10_000 {
            errs.push("store.max_batch: must be between 1 and 10000".into());
        }
        if !(2..=256).contains(&self.store.pool_size) {
            errs.push("store.pool_size: must be between 2 and 256".into());
        }
        if self.delivery.max_attempts == 0 {
            errs.push("delivery.max_attempts: must be at least 1".into());
        }
        if self.delivery.initial_backoff_ms == 0
            || self.delivery.initial_backoff_ms > self.delivery.max_backoff_ms
        {
            errs.push(
                "delivery.initial_backoff_ms: must be positive and not above delivery.max_backoff_ms"
                    .into(),
            );
        }
        if self.delivery.timeout_ms == 0 || self.delivery.connect_timeout_ms == 0 {
            errs.push("delivery.timeout_ms / connect_timeout_ms: must be positive".into());
        }
        if self.delivery.concurrency == 0 || self.delivery.concurrency > 256 {
            errs.push("delivery.concurrency: must be between 1 and 256".into());
        }
        if self.delivery.lease_ms <= self.delivery.timeout_ms {
            errs.push("delivery.lease_ms: must be longer than delivery.timeout_ms".into());
        }
        if self.mllp.max_frame_bytes < 1024 || self.mllp.max_frame_bytes > 64 * 1024 * 1024 {
            errs.push("mllp.max_frame_bytes: must be between 1024 and 67108864".into());
        }
        if self.mllp.idle_timeout_secs == 0 {
            errs.push("mllp.idle_timeout_secs: must be positive".into());
        }
        if self.mllp.max_connections == 0 {
            errs.push("mllp.max_connections: must be positive".into());
        }
        if self.mllp.frame_timeout_secs == 0 {
            errs.push("mllp.frame_timeout_secs: must be positive".into());
        }
        if self.mllp.max_connections_per_peer == 0 {
            errs.push("mllp.max_connections_per_peer: must be positive".into());
        }
        if self.server.header_timeout_secs == 0 {
            errs.push("server.header_timeout_secs: must be positive".into());
        }
        if self.server.max_connections == 0 {
            errs.push("server.max_connections: must be positive".into());
        }
        if hl7v2::Charset::from_msh18(&self.mllp.default_charset).is_none() {
            errs.push(format!(
                "mllp.default_charset: \"{}\" is not one of ASCII, UTF-8, 8859/1",
                self.mllp.default_charset
            ));
        }

        let mut ids = HashSet::new();
        let kinds: HashMap<&str, OrgKind> = self
            .organizations
            .iter()
            .map(|o| (o.id.as_str(), o.kind))
            .collect();
        let mut facilities: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, o) in self.organizations.iter().enumerate() {
            let at = format!("organizations[{i}] ({})", o.id);
            if !valid_fhir_id(&o.id) {
                errs.push(format!(
                    "organizations[{i}].id: \"{}\" must be 1-64 of [A-Za-z0-9-.] (it becomes Organization/{{id}})",
                    o.id
                ));
            }
            if !ids.insert(o.id.as_str()) {
                errs.push(format!("{at}.id: duplicate organization id"));
            }
            if o.name.trim().is_empty() {
                errs.push(format!("{at}.name: must not be empty"));
            }
            if let Some(ep) = &o.endpoint {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    errs.push(format!("{at}.endpoint: must be an http(s) URL"));
                }
            }
            match o.kind {
                OrgKind::County => {
                    if o.county.as_deref().unwrap_or("").is_empty() {
                        errs.push(format!("{at}.county: required for kind county"));
                    }
                }
                OrgKind::Mcp => {
                    if o.plan_codes.is_empty() {
                        errs.push(format!(
                            "{at}.plan_codes: an mcp needs at least one plan code"
                        ));
                    }
                    if o.counties.is_empty() {
                        errs.push(format!("{at}.counties: an mcp needs at least one county"));
                    }
                }
                OrgKind::EcmProvider => {
                    for m in &o.mcps {
                        if kinds.get(m.as_str()) != Some(&OrgKind::Mcp) {
                            errs.push(format!(
                                "{at}.mcps: \"{m}\" is not an organization of kind mcp"
                            ));
                        }
                    }
                    // A mistyped POF would silently cost the provider its
                    // streamlined authorization.
                    for p in &o.pofs {
                        if !POF_CODES.contains(&p.as_str()) {
                            errs.push(format!(
                                "{at}.pofs: \"{p}\" is not a Population of Focus code ({})",
                                POF_CODES.join(", ")
                            ));
                        }
                    }
                }
                OrgKind::AdtSource => {
                    if o.sending_facilities.is_empty() {
                        errs.push(format!(
                            "{at}.sending_facilities: an adt_source needs at least one MSH-4 namespace id"
                        ));
                    }
                    for f in &o.sending_facilities {
                        if let Some(prev) = facilities.insert(f.as_str(), o.id.as_str()) {
                            errs.push(format!(
                                "{at}.sending_facilities: \"{f}\" is already listed by {prev}"
                            ));
                        }
                    }
                }
                OrgKind::Operator => {}
                OrgKind::Referrer => {
                    if !o.mcps.is_empty() || !o.pofs.is_empty() || !o.plan_codes.is_empty() {
                        errs.push(format!(
                            "{at}: a referrer has no mcps, pofs or plan_codes (it refers; it is not contracted for ECM)"
                        ));
                    }
                }
            }
            if o.kind != OrgKind::AdtSource && !o.sending_facilities.is_empty() {
                errs.push(format!("{at}.sending_facilities: only for kind adt_source"));
            }
            if o.kind != OrgKind::AdtSource && o.ack_mode.is_some() {
                errs.push(format!("{at}.ack_mode: only for kind adt_source"));
            }
            if let Some(d) = &o.rtf_dialect {
                if o.kind != OrgKind::Mcp {
                    errs.push(format!("{at}.rtf_dialect: only for kind mcp"));
                } else if d.is_empty()
                    || !d
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    errs.push(format!(
                        "{at}.rtf_dialect: a file stem under mappings/rtf/ (letters, digits, '-', '_')"
                    ));
                }
            }
            if let Some(auth) = &o.endpoint_auth {
                let bearer = auth.bearer_token_env.is_some();
                let oauth = auth.token_url.is_some()
                    || auth.client_id.is_some()
                    || auth.client_secret_env.is_some();
                if bearer && oauth {
                    errs.push(format!(
                        "{at}.endpoint_auth: use bearer_token_env or OAuth2 client credentials, not both"
                    ));
                }
                if oauth
                    && (auth.token_url.is_none()
                        || auth.client_id.is_none()
                        || auth.client_secret_env.is_none())
                {
                    errs.push(format!(
                        "{at}.endpoint_auth: OAuth2 needs token_url, client_id and client_secret_env"
                    ));
                }
            }
        }
        let mut client_ids = HashSet::new();
        let mut hashes = HashSet::new();
        let mut cert_hashes = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let at = format!("clients[{i}] ({})", c.id);
            if !client_ids.insert(c.id.as_str()) {
                errs.push(format!("{at}.id: duplicate client id"));
            }
            if !kinds.contains_key(c.organization.as_str()) {
                errs.push(format!(
                    "{at}.organization: \"{}\" is not a configured organization",
                    c.organization
                ));
            }
            match (&c.token_sha256, &c.jwks_file) {
                (Some(_), Some(_)) => {
                    errs.push(format!("{at}: use token_sha256 or jwks_file, not both"))
                }
                (None, None) if c.cert_sha256.is_none() => errs.push(format!(
                    "{at}: needs token_sha256, jwks_file or cert_sha256"
                )),
                (None, None) => {}
                (Some(h), None) => {
                    if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                        errs.push(format!(
                            "{at}.token_sha256: must be 64 hex characters (the SHA-256 of the token)"
                        ));
                    } else if !hashes.insert(h.to_ascii_lowercase()) {
                        errs.push(format!(
                            "{at}.token_sha256: the same token is used by another client"
                        ));
                    }
                }
                (None, Some(_)) => {}
            }
            if let (Some(list), Some(kind)) = (&c.scopes, kinds.get(c.organization.as_str())) {
                for e in crate::scopes::validate_client_scopes(*kind == OrgKind::Operator, list) {
                    errs.push(format!("{at}.{e}"));
                }
            }
            if let Some(fp) = c.cert_fingerprint() {
                if c.jwks_file.is_some() {
                    errs.push(format!(
                        "{at}.cert_sha256: not with jwks_file (a SMART client's scopes come from its access token)"
                    ));
                }
                if fp.len() != 64 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
                    errs.push(format!(
                        "{at}.cert_sha256: must be 64 hex characters, colons allowed (the SHA-256 of the certificate's DER)"
                    ));
                } else if !cert_hashes.insert(fp) {
                    errs.push(format!(
                        "{at}.cert_sha256: the same certificate is mapped to another client"
                    ));
                }
                if self
                    .server
                    .tls
                    .as_ref()
                    .and_then(|t| t.client_ca_file.as_ref())
                    .is_none()
                {
                    errs.push(format!(
                        "{at}.cert_sha256: needs [server.tls] with client_ca_file (client certificates are requested only then)"
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    pub fn organization(&self, id: &str) -> Option<&Organization> {
        self.organizations.iter().find(|o| o.id == id)
    }

    /// The `adt_source` organization that lists this MSH-4 namespace id.
    pub fn adt_source_for_facility(&self, facility: &str) -> Option<&Organization> {
        self.organizations.iter().find(|o| {
            o.kind == OrgKind::AdtSource && o.sending_facilities.iter().any(|f| f == facility)
        })
    }

    pub fn default_charset(&self) -> hl7v2::Charset {
        hl7v2::Charset::from_msh18(&self.mllp.default_charset).unwrap_or(hl7v2::Charset::Utf8)
    }

    pub fn sensitivity(&self) -> mapping::Sensitivity {
        mapping::Sensitivity {
            psychiatric_locations: self.sensitivity.psychiatric_locations.clone(),
            sud_locations: self.sensitivity.sud_locations.clone(),
            psychiatric_services: self.sensitivity.psychiatric_services.clone(),
            sud_services: self.sensitivity.sud_services.clone(),
        }
    }
}

/// A FHIR id: 1-64 characters of `[A-Za-z0-9\-\.]`.
pub fn valid_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Hide a password in a database URL before printing it.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_string()
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `[audit]`: the key of the audit chain and its checkpoints
/// (docs/audit.md). Keys never live in the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File of `id:hex` keys, one per line, the last one current (the
    /// environment variable `CWSGW_AUDIT_KEY`, same format with commas,
    /// takes precedence).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Use the built-in, public demo key when no key is configured. For the
    /// demo and tests only: it proves nothing.
    #[serde(default)]
    pub demo_key: bool,
    /// `serve` refuses to start without a key (default true).
    #[serde(default = "default_true")]
    pub require_key: bool,
    /// Append-only file of signed checkpoints of the chain head. Default:
    /// beside the SQLite database (`{database}.audit-checkpoints`); none for
    /// PostgreSQL unless set (checkpoints then go to the log only).
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
    /// Seconds between checkpoints (when the head moved); 1..=86400.
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_every_secs: u64,
}

fn default_true() -> bool {
    true
}

fn default_checkpoint_secs() -> u64 {
    60
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            key_file: None,
            demo_key: false,
            require_key: true,
            checkpoint_file: None,
            checkpoint_every_secs: default_checkpoint_secs(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
http_addr = "127.0.0.1:0"

[[organizations]]
id = "st-mary"
kind = "adt_source"
name = "St Mary"
sending_facilities = ["STMARY"]

[[clients]]
id = "st-mary-http"
organization = "st-mary"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#;

    #[test]
    fn pofs_and_the_referrer_kind_are_checked() {
        let with = |extra: &str| Config::from_toml(&format!("{MINIMAL}\n{extra}"), "t.toml");
        let mcp = "[[organizations]]\nid = \"mcp-a\"\nkind = \"mcp\"\nname = \"A\"\nplan_codes = [\"A\"]\ncounties = [\"Fresno\"]\n";
        let ecm = |pofs: &str| {
            format!("{mcp}[[organizations]]\nid = \"ecm\"\nkind = \"ecm_provider\"\nname = \"E\"\nmcps = [\"mcp-a\"]\npofs = {pofs}\n")
        };
        assert!(with(&ecm(r#"["8", "1b", "7"]"#)).is_ok());
        let e = with(&ecm(r#"["8", "POF7"]"#)).unwrap_err().to_string();
        assert!(
            e.contains("pofs: \"POF7\" is not a Population of Focus code"),
            "{e}"
        );
        let referrer = "[[organizations]]\nid = \"mercy\"\nkind = \"referrer\"\nname = \"Mercy\"\n";
        let cfg = with(referrer).unwrap();
        assert_eq!(cfg.organization("mercy").unwrap().kind, OrgKind::Referrer);
        assert_eq!(OrgKind::Referrer.as_str(), "referrer");
        let e = with(&format!("{mcp}{referrer}mcps = [\"mcp-a\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a referrer has no mcps, pofs or plan_codes"),
            "{e}"
        );
    }

    #[test]
    fn minimal_config_parses_with_defaults() {
        let cfg = Config::from_toml(MINIMAL, "t.toml").unwrap();
        assert_eq!(cfg.server.mllp_addr, "127.0.0.1:2575");
        assert_eq!(cfg.store.url, "sqlite://gateway-data/gateway.db");
        assert_eq!(cfg.delivery.max_attempts, 12);
        assert_eq!(cfg.mllp.max_frame_bytes, 1024 * 1024);
        assert_eq!(cfg.adt_source_for_facility("STMARY").unwrap().id, "st-mary");
        assert!(cfg.adt_source_for_facility("OTHER").is_none());
    }

    #[test]
    fn availability_limits_default_and_zero_is_refused() {
        let cfg = Config::from_toml(MINIMAL, "t.toml").unwrap();
        assert_eq!(cfg.mllp.frame_timeout_secs, 30);
        assert_eq!(cfg.mllp.max_connections_per_peer, 16);
        assert_eq!(cfg.server.header_timeout_secs, 10);
        assert_eq!(cfg.server.max_connections, 1024);
        let text =
            format!("{MINIMAL}\n[mllp]\nframe_timeout_secs = 0\nmax_connections_per_peer = 0\n")
                .replacen(
                    "[server]",
                    "[server]\nheader_timeout_secs = 0\nmax_connections = 0",
                    1,
                );
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(&text, "t.toml") else {
            panic!("expected invalid");
        };
        let all = errs.join("\n");
        for key in [
            "mllp.frame_timeout_secs",
            "mllp.max_connections_per_peer",
            "server.header_timeout_secs",
            "server.max_connections",
        ] {
            assert!(all.contains(key), "missing {key} in\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_key_named() {
        let err = Config::from_toml("[server]\nhttp_adr = \"x\"\n", "t.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("http_adr"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn log_format_is_text_json_or_refused() {
        assert_eq!(Config::default().log.format, LogFormat::Text);
        let cfg = Config::from_toml("[log]\nformat = \"json\"\n", "t.toml").unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        let cfg = Config::from_toml("[log]\n", "t.toml").unwrap();
        assert_eq!(cfg.log.format, LogFormat::Text);
        let msg = Config::from_toml("[log]\nformat = \"xml\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("xml") && msg.contains("json"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        let msg = Config::from_toml("[log]\nformt = \"json\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("formt"), "{msg}");
        // The environment wins over the file; a bad value names the variable.
        let mut cfg = Config::from_toml("[log]\nformat = \"json\"\n", "t.toml").unwrap();
        let mut env = HashMap::new();
        env.insert(ENV_LOG_FORMAT.to_string(), " Text ".to_string());
        cfg.apply_env(&env).unwrap();
        assert_eq!(cfg.log.format, LogFormat::Text);
        env.insert(ENV_LOG_FORMAT.to_string(), "yaml".to_string());
        let msg = cfg.apply_env(&env).unwrap_err().to_string();
        assert!(msg.contains(ENV_LOG_FORMAT), "{msg}");
    }

    #[test]
    fn every_problem_is_reported_one_per_line() {
        let text = r#"
[server]
http_addr = "nope"
[store]
url = "mysql://x"
[[organizations]]
id = "a b"
kind = "mcp"
name = "x"
[[clients]]
id = "c"
organization = "ghost"
token_sha256 = "abc"
"#;
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(text, "t.toml") else {
            panic!("expected invalid");
        };
        let all = errs.join("\n");
        for needle in [
            "server.http_addr",
            "store.url",
            "organizations[0].id",
            "plan_codes",
            "counties",
            "clients[0] (c).organization",
            "token_sha256",
        ] {
            assert!(all.contains(needle), "missing {needle} in\n{all}");
        }
    }

    #[test]
    fn env_overrides_win_and_are_validated() {
        let mut cfg = Config::from_toml(MINIMAL, "t.toml").unwrap();
        let mut env = HashMap::new();
        env.insert(
            ENV_DATABASE_URL.to_string(),
            "sqlite:///tmp/x.db".to_string(),
        );
        env.insert(ENV_MLLP_ADDR.to_string(), "127.0.0.1:3000".to_string());
        cfg.apply_env(&env).unwrap();
        assert_eq!(cfg.store.url, "sqlite:///tmp/x.db");
        assert_eq!(cfg.server.mllp_addr, "127.0.0.1:3000");
        env.insert(ENV_HTTP_ADDR.to_string(), "bad".to_string());
        assert!(cfg.apply_env(&env).is_err());
    }

    #[test]
    fn duplicate_facilities_and_ids_are_refused() {
        let text = format!(
            "{MINIMAL}\n[[organizations]]\nid = \"st-mary\"\nkind = \"adt_source\"\nname = \"dup\"\nsending_facilities = [\"STMARY\"]\n"
        );
        let err = Config::from_toml(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("duplicate organization id"), "{err}");
        assert!(err.contains("already listed by st-mary"), "{err}");
    }

    #[test]
    fn tls_table_parses_and_is_optional() {
        let cfg = Config::from_toml(MINIMAL, "t.toml").unwrap();
        assert!(cfg.server.tls.is_none());
        let text = MINIMAL.replace(
            "[[organizations]]",
            "[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\nrequire_client_cert = true\n\n[[organizations]]",
        );
        let cfg = Config::from_toml(&text, "t.toml").unwrap();
        let tls = cfg.server.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("c.pem"));
        assert_eq!(tls.key_file, PathBuf::from("k.pem"));
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("ca.pem")));
        assert!(tls.require_client_cert);
    }

    #[test]
    fn tls_table_is_validated() {
        let with_tls = |tls: &str| {
            MINIMAL.replace(
                "[[organizations]]",
                &format!("[server.tls]\n{tls}\n[[organizations]]"),
            )
        };
        // Unknown key, missing key: one line naming it.
        let err = Config::from_toml(
            &with_tls("cert_file = \"c\"\nkey_file = \"k\"\nca_file = \"x\""),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ca_file") && !err.contains('\n'), "{err}");
        let err = Config::from_toml(&with_tls("cert_file = \"c\""), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key_file") && !err.contains('\n'), "{err}");
        // require_client_cert needs a CA; empty paths are refused.
        let err = Config::from_toml(
            &with_tls("cert_file = \"\"\nkey_file = \"k\"\nrequire_client_cert = true"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server.tls.cert_file: must not be empty"),
            "{err}"
        );
        assert!(
            err.contains("server.tls.require_client_cert: needs server.tls.client_ca_file"),
            "{err}"
        );
    }

    const FP: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn with_cert_client(tls: bool, client: &str) -> String {
        let tls = if tls {
            "[server.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca_file = \"ca\"\n\n"
        } else {
            ""
        };
        format!(
            "{}\n[[clients]]\nid = \"st-mary-mtls\"\norganization = \"st-mary\"\n{client}\n",
            MINIMAL.replace("[[organizations]]", &format!("{tls}[[organizations]]"))
        )
    }

    #[test]
    fn cert_sha256_maps_a_client_and_is_validated() {
        // Alone, in openssl's colon form: accepted and normalized.
        let colons: String = FP
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let cfg = Config::from_toml(
            &with_cert_client(true, &format!("cert_sha256 = \"{colons}\"")),
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.clients[1].cert_fingerprint().as_deref(), Some(FP));
        // With a static token too: fine.
        Config::from_toml(
            &with_cert_client(
                true,
                &format!(
                    "cert_sha256 = \"{FP}\"\ntoken_sha256 = \"{}\"",
                    FP.replace('9', "8")
                ),
            ),
            "t.toml",
        )
        .unwrap();
        let err = |client: &str, tls: bool| {
            Config::from_toml(&with_cert_client(tls, client), "t.toml")
                .unwrap_err()
                .to_string()
        };
        let e = err("cert_sha256 = \"abc\"", true);
        assert!(
            e.contains("clients[1] (st-mary-mtls).cert_sha256: must be 64 hex"),
            "{e}"
        );
        let e = err(&format!("cert_sha256 = \"{FP}\""), false);
        assert!(
            e.contains("cert_sha256: needs [server.tls] with client_ca_file"),
            "{e}"
        );
        let e = err(
            &format!("cert_sha256 = \"{FP}\"\njwks_file = \"x.json\""),
            true,
        );
        assert!(e.contains("cert_sha256: not with jwks_file"), "{e}");
        let e = err("", true);
        assert!(
            e.contains("needs token_sha256, jwks_file or cert_sha256"),
            "{e}"
        );
        // The same certificate for two clients.
        let text = format!(
            "{}\n[[clients]]\nid = \"again\"\norganization = \"st-mary\"\ncert_sha256 = \"{FP}\"\n",
            with_cert_client(true, &format!("cert_sha256 = \"{FP}\""))
        );
        let e = Config::from_toml(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains(
                "clients[2] (again).cert_sha256: the same certificate is mapped to another client"
            ),
            "{e}"
        );
    }

    #[test]
    fn fingerprints_normalize() {
        assert_eq!(normalize_fingerprint("AB:cd:0F"), "abcd0f");
        assert_eq!(normalize_fingerprint(" ab cd "), "abcd");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://gw:secret@db/gw"),
            "postgres://gw:***@db/gw"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[mappings]\ndir = \"maps\"\n[calendar]\nholidays_file = \"/abs/h.csv\"\n[delivery]\nrouting_rules_file = \"rules/r.yaml\"\n[audit]\nkey_file = \"keys/audit.key\"\n",
            MINIMAL.replace(
                "[[organizations]]",
                "[store]\nurl = \"sqlite://data/gw.db\"\n\n[[organizations]]"
            )
        );
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, text).unwrap();
        let cfg = Config::from_file(&path).unwrap();
        let base = std::path::absolute(dir.path()).unwrap();
        assert_eq!(cfg.mappings.dir, Some(base.join("maps")));
        assert_eq!(
            cfg.calendar.holidays_file,
            Some(PathBuf::from("/abs/h.csv"))
        );
        assert_eq!(
            cfg.delivery.routing_rules_file,
            Some(base.join("rules/r.yaml"))
        );
        assert_eq!(cfg.audit.key_file, Some(base.join("keys/audit.key")));
        assert_eq!(
            cfg.store.url,
            format!("sqlite://{}", base.join("data/gw.db").display())
        );
        // Without store.url the default database stays under the working
        // directory; without [mappings] dir the built-in mappings are used.
        std::fs::write(&path, MINIMAL).unwrap();
        let cfg = Config::from_file(&path).unwrap();
        assert_eq!(cfg.store.url, "sqlite://gateway-data/gateway.db");
        assert_eq!(cfg.mappings.dir, None);
        // Text parsed without a file keeps its paths as written.
        let cfg = Config::from_toml("[mappings]\ndir = \"m\"\n", "t.toml").unwrap();
        assert_eq!(cfg.mappings.dir, Some(PathBuf::from("m")));
    }

    #[test]
    fn shipped_configs_are_valid() {
        for f in [
            "config/demo.toml",
            "config/example.toml",
            "config/scenarios.toml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            Config::from_file(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }
}
