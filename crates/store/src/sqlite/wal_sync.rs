//! The WAL sync thread: durability without the writer waiting for the disk.
//!
//! With [`Durability::Pipelined`](super::Durability::Pipelined) (the
//! default) the writer connection runs `synchronous=NORMAL`: a `COMMIT`
//! writes its WAL frames into the page cache and returns without an fsync.
//! The writer then hands the batch's held replies to this thread and goes on
//! with the next batch. This thread takes every batch handed over so far,
//! runs ONE `fdatasync` of the WAL file — which makes every frame written
//! before it began durable — and only then sends the replies. So one batch's
//! fsync overlaps the next batch's work, and one fsync covers every commit
//! made while the previous fsync ran.
//!
//! Why this is as durable as `synchronous=FULL` for what we promise:
//! * **No reply says Ok before its commit is on disk**: a batch's replies
//!   are sent only after an `fdatasync` that started after its `COMMIT`
//!   returned.
//! * **What survives a power loss is a prefix of the commits**: WAL frames
//!   carry cumulative checksums and recovery stops at the first frame that
//!   does not match, so a later commit is never kept without an earlier one.
//!   A reply therefore also vouches for everything committed before it —
//!   e.g. a disclosure's audit record for the consent it was decided on.
//! * SQLite keeps the WAL itself consistent in `NORMAL` (it syncs the WAL
//!   header when it restarts the log and before every checkpoint); the
//!   checkpoint thread syncs the database file before the log is reused.
//! * The WAL file's directory entry is synced once at open
//!   ([`sync_dir`]); the file is not deleted while the store is open (the
//!   read connections keep it).
//! * The WAL is opened once, when the store opens, and this thread holds
//!   that descriptor ([`WalFile`]): SQLite resets and truncates the log in
//!   place, never replacing the file while a connection is open, so the
//!   held descriptor always names the file SQLite writes. No descriptor is
//!   opened per sync, so a process out of descriptors (EMFILE, ENFILE) —
//!   a flood of connections — cannot make a sync fail.
//!
//! What differs from `FULL`: a read connection may see a commit up to one
//! fsync (~1 ms) before it is durable. Only a power loss (not a process
//! crash: the frames are in the kernel's page cache) inside that window can
//! lose it, and nothing that was answered depends on it.
//!
//! **A failed fsync poisons the store** (only `fdatasync` itself failing,
//! e.g. EIO or ENOSPC, does): after it the kernel may have
//! dropped the dirty pages, so nothing committed since can be vouched for.
//! Every waiting reply and every later write fails with
//! [`StoreError::Commit`](crate::StoreError::Commit) until the process is
//! restarted (recovery then reads what is really on disk). Senders NAK and
//! resend; the journal's dedup keys make resends harmless.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;

use super::writer::{Outcome, WriteOp};
use crate::metrics::MetricsRecorder;

/// Batches committed but not yet synced that the writer may hand over
/// before it waits for this thread (backpressure).
pub(crate) const MAX_PENDING_BATCHES: usize = 256;

/// One committed batch whose replies wait for the WAL sync.
pub(crate) struct Committed {
    /// When its transaction began (the commit latency ends at the sync).
    pub started: Instant,
    /// It changed a row. A batch that changed none wrote no WAL frame: it
    /// is answered in its turn (after the fsync of everything before it)
    /// but needs no fsync of its own and is not counted as a commit.
    pub wrote: bool,
    /// Its commit was counted by the writer already (it answered logged
    /// appends at the commit).
    pub recorded: bool,
    pub size: usize,
    pub appended: u64,
    pub duplicates: u64,
    /// The intake log's applied mark this batch wrote, if any: durable once
    /// this batch is synced.
    pub applied_seq: Option<u64>,
    pub outcomes: Vec<Outcome>,
}

/// What the writer and the sync thread share.
#[derive(Default)]
pub(crate) struct SyncState {
    /// Set once, by the first failed fsync; then every write fails.
    pub failed: OnceLock<String>,
    /// Batches handed over and not yet answered (the writer holds its
    /// transaction open while this is not 0).
    pub in_flight: AtomicUsize,
    /// The writer is holding a transaction open, waiting for
    /// `in_flight == 0`: wake it when that happens.
    pub holding: AtomicBool,
    /// Test support: the next fsync fails (EIO) without reaching the disk.
    #[cfg(feature = "test-support")]
    pub fail_next: AtomicBool,
}

