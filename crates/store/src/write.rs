//! PostgreSQL's connections: a small pool of its own, and the transaction or single statement a
//! write runs in, behind one type so the shared queries run on `&mut *tx` either way.
//!
//! sqlx's pool sends a ping (a round trip, and a task spawned for it) every time a connection
//! goes back, to learn whether an interrupted caller left it half used. This pool knows that
//! from the connection itself: a write transaction that was not finished, bytes not yet sent,
//! or a connection failure anywhere since the connection was taken. Only then does the
//! connection go through a round trip (a ROLLBACK or a ping) before another caller gets it;
//! a connection that fails it is closed. A connection idle for a while is pinged before use,
//! since the server or a proxy may have dropped it.

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection idle this long is pinged before it is used again.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(30);

/// How long a caller waits for a connection (a free one, or a new one set up) before giving
/// up, as sqlx's pool does.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long returning a connection that needs a round trip may take before it is closed.
const RETURN_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures of PostgreSQL connections (I/O, protocol, TLS) in this process. A connection taken
/// before the count moved may have been the one that failed: it is checked before reuse.
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Notes a driver failure; one that may have left its connection unusable counts: I/O,
/// protocol and TLS failures, and the server's FATAL or PANIC errors, with which it ends the
/// session (a terminated backend, a server shutting down).
pub(crate) fn note_failure(e: &sqlx::Error) {
    let broken = match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some_and(|d| {
                matches!(
                    d.severity(),
                    sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                )
            }),
        _ => false,
    };
    if broken {
        FAILURES.fetch_add(1, Ordering::Relaxed);
    }
}

struct Idle {
    conn: PgConnection,
    since: Instant,
    /// Must answer a ping before it is handed out.
    suspect: bool,
}

struct Inner {
    options: PgConnectOptions,
    /// Run on every new connection.
    settings: String,
    idle: Mutex<Vec<Idle>>,
    /// One permit per connection that may exist.
    permits: Arc<Semaphore>,
    size: usize,
    closed: AtomicBool,
    acquire_timeout: Duration,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Handle(Arc<Inner>);

impl Handle {
    pub(crate) fn new(options: PgConnectOptions, settings: String, size: usize) -> Self {
        Self::with_acquire_timeout(options, settings, size, ACQUIRE_TIMEOUT)
    }

    fn with_acquire_timeout(
        options: PgConnectOptions,
        settings: String,
        size: usize,
        acquire_timeout: Duration,
    ) -> Self {
        Self(Arc::new(Inner {
            options,
            settings,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(Semaphore::new(size)),
            size,
            closed: AtomicBool::new(false),
            acquire_timeout,
        }))
    }

    pub(crate) fn connect_options(&self) -> &PgConnectOptions {
        &self.0.options
    }

    /// A connection of the pool: an idle one (the most recently used first), or a new one
    /// while the pool has room; otherwise waits for one to come back.
    /// Gives up after [`ACQUIRE_TIMEOUT`], the wait and a new connection's setup together.
    pub(crate) async fn reader(&self) -> Result<Conn, sqlx::Error> {
        tokio::time::timeout(self.0.acquire_timeout, self.take())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    async fn take(&self) -> Result<Conn, sqlx::Error> {
        let permit = self
            .0
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let failures = FAILURES.load(Ordering::Relaxed);
        loop {
            let idle = self.0.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut idle) = idle else { break };
            let check = idle.suspect || idle.since.elapsed() >= IDLE_BEFORE_PING;
            if check && idle.conn.ping().await.is_err() {
                let _ = idle.conn.close_hard().await;
                continue;
            }
            return Ok(self.conn(idle.conn, permit, failures));
        }
        let mut conn = PgConnection::connect_with(&self.0.options).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(self.0.settings.clone()))
            .execute(&mut conn)
            .await?;
        Ok(self.conn(conn, permit, failures))
    }

    fn conn(&self, conn: PgConnection, permit: OwnedSemaphorePermit, failures: u64) -> Conn {
        Conn {
            conn: Some(conn),
            pool: self.0.clone(),
            permit: Some(permit),
            failures,
            open_tx: false,
        }
    }

