//! The closed-loop referral (CLR) states of a referral Task: which CLR
//! status (`businessStatus`) and closure reason (`statusReason`) an update
//! carries, who may set them, and which clocks each opens or closes. The
//! codes are the shared vocabulary's (`mappings/referral/clr.toml`,
//! [`crate::records::clr`]); the table with its seed passages is in
//! docs/mcp-ecm.md, "Closed-loop referral states".
//!
//! A Task without a CLR `businessStatus` is `received` (the referral
//! intake need not set it). When the caller sends no CLR code the natural
//! one is derived ([`derive_status`]); a closing status needs a coded
//! closure reason, except where one follows from who closes it ([`derive_reason`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::edge::ApiError;
use crate::records::clr::{self, Vocabulary};

/// CLR status codes the lifecycle itself names (all in clr.toml).
pub const RECEIVED: &str = "received";
pub const AUTHORIZED: &str = "authorized";
pub const NOT_AUTHORIZED: &str = "not-authorized";
pub const ASSIGNED: &str = "assigned";
pub const OUTREACH: &str = "outreach";
pub const ENROLLED: &str = "enrolled";
pub const CLOSED: &str = "closed";
pub const REAUTHORIZED: &str = "reauthorized";
pub const PROVIDER_CHANGE_REQUESTED: &str = "provider-change-requested";
/// The statuses the gateway derives from the move itself; one of these sent
/// back with a Task status it does not fit is read as stale, not as a
/// request ([`derive_status`] applies).
pub const DERIVED: &[&str] = &[
    RECEIVED,
    AUTHORIZED,
    NOT_AUTHORIZED,
    ASSIGNED,
    OUTREACH,
    CLOSED,
];
/// Closure reasons the lifecycle derives.
pub const WITHDRAWN: &str = "withdrawn";
pub const OTHER: &str = "other";

/// Extension (under the canonical base) recording that the member's Notice
/// of Action was sent (`valueDateTime`): the MCP puts it on a closed Task.
pub use crate::resources::NOA_SENT_EXT;

/// The Task statuses at which the loop is closed.
pub const FINAL: &[&str] = &["rejected", "completed", "failed", "cancelled"];

/// The CLR vocabulary of the mappings tree `dir` (the built-in one when
/// `None`), loaded once per process and directory.
pub fn vocabulary(dir: Option<&Path>) -> Result<Arc<Vocabulary>, ApiError> {
    type Cache = Mutex<Vec<(Option<PathBuf>, Arc<Vocabulary>)>>;
    static CACHE: LazyLock<Cache> = LazyLock::new(Default::default);
    let key = dir.map(Path::to_path_buf);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, v)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(v.clone());
    }
    let v = Arc::new(Vocabulary::load(dir).map_err(|e| {
        tracing::error!(error = %e, "the referral status vocabulary did not load");
        ApiError::Internal("the referral status vocabulary is not available".into())
    })?);
    cache.push((key, v.clone()));
    Ok(v)
}

/// The CLR status of a stored Task (`received` when it carries none).
pub fn current_status(task: &Value) -> &str {
    clr::status_of(task).unwrap_or(RECEIVED)
}

/// The natural CLR status of a move to Task status `to` when the caller
/// sent none: `prior` is the Task's status before, `assigned` says this
/// update gives the Task to an ECM provider.
pub fn derive_status<'a>(
    vocab: &Vocabulary,
    from: &str,
    to: &str,
    prior: &'a str,
    assigned: bool,
) -> &'a str {
    let fits = |code: &str| {
        vocab
            .status(code)
            .is_some_and(|s| s.task_status.iter().any(|t| t == to))
    };
    match to {
        "requested" => RECEIVED,
        "accepted" if assigned => ASSIGNED,
        "accepted" if from == "requested" || !fits(prior) => AUTHORIZED,
        "in-progress" | "on-hold" if assigned => ASSIGNED,
        "in-progress" | "on-hold"
            if matches!(prior, ENROLLED | REAUTHORIZED | PROVIDER_CHANGE_REQUESTED)
                && fits(prior) =>
        {
            prior
        }
        "in-progress" | "on-hold" => OUTREACH,
        "rejected" => NOT_AUTHORIZED,
        "completed" | "failed" | "cancelled" => CLOSED,
        _ => prior,
    }
}

/// The closure reason of a closing move when the caller coded none: the
/// requester cancelling withdraws its referral; a rejection with only a
/// text reason (clients from before the coded reasons) is `other`, the
/// text kept. Otherwise none (a closing status then needs a coded one).
pub fn derive_reason(to: &str, by_requester: bool, reason_text: bool) -> Option<&'static str> {
    match to {
        "cancelled" if by_requester => Some(WITHDRAWN),
        "rejected" if reason_text => Some(OTHER),
        _ => None,
    }
}

/// Does the caller's `statusReason` carry something (a text or a coding)?
pub fn has_reason_text(update: &Value) -> bool {
    update.get("statusReason").is_some_and(|r| {
        r.get("text")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.trim().is_empty())
            || r.get("coding")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
    })
}

