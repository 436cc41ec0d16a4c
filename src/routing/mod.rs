//! Routing: which change goes to which organization, for what purpose.
//!
//! The rules are data (`conformance/routing-rules.yaml`, see [`rules`]); this
//! module evaluates them, purely, over one input — the resources a journal
//! record (an ADT message, a case event, a referral, a Task update) wrote —
//! and what the gateway knows of the member ([`MemberView`]: open ECM
//! assignment, MCP, referring organization, case county, plan code).
//!
//! ## Invariants
//! - **Routing never discloses.** It only queues candidates ([`Planned`]);
//!   the outbox worker asks the consent engine again immediately before every
//!   attempt and leaves out what is denied.
//! - **Pure and deterministic.** Same input and member view → same plan, in
//!   rule order; a recipient is planned at most once per (rule, recipient).
//! - **Refusals are explicit.** A rule that matches but cannot name a
//!   recipient (no MCP serves the member's plan code in the member's county,
//!   an ECM provider not contracted with the member's MCP …) yields a
//!   [`Refusal`] with a stable reason code, never a silent drop.
//! - **No sender echo.** A change is never routed back to the organization it
//!   came from.
//! - **Payloads are references.** The outbox row carries `Type/id`
//!   references, the rule, purpose and package; the worker reads the current
//!   stored versions at send time, so a later update is what a retry sends.

pub mod rules;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use store::StoredResource;

use crate::config::{Config, OrgKind};
use crate::disclosure::{org_of, parse_fhir_time, ref_id};
pub use rules::{
    Condition, DeliveryKind, Package, Relation, RoutePurpose, RoutingRules, Rule, RulesError,
    Trigger,
};

pub use crate::outbox::MAX_REFS;

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The resource types [`MemberView`] is derived from.
pub const MEMBER_TYPES: [&str; 6] = [
    "Consent",
    "ServiceRequest",
    "Task",
    "Coverage",
    "EpisodeOfCare",
    "CarePlan",
];

/// What the gateway knows of a member that routing depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberView {
    pub patient_id: String,
    /// The ECM provider owning an accepted / in-progress Task.
    pub assigned_ecm: Option<String>,
    /// The member's MCP: Coverage payor, else the MCP serving the plan code
    /// in the member's county, else the MCP a referral names.
    pub member_mcp: Option<String>,
    /// The requester of the newest ServiceRequest.
    pub referring_org: Option<String>,
    /// The county organization owning the CWS case (EpisodeOfCare
    /// managingOrganization, else a county that referred).
    pub case_county: Option<String>,
    /// The member's county name (of the case county organization).
    pub county: Option<String>,
    /// The Medi-Cal plan code (Coverage.class of type `plan`).
    pub plan_code: Option<String>,
    /// Ids of the patient's Consent resources (sent with referral packages).
    pub consents: Vec<String>,
    /// Ids of the patient's Tasks per focus ServiceRequest id.
    pub tasks_by_focus: Vec<(String, String)>,
    /// The patient's CarePlans: (id, authoring organization).
    pub care_plans: Vec<(String, Option<String>)>,
}

