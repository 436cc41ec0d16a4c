//! The closed-loop referral (CLR) compliance view: for the referrals a plan
//! authorizes, or those of a county's children, how many loops are open
//! at each CLR status, which clocks are overdue, how many days the
//! decision and the assignment took, and the share of notices delivered on
//! time. One function, [`view`], serves `GET /ops/referrals`, the
//! `cws-gateway referrals` command and the `cwsgw_referral*` metrics
//! ([`render_metrics`]).
//!
//! The figures are aggregates: counts, days and ratios, labelled by CLR
//! status, clock code and plan id, never by member. How a referral is
//! counted is data, `mappings/referral/compliance.toml` ([`Rules`]), beside
//! the CLR vocabulary (`records::clr`):
//! - a referral is a Task naming its authorizing plan (the
//!   `authorizing-mcp` extension every referral Task carries);
//! - its CLR status is the one in `businessStatus`
//!   ([`crate::records::clr::status_of`]); a Task with none (or one the
//!   vocabulary does not know) counts under the status its FHIR status
//!   implies ([`Rules::natural_status`]); the loop is open unless the
//!   status is `final`;
//! - days to decision: `Task.authoredOn` to the moment the
//!   `authorization-decision` clock was met; days to assignment: to the
//!   moment the `ecm-provider-told-of-assignment` clock was met (the
//!   provider received the referral package); median and 90th percentile
//!   by nearest rank, in days to two decimals;
//! - notices on time: of the notice clocks met or past due, the share met
//!   at or before their due time (a clock still open and not yet due is
//!   not counted; a cancelled one neither). The delivery worker meets a
//!   notice clock at the delivery of the notice it measures, so its closed
//!   time is the delivery time; `outbox::notices_of` lists one Task's
//!   notices with the audited delivery of each, which this aggregate does
//!   not read (an audit scan per member);
//! - filters: `mcp` (the authorizing plan's id), `county` (a county
//!   organization's id or county name: the referring county, else the
//!   county whose case the member is in), `from`/`to` (on
//!   `Task.authoredOn`).
//!
//! Cost: one keyset scan of the Task table in pages of
//! [`store::search::MAX_SEARCH_PAGE`], then one indexed clock read per
//! referral kept (and, with a county filter, one EpisodeOfCare read per
//! referral not made by a county), at most [`MAX_REFERRALS`] referrals
//! (then `truncated`). Reads only: it never writes or commits.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{ClockRow, ResourceQuery, Store, StoreError};

use crate::clocks::ts;
use crate::config::{Config, OrgKind};
use crate::records::clr::{status_of, Vocabulary, TASK_STATUSES};
use crate::resources::AUTHORIZING_MCP_EXT;

/// File of the counting rules under the mappings tree.
pub const FILE: &str = "referral/compliance.toml";
/// The plan a referral is counted under when its authorizing plan is not
/// (or no longer) a configured MCP.
pub const UNKNOWN_MCP: &str = "unknown";
/// Most referrals one view reads; more are left out (`truncated`).
pub const MAX_REFERRALS: usize = 20_000;

/// How referrals are counted (`mappings/referral/compliance.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// The CLR status of a Task without one, by its FHIR status.
    pub natural_status: BTreeMap<String, String>,
    /// The same for a Task whose owner is an ECM provider.
    #[serde(default)]
    pub natural_status_with_provider: BTreeMap<String, String>,
    /// The clock whose meeting is the decision.
    pub decision_clock: String,
    /// The clock whose meeting is the assignment reaching the provider.
    pub assignment_clock: String,
    /// The notices whose timeliness is reported.
    pub notice_clocks: Vec<String>,
}

