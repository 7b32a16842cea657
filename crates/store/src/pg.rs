//! The PostgreSQL backend, for production and for several service instances sharing one
//! database. Row locks and constraints do the serialising that the writer queue and
//! `BEGIN IMMEDIATE` do on SQLite.

use crate::error::StoreError;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Pool, Transaction};
use std::ops::Deref;

pub(crate) type DB = sqlx::Postgres;

// Deliberately included by both backends: the same queries, compiled for each driver.
#[allow(clippy::duplicate_mod)]
#[path = "ops.rs"]
pub(crate) mod ops;

#[allow(clippy::duplicate_mod)]
#[path = "signing_ops.rs"]
pub(crate) mod signing_ops;

#[allow(clippy::duplicate_mod)]
#[path = "notices_ops.rs"]
pub(crate) mod notices_ops;

/// Just the pool: the shared queries take a handle on both backends, and only SQLite's carries
/// a writer queue.
#[derive(Clone)]
pub(crate) struct Handle(PgPool);

impl Deref for Handle {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.0
    }
}

/// Writers never queue here: PostgreSQL lets them all in and locks rows, not the database.
pub(crate) struct Turn;

pub(crate) type WriteTx = crate::write::WriteTx<DB, Turn>;

pub(crate) async fn connect(url: &str) -> Result<Handle, StoreError> {
    Ok(Handle(
        PgPoolOptions::new()
            .max_connections(10)
            .connect(url)
            .await?,
    ))
}

pub(crate) async fn write_turn(_: &Handle) -> Turn {
    Turn
}

/// READ COMMITTED is enough for writes: every check that matters is either a constraint or a
/// conditional UPDATE that re-reads the locked row.
pub(crate) async fn begin_write(handle: &Handle) -> Result<WriteTx, sqlx::Error> {
    Ok(WriteTx::new(handle.0.begin().await?, Turn))
}

/// One snapshot for a multi-statement read (audit verification pages through the log).
pub(crate) async fn begin_read(pool: &Pool<DB>) -> Result<Transaction<'static, DB>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
}
