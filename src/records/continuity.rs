//! ECM continuity when a member changes MCP (docs/program-rules.md timelines: "new MCP
//! auto-authorizes ECM if ECM was received in the last 90 days"; "the new
//! MCP keeps the same ECM provider where its network allows, and the care
//! plan travels with consent"; seed 000 "Out-of-County Placement").
//!
//! When an `enrollment.updated` moves a member from one configured MCP to
//! another and the member received ECM within the look-back window
//! (`cwsgw_program::continuity`), the gateway writes a **continuity Task**
//! owned by the new MCP:
//! - `status` `requested`, `focus` the prior referral's ServiceRequest,
//!   `businessStatus` `auto-authorization-due`, the `authorizing-mcp`
//!   extension naming the new MCP, so the new MCP accepts it through the
//!   ordinary `PUT /fhir/Task/{id}` lifecycle;
//! - an `ecm-continuity` extension with the prior MCP, the prior Task and
//!   when ECM was last received;
//! - `input`: the current ECM provider as the recommended owner when it is
//!   contracted with the new MCP (`current-ecm-provider`), or nothing and a
//!   note saying a new provider must be assigned.
//!
//! The authorization-decision clock opens on it; routing sends the new MCP
//! the referral package for care coordination (`ecm-continuity-to-new-mcp`
//! in `conformance/routing-rules.yaml`); when the new MCP assigns a
//! different provider, the former provider's care plans follow only under a
//! release naming the new one (`care-plan-handoff`, consent rule R5).
//!
//! Pure: the caller passes the stored Tasks.

use chrono::{DateTime, SecondsFormat, Utc};
use program::Calendar;
use serde_json::{json, Value};
use store::{ClockRow, StoredResource};

use super::orgs;
use crate::clocks::{self as deadlines, ClockSpec};
use crate::config::{Config, OrgKind};
use crate::disclosure::{self, parse_fhir_time, ref_id};
use crate::resources::rid;
use crate::resources::AUTHORIZING_MCP_EXT;

/// Extension on the continuity Task.
pub const CONTINUITY_EXT: &str = "/StructureDefinition/ecm-continuity";
/// `businessStatus` code of a continuity Task awaiting the new MCP.
pub const AUTO_AUTHORIZATION_DUE: &str = "auto-authorization-due";

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The member's most recent ECM: the prior Task, its owner (the ECM
/// provider) and when ECM was last received (an open assignment: `at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorEcm {
    pub task_id: String,
    pub focus: String,
    pub provider: String,
    pub last_received: DateTime<Utc>,
}

/// The newest ECM assignment among `tasks`: a Task owned by an ECM
/// provider that is accepted / in-progress / on-hold (ECM now: `at`) or
/// completed (ECM until `executionPeriod.end`, else `lastModified`, else
/// when it was stored).
pub fn prior_ecm(cfg: &Config, tasks: &[StoredResource], at: DateTime<Utc>) -> Option<PriorEcm> {
    tasks
        .iter()
        .filter(|r| r.resource_type == "Task")
        .filter_map(|r| {
            let b = &r.body;
            let provider = b.get("owner").and_then(disclosure::org_of)?;
            if cfg.organization(&provider).map(|o| o.kind) != Some(OrgKind::EcmProvider) {
                return None;
            }
            let focus = b.get("focus").and_then(|f| ref_id(f, "ServiceRequest"))?;
            let last_received = match s(b, "status")? {
                "accepted" | "in-progress" | "on-hold" => at,
                "completed" => b
                    .pointer("/executionPeriod/end")
                    .and_then(Value::as_str)
                    .or_else(|| s(b, "lastModified"))
                    .and_then(parse_fhir_time)
                    .unwrap_or(r.last_updated),
                _ => return None,
            };
            Some((
                r.last_updated,
                PriorEcm {
                    task_id: r.id.clone(),
                    focus,
                    provider,
                    last_received,
                },
            ))
        })
        .max_by(|a, b| {
            a.1.last_received
                .cmp(&b.1.last_received)
                .then(a.0.cmp(&b.0))
        })
        .map(|(_, p)| p)
}

