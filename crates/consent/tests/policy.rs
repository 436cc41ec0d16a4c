//! The policy file format, its validation, and `explain`.

use chrono::{DateTime, Duration, TimeZone, Utc};
use cwsgw_consent::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap()
}

const MINIMAL: &str = r#"
id: test
version: 0.1.0
default: { rule: R1, description: deny, reason: deny.no-consent }
validity: { rule: R8, description: periods, end_exclusive: true, require_recorded_before_now: true }
rules:
  - id: county-case
    description: counties get case details under a release
    cites: [test]
    when: { recipient_kinds: [county] }
    requires:
      - consent: { kinds: [release_of_information], covers_resource_category: true }
    then: { vote: permit, reason: permit.roi }
    otherwise: { vote: abstain, reason: abstain.none }
"#;

fn county() -> Recipient {
    Recipient {
        org_id: "county-kern".into(),
        kind: OrgKind::County,
        county: Some("Kern".into()),
        mcp_network: vec![],
    }
}

fn ctx() -> Context {
    Context {
        now: now(),
        purpose: Purpose::CareCoordination,
        assigned_ecm: None,
        member_mcp: Some("mcp-a".into()),
        self_referral_to: vec![],
        source_county: Some("Fresno".into()),
        family_maintenance: false,
        case_open: true,
    }
}

fn consent(id: &str, kind: ConsentKind, to: &str, cats: &[Category]) -> ConsentRecord {
    ConsentRecord {
        id: id.into(),
        kind,
        patient_id: "pat-1".into(),
        grantor_role: GrantorRole::Youth,
        recipients: vec![to.into()],
        categories: cats.to_vec(),
        start: now() - Duration::days(1),
        end: None,
        withdrawn_at: None,
        recorded_at: now() - Duration::days(1),
    }
}

fn episode() -> ResourceFacts {
    ResourceFacts {
        resource_type: "EpisodeOfCare".into(),
        id: "eoc-1".into(),
        patient_id: "pat-1".into(),
        labels: vec!["ETH".into()],
        category: None,
        referral_package: false,
        status_only: false,
        contains_placement_address: false,
        referral: None,
        consent_recipients: Vec::new(),
    }
}

#[test]
fn shipped_policy_loads_and_every_rule_cites_its_source() {
    let p = Policy::from_yaml(Policy::default_policy_text()).unwrap();
    assert_eq!(p.id(), "cwsgw-default");
    assert_eq!(p.version(), "1.0.0");
    let ids = p.rule_ids();
    for want in [
        "R8",
        "R0-operator",
        "R2",
        "R3",
        "R4",
        "R5",
        "R6-part2",
        "R6-behavioral-health",
        "R6-hiv",
        "R6-reproductive",
        "R6-sdv",
        "R7",
        "R1",
    ] {
        assert!(ids.contains(&want), "missing {want}");
        assert!(!p.citations(want).is_empty(), "{want} cites nothing");
    }
    assert!(p
        .citations("R6-part2")
        .iter()
        .any(|c| c.contains("42 CFR 2")));
}

#[test]
fn rules_are_interpreted_from_data() {
    // The minimal policy has no Part 2 rule, so the ETH label is not vetoed:
    // the engine follows the file, not hard-coded rules.
    let p = Policy::from_yaml(MINIMAL).unwrap();
    let roi = consent(
        "roi",
        ConsentKind::ReleaseOfInformation,
        "county-kern",
        &[Category::Case],
    );
    let d = p.decide(&episode(), &county(), &[roi], &ctx());
    assert_eq!(d.effect, Effect::Permit);
    assert_eq!(d.rule, "county-case");
    assert_eq!(d.reason, "permit.roi");
    assert_eq!(d.consent_id.as_deref(), Some("roi"));
    // The shipped policy vetoes the same disclosure.
    let roi = consent(
        "roi",
        ConsentKind::ReleaseOfInformation,
        "county-kern",
        &[Category::Case],
    );
    let d = Policy::default_policy().decide(&episode(), &county(), &[roi], &ctx());
    assert_eq!(d.rule, "R6-part2");
    // And without the consent the minimal policy falls to its default.
    let d = p.decide(&episode(), &county(), &[], &ctx());
    assert_eq!((d.effect, d.rule.as_str()), (Effect::Deny, "R1"));
}

