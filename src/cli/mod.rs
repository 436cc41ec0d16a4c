//! The command line (the commands table in `README.md`).

pub mod bench;
pub mod bench_referrals;
pub mod bench_rtf;
pub mod demo;
pub mod referral_batch;
pub mod referrals;
pub mod rtf;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use cws_gateway::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "cws-gateway",
    version,
    about = "FHIR/HL7 gateway between county child welfare, hospitals, Medi-Cal plans and ECM providers"
)]
pub struct Cli {
    /// The configuration file (also `CWSGW_CONFIG`); accepted before or
    /// after the command's name (`dlq --config F list`, `dlq list --config F`).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (HTTP + MLLP). Without a config: SQLite under ./gateway-data/,
    /// HTTP on 127.0.0.1:8080, MLLP on 127.0.0.1:2575.
    Serve,
    /// Run the gateway with the demo configuration (config/demo.toml, built
    /// into the binary; --config names another file).
    Demo,
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
        // --config: the configuration to take organizations, sensitivity
        // and mappings from.
        /// The received time stamped on Provenance (RFC 3339); default now.
        #[arg(long)]
        received_at: Option<String>,
        /// A file, or - for stdin (not with --batch).
        input: Option<String>,
    },
    /// Validate a configuration and print what it routes where (FILE or --config).
    CheckConfig { file: Option<PathBuf> },
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
    },
    /// Closed-loop referral compliance: open loops by status, overdue
    /// clocks, days to decision and assignment, notices on time.
    Referrals(crate::cli::referrals::ReferralsArgs),
    /// Files for partners from the store (never creates one): `report rtf`.
    Report {
        #[command(subcommand)]
        what: crate::cli::rtf::ReportCommand,
    },
    /// The dead-letter list of deliveries that ran out of attempts (or were
    /// refused at once): list, retry or drop. Opens the store from the config.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
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
    },
    /// Post a file of referrals (NDJSON or CSV) to a running gateway's
    /// POST /ecm/referrals/$batch; one result per line, exit 1 if any failed.
    ReferralBatch(crate::cli::referral_batch::ReferralBatchArgs),
    /// Measure the real paths (prints JSON lines).
    Bench {
        #[command(subcommand)]
        what: crate::cli::bench::BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
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

impl From<DlqCommand> for cws_gateway::delivery::DlqAction {
    fn from(c: DlqCommand) -> Self {
        use cws_gateway::delivery::DlqAction;
        match c {
            DlqCommand::List {
                json,
                withheld,
                limit,
            } => DlqAction::List {
                json,
                withheld,
                limit,
            },
            DlqCommand::Retry { id } => DlqAction::Retry { id },
            DlqCommand::Drop { id } => DlqAction::Drop { id },
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the chain with the audit keys and compare it with the latest
    /// signed checkpoint: "intact", or the first broken record, a truncation
    /// or a rewrite (exit 1).
    Verify,
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
    cws_gateway::telemetry::set_log_format(cfg.log.format);
    Ok(cfg)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    cws_gateway::telemetry::init_logging();
    match run(cli) {
        Ok(code) => code,
        // The reader of stdout went away (`| head`): nothing more to say.
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line (a config error may list several problems, one per line).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Stdout was closed by its reader (`cws-gateway explain … | head`): the
/// command ends quietly, exit 0, like other Unix tools.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Write `text` to stdout and flush it; a closed pipe is [`StdoutClosed`].
/// (`print!` would panic on it.)
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| quiet_if_closed(anyhow::Error::new(e).context("cannot write to stdout")))
}

/// The error of a command that writes to stdout: a broken pipe anywhere in
/// its chain becomes [`StdoutClosed`]; any other error is kept.
pub(crate) fn quiet_if_closed(e: anyhow::Error) -> anyhow::Error {
    let broken = |k: std::io::ErrorKind| k == std::io::ErrorKind::BrokenPipe;
    let closed = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| broken(io.kind()))
            // serde_json writing straight to stdout wraps the io error.
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                .is_some_and(broken)
    });
    if closed {
        StdoutClosed.into()
    } else {
        e
    }
}

