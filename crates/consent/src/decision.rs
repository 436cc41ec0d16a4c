//! The decision record: the outcome, the rule and consent behind it, the
//! obligations the caller must apply, and every rule's vote.

use serde::{Deserialize, Serialize};

use crate::model::{Category, ConsentKind, Purpose};

/// The final outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// The resource may be disclosed (after applying the obligations).
    Permit,
    /// The resource must not be disclosed.
    Deny,
}

/// One rule's three-valued vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteValue {
    /// The rule authorizes the disclosure.
    Permit,
    /// The rule forbids it; any Deny vetoes.
    Deny,
    /// The rule has nothing to say.
    Abstain,
}

/// A rule's vote and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Rule id (`R2`, `R6-part2` …).
    pub rule: String,
    /// The vote.
    pub value: VoteValue,
    /// Stable reason code (`permit.referral-consent`, `abstain.not-applicable` …).
    pub reason: String,
    /// The consent the vote relied on, if any.
    pub consent_id: Option<String>,
}

/// Something the caller must do when disclosing under a Permit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Obligation {
    /// Remove the element at this FHIRPath-like path (`Patient.address`)
    /// before disclosure. Paths are rooted at a resource type; the caller
    /// applies those rooted at the disclosed resource's type.
    Mask {
        /// The element path.
        path: String,
    },
    /// Attach the 42 CFR 2.32 notice prohibiting redisclosure, with the
    /// consent's scope (2024 Part 2 rule).
    NoRedisclosureNotice,
}

/// The result of [`crate::Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Permit or Deny.
    pub effect: Effect,
    /// The deciding rule: the first vetoing rule, else the first permitting
    /// rule, else the default rule (`R1`).
    pub rule: String,
    /// The consent the deciding rule relied on, if any.
    pub consent_id: Option<String>,
    /// Stable reason code of the deciding vote.
    pub reason: String,
    /// Obligations to apply; always empty on Deny.
    pub obligations: Vec<Obligation>,
    /// Every rule's vote, in policy order (the `R8` validity vote first).
    pub votes: Vec<Vote>,
}

impl Decision {
    /// Whether the decision permits the disclosure.
    pub fn is_permit(&self) -> bool {
        self.effect == Effect::Permit
    }

    /// Every consent any vote relied on (the permitting consent, a Part 2
    /// consent that lifted a veto …), sorted and deduplicated — what the audit
    /// record of a disclosure should list.
    pub fn consent_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .votes
            .iter()
            .filter_map(|v| v.consent_id.as_deref())
            .chain(self.consent_id.as_deref())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// A consent that is not on file and would be needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentSuggestion {
    /// Kind of consent.
    pub kind: ConsentKind,
    /// Categories it would have to cover.
    pub categories: Vec<Category>,
}

/// What would change a category's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Recording these consents, naming the recipient, would permit.
    GrantConsents {
        /// The consents needed together.
        consents: Vec<ConsentSuggestion>,
    },
    /// Withdrawing this consent would stop the sharing.
    WithdrawConsent {
        /// Consent id.
        consent_id: String,
    },
    /// No consent changes the outcome (operator access, plan-network rule, or
    /// a recipient no consent can open).
    NotByConsent,
}

/// One category's line in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryExplanation {
    /// The category.
    pub category: Category,
    /// Outcome for a representative resource of this category.
    pub effect: Effect,
    /// Deciding rule.
    pub rule: String,
    /// Reason code.
    pub reason: String,
    /// Consent relied on, if any.
    pub consent_id: Option<String>,
    /// Obligations that would apply.
    pub obligations: Vec<Obligation>,
    /// What would change the outcome.
    pub change: Change,
}

/// The result of [`crate::Policy::explain`]: per category, what a recipient
/// may receive about a patient now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The patient.
    pub patient_id: String,
    /// The recipient organization.
    pub recipient: String,
    /// The purpose evaluated.
    pub purpose: Purpose,
    /// One line per category, in [`Category::ALL`] order.
    pub categories: Vec<CategoryExplanation>,
}
