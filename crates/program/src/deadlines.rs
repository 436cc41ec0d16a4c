//! Policy timelines (docs/program-rules.md "Timelines the gateway tracks"; seed 000 steps 6–7 and 10–11,
//! seed 003 §VIII "Authorization", "Standard ECM Authorization Timeframes", "Streamlined authorization",
//! "Assignment", "Member Preference", "NOA Process", §IX "ADT").
//!
//! One [`Clock`] per tracked obligation; [`due`] turns a start instant into the deadline instant.
//!
//! # How a rule is counted
//! Instants are kept in UTC; counting is done on the **America/Los_Angeles local date** of the start
//! (see [`crate::pacific`]), because working days are California working days.
//!
//! - **Hours** (`72 hours`, `24 hours`): the start instant plus that many elapsed hours; calendars
//!   and weekends do not matter.
//! - **N working (business) days after**: the deadline is the **end (23:59:59 local) of the Nth
//!   working day after the start's local date**. The start date itself is never counted, whatever the
//!   time of day or whether it is a working day. A referral received Monday 23 November 2026 has a
//!   5-working-day decision due at the end of Wednesday 2 December 2026 (Thanksgiving and the day after
//!   are state holidays). "Business days" and "working days" are the same calendar here.
//! - **N calendar days after**: the end of the local date N days after the start date (the first day
//!   is excluded and the last included, as in Cal. Code Civ. Proc. §12).
//! - **N months after**: the end of the local date N months after the start date; a day missing from
//!   the target month clamps to its last day (31 August + 6 months = 28/29 February).
//! - **N calendar days before** (Notice of Action): the start is the instant the plan change takes
//!   effect; the deadline is the end of the local date N days before it, i.e. the latest date the
//!   notice can go out and still be "at least 10 days prior".
//! - **Streamlined authorization**: the window is 30 calendar days from the start of services (end of
//!   local start date + 30); the referral to the MCP is due by the end of the 5th working day before the
//!   window's last date. The window also ends early when the MCP decides — that is an event, not a
//!   computation, and is left to the caller.
//!
//! `expedited` only changes the clocks that have an expedited form (authorization decision, SW/PHN
//! notice of enrollment and the member's Notice of Action on a denial or discontinuation, which is
//! counted as the decision it accompanies: 72 hours); every other clock ignores it.
//!
//! Invariant: **[`due`] never panics**; a deadline beyond chrono's range saturates to
//! `DateTime::<Utc>::MAX_UTC`.

use std::fmt;

use chrono::{DateTime, Duration, Months, NaiveDate, TimeZone, Utc};

use crate::calendar::Calendar;
use crate::pacific;

/// An obligation with a deadline. [`Clock::code`] gives a stable string for storage and APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Clock {
    /// MCP decision on an ECM referral: 5 working days, 72 hours expedited (003 §VIII).
    AuthorizationDecision,
    /// SW (and PHN) told of ECM enrollment: 5 working days, 72 hours expedited (000 step 6).
    SwNotifiedOfEnrollment,
    /// ECM provider told of an assignment: 10 business days after authorization (003 §VIII).
    EcmProviderToldOfAssignment,
    /// Member's PCP told of the ECM assignment: 10 business days after assignment (003 §VIII).
    PcpToldOfAssignment,
    /// End of the streamlined (presumptive) authorization window: 30 calendar days (003 §VIII).
    StreamlinedAuthorizationWindow,
    /// Referral from a streamlined-authorization provider: 5 working days before the window ends.
    StreamlinedReferralDue,
    /// ADT data to the assigned ECM provider: 24 hours after admission, transfer or discharge (003 §IX).
    AdtToEcmProvider,
    /// ECM assessment: within 30 days (000 step 7).
    EcmAssessment,
    /// ECM care plan review: every 6 months (000).
    CarePlanReview,
    /// Plan determination after a move out of a single-plan (COHS) county: 24 hours (000).
    PlanDetermination,
    /// Latest date to send the Notice of Action: at least 10 days before the plan change (000 step 10).
    NoticeOfAction,
    /// Member's request to change ECM provider carried out: within 30 days (003 §VIII).
    ProviderChangeRequest,
    /// Initial ECM authorization period: 12 months from the authorization (003 §VIII "Standard ECM
    /// Authorization Timeframes"); its due date is when a reauthorization is due.
    AuthorizationPeriod,
    /// ECM reauthorization period: 6 months from the reauthorization (003 §VIII "Standard ECM
    /// Authorization Timeframes"); its due date is when the next reauthorization is due.
    ReauthorizationPeriod,
    /// The member's Notice of Action on a denial or a discontinuation of ECM (003 §VIII
    /// "Authorization" and "NOA Process"). The guide names no count of its own and points to the
    /// prior-authorization decision rules (APL 21-011); the gateway counts it as that decision is
    /// counted: 5 working days, 72 hours expedited, from the denial or discontinuation.
    MemberNoticeOfAction,
}

impl Clock {
    /// Every clock, in declaration order.
    pub const ALL: [Clock; 15] = [
        Clock::AuthorizationDecision,
        Clock::SwNotifiedOfEnrollment,
        Clock::EcmProviderToldOfAssignment,
        Clock::PcpToldOfAssignment,
        Clock::StreamlinedAuthorizationWindow,
        Clock::StreamlinedReferralDue,
        Clock::AdtToEcmProvider,
        Clock::EcmAssessment,
        Clock::CarePlanReview,
        Clock::PlanDetermination,
        Clock::NoticeOfAction,
        Clock::ProviderChangeRequest,
        Clock::AuthorizationPeriod,
        Clock::ReauthorizationPeriod,
        Clock::MemberNoticeOfAction,
    ];

