//! Forward-only schema migrations for SQLite.
//!
//! Invariants:
//! * migrations are applied in ascending version order, each in its own
//!   `BEGIN IMMEDIATE` transaction together with its `schema_migrations` row,
//!   so a failed migration leaves the database at the previous version;
//! * a database whose highest recorded version is above the highest this
//!   binary embeds is refused ([`StoreError::MigrationsNewer`]) — an older
//!   binary must not write a schema it does not understand;
//! * a recorded version whose name differs from the embedded one means the
//!   database came from a different migration history
//!   ([`StoreError::Corrupt`]).

use chrono::{SecondsFormat, Utc};
use rusqlite::{params, Connection};

use super::sql;
use crate::StoreError;

/// Highest migration version this binary knows.
pub(crate) fn latest_version() -> i64 {
    sql::MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Bring the database up to [`latest_version`]. Returns how many migrations ran.
pub(crate) fn migrate(conn: &Connection) -> Result<usize, StoreError> {
    conn.execute_batch(sql::CREATE_SCHEMA_MIGRATIONS)?;
    let applied = applied(conn)?;
    let binary = latest_version();
    if let Some(&(db, _)) = applied.last() {
        if db > binary {
            return Err(StoreError::MigrationsNewer { db, binary });
        }
    }
    for (version, name) in &applied {
        match sql::MIGRATIONS.iter().find(|m| m.0 == *version) {
            Some(m) if m.1 == name => {}
            _ => {
                return Err(StoreError::Corrupt(format!(
                "schema_migrations has version {version} ({name}) which this binary does not ship"
            )))
            }
        }
    }
    let mut ran = 0;
    for &(version, name, body) in sql::MIGRATIONS {
        if applied.iter().any(|(v, _)| *v == version) {
            continue;
        }
        apply(conn, version, name, body)?;
        ran += 1;
    }
    Ok(ran)
}

fn applied(conn: &Connection) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = conn.prepare(sql::SELECT_MIGRATIONS)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn apply(
    conn: &Connection,
    version: i64,
    name: &'static str,
    body: &str,
) -> Result<(), StoreError> {
    let fail = |e: rusqlite::Error| StoreError::Migration {
        version,
        name,
        reason: e.to_string(),
    };
    conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
    let result = (|| {
        // Another process may have applied it while we waited for the lock.
        let done: i64 = conn.query_row(
            "SELECT COUNT(*) FROM schema_migrations WHERE version = ?1",
            [version],
            |r| r.get(0),
        )?;
        if done == 0 {
            conn.execute_batch(body)?;
            conn.execute(
                sql::INSERT_MIGRATION,
                params![
                    version,
                    name,
                    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
                ],
            )?;
        }
        conn.execute_batch("COMMIT")
    })();
    if let Err(e) = result {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(fail(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_and_are_unique() {
        let versions: Vec<i64> = sql::MIGRATIONS.iter().map(|m| m.0).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(versions.first(), Some(&1));
    }

    #[test]
    fn migrate_is_idempotent_and_refuses_newer() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&conn).unwrap(), sql::MIGRATIONS.len());
        assert_eq!(migrate(&conn).unwrap(), 0);
        conn.execute(
            sql::INSERT_MIGRATION,
            params![
                latest_version() + 5,
                "from_the_future",
                "2030-01-01T00:00:00Z"
            ],
        )
        .unwrap();
        match migrate(&conn) {
            Err(StoreError::MigrationsNewer { db, binary }) => {
                assert_eq!(db, latest_version() + 5);
                assert_eq!(binary, latest_version());
            }
            other => panic!("expected MigrationsNewer, got {other:?}"),
        }
    }

    #[test]
    fn foreign_history_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(sql::CREATE_SCHEMA_MIGRATIONS).unwrap();
        conn.execute(sql::INSERT_MIGRATION, params![1, "something_else", "x"])
            .unwrap();
        assert!(matches!(migrate(&conn), Err(StoreError::Corrupt(_))));
    }
}