/// The configuration file named by `--config`, else `CWSGW_CONFIG`.
fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("CWSGW_CONFIG").map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
}

/// The configuration of a command that only reads an existing store
/// (`deadlines`, `dlq`, `audit verify`, `explain`). A named config must
/// exist, and so must a SQLite database: these commands never create one
/// (opening a missing file would create an empty store and report success
/// on nothing). One line names what is missing.
pub fn load_existing(path: Option<&Path>) -> anyhow::Result<Config> {
    if let Some(p) = path {
        if !p.is_file() {
            anyhow::bail!(
                "no config at {} (--config or CWSGW_CONFIG names a file that does not exist)",
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.to_path_buf())
                    .display()
            );
        }
    }
    let cfg = load_config(path)?;
    if let Some(db) = sqlite_file(&cfg.store.url) {
        if !db.is_file() {
            let db = std::path::absolute(&db).unwrap_or(db);
            let from = if std::env::var_os(cws_gateway::config::ENV_DATABASE_URL).is_some() {
                cws_gateway::config::ENV_DATABASE_URL.to_string()
            } else if let Some(p) = path {
                format!("[store] url of {}", p.display())
            } else {
                "the default; set --config, CWSGW_CONFIG or CWSGW_DATABASE_URL".into()
            };
            anyhow::bail!("no store at {} ({from})", db.display());
        }
    }
    Ok(cfg)
}

/// The database file of a `sqlite:` store URL (`None` for PostgreSQL or a
/// URL the store will refuse anyway).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let url = url.trim();
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

/// The secrets a configuration names by environment variable
/// (`endpoint_auth.bearer_token_env`, `endpoint_auth.client_secret_env`,
/// `auth.token_key_env`) that `env` does not hold (unset or empty): one line
/// each naming the key and the variable, never a value. `serve` and
/// `check-config` refuse such a configuration rather than fail at the first
/// delivery or token.
pub fn missing_secrets(cfg: &Config, env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut errs = Vec::new();
    let mut need = |key: String, var: &str| match env(var) {
        Some(v) if !v.is_empty() => Some(v),
        _ => {
            errs.push(format!(
                "{key}: environment variable {var} is not set (or empty)"
            ));
            None
        }
    };
    for (i, o) in cfg.organizations.iter().enumerate() {
        let Some(auth) = &o.endpoint_auth else {
            continue;
        };
        let at = format!("organizations[{i}] ({}).endpoint_auth", o.id);
        if let Some(var) = &auth.bearer_token_env {
            need(format!("{at}.bearer_token_env"), var);
        }
        if let Some(var) = &auth.client_secret_env {
            need(format!("{at}.client_secret_env"), var);
        }
    }
    let mut short = None;
    if let Some(var) = &cfg.auth.token_key_env {
        if let Some(v) = need("auth.token_key_env".into(), var) {
            if v.len() < 32 {
                short = Some(format!(
                    "auth.token_key_env: environment variable {var} must hold at least 32 bytes"
                ));
            }
        }
    }
    errs.extend(short);
    errs
}

/// `check-config` and `serve`: every secret the configuration names by
/// environment variable is set (one line per missing one, naming its key).
fn check_secrets(cfg: &Config) -> anyhow::Result<()> {
    let missing = missing_secrets(cfg, |var| std::env::var(var).ok());
    if !missing.is_empty() {
        anyhow::bail!("{}", missing.join("\n"));
    }
    Ok(())
}

