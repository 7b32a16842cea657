//! Two `certreg serve` processes on one PostgreSQL database, as behind a load balancer: a first
//! registration started on one goes on on the other, and `kill -9` of one between card steps
//! and in the middle of 確認 loses no committed write, leaves no half registration, and the
//! other keeps serving.

use crate::serve::{command, dechunk, start, word_after};
use base64::Engine as _;
use serde_json::{Value, json};
use sqlx::Connection as _;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::KillOnDrop;
use testkit::seed;

/// The public origin of the balancer in front of both instances: card proofs are bound to it,
/// and every request names its host, as one passed on by the balancer does.
const ORIGIN: &str = "http://127.0.0.1:8080";
const HOST: &str = "127.0.0.1:8080";

/// Each instance connects under a name of its own, so the test can tell their database
/// sessions apart.
const NAME_A: &str = "certreg_instance_a";
const NAME_B: &str = "certreg_instance_b";

/// (agency code, organization card, administrator card) of the three first registrations, of
/// testkit's seeded agencies.
const FIRST: (&str, &str, &str) = (seed::TAIPEI, "gca-agency", "moica-admin");
const KILLED_AT_CONFIRM: (&str, &str, &str) = (seed::SCHOOL, "xca-school", "moica-admin2");
const KILLED_BETWEEN_CARDS: (&str, &str, &str) = (seed::HOSPITAL, "hca-hospital", "moica-admin");

/// How long any observable state is waited for before the test gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// A test card read back from the generated PKI on disk, as a card reader holds it.
struct Card {
    cert_der: Vec<u8>,
    key_pkcs8_der: Vec<u8>,
    national_id: Option<String>,
    holder: String,
}

fn card(name: &str) -> Card {
    let index: Value =
        serde_json::from_slice(&std::fs::read(crate::generated().join("index.json")).unwrap())
            .unwrap();
    let path = format!("cards/{name}.p12");
    let entry = index["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path.as_str())
        .unwrap_or_else(|| panic!("{path} not in index.json"));
    let p12 = pki::pkcs12::read_pkcs12(
        &std::fs::read(crate::generated().join(&path)).unwrap(),
        entry["pin"].as_str().unwrap(),
    )
    .unwrap();
    Card {
        cert_der: p12.cert_der,
        key_pkcs8_der: p12.key_pkcs8_der,
        national_id: entry["national_id"].as_str().map(String::from),
        holder: entry["holder"].as_str().unwrap().to_string(),
    }
}

/// The card's CMS signature over `tbs`, base64, as the card agent returns it.
fn sign(card: &Card, tbs: &str) -> String {
    let cms =
        pki::cms::build_signed_data(tbs.as_bytes(), &card.cert_der, &Default::default(), |m| {
            pki::sig::sign_pkcs8(&card.key_pkcs8_der, m)
        })
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(cms)
}

/// One HTTP/1.1 exchange over a fresh connection, as the balancer forwards it; the raw
/// answer, which is empty when the instance died before answering.
fn exchange(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<String> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(PATIENCE))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// Status and JSON body of an answer.
fn parse(text: &str) -> (u16, Value) {
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    (status, value)
}

fn call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let text = exchange(base, method, path, token, body.as_ref())
        .unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"));
    parse(&text)
}

#[track_caller]
fn expect(got: (u16, Value), status: u16) -> Value {
    assert_eq!(got.0, status, "{}", got.1);
    got.1
}

/// A new API session (a bearer token) made on `base`.
fn session(base: &str) -> String {
    let v = expect(call(base, "POST", "/api/v1/sessions", None, None), 201);
    v["token"].as_str().unwrap().to_string()
}

/// A first registration started on `base`, its terms agreed to; the flow's id.
fn start_flow(base: &str, token: &str) -> String {
    let v = expect(
        call(
            base,
            "POST",
            "/api/v1/flows",
            Some(token),
            Some(json!({ "kind": "first_registration" })),
        ),
        201,
    );
    let flow = v["id"].as_str().unwrap().to_string();
    let v = expect(
        call(
            base,
            "POST",
            &format!("/api/v1/flows/{flow}/terms"),
            Some(token),
            Some(json!({})),
        ),
        200,
    );
    assert_eq!(v["step"], "org_card", "{v}");
    flow
}

/// A challenge issued by `base`: (challenge id, TBS).
fn challenge(base: &str, token: &str, flow: &str) -> (String, String) {
    let v = expect(
        call(
            base,
            "POST",
            &format!("/api/v1/flows/{flow}/challenge"),
            Some(token),
            Some(json!({})),
        ),
        200,
    );
    (
        v["challenge_id"].as_str().unwrap().to_string(),
        v["tbs"].as_str().unwrap().to_string(),
    )
}

