//! One Patient per child across all sources (docs/county.md "Patient matching").
//!
//! Rules, in order:
//! 1. a child with a Medi-Cal CIN is `uuid5("patient|cin|{CIN}")` — the same
//!    key the ADT mapping uses for PID-3 of type `MA`, so county and hospital
//!    data meet on one Patient;
//! 2. without a CIN, `uuid5("patient|county|{county org}|{clientId}")`;
//! 3. when a client id first seen without a CIN later arrives with one, the
//!    county-keyed Patient is kept, marked `active: false` and linked
//!    `replaced-by` the CIN Patient (which links back with `replaces`); later
//!    CIN-less events for that client id follow the link, so the index is the
//!    stored Patient itself. Resources written earlier keep referencing the
//!    old id (documented conflict: no rewrite of history);
//! 4. a CIN-less event for a client id never stored under the county key is
//!    matched through the search index: the one Patient carrying the
//!    identifier `{base}/identifier/{county}/client-id|{clientId}` (written
//!    by an earlier event that had the CIN). Two or more → the county key
//!    (ambiguous, no guess).
//!
//! Writes merge into what is stored instead of replacing it: identifiers are
//! unioned (by system and value), links unioned, and fields the new version
//! lacks (an ADT address, telecom, contacts) are kept.

use serde_json::{json, Value};
use store::{ResourceQuery, Store};

use crate::edge::ApiError;
use crate::resources::rid;

/// The Patient id for a CIN.
pub fn cin_patient_id(cin: &str) -> String {
    rid(&format!("patient|cin|{cin}"))
}

/// The Patient id for a county client id (no CIN).
pub fn county_patient_id(county_org: &str, client_id: &str) -> String {
    rid(&format!("patient|county|{county_org}|{client_id}"))
}

/// What [`resolve`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The Patient the input lands on.
    pub patient_id: String,
    /// A CIN-less Patient of the same client that must now be linked to it.
    pub link_from: Option<String>,
}

/// The identifier system of a county's client ids.
pub fn client_id_system(base: &str, county_org: &str) -> String {
    format!("{base}/identifier/{county_org}/client-id")
}

/// The Patient id of a child (`cin` may come from the child or the enrollment).
pub async fn resolve(
    store: &dyn Store,
    base: &str,
    county_org: &str,
    client_id: &str,
    cin: Option<&str>,
) -> Result<Resolved, ApiError> {
    let by_county = county_patient_id(county_org, client_id);
    let existing = store.resource_get("Patient", &by_county).await?;
    if let Some(cin) = cin {
        let id = cin_patient_id(cin);
        let link_from = existing
            .filter(|p| replaced_by(&p.body).as_deref() != Some(id.as_str()))
            .map(|p| p.id);
        return Ok(Resolved {
            patient_id: id,
            link_from,
        });
    }
    if let Some(p) = &existing {
        return Ok(Resolved {
            patient_id: replaced_by(&p.body).unwrap_or(by_county),
            link_from: None,
        });
    }
    // Not seen under the county key: a Patient that already carries this
    // client id (written by an earlier event that had the CIN) is the child.
    let token = format!("{}|{client_id}", client_id_system(base, county_org));
    let q = ResourceQuery {
        resource_type: "Patient".into(),
        params: vec![("identifier".into(), vec![token])],
        limit: 2,
        ..ResourceQuery::default()
    };
    let found = store.resource_search(&q).await?;
    let patient_id = match found.as_slice() {
        [only] => only.id.clone(),
        _ => by_county,
    };
    Ok(Resolved {
        patient_id,
        link_from: None,
    })
}

/// The target of a `replaced-by` link.
pub fn replaced_by(patient: &Value) -> Option<String> {
    patient
        .get("link")?
        .as_array()?
        .iter()
        .find(|l| l.get("type").and_then(Value::as_str) == Some("replaced-by"))
        .and_then(|l| l.pointer("/other/reference"))
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("Patient/"))
        .map(str::to_string)
}

fn union_by(
    existing: Option<&Value>,
    new: Option<&Value>,
    same: fn(&Value, &Value) -> bool,
) -> Option<Value> {
    let mut out: Vec<Value> = new.and_then(Value::as_array).cloned().unwrap_or_default();
    for e in existing.and_then(Value::as_array).into_iter().flatten() {
        if !out.iter().any(|n| same(n, e)) {
            out.push(e.clone());
        }
    }
    (!out.is_empty()).then_some(Value::Array(out))
}

