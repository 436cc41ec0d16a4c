//! Concept maps: `mappings/terminology/<name>.csv` with the header
//! `source_code,target_system,target_code,target_display`, read with the
//! `csv` crate (quoted fields; `#` comment lines). Loaded once into
//! hash maps (small maps also into a list probed by packed codes); a lookup
//! is one hash probe or a short linear scan. Codes are matched exactly
//! (after trimming), so a map lists every spelling it accepts.

use std::collections::HashMap;
use std::path::Path;

use crate::error::MappingError;

/// Largest accepted concept-map file.
const MAX_CSV_BYTES: usize = 4 * 1024 * 1024;
/// Most rows in one concept map.
const MAX_ROWS: usize = 100_000;

/// One target concept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub system: String,
    pub code: String,
    pub display: String,
    /// Pre-rendered JSON: the three strings (empty when the string is) and
    /// the Coding object (`code`, `display`, `system`; empty members left
    /// out), so the writer copies them instead of escaping per message.
    pub system_json: Vec<u8>,
    pub code_json: Vec<u8>,
    pub display_json: Vec<u8>,
    pub coding_json: Vec<u8>,
}

impl Target {
    pub(crate) fn new(system: String, code: String, display: String) -> Target {
        let json = |s: &str| {
            let mut j = Vec::new();
            if !s.is_empty() {
                crate::eval::write_str(&mut j, s);
            }
            j
        };
        let (system_json, code_json, display_json) = (json(&system), json(&code), json(&display));
        let mut coding_json = vec![b'{'];
        for (k, x) in [
            (&b"\"code\":"[..], &code_json),
            (&b"\"display\":"[..], &display_json),
            (&b"\"system\":"[..], &system_json),
        ] {
            if !x.is_empty() {
                if coding_json.len() > 1 {
                    coding_json.push(b',');
                }
                coding_json.extend_from_slice(k);
                coding_json.extend_from_slice(x);
            }
        }
        coding_json.push(b'}');
        Target {
            system,
            code,
            display,
            system_json,
            code_json,
            display_json,
            coding_json,
        }
    }
}

/// A compiled concept map.
#[derive(Debug, Default)]
pub(crate) struct ConceptMap {
    rows: HashMap<String, Target, FastHash>,
    /// Small maps (every map the project ships): the rows whose source code
    /// is at most 7 bytes, keyed by [`pack`], for a linear probe (one `u64`
    /// comparison per row) instead of hashing; longer codes use `rows`.
    short: Option<Vec<(u64, Target)>>,
}

/// Rows up to which a map is probed linearly.
const SHORT_ROWS: usize = 64;

/// A code of at most 7 bytes packed with its length (distinct codes give
/// distinct keys); `None` when longer.
fn pack(code: &str) -> Option<u64> {
    let b = code.as_bytes();
    if b.len() > 7 {
        return None;
    }
    let mut w = [0u8; 8];
    w.get_mut(..b.len())?.copy_from_slice(b);
    Some(u64::from_le_bytes(w) | ((b.len() as u64) << 56))
}

/// FNV-1a: codes are short and the maps are loaded from reviewed files
/// (no adversarial keys), so a cheap hash beats SipHash on the hot path.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHash;

