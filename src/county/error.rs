//! The one error type of the county routes, rendered as a FHIR
//! `OperationOutcome`. Messages carry field names, ids and rule names only —
//! never names, CINs, birth dates or addresses — because they may be logged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::{fhir_json, operation_outcome, ApiError};

/// Why a county request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CountyError {
    /// Authentication or authorization at the edge.
    #[error(transparent)]
    Api(#[from] ApiError),
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
    /// `expression` (at most `schemas::MAX_ISSUES`, then one saying more
    /// were not listed).
    #[error("{}", .0.iter().map(|v| v.text.as_str()).collect::<Vec<_>>().join("; "))]
    Violations(Vec<Violation>),
    /// A program or consent rule refuses the request (422, `business-rule`).
    #[error("{text}")]
    BusinessRule {
        text: String,
        expression: Option<String>,
    },
    /// The caller's organization may not do this (403, `forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// No such resource (404, `not-found`).
    #[error("{0}")]
    NotFound(String),
    /// The store failed (503, `transient`); the text has no PHI.
    #[error("the store failed: {0}")]
    Store(#[from] store::StoreError),
    /// Something that should not happen (500, `exception`).
    #[error("{0}")]
    Internal(String),
}

/// One schema violation: a text naming the field and the rule, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub text: String,
    pub expression: Option<String>,
}

impl CountyError {
    /// A schema/format error on `expression`.
    pub fn invalid(text: impl Into<String>, expression: Option<&str>) -> Self {
        CountyError::Invalid {
            text: text.into(),
            expression: expression.map(str::to_string),
        }
    }

    /// A business-rule refusal on `expression`.
    pub fn rule(text: impl Into<String>, expression: Option<&str>) -> Self {
        CountyError::BusinessRule {
            text: text.into(),
            expression: expression.map(str::to_string),
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            CountyError::Api(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CountyError::Malformed(_) => StatusCode::BAD_REQUEST,
            CountyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CountyError::Invalid { .. }
            | CountyError::Violations(_)
            | CountyError::BusinessRule { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            CountyError::Forbidden(_) => StatusCode::FORBIDDEN,
            CountyError::NotFound(_) => StatusCode::NOT_FOUND,
            CountyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            CountyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CountyError::Api(_) => "exception",
            CountyError::Malformed(_) => "structure",
            CountyError::TooLarge(_) => "too-costly",
            CountyError::Invalid { .. } | CountyError::Violations(_) => "invalid",
            CountyError::BusinessRule { .. } => "business-rule",
            CountyError::Forbidden(_) => "forbidden",
            CountyError::NotFound(_) => "not-found",
            CountyError::Store(_) => "transient",
            CountyError::Internal(_) => "exception",
        }
    }
}

impl IntoResponse for CountyError {
    fn into_response(self) -> Response {
        if let CountyError::Api(e) = self {
            return e.into_response();
        }
        if matches!(self, CountyError::Store(_) | CountyError::Internal(_)) {
            tracing::error!(error = %self, "county request failed");
        }
        if let CountyError::Violations(vs) = &self {
            let issues: Vec<serde_json::Value> = vs
                .iter()
                .map(|v| {
                    let mut issue = serde_json::json!({
                        "severity": "error", "code": "invalid", "diagnostics": v.text
                    });
                    if let Some(e) = &v.expression {
                        issue["expression"] = serde_json::json!([e]);
                    }
                    issue
                })
                .collect();
            let body = serde_json::json!({"resourceType": "OperationOutcome", "issue": issues});
            return fhir_json(self.status(), &body);
        }
        let expression = match &self {
            CountyError::Invalid { expression, .. }
            | CountyError::BusinessRule { expression, .. } => expression.clone(),
            _ => None,
        };
        let body = operation_outcome(
            "error",
            self.code(),
            &self.to_string(),
            expression.as_deref(),
        );
        fhir_json(self.status(), &body)
    }
}

/// Map a body rejection (size limit, read failure) to an OperationOutcome.
pub fn body_rejection(r: axum::extract::rejection::BytesRejection, limit: usize) -> CountyError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        CountyError::TooLarge(limit)
    } else {
        CountyError::Malformed(format!("cannot read the body: {}", r.body_text()))
    }
}

/// Parse a JSON body.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, CountyError> {
    serde_json::from_slice(bytes).map_err(|e| {
        CountyError::Malformed(format!(
            "the body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}
