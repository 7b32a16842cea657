//! The SQLite backend: one file, WAL, foreign keys on, through rusqlite on the calling thread
//! (`lite.rs`). SQLite lets one writer in at a time, so this process's writers queue for their
//! turn on an async lock and only then start with `BEGIN IMMEDIATE`; writers in other
//! processes still meet at the busy timeout.

use crate::error::StoreError;
use crate::lite::{Conn, Error};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, oneshot};

/// The query API of the shared queries, on rusqlite.
pub(crate) use crate::lite as sql;

/// Writes take turns in this process and SQLite lets one writer in at a time: a statement sees
/// no other write between its reads and its writes.
pub(crate) const ONE_WRITER: bool = true;

/// SQLite runs no INSERT or UPDATE inside a `WITH`.
pub(crate) const WRITING_WITH: bool = false;

// Deliberately included by both backends: the same queries, compiled for each driver.
#[allow(clippy::duplicate_mod)]
#[path = "ops/mod.rs"]
pub(crate) mod ops;

/// How long a read waits in SQLite's busy handler (a WAL reader waits only while another
/// connection recovers the log). The writers' connection waits for no lock in place: see
/// [`crate::lite::LOCK_WAIT`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The database and the queue of its writers. The queue is per `Db`, not per process: two
/// databases do not wait for each other, and a second `Db` on the same file meets this one's
/// writers at the busy timeout as another process would.
#[derive(Clone)]
pub(crate) struct Handle {
    source: Arc<Source>,
    writers: Arc<Writers>,
}

pub(crate) enum Source {
    File {
        path: PathBuf,
        readers: Readers,
    },
    /// Every connection to `:memory:` is a database of its own: exactly one, which readers
    /// and writers take turns on.
    Memory(Arc<Mutex<Conn>>),
}

/// The connections of reads. A read runs to its end on the calling thread, so a connection
/// goes back idle as it was taken, outside any transaction.
pub(crate) struct Readers {
    idle: std::sync::Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
}

/// How many connections reads may hold at once.
const READERS: usize = 4;

/// A connection for one read, or one read transaction.
pub(crate) enum Reader {
    Own {
        conn: Option<Conn>,
        source: Arc<Source>,
        _permit: OwnedSemaphorePermit,
    },
    /// In memory, the database's one connection.
    Shared(OwnedMutexGuard<Conn>),
}

impl Deref for Reader {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match self {
            Self::Own { conn, .. } => conn.as_ref().expect("a reader's connection"),
            Self::Shared(c) => c,
        }
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Self::Own { conn, .. } => conn.as_mut().expect("a reader's connection"),
            Self::Shared(c) => c,
        }
    }
}

/// A read transaction left open (its caller gave up half-way) is ended before the connection
/// is used again; a connection that cannot end it is closed instead.
fn end_read(conn: &Conn) -> bool {
    conn.raw().is_autocommit() || conn.raw().execute_batch("ROLLBACK").is_ok()
}

impl Drop for Reader {
    fn drop(&mut self) {
        match self {
            Self::Own { conn, source, .. } => {
                if let Some(conn) = conn.take()
                    && end_read(&conn)
                    && let Source::File { readers, .. } = &**source
                    && !readers.permits.is_closed()
                    && let Ok(mut idle) = readers.idle.lock()
                {
                    idle.push(conn);
                }
            }
            Self::Shared(c) => {
                end_read(c);
            }
        }
    }
}

/// Opens a connection to the database file.
fn open(path: &Path, writer: bool) -> Result<Conn, Error> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Conn::new(conn, writer)
}

impl Handle {
    /// A connection for a read.
    pub(crate) async fn reader(&self) -> Result<Reader, Error> {
        let (path, readers) = match &*self.source {
            Source::Memory(conn) => return Ok(Reader::Shared(conn.clone().lock_owned().await)),
            Source::File { path, readers } => (path, readers),
        };
        let permit = readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let kept = readers.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match kept {
            Some(c) => c,
            None => open(path, false)?,
        };
        Ok(Reader::Own {
            conn: Some(conn),
            source: self.source.clone(),
            _permit: permit,
        })
    }

    /// The writers' connection.
    async fn writer_conn(&self) -> Result<WriterConn, Error> {
        if self.writers.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        match &*self.source {
            Source::File { path, .. } => Ok(WriterConn::Own(open(path, true)?)),
            Source::Memory(conn) => Ok(WriterConn::Shared(conn.clone().lock_owned().await)),
        }
    }

