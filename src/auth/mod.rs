//! Who is calling: static bearer tokens and SMART Backend Services tokens,
//! both resolved to one [`Caller`] (client, organization, kind, scopes).
//!
//! - **Static tokens** (`clients[].token_sha256`): the SHA-256 hex of the
//!   presented token is looked up; such callers carry no scopes and may use
//!   every endpoint their organization kind may use — unless the client has
//!   `scopes = [...]` configured, which then are its scopes.
//! - **SMART Backend Services** (`clients[].jwks_file`, see [`smart`]): a
//!   client signs a JWT assertion, `POST /auth/token` returns an access token.
//!   Access tokens are **self-contained HS256 JWTs** signed with the key named
//!   by `[auth] token_key_env` (several instances sharing the key accept each
//!   other's tokens; without it a random per-process key is used and tokens
//!   die with the process). They carry the client id and the granted
//!   `system/` scopes; the organization is looked up in the configuration at
//!   every request, so removing a client revokes its tokens at the next start.
//!   A client's `scopes` (configuration) are the most it is granted; without
//!   them, its organization kind's defaults apply.
//!
//! - **Client certificates** (`clients[].cert_sha256`, with `[server.tls]`
//!   `client_ca_file`): a connection whose certificate chained to the client
//!   CA and whose SHA-256 fingerprint (of the DER) is configured is that
//!   client, with no bearer token needed; like a static token it carries no
//!   scopes (or the client's configured `scopes`). A bearer token sent as well must name the same client (401
//!   otherwise). A CA-valid certificate that no client lists gives no
//!   identity: the bearer token decides.
//!
//! 401 = no credential, a token that is unknown, forged or expired, or a token
//! and a certificate naming different clients; 403 = a valid caller whose
//! organization kind may not use the endpoint, or whose scopes do not cover
//! the resource type and access.
//!
//! Which scope each endpoint needs is one table,
//! [`crate::api::route_scopes::ROUTE_SCOPES`], enforced by one layer
//! ([`crate::api::route_scopes::enforce`]) on every matched route
//! (`docs/auth.md`); the scope grammar is [`crate::scopes`].

pub mod smart;

use std::collections::HashMap;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::config::{Config, OrgKind};
use crate::edge::ApiError;
use crate::edge::ClientCert;
pub use crate::scopes::{Access, Scope};

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

impl Caller {
    /// May this caller access `resource_type` this way (scopes only; the
    /// organization kind is checked by [`Auth::authenticate`])?
    pub fn may(&self, resource_type: &str, access: Access) -> bool {
        match &self.scopes {
            None => true,
            Some(scopes) => scopes.iter().any(|s| s.allows(resource_type, access)),
        }
    }

