//! Pure HL7 v2 support for the gateway: ER7 parsing, MLLP framing and ACK
//! building. No IO, no dependencies besides `std`.
//!
//! # Design
//!
//! * [`parse`] never fails and never panics, for *any* input bytes. It returns
//!   a [`Parsed`]: the message (when its structure could be recovered) plus a
//!   list of [`Diagnostic`]s, in the spirit of rust-analyzer's parser. Callers
//!   decide what an error means (the MLLP source NAKs with `AE`).
//! * A [`Message`] owns exactly one `String` — the decoded text with segments
//!   joined by `'\r'` — plus two index vectors of `u32` byte ranges (segments
//!   and fields) built in one pass. Every accessor ([`Segment`], [`Field`],
//!   [`Repetition`], [`Component`]) borrows from that string; repetitions,
//!   components and subcomponents are split lazily on access. Decoded values are
//!   `Cow<str>`: borrowed unless an escape sequence had to be resolved.
//! * Charset handling happens once, on the raw bytes, before indexing: MSH-18 is
//!   read from the raw MSH segment (which is ASCII by definition) and the whole
//!   message is decoded to UTF-8 accordingly ([`Charset`]).
//! * Diagnostics carry structure facts only (segment ids, positions, counts),
//!   never message content: they end up in logs and in ERR segments, and
//!   message content is PHI.
//! * Limits ([`ParseOptions`]) bound the input size, the segment count and the
//!   field count per segment, so memory use is proportional to the input.
//!
//! **Invariant: `parse` returns for every input without panicking** (checked by
//! a proptest over arbitrary and mutated bytes).
//!
//! **Invariant: `unescape(escape(s)) == s`** for any text `s` when the delimiters
//! define an escape character (checked by a proptest).
//!
//! # Example
//!
//! ```
//! use hl7v2::{ack, parse, ParseOptions};
//!
//! let raw = b"MSH|^~\\&|HIS|GENHOSP|CWSGW|COUNTY|20261123101500||ADT^A01^ADT_A01|MSG1|P|2.5.1\r\
//!             PID|1||MRN1^^^GENHOSP^MR~99999999A^^^CA_MEDI_CAL^MC||Doe^Jane\r";
//! let parsed = parse(raw, &ParseOptions::default());
//! assert!(!parsed.has_errors());
//! let msg = parsed.message.expect("parsed");
//! assert_eq!(msg.get("PID-3[2].4").as_deref(), Some("CA_MEDI_CAL"));
//! let pid = msg.first("PID").expect("PID");
//! assert_eq!(pid.field(3).repetition_count(), 2);
//! assert_eq!(pid.value(5, 1, 2, 0).as_deref(), Some("Jane"));
//!
//! let header = msg.header();
//! assert_eq!(header.sending_facility, "GENHOSP");
//! let reply = ack::build(&ack::AckSpec {
//!     original: Some(&header),
//!     code: ack::AckCode::AA,
//!     control_id: "ACK1",
//!     timestamp: "20261123151500+0000",
//!     text: None,
//!     errors: &parsed.diagnostics,
//!     sending_application: "CWSGW",
//! });
//! assert!(reply.ends_with("\rMSA|AA|MSG1"));
//! ```
//!
//! # Why not `hl7-parser`?
//!
//! Measured with `cargo bench -p hl7v2 --bench parse` on 2026-11-23: three
//! runs, median per parser, a 1.2 KB ADT^A01 (MSH, EVN, PID, 2×NK1, PV1, PV2,
//! 2×DG1), release build, on the shared 2-core build machine (load average
//! ≈2.5 from parallel builds, so absolute numbers swing ±40 % between runs;
//! the ratios are stable):
//!
//! | parser                        | msgs/s (median) | runs                     |
//! |-------------------------------|-----------------|--------------------------|
//! | this crate (`hl7v2::parse`)   | 296 k           | 291 k, 296 k, 478 k      |
//! | `hl7_parser::parse_message`   | 16 k            | 16.1 k, 16.2 k, 15.5 k   |
//! | naive split on `\r` and `\|`  | 261 k           | 261 k, 338 k, 225 k      |
//!
//! (The brief recorded ~36k msgs/s for `hl7-parser` 0.3 on a quieter machine;
//! in every run here it is 18–30× slower than this crate.)
//!
//! The translation target is 100k msgs/s per core for the whole pipeline
//! (parse + map + serialize), so parsing must take a small fraction of the
//! 10 µs budget: `hl7-parser` 0.3 alone needs 40–60 µs per message. It
//! builds a full tree (every field, repetition, component and subcomponent)
//! with nom for each message and reports failure as one error. This crate
//! scans each line once (8 bytes at a time for the field separator and line
//! ends), records `u32` ranges, splits repetitions and components lazily on
//! access, and returns diagnostics with HL7 error locations for the ACK —
//! which the gateway needs anyway. It is as fast as splitting the text into
//! `Vec<Vec<&str>>`, while owning its text and resolving escapes and charsets.
//!
//! # Modules
//!
//! * [`parse()`] and the message model (`Message`, `Segment`, `Field`, …).
//! * [`escape()`] / [`Message::unescape`] for ER7 escape sequences.
//! * [`mllp`]: bounded MLLP frame codec (pure state machine).
//! * [`ack`]: ACK message building with ERR segments.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod ack;
mod diag;
mod escape;
mod message;
pub mod mllp;
mod parse;

