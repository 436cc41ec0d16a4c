//! The glue between stored FHIR resources and the pure consent engine
//! (`cwsgw_consent`): what a Consent resource means, what a resource is (its
//! labels, category, patient), who a recipient is, and what the patient's
//! situation is (referrer, plan, assigned ECM provider) — then one `decide`
//! that every exit calls, and `apply_obligations` that masks what a permit
//! allows only in part.
//!
//! **Architecture Invariant: consent is decided at the moment of disclosure.**
//! Nothing here caches a decision; callers ask `decide` right before each
//! delivery attempt and each read.
//!
//! ## The Consent resource (what `consent.recorded`, inline referral consents
//! and `POST /fhir/Consent` produce, and what this module reads)
//! - `status`: `active`, or `inactive` once withdrawn;
//! - `scope` = consentscope `patient-privacy`;
//! - `category`: LOINC 59284-0 and a coding `{base}/CodeSystem/consent-kind`
//!   `referral_verbal | release_of_information | part2_written`;
//! - `patient`, `dateTime` (recorded), `organization` (the recording county or provider);
//! - extension `{base}/StructureDefinition/consent-grantor-role` (valueCode
//!   `youth|nmd|parent|legal_guardian|social_worker|court`), extension
//!   `{base}/StructureDefinition/consent-explained` (what the record shows
//!   was explained: sub-extensions `provider`, `informationShared`,
//!   `duration`, `rightToWithdraw`, each a valueBoolean — see
//!   `docs/consent.md`) and, after a withdrawal,
//!   `{base}/StructureDefinition/consent-withdrawn-at` (valueDateTime);
//! - `provision`: `type` permit, `period`, `actor[]` (role v3-ParticipationType
//!   `IRCP`, reference `Organization/{id}`), `class[]` codes from
//!   `{base}/CodeSystem/consent-category`, `securityLabel[]` for the sensitive
//!   categories (`ETH`, `PSY`, `HIV`, `SEX`).
//!
//! Systems are matched on their path suffix, so a change of `canonical_base`
//! does not orphan existing consents.

mod codec;
mod context;
mod decision;

pub use codec::*;
pub use context::*;
pub use decision::*;

#[cfg(test)]
use crate::config::Config;
#[cfg(test)]
use chrono::{DateTime, Utc};
#[cfg(test)]
use consent::{Category, ConsentKind, Decision, GrantorRole, Obligation};
#[cfg(test)]
use serde_json::{json, Value};

