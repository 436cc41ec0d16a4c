//! Wiring: open the store, load the mappings, bind the listeners, start the
//! translation worker, and stop it all in order.
//!
//! Start-up fails with one clear line for a bad mapping directory, an
//! unreachable store, or a port in use. Shutdown: stop accepting, let
//! connections finish the frame they are on, drain the translation queue.
//!
//! **Architecture Invariant: no HTTP client holds a connection without
//! sending requests, and connections cannot use up the process's file
//! descriptors.** The HTTP listener ([`serve_http`]) closes a connection
//! that has not sent a request's whole header `server.header_timeout_secs`
//! after it began waiting for one, and serves at most
//! `server.max_connections` at once; more wait in the kernel's accept queue
//! (no descriptor spent) until one closes. At start the soft
//! `RLIMIT_NOFILE` is raised to the hard limit ([`raise_fd_limit`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use store::{SqliteOptions, Store};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore, TryAcquireError};
use tower::ServiceExt as _;

use crate::api::{self, Gateway};
use crate::config::{redact_url, Config};
use crate::mllp::MllpServer;
use crate::sources::adt::intake::AdtIntake;
use crate::sources::adt::worker::{self, Translator};
use crate::state::Core;
use crate::telemetry::{Metrics, RateLimitedLog};

/// The CapabilityStatement this build serves (a test checks it is true).
pub const CAPABILITY_STATEMENT: &str = include_str!("../conformance/CapabilityStatement.json");

/// A running gateway.
pub struct Running {
    pub http_addr: SocketAddr,
    pub mllp_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    worker: tokio::task::JoinHandle<()>,
    intake: Arc<AdtIntake>,
    delivery: crate::delivery::Workers,
}

/// Open the store `store.url` names: `postgres://…` / `postgresql://…` →
/// PostgreSQL (several instances may share it), `sqlite://…` → the embedded
/// default. Must run inside the Tokio runtime.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    open_store_with(cfg, false).await
}

/// [`open_store`] for a command that reads a store (`deadlines`, `dlq`,
/// `audit verify`, `explain`): a PostgreSQL database without the gateway's
/// schema is an error, not a new store. (A missing SQLite file is refused
/// before this, by the CLI.)
pub async fn open_existing_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    open_store_with(cfg, true).await
}

async fn open_store_with(cfg: &Config, require_existing: bool) -> anyhow::Result<Arc<dyn Store>> {
    let url = cfg.store.url.trim();
    let opened: Result<Arc<dyn Store>, store::StoreError> = if store_postgres::is_postgres_url(url)
    {
        let opts = store_postgres::PgOptions {
            max_batch: cfg.store.max_batch,
            pool_size: cfg.store.pool_size,
            audit_keys: crate::audit::trail::keys(cfg)?,
            require_existing,
            ..store_postgres::PgOptions::default()
        };
        store_postgres::PgStore::open(url, opts)
            .await
            .map(|s| Arc::new(s) as Arc<dyn Store>)
    } else {
        let opts = SqliteOptions {
            max_batch: cfg.store.max_batch,
            audit_keys: crate::audit::trail::keys(cfg)?,
            // A command that only reads an existing store does not need it.
            wal_preallocate: cfg.store.wal_preallocate && !require_existing,
            // A leftover log is replayed at any open; only `serve` and the
            // commands that append write through it.
            intake_log: cfg.store.intake_log && !require_existing,
            ..SqliteOptions::default()
        };
        store::open_url(url, opts)
    };
    opened.map_err(|e| anyhow!("store {}: {e}", redact_url(&cfg.store.url)))
}

