//! The audit chain's key and checkpoints, from the `[audit]` configuration
//! (docs/audit.md): which keys seal and verify the chain, where the signed
//! checkpoints of its head go, the checkpoint task `serve` runs, and the
//! report of `cws-gateway audit verify`.
//!
//! Invariants:
//! - **Keys never come from the database**: `CWSGW_AUDIT_KEY`, else
//!   `[audit] key_file`, else (only with `demo_key = true`) the built-in,
//!   public demo key. `serve` refuses to start without a key while
//!   `require_key` is true (the default).
//! - Nothing here logs or prints a key, PHI or a record body: checkpoints
//!   hold a seq, a hash, a time, a key id and a MAC.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use store::audit_checkpoint::{self, Checkpoint, Verdict};
use store::{AuditKeys, Store};
use tokio::sync::watch;

use crate::config::Config;

/// The key ring in the environment (`id:hex[,id:hex…]`, last current).
pub const ENV_AUDIT_KEY: &str = "CWSGW_AUDIT_KEY";
/// Largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The configured key ring: `CWSGW_AUDIT_KEY`, else `[audit] key_file`,
/// else the demo key when `demo_key = true`, else none.
pub fn keys(cfg: &Config) -> anyhow::Result<AuditKeys> {
    keys_from(cfg, std::env::var(ENV_AUDIT_KEY).ok())
}

/// [`keys`] with the environment value given.
pub fn keys_from(cfg: &Config, env: Option<String>) -> anyhow::Result<AuditKeys> {
    if let Some(text) = env.filter(|t| !t.trim().is_empty()) {
        return AuditKeys::parse(&text).map_err(|e| anyhow!("{ENV_AUDIT_KEY}: {e}"));
    }
    if let Some(path) = &cfg.audit.key_file {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("[audit] key_file {}", path.display()))?;
        if meta.len() > MAX_KEY_FILE_BYTES {
            bail!("[audit] key_file {} is too large", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the audit key file is readable by group or others; chmod 600 it"
                );
            }
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("[audit] key_file {}", path.display()))?;
        return AuditKeys::parse(&text)
            .map_err(|e| anyhow!("[audit] key_file {}: {e}", path.display()));
    }
    if cfg.audit.demo_key {
        return Ok(AuditKeys::demo());
    }
    Ok(AuditKeys::none())
}

/// Refuse to serve without a key while `[audit] require_key` is true.
pub fn require_key(cfg: &Config, keys: &AuditKeys) -> anyhow::Result<()> {
    if keys.is_empty() && cfg.audit.require_key {
        bail!(
            "no audit key: set [audit] key_file or {ENV_AUDIT_KEY} (id:hex, at least 32 bytes); \
             demo_key = true only for the demo, require_key = false to run unkeyed"
        );
    }
    if keys.is_demo() {
        tracing::warn!(
            "the audit chain is sealed with the PUBLIC DEMO KEY ([audit] demo_key): it proves nothing; never use it with real data"
        );
    } else if keys.is_empty() {
        tracing::warn!("no audit key ([audit] require_key = false): the audit chain is unkeyed");
    }
    Ok(())
}

/// Where checkpoints are appended: `[audit] checkpoint_file`, else beside
/// the SQLite database (`{database}.audit-checkpoints`), else none.
pub fn checkpoint_path(cfg: &Config) -> Option<PathBuf> {
    if let Some(p) = &cfg.audit.checkpoint_file {
        return Some(p.clone());
    }
    let url = cfg.store.url.trim();
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().filter(|p| !p.is_empty())?;
    Some(PathBuf::from(format!("{path}.audit-checkpoints")))
}

/// Take a checkpoint if the head moved since `last`: append it to the file
/// (if any) and log it. Returns the checkpointed seq.
pub async fn checkpoint_once(
    store: &dyn Store,
    keys: &AuditKeys,
    path: Option<&PathBuf>,
    last: Option<i64>,
) -> anyhow::Result<Option<i64>> {
    let Some(cp) = audit_checkpoint::take(store, keys, last, chrono::Utc::now()).await? else {
        return Ok(last);
    };
    if cp.seq == 0 {
        // An empty chain: nothing to pin yet.
        return Ok(last);
    }
    if let Some(path) = path {
        let (p, c) = (path.clone(), cp.clone());
        tokio::task::spawn_blocking(move || audit_checkpoint::append(&p, &c))
            .await
            .map_err(|e| anyhow!("checkpoint task: {e}"))?
            .with_context(|| format!("appending to {}", path.display()))?;
    }
    tracing::info!(
        audit_seq = cp.seq,
        audit_hash = %cp.hash,
        key_id = %cp.key_id,
        mac = %cp.mac,
        "audit checkpoint"
    );
    Ok(Some(cp.seq))
}