/// The writer's end.
pub(crate) struct WalSync {
    pub tx: SyncSender<Committed>,
    pub state: Arc<SyncState>,
}

/// The `-wal` file SQLite keeps beside the database `db`.
pub(crate) fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// fsync the directory holding `file`, so its entry (the WAL file's
/// creation) is durable.
pub(crate) fn sync_dir(file: &Path) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Bytes of the WAL file's header, and of each frame's header (SQLite's
/// WAL format: a frame is this header and one page).
pub(crate) const WAL_HEADER: i64 = 32;
pub(crate) const WAL_FRAME_HEADER: i64 = 24;

/// Extend the WAL file `wal` with zeros up to `target` bytes and make that
/// durable; returns the bytes added (0 when it is already that long). The
/// intake log's segment files are filled the same way, for the same reason
/// (`intake_log.rs`).
///
/// Why: a commit that writes past the end of the file makes the next
/// `fdatasync` commit the file system's allocation and size metadata too.
/// Measured on this project's 2-core machine (ext4), `fdatasync` after a
/// 24 KiB write: 224–238 µs median when the write grew the file, 144–156 µs
/// when it overwrote blocks already written, 212–220 µs over blocks only
/// `fallocate`d (their extents still change on first write) — so the blocks
/// are written, not just reserved. After a start the WAL begins empty and
/// grows for its first few hundred MiB; with it zero-filled, send-and-wait
/// ingest went from 10.4–11.2k to 11.7–13.4k msg/s in three interleaved
/// pairs (docs/performance.md).
///
/// Safe only while nothing else writes the WAL (at open, before the writer
/// thread starts, holding SQLite's write lock against other processes:
/// `fill_wal_under_write_lock` in `mod.rs`): the zeros go past the last frame, and SQLite never reads
/// a frame past the first one whose salt and checksum do not match, so
/// recovery stops where the log ends, as with a log that was restarted.
/// On an error (a full disk) the file is cut back to its length before.
pub(crate) fn preallocate(wal: &Path, target: u64) -> std::io::Result<u64> {
    let mut f = std::fs::OpenOptions::new().write(true).open(wal)?;
    let start = f.metadata()?.len();
    if start >= target {
        return Ok(0);
    }
    if let Err(e) = zero_fill(&mut f, start, target) {
        let _ = f.set_len(start);
        return Err(e);
    }
    Ok(target - start)
}

/// Write zeros over `from..to` of `f`, then `fdatasync` it.
fn zero_fill(f: &mut std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    f.seek(SeekFrom::Start(from))?;
    let mut left = to.saturating_sub(from);
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        f.write_all(zeros.get(..n).unwrap_or(&zeros))?;
        left -= n as u64;
    }
    f.sync_data()
}

/// The WAL file, opened once and held by the sync thread.
pub(crate) struct WalFile(std::fs::File);

impl WalFile {
    /// Open the WAL SQLite keeps at `wal` (it must exist: open after the
    /// writer connection has written through it). fsync works on a
    /// read-only descriptor (Linux).
    pub(crate) fn open(wal: &Path) -> std::io::Result<WalFile> {
        std::fs::File::open(wal).map(WalFile)
    }

    /// One `fdatasync`: makes every frame written before it durable. An
    /// error here is a real fsync failure (the descriptor is held, nothing
    /// is opened), and poisons the store.
    fn sync(&self) -> Result<(), String> {
        self.0.sync_data().map_err(|e| sync_failure(&e))
    }
}

fn sync_failure(e: &std::io::Error) -> String {
    format!(
        "WAL fsync failed ({}); writes are refused until restart",
        e.kind()
    )
}

/// One sync of the held WAL (or, with `test-support`, an injected failure).
fn sync_once(wal: &WalFile, shared: &SyncState) -> Result<(), String> {
    #[cfg(feature = "test-support")]
    if shared.fail_next.swap(false, Ordering::SeqCst) {
        return Err(sync_failure(&std::io::Error::from_raw_os_error(5)));
    }
    let _ = shared;
    wal.sync()
}

