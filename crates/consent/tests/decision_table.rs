//! Data-driven decision table over the shipped default policy: one row per
//! case, each with a name, the disclosure, and the expected decision.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use cwsgw_consent::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap()
}

const PATIENT: &str = "pat-1";

// ---------- recipients ----------
fn org(id: &str, kind: OrgKind, county: Option<&str>, network: &[&str]) -> Recipient {
    Recipient {
        org_id: id.into(),
        kind,
        county: county.map(Into::into),
        mcp_network: network.iter().map(|s| s.to_string()).collect(),
    }
}
fn fresno() -> Recipient {
    org("county-fresno", OrgKind::County, Some("Fresno"), &[])
}
fn kern() -> Recipient {
    org("county-kern", OrgKind::County, Some("Kern"), &[])
}
fn mcp_a() -> Recipient {
    org("mcp-a", OrgKind::Mcp, None, &[])
}
fn mcp_b() -> Recipient {
    org("mcp-b", OrgKind::Mcp, None, &[])
}
fn compass() -> Recipient {
    org("ecm-compass", OrgKind::EcmProvider, None, &["mcp-a"])
}
fn other_ecm() -> Recipient {
    org("ecm-other", OrgKind::EcmProvider, None, &["mcp-b"])
}
fn hospital() -> Recipient {
    org("st-mary", OrgKind::AdtSource, None, &[])
}
fn ops() -> Recipient {
    org("ops", OrgKind::Operator, None, &[])
}

// ---------- resources ----------
fn res(t: &str) -> ResourceFacts {
    ResourceFacts {
        resource_type: t.into(),
        id: format!("{t}-1"),
        patient_id: PATIENT.into(),
        labels: vec![],
        category: None,
        referral_package: false,
        status_only: false,
        contains_placement_address: false,
        // A referral's own resources carry their referral: made by the
        // county, to the member's MCP (the gateway's `disclosure` does the same).
        referral: matches!(t, "ServiceRequest" | "Task").then(|| ReferralFacts {
            referrer: Some("county-fresno".into()),
            self_referral: false,
            made_to: vec!["mcp-a".into()],
            former_owners: vec![],
        }),
        consent_recipients: vec![],
    }
}
trait ResExt {
    fn labels(self, l: &[&str]) -> Self;
    fn cat(self, c: Category) -> Self;
    fn referral(self) -> Self;
    fn status(self) -> Self;
    fn placement(self) -> Self;
    /// This referral was made by `org`.
    fn referred_by(self, org: &str) -> Self;
    /// This referral is a self-referral made to `to`.
    fn self_referral_to(self, to: &[&str]) -> Self;
    /// No referral owns the resource.
    fn no_referral(self) -> Self;
    /// The plan moved this referral away from `org` (its previous owner).
    fn moved_from(self, org: &str) -> Self;
    /// A Consent naming `to` as its recipients.
    fn names(self, to: &[&str]) -> Self;
}
impl ResExt for ResourceFacts {
    fn referred_by(mut self, org: &str) -> Self {
        self.referral
            .get_or_insert_with(ReferralFacts::default)
            .referrer = Some(org.into());
        self
    }
    fn self_referral_to(mut self, to: &[&str]) -> Self {
        let r = self.referral.get_or_insert_with(ReferralFacts::default);
        r.self_referral = true;
        r.made_to = to.iter().map(|s| s.to_string()).collect();
        self
    }
    fn no_referral(mut self) -> Self {
        self.referral = None;
        self
    }
    fn names(mut self, to: &[&str]) -> Self {
        self.consent_recipients = to.iter().map(|s| s.to_string()).collect();
        self
    }
    fn moved_from(mut self, org: &str) -> Self {
        self.referral
            .get_or_insert_with(ReferralFacts::default)
            .former_owners
            .push(org.into());
        self
    }
    fn labels(mut self, l: &[&str]) -> Self {
        self.labels = l.iter().map(|s| s.to_string()).collect();
        self
    }
    fn cat(mut self, c: Category) -> Self {
        self.category = Some(c);
        self
    }
    fn referral(mut self) -> Self {
        self.referral_package = true;
        self
    }
    fn status(mut self) -> Self {
        self.status_only = true;
        self
    }
    fn placement(mut self) -> Self {
        self.contains_placement_address = true;
        self
    }
}

// ---------- consents ----------
fn consent(id: &str, kind: ConsentKind, to: &[&str], cats: &[Category]) -> ConsentRecord {
    ConsentRecord {
        id: id.into(),
        kind,
        patient_id: PATIENT.into(),
        grantor_role: GrantorRole::Youth,
        recipients: to.iter().map(|s| s.to_string()).collect(),
        categories: cats.to_vec(),
        start: now() - Duration::days(30),
        end: None,
        withdrawn_at: None,
        recorded_at: now() - Duration::days(30),
    }
}
fn referral(id: &str, to: &[&str]) -> ConsentRecord {
    consent(id, ConsentKind::ReferralVerbal, to, &[Category::Referral])
}
fn roi(id: &str, to: &[&str], cats: &[Category]) -> ConsentRecord {
    consent(id, ConsentKind::ReleaseOfInformation, to, cats)
}
fn part2(id: &str, to: &[&str], cats: &[Category]) -> ConsentRecord {
    consent(id, ConsentKind::Part2Written, to, cats)
}
trait ConsentExt {
    fn start_at(self, t: DateTime<Utc>) -> Self;
    fn end_at(self, t: DateTime<Utc>) -> Self;
    fn withdrawn(self, t: DateTime<Utc>) -> Self;
    fn recorded(self, t: DateTime<Utc>) -> Self;
    fn patient(self, p: &str) -> Self;
    fn by_role(self, r: GrantorRole) -> Self;
}
impl ConsentExt for ConsentRecord {
    fn by_role(mut self, r: GrantorRole) -> Self {
        self.grantor_role = r;
        self
    }
    fn start_at(mut self, t: DateTime<Utc>) -> Self {
        self.start = t;
        self.recorded_at = self.recorded_at.min(t);
        self
    }
    fn end_at(mut self, t: DateTime<Utc>) -> Self {
        self.end = Some(t);
        self
    }
    fn withdrawn(mut self, t: DateTime<Utc>) -> Self {
        self.withdrawn_at = Some(t);
        self
    }
    fn recorded(mut self, t: DateTime<Utc>) -> Self {
        self.recorded_at = t;
        self
    }
    fn patient(mut self, p: &str) -> Self {
        self.patient_id = p.into();
        self
    }
}

