//! `application/x-www-form-urlencoded` decoding of request input: a FHIR
//! search's query string and the SMART token request's body.

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// Why a form-encoded input (a search's query string, a token request body)
/// was refused. The messages name no input: it may be PHI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("a % is not followed by two hexadecimal digits")]
    BadEscape,
    #[error("a name or value is not UTF-8 once percent-decoded")]
    NotUtf8,
}

/// Decode `application/x-www-form-urlencoded` input (a query string or a
/// form body) into its name/value pairs, in order: `&` separates pairs (empty
/// ones are skipped), the first `=` separates name from value (none: the value
/// is empty), `+` is a space and `%XX` a byte.
///
/// Stricter than the WHATWG parser (`form_urlencoded`, which `axum::Query`
/// uses): that one passes a malformed `%` through as is and replaces bytes that
/// are not UTF-8 with U+FFFD, so a mangled value would be searched for and
/// quietly match nothing. Here either refuses the whole input.
pub fn parse_form_pairs(input: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    input
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => {
                    let (name, rest) = pair.split_at(i);
                    (name, rest.get(1..).unwrap_or_default())
                }
                None => (pair, &[][..]),
            };
            Ok((decode_form_component(name)?, decode_form_component(value)?))
        })
        .collect()
}

/// One name or value of [`parse_form_pairs`].
fn decode_form_component(raw: &[u8]) -> Result<String, FormError> {
    // `percent_decode` leaves a malformed escape as it is: refuse it first.
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|b| *b == b'%') {
        match rest.get(i + 1..i + 3) {
            Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                rest = rest.get(i + 3..).unwrap_or_default();
            }
            _ => return Err(FormError::BadEscape),
        }
    }
    // `+` is a space; `%2B` (a literal plus) decodes after this.
    let spaced: Cow<'_, [u8]> = if raw.contains(&b'+') {
        Cow::Owned(
            raw.iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    };
    percent_decode(&spaced)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| FormError::NotUtf8)
}