/// The `statusReason` of a closed loop: the closure coding (the
/// vocabulary's system and display) beside the caller's own codings and
/// text.
pub fn closure_status_reason(
    vocab: &Vocabulary,
    base: &str,
    update: &Value,
    code: &str,
) -> Option<Value> {
    let coding = vocab.closure_coding(base, code)?;
    let mut reason = update
        .get("statusReason")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let mut codings: Vec<Value> = reason
        .get("coding")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|c| {
                    !c.get("system")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.ends_with(clr::CLOSURE_SYSTEM))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    codings.insert(0, coding);
    reason["coding"] = Value::Array(codings);
    Some(reason)
}

/// The time the member's Notice of Action was sent, as the MCP recorded it
/// on the update; `Err` names what is wrong with the record.
pub fn noa_sent(update: &Value) -> Result<DateTime<Utc>, &'static str> {
    let ext = update
        .get("extension")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter().find(|e| {
                e.get("url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u.ends_with(NOA_SENT_EXT))
            })
        })
        .ok_or("missing")?;
    ext.get("valueDateTime")
        .and_then(Value::as_str)
        .and_then(crate::disclosure::parse_fhir_time)
        .ok_or("no valueDateTime instant")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_natural_status_of_each_move() {
        let v = Vocabulary::builtin();
        let d = |from, to, prior, assigned| derive_status(&v, from, to, prior, assigned);
        assert_eq!(d("requested", "requested", RECEIVED, false), RECEIVED);
        assert_eq!(d("requested", "accepted", RECEIVED, false), AUTHORIZED);
        assert_eq!(d("requested", "accepted", RECEIVED, true), ASSIGNED);
        assert_eq!(d("accepted", "accepted", ASSIGNED, false), ASSIGNED);
        assert_eq!(d("accepted", "in-progress", ASSIGNED, false), OUTREACH);
        assert_eq!(d("in-progress", "in-progress", ENROLLED, false), ENROLLED);
        assert_eq!(d("in-progress", "on-hold", ENROLLED, false), OUTREACH);
        assert_eq!(
            d(
                "in-progress",
                "in-progress",
                PROVIDER_CHANGE_REQUESTED,
                true
            ),
            ASSIGNED
        );
        assert_eq!(d("requested", "rejected", RECEIVED, false), NOT_AUTHORIZED);
        for to in ["completed", "failed", "cancelled"] {
            assert_eq!(d("in-progress", to, ENROLLED, false), CLOSED);
        }
        for c in DERIVED {
            assert!(v.status(c).is_some(), "{c}");
        }
        // Every derived status fits its Task status in the vocabulary.
        for (from, to, prior, a) in [
            ("requested", "accepted", RECEIVED, false),
            ("accepted", "in-progress", ASSIGNED, false),
            ("in-progress", "on-hold", REAUTHORIZED, false),
        ] {
            let code = d(from, to, prior, a);
            assert!(v.check(to, Some(code), None).is_empty(), "{to} {code}");
        }
    }

    #[test]
    fn reasons_follow_from_who_closes_and_old_clients_keep_working() {
        assert_eq!(derive_reason("cancelled", true, false), Some(WITHDRAWN));
        assert_eq!(derive_reason("rejected", false, true), Some(OTHER));
        assert_eq!(derive_reason("rejected", false, false), None);
        assert_eq!(derive_reason("completed", false, true), None);
        assert!(has_reason_text(&json!({"statusReason": {"text": "x"}})));
        assert!(!has_reason_text(&json!({"statusReason": {"text": " "}})));
    }

    #[test]
    fn the_closure_coding_goes_first_beside_the_callers_text() {
        let v = Vocabulary::builtin();
        let base = "https://gw.example";
        let update = json!({"statusReason": {"text": "three calls, two letters",
            "coding": [{"system": "https://gw.example/CodeSystem/ecm-referral-closure-reason", "code": "old"},
                       {"system": "urn:local", "code": "x"}]}});
        let r = closure_status_reason(&v, base, &update, "unable-to-reach").unwrap();
        assert_eq!(r["text"], "three calls, two letters");
        assert_eq!(r["coding"][0]["code"], "unable-to-reach");
        assert_eq!(r["coding"][1]["code"], "x");
        assert_eq!(r["coding"].as_array().unwrap().len(), 2);
        let task = json!({"statusReason": r});
        assert_eq!(clr::closure_reason_of(&task), Some("unable-to-reach"));
    }

    #[test]
    fn a_notice_of_action_record_needs_its_instant() {
        let ext = |v: Value| json!({"extension": [{"url": format!("https://gw{NOA_SENT_EXT}"), "valueDateTime": v}]});
        assert_eq!(
            noa_sent(&ext(json!("2026-12-07T17:00:00Z")))
                .unwrap()
                .to_rfc3339(),
            "2026-12-07T17:00:00+00:00"
        );
        assert!(noa_sent(&ext(json!(3))).is_err());
        assert_eq!(noa_sent(&json!({})), Err("missing"));
        assert!(vocabulary(None).unwrap().status(REAUTHORIZED).is_some());
    }
}
