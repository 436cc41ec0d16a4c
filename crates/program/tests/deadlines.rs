//! Policy timelines over the shipped California calendar: weekends, state holidays, DST, expedited.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use cwsgw_program::deadlines::{apply, Rule};
use cwsgw_program::pacific::{end_of_local_day, local_date};
use cwsgw_program::{due, Calendar, Clock};
use proptest::prelude::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cal() -> Calendar {
    Calendar::default_ca()
}

#[test]
fn authorization_decision_skips_thanksgiving_2026() {
    // Monday 23 Nov 2026, 10:00 PST. 5 working days: Tue 24, Wed 25, (Thu 26 + Fri 27 holidays,
    // weekend), Mon 30, Tue 1, Wed 2 Dec -> end of Wednesday 2 December, Pacific time.
    let start = t("2026-11-23T18:00:00Z");
    let want = t("2026-12-03T07:59:59Z");
    assert_eq!(
        due(Clock::AuthorizationDecision, start, false, &cal()),
        want
    );
    assert_eq!(
        due(Clock::SwNotifiedOfEnrollment, start, false, &cal()),
        want
    );
    // The same instant written with its local offset.
    let local = DateTime::parse_from_rfc3339("2026-11-23T10:00:00-08:00").unwrap();
    assert_eq!(
        due(Clock::AuthorizationDecision, local, false, &cal()),
        want
    );
}

#[test]
fn start_date_is_the_local_date() {
    // 06:30 UTC on the 24th is 22:30 on Monday the 23rd in California: same deadline as Monday.
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-11-24T06:30:00Z"),
            false,
            &cal()
        ),
        t("2026-12-03T07:59:59Z")
    );
    // 08:00 UTC on the 24th is Tuesday 00:00 PST: one working day later.
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-11-24T08:00:00Z"),
            false,
            &cal()
        ),
        t("2026-12-04T07:59:59Z")
    );
}

#[test]
fn expedited_is_72_elapsed_hours() {
    let start = t("2026-11-25T18:00:00Z"); // Wednesday before Thanksgiving
    assert_eq!(
        due(Clock::AuthorizationDecision, start, true, &cal()),
        t("2026-11-28T18:00:00Z")
    );
    assert_eq!(
        due(Clock::SwNotifiedOfEnrollment, start, true, &cal()),
        t("2026-11-28T18:00:00Z")
    );
}

#[test]
fn weekend_start_counts_from_monday() {
    // Saturday 28 Nov 2026: Mon 30, Tue 1, Wed 2, Thu 3, Fri 4 -> end of Friday 4 December.
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-11-28T20:00:00Z"),
            false,
            &cal()
        ),
        t("2026-12-05T07:59:59Z")
    );
}

#[test]
fn christmas_and_new_year() {
    // Wed 23 Dec 2026: Thu 24, (Fri 25 Christmas), Mon 28, Tue 29, Wed 30, Thu 31.
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-12-23T17:00:00Z"),
            false,
            &cal()
        ),
        t("2027-01-01T07:59:59Z")
    );
    // Thu 24 Dec 2026: Mon 28, Tue 29, Wed 30, Thu 31, (Fri 1 Jan New Year), Mon 4 Jan.
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-12-24T17:00:00Z"),
            false,
            &cal()
        ),
        t("2027-01-05T07:59:59Z")
    );
}

#[test]
fn cesar_chavez_day_and_dst() {
    // Mon 30 Mar 2026: (Tue 31 Cesar Chavez Day), Wed 1, Thu 2, Fri 3, Mon 6, Tue 7 Apr; PDT.
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-03-30T17:00:00Z"),
            false,
            &cal()
        ),
        t("2026-04-08T06:59:59Z")
    );
    // Fri 6 Mar 2026 (PST) -> Fri 13 Mar (PDT): end of day is 06:59:59 UTC.
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-03-06T18:00:00Z"),
            false,
            &cal()
        ),
        t("2026-03-14T06:59:59Z")
    );
}

