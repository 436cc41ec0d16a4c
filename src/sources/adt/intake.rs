//! ADT intake, shared by the MLLP listener and `POST /hl7/v2`: bytes in,
//! acknowledgement(s) out.
//!
//! **Architecture Invariant: no ACK before the input is durable.** An `AA`/`CA`
//! is built only after `Store::append_durable` returned Ok, which means the
//! message is on disk: in the journal (its transaction group-committed with
//! its neighbours), or in the SQLite store's intake log, which the store
//! journals at its next open if the journal lost it. Every other
//! outcome is a NAK that tells the sender what to do: `AR`/`CR` for a message we
//! will never take as sent (unknown facility, not ADT, too large), `AE`/`CE`
//! for a message whose content is broken (ERR 101/102/…) — both permanent:
//! resending the same bytes cannot help. The one transient answer is ERR 207
//! "resend later" (`AR` / `CE`) when the gateway could not store the message.
//!
//! Acknowledgement modes: original mode (AA/AE/AR) unless MSH-15 or MSH-16 is
//! valued, which asks for enhanced mode: a commit ACK (CA/CE/CR) governed by
//! MSH-15 (or always, with the source's `ack_mode = "always"`), sent as soon
//! as the message is durable — the same moment as an original-mode ACK — and
//! then, only when MSH-16 asks for it, an application ACK (AA/AE) once the
//! message has been translated ([`AdtIntake::handle_split`] returns the two
//! separately so the MLLP listener writes the commit ACK first).
//!
//! Deduplication is by content: the journal key is
//! `{MSH-4}|{MSH-10}|{sha256 of the normalised message}` ([`content_hash`]),
//! so a resend (same facility, control id and message; MSH-7 and segment
//! terminators may differ) is answered again and not processed twice, while a
//! different message under a reused control id is processed as new and counted
//! (`cwsgw_control_id_reuse_total`, by the translation worker once the
//! message is processed: [`note_reuse`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hl7v2::ack::{self, AckCode, AckSpec};
use hl7v2::{Diagnostic, ErrorCode, Header, Location, ParseOptions, Severity};
use sha2::{Digest, Sha256};
use store::{AppendOutcome, Durable, InputKind, NewInput, Store, StoreError};
use tokio::sync::oneshot;

use crate::config::{AckMode, Config, OrgKind, Organization};
use crate::sources::adt::worker::{Job, JobOutcome, ProcessorHandle};
use crate::telemetry::{message_type_label, Metrics};

/// Who delivered the bytes.
#[derive(Debug, Clone)]
pub enum Via {
    /// MLLP: the sender is identified by MSH-4 alone.
    Mllp,
    /// HTTP: an authenticated client of this `adt_source` organization; MSH-4
    /// must be one of its facilities.
    Http { org_id: String },
}

/// How long an enhanced-mode sender waits for its application ACK.
const APP_ACK_WAIT: Duration = Duration::from_secs(10);

/// Longest MSH-10 taken (bytes): the HL7 v2.5+ length of the field. Longer
/// is a permanent `AE`/`CE` with ERR 102 at MSH-10.
pub const MAX_CONTROL_ID_LEN: usize = 199;
/// Longest MSH-4.1 taken (bytes): the HL7 length of HD. With MSH-10 and the
/// hash the journal key stays within `store::MAX_DEDUP_KEY_LEN`.
pub const MAX_FACILITY_LEN: usize = 227;
/// Hex characters of the content hash in a journal key.
const HASH_HEX_LEN: usize = 64;
const _: () =
    assert!(MAX_FACILITY_LEN + MAX_CONTROL_ID_LEN + HASH_HEX_LEN + 2 <= store::MAX_DEDUP_KEY_LEN);

pub struct AdtIntake {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    processor: ProcessorHandle,
    metrics: Arc<Metrics>,
    parse_opts: ParseOptions,
    ack_seq: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Original,
    Enhanced,
}

