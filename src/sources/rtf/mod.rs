//! The monthly ECM Return Transmission File (RTF), both ways.
//!
//! - **Import** (`POST /ecm/rtf[?mcp=ID]`, `text/csv`): an ECM provider (or
//!   the plan) returns the month's file; each row names a referral Task and
//!   carries the three CLR elements (Referral Status, Date of Referral Status
//!   Update, Reason for Referral Closure — DHCS CLR guidance; the FAQ lets a
//!   plan close a loop as "Services Received" on the provider's RTF). Every
//!   row is checked (column count, required cells, CIN format, codes known to
//!   the dialect, dates, the Task exists, belongs to the plan and the caller
//!   is its performer, the CIN is the Task's member); a bad row is reported
//!   (line, column, problem) and the others applied. An applied row is a Task
//!   update like `PUT /fhir/Task/{id}`: checked by
//!   [`task_update::transition`], journaled as the same `FhirWrite` (so
//!   recovery re-derives it as a PUT), derived by [`task_update::derive`]
//!   and routed — notifications fire as for a PUT. A row that changes
//!   nothing (the Task already has the status and reason) is counted
//!   unchanged: importing the same file twice changes nothing the second
//!   time.
//! - **Export** ([`export::write_month`], `GET /ops/rtf?mcp=ID&month=YYYY-MM`
//!   and `cws-gateway report rtf`): the month's file of one plan.
//!
//! The layout is data: [`dialect`] (`mappings/rtf/{name}.toml`, chosen by
//! the plan's `rtf_dialect`). The file carries PHI; logs carry counts only.

pub mod dialect;
pub mod export;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use store::Store;

use super::referral::now_secs;
use super::task_update::{self, Party};
use super::Ingress;
use crate::audit::{self, AuditEntry, Interaction};
use crate::auth::Caller;
use crate::config::{Config, OrgKind};
use crate::edge::{body_rejection, fhir_json, ApiError, ClientCert};
use crate::journal;
use crate::records::clr::Vocabulary;
use crate::resources::strip_meta;
use crate::state::Core;
use dialect::{Dialect, Source};

/// A Medi-Cal CIN: eight digits and a letter (the county case-event
/// schemas' pattern).
pub fn valid_cin(cin: &str) -> bool {
    let b = cin.as_bytes();
    b.len() == 9 && b[..8].iter().all(u8::is_ascii_digit) && b[8].is_ascii_uppercase()
}

/// The dialect of plan `mcp` (its `rtf_dialect`, else `default`).
pub fn dialect_for(cfg: &Config, mcp: &str, vocab: &Vocabulary) -> Result<Dialect, ApiError> {
    let name = cfg
        .organization(mcp)
        .and_then(|o| o.rtf_dialect.clone())
        .unwrap_or_else(|| dialect::DEFAULT.to_string());
    Dialect::load(cfg.mappings.dir.as_deref(), &name, vocab).map_err(|e| {
        tracing::error!(error = %e, "RTF dialect not loaded");
        ApiError::Internal(format!("the plan's RTF layout is not available: {e}"))
    })
}

/// The CLR vocabulary of the configuration's mappings.
pub fn vocabulary(cfg: &Config) -> Result<Vocabulary, ApiError> {
    Vocabulary::load(cfg.mappings.dir.as_deref()).map_err(|e| {
        tracing::error!(error = %e, "CLR vocabulary not loaded");
        ApiError::Internal("the referral vocabulary is not available".into())
    })
}

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowProblem {
    /// The file's line (the header is line 1).
    pub line: u64,
    /// The column's header, when one column is at fault.
    pub column: Option<String>,
    pub problem: String,
}

/// What an import did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Imported {
    /// Data rows read.
    pub rows: usize,
    /// Tasks updated (ids, file order).
    pub applied: Vec<String>,
    /// Rows that changed nothing (the Task already had them).
    pub unchanged: usize,
    /// Every problem, row by row.
    pub problems: Vec<RowProblem>,
}

impl Imported {
    /// Rows refused.
    pub fn refused(&self) -> usize {
        let mut lines: Vec<u64> = self.problems.iter().map(|p| p.line).collect();
        lines.dedup();
        lines.len()
    }

