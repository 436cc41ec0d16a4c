//! Continuity of ECM when a member changes MCP (docs/program-rules.md "Timelines":
//! "new MCP auto-authorizes ECM if ECM was received in the last 90 days";
//! seed 003 §VIII and seed 000 "Out-of-County Placement").
//!
//! Pure: the caller says when the member last received ECM (an open
//! assignment counts as "now") and when the plan changed.

use chrono::{DateTime, Duration, Utc};

/// The look-back window: ECM received within this many days before the
/// plan change means the new MCP authorizes ECM without a new referral.
pub const AUTO_AUTHORIZATION_DAYS: i64 = 90;

/// Whether the new MCP must auto-authorize ECM: ECM was received at
/// `last_received` (for an open assignment, the change time itself), and
/// the plan changed at `change`. The window is inclusive: exactly 90 days
/// before still counts. A `last_received` after the change (an assignment
/// recorded later than the enrollment) counts as received.
pub fn auto_authorization_applies(last_received: DateTime<Utc>, change: DateTime<Utc>) -> bool {
    change.signed_duration_since(last_received) <= Duration::days(AUTO_AUTHORIZATION_DAYS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 17, 0, 0).single().unwrap()
    }

    #[test]
    fn open_assignment_counts() {
        let now = t(2026, 11, 23);
        assert!(auto_authorization_applies(now, now));
    }

    #[test]
    fn ninety_days_is_inside_ninety_one_is_not() {
        let change = t(2026, 11, 23);
        assert!(auto_authorization_applies(
            change - Duration::days(90),
            change
        ));
        assert!(!auto_authorization_applies(
            change - Duration::days(90) - Duration::seconds(1),
            change
        ));
        assert!(!auto_authorization_applies(
            change - Duration::days(120),
            change
        ));
    }

    #[test]
    fn received_after_the_change_counts() {
        let change = t(2026, 11, 23);
        assert!(auto_authorization_applies(
            change + Duration::days(2),
            change
        ));
    }
}
