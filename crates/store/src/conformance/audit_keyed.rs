//! The keyed audit chain and its checkpoints against an attacker who can
//! write to the database but holds no key (issue 14, item 8).

use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use serde_json::json;

use crate::audit::{
    chain_hash, jcs, legacy_canonical_json, AuditKey, AuditKeys, CHAIN_V1, CHAIN_V3,
};
use crate::audit_checkpoint::{self, Verdict};
use crate::{NewAudit, Store};

fn record(n: i64, patients: &[&str]) -> NewAudit {
    let entity: Vec<_> = patients
        .iter()
        .map(|p| json!({"what": {"reference": format!("Patient/{p}")}, "role": {"code": "1"}}))
        .collect();
    NewAudit {
        recorded: Utc::now(),
        kind: "disclosure".to_string(),
        patient_id: (patients.len() == 1).then(|| patients[0].to_string()),
        recipient: Some("mcp-1".to_string()),
        body: json!({"resourceType": "AuditEvent", "n": n, "entity": entity}),
    }
}

fn key(id: &str, byte: u8) -> AuditKey {
    AuditKey::new(id, vec![byte; 32]).expect("key")
}

/// SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The whole scenario on one **dedicated, empty** database. `open(keys)`
/// opens a store on it with those audit keys (every call the same
/// database); `exec(sql)` runs one raw SQL statement on it, standing in for
/// someone with write access to the database and no key. Panics on failure.
pub async fn audit_tamper_evidence<O, OF, E, EF>(open: O, exec: E)
where
    O: Fn(AuditKeys) -> OF,
    OF: Future<Output = Arc<dyn Store>>,
    E: Fn(String) -> EF,
    EF: Future<Output = ()>,
{
    let k1 = key("k1", 0x11);
    let k2 = key("k2", 0x22);
    let ring1 = AuditKeys::from_keys(vec![k1.clone()]);
    let ring12 = AuditKeys::from_keys(vec![k1.clone(), k2.clone()]);

    // Records written before keys existed: version 1.
    let legacy = open(AuditKeys::none()).await;
    let v1 = legacy
        .audit_append((1..=3).map(|n| record(n, &["p1"])).collect())
        .await
        .expect("append v1");
    assert!(v1
        .iter()
        .all(|r| r.version == CHAIN_V1 && r.key_id.is_none()));
    drop(legacy);

    // With a key: version 3, sealed with k1; the old rows still verify.
    let s = open(ring1.clone()).await;
    let v2 = s
        .audit_append(vec![
            record(4, &["p1"]),
            record(5, &["p2", "p3"]),
            record(6, &["p3"]),
        ])
        .await
        .expect("append v2");
    assert!(v2
        .iter()
        .all(|r| r.version == CHAIN_V3 && r.key_id.as_deref() == Some("k1")));
    assert_eq!(s.audit_verify().await.expect("verify"), None);
    assert_eq!(s.audit_head().await.expect("head"), (6, v2[2].hash.clone()));
    // One record naming several patients is found under each of them.
    let seqs = |rs: Vec<crate::AuditRecord>| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(s.audit_list(0, 100, Some("p3"), None).await.expect("list")),
        vec![5, 6]
    );
    assert_eq!(
        seqs(
            s.audit_list(0, 100, Some("p2"), Some("mcp-1"))
                .await
                .expect("list")
        ),
        vec![5]
    );
    assert_eq!(
        seqs(s.audit_list(4, 100, Some("p1"), None).await.expect("list")),
        Vec::<i64>::new()
    );

    // A store without the key neither extends the keyed chain nor calls it
    // intact.
    let keyless = open(AuditKeys::none()).await;
    keyless
        .audit_append(vec![record(7, &["p1"])])
        .await
        .expect_err("no key, keyed chain");
    let err = keyless.audit_verify().await.expect_err("cannot verify");
    assert!(err.to_string().contains("\"k1\""), "{err}");
    drop(keyless);

    // A checkpoint of the head verifies.
    let cp6 = audit_checkpoint::take(&*s, &ring1, None, Utc::now())
        .await
        .expect("take")
        .expect("a key, a head");
    assert_eq!((cp6.seq, cp6.key_id.as_str()), (6, "k1"));
    assert!(audit_checkpoint::take(&*s, &ring1, Some(6), Utc::now())
        .await
        .expect("take")
        .is_none());
    assert_eq!(
        audit_checkpoint::check(&*s, Some(&cp6))
            .await
            .expect("check"),
        Verdict::Intact {
            head_seq: 6,
            checkpoint_seq: Some(6)
        }
    );
    drop(s);

    // Rotation: k2 becomes current, k1 stays for verification.
    let s = open(ring12.clone()).await;
    let r7 = s
        .audit_append(vec![record(7, &["p1"]), record(8, &["p2"])])
        .await
        .expect("append k2");
    assert!(r7.iter().all(|r| r.key_id.as_deref() == Some("k2")));
    assert_eq!(s.audit_verify().await.expect("verify"), None);
    let cp8 = audit_checkpoint::take(&*s, &ring12, None, Utc::now())
        .await
        .expect("take")
        .expect("checkpoint");
    assert_eq!((cp8.seq, cp8.key_id.as_str()), (8, "k2"));
    assert!(cp8.verify(&ring12) && !cp8.verify(&ring1));
    assert!(matches!(
        audit_checkpoint::check(&*s, Some(&cp8))
            .await
            .expect("check"),
        Verdict::Intact { head_seq: 8, .. }
    ));
    let all = s.audit_list(0, 100, None, None).await.expect("all");
    assert_eq!(all.len(), 8);

    // 1. An edited keyed record cannot be re-sealed without the key.
    exec(format!(
        "UPDATE audit SET body = {} WHERE seq = 5",
        lit(r#"{"n":55,"resourceType":"AuditEvent"}"#)
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), Some(5));
    exec(format!(
        "UPDATE audit SET body = {} WHERE seq = 5",
        lit(&jcs(&all[4].body).expect("jcs"))
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), None);

    // 2. Truncation: the last two records deleted and the head moved back.
    //    The shorter chain is a valid chain; the checkpoint catches it.
    exec("DELETE FROM audit WHERE seq > 6".to_string()).await;
    exec("DELETE FROM audit_patients WHERE seq > 6".to_string()).await;
    exec(format!(
        "UPDATE audit_head SET seq = 6, hash = {}, version = 3 WHERE id = 1",
        lit(&all[5].hash)
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), None);
    assert_eq!(
        audit_checkpoint::check(&*s, Some(&cp8))
            .await
            .expect("check"),
        Verdict::Truncated {
            head_seq: 6,
            checkpoint_seq: 8
        }
    );
    assert!(matches!(
        audit_checkpoint::check(&*s, Some(&cp6))
            .await
            .expect("check"),
        Verdict::Intact { head_seq: 6, .. }
    ));

    // 3. Recompute after edit: record 2 edited and every later record
    //    re-chained as unkeyed version 1 (all an attacker without the key
    //    can compute). A valid unkeyed chain again — the checkpoint's hash
    //    at seq 6 no longer matches.
    let mut prev = all[0].hash.clone();
    for r in all.iter().take(6).skip(1) {
        let mut body = r.body.clone();
        if r.seq == 2 {
            body["n"] = json!(222);
        }
        let canonical = legacy_canonical_json(&body);
        let hash = chain_hash(
            &prev,
            r.seq,
            r.recorded,
            &r.kind,
            r.patient_id.as_deref(),
            r.recipient.as_deref(),
            &canonical,
        );
        exec(format!(
            "UPDATE audit SET body = {}, prev_hash = {}, hash = {}, version = 1, key_id = NULL WHERE seq = {}",
            lit(&canonical),
            lit(&prev),
            lit(&hash),
            r.seq
        ))
        .await;
        prev = hash;
    }
    exec(format!(
        "UPDATE audit_head SET hash = {}, version = 1 WHERE id = 1",
        lit(&prev)
    ))
    .await;
    assert_eq!(
        s.audit_verify().await.expect("verify"),
        None,
        "a rewritten unkeyed chain is a chain"
    );
    assert_eq!(
        audit_checkpoint::check(&*s, Some(&cp6))
            .await
            .expect("check"),
        Verdict::Rewritten { seq: 6 }
    );
    assert_eq!(
        audit_checkpoint::check(&*s, None).await.expect("check"),
        Verdict::Intact {
            head_seq: 6,
            checkpoint_seq: None
        },
        "without a checkpoint the rewrite is invisible"
    );

    // 4. A version-1 record after a keyed one is a break even when every
    //    link matches: record 2 sealed with k1, record 3 re-chained to it
    //    unkeyed.
    let now = s.audit_list(0, 3, None, None).await.expect("list");
    let (r2, r3) = (&now[1], &now[2]);
    let c2 = jcs(&r2.body).expect("jcs");
    let h2 = crate::audit::keyed_hash(
        &k1,
        &r2.prev_hash,
        2,
        r2.recorded,
        &r2.kind,
        r2.patient_id.as_deref(),
        r2.recipient.as_deref(),
        &c2,
    );
    let c3 = legacy_canonical_json(&r3.body);
    let h3 = chain_hash(
        &h2,
        3,
        r3.recorded,
        &r3.kind,
        r3.patient_id.as_deref(),
        r3.recipient.as_deref(),
        &c3,
    );
    exec(format!(
        "UPDATE audit SET version = 3, key_id = 'k1', hash = {} WHERE seq = 2",
        lit(&h2)
    ))
    .await;
    exec(format!(
        "UPDATE audit SET prev_hash = {}, hash = {} WHERE seq = 3",
        lit(&h2),
        lit(&h3)
    ))
    .await;
    assert_eq!(s.audit_verify().await.expect("verify"), Some(3));
}
