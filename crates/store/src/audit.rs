//! The audit trail: append-only, chained records of every disclosure,
//! refusal and read.
//!
//! # Chain versions
//!
//! Every record carries its chain version (`version`) and, from version 2,
//! the id of the key that sealed it (`key_id`).
//!
//! **Version 2 (keyed, what new records use):** `hash` is the lowercase hex
//! HMAC-SHA256, under the key named by `key_id`, of
//!
//! ```text
//! "cwsgw-audit-v2" "\n" key_id "\n" prev_hash "\n" seq "\n" recorded "\n" kind "\n" patient_id "\n" recipient "\n" canonical(body)
//! ```
//!
//! **Version 1 (unkeyed, records written before keys existed, or by a store
//! opened without a key while the chain is still unkeyed):** `hash` is the
//! lowercase hex SHA-256 of
//!
//! ```text
//! prev_hash "\n" seq "\n" recorded "\n" kind "\n" patient_id "\n" recipient "\n" canonical(body)
//! ```
//!
//! where `recorded` is RFC 3339 with microseconds and `Z`, a missing
//! `patient_id`/`recipient` is the empty string (so both must be non-empty
//! when present), and `prev_hash` is the previous record's hash (64 zeros
//! for the first record). `seq` starts at 1 and has no gaps. Versions never
//! go down along the chain: once a record is version 2, every later one is
//! (a store without a key refuses to append to a keyed chain, and the
//! verifier reports a version-1 record after a version-2 one as a break), so
//! an attacker without the key cannot append or re-seal records as
//! version 1 after the keyed part.
//!
//! Keys ([`AuditKeys`]) come from outside the database (a key file or the
//! environment, see the gateway's `[audit]` configuration); the last key of
//! the ring seals new records, every key of the ring verifies. A keyed chain
//! cannot be recomputed after an edit without the key; what a keyed chain
//! alone cannot show — its tail deleted and the head moved back, or the
//! whole chain rewritten — is caught against the signed checkpoints of
//! [`crate::audit_checkpoint`], kept outside the database.
//!
//! `canonical(body)` is compact JSON with every object's keys sorted by
//! their UTF-8 bytes, at every depth, written by [`canonical_json`]. It does
//! not rely on serde_json's map order: with the `preserve_order` feature
//! (which any crate in the build may switch on) `Map` keeps insertion order,
//! so this crate sorts keys itself. Strings and numbers use serde_json's
//! own formatting.
//!
//! # Patients
//!
//! A record may concern several patients (one search returns resources of
//! many). Each record is indexed under its `patient_id` and under every
//! `entity.what.reference` of the form `Patient/{id}` in its body
//! ([`patients_of`]), so [`crate::Store::audit_list`]'s patient filter finds
//! every record that names the patient.
//!
//! Invariants: the chain head (last seq, hash and version) is read and
//! extended inside the writing transaction (SQLite: the single writer;
//! PostgreSQL: a row lock on the head row), so concurrent appends never
//! fork the chain. [`crate::Store::audit_verify`] recomputes the chain from
//! the start with the store's keys.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
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
/// Most distinct patients one record names.
pub const MAX_AUDIT_PATIENTS: usize = 2000;
/// Chain version of unkeyed (SHA-256) records.
pub const CHAIN_V1: i32 = 1;
/// Chain version of keyed (HMAC-SHA256) records.
pub const CHAIN_V2: i32 = 2;
/// Longest key id (bytes): `[A-Za-z0-9._-]`.
pub const MAX_KEY_ID_LEN: usize = 32;
/// Shortest key (bytes).
pub const MIN_KEY_BYTES: usize = 32;
/// Id of the built-in demo key ([`AuditKeys::demo`]).
pub const DEMO_KEY_ID: &str = "demo-only";
/// The built-in demo key. **Public, for the demo and tests only**: a chain
/// sealed with it proves nothing.
const DEMO_KEY_HEX: &str = "64656d6f2d6f6e6c792d6e6f742d612d7365637265742d63777367772d617564";

