//! Characters no stored text may carry, and their removal from HL7 v2 values.
//!
//! **Forbidden** ([`is_forbidden`]): C0 controls other than TAB, LF and CR
//! (U+0000–U+0008, U+000B, U+000C, U+000E–U+001F), DEL (U+007F), the C1
//! controls (U+0080–U+009F), and the bidirectional embedding, override and
//! isolate characters U+202A–U+202E and U+2066–U+2069 (which make a name
//! display differently from what it is). The gateway refuses them in JSON
//! inputs (`cws_gateway::input_check`, 422 naming the field) and the mapping
//! engine strips them from every HL7 v2 value it reads ([`strip_forbidden`]),
//! so no stored FHIR string made from a message contains one.

use std::borrow::Cow;

/// True for a character no stored text may carry (see the module doc).
#[inline]
pub fn is_forbidden(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}'
        | '\u{7F}'..='\u{9F}'
        | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Could `s` hold a forbidden character? A byte test that is exact for
/// ASCII and only over-approximates (never misses) for the lead bytes of
/// C1 (`0xC2`) and the bidi characters (`0xE2`).
#[inline]
fn may_hold_forbidden(s: &str) -> bool {
    s.bytes().any(|b| {
        (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7F || b == 0xC2 || b == 0xE2
    })
}

/// True when `s` has no forbidden character.
pub fn is_clean(s: &str) -> bool {
    !may_hold_forbidden(s) || !s.chars().any(is_forbidden)
}

/// `s` without its forbidden characters (borrowed when it had none).
pub fn strip_forbidden(s: Cow<'_, str>) -> Cow<'_, str> {
    if is_clean(&s) {
        return s;
    }
    Cow::Owned(s.chars().filter(|c| !is_forbidden(*c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_characters() {
        for c in [
            '\u{0}', '\u{1}', '\u{8}', '\u{B}', '\u{C}', '\u{1B}', '\u{1F}', '\u{7F}', '\u{80}',
            '\u{85}', '\u{9F}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}',
        ] {
            assert!(is_forbidden(c), "{:X}", c as u32);
            assert!(!is_clean(&format!("ab{c}cd")), "{:X}", c as u32);
        }
        for c in [
            '\t', '\n', '\r', ' ', 'a', 'é', '\u{A0}', '\u{2013}', '\u{202F}', '\u{2065}',
            '\u{206A}', 'ñ', '中',
        ] {
            assert!(!is_forbidden(c), "{:X}", c as u32);
            assert!(is_clean(&format!("ab{c}cd")), "{:X}", c as u32);
        }
    }

    #[test]
    fn stripping_borrows_clean_text() {
        assert!(matches!(
            strip_forbidden(Cow::Borrowed("Muñoz – Ruiz")),
            Cow::Borrowed("Muñoz – Ruiz")
        ));
        assert_eq!(
            strip_forbidden(Cow::Borrowed("Ri\u{0}ve\u{202E}ra\u{85}\u{7F}")),
            "Rivera"
        );
        assert_eq!(strip_forbidden(Cow::Borrowed("a\tb\nc")), "a\tb\nc");
    }
}
