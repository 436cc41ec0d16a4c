//! ER7 escape sequences.
//!
//! [`unescape`] resolves, between two escape characters (`\` by default):
//! `F` `S` `T` `R` `E` (the field, component, subcomponent, repetition and
//! escape characters), `P` (truncation, only when the message defines one),
//! `Xhh…` (hex bytes, interpreted in the message charset: UTF-8 for
//! [`Charset::Utf8`], Latin-1 otherwise; invalid UTF-8 → U+FFFD), `.br`
//! (line break → `"\n"`), and drops `H` / `N` (highlighting on/off). Any other
//! or malformed sequence is kept literally, escape characters included.
//!
//! Fast path: text without the escape character is returned as
//! `Cow::Borrowed`, after one byte scan.
//!
//! [`escape`] is the inverse for the delimiter escapes; it also encodes CR as
//! `\X0D\` and LF as `\.br\` so that free text can never break a segment.

use std::borrow::Cow;

use crate::{Charset, Delimiters};

/// Escapes `text` for use as a field value with delimiters `d`: each delimiter
/// character becomes its escape sequence (`|` → `\F\`, `^` → `\S\`, `&` →
/// `\T\`, `~` → `\R\`, `\` → `\E\`, truncation → `\P\`), CR → `\X0D\`, LF →
/// `\.br\`. When `d` has no escape character, text is returned unchanged
/// (nothing can be escaped).
pub fn escape(text: &str, d: &Delimiters) -> String {
    let Some(esc) = d.escape else {
        return text.to_string();
    };
    let needs = |c: char| {
        c == d.field
            || c == d.component
            || c == d.subcomponent
            || c == d.repetition
            || c == esc
            || Some(c) == d.truncation
            || c == '\r'
            || c == '\n'
    };
    if !text.chars().any(needs) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        let code: Option<&str> = if c == esc {
            Some("E")
        } else if c == d.field {
            Some("F")
        } else if c == d.component {
            Some("S")
        } else if c == d.subcomponent {
            Some("T")
        } else if c == d.repetition {
            Some("R")
        } else if Some(c) == d.truncation {
            Some("P")
        } else if c == '\r' {
            Some("X0D")
        } else if c == '\n' {
            Some(".br")
        } else {
            None
        };
        match code {
            Some(code) => {
                out.push(esc);
                out.push_str(code);
                out.push(esc);
            }
            None => out.push(c),
        }
    }
    out
}

