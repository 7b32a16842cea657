//! Test support shared by certreg's crates, never shipped: the harness that runs a Playwright
//! script (Node.js + Debian's Chromium) for the browser tests of the agent and the web service,
//! fresh PostgreSQL databases for tests and benchmarks, scratch directories and the OpenSSL CLI,
//! an `openssl ocsp` responder ([`ocsp`]), a CRL distribution point ([`cdp`]) and SQL run on a
//! database outside the store ([`outside`]).
//! With the `fixtures` feature, what the service's suites share: the seeded agencies
//! ([`seed`]), fresh store databases on SQLite and PostgreSQL ([`db`]), the validator of the
//! test PKI ([`validator`]) and a card check the test holds ([`gate`]).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cdp;
#[cfg(feature = "fixtures")]
pub mod db;
#[cfg(feature = "fixtures")]
pub mod gate;
pub mod ocsp;
pub mod outside;
#[cfg(feature = "fixtures")]
pub mod seed;

/// The validator of the test PKI at `now`: its trust anchors, and CRLs issued an hour before
/// `now` and next updated 30 days after; default options, no path cache.
#[cfg(feature = "fixtures")]
pub fn validator(pki: &testpki::TestPki, now: time::OffsetDateTime) -> pki::validate::Validator {
    pki::validate::Validator::new(
        pki.trust_store().expect("the test PKI's anchors"),
        pki.crl_store(
            now - time::Duration::hours(1),
            now + time::Duration::days(30),
        )
        .expect("the test PKI's CRLs"),
        pki::validate::ValidationOptions::default(),
    )
}

/// Where Debian puts Chromium; `CERTREG_CHROMIUM` overrides it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Checks node and Chromium and runs `npm ci` in `dir` when its node_modules is missing or older
/// than its package-lock.json.
/// Fails with the Debian package names instead of skipping: a silently skipped browser test is
/// a browser test that never runs in CI. `what` names the test in the messages.
pub fn require_tools(dir: &Path, what: &str) -> PathBuf {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "{what} needs Node.js: install the Debian packages `nodejs` and `npm` \
         (apt-get install nodejs npm); `node --version` gave {node:?}"
    );
    let chromium = std::env::var_os("CERTREG_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    assert!(
        chromium.is_file(),
        "{what} needs Chromium at {}: install the Debian package `chromium` \
         (apt-get install chromium), or set CERTREG_CHROMIUM",
        chromium.display()
    );
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let installed = modified(dir.join("node_modules/.package-lock.json"));
    if installed.is_none() || installed < modified(dir.join("package-lock.json")) {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("running npm failed ({e}): install the Debian package `npm`")
            });
        assert!(
            out.status.success(),
            "npm ci --prefix {} failed (it needs the npm registry):\n{}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    chromium
}

/// Runs `node script` in `dir` with `envs`, calling `tick` about every 100 ms while it runs
/// (tests use it to answer the script), and kills it after `deadline` — the backstop if node
/// itself hangs. Returns (exit code, stdout, stderr); the code is `None` when it was killed.
pub fn run_node(
    script: &Path,
    dir: &Path,
    envs: &[(&str, String)],
    deadline: Duration,
    tick: &mut dyn FnMut(),
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop::new(cmd.spawn().expect("start node"));
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    // Read both pipes on their own threads so a chatty script never blocks on a full pipe.
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > end {
            break None;
        }
        tick();
        std::thread::sleep(Duration::from_millis(100));
    };
    // Killed (if still running) before the pipes are read to their end.
    drop(child);
    (
        status.and_then(|s| s.code()),
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default(),
    )
}

/// A PostgreSQL database of its own, created on the server of `admin_url` and dropped (with
/// `FORCE`, so open pools do not keep it alive) when this value goes — also when a test panics.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl PgDatabase {
    /// Creates `<prefix>_<random>`; panics with the URL's server when it cannot.
    pub async fn create(admin_url: &str, prefix: &str) -> Self {
        use ring::rand::SecureRandom as _;
        use sqlx::Connection as _;
        let mut bytes = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .expect("randomness");
        let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{prefix}_{suffix}");
        let mut c = sqlx::PgConnection::connect(admin_url)
            .await
            .expect("connecting to TEST_DATABASE_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .expect("create database");
        let _ = c.close().await;
        Self {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // A runtime of its own: the caller's runtime may be shutting down or unwinding.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut c = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
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

/// `base` with its database name replaced (query parameters kept).
pub fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// A fresh directory under the system temp dir (`certreg-TAG-PID-N`), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("certreg-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is killed and reaped when this value goes: at the end of the test
/// that started it, and also when that test panics, so a failed test leaves no process behind.
#[derive(Debug)]
pub struct KillOnDrop(Child);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self(child)
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // An exited child is only reaped; kill() on it is a harmless error.
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs the OpenSSL CLI; returns (success, stdout, stderr).
pub fn openssl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_guarded_child_is_gone_after_a_panic() {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id();
        let panicked = std::panic::catch_unwind(move || {
            let _guard = super::KillOnDrop::new(child);
            panic!("the test fails while its child runs");
        });
        assert!(panicked.is_err());
        // Reaped by the guard: no such process any more (not even a zombie).
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the panic"
        );
    }

    #[test]
    fn database_name_is_replaced_and_parameters_kept() {
        use super::with_database as w;
        assert_eq!(
            w("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            w("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(w("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
