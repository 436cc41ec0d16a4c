//! Deadline clocks (docs/program-rules.md "Timelines the gateway tracks").
//!
//! A clock is opened by the event that starts it (a referral starts the
//! authorization decision; an accepted Task with an owner starts "ECM
//! provider told of assignment" and "SW told of enrollment"; a move out of
//! a single-plan county starts the plan determination; a streamlined
//! referral starts its 30-day window) and closed by the event that meets
//! it (the MCP's accept/reject closes the authorization decision). Due
//! times come from `cwsgw_program::due` with the holiday calendar
//! (`Calendar::default_ca()`, or `[calendar] holidays_file`).
//!
//! Persistence: the store's clock table (`Store::clock_upsert`/`clock_list`),
//! written **in the same `Store::complete_with` transaction** as the input
//! that opened or closed the clock. A clock's id is
//! `uuid5("clock|{code}|{subject}")`, so a replay replaces it instead of
//! adding a second one. States: `open`, `met`, `cancelled`.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use program::{Calendar, Clock};
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::{ClockRow, Store};

use super::error::CountyError;
use super::rid;
use crate::api::{authenticate, fhir_json, AppState};
use crate::auth::ClientCert;
use crate::config::{Config, OrgKind};

/// The holiday calendar: `calendar.holidays_file` (CSV `date,name`) when
/// configured, else the embedded California state holidays.
pub fn calendar_from_config(cfg: &Config) -> anyhow::Result<Calendar> {
    match &cfg.calendar.holidays_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("calendar.holidays_file {}: {e}", p.display()))?;
            Calendar::from_csv(&text)
                .map_err(|e| anyhow::anyhow!("calendar.holidays_file {}: {e}", p.display()))
        }
        None => Ok(Calendar::default_ca()),
    }
}

/// A clock to open.
#[derive(Debug, Clone)]
pub struct ClockSpec {
    pub clock: Clock,
    pub patient_id: String,
    /// What the clock is about (`Task/{id}`, `Patient/{id}`).
    pub subject: String,
    pub start: DateTime<Utc>,
    pub expedited: bool,
}

/// Id of the clock of (clock, subject).
pub fn clock_id(clock: Clock, subject: &str) -> String {
    rid(&format!("clock|{}|{subject}", clock.code()))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An open clock, due per `cwsgw_program::due`.
pub fn open(spec: &ClockSpec, cal: &Calendar) -> ClockRow {
    ClockRow {
        id: clock_id(spec.clock, &spec.subject),
        kind: spec.clock.code().to_string(),
        subject: spec.subject.clone(),
        patient_id: Some(spec.patient_id.clone()),
        started_at: spec.start,
        due_at: program::due(spec.clock, spec.start, spec.expedited, cal),
        state: "open".to_string(),
        closed_at: None,
    }
}

/// The clock, met at `at`; None when it is not open.
pub fn close(row: &ClockRow, at: DateTime<Utc>) -> Option<ClockRow> {
    (row.state == "open").then(|| ClockRow {
        state: "met".to_string(),
        closed_at: Some(at),
        ..row.clone()
    })
}

/// A clock as listed by `GET /ops/deadlines` and `cws-gateway deadlines`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClockView {
    pub id: String,
    pub clock: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    pub subject: String,
    pub start: String,
    pub due: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    pub overdue: bool,
}

impl ClockView {
    /// The view of a stored clock at `now`.
    pub fn of(r: &ClockRow, now: DateTime<Utc>) -> ClockView {
        ClockView {
            id: r.id.clone(),
            clock: r.kind.clone(),
            patient: r.patient_id.as_ref().map(|p| format!("Patient/{p}")),
            subject: r.subject.clone(),
            start: ts(r.started_at),
            due: ts(r.due_at),
            status: r.state.clone(),
            closed_at: r.closed_at.map(ts),
            overdue: r.state == "open" && r.due_at < now,
        }
    }
}

/// Most clocks one listing returns.
pub const MAX_LISTED: usize = 1000;

