//! ICD-10 sensitivity ranges: `mappings/terminology/icd10-sensitivity.csv`
//! with the header `from,to,category,source` (read with the `csv` crate). Each row is an inclusive range
//! of ICD-10 categories of one letter (`F10`,`F19`), the v3-ActCode label a
//! diagnosis in it carries (`PSY` or `ETH`), and the citation an analyst
//! reviews it against. Ranges may not overlap, so the order of rows does not
//! matter. A diagnosis code is read as its letter (either case) and the next
//! two characters as a number (two digits, or `+` and a digit), dots ignored:
//! `F10.20` and `f1020` are category F10; a code that does not read so
//! (`F`, `F1`) carries no label.

use std::path::Path;

use crate::error::MappingError;
use crate::eval::Flags;

/// File stem of the ranges table under `terminology/` (not a concept map).
pub(crate) const TABLE: &str = "icd10-sensitivity";
/// Largest accepted ranges file.
const MAX_BYTES: usize = 256 * 1024;
/// Most rows.
const MAX_ROWS: usize = 1_000;
const HEADER: &str = "from,to,category,source";

#[derive(Debug, Clone, Copy)]
struct Range {
    /// Upper-case ASCII letter.
    letter: u8,
    from: u8,
    to: u8,
    flags: Flags,
}

/// The compiled ranges.
#[derive(Debug, Default)]
pub(crate) struct Icd10Ranges {
    rows: Vec<Range>,
}

/// `F10` → (`F`, 10): a letter and exactly two digits.
fn category(s: &str) -> Option<(u8, u8)> {
    let b = s.trim().as_bytes();
    match b {
        [l, t, u] if l.is_ascii_alphabetic() && t.is_ascii_digit() && u.is_ascii_digit() => {
            Some((l.to_ascii_uppercase(), (t - b'0') * 10 + (u - b'0')))
        }
        _ => None,
    }
}

