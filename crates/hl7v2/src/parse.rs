//! The ER7 parser: bytes → [`Message`] + diagnostics, in one indexing pass.
//!
//! Steps:
//! 1. size limit; strip a UTF-8 BOM and leading whitespace;
//! 2. the input must start with `MSH`; the field separator is its 4th byte and
//!    MSH-2 gives the other delimiters (validated: ASCII punctuation, distinct);
//! 3. MSH-18 is read from the raw MSH bytes to pick the charset, and the whole
//!    input is decoded to UTF-8 (borrowed when already valid UTF-8/ASCII);
//! 4. segments are cut at CR, LF or CRLF, blank lines dropped, and copied into
//!    one `String` joined by `'\r'` while field ranges are recorded;
//! 5. header checks: MSH-9, MSH-10 (required), MSH-12 (supported versions).
//!
//! **Never panics**: all slicing is at ASCII delimiter positions found by the
//! scan itself, and all numbers from the input are bounded.

use std::borrow::Cow;

use crate::diag::{Diagnostic, ErrorCode, Location};
use crate::message::{Message, SegIdx};
use crate::{Charset, Delimiters, ParseOptions};

/// Result of [`parse`]: the message when its structure could be recovered, and
/// everything worth reporting.
#[derive(Debug)]
pub struct Parsed {
    /// The message; `None` when the input is not an HL7 v2 message or a hard
    /// limit was exceeded (see the diagnostics).
    pub message: Option<Message>,
    /// Findings, in input order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    /// `true` when any diagnostic has severity `Error`.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == crate::Severity::Error)
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

fn fail(diags: &mut Vec<Diagnostic>, d: Diagnostic) -> Parsed {
    diags.push(d);
    Parsed {
        message: None,
        diagnostics: std::mem::take(diags),
    }
}

fn is_line_end(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// Parses one ER7 message. Never panics, for any bytes; see [`Parsed`].
pub fn parse(bytes: &[u8], opts: &ParseOptions) -> Parsed {
    let mut diags = Vec::new();
    if bytes.len() > opts.max_bytes || bytes.len() > u32::MAX as usize / 4 {
        return fail(
            &mut diags,
            Diagnostic::error(
                ErrorCode::ApplicationInternalError,
                None,
                format!(
                    "message of {} bytes exceeds the limit of {} bytes",
                    bytes.len(),
                    opts.max_bytes
                ),
            ),
        );
    }
    let mut input = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let lead = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(input.len());
    input = input.get(lead..).unwrap_or(&[]);

    if !input.starts_with(b"MSH") {
        let code = if input.is_empty() {
            ErrorCode::RequiredFieldMissing
        } else {
            ErrorCode::SegmentSequenceError
        };
        return fail(
            &mut diags,
            Diagnostic::error(
                code,
                Some(Location::segment("MSH", 1)),
                "message does not start with an MSH segment",
            ),
        );
    }

    let delims = match read_delimiters(input) {
        Ok(d) => d,
        Err(d) => return fail(&mut diags, *d),
    };

    let charset = detect_charset(input, &delims, opts.default_charset, &mut diags);
    let text = decode(input, charset, &mut diags);

    let Some(message) = index(&text, delims, charset, opts, &mut diags) else {
        return Parsed {
            message: None,
            diagnostics: diags,
        };
    };
    check_header(&message, &mut diags);
    Parsed {
        message: Some(message),
        diagnostics: diags,
    }
}

/// Reads MSH-1 and MSH-2 from raw bytes starting with `MSH`.
fn read_delimiters(input: &[u8]) -> Result<Delimiters, Box<Diagnostic>> {
    let bad = |field: usize, text: &str| {
        Box::new(Diagnostic::error(
            ErrorCode::DataTypeError,
            Some(Location::field("MSH", 1, field)),
            text.to_string(),
        ))
    };
    let fs = match input.get(3) {
        Some(&b) if !is_line_end(b) => b,
        _ => {
            return Err(Box::new(Diagnostic::error(
                ErrorCode::RequiredFieldMissing,
                Some(Location::field("MSH", 1, 1)),
                "MSH segment has no field separator",
            )))
        }
    };
    if !is_delimiter_byte(fs) {
        return Err(bad(1, "field separator must be ASCII punctuation"));
    }
    let rest = input.get(4..).unwrap_or(&[]);
    let enc_len = rest
        .iter()
        .position(|&b| b == fs || is_line_end(b))
        .unwrap_or(rest.len());
    let enc = rest.get(..enc_len).unwrap_or(&[]);
    if !(2..=5).contains(&enc.len()) {
        return Err(bad(2, "encoding characters must be 2 to 5 characters"));
    }
    if !enc.iter().all(|&b| is_delimiter_byte(b)) {
        return Err(bad(2, "encoding characters must be ASCII punctuation"));
    }
    // The field separator and the (2 to 5) encoding characters, on the
    // stack (a `Vec` here cost an allocation and a reallocation per message).
    let mut buf = [0u8; 6];
    if let Some(first) = buf.first_mut() {
        *first = fs;
    }
    if let Some(dst) = buf.get_mut(1..=enc.len()) {
        dst.copy_from_slice(enc);
    }
    let all = buf.get(..=enc.len()).unwrap_or_default();
    let distinct = all
        .iter()
        .enumerate()
        .all(|(i, b)| !all.iter().skip(i + 1).any(|c| c == b));
    if !distinct {
        return Err(bad(2, "delimiters must be distinct"));
    }
    let ch = |i: usize| enc.get(i).map(|&b| char::from(b));
    // `^~&`: three characters ending in the usual subcomponent separator is
    // a sender that left out the escape character (seen in published sample
    // messages), not one that escapes with `&` and has no subcomponents.
    if enc.len() == 3 && enc.last() == Some(&b'&') {
        return Ok(Delimiters {
            field: char::from(fs),
            component: ch(0).unwrap_or('^'),
            repetition: ch(1).unwrap_or('~'),
            escape: None,
            subcomponent: '&',
            truncation: None,
        });
    }
    let subcomponent = match ch(3) {
        Some(c) => c,
        None if all.contains(&b'&') => {
            return Err(bad(
                2,
                "no subcomponent separator given and the default '&' is taken",
            ))
        }
        None => '&',
    };
    Ok(Delimiters {
        field: char::from(fs),
        component: ch(0).unwrap_or('^'),
        repetition: ch(1).unwrap_or('~'),
        escape: ch(2),
        subcomponent,
        truncation: ch(4),
    })
}

fn is_delimiter_byte(b: u8) -> bool {
    b.is_ascii_punctuation()
}

/// Picks the charset from MSH-18 in the raw MSH bytes.
fn detect_charset(
    input: &[u8],
    d: &Delimiters,
    default: Charset,
    diags: &mut Vec<Diagnostic>,
) -> Charset {
    let line_len = input
        .iter()
        .position(|&b| is_line_end(b))
        .unwrap_or(input.len());
    let line = input.get(..line_len).unwrap_or(&[]);
    let fs = d.field as u8;
    // Split on the field separator: part 0 = "MSH", part k = MSH-(k+1).
    let Some(raw18) = line.split(|&b| b == fs).nth(17) else {
        return default;
    };
    let rep = d.repetition as u8;
    let first = raw18.split(|&b| b == rep).next().unwrap_or(&[]);
    let Ok(value) = std::str::from_utf8(first) else {
        diags.push(Diagnostic::warning(
            ErrorCode::TableValueNotFound,
            Some(Location::field("MSH", 1, 18)),
            "MSH-18 is not a known character set; using the default",
        ));
        return default;
    };
    if value.trim().is_empty() {
        return default;
    }
    match Charset::from_msh18(value) {
        Some(c) => c,
        None => {
            diags.push(Diagnostic::warning(
                ErrorCode::TableValueNotFound,
                Some(Location::field("MSH", 1, 18)),
                "MSH-18 is not a known character set; using the default",
            ));
            default
        }
    }
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Decodes raw bytes to text in `charset`.
fn decode<'a>(input: &'a [u8], charset: Charset, diags: &mut Vec<Diagnostic>) -> Cow<'a, str> {
    // ASCII is valid in every supported charset. (UTF-8 needs no separate
    // ASCII scan: `from_utf8` below borrows ASCII just the same.)
    if charset != Charset::Utf8 && input.is_ascii() {
        return match std::str::from_utf8(input) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(latin1(input)),
        };
    }
    match charset {
        Charset::Latin1 => Cow::Owned(latin1(input)),
        Charset::Ascii => {
            diags.push(Diagnostic::warning(
                ErrorCode::DataTypeError,
                None,
                "non-ASCII bytes in an ASCII message; decoded as Latin-1",
            ));
            Cow::Owned(latin1(input))
        }
        Charset::Utf8 => match std::str::from_utf8(input) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => {
                diags.push(Diagnostic::warning(
                    ErrorCode::DataTypeError,
                    None,
                    "invalid UTF-8 bytes replaced with U+FFFD",
                ));
                String::from_utf8_lossy(input)
            }
        },
    }
}