/// A release of information for `ecm-1` covering `case` (parent as
/// grantor, no end), in the gateway's Consent shape: the fixture the
/// Consent checks of `sources::fhir_write` and `resources::validate` test
/// against.
#[cfg(test)]
pub(crate) fn sample_release_consent() -> Value {
    let r = vec!["ecm-1".to_string()];
    let c = vec!["case".to_string()];
    consent_to_fhir(&ConsentSpec {
        canonical_base: "https://gw.example/fhir",
        id: "c1",
        identifier: None,
        patient_id: "p1",
        kind: "release_of_information",
        grantor_role: "parent",
        grantor_name: None,
        recorded_by_org: "county-fresno",
        recorded_at: "2026-01-10T09:00:00Z",
        recipients: &r,
        categories: &c,
        start: "2026-01-10",
        end: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://gateway.example.org/fhir";

    fn spec<'a>(recipients: &'a [String], categories: &'a [String]) -> ConsentSpec<'a> {
        ConsentSpec {
            canonical_base: BASE,
            id: "c1",
            identifier: Some(("urn:x", "CONS-1")),
            patient_id: "p1",
            kind: "release_of_information",
            grantor_role: "parent",
            grantor_name: Some("A Parent"),
            recorded_by_org: "county-fresno",
            recorded_at: "2026-01-10T09:00:00Z",
            recipients,
            categories,
            start: "2026-01-10",
            end: Some("2027-01-10"),
        }
    }

    #[test]
    fn consent_round_trips_through_fhir() {
        let r = vec!["mcp-a".to_string(), "ecm-compass".to_string()];
        let c = vec!["case".to_string(), "substance_use".to_string()];
        let fhir = consent_to_fhir(&spec(&r, &c));
        assert_eq!(fhir["provision"]["securityLabel"][0]["code"], "ETH");
        let rec = consent_from_fhir(&fhir).unwrap();
        assert_eq!(rec.id, "c1");
        assert_eq!(rec.patient_id, "p1");
        assert_eq!(rec.kind, ConsentKind::ReleaseOfInformation);
        assert_eq!(rec.grantor_role, GrantorRole::Parent);
        assert_eq!(rec.recipients, r);
        assert_eq!(rec.categories, vec![Category::Case, Category::SubstanceUse]);
        assert_eq!(rec.start.to_rfc3339(), "2026-01-10T00:00:00+00:00");
        assert!(rec.end.is_some());
        assert!(rec.withdrawn_at.is_none());
    }

    #[test]
    fn withdrawal_is_read_back() {
        let r = vec!["mcp-a".to_string()];
        let c = vec!["referral".to_string()];
        let mut fhir = consent_to_fhir(&spec(&r, &c));
        withdraw(&mut fhir, BASE, "2026-02-01T12:00:00Z");
        assert_eq!(fhir["status"], "inactive");
        let rec = consent_from_fhir(&fhir).unwrap();
        assert_eq!(
            rec.withdrawn_at.unwrap().to_rfc3339(),
            "2026-02-01T12:00:00+00:00"
        );
        // Inactive without a time: never valid.
        fhir["extension"]
            .as_array_mut()
            .unwrap()
            .retain(|e| !e["url"].as_str().unwrap().ends_with(WITHDRAWN_EXT));
        assert_eq!(
            consent_from_fhir(&fhir).unwrap().withdrawn_at,
            Some(DateTime::<Utc>::MIN_UTC)
        );
    }

    /// A referral consent whose record does not show the four explained
    /// flags — recorded before they were required, or with one false —
    /// does not count; a release without them does.
    #[test]
    fn only_an_explained_referral_consent_counts() {
        let r = vec!["mcp-a".to_string()];
        let c = vec!["referral".to_string()];
        let referral = |explained: Option<Explained>| {
            let mut s = spec(&r, &c);
            s.kind = "referral_verbal";
            let mut fhir = consent_to_fhir(&s);
            if let Some(e) = explained {
                add_explained(&mut fhir, BASE, &e);
            }
            let store = |id: &str, body: Value| store::StoredResource {
                resource_type: "Consent".into(),
                id: id.into(),
                version_id: 1,
                last_updated: Utc::now(),
                patient_id: Some("p1".into()),
                body,
            };
            store("c1", fhir)
        };
        let all = Explained::ALL;
        let one_false = Explained {
            duration: Some(false),
            ..all
        };
        let cfg = Config::default();
        for (explained, counts) in [(Some(all), true), (None, false), (Some(one_false), false)] {
            let res = referral(explained);
            let rec = consent_from_fhir(&res.body).unwrap();
            assert_eq!(consent_counts(&rec, &res.body), counts, "{explained:?}");
            let ctx = PatientContext::from_resources(&cfg, "p1", std::slice::from_ref(&res));
            assert_eq!(ctx.consents.len(), usize::from(counts), "{explained:?}");
            assert_eq!(ctx.not_counted.len(), usize::from(!counts), "{explained:?}");
        }
        let release = consent_to_fhir(&spec(&r, &c));
        let rec = consent_from_fhir(&release).unwrap();
        assert!(consent_counts(&rec, &release), "a release needs no flags");
    }

    #[test]
    fn explained_flags_round_trip_and_the_first_missing_is_named() {
        let r = vec!["mcp-a".to_string()];
        let c = vec!["referral".to_string()];
        let partly = Explained::from_input(Some(
            &json!({"provider": true, "informationShared": true, "duration": false}),
        ));
        assert_eq!(partly.first_missing(), Some("duration"));
        let mut fhir = consent_to_fhir(&spec(&r, &c));
        assert_eq!(Explained::from_fhir(&fhir), None);
        add_explained(&mut fhir, BASE, &partly);
        add_explained(&mut fhir, BASE, &partly);
        let exts: Vec<&Value> = fhir["extension"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["url"] == format!("{BASE}{EXPLAINED_EXT}"))
            .collect();
        assert_eq!(exts.len(), 1, "added once: {fhir}");
        // A flag the input omitted is left out, not invented.
        assert_eq!(exts[0]["extension"].as_array().unwrap().len(), 3);
        let back = Explained::from_fhir(&fhir).unwrap();
        assert_eq!(back, partly);
        assert_eq!(back.right_to_withdraw, None);
        // The grantor extension is still read.
        assert_eq!(
            consent_from_fhir(&fhir).unwrap().grantor_role,
            GrantorRole::Parent
        );
        let all = Explained::from_input(Some(
            &json!({"provider": true, "informationShared": true, "duration": true, "rightToWithdraw": true}),
        ));
        assert_eq!(all.first_missing(), None);
        assert_eq!(
            Explained::from_input(None).first_missing(),
            Some("provider")
        );
    }

    #[test]
    fn a_referrals_own_resources_carry_its_referrer_and_recipients() {
        let sr = json!({"resourceType": "ServiceRequest", "id": "sr1",
            "subject": {"reference": "Patient/p1"},
            "requester": {"reference": "Organization/mcp-b"},
            "performer": [{"reference": "Organization/mcp-a"}],
            "extension": [{"url": format!("{BASE}{SELF_REFERRAL_EXT}"), "valueBoolean": true}]});
        let f = resource_facts(&sr).unwrap().referral.unwrap();
        assert_eq!(f.referrer.as_deref(), Some("mcp-b"));
        assert!(f.self_referral);
        assert_eq!(f.made_to, vec!["mcp-a".to_string()]);
        let task = json!({"resourceType": "Task", "id": "t1",
            "for": {"reference": "Patient/p1"},
            "focus": {"reference": "ServiceRequest/sr1"},
            "requester": {"reference": "Organization/county-fresno"},
            "owner": {"reference": "Organization/ecm-compass"},
            "extension": [{"url": format!("{BASE}{}", crate::resources::AUTHORIZING_MCP_EXT),
                "valueReference": {"reference": "Organization/mcp-a"}}]});
        let f = resource_facts(&task).unwrap().referral.unwrap();
        assert_eq!(f.referrer.as_deref(), Some("county-fresno"));
        assert!(!f.self_referral, "the ServiceRequest says");
        assert_eq!(
            f.made_to,
            vec!["ecm-compass".to_string(), "mcp-a".to_string()]
        );
        // The status projection keeps the requester R4 decides on.
        let p = crate::delivery::bundle::task_status_projection(&task);
        assert_eq!(
            resource_facts(&p)
                .unwrap()
                .referral
                .unwrap()
                .referrer
                .as_deref(),
            Some("county-fresno")
        );
        let patient = json!({"resourceType": "Patient", "id": "p1"});
        assert!(resource_facts(&patient).unwrap().referral.is_none());
    }

    #[test]
    fn foreign_consents_permit_nothing() {
        assert!(consent_from_fhir(
            &json!({"resourceType": "Consent", "id": "x", "patient": {"reference": "Patient/p"}})
        )
        .is_none());
        assert!(consent_from_fhir(&json!({"resourceType": "Patient", "id": "x"})).is_none());
    }

    #[test]
    fn referral_package_patient_is_minimal() {
        let p = json!({"resourceType": "Patient", "id": "p1", "birthDate": "2011-04-02", "gender": "male",
            "name": [{"family": "Demo"}], "address": [{"city": "Fresno"}],
            "identifier": [
                {"type": {"coding": [{"code": "MR"}]}, "value": "MRN1"},
                {"type": {"coding": [{"code": "MA"}]}, "value": "92000001A"}],
            "contact": [{"name": {"family": "Demo"}, "address": {"city": "Fresno"}}],
            "extension": [{"url": "x", "valueString": "y"}]});
        let d = Decision {
            effect: consent::Effect::Permit,
            rule: "R2".into(),
            consent_id: Some("c".into()),
            reason: "permit.referral-consent".into(),
            obligations: vec![],
            votes: vec![],
        };
        let out = apply_obligations(&p, &d);
        assert!(out.get("address").is_none() && out.get("extension").is_none());
        assert_eq!(out["identifier"].as_array().unwrap().len(), 1);
        assert_eq!(out["identifier"][0]["value"], "92000001A");
        assert!(out["contact"][0].get("address").is_none());
        assert_eq!(out["birthDate"], "2011-04-02");
        // Under another rule (a release), the Patient is not cut down.
        let d5 = Decision {
            rule: "R5".into(),
            ..d
        };
        assert!(apply_obligations(&p, &d5).get("address").is_some());
    }

    #[test]
    fn obligations_mask_and_label() {
        let res = json!({"resourceType": "Patient", "id": "p1", "address": [{"city": "Fresno"}], "meta": {"security": [{"system": ACT_CODE, "code": "ETH"}]}});
        let d = Decision {
            effect: consent::Effect::Permit,
            rule: "R7".into(),
            consent_id: None,
            reason: "permit".into(),
            obligations: vec![
                Obligation::Mask {
                    path: "Patient.address".into(),
                },
                Obligation::NoRedisclosureNotice,
            ],
            votes: vec![],
        };
        let out = apply_obligations(&res, &d);
        assert!(out.get("address").is_none());
        let codes: Vec<&str> = out["meta"]["security"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, vec!["ETH", "REDACTED", "NORDSCLCD"]);
    }
}