/// Clocks by due time: open ones (or all), optionally only those past due.
pub async fn list(
    store: &dyn Store,
    now: DateTime<Utc>,
    open_only: bool,
    overdue_only: bool,
) -> Result<Vec<ClockView>, store::StoreError> {
    let before = overdue_only.then_some(now);
    let rows = store
        .clock_list(open_only || overdue_only, before, None, MAX_LISTED)
        .await?;
    Ok(rows
        .iter()
        .map(|r| ClockView::of(r, now))
        .filter(|v| !overdue_only || v.overdue)
        .collect())
}

/// Open clocks of one subject (`Task/{id}`).
pub async fn open_for(
    store: &dyn Store,
    subject: &str,
) -> Result<Vec<ClockRow>, store::StoreError> {
    store.clock_list(true, None, Some(subject), 100).await
}

#[derive(Debug, Deserialize)]
pub struct DeadlineQuery {
    #[serde(default)]
    pub overdue: Option<bool>,
    #[serde(default)]
    pub all: Option<bool>,
}

/// `GET /ops/deadlines[?overdue=true][&all=true]` (operator): open clocks by due time.
pub async fn get_deadlines(
    State(state): State<AppState>,
    cert: ClientCert,
    headers: HeaderMap,
    Query(q): Query<DeadlineQuery>,
) -> Result<Response, CountyError> {
    let caller = authenticate(&state, &headers, &cert, &[OrgKind::Operator])?;
    let now = Utc::now();
    let items = list(
        state.store.as_ref(),
        now,
        !q.all.unwrap_or(false),
        q.overdue.unwrap_or(false),
    )
    .await?;
    // The clocks name patients: an operator `read`, audited (durable)
    // before the answer, naming every patient and subject listed.
    let mut entities: Vec<String> = Vec::new();
    let mut named = std::collections::HashSet::new();
    for c in &items {
        for e in c
            .patient
            .iter()
            .map(|p| format!("Patient/{p}"))
            .chain(std::iter::once(c.subject.clone()))
        {
            if named.insert(e.clone()) {
                entities.push(e);
            }
        }
    }
    // One record per `fhir::MAX_ENTITIES_PER_AUDIT` references (at least one).
    let chunks: Vec<&[String]> = if entities.is_empty() {
        vec![&[]]
    } else {
        entities
            .chunks(crate::fhir::MAX_ENTITIES_PER_AUDIT)
            .collect()
    };
    let records = chunks
        .into_iter()
        .map(|chunk| {
            crate::audit::new_audit(&crate::audit::AuditEntry {
                kind: "read",
                interaction: crate::audit::Interaction::SearchType,
                caller: &caller,
                patient_id: None,
                entities: chunk.to_vec(),
                detail: Some(format!("deadlines: {} clocks", items.len())),
                recorded: now,
            })
        })
        .collect();
    state.store.audit_append(records).await.map_err(|e| {
        tracing::error!(error = %e, "deadlines audit append failed; nothing disclosed");
        CountyError::Store(e)
    })?;
    let overdue = items.iter().filter(|c| c.overdue).count();
    state
        .metrics
        .deadlines_overdue
        .store(overdue as i64, std::sync::atomic::Ordering::Relaxed);
    Ok(fhir_json(
        StatusCode::OK,
        &json!({"now": ts(now), "overdue": overdue, "clocks": items}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn open_then_close_round_trips() {
        let cal = Calendar::default_ca();
        // Monday 23 November 2026, 10:00 Pacific: Thanksgiving week.
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 18, 0, 0).unwrap();
        let spec = ClockSpec {
            clock: Clock::AuthorizationDecision,
            patient_id: "p".into(),
            subject: "Task/t".into(),
            start,
            expedited: false,
        };
        let row = open(&spec, &cal);
        let v = ClockView::of(&row, start);
        assert_eq!(v.status, "open");
        assert!(!v.overdue);
        assert_eq!(v.due, "2026-12-03T07:59:59Z", "end of Wed 2 Dec Pacific");
        assert!(ClockView::of(&row, start + chrono::Duration::days(30)).overdue);
        let met = close(&row, start).unwrap();
        assert_eq!(met.state, "met");
        assert!(close(&met, start).is_none());
        assert_eq!(open(&spec, &cal).id, row.id, "deterministic id");
        let exp = ClockSpec {
            expedited: true,
            ..spec
        };
        assert_eq!(ts(open(&exp, &cal).due_at), "2026-11-26T18:00:00Z");
    }
}
