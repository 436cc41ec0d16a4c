//! Property tests over random consent histories.

use chrono::{DateTime, Duration, TimeZone, Utc};
use cwsgw_consent::*;
use proptest::prelude::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap()
}

const ORGS: [(&str, OrgKind, Option<&str>, &[&str]); 7] = [
    ("county-fresno", OrgKind::County, Some("Fresno"), &[]),
    ("county-kern", OrgKind::County, Some("Kern"), &[]),
    ("mcp-a", OrgKind::Mcp, None, &[]),
    ("mcp-b", OrgKind::Mcp, None, &[]),
    ("ecm-compass", OrgKind::EcmProvider, None, &["mcp-a"]),
    ("ecm-other", OrgKind::EcmProvider, None, &["mcp-b"]),
    ("ops", OrgKind::Operator, None, &[]),
];
/// Orgs that consents may name (not the operator).
const NAMEABLE: usize = 6;

fn recipient(i: usize) -> Recipient {
    let (id, kind, county, net) = ORGS[i % ORGS.len()];
    Recipient {
        org_id: id.into(),
        kind,
        county: county.map(Into::into),
        mcp_network: net.iter().map(|s| s.to_string()).collect(),
    }
}

fn org_id(i: usize) -> String {
    ORGS[i % NAMEABLE].0.to_string()
}

const LABELS: [&str; 8] = ["ETH", "PSY", "MH", "HIV", "SEX", "SDV", "XYZ", "eth"];
const TYPES: [&str; 8] = [
    "Encounter",
    "Task",
    "ServiceRequest",
    "Patient",
    "EpisodeOfCare",
    "CarePlan",
    "Condition",
    "Observation",
];

fn kind_s() -> impl Strategy<Value = ConsentKind> {
    prop::sample::select(ConsentKind::ALL.to_vec())
}
fn cat_s() -> impl Strategy<Value = Category> {
    prop::sample::select(Category::ALL.to_vec())
}
fn purpose_s() -> impl Strategy<Value = Purpose> {
    prop::sample::select(vec![
        Purpose::Referral,
        Purpose::CareCoordination,
        Purpose::Notification,
        Purpose::Pull,
    ])
}
/// An instant within ±100 hours of now, on a 30-minute grid so that exact
/// boundary hits (== now) are common.
fn t_s() -> impl Strategy<Value = DateTime<Utc>> {
    (-200i64..=200).prop_map(|k| now() + Duration::minutes(30 * k))
}

/// Mostly the youth (the generated consents mostly count), sometimes a
/// parent, a legal guardian, the SW or the court.
fn role_s() -> impl Strategy<Value = GrantorRole> {
    prop::sample::select(vec![
        GrantorRole::Youth,
        GrantorRole::Youth,
        GrantorRole::Youth,
        GrantorRole::Nmd,
        GrantorRole::Parent,
        GrantorRole::LegalGuardian,
        GrantorRole::SocialWorker,
        GrantorRole::Court,
    ])
}

fn consent_s(n: usize) -> impl Strategy<Value = ConsentRecord> {
    (
        kind_s(),
        prop::collection::vec(0..NAMEABLE, 0..3),
        prop::collection::vec(cat_s(), 0..4),
        prop::bool::weighted(0.9),
        t_s(),
        prop::option::of(t_s()),
        prop::option::of(t_s()),
        t_s(),
        role_s(),
    )
        .prop_map(
            move |(kind, to, cats, same_patient, start, end, withdrawn, recorded, role)| {
                ConsentRecord {
                    id: format!("c{n}"),
                    kind,
                    patient_id: if same_patient { "pat-1" } else { "pat-2" }.into(),
                    grantor_role: role,
                    recipients: to.into_iter().map(org_id).collect(),
                    categories: cats,
                    start,
                    end,
                    withdrawn_at: withdrawn,
                    recorded_at: recorded.min(start),
                }
            },
        )
}

fn history_s() -> impl Strategy<Value = Vec<ConsentRecord>> {
    (0usize..8).prop_flat_map(|len| {
        (0..len)
            .map(consent_s)
            .collect::<Vec<_>>()
            .prop_map(|v: Vec<ConsentRecord>| v)
    })
}

fn resource_s() -> impl Strategy<Value = ResourceFacts> {
    (
        prop::sample::select(TYPES.to_vec()),
        prop::collection::vec(prop::sample::select(LABELS.to_vec()), 0..3),
        prop::option::of(cat_s()),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(referral_facts_s()),
    )
        .prop_map(
            |(t, labels, category, referral, status, placement, of_referral)| ResourceFacts {
                resource_type: t.into(),
                id: "r-1".into(),
                patient_id: "pat-1".into(),
                labels: labels.into_iter().map(String::from).collect(),
                category,
                referral_package: referral,
                status_only: status,
                contains_placement_address: placement,
                referral: of_referral,
                consent_recipients: Vec::new(),
            },
        )
}

