//! The audit trail: append-only, chained records of every disclosure,
//! refusal and read.
//!
//! # Chain versions
//!
//! Every record carries its chain version (`version`) and, from version 2,
//! the id of the key that sealed it (`key_id`).
//!
//! **Version 3 (keyed, RFC 8785 body, what new records use):** `hash` is
//! the lowercase hex HMAC-SHA256, under the key named by `key_id`, of
//!
//! ```text
//! "cwsgw-audit-v3" "\n" key_id "\n" prev_hash "\n" seq "\n" recorded "\n" kind "\n" patient_id "\n" recipient "\n" jcs(body)
//! ```
//!
//! where `jcs(body)` is the body in the JSON Canonicalization Scheme of
//! RFC 8785 ([`jcs`]): no whitespace, object members sorted by their names'
//! UTF-16 code units, numbers in ECMAScript (ES6) form, strings with the
//! minimal escapes, UTF-8. The `body` column of a version-3 record holds
//! exactly these bytes, so a verifier in any language can recompute the
//! hash from the row as stored (or re-canonicalise the parsed body with any
//! RFC 8785 implementation and get the same bytes).
//!
//! **Version 2 (keyed, records written before version 3):** the same HMAC
//! with the tag `"cwsgw-audit-v2"` over the *legacy* canonical body
//! ([`legacy_canonical_json`]) instead of `jcs(body)`.
//!
//! **Version 1 (unkeyed, records written before keys existed, or by a store
//! opened without a key while the chain is still unkeyed):** `hash` is the
//! lowercase hex SHA-256 of
//!
//! ```text
//! prev_hash "\n" seq "\n" recorded "\n" kind "\n" patient_id "\n" recipient "\n" legacy_canonical(body)
//! ```
//!
//! In every version `seq` is decimal, `recorded` is RFC 3339 with
//! microseconds and `Z` (`2026-01-05T10:00:01.000001Z`), a missing
//! `patient_id`/`recipient` is the empty string (so both must be non-empty
//! when present), `"\n"` is one 0x0A byte, and `prev_hash` is the previous
//! record's hash (64 zeros for the first record). `seq` starts at 1 and has
//! no gaps. Each row states its version, so old rows keep verifying in
//! their own form after an upgrade: a chain may run version 1, then 2, then
//! 3, but versions never go down along it. Once a record is keyed, every
//! later one is (a store without a key refuses to append to a keyed chain,
//! and the verifier reports a lower version after a higher one as a
//! break), so an attacker without the key cannot append or re-seal records
//! as version 1 after the keyed part.
//!
//! Keys ([`AuditKeys`]) come from outside the database (a key file or the
//! environment, see the gateway's `[audit]` configuration); the last key of
//! the ring seals new records, every key of the ring verifies. A keyed chain
//! cannot be recomputed after an edit without the key; what a keyed chain
//! alone cannot show — its tail deleted and the head moved back, or the
//! whole chain rewritten — is caught against the signed checkpoints of
//! [`crate::audit_checkpoint`], kept outside the database.
//!
//! The legacy canonical body of versions 1 and 2 ([`legacy_canonical_json`],
//! kept to verify those rows and to seal unkeyed version-1 records) is
//! compact JSON with every object's keys sorted by their UTF-8 bytes, at
//! every depth, and serde_json's own string and number formatting (`4.0`,
//! `1e-6`, integers beyond 2^53 exact). It differs from RFC 8785 only in key
//! order (UTF-8 bytes vs UTF-16 code units: names above U+FFFF against
//! names in U+E000..U+FFFF) and in number formatting.
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
/// Chain version of keyed (HMAC-SHA256) records over the legacy canonical
/// body, written before version 3; verified, never written.
pub const CHAIN_V2: i32 = 2;
/// Chain version of keyed (HMAC-SHA256) records over the RFC 8785 (JCS)
/// body: what new keyed records use.
pub const CHAIN_V3: i32 = 3;
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
    /// Chain version: [`CHAIN_V1`] (SHA-256), [`CHAIN_V2`] or [`CHAIN_V3`]
    /// (HMAC).
    pub version: i32,
    /// The key that sealed a keyed (version 2 or 3) record.
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
    /// The canonical body for the version it will be sealed as
    /// ([`canonical_body`]): what is stored and hashed.
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

/// The chain version a record is sealed as: [`CHAIN_V3`] with a key,
/// [`CHAIN_V1`] without.
pub(crate) fn sealing_version(key: Option<&AuditKey>) -> i32 {
    if key.is_some() {
        CHAIN_V3
    } else {
        CHAIN_V1
    }
}

