//! The facts the engine decides over: who receives, what is disclosed, which
//! consents exist, and the moment and purpose of the disclosure.
//!
//! These types carry identifiers and codes only. Nothing here is ever put into
//! an error message or a decision reason except ids, codes and counts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The kind of a configured organization (configuration `organizations.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgKind {
    /// A county child welfare agency.
    County,
    /// A Medi-Cal managed care plan.
    Mcp,
    /// An Enhanced Care Management provider.
    EcmProvider,
    /// A hospital or HIE sending ADT messages.
    AdtSource,
    /// Gateway operations staff; every read is audited by the caller.
    Operator,
    /// A community referrer (hospital, PCP, CBO, school …): receives only
    /// what a rule gives the organization that made a referral (R4).
    Referrer,
}

/// The organization a resource would be disclosed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Configuration id of the organization (`Organization/{org_id}`).
    pub org_id: String,
    /// Its kind.
    pub kind: OrgKind,
    /// For a county: the county it serves (e.g. `Fresno`).
    #[serde(default)]
    pub county: Option<String>,
    /// For an ECM provider: the MCPs it is contracted with.
    #[serde(default)]
    pub mcp_network: Vec<String>,
}

/// Why the disclosure happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Sending a referral to an MCP or ECM provider.
    Referral,
    /// Ongoing care coordination (Task updates, care plans).
    CareCoordination,
    /// Event notifications (ADT).
    Notification,
    /// A recipient reading through the FHIR API.
    Pull,
}

/// The kind of information a resource holds; the same codes consents are
/// scoped by (`consent.recorded` `categories`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The referral itself (minimal Patient, ServiceRequest, Task).
    Referral,
    /// Child welfare case details (WIC 827).
    Case,
    /// Placement details, including the placement address.
    Placement,
    /// Physical health information.
    Health,
    /// Mental / behavioral health (WIC 5328, HSC 124260).
    BehavioralHealth,
    /// Substance use disorder treatment records (42 CFR Part 2).
    SubstanceUse,
    /// HIV test results (HSC 120975 ff., HSC 121020).
    Hiv,
    /// Pregnancy and reproductive health (FC 6925).
    Reproductive,
}

impl Category {
    /// Every category, in a fixed order.
    pub const ALL: [Category; 8] = [
        Category::Referral,
        Category::Case,
        Category::Placement,
        Category::Health,
        Category::BehavioralHealth,
        Category::SubstanceUse,
        Category::Hiv,
        Category::Reproductive,
    ];

    /// The snake_case code used on the wire.
    pub fn code(self) -> &'static str {
        match self {
            Category::Referral => "referral",
            Category::Case => "case",
            Category::Placement => "placement",
            Category::Health => "health",
            Category::BehavioralHealth => "behavioral_health",
            Category::SubstanceUse => "substance_use",
            Category::Hiv => "hiv",
            Category::Reproductive => "reproductive",
        }
    }

    /// The default category for a resource type, used when the caller does not
    /// say. Unknown types count as `case` (juvenile case file, WIC 827), which
    /// only a release of information opens.
    pub fn default_for(resource_type: &str, referral_package: bool) -> Category {
        if referral_package {
            return Category::Referral;
        }
        match resource_type {
            "ServiceRequest" | "Task" => Category::Referral,
            "Encounter"
            | "Condition"
            | "CarePlan"
            | "Observation"
            | "Procedure"
            | "QuestionnaireResponse"
            | "DocumentReference"
            | "ClinicalImpression"
            | "Goal"
            | "CareTeam"
            | "DiagnosticReport"
            | "MedicationRequest"
            | "MedicationStatement"
            | "AllergyIntolerance"
            | "Immunization" => Category::Health,
            "Location" => Category::Placement,
            _ => Category::Case,
        }
    }
}