/// The checkpoint task of `serve`: one at start, then every
/// `checkpoint_every_secs` when the head moved, and one at shutdown. `None`
/// without a key (nothing to sign with).
pub fn spawn_checkpoints(
    cfg: &Config,
    store: Arc<dyn Store>,
    keys: AuditKeys,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    keys.current()?;
    let path = checkpoint_path(cfg);
    let every = Duration::from_secs(cfg.audit.checkpoint_every_secs.clamp(1, 86_400));
    Some(tokio::spawn(async move {
        let mut last = None;
        loop {
            match checkpoint_once(store.as_ref(), &keys, path.as_ref(), last).await {
                Ok(seq) => last = seq,
                Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|v| *v) => {}
            }
        }
    }))
}

/// `cws-gateway audit verify`: (intact?, one line to print).
pub async fn verify(cfg: &Config, store: &dyn Store) -> anyhow::Result<(bool, String)> {
    let keys = keys(cfg)?;
    let latest: Option<Checkpoint> = match checkpoint_path(cfg) {
        Some(p) => audit_checkpoint::latest(&p, &keys).map_err(|e| anyhow!("{e}"))?,
        None => None,
    };
    Ok(
        match audit_checkpoint::check(store, latest.as_ref()).await? {
            Verdict::Intact {
                checkpoint_seq: Some(cp),
                head_seq,
            } => (
                true,
                format!("audit trail intact ({head_seq} records; checkpoint at record {cp} matches)"),
            ),
            Verdict::Intact {
                checkpoint_seq: None,
                head_seq,
            } => (
                true,
                format!("audit trail intact ({head_seq} records; no checkpoint to compare)"),
            ),
            Verdict::Broken(seq) => (false, format!("audit trail broken at record {seq}")),
            Verdict::Truncated {
                head_seq,
                checkpoint_seq,
            } => (
                false,
                format!(
                    "audit trail truncated: it ends at record {head_seq}, the checkpoint is at record {checkpoint_seq}"
                ),
            ),
            Verdict::Rewritten { seq } => (
                false,
                format!("audit trail rewritten: record {seq} does not match its checkpoint"),
            ),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        Config::from_toml(
            &format!("[store]\nurl = \"sqlite://data/gw.db\"\n[audit]\n{extra}\n"),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn keys_come_from_env_then_file_then_demo() {
        let hex = "ab".repeat(32);
        let c = cfg("demo_key = true");
        assert!(keys_from(&c, None).unwrap().is_demo());
        let k = keys_from(&c, Some(format!("env1:{hex}"))).unwrap();
        assert_eq!(k.current().unwrap().id(), "env1");
        assert!(keys_from(&cfg(""), None).unwrap().is_empty());
        assert!(require_key(&cfg(""), &AuditKeys::none()).is_err());
        assert!(require_key(&cfg("require_key = false"), &AuditKeys::none()).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("audit.key");
        std::fs::write(&f, format!("old:{hex}\nnew:{}\n", "cd".repeat(32))).unwrap();
        let c = cfg(&format!("key_file = \"{}\"", f.display()));
        assert_eq!(keys_from(&c, None).unwrap().current().unwrap().id(), "new");
        std::fs::write(&f, "new:cdcd\n").unwrap();
        let e = keys_from(&c, None).unwrap_err().to_string();
        assert!(!e.contains("cdcd"), "{e}");
        let e = keys_from(&c, Some("x:12".into())).unwrap_err().to_string();
        assert!(e.contains(ENV_AUDIT_KEY) && !e.contains("12"), "{e}");
    }

    #[test]
    fn checkpoints_go_beside_the_sqlite_database_unless_configured() {
        assert_eq!(
            checkpoint_path(&cfg("")),
            Some(PathBuf::from("data/gw.db.audit-checkpoints"))
        );
        assert_eq!(
            checkpoint_path(&cfg("checkpoint_file = \"/var/log/cp\"")),
            Some(PathBuf::from("/var/log/cp"))
        );
        let pg = Config::from_toml("[store]\nurl = \"postgres://db/x\"\n", "t").unwrap();
        assert_eq!(checkpoint_path(&pg), None);
    }
}
