//! Who is calling: static bearer tokens and SMART Backend Services tokens,
//! both resolved to one [`Caller`] (client, organization, kind, scopes).
//!
//! - **Static tokens** (`clients[].token_sha256`): the SHA-256 hex of the
//!   presented token is looked up; such callers carry no scopes and may use
//!   every endpoint their organization kind may use.
//! - **SMART Backend Services** (`clients[].jwks_file`, see [`smart`]): a
//!   client signs a JWT assertion, `POST /auth/token` returns an access token.
//!   Access tokens are **self-contained HS256 JWTs** signed with the key named
//!   by `[auth] token_key_env` (several instances sharing the key accept each
//!   other's tokens; without it a random per-process key is used and tokens
//!   die with the process). They carry the client id and the granted
//!   `system/` scopes; the organization is looked up in the configuration at
//!   every request, so removing a client revokes its tokens at the next start.
//!
//! 401 = no token, or a token that is unknown, forged or expired; 403 = a
//! valid caller whose organization kind may not use the endpoint, or whose
//! scopes do not cover the resource type and access.

pub mod smart;

use std::collections::HashMap;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::api::ApiError;
use crate::config::{Config, OrgKind};

/// A resolved caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Configured client id.
    pub client_id: String,
    /// Organization the client acts for.
    pub org_id: String,
    /// That organization's kind.
    pub kind: OrgKind,
    /// Granted SMART scopes; `None` = a static token (no scope restriction).
    pub scopes: Option<Vec<Scope>>,
}

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

impl Caller {
    /// May this caller access `resource_type` this way (scopes only; the
    /// organization kind is checked by [`Auth::authenticate`])?
    pub fn may(&self, resource_type: &str, access: Access) -> bool {
        match &self.scopes {
            None => true,
            Some(scopes) => scopes.iter().any(|s| s.allows(resource_type, access)),
        }
    }

    /// 403 unless [`Caller::may`].
    pub fn require(&self, resource_type: &str, access: Access) -> Result<(), ApiError> {
        if self.may(resource_type, access) {
            Ok(())
        } else {
            Err(ApiError::InsufficientScope)
        }
    }
}

/// The authentication state built at start.
pub struct Auth {
    static_tokens: HashMap<String, Caller>,
    /// SMART Backend Services (token endpoint and issued-token validation).
    pub smart: smart::Smart,
}

impl Auth {
    /// Build from the configuration: the static token table and the SMART
    /// clients' JWKS files (read now; a bad file fails start-up).
    /// `token_url` is the absolute URL of `POST /auth/token`.
    pub fn new(cfg: &Config, token_url: String) -> Result<Auth, smart::SetupError> {
        let mut static_tokens = HashMap::new();
        for c in &cfg.clients {
            let (Some(hash), Some(org)) = (&c.token_sha256, cfg.organization(&c.organization))
            else {
                continue;
            };
            static_tokens.insert(
                hash.to_ascii_lowercase(),
                Caller {
                    client_id: c.id.clone(),
                    org_id: org.id.clone(),
                    kind: org.kind,
                    scopes: None,
                },
            );
        }
        Ok(Auth {
            static_tokens,
            smart: smart::Smart::new(cfg, token_url)?,
        })
    }

    /// Resolve the bearer token of a request and check the organization kind.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        allowed: &[OrgKind],
    ) -> Result<Caller, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        let token = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .and_then(|_| value.get(7..))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        let caller = match self.static_tokens.get(&digest) {
            Some(c) => c.clone(),
            None => self
                .smart
                .validate_access_token(token)
                .ok_or(ApiError::BadToken)?,
        };
        if !allowed.contains(&caller.kind) {
            return Err(ApiError::Forbidden(caller.kind.as_str()));
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_v1_and_v2() {
        let s = Scope::parse("system/Task.read").unwrap();
        assert!(s.allows("Task", Access::Read));
        assert!(!s.allows("Task", Access::Write));
        assert!(!s.allows("Patient", Access::Read));
        let s = Scope::parse("system/*.read").unwrap();
        assert!(s.allows("Patient", Access::Read));
        let s = Scope::parse("system/CarePlan.cu").unwrap();
        assert!(s.allows("CarePlan", Access::Write) && !s.allows("CarePlan", Access::Read));
        let s = Scope::parse("system/Task.rs").unwrap();
        assert_eq!(s.to_string(), "system/Task.read");
        for bad in [
            "patient/Task.read",
            "system/Task",
            "system/task.read",
            "system/Task.sr",
            "system/Task.",
            "system/Task.delete",
            "system/../x.read",
        ] {
            assert!(Scope::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn static_callers_are_unrestricted_by_scope() {
        let c = Caller {
            client_id: "c".into(),
            org_id: "o".into(),
            kind: OrgKind::Mcp,
            scopes: None,
        };
        assert!(c.may("Task", Access::Write));
        let c = Caller {
            scopes: Some(vec![Scope::parse("system/Patient.read").unwrap()]),
            ..c
        };
        assert!(c.may("Patient", Access::Read));
        assert!(!c.may("Task", Access::Read));
        assert!(c.require("Task", Access::Read).is_err());
    }
}
