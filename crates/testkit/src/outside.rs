//! SQL run on a database outside the store, on a connection of its own: tampering with rows as
//! an attacker or an older version would, and reading what the store wrote. The backend is
//! the URL's (`sqlite://PATH` or `postgres://…`).

/// Runs `sql` (one or more statements); the database's own error if it refuses.
pub async fn try_exec(url: &str, sql: &str) -> Result<(), String> {
    match sqlite_file(url) {
        Some(path) => sqlite(&path)?.execute_batch(sql).map_err(|e| e.to_string()),
        None => {
            use sqlx::Connection as _;
            let mut c = sqlx::PgConnection::connect(url)
                .await
                .map_err(|e| e.to_string())?;
            let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut c)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = c.close().await;
            done
        }
    }
}

/// Runs `sql`; panics if the database refuses it.
pub async fn exec(url: &str, sql: &str) {
    if let Err(e) = try_exec(url, sql).await {
        panic!("{sql}: {e}");
    }
}

/// The integer a query answers (its first row's first column).
pub async fn integer(url: &str, sql: &str) -> i64 {
    scalar(url, sql).await
}

/// The text a query answers (its first row's first column).
pub async fn text(url: &str, sql: &str) -> String {
    scalar(url, sql).await
}

/// The first column of a query's first row, on either backend.
async fn scalar<T>(url: &str, sql: &str) -> T
where
    T: rusqlite::types::FromSql,
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    match sqlite_file(url) {
        Some(path) => sqlite(&path)
            .and_then(|c| {
                c.query_row(sql, [], |r| r.get(0))
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
        None => pg_scalar(url, sql).await,
    }
}

async fn pg_scalar<T>(url: &str, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    let v = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = c.close().await;
    v
}

/// The file of a `sqlite://PATH` or `sqlite:PATH` URL.
fn sqlite_file(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    Some(rest.split('?').next().unwrap_or(rest).to_string())
}

fn sqlite(path: &str) -> Result<rusqlite::Connection, String> {
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| format!("opening {path}: {e}"))?;
    c.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(c)
}