#[test]
fn ten_business_days_for_assignment_notices() {
    // From Mon 23 Nov 2026: 24, 25, 30, 1, 2, 3, 4, 7, 8, 9 Dec.
    let start = t("2026-11-23T18:00:00Z");
    assert_eq!(
        due(Clock::EcmProviderToldOfAssignment, start, false, &cal()),
        t("2026-12-10T07:59:59Z")
    );
    assert_eq!(
        due(Clock::PcpToldOfAssignment, start, false, &cal()),
        t("2026-12-10T07:59:59Z")
    );
}

#[test]
fn streamlined_window_and_referral_due() {
    // Services start Mon 2 Nov 2026 09:00 PST. Window: 30 calendar days -> end of Wed 2 Dec.
    let start = t("2026-11-02T17:00:00Z");
    assert_eq!(
        due(Clock::StreamlinedAuthorizationWindow, start, false, &cal()),
        t("2026-12-03T07:59:59Z")
    );
    // 5 working days before 2 Dec: Tue 1, Mon 30, (Thanksgiving Fri 27 / Thu 26), Wed 25, Tue 24,
    // Mon 23 -> end of Monday 23 November.
    assert_eq!(
        due(Clock::StreamlinedReferralDue, start, false, &cal()),
        t("2026-11-24T07:59:59Z")
    );
    // Expedited changes neither.
    assert_eq!(
        due(Clock::StreamlinedReferralDue, start, true, &cal()),
        t("2026-11-24T07:59:59Z")
    );
}

#[test]
fn hour_clocks_are_elapsed_time_across_dst() {
    // 24 hours across the spring-forward night is 24 elapsed hours.
    let start = t("2026-03-07T12:00:00Z");
    assert_eq!(
        due(Clock::AdtToEcmProvider, start, false, &cal()),
        t("2026-03-08T12:00:00Z")
    );
    assert_eq!(
        due(Clock::PlanDetermination, start, true, &cal()),
        t("2026-03-08T12:00:00Z")
    );
}

#[test]
fn calendar_day_and_month_clocks() {
    // Assessment: 30 days from Thu 15 Jan 2026 -> end of Sat 14 Feb (calendar days, weekends count).
    assert_eq!(
        due(
            Clock::EcmAssessment,
            t("2026-01-15T20:00:00Z"),
            false,
            &cal()
        ),
        t("2026-02-15T07:59:59Z")
    );
    assert_eq!(
        due(
            Clock::ProviderChangeRequest,
            t("2026-01-15T20:00:00Z"),
            false,
            &cal()
        ),
        t("2026-02-15T07:59:59Z")
    );
    // Care plan review: 31 Aug 2026 + 6 months clamps to 28 Feb 2027.
    assert_eq!(
        due(
            Clock::CarePlanReview,
            t("2026-08-31T17:00:00Z"),
            false,
            &cal()
        ),
        t("2027-03-01T07:59:59Z")
    );
}

#[test]
fn notice_of_action_latest_send_date() {
    // Plan change effective Tue 1 Dec 2026 00:00 PST: send by the end of Sat 21 Nov.
    let effective = t("2026-12-01T08:00:00Z");
    let latest = due(Clock::NoticeOfAction, effective, false, &cal());
    assert_eq!(latest, t("2026-11-22T07:59:59Z"));
    assert!(latest < effective);
    assert_eq!((local_date(effective) - local_date(latest)).num_days(), 10);
}