/// The proof of `card` for the challenge `(id, tbs)`, posted to `base` with `fields`.
fn submit(
    base: &str,
    token: &str,
    flow: &str,
    (challenge_id, tbs): &(String, String),
    card: &Card,
    fields: Value,
) -> (u16, Value) {
    let mut body = json!({ "challenge_id": challenge_id, "signature": sign(card, tbs) });
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    call(
        base,
        "POST",
        &format!("/api/v1/flows/{flow}/card"),
        Some(token),
        Some(body),
    )
}

fn org_fields(code: &str) -> Value {
    json!({ "institution_code": code })
}

fn admin_fields(admin: &Card) -> Value {
    json!({ "national_id": admin.national_id.as_deref().unwrap() })
}

fn contact(admin: &Card) -> Value {
    json!({ "name": admin.holder, "email": "admin@example.gov.tw", "phone": "02-2345-6789",
            "phone_ext": "123", "unit": "人事處", "title": "科員" })
}

fn confirm_path(flow: &str) -> String {
    format!("/api/v1/flows/{flow}/confirm")
}

/// What is on file for `code`: (registrations, first-registration receipts, audit entries of a
/// first registration).
async fn on_file(db: &mut sqlx::PgConnection, code: &str) -> (i64, i64, i64) {
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).bind(code.to_string());
    let registrations = count("SELECT count(*) FROM registrations WHERE code = $1")
        .fetch_one(&mut *db)
        .await
        .unwrap();
    let receipts =
        count("SELECT count(*) FROM receipts WHERE code = $1 AND kind = 'first_registration'")
            .fetch_one(&mut *db)
            .await
            .unwrap();
    let audit = count(
        "SELECT count(*) FROM audit_log WHERE code = $1 \
         AND action = 'registration.first_registration'",
    )
    .fetch_one(&mut *db)
    .await
    .unwrap();
    (registrations, receipts, audit)
}