    /// The database file (`None` in memory).
    fn path(&self) -> Option<&Path> {
        match &*self.source {
            Source::File { path, .. } => Some(path),
            Source::Memory(_) => None,
        }
    }

    /// Commits a transaction still open and closes the writers' and the idle readers'
    /// connections (SQLite checkpoints its WAL when the last one closes).
    pub(crate) async fn close(&self) {
        let mut turn = write_turn(self).await;
        self.writers.closed.store(true, Ordering::SeqCst);
        turn.conn = None;
        drop(turn);
        if let Source::File { readers, .. } = &*self.source {
            readers.permits.close();
            let idle = readers
                .idle
                .lock()
                .map(|mut idle| std::mem::take(&mut *idle))
                .unwrap_or_default();
            drop(idle);
        }
    }
}

/// The writers' connection: a file's own, or an in-memory database's one connection for the
/// length of a write.
pub(crate) enum WriterConn {
    Own(Conn),
    Shared(OwnedMutexGuard<Conn>),
}

impl Deref for WriterConn {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match self {
            Self::Own(c) => c,
            Self::Shared(c) => c,
        }
    }
}

impl std::ops::DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            Self::Own(c) => c,
            Self::Shared(c) => c,
        }
    }
}

/// Writers of this process take turns on one connection, in arrival order. A writer that
/// finds SQLite's lock taken sleeps in the busy handler's backoff (up to 100 ms a try) and
/// wakes late or too early; a FIFO async lock hands the turn over the moment the previous
/// writer is done, so throughput holds up with many writers.
///
/// Group commit: a writer done with its statements while others wait for the turn leaves its
/// transaction open and hands the turn on; the next one continues the same transaction inside
/// a savepoint of its own (so it can roll back alone), and the last of a group (nobody waiting,
/// or [`GROUP_MAX`] writers in it) commits for all. Each waits for that COMMIT before it
/// returns, so a write reported done is on disk with `synchronous` unchanged; only the
/// `fsync` is shared.
struct Writers {
    state: Arc<Mutex<Writer>>,
    /// Writers waiting for the turn (not counting one waiting only for its group's commit).
    waiting: AtomicUsize,
    /// An in-memory database is one connection, which readers need too: the writers take it
    /// for each write and give it back. A file keeps one connection for its writers.
    keep_conn: bool,
    /// Closed: no write opens the writers' connection again.
    closed: std::sync::atomic::AtomicBool,
}

/// The most writers one COMMIT carries: the first of a group waits for the others' statements.
const GROUP_MAX: usize = 32;

/// What the turn holds.
pub(crate) struct Writer {
    /// The writers' connection, while held.
    conn: Option<WriterConn>,
    /// The open transaction of a group, if a writer handed it on.
    group: Option<Group>,
    /// Counts groups, so a writer waiting for its commit knows whether its group is the one
    /// still open.
    groups: u64,
}

struct Group {
    id: u64,
    /// Writers done inside it so far.
    members: usize,
    /// Those waiting for its COMMIT.
    waiters: Vec<oneshot::Sender<Result<(), Arc<str>>>>,
}

/// Held from before a write starts until it has committed or rolled back (or handed its
/// group on).
pub(crate) type Turn = OwnedMutexGuard<Writer>;

/// Counts a writer waiting for the turn, until it has it or gives up.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A write on SQLite: a transaction, or one statement, in its turn.
pub(crate) struct WriteTx {
    turn: Option<Turn>,
    handle: Handle,
    how: Joined,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Joined {
    /// Began the group's transaction (`BEGIN IMMEDIATE`); first of its group.
    Began,
    /// Inside a savepoint of a group another writer began.
    Savepoint,
    /// One statement in autocommit (no group open, nobody waiting).
    Alone,
    /// One statement inside a group another writer began: atomic by itself, no savepoint.
    InGroup,
}

impl Deref for WriteTx {
    type Target = Conn;

