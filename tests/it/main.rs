//! Integration tests through the real interfaces (TCP/MLLP, HTTP, the binary),
//! all in one test binary.

mod access;
mod audit;
mod auth;
mod availability;
mod care_team;
mod clr;
mod common;
mod corpus;
mod county;
mod crash;
mod delivery;
mod fhir;
mod fhir_sdk;
mod golden;
mod http;
mod input_checks;
mod installed;
mod invariants;
mod mllp;
mod oracles;
mod postgres;
mod precedence;
mod readme_tour;
mod referral_intake;
mod referrals_view;
mod rtf;
mod scenarios;
mod task_put;
mod tls;
