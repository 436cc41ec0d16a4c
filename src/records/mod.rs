//! What the gateway keeps about a member, shared by the sources and the
//! read side: the Patient index and merge ([`patients`]), which source's
//! demographics stand ([`precedence`]), the ECM eligibility facts and their
//! evaluation ([`eligibility`]), continuity of ECM across a plan change
//! ([`continuity`]), and the configured organizations as FHIR resources
//! ([`orgs`]).

pub mod continuity;
pub mod eligibility;
pub mod orgs;
pub mod patients;
pub mod precedence;