    /// Waits for every connection to come back and closes them; a later `reader` fails.
    pub(crate) async fn close(&self) {
        if self.0.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let size = u32::try_from(self.0.size).unwrap_or(u32::MAX);
        let all = self.0.permits.acquire_many(size).await;
        let idle = std::mem::take(&mut *self.0.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for i in idle {
            let _ = i.conn.close().await;
        }
        drop(all);
        self.0.permits.close();
    }
}

/// A connection taken from the pool; it goes back when dropped.
pub(crate) struct Conn {
    conn: Option<PgConnection>,
    pool: Arc<Inner>,
    permit: Option<OwnedSemaphorePermit>,
    /// [`FAILURES`] when the connection was taken.
    failures: u64,
    /// A transaction was begun on it and not yet committed or rolled back.
    open_tx: bool,
}

impl Deref for Conn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("a connection until dropped")
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a connection until dropped")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let (Some(mut conn), Some(permit)) = (self.conn.take(), self.permit.take()) else {
            return;
        };
        let pool = self.pool.clone();
        if pool.closed.load(Ordering::Acquire) {
            // `close` is waiting for the permit; the connection closes with its socket.
            return;
        }
        let open_tx = self.open_tx;
        let suspect = FAILURES.load(Ordering::Relaxed) != self.failures;
        if !open_tx && !conn.should_flush() {
            // An answer still on its way (a caller dropped mid-statement) is read by the next
            // statement before it sends its own.
            put_back(&pool, conn, suspect);
            return;
        }
        // An unfinished transaction must end now, not when the connection is next used: its
        // locks would hold until then.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let done = tokio::time::timeout(RETURN_TIMEOUT, async {
                if open_tx {
                    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.map(drop)
                } else {
                    conn.ping().await
                }
            })
            .await;
            if matches!(done, Ok(Ok(()))) {
                put_back(&pool, conn, false);
            } else {
                let _ = conn.close_hard().await;
            }
            drop(permit);
        });
    }
}

fn put_back(pool: &Inner, conn: PgConnection, suspect: bool) {
    pool.idle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Idle {
            conn,
            since: Instant::now(),
            suspect,
        });
}

/// A transaction, or a connection for one statement in autocommit.
pub(crate) struct WriteTx(Conn);

impl WriteTx {
    /// Begins a transaction with `begin` (a `BEGIN` statement).
    pub(crate) async fn begin(mut conn: Conn, begin: &'static str) -> Result<Self, sqlx::Error> {
        // Marked first: a caller dropped while BEGIN is on its way still rolls back.
        conn.open_tx = true;
        sqlx::raw_sql(begin).execute(&mut *conn).await?;
        Ok(Self(conn))
    }

    pub(crate) fn single(conn: Conn) -> Self {
        Self(conn)
    }

    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.end("COMMIT").await
    }

    pub(crate) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }

    async fn end(&mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        if self.0.open_tx {
            sqlx::raw_sql(statement).execute(&mut *self.0).await?;
            self.0.open_tx = false;
        }
        Ok(())
    }
}

