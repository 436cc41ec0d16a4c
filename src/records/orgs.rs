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

/// Provider types whose referrals for POF 8 get streamlined (presumptive)
/// authorization (seed 003 Figure 5), as written in `provider_type`.
pub const STREAMLINED_TYPES: &[&str] = &[
    "county_behavioral_health",
    "specialty_behavioral_health",
    "wraparound",
    "hcpcfc",
    "dss",
    "ffa",
    "foster_family_agency",
    "thp",
    "transitional_housing",
    "crisis_residential",
];

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
