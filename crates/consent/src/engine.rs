//! The interpreter: evaluates a [`Policy`] over one disclosure.
//!
//! **Invariant: deny by default.** A Permit needs at least one rule voting
//! Permit and no rule voting Deny; when every rule abstains the default rule
//! (R1) denies. Obligations are returned only with a Permit.
//!
//! **Invariant: consents count only while active at `ctx.now`** (R8): of the
//! patient, started, not ended, not withdrawn, recorded. An inactive consent
//! is indistinguishable from an absent one.
//!
//! **Invariant: deterministic.** The decision depends on the set of consents,
//! not their order: when several consents satisfy a requirement, the most
//! recently recorded one is cited (ties broken by id).

use std::collections::BTreeSet;

use crate::decision::{
    CategoryExplanation, Change, ConsentSuggestion, Decision, Effect, Explanation, Obligation,
    Vote, VoteValue,
};
use crate::error::PolicyError;
use crate::model::{
    Category, ConsentKind, ConsentRecord, Context, GrantorRole, OrgKind, Recipient, ResourceFacts,
};
use crate::spec::{
    Alternative, Answer, ConsentReq, ContextFlag, DefaultRule, Outcome, PolicyFile, Relation,
    RuleSpec, Selector, Validity, VoteSpec, MAX_POLICY_BYTES,
};

/// A view row that lets a recipient see a derived answer whole
/// ([`Policy::whole_view`]): its id and reason code, for the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewGrant {
    pub rule: String,
    pub reason: String,
}

/// The default policy, embedded at build time.
const DEFAULT_POLICY_YAML: &str =
    include_str!("../../../conformance/consent-policies/default.yaml");

/// Most security labels on one resource the engine will look at; more is
/// refused (Deny) rather than partly ignored.
pub const MAX_LABELS: usize = 64;
/// Most consent records per decision; more is refused (Deny).
pub const MAX_CONSENTS: usize = 4096;

/// Reason code when an input exceeds the engine's limits.
pub const REASON_INPUT_LIMIT: &str = "deny.input-limit";

/// A validated consent policy. Cheap to clone; immutable.
#[derive(Debug, Clone)]
pub struct Policy {
    file: PolicyFile,
}

/// A rule's evaluation before combination.
struct Eval {
    vote: Vote,
    obligations: Vec<Obligation>,
}

