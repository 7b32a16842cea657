//! The PostgreSQL backend, for production and for several service instances sharing one
//! database. Row locks and constraints do the serialising that `BEGIN IMMEDIATE` does on SQLite.

use crate::error::StoreError;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Pool, Transaction};

pub(crate) type DB = sqlx::Postgres;

// Deliberately included by both backends: the same queries, compiled for each driver.
#[allow(clippy::duplicate_mod)]
#[path = "ops.rs"]
pub(crate) mod ops;

pub(crate) async fn connect(url: &str) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await?)
}

/// READ COMMITTED is enough for writes: every check that matters is either a constraint or a
/// conditional UPDATE that re-reads the locked row.
pub(crate) async fn begin_write(pool: &Pool<DB>) -> Result<Transaction<'static, DB>, sqlx::Error> {
    pool.begin().await
}

/// One snapshot for a multi-statement read (audit verification pages through the log).
pub(crate) async fn begin_read(pool: &Pool<DB>) -> Result<Transaction<'static, DB>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
}