// ---------- contexts ----------
fn ctx(purpose: Purpose) -> Context {
    Context {
        now: now(),
        purpose,
        assigned_ecm: None,
        member_mcp: Some("mcp-a".into()),
        self_referral_to: vec![],
        source_county: Some("Fresno".into()),
        family_maintenance: false,
        case_open: true,
    }
}
/// Care coordination with ecm-compass assigned by mcp-a.
fn network(purpose: Purpose) -> Context {
    Context {
        assigned_ecm: Some("ecm-compass".into()),
        ..ctx(purpose)
    }
}
/// The county's case is closed (no active EpisodeOfCare).
fn closed_case(purpose: Purpose) -> Context {
    Context {
        case_open: false,
        ..ctx(purpose)
    }
}
/// A Family Maintenance case with ecm-compass assigned.
fn family_maintenance(purpose: Purpose) -> Context {
    Context {
        family_maintenance: true,
        ..network(purpose)
    }
}
/// The member referred themselves to mcp-a, naming ecm-compass.
fn self_ref() -> Context {
    Context {
        self_referral_to: vec!["mcp-a".into(), "ecm-compass".into()],
        ..ctx(Purpose::Referral)
    }
}

// ---------- expectations ----------
#[derive(Clone)]
struct Expect {
    effect: Effect,
    rule: &'static str,
    reason: &'static str,
    consent: Option<Option<&'static str>>,
    obligations: Vec<Obligation>,
}
fn permit(rule: &'static str, reason: &'static str) -> Expect {
    Expect {
        effect: Effect::Permit,
        rule,
        reason,
        consent: None,
        obligations: vec![],
    }
}
fn deny(rule: &'static str, reason: &'static str) -> Expect {
    Expect {
        effect: Effect::Deny,
        rule,
        reason,
        consent: None,
        obligations: vec![],
    }
}
fn r1() -> Expect {
    deny("R1", "deny.no-consent")
}
impl Expect {
    fn by(mut self, c: &'static str) -> Self {
        self.consent = Some(Some(c));
        self
    }
    fn no_consent(mut self) -> Self {
        self.consent = Some(None);
        self
    }
    fn notice(mut self) -> Self {
        self.obligations.push(Obligation::NoRedisclosureNotice);
        self
    }
    fn masked(mut self) -> Self {
        for p in [
            "Location.address",
            "Location.position",
            "Patient.address",
            "Patient.contact.address",
            "RelatedPerson.address",
        ] {
            self.obligations.push(Obligation::Mask { path: p.into() });
        }
        self
    }
}

struct Row {
    name: &'static str,
    res: ResourceFacts,
    to: Recipient,
    consents: Vec<ConsentRecord>,
    ctx: Context,
    expect: Expect,
}

fn row(
    name: &'static str,
    res: ResourceFacts,
    to: Recipient,
    consents: Vec<ConsentRecord>,
    ctx: Context,
    expect: Expect,
) -> Row {
    Row {
        name,
        res,
        to,
        consents,
        ctx,
        expect,
    }
}

use Category::*;
use Purpose::{CareCoordination, Notification, Pull};

