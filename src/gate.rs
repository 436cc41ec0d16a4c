//! The consent gate of every read-side exit (the HAPI consent model:
//! decide, then mask): each resource that would leave — a FHIR read, each
//! search match and include, a create's subject Patient, a Task a caller
//! is not a party to — is judged by [`Gate::judge`] (`Disclosure::decide`
//! for the caller's organization with purpose `Pull` against the patient's
//! context, loaded once per patient per request, then the obligations), and
//! every disclosure and refusal of the request goes into its one audit
//! record ([`Gate::finish`]), appended before the response is sent.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use store::StoredResource;

use crate::audit::{self, AuditEntry, Interaction};
use crate::auth::Caller;
use crate::config::OrgKind;
use crate::disclosure::{apply_obligations, PatientContext};
use crate::edge::ApiError;
use crate::resources::index;
use crate::state::Core;

/// Most distinct patients whose context one request loads (a search page
/// stops short, with a `next` link, rather than load more).
pub const MAX_PATIENTS_PER_REQUEST: usize = 256;
/// Most resource references in one audit record (a request that names more
/// — at most `fhir::MAX_SCAN` plus its includes — writes one record per this
/// many, in order). Keeps every body well under the store's size cap.
pub const MAX_ENTITIES_PER_AUDIT: usize = 1000;
/// `AuditEvent.entity.detail.type` marking a resource disclosed or withheld.
pub const DETAIL_DISCLOSURE: &str = "disclosure";
/// `AuditEvent.entity.detail.type` of the rule and reason a resource was
/// withheld for.
pub const DETAIL_REASON: &str = "reason";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// The work a withheld answer's consent decision costs, done for an absent
/// one: a patient context read (as [`Gate::judge`] loads for a withheld
/// resource's patient), so that missing and withheld answer in the same
/// time as well as with the same status and body. Every exit that answers
/// "absent" and "withheld" alike calls it on its absent path: FHIR reads,
/// a create's subject Patient (`sources::fhir_write::visible_patient`);
/// `GET /cws/eligibility/{patient}` makes the reads of its own decision
/// instead, and `PUT /fhir/Task/{id}` judges a stand-in Task
/// (`sources::task_update::put_task`). The result is thrown away (a failed
/// read changes nothing).
pub async fn absent_costs_alike(state: &Core, key: &str) {
    let _ = PatientContext::load(&state.cfg, state.store.as_ref(), key).await;
}

/// The outcome of consent for one resource.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Send this (obligations applied).
    Permit(Value),
    /// Withhold; `rule reason` for the audit.
    Withhold(String),
}

/// Consent decisions and audit records of one request.
pub struct Gate<'a> {
    /// The request's services (the search page reads through it).
    pub state: &'a Core,
    caller: &'a Caller,
    now: DateTime<Utc>,
    contexts: HashMap<String, PatientContext>,
    /// Every resource decided, in order: patient, `Type/id`, `None` when
    /// disclosed or `Some(rule reason)` when withheld.
    seen: Vec<(Option<String>, String, Option<String>)>,
    interaction: Interaction,
    /// Per patient: may the caller see the member (and so its plan)? See
    /// [`Gate::sees_member`].
    member_seen: HashMap<String, bool>,
}