/// The thread body: until the writer hangs up, sync and answer.
///
/// `wake` wakes a holding writer ([`WriteOp::Wake`]); it is weak, so the
/// writer's channel still closes when the store is dropped.
pub(crate) fn run(
    wal: WalFile,
    rx: Receiver<Committed>,
    shared: Arc<SyncState>,
    wake: mpsc::WeakSender<WriteOp>,
    metrics: &MetricsRecorder,
    log: Option<Arc<super::intake_log::Shared>>,
) {
    let failed = &shared.failed;
    let mut batches: Vec<Committed> = Vec::new();
    while let Ok(first) = rx.recv() {
        batches.push(first);
        // Everything committed so far shares this fsync.
        while batches.len() < MAX_PENDING_BATCHES {
            match rx.try_recv() {
                Ok(more) => batches.push(more),
                Err(_) => break,
            }
        }
        let round = batches.len();
        // Only batches that changed nothing (idle polls): every earlier
        // batch was synced by an earlier round, so there is nothing to sync.
        let wrote = batches.iter().any(|b| b.wrote);
        let syncing = Instant::now();
        let result = match failed.get() {
            Some(why) => Err(why.clone()),
            None if !wrote => Ok(()),
            None => sync_once(&wal, &shared),
        };
        match result {
            Ok(()) => {
                if wrote {
                    metrics.record_wal_sync(syncing.elapsed().as_secs_f64());
                }
                for b in batches.drain(..) {
                    if let (Some(log), Some(seq)) = (&log, b.applied_seq) {
                        log.applied_durable.fetch_max(seq, Ordering::SeqCst);
                    }
                    // A batch the writer counted at its commit (it answered
                    // logged appends then) is not counted again.
                    if !b.recorded {
                        metrics.record_transaction(
                            b.wrote,
                            b.started.elapsed().as_secs_f64(),
                            b.size,
                            b.appended,
                            b.duplicates,
                        );
                    }
                    for o in b.outcomes {
                        o.deliver(None);
                    }
                }
            }
            Err(why) => {
                let _ = failed.set(why.clone());
                for b in batches.drain(..) {
                    for o in b.outcomes {
                        o.deliver(Some(&why));
                    }
                }
            }
        }
        // Everything handed over so far is answered: a writer holding its
        // transaction for this commits now (its next fsync starts at once).
        if shared.in_flight.fetch_sub(round, Ordering::SeqCst) == round
            && shared.holding.load(Ordering::SeqCst)
        {
            if let Some(tx) = wake.upgrade() {
                // Full: requests are queued, and each one ends the hold.
                let _ = tx.try_send(WriteOp::Wake);
            }
        }
    }
    // The writer hung up: everything it handed over has been answered.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_path_appends_the_suffix() {
        assert_eq!(
            wal_path(Path::new("/x/gw.db")),
            PathBuf::from("/x/gw.db-wal")
        );
        assert_eq!(wal_path(Path::new("gw.db")), PathBuf::from("gw.db-wal"));
    }

    #[test]
    fn preallocate_appends_zeros_after_what_is_there_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-wal");
        std::fs::write(&path, b"frames").unwrap();
        let target = 3 * (1 << 20) + 5;
        assert_eq!(preallocate(&path, target).unwrap(), target - 6);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, target);
        assert_eq!(&bytes[..6], b"frames");
        assert!(bytes[6..].iter().all(|b| *b == 0));
        // Already that long (or longer): nothing is written.
        assert_eq!(preallocate(&path, target).unwrap(), 0);
        assert_eq!(preallocate(&path, 10).unwrap(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), target);
    }

    #[test]
    fn a_missing_wal_fails_the_open_with_its_kind() {
        let Err(e) = WalFile::open(Path::new("/nonexistent-dir-cwsgw/db-wal")) else {
            panic!("opened a missing file");
        };
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn the_held_wal_syncs_after_its_path_is_gone() {
        // The descriptor, not the path, is synced: nothing is opened per sync.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-wal");
        std::fs::write(&path, b"frames").unwrap();
        let wal = WalFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        wal.sync().unwrap();
        wal.sync().unwrap();
    }
}
