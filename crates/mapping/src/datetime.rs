//! HL7 v2 DTM/DT → FHIR `date` / `dateTime` conversion.
//!
//! Input `YYYY[MM[DD[HH[MM[SS[.S{1,4}]]]]]][+/-ZZZZ]`. Every part is checked
//! (digits, ranges); anything malformed yields `None` so that the element is
//! omitted rather than emitted invalid. FHIR requires a time zone whenever a
//! time is given: the value's own offset is used, else the message default
//! (the mapping's `timezone_from`, normally MSH-7); without either the value
//! is truncated to its date.

/// `s.split_once('.')`, by a byte scan (`.` is ASCII; the `char` pattern
/// searcher costs several times more on these short strings).
fn split_dot(s: &str) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == b'.')?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// Split `s` into (digits part, optional offset like `-0800`).
fn split_tz(s: &str) -> (&str, Option<&str>) {
    // A byte scan (the signs are ASCII): `str::find` with a char set cost ≈ 4×.
    match s.bytes().position(|b| b == b'+' || b == b'-') {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The value of an all-digit string (`None` when empty or not all digits).
/// Dates and times are read 2 and 4 digits at a time: no `str::parse`.
#[inline]
fn num(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 9 {
        // Never 10+ digits here; `parse` keeps the overflow check exact.
        return if all_digits(s) { s.parse().ok() } else { None };
    }
    let mut n = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    Some(n)
}

/// Where a formatted date/dateTime is written: a `String`, or a
/// [`DtText`] on the stack (the evaluator's, no allocation per value).
pub(crate) trait Sink {
    /// Append an ASCII byte.
    fn push(&mut self, b: u8);
    fn push_str(&mut self, s: &str);
    fn len(&self) -> usize;
    fn truncate(&mut self, n: usize);
}

impl Sink for String {
    fn push(&mut self, b: u8) {
        String::push(self, char::from(b));
    }
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
    fn len(&self) -> usize {
        String::len(self)
    }
    fn truncate(&mut self, n: usize) {
        String::truncate(self, n);
    }
}

/// A formatted FHIR date or dateTime on the stack. Formatting never
/// writes more than 30 bytes from its own parts; a longer default offset
/// (only possible through the public API) sets `overflow` and the caller
/// formats into a `String` instead.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DtText {
    b: [u8; 40],
    n: u8,
    overflow: bool,
}

impl DtText {
    pub(crate) fn new() -> DtText {
        DtText {
            b: [0; 40],
            n: 0,
            overflow: false,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.b.get(..usize::from(self.n)).unwrap_or_default()
    }

    /// The text did not fit (see the type).
    pub(crate) fn overflow(&self) -> bool {
        self.overflow
    }
}

impl Sink for DtText {
    #[inline]
    fn push(&mut self, c: u8) {
        match self.b.get_mut(usize::from(self.n)) {
            Some(x) => {
                *x = c;
                self.n += 1;
            }
            None => self.overflow = true,
        }
    }
    fn push_str(&mut self, s: &str) {
        let n = usize::from(self.n);
        match self.b.get_mut(n..n + s.len()) {
            Some(x) => {
                x.copy_from_slice(s.as_bytes());
                self.n = (n + s.len()) as u8;
            }
            None => self.overflow = true,
        }
    }
    fn len(&self) -> usize {
        usize::from(self.n)
    }
    fn truncate(&mut self, n: usize) {
        self.n = self.n.min(u8::try_from(n).unwrap_or(u8::MAX));
    }
}

/// Whether `year-month-day` is a real (proleptic Gregorian) date: chrono's
/// calendar, not our own leap-year arithmetic.
fn real_date(year: u32, month: u32, day: u32) -> bool {
    i32::try_from(year)
        .ok()
        .and_then(|y| chrono::NaiveDate::from_ymd_opt(y, month, day))
        .is_some()
}

/// Append `n` zero-padded to `width` digits (`n < 10^width`, checked by callers).
#[inline]
fn push_num(out: &mut impl Sink, n: u32, width: u32) {
    let d = |x: u32| b'0' + (x % 10) as u8;
    if width == 4 {
        out.push(d(n / 1000));
        out.push(d(n / 100));
    }
    out.push(d(n / 10));
    out.push(d(n));
}

/// Validate and format the date part (`YYYY`, `YYYYMM`, `YYYYMMDD`) into
/// `out`; `false` (and nothing written) when invalid.
fn date_part_into(d: &str, out: &mut impl Sink) -> bool {
    let Some(year) = d.get(0..4).and_then(num) else {
        return false;
    };
    if year == 0 {
        return false;
    }
    let (month, day) = match d.len() {
        4 => (None, None),
        6 => match d.get(4..6).and_then(num) {
            Some(m) if (1..=12).contains(&m) => (Some(m), None),
            _ => return false,
        },
        8.. => {
            let (Some(m), Some(day)) = (d.get(4..6).and_then(num), d.get(6..8).and_then(num))
            else {
                return false;
            };
            if !real_date(year, m, day) {
                return false;
            }
            (Some(m), Some(day))
        }
        _ => return false,
    };
    push_num(out, year, 4);
    for part in [month, day].into_iter().flatten() {
        out.push(b'-');
        push_num(out, part, 2);
    }
    true
}

/// A FHIR offset `+HH:MM`, on the stack (no allocation per timestamp).
#[derive(Clone, Copy)]
pub(crate) struct Offset([u8; 6]);

impl Offset {
    pub(crate) fn as_str(&self) -> &str {
        // Built from ASCII only (sign and digits); never the fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Normalise an HL7 offset `+HHMM` to FHIR `+HH:MM` (`Z` never produced).
pub(crate) fn offset(tz: &str) -> Option<Offset> {
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
    let sign = *sign.as_bytes().first()?;
    if !sign.is_ascii() {
        return None;
    }
    let d = |n: u32| b'0' + (n % 10) as u8;
    Some(Offset([sign, d(h / 10), d(h), b':', d(m / 10), d(m)]))
}

/// The offset carried by an HL7 timestamp, if any (used for `timezone_from`).
pub(crate) fn offset_of(ts: &str) -> Option<String> {
    let ts = ts.trim();
    let (_, tz) = split_tz(ts);
    offset(tz?).map(|o| o.as_str().to_string())
}

/// HL7 DT/DTM → FHIR `date` (precision kept down to the day, time dropped).
pub fn to_date(v: &str) -> Option<String> {
    let mut out = String::with_capacity(40);
    to_date_into(v, &mut out).then_some(out)
}

/// [`to_date`] appended to `out`; `false` when malformed.
pub(crate) fn to_date_into(v: &str, out: &mut impl Sink) -> bool {
    to_date_checked(v, out).is_some()
}

fn to_date_checked(v: &str, out: &mut impl Sink) -> Option<()> {
    let v = v.trim();
    let (d, tz) = split_tz(v);
    if let Some(tz) = tz {
        offset(tz)?;
    }
    let frac = split_dot(d);
    let digits = frac.map_or(d, |x| x.0);
    if !all_digits(digits) {
        return None;
    }
    // A time part must itself be well formed for the value to be trusted.
    if digits.len() > 8 {
        let mut scratch = DtText::new();
        time_part_into(digits.get(8..)?, frac.map(|x| x.1), &mut scratch).then_some(())?;
    }
    date_part_into(digits.get(..digits.len().min(8))?, out).then_some(())
}

/// [`time_part`] appended to `out`; `false` when invalid (then `out` may
/// hold a partial time: callers discard it).
fn time_part_into(t: &str, frac: Option<&str>, out: &mut impl Sink) -> bool {
    let Some(v) = time_values(t) else {
        return false;
    };
    if let Some(f) = frac {
        if t.len() != 6 || f.is_empty() || f.len() > 4 || !all_digits(f) {
            return false;
        }
    }
    let (h, mi, s) = v;
    push_num(out, h, 2);
    out.push(b':');
    push_num(out, mi, 2);
    out.push(b':');
    push_num(out, s, 2);
    if let Some(f) = frac {
        out.push(b'.');
        out.push_str(f);
    }
    true
}

/// Hours, minutes, seconds of `HH[MM[SS]]`, range-checked.
fn time_values(t: &str) -> Option<(u32, u32, u32)> {
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
    Some((h, mi, s))
}

/// HL7 DTM → FHIR `dateTime`. `default_tz` is the message's offset
/// (`+HH:MM`) used when the value has a time but no offset of its own.
pub fn to_datetime(v: &str, default_tz: Option<&str>) -> Option<String> {
    let mut out = String::with_capacity(32);
    to_datetime_into(v, default_tz, &mut out).then_some(out)
}

/// [`to_datetime`] appended to an empty `out`; `false` when malformed.
pub(crate) fn to_datetime_into(v: &str, default_tz: Option<&str>, out: &mut impl Sink) -> bool {
    to_datetime_checked(v, default_tz, out).is_some()
}

fn to_datetime_checked(v: &str, default_tz: Option<&str>, out: &mut impl Sink) -> Option<()> {
    let v = v.trim();
    let (d, tz) = split_tz(v);
    let own_tz = match tz {
        Some(t) => Some(offset(t)?),
        None => None,
    };
    let (digits, frac) = match split_dot(d) {
        Some((a, b)) => (a, Some(b)),
        None => (d, None),
    };
    if !all_digits(digits) {
        return None;
    }
    if !date_part_into(digits.get(..digits.len().min(8))?, out) {
        return None;
    }
    if digits.len() <= 8 {
        return (frac.is_none()).then_some(());
    }
    if digits.len() < 10 {
        return None; // YYYYMMDDH is malformed
    }
    let date_len = out.len();
    out.push(b'T');
    if !time_part_into(digits.get(8..)?, frac, out) {
        return None;
    }
    match (own_tz, default_tz) {
        // The offset's bytes (ASCII) straight in: no `str` round trip.
        (Some(o), _) => o.0.iter().for_each(|&b| out.push(b)),
        (None, Some(tz)) => out.push_str(tz),
        (None, None) => out.truncate(date_len),
    }
    Some(())
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
        // Leap years and month lengths are chrono's: 1900 is not a leap
        // year, 2000 is; April has 30 days; years 0001 and 9999 work.
        assert_eq!(to_date("19000229"), None);
        assert_eq!(to_date("20000229").as_deref(), Some("2000-02-29"));
        assert_eq!(to_date("20230229"), None);
        assert_eq!(to_date("20260431"), None);
        assert_eq!(to_date("20261231").as_deref(), Some("2026-12-31"));
        assert_eq!(to_date("00010101").as_deref(), Some("0001-01-01"));
        assert_eq!(to_date("99991231").as_deref(), Some("9999-12-31"));
        assert_eq!(to_date("20260100"), None);
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
