//! Search-parameter parsing: the query string of `GET /fhir/{type}?…` into a
//! store [`ResourceQuery`], strictly.
//!
//! What each type supports is declared once, in [`RESOURCES`]; the
//! CapabilityStatement says the same (a test checks every declared parameter
//! works). Semantics:
//! - values separated by `,` are alternatives (OR); a repeated parameter is a
//!   further condition (AND);
//! - `identifier`: `system|value`, `|value` (no system) or `value` (any system);
//! - `patient`/`subject`: `Patient/id` or `id` (one patient per search),
//!   matched on the `patient` index token;
//! - `owner`, `requester`, `focus` (Task): `Type/id`, or a bare `id` meaning any
//!   of the types that element may reference;
//! - `_lastUpdated`: prefixes `gt ge lt le` (none = `ge`+`lt` over the value's
//!   precision would be `eq`, which is not supported and refused), a dateTime
//!   with zone or a date (`YYYY-MM-DD`, a UTC day);
//! - `_count`: default [`DEFAULT_COUNT`], at most [`MAX_COUNT`] (larger is
//!   clamped); `_count=0` asks for the count only: a Bundle with `total`
//!   (what the caller may see) and no entries;
//! - `_include=Task:focus`; `_cursor`: the opaque paging cursor of a `next` link.
//!
//! Unknown parameters and modifiers are refused with 400 (strict handling)
//! unless the request says `Prefer: handling=lenient`, in which case they are
//! ignored and listed in [`Search::ignored`]. Input limits: at most
//! [`MAX_PARAMS`] parameters (the 400 names the parameter given most often),
//! [`MAX_VALUES`] alternatives each.

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use store::{Cmp, ResourceQuery};

use crate::resources::index::{normalize_reference, IDENTIFIER_VALUE};

/// Page size without `_count`.
pub const DEFAULT_COUNT: usize = 50;
/// Largest page size.
pub const MAX_COUNT: usize = 200;
/// Most query parameters in one search.
pub const MAX_PARAMS: usize = 16;
/// Most comma-separated alternatives of one parameter.
pub const MAX_VALUES: usize = 50;

/// One searchable resource type and what it supports.
#[derive(Debug, Clone, Copy)]
pub struct ResourceDef {
    /// FHIR type name.
    pub name: &'static str,
    /// Search parameters beyond `_count` (and `_cursor`).
    pub params: &'static [&'static str],
    /// `_include` values.
    pub includes: &'static [&'static str],
}

/// Every type the FHIR API serves from the resource store (AuditEvent, served
/// from the audit trail, is separate: [`AUDIT_EVENT`]).
pub const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        name: "Patient",
        params: &["_id", "_lastUpdated", "identifier"],
        includes: &[],
    },
    ResourceDef {
        name: "ServiceRequest",
        params: &[
            "_id",
            "_lastUpdated",
            "identifier",
            "patient",
            "subject",
            "status",
        ],
        includes: &[],
    },
    ResourceDef {
        name: "Task",
        params: &[
            "_id",
            "_lastUpdated",
            "identifier",
            "patient",
            "subject",
            "status",
            "owner",
            "requester",
            "focus",
        ],
        includes: &["Task:focus"],
    },
    ResourceDef {
        name: "CarePlan",
        params: &[
            "_id",
            "_lastUpdated",
            "identifier",
            "patient",
            "subject",
            "status",
        ],
        includes: &[],
    },
    ResourceDef {
        name: "CareTeam",
        params: &[
            "_id",
            "_lastUpdated",
            "identifier",
            "patient",
            "subject",
            "status",
        ],
        includes: &[],
    },
    ResourceDef {
        name: "QuestionnaireResponse",
        params: &[
            "_id",
            "_lastUpdated",
            "identifier",
            "patient",
            "subject",
            "status",
        ],
        includes: &[],
    },
    ResourceDef {
        name: "DocumentReference",
        params: &[
            "_id",
            "_lastUpdated",
            "identifier",
            "patient",
            "subject",
            "status",
        ],
        includes: &[],
    },
    ResourceDef {
        name: "Consent",
        params: &["_id", "_lastUpdated", "identifier", "patient", "status"],
        includes: &[],
    },
    ResourceDef {
        name: "Encounter",
        params: &[
            "_id",
            "_lastUpdated",
            "identifier",
            "patient",
            "subject",
            "status",
        ],
        includes: &[],
    },
    ResourceDef {
        name: "Condition",
        params: &["_id", "_lastUpdated", "identifier", "patient", "subject"],
        includes: &[],
    },
    ResourceDef {
        name: "Provenance",
        params: &["_id", "_lastUpdated", "patient"],
        includes: &[],
    },
];

