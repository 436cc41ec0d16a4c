//! Configuration lookups: the county a caller speaks for, the MCP serving a
//! plan code in a county, ECM providers' contracts, and the `Organization`
//! resource of every configured organization (id = its configuration id).

use serde_json::{json, Value};

use crate::config::{Config, OrgKind, Organization};

/// The configured county organization for a county name (case-insensitive).
pub fn county_org<'c>(cfg: &'c Config, county: &str) -> Option<&'c Organization> {
    cfg.organizations.iter().find(|o| {
        o.kind == OrgKind::County
            && o.county
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(county.trim()))
    })
}

/// The MCP whose `plan_codes` hold `plan_code` and whose `counties` hold `county`.
pub fn mcp_for<'c>(cfg: &'c Config, plan_code: &str, county: &str) -> Option<&'c Organization> {
    cfg.organizations.iter().find(|o| {
        o.kind == OrgKind::Mcp
            && o.plan_codes.iter().any(|p| p == plan_code)
            && o.counties
                .iter()
                .any(|c| c.eq_ignore_ascii_case(county.trim()))
    })
}

/// MCPs serving a county.
pub fn mcps_in<'c>(cfg: &'c Config, county: &str) -> Vec<&'c Organization> {
    cfg.organizations
        .iter()
        .filter(|o| {
            o.kind == OrgKind::Mcp
                && o.counties
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(county.trim()))
        })
        .collect()
}

/// A county served by exactly one configured MCP (single-plan / COHS county).
pub fn single_plan_county(cfg: &Config, county: &str) -> bool {
    mcps_in(cfg, county).len() == 1
}

/// True when `ecm` is an ECM provider contracted with `mcp`.
pub fn contracted(cfg: &Config, ecm: &str, mcp: &str) -> bool {
    cfg.organization(ecm)
        .is_some_and(|o| o.kind == OrgKind::EcmProvider && o.mcps.iter().any(|m| m == mcp))
}

/// The streamlined-authorization table's file in the mappings tree.
pub const STREAMLINED_FILE: &str = "referral/streamlined-authorization.csv";

/// Most rows the streamlined-authorization table may hold.
const MAX_STREAMLINED_ROWS: usize = 500;

/// Which ECM provider types get streamlined (presumptive) authorization for
/// which Population of Focus: `mappings/referral/streamlined-authorization.csv`
/// (ECM Policy Guide VIII, Figure 5), one `(pof, provider_type)` pairing a row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Streamlined {
    pairs: Vec<(String, String)>,
}

/// Why the table was refused (start-up error).
#[derive(Debug, thiserror::Error)]
pub enum StreamlinedError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("line {line}: {reason}")]
    Invalid { line: u64, reason: String },
}

impl Streamlined {
    /// Parse and check the table: header `pof,provider_type,source`, `#`
    /// comment lines, every field non-empty, codes of `[a-z0-9_]`, no
    /// pairing twice.
    pub fn parse(text: &str) -> Result<Streamlined, StreamlinedError> {
        let mut rdr = csv::ReaderBuilder::new()
            .comment(Some(b'#'))
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let header_ok = rdr
            .headers()
            .map(|h| h.iter().collect::<Vec<_>>() == ["pof", "provider_type", "source"])
            .unwrap_or(false);
        if !header_ok {
            return Err(StreamlinedError::Invalid {
                line: 1,
                reason: "the header must be pof,provider_type,source".into(),
            });
        }
        let code = |c: &str| {
            !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        for rec in rdr.records() {
            let rec = rec.map_err(|e| StreamlinedError::Invalid {
                line: e.position().map_or(0, |p| p.line()),
                reason: e.to_string(),
            })?;
            let line = rec.position().map_or(0, |p| p.line());
            let (pof, ty, src) = (
                rec.get(0).unwrap_or(""),
                rec.get(1).unwrap_or(""),
                rec.get(2).unwrap_or(""),
            );
            if !code(pof) || !code(ty) {
                return Err(StreamlinedError::Invalid {
                    line,
                    reason: "pof and provider_type are codes of [a-z0-9_]".into(),
                });
            }
            if src.is_empty() {
                return Err(StreamlinedError::Invalid {
                    line,
                    reason: "source: cite the policy passage the pairing comes from".into(),
                });
            }
            let pair = (pof.to_string(), ty.to_string());
            if pairs.contains(&pair) {
                return Err(StreamlinedError::Invalid {
                    line,
                    reason: format!("POF {pof} and provider type {ty} are paired twice"),
                });
            }
            if pairs.len() >= MAX_STREAMLINED_ROWS {
                return Err(StreamlinedError::Invalid {
                    line,
                    reason: format!("more than {MAX_STREAMLINED_ROWS} rows"),
                });
            }
            pairs.push(pair);
        }
        Ok(Streamlined { pairs })
    }

    /// The table from the mappings tree: `dir/referral/streamlined-authorization.csv`
    /// when `dir` is given and holds it, else the built-in file.
    pub fn load(dir: Option<&std::path::Path>) -> Result<Streamlined, StreamlinedError> {
        let text = crate::embedded::mapping_file(dir, STREAMLINED_FILE)
            .map_err(|e| StreamlinedError::Read {
                path: e.path,
                reason: e.reason,
            })?
            .unwrap_or_default();
        Streamlined::parse(&text)
    }

    /// Is `provider_type` paired with `pof`?
    pub fn pairs(&self, pof: &str, provider_type: &str) -> bool {
        self.pairs
            .iter()
            .any(|(p, t)| p == pof && t == provider_type)
    }

    /// The provider types the table knows (each once, in table order).
    pub fn provider_types(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, t) in &self.pairs {
            if !out.contains(&t.as_str()) {
                out.push(t);
            }
        }
        out
    }

