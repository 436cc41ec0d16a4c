//! `cws-gateway referral-batch FILE --url URL --token-env VAR`: post a file
//! of referrals (NDJSON, or CSV by its `.csv` extension or `--format csv`)
//! to a running gateway's `POST /ecm/referrals/$batch`, print one line per
//! referral (line, status, referral id, ServiceRequest or the refusal's
//! issues), counts on stderr; exit 1 when any line was refused.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::Value;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BatchFormat {
    Ndjson,
    Csv,
}

#[derive(Args, Debug)]
pub struct ReferralBatchArgs {
    /// The file: one referral form (JSON) per line, or a CSV with the
    /// documented columns (docs/county.md, "Referral batches").
    pub file: PathBuf,
    /// The gateway's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// The environment variable holding the bearer token.
    #[arg(long)]
    pub token_env: String,
    /// ndjson or csv (default: csv for a .csv file, else ndjson).
    #[arg(long, value_enum)]
    pub format: Option<BatchFormat>,
}

/// One referral's result, as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineResult {
    pub line: i64,
    pub status: String,
    pub referral_id: Option<String>,
    pub detail: String,
}

impl LineResult {
    pub fn ok(&self) -> bool {
        self.status.starts_with("200") || self.status.starts_with("201")
    }
}

/// The per-line results of a `batch-response` Bundle.
pub fn results(bundle: &Value) -> Vec<LineResult> {
    let ext = |e: &Value, suffix: &str| -> Option<Value> {
        e.get("extension")?
            .as_array()?
            .iter()
            .find(|x| {
                x.get("url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u.ends_with(suffix))
            })
            .cloned()
    };
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let line = ext(e, "/batch-line")
                .and_then(|x| x.get("valueInteger").and_then(Value::as_i64))
                .unwrap_or(0);
            let referral_id = ext(e, "/batch-referral-id").and_then(|x| {
                x.get("valueString")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            let status = e
                .pointer("/response/status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let detail = match e.pointer("/response/location").and_then(Value::as_str) {
                Some(l) => l.to_string(),
                None => e
                    .pointer("/response/outcome/issue")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        let at = i
                            .pointer("/expression/0")
                            .and_then(Value::as_str)
                            .map(|x| format!(" [{x}]"))
                            .unwrap_or_default();
                        format!(
                            "{}{at}",
                            i.get("diagnostics").and_then(Value::as_str).unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            LineResult {
                line,
                status,
                referral_id,
                detail,
            }
        })
        .collect()
}

pub async fn run(args: ReferralBatchArgs) -> anyhow::Result<ExitCode> {
    let token = std::env::var(&args.token_env)
        .with_context(|| format!("the environment variable {} is not set", args.token_env))?;
    let body = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let csv = match args.format {
        Some(BatchFormat::Csv) => true,
        Some(BatchFormat::Ndjson) => false,
        None => args
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
    };
    let ct = if csv {
        "text/csv"
    } else {
        "application/x-ndjson"
    };
    let url = format!("{}/ecm/referrals/$batch", args.url.trim_end_matches('/'));
    // reqwest is built without a TLS crypto provider: install the one the
    // gateway uses, for an https URL.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.context("cannot read the answer")?;
    let answer: Value = serde_json::from_slice(&bytes).context("the answer is not JSON")?;
    if !status.is_success() {
        let diag = answer
            .pointer("/issue/0/diagnostics")
            .and_then(Value::as_str)
            .unwrap_or("");
        anyhow::bail!("the batch was refused ({status}): {diag}");
    }
    let lines = results(&answer);
    let mut out = String::new();
    for r in &lines {
        out.push_str(&format!(
            "line {}\t{}\t{}\t{}\n",
            r.line,
            r.status,
            r.referral_id.as_deref().unwrap_or("-"),
            r.detail
        ));
    }
    print!("{out}");
    let failed = lines.iter().filter(|r| !r.ok()).count();
    eprintln!(
        "{} referrals: {} accepted, {} refused",
        lines.len(),
        lines.len() - failed,
        failed
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_read_each_entry() {
        let b = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"extension": [{"url": "https://b/StructureDefinition/batch-line", "valueInteger": 1},
                {"url": "https://b/StructureDefinition/batch-referral-id", "valueString": "R-1"}],
             "response": {"status": "201 Created", "location": "ServiceRequest/sr1"}},
            {"extension": [{"url": "https://b/StructureDefinition/batch-line", "valueInteger": 2}],
             "response": {"status": "422 Unprocessable Entity", "outcome": {"resourceType": "OperationOutcome",
                "issue": [{"diagnostics": "bad", "expression": ["member.cin"]}]}}}
        ]});
        let r = results(&b);
        assert_eq!(r.len(), 2);
        assert!(r[0].ok() && !r[1].ok());
        assert_eq!(r[0].detail, "ServiceRequest/sr1");
        assert_eq!(r[1].detail, "bad [member.cin]");
        assert_eq!(r[1].referral_id, None);
    }
}
