//! The MLLP listener: TCP in, bounded framing (`hl7v2::mllp::FrameDecoder`),
//! one reply per framed message, in order, per connection.
//!
//! **Architecture Invariant: a framed message always gets an ACK or NAK.** The
//! connection task handles the frames it has (one, or several when the sender
//! pipelines) and writes their replies in frame order before reading on, so
//! replies keep the order of the messages. Oversize
//! frames are answered `AR` (the decoder keeps their head so MSA-2 can name the
//! control id); unparseable ones `AE`. Bytes outside any frame cannot be
//! answered and are counted and dropped. Idle connections are closed after
//! `mllp.idle_timeout_secs`; at most `mllp.max_connections` are served at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use hl7v2::mllp::{frame, FrameDecoder, FrameEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::intake::{AdtIntake, Via};
use crate::telemetry::Metrics;

/// Most messages of one connection handled together when a sender pipelines.
const MAX_PIPELINE: usize = 64;

pub struct MllpServer {
    pub intake: Arc<AdtIntake>,
    pub metrics: Arc<Metrics>,
    pub max_frame: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl MllpServer {
    /// Accept until `shutdown` turns true; then stop accepting and let open
    /// connections finish the frame they are on.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.changed() => break,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    let this = self.clone();
                    let sd = shutdown.clone();
                    tokio::spawn(async move {
                        this.metrics
                            .mllp_connections
                            .fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = this.serve_connection(stream, sd).await {
                            tracing::debug!(error = %e, "MLLP connection ended with an error");
                        }
                        this.metrics
                            .mllp_connections
                            .fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MLLP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::info!("MLLP listener stopped");
    }

    /// The replies (zero, one, or two in enhanced mode) to one decoder event.
    async fn reply_to(&self, ev: FrameEvent) -> Vec<String> {
        match ev {
            FrameEvent::Frame(payload) => self.intake.handle(&payload, &Via::Mllp).await,
            FrameEvent::Oversize { head, len } => {
                self.metrics.mllp_frame_errors.inc(&["oversize"]);
                vec![self.intake.oversize(&head, len)]
            }
            FrameEvent::Garbage { len } => {
                self.metrics.mllp_frame_errors.inc(&["garbage"]);
                tracing::debug!(bytes = len, "discarded bytes outside an MLLP frame");
                Vec::new()
            }
        }
    }

    async fn serve_connection(
        &self,
        mut stream: TcpStream,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let mut decoder = FrameDecoder::new(self.max_frame);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Take every complete event before reading more. A sender that
            // pipelines gets its messages handled together: each message runs
            // until its journal append, the appends are issued in frame order
            // (join_all polls in order) and share one group commit, and the
            // replies are written in frame order.
            let mut events = Vec::new();
            while events.len() < MAX_PIPELINE {
                match decoder.next_event() {
                    Some(ev) => events.push(ev),
                    None => break,
                }
            }
            if !events.is_empty() {
                let replies = join_all(events.into_iter().map(|ev| self.reply_to(ev))).await;
                let mut out = Vec::new();
                for ack in replies.into_iter().flatten() {
                    out.extend_from_slice(&frame(ack.as_bytes()));
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                }
                continue;
            }
            if *shutdown.borrow() && !decoder.in_frame() {
                return Ok(());
            }
            let n = tokio::select! {
                r = tokio::time::timeout(self.idle_timeout, stream.read(&mut buf)) => match r {
                    Ok(r) => r?,
                    Err(_) => {
                        tracing::debug!("closing idle MLLP connection");
                        return Ok(());
                    }
                },
                _ = shutdown.changed(), if !decoder.in_frame() => return Ok(()),
            };
            if n == 0 {
                if decoder.in_frame() {
                    self.metrics.mllp_frame_errors.inc(&["truncated"]);
                    tracing::debug!(
                        bytes = decoder.buffered_len(),
                        "connection closed inside a frame"
                    );
                }
                return Ok(());
            }
            let data = buf.get(..n).unwrap_or(&[]);
            decoder.push(data);
        }
    }
}