/// Seal one record: `(version, key_id, hash)` for the record after
/// `prev_hash` at `seq`. With a key: version 3. Without: version 1, and
/// only while the head is unkeyed (`head_version` < 2).
/// `canonical_body` must be [`canonical_body`] of that version.
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
            CHAIN_V3,
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
            let key = keys.current().cloned();
            let canonical = canonical_body(sealing_version(key.as_deref()), &a.body)
                .map_err(|_| bad("body has no RFC 8785 form"))?;
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
                key,
            })
        })
        .collect()
}

/// The canonical body of a record of chain `version`: [`jcs`] for
/// version 3, [`legacy_canonical_json`] for versions 1 and 2. `Err` for an
/// unknown version, or a body with no RFC 8785 form.
pub fn canonical_body(version: i32, body: &Value) -> Result<String, StoreError> {
    match version {
        CHAIN_V1 | CHAIN_V2 => Ok(legacy_canonical_json(body)),
        CHAIN_V3 => jcs(body),
        v => Err(StoreError::Invalid(format!(
            "audit chain version {v} is unknown"
        ))),
    }
}

/// The body in the JSON Canonicalization Scheme, RFC 8785 (version 3).
/// `Err` only for a number JSON cannot carry (NaN or infinite, which a
/// `serde_json::Value` never holds); integers beyond 2^53 are rounded to
/// the nearest IEEE 754 double, as RFC 8785 (I-JSON) prescribes.
pub fn jcs(body: &Value) -> Result<String, StoreError> {
    serde_json_canonicalizer::to_string(body)
        .map_err(|e| StoreError::Invalid(format!("audit body has no RFC 8785 form: {e}")))
}

/// The legacy canonical body of versions 1 and 2: compact JSON with object
/// keys sorted by UTF-8 bytes at every depth (see module docs). Kept to
/// verify rows written before version 3 and to seal unkeyed records.
pub fn legacy_canonical_json(v: &Value) -> String {
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

/// The keyed hash of one record, version 3 (see module docs): HMAC under
/// `key` with the tag `cwsgw-audit-v3`; `canonical_body` is [`jcs`] of the
/// body.
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
    tagged_hash(
        b"cwsgw-audit-v3",
        key,
        prev_hash,
        seq,
        recorded,
        kind,
        patient_id,
        recipient,
        canonical_body,
    )
}

/// The keyed hash of a version-2 record (written before version 3; see
/// module docs): tag `cwsgw-audit-v2`, `canonical_body` is
/// [`legacy_canonical_json`] of the body.
#[allow(clippy::too_many_arguments)]
pub fn keyed_hash_v2(
    key: &AuditKey,
    prev_hash: &str,
    seq: i64,
    recorded: DateTime<Utc>,
    kind: &str,
    patient_id: Option<&str>,
    recipient: Option<&str>,
    canonical_body: &str,
) -> String {
    tagged_hash(
        b"cwsgw-audit-v2",
        key,
        prev_hash,
        seq,
        recorded,
        kind,
        patient_id,
        recipient,
        canonical_body,
    )
}

