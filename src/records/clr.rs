//! The closed-loop referral (CLR) vocabulary: the referral statuses a
//! Task's `businessStatus` carries and the coded reasons a loop is closed
//! with. The table is data, `mappings/referral/clr.toml`, reviewed by an
//! analyst; this module loads and checks it, and reads and writes the codes
//! on a Task.
//!
//! On a referral Task:
//! - `businessStatus.coding[0]`: system `{base}` + [`STATUS_SYSTEM`], the
//!   status code and display;
//! - `statusReason.coding[]`: a coding in `{base}` + [`CLOSURE_SYSTEM`] when
//!   a loop is closed (and on a denial), beside any text the caller gave;
//! - extension `{base}` + [`STATUS_DATE_EXT`] (`valueDateTime`): the date of
//!   the last referral status update, the RTF's "Date of Referral Status
//!   Update".

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

/// File of the vocabulary under the mappings tree.
pub const FILE: &str = "referral/clr.toml";
/// Path of the referral status CodeSystem under the canonical base.
pub const STATUS_SYSTEM: &str = "/CodeSystem/ecm-referral-status";
/// Path of the closure reason CodeSystem under the canonical base.
pub const CLOSURE_SYSTEM: &str = "/CodeSystem/ecm-referral-closure-reason";
/// Path of the status-date extension under the canonical base.
pub const STATUS_DATE_EXT: &str = "/StructureDefinition/referral-status-date";

/// The FHIR R4 Task statuses a referral Task may have (the vocabulary may
/// name only these).
pub const TASK_STATUSES: &[&str] = &[
    "requested",
    "accepted",
    "rejected",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
];

/// A referral status.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub code: String,
    pub display: String,
    pub task_status: Vec<String>,
    /// The loop is closed at this status.
    #[serde(default)]
    pub r#final: bool,
    /// A closure reason is required.
    #[serde(default)]
    pub needs_reason: bool,
}

/// A reason a loop was closed.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClosureReason {
    pub code: String,
    pub display: String,
    pub task_status: Vec<String>,
    /// One of the ECM Policy Guide's four circumstances for discontinuing.
    #[serde(default)]
    pub discontinuation: bool,
    /// The member is owed a Notice of Action.
    #[serde(default)]
    pub notice_of_action: bool,
}

/// The loaded vocabulary.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    pub status: Vec<Status>,
    pub closure_reason: Vec<ClosureReason>,
}

/// Why the vocabulary could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClrError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{FILE}: {0}")]
    Invalid(String),
}

impl Vocabulary {
    /// Parse and check the TOML text: codes unique and kebab-case, every
    /// Task status a FHIR one.
    pub fn parse(text: &str) -> Result<Vocabulary, ClrError> {
        let v: Vocabulary =
            toml::from_str(text).map_err(|e| ClrError::Invalid(e.message().to_string()))?;
        let mut seen = BTreeSet::new();
        let entries = v
            .status
            .iter()
            .map(|s| ("status", &s.code, &s.task_status))
            .chain(
                v.closure_reason
                    .iter()
                    .map(|r| ("closure_reason", &r.code, &r.task_status)),
            );
        for (what, code, statuses) in entries {
            let kebab = !code.is_empty()
                && code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !kebab {
                return Err(ClrError::Invalid(format!(
                    "{what} {code:?}: a code is lowercase letters, digits and '-'"
                )));
            }
            if !seen.insert((what, code.clone())) {
                return Err(ClrError::Invalid(format!(
                    "{what} {code:?} is listed twice"
                )));
            }
            if statuses.is_empty() {
                return Err(ClrError::Invalid(format!(
                    "{what} {code:?}: task_status names no Task status"
                )));
            }
            if let Some(bad) = statuses
                .iter()
                .find(|s| !TASK_STATUSES.contains(&s.as_str()))
            {
                return Err(ClrError::Invalid(format!(
                    "{what} {code:?}: {bad:?} is not a FHIR Task status"
                )));
            }
        }
        Ok(v)
    }

