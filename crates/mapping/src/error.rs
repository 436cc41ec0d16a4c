//! Error types. Neither carries PHI: load errors name files and YAML paths,
//! translation errors carry a stable code, an HL7 location and a fixed text.

use std::path::PathBuf;

/// A mapping or terminology file could not be loaded or compiled.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {path}: {reason}")]
pub struct MappingError {
    /// The offending file.
    pub file: PathBuf,
    /// Where in the file (YAML path like `resources[1].body.gender.$map`, or `line 4`).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl MappingError {
    pub(crate) fn new(
        file: &std::path::Path,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        MappingError {
            file: file.to_path_buf(),
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// A message could not be translated at all. Partial problems (an unparseable
/// date, an unknown code) never produce this: the element is omitted instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}{}: {text}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
pub struct TranslateError {
    /// Stable machine code: `missing-pid`, `missing-id`, `no-mapping`.
    pub code: &'static str,
    /// HL7 location such as `PID^1^3`, when one applies.
    pub location: Option<String>,
    /// Human readable explanation without PHI.
    pub text: String,
}