fn invalid(text: &str) -> PolicyError {
    Policy::from_yaml(text).unwrap_err()
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    for (from, to) in [
        ("id: test", "id: test\nowner: someone"),
        ("cites: [test]", "cites: [test]\n    priority: 1"),
        (
            "recipient_kinds: [county]",
            "recipient_kinds: [county], recipient_kind: county",
        ),
        (
            "covers_resource_category: true",
            "covers_resource_category: true, names: any",
        ),
        ("reason: permit.roi", "reason: permit.roi, log: true"),
        ("end_exclusive: true", "end_exclusive: true, grace_days: 3"),
    ] {
        let text = MINIMAL.replacen(from, to, 1);
        assert_ne!(text, MINIMAL, "{from}");
        assert!(matches!(invalid(&text), PolicyError::Parse(_)), "{to}");
    }
}

#[test]
fn unknown_enum_values_are_rejected() {
    let text = MINIMAL.replace("[county]", "[hospital]");
    assert!(matches!(invalid(&text), PolicyError::Parse(_)));
    let text = MINIMAL.replace("[release_of_information]", "[implied]");
    assert!(matches!(invalid(&text), PolicyError::Parse(_)));
}

#[test]
fn structural_errors_are_reported_with_the_rule() {
    let dup = format!(
        "{MINIMAL}  - id: county-case\n    description: again\n    then: {{ vote: permit, reason: permit.x }}\n"
    );
    assert!(matches!(invalid(&dup), PolicyError::Invalid { rule, .. } if rule == "county-case"));

    let permissive_default = MINIMAL.replace("reason: deny.no-consent", "reason: permit.all");
    assert!(matches!(
        invalid(&permissive_default),
        PolicyError::Invalid { .. }
    ));

    let wrong_prefix = MINIMAL.replace("reason: permit.roi", "reason: deny.roi");
    assert!(matches!(
        invalid(&wrong_prefix),
        PolicyError::Invalid { .. }
    ));

    let no_otherwise = MINIMAL.replace(
        "    otherwise: { vote: abstain, reason: abstain.none }\n",
        "",
    );
    assert!(matches!(
        invalid(&no_otherwise),
        PolicyError::Invalid { .. }
    ));

    let both = MINIMAL.replace(
        "covers_resource_category: true }",
        "covers_resource_category: true }\n        context: self_referral",
    );
    assert!(matches!(invalid(&both), PolicyError::Invalid { .. }));

    let bad_mask = MINIMAL.replace(
        "otherwise: { vote: abstain, reason: abstain.none }",
        "otherwise: { vote: abstain, reason: abstain.none, mask: [address] }",
    );
    assert!(matches!(invalid(&bad_mask), PolicyError::Invalid { .. }));
}

#[test]
fn nesting_and_size_are_bounded() {
    let mut sel = String::from("{ recipient_kinds: [county] }");
    for _ in 0..6 {
        sel = format!("{{ any_of: [{sel}] }}");
    }
    let deep = MINIMAL.replace(
        "when: { recipient_kinds: [county] }",
        &format!("when: {sel}"),
    );
    assert!(matches!(invalid(&deep), PolicyError::Invalid { .. }));

    let big = format!("{MINIMAL}\n#{}\n", "x".repeat(300 * 1024));
    assert!(matches!(invalid(&big), PolicyError::TooLarge { .. }));

    assert!(matches!(invalid("- just a list"), PolicyError::Parse(_)));
    assert!(matches!(invalid(""), PolicyError::Parse(_)));
}

#[test]
fn deny_all_denies_even_operators() {
    let ops = Recipient {
        org_id: "ops".into(),
        kind: OrgKind::Operator,
        county: None,
        mcp_network: vec![],
    };
    let d = Policy::deny_all().decide(&episode(), &ops, &[], &ctx());
    assert_eq!((d.effect, d.rule.as_str()), (Effect::Deny, "R1"));
}

#[test]
fn too_many_consents_is_a_deny_not_a_partial_look() {
    let many: Vec<ConsentRecord> = (0..=MAX_CONSENTS)
        .map(|i| {
            consent(
                &format!("c{i}"),
                ConsentKind::ReleaseOfInformation,
                "county-kern",
                &[Category::Case],
            )
        })
        .collect();
    let mut res = episode();
    res.labels.clear();
    let d = Policy::default_policy().decide(&res, &county(), &many, &ctx());
    assert_eq!(d.reason, REASON_INPUT_LIMIT);
    let d = Policy::default_policy().decide(&res, &county(), &many[..10], &ctx());
    assert!(d.is_permit());
}

