//! SMART Backend Services (`client_credentials` with a signed JWT
//! assertion, RFC 7523) at `POST /auth/token`, and validation of the access
//! tokens it issues.
//!
//! The client assertion must:
//! - be signed with **RS384 or ES384** (anything else, `none` and HMAC
//!   included, is refused) by a key of the client's JWKS selected by `kid`;
//! - have `iss` = `sub` = the client id, `aud` = the token URL
//!   (`{server.public_url}/auth/token`), `exp` in the future and at most five
//!   minutes ahead, `nbf` (if present) not in the future, and a `jti` never
//!   seen before for this client (the store's `jti_use`, shared by every
//!   instance on one database).
//! - `exp` and `nbf` are checked with [`LEEWAY_SECS`] of clock skew, so the
//!   replay cache keeps a `jti` until `exp` **plus** that leeway: as long as
//!   the assertion itself would still be accepted, its `jti` is remembered.
//!
//! Errors follow RFC 6749 §5.2 as JSON (`{"error", "error_description"}`):
//! `invalid_request` (missing or malformed form fields),
//! `unsupported_grant_type`, `invalid_client` (401: unknown client, bad
//! algorithm, unknown `kid`, bad signature, `iss`/`sub` mismatch),
//! `invalid_grant` (expired, not yet valid, too long-lived, wrong audience,
//! replayed `jti`),
//! `invalid_scope` (no grantable scope). Descriptions carry no assertion
//! content beyond the client id.
//!
//! Granted scopes: the requested `system/` scopes, each cut down to what
//! the client's configured `scopes` allow (the client's ceiling, e.g. an
//! MCP's `system/Task.write` to accept and reject referrals) or, without
//! them, to what its organization kind could use (`write` only for ECM
//! providers and counties); `AuditEvent` only for operators; none →
//! `invalid_scope`.

use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Caller;
use crate::config::{Config, OrgKind};
use crate::edge::form::parse_form_pairs;
use crate::scopes::{Scope, MAX_SCOPE_LEN};

/// Largest accepted client assertion, bytes.
pub const MAX_ASSERTION_LEN: usize = 8 * 1024;
/// Latest accepted assertion `exp`, seconds after now.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;
/// Clock skew tolerated on `exp` and `nbf`, seconds (and how long past
/// `exp` a `jti` is remembered).
pub const LEEWAY_SECS: u64 = 30;
/// Largest JWKS file read at start.
pub const MAX_JWKS_BYTES: u64 = 256 * 1024;
/// `client_assertion_type` of RFC 7523.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Why the SMART set-up failed at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A client's JWKS file is unreadable or not a JWKS.
    #[error("clients ({client}): jwks_file {path}: {reason}")]
    Jwks {
        /// Client id.
        client: String,
        /// File path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The token signing key is missing or too short.
    #[error("auth.token_key_env: {0}")]
    Key(String),
}

struct SmartClient {
    org_id: String,
    kind: OrgKind,
    jwks: JwkSet,
    /// The configured ceiling (`clients[].scopes`); `None`: kind defaults.
    scopes: Option<Vec<Scope>>,
}

/// SMART Backend Services state.
pub struct Smart {
    clients: HashMap<String, SmartClient>,
    token_url: String,
    ttl_secs: i64,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// An RFC 6749 error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    /// The RFC 6749 error code.
    pub error: &'static str,
    /// Human-readable reason (no assertion content).
    pub description: String,
}

pub fn oauth(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        error,
        description: description.into(),
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = if self.error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        let body = json!({"error": self.error, "error_description": self.description});
        let mut resp = (status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
    jti: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    scope: String,
    iat: i64,
    exp: i64,
    jti: String,
}

/// A verified assertion, before the replay check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The client id (`iss` = `sub`).
    pub client_id: String,
    /// The assertion id.
    pub jti: String,
    /// Its expiry.
    pub exp: chrono::DateTime<Utc>,
}

impl VerifiedAssertion {
    /// Until when the replay cache must remember the `jti`: as long as the
    /// assertion is accepted, i.e. `exp` plus the leeway.
    pub fn remember_until(&self) -> chrono::DateTime<Utc> {
        self.exp + chrono::Duration::seconds(LEEWAY_SECS as i64)
    }
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The bearer token.
    pub access_token: String,
    /// Lifetime, seconds.
    pub expires_in: i64,
    /// Granted scopes, space-separated.
    pub scope: String,
}