impl MemberView {
    /// Derive the view from the patient's stored resources, overlaid with the
    /// resources being written now (they win over the stored versions).
    pub fn from_resources(
        cfg: &Config,
        patient_id: &str,
        stored: &[StoredResource],
        writing: &[Value],
    ) -> MemberView {
        let mut v = MemberView {
            patient_id: patient_id.to_string(),
            ..MemberView::default()
        };
        // Newest wins: stored in last_updated order, then what is written now.
        let mut stored: Vec<&StoredResource> = stored.iter().collect();
        stored.sort_by_key(|r| r.last_updated);
        let mut all: Vec<&Value> = Vec::new();
        let written_keys: BTreeSet<(String, String)> = writing
            .iter()
            .filter_map(|w| Some((str_of(w, "resourceType")?.into(), str_of(w, "id")?.into())))
            .collect();
        for r in &stored {
            if !written_keys.contains(&(r.resource_type.clone(), r.id.clone())) {
                all.push(&r.body);
            }
        }
        all.extend(writing.iter());
        let kind_of = |org: &str| cfg.organization(org).map(|o| o.kind);
        let mut coverage_mcp = None;
        let mut referral_mcp = None;
        let mut consents = BTreeSet::new();
        for b in all {
            match str_of(b, "resourceType").unwrap_or("") {
                "Consent" => {
                    if let Some(id) = str_of(b, "id") {
                        consents.insert(id.to_string());
                    }
                }
                "ServiceRequest" => {
                    if let Some(r) = b.get("requester").and_then(org_of) {
                        if kind_of(&r) == Some(OrgKind::County) && v.case_county.is_none() {
                            v.case_county = Some(r.clone());
                        }
                        v.referring_org = Some(r);
                    }
                    let performer = b
                        .get("performer")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find_map(org_of));
                    if let Some(p) = performer {
                        if kind_of(&p) == Some(OrgKind::Mcp) {
                            referral_mcp = Some(p);
                        }
                    }
                }
                "Task" => {
                    let status = str_of(b, "status").unwrap_or("");
                    let owner = b.get("owner").and_then(org_of);
                    if let Some(owner) = owner {
                        if kind_of(&owner) == Some(OrgKind::EcmProvider) {
                            if matches!(status, "accepted" | "in-progress") {
                                v.assigned_ecm = Some(owner);
                            } else if v.assigned_ecm.as_deref() == Some(owner.as_str()) {
                                // That assignment ended (completed, cancelled …).
                                v.assigned_ecm = None;
                            }
                        }
                    }
                    if let (Some(id), Some(focus)) = (
                        str_of(b, "id"),
                        b.get("focus").and_then(|f| ref_id(f, "ServiceRequest")),
                    ) {
                        v.tasks_by_focus.push((focus, id.to_string()));
                    }
                }
                "Coverage" if str_of(b, "status") == Some("active") => {
                    let payor = b
                        .get("payor")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find_map(org_of))
                        .filter(|p| kind_of(p) == Some(OrgKind::Mcp));
                    if payor.is_some() {
                        coverage_mcp = payor;
                    }
                    if let Some(code) = plan_code_of(b) {
                        v.plan_code = Some(code);
                    }
                }
                "EpisodeOfCare" => {
                    if let Some(org) = b.get("managingOrganization").and_then(org_of) {
                        if kind_of(&org) == Some(OrgKind::County) {
                            v.case_county = Some(org);
                        }
                    }
                }
                "CarePlan"
                    if !matches!(str_of(b, "status"), Some("entered-in-error" | "revoked")) =>
                {
                    if let Some(id) = str_of(b, "id") {
                        let author = b.get("author").and_then(org_of);
                        v.care_plans.push((id.to_string(), author));
                    }
                }
                _ => {}
            }
        }
        v.county = v
            .case_county
            .as_deref()
            .and_then(|c| cfg.organization(c))
            .and_then(|o| o.county.clone());
        let by_plan = match (&v.plan_code, &v.county) {
            (Some(p), Some(c)) => mcp_for(cfg, p, c),
            _ => None,
        };
        v.member_mcp = coverage_mcp.or(by_plan).or(referral_mcp);
        v.consents = consents.into_iter().collect();
        v.tasks_by_focus.sort();
        v.tasks_by_focus.dedup();
        v.care_plans.sort();
        v.care_plans.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// Load the member's stored resources and derive the view.
    pub async fn load(
        cfg: &Config,
        store: &dyn store::Store,
        patient_id: &str,
        writing: &[Value],
    ) -> Result<MemberView, store::StoreError> {
        // Only the types the view reads: a member's compartment grows with
        // every ADT message (Encounters, Conditions …), these stay small.
        let stored = store
            .resources_by_patient_types(patient_id, &MEMBER_TYPES)
            .await?;
        Ok(MemberView::from_resources(
            cfg, patient_id, &stored, writing,
        ))
    }
}