/// One audit key: an id (recorded with every record it seals) and the
/// secret. `Debug` prints the id only.
#[derive(Clone)]
pub struct AuditKey {
    id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// A key from its id and secret; errors name the rule broken, never
    /// the secret.
    pub fn new(id: &str, secret: Vec<u8>) -> Result<AuditKey, String> {
        if id.is_empty()
            || id.len() > MAX_KEY_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "audit key id must be 1..={MAX_KEY_ID_LEN} characters of [A-Za-z0-9._-]"
            ));
        }
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "audit key {id} is shorter than {MIN_KEY_BYTES} bytes ({} hex digits)",
                MIN_KEY_BYTES * 2
            ));
        }
        Ok(AuditKey {
            id: id.to_string(),
            secret,
        })
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// HMAC-SHA256 of `parts` joined by `\n`. `None` never happens (HMAC
    /// accepts keys of every length), but is not assumed away.
    fn mac(&self, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).ok()?;
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                m.update(b"\n");
            }
            m.update(p);
        }
        Some(m)
    }

    /// Hex HMAC-SHA256 of `parts` joined by `\n` (empty in the impossible
    /// case that the MAC cannot be keyed, which matches nothing).
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        self.mac(parts)
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// Does `mac_hex` equal the MAC of `parts` (constant time)?
    pub fn verify(&self, parts: &[&[u8]], mac_hex: &str) -> bool {
        let Ok(want) = hex::decode(mac_hex) else {
            return false;
        };
        self.mac(parts)
            .is_some_and(|m| m.verify_slice(&want).is_ok())
    }
}

/// The audit key ring: the **last** key seals new records (the current
/// key); every key verifies. Rotation: add a new key at the end, keep the
/// old ones for verification. Empty = no key: the store appends unkeyed
/// (version 1) records while the chain is unkeyed and refuses once it is
/// keyed.
#[derive(Clone, Default)]
pub struct AuditKeys {
    keys: Vec<Arc<AuditKey>>,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| k.id()))
            .finish()
    }
}

impl AuditKeys {
    /// No keys.
    pub fn none() -> AuditKeys {
        AuditKeys::default()
    }

    /// The built-in, public demo key (id [`DEMO_KEY_ID`]). Demo and tests
    /// only: anyone can recompute a chain sealed with it.
    pub fn demo() -> AuditKeys {
        let secret = hex::decode(DEMO_KEY_HEX).unwrap_or_default();
        AuditKeys {
            keys: vec![Arc::new(AuditKey {
                id: DEMO_KEY_ID.to_string(),
                secret,
            })],
        }
    }

    /// Parse a key ring: entries `id:hex-secret`, one per line or separated
    /// by commas; blank lines and `#` comments are skipped. The last entry
    /// is the current key. Errors name the entry's position, never a secret.
    pub fn parse(text: &str) -> Result<AuditKeys, String> {
        let mut keys: Vec<Arc<AuditKey>> = Vec::new();
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for (n, e) in entries.enumerate() {
            let Some((id, secret)) = e.split_once(':') else {
                return Err(format!("audit key entry {}: expected id:hex", n + 1));
            };
            let secret = hex::decode(secret.trim())
                .map_err(|_| format!("audit key entry {}: the secret is not hex", n + 1))?;
            let key = AuditKey::new(id.trim(), secret)?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err(format!("audit key id {} appears twice", key.id));
            }
            keys.push(Arc::new(key));
        }
        if keys.is_empty() {
            return Err("no audit key found (expected id:hex entries)".to_string());
        }
        Ok(AuditKeys { keys })
    }

    /// A ring from keys (the last is current).
    pub fn from_keys(keys: Vec<AuditKey>) -> AuditKeys {
        AuditKeys {
            keys: keys.into_iter().map(Arc::new).collect(),
        }
    }

    /// The key that seals new records.
    pub fn current(&self) -> Option<&Arc<AuditKey>> {
        self.keys.last()
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<AuditKey>> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// No key configured?
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Is the current key the public demo key?
    pub fn is_demo(&self) -> bool {
        self.current().is_some_and(|k| k.id == DEMO_KEY_ID)
    }
}

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
    /// Chain version: [`CHAIN_V1`] (SHA-256) or [`CHAIN_V2`] (HMAC).
    pub version: i32,
    /// The key that sealed a version-2 record.
    pub key_id: Option<String>,
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
    /// Every patient the record names (see [`patients_of`]).
    pub patients: Vec<String>,
    /// The key to seal it with (`None`: unkeyed, allowed only while the
    /// chain is unkeyed).
    pub key: Option<Arc<AuditKey>>,
}

