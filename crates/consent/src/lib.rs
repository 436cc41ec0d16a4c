//! # cwsgw-consent: a pure, deny-by-default consent policy engine
//!
//! The gateway asks this crate one question at every exit — outbox before each
//! delivery attempt, FHIR read, FHIR search — *may this resource go to this
//! organization, now, for this purpose?* — and gets back a [`Decision`]: the
//! effect, the deciding rule and consent, a stable reason code, obligations
//! (mask these elements, attach the Part 2 no-redisclosure notice) and every
//! rule's vote, for the audit trail and for [`Policy::explain`].
//!
//! ## Design
//! - **Rules are data.** `conformance/consent-policies/default.yaml` holds the
//!   rules (R0–R8) with their citations; [`Policy::from_yaml`] validates a
//!   policy (unknown keys rejected, sizes bounded) and the engine interprets
//!   it. [`Policy::default_policy`] embeds the shipped file.
//! - **Decide, then mask** (the HAPI FHIR consent model). Each rule votes
//!   Permit, Deny or Abstain. Any Deny vetoes; a Permit needs at least one
//!   Permit; when all abstain the default rule (R1) denies. Masking is an
//!   obligation returned with a Permit, never a reason to deny (R7).
//! - **Pure.** No IO, no clock: the caller passes `ctx.now`, the consents and
//!   the policy text. The same inputs always give the same decision, whatever
//!   the order of the consents.
//! - **No PHI.** Inputs are ids, codes and flags; errors and reasons carry ids,
//!   codes and counts only.
//!
//! ## Architecture invariants
//! - **Nothing is permitted without a permitting rule and no veto.**
//! - **A consent counts only while active at `ctx.now`**: started, not
//!   expired, not withdrawn (withdrawn at or before now counts for nothing),
//!   and of the same patient. Withdrawal therefore stops queued deliveries as
//!   soon as the outbox re-decides before its next attempt.
//! - **Substance use records (42 CFR Part 2) leave only under a `part2_written`
//!   consent naming the recipient**, and carry [`Obligation::NoRedisclosureNotice`].
//! - **Security labels are honoured as given**: matched case-insensitively,
//!   never dropped; too many labels or consents is a Deny, not a partial look.
//!
//! The grantor table (who may grant which category at which age) is checked
//! separately by [`validate_grantor`] when a consent is recorded.
//!
//! ## Example
//! ```
//! use chrono::{TimeZone, Utc};
//! use cwsgw_consent::*;
//!
//! let now = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
//! let ecm = Recipient {
//!     org_id: "ecm-compass".into(),
//!     kind: OrgKind::EcmProvider,
//!     county: None,
//!     mcp_network: vec!["mcp-a".into()],
//! };
//! let referral = ResourceFacts {
//!     resource_type: "ServiceRequest".into(),
//!     id: "sr-1".into(),
//!     patient_id: "pat-1".into(),
//!     labels: vec![],
//!     category: None,
//!     referral_package: true,
//!     status_only: false,
//!     contains_placement_address: false,
//!     referral: Some(ReferralFacts {
//!         referrer: Some("county-fresno".into()),
//!         self_referral: false,
//!         made_to: vec!["mcp-a".into()],
//!         former_owners: vec![],
//!     }),
//!     consent_recipients: vec![],
//! };
//! let consent = ConsentRecord {
//!     id: "c-ref".into(),
//!     kind: ConsentKind::ReferralVerbal,
//!     patient_id: "pat-1".into(),
//!     grantor_role: GrantorRole::Youth,
//!     recipients: vec!["ecm-compass".into()],
//!     categories: vec![Category::Referral],
//!     start: now - chrono::Duration::days(1),
//!     end: None,
//!     withdrawn_at: None,
//!     recorded_at: now - chrono::Duration::days(1),
//! };
//! let ctx = Context {
//!     now,
//!     purpose: Purpose::Referral,
//!     assigned_ecm: None,
//!     member_mcp: Some("mcp-a".into()),
//!     self_referral_to: vec![],
//!     source_county: Some("Fresno".into()),
//!     family_maintenance: false,
//!     case_open: true,
//! };
//! let policy = Policy::default_policy();
//! let d = policy.decide(&referral, &ecm, std::slice::from_ref(&consent), &ctx);
//! assert_eq!((d.effect, d.rule.as_str()), (Effect::Permit, "R2"));
//! assert_eq!(d.consent_id.as_deref(), Some("c-ref"));
//!
//! // Withdrawn now: the same delivery, re-decided before its next attempt, is refused.
//! let withdrawn = ConsentRecord { withdrawn_at: Some(now), ..consent };
//! let d = policy.decide(&referral, &ecm, &[withdrawn], &ctx);
//! assert_eq!((d.effect, d.reason.as_str()), (Effect::Deny, "deny.no-consent"));
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod decision;
pub mod engine;
pub mod error;
pub mod grantor;
pub mod model;
pub mod spec;

pub use decision::{
    CategoryExplanation, Change, ConsentSuggestion, Decision, Effect, Explanation, Obligation,
    Vote, VoteValue,
};
pub use engine::{Policy, ViewGrant, MAX_CONSENTS, MAX_LABELS, REASON_INPUT_LIMIT};
pub use error::{AgeBand, GrantorError, PolicyError};
pub use grantor::{age_band, validate_grantor, GRANTOR_TABLE};
pub use model::{
    Category, ConsentKind, ConsentRecord, Context, GrantorRole, Label, OrgKind, Purpose, Recipient,
    ReferralFacts, ResourceFacts,
};
pub use spec::Answer;
