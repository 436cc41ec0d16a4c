//! `POST /ecm/referrals/$batch`: many referral forms in one file, each line
//! through the same path as a single `POST /ecm/referrals`
//! ([`super::accept`]: schema, referrer = caller, refusals audited before
//! the journal, dedup by referrer and `referralId`, derive, route, the
//! answer as the caller may see it). A bad line stops nothing else.
//!
//! Formats (`Content-Type`):
//! - `application/x-ndjson`: one referral form (the JSON of a single POST)
//!   per line; blank lines are skipped but counted;
//! - `text/csv`: a header row naming columns of [`CSV_COLUMNS`] (any order,
//!   unknown names refused), one referral per row; each row becomes the JSON
//!   form it stands for ([`csv_row_to_form`]) and is journaled as such.
//!
//! Limits: the body is at most `server.max_body_bytes`; at most
//! [`MAX_LINES`] referrals per request (else 422 before any line is read).
//!
//! The answer (200) is a FHIR `batch-response` Bundle, one entry per
//! referral in file order: `response.status` (`201 Created`, `200 OK` for
//! a replay, or the refusal's status), `response.location`
//! (`ServiceRequest/{id}`) and, for a refusal, `response.outcome` (the
//! OperationOutcome the single POST would have answered). Each entry's
//! extensions give the line number (`batch-line`), the `referralId` when
//! the line has one (`batch-referral-id`) and the Task (`batch-task`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::{accept, REFERRAL_KINDS};
use crate::edge::{body_rejection, fhir_json, ApiError, ClientCert};
use crate::sources::Ingress;
use crate::state::Core;

/// Most referrals one batch request may hold.
pub const MAX_LINES: usize = 1000;

/// Extension URLs (after the canonical base) of a batch-response entry.
pub const LINE_EXT: &str = "/StructureDefinition/batch-line";
pub const REFERRAL_ID_EXT: &str = "/StructureDefinition/batch-referral-id";
pub const TASK_EXT: &str = "/StructureDefinition/batch-task";

/// The CSV columns and the referral-form field each fills (JSON pointer).
/// Lists (`populationsOfFocus`, `criteriaCodes`, `memberGiven`,
/// `memberAddressLine`) are separated by `;`; booleans are `true`/`false`
/// (also `yes`/`no`, `1`/`0`); an empty cell leaves the field out.
/// `referrerOrganizationId` defaults to the caller's organization.
/// `consentExplained` `true` sets all four explained flags of an inline
/// referral consent. One current care manager per row (`careManager*`).
pub const CSV_COLUMNS: &[(&str, &str, Cell)] = &[
    ("referralId", "/referralId", Cell::Text),
    ("memberCin", "/member/cin", Cell::Text),
    ("memberGiven", "/member/name/given", Cell::List),
    ("memberFamily", "/member/name/family", Cell::Text),
    ("memberBirthDate", "/member/birthDate", Cell::Text),
    ("memberPhone", "/member/phone", Cell::Text),
    ("memberAddressLine", "/member/address/line", Cell::List),
    ("memberCity", "/member/address/city", Cell::Text),
    ("memberState", "/member/address/state", Cell::Text),
    ("memberPostalCode", "/member/address/postalCode", Cell::Text),
    ("memberCounty", "/member/address/county", Cell::Text),
    (
        "memberPreferredLanguage",
        "/member/preferredLanguage",
        Cell::Text,
    ),
    ("memberPlanCode", "/member/planCode", Cell::Text),
    (
        "referrerOrganizationId",
        "/referrer/organizationId",
        Cell::Text,
    ),
    ("referrerName", "/referrer/name", Cell::Text),
    ("referrerRole", "/referrer/role", Cell::Text),
    ("referrerPhone", "/referrer/phone", Cell::Text),
    ("referrerEmail", "/referrer/email", Cell::Text),
    ("referrerRelationship", "/referrer/relationship", Cell::Text),
    ("selfReferral", "/selfReferral", Cell::Bool),
    ("populationsOfFocus", "/populationsOfFocus", Cell::List),
    ("criteriaText", "/criteriaText", Cell::Text),
    ("criteriaCodes", "/criteriaCodes", Cell::List),
    ("expedited", "/expedited", Cell::Bool),
    (
        "preferredEcmProviderId",
        "/preferredEcmProviderId",
        Cell::Text,
    ),
    ("mcpId", "/mcpId", Cell::Text),
    ("consentId", "/consentId", Cell::Text),
    ("consentObtainedOn", "/consent/obtainedOn", Cell::Text),
    ("consentObtainedBy", "/consent/obtainedBy", Cell::Text),
    ("consentGrantorRole", "/consent/grantor/role", Cell::Text),
    ("consentGrantorName", "/consent/grantor/name", Cell::Text),
    ("consentExplained", "/consent/explained", Cell::Explained),
    (
        "careManagerProgram",
        "/currentCareManagers/0/program",
        Cell::Text,
    ),
    (
        "careManagerOrganizationId",
        "/currentCareManagers/0/organizationId",
        Cell::Text,
    ),
    (
        "careManagerOrganizationName",
        "/currentCareManagers/0/organizationName",
        Cell::Text,
    ),
    ("careManagerName", "/currentCareManagers/0/name", Cell::Text),
    (
        "careManagerPhone",
        "/currentCareManagers/0/phone",
        Cell::Text,
    ),
    (
        "careManagerEmail",
        "/currentCareManagers/0/email",
        Cell::Text,
    ),
    ("notes", "/notes", Cell::Text),
];

