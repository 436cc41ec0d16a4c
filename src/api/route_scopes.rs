//! Which SMART scope each endpoint needs: one table ([`ROUTE_SCOPES`]),
//! keyed by method and the router's path pattern, enforced by one layer
//! ([`enforce`]) on every matched route. `docs/auth.md` prints the same
//! table; a unit test in `api.rs` enumerates the router's routes and fails
//! for any route the table does not name.
//!
//! - A caller with scopes (a SMART access token, or a client with configured
//!   `scopes`) without the needed one gets **403** (`forbidden`
//!   OperationOutcome) before the handler runs.
//! - A caller without scopes (a static token or client certificate of a
//!   client without configured `scopes`) passes; the handler checks its
//!   organization kind as before.
//! - No or a bad credential passes too: the handler answers 401, exactly as
//!   without the layer.
//! - A matched route the table does not name is refused (403) for everyone:
//!   fail closed.

use std::collections::HashMap;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{Access, Caller};
use crate::edge::ClientCert;
use crate::edge::{fhir_json, operation_outcome, ApiError, ForbiddenKind, RefusalAudited};
use crate::state::Core;

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: no credential is asked for (health, capability statement,
    /// the token endpoint, whose credential is the client assertion).
    Public,
    /// `system/{Type}.{read|write}` (or a wildcard covering it).
    Type(&'static str, Access),
    /// `system/*.{read|write}`: endpoints about no single resource type.
    AllTypes(Access),
    /// `system/{T}.{read|write}` for the `{rtype}` path segment `T`.
    PathType(Access),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct RouteScope {
    /// HTTP method (`HEAD` is served by, and checked as, `GET`).
    pub method: &'static str,
    /// The router's path pattern, as registered.
    pub path: &'static str,
    /// The scope it needs.
    pub need: Need,
}

const fn row(method: &'static str, path: &'static str, need: Need) -> RouteScope {
    RouteScope { method, path, need }
}

use Access::{Read, Write};

/// Every route of `api::routes` and the scope it needs.
pub const ROUTE_SCOPES: &[RouteScope] = &[
    row("GET", "/healthz", Need::Public),
    row("GET", "/readyz", Need::Public),
    row("GET", "/fhir/metadata", Need::Public),
    row("POST", "/auth/token", Need::Public),
    row("GET", "/metrics", Need::AllTypes(Read)),
    row("POST", "/hl7/v2", Need::Type("Encounter", Write)),
    row("POST", "/cws/events", Need::Type("Patient", Write)),
    row(
        "POST",
        "/ecm/referrals",
        Need::Type("ServiceRequest", Write),
    ),
    row(
        "POST",
        "/ecm/referrals/$batch",
        Need::Type("ServiceRequest", Write),
    ),
    row(
        "GET",
        "/cws/eligibility/{patient_id}",
        Need::Type("Observation", Read),
    ),
    row("GET", "/ops/deadlines", Need::Type("Task", Read)),
    row("GET", "/ops/rtf", Need::Type("Task", Read)),
    row("POST", "/ecm/rtf", Need::Type("Task", Write)),
    row("GET", "/ops/referrals", Need::Type("Task", Read)),
    row("GET", "/ops/decisions", Need::Type("Consent", Read)),
    row("GET", "/fhir/{rtype}", Need::PathType(Read)),
    row("POST", "/fhir/{rtype}", Need::PathType(Write)),
    row("POST", "/fhir/{rtype}/$validate", Need::PathType(Write)),
    row("GET", "/fhir/{rtype}/{id}", Need::PathType(Read)),
    row("PUT", "/fhir/{rtype}/{id}", Need::PathType(Write)),
];

/// What a route can tell its caller about patients (issue 14 item 11):
/// `docs/consent.md` ("Every exit") prints the same table, and a test in
/// `api.rs` enumerates the router's routes and fails for any route without
/// a row here, or with a patient-data row naming no decision or no audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Nothing about any patient (health, capability statement, tokens,
    /// metrics with closed label sets).
    NoPatientData,
    /// Only the caller's own input acknowledged: an HL7 ACK of the
    /// sender's message, a case event's 202; errors name fields and rules,
    /// never input values or unknown keys.
    OwnInput,
    /// Patient data, or facts about a patient (existence, coverage, a
    /// Task), in the answer or in its errors: `decided_by` decides for the
    /// caller, `audited_by` appends the AuditEvent before the answer.
    PatientData {
        decided_by: &'static str,
        audited_by: &'static str,
    },
}

/// One row of [`ROUTE_EXITS`].
#[derive(Debug, Clone, Copy)]
pub struct RouteExit {
    pub method: &'static str,
    pub path: &'static str,
    pub exit: Exit,
}

const fn exit(method: &'static str, path: &'static str, exit: Exit) -> RouteExit {
    RouteExit { method, path, exit }
}

const fn patient_data(decided_by: &'static str, audited_by: &'static str) -> Exit {
    Exit::PatientData {
        decided_by,
        audited_by,
    }
}

/// Every route of `api::routes` and what it discloses.
pub const ROUTE_EXITS: &[RouteExit] = &[
    exit("GET", "/healthz", Exit::NoPatientData),
    exit("GET", "/readyz", Exit::NoPatientData),
    exit("GET", "/fhir/metadata", Exit::NoPatientData),
    exit("POST", "/auth/token", Exit::NoPatientData),
    exit("GET", "/metrics", Exit::NoPatientData),
    // Aggregates by CLR status, clock and plan; no member is named.
    exit("GET", "/ops/referrals", Exit::NoPatientData),
    exit("POST", "/hl7/v2", Exit::OwnInput),
    exit("POST", "/cws/events", Exit::OwnInput),
    exit(
        "POST",
        "/ecm/referrals",
        patient_data(
            "sources::referral::may_see_member (the child's county, or Disclosure::decide pull on the member's Patient); others get REFUSED_FOR_MEMBER; the accepted answer: sources::referral::answer_for_caller (whole, or per resource by gate::Gate::judge)",
            "sources::referral::refuse (refusal, with the real reason); the accepted answer: gate::Gate::finish (disclosure)",
        ),
    ),
    exit(
        "POST",
        "/ecm/referrals/$batch",
        patient_data(
            "per line, as POST /ecm/referrals (sources::referral::accept): sources::referral::may_see_member, sources::referral::answer_for_caller",
            "per line, as POST /ecm/referrals: sources::referral::refuse; gate::Gate::finish; a line's 403 by sources::referral::batch::audit_denied",
        ),
    ),
    exit(
        "GET",
        "/cws/eligibility/{patient_id}",
        patient_data(
            "records::eligibility::basis (before anything is evaluated), then records::eligibility::detailed_reasons for a summary: the decision of records::eligibility::decide_access",
            "api::eligibility::get_eligibility (disclosure, refusal, read; unknown patients too)",
        ),
    ),
    exit(
        "GET",
        "/ops/deadlines",
        patient_data(
            "R0-operator (operators only)",
            "api::ops::get_deadlines (read, naming every patient and subject listed)",
        ),
    ),
    exit(
        "GET",
        "/ops/rtf",
        patient_data(
            "R0-operator (operators only)",
            "sources::rtf::audit_export (read, naming every patient in the file)",
        ),
    ),
    exit(
        "POST",
        "/ecm/rtf",
        patient_data(
            "sources::rtf::import: task_update::parties per row (a Task that is absent or not the caller's reads the same, 'no referral with this id among the caller's')",
            "sources::rtf::import (refusal naming the Tasks not the caller's and their members); applied rows are journaled Task updates",
        ),
    ),
    exit(
        "GET",
        "/ops/decisions",
        patient_data(
            "R0-operator (operators only)",
            "explain::decisions (read)",
        ),
    ),
    exit(
        "GET",
        "/fhir/{rtype}",
        patient_data(
            "gate::Gate::judge per match and _include (AuditEvent: operators only)",
            "gate::Gate::finish (one AuditEvent per request); _count=0: gate::Gate::finish_count (query)",
        ),
    ),
    exit(
        "POST",
        "/fhir/{rtype}",
        patient_data(
            "sources::fhir_write::visible_patient (Gate::judge on the subject; an unseen Patient is 'not known')",
            "sources::fhir_write::derive_create (the create record, committed with the resource) and Gate::finish (refusal)",
        ),
    ),
    exit(
        "POST",
        "/fhir/{rtype}/$validate",
        patient_data(
            "sources::fhir_write::validate_op: the checks of a create, sources::fhir_write::visible_patient among them (stores nothing)",
            "gate::Gate::finish (refusal of an unseen or absent subject)",
        ),
    ),
    exit(
        "GET",
        "/fhir/{rtype}/{id}",
        patient_data(
            "gate::Gate::judge (withheld and missing: the same 404)",
            "gate::Gate::finish (missing ids too: Gate::absent)",
        ),
    ),
    exit(
        "PUT",
        "/fhir/{rtype}/{id}",
        patient_data(
            "sources::task_update::parties, then gate::Gate::judge for a non-party or an absent Task's stand-in (unseen: the 404 of an absent Task)",
            "sources::task_update::refused (refusal; absent Tasks too)",
        ),
    ),
];

/// The need of `method` on the path pattern `path` (`None`: not in the table).
pub fn need(method: &Method, path: &str) -> Option<Need> {
    let m = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTE_SCOPES
        .iter()
        .find(|r| r.method == m && r.path == path)
        .map(|r| r.need)
}

/// The resource type of a `{rtype}` path segment when it is one a scope can
/// name; `None` for anything else (the handler answers 404 / 405 for it).
fn path_type(params: &HashMap<String, String>) -> Option<&str> {
    params
        .get("rtype")
        .map(String::as_str)
        .filter(|t| crate::scopes::scope_type_known(t))
}

/// Does `caller` satisfy `need` for a request with these path parameters?
pub fn satisfies(caller: &Caller, need: Need, params: Option<&HashMap<String, String>>) -> bool {
    match need {
        Need::Public => true,
        Need::Type(t, a) => caller.may(t, a),
        Need::AllTypes(a) => caller.may_all(a),
        Need::PathType(a) => match params {
            Some(p) => path_type(p).is_none_or(|t| caller.may(t, a)),
            // Undecodable path parameters: fail closed for a scoped caller.
            None => caller.scopes.is_none(),
        },
    }
}

fn unlisted() -> Response {
    fhir_json(
        axum::http::StatusCode::FORBIDDEN,
        &operation_outcome(
            "error",
            "forbidden",
            "this endpoint names no scope requirement and is refused",
            None,
        ),
    )
}

/// Audit a refused request: one `refusal` AuditEvent naming the caller, the
/// method, the route pattern (a template such as
/// `/cws/eligibility/{patient_id}`, never the path itself, which can carry a
/// patient id) and why (`scope insufficient-scope`, `organization-kind
/// hospital`, `forbidden`). The refusal stands whether or not the record
/// could be written (nothing is disclosed either way); a failed append is
/// logged.
async fn audit_refusal(state: &Core, caller: &Caller, method: &Method, pattern: &str, why: &str) {
    let interaction = match *method {
        Method::POST => crate::audit::Interaction::Create,
        Method::PUT | Method::PATCH => crate::audit::Interaction::Update,
        _ => crate::audit::Interaction::Read,
    };
    let record = crate::audit::new_audit(&crate::audit::AuditEntry {
        kind: "refusal",
        interaction,
        caller,
        patient_id: None,
        entities: Vec::new(),
        detail: Some(refusal_detail(why, method, pattern)),
        recorded: chrono::Utc::now(),
    });
    if let Err(e) = state.store.audit_append(vec![record]).await {
        tracing::error!(error = %e, "audit append of a refusal failed");
    }
}

/// The `outcomeDesc` detail of a refusal the layer records.
pub fn refusal_detail(why: &str, method: &Method, pattern: &str) -> String {
    format!("{why} {method} {pattern}")
}

/// Why a handler's 403 was refused, for its audit record: the organization
/// kind when the handler refused the caller's kind ([`ForbiddenKind`]),
/// else `forbidden` (another rule of the handler's: a referrer that is not
/// the caller, an event of another county …). `None` for an answer that is
/// not a 403, or whose handler audited it itself ([`RefusalAudited`]).
pub fn handler_refusal(resp: &Response) -> Option<String> {
    if resp.status() != axum::http::StatusCode::FORBIDDEN
        || resp.extensions().get::<RefusalAudited>().is_some()
    {
        return None;
    }
    Some(match resp.extensions().get::<ForbiddenKind>() {
        Some(k) => format!("organization-kind {}", k.0),
        None => "forbidden".to_string(),
    })
}

/// The layer (`route_layer`, so it sees the matched path pattern). Every
/// 403 is audited here, once: a scope refusal before the handler runs, and
/// a handler's 403 (the caller's organization kind, or another of its
/// rules) after it, unless the handler recorded it itself.
pub async fn enforce(
    State(state): State<Core>,
    cert: ClientCert,
    params: Result<Path<HashMap<String, String>>, axum::extract::rejection::PathRejection>,
    req: Request,
    next: Next,
) -> Response {
    let Some(pattern) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        return next.run(req).await;
    };
    let Some(need) = need(req.method(), &pattern) else {
        tracing::error!(path = pattern, "route without a scope requirement refused");
        return unlisted();
    };
    if need == Need::Public {
        return next.run(req).await;
    }
    // No or a bad credential: the handler answers 401.
    let caller = state.auth.identify(req.headers(), &cert).ok();
    let method = req.method().clone();
    if let Some(caller) = &caller {
        let params = params.as_ref().ok().map(|p| &p.0);
        if !satisfies(caller, need, params) {
            audit_refusal(
                &state,
                caller,
                &method,
                &pattern,
                "scope insufficient-scope",
            )
            .await;
            return ApiError::InsufficientScope.into_response();
        }
    }
    let resp = next.run(req).await;
    if let (Some(caller), Some(why)) = (&caller, handler_refusal(&resp)) {
        audit_refusal(&state, caller, &method, &pattern, &why).await;
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;
    use crate::config::OrgKind;

    fn caller(scopes: &[&str]) -> Caller {
        Caller {
            client_id: "c".into(),
            org_id: "o".into(),
            kind: OrgKind::Mcp,
            scopes: Some(scopes.iter().filter_map(|s| Scope::parse(s)).collect()),
        }
    }

    fn rtype(t: &str) -> HashMap<String, String> {
        HashMap::from([("rtype".to_string(), t.to_string())])
    }

    #[test]
    fn a_handler_403_is_audited_unless_the_handler_did() {
        let kind = ApiError::Forbidden("adt_source").into_response();
        assert_eq!(
            handler_refusal(&kind).as_deref(),
            Some("organization-kind adt_source")
        );
        let other = crate::edge::ApiError::Denied("no".into()).into_response();
        assert_eq!(handler_refusal(&other).as_deref(), Some("forbidden"));
        let mut own = crate::edge::ApiError::Denied("no".into()).into_response();
        own.extensions_mut().insert(RefusalAudited);
        assert_eq!(handler_refusal(&own), None);
        // Not a 403: nothing for the layer to record (401s, 404s and the
        // handlers' own refusals are not its business).
        assert_eq!(handler_refusal(&ApiError::BadToken.into_response()), None);
        assert_eq!(
            refusal_detail("organization-kind mcp", &Method::GET, "/fhir/{rtype}"),
            "organization-kind mcp GET /fhir/{rtype}"
        );
    }

    #[test]
    fn needs_are_checked_per_type_and_access() {
        let patient_read = caller(&["system/Patient.read"]);
        let referral = need(&Method::POST, "/ecm/referrals").unwrap();
        assert!(!satisfies(&patient_read, referral, None));
        let eligibility = need(&Method::GET, "/cws/eligibility/{patient_id}").unwrap();
        assert!(!satisfies(&patient_read, eligibility, None));
        let put = need(&Method::PUT, "/fhir/{rtype}/{id}").unwrap();
        assert!(!satisfies(
            &caller(&["system/Task.read"]),
            put,
            Some(&rtype("Task"))
        ));
        assert!(satisfies(
            &caller(&["system/Task.write"]),
            put,
            Some(&rtype("Task"))
        ));
        assert!(satisfies(
            &caller(&["system/*.cu"]),
            put,
            Some(&rtype("Task"))
        ));
        // An unknown type is the handler's 404, not a scope question.
        assert!(satisfies(&patient_read, put, Some(&rtype("Nope"))));
        assert!(!satisfies(&patient_read, put, None));
        let metrics = need(&Method::GET, "/metrics").unwrap();
        assert!(!satisfies(&caller(&["system/Task.read"]), metrics, None));
        assert!(satisfies(&caller(&["system/*.read"]), metrics, None));
        // HEAD is GET; unknown rows are None.
        assert_eq!(need(&Method::HEAD, "/healthz"), Some(Need::Public));
        assert_eq!(need(&Method::DELETE, "/fhir/{rtype}/{id}"), None);
        // Static callers (no scopes) pass every need.
        let static_caller = Caller {
            scopes: None,
            ..patient_read
        };
        for r in ROUTE_SCOPES {
            assert!(satisfies(&static_caller, r.need, Some(&rtype("Task"))));
        }
    }
}