/// What a plan change writes: the continuity Task and its authorization
/// clock, or nothing when the rule does not apply.
pub struct Continuity {
    pub task: Value,
    pub clock: ClockRow,
}

/// The continuity Task for a change from `old_mcp` to `new_mcp` at `at`,
/// reported by `county_org`; None when the MCP did not change or no ECM was
/// received within the window.
#[allow(clippy::too_many_arguments)]
pub fn on_plan_change(
    cfg: &Config,
    calendar: &Calendar,
    patient_id: &str,
    county_org: &str,
    old_mcp: &str,
    new_mcp: &str,
    tasks: &[StoredResource],
    at: DateTime<Utc>,
) -> Option<Continuity> {
    if old_mcp == new_mcp {
        return None;
    }
    let prior = prior_ecm(cfg, tasks, at)?;
    if !program::continuity::auto_authorization_applies(prior.last_received, at) {
        return None;
    }
    let base = cfg.server.canonical_base.as_str();
    let id = rid(&format!("ecm-continuity|{}|{new_mcp}", prior.task_id));
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let subject = format!("Task/{id}");
    let clock = deadlines::open(
        &ClockSpec {
            clock: program::Clock::AuthorizationDecision,
            patient_id: patient_id.to_string(),
            subject,
            start: at,
            expedited: false,
        },
        calendar,
    );
    let same_provider = orgs::contracted(cfg, &prior.provider, new_mcp);
    let mut task = json!({
        "resourceType": "Task", "id": id,
        "status": "requested", "intent": "order", "priority": "routine",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "businessStatus": {
            "coding": [{"system": format!("{base}/CodeSystem/ecm-task-business-status"), "code": AUTO_AUTHORIZATION_DUE}],
            "text": "ECM was received within the last 90 days: the new MCP authorizes ECM without a new referral"
        },
        "focus": {"reference": format!("ServiceRequest/{}", prior.focus)},
        "for": {"reference": format!("Patient/{patient_id}")},
        "authoredOn": stamp(at), "lastModified": stamp(at),
        "requester": {"reference": format!("Organization/{county_org}")},
        "owner": {"reference": format!("Organization/{new_mcp}")},
        "restriction": {"period": {"end": stamp(clock.due_at)}},
        "extension": [
            {"url": format!("{base}{AUTHORIZING_MCP_EXT}"), "valueReference": {"reference": format!("Organization/{new_mcp}")}},
            {"url": format!("{base}{CONTINUITY_EXT}"), "extension": [
                {"url": "priorMcp", "valueReference": {"reference": format!("Organization/{old_mcp}")}},
                {"url": "priorTask", "valueReference": {"reference": format!("Task/{}", prior.task_id)}},
                {"url": "priorEcmProvider", "valueReference": {"reference": format!("Organization/{}", prior.provider)}},
                {"url": "lastReceived", "valueDateTime": stamp(prior.last_received)}
            ]}
        ],
    });
    if same_provider {
        task["input"] = json!([{
            "type": {"coding": [{"system": format!("{base}/CodeSystem/ecm-assignment-recommendation"), "code": "current-ecm-provider"}]},
            "valueReference": {"reference": format!("Organization/{}", prior.provider)}
        }]);
    } else {
        task["note"] = json!([{"text": format!(
            "The current ECM provider (Organization/{}) is not contracted with the new MCP: assign a new ECM provider; the care plan moves to it only under a release of information naming it (warm hand-off).",
            prior.provider
        )}]);
    }
    Some(Continuity { task, clock })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn cfg() -> Config {
        Config::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"),
        )
        .unwrap()
    }

    fn task(
        id: &str,
        status: &str,
        owner: &str,
        stored: DateTime<Utc>,
        end: Option<&str>,
    ) -> StoredResource {
        let mut body = json!({"resourceType": "Task", "id": id, "status": status,
            "owner": {"reference": format!("Organization/{owner}")},
            "focus": {"reference": "ServiceRequest/sr1"}, "for": {"reference": "Patient/p1"}});
        if let Some(e) = end {
            body["executionPeriod"] = json!({"end": e});
        }
        StoredResource {
            resource_type: "Task".into(),
            id: id.into(),
            version_id: 1,
            last_updated: stored,
            patient_id: Some("p1".into()),
            body,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 18, 0, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn open_assignment_with_a_contracted_provider_recommends_it() {
        let cfg = cfg();
        let cal = Calendar::default_ca();
        let tasks = [task(
            "t1",
            "in-progress",
            "ecm-bridges",
            now() - Duration::days(200),
            None,
        )];
        let c = on_plan_change(
            &cfg,
            &cal,
            "p1",
            "county-fresno",
            "mcp-a",
            "mcp-b",
            &tasks,
            now(),
        )
        .unwrap();
        assert_eq!(c.task["owner"]["reference"], "Organization/mcp-b");
        assert_eq!(c.task["status"], "requested");
        assert_eq!(c.task["focus"]["reference"], "ServiceRequest/sr1");
        assert_eq!(
            c.task["input"][0]["valueReference"]["reference"],
            "Organization/ecm-bridges"
        );
        assert_eq!(
            c.task["businessStatus"]["coding"][0]["code"],
            AUTO_AUTHORIZATION_DUE
        );
        assert_eq!(c.clock.kind, "authorization-decision");
        assert_eq!(
            c.clock.subject,
            format!("Task/{}", c.task["id"].as_str().unwrap())
        );
    }

    #[test]
    fn provider_outside_the_new_network_is_not_recommended() {
        let cfg = cfg();
        let cal = Calendar::default_ca();
        // ecm-compass is contracted with mcp-a only.
        let tasks = [task("t1", "accepted", "ecm-compass", now(), None)];
        let c = on_plan_change(
            &cfg,
            &cal,
            "p1",
            "county-fresno",
            "mcp-a",
            "mcp-b",
            &tasks,
            now(),
        )
        .unwrap();
        assert!(c.task.get("input").is_none());
        assert!(c.task["note"][0]["text"]
            .as_str()
            .unwrap()
            .contains("warm hand-off"));
    }

    #[test]
    fn completed_ecm_counts_for_ninety_days() {
        let cfg = cfg();
        let cal = Calendar::default_ca();
        let end = |d: i64| (now() - Duration::days(d)).to_rfc3339();
        let inside = [task(
            "t1",
            "completed",
            "ecm-bridges",
            now(),
            Some(&end(89)),
        )];
        assert!(on_plan_change(&cfg, &cal, "p1", "c", "mcp-a", "mcp-b", &inside, now()).is_some());
        let outside = [task(
            "t1",
            "completed",
            "ecm-bridges",
            now(),
            Some(&end(91)),
        )];
        assert!(on_plan_change(&cfg, &cal, "p1", "c", "mcp-a", "mcp-b", &outside, now()).is_none());
    }

    #[test]
    fn no_change_no_ecm_or_no_provider_owner_means_nothing() {
        let cfg = cfg();
        let cal = Calendar::default_ca();
        let open = [task("t1", "in-progress", "ecm-bridges", now(), None)];
        assert!(on_plan_change(&cfg, &cal, "p1", "c", "mcp-a", "mcp-a", &open, now()).is_none());
        assert!(on_plan_change(&cfg, &cal, "p1", "c", "mcp-a", "mcp-b", &[], now()).is_none());
        let mcp_owned = [task("t1", "requested", "mcp-a", now(), None)];
        assert!(
            on_plan_change(&cfg, &cal, "p1", "c", "mcp-a", "mcp-b", &mcp_owned, now()).is_none()
        );
        let rejected = [task("t1", "rejected", "ecm-bridges", now(), None)];
        assert!(
            on_plan_change(&cfg, &cal, "p1", "c", "mcp-a", "mcp-b", &rejected, now()).is_none()
        );
    }
}