#[allow(clippy::too_many_arguments)]
fn tagged_hash(
    tag: &[u8],
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
        tag,
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
/// Each record is checked in the form of its own version. `Err` when it is
/// sealed with a key the ring does not hold.
pub(crate) fn record_matches(r: &AuditRecord, keys: &AuditKeys) -> Result<bool, StoreError> {
    let hash_of = match (r.version, r.key_id.as_deref()) {
        (CHAIN_V1, None) => None,
        (CHAIN_V2, Some(id)) => Some((keyed_hash_v2 as KeyedHash, id)),
        (CHAIN_V3, Some(id)) => Some((keyed_hash as KeyedHash, id)),
        _ => return Ok(false),
    };
    // A body with no canonical form of its version cannot match anything.
    let Ok(canonical) = canonical_body(r.version, &r.body) else {
        return Ok(false);
    };
    let Some((hash_of, id)) = hash_of else {
        return Ok(chain_hash(
            &r.prev_hash,
            r.seq,
            r.recorded,
            &r.kind,
            r.patient_id.as_deref(),
            r.recipient.as_deref(),
            &canonical,
        ) == r.hash);
    };
    let Some(key) = keys.get(id) else {
        let shown: String = id.chars().take(MAX_KEY_ID_LEN).collect();
        return Err(StoreError::Invalid(format!(
            "audit record {} is sealed with key id {shown:?}, which is not configured; cannot verify",
            r.seq
        )));
    };
    let want = hash_of(
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

/// [`keyed_hash`] or [`keyed_hash_v2`].
type KeyedHash =
    fn(&AuditKey, &str, i64, DateTime<Utc>, &str, Option<&str>, Option<&str>, &str) -> String;

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
            assert_eq!(legacy_canonical_json(&json!(s)), quoted, "{s:?}");
            assert_eq!(
                legacy_canonical_json(&json!({ s: 1 })),
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
            legacy_canonical_json(&v),
            r#"{"a":{"c":null,"z":[{"x":"é\n","y":2}]},"b":1}"#
        );
        assert_eq!(legacy_canonical_json(&json!(1.5)), "1.5");
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
            r.hash = chain_hash(
                &prev,
                seq,
                t,
                "read",
                None,
                None,
                &legacy_canonical_json(&r.body),
            );
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

    /// A chain of `n` records: v1 up to `keyed_from - 1`, then v3 under `key`.
    fn mixed_chain(n: i64, keyed_from: i64, key: &AuditKey) -> Vec<AuditRecord> {
        let t = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let mut prev = GENESIS_HASH.to_string();
        let mut out = Vec::new();
        for seq in 1..=n {
            let body = json!({"n": seq});
            let k = (seq >= keyed_from).then_some(key);
            let canonical = canonical_body(sealing_version(k), &body).unwrap();
            let (version, key_id, hash) = seal(
                k,
                out.last().map_or(CHAIN_V1, |r: &AuditRecord| r.version),
                &prev,
                seq,
                t,
                "read",
                Some("p1"),
                None,
                &canonical,
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
        assert_eq!(recs[2].version, CHAIN_V3);
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
            &legacy_canonical_json(&forged[3].body),
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

    /// RFC 8785 section 3.2.2 (the example, numbers and string escapes)
    /// with its UTF-8 bytes from section 3.2.4, and section 3.2.3 (sorting
    /// by UTF-16 code units).
    #[test]
    fn jcs_canonicalises_the_rfc_8785_examples() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let v: Value = serde_json::from_str(input).unwrap();
        let out = jcs(&v).unwrap();
        assert_eq!(
            out,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        let rfc_bytes = "7b 22 6c 69 74 65 72 61 6c 73 22 3a 5b 6e 75 6c 6c 2c 74 72 \
            75 65 2c 66 61 6c 73 65 5d 2c 22 6e 75 6d 62 65 72 73 22 3a \
            5b 33 33 33 33 33 33 33 33 33 2e 33 33 33 33 33 33 33 2c 31 \
            65 2b 33 30 2c 34 2e 35 2c 30 2e 30 30 32 2c 31 65 2d 32 37 \
            5d 2c 22 73 74 72 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30 \
            30 66 5c 6e 41 27 42 5c 22 5c 5c 5c 5c 5c 22 2f 22 7d";
        let rfc_bytes: Vec<u8> = rfc_bytes
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        assert_eq!(out.as_bytes(), rfc_bytes.as_slice());

        let sorting: Value = serde_json::from_str(
            r#"{
              "\u20ac": "Euro Sign",
              "\r": "Carriage Return",
              "\ufb33": "Hebrew Letter Dalet With Dagesh",
              "1": "One",
              "\ud83d\ude00": "Emoji: Grinning Face",
              "\u0080": "Control",
              "\u00f6": "Latin Small Letter O With Diaeresis"
            }"#,
        )
        .unwrap();
        let out = jcs(&sorting).unwrap();
        let order: Vec<&str> = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh",
        ]
        .into_iter()
        .collect();
        let mut at = 0;
        for name in order {
            let pos = out[at..].find(name).map(|p| p + at);
            assert!(pos.is_some(), "{name} out of order in {out}");
            at = pos.unwrap_or(at);
        }
        // The legacy form sorts by UTF-8 bytes: U+FB33 before U+1F600.
        let legacy = legacy_canonical_json(&sorting);
        assert!(legacy.find("Hebrew") < legacy.find("Emoji"), "{legacy}");
    }

    #[test]
    fn jcs_differs_from_the_legacy_form_in_numbers_only_where_es6_does() {
        let v = json!({"ratio": 4.0, "small": 0.000001, "big": 1e21, "n": 120, "s": "é\u{1f}"});
        assert_eq!(
            legacy_canonical_json(&v),
            r#"{"big":1e+21,"n":120,"ratio":4.0,"s":"é\u001f","small":1e-6}"#
        );
        assert_eq!(
            jcs(&v).unwrap(),
            r#"{"big":1e+21,"n":120,"ratio":4,"s":"é\u001f","small":0.000001}"#
        );
        // I-JSON: integers beyond 2^53 are doubles.
        assert_eq!(
            jcs(&json!(9_007_199_254_740_993u64)).unwrap(),
            "9007199254740992"
        );
        // Canonicalising what was stored gives the stored bytes again.
        let stored = jcs(&v).unwrap();
        let back: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(jcs(&back).unwrap(), stored);
        assert!(canonical_body(4, &v).is_err());
    }

    /// The exact preimage of docs/audit.md, built by hand: what an outside
    /// verifier holding the key computes.
    #[test]
    fn a_v3_hash_is_the_hmac_of_the_documented_preimage() {
        let k = AuditKey::new("k1", vec![0x11; 32]).unwrap();
        let t = DateTime::from_timestamp_micros(1_767_607_201_000_001).unwrap();
        let body =
            json!({"resourceType": "AuditEvent", "ratio": 4.0, "\u{1f600}": 1, "\u{fb33}": 2});
        let canonical = canonical_body(CHAIN_V3, &body).unwrap();
        let (version, key_id, hash) = seal(
            Some(&k),
            CHAIN_V2,
            GENESIS_HASH,
            7,
            t,
            "read",
            Some("p1"),
            None,
            &canonical,
        )
        .unwrap();
        assert_eq!((version, key_id.as_deref()), (CHAIN_V3, Some("k1")));
        let preimage = format!(
            "cwsgw-audit-v3\nk1\n{GENESIS_HASH}\n7\n2026-01-05T10:00:01.000001Z\nread\np1\n\n{}",
            "{\"ratio\":4,\"resourceType\":\"AuditEvent\",\"\u{1f600}\":1,\"\u{fb33}\":2}"
        );
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&[0x11; 32]).unwrap();
        m.update(preimage.as_bytes());
        assert_eq!(hash, hex::encode(m.finalize().into_bytes()));
        // The value docs/audit.md gives, computed by another implementation.
        assert_eq!(
            hash,
            "43547fc6770118038dbf9302cca6b419d5cdc6d1dbca7f116ab7445c9a514abb"
        );
    }

    #[test]
    fn v2_records_written_before_version_3_still_verify() {
        let ring = AuditKeys::from_keys(vec![crate::conformance::fixture_key()]);
        let recs = crate::conformance::v2_fixture();
        for (r, (_, text, _)) in recs.iter().zip(crate::conformance::V2_FIXTURE) {
            assert_eq!(canonical_body(CHAIN_V2, &r.body).unwrap(), text);
            // Record 1 is the same in both forms (the RFC's numbers);
            // records 2 and 3 are not (key order, numbers).
            assert_eq!(jcs(&r.body).unwrap() == text, r.seq == 1, "{}", r.seq);
        }
        assert_eq!(first_break(&recs, &ring).unwrap(), None);
        let mut v = ChainVerifier::new(ring.clone());
        recs.iter()
            .for_each(|r| assert_eq!(v.check(r).unwrap(), None));
        assert_eq!(v.check_head(3, &recs[2].hash), None);
        // Tampering with a version-2 record is still caught.
        let mut edited = recs.clone();
        edited[1].body["n"] = json!(22);
        assert_eq!(first_break(&edited, &ring).unwrap(), Some(2));
        // Relabelled as version 3 (same hash): no longer matches.
        let mut relabelled = recs.clone();
        relabelled[2].version = CHAIN_V3;
        assert_eq!(first_break(&relabelled, &ring).unwrap(), Some(3));
    }

    #[test]
    fn a_v2_chain_extended_with_v3_verifies_and_never_goes_back_to_v2() {
        let k = crate::conformance::fixture_key();
        let ring = AuditKeys::from_keys(vec![k.clone()]);
        let mut recs = crate::conformance::v2_fixture();
        let t = recs[2].recorded;
        for seq in 4..=5 {
            let prev = recs[recs.len() - 1].hash.clone();
            let body = json!({"n": seq, "ratio": 4.0});
            let canonical = canonical_body(CHAIN_V3, &body).unwrap();
            let (version, key_id, hash) = seal(
                Some(&k),
                CHAIN_V2,
                &prev,
                seq,
                t,
                "read",
                None,
                None,
                &canonical,
            )
            .unwrap();
            recs.push(AuditRecord {
                seq,
                recorded: t,
                kind: "read".into(),
                patient_id: None,
                recipient: None,
                body,
                prev_hash: prev,
                hash,
                version,
                key_id,
            });
        }
        assert_eq!(
            recs.iter().map(|r| r.version).collect::<Vec<_>>(),
            vec![2, 2, 2, 3, 3]
        );
        assert_eq!(first_break(&recs, &ring).unwrap(), None);
        // An edited version-3 record is caught.
        let mut edited = recs.clone();
        edited[3].body["ratio"] = json!(4.5);
        assert_eq!(first_break(&edited, &ring).unwrap(), Some(4));
        // A correct version-2 seal after a version-3 record is a downgrade.
        let mut down = recs.clone();
        let r = &down[4];
        let h = keyed_hash_v2(
            &k,
            &r.prev_hash,
            r.seq,
            r.recorded,
            &r.kind,
            None,
            None,
            &legacy_canonical_json(&r.body),
        );
        (down[4].version, down[4].hash) = (CHAIN_V2, h);
        assert_eq!(first_break(&down, &ring).unwrap(), Some(5));
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