/// The routing rules, with a failure naming `delivery.routing_rules_file`.
pub fn load_router(cfg: &Arc<Config>) -> anyhow::Result<crate::routing::Router> {
    crate::routing::Router::from_config(cfg.clone()).map_err(|e| {
        match &cfg.delivery.routing_rules_file {
            Some(_) => anyhow!("delivery.routing_rules_file: {e}"),
            None => anyhow!("built-in routing rules: {e}"),
        }
    })
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Put this instance's URLs into the CapabilityStatement: the
/// implementation URL and the SMART token endpoint (the file holds defaults).
pub fn set_live_urls(capability: &mut serde_json::Value, base_url: &str, token_url: &str) {
    capability["implementation"]["url"] = serde_json::json!(format!("{base_url}/fhir"));
    if let Some(exts) = capability
        .pointer_mut("/rest/0/security/extension")
        .and_then(|v| v.as_array_mut())
    {
        for e in exts {
            if let Some(inner) = e.get_mut("extension").and_then(|v| v.as_array_mut()) {
                for i in inner {
                    if i.get("url").and_then(|u| u.as_str()) == Some("token") {
                        i["valueUri"] = serde_json::json!(token_url);
                    }
                }
            }
        }
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit, when it is lower, and
/// log the limit: every connection and store file takes a descriptor, and
/// the usual soft default (1024) is below `server.max_connections` plus
/// `mllp.max_connections`. Returns the soft limit now in force (`None`
/// when it cannot be read as a number: unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    match (now.current, now.maximum) {
        (Some(soft), Some(hard)) if soft < hard => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::info!(
                        from = soft,
                        to = hard,
                        "raised the open-file limit (RLIMIT_NOFILE)"
                    );
                    Some(hard)
                }
                Err(e) => {
                    tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
                    Some(soft)
                }
            }
        }
        (soft, hard) => {
            tracing::info!(soft = ?soft, hard = ?hard, "open-file limit (RLIMIT_NOFILE)");
            soft
        }
    }
}

/// The HTTP listener's limits (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serve `app` over HTTP/1.1 on `listener` until `shutdown` turns true, then
/// stop accepting, let each connection finish the request it is on, and
/// wait for them to close.
///
/// At most `max_connections` connections are served at once: the next one is
/// not accepted until one closes, so excess connections wait in the kernel's
/// accept queue and cost no descriptor here. A connection must send a whole
/// request header within `header_timeout` of waiting for it (hyper's
/// `header_read_timeout`, on the first and each kept-alive request), or it is
/// closed, so a half-open or dribbling client frees its slot. `connect_info`
/// gives the [`crate::tls::TlsPeer`] the handlers read (HTTPS).
pub async fn serve_http<L>(
    mut listener: L,
    app: axum::Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    connect_info: fn(&L::Io, &SocketAddr) -> Option<crate::tls::TlsPeer>,
    mut shutdown: watch::Receiver<bool>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let max = limits
        .max_connections
        .min(Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize)
        .max(1);
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let waits = RateLimitedLog::new();
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                metrics.http_slots_exhausted.inc(&["max_connections"]);
                if let Some(skipped) = waits.permit() {
                    tracing::warn!(
                        limit = max,
                        not_logged_since = skipped,
                        "HTTP connections wait to be accepted: server.max_connections are open"
                    );
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
                    _ = shutdown.wait_for(|v| *v) => break,
                }
            }
        };
        let (io, addr) = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let peer = connect_info(&io, &addr);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(peer) = &peer {
                    req.extensions_mut().insert(ConnectInfo(peer.clone()));
                }
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let mut stop = shutdown.clone();
        let metrics = metrics.clone();
        metrics.http_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.wait_for(|v| *v) => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                // A header-read timeout lands here.
                tracing::debug!(peer = %addr, error = %e, "HTTP connection ended with an error");
            }
            metrics.http_connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    // Stop accepting (the TLS listener stops its handshakes when dropped),
    // then wait until every connection has closed.
    drop(listener);
    let _ = slots.acquire_many(max as u32).await;
    tracing::info!("HTTP listener stopped");
}

/// What an HTTPS connection tells the handlers ([`crate::tls::TlsPeer::of`]).
fn tls_peer(
    io: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    addr: &SocketAddr,
) -> Option<crate::tls::TlsPeer> {
    Some(crate::tls::TlsPeer::of(io, *addr))
}

