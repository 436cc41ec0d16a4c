//! cws-gateway: a FHIR/HL7 integration gateway between county child welfare
//! services, hospital ADT feeds, Medi-Cal managed care plans and ECM providers.
//!
//! See `ARCHITECTURE.md` for the map of modules, the flow of one message and
//! the invariants. The pure parts live in their own crates under `crates/`
//! (`hl7v2`, `mapping`, `program`, `consent`), the storage in `crates/store`;
//! this crate is the IO shell around them.

pub mod api;
pub mod audit;
pub mod audit_trail;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod county;
pub mod delivery;
pub mod demo;
pub mod disclosure;
pub mod explain;
pub mod fhir;
pub mod input_check;
pub mod intake;
pub mod locks;
pub mod mllp;
pub mod processor;
pub mod routing;
pub mod scenario;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod translate;
