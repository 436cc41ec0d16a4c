//! A plan's Return Transmission File dialect: the ordered columns, what
//! fills each, and the file's strings for the CLR codes
//! (`mappings/rtf/{name}.toml`, `default` built in). This module loads and
//! checks it; `export` writes with it and the import reads with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::records::clr::Vocabulary;

/// The folder of the dialects under the mappings tree.
pub const DIR: &str = "rtf";
/// The dialect used when an MCP names none.
pub const DEFAULT: &str = "default";

/// What fills a column (export) and what a cell is read as (import).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    MemberCin,
    MemberFamily,
    MemberGiven,
    MemberBirthDate,
    McpId,
    EcmProviderId,
    ReferralId,
    ReferralDate,
    AuthorizationStatus,
    AuthorizationDate,
    ReferralStatus,
    ReferralStatusDate,
    ClosureReason,
}

/// Where a column's element is defined.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A DHCS-published element.
    Dhcs,
    /// The gateway's own.
    Gateway,
}

/// One column.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub header: String,
    pub source: Source,
    #[serde(default)]
    pub required: bool,
    pub origin: Origin,
}

/// The authorization column's strings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Authorization {
    pub pending: String,
    pub authorized: String,
    pub not_authorized: String,
}

/// A loaded dialect.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Dialect {
    pub name: String,
    pub date_format: String,
    pub column: Vec<Column>,
    /// CLR status code → the file's string.
    pub status: BTreeMap<String, String>,
    /// CLR closure reason code → the file's string.
    pub closure_reason: BTreeMap<String, String>,
    pub authorization: Authorization,
}

/// Why a dialect could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DialectError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: String, reason: String },
    #[error("{DIR}/{name}.toml: no such dialect")]
    Unknown { name: String },
    #[error("{DIR}/{name}.toml: {reason}")]
    Invalid { name: String, reason: String },
}

/// The sources an import cannot do without.
const IMPORT_NEEDS: &[Source] = &[
    Source::MemberCin,
    Source::ReferralId,
    Source::ReferralStatus,
];

