//! `cws-gateway bench referrals`: referral intake through the real HTTP
//! paths — `--referrals` referrals posted one at a time
//! (`POST /ecm/referrals`) and as many more in NDJSON batches of `--batch`
//! (`POST /ecm/referrals/$batch`), on the same gateway in the same run;
//! referrals per second for each, the median of `--runs` runs (each run's
//! figure printed too), one JSON line.
//!
//! The gateway is the real one (`serve::start`, SQLite in a temporary
//! directory); the referrer is a community hospital (kind `referrer`)
//! naming the plan (`mcpId`), with an inline parent consent, so every
//! referral is journaled, derived, routed and answered 201.

use std::time::Instant;

use anyhow::Context as _;
use serde_json::{json, Value};

use cws_gateway::config::Config;

const TOKEN: &str = "bench-referrer-token";

fn config(dir: &std::path::Path) -> anyhow::Result<Config> {
    use sha2::Digest;
    let text = format!(
        r#"
[server]
http_addr = "127.0.0.1:0"
mllp_addr = "127.0.0.1:0"
max_body_bytes = 8388608
[store]
url = "sqlite://{db}"
[audit]
demo_key = true
[[organizations]]
id = "mcp-a"
kind = "mcp"
name = "Plan A"
plan_codes = ["A"]
counties = ["Fresno"]
[[organizations]]
id = "mercy-hospital"
kind = "referrer"
name = "Mercy Community Hospital"
[[clients]]
id = "bench-referrer"
organization = "mercy-hospital"
token_sha256 = "{token}"
"#,
        db = dir.join("referrals.db").display(),
        token = hex::encode(sha2::Sha256::digest(TOKEN.as_bytes())),
    );
    Ok(Config::from_toml(&text, "bench")?)
}

/// Referral form `i` (a distinct member and referral id).
pub fn form(i: usize, today: &str) -> Value {
    json!({"referralId": format!("BR-{i}"), "mcpId": "mcp-a",
        "member": {"cin": format!("{:08}{}", 20_000_000 + i, (b'A' + (i % 26) as u8) as char),
                   "name": {"given": ["Bench"], "family": format!("Ref{i}")}, "birthDate": "2012-04-05",
                   "phone": "559-555-0100", "preferredLanguage": "English"},
        "referrer": {"organizationId": "mercy-hospital", "name": "Bench Worker", "role": "ED social worker",
                     "phone": "559-555-0199", "relationship": "hospital social worker"},
        "selfReferral": false, "populationsOfFocus": ["3"], "criteria": "frequent ED use", "expedited": false,
        "consent": {"obtainedOn": today, "obtainedBy": "Bench Worker", "grantor": {"role": "parent", "name": "Bench Parent"},
            "explained": {"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}}})
}

/// Referrals per second, `n` posted one at a time (each answered 201).
async fn single_rate(
    c: &reqwest::Client,
    base: &str,
    n: usize,
    offset: usize,
) -> anyhow::Result<f64> {
    let today = chrono::Utc::now().date_naive().to_string();
    let t = Instant::now();
    for j in 0..n {
        let r = c
            .post(format!("{base}/ecm/referrals"))
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/json")
            .body(form(offset + j, &today).to_string())
            .send()
            .await?;
        let status = r.status().as_u16();
        if status != 201 {
            let text = r.text().await.unwrap_or_default();
            anyhow::bail!(
                "referral {}: status {status}: {}",
                offset + j,
                text.chars().take(400).collect::<String>()
            );
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Referrals per second, `n` posted in NDJSON batches of `batch` (every
/// line answered 201).
async fn batch_rate(
    c: &reqwest::Client,
    base: &str,
    n: usize,
    batch: usize,
    offset: usize,
) -> anyhow::Result<f64> {
    let today = chrono::Utc::now().date_naive().to_string();
    let mut files = Vec::new();
    let mut i = 0;
    while i < n {
        let m = batch.min(n - i);
        let body: String = (0..m)
            .map(|j| form(offset + i + j, &today).to_string() + "\n")
            .collect();
        files.push((m, body));
        i += m;
    }
    let t = Instant::now();
    for (m, body) in files {
        let r = c
            .post(format!("{base}/ecm/referrals/$batch"))
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        let answer: Value = serde_json::from_slice(&r.bytes().await?).unwrap_or(Value::Null);
        let created = answer["entry"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["response"]["status"] == "201 Created")
                    .count()
            })
            .unwrap_or(0);
        if status != 200 || created != m {
            anyhow::bail!("batch: status {status}, {created} of {m} lines created");
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(referrals: usize, batch: usize, runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = cws_gateway::serve::start(config(dir.path())?)
        .await
        .context("cannot start the bench gateway")?;
    let base = format!("http://{}", running.http_addr);
    let c = reqwest::Client::new();
    let (mut single, mut batched) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let offset = run * 2 * referrals;
        single.push(single_rate(&c, &base, referrals, offset).await?);
        batched.push(batch_rate(&c, &base, referrals, batch, offset + referrals).await?);
    }
    crate::cli::emit(&format!(
        "{}\n",
        json!({
            "bench": "referrals",
            "single_referral_per_s": median(&single),
            "single_referral_per_s_runs": single,
            "batch_referral_per_s": median(&batched),
            "batch_referral_per_s_runs": batched,
            "referrals_per_run": referrals,
            "batch_lines": batch,
            "runs": runs,
        })
    ))?;
    running.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_forms_are_distinct_and_valid_cins() {
        let a = form(0, "2026-01-01");
        let b = form(27, "2026-01-01");
        assert_ne!(a["member"]["cin"], b["member"]["cin"]);
        let cin = a["member"]["cin"].as_str().unwrap();
        assert_eq!(cin.len(), 9);
        assert!(cin[..8].bytes().all(|c| c.is_ascii_digit()));
    }
}