fn referral_facts_s() -> impl Strategy<Value = ReferralFacts> {
    (
        prop::option::of(0..NAMEABLE),
        any::<bool>(),
        prop::collection::vec(0..NAMEABLE, 0..3),
    )
        .prop_map(|(referrer, self_referral, made_to)| ReferralFacts {
            referrer: referrer.map(org_id),
            self_referral,
            made_to: made_to.into_iter().map(org_id).collect(),
            former_owners: vec![],
        })
}

fn ctx_s() -> impl Strategy<Value = Context> {
    (
        purpose_s(),
        prop::collection::vec(0..NAMEABLE, 0..3),
        prop::option::of(prop::sample::select(vec!["ecm-compass", "ecm-other"])),
        prop::option::of(prop::sample::select(vec!["mcp-a", "mcp-b"])),
        prop::option::of(prop::sample::select(vec!["Fresno", "Kern"])),
    )
        .prop_map(|(purpose, self_referral_to, ecm, mcp, county)| Context {
            now: now(),
            purpose,
            assigned_ecm: ecm.map(Into::into),
            member_mcp: mcp.map(Into::into),
            self_referral_to: self_referral_to.into_iter().map(org_id).collect(),
            source_county: county.map(Into::into),
            family_maintenance: false,
            case_open: true,
        })
}