/// How a CSV cell becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Text,
    /// `;`-separated strings.
    List,
    /// `true`/`false`; anything else is kept as text for the schema to refuse.
    Bool,
    /// `true`: the four explained flags of an inline consent.
    Explained,
}

/// The batch format of a `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-ndjson" | "application/ndjson" => Ok(Format::Ndjson),
        "text/csv" => Ok(Format::Csv),
        _ => Err(ApiError::UnsupportedMediaType(
            "a referral batch is application/x-ndjson or text/csv".into(),
        )),
    }
}

/// One line of the file: its number and the form's JSON bytes, or why the
/// line could not become a form.
type Line = (usize, Result<Vec<u8>, ApiError>);

/// The NDJSON lines (blank lines skipped, numbered from 1).
pub fn ndjson_lines(body: &[u8]) -> Vec<Line> {
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|(i, l)| (i + 1, Ok(l.to_vec())))
        .collect()
}

fn parse_bool(v: &str) -> Value {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" => Value::Bool(true),
        "false" | "no" | "n" | "0" => Value::Bool(false),
        _ => Value::String(v.to_string()),
    }
}

/// Set `ptr` (of objects and `/0` array slots) in `doc`.
fn set(doc: &mut Value, ptr: &str, v: Value) {
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    let mut cur = doc;
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let next_is_index = parts.get(i + 1).is_some_and(|n| n.parse::<usize>().is_ok());
        if let Ok(idx) = p.parse::<usize>() {
            if !cur.is_array() {
                *cur = Value::Array(Vec::new());
            }
            let Some(a) = cur.as_array_mut() else { return };
            while a.len() <= idx {
                a.push(Value::Object(Map::new()));
            }
            if last {
                a[idx] = v;
                return;
            }
            cur = &mut a[idx];
        } else {
            if !cur.is_object() {
                *cur = Value::Object(Map::new());
            }
            let Some(o) = cur.as_object_mut() else { return };
            if last {
                o.insert((*p).to_string(), v);
                return;
            }
            let empty = if next_is_index {
                Value::Array(Vec::new())
            } else {
                Value::Object(Map::new())
            };
            cur = o.entry((*p).to_string()).or_insert(empty);
        }
    }
}