#[test]
fn decisions_serialize_with_stable_codes() {
    let roi = consent(
        "roi",
        ConsentKind::ReleaseOfInformation,
        "county-kern",
        &[Category::Case],
    );
    let mut res = episode();
    res.labels.clear();
    let d = Policy::default_policy().decide(&res, &county(), &[roi], &ctx());
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["effect"], "permit");
    assert_eq!(v["rule"], "R5");
    assert_eq!(v["reason"], "permit.release-of-information");
    assert_eq!(v["votes"][0]["rule"], "R8");
    let c: Category = serde_json::from_str("\"behavioral_health\"").unwrap();
    assert_eq!(c, Category::BehavioralHealth);
    let k: OrgKind = serde_json::from_str("\"ecm_provider\"").unwrap();
    assert_eq!(k, OrgKind::EcmProvider);
}

#[test]
fn labels_parse_and_keep_unknown_codes() {
    assert_eq!(Label::from_code("ETH"), Label::Eth);
    assert_eq!(Label::from_code("eth"), Label::Eth);
    assert_eq!(Label::from_code("PSY").code(), "PSY");
    assert_eq!(Label::from_code("SDV"), Label::Sdv);
    assert_eq!(Label::from_code("Foo"), Label::Other("Foo".into()));
    assert_eq!(Label::from_code("Foo").code(), "FOO");
}

// ---------- explain ----------

fn find(e: &Explanation, c: Category) -> &CategoryExplanation {
    e.categories.iter().find(|x| x.category == c).unwrap()
}

#[test]
fn explain_shows_basis_and_what_would_change_it() {
    let ecm = Recipient {
        org_id: "ecm-compass".into(),
        kind: OrgKind::EcmProvider,
        county: None,
        mcp_network: vec!["mcp-a".into()],
    };
    let consents = vec![
        consent(
            "ref",
            ConsentKind::ReferralVerbal,
            "ecm-compass",
            &[Category::Referral],
        ),
        consent(
            "roi",
            ConsentKind::ReleaseOfInformation,
            "ecm-compass",
            &[Category::Health],
        ),
    ];
    let ctx = Context {
        purpose: Purpose::Pull,
        ..ctx()
    };
    let e = Policy::default_policy().explain("pat-1", &ecm, &consents, &ctx);
    assert_eq!(e.categories.len(), Category::ALL.len());
    assert_eq!(e.recipient, "ecm-compass");

    let referral = find(&e, Category::Referral);
    assert_eq!(
        (referral.effect, referral.rule.as_str()),
        (Effect::Permit, "R2")
    );
    assert_eq!(
        referral.change,
        Change::WithdrawConsent {
            consent_id: "ref".into()
        }
    );

    let health = find(&e, Category::Health);
    assert_eq!(
        (health.effect, health.consent_id.as_deref()),
        (Effect::Permit, Some("roi"))
    );

    let case = find(&e, Category::Case);
    assert_eq!(case.effect, Effect::Deny);
    assert_eq!(
        case.change,
        Change::GrantConsents {
            consents: vec![ConsentSuggestion {
                kind: ConsentKind::ReleaseOfInformation,
                categories: vec![Category::Case]
            }]
        }
    );

    let su = find(&e, Category::SubstanceUse);
    assert_eq!((su.effect, su.rule.as_str()), (Effect::Deny, "R6-part2"));
    assert_eq!(
        su.change,
        Change::GrantConsents {
            consents: vec![ConsentSuggestion {
                kind: ConsentKind::Part2Written,
                categories: vec![Category::SubstanceUse]
            }]
        }
    );

    let placement = find(&e, Category::Placement);
    assert_eq!(placement.effect, Effect::Deny);
    assert!(matches!(placement.change, Change::GrantConsents { .. }));
}