impl Policy {
    /// Parses and validates a policy. Unknown keys, duplicate ids, oversize
    /// lists and a non-denying default are errors.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                bytes: text.len(),
                max: MAX_POLICY_BYTES,
            });
        }
        let file: PolicyFile =
            serde_yaml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        file.validate()?;
        Ok(Policy { file })
    }

    /// The shipped policy (`conformance/consent-policies/default.yaml`).
    /// If it ever failed to load, the result denies everything.
    pub fn default_policy() -> Policy {
        Policy::from_yaml(DEFAULT_POLICY_YAML).unwrap_or_else(|_| Policy::deny_all())
    }

    /// The embedded default policy text.
    pub fn default_policy_text() -> &'static str {
        DEFAULT_POLICY_YAML
    }

    /// A policy with no rules: every decision is Deny by R1.
    pub fn deny_all() -> Policy {
        Policy {
            file: PolicyFile {
                id: "deny-all".into(),
                version: "0".into(),
                description: String::new(),
                default: DefaultRule {
                    rule: "R1".into(),
                    description: "deny by default".into(),
                    cites: Vec::new(),
                    reason: "deny.no-consent".into(),
                },
                validity: Validity {
                    rule: "R8".into(),
                    description: String::new(),
                    cites: Vec::new(),
                    end_exclusive: true,
                    require_recorded_before_now: true,
                },
                rules: Vec::new(),
                views: Vec::new(),
            },
        }
    }

    /// Does a view row of the policy let `to` see `answer` about the
    /// member of `ctx` whole? The first matching row's id and reason (for
    /// the audit); `None` when no row names `to`, and the caller decides
    /// the answer's parts record by record.
    pub fn whole_view(
        &self,
        answer: Answer,
        patient_id: &str,
        to: &Recipient,
        ctx: &Context,
    ) -> Option<ViewGrant> {
        // Views are about no single resource: the selector sees the
        // recipient and the context only (validation forbids the rest).
        let res = ResourceFacts {
            resource_type: String::new(),
            id: String::new(),
            patient_id: patient_id.to_string(),
            labels: Vec::new(),
            category: Some(Category::Case),
            referral_package: false,
            status_only: false,
            contains_placement_address: false,
            referral: None,
            consent_recipients: Vec::new(),
        };
        let labels = BTreeSet::new();
        let facts = Facts {
            res: &res,
            to,
            ctx,
            labels: &labels,
            category: Category::Case,
        };
        self.file
            .views
            .iter()
            .find(|v| v.answer == answer && selector_matches(&v.when, &facts))
            .map(|v| ViewGrant {
                rule: v.id.clone(),
                reason: v.reason.clone(),
            })
    }

    /// Policy id.
    pub fn id(&self) -> &str {
        &self.file.id
    }

    /// Policy version.
    pub fn version(&self) -> &str {
        &self.file.version
    }

    /// Rule ids in evaluation order (the default rule last).
    pub fn rule_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = vec![self.file.validity.rule.as_str()];
        ids.extend(self.file.rules.iter().map(|r| r.id.as_str()));
        ids.push(self.file.default.rule.as_str());
        ids
    }

    /// Citations (law, seed section) of a rule, for audit and docs.
    pub fn citations(&self, rule_id: &str) -> Vec<&str> {
        if rule_id == self.file.default.rule {
            return self.file.default.cites.iter().map(String::as_str).collect();
        }
        if rule_id == self.file.validity.rule {
            return self
                .file
                .validity
                .cites
                .iter()
                .map(String::as_str)
                .collect();
        }
        self.file
            .rules
            .iter()
            .find(|r| r.id == rule_id)
            .map(|r| r.cites.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Whether `c` counts at `ctx.now` (R8).
    pub fn consent_active(&self, c: &ConsentRecord, ctx: &Context) -> bool {
        let v = &self.file.validity;
        let now = ctx.now;
        if c.start > now {
            return false;
        }
        if v.require_recorded_before_now && c.recorded_at > now {
            return false;
        }
        if let Some(end) = c.end {
            let expired = if v.end_exclusive {
                now >= end
            } else {
                now > end
            };
            if expired {
                return false;
            }
        }
        match c.withdrawn_at {
            Some(w) => now < w,
            None => true,
        }
    }

    /// Decides whether `res` may be disclosed to `to` now.
    pub fn decide(
        &self,
        res: &ResourceFacts,
        to: &Recipient,
        consents: &[ConsentRecord],
        ctx: &Context,
    ) -> Decision {
        let default = &self.file.default;
        if res.labels.len() > MAX_LABELS || consents.len() > MAX_CONSENTS {
            return Decision {
                effect: Effect::Deny,
                rule: default.rule.clone(),
                consent_id: None,
                reason: REASON_INPUT_LIMIT.into(),
                obligations: Vec::new(),
                votes: Vec::new(),
            };
        }

        let of_patient: Vec<&ConsentRecord> = consents
            .iter()
            .filter(|c| c.patient_id == res.patient_id)
            .collect();
        let active: Vec<&ConsentRecord> = of_patient
            .iter()
            .copied()
            .filter(|c| self.consent_active(c, ctx))
            .collect();
        let labels: BTreeSet<String> = res
            .labels
            .iter()
            .map(|l| l.trim().to_ascii_uppercase())
            .collect();
        let category = res.effective_category();

        let mut votes = Vec::with_capacity(self.file.rules.len() + 1);
        votes.push(Vote {
            rule: self.file.validity.rule.clone(),
            value: VoteValue::Abstain,
            reason: if active.len() == of_patient.len() {
                "abstain.all-consents-active".into()
            } else {
                "abstain.inactive-consents-ignored".into()
            },
            consent_id: None,
        });
        let mut obligations: BTreeSet<Obligation> = BTreeSet::new();
        let facts = Facts {
            res,
            to,
            ctx,
            labels: &labels,
            category,
        };
        for rule in &self.file.rules {
            let eval = evaluate(rule, &facts, &active);
            obligations.extend(eval.obligations);
            votes.push(eval.vote);
        }

        let deciding = votes
            .iter()
            .find(|v| v.value == VoteValue::Deny)
            .or_else(|| votes.iter().find(|v| v.value == VoteValue::Permit));
        match deciding {
            Some(v) if v.value == VoteValue::Permit => Decision {
                effect: Effect::Permit,
                rule: v.rule.clone(),
                consent_id: v.consent_id.clone(),
                reason: v.reason.clone(),
                obligations: obligations.into_iter().collect(),
                votes,
            },
            Some(v) => Decision {
                effect: Effect::Deny,
                rule: v.rule.clone(),
                consent_id: v.consent_id.clone(),
                reason: v.reason.clone(),
                obligations: Vec::new(),
                votes,
            },
            None => Decision {
                effect: Effect::Deny,
                rule: default.rule.clone(),
                consent_id: None,
                reason: default.reason.clone(),
                obligations: Vec::new(),
                votes,
            },
        }
    }

    /// Per category: may `to` receive this patient's information now, under
    /// which rule or consent, and what consent would change that.
    pub fn explain(
        &self,
        patient_id: &str,
        to: &Recipient,
        consents: &[ConsentRecord],
        ctx: &Context,
    ) -> Explanation {
        let categories = Category::ALL
            .iter()
            .map(|&cat| self.explain_category(patient_id, cat, to, consents, ctx))
            .collect();
        Explanation {
            patient_id: patient_id.to_string(),
            recipient: to.org_id.clone(),
            purpose: ctx.purpose,
            categories,
        }
    }

    fn explain_category(
        &self,
        patient_id: &str,
        category: Category,
        to: &Recipient,
        consents: &[ConsentRecord],
        ctx: &Context,
    ) -> CategoryExplanation {
        let res = representative(patient_id, category);
        let d = self.decide(&res, to, consents, ctx);
        let change = match d.effect {
            Effect::Permit => match &d.consent_id {
                Some(id) if self.withdrawal_denies(id, &res, to, consents, ctx) => {
                    Change::WithdrawConsent {
                        consent_id: id.clone(),
                    }
                }
                _ => Change::NotByConsent,
            },
            Effect::Deny => self.needed_consents(&res, to, consents, ctx),
        };
        CategoryExplanation {
            category,
            effect: d.effect,
            rule: d.rule,
            reason: d.reason,
            consent_id: d.consent_id,
            obligations: d.obligations,
            change,
        }
    }

    fn withdrawal_denies(
        &self,
        id: &str,
        res: &ResourceFacts,
        to: &Recipient,
        consents: &[ConsentRecord],
        ctx: &Context,
    ) -> bool {
        let rest: Vec<ConsentRecord> = consents.iter().filter(|c| c.id != id).cloned().collect();
        !self.decide(res, to, &rest, ctx).is_permit()
    }

    /// The smallest set of new consents (each naming the recipient, covering
    /// the category, active now) that would permit, trying one kind, then
    /// pairs, then all three.
    fn needed_consents(
        &self,
        res: &ResourceFacts,
        to: &Recipient,
        consents: &[ConsentRecord],
        ctx: &Context,
    ) -> Change {
        let kinds = ConsentKind::ALL;
        let mut sets: Vec<Vec<ConsentKind>> = kinds.iter().map(|&k| vec![k]).collect();
        for i in 0..kinds.len() {
            for j in (i + 1)..kinds.len() {
                sets.push(vec![kinds[i], kinds[j]]);
            }
        }
        sets.push(kinds.to_vec());
        let category = res.effective_category();
        for set in sets {
            let suggestions: Vec<ConsentSuggestion> = set
                .iter()
                .map(|&kind| {
                    let mut cats = vec![category];
                    if kind == ConsentKind::Part2Written && category != Category::SubstanceUse {
                        cats.push(Category::SubstanceUse);
                    }
                    ConsentSuggestion {
                        kind,
                        categories: cats,
                    }
                })
                .collect();
            let mut with: Vec<ConsentRecord> = consents.to_vec();
            for (n, s) in suggestions.iter().enumerate() {
                with.push(ConsentRecord {
                    id: format!("hypothetical-{n}"),
                    kind: s.kind,
                    patient_id: res.patient_id.clone(),
                    grantor_role: GrantorRole::Youth,
                    recipients: vec![to.org_id.clone()],
                    categories: s.categories.clone(),
                    start: ctx.now,
                    end: None,
                    withdrawn_at: None,
                    recorded_at: ctx.now,
                });
            }
            if self.decide(res, to, &with, ctx).is_permit() {
                return Change::GrantConsents {
                    consents: suggestions,
                };
            }
        }
        Change::NotByConsent
    }
}

/// A representative resource of a category, for [`Policy::explain`].
fn representative(patient_id: &str, category: Category) -> ResourceFacts {
    let (resource_type, referral_package, placement) = match category {
        Category::Referral => ("ServiceRequest", true, false),
        Category::Case => ("EpisodeOfCare", false, false),
        Category::Placement => ("Patient", false, true),
        Category::Health | Category::BehavioralHealth | Category::SubstanceUse => {
            ("Encounter", false, false)
        }
        Category::Hiv => ("Observation", false, false),
        Category::Reproductive => ("Condition", false, false),
    };
    ResourceFacts {
        resource_type: resource_type.into(),
        id: format!("explain-{}", category.code()),
        patient_id: patient_id.to_string(),
        labels: Vec::new(),
        category: Some(category),
        referral_package,
        status_only: false,
        contains_placement_address: placement,
        referral: None,
        consent_recipients: Vec::new(),
    }
}

/// The disclosure as the selectors see it.
struct Facts<'a> {
    res: &'a ResourceFacts,
    to: &'a Recipient,
    ctx: &'a Context,
    labels: &'a BTreeSet<String>,
    category: Category,
}

