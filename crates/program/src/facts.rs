//! One child's facts, as the eligibility engine reads them.
//!
//! The shapes are those of the county case events (DESIGN.md "County case events"): `child`,
//! `enrollment`, `placement`, `case`, `history`, plus `other` for facts that come from elsewhere
//! (ADT feeds, behavioral health, CCS, program enrollments). JSON is camelCase; **unknown fields are
//! rejected** so a misspelt flag cannot silently read as "absent".
//!
//! [`Facts::from_json`] is the bounded entry point for untrusted input: it caps the byte size and the
//! list lengths ([`MAX_FACTS_BYTES`], [`MAX_ADT_VISITS`], [`MAX_SOCIAL_FACTORS`]) and its errors name a
//! JSON path or a count, never a value.

use chrono::{DateTime, NaiveDate};
use serde::{Deserialize, Deserializer, Serialize};

/// Largest JSON document [`Facts::from_json`] accepts.
pub const MAX_FACTS_BYTES: usize = 512 * 1024;
/// Most ADT visits accepted in `other.adtVisits`.
pub const MAX_ADT_VISITS: usize = 2_000;
/// Most entries accepted in `other.complexSocialFactors`.
pub const MAX_SOCIAL_FACTORS: usize = 64;

/// Why facts were rejected. Messages carry positions and counts only.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The document is over [`MAX_FACTS_BYTES`].
    #[error("facts document is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Size of the document.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list is over its limit.
    #[error("{field} has {count} entries; the limit is {max}")]
    TooMany {
        /// JSON path of the list.
        field: &'static str,
        /// Entries present.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid JSON for the facts shape (line and column; serde's message names fields, not values).
    #[error("facts are not valid at line {line}, column {column}: {category}")]
    Invalid {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's error category (syntax, data, eof).
        category: &'static str,
    },
}

/// One child's facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Facts {
    /// The child.
    pub child: Child,
    /// Current Medi-Cal enrollment, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
    /// Current placement, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// The child welfare case, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<Case>,
    /// Foster care history, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// Facts from other sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<OtherFacts>,
}

/// The child (envelope `child` of the case events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Child {
    /// County client id.
    pub client_id: String,
    /// Medi-Cal CIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cin: Option<String>,
    /// Name (never logged, never used by the rules).
    pub name: PersonName,
    /// Date of birth.
    pub birth_date: NaiveDate,
    /// Sex as recorded by the county.
    pub sex: String,
    /// Whether the Indian Child Welfare Act applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icwa: Option<bool>,
}

/// A person's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersonName {
    /// Given names.
    #[serde(default)]
    pub given: Vec<String>,
    /// Family name.
    pub family: String,
}

/// Medi-Cal enrollment (`enrollment.updated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Enrollment {
    /// Medi-Cal CIN.
    pub cin: String,
    /// Aid code (Appendix D of seed 003 for the child welfare ones).
    pub aid_code: String,
    /// Managed care plan code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_code: Option<String>,
    /// Fee-for-service (not in a managed care plan).
    pub fee_for_service: bool,
    /// Medi-Cal with a share of cost.
    pub share_of_cost: bool,
    /// Date the enrollment takes effect.
    pub effective_on: NaiveDate,
}

/// Placement kinds (`placement.changed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementKind {
    /// Resource family home.
    ResourceFamily,
    /// Relative or NREFM.
    Relative,
    /// Foster family agency.
    Ffa,
    /// Short-term residential therapeutic program.
    Strtp,
    /// Transitional housing placement.
    Thp,
    /// Home of parent.
    HomeOfParent,
    /// Anything else.
    Other,
}

/// Current placement (`placement.changed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    /// Kind of placement.
    pub kind: PlacementKind,
    /// County of the placement.
    pub county: String,
    /// Start date.
    pub start_date: NaiveDate,
    /// Placed outside the county of jurisdiction.
    pub out_of_county: bool,
    /// The placement is foster care (24-hour out-of-home care, WIC 11400(f)).
    pub in_foster_care: bool,
}

/// Case components (`case.opened`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseComponent {
    /// Emergency response.
    EmergencyResponse,
    /// Family reunification.
    FamilyReunification,
    /// Family Maintenance (WIC 16506).
    FamilyMaintenance,
    /// Permanent placement.
    PermanentPlacement,
    /// Prevention.
    Prevention,
    /// Adoption Assistance Program (WIC 16120).
    AdoptionAssistance,
    /// Extended foster care (non-minor dependents, 18–21).
    ExtendedFosterCare,
}

/// The child welfare case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    /// County case id.
    pub case_id: String,
    /// Service component.
    pub component: CaseComponent,
    /// Court-ordered services.
    pub court_ordered: bool,
    /// Date opened.
    pub opened_on: NaiveDate,
    /// Date closed, if closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_on: Option<NaiveDate>,
}

