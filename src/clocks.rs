//! Deadline clocks (docs/program-rules.md "Timelines the gateway tracks").
//!
//! A clock is opened by the event that starts it (a referral starts the
//! authorization decision; an accepted Task with an owner starts "ECM
//! provider told of assignment" and "SW told of enrollment"; a move out of
//! a single-plan county starts the plan determination; a streamlined
//! referral starts its 30-day window; the referral Task's lifecycle opens
//! the authorization periods, the 30-day assessment, the provider change
//! and the member's Notice of Action: `sources::task_update`) and closed by
//! the event that meets it (the MCP's accept/reject closes the
//! authorization decision; the delivery of a notice closes the clock that
//! measures it: [`met_by_delivery`], [`adt_clock_subject`]; an assessment
//! closes the assessment clock: [`assessment_received`]), or cancelled
//! when the referral's loop closes first ([`cancel`]). Due
//! times come from `cwsgw_program::due` with the holiday calendar
//! (`Calendar::default_ca()`, or `[calendar] holidays_file`).
//!
//! Persistence: the store's clock table (`Store::clock_upsert`/`clock_list`),
//! written **in the same `Store::complete_with` transaction** as the input
//! that opened or closed the clock. A clock's id is
//! `uuid5("clock|{code}|{subject}")`, so a replay replaces it instead of
//! adding a second one. States: `open`, `met`, `cancelled`.

use chrono::{DateTime, SecondsFormat, Utc};
use program::{Calendar, Clock};
use serde::{Deserialize, Serialize};
use store::{ClockRow, Store};

use crate::config::Config;
use crate::resources::rid;

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

