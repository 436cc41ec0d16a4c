//! The Medi-Cal aid codes that identify children and youth involved in child welfare (seed 003,
//! Appendix D), loaded from `mappings/eligibility/medi-cal-aid-codes.csv`.
//!
//! Columns `aid_code,group,description` (read with the `csv` crate: quoted fields allowed); `#` comment
//! lines and blank lines are ignored; the
//! description is the rest of the line after the second comma. A code may belong to several groups
//! (4M is listed both with foster care and as the Former Foster Youth group), but a (code, group) pair
//! may appear only once. Codes are compared trimmed and upper-cased. 4E is in both groups as well:
//! Appendix D lists it with foster care but describes it as hospital presumptive eligibility for ages
//! 18 to 26, a former foster youth's code (docs/program-rules.md, "Aid codes").
//!
//! An aid code only shows *current* enrollment in a program (Appendix D footnotes 80–81): it says
//! nothing about former foster care in another state or about Adoption Assistance eligibility without
//! enrollment, and no code marks Family Maintenance.

use std::sync::OnceLock;

use serde::Serialize;

/// The embedded aid code table.
pub const AID_CODES_CSV: &str =
    include_str!("../../../mappings/eligibility/medi-cal-aid-codes.csv");

/// Largest table text accepted.
pub const MAX_AID_CODE_BYTES: usize = 128 * 1024;
/// Most rows accepted.
pub const MAX_AID_CODES: usize = 1_000;

/// The Appendix D eligibility groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AidGroup {
    /// Currently in foster care in California (including Approved Relative Caregiver).
    CurrentFosterCare,
    /// Former foster youth (left foster care at 18 or older, any state, to 26): the Former Foster
    /// Care Youth eligibility group (4M) and the former foster youth presumptive eligibility code (4E).
    FormerFosterYouth,
    /// California's Adoption Assistance Program.
    AdoptionAssistance,
}

impl AidGroup {
    /// The group's code as written in the CSV.
    pub const fn code(self) -> &'static str {
        match self {
            AidGroup::CurrentFosterCare => "current_foster_care",
            AidGroup::FormerFosterYouth => "former_foster_youth",
            AidGroup::AdoptionAssistance => "adoption_assistance",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        [
            AidGroup::CurrentFosterCare,
            AidGroup::FormerFosterYouth,
            AidGroup::AdoptionAssistance,
        ]
        .into_iter()
        .find(|g| g.code() == code)
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AidCode {
    /// The aid code, upper-case.
    pub code: String,
    /// Its group.
    pub group: AidGroup,
    /// Description from Appendix D.
    pub description: String,
}

/// Why an aid code table was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AidCodeError {
    /// Text over [`MAX_AID_CODE_BYTES`] or more than [`MAX_AID_CODES`] rows.
    #[error("aid code table is over its size limit")]
    TooLarge,
    /// The first non-comment line is not `aid_code,group,description`.
    #[error("aid code table header must be `aid_code,group,description`")]
    MissingHeader,
    /// A bad row.
    #[error("aid code table line {line}: {problem}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// The aid code table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AidCodeTable {
    rows: Vec<AidCode>,
}

impl AidCodeTable {
    /// Parses the CSV described in the module docs.
    pub fn from_csv(text: &str) -> Result<Self, AidCodeError> {
        if text.len() > MAX_AID_CODE_BYTES {
            return Err(AidCodeError::TooLarge);
        }
        let mut rows: Vec<AidCode> = Vec::new();
        let mut header_seen = false;
        for row in crate::table::rows(text) {
            let (line, rec) = match row {
                Ok(r) => (r.line, r.fields),
                Err(line) => {
                    return Err(AidCodeError::BadLine {
                        line,
                        problem: "not a CSV row",
                    })
                }
            };
            if !header_seen {
                let row: Vec<&str> = rec.iter().collect();
                if row.join(",").replace(' ', "") == "aid_code,group,description" {
                    header_seen = true;
                    continue;
                }
                return Err(AidCodeError::MissingHeader);
            }
            let (Some(code), Some(group), true) = (rec.get(0), rec.get(1), rec.len() >= 3) else {
                return Err(AidCodeError::BadLine {
                    line,
                    problem: "expected aid_code,group,description",
                });
            };
            let description = crate::table::rest(&rec, 2);
            let code = code.trim().to_ascii_uppercase();
            if code.is_empty() || code.len() > 8 || !code.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(AidCodeError::BadLine {
                    line,
                    problem: "aid code must be 1-8 letters or digits",
                });
            }
            let group = AidGroup::from_code(group.trim()).ok_or(AidCodeError::BadLine {
                line,
                problem: "unknown group",
            })?;
            if rows.iter().any(|r| r.code == code && r.group == group) {
                return Err(AidCodeError::BadLine {
                    line,
                    problem: "aid code listed twice in the same group",
                });
            }
            if rows.len() >= MAX_AID_CODES {
                return Err(AidCodeError::TooLarge);
            }
            rows.push(AidCode {
                code,
                group,
                description: description.trim().to_string(),
            });
        }
        if !header_seen {
            return Err(AidCodeError::MissingHeader);
        }
        Ok(Self { rows })
    }

