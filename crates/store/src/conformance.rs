//! The store conformance suite: the behaviour every [`Store`] backend must
//! have, written once against the trait so SQLite today and PostgreSQL later
//! run the same checks.
//!
//! Available in this crate's tests and, for other crates and backends,
//! behind the `conformance` feature. The checks panic (they are tests).
//!
//! Every check tags its dedup keys and resource ids with a fresh run tag and
//! measures statistics as deltas, so the suite can run against a database
//! that already holds data — but not concurrently with other writers to the
//! same store (the stats deltas would be off).

mod audit_jcs;
mod audit_keyed;
mod v2;

pub use audit_jcs::audit_jcs_upgrade;
#[cfg(test)]
pub(crate) use audit_jcs::{fixture_key, v2_fixture, V2_FIXTURE};
pub use audit_keyed::audit_tamper_evidence;
pub use v2::{clocks_of_subjects, resources_by_many_ids};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{
    AppendOutcome, InputKind, JournalId, JournalState, NewInput, ResourceWrite, Store, StoreError,
    MAX_DEDUP_KEY_LEN,
};

/// Run every backend-independent check against `store`.
pub async fn run_all(store: Arc<dyn Store>) {
    backend_and_ping(&*store).await;
    append_and_duplicate(&*store).await;
    dedup_is_per_kind(&*store).await;
    key_prefix_lookup(&*store).await;
    journal_round_trip(&*store).await;
    invalid_input_rejected(&*store).await;
    pending_complete_fail_requeue(&*store).await;
    complete_versioning(&*store).await;
    complete_is_idempotent(&*store).await;
    complete_unknown_record(&*store).await;
    complete_invalid_write_changes_nothing(&*store).await;
    history_and_patient_compartment(&*store).await;
    stats_track_states(&*store).await;
    concurrent_duplicates_share_one_id(Arc::clone(&store)).await;
    concurrent_failures_end_a_record_once(Arc::clone(&store)).await;
    v2::run_all(store).await;
}

/// Records appended through one store are all present, pending, after it is
/// dropped and the database opened again. `open` must open the same database
/// each time.
pub async fn durability_across_reopen<F>(open: F)
where
    F: Fn() -> Result<Arc<dyn Store>, StoreError>,
{
    let t = tag();
    let n = 25;
    let mut ids = Vec::new();
    {
        let store = open().expect("first open");
        for i in 0..n {
            let out = store
                .append(input(InputKind::Adt, &format!("{t}|{i}")))
                .await
                .expect("append");
            ids.push(out.id());
        }
        // No complete: simulate a crash between ACK and processing.
    }
    let store = open().expect("reopen");
    for (i, id) in ids.iter().enumerate() {
        let rec = store
            .journal_get(*id)
            .await
            .expect("get")
            .expect("record survives reopen");
        assert_eq!(rec.dedup_key, format!("{t}|{i}"));
        assert_eq!(rec.state, JournalState::Pending);
        assert_eq!(rec.raw, raw_for(&format!("{t}|{i}")));
    }
    let first = ids.first().copied().unwrap_or(0);
    let pending = store
        .journal_pending(first - 1, 10_000)
        .await
        .expect("pending");
    let mine: Vec<JournalId> = pending
        .iter()
        .map(|r| r.id)
        .filter(|id| ids.contains(id))
        .collect();
    assert_eq!(mine, ids, "all appended records pending after reopen");
    // Deduplication survives the reopen too.
    let again = store
        .append(input(InputKind::Adt, &format!("{t}|0")))
        .await
        .expect("append again");
    assert_eq!(again, AppendOutcome::Duplicate(first));
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A tag unique within the process and very likely across runs.
fn tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or(0);
    format!("t{nanos:x}-{n}")
}

/// A FHIR-id-safe tag.
fn id_tag() -> String {
    tag().replace('|', "-")
}

fn raw_for(key: &str) -> Vec<u8> {
    format!("MSH|^~\\&|TEST|{key}\r").into_bytes()
}

fn at_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).expect("valid time")
}

fn input(kind: InputKind, key: &str) -> NewInput {
    NewInput {
        kind,
        source_org: "st-mary".to_string(),
        dedup_key: key.to_string(),
        received_at: at_micros(1_780_000_000_123_456),
        raw: raw_for(key),
        meta: json!({"messageType": "ADT^A01", "controlId": key}),
    }
}