impl<'a> Gate<'a> {
    /// A gate for one request.
    pub fn new(state: &'a Core, caller: &'a Caller, interaction: Interaction) -> Gate<'a> {
        Gate {
            state,
            caller,
            now: Utc::now(),
            contexts: HashMap::new(),
            seen: Vec::new(),
            interaction,
            member_seen: HashMap::new(),
        }
    }

    /// Can [`Gate::judge`] decide `r` without loading more than
    /// [`MAX_PATIENTS_PER_REQUEST`] patient contexts?
    pub fn has_room_for(&self, r: &StoredResource) -> bool {
        if self.caller.kind == OrgKind::Operator || self.contexts.len() < MAX_PATIENTS_PER_REQUEST {
            return true;
        }
        match r.patient_id.clone().or_else(|| index::patient_of(&r.body)) {
            Some(p) => self.contexts.contains_key(&p),
            None => true,
        }
    }

    /// Does the request still need `patient_id`'s context (a non-operator
    /// caller whose context for that patient is not loaded yet)?
    pub fn needs_context(&self, patient_id: &str) -> bool {
        self.caller.kind != OrgKind::Operator
            && !self.contexts.contains_key(patient_id)
            && self.contexts.len() < MAX_PATIENTS_PER_REQUEST
    }

    /// Take `patient_id`'s context from resources the store read together
    /// with the request's resources (`Store::*_with_context`, of
    /// [`crate::disclosure::CONTEXT_TYPES`]) instead of loading it at the
    /// first [`Gate::judge`]: the same [`PatientContext::from_resources`] over the
    /// same rows `PatientContext::load` reads, one store round trip fewer.
    pub fn preload(&mut self, patient_id: &str, context: &[StoredResource]) {
        if self.needs_context(patient_id) {
            let ctx = PatientContext::from_resources(&self.state.cfg, patient_id, context);
            self.contexts.insert(patient_id.to_string(), ctx);
        }
    }

    /// Decide one stored resource for the caller and remember it for the audit.
    pub async fn judge(&mut self, r: &StoredResource) -> Result<Verdict, ApiError> {
        let reference = format!("{}/{}", r.resource_type, r.id);
        let patient = r.patient_id.clone().or_else(|| index::patient_of(&r.body));
        if self.caller.kind == OrgKind::Operator {
            self.seen.push((patient, reference, None));
            return Ok(Verdict::Permit(r.body.clone()));
        }
        let Some(pid) = patient else {
            let why = "R1 deny.no-patient".to_string();
            self.seen.push((None, reference, Some(why.clone())));
            return Ok(Verdict::Withhold(why));
        };
        if !self.contexts.contains_key(&pid) {
            if self.contexts.len() >= MAX_PATIENTS_PER_REQUEST {
                return Err(ApiError::Internal(
                    "too many patients in one request".into(),
                ));
            }
            let ctx = PatientContext::load(&self.state.cfg, self.state.store.as_ref(), &pid)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "loading a patient context failed");
                    ApiError::Unavailable
                })?;
            self.contexts.insert(pid.clone(), ctx);
        }
        let Some(ctx) = self.contexts.get(&pid) else {
            return Err(ApiError::Internal("patient context missing".into()));
        };
        // `Disclosure::decide` finds the patient in the body
        // (`mapping::patient_reference`, which reads `Task.for`); a stored
        // Task whose body names none is decided on a view naming the patient
        // the store indexed it under.
        let view;
        let body = if r.resource_type == "Task" && mapping::patient_reference(&r.body).is_none() {
            let mut v = r.body.clone();
            v["subject"] = json!({"reference": format!("Patient/{pid}")});
            view = v;
            &view
        } else {
            &r.body
        };
        let d = self.state.disclosure.decide(
            body,
            &self.caller.org_id,
            consent::Purpose::Pull,
            ctx,
            self.now,
        );
        if d.effect == consent::Effect::Permit {
            self.seen.push((Some(pid), reference, None));
            return Ok(Verdict::Permit(apply_obligations(&r.body, &d)));
        }
        // R4: the referring organization always learns a referral's status —
        // a projection of the Task without clinical detail.
        if r.resource_type == "Task" {
            let projection = crate::delivery::bundle::task_status_projection(body);
            let d2 = self.state.disclosure.decide_with(
                &projection,
                &self.caller.org_id,
                consent::Purpose::Pull,
                ctx,
                self.now,
                true,
            );
            if d2.effect == consent::Effect::Permit {
                let mut body = apply_obligations(&projection, &d2);
                // The owner says which plan (or provider) the member is
                // with: only for a referrer that may see the member.
                if !self.sees_member(&pid).await? {
                    if let Some(o) = body.as_object_mut() {
                        o.remove("owner");
                    }
                }
                self.seen.push((Some(pid), reference, None));
                return Ok(Verdict::Permit(body));
            }
        }
        let why = format!("{} {}", d.rule, d.reason);
        self.seen.push((Some(pid), reference, Some(why.clone())));
        Ok(Verdict::Withhold(why))
    }

    /// May the caller see the member `pid` — the child's county
    /// (`records::eligibility::is_childs_county`), or an organization
    /// `Disclosure::decide` lets read the member's Patient (purpose pull)?
    /// Such a caller may learn the member's plan; a referrer that may not
    /// gets a Task's status (R4) without its owner. Needs `pid`'s context
    /// loaded (as [`Gate::judge`] does before asking).
    async fn sees_member(&mut self, pid: &str) -> Result<bool, ApiError> {
        if let Some(b) = self.member_seen.get(pid) {
            return Ok(*b);
        }
        let patient = self
            .state
            .store
            .resource_get("Patient", pid)
            .await
            .map_err(|_| ApiError::Unavailable)?;
        let Some(ctx) = self.contexts.get(pid) else {
            return Err(ApiError::Internal("patient context missing".into()));
        };
        let seen = crate::delivery::bundle::sees_member(
            &self.state.disclosure,
            self.caller.org_id.as_str(),
            ctx,
            patient.as_ref().map(|p| &p.body),
            self.now,
        );
        self.member_seen.insert(pid.to_string(), seen);
        Ok(seen)
    }

    /// Record a read of `reference`, which does not exist: withheld, for
    /// `R1 deny.not-found` (the audit of a missing id is the audit of a
    /// withheld one).
    pub(crate) fn absent(&mut self, reference: String) {
        self.seen
            .push((None, reference, Some("R1 deny.not-found".to_string())));
    }

    /// Record that `reference` (of `patient`) was shown to the caller
    /// without a consent decision here (operators' AuditEvent reads; a
    /// referral's answer to the child's county or the member's plan).
    pub fn shown(&mut self, patient: Option<String>, reference: String) {
        self.seen.push((patient, reference, None));
    }

    /// Append the audit record of a count-only search (`_count=0`): the
    /// caller was told how many resources it may see, and no resource, so
    /// it is one `query` AuditEvent (see [`count_event`]) — never a
    /// `disclosure` of the counted resources.
    pub async fn finish_count(self) -> Result<(), ApiError> {
        let entry = count_event(self.caller, self.interaction, self.now, &self.seen);
        self.state
            .store
            .audit_append(vec![entry])
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "audit append failed; nothing disclosed");
                ApiError::Unavailable
            })?;
        Ok(())
    }

    /// Append the request's audit record: **one AuditEvent for the whole
    /// request** (one per [`MAX_ENTITIES_PER_AUDIT`] resources beyond that),
    /// listing every resource disclosed or withheld (see [`request_event`]).
    ///
    /// A search that decided nothing (no match, or contradictory
    /// parameters) is still a query the caller made: it is recorded as one
    /// `query` AuditEvent with no entities, as IHE BALP records a query with
    /// an empty result. A read decides at least the missing id, so it never
    /// ends here empty.
    pub async fn finish(self) -> Result<(), ApiError> {
        let entries: Vec<store::NewAudit> = if self.seen.is_empty() {
            if self.interaction != Interaction::SearchType {
                return Ok(());
            }
            vec![audit::new_audit(&AuditEntry {
                kind: "query",
                interaction: self.interaction,
                caller: self.caller,
                patient_id: None,
                entities: Vec::new(),
                detail: Some("0 disclosed, 0 withheld".into()),
                recorded: self.now,
            })]
        } else {
            self.seen
                .chunks(MAX_ENTITIES_PER_AUDIT)
                .map(|chunk| request_event(self.caller, self.interaction, self.now, chunk))
                .collect()
        };
        self.state.store.audit_append(entries).await.map_err(|e| {
            tracing::error!(error = %e, "audit append failed; nothing disclosed");
            ApiError::Unavailable
        })?;
        Ok(())
    }
}

