//! The member's managed care situation, from the stored Coverage: in an
//! MCP's plan, fee-for-service or share of cost, a plan no configured MCP
//! serves, or unknown.

use serde_json::Value;
use store::StoredResource;

use crate::config::{Config, OrgKind};
use crate::disclosure;

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// The member's managed care situation, from the stored Coverage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Managed {
    /// In the plan of this MCP.
    Mcp(String),
    /// Fee-for-service or share of cost.
    NotManaged,
    /// A plan code no configured MCP serves in the county.
    NoMcp,
    /// No enrollment known.
    Unknown,
}

fn ext_bool(res: &Value, suffix: &str) -> bool {
    res.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| {
            s(e, "/url").is_some_and(|u| u.ends_with(suffix))
                && e.get("valueBoolean") == Some(&Value::Bool(true))
        })
}

/// The MCP of the member's active Coverage, if any.
pub fn coverage_mcp(cfg: &Config, resources: &[StoredResource]) -> Option<String> {
    match managed(cfg, resources) {
        Managed::Mcp(m) => Some(m),
        _ => None,
    }
}

/// What the stored Coverage says.
pub fn managed(cfg: &Config, resources: &[StoredResource]) -> Managed {
    let mut seen = Managed::Unknown;
    for r in resources.iter().filter(|r| r.resource_type == "Coverage") {
        let b = &r.body;
        let payor = b
            .get("payor")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find_map(disclosure::org_of));
        if s(b, "/status") == Some("active") {
            if let Some(p) =
                payor.filter(|p| cfg.organization(p).is_some_and(|o| o.kind == OrgKind::Mcp))
            {
                return Managed::Mcp(p);
            }
        }
        if ext_bool(b, "/medi-cal-fee-for-service") || ext_bool(b, "/medi-cal-share-of-cost") {
            seen = Managed::NotManaged;
        } else if seen == Managed::Unknown {
            seen = Managed::NoMcp;
        }
    }
    seen
}
