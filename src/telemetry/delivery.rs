//! Delivery metrics (Prometheus text): attempts and outcomes per endpoint,
//! queue depth per endpoint and state (sampled from the store), delivery
//! latency from enqueue to acknowledged, and ADT notifications delivered more
//! than 24 hours after the event (seed 003 IX: ADT to the ECM provider within
//! 24 hours). Endpoint labels are configured organization ids, a closed set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::telemetry::Histogram;

/// Enqueue → delivered, seconds (up to a day: retries back off for hours).
pub const DELIVERY_LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 21600.0,
    86400.0,
];

/// Every delivery metric.
pub struct DeliveryMetrics {
    attempts: Mutex<BTreeMap<String, u64>>,
    outcomes: Mutex<BTreeMap<(String, &'static str), u64>>,
    depth: Mutex<Vec<(String, &'static str, u64)>>,
    /// Enqueue → delivered.
    pub latency: Histogram,
    /// ADT notifications delivered later than 24 h after the event.
    pub late_adt: AtomicU64,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        DeliveryMetrics {
            attempts: Mutex::new(BTreeMap::new()),
            outcomes: Mutex::new(BTreeMap::new()),
            depth: Mutex::new(Vec::new()),
            latency: Histogram::new(DELIVERY_LATENCY_BUCKETS),
            late_adt: AtomicU64::new(0),
        }
    }
}

impl DeliveryMetrics {
    pub fn attempt(&self, endpoint: &str) {
        if let Ok(mut m) = self.attempts.lock() {
            *m.entry(endpoint.to_string()).or_insert(0) += 1;
        }
    }

    /// `outcome`: delivered | retry | dead | withheld | released.
    pub fn outcome(&self, endpoint: &str, outcome: &'static str) {
        if let Ok(mut m) = self.outcomes.lock() {
            *m.entry((endpoint.to_string(), outcome)).or_insert(0) += 1;
        }
    }

    pub fn outcome_count(&self, endpoint: &str, outcome: &'static str) -> u64 {
        self.outcomes
            .lock()
            .ok()
            .and_then(|m| m.get(&(endpoint.to_string(), outcome)).copied())
            .unwrap_or(0)
    }

    pub fn attempt_count(&self, endpoint: &str) -> u64 {
        self.attempts
            .lock()
            .ok()
            .and_then(|m| m.get(endpoint).copied())
            .unwrap_or(0)
    }

    /// Replace the depth snapshot (endpoint, state, count).
    pub fn set_depth(&self, rows: Vec<(String, &'static str, u64)>) {
        if let Ok(mut d) = self.depth.lock() {
            *d = rows;
        }
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP cwsgw_delivery_attempts_total Delivery attempts (HTTP requests), by endpoint."
        );
        let _ = writeln!(out, "# TYPE cwsgw_delivery_attempts_total counter");
        if let Ok(m) = self.attempts.lock() {
            for (e, v) in m.iter() {
                let _ = writeln!(out, "cwsgw_delivery_attempts_total{{endpoint=\"{e}\"}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP cwsgw_delivery_outcomes_total Delivery outcomes, by endpoint and outcome."
        );
        let _ = writeln!(out, "# TYPE cwsgw_delivery_outcomes_total counter");
        if let Ok(m) = self.outcomes.lock() {
            for ((e, o), v) in m.iter() {
                let _ = writeln!(
                    out,
                    "cwsgw_delivery_outcomes_total{{endpoint=\"{e}\",outcome=\"{o}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP cwsgw_outbox_depth Outbox rows, by endpoint and state (sampled)."
        );
        let _ = writeln!(out, "# TYPE cwsgw_outbox_depth gauge");
        if let Ok(d) = self.depth.lock() {
            for (e, s, v) in d.iter() {
                let _ = writeln!(
                    out,
                    "cwsgw_outbox_depth{{endpoint=\"{e}\",state=\"{s}\"}} {v}"
                );
            }
        }
        self.latency.render_named(
            out,
            "cwsgw_delivery_latency_seconds",
            "Time from enqueue to the recipient's 2xx.",
        );
        let _ = writeln!(out, "# HELP cwsgw_adt_notifications_late_total ADT notifications delivered more than 24 h after the event.");
        let _ = writeln!(out, "# TYPE cwsgw_adt_notifications_late_total counter");
        let _ = writeln!(
            out,
            "cwsgw_adt_notifications_late_total {}",
            self.late_adt.load(Ordering::Relaxed)
        );
    }
}
