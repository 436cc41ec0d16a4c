//! Integration tests through the real interfaces (TCP/MLLP, HTTP, the binary),
//! all in one test binary.

mod common;
mod county;
mod crash;
mod delivery;
mod http;
mod mllp;
