//! What every writer of FHIR resources shares: one way to turn a resource
//! into a store write ([`write_of`], [`Head`]) so that every writer indexes
//! it for search ([`index::tokens`]) and files it under its patient; the
//! FHIR R4 schema validator of the writable types ([`validate`]); and the
//! small helpers the sources and the read API use on stored bodies.

pub mod index;
pub mod validate;

use serde_json::{json, Value};
use store::ResourceWrite;

/// Extension (under the canonical base) naming the MCP that authorized a
/// referral's Task; the disclosure context and the Task lifecycle read it.
pub const AUTHORIZING_MCP_EXT: &str = "/StructureDefinition/authorizing-mcp";

/// Extension (under the canonical base) naming the ECM provider a Task was
/// taken from, on the one Task version that reassigned it (a provider
/// change); routing tells that former provider (`task.previous_owner`).
pub const PREVIOUS_OWNER_EXT: &str = "/StructureDefinition/previous-owner";

/// Extension (under the canonical base) recording, on a closed referral
/// Task, when the member's Notice of Action was sent (`valueDateTime`); the
/// authorizing MCP records it (`sources::task_update`).
pub const NOA_SENT_EXT: &str = "/StructureDefinition/notice-of-action-sent";

/// The organization ids that `res`'s extensions whose URL ends with
/// `suffix` reference (`valueReference` `Organization/{id}`), in order: how
/// the gateway's own extensions naming an organization
/// ([`AUTHORIZING_MCP_EXT`], [`PREVIOUS_OWNER_EXT`]) are read.
pub fn extension_orgs<'a>(res: &'a Value, suffix: &'a str) -> impl Iterator<Item = String> + 'a {
    res.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.ends_with(suffix))
        })
        .filter_map(|e| {
            e.pointer("/valueReference/reference")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("Organization/"))
                .map(str::to_string)
        })
}

/// The first organization id [`extension_orgs`] finds.
pub fn extension_org(res: &Value, suffix: &str) -> Option<String> {
    extension_orgs(res, suffix).next()
}

/// What a store write needs besides the body: type, id, patient and the
/// search index, computed from the resource.
#[derive(Debug)]
pub struct Head {
    pub resource_type: String,
    pub id: String,
    pub patient_id: Option<String>,
    pub index: Vec<store::SearchToken>,
}

impl Head {
    /// `None` for a resource without `resourceType` or `id` (not written).
    pub fn of(res: &Value) -> Option<Head> {
        let (Some(rt), Some(id)) = (
            res.get("resourceType").and_then(Value::as_str),
            res.get("id").and_then(Value::as_str),
        ) else {
            return None;
        };
        Some(Head {
            resource_type: rt.to_string(),
            id: id.to_string(),
            patient_id: mapping::patient_reference(res),
            index: index::tokens(res),
        })
    }

    /// The write of `body` under this head (the body may have been changed
    /// since the head was taken, e.g. a Patient merged with the stored one,
    /// as long as its type, id, patient and searchable elements are not).
    pub fn write(self, body: Value) -> ResourceWrite {
        ResourceWrite {
            resource_type: self.resource_type,
            id: self.id,
            patient_id: self.patient_id,
            index: self.index,
            body,
        }
    }
}

/// A resource as a store write: patient compartment from its references,
/// search tokens from [`index::tokens`]. Every writer goes through this (or
/// [`Head`]), so nothing is stored unsearchable.
pub fn write_of(res: Value) -> ResourceWrite {
    match Head::of(&res) {
        Some(h) => h.write(res),
        None => ResourceWrite {
            resource_type: String::new(),
            id: String::new(),
            patient_id: None,
            index: Vec::new(),
            body: res,
        },
    }
}

/// Drop `meta.versionId`/`lastUpdated` of a stored body before re-writing
/// or comparing it (an empty `meta` goes too).
pub fn strip_meta(mut body: Value) -> Value {
    if let Some(m) = body.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
        if m.is_empty() {
            if let Some(o) = body.as_object_mut() {
                o.remove("meta");
            }
        }
    }
    body
}

/// A FHIR `collection` Bundle of resources.
pub fn collection(resources: &[Value], base: &str) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let t = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
            let id = r.get("id").and_then(Value::as_str).unwrap_or("");
            json!({"fullUrl": format!("{base}/{t}/{id}"), "resource": r})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

/// True for the internal `Basic` records that answers leave out.
pub fn is_internal(res: &Value) -> bool {
    res.get("resourceType").and_then(Value::as_str) == Some("Basic")
}

/// A deterministic resource id for a key (the mapping engine's uuid5).
pub fn rid(key: &str) -> String {
    mapping::uuid5(key)
}

/// A JSON pointer as the FHIRPath-like `expression` of an OperationOutcome
/// issue: `/consent/recipients/0` → `consent.recipients[0]`.
pub fn expression(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_orgs_reads_the_organizations_an_extension_names() {
        let t = json!({"resourceType": "Task", "extension": [
            {"url": "https://gw/StructureDefinition/previous-owner", "valueReference": {"reference": "Organization/ecm-a"}},
            {"url": "https://gw/StructureDefinition/authorizing-mcp", "valueReference": {"reference": "Organization/mcp-a"}},
            {"url": "https://gw/StructureDefinition/previous-owner", "valueReference": {"reference": "Patient/p1"}},
            {"url": "https://gw/StructureDefinition/previous-owner", "valueReference": {"reference": "Organization/ecm-b"}}]});
        assert_eq!(
            extension_org(&t, AUTHORIZING_MCP_EXT).as_deref(),
            Some("mcp-a")
        );
        assert_eq!(
            extension_orgs(&t, PREVIOUS_OWNER_EXT).collect::<Vec<_>>(),
            ["ecm-a", "ecm-b"]
        );
        assert_eq!(extension_org(&t, NOA_SENT_EXT), None);
        assert_eq!(
            extension_org(&json!({"resourceType": "Task"}), AUTHORIZING_MCP_EXT),
            None
        );
    }

    #[test]
    fn every_write_is_indexed_and_filed_under_its_patient() {
        let w = write_of(json!({
            "resourceType": "Encounter", "id": "e1", "status": "finished",
            "subject": {"reference": "Patient/p1"},
            "identifier": [{"system": "urn:x", "value": "v1"}]
        }));
        assert_eq!(
            (w.resource_type.as_str(), w.id.as_str()),
            ("Encounter", "e1")
        );
        assert_eq!(w.patient_id.as_deref(), Some("p1"));
        assert!(
            w.index.iter().any(|t| t.value == "urn:x|v1"),
            "{:?}",
            w.index
        );
        assert!(
            w.index.iter().any(|t| t.value == "finished"),
            "{:?}",
            w.index
        );
    }

    #[test]
    fn strip_meta_drops_version_and_time_and_an_empty_meta() {
        let b = strip_meta(json!({"id": "x", "meta": {"versionId": "2", "lastUpdated": "t"}}));
        assert_eq!(b, json!({"id": "x"}));
        let b = strip_meta(json!({"meta": {"versionId": "2", "source": "s"}}));
        assert_eq!(b, json!({"meta": {"source": "s"}}));
    }
}
