//! cws-gateway: a FHIR/HL7 integration gateway between county child welfare
//! services, hospital ADT feeds, Medi-Cal managed care plans and ECM providers.
//!
//! See `ARCHITECTURE.md` for the map of modules, the flow of one message and
//! the invariants. The pure parts live in their own crates under `crates/`
//! (`hl7v2`, `mapping`, `program`, `consent`), the storage in `crates/store`;
//! this crate is the IO shell around them.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// The modules in layers, lowest first, one per group (so that formatting
// keeps the order): a module imports only modules declared above it. The
// layers and what each module owns are in ARCHITECTURE.md ("Code map");
// `tests/tidy.rs` checks the rule.

// Foundation: scopes grammar, configuration, limits, telemetry, TLS.
pub mod scopes;

pub mod config;

pub mod input_check;

pub mod locks;

pub mod telemetry;

pub mod tls;

// Shared contracts: the HTTP edge's error type, what is built in, the
// outbox payload, resource writes, deadline clocks, callers, audit records,
// the consent decision, the member records.
pub mod edge;

pub mod embedded;

pub mod outbox;

pub mod resources;

pub mod clocks;

pub mod auth;

pub mod audit;

pub mod disclosure;

pub mod records;

// The pipeline: route, the handlers' shared services, deliver, the
// journal's one sequence, the consent gate of the read side.
pub mod routing;

pub mod state;

pub mod delivery;

pub mod journal;

pub mod gate;

// The ways in, then the read side.
pub mod sources;

pub mod fhir;

pub mod explain;

pub mod referrals_view;

pub mod mllp;

// The edge: the HTTP router, wiring, offline translation.
pub mod api;

pub mod serve;

pub mod translate;