/// The referral lifecycle's clocks, each opened on a weekend, a state holiday or beside one (the
/// shipped California calendar), with the deadline and whether a close at a given instant meets
/// it: one row per (clock, opening event, closing event).
#[test]
fn lifecycle_clocks_open_and_close_across_weekends_and_holidays() {
    struct Row {
        clock: Clock,
        what: &'static str,
        start: &'static str,
        expedited: bool,
        due: &'static str,
        closed: &'static str,
        on_time: bool,
    }
    let rows = [
        Row {
            clock: Clock::AuthorizationPeriod,
            what: "authorized on Christmas Day (Fri): 12 months, holidays do not matter",
            start: "2026-12-25T18:00:00Z",
            expedited: false,
            due: "2027-12-26T07:59:59Z",
            closed: "2027-12-20T17:00:00Z",
            on_time: true,
        },
        Row {
            clock: Clock::AuthorizationPeriod,
            what:
                "authorized Sun 28 Feb 2027: ends 28 Feb 2028 (not the leap day), reauthorized late",
            start: "2027-02-28T18:00:00Z",
            expedited: false,
            due: "2028-02-29T07:59:59Z",
            closed: "2028-02-29T08:00:00Z",
            on_time: false,
        },
        Row {
            clock: Clock::ReauthorizationPeriod,
            what: "reauthorized 31 Aug: 6 months clamps to the end of February",
            start: "2026-08-31T17:00:00Z",
            expedited: false,
            due: "2027-03-01T07:59:59Z",
            closed: "2027-03-01T07:59:59Z",
            on_time: true,
        },
        Row {
            clock: Clock::ReauthorizationPeriod,
            what: "reauthorized on the Sunday DST starts: ends on Pacific daylight time",
            start: "2027-03-14T18:00:00Z",
            expedited: false,
            due: "2027-09-15T06:59:59Z",
            closed: "2027-09-10T20:00:00Z",
            on_time: true,
        },
        Row {
            clock: Clock::MemberNoticeOfAction,
            what: "denied the Wednesday before Thanksgiving: Mon 30 .. Fri 4 Dec",
            start: "2026-11-25T18:00:00Z",
            expedited: false,
            due: "2026-12-05T07:59:59Z",
            closed: "2026-12-04T23:00:00Z",
            on_time: true,
        },
        Row {
            clock: Clock::MemberNoticeOfAction,
            what: "expedited denial the same Wednesday: 72 elapsed hours",
            start: "2026-11-25T18:00:00Z",
            expedited: true,
            due: "2026-11-28T18:00:00Z",
            closed: "2026-11-30T17:00:00Z",
            on_time: false,
        },
        Row {
            clock: Clock::MemberNoticeOfAction,
            what: "discontinued on a Saturday before Christmas: Mon 21 .. Thu 24, Mon 28",
            start: "2026-12-19T19:00:00Z",
            expedited: false,
            due: "2026-12-29T07:59:59Z",
            closed: "2026-12-28T18:00:00Z",
            on_time: true,
        },
        Row {
            clock: Clock::EcmAssessment,
            what: "assigned on Christmas Day: 30 calendar days",
            start: "2026-12-25T18:00:00Z",
            expedited: false,
            due: "2027-01-25T07:59:59Z",
            closed: "2027-01-25T08:00:00Z",
            on_time: false,
        },
        Row {
            clock: Clock::ProviderChangeRequest,
            what: "change requested the Saturday after Thanksgiving",
            start: "2026-11-28T19:00:00Z",
            expedited: false,
            due: "2026-12-29T07:59:59Z",
            closed: "2026-12-21T18:00:00Z",
            on_time: true,
        },
        Row {
            clock: Clock::EcmProviderToldOfAssignment,
            what: "authorized Mon 21 Dec: 10 business days skip Christmas and New Year's Day",
            start: "2026-12-21T18:00:00Z",
            expedited: false,
            due: "2027-01-07T07:59:59Z",
            closed: "2027-01-06T22:00:00Z",
            on_time: true,
        },
        Row {
            clock: Clock::SwNotifiedOfEnrollment,
            what: "enrolled Fri 6 Nov: Veterans Day is skipped",
            start: "2026-11-06T18:00:00Z",
            expedited: false,
            due: "2026-11-17T07:59:59Z",
            closed: "2026-11-17T08:00:00Z",
            on_time: false,
        },
    ];
    for r in rows {
        let due_at = due(r.clock, t(r.start), r.expedited, &cal());
        assert_eq!(due_at, t(r.due), "{}: {}", r.clock, r.what);
        assert_eq!(t(r.closed) <= due_at, r.on_time, "{}: {}", r.clock, r.what);
    }
}

