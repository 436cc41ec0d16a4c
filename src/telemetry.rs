//! Logs and metrics that cannot carry PHI by construction.
//!
//! Metrics take only closed label values: message types are reduced to
//! `ADT^A01`-shaped codes (anything else becomes `other`), ACK codes come from an
//! enum, routes are the router's templates. Nothing from a payload besides those
//! codes is ever a label. Logs go through `tracing`; call sites log ids and
//! counts (journal id, control-id hash is not needed: the journal id suffices).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Install the `tracing` subscriber: `RUST_LOG` filter, default `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A counter with one label whose values come from the configuration (an
/// organization id): a closed set, but not known at compile time.
#[derive(Default)]
pub struct ConfigCounter {
    values: Mutex<BTreeMap<String, u64>>,
}

impl ConfigCounter {
    pub fn inc(&self, label: &str) {
        if let Ok(mut m) = self.values.lock() {
            *m.entry(label.to_string()).or_insert(0) += 1;
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        self.values
            .lock()
            .ok()
            .and_then(|m| m.get(label).copied())
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label_name: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        if let Ok(m) = self.values.lock() {
            for (label, v) in m.iter() {
                let escaped = label.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(out, "{name}{{{label_name}=\"{escaped}\"}} {v}");
            }
        }
    }
}

/// A counter keyed by a small, closed set of label values.
#[derive(Default)]
pub struct CounterVec {
    values: Mutex<BTreeMap<Vec<&'static str>, u64>>,
}

impl CounterVec {
    pub fn inc(&self, labels: &[&'static str]) {
        self.add(labels, 1);
    }

    pub fn add(&self, labels: &[&'static str], n: u64) {
        if let Ok(mut m) = self.values.lock() {
            *m.entry(labels.to_vec()).or_insert(0) += n;
        }
    }

    pub fn get(&self, labels: &[&'static str]) -> u64 {
        self.values
            .lock()
            .ok()
            .and_then(|m| m.get(labels).copied())
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label_names: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        if let Ok(m) = self.values.lock() {
            for (labels, v) in m.iter() {
                let pairs: Vec<String> = label_names
                    .iter()
                    .zip(labels.iter())
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                let _ = writeln!(out, "{name}{{{}}} {v}", pairs.join(","));
            }
        }
    }
}

/// A fixed-bucket histogram in seconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far and their sum in seconds.
    pub fn count_and_sum(&self) -> (u64, f64) {
        (
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }

    /// Render under `name` (for metrics kept outside this module).
    pub fn render_named(&self, out: &mut String, name: &str, help: &str) {
        self.render(out, name, help);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// At most one log line a second for one kind of refusal, with how many
/// were not logged since: a peer hammering the listener does not flood the log.
pub struct RateLimitedLog {
    last: Mutex<Option<std::time::Instant>>,
    skipped: AtomicU64,
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitedLog {
    pub fn new() -> Self {
        RateLimitedLog {
            last: Mutex::new(None),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(skipped since the last line)` when a line may be logged now.
    pub fn permit(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// Every metric the gateway exports. One instance per process.
pub struct Metrics {
    /// HL7 messages received, by message type.
    pub hl7_received: CounterVec,
    /// HL7 acknowledgements sent, by code and message type.
    pub hl7_acks: CounterVec,
    /// MLLP frames that were not HL7 messages (garbage, oversize).
    pub mllp_frame_errors: CounterVec,
    pub mllp_connections: AtomicI64,
    /// MLLP connections that found a connection limit reached, by limit
    /// (`per_peer`: closed at once; `max_connections`: waited for a slot).
    pub mllp_slots_exhausted: CounterVec,
    /// Open HTTP connections (never above `server.max_connections`).
    pub http_connections: AtomicI64,
    /// HTTP connections that waited because `server.max_connections` were
    /// open (label `limit`: `max_connections`).
    pub http_slots_exhausted: CounterVec,
    /// Time from a complete frame/request to its ACK being ready.
    pub ack_latency: Histogram,
    /// The part of `ack_latency` spent waiting for the journal append: the
    /// writer's queue, its transaction and the WAL fsync.
    pub journal_wait: Histogram,
    /// ADT messages journaled under a control id the same facility already
    /// used for a different message, by source organization id.
    pub control_id_reuse: ConfigCounter,
    /// Journal records translated, by outcome (`ok`, `failed`).
    pub translations: CounterVec,
    /// Jobs waiting for the translation worker.
    pub translate_queue_depth: AtomicI64,
    pub http_requests: CounterVec,
    /// TLS handshakes on the HTTP API, by outcome (`ok`, `no_client_cert`,
    /// `bad_client_cert`, `protocol`, `io`, `timeout`).
    pub tls_handshakes: CounterVec,
    /// Open deadline clocks past due, as last counted.
    pub deadlines_overdue: AtomicI64,
    /// Outbox and push delivery.
    pub delivery: crate::delivery::metrics::DeliveryMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            hl7_received: CounterVec::default(),
            hl7_acks: CounterVec::default(),
            mllp_frame_errors: CounterVec::default(),
            mllp_connections: AtomicI64::new(0),
            mllp_slots_exhausted: CounterVec::default(),
            http_connections: AtomicI64::new(0),
            http_slots_exhausted: CounterVec::default(),
            ack_latency: Histogram::new(LATENCY_BUCKETS),
            journal_wait: Histogram::new(LATENCY_BUCKETS),
            control_id_reuse: ConfigCounter::default(),
            translations: CounterVec::default(),
            translate_queue_depth: AtomicI64::new(0),
            http_requests: CounterVec::default(),
            tls_handshakes: CounterVec::default(),
            deadlines_overdue: AtomicI64::new(0),
            delivery: crate::delivery::metrics::DeliveryMetrics::default(),
        }
    }
}

/// Reduce a message type to a closed label: `ADT^A01` shapes pass, the rest is `other`.
pub fn message_type_label(code: &str, trigger: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A09", "A10", "A11", "A12", "A13",
        "A14", "A15", "A16", "A17", "A18", "A20", "A21", "A22", "A23", "A24", "A25", "A26", "A27",
        "A28", "A29", "A30", "A31", "A32", "A33", "A34", "A35", "A36", "A37", "A38", "A39", "A40",
        "A41", "A42", "A43", "A44", "A45", "A47", "A49", "A50", "A51", "A52", "A53", "A54", "A55",
        "A60", "A61", "A62",
    ];
    const LABELS: &[&str] = &[
        "ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A05", "ADT^A06", "ADT^A07", "ADT^A08",
        "ADT^A09", "ADT^A10", "ADT^A11", "ADT^A12", "ADT^A13", "ADT^A14", "ADT^A15", "ADT^A16",
        "ADT^A17", "ADT^A18", "ADT^A20", "ADT^A21", "ADT^A22", "ADT^A23", "ADT^A24", "ADT^A25",
        "ADT^A26", "ADT^A27", "ADT^A28", "ADT^A29", "ADT^A30", "ADT^A31", "ADT^A32", "ADT^A33",
        "ADT^A34", "ADT^A35", "ADT^A36", "ADT^A37", "ADT^A38", "ADT^A39", "ADT^A40", "ADT^A41",
        "ADT^A42", "ADT^A43", "ADT^A44", "ADT^A45", "ADT^A47", "ADT^A49", "ADT^A50", "ADT^A51",
        "ADT^A52", "ADT^A53", "ADT^A54", "ADT^A55", "ADT^A60", "ADT^A61", "ADT^A62",
    ];
    if code != "ADT" {
        return "other";
    }
    KNOWN
        .iter()
        .position(|k| *k == trigger)
        .and_then(|i| LABELS.get(i).copied())
        .unwrap_or("ADT^other")
}

impl Metrics {
    /// Prometheus text exposition; the store's numbers are passed in.
    pub fn render(
        &self,
        store: &store::StoreMetrics,
        journal: Option<&store::JournalStats>,
    ) -> String {
        let mut out = String::with_capacity(4096);
        self.hl7_received.render(
            &mut out,
            "cwsgw_hl7_messages_received_total",
            "HL7 v2 messages received (MLLP and HTTP), by message type.",
            &["type"],
        );
        self.hl7_acks.render(
            &mut out,
            "cwsgw_hl7_acks_total",
            "HL7 acknowledgements sent, by MSA-1 code and message type.",
            &["code", "type"],
        );
        self.mllp_frame_errors.render(
            &mut out,
            "cwsgw_mllp_frame_errors_total",
            "MLLP framing problems, by kind.",
            &["kind"],
        );
        let _ = writeln!(out, "# HELP cwsgw_mllp_connections Open MLLP connections.");
        let _ = writeln!(out, "# TYPE cwsgw_mllp_connections gauge");
        let _ = writeln!(
            out,
            "cwsgw_mllp_connections {}",
            self.mllp_connections.load(Ordering::Relaxed)
        );
        self.mllp_slots_exhausted.render(
            &mut out,
            "cwsgw_mllp_slots_exhausted_total",
            "MLLP connections that found a connection limit reached, by limit (per_peer: closed at once; max_connections: waited for a slot).",
            &["limit"],
        );
        let _ = writeln!(out, "# HELP cwsgw_http_connections Open HTTP connections.");
        let _ = writeln!(out, "# TYPE cwsgw_http_connections gauge");
        let _ = writeln!(
            out,
            "cwsgw_http_connections {}",
            self.http_connections.load(Ordering::Relaxed)
        );
        self.http_slots_exhausted.render(
            &mut out,
            "cwsgw_http_slots_exhausted_total",
            "HTTP connections that waited for a slot because server.max_connections were open.",
            &["limit"],
        );
        self.ack_latency.render(
            &mut out,
            "cwsgw_hl7_ack_latency_seconds",
            "Time from a complete HL7 message to its ACK being ready (includes the journal commit).",
        );
        self.journal_wait.render(
            &mut out,
            "cwsgw_hl7_journal_wait_seconds",
            "The part of the ACK latency spent waiting for the journal append (writer queue, transaction, WAL fsync).",
        );
        self.control_id_reuse.render(
            &mut out,
            "cwsgw_control_id_reuse_total",
            "ADT messages whose (MSH-4, MSH-10) was already used for a different message, processed as new messages, by source organization.",
            "source",
        );
        self.translations.render(
            &mut out,
            "cwsgw_translations_total",
            "Journal records translated to FHIR, by outcome.",
            &["outcome"],
        );
        let _ = writeln!(
            out,
            "# HELP cwsgw_translate_queue_depth Journaled ADT records intake announced that are not translated yet (the backlog itself stays in the journal)."
        );
        let _ = writeln!(out, "# TYPE cwsgw_translate_queue_depth gauge");
        let _ = writeln!(
            out,
            "cwsgw_translate_queue_depth {}",
            self.translate_queue_depth.load(Ordering::Relaxed).max(0)
        );
        let _ = writeln!(
            out,
            "# HELP cwsgw_deadlines_overdue Open deadline clocks past due, as last counted."
        );
        let _ = writeln!(out, "# TYPE cwsgw_deadlines_overdue gauge");
        let _ = writeln!(
            out,
            "cwsgw_deadlines_overdue {}",
            self.deadlines_overdue.load(Ordering::Relaxed).max(0)
        );
        self.http_requests.render(
            &mut out,
            "cwsgw_http_requests_total",
            "HTTP requests, by route and status class.",
            &["route", "status"],
        );
        self.tls_handshakes.render(
            &mut out,
            "cwsgw_tls_handshakes_total",
            "TLS handshakes on the HTTP API (server.tls), by outcome.",
            &["outcome"],
        );
        // Store.
        let _ = writeln!(
            out,
            "# HELP cwsgw_journal_commit_seconds Journal (group) commit latency."
        );
        let _ = writeln!(out, "# TYPE cwsgw_journal_commit_seconds histogram");
        let mut last = 0;
        for (le, c) in &store.commit_seconds_buckets {
            let _ = writeln!(
                out,
                "cwsgw_journal_commit_seconds_bucket{{le=\"{le}\"}} {c}"
            );
            last = *c;
        }
        let _ = writeln!(
            out,
            "cwsgw_journal_commit_seconds_bucket{{le=\"+Inf\"}} {}",
            store.commits.max(last)
        );
        let _ = writeln!(
            out,
            "cwsgw_journal_commit_seconds_sum {}",
            store.commit_seconds_sum
        );
        let _ = writeln!(out, "cwsgw_journal_commit_seconds_count {}", store.commits);
        for (name, help, v) in [
            (
                "cwsgw_journal_inputs_total",
                "Inputs appended to the journal.",
                store.appended_inputs,
            ),
            (
                "cwsgw_journal_duplicates_total",
                "Inputs recognised as duplicates (not journaled again).",
                store.duplicate_inputs,
            ),
            (
                "cwsgw_store_wal_syncs_total",
                "WAL fsyncs by the SQLite sync thread (each covers every commit since the previous one).",
                store.wal_syncs,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP cwsgw_store_wal_sync_seconds_total Seconds spent in those WAL fsyncs (the disk's share of a commit)."
        );
        let _ = writeln!(out, "# TYPE cwsgw_store_wal_sync_seconds_total counter");
        let _ = writeln!(
            out,
            "cwsgw_store_wal_sync_seconds_total {}",
            store.wal_sync_seconds_sum
        );
        let _ = writeln!(
            out,
            "# HELP cwsgw_store_writer_queue_depth Requests waiting for the store writer."
        );
        let _ = writeln!(out, "# TYPE cwsgw_store_writer_queue_depth gauge");
        let _ = writeln!(
            out,
            "cwsgw_store_writer_queue_depth {}",
            store.writer_queue_depth
        );
        if let Some(j) = journal {
            let _ = writeln!(
                out,
                "# HELP cwsgw_journal_records Journal records by state."
            );
            let _ = writeln!(out, "# TYPE cwsgw_journal_records gauge");
            for (state, v) in [
                ("pending", j.pending),
                ("processed", j.processed),
                ("failed", j.failed),
            ] {
                let _ = writeln!(out, "cwsgw_journal_records{{state=\"{state}\"}} {v}");
            }
        }
        self.delivery.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_log_allows_one_line_a_second_and_counts_the_rest() {
        let log = RateLimitedLog::new();
        assert_eq!(log.permit(), Some(0));
        assert_eq!(log.permit(), None);
        assert_eq!(log.permit(), None);
        // A second later the next line says how many were not logged.
        *log.last.lock().unwrap() =
            Some(std::time::Instant::now() - std::time::Duration::from_secs(2));
        assert_eq!(log.permit(), Some(2));
        assert_eq!(log.permit(), None);
    }

    #[test]
    fn labels_are_closed() {
        assert_eq!(message_type_label("ADT", "A01"), "ADT^A01");
        assert_eq!(message_type_label("ADT", "Z99"), "ADT^other");
        assert_eq!(message_type_label("ORU", "R01"), "other");
        assert_eq!(message_type_label("ADT", "Jane Doe"), "ADT^other");
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.hl7_received.inc(&["ADT^A01"]);
        m.hl7_acks.inc(&["AA", "ADT^A01"]);
        m.control_id_reuse.inc("st-mary");
        m.ack_latency.observe(0.002);
        let text = m.render(&store::StoreMetrics::default(), None);
        assert!(text.contains("cwsgw_hl7_messages_received_total{type=\"ADT^A01\"} 1"));
        assert!(text.contains("cwsgw_hl7_acks_total{code=\"AA\",type=\"ADT^A01\"} 1"));
        assert!(text.contains("cwsgw_control_id_reuse_total{source=\"st-mary\"} 1"));
        assert!(text.contains("cwsgw_hl7_ack_latency_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("cwsgw_hl7_ack_latency_seconds_bucket{le=\"0.001\"} 0"));
    }
}