    /// The OperationOutcome: one `error` issue per row problem (expression
    /// `line[N].Header`), and an `information` issue with the counts.
    pub fn outcome(&self) -> Value {
        let mut issues: Vec<Value> = self
            .problems
            .iter()
            .map(|p| {
                let at = match &p.column {
                    Some(c) => format!("line {}, column {c}", p.line),
                    None => format!("line {}", p.line),
                };
                let expr = match &p.column {
                    Some(c) => format!("line[{}].{c}", p.line),
                    None => format!("line[{}]", p.line),
                };
                json!({"severity": "error", "code": "invalid",
                    "diagnostics": format!("{at}: {}", p.problem), "expression": [expr]})
            })
            .collect();
        issues.push(json!({"severity": "information", "code": "informational",
            "diagnostics": format!("{} rows: {} applied, {} unchanged, {} refused",
                self.rows, self.applied.len(), self.unchanged, self.refused())}));
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

/// A row's cells by source, after the static checks.
struct Row {
    line: u64,
    cin: String,
    task_id: String,
    status: String,
    reason: Option<String>,
}

/// Check one record against the dialect; every problem is pushed.
fn read_row(
    d: &Dialect,
    line: u64,
    rec: &csv::StringRecord,
    problems: &mut Vec<RowProblem>,
) -> Option<Row> {
    let start = problems.len();
    let mut bad = |column: Option<&str>, problem: String| {
        problems.push(RowProblem {
            line,
            column: column.map(str::to_string),
            problem,
        })
    };
    if rec.len() != d.column.len() {
        bad(
            None,
            format!("{} columns, the header has {}", rec.len(), d.column.len()),
        );
        return None;
    }
    let cell = |s: Source| -> Option<&str> {
        d.position(s)
            .and_then(|i| rec.get(i))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    for (i, c) in d.column.iter().enumerate() {
        let v = rec.get(i).map(str::trim).unwrap_or("");
        if c.required && v.is_empty() {
            bad(Some(&c.header), "is required".into());
            continue;
        }
        if v.is_empty() {
            continue;
        }
        match c.source {
            Source::MemberCin if !valid_cin(v) => bad(
                Some(&c.header),
                "is not a Medi-Cal CIN (eight digits and a capital letter)".into(),
            ),
            Source::ReferralId if !crate::config::valid_fhir_id(v) => {
                bad(Some(&c.header), "is not a referral id".into())
            }
            Source::ReferralStatus if d.status_code(v).is_none() => bad(
                Some(&c.header),
                format!(
                    "is not a referral status of this file (known: {})",
                    d.status.values().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Source::ClosureReason if d.closure_code(v).is_none() => bad(
                Some(&c.header),
                format!(
                    "is not a closure reason of this file (known: {})",
                    d.closure_reason
                        .values()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Source::MemberBirthDate
            | Source::ReferralDate
            | Source::AuthorizationDate
            | Source::ReferralStatusDate
                if d.parse_date(v).is_none() =>
            {
                bad(
                    Some(&c.header),
                    format!("is not a date written {}", d.date_format),
                )
            }
            _ => {}
        }
    }
    if problems.len() > start {
        return None;
    }
    Some(Row {
        line,
        cin: cell(Source::MemberCin)?.to_string(),
        task_id: cell(Source::ReferralId)?.to_string(),
        status: d.status_code(cell(Source::ReferralStatus)?)?.to_string(),
        reason: cell(Source::ClosureReason)
            .and_then(|v| d.closure_code(v))
            .map(str::to_string),
    })
}

/// The FHIR Task status a CLR status (with its closure reason) puts a Task
/// in, from `from`: `from` itself when it fits, else the first the
/// vocabulary lists that a performer may move to. `None` when none fits.
pub fn target_status(
    vocab: &Vocabulary,
    from: &str,
    status: &str,
    reason: Option<&str>,
) -> Option<String> {
    let st = vocab.status(status)?;
    let fits = |t: &String| {
        reason
            .and_then(|r| vocab.closure_reason(r))
            .is_none_or(|r| r.task_status.contains(t))
    };
    let candidates: Vec<&String> = st.task_status.iter().filter(|t| fits(t)).collect();
    if candidates.iter().any(|t| t.as_str() == from) {
        return Some(from.to_string());
    }
    let allowed = task_update::allowed(from, Party::Performer);
    candidates
        .into_iter()
        .find(|t| allowed.contains(&t.as_str()))
        .cloned()
}

/// Import a file for `caller` under plan `mcp`'s dialect. A malformed
/// header refuses the whole file (422); otherwise every row is reported
/// or applied.
pub async fn import(
    ingress: &Ingress,
    store: &dyn Store,
    caller: &Caller,
    mcp: &str,
    bytes: &[u8],
) -> Result<Imported, ApiError> {
    let cfg = &ingress.cfg;
    let vocab = vocabulary(cfg)?;
    let d = dialect_for(cfg, mcp, &vocab)?;
    let base = cfg.server.canonical_base.as_str();
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut records = reader.records();
    let header = match records.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => return Err(ApiError::invalid(format!("line 1: {e}"), None)),
        None => return Err(ApiError::invalid("the file is empty", None)),
    };
    let got: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    let want = d.headers();
    if got.len() != want.len()
        || got
            .iter()
            .zip(&want)
            .any(|(g, w)| !g.eq_ignore_ascii_case(w))
    {
        return Err(ApiError::invalid(
            format!(
                "line 1: the header is not the {} layout's: expected {}",
                d.name,
                want.join(",")
            ),
            None,
        ));
    }
    let mut out = Imported::default();
    let mut refused_refs = Vec::new();
    let mut refused_members = std::collections::HashSet::new();
    for rec in records {
        out.rows += 1;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                out.problems.push(RowProblem {
                    line,
                    column: None,
                    problem: format!("not readable as CSV: {}", csv_kind(&e)),
                });
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let Some(row) = read_row(&d, line, &rec, &mut out.problems) else {
            continue;
        };
        match apply_row(ingress, store, caller, mcp, &d, &vocab, base, &row).await? {
            Applied::Updated => out.applied.push(row.task_id.clone()),
            Applied::Unchanged => out.unchanged += 1,
            Applied::Refused {
                column,
                problem,
                not_theirs,
            } => {
                if let Some(member) = not_theirs {
                    refused_refs.push(format!("Task/{}", row.task_id));
                    if let Some(p) = member.filter(|p| refused_members.insert(p.clone())) {
                        refused_refs.push(format!("Patient/{p}"));
                    }
                }
                out.problems.push(RowProblem {
                    line: row.line,
                    column: column
                        .and_then(|s| d.position(s))
                        .map(|i| d.column[i].header.clone()),
                    problem,
                });
            }
        }
    }
    // Rows naming Tasks that are not the caller's: a refusal, audited
    // (durable before the answer), like a refused PUT: the Tasks and the
    // members of those that exist, so each member's accounting of
    // disclosures finds it.
    for chunk in refused_refs.chunks(crate::gate::MAX_ENTITIES_PER_AUDIT) {
        let record = audit::new_audit(&AuditEntry {
            kind: "refusal",
            interaction: Interaction::Update,
            caller,
            patient_id: None,
            entities: chunk.to_vec(),
            detail: Some("rtf import: not a performer of the referral".into()),
            recorded: chrono::Utc::now(),
        });
        store.audit_append(vec![record]).await?;
    }
    tracing::info!(
        org = %caller.org_id,
        rows = out.rows,
        applied = out.applied.len(),
        unchanged = out.unchanged,
        refused = out.refused(),
        "RTF imported"
    );
    Ok(out)
}

/// The kind of a CSV error, without the cell text.
fn csv_kind(e: &csv::Error) -> &'static str {
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not UTF-8",
        csv::ErrorKind::UnequalLengths { .. } => "a different number of columns",
        _ => "malformed",
    }
}

enum Applied {
    Updated,
    Unchanged,
    Refused {
        column: Option<Source>,
        problem: String,
        /// The Task is absent or not the caller's (audited): `Some`, with
        /// the stored Task's member when it exists.
        not_theirs: Option<Option<String>>,
    },
}

fn refused(column: Option<Source>, problem: impl Into<String>) -> Applied {
    Applied::Refused {
        column,
        problem: problem.into(),
        not_theirs: None,
    }
}

/// Check one row against its Task and apply it through the Task update
/// path. Store failures end the import (`Err`); everything about the row
/// is a [`Applied::Refused`].
#[allow(clippy::too_many_arguments)]
async fn apply_row(
    ingress: &Ingress,
    store: &dyn Store,
    caller: &Caller,
    mcp: &str,
    d: &Dialect,
    vocab: &Vocabulary,
    base: &str,
    row: &Row,
) -> Result<Applied, ApiError> {
    let id = &row.task_id;
    let _task_lock = task_update::task_lock(id).await;
    let found = store.resource_get("Task", id).await?;
    let not_theirs = |member: Option<String>| Applied::Refused {
        column: Some(Source::ReferralId),
        problem: "no referral with this id among the caller's".into(),
        not_theirs: Some(member),
    };
    let Some(stored) = found else {
        return Ok(not_theirs(None));
    };
    let (_, performer) = task_update::parties(ingress, &stored.body, &caller.org_id);
    if !performer {
        let member = stored
            .patient_id
            .clone()
            .or_else(|| crate::resources::index::patient_of(&stored.body));
        return Ok(not_theirs(member));
    }
    if export::mcp_of(&stored.body).as_deref() != Some(mcp) {
        return Ok(refused(
            Some(Source::ReferralId),
            format!("the referral is not one of plan {mcp}'s"),
        ));
    }
    let patient = match stored
        .body
        .get("for")
        .and_then(|r| crate::disclosure::ref_id(r, "Patient"))
    {
        Some(p) => store.resource_get("Patient", &p).await?,
        None => None,
    };
    if patient.as_ref().and_then(|p| export::cin_of(&p.body)) != Some(row.cin.as_str()) {
        return Ok(refused(
            Some(Source::MemberCin),
            "is not the CIN of the referral's member",
        ));
    }
    let from = stored
        .body
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("");
    let reason = row.reason.as_deref();
    let Some(to) = target_status(vocab, from, &row.status, reason) else {
        return Ok(refused(
            Some(Source::ReferralStatus),
            format!(
                "the referral is {from}; {} cannot follow{}",
                d.status
                    .get(&row.status)
                    .map_or("this status", String::as_str),
                reason
                    .and_then(|r| d.closure_reason.get(r))
                    .map(|r| format!(" with closure reason {r}"))
                    .unwrap_or_default()
            ),
        ));
    };
    let problems = vocab.check(&to, Some(&row.status), reason);
    if let Some((text, field)) = problems.into_iter().next() {
        let column = if field == "Task.statusReason" {
            Source::ClosureReason
        } else {
            Source::ReferralStatus
        };
        return Ok(refused(Some(column), text));
    }
    // Nothing to change: the same row imported again.
    let same_reason = match reason {
        Some(r) => crate::records::clr::closure_reason_of(&stored.body) == Some(r),
        None => true,
    };
    if from == to && export::clr_status(&stored.body) == Some(row.status.as_str()) && same_reason {
        return Ok(Applied::Unchanged);
    }
    // The update a PUT would carry: the stored Task with the new status,
    // business status and (when given) coded closure reason.
    let mut update = strip_meta(stored.body.clone());
    update["status"] = json!(to);
    if let Some(bs) = vocab.business_status(base, &row.status) {
        update["businessStatus"] = bs;
    }
    if let Some(coding) = reason.and_then(|r| vocab.closure_coding(base, r)) {
        let text = coding.get("display").cloned().unwrap_or(Value::Null);
        update["statusReason"] = json!({"coding": [coding], "text": text});
    }
    if let Ok(v) = crate::resources::validate::FhirValidator::global() {
        if let Some(issue) = v.check("Task", &update).into_iter().next() {
            return Ok(refused(
                None,
                format!("the update is not a valid Task: {}", issue.text),
            ));
        }
    }
    let now = now_secs();
    let clocks = crate::clocks::for_subject(store, &format!("Task/{id}")).await?;
    if let Err(e) =
        task_update::transition(ingress, &stored.body, &update, &caller.org_id, now, &clocks)
    {
        return Ok(refused(Some(Source::ReferralStatus), e.to_string()));
    }
    let raw = serde_json::to_vec(&update).map_err(|e| ApiError::Internal(e.to_string()))?;
    // Journaled as the PUT of this update would be: same kind, same dedup
    // key shape, so a retry is a replay and recovery derives it as a PUT.
    let appended = journal::append(
        store,
        task_update::journal_input(
            caller,
            id,
            stored.version_id,
            raw,
            Some(to.as_str()),
            Some("rtf"),
            now,
        ),
    )
    .await?;
    if !appended.processed() {
        let derived =
            task_update::derive(ingress, &stored.body, &update, &caller.org_id, now, &clocks)?;
        journal::settle(ingress.routing.get(), store, appended.id(), derived).await?;
    }
    Ok(Applied::Updated)
}

#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    /// The plan whose referrals the file reports (an MCP caller: itself).
    pub mcp: Option<String>,
}

/// `POST /ecm/rtf[?mcp=ID]` (`text/csv`): an ECM provider's (or the
/// plan's) return file. 200 with an OperationOutcome listing every bad row
/// and the counts; 422 when the header is not the plan's layout.
pub async fn post_rtf(
    State(state): State<Core>,
    State(ingress): State<Arc<Ingress>>,
    cert: ClientCert,
    headers: HeaderMap,
    Query(q): Query<ImportQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers, &cert, &[OrgKind::EcmProvider, OrgKind::Mcp])?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("text/csv")
    {
        return Err(ApiError::UnsupportedMediaType(
            "send the file as Content-Type: text/csv".into(),
        ));
    }
    let bytes = body.map_err(|r| body_rejection(r, state.cfg.server.max_body_bytes))?;
    let mcp = match (caller.kind, q.mcp) {
        (OrgKind::Mcp, None) => caller.org_id.clone(),
        (OrgKind::Mcp, Some(m)) if m == caller.org_id => m,
        (OrgKind::Mcp, Some(_)) => {
            return Err(ApiError::Denied("a plan returns only its own file".into()))
        }
        (_, Some(m)) if crate::records::orgs::contracted(&state.cfg, &caller.org_id, &m) => m,
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "mcp must name a plan the provider is contracted with",
                Some("mcp"),
            ))
        }
        (_, None) => {
            return Err(ApiError::invalid(
                "name the plan whose file this is: ?mcp=ID",
                Some("mcp"),
            ))
        }
    };
    let out = import(&ingress, state.store.as_ref(), &caller, &mcp, &bytes).await?;
    Ok(fhir_json(StatusCode::OK, &out.outcome()))
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    pub mcp: String,
    pub month: String,
}