/// Every patient a record names: `patient_id` and each
/// `entity[].what.reference` of the form `Patient/{id}`, distinct, in
/// order of first appearance.
pub fn patients_of(patient_id: Option<&str>, body: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |p: &str| {
        if !out.iter().any(|q| q == p) {
            out.push(p.to_string());
        }
    };
    if let Some(p) = patient_id {
        push(p);
    }
    if let Some(entities) = body.get("entity").and_then(Value::as_array) {
        for e in entities {
            if let Some(p) = e
                .pointer("/what/reference")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("Patient/"))
            {
                push(p);
            }
        }
    }
    out
}

/// Seal one record: `(version, key_id, hash)` for the record after
/// `prev_hash` at `seq`. With a key: version 2. Without: version 1, and
/// only while the head is unkeyed (`head_version` < 2).
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal(
    key: Option<&AuditKey>,
    head_version: i32,
    prev_hash: &str,
    seq: i64,
    recorded: DateTime<Utc>,
    kind: &str,
    patient_id: Option<&str>,
    recipient: Option<&str>,
    canonical_body: &str,
) -> Result<(i32, Option<String>, String), StoreError> {
    match key {
        Some(k) => Ok((
            CHAIN_V2,
            Some(k.id.clone()),
            keyed_hash(
                k,
                prev_hash,
                seq,
                recorded,
                kind,
                patient_id,
                recipient,
                canonical_body,
            ),
        )),
        None if head_version >= CHAIN_V2 => Err(StoreError::Invalid(
            "audit: the chain is keyed and this store has no audit key".to_string(),
        )),
        None => Ok((
            CHAIN_V1,
            None,
            chain_hash(
                prev_hash,
                seq,
                recorded,
                kind,
                patient_id,
                recipient,
                canonical_body,
            ),
        )),
    }
}