fn relation_holds(rel: Relation, f: &Facts<'_>) -> bool {
    let to = f.to;
    let ctx = f.ctx;
    match rel {
        // The referrer of this very referral (its ServiceRequest or Task),
        // never "the member's latest referrer".
        Relation::ReferringOrg => f
            .res
            .referral
            .as_ref()
            .and_then(|r| r.referrer.as_deref())
            .is_some_and(|r| r == to.org_id),
        Relation::PlanNetwork => match to.kind {
            OrgKind::EcmProvider => {
                ctx.assigned_ecm.as_deref() == Some(to.org_id.as_str())
                    && ctx
                        .member_mcp
                        .as_ref()
                        .is_some_and(|m| to.mcp_network.iter().any(|n| n == m))
            }
            OrgKind::Mcp => {
                ctx.member_mcp.as_deref() == Some(to.org_id.as_str()) && ctx.assigned_ecm.is_some()
            }
            _ => false,
        },
        Relation::SameCounty => same_county(to, ctx),
        Relation::CaseCounty => ctx.case_open && same_county(to, ctx),
        Relation::NamedInConsent => f.res.consent_recipients.contains(&to.org_id),
        Relation::FormerProvider => {
            to.kind == OrgKind::EcmProvider
                && f.res
                    .referral
                    .as_ref()
                    .is_some_and(|r| r.former_owners.contains(&to.org_id))
        }
    }
}