/// Foster care history (`foster_care.history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct History {
    /// In foster care on (or after) the 18th birthday.
    #[serde(rename = "inFosterCareOn18thBirthday")]
    pub in_foster_care_on_18th_birthday: bool,
    /// Last day in foster care, if the youth has left it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_foster_care_end: Option<NaiveDate>,
    /// Eligible for or in California's Adoption Assistance Program.
    pub adoption_assistance: bool,
    /// Adoption assistance continued past 18 for a mental or physical disability (WIC 16120(d)).
    pub adoption_assistance_disability: bool,
    /// Last day Family Maintenance services were received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_maintenance_last_service_on: Option<NaiveDate>,
    /// The foster care recorded in this history was in another state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_state_foster_care: Option<bool>,
}

/// ADT visit kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitKind {
    /// Emergency department visit.
    Ed,
    /// Inpatient stay.
    Inpatient,
}

/// One hospital visit seen on an ADT feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdtVisit {
    /// ED or inpatient.
    pub kind: VisitKind,
    /// Unplanned (inpatient stays count for POF 2 only when unplanned).
    pub unplanned: bool,
    /// Start: `YYYY-MM-DD` or RFC 3339; the date as written is used.
    #[serde(deserialize_with = "date_or_datetime")]
    pub start: NaiveDate,
    /// End, if known.
    #[serde(
        default,
        deserialize_with = "opt_date_or_datetime",
        skip_serializing_if = "Option::is_none"
    )]
    pub end: Option<NaiveDate>,
    /// Visit number (PV1-19); the same number on an ED visit and an admission is one episode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_id: Option<String>,
    /// The admission came through the ED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ed: Option<bool>,
}

/// Facts from sources other than the county case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtherFacts {
    /// ED visits and inpatient stays (POF 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adt_visits: Option<Vec<AdtVisit>>,
    /// Meets SMHS access criteria (POF 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smhs_eligible: Option<bool>,
    /// Meets DMC-ODS or DMC access criteria (POF 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmc_eligible: Option<bool>,
    /// Release (or expected release) from a correctional facility (POF 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correctional_release_on: Option<NaiveDate>,
    /// Enrolled in CCS or CCS Whole Child Model (POF 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ccs_enrolled: Option<bool>,
    /// Complex social factors, as short codes (POF 7); only the count is used and reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complex_social_factors: Option<Vec<String>>,
    /// Experiencing homelessness (POF 1b).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homeless: Option<bool>,
    /// Receiving hospice (excluded from ECM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hospice: Option<bool>,
    /// Enrolled in the Family Mosaic Project (excluded from ECM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_mosaic: Option<bool>,
    /// Enrolled in a 1915(c) waiver (ECM or the waiver, not both).
    #[serde(
        default,
        rename = "waiver1915c",
        skip_serializing_if = "Option::is_none"
    )]
    pub waiver_1915c: Option<bool>,
    /// Enrolled in MCP Complex Care Management (not at the same time as ECM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complex_care_management: Option<bool>,
    /// Pregnant or within 12 months postpartum (POF 9 needs review).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pregnant_or_postpartum: Option<bool>,
}

fn parse_date_or_datetime(text: &str) -> Option<NaiveDate> {
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(d);
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.date_naive())
}

fn date_or_datetime<'de, D: Deserializer<'de>>(de: D) -> Result<NaiveDate, D::Error> {
    let text = String::deserialize(de)?;
    parse_date_or_datetime(&text)
        .ok_or_else(|| serde::de::Error::custom("expected YYYY-MM-DD or an RFC 3339 date-time"))
}

fn opt_date_or_datetime<'de, D: Deserializer<'de>>(de: D) -> Result<Option<NaiveDate>, D::Error> {
    match Option::<String>::deserialize(de)? {
        None => Ok(None),
        Some(text) => parse_date_or_datetime(&text).map(Some).ok_or_else(|| {
            serde::de::Error::custom("expected YYYY-MM-DD or an RFC 3339 date-time")
        }),
    }
}

impl Facts {
    /// Parses and bounds untrusted facts JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, FactsError> {
        if bytes.len() > MAX_FACTS_BYTES {
            return Err(FactsError::TooLarge {
                len: bytes.len(),
                max: MAX_FACTS_BYTES,
            });
        }
        let facts: Facts = serde_json::from_slice(bytes).map_err(|e| FactsError::Invalid {
            line: e.line(),
            column: e.column(),
            category: match e.classify() {
                serde_json::error::Category::Io => "io",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "data",
                serde_json::error::Category::Eof => "eof",
            },
        })?;
        facts.check_limits()?;
        Ok(facts)
    }

    /// Checks list lengths against the limits (already done by [`Facts::from_json`]).
    pub fn check_limits(&self) -> Result<(), FactsError> {
        if let Some(other) = &self.other {
            let visits = other.adt_visits.as_ref().map_or(0, Vec::len);
            if visits > MAX_ADT_VISITS {
                return Err(FactsError::TooMany {
                    field: "other.adtVisits",
                    count: visits,
                    max: MAX_ADT_VISITS,
                });
            }
            let factors = other.complex_social_factors.as_ref().map_or(0, Vec::len);
            if factors > MAX_SOCIAL_FACTORS {
                return Err(FactsError::TooMany {
                    field: "other.complexSocialFactors",
                    count: factors,
                    max: MAX_SOCIAL_FACTORS,
                });
            }
        }
        Ok(())
    }
}