/// Start everything; returns once both listeners are bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    // The HTTP client (reqwest, `rustls-no-provider`) needs a process-wide
    // rustls crypto provider; an already installed one is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = Arc::new(cfg);
    raise_fd_limit();
    let engine = crate::embedded::load_engine(&cfg)?;
    let audit_keys = crate::audit::trail::keys(&cfg)?;
    crate::audit::trail::require_key(&cfg, &audit_keys)?;
    let store = open_store(&cfg).await?;
    let capability: serde_json::Value = serde_json::from_str(CAPABILITY_STATEMENT)
        .context("conformance/CapabilityStatement.json is not JSON")?;
    let metrics = Arc::new(Metrics::default());

    // Read the certificate and keys before binding: a bad file fails start-up
    // with one line and no port is taken.
    let tls = match &cfg.server.tls {
        Some(t) => Some(crate::tls::load(t)?),
        None => None,
    };
    let http = bind(&cfg.server.http_addr, "HTTP").await?;
    let mllp = bind(&cfg.server.mllp_addr, "MLLP").await?;
    let http_addr = http.local_addr()?;
    let mllp_addr = mllp.local_addr()?;

    let router = Arc::new(load_router(&cfg)?);
    let delivery = crate::delivery::start(cfg.clone(), store.clone(), metrics.clone())
        .map_err(|e| anyhow!("{e}"))?;
    let routing = crate::routing::Routing {
        router: router.clone(),
        waker: delivery.waker(),
    };
    let ingress = Arc::new(crate::sources::Ingress::new(cfg.clone(), engine.clone())?);
    let _ = ingress.routing.set(routing.clone());
    if let Err(e) = crate::sources::recover(&ingress, store.as_ref()).await {
        tracing::error!(error = %e, "recovering journaled inputs failed; they stay pending");
    }
    let translator =
        Arc::new(Translator::new(cfg.clone(), engine).with_routing(router, delivery.waker()));
    let (handle, worker) = worker::spawn(translator, store.clone(), metrics.clone());
    let intake = Arc::new(AdtIntake::new(
        cfg.clone(),
        store.clone(),
        handle,
        metrics.clone(),
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);

    let mllp_server = Arc::new(MllpServer {
        intake: intake.clone(),
        metrics: metrics.clone(),
        max_frame: cfg.mllp.max_frame_bytes,
        idle_timeout: Duration::from_secs(cfg.mllp.idle_timeout_secs),
        frame_timeout: Duration::from_secs(cfg.mllp.frame_timeout_secs),
        max_connections: cfg.mllp.max_connections,
        max_connections_per_peer: cfg.mllp.max_connections_per_peer,
    });
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(mllp_server.run(mllp, shutdown_rx.clone())));
    tasks.extend(crate::audit::trail::spawn_checkpoints(
        &cfg,
        store.clone(),
        audit_keys,
        shutdown_rx.clone(),
    ));

    let base_url = cfg.server.public_url.clone().unwrap_or_else(|| {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{http_addr}")
    });
    let token_url = format!("{base_url}/auth/token");
    let auth = crate::auth::Auth::new(&cfg, token_url.clone()).map_err(|e| anyhow!("{e}"))?;
    let mut capability = capability;
    set_live_urls(&mut capability, &base_url, &token_url);
    let state = Gateway {
        core: Core {
            cfg: cfg.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            auth: Arc::new(auth),
            capability: Arc::new(capability),
            routing,
            disclosure: crate::disclosure::Disclosure::new(cfg.clone()),
            base_url: Arc::new(base_url),
        },
        ingress,
        intake: intake.clone(),
    };
    let app = api::router(state);
    let limits = HttpLimits {
        max_connections: cfg.server.max_connections,
        header_timeout: Duration::from_secs(cfg.server.header_timeout_secs),
    };
    let scheme = match tls {
        None => {
            tasks.push(tokio::spawn(serve_http(
                http,
                app,
                limits,
                metrics.clone(),
                |_, _| None,
                shutdown_rx.clone(),
            )));
            "http"
        }
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(http, tls, metrics.clone())
                .context("cannot start the TLS listener")?;
            tasks.push(tokio::spawn(serve_http(
                listener,
                app,
                limits,
                metrics.clone(),
                tls_peer,
                shutdown_rx.clone(),
            )));
            "https"
        }
    };
    tracing::info!(
        scheme,
        http = %http_addr,
        mllp = %mllp_addr,
        store = store.backend(),
        "cws-gateway listening"
    );
    Ok(Running {
        http_addr,
        mllp_addr,
        store,
        metrics,
        shutdown,
        tasks,
        worker,
        intake,
        delivery,
    })
}

impl Running {
    /// Stop accepting, finish in-flight requests, drain the translation queue.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        // Dropping the last intake drops the last processor handle; the worker
        // drains what is queued and exits.
        drop(self.intake);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.worker).await;
        // Then the outbox: stop claiming, finish in flight, release the rest.
        self.delivery.stop().await;
    }

    /// The delivery workers' shared state (tests, bench).
    pub fn delivery(&self) -> &Arc<crate::delivery::DeliveryService> {
        &self.delivery.service
    }
}

