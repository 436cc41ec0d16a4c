//! The HTTP edge's shared contract: the one error type every handler
//! returns ([`ApiError`], rendered as one FHIR `OperationOutcome` listing
//! every problem found), the response helpers, and the request's client
//! certificate. Messages carry field names, ids and rule names only — never
//! names, CINs, birth dates or addresses — because they may be logged.
//!
//! A store failure converts with `?` ([`From<store::StoreError>`]) and is
//! logged once, when the response is built; no handler drops it.

pub mod form;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The verified client certificate of the request's connection, as the
/// lowercase hex SHA-256 of its DER (`None`: plain HTTP, or no certificate).
/// Extracting it never fails.
#[derive(Debug, Clone, Default)]
pub struct ClientCert(pub Option<Arc<str>>);

impl ClientCert {
    /// No certificate (plain HTTP).
    pub const NONE: ClientCert = ClientCert(None);
}

impl<S: Send + Sync> FromRequestParts<S> for ClientCert {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientCert(
            parts
                .extensions
                .get::<ConnectInfo<crate::tls::TlsPeer>>()
                .and_then(|c| c.0.cert_sha256.clone()),
        ))
    }
}

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials (401, `login`).
    #[error("authentication required: send Authorization: Bearer <token>")]
    Unauthenticated,
    /// An unknown bearer token (401, `login`).
    #[error("the bearer token is not known")]
    BadToken,
    /// Token and client certificate name different clients (401, `login`).
    #[error("the bearer token and the client certificate name different clients")]
    CredentialMismatch,
    /// The caller's organization kind may not use the endpoint (403); the
    /// response carries [`ForbiddenKind`] for the scope layer's audit.
    #[error("organizations of kind {0} may not use this endpoint")]
    Forbidden(&'static str),
    /// The token's scopes do not cover the resource type and access (403).
    #[error("the token's scopes do not cover this resource type and access")]
    InsufficientScope,
    /// The caller's organization may not do this (403, `forbidden`).
    #[error("{0}")]
    Denied(String),
    /// Wrong `Content-Type` (415, `structure`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is not JSON (400, `structure`).
    #[error("{0}")]
    Malformed(String),
    /// The body is larger than `server.max_body_bytes` (413, `too-costly`).
    #[error("the body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// Schema violation (422, `invalid`); `expression` names the field.
    #[error("{text}")]
    Invalid {
        text: String,
        expression: Option<String>,
    },
    /// Several schema violations (422, `invalid`): one issue each, with its
    /// `expression` (at most `sources::schemas::MAX_ISSUES`, then one saying
    /// more were not listed).
    #[error("{}", .0.iter().map(|v| v.text.as_str()).collect::<Vec<_>>().join("; "))]
    Violations(Vec<Violation>),
    /// A program or consent rule refuses the request (422, `business-rule`).
    #[error("{text}")]
    BusinessRule {
        text: String,
        expression: Option<String>,
    },
    /// No such resource (404, `not-found`).
    #[error("{0}")]
    NotFound(String),
    /// The store is not reachable (503, `transient`), e.g. `/readyz`.
    #[error("the store is not reachable")]
    Unavailable,
    /// The store failed (503, `transient`); logged when answered. The text
    /// has no PHI.
    #[error("the store failed: {0}")]
    Store(#[from] store::StoreError),
    /// Something that should not happen (500, `exception`); logged.
    #[error("{0}")]
    Internal(String),
}

/// One schema violation: a text naming the field and the rule, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub text: String,
    pub expression: Option<String>,
}

impl ApiError {
    /// A schema/format error on `expression`.
    pub fn invalid(text: impl Into<String>, expression: Option<&str>) -> Self {
        ApiError::Invalid {
            text: text.into(),
            expression: expression.map(str::to_string),
        }
    }

    /// A business-rule refusal on `expression`.
    pub fn rule(text: impl Into<String>, expression: Option<&str>) -> Self {
        ApiError::BusinessRule {
            text: text.into(),
            expression: expression.map(str::to_string),
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated | ApiError::BadToken | ApiError::CredentialMismatch => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) | ApiError::InsufficientScope | ApiError::Denied(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid { .. } | ApiError::Violations(_) | ApiError::BusinessRule { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable | ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OperationOutcome issue code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated | ApiError::BadToken | ApiError::CredentialMismatch => {
                "login"
            }
            ApiError::Forbidden(_) | ApiError::InsufficientScope | ApiError::Denied(_) => {
                "forbidden"
            }
            ApiError::UnsupportedMediaType(_) | ApiError::Malformed(_) => "structure",
            ApiError::TooLarge(_) => "too-costly",
            ApiError::Invalid { .. } | ApiError::Violations(_) => "invalid",
            ApiError::BusinessRule { .. } => "business-rule",
            ApiError::NotFound(_) => "not-found",
            ApiError::Unavailable | ApiError::Store(_) => "transient",
            ApiError::Internal(_) => "exception",
        }
    }
}

/// A FHIR OperationOutcome with one issue.
pub fn operation_outcome(
    severity: &str,
    code: &str,
    text: &str,
    expression: Option<&str>,
) -> serde_json::Value {
    let mut issue = json!({ "severity": severity, "code": code, "diagnostics": text });
    if let Some(e) = expression {
        issue["expression"] = json!([e]);
    }
    json!({ "resourceType": "OperationOutcome", "issue": [issue] })
}

/// A FHIR JSON response.
pub fn fhir_json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    resp
}

/// Response extension of a 403 for the caller's organization kind (decided
/// in a handler): the kind, which the scope layer's refusal audit records.
#[derive(Debug, Clone, Copy)]
pub struct ForbiddenKind(pub &'static str);

/// Response extension of a 403 whose handler already appended its refusal
/// AuditEvent: the scope layer does not record it again.
#[derive(Debug, Clone, Copy)]
pub struct RefusalAudited;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, ApiError::Store(_) | ApiError::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let body = match &self {
            ApiError::Violations(vs) => {
                let issues: Vec<serde_json::Value> = vs
                    .iter()
                    .map(|v| {
                        let mut issue = json!({
                            "severity": "error", "code": "invalid", "diagnostics": v.text
                        });
                        if let Some(e) = &v.expression {
                            issue["expression"] = json!([e]);
                        }
                        issue
                    })
                    .collect();
                json!({"resourceType": "OperationOutcome", "issue": issues})
            }
            ApiError::Invalid { expression, .. } | ApiError::BusinessRule { expression, .. } => {
                operation_outcome(
                    "error",
                    self.code(),
                    &self.to_string(),
                    expression.as_deref(),
                )
            }
            _ => operation_outcome("error", self.code(), &self.to_string(), None),
        };
        let mut resp = fhir_json(self.status(), &body);
        if let ApiError::Forbidden(kind) = self {
            resp.extensions_mut().insert(ForbiddenKind(kind));
        }
        if matches!(
            self,
            ApiError::Unauthenticated | ApiError::BadToken | ApiError::CredentialMismatch
        ) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Map a body rejection (size limit, read failure) to an OperationOutcome.
pub fn body_rejection(r: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(limit)
    } else {
        ApiError::Malformed(format!("cannot read the body: {}", r.body_text()))
    }
}

/// Parse a JSON body.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::Malformed(format!(
            "the body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}
