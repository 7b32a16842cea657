//! The SQLite backend: one file, WAL, foreign keys on, and write transactions that start with
//! `BEGIN IMMEDIATE` so concurrent writers queue on the busy timeout instead of failing.

use crate::error::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Pool, Transaction};
use std::str::FromStr;
use std::time::Duration;

pub(crate) type DB = sqlx::Sqlite;

// Deliberately included by both backends: the same queries, compiled for each driver.
#[allow(clippy::duplicate_mod)]
#[path = "ops.rs"]
pub(crate) mod ops;

/// How long a writer waits for another writer's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    if memory {
        // Every connection to :memory: is a database of its own: keep exactly one, forever.
        return Ok(SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?);
    }
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options.journal_mode(SqliteJournalMode::Wal))
        .await?)
}

/// A deferred transaction would take the write lock only at its first write and then fail
/// with SQLITE_BUSY instead of waiting; IMMEDIATE takes it up front and waits.
pub(crate) async fn begin_write(pool: &Pool<DB>) -> Result<Transaction<'static, DB>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// A read transaction sees one snapshot (WAL) from its first read on.
pub(crate) async fn begin_read(pool: &Pool<DB>) -> Result<Transaction<'static, DB>, sqlx::Error> {
    pool.begin().await
}