/// `url` with the connection's application name set.
fn named(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

/// `certreg serve` on `database_url`, port 0, with the shared key file, anchors and CRLs.
fn serve(database_url: &str, key: &Path) -> (KillOnDrop, String) {
    let pki = crate::generated();
    let crls: Vec<String> = ["gca", "xca", "moeaca", "hca", "moica"]
        .iter()
        .map(|c| pki.join(format!("crl/{c}.crl")).display().to_string())
        .collect();
    let mut cmd = command();
    cmd.arg("serve")
        .env("CERTREG_DATABASE_URL", database_url)
        .env("CERTREG_KEY_FILE", key)
        .env("CERTREG_LISTEN", "127.0.0.1:0")
        .env("CERTREG_PUBLIC_ORIGIN", ORIGIN)
        .env("CERTREG_ANCHORS_DIR", pki.join("anchors"))
        .env("CERTREG_CRLS", crls.join(","))
        // Only what goes wrong: nobody reads stderr while the instance runs, and a full pipe
        // would stall it.
        .env("RUST_LOG", "warn");
    let (child, line) = start(cmd, "certreg listening on", Duration::from_secs(120));
    let base = word_after(&line, "on").to_string();
    (child, base)
}

fn healthy(base: &str) {
    let v = expect(call(base, "GET", "/healthz", None, None), 200);
    assert_eq!(v["database"]["ok"], true, "{v}");
}

/// Polls `probe` until it gives a value, for at most [`PATIENCE`].
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_instances_share_flows_and_a_kill_9_leaves_no_half_registration() {
    let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("not run: TEST_DATABASE_URL is not set");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Dropped last (after both instances): the database goes with the test, also on a panic.
    let pg = rt.block_on(testkit::PgDatabase::create(&admin_url, "certreg_instances"));
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("certreg.key");
    let env = [
        ("CERTREG_DATABASE_URL", pg.url.as_str()),
        ("CERTREG_KEY_FILE", key.to_str().unwrap()),
    ];

    // Master data, written by another process before the instances start (it also creates
    // the key file both instances read the other's encrypted rows with).
    let csv = dir.path().join("agencies.csv");
    let rows: String = seed::agencies()
        .iter()
        .map(|a| {
            format!(
                "{},{},{},{}\n",
                a.code.as_str(),
                a.name,
                a.county,
                a.org_identifier.as_ref().map_or("", |o| o.as_str())
            )
        })
        .collect();
    std::fs::write(&csv, format!("機關代號,機關名稱,縣市,機關憑證OID\n{rows}")).unwrap();
    let (code, lines, err) =
        crate::certreg_env(&["agencies", "import", csv.to_str().unwrap()], &env);
    assert_eq!(
        (code, &lines[0]["imported"]),
        (0, &json!(seed::agencies().len())),
        "{err}"
    );

    let (mut a, base_a) = serve(&named(&pg.url, NAME_A), &key);
    let (_b, base_b) = serve(&named(&pg.url, NAME_B), &key);
    healthy(&base_a);
    healthy(&base_b);
    let mut sql = rt.block_on(sqlx::PgConnection::connect(&pg.url)).unwrap();

    // 1. Started on A, continued on B: the session, the flow and the challenges live in the
    // database, not in the instance that made them.
    let (code, org, admin) = (FIRST.0, card(FIRST.1), card(FIRST.2));
    let t = session(&base_a);
    let flow = start_flow(&base_a, &t);
    let v = expect(
        submit(
            &base_a,
            &t,
            &flow,
            &challenge(&base_a, &t, &flow),
            &org,
            org_fields(code),
        ),
        200,
    );
    assert_eq!(v["step"], "admin_card", "{v}");
    // A challenge issued by A, answered on B.
    let issued_by_a = challenge(&base_a, &t, &flow);
    let v = expect(
        submit(
            &base_b,
            &t,
            &flow,
            &issued_by_a,
            &admin,
            admin_fields(&admin),
        ),
        200,
    );
    assert_eq!(v["step"], "confirm", "{v}");
    let v = expect(
        call(
            &base_b,
            "POST",
            &confirm_path(&flow),
            Some(&t),
            Some(contact(&admin)),
        ),
        200,
    );
    assert_eq!(
        (&v["flow"], &v["code"]),
        (&json!("first_registration"), &json!(code))
    );
    assert_eq!(rt.block_on(on_file(&mut sql, code)), (1, 1, 1));
    // Each instance sees the other's write.
    for base in [&base_a, &base_b] {
        let v = expect(
            call(
                base,
                "GET",
                &format!("/api/v1/agencies/{code}/receipts"),
                Some(&t),
                None,
            ),
            200,
        );
        assert_eq!(v["receipts"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["receipts"][0]["kind"], "first_registration", "{v}");
    }

    // 2. A flow left between its card steps on A: organization card done, the administrator
    // card's challenge issued, when A goes.
    let (between_code, between_org, between_admin) = (
        KILLED_BETWEEN_CARDS.0,
        card(KILLED_BETWEEN_CARDS.1),
        card(KILLED_BETWEEN_CARDS.2),
    );
    let t_between = session(&base_a);
    let flow_between = start_flow(&base_a, &t_between);
    let v = expect(
        submit(
            &base_a,
            &t_between,
            &flow_between,
            &challenge(&base_a, &t_between, &flow_between),
            &between_org,
            org_fields(between_code),
        ),
        200,
    );
    assert_eq!(v["step"], "admin_card", "{v}");
    let pending_challenge = challenge(&base_a, &t_between, &flow_between);

    // 3. 確認 on A, and A killed while its transaction is open. The test holds the audit
    // chain's head row, which the commit takes last, so A's transaction is caught after the
    // registration, the receipt and the flow's step were written and before it can commit.
    let (killed_code, killed_org, killed_admin) = (
        KILLED_AT_CONFIRM.0,
        card(KILLED_AT_CONFIRM.1),
        card(KILLED_AT_CONFIRM.2),
    );
    let t_killed = session(&base_a);
    let flow_killed = start_flow(&base_a, &t_killed);
    let v = expect(
        submit(
            &base_a,
            &t_killed,
            &flow_killed,
            &challenge(&base_a, &t_killed, &flow_killed),
            &killed_org,
            org_fields(killed_code),
        ),
        200,
    );
    assert_eq!(v["step"], "admin_card", "{v}");
    let v = expect(
        submit(
            &base_a,
            &t_killed,
            &flow_killed,
            &challenge(&base_a, &t_killed, &flow_killed),
            &killed_admin,
            admin_fields(&killed_admin),
        ),
        200,
    );
    assert_eq!(v["step"], "confirm", "{v}");

    let mut holder = rt.block_on(sqlx::PgConnection::connect(&pg.url)).unwrap();
    let holder_pid: i32 = rt.block_on(async {
        sqlx::raw_sql("BEGIN").execute(&mut holder).await.unwrap();
        sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
            .execute(&mut holder)
            .await
            .unwrap();
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut holder)
            .await
            .unwrap()
    });
    let in_flight = {
        let (base, t, path, body) = (
            base_a.clone(),
            t_killed.clone(),
            confirm_path(&flow_killed),
            contact(&killed_admin),
        );
        std::thread::spawn(move || exchange(&base, "POST", &path, Some(&t), Some(&body)))
    };
    let blocked: i32 = wait_for("A's 確認 waiting for the audit head", || {
        assert!(
            !in_flight.is_finished(),
            "A answered 確認 before it reached the audit head"
        );
        rt.block_on(
            sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                 AND $2 = ANY(pg_blocking_pids(pid))",
            )
            .bind(NAME_A)
            .bind(holder_pid)
            .fetch_optional(&mut sql),
        )
        .unwrap()
    });
    // Its open transaction has written the rows a half registration would consist of.
    let written: Vec<String> = rt
        .block_on(
            sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE l.pid = $1 AND l.mode = 'RowExclusiveLock' ORDER BY 1",
            )
            .bind(blocked)
            .fetch_all(&mut sql),
        )
        .unwrap();
    for table in ["flows", "receipts", "registrations"] {
        assert!(
            written.iter().any(|t| t == table),
            "A's 確認 had not written {table} yet: {written:?}"
        );
    }
    a.kill().unwrap(); // SIGKILL: kill -9
    let status = a.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    let answer = in_flight.join().unwrap();
    assert!(
        answer.as_deref().map_or(true, str::is_empty),
        "A answered 確認 although it was killed before its commit: {answer:?}"
    );
    rt.block_on(sqlx::raw_sql("ROLLBACK").execute(&mut holder))
        .unwrap();
    // The database notices the dead client and rolls its transaction back.
    wait_for("A's database sessions to end", || {
        let n: i64 = rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                )
                .bind(NAME_A)
                .fetch_one(&mut sql),
            )
            .unwrap();
        (n == 0).then_some(())
    });

    // No half registration: nothing of it on file, and the flow still waits for 確認.
    assert_eq!(rt.block_on(on_file(&mut sql, killed_code)), (0, 0, 0));
    let v = expect(
        call(
            &base_b,
            "GET",
            &format!("/api/v1/flows/{flow_killed}"),
            Some(&t_killed),
            None,
        ),
        200,
    );
    assert_eq!(v["step"], "confirm", "{v}");
    // 確認 again, on B: it takes effect, once.
    let v = expect(
        call(
            &base_b,
            "POST",
            &confirm_path(&flow_killed),
            Some(&t_killed),
            Some(contact(&killed_admin)),
        ),
        200,
    );
    assert_eq!(v["code"], killed_code, "{v}");
    let v = expect(
        call(
            &base_b,
            "POST",
            &confirm_path(&flow_killed),
            Some(&t_killed),
            Some(contact(&killed_admin)),
        ),
        409,
    );
    assert_eq!(v["code"], "already_confirmed", "{v}");
    assert_eq!(rt.block_on(on_file(&mut sql, killed_code)), (1, 1, 1));

    // The flow A left between its card steps goes on on B, with the challenge A issued.
    let v = expect(
        submit(
            &base_b,
            &t_between,
            &flow_between,
            &pending_challenge,
            &between_admin,
            admin_fields(&between_admin),
        ),
        200,
    );
    assert_eq!(v["step"], "confirm", "{v}");
    expect(
        call(
            &base_b,
            "POST",
            &confirm_path(&flow_between),
            Some(&t_between),
            Some(contact(&between_admin)),
        ),
        200,
    );
    assert_eq!(rt.block_on(on_file(&mut sql, between_code)), (1, 1, 1));

    // B keeps serving: health, a new session and a new flow.
    healthy(&base_b);
    let fresh = session(&base_b);
    start_flow(&base_b, &fresh);

    // 4. What was committed before the kill is intact, and the audit chain verifies.
    assert_eq!(rt.block_on(on_file(&mut sql, code)), (1, 1, 1));
    let v = expect(
        call(
            &base_b,
            "GET",
            &format!("/api/v1/agencies/{code}/receipts"),
            Some(&fresh),
            None,
        ),
        200,
    );
    assert_eq!(v["receipts"].as_array().unwrap().len(), 1, "{v}");
    let registrations: i64 = rt
        .block_on(sqlx::query_scalar("SELECT count(*) FROM registrations").fetch_one(&mut sql))
        .unwrap();
    assert_eq!(registrations, 3);
    let (code, lines, err) = crate::certreg_env(&["audit", "verify"], &env);
    assert_eq!(code, 0, "{lines:?} {err}");
    rt.block_on(async {
        let _ = holder.close().await;
        let _ = sql.close().await;
    });
}
