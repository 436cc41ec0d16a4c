//! The audit trail: append-only, hash-chained records of every disclosure,
//! refusal and read.
//!
//! Each record's `hash` is the lowercase hex SHA-256 of
//!
//! ```text
//! prev_hash "\n" seq "\n" recorded "\n" kind "\n" patient_id "\n" recipient "\n" canonical(body)
//! ```
//!
//! where `recorded` is RFC 3339 with microseconds and `Z`, a missing
//! `patient_id`/`recipient` is the empty string (so both must be non-empty
//! when present), and `prev_hash` is the previous record's hash (64 zeros
//! for the first record). `seq` starts at 1 and has no gaps.
//!
//! `canonical(body)` is compact JSON with every object's keys sorted by
//! their UTF-8 bytes, at every depth, written by [`canonical_json`]. It does
//! not rely on serde_json's map order: with the `preserve_order` feature
//! (which any crate in the build may switch on) `Map` keeps insertion order,
//! so this crate sorts keys itself. Strings and numbers use serde_json's
//! own formatting.
//!
//! Invariants: the chain head (last seq and hash) is read and extended
//! inside the writing transaction (SQLite: the single writer; PostgreSQL: a
//! row lock on the head row), so concurrent appends never fork the chain.
//! [`crate::Store::audit_verify`] recomputes the chain from the start.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{StoreError, MAX_PATIENT_ID_LEN};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Most audit records in one append or completion.
pub const MAX_AUDITS_PER_CALL: usize = 1000;
/// Longest audit `kind` (bytes).
pub const MAX_AUDIT_KIND_LEN: usize = 64;
/// Longest `recipient` (bytes).
pub const MAX_RECIPIENT_LEN: usize = 128;
/// Largest serialized audit body (256 KiB).
pub const MAX_AUDIT_BODY_BYTES: usize = 256 * 1024;
/// Largest [`crate::Store::audit_list`] page; larger limits are clamped.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// An audit record to append.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// When it happened (stored with microsecond precision).
    pub recorded: DateTime<Utc>,
    /// `"disclosure"`, `"refusal"`, `"read"` …
    pub kind: String,
    /// Patient concerned, if any.
    pub patient_id: Option<String>,
    /// Recipient organization, if any.
    pub recipient: Option<String>,
    /// The FHIR AuditEvent.
    pub body: Value,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Position in the chain, from 1, no gaps.
    pub seq: i64,
    /// When it happened (microsecond precision).
    pub recorded: DateTime<Utc>,
    /// Record kind.
    pub kind: String,
    /// Patient concerned.
    pub patient_id: Option<String>,
    /// Recipient organization.
    pub recipient: Option<String>,
    /// The AuditEvent.
    pub body: Value,
    /// Hash of the previous record ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// Hash of this record (see the module docs).
    pub hash: String,
}

/// A validated audit entry: time truncated to microseconds, body canonical.
#[derive(Debug, Clone)]
pub(crate) struct PreparedAudit {
    pub recorded: DateTime<Utc>,
    pub kind: String,
    pub patient_id: Option<String>,
    pub recipient: Option<String>,
    pub body: Value,
    /// `canonical_json(body)`, what is stored and hashed.
    pub canonical: String,
}

