//! The checks every JSON input shares, beyond its schema: impossible or
//! implausible dates and characters no stored text may carry.
//!
//! One function, [`check`], walks the whole document; each entry point runs
//! it beside its schema and lists its problems with the schema's in one 422
//! OperationOutcome, each naming its field (`expression`):
//! county case events and ECM referral forms (`sources::schemas`), and every
//! FHIR write and `$validate` (`resources::validate::FhirValidator::check`).
//!
//! - **Characters.** A string (or an object key) holding a character of
//!   [`mapping::text::is_forbidden`] — C0 controls other than TAB, LF and
//!   CR, DEL, C1 controls, the bidi embeddings/overrides U+202A–U+202E and
//!   isolates U+2066–U+2069 — is refused. A bad key is reported at the
//!   object that holds it (a key is input and may carry PHI).
//! - **Dates.** A string shaped as a date or date-time — exactly
//!   `YYYY-MM`, `YYYY-MM-DD` or `YYYY-MM-DDThh:mm[:ss[.f]][Z|±hh:mm]`,
//!   whatever the field — must be a real one (month 1–12, a day the month
//!   has, hour < 24, minute < 60, second ≤ 60, offset ≤ 14:00) in the years
//!   [`MIN_YEAR`]–[`MAX_YEAR`]. A `birthDate` may not be in the future: later
//!   than today where the day starts first (UTC+14), so no time zone's
//!   today is refused.
//!
//! Texts name the field and the rule, never the value.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde_json::Value;

/// Earliest plausible year of any date.
pub const MIN_YEAR: i32 = 1900;
/// Latest plausible year of any date.
pub const MAX_YEAR: i32 = 2199;
/// Most problems one check reports.
pub const MAX_PROBLEMS: usize = 20;

/// One problem, at a JSON pointer of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// RFC 6901 pointer (`/child/birthDate`); the caller renders it.
    pub pointer: String,
    /// What is wrong, after the field name (`is in the future`).
    pub text: &'static str,
}

/// Every problem of `doc` (at most [`MAX_PROBLEMS`]), with today's date.
pub fn check(doc: &Value) -> Vec<Problem> {
    check_at(doc, Utc::now())
}

/// [`check`] as of `now`.
pub fn check_at(doc: &Value, now: DateTime<Utc>) -> Vec<Problem> {
    // Today in the first time zone to reach it (UTC+14).
    let latest_today = (now + Duration::hours(14)).date_naive();
    let mut out = Vec::new();
    let mut ptr = String::new();
    walk(doc, &mut ptr, None, latest_today, &mut out);
    out
}

fn push(out: &mut Vec<Problem>, ptr: &str, text: &'static str) {
    if out.len() < MAX_PROBLEMS && !out.iter().any(|p| p.pointer == ptr && p.text == text) {
        out.push(Problem {
            pointer: ptr.to_string(),
            text,
        });
    }
}

