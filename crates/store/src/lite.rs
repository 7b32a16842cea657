//! SQLite through rusqlite, behind the part of sqlx's query API that the shared queries use
//! (`query`, `bind`, `execute`, `fetch_*`, `query_scalar`, `QueryBuilder`), so that one text
//! of each query serves both backends.
//!
//! A statement runs on the calling thread, start to end, inside the `async fn` that runs it:
//! no hop to a worker thread and back per statement (sqlx's SQLite driver makes two thread
//! switches of every statement, several times the cost of a point read itself). Reads and the
//! statements of an open write transaction never wait for a lock here: WAL readers do not
//! wait, and the writer already holds SQLite's write lock. A statement that takes the write
//! lock waits for another process's writer with async pauses (see [`Conn::new`]). A COMMIT's
//! `fsync` runs in place too: writes take turns, so at most one runtime worker at a time waits
//! on a disk, and group commit makes that one wait serve every writer queued behind it. Handing
//! the `fsync` off the worker (`block_in_place`, a blocking thread) costs two thread switches,
//! which measured more CPU per card step than the `fsync` itself.
//!
//! `$N` parameters are bound by their number, as in PostgreSQL: SQLite numbers parameters by
//! first appearance, which is not the same when a query uses `$2` before `$1` or repeats one.

use rusqlite::types::{FromSql, Value, ValueRef};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A failure of the SQLite backend.
#[derive(Debug)]
pub enum Error {
    Sqlite(rusqlite::Error),
    /// `fetch_one` found no row.
    RowNotFound,
    /// The writers' or readers' connections are closed.
    Closed,
    Io(std::io::Error),
    /// The store's own protocol (a group commit that did not happen, a column of the wrong
    /// type, a parameter without a value).
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(e) => write!(f, "{e}"),
            Self::RowNotFound => f.write_str("no rows returned by a query that expected a row"),
            Self::Closed => f.write_str("the database is closed"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl Error {
    /// SQLite's extended result code, for a failure SQLite reported.
    pub(crate) fn extended_code(&self) -> Option<i32> {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => Some(e.extended_code),
            _ => None,
        }
    }

    /// SQLite's message, for a failure SQLite reported.
    pub(crate) fn message(&self) -> Option<&str> {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(_, Some(m))) => Some(m),
            _ => None,
        }
    }
}

/// One connection.
pub(crate) struct Conn {
    inner: rusqlite::Connection,
    /// Writes on it may wait for another process's writer (the writers' connection).
    writer: bool,
}

/// Prepared statements kept per connection: every query of the store, with room to spare.
const STATEMENT_CACHE: usize = 256;

/// A statement longer than this (a multi-row INSERT) is prepared for once and not kept.
const CACHED_SQL_MAX: usize = 4096;

impl Conn {
    /// `writer`: the writers' connection, whose writes may find another process's writer
    /// holding SQLite's lock. It is set to wait for no lock itself (`busy_timeout` 0): a
    /// statement that finds the lock taken is tried again after an async pause, for up to
    /// [`LOCK_WAIT`], so a single-threaded runtime keeps running meanwhile (the holder may be
    /// on it).
    pub(crate) fn new(inner: rusqlite::Connection, writer: bool) -> Result<Self, Error> {
        inner.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        if writer {
            inner.busy_timeout(Duration::ZERO)?;
        }
        Ok(Self { inner, writer })
    }

    pub(crate) fn raw(&self) -> &rusqlite::Connection {
        &self.inner
    }

    /// Runs `sql` (one or more statements, no parameters), trying again while another
    /// process's writer holds the lock.
    pub(crate) async fn execute_batch(&mut self, sql: &str) -> Result<(), Error> {
        let mut wait = LockWait::new(self);
        loop {
            match self.inner.execute_batch(sql).map_err(Error::from) {
                Err(e) if wait.again(&e) => wait.pause().await,
                done => return done,
            }
        }
    }