/// Validate audit entries; errors name the position and field only.
pub(crate) fn prepare_audits(entries: Vec<NewAudit>) -> Result<Vec<PreparedAudit>, StoreError> {
    if entries.len() > MAX_AUDITS_PER_CALL {
        return Err(StoreError::Invalid(format!(
            "{} audit records in one call (max {MAX_AUDITS_PER_CALL})",
            entries.len()
        )));
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let bad = |what: &str| StoreError::Invalid(format!("audit {i}: {what}"));
            if a.kind.is_empty() || a.kind.len() > MAX_AUDIT_KIND_LEN {
                return Err(bad("kind is empty or too long"));
            }
            if a.patient_id
                .as_ref()
                .is_some_and(|p| p.is_empty() || p.len() > MAX_PATIENT_ID_LEN)
            {
                return Err(bad("patient_id is empty or too long"));
            }
            if a.recipient
                .as_ref()
                .is_some_and(|r| r.is_empty() || r.len() > MAX_RECIPIENT_LEN)
            {
                return Err(bad("recipient is empty or too long"));
            }
            let canonical = canonical_json(&a.body);
            if canonical.len() > MAX_AUDIT_BODY_BYTES {
                return Err(bad("body is larger than the limit"));
            }
            let recorded = DateTime::from_timestamp_micros(a.recorded.timestamp_micros())
                .ok_or_else(|| bad("recorded is out of range"))?;
            Ok(PreparedAudit {
                recorded,
                kind: a.kind,
                patient_id: a.patient_id,
                recipient: a.recipient,
                body: a.body,
                canonical,
            })
        })
        .collect()
}

/// Compact JSON with object keys sorted at every depth (see module docs).
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    // serde_json writes UTF-8 only; the fallback cannot be taken.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            out.push(b'{');
            // serde_json's default `Map` iterates in key order already; sort
            // only when it does not (the `preserve_order` feature).
            let sorted = map
                .keys()
                .zip(map.keys().skip(1))
                .all(|(a, b)| a.as_bytes() <= b.as_bytes());
            let member = |n: usize, k: &str, val: &Value, out: &mut Vec<u8>| {
                if n > 0 {
                    out.push(b',');
                }
                write_json(k, out);
                out.push(b':');
                write_canonical(val, out);
            };
            if sorted {
                for (n, (k, val)) in map.iter().enumerate() {
                    member(n, k, val, out);
                }
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (n, (k, val)) in entries.into_iter().enumerate() {
                    member(n, k, val, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // Strings, numbers, booleans and null have one compact form.
        scalar => write_json(scalar, out),
    }
}

/// serde_json's own compact form of a string or scalar, written in place.
/// Before, every key and string was cloned into a `Value` and formatted
/// through `to_string` (three allocations each, ~40 keys per AuditEvent, on
/// every FHIR request).
fn write_json<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing a string or scalar into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// The chain hash of one record (see module docs).
pub fn chain_hash(
    prev_hash: &str,
    seq: i64,
    recorded: DateTime<Utc>,
    kind: &str,
    patient_id: Option<&str>,
    recipient: Option<&str>,
    canonical_body: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(
        recorded
            .to_rfc3339_opts(SecondsFormat::Micros, true)
            .as_bytes(),
    );
    h.update(b"\n");
    h.update(kind.as_bytes());
    h.update(b"\n");
    h.update(patient_id.unwrap_or("").as_bytes());
    h.update(b"\n");
    h.update(recipient.unwrap_or("").as_bytes());
    h.update(b"\n");
    h.update(canonical_body.as_bytes());
    hex::encode(h.finalize())
}

/// The hash a stored record should have, given its `prev_hash`.
pub(crate) fn record_hash(r: &AuditRecord) -> String {
    chain_hash(
        &r.prev_hash,
        r.seq,
        r.recorded,
        &r.kind,
        r.patient_id.as_deref(),
        r.recipient.as_deref(),
        &canonical_json(&r.body),
    )
}

/// Walks a chain in seq order; the first broken record's seq, if any.
#[derive(Debug)]
pub(crate) struct ChainVerifier {
    prev_hash: String,
    next_seq: i64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            prev_hash: GENESIS_HASH.to_string(),
            next_seq: 1,
        }
    }
}

impl ChainVerifier {
    /// Check the next record. `Some(seq)` names the first record that does
    /// not fit (for a gap: the missing seq).
    pub(crate) fn check(&mut self, r: &AuditRecord) -> Option<i64> {
        if r.seq != self.next_seq {
            return Some(self.next_seq.min(r.seq));
        }
        if r.prev_hash != self.prev_hash || record_hash(r) != r.hash {
            return Some(r.seq);
        }
        self.prev_hash.clone_from(&r.hash);
        self.next_seq = r.seq.saturating_add(1);
        None
    }

