//! A fresh database per test: a SQLite file in a temp dir, and a new PostgreSQL database when
//! `TEST_DATABASE_URL` is set (dropped when the guard goes).

use store::{Db, Secrets};

pub struct Guard {
    _dir: Option<tempfile::TempDir>,
    _pg: Option<testkit::PgDatabase>,
}

fn secrets() -> Secrets {
    Secrets::generate().unwrap()
}

pub async fn fresh_all() -> Vec<(Db, Guard)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("certreg.db").display());
    out.push((
        Db::connect(&url, &secrets()).await.unwrap(),
        Guard {
            _dir: Some(dir),
            _pg: None,
        },
    ));
    if let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") {
        let pg = testkit::PgDatabase::create(&admin_url, "certreg_rules").await;
        let db = Db::connect(&pg.url, &secrets()).await.unwrap();
        out.push((
            db,
            Guard {
                _dir: None,
                _pg: Some(pg),
            },
        ));
    }
    out
}
