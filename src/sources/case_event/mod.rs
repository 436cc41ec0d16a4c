//! `POST /cws/events`: one county case event → journal → FHIR resources.
//!
//! Checks before the journal: caller kind `county`; JSON Schema of the
//! event type; the envelope `county` is the caller organization's county
//! (else **403** — a county may only speak for itself); `consent.recorded`:
//! every recipient is a configured organization, a `referral_verbal`
//! consent shows all four `explained` flags true, and the grantor may grant
//! those categories for the child's age (`cwsgw_consent::validate_grantor`);
//! `consent.withdrawn`: the consent was recorded by this county;
//! `cft.scheduled`: invitees are configured organizations.
//!
//! Then the event is journaled (`InputKind::CaseEvent`, dedup key
//! `{county}|{eventId}`), derived ([`derive()`]), settled
//! ([`journal::settle`]: routed and written in one `Store::complete_with`),
//! and answered 202 with a `collection` Bundle; the same event id again
//! answers 200 with the same resources and writes nothing new.

pub mod effects;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use store::{InputKind, NewInput, Store};

use super::Ingress;
use crate::clocks as deadlines;
use crate::config::{Config, OrgKind};
use crate::disclosure;
use crate::edge::{body_rejection, fhir_json, parse_json, ApiError, ClientCert};
use crate::journal::{self, Appended, Derived, RouteMeta};
use crate::records::{continuity, eligibility, orgs, patients};
use crate::resources::{collection, is_internal, rid, strip_meta, write_of};
use crate::state::Core;

/// The mapping that translates case events.
pub const MAPPING_ID: &str = "case-event-to-fhir";

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The event's `occurredAt` as an instant.
pub fn occurred_at(doc: &Value) -> Result<DateTime<Utc>, ApiError> {
    s(doc, "/occurredAt")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| ApiError::invalid("occurredAt is not an RFC 3339 time", Some("occurredAt")))
}

