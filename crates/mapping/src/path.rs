//! Source paths, parsed once at load time.
//!
//! HL7 v2 (`source: hl7v2`):
//! - `PID` — a segment (only meaningful for `$for_each` / `$exists`);
//! - `PID-3`, `PID-3.1`, `PID-3.4.2`, `PID-3[2].1` — field, component,
//!   subcomponent, optional 1-based repetition (default 1);
//! - `.5`, `.4.1` — relative to the repetition a `$for_each` is visiting.
//!
//! While a `$for_each` visits a segment (or one of its repetitions), an
//! absolute path naming the same segment id reads from *that* segment, so
//! `DG1-3.1` inside `$for_each: DG1` is the current diagnosis.
//!
//! JSON (`source: json`): dotted member names, `child.name.given`; a
//! leading `.` is relative to the element a `$for_each` is visiting.

/// A compiled HL7 v2 path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hl7Path {
    /// Segment id; `None` for a path relative to the current repetition.
    pub segment: Option<String>,
    /// `segment` packed for fast comparison (`source::seg_key`); 0 = relative.
    pub seg_key: u32,
    /// Field number (0 = the whole segment).
    pub field: usize,
    /// Repetition (1-based); `None` = not given (first, or all for `$for_each`).
    pub rep: Option<usize>,
    /// Component (0 = whole repetition).
    pub comp: usize,
    /// Subcomponent (0 = whole component).
    pub sub: usize,
}

/// A compiled JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonPath {
    pub relative: bool,
    pub members: Vec<String>,
}

/// A path for either source kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourcePath {
    Hl7(Hl7Path),
    Json(JsonPath),
}

const MAX_INDEX: usize = 999;

fn index(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if n == 0 || n > MAX_INDEX {
        return Err(format!("index {n} out of range 1..={MAX_INDEX}"));
    }
    Ok(n)
}

/// Parse an HL7 v2 path.
pub(crate) fn parse_hl7(s: &str) -> Result<Hl7Path, String> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('.') {
        let mut parts = rel.split('.');
        let comp = index(parts.next().unwrap_or(""))?;
        let sub = parts.next().map(index).transpose()?.unwrap_or(0);
        if parts.next().is_some() {
            return Err(format!("relative path `{s}` has too many parts"));
        }
        return Ok(Hl7Path {
            segment: None,
            seg_key: 0,
            field: 0,
            rep: None,
            comp,
            sub,
        });
    }
    let (seg, rest) = match s.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    if seg.len() != 3
        || !seg
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "`{s}`: segment id must be 3 upper-case letters or digits"
        ));
    }
    let Some(rest) = rest else {
        return Ok(Hl7Path {
            segment: Some(seg.to_string()),
            seg_key: crate::source::seg_key(seg),
            field: 0,
            rep: None,
            comp: 0,
            sub: 0,
        });
    };
    let mut parts = rest.split('.');
    let field_part = parts.next().unwrap_or("");
    let (field, rep) = match field_part.split_once('[') {
        Some((f, r)) => {
            let r = r
                .strip_suffix(']')
                .ok_or_else(|| format!("`{s}`: missing `]`"))?;
            (index(f)?, Some(index(r)?))
        }
        None => (index(field_part)?, None),
    };
    let comp = parts.next().map(index).transpose()?.unwrap_or(0);
    let sub = parts.next().map(index).transpose()?.unwrap_or(0);
    if parts.next().is_some() {
        return Err(format!("`{s}` has too many parts"));
    }
    Ok(Hl7Path {
        segment: Some(seg.to_string()),
        seg_key: crate::source::seg_key(seg),
        field,
        rep,
        comp,
        sub,
    })
}

/// Parse a JSON path.
pub(crate) fn parse_json(s: &str) -> Result<JsonPath, String> {
    let s = s.trim();
    let (relative, body) = match s.strip_prefix('.') {
        Some(b) => (true, b),
        None => (false, s),
    };
    if body.is_empty() {
        return Ok(JsonPath {
            relative,
            members: Vec::new(),
        });
    }
    let members: Vec<String> = body.split('.').map(str::to_string).collect();
    if members.iter().any(|m| m.is_empty() || m.len() > 64) || members.len() > 16 {
        return Err(format!("`{s}` is not a dotted member path"));
    }
    Ok(JsonPath { relative, members })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl7_paths() {
        let p = parse_hl7("PID-3[2].4.1").unwrap();
        assert_eq!(
            p,
            Hl7Path {
                segment: Some("PID".into()),
                seg_key: crate::source::seg_key("PID"),
                field: 3,
                rep: Some(2),
                comp: 4,
                sub: 1
            }
        );
        let p = parse_hl7(".5").unwrap();
        assert_eq!(p.segment, None);
        assert_eq!(p.comp, 5);
        assert_eq!(parse_hl7("DG1").unwrap().field, 0);
        assert!(parse_hl7("pid-3").is_err());
        assert!(parse_hl7("PID-0").is_err());
        assert!(parse_hl7("PID-3.1.1.1").is_err());
        assert!(parse_hl7("PID-3[x]").is_err());
        assert!(parse_hl7("PID-3[2").is_err());
    }

    #[test]
    fn json_paths() {
        let p = parse_json("child.name.given").unwrap();
        assert_eq!(p.members, vec!["child", "name", "given"]);
        assert!(parse_json(".family").unwrap().relative);
        assert!(parse_json("a..b").is_err());
    }
}
