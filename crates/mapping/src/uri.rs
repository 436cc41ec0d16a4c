//! URIs built from message text: the one rule for every mapping.
//!
//! A FHIR `uri` may not contain whitespace, and text from a message (a
//! facility "Good Health Hospital", an assigning authority, a coding system
//! name) may contain anything. Mappings therefore never paste such text into
//! a URI as it is: `$uri_segment` percent-encodes it (RFC 3986: every byte
//! of its UTF-8 outside the unreserved set `A-Z a-z 0-9 - . _ ~` becomes
//! `%XX`, upper-case hex), and `$urn_oid` turns an HD universal id of type
//! ISO into `urn:oid:…` only when it really is an OID.

use std::borrow::Cow;

/// Whether a byte may stand in a URI segment as it is (RFC 3986 unreserved).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `text` percent-encoded for use as one URI segment (or URN part): the
/// unreserved characters stay, every other byte becomes `%XX`. Borrowed
/// when nothing needs encoding.
pub fn encode_segment(text: &str) -> Cow<'_, str> {
    if text.bytes().all(unreserved) {
        return Cow::Borrowed(text);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len() + 8);
    for b in text.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Cow::Owned(out)
}

/// Whether `text` is an OID as FHIR's `oid` type defines it:
/// `[0-2](\.(0|[1-9][0-9]*))+`.
pub fn is_oid(text: &str) -> bool {
    let mut arcs = text.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut rest = 0usize;
    let rest_ok = arcs.all(|a| {
        rest += 1;
        !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) && (a == "0" || !a.starts_with('0'))
    });
    first_ok && rest_ok && rest > 0
}

/// `urn:oid:{text}` when `text` (trimmed) is an OID ([`is_oid`]), else `None`.
pub fn urn_oid(text: &str) -> Option<String> {
    let t = text.trim();
    is_oid(t).then(|| format!("urn:oid:{t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded_and_never_hold_whitespace() {
        assert_eq!(encode_segment("adt1"), "adt1");
        assert!(matches!(encode_segment("A-b.c_d~9"), Cow::Borrowed(_)));
        assert_eq!(
            encode_segment("good health hospital"),
            "good%20health%20hospital"
        );
        assert_eq!(encode_segment("GHH LAB, INC."), "GHH%20LAB%2C%20INC.");
        assert_eq!(encode_segment("a/b:c?d#e%f"), "a%2Fb%3Ac%3Fd%23e%25f");
        assert_eq!(encode_segment("Muñoz"), "Mu%C3%B1oz");
        assert_eq!(encode_segment("tab\there\r\n"), "tab%09here%0D%0A");
        for s in ["x y", "\u{a0}", "\u{2003}", "a\u{0}b", "ü ö"] {
            let e = encode_segment(s);
            assert!(e.bytes().all(|b| b.is_ascii_graphic()), "{s:?} -> {e}");
        }
    }

    #[test]
    fn only_real_oids_become_urn_oid() {
        assert_eq!(
            urn_oid("2.16.840.1.113883.3.1").as_deref(),
            Some("urn:oid:2.16.840.1.113883.3.1")
        );
        assert_eq!(urn_oid(" 1.2 ").as_deref(), Some("urn:oid:1.2"));
        assert_eq!(urn_oid("0.0").as_deref(), Some("urn:oid:0.0"));
        for bad in [
            "",
            "2",
            "3.1",
            "2.",
            ".2.1",
            "2..1",
            "2.01",
            "2.1.x",
            "2.16.840 1",
            "GOOD HEALTH",
            "1.2.3-4",
            "urn:oid:1.2",
        ] {
            assert_eq!(urn_oid(bad), None, "{bad:?}");
        }
    }
}
