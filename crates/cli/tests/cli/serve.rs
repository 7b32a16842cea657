//! `certreg demo` and `certreg serve` as real processes over real TCP sockets: start-up, the
//! health check, the menu, the card agent's card list, clean exit on SIGTERM, and the clear
//! exit-2 refusals of a bad database or anchors directory.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use testkit::KillOnDrop;

pub(crate) fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certreg"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CERTREG_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Starts `cmd` and waits (up to `wait`) for a stdout line containing `marker`; returns the
/// child and that line. Later stdout is drained so the child never blocks on a full pipe. The
/// child is killed when the returned guard goes, so a failing test leaves no server running.
pub(crate) fn start(mut cmd: Command, marker: &str, wait: Duration) -> (KillOnDrop, String) {
    let mut child = KillOnDrop::new(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs"),
    );
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let wanted = marker.to_string();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !found && line.contains(&wanted) {
                found = true;
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(wait) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("no {marker:?} line within {wait:?}; stderr:\n{err}");
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns status and body.
fn http(base: &str, method: &str, path: &str) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

pub(crate) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// SIGTERM, as a service manager stops it; the process must exit 0 on its own.
fn terminate(mut child: KillOnDrop) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            assert!(
                status.success(),
                "exit {status:?} after SIGTERM; stderr:\n{err}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("still running 30 s after SIGTERM");
}

pub(crate) fn word_after<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn demo(dir: &Path) -> (KillOnDrop, String, String) {
    let mut cmd = command();
    cmd.args(["demo", "--port", "0", "--agent-port", "0", "--dir"])
        .arg(dir);
    let (child, line) = start(cmd, "certreg demo: web", Duration::from_secs(600));
    let web = word_after(&line, "web").to_string();
    let agent = word_after(&line, "agent").to_string();
    (child, web, agent)
}

#[test]
fn demo_serves_the_site_and_the_agent_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, web, agent) = demo(dir.path());
    let (status, body) = http(&web, "GET", "/healthz");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["database"]["ok"], true);
    assert_eq!(health["crls"]["lists"].as_array().unwrap().len(), 5);
    let (status, html) = http(&web, "GET", "/");
    assert_eq!(status, 200);
    assert!(
        html.contains("首次註冊") && html.contains("經辦人登入"),
        "{html}"
    );
    assert!(html.contains(&agent), "the pages point at the demo's agent");
    let (status, body) = http(&agent, "POST", "/pkcs11info");
    assert_eq!(status, 200, "{body}");
    for card in [
        "gca-agency",
        "gca-agency-mismatch",
        "moica-admin",
        "moica-operator-1",
    ] {
        assert!(
            body.contains(&format!("\"label\":\"{card}\"")),
            "{card} not in a reader: {body}"
        );
    }
    assert!(
        !body.contains("\"label\":\"moica-revoked\""),
        "invalid cards stay out"
    );
    terminate(child);

    // A second start reuses the PKI and the database and signs fresh CRLs.
    let pin_before = std::fs::read(dir.path().join("pki/index.json")).unwrap();
    let (child, web, _) = demo(dir.path());
    assert_eq!(http(&web, "GET", "/healthz").0, 200);
    terminate(child);
    assert_eq!(
        std::fs::read(dir.path().join("pki/index.json")).unwrap(),
        pin_before
    );
}

