//! `cws-gateway demo`: the whole gateway on the embedded default with
//! `config/demo.toml`, in-process mock MCP and ECM endpoints that log what
//! they receive, a replay of synthetic sample traffic (the scenario in
//! `tests/scenarios/demo.yaml`, embedded in the binary), and a readable
//! summary — what was delivered to whom, what was withheld from whom and why,
//! and the open deadlines. Then it keeps serving until Ctrl-C.
//!
//! Everything binds loopback; the demo database (`gateway-data/demo.db`) is
//! started afresh each run so the summary shows this run's traffic.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;
use sha2::{Digest, Sha256};

use cws_gateway::config::Config;
use cwsgw_scenario::run as scenario;
use cwsgw_scenario::MockEndpoint;
use cwsgw_scenario::{Scenario, Target};

/// The demo configuration, built in (`demo --config FILE` overrides it).
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// The demo's sample traffic.
pub const DEMO_SCENARIO: &str = include_str!("../../tests/scenarios/demo.yaml");

/// The demo tokens (their SHA-256 is in `config/demo.toml`); printed for curl.
pub const DEMO_TOKENS: &[(&str, &str)] = &[
    ("county-fresno", "demo-county-token"),
    ("mcp-a", "demo-plan-a-token"),
    ("mcp-b", "demo-plan-b-token"),
    ("ecm-compass", "demo-compass-token"),
    ("ecm-bridges", "demo-bridges-token"),
    ("st-mary", "demo-stmary-token"),
    ("ops", "demo-ops-token"),
];

/// Map each organization to its demo token, checking the config agrees.
pub fn demo_tokens(cfg: &Config) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (org, token) in DEMO_TOKENS {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        let known = cfg
            .clients
            .iter()
            .any(|c| c.organization == *org && c.token_sha256.as_deref() == Some(hash.as_str()));
        if known {
            out.insert((*org).to_string(), (*token).to_string());
        }
    }
    Ok(out)
}

fn loopback_port(endpoint: &str) -> Option<String> {
    let rest = endpoint.strip_prefix("http://")?;
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    (host == "127.0.0.1" || host == "localhost").then(|| format!("127.0.0.1:{port}"))
}

/// Start one mock per configured loopback endpoint.
pub async fn start_mocks(cfg: &Config) -> anyhow::Result<HashMap<String, MockEndpoint>> {
    let mut mocks = HashMap::new();
    for o in &cfg.organizations {
        let Some(ep) = &o.endpoint else { continue };
        let Some(addr) = loopback_port(ep) else {
            bail!("demo: endpoint of {} is not a loopback http URL; the demo only talks to its own mocks", o.id);
        };
        let mock = MockEndpoint::start_on(&addr).await.with_context(|| {
            format!(
                "demo: cannot start the mock endpoint for {} on {addr}",
                o.id
            )
        })?;
        mocks.insert(o.id.clone(), mock);
    }
    Ok(mocks)
}

