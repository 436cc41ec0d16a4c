//! The policy file format (`conformance/consent-policies/*.yaml`) and its
//! validation.
//!
//! A policy is data: a default rule (R1), a validity section (R8) and an
//! ordered list of rules. Each rule has a `when` selector (which disclosures
//! it speaks about), an optional `requires` list of alternatives (a consent or
//! a context flag; any one suffices), and the vote it casts when the
//! requirement is met (`then`) or not (`otherwise`). Unknown keys are
//! rejected, and sizes are bounded so a policy cannot make the engine slow.

use serde::Deserialize;

use crate::error::PolicyError;
use crate::model::{Category, ConsentKind, GrantorRole, OrgKind, Purpose};

/// Largest policy text accepted.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
/// Most rules in a policy.
pub const MAX_RULES: usize = 128;
/// Most entries in any list inside a rule.
pub const MAX_LIST: usize = 64;
/// Deepest nesting of `any_of` selectors.
pub const MAX_SELECTOR_DEPTH: usize = 4;
/// Longest id, reason or path string.
pub const MAX_CODE_LEN: usize = 128;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    pub id: String,
    pub version: String,
    #[serde(default)]
    #[allow(dead_code)]
    pub description: String,
    pub default: DefaultRule,
    pub validity: Validity,
    pub rules: Vec<RuleSpec>,
    /// Answers a recipient sees whole (see [`ViewSpec`]); none by default.
    #[serde(default)]
    pub views: Vec<ViewSpec>,
}

/// A derived answer (not a stored resource) that the recipients a row
/// names see whole, e.g. the child's county and the ECM eligibility
/// answer. Whoever no row names gets what the rules decide record by
/// record. `when` may only speak about the recipient and the member's
/// context (`recipient_kinds`, `except_recipient_kinds`, `relations`,
/// `except_relations`, `family_maintenance`): a view is about no single
/// resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ViewSpec {
    pub id: String,
    #[allow(dead_code)]
    pub description: String,
    #[serde(default)]
    pub cites: Vec<String>,
    pub answer: Answer,
    pub when: Selector,
    /// A `permit.` reason code, which the caller audits.
    pub reason: String,
}

/// The derived answers a view can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// `GET /cws/eligibility/{patient}`: the ECM eligibility evaluation of
    /// a child, with the case, placement and aid-code facts behind each
    /// reason.
    Eligibility,
}

/// R1: the outcome when every rule abstains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultRule {
    pub rule: String,
    #[allow(dead_code)]
    pub description: String,
    #[serde(default)]
    #[allow(dead_code)]
    pub cites: Vec<String>,
    pub reason: String,
}

/// R8: when a consent counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Validity {
    pub rule: String,
    #[allow(dead_code)]
    pub description: String,
    #[serde(default)]
    #[allow(dead_code)]
    pub cites: Vec<String>,
    /// `end` is the first instant the consent no longer counts.
    pub end_exclusive: bool,
    /// A consent recorded after `now` does not count (replays are faithful).
    pub require_recorded_before_now: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    pub id: String,
    #[allow(dead_code)]
    pub description: String,
    #[serde(default)]
    pub cites: Vec<String>,
    #[serde(default)]
    pub when: Selector,
    #[serde(default)]
    pub requires: Vec<Alternative>,
    pub then: Outcome,
    #[serde(default)]
    pub otherwise: Option<Outcome>,
}

/// Which disclosures a rule speaks about. Every present field must match;
/// within a list any entry matches; `any_of` needs one matching sub-selector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selector {
    #[serde(default)]
    pub recipient_kinds: Option<Vec<OrgKind>>,
    #[serde(default)]
    pub except_recipient_kinds: Option<Vec<OrgKind>>,
    #[serde(default)]
    pub purposes: Option<Vec<Purpose>>,
    #[serde(default)]
    pub resource_types: Option<Vec<String>>,
    #[serde(default)]
    pub categories: Option<Vec<Category>>,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub referral_package: Option<bool>,
    #[serde(default)]
    pub status_only: Option<bool>,
    #[serde(default)]
    pub contains_placement_address: Option<bool>,
    #[serde(default)]
    pub relations: Option<Vec<Relation>>,
    #[serde(default)]
    pub except_relations: Option<Vec<Relation>>,
    /// The member's case is a Family Maintenance case (`ctx.family_maintenance`).
    #[serde(default)]
    pub family_maintenance: Option<bool>,
    #[serde(default)]
    pub any_of: Option<Vec<Selector>>,
}

