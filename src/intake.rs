//! ADT intake, shared by the MLLP listener and `POST /hl7/v2`: bytes in,
//! acknowledgement(s) out.
//!
//! **Architecture Invariant: no ACK before the input is durable.** An `AA`/`CA`
//! is built only after `Store::append` returned Ok, which means the journal
//! transaction (group-committed with its neighbours) is on disk. Every other
//! outcome is a NAK that tells the sender what to do: `AR`/`CR` for a message we
//! will never take as sent (unknown facility, not ADT) or could not store right
//! now (retry), `AE`/`CE` for a message whose content is broken.
//!
//! Acknowledgement modes: original mode (AA/AE/AR) unless MSH-15 or MSH-16 is
//! valued, which asks for enhanced mode: a commit ACK (CA/CE/CR) governed by
//! MSH-15, then an application ACK (AA/AE) governed by MSH-16 once the message
//! has been translated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hl7v2::ack::{self, AckCode, AckSpec};
use hl7v2::{Diagnostic, ErrorCode, Header, Location, ParseOptions, Severity};
use store::{AppendOutcome, InputKind, NewInput, Store};

use crate::config::{Config, OrgKind};
use crate::processor::{Job, JobOutcome, ProcessorHandle};
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

    /// Answer a frame that was too large to take: `AR`, with MSA-2 when its head
    /// still shows MSH-10.
    pub fn oversize(&self, head: &[u8], len: usize) -> String {
        let parsed = hl7v2::parse(head, &self.parse_opts);
        let header = parsed.message.as_ref().map(|m| m.header());
        let label = header
            .as_ref()
            .map(|h| message_type_label(&h.message_code, &h.trigger_event))
            .unwrap_or("other");
        self.metrics.hl7_received.inc(&[label]);
        let text = format!(
            "message of {len} bytes exceeds the limit of {} bytes",
            self.cfg.mllp.max_frame_bytes
        );
        let err = Diagnostic {
            severity: Severity::Error,
            code: ErrorCode::ApplicationInternalError,
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

    /// Handle one HL7 message; returns the acknowledgement(s) to send, in order
    /// (none only when enhanced mode asked for none).
    pub async fn handle(&self, bytes: &[u8], via: &Via) -> Vec<String> {
        let started = Instant::now();
        let acks = self.handle_inner(bytes, via).await;
        self.metrics
            .ack_latency
            .observe(started.elapsed().as_secs_f64());
        acks
    }

    async fn handle_inner(&self, bytes: &[u8], via: &Via) -> Vec<String> {
        let parsed = hl7v2::parse(bytes, &self.parse_opts);
        let Some(msg) = parsed.message.as_ref() else {
            self.metrics.hl7_received.inc(&["other"]);
            tracing::info!(
                diagnostics = parsed.diagnostics.len(),
                "unparseable HL7 message"
            );
            let errs = errors_only(&parsed.diagnostics);
            return vec![self.build(
                None,
                AckCode::AE,
                Some("message could not be parsed"),
                &errs,
                "other",
            )];
        };
        let header = msg.header();
        let label = message_type_label(&header.message_code, &header.trigger_event);
        self.metrics.hl7_received.inc(&[label]);
        let mode = mode_of(&header);
        let (reject, error, accept) = match mode {
            Mode::Original => (AckCode::AR, AckCode::AE, AckCode::AA),
            Mode::Enhanced => (AckCode::CR, AckCode::CE, AckCode::CA),
        };
        let commit_wanted =
            |success: bool| mode == Mode::Original || wanted(&header.accept_ack_type, success);

        // Who sent it: MSH-4 must belong to an adt_source (and, over HTTP, to the caller's).
        let source = match via {
            Via::Mllp => self.cfg.adt_source_for_facility(&header.sending_facility),
            Via::Http { org_id } => self
                .cfg
                .organization(org_id)
                .filter(|o| o.kind == OrgKind::AdtSource)
                .filter(|o| o.sending_facilities.contains(&header.sending_facility)),
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
            return self.maybe(
                commit_wanted(false),
                &header,
                reject,
                "unknown sending facility",
                &[err],
                label,
            );
        };
        if header.message_code != "ADT" {
            let err = Diagnostic {
                severity: Severity::Error,
                code: ErrorCode::UnsupportedMessageType,
                location: Some(loc("MSH", 9)),
                text: "only ADT messages are accepted".into(),
            };
            return self.maybe(
                commit_wanted(false),
                &header,
                reject,
                "unsupported message type",
                &[err],
                label,
            );
        }
        let errs = errors_only(&parsed.diagnostics);
        if parsed
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
            || header.control_id.is_empty()
        {
            let mut errs = errs;
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
            return self.maybe(
                commit_wanted(false),
                &header,
                error,
                "message has errors",
                &errs,
                label,
            );
        }

        let received_at = chrono::Utc::now();
        let input = NewInput {
            kind: InputKind::Adt,
            source_org: source.id.clone(),
            dedup_key: format!("{}|{}", header.sending_facility, header.control_id),
            received_at,
            raw: bytes.to_vec(),
            meta: serde_json::json!({
                "type": label,
                "version": header.version,
                "via": match via { Via::Mllp => "mllp", Via::Http { .. } => "http" },
            }),
        };
        let appending = self.processor.intake();
        let appended = self.store.append(input).await;
        drop(appending);
        let outcome = match appended {
            Ok(o) => o,
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
                return self.maybe(
                    commit_wanted(false),
                    &header,
                    code,
                    "temporarily unable to accept",
                    &[err],
                    label,
                );
            }
        };
        let warnings: Vec<Diagnostic> = parsed
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .cloned()
            .collect();
        let mut acks = Vec::with_capacity(2);
        let app_wanted = mode == Mode::Enhanced && !header.application_ack_type.is_empty();
        let job_result = match outcome {
            AppendOutcome::Inserted(id) => {
                tracing::debug!(journal_id = id, r#type = label, "journaled");
                let (job, rx) = Job::new(id, app_wanted);
                self.processor.submit(job);
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
        };
        if commit_wanted(true) {
            acks.push(self.build(Some(&header), accept, None, &warnings, label));
        }
        if app_wanted {
            let outcome = match job_result {
                Some(rx) => match tokio::time::timeout(APP_ACK_WAIT, rx).await {
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
                    if wanted(&header.application_ack_type, true) {
                        acks.push(self.build(Some(&header), AckCode::AA, None, &[], label));
                    }
                }
                JobOutcome::Failed { code, location } => {
                    if wanted(&header.application_ack_type, false) {
                        let err = Diagnostic {
                            severity: Severity::Error,
                            code: ErrorCode::ApplicationInternalError,
                            location: location.as_deref().and_then(parse_erl),
                            text: format!("translation failed: {code}"),
                        };
                        acks.push(self.build(
                            Some(&header),
                            AckCode::AE,
                            Some("translation failed"),
                            &[err],
                            label,
                        ));
                    }
                }
            }
        }
        acks
    }

    fn maybe(
        &self,
        send: bool,
        header: &Header,
        code: AckCode,
        text: &str,
        errors: &[Diagnostic],
        label: &'static str,
    ) -> Vec<String> {
        if send {
            vec![self.build(Some(header), code, Some(text), errors, label)]
        } else {
            self.metrics.hl7_acks.inc(&["suppressed", label]);
            Vec::new()
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

    #[test]
    fn erl_locations_parse() {
        let l = parse_erl("PID^1^3").unwrap();
        assert_eq!(l.segment, "PID");
        assert_eq!(l.field, Some(3));
        assert!(parse_erl("garbage").is_none());
    }
}