/// Writes `csv` to `file` and imports it with `certreg calendar import` into `database_url`.
fn import_calendar(file: &Path, csv: &str, database_url: &str) {
    std::fs::write(file, csv).unwrap();
    let out = command()
        .args(["calendar", "import"])
        .arg(file)
        .args(["--database", database_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_with_a_config_file_on_sqlite_answers_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = command()
        .args(["pki", "generate", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let database_url = format!("sqlite://{}", dir.path().join("data/certreg.db").display());
    let config = dir.path().join("certreg.toml");
    let crls: Vec<String> = ["gca", "xca", "moeaca", "hca", "moica"]
        .iter()
        .map(|c| {
            format!(
                "{:?}",
                pki.join(format!("crl/{c}.crl")).display().to_string()
            )
        })
        .collect();
    std::fs::write(
        &config,
        format!(
            "database_url = {database_url:?}\nlisten = \"127.0.0.1:0\"\npublic_origin = \"http://127.0.0.1:8080\"\n\
             anchors_dir = {:?}\ncrls = [{}]\ncrl_refresh_minutes = 5\nlog_format = \"json\"\n",
            pki.join("anchors").display().to_string(),
            crls.join(", "),
        ),
    )
    .unwrap();
    let mut cmd = command();
    cmd.args(["serve", "--config"]).arg(&config);
    let (child, line) = start(cmd, "certreg listening on", Duration::from_secs(120));
    let base = word_after(&line, "on").to_string();
    let (status, body) = http(&base, "GET", "/healthz");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["database"]["ok"], true, "{body}");

    // The office calendar of every year the health check can look at while this test runs
    // (the service's year in Asia/Taipei and the next, whatever its clock says), imported by
    // another process: it reaches the running server on SIGHUP, and then the health check has
    // nothing to warn about. A missing year is a warning, tested with fixed dates elsewhere.
    let served_at = time::OffsetDateTime::parse(
        health["time"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let years: Vec<i32> = (served_at.year() - 1..=served_at.year() + 2).collect();
    let mut csv = String::new();
    for &y in &years {
        let year_csv = crate::calendar_csv(y);
        csv.push_str(if csv.is_empty() {
            &year_csv
        } else {
            year_csv.split_once("\r\n").unwrap().1
        });
    }
    import_calendar(&dir.path().join("calendar.csv"), &csv, &database_url);
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let loaded = |health: &serde_json::Value| {
        let have = health["calendar"]["years"].as_array().unwrap();
        years.iter().all(|y| have.contains(&serde_json::json!(y)))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let health = loop {
        let (_, body) = http(&base, "GET", "/healthz");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        if loaded(&health) {
            break health;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{years:?} not loaded 30 s after SIGHUP: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        health["calendar"]["warnings"],
        serde_json::json!([]),
        "{health}"
    );
    assert_eq!(health["status"], "ok", "{health}");
    let (status, metrics) = http(&base, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("route=\"/healthz\""), "{metrics}");
    terminate(child);
    assert!(
        dir.path().join("data/certreg.key").is_file(),
        "the key beside the database"
    );
}

pub(crate) fn serve_fails(env: &[(&str, &str)]) -> String {
    let out = command()
        .args(["serve"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_refuses_a_bad_anchors_dir_or_an_unreachable_database_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-anchors");
    let err = serve_fails(&[
        ("CERTREG_ANCHORS_DIR", missing.to_str().unwrap()),
        ("CERTREG_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(
        err.contains("trust anchors") && err.contains("no-anchors"),
        "{err}"
    );

    // Anchors fine, database unreachable (nothing listens on port 1).
    let pki = crate::generated().join("anchors");
    let key = dir.path().join("key");
    let err = serve_fails(&[
        ("CERTREG_ANCHORS_DIR", pki.to_str().unwrap()),
        (
            "CERTREG_DATABASE_URL",
            "postgres://certreg:secret@127.0.0.1:1/certreg",
        ),
        ("CERTREG_KEY_FILE", key.to_str().unwrap()),
        ("CERTREG_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(
        err.contains("cannot open the database postgres://certreg@127.0.0.1:1/certreg"),
        "{err}"
    );
    assert!(!err.contains("secret"), "no password in messages: {err}");
}

/// A chain whose head is not keyed under the key file (written before keying, or rewritten) is
/// not taken in by a starting service: it refuses to start and says what to do.
#[test]
fn serve_refuses_an_audit_chain_not_keyed_under_its_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("certreg.db");
    let url = format!("sqlite://{}", db_path.display());
    let key = dir.path().join("certreg.key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use domain::store::Store;
        let secrets = store::Secrets::load_or_create(&key).unwrap();
        let db = store::Db::connect(&url, &secrets).await.unwrap();
        let at = time::OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap();
        let event = domain::model::AuditEvent::new(at, "system", "test.event", "ok");
        db.append_audit(&event).await.unwrap();
        db.close().await;
        testkit::outside::exec(
            &url,
            "UPDATE audit_head SET hash = 'a plain sha-256 head' WHERE id = 1",
        )
        .await;
    });
    let anchors = crate::generated().join("anchors");
    let err = serve_fails(&[
        ("CERTREG_ANCHORS_DIR", anchors.to_str().unwrap()),
        ("CERTREG_DATABASE_URL", &url),
        ("CERTREG_KEY_FILE", key.to_str().unwrap()),
        ("CERTREG_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(
        err.contains("not keyed under the key file") && err.contains("certreg audit verify"),
        "{err}"
    );
}