    /// Runs one statement, trying again while another process's writer holds the lock.
    async fn run(
        &mut self,
        sql: &str,
        args: &[Value],
        mut each: impl FnMut(&[Arc<str>], &rusqlite::Row<'_>) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut wait = LockWait::new(self);
        loop {
            match self.run_once(sql, args, &mut each) {
                Err(e) if wait.again(&e) => wait.pause().await,
                done => return done,
            }
        }
    }

    fn run_once(
        &mut self,
        sql: &str,
        args: &[Value],
        each: &mut impl FnMut(&[Arc<str>], &rusqlite::Row<'_>) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let inner = &self.inner;
        let mut st = if sql.len() <= CACHED_SQL_MAX {
            Statement::Cached(inner.prepare_cached(sql)?)
        } else {
            Statement::Once(inner.prepare(sql)?)
        };
        let st = st.get();
        bind(st, args)?;
        let before = inner.total_changes();
        let columns = st.column_count();
        if columns == 0 {
            st.raw_execute()?;
        } else {
            let names: Vec<Arc<str>> = (0..columns)
                .map(|i| st.column_name(i).map(Arc::from))
                .collect::<Result<_, _>>()?;
            let mut rows = st.raw_query();
            while let Some(row) = rows.next()? {
                each(&names, row)?;
            }
        }
        // `changes` is the last write's count, whatever statement came last: a statement that
        // changed no row (a read, DDL, an UPDATE that matched nothing) changed nothing.
        Ok(if inner.total_changes() == before {
            0
        } else {
            inner.changes()
        })
    }
}

/// How long a write waits for another process's writer before it is refused as busy.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The waiting of one statement for SQLite's write lock.
struct LockWait {
    writer: bool,
    autocommit: bool,
    until: Instant,
    pause: Duration,
}

impl LockWait {
    fn new(conn: &Conn) -> Self {
        Self {
            writer: conn.writer,
            autocommit: conn.inner.is_autocommit(),
            until: Instant::now() + LOCK_WAIT,
            pause: Duration::from_millis(1),
        }
    }

    /// Whether to try again: the writers' connection found the lock taken before the
    /// statement began (outside a transaction, so it changed nothing), within the wait.
    fn again(&self, e: &Error) -> bool {
        self.writer
            && self.autocommit
            && e.extended_code().is_some_and(|c| c & 0xff == BUSY)
            && Instant::now() < self.until
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(50));
    }
}

/// SQLite's primary result code for a lock another connection holds.
const BUSY: i32 = 5;

enum Statement<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Once(rusqlite::Statement<'c>),
}

impl<'c> Statement<'c> {
    fn get(&mut self) -> &mut rusqlite::Statement<'c> {
        match self {
            Self::Cached(s) => s,
            Self::Once(s) => s,
        }
    }
}

/// Binds `$N` to `args[N - 1]` (and a bare `?` to the next value in order). Every value
/// bound must be used: one left over is a query and its binds out of step.
fn bind(st: &mut rusqlite::Statement<'_>, args: &[Value]) -> Result<(), Error> {
    let mut used = vec![false; args.len()];
    for i in 1..=st.parameter_count() {
        let at = match st.parameter_name(i) {
            None => i - 1,
            Some(name) => name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1))
                .ok_or_else(|| Error::Other(format!("unsupported parameter {name}")))?,
        };
        let value = args
            .get(at)
            .ok_or_else(|| Error::Other(format!("no value bound for parameter {}", at + 1)))?;
        st.raw_bind_parameter(i, value)?;
        used[at] = true;
    }
    match used.iter().position(|u| !u) {
        Some(at) => Err(Error::Other(format!(
            "value {} of {} bound is not used by the statement",
            at + 1,
            args.len()
        ))),
        None => Ok(()),
    }
}

/// A value a query binds.
pub(crate) trait Bind {
    fn value(self) -> Value;
}