/// The decision without the R8 vote, whose reason counts inactive consents.
fn essence(
    d: &Decision,
) -> (
    Effect,
    String,
    Option<String>,
    String,
    Vec<Obligation>,
    Vec<Vote>,
) {
    (
        d.effect,
        d.rule.clone(),
        d.consent_id.clone(),
        d.reason.clone(),
        d.obligations.clone(),
        d.votes.iter().filter(|v| v.rule != "R8").cloned().collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a) A consent withdrawn at t ≤ now counts for nothing: the decision is
    /// the one made without it — so if it was the only permitting consent,
    /// the decision is Deny.
    #[test]
    fn withdrawal_stops_sharing(
        history in history_s(),
        res in resource_s(),
        to in 0..ORGS.len(),
        ctx in ctx_s(),
        pick in any::<prop::sample::Index>(),
        back in 0i64..=400,
    ) {
        prop_assume!(!history.is_empty());
        let policy = Policy::default_policy();
        let to = recipient(to);
        let i = pick.index(history.len());
        let t = now() - Duration::minutes(30 * back) ;
        let mut withdrawn = history.clone();
        withdrawn[i].withdrawn_at = Some(withdrawn[i].withdrawn_at.map_or(t, |w| w.min(t)));
        let mut without = history.clone();
        without.remove(i);

        let before = policy.decide(&res, &to, &history, &ctx);
        let after = policy.decide(&res, &to, &withdrawn, &ctx);
        let absent = policy.decide(&res, &to, &without, &ctx);
        prop_assert_eq!(essence(&after), essence(&absent));
        if before.consent_id.as_deref() == Some(history[i].id.as_str()) && !absent.is_permit() {
            prop_assert_eq!(after.effect, Effect::Deny);
        }
        prop_assert_ne!(after.consent_id.as_deref(), Some(history[i].id.as_str()));
    }

    /// (b) Only a part2_written consent naming the recipient can lift a
    /// Part 2 veto: adding any other consents never turns it into a permit.
    #[test]
    fn part2_deny_needs_part2_consent(
        history in history_s(),
        extra in history_s(),
        mut res in resource_s(),
        to in 0..NAMEABLE,
        ctx in ctx_s(),
    ) {
        let policy = Policy::default_policy();
        let to = recipient(to);
        res.labels.push("ETH".into());
        let d = policy.decide(&res, &to, &history, &ctx);
        prop_assume!(d.effect == Effect::Deny && d.rule == "R6-part2");
        let mut more = history.clone();
        for (n, mut c) in extra.into_iter().enumerate() {
            c.id = format!("extra-{n}");
            if c.kind == ConsentKind::Part2Written {
                c.recipients.retain(|r| *r != to.org_id);
            }
            more.push(c);
        }
        let d2 = policy.decide(&res, &to, &more, &ctx);
        prop_assert_eq!(d2.effect, Effect::Deny);
        prop_assert_eq!(d2.reason.as_str(), "deny.part2-requires-written-consent");
    }

    /// (c) Decisions are deterministic and independent of consent order.
    #[test]
    fn decisions_are_deterministic(
        history in history_s(),
        res in resource_s(),
        to in 0..ORGS.len(),
        ctx in ctx_s(),
    ) {
        let policy = Policy::default_policy();
        let to = recipient(to);
        let a = policy.decide(&res, &to, &history, &ctx);
        let b = policy.decide(&res, &to, &history, &ctx);
        prop_assert_eq!(&a, &b);
        let mut reversed = history.clone();
        reversed.reverse();
        let c = policy.decide(&res, &to, &reversed, &ctx);
        prop_assert_eq!(&a, &c);
        let again = Policy::default_policy().decide(&res, &to, &history, &ctx);
        prop_assert_eq!(&a, &again);
    }

    /// The combination law holds for every decision: any Deny vote vetoes, a
    /// Permit has a Permit vote, obligations only come with a Permit.
    #[test]
    fn combination_law(
        history in history_s(),
        res in resource_s(),
        to in 0..ORGS.len(),
        ctx in ctx_s(),
    ) {
        let policy = Policy::default_policy();
        let to = recipient(to);
        let d = policy.decide(&res, &to, &history, &ctx);
        let any_deny = d.votes.iter().any(|v| v.value == VoteValue::Deny);
        let any_permit = d.votes.iter().any(|v| v.value == VoteValue::Permit);
        prop_assert_eq!(d.is_permit(), !any_deny && any_permit);
        if !d.is_permit() {
            prop_assert!(d.obligations.is_empty());
        }
        if d.is_permit() && d.votes.iter().any(|v| v.rule == "R6-part2" && v.consent_id.is_some()) {
            prop_assert!(d.obligations.contains(&Obligation::NoRedisclosureNotice));
        }
    }

    /// Consents of another patient never change a decision.
    #[test]
    fn other_patients_consents_are_ignored(
        history in history_s(),
        res in resource_s(),
        to in 0..ORGS.len(),
        ctx in ctx_s(),
    ) {
        let policy = Policy::default_policy();
        let to = recipient(to);
        let own: Vec<ConsentRecord> =
            history.iter().filter(|c| c.patient_id == res.patient_id).cloned().collect();
        prop_assert_eq!(
            essence(&policy.decide(&res, &to, &history, &ctx)),
            essence(&policy.decide(&res, &to, &own, &ctx))
        );
    }

    /// A self-referral opens nothing to an organization it was not made to:
    /// R2 never permits by self-referral outside the referral's `made_to`
    /// (or, for a resource no referral owns, the member's
    /// `self_referral_to`), whatever consents are on file.
    #[test]
    fn self_referral_only_to_whom_it_was_made(
        history in history_s(),
        res in resource_s(),
        to in 0..ORGS.len(),
        ctx in ctx_s(),
    ) {
        let policy = Policy::default_policy();
        let to = recipient(to);
        let d = policy.decide(&res, &to, &history, &ctx);
        let made_to = match &res.referral {
            Some(r) if r.self_referral => r.made_to.clone(),
            Some(_) => Vec::new(),
            None => ctx.self_referral_to.clone(),
        };
        if !made_to.contains(&to.org_id) {
            prop_assert!(d.votes.iter().all(|v| v.reason != "permit.self-referral"), "{:?}", d);
        }
    }

    /// Referral status goes to the requester of that very referral only: an
    /// R4 permit vote means the resource's referrer is the recipient; and a
    /// referral consent relied on by R2 was the youth's or the family's.
    #[test]
    fn status_to_its_own_referrer_and_family_referral_consents(
        history in history_s(),
        res in resource_s(),
        to in 0..ORGS.len(),
        ctx in ctx_s(),
    ) {
        let policy = Policy::default_policy();
        let to = recipient(to);
        let d = policy.decide(&res, &to, &history, &ctx);
        for v in d.votes.iter().filter(|v| v.value == VoteValue::Permit) {
            if v.rule == "R4" {
                let referrer = res.referral.as_ref().and_then(|r| r.referrer.as_deref());
                prop_assert_eq!(referrer, Some(to.org_id.as_str()));
            }
            if v.rule == "R2" {
                if let Some(id) = &v.consent_id {
                    let c = history.iter().find(|c| &c.id == id);
                    prop_assert!(c.is_some_and(|c| !matches!(
                        c.grantor_role,
                        GrantorRole::SocialWorker | GrantorRole::Court
                    )));
                }
            }
        }
    }
}
