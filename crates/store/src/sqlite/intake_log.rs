//! The intake log: an append is durable once it is in this file and an
//! `fdatasync` of the file covered it, before the journal row behind it is.
//!
//! **Why.** `Store::append` is the durability point of every ACK. Through the
//! journal alone an append waits for three things in a row: a turn on the
//! writer thread, a SQLite transaction (b-tree pages of the journal table and
//! its indexes written as WAL frames, ~11 KB of WAL per append) and then the
//! WAL `fdatasync`. With this log the append writes one framed record
//! (~1 KB) at the end of a preallocated file on the caller's thread, and
//! waits for two things **side by side**: an `fdatasync` of the log by
//! this module's sync thread, and the journal transaction (the writer answers
//! a logged append as soon as its transaction commits, without waiting for
//! the WAL's fsync; see `writer::commit_batch`). Measured in
//! docs/performance.md ("eighth session").
//!
//! **What is promised, and why it holds.**
//! * *No Ok before the message is on disk*: `append` and `append_durable`
//!   answer Ok only after an `fdatasync` of the log that began after the
//!   record's write returned. `append` also waits for the journal
//!   transaction (so a read that starts after it returned sees the row, as
//!   without the log); `append_durable` (the HL7 intake's) hands the
//!   journal's answer back as a future instead.
//! * *A refused row does not lose an acknowledged message*: once a logged
//!   append fails in the journal (a full disk, a poisoned store), the writer
//!   stops moving the applied mark for the rest of the run, so that record
//!   and every later one stay in the log for the next open to replay, and
//!   readiness fails until that restart (`writer::freeze_mark`).
//! * *Nothing answered is lost by a crash or power loss*: the journal row
//!   may not be durable yet when the append answers, but the record is. At
//!   the next open, [`IntakeLog::open`] replays into the journal every
//!   record of the last run that the journal had not durably applied
//!   (`intake_log.applied_seq`, written in the same transaction as the rows
//!   it covers), in one transaction made durable (`synchronous=FULL`) before
//!   anything else runs. The journal's content dedup keys make a replayed
//!   record that was already a row (or a resend) a duplicate, never a second
//!   message.
//! * *A record is replayed once*: records are numbered (`seq`) in the order
//!   they are written AND handed to the writer (both under one lock), so the
//!   writer applies them in `seq` order and `applied_seq` is a prefix mark.
//! * *Torn writes*: each record carries a CRC-32 of its header and body, and
//!   recovery stops at the first record that does not check (or a length of
//!   zero: the preallocated tail). A torn record was never answered: an
//!   answer waits for an `fdatasync` that covers every record written before
//!   it, so no record after a torn one was answered either.
//! * *Stale records*: the log is two segment files reused in turn. A
//!   segment is reused only once every record in it is durably applied, and
//!   every open starts a new epoch (stored durably before the first record
//!   of it is written), so recovery reads only records of the last run's
//!   epoch and newer than `applied_seq`; older bytes behind the end are
//!   skipped or end the scan.
//! * *One process per log*: the first segment is locked (`flock`) for the
//!   store's life. A second process opening the same database gets no log
//!   and appends through the journal alone, as before (correct, slower).
//!
//! A failed `fdatasync` of the log poisons it, as a failed WAL sync poisons
//! the store: every later logged append fails ([`StoreError::Commit`]) until
//! restart, so senders NAK and resend.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use rusqlite::{params, Connection};
use tokio::sync::watch;

use crate::metrics::MetricsRecorder;
use crate::{InputKind, NewInput, StoreError};

/// Bytes a segment is preallocated to, and after which the next record goes
/// to the other segment once that one is free (else this one grows). Two
/// segments of 32 MiB hold ~40,000 ADT messages each.
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;

/// Record header: body length (u32), CRC-32 (u32) of everything after it,
/// epoch (u64), seq (u64).
const HEADER: usize = 24;

/// Longest body a record may have: the journal's limits on every field, and
/// room for the field lengths.
const MAX_BODY: usize = crate::MAX_RAW_BYTES
    + crate::MAX_META_BYTES
    + crate::MAX_SOURCE_ORG_LEN
    + crate::MAX_DEDUP_KEY_LEN
    + 64;