/// The plan code on a Coverage: `class[]` whose type is `plan`.
fn plan_code_of(coverage: &Value) -> Option<String> {
    coverage
        .get("class")?
        .as_array()?
        .iter()
        .find(|c| {
            c.pointer("/type/coding")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| str_of(x, "code") == Some("plan")))
        })
        .and_then(|c| str_of(c, "value"))
        .map(str::to_string)
}

/// The MCP serving `plan_code` in `county` (case-insensitive county match).
pub fn mcp_for(cfg: &Config, plan_code: &str, county: &str) -> Option<String> {
    cfg.organizations
        .iter()
        .find(|o| {
            o.kind == OrgKind::Mcp
                && o.plan_codes.iter().any(|p| p == plan_code)
                && o.counties.iter().any(|c| c.eq_ignore_ascii_case(county))
        })
        .map(|o| o.id.clone())
}

/// One input to route: what a journal record wrote.
#[derive(Debug, Clone, Default)]
pub struct RouteInput {
    /// `adt.A01`, `case.closed`, `placement.changed` …; `None` for plain writes.
    pub event: Option<String>,
    /// The organization the input came from.
    pub source_org: String,
    /// The resources written (current bodies).
    pub written: Vec<Value>,
    /// For `placement.changed`: the placement is outside the case county.
    pub out_of_county: bool,
    /// When the event happened (ADT: EVN-2 / the Encounter period), for the
    /// 24-hour notification clock.
    pub event_time: Option<DateTime<Utc>>,
}

impl RouteInput {
    /// The input for a translated ADT Bundle: the event from its
    /// MessageHeader (`adt.A01` …), the written resources.
    pub fn from_adt_bundle(bundle: &Value, source_org: &str) -> RouteInput {
        let written: Vec<Value> = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("resource").cloned())
                    .collect()
            })
            .unwrap_or_default();
        RouteInput::from_adt_resources(written, source_org)
    }

    /// [`RouteInput::from_adt_bundle`] from the Bundle's resources, in
    /// Bundle order (taken, not copied).
    pub fn from_adt_resources(written: Vec<Value>, source_org: &str) -> RouteInput {
        let event = written
            .iter()
            .find(|r| str_of(r, "resourceType") == Some("MessageHeader"))
            .and_then(|h| h.pointer("/eventCoding/code"))
            .and_then(Value::as_str)
            .map(|c| format!("adt.{c}"));
        let event_time = written
            .iter()
            .find(|r| str_of(r, "resourceType") == Some("Encounter"))
            .and_then(|e| {
                e.pointer("/period/end")
                    .or_else(|| e.pointer("/period/start"))
                    .and_then(Value::as_str)
            })
            .and_then(parse_fhir_time);
        RouteInput {
            event,
            source_org: source_org.to_string(),
            written,
            out_of_county: false,
            event_time,
        }
    }

    /// The patient the input is about (first resource naming one; a Task
    /// names it in `for`).
    pub fn patient_id(&self) -> Option<String> {
        self.written.iter().find_map(patient_of)
    }
}

/// The patient a resource belongs to (see `resources::index::patient_of`).
pub fn patient_of(res: &Value) -> Option<String> {
    crate::resources::index::patient_of(res)
}

/// One delivery a rule asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub rule: String,
    pub recipient: String,
    pub relation: Relation,
    pub purpose: RoutePurpose,
    pub kind: DeliveryKind,
    pub package: Package,
    pub patient_id: String,
    /// `Type/id` references, in send order.
    pub resources: Vec<String>,
    /// Notification: the Da Vinci event code and the focus reference.
    pub event: Option<String>,
    pub focus: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
}

impl Planned {
    /// The outbox payload (see `docs/delivery.md`).
    pub fn payload(&self) -> crate::outbox::Payload {
        crate::outbox::Payload {
            rule: self.rule.clone(),
            relation: self.relation.as_str().to_string(),
            purpose: self.purpose.as_str().to_string(),
            package: self.package.as_str().to_string(),
            patient: self.patient_id.clone(),
            resources: self.resources.clone(),
            event: self.event.clone(),
            focus: self.focus.clone(),
            event_time: self.event_time,
        }
    }

