//! One child's facts, as the eligibility engine reads them.
//!
//! The shapes are those of the county case events (`docs/county.md` "Case events"): `child`,
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
    /// Not valid JSON for the facts shape: the field (a JSON path such as
    /// `enrollment.aidCode`), why (naming types and fields, never the value
    /// found), line and column.
    #[error("facts are not valid: {field}: {reason} (line {line}, column {column})")]
    Invalid {
        /// JSON path of the field (`.` for the document itself).
        field: String,
        /// What is wrong, without the value found.
        reason: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's error category (syntax, data, eof).
        category: &'static str,
    },
}

/// One child's facts. Only what the rules read is required: `child.birthDate`
/// and, when a section is present, the flags of that section the rules
/// decide on (`enrollment.aidCode`, `feeForService`, `shareOfCost`, …); ids,
/// names, `enrollment.cin` and `enrollment.effectiveOn` may be left out.
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
    /// County client id (not read by the rules).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Medi-Cal CIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cin: Option<String>,
    /// Name (never logged, never used by the rules).
    #[serde(default)]
    pub name: PersonName,
    /// Date of birth.
    pub birth_date: NaiveDate,
    /// Sex as recorded by the county (not read by the rules).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sex: String,
    /// Whether the Indian Child Welfare Act applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icwa: Option<bool>,
}

/// A person's name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersonName {
    /// Given names.
    #[serde(default)]
    pub given: Vec<String>,
    /// Family name.
    #[serde(default)]
    pub family: String,
}

/// Medi-Cal enrollment (`enrollment.updated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Enrollment {
    /// Medi-Cal CIN (not read by the rules).
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    /// Date the enrollment takes effect; absent = in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_on: Option<NaiveDate>,
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
    /// Day the placement ended. Not part of the `placement.changed` event: the gateway sets it to
    /// the closure date when the child's case closes (`case.closed`), since a closed case ends
    /// foster care. On or before the evaluation date, the placement is no longer current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_on: Option<NaiveDate>,
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

/// A deserialization error as [`FactsError::Invalid`]: a missing field is
/// named in `field`; serde's texts that quote the value found are cut to
/// what was expected.
fn invalid(mut field: String, e: serde_json::Error) -> FactsError {
    let category = match e.classify() {
        serde_json::error::Category::Io => "io",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "eof",
    };
    let text = e.to_string();
    // serde_json appends " at line L column C"; the position is reported apart.
    let text = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(t, _)| t);
    let reason = if let Some(name) = text
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        field = if field == "." {
            name.to_string()
        } else {
            format!("{field}.{name}")
        };
        "is required".to_string()
    } else if text.starts_with("unknown field `") {
        // The unknown key is input (it could carry PHI): name its object.
        field = match field.rsplit_once('.') {
            Some((parent, _)) => parent.to_string(),
            None => ".".to_string(),
        };
        let expected = text.split_once(", expected ").map(|(_, x)| x);
        match expected {
            Some(x) => format!("unknown field; expected {x}"),
            None => "unknown field".to_string(),
        }
    } else if let Some(kind) = [
        "invalid type",
        "invalid value",
        "unknown variant",
        "invalid length",
    ]
    .into_iter()
    .find(|k| text.starts_with(k))
    {
        match text.split_once(", expected ") {
            Some((_, x)) => format!("{kind}; expected {x}"),
            None => kind.to_string(),
        }
    } else if category == "data" {
        // Our own date parsers and chrono's texts name the format, not the value.
        text.to_string()
    } else {
        format!("{category} error")
    };
    FactsError::Invalid {
        field,
        reason,
        line: e.line(),
        column: e.column(),
        category,
    }
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
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let facts: Facts = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| {
                let field = e.path().to_string();
                invalid(field, e.into_inner())
            })
            .and_then(|f| de.end().map(|()| f).map_err(|e| invalid(".".into(), e)))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_rules_read_is_required() {
        let f = Facts::from_json(
            br#"{"child": {"birthDate": "2012-01-01"},
                 "enrollment": {"aidCode": "4M", "feeForService": false, "shareOfCost": false}}"#,
        )
        .unwrap();
        let e = f.enrollment.as_ref().unwrap();
        assert!(e.cin.is_empty() && e.effective_on.is_none());
        let ev = crate::evaluate(&f, NaiveDate::from_ymd_opt(2026, 2, 1).unwrap());
        assert!(ev.eligible, "{ev:?}");
    }

    #[test]
    fn errors_name_the_field_never_the_value() {
        let err = |doc: &str| Facts::from_json(doc.as_bytes()).unwrap_err().to_string();
        let e = err(r#"{"child": {"birthDate": "2012-01-01"},
                       "enrollment": {"feeForService": false, "shareOfCost": false}}"#);
        assert!(e.contains("enrollment.aidCode: is required"), "{e}");
        let e = err(r#"{"other": {}}"#);
        assert!(e.contains("facts are not valid: child: is required"), "{e}");
        let e = err(r#"{"child": {"birthDate": "2012-01-01"},
                       "enrollment": {"aidCode": "4M", "feeForService": "SECRET", "shareOfCost": false}}"#);
        assert!(e.contains("enrollment.feeForService: invalid type"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let e = err(r#"{"child": {"birthDate": "SECRET"}}"#);
        assert!(e.contains("child.birthDate"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let e = err(r#"{"child": {"birthDate": "2012-01-01"}, "placement": {"kind": "SECRET"}}"#);
        assert!(
            e.contains("placement.kind: unknown variant; expected"),
            "{e}"
        );
        assert!(!e.contains("SECRET"), "{e}");
        let e = err(r#"{"child": {"birthDate": "2012-01-01", "nickNameSECRET": 1}}"#);
        assert!(
            e.contains("facts are not valid: child: unknown field; expected"),
            "{e}"
        );
        assert!(!e.contains("SECRET") && !e.contains("nickName"), "{e}");
        let e = err(r#"{"child": {"birthDate": "2012-01-01"}} x"#);
        assert!(e.contains("facts are not valid: .: syntax error"), "{e}");
    }
}