/// Builds the segment/field index. `None` (with an error diagnostic) when a
/// hard limit is exceeded.
///
/// One fused pass over the bytes: each line is scanned once for the field
/// separator and the line end; non-blank lines are copied into the output
/// text (joined by `'\r'`) and their field ranges recorded relative to it.
fn index(
    src: &str,
    delims: Delimiters,
    charset: Charset,
    opts: &ParseOptions,
    diags: &mut Vec<Diagnostic>,
) -> Option<Message> {
    let b = src.as_bytes();
    let mut text = String::with_capacity(src.len());
    let mut segs: Vec<SegIdx> = Vec::with_capacity(16);
    let mut fields: Vec<(u32, u32)> = Vec::with_capacity(src.len() / 6 + 8);
    // Room for the usual number of distinct segment ids (one allocation,
    // not a growth at 4 and at 8).
    let mut seen = IdCounter {
        short: Vec::with_capacity(16),
        long: Vec::new(),
    };
    let fs = delims.field as u8;
    let limit = opts.max_fields_per_segment.saturating_add(1);

    let mut pos = 0usize;
    while pos < b.len() {
        // Scan one line: field separator positions and the line end.
        let line_start = pos;
        let field_start = fields.len();
        let off = text.len() + usize::from(!segs.is_empty());
        let mut truncated = false;
        let mut a = line_start;
        let line_end = loop {
            let j = next_special(b, a, fs);
            match b.get(j) {
                Some(&c) if c == fs => {
                    if fields.len() - field_start < limit {
                        fields.push(((off + a - line_start) as u32, (off + j - line_start) as u32));
                    } else {
                        truncated = true;
                    }
                    a = j + 1;
                }
                _ => break j,
            }
        };
        pos = line_end + 1;
        let line = src.get(line_start..line_end).unwrap_or("");
        // A line with a field separator is never blank (the separator is
        // punctuation): only separator-less lines are scanned.
        if fields.len() == field_start && line.bytes().all(|c| c == b' ' || c == b'\t') {
            // Empty or whitespace-only line (it cannot contain the field
            // separator, which is punctuation, so no field was recorded).
            continue;
        }
        if fields.len() - field_start < limit {
            fields.push((
                (off + a - line_start) as u32,
                (off + line_end - line_start) as u32,
            ));
        } else {
            truncated = true;
        }
        if segs.len() >= opts.max_segments {
            diags.push(Diagnostic::error(
                ErrorCode::ApplicationInternalError,
                None,
                format!(
                    "message exceeds the limit of {} segments",
                    opts.max_segments
                ),
            ));
            return None;
        }
        if !segs.is_empty() {
            text.push('\r');
        }
        text.push_str(line);
        let lb = line.as_bytes();
        if lb.starts_with(b"MSH") && lb.get(3) == Some(&fs) {
            // MSH: field 1 is the separator itself. The scanned ranges are
            // "MSH", MSH-2, MSH-3, ...; insert MSH-1 after the id.
            let o = off as u32;
            if limit >= 2 {
                fields.insert(field_start + 1, (o + 3, o + 4));
                if fields.len() - field_start > limit {
                    fields.truncate(field_start + limit);
                    truncated = true;
                }
            }
        }
        let (id_a, id_b) = fields
            .get(field_start)
            .copied()
            .unwrap_or((off as u32, off as u32));
        let id = text.get(id_a as usize..id_b as usize).unwrap_or("");
        let ordinal = seen.bump(id);
        let valid_id = id.len() == 3
            && id
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if !valid_id {
            diags.push(Diagnostic::warning(
                ErrorCode::SegmentSequenceError,
                None,
                format!(
                    "segment at index {} has an invalid segment id (expected 3 uppercase alphanumerics)",
                    segs.len()
                ),
            ));
        }
        if truncated {
            diags.push(Diagnostic::warning(
                ErrorCode::ApplicationInternalError,
                valid_id.then(|| Location::segment(id, ordinal as usize)),
                format!(
                    "segment at index {} has more than {} fields; truncated",
                    segs.len(),
                    opts.max_fields_per_segment
                ),
            ));
        }
        segs.push(SegIdx {
            start: off as u32,
            end: text.len() as u32,
            field_start: field_start as u32,
            field_end: fields.len() as u32,
            ordinal,
        });
    }
    Some(Message {
        text,
        delims,
        charset,
        segs,
        fields,
    })
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bytes of `x` equal to `v` are flagged in their high bit. Flags above the
/// lowest true match may be false positives; the lowest flag is exact.
fn flag_bytes(x: u64, v: u8) -> u64 {
    let y = x ^ LO.wrapping_mul(u64::from(v));
    y.wrapping_sub(LO) & !y & HI
}

/// Position of the next field separator, CR or LF at or after `from`
/// (`b.len()` when none). Scans 8 bytes at a time (SWAR), then bytewise.
fn next_special(b: &[u8], from: usize, fs: u8) -> usize {
    let mut i = from;
    while let Some(chunk) = b.get(i..i.saturating_add(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        let m = flag_bytes(x, fs) | flag_bytes(x, b'\r') | flag_bytes(x, b'\n');
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == fs || c == b'\r' || c == b'\n' {
            return i;
        }
        i += 1;
    }
    b.len()
}

/// Occurrence counter per segment id, for `Segment::ordinal`. Ids of up to 7
/// bytes are packed into a `u64` key (no string comparison); longer (invalid)
/// ids are kept as owned strings.
#[derive(Default)]
struct IdCounter {
    short: Vec<(u64, u32)>,
    long: Vec<(String, u32)>,
}

impl IdCounter {
    fn bump(&mut self, id: &str) -> u32 {
        if id.len() <= 7 {
            let key = id
                .bytes()
                .fold(id.len() as u64, |k, c| (k << 8) | u64::from(c));
            bump_entry(&mut self.short, |k| *k == key, || key)
        } else {
            bump_entry(&mut self.long, |k| k == id, || id.to_string())
        }
    }
}

fn bump_entry<K>(v: &mut Vec<(K, u32)>, eq: impl Fn(&K) -> bool, make: impl FnOnce() -> K) -> u32 {
    match v.iter_mut().find(|(k, _)| eq(k)) {
        Some(entry) => {
            entry.1 = entry.1.saturating_add(1);
            entry.1
        }
        None => {
            v.push((make(), 1));
            1
        }
    }
}

fn supported_version(v: &str) -> bool {
    let mut parts = v.split('.');
    if parts.next() != Some("2") {
        return false;
    }
    let Some(minor) = parts.next() else {
        return false;
    };
    if !matches!(minor, "3" | "4" | "5" | "6" | "7" | "8") {
        return false;
    }
    parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit()))
}