/// An MSH-15/16 condition: when to send that acknowledgement.
fn wanted(condition: &str, success: bool) -> bool {
    match condition {
        "NE" => false,
        "ER" => !success,
        "SU" => success,
        // AL, empty (in enhanced mode the other field was valued) or unknown: always.
        _ => true,
    }
}

/// SHA-256 (lowercase hex) of a message as the journal key compares it:
/// segments split on CR, LF or CRLF, empty ones dropped, a leading UTF-8
/// byte-order mark dropped, MSH-7 (the message time, which a sender may
/// restamp on a resend) blanked using the message's own field separator, and
/// the segments joined by CR. Everything else — every byte of every other
/// field — counts.
pub fn content_hash(raw: &[u8]) -> String {
    let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
    let mut h = Sha256::new();
    let mut first = true;
    for seg in raw
        .split(|b| *b == b'\r' || *b == b'\n')
        .filter(|s| !s.is_empty())
    {
        if !first {
            h.update(b"\r");
        }
        first = false;
        match seg.get(3).copied().filter(|_| seg.starts_with(b"MSH")) {
            Some(sep) => {
                // "MSH" sep MSH-2 sep MSH-3 … : MSH-7 is the sixth field after "MSH".
                for (i, field) in seg.split(|b| *b == sep).enumerate() {
                    if i > 0 {
                        h.update([sep]);
                    }
                    if i != 6 {
                        h.update(field);
                    }
                }
            }
            None => h.update(seg),
        }
    }
    hex::encode(h.finalize())
}

/// The journal key of an ADT message (every message of the same (MSH-4,
/// MSH-10) shares its [`control_id_prefix`]).
fn dedup_key(facility: &str, control_id: &str, raw: &[u8]) -> String {
    format!("{facility}|{control_id}|{}", content_hash(raw))
}

/// The `{MSH-4}|{MSH-10}|` a dedup key begins with: every message of one
/// facility under one control id shares it. `None` for a key that is not an
/// ADT dedup key.
fn control_id_prefix(key: &str) -> Option<&str> {
    key.get(..key.len().checked_sub(HASH_HEX_LEN)?)
        .filter(|p| p.ends_with('|'))
}

/// Count and log (journal id and source, no content) a translated message
/// whose facility used its control id before for a different message
/// (`cwsgw_control_id_reuse_total`). Called by the translation worker once
/// the record is processed, not at intake: the check is a journal read, and
/// at intake it cost every message a task and a read on the ACK's threads
/// (send-and-wait ingest, three interleaved pairs: 8.6–10.3k msg/s with it,
/// 10.5–11.1k without; docs/performance.md).
pub(crate) async fn note_reuse(
    store: &dyn Store,
    metrics: &Metrics,
    id: store::JournalId,
    source: &str,
    key: &str,
) {
    let Some(prefix) = control_id_prefix(key) else {
        return;
    };
    match store
        .journal_key_prefix_exists(InputKind::Adt, prefix, key.len(), key)
        .await
    {
        Ok(true) => {
            metrics.control_id_reuse.inc(source);
            tracing::warn!(
                journal_id = id,
                source = %source,
                "control id (MSH-10) reused by this facility for a different message; processed as a new message"
            );
        }
        Ok(false) => {}
        Err(e) => tracing::debug!(error = %e, "control id reuse check failed"),
    }
}

/// What [`AdtIntake::handle_split`] returns: the acknowledgement to send now,
/// and the application ACK owed later, once translation has an outcome.
pub struct Handled {
    /// The ACK to send at once: the original-mode ACK, or the commit ACK, or
    /// a NAK; `None` when enhanced mode asked for none.
    pub now: Option<String>,
    /// Enhanced mode with MSH-16 other than `NE`: resolve with
    /// [`AdtIntake::app_ack`] (which waits for translation, bounded) and send
    /// after `now`.
    pub later: Option<PendingAppAck>,
}

/// An application ACK owed for a journaled message.
pub struct PendingAppAck {
    header: Header,
    label: &'static str,
    /// The translation outcome; `None` for a duplicate (already journaled).
    outcome: Option<oneshot::Receiver<JobOutcome>>,
    /// When the wait for the outcome ends (the commit time plus
    /// [`APP_ACK_WAIT`]), however long the ACK queued behind others.
    deadline: tokio::time::Instant,
}