    /// Stable code (kebab-case); never renamed.
    pub const fn code(self) -> &'static str {
        match self {
            Clock::AuthorizationDecision => "authorization-decision",
            Clock::SwNotifiedOfEnrollment => "sw-notified-of-enrollment",
            Clock::EcmProviderToldOfAssignment => "ecm-provider-told-of-assignment",
            Clock::PcpToldOfAssignment => "pcp-told-of-assignment",
            Clock::StreamlinedAuthorizationWindow => "streamlined-authorization-window",
            Clock::StreamlinedReferralDue => "streamlined-referral-due",
            Clock::AdtToEcmProvider => "adt-to-ecm-provider",
            Clock::EcmAssessment => "ecm-assessment",
            Clock::CarePlanReview => "care-plan-review",
            Clock::PlanDetermination => "plan-determination",
            Clock::NoticeOfAction => "notice-of-action",
            Clock::ProviderChangeRequest => "provider-change-request",
            Clock::AuthorizationPeriod => "authorization-period",
            Clock::ReauthorizationPeriod => "reauthorization-period",
            Clock::MemberNoticeOfAction => "member-notice-of-action",
        }
    }

    /// The clock with this [`Clock::code`].
    pub fn from_code(code: &str) -> Option<Clock> {
        Clock::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The counting rule for this clock.
    pub const fn rule(self, expedited: bool) -> Rule {
        match self {
            Clock::AuthorizationDecision
            | Clock::SwNotifiedOfEnrollment
            | Clock::MemberNoticeOfAction => {
                if expedited {
                    Rule::Hours(72)
                } else {
                    Rule::WorkingDaysAfter(5)
                }
            }
            Clock::EcmProviderToldOfAssignment | Clock::PcpToldOfAssignment => {
                Rule::WorkingDaysAfter(10)
            }
            Clock::StreamlinedAuthorizationWindow => Rule::CalendarDaysAfter(30),
            Clock::StreamlinedReferralDue => Rule::WorkingDaysBeforeWindowEnd {
                window_days: 30,
                working_days: 5,
            },
            Clock::AdtToEcmProvider | Clock::PlanDetermination => Rule::Hours(24),
            Clock::EcmAssessment | Clock::ProviderChangeRequest => Rule::CalendarDaysAfter(30),
            Clock::CarePlanReview | Clock::ReauthorizationPeriod => Rule::MonthsAfter(6),
            Clock::AuthorizationPeriod => Rule::MonthsAfter(12),
            Clock::NoticeOfAction => Rule::CalendarDaysBefore(10),
        }
    }
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// How a deadline is counted from its start (see the module docs for the exact meaning of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Start instant plus elapsed hours.
    Hours(u32),
    /// End of the Nth working day after the start's local date.
    WorkingDaysAfter(u32),
    /// End of the local date N days after the start's local date.
    CalendarDaysAfter(u32),
    /// End of the local date N months after the start's local date.
    MonthsAfter(u32),
    /// End of the local date N days before the start's local date.
    CalendarDaysBefore(u32),
    /// End of the Nth working day before the last date of a window of `window_days` calendar days.
    WorkingDaysBeforeWindowEnd {
        /// Length of the window in calendar days.
        window_days: u32,
        /// Working days before the window's last date.
        working_days: u32,
    },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Hours(h) => write!(f, "{h} hours"),
            Rule::WorkingDaysAfter(n) => write!(f, "{n} working days"),
            Rule::CalendarDaysAfter(n) => write!(f, "{n} calendar days"),
            Rule::MonthsAfter(n) => write!(f, "{n} months"),
            Rule::CalendarDaysBefore(n) => write!(f, "{n} calendar days before"),
            Rule::WorkingDaysBeforeWindowEnd {
                window_days,
                working_days,
            } => write!(
                f,
                "{working_days} working days before the end of a {window_days}-day window"
            ),
        }
    }
}

/// The deadline instant (UTC) for `clock` started at `start`.
pub fn due<Tz: TimeZone>(
    clock: Clock,
    start: DateTime<Tz>,
    expedited: bool,
    cal: &Calendar,
) -> DateTime<Utc> {
    apply(clock.rule(expedited), start.with_timezone(&Utc), cal)
}

/// Applies a [`Rule`] to a UTC start instant.
pub fn apply(rule: Rule, start: DateTime<Utc>, cal: &Calendar) -> DateTime<Utc> {
    let day = pacific::local_date(start);
    let end_of = |date: Option<NaiveDate>| {
        date.map(pacific::end_of_local_day)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    match rule {
        Rule::Hours(h) => start
            .checked_add_signed(Duration::hours(i64::from(h)))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        Rule::WorkingDaysAfter(n) => end_of(cal.add_working_days(day, n)),
        Rule::CalendarDaysAfter(n) => end_of(day.checked_add_signed(Duration::days(i64::from(n)))),
        Rule::MonthsAfter(n) => end_of(day.checked_add_months(Months::new(n))),
        Rule::CalendarDaysBefore(n) => end_of(day.checked_sub_signed(Duration::days(i64::from(n)))),
        Rule::WorkingDaysBeforeWindowEnd {
            window_days,
            working_days,
        } => end_of(
            day.checked_add_signed(Duration::days(i64::from(window_days)))
                .and_then(|last| cal.sub_working_days(last, working_days)),
        ),
    }
}
