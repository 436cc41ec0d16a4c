//! Conformance sub-suites for search, `put_resources`, `complete_with`, the
//! outbox, the audit chain, the `jti` cache and deadline clocks.
//!
//! Same rules as the parent suite: fresh tags per check, deltas only, no
//! assumption that the database is empty. Every outbox check finishes or
//! drops the rows it created, so no Pending row is left behind (the
//! `outbox_next_due` check relies on that), and every `not_before` the
//! suite writes outside that check is later than 2020.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::{at_micros, id_tag, new_record, tag, write};
use crate::audit::{chain_hash, legacy_canonical_json, GENESIS_HASH};
use crate::{
    ClockRow, Cmp, Completion, DeliveryOutcome, DeliveryState, JournalState, NewAudit, NewDelivery,
    OutboxId, ResourceQuery, ResourceWrite, SearchToken, Store, StoreError,
};

/// Run every v2 sub-suite.
pub(super) async fn run_all(store: Arc<dyn Store>) {
    search_filters(&*store).await;
    search_keyset_paging_is_stable(&*store).await;
    search_limit_is_capped(&*store).await;
    search_and_get_with_context(&*store).await;
    put_resources_versions(&*store).await;
    complete_with_is_atomic_and_idempotent(&*store).await;
    outbox_lifecycle(&*store).await;
    outbox_next_due_follows_heads(&*store).await;
    audit_chain(&*store).await;
    audit_concurrent_appends(Arc::clone(&store)).await;
    jti_cache(&*store).await;
    clocks(&*store).await;
    clocks_of_subjects(&*store).await;
    resources_by_many_ids(&*store).await;
}