/// Audit an operator's export (durable before the file is answered): one
/// `read` record per [`crate::gate::MAX_ENTITIES_PER_AUDIT`] patients.
pub async fn audit_export(
    store: &dyn Store,
    caller: &Caller,
    mcp: &str,
    month: &str,
    done: &export::Exported,
) -> Result<(), store::StoreError> {
    let now = chrono::Utc::now();
    let chunks: Vec<&[String]> = if done.patients.is_empty() {
        vec![&[]]
    } else {
        done.patients
            .chunks(crate::gate::MAX_ENTITIES_PER_AUDIT)
            .collect()
    };
    let records = chunks
        .into_iter()
        .map(|chunk| {
            audit::new_audit(&AuditEntry {
                kind: "read",
                interaction: Interaction::SearchType,
                caller,
                patient_id: None,
                entities: chunk.to_vec(),
                detail: Some(format!("rtf export {mcp} {month}: {} rows", done.rows)),
                recorded: now,
            })
        })
        .collect();
    store.audit_append(records).await.map(|_| ())
}

/// Export plan `mcp`'s file for `month` into a buffer, audited. The one
/// path of `GET /ops/rtf`, `cws-gateway report rtf` and the benchmark.
pub async fn export_audited(
    cfg: &Config,
    store: &dyn Store,
    caller: &Caller,
    mcp: &str,
    month: &str,
) -> Result<(Vec<u8>, export::Exported), ApiError> {
    let m = export::Month::parse(month)
        .ok_or_else(|| ApiError::invalid("month is YYYY-MM", Some("month")))?;
    if cfg.organization(mcp).is_none_or(|o| o.kind != OrgKind::Mcp) {
        return Err(ApiError::invalid(
            "mcp names no configured plan",
            Some("mcp"),
        ));
    }
    let vocab = vocabulary(cfg)?;
    let d = dialect_for(cfg, mcp, &vocab)?;
    let mut buf = Vec::new();
    let done = export::write_month(store, &d, mcp, &m, &mut buf)
        .await
        .map_err(|e| match e {
            export::ExportError::Store(s) => ApiError::Store(s),
            e => ApiError::Internal(e.to_string()),
        })?;
    audit_export(store, caller, mcp, month, &done).await?;
    tracing::info!(mcp = %mcp, rows = done.rows, scanned = done.scanned, "RTF exported");
    Ok((buf, done))
}