/// `AuditEntity.detail.type` of how many of a patient's resources a
/// count-only search counted.
pub const DETAIL_COUNTED: &str = "counted";

/// The AuditEvent of a count-only search (`_count=0`): kind `query`
/// (outcome 0), what the count reveals and nothing more — per patient
/// whose resources were counted, the `Patient` entity (role 1) with
/// `detail[type=counted]` = how many; no resource entities (none was
/// returned) and nothing about withheld resources but their number in
/// `outcomeDesc` (`query: count-only, {n} counted, {m} withheld`).
/// `patient_id` is set when the count concerns one patient.
pub fn count_event(
    caller: &Caller,
    interaction: Interaction,
    recorded: DateTime<Utc>,
    seen: &[(Option<String>, String, Option<String>)],
) -> store::NewAudit {
    let mut per_patient: Vec<(&str, usize)> = Vec::new();
    let mut counted = 0usize;
    for (p, _, why) in seen {
        if why.is_some() {
            continue;
        }
        counted += 1;
        let Some(p) = p.as_deref() else { continue };
        match per_patient.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n += 1,
            None => per_patient.push((p, 1)),
        }
    }
    let withheld = seen.len() - counted;
    let mut body = audit::audit_event(&AuditEntry {
        kind: "query",
        interaction,
        caller,
        patient_id: None,
        entities: Vec::new(),
        detail: None,
        recorded,
    });
    body["entity"] = Value::Array(
        per_patient
            .iter()
            .map(|(p, n)| {
                json!({
                    "what": {"reference": format!("Patient/{p}")},
                    "role": {"system": OBJECT_ROLE, "code": "1"},
                    "detail": [{"type": DETAIL_COUNTED, "valueString": n.to_string()}]
                })
            })
            .collect(),
    );
    body["outcomeDesc"] = json!(format!(
        "query: count-only, {counted} counted, {withheld} withheld"
    ));
    let single = match per_patient.as_slice() {
        [(p, _)] => Some(p.to_string()),
        _ => None,
    };
    store::NewAudit {
        recorded,
        kind: "query".to_string(),
        patient_id: single,
        recipient: Some(caller.org_id.clone()),
        body,
    }
}

