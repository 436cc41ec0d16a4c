//! What each case event does beyond the FHIR its mapping writes, declared
//! beside the mapping (`mappings/case_event/effects.toml`) as a closed set
//! of named effects. This module reads and checks the table; `derive` runs
//! the effects it names.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::sources::schemas::EVENT_TYPES;

/// The table's file in the mappings tree.
pub const FILE: &str = "case_event/effects.toml";

/// The effects of one event type (all off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventEffects {
    /// JSON pointers into the event to arrays of organization ids, each
    /// stored as an Organization with the event's resources.
    #[serde(default)]
    pub organizations_from: Vec<String>,
    /// Mark the county's earlier consent (`consentId`) withdrawn.
    #[serde(default)]
    pub withdraw_consent: bool,
    /// Open the plan determination clock on a move out of a single-plan
    /// county.
    #[serde(default)]
    pub open_plan_determination: bool,
    /// Meet an open plan determination clock.
    #[serde(default)]
    pub close_plan_determination: bool,
    /// On a change of MCP after recent ECM, open the new MCP's continuity
    /// authorization.
    #[serde(default)]
    pub continuity_on_plan_change: bool,
    /// On a new or changed plan whose coverage starts later, open the
    /// county's Notice of Action clock (due 10 days before the plan
    /// starts); a `noticeOfActionSentOn` date meets it.
    #[serde(default)]
    pub notice_of_action_on_plan_change: bool,
}

/// The table: event type → effects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects(BTreeMap<String, EventEffects>);

/// Why the table was refused (start-up error).
#[derive(Debug, thiserror::Error)]
pub enum EffectsError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl Effects {
    /// Parse and check the table: known event types, pointers that start
    /// with `/`.
    pub fn parse(text: &str) -> Result<Effects, EffectsError> {
        let table: BTreeMap<String, EventEffects> =
            toml::from_str(text).map_err(|e| EffectsError::Invalid(e.message().to_string()))?;
        for (event, fx) in &table {
            if !EVENT_TYPES.contains(&event.as_str()) {
                return Err(EffectsError::Invalid(format!(
                    "[{event}]: not a case event type (known: {})",
                    EVENT_TYPES.join(", ")
                )));
            }
            if let Some(p) = fx.organizations_from.iter().find(|p| !p.starts_with('/')) {
                return Err(EffectsError::Invalid(format!(
                    "[{event}].organizations_from: {p:?} is not a JSON pointer"
                )));
            }
        }
        Ok(Effects(table))
    }

    /// The table from the mappings tree: `dir/case_event/effects.toml` when
    /// `dir` is given and holds it, else the built-in file.
    pub fn load(dir: Option<&Path>) -> Result<Effects, EffectsError> {
        let text = crate::embedded::mapping_file(dir, FILE)
            .map_err(|e| EffectsError::Read {
                path: e.path,
                reason: e.reason,
            })?
            .unwrap_or_default();
        Effects::parse(&text)
    }

    /// The effects of `event` (none when the table does not list it).
    pub fn of(&self, event: &str) -> EventEffects {
        self.0.get(event).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_declares_each_events_effects() {
        let fx = Effects::load(None).unwrap();
        assert_eq!(
            fx.of("consent.recorded").organizations_from,
            vec!["/consent/recipients".to_string()]
        );
        assert!(fx.of("consent.withdrawn").withdraw_consent);
        assert_eq!(
            fx.of("cft.scheduled").organizations_from,
            vec!["/meeting/invitees".to_string()]
        );
        assert!(fx.of("placement.changed").open_plan_determination);
        let enrollment = fx.of("enrollment.updated");
        assert!(enrollment.close_plan_determination && enrollment.continuity_on_plan_change);
        assert!(enrollment.notice_of_action_on_plan_change);
        assert_eq!(fx.of("case.opened"), EventEffects::default());
    }

    #[test]
    fn unknown_events_effects_and_non_pointers_are_refused() {
        let e = Effects::parse("[\"case.reopened\"]\nwithdraw_consent = true\n").unwrap_err();
        assert!(e.to_string().contains("not a case event type"), "{e}");
        let e = Effects::parse("[\"case.closed\"]\nsend_flowers = true\n").unwrap_err();
        assert!(e.to_string().contains("send_flowers"), "{e}");
        let e = Effects::parse("[\"cft.scheduled\"]\norganizations_from = [\"meeting\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("not a JSON pointer"), "{e}");
    }
}