impl Dialect {
    /// Parse and check a dialect against the CLR vocabulary: every code
    /// named is known (a code not named is written as the vocabulary's
    /// display), strings are unique (ignoring case), headers and sources
    /// are unique, and the columns an import needs are there.
    pub fn parse(text: &str, vocab: &Vocabulary) -> Result<Dialect, DialectError> {
        let d: Dialect = toml::from_str(text).map_err(|e| DialectError::Invalid {
            name: "?".into(),
            reason: e.message().to_string(),
        })?;
        let bad = |reason: String| DialectError::Invalid {
            name: d.name.clone(),
            reason,
        };
        let mut headers = BTreeSet::new();
        let mut sources = BTreeSet::new();
        for c in &d.column {
            if c.header.trim().is_empty() {
                return Err(bad("a column has an empty header".into()));
            }
            if !headers.insert(c.header.to_ascii_lowercase()) {
                return Err(bad(format!("column {:?} is listed twice", c.header)));
            }
            if !sources.insert(c.source) {
                return Err(bad(format!(
                    "column {:?}: its source fills another column too",
                    c.header
                )));
            }
        }
        if let Some(missing) = IMPORT_NEEDS.iter().find(|s| !sources.contains(s)) {
            return Err(bad(format!("no column has source {missing:?}")));
        }
        let mut d = d;
        let displays = |what: &str| -> Vec<(String, String)> {
            if what == "status" {
                vocab
                    .status
                    .iter()
                    .map(|s| (s.code.clone(), s.display.clone()))
                    .collect()
            } else {
                vocab
                    .closure_reason
                    .iter()
                    .map(|r| (r.code.clone(), r.display.clone()))
                    .collect()
            }
        };
        let name = d.name.clone();
        let bad = |reason: String| DialectError::Invalid {
            name: name.clone(),
            reason,
        };
        for what in ["status", "closure_reason"] {
            let known = displays(what);
            let table = if what == "status" {
                &mut d.status
            } else {
                &mut d.closure_reason
            };
            if let Some(code) = table.keys().find(|c| !known.iter().any(|(k, _)| k == *c)) {
                return Err(bad(format!(
                    "[{what}] {code:?} is not a CLR code (known: {})",
                    known
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            // A code the file does not name (one added to the vocabulary
            // since the plan's template was written) is written as its
            // display in the vocabulary.
            for (code, display) in known {
                table.entry(code).or_insert(display);
            }
            let mut seen = BTreeSet::new();
            if let Some(s) = table
                .values()
                .find(|s| s.trim().is_empty() || !seen.insert(s.trim().to_lowercase()))
            {
                return Err(bad(format!("[{what}] {s:?} is empty or used twice")));
            }
        }
        // The date format must write a date that reads back.
        let probe = chrono::NaiveDate::from_ymd_opt(2026, 3, 9).unwrap_or_default();
        let mut written = String::new();
        if std::fmt::Write::write_fmt(
            &mut written,
            format_args!("{}", probe.format(&d.date_format)),
        )
        .is_err()
            || chrono::NaiveDate::parse_from_str(&written, &d.date_format) != Ok(probe)
        {
            return Err(bad(format!(
                "date_format {:?} does not write a date that reads back",
                d.date_format
            )));
        }
        Ok(d)
    }

    /// The dialect `name` from the mappings tree: `dir/rtf/{name}.toml`
    /// when `dir` is given and holds it, else the built-in file.
    pub fn load(
        dir: Option<&Path>,
        name: &str,
        vocab: &Vocabulary,
    ) -> Result<Dialect, DialectError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(DialectError::Unknown { name: name.into() });
        }
        let file = format!("{DIR}/{name}.toml");
        let text = crate::embedded::mapping_file(dir, &file)
            .map_err(|e| DialectError::Read {
                path: e.path,
                reason: e.reason,
            })?
            .ok_or_else(|| DialectError::Unknown { name: name.into() })?;
        let d = Dialect::parse(&text, vocab).map_err(|e| match e {
            DialectError::Invalid { reason, .. } => DialectError::Invalid {
                name: name.into(),
                reason,
            },
            e => e,
        })?;
        if d.name != name {
            return Err(DialectError::Invalid {
                name: name.into(),
                reason: format!("name = {:?} does not match the file name", d.name),
            });
        }
        Ok(d)
    }

    /// The header row.
    pub fn headers(&self) -> Vec<&str> {
        self.column.iter().map(|c| c.header.as_str()).collect()
    }

    /// The position of the column a source fills.
    pub fn position(&self, source: Source) -> Option<usize> {
        self.column.iter().position(|c| c.source == source)
    }

    /// The CLR status code of a file string (case and surrounding space
    /// ignored).
    pub fn status_code(&self, cell: &str) -> Option<&str> {
        find_code(&self.status, cell)
    }

    /// The CLR closure reason code of a file string.
    pub fn closure_code(&self, cell: &str) -> Option<&str> {
        find_code(&self.closure_reason, cell)
    }

    /// A date in the file's format.
    pub fn date(&self, d: chrono::NaiveDate) -> String {
        d.format(&self.date_format).to_string()
    }

    /// A file date (`None` when it does not parse).
    pub fn parse_date(&self, cell: &str) -> Option<chrono::NaiveDate> {
        chrono::NaiveDate::parse_from_str(cell.trim(), &self.date_format).ok()
    }
}

fn find_code<'a>(table: &'a BTreeMap<String, String>, cell: &str) -> Option<&'a str> {
    let cell = cell.trim();
    table
        .iter()
        .find(|(_, s)| s.trim().eq_ignore_ascii_case(cell))
        .map(|(c, _)| c.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_dialect_loads_and_covers_the_clr_vocabulary() {
        let v = Vocabulary::builtin();
        let d = Dialect::load(None, DEFAULT, &v).unwrap();
        assert_eq!(d.headers()[0], "Member_CIN");
        for code in v.status_codes() {
            assert!(d.status.contains_key(code), "{code}");
        }
        assert_eq!(d.status_code(" services received "), None);
        assert_eq!(
            d.closure_code(" services received "),
            Some("services-received")
        );
        assert_eq!(d.status_code("CLOSED"), Some("closed"));
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 3).unwrap();
        assert_eq!(d.parse_date(&d.date(day)), Some(day));
        assert_eq!(d.parse_date("11/03/2026"), None);
        // The three CLR elements are DHCS's.
        for s in [
            Source::ReferralStatus,
            Source::ReferralStatusDate,
            Source::ClosureReason,
        ] {
            let c = &d.column[d.position(s).unwrap()];
            assert_eq!(c.origin, Origin::Dhcs, "{}", c.header);
        }
    }

    #[test]
    fn a_bad_dialect_is_refused_by_name() {
        let v = Vocabulary::builtin();
        let text = crate::embedded::MAPPINGS
            .get_file("rtf/default.toml")
            .and_then(|f| f.contents_utf8())
            .unwrap();
        // A code the file does not name is written as the vocabulary's display.
        let d = Dialect::parse(&text.replace("closed = \"Closed\"", ""), &v).unwrap();
        assert_eq!(d.status["closed"], v.status("closed").unwrap().display);
        let e = Dialect::parse(
            &text.replace("enrolled = \"Enrolled\"", "enrolled = \"Closed\""),
            &v,
        )
        .unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
        let e = Dialect::parse(&text.replace("duplicate = ", "dupe = "), &v).unwrap_err();
        assert!(e.to_string().contains("\"dupe\" is not a CLR code"), "{e}");
        let e = Dialect::parse(
            &text.replace("source = \"referral-id\"", "source = \"mcp-id\""),
            &v,
        )
        .unwrap_err();
        assert!(e.to_string().contains("fills another column"), "{e}");
        let e = Dialect::parse(&text.replace("%Y-%m-%d", "%Y"), &v).unwrap_err();
        assert!(e.to_string().contains("reads back"), "{e}");
        assert!(matches!(
            Dialect::load(None, "../referral/clr", &v),
            Err(DialectError::Unknown { .. })
        ));
        assert!(matches!(
            Dialect::load(None, "no-such-plan", &v),
            Err(DialectError::Unknown { .. })
        ));
    }
}