/// The one AuditEvent of a request (the IHE BALP shape of a query or read):
/// the caller as agent, then per patient, in order of first appearance,
/// the `Patient` entity (role 1) followed by each resource of that patient
/// the request decided (role 4), every resource entity carrying
/// `detail[type=disclosure]` = `disclosed` or `withheld`, and for withheld
/// ones `detail[type=reason]` = `rule reason`. Kind (and `outcome`):
/// `read` for operators, `disclosure` (0) when anything was disclosed,
/// `refusal` (4) when everything was withheld. `patient_id` is set when the
/// request concerns one patient; the store indexes every named patient.
pub fn request_event(
    caller: &Caller,
    interaction: Interaction,
    recorded: DateTime<Utc>,
    seen: &[(Option<String>, String, Option<String>)],
) -> store::NewAudit {
    let withheld = seen.iter().filter(|s| s.2.is_some()).count();
    let disclosed = seen.len() - withheld;
    let kind = if caller.kind == OrgKind::Operator {
        "read"
    } else if disclosed > 0 {
        "disclosure"
    } else {
        "refusal"
    };
    // Patients in order of first appearance, each with its resources.
    let mut patients: Vec<&Option<String>> = Vec::new();
    for (p, _, _) in seen {
        if !patients.contains(&p) {
            patients.push(p);
        }
    }
    let mut entity: Vec<Value> = Vec::with_capacity(seen.len() + patients.len());
    for p in &patients {
        if let Some(id) = p {
            entity.push(json!({
                "what": {"reference": format!("Patient/{id}")},
                "role": {"system": OBJECT_ROLE, "code": "1"}
            }));
        }
        for (_, reference, why) in seen.iter().filter(|s| &&s.0 == p) {
            let mut detail = vec![json!({
                "type": DETAIL_DISCLOSURE,
                "valueString": if why.is_some() { "withheld" } else { "disclosed" }
            })];
            if let Some(why) = why {
                detail.push(json!({"type": DETAIL_REASON, "valueString": why}));
            }
            entity.push(json!({
                "what": {"reference": reference},
                "role": {"system": OBJECT_ROLE, "code": "4"},
                "detail": detail
            }));
        }
    }
    let mut body = audit::audit_event(&AuditEntry {
        kind,
        interaction,
        caller,
        patient_id: None,
        entities: Vec::new(),
        detail: None,
        recorded,
    });
    body["entity"] = Value::Array(entity);
    body["outcomeDesc"] = json!(format!(
        "{kind}: {disclosed} disclosed, {withheld} withheld"
    ));
    let single = match patients.as_slice() {
        [Some(p)] => Some(p.clone()),
        _ => None,
    };
    store::NewAudit {
        recorded,
        kind: kind.to_string(),
        patient_id: single,
        recipient: Some(caller.org_id.clone()),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_only_search_is_a_query_naming_only_what_was_counted() {
        let caller = Caller {
            client_id: "plan-a".into(),
            org_id: "mcp-a".into(),
            kind: OrgKind::Mcp,
            scopes: None,
        };
        let seen = vec![
            (Some("p1".to_string()), "Task/t1".to_string(), None),
            (Some("p1".to_string()), "Task/t2".to_string(), None),
            (
                Some("p2".to_string()),
                "Task/t3".to_string(),
                Some("R1 deny.no-consent".to_string()),
            ),
        ];
        let e = count_event(&caller, Interaction::SearchType, Utc::now(), &seen);
        assert_eq!(e.kind, "query");
        assert_eq!(e.patient_id.as_deref(), Some("p1"));
        assert_eq!(e.body["outcome"], "0");
        assert_eq!(
            e.body["outcomeDesc"],
            "query: count-only, 2 counted, 1 withheld"
        );
        assert_eq!(
            e.body["entity"],
            json!([{
                "what": {"reference": "Patient/p1"},
                "role": {"system": OBJECT_ROLE, "code": "1"},
                "detail": [{"type": DETAIL_COUNTED, "valueString": "2"}]
            }])
        );
        // The same resources returned would have been a disclosure.
        let d = request_event(&caller, Interaction::SearchType, Utc::now(), &seen);
        assert_eq!(d.kind, "disclosure");
    }
}
