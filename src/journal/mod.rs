//! The one sequence every source follows, and the one start-up recovery
//! pass over every input kind.
//!
//! 1. [`append`] the input under its dedup key — durable before any 2xx or
//!    ACK. A duplicate is a replay ([`Appended::Replay`]): it carries the
//!    *journaled* bytes and whether the record was already processed.
//! 2. The source derives what the input means ([`Derived`]: resource
//!    writes, deadline clocks, audit records, how to route it) from the
//!    journaled bytes and the journal's received time — never the wall
//!    clock — so a replay and a recovery derive the same.
//! 3. [`settle`] routes what is written (outbox rows beside the resources)
//!    and completes the record: resources, clocks, audits, outbox rows and
//!    the journal state in ONE transaction. A record already processed
//!    changes nothing and answers the current versions ([`read_back`]).
//!
//! ADT messages follow the same sequence through the translation worker
//! (`sources::adt`), which batches step 2–3 for throughput.
//!
//! [`recover`] runs once at start-up: every record a crash left appended
//! but not processed is derived again by its [`Source`] and settled, or
//! marked failed when its source now refuses it.

use async_trait::async_trait;
use serde_json::Value;
use store::{
    AppendOutcome, ClockRow, Completion, InputKind, JournalId, JournalRecord, JournalState,
    NewAudit, NewInput, ResourceWrite, Store, StoredResource,
};

use crate::edge::ApiError;
use crate::routing::Routing;

/// What one input commits: resources, clocks, audit records, and how to
/// route what is written.
#[derive(Debug, Default)]
pub struct Derived {
    pub writes: Vec<ResourceWrite>,
    pub clocks: Vec<ClockRow>,
    pub audits: Vec<NewAudit>,
    /// How to route what is written (event, sender); `None` = not routed.
    pub route: Option<RouteMeta>,
}

/// What routing needs besides the written resources.
#[derive(Debug, Clone, Default)]
pub struct RouteMeta {
    /// `case.closed`, `placement.changed` …; `None` for plain writes.
    pub event: Option<String>,
    pub source_org: String,
    pub out_of_county: bool,
    pub event_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// The journal's answer to an append.
#[derive(Debug)]
pub enum Appended {
    /// A new record.
    Fresh(JournalId),
    /// The dedup key was journaled before: derive from `raw` (the first
    /// request's bytes), or, when `processed`, read back what it wrote.
    Replay {
        id: JournalId,
        processed: bool,
        raw: Vec<u8>,
        /// When the first request was received (derivations use it).
        received_at: chrono::DateTime<chrono::Utc>,
    },
}

impl Appended {
    /// The journal record's id.
    pub fn id(&self) -> JournalId {
        match self {
            Appended::Fresh(id) | Appended::Replay { id, .. } => *id,
        }
    }

    /// True when the record was processed before (nothing to derive).
    pub fn processed(&self) -> bool {
        matches!(
            self,
            Appended::Replay {
                processed: true,
                ..
            }
        )
    }
}

/// Step 1: journal `input`; a duplicate returns the journaled record.
pub async fn append(store: &dyn Store, input: NewInput) -> Result<Appended, ApiError> {
    match store.append(input).await? {
        AppendOutcome::Inserted(id) => Ok(Appended::Fresh(id)),
        AppendOutcome::Duplicate(id) => {
            let rec = store
                .journal_get(id)
                .await?
                .ok_or_else(|| ApiError::Internal("journal record vanished".into()))?;
            Ok(Appended::Replay {
                id,
                processed: rec.state == JournalState::Processed,
                raw: rec.raw,
                received_at: rec.received_at,
            })
        }
    }
}

/// Step 3: route and commit what was derived for a journal record, and
/// return the stored resources; a record already processed changes
/// nothing and answers the current versions. The delivery workers are
/// woken after the commit.
pub async fn settle(
    routing: Option<&Routing>,
    store: &dyn Store,
    journal_id: JournalId,
    d: Derived,
) -> Result<Vec<Value>, ApiError> {
    let stored = settle_stored(routing, store, journal_id, d).await?;
    Ok(stored.into_iter().map(|r| r.body).collect())
}

/// [`settle`], answering the stored versions (ids, version, time) too.
pub async fn settle_stored(
    routing: Option<&Routing>,
    store: &dyn Store,
    journal_id: JournalId,
    d: Derived,
) -> Result<Vec<StoredResource>, ApiError> {
    let mut deliveries = Vec::new();
    if let (Some(routing), Some(meta)) = (routing, &d.route) {
        let input = crate::routing::RouteInput {
            event: meta.event.clone(),
            source_org: meta.source_org.clone(),
            written: d.writes.iter().map(|w| w.body.clone()).collect(),
            out_of_county: meta.out_of_county,
            event_time: meta.event_time,
        };
        deliveries = routing.deliveries_for(store, &input).await?;
    }
    let routed = !deliveries.is_empty();
    let r = store
        .complete_with(
            journal_id,
            Completion {
                writes: d.writes,
                clocks: d.clocks,
                deliveries,
                audits: d.audits,
            },
        )
        .await?;
    if let (true, Some(routing)) = (routed, routing) {
        routing.waker.wake();
    }
    Ok(r.resources)
}

/// The stored versions of these (type, id) pairs, in order (missing ones
/// left out).
pub async fn read_back(store: &dyn Store, ids: &[(&str, String)]) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(ids.len());
    for (t, id) in ids {
        if let Some(r) = store.resource_get(t, id).await? {
            out.push(r.body);
        }
    }
    Ok(out)
}

/// A source whose journaled inputs can be derived again after a crash.
#[async_trait]
pub trait Source: Send + Sync {
    /// The journal kind it owns.
    fn kind(&self) -> InputKind;
    /// Derive `rec` again from its journaled bytes and settle it. An `Err`
    /// other than a store failure means the source now refuses the input;
    /// the record is then marked failed.
    async fn recover(&self, store: &dyn Store, rec: &JournalRecord) -> Result<(), ApiError>;
}

/// Most journal records one recovery page looks at.
const RECOVERY_PAGE: usize = 1000;

/// Finish every input a crash left journaled but not processed (appended,
/// then the process died before the completion): each pending record of a
/// kind one of `sources` owns is derived again and settled; one its source
/// now refuses is marked failed (`recovery-refused`). Records of other
/// kinds are left (ADT records are the translation worker's, which
/// catches up on its own). Returns how many records were settled.
pub async fn recover(store: &dyn Store, sources: &[&dyn Source]) -> Result<usize, ApiError> {
    let mut n = 0;
    let mut after = 0;
    loop {
        let pending = store.journal_pending(after, RECOVERY_PAGE).await?;
        let Some(last) = pending.last().map(|r| r.id) else {
            break;
        };
        after = last;
        for rec in pending {
            let Some(source) = sources.iter().find(|s| s.kind() == rec.kind) else {
                continue;
            };
            match source.recover(store, &rec).await {
                Ok(()) => n += 1,
                Err(ApiError::Store(e)) => return Err(ApiError::Store(e)),
                Err(e) => {
                    tracing::warn!(
                        journal_id = rec.id,
                        kind = rec.kind.as_str(),
                        error = %e,
                        "journaled input could not be recovered"
                    );
                    store.fail(rec.id, "recovery-refused").await?;
                    n += 1;
                }
            }
        }
    }
    if n > 0 {
        tracing::info!(records = n, "recovered journaled inputs");
    }
    Ok(n)
}
