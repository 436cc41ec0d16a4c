//! The command line (DESIGN.md "CLI").

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
    /// Run the gateway with the shipped demo configuration (config/demo.toml).
    Demo {
        #[arg(long, default_value = "config/demo.toml")]
        config: PathBuf,
    },
    /// Translate one input offline to the FHIR R4 Bundle it yields (stdout).
    Translate {
        #[arg(long, value_enum)]
        kind: Kind,
        /// Many messages (MLLP-framed or separated by blank lines) → NDJSON.
        #[arg(long)]
        batch: Option<PathBuf>,
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
pub enum AuditCommand {
    /// Recompute the hash chain: "intact", or the first broken record (exit 1).
    Verify {
        #[arg(long, env = "CWSGW_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One HL7 v2 ER7 ADT message (segments separated by CR, LF or CRLF).
    Adt,
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
            serve_until_signal(cfg, None)
        }
        Command::Demo { config } => {
            let cfg = load_config(Some(&config))?;
            serve_until_signal(cfg, Some(&config))
        }
        Command::Translate {
            kind: Kind::Adt,
            batch,
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
                    crate::translate::run_batch(&off, &b)?;
                }
                (None, Some(i)) => crate::translate::run_single(&off, &i)?,
                (Some(_), Some(_)) => {
                    anyhow::bail!("give either --batch FILE or one input, not both")
                }
                (None, None) => anyhow::bail!("give an input file, - for stdin, or --batch FILE"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let mut cfg = Config::from_file(&file)?;
            cfg.apply_env(&env_map())?;
            let engine = crate::serve::load_engine(&cfg)?;
            print!("{}", describe(&cfg, &engine));
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            what: AuditCommand::Verify { config },
        } => {
            let cfg = load_config(config.as_deref())?;
            let store = crate::serve::open_store(&cfg)?;
            let rt = runtime()?;
            match rt.block_on(crate::audit::verify(store.as_ref()))? {
                None => {
                    println!("audit trail intact");
                    Ok(ExitCode::SUCCESS)
                }
                Some(seq) => {
                    println!("audit trail broken at record {seq}");
                    Ok(ExitCode::FAILURE)
                }
            }
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
            let store = crate::serve::open_store(&cfg)?;
            let rt = runtime()?;
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

fn serve_until_signal(cfg: Config, demo: Option<&Path>) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async move {
        let running = crate::serve::start(cfg.clone()).await?;
        // A machine-readable line for scripts and tests (no PHI, ports only).
        println!(
            "listening http={} mllp={}",
            running.http_addr, running.mllp_addr
        );
        if let Some(path) = demo {
            println!(
                "demo: configuration {} — HTTP and MLLP bind loopback only.",
                path.display()
            );
            println!("demo: try  curl -s http://{}/healthz", running.http_addr);
            println!(
                "demo: send ADT  curl -s -H 'Authorization: Bearer demo-stmary-token' -H 'Content-Type: x-application/hl7-v2+er7' --data-binary @tests/golden/adt/adt-to-fhir/001-a01-admit-v251.hl7 http://{}/hl7/v2",
                running.http_addr
            );
            println!(
                "demo: metrics  curl -s -H 'Authorization: Bearer demo-ops-token' http://{}/metrics",
                running.http_addr
            );
        }
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
    let _ = writeln!(s, "http   {}", cfg.server.http_addr);
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
        let how = if c.token_sha256.is_some() {
            "bearer token"
        } else {
            "SMART backend services (JWKS)"
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
    let _ = writeln!(s, "\nmappings:");
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