    /// The outbox row: ordered per (recipient, patient).
    pub fn new_delivery(
        &self,
        now: DateTime<Utc>,
        journal_id: Option<store::JournalId>,
    ) -> store::NewDelivery {
        store::NewDelivery {
            endpoint: self.recipient.clone(),
            ordering_key: self.patient_id.clone(),
            kind: self.kind.as_str().to_string(),
            payload: self.payload().to_value(),
            not_before: now,
            journal_id,
        }
    }
}

/// A rule that matched but could not name a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    pub relation: Relation,
    /// Stable code: `no-mcp-for-plan-county`, `ecm-not-contracted`, …
    pub reason: String,
}

/// Everything one input routes to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutePlan {
    pub deliveries: Vec<Planned>,
    pub refusals: Vec<Refusal>,
}

/// The Da Vinci notification event of an HL7 trigger (A01/A04 admit, A02
/// transfer, A03 discharge); others notify nothing.
pub fn davinci_event(trigger: &str) -> Option<&'static str> {
    match trigger {
        "A01" | "A04" => Some("notification-admit"),
        "A02" => Some("notification-transfer"),
        "A03" => Some("notification-discharge"),
        _ => None,
    }
}

fn reference(r: &Value) -> Option<String> {
    Some(format!(
        "{}/{}",
        str_of(r, "resourceType")?,
        str_of(r, "id")?
    ))
}

impl RoutingRules {
    /// Evaluate every rule over one input.
    pub fn plan(&self, cfg: &Config, input: &RouteInput, member: &MemberView) -> RoutePlan {
        let mut plan = RoutePlan::default();
        let source_kind = cfg.organization(&input.source_org).map(|o| o.kind);
        for rule in &self.rules {
            let t = &rule.trigger;
            if !t.events.is_empty()
                && !input
                    .event
                    .as_deref()
                    .is_some_and(|e| t.events.iter().any(|x| x == e))
            {
                continue;
            }
            if !t.source_kinds.is_empty()
                && !source_kind.is_some_and(|k| t.source_kinds.contains(&k))
            {
                continue;
            }
            if t.require.contains(&Condition::OpenEcmAssignment) && member.assigned_ecm.is_none() {
                continue;
            }
            if t.require.contains(&Condition::OutOfCounty) && !input.out_of_county {
                continue;
            }
            // The triggering resources: those of the trigger's type and status
            // (for event rules without a resource type, the input as a whole).
            let triggers: Vec<Option<&Value>> = match &t.resource {
                Some(rt) => input
                    .written
                    .iter()
                    .filter(|r| str_of(r, "resourceType") == Some(rt.as_str()))
                    .filter(|r| {
                        t.statuses.is_empty()
                            || str_of(r, "status")
                                .is_some_and(|s| t.statuses.iter().any(|x| x == s))
                    })
                    .filter(|r| {
                        !t.require.contains(&Condition::OwnerChanged)
                            || previous_owner(cfg, r).is_some()
                    })
                    .filter(|r| {
                        !t.require.contains(&Condition::OwnerIsEcm)
                            || r.get("owner").and_then(org_of).is_some_and(|o| {
                                cfg.organization(&o).map(|x| x.kind) == Some(OrgKind::EcmProvider)
                            })
                    })
                    .map(Some)
                    .collect(),
                None => vec![None],
            };
            for trig in triggers {
                self.plan_one(cfg, rule, trig, input, member, &mut plan);
            }
        }
        dedup_across_rules(&mut plan.deliveries);
        plan
    }

