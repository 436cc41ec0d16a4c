//! Logs and metrics that cannot carry PHI by construction.
//!
//! Metrics take only closed label values: message types are reduced to
//! `ADT^A01`-shaped codes (anything else becomes `other`), ACK codes come from an
//! enum, routes are the router's templates. Nothing from a payload besides those
//! codes is ever a label. Logs go through `tracing`; call sites log ids and
//! counts (journal id, control-id hash is not needed: the journal id suffices).

pub mod delivery;

use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

mod logging;
pub use logging::{init_logging, set_log_format};

/// A counter with one label whose values come from the configuration (an
/// organization id): a closed set, but not known at compile time. The
/// values are escaped on the way out.
#[derive(Debug, Clone)]
pub struct ConfigCounter {
    label: &'static str,
    family: Family<[(&'static str, String); 1], Counter>,
}

impl ConfigCounter {
    pub fn new(label: &'static str) -> Self {
        ConfigCounter {
            label,
            family: Family::default(),
        }
    }

    pub fn inc(&self, value: &str) {
        self.family
            .get_or_create(&[(self.label, value.to_string())])
            .inc();
    }

    pub fn get(&self, value: &str) -> u64 {
        self.family
            .get(&[(self.label, value.to_string())])
            .map_or(0, |c| c.get())
    }
}

impl EncodeMetric for ConfigCounter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A counter keyed by a small, closed set of label values, given in the
/// order of the label names it was made with.
#[derive(Debug, Clone)]
pub struct CounterVec {
    names: &'static [&'static str],
    family: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl CounterVec {
    pub fn new(names: &'static [&'static str]) -> Self {
        CounterVec {
            names,
            family: Family::default(),
        }
    }

    fn labels(&self, values: &[&'static str]) -> Vec<(&'static str, &'static str)> {
        self.names
            .iter()
            .copied()
            .zip(values.iter().copied())
            .collect()
    }

    pub fn inc(&self, labels: &[&'static str]) {
        self.add(labels, 1);
    }

    pub fn add(&self, labels: &[&'static str], n: u64) {
        self.family.get_or_create(&self.labels(labels)).inc_by(n);
    }

    pub fn get(&self, labels: &[&'static str]) -> u64 {
        self.family.get(&self.labels(labels)).map_or(0, |c| c.get())
    }
}

/// Unlike a bare `Family`, a counter with no series yet still shows its
/// HELP and TYPE lines (as it always did).
impl EncodeMetric for CounterVec {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// HTTP requests by route template and status class. The route is the
/// router's template (`/fhir/Patient/{id}`), never the path asked for, so
/// no id from a URL becomes a label; a path no route matched is `unmatched`.
#[derive(Debug, Clone, Default)]
pub struct HttpRequests(Family<HttpRequestLabels, Counter>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRequestLabels {
    route: String,
    status: &'static str,
}

/// The label for a route no router template matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// `2xx`, `4xx`, …: the status label of [`HttpRequests`].
pub fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

impl HttpRequests {
    pub fn inc(&self, route: &str, status: StatusCode) {
        self.0
            .get_or_create(&HttpRequestLabels {
                route: route.to_string(),
                status: status_class(status),
            })
            .inc();
    }

    /// Requests so far to `route` (a template) answered with `class` (`2xx`).
    pub fn get(&self, route: &str, class: &'static str) -> u64 {
        self.0
            .get(&HttpRequestLabels {
                route: route.to_string(),
                status: class,
            })
            .map_or(0, |c| c.get())
    }
}

impl EncodeMetric for HttpRequests {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Middleware counting every request the HTTP API answers in
/// `cwsgw_http_requests_total{route,status}`. Installed outermost in
/// [`crate::api::router`], so refusals of the inner layers (scope 403, body
/// limit 413, timeout 503) and unmatched paths (404) count too.
pub async fn count_http_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    metrics.http_requests.inc(route, resp.status());
    resp
}

/// A gauge the call sites move with atomics (`fetch_add`, `load`, `store`):
/// it dereferences to the gauge's own `AtomicI64`.
#[derive(Debug, Clone, Default)]
pub struct AtomicGauge {
    gauge: Gauge<i64, AtomicI64>,
    /// Shown as 0 while below it (a counted backlog that two racing
    /// updates took below zero for a moment).
    at_least_zero: bool,
}

impl AtomicGauge {
    fn non_negative() -> Self {
        AtomicGauge {
            gauge: Gauge::default(),
            at_least_zero: true,
        }
    }
}

impl Deref for AtomicGauge {
    type Target = AtomicI64;

    fn deref(&self) -> &AtomicI64 {
        self.gauge.inner()
    }
}

impl EncodeMetric for AtomicGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let v = self.gauge.get();
        encoder.encode_gauge(&if self.at_least_zero { v.max(0) } else { v })
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A fixed-bucket histogram in seconds.
#[derive(Debug, Clone)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram(prometheus_client::metrics::histogram::Histogram::new(
            bounds.iter().copied(),
        ))
    }

    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }

    /// Observations so far and their sum in seconds.
    pub fn count_and_sum(&self) -> (u64, f64) {
        (self.0.count(), self.0.sum())
    }

    /// Render under `name` (for metrics kept outside this module).
    pub fn render_named(&self, out: &mut String, name: &str, help: &str) {
        let mut registry = Registry::default();
        registry.register(name, registry_help(help), self.0.clone());
        // Writing into a String cannot fail.
        let _ = encode(out, &registry);
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The registry ends every HELP text with a full stop; ours already do.
fn registry_help(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
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

/// Exposition text computed from the store on a scrape (the referral
/// compliance figures), reused until it is older than the caller's limit:
/// concurrent scrapes wait for one computation instead of each running it.
#[derive(Default)]
pub struct ScrapeCache(tokio::sync::Mutex<Option<(std::time::Instant, String)>>);

impl ScrapeCache {
    /// The text computed less than `ttl` ago, else `compute`'s (kept); when
    /// `compute` gives nothing, the last text if any, else empty.
    pub async fn get_or_compute<F, Fut>(&self, ttl: std::time::Duration, compute: F) -> String
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<String>>,
    {
        let mut slot = self.0.lock().await;
        if let Some((at, text)) = slot.as_ref() {
            if at.elapsed() < ttl {
                return text.clone();
            }
        }
        match compute().await {
            Some(text) => {
                *slot = Some((std::time::Instant::now(), text.clone()));
                text
            }
            None => slot.as_ref().map(|(_, t)| t.clone()).unwrap_or_default(),
        }
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
    pub mllp_connections: AtomicGauge,
    /// MLLP connections that found a connection limit reached, by limit
    /// (`per_peer`: closed at once; `max_connections`: waited for a slot).
    pub mllp_slots_exhausted: CounterVec,
    /// Open HTTP connections (never above `server.max_connections`).
    pub http_connections: AtomicGauge,
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
    pub translate_queue_depth: AtomicGauge,
    /// Times translation was deferred for a burst of intake, by cause
    /// (`intake_burst`; see `sources::adt::worker::Burst`).
    pub translation_deferrals: CounterVec,
    /// HTTP requests answered, by route template and status class
    /// ([`count_http_requests`]).
    pub http_requests: HttpRequests,
    /// TLS handshakes on the HTTP API, by outcome (`ok`, `no_client_cert`,
    /// `bad_client_cert`, `protocol`, `io`, `timeout`).
    pub tls_handshakes: CounterVec,
    /// Open deadline clocks past due, as last counted.
    pub deadlines_overdue: AtomicGauge,
    /// Outbox and push delivery.
    pub delivery: crate::telemetry::delivery::DeliveryMetrics,
    /// The referral compliance figures' text, recomputed at most once a
    /// minute (`api` appends it to the exposition).
    pub referrals_text: ScrapeCache,
    /// Every metric above but the delivery ones, by exposition name, in
    /// exposition order.
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            hl7_received: CounterVec::new(&["type"]),
            hl7_acks: CounterVec::new(&["code", "type"]),
            mllp_frame_errors: CounterVec::new(&["kind"]),
            mllp_connections: AtomicGauge::default(),
            mllp_slots_exhausted: CounterVec::new(&["limit"]),
            http_connections: AtomicGauge::default(),
            http_slots_exhausted: CounterVec::new(&["limit"]),
            ack_latency: Histogram::new(LATENCY_BUCKETS),
            journal_wait: Histogram::new(LATENCY_BUCKETS),
            control_id_reuse: ConfigCounter::new("source"),
            translations: CounterVec::new(&["outcome"]),
            translate_queue_depth: AtomicGauge::non_negative(),
            translation_deferrals: CounterVec::new(&["cause"]),
            http_requests: HttpRequests::default(),
            tls_handshakes: CounterVec::new(&["outcome"]),
            deadlines_overdue: AtomicGauge::non_negative(),
            delivery: crate::telemetry::delivery::DeliveryMetrics::default(),
            referrals_text: ScrapeCache::default(),
            registry: Registry::default(),
        };
        // Names without the `_total` the encoder adds to counters; help
        // without the full stop it adds.
        let r = &mut m.registry;
        r.register(
            "cwsgw_hl7_messages_received",
            "HL7 v2 messages received (MLLP and HTTP), by message type",
            m.hl7_received.clone(),
        );
        r.register(
            "cwsgw_hl7_acks",
            "HL7 acknowledgements sent, by MSA-1 code and message type",
            m.hl7_acks.clone(),
        );
        r.register(
            "cwsgw_mllp_frame_errors",
            "MLLP framing problems, by kind",
            m.mllp_frame_errors.clone(),
        );
        r.register(
            "cwsgw_mllp_connections",
            "Open MLLP connections",
            m.mllp_connections.clone(),
        );
        r.register(
            "cwsgw_mllp_slots_exhausted",
            "MLLP connections that found a connection limit reached, by limit (per_peer: closed at once; max_connections: waited for a slot)",
            m.mllp_slots_exhausted.clone(),
        );
        r.register(
            "cwsgw_http_connections",
            "Open HTTP connections",
            m.http_connections.clone(),
        );
        r.register(
            "cwsgw_http_slots_exhausted",
            "HTTP connections that waited for a slot because server.max_connections were open",
            m.http_slots_exhausted.clone(),
        );
        r.register(
            "cwsgw_hl7_ack_latency_seconds",
            "Time from a complete HL7 message to its ACK being ready (includes the journal commit)",
            m.ack_latency.clone(),
        );
        r.register(
            "cwsgw_hl7_journal_wait_seconds",
            "The part of the ACK latency spent waiting for the journal append (writer queue, transaction, WAL fsync)",
            m.journal_wait.clone(),
        );
        r.register(
            "cwsgw_control_id_reuse",
            "ADT messages whose (MSH-4, MSH-10) was already used for a different message, processed as new messages, by source organization",
            m.control_id_reuse.clone(),
        );
        r.register(
            "cwsgw_translations",
            "Journal records translated to FHIR, by outcome",
            m.translations.clone(),
        );
        r.register(
            "cwsgw_translate_queue_depth",
            "Journaled ADT records intake announced that are not translated yet (the backlog itself stays in the journal)",
            m.translate_queue_depth.clone(),
        );
        r.register(
            "cwsgw_translation_deferrals",
            "Times translation was deferred (at most one second each) so a burst of intake could be journaled and acknowledged first, by cause",
            m.translation_deferrals.clone(),
        );
        r.register(
            "cwsgw_deadlines_overdue",
            "Open deadline clocks past due, as last counted",
            m.deadlines_overdue.clone(),
        );
        r.register(
            "cwsgw_http_requests",
            "HTTP requests, by route and status class",
            m.http_requests.clone(),
        );
        r.register(
            "cwsgw_tls_handshakes",
            "TLS handshakes on the HTTP API (server.tls), by outcome",
            m.tls_handshakes.clone(),
        );
        m
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
    /// Prometheus text exposition (format 0.0.4); the store's numbers are
    /// passed in.
    pub fn render(
        &self,
        store: &store::StoreMetrics,
        journal: Option<&store::JournalStats>,
    ) -> String {
        let mut out = String::with_capacity(8192);
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(StoreCollector {
            store: store.clone(),
            journal: journal.cloned(),
        }));
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        let _ = encode(&mut out, &scrape);
        self.delivery.render(&mut out);
        out
    }
}

/// The store's numbers of one scrape.
#[derive(Debug)]
struct StoreCollector {
    store: store::StoreMetrics,
    journal: Option<store::JournalStats>,
}

/// The store's commit latency histogram, from its cumulative buckets.
struct CommitSeconds<'a>(&'a store::StoreMetrics);

impl EncodeMetric for CommitSeconds<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0;
        // The encoder takes per-bucket counts (it sums them up again).
        let mut buckets = Vec::with_capacity(s.commit_seconds_buckets.len() + 1);
        let mut below = 0;
        for (le, cumulative) in &s.commit_seconds_buckets {
            buckets.push((*le, cumulative.saturating_sub(below)));
            below = below.max(*cumulative);
        }
        let count = s.commits.max(below);
        buckets.push((f64::INFINITY, count - below));
        encoder.encode_histogram::<NoLabelSet>(s.commit_seconds_sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.store;
        let histogram = CommitSeconds(s);
        histogram.encode(encoder.encode_descriptor(
            "cwsgw_journal_commit_seconds",
            "Journal (group) commit latency.",
            None,
            MetricType::Histogram,
        )?)?;
        for (name, help, v) in [
            (
                "cwsgw_journal_inputs",
                "Inputs appended to the journal.",
                s.appended_inputs,
            ),
            (
                "cwsgw_journal_duplicates",
                "Inputs recognised as duplicates (not journaled again).",
                s.duplicate_inputs,
            ),
            (
                "cwsgw_store_wal_syncs",
                "WAL fsyncs by the SQLite sync thread (each covers every commit since the previous one).",
                s.wal_syncs,
            ),
            (
                "cwsgw_store_intake_syncs",
                "fsyncs of the SQLite intake log (an ACK waits for the one covering its message).",
                s.intake_syncs,
            ),
            (
                "cwsgw_store_intake_replayed",
                "Acknowledged appends the journal did not have, replayed into it from the intake log at start.",
                s.intake_replayed,
            ),
        ] {
            ConstCounter::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        ConstCounter::new(s.wal_sync_seconds_sum).encode(encoder.encode_descriptor(
            "cwsgw_store_wal_sync_seconds",
            "Seconds spent in those WAL fsyncs (the disk's share of a commit).",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(s.intake_sync_seconds_sum).encode(encoder.encode_descriptor(
            "cwsgw_store_intake_sync_seconds",
            "Seconds spent in the intake log's fsyncs.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(s.writer_queue_depth).encode(encoder.encode_descriptor(
            "cwsgw_store_writer_queue_depth",
            "Requests waiting for the store writer.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(s.intake_unjournaled).encode(encoder.encode_descriptor(
            "cwsgw_store_intake_unjournaled",
            "Messages durable (and acknowledged) in the SQLite intake log that the journal does not show yet.",
            None,
            MetricType::Gauge,
        )?)?;
        if let Some(j) = &self.journal {
            let mut records = encoder.encode_descriptor(
                "cwsgw_journal_records",
                "Journal records by state.",
                None,
                MetricType::Gauge,
            )?;
            for (state, v) in [
                ("pending", j.pending),
                ("processed", j.processed),
                ("failed", j.failed),
            ] {
                ConstGauge::new(v).encode(records.encode_family(&[("state", state)])?)?;
            }
        }
        Ok(())
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

    /// A gateway's metrics with a value in every one of them.
    fn populated() -> (Metrics, store::StoreMetrics, store::JournalStats) {
        let m = Metrics::default();
        m.hl7_received.inc(&["ADT^A01"]);
        m.hl7_acks.inc(&["AA", "ADT^A01"]);
        m.mllp_frame_errors.inc(&["garbage"]);
        m.mllp_connections.fetch_add(2, Ordering::Relaxed);
        m.mllp_slots_exhausted.inc(&["per_peer"]);
        m.http_connections.fetch_add(1, Ordering::Relaxed);
        m.http_slots_exhausted.inc(&["max_connections"]);
        m.ack_latency.observe(0.002);
        m.journal_wait.observe(0.0007);
        m.control_id_reuse.inc("st-mary");
        m.translations.add(&["ok"], 3);
        m.translate_queue_depth.store(4, Ordering::Relaxed);
        m.deadlines_overdue.store(1, Ordering::Relaxed);
        m.http_requests.inc("/fhir/Patient/{id}", StatusCode::OK);
        m.tls_handshakes.inc(&["ok"]);
        m.delivery.attempt("mcp-a");
        m.delivery.outcome("mcp-a", "delivered");
        m.delivery
            .set_depth(vec![("mcp-a".to_string(), "pending", 2)]);
        m.delivery.latency.observe(0.3);
        let store = store::StoreMetrics {
            commits: 3,
            appended_inputs: 5,
            duplicate_inputs: 1,
            commit_seconds_sum: 0.006,
            // Cumulative, as the store reports them: 1 ≤ 1 ms, 2 ≤ 2.5 ms,
            // the third above the last bound.
            commit_seconds_buckets: store::COMMIT_SECONDS_BUCKETS
                .iter()
                .map(|le| {
                    (
                        *le,
                        if *le < 0.001 {
                            0
                        } else if *le < 0.0025 {
                            1
                        } else {
                            2
                        },
                    )
                })
                .collect(),
            largest_batch: 2,
            writer_queue_depth: 0,
            wal_syncs: 2,
            wal_sync_seconds_sum: 0.004,
            intake_syncs: 3,
            intake_sync_seconds_sum: 0.005,
            intake_replayed: 1,
            intake_unjournaled: 2,
        };
        let journal = store::JournalStats {
            total: 6,
            pending: 1,
            processed: 4,
            failed: 1,
        };
        (m, store, journal)
    }

    #[test]
    fn renders_prometheus_text() {
        let (m, store, journal) = populated();
        let text = m.render(&store, Some(&journal));
        for line in [
            "# HELP cwsgw_hl7_messages_received_total HL7 v2 messages received (MLLP and HTTP), by message type.",
            "# TYPE cwsgw_hl7_messages_received_total counter",
            "cwsgw_hl7_messages_received_total{type=\"ADT^A01\"} 1",
            "cwsgw_hl7_acks_total{code=\"AA\",type=\"ADT^A01\"} 1",
            "cwsgw_control_id_reuse_total{source=\"st-mary\"} 1",
            "cwsgw_translations_total{outcome=\"ok\"} 3",
            "cwsgw_mllp_connections 2",
            "# TYPE cwsgw_mllp_connections gauge",
            "cwsgw_http_requests_total{route=\"/fhir/Patient/{id}\",status=\"2xx\"} 1",
            // A histogram: cumulative buckets, +Inf, sum and count.
            "# TYPE cwsgw_hl7_ack_latency_seconds histogram",
            "cwsgw_hl7_ack_latency_seconds_bucket{le=\"0.0005\"} 0",
            "cwsgw_hl7_ack_latency_seconds_bucket{le=\"0.001\"} 0",
            "cwsgw_hl7_ack_latency_seconds_bucket{le=\"0.0025\"} 1",
            "cwsgw_hl7_ack_latency_seconds_bucket{le=\"1\"} 1",
            "cwsgw_hl7_ack_latency_seconds_bucket{le=\"+Inf\"} 1",
            "cwsgw_hl7_ack_latency_seconds_sum 0.002",
            "cwsgw_hl7_ack_latency_seconds_count 1",
            // The store's histogram, rebuilt from its cumulative buckets.
            "cwsgw_journal_commit_seconds_bucket{le=\"0.0005\"} 0",
            "cwsgw_journal_commit_seconds_bucket{le=\"0.001\"} 1",
            "cwsgw_journal_commit_seconds_bucket{le=\"2.5\"} 2",
            "cwsgw_journal_commit_seconds_bucket{le=\"+Inf\"} 3",
            "cwsgw_journal_commit_seconds_sum 0.006",
            "cwsgw_journal_commit_seconds_count 3",
            "# HELP cwsgw_journal_commit_seconds Journal (group) commit latency.",
            "cwsgw_journal_inputs_total 5",
            "cwsgw_journal_duplicates_total 1",
            "cwsgw_store_wal_syncs_total 2",
            "cwsgw_store_wal_sync_seconds_total 0.004",
            "cwsgw_store_intake_syncs_total 3",
            "cwsgw_store_intake_sync_seconds_total 0.005",
            "cwsgw_store_intake_replayed_total 1",
            "cwsgw_store_writer_queue_depth 0",
            "cwsgw_store_intake_unjournaled 2",
            "cwsgw_journal_records{state=\"processed\"} 4",
            "cwsgw_delivery_attempts_total{endpoint=\"mcp-a\"} 1",
            "cwsgw_delivery_latency_seconds_bucket{le=\"0.5\"} 1",
            "# HELP cwsgw_delivery_latency_seconds Time from enqueue to the recipient's 2xx.",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        // Every HELP text ends with one full stop, not two.
        assert!(!text.contains(".."), "{text}");
        // The Prometheus text format, not OpenMetrics: no `# EOF`.
        assert!(!text.contains("# EOF"), "{text}");
    }

    /// Dashboards depend on the names and types: the same as before the
    /// exposition moved to the Prometheus client, each exactly once.
    #[test]
    fn exposition_names_and_types_are_unchanged() {
        let (m, store, journal) = populated();
        let text = m.render(&store, Some(&journal));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let expected = [
            "cwsgw_hl7_messages_received_total counter",
            "cwsgw_hl7_acks_total counter",
            "cwsgw_mllp_frame_errors_total counter",
            "cwsgw_mllp_connections gauge",
            "cwsgw_mllp_slots_exhausted_total counter",
            "cwsgw_http_connections gauge",
            "cwsgw_http_slots_exhausted_total counter",
            "cwsgw_hl7_ack_latency_seconds histogram",
            "cwsgw_hl7_journal_wait_seconds histogram",
            "cwsgw_control_id_reuse_total counter",
            "cwsgw_translations_total counter",
            "cwsgw_translate_queue_depth gauge",
            "cwsgw_translation_deferrals_total counter",
            "cwsgw_deadlines_overdue gauge",
            "cwsgw_http_requests_total counter",
            "cwsgw_tls_handshakes_total counter",
            "cwsgw_journal_commit_seconds histogram",
            "cwsgw_journal_inputs_total counter",
            "cwsgw_journal_duplicates_total counter",
            "cwsgw_store_wal_syncs_total counter",
            "cwsgw_store_intake_syncs_total counter",
            "cwsgw_store_intake_replayed_total counter",
            "cwsgw_store_wal_sync_seconds_total counter",
            "cwsgw_store_intake_sync_seconds_total counter",
            "cwsgw_store_writer_queue_depth gauge",
            "cwsgw_store_intake_unjournaled gauge",
            "cwsgw_journal_records gauge",
            "cwsgw_delivery_attempts_total counter",
            "cwsgw_delivery_outcomes_total counter",
            "cwsgw_outbox_depth gauge",
            "cwsgw_delivery_latency_seconds histogram",
            "cwsgw_adt_notifications_late_total counter",
        ]
        .map(|t| format!("# TYPE {t}"));
        assert_eq!(types, expected);
        // Every HELP line precedes its TYPE line.
        for t in &expected {
            let name = t.split(' ').nth(2).unwrap_or_default();
            let help = format!("# HELP {name} ");
            let (h, ty) = (text.find(&help), text.find(t.as_str()));
            assert!(h.is_some() && h < ty, "HELP for {name}");
        }
    }

    /// A configured label value is escaped, so no organization id can break
    /// the exposition or forge another series.
    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.control_id_reuse.inc("st\"mary\\x\ny");
        assert_eq!(m.control_id_reuse.get("st\"mary\\x\ny"), 1);
        let text = m.render(&store::StoreMetrics::default(), None);
        assert!(
            text.contains("cwsgw_control_id_reuse_total{source=\"st\\\"mary\\\\x\\ny\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn counters_gauges_and_histograms_read_back() {
        let m = Metrics::default();
        assert_eq!(m.hl7_acks.get(&["AA", "ADT^A01"]), 0);
        m.hl7_acks.inc(&["AA", "ADT^A01"]);
        m.hl7_acks.add(&["AA", "ADT^A01"], 2);
        assert_eq!(m.hl7_acks.get(&["AA", "ADT^A01"]), 3);
        assert_eq!(m.hl7_acks.get(&["AE", "ADT^A01"]), 0);
        m.http_requests.inc("/metrics", StatusCode::FORBIDDEN);
        m.http_requests.inc("/metrics", StatusCode::UNAUTHORIZED);
        assert_eq!(m.http_requests.get("/metrics", "4xx"), 2);
        assert_eq!(m.http_requests.get("/metrics", "2xx"), 0);
        m.ack_latency.observe(0.25);
        m.ack_latency.observe(0.5);
        assert_eq!(m.ack_latency.count_and_sum(), (2, 0.75));
        // A backlog gauge two racing updates took below zero shows 0.
        m.translate_queue_depth.fetch_sub(1, Ordering::Relaxed);
        m.http_connections.fetch_sub(1, Ordering::Relaxed);
        let text = m.render(&store::StoreMetrics::default(), None);
        assert!(text.contains("\ncwsgw_translate_queue_depth 0\n"), "{text}");
        assert!(text.contains("\ncwsgw_http_connections -1\n"), "{text}");
        // No journal numbers (the query failed): no journal series.
        assert!(!text.contains("cwsgw_journal_records"), "{text}");
    }

    /// A scrape within the limit reuses the text; a failed computation
    /// keeps the last one.
    #[tokio::test]
    async fn a_scrape_cache_computes_once_per_limit() {
        let cache = ScrapeCache::default();
        let hour = std::time::Duration::from_secs(3600);
        let calls = std::sync::atomic::AtomicU32::new(0);
        let compute = |text: Option<&'static str>| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move { text.map(str::to_string) }
        };
        assert_eq!(cache.get_or_compute(hour, || compute(Some("a"))).await, "a");
        assert_eq!(cache.get_or_compute(hour, || compute(Some("b"))).await, "a");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let now = std::time::Duration::ZERO;
        assert_eq!(cache.get_or_compute(now, || compute(None)).await, "a");
        assert_eq!(cache.get_or_compute(now, || compute(Some("c"))).await, "c");
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        let empty = ScrapeCache::default();
        assert_eq!(empty.get_or_compute(hour, || compute(None)).await, "");
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(StatusCode::OK), "2xx");
        assert_eq!(status_class(StatusCode::NO_CONTENT), "2xx");
        assert_eq!(status_class(StatusCode::NOT_MODIFIED), "3xx");
        assert_eq!(status_class(StatusCode::PAYLOAD_TOO_LARGE), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
        assert_eq!(status_class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
    }
}
