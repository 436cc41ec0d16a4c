//! ACK building (original mode `AA/AE/AR` and enhanced mode `CA/CE/CR`).
//!
//! Layout, with standard delimiters `|^~\&`, segments joined by `'\r'` and no
//! MLLP framing:
//!
//! ```text
//! MSH|^~\&|{orig MSH-5}|{orig MSH-6}|{orig MSH-3}|{orig MSH-4}|{ts}||ACK^{trigger}^ACK|{id}|{P}|{2.5.1}[||||||{MSH-18}]
//! MSA|{code}|{orig MSH-10}[|{text}]
//! ERR||{ERL}|{code}^{text}^HL70357|{E|W}||||{user message}     (one per Error/Warning diagnostic)
//! ```
//!
//! Sender and receiver are swapped from the original. Header fields are the
//! raw (already escaped) text from [`Header`]; every free text supplied here
//! (MSA-3, diagnostic texts, fallback values) is escaped with [`escape`].

use crate::escape::escape;
use crate::{Delimiters, Diagnostic, Header, Severity};

/// Acknowledgment code (HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
    /// Commit accept.
    CA,
    /// Commit error.
    CE,
    /// Commit reject.
    CR,
}

impl AckCode {
    /// The code as sent in MSA-1.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }
}

/// What to acknowledge and how.
#[derive(Debug, Clone)]
pub struct AckSpec<'a> {
    /// Header of the message being acknowledged, when it could be parsed.
    pub original: Option<&'a Header>,
    /// MSA-1.
    pub code: AckCode,
    /// MSH-10 of the ACK itself.
    pub control_id: &'a str,
    /// MSH-7 of the ACK, e.g. `20261123151500+0000`.
    pub timestamp: &'a str,
    /// MSA-3 text (escaped on output).
    pub text: Option<&'a str>,
    /// Diagnostics to report as ERR segments (Error and Warning only).
    pub errors: &'a [Diagnostic],
    /// MSH-3 of the ACK when the original has no MSH-5 (e.g. `CWSGW`).
    pub sending_application: &'a str,
}

/// Builds the ACK message text (see the module docs for the layout).
pub fn build(spec: &AckSpec) -> String {
    let d = Delimiters::default();
    let empty = Header::default();
    let h = spec.original.unwrap_or(&empty);
    let or = |raw: &str, fallback: &str| -> String {
        if raw.is_empty() {
            escape(fallback, &d)
        } else {
            raw.to_string()
        }
    };
    let msh9 = if h.trigger_event.is_empty() {
        "ACK".to_string()
    } else {
        format!("ACK^{}^ACK", escape(&h.trigger_event, &d))
    };
    let mut msh: Vec<String> = vec![
        "MSH".to_string(),
        d.encoding_characters(),
        or(&h.msh5, spec.sending_application),
        h.msh6.clone(),
        h.msh3.clone(),
        h.msh4.clone(),
        escape(spec.timestamp, &d),
        String::new(),
        msh9,
        escape(spec.control_id, &d),
        escape(or_default(&h.processing_id, "P"), &d),
        escape(or_default(&h.version, "2.5.1"), &d),
    ];
    if !h.charset.is_empty() {
        msh.resize(17, String::new());
        msh.push(h.charset.clone());
    }
    let mut out = String::with_capacity(256);
    out.push_str(&msh.join("|"));

    out.push_str("\rMSA|");
    out.push_str(spec.code.as_str());
    out.push('|');
    out.push_str(&escape(&h.control_id, &d));
    if let Some(t) = spec.text {
        out.push('|');
        out.push_str(&escape(t, &d));
    }

    for diag in spec
        .errors
        .iter()
        .filter(|x| matches!(x.severity, Severity::Error | Severity::Warning))
    {
        out.push_str("\rERR||");
        if let Some(loc) = &diag.location {
            out.push_str(&loc.to_erl(&d));
        }
        out.push('|');
        out.push_str(&diag.code.code().to_string());
        out.push('^');
        out.push_str(&escape(diag.code.text(), &d));
        out.push_str("^HL70357|");
        out.push_str(diag.severity.code());
        out.push_str("||||");
        out.push_str(&escape(&diag.text, &d));
    }
    out
}