/// The referral form a CSV row stands for (`columns` from the header).
pub fn csv_row_to_form(
    columns: &[(&str, Cell, &str)],
    row: &csv::StringRecord,
    org: &str,
) -> Value {
    let mut doc = json!({"referrer": {"organizationId": org}});
    for ((_, cell, ptr), raw) in columns.iter().zip(row.iter()) {
        let v = raw.trim();
        if v.is_empty() {
            continue;
        }
        let value = match cell {
            Cell::Text => Value::String(v.to_string()),
            Cell::List => Value::Array(
                v.split(';')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(|x| Value::String(x.to_string()))
                    .collect(),
            ),
            Cell::Bool => parse_bool(v),
            Cell::Explained => {
                let b = parse_bool(v);
                json!({"provider": b, "informationShared": b, "duration": b, "rightToWithdraw": b})
            }
        };
        set(&mut doc, ptr, value);
    }
    doc
}

/// The CSV rows as forms (numbered by file line; the header is line 1).
pub fn csv_lines(body: &[u8], org: &str) -> Result<Vec<Line>, ApiError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(body);
    let header = rdr
        .headers()
        .map_err(|e| ApiError::Malformed(format!("the CSV header cannot be read: {e}")))?
        .clone();
    let mut columns: Vec<(&str, Cell, &str)> = Vec::new();
    for h in header.iter() {
        match CSV_COLUMNS.iter().find(|(n, _, _)| *n == h) {
            Some((n, ptr, cell)) => {
                if columns.iter().any(|(c, _, _)| c == n) {
                    return Err(ApiError::invalid(
                        format!("the CSV column {n} is given twice"),
                        Some("header"),
                    ));
                }
                columns.push((n, *cell, ptr));
            }
            None => {
                return Err(ApiError::invalid(
                    "the CSV header names a column that is not a referral batch column (docs/county.md, Referral batches)",
                    Some("header"),
                ))
            }
        }
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        match rec {
            Ok(row) => {
                let line = row.position().map_or(0, |p| p.line() as usize);
                let form = csv_row_to_form(&columns, &row, org);
                out.push((
                    line,
                    serde_json::to_vec(&form).map_err(|e| ApiError::Internal(e.to_string())),
                ));
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                out.push((
                    line,
                    Err(ApiError::Malformed(format!(
                        "the CSV row cannot be read ({})",
                        match e.kind() {
                            csv::ErrorKind::UnequalLengths { .. } =>
                                "its number of fields differs from the header's",
                            _ => "bad quoting or encoding",
                        }
                    ))),
                ));
            }
        }
        if out.len() > MAX_LINES {
            break;
        }
    }
    Ok(out)
}

/// The OperationOutcome a refused line would have answered alone.
async fn outcome_of(e: ApiError) -> (StatusCode, Value) {
    let resp = e.into_response();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({"resourceType": "OperationOutcome", "issue": []}));
    (status, body)
}

fn status_text(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
        .trim_end()
        .to_string()
}