/// The recipient is the county that owns the member's case.
fn same_county(to: &Recipient, ctx: &Context) -> bool {
    to.kind == OrgKind::County
        && match (&to.county, &ctx.source_county) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
}

fn selector_matches(s: &Selector, f: &Facts<'_>) -> bool {
    if let Some(kinds) = &s.recipient_kinds {
        if !kinds.contains(&f.to.kind) {
            return false;
        }
    }
    if let Some(kinds) = &s.except_recipient_kinds {
        if kinds.contains(&f.to.kind) {
            return false;
        }
    }
    if let Some(p) = &s.purposes {
        if !p.contains(&f.ctx.purpose) {
            return false;
        }
    }
    if let Some(t) = &s.resource_types {
        if !t.contains(&f.res.resource_type) {
            return false;
        }
    }
    if let Some(c) = &s.categories {
        if !c.contains(&f.category) {
            return false;
        }
    }
    if let Some(l) = &s.labels {
        if !l
            .iter()
            .any(|l| f.labels.contains(&l.trim().to_ascii_uppercase()))
        {
            return false;
        }
    }
    if let Some(b) = s.referral_package {
        if f.res.referral_package != b {
            return false;
        }
    }
    if let Some(b) = s.status_only {
        if f.res.status_only != b {
            return false;
        }
    }
    if let Some(b) = s.contains_placement_address {
        if f.res.contains_placement_address != b {
            return false;
        }
    }
    if let Some(r) = &s.relations {
        if !r.iter().any(|&r| relation_holds(r, f)) {
            return false;
        }
    }
    if let Some(r) = &s.except_relations {
        if r.iter().any(|&r| relation_holds(r, f)) {
            return false;
        }
    }
    if let Some(b) = s.family_maintenance {
        if f.ctx.family_maintenance != b {
            return false;
        }
    }
    if let Some(any) = &s.any_of {
        if !any.iter().any(|sub| selector_matches(sub, f)) {
            return false;
        }
    }
    true
}

