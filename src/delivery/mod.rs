//! Push delivery to MCP and ECM provider endpoints (`docs/delivery.md`).
//!
//! ```text
//! journal record ─ translate ─ route ──► complete_with(writes + outbox rows)   (one transaction)
//!                                              │
//!              per-endpoint worker ◄── claim (lease, heads of (endpoint, patient) only)
//!                 │ re-decide consent per resource, mask, build Bundle from current versions
//!                 │ POST (rustls, timeouts, bearer / OAuth2)
//!                 ▼
//!              Delivered | Retry(backoff, jitter, Retry-After) | Dead (4xx, attempts out) | Withheld
//!              + AuditEvent per disclosure and per refusal
//! ```
//!
//! Modules: [`policy`] (classification and backoff, pure), [`bundle`]
//! (consent at attempt time, Bundle and AuditEvent building, pure), [`client`]
//! (HTTP, TLS, credentials) and [`worker`] (the loops); its metrics are
//! [`crate::telemetry::delivery`], and the recording endpoint for tests,
//! bench and demo is `cwsgw_scenario::mock` (`crates/scenario`).
//!
//! Guarantees: at-least-once (receivers get `PUT`s, so a repeat is
//! harmless), order kept per patient and endpoint, consent re-evaluated
//! immediately before every attempt, nothing retried after a 4xx other than
//! 408/429, dead letters visible through `cws-gateway dlq`.

pub mod bundle;
pub mod client;
pub mod policy;
pub mod worker;

use std::sync::Arc;

pub use client::{ClientError, Sender};
pub use worker::{AttemptResult, DeliveryService, Workers};

use crate::config::Config;
use crate::telemetry::Metrics;

/// A process instance id for worker ids and leases: pid + start time.
pub fn instance_id() -> String {
    format!(
        "gw-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    )
}

/// Build the service and start one worker per endpoint.
pub fn start(
    cfg: Arc<Config>,
    store: Arc<dyn store::Store>,
    metrics: Arc<Metrics>,
) -> Result<Workers, ClientError> {
    let sender = Arc::new(Sender::new(&cfg)?);
    let service = Arc::new(DeliveryService::new(
        cfg,
        store,
        metrics,
        sender,
        instance_id(),
    ));
    Ok(Workers::start(service))
}

/// One `cws-gateway dlq …` action on the dead-letter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqAction {
    /// Dead (and, with `withheld`, withheld) deliveries: a table, or JSON lines.
    List {
        json: bool,
        withheld: bool,
        limit: usize,
    },
    /// Put a dead or withheld delivery back in the queue (attempts reset).
    Retry { id: i64 },
    /// Drop a dead delivery for good.
    Drop { id: i64 },
}

/// What `cws-gateway dlq …` prints, and whether it succeeded.
pub struct DlqOutput {
    pub text: String,
    pub ok: bool,
}

/// Run one `dlq` action against a store. No PHI: ids, endpoint, state,
/// attempts, times and the last error class only.
pub async fn dlq(store: &dyn store::Store, action: DlqAction) -> anyhow::Result<DlqOutput> {
    use std::fmt::Write as _;
    let mut text = String::new();
    let ok = match action {
        DlqAction::List {
            json,
            withheld,
            limit,
        } => {
            let limit = limit.clamp(1, 1000);
            let mut rows = store
                .outbox_list(Some(store::DeliveryState::Dead), None, limit)
                .await?;
            if withheld {
                rows.extend(
                    store
                        .outbox_list(Some(store::DeliveryState::Withheld), None, limit)
                        .await?,
                );
                rows.sort_by_key(|d| d.id);
            }
            if !json {
                let _ = writeln!(
                    text,
                    "{:>8}  {:<20} {:<9} {:<12} {:>8}  {:<20} {:<24}",
                    "id", "endpoint", "state", "kind", "attempts", "last error", "updated"
                );
            }
            for d in rows {
                let rule = d
                    .payload
                    .get("rule")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                if json {
                    let line = serde_json::json!({
                        "id": d.id,
                        "endpoint": d.endpoint,
                        "state": d.state.as_str(),
                        "kind": d.kind,
                        "rule": rule,
                        "attempts": d.attempts,
                        "last_error": d.last_error,
                        "created_at": d.created_at.to_rfc3339(),
                        "updated_at": d.updated_at.to_rfc3339(),
                    });
                    let _ = writeln!(text, "{line}");
                } else {
                    let _ = writeln!(
                        text,
                        "{:>8}  {:<20} {:<9} {:<12} {:>8}  {:<20} {:<24}",
                        d.id,
                        d.endpoint,
                        d.state.as_str(),
                        d.kind,
                        d.attempts,
                        d.last_error.as_deref().unwrap_or("-"),
                        d.updated_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                }
            }
            true
        }
        DlqAction::Retry { id } => {
            let done = store.outbox_retry(id).await?;
            let _ = writeln!(
                text,
                "{}",
                if done {
                    format!("delivery {id} queued again")
                } else {
                    format!("delivery {id} is not dead or withheld; nothing changed")
                }
            );
            done
        }
        DlqAction::Drop { id } => {
            let done = store.outbox_drop(id).await?;
            let _ = writeln!(
                text,
                "{}",
                if done {
                    format!("delivery {id} dropped")
                } else {
                    format!("delivery {id} is not dead; nothing changed")
                }
            );
            done
        }
    };
    Ok(DlqOutput { text, ok })
}
