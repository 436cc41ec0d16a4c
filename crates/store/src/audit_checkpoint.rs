//! Signed checkpoints of the audit chain head, kept outside the database.
//!
//! A keyed chain cannot be edited and re-sealed without the key, but two
//! things stay invisible from inside the database: the tail deleted with
//! the head row moved back, and (for the unkeyed version-1 part) records
//! edited with every later hash recomputed. A checkpoint pins the head as
//! it was: `(seq, hash, time)` with an HMAC-SHA256 under the audit key, one
//! JSON object per line appended to a file (`[audit] checkpoint_file`)
//! and written to the log. [`check`] then requires the chain to reach the
//! checkpoint's seq with exactly the checkpoint's hash there.
//!
//! The MAC input is
//!
//! ```text
//! "cwsgw-audit-checkpoint-v1" "\n" key_id "\n" seq "\n" hash "\n" time
//! ```
//!
//! with `time` RFC 3339 with microseconds and `Z`. Lines hold ids, counts
//! and hashes only — no PHI.
//!
//! Invariants: a line is written with one `write` of the whole line to a
//! file opened for appending, then `fsync`ed; a reader ignores a last line
//! without its newline (a write torn by a crash) and rejects every other
//! line that does not parse or whose MAC does not verify (the file was
//! edited), and checkpoints whose seq goes down.

use std::io::Write as _;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditKey, AuditKeys};
use crate::{Store, StoreError};

const DOMAIN: &[u8] = b"cwsgw-audit-checkpoint-v1";
/// Largest checkpoint file read (64 MiB, ~500,000 checkpoints).
pub const MAX_CHECKPOINT_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// One signed checkpoint of the chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The head's seq.
    pub seq: i64,
    /// The record's hash at `seq` (the genesis hash for seq 0).
    pub hash: String,
    /// When the checkpoint was taken (RFC 3339, microseconds, `Z`).
    pub time: String,
    /// The key that signed it.
    pub key_id: String,
    /// Hex HMAC-SHA256 (see module docs).
    pub mac: String,
}

impl Checkpoint {
    fn parts<'a>(key_id: &'a str, seq: &'a str, hash: &'a str, time: &'a str) -> [&'a [u8]; 5] {
        [
            DOMAIN,
            key_id.as_bytes(),
            seq.as_bytes(),
            hash.as_bytes(),
            time.as_bytes(),
        ]
    }

    /// Sign `(seq, hash, time)` with `key`.
    pub fn sign(key: &AuditKey, seq: i64, hash: &str, time: DateTime<Utc>) -> Checkpoint {
        let time = time.to_rfc3339_opts(SecondsFormat::Micros, true);
        let s = seq.to_string();
        let mac = key.sign(&Checkpoint::parts(key.id(), &s, hash, &time));
        Checkpoint {
            seq,
            hash: hash.to_string(),
            time,
            key_id: key.id().to_string(),
            mac,
        }
    }

    /// Does the MAC verify under a key of `keys`?
    pub fn verify(&self, keys: &AuditKeys) -> bool {
        let Some(key) = keys.get(&self.key_id) else {
            return false;
        };
        let s = self.seq.to_string();
        key.verify(
            &Checkpoint::parts(&self.key_id, &s, &self.hash, &self.time),
            &self.mac,
        )
    }

    /// The line written to the file (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Append one checkpoint line to `path` (created if missing, mode 0600 on
