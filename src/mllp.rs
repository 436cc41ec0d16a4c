//! The MLLP listener: TCP in, bounded framing (`hl7v2::mllp::FrameDecoder`),
//! one reply per framed message, in order, per connection.
//!
//! **Architecture Invariant: a framed message always gets an ACK or NAK.** The
//! connection task handles its frames one after another and writes each reply
//! before reading on, so replies keep the order of the messages. Oversize
//! frames are answered `AR` (the decoder keeps their head so MSA-2 can name the
//! control id); unparseable ones `AE`. Bytes outside any frame cannot be
//! answered and are counted and dropped. Idle connections are closed after
//! `mllp.idle_timeout_secs`; at most `mllp.max_connections` are served at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hl7v2::mllp::{frame, FrameDecoder, FrameEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::intake::{AdtIntake, Via};
use crate::telemetry::Metrics;

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

    async fn serve_connection(
        &self,
        mut stream: TcpStream,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let mut decoder = FrameDecoder::new(self.max_frame);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Drain every complete event before reading more.
            while let Some(ev) = decoder.next_event() {
                match ev {
                    FrameEvent::Frame(payload) => {
                        for ack in self.intake.handle(&payload, &Via::Mllp).await {
                            stream.write_all(&frame(ack.as_bytes())).await?;
                        }
                    }
                    FrameEvent::Oversize { head, len } => {
                        self.metrics.mllp_frame_errors.inc(&["oversize"]);
                        let ack = self.intake.oversize(&head, len);
                        stream.write_all(&frame(ack.as_bytes())).await?;
                    }
                    FrameEvent::Garbage { len } => {
                        self.metrics.mllp_frame_errors.inc(&["garbage"]);
                        tracing::debug!(bytes = len, "discarded bytes outside an MLLP frame");
                    }
                }
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
