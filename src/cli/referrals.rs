//! `cws-gateway referrals`: the closed-loop referral compliance figures of
//! an existing store, as a table (or JSON with `--json`) — the figures of
//! `GET /ops/referrals`, made by the same function
//! (`cws_gateway::referrals_view::view`). Opens the store without creating
//! it, like `deadlines`.

use std::path::Path;
use std::process::ExitCode;

use cws_gateway::referrals_view::{table, view, Filter};

/// The command's options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReferralsArgs {
    /// Only the referrals this plan (organization id) authorizes.
    #[arg(long)]
    pub mcp: Option<String>,
    /// Only the referrals of this county's children (a county organization's
    /// id or a county name).
    #[arg(long)]
    pub county: Option<String>,
    /// Referrals made from this date (YYYY-MM-DD, California) or time (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Referrals made up to this date (inclusive) or time.
    #[arg(long)]
    pub to: Option<String>,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: Option<&Path>, args: ReferralsArgs) -> anyhow::Result<ExitCode> {
    let cfg = crate::cli::load_existing(config)?;
    let filter = Filter {
        mcp: args.mcp,
        county: args.county,
        from: args.from,
        to: args.to,
    };
    let rt = crate::cli::runtime()?;
    let v = rt.block_on(async move {
        let store = cws_gateway::serve::open_existing_store(&cfg).await?;
        view(store.as_ref(), &cfg, filter, chrono::Utc::now())
            .await
            .map_err(anyhow::Error::from)
    })?;
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&v)?)
    } else {
        table(&v)
    };
    crate::cli::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}