fn write(
    resource_type: &str,
    id: &str,
    patient: Option<&str>,
    body: serde_json::Value,
) -> ResourceWrite {
    ResourceWrite {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        patient_id: patient.map(str::to_string),
        body,
        index: Vec::new(),
    }
}

async fn new_record(store: &dyn Store) -> JournalId {
    match store
        .append(input(InputKind::CaseEvent, &tag()))
        .await
        .expect("append")
    {
        AppendOutcome::Inserted(id) => id,
        other => panic!("fresh key must insert, got {other:?}"),
    }
}

async fn backend_and_ping(store: &dyn Store) {
    assert!(!store.backend().is_empty());
    store.ping().await.expect("ping");
    let m = store.metrics();
    assert_eq!(
        m.commit_seconds_buckets.len(),
        crate::COMMIT_SECONDS_BUCKETS.len()
    );
}

async fn append_and_duplicate(store: &dyn Store) {
    let key = format!("STMARY|{}", tag());
    let before = store.metrics();
    let first = store
        .append(input(InputKind::Adt, &key))
        .await
        .expect("append");
    let AppendOutcome::Inserted(id) = first else {
        panic!("first append must insert, got {first:?}");
    };
    assert!(id > 0);
    // Same key with different bytes: still a duplicate, nothing rewritten.
    let mut again = input(InputKind::Adt, &key);
    again.raw = b"different".to_vec();
    let second = store.append(again).await.expect("append duplicate");
    assert_eq!(second, AppendOutcome::Duplicate(id));
    assert_eq!(second.id(), id);
    let rec = store.journal_get(id).await.expect("get").expect("present");
    assert_eq!(rec.raw, raw_for(&key), "duplicate must not overwrite");
    let after = store.metrics();
    assert!(after.appended_inputs > before.appended_inputs);
    assert!(after.duplicate_inputs > before.duplicate_inputs);
    // Ids grow in insertion order.
    let next = store
        .append(input(InputKind::Adt, &tag()))
        .await
        .expect("append");
    assert!(next.id() > id);
}

async fn dedup_is_per_kind(store: &dyn Store) {
    let key = tag();
    let a = store
        .append(input(InputKind::Adt, &key))
        .await
        .expect("adt");
    let b = store
        .append(input(InputKind::Referral, &key))
        .await
        .expect("referral");
    assert!(matches!(a, AppendOutcome::Inserted(_)));
    assert!(matches!(b, AppendOutcome::Inserted(_)));
    assert_ne!(a.id(), b.id());
}

/// `journal_key_prefix_exists`: other keys of the kind with the prefix and
/// the exact byte length, never the key left out, and only keys journaled
/// before it when it is journaled.
async fn key_prefix_lookup(store: &dyn Store) {
    let t = tag();
    let prefix = format!("FAC|{t}|");
    let hash_a = "a".repeat(64);
    let hash_b = "b".repeat(64);
    let key_a = format!("{prefix}{hash_a}");
    let key_b = format!("{prefix}{hash_b}");
    let len = key_a.len();
    assert!(!store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, len, &key_a)
        .await
        .expect("lookup"));
    store
        .append(input(InputKind::Adt, &key_a))
        .await
        .expect("append a");
    // Only itself so far.
    assert!(!store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, len, &key_a)
        .await
        .expect("lookup"));
    assert!(store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, len, &key_b)
        .await
        .expect("lookup"));
    // Another kind, another length or a longer control id sharing the
    // prefix's bytes does not count.
    assert!(!store
        .journal_key_prefix_exists(InputKind::Referral, &prefix, len, &key_b)
        .await
        .expect("lookup"));
    assert!(!store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, len + 1, &key_b)
        .await
        .expect("lookup"));
    let longer = format!("FAC|{t}|X|{hash_a}");
    store
        .append(input(InputKind::Adt, &longer))
        .await
        .expect("append longer");
    assert!(!store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, len, &key_a)
        .await
        .expect("lookup"));
    // The old key form (no hash) is not matched either.
    store
        .append(input(InputKind::Adt, &format!("FAC|{t}")))
        .await
        .expect("append old form");
    assert!(!store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, len, &key_a)
        .await
        .expect("lookup"));
    store
        .append(input(InputKind::Adt, &key_b))
        .await
        .expect("append b");
    // b reused a's control id; a, journaled first, reused nothing.
    assert!(store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, len, &key_b)
        .await
        .expect("lookup"));
    assert!(!store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, len, &key_a)
        .await
        .expect("lookup"));
    // Degenerate arguments answer false.
    assert!(!store
        .journal_key_prefix_exists(InputKind::Adt, "", len, &key_a)
        .await
        .expect("lookup"));
    assert!(!store
        .journal_key_prefix_exists(InputKind::Adt, &prefix, MAX_DEDUP_KEY_LEN + 1, &key_a)
        .await
        .expect("lookup"));
}