pub use diag::{Diagnostic, ErrorCode, Location, Severity};
pub use escape::escape;
pub use message::{nth_piece, Component, Field, Header, Message, Repetition, Segment};
pub use parse::{parse, Parsed};

/// Character set of a message, from MSH-18 (HL7 table 0211).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `ASCII` (7-bit). Bytes above 0x7F are decoded as Latin-1 with a warning.
    Ascii,
    /// `UNICODE UTF-8`.
    Utf8,
    /// `8859/1` (ISO Latin-1): each byte maps to the same code point.
    Latin1,
}

impl Charset {
    /// Interprets an MSH-18 value (case-insensitive, trimmed): `ASCII`;
    /// `UNICODE UTF-8`, `UTF-8`, `UTF8`; `8859/1`. Anything else is `None`.
    pub fn from_msh18(v: &str) -> Option<Charset> {
        let v = v.trim();
        if v.eq_ignore_ascii_case("ASCII") {
            Some(Charset::Ascii)
        } else if v.eq_ignore_ascii_case("UNICODE UTF-8")
            || v.eq_ignore_ascii_case("UTF-8")
            || v.eq_ignore_ascii_case("UTF8")
        {
            Some(Charset::Utf8)
        } else if v.eq_ignore_ascii_case("8859/1") {
            Some(Charset::Latin1)
        } else {
            None
        }
    }

    /// The canonical MSH-18 code for this charset.
    pub fn as_msh18(&self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Latin1 => "8859/1",
        }
    }
}

/// Options and limits for [`parse`].
///
/// Limit breaches are reported with code 207 (`ApplicationInternalError`):
/// table 0357 before v2.7 has no "value too long" code.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Charset used when MSH-18 is empty or unknown.
    pub default_charset: Charset,
    /// Maximum input size in bytes (default 1 MiB). Larger input → error, no message.
    pub max_bytes: usize,
    /// Maximum number of segments (default 5000). More → error, no message.
    pub max_segments: usize,
    /// Maximum fields per segment (default 500). More → the segment is
    /// truncated and a warning is reported.
    pub max_fields_per_segment: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            default_charset: Charset::Utf8,
            max_bytes: 1024 * 1024,
            max_segments: 5000,
            max_fields_per_segment: 500,
        }
    }
}

/// The ER7 delimiters of a message (from MSH-1 and MSH-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), usually `|`.
    pub field: char,
    /// Component separator, usually `^`.
    pub component: char,
    /// Repetition separator, usually `~`.
    pub repetition: char,
    /// Escape character, usually `\`; `None` when MSH-2 has only two
    /// characters, or three ending in `&` (`^~&`: the escape left out).
    pub escape: Option<char>,
    /// Subcomponent separator, usually `&`. When MSH-2 does not define one the
    /// parser uses `&`.
    pub subcomponent: char,
    /// Truncation character (`#`, HL7 2.7+), when MSH-2 defines one (a 5th
    /// encoding character is accepted whatever the version).
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: '&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// MSH-2 text for these delimiters (e.g. `^~\&`).
    pub fn encoding_characters(&self) -> String {
        let mut s = String::with_capacity(5);
        s.push(self.component);
        s.push(self.repetition);
        if let Some(e) = self.escape {
            s.push(e);
            s.push(self.subcomponent);
            if let Some(t) = self.truncation {
                s.push(t);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charset_from_msh18_accepts_aliases() {
        assert_eq!(Charset::from_msh18("ASCII"), Some(Charset::Ascii));
        assert_eq!(Charset::from_msh18(" unicode utf-8 "), Some(Charset::Utf8));
        assert_eq!(Charset::from_msh18("UTF-8"), Some(Charset::Utf8));
        assert_eq!(Charset::from_msh18("utf8"), Some(Charset::Utf8));
        assert_eq!(Charset::from_msh18("8859/1"), Some(Charset::Latin1));
        assert_eq!(Charset::from_msh18("8859/15"), None);
        assert_eq!(Charset::from_msh18(""), None);
    }

    #[test]
    fn charset_round_trips_through_msh18() {
        for c in [Charset::Ascii, Charset::Utf8, Charset::Latin1] {
            assert_eq!(Charset::from_msh18(c.as_msh18()), Some(c));
        }
    }

    #[test]
    fn default_options_and_delimiters() {
        let o = ParseOptions::default();
        assert_eq!(o.max_bytes, 1 << 20);
        assert_eq!(o.max_segments, 5000);
        assert_eq!(o.max_fields_per_segment, 500);
        assert_eq!(o.default_charset, Charset::Utf8);
        assert_eq!(Delimiters::default().encoding_characters(), "^~\\&");
    }
}
