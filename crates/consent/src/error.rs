//! Typed errors. Messages carry rule ids, codes, ages in whole years and
//! counts only — never names, CINs, birth dates or addresses.

use thiserror::Error;

use crate::model::{Category, ConsentKind, GrantorRole};

/// A policy file could not be loaded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The text is larger than [`crate::spec::MAX_POLICY_BYTES`].
    #[error("policy text is {bytes} bytes, at most {max}")]
    TooLarge {
        /// Size received.
        bytes: usize,
        /// Limit.
        max: usize,
    },
    /// Not valid YAML for the policy schema (unknown keys included).
    #[error("policy does not parse: {0}")]
    Parse(String),
    /// Parsed, but a rule is inconsistent.
    #[error("policy rule {rule}: {detail}")]
    Invalid {
        /// Rule id (`-` for the policy header).
        rule: String,
        /// What is wrong.
        detail: String,
    },
}

/// The age band a grantor check was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgeBand {
    /// 18 and older (NMD, former foster youth).
    Adult,
    /// 12 to 17.
    Minor12To17,
    /// Under 12.
    Under12,
}

impl std::fmt::Display for AgeBand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgeBand::Adult => "18 or older",
            AgeBand::Minor12To17 => "12 to 17",
            AgeBand::Under12 => "under 12",
        })
    }
}

/// A consent's grantor may not grant it (the grantor table, `docs/consent.md`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GrantorError {
    /// The consent date is before the youth's birth date.
    #[error("the consent date precedes the youth's birth date")]
    ConsentBeforeBirth,
    /// The grantor role may not grant this category at this age.
    #[error("a {grantor:?} may not grant {category:?} in a {kind:?} consent for a youth {band}: {explanation} ({law})")]
    NotPermitted {
        /// The consent kind.
        kind: ConsentKind,
        /// The first category the grantor may not grant.
        category: Category,
        /// Who tried to grant it.
        grantor: GrantorRole,
        /// The youth's age band on the consent date.
        band: AgeBand,
        /// Who may grant it instead, in plain words.
        explanation: &'static str,
        /// The law cited.
        law: &'static str,
    },
}