/// Wait for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// What `check-config` prints: the effective settings and what goes where.
pub fn describe(cfg: &Config, engine: &mapping::Engine) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "configuration OK");
    match &cfg.server.tls {
        None => {
            let _ = writeln!(s, "http   {}", cfg.server.http_addr);
        }
        Some(t) => {
            let clients = match (&t.client_ca_file, t.require_client_cert) {
                (None, _) => "no client certificates".to_string(),
                (Some(ca), false) => format!("client certificates optional, CA {}", ca.display()),
                (Some(ca), true) => format!("client certificates required, CA {}", ca.display()),
            };
            let _ = writeln!(
                s,
                "https  {} (certificate {}; {clients})",
                cfg.server.http_addr,
                t.cert_file.display()
            );
        }
    }
    let _ = writeln!(
        s,
        "mllp   {} (max frame {} bytes, idle {} s, default charset {})",
        cfg.server.mllp_addr,
        cfg.mllp.max_frame_bytes,
        cfg.mllp.idle_timeout_secs,
        cfg.mllp.default_charset
    );
    let _ = writeln!(
        s,
        "store  {} (group commit up to {})",
        redact_url(&cfg.store.url),
        cfg.store.max_batch
    );
    let _ = writeln!(s, "base   {}", cfg.server.canonical_base);
    let _ = writeln!(s, "\norganizations:");
    for o in &cfg.organizations {
        let mut extra = Vec::new();
        if let Some(c) = &o.county {
            extra.push(format!("county {c}"));
        }
        if !o.plan_codes.is_empty() {
            extra.push(format!("plan codes {}", o.plan_codes.join(",")));
        }
        if !o.counties.is_empty() {
            extra.push(format!("serves {}", o.counties.join(",")));
        }
        if !o.mcps.is_empty() {
            extra.push(format!("contracted with {}", o.mcps.join(",")));
        }
        if !o.sending_facilities.is_empty() {
            extra.push(format!("MSH-4 {}", o.sending_facilities.join(",")));
        }
        if let Some(e) = &o.endpoint {
            extra.push(format!("endpoint {e}"));
        }
        let _ = writeln!(
            s,
            "  {:<16} {:<13} {}  [{}]",
            o.id,
            o.kind.as_str(),
            o.name,
            extra.join("; ")
        );
    }
    let _ = writeln!(s, "\nclients:");
    for c in &cfg.clients {
        let how = match (&c.token_sha256, &c.jwks_file, &c.cert_sha256) {
            (Some(_), _, Some(_)) => "bearer token or client certificate",
            (Some(_), _, None) => "bearer token",
            (None, Some(_), _) => "SMART backend services (JWKS)",
            (None, None, _) => "client certificate",
        };
        let _ = writeln!(s, "  {:<16} as {:<16} {}", c.id, c.organization, how);
    }
    let _ = writeln!(s, "\nrouting:");
    for o in cfg
        .organizations
        .iter()
        .filter(|o| o.kind == crate::config::OrgKind::AdtSource)
    {
        for f in &o.sending_facilities {
            let _ = writeln!(s, "  ADT from MSH-4 {f:<10} → journal as {} → FHIR via the ADT mappings (stored; pull and push arrive with routing)", o.id);
        }
    }
    let _ = writeln!(
        s,
        "  ADT from any other MSH-4 → AR (unknown sending facility)"
    );
    match crate::routing::Router::from_config(std::sync::Arc::new(cfg.clone())) {
        Ok(r) => {
            let _ = writeln!(
                s,
                "\nrouting rules ({}; every attempt re-decided by the consent policy):",
                cfg.delivery
                    .routing_rules_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "conformance/routing-rules.yaml, embedded".into())
            );
            let _ = write!(s, "{}", r.rules);
        }
        Err(e) => {
            let _ = writeln!(s, "\nrouting rules: {e}");
        }
    }
    let _ = writeln!(
        s,
        "delivery: max {} attempts, backoff {}-{} ms (full jitter), timeout {} ms, {} in flight per endpoint",
        cfg.delivery.max_attempts,
        cfg.delivery.initial_backoff_ms,
        cfg.delivery.max_backoff_ms,
        cfg.delivery.timeout_ms,
        cfg.delivery.concurrency
    );
    let _ = writeln!(
        s,
        "\nmappings ({}):",
        cfg.mappings
            .dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| crate::embedded::EMBEDDED_MAPPINGS.into())
    );
    for m in engine.mappings() {
        let _ = writeln!(
            s,
            "  {}@{} ({}) {}",
            m.id,
            m.version,
            m.source,
            m.file.display()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        use rustix::process::{getrlimit, Resource};
        let now = raise_fd_limit();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(now, limit.current);
        if limit.maximum.is_some() {
            assert_eq!(limit.current, limit.maximum);
        }
    }
}