    /// The vocabulary from the mappings tree: `dir/referral/clr.toml` when
    /// `dir` is given and holds it, else the built-in file.
    pub fn load(dir: Option<&Path>) -> Result<Vocabulary, ClrError> {
        let text = crate::embedded::mapping_file(dir, FILE)
            .map_err(|e| ClrError::Read {
                path: e.path,
                reason: e.reason,
            })?
            .unwrap_or_default();
        Vocabulary::parse(&text)
    }

    /// The built-in vocabulary (checked by this module's tests).
    pub fn builtin() -> Vocabulary {
        Vocabulary::load(None).unwrap_or(Vocabulary {
            status: Vec::new(),
            closure_reason: Vec::new(),
        })
    }

    pub fn status(&self, code: &str) -> Option<&Status> {
        self.status.iter().find(|s| s.code == code)
    }

    pub fn closure_reason(&self, code: &str) -> Option<&ClosureReason> {
        self.closure_reason.iter().find(|r| r.code == code)
    }

    /// Every problem with putting `status` (a CLR status code), with the
    /// closure reason `reason`, on a Task whose FHIR status is
    /// `task_status`; empty when it fits. Each problem names the field.
    pub fn check(
        &self,
        task_status: &str,
        status: Option<&str>,
        reason: Option<&str>,
    ) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        let st = status.and_then(|c| self.status(c));
        if let Some(code) = status {
            match st {
                None => out.push((
                    format!(
                        "unknown referral status {code:?} (known: {})",
                        self.status_codes().join(", ")
                    ),
                    "Task.businessStatus",
                )),
                Some(s) if !s.task_status.iter().any(|t| t == task_status) => out.push((
                    format!(
                        "referral status {code} goes with Task.status {}, not {task_status}",
                        s.task_status.join(" or ")
                    ),
                    "Task.businessStatus",
                )),
                Some(_) => {}
            }
        }
        match reason.map(|c| (c, self.closure_reason(c))) {
            Some((code, None)) => out.push((
                format!(
                    "unknown closure reason {code:?} (known: {})",
                    self.reason_codes().join(", ")
                ),
                "Task.statusReason",
            )),
            Some((code, Some(r))) if !r.task_status.iter().any(|t| t == task_status) => out.push((
                format!(
                    "closure reason {code} goes with Task.status {}, not {task_status}",
                    r.task_status.join(" or ")
                ),
                "Task.statusReason",
            )),
            Some(_) => {}
            None => {
                if st.is_some_and(|s| s.needs_reason) {
                    out.push((
                        format!(
                            "referral status {} needs a coded closure reason (known: {})",
                            status.unwrap_or_default(),
                            self.reason_codes().join(", ")
                        ),
                        "Task.statusReason",
                    ));
                }
            }
        }
        out
    }

    pub fn status_codes(&self) -> Vec<&str> {
        self.status.iter().map(|s| s.code.as_str()).collect()
    }

    pub fn reason_codes(&self) -> Vec<&str> {
        self.closure_reason
            .iter()
            .map(|r| r.code.as_str())
            .collect()
    }

    /// The `businessStatus` CodeableConcept of `code` (None for an unknown
    /// code).
    pub fn business_status(&self, base: &str, code: &str) -> Option<Value> {
        let s = self.status(code)?;
        Some(json!({
            "coding": [{"system": format!("{base}{STATUS_SYSTEM}"), "code": s.code, "display": s.display}],
            "text": s.display,
        }))
    }

    /// The closure reason coding of `code` (None for an unknown code).
    pub fn closure_coding(&self, base: &str, code: &str) -> Option<Value> {
        let r = self.closure_reason(code)?;
        Some(
            json!({"system": format!("{base}{CLOSURE_SYSTEM}"), "code": r.code, "display": r.display}),
        )
    }
}

fn coding_in<'a>(concept: Option<&'a Value>, system_suffix: &str) -> Option<&'a str> {
    concept?
        .get("coding")?
        .as_array()?
        .iter()
        .find(|c| {
            c.get("system")
                .and_then(Value::as_str)
                .is_some_and(|s| s.ends_with(system_suffix))
        })
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
}

/// The CLR status code a Task carries in `businessStatus`.
pub fn status_of(task: &Value) -> Option<&str> {
    coding_in(task.get("businessStatus"), STATUS_SYSTEM)
}

