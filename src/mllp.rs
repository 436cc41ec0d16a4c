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
//!
//! Enhanced mode: the commit ACK is written as soon as the message is durable,
//! with the original-mode replies, by the connection task; an application
//! ACK (MSH-16 other than `NE`) is owed until translation has an outcome, and
//! a second task per connection writes those in frame order once known. So
//! on one connection commit ACKs keep the frame order, application ACKs keep
//! the frame order, and a message's application ACK always follows its own
//! commit ACK — but may come after the commit ACKs of later messages.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use hl7v2::mllp::{frame, FrameDecoder, FrameEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Mutex, Semaphore};

use crate::intake::{AdtIntake, PendingAppAck, Via};
use crate::telemetry::Metrics;

/// Most messages of one connection handled together when a sender pipelines.
const MAX_PIPELINE: usize = 64;
/// Most application ACKs one connection may owe before it stops reading.
const MAX_OWED_APP_ACKS: usize = 1024;

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

    /// The reply to send now (if any) to one decoder event, and the
    /// application ACK owed later (enhanced mode).
    async fn reply_to(&self, ev: FrameEvent) -> (Option<String>, Option<PendingAppAck>) {
        match ev {
            FrameEvent::Frame(payload) => {
                let h = self.intake.handle_split(&payload, &Via::Mllp).await;
                (h.now, h.later)
            }
            FrameEvent::Oversize { head, len } => {
                self.metrics.mllp_frame_errors.inc(&["oversize"]);
                (Some(self.intake.oversize(&head, len, self.max_frame)), None)
            }
            FrameEvent::Garbage { len } => {
                self.metrics.mllp_frame_errors.inc(&["garbage"]);
                tracing::debug!(bytes = len, "discarded bytes outside an MLLP frame");
                (None, None)
            }
        }
    }

    async fn serve_connection(
        &self,
        stream: TcpStream,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let wr = Arc::new(Mutex::new(wr));
        // Application ACKs, in frame order, each queued after its commit ACK
        // was written.
        let (owed, mut owed_rx) = mpsc::channel::<PendingAppAck>(MAX_OWED_APP_ACKS);
        let intake = Arc::clone(&self.intake);
        let app_wr = Arc::clone(&wr);
        let app_acks = tokio::spawn(async move {
            while let Some(pending) = owed_rx.recv().await {
                if let Some(ack) = intake.app_ack(pending).await {
                    let mut w = app_wr.lock().await;
                    if w.write_all(&frame(ack.as_bytes())).await.is_err() {
                        return;
                    }
                }
            }
        });
        let read = self.read_loop(rd, &wr, owed, shutdown).await;
        // Owed application ACKs still go out (each waits at most the
        // application-ACK bound) before the connection closes.
        let _ = app_acks.await;
        read
    }

    async fn read_loop(
        &self,
        mut rd: OwnedReadHalf,
        wr: &Mutex<OwnedWriteHalf>,
        owed: mpsc::Sender<PendingAppAck>,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
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
                let mut later = Vec::new();
                for (now, owed_later) in replies {
                    if let Some(ack) = now {
                        out.extend_from_slice(&frame(ack.as_bytes()));
                    }
                    later.extend(owed_later);
                }
                if !out.is_empty() {
                    wr.lock().await.write_all(&out).await?;
                }
                for pending in later {
                    if owed.send(pending).await.is_err() {
                        return Ok(());
                    }
                }
                continue;
            }
            if *shutdown.borrow() && !decoder.in_frame() {
                return Ok(());
            }
            let n = tokio::select! {
                r = tokio::time::timeout(self.idle_timeout, rd.read(&mut buf)) => match r {
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
