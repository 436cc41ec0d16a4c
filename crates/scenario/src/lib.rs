//! Simulated partners for the gateway, kept out of the gateway library:
//!
//! - [`run`]: executable scenarios — the seed workflows as YAML files
//!   (`tests/scenarios/*.yaml`) driven through the public HTTP and MLLP
//!   interfaces only;
//! - [`mock`]: in-process FHIR endpoints that stand in for MCPs and ECM
//!   providers and record what they receive;
//! - [`sample`]: synthetic (made-up) HL7 v2 messages for load and tests.
//!
//! The demo (`cws-gateway demo`), the benchmarks and the integration tests
//! use them. This crate imports nothing of the gateway: a scenario sees the
//! gateway only as an outside client would.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod mock;
pub mod run;
pub mod sample;

pub use mock::{MockEndpoint, MockResponse, Received};
pub use run::{run, RunLog, Scenario, Target};
