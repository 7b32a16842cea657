//! The SQLite backend: one file, WAL, foreign keys on. SQLite lets one writer in at a time, so
//! this process's writers queue for their turn on an async lock and only then start with
//! `BEGIN IMMEDIATE`; writers in other processes still meet at the busy timeout.

use crate::error::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Pool, Transaction};
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard};

pub(crate) type DB = sqlx::Sqlite;

// Deliberately included by both backends: the same queries, compiled for each driver.
#[allow(clippy::duplicate_mod)]
#[path = "ops/mod.rs"]
pub(crate) mod ops;

/// How long a writer waits for another process's write transaction before giving up. Writers
/// of this process never get here: they wait in [`Handle`]'s queue instead.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The pool and the queue of its writers. The queue is per pool, not per process: two
/// databases do not wait for each other, and a second pool on the same file (another `Db`)
/// meets this one's writers at the busy timeout as another process would.
#[derive(Clone)]
pub(crate) struct Handle {
    pool: SqlitePool,
    // A writer that finds SQLite's lock taken sleeps in the busy handler's backoff (up to
    // 100 ms a try) and wakes late or too early; a FIFO async lock hands the turn over the
    // moment the previous writer commits, so throughput holds up with many writers.
    writers: Arc<Mutex<()>>,
    /// The database file (`None` in memory).
    path: Option<std::path::PathBuf>,
}

// Reads go to the pool as they are: WAL readers never wait for the writer.
impl Deref for Handle {
    type Target = SqlitePool;

    fn deref(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Held from before a write starts until it has committed or rolled back.
pub(crate) type Turn = OwnedMutexGuard<()>;

pub(crate) type WriteTx = crate::write::WriteTx<DB, Turn>;

pub(crate) async fn connect(url: &str) -> Result<Handle, StoreError> {
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    let path = if memory {
        None
    } else {
        crate::sqlite_path(url)
    };
    if let Some(path) = &path {
        create_private(path).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
    }
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    let pool = if memory {
        // Every connection to :memory: is a database of its own: keep exactly one, forever.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?
    } else {
        // The first connection switches a new file to WAL, which takes SQLite's exclusive lock
        // without waiting in the busy handler: processes opening one new file at once take
        // turns for it (the lock is only held while the pool opens its first connection).
        let _opening = match &path {
            Some(p) => Some(
                lock_beside(p.clone())
                    .await
                    .map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?,
            ),
            None => None,
        };
        SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.journal_mode(SqliteJournalMode::Wal))
            .await?
    };
    Ok(Handle {
        pool,
        writers: Arc::new(Mutex::new(())),
        path,
    })
}

/// Creates the database file owner-only (0600), and its directory (0700) when missing, before
/// SQLite opens it: SQLite gives its WAL and shared-memory files the database file's mode. An
/// existing file or directory is left as it is.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// The turn comes before the connection: a writer waiting in the queue holds no connection
/// the others (readers, or the one writer of an in-memory pool) might need.
pub(crate) async fn write_turn(handle: &Handle) -> Turn {
    handle.writers.clone().lock_owned().await
}

/// A deferred transaction would take the write lock only at its first write and then fail
/// with SQLITE_BUSY instead of waiting; IMMEDIATE takes it up front and waits.
pub(crate) async fn begin_write(handle: &Handle) -> Result<WriteTx, sqlx::Error> {
    let turn = write_turn(handle).await;
    let tx = handle.pool.begin_with("BEGIN IMMEDIATE").await?;
    Ok(WriteTx::new(tx, turn))
}

/// Writers already take turns on SQLite (the queue, then `BEGIN IMMEDIATE` across processes).
pub(crate) async fn serialize(_: &mut WriteTx, _: &str) -> Result<(), sqlx::Error> {
    Ok(())
}

/// SQLite has no lock timeout to lift (writers queue, then wait out the busy timeout).
pub(crate) async fn wait_for_locks(_: &mut WriteTx) -> Result<(), sqlx::Error> {
    Ok(())
}

/// Holds an exclusive lock on `<database>.migrate-lock` while migrations run, so that two
/// processes opening a new database at once do not both create its tables. Never on the
/// database file itself: closing any handle of a file drops every POSIX lock the process
/// holds on it, SQLite's own included. `None` for an in-memory database.
pub(crate) async fn migration_lock(handle: &Handle) -> std::io::Result<Option<std::fs::File>> {
    match handle.path.clone() {
        Some(path) => lock_beside(path).await.map(Some),
        None => Ok(None),
    }
}

/// The exclusive lock on `<database>.migrate-lock`, waited for on a blocking thread.
async fn lock_beside(path: std::path::PathBuf) -> std::io::Result<std::fs::File> {
    let mut name = path.into_os_string();
    name.push(".migrate-lock");
    tokio::task::spawn_blocking(move || {
        let mut open = std::fs::OpenOptions::new();
        open.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let file = open.open(&name)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A read transaction sees one snapshot (WAL) from its first read on.
pub(crate) async fn begin_read(pool: &Pool<DB>) -> Result<Transaction<'static, DB>, sqlx::Error> {
    pool.begin().await
}