pub fn ts(t: DateTime<Utc>) -> String {
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

/// The clock, cancelled at `at` (the loop closed before the clock could be
/// met: a referral withdrawn before the decision, an authorization period
/// of a closed Task); None when it is not open.
pub fn cancel(row: &ClockRow, at: DateTime<Utc>) -> Option<ClockRow> {
    (row.state == "open").then(|| ClockRow {
        state: "cancelled".to_string(),
        closed_at: Some(at),
        ..row.clone()
    })
}

/// An ECM assessment arrived for the member at `at`: every open 30-day
/// `ecm-assessment` clock of `patient_id` among `clocks`, met at `at`
/// (empty when none is open). The assessment clock is opened when a
/// referral Task is first assigned to an ECM provider (subject `Task/{id}`,
/// seed 000 step 7); the writer of the assessment (QuestionnaireResponse,
/// DocumentReference) closes it with this, in its own transaction, over
/// the clocks [`open_assessments`] read.
pub fn assessment_received(
    clocks: &[ClockRow],
    patient_id: &str,
    at: DateTime<Utc>,
) -> Vec<ClockRow> {
    clocks
        .iter()
        .filter(|c| c.kind == Clock::EcmAssessment.code())
        .filter(|c| c.patient_id.as_deref() == Some(patient_id))
        .filter_map(|c| close(c, at))
        .collect()
}

/// The open `ecm-assessment` clocks of a member: those of each of the
/// member's referral Tasks.
pub async fn open_assessments(
    store: &dyn Store,
    patient_id: &str,
) -> Result<Vec<ClockRow>, store::StoreError> {
    let tasks = store
        .resources_by_patient_types(patient_id, &["Task"])
        .await?;
    let mut out = Vec::new();
    for t in tasks {
        let rows = open_for(store, &format!("Task/{}", t.id)).await?;
        out.extend(
            rows.into_iter()
                .filter(|c| c.kind == Clock::EcmAssessment.code()),
        );
    }
    Ok(out)
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

/// The clocks a delivered outbox row meets, as `(clock id, what)`: the
/// notice it is. A referral package to the Task's new owner (rule relation
/// `task.owner`) is the ECM provider told of its assignment; a Task's
/// status or referral package to a county is the social worker told of the
/// enrollment. Other deliveries meet none (ADT notifications meet theirs
/// through [`adt_clock_subject`]).
pub fn met_by_delivery(
    cfg: &Config,
    payload: &crate::outbox::Payload,
    recipient: &str,
) -> Vec<String> {
    let Some(task) = payload.resources.iter().find(|r| r.starts_with("Task/")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if payload.relation == "task.owner" && payload.package == "referral" {
        out.push(clock_id(Clock::EcmProviderToldOfAssignment, task));
    }
    let to_county = cfg
        .organization(recipient)
        .is_some_and(|o| o.kind == crate::config::OrgKind::County);
    if to_county && matches!(payload.package.as_str(), "task_status" | "referral") {
        out.push(clock_id(Clock::SwNotifiedOfEnrollment, task));
    }
    out
}

/// Every clock of one subject (`Task/{id}`), open or not.
pub async fn for_subject(
    store: &dyn Store,
    subject: &str,
) -> Result<Vec<ClockRow>, store::StoreError> {
    store.clock_list(false, None, Some(subject), 100).await
}

/// The subject of the 24-hour "ADT data to the assigned ECM provider" clock
/// of one notification: its focus (the Encounter), the recipient and the
/// journal record of the ADT message (one clock per message and provider).
pub fn adt_clock_subject(
    payload: &crate::outbox::Payload,
    recipient: &str,
    journal_id: store::JournalId,
) -> Option<String> {
    let focus = payload.focus.as_ref().or(payload.resources.first())?;
    Some(format!("{focus}@{recipient}#{journal_id}"))
}

/// One open 24-hour clock (docs/program-rules.md timelines: ADT data to the assigned ECM provider
/// within 24 hours) per ADT notification queued for an ECM provider; the
/// delivery worker closes it when the notification is delivered.
pub fn adt_clocks(
    cfg: &Config,
    deliveries: &[store::NewDelivery],
    received: DateTime<Utc>,
    journal_id: store::JournalId,
) -> Vec<store::ClockRow> {
    let calendar = program::Calendar::default_ca();
    deliveries
        .iter()
        .filter(|d| {
            cfg.organization(&d.endpoint)
                .is_some_and(|o| o.kind == crate::config::OrgKind::EcmProvider)
        })
        .filter_map(|d| {
            let p = crate::outbox::Payload::parse(&d.payload)?;
            p.event.as_ref()?;
            let subject = adt_clock_subject(&p, &d.endpoint, journal_id)?;
            let spec = ClockSpec {
                clock: program::Clock::AdtToEcmProvider,
                patient_id: p.patient.clone(),
                subject,
                start: p.event_time.unwrap_or(received),
                expedited: false,
            };
            Some(open(&spec, &calendar))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_notice_names_the_clock_it_meets() {
        let cfg = Config::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"),
        )
        .unwrap();
        let payload = |relation: &str, package: &str| crate::outbox::Payload {
            rule: "r".into(),
            relation: relation.into(),
            purpose: "care_coordination".into(),
            package: package.into(),
            patient: "p1".into(),
            resources: vec!["ServiceRequest/s1".into(), "Task/t1".into()],
            event: None,
            focus: None,
            event_time: None,
        };
        let assignment = clock_id(Clock::EcmProviderToldOfAssignment, "Task/t1");
        let sw = clock_id(Clock::SwNotifiedOfEnrollment, "Task/t1");
        assert_eq!(
            met_by_delivery(&cfg, &payload("task.owner", "referral"), "ecm-compass"),
            vec![assignment]
        );
        assert_eq!(
            met_by_delivery(
                &cfg,
                &payload("referring_org", "task_status"),
                "county-fresno"
            ),
            vec![sw]
        );
        assert!(
            met_by_delivery(&cfg, &payload("referring_org", "task_status"), "mcp-b").is_empty()
        );
        assert!(
            met_by_delivery(&cfg, &payload("case_county", "written"), "county-fresno").is_empty()
        );
    }
    use chrono::TimeZone;

    #[test]
    fn an_assessment_meets_only_the_members_open_assessment_clocks() {
        let cal = Calendar::default_ca();
        let start = Utc.with_ymd_and_hms(2026, 12, 24, 18, 0, 0).unwrap();
        let spec = |clock, patient: &str, task: &str| ClockSpec {
            clock,
            patient_id: patient.into(),
            subject: format!("Task/{task}"),
            start,
            expedited: false,
        };
        let mine = open(&spec(Clock::EcmAssessment, "p1", "t1"), &cal);
        let other_task = open(&spec(Clock::EcmAssessment, "p1", "t2"), &cal);
        let already = close(&open(&spec(Clock::EcmAssessment, "p1", "t3"), &cal), start).unwrap();
        let other_member = open(&spec(Clock::EcmAssessment, "p2", "t4"), &cal);
        let other_clock = open(&spec(Clock::ProviderChangeRequest, "p1", "t1"), &cal);
        let at = start + chrono::Duration::days(3);
        let met = assessment_received(
            &[
                mine.clone(),
                other_task.clone(),
                already,
                other_member,
                other_clock,
            ],
            "p1",
            at,
        );
        let ids: Vec<&str> = met.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, [mine.id.as_str(), other_task.id.as_str()]);
        assert!(met
            .iter()
            .all(|c| c.state == "met" && c.closed_at == Some(at)));
        // Due 30 calendar days after Christmas Eve: the end of Sat 23 Jan 2027.
        assert_eq!(ts(mine.due_at), "2027-01-24T07:59:59Z");
        let cancelled = cancel(&mine, at).unwrap();
        assert_eq!(cancelled.state, "cancelled");
        assert!(cancel(&cancelled, at).is_none());
    }

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