/// Unix) and fsync it.
pub fn append(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    let mut line = cp.to_line();
    line.push('\n');
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// The latest checkpoint in `path`, every line checked (see module docs).
/// `Ok(None)` when the file does not exist or holds no checkpoint. Errors
/// name the line number and what is wrong, never the content.
pub fn latest(path: &Path, keys: &AuditKeys) -> Result<Option<Checkpoint>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("checkpoint file: {e}")),
    };
    if meta.len() > MAX_CHECKPOINT_FILE_BYTES {
        return Err(format!(
            "checkpoint file is larger than {MAX_CHECKPOINT_FILE_BYTES} bytes; rotate it"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("checkpoint file: {e}"))?;
    let complete = match text.rfind('\n') {
        Some(end) => text.get(..end).unwrap_or(""),
        None => "",
    };
    let mut last: Option<Checkpoint> = None;
    for (n, line) in complete.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cp: Checkpoint = serde_json::from_str(line)
            .map_err(|_| format!("checkpoint file line {n} is not a checkpoint"))?;
        if !cp.verify(keys) {
            return Err(format!(
                "checkpoint file line {n}: the MAC does not verify under any configured key (edited, or signed with a key not configured)"
            ));
        }
        if last.as_ref().is_some_and(|l| cp.seq < l.seq) {
            return Err(format!(
                "checkpoint file line {n}: seq {} is lower than the line before",
                cp.seq
            ));
        }
        last = Some(cp);
    }
    Ok(last)
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chain is intact up to its head `head_seq`, and reaches the
    /// checkpoint (if any) with the checkpoint's hash.
    Intact {
        /// The head's seq.
        head_seq: i64,
        /// The checkpoint checked against, if any.
        checkpoint_seq: Option<i64>,
    },
    /// The first record whose content, link or version does not match.
    Broken(i64),
    /// The chain ends before the checkpoint: records were removed.
    Truncated {
        /// The head's seq now.
        head_seq: i64,
        /// The checkpoint's seq.
        checkpoint_seq: i64,
    },
    /// The record at the checkpoint's seq has another hash: the chain was
    /// rewritten up to there.
    Rewritten {
        /// The checkpoint's seq.
        seq: i64,
    },
}

/// Verify the chain ([`Store::audit_verify`], with the store's keys) and
/// then against `checkpoint`: the head must be at or beyond its seq, and the
/// record at that seq must carry its hash.
pub async fn check(
    store: &dyn Store,
    checkpoint: Option<&Checkpoint>,
) -> Result<Verdict, StoreError> {
    if let Some(seq) = store.audit_verify().await? {
        return Ok(Verdict::Broken(seq));
    }
    let (head_seq, _) = store.audit_head().await?;
    let Some(cp) = checkpoint else {
        return Ok(Verdict::Intact {
            head_seq,
            checkpoint_seq: None,
        });
    };
    if head_seq < cp.seq {
        return Ok(Verdict::Truncated {
            head_seq,
            checkpoint_seq: cp.seq,
        });
    }
    if cp.seq > 0 {
        let at = store.audit_list(cp.seq - 1, 1, None, None).await?;
        match at.first() {
            Some(r) if r.seq == cp.seq && r.hash == cp.hash => {}
            _ => return Ok(Verdict::Rewritten { seq: cp.seq }),
        }
    }
    Ok(Verdict::Intact {
        head_seq,
        checkpoint_seq: Some(cp.seq),
    })
}

/// Take a checkpoint of the current head with the current key: `Ok(None)`
/// when there is no key or the head is still `after` (nothing new).
pub async fn take(
    store: &dyn Store,
    keys: &AuditKeys,
    after: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Option<Checkpoint>, StoreError> {
    let Some(key) = keys.current() else {
        return Ok(None);
    };
    let (seq, hash) = store.audit_head().await?;
    if after == Some(seq) {
        return Ok(None);
    }
    Ok(Some(Checkpoint::sign(key, seq, &hash, now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> AuditKeys {
        AuditKeys::from_keys(vec![AuditKey::new("k1", vec![3u8; 32]).unwrap()])
    }

    #[test]
    fn checkpoints_round_trip_and_edits_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.jsonl");
        let k = keys();
        let key = k.current().unwrap();
        assert_eq!(latest(&path, &k).unwrap(), None);
        let a = Checkpoint::sign(key, 3, &"a".repeat(64), Utc::now());
        let b = Checkpoint::sign(key, 7, &"b".repeat(64), Utc::now());
        append(&path, &a).unwrap();
        append(&path, &b).unwrap();
        assert_eq!(latest(&path, &k).unwrap(), Some(b.clone()));
        // A torn last line (no newline) is ignored.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":9").unwrap();
        drop(f);
        assert_eq!(latest(&path, &k).unwrap(), Some(b.clone()));
        // An edited seq (or any field) no longer verifies.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"seq\":7", "\"seq\":2")).unwrap();
        let e = latest(&path, &k).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        // Another key does not verify.
        let other = AuditKeys::from_keys(vec![AuditKey::new("k1", vec![4u8; 32]).unwrap()]);
        std::fs::write(&path, format!("{}\n", a.to_line())).unwrap();
        assert!(latest(&path, &other).is_err());
        // Going backwards is rejected.
        std::fs::write(&path, format!("{}\n{}\n", b.to_line(), a.to_line())).unwrap();
        assert!(latest(&path, &k).unwrap_err().contains("lower"));
    }
}