fn consent_satisfies(req: &ConsentReq, c: &ConsentRecord, f: &Facts<'_>) -> bool {
    req.kinds.contains(&c.kind)
        && c.names(&f.to.org_id)
        && (!req.covers_resource_category || c.covers(f.category))
        && req.covers.iter().all(|&cat| c.covers(cat))
        && (req.grantor_roles.is_empty() || req.grantor_roles.contains(&c.grantor_role))
}

/// The first alternative met, and the consent it relied on.
fn requirement_met<'c>(
    alts: &[Alternative],
    f: &Facts<'_>,
    active: &[&'c ConsentRecord],
) -> Option<(usize, Option<&'c ConsentRecord>)> {
    for (i, alt) in alts.iter().enumerate() {
        if let Some(req) = &alt.consent {
            let best = active
                .iter()
                .copied()
                .filter(|c| consent_satisfies(req, c, f))
                .max_by(|a, b| {
                    a.recorded_at
                        .cmp(&b.recorded_at)
                        .then_with(|| b.id.cmp(&a.id))
                });
            if let Some(c) = best {
                return Some((i, Some(c)));
            }
        }
        if let Some(flag) = alt.context {
            let holds = match flag {
                ContextFlag::SelfReferral => self_referral_to(f),
            };
            if holds {
                return Some((i, None));
            }
        }
    }
    None
}

/// A self-referral was made to the recipient: for a referral's own
/// ServiceRequest or Task, that referral is a self-referral made to it;
/// for anything else (the minimal Patient), some self-referral of the
/// member was made to it.
fn self_referral_to(f: &Facts<'_>) -> bool {
    let to = f.to.org_id.as_str();
    match &f.res.referral {
        Some(r) => r.self_referral && r.made_to.iter().any(|o| o == to),
        None => f.ctx.self_referral_to.iter().any(|o| o == to),
    }
}

fn outcome_obligations(o: &Outcome) -> Vec<Obligation> {
    let mut out: Vec<Obligation> = o
        .mask
        .iter()
        .map(|p| Obligation::Mask { path: p.clone() })
        .collect();
    if o.no_redisclosure_notice {
        out.push(Obligation::NoRedisclosureNotice);
    }
    out
}

fn vote_value(v: VoteSpec) -> VoteValue {
    match v {
        VoteSpec::Permit => VoteValue::Permit,
        VoteSpec::Deny => VoteValue::Deny,
        VoteSpec::Abstain => VoteValue::Abstain,
    }
}

fn evaluate(rule: &RuleSpec, f: &Facts<'_>, active: &[&ConsentRecord]) -> Eval {
    if !selector_matches(&rule.when, f) {
        return Eval {
            vote: Vote {
                rule: rule.id.clone(),
                value: VoteValue::Abstain,
                reason: "abstain.not-applicable".into(),
                consent_id: None,
            },
            obligations: Vec::new(),
        };
    }
    let met = if rule.requires.is_empty() {
        Some((usize::MAX, None))
    } else {
        requirement_met(&rule.requires, f, active)
    };
    match (met, &rule.otherwise) {
        (Some((alt, consent)), _) => {
            let reason = rule
                .requires
                .get(alt)
                .and_then(|a| a.reason.clone())
                .unwrap_or_else(|| rule.then.reason.clone());
            Eval {
                vote: Vote {
                    rule: rule.id.clone(),
                    value: vote_value(rule.then.vote),
                    reason,
                    consent_id: consent.map(|c| c.id.clone()),
                },
                obligations: outcome_obligations(&rule.then),
            }
        }
        (None, Some(o)) => Eval {
            vote: Vote {
                rule: rule.id.clone(),
                value: vote_value(o.vote),
                reason: o.reason.clone(),
                consent_id: None,
            },
            obligations: outcome_obligations(o),
        },
        // Unreachable for a validated policy (requires ⇒ otherwise); abstain.
        (None, None) => Eval {
            vote: Vote {
                rule: rule.id.clone(),
                value: VoteValue::Abstain,
                reason: "abstain.requirement-not-met".into(),
                consent_id: None,
            },
            obligations: Vec::new(),
        },
    }
}