fn same_identifier(a: &Value, b: &Value) -> bool {
    a.get("system") == b.get("system") && a.get("value") == b.get("value")
}

fn same_link(a: &Value, b: &Value) -> bool {
    a.pointer("/other/reference") == b.pointer("/other/reference")
}

/// Merge a newly derived resource into the stored one: the new fields win,
/// stored fields the new version lacks are kept (recursively through
/// objects, so a closing `period.end` keeps `period.start`); for a Patient
/// identifiers and links are unioned. `meta` is the new one.
pub fn merge(existing: &Value, new: &Value) -> Value {
    let mut out = existing.clone();
    let (Some(o), Some(n)) = (out.as_object_mut(), new.as_object()) else {
        return new.clone();
    };
    for (k, v) in n {
        match (o.get(k), v) {
            // Nested objects (e.g. `period`) merge too; arrays are replaced.
            (Some(old @ Value::Object(_)), Value::Object(_)) if k != "meta" => {
                let merged = merge(old, v);
                o.insert(k.clone(), merged);
            }
            _ => {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    if new.get("resourceType").and_then(Value::as_str) == Some("Patient") {
        if let Some(ids) = union_by(
            existing.get("identifier"),
            new.get("identifier"),
            same_identifier,
        ) {
            o.insert("identifier".into(), ids);
        }
        if let Some(links) = union_by(existing.get("link"), new.get("link"), same_link) {
            o.insert("link".into(), links);
        }
    }
    out
}

/// This process's locks of Patients, by id.
static PATIENT_LOCKS: std::sync::LazyLock<crate::locks::KeyedLocks> =
    std::sync::LazyLock::new(Default::default);

/// Take this process's locks of the Patients `ids` (sorted and deduplicated
/// first, so two holders of overlapping sets never wait on each other in a
/// cycle). Every writer of a Patient holds its lock from reading the stored
/// Patient to committing the merged one (county events, the ADT worker), so
/// neither overwrites the other's merge. Instances sharing PostgreSQL do not
/// coordinate through it.
pub async fn lock_patients<'a>(
    ids: impl IntoIterator<Item = &'a str>,
) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
    let mut ids: Vec<&str> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(PATIENT_LOCKS.lock(id).await);
    }
    out
}

/// Add a link to a Patient (no duplicate).
pub fn add_link(patient: &mut Value, kind: &str, other: &str) {
    let link = json!({"other": {"reference": format!("Patient/{other}")}, "type": kind});
    match patient.get_mut("link").and_then(Value::as_array_mut) {
        Some(a) => {
            if !a.iter().any(|l| same_link(l, &link)) {
                a.push(link);
            }
        }
        None => patient["link"] = json!([link]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn patient_locks_serialize_one_patient_only() {
        let a = lock_patients(["p-lock-1", "p-lock-2"]).await;
        // Another Patient is not held up.
        let _b = lock_patients(["p-lock-3"]).await;
        let waiting = tokio::spawn(async { lock_patients(["p-lock-2", "p-lock-4"]).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the same Patient waits");
        drop(a);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(lock_patients(["x", "x"]).await.len(), 1, "deduplicated");
    }

    #[test]
    fn ids_match_the_adt_mapping_key() {
        assert_eq!(
            cin_patient_id("91000001A"),
            mapping::uuid5("patient|cin|91000001A")
        );
        assert_ne!(
            county_patient_id("county-fresno", "C1"),
            county_patient_id("county-kern", "C1")
        );
    }

    #[test]
    fn merge_keeps_adt_fields_and_unions_identifiers() {
        let stored = json!({"resourceType": "Patient", "id": "p", "address": [{"city": "X"}],
            "identifier": [{"system": "mr", "value": "1"}], "gender": "male"});
        let new = json!({"resourceType": "Patient", "id": "p",
            "identifier": [{"system": "cin", "value": "2"}], "gender": "female"});
        let m = merge(&stored, &new);
        assert_eq!(m["gender"], "female");
        assert_eq!(m["address"][0]["city"], "X");
        assert_eq!(m["identifier"].as_array().unwrap().len(), 2);
        let mut p = m.clone();
        add_link(&mut p, "replaces", "old");
        add_link(&mut p, "replaces", "old");
        assert_eq!(p["link"].as_array().unwrap().len(), 1);
        assert_eq!(
            replaced_by(
                &json!({"link": [{"type": "replaced-by", "other": {"reference": "Patient/n"}}]})
            )
            .as_deref(),
            Some("n")
        );
    }
}