/// Now, truncated to the stored precision.
fn now() -> DateTime<Utc> {
    at_micros(Utc::now().timestamp_micros())
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn indexed(
    resource_type: &str,
    id: &str,
    patient: Option<&str>,
    body: serde_json::Value,
    tokens: &[(&str, &str)],
) -> ResourceWrite {
    let mut w = write(resource_type, id, patient, body);
    w.index = tokens
        .iter()
        .map(|(p, v)| SearchToken::new(*p, *v))
        .collect();
    w
}

fn query(resource_type: &str, params: &[(&str, &[&str])]) -> ResourceQuery {
    ResourceQuery {
        resource_type: resource_type.to_string(),
        params: params
            .iter()
            .map(|(p, vs)| (p.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect(),
        limit: 100,
        ..ResourceQuery::default()
    }
}

async fn ids_of(store: &dyn Store, q: &ResourceQuery) -> Vec<String> {
    store
        .resource_search(q)
        .await
        .expect("search")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// `resource_search_with_context` / `resource_get_with_context` answer what
/// `resource_search` / `resource_get` and `resources_by_patient_types` answer
/// separately; the context is the patient's, of the asked types only; and it
/// is re-read on every call (a Consent changed in between is seen).
async fn search_and_get_with_context(store: &dyn Store) {
    let t = id_tag();
    let (p, other) = (format!("p-{t}"), format!("o-{t}"));
    let patient_token = format!("Patient/{p}");
    let (task, consent, sr, enc) = (
        format!("t-{t}"),
        format!("c-{t}"),
        format!("s-{t}"),
        format!("e-{t}"),
    );
    store
        .put_resources(vec![
            indexed(
                "Task",
                &task,
                Some(&p),
                json!({"status": "requested"}),
                &[("patient", &patient_token), ("status", "requested")],
            ),
            indexed(
                "Consent",
                &consent,
                Some(&p),
                json!({"status": "active"}),
                &[],
            ),
            indexed("ServiceRequest", &sr, Some(&p), json!({}), &[]),
            indexed("Encounter", &enc, Some(&p), json!({}), &[]),
            indexed("Consent", &format!("x-{t}"), Some(&other), json!({}), &[]),
        ])
        .await
        .expect("put");
    let types = ["Consent", "ServiceRequest", "Task"];
    let q = query(
        "Task",
        &[("patient", &[&patient_token]), ("status", &["requested"])],
    );
    let got = store
        .resource_search_with_context(&q, &p, &types)
        .await
        .expect("search with context");
    assert_eq!(got.found, store.resource_search(&q).await.expect("search"));
    assert_eq!(got.found.len(), 1);
    let alone = store
        .resources_by_patient_types(&p, &types)
        .await
        .expect("by types");
    assert_eq!(got.context, alone);
    let keys: Vec<(&str, &str)> = got
        .context
        .iter()
        .map(|r| (r.resource_type.as_str(), r.id.as_str()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("Consent", consent.as_str()),
            ("ServiceRequest", sr.as_str()),
            ("Task", task.as_str())
        ]
    );
    // Nothing matched: no context.
    let none = query(
        "Task",
        &[("patient", &[&patient_token]), ("status", &["completed"])],
    );
    let got_none = store
        .resource_search_with_context(&none, &p, &types)
        .await
        .expect("search with context");
    assert!(got_none.found.is_empty() && got_none.context.is_empty());
    // Read by id: the context of the resource's patient.
    let read = store
        .resource_get_with_context("Task", &task, &types)
        .await
        .expect("get with context");
    assert_eq!(
        read.found,
        store.resource_get("Task", &task).await.expect("get")
    );
    assert_eq!(read.context, alone);
    let missing = store
        .resource_get_with_context("Task", &format!("nope-{t}"), &types)
        .await
        .expect("get with context");
    assert!(missing.found.is_none() && missing.context.is_empty());
    // A Consent changed between two calls is seen by the second.
    store
        .put_resources(vec![indexed(
            "Consent",
            &consent,
            Some(&p),
            json!({"status": "inactive"}),
            &[],
        )])
        .await
        .expect("withdraw");
    let again = store
        .resource_search_with_context(&q, &p, &types)
        .await
        .expect("search with context");
    let c = again
        .context
        .iter()
        .find(|r| r.resource_type == "Consent")
        .expect("consent");
    assert_eq!(c.body["status"], "inactive");
    assert_eq!(c.version_id, 2);
    let reread = store
        .resource_get_with_context("Task", &task, &types)
        .await
        .expect("get with context");
    assert_eq!(reread.context, again.context);
    // Too many context types are refused like resources_by_patient_types.
    let too_many = ["Encounter"; crate::MAX_TYPES_PER_QUERY + 1];
    assert!(matches!(
        store.resource_search_with_context(&q, &p, &too_many).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .resource_get_with_context("Task", &task, &too_many)
            .await,
        Err(StoreError::Invalid(_))
    ));
}

async fn search_filters(store: &dyn Store) {
    let t = id_tag();
    let (a, b, c, d) = (
        format!("a-{t}"),
        format!("b-{t}"),
        format!("c-{t}"),
        format!("d-{t}"),
    );
    let (p1, p2) = (format!("p1-{t}"), format!("p2-{t}"));
    let (ident_a, ident_b) = (format!("sys|A-{t}"), format!("sys|B-{t}"));
    let stored = store
        .put_resources(vec![
            indexed(
                "Task",
                &a,
                Some(&p1),
                json!({"status": "requested"}),
                &[
                    ("tag", &t),
                    ("status", "requested"),
                    ("identifier", &ident_a),
                ],
            ),
            indexed(
                "Task",
                &b,
                Some(&p1),
                json!({"status": "accepted"}),
                &[
                    ("tag", &t),
                    ("status", "accepted"),
                    ("identifier", &ident_b),
                ],
            ),
            indexed(
                "Task",
                &c,
                Some(&p2),
                json!({"status": "requested"}),
                // Duplicate tokens are harmless.
                &[
                    ("tag", &t),
                    ("status", "requested"),
                    ("status", "requested"),
                ],
            ),
            indexed("ServiceRequest", &d, Some(&p1), json!({}), &[("tag", &t)]),
        ])
        .await
        .expect("put");
    assert_eq!(stored.len(), 4);
    assert!(
        stored
            .windows(2)
            .all(|w| w[0].last_updated < w[1].last_updated),
        "stamps strictly increase within one batch"
    );
    let lu: Vec<DateTime<Utc>> = stored.iter().map(|r| r.last_updated).collect();
    let tag_only = query("Task", &[("tag", &[&t])]);
    assert_eq!(
        ids_of(store, &tag_only).await,
        vec![a.clone(), b.clone(), c.clone()]
    );
    // The search returns full stored resources.
    let found = store.resource_search(&tag_only).await.expect("search");
    assert_eq!(found[0], stored[0]);

    // OR within a parameter, AND across parameters.
    let q = query("Task", &[("tag", &[&t]), ("status", &["requested"])]);
    assert_eq!(ids_of(store, &q).await, vec![a.clone(), c.clone()]);
    let q = query(
        "Task",
        &[("tag", &[&t]), ("status", &["requested", "accepted"])],
    );
    assert_eq!(
        ids_of(store, &q).await,
        vec![a.clone(), b.clone(), c.clone()]
    );
    let q = query(
        "Task",
        &[("status", &["requested"]), ("identifier", &[&ident_a])],
    );
    assert_eq!(ids_of(store, &q).await, vec![a.clone()]);
    let q = query(
        "Task",
        &[("status", &["accepted"]), ("identifier", &[&ident_a])],
    );
    assert!(ids_of(store, &q).await.is_empty());
    let q = query("Task", &[("tag", &[&t]), ("status", &["no-such-status"])]);
    assert!(ids_of(store, &q).await.is_empty());
    let q = query("Task", &[("tag", &[&t]), ("status", &[])]);
    assert!(
        ids_of(store, &q).await.is_empty(),
        "no values match nothing"
    );
    // Exact match only: a prefix or other case is no match.
    let q = query("Task", &[("identifier", &[&ident_a[..ident_a.len() - 1]])]);
    assert!(ids_of(store, &q).await.is_empty());

    // _id
    let mut q = query("Task", &[("tag", &[&t])]);
    q.ids = vec![b.clone(), c.clone(), "not-there".to_string()];
    assert_eq!(ids_of(store, &q).await, vec![b.clone(), c.clone()]);
    let mut q = query("Task", &[]);
    q.ids = vec![b.clone()];
    assert_eq!(ids_of(store, &q).await, vec![b.clone()]);
    q.ids = vec!["bad/id".to_string()];
    assert!(ids_of(store, &q).await.is_empty());

    // Patient compartment.
    let mut q = query("Task", &[("tag", &[&t])]);
    q.patient_id = Some(p1.clone());
    assert_eq!(ids_of(store, &q).await, vec![a.clone(), b.clone()]);

    // _lastUpdated: all comparisons must hold.
    let mut q = query("Task", &[("tag", &[&t])]);
    q.last_updated = vec![(Cmp::Ge, lu[0]), (Cmp::Lt, lu[2])];
    assert_eq!(ids_of(store, &q).await, vec![a.clone(), b.clone()]);
    q.last_updated = vec![(Cmp::Gt, lu[0])];
    assert_eq!(ids_of(store, &q).await, vec![b.clone(), c.clone()]);
    q.last_updated = vec![(Cmp::Le, lu[0])];
    assert_eq!(ids_of(store, &q).await, vec![a.clone()]);
    q.last_updated = vec![(Cmp::Gt, lu[2]), (Cmp::Lt, lu[0])];
    assert!(ids_of(store, &q).await.is_empty());

    // Type scoping.
    let q = query("ServiceRequest", &[("tag", &[&t])]);
    assert_eq!(ids_of(store, &q).await, vec![d.clone()]);

    // Limit.
    let mut q = query("Task", &[("tag", &[&t])]);
    q.limit = 2;
    assert_eq!(ids_of(store, &q).await, vec![a.clone(), b.clone()]);
    q.limit = 0;
    assert!(ids_of(store, &q).await.is_empty());

    // The index follows the latest write: a changed resource is re-indexed
    // and moves to the end of the (last_updated, id) order.
    let v2 = store
        .put_resources(vec![indexed(
            "Task",
            &a,
            Some(&p1),
            json!({"status": "completed"}),
            &[("tag", &t), ("status", "completed")],
        )])
        .await
        .expect("put");
    assert_eq!(v2[0].version_id, 2);
    let q = query("Task", &[("tag", &[&t]), ("status", &["requested"])]);
    assert_eq!(ids_of(store, &q).await, vec![c.clone()]);
    let q = query("Task", &[("status", &["completed"]), ("tag", &[&t])]);
    assert_eq!(ids_of(store, &q).await, vec![a.clone()]);
    assert_eq!(
        ids_of(store, &tag_only).await,
        vec![b.clone(), c.clone(), a.clone()]
    );
    // An unchanged body keeps its version but still replaces the tokens.
    let same = store
        .put_resources(vec![indexed(
            "Task",
            &a,
            Some(&p1),
            json!({"status": "completed"}),
            &[("tag", &t)],
        )])
        .await
        .expect("put");
    assert_eq!(same[0], v2[0]);
    let q = query("Task", &[("status", &["completed"]), ("tag", &[&t])]);
    assert!(ids_of(store, &q).await.is_empty());

    // Invalid queries are refused without touching the database.
    let mut bad = query("task", &[]);
    assert!(matches!(
        store.resource_search(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    bad.resource_type = "Task".to_string();
    bad.params = vec![("".to_string(), vec!["x".to_string()])];
    assert!(matches!(
        store.resource_search(&bad).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn search_keyset_paging_is_stable(store: &dyn Store) {
    let t = id_tag();
    let batch = |range: std::ops::Range<usize>| -> Vec<ResourceWrite> {
        range
            .map(|i| {
                indexed(
                    "Encounter",
                    &format!("e{i:02}-{t}"),
                    None,
                    json!({"n": i}),
                    &[("tag", &t)],
                )
            })
            .collect()
    };
    let first = store.put_resources(batch(0..5)).await.expect("put");
    let mut expected: Vec<String> = first.iter().map(|r| r.id.clone()).collect();
    let mut q = query("Encounter", &[("tag", &[&t])]);
    q.limit = 2;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.resource_search(&q).await.expect("page");
        pages += 1;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        q.after = Some((last.last_updated, last.id.clone()));
        seen.extend(page.iter().map(|r| r.id.clone()));
        if pages == 1 {
            // Inserts between pages sort after the cursor.
            let more = store.put_resources(batch(5..8)).await.expect("put");
            expected.extend(more.iter().map(|r| r.id.clone()));
        }
        if pages == 3 {
            let more = store.put_resources(batch(8..9)).await.expect("put");
            expected.extend(more.iter().map(|r| r.id.clone()));
        }
        assert!(pages < 20, "paging terminates");
    }
    assert_eq!(seen, expected, "every row exactly once, in insertion order");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 9);
}

async fn search_limit_is_capped(store: &dyn Store) {
    let t = id_tag();
    let make = |i: usize| {
        indexed(
            "Observation",
            &format!("o{i}-{t}"),
            None,
            json!({"status": "final"}),
            &[("tag", &t)],
        )
    };
    store
        .put_resources((0..crate::MAX_WRITES_PER_COMPLETE).map(make).collect())
        .await
        .expect("put many");
    store
        .put_resources(vec![make(crate::MAX_WRITES_PER_COMPLETE)])
        .await
        .expect("put one more");
    let mut q = query("Observation", &[("tag", &[&t])]);
    q.limit = 5000;
    let page = store.resource_search(&q).await.expect("search");
    assert_eq!(page.len(), crate::search::MAX_SEARCH_PAGE);
    let last = page.last().expect("non-empty");
    q.after = Some((last.last_updated, last.id.clone()));
    let rest = store.resource_search(&q).await.expect("search");
    assert_eq!(rest.len(), crate::MAX_WRITES_PER_COMPLETE + 1 - 1000);
}

async fn put_resources_versions(store: &dyn Store) {
    let stats = store.journal_stats().await.expect("stats");
    let id = format!("cp-{}", id_tag());
    let pid = format!("p-{}", id_tag());
    let v1 = store
        .put_resources(vec![write(
            "CarePlan",
            &id,
            Some(&pid),
            json!({"status": "draft"}),
        )])
        .await
        .expect("put");
    assert_eq!(v1[0].version_id, 1);
    assert_eq!(v1[0].body["meta"]["versionId"], "1");
    let same = store
        .put_resources(vec![write(
            "CarePlan",
            &id,
            Some(&pid),
            json!({"status": "draft", "meta": {"versionId": "7"}}),
        )])
        .await
        .expect("put same");
    assert_eq!(same, v1);
    let v2 = store
        .put_resources(vec![write(
            "CarePlan",
            &id,
            Some(&pid),
            json!({"status": "active"}),
        )])
        .await
        .expect("put changed");
    assert_eq!(v2[0].version_id, 2);
    assert!(v2[0].last_updated > v1[0].last_updated);
    let history = store
        .resource_history("CarePlan", &id)
        .await
        .expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0], v1[0]);
    assert_eq!(history[1], v2[0]);
    assert_eq!(
        store.journal_stats().await.expect("stats"),
        stats,
        "no journal change"
    );
    // All or nothing: one invalid write stores none.
    let other = format!("cp-{}", id_tag());
    let err = store
        .put_resources(vec![
            write("CarePlan", &other, None, json!({})),
            write("CarePlan", "bad/id", None, json!({})),
        ])
        .await
        .expect_err("invalid");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(store
        .resource_get("CarePlan", &other)
        .await
        .expect("get")
        .is_none());
    assert!(store
        .put_resources(Vec::new())
        .await
        .expect("empty")
        .is_empty());
}

fn delivery(endpoint: &str, key: &str, not_before: DateTime<Utc>) -> NewDelivery {
    NewDelivery {
        endpoint: endpoint.to_string(),
        ordering_key: key.to_string(),
        kind: "transaction".to_string(),
        payload: json!({"refs": [format!("Patient/{key}")], "purpose": "TREAT"}),
        not_before,
        journal_id: None,
    }
}

fn audit(kind: &str, patient: Option<&str>, recipient: Option<&str>, n: i64) -> NewAudit {
    NewAudit {
        recorded: at_micros(1_780_000_000_000_000 + n),
        kind: kind.to_string(),
        patient_id: patient.map(str::to_string),
        recipient: recipient.map(str::to_string),
        body: json!({"resourceType": "AuditEvent", "type": {"code": kind}, "n": n, "a": [2, 1]}),
    }
}

/// Claim everything of `endpoint` that is claimable far in the future and
/// mark it delivered, so no Pending row of this check is left.
async fn drain(store: &dyn Store, endpoint: &str) {
    let far = now() + TimeDelta::days(3650);
    loop {
        let got = store
            .outbox_claim("drain", Some(endpoint), far, Duration::from_secs(60), 100)
            .await
            .expect("claim");
        if got.is_empty() {
            break;
        }
        for d in got {
            store
                .outbox_finish(d.id, "drain", DeliveryOutcome::Delivered)
                .await
                .expect("finish");
        }
    }
    let left = store
        .outbox_list(Some(DeliveryState::Pending), Some(endpoint), 10)
        .await
        .expect("list");
    assert!(left.is_empty(), "drained");
}

async fn complete_with_is_atomic_and_idempotent(store: &dyn Store) {
    let t = id_tag();
    let endpoint = format!("mcp-{t}");
    let pid = format!("p-{t}");
    let task = format!("task-{t}");
    let clock_id = format!("clk-{t}");
    let subject = format!("Task/{task}");
    let start = now();
    let j = new_record(store).await;
    let clock = ClockRow {
        id: clock_id.clone(),
        kind: "authorization-decision".to_string(),
        subject: subject.clone(),
        patient_id: Some(pid.clone()),
        started_at: start,
        due_at: start + TimeDelta::days(5),
        state: "open".to_string(),
        closed_at: None,
    };
    let c = Completion {
        writes: vec![
            write("Patient", &pid, Some(&pid), json!({"active": true})),
            indexed(
                "Task",
                &task,
                Some(&pid),
                json!({"status": "requested"}),
                &[("status", "requested")],
            ),
        ],
        deliveries: vec![delivery(&endpoint, &pid, start - secs(60))],
        audits: vec![audit("disclosure", Some(&pid), Some(&endpoint), 1)],
        clocks: vec![clock.clone()],
    };
    let r1 = store.complete_with(j, c.clone()).await.expect("complete");
    assert!(!r1.already_processed);
    assert_eq!(r1.resources.len(), 2);
    assert_eq!(r1.resources[1].version_id, 1);
    assert_eq!(r1.deliveries.len(), 1);
    let d = store
        .outbox_get(r1.deliveries[0])
        .await
        .expect("get")
        .expect("queued");
    assert_eq!(d.journal_id, Some(j), "journal id filled in");
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.endpoint, endpoint);
    let audits = store
        .audit_list(0, 1000, Some(&pid), None)
        .await
        .expect("audits");
    assert_eq!(audits.len(), 1);
    let clocks = store
        .clock_list(false, None, Some(&subject), 10)
        .await
        .expect("clocks");
    assert_eq!(clocks, vec![clock.clone()]);
    let rec = store.journal_get(j).await.expect("get").expect("present");
    assert_eq!(rec.state, JournalState::Processed);
    let mut q = query("Task", &[("status", &["requested"])]);
    q.ids = vec![task.clone()];
    assert_eq!(ids_of(store, &q).await, vec![task.clone()]);

    // Seen twice, with an older/different translation: nothing changes.
    let mut older = c.clone();
    older.writes[1].body = json!({"status": "draft"});
    older.clocks[0].state = "met".to_string();
    older.clocks[0].closed_at = Some(start);
    older.audits.push(audit("read", Some(&pid), None, 2));
    let r2 = store.complete_with(j, older).await.expect("again");
    assert!(r2.already_processed);
    assert_eq!(r2.resources, r1.resources, "current versions returned");
    assert_eq!(r2.deliveries, r1.deliveries);
    let list = store
        .outbox_list(None, Some(&endpoint), 100)
        .await
        .expect("list");
    assert_eq!(list.len(), 1, "no second delivery");
    assert_eq!(
        store
            .audit_list(0, 1000, Some(&pid), None)
            .await
            .expect("audits")
            .len(),
        1,
        "no second audit"
    );
    assert_eq!(
        store
            .clock_list(false, None, Some(&subject), 10)
            .await
            .expect("clocks"),
        vec![clock.clone()]
    );
    let rec2 = store.journal_get(j).await.expect("get").expect("present");
    assert_eq!(rec2.processed_at, rec.processed_at);
    assert_eq!(
        store
            .resource_history("Task", &task)
            .await
            .expect("history")
            .len(),
        1
    );
    // The plain `complete` is the same no-op.
    let again = store
        .complete(
            j,
            vec![write("Task", &task, Some(&pid), json!({"status": "x"}))],
        )
        .await
        .expect("complete again");
    assert_eq!(again, vec![r1.resources[1].clone()]);

    // Atomicity: an invalid part writes nothing.
    let j2 = new_record(store).await;
    let other = format!("task2-{t}");
    let mut bad = Completion {
        writes: vec![write("Task", &other, None, json!({}))],
        deliveries: vec![delivery("", &pid, start)],
        ..Completion::default()
    };
    let err = store
        .complete_with(j2, bad.clone())
        .await
        .expect_err("invalid delivery");
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    // A failure inside the transaction (a delivery naming a journal record
    // that does not exist) rolls back the writes before it.
    bad.deliveries = vec![NewDelivery {
        journal_id: Some(i64::MAX),
        ..delivery(&endpoint, &pid, start)
    }];
    bad.audits = vec![audit("disclosure", Some(&pid), Some(&endpoint), 3)];
    store
        .complete_with(j2, bad)
        .await
        .expect_err("unknown journal id");
    assert!(store
        .resource_get("Task", &other)
        .await
        .expect("get")
        .is_none());
    assert_eq!(
        store
            .outbox_list(None, Some(&endpoint), 100)
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        store
            .audit_list(0, 1000, Some(&pid), None)
            .await
            .expect("audits")
            .len(),
        1
    );
    let rec = store.journal_get(j2).await.expect("get").expect("present");
    assert_eq!(rec.state, JournalState::Pending);
    let err = store
        .complete_with(i64::MAX, Completion::default())
        .await
        .expect_err("unknown record");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    store.fail(j2, "test:cleanup").await.expect("fail");
    drain(store, &endpoint).await;
    assert_eq!(store.audit_verify().await.expect("verify"), None);
}

async fn get(store: &dyn Store, id: OutboxId) -> crate::Delivery {
    store
        .outbox_get(id)
        .await
        .expect("get")
        .expect("outbox row exists")
}

async fn claim_ids(
    store: &dyn Store,
    worker: &str,
    endpoint: &str,
    at: DateTime<Utc>,
    limit: usize,
) -> Vec<OutboxId> {
    store
        .outbox_claim(worker, Some(endpoint), at, Duration::from_secs(30), limit)
        .await
        .expect("claim")
        .into_iter()
        .map(|d| d.id)
        .collect()
}

async fn outbox_lifecycle(store: &dyn Store) {
    let ep = format!("ecm-{}", id_tag());
    let t0 = now();
    let past = t0 - TimeDelta::hours(1);
    let ids = store
        .outbox_enqueue(vec![
            delivery(&ep, "k1", past),
            delivery(&ep, "k1", past),
            delivery(&ep, "k2", past),
            delivery(&ep, "k3", t0 + TimeDelta::hours(1)),
        ])
        .await
        .expect("enqueue");
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend");
    let (k1a, k1b, k2, k3) = (ids[0], ids[1], ids[2], ids[3]);
    let d = get(store, k1a).await;
    assert_eq!(d.endpoint, ep);
    assert_eq!(d.ordering_key, "k1");
    assert_eq!(d.kind, "transaction");
    assert_eq!(d.payload, delivery(&ep, "k1", past).payload);
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.attempts, 0);
    assert_eq!(d.not_before, past);
    assert_eq!(
        (d.lease_owner, d.lease_until, d.last_error),
        (None, None, None)
    );
    assert_eq!(d.journal_id, None);

    // Only heads of their key, only due ones; the lease is recorded.
    let claimed = store
        .outbox_claim("w1", Some(&ep), t0, Duration::from_secs(30), 10)
        .await
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![k1a, k2]
    );
    assert_eq!(claimed[0].lease_owner.as_deref(), Some("w1"));
    assert_eq!(claimed[0].lease_until, Some(t0 + secs(30)));
    assert_eq!(claimed[0].attempts, 0, "claiming is not an attempt");
    // Leased rows are not claimable, and a leased head still blocks its key.
    assert!(claim_ids(store, "w2", &ep, t0 + secs(29), 10)
        .await
        .is_empty());
    // Limit.
    assert_eq!(
        claim_ids(store, "w2", &ep, t0 + secs(31), 1).await,
        vec![k1a]
    );
    // After the lease ends another worker takes over.
    assert_eq!(
        claim_ids(store, "w2", &ep, t0 + secs(31), 10).await,
        vec![k2]
    );
    let err = store
        .outbox_finish(k1a, "w1", DeliveryOutcome::Delivered)
        .await
        .expect_err("lease lost");
    assert!(
        matches!(err, StoreError::LeaseLost(id) if id == k1a),
        "{err}"
    );
    let d = get(store, k1a).await;
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.attempts, 0);
    assert_eq!(d.lease_owner.as_deref(), Some("w2"));

    // Release: back to the queue, no attempt.
    store
        .outbox_finish(k2, "w2", DeliveryOutcome::Release)
        .await
        .expect("release");
    let d = get(store, k2).await;
    assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 0));
    assert_eq!((d.lease_owner, d.lease_until), (None, None));

    // Retry: an attempt, a new not_before, the error kept, the lease cleared.
    let later = t0 + TimeDelta::minutes(10);
    store
        .outbox_finish(
            k1a,
            "w2",
            DeliveryOutcome::Retry {
                not_before: later,
                error: "http:503".to_string(),
            },
        )
        .await
        .expect("retry");
    let d = get(store, k1a).await;
    assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 1));
    assert_eq!(d.not_before, later);
    assert_eq!(d.last_error.as_deref(), Some("http:503"));
    assert_eq!(d.lease_owner, None);
    // k1a is not due and still blocks k1b; other keys are unaffected.
    assert_eq!(
        claim_ids(store, "w1", &ep, t0 + secs(40), 10).await,
        vec![k2]
    );
    // Due again (k2's lease also ended by then).
    assert_eq!(claim_ids(store, "w1", &ep, later, 10).await, vec![k1a, k2]);
    store
        .outbox_finish(
            k1a,
            "w1",
            DeliveryOutcome::Dead {
                error: "http:400".to_string(),
            },
        )
        .await
        .expect("dead");
    let d = get(store, k1a).await;
    assert_eq!((d.state, d.attempts), (DeliveryState::Dead, 2));
    assert_eq!(d.last_error.as_deref(), Some("http:400"));
    // A Dead head no longer blocks its key.
    assert_eq!(claim_ids(store, "w1", &ep, later, 10).await, vec![k1b]);
    store
        .outbox_finish(k1b, "w1", DeliveryOutcome::Delivered)
        .await
        .expect("delivered");
    let d = get(store, k1b).await;
    assert_eq!((d.state, d.attempts), (DeliveryState::Delivered, 1));
    assert_eq!(d.lease_owner, None);
    assert!(matches!(
        store
            .outbox_finish(k1b, "w1", DeliveryOutcome::Delivered)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    store
        .outbox_finish(
            k2,
            "w1",
            DeliveryOutcome::Withheld {
                reason: "consent:none".to_string(),
            },
        )
        .await
        .expect("withheld");
    let d = get(store, k2).await;
    assert_eq!((d.state, d.attempts), (DeliveryState::Withheld, 0));
    assert_eq!(d.last_error.as_deref(), Some("consent:none"));

    // List and depth.
    let all: Vec<OutboxId> = store
        .outbox_list(None, Some(&ep), 100)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(all, ids);
    let two: Vec<OutboxId> = store
        .outbox_list(None, Some(&ep), 2)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(two, vec![k1a, k1b]);
    let dead: Vec<OutboxId> = store
        .outbox_list(Some(DeliveryState::Dead), Some(&ep), 100)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(dead, vec![k1a]);
    let any_dead = store
        .outbox_list(Some(DeliveryState::Dead), None, 1000)
        .await
        .expect("list");
    assert!(any_dead.iter().any(|d| d.id == k1a));
    let depth: Vec<(DeliveryState, u64)> = store
        .outbox_depth()
        .await
        .expect("depth")
        .into_iter()
        .filter(|(e, _, _)| *e == ep)
        .map(|(_, s, n)| (s, n))
        .collect();
    let mut want = vec![
        (DeliveryState::Pending, 1),
        (DeliveryState::Delivered, 1),
        (DeliveryState::Dead, 1),
        (DeliveryState::Withheld, 1),
    ];
    want.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(depth, want);

    // Operator retry and drop.
    assert!(!store.outbox_retry(k1b).await.expect("retry delivered"));
    assert!(!store.outbox_drop(k2).await.expect("drop withheld"));
    let before_retry = now();
    assert!(store.outbox_retry(k1a).await.expect("retry dead"));
    let d = get(store, k1a).await;
    assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 0));
    assert!(d.not_before >= before_retry && d.not_before <= now());
    assert!(!store.outbox_drop(k1a).await.expect("drop pending"));
    assert!(store.outbox_retry(k2).await.expect("retry withheld"));
    assert_eq!(get(store, k2).await.state, DeliveryState::Pending);
    let due = now() + secs(1);
    assert_eq!(claim_ids(store, "w3", &ep, due, 10).await, vec![k1a, k2]);
    store
        .outbox_finish(
            k1a,
            "w3",
            DeliveryOutcome::Dead {
                error: "gone".to_string(),
            },
        )
        .await
        .expect("dead");
    assert!(store.outbox_drop(k1a).await.expect("drop"));
    assert_eq!(get(store, k1a).await.state, DeliveryState::Dropped);
    assert!(!store.outbox_drop(k1a).await.expect("drop again"));
    assert!(!store.outbox_retry(k1a).await.expect("retry dropped"));
    store
        .outbox_finish(k2, "w3", DeliveryOutcome::Delivered)
        .await
        .expect("deliver");

    // Unknown ids and bad input.
    assert!(store.outbox_get(i64::MAX).await.expect("get").is_none());
    assert!(matches!(
        store
            .outbox_finish(i64::MAX, "w1", DeliveryOutcome::Delivered)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(!store.outbox_retry(i64::MAX).await.expect("retry"));
    assert!(matches!(
        store
            .outbox_claim("", Some(&ep), t0, Duration::from_secs(1), 1)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store
        .outbox_enqueue(Vec::new())
        .await
        .expect("empty")
        .is_empty());
    let k3_row = get(store, k3).await;
    assert_eq!(k3_row.state, DeliveryState::Pending, "future row untouched");
    drain(store, &ep).await;
}

async fn outbox_next_due_follows_heads(store: &dyn Store) {
    let ep = format!("nd-{}", id_tag());
    // Earlier than anything else the suite writes.
    let early = at_micros(1_000_000_000_000_000);
    let ids = store
        .outbox_enqueue(vec![
            delivery(&ep, "k", early),
            // Older not_before but behind the head of its key.
            delivery(&ep, "k", early - secs(1)),
        ])
        .await
        .expect("enqueue");
    assert_eq!(
        store.outbox_next_due().await.expect("next due"),
        Some(early),
        "only heads count"
    );
    let t0 = now();
    assert_eq!(claim_ids(store, "w", &ep, t0, 10).await, vec![ids[0]]);
    let next = store.outbox_next_due().await.expect("next due");
    assert_ne!(
        next,
        Some(early),
        "a leased head is due when its lease ends"
    );
    assert_ne!(next, Some(early - secs(1)));
    store
        .outbox_finish(ids[0], "w", DeliveryOutcome::Delivered)
        .await
        .expect("deliver");
    assert_eq!(
        store.outbox_next_due().await.expect("next due"),
        Some(early - secs(1))
    );
    drain(store, &ep).await;
    let next = store.outbox_next_due().await.expect("next due");
    assert!(next.is_none_or(|n| n > early), "{next:?}");
}

async fn audit_chain(store: &dyn Store) {
    assert_eq!(store.audit_verify().await.expect("verify"), None);
    let t = id_tag();
    let p = format!("p-{t}");
    let (r1, r2) = (format!("mcp-{t}"), format!("ecm-{t}"));
    let recs = store
        .audit_append(vec![
            audit("disclosure", Some(&p), Some(&r1), 10),
            audit("refusal", Some(&p), Some(&r2), 11),
            audit("read", None, Some(&r1), 12),
        ])
        .await
        .expect("append");
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[1].seq, recs[0].seq + 1);
    assert_eq!(recs[2].seq, recs[1].seq + 1);
    assert_eq!(recs[1].prev_hash, recs[0].hash);
    assert_eq!(recs[2].prev_hash, recs[1].hash);
    if recs[0].seq == 1 {
        assert_eq!(recs[0].prev_hash, GENESIS_HASH);
    }
    for r in &recs {
        assert_eq!(r.hash.len(), 64);
        assert!(r
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        // The documented formula, independent of the backend.
        let want = chain_hash(
            &r.prev_hash,
            r.seq,
            r.recorded,
            &r.kind,
            r.patient_id.as_deref(),
            r.recipient.as_deref(),
            &legacy_canonical_json(&r.body),
        );
        assert_eq!(r.hash, want);
    }
    assert_eq!(recs[0].body, audit("disclosure", None, None, 10).body);
    assert_eq!(recs[0].recorded, at_micros(1_780_000_000_000_010));
    // The chain continues across calls.
    let more = store
        .audit_append(vec![audit("read", Some(&p), None, 13)])
        .await
        .expect("append");
    assert_eq!(more[0].seq, recs[2].seq + 1);
    assert_eq!(more[0].prev_hash, recs[2].hash);

    // Listing and filters.
    let from = recs[0].seq - 1;
    let seqs = |v: Vec<crate::AuditRecord>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
    let listed = store
        .audit_list(from, 100, Some(&p), None)
        .await
        .expect("list");
    assert_eq!(listed[0], recs[0], "list returns what append returned");
    assert_eq!(seqs(listed), vec![recs[0].seq, recs[1].seq, more[0].seq]);
    let by_recipient = store
        .audit_list(from, 100, None, Some(&r1))
        .await
        .expect("list");
    assert_eq!(seqs(by_recipient), vec![recs[0].seq, recs[2].seq]);
    let both = store
        .audit_list(from, 100, Some(&p), Some(&r1))
        .await
        .expect("list");
    assert_eq!(seqs(both), vec![recs[0].seq]);
    let page = store
        .audit_list(from, 1, Some(&p), None)
        .await
        .expect("list");
    assert_eq!(seqs(page), vec![recs[0].seq]);
    let after = store
        .audit_list(recs[0].seq, 100, Some(&p), None)
        .await
        .expect("list");
    assert_eq!(seqs(after), vec![recs[1].seq, more[0].seq]);
    assert!(store
        .audit_list(from, 0, Some(&p), None)
        .await
        .expect("list")
        .is_empty());
    let unfiltered = store.audit_list(from, 4, None, None).await.expect("list");
    assert_eq!(
        seqs(unfiltered),
        vec![recs[0].seq, recs[1].seq, recs[2].seq, more[0].seq]
    );

    assert_eq!(store.audit_verify().await.expect("verify"), None);
    assert!(store
        .audit_append(Vec::new())
        .await
        .expect("empty")
        .is_empty());
    let mut bad = audit("", None, None, 0);
    assert!(matches!(
        store.audit_append(vec![bad.clone()]).await,
        Err(StoreError::Invalid(_))
    ));
    bad.kind = "read".to_string();
    bad.recipient = Some(String::new());
    assert!(matches!(
        store.audit_append(vec![bad]).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn audit_concurrent_appends(store: Arc<dyn Store>) {
    let p = format!("p-{}", id_tag());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            let p = p.clone();
            tokio::spawn(async move {
                store
                    .audit_append(vec![
                        audit("read", Some(&p), None, 100 + i),
                        audit("read", Some(&p), None, 200 + i),
                    ])
                    .await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for h in handles {
        let recs = h.await.expect("task").expect("append");
        assert_eq!(recs[1].seq, recs[0].seq + 1, "one call is contiguous");
        seqs.extend(recs.iter().map(|r| r.seq));
    }
    let unique: HashSet<i64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 16);
    assert_eq!(store.audit_verify().await.expect("verify"), None);
}

async fn jti_cache(store: &dyn Store) {
    let client = format!("client-{}", tag());
    let t0 = now();
    let exp = t0 + TimeDelta::minutes(5);
    assert!(store.jti_use(&client, "j1", exp, t0).await.expect("first"));
    assert!(!store.jti_use(&client, "j1", exp, t0).await.expect("replay"));
    assert!(!store
        .jti_use(&client, "j1", exp, exp - secs(1))
        .await
        .expect("replay before expiry"));
    assert!(store
        .jti_use(&client, "j2", exp, t0)
        .await
        .expect("other jti"));
    let other = format!("{client}-b");
    assert!(store
        .jti_use(&other, "j1", exp, t0)
        .await
        .expect("other client"));
    // Expired: the id may be used again, with the new expiry.
    let exp2 = exp + TimeDelta::minutes(5);
    assert!(store
        .jti_use(&client, "j1", exp2, exp + secs(1))
        .await
        .expect("reuse after expiry"));
    assert!(!store
        .jti_use(&client, "j1", exp2, exp + secs(2))
        .await
        .expect("replay of the reuse"));
    assert!(matches!(
        store.jti_use("", "j", exp, t0).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.jti_use(&client, "", exp, t0).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn clocks(store: &dyn Store) {
    let t = id_tag();
    let subject = format!("Task/{t}");
    let t0 = now();
    let clock = |id: &str, due: DateTime<Utc>, state: &str| ClockRow {
        id: format!("{id}-{t}"),
        kind: "authorization-decision".to_string(),
        subject: subject.clone(),
        patient_id: Some(format!("p-{t}")),
        started_at: t0,
        due_at: due,
        state: state.to_string(),
        closed_at: (state != "open").then_some(t0 + secs(5)),
    };
    let c1 = clock("c1", t0 + TimeDelta::days(1), "open");
    let c2 = clock("c2", t0 + TimeDelta::days(2), "open");
    let c3 = clock("c3", t0 + TimeDelta::hours(3), "met");
    store
        .clock_upsert(vec![c1.clone(), c2.clone(), c3.clone()])
        .await
        .expect("upsert");
    let list = |open_only: bool, due_before: Option<DateTime<Utc>>, limit: usize| {
        let subject = subject.clone();
        async move {
            store
                .clock_list(open_only, due_before, Some(&subject), limit)
                .await
                .expect("list")
        }
    };
    assert_eq!(
        list(false, None, 10).await,
        vec![c3.clone(), c1.clone(), c2.clone()]
    );
    assert_eq!(list(true, None, 10).await, vec![c1.clone(), c2.clone()]);
    assert_eq!(
        list(true, Some(c1.due_at + secs(1)), 10).await,
        vec![c1.clone()]
    );
    assert!(
        list(true, Some(c1.due_at), 10).await.is_empty(),
        "due_before is strict"
    );
    assert_eq!(list(false, None, 1).await, vec![c3.clone()]);
    assert!(list(false, None, 0).await.is_empty());
    // Replace by id.
    let mut met = c1.clone();
    met.state = "met".to_string();
    met.closed_at = Some(t0 + secs(60));
    store.clock_upsert(vec![met.clone()]).await.expect("upsert");
    assert_eq!(list(true, None, 10).await, vec![c2.clone()]);
    assert_eq!(
        list(false, None, 10).await,
        vec![c3.clone(), met, c2.clone()]
    );
    // Without a subject filter: at least ours, ordered by due_at.
    let open_soon = store
        .clock_list(true, Some(c2.due_at + secs(1)), None, 1000)
        .await
        .expect("list");
    assert!(open_soon.contains(&c2));
    assert!(open_soon.windows(2).all(|w| w[0].due_at <= w[1].due_at));
    let mut bad = c2.clone();
    bad.state = "late".to_string();
    assert!(matches!(
        store.clock_upsert(vec![bad]).await,
        Err(StoreError::Invalid(_))
    ));
    store.clock_upsert(Vec::new()).await.expect("empty");
}

/// `clock_list_subjects`: every clock of the subjects asked for (of one
/// kind if given), ordered by (subject, due_at, id); other subjects' clocks,
/// unknown subjects and an empty list answer nothing; too many subjects are
/// refused.
pub async fn clocks_of_subjects(store: &dyn Store) {
    let t = id_tag();
    let t0 = now();
    let clock = |n: &str, subject: &str, kind: &str, due: DateTime<Utc>| ClockRow {
        id: format!("{n}-{t}"),
        kind: kind.to_string(),
        subject: format!("{subject}-{t}"),
        patient_id: None,
        started_at: t0,
        due_at: due,
        state: "met".to_string(),
        closed_at: Some(t0 + secs(7)),
    };
    let auth = "authorization-decision";
    let a1 = clock("a1", "Task/a", auth, t0 + TimeDelta::days(2));
    let a2 = clock("a2", "Task/a", "outreach", t0 + TimeDelta::days(1));
    let b1 = clock("b1", "Task/b", auth, t0 + TimeDelta::days(3));
    let c1 = clock("c1", "Task/c", auth, t0 + TimeDelta::days(1));
    store
        .clock_upsert(vec![a1.clone(), a2.clone(), b1.clone(), c1.clone()])
        .await
        .expect("upsert");
    let subjects: Vec<String> = ["Task/b", "Task/a", "Task/none"]
        .iter()
        .map(|s| format!("{s}-{t}"))
        .collect();
    assert_eq!(
        store
            .clock_list_subjects(None, &subjects)
            .await
            .expect("list"),
        vec![a2.clone(), a1.clone(), b1.clone()],
        "every clock of the subjects asked for, by subject then due time"
    );
    assert_eq!(
        store
            .clock_list_subjects(Some(auth), &subjects)
            .await
            .expect("list"),
        vec![a1.clone(), b1.clone()],
        "only the kind asked for"
    );
    assert!(store
        .clock_list_subjects(Some("no-such-kind"), &subjects)
        .await
        .expect("list")
        .is_empty());
    assert!(store
        .clock_list_subjects(None, &[])
        .await
        .expect("empty")
        .is_empty());
    // A full call: the limit, one of them known.
    let mut many: Vec<String> = (0..crate::clock::MAX_CLOCK_SUBJECTS_PER_CALL - 1)
        .map(|i| format!("Task/many{i}-{t}"))
        .collect();
    many.push(c1.subject.clone());
    assert_eq!(
        store.clock_list_subjects(None, &many).await.expect("full"),
        vec![c1.clone()]
    );
    many.push(format!("Task/one-too-many-{t}"));
    assert!(matches!(
        store.clock_list_subjects(None, &many).await,
        Err(StoreError::Invalid(_))
    ));
}

/// `resource_get_many`: the current version of each id that exists, by id,
/// once each; other types, unknown ids and an empty list answer nothing;
/// too many ids are refused.
pub async fn resources_by_many_ids(store: &dyn Store) {
    let t = id_tag();
    let id = |n: &str| format!("gm{n}-{t}");
    let stored = store
        .put_resources(vec![
            write("Patient", &id("b"), Some(&id("b")), json!({"n": 1})),
            write("Patient", &id("a"), Some(&id("a")), json!({"n": 2})),
            write("Task", &id("c"), None, json!({"n": 3})),
        ])
        .await
        .expect("put");
    let b2 = store
        .put_resources(vec![write(
            "Patient",
            &id("b"),
            Some(&id("b")),
            json!({"n": 4}),
        )])
        .await
        .expect("put again");
    assert_eq!(b2[0].version_id, 2);
    let found = store
        .resource_get_many("Patient", &[id("b"), id("none"), id("a"), id("b"), id("c")])
        .await
        .expect("get many");
    assert_eq!(
        found,
        vec![stored[1].clone(), b2[0].clone()],
        "the current version of each Patient found, by id, once"
    );
    assert_eq!(
        store
            .resource_get_many("Task", &[id("c"), String::new()])
            .await
            .expect("task"),
        vec![stored[2].clone()]
    );
    assert!(store
        .resource_get_many("Patient", &[])
        .await
        .expect("empty")
        .is_empty());
    assert!(store
        .resource_get_many("patient", &[id("a")])
        .await
        .expect("bad type")
        .is_empty());
    let mut many: Vec<String> = (0..crate::search::MAX_GET_IDS - 1)
        .map(|i| id(&format!("many{i}")))
        .collect();
    many.push(id("a"));
    assert_eq!(
        store
            .resource_get_many("Patient", &many)
            .await
            .expect("full"),
        vec![stored[1].clone()]
    );
    many.push(id("x"));
    assert!(matches!(
        store.resource_get_many("Patient", &many).await,
        Err(StoreError::Invalid(_))
    ));
}