fn walk(v: &Value, ptr: &mut String, key: Option<&str>, today: NaiveDate, out: &mut Vec<Problem>) {
    if out.len() >= MAX_PROBLEMS {
        return;
    }
    match v {
        Value::String(s) => {
            if !mapping::text::is_clean(s) {
                push(
                    out,
                    ptr,
                    "contains a control or bidirectional-formatting character",
                );
            }
            if let Some(problem) = date_problem(s, key == Some("birthDate"), today) {
                push(out, ptr, problem);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&i.to_string());
                walk(x, ptr, key, today, out);
                ptr.truncate(len);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                if !mapping::text::is_clean(k) {
                    push(
                        out,
                        ptr,
                        "has a member name with a control or bidirectional-formatting character",
                    );
                }
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk(x, ptr, Some(k), today, out);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}

fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |n, d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// Is `b` digits and separators exactly as `shape` (`9` = digit)?
fn shaped(b: &[u8], shape: &[u8]) -> bool {
    b.len() == shape.len()
        && b.iter().zip(shape).all(|(c, s)| match s {
            b'9' => c.is_ascii_digit(),
            s => c == s,
        })
}

/// The problem of a date-shaped string; `None` for a good one or a string
/// that is not shaped as a date at all.
fn date_problem(s: &str, birth: bool, today: NaiveDate) -> Option<&'static str> {
    const NOT_REAL: &str = "is not a real calendar date or time";
    let b = s.as_bytes();
    let (date, time) = if shaped(b, b"9999-99") {
        (&b[..7], None)
    } else if b.len() >= 10 && shaped(&b[..10], b"9999-99-99") {
        match b.get(10) {
            None => (&b[..10], None),
            Some(b'T') => (&b[..10], Some(&b[11..])),
            Some(_) => return None,
        }
    } else {
        return None;
    };
    let year = num(&date[..4])? as i32;
    let month = num(&date[5..7])?;
    let day = if date.len() == 10 {
        num(&date[8..10])?
    } else {
        1
    };
    let Some(d) = NaiveDate::from_ymd_opt(year, month, day) else {
        return Some(NOT_REAL);
    };
    if let Some(t) = time {
        if !real_time(t) {
            return Some(NOT_REAL);
        }
    }
    if !(MIN_YEAR..=MAX_YEAR).contains(&d.year()) {
        return Some("is outside the plausible years 1900-2199");
    }
    if birth && d > today {
        return Some("is in the future (a birth date cannot be)");
    }
    None
}

/// `hh:mm[:ss[.f+]][Z|±hh:mm]` with real values.
fn real_time(t: &[u8]) -> bool {
    if t.len() < 5 || !shaped(&t[..5], b"99:99") {
        return false;
    }
    let (Some(h), Some(m)) = (num(&t[..2]), num(&t[3..5])) else {
        return false;
    };
    if h > 23 || m > 59 {
        return false;
    }
    let mut rest = &t[5..];
    if rest.first() == Some(&b':') {
        if rest.len() < 3 || num(&rest[1..3]).is_none_or(|s| s > 60) {
            return false;
        }
        rest = &rest[3..];
        if rest.first() == Some(&b'.') {
            let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            rest = &rest[1 + digits..];
        }
    }
    match rest {
        [] | [b'Z'] => true,
        [b'+' | b'-', ..] if shaped(&rest[1..], b"99:99") => {
            matches!((num(&rest[1..3]), num(&rest[4..6])), (Some(h), Some(m)) if h <= 14 && m <= 59)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn problems(doc: Value) -> Vec<(String, &'static str)> {
        check_at(&doc, now())
            .into_iter()
            .map(|p| (p.pointer, p.text))
            .collect()
    }

    #[test]
    fn impossible_and_implausible_dates_are_named() {
        let p = problems(json!({
            "child": {"birthDate": "9999-99-99"},
            "a": "2026-02-30", "b": "2026-13", "c": "2026-01-10T24:00:00Z",
            "d": "2026-01-10T10:00:00+15:00", "e": "1899-12-31", "f": "2200-01-01",
            "g": ["2026-04-31"], "h": "2026-01-10T10:61Z",
        }));
        let at: Vec<&str> = p.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            at,
            [
                "/a",
                "/b",
                "/c",
                "/child/birthDate",
                "/d",
                "/e",
                "/f",
                "/g/0",
                "/h"
            ],
            "{p:?}"
        );
        assert!(p.iter().all(|(_, t)| !t.contains("9999")), "no values");
    }

    #[test]
    fn a_birth_date_in_the_future_is_refused_other_dates_are_not() {
        let p = problems(
            json!({"child": {"birthDate": "2099-01-01"}, "period": {"end": "2099-01-01"}}),
        );
        assert_eq!(
            p,
            vec![(
                "/child/birthDate".to_string(),
                "is in the future (a birth date cannot be)"
            )]
        );
        // Today anywhere on Earth is not the future (UTC+14 is already 2 June).
        assert!(problems(json!({"birthDate": "2026-06-02"})).is_empty());
        assert_eq!(problems(json!({"birthDate": "2026-06-03"})).len(), 1);
    }

    #[test]
    fn real_dates_and_non_dates_pass() {
        for ok in [
            "2026-02-28",
            "2024-02-29",
            "2026-01",
            "2026-01-10T09:30:00-08:00",
            "2026-01-10T09:30:00.123Z",
            "2026-01-10T09:30Z",
            "2016-12-31T23:59:60Z",
            "2026",
            "20260230",
            "2026-02-30x",
            "K-2026-02-30",
            "free text 2026-02-30",
            "Muñoz\tRuiz\r\nline",
        ] {
            assert!(problems(json!({"x": ok})).is_empty(), "{ok}");
        }
    }

    #[test]
    fn control_and_bidi_characters_are_refused_where_they_are() {
        let p = problems(json!({
            "child": {"name": {"family": "Ri\u{0}vera", "given": ["A", "Al\u{202E}ex"]}},
            "n": "x\u{7f}", "c1": "x\u{85}", "iso": "x\u{2067}",
            "obj": {"k\u{1}ey-SECRET": 1},
        }));
        let at: Vec<&str> = p.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(
            at,
            [
                "/c1",
                "/child/name/family",
                "/child/name/given/1",
                "/iso",
                "/n",
                "/obj"
            ],
            "{p:?}"
        );
        assert!(format!("{p:?}").find("SECRET").is_none());
    }

    #[test]
    fn problems_are_capped() {
        let many: Vec<Value> = (0..100).map(|_| json!("\u{0}")).collect();
        assert_eq!(problems(json!({"x": many})).len(), MAX_PROBLEMS);
    }
}
