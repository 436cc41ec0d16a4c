//! `cws-gateway bench rtf`: the monthly Return Transmission File export of
//! one plan over a store of `--members` referral Tasks (default 100,000),
//! printed beside the single-referral rate (`POST /ecm/referrals`, one at
//! a time) measured on the same gateway in the same run.
//!
//! The gateway is the real one (`serve::start`, SQLite in a temporary
//! directory). The store is filled directly through the store API (a
//! Patient and a referral Task per member, 1,000 writes per call, as every
//! writer stores them: index tokens and patient compartment), and the
//! export is the path of `GET /ops/rtf` and `report rtf`
//! (`sources::rtf::export_audited`: page through the Tasks, read their
//! Patients and authorization clocks, write CSV, audit). Peak RSS is the
//! process's high-water mark over each export run (reset before it through
//! `/proc/self/clear_refs` on Linux), printed beside the RSS at its start. Every figure is the median of
//! `--runs` runs; each run's number is printed too. One JSON line.

use std::time::Instant;

use anyhow::Context as _;
use chrono::Datelike as _;
use serde_json::json;

use cws_gateway::config::Config;

const COUNTY_TOKEN: &str = "bench-county-token";
const BASE: &str = "https://gateway.example.org/fhir";

fn config(dir: &std::path::Path) -> anyhow::Result<Config> {
    use sha2::Digest;
    let text = format!(
        r#"
[server]
http_addr = "127.0.0.1:0"
mllp_addr = "127.0.0.1:0"
canonical_base = "{BASE}"
[store]
url = "sqlite://{db}"
[audit]
demo_key = true
[[organizations]]
id = "county-fresno"
kind = "county"
name = "Fresno"
county = "Fresno"
[[organizations]]
id = "mcp-a"
kind = "mcp"
name = "Plan A"
plan_codes = ["A"]
counties = ["Fresno"]
[[organizations]]
id = "ecm-x"
kind = "ecm_provider"
name = "ECM X"
mcps = ["mcp-a"]
pofs = ["8"]
[[organizations]]
id = "ops"
kind = "operator"
name = "Operations"
[[clients]]
id = "bench-county"
organization = "county-fresno"
token_sha256 = "{county}"
"#,
        db = dir.join("rtf.db").display(),
        county = hex::encode(sha2::Sha256::digest(COUNTY_TOKEN.as_bytes())),
    );
    Ok(Config::from_toml(&text, "bench")?)
}

/// The made-up CIN of member `i` (eight digits and a letter).
fn cin(i: usize) -> String {
    format!("{:08}{}", 10_000_000 + i, (b'A' + (i % 26) as u8) as char)
}

/// Member `i`'s Patient and referral Task, in one of the lifecycle's
/// states (a quarter closed the month before, so not in the file).
fn member(i: usize, month: &str, last_month: &str) -> [serde_json::Value; 2] {
    let vocab_status = ["received", "authorized", "assigned", "enrolled", "closed"];
    let task_status = [
        "requested",
        "accepted",
        "accepted",
        "in-progress",
        "completed",
    ];
    let k = i % 5;
    let pid = format!("rp{i}");
    let patient = json!({"resourceType": "Patient", "id": pid,
        "identifier": [{"system": format!("{BASE}/identifier/medi-cal-cin"), "value": cin(i)}],
        "name": [{"family": format!("Member{i}"), "given": ["Bench"]}], "birthDate": "2012-04-01"});
    let owner = if k >= 2 { "ecm-x" } else { "mcp-a" };
    let updated = if k == 4 && i % 2 == 0 {
        format!("{last_month}-20T10:00:00Z")
    } else {
        format!("{month}-03T10:00:00Z")
    };
    let mut task = json!({"resourceType": "Task", "id": format!("rt{i}"), "status": task_status[k],
        "intent": "order", "authoredOn": format!("{last_month}-01T09:00:00Z"), "lastModified": updated,
        "for": {"reference": format!("Patient/{pid}")},
        "owner": {"reference": format!("Organization/{owner}")},
        "requester": {"reference": "Organization/county-fresno"},
        "extension": [{"url": format!("{BASE}{}", cws_gateway::resources::AUTHORIZING_MCP_EXT),
            "valueReference": {"reference": "Organization/mcp-a"}}]});
    let v = cws_gateway::records::clr::Vocabulary::builtin();
    if let Some(bs) = v.business_status(BASE, vocab_status[k]) {
        task["businessStatus"] = bs;
    }
    if k == 4 {
        if let Some(c) = v.closure_coding(BASE, "services-received") {
            task["statusReason"] = json!({"coding": [c]});
        }
    }
    cws_gateway::records::clr::set_status_date(&mut task, BASE, &updated);
    [patient, task]
}