/// v3-ActCode information sensitivity codes as found in `meta.security`.
///
/// [`Label::from_code`] never fails: unknown codes are kept as
/// [`Label::Other`] with their original text, so a label is never dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Label {
    /// `ETH` substance abuse information sensitivity (42 CFR Part 2).
    Eth,
    /// `ETHUD` alcohol or drug abuse information sensitivity.
    Ethud,
    /// `OPIOIDUD` opioid use disorder information sensitivity.
    Opioidud,
    /// `SUD` substance use disorder information sensitivity.
    Sud,
    /// `PSY` psychiatry disorder information sensitivity.
    Psy,
    /// `PSYTHPN` psychotherapy note information sensitivity.
    Psythpn,
    /// `MH` mental health information sensitivity.
    Mh,
    /// `BH` behavioral health information sensitivity.
    Bh,
    /// `HIV` HIV/AIDS information sensitivity.
    Hiv,
    /// `SEX` sexuality and reproductive health information sensitivity.
    Sex,
    /// `STD` sexually transmitted disease information sensitivity.
    Std,
    /// `SDV` sexual assault, abuse or domestic violence information sensitivity.
    Sdv,
    /// Any other code, kept verbatim.
    Other(String),
}

impl Label {
    /// Parses a code; matching is ASCII case-insensitive so that a feed's
    /// lower-case `eth` still counts (labels are never weakened).
    pub fn from_code(code: &str) -> Label {
        let c = code.trim().to_ascii_uppercase();
        match c.as_str() {
            "ETH" => Label::Eth,
            "ETHUD" => Label::Ethud,
            "OPIOIDUD" => Label::Opioidud,
            "SUD" => Label::Sud,
            "PSY" => Label::Psy,
            "PSYTHPN" => Label::Psythpn,
            "MH" => Label::Mh,
            "BH" => Label::Bh,
            "HIV" => Label::Hiv,
            "SEX" => Label::Sex,
            "STD" => Label::Std,
            "SDV" => Label::Sdv,
            _ => Label::Other(code.to_string()),
        }
    }

    /// The canonical (upper-case) code.
    pub fn code(&self) -> String {
        match self {
            Label::Eth => "ETH".into(),
            Label::Ethud => "ETHUD".into(),
            Label::Opioidud => "OPIOIDUD".into(),
            Label::Sud => "SUD".into(),
            Label::Psy => "PSY".into(),
            Label::Psythpn => "PSYTHPN".into(),
            Label::Mh => "MH".into(),
            Label::Bh => "BH".into(),
            Label::Hiv => "HIV".into(),
            Label::Sex => "SEX".into(),
            Label::Std => "STD".into(),
            Label::Sdv => "SDV".into(),
            Label::Other(s) => s.trim().to_ascii_uppercase(),
        }
    }
}

/// What the engine needs to know about one resource about to leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceFacts {
    /// FHIR resource type (`Encounter`, `Task` …).
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// Id of the Patient the resource is about; only consents of this patient count.
    pub patient_id: String,
    /// `meta.security` codes as received. Never removed or weakened.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The kind of information; when `None`, [`Category::default_for`] decides.
    #[serde(default)]
    pub category: Option<Category>,
    /// Part of a referral package: minimal Patient, ServiceRequest, Task.
    #[serde(default)]
    pub referral_package: bool,
    /// Only Task status / owner / businessStatus, no clinical detail.
    #[serde(default)]
    pub status_only: bool,
    /// Holds a foster youth's placement address (Patient.address …).
    #[serde(default)]
    pub contains_placement_address: bool,
    /// For a referral's own resources (its ServiceRequest and Task): who
    /// made that referral and to whom. `None` for anything else (a Patient,
    /// an Encounter …), which no single referral owns.
    #[serde(default)]
    pub referral: Option<ReferralFacts>,
    /// For a `Consent` resource that is an active written authorization (a
    /// release of information or a 42 CFR Part 2 consent): the
    /// organizations it names as recipients (its actors). Its record may go
    /// back to a plan it names (rule R13).
    #[serde(default)]
    pub consent_recipients: Vec<String>,
}

/// The referral a ServiceRequest or Task belongs to. The referrer and the
/// self-referral are properties of each referral, never of the member: a
/// second referral for the same member by another organization changes
/// nothing about the first one's status recipient or its readers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralFacts {
    /// The organization that made the referral (`ServiceRequest.requester`,
    /// `Task.requester`): the one that learns its status (rule R4).
    #[serde(default)]
    pub referrer: Option<String>,
    /// The referral was a self-referral: the member, a parent, a legal
    /// guardian or a caregiver referred themselves, so no referral consent
    /// was needed (Guide for CWS, section Consent).
    #[serde(default)]
    pub self_referral: bool,
    /// The organizations the referral was made to: the ServiceRequest's
    /// performer, the Task's owner and authorizing MCP. A self-referral opens
    /// the referral to these only (rule R2).
    #[serde(default)]
    pub made_to: Vec<String>,
    /// The ECM providers the plan moved the referral away from (the Task
    /// version that reassigned it names its previous owner): a former
    /// provider is told of the change (rule R12).
    #[serde(default)]
    pub former_owners: Vec<String>,
}

