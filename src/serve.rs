//! Wiring: open the store, load the mappings, bind the listeners, start the
//! translation worker, and stop it all in order.
//!
//! Start-up fails with one clear line for a bad mapping directory, an
//! unreachable store, or a port in use. Shutdown: stop accepting, let
//! connections finish the frame they are on, drain the translation queue.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use store::{SqliteOptions, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::config::{redact_url, Config};
use crate::intake::AdtIntake;
use crate::mllp::MllpServer;
use crate::processor::{self, Translator};
use crate::telemetry::Metrics;

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
    let url = cfg.store.url.trim();
    let opened: Result<Arc<dyn Store>, store::StoreError> = if store_postgres::is_postgres_url(url)
    {
        let opts = store_postgres::PgOptions {
            max_batch: cfg.store.max_batch,
            pool_size: cfg.store.pool_size,
            audit_keys: crate::audit_trail::keys(cfg)?,
            ..store_postgres::PgOptions::default()
        };
        store_postgres::PgStore::open(url, opts)
            .await
            .map(|s| Arc::new(s) as Arc<dyn Store>)
    } else {
        let opts = SqliteOptions {
            max_batch: cfg.store.max_batch,
            audit_keys: crate::audit_trail::keys(cfg)?,
            ..SqliteOptions::default()
        };
        store::open_url(url, opts)
    };
    opened.map_err(|e| anyhow!("store {}: {e}", redact_url(&cfg.store.url)))
}

/// The shipped `mappings/` tree (mapping YAML, concept maps, aid codes,
/// holidays) as built into the binary: the default when `[mappings] dir` is
/// not set. The directory in the checkout stays the source of truth.
pub static MAPPINGS: include_dir::Dir<'static> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/mappings");

/// How `check-config` and errors name the built-in mappings.
pub const EMBEDDED_MAPPINGS: &str = "mappings (built in)";

fn embedded_files<'a>(dir: &'a include_dir::Dir<'a>, out: &mut Vec<(&'a Path, &'a str)>) {
    for e in dir.entries() {
        match e {
            include_dir::DirEntry::Dir(d) => embedded_files(d, out),
            include_dir::DirEntry::File(f) => {
                if let Some(text) = f.contents_utf8() {
                    out.push((f.path(), text));
                }
            }
        }
    }
}

/// One line for a mapping load error: the file (and where in it) and why.
fn mapping_error(e: &mapping::MappingError) -> String {
    if e.path.is_empty() {
        format!("{}: {}", e.file.display(), e.reason)
    } else {
        format!("{}: {}: {}", e.file.display(), e.path, e.reason)
    }
}

/// The mapping engine: from `mappings.dir` when configured, else the
/// built-in tree. A failure is one line naming `mappings.dir` and the path.
pub fn load_engine(cfg: &Config) -> anyhow::Result<Arc<mapping::Engine>> {
    let engine = match &cfg.mappings.dir {
        Some(dir) => {
            if let Err(e) = std::fs::read_dir(dir) {
                bail!(
                    "mappings.dir {}: cannot read the directory: {e}",
                    dir.display()
                );
            }
            mapping::Engine::load(dir)
                .map_err(|e| anyhow!("mappings.dir {}: {}", dir.display(), mapping_error(&e)))?
        }
        None => {
            let mut files = Vec::new();
            embedded_files(&MAPPINGS, &mut files);
            mapping::Engine::load_files(Path::new(EMBEDDED_MAPPINGS), files)
                .map_err(|e| anyhow!("built-in mappings: {}", mapping_error(&e)))?
        }
    };
    Ok(Arc::new(engine))
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

/// Start everything; returns once both listeners are bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    // The HTTP client (reqwest, `rustls-no-provider`) needs a process-wide
    // rustls crypto provider; an already installed one is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = Arc::new(cfg);
    let engine = load_engine(&cfg)?;
    let audit_keys = crate::audit_trail::keys(&cfg)?;
    crate::audit_trail::require_key(&cfg, &audit_keys)?;
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
    let county = Arc::new(crate::county::County::new(cfg.clone(), engine.clone())?);
    let _ = county.routing.set(routing.clone());
    if let Err(e) = crate::county::recover(&county, store.as_ref()).await {
        tracing::error!(error = %e, "recovering county inputs failed; they stay pending");
    }
    let translator =
        Arc::new(Translator::new(cfg.clone(), engine).with_routing(router, delivery.waker()));
    let (handle, worker) = processor::spawn(translator, store.clone(), metrics.clone());
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
        max_connections: cfg.mllp.max_connections,
    });
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(mllp_server.run(mllp, shutdown_rx.clone())));
    tasks.extend(crate::audit_trail::spawn_checkpoints(
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
    let state = AppState {
        cfg: cfg.clone(),
        store: store.clone(),
        intake: intake.clone(),
        metrics: metrics.clone(),
        auth: Arc::new(auth),
        capability: Arc::new(capability),
        county,
        routing,
        disclosure: crate::disclosure::Disclosure::new(cfg.clone()),
        base_url: Arc::new(base_url),
    };
    let app = api::router(state);
    let mut http_shutdown = shutdown_rx.clone();
    let stopped = async move {
        let _ = http_shutdown.wait_for(|v| *v).await;
    };
    let scheme = match tls {
        None => {
            tasks.push(tokio::spawn(async move {
                let server = axum::serve(http, app).with_graceful_shutdown(stopped);
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }));
            "http"
        }
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(http, tls, metrics.clone())
                .context("cannot start the TLS listener")?;
            let app = app.into_make_service_with_connect_info::<crate::tls::TlsPeer>();
            tasks.push(tokio::spawn(async move {
                let server = axum::serve(listener, app).with_graceful_shutdown(stopped);
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            }));
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
