//! SMART Backend Services `system/` scopes: their grammar, what they grant,
//! and the check of the scopes a client is configured with. Pure; the
//! configuration validates against it, and `auth` grants by it.

/// Every resource type a scope may name: the types the FHIR API serves
/// (`fhir::params::RESOURCES`, checked by a test there), `AuditEvent`
/// (operators), and `Observation` (the eligibility result,
/// `GET /cws/eligibility`).
pub const SCOPED_TYPES: &[&str] = &[
    "Patient",
    "ServiceRequest",
    "Task",
    "CarePlan",
    "Consent",
    "CareTeam",
    "QuestionnaireResponse",
    "DocumentReference",
    "Encounter",
    "Condition",
    "Provenance",
    "AuditEvent",
    "Observation",
];

/// Read or write access to a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// read / search (SMART v2 `r`, `s`).
    Read,
    /// create / update (SMART v2 `c`, `u`).
    Write,
}

/// One `system/` scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Resource type, `None` = `*`.
    pub resource: Option<String>,
    /// Grants read and search.
    pub read: bool,
    /// Grants create and update.
    pub write: bool,
}

/// Longest scope string accepted.
pub const MAX_SCOPE_LEN: usize = 1024;

impl Scope {
    /// Parse `system/{Type|*}.{read|write|*|<SMART v2 letters cruds>}`.
    pub fn parse(s: &str) -> Option<Scope> {
        let rest = s.strip_prefix("system/")?;
        let (t, perm) = rest.split_once('.')?;
        let resource = match t {
            "*" => None,
            t if t.len() <= 64
                && t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && t.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                Some(t.to_string())
            }
            _ => return None,
        };
        let (read, write) = match perm {
            "read" => (true, false),
            "write" => (false, true),
            "*" => (true, true),
            v2 if !v2.is_empty() && is_ordered_subset(v2, "cruds") => (
                v2.contains('r') || v2.contains('s'),
                v2.contains('c') || v2.contains('u'),
            ),
            _ => return None,
        };
        Some(Scope {
            resource,
            read,
            write,
        })
    }

    /// Does this scope grant `access` to `resource_type`?
    pub fn allows(&self, resource_type: &str, access: Access) -> bool {
        let type_ok = self.resource.as_deref().is_none_or(|t| t == resource_type);
        type_ok
            && match access {
                Access::Read => self.read,
                Access::Write => self.write,
            }
    }
}

impl Scope {
    /// What this scope and `other` both grant (`None`: nothing).
    pub fn intersect(&self, other: &Scope) -> Option<Scope> {
        let resource = match (&self.resource, &other.resource) {
            (None, r) | (r, None) => r.clone(),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            _ => return None,
        };
        let s = Scope {
            resource,
            read: self.read && other.read,
            write: self.write && other.write,
        };
        (s.read || s.write).then_some(s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.resource.as_deref().unwrap_or("*");
        let p = match (self.read, self.write) {
            (true, true) => "*",
            (true, false) => "read",
            _ => "write",
        };
        write!(f, "system/{t}.{p}")
    }
}

fn is_ordered_subset(s: &str, of: &str) -> bool {
    let mut it = of.chars();
    s.chars().all(|c| it.by_ref().any(|o| o == c))
}

/// Most scopes one client may list in the configuration.
pub const MAX_CLIENT_SCOPES: usize = 64;

/// Is `t` a resource type a scope may name: a served FHIR type, `AuditEvent`,
/// or `Observation` (the eligibility result, `GET /cws/eligibility`).
pub fn scope_type_known(t: &str) -> bool {
    SCOPED_TYPES.contains(&t)
}

/// The problems of a client's configured `scopes` (empty: valid), each
/// naming the position, never the value.
pub fn validate_client_scopes(operator: bool, scopes: &[String]) -> Vec<String> {
    let mut errs = Vec::new();
    if scopes.is_empty() {
        errs.push(
            "scopes: must not be empty (leave it out for the organization kind's defaults)"
                .to_string(),
        );
    }
    if scopes.len() > MAX_CLIENT_SCOPES {
        errs.push(format!("scopes: at most {MAX_CLIENT_SCOPES} entries"));
    }
    for (j, s) in scopes.iter().enumerate() {
        let Some(scope) = Scope::parse(s) else {
            errs.push(format!(
                "scopes[{j}]: not a system/{{Type|*}}.{{read|write|*}} scope"
            ));
            continue;
        };
        match scope.resource.as_deref() {
            Some(t) if !scope_type_known(t) => errs.push(format!(
                "scopes[{j}]: not a resource type the gateway serves"
            )),
            Some("AuditEvent") if !operator => errs.push(format!(
                "scopes[{j}]: AuditEvent only for operator organizations"
            )),
            _ => {}
        }
    }
    errs
}