impl Bind for Value {
    fn value(self) -> Value {
        self
    }
}

impl Bind for String {
    fn value(self) -> Value {
        Value::Text(self)
    }
}

impl Bind for &String {
    fn value(self) -> Value {
        Value::Text(self.clone())
    }
}

impl Bind for &str {
    fn value(self) -> Value {
        Value::Text(self.to_string())
    }
}

impl Bind for Vec<u8> {
    fn value(self) -> Value {
        Value::Blob(self)
    }
}

impl Bind for &Vec<u8> {
    fn value(self) -> Value {
        Value::Blob(self.clone())
    }
}

impl Bind for &[u8] {
    fn value(self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl Bind for i64 {
    fn value(self) -> Value {
        Value::Integer(self)
    }
}

impl Bind for i32 {
    fn value(self) -> Value {
        Value::Integer(self.into())
    }
}

impl Bind for bool {
    fn value(self) -> Value {
        Value::Integer(self.into())
    }
}

impl<T: Bind> Bind for Option<T> {
    fn value(self) -> Value {
        self.map_or(Value::Null, Bind::value)
    }
}

impl<T: Bind + Clone> Bind for &Option<T> {
    fn value(self) -> Value {
        self.clone().value()
    }
}

/// One row, owned.
pub(crate) struct Row {
    names: Arc<[Arc<str>]>,
    values: Vec<Value>,
}

impl Row {
    fn of(names: &Arc<[Arc<str>]>, row: &rusqlite::Row<'_>) -> Result<Self, Error> {
        let values = (0..names.len())
            .map(|i| owned(row.get_ref(i)?, &names[i]))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            names: names.clone(),
            values,
        })
    }

    /// The value of column `name`.
    pub(crate) fn try_get<T: FromSql, I: AsRef<str>>(&self, name: I) -> Result<T, Error> {
        let name = name.as_ref();
        let at = self
            .names
            .iter()
            .position(|n| &**n == name)
            .ok_or_else(|| Error::Other(format!("no column {name}")))?;
        decode(&self.values[at], name)
    }
}

fn owned(value: ValueRef<'_>, name: &str) -> Result<Value, Error> {
    Value::try_from(value).map_err(|e| Error::Other(format!("column {name}: {e}")))
}

fn decode<T: FromSql>(value: &Value, name: &str) -> Result<T, Error> {
    T::column_result(ValueRef::from(value)).map_err(|e| Error::Other(format!("column {name}: {e}")))
}

/// What a column decodes to.
pub(crate) trait Column: FromSql {}

impl<T: FromSql> Column for T {}

/// Column `name` of `row`.
pub(crate) fn get<T: Column>(row: &Row, name: &str) -> Result<T, Error> {
    row.try_get(name)
}

/// Where a query runs: a connection (generic, as sqlx's executors are, so that the shared
/// queries pass `&mut *tx` to both backends alike).
pub(crate) trait Executor<'c> {
    fn conn(self) -> &'c mut Conn;
}

impl<'c> Executor<'c> for &'c mut Conn {
    fn conn(self) -> &'c mut Conn {
        self
    }
}

/// What a statement changed.
pub(crate) struct Done(u64);

impl Done {
    pub(crate) fn rows_affected(&self) -> u64 {
        self.0
    }
}

/// A statement and its values.
pub(crate) struct Query<'q> {
    sql: Cow<'q, str>,
    args: Vec<Value>,
}

pub(crate) fn query(sql: &str) -> Query<'_> {
    Query {
        sql: Cow::Borrowed(sql),
        args: Vec::new(),
    }
}

impl<'q> Query<'q> {
    pub(crate) fn bind(mut self, value: impl Bind) -> Self {
        self.args.push(value.value());
        self
    }