async fn journal_round_trip(store: &dyn Store) {
    let key = tag();
    let mut inp = input(InputKind::FhirWrite, &key);
    inp.raw = vec![0, 1, 2, 255, 0x0b, 0x1c, 0x0d];
    inp.meta = json!({"type": "Task", "nested": {"n": 1, "list": [true, null]}});
    let id = store.append(inp.clone()).await.expect("append").id();
    let rec = store.journal_get(id).await.expect("get").expect("present");
    assert_eq!(rec.id, id);
    assert_eq!(rec.kind, InputKind::FhirWrite);
    assert_eq!(rec.source_org, inp.source_org);
    assert_eq!(rec.dedup_key, key);
    assert_eq!(rec.received_at, inp.received_at);
    assert_eq!(rec.raw, inp.raw);
    assert_eq!(rec.meta, inp.meta);
    assert_eq!(rec.state, JournalState::Pending);
    assert_eq!(rec.processed_at, None);
    assert_eq!(rec.error, None);
    assert!(store.journal_get(i64::MAX).await.expect("get").is_none());
    assert!(store.journal_get(-1).await.expect("get").is_none());
}

async fn invalid_input_rejected(store: &dyn Store) {
    let mut empty_key = input(InputKind::Adt, "");
    empty_key.dedup_key.clear();
    let mut long_key = input(InputKind::Adt, "x");
    long_key.dedup_key = "k".repeat(MAX_DEDUP_KEY_LEN + 1);
    let mut no_source = input(InputKind::Adt, &tag());
    no_source.source_org.clear();
    let mut big_meta = input(InputKind::Adt, &tag());
    big_meta.meta = json!({"blob": "m".repeat(crate::MAX_META_BYTES + 1)});
    for bad in [empty_key, long_key, no_source, big_meta] {
        let err = store.append(bad).await.expect_err("must be rejected");
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }
}

async fn pending_complete_fail_requeue(store: &dyn Store) {
    let a = new_record(store).await;
    let b = new_record(store).await;
    let c = new_record(store).await;
    let mine = |recs: Vec<crate::JournalRecord>| -> Vec<JournalId> {
        recs.into_iter()
            .map(|r| r.id)
            .filter(|id| [a, b, c].contains(id))
            .collect()
    };
    let pending = store.journal_pending(a - 1, 10_000).await.expect("pending");
    assert_eq!(mine(pending), vec![a, b, c]);
    // `after` is exclusive and `limit` bounds the page.
    let page = store.journal_pending(a, 1).await.expect("pending");
    assert_eq!(page.len(), 1);
    assert!(page[0].id > a);
    assert!(store
        .journal_pending(a - 1, 0)
        .await
        .expect("pending")
        .is_empty());

    let pid = format!("p-{}", id_tag());
    store
        .complete(
            a,
            vec![write("Patient", &pid, Some(&pid), json!({"active": true}))],
        )
        .await
        .expect("complete");
    assert!(store.fail(b, "mapping:missing-pid-3").await.expect("fail"));
    // A record that has ended is left as it is: failing it again keeps the
    // first failure's text, and a processed record is not turned into a
    // failure (two instances racing on one record: one of them is told).
    assert!(!store.fail(b, "second-try").await.expect("fail again"));
    assert!(!store.fail(a, "too-late").await.expect("fail processed"));

    let rec_a = store.journal_get(a).await.expect("get").expect("a");
    assert_eq!(rec_a.state, JournalState::Processed);
    assert!(rec_a.processed_at.is_some());
    let rec_b = store.journal_get(b).await.expect("get").expect("b");
    assert_eq!(rec_b.state, JournalState::Failed);
    assert_eq!(rec_b.error.as_deref(), Some("mapping:missing-pid-3"));
    assert!(rec_b.processed_at.is_some());
    let pending = store.journal_pending(a - 1, 10_000).await.expect("pending");
    assert_eq!(mine(pending), vec![c]);

    // Long error text is truncated, not refused.
    assert!(store.fail(c, &"e".repeat(5000)).await.expect("fail long"));
    let rec_c = store.journal_get(c).await.expect("get").expect("c");
    assert_eq!(rec_c.error.map(|e| e.len()), Some(crate::MAX_ERROR_LEN));

    // Unknown ids.
    assert!(matches!(
        store.fail(i64::MAX, "x").await,
        Err(StoreError::NotFound(_))
    ));

    // Requeue puts processed and failed back; pending ones are not counted.
    let d = new_record(store).await;
    assert_eq!(store.requeue(a, d).await.expect("requeue"), 3);
    assert_eq!(store.requeue(a, d).await.expect("requeue again"), 0);
    assert_eq!(store.requeue(d, a).await.expect("empty range"), 0);
    for id in [a, b, c, d] {
        let rec = store.journal_get(id).await.expect("get").expect("present");
        assert_eq!(rec.state, JournalState::Pending, "record {id}");
        assert_eq!(rec.processed_at, None);
        assert_eq!(rec.error, None);
    }
    // Replay with the same writes: resource unchanged.
    let out = store
        .complete(
            a,
            vec![write("Patient", &pid, Some(&pid), json!({"active": true}))],
        )
        .await
        .expect("complete replay");
    assert_eq!(out[0].version_id, 1);
    for id in [b, c, d] {
        assert!(store.fail(id, "test:cleanup").await.expect("fail"));
    }
}