/// A relation between the recipient and the disclosure's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Relation {
    /// The recipient made this referral (`res.referral.referrer`: the
    /// requester of this ServiceRequest or Task, not of the member's
    /// latest referral).
    ReferringOrg,
    /// Recipient and counterpart are the member's MCP and its assigned,
    /// contracted ECM provider.
    PlanNetwork,
    /// The recipient is the county that owns the case.
    SameCounty,
    /// The recipient is the county that owns the member's OPEN case
    /// (`SameCounty` while `ctx.case_open`).
    CaseCounty,
    /// The recipient is an ECM provider this referral was moved away from
    /// (`res.referral.former_owners`).
    FormerProvider,
    /// The resource is a Consent naming the recipient
    /// (`res.consent_recipients`).
    NamedInConsent,
}

/// One way to meet a rule's requirement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Alternative {
    #[serde(default)]
    pub consent: Option<ConsentReq>,
    #[serde(default)]
    pub context: Option<ContextFlag>,
    /// Overrides `then.reason` when this alternative is the one met.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An active consent of the patient naming the recipient.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsentReq {
    pub kinds: Vec<ConsentKind>,
    /// The consent must cover the resource's effective category.
    #[serde(default)]
    pub covers_resource_category: bool,
    /// The consent must cover every one of these categories.
    #[serde(default)]
    pub covers: Vec<Category>,
    /// The consent must have been granted by one of these roles (empty: any
    /// grantor the grantor table allows).
    #[serde(default)]
    pub grantor_roles: Vec<GrantorRole>,
}

/// A context fact that meets a requirement without a consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ContextFlag {
    /// A self-referral was made to the recipient: this referral's
    /// (`res.referral`: self-referral and `made_to` names the recipient),
    /// or, for a resource no referral owns, one of the member's
    /// (`ctx.self_referral_to`).
    SelfReferral,
}

/// The vote a rule casts, and obligations it adds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Outcome {
    pub vote: VoteSpec,
    pub reason: String,
    #[serde(default)]
    pub mask: Vec<String>,
    #[serde(default)]
    pub no_redisclosure_notice: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VoteSpec {
    Permit,
    Deny,
    Abstain,
}

fn check_code(what: &str, rule: &str, s: &str) -> Result<(), PolicyError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_CODE_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::Invalid {
            rule: rule.to_string(),
            detail: format!("{what} must be 1..={MAX_CODE_LEN} chars of [A-Za-z0-9._-]"),
        })
    }
}

fn check_len<T>(what: &str, rule: &str, list: &[T]) -> Result<(), PolicyError> {
    if list.len() > MAX_LIST {
        return Err(PolicyError::Invalid {
            rule: rule.to_string(),
            detail: format!("{what} has {} entries, at most {MAX_LIST}", list.len()),
        });
    }
    Ok(())
}

fn check_selector(rule: &str, s: &Selector, depth: usize) -> Result<(), PolicyError> {
    if depth > MAX_SELECTOR_DEPTH {
        return Err(PolicyError::Invalid {
            rule: rule.to_string(),
            detail: format!("any_of nested deeper than {MAX_SELECTOR_DEPTH}"),
        });
    }
    if let Some(v) = &s.recipient_kinds {
        check_len("recipient_kinds", rule, v)?;
    }
    if let Some(v) = &s.except_recipient_kinds {
        check_len("except_recipient_kinds", rule, v)?;
    }
    if let Some(v) = &s.purposes {
        check_len("purposes", rule, v)?;
    }
    if let Some(v) = &s.categories {
        check_len("categories", rule, v)?;
    }
    if let Some(v) = &s.relations {
        check_len("relations", rule, v)?;
    }
    if let Some(v) = &s.except_relations {
        check_len("except_relations", rule, v)?;
    }
    if let Some(v) = &s.resource_types {
        check_len("resource_types", rule, v)?;
        for t in v {
            check_code("resource type", rule, t)?;
        }
    }
    if let Some(v) = &s.labels {
        check_len("labels", rule, v)?;
        for l in v {
            check_code("label", rule, l)?;
        }
    }
    if let Some(v) = &s.any_of {
        check_len("any_of", rule, v)?;
        if v.is_empty() {
            return Err(PolicyError::Invalid {
                rule: rule.to_string(),
                detail: "any_of must not be empty".into(),
            });
        }
        for sub in v {
            check_selector(rule, sub, depth + 1)?;
        }
    }
    Ok(())
}

fn vote_prefix(v: VoteSpec) -> &'static str {
    match v {
        VoteSpec::Permit => "permit.",
        VoteSpec::Deny => "deny.",
        VoteSpec::Abstain => "abstain.",
    }
}