    pub(crate) async fn execute<'c>(self, e: impl Executor<'c>) -> Result<Done, Error> {
        e.conn()
            .run(&self.sql, &self.args, |_, _| Ok(()))
            .await
            .map(Done)
    }

    pub(crate) async fn fetch_all<'c>(self, e: impl Executor<'c>) -> Result<Vec<Row>, Error> {
        let mut out = Vec::new();
        let mut names: Option<Arc<[Arc<str>]>> = None;
        e.conn()
            .run(&self.sql, &self.args, |cols, row| {
                let names = names.get_or_insert_with(|| cols.into());
                out.push(Row::of(names, row)?);
                Ok(())
            })
            .await?;
        Ok(out)
    }

    pub(crate) async fn fetch_optional<'c>(
        self,
        e: impl Executor<'c>,
    ) -> Result<Option<Row>, Error> {
        let mut out = None;
        e.conn()
            .run(&self.sql, &self.args, |cols, row| {
                if out.is_none() {
                    out = Some(Row::of(&cols.into(), row)?);
                }
                Ok(())
            })
            .await?;
        Ok(out)
    }

    pub(crate) async fn fetch_one<'c>(self, e: impl Executor<'c>) -> Result<Row, Error> {
        self.fetch_optional(e).await?.ok_or(Error::RowNotFound)
    }
}

/// A query whose first column is the answer.
pub(crate) struct QueryScalar<'q, T> {
    query: Query<'q>,
    _t: std::marker::PhantomData<fn() -> T>,
}

pub(crate) fn query_scalar<T: FromSql>(sql: &str) -> QueryScalar<'_, T> {
    QueryScalar {
        query: query(sql),
        _t: std::marker::PhantomData,
    }
}

impl<'q, T: FromSql> QueryScalar<'q, T> {
    pub(crate) fn bind(mut self, value: impl Bind) -> Self {
        self.query = self.query.bind(value);
        self
    }

    pub(crate) async fn fetch_optional<'c>(self, e: impl Executor<'c>) -> Result<Option<T>, Error> {
        let mut out = None;
        e.conn()
            .run(&self.query.sql, &self.query.args, |cols, row| {
                if out.is_none() {
                    let value = owned(row.get_ref(0)?, &cols[0])?;
                    out = Some(decode(&value, &cols[0])?);
                }
                Ok(())
            })
            .await?;
        Ok(out)
    }

    pub(crate) async fn fetch_one<'c>(self, e: impl Executor<'c>) -> Result<T, Error> {
        self.fetch_optional(e).await?.ok_or(Error::RowNotFound)
    }
}

/// Builds a statement with a variable number of values (multi-row INSERTs). Its text holds
/// only the placeholders it writes itself.
pub(crate) struct QueryBuilder {
    sql: String,
    args: Vec<Value>,
}

impl QueryBuilder {
    pub(crate) fn new(init: impl Into<String>) -> Self {
        Self {
            sql: init.into(),
            args: Vec::new(),
        }
    }

    /// The statement so far.
    pub(crate) fn sql(&self) -> &String {
        &self.sql
    }

    pub(crate) fn push(&mut self, sql: impl fmt::Display) -> &mut Self {
        use fmt::Write as _;
        let _ = write!(self.sql, "{sql}");
        self
    }

    /// Appends a bare `?`, bound to the values in the order they are pushed. Not `$N`: SQLite
    /// looks a named parameter up by a linear scan, when it parses the statement and again when
    /// it binds, which makes a multi-row INSERT of thousands of values quadratic.
    pub(crate) fn push_bind(&mut self, value: impl Bind) -> &mut Self {
        self.args.push(value.value());
        self.sql.push('?');
        self
    }

    /// `VALUES (…), (…)`: `each` pushes one row's values.
    pub(crate) fn push_values<I: IntoIterator>(
        &mut self,
        rows: I,
        mut each: impl FnMut(Separated<'_>, I::Item),
    ) -> &mut Self {
        self.sql.push_str("VALUES ");
        for (i, row) in rows.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.sql.push('(');
            each(
                Separated {
                    builder: self,
                    first: true,
                },
                row,
            );
            self.sql.push(')');
        }
        self
    }