fn rows() -> Vec<Row> {
    let s = Duration::seconds(1);
    vec![
        // ---- R1 deny by default
        row(
            "r1-nothing-on-file",
            res("Encounter"),
            fresno(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r1-adt-source-never-receives",
            res("Encounter"),
            hospital(),
            vec![roi("roi", &["st-mary"], &[Health])],
            ctx(Notification),
            r1(),
        ),
        row(
            "r1-consent-of-another-patient",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).patient("pat-2")],
            ctx(Pull),
            r1(),
        ),
        // ---- R0 operator
        row(
            "r0-operator-reads-part2-without-consent",
            res("Encounter").labels(&["ETH"]),
            ops(),
            vec![],
            ctx(Pull),
            permit("R0-operator", "permit.operator").no_consent(),
        ),
        row(
            "r0-operator-sees-placement-address-unmasked",
            res("Patient").placement(),
            ops(),
            vec![],
            ctx(Pull),
            permit("R0-operator", "permit.operator"),
        ),
        // ---- R2 referral package
        row(
            "r2-referral-to-mcp-named-by-verbal-consent",
            res("ServiceRequest").referral(),
            mcp_a(),
            vec![referral("ref", &["mcp-a"])],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent").by("ref"),
        ),
        row(
            "r2-referral-to-ecm-named-by-verbal-consent",
            res("Task").referral(),
            compass(),
            vec![referral("ref", &["ecm-compass"])],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent").by("ref"),
        ),
        row(
            "r2-wrong-recipient",
            res("ServiceRequest").referral(),
            mcp_b(),
            vec![referral("ref", &["mcp-a"])],
            ctx(Purpose::Referral),
            r1(),
        ),
        row(
            "r2-self-referral-needs-no-consent",
            res("ServiceRequest")
                .referral()
                .self_referral_to(&["mcp-a", "ecm-compass"]),
            compass(),
            vec![],
            self_ref(),
            permit("R2", "permit.self-referral").no_consent(),
        ),
        row(
            "r2-self-referral-task-to-the-plan-it-was-made-to",
            res("Task").referral().self_referral_to(&["mcp-a"]),
            mcp_a(),
            vec![],
            self_ref(),
            permit("R2", "permit.self-referral").no_consent(),
        ),
        row(
            "r2-self-referral-not-to-a-county",
            res("ServiceRequest")
                .referral()
                .self_referral_to(&["county-kern"]),
            kern(),
            vec![],
            self_ref(),
            r1(),
        ),
        // A self-referral opens the referral to the plan (and provider) it
        // was made to — not to every MCP and ECM provider.
        row(
            "r2-self-referral-not-to-another-mcp",
            res("ServiceRequest")
                .referral()
                .self_referral_to(&["mcp-a"]),
            mcp_b(),
            vec![],
            self_ref(),
            r1(),
        ),
        row(
            "r2-self-referral-not-to-another-ecm-provider",
            res("Task")
                .referral()
                .self_referral_to(&["mcp-a", "ecm-compass"]),
            other_ecm(),
            vec![],
            self_ref(),
            r1(),
        ),
        row(
            "r2-self-referral-minimal-patient-to-the-plan-it-was-made-to",
            res("Patient").referral(),
            mcp_a(),
            vec![],
            self_ref(),
            permit("R2", "permit.self-referral").no_consent(),
        ),
        row(
            "r2-self-referral-minimal-patient-not-to-another-mcp",
            res("Patient").referral(),
            mcp_b(),
            vec![],
            self_ref(),
            r1(),
        ),
        row(
            "r2-self-referral-does-not-open-the-members-other-referrals",
            // An ordinary referral to ecm-compass's rival, decided for
            // compass, while the member also has a self-referral naming it.
            res("ServiceRequest").referral(),
            compass(),
            vec![],
            self_ref(),
            r1(),
        ),
        row(
            "r2-not-a-self-referral-without-the-flag",
            res("Task").referral(),
            mcp_a(),
            vec![],
            ctx(Purpose::Referral),
            r1(),
        ),
        // The referral consent is the youth's or the family's (Guide for
        // CWS, Consent): one the SW or the court granted counts for nothing.
        row(
            "r2-referral-consent-granted-by-the-sw-does-not-count",
            res("ServiceRequest").referral(),
            mcp_a(),
            vec![referral("ref", &["mcp-a"]).by_role(GrantorRole::SocialWorker)],
            ctx(Purpose::Referral),
            r1(),
        ),
        row(
            "r2-referral-consent-granted-by-the-court-does-not-count",
            res("Task").referral(),
            compass(),
            vec![referral("ref", &["ecm-compass"]).by_role(GrantorRole::Court)],
            ctx(Purpose::Referral),
            r1(),
        ),
        row(
            "r2-referral-consent-of-a-parent",
            res("ServiceRequest").referral(),
            mcp_a(),
            vec![referral("ref", &["mcp-a"]).by_role(GrantorRole::Parent)],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent").by("ref"),
        ),
        row(
            "r2-referral-consent-of-a-legal-guardian",
            res("ServiceRequest").referral(),
            mcp_a(),
            vec![referral("ref", &["mcp-a"]).by_role(GrantorRole::LegalGuardian)],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent").by("ref"),
        ),
        row(
            "r2-referral-consent-of-an-nmd",
            res("ServiceRequest").referral(),
            mcp_a(),
            vec![referral("ref", &["mcp-a"]).by_role(GrantorRole::Nmd)],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent").by("ref"),
        ),
        row(
            "r2-sw-and-parent-consents-the-parents-is-cited",
            res("ServiceRequest").referral(),
            mcp_a(),
            vec![
                referral("ref-sw", &["mcp-a"])
                    .by_role(GrantorRole::SocialWorker)
                    .recorded(now() - Duration::days(1)),
                referral("ref-parent", &["mcp-a"]).by_role(GrantorRole::Parent),
            ],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent").by("ref-parent"),
        ),
        row(
            "r2-verbal-consent-does-not-open-a-county",
            res("ServiceRequest").referral(),
            kern(),
            vec![referral("ref", &["county-kern"])],
            ctx(Purpose::Referral),
            r1(),
        ),
        row(
            "r2-verbal-consent-covers-only-the-package",
            res("Encounter"),
            mcp_a(),
            vec![referral("ref", &["mcp-a"])],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r2-roi-covering-referral-also-opens-package",
            res("ServiceRequest").referral(),
            mcp_b(),
            vec![roi("roi", &["mcp-b"], &[Referral])],
            ctx(Purpose::Referral),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r2-withdrawn-referral-consent-stops-queued-referral",
            res("ServiceRequest").referral(),
            mcp_a(),
            vec![referral("ref", &["mcp-a"]).withdrawn(now() - Duration::minutes(5))],
            ctx(Purpose::Referral),
            r1(),
        ),
        // ---- R3 plan network
        row(
            "r3-adt-to-assigned-contracted-ecm",
            res("Encounter"),
            compass(),
            vec![],
            network(Notification),
            permit("R3", "permit.plan-network").no_consent(),
        ),
        row(
            "r3-adt-to-unassigned-ecm",
            res("Encounter"),
            other_ecm(),
            vec![],
            network(Notification),
            r1(),
        ),
        row(
            "r3-assigned-ecm-not-contracted-with-member-mcp",
            res("Encounter"),
            org("ecm-compass", OrgKind::EcmProvider, None, &["mcp-b"]),
            vec![],
            network(Notification),
            r1(),
        ),
        row(
            "r3-task-update-to-member-mcp",
            res("Task").status(),
            mcp_a(),
            vec![],
            network(CareCoordination),
            permit("R3", "permit.plan-network"),
        ),
        row(
            "r3-referral-package-mcp-to-assigned-ecm",
            res("Patient").referral(),
            compass(),
            vec![],
            network(CareCoordination),
            permit("R3", "permit.plan-network"),
        ),
        row(
            "r3-mcp-without-assigned-ecm-gets-nothing",
            res("Encounter"),
            mcp_a(),
            vec![],
            ctx(Notification),
            r1(),
        ),
        row(
            "r3-other-mcp-not-in-network",
            res("Encounter"),
            mcp_b(),
            vec![],
            network(Notification),
            r1(),
        ),
        // What the plan network is sent it may also read by pull (Gravity's
        // `Task?owner=…` polling); labels (R6) still apply, see below.
        row(
            "r3-also-for-pull",
            res("Encounter"),
            compass(),
            vec![],
            network(Pull),
            permit("R3", "permit.plan-network"),
        ),
        row(
            "r3-care-plan-is-not-covered",
            res("CarePlan"),
            compass(),
            vec![],
            network(CareCoordination),
            r1(),
        ),
        // The Lead Care Manager (CareTeam) is plan-network information:
        // the member's MCP reads it without a release while an ECM provider
        // is assigned; another MCP, or with nobody assigned, does not.
        row(
            "r3-care-team-to-member-mcp-without-consent",
            res("CareTeam"),
            mcp_a(),
            vec![],
            network(Pull),
            permit("R3", "permit.plan-network"),
        ),
        row(
            "r3-care-team-not-to-another-mcp",
            res("CareTeam"),
            mcp_b(),
            vec![],
            network(Pull),
            r1(),
        ),
        row(
            "r3-care-team-not-without-an-assignment",
            res("CareTeam"),
            mcp_a(),
            vec![],
            ctx(Pull),
            r1(),
        ),
        row(
            "r3-assessment-is-not-covered",
            res("QuestionnaireResponse"),
            mcp_a(),
            vec![],
            network(CareCoordination),
            r1(),
        ),
        row(
            "r3-psy-label-still-vetoes",
            res("Encounter").labels(&["PSY"]),
            compass(),
            vec![],
            network(Notification),
            deny(
                "R6-behavioral-health",
                "deny.behavioral-health-requires-consent",
            ),
        ),
        row(
            "r3-psy-label-with-behavioral-health-roi",
            res("Encounter").labels(&["PSY"]),
            compass(),
            vec![roi("roi", &["ecm-compass"], &[BehavioralHealth])],
            network(Notification),
            permit("R3", "permit.plan-network"),
        ),
        row(
            "r3-eth-label-vetoes-without-part2",
            res("Encounter").labels(&["ETH"]),
            compass(),
            vec![],
            network(Notification),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r3-eth-label-with-part2-carries-notice",
            res("Encounter").labels(&["ETH"]),
            compass(),
            vec![part2("p2", &["ecm-compass"], &[SubstanceUse])],
            network(Notification),
            permit("R3", "permit.plan-network").notice(),
        ),
        // ---- R4 status to the referrer
        row(
            "r4-status-to-referring-county",
            res("Task").status(),
            fresno(),
            vec![],
            ctx(CareCoordination),
            permit("R4", "permit.referral-status").no_consent(),
        ),
        row(
            "r4-status-to-referring-county-on-pull",
            res("Task").status(),
            fresno(),
            vec![],
            ctx(Pull),
            permit("R4", "permit.referral-status"),
        ),
        row(
            "r4-status-not-to-other-county",
            res("Task").status(),
            kern(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        // The referrer is a property of each referral: status goes to this
        // Task's requester only, whoever referred the member since.
        row(
            "r4-status-to-this-tasks-requester-only",
            res("Task").status().referred_by("mcp-b"),
            fresno(),
            vec![],
            closed_case(CareCoordination),
            r1(),
        ),
        row(
            "r4-status-to-an-mcp-that-made-this-referral",
            res("Task").status().referred_by("mcp-b"),
            mcp_b(),
            vec![],
            ctx(Pull),
            permit("R4", "permit.referral-status").no_consent(),
        ),
        row(
            "r4-another-referrals-requester-reads-no-status",
            res("Task").status(),
            mcp_b(),
            vec![],
            ctx(Pull),
            r1(),
        ),
        row(
            "r4-no-referral-no-status",
            res("Task").status().no_referral(),
            fresno(),
            vec![],
            closed_case(CareCoordination),
            r1(),
        ),
        row(
            "r4-full-task-is-not-status-only",
            res("Task"),
            fresno(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r4-labels-honoured-even-for-status",
            res("Task").status().labels(&["ETH"]),
            fresno(),
            vec![],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        // ---- R11 the case county is told each referral's status
        row(
            "r11-status-to-the-open-cases-county-whoever-referred",
            res("Task").status().referred_by("mcp-b"),
            fresno(),
            vec![],
            ctx(CareCoordination),
            permit("R11-case-county-status", "permit.case-county-status").no_consent(),
        ),
        row(
            "r11-no-status-once-the-case-is-closed",
            res("Task").status().referred_by("mcp-b"),
            fresno(),
            vec![],
            closed_case(CareCoordination),
            r1(),
        ),
        row(
            "r11-no-status-to-another-county",
            res("Task").status().referred_by("mcp-b"),
            kern(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r11-a-whole-task-is-not-status",
            res("Task").referred_by("mcp-b"),
            fresno(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r11-labels-honoured-for-the-case-county",
            res("Task").status().labels(&["ETH"]).referred_by("mcp-b"),
            fresno(),
            vec![],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        // ---- R12 the provider a referral was moved away from
        row(
            "r12-status-to-the-former-provider",
            res("Task").status().moved_from("ecm-other"),
            other_ecm(),
            vec![],
            ctx(CareCoordination),
            permit(
                "R12-former-provider-status",
                "permit.former-provider-status",
            )
            .no_consent(),
        ),
        row(
            "r12-no-status-to-a-provider-it-was-not-moved-from",
            res("Task").status().moved_from("ecm-compass"),
            other_ecm(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r12-a-whole-task-is-not-status",
            res("Task").moved_from("ecm-other"),
            other_ecm(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        // ---- R13 the record of a release goes back to a plan it names
        row(
            "r13-release-record-to-the-plan-it-names",
            res("Consent").names(&["mcp-a", "county-fresno"]),
            mcp_a(),
            vec![],
            ctx(CareCoordination),
            permit(
                "R13-release-record-to-named-plan",
                "permit.release-record-to-named-plan",
            )
            .no_consent(),
        ),
        row(
            "r13-not-to-a-plan-it-does-not-name",
            res("Consent").names(&["mcp-a"]),
            mcp_b(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r13-plans-only",
            res("Consent").names(&["ecm-compass"]),
            compass(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r13-labels-still-veto",
            res("Consent").names(&["mcp-a"]).labels(&["ETH"]),
            mcp_a(),
            vec![],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        // ---- R5 release of information
        row(
            "r5-case-to-other-county-with-roi",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r5-wrong-category",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Health])],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r5-wrong-recipient",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-fresno"], &[Case])],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r5-condition-to-ecm-with-health-roi",
            res("Condition"),
            compass(),
            vec![roi("roi", &["ecm-compass"], &[Health])],
            ctx(Pull),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r5-care-plan-back-to-county",
            res("CarePlan"),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information"),
        ),
        // The care team and the assessments go to the county like a care
        // plan: health information, under a release naming it.
        row(
            "r5-care-team-to-county-with-health-roi",
            res("CareTeam"),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r5-care-team-not-to-county-without-roi",
            res("CareTeam"),
            fresno(),
            vec![],
            network(CareCoordination),
            r1(),
        ),
        row(
            "r5-assessment-response-to-county-with-health-roi",
            res("QuestionnaireResponse"),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r5-assessment-document-is-health-not-case",
            res("DocumentReference"),
            mcp_a(),
            vec![roi("roi", &["mcp-a"], &[Health])],
            network(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r5-assessment-document-not-under-a-case-only-roi",
            res("DocumentReference"),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Case])],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r6-labelled-assessment-withheld-from-county-with-health-roi",
            res("DocumentReference").labels(&["PSY"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health])],
            ctx(CareCoordination),
            deny(
                "R6-behavioral-health",
                "deny.behavioral-health-requires-consent",
            ),
        ),
        row(
            "r6-labelled-assessment-to-county-with-behavioral-health-roi",
            res("QuestionnaireResponse").labels(&["PSY"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health, BehavioralHealth])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r6-sud-assessment-to-county-needs-part2",
            res("QuestionnaireResponse").labels(&["ETH"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health, SubstanceUse])],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r5-explicit-placement-category",
            res("EpisodeOfCare").cat(Placement),
            kern(),
            vec![roi("roi", &["county-kern"], &[Placement])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r5-roi-outside-network",
            res("Encounter"),
            mcp_b(),
            vec![roi("roi", &["mcp-b"], &[Health])],
            ctx(Notification),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r5-latest-recorded-consent-is-cited",
            res("Encounter"),
            mcp_b(),
            vec![
                roi("roi-old", &["mcp-b"], &[Health]),
                roi("roi-new", &["mcp-b"], &[Health]).recorded(now() - Duration::days(1)),
            ],
            ctx(Notification),
            permit("R5", "permit.release-of-information").by("roi-new"),
        ),
        // ---- R6 Part 2
        row(
            "r6-part2-with-only-roi-is-denied",
            res("Encounter").labels(&["ETH"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health, SubstanceUse])],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r6-part2-naming-another-org-is-denied",
            res("Encounter").labels(&["ETH"]),
            fresno(),
            vec![
                roi("roi", &["county-fresno"], &[Health]),
                part2("p2", &["ecm-compass"], &[SubstanceUse]),
            ],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r6-part2-and-roi-permit-with-notice",
            res("Encounter").labels(&["ETH"]),
            fresno(),
            vec![
                roi("roi", &["county-fresno"], &[Health]),
                part2("p2", &["county-fresno"], &[SubstanceUse]),
            ],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information")
                .by("roi")
                .notice(),
        ),
        row(
            "r6-part2-alone-opens-substance-use-record",
            res("Encounter").cat(SubstanceUse),
            fresno(),
            vec![part2("p2", &["county-fresno"], &[SubstanceUse])],
            ctx(CareCoordination),
            permit("R5", "permit.part2-consent").by("p2").notice(),
        ),
        row(
            "r6-part2-lifts-veto-but-is-no-basis-for-health",
            res("Encounter").labels(&["ETH"]),
            fresno(),
            vec![part2("p2", &["county-fresno"], &[SubstanceUse])],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r6-part2-withdrawn",
            res("Encounter").labels(&["ETH"]),
            fresno(),
            vec![
                roi("roi", &["county-fresno"], &[Health]),
                part2("p2", &["county-fresno"], &[SubstanceUse])
                    .withdrawn(now() - Duration::hours(1)),
            ],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r6-part2-not-covering-substance-use",
            res("Encounter").labels(&["ETH"]),
            fresno(),
            vec![
                roi("roi", &["county-fresno"], &[Health]),
                part2("p2", &["county-fresno"], &[Health]),
            ],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r6-lower-case-label-honoured",
            res("Encounter").labels(&["eth"]),
            compass(),
            vec![],
            network(Notification),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r6-ethud-label",
            res("Encounter").labels(&["ETHUD"]),
            compass(),
            vec![],
            network(Notification),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r6-opioidud-label",
            res("Encounter").labels(&["OPIOIDUD"]),
            compass(),
            vec![],
            network(Notification),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r6-substance-use-category-without-label",
            res("Encounter").cat(SubstanceUse),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[SubstanceUse])],
            ctx(CareCoordination),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        row(
            "r6-mh-label-roi-health-only",
            res("Encounter").labels(&["MH"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health])],
            ctx(CareCoordination),
            deny(
                "R6-behavioral-health",
                "deny.behavioral-health-requires-consent",
            ),
        ),
        row(
            "r6-mh-label-roi-with-behavioral-health",
            res("Encounter").labels(&["MH"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health, BehavioralHealth])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r6-psy-label-in-referral-with-verbal-bh-consent",
            res("ServiceRequest").referral().labels(&["PSY"]),
            mcp_a(),
            vec![consent(
                "ref",
                ConsentKind::ReferralVerbal,
                &["mcp-a"],
                &[Referral, BehavioralHealth],
            )],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent").by("ref"),
        ),
        row(
            "r6-psy-label-in-referral-without-bh",
            res("ServiceRequest").referral().labels(&["PSY"]),
            mcp_a(),
            vec![referral("ref", &["mcp-a"])],
            ctx(Purpose::Referral),
            deny(
                "R6-behavioral-health",
                "deny.behavioral-health-requires-consent",
            ),
        ),
        row(
            "r6-hiv-label-roi-health-only",
            res("Observation").labels(&["HIV"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health])],
            ctx(CareCoordination),
            deny("R6-hiv", "deny.hiv-requires-consent"),
        ),
        row(
            "r6-hiv-label-roi-with-hiv",
            res("Observation").labels(&["HIV"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health, Hiv])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r6-sex-label-roi-health-only",
            res("Condition").labels(&["SEX"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health])],
            ctx(CareCoordination),
            deny("R6-reproductive", "deny.reproductive-requires-consent"),
        ),
        row(
            "r6-sex-label-roi-with-reproductive",
            res("Condition").labels(&["SEX"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health, Reproductive])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r6-std-label-roi-health-only",
            res("Condition").labels(&["STD"]),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Health])],
            ctx(CareCoordination),
            deny("R6-reproductive", "deny.reproductive-requires-consent"),
        ),
        row(
            "r6-std-label-in-network-encounter",
            res("Encounter").labels(&["STD"]),
            compass(),
            vec![],
            network(Notification),
            deny("R6-reproductive", "deny.reproductive-requires-consent"),
        ),
        row(
            "r6-sdv-label-in-network",
            res("Encounter").labels(&["SDV"]),
            compass(),
            vec![],
            network(Notification),
            deny("R6-sdv", "deny.sdv-requires-release"),
        ),
        row(
            "r6-sdv-label-with-roi",
            res("Encounter").labels(&["SDV"]),
            compass(),
            vec![roi("roi", &["ecm-compass"], &[Health])],
            network(Notification),
            permit("R3", "permit.plan-network"),
        ),
        row(
            "r6-unknown-label-kept-but-unruled",
            res("Encounter").labels(&["XYZ"]),
            compass(),
            vec![],
            network(Notification),
            permit("R3", "permit.plan-network"),
        ),
        row(
            "r6-veto-wins-over-several-permits",
            res("Encounter").labels(&["ETH"]),
            compass(),
            vec![roi("roi", &["ecm-compass"], &[Health, SubstanceUse])],
            network(Notification),
            deny("R6-part2", "deny.part2-requires-written-consent"),
        ),
        // ---- R9 Family Maintenance: the family decides who joins the CFT
        row(
            "r9-fm-cft-without-release-is-denied",
            res("Appointment"),
            compass(),
            vec![],
            family_maintenance(CareCoordination),
            deny(
                "R9-family-maintenance-cft",
                "deny.family-maintenance-cft-requires-family-release",
            ),
        ),
        row(
            "r9-fm-cft-social-worker-release-is-not-the-familys",
            res("Appointment"),
            compass(),
            vec![roi("roi", &["ecm-compass"], &[Case]).by_role(GrantorRole::SocialWorker)],
            family_maintenance(CareCoordination),
            deny(
                "R9-family-maintenance-cft",
                "deny.family-maintenance-cft-requires-family-release",
            ),
        ),
        row(
            "r9-fm-cft-parent-release-permits",
            res("Appointment"),
            compass(),
            vec![roi("roi", &["ecm-compass"], &[Case]).by_role(GrantorRole::Parent)],
            family_maintenance(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r9-fm-cft-parent-release-for-another-provider",
            res("Appointment"),
            compass(),
            vec![roi("roi", &["ecm-bridges"], &[Case]).by_role(GrantorRole::Parent)],
            family_maintenance(CareCoordination),
            deny(
                "R9-family-maintenance-cft",
                "deny.family-maintenance-cft-requires-family-release",
            ),
        ),
        row(
            "r9-removal-case-cft-social-worker-release-permits",
            res("Appointment"),
            compass(),
            vec![roi("roi", &["ecm-compass"], &[Case]).by_role(GrantorRole::SocialWorker)],
            network(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r9-fm-case-details-follow-r5",
            res("EpisodeOfCare"),
            compass(),
            vec![roi("roi", &["ecm-compass"], &[Case]).by_role(GrantorRole::SocialWorker)],
            family_maintenance(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        row(
            "r9-fm-county-itself-is-not-gated",
            res("Appointment"),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Case]).by_role(GrantorRole::SocialWorker)],
            family_maintenance(CareCoordination),
            permit("R5", "permit.release-of-information").by("roi"),
        ),
        // ---- R7 placement address
        row(
            "r7-referral-patient-to-ecm-is-masked",
            res("Patient").referral().placement(),
            compass(),
            vec![referral("ref", &["ecm-compass"])],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent").masked(),
        ),
        row(
            "r7-same-county-sees-address",
            res("Patient").placement(),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Case])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r7-placement-release-unmasks",
            res("Patient").referral().placement(),
            compass(),
            vec![
                referral("ref", &["ecm-compass"]),
                roi("roi", &["ecm-compass"], &[Placement]),
            ],
            ctx(Purpose::Referral),
            permit("R2", "permit.referral-consent"),
        ),
        row(
            "r7-other-county-masked",
            res("Patient").placement(),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case])],
            ctx(CareCoordination),
            permit("R5", "permit.release-of-information").masked(),
        ),
        row(
            "r7-mask-does-not-permit",
            res("Patient").placement(),
            kern(),
            vec![],
            ctx(CareCoordination),
            r1(),
        ),
        row(
            "r7-unknown-source-county-masks",
            res("Patient").placement(),
            fresno(),
            vec![roi("roi", &["county-fresno"], &[Case])],
            Context {
                source_county: None,
                ..ctx(CareCoordination)
            },
            permit("R5", "permit.release-of-information").masked(),
        ),
        // ---- R8 periods and withdrawal
        row(
            "r8-expired",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).end_at(now() - Duration::days(1))],
            ctx(Pull),
            r1(),
        ),
        row(
            "r8-end-exactly-now-is-expired",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).end_at(now())],
            ctx(Pull),
            r1(),
        ),
        row(
            "r8-end-just-after-now",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).end_at(now() + s)],
            ctx(Pull),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r8-not-yet-started",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).start_at(now() + Duration::days(1))],
            ctx(Pull),
            r1(),
        ),
        row(
            "r8-starts-exactly-now",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).start_at(now())],
            ctx(Pull),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r8-withdrawn-before-now",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).withdrawn(now() - s)],
            ctx(Pull),
            r1(),
        ),
        row(
            "r8-withdrawn-exactly-now",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).withdrawn(now())],
            ctx(Pull),
            r1(),
        ),
        row(
            "r8-withdrawn-after-now",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).withdrawn(now() + s)],
            ctx(Pull),
            permit("R5", "permit.release-of-information"),
        ),
        row(
            "r8-recorded-after-now",
            res("EpisodeOfCare"),
            kern(),
            vec![roi("roi", &["county-kern"], &[Case]).recorded(now() + s)],
            ctx(Pull),
            r1(),
        ),
        row(
            "r8-withdrawn-one-valid-other-remains",
            res("EpisodeOfCare"),
            kern(),
            vec![
                roi("roi-1", &["county-kern"], &[Case]).withdrawn(now() - s),
                roi("roi-2", &["county-kern"], &[Case]),
            ],
            ctx(Pull),
            permit("R5", "permit.release-of-information").by("roi-2"),
        ),
        // ---- input limits
        row(
            "limit-too-many-labels",
            res("Encounter").labels(&["N"; 65]),
            ops(),
            vec![],
            ctx(Pull),
            deny("R1", "deny.input-limit"),
        ),
    ]
}

