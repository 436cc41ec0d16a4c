//! Integration tests through the real interfaces (TCP/MLLP, HTTP, the binary),
//! all in one test binary.

mod audit;
mod auth;
mod common;
mod crash;
mod fhir;
mod http;
mod mllp;
