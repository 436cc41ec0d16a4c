//! Forward-only schema migrations for PostgreSQL.
//!
//! Same semantics as the SQLite backend's:
//! * migrations are applied in ascending version order, each in its own
//!   transaction together with its `schema_migrations` row, so a failed
//!   migration leaves the database at the previous version;
//! * a database whose highest recorded version is above the highest this
//!   binary embeds is refused ([`StoreError::MigrationsNewer`]);
//! * a recorded version whose name differs from the embedded one means a
//!   different migration history ([`StoreError::Corrupt`]).
//!
//! Several instances starting at once serialise on a session-level
//! advisory lock ([`MIGRATION_LOCK`]) held for the whole check-and-apply,
//! so exactly one of them applies each migration and the others see it done.

use store::StoreError;
use tokio_postgres::Client;

use crate::error::pg;

/// Embedded migrations: `(version, name, sql)`, ascending. Never edit a
/// released migration; add a new file.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "outbox_audit_search",
        include_str!("../migrations/0002_outbox_audit_search.sql"),
    ),
    (
        3,
        "audit_keyed",
        include_str!("../migrations/0003_audit_keyed.sql"),
    ),
    (
        4,
        "audit_jcs",
        include_str!("../migrations/0004_audit_jcs.sql"),
    ),
];

/// The advisory lock (two-int form, so it cannot collide with the
/// single-bigint outbox key locks) held while migrating.
const MIGRATION_LOCK: (i32, i32) = (0x4357_4757, 1);

/// Highest migration version this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Bring the database up to [`latest_version`]; returns how many ran.
pub(crate) async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
        )
        .await
        .map_err(pg)?;
    let out = migrate_locked(client).await;
    // Also released when the connection closes, should this fail.
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
        )
        .await;
    out
}

async fn migrate_locked(client: &mut Client) -> Result<usize, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    bigint PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg)?;
    let applied: Vec<(i64, String)> = client
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(pg)?;
    let binary = latest_version();
    if let Some(&(db, _)) = applied.last() {
        if db > binary {
            return Err(StoreError::MigrationsNewer { db, binary });
        }
    }
    for (version, name) in &applied {
        match MIGRATIONS.iter().find(|m| m.0 == *version) {
            Some(m) if m.1 == name => {}
            _ => {
                return Err(StoreError::Corrupt(format!(
                "schema_migrations has version {version} ({name}) which this binary does not ship"
            )))
            }
        }
    }
    let mut ran = 0;
    for &(version, name, body) in MIGRATIONS {
        if applied.iter().any(|(v, _)| *v == version) {
            continue;
        }
        let fail = |e: tokio_postgres::Error| StoreError::Migration {
            version,
            name,
            reason: pg(e).to_string(),
        };
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(body).await.map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        ran += 1;
    }
    Ok(ran)
}
