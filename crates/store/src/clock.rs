//! Deadline clocks (e.g. an authorization decision due within N days) and
//! the SMART client-assertion `jti` replay cache.
//!
//! A clock row is keyed by a deterministic, caller-made id, so writing the
//! same clock again (a replayed journal record) replaces it instead of
//! adding a second one. Times are stored with microsecond precision.
//!
//! The `jti` cache keeps `(client_id, jti)` until `expires_at`; a second
//! use before then is a replay. Expired rows are purged opportunistically
//! (a bounded number per call).

use chrono::{DateTime, Utc};

use crate::{StoreError, MAX_PATIENT_ID_LEN};

/// Most clocks in one upsert or completion.
pub const MAX_CLOCKS_PER_CALL: usize = 1000;
/// Longest clock id (bytes).
pub const MAX_CLOCK_ID_LEN: usize = 128;
/// Longest clock kind (bytes).
pub const MAX_CLOCK_KIND_LEN: usize = 64;
/// Longest clock subject (bytes).
pub const MAX_CLOCK_SUBJECT_LEN: usize = 256;
/// Largest [`crate::Store::clock_list`] page; larger limits are clamped.
pub const MAX_CLOCK_PAGE: usize = 1000;
/// Most subjects in one [`crate::Store::clock_list_subjects`].
pub const MAX_CLOCK_SUBJECTS_PER_CALL: usize = 1000;
/// Longest SMART client id (bytes).
pub const MAX_CLIENT_ID_LEN: usize = 256;
/// Longest `jti` (bytes).
pub const MAX_JTI_LEN: usize = 256;
/// Clock states.
pub const CLOCK_STATES: [&str; 3] = ["open", "met", "cancelled"];

/// A deadline clock.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockRow {
    /// Deterministic, caller-made id.
    pub id: String,
    /// e.g. `"authorization-decision"`.
    pub kind: String,
    /// e.g. `"Task/abc"`.
    pub subject: String,
    /// Patient concerned.
    pub patient_id: Option<String>,
    /// When the clock started.
    pub started_at: DateTime<Utc>,
    /// When it is due.
    pub due_at: DateTime<Utc>,
    /// `"open"` | `"met"` | `"cancelled"`.
    pub state: String,
    /// When it was met or cancelled.
    pub closed_at: Option<DateTime<Utc>>,
}

/// Validate clocks; errors name the position and field only.
pub(crate) fn check_clocks(clocks: &[ClockRow]) -> Result<(), StoreError> {
    if clocks.len() > MAX_CLOCKS_PER_CALL {
        return Err(StoreError::Invalid(format!(
            "{} clocks in one call (max {MAX_CLOCKS_PER_CALL})",
            clocks.len()
        )));
    }
    for (i, c) in clocks.iter().enumerate() {
        let bad = |what: &str| Err(StoreError::Invalid(format!("clock {i}: {what}")));
        if c.id.is_empty() || c.id.len() > MAX_CLOCK_ID_LEN {
            return bad("id is empty or too long");
        }
        if c.kind.is_empty() || c.kind.len() > MAX_CLOCK_KIND_LEN {
            return bad("kind is empty or too long");
        }
        if c.subject.is_empty() || c.subject.len() > MAX_CLOCK_SUBJECT_LEN {
            return bad("subject is empty or too long");
        }
        if c.patient_id
            .as_ref()
            .is_some_and(|p| p.is_empty() || p.len() > MAX_PATIENT_ID_LEN)
        {
            return bad("patient_id is empty or too long");
        }
        if !CLOCK_STATES.contains(&c.state.as_str()) {
            return bad("state is not open, met or cancelled");
        }
    }
    Ok(())
}

/// Check the subjects of one [`crate::Store::clock_list_subjects`].
pub(crate) fn check_clock_subjects(subjects: &[String]) -> Result<(), StoreError> {
    if subjects.len() > MAX_CLOCK_SUBJECTS_PER_CALL {
        return Err(StoreError::Invalid(format!(
            "{} clock subjects in one call (max {MAX_CLOCK_SUBJECTS_PER_CALL})",
            subjects.len()
        )));
    }
    Ok(())
}

/// Check a `(client_id, jti)` pair.
pub(crate) fn check_jti(client_id: &str, jti: &str) -> Result<(), StoreError> {
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_LEN {
        return Err(StoreError::Invalid(format!(
            "client_id must be 1..={MAX_CLIENT_ID_LEN} bytes"
        )));
    }
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(StoreError::Invalid(format!(
            "jti must be 1..={MAX_JTI_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> ClockRow {
        ClockRow {
            id: "auth-1".into(),
            kind: "authorization-decision".into(),
            subject: "Task/abc".into(),
            patient_id: None,
            started_at: Utc::now(),
            due_at: Utc::now(),
            state: "open".into(),
            closed_at: None,
        }
    }

    #[test]
    fn clocks_are_checked() {
        assert!(check_clocks(&[clock()]).is_ok());
        let mut bad = clock();
        bad.state = "done".into();
        assert!(check_clocks(&[bad]).is_err());
        let mut bad = clock();
        bad.id.clear();
        assert!(check_clocks(&[bad]).is_err());
        assert!(check_clocks(&vec![clock(); MAX_CLOCKS_PER_CALL + 1]).is_err());
    }

    #[test]
    fn jti_is_checked() {
        assert!(check_jti("c", "j").is_ok());
        assert!(check_jti("", "j").is_err());
        assert!(check_jti("c", &"j".repeat(MAX_JTI_LEN + 1)).is_err());
    }
}