    /// The claimed POFs a referral from `ecm` for a member of `mcp` is
    /// streamlined for: `ecm` is an ECM provider contracted with `mcp`,
    /// contracted (`pofs`) for the POF, and of a provider type the table
    /// pairs with it. The caller removes POFs the county's facts refute.
    pub fn eligible_pofs<'a>(
        &self,
        cfg: &Config,
        ecm: &str,
        mcp: &str,
        claimed: &[&'a str],
    ) -> Vec<&'a str> {
        let Some(o) = cfg.organization(ecm) else {
            return Vec::new();
        };
        let Some(ty) = o.provider_type.as_deref() else {
            return Vec::new();
        };
        if o.kind != OrgKind::EcmProvider || !o.mcps.iter().any(|m| m == mcp) {
            return Vec::new();
        }
        claimed
            .iter()
            .copied()
            .filter(|p| o.pofs.iter().any(|x| x == p) && self.pairs(p, ty))
            .collect()
    }
}

/// The `Organization` resource of a configured organization.
pub fn organization_resource(base: &str, o: &Organization) -> Value {
    let mut r = json!({
        "resourceType": "Organization",
        "id": o.id,
        "active": true,
        "name": o.name,
        "identifier": [{"system": format!("{base}/identifier/organization"), "value": o.id}],
        "type": [{"coding": [{"system": format!("{base}/CodeSystem/organization-kind"), "code": o.kind.as_str()}]}],
    });
    if let Some(c) = &o.county {
        r["address"] = json!([{"district": c, "state": "CA"}]);
    }
    r
}

/// `Organization` resources for these ids (unknown ids skipped, no repeats).
pub fn organizations(cfg: &Config, ids: &[&str]) -> Vec<Value> {
    let base = &cfg.server.canonical_base;
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for id in ids {
        if seen.contains(id) {
            continue;
        }
        seen.push(id);
        if let Some(o) = cfg.organization(id) {
            out.push(organization_resource(base, o));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let text = r#"
[server]
canonical_base = "https://gw.example.org"
[[organizations]]
id = "mcp-a"
kind = "mcp"
name = "Plan A"
plan_codes = ["A1"]
counties = ["Fresno"]
[[organizations]]
id = "mcp-b"
kind = "mcp"
name = "Plan B"
plan_codes = ["B1"]
counties = ["Fresno"]
"#;
        let mut text = text.to_string();
        for (id, ty, pofs) in [
            ("street", "street_medicine", r#"["1b"]"#),
            ("smhs", "specialty_behavioral_health", r#"["1b", "3", "8"]"#),
            ("lhd", "local_health_department_ccs", r#"["7"]"#),
            ("wrap", "wraparound", r#"["8"]"#),
            ("wrap-no-8", "wraparound", r#"["2"]"#),
            ("obgyn", "ob_gyn", r#"["9"]"#),
            ("pcp", "primary_care", r#"["2", "8"]"#),
        ] {
            text.push_str(&format!(
                "[[organizations]]\nid = \"{id}\"\nkind = \"ecm_provider\"\nname = \"{id}\"\nmcps = [\"mcp-a\"]\npofs = {pofs}\nprovider_type = \"{ty}\"\n"
            ));
        }
        Config::from_toml(&text, "t.toml").unwrap()
    }

    #[test]
    fn streamlined_follows_figure_5_per_pof() {
        let t = Streamlined::load(None).unwrap();
        let cfg = cfg();
        // (provider, claimed POF, member's plan, streamlined?)
        let table: &[(&str, &str, &str, bool)] = &[
            ("street", "1b", "mcp-a", true),
            ("smhs", "1b", "mcp-a", true),
            ("smhs", "3", "mcp-a", true),
            ("lhd", "7", "mcp-a", true),
            ("wrap", "8", "mcp-a", true),
            ("smhs", "8", "mcp-a", true),
            ("obgyn", "9", "mcp-a", true),
            // Not contracted for the POF (its `pofs` lack it).
            ("wrap-no-8", "8", "mcp-a", false),
            ("street", "3", "mcp-a", false),
            // Contracted for the POF, but Figure 5 does not pair the type.
            ("pcp", "8", "mcp-a", false),
            ("obgyn", "8", "mcp-a", false),
            // Paired and contracted for the POF, but not with this plan.
            ("wrap", "8", "mcp-b", false),
            // Not an ECM provider at all.
            ("mcp-a", "8", "mcp-a", false),
        ];
        for (ecm, pof, mcp, want) in table {
            let got = !t.eligible_pofs(&cfg, ecm, mcp, &[pof]).is_empty();
            assert_eq!(got, *want, "{ecm} POF {pof} plan {mcp}");
        }
        assert!(t.pairs("2", "primary_care"));
        assert!(!t.pairs("4", "specialty_behavioral_health"));
        assert!(t.provider_types().contains(&"crisis_residential"));
    }

    #[test]
    fn a_bad_table_is_refused_by_line() {
        let e = Streamlined::parse("pof,type\n8,wraparound\n").unwrap_err();
        assert!(e.to_string().contains("header"), "{e}");
        let e = Streamlined::parse("pof,provider_type,source\n8,Wrap Around,x\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Streamlined::parse("pof,provider_type,source\n8,wraparound,\n").unwrap_err();
        assert!(e.to_string().contains("source"), "{e}");
        let e =
            Streamlined::parse("# c\npof,provider_type,source\n8,wraparound,a\n8,wraparound,b\n")
                .unwrap_err();
        assert!(e.to_string().contains("paired twice"), "{e}");
    }
}