#[test]
fn decision_table() {
    let policy = Policy::default_policy();
    let rows = rows();
    assert!(rows.len() >= 60, "only {} rows", rows.len());
    let mut names = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for r in &rows {
        assert!(names.insert(r.name), "duplicate row name {}", r.name);
        let d = policy.decide(&r.res, &r.to, &r.consents, &r.ctx);
        let e = &r.expect;
        let mut bad = Vec::new();
        if d.effect != e.effect {
            bad.push(format!("effect {:?} != {:?}", d.effect, e.effect));
        }
        if d.rule != e.rule {
            bad.push(format!("rule {} != {}", d.rule, e.rule));
        }
        if d.reason != e.reason {
            bad.push(format!("reason {} != {}", d.reason, e.reason));
        }
        if let Some(c) = e.consent {
            if d.consent_id.as_deref() != c {
                bad.push(format!("consent {:?} != {:?}", d.consent_id, c));
            }
        }
        let mut want = e.obligations.clone();
        want.sort();
        if d.obligations != want {
            bad.push(format!("obligations {:?} != {:?}", d.obligations, want));
        }
        if d.effect == Effect::Deny && !d.obligations.is_empty() {
            bad.push("obligations on a deny".into());
        }
        if !bad.is_empty() {
            failures.push(format!("{}: {}", r.name, bad.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn part2_disclosure_lists_both_consents_for_audit() {
    let r = rows()
        .into_iter()
        .find(|r| r.name == "r6-part2-and-roi-permit-with-notice")
        .unwrap();
    let d = Policy::default_policy().decide(&r.res, &r.to, &r.consents, &r.ctx);
    assert_eq!(d.consent_ids(), vec!["p2", "roi"]);
}

#[test]
fn every_rule_is_exercised_by_the_table() {
    let policy = Policy::default_policy();
    let mut deciding = std::collections::BTreeSet::new();
    for r in rows() {
        deciding.insert(policy.decide(&r.res, &r.to, &r.consents, &r.ctx).rule);
    }
    for id in policy.rule_ids() {
        if id == "R8" || id == "R7" {
            continue; // R8 filters consents, R7 only adds obligations: covered by their rows
        }
        assert!(deciding.contains(id), "no row decided by {id}");
    }
}

#[test]
fn every_decision_lists_every_rule_vote() {
    let policy = Policy::default_policy();
    let r = &rows()[0];
    let d = policy.decide(&r.res, &r.to, &r.consents, &r.ctx);
    let voted: Vec<&str> = d.votes.iter().map(|v| v.rule.as_str()).collect();
    let mut ids = policy.rule_ids();
    ids.pop(); // the default rule R1 does not vote
    assert_eq!(voted, ids);
}

// ---------- grantor validity ----------

struct GrantorRow {
    name: &'static str,
    kind: ConsentKind,
    categories: &'static [Category],
    grantor: GrantorRole,
    age: i32,
    /// None = valid; Some(law) = refused, citing that law.
    refused_citing: Option<&'static str>,
}

fn g(
    name: &'static str,
    kind: ConsentKind,
    categories: &'static [Category],
    grantor: GrantorRole,
    age: i32,
    refused_citing: Option<&'static str>,
) -> GrantorRow {
    GrantorRow {
        name,
        kind,
        categories,
        grantor,
        age,
        refused_citing,
    }
}

fn grantor_rows() -> Vec<GrantorRow> {
    use ConsentKind::*;
    use GrantorRole::*;
    vec![
        // 18+: the youth only
        g(
            "adult-nmd-grants-case",
            ReleaseOfInformation,
            &[Case, Health],
            Nmd,
            19,
            None,
        ),
        g(
            "adult-youth-grants-all",
            ReleaseOfInformation,
            &[
                Referral,
                Case,
                Placement,
                Health,
                BehavioralHealth,
                SubstanceUse,
                Hiv,
                Reproductive,
            ],
            Youth,
            22,
            None,
        ),
        g(
            "adult-parent-refused",
            ReleaseOfInformation,
            &[Case],
            Parent,
            18,
            Some("164.502(g)"),
        ),
        g(
            "adult-sw-refused-referral",
            ReferralVerbal,
            &[],
            SocialWorker,
            20,
            Some("164.502(g)"),
        ),
        g(
            "adult-court-refused-bh",
            ReleaseOfInformation,
            &[BehavioralHealth],
            Court,
            19,
            Some("164.502(g)"),
        ),
        // 12-17
        g(
            "minor-youth-grants-case",
            ReleaseOfInformation,
            &[Case, Placement, Health],
            Youth,
            15,
            None,
        ),
        g(
            "minor-sw-refused-referral",
            ReferralVerbal,
            &[Referral],
            SocialWorker,
            15,
            Some("Guide for CWS, Consent"),
        ),
        g(
            "minor-court-refused-referral",
            ReferralVerbal,
            &[],
            Court,
            13,
            Some("Guide for CWS, Consent"),
        ),
        g(
            "minor-youth-grants-referral",
            ReferralVerbal,
            &[Referral],
            Youth,
            16,
            None,
        ),
        g(
            "minor-parent-grants-referral",
            ReferralVerbal,
            &[Referral, Case],
            Parent,
            14,
            None,
        ),
        g(
            "minor-sw-refused-roi-covering-referral",
            ReleaseOfInformation,
            &[Case, Referral],
            SocialWorker,
            15,
            Some("Guide for CWS, Consent"),
        ),
        g(
            "minor-sw-grants-case",
            ReleaseOfInformation,
            &[Case, Placement, Health],
            SocialWorker,
            15,
            None,
        ),
        g(
            "minor-guardian-grants-referral",
            ReferralVerbal,
            &[Referral],
            LegalGuardian,
            12,
            None,
        ),
        g(
            "minor-youth-grants-bh",
            ReleaseOfInformation,
            &[BehavioralHealth],
            Youth,
            13,
            None,
        ),
        g(
            "minor-parent-grants-bh-domain-table",
            ReleaseOfInformation,
            &[BehavioralHealth],
            Parent,
            13,
            None,
        ),
        g(
            "minor-court-grants-bh",
            ReleaseOfInformation,
            &[BehavioralHealth],
            Court,
            17,
            None,
        ),
        g(
            "minor-youth-grants-substance-use",
            Part2Written,
            &[SubstanceUse],
            Youth,
            14,
            None,
        ),
        g(
            "minor-parent-refused-substance-use",
            ReleaseOfInformation,
            &[SubstanceUse],
            Parent,
            14,
            Some("FC 6929"),
        ),
        g(
            "minor-sw-refused-part2-by-kind",
            Part2Written,
            &[],
            SocialWorker,
            16,
            Some("FC 6929"),
        ),
        g(
            "minor-guardian-refused-reproductive",
            ReleaseOfInformation,
            &[Reproductive],
            LegalGuardian,
            16,
            Some("FC 6925"),
        ),
        g(
            "minor-youth-grants-reproductive",
            ReleaseOfInformation,
            &[Reproductive],
            Youth,
            16,
            None,
        ),
        g(
            "minor-court-refused-hiv",
            ReleaseOfInformation,
            &[Hiv],
            Court,
            12,
            Some("HSC 121020"),
        ),
        g(
            "minor-youth-grants-hiv",
            ReleaseOfInformation,
            &[Hiv],
            Youth,
            12,
            None,
        ),
        g(
            "minor-nmd-role-refused",
            ReleaseOfInformation,
            &[Case],
            Nmd,
            17,
            Some("WIC 827"),
        ),
        // under 12
        g(
            "child-parent-grants-health",
            ReleaseOfInformation,
            &[Case, Placement, Health, BehavioralHealth],
            Parent,
            8,
            None,
        ),
        g(
            "child-sw-refused-referral",
            ReferralVerbal,
            &[],
            SocialWorker,
            3,
            Some("Guide for CWS, Consent"),
        ),
        g(
            "child-court-refused-referral",
            ReferralVerbal,
            &[Referral],
            Court,
            9,
            Some("Guide for CWS, Consent"),
        ),
        g(
            "child-youth-refused-referral",
            ReferralVerbal,
            &[],
            Youth,
            10,
            Some("Guide for CWS, Consent"),
        ),
        g(
            "child-parent-grants-referral",
            ReferralVerbal,
            &[],
            Parent,
            6,
            None,
        ),
        g(
            "child-guardian-grants-referral",
            ReferralVerbal,
            &[Referral],
            LegalGuardian,
            2,
            None,
        ),
        g(
            "child-youth-refused-case",
            ReleaseOfInformation,
            &[Case],
            Youth,
            11,
            Some("WIC 827"),
        ),
        g(
            "child-court-grants-substance-use",
            Part2Written,
            &[SubstanceUse],
            Court,
            11,
            None,
        ),
        g(
            "child-parent-grants-hiv",
            ReleaseOfInformation,
            &[Hiv],
            Parent,
            10,
            None,
        ),
        g(
            "child-parent-refused-reproductive",
            ReleaseOfInformation,
            &[Reproductive],
            Parent,
            11,
            Some("FC 6925"),
        ),
        g(
            "child-youth-grants-reproductive",
            ReleaseOfInformation,
            &[Reproductive],
            Youth,
            11,
            None,
        ),
        g(
            "child-youth-refused-bh",
            ReleaseOfInformation,
            &[BehavioralHealth],
            Youth,
            11,
            Some("WIC 5328"),
        ),
    ]
}

#[test]
fn grantor_table() {
    let consent_date = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
    let mut failures = Vec::new();
    for r in grantor_rows() {
        // born the day after the birthday boundary would change the band: exact age r.age
        let birth = NaiveDate::from_ymd_opt(2026 - r.age, 3, 2).unwrap();
        let got = validate_grantor(r.kind, r.categories, r.grantor, birth, consent_date);
        match (&got, r.refused_citing) {
            (Ok(()), None) => {}
            (Err(e), Some(law)) if e.to_string().contains(law) => {}
            _ => failures.push(format!(
                "{}: got {:?}, want {:?}",
                r.name, got, r.refused_citing
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn grantor_consent_before_birth_is_refused() {
    let birth = NaiveDate::from_ymd_opt(2020, 1, 2).unwrap();
    let on = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    assert_eq!(
        validate_grantor(
            ConsentKind::ReleaseOfInformation,
            &[Category::Case],
            GrantorRole::Parent,
            birth,
            on
        ),
        Err(GrantorError::ConsentBeforeBirth)
    );
}

#[test]
fn grantor_band_turns_on_the_birthday() {
    // 12th birthday on the consent date: the youth may grant case; the day before, not.
    let birth = NaiveDate::from_ymd_opt(2014, 3, 2).unwrap();
    let on = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
    let day_before = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let k = ConsentKind::ReleaseOfInformation;
    assert!(validate_grantor(k, &[Category::Case], GrantorRole::Youth, birth, on).is_ok());
    assert!(validate_grantor(k, &[Category::Case], GrantorRole::Youth, birth, day_before).is_err());
}

/// The shipped policy's view rows, as a table: who sees the eligibility
/// answer whole (`R10-county-of-child`: the child's county only — the
/// county of the case; not another county, a plan, a provider, a hospital;
/// an operator's whole view is R0-operator's, decided by the caller).
#[test]
fn view_rows_of_the_shipped_policy() {
    let policy = Policy::default_policy();
    let no_case = Context {
        source_county: None,
        ..ctx(Purpose::Pull)
    };
    let rows: Vec<(&str, Recipient, Context, Option<&str>)> = vec![
        (
            "the case's county",
            fresno(),
            ctx(Purpose::Pull),
            Some("R10-county-of-child"),
        ),
        ("another county", kern(), ctx(Purpose::Pull), None),
        ("a county with no case on file", fresno(), no_case, None),
        ("the member's plan", mcp_a(), network(Purpose::Pull), None),
        ("another plan", mcp_b(), ctx(Purpose::Pull), None),
        (
            "the assigned provider",
            compass(),
            network(Purpose::Pull),
            None,
        ),
        ("a hospital", hospital(), ctx(Purpose::Pull), None),
        ("an operator", ops(), ctx(Purpose::Pull), None),
    ];
    let mut failures = Vec::new();
    for (name, to, c, want) in rows {
        let got = policy.whole_view(Answer::Eligibility, PATIENT, &to, &c);
        if got.as_ref().map(|g| g.rule.as_str()) != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
        if let Some(g) = got {
            assert_eq!(g.reason, "permit.case-county", "{name}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
