//! `cws-gateway report rtf --mcp ID --month YYYY-MM [--out FILE]`: a plan's
//! monthly Return Transmission File (CSV) from an existing store, audited
//! as an operator read (`sources::rtf::export_audited`, the path of
//! `GET /ops/rtf`). The file holds PHI: it goes to `--out` (created 0600)
//! or stdout, and only counts go to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// A plan's monthly Return Transmission File (CSV, the plan's layout
    /// from mappings/rtf/): every ECM referral it authorizes that is open
    /// or whose status changed in the month.
    Rtf {
        /// The plan (an `mcp` organization id).
        #[arg(long)]
        mcp: String,
        /// The month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// Write the file here (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The operator a command-line read is audited as.
pub fn cli_caller() -> cws_gateway::auth::Caller {
    cws_gateway::auth::Caller {
        client_id: "cli".into(),
        org_id: "cli".into(),
        kind: cws_gateway::config::OrgKind::Operator,
        scopes: None,
    }
}

pub fn run(config: Option<&Path>, what: ReportCommand) -> anyhow::Result<ExitCode> {
    let ReportCommand::Rtf { mcp, month, out } = what;
    let cfg = crate::cli::load_existing(config)?;
    let rt = crate::cli::runtime()?;
    let (buf, done) = rt.block_on(async {
        let store = cws_gateway::serve::open_existing_store(&cfg).await?;
        cws_gateway::sources::rtf::export_audited(&cfg, store.as_ref(), &cli_caller(), &mcp, &month)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    match out {
        Some(path) => write_private(&path, &buf)?,
        None => {
            use std::io::Write as _;
            let mut o = std::io::stdout().lock();
            o.write_all(&buf)
                .and_then(|()| o.flush())
                .map_err(|e| crate::cli::quiet_if_closed(anyhow::Error::new(e)))?;
        }
    }
    eprintln!(
        "rtf {mcp} {month}: {} rows ({} referrals read)",
        done.rows, done.scanned
    );
    Ok(ExitCode::SUCCESS)
}

/// Write a file only its owner may read (it holds PHI).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