/// AuditEvent (operators only): `patient`, `_count`, and the paging cursor.
pub const AUDIT_EVENT: ResourceDef = ResourceDef {
    name: "AuditEvent",
    params: &["patient"],
    includes: &[],
};

/// The definition of a served type.
pub fn resource_def(name: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|d| d.name == name)
}

/// A refused search parameter: 400 with `expression` = the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("search parameter {param}: {message}")]
pub struct ParamError {
    /// The offending parameter name.
    pub param: String,
    /// Why (no values echoed: they may be PHI).
    pub message: String,
    /// The parameter itself is not supported (OperationOutcome code
    /// `not-supported`), rather than its value being invalid.
    pub unsupported: bool,
}

fn err(param: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        param: param.to_string(),
        message: message.into(),
        unsupported: false,
    }
}

fn unsupported(param: &str) -> ParamError {
    ParamError {
        param: param.to_string(),
        message: "not supported on this resource type".into(),
        unsupported: true,
    }
}

/// A parsed search.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// The store query (without `limit`/`after`, set per page).
    pub query: ResourceQuery,
    /// Page size; 0 = the count only (`_count=0`).
    pub count: usize,
    /// Resume strictly after this (last_updated, id).
    pub cursor: Option<(DateTime<Utc>, String)>,
    /// `_include=Task:focus`.
    pub include_focus: bool,
    /// Conditions contradict each other (e.g. two different patients): no match.
    pub empty: bool,
    /// Parameters ignored under lenient handling.
    pub ignored: Vec<String>,
    /// The parameters to repeat in the `next` link (all but `_cursor`).
    pub link_params: Vec<(String, String)>,
    /// The one patient `patient`/`subject` names, if any (its context is
    /// read with the first page).
    pub patient: Option<String>,
}

/// Split on unescaped commas; `\,` is a literal comma.
fn split_values(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                cur.push(',');
                chars.next();
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn values(param: &str, v: &str) -> Result<Vec<String>, ParamError> {
    let vals = split_values(v);
    if vals.len() > MAX_VALUES {
        return Err(err(param, format!("at most {MAX_VALUES} values")));
    }
    if vals.iter().any(|x| x.is_empty()) {
        return Err(err(param, "empty value"));
    }
    Ok(vals)
}

/// Encode a paging cursor (opaque to clients).
pub fn encode_cursor(last_updated: DateTime<Utc>, id: &str) -> String {
    let raw = format!(
        "{}|{id}",
        last_updated.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_bytes())
}

/// Decode a paging cursor.
pub fn decode_cursor(c: &str) -> Option<(DateTime<Utc>, String)> {
    if c.len() > 256 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.as_bytes())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (t, id) = s.split_once('|')?;
    let t = DateTime::parse_from_rfc3339(t).ok()?.with_timezone(&Utc);
    crate::config::valid_fhir_id(id).then(|| (t, id.to_string()))
}