impl Icd10Ranges {
    /// Parse the ranges file.
    pub(crate) fn load(file: &Path) -> Result<Icd10Ranges, MappingError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| MappingError::new(file, "", format!("cannot read: {e}")))?;
        Self::parse(file, &text)
    }

    pub(crate) fn parse(file: &Path, text: &str) -> Result<Icd10Ranges, MappingError> {
        if text.len() > MAX_BYTES {
            return Err(MappingError::new(
                file,
                "",
                "ranges file larger than 256 KiB",
            ));
        }
        let header_error = || MappingError::new(file, "line 1", format!("header must be {HEADER}"));
        let mut rows: Vec<Range> = Vec::new();
        let mut header_seen = false;
        for (n, row) in crate::csvrows::rows(text).enumerate() {
            let row =
                row.map_err(|(line, why)| MappingError::new(file, format!("line {line}"), why))?;
            let at = format!("line {}", row.line);
            let bad = |why: &str| MappingError::new(file, at.clone(), why);
            let fields: Vec<&str> = row.fields.iter().collect();
            if n == 0 {
                if row.line != 1 || fields.join(",").trim_start_matches('\u{feff}').trim() != HEADER
                {
                    return Err(header_error());
                }
                header_seen = true;
                continue;
            }
            let [from, to, cat, source] = fields[..] else {
                return Err(bad("expected 4 columns"));
            };
            let (Some((l1, from)), Some((l2, to))) = (category(from), category(to)) else {
                return Err(bad(
                    "from and to must be ICD-10 categories: a letter and two digits (F10)",
                ));
            };
            if l1 != l2 || from > to {
                return Err(bad("from and to must have the same letter, from <= to"));
            }
            let flags = match cat.trim() {
                "PSY" => Flags {
                    eth: false,
                    psy: true,
                },
                "ETH" => Flags {
                    eth: true,
                    psy: false,
                },
                _ => return Err(bad("category must be PSY or ETH")),
            };
            if source.trim().is_empty() {
                return Err(bad("source (the citation) is required"));
            }
            if let Some(o) = rows
                .iter()
                .find(|r| r.letter == l1 && r.from <= to && from <= r.to)
            {
                return Err(bad(&format!(
                    "overlaps the range {}{:02}-{}{:02}",
                    o.letter as char, o.from, o.letter as char, o.to
                )));
            }
            if rows.len() >= MAX_ROWS {
                return Err(bad("too many rows"));
            }
            rows.push(Range {
                letter: l1,
                from,
                to,
                flags,
            });
        }
        if !header_seen {
            return Err(header_error());
        }
        Ok(Icd10Ranges { rows })
    }

    /// The labels a diagnosis code carries (none when no range holds it).
    pub(crate) fn classify(&self, code: &str) -> Flags {
        // Without building the dot-free upper-cased copy (2 allocations): a
        // letter, then two bytes that parse as a `u8` (two digits, or `+`
        // and a digit) — as `rest.get(0..2)?.parse::<u8>()`.
        let mut b = code.bytes().filter(|&b| b != b'.');
        let Some(letter) = b.next().filter(u8::is_ascii_alphabetic) else {
            return Flags::default();
        };
        let letter = letter.to_ascii_uppercase();
        let digit = |c: Option<u8>| c.filter(u8::is_ascii_digit).map(|c| c - b'0');
        let (x, y) = (b.next(), b.next());
        let n = match (x, digit(y)) {
            (Some(b'+'), Some(u)) => Some(u),
            (x, Some(u)) => digit(x).map(|t| t * 10 + u),
            _ => None,
        };
        let Some(n) = n else {
            return Flags::default();
        };
        self.rows
            .iter()
            .find(|r| r.letter == letter && r.from <= n && n <= r.to)
            .map(|r| r.flags)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Icd10Ranges {
        let f = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../mappings/terminology/icd10-sensitivity.csv");
        Icd10Ranges::load(&f).unwrap()
    }

    /// The shipped table: F10–F19 (substance use) → ETH; any other F code
    /// → PSY; other letters nothing.
    #[test]
    fn icd10_classes() {
        let t = shipped();
        assert!(t.classify("F10.20").eth);
        assert!(t.classify("F1920").eth);
        assert!(!t.classify("F10.20").psy);
        assert!(t.classify("F32.9").psy);
        assert!(t.classify("f20").psy);
        let f = t.classify("J45.909");
        assert!(!f.eth && !f.psy);
        assert!(!t.classify("F").psy);
        // The same answer as the dot-free, upper-cased copy parsed as `u8`.
        for code in [
            "F1", "F+5", "F-5", "F++", "f.1.9", "F1é", "Fé1", "F.", "", "G10", "F0", "F99",
        ] {
            let c = code.replace('.', "").to_ascii_uppercase();
            let want = c
                .strip_prefix('F')
                .and_then(|r| r.get(0..2))
                .and_then(|d| d.parse::<u8>().ok());
            let f = t.classify(code);
            assert_eq!(f.eth, matches!(want, Some(10..=19)), "{code}");
            assert_eq!(
                f.psy,
                matches!(want, Some(n) if !(10..=19).contains(&n)),
                "{code}"
            );
        }
    }

    /// A row added for another letter labels that letter only.
    #[test]
    fn another_letter_is_a_row_away() {
        let t = Icd10Ranges::parse(
            Path::new("t.csv"),
            "from,to,category,source\nZ71,Z71,ETH,\"cite, here\"\n",
        )
        .unwrap();
        assert!(t.classify("Z71.41").eth);
        assert!(!t.classify("Z72").eth && !t.classify("F10").eth);
    }

    /// Every malformed row is a load error naming the file and the line.
    #[test]
    fn malformed_rows_name_file_and_line() {
        let p = Path::new("icd10-sensitivity.csv");
        let e = Icd10Ranges::parse(p, "from,to,label\n").unwrap_err();
        assert_eq!(e.path, "line 1");
        for (row, why) in [
            ("F10,F19,ETH", "4 columns"),
            ("F1,F19,ETH,x", "letter and two digits"),
            ("F10,G19,ETH,x", "same letter"),
            ("F19,F10,ETH,x", "from <= to"),
            ("F10,F19,SEX,x", "PSY or ETH"),
            ("F10,F19,ETH,  ", "citation"),
            ("F05,F12,PSY,x", "overlaps the range F00-F09"),
            ("F10,F19,ETH,\"x", "unterminated"),
        ] {
            let text = format!("from,to,category,source\n# comment\nF00,F09,PSY,x\n{row}\n");
            let e = Icd10Ranges::parse(p, &text).unwrap_err();
            assert_eq!(e.path, "line 4", "{row}");
            assert!(e.reason.contains(why), "{row}: {e}");
            assert!(
                e.to_string().starts_with("icd10-sensitivity.csv: line 4: "),
                "{e}"
            );
        }
    }
}
