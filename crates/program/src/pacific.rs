//! America/Los_Angeles local dates without a time-zone database.
//!
//! The deadline rules count California working days, so an instant has to be turned into the local
//! calendar date and a local "end of day" back into an instant. The gateway keeps instants in UTC and
//! applies the United States daylight-saving rule in force since 2007 (Energy Policy Act of 2005) to
//! every year: Pacific Daylight Time (UTC-7) from the second Sunday in March at 02:00 local standard time
//! (10:00 UTC) until the first Sunday in November at 02:00 local daylight time (09:00 UTC); Pacific
//! Standard Time (UTC-8) otherwise.
//!
//! **Invariant:** nothing here panics; dates outside chrono's range saturate.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc, Weekday};

/// The `n`th (1-based) given weekday of a month.
fn nth_weekday(year: i32, month: u32, weekday: Weekday, n: u8) -> Option<NaiveDate> {
    NaiveDate::from_weekday_of_month_opt(year, month, weekday, n)
}

/// Local dates on which daylight time starts and ends in `year`.
fn dst_dates(year: i32) -> Option<(NaiveDate, NaiveDate)> {
    Some((
        nth_weekday(year, 3, Weekday::Sun, 2)?,
        nth_weekday(year, 11, Weekday::Sun, 1)?,
    ))
}

/// Whether the UTC instant falls in Pacific Daylight Time.
fn is_dst_at(instant: DateTime<Utc>) -> bool {
    let Some((start, end)) = dst_dates(instant.year()) else {
        return false;
    };
    let starts = start.and_hms_opt(10, 0, 0).map(|t| t.and_utc());
    let ends = end.and_hms_opt(9, 0, 0).map(|t| t.and_utc());
    match (starts, ends) {
        (Some(s), Some(e)) => instant >= s && instant < e,
        _ => false,
    }
}

/// Offset from UTC, in hours, of Pacific local time at `instant` (-7 or -8).
pub(crate) fn offset_hours(instant: DateTime<Utc>) -> i64 {
    if is_dst_at(instant) {
        -7
    } else {
        -8
    }
}

/// The Pacific local calendar date of a UTC instant.
pub fn local_date(instant: DateTime<Utc>) -> NaiveDate {
    let shifted = instant.checked_add_signed(Duration::hours(offset_hours(instant)));
    match shifted {
        Some(t) => t.date_naive(),
        None => instant.date_naive(),
    }
}

/// The last second of a Pacific local date (23:59:59 local), as a UTC instant.
///
/// Saturates to `DateTime::<Utc>::MAX_UTC` when the result is outside chrono's range.
pub fn end_of_local_day(date: NaiveDate) -> DateTime<Utc> {
    // At 23:59 local, daylight time is in force from its start date up to (not including) its end date:
    // both transitions happen at 02:00.
    let dst = dst_dates(date.year())
        .map(|(start, end)| date >= start && date < end)
        .unwrap_or(false);
    let offset = if dst { 7 } else { 8 };
    let Some(local) = NaiveTime::from_hms_opt(23, 59, 59).map(|t| date.and_time(t)) else {
        return DateTime::<Utc>::MAX_UTC;
    };
    local
        .checked_add_signed(Duration::hours(offset))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn local_date_crosses_midnight_by_offset() {
        // 2026-11-24 06:30 UTC is 22:30 on the 23rd in PST.
        assert_eq!(
            local_date(utc("2026-11-24T06:30:00Z")),
            NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
        );
        assert_eq!(
            local_date(utc("2026-11-24T08:00:00Z")),
            NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
        );
        // Summer: 06:30 UTC is 23:30 PDT the day before.
        assert_eq!(
            local_date(utc("2026-07-10T06:30:00Z")),
            NaiveDate::from_ymd_opt(2026, 7, 9).unwrap()
        );
        assert_eq!(
            local_date(utc("2026-07-10T07:00:00Z")),
            NaiveDate::from_ymd_opt(2026, 7, 10).unwrap()
        );
    }

    #[test]
    fn dst_transitions_2026() {
        // DST 2026: starts Sunday 8 March, ends Sunday 1 November.
        assert!(!is_dst_at(utc("2026-03-08T09:59:59Z")));
        assert!(is_dst_at(utc("2026-03-08T10:00:00Z")));
        assert!(is_dst_at(utc("2026-11-01T08:59:59Z")));
        assert!(!is_dst_at(utc("2026-11-01T09:00:00Z")));
    }

    #[test]
    fn end_of_day_uses_offset_in_force_at_night() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(
            end_of_local_day(d(2026, 12, 1)),
            utc("2026-12-02T07:59:59Z")
        );
        assert_eq!(end_of_local_day(d(2026, 7, 1)), utc("2026-07-02T06:59:59Z"));
        assert_eq!(end_of_local_day(d(2026, 3, 8)), utc("2026-03-09T06:59:59Z"));
        assert_eq!(
            end_of_local_day(d(2026, 11, 1)),
            utc("2026-11-02T07:59:59Z")
        );
        assert_eq!(local_date(end_of_local_day(d(2026, 11, 1))), d(2026, 11, 1));
    }

    #[test]
    fn extremes_do_not_panic() {
        let _ = end_of_local_day(NaiveDate::MAX);
        let _ = local_date(DateTime::<Utc>::MIN_UTC);
        let _ = local_date(DateTime::<Utc>::MAX_UTC);
    }
}
