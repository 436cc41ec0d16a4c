//! What the gateway keeps about a member, shared by the sources and the
//! read side: the Patient index and merge ([`patients`]), which source's
//! demographics stand ([`precedence`]), the ECM eligibility facts and their
//! evaluation ([`eligibility`]), the member's managed care from the stored
//! Coverage ([`coverage`]), continuity of ECM across a plan change
//! ([`continuity`]), the closed-loop referral vocabulary ([`clr`]), and
//! the configured organizations as FHIR resources ([`orgs`]).

pub mod clr;
pub mod continuity;
pub mod coverage;
pub mod eligibility;
pub mod orgs;
pub mod patients;
pub mod precedence;