    pub(crate) fn build(&mut self) -> Query<'_> {
        Query {
            sql: Cow::Borrowed(&self.sql),
            args: std::mem::take(&mut self.args),
        }
    }
}

/// One row's values in [`QueryBuilder::push_values`], separated by commas.
pub(crate) struct Separated<'b> {
    builder: &'b mut QueryBuilder,
    first: bool,
}

impl Separated<'_> {
    pub(crate) fn push_bind(&mut self, value: impl Bind) -> &mut Self {
        if !self.first {
            self.builder.sql.push_str(", ");
        }
        self.first = false;
        self.builder.push_bind(value);
        self
    }

    pub(crate) fn push_unseparated(&mut self, sql: impl fmt::Display) -> &mut Self {
        self.builder.push(sql);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        Conn::new(rusqlite::Connection::open_in_memory().unwrap(), false).unwrap()
    }

    // `$N` is bound by its number, whatever order the query names the parameters in and
    // however often it repeats one.
    #[tokio::test]
    async fn parameters_bind_by_number() {
        let mut c = conn();
        let row = query("SELECT $2 AS b, $1 AS a, $2 || $1 AS ba")
            .bind("one")
            .bind("two")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>("a").unwrap(), "one");
        assert_eq!(row.try_get::<String, _>("b").unwrap(), "two");
        assert_eq!(row.try_get::<String, _>("ba").unwrap(), "twoone");
        let missing = query("SELECT $3").bind(1i64).fetch_one(&mut c).await;
        assert!(matches!(missing, Err(Error::Other(m)) if m.contains("parameter 3")));
        let extra = query("SELECT $1")
            .bind(1i64)
            .bind(2i64)
            .fetch_one(&mut c)
            .await;
        assert!(matches!(extra, Err(Error::Other(m)) if m.contains("value 2 of 2")));
        let gap = query("SELECT $1, $3").bind(1i64).bind(2i64).bind(3i64);
        let gap = gap.fetch_one(&mut c).await;
        assert!(matches!(gap, Err(Error::Other(m)) if m.contains("value 2 of 3")));
    }

    #[tokio::test]
    async fn rows_changes_and_types() {
        let mut c = conn();
        query("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, b BLOB, n INTEGER)")
            .execute(&mut c)
            .await
            .unwrap();
        let mut q = QueryBuilder::new("INSERT INTO t (id, s, b, n) ");
        q.push_values(1..=3i64, |mut r, i| {
            r.push_bind(i)
                .push_bind(format!("s{i}"))
                .push_bind(vec![i as u8])
                .push_bind((i != 2).then_some(i * 10));
        });
        assert_eq!(q.build().execute(&mut c).await.unwrap().rows_affected(), 3);
        let rows = query("SELECT id, s, b, n FROM t ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].try_get::<Vec<u8>, _>("b").unwrap(), vec![2]);
        assert_eq!(rows[1].try_get::<Option<i64>, _>("n").unwrap(), None);
        assert!(rows[0].try_get::<String, _>("n").is_err());
        let n = query("UPDATE t SET n = 0 WHERE id > $1 RETURNING id")
            .bind(1i64)
            .execute(&mut c)
            .await
            .unwrap();
        assert_eq!(n.rows_affected(), 2);
        let read = query("SELECT id FROM t").execute(&mut c).await.unwrap();
        assert_eq!(read.rows_affected(), 0);
        let ddl = query("CREATE INDEX t_s ON t (s)").execute(&mut c).await;
        assert_eq!(ddl.unwrap().rows_affected(), 0);
        let none = query("SELECT id FROM t WHERE id = $1")
            .bind(9i64)
            .fetch_optional(&mut c)
            .await
            .unwrap();
        assert!(none.is_none());
        let count: i64 = query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(count, 3);
    }
}
