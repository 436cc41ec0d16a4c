//! Mapping driver and pool errors to one-line, PHI-free [`StoreError`]s.
//!
//! PostgreSQL's `DETAIL` field can echo row values (`Key (kind,
//! dedup_key)=(…) already exists`), so only the SQLSTATE code and the
//! primary message are kept. Connection URLs are shown without password.

use store::StoreError;
use tokio_postgres::error::SqlState;

/// Longest server message kept in an error.
const MAX_MESSAGE: usize = 200;

/// A driver error met while using an open store.
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        return StoreError::Postgres(format!(
            "{} ({})",
            store::backend::truncate(db.message(), MAX_MESSAGE),
            db.code().code()
        ));
    }
    if e.is_closed() {
        return StoreError::Unreachable("the database connection was closed".to_string());
    }
    StoreError::Postgres(store::backend::truncate(&e.to_string(), MAX_MESSAGE).to_string())
}

/// A pool error: no connection could be had.
pub(crate) fn pool(e: deadpool_postgres::PoolError, shown: &str) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(_) => {
            StoreError::Unreachable(format!("{shown}: no database connection available in time"))
        }
        PoolError::Backend(e) => connect(e, shown),
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Unreachable(format!("{shown}: {other}")),
    }
}

/// An error opening a connection: unreachable server, bad credentials,
/// missing database.
pub(crate) fn connect(e: tokio_postgres::Error, shown: &str) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let reason = if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            "authentication failed: check the user and password of store.url".to_string()
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            "the database does not exist: create it first".to_string()
        } else if *code == SqlState::TOO_MANY_CONNECTIONS {
            "the server has no free connection slots".to_string()
        } else {
            format!(
                "{} ({})",
                store::backend::truncate(db.message(), MAX_MESSAGE),
                code.code()
            )
        };
        return StoreError::Open {
            path: shown.to_string(),
            reason,
        };
    }
    StoreError::Unreachable(format!(
        "{shown}: {}",
        store::backend::truncate(&e.to_string(), MAX_MESSAGE)
    ))
}

/// `postgres://user@host:port/db` without password or options.
pub(crate) fn shown_url(cfg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let user = cfg.get_user().unwrap_or("");
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().unwrap_or(user);
    if user.is_empty() {
        format!("postgres://{host}:{port}/{db}")
    } else {
        format!("postgres://{user}@{host}:{port}/{db}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_url_has_no_password() {
        let cfg: tokio_postgres::Config =
            "postgres://gw:s3cret@db.example:6543/cws?sslmode=disable"
                .parse()
                .unwrap();
        let shown = shown_url(&cfg);
        assert_eq!(shown, "postgres://gw@db.example:6543/cws");
        assert!(!shown.contains("s3cret"));
    }
}