    fn plan_one(
        &self,
        cfg: &Config,
        rule: &Rule,
        trig: Option<&Value>,
        input: &RouteInput,
        member: &MemberView,
        plan: &mut RoutePlan,
    ) {
        // The package, built once per trigger.
        let (resources, event, focus) = match package_refs(rule, trig, input, member) {
            Ok(x) => x,
            Err(reason) => {
                plan.refusals.push(Refusal {
                    rule: rule.id.clone(),
                    relation: rule
                        .recipients
                        .first()
                        .copied()
                        .unwrap_or(Relation::MemberMcp),
                    reason: reason.to_string(),
                });
                return;
            }
        };
        let mut targets: Vec<(Relation, String)> = Vec::new();
        for rel in &rule.recipients {
            match resolve_all(cfg, *rel, trig, member) {
                Ok(orgs) => targets.extend(orgs.into_iter().map(|o| (*rel, o))),
                Err(reason) => plan.refusals.push(Refusal {
                    rule: rule.id.clone(),
                    relation: *rel,
                    reason: reason.to_string(),
                }),
            }
        }
        for (rel, recipient) in targets {
            let rel = &rel;
            if recipient == input.source_org {
                continue;
            }
            if rule.trigger.require.contains(&Condition::NamesRecipient)
                && !trig
                    .and_then(crate::disclosure::consent_from_fhir)
                    .is_some_and(|c| c.names(&recipient))
            {
                continue;
            }
            // Care plans: never a provider's own back; none left, nothing to send.
            let resources: Vec<String> = if rule.package == Package::CarePlans {
                let own: Vec<String> = member
                    .care_plans
                    .iter()
                    .filter(|(_, a)| a.as_deref() == Some(recipient.as_str()))
                    .map(|(id, _)| format!("CarePlan/{id}"))
                    .collect();
                let rest: Vec<String> = resources
                    .iter()
                    .filter(|r| !own.contains(r))
                    .cloned()
                    .collect();
                if rest.is_empty() {
                    continue;
                }
                rest
            } else {
                resources.clone()
            };
            if cfg
                .organization(&recipient)
                .and_then(|o| o.endpoint.as_ref())
                .is_none()
            {
                plan.refusals.push(Refusal {
                    rule: rule.id.clone(),
                    relation: *rel,
                    reason: "recipient-has-no-endpoint".into(),
                });
                continue;
            }
            if plan
                .deliveries
                .iter()
                .any(|d| d.rule == rule.id && d.recipient == recipient && d.resources == resources)
            {
                continue;
            }
            plan.deliveries.push(Planned {
                rule: rule.id.clone(),
                recipient,
                relation: *rel,
                purpose: rule.purpose,
                kind: rule.kind,
                package: rule.package,
                patient_id: member.patient_id.clone(),
                resources,
                event: event.clone(),
                focus: focus.clone(),
                event_time: input.event_time,
            });
        }
    }
}

/// One outbox row per recipient per change: a delivery is left out when
/// another to the same recipient, of the same kind, already carries every
/// resource it names (the Task's status when the referral package with that
/// Task goes to the same organization; the status once when the referrer
/// is also the case county). Of two that carry the same resources the
/// first, in rule order, stays.
fn dedup_across_rules(deliveries: &mut Vec<Planned>) {
    let covers = |a: &Planned, b: &Planned| {
        a.recipient == b.recipient
            && a.kind == b.kind
            && a.event == b.event
            && b.resources.iter().all(|r| a.resources.contains(r))
    };
    let mut keep = vec![true; deliveries.len()];
    for i in 0..deliveries.len() {
        for j in 0..deliveries.len() {
            if i == j || !keep[j] || !covers(&deliveries[j], &deliveries[i]) {
                continue;
            }
            // j carries all of i: i goes, unless both carry the same and i
            // came first.
            let same = covers(&deliveries[i], &deliveries[j]);
            if !same || j < i {
                keep[i] = false;
                break;
            }
        }
    }
    let mut k = keep.into_iter();
    deliveries.retain(|_| k.next().unwrap_or(true));
}