    /// The seq the next record must have.
    pub(crate) fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// After the last record: does the stored head `(seq, hash)` match?
    pub(crate) fn check_head(&self, head_seq: i64, head_hash: &str) -> Option<i64> {
        let last = self.next_seq - 1;
        if head_seq != last || head_hash != self.prev_hash {
            return Some(last.max(head_seq).max(1));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_strings_are_written_as_serde_json_writes_them() {
        let mut all: String = (0u32..0x80).filter_map(char::from_u32).collect();
        all.push_str("é€😀/\\\"end");
        for s in [all.as_str(), "", "plain", "\u{1f}x", "\"", "a\\"] {
            let quoted = serde_json::to_string(s).unwrap();
            assert_eq!(canonical_json(&json!(s)), quoted, "{s:?}");
            assert_eq!(
                canonical_json(&json!({ s: 1 })),
                format!("{{{quoted}:1}}"),
                "key {s:?}"
            );
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":2,"x":"é\n"}],"c":null}}"#).unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"z":[{"x":"é\n","y":2}]},"b":1}"#
        );
        assert_eq!(canonical_json(&json!(1.5)), "1.5");
    }

    #[test]
    fn chain_hash_is_stable_and_sensitive() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap();
        let a = chain_hash(
            GENESIS_HASH,
            1,
            t,
            "disclosure",
            Some("p1"),
            Some("mcp"),
            "{}",
        );
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(
            a,
            chain_hash(
                GENESIS_HASH,
                1,
                t,
                "disclosure",
                Some("p1"),
                Some("mcp"),
                "{}"
            )
        );
        assert_ne!(
            a,
            chain_hash(
                GENESIS_HASH,
                2,
                t,
                "disclosure",
                Some("p1"),
                Some("mcp"),
                "{}"
            )
        );
        assert_ne!(
            a,
            chain_hash(GENESIS_HASH, 1, t, "disclosure", None, Some("mcp"), "{}")
        );
        assert_ne!(
            a,
            chain_hash(&a, 1, t, "disclosure", Some("p1"), Some("mcp"), "{}")
        );
    }

    #[test]
    fn verifier_finds_first_break() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let mut prev = GENESIS_HASH.to_string();
        let mut recs = Vec::new();
        for seq in 1..=3 {
            let mut r = AuditRecord {
                seq,
                recorded: t,
                kind: "read".into(),
                patient_id: None,
                recipient: None,
                body: json!({"n": seq}),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            r.hash = record_hash(&r);
            prev.clone_from(&r.hash);
            recs.push(r);
        }
        let mut v = ChainVerifier::default();
        assert!(recs.iter().all(|r| v.check(r).is_none()));
        assert_eq!(v.check_head(3, &prev), None);
        assert_eq!(v.check_head(2, &prev), Some(3));
        recs[1].body = json!({"n": 99});
        let mut v = ChainVerifier::default();
        let first = recs.iter().find_map(|r| v.check(r));
        assert_eq!(first, Some(2));
        let mut v = ChainVerifier::default();
        assert_eq!(v.check(&recs[0]), None);
        assert_eq!(v.check(&recs[2]), Some(2), "gap reports the missing seq");
    }

    #[test]
    fn audits_are_bounded() {
        let a = NewAudit {
            recorded: Utc::now(),
            kind: "read".into(),
            patient_id: Some(String::new()),
            recipient: None,
            body: json!({}),
        };
        assert!(prepare_audits(vec![a.clone()]).is_err());
        let mut ok = a;
        ok.patient_id = Some("p1".into());
        let p = prepare_audits(vec![ok]).unwrap();
        assert_eq!(p[0].recorded.timestamp_subsec_nanos() % 1000, 0);
    }
}