fn random_hex(n: usize) -> Result<String, SetupError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| SetupError::Key(format!("no randomness: {e}")))?;
    Ok(hex::encode(buf))
}

impl Smart {
    /// Load every client's JWKS and the token signing key.
    pub fn new(cfg: &Config, token_url: String) -> Result<Smart, SetupError> {
        let mut clients = HashMap::new();
        for c in &cfg.clients {
            let (Some(path), Some(org)) = (&c.jwks_file, cfg.organization(&c.organization)) else {
                continue;
            };
            let fail = |reason: String| SetupError::Jwks {
                client: c.id.clone(),
                path: path.display().to_string(),
                reason,
            };
            let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
            if meta.len() > MAX_JWKS_BYTES {
                return Err(fail(format!("larger than {MAX_JWKS_BYTES} bytes")));
            }
            let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
            let jwks: JwkSet =
                serde_json::from_str(&text).map_err(|e| fail(format!("not a JWKS: {e}")))?;
            clients.insert(
                c.id.clone(),
                SmartClient {
                    org_id: org.id.clone(),
                    kind: org.kind,
                    jwks,
                    scopes: super::configured_scopes(c),
                },
            );
        }
        let secret = match &cfg.auth.token_key_env {
            Some(var) => {
                let v = std::env::var(var).map_err(|_| {
                    SetupError::Key(format!("environment variable {var} is not set"))
                })?;
                if v.len() < 32 {
                    return Err(SetupError::Key(format!(
                        "environment variable {var} must hold at least 32 bytes"
                    )));
                }
                v.into_bytes()
            }
            None => random_hex(32)?.into_bytes(),
        };
        Ok(Smart {
            clients,
            token_url,
            ttl_secs: i64::try_from(cfg.auth.token_ttl_secs)
                .unwrap_or(300)
                .clamp(1, 300),
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
        })
    }

