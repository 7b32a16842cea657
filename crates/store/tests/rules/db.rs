//! A fresh database per test: a SQLite file in a temp dir, and a new PostgreSQL database when
//! `TEST_DATABASE_URL` is set (dropped when the guard goes).

use store::{Db, Secrets};

pub struct Guard {
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.pg.take() {
            // Dropping needs a runtime of its own: the test's runtime may be shutting down.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    use sqlx::Connection as _;
                    let mut c = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await
                    .ok()
                })
            })
            .join();
        }
    }
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
            pg: None,
        },
    ));
    if let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") {
        use sqlx::Connection as _;
        let name = format!(
            "certreg_rules_{}",
            pki::serial::hex_upper(&rand_bytes()).to_lowercase()
        );
        let mut c = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin_url.clone());
        let db = Db::connect(&format!("{base}/{name}"), &secrets())
            .await
            .unwrap();
        out.push((
            db,
            Guard {
                _dir: None,
                pg: Some((admin_url, name)),
            },
        ));
    }
    out
}

fn rand_bytes() -> [u8; 8] {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}