fn remove_demo_database(cfg: &Config) {
    if let Some(path) = cfg.store.url.strip_prefix("sqlite://") {
        let p = Path::new(path);
        if p.file_name().and_then(|n| n.to_str()) == Some("demo.db") {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
    }
}

/// Run the demo until Ctrl-C.
pub async fn run(cfg: Config, config_origin: &str) -> anyhow::Result<()> {
    remove_demo_database(&cfg);
    let tokens = demo_tokens(&cfg)?;
    let mocks = start_mocks(&cfg).await?;
    let running = cws_gateway::serve::start(cfg.clone()).await?;
    crate::cli::emit(&format!(
        "listening http={} mllp={}\n",
        running.http_addr, running.mllp_addr
    ))?;
    crate::cli::emit(&format!(
        "demo: configuration {} — HTTP, MLLP and the mock endpoints bind loopback (127.0.0.1) only.\n",
        config_origin
    ))?;
    let scenario = Scenario::from_yaml(DEMO_SCENARIO, "tests/scenarios/demo.yaml")?;
    let target = Target {
        http: running.http_addr,
        mllp: running.mllp_addr,
        tokens: tokens.clone(),
        mocks: mocks.clone(),
    };
    crate::cli::emit(&format!(
        "demo: replaying sample traffic: {}\n",
        scenario.name
    ))?;
    let mut log = scenario::RunLog::default();
    let outcome = scenario::run(&scenario, &target, &mut log).await;
    for l in &log.lines {
        crate::cli::emit(&format!("  {l}\n"))?;
    }
    if let Err(e) = &outcome {
        crate::cli::emit(&format!("demo: the replay stopped: {e:#}\n"))?;
    }
    // Let the outbox settle (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pending = running
            .store
            .outbox_list(Some(store::DeliveryState::Pending), None, 1)
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    print!("{}", summary(running.store.as_ref(), &mocks, &cfg).await);
    crate::cli::emit(
        "\nTry it (demo tokens; every token is listed in config/demo.toml as its SHA-256):\n",
    )?;
    for (org, token) in DEMO_TOKENS {
        crate::cli::emit(&format!("  {org:<14} {token}\n"))?;
    }
    let base = format!("http://{}", running.http_addr);
    crate::cli::emit(&format!("  curl -s {base}/healthz\n"))?;
    crate::cli::emit(&format!("  curl -s {base}/fhir/metadata\n"))?;
    crate::cli::emit(&format!(
        "  curl -s -H 'Authorization: Bearer demo-plan-a-token' '{base}/fhir/Task?_count=5'\n"
    ))?;
    crate::cli::emit(&format!("  curl -s -H 'Authorization: Bearer demo-county-token' '{base}/fhir/Encounter'   # withheld without a release\n"))?;
    crate::cli::emit(&format!(
        "  curl -s -H 'Authorization: Bearer demo-ops-token' {base}/metrics\n"
    ))?;
    crate::cli::emit("Serving until Ctrl-C.\n")?;
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    cws_gateway::serve::wait_for_signal().await;
    running.stop().await;
    Ok(())
}

fn resource_types(body: &Value) -> Vec<String> {
    let mut out: Vec<String> = body
        .get("entry")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.pointer("/resource/resourceType").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    out.dedup();
    out
}

/// What was delivered to whom (as the mocks saw it), what was withheld and
/// why (the audit trail's refusals), and the open deadlines.
pub async fn summary(
    store: &dyn store::Store,
    mocks: &HashMap<String, MockEndpoint>,
    cfg: &Config,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n== Delivered (what each mock endpoint received)");
    let mut orgs: Vec<&String> = mocks.keys().collect();
    orgs.sort();
    for org in orgs {
        let Some(m) = mocks.get(org) else { continue };
        let got = m.accepted();
        let name = cfg
            .organization(org)
            .map(|o| o.name.as_str())
            .unwrap_or(org);
        if got.is_empty() {
            let _ = writeln!(s, "  {org} ({name}): nothing");
            continue;
        }
        let _ = writeln!(
            s,
            "  {org} ({name}): {} deliver{}",
            got.len(),
            if got.len() == 1 { "y" } else { "ies" }
        );
        for r in got.iter().take(12) {
            let kind = if r.path.ends_with("$process-message") {
                "notification"
            } else {
                "transaction"
            };
            let _ = writeln!(s, "    {kind:<12} {}", resource_types(&r.body).join(", "));
        }
    }
    let _ = writeln!(
        s,
        "\n== Withheld (refused by consent or law, from the audit trail)"
    );
    let mut refusals: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut after = 0;
    loop {
        let Ok(batch) = store.audit_list(after, 500, None, None).await else {
            break;
        };
        if batch.is_empty() {
            break;
        }
        for a in &batch {
            after = a.seq;
            if a.kind == "refusal" {
                let why = a
                    .body
                    .get("outcomeDesc")
                    .and_then(Value::as_str)
                    .unwrap_or("denied")
                    .to_string();
                let who = a.recipient.clone().unwrap_or_else(|| "?".into());
                *refusals.entry((who, why)).or_insert(0) += 1;
            }
        }
        if batch.len() < 500 {
            break;
        }
    }
    if refusals.is_empty() {
        let _ = writeln!(s, "  nothing");
    }
    for ((who, why), n) in &refusals {
        let _ = writeln!(s, "  {who}: {n} × {why}");
    }
    let _ = writeln!(s, "\n== Open deadlines");
    match store.clock_list(true, None, None, 50).await {
        Ok(clocks) if !clocks.is_empty() => {
            for c in clocks {
                let _ = writeln!(
                    s,
                    "  {:<34} {:<44} due {}",
                    c.kind,
                    c.subject,
                    c.due_at.format("%Y-%m-%d %H:%M UTC")
                );
            }
        }
        _ => {
            let _ = writeln!(s, "  none");
        }
    }
    s
}