/// The handler.
pub async fn post_batch(
    State(state): State<Core>,
    State(ingress): State<Arc<Ingress>>,
    cert: ClientCert,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers, &cert, REFERRAL_KINDS)?;
    let format = format_of(&headers)?;
    let bytes = body.map_err(|r| body_rejection(r, state.cfg.server.max_body_bytes))?;
    let lines = match format {
        Format::Ndjson => ndjson_lines(&bytes),
        Format::Csv => csv_lines(&bytes, &caller.org_id)?,
    };
    if lines.len() > MAX_LINES {
        return Err(ApiError::invalid(
            format!("a referral batch holds at most {MAX_LINES} referrals: split the file"),
            Some("body"),
        ));
    }
    if lines.is_empty() {
        // An empty file (or a CSV with a header only) is a mistake to say,
        // not an empty success.
        return Err(ApiError::invalid(
            "the referral batch holds no referral: send one referral per line (NDJSON) or per row under the header (CSV)",
            Some("body"),
        ));
    }
    let base = state.cfg.server.canonical_base.clone();
    let mut entries = Vec::with_capacity(lines.len());
    let (mut ok, mut failed) = (0usize, 0usize);
    for (line, form) in lines {
        let referral_id = form
            .as_ref()
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            .and_then(|d| {
                d.get("referralId")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        let result = match form {
            Ok(b) => accept(&state, &ingress, &caller, &b).await,
            Err(e) => Err(e),
        };
        let mut ext = vec![json!({"url": format!("{base}{LINE_EXT}"), "valueInteger": line})];
        if let Some(r) = &referral_id {
            ext.push(json!({"url": format!("{base}{REFERRAL_ID_EXT}"), "valueString": r}));
        }
        let entry = match result {
            Ok(a) => {
                ok += 1;
                ext.push(json!({"url": format!("{base}{TASK_EXT}"), "valueReference": {"reference": format!("Task/{}", a.task_id)}}));
                json!({
                    "extension": ext,
                    "response": {
                        "status": status_text(a.status),
                        "location": format!("ServiceRequest/{}", a.sr_id),
                    }
                })
            }
            Err(e) => {
                failed += 1;
                if matches!(e, ApiError::Denied(_)) {
                    // A per-line 403 is audited here, as the route layer
                    // audits a single POST's.
                    audit_denied(&state, &caller, line).await;
                }
                let (status, outcome) = outcome_of(e).await;
                json!({
                    "extension": ext,
                    "response": {"status": status_text(status), "outcome": outcome}
                })
            }
        };
        entries.push(entry);
    }
    tracing::info!(accepted = ok, refused = failed, "ECM referral batch");
    Ok(fhir_json(
        StatusCode::OK,
        &json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}),
    ))
}

async fn audit_denied(state: &Core, caller: &crate::auth::Caller, line: usize) {
    let record = crate::audit::new_audit(&crate::audit::AuditEntry {
        kind: "refusal",
        interaction: crate::audit::Interaction::Create,
        caller,
        patient_id: None,
        entities: Vec::new(),
        detail: Some(format!("forbidden POST /ecm/referrals/$batch line {line}")),
        recorded: chrono::Utc::now(),
    });
    if let Err(e) = state.store.audit_append(vec![record]).await {
        tracing::error!(error = %e, "audit append of a batch line refusal failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_row_becomes_the_form_it_stands_for() {
        let body = b"referralId,memberCin,memberGiven,memberFamily,memberBirthDate,referrerName,referrerRole,referrerRelationship,selfReferral,populationsOfFocus,expedited,consentExplained,careManagerProgram,careManagerName\nH-1,91000001A,Alex;Sam,Rivera,2010-03-15,Dr. Lee,ED physician,treating physician,false,8;3,no,true,other,Pat Kim\n";
        let lines = csv_lines(body, "st-mary").unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, 2);
        let doc: Value = serde_json::from_slice(lines[0].1.as_ref().unwrap()).unwrap();
        assert_eq!(doc["referrer"]["organizationId"], "st-mary");
        assert_eq!(doc["member"]["name"]["given"], json!(["Alex", "Sam"]));
        assert_eq!(doc["populationsOfFocus"], json!(["8", "3"]));
        assert_eq!(doc["selfReferral"], json!(false));
        assert_eq!(doc["expedited"], json!(false));
        assert_eq!(doc["consent"]["explained"]["rightToWithdraw"], json!(true));
        assert_eq!(doc["currentCareManagers"][0]["name"], "Pat Kim");
    }

    #[test]
    fn an_unknown_column_refuses_the_file_and_a_short_row_only_itself() {
        let e = csv_lines(b"referralId,favouriteColour\nx,blue\n", "o").unwrap_err();
        assert!(e.to_string().contains("not a referral batch column"), "{e}");
        let lines = csv_lines(b"referralId,memberCin\na,91000001A\nb\nc,91000002A\n", "o").unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].1.is_ok() && lines[1].1.is_err() && lines[2].1.is_ok());
        assert_eq!(lines[1].0, 3);
    }

    #[test]
    fn ndjson_lines_are_numbered_and_blank_ones_skipped() {
        let l = ndjson_lines(b"{\"a\":1}\n\n{\"b\":2}\n");
        assert_eq!(l.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
    }
}