fn or_default<'a>(v: &'a str, fallback: &'a str) -> &'a str {
    if v.is_empty() {
        fallback
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, Location};

    fn header() -> Header {
        Header {
            msh3: "HOSP_ADT^1.2.3^ISO".into(),
            msh4: "GENHOSP".into(),
            msh5: "CWSGW".into(),
            msh6: "COUNTY".into(),
            sending_application: "HOSP_ADT".into(),
            sending_facility: "GENHOSP".into(),
            trigger_event: "A01".into(),
            message_code: "ADT".into(),
            control_id: "MSG0001".into(),
            processing_id: "T".into(),
            version: "2.5.1".into(),
            ..Header::default()
        }
    }

    fn spec<'a>(h: Option<&'a Header>, errors: &'a [Diagnostic]) -> AckSpec<'a> {
        AckSpec {
            original: h,
            code: AckCode::AA,
            control_id: "ACK0001",
            timestamp: "20261123151500+0000",
            text: None,
            errors,
            sending_application: "CWSGW",
        }
    }

    #[test]
    fn ack_codes() {
        let all = [
            AckCode::AA,
            AckCode::AE,
            AckCode::AR,
            AckCode::CA,
            AckCode::CE,
            AckCode::CR,
        ];
        let s: Vec<_> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(s, ["AA", "AE", "AR", "CA", "CE", "CR"]);
    }

    #[test]
    fn swaps_sender_and_receiver() {
        let h = header();
        let ack = build(&spec(Some(&h), &[]));
        assert_eq!(
            ack,
            "MSH|^~\\&|CWSGW|COUNTY|HOSP_ADT^1.2.3^ISO|GENHOSP|20261123151500+0000||ACK^A01^ACK|ACK0001|T|2.5.1\rMSA|AA|MSG0001"
        );
    }

    #[test]
    fn defaults_without_original() {
        let ack = build(&AckSpec {
            code: AckCode::AR,
            text: Some("unknown sender"),
            ..spec(None, &[])
        });
        assert_eq!(
            ack,
            "MSH|^~\\&|CWSGW||||20261123151500+0000||ACK|ACK0001|P|2.5.1\rMSA|AR||unknown sender"
        );
    }

    #[test]
    fn empty_msh5_uses_sending_application() {
        let h = Header {
            msh5: String::new(),
            ..header()
        };
        let ack = build(&spec(Some(&h), &[]));
        assert!(ack.starts_with("MSH|^~\\&|CWSGW|COUNTY|HOSP_ADT^1.2.3^ISO|GENHOSP|"));
    }

    #[test]
    fn echoes_charset_in_msh18() {
        let h = Header {
            charset: "UNICODE UTF-8".into(),
            ..header()
        };
        let ack = build(&spec(Some(&h), &[]));
        let msh = ack.split('\r').next().unwrap();
        let fields: Vec<_> = msh.split('|').collect();
        // fields[k] is MSH-(k+1).
        assert_eq!(fields.len(), 18);
        assert_eq!(fields[17], "UNICODE UTF-8");
        assert_eq!(fields[11], "2.5.1");
    }

    #[test]
    fn err_segments_for_errors_and_warnings_only() {
        let errors = vec![
            Diagnostic::error(
                ErrorCode::RequiredFieldMissing,
                Some(Location::field("MSH", 1, 10)),
                "MSH-10 (message control id) is missing",
            ),
            Diagnostic::warning(ErrorCode::UnsupportedVersionId, None, "a|b^c"),
            Diagnostic {
                severity: Severity::Info,
                code: ErrorCode::DataTypeError,
                location: None,
                text: "info".into(),
            },
        ];
        let h = header();
        let ack = build(&AckSpec {
            code: AckCode::AE,
            text: Some("bad & ugly"),
            ..spec(Some(&h), &errors)
        });
        let segs: Vec<_> = ack.split('\r').collect();
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[1], "MSA|AE|MSG0001|bad \\T\\ ugly");
        assert_eq!(
            segs[2],
            "ERR||MSH^1^10|101^Required field missing^HL70357|E||||MSH-10 (message control id) is missing"
        );
        assert_eq!(
            segs[3],
            "ERR|||203^Unsupported version id^HL70357|W||||a\\F\\b\\S\\c"
        );
    }

    #[test]
    fn ack_parses_back() {
        let h = header();
        let errors = [Diagnostic::error(
            ErrorCode::DataTypeError,
            Some(Location::field("PID", 1, 7)),
            "bad date",
        )];
        let ack = build(&AckSpec {
            code: AckCode::AE,
            text: Some("line1\nline2"),
            ..spec(Some(&h), &errors)
        });
        let p = crate::parse(ack.as_bytes(), &crate::ParseOptions::default());
        assert!(!p.has_errors(), "{:?}", p.diagnostics);
        let m = p.message.unwrap();
        assert_eq!(m.get("MSA-2").as_deref(), Some("MSG0001"));
        assert_eq!(m.get("MSA-3").as_deref(), Some("line1\nline2"));
        assert_eq!(m.get("ERR-2.3").as_deref(), Some("7"));
        assert_eq!(m.get("ERR-3.1").as_deref(), Some("102"));
        let ah = m.header();
        assert_eq!(ah.msh5, h.msh3);
        assert_eq!(ah.message_code, "ACK");
        assert_eq!(ah.trigger_event, "A01");
        assert_eq!(ah.message_structure, "ACK");
    }
}