fn check_outcome(rule: &str, o: &Outcome) -> Result<(), PolicyError> {
    check_code("reason", rule, &o.reason)?;
    check_len("mask", rule, &o.mask)?;
    for p in &o.mask {
        check_code("mask path", rule, p)?;
        if !p.contains('.') {
            return Err(PolicyError::Invalid {
                rule: rule.to_string(),
                detail: "mask path must be rooted at a resource type (Type.element)".into(),
            });
        }
    }
    let prefix = vote_prefix(o.vote);
    if !o.reason.starts_with(prefix) {
        return Err(PolicyError::Invalid {
            rule: rule.to_string(),
            detail: format!("reason of a {prefix} vote must start with `{prefix}`"),
        });
    }
    Ok(())
}

impl PolicyFile {
    /// Structural checks serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        check_code("policy id", "-", &self.id)?;
        check_code("policy version", "-", &self.version)?;
        check_code("default rule id", "-", &self.default.rule)?;
        check_code("default reason", &self.default.rule, &self.default.reason)?;
        if !self.default.reason.starts_with("deny.") {
            return Err(PolicyError::Invalid {
                rule: self.default.rule.clone(),
                detail: "the default rule must deny (deny by default)".into(),
            });
        }
        check_code("validity rule id", "-", &self.validity.rule)?;
        if self.rules.len() > MAX_RULES {
            return Err(PolicyError::Invalid {
                rule: "-".into(),
                detail: format!("{} rules, at most {MAX_RULES}", self.rules.len()),
            });
        }
        let mut seen: Vec<&str> = vec![self.default.rule.as_str(), self.validity.rule.as_str()];
        for r in &self.rules {
            check_code("rule id", "-", &r.id)?;
            if seen.contains(&r.id.as_str()) {
                return Err(PolicyError::Invalid {
                    rule: r.id.clone(),
                    detail: "duplicate rule id".into(),
                });
            }
            seen.push(&r.id);
            check_len("cites", &r.id, &r.cites)?;
            check_selector(&r.id, &r.when, 0)?;
            check_len("requires", &r.id, &r.requires)?;
            for alt in &r.requires {
                match (&alt.consent, &alt.context) {
                    (Some(c), None) => {
                        check_len("kinds", &r.id, &c.kinds)?;
                        check_len("covers", &r.id, &c.covers)?;
                        check_len("grantor_roles", &r.id, &c.grantor_roles)?;
                        if c.kinds.is_empty() {
                            return Err(PolicyError::Invalid {
                                rule: r.id.clone(),
                                detail: "a consent requirement needs at least one kind".into(),
                            });
                        }
                    }
                    (None, Some(_)) => {}
                    _ => {
                        return Err(PolicyError::Invalid {
                            rule: r.id.clone(),
                            detail: "each requires entry needs exactly one of consent, context"
                                .into(),
                        })
                    }
                }
                if let Some(reason) = &alt.reason {
                    check_code("reason", &r.id, reason)?;
                    let prefix = vote_prefix(r.then.vote);
                    if !reason.starts_with(prefix) {
                        return Err(PolicyError::Invalid {
                            rule: r.id.clone(),
                            detail: format!("alternative reason must start with `{prefix}`"),
                        });
                    }
                }
            }
            check_outcome(&r.id, &r.then)?;
            match &r.otherwise {
                Some(o) => check_outcome(&r.id, o)?,
                None if !r.requires.is_empty() => {
                    return Err(PolicyError::Invalid {
                        rule: r.id.clone(),
                        detail: "a rule with requires needs an otherwise outcome".into(),
                    })
                }
                None => {}
            }
        }
        check_len("views", "-", &self.views)?;
        for v in &self.views {
            check_code("view id", "-", &v.id)?;
            if seen.contains(&v.id.as_str()) {
                return Err(PolicyError::Invalid {
                    rule: v.id.clone(),
                    detail: "duplicate rule id".into(),
                });
            }
            seen.push(&v.id);
            check_len("cites", &v.id, &v.cites)?;
            check_selector(&v.id, &v.when, 0)?;
            let w = &v.when;
            if w.purposes.is_some()
                || w.resource_types.is_some()
                || w.categories.is_some()
                || w.labels.is_some()
                || w.referral_package.is_some()
                || w.status_only.is_some()
                || w.contains_placement_address.is_some()
                || w.any_of.is_some()
            {
                return Err(PolicyError::Invalid {
                    rule: v.id.clone(),
                    detail: "a view's when may name only recipient_kinds, except_recipient_kinds, relations, except_relations and family_maintenance".into(),
                });
            }
            check_code("reason", &v.id, &v.reason)?;
            if !v.reason.starts_with("permit.") {
                return Err(PolicyError::Invalid {
                    rule: v.id.clone(),
                    detail: "a view's reason must start with `permit.`".into(),
                });
            }
        }
        Ok(())
    }
}