fn write_of(r: serde_json::Value) -> store::ResourceWrite {
    store::ResourceWrite {
        resource_type: r["resourceType"].as_str().unwrap_or_default().to_string(),
        id: r["id"].as_str().unwrap_or_default().to_string(),
        patient_id: cws_gateway::resources::index::patient_of(&r),
        index: cws_gateway::resources::index::tokens(&r),
        body: r,
    }
}

/// Fill the store: `n` members, 1,000 writes per call.
async fn fill(store: &dyn store::Store, n: usize, month: &str, last: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        batch.extend(member(i, month, last).map(write_of));
        if batch.len() >= 1000 {
            store.put_resources(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        store.put_resources(batch).await?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Reset the peak RSS high-water mark to the current RSS (Linux; ignored
/// elsewhere) and answer the current RSS in MiB: the baseline the export's
/// peak is read against (the filled store's cache and the allocator's
/// retained memory are in both).
fn reset_peak_rss() -> Option<f64> {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Referrals per second, `n` sent one at a time (each answered 201).
async fn single_referral_rate(base: &str, n: usize, offset: usize) -> anyhow::Result<f64> {
    let c = reqwest::Client::new();
    let today = chrono::Utc::now().date_naive().to_string();
    let t = Instant::now();
    for j in 0..n {
        let i = offset + j;
        let body = json!({"referralId": format!("BR-{i}"), "mcpId": "mcp-a",
            "member": {"cin": cin(500_000 + i), "name": {"given": ["Bench"], "family": format!("Ref{i}")}, "birthDate": "2011-02-03"},
            "referrer": {"organizationId": "county-fresno", "name": "Bench Worker", "role": "social worker", "relationship": "county social worker"},
            "selfReferral": false, "populationsOfFocus": ["8"], "criteria": "in foster care", "expedited": false,
            "consent": {"obtainedOn": today, "obtainedBy": "Bench Worker", "grantor": {"role": "youth", "name": "Bench"},
                "explained": {"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}}});
        let r = c
            .post(format!("{base}/ecm/referrals"))
            .bearer_auth(COUNTY_TOKEN)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = r.status().as_u16();
        if status != 201 {
            let text = r.text().await.unwrap_or_default();
            anyhow::bail!(
                "referral {i}: status {status}: {}",
                text.chars().take(400).collect::<String>()
            );
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub async fn run(members: usize, referrals: usize, runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path())?;
    let running = cws_gateway::serve::start(cfg.clone())
        .await
        .context("cannot start the bench gateway")?;
    let base = format!("http://{}", running.http_addr);
    let now = chrono::Utc::now().date_naive();
    let month = now.format("%Y-%m").to_string();
    let last = (now.with_day0(0).unwrap_or(now) - chrono::Duration::days(1))
        .format("%Y-%m")
        .to_string();
    let fill_s = fill(running.store.as_ref(), members, &month, &last).await?;
    let caller = crate::cli::rtf::cli_caller();
    let (mut export_s, mut rss, mut ref_rate) = (Vec::new(), Vec::new(), Vec::new());
    let mut rss_before = Vec::new();
    let mut rows = 0;
    for run in 0..runs {
        ref_rate.push(single_referral_rate(&base, referrals, run * referrals).await?);
        rss_before.push(reset_peak_rss().unwrap_or(0.0));
        let t = Instant::now();
        let (buf, done) = cws_gateway::sources::rtf::export_audited(
            &cfg,
            running.store.as_ref(),
            &caller,
            "mcp-a",
            &month,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        export_s.push(t.elapsed().as_secs_f64());
        rss.push(crate::cli::bench::peak_rss_mib().unwrap_or(0.0));
        rows = done.rows;
        drop(buf);
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    crate::cli::emit(&format!(
        "{}\n",
        json!({
            "bench": "rtf",
            "members": members,
            "fill_s": fill_s,
            "rtf_rows": rows,
            "rtf_export_s": med(&export_s),
            "rtf_export_s_runs": export_s,
            "rtf_export_peak_rss_mib": med(&rss),
            "rtf_export_peak_rss_mib_runs": rss,
            "rss_before_export_mib": med(&rss_before),
            "rss_before_export_mib_runs": rss_before,
            "single_referral_per_s": med(&ref_rate),
            "single_referral_per_s_runs": ref_rate,
            "referrals_per_run": referrals,
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
    fn bench_cins_are_valid_and_distinct() {
        assert!(cws_gateway::sources::rtf::valid_cin(&cin(0)));
        assert!(cws_gateway::sources::rtf::valid_cin(&cin(599_999)));
        assert_ne!(cin(1), cin(27));
    }
}
