//! Backend-neutral resource body rules for [`crate::Store::complete`].
//!
//! A resource's *content* is its body without `meta.versionId` and
//! `meta.lastUpdated` (and without `meta` when nothing else is left in it).
//! Two writes are "unchanged" when content and patient id are equal; only a
//! change makes a new version. The stored body always carries the stored
//! `meta.versionId` (a string, as FHIR requires) and `meta.lastUpdated`
//! (RFC 3339, microseconds, `Z`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::search::prepare_tokens;
use crate::{
    valid_fhir_id, valid_resource_type, ResourceWrite, SearchToken, StoreError, MAX_BODY_BYTES,
    MAX_PATIENT_ID_LEN, MAX_WRITES_PER_COMPLETE,
};

/// A validated write whose body is reduced to its content.
#[derive(Debug, Clone)]
pub(crate) struct PreparedWrite {
    pub resource_type: String,
    pub id: String,
    pub patient_id: Option<String>,
    /// Body without version meta; `resourceType` and `id` filled in.
    pub content: Value,
    /// Validated, de-duplicated search tokens.
    pub index: Vec<SearchToken>,
}

/// Validate the writes of one `complete` call. Errors name the write's
/// position and field, never values.
pub(crate) fn prepare_writes(writes: Vec<ResourceWrite>) -> Result<Vec<PreparedWrite>, StoreError> {
    if writes.len() > MAX_WRITES_PER_COMPLETE {
        return Err(StoreError::Invalid(format!(
            "{} resource writes in one completion (max {MAX_WRITES_PER_COMPLETE})",
            writes.len()
        )));
    }
    writes
        .into_iter()
        .enumerate()
        .map(|(i, w)| prepare_write(i, w))
        .collect()
}

fn prepare_write(i: usize, w: ResourceWrite) -> Result<PreparedWrite, StoreError> {
    let bad = |what: &str| StoreError::Invalid(format!("write {i}: {what}"));
    if !valid_resource_type(&w.resource_type) {
        return Err(bad("resource_type is not a FHIR resource type name"));
    }
    if !valid_fhir_id(&w.id) {
        return Err(bad("id is not a FHIR id ([A-Za-z0-9-.]{1,64})"));
    }
    if let Some(p) = &w.patient_id {
        if p.is_empty() || p.len() > MAX_PATIENT_ID_LEN {
            return Err(bad("patient_id is empty or too long"));
        }
    }
    let Value::Object(mut obj) = w.body else {
        return Err(bad("body is not a JSON object"));
    };
    match obj.get("resourceType") {
        None => {
            obj.insert(
                "resourceType".to_string(),
                Value::String(w.resource_type.clone()),
            );
        }
        Some(Value::String(t)) if *t == w.resource_type => {}
        Some(_) => return Err(bad("body.resourceType does not match resource_type")),
    }
    match obj.get("id") {
        None => {
            obj.insert("id".to_string(), Value::String(w.id.clone()));
        }
        Some(Value::String(id)) if *id == w.id => {}
        Some(_) => return Err(bad("body.id does not match id")),
    }
    let content = content_of(Value::Object(obj));
    let size = serde_json::to_vec(&content)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_BODY_BYTES {
        return Err(bad("body is larger than the limit"));
    }
    let index = prepare_tokens(i, w.index)?;
    Ok(PreparedWrite {
        resource_type: w.resource_type,
        id: w.id,
        patient_id: w.patient_id,
        content,
        index,
    })
}

/// The body without `meta.versionId`/`meta.lastUpdated` (and without an
/// emptied `meta`).
pub(crate) fn content_of(mut body: Value) -> Value {
    if let Value::Object(obj) = &mut body {
        let remove_meta = match obj.get_mut("meta") {
            Some(Value::Object(meta)) => {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                meta.is_empty()
            }
            _ => false,
        };
        if remove_meta {
            obj.remove("meta");
        }
    }
    body
}

/// The content with the stored version meta set.
pub(crate) fn with_version_meta(mut content: Value, version: i64, at: DateTime<Utc>) -> Value {
    if let Value::Object(obj) = &mut content {
        let meta = obj
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            // A non-object meta is invalid FHIR; replace it rather than lose
            // the version stamp.
            *meta = Value::Object(Map::new());
        }
        if let Value::Object(meta) = meta {
            meta.insert("versionId".to_string(), Value::String(version.to_string()));
            meta.insert(
                "lastUpdated".to_string(),
                Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true)),
            );
        }
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(body: Value) -> ResourceWrite {
        ResourceWrite {
            resource_type: "Patient".into(),
            id: "p1".into(),
            patient_id: Some("p1".into()),
            body,
            index: Vec::new(),
        }
    }

    #[test]
    fn version_meta_is_ignored_for_content() {
        let a = content_of(
            json!({"resourceType":"Patient","meta":{"versionId":"3","lastUpdated":"x"},"active":true}),
        );
        let b = content_of(json!({"resourceType":"Patient","active":true}));
        assert_eq!(a, b);
        let c = content_of(json!({"meta":{"versionId":"3","security":[{"code":"R"}]}}));
        assert_eq!(c, json!({"meta":{"security":[{"code":"R"}]}}));
    }

    #[test]
    fn stamps_version_meta() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let b = with_version_meta(json!({"id":"x"}), 2, at);
        assert_eq!(b["meta"]["versionId"], "2");
        assert_eq!(b["meta"]["lastUpdated"], "2023-11-14T22:13:20.123456Z");
        let b = with_version_meta(json!({"meta": 5}), 1, at);
        assert_eq!(b["meta"]["versionId"], "1");
    }

    #[test]
    fn fills_and_checks_type_and_id() {
        let p = prepare_writes(vec![write(json!({}))]).unwrap();
        assert_eq!(p[0].content, json!({"resourceType":"Patient","id":"p1"}));
        for bad in [
            json!({"resourceType":"Encounter"}),
            json!({"id":"other"}),
            json!([1, 2]),
            json!("x"),
        ] {
            assert!(matches!(
                prepare_writes(vec![write(bad)]),
                Err(StoreError::Invalid(_))
            ));
        }
        let mut w = write(json!({}));
        w.id = "a/b".into();
        assert!(prepare_writes(vec![w]).is_err());
        let mut w = write(json!({}));
        w.resource_type = "patient".into();
        assert!(prepare_writes(vec![w]).is_err());
        let mut w = write(json!({}));
        w.patient_id = Some(String::new());
        assert!(prepare_writes(vec![w]).is_err());
    }

    #[test]
    fn error_text_carries_no_values() {
        let w = ResourceWrite {
            resource_type: "Patient".into(),
            id: "p1".into(),
            patient_id: None,
            body: json!({"id":"SECRET-NAME"}),
            index: Vec::new(),
        };
        let msg = prepare_writes(vec![w]).unwrap_err().to_string();
        assert!(!msg.contains("SECRET"), "{msg}");
    }

    #[test]
    fn too_many_writes_rejected() {
        let ws = vec![write(json!({})); MAX_WRITES_PER_COMPLETE + 1];
        assert!(matches!(prepare_writes(ws), Err(StoreError::Invalid(_))));
    }
}