/// Validate audit entries; errors name the position and field only.
pub(crate) fn prepare_audits(
    entries: Vec<NewAudit>,
    keys: &AuditKeys,
) -> Result<Vec<PreparedAudit>, StoreError> {
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
            let patients = patients_of(a.patient_id.as_deref(), &a.body);
            if patients.len() > MAX_AUDIT_PATIENTS {
                return Err(bad("names too many patients"));
            }
            if patients
                .iter()
                .any(|p| p.is_empty() || p.len() > MAX_PATIENT_ID_LEN)
            {
                return Err(bad("a patient reference is empty or too long"));
            }
            Ok(PreparedAudit {
                recorded,
                kind: a.kind,
                patient_id: a.patient_id,
                recipient: a.recipient,
                body: a.body,
                canonical,
                patients,
                key: keys.current().cloned(),
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

/// The keyed (version 2) hash of one record (see module docs).
#[allow(clippy::too_many_arguments)]
pub fn keyed_hash(
    key: &AuditKey,
    prev_hash: &str,
    seq: i64,
    recorded: DateTime<Utc>,
    kind: &str,
    patient_id: Option<&str>,
    recipient: Option<&str>,
    canonical_body: &str,
) -> String {
    let seq = seq.to_string();
    let recorded = recorded.to_rfc3339_opts(SecondsFormat::Micros, true);
    key.sign(&[
        b"cwsgw-audit-v2",
        key.id.as_bytes(),
        prev_hash.as_bytes(),
        seq.as_bytes(),
        recorded.as_bytes(),
        kind.as_bytes(),
        patient_id.unwrap_or("").as_bytes(),
        recipient.unwrap_or("").as_bytes(),
        canonical_body.as_bytes(),
    ])
}

/// Does a stored record's hash match its content, given its `prev_hash`?
/// `Err` when it is sealed with a key the ring does not hold.
pub(crate) fn record_matches(r: &AuditRecord, keys: &AuditKeys) -> Result<bool, StoreError> {
    let canonical = canonical_json(&r.body);
    match (r.version, r.key_id.as_deref()) {
        (CHAIN_V1, None) => Ok(chain_hash(
            &r.prev_hash,
            r.seq,
            r.recorded,
            &r.kind,
            r.patient_id.as_deref(),
            r.recipient.as_deref(),
            &canonical,
        ) == r.hash),
        (CHAIN_V2, Some(id)) => {
            let Some(key) = keys.get(id) else {
                let shown: String = id.chars().take(MAX_KEY_ID_LEN).collect();
                return Err(StoreError::Invalid(format!(
                    "audit record {} is sealed with key id {shown:?}, which is not configured; cannot verify",
                    r.seq
                )));
            };
            let want = keyed_hash(
                key,
                &r.prev_hash,
                r.seq,
                r.recorded,
                &r.kind,
                r.patient_id.as_deref(),
                r.recipient.as_deref(),
                &canonical,
            );
            // Constant-time comparison of the hex digests.
            Ok(want.len() == r.hash.len()
                && want
                    .bytes()
                    .zip(r.hash.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0)
        }
        _ => Ok(false),
    }
}

/// Walks a chain in seq order; the first broken record's seq, if any.
#[derive(Debug)]
pub(crate) struct ChainVerifier {
    prev_hash: String,
    next_seq: i64,
    version: i32,
    keys: AuditKeys,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier::new(AuditKeys::none())
    }
}

impl ChainVerifier {
    /// A verifier that accepts records sealed with any key of `keys`.
    pub(crate) fn new(keys: AuditKeys) -> Self {
        ChainVerifier {
            prev_hash: GENESIS_HASH.to_string(),
            next_seq: 1,
            version: CHAIN_V1,
            keys,
        }
    }

    /// Check the next record. `Ok(Some(seq))` names the first record that
    /// does not fit (for a gap: the missing seq; a version lower than the
    /// one before it is a break); `Err` when a record is sealed with a key
    /// this verifier does not hold.
    pub(crate) fn check(&mut self, r: &AuditRecord) -> Result<Option<i64>, StoreError> {
        if r.seq != self.next_seq {
            return Ok(Some(self.next_seq.min(r.seq)));
        }
        if r.prev_hash != self.prev_hash || r.version < self.version {
            return Ok(Some(r.seq));
        }
        if !record_matches(r, &self.keys)? {
            return Ok(Some(r.seq));
        }
        self.prev_hash.clone_from(&r.hash);
        self.version = r.version;
        self.next_seq = r.seq.saturating_add(1);
        Ok(None)
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
                version: CHAIN_V1,
                key_id: None,
            };
            r.hash = chain_hash(&prev, seq, t, "read", None, None, &canonical_json(&r.body));
            prev.clone_from(&r.hash);
            recs.push(r);
        }
        let mut v = ChainVerifier::default();
        assert!(recs.iter().all(|r| v.check(r).unwrap().is_none()));
        assert_eq!(v.check_head(3, &prev), None);
        assert_eq!(v.check_head(2, &prev), Some(3));
        recs[1].body = json!({"n": 99});
        let mut v = ChainVerifier::default();
        let first = recs.iter().find_map(|r| v.check(r).unwrap());
        assert_eq!(first, Some(2));
        let mut v = ChainVerifier::default();
        assert_eq!(v.check(&recs[0]).unwrap(), None);
        assert_eq!(
            v.check(&recs[2]).unwrap(),
            Some(2),
            "gap reports the missing seq"
        );
    }

    /// A chain of `n` records: v1 up to `keyed_from - 1`, then v2 under `key`.
    fn mixed_chain(n: i64, keyed_from: i64, key: &AuditKey) -> Vec<AuditRecord> {
        let t = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let mut prev = GENESIS_HASH.to_string();
        let mut out = Vec::new();
        for seq in 1..=n {
            let body = json!({"n": seq});
            let k = (seq >= keyed_from).then_some(key);
            let (version, key_id, hash) = seal(
                k,
                out.last().map_or(CHAIN_V1, |r: &AuditRecord| r.version),
                &prev,
                seq,
                t,
                "read",
                Some("p1"),
                None,
                &canonical_json(&body),
            )
            .unwrap();
            out.push(AuditRecord {
                seq,
                recorded: t,
                kind: "read".into(),
                patient_id: Some("p1".into()),
                recipient: None,
                body,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
                version,
                key_id,
            });
        }
        out
    }

    fn first_break(recs: &[AuditRecord], keys: &AuditKeys) -> Result<Option<i64>, StoreError> {
        let mut v = ChainVerifier::new(keys.clone());
        for r in recs {
            if let Some(b) = v.check(r)? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    #[test]
    fn keyed_chain_verifies_only_with_the_key_and_never_downgrades() {
        let k1 = AuditKey::new("k1", vec![7u8; 32]).unwrap();
        let k2 = AuditKey::new("k2", vec![9u8; 32]).unwrap();
        let ring = AuditKeys::from_keys(vec![k1.clone()]);
        let recs = mixed_chain(5, 3, &k1);
        assert_eq!(recs[1].version, CHAIN_V1);
        assert_eq!(recs[2].version, CHAIN_V2);
        assert_eq!(recs[2].key_id.as_deref(), Some("k1"));
        assert_eq!(first_break(&recs, &ring).unwrap(), None);
        // Rotation: a ring holding k1 and the new current k2 verifies both.
        let rotated = AuditKeys::from_keys(vec![k1.clone(), k2.clone()]);
        assert_eq!(rotated.current().unwrap().id(), "k2");
        assert_eq!(first_break(&recs, &rotated).unwrap(), None);
        // Without k1 the keyed part cannot be verified: an error, not "intact".
        let err = first_break(&recs, &AuditKeys::from_keys(vec![k2.clone()])).unwrap_err();
        assert!(err.to_string().contains("\"k1\""), "{err}");
        // Edit + recompute without the key (as version 1, or keyed with a
        // guessed key under the same id): broken at the edit.
        let mut forged = recs.clone();
        forged[3].body = json!({"n": 99});
        let (v, id, h) = seal(
            None,
            CHAIN_V1,
            &forged[3].prev_hash,
            4,
            forged[3].recorded,
            "read",
            Some("p1"),
            None,
            &canonical_json(&forged[3].body),
        )
        .unwrap();
        (forged[3].version, forged[3].key_id, forged[3].hash) = (v, id, h);
        assert_eq!(first_break(&forged, &ring).unwrap(), Some(4), "downgrade");
        let guess = AuditKey::new("k1", vec![1u8; 32]).unwrap();
        let mut forged = mixed_chain(5, 3, &guess);
        forged[3].body = json!({"n": 4});
        assert_eq!(first_break(&forged, &ring).unwrap(), Some(3));
        // A store without a key refuses to extend a keyed chain.
        assert!(seal(
            None,
            CHAIN_V2,
            GENESIS_HASH,
            6,
            Utc::now(),
            "read",
            None,
            None,
            "{}"
        )
        .is_err());
    }

    #[test]
    fn key_rings_parse_and_never_print_secrets() {
        let hex32 = "ab".repeat(32);
        let ring = AuditKeys::parse(&format!(
            "# old\n2026-01:{hex32}\n\n2026-06:{}  # current\n",
            "cd".repeat(32)
        ))
        .unwrap();
        assert_eq!(ring.current().unwrap().id(), "2026-06");
        assert!(ring.get("2026-01").is_some());
        assert_eq!(format!("{ring:?}"), r#"["2026-01", "2026-06"]"#);
        assert!(!format!("{:?}", ring.current().unwrap()).contains("cdcd"));
        let env = AuditKeys::parse(&format!("a:{hex32},b:{hex32}")).unwrap();
        assert_eq!(env.current().unwrap().id(), "b");
        for bad in [
            String::new(),
            "k1".to_string(),
            format!("k1:{}", "ab".repeat(8)),
            "k1:zz".to_string(),
            format!("bad id:{hex32}"),
            format!("a:{hex32},a:{hex32}"),
        ] {
            let e = AuditKeys::parse(&bad).unwrap_err();
            assert!(!e.contains("abab"), "{e}");
        }
        assert!(AuditKeys::demo().is_demo());
        assert_eq!(AuditKeys::demo().current().unwrap().secret.len(), 32);
    }

    #[test]
    fn patients_are_taken_from_the_column_and_the_entities() {
        let body = json!({"entity": [
            {"what": {"reference": "Patient/p2"}},
            {"what": {"reference": "Task/t1"}},
            {"what": {"reference": "Patient/p1"}},
            {"what": {"reference": "Patient/p3"}}
        ]});
        assert_eq!(patients_of(Some("p1"), &body), vec!["p1", "p2", "p3"]);
        assert!(patients_of(None, &json!({})).is_empty());
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
        assert!(prepare_audits(vec![a.clone()], &AuditKeys::none()).is_err());
        let mut ok = a;
        ok.patient_id = Some("p1".into());
        let p = prepare_audits(vec![ok], &AuditKeys::none()).unwrap();
        assert_eq!(p[0].recorded.timestamp_subsec_nanos() % 1000, 0);
    }
}
