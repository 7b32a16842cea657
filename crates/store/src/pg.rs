//! The PostgreSQL backend, for production and for several service instances sharing one
//! database. Row locks and constraints do the serialising that the writer queue and
//! `BEGIN IMMEDIATE` do on SQLite.

use crate::error::StoreError;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Pool, Transaction};
use std::ops::Deref;

pub(crate) type DB = sqlx::Postgres;

/// Writers run side by side: what a statement counted may change before it writes.
pub(crate) const ONE_WRITER: bool = false;

/// An INSERT or UPDATE may run inside a `WITH`, its effects in the same statement.
pub(crate) const WRITING_WITH: bool = true;

/// The query API the shared queries use: sqlx's own.
pub(crate) mod sql {
    use sqlx::Postgres;

    pub(crate) use sqlx::{Error, query, query_scalar};
    pub(crate) type Row = sqlx::postgres::PgRow;
    pub(crate) type Query<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
    pub(crate) type QueryBuilder = sqlx::QueryBuilder<Postgres>;
    pub(crate) type Separated<'b> = sqlx::query_builder::Separated<'b, Postgres, &'static str>;

    /// What a column decodes to.
    pub(crate) trait Column:
        for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>
    {
    }

    impl<T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>> Column for T {}

    /// Column `name` of `row`.
    pub(crate) fn get<T: Column>(row: &Row, name: &str) -> Result<T, Error> {
        sqlx::Row::try_get(row, name)
    }
}

// Deliberately included by both backends: the same queries, compiled for each driver.
#[allow(clippy::duplicate_mod)]
#[path = "ops/mod.rs"]
pub(crate) mod ops;

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

pub(crate) type WriteTx = crate::write::WriteTx<DB>;

impl Handle {
    /// A connection of the pool for a read.
    pub(crate) async fn reader(&self) -> Result<sqlx::pool::PoolConnection<DB>, sqlx::Error> {
        self.0.acquire().await
    }
}

/// How long a statement waits for a row lock before the transaction gives up (and is retried
/// as [`domain::DomainError::Busy`]); no request hangs behind a stuck transaction.
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection idle this long is pinged before it is used again.
const IDLE_BEFORE_PING: std::time::Duration = std::time::Duration::from_secs(30);

/// A transaction left open by a crashed or hung caller gives its locks back after this long.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

/// Connections per instance: two per core. More only queue in the server's scheduler instead
/// of in the pool, where the wait is shorter and fair.
fn pool_size() -> u32 {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).clamp(4, 32) as u32)
}

pub(crate) async fn connect(
    url: &str,
    lock_timeout: std::time::Duration,
) -> Result<Handle, StoreError> {
    let settings = format!(
        "SET lock_timeout = '{}ms'; SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'",
        lock_timeout.as_millis().max(1)
    );
    Ok(Handle(
        PgPoolOptions::new()
            .max_connections(pool_size())
            // A connection in steady use is not pinged before each use (a round trip each):
            // only one that sat idle long enough for the server or a proxy to drop it.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_BEFORE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                let settings = settings.clone();
                Box::pin(async move {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(settings))
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?,
    ))
}

/// READ COMMITTED is enough for writes: every check that matters is either a constraint or a
/// conditional UPDATE that re-reads the locked row. Named rather than left to the server's
/// `default_transaction_isolation`, which a DBA may have set otherwise.
/// Writers never queue here: PostgreSQL lets them all in and locks rows, not the database.
pub(crate) async fn begin_write(handle: &Handle) -> Result<WriteTx, sqlx::Error> {
    Ok(WriteTx::Tx(
        handle
            .0
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?,
    ))
}

/// One statement, in autocommit.
pub(crate) async fn begin_single(handle: &Handle) -> Result<WriteTx, sqlx::Error> {
    Ok(WriteTx::Single(handle.0.acquire().await?))
}

/// Lifts the lock timeout for the rest of the transaction: for the one-time work of a
/// migration, which another instance may be holding for longer.
pub(crate) async fn wait_for_locks(tx: &mut WriteTx) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL lock_timeout = 0")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes writers of one kind (`what`: a calendar import, a key rotation) take turns for the
/// rest of the transaction, across every instance on the database.
pub(crate) async fn serialize(tx: &mut WriteTx, what: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("certreg:{what}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// One snapshot for a multi-statement read (audit verification pages through the log).
pub(crate) async fn begin_read(pool: &Pool<DB>) -> Result<Transaction<'static, DB>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
}