    /// The embedded Appendix D table, parsed once. Falls back to an empty table (no aid code evidence)
    /// should the embedded file ever fail to parse; a unit test keeps it parsing.
    pub fn default_table() -> &'static AidCodeTable {
        static TABLE: OnceLock<AidCodeTable> = OnceLock::new();
        TABLE.get_or_init(|| AidCodeTable::from_csv(AID_CODES_CSV).unwrap_or_default())
    }

    /// Whether `code` (any case, surrounding spaces ignored) is in `group`.
    pub fn is_in(&self, code: &str, group: AidGroup) -> bool {
        let code = code.trim();
        self.rows
            .iter()
            .any(|r| r.group == group && r.code.eq_ignore_ascii_case(code))
    }

    /// The codes of one group, in file order.
    pub fn codes(&self, group: AidGroup) -> impl Iterator<Item = &str> + '_ {
        self.rows
            .iter()
            .filter(move |r| r.group == group)
            .map(|r| r.code.as_str())
    }

    /// All rows in file order.
    pub fn rows(&self) -> &[AidCode] {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_table_matches_domain_lists() {
        let t = AidCodeTable::from_csv(AID_CODES_CSV).unwrap();
        assert_eq!(&t, AidCodeTable::default_table());
        let current: Vec<_> = t.codes(AidGroup::CurrentFosterCare).collect();
        assert_eq!(
            current,
            [
                "2P", "2R", "2S", "2T", "2U", "4E", "4H", "4K", "4L", "4M", "4N", "40", "42", "43",
                "45", "46", "49", "5K", "5L"
            ]
        );
        assert_eq!(
            t.codes(AidGroup::FormerFosterYouth).collect::<Vec<_>>(),
            ["4E", "4M"]
        );
        assert_eq!(
            t.codes(AidGroup::AdoptionAssistance).collect::<Vec<_>>(),
            ["03", "04", "06", "07", "4A"]
        );
        assert!(t.is_in(" 4m ", AidGroup::FormerFosterYouth));
        assert!(!t.is_in("3", AidGroup::AdoptionAssistance));
        assert!(t.rows().iter().all(|r| !r.description.is_empty()));
    }

    #[test]
    fn bad_tables_are_rejected() {
        assert_eq!(AidCodeTable::from_csv(""), Err(AidCodeError::MissingHeader));
        let h = "aid_code,group,description\n";
        assert!(matches!(
            AidCodeTable::from_csv(&format!("{h}4M,foster,x")),
            Err(AidCodeError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            AidCodeTable::from_csv(&format!("{h}4M,former_foster_youth")),
            Err(AidCodeError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            AidCodeTable::from_csv(&format!(
                "{h}4M,former_foster_youth,a\n4m,former_foster_youth,b"
            )),
            Err(AidCodeError::BadLine { line: 3, .. })
        ));
        assert!(matches!(
            AidCodeTable::from_csv(&format!("{h}4-M,former_foster_youth,a")),
            Err(AidCodeError::BadLine { line: 2, .. })
        ));
        let ok =
            AidCodeTable::from_csv(&format!("{h}99,adoption_assistance,a, with comma")).unwrap();
        assert_eq!(ok.rows()[0].description, "a, with comma");
        // Quoted fields, CRLF, and comment lines (with quotes) that still
        // count towards the line number.
        let ok = AidCodeTable::from_csv(
            "# \"Appendix D\"\r\naid_code,group,description\r\n4m,former_foster_youth,\"FFY, to 26\"\r\n",
        )
        .unwrap();
        assert_eq!(ok.rows()[0].code, "4M");
        assert_eq!(ok.rows()[0].description, "FFY, to 26");
        assert!(matches!(
            AidCodeTable::from_csv(&format!("# c\n\n{h}4M,nope,x")),
            Err(AidCodeError::BadLine { line: 4, .. })
        ));
    }
}