/// The ECM provider a Task was just taken from (its `previous-owner`
/// extension), when that is a configured ECM provider.
pub fn previous_owner(cfg: &Config, task: &Value) -> Option<String> {
    crate::resources::extension_org(task, crate::resources::PREVIOUS_OWNER_EXT)
        .filter(|o| cfg.organization(o).map(|x| x.kind) == Some(OrgKind::EcmProvider))
}

/// The MCP that authorized a Task: its `authorizing-mcp` extension, else
/// its owner when that is an MCP.
pub fn authorizing_mcp(cfg: &Config, task: &Value) -> Option<String> {
    crate::resources::extension_org(task, crate::resources::AUTHORIZING_MCP_EXT)
        .or_else(|| task.get("owner").and_then(org_of))
        .filter(|o| cfg.organization(o).map(|x| x.kind) == Some(OrgKind::Mcp))
}

type PackageRefs = (Vec<String>, Option<String>, Option<String>);

fn package_refs(
    rule: &Rule,
    trig: Option<&Value>,
    input: &RouteInput,
    member: &MemberView,
) -> Result<PackageRefs, &'static str> {
    let patient = format!("Patient/{}", member.patient_id);
    let mut refs: Vec<String> = Vec::new();
    let push = |r: String, refs: &mut Vec<String>| {
        if !refs.contains(&r) && refs.len() < MAX_REFS {
            refs.push(r);
        }
    };
    match rule.package {
        Package::Referral => {
            // The ServiceRequest: the trigger itself, or the Task's focus.
            let sr_id = match trig {
                Some(t) if str_of(t, "resourceType") == Some("ServiceRequest") => {
                    str_of(t, "id").map(str::to_string)
                }
                Some(t) => t.get("focus").and_then(|f| ref_id(f, "ServiceRequest")),
                None => None,
            };
            let Some(sr_id) = sr_id else {
                return Err("no-service-request");
            };
            push(format!("ServiceRequest/{sr_id}"), &mut refs);
            let mut tasks: Vec<String> = member
                .tasks_by_focus
                .iter()
                .filter(|(f, _)| *f == sr_id)
                .map(|(_, t)| format!("Task/{t}"))
                .collect();
            for w in &input.written {
                if str_of(w, "resourceType") == Some("Task")
                    && w.get("focus")
                        .and_then(|f| ref_id(f, "ServiceRequest"))
                        .as_deref()
                        == Some(sr_id.as_str())
                {
                    if let Some(r) = reference(w) {
                        tasks.push(r);
                    }
                }
            }
            for t in tasks {
                push(t, &mut refs);
            }
            push(patient, &mut refs);
            for c in &member.consents {
                push(format!("Consent/{c}"), &mut refs);
            }
            Ok((refs, None, None))
        }
        Package::TaskStatus => {
            let r = trig.and_then(reference).ok_or("no-task")?;
            Ok((vec![r], None, None))
        }
        Package::Written => {
            let want = rule.trigger.resource.as_deref();
            for w in &input.written {
                if want.is_none_or(|t| str_of(w, "resourceType") == Some(t)) {
                    if let Some(r) = reference(w) {
                        push(r, &mut refs);
                    }
                }
            }
            if refs.is_empty() {
                return Err("nothing-written");
            }
            Ok((refs, None, None))
        }
        Package::CarePlans => {
            for (id, _) in &member.care_plans {
                push(format!("CarePlan/{id}"), &mut refs);
            }
            Ok((refs, None, None))
        }
        Package::AdtNotification => {
            let trigger = input
                .event
                .as_deref()
                .and_then(|e| e.strip_prefix("adt."))
                .unwrap_or("");
            let Some(event) = davinci_event(trigger) else {
                return Err("no-notification-for-event");
            };
            let enc = input
                .written
                .iter()
                .find(|r| str_of(r, "resourceType") == Some("Encounter"))
                .and_then(reference)
                .ok_or("no-encounter")?;
            push(enc.clone(), &mut refs);
            push(patient, &mut refs);
            for w in &input.written {
                if str_of(w, "resourceType") == Some("Condition") {
                    if let Some(r) = reference(w) {
                        push(r, &mut refs);
                    }
                }
            }
            Ok((refs, Some(event.to_string()), Some(enc)))
        }
    }
}

