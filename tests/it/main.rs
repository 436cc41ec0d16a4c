//! Integration tests through the real interfaces (TCP/MLLP, HTTP, the binary),
//! all in one test binary.

mod common;
mod crash;
mod http;
mod mllp;
mod postgres;
