//! HL7 v2 DTM/DT → FHIR `date` / `dateTime` conversion.
//!
//! Input `YYYY[MM[DD[HH[MM[SS[.S{1,4}]]]]]][+/-ZZZZ]`. Every part is checked
//! (digits, ranges); anything malformed yields `None` so that the element is
//! omitted rather than emitted invalid. FHIR requires a time zone whenever a
//! time is given: the value's own offset is used, else the message default
//! (the mapping's `timezone_from`, normally MSH-7); without either the value
//! is truncated to its date.

/// Split `s` into (digits part, optional offset like `-0800`).
fn split_tz(s: &str) -> (&str, Option<&str>) {
    match s.find(['+', '-']) {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn num(s: &str) -> Option<u32> {
    if all_digits(s) {
        s.parse().ok()
    } else {
        None
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Validate and format the date part (`YYYY`, `YYYYMM`, `YYYYMMDD`).
fn date_part(d: &str) -> Option<String> {
    let year = num(d.get(0..4)?)?;
    if year == 0 {
        return None;
    }
    match d.len() {
        4 => Some(format!("{year:04}")),
        6 => {
            let m = num(d.get(4..6)?)?;
            (1..=12).contains(&m).then(|| format!("{year:04}-{m:02}"))
        }
        8.. => {
            let m = num(d.get(4..6)?)?;
            let day = num(d.get(6..8)?)?;
            ((1..=12).contains(&m) && day >= 1 && day <= days_in_month(year, m))
                .then(|| format!("{year:04}-{m:02}-{day:02}"))
        }
        _ => None,
    }
}

/// Normalise an HL7 offset `+HHMM` to FHIR `+HH:MM` (`Z` never produced).
pub(crate) fn offset(tz: &str) -> Option<String> {
    let sign = tz.get(0..1)?;
    let body = tz.get(1..)?;
    if body.len() != 4 {
        return None;
    }
    let h = num(body.get(0..2)?)?;
    let m = num(body.get(2..4)?)?;
    if h > 14 || m > 59 || (h == 14 && m != 0) {
        return None;
    }
    Some(format!("{sign}{h:02}:{m:02}"))
}

/// The offset carried by an HL7 timestamp, if any (used for `timezone_from`).
pub(crate) fn offset_of(ts: &str) -> Option<String> {
    let ts = ts.trim();
    let (_, tz) = split_tz(ts);
    offset(tz?)
}

/// HL7 DT/DTM → FHIR `date` (precision kept down to the day, time dropped).
pub fn to_date(v: &str) -> Option<String> {
    let v = v.trim();
    let (d, tz) = split_tz(v);
    if let Some(tz) = tz {
        offset(tz)?;
    }
    let digits = d.split('.').next().unwrap_or(d);
    if !all_digits(digits) {
        return None;
    }
    // A time part must itself be well formed for the value to be trusted.
    if digits.len() > 8 {
        time_part(digits.get(8..)?, d.split_once('.').map(|x| x.1))?;
    }
    date_part(digits.get(..digits.len().min(8))?)
}

fn time_part(t: &str, frac: Option<&str>) -> Option<String> {
    let h = num(t.get(0..2)?)?;
    let mi = match t.len() {
        2 => 0,
        4 | 6 => num(t.get(2..4)?)?,
        _ => return None,
    };
    let s = if t.len() == 6 { num(t.get(4..6)?)? } else { 0 };
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut out = format!("{h:02}:{mi:02}:{s:02}");
    if let Some(f) = frac {
        if t.len() != 6 || f.is_empty() || f.len() > 4 || !all_digits(f) {
            return None;
        }
        out.push('.');
        out.push_str(f);
    }
    Some(out)
}

/// HL7 DTM → FHIR `dateTime`. `default_tz` is the message's offset
/// (`+HH:MM`) used when the value has a time but no offset of its own.
pub fn to_datetime(v: &str, default_tz: Option<&str>) -> Option<String> {
    let v = v.trim();
    let (d, tz) = split_tz(v);
    let own_tz = match tz {
        Some(t) => Some(offset(t)?),
        None => None,
    };
    let (digits, frac) = match d.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (d, None),
    };
    if !all_digits(digits) {
        return None;
    }
    let date = date_part(digits.get(..digits.len().min(8))?)?;
    if digits.len() <= 8 {
        return (frac.is_none()).then_some(date);
    }
    if digits.len() < 10 {
        return None; // YYYYMMDDH is malformed
    }
    let time = time_part(digits.get(8..)?, frac)?;
    match own_tz.as_deref().or(default_tz) {
        Some(tz) => Some(format!("{date}T{time}{tz}")),
        None => Some(date),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(to_date("19850312").as_deref(), Some("1985-03-12"));
        assert_eq!(to_date("198503").as_deref(), Some("1985-03"));
        assert_eq!(to_date("1985").as_deref(), Some("1985"));
        assert_eq!(to_date("198503121230").as_deref(), Some("1985-03-12"));
        assert_eq!(to_date("19850231"), None);
        assert_eq!(to_date("20240229").as_deref(), Some("2024-02-29"));
        assert_eq!(to_date("2023022"), None);
        assert_eq!(to_date("1985x312"), None);
        assert_eq!(to_date("198503122599"), None);
        assert_eq!(to_date(""), None);
    }

    #[test]
    fn datetimes() {
        assert_eq!(
            to_datetime("202601141230-0800", None).as_deref(),
            Some("2026-01-14T12:30:00-08:00")
        );
        assert_eq!(
            to_datetime("20260114123045.12", Some("+01:00")).as_deref(),
            Some("2026-01-14T12:30:45.12+01:00")
        );
        assert_eq!(
            to_datetime("202601141230", None).as_deref(),
            Some("2026-01-14")
        );
        assert_eq!(
            to_datetime("20260114", Some("-08:00")).as_deref(),
            Some("2026-01-14")
        );
        assert_eq!(
            to_datetime("2026011412", Some("-08:00")).as_deref(),
            Some("2026-01-14T12:00:00-08:00")
        );
        assert_eq!(to_datetime("202601142530", Some("-08:00")), None);
        assert_eq!(to_datetime("202601141230-2500", None), None);
        assert_eq!(to_datetime("202601141", None), None);
        assert_eq!(offset_of("20260114123000-0700").as_deref(), Some("-07:00"));
        assert_eq!(offset_of("20260114123000"), None);
    }
}