/// The closure reason code a Task carries in `statusReason`.
pub fn closure_reason_of(task: &Value) -> Option<&str> {
    coding_in(task.get("statusReason"), CLOSURE_SYSTEM)
}

/// The date of the Task's last referral status update (the extension's
/// `valueDateTime`).
pub fn status_date_of(task: &Value) -> Option<&str> {
    task.get("extension")?
        .as_array()?
        .iter()
        .find(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with(STATUS_DATE_EXT))
        })
        .and_then(|e| e.get("valueDateTime"))
        .and_then(Value::as_str)
}

/// Set the status-date extension on `task` to `at` (RFC 3339), replacing
/// an earlier one.
pub fn set_status_date(task: &mut Value, base: &str, at: &str) {
    let url = format!("{base}{STATUS_DATE_EXT}");
    let ext = json!({"url": url, "valueDateTime": at});
    if !task.get("extension").is_some_and(Value::is_array) {
        task["extension"] = json!([]);
    }
    if let Some(a) = task.get_mut("extension").and_then(Value::as_array_mut) {
        a.retain(|e| e.get("url").and_then(Value::as_str) != Some(url.as_str()));
        a.push(ext);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_vocabulary_loads_and_covers_the_lifecycle() {
        let v = Vocabulary::load(None).unwrap();
        for code in [
            "received",
            "authorized",
            "not-authorized",
            "assigned",
            "outreach",
            "enrolled",
            "declined",
            "closed",
        ] {
            assert!(v.status(code).is_some(), "{code}");
        }
        // The policy guide's four circumstances for discontinuing ECM.
        let four: Vec<&str> = v
            .closure_reason
            .iter()
            .filter(|r| r.discontinuation)
            .map(|r| r.code.as_str())
            .collect();
        assert_eq!(
            four,
            [
                "care-plan-goals-met",
                "lower-level-of-care",
                "member-declined",
                "unable-to-reach"
            ]
        );
        assert!(v.closure_reason("services-received").is_some());
    }

    #[test]
    fn check_names_every_problem_and_its_field() {
        let v = Vocabulary::builtin();
        assert!(v
            .check("completed", Some("closed"), Some("services-received"))
            .is_empty());
        assert!(v.check("accepted", Some("authorized"), None).is_empty());
        let p = v.check("requested", Some("closed"), None);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].1, "Task.businessStatus");
        assert_eq!(p[1].1, "Task.statusReason");
        let p = v.check("completed", Some("bogus"), Some("nope"));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].0.contains("known: received"), "{p:?}");
        let p = v.check("completed", Some("closed"), Some("unable-to-reach"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].0.contains("failed"), "{p:?}");
    }

    #[test]
    fn codes_are_written_and_read_back_on_a_task() {
        let v = Vocabulary::builtin();
        let base = "https://gw.example";
        let mut task = json!({"resourceType": "Task", "status": "failed"});
        task["businessStatus"] = v.business_status(base, "closed").unwrap();
        task["statusReason"] = json!({"coding": [v.closure_coding(base, "unable-to-reach").unwrap()], "text": "three calls"});
        set_status_date(&mut task, base, "2026-03-02T17:00:00Z");
        set_status_date(&mut task, base, "2026-03-03T17:00:00Z");
        assert_eq!(status_of(&task), Some("closed"));
        assert_eq!(closure_reason_of(&task), Some("unable-to-reach"));
        assert_eq!(status_date_of(&task), Some("2026-03-03T17:00:00Z"));
        assert_eq!(task["extension"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_bad_table_is_refused_by_name() {
        let e = Vocabulary::parse(
            "[[status]]\ncode = \"Open\"\ndisplay = \"x\"\ntask_status = [\"requested\"]\n[[closure_reason]]\ncode = \"a\"\ndisplay = \"a\"\ntask_status = [\"done\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"Open\""), "{e}");
        let e = Vocabulary::parse(
            "status = []\n[[closure_reason]]\ncode = \"a\"\ndisplay = \"a\"\ntask_status = [\"done\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a FHIR Task status"), "{e}");
    }
}
