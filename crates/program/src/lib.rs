//! Program rules for cws-gateway, pure (no IO besides data files embedded with `include_str!`).
//!
//! - [`eligibility`]: the ECM Population-of-Focus engine (POF 8 and the children's POFs the gateway
//!   can flag, plus managed-care status and exclusions), over typed [`facts::Facts`] and the Appendix D
//!   aid code table in [`aid_codes`] (`mappings/eligibility/medi-cal-aid-codes.csv`).
//! - [`calendar`] and [`deadlines`]: California working days (`mappings/calendar/ca-state-holidays.csv`)
//!   and the policy timelines as [`deadlines::Clock`]s, counted on America/Los_Angeles local dates
//!   ([`pacific`]).
//! - [`continuity`]: ECM auto-authorization when a member changes MCP (90-day look-back).
//!
//! **Architecture invariant: this crate imports no IO crate and never panics on input.** Every input
//! is bounded (document size, list lengths, day counts), errors are typed, and no reason text or error
//! carries PHI.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod aid_codes;
pub mod calendar;
pub mod continuity;
pub mod deadlines;
pub mod eligibility;
pub mod facts;
pub mod pacific;
mod table;

pub use aid_codes::{AidCodeTable, AidGroup};
pub use calendar::{Calendar, CalendarError};
pub use deadlines::{due, Clock, Rule};
pub use eligibility::{evaluate, evaluate_with, Evaluation, Reason};
pub use facts::{Facts, FactsError};