/// `GET /ops/rtf?mcp=ID&month=YYYY-MM` (operator): the plan's month file,
/// `text/csv`.
pub async fn get_rtf(
    State(state): State<Core>,
    cert: ClientCert,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers, &cert, &[OrgKind::Operator])?;
    let (buf, _) =
        export_audited(&state.cfg, state.store.as_ref(), &caller, &q.mcp, &q.month).await?;
    let mut resp = (StatusCode::OK, buf).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"rtf-{}-{}.csv\"",
        q.mcp, q.month
    )) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cins_are_eight_digits_and_a_capital() {
        assert!(valid_cin("91000001A"));
        for bad in [
            "9100001A",
            "91000001a",
            "910000011",
            "91000001AB",
            "",
            "ABCDEFGHI",
        ] {
            assert!(!valid_cin(bad), "{bad}");
        }
    }

    #[test]
    fn the_target_status_keeps_the_task_where_it_fits() {
        let v = Vocabulary::builtin();
        assert_eq!(
            target_status(&v, "accepted", "assigned", None).as_deref(),
            Some("accepted")
        );
        assert_eq!(
            target_status(&v, "accepted", "enrolled", None).as_deref(),
            Some("in-progress")
        );
        assert_eq!(
            target_status(&v, "in-progress", "closed", Some("services-received")).as_deref(),
            Some("completed")
        );
        assert_eq!(
            target_status(&v, "in-progress", "closed", Some("unable-to-reach")).as_deref(),
            Some("failed")
        );
        // A closed loop does not reopen.
        assert_eq!(target_status(&v, "completed", "enrolled", None), None);
        assert_eq!(target_status(&v, "accepted", "bogus", None), None);
    }

    #[test]
    fn rows_are_checked_cell_by_cell() {
        let v = Vocabulary::builtin();
        let d = Dialect::load(None, dialect::DEFAULT, &v).unwrap();
        let rec = |cells: &[&str]| csv::StringRecord::from(cells.to_vec());
        let mut p = Vec::new();
        let good = rec(&[
            "91000001A",
            "Rivera",
            "Alex",
            "2010-03-15",
            "mcp-a",
            "ecm-x",
            "t1",
            "2026-11-01",
            "Authorized",
            "2026-11-02",
            "Closed",
            "2026-11-20",
            "Services Received",
        ]);
        let row = read_row(&d, 2, &good, &mut p).unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            (row.status.as_str(), row.reason.as_deref()),
            ("closed", Some("services-received"))
        );
        let bad = rec(&[
            "9100001A",
            "",
            "",
            "15/03/2010",
            "mcp-a",
            "",
            "t1",
            "",
            "",
            "",
            "Done",
            "",
            "",
        ]);
        assert!(read_row(&d, 3, &bad, &mut p).is_none());
        let cols: Vec<&str> = p.iter().map(|x| x.column.as_deref().unwrap()).collect();
        assert_eq!(
            cols,
            [
                "Member_CIN",
                "Member_DOB",
                "Referral_Status",
                "Referral_Status_Date"
            ],
            "{p:?}"
        );
        assert!(p.iter().all(|x| x.line == 3));
        // Wrong column count: one problem for the row, no cell checks.
        let mut p = Vec::new();
        assert!(read_row(&d, 4, &rec(&["91000001A", "t1"]), &mut p).is_none());
        assert_eq!(p.len(), 1);
        assert!(
            p[0].problem.contains("2 columns, the header has 13"),
            "{p:?}"
        );
        // The problems never echo a cell's value (PHI stays in the file).
        let mut p = Vec::new();
        read_row(&d, 5, &bad, &mut p);
        assert!(p.iter().all(|x| !x.problem.contains("9100001A")), "{p:?}");
    }
}
