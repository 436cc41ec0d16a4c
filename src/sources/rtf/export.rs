//! The month's Return Transmission File of one MCP: one row per ECM
//! referral Task the MCP authorizes (extension `authorizing-mcp`, else its
//! owner) that is active, or whose referral status was updated in the
//! month, with the three CLR elements (status, status date, closure
//! reason). The file carries PHI: it goes only to the writer given, never
//! into logs; the caller audits the patients it names ([`Exported::patients`]).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use futures_util::future::join_all;
use serde_json::Value;
use store::{ResourceQuery, Store};

use super::dialect::{Dialect, Source};
use crate::records::clr;
use crate::sources::task_update::authorizing_mcp;

/// Task statuses of a referral that is still open.
const ACTIVE: &[&str] = &["requested", "accepted", "in-progress", "on-hold"];
/// Tasks read per store page.
const PAGE: usize = 1000;
/// Patients read per store query (the store's `_id` limit).
const IDS_PER_QUERY: usize = store::search::MAX_QUERY_IDS;
/// Store reads of one page in flight at once (below the default read
/// pool of 16 connections, so an export leaves room for the API).
const READS_IN_FLIGHT: usize = 8;

/// A calendar month (`YYYY-MM`), in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    pub first: NaiveDate,
}

impl Month {
    /// `YYYY-MM`.
    pub fn parse(text: &str) -> Option<Month> {
        let (y, m) = text.trim().split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let first = NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)?;
        Some(Month { first })
    }

    /// The first day of the next month.
    pub fn next(&self) -> NaiveDate {
        let (y, m) = if self.first.month() == 12 {
            (self.first.year() + 1, 1)
        } else {
            (self.first.year(), self.first.month() + 1)
        };
        NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(self.first)
    }

    pub fn contains(&self, d: NaiveDate) -> bool {
        d >= self.first && d < self.next()
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Exported {
    /// Data rows written.
    pub rows: usize,
    /// Tasks read.
    pub scanned: usize,
    /// `Patient/{id}` of every member in the file (for the audit record).
    pub patients: Vec<String>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot write the file: {0}")]
    Write(String),
}

impl From<csv::Error> for ExportError {
    fn from(e: csv::Error) -> Self {
        ExportError::Write(e.to_string())
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The date part of an RFC 3339 time or a FHIR date.
fn date_of(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()
}

/// The Task's referral status date: the CLR status-date extension, else
/// `lastModified`, else `authoredOn`.
pub fn status_date(task: &Value) -> Option<NaiveDate> {
    clr::status_date_of(task)
        .or_else(|| s(task, "/lastModified"))
        .or_else(|| s(task, "/authoredOn"))
        .and_then(date_of)
}

/// The Task's CLR status: its `businessStatus` code; a `requested` Task
/// that carries none is `received` (as the Task update path reads it).
pub fn clr_status(task: &Value) -> Option<&str> {
    clr::status_of(task).or_else(|| (s(task, "/status") == Some("requested")).then_some("received"))
}

/// The MCP a Task's loop is tracked by: the authorizing MCP, else the owner.
pub fn mcp_of(task: &Value) -> Option<String> {
    authorizing_mcp(task).or_else(|| task.get("owner").and_then(crate::disclosure::org_of))
}

/// Does the Task belong in `mcp`'s file for `month`?
pub fn in_month(task: &Value, mcp: &str, month: &Month) -> bool {
    if mcp_of(task).as_deref() != Some(mcp) {
        return false;
    }
    // Not yet made by the month's end.
    if s(task, "/authoredOn")
        .and_then(date_of)
        .is_some_and(|d| d >= month.next())
    {
        return false;
    }
    let active = s(task, "/status").is_some_and(|st| ACTIVE.contains(&st));
    active || status_date(task).is_some_and(|d| month.contains(d))
}

/// The Medi-Cal CIN of a Patient.
pub fn cin_of(patient: &Value) -> Option<&str> {
    patient
        .get("identifier")?
        .as_array()?
        .iter()
        .find(|i| s(i, "/system").is_some_and(|sys| sys.ends_with("/identifier/medi-cal-cin")))
        .and_then(|i| s(i, "/value"))
}

/// Write `mcp`'s RTF for `month` as CSV: the header, then one row per
/// Task [`in_month`], in the store's order. Reads the Tasks a page at a
/// time and their Patients by id; the authorization date comes from the
/// Task's authorization-decision clock.
pub async fn write_month<W: Write>(
    store: &dyn Store,
    dialect: &Dialect,
    mcp: &str,
    month: &Month,
    out: W,
) -> Result<Exported, ExportError> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(dialect.headers())?;
    let mut done = Exported::default();
    let mut named = BTreeSet::new();
    let wants_auth_date = dialect.position(Source::AuthorizationDate).is_some();
    let mut after: Option<(DateTime<Utc>, String)> = None;
    loop {
        let page = store
            .resource_search(&ResourceQuery {
                resource_type: "Task".into(),
                after: after.clone(),
                limit: PAGE,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.last_updated, last.id.clone()));
        done.scanned += page.len();
        let tasks: Vec<&Value> = page
            .iter()
            .map(|r| &r.body)
            .filter(|t| in_month(t, mcp, month))
            .collect();
        let ids: BTreeSet<String> = tasks
            .iter()
            .filter_map(|t| {
                t.get("for")
                    .and_then(|r| crate::disclosure::ref_id(r, "Patient"))
            })
            .collect();
        let mut patients: HashMap<String, Value> = HashMap::new();
        let ids: Vec<String> = ids.into_iter().collect();
        // The page's reads run a few at a time: each is a round trip to
        // the store's read pool, so one after another the export would
        // wait on hand-offs, not on the database.
        let queries: Vec<ResourceQuery> = ids
            .chunks(IDS_PER_QUERY)
            .map(|chunk| ResourceQuery {
                resource_type: "Patient".into(),
                ids: chunk.to_vec(),
                limit: chunk.len(),
                ..Default::default()
            })
            .collect();
        for group in queries.chunks(READS_IN_FLIGHT) {
            let found = join_all(group.iter().map(|q| store.resource_search(q))).await;
            for f in found {
                patients.extend(f?.into_iter().map(|p| (p.id, p.body)));
            }
        }
        let mut auth_dates = Vec::with_capacity(tasks.len());
        if wants_auth_date {
            for group in tasks.chunks(READS_IN_FLIGHT) {
                auth_dates
                    .extend(join_all(group.iter().map(|t| authorization_date(store, t))).await);
            }
        } else {
            auth_dates.extend(tasks.iter().map(|_| Ok(None)));
        }
        for (task, auth_date) in tasks.into_iter().zip(auth_dates) {
            let auth_date = auth_date?;
            let pid = task
                .get("for")
                .and_then(|r| crate::disclosure::ref_id(r, "Patient"))
                .unwrap_or_default();
            let patient = patients.get(&pid);
            let row: Vec<String> = dialect
                .column
                .iter()
                .map(|c| cell(dialect, c.source, task, patient, mcp, auth_date))
                .collect();
            w.write_record(&row)?;
            done.rows += 1;
            if !pid.is_empty() {
                named.insert(format!("Patient/{pid}"));
            }
        }
        if page.len() < PAGE {
            break;
        }
    }
    w.flush().map_err(|e| ExportError::Write(e.to_string()))?;
    done.patients = named.into_iter().collect();
    Ok(done)
}

/// When the Task's authorization was decided (its clock met), if it was.
async fn authorization_date(
    store: &dyn Store,
    task: &Value,
) -> Result<Option<NaiveDate>, store::StoreError> {
    if matches!(s(task, "/status"), Some("requested") | None) {
        return Ok(None);
    }
    let subject = format!("Task/{}", s(task, "/id").unwrap_or_default());
    let id = crate::clocks::clock_id(program::Clock::AuthorizationDecision, &subject);
    let clocks = crate::clocks::for_subject(store, &subject).await?;
    Ok(clocks
        .iter()
        .find(|c| c.id == id)
        .and_then(|c| c.closed_at)
        .map(|t| t.date_naive()))
}

/// One cell.
fn cell(
    d: &Dialect,
    source: Source,
    task: &Value,
    patient: Option<&Value>,
    mcp: &str,
    auth_date: Option<NaiveDate>,
) -> String {
    let p = |ptr: &str| patient.and_then(|p| s(p, ptr)).unwrap_or("").to_string();
    let status = s(task, "/status").unwrap_or("");
    match source {
        Source::MemberCin => patient.and_then(cin_of).unwrap_or("").to_string(),
        Source::MemberFamily => p("/name/0/family"),
        Source::MemberGiven => p("/name/0/given/0"),
        Source::MemberBirthDate => patient
            .and_then(|p| s(p, "/birthDate"))
            .and_then(date_of)
            .map(|x| d.date(x))
            .unwrap_or_default(),
        Source::McpId => mcp.to_string(),
        Source::EcmProviderId => task
            .get("owner")
            .and_then(crate::disclosure::org_of)
            .filter(|o| o != mcp)
            .unwrap_or_default(),
        Source::ReferralId => s(task, "/id").unwrap_or("").to_string(),
        Source::ReferralDate => s(task, "/authoredOn")
            .and_then(date_of)
            .map(|x| d.date(x))
            .unwrap_or_default(),
        Source::AuthorizationStatus => match status {
            "requested" => d.authorization.pending.clone(),
            "rejected" => d.authorization.not_authorized.clone(),
            // Cancelled before a decision: no authorization to report.
            "cancelled" if auth_date.is_none() => String::new(),
            _ => d.authorization.authorized.clone(),
        },
        Source::AuthorizationDate => auth_date.map(|x| d.date(x)).unwrap_or_default(),
        Source::ReferralStatus => clr_status(task)
            .and_then(|c| d.status.get(c))
            .cloned()
            .unwrap_or_default(),
        Source::ReferralStatusDate => status_date(task).map(|x| d.date(x)).unwrap_or_default(),
        Source::ClosureReason => clr::closure_reason_of(task)
            .and_then(|c| d.closure_reason.get(c))
            .cloned()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn months_parse_and_bound() {
        let m = Month::parse("2026-12").unwrap();
        assert_eq!(m.next(), NaiveDate::from_ymd_opt(2027, 1, 1).unwrap());
        assert!(m.contains(NaiveDate::from_ymd_opt(2026, 12, 31).unwrap()));
        assert!(!m.contains(NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()));
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", ""] {
            assert!(Month::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_task_is_in_its_mcps_month_when_active_or_updated_in_it() {
        let m = Month::parse("2026-11").unwrap();
        let base = "https://gw.example";
        let mut t = json!({"resourceType": "Task", "id": "t1", "status": "accepted",
            "authoredOn": "2026-10-02T10:00:00Z",
            "extension": [{"url": format!("{base}/StructureDefinition/authorizing-mcp"),
                "valueReference": {"reference": "Organization/mcp-a"}}],
            "owner": {"reference": "Organization/ecm-x"}});
        assert!(in_month(&t, "mcp-a", &m));
        assert!(!in_month(&t, "mcp-b", &m), "another plan's Task");
        t["status"] = json!("completed");
        t["lastModified"] = json!("2026-10-30T10:00:00Z");
        assert!(!in_month(&t, "mcp-a", &m), "closed the month before");
        clr::set_status_date(&mut t, base, "2026-11-04T08:00:00Z");
        assert!(in_month(&t, "mcp-a", &m), "closed in the month");
        t["authoredOn"] = json!("2026-12-01T00:00:00Z");
        t["status"] = json!("requested");
        assert!(!in_month(&t, "mcp-a", &m), "made after the month");
        // A requested Task without a code reads as received.
        assert_eq!(clr_status(&t), Some("received"));
        t["status"] = json!("accepted");
        assert_eq!(clr_status(&t), None);
    }
}