    /// May this caller access every resource type this way (a `system/*`
    /// scope; for endpoints that are not about one type, e.g. `/metrics`)?
    pub fn may_all(&self, access: Access) -> bool {
        match &self.scopes {
            None => true,
            Some(scopes) => scopes
                .iter()
                .any(|s| s.resource.is_none() && s.allows("*", access)),
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
    /// Client certificate fingerprint (lowercase hex) → caller.
    cert_clients: HashMap<String, Caller>,
    /// SMART Backend Services (token endpoint and issued-token validation).
    pub smart: smart::Smart,
}

impl Auth {
    /// Build from the configuration: the static token table and the SMART
    /// clients' JWKS files (read now; a bad file fails start-up).
    /// `token_url` is the absolute URL of `POST /auth/token`.
    pub fn new(cfg: &Config, token_url: String) -> Result<Auth, smart::SetupError> {
        let mut static_tokens = HashMap::new();
        let mut cert_clients = HashMap::new();
        for c in &cfg.clients {
            let Some(org) = cfg.organization(&c.organization) else {
                continue;
            };
            let caller = Caller {
                client_id: c.id.clone(),
                org_id: org.id.clone(),
                kind: org.kind,
                scopes: configured_scopes(c),
            };
            if let Some(fp) = c.cert_fingerprint() {
                cert_clients.insert(fp, caller.clone());
            }
            if let Some(hash) = &c.token_sha256 {
                static_tokens.insert(hash.to_ascii_lowercase(), caller);
            }
        }
        Ok(Auth {
            static_tokens,
            cert_clients,
            smart: smart::Smart::new(cfg, token_url)?,
        })
    }

    /// Resolve the request's credentials — the bearer token and the
    /// connection's client certificate — and check the organization kind.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        cert: &ClientCert,
        allowed: &[OrgKind],
    ) -> Result<Caller, ApiError> {
        let caller = self.identify(headers, cert)?;
        if !allowed.contains(&caller.kind) {
            return Err(ApiError::Forbidden(caller.kind.as_str()));
        }
        Ok(caller)
    }

    /// Resolve the request's credentials without checking the organization
    /// kind (401 errors only).
    pub fn identify(&self, headers: &HeaderMap, cert: &ClientCert) -> Result<Caller, ApiError> {
        let by_cert = cert.0.as_deref().and_then(|fp| self.cert_clients.get(fp));
        let caller = match (bearer_token(headers)?, by_cert) {
            (None, None) => return Err(ApiError::Unauthenticated),
            (None, Some(c)) => c.clone(),
            (Some(token), by_cert) => {
                let caller = self.resolve_token(token)?;
                if by_cert.is_some_and(|c| c.client_id != caller.client_id) {
                    return Err(ApiError::CredentialMismatch);
                }
                caller
            }
        };
        Ok(caller)
    }

    fn resolve_token(&self, token: &str) -> Result<Caller, ApiError> {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        match self.static_tokens.get(&digest) {
            Some(c) => Ok(c.clone()),
            None => self
                .smart
                .validate_access_token(token)
                .ok_or(ApiError::BadToken),
        }
    }
}

/// A client's configured `scopes`, parsed (`None`: not configured). The
/// configuration was validated, so nothing is dropped in practice.
pub fn configured_scopes(c: &crate::config::Client) -> Option<Vec<Scope>> {
    c.scopes
        .as_ref()
        .map(|list| list.iter().filter_map(|s| Scope::parse(s)).collect())
}

/// The bearer token of `Authorization`: `None` without the header, 401 for a
/// header that is not `Bearer <token>`.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ApiError::Unauthenticated)?;
    value
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .and_then(|_| value.get(7..))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or(ApiError::Unauthenticated)
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

    #[test]
    fn client_certificates_resolve_and_must_agree_with_the_token() {
        let sha = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
        let fp = sha("the certificate DER");
        let text = format!(
            r#"
[server.tls]
cert_file = "c.pem"
key_file = "k.pem"
client_ca_file = "ca.pem"

[[organizations]]
id = "ops"
kind = "operator"
name = "Ops"

[[organizations]]
id = "st-mary"
kind = "adt_source"
name = "St Mary"
sending_facilities = ["STMARY"]

[[clients]]
id = "ops-cert"
organization = "ops"
cert_sha256 = "{fp}"

[[clients]]
id = "hospital"
organization = "st-mary"
token_sha256 = "{hosp}"
"#,
            hosp = sha("hospital-token"),
        );
        let cfg = Config::from_toml(&text, "t.toml").unwrap();
        let auth = Auth::new(&cfg, "http://x/auth/token".into()).unwrap();
        let ops = [OrgKind::Operator];
        let any = [OrgKind::Operator, OrgKind::AdtSource];
        let none = HeaderMap::new();
        let mut hospital = HeaderMap::new();
        hospital.insert(
            header::AUTHORIZATION,
            "Bearer hospital-token".parse().unwrap(),
        );
        let mapped = ClientCert(Some(std::sync::Arc::from(fp.as_str())));
        let unmapped = ClientCert(Some(std::sync::Arc::from(sha("another").as_str())));

        let c = auth.authenticate(&none, &mapped, &ops).unwrap();
        assert_eq!(
            (c.client_id.as_str(), c.org_id.as_str()),
            ("ops-cert", "ops")
        );
        assert!(c.scopes.is_none());
        assert!(matches!(
            auth.authenticate(&hospital, &mapped, &any),
            Err(ApiError::CredentialMismatch)
        ));
        assert!(matches!(
            auth.authenticate(&none, &unmapped, &ops),
            Err(ApiError::Unauthenticated)
        ));
        assert!(matches!(
            auth.authenticate(&none, &ClientCert::NONE, &ops),
            Err(ApiError::Unauthenticated)
        ));
        let c = auth.authenticate(&hospital, &unmapped, &any).unwrap();
        assert_eq!(c.client_id, "hospital");
        assert!(matches!(
            auth.authenticate(&none, &mapped, &[OrgKind::AdtSource]),
            Err(ApiError::Forbidden("operator"))
        ));
        let mut bad = HeaderMap::new();
        bad.insert(header::AUTHORIZATION, "Basic eA==".parse().unwrap());
        assert!(matches!(
            auth.authenticate(&bad, &mapped, &ops),
            Err(ApiError::Unauthenticated)
        ));
    }
}