/// Resolve a relation to its organizations (several only for
/// `appointment.participants`), or a refusal reason.
fn resolve_all(
    cfg: &Config,
    rel: Relation,
    trig: Option<&Value>,
    member: &MemberView,
) -> Result<Vec<String>, &'static str> {
    if rel != Relation::AppointmentParticipants {
        return resolve(cfg, rel, trig, member).map(|o| vec![o]);
    }
    let mut out: Vec<String> = Vec::new();
    for p in trig
        .and_then(|t| t.get("participant"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(o) = p.get("actor").and_then(org_of) {
            if cfg.organization(&o).is_some() && !out.contains(&o) && out.len() < MAX_REFS {
                out.push(o);
            }
        }
    }
    if out.is_empty() {
        return Err("no-participant-organization");
    }
    Ok(out)
}

/// Resolve a relation to an organization id, or a refusal reason.
fn resolve(
    cfg: &Config,
    rel: Relation,
    trig: Option<&Value>,
    member: &MemberView,
) -> Result<String, &'static str> {
    let kind_of = |org: &str| cfg.organization(org).map(|o| o.kind);
    match rel {
        Relation::ServiceRequestPerformer => {
            let performer = trig
                .and_then(|t| t.get("performer"))
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find_map(org_of));
            let Some(p) = performer else {
                // No performer named: the MCP serving the plan in the county.
                return member.member_mcp.clone().ok_or("no-mcp-for-plan-county");
            };
            match kind_of(&p) {
                Some(OrgKind::Mcp) => {
                    let o = cfg.organization(&p).ok_or("unknown-performer")?;
                    if let Some(county) = &member.county {
                        if !o.counties.iter().any(|c| c.eq_ignore_ascii_case(county)) {
                            return Err("mcp-does-not-serve-county");
                        }
                    }
                    if let Some(plan) = &member.plan_code {
                        if !o.plan_codes.iter().any(|c| c == plan) {
                            return Err("mcp-does-not-serve-plan-code");
                        }
                    }
                    Ok(p)
                }
                Some(OrgKind::EcmProvider) => {
                    let o = cfg.organization(&p).ok_or("unknown-performer")?;
                    // The member's plan, else the plan the referral names
                    // (its authorizing MCP) for a member with no enrollment.
                    let sr_mcp = trig.and_then(|t| sr_authorizing_mcp(cfg, t));
                    match member.member_mcp.as_ref().or(sr_mcp.as_ref()) {
                        Some(m) if o.mcps.iter().any(|x| x == m) => Ok(p),
                        Some(_) => Err("ecm-not-contracted-with-member-mcp"),
                        None => Err("no-mcp-for-plan-county"),
                    }
                }
                Some(_) => Err("performer-not-mcp-or-ecm"),
                None => Err("unknown-performer"),
            }
        }
        Relation::TaskOwner => trig
            .and_then(|t| t.get("owner"))
            .and_then(org_of)
            .filter(|o| kind_of(o).is_some())
            .ok_or("no-task-owner"),
        Relation::AssignedEcm => member.assigned_ecm.clone().ok_or("no-assigned-ecm"),
        Relation::MemberMcp => member.member_mcp.clone().ok_or("no-mcp-for-plan-county"),
        // A referral's status goes to the organization that made *that*
        // referral (the Task's or ServiceRequest's own requester), never to
        // whoever referred the member last.
        Relation::ReferringOrg => match trig {
            Some(t) if matches!(str_of(t, "resourceType"), Some("Task" | "ServiceRequest")) => t
                .get("requester")
                .and_then(org_of)
                .filter(|o| kind_of(o).is_some())
                .ok_or("no-referring-org"),
            _ => member.referring_org.clone().ok_or("no-referring-org"),
        },
        Relation::CaseCounty => member.case_county.clone().ok_or("no-case-county"),
        Relation::AppointmentParticipants => Err("no-participant-organization"),
        Relation::TaskAuthorizingMcp => trig
            .and_then(|t| authorizing_mcp(cfg, t))
            .ok_or("no-authorizing-mcp"),
        Relation::TaskPreviousOwner => trig
            .and_then(|t| previous_owner(cfg, t))
            .ok_or("no-previous-owner"),
        Relation::ServiceRequestAuthorizingMcp => trig
            .and_then(|t| sr_authorizing_mcp(cfg, t))
            .or_else(|| member.member_mcp.clone())
            .ok_or("no-authorizing-mcp"),
    }
}

