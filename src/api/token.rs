//! `POST /auth/token`: the SMART Backend Services token endpoint (the
//! assertion checks, scope grants and token issue are [`crate::auth::smart`]).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use crate::auth::smart::{oauth, parse_form, Issued, OAuthError, JWT_BEARER};
use crate::state::Core;

/// `POST /auth/token`.
pub async fn token_endpoint(State(state): State<Core>, body: Bytes) -> Response {
    match token(&state, &body).await {
        Ok(issued) => {
            let body = json!({
                "access_token": issued.access_token,
                "token_type": "bearer",
                "expires_in": issued.expires_in,
                "scope": issued.scope,
            });
            let mut resp = (StatusCode::OK, body.to_string()).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => {
            tracing::info!(error = e.error, "token request refused");
            e.into_response()
        }
    }
}

async fn token(state: &Core, body: &[u8]) -> Result<Issued, OAuthError> {
    let form =
        parse_form(body).ok_or_else(|| oauth("invalid_request", "body must be form-encoded"))?;
    let field = |k: &str| form.get(k).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        return Err(oauth(
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        ));
    }
    if field("client_assertion_type") != Some(JWT_BEARER) {
        return Err(oauth(
            "invalid_request",
            format!("client_assertion_type must be {JWT_BEARER}"),
        ));
    }
    let assertion = field("client_assertion")
        .ok_or_else(|| oauth("invalid_request", "client_assertion is required"))?;
    let scope = field("scope").ok_or_else(|| oauth("invalid_request", "scope is required"))?;
    let smart = &state.auth.smart;
    let now = Utc::now();
    let v = smart.verify_assertion(assertion, field("client_id"), now)?;
    let scopes = smart.grant_scopes(&v.client_id, scope)?;
    let first = state
        .store
        .jti_use(&v.client_id, &v.jti, v.remember_until(), now)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "token request: the store failed");
            oauth("temporarily_unavailable", "the store is not reachable")
        })?;
    if !first {
        return Err(oauth(
            "invalid_grant",
            "client_assertion jti was already used",
        ));
    }
    tracing::info!(client = %v.client_id, "access token issued");
    smart.issue(&v.client_id, &scopes, now)
}