/// The running FNV-1a state.
pub(crate) struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl std::hash::BuildHasher for FastHash {
    type Hasher = Fnv;

    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl ConceptMap {
    /// Parse a concept map file.
    pub(crate) fn load(file: &Path) -> Result<ConceptMap, MappingError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| MappingError::new(file, "", format!("cannot read: {e}")))?;
        Self::parse(file, &text)
    }

    pub(crate) fn parse(file: &Path, text: &str) -> Result<ConceptMap, MappingError> {
        if text.len() > MAX_CSV_BYTES {
            return Err(MappingError::new(file, "", "concept map larger than 4 MiB"));
        }
        let header_error = || {
            MappingError::new(
                file,
                "line 1",
                "header must be source_code,target_system,target_code,target_display",
            )
        };
        let mut rows = HashMap::with_hasher(FastHash);
        let mut header_seen = false;
        for (n, row) in crate::csvrows::rows(text).enumerate() {
            let row =
                row.map_err(|(line, why)| MappingError::new(file, format!("line {line}"), why))?;
            let where_ = format!("line {}", row.line);
            if n == 0 {
                let header: Vec<&str> = row.fields.iter().collect();
                if row.line != 1
                    || header.join(",").trim_start_matches('\u{feff}').trim()
                        != "source_code,target_system,target_code,target_display"
                {
                    return Err(header_error());
                }
                header_seen = true;
                continue;
            }
            let fields: Vec<&str> = row.fields.iter().collect();
            let [src, system, code, display] = fields[..] else {
                return Err(MappingError::new(file, where_, "expected 4 columns"));
            };
            let src = src.trim().to_string();
            if src.is_empty() || code.trim().is_empty() {
                return Err(MappingError::new(
                    file,
                    where_,
                    "source_code and target_code are required",
                ));
            }
            if system.trim().chars().any(char::is_whitespace) {
                return Err(MappingError::new(
                    file,
                    where_,
                    "target_system must be a URI without spaces",
                ));
            }
            if rows.len() >= MAX_ROWS {
                return Err(MappingError::new(file, where_, "too many rows"));
            }
            let target = Target::new(
                system.trim().to_string(),
                code.trim().to_string(),
                display.trim().to_string(),
            );
            if rows.insert(src, target).is_some() {
                return Err(MappingError::new(file, where_, "duplicate source_code"));
            }
        }
        if !header_seen {
            return Err(header_error());
        }
        let short = (rows.len() <= SHORT_ROWS).then(|| {
            rows.iter()
                .filter_map(|(k, t)| Some((pack(k)?, t.clone())))
                .collect()
        });
        Ok(ConceptMap { rows, short })
    }

    /// Look a source code up.
    pub(crate) fn get(&self, code: &str) -> Option<&Target> {
        // Source values arrive trimmed: skip the trim when both ends are
        // visible ASCII (same key either way).
        let b = code.as_bytes();
        let visible = |c: Option<&u8>| c.is_some_and(|&c| c > b' ' && c < 0x7f);
        let code = if visible(b.first()) && visible(b.last()) {
            code
        } else {
            code.trim()
        };
        if let (Some(short), Some(key)) = (&self.short, pack(code)) {
            return short.iter().find(|(k, _)| *k == key).map(|(_, t)| t);
        }
        self.rows.get(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotes_and_rejects_bad_rows() {
        let p = Path::new("t.csv");
        let m = ConceptMap::parse(
            p,
            "source_code,target_system,target_code,target_display\nF,http://x,female,\"Female, adult\"\n",
        )
        .unwrap();
        assert_eq!(m.get("F").unwrap().display, "Female, adult");
        assert!(m.get("M").is_none());
        let e = ConceptMap::parse(p, "a,b\n").unwrap_err();
        assert_eq!(e.path, "line 1");
        let e = ConceptMap::parse(
            p,
            "source_code,target_system,target_code,target_display\nF,x,y\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = ConceptMap::parse(
            p,
            "source_code,target_system,target_code,target_display\nF,x,y,z\nF,x,y,z\n",
        )
        .unwrap_err();
        assert!(e.reason.contains("duplicate"));
        let e = ConceptMap::parse(p, "").unwrap_err();
        assert_eq!(e.path, "line 1");
        // Comment lines (quotes and all) and blank lines count towards the
        // line an error names; a quote left open is an error on its line.
        let h = "source_code,target_system,target_code,target_display\r\n";
        let m = ConceptMap::parse(p, &format!("{h}# \"a\" b\r\n\r\nM,http://x,male,\r\n")).unwrap();
        assert_eq!(m.get("M").unwrap().code, "male");
        let e = ConceptMap::parse(p, &format!("{h}# c\n\nM,http://x,\"male,x\n")).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.reason.as_str()),
            ("line 4", "unterminated quote")
        );
        let e = ConceptMap::parse(p, &format!("{h}# c\n\nM,http://x\n")).unwrap_err();
        assert_eq!(e.to_string(), "t.csv: line 4: expected 4 columns");
    }
}
