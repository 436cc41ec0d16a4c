//! Audit chain version 3 (RFC 8785 bodies) on a database that already holds
//! version-2 records (issue 16): old rows keep verifying in their own form,
//! new rows are version 3, and tampering with either is caught.

use std::future::Future;
use std::sync::Arc;

use chrono::DateTime;
use serde_json::{json, Value};

use crate::audit::{
    jcs, keyed_hash_v2, legacy_canonical_json, AuditKey, AuditKeys, AuditRecord, CHAIN_V2,
    CHAIN_V3, GENESIS_HASH,
};
use crate::{NewAudit, Store};

/// The key the fixture was sealed with: id `k1`, 32 bytes of 0x11.
pub(crate) fn fixture_key() -> AuditKey {
    AuditKey::new("k1", vec![0x11; 32]).expect("fixture key")
}

/// Three version-2 records exactly as the store wrote them before
/// version 3 existed: bodies in the legacy canonical form, hashes computed
/// then (and pinned here, not recomputed) under [`fixture_key`]. The
/// first body is the same in both forms (RFC 8785's numbers example); the
/// others are where the legacy form and RFC 8785 differ: key order
/// (U+1F600 against U+FB33), `4.0`, `1e-6` and an integer above 2^53.
pub(crate) const V2_FIXTURE: [(i64, &str, &str); 3] = [
    (
        1_767_607_201_000_001,
        r#"{"entity":[{"what":{"reference":"Patient/p1"}}],"n":1,"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"resourceType":"AuditEvent"}"#,
        "a97ec0a2ad5e31fad321304536c1d4a5ebd3934fdd832adce91423c77019d5ee",
    ),
    (
        1_767_607_202_000_002,
        "{\"entity\":[{\"what\":{\"reference\":\"Patient/p2\"}}],\"keys\":{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\",\"\u{1f600}\":\"Emoji: Grinning Face\"},\"n\":2,\"resourceType\":\"AuditEvent\"}",
        "0c846f47137dd3302fb611e9aec25fe8fcdd4c44a11a19072d2e993ccec6a7de",
    ),
    (
        1_767_607_203_000_003,
        r#"{"big":1e+21,"count":9007199254740993,"n":3,"ratio":4.0,"resourceType":"AuditEvent","small":1e-6}"#,
        "b7f72b942f8c16e511790fb59b245e1e32b60b8ad30396cebf02520076638d76",
    ),
];

/// The fixture as stored records (kind `disclosure`, patient `p1`,
/// recipient `mcp-1`, chained from the genesis hash).
pub(crate) fn v2_fixture() -> Vec<AuditRecord> {
    let mut prev = GENESIS_HASH.to_string();
    let mut out = Vec::new();
    for (n, (micros, body, hash)) in V2_FIXTURE.iter().enumerate() {
        let seq = i64::try_from(n).expect("3 records") + 1;
        let body: Value = serde_json::from_str(body).expect("fixture body");
        out.push(AuditRecord {
            seq,
            recorded: DateTime::from_timestamp_micros(*micros).expect("fixture time"),
            kind: "disclosure".to_string(),
            patient_id: Some("p1".to_string()),
            recipient: Some("mcp-1".to_string()),
            body,
            prev_hash: std::mem::replace(&mut prev, (*hash).to_string()),
            hash: (*hash).to_string(),
            version: CHAIN_V2,
            key_id: Some("k1".to_string()),
        });
    }
    out
}

/// SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The upgrade scenario on one **dedicated, empty** database; `open` and
/// `exec` as for [`super::audit_tamper_evidence`]. The fixture's version-2
/// rows are laid down as the previous release stored them (appended, then
/// body, hashes and version overwritten with the pinned bytes by raw SQL),
/// then the current store verifies and extends them. Panics on failure.
pub async fn audit_jcs_upgrade<O, OF, E, EF>(open: O, exec: E)
where
    O: Fn(AuditKeys) -> OF,
    OF: Future<Output = Arc<dyn Store>>,
    E: Fn(String) -> EF,
    EF: Future<Output = ()>,
{
    let k1 = fixture_key();
    let ring = AuditKeys::from_keys(vec![k1.clone()]);
    let fixture = v2_fixture();
    // The legacy form is still byte-for-byte what the previous release
    // stored and hashed.
    for (r, (_, text, _)) in fixture.iter().zip(V2_FIXTURE) {
        assert_eq!(legacy_canonical_json(&r.body), text, "record {}", r.seq);
        assert_eq!(
            keyed_hash_v2(
                &k1,
                &r.prev_hash,
                r.seq,
                r.recorded,
                &r.kind,
                r.patient_id.as_deref(),
                r.recipient.as_deref(),
                text
            ),
            r.hash,
            "record {}",
            r.seq
        );
    }

    // The version-2 chain as the previous release wrote it.
    let s = open(ring.clone()).await;
    let appended = s
        .audit_append(
            fixture
                .iter()
                .map(|r| NewAudit {
                    recorded: r.recorded,
                    kind: r.kind.clone(),
                    patient_id: r.patient_id.clone(),
                    recipient: r.recipient.clone(),
                    body: r.body.clone(),
                })
                .collect(),
        )
        .await
        .expect("append");
    assert_eq!(appended.len(), 3);
    for (r, (_, text, _)) in fixture.iter().zip(V2_FIXTURE) {
        exec(format!(
            "UPDATE audit SET body = {}, prev_hash = {}, hash = {}, version = 2, key_id = 'k1' WHERE seq = {}",
            lit(text),
            lit(&r.prev_hash),
            lit(&r.hash),
            r.seq
        ))
        .await;
    }
    exec(format!(
        "UPDATE audit_head SET seq = 3, hash = {}, version = 2 WHERE id = 1",
        lit(&fixture[2].hash)
    ))
    .await;
    drop(s);

    // 1. After the upgrade the version-2 chain still verifies, and reads
    //    back as written (the integer above 2^53 exact).
    let s = open(ring.clone()).await;
    assert_eq!(s.audit_verify().await.expect("verify"), None);
    let stored = s.audit_list(0, 100, None, None).await.expect("list");
    assert_eq!(stored, fixture);
    assert_eq!(stored[2].body["count"], json!(9_007_199_254_740_993u64));

    // 2. New records are version 3 and chain onto the version-2 head; the
    //    mixed chain verifies, also from a fresh store.
    let v3 = s
        .audit_append(vec![
            NewAudit {
                recorded: fixture[2].recorded,
                kind: "read".to_string(),
                patient_id: Some("p1".to_string()),
                recipient: None,
                body: fixture[1].body.clone(),
            },
            NewAudit {
                recorded: fixture[2].recorded,
                kind: "read".to_string(),
                patient_id: None,
                recipient: None,
                body: json!({"resourceType": "AuditEvent", "ratio": 4.0, "small": 0.000001}),
            },
        ])
        .await
        .expect("append v3");
    assert!(v3
        .iter()
        .all(|r| r.version == CHAIN_V3 && r.key_id.as_deref() == Some("k1")));
    assert_eq!(v3[0].prev_hash, fixture[2].hash);
    assert_eq!(s.audit_verify().await.expect("verify"), None);
    drop(s);
    let s = open(ring.clone()).await;
    assert_eq!(s.audit_verify().await.expect("verify"), None);
    let all = s.audit_list(0, 100, None, None).await.expect("list");
    assert_eq!(
        all.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![2, 2, 2, 3, 3]
    );
    // What a version-3 row stores is its RFC 8785 body: `4`, `0.000001`,
    // member names in UTF-16 order.
    assert_eq!(
        jcs(&all[4].body).expect("jcs"),
        r#"{"ratio":4,"resourceType":"AuditEvent","small":0.000001}"#
    );

    // 3. Tampering is caught in both parts: a version-2 body edited …
    exec(format!(
        "UPDATE audit SET body = {} WHERE seq = 2",
        lit(&V2_FIXTURE[1].1.replace("\"n\":2", "\"n\":22"))
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), Some(2));
    exec(format!(
        "UPDATE audit SET body = {} WHERE seq = 2",
        lit(V2_FIXTURE[1].1)
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), None);
    // … a version-3 body edited …
    exec(format!(
        "UPDATE audit SET body = {} WHERE seq = 5",
        lit(r#"{"ratio":5,"resourceType":"AuditEvent","small":0.000001}"#)
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), Some(5));
    exec(format!(
        "UPDATE audit SET body = {} WHERE seq = 5",
        lit(&jcs(&all[4].body).expect("jcs"))
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), None);
    // … and a version-3 record relabelled as version 2 (its hash does not
    // match the version-2 form), or re-sealed as version 2 with the key
    // (a version lower than the one before it).
    exec("UPDATE audit SET version = 2 WHERE seq = 5".to_string()).await;
    assert_eq!(s.audit_verify().await.expect("verify"), Some(5));
    let r5 = &all[4];
    let h5 = keyed_hash_v2(
        &k1,
        &r5.prev_hash,
        5,
        r5.recorded,
        &r5.kind,
        None,
        None,
        &legacy_canonical_json(&r5.body),
    );
    exec(format!(
        "UPDATE audit SET hash = {} WHERE seq = 5",
        lit(&h5)
    ))
    .await;
    exec(format!(
        "UPDATE audit_head SET hash = {} WHERE id = 1",
        lit(&h5)
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), Some(5));
}