#[test]
fn holiday_calendar_is_configurable() {
    let weekends = Calendar::weekends_only();
    // Without holidays, 5 working days from Mon 23 Nov end on Mon 30 Nov.
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-11-23T18:00:00Z"),
            false,
            &weekends
        ),
        t("2026-12-01T07:59:59Z")
    );
    let custom = Calendar::from_csv("date,name\n2026-11-24,County closure\n").unwrap();
    assert_eq!(
        due(
            Clock::AuthorizationDecision,
            t("2026-11-23T18:00:00Z"),
            false,
            &custom
        ),
        t("2026-12-02T07:59:59Z")
    );
}

#[test]
fn codes_are_stable_and_unique() {
    let codes: Vec<_> = Clock::ALL.iter().map(|c| c.code()).collect();
    let mut dedup = codes.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), Clock::ALL.len());
    for c in Clock::ALL {
        assert_eq!(Clock::from_code(c.code()), Some(c));
        assert_eq!(c.to_string(), c.code());
    }
    assert_eq!(
        Clock::AuthorizationDecision.code(),
        "authorization-decision"
    );
    assert_eq!(Clock::from_code("nope"), None);
    assert_eq!(Clock::AuthorizationDecision.rule(true), Rule::Hours(72));
    assert_eq!(
        Clock::AuthorizationDecision.rule(false).to_string(),
        "5 working days"
    );
    for c in Clock::ALL {
        if !matches!(
            c,
            Clock::AuthorizationDecision
                | Clock::SwNotifiedOfEnrollment
                | Clock::MemberNoticeOfAction
        ) {
            assert_eq!(c.rule(true), c.rule(false), "{c}");
        }
    }
}

#[test]
fn extreme_instants_saturate() {
    let max = DateTime::<Utc>::MAX_UTC;
    for c in Clock::ALL {
        let _ = due(c, max, false, &cal());
        let _ = due(c, DateTime::<Utc>::MIN_UTC, false, &cal());
    }
    assert_eq!(apply(Rule::Hours(24), max, &cal()), max);
    assert_eq!(apply(Rule::WorkingDaysAfter(5), max, &cal()), max);
}

proptest! {
    #[test]
    fn working_day_deadlines_land_on_working_days(
        day in 0i64..(4 * 365),
        secs in 0i64..86_400,
        n in 1u32..25,
    ) {
        let cal = cal();
        let start = t("2025-01-01T00:00:00Z") + Duration::days(day) + Duration::seconds(secs);
        let deadline = apply(Rule::WorkingDaysAfter(n), start, &cal);
        prop_assert!(deadline > start);
        let last = local_date(deadline);
        prop_assert!(cal.is_working_day(last));
        prop_assert_eq!(end_of_local_day(last), deadline);
        // Exactly n working days in (start date, last].
        let first = local_date(start);
        let mut count = 0;
        let mut d: NaiveDate = first;
        while d < last {
            d = d.succ_opt().unwrap();
            if cal.is_working_day(d) { count += 1; }
        }
        prop_assert_eq!(count, n);
        prop_assert_eq!(cal.sub_working_days(last, n).map(|x| x <= first), Some(true));
    }

    #[test]
    fn after_clocks_never_precede_the_start(day in 0i64..(4 * 365), secs in 0i64..86_400, exp: bool) {
        let cal = cal();
        let start = t("2025-01-01T00:00:00Z") + Duration::days(day) + Duration::seconds(secs);
        for c in Clock::ALL {
            let d = due(c, start, exp, &cal);
            match c {
                Clock::NoticeOfAction => prop_assert!(d < start),
                Clock::StreamlinedReferralDue => prop_assert!(d <= due(Clock::StreamlinedAuthorizationWindow, start, exp, &cal)),
                _ => prop_assert!(d > start, "{}", c),
            }
        }
    }
}
