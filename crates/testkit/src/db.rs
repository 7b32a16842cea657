//! Fresh databases for the service's tests and benchmarks: a SQLite file in a directory of its
//! own, or a new PostgreSQL database on the server of `TEST_DATABASE_URL`; either is removed
//! when the [`FreshDb`] goes, also when a test panics. The schema is made by the first
//! [`store::Db::connect`] (or `server::build`).

use crate::{PgDatabase, TempDir};
use std::path::PathBuf;
use store::{Backend, Db, Secrets};

/// The variable naming the PostgreSQL server tests may create databases on.
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

/// SQLite always; PostgreSQL too when `TEST_DATABASE_URL` is set (CI sets it).
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    if std::env::var_os(TEST_DATABASE_URL).is_some() {
        out.push(Backend::Postgres);
    }
    out
}

/// An empty database of its own and fresh keys for it.
pub struct FreshDb {
    pub url: String,
    pub secrets: Secrets,
    /// The SQLite file (None on PostgreSQL).
    pub file: Option<PathBuf>,
    _dir: Option<TempDir>,
    _pg: Option<PgDatabase>,
}

impl FreshDb {
    /// `certreg.db` in a new temporary directory.
    pub fn sqlite() -> Self {
        let dir = TempDir::new("db");
        let file = dir.path("certreg.db");
        Self {
            url: format!("sqlite://{}", file.display()),
            secrets: Secrets::generate().expect("keys"),
            file: Some(file),
            _dir: Some(dir),
            _pg: None,
        }
    }

    /// `<prefix>_<random>` on the server of `TEST_DATABASE_URL`, which must be set.
    pub async fn postgres(prefix: &str) -> Self {
        let admin = std::env::var(TEST_DATABASE_URL)
            .unwrap_or_else(|_| panic!("{TEST_DATABASE_URL} is not set"));
        let pg = PgDatabase::create(&admin, prefix).await;
        Self {
            url: pg.url.clone(),
            secrets: Secrets::generate().expect("keys"),
            file: None,
            _dir: None,
            _pg: Some(pg),
        }
    }

    /// A fresh database of `backend` (`prefix` names a PostgreSQL one).
    pub async fn on(backend: Backend, prefix: &str) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite(),
            Backend::Postgres => Self::postgres(prefix).await,
        }
    }

    /// One of each of [`backends`].
    pub async fn all(prefix: &str) -> Vec<Self> {
        let mut out = Vec::new();
        for backend in backends() {
            out.push(Self::on(backend, prefix).await);
        }
        out
    }

    pub fn backend(&self) -> Backend {
        if self.file.is_some() {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }

    /// Opens (and migrates) it with its keys.
    pub async fn connect(&self) -> Db {
        let db = Db::connect(&self.url, &self.secrets)
            .await
            .unwrap_or_else(|e| panic!("opening the fresh database {}: {e}", self.url));
        assert_eq!(db.backend(), self.backend());
        db
    }
}