fn run_demo(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (cfg, origin) = match &config {
        Some(p) => (load_config(Some(p))?, p.display().to_string()),
        None => {
            let mut cfg = Config::from_toml(crate::cli::demo::DEMO_CONFIG, "config/demo.toml")?;
            cfg.apply_env(&env_map())?;
            (cfg, "config/demo.toml (built in)".to_string())
        }
    };
    let rt = runtime()?;
    rt.block_on(crate::cli::demo::run(cfg, &origin))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli { config, command } = cli;
    // The demo runs its own configuration unless --config names another
    // (CWSGW_CONFIG names the real one).
    let demo_config = config.clone();
    let config = config_path(config);
    match command {
        Command::Serve => {
            let cfg = load_config(config.as_deref())?;
            check_secrets(&cfg)?;
            serve_until_signal(cfg)
        }
        Command::Demo => run_demo(demo_config),
        Command::Translate {
            kind: Kind::Adt,
            batch,
            threads,
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
            let off = cws_gateway::translate::Offline::new(cfg, received_at)?;
            match (batch, input) {
                (Some(b), None) => {
                    let counts =
                        cws_gateway::translate::run_batch(&off, &b, threads).map_err(quiet_if_closed)?;
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
                (None, Some(i)) => {
                    cws_gateway::translate::run_single(&off, &i).map_err(quiet_if_closed)?
                }
                (Some(_), Some(_)) => {
                    anyhow::bail!("give either --batch FILE or one input, not both")
                }
                (None, None) => anyhow::bail!("give an input file, - for stdin, or --batch FILE"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Translate {
            kind: Kind::CaseEvent,
            input,
            ..
        } => {
            let cfg = std::sync::Arc::new(load_config(config.as_deref())?);
            let engine = cws_gateway::embedded::load_engine(&cfg)?;
            let county = cws_gateway::sources::Ingress::new(cfg, engine)?;
            let bytes = read_input(input.as_deref())?;
            let doc: serde_json::Value =
                serde_json::from_slice(&bytes).context("the input is not JSON")?;
            let bundle = cws_gateway::sources::case_event::translate_offline(&county, &doc).map_err(|e| {
                anyhow::anyhow!("{e}")
            })?;
            emit(&format!("{}\n", serde_json::to_string_pretty(&bundle)?))?;
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
            let out = cws_gateway::records::eligibility::run_cli(&bytes, as_of.as_deref())?;
            emit(&format!("{out}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deadlines { overdue } => {
            let cfg = load_existing(config.as_deref())?;
            let rt = runtime()?;
            let items = rt.block_on(async move {
                let store = cws_gateway::serve::open_existing_store(&cfg).await?;
                let now = chrono::Utc::now();
                let items = cws_gateway::clocks::list(store.as_ref(), now, true, overdue).await?;
                // The clocks name patients: an operator read, audited first.
                let mut named = std::collections::BTreeSet::new();
                for c in &items {
                    named.extend(c.patient.iter().map(|p| format!("Patient/{p}")));
                }
                let named: Vec<String> = named.into_iter().collect();
                for chunk in named.chunks(cws_gateway::gate::MAX_ENTITIES_PER_AUDIT) {
                    let detail = format!("deadlines (cli): {} clocks", items.len());
                    cws_gateway::explain::audit_cli_read(store.as_ref(), None, chunk.to_vec(), detail, now).await?;
                }
                Ok::<_, anyhow::Error>(items)
            })?;
            let mut text = String::new();
            for c in &items {
                text.push_str(&serde_json::to_string(c)?);
                text.push('\n');
            }
            emit(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Referrals(args) => crate::cli::referrals::run(config.as_deref(), args),
        Command::Report { what } => crate::cli::rtf::run(config.as_deref(), what),
        Command::CheckConfig { file } => {
            let Some(file) = file.or(config) else {
                anyhow::bail!("give the configuration file to check (check-config FILE)");
            };
            let mut cfg = Config::from_file(&file)?;
            cfg.apply_env(&env_map())?;
            check_secrets(&cfg)?;
            let engine = cws_gateway::embedded::load_engine(&cfg)?;
            cws_gateway::serve::load_router(&std::sync::Arc::new(cfg.clone()))?;
            cws_gateway::clocks::calendar_from_config(&cfg)?;
            if let Some(tls) = &cfg.server.tls {
                cws_gateway::tls::load(tls)?;
            }
            emit(&cws_gateway::serve::describe(&cfg, &engine))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { action } => {
            let cfg = load_existing(config.as_deref())?;
            let rt = runtime()?;
            let out = rt.block_on(async move {
                let store = cws_gateway::serve::open_existing_store(&cfg).await?;
                cws_gateway::delivery::dlq(store.as_ref(), action.into()).await
            })?;
            emit(&out.text)?;
            Ok(if out.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit {
            what: AuditCommand::Verify,
        } => {
            let cfg = load_existing(config.as_deref())?;
            let rt = runtime()?;
            let store = rt.block_on(cws_gateway::serve::open_existing_store(&cfg))?;
            let (intact, line) =
                rt.block_on(cws_gateway::audit::trail::verify(&cfg, store.as_ref()))?;
            emit(&format!("{line}\n"))?;
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
        } => {
            let cfg = load_existing(config.as_deref())?;
            let purpose = cws_gateway::explain::parse_purpose(purpose.as_deref()).ok_or_else(|| {
                anyhow::anyhow!(
                    "--purpose must be pull, referral, care_coordination or notification"
                )
            })?;
            let rt = runtime()?;
            let store = rt.block_on(cws_gateway::serve::open_existing_store(&cfg))?;
            let out = rt.block_on(cws_gateway::explain::explain_cin(
                &cfg,
                store.as_ref(),
                &patient,
                &recipient,
                purpose,
                chrono::Utc::now(),
            ))?;
            emit(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ReferralBatch(args) => {
            let rt = runtime()?;
            rt.block_on(crate::cli::referral_batch::run(args))
        }
        Command::Bench { what } => {
            let rt = runtime()?;
            rt.block_on(crate::cli::bench::run(what))?;
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
        let running = cws_gateway::serve::start(cfg.clone()).await?;
        // A machine-readable line for scripts and tests (no PHI, ports only);
        // a closed stdout does not stop the gateway.
        let _ = emit(&format!(
            "listening http={} mllp={}\n",
            running.http_addr, running.mllp_addr
        ));
        cws_gateway::serve::wait_for_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_secrets_are_named_by_key_and_variable() {
        let text = r#"
[auth]
token_key_env = "GW_TOKEN_KEY"

[[organizations]]
id = "mcp-a"
kind = "mcp"
name = "Plan A"
plan_codes = ["A"]
counties = ["Fresno"]
endpoint = "https://plan-a.example/fhir"
endpoint_auth = { bearer_token_env = "PLAN_A_TOKEN" }

[[organizations]]
id = "ecm-x"
kind = "ecm_provider"
name = "X"
endpoint = "https://x.example/fhir"
endpoint_auth = { token_url = "https://x.example/token", client_id = "gw", client_secret_env = "X_SECRET" }
"#;
        let cfg = Config::from_toml(text, "t.toml").unwrap();
        let env = |set: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                set.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let err = missing_secrets(&cfg, env(&[("PLAN_A_TOKEN", "")])).join("\n");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(lines[0].starts_with("organizations[0] (mcp-a).endpoint_auth.bearer_token_env:"));
        assert!(lines[0].contains("PLAN_A_TOKEN"));
        assert!(lines[1].starts_with("organizations[1] (ecm-x).endpoint_auth.client_secret_env:"));
        assert!(lines[1].contains("X_SECRET"));
        assert!(lines[2].starts_with("auth.token_key_env:") && lines[2].contains("GW_TOKEN_KEY"));
        let err = missing_secrets(
            &cfg,
            env(&[
                ("PLAN_A_TOKEN", "t"),
                ("X_SECRET", "s"),
                ("GW_TOKEN_KEY", "short"),
            ]),
        )
        .join("\n");
        assert_eq!(
            err,
            "auth.token_key_env: environment variable GW_TOKEN_KEY must hold at least 32 bytes"
        );
        assert!(!err.contains("short"), "no value is echoed");
        let all = env(&[
            ("PLAN_A_TOKEN", "t"),
            ("X_SECRET", "s"),
            ("GW_TOKEN_KEY", "0123456789abcdef0123456789abcdef"),
        ]);
        assert!(missing_secrets(&cfg, all).is_empty());
        // A configuration naming no secret needs none.
        let none = Config::from_toml("", "t.toml").unwrap();
        assert!(missing_secrets(&none, |_| None).is_empty());
    }
}