async fn complete_versioning(store: &dyn Store) {
    let id = format!("enc-{}", id_tag());
    let pid = format!("p-{}", id_tag());
    let j1 = new_record(store).await;
    let body =
        json!({"resourceType": "Encounter", "status": "in-progress", "class": {"code": "IMP"}});
    let v1 = store
        .complete(j1, vec![write("Encounter", &id, Some(&pid), body.clone())])
        .await
        .expect("complete 1");
    assert_eq!(v1.len(), 1);
    let v1 = &v1[0];
    assert_eq!(v1.version_id, 1);
    assert_eq!(v1.resource_type, "Encounter");
    assert_eq!(v1.id, id);
    assert_eq!(v1.patient_id.as_deref(), Some(pid.as_str()));
    assert_eq!(v1.body["meta"]["versionId"], "1");
    assert_eq!(v1.body["id"], id.as_str());
    assert_eq!(v1.body["resourceType"], "Encounter");
    assert_eq!(v1.body["status"], "in-progress");
    let last_updated = v1.body["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated");
    let parsed = DateTime::parse_from_rfc3339(last_updated).expect("rfc3339");
    assert_eq!(parsed.with_timezone(&Utc), v1.last_updated);

    // What complete returned is what get returns.
    let got = store
        .resource_get("Encounter", &id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(&got, v1);

    // Unchanged body (even carrying other version meta) keeps the version.
    let j2 = new_record(store).await;
    let mut same = body.clone();
    same["meta"] = json!({"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z"});
    let again = store
        .complete(j2, vec![write("Encounter", &id, Some(&pid), same)])
        .await
        .expect("complete 2");
    assert_eq!(&again[0], v1);
    assert_eq!(
        store
            .resource_history("Encounter", &id)
            .await
            .expect("history")
            .len(),
        1
    );

    // Changed body: version 2, version 1 kept.
    let j3 = new_record(store).await;
    let mut changed = body.clone();
    changed["status"] = json!("finished");
    let v2 = store
        .complete(j3, vec![write("Encounter", &id, Some(&pid), changed)])
        .await
        .expect("complete 3");
    assert_eq!(v2[0].version_id, 2);
    assert_eq!(v2[0].body["meta"]["versionId"], "2");
    assert_eq!(v2[0].body["status"], "finished");
    assert!(v2[0].last_updated >= v1.last_updated);

    // A changed patient link is a change too.
    let j4 = new_record(store).await;
    let mut moved = body.clone();
    moved["status"] = json!("finished");
    let other = format!("p-{}", id_tag());
    let v3 = store
        .complete(j4, vec![write("Encounter", &id, Some(&other), moved)])
        .await
        .expect("complete 4");
    assert_eq!(v3[0].version_id, 3);

    let history = store
        .resource_history("Encounter", &id)
        .await
        .expect("history");
    let versions: Vec<i64> = history.iter().map(|r| r.version_id).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(&history[0], v1);
    assert_eq!(history[0].body["status"], "in-progress");
    assert_eq!(history[2], v3[0]);

    // Several writes in one completion, in order, the same resource twice.
    let j5 = new_record(store).await;
    let t = format!("task-{}", id_tag());
    let out = store
        .complete(
            j5,
            vec![
                write("Task", &t, Some(&pid), json!({"status": "requested"})),
                write("Task", &t, Some(&pid), json!({"status": "accepted"})),
            ],
        )
        .await
        .expect("complete 5");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].version_id, 1);
    assert_eq!(out[1].version_id, 2);
    assert_eq!(out[1].body["status"], "accepted");
}