impl ResourceFacts {
    /// The category the engine uses: the given one or the resource-type default.
    pub fn effective_category(&self) -> Category {
        self.category
            .unwrap_or_else(|| Category::default_for(&self.resource_type, self.referral_package))
    }
}

/// The kind of a recorded consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentKind {
    /// Verbal consent to a referral, given by the youth or family and recorded
    /// by the SW (Guide for CWS, section Consent).
    ReferralVerbal,
    /// A signed release of information scoped to recipients, categories, period.
    ReleaseOfInformation,
    /// A 42 CFR Part 2 written consent naming the recipient.
    Part2Written,
}

impl ConsentKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ConsentKind; 3] = [
        ConsentKind::ReferralVerbal,
        ConsentKind::ReleaseOfInformation,
        ConsentKind::Part2Written,
    ];
}

/// Who granted a consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantorRole {
    /// The youth (a minor, or an adult former foster youth).
    Youth,
    /// A non-minor dependent (18–21, extended foster care), acting for themself.
    Nmd,
    /// A parent.
    Parent,
    /// A legal guardian.
    LegalGuardian,
    /// The county social worker (for a dependent).
    SocialWorker,
    /// The juvenile court.
    Court,
}

/// One consent as recorded through `consent.recorded` / `consent.withdrawn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// Consent id (`consentId`).
    pub id: String,
    /// Its kind.
    pub kind: ConsentKind,
    /// The Patient it concerns.
    pub patient_id: String,
    /// Who granted it.
    pub grantor_role: GrantorRole,
    /// Organization ids it names.
    pub recipients: Vec<String>,
    /// Categories it covers.
    pub categories: Vec<Category>,
    /// Start of the period (inclusive).
    pub start: DateTime<Utc>,
    /// End of the period (exclusive by default policy), if any.
    #[serde(default)]
    pub end: Option<DateTime<Utc>>,
    /// When it was withdrawn; from this instant on it counts for nothing.
    #[serde(default)]
    pub withdrawn_at: Option<DateTime<Utc>>,
    /// When the gateway recorded it.
    pub recorded_at: DateTime<Utc>,
}

impl ConsentRecord {
    /// Whether the consent names `org_id` as a recipient.
    pub fn names(&self, org_id: &str) -> bool {
        self.recipients.iter().any(|r| r == org_id)
    }

    /// Whether the consent covers `category`.
    pub fn covers(&self, category: Category) -> bool {
        self.categories.contains(&category)
    }
}

/// The situation of one disclosure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// The moment of disclosure; consents are evaluated at this instant.
    pub now: DateTime<Utc>,
    /// Why the resource is disclosed.
    pub purpose: Purpose,
    /// The ECM provider assigned to the member, if any.
    #[serde(default)]
    pub assigned_ecm: Option<String>,
    /// The member's MCP (organization id), if any.
    #[serde(default)]
    pub member_mcp: Option<String>,
    /// The organizations a self-referral of the member was made to (the
    /// plan and provider named as performer or owner of a self-referral's
    /// ServiceRequest or Task). A self-referral opens the member's minimal
    /// Patient (rule R2) to these organizations only — never to every MCP
    /// and ECM provider. The referral's own ServiceRequest and Task are
    /// decided on their [`ReferralFacts`] instead.
    #[serde(default)]
    pub self_referral_to: Vec<String>,
    /// The county that owns the case.
    #[serde(default)]
    pub source_county: Option<String>,
    /// The member's open CWS case is a Family Maintenance case (court or
    /// voluntary): the child lives at home and the family, not the SW or
    /// the court, decides who joins the Child and Family Team (seed 000).
    #[serde(default)]
    pub family_maintenance: bool,
    /// The member has an open CWS case (an active EpisodeOfCare): the
    /// county that owns it is told of each ECM referral's status (rule
    /// R11), whoever referred.
    #[serde(default)]
    pub case_open: bool,
}