/// Why the view could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The filters name something unknown; one line each, naming the parameter.
    #[error("{}", .0.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join("; "))]
    Filter(Vec<(String, &'static str)>),
    /// The counting rules or the CLR vocabulary are not usable.
    #[error("{0}")]
    Rules(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Rules {
    /// Parse the TOML text and check it against the CLR vocabulary: every
    /// FHIR Task status has a natural status, each one a status the
    /// vocabulary allows with that Task status, and every clock is known.
    pub fn parse(text: &str, vocab: &Vocabulary) -> Result<Rules, ViewError> {
        let bad = |m: String| ViewError::Rules(format!("{FILE}: {m}"));
        let r: Rules = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let mut problems = Vec::new();
        for t in TASK_STATUSES.iter().copied() {
            if !r.natural_status.contains_key(t) {
                problems.push(format!(
                    "natural_status names no status for Task.status {t}"
                ));
            }
        }
        for (table, map) in [
            ("natural_status", &r.natural_status),
            (
                "natural_status_with_provider",
                &r.natural_status_with_provider,
            ),
        ] {
            for (task_status, code) in map {
                match vocab.status(code) {
                    None => problems.push(format!(
                        "{table}.{task_status}: {code:?} is not a referral status of referral/clr.toml"
                    )),
                    Some(s) if !s.task_status.iter().any(|t| t == task_status) => {
                        problems.push(format!(
                            "{table}.{task_status}: {code} goes with Task.status {}",
                            s.task_status.join(" or ")
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        let clocks = [&r.decision_clock, &r.assignment_clock]
            .into_iter()
            .chain(r.notice_clocks.iter());
        for c in clocks {
            if program::Clock::from_code(c).is_none() {
                problems.push(format!("{c:?} is not a clock code"));
            }
        }
        if problems.is_empty() {
            Ok(r)
        } else {
            Err(bad(problems.join("; ")))
        }
    }

    /// The rules from `dir/referral/compliance.toml` when `dir` holds it,
    /// else the built-in file.
    pub fn load(dir: Option<&Path>, vocab: &Vocabulary) -> Result<Rules, ViewError> {
        let text = crate::embedded::mapping_file(dir, FILE)
            .map_err(|e| ViewError::Rules(format!("{}: cannot read: {}", e.path, e.reason)))?
            .unwrap_or_default();
        Rules::parse(&text, vocab)
    }
}

/// Which referrals to count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// The authorizing plan's organization id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<String>,
    /// A county organization's id, or a county name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub county: Option<String>,
    /// Referrals made at or after (RFC 3339, or a date: its start in California).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Referrals made at or before (RFC 3339, or a date: its end in California).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// A checked [`Filter`].
#[derive(Debug, Clone, Default)]
struct Checked {
    mcp: Option<String>,
    /// The county organizations that match.
    counties: Option<Vec<String>>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// `s` as an instant: RFC 3339, or a date taken as the start (or the end)
/// of that day in California.
fn instant(s: &str, end: bool) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    if end {
        Some(program::pacific::end_of_local_day(d))
    } else {
        let before = d.pred_opt()?;
        Some(program::pacific::end_of_local_day(before) + Duration::seconds(1))
    }
}

impl Filter {
    /// Every problem with the filter, each naming its parameter.
    fn check(&self, cfg: &Config) -> Result<Checked, ViewError> {
        let mut problems = Vec::new();
        let mut out = Checked::default();
        if let Some(m) = &self.mcp {
            if cfg.organization(m).is_some_and(|o| o.kind == OrgKind::Mcp) {
                out.mcp = Some(m.clone());
            } else {
                problems.push(("mcp names no configured plan".to_string(), "mcp"));
            }
        }
        if let Some(c) = &self.county {
            let ids: Vec<String> = cfg
                .organizations
                .iter()
                .filter(|o| o.kind == OrgKind::County)
                .filter(|o| {
                    o.id == *c
                        || o.county
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(c))
                })
                .map(|o| o.id.clone())
                .collect();
            if ids.is_empty() {
                problems.push((
                    "county names no configured county organization or county".to_string(),
                    "county",
                ));
            }
            out.counties = Some(ids);
        }
        for (v, end, name) in [(&self.from, false, "from"), (&self.to, true, "to")] {
            if let Some(s) = v {
                match instant(s, end) {
                    Some(t) if end => out.to = Some(t),
                    Some(t) => out.from = Some(t),
                    None => problems.push((
                        format!("{name} is not a date (YYYY-MM-DD) or an RFC 3339 time"),
                        name,
                    )),
                }
            }
        }
        if let (Some(f), Some(t)) = (out.from, out.to) {
            if f > t {
                problems.push(("from is after to".to_string(), "from"));
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(ViewError::Filter(problems))
        }
    }
}

/// One referral as the view counts it: ids, times and clocks only.
#[derive(Debug, Clone, PartialEq)]
pub struct Referral {
    pub task_id: String,
    /// The authorizing plan.
    pub mcp: String,
    /// `Task.authoredOn`.
    pub authored: Option<DateTime<Utc>>,
    /// The CLR status counted.
    pub status: String,
    /// The clocks of `Task/{task_id}`.
    pub clocks: Vec<ClockRow>,
}

/// Median and 90th percentile of a set of durations, in days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Days {
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
}

/// Notice clocks by outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notices {
    /// Met at or before the due time.
    pub on_time: u64,
    /// Met after the due time.
    pub late: u64,
    /// Open past the due time.
    pub overdue: u64,
    /// `on_time / (on_time + late + overdue)`; absent when all are 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_time_ratio: Option<f64>,
    /// The same by notice clock.
    pub by_clock: BTreeMap<String, NoticeCounts>,
}

/// One notice clock's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NoticeCounts {
    pub on_time: u64,
    pub late: u64,
    pub overdue: u64,
}

/// The compliance figures (`GET /ops/referrals`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub now: String,
    pub filter: Filter,
    /// Referrals counted.
    pub referrals: u64,
    /// More than [`MAX_REFERRALS`] referrals matched; the rest are not counted.
    pub truncated: bool,
    /// Open loops by CLR status.
    pub open: BTreeMap<String, u64>,
    /// Closed loops by CLR status.
    pub closed: BTreeMap<String, u64>,
    /// Open loops by plan, then CLR status.
    pub open_by_mcp: BTreeMap<String, BTreeMap<String, u64>>,
    /// Open clocks of the referrals past their due time, by clock code.
    pub overdue_clocks: BTreeMap<String, u64>,
    pub days_to_decision: Days,
    pub days_to_assignment: Days,
    pub notices: Notices,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The nearest-rank percentile `p` (0–100) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn days(mut v: Vec<f64>) -> Days {
    v.sort_by(f64::total_cmp);
    Days {
        count: v.len() as u64,
        median: percentile(&v, 50.0).map(round2),
        p90: percentile(&v, 90.0).map(round2),
    }
}

fn days_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_seconds().max(0) as f64 / 86_400.0
}

/// The figures of `referrals` at `now` (pure: the table the tests check).
pub fn compute(
    referrals: &[Referral],
    vocab: &Vocabulary,
    rules: &Rules,
    now: DateTime<Utc>,
    filter: Filter,
    truncated: bool,
) -> View {
    let mut v = View {
        now: ts(now),
        filter,
        truncated,
        referrals: referrals.len() as u64,
        ..View::default()
    };
    let mut decision = Vec::new();
    let mut assignment = Vec::new();
    for r in referrals {
        let closed = vocab.status(&r.status).is_some_and(|s| s.r#final);
        if closed {
            *v.closed.entry(r.status.clone()).or_default() += 1;
        } else {
            *v.open.entry(r.status.clone()).or_default() += 1;
            *v.open_by_mcp
                .entry(r.mcp.clone())
                .or_default()
                .entry(r.status.clone())
                .or_default() += 1;
        }
        for c in &r.clocks {
            let overdue = c.state == "open" && c.due_at < now;
            if overdue {
                *v.overdue_clocks.entry(c.kind.clone()).or_default() += 1;
            }
            let met_at = c.closed_at.filter(|_| c.state == "met");
            if let (Some(at), Some(start)) = (met_at, r.authored) {
                if c.kind == rules.decision_clock {
                    decision.push(days_between(start, at));
                }
                if c.kind == rules.assignment_clock {
                    assignment.push(days_between(start, at));
                }
            }
            if rules.notice_clocks.contains(&c.kind) {
                let n = v.notices.by_clock.entry(c.kind.clone()).or_default();
                match met_at {
                    Some(at) if at <= c.due_at => n.on_time += 1,
                    Some(_) => n.late += 1,
                    None if overdue => n.overdue += 1,
                    None => {}
                }
            }
        }
    }
    v.days_to_decision = days(decision);
    v.days_to_assignment = days(assignment);
    let n = &mut v.notices;
    for c in n.by_clock.values() {
        n.on_time += c.on_time;
        n.late += c.late;
        n.overdue += c.overdue;
    }
    n.by_clock.retain(|_, c| c.on_time + c.late + c.overdue > 0);
    let counted = n.on_time + n.late + n.overdue;
    n.on_time_ratio = (counted > 0).then(|| {
        let r = n.on_time as f64 / counted as f64;
        (r * 10_000.0).round() / 10_000.0
    });
    v
}

fn org_ref(v: Option<&Value>) -> Option<String> {
    let r = v?.get("reference")?.as_str()?;
    crate::resources::index::normalize_reference(r)?
        .strip_prefix("Organization/")
        .map(str::to_string)
}

/// The authorizing plan of a referral Task (None: not a referral).
fn authorizing_mcp(task: &Value) -> Option<String> {
    crate::resources::extension_org(task, AUTHORIZING_MCP_EXT)
}

/// The CLR status a referral Task counts under.
pub fn counted_status(task: &Value, vocab: &Vocabulary, rules: &Rules, cfg: &Config) -> String {
    if let Some(code) = status_of(task).filter(|c| vocab.status(c).is_some()) {
        return code.to_string();
    }
    let fhir = task.get("status").and_then(Value::as_str).unwrap_or("");
    let with_provider = org_ref(task.get("owner"))
        .and_then(|o| cfg.organization(&o))
        .is_some_and(|o| o.kind == OrgKind::EcmProvider);
    with_provider
        .then(|| rules.natural_status_with_provider.get(fhir))
        .flatten()
        .or_else(|| rules.natural_status.get(fhir))
        .cloned()
        .unwrap_or_else(|| "received".to_string())
}

/// The county organizations a referral belongs to: the referring county,
/// else the county whose case the member is in.
async fn counties_of(
    store: &dyn Store,
    cfg: &Config,
    task: &Value,
    patient: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let is_county = |o: &str| {
        cfg.organization(o)
            .is_some_and(|o| o.kind == OrgKind::County)
    };
    if let Some(r) = org_ref(task.get("requester")).filter(|r| is_county(r)) {
        return Ok(vec![r]);
    }
    let Some(p) = patient else {
        return Ok(Vec::new());
    };
    Ok(store
        .resources_by_patient(p, Some("EpisodeOfCare"))
        .await?
        .iter()
        .filter_map(|e| org_ref(e.body.get("managingOrganization")))
        .filter(|o| is_county(o))
        .collect())
}

/// The referrals `filter` selects, read from the store (at most
/// [`MAX_REFERRALS`]; the flag says whether more matched).
async fn load(
    store: &dyn Store,
    cfg: &Config,
    vocab: &Vocabulary,
    rules: &Rules,
    f: &Checked,
) -> Result<(Vec<Referral>, bool), StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let q = ResourceQuery {
            resource_type: "Task".into(),
            after: after.clone(),
            limit: store::search::MAX_SEARCH_PAGE,
            ..ResourceQuery::default()
        };
        let page = store.resource_search(&q).await?;
        let Some(last) = page.last() else {
            return Ok((out, false));
        };
        after = Some((last.last_updated, last.id.clone()));
        let full = page.len() >= store::search::MAX_SEARCH_PAGE;
        for t in &page {
            let Some(mcp) = authorizing_mcp(&t.body) else {
                continue;
            };
            // A label from a closed set: a plan no longer configured is `unknown`.
            let configured = cfg
                .organization(&mcp)
                .is_some_and(|o| o.kind == OrgKind::Mcp);
            let mcp = if configured {
                mcp
            } else {
                UNKNOWN_MCP.to_string()
            };
            if f.mcp.as_ref().is_some_and(|m| *m != mcp) {
                continue;
            }
            let authored = t
                .body
                .get("authoredOn")
                .and_then(Value::as_str)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|d| d.with_timezone(&Utc));
            let in_period = f
                .from
                .is_none_or(|from| authored.is_some_and(|a| a >= from))
                && f.to.is_none_or(|to| authored.is_some_and(|a| a <= to));
            if !in_period {
                continue;
            }
            if let Some(wanted) = &f.counties {
                let have = counties_of(store, cfg, &t.body, t.patient_id.as_deref()).await?;
                if !have.iter().any(|c| wanted.contains(c)) {
                    continue;
                }
            }
            if out.len() == MAX_REFERRALS {
                return Ok((out, true));
            }
            let subject = format!("Task/{}", t.id);
            out.push(Referral {
                task_id: t.id.clone(),
                mcp,
                authored,
                status: counted_status(&t.body, vocab, rules, cfg),
                clocks: crate::clocks::for_subject(store, &subject).await?,
            });
        }
        if !full {
            return Ok((out, false));
        }
    }
}

/// The compliance view of the referrals `filter` selects, at `now`: what
/// `GET /ops/referrals`, `cws-gateway referrals` and `/metrics` show.
pub async fn view(
    store: &dyn Store,
    cfg: &Config,
    filter: Filter,
    now: DateTime<Utc>,
) -> Result<View, ViewError> {
    let checked = filter.check(cfg)?;
    let dir = cfg.mappings.dir.as_deref();
    let vocab = Vocabulary::load(dir).map_err(|e| ViewError::Rules(e.to_string()))?;
    let rules = Rules::load(dir, &vocab)?;
    let (referrals, truncated) = load(store, cfg, &vocab, &rules, &checked).await?;
    Ok(compute(&referrals, &vocab, &rules, now, filter, truncated))
}

/// The view as a table for the command line.
pub fn table(v: &View) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "referrals {} (as of {})", v.referrals, v.now);
    if v.truncated {
        let _ = writeln!(
            s,
            "  (only the first {MAX_REFERRALS} referrals are counted)"
        );
    }
    for (title, map) in [("open loops", &v.open), ("closed loops", &v.closed)] {
        let _ = writeln!(s, "{title}:");
        if map.is_empty() {
            let _ = writeln!(s, "  none");
        }
        for (k, n) in map {
            let _ = writeln!(s, "  {k:<32} {n:>6}");
        }
    }
    let _ = writeln!(s, "overdue clocks:");
    if v.overdue_clocks.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for (k, n) in &v.overdue_clocks {
        let _ = writeln!(s, "  {k:<32} {n:>6}");
    }
    let fmt = |d: Option<f64>| d.map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
    for (title, d) in [
        ("days to decision", &v.days_to_decision),
        ("days to assignment", &v.days_to_assignment),
    ] {
        let _ = writeln!(
            s,
            "{title:<34} n={} median={} p90={}",
            d.count,
            fmt(d.median),
            fmt(d.p90)
        );
    }
    let n = &v.notices;
    let ratio = n
        .on_time_ratio
        .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0));
    let _ = writeln!(
        s,
        "notices on time                    {ratio} (on time {}, late {}, overdue {})",
        n.on_time, n.late, n.overdue
    );
    s
}

