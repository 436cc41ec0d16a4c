//! The MLLP listener: TCP in, bounded framing (`hl7v2::mllp::FrameDecoder`),
//! one reply per framed message, in order, per connection.
//!
//! **Architecture Invariant: a framed message always gets an ACK or NAK.** The
//! connection task handles the frames it has (one, or several when the sender
//! pipelines) and writes their replies in frame order before reading on, so
//! replies keep the order of the messages. Oversize
//! frames are answered `AR` (the decoder keeps their head so MSA-2 can name the
//! control id); unparseable ones `AE`. Bytes outside any frame cannot be
//! answered and are counted and dropped.
//!
//! **Architecture Invariant: no peer holds an MLLP slot without completing
//! frames.** A frame must complete within `mllp.frame_timeout_secs` of the
//! read that brought its first byte (bytes after the previous frame start the
//! clock; more bytes do not reset it), and a connection that completes no
//! frame for `mllp.idle_timeout_secs` is closed (bytes outside frames do not
//! count as activity). At most `mllp.max_connections` are served at once (a
//! connection past that waits for a slot) and at most
//! `mllp.max_connections_per_peer` from one IP address (a connection past
//! that is closed at once). Both are counted in
//! `cwsgw_mllp_slots_exhausted_total{limit}` and logged with the peer address.
//!
//! Enhanced mode: the commit ACK is written as soon as the message is durable,
//! with the original-mode replies, by the connection task; an application
//! ACK (MSH-16 other than `NE`) is owed until translation has an outcome, and
//! a second task per connection writes those in frame order once known. So
//! on one connection commit ACKs keep the frame order, application ACKs keep
//! the frame order, and a message's application ACK always follows its own
//! commit ACK — but may come after the commit ACKs of later messages.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use hl7v2::mllp::{frame, FrameDecoder, FrameEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Mutex, Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::sources::adt::intake::{AdtIntake, PendingAppAck, Via};
use crate::telemetry::{Metrics, RateLimitedLog};

/// Most messages of one connection handled together when a sender pipelines.
const MAX_PIPELINE: usize = 64;
/// Most application ACKs one connection may owe before it stops reading.
const MAX_OWED_APP_ACKS: usize = 1024;

pub struct MllpServer {
    pub intake: Arc<AdtIntake>,
    pub metrics: Arc<Metrics>,
    pub max_frame: usize,
    pub idle_timeout: Duration,
    /// A frame must complete within this long of its first byte.
    pub frame_timeout: Duration,
    pub max_connections: usize,
    /// Most connections served at once for one peer IP address.
    pub max_connections_per_peer: usize,
}

/// Open connections per peer IP address, capped.
struct PeerSlots {
    max: usize,
    open: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PeerSlots`]; freed on drop.
struct PeerSlot {
    slots: Arc<PeerSlots>,
    ip: IpAddr,
}

impl PeerSlots {
    fn new(max: usize) -> Arc<PeerSlots> {
        Arc::new(PeerSlots {
            max,
            open: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map stays consistent even if a holder panicked.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `ip`, or `None` when it already has `max` connections.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = self.open();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            slots: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open();
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl MllpServer {
    /// Accept until `shutdown` turns true; then stop accepting and let open
    /// connections finish the frame they are on.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let peers = PeerSlots::new(self.max_connections_per_peer);
        let (per_peer_log, global_log) = (RateLimitedLog::new(), RateLimitedLog::new());
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "MLLP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(peer_slot) = peers.take(peer.ip().to_canonical()) else {
                self.metrics.mllp_slots_exhausted.inc(&["per_peer"]);
                if let Some(skipped) = per_peer_log.permit() {
                    tracing::warn!(
                        peer = %peer,
                        limit = self.max_connections_per_peer,
                        not_logged_since = skipped,
                        "MLLP connection refused: this address has mllp.max_connections_per_peer open"
                    );
                }
                drop(stream);
                continue;
            };
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(TryAcquireError::Closed) => break,
                Err(TryAcquireError::NoPermits) => {
                    // Every slot is taken: this connection waits (the ones
                    // behind it wait in the kernel's accept queue).
                    self.metrics.mllp_slots_exhausted.inc(&["max_connections"]);
                    if let Some(skipped) = global_log.permit() {
                        tracing::warn!(
                            peer = %peer,
                            limit = self.max_connections,
                            not_logged_since = skipped,
                            "MLLP connection waits for a slot: mllp.max_connections are open"
                        );
                    }
                    tokio::select! {
                        p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                        _ = shutdown.changed() => break,
                    }
                }
            };
            let this = self.clone();
            let sd = shutdown.clone();
            tokio::spawn(async move {
                this.metrics
                    .mllp_connections
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(e) = this.serve_connection(stream, peer, sd).await {
                    tracing::debug!(error = %e, "MLLP connection ended with an error");
                }
                this.metrics
                    .mllp_connections
                    .fetch_sub(1, Ordering::Relaxed);
                drop(permit);
                drop(peer_slot);
            });
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
        peer: SocketAddr,
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
        let read = self.read_loop(rd, &wr, owed, peer, shutdown).await;
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
        peer: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let mut decoder = FrameDecoder::new(self.max_frame);
        let mut buf = vec![0u8; 64 * 1024];
        // When the read that brought the first byte not yet part of a
        // complete frame ended: that frame must complete within
        // `frame_timeout` of it, however the bytes trickle in. `None` while
        // no frame is open.
        let mut frame_started: Option<Instant> = None;
        let mut last_read = Instant::now();
        // When a frame last completed (or the connection opened): with no
        // frame open, the connection closes `idle_timeout` after it. Bytes
        // outside frames are not activity.
        let mut last_frame = Instant::now();
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
                let completed = events
                    .iter()
                    .any(|ev| !matches!(ev, FrameEvent::Garbage { .. }));
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
                if completed {
                    frame_started = None;
                    last_frame = Instant::now();
                }
                continue;
            }
            // A frame left open after the last complete one began in the
            // last read (or earlier, and is already timed).
            if decoder.in_frame() {
                frame_started.get_or_insert(last_read);
            } else {
                frame_started = None;
            }
            if *shutdown.borrow() && !decoder.in_frame() {
                return Ok(());
            }
            let deadline = match frame_started {
                Some(started) => started + self.frame_timeout,
                None => last_frame + self.idle_timeout,
            };
            let n = tokio::select! {
                r = tokio::time::timeout_at(deadline, rd.read(&mut buf)) => match r {
                    Ok(r) => r?,
                    Err(_) if frame_started.is_some() => {
                        self.metrics.mllp_frame_errors.inc(&["timeout"]);
                        tracing::warn!(
                            peer = %peer,
                            bytes = decoder.buffered_len(),
                            "closing MLLP connection: frame not complete within mllp.frame_timeout_secs"
                        );
                        return Ok(());
                    }
                    Err(_) => {
                        tracing::debug!(peer = %peer, "closing idle MLLP connection");
                        return Ok(());
                    }
                },
                _ = shutdown.changed(), if !decoder.in_frame() => return Ok(()),
            };
            last_read = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_slots_cap_each_address_and_free_on_drop() {
        let slots = PeerSlots::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let first = slots.take(a).expect("first");
        let second = slots.take(a).expect("second");
        assert!(slots.take(a).is_none(), "a third from one address");
        // Another address is not affected.
        let other = slots.take(b).expect("another address");
        drop(first);
        let again = slots.take(a).expect("a freed slot is reusable");
        drop((second, again, other));
        assert!(slots.open().is_empty(), "no entry left behind");
    }
}
