//! The services every HTTP handler may use ([`Core`]): configuration, the
//! store, metrics, authentication, the consent decision point, routing and
//! the public base URL. The router's full state (`api::Gateway`) adds the
//! ingress services; a handler takes only the part it needs.

use std::sync::Arc;

use axum::http::HeaderMap;
use store::Store;

use crate::auth::{Auth, Caller};
use crate::config::{Config, OrgKind};
use crate::disclosure::Disclosure;
use crate::edge::{ApiError, ClientCert};
use crate::routing::Routing;
use crate::telemetry::Metrics;

/// The shared services of the HTTP handlers.
#[derive(Clone)]
pub struct Core {
    pub cfg: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Static bearer tokens and SMART Backend Services.
    pub auth: Arc<Auth>,
    /// The CapabilityStatement `GET /fhir/metadata` serves.
    pub capability: Arc<serde_json::Value>,
    /// Routes what the HTTP writers store, and wakes the delivery workers.
    pub routing: Routing,
    /// The one consent decision point.
    pub disclosure: Disclosure,
    /// Public base URL (no trailing slash), for links and `Location`.
    pub base_url: Arc<String>,
}

impl Core {
    /// The caller of a request: its bearer token and its connection's client
    /// certificate (see [`crate::auth`]), checked against the allowed kinds.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        cert: &ClientCert,
        allowed: &[OrgKind],
    ) -> Result<Caller, ApiError> {
        self.auth.authenticate(headers, cert, allowed)
    }
}
