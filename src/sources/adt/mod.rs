//! HL7 v2 ADT from hospitals, over MLLP or `POST /hl7/v2`.
//!
//! - [`http`]: `POST /hl7/v2`, the HTTP way in beside MLLP.
//! - [`intake`]: bytes in, acknowledgement(s) out — parse, check the
//!   sending facility, message type and field lengths, journal under a
//!   content key (a resend is recognised by its content, not its control
//!   id alone), and acknowledge at the durability point.
//! - [`worker`]: the translation worker — derive FHIR from the journaled
//!   message with the mapping engine (a pure function of the bytes and the
//!   journal's received time), merge the Patient, route, and complete the
//!   journal record; batched for throughput, and catching up on whatever a
//!   previous run journaled but did not translate.

pub mod http;
pub mod intake;
pub mod worker;