/// How long a scrape reuses the last computed figures.
pub const METRICS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

type Labels = Vec<(String, String)>;

/// A family of gauges that shows its HELP and TYPE lines even with no
/// series (a bare `Family` shows nothing), so dashboards find every name.
#[derive(Debug, Default)]
struct Gauges<G: EncodeMetric + Default + std::fmt::Debug>(Family<Labels, G>);

impl<G> EncodeMetric for Gauges<G>
where
    G: EncodeMetric + prometheus_client::metrics::TypedMetric + Default + std::fmt::Debug,
{
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// The view as Prometheus text (appended to `/metrics`). Labels are CLR
/// status codes, clock codes and configured plan ids: closed sets.
pub fn render_metrics(v: &View) -> String {
    type Float = Gauge<f64, AtomicU64>;
    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    fn int(n: u64) -> i64 {
        i64::try_from(n).unwrap_or(i64::MAX)
    }
    let mut r = Registry::default();
    let open = Gauges::<Gauge>::default();
    for (mcp, by) in &v.open_by_mcp {
        for (status, n) in by {
            open.0
                .get_or_create(&labels(&[("status", status), ("mcp", mcp)]))
                .set(int(*n));
        }
    }
    r.register(
        "cwsgw_referrals_open",
        "Open closed-loop referrals, by CLR status and authorizing plan",
        open,
    );
    let closed = Gauges::<Gauge>::default();
    for (status, n) in &v.closed {
        closed
            .0
            .get_or_create(&labels(&[("status", status)]))
            .set(int(*n));
    }
    r.register(
        "cwsgw_referrals_closed",
        "Closed referral loops, by CLR status",
        closed,
    );
    let overdue = Gauges::<Gauge>::default();
    for (clock, n) in &v.overdue_clocks {
        overdue
            .0
            .get_or_create(&labels(&[("clock", clock)]))
            .set(int(*n));
    }
    r.register(
        "cwsgw_referral_clocks_overdue",
        "Open clocks of referrals past their due time, by clock",
        overdue,
    );
    let days = Gauges::<Float>::default();
    for (step, d) in [
        ("decision", &v.days_to_decision),
        ("assignment", &v.days_to_assignment),
    ] {
        for (q, x) in [("0.5", d.median), ("0.9", d.p90)] {
            if let Some(x) = x {
                days.0
                    .get_or_create(&labels(&[("step", step), ("quantile", q)]))
                    .set(x);
            }
        }
    }
    r.register(
        "cwsgw_referral_days",
        "Days from the referral to the decision (step decision) or to the assignment reaching the provider (step assignment): median (quantile 0.5) and 90th percentile (0.9)",
        days,
    );
    if let Some(ratio) = v.notices.on_time_ratio {
        let g = Float::default();
        g.set(ratio);
        r.register(
            "cwsgw_referral_notices_on_time_ratio",
            "Share of the notices met or past due that were delivered by their due time",
            g,
        );
    }
    let counted = Gauge::<i64, AtomicI64>::default();
    counted.set(int(v.referrals));
    r.register(
        "cwsgw_referrals_counted",
        "Referrals the compliance figures count",
        counted,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;
    use std::sync::Arc;

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
    }

    fn clock(
        kind: &str,
        task: &str,
        due: DateTime<Utc>,
        closed: Option<DateTime<Utc>>,
    ) -> ClockRow {
        ClockRow {
            id: format!("{kind}-{task}"),
            kind: kind.into(),
            subject: format!("Task/{task}"),
            patient_id: Some("p".into()),
            started_at: at(2, 0),
            due_at: due,
            state: if closed.is_some() { "met" } else { "open" }.into(),
            closed_at: closed,
        }
    }

    fn referral(id: &str, mcp: &str, status: &str, clocks: Vec<ClockRow>) -> Referral {
        Referral {
            task_id: id.into(),
            mcp: mcp.into(),
            authored: Some(at(2, 0)),
            status: status.into(),
            clocks,
        }
    }

    fn rules() -> (Vocabulary, Rules) {
        let v = Vocabulary::builtin();
        let r = Rules::load(None, &v).unwrap();
        (v, r)
    }

    #[test]
    fn the_shipped_rules_load_and_give_every_task_status_a_clr_status() {
        let (v, r) = rules();
        for t in TASK_STATUSES.iter().copied() {
            let code = &r.natural_status[t];
            assert!(v.status(code).is_some(), "{t} -> {code}");
        }
        assert_eq!(r.decision_clock, "authorization-decision");
        assert!(r
            .notice_clocks
            .contains(&"sw-notified-of-enrollment".to_string()));
    }

    #[test]
    fn bad_rules_are_refused_naming_each_problem() {
        let v = Vocabulary::builtin();
        let e = Rules::parse(
            "decision_clock = \"nope\"\nassignment_clock = \"authorization-decision\"\nnotice_clocks = []\n[natural_status]\nrequested = \"closed\"\n",
            &v,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Task.status accepted"), "{e}");
        assert!(
            e.contains("natural_status.requested: closed goes with"),
            "{e}"
        );
        assert!(e.contains("\"nope\" is not a clock code"), "{e}");
        assert!(Rules::parse("bogus = 1", &v).is_err());
    }

    /// A set of referrals and their clocks → the figures.
    #[test]
    fn figures_of_a_table_of_referrals() {
        let (v, r) = rules();
        let now = at(30, 0);
        let day = |d: u32| at(2 + d, 0);
        let refs = vec![
            // Decided in 1 day; enrolment notice on time; assignment told
            // on day 4, on time.
            referral(
                "t1",
                "mcp-a",
                "assigned",
                vec![
                    clock("authorization-decision", "t1", day(5), Some(day(1))),
                    clock("sw-notified-of-enrollment", "t1", day(6), Some(day(2))),
                    clock(
                        "ecm-provider-told-of-assignment",
                        "t1",
                        day(10),
                        Some(day(4)),
                    ),
                ],
            ),
            // Decided in 3 days; enrolment notice late; assignment still
            // open past due (overdue).
            referral(
                "t2",
                "mcp-a",
                "authorized",
                vec![
                    clock("authorization-decision", "t2", day(5), Some(day(3))),
                    clock("sw-notified-of-enrollment", "t2", day(4), Some(day(6))),
                    clock("ecm-provider-told-of-assignment", "t2", day(10), None),
                ],
            ),
            // Not decided, past due.
            referral(
                "t3",
                "mcp-b",
                "received",
                vec![clock("authorization-decision", "t3", day(5), None)],
            ),
            // Closed, denied in 2 days; a notice not yet due is not counted.
            referral(
                "t4",
                "mcp-b",
                "not-authorized",
                vec![
                    clock("authorization-decision", "t4", day(5), Some(day(2))),
                    clock("pcp-told-of-assignment", "t4", at(30, 1), None),
                ],
            ),
        ];
        let out = compute(&refs, &v, &r, now, Filter::default(), false);
        assert_eq!(out.referrals, 4);
        assert_eq!(
            out.open,
            BTreeMap::from([
                ("assigned".into(), 1),
                ("authorized".into(), 1),
                ("received".into(), 1)
            ])
        );
        assert_eq!(out.closed, BTreeMap::from([("not-authorized".into(), 1)]));
        assert_eq!(out.open_by_mcp["mcp-a"].len(), 2);
        assert_eq!(
            out.open_by_mcp["mcp-b"],
            BTreeMap::from([("received".into(), 1)])
        );
        assert_eq!(
            out.overdue_clocks,
            BTreeMap::from([
                ("authorization-decision".into(), 1),
                ("ecm-provider-told-of-assignment".into(), 1)
            ])
        );
        // Decisions took 1, 2 and 3 days: median 2, p90 3 (nearest rank).
        assert_eq!(
            out.days_to_decision,
            Days {
                count: 3,
                median: Some(2.0),
                p90: Some(3.0)
            }
        );
        assert_eq!(out.days_to_assignment.count, 1);
        assert_eq!(out.days_to_assignment.median, Some(4.0));
        // Notices: on time t1 ×2; late t2 enrolment; overdue t2 assignment.
        let n = &out.notices;
        assert_eq!((n.on_time, n.late, n.overdue), (2, 1, 1));
        assert_eq!(n.on_time_ratio, Some(0.5));
        assert_eq!(n.by_clock["sw-notified-of-enrollment"].late, 1);
        assert!(!n.by_clock.contains_key("pcp-told-of-assignment"));
        // Nothing counted: no ratio, no days.
        let none = compute(&[], &v, &r, now, Filter::default(), false);
        assert_eq!(none.notices.on_time_ratio, None);
        assert_eq!(none.days_to_decision.median, None);
        // The metrics carry the same figures, labelled by codes and plans.
        let text = render_metrics(&out);
        for line in [
            "cwsgw_referrals_open{status=\"received\",mcp=\"mcp-b\"} 1",
            "cwsgw_referrals_closed{status=\"not-authorized\"} 1",
            "cwsgw_referral_clocks_overdue{clock=\"authorization-decision\"} 1",
            "cwsgw_referral_days{step=\"decision\",quantile=\"0.5\"} 2.0",
            "cwsgw_referral_notices_on_time_ratio 0.5",
            "cwsgw_referrals_counted 4",
            "# TYPE cwsgw_referrals_open gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(table(&out).contains("notices on time                    50.0%"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    fn demo() -> Config {
        Config::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml")).unwrap()
    }

    #[test]
    fn a_task_without_a_clr_code_counts_by_its_fhir_status() {
        let (v, r) = rules();
        let cfg = demo();
        let task = |status: &str, owner: &str| json!({"resourceType": "Task", "status": status, "owner": {"reference": format!("Organization/{owner}")}});
        assert_eq!(
            counted_status(&task("requested", "mcp-a"), &v, &r, &cfg),
            "received"
        );
        assert_eq!(
            counted_status(&task("accepted", "mcp-a"), &v, &r, &cfg),
            "authorized"
        );
        assert_eq!(
            counted_status(&task("accepted", "ecm-compass"), &v, &r, &cfg),
            "assigned"
        );
        assert_eq!(
            counted_status(&task("failed", "ecm-compass"), &v, &r, &cfg),
            "closed"
        );
        let mut coded = task("in-progress", "ecm-compass");
        coded["businessStatus"] = v.business_status("https://x", "outreach").unwrap();
        assert_eq!(counted_status(&coded, &v, &r, &cfg), "outreach");
    }

    #[test]
    fn filters_name_every_problem() {
        let cfg = demo();
        let f = Filter {
            mcp: Some("ecm-compass".into()),
            county: Some("Kern".into()),
            from: Some("yesterday".into()),
            to: Some("2026-11-30".into()),
        };
        let Err(ViewError::Filter(p)) = f.check(&cfg) else {
            panic!("accepted")
        };
        let params: Vec<&str> = p.iter().map(|(_, n)| *n).collect();
        assert_eq!(params, ["mcp", "county", "from"]);
        let ok = Filter {
            mcp: Some("mcp-a".into()),
            county: Some("fresno".into()),
            from: Some("2026-11-01".into()),
            to: Some("2026-11-30T12:00:00Z".into()),
        }
        .check(&cfg)
        .unwrap();
        assert_eq!(ok.counties, Some(vec!["county-fresno".to_string()]));
        // A date starts at midnight in California (PST, UTC-8).
        assert_eq!(
            ok.from,
            Some(Utc.with_ymd_and_hms(2026, 11, 1, 7, 0, 0).unwrap())
        );
    }

    fn stored_task(id: &str, pid: &str, requester: &str, mcp: &str, authored: &str) -> Value {
        json!({
            "resourceType": "Task", "id": id, "status": "requested", "intent": "order",
            "for": {"reference": format!("Patient/{pid}")},
            "authoredOn": authored,
            "requester": {"reference": format!("Organization/{requester}")},
            "owner": {"reference": format!("Organization/{mcp}")},
            "extension": [{"url": format!("https://gw.example{AUTHORIZING_MCP_EXT}"),
                           "valueReference": {"reference": format!("Organization/{mcp}")}}],
        })
    }

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            store::SqliteStore::open(&dir.path().join("gw.db"), Default::default()).unwrap(),
        );
        (dir, store)
    }

    /// Through a real store: only referral Tasks count, and the plan,
    /// county and period filters select them.
    #[tokio::test]
    async fn the_view_of_a_store_filters_by_plan_county_and_period() {
        let cfg = demo();
        let (_dir, store) = sqlite().await;
        let writes = vec![
            stored_task("t1", "p1", "county-fresno", "mcp-a", "2026-11-02T17:00:00Z"),
            stored_task("t2", "p2", "mcp-b", "mcp-b", "2026-11-20T17:00:00Z"),
            stored_task("t3", "p3", "mcp-b", "mcp-b", "2026-11-21T17:00:00Z"),
            // A plan no longer configured: counted under `unknown`.
            stored_task("t4", "p4", "mcp-gone", "mcp-gone", "2026-11-21T17:00:00Z"),
            // Not a referral: no authorizing plan.
            json!({"resourceType": "Task", "id": "x", "status": "requested", "intent": "order"}),
            // p2's case is Fresno's.
            json!({"resourceType": "EpisodeOfCare", "id": "e2", "status": "active",
                   "patient": {"reference": "Patient/p2"},
                   "managingOrganization": {"reference": "Organization/county-fresno"}}),
        ];
        store
            .put_resources(writes.into_iter().map(crate::resources::write_of).collect())
            .await
            .unwrap();
        store
            .clock_upsert(vec![clock("authorization-decision", "t1", at(9, 8), None)])
            .await
            .unwrap();
        let now = at(30, 0);
        let all = view(store.as_ref(), &cfg, Filter::default(), now)
            .await
            .unwrap();
        assert_eq!(all.referrals, 4);
        assert_eq!(all.open["received"], 4);
        assert_eq!(all.open_by_mcp[UNKNOWN_MCP]["received"], 1);
        assert_eq!(all.overdue_clocks["authorization-decision"], 1);
        let of = |f: Filter| {
            let store = store.clone();
            let cfg = cfg.clone();
            async move { view(store.as_ref(), &cfg, f, now).await.unwrap().referrals }
        };
        let mcp_b = Filter {
            mcp: Some("mcp-b".into()),
            ..Filter::default()
        };
        assert_eq!(of(mcp_b).await, 2);
        let fresno = Filter {
            county: Some("Fresno".into()),
            ..Filter::default()
        };
        assert_eq!(
            of(fresno).await,
            2,
            "t1 referred by the county, t2 its case"
        );
        let period = Filter {
            from: Some("2026-11-20".into()),
            to: Some("2026-11-20".into()),
            ..Filter::default()
        };
        assert_eq!(of(period).await, 1);
        assert_eq!(store.metrics().commits, 2, "the view itself writes nothing");
    }

    /// What one view costs on a store of 2,000 referrals with 3 clocks
    /// each (printed; run with `--nocapture` to see it). The bound here is
    /// loose: it catches a change of order, not a slow machine.
    #[tokio::test]
    async fn cost_of_a_view_of_two_thousand_referrals() {
        let cfg = demo();
        let (_dir, store) = sqlite().await;
        let n = 2000;
        for chunk in (0..n).collect::<Vec<_>>().chunks(300) {
            let writes = chunk
                .iter()
                .map(|i| {
                    crate::resources::write_of(stored_task(
                        &format!("t{i}"),
                        &format!("p{i}"),
                        "county-fresno",
                        if i % 2 == 0 { "mcp-a" } else { "mcp-b" },
                        "2026-11-02T17:00:00Z",
                    ))
                })
                .collect();
            store.put_resources(writes).await.unwrap();
            let clocks = chunk
                .iter()
                .flat_map(|i| {
                    let t = format!("t{i}");
                    [
                        clock("authorization-decision", &t, at(9, 8), Some(at(3, 0))),
                        clock("sw-notified-of-enrollment", &t, at(10, 8), Some(at(4, 0))),
                        clock("ecm-provider-told-of-assignment", &t, at(20, 8), None),
                    ]
                })
                .collect();
            store.clock_upsert(clocks).await.unwrap();
        }
        let started = std::time::Instant::now();
        let v = view(store.as_ref(), &cfg, Filter::default(), at(30, 0))
            .await
            .unwrap();
        let took = started.elapsed();
        println!("referrals_view: {n} referrals, 3 clocks each: {took:?}");
        assert_eq!(v.referrals, n as u64);
        assert_eq!(
            v.overdue_clocks["ecm-provider-told-of-assignment"],
            n as u64
        );
        assert_eq!(v.notices.on_time, n as u64);
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    }
}