/// The configured MCP a ServiceRequest's `authorizing-mcp` extension names
/// (the plan that decides the referral).
fn sr_authorizing_mcp(cfg: &Config, sr: &Value) -> Option<String> {
    if str_of(sr, "resourceType") != Some("ServiceRequest") {
        return None;
    }
    crate::resources::extension_org(sr, crate::resources::AUTHORIZING_MCP_EXT)
        .filter(|o| cfg.organization(o).map(|x| x.kind) == Some(OrgKind::Mcp))
}

/// The router and the delivery workers' waker, handed to every writer of
/// resources (HTTP handlers, crash recovery) so that what they commit is
/// routed in the same transaction and the workers are woken after it.
#[derive(Clone)]
pub struct Routing {
    pub router: std::sync::Arc<Router>,
    pub waker: crate::outbox::Waker,
}

impl Routing {
    /// The outbox rows for `input` (errors are logged and yield none: the
    /// input itself must still be stored; nothing is sent without a row).
    pub async fn deliveries_for(
        &self,
        store: &dyn store::Store,
        input: &RouteInput,
    ) -> Result<Vec<store::NewDelivery>, store::StoreError> {
        self.router.deliveries(store, input, Utc::now(), None).await
    }
}

/// Rules plus configuration: what the ADT translation worker and the HTTP
/// handlers call to turn an input into outbox rows.
pub struct Router {
    pub cfg: std::sync::Arc<Config>,
    pub rules: RoutingRules,
}

/// Why the router could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot read routing rules {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(transparent)]
    Rules(#[from] RulesError),
}

impl Router {
    /// Load the rules named by `delivery.routing_rules_file`, or the shipped ones.
    pub fn from_config(cfg: std::sync::Arc<Config>) -> Result<Router, RouterError> {
        let rules = match &cfg.delivery.routing_rules_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| RouterError::Read {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                RoutingRules::from_yaml(&text)?
            }
            None => RoutingRules::default_rules()?,
        };
        Ok(Router { cfg, rules })
    }

    /// Route one input: load the member, evaluate the rules, log refusals
    /// (rule, relation, reason: no PHI). Returns the plan.
    pub async fn route(
        &self,
        store: &dyn store::Store,
        input: &RouteInput,
    ) -> Result<RoutePlan, store::StoreError> {
        let Some(patient) = input.patient_id() else {
            return Ok(RoutePlan::default());
        };
        let member = MemberView::load(&self.cfg, store, &patient, &input.written).await?;
        let plan = self.rules.plan(&self.cfg, input, &member);
        for r in &plan.refusals {
            tracing::info!(rule = %r.rule, relation = r.relation.as_str(), reason = %r.reason, "routing refused a recipient");
        }
        Ok(plan)
    }

    /// The outbox rows for one input (for `complete_with`; `journal_id`
    /// `None` = the record being completed).
    pub async fn deliveries(
        &self,
        store: &dyn store::Store,
        input: &RouteInput,
        now: DateTime<Utc>,
        journal_id: Option<store::JournalId>,
    ) -> Result<Vec<store::NewDelivery>, store::StoreError> {
        let plan = self.route(store, input).await?;
        Ok(plan
            .deliveries
            .iter()
            .map(|d| d.new_delivery(now, journal_id))
            .collect())
    }
}

#[cfg(test)]
mod tests;