impl AdtIntake {
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        processor: ProcessorHandle,
        metrics: Arc<Metrics>,
    ) -> Self {
        let parse_opts = ParseOptions {
            default_charset: cfg.default_charset(),
            max_bytes: cfg.mllp.max_frame_bytes,
            ..ParseOptions::default()
        };
        AdtIntake {
            cfg,
            store,
            processor,
            metrics,
            parse_opts,
            ack_seq: AtomicU64::new(0),
        }
    }

    pub fn parse_options(&self) -> &ParseOptions {
        &self.parse_opts
    }

    fn control_id(&self) -> String {
        let n = self.ack_seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "CWSGW{}{:06}",
            chrono::Utc::now().format("%y%m%d%H%M%S"),
            n % 1_000_000
        )
    }

    fn build(
        &self,
        header: Option<&Header>,
        code: AckCode,
        text: Option<&str>,
        errors: &[Diagnostic],
        type_label: &'static str,
    ) -> String {
        let control_id = self.control_id();
        let ts = chrono::Utc::now().format("%Y%m%d%H%M%S+0000").to_string();
        self.metrics.hl7_acks.inc(&[code.as_str(), type_label]);
        ack::build(&AckSpec {
            original: header,
            code,
            control_id: &control_id,
            timestamp: &ts,
            text,
            errors,
            sending_application: "CWSGW",
        })
    }

    /// Answer a frame (or HTTP body) that was too large to take: `AR` (`CR`
    /// in enhanced mode) with ERR 102 — permanent, resending cannot help —
    /// and MSA-2 when its head still shows MSH-10. `limit` is the limit that
    /// was exceeded.
    pub fn oversize(&self, head: &[u8], len: usize, limit: usize) -> String {
        let parsed = hl7v2::parse(head, &self.parse_opts);
        let header = parsed.message.as_ref().map(|m| m.header());
        let label = header
            .as_ref()
            .map(|h| message_type_label(&h.message_code, &h.trigger_event))
            .unwrap_or("other");
        self.metrics.hl7_received.inc(&[label]);
        let text = format!("message of {len} bytes exceeds the limit of {limit} bytes");
        let err = Diagnostic {
            severity: Severity::Error,
            code: ErrorCode::DataTypeError,
            location: None,
            text: text.clone(),
        };
        let code = match header.as_ref().map(mode_of) {
            Some(Mode::Enhanced) => AckCode::CR,
            _ => AckCode::AR,
        };
        tracing::warn!(bytes = len, "rejected oversize HL7 message");
        self.build(header.as_ref(), code, Some(&text), &[err], label)
    }

    /// Handle one HL7 message; returns the acknowledgement(s) to send, in
    /// order (none only when enhanced mode asked for none). In enhanced mode
    /// with an application ACK wanted this waits for translation (bounded);
    /// a connection that can send the commit ACK first uses
    /// [`AdtIntake::handle_split`].
    pub async fn handle(&self, bytes: &[u8], via: &Via) -> Vec<String> {
        let handled = self.handle_split(bytes, via).await;
        let mut acks: Vec<String> = handled.now.into_iter().collect();
        if let Some(pending) = handled.later {
            acks.extend(self.app_ack(pending).await);
        }
        acks
    }

    /// Handle one HL7 message up to its durability point: the ACK to send
    /// now (the commit ACK in enhanced mode — it never waits for
    /// translation) and the application ACK owed later, if MSH-16 asks for
    /// one.
    pub async fn handle_split(&self, bytes: &[u8], via: &Via) -> Handled {
        let started = Instant::now();
        let handled = self.handle_inner(bytes, via).await;
        self.metrics
            .ack_latency
            .observe(started.elapsed().as_secs_f64());
        handled
    }

    /// The application ACK owed for a journaled message, once its outcome is
    /// known (at most `APP_ACK_WAIT` after the commit; then `AA`: the
    /// message is durable and will be translated). `None` when MSH-16 does
    /// not want this outcome.
    pub async fn app_ack(&self, pending: PendingAppAck) -> Option<String> {
        let PendingAppAck {
            header,
            label,
            outcome,
            deadline,
        } = pending;
        let outcome = match outcome {
            Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(o)) => o,
                // The message is durable and will be translated; the sender
                // asked to hear about the application outcome, which is not
                // known yet. Say accepted: it is in the journal.
                _ => JobOutcome::Deferred,
            },
            None => JobOutcome::Translated,
        };
        match outcome {
            JobOutcome::Translated | JobOutcome::Deferred => {
                if !wanted(&header.application_ack_type, true) {
                    return None;
                }
                Some(self.build(Some(&header), AckCode::AA, None, &[], label))
            }
            JobOutcome::Failed { code, location } => {
                if !wanted(&header.application_ack_type, false) {
                    return None;
                }
                let err = Diagnostic {
                    severity: Severity::Error,
                    code: ErrorCode::ApplicationInternalError,
                    location: location.as_deref().and_then(parse_erl),
                    text: format!("translation failed: {code}"),
                };
                Some(self.build(
                    Some(&header),
                    AckCode::AE,
                    Some("translation failed"),
                    &[err],
                    label,
                ))
            }
        }
    }

    async fn handle_inner(&self, bytes: &[u8], via: &Via) -> Handled {
        let now = |ack: Option<String>| Handled {
            now: ack,
            later: None,
        };
        let parsed = hl7v2::parse(bytes, &self.parse_opts);
        let Some(msg) = parsed.message.as_ref() else {
            self.metrics.hl7_received.inc(&["other"]);
            tracing::info!(
                diagnostics = parsed.diagnostics.len(),
                "unparseable HL7 message"
            );
            let errs = errors_only(&parsed.diagnostics);
            return now(Some(self.build(
                None,
                AckCode::AE,
                Some("message could not be parsed"),
                &errs,
                "other",
            )));
        };
        let header = msg.header();
        let label = message_type_label(&header.message_code, &header.trigger_event);
        self.metrics.hl7_received.inc(&[label]);
        let mode = mode_of(&header);
        let (reject, error, accept) = match mode {
            Mode::Original => (AckCode::AR, AckCode::AE, AckCode::AA),
            Mode::Enhanced => (AckCode::CR, AckCode::CE, AckCode::CA),
        };

        // Who sent it: MSH-4 must belong to an adt_source (and, over HTTP, to the caller's).
        let source: Option<&Organization> = match via {
            Via::Mllp => self.cfg.adt_source_for_facility(&header.sending_facility),
            Via::Http { org_id } => self
                .cfg
                .organization(org_id)
                .filter(|o| o.kind == OrgKind::AdtSource)
                .filter(|o| o.sending_facilities.contains(&header.sending_facility)),
        };
        let always = source.is_some_and(|o| o.ack_mode() == AckMode::Always);
        let commit_wanted = |success: bool| {
            mode == Mode::Original || always || wanted(&header.accept_ack_type, success)
        };
        let Some(source) = source else {
            tracing::warn!(
                r#type = label,
                "HL7 message from an unknown sending facility"
            );
            let err = Diagnostic {
                severity: Severity::Error,
                code: ErrorCode::TableValueNotFound,
                location: Some(loc("MSH", 4)),
                text: "sending facility (MSH-4) is not configured for this source".into(),
            };
            return now(self.maybe(
                commit_wanted(false),
                &header,
                reject,
                "unknown sending facility",
                &[err],
                label,
            ));
        };
        if header.message_code != "ADT" {
            let err = Diagnostic {
                severity: Severity::Error,
                code: ErrorCode::UnsupportedMessageType,
                location: Some(loc("MSH", 9)),
                text: "only ADT messages are accepted".into(),
            };
            return now(self.maybe(
                commit_wanted(false),
                &header,
                reject,
                "unsupported message type",
                &[err],
                label,
            ));
        }
        if bytes.len() > store::MAX_RAW_BYTES {
            // Only reachable with a frame or body limit above the journal's.
            let head = bytes.get(..8 * 1024).unwrap_or(bytes);
            return now(Some(self.oversize(head, bytes.len(), store::MAX_RAW_BYTES)));
        }
        let mut errs = errors_only(&parsed.diagnostics);
        if header.control_id.is_empty()
            && !errs
                .iter()
                .any(|d| d.code == ErrorCode::RequiredFieldMissing)
        {
            errs.push(Diagnostic {
                severity: Severity::Error,
                code: ErrorCode::RequiredFieldMissing,
                location: Some(loc("MSH", 10)),
                text: "MSH-10 message control id is required".into(),
            });
        }
        // Lengths the journal key must hold: checked here, before the store,
        // so an over-long id is a permanent content error, not a store failure
        // the sender would retry forever.
        if header.control_id.len() > MAX_CONTROL_ID_LEN {
            errs.push(Diagnostic {
                severity: Severity::Error,
                code: ErrorCode::DataTypeError,
                location: Some(loc("MSH", 10)),
                text: format!(
                    "MSH-10 message control id is longer than {MAX_CONTROL_ID_LEN} bytes"
                ),
            });
        }
        if header.sending_facility.len() > MAX_FACILITY_LEN {
            errs.push(Diagnostic {
                severity: Severity::Error,
                code: ErrorCode::DataTypeError,
                location: Some(loc("MSH", 4)),
                text: format!("MSH-4 sending facility is longer than {MAX_FACILITY_LEN} bytes"),
            });
        }
        if !errs.is_empty() {
            return now(self.maybe(
                commit_wanted(false),
                &header,
                error,
                "message has errors",
                &errs,
                label,
            ));
        }

        let received_at = chrono::Utc::now();
        let key = dedup_key(&header.sending_facility, &header.control_id, bytes);
        let input = NewInput {
            kind: InputKind::Adt,
            source_org: source.id.clone(),
            dedup_key: key,
            received_at,
            raw: bytes.to_vec(),
            meta: serde_json::json!({
                "type": label,
                "version": header.version,
                "via": match via { Via::Mllp => "mllp", Via::Http { .. } => "http" },
            }),
        };
        let appending = self.processor.intake();
        let waiting = Instant::now();
        let appended = self.store.append_durable(input).await;
        self.metrics
            .journal_wait
            .observe(waiting.elapsed().as_secs_f64());
        let durable = match appended {
            Ok(o) => o,
            Err(StoreError::Invalid(e)) => {
                // Our own checks above should have caught whatever the store
                // refuses: a fault of ours, but resending the same bytes
                // would fail the same way.
                tracing::error!(error = %e, "journal refused an ADT message");
                let err = Diagnostic {
                    severity: Severity::Error,
                    code: ErrorCode::ApplicationInternalError,
                    location: None,
                    text: "the gateway cannot store this message".into(),
                };
                return now(self.maybe(
                    commit_wanted(false),
                    &header,
                    error,
                    "message cannot be stored",
                    &[err],
                    label,
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "journal append failed; NAK so the sender retries");
                let err = Diagnostic {
                    severity: Severity::Error,
                    code: ErrorCode::ApplicationInternalError,
                    location: None,
                    text: "the gateway could not store the message; resend later".into(),
                };
                let code = if mode == Mode::Original {
                    AckCode::AR
                } else {
                    AckCode::CE
                };
                return now(self.maybe(
                    commit_wanted(false),
                    &header,
                    code,
                    "temporarily unable to accept",
                    &[err],
                    label,
                ));
            }
        };
        let warnings: Vec<Diagnostic> = parsed
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .cloned()
            .collect();
        // MSH-16 NE asks for no application ACK: nothing waits for
        // translation then, and the commit ACK costs what an original-mode
        // ACK costs.
        let app_wanted = mode == Mode::Enhanced
            && (wanted(&header.application_ack_type, true)
                || wanted(&header.application_ack_type, false));
        let job_result = match durable {
            Durable::Journaled(outcome) => {
                drop(appending);
                journaled(&self.processor, outcome, app_wanted, label)
            }
            Durable::Logged(answer) => {
                // Durable in the store's intake log: the ACK goes now, the
                // worker's hint (and the application ACK's outcome) once the
                // journal has the row. An error there loses nothing: the
                // store keeps the message and journals it at its next start.
                let processor = self.processor.clone();
                let (tx, rx) = app_wanted.then(oneshot::channel).unzip();
                tokio::spawn(async move {
                    let outcome = match answer.await {
                        Ok(outcome) => outcome,
                        Err(e) => {
                            tracing::error!(error = %e, r#type = label, "acknowledged message not journaled yet; the store journals it at its next start");
                            if let Some(tx) = tx {
                                let _ = tx.send(JobOutcome::Deferred);
                            }
                            return;
                        }
                    };
                    drop(appending);
                    let rx = journaled(&processor, outcome, app_wanted, label);
                    if let Some(tx) = tx {
                        let result = match rx {
                            Some(rx) => rx.await.unwrap_or(JobOutcome::Deferred),
                            None => JobOutcome::Translated,
                        };
                        let _ = tx.send(result);
                    }
                });
                rx
            }
        };
        let ack = if commit_wanted(true) {
            Some(self.build(Some(&header), accept, None, &warnings, label))
        } else {
            self.metrics.hl7_acks.inc(&["suppressed", label]);
            None
        };
        let later = app_wanted.then(|| PendingAppAck {
            header,
            label,
            outcome: job_result,
            deadline: tokio::time::Instant::now() + APP_ACK_WAIT,
        });
        Handled { now: ack, later }
    }

    fn maybe(
        &self,
        send: bool,
        header: &Header,
        code: AckCode,
        text: &str,
        errors: &[Diagnostic],
        label: &'static str,
    ) -> Option<String> {
        if send {
            Some(self.build(Some(header), code, Some(text), errors, label))
        } else {
            self.metrics.hl7_acks.inc(&["suppressed", label]);
            None
        }
    }
}

/// What follows a journal answer: a new record is handed to the worker (with
/// a receiver of its outcome when the application ACK wants it); a duplicate
/// is only logged (its application ACK, if any, says accepted).
fn journaled(
    processor: &ProcessorHandle,
    outcome: AppendOutcome,
    app_wanted: bool,
    label: &'static str,
) -> Option<oneshot::Receiver<JobOutcome>> {
    match outcome {
        AppendOutcome::Inserted(id) => {
            tracing::debug!(journal_id = id, r#type = label, "journaled");
            let (job, rx) = Job::new(id, app_wanted);
            processor.submit(job);
            rx
        }
        AppendOutcome::Duplicate(id) => {
            tracing::info!(
                journal_id = id,
                r#type = label,
                "duplicate HL7 message acknowledged again, not processed twice"
            );
            None
        }
    }
}

fn mode_of(h: &Header) -> Mode {
    if h.accept_ack_type.is_empty() && h.application_ack_type.is_empty() {
        Mode::Original
    } else {
        Mode::Enhanced
    }
}

fn errors_only(d: &[Diagnostic]) -> Vec<Diagnostic> {
    d.iter()
        .filter(|d| d.severity == Severity::Error)
        .cloned()
        .collect()
}

fn loc(segment: &str, field: usize) -> Location {
    Location {
        segment: segment.to_string(),
        sequence: 1,
        field: Some(field),
        repetition: None,
        component: None,
        subcomponent: None,
    }
}

/// "PID^1^3" (as the mapping reports locations) → a Location.
fn parse_erl(s: &str) -> Option<Location> {
    let mut parts = s.split('^');
    let segment = parts.next()?.to_string();
    if segment.len() != 3 {
        return None;
    }
    let mut nums = parts.map(|p| p.parse::<usize>().ok());
    Some(Location {
        segment,
        sequence: nums.next().flatten().unwrap_or(1),
        field: nums.next().flatten(),
        repetition: nums.next().flatten(),
        component: nums.next().flatten(),
        subcomponent: nums.next().flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_conditions() {
        assert!(wanted("AL", true) && wanted("AL", false));
        assert!(!wanted("NE", true) && !wanted("NE", false));
        assert!(!wanted("ER", true) && wanted("ER", false));
        assert!(wanted("SU", true) && !wanted("SU", false));
    }

    const A01: &str = "MSH|^~\\&|EPIC|STMARY|CWSGW|CWSGW|20260115083000||ADT^A01^ADT_A01|MSG00001|P|2.5.1\rEVN|A01|20260115083000\rPID|1||MRN1\rPV1|1|I\r";

    #[test]
    fn content_hash_ignores_msh7_and_segment_terminators() {
        let h = content_hash(A01.as_bytes());
        assert_eq!(h.len(), HASH_HEX_LEN);
        // A resend restamped in MSH-7, with CRLF or LF endings, blank lines,
        // no final terminator or a byte-order mark: the same message.
        let restamped = A01.replace("|20260115083000||ADT", "|20260116091500||ADT");
        assert_ne!(restamped, A01);
        assert_eq!(content_hash(restamped.as_bytes()), h);
        assert_eq!(content_hash(A01.replace('\r', "\r\n").as_bytes()), h);
        assert_eq!(content_hash(A01.replace('\r', "\n").as_bytes()), h);
        assert_eq!(content_hash(A01.replace('\r', "\r\r\n").as_bytes()), h);
        assert_eq!(content_hash(A01.trim_end_matches('\r').as_bytes()), h);
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(A01.as_bytes());
        assert_eq!(content_hash(&bom), h);
        // Another field separator: MSH-7 is found by the message's own.
        let hashed = A01.replace('|', "#");
        assert_eq!(
            content_hash(hashed.as_bytes()),
            content_hash(hashed.replace("#20260115083000##ADT", "#1##ADT").as_bytes())
        );
    }

    #[test]
    fn content_hash_tells_different_messages_apart() {
        let h = content_hash(A01.as_bytes());
        // Another trigger under the same control id (an A03 after the A01).
        let a03 = A01.replace("ADT^A01^ADT_A01", "ADT^A03^ADT_A03");
        assert_ne!(content_hash(a03.as_bytes()), h);
        // One changed byte in another segment, or in another MSH field.
        assert_ne!(content_hash(A01.replace("MRN1", "MRN2").as_bytes()), h);
        assert_ne!(
            content_hash(A01.replace("|P|2.5.1", "|T|2.5.1").as_bytes()),
            h
        );
        // EVN-2 is not MSH-7: a different EVN time is different content.
        assert_ne!(
            content_hash(
                A01.replace("EVN|A01|20260115083000", "EVN|A01|20260116")
                    .as_bytes()
            ),
            h
        );
        // A segment split differently is a different message.
        assert_ne!(content_hash(A01.replace("\rPV1", "PV1").as_bytes()), h);
    }

    #[test]
    fn dedup_keys_share_the_facility_and_control_id_prefix() {
        let key = dedup_key("STMARY", "MSG00001", A01.as_bytes());
        assert_eq!(control_id_prefix(&key), Some("STMARY|MSG00001|"));
        assert_eq!(key.len(), "STMARY|MSG00001|".len() + HASH_HEX_LEN);
        // A '|' inside the control id (another field separator) stays in it.
        let key = dedup_key("STMARY", "A|B", A01.as_bytes());
        assert_eq!(control_id_prefix(&key), Some("STMARY|A|B|"));
        assert_eq!(control_id_prefix("short"), None);
        let longest = dedup_key(
            &"F".repeat(MAX_FACILITY_LEN),
            &"C".repeat(MAX_CONTROL_ID_LEN),
            b"x",
        );
        assert!(longest.len() <= store::MAX_DEDUP_KEY_LEN);
    }

    #[test]
    fn erl_locations_parse() {
        let l = parse_erl("PID^1^3").unwrap();
        assert_eq!(l.segment, "PID");
        assert_eq!(l.field, Some(3));
        assert!(parse_erl("garbage").is_none());
    }
}