/// Parse `_lastUpdated` (one occurrence) into comparisons.
pub fn parse_last_updated(v: &str) -> Result<Vec<(Cmp, DateTime<Utc>)>, ParamError> {
    const P: &str = "_lastUpdated";
    let (prefix, rest) = match v.get(..2) {
        Some(p @ ("gt" | "ge" | "lt" | "le")) => (p, v.get(2..).unwrap_or("")),
        Some(p) if p.chars().all(|c| c.is_ascii_lowercase()) => {
            return Err(err(P, "only the prefixes gt, ge, lt, le are supported"))
        }
        _ => return Err(err(P, "a prefix gt, ge, lt or le is required")),
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(rest) {
        let t = t.with_timezone(&Utc);
        let cmp = match prefix {
            "gt" => Cmp::Gt,
            "ge" => Cmp::Ge,
            "lt" => Cmp::Lt,
            _ => Cmp::Le,
        };
        return Ok(vec![(cmp, t)]);
    }
    let day = NaiveDate::parse_from_str(rest, "%Y-%m-%d")
        .map_err(|_| err(P, "expected a dateTime with time zone or a date YYYY-MM-DD"))?;
    let start = day
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .ok_or_else(|| err(P, "date out of range"))?;
    let end = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| err(P, "date out of range"))?;
    // A date is the interval [start, end).
    Ok(vec![match prefix {
        "gt" => (Cmp::Ge, end),
        "ge" => (Cmp::Ge, start),
        "lt" => (Cmp::Lt, start),
        _ => (Cmp::Lt, end),
    }])
}

fn patient_value(param: &str, v: &str) -> Result<String, ParamError> {
    let vals = values(param, v)?;
    let [one] = vals.as_slice() else {
        return Err(err(param, "one patient per search"));
    };
    let id = match one.split_once('/') {
        Some(_) => match normalize_reference(one) {
            Some(r) => match r.strip_prefix("Patient/") {
                Some(id) => id.to_string(),
                None => return Err(err(param, "only Patient references are supported")),
            },
            None => return Err(err(param, "not a reference")),
        },
        None => one.clone(),
    };
    if !crate::config::valid_fhir_id(&id) {
        return Err(err(param, "not a valid id"));
    }
    Ok(id)
}

fn reference_values(param: &str, v: &str, types: &[&str]) -> Result<Vec<String>, ParamError> {
    let mut out = Vec::new();
    for one in values(param, v)? {
        if one.contains('/') {
            out.push(normalize_reference(&one).ok_or_else(|| err(param, "not a reference"))?);
        } else if crate::config::valid_fhir_id(&one) {
            out.extend(types.iter().map(|t| format!("{t}/{one}")));
        } else {
            return Err(err(param, "not a valid id"));
        }
    }
    Ok(out)
}