/// Resolves escape sequences in `raw` (see the module docs).
pub(crate) fn unescape<'a>(raw: &'a str, d: &Delimiters, charset: Charset) -> Cow<'a, str> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(raw);
    };
    let first = if esc.is_ascii() {
        let b = esc as u8;
        raw.as_bytes().iter().position(|&x| x == b)
    } else {
        raw.find(esc)
    };
    if first.is_none() {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((before, after)) = rest.split_once(esc) {
        out.push_str(before);
        match after.split_once(esc) {
            Some((body, tail)) => {
                if !resolve(body, d, esc, charset, &mut out) {
                    // Unknown or malformed: keep the whole sequence literally.
                    out.push(esc);
                    out.push_str(body);
                    out.push(esc);
                }
                rest = tail;
            }
            None => {
                // Unterminated: keep literally.
                out.push(esc);
                rest = after;
                break;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Appends the meaning of one escape body to `out`; `false` when the body is
/// not a recognised sequence (the caller then keeps it literally).
fn resolve(body: &str, d: &Delimiters, esc: char, charset: Charset, out: &mut String) -> bool {
    match body {
        "F" => out.push(d.field),
        "S" => out.push(d.component),
        "T" => out.push(d.subcomponent),
        "R" => out.push(d.repetition),
        "E" => out.push(esc),
        "P" => match d.truncation {
            Some(t) => out.push(t),
            None => return false,
        },
        ".br" => out.push('\n'),
        "H" | "N" => {}
        _ => {
            let Some(hex) = body.strip_prefix('X') else {
                return false;
            };
            return push_hex(hex, charset, out);
        }
    }
    true
}

fn push_hex(hex: &str, charset: Charset, out: &mut String) -> bool {
    let h = hex.as_bytes();
    if h.is_empty() || h.len() & 1 == 1 || !h.iter().all(u8::is_ascii_hexdigit) {
        return false;
    }
    let bytes: Vec<u8> = h
        .chunks_exact(2)
        .map(|p| (hex_val(p[0]) << 4) | hex_val(p[1]))
        .collect();
    match charset {
        Charset::Utf8 => out.push_str(&String::from_utf8_lossy(&bytes)),
        Charset::Latin1 | Charset::Ascii => out.extend(bytes.iter().map(|&b| char::from(b))),
    }
    true
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn un(s: &str) -> String {
        unescape(s, &Delimiters::default(), Charset::Utf8).into_owned()
    }

    #[test]
    fn delimiter_escapes() {
        assert_eq!(un(r"a\F\b\S\c\T\d\R\e\E\f"), r"a|b^c&d~e\f");
    }

    #[test]
    fn no_escape_char_is_borrowed() {
        let d = Delimiters::default();
        assert!(matches!(
            unescape("plain text", &d, Charset::Utf8),
            Cow::Borrowed("plain text")
        ));
        let no_esc = Delimiters {
            escape: None,
            ..Delimiters::default()
        };
        assert!(matches!(
            unescape(r"a\F\b", &no_esc, Charset::Utf8),
            Cow::Borrowed(r"a\F\b")
        ));
    }

    #[test]
    fn hex_in_utf8_and_latin1() {
        let d = Delimiters::default();
        assert_eq!(unescape(r"caf\XC3A9\", &d, Charset::Utf8), "café");
        assert_eq!(unescape(r"caf\XE9\", &d, Charset::Latin1), "café");
        assert_eq!(unescape(r"caf\XE9\", &d, Charset::Ascii), "café");
        // Invalid UTF-8 → replacement character.
        assert_eq!(unescape(r"caf\XE9\", &d, Charset::Utf8), "caf\u{FFFD}");
        assert_eq!(unescape(r"\x0d0a\", &d, Charset::Utf8), r"\x0d0a\");
        assert_eq!(unescape(r"\X0D0A\", &d, Charset::Utf8), "\r\n");
    }

    #[test]
    fn malformed_hex_kept_literally() {
        assert_eq!(un(r"\XZZ\"), r"\XZZ\");
        assert_eq!(un(r"\X0\"), r"\X0\");
        assert_eq!(un(r"\X\"), r"\X\");
    }

    #[test]
    fn formatting_escapes() {
        assert_eq!(un(r"line1\.br\line2"), "line1\nline2");
        assert_eq!(un(r"\H\bold\N\ text"), "bold text");
        assert_eq!(un(r"\.sp\"), r"\.sp\");
    }

    #[test]
    fn truncation_only_when_defined() {
        assert_eq!(un(r"a\P\b"), r"a\P\b");
        let d = Delimiters {
            truncation: Some('#'),
            ..Delimiters::default()
        };
        assert_eq!(unescape(r"a\P\b", &d, Charset::Utf8), "a#b");
    }

    #[test]
    fn unknown_and_unterminated_kept_literally() {
        assert_eq!(un(r"a\Z\b"), r"a\Z\b");
        assert_eq!(un(r"a\Fb"), r"a\Fb");
        assert_eq!(un(r"trailing\"), r"trailing\");
        assert_eq!(un(r"\\"), r"\\");
        assert_eq!(un(r"\Z\\F\"), r"\Z\|");
    }

    #[test]
    fn custom_escape_char() {
        let d = Delimiters {
            escape: Some('!'),
            ..Delimiters::default()
        };
        assert_eq!(unescape("a!F!b!E!", &d, Charset::Utf8), "a|b!");
        assert_eq!(escape("a|b!", &d), "a!F!b!E!");
    }

    #[test]
    fn escape_encodes_delimiters_and_line_breaks() {
        let d = Delimiters::default();
        assert_eq!(escape(r"a|b^c&d~e\f", &d), r"a\F\b\S\c\T\d\R\e\E\f");
        assert_eq!(escape("l1\nl2\rl3", &d), r"l1\.br\l2\X0D\l3");
        assert_eq!(escape("plain", &d), "plain");
        let no_esc = Delimiters {
            escape: None,
            ..Delimiters::default()
        };
        assert_eq!(escape("a|b", &no_esc), "a|b");
    }

    proptest! {
        #[test]
        fn escape_unescape_round_trip(s in any::<String>(), trunc in any::<bool>()) {
            let d = Delimiters { truncation: trunc.then_some('#'), ..Delimiters::default() };
            for cs in [Charset::Utf8, Charset::Latin1] {
                let e = escape(&s, &d);
                prop_assert!(!e.contains('\r') && !e.contains('|') && !e.contains('~'));
                prop_assert_eq!(unescape(&e, &d, cs), s.as_str());
            }
        }

        #[test]
        fn unescape_never_panics(s in "[\\\\A-Za-z0-9.|^&~#]{0,40}") {
            let d = Delimiters { truncation: Some('#'), ..Delimiters::default() };
            let _ = unescape(&s, &d, Charset::Utf8);
            let _ = unescape(&s, &d, Charset::Latin1);
        }
    }
}
