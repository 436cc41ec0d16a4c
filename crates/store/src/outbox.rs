//! The outbox: durable, ordered deliveries to recipient endpoints.
//!
//! A delivery row is written in the same transaction as the resources it
//! is about ([`crate::Store::complete_with`]) or on its own
//! ([`crate::Store::outbox_enqueue`]). Delivery workers claim due rows with
//! a lease, send, and report an outcome with
//! [`crate::Store::outbox_finish`].
//!
//! Invariants:
//! * **Per-key order:** within one `(endpoint, ordering_key)` only the
//!   oldest Pending row (lowest id) is claimable; a newer row waits until the
//!   older one is Delivered, Dead, Withheld or Dropped. Other keys are not
//!   affected.
//! * **Leases, not locks:** a claim sets `lease_owner`/`lease_until`; after
//!   `lease_until` another worker may claim the row, and from then on only
//!   the new owner's `outbox_finish` counts (the old one gets
//!   [`crate::StoreError::LeaseLost`]). An owner whose lease expired but was
//!   not taken over may still finish.
//! * **Attempts** count Delivered, Retry and Dead outcomes only: claiming
//!   and Release (graceful shutdown) do not count.
//! * Terminal outcomes clear the lease; `last_error` holds PHI-free reason
//!   text (truncated to [`crate::MAX_ERROR_LEN`] bytes).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::{JournalId, ParseNameError, StoreError};

/// Outbox row id: positive, strictly increasing in insertion order.
pub type OutboxId = i64;

/// Most deliveries in one enqueue or completion.
pub const MAX_DELIVERIES_PER_CALL: usize = 1000;
/// Longest `endpoint` (bytes).
pub const MAX_ENDPOINT_LEN: usize = 128;
/// Longest `ordering_key` (bytes).
pub const MAX_ORDERING_KEY_LEN: usize = 256;
/// Longest delivery `kind` (bytes).
pub const MAX_DELIVERY_KIND_LEN: usize = 64;
/// Largest serialized delivery payload (64 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest worker id (bytes).
pub const MAX_WORKER_LEN: usize = 128;
/// Largest claim or list page; larger limits are clamped.
pub const MAX_OUTBOX_PAGE: usize = 1000;

/// A delivery to queue.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Recipient organization id.
    pub endpoint: String,
    /// Order is kept per `(endpoint, ordering_key)`; usually the patient id.
    pub ordering_key: String,
    /// `"transaction"`, `"notification"`, …
    pub kind: String,
    /// What to build at send time (resource refs, purpose …); no PHI needed.
    pub payload: serde_json::Value,
    /// Not claimable before this time.
    pub not_before: DateTime<Utc>,
    /// The journal record this delivery derives from. In
    /// [`crate::Store::complete_with`], `None` becomes the completed record.
    pub journal_id: Option<JournalId>,
}

/// State of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting to be (re)sent.
    Pending,
    /// Sent and acknowledged.
    Delivered,
    /// Gave up; an operator may retry or drop it.
    Dead,
    /// Consent or law refused the disclosure at send time.
    Withheld,
    /// An operator dropped a dead row.
    Dropped,
}

impl DeliveryState {
    /// Every state, in declaration order.
    pub const ALL: [DeliveryState; 5] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Dead,
        DeliveryState::Withheld,
        DeliveryState::Dropped,
    ];

    /// Stable storage name: `pending`, `delivered`, `dead`, `withheld`, `dropped`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Withheld => "withheld",
            DeliveryState::Dropped => "dropped",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(ParseNameError {
                what: "delivery state",
                expected: "pending, delivered, dead, withheld, dropped",
            })
    }
}

/// A stored outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Row id.
    pub id: OutboxId,
    /// Recipient organization id.
    pub endpoint: String,
    /// Ordering key.
    pub ordering_key: String,
    /// Delivery kind.
    pub kind: String,
    /// What to build at send time.
    pub payload: serde_json::Value,
    /// Current state.
    pub state: DeliveryState,
    /// Delivered/Retry/Dead outcomes so far.
    pub attempts: u32,
    /// Not claimable before this time.
    pub not_before: DateTime<Utc>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Last Retry/Dead error or Withheld reason.
    pub last_error: Option<String>,
    /// Worker holding the lease.
    pub lease_owner: Option<String>,
    /// Lease end.
    pub lease_until: Option<DateTime<Utc>>,
    /// Originating journal record.
    pub journal_id: Option<JournalId>,
}

/// What happened to a claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Sent and acknowledged → Delivered.
    Delivered,
    /// Failed, try again at `not_before` → stays Pending.
    Retry {
        /// Next attempt time.
        not_before: DateTime<Utc>,
        /// PHI-free reason.
        error: String,
    },
    /// Failed permanently → Dead.
    Dead {
        /// PHI-free reason.
        error: String,
    },
    /// Refused at send time (consent/law) → Withheld; not an attempt.
    Withheld {
        /// PHI-free reason.
        reason: String,
    },
    /// Graceful shutdown: back to the queue; not an attempt.
    Release,
}

/// Validate deliveries before they are queued; returns serialized payloads.
pub(crate) fn prepare_deliveries(items: &[NewDelivery]) -> Result<Vec<String>, StoreError> {
    if items.len() > MAX_DELIVERIES_PER_CALL {
        return Err(StoreError::Invalid(format!(
            "{} deliveries in one call (max {MAX_DELIVERIES_PER_CALL})",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let bad = |what: &str| StoreError::Invalid(format!("delivery {i}: {what}"));
            if d.endpoint.is_empty() || d.endpoint.len() > MAX_ENDPOINT_LEN {
                return Err(bad("endpoint is empty or too long"));
            }
            if d.ordering_key.is_empty() || d.ordering_key.len() > MAX_ORDERING_KEY_LEN {
                return Err(bad("ordering_key is empty or too long"));
            }
            if d.kind.is_empty() || d.kind.len() > MAX_DELIVERY_KIND_LEN {
                return Err(bad("kind is empty or too long"));
            }
            let payload =
                serde_json::to_string(&d.payload).map_err(|_| bad("payload not serializable"))?;
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(bad("payload is larger than the limit"));
            }
            Ok(payload)
        })
        .collect()
}

/// Check a worker id.
pub(crate) fn check_worker(worker: &str) -> Result<(), StoreError> {
    if worker.is_empty() || worker.len() > MAX_WORKER_LEN {
        return Err(StoreError::Invalid(format!(
            "worker id must be 1..={MAX_WORKER_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn state_round_trips() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), s);
        }
        assert!("sent".parse::<DeliveryState>().is_err());
    }

    #[test]
    fn deliveries_are_bounded() {
        let ok = NewDelivery {
            endpoint: "mcp-1".into(),
            ordering_key: "p1".into(),
            kind: "transaction".into(),
            payload: json!({"refs": ["Patient/p1"]}),
            not_before: Utc::now(),
            journal_id: None,
        };
        assert_eq!(
            prepare_deliveries(std::slice::from_ref(&ok)).unwrap().len(),
            1
        );
        let mut big = ok.clone();
        big.payload = json!({"x": "y".repeat(MAX_PAYLOAD_BYTES)});
        let mut no_endpoint = ok.clone();
        no_endpoint.endpoint.clear();
        for bad in [big, no_endpoint] {
            assert!(matches!(
                prepare_deliveries(&[bad]),
                Err(StoreError::Invalid(_))
            ));
        }
        assert!(prepare_deliveries(&vec![ok; MAX_DELIVERIES_PER_CALL + 1]).is_err());
        assert!(check_worker("").is_err());
        assert!(check_worker("w1").is_ok());
    }
}