/// Parse the query pairs of a search on `def`. `lenient` = `Prefer:
/// handling=lenient`.
pub fn parse(
    def: &ResourceDef,
    pairs: &[(String, String)],
    lenient: bool,
) -> Result<Search, ParamError> {
    if pairs.len() > MAX_PARAMS {
        // Name the parameter given most often (the first such), not a
        // bystander.
        let mut most: Option<(&str, usize)> = None;
        for (name, _) in pairs {
            let n = pairs.iter().filter(|(k, _)| k == name).count();
            if most.is_none_or(|(_, m)| n > m) {
                most = Some((name.as_str(), n));
            }
        }
        let (name, n) = most.unwrap_or(("", 0));
        return Err(err(
            name,
            format!("at most {MAX_PARAMS} parameters in one search (this one is given {n} times)"),
        ));
    }
    let mut s = Search {
        query: ResourceQuery {
            resource_type: def.name.to_string(),
            ..ResourceQuery::default()
        },
        count: DEFAULT_COUNT,
        ..Search::default()
    };
    let mut ids: Option<Vec<String>> = None;
    let mut patient: Option<String> = None;
    for (name, value) in pairs {
        let name = name.as_str();
        let known = matches!(name, "_count" | "_cursor" | "_include") || def.params.contains(&name);
        if !known {
            if lenient {
                s.ignored.push(name.to_string());
                continue;
            }
            return Err(unsupported(name));
        }
        if name != "_cursor" {
            s.link_params.push((name.to_string(), value.clone()));
        }
        match name {
            "_count" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| err(name, "expected a non-negative integer"))?;
                s.count = usize::try_from(n).unwrap_or(MAX_COUNT).min(MAX_COUNT);
            }
            "_cursor" => {
                s.cursor =
                    Some(decode_cursor(value).ok_or_else(|| err(name, "not a valid cursor"))?);
            }
            "_include" => {
                if def.includes.contains(&value.as_str()) {
                    s.include_focus = true;
                } else if lenient {
                    s.ignored.push(format!("_include={value}"));
                } else {
                    return Err(unsupported(name));
                }
            }
            "_id" => {
                let vals = values(name, value)?;
                if vals.iter().any(|v| !crate::config::valid_fhir_id(v)) {
                    return Err(err(name, "not a valid id"));
                }
                ids = Some(match ids {
                    None => vals,
                    Some(prev) => prev.into_iter().filter(|p| vals.contains(p)).collect(),
                });
                if ids.as_ref().is_some_and(Vec::is_empty) {
                    s.empty = true;
                }
            }
            "_lastUpdated" => {
                if s.query.last_updated.len() >= 4 {
                    return Err(err(name, "at most 4 comparisons"));
                }
                s.query.last_updated.extend(parse_last_updated(value)?);
            }
            "patient" | "subject" => {
                let id = patient_value(name, value)?;
                match &patient {
                    Some(prev) if *prev != id => s.empty = true,
                    Some(_) => {}
                    None => {
                        s.query
                            .params
                            .push(("patient".into(), vec![format!("Patient/{id}")]));
                        patient = Some(id);
                    }
                }
            }
            "identifier" => {
                let mut by_system = Vec::new();
                let mut bare = Vec::new();
                for v in values(name, value)? {
                    match v.split_once('|') {
                        Some((system, val)) if !val.is_empty() => {
                            by_system.push(crate::resources::index::identifier_token(system, val))
                        }
                        Some(_) => return Err(err(name, "identifier value missing")),
                        None => bare.push(v),
                    }
                }
                // One condition with alternatives of two token kinds cannot be
                // expressed as one (param, values) pair; refuse the mix.
                match (by_system.is_empty(), bare.is_empty()) {
                    (false, true) => s.query.params.push(("identifier".into(), by_system)),
                    (true, false) => s.query.params.push((IDENTIFIER_VALUE.into(), bare)),
                    _ => {
                        return Err(err(
                            name,
                            "mixing system|value and bare values in one parameter is not supported",
                        ))
                    }
                }
            }
            "status" => s.query.params.push(("status".into(), values(name, value)?)),
            "owner" => s.query.params.push((
                "owner".into(),
                reference_values(
                    name,
                    value,
                    &["Organization", "Practitioner", "PractitionerRole"],
                )?,
            )),
            "requester" => s.query.params.push((
                "requester".into(),
                reference_values(
                    name,
                    value,
                    &[
                        "Organization",
                        "Practitioner",
                        "PractitionerRole",
                        "Patient",
                    ],
                )?,
            )),
            "focus" => s.query.params.push((
                "focus".into(),
                reference_values(name, value, &["ServiceRequest"])?,
            )),
            _ => return Err(unsupported(name)),
        }
    }
    if let Some(ids) = ids {
        s.query.ids = ids;
    }
    s.patient = patient;
    Ok(s)
}

/// Everything but the RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode a query component (RFC 3986 unreserved characters kept,
/// upper-case hex).
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

pub use crate::edge::form::{parse_form_pairs, FormError};