    fn deref(&self) -> &Self::Target {
        self.turn
            .as_ref()
            .and_then(|t| t.conn.as_deref())
            .expect("a write holds the writers' connection")
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.turn
            .as_mut()
            .and_then(|t| t.conn.as_deref_mut())
            .expect("a write holds the writers' connection")
    }
}

async fn exec(turn: &mut Turn, sql: &'static str) -> Result<(), Error> {
    let conn = turn.conn.as_deref_mut().ok_or(Error::Closed)?;
    sql::query(sql).execute(conn).await.map(|_| ())
}

/// The turn, with the writers' connection in it.
async fn take_turn(handle: &Handle) -> Result<Turn, Error> {
    let mut turn = {
        let _waiting = Waiting::new(&handle.writers.waiting);
        handle.writers.state.clone().lock_owned().await
    };
    if turn.conn.is_none() {
        turn.conn = Some(handle.writer_conn().await?);
    }
    Ok(turn)
}

/// Commits the open group, if any, and tells its writers how it went.
async fn commit_group(turn: &mut Turn) -> Result<(), Error> {
    let Some(group) = turn.group.take() else {
        return Ok(());
    };
    // The `fsync`, in place (see `lite`).
    let done = match turn.conn.as_deref_mut() {
        Some(conn) => conn.execute_batch("COMMIT").await,
        None => Err(Error::Closed),
    };
    let told: Result<(), Arc<str>> = match &done {
        Ok(()) => Ok(()),
        Err(e) => Err(Arc::from(e.to_string())),
    };
    for w in group.waiters {
        let _ = w.send(told.clone());
    }
    if done.is_err() {
        // A failed COMMIT may leave the transaction open: end it so the next group can begin.
        let _ = exec(turn, "ROLLBACK").await;
    }
    done
}

/// Gives the turn up after a write's own statements: hands the open group on to a waiting
/// writer, or commits it. `member`: the write is part of the group and waits for its commit.
/// `failed`: the write ended in an error, which may have been one that makes SQLite roll the
/// whole transaction back (disk full, I/O error): the group is committed at once, so no later
/// writer works in a transaction that is no longer there, and those before are told how the
/// COMMIT went.
async fn give_up(handle: &Handle, mut turn: Turn, member: bool, failed: bool) -> Result<(), Error> {
    let Some(group) = turn.group.as_mut() else {
        release(handle, turn);
        return Ok(());
    };
    if member {
        group.members += 1;
    }
    let more =
        !failed && handle.writers.waiting.load(Ordering::SeqCst) > 0 && group.members < GROUP_MAX;
    if !more {
        let done = commit_group(&mut turn).await;
        release(handle, turn);
        return done;
    }
    if !member {
        drop(turn);
        return Ok(());
    }
    let id = group.id;
    let (tx, mut rx) = oneshot::channel();
    group.waiters.push(tx);
    drop(turn);
    // Whoever takes the turn next continues the group. Should none come after all (a waiting
    // writer gave up), the turn comes back here and this writer commits the group itself.
    let told = tokio::select! {
        biased;
        told = &mut rx => told,
        mut turn = handle.writers.state.clone().lock_owned() => {
            match rx.try_recv() {
                Ok(told) => Ok(told),
                Err(_) => {
                    if turn.group.as_ref().is_some_and(|g| g.id == id) {
                        let _ = commit_group(&mut turn).await;
                    }
                    release(handle, turn);
                    rx.await
                }
            }
        }
    };
    match told {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Other(format!("group commit: {e}"))),
        Err(_) => Err(Error::Other(
            "group commit: the transaction ended without a commit".into(),
        )),
    }
}

/// Ends a turn with no group open: an in-memory database's one connection goes back.
fn release(handle: &Handle, mut turn: Turn) {
    if !handle.writers.keep_conn && turn.group.is_none() {
        turn.conn = None;
    }
}

/// Runs a step of the writers' protocol on a task of its own, which a caller that gives up
/// (a request cancelled when its client went away) does not cut short: a BEGIN, COMMIT or
/// hand-over stopped half-way would leave the writers' connection in a transaction no group
/// knows of, and every later write refused. What the task returns to a caller that left is
/// dropped, and a dropped write undoes itself.
async fn detached<T: Send + 'static>(
    step: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(step)
        .await
        .map_err(|e| Error::Other(format!("write task: {e}")))?
}

impl WriteTx {
    /// Done: the write is committed when this returns `Ok` (with its group, if any).
    pub(crate) async fn commit(self) -> Result<(), Error> {
        detached(self.commit_now()).await
    }

