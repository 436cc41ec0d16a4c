//! Throwaway databases for tests (feature `test-support`).
//!
//! The server comes from `CWSGW_TEST_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`. There is no skipping:
//! when no server answers, [`TestDb::create`] fails with a message saying
//! how to provide one — a suite that did not run is a failure.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::NoTls;

/// The variable naming the test server (an admin URL).
pub const TEST_URL_VAR: &str = "CWSGW_TEST_DATABASE_URL";
/// The server tried when the variable is unset.
pub const DEFAULT_TEST_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The admin URL tests use.
pub fn admin_url() -> String {
    std::env::var(TEST_URL_VAR)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_URL.to_string())
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base
        .get(after_scheme..)
        .and_then(|rest| rest.find('/'))
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", base.get(..host_end).unwrap_or(base));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A freshly created, empty database; drop it with [`TestDb::drop_db`].
#[derive(Debug)]
pub struct TestDb {
    /// Its name (`cwsgw_test_…`).
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
    admin: String,
}

impl TestDb {
    /// `CREATE DATABASE cwsgw_test_<pid>_<n>_<micros>` on the test server.
    pub async fn create() -> Result<TestDb, String> {
        Self::create_on(&admin_url()).await
    }

    /// The same on the server `admin` names (a role that may CREATE DATABASE).
    pub async fn create_on(admin: &str) -> Result<TestDb, String> {
        let admin = admin.trim().to_string();
        let name = format!(
            "cwsgw_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_micros()
        );
        let client = connect(&admin).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        Ok(TestDb {
            url: with_database(&admin, &name),
            name,
            admin,
        })
    }

    /// `DROP DATABASE … WITH (FORCE)` (closes leftover connections).
    pub async fn drop_db(self) -> Result<(), String> {
        let client = connect(&self.admin).await?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .map_err(|e| format!("DROP DATABASE {}: {e}", self.name))
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(|e| {
        format!(
            "no PostgreSQL for the tests ({e}). Start one on 127.0.0.1:5432 with trust auth for \
             user postgres, or set {TEST_URL_VAR}=postgres://USER:PASSWORD@HOST:PORT/postgres \
             (a role that may CREATE DATABASE); `.ci/run` installs and starts one"
        )
    })?;
    tokio::spawn(conn);
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    }
}
