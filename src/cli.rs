//! The command line (the commands table in `README.md`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{redact_url, Config};

#[derive(Parser, Debug)]
#[command(
    name = "cws-gateway",
    version,
    about = "FHIR/HL7 gateway between county child welfare, hospitals, Medi-Cal plans and ECM providers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (HTTP + MLLP). Without a config: SQLite under ./gateway-data/,
    /// HTTP on 127.0.0.1:8080, MLLP on 127.0.0.1:2575.
    Serve {
        #[arg(long, env = "CWSGW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the gateway with the demo configuration (config/demo.toml, built
    /// into the binary; --config names another file).
    Demo {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Translate one input offline to the FHIR R4 Bundle it yields (stdout).
    Translate {
        #[arg(long, value_enum)]
        kind: Kind,
        /// Many messages (MLLP-framed or separated by blank lines) → NDJSON.
        #[arg(long)]
        batch: Option<PathBuf>,
        /// Threads translating a batch (0 = one per core, at most 8).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Configuration to take organizations, sensitivity and mappings from.
        #[arg(long, env = "CWSGW_CONFIG")]
        config: Option<PathBuf>,
        /// The received time stamped on Provenance (RFC 3339); default now.
        #[arg(long)]
        received_at: Option<String>,
        /// A file, or - for stdin (not with --batch).
        input: Option<String>,
    },
    /// Validate a configuration and print what it routes where.
    CheckConfig { file: PathBuf },
    /// Evaluate ECM Populations of Focus for one child's facts
    /// (`{ child, enrollment?, placement?, case?, history? }`).
    Eligibility {
        /// Evaluation date (default: today in California).
        #[arg(long)]
        as_of: Option<String>,
        /// A facts file, or - for stdin.
        input: String,
    },
    /// List open deadline clocks by due time.
    Deadlines {
        /// Only clocks past due.
        #[arg(long)]
        overdue: bool,
        #[arg(long, env = "CWSGW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The dead-letter list of deliveries that ran out of attempts (or were
    /// refused at once): list, retry or drop. Opens the store from the config.
    Dlq {
        #[arg(long, env = "CWSGW_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        what: AuditCommand,
    },
    /// What an organization may see of a youth now, why, and what consent would change it.
    Explain {
        /// The youth's Medi-Cal CIN.
        #[arg(long)]
        patient: String,
        /// The recipient organization id.
        #[arg(long)]
        recipient: String,
        /// pull (default), referral, care_coordination or notification.
        #[arg(long)]
        purpose: Option<String>,
        #[arg(long, env = "CWSGW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Measure the real paths (prints JSON lines).
    Bench {
        #[command(subcommand)]
        what: crate::bench::BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqAction {
    /// Dead (and, with --withheld, withheld) deliveries: a table, or JSON lines with --json.
    List {
        #[arg(long)]
        json: bool,
        /// Also list deliveries withheld by consent at send time.
        #[arg(long)]
        withheld: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put a dead or withheld delivery back in the queue (attempts reset).
    Retry { id: i64 },
    /// Drop a dead delivery for good.
    Drop { id: i64 },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the chain with the audit keys and compare it with the latest
    /// signed checkpoint: "intact", or the first broken record, a truncation
    /// or a rewrite (exit 1).
    Verify {
        #[arg(long, env = "CWSGW_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One HL7 v2 ER7 ADT message (segments separated by CR, LF or CRLF).
    Adt,
    /// One county case event (JSON, `POST /cws/events`).
    CaseEvent,
    /// One ECM referral form (JSON, `POST /ecm/referrals`).
    Referral,
}

fn env_map() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("CWSGW_"))
        .collect()
}

/// Load a config file (or the embedded default) and apply environment overrides.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut cfg = match path {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    cfg.apply_env(&env_map())?;
    Ok(cfg)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One clear line (a config error may list several problems, one per line).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = load_config(config.as_deref())?;
            serve_until_signal(cfg)
        }
        Command::Demo { config } => {
            let (cfg, origin) = match &config {
                Some(p) => (load_config(Some(p))?, p.display().to_string()),
                None => {
                    let mut cfg = Config::from_toml(crate::demo::DEMO_CONFIG, "config/demo.toml")?;
                    cfg.apply_env(&env_map())?;
                    (cfg, "config/demo.toml (built in)".to_string())
                }
            };
            let rt = runtime()?;
            rt.block_on(crate::demo::run(cfg, &origin))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Translate {
            kind: Kind::Adt,
            batch,
            threads,
            config,
            received_at,
            input,
        } => {
            let cfg = load_config(config.as_deref())?;
            let received_at = match received_at {
                Some(s) => chrono::DateTime::parse_from_rfc3339(&s)
                    .with_context(|| format!("--received-at {s}: not an RFC 3339 time"))?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let off = crate::translate::Offline::new(cfg, received_at)?;
            match (batch, input) {
                (Some(b), None) => {
                    let counts = crate::translate::run_batch(&off, &b, threads)?;
                    if counts.failed > 0 {
                        eprintln!(
                            "error: {} of {} messages failed (an OperationOutcome line each)",
                            counts.failed,
                            counts.ok + counts.failed
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                    if counts.ok == 0 {
                        anyhow::bail!("{}: no messages found", b.display());
                    }
                }
                (None, Some(i)) => crate::translate::run_single(&off, &i)?,
                (Some(_), Some(_)) => {
                    anyhow::bail!("give either --batch FILE or one input, not both")
                }
                (None, None) => anyhow::bail!("give an input file, - for stdin, or --batch FILE"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Translate {
            kind: Kind::CaseEvent,
            config,
            input,
            ..
        } => {
            let cfg = std::sync::Arc::new(load_config(config.as_deref())?);
            let engine = crate::serve::load_engine(&cfg)?;
            let county = crate::county::County::new(cfg, engine)?;
            let bytes = read_input(input.as_deref())?;
            let doc: serde_json::Value =
                serde_json::from_slice(&bytes).context("the input is not JSON")?;
            let bundle = crate::county::events::translate_offline(&county, &doc).map_err(|e| {
                anyhow::anyhow!("{e}")
            })?;
            println!("{}", serde_json::to_string_pretty(&bundle)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Translate {
            kind: Kind::Referral,
            ..
        } => anyhow::bail!(
            "referrals cannot be translated offline: they depend on the member's stored enrollment and consents; POST the form to /ecm/referrals"
        ),
        Command::Eligibility { as_of, input } => {
            let bytes = read_input(Some(&input))?;
            let out = crate::county::eligibility::run_cli(&bytes, as_of.as_deref())?;
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Deadlines { overdue, config } => {
            let cfg = load_config(config.as_deref())?;
            let rt = runtime()?;
            let items = rt.block_on(async move {
                let store = crate::serve::open_store(&cfg).await?;
                let now = chrono::Utc::now();
                let items = crate::county::deadlines::list(store.as_ref(), now, true, overdue).await?;
                // The clocks name patients: an operator read, audited first.
                let mut named = std::collections::BTreeSet::new();
                for c in &items {
                    named.extend(c.patient.iter().map(|p| format!("Patient/{p}")));
                }
                let named: Vec<String> = named.into_iter().collect();
                for chunk in named.chunks(crate::fhir::MAX_ENTITIES_PER_AUDIT) {
                    let detail = format!("deadlines (cli): {} clocks", items.len());
                    crate::explain::audit_cli_read(store.as_ref(), None, chunk.to_vec(), detail, now).await?;
                }
                Ok::<_, anyhow::Error>(items)
            })?;
            for c in &items {
                println!("{}", serde_json::to_string(c)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let mut cfg = Config::from_file(&file)?;
            cfg.apply_env(&env_map())?;
            let engine = crate::serve::load_engine(&cfg)?;
            crate::serve::load_router(&std::sync::Arc::new(cfg.clone()))?;
            crate::county::deadlines::calendar_from_config(&cfg)?;
            if let Some(tls) = &cfg.server.tls {
                crate::tls::load(tls)?;
            }
            print!("{}", describe(&cfg, &engine));
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { config, action } => {
            let cfg = load_config(config.as_deref())?;
            let rt = runtime()?;
            let out = rt.block_on(async move {
                let store = crate::serve::open_store(&cfg).await?;
                crate::delivery::dlq(store.as_ref(), action).await
            })?;
            print!("{}", out.text);
            Ok(if out.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit {
            what: AuditCommand::Verify { config },
        } => {
            let cfg = load_config(config.as_deref())?;
            let rt = runtime()?;
            let store = rt.block_on(crate::serve::open_store(&cfg))?;
            let (intact, line) =
                rt.block_on(crate::audit_trail::verify(&cfg, store.as_ref()))?;
            println!("{line}");
            Ok(if intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Explain {
            patient,
            recipient,
            purpose,
            config,
        } => {
            let cfg = load_config(config.as_deref())?;
            let purpose = crate::explain::parse_purpose(purpose.as_deref()).ok_or_else(|| {
                anyhow::anyhow!(
                    "--purpose must be pull, referral, care_coordination or notification"
                )
            })?;
            let rt = runtime()?;
            let store = rt.block_on(crate::serve::open_store(&cfg))?;
            let out = rt.block_on(crate::explain::explain_cin(
                &cfg,
                store.as_ref(),
                &patient,
                &recipient,
                purpose,
                chrono::Utc::now(),
            ))?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { what } => {
            let rt = runtime()?;
            rt.block_on(crate::bench::run(what))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Read a file, or stdin for `-` (bounded to 16 MiB).
fn read_input(input: Option<&str>) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    const MAX: u64 = 16 * 1024 * 1024;
    let mut buf = Vec::new();
    match input {
        None => anyhow::bail!("give an input file or - for stdin"),
        Some("-") => {
            std::io::stdin().take(MAX + 1).read_to_end(&mut buf)?;
        }
        Some(p) => {
            std::fs::File::open(p)
                .with_context(|| format!("cannot read {p}"))?
                .take(MAX + 1)
                .read_to_end(&mut buf)?;
        }
    }
    if buf.len() as u64 > MAX {
        anyhow::bail!("the input is larger than 16 MiB");
    }
    Ok(buf)
}

fn serve_until_signal(cfg: Config) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async move {
        let running = crate::serve::start(cfg.clone()).await?;
        // A machine-readable line for scripts and tests (no PHI, ports only).
        println!(
            "listening http={} mllp={}",
            running.http_addr, running.mllp_addr
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        crate::serve::wait_for_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
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
            .unwrap_or_else(|| crate::serve::EMBEDDED_MAPPINGS.into())
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
