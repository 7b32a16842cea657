//! The PostgreSQL backend, for production and for several service instances sharing one
//! database. Row locks and constraints do the serialising that the writer queue and
//! `BEGIN IMMEDIATE` do on SQLite.

use crate::error::StoreError;
use sqlx::postgres::PgConnectOptions;

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

pub(crate) use crate::write::{Handle, WriteTx};

/// How long a statement waits for a row lock before the transaction gives up (and is retried
/// as [`domain::DomainError::Busy`]); no request hangs behind a stuck transaction.
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A transaction left open by a crashed or hung caller gives its locks back after this long.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";

/// Connections per instance: two per core. More only queue in the server's scheduler instead
/// of in the pool, where the wait is shorter and fair.
fn pool_size() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).clamp(4, 32))
}

pub(crate) async fn connect(
    url: &str,
    lock_timeout: std::time::Duration,
) -> Result<Handle, StoreError> {
    let settings = format!(
        "SET lock_timeout = '{}ms'; SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'",
        lock_timeout.as_millis().max(1)
    );
    let options: PgConnectOptions = url.parse()?;
    let handle = Handle::new(options, settings, pool_size());
    // The first connection now: a wrong URL or a server that is down fails here, not at the
    // first request.
    drop(handle.reader().await?);
    Ok(handle)
}

/// READ COMMITTED is enough for writes: every check that matters is either a constraint or a
/// conditional UPDATE that re-reads the locked row. Named rather than left to the server's
/// `default_transaction_isolation`, which a DBA may have set otherwise.
/// Writers never queue here: PostgreSQL lets them all in and locks rows, not the database.
pub(crate) async fn begin_write(handle: &Handle) -> Result<WriteTx, sqlx::Error> {
    WriteTx::begin(
        handle.reader().await?,
        "BEGIN ISOLATION LEVEL READ COMMITTED",
    )
    .await
}

/// One statement, in autocommit.
pub(crate) async fn begin_single(handle: &Handle) -> Result<WriteTx, sqlx::Error> {
    Ok(WriteTx::single(handle.reader().await?))
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
pub(crate) async fn begin_read(handle: &Handle) -> Result<WriteTx, sqlx::Error> {
    WriteTx::begin(
        handle.reader().await?,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )
    .await
}