    async fn commit_now(mut self) -> Result<(), Error> {
        let mut turn = self.turn.take().expect("an open write");
        match self.how {
            Joined::Alone => {
                release(&self.handle, turn);
                Ok(())
            }
            Joined::Savepoint => {
                if let Err(e) = exec(&mut turn, "RELEASE certreg_write").await {
                    let _ = exec(&mut turn, "ROLLBACK TO certreg_write").await;
                    let _ = exec(&mut turn, "RELEASE certreg_write").await;
                    let _ = give_up(&self.handle, turn, false, true).await;
                    return Err(e);
                }
                give_up(&self.handle, turn, true, false).await
            }
            Joined::Began | Joined::InGroup => give_up(&self.handle, turn, true, false).await,
        }
    }

    /// Undoes this write's statements only; the writers before it in its group are committed.
    pub(crate) async fn rollback(self) -> Result<(), Error> {
        detached(self.rollback_now()).await
    }

    async fn rollback_now(mut self) -> Result<(), Error> {
        let turn = self.turn.take().expect("an open write");
        undo(&self.handle, turn, self.how).await
    }
}

async fn undo(handle: &Handle, mut turn: Turn, how: Joined) -> Result<(), Error> {
    let done = match how {
        // The first of a group has handed nothing on yet: the whole transaction is its own.
        Joined::Began => {
            turn.group = None;
            exec(&mut turn, "ROLLBACK").await
        }
        Joined::Savepoint => match exec(&mut turn, "ROLLBACK TO certreg_write").await {
            Ok(()) => exec(&mut turn, "RELEASE certreg_write").await,
            Err(e) => Err(e),
        },
        // One statement: it either happened or did not.
        Joined::Alone | Joined::InGroup => Ok(()),
    };
    let given = give_up(handle, turn, false, true).await;
    done.and(given)
}

// A write dropped before it finished (an error returned early, a cancelled request) is
// undone on a task of its own, which keeps the turn until then.
impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else {
            return;
        };
        let (handle, how) = (self.handle.clone(), self.how);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = undo(&handle, turn, how).await {
                        tracing::warn!(error = %e, "undoing an unfinished write");
                    }
                });
            }
            // No runtime left (shutting down): the connection is dropped with its transaction,
            // which SQLite rolls back.
            Err(_) => {
                let mut turn = turn;
                turn.group = None;
                turn.conn = None;
            }
        }
    }
}

