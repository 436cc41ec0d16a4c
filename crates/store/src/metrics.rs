//! Write-path metrics: commit counts, a commit-latency histogram and group
//! commit batch sizes. Updated by the writer thread under a short mutex;
//! [`crate::Store::metrics`] copies a snapshot without IO.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (`le`, seconds) of the commit latency histogram buckets.
pub const COMMIT_SECONDS_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Snapshot of the store's write-path metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    /// Write transactions committed (one per group commit batch).
    pub commits: u64,
    /// Inputs newly journaled.
    pub appended_inputs: u64,
    /// Appends answered as duplicates.
    pub duplicate_inputs: u64,
    /// Sum of commit latencies (begin → fsync'd commit), seconds.
    pub commit_seconds_sum: f64,
    /// Cumulative Prometheus buckets `(le, count)` over
    /// [`COMMIT_SECONDS_BUCKETS`]; `+Inf` is `commits`.
    pub commit_seconds_buckets: Vec<(f64, u64)>,
    /// Most requests ever committed in one transaction.
    pub largest_batch: u64,
    /// Write requests queued for the writer right now.
    pub writer_queue_depth: u64,
    /// fsyncs of the WAL by the SQLite sync thread (each covers every
    /// commit made since the previous one); 0 where the backend syncs
    /// inside its commits.
    pub wal_syncs: u64,
    /// Seconds spent inside those fsyncs (the disk's share of a commit).
    pub wal_sync_seconds_sum: f64,
    /// fsyncs of the SQLite store's intake log (each covers every append
    /// logged since the previous one); 0 without the log.
    pub intake_syncs: u64,
    /// Seconds spent inside those fsyncs.
    pub intake_sync_seconds_sum: f64,
    /// Appends the journal did not have, replayed into it from the intake
    /// log when the store opened (a crash or power loss left them out).
    pub intake_replayed: u64,
    /// Appends durable in the intake log (and acknowledged, where the
    /// caller used `append_durable`) that the writer has not answered yet:
    /// the journal shows them a commit later. Exported as the gauge
    /// `cwsgw_store_intake_unjournaled`.
    pub intake_unjournaled: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: u64,
    appended_inputs: u64,
    duplicate_inputs: u64,
    commit_seconds_sum: f64,
    /// Non-cumulative counts per bucket; cumulated on snapshot.
    bucket_counts: [u64; COMMIT_SECONDS_BUCKETS.len()],
    largest_batch: u64,
    wal_syncs: u64,
    wal_sync_seconds_sum: f64,
    intake_syncs: u64,
    intake_sync_seconds_sum: f64,
    intake_replayed: u64,
}

/// Shared between the writer thread and the store handle.
#[derive(Debug, Default)]
pub(crate) struct MetricsRecorder {
    counters: Mutex<Counters>,
    queue_depth: AtomicU64,
}

impl MetricsRecorder {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        // A poisoned lock only means a panic elsewhere mid-update of plain
        // counters; the numbers are still usable.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request entered the writer queue.
    pub(crate) fn enqueued(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// A request left the writer queue (or was never queued).
    pub(crate) fn dequeued(&self) {
        // Saturating: never wrap below zero.
        let _ = self
            .queue_depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(1))
            });
    }

    /// One committed batch.
    pub(crate) fn record_commit(&self, seconds: f64, batch: usize, appended: u64, duplicates: u64) {
        let mut c = self.counters();
        c.commits += 1;
        c.appended_inputs += appended;
        c.duplicate_inputs += duplicates;
        c.commit_seconds_sum += seconds;
        if let Some(i) = COMMIT_SECONDS_BUCKETS.iter().position(|le| seconds <= *le) {
            if let Some(slot) = c.bucket_counts.get_mut(i) {
                *slot += 1;
            }
        }
        c.largest_batch = c.largest_batch.max(batch as u64);
    }

    /// A transaction that changed no row: no commit to count, but the
    /// duplicate appends it answered are still counted.
    pub(crate) fn record_unwritten(&self, duplicates: u64) {
        self.counters().duplicate_inputs += duplicates;
    }

    /// One finished transaction: a commit if it changed a row (`wrote`),
    /// else only the duplicate appends it answered.
    pub(crate) fn record_transaction(
        &self,
        wrote: bool,
        seconds: f64,
        batch: usize,
        appended: u64,
        duplicates: u64,
    ) {
        if wrote {
            self.record_commit(seconds, batch, appended, duplicates);
        } else {
            self.record_unwritten(duplicates);
        }
    }

    /// One WAL fsync by the sync thread.
    pub(crate) fn record_wal_sync(&self, seconds: f64) {
        let mut c = self.counters();
        c.wal_syncs += 1;
        c.wal_sync_seconds_sum += seconds;
    }

    /// One fsync of the intake log.
    pub(crate) fn record_intake_sync(&self, seconds: f64) {
        let mut c = self.counters();
        c.intake_syncs += 1;
        c.intake_sync_seconds_sum += seconds;
    }

    /// Appends replayed from the intake log at open.
    pub(crate) fn record_intake_replayed(&self, n: u64) {
        self.counters().intake_replayed += n;
    }

    pub(crate) fn snapshot(&self) -> StoreMetrics {
        let c = self.counters();
        let mut cumulative = 0;
        let commit_seconds_buckets = COMMIT_SECONDS_BUCKETS
            .iter()
            .zip(c.bucket_counts.iter())
            .map(|(le, n)| {
                cumulative += n;
                (*le, cumulative)
            })
            .collect();
        StoreMetrics {
            commits: c.commits,
            appended_inputs: c.appended_inputs,
            duplicate_inputs: c.duplicate_inputs,
            commit_seconds_sum: c.commit_seconds_sum,
            commit_seconds_buckets,
            largest_batch: c.largest_batch,
            writer_queue_depth: self.queue_depth.load(Ordering::Relaxed),
            wal_syncs: c.wal_syncs,
            wal_sync_seconds_sum: c.wal_sync_seconds_sum,
            intake_syncs: c.intake_syncs,
            intake_sync_seconds_sum: c.intake_sync_seconds_sum,
            intake_replayed: c.intake_replayed,
            intake_unjournaled: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = MetricsRecorder::default();
        m.record_commit(0.0001, 3, 3, 0);
        m.record_commit(0.003, 1, 0, 1);
        m.record_commit(10.0, 7, 7, 0);
        let s = m.snapshot();
        assert_eq!(s.commits, 3);
        assert_eq!(s.appended_inputs, 10);
        assert_eq!(s.duplicate_inputs, 1);
        assert_eq!(s.largest_batch, 7);
        assert_eq!(s.commit_seconds_buckets.len(), 12);
        assert_eq!(s.commit_seconds_buckets[0], (0.0005, 1));
        assert_eq!(s.commit_seconds_buckets[2], (0.0025, 1));
        assert_eq!(s.commit_seconds_buckets[3], (0.005, 2));
        // 10 s is above the last bucket: only in +Inf (= commits).
        assert_eq!(s.commit_seconds_buckets[11], (2.5, 2));
        assert!((s.commit_seconds_sum - 10.0031).abs() < 1e-9);
    }

    #[test]
    fn queue_depth_never_wraps() {
        let m = MetricsRecorder::default();
        m.dequeued();
        assert_eq!(m.snapshot().writer_queue_depth, 0);
        m.enqueued();
        m.enqueued();
        m.dequeued();
        assert_eq!(m.snapshot().writer_queue_depth, 1);
    }
}