/// The segment files beside the database `db`.
pub(crate) fn segment_paths(db: &Path) -> [PathBuf; 2] {
    [0, 1].map(|i| {
        let mut s = db.as_os_str().to_owned();
        s.push(format!("-intake{i}"));
        PathBuf::from(s)
    })
}

/// One record read back from a segment (of the epoch being replayed).
#[derive(Debug)]
pub(crate) struct Record {
    pub seq: u64,
    pub kind: InputKind,
    pub source_org: String,
    pub dedup_key: String,
    pub received_at_micros: i64,
    pub meta: String,
    pub raw: Vec<u8>,
}

/// The body of a record: received-at (i64 µs), then five length-prefixed
/// fields: the kind's name, source org, dedup key, meta, raw.
pub(crate) fn encode_body(input: &NewInput, meta: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        48 + input.source_org.len() + input.dedup_key.len() + meta.len() + input.raw.len(),
    );
    b.extend_from_slice(&super::rows::to_micros(input.received_at).to_le_bytes());
    for field in [
        input.kind.as_str().as_bytes(),
        input.source_org.as_bytes(),
        input.dedup_key.as_bytes(),
        meta.as_bytes(),
        &input.raw,
    ] {
        b.extend_from_slice(&(field.len() as u32).to_le_bytes());
        b.extend_from_slice(field);
    }
    b
}

fn crc(epoch: u64, seq: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// A whole record: header and body.
fn frame(epoch: u64, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + body.len());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc(epoch, seq, body).to_le_bytes());
    f.extend_from_slice(&epoch.to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(body);
    f
}

fn decode_body(seq: u64, body: &[u8]) -> Option<Record> {
    let received_at_micros = i64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let mut at = 8usize;
    let mut field = || -> Option<&[u8]> {
        let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let f = body.get(at + 4..at + 4 + len)?;
        at += 4 + len;
        Some(f)
    };
    let kind: InputKind = std::str::from_utf8(field()?).ok()?.parse().ok()?;
    let source_org = String::from_utf8(field()?.to_vec()).ok()?;
    let dedup_key = String::from_utf8(field()?.to_vec()).ok()?;
    let meta = String::from_utf8(field()?.to_vec()).ok()?;
    let raw = field()?.to_vec();
    Some(Record {
        seq,
        kind,
        source_org,
        dedup_key,
        received_at_micros,
        meta,
        raw,
    })
}