pub(crate) async fn connect(url: &str) -> Result<Handle, StoreError> {
    // `mode=rwc` (open, create if missing) is what every file gets; anything else a URL may
    // say (`mode=ro`, `immutable`, `cache=shared`) is refused rather than ignored.
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let mut memory = url.contains(":memory:");
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param {
            "mode=rwc" => {}
            "mode=memory" => memory = true,
            other => {
                return Err(Error::Other(format!(
                    "unsupported SQLite URL parameter {other:?}: only mode=rwc and mode=memory"
                ))
                .into());
            }
        }
    }
    let source = if memory {
        let conn = rusqlite::Connection::open_in_memory().map_err(Error::from)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(Error::from)?;
        Source::Memory(Arc::new(Mutex::new(Conn::new(conn, false)?)))
    } else {
        let path = crate::sqlite_path(url)
            .ok_or_else(|| StoreError::UnsupportedScheme(url.to_string()))?;
        create_private(&path).map_err(Error::from)?;
        // The first connection switches a new file to WAL, which takes SQLite's exclusive lock
        // without waiting in the busy handler: processes opening one new file at once take
        // turns for it (the lock is only held while the first connection opens).
        let first = {
            let _opening = lock_beside(path.clone()).await.map_err(Error::from)?;
            let first = open(&path, false)?;
            let mode: String = first
                .raw()
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(Error::from)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Error::Other(format!("journal mode {mode}, not WAL")).into());
            }
            first
        };
        Source::File {
            path,
            readers: Readers {
                idle: std::sync::Mutex::new(vec![first]),
                permits: Arc::new(Semaphore::new(READERS)),
            },
        }
    };
    Ok(Handle {
        source: Arc::new(source),
        writers: Arc::new(Writers {
            state: Arc::new(Mutex::new(Writer {
                conn: None,
                group: None,
                groups: 0,
            })),
            waiting: AtomicUsize::new(0),
            keep_conn: !memory,
            closed: std::sync::atomic::AtomicBool::new(false),
        }),
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

/// The turn alone, with no group left open (migrations, and tests that hold writers off).
pub(crate) async fn write_turn(handle: &Handle) -> Turn {
    let mut turn = handle.writers.state.clone().lock_owned().await;
    if turn.group.is_some()
        && let Err(e) = commit_group(&mut turn).await
    {
        tracing::warn!(error = %e, "committing a group of writes");
    }
    if !handle.writers.keep_conn {
        turn.conn = None;
    }
    turn
}

/// A transaction: it begins the group (`BEGIN IMMEDIATE`, so it waits for other processes'
/// writers rather than failing at its first write) or continues the one handed to it inside
/// a savepoint.
pub(crate) async fn begin_write(handle: &Handle) -> Result<WriteTx, Error> {
    let handle = handle.clone();
    detached(async move { begin_write_now(&handle).await }).await
}

async fn begin_write_now(handle: &Handle) -> Result<WriteTx, Error> {
    let mut turn = take_turn(handle).await?;
    if turn.group.is_none() {
        return begin_group(handle, turn).await;
    }
    if let Err(e) = exec(&mut turn, "SAVEPOINT certreg_write").await {
        let _ = give_up(handle, turn, false, true).await;
        return Err(e);
    }
    Ok(WriteTx {
        turn: Some(turn),
        handle: handle.clone(),
        how: Joined::Savepoint,
    })
}

async fn begin_group(handle: &Handle, mut turn: Turn) -> Result<WriteTx, Error> {
    if let Err(e) = exec(&mut turn, "BEGIN IMMEDIATE").await {
        // Should a transaction be left open after all, end it, or no write could begin again.
        let _ = exec(&mut turn, "ROLLBACK").await;
        release(handle, turn);
        return Err(e);
    }
    turn.groups += 1;
    turn.group = Some(Group {
        id: turn.groups,
        members: 0,
        waiters: Vec::new(),
    });
    Ok(WriteTx {
        turn: Some(turn),
        handle: handle.clone(),
        how: Joined::Began,
    })
}

/// One statement: in autocommit when no group is open and nobody waits, else in a group (one
/// begun for it if others wait, so they can share its commit).
pub(crate) async fn begin_single(handle: &Handle) -> Result<WriteTx, Error> {
    let handle = handle.clone();
    detached(async move { begin_single_now(&handle).await }).await
}

async fn begin_single_now(handle: &Handle) -> Result<WriteTx, Error> {
    let turn = take_turn(handle).await?;
    let how = if turn.group.is_some() {
        Joined::InGroup
    } else if handle.writers.waiting.load(Ordering::SeqCst) > 0 {
        return begin_group(handle, turn).await;
    } else {
        Joined::Alone
    };
    Ok(WriteTx {
        turn: Some(turn),
        handle: handle.clone(),
        how,
    })
}

/// Writers already take turns on SQLite (the queue, then `BEGIN IMMEDIATE` across processes).
pub(crate) async fn serialize(_: &mut WriteTx, _: &str) -> Result<(), Error> {
    Ok(())
}

/// SQLite has no lock timeout to lift (writers queue, then wait out the busy timeout).
pub(crate) async fn wait_for_locks(_: &mut WriteTx) -> Result<(), Error> {
    Ok(())
}

/// Holds an exclusive lock on `<database>.migrate-lock` while migrations run, so that two
/// processes opening a new database at once do not both create its tables. Never on the
/// database file itself: closing any handle of a file drops every POSIX lock the process
/// holds on it, SQLite's own included. `None` for an in-memory database.
pub(crate) async fn migration_lock(handle: &Handle) -> std::io::Result<Option<std::fs::File>> {
    match handle.path() {
        Some(path) => lock_beside(path.to_path_buf()).await.map(Some),
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
pub(crate) async fn begin_read(handle: &Handle) -> Result<ReadTx, Error> {
    let mut conn = handle.reader().await?;
    sql::query("BEGIN").execute(&mut *conn).await?;
    Ok(ReadTx(conn))
}

/// A read transaction: rolled back when done, or when dropped (see [`Reader`]).
pub(crate) struct ReadTx(Reader);

impl ReadTx {
    pub(crate) async fn rollback(mut self) -> Result<(), Error> {
        sql::query("ROLLBACK")
            .execute(&mut *self.0)
            .await
            .map(|_| ())
    }
}

impl Deref for ReadTx {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl std::ops::DerefMut for ReadTx {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.0
    }
}

/// SQLite's part of [`crate::migrations`]: the pending migrations, each in a transaction of
/// its own with its bookkeeping row, in sqlx's `_sqlx_migrations` table (the same checksums,
/// so a database migrated by either stays valid for the other). Runs on the writers'
/// connection in `turn`.
pub(crate) async fn migrate(handle: &Handle, turn: &mut Turn) -> Result<(), StoreError> {
    let done = migrate_on(handle, turn).await;
    // An in-memory database's one connection goes back to its readers.
    if !handle.writers.keep_conn {
        turn.conn = None;
    }
    done
}

async fn migrate_on(handle: &Handle, turn: &mut Turn) -> Result<(), StoreError> {
    if turn.conn.is_none() {
        turn.conn = Some(handle.writer_conn().await?);
    }
    let conn = turn.conn.as_deref_mut().ok_or(Error::Closed)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL,
            execution_time BIGINT NOT NULL
        )",
    )
    .await?;
    let applied = sql::query("SELECT version, success, checksum FROM _sqlx_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let known = crate::migrations::MIGRATIONS;
    let mut done = std::collections::HashSet::new();
    for row in &applied {
        let version: i64 = row.try_get("version")?;
        let bad = |why: &str| StoreError::Corrupt(format!("migration {version} {why}"));
        if !row.try_get::<bool, _>("success")? {
            return Err(bad("was left half-applied"));
        }
        let Some(m) = known.iter().find(|m| m.version == version) else {
            return Err(bad("is applied but unknown to this build"));
        };
        if row.try_get::<Vec<u8>, _>("checksum")? != crate::migrations::checksum(m.sqlite) {
            return Err(bad("was changed after it was applied"));
        }
        done.insert(version);
    }
    for m in known.iter().filter(|m| !done.contains(&m.version)) {
        let started = std::time::Instant::now();
        sql::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let applied = async {
            conn.raw().execute_batch(m.sqlite).map_err(Error::from)?;
            sql::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
                 execution_time) VALUES ($1, $2, TRUE, $3, $4)",
            )
            .bind(m.version)
            .bind(m.description)
            .bind(crate::migrations::checksum(m.sqlite))
            .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await
        }
        .await;
        match applied {
            Ok(_) => conn.execute_batch("COMMIT").await?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK").await;
                return Err(StoreError::Sqlite(Error::Other(format!(
                    "migration {} ({}): {e}",
                    m.version, m.file_name
                ))));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Db, Secrets, SessionRecord};
    use domain::store::Store as _;
    use time::OffsetDateTime;

    async fn open() -> (tempfile::TempDir, Db, Handle) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("group.db").display());
        let db = Db::connect(&url, &Secrets::generate().unwrap())
            .await
            .unwrap();
        let crate::Pool::Sqlite(handle) = &db.pool else {
            unreachable!("a sqlite URL")
        };
        let handle = handle.clone();
        (dir, db, handle)
    }

    /// An anonymous session, live for an hour after the epoch.
    pub(crate) fn session(id: &str) -> SessionRecord {
        let at = OffsetDateTime::UNIX_EPOCH;
        SessionRecord {
            id: id.into(),
            kind: "anonymous".into(),
            code: None,
            data: "{}".into(),
            created_at: at,
            touched_at: at,
            expires_at: at + time::Duration::hours(1),
            version: 1,
        }
    }

    async fn exists(handle: &Handle, id: &str) -> bool {
        sql::query_scalar::<i64>("SELECT COUNT(*) FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *handle.reader().await.unwrap())
            .await
            .unwrap()
            == 1
    }

    async fn groups(handle: &Handle) -> u64 {
        handle.writers.state.lock().await.groups
    }

    /// Holds the turn until `n` writers wait for it.
    async fn until_waiting(handle: &Handle, n: usize) {
        for _ in 0..2000 {
            if handle.writers.waiting.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{n} writers never queued");
    }

    // Writers queued behind one another share a COMMIT (at most GROUP_MAX each), every one
    // of them is in the database when its call returns, and the audit chain they append to
    // stays whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writers_share_one_commit() {
        let (_dir, db, handle) = open().await;
        let before = groups(&handle).await;
        let turn = write_turn(&handle).await;
        let n = 50;
        let mut tasks = Vec::new();
        for i in 0..n {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let event = domain::model::AuditEvent::new(
                    OffsetDateTime::UNIX_EPOCH,
                    "system",
                    "group.test",
                    "ok",
                );
                db.append_audit(&event).await?;
                db.session_insert(&session(&format!("s{i}"))).await
            }));
        }
        until_waiting(&handle, n).await;
        drop(turn);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let used = groups(&handle).await - before;
        // 100 transactions; without groups there would be one COMMIT each.
        assert!(used <= 10, "{used} groups for {} writes", 2 * n);
        for i in 0..n {
            assert!(exists(&handle, &format!("s{i}")).await);
        }
        let audit = db.verify_audit().await.unwrap();
        assert_eq!(audit.events, n as u64);
        db.close().await;
    }

    // A writer that fails, rolls back or is dropped inside a group takes only its own statements
    // with it, and the group is committed there and then: the writers before it are in, and no
    // later writer joins a transaction the error might have ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_writer_leaves_its_group_alone() {
        let (_dir, db, handle) = open().await;
        db.session_insert(&session("taken")).await.unwrap();
        let turn = write_turn(&handle).await;
        let insert = |id: &'static str| {
            let db = db.clone();
            tokio::spawn(async move { db.session_insert(&session(id)).await })
        };
        let raw_insert = |id: &'static str, roll_back: bool| {
            let h = handle.clone();
            tokio::spawn(async move {
                let mut tx = begin_write(&h).await.unwrap();
                sql::query(
                    "INSERT INTO sessions (id, kind, data_enc, created_at, touched_at, \
                     expires_at, version) VALUES ($1, 'anonymous', 'x', 0, 0, 99, 1)",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
                if roll_back {
                    tx.rollback().await.unwrap();
                }
                // Else dropped unfinished: undone on a task of its own.
            })
        };
        // Each writer is queued before the next is started, so they take turns in this order.
        let first = insert("first");
        until_waiting(&handle, 1).await;
        let dropped = raw_insert("dropped", false);
        until_waiting(&handle, 2).await;
        let second = insert("second");
        until_waiting(&handle, 3).await;
        let rolled = raw_insert("rolled", true);
        until_waiting(&handle, 4).await;
        let third = insert("third");
        until_waiting(&handle, 5).await;
        let duplicate = insert("taken");
        until_waiting(&handle, 6).await;
        let last = insert("last");
        until_waiting(&handle, 7).await;
        let before = turn.groups;
        drop(turn);
        first.await.unwrap().unwrap();
        dropped.await.unwrap();
        second.await.unwrap().unwrap();
        rolled.await.unwrap();
        third.await.unwrap().unwrap();
        assert!(duplicate.await.unwrap().is_err(), "a taken key");
        last.await.unwrap().unwrap();
        drop(write_turn(&handle).await);
        // Each failure ended the group it was in; the last write, alone, needed none.
        assert_eq!(groups(&handle).await - before, 3);
        for id in ["first", "second", "third", "last"] {
            assert!(exists(&handle, id).await, "{id}");
        }
        assert!(!exists(&handle, "dropped").await);
        assert!(!exists(&handle, "rolled").await);
        db.close().await;
    }

    // An error that ends SQLite's whole transaction (disk full, an I/O error; here a bare
    // ROLLBACK stands in for it) loses the group's writes so far and says so to their writers;
    // the next writer starts afresh, its write kept and reported as kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_lost_to_an_error_is_reported_lost_and_not_continued() {
        let (_dir, db, handle) = open().await;
        let turn = write_turn(&handle).await;
        let insert = |id: &'static str| {
            let db = db.clone();
            tokio::spawn(async move { db.session_insert(&session(id)).await })
        };
        let first = insert("first");
        until_waiting(&handle, 1).await;
        let h = handle.clone();
        let killer = tokio::spawn(async move {
            let mut tx = begin_write(&h).await.unwrap();
            sql::query("ROLLBACK").execute(&mut *tx).await.unwrap();
            // Dropped after the error, as an operation returning it would.
        });
        until_waiting(&handle, 2).await;
        let next = insert("next");
        until_waiting(&handle, 3).await;
        drop(turn);
        assert!(first.await.unwrap().is_err(), "its transaction was lost");
        killer.await.unwrap();
        next.await.unwrap().unwrap();
        assert!(!exists(&handle, "first").await);
        assert!(exists(&handle, "next").await);
        db.close().await;
    }

    // Writes cancelled at every point of their course (as when a client goes away mid-request),
    // among writes that run to the end, never leave the writers stuck: the writes that ran to the
    // end are all in, a cancelled one is in whole or not at all, and the next write goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_writes_leave_the_writers_working() {
        let (_dir, db, handle) = open().await;
        let mut kept = Vec::new();
        for round in 0..100usize {
            let mut tasks = Vec::new();
            for i in 0..8usize {
                let db = db.clone();
                let id = format!("r{round}-{i}");
                // Odd writers are dropped after `polls` polls of their write; even ones finish.
                let polls = (round * 8 + i) % 23;
                let cancel = i % 2 == 1;
                if !cancel {
                    kept.push(id.clone());
                }
                tasks.push(tokio::spawn(async move {
                    let record = session(&id);
                    let write = db.session_insert(&record);
                    let mut write = std::pin::pin!(write);
                    if !cancel {
                        return write.await.map(|_| ());
                    }
                    for _ in 0..polls {
                        let ready = std::future::poll_fn(|cx| {
                            std::task::Poll::Ready(write.as_mut().poll(cx).is_ready())
                        })
                        .await;
                        if ready {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    Ok(())
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
        tokio::time::timeout(
            Duration::from_secs(10),
            db.session_insert(&session("after")),
        )
        .await
        .expect("writes still go through")
        .unwrap();
        for id in kept.iter().chain([&"after".to_string()]) {
            assert!(exists(&handle, id).await, "{id}");
        }
        assert!(handle.writers.state.lock().await.group.is_none());
        db.close().await;
    }

    // A writer that handed its group on to one who then gave up waiting gets the turn back
    // and commits the group itself: nobody waits for a COMMIT that never comes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_handed_to_nobody_is_committed_by_its_writer() {
        let (_dir, db, handle) = open().await;
        let mut tx = begin_write(&handle).await.unwrap();
        sql::query(
            "INSERT INTO sessions (id, kind, data_enc, created_at, touched_at, expires_at, \
             version) VALUES ('kept', 'anonymous', 'x', 0, 0, 99, 1)",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        // A writer seems to wait, so the group is handed on, then it leaves.
        let gone = Waiting::new(&handle.writers.waiting);
        let h = handle.clone();
        let committed = tokio::spawn(async move {
            let _ = &h;
            tx.commit().await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(gone);
        tokio::time::timeout(Duration::from_secs(5), committed)
            .await
            .expect("committed without another writer")
            .unwrap()
            .unwrap();
        assert!(exists(&handle, "kept").await);
        assert!(handle.writers.state.lock().await.group.is_none());
        db.close().await;
    }

    // Another connection (another process, a second `Db`) holds SQLite's write lock, and will
    // let go only when this single-threaded runtime runs it: the write waits for the lock with
    // async pauses, so the holder runs, lets go, and the write goes through. Waiting in SQLite's
    // busy handler instead would stop the runtime for the whole busy timeout and fail.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_waiting_for_another_writer_leaves_the_runtime_running() {
        let (dir, db, _handle) = open().await;
        let holder = rusqlite::Connection::open(dir.path().join("group.db")).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let let_go = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            holder.execute_batch("COMMIT").unwrap();
        });
        db.session_insert(&session("after")).await.unwrap();
        let_go.await.unwrap();
        assert_eq!(
            db.session_get("after", OffsetDateTime::UNIX_EPOCH)
                .await
                .unwrap()
                .unwrap()
                .id,
            "after"
        );
        db.close().await;
    }

    // A closed database takes no more writes or reads (it does not quietly open its
    // connections again).
    #[tokio::test]
    async fn a_closed_database_stays_closed() {
        let (_dir, db, _handle) = open().await;
        db.session_insert(&session("before")).await.unwrap();
        db.close().await;
        assert!(db.session_insert(&session("after")).await.is_err());
        assert!(
            db.session_get("before", OffsetDateTime::UNIX_EPOCH)
                .await
                .is_err()
        );
    }

    // What a SQLite URL says beyond the file is honoured or refused, never ignored.
    #[tokio::test]
    async fn sqlite_url_parameters_are_honoured_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::generate().unwrap();
        let at = |q: &str| format!("sqlite://{}{q}", dir.path().join("p.db").display());
        for refused in ["?mode=ro", "?immutable=1", "?cache=shared", "?mode=rwc&x=1"] {
            let err = Db::connect(&at(refused), &secrets).await.err();
            assert!(
                err.is_some_and(|e| e.to_string().contains("unsupported SQLite URL parameter")),
                "{refused}"
            );
        }
        assert!(!dir.path().join("p.db").exists());
        let db = Db::connect(&at("?mode=rwc"), &secrets).await.unwrap();
        db.close().await;
        let memory = Db::connect("sqlite://x?mode=memory", &secrets)
            .await
            .unwrap();
        memory.session_insert(&session("m")).await.unwrap();
        assert!(!std::path::Path::new("x").exists());
        memory.close().await;
    }
}
