//! Deadline clocks (DOMAIN.md "Timelines the gateway tracks").
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
//! Persistence: until the store's `clock_upsert`/`clock_list` land on main,
//! each clock is a FHIR `Basic` resource written **in the same
//! `Store::complete` transaction** as the input that opened or closed it,
//! id `uuid5("clock|{code}|{focus}")`, in the reserved compartment
//! [`CLOCK_COMPARTMENT`] so that one `resources_by_patient` lists them all.
//! [`ClockView`] is the storage-independent shape; swapping the backing is
//! local to this module.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use program::{Calendar, Clock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::{ResourceWrite, Store};

use super::error::CountyError;
use super::rid;
use crate::api::{authenticate, fhir_json, AppState};
use crate::config::{Config, OrgKind};

/// The pseudo-compartment holding every clock record.
pub const CLOCK_COMPARTMENT: &str = "gateway-clocks";
const CLOCK_CS: &str = "/CodeSystem/gateway-clock";
const EXT: &str = "/StructureDefinition/gateway-clock-";

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
    pub focus: String,
    pub start: DateTime<Utc>,
    pub expedited: bool,
    /// The organization that must act.
    pub owner: Option<String>,
}

/// Id of the clock record of (clock, focus).
pub fn clock_id(clock: Clock, focus: &str) -> String {
    rid(&format!("clock|{}|{focus}", clock.code()))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The record of an open clock, as a store write.
pub fn open(base: &str, spec: &ClockSpec, cal: &Calendar) -> ResourceWrite {
    let due = program::due(spec.clock, spec.start, spec.expedited, cal);
    let mut ext = vec![
        json!({"url": format!("{base}{EXT}start"), "valueDateTime": ts(spec.start)}),
        json!({"url": format!("{base}{EXT}due"), "valueDateTime": ts(due)}),
        json!({"url": format!("{base}{EXT}status"), "valueCode": "open"}),
        json!({"url": format!("{base}{EXT}focus"), "valueReference": {"reference": spec.focus}}),
        json!({"url": format!("{base}{EXT}rule"), "valueString": spec.clock.rule(spec.expedited).to_string()}),
    ];
    if let Some(o) = &spec.owner {
        ext.push(json!({"url": format!("{base}{EXT}owner"), "valueReference": {"reference": format!("Organization/{o}")}}));
    }
    let id = clock_id(spec.clock, &spec.focus);
    ResourceWrite {
        resource_type: "Basic".into(),
        id: id.clone(),
        patient_id: Some(CLOCK_COMPARTMENT.into()),
        body: json!({
            "resourceType": "Basic",
            "id": id,
            "code": {"coding": [{"system": format!("{base}{CLOCK_CS}"), "code": spec.clock.code()}]},
            "subject": {"reference": format!("Patient/{}", spec.patient_id)},
            "extension": ext,
        }),
    }
}

fn ext_of<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    let suffix = format!("{EXT}{name}");
    body.get("extension")?.as_array()?.iter().find(|e| {
        e.get("url")
            .and_then(Value::as_str)
            .is_some_and(|u| u.ends_with(&suffix))
    })
}

/// Close a stored clock record at `at` (returns the write), or None when it
/// is not open.
pub fn close(base: &str, mut body: Value, at: DateTime<Utc>) -> Option<ResourceWrite> {
    let view = ClockView::from_body(&body)?;
    if view.status != "open" {
        return None;
    }
    if let Some(a) = body.get_mut("extension").and_then(Value::as_array_mut) {
        for e in a.iter_mut() {
            if e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with("-status"))
            {
                e["valueCode"] = json!("closed");
            }
        }
        a.push(json!({"url": format!("{base}{EXT}closed-at"), "valueDateTime": ts(at)}));
    }
    if let Some(m) = body.as_object_mut() {
        m.remove("meta");
    }
    Some(ResourceWrite {
        resource_type: "Basic".into(),
        id: view.id,
        patient_id: Some(CLOCK_COMPARTMENT.into()),
        body,
    })
}

/// A clock as listed by `GET /ops/deadlines` and `cws-gateway deadlines`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClockView {
    pub id: String,
    pub clock: String,
    pub patient: String,
    pub focus: String,
    pub start: String,
    pub due: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    pub overdue: bool,
}

impl ClockView {
    /// Read a clock record (overdue computed later).
    pub fn from_body(b: &Value) -> Option<ClockView> {
        let code = b.pointer("/code/coding/0/code")?.as_str()?.to_string();
        let dt = |n: &str| {
            ext_of(b, n)
                .and_then(|e| e.get("valueDateTime"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let rf = |n: &str| {
            ext_of(b, n)
                .and_then(|e| e.pointer("/valueReference/reference"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Some(ClockView {
            id: b.get("id")?.as_str()?.to_string(),
            clock: code,
            patient: b.pointer("/subject/reference")?.as_str()?.to_string(),
            focus: rf("focus").unwrap_or_default(),
            start: dt("start")?,
            due: dt("due")?,
            status: ext_of(b, "status")?.get("valueCode")?.as_str()?.to_string(),
            owner: rf("owner"),
            closed_at: dt("closed-at"),
            overdue: false,
        })
    }
}

/// Every clock, ordered by due time; `overdue_only` keeps open ones past due.
pub async fn list(
    store: &dyn Store,
    now: DateTime<Utc>,
    open_only: bool,
    overdue_only: bool,
) -> Result<Vec<ClockView>, store::StoreError> {
    let rows = store
        .resources_by_patient(CLOCK_COMPARTMENT, Some("Basic"))
        .await?;
    let mut out: Vec<ClockView> = rows
        .iter()
        .filter_map(|r| ClockView::from_body(&r.body))
        .map(|mut v| {
            let due = DateTime::parse_from_rfc3339(&v.due)
                .map(|d| d.with_timezone(&Utc))
                .ok();
            v.overdue = v.status == "open" && due.is_some_and(|d| d < now);
            v
        })
        .filter(|v| !open_only || v.status == "open")
        .filter(|v| !overdue_only || v.overdue)
        .collect();
    out.sort_by(|a, b| a.due.cmp(&b.due).then(a.id.cmp(&b.id)));
    Ok(out)
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
    headers: HeaderMap,
    Query(q): Query<DeadlineQuery>,
) -> Result<Response, CountyError> {
    authenticate(&state, &headers, &[OrgKind::Operator])?;
    let now = Utc::now();
    let items = list(
        state.store.as_ref(),
        now,
        !q.all.unwrap_or(false),
        q.overdue.unwrap_or(false),
    )
    .await?;
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
            focus: "Task/t".into(),
            start,
            expedited: false,
            owner: Some("mcp-a".into()),
        };
        let w = open("https://b", &spec, &cal);
        let v = ClockView::from_body(&w.body).unwrap();
        assert_eq!(v.status, "open");
        assert_eq!(v.due, "2026-12-03T07:59:59Z", "end of Wed 2 Dec Pacific");
        let closed = close("https://b", w.body.clone(), start).unwrap();
        assert_eq!(ClockView::from_body(&closed.body).unwrap().status, "closed");
        assert!(close("https://b", closed.body, start).is_none());
        let exp = ClockSpec {
            expedited: true,
            ..spec
        };
        assert_eq!(
            ClockView::from_body(&open("https://b", &exp, &cal).body)
                .unwrap()
                .due,
            "2026-11-26T18:00:00Z"
        );
    }
}