/// Every record of `epoch` in `segment`, from its start to the first record
/// that does not check (or the zero-filled tail, or the end).
fn scan(segment: &mut impl Read, epoch: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut header = [0u8; HEADER];
    loop {
        if segment.read_exact(&mut header).is_err() {
            break;
        }
        let word = |i: usize| header.get(i..i + 4).and_then(|b| b.try_into().ok());
        let long = |i: usize| header.get(i..i + 8).and_then(|b| b.try_into().ok());
        let (Some(len), Some(sum), Some(e), Some(s)) = (word(0), word(4), long(8), long(16)) else {
            break;
        };
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > MAX_BODY {
            break;
        }
        let mut body = vec![0u8; len];
        if segment.read_exact(&mut body).is_err() {
            break;
        }
        let (e, s) = (u64::from_le_bytes(e), u64::from_le_bytes(s));
        if crc(e, s, &body) != u32::from_le_bytes(sum) {
            break;
        }
        if e != epoch {
            // Bytes of an earlier run behind this run's end (or a reused
            // segment's older records): nothing to replay, read on.
            continue;
        }
        match decode_body(s, &body) {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}

/// The writer side of the log, under one lock.
struct Tail {
    segments: [Arc<File>; 2],
    current: usize,
    offset: u64,
    /// Highest seq written into each segment (0: none this epoch).
    max_seq: [u64; 2],
    /// Segments written since the sync thread last took them.
    dirty: [bool; 2],
    epoch: u64,
    next_seq: u64,
    /// Where the next record goes to the other segment, if it is free.
    segment_bytes: u64,
    /// The store is closing: the sync thread syncs what is left and exits.
    closing: bool,
}

/// What appenders, the sync thread and the writer share.
pub(crate) struct Shared {
    tail: Mutex<Tail>,
    /// Wakes the sync thread when a record was written.
    written: Condvar,
    /// Highest seq covered by a finished `fdatasync`; `u64::MAX` once a
    /// sync failed (see `failed`).
    synced: watch::Sender<u64>,
    failed: OnceLock<String>,
    /// Test support: the next fsync fails (EIO) without reaching the disk.
    #[cfg(feature = "test-support")]
    pub fail_next: std::sync::atomic::AtomicBool,
    /// Highest seq whose journal row is durable (its transaction's WAL fsync
    /// finished): a segment whose records are all at or below it may be
    /// reused. Set by the WAL sync thread.
    pub applied_durable: AtomicU64,
    /// Set by the writer once a logged append failed in the journal: the
    /// applied mark stays where it is for the rest of the run.
    frozen: std::sync::atomic::AtomicBool,
    /// Highest seq the writer has answered (journaled or refused): the seqs
    /// written after it are durable appends the journal does not show yet.
    answered: AtomicU64,
}

impl Shared {
    /// Freeze the applied mark; true the first time.
    pub(crate) fn freeze_mark(&self) -> bool {
        !self.frozen.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn mark_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    /// The writer answered every logged append up to `seq`.
    pub(crate) fn answered(&self, seq: u64) {
        self.answered.fetch_max(seq, Ordering::SeqCst);
    }

    /// Logged appends the writer has not answered yet.
    pub(crate) fn unjournaled(&self) -> u64 {
        let written = self.tail.lock().map_or(0, |t| t.next_seq.saturating_sub(1));
        written.saturating_sub(self.answered.load(Ordering::SeqCst))
    }
}

/// The intake log of one open store.
pub(crate) struct IntakeLog {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
}

/// What [`IntakeLog::open`] did at the open, for the log line.
pub(crate) struct Opened {
    pub log: IntakeLog,
    /// Records replayed that the journal did not have.
    pub replayed: usize,
}

/// What [`IntakeLog::open`] found.
pub(crate) enum Opening {
    /// This store owns the log (and replayed what was left in it).
    Owned(Opened),
    /// Another process holds the log.
    HeldElsewhere,
    /// Another connection held the database's write lock past
    /// [`REPLAY_LOCK_WAIT`]: nothing was replayed or changed, and the log
    /// is left for a later open.
    Busy(String),
}

/// How long the open waits for the database's write lock to replay and
/// start its epoch.
const REPLAY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl IntakeLog {
    /// Open (creating) the segments beside `db`, lock them, replay into the
    /// journal through `conn` (the writer connection, before the writer
    /// thread starts) every record of the last run the journal had not
    /// durably applied, start a new epoch and the sync thread.
    ///
    /// Without [`Opening::Owned`] this store appends through the journal
    /// alone.
    pub(crate) fn open(
        db: &Path,
        conn: &Connection,
        preallocate: bool,
        segment_bytes: u64,
        metrics: Arc<MetricsRecorder>,
    ) -> Result<Opening, String> {
        let paths = segment_paths(db);
        let open = |p: &PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(|e| format!("cannot open intake log {}: {e}", p.display()))
        };
        let first = open(&paths[0])?;
        match first.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(Opening::HeldElsewhere),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock intake log: {e}"))
            }
        }
        let second = open(&paths[1])?;
        let (epoch, applied): (i64, i64) = conn
            .query_row(
                "SELECT epoch, applied_seq FROM intake_log WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| format!("cannot read the intake log's mark: {e}"))?;
        let (epoch, applied) = (epoch.max(0) as u64, applied.max(0) as u64);
        let mut records = Vec::new();
        for f in [&first, &second] {
            let mut reader = BufReader::with_capacity(1 << 20, f);
            records.extend(
                scan(&mut reader, epoch)
                    .into_iter()
                    .filter(|r| r.seq > applied),
            );
        }
        records.sort_by_key(|r| r.seq);
        let (applied, replayed) = match replay(conn, records, applied, epoch + 1) {
            Ok(a) => a,
            Err(Replay::Busy(why)) => return Ok(Opening::Busy(why)),
            Err(Replay::Failed(why)) => return Err(why),
        };
        if preallocate {
            for p in &paths {
                super::wal_sync::preallocate(p, segment_bytes)
                    .map_err(|e| format!("cannot preallocate the intake log: {e}"))?;
            }
        }
        super::wal_sync::sync_dir(&paths[0])
            .map_err(|e| format!("cannot sync the intake log's directory: {e}"))?;
        let (synced, _) = watch::channel(applied);
        let shared = Arc::new(Shared {
            tail: Mutex::new(Tail {
                segments: [Arc::new(first), Arc::new(second)],
                current: 0,
                offset: 0,
                max_seq: [0, 0],
                dirty: [false, false],
                epoch: epoch + 1,
                next_seq: applied + 1,
                segment_bytes,
                closing: false,
            }),
            written: Condvar::new(),
            synced,
            failed: OnceLock::new(),
            #[cfg(feature = "test-support")]
            fail_next: std::sync::atomic::AtomicBool::new(false),
            applied_durable: AtomicU64::new(applied),
            frozen: std::sync::atomic::AtomicBool::new(false),
            answered: AtomicU64::new(applied),
        });
        let thread_shared = Arc::clone(&shared);
        let syncer = std::thread::Builder::new()
            .name("cwsgw-intake-sync".to_string())
            .spawn(move || sync_loop(&thread_shared, &metrics))
            .map_err(|e| format!("cannot start the intake log's sync thread: {e}"))?;
        Ok(Opening::Owned(Opened {
            log: IntakeLog {
                shared,
                syncer: Some(syncer),
            },
            replayed,
        }))
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Why appends or readiness fail: an `fdatasync` of the log failed
    /// (every later append fails), or a logged append could not be
    /// journaled (it waits in the log for the next start's replay).
    pub(crate) fn failed(&self) -> Option<String> {
        if let Some(why) = self.shared.failed.get() {
            return Some(why.clone());
        }
        self.shared.mark_frozen().then(|| {
            "an acknowledged message could not be journaled; it is kept in the intake log and journaled at the next start: restart".to_string()
        })
    }

    /// Write one record and, under the same lock, hand it on with its seq
    /// (`then`), so the writer sees records in seq order. Returns the seq.
    /// `body` is [`encode_body`]'s.
    pub(crate) fn write(&self, body: &[u8], then: impl FnOnce(u64)) -> Result<u64, StoreError> {
        if let Some(why) = self.shared.failed.get() {
            return Err(StoreError::Commit(why.clone()));
        }
        let mut tail = self
            .shared
            .tail
            .lock()
            .map_err(|_| StoreError::Internal("intake log lock poisoned".into()))?;
        let (epoch, seq) = (tail.epoch, tail.next_seq);
        let record = frame(epoch, seq, body);
        let len = record.len() as u64;
        if tail.offset > 0 && tail.offset + len > tail.segment_bytes {
            let other = 1 - tail.current;
            let free = tail.max_seq.get(other).copied().unwrap_or(u64::MAX)
                <= self.shared.applied_durable.load(Ordering::SeqCst);
            if free {
                tail.current = other;
                tail.offset = 0;
            }
        }
        let current = tail.current;
        let Some(file) = tail.segments.get(current).cloned() else {
            return Err(StoreError::Internal("intake log segment".into()));
        };
        file.write_all_at(&record, tail.offset)
            .map_err(|e| StoreError::Commit(format!("intake log write failed: {}", e.kind())))?;
        tail.offset += len;
        tail.next_seq += 1;
        if let Some(m) = tail.max_seq.get_mut(current) {
            *m = seq;
        }
        if let Some(d) = tail.dirty.get_mut(current) {
            *d = true;
        }
        then(seq);
        drop(tail);
        self.shared.written.notify_one();
        Ok(seq)
    }

    /// Wait until an `fdatasync` of the log covered `seq`.
    pub(crate) async fn durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.synced.subscribe();
        let covered = rx
            .wait_for(|s| *s >= seq)
            .await
            .map(|s| *s)
            .map_err(|_| StoreError::Closed)?;
        if covered == u64::MAX {
            let why = self.shared.failed.get().cloned().unwrap_or_default();
            return Err(StoreError::Commit(why));
        }
        Ok(())
    }
}

impl Drop for IntakeLog {
    fn drop(&mut self) {
        if let Ok(mut tail) = self.shared.tail.lock() {
            tail.closing = true;
        }
        self.shared.written.notify_all();
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
    }
}

enum Replay {
    Busy(String),
    Failed(String),
}

/// Replay `records` (seq order) into the journal, mark them applied and
/// start `epoch`, in one durable transaction. Returns the new applied mark
/// and how many records were missing from the journal (the others were
/// duplicates: already rows, or resends of rows).
fn replay(
    conn: &Connection,
    records: Vec<Record>,
    applied: u64,
    epoch: u64,
) -> Result<(u64, usize), Replay> {
    let new_applied = records.last().map_or(applied, |r| r.seq.max(applied));
    // Durable at COMMIT, before anything is written in the new epoch.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| Replay::Failed(format!("cannot replay the intake log: {e}")))?;
    if let Err(e) = super::begin_immediate_within(conn, REPLAY_LOCK_WAIT) {
        let _ = conn.pragma_update(None, "synchronous", "NORMAL");
        return Err(Replay::Busy(format!(
            "another connection holds the database's write lock ({e})"
        )));
    }
    let run = || -> Result<usize, StoreError> {
        let mut inserted = 0;
        for r in records {
            let input = NewInput {
                kind: r.kind,
                source_org: r.source_org,
                dedup_key: r.dedup_key,
                received_at: super::rows::from_micros(r.received_at_micros, "received_at")?,
                raw: r.raw,
                meta: serde_json::Value::Null,
            };
            if let crate::AppendOutcome::Inserted(_) = super::writer::append(conn, &input, &r.meta)?
            {
                inserted += 1;
            }
        }
        conn.execute(
            "UPDATE intake_log SET epoch = ?1, applied_seq = ?2 WHERE id = 1",
            params![epoch as i64, new_applied as i64],
        )?;
        conn.execute_batch("COMMIT")?;
        Ok(inserted)
    };
    let result = run();
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let restored = conn.pragma_update(None, "synchronous", "NORMAL");
    let inserted = result.map_err(|e| {
        Replay::Failed(format!(
            "cannot replay the intake log into the journal: {e}"
        ))
    })?;
    restored.map_err(|e| Replay::Failed(format!("cannot replay the intake log: {e}")))?;
    Ok((new_applied, inserted))
}

fn sync_failure(e: &std::io::Error) -> String {
    format!(
        "intake log fsync failed ({}); appends are refused until restart",
        e.kind()
    )
}

/// The sync thread: while records are written, one `fdatasync` of every
/// segment written since the last, then publish the highest seq it covers.
fn sync_loop(shared: &Shared, metrics: &MetricsRecorder) {
    loop {
        let (seq, files) = {
            let Ok(mut tail) = shared.tail.lock() else {
                return;
            };
            loop {
                let behind = tail.next_seq.saturating_sub(1) > *shared.synced.borrow();
                if behind || tail.closing {
                    break;
                }
                tail = match shared.written.wait(tail) {
                    Ok(t) => t,
                    Err(_) => return,
                };
            }
            let seq = tail.next_seq.saturating_sub(1);
            if seq <= *shared.synced.borrow() {
                // Closing with nothing left to sync.
                return;
            }
            let mut files = Vec::with_capacity(2);
            for i in 0..2 {
                if tail.dirty.get(i).copied().unwrap_or(false) {
                    if let Some(f) = tail.segments.get(i) {
                        files.push(Arc::clone(f));
                    }
                }
            }
            tail.dirty = [false, false];
            (seq, files)
        };
        let syncing = std::time::Instant::now();
        #[cfg(feature = "test-support")]
        if shared.fail_next.swap(false, Ordering::SeqCst) {
            let _ = shared
                .failed
                .set(sync_failure(&std::io::Error::from_raw_os_error(5)));
            shared.synced.send_replace(u64::MAX);
            return;
        }
        let result = files.iter().try_for_each(|f| f.sync_data());
        match result {
            Ok(()) => {
                metrics.record_intake_sync(syncing.elapsed().as_secs_f64());
                shared.synced.send_replace(seq);
            }
            Err(e) => {
                let _ = shared.failed.set(sync_failure(&e));
                shared.synced.send_replace(u64::MAX);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(n: u32) -> NewInput {
        NewInput {
            kind: InputKind::Adt,
            source_org: "st-mary".into(),
            dedup_key: format!("STMARY|{n}|abc"),
            received_at: chrono::Utc::now(),
            raw: format!("MSH|^~\\&|X|STMARY|||||ADT^A01|{n}|P|2.5\r").into_bytes(),
            meta: serde_json::json!({}),
        }
    }

    #[test]
    fn records_round_trip_and_a_scan_stops_at_the_first_bad_one() {
        let mut bytes = Vec::new();
        for n in 1..=3u32 {
            bytes.extend(frame(7, u64::from(n), &encode_body(&input(n), "{\"a\":1}")));
        }
        let good = scan(&mut bytes.as_slice(), 7);
        assert_eq!(good.len(), 3);
        assert_eq!(good[1].seq, 2);
        assert_eq!(good[1].dedup_key, "STMARY|2|abc");
        assert_eq!(good[1].meta, "{\"a\":1}");
        assert_eq!(good[1].raw, input(2).raw);
        // Another epoch's records are skipped, not replayed.
        assert!(scan(&mut bytes.as_slice(), 8).is_empty());
        // A flipped byte in the second record's body ends the scan there.
        let first_len = HEADER + encode_body(&input(1), "{\"a\":1}").len();
        let mut torn = bytes.clone();
        torn[first_len + HEADER + 3] ^= 0xff;
        assert_eq!(scan(&mut torn.as_slice(), 7).len(), 1);
        // A record cut short ends it too; zeros after the last record end it.
        let cut = &bytes[..bytes.len() - 5];
        assert_eq!(scan(&mut &cut[..], 7).len(), 2);
        let mut padded = bytes.clone();
        padded.extend(vec![0u8; 4096]);
        assert_eq!(scan(&mut padded.as_slice(), 7).len(), 3);
    }

    fn journal(dir: &Path) -> (PathBuf, Connection) {
        let db = dir.join("gw.db");
        let conn = Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        super::super::migrate::migrate(&conn).unwrap();
        (db, conn)
    }

    fn open_log(db: &Path, conn: &Connection, segment: u64) -> Opened {
        match IntakeLog::open(db, conn, false, segment, Arc::default()).unwrap() {
            Opening::Owned(o) => o,
            _ => panic!("not owned"),
        }
    }

    /// Write `n` records numbered from `from` as a crash would leave them:
    /// in the log, never handed to the journal.
    fn log_only(log: &IntakeLog, from: u32, n: u32) {
        for i in from..from + n {
            log.write(&encode_body(&input(i), "{}"), |_| {}).unwrap();
        }
    }

    fn rows(conn: &Connection) -> Vec<String> {
        let mut s = conn
            .prepare("SELECT dedup_key FROM journal ORDER BY id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn mark(conn: &Connection) -> (i64, i64) {
        conn.query_row("SELECT epoch, applied_seq FROM intake_log", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    }

    /// What a crash left only in the log is journaled at the next open,
    /// once: a second open replays nothing, and the records keep their
    /// order and content.
    #[test]
    fn records_left_only_in_the_log_are_replayed_once() {
        let dir = tempfile::tempdir().unwrap();
        let (db, conn) = journal(dir.path());
        let opened = open_log(&db, &conn, SEGMENT_BYTES);
        assert_eq!((opened.replayed, mark(&conn)), (0, (1, 0)));
        log_only(&opened.log, 1, 5);
        drop(opened); // syncs what was written, releases the lock
        let again = open_log(&db, &conn, SEGMENT_BYTES);
        assert_eq!(again.replayed, 5);
        assert_eq!(mark(&conn), (2, 5));
        let keys: Vec<String> = (1..=5).map(|i| format!("STMARY|{i}|abc")).collect();
        assert_eq!(rows(&conn), keys);
        let raw: Vec<u8> = conn
            .query_row(
                "SELECT raw FROM journal WHERE dedup_key = ?1",
                [&keys[2]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(raw, input(3).raw);
        drop(again);
        let third = open_log(&db, &conn, SEGMENT_BYTES);
        assert_eq!((third.replayed, rows(&conn).len()), (0, 5));
        // New records continue the numbering after the applied mark.
        log_only(&third.log, 6, 1);
        drop(third);
        assert_eq!(open_log(&db, &conn, SEGMENT_BYTES).replayed, 1);
        assert_eq!(mark(&conn), (4, 6));
    }

    /// A record the journal already has (a resend, or a row that did reach
    /// the journal before the crash with the mark not yet durable) replays
    /// as a duplicate, not as a second message.
    #[test]
    fn a_replayed_record_the_journal_has_is_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let (db, conn) = journal(dir.path());
        let opened = open_log(&db, &conn, SEGMENT_BYTES);
        super::super::writer::append(&conn, &input(1), "{}").unwrap();
        log_only(&opened.log, 1, 2);
        drop(opened);
        assert_eq!(open_log(&db, &conn, SEGMENT_BYTES).replayed, 1);
        assert_eq!(rows(&conn), vec!["STMARY|1|abc", "STMARY|2|abc"]);
        assert_eq!(mark(&conn), (2, 2));
    }

    /// A torn last record (a crash mid-write: it was never acknowledged)
    /// ends the replay; the records before it are journaled.
    #[test]
    fn a_torn_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (db, conn) = journal(dir.path());
        let opened = open_log(&db, &conn, SEGMENT_BYTES);
        log_only(&opened.log, 1, 3);
        drop(opened);
        let seg = &segment_paths(&db)[0];
        let mut bytes = std::fs::read(seg).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x55;
        std::fs::write(seg, &bytes).unwrap();
        assert_eq!(open_log(&db, &conn, SEGMENT_BYTES).replayed, 2);
        assert_eq!(rows(&conn).len(), 2);
    }

    /// The two segments are reused in turn, only once every record in the
    /// other is durably journaled; what a reused segment still holds behind
    /// the new records is never replayed.
    #[test]
    fn segments_are_reused_only_when_applied_and_stale_records_stay_dead() {
        let dir = tempfile::tempdir().unwrap();
        let (db, conn) = journal(dir.path());
        let record = (HEADER + encode_body(&input(10), "{}").len()) as u64;
        let segment = record * 4;
        let opened = open_log(&db, &conn, segment);
        let log = &opened.log;
        let tail = |log: &IntakeLog| {
            let t = log.shared.tail.lock().unwrap();
            (t.current, t.offset / record)
        };
        // Four fill segment 0; the fifth starts segment 1, unused so far.
        log_only(log, 10, 5);
        assert_eq!(tail(log), (1, 1));
        // Segment 1 full too, and segment 0 not yet durably journaled: the
        // ninth grows segment 1.
        log_only(log, 15, 4);
        assert_eq!(tail(log), (1, 5));
        // Journal rows for seqs 1..=8 as the writer would have made them,
        // and 1..=4 durable: the tenth goes to segment 0, over record 1.
        for i in 10..18 {
            super::super::writer::append(&conn, &input(i), "{}").unwrap();
        }
        conn.execute("UPDATE intake_log SET applied_seq = 8", [])
            .unwrap();
        log.shared.applied_durable.store(4, Ordering::SeqCst);
        log_only(log, 19, 1);
        assert_eq!(tail(log), (0, 1));
        drop(opened);
        // Replayed: seq 9 (segment 1) and 10 (segment 0's new start), not
        // the stale 2..=4 behind 10 in segment 0.
        let again = open_log(&db, &conn, segment);
        assert_eq!(again.replayed, 2);
        let keys = rows(&conn);
        assert_eq!(keys.len(), 10);
        assert_eq!(keys[8], "STMARY|18|abc");
        assert_eq!(keys[9], "STMARY|19|abc");
    }

    /// One process per log: a second open of the same database gets none.
    #[test]
    fn a_second_open_gets_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let (db, conn) = journal(dir.path());
        let first = open_log(&db, &conn, SEGMENT_BYTES);
        let second = IntakeLog::open(&db, &conn, false, SEGMENT_BYTES, Arc::default()).unwrap();
        assert!(matches!(second, Opening::HeldElsewhere));
        drop(first);
        let third = IntakeLog::open(&db, &conn, false, SEGMENT_BYTES, Arc::default()).unwrap();
        assert!(matches!(third, Opening::Owned(_)));
    }

    #[test]
    fn a_body_too_short_for_its_fields_is_not_a_record() {
        let body = encode_body(&input(1), "{}");
        assert!(decode_body(1, &body[..body.len() - 1]).is_none());
        assert!(decode_body(1, &[9]).is_none());
        // An unknown kind is not a record either.
        let mut unknown = body.clone();
        unknown[12] = b'x';
        assert!(decode_body(1, &unknown).is_none());
    }
}