async fn complete_is_idempotent(store: &dyn Store) {
    let j = new_record(store).await;
    let pid = format!("p-{}", id_tag());
    let writes = vec![
        write("Patient", &pid, Some(&pid), json!({"gender": "female"})),
        write(
            "Consent",
            &format!("c-{}", id_tag()),
            Some(&pid),
            json!({"status": "active"}),
        ),
    ];
    let first = store.complete(j, writes.clone()).await.expect("complete");
    let rec1 = store.journal_get(j).await.expect("get").expect("present");
    let count = store.resource_count(None).await.expect("count");
    let second = store.complete(j, writes).await.expect("complete again");
    assert_eq!(first, second);
    let rec2 = store.journal_get(j).await.expect("get").expect("present");
    assert_eq!(rec2.state, JournalState::Processed);
    assert_eq!(
        rec1.processed_at, rec2.processed_at,
        "processed_at unchanged"
    );
    assert_eq!(store.resource_count(None).await.expect("count"), count);
    for r in &first {
        let h = store
            .resource_history(&r.resource_type, &r.id)
            .await
            .expect("history");
        assert_eq!(h.len(), 1, "{}/{} has one version", r.resource_type, r.id);
    }
}

async fn complete_unknown_record(store: &dyn Store) {
    let id = format!("x-{}", id_tag());
    let err = store
        .complete(i64::MAX, vec![write("Patient", &id, None, json!({}))])
        .await
        .expect_err("unknown record");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(store
        .resource_get("Patient", &id)
        .await
        .expect("get")
        .is_none());
}

async fn complete_invalid_write_changes_nothing(store: &dyn Store) {
    let j = new_record(store).await;
    let good = format!("ok-{}", id_tag());
    let err = store
        .complete(
            j,
            vec![
                write("Patient", &good, None, json!({})),
                write("Patient", "bad/id", None, json!({})),
            ],
        )
        .await
        .expect_err("invalid write");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(store
        .resource_get("Patient", &good)
        .await
        .expect("get")
        .is_none());
    let rec = store.journal_get(j).await.expect("get").expect("present");
    assert_eq!(rec.state, JournalState::Pending);
    let err = store
        .complete(
            j,
            vec![write(
                "Patient",
                &good,
                None,
                json!({"resourceType": "Task"}),
            )],
        )
        .await
        .expect_err("type mismatch");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    store.fail(j, "test:cleanup").await.expect("fail");
}