fn check_header(m: &Message, diags: &mut Vec<Diagnostic>) {
    let Some(msh) = m.first("MSH") else {
        return;
    };
    if msh.value(9, 1, 1, 0).is_none() {
        diags.push(Diagnostic::error(
            ErrorCode::RequiredFieldMissing,
            Some(Location::field("MSH", 1, 9)),
            "MSH-9 (message type) is missing",
        ));
    }
    if msh.value(10, 1, 0, 0).is_none() {
        diags.push(Diagnostic::error(
            ErrorCode::RequiredFieldMissing,
            Some(Location::field("MSH", 1, 10)),
            "MSH-10 (message control id) is missing",
        ));
    }
    match msh.value(12, 1, 1, 0) {
        Some(v) if supported_version(v.trim()) => {}
        Some(_) => diags.push(Diagnostic::warning(
            ErrorCode::UnsupportedVersionId,
            Some(Location::field("MSH", 1, 12)),
            "MSH-12 version is outside 2.3-2.8",
        )),
        None => diags.push(Diagnostic::warning(
            ErrorCode::RequiredFieldMissing,
            Some(Location::field("MSH", 1, 12)),
            "MSH-12 (version id) is missing",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_special_finds_first_delimiter() {
        let s = b"abcdefghijklmnop|q\rr";
        assert_eq!(next_special(s, 0, b'|'), 16);
        assert_eq!(next_special(s, 17, b'|'), 18);
        assert_eq!(next_special(s, 19, b'|'), 20);
        assert_eq!(next_special(b"", 0, b'|'), 0);
        assert_eq!(next_special(b"abc", 5, b'|'), 3);
        // Every position, every alignment, against a naive scan.
        let data: Vec<u8> = (0u8..=255).cycle().take(600).collect();
        for fs in [b'|', b'#', 0x80, 0xFF, 0] {
            for from in 0..data.len() {
                let naive = data[from..]
                    .iter()
                    .position(|&c| c == fs || c == b'\r' || c == b'\n')
                    .map_or(data.len(), |p| p + from);
                assert_eq!(next_special(&data, from, fs), naive);
            }
        }
    }

    #[test]
    fn versions() {
        for v in [
            "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.2",
        ] {
            assert!(supported_version(v), "{v}");
        }
        for v in ["2.2", "2.9", "3.0", "2", "2.", "2.5.", "2.5.x", "", "25"] {
            assert!(!supported_version(v), "{v}");
        }
    }
}
