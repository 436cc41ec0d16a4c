//! Diagnostics reported by the parser and echoed in ACK ERR segments.
//!
//! Codes follow HL7 table 0357 (message error condition codes), severities
//! table 0516. A diagnostic's `text` states structure facts only (segment ids,
//! positions, counts) — never message content, which is PHI.

use crate::escape::escape;
use crate::Delimiters;

/// Severity of a diagnostic (HL7 table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `E`: the message cannot be processed as is.
    Error,
    /// `W`: processed, but something is off.
    Warning,
    /// `I`: information only.
    Info,
}

impl Severity {
    /// The table 0516 code: `E`, `W` or `I`.
    pub fn code(&self) -> &'static str {
        match self {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Info => "I",
        }
    }
}

/// Message error condition codes (HL7 table 0357).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 100
    SegmentSequenceError,
    /// 101
    RequiredFieldMissing,
    /// 102
    DataTypeError,
    /// 103
    TableValueNotFound,
    /// 200
    UnsupportedMessageType,
    /// 201
    UnsupportedEventCode,
    /// 202
    UnsupportedProcessingId,
    /// 203
    UnsupportedVersionId,
    /// 204
    UnknownKeyIdentifier,
    /// 205
    DuplicateKeyIdentifier,
    /// 206
    ApplicationRecordLocked,
    /// 207
    ApplicationInternalError,
}

impl ErrorCode {
    /// Numeric table 0357 code.
    pub fn code(&self) -> u16 {
        match self {
            ErrorCode::SegmentSequenceError => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataTypeError => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::UnknownKeyIdentifier => 204,
            ErrorCode::DuplicateKeyIdentifier => 205,
            ErrorCode::ApplicationRecordLocked => 206,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    /// Table 0357 display text, e.g. `Required field missing`.
    pub fn text(&self) -> &'static str {
        match self {
            ErrorCode::SegmentSequenceError => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::UnknownKeyIdentifier => "Unknown key identifier",
            ErrorCode::DuplicateKeyIdentifier => "Duplicate key identifier",
            ErrorCode::ApplicationRecordLocked => "Application record locked",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

/// Where in a message a diagnostic applies (rendered as the ERL datatype).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Segment id, e.g. `PID`.
    pub segment: String,
    /// 1-based occurrence of that segment id in the message.
    pub sequence: usize,
    /// Field number (HL7 numbering).
    pub field: Option<usize>,
    /// 1-based field repetition.
    pub repetition: Option<usize>,
    /// 1-based component.
    pub component: Option<usize>,
    /// 1-based subcomponent.
    pub subcomponent: Option<usize>,
}

impl Location {
    /// A location of a whole segment occurrence.
    pub fn segment(segment: &str, sequence: usize) -> Location {
        Location {
            segment: segment.to_string(),
            sequence,
            field: None,
            repetition: None,
            component: None,
            subcomponent: None,
        }
    }

    /// A location of a field in a segment occurrence.
    pub fn field(segment: &str, sequence: usize, field: usize) -> Location {
        Location {
            field: Some(field),
            ..Location::segment(segment, sequence)
        }
    }

    /// ERR-2 text (ERL datatype): `SEG^seq^field^rep^comp^sub`, with the
    /// component separator of `d` and trailing empty components trimmed.
    pub fn to_erl(&self, d: &Delimiters) -> String {
        let parts = [
            escape(&self.segment, d),
            self.sequence.to_string(),
            opt(self.field),
            opt(self.repetition),
            opt(self.component),
            opt(self.subcomponent),
        ];
        let last = parts.iter().rposition(|p| !p.is_empty()).unwrap_or(0);
        let mut out = String::new();
        for (i, p) in parts.iter().take(last + 1).enumerate() {
            if i > 0 {
                out.push(d.component);
            }
            out.push_str(p);
        }
        out
    }
}

fn opt(v: Option<usize>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

/// One finding of the parser (or of a later processing step, for the ACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// How serious it is.
    pub severity: Severity,
    /// HL7 table 0357 code.
    pub code: ErrorCode,
    /// Where, when known.
    pub location: Option<Location>,
    /// Human-readable explanation: structure facts only, no message content.
    pub text: String,
}

impl Diagnostic {
    /// An error-severity diagnostic.
    pub fn error(code: ErrorCode, location: Option<Location>, text: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            location,
            text: text.into(),
        }
    }

    /// A warning-severity diagnostic.
    pub fn warning(code: ErrorCode, location: Option<Location>, text: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            code,
            location,
            text: text.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_codes() {
        assert_eq!(Severity::Error.code(), "E");
        assert_eq!(Severity::Warning.code(), "W");
        assert_eq!(Severity::Info.code(), "I");
    }

    #[test]
    fn error_codes_match_table_0357() {
        let all = [
            (
                ErrorCode::SegmentSequenceError,
                100,
                "Segment sequence error",
            ),
            (
                ErrorCode::RequiredFieldMissing,
                101,
                "Required field missing",
            ),
            (ErrorCode::DataTypeError, 102, "Data type error"),
            (ErrorCode::TableValueNotFound, 103, "Table value not found"),
            (
                ErrorCode::UnsupportedMessageType,
                200,
                "Unsupported message type",
            ),
            (
                ErrorCode::UnsupportedEventCode,
                201,
                "Unsupported event code",
            ),
            (
                ErrorCode::UnsupportedProcessingId,
                202,
                "Unsupported processing id",
            ),
            (
                ErrorCode::UnsupportedVersionId,
                203,
                "Unsupported version id",
            ),
            (
                ErrorCode::UnknownKeyIdentifier,
                204,
                "Unknown key identifier",
            ),
            (
                ErrorCode::DuplicateKeyIdentifier,
                205,
                "Duplicate key identifier",
            ),
            (
                ErrorCode::ApplicationRecordLocked,
                206,
                "Application record locked",
            ),
            (
                ErrorCode::ApplicationInternalError,
                207,
                "Application internal error",
            ),
        ];
        for (c, n, t) in all {
            assert_eq!(c.code(), n);
            assert_eq!(c.text(), t);
        }
    }

    #[test]
    fn erl_trims_trailing_empties() {
        let d = Delimiters::default();
        assert_eq!(Location::field("MSH", 1, 9).to_erl(&d), "MSH^1^9");
        assert_eq!(Location::segment("PID", 2).to_erl(&d), "PID^2");
        let l = Location {
            component: Some(1),
            ..Location::field("PID", 1, 5)
        };
        assert_eq!(l.to_erl(&d), "PID^1^5^^1");
        let full = Location {
            repetition: Some(2),
            component: Some(3),
            subcomponent: Some(4),
            ..Location::field("PID", 1, 3)
        };
        assert_eq!(full.to_erl(&d), "PID^1^3^2^3^4");
    }

    #[test]
    fn erl_uses_given_component_separator_and_escapes_segment() {
        let d = Delimiters {
            component: '$',
            ..Delimiters::default()
        };
        assert_eq!(Location::field("MSH", 1, 10).to_erl(&d), "MSH$1$10");
        let weird = Location::segment("A|B", 1);
        assert_eq!(weird.to_erl(&Delimiters::default()), "A\\F\\B^1");
    }
}