async fn history_and_patient_compartment(store: &dyn Store) {
    let p = format!("p-{}", id_tag());
    let q = format!("q-{}", id_tag());
    let j = new_record(store).await;
    let enc_a = format!("a-{}", id_tag());
    let enc_b = format!("b-{}", id_tag());
    let sr = format!("sr-{}", id_tag());
    store
        .complete(
            j,
            vec![
                write("Patient", &p, Some(&p), json!({})),
                write("Encounter", &enc_b, Some(&p), json!({"status": "planned"})),
                write("Encounter", &enc_a, Some(&p), json!({"status": "planned"})),
                write("ServiceRequest", &sr, Some(&p), json!({"status": "active"})),
                write("Patient", &q, Some(&q), json!({})),
                write(
                    "Organization",
                    &format!("org-{}", id_tag()),
                    None,
                    json!({}),
                ),
            ],
        )
        .await
        .expect("complete");
    let all = store
        .resources_by_patient(&p, None)
        .await
        .expect("by patient");
    let keys: Vec<(String, String)> = all
        .iter()
        .map(|r| (r.resource_type.clone(), r.id.clone()))
        .collect();
    let mut expected = vec![
        ("Encounter".to_string(), enc_a.clone()),
        ("Encounter".to_string(), enc_b.clone()),
        ("Patient".to_string(), p.clone()),
        ("ServiceRequest".to_string(), sr.clone()),
    ];
    expected.sort();
    assert_eq!(keys, expected, "ordered by (type, id), only this patient");
    let encounters = store
        .resources_by_patient(&p, Some("Encounter"))
        .await
        .expect("by patient and type");
    let ids: Vec<&str> = encounters.iter().map(|r| r.id.as_str()).collect();
    let mut want = vec![enc_a.as_str(), enc_b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert!(store
        .resources_by_patient(&p, Some("Consent"))
        .await
        .expect("none")
        .is_empty());
    // Several types in one call: the same rows as one call per type, ordered
    // by (type, id); a type with nothing adds nothing.
    let some = store
        .resources_by_patient_types(&p, &["ServiceRequest", "Encounter", "Consent"])
        .await
        .expect("by patient and types");
    let keys: Vec<(String, String)> = some
        .iter()
        .map(|r| (r.resource_type.clone(), r.id.clone()))
        .collect();
    let mut want: Vec<(String, String)> = vec![
        ("Encounter".to_string(), enc_a.clone()),
        ("Encounter".to_string(), enc_b.clone()),
        ("ServiceRequest".to_string(), sr.clone()),
    ];
    want.sort();
    assert_eq!(keys, want);
    assert!(store
        .resources_by_patient_types(&p, &[])
        .await
        .expect("no types")
        .is_empty());
    let too_many = ["Encounter"; crate::MAX_TYPES_PER_QUERY + 1];
    assert!(matches!(
        store.resources_by_patient_types(&p, &too_many).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store
        .resources_by_patient("nobody-here", None)
        .await
        .expect("none")
        .is_empty());
    // Unknown resources have no history.
    assert!(store
        .resource_history("Encounter", "does-not-exist")
        .await
        .expect("history")
        .is_empty());
    assert!(store
        .resource_get("Encounter", "../etc")
        .await
        .expect("get")
        .is_none());
}

async fn stats_track_states(store: &dyn Store) {
    let s0 = store.journal_stats().await.expect("stats");
    assert_eq!(s0.total, s0.pending + s0.processed + s0.failed);
    let before_count = store
        .resource_count(Some("Provenance"))
        .await
        .expect("count");
    let a = new_record(store).await;
    let b = new_record(store).await;
    let _c = new_record(store).await;
    let s1 = store.journal_stats().await.expect("stats");
    assert_eq!(s1.total, s0.total + 3);
    assert_eq!(s1.pending, s0.pending + 3);
    store
        .complete(
            a,
            vec![write(
                "Provenance",
                &format!("prov-{}", id_tag()),
                None,
                json!({}),
            )],
        )
        .await
        .expect("complete");
    store.fail(b, "test:x").await.expect("fail");
    let s2 = store.journal_stats().await.expect("stats");
    assert_eq!(s2.total, s0.total + 3);
    assert_eq!(s2.pending, s0.pending + 1);
    assert_eq!(s2.processed, s0.processed + 1);
    assert_eq!(s2.failed, s0.failed + 1);
    assert_eq!(
        store
            .resource_count(Some("Provenance"))
            .await
            .expect("count"),
        before_count + 1
    );
    assert!(store.resource_count(None).await.expect("count") > before_count);
    assert_eq!(
        store
            .resource_count(Some("NoSuchType"))
            .await
            .expect("count"),
        0
    );
}

async fn concurrent_duplicates_share_one_id(store: Arc<dyn Store>) {
    let key = tag();
    let mut handles = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        let key = key.clone();
        handles.push(tokio::spawn(async move {
            store.append(input(InputKind::Adt, &key)).await
        }));
    }
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.await.expect("task").expect("append"));
    }
    let inserted = outcomes
        .iter()
        .filter(|o| matches!(o, AppendOutcome::Inserted(_)))
        .count();
    assert_eq!(inserted, 1, "exactly one insert: {outcomes:?}");
    let id = outcomes[0].id();
    assert!(outcomes.iter().all(|o| o.id() == id));
}

/// Callers racing to fail one record (two instances sharing a journal):
/// exactly one is told it ended the record, and the first text stays.
async fn concurrent_failures_end_a_record_once(store: Arc<dyn Store>) {
    let id = new_record(&*store).await;
    let mut handles = Vec::new();
    for n in 0..16 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            store.fail(id, &format!("race-{n}")).await
        }));
    }
    let mut told = 0;
    for h in handles {
        if h.await.expect("task").expect("fail") {
            told += 1;
        }
    }
    assert_eq!(told, 1, "exactly one caller ended the record");
    let rec = store.journal_get(id).await.expect("get").expect("present");
    assert_eq!(rec.state, JournalState::Failed);
    assert!(rec.error.is_some_and(|e| e.starts_with("race-")));
}