    /// The token endpoint URL (the required assertion `aud`).
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// Verify a client assertion (everything but the replay check).
    pub fn verify_assertion(
        &self,
        assertion: &str,
        form_client_id: Option<&str>,
        now: chrono::DateTime<Utc>,
    ) -> Result<VerifiedAssertion, OAuthError> {
        if assertion.len() > MAX_ASSERTION_LEN {
            return Err(oauth("invalid_request", "client_assertion too large"));
        }
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|_| oauth("invalid_client", "client_assertion is not a signed JWT"))?;
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(oauth(
                "invalid_client",
                "client_assertion must be signed with RS384 or ES384",
            ));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| oauth("invalid_client", "client_assertion has no kid"))?;
        // The issuer names the client whose keys verify the signature; it is
        // trusted only once that signature checks out.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
            .map_err(|_| oauth("invalid_client", "client_assertion claims are malformed"))?;
        let client_id = unverified.claims.iss;
        if form_client_id.is_some_and(|c| c != client_id) {
            return Err(oauth(
                "invalid_client",
                "client_id does not match the assertion",
            ));
        }
        let client = self
            .clients
            .get(&client_id)
            .ok_or_else(|| oauth("invalid_client", "unknown client"))?;
        let jwk = client
            .jwks
            .find(kid)
            .ok_or_else(|| oauth("invalid_client", format!("client {client_id}: unknown kid")))?;
        let family_ok = match (&jwk.algorithm, header.alg) {
            (AlgorithmParameters::RSA(_), Algorithm::RS384) => true,
            (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
                ec.curve == EllipticCurve::P384
            }
            _ => false,
        };
        if !family_ok {
            return Err(oauth(
                "invalid_client",
                format!("client {client_id}: key {kid} does not match the algorithm"),
            ));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| {
            oauth(
                "invalid_client",
                format!("client {client_id}: key {kid} is unusable"),
            )
        })?;
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_audience(&[self.token_url.as_str()]);
        v.set_issuer(&[client_id.as_str()]);
        v.sub = Some(client_id.clone());
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => oauth("invalid_grant", "client_assertion has expired"),
                K::ImmatureSignature => {
                    oauth("invalid_grant", "client_assertion is not valid yet (nbf)")
                }
                K::InvalidAudience => oauth(
                    "invalid_grant",
                    format!("client_assertion aud must be {}", self.token_url),
                ),
                K::InvalidSignature => oauth("invalid_client", "bad client_assertion signature"),
                K::InvalidIssuer | K::InvalidSubject => {
                    oauth("invalid_client", "iss and sub must both be the client id")
                }
                K::MissingRequiredClaim(c) => {
                    oauth("invalid_grant", format!("client_assertion lacks {c}"))
                }
                _ => oauth("invalid_client", "client_assertion refused"),
            }
        })?;
        let c = data.claims;
        if c.sub != client_id {
            return Err(oauth(
                "invalid_client",
                "iss and sub must both be the client id",
            ));
        }
        if c.exp - now.timestamp() > MAX_ASSERTION_LIFETIME_SECS + LEEWAY_SECS as i64 {
            return Err(oauth(
                "invalid_grant",
                "client_assertion exp is more than 5 minutes ahead",
            ));
        }
        let jti = c
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| oauth("invalid_grant", "client_assertion needs a jti"))?;
        let exp = chrono::DateTime::from_timestamp(c.exp, 0)
            .ok_or_else(|| oauth("invalid_grant", "client_assertion exp out of range"))?;
        Ok(VerifiedAssertion {
            client_id,
            jti,
            exp,
        })
    }

    /// The scopes granted to `client_id` out of the space-separated `requested`.
    pub fn grant_scopes(&self, client_id: &str, requested: &str) -> Result<Vec<Scope>, OAuthError> {
        let client = self
            .clients
            .get(client_id)
            .ok_or_else(|| oauth("invalid_client", "unknown client"))?;
        if requested.len() > MAX_SCOPE_LEN {
            return Err(oauth("invalid_scope", "scope too long"));
        }
        let mut granted = Vec::new();
        for s in requested.split_ascii_whitespace() {
            let Some(mut scope) = Scope::parse(s) else {
                return Err(oauth(
                    "invalid_scope",
                    "only system/{Type}.{read|write|*} scopes are supported",
                ));
            };
            let known = scope
                .resource
                .as_deref()
                .is_none_or(crate::scopes::scope_type_known);
            if !known {
                continue;
            }
            if scope.resource.as_deref() == Some("AuditEvent") && client.kind != OrgKind::Operator {
                continue;
            }
            let cut: Vec<Scope> = match &client.scopes {
                Some(ceiling) => ceiling.iter().filter_map(|c| scope.intersect(c)).collect(),
                None => {
                    // A community referrer writes referrals only.
                    let referral = client.kind == OrgKind::Referrer
                        && scope.resource.as_deref() == Some("ServiceRequest");
                    if !(referral || matches!(client.kind, OrgKind::EcmProvider | OrgKind::County))
                    {
                        scope.write = false;
                    }
                    vec![scope]
                }
            };
            for scope in cut {
                if (scope.read || scope.write) && !granted.contains(&scope) {
                    granted.push(scope);
                }
            }
        }
        if granted.is_empty() {
            return Err(oauth("invalid_scope", "no requested scope can be granted"));
        }
        Ok(granted)
    }

    /// Issue an access token.
    pub fn issue(
        &self,
        client_id: &str,
        scopes: &[Scope],
        now: chrono::DateTime<Utc>,
    ) -> Result<Issued, OAuthError> {
        let scope = scopes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let claims = AccessClaims {
            iss: self.token_url.clone(),
            sub: client_id.to_string(),
            scope: scope.clone(),
            iat: now.timestamp(),
            exp: now.timestamp() + self.ttl_secs,
            jti: random_hex(16).map_err(|_| oauth("server_error", "no randomness"))?,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| oauth("server_error", "token signing failed"))?;
        Ok(Issued {
            access_token: token,
            expires_in: self.ttl_secs,
            scope,
        })
    }

    /// The caller of an issued access token; `None` if forged, expired, or
    /// its client is no longer configured.
    pub fn validate_access_token(&self, token: &str) -> Option<Caller> {
        if token.len() > 4096 || token.matches('.').count() != 2 {
            return None;
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_aud = false;
        v.set_issuer(&[self.token_url.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &v).ok()?;
        let c = data.claims;
        let client = self.clients.get(&c.sub)?;
        let scopes: Vec<Scope> = c
            .scope
            .split_ascii_whitespace()
            .filter_map(Scope::parse)
            .collect();
        Some(Caller {
            client_id: c.sub,
            org_id: client.org_id.clone(),
            kind: client.kind,
            scopes: Some(scopes),
        })
    }
}

/// Decode an `application/x-www-form-urlencoded` body (bounded by the body
/// limit). Repeated keys: the first wins. `None` for a malformed `%` escape or
/// a name or value that is not UTF-8 ([`parse_form_pairs`]).
pub fn parse_form(body: &[u8]) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in parse_form_pairs(body).ok()? {
        out.entry(k).or_insert(v);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smart_with(scopes_line: &str) -> Result<Smart, crate::config::ConfigError> {
        let jwks = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smart/plan-a.jwks.json"
        );
        let orgs = include_str!("../../tests/fixtures/orgs.toml");
        let text = format!(
            r#"{orgs}
[[clients]]
id = "plan-a-backend"
organization = "mcp-a"
jwks_file = "{jwks}"
{scopes_line}
"#
        );
        let cfg = Config::from_toml(&text, "t.toml")?;
        Ok(Smart::new(&cfg, "http://x/auth/token".into()).unwrap())
    }

    fn granted(smart: &Smart, requested: &str) -> Result<String, OAuthError> {
        smart.grant_scopes("plan-a-backend", requested).map(|g| {
            g.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    #[test]
    fn configured_scopes_are_the_ceiling() {
        // Without configured scopes an MCP gets no write scope.
        let kind_default = smart_with("").unwrap();
        assert_eq!(
            granted(&kind_default, "system/Task.* system/Patient.read").unwrap(),
            "system/Task.read system/Patient.read"
        );
        // Configured: Task.write is grantable, nothing beyond the list is.
        let plan = smart_with(r#"scopes = ["system/*.read", "system/Task.write"]"#).unwrap();
        assert_eq!(
            granted(&plan, "system/Task.* system/CarePlan.write").unwrap(),
            "system/Task.read system/Task.write"
        );
        assert_eq!(
            granted(&plan, "system/*.*").unwrap(),
            "system/*.read system/Task.write"
        );
        assert_eq!(
            granted(&plan, "system/CarePlan.write").unwrap_err().error,
            "invalid_scope"
        );
        // The configuration is validated.
        for bad in [
            r#"scopes = []"#,
            r#"scopes = ["patient/Task.read"]"#,
            r#"scopes = ["system/Nope.read"]"#,
            r#"scopes = ["system/AuditEvent.read"]"#,
        ] {
            let e = smart_with(bad).err().expect(bad).to_string();
            assert!(
                e.contains("clients[0] (plan-a-backend).scopes"),
                "{bad}: {e}"
            );
            assert!(
                !e.contains("Nope") && !e.contains("patient/"),
                "no values echoed: {e}"
            );
        }
    }

    #[test]
    fn a_referrer_may_write_referrals_only_by_default() {
        let jwks = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smart/plan-a.jwks.json"
        );
        let orgs = include_str!("../../tests/fixtures/orgs.toml");
        let text = format!(
            "{orgs}\n[[organizations]]\nid = \"mercy\"\nkind = \"referrer\"\nname = \"Mercy\"\n[[clients]]\nid = \"mercy-backend\"\norganization = \"mercy\"\njwks_file = \"{jwks}\"\n"
        );
        let cfg = Config::from_toml(&text, "t.toml").unwrap();
        let smart = Smart::new(&cfg, "http://x/auth/token".into()).unwrap();
        let g: Vec<String> = smart
            .grant_scopes(
                "mercy-backend",
                "system/ServiceRequest.* system/Task.* system/CarePlan.write",
            )
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        // ServiceRequest read and write; Task read only; no CarePlan write.
        assert_eq!(g, ["system/ServiceRequest.*", "system/Task.read"]);
    }

    #[test]
    fn form_decoding() {
        let f = parse_form(b"a=1&b=x%2By+z&a=2&c").unwrap();
        assert_eq!(f["a"], "1");
        assert_eq!(f["b"], "x+y z");
        assert_eq!(f["c"], "");
        assert!(parse_form(b"a=%zz").is_none());
        assert!(parse_form(b"a=%4").is_none());
    }

    #[test]
    fn form_decoding_plus_literal_plus_bad_escapes_and_non_utf8() {
        let f = parse_form(b"scope=system%2FTask.read+system%2FPatient.read&k=a%2Bb+c").unwrap();
        assert_eq!(f["scope"], "system/Task.read system/Patient.read");
        assert_eq!(f["k"], "a+b c");
        for bad in [
            &b"grant_type=client_credentials&scope=%zz"[..],
            b"scope=%",
            b"%G0=1",
            b"scope=%FF",
            b"scope=%C3%28",
            b"scope=\xc3",
        ] {
            assert!(
                parse_form(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