/// Checks that need configuration or the store (see the module doc).
pub async fn precheck(
    ingress: &Ingress,
    store: &dyn Store,
    doc: &Value,
    etype: &str,
    county_org: &str,
) -> Result<(), ApiError> {
    let cfg = &ingress.cfg;
    match etype {
        "consent.recorded" => {
            let c = doc.get("consent").cloned().unwrap_or_default();
            for (i, r) in c["recipients"].as_array().into_iter().flatten().enumerate() {
                let known = r.as_str().and_then(|r| cfg.organization(r)).is_some();
                if !known {
                    let at = format!("consent.recipients[{i}]");
                    return Err(ApiError::rule(
                        "the recipient is not a configured organization",
                        Some(&at),
                    ));
                }
            }
            let kind = s(&c, "/kind").and_then(disclosure::kind_from_code);
            // A referral consent record shows the four things the SW
            // explained (Guide for CWS, section Consent), or it is refused.
            if kind == Some(consent::ConsentKind::ReferralVerbal) {
                let explained = disclosure::Explained::from_input(c.get("explained"));
                if let Some(flag) = explained.first_missing() {
                    let at = format!("consent.explained.{flag}");
                    return Err(ApiError::rule(
                        "a referral consent must show that the provider and service, the information shared, how long it is shared and the right to withdraw were explained",
                        Some(&at),
                    ));
                }
            }
            let role = s(&c, "/grantor/role").and_then(disclosure::grantor_from_code);
            let cats: Vec<consent::Category> = c["categories"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().and_then(disclosure::category_from_code))
                .collect();
            let birth = date(s(doc, "/child/birthDate"));
            let start = date(s(&c, "/period/start"));
            if let (Some(kind), Some(role), Some(birth), Some(start)) = (kind, role, birth, start) {
                consent::validate_grantor(kind, &cats, role, birth, start)
                    .map_err(|e| ApiError::rule(e.to_string(), Some("consent.grantor.role")))?;
            }
        }
        "consent.withdrawn" => {
            let id = consent_resource_id(county_org, s(doc, "/consentId").unwrap_or(""));
            if store.resource_get("Consent", &id).await?.is_none() {
                return Err(ApiError::rule(
                    "no consent with this consentId was recorded by this county; record it with consent.recorded first",
                    Some("consentId"),
                ));
            }
        }
        "cft.scheduled" => {
            for (i, r) in doc
                .pointer("/meeting/invitees")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if r.as_str().and_then(|r| cfg.organization(r)).is_none() {
                    let at = format!("meeting.invitees[{i}]");
                    return Err(ApiError::rule(
                        "the invitee is not a configured organization",
                        Some(&at),
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn date(s: Option<&str>) -> Option<chrono::NaiveDate> {
    s.and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

/// The Consent id of a county's `consentId` (the mapping's `consent` key).
pub fn consent_resource_id(county_org: &str, consent_id: &str) -> String {
    rid(&format!("consent|{county_org}|{consent_id}"))
}

/// The event plus the `gateway` object the mapping reads (see the header
/// of `mappings/case_event/case-event-to-fhir.yaml`). Pure.
///
/// `residence_county` is where the member lives now (the county of the
/// latest placement, when one is known): a Medi-Cal plan serves members by
/// county of residence, so an enrollment after an out-of-county placement
/// is looked up there; without one, the event's county.
pub fn enrich(
    cfg: &Config,
    doc: &Value,
    county_org: &str,
    patient_id: &str,
    occurred: DateTime<Utc>,
    residence_county: Option<&str>,
) -> Value {
    let mut gateway = json!({
        "patientId": patient_id,
        "countyOrgId": county_org,
        "occurredAt": occurred.to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    if s(doc, "/type") == Some("enrollment.updated") {
        let ffs = doc.pointer("/enrollment/feeForService") == Some(&Value::Bool(true));
        let soc = doc.pointer("/enrollment/shareOfCost") == Some(&Value::Bool(true));
        if let (false, false, Some(plan)) = (ffs, soc, s(doc, "/enrollment/planCode")) {
            let county = residence_county.unwrap_or_else(|| s(doc, "/county").unwrap_or(""));
            if let Some(mcp) = orgs::mcp_for(cfg, plan, county) {
                gateway["mcpId"] = json!(mcp.id);
            }
        }
    }
    if let Some(d) = s(doc, "/meeting/date") {
        let start = match DateTime::parse_from_rfc3339(d) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => date(Some(d))
                .and_then(|d| d.pred_opt())
                .map(|d| program::pacific::end_of_local_day(d) + chrono::Duration::seconds(1)),
        };
        if let Some(t) = start {
            gateway["meetingStart"] = json!(t.to_rfc3339_opts(SecondsFormat::Secs, true));
        }
    }
    let mut enriched = doc.clone();
    enriched["gateway"] = gateway;
    if let Some(c) = s(doc, "/child/cin").or_else(|| s(doc, "/enrollment/cin")) {
        enriched["child"]["cin"] = json!(c);
    }
    enriched
}

/// Derive every resource an event writes: the mapping's output merged into
/// what is stored, the withdrawn Consent, Organizations, the facts record,
/// the eligibility Observation and any deadline clock. Deterministic for a
/// given event and stored state.
pub async fn derive(
    ingress: &Ingress,
    store: &dyn Store,
    doc: &Value,
    county_org: &str,
) -> Result<Derived, ApiError> {
    Ok(derive_locked(ingress, store, doc, county_org).await?.0)
}

/// This process's locks of the Patients an event writes
/// ([`patients::lock_patients`]); hold them until the writes are committed.
pub type PatientLocks = Vec<tokio::sync::OwnedMutexGuard<()>>;

/// [`derive()`], and the locks of the Patients it read and merged: a caller
/// that commits what was derived holds them until [`journal::settle`] returned, so no
/// other writer (another event, the ADT worker) merges into the same
/// Patient in between and one of the two merges is lost.
pub async fn derive_locked(
    ingress: &Ingress,
    store: &dyn Store,
    doc: &Value,
    county_org: &str,
) -> Result<(Derived, PatientLocks), ApiError> {
    let cfg = &ingress.cfg;
    let base = cfg.server.canonical_base.as_str();
    let etype = s(doc, "/type").unwrap_or("");
    let occurred = occurred_at(doc)?;
    let occurred_s = occurred.to_rfc3339_opts(SecondsFormat::Secs, true);
    let client_id = s(doc, "/child/clientId").unwrap_or("");
    let cin = s(doc, "/child/cin").or_else(|| s(doc, "/enrollment/cin"));
    let resolved = patients::resolve(store, base, county_org, client_id, cin).await?;
    let pid = resolved.patient_id.clone();
    // Held until what is derived here is committed (`settle`): no other
    // writer merges into these Patients meanwhile.
    let patient_locks = patients::lock_patients(
        [pid.as_str()]
            .into_iter()
            .chain(resolved.link_from.as_deref()),
    )
    .await;

    // The facts before this event: where the member lives, for the plan
    // lookup and the plan-determination clock.
    let old_facts = store
        .resource_get("Basic", &eligibility::facts_id(&pid))
        .await?
        .and_then(|r| eligibility::facts_of(&r.body));
    let prev_county = old_facts
        .as_ref()
        .and_then(|f| f.pointer("/placement/county"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let enriched = enrich(cfg, doc, county_org, &pid, occurred, prev_county.as_deref());
    // The member's MCP before an enrollment change (for ECM continuity).
    let fx = ingress.effects.of(etype);
    let old_mcp = if fx.continuity_on_plan_change || fx.notice_of_action_on_plan_change {
        crate::records::coverage::coverage_mcp(
            cfg,
            &store.resources_by_patient(&pid, Some("Coverage")).await?,
        )
    } else {
        None
    };
    let mut org_ids: Vec<String> = vec![county_org.to_string()];
    if let Some(m) = s(&enriched, "/gateway/mcpId") {
        org_ids.push(m.to_string());
    }
    let org_name = cfg
        .organization(county_org)
        .map(|o| o.name.as_str())
        .unwrap_or(county_org);
    let ctx = mapping::JsonContext {
        canonical_base: base,
        source_org_id: county_org,
        source_org_name: org_name,
        received_at: &occurred_s,
    };
    let bundle = ingress
        .engine
        .translate_json(MAPPING_ID, &enriched, &ctx)
        .map_err(|e| ApiError::Internal(format!("translation failed: {}", e.code)))?;
    let mut out: Vec<Value> = Vec::new();
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let Some(res) = e.get("resource") else {
            continue;
        };
        let rt = s(res, "/resourceType").unwrap_or("").to_string();
        let id = s(res, "/id").unwrap_or("").to_string();
        let mut res = res.clone();
        if rt == "Patient" {
            // Demographic precedence (mappings/patient-precedence.toml).
            let old = store
                .resource_get(&rt, &id)
                .await?
                .map(|o| strip_meta(o.body));
            res = ingress.precedence.merge_patient(old.as_ref(), &res, base);
        } else if rt == "EpisodeOfCare" {
            if let Some(old) = store.resource_get(&rt, &id).await? {
                res = patients::merge(&strip_meta(old.body), &res);
            }
        }
        if rt == "Patient" {
            if let Some(from) = &resolved.link_from {
                patients::add_link(&mut res, "replaces", from);
            }
        }
        out.push(res);
    }
    if let Some(from) = &resolved.link_from {
        if let Some(old) = store.resource_get("Patient", from).await? {
            let mut old = strip_meta(old.body);
            old["active"] = json!(false);
            patients::add_link(&mut old, "replaced-by", &pid);
            out.push(old);
        }
    }
    if fx.withdraw_consent {
        let id = consent_resource_id(county_org, s(doc, "/consentId").unwrap_or(""));
        if let Some(c) = store.resource_get("Consent", &id).await? {
            let mut c = strip_meta(c.body);
            let at = s(doc, "/withdrawnAt")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    t.with_timezone(&Utc)
                        .to_rfc3339_opts(SecondsFormat::Secs, true)
                })
                .unwrap_or_else(|| occurred_s.clone());
            disclosure::withdraw(&mut c, base, &at);
            out.push(c);
        }
    }
    for ptr in &fx.organizations_from {
        for r in doc
            .pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.as_str() {
                org_ids.push(r.to_string());
            }
        }
    }
    let ids: Vec<&str> = org_ids.iter().map(String::as_str).collect();
    out.extend(orgs::organizations(cfg, &ids));

    // Facts, eligibility, and the plan-determination clock.
    let facts = eligibility::fold_event(old_facts, doc);
    out.push(eligibility::facts_record(base, &pid, &facts));
    let as_of = program::pacific::local_date(occurred);
    if let Some(ev) = eligibility::evaluate(&facts, as_of) {
        out.push(eligibility::observation(base, &pid, &ev, as_of));
    }
    let out_of_county = etype == "placement.changed"
        && doc
            .pointer("/placement/outOfCounty")
            .and_then(Value::as_bool)
            == Some(true);
    let mut derived = Derived {
        writes: out.into_iter().map(write_of).collect(),
        clocks: Vec::new(),
        audits: Vec::new(),
        route: Some(RouteMeta {
            event: Some(etype.to_string()),
            source_org: county_org.to_string(),
            out_of_county,
            event_time: Some(occurred),
        }),
    };
    if fx.open_plan_determination {
        let new_county = s(doc, "/placement/county").unwrap_or("");
        // From the previous placement's county, else the case county.
        let case_county = cfg.organization(county_org).and_then(|o| o.county.clone());
        if let Some(prev) = prev_county.or(case_county) {
            if !prev.eq_ignore_ascii_case(new_county) && orgs::single_plan_county(cfg, &prev) {
                let clock = deadlines::ClockSpec {
                    clock: program::Clock::PlanDetermination,
                    patient_id: pid.clone(),
                    subject: format!("Patient/{pid}"),
                    start: occurred,
                    expedited: false,
                };
                derived
                    .clocks
                    .push(deadlines::open(&clock, &ingress.calendar));
            }
        }
    }
    // The member's open clocks, read once for the effects that meet or
    // open them (plan determination, the plan-change Notice of Action).
    let open_clocks = if fx.close_plan_determination || fx.notice_of_action_on_plan_change {
        deadlines::open_for(store, &format!("Patient/{pid}")).await?
    } else {
        Vec::new()
    };
    if fx.close_plan_determination {
        // A plan determination made: the 24-hour clock after a move out of
        // a single-plan county is met.
        for c in &open_clocks {
            if c.kind == program::Clock::PlanDetermination.code() && c.started_at <= occurred {
                derived.clocks.extend(deadlines::close(c, occurred));
            }
        }
    }
    if fx.continuity_on_plan_change {
        // A change of MCP after recent ECM: the new MCP auto-authorizes.
        let new_mcp = s(&enriched, "/gateway/mcpId");
        if let (Some(old), Some(new)) = (old_mcp.as_deref(), new_mcp) {
            let tasks = store.resources_by_patient(&pid, Some("Task")).await?;
            if let Some(c) = continuity::on_plan_change(
                cfg,
                &ingress.calendar,
                &pid,
                county_org,
                old,
                new,
                &tasks,
                occurred,
            ) {
                tracing::info!(task = %c.task["id"].as_str().unwrap_or(""), "plan change after recent ECM: continuity Task for the new MCP");
                derived.writes.push(write_of(c.task));
                derived.clocks.push(c.clock);
            }
        }
    }
    if fx.notice_of_action_on_plan_change {
        let new_mcp = s(&enriched, "/gateway/mcpId");
        derived.clocks.extend(notice_of_action_clocks(
            ingress,
            doc,
            &pid,
            old_mcp.as_deref(),
            new_mcp,
            occurred,
            &open_clocks,
        ));
    }
    Ok((derived, patient_locks))
}

/// The county's Notice of Action before a plan starts (Guide for CWS, the
/// plan-choice step: the eligibility worker sends it at least 10 days
/// before benefit activation). An enrollment with a plan other than the
/// member's current one whose `effectiveOn` is later than the event's local
/// date opens the `notice-of-action` clock of `Patient/{id}`, due the end
/// of the day 10 days before `effectiveOn`; `noticeOfActionSentOn` meets
/// the open one (at the end of that day, never later than the event).
/// `open` are the patient's open clocks.
fn notice_of_action_clocks(
    ingress: &Ingress,
    doc: &Value,
    pid: &str,
    old_mcp: Option<&str>,
    new_mcp: Option<&str>,
    occurred: DateTime<Utc>,
    open: &[store::ClockRow],
) -> Vec<store::ClockRow> {
    let date =
        |ptr: &str| s(doc, ptr).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    let kind = program::Clock::NoticeOfAction.code();
    let mut rows: Vec<store::ClockRow> = open.iter().filter(|c| c.kind == kind).cloned().collect();
    let mut out = Vec::new();
    let effective = date("/enrollment/effectiveOn");
    let today = program::pacific::local_date(occurred);
    if let (Some(new), Some(eff)) = (new_mcp, effective) {
        let changed = old_mcp != Some(new);
        if changed && eff > today && rows.is_empty() {
            // Started at the first instant of the plan's first day; the
            // rule counts back 10 days from that local date.
            let start = eff
                .pred_opt()
                .map(program::pacific::end_of_local_day)
                .map_or(occurred, |t| t + chrono::Duration::seconds(1));
            let row = deadlines::open(
                &deadlines::ClockSpec {
                    clock: program::Clock::NoticeOfAction,
                    patient_id: pid.to_string(),
                    subject: format!("Patient/{pid}"),
                    start,
                    expedited: false,
                },
                &ingress.calendar,
            );
            rows.push(row.clone());
            out.push(row);
        }
    }
    if let Some(sent) = date("/enrollment/noticeOfActionSentOn") {
        let at = program::pacific::end_of_local_day(sent).min(occurred);
        for c in &rows {
            if let Some(met) = deadlines::close(c, at) {
                out.retain(|o: &store::ClockRow| o.id != met.id);
                out.push(met);
            }
        }
    }
    out
}

/// The handler.
pub async fn post_event(
    State(state): State<Core>,
    State(ingress): State<Arc<Ingress>>,
    cert: ClientCert,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers, &cert, &[OrgKind::County])?;
    let bytes = body.map_err(|r| body_rejection(r, state.cfg.server.max_body_bytes))?;
    let doc = parse_json(&bytes)?;
    let etype = ingress.schemas.validate_event(&doc)?;
    let org = state
        .cfg
        .organization(&caller.org_id)
        .filter(|o| o.kind == OrgKind::County)
        .ok_or_else(|| ApiError::Denied("the caller is not a configured county".into()))?;
    let own = org.county.clone().unwrap_or_default();
    if !own.eq_ignore_ascii_case(s(&doc, "/county").unwrap_or("").trim()) {
        return Err(ApiError::Denied(
            "the event's county is not the caller organization's county".into(),
        ));
    }
    let store = state.store.as_ref();
    precheck(&ingress, store, &doc, etype, &org.id).await?;
    let event_id = s(&doc, "/eventId").unwrap_or("");
    let appended = journal::append(
        store,
        NewInput {
            kind: InputKind::CaseEvent,
            source_org: org.id.clone(),
            dedup_key: format!("{own}|{event_id}"),
            received_at: Utc::now(),
            raw: bytes.to_vec(),
            meta: json!({"type": etype}),
        },
    )
    .await?;
    let journal_id = appended.id();
    let processed = appended.processed();
    let (doc, status) = match appended {
        Appended::Fresh(_) => (doc, StatusCode::ACCEPTED),
        Appended::Replay { raw, .. } => (parse_json(&raw)?, StatusCode::OK),
    };
    let (derived, _patient_locks) = match derive_locked(&ingress, store, &doc, &org.id).await {
        Ok(w) => w,
        Err(e) => {
            if !processed {
                let _ = store.fail(journal_id, "derive-failed").await;
            }
            return Err(e);
        }
    };
    let stored = journal::settle(ingress.routing.get(), store, journal_id, derived).await?;
    tracing::info!(
        journal_id,
        r#type = etype,
        resources = stored.len(),
        replay = processed,
        "case event"
    );
    let visible: Vec<Value> = stored.into_iter().filter(|r| !is_internal(r)).collect();
    Ok(fhir_json(
        status,
        &collection(&visible, &state.cfg.server.canonical_base),
    ))
}

/// Case events re-derived from the journal after a crash.
pub struct CaseEvents(pub Arc<Ingress>);

#[async_trait::async_trait]
impl journal::Source for CaseEvents {
    fn kind(&self) -> InputKind {
        InputKind::CaseEvent
    }

    async fn recover(&self, store: &dyn Store, rec: &store::JournalRecord) -> Result<(), ApiError> {
        let doc = parse_json(&rec.raw)?;
        // The Patients' locks are held until the commit.
        let (d, _locks) = derive_locked(&self.0, store, &doc, &rec.source_org).await?;
        journal::settle(self.0.routing.get(), store, rec.id, d).await?;
        Ok(())
    }
}

/// `cws-gateway translate --kind case-event`: validate and translate one
/// event without a store (no Patient index, no merge with stored data, no
/// facts): the mapping's transaction Bundle plus the Organizations it names.
pub fn translate_offline(ingress: &Ingress, doc: &Value) -> Result<Value, ApiError> {
    ingress.schemas.validate_event(doc)?;
    let cfg = &ingress.cfg;
    let county_name = s(doc, "/county").unwrap_or("");
    let org = orgs::county_org(cfg, county_name).ok_or_else(|| {
        ApiError::rule(
            "no configured county organization for this county",
            Some("county"),
        )
    })?;
    let occurred = occurred_at(doc)?;
    let occurred_s = occurred.to_rfc3339_opts(SecondsFormat::Secs, true);
    let client_id = s(doc, "/child/clientId").unwrap_or("");
    let cin = s(doc, "/child/cin").or_else(|| s(doc, "/enrollment/cin"));
    let pid = match cin {
        Some(c) => patients::cin_patient_id(c),
        None => patients::county_patient_id(&org.id, client_id),
    };
    let enriched = enrich(cfg, doc, &org.id, &pid, occurred, None);
    let ctx = mapping::JsonContext {
        canonical_base: &cfg.server.canonical_base,
        source_org_id: &org.id,
        source_org_name: &org.name,
        received_at: &occurred_s,
    };
    ingress
        .engine
        .translate_json(MAPPING_ID, &enriched, &ctx)
        .map_err(|e| {
            ApiError::Internal(format!(
                "translation failed: {} at {}",
                e.code,
                e.location.unwrap_or_default()
            ))
        })
}