// Like sqlx's `Transaction`, to the connection: the queries run on `&mut *tx`.
impl Deref for WriteTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    //! On a fresh PostgreSQL database of `TEST_DATABASE_URL`; without it each test says it did
    //! not run (CI sets it).
    use super::*;
    use sqlx::Row as _;

    /// A pool of `size` on a fresh database, and that database (dropped with it).
    async fn pool(size: usize) -> Option<(Handle, testkit::PgDatabase)> {
        let Ok(admin) = std::env::var(testkit::db::TEST_DATABASE_URL) else {
            eprintln!("not run: TEST_DATABASE_URL is not set");
            return None;
        };
        let pg = testkit::PgDatabase::create(&admin, "certreg_pool").await;
        let options: PgConnectOptions = pg.url.parse().unwrap();
        let settings = "SET lock_timeout = '2s'".to_string();
        Some((Handle::new(options, settings, size), pg))
    }

    async fn outside(url: &str) -> PgConnection {
        let mut c = PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql("SET lock_timeout = '2s'")
            .execute(&mut c)
            .await
            .unwrap();
        c
    }

    async fn int(conn: &mut PgConnection, sql: &'static str) -> i64 {
        sqlx::query(sql).fetch_one(conn).await.unwrap().get(0)
    }

    #[tokio::test]
    async fn a_write_dropped_unfinished_gives_its_locks_back_and_writes_nothing() {
        let Some((pool, pg)) = pool(1).await else {
            return;
        };
        let mut other = outside(&pg.url).await;
        sqlx::raw_sql("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0)")
            .execute(&mut other)
            .await
            .unwrap();
        for _ in 0..3 {
            let mut tx = WriteTx::begin(pool.reader().await.unwrap(), "BEGIN")
                .await
                .unwrap();
            sqlx::raw_sql("UPDATE t SET v = v + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await
                .unwrap();
            // Dropped as a caller that went away would drop it: no commit, no rollback.
            drop(tx);
            // The row is free long before the lock timeout: this update does not fail.
            sqlx::raw_sql("UPDATE t SET v = v WHERE id = 1")
                .execute(&mut other)
                .await
                .unwrap();
            assert_eq!(
                int(&mut other, "SELECT v::BIGINT FROM t WHERE id = 1").await,
                0
            );
        }
        // The one connection went back, outside any transaction.
        let mut conn = pool.reader().await.unwrap();
        sqlx::raw_sql("UPDATE t SET v = 7 WHERE id = 1")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        assert_eq!(
            int(&mut other, "SELECT v::BIGINT FROM t WHERE id = 1").await,
            7
        );
        pool.close().await;
    }

    #[tokio::test]
    async fn a_committed_write_stays_and_the_connection_serves_the_next_caller() {
        let Some((pool, pg)) = pool(1).await else {
            return;
        };
        let mut other = outside(&pg.url).await;
        sqlx::raw_sql("CREATE TABLE t (id INT PRIMARY KEY)")
            .execute(&mut other)
            .await
            .unwrap();
        for i in 0..3 {
            let mut tx = WriteTx::begin(pool.reader().await.unwrap(), "BEGIN")
                .await
                .unwrap();
            sqlx::query("INSERT INTO t VALUES ($1)")
                .bind(i)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let mut tx = WriteTx::begin(pool.reader().await.unwrap(), "BEGIN")
            .await
            .unwrap();
        sqlx::raw_sql("INSERT INTO t VALUES (99)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(int(&mut other, "SELECT COUNT(*) FROM t").await, 3);
        const PID: &str = "SELECT pg_backend_pid()::BIGINT";
        let first = int(&mut pool.reader().await.unwrap(), PID).await;
        assert_eq!(int(&mut pool.reader().await.unwrap(), PID).await, first);
        pool.close().await;
    }

    #[tokio::test]
    async fn a_statement_abandoned_midway_does_not_leave_its_answer_to_the_next_caller() {
        let Some((pool, _pg)) = pool(1).await else {
            return;
        };
        for _ in 0..2 {
            let mut conn = pool.reader().await.unwrap();
            let slow = sqlx::query("SELECT 1::BIGINT FROM pg_sleep(0.2)").fetch_one(&mut *conn);
            assert!(
                tokio::time::timeout(Duration::from_millis(20), slow)
                    .await
                    .is_err()
            );
            drop(conn);
            let mut conn = pool.reader().await.unwrap();
            assert_eq!(int(&mut conn, "SELECT 2::BIGINT").await, 2);
        }
        pool.close().await;
    }

    #[tokio::test]
    async fn a_connection_that_failed_is_replaced_not_handed_out_again() {
        let Some((pool, pg)) = pool(1).await else {
            return;
        };
        let mut other = outside(&pg.url).await;
        let pid = int(
            &mut pool.reader().await.unwrap(),
            "SELECT pg_backend_pid()::BIGINT",
        )
        .await;
        sqlx::query("SELECT pg_terminate_backend($1::INT)")
            .bind(pid)
            .execute(&mut other)
            .await
            .unwrap();
        let mut conn = pool.reader().await.unwrap();
        let failed = sqlx::raw_sql("SELECT 1").execute(&mut *conn).await;
        let e = failed.expect_err("the server closed this connection");
        note_failure(&e);
        drop(conn);
        let again = int(
            &mut pool.reader().await.unwrap(),
            "SELECT pg_backend_pid()::BIGINT",
        )
        .await;
        assert_ne!(again, pid);
        pool.close().await;
    }

    #[tokio::test]
    async fn a_closed_pool_waits_for_its_connections_and_then_refuses() {
        let Some((pool, _pg)) = pool(2).await else {
            return;
        };
        let mut held = pool.reader().await.unwrap();
        let closing = tokio::spawn({
            let pool = pool.clone();
            async move { pool.close().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!closing.is_finished());
        assert_eq!(int(&mut held, "SELECT 3::BIGINT").await, 3);
        drop(held);
        closing.await.unwrap();
        assert!(matches!(
            pool.reader().await.map(drop),
            Err(sqlx::Error::PoolClosed)
        ));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_the_caller_and_frees_its_place() {
        // Accepts the connection (the kernel does) and never says a word.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("nobody");
        let pool =
            Handle::with_acquire_timeout(options, String::new(), 1, Duration::from_millis(200));
        for _ in 0..2 {
            let outcome = tokio::time::timeout(Duration::from_secs(10), pool.reader())
                .await
                .expect("the pool's own timeout ends the wait for a new connection");
            assert!(matches!(outcome.map(drop), Err(sqlx::Error::PoolTimedOut)));
        }
        assert_eq!(pool.0.permits.available_permits(), 1);
        drop(silent);
    }
}