#[test]
fn explain_for_operator_and_for_a_hospital() {
    let ops = Recipient {
        org_id: "ops".into(),
        kind: OrgKind::Operator,
        county: None,
        mcp_network: vec![],
    };
    let e = Policy::default_policy().explain("pat-1", &ops, &[], &ctx());
    assert!(e.categories.iter().all(|c| c.effect == Effect::Permit
        && c.change == Change::NotByConsent
        && c.obligations.is_empty()));

    let hospital = Recipient {
        org_id: "st-mary".into(),
        kind: OrgKind::AdtSource,
        county: None,
        mcp_network: vec![],
    };
    let e = Policy::default_policy().explain("pat-1", &hospital, &[], &ctx());
    assert!(e
        .categories
        .iter()
        .all(|c| c.effect == Effect::Deny && c.change == Change::NotByConsent));
}

#[test]
fn explain_masks_placement_address_for_other_county() {
    let consents = vec![consent(
        "roi",
        ConsentKind::ReleaseOfInformation,
        "county-kern",
        &[Category::Case, Category::Placement],
    )];
    let e = Policy::default_policy().explain("pat-1", &county(), &consents, &ctx());
    let p = find(&e, Category::Placement);
    assert_eq!(p.effect, Effect::Permit);
    assert!(p.obligations.is_empty(), "placement release unmasks");

    let consents = vec![consent(
        "roi",
        ConsentKind::ReleaseOfInformation,
        "county-kern",
        &[Category::Case],
    )];
    let e = Policy::default_policy().explain("pat-1", &county(), &consents, &ctx());
    let p = find(&e, Category::Placement);
    assert_eq!(p.effect, Effect::Deny);
}

const VIEW: &str = r#"views:
  - id: whole-for-case-county
    description: the case's county sees the eligibility answer whole
    cites: [test]
    answer: eligibility
    when: { recipient_kinds: [county], relations: [same_county] }
    reason: permit.case-county
"#;

/// A view row is data: it names the answer, the recipients (by kind and
/// relation to the member's context) and the audited reason; who it does
/// not name gets no whole view, and a policy without the row gives none.
#[test]
fn views_are_rows_of_data_about_the_recipient_only() {
    let with = Policy::from_yaml(&format!("{MINIMAL}{VIEW}")).unwrap();
    let fresno = Recipient {
        org_id: "county-fresno".into(),
        county: Some("Fresno".into()),
        ..county()
    };
    assert_eq!(
        with.whole_view(Answer::Eligibility, "pat-1", &fresno, &ctx()),
        Some(ViewGrant {
            rule: "whole-for-case-county".into(),
            reason: "permit.case-county".into()
        })
    );
    // Kern is not the case's county; a plan is not a county.
    assert_eq!(
        with.whole_view(Answer::Eligibility, "pat-1", &county(), &ctx()),
        None
    );
    let plan = Recipient {
        org_id: "mcp-a".into(),
        kind: OrgKind::Mcp,
        county: Some("Fresno".into()),
        mcp_network: vec![],
    };
    assert_eq!(
        with.whole_view(Answer::Eligibility, "pat-1", &plan, &ctx()),
        None
    );
    let without = Policy::from_yaml(MINIMAL).unwrap();
    assert_eq!(
        without.whole_view(Answer::Eligibility, "pat-1", &fresno, &ctx()),
        None
    );
    // The shipped policy has the row (R10-county-of-child).
    let shipped = Policy::default_policy();
    assert_eq!(
        shipped
            .whole_view(Answer::Eligibility, "pat-1", &fresno, &ctx())
            .map(|g| g.rule),
        Some("R10-county-of-child".to_string())
    );
}

#[test]
fn a_view_row_that_speaks_about_resources_or_denies_is_refused() {
    for (from, to) in [
        (
            "relations: [same_county] }",
            "relations: [same_county], categories: [case] }",
        ),
        (
            "relations: [same_county] }",
            "relations: [same_county], resource_types: [Observation] }",
        ),
        ("reason: permit.case-county", "reason: deny.case-county"),
        ("id: whole-for-case-county", "id: county-case"),
    ] {
        let text = format!("{MINIMAL}{}", VIEW.replacen(from, to, 1));
        assert!(
            matches!(invalid(&text), PolicyError::Invalid { .. }),
            "{to}"
        );
    }
    let unknown = format!(
        "{MINIMAL}{}",
        VIEW.replace("answer: eligibility", "answer: everything")
    );
    assert!(matches!(invalid(&unknown), PolicyError::Parse(_)));
}