/// The query string of a `next` link: the search's parameters and the cursor.
pub fn next_query(s: &Search, cursor: &str) -> String {
    let mut parts: Vec<String> = s
        .link_params
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    parts.push(format!("_cursor={cursor}"));
    parts.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_type_may_be_named_by_a_scope() {
        for d in RESOURCES {
            assert!(crate::scopes::scope_type_known(d.name), "{}", d.name);
        }
        for t in crate::scopes::SCOPED_TYPES {
            assert!(
                resource_def(t).is_some() || *t == "AuditEvent" || *t == "Observation",
                "{t} is scoped but not served"
            );
        }
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn task() -> &'static ResourceDef {
        resource_def("Task").unwrap()
    }

    #[test]
    fn parses_every_task_parameter() {
        let s = parse(
            task(),
            &p(&[
                ("_id", "a,b"),
                ("identifier", "urn:x|1"),
                ("patient", "Patient/p1"),
                ("status", "requested,accepted"),
                ("owner", "ecm-1"),
                ("requester", "Organization/mcp-a"),
                ("focus", "sr1"),
                ("_lastUpdated", "ge2026-01-01"),
                ("_lastUpdated", "lt2026-02-01T00:00:00Z"),
                ("_count", "500"),
                ("_include", "Task:focus"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(s.query.ids, vec!["a", "b"]);
        assert_eq!(s.count, MAX_COUNT);
        assert!(s.include_focus);
        assert_eq!(s.query.last_updated.len(), 2);
        let get = |k: &str| {
            s.query
                .params
                .iter()
                .find(|(p, _)| p == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("identifier"), vec!["urn:x|1"]);
        assert_eq!(get("patient"), vec!["Patient/p1"]);
        assert_eq!(get("status"), vec!["requested", "accepted"]);
        assert_eq!(get("owner").len(), 3);
        assert_eq!(get("requester"), vec!["Organization/mcp-a"]);
        assert_eq!(get("focus"), vec!["ServiceRequest/sr1"]);
    }

    #[test]
    fn count_zero_and_too_many_params_name_the_parameter() {
        let s = parse(task(), &p(&[("_count", "0")]), false).unwrap();
        assert_eq!(s.count, 0);
        let mut many = vec![("_count", "5")];
        many.extend(std::iter::repeat_n(("status", "a"), MAX_PARAMS));
        let e = parse(task(), &p(&many), false).unwrap_err();
        assert_eq!(e.param, "status");
        assert!(e.message.contains(&format!("{MAX_PARAMS} times")), "{e}");
    }

    #[test]
    fn identifier_forms() {
        let def = resource_def("Patient").unwrap();
        let s = parse(def, &p(&[("identifier", "|X1")]), false).unwrap();
        assert_eq!(
            s.query.params,
            vec![("identifier".into(), vec!["|X1".into()])]
        );
        let s = parse(def, &p(&[("identifier", "X1,X2")]), false).unwrap();
        assert_eq!(
            s.query.params,
            vec![(IDENTIFIER_VALUE.into(), vec!["X1".into(), "X2".into()])]
        );
        assert!(parse(def, &p(&[("identifier", "sys|")]), false).is_err());
    }

    #[test]
    fn strict_refuses_unknown_lenient_ignores() {
        let def = resource_def("Patient").unwrap();
        let e = parse(def, &p(&[("name", "x")]), false).unwrap_err();
        assert_eq!(e.param, "name");
        assert!(parse(def, &p(&[("status", "x")]), false).is_err());
        assert!(parse(def, &p(&[("identifier:text", "x")]), false).is_err());
        let s = parse(def, &p(&[("name", "x"), ("_count", "2")]), true).unwrap();
        assert_eq!(s.ignored, vec!["name"]);
        assert_eq!(s.count, 2);
        assert!(parse(task(), &p(&[("_include", "Task:owner")]), false).is_err());
    }

    #[test]
    fn last_updated_prefixes_and_dates() {
        let day = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            parse_last_updated("gt2026-01-01").unwrap(),
            vec![(Cmp::Ge, day("2026-01-02T00:00:00Z"))]
        );
        assert_eq!(
            parse_last_updated("le2026-01-01").unwrap(),
            vec![(Cmp::Lt, day("2026-01-02T00:00:00Z"))]
        );
        assert_eq!(
            parse_last_updated("lt2026-01-01T10:00:00+02:00").unwrap(),
            vec![(Cmp::Lt, day("2026-01-01T08:00:00Z"))]
        );
        assert!(parse_last_updated("eq2026-01-01").is_err());
        assert!(parse_last_updated("2026-01-01").is_err());
        assert!(parse_last_updated("ge2026-13-01").is_err());
    }

    #[test]
    fn patient_conflicts_and_bad_values() {
        let s = parse(
            task(),
            &p(&[("patient", "a"), ("subject", "Patient/b")]),
            false,
        )
        .unwrap();
        assert!(s.empty);
        assert!(parse(task(), &p(&[("patient", "a,b")]), false).is_err());
        assert!(parse(task(), &p(&[("subject", "Group/g")]), false).is_err());
        assert!(parse(task(), &p(&[("_count", "-1")]), false).is_err());
        assert!(parse(task(), &p(&[("_cursor", "!!")]), false).is_err());
        let s = parse(task(), &p(&[("_id", "a,b"), ("_id", "c")]), false).unwrap();
        assert!(s.empty);
    }

    #[test]
    fn cursor_round_trips_and_next_link_keeps_params() {
        let t = Utc::now();
        let c = encode_cursor(t, "t-1");
        let (t2, id) = decode_cursor(&c).unwrap();
        assert_eq!(id, "t-1");
        assert_eq!(t2.timestamp_micros(), t.timestamp_micros());
        let s = parse(task(), &p(&[("status", "a b"), ("_cursor", &c)]), false).unwrap();
        assert_eq!(next_query(&s, "Z"), "status=a%20b&_cursor=Z");
    }

    fn pairs(v: &[(&str, &str)]) -> Result<Vec<(String, String)>, FormError> {
        Ok(p(v))
    }

    #[test]
    fn form_pairs_decode_plus_escapes_and_keep_order() {
        assert_eq!(
            parse_form_pairs(b"status=a+b&identifier=x%2By&status=c&&flag&e="),
            pairs(&[
                ("status", "a b"),
                ("identifier", "x+y"),
                ("status", "c"),
                ("flag", ""),
                ("e", ""),
            ])
        );
        // Only the first `=` separates; `%3D` and `%26` are data.
        assert_eq!(
            parse_form_pairs(b"a=b=c&k%3Dx=%26"),
            pairs(&[("a", "b=c"), ("k=x", "&")])
        );
        assert_eq!(parse_form_pairs(b""), pairs(&[]));
        // UTF-8 escapes decode; lower-case hex too.
        assert_eq!(
            parse_form_pairs(b"name=Jos%C3%A9&x=%c3%a9"),
            pairs(&[("name", "José"), ("x", "é")])
        );
    }

    #[test]
    fn malformed_escapes_and_non_utf8_are_refused_not_replaced() {
        for bad in [
            &b"a=%zz"[..],
            b"a=%4",
            b"a=%",
            b"a=1&b=%g1",
            b"%zz=1",
            b"a=%%41",
        ] {
            assert_eq!(
                parse_form_pairs(bad),
                Err(FormError::BadEscape),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [&b"a=%FF"[..], b"a=%C3", b"%80=1", b"a=\xff", b"a=%C3%28"] {
            assert_eq!(parse_form_pairs(bad), Err(FormError::NotUtf8));
        }
    }

    /// The percent-encoding this module wrote by hand before it used the
    /// `percent-encoding` crate: the crate must produce the same links.
    fn encode_component_by_hand(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn encoding_is_unchanged_and_round_trips(k in "\\PC{0,12}", v in "\\PC{0,24}") {
            let enc = encode_component(&v);
            proptest::prop_assert_eq!(&enc, &encode_component_by_hand(&v));
            let query = format!("{}={enc}", encode_component(&k));
            // `=` alone is a pair too (an empty name and value).
            proptest::prop_assert_eq!(parse_form_pairs(query.as_bytes()), Ok(vec![(k, v)]));
        }
    }
}
