//! The `certreg pki` commands as operators and acceptance checks call them: the real binary, a
//! generated test PKI on disk, JSON on stdout and the exit codes.

mod instances;
mod revocation;
mod serve;

use base64::Engine as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn certreg(args: &[&str]) -> (i32, Vec<Value>, String) {
    certreg_env(args, &[])
}

/// Runs the binary with `env` set and no other `CERTREG_*` setting inherited from the caller.
fn certreg_env(args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<Value>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certreg"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CERTREG_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let values = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        values,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One generated hierarchy for the whole test binary.
fn generated() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("certreg-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (code, _, err) = certreg(&["pki", "generate", "--out", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        dir
    })
}

fn p(rel: &str) -> String {
    generated().join(rel).to_str().unwrap().to_string()
}

#[test]
fn generate_writes_an_index_of_every_file() {
    let index: Value = serde_json::from_slice(&std::fs::read(p("index.json")).unwrap()).unwrap();
    let files = index["files"].as_array().unwrap();
    assert!(files.len() > 40, "{}", files.len());
    for f in files {
        let path = f["path"].as_str().unwrap();
        assert!(
            generated().join(path).is_file(),
            "{path} listed but missing"
        );
    }
    let p12 = files
        .iter()
        .find(|f| f["path"] == "cards/moica-admin.p12")
        .unwrap();
    assert_eq!(p12["kind"], "pkcs12");
    assert!(p12["pin"].as_str().unwrap().len() >= 6);
    let bytes = std::fs::read(p("cards/moica-admin.p12")).unwrap();
    let contents = pki::pkcs12::read_pkcs12(&bytes, p12["pin"].as_str().unwrap()).unwrap();
    assert!(!contents.key_pkcs8_der.is_empty());
    assert_eq!(
        pki::pkcs12::read_pkcs12(&bytes, "000000").unwrap_err().code,
        pki::ErrorCode::WrongPassword
    );
    assert!(generated().join("anchors/manifest.toml").is_file());
}

#[test]
fn inspect_prints_the_documented_keys() {
    let (code, lines, err) = certreg(&[
        "pki",
        "inspect",
        &p("cards/moica-admin.pem"),
        &p("cards/gca-agency.pem"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.len(), 2);
    for key in [
        "serial",
        "issuer",
        "subject",
        "cn",
        "subject_type",
        "org_identifier",
        "id_last4",
        "not_before",
        "not_after",
        "key_usage",
        "policies",
        "crl_urls",
        "ocsp_urls",
        "sha256",
    ] {
        assert!(lines[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(lines[0]["subject_type"], "2.16.886.1.100.3.1.1");
    assert_eq!(lines[0]["id_last4"].as_str().unwrap().len(), 4);
    assert_eq!(lines[1]["subject_type"], "2.16.886.1.100.3.2.1.1");
    assert!(
        lines[1]["org_identifier"]
            .as_str()
            .unwrap()
            .starts_with("2.16.886.101.")
    );
}

#[test]
fn inspect_reports_bad_files_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("certreg-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let (code, lines, _) = certreg(&[
        "pki",
        "inspect",
        &p("cards/moica-admin.pem"),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(lines[0].get("serial").is_some());
    assert_eq!(lines[1]["ok"], false);
    assert_eq!(lines[1]["code"], "cert_malformed");
}

#[test]
fn verify_accepts_and_refuses_with_codes() {
    let anchors = p("anchors");
    let crl_moica = p("crl/moica.crl");
    let crl_gca = p("crl/gca.crl");
    let cases = [
        ("cards/moica-admin.pem", "citizen", 0, None),
        ("cards/gca-agency.pem", "organization", 0, None),
        (
            "cards/moica-revoked.pem",
            "citizen",
            1,
            Some("cert_revoked"),
        ),
        (
            "cards/gca-agency-revoked.pem",
            "organization",
            1,
            Some("cert_revoked"),
        ),
        (
            "cards/moica-expired.pem",
            "citizen",
            1,
            Some("cert_expired"),
        ),
        ("cards/moica-wrongku.pem", "citizen", 1, Some("key_usage")),
        (
            "cards/moica-admin.pem",
            "organization",
            1,
            Some("wrong_role"),
        ),
        ("cards/gca-agency.pem", "citizen", 1, Some("wrong_role")),
    ];
    for (cert, role, want, code) in cases {
        let (got, lines, err) = certreg(&[
            "pki",
            "verify",
            "--anchors",
            &anchors,
            "--role",
            role,
            "--crl",
            &crl_moica,
            "--crl",
            &crl_gca,
            &p(cert),
        ]);
        assert_eq!(got, want, "{cert} as {role}: {lines:?} {err}");
        match code {
            None => {
                assert_eq!(lines[0]["ok"], true);
                assert!(lines[0]["facts"]["sha256"].is_string());
                assert_eq!(lines[0]["revocation"], "crl");
            }
            Some(code) => {
                assert_eq!(lines[0]["ok"], false);
                assert_eq!(lines[0]["code"], code, "{cert}");
                assert!(lines[0]["message"].is_string());
            }
        }
    }
}

#[test]
fn verify_at_a_given_time_and_without_crls() {
    let anchors = p("anchors");
    let (code, lines, _) = certreg(&[
        "pki",
        "verify",
        "--anchors",
        &anchors,
        "--role",
        "citizen",
        "--at",
        "2000-01-01T00:00:00Z",
        &p("cards/moica-admin.pem"),
    ]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["code"], "cert_not_yet_valid");
    let (code, lines, _) = certreg(&[
        "pki",
        "verify",
        "--anchors",
        &anchors,
        "--role",
        "citizen",
        &p("cards/moica-revoked.pem"),
    ]);
    assert_eq!(
        code, 0,
        "no CRL given: revocation is not checked, and the output says so"
    );
    assert_eq!(lines[0]["revocation"], "not_checked");
    assert!(!lines[0]["warnings"].as_array().unwrap().is_empty());
    let (code, lines, _) = certreg(&[
        "pki",
        "verify",
        "--anchors",
        "/nonexistent",
        "--role",
        "citizen",
        &p("cards/moica-admin.pem"),
    ]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["code"], "anchor_config");
}

fn tbs_for_now() -> String {
    let c = pki::challenge::Challenge::new(
        "first_registration",
        "https://certreg.example.gov.tw",
        "flow-9",
        "org_card",
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    c.tbs()
}

#[test]
fn verify_proof_cms_made_with_the_soft_card() {
    let dir = std::env::temp_dir().join(format!("certreg-cli-proof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tbs = tbs_for_now();
    let index: Value = serde_json::from_slice(&std::fs::read(p("index.json")).unwrap()).unwrap();
    let pin = index["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "cards/gca-agency.p12")
        .unwrap()["pin"]
        .as_str()
        .unwrap()
        .to_string();
    let card =
        pki::pkcs12::read_pkcs12(&std::fs::read(p("cards/gca-agency.p12")).unwrap(), &pin).unwrap();
    let cms =
        pki::cms::build_signed_data(tbs.as_bytes(), &card.cert_der, &Default::default(), |m| {
            pki::sig::sign_pkcs8(&card.key_pkcs8_der, m)
        })
        .unwrap();
    let tbs_file = dir.join("tbs.txt");
    std::fs::write(&tbs_file, &tbs).unwrap();
    let sig_file = dir.join("sig.b64");
    std::fs::write(
        &sig_file,
        base64::engine::general_purpose::STANDARD.encode(&cms),
    )
    .unwrap();
    let (code, lines, err) = certreg(&[
        "pki",
        "verify-proof",
        "--anchors",
        &p("anchors"),
        "--role",
        "organization",
        "--crl",
        &p("crl/gca.crl"),
        "--tbs",
        tbs_file.to_str().unwrap(),
        "--signature",
        sig_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{lines:?} {err}");
    assert_eq!(lines[0]["format"], "cms_attached");
    assert!(lines[0]["facts"]["org_identifier"].is_string());

    // PKCS#1 needs the certificate beside it.
    let raw = pki::sig::sign_pkcs8(&card.key_pkcs8_der, tbs.as_bytes()).unwrap();
    let raw_file = dir.join("sig.bin");
    std::fs::write(&raw_file, &raw).unwrap();
    let (code, lines, _) = certreg(&[
        "pki",
        "verify-proof",
        "--anchors",
        &p("anchors"),
        "--role",
        "organization",
        "--tbs",
        tbs_file.to_str().unwrap(),
        "--signature",
        raw_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["code"], "proof_malformed");
    let (code, lines, err) = certreg(&[
        "pki",
        "verify-proof",
        "--anchors",
        &p("anchors"),
        "--role",
        "organization",
        "--tbs",
        tbs_file.to_str().unwrap(),
        "--signature",
        raw_file.to_str().unwrap(),
        "--cert",
        &p("cards/gca-agency.pem"),
    ]);
    assert_eq!(code, 0, "{lines:?} {err}");
    assert_eq!(lines[0]["format"], "pkcs1");

    // The same signature for another TBS.
    std::fs::write(&tbs_file, tbs_for_now()).unwrap();
    let (code, lines, _) = certreg(&[
        "pki",
        "verify-proof",
        "--anchors",
        &p("anchors"),
        "--role",
        "organization",
        "--tbs",
        tbs_file.to_str().unwrap(),
        "--signature",
        sig_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["code"], "challenge_mismatch");
}

#[test]
fn agent_cards_insert_list_eject_keep_state_in_a_file() {
    let state = std::env::temp_dir().join(format!(
        "certreg-cli-agent-state-{}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&state);
    let cards = p("cards");
    let st = state.to_str().unwrap();
    let (code, lines, err) = certreg(&[
        "agent",
        "cards",
        "insert",
        "moica-admin",
        "--soft-cards",
        &cards,
        "--state",
        st,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["slotDescription"], "certreg soft reader 1");
    let (code, lines, _) = certreg(&[
        "agent",
        "cards",
        "list",
        "--soft-cards",
        &cards,
        "--state",
        st,
    ]);
    assert_eq!(code, 0);
    let admin = lines.iter().find(|l| l["name"] == "moica-admin").unwrap();
    assert_eq!(admin["reader"], 1);
    assert_eq!(admin["locked"], false);
    assert_eq!(admin["card_number"].as_str().unwrap().len(), 16);
    assert!(
        lines
            .iter()
            .filter(|l| l["name"] != "moica-admin")
            .all(|l| l["reader"].is_null())
    );
    let (code, lines, _) = certreg(&[
        "agent",
        "cards",
        "eject",
        "moica-admin",
        "--soft-cards",
        &cards,
        "--state",
        st,
    ]);
    assert_eq!(code, 0);
    assert_eq!(lines[0]["was_inserted"], true);
    let (code, _, err) = certreg(&[
        "agent",
        "cards",
        "insert",
        "no-such-card",
        "--soft-cards",
        &cards,
        "--state",
        st,
    ]);
    assert_eq!(code, 2, "{err}");
    let _ = std::fs::remove_file(&state);
}

#[test]
fn agent_refuses_a_missing_pkcs11_module_and_no_backend() {
    let (code, _, err) = certreg(&[
        "agent",
        "--pkcs11",
        "/nonexistent/libnothing.so",
        "--port",
        "0",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("libnothing.so"), "{err}");
    let (code, _, err) = certreg(&["agent", "--port", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--soft-cards"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// certreg migrate / certreg audit verify

#[test]
fn migrate_creates_the_database_and_its_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("certreg.db").display());
    let (code, lines, err) = certreg(&["migrate", "--database", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["applied"], store::migrations::MIGRATIONS.len());
    let key = std::fs::read(dir.path().join("certreg.key")).unwrap();
    let (code, lines, _) = certreg(&["migrate", "--database", &url]);
    assert_eq!((code, &lines[0]["applied"]), (0, &serde_json::json!(0)));
    assert_eq!(std::fs::read(dir.path().join("certreg.key")).unwrap(), key);
}

#[test]
fn migrate_refuses_an_unknown_scheme_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certreg.db");
    for url in [
        path.display().to_string(),
        format!("file://{}", path.display()),
    ] {
        let (code, _, err) = certreg(&["migrate", "--database", &url]);
        assert_eq!(code, 2);
        assert!(err.contains("unsupported database URL"), "{err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn audit_verify_reports_the_first_broken_link() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("certreg.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use domain::store::Store;
        // The key file `audit verify` derives the chain's key from, beside the database.
        let secrets = store::Secrets::load_or_create(&dir.path().join("certreg.key")).unwrap();
        let db = store::Db::connect(&url, &secrets).await.unwrap();
        for i in 0..4 {
            let at = time::OffsetDateTime::from_unix_timestamp(1_780_000_000 + i).unwrap();
            let event = domain::model::AuditEvent::new(at, "system", "test.event", "ok");
            db.append_audit(&event).await.unwrap();
        }
        db.close().await;
    });
    let (code, lines, err) = certreg(&["audit", "verify", "--database", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["events"], 4);
    let (code, head, err) = certreg(&["audit", "head", "--database", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(head[0]["seq"], 4);
    let head_hash = head[0]["hash"].as_str().unwrap().to_string();
    assert!(head_hash.len() >= 64, "{head:?}");
    // The chain is keyed by the key file: without it (or with another) it does not verify.
    let key = dir.path().join("certreg.key");
    let key_bytes = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let (code, _, err) = certreg(&["audit", "verify", "--database", &url]);
    assert_ne!(code, 0, "{err}");
    std::fs::write(&key, &key_bytes).unwrap();

    rt.block_on(async {
        testkit::outside::exec(
            &url,
            "DROP TRIGGER audit_log_no_update; \
             UPDATE audit_log SET actor = 'someone else' WHERE seq = 3",
        )
        .await;
    });
    let (code, lines, err) = certreg(&["audit", "verify", "--database", &url]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["first_broken"], 3);
    assert!(err.contains("seq 3"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// certreg agencies / calendar / staff, and the settings they read

/// A fresh SQLite database URL in `dir` (created by the first command that uses it).
fn db_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("certreg.db").display())
}

fn shared_calendar(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/calendar")
        .join(name)
}

#[test]
fn r6_3_agencies_import_then_show() {
    let dir = tempfile::tempdir().unwrap();
    let url = db_url(dir.path());
    let csv = dir.path().join("agencies.csv");
    std::fs::write(
        &csv,
        "\u{feff}機關代號,機關名稱,縣市,機關憑證OID\r\n\
         A0001,臺北市政府人事處,臺北市,2.16.886.101.20003.20065.20020\r\n\
         C0001,測試股份有限公司,臺中市,\r\n",
    )
    .unwrap();
    let (code, lines, err) = certreg(&[
        "agencies",
        "import",
        csv.to_str().unwrap(),
        "--database",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["imported"], 2);
    let (code, lines, err) = certreg(&["agencies", "show", "a0001", "--database", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["name"], "臺北市政府人事處");
    assert_eq!(lines[0]["county"], "臺北市");
    assert_eq!(lines[0]["org_identifier"], "2.16.886.101.20003.20065.20020");
    let (_, lines, _) = certreg(&["agencies", "show", "C0001", "--database", &url]);
    assert_eq!(lines[0]["org_identifier"], Value::Null);

    // Big5, as older exports are; an update of an existing code.
    let (big5, _, _) =
        encoding_rs::BIG5.encode("機關代號,機關名稱,縣市,機關憑證OID\nC0001,測試公司,臺中市,\n");
    std::fs::write(&csv, &big5).unwrap();
    let (code, _, err) = certreg(&[
        "agencies",
        "import",
        csv.to_str().unwrap(),
        "--database",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, lines, _) = certreg(&["agencies", "show", "C0001", "--database", &url]);
    assert_eq!(lines[0]["name"], "測試公司");

    let (code, lines, err) = certreg(&["agencies", "show", "Z9999", "--database", &url]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["code"], "unknown_agency");
    assert!(err.contains("查無此機關代號"), "{err}");
    let (code, lines, _) = certreg(&["agencies", "show", "bad code!", "--database", &url]);
    assert_eq!(
        (code, &lines[0]["code"]),
        (1, &Value::from("invalid_input"))
    );
}

#[test]
fn r6_3_agencies_import_errors_name_every_line_and_import_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = db_url(dir.path());
    let csv = dir.path().join("agencies.csv");
    std::fs::write(
        &csv,
        "code,name,county,org_identifier\n\
         A0003,甲,臺北市,1.2.3\n\
         bad!,乙,臺北市,\n\
         A0003,丙,臺北市,\n\
         A0004,戊\n",
    )
    .unwrap();
    let (code, lines, err) = certreg(&[
        "agencies",
        "import",
        csv.to_str().unwrap(),
        "--database",
        &url,
    ]);
    assert_eq!(code, 1, "{err}");
    let numbers: Vec<i64> = lines.iter().map(|l| l["line"].as_i64().unwrap()).collect();
    assert_eq!(numbers, vec![3, 4, 5]);
    assert!(
        lines[1]["message"].as_str().unwrap().contains("重複"),
        "{lines:?}"
    );
    assert!(err.contains("未匯入任何資料"), "{err}");
    // The good line before the bad ones was not imported either.
    let (code, _, _) = certreg(&["agencies", "show", "A0003", "--database", &url]);
    assert_eq!(code, 1);
    // A missing file is a usage error.
    let missing = dir.path().join("missing.csv");
    let (code, _, err) = certreg(&[
        "agencies",
        "import",
        missing.to_str().unwrap(),
        "--database",
        &url,
    ]);
    assert_eq!(code, 2, "{err}");
}

/// A whole year of Monday–Friday, as the office calendar CSV writes it.
fn calendar_csv(year: i32) -> String {
    let mut s = String::from("西元日期,星期,是否放假,備註\r\n");
    let mut d = time::Date::from_calendar_date(year, time::Month::January, 1).unwrap();
    while d.year() == year {
        let (w, off) = match d.weekday() {
            time::Weekday::Monday => ("一", 0),
            time::Weekday::Tuesday => ("二", 0),
            time::Weekday::Wednesday => ("三", 0),
            time::Weekday::Thursday => ("四", 0),
            time::Weekday::Friday => ("五", 0),
            time::Weekday::Saturday => ("六", 2),
            time::Weekday::Sunday => ("日", 2),
        };
        s.push_str(&format!(
            "{:04}{:02}{:02},{w},{off},\r\n",
            d.year(),
            u8::from(d.month()),
            d.day()
        ));
        d = d.next_day().unwrap();
    }
    s
}

#[test]
fn spec_4_2_calendar_import_of_the_published_big5_file_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let url = db_url(dir.path());
    let (code, lines, err) = certreg(&[
        "calendar",
        "status",
        "--on",
        "2027-03-01",
        "--database",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["years"], serde_json::json!([2025, 2026]));
    assert_eq!(lines[0]["shipped"], serde_json::json!([2025, 2026]));
    assert_eq!(lines[0]["imported"], serde_json::json!([]));
    let warnings = lines[0]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].as_str().unwrap().contains("2027"),
        "{warnings:?}"
    );

    let big5 = shared_calendar("2025-big5.csv");
    let (code, lines, err) = certreg(&[
        "calendar",
        "import",
        big5.to_str().unwrap(),
        "--database",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["years"], serde_json::json!([2025]));
    assert_eq!(lines[0]["days"], 365);

    let file = dir.path().join("2027.csv");
    std::fs::write(&file, calendar_csv(2027)).unwrap();
    let (code, lines, err) = certreg(&[
        "calendar",
        "import",
        file.to_str().unwrap(),
        "--database",
        &url,
    ]);
    assert_eq!(
        (code, &lines[0]["years"]),
        (0, &serde_json::json!([2027])),
        "{err}"
    );
    let (code, lines, _) = certreg(&[
        "calendar",
        "status",
        "--on",
        "2027-03-01",
        "--database",
        &url,
    ]);
    assert_eq!(code, 0);
    assert_eq!(lines[0]["years"], serde_json::json!([2025, 2026, 2027]));
    assert_eq!(lines[0]["imported"], serde_json::json!([2025, 2027]));
    assert_eq!(lines[0]["warnings"], serde_json::json!([]));
    // December without next year's file: the health check says so.
    let (_, lines, _) = certreg(&[
        "calendar",
        "status",
        "--on",
        "2027-12-01",
        "--database",
        &url,
    ]);
    assert!(
        lines[0]["warnings"][0].as_str().unwrap().contains("2028"),
        "{lines:?}"
    );
    let (code, _, _) = certreg(&[
        "calendar",
        "status",
        "--on",
        "2027-13-01",
        "--database",
        &url,
    ]);
    assert_eq!(code, 1);
}

#[test]
fn spec_4_2_calendar_import_refuses_a_bad_file_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = db_url(dir.path());
    let csv = calendar_csv(2027);
    let mut rows: Vec<&str> = csv.split("\r\n").collect();
    rows[11] = "20270111,一,1,";
    let file = dir.path().join("bad.csv");
    std::fs::write(&file, rows.join("\r\n")).unwrap();
    let (code, lines, err) = certreg(&[
        "calendar",
        "import",
        file.to_str().unwrap(),
        "--database",
        &url,
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(lines[0]["line"], 12);
    assert_eq!(lines[0]["code"], "calendar_bad_flag");
    assert!(err.contains("第 12 行"), "{err}");

    // A partial year names no line but is refused all the same.
    let partial: String = csv.split_inclusive("\r\n").take(100).collect();
    std::fs::write(&file, partial).unwrap();
    let (code, lines, err) = certreg(&[
        "calendar",
        "import",
        file.to_str().unwrap(),
        "--database",
        &url,
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(lines[0]["code"], "calendar_incomplete_year");
    assert!(err.contains("2027 年資料不完整"), "{err}");

    let (_, lines, _) = certreg(&["calendar", "status", "--database", &url]);
    assert_eq!(lines[0]["imported"], serde_json::json!([]));
}

#[test]
fn r6_1_staff_add_list_disable_enable() {
    let dir = tempfile::tempdir().unwrap();
    let url = db_url(dir.path());
    let add = |name: &str, section: &str, serial: &str| {
        certreg(&[
            "staff",
            "add",
            "--name",
            name,
            "--section",
            section,
            "--serial",
            serial,
            "--database",
            &url,
        ])
    };
    let (code, lines, err) = add("審核員甲", "first", "0a:1b:2c");
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["serial"], "0A1B2C");
    assert_eq!(lines[0]["section_label"], "承保第一科");
    let first = lines[0]["id"].as_i64().unwrap();
    let (code, lines, err) = add("審核員乙", "second", "3D4E");
    assert_eq!(code, 0, "{err}");
    let second = lines[0]["id"].as_i64().unwrap();

    // The same card in another spelling is the same serial.
    let (code, lines, err) = add("審核員丙", "second", "0A 1B 2C");
    assert_eq!(code, 1);
    assert_eq!(lines[0]["code"], "invalid_input");
    assert!(err.contains("此憑證序號已建立審核人員帳號"), "{err}");
    let (code, _, err) = add("審核員丙", "second", "not-hex");
    assert_eq!(code, 1, "{err}");
    let (code, _, _) = add(" ", "second", "5F");
    assert_eq!(code, 1);
    let (code, _, _) = add("審核員丙", "third", "5F");
    assert_eq!(code, 2, "an unknown section is a usage error");

    let id = first.to_string();
    let (code, lines, _) = certreg(&["staff", "disable", &id, "--database", &url]);
    assert_eq!((code, &lines[0]["active"]), (0, &Value::Bool(false)));
    let (code, lines, _) = certreg(&["staff", "list", "--database", &url]);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (&lines[0]["id"], &lines[0]["active"]),
        (&Value::from(first), &Value::Bool(false))
    );
    assert_eq!(
        (&lines[1]["id"], &lines[1]["active"]),
        (&Value::from(second), &Value::Bool(true))
    );
    assert_eq!(lines[1]["section"], "second");
    let (code, _, _) = certreg(&["staff", "enable", &id, "--database", &url]);
    assert_eq!(code, 0);
    let (_, lines, _) = certreg(&["staff", "list", "--database", &url]);
    assert_eq!(lines[0]["active"], true);
    let (code, lines, err) = certreg(&["staff", "disable", "999", "--database", &url]);
    assert_eq!(code, 1);
    assert!(err.contains("查無此審核人員"), "{err} {lines:?}");
}

#[test]
fn r6_1_staff_add_from_the_card_certificate_records_serial_and_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let url = db_url(dir.path());
    let add = |name: &str, cert: &str| {
        certreg(&[
            "staff",
            "add",
            "--name",
            name,
            "--section",
            "first",
            "--cert",
            cert,
            "--database",
            &url,
        ])
    };
    let (code, lines, err) = add("審核員甲", &p("cards/moica-admin.pem"));
    assert_eq!(code, 0, "{err}");
    let (_, facts, _) = certreg(&["pki", "inspect", &p("cards/moica-admin.pem")]);
    assert_eq!(lines[0]["serial"], facts[0]["serial"]);
    assert_eq!(lines[0]["issuer"], facts[0]["issuer"], "{lines:?}");
    let (_, listed, _) = certreg(&["staff", "list", "--database", &url]);
    assert_eq!(listed[0]["issuer"], facts[0]["issuer"]);
    // An organization card is not a reviewer's card; a file that is no certificate is refused.
    let (code, lines, err) = add("審核員乙", &p("cards/gca-agency.pem"));
    assert_eq!(code, 1, "{err}");
    assert_eq!(lines[0]["code"], "invalid_input");
    assert!(err.contains("此憑證非自然人憑證"), "{err}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let (code, _, _) = add("審核員乙", junk.to_str().unwrap());
    assert_eq!(code, 1);
    // --serial and --cert name the card twice: a usage error.
    let (code, _, _) = certreg(&[
        "staff",
        "add",
        "--name",
        "丙",
        "--section",
        "first",
        "--serial",
        "0A",
        "--cert",
        &p("cards/moica-admin.pem"),
        "--database",
        &url,
    ]);
    assert_eq!(code, 2);
}

#[test]
fn settings_from_a_toml_file_and_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let toml = dir.path().join("certreg.toml");
    std::fs::write(
        &toml,
        format!(
            "database_url = \"sqlite://{}\"\nkey_file = \"{}\"\n",
            a.display(),
            keys.join("a.key").display()
        ),
    )
    .unwrap();
    let config = toml.to_str().unwrap();
    let (code, _, err) = certreg(&[
        "staff",
        "add",
        "--name",
        "甲",
        "--section",
        "first",
        "--serial",
        "01",
        "--config",
        config,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(a.is_file());
    assert!(
        keys.join("a.key").is_file(),
        "the key file comes from the settings"
    );

    // The environment names the same database without any file.
    let a_url = format!("sqlite://{}", a.display());
    let (code, lines, err) = certreg_env(&["staff", "list"], &[("CERTREG_DATABASE_URL", &a_url)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.len(), 1);
    assert!(
        dir.path().join("certreg.key").is_file(),
        "default key beside the database"
    );

    // CERTREG_DATABASE_URL beats the file; --database beats both.
    let b_url = db_url(dir.path());
    let (_, lines, _) = certreg_env(
        &["staff", "list", "--config", config],
        &[("CERTREG_DATABASE_URL", &b_url)],
    );
    assert_eq!(lines.len(), 0);
    let (_, lines, _) = certreg_env(
        &["staff", "list", "--config", config, "--database", &a_url],
        &[("CERTREG_DATABASE_URL", &b_url)],
    );
    assert_eq!(lines.len(), 1);

    // A bad settings file or URL is a usage error.
    std::fs::write(&toml, "colour = \"red\"\n").unwrap();
    let (code, _, err) = certreg(&["staff", "list", "--config", config]);
    assert_eq!(code, 2);
    assert!(err.contains("colour"), "{err}");
    let (code, _, err) = certreg_env(
        &["staff", "list"],
        &[("CERTREG_DATABASE_URL", "mysql://x/y")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("unsupported database URL"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// certreg keys

#[test]
fn keys_rotate_keeps_the_previous_key_published() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("certreg.db").display());
    let (code, lines, err) = certreg(&["keys", "list", "--database", &url]);
    assert_eq!(code, 0, "{err}");
    let first = lines[0]["keys"][0]["kid"].as_str().unwrap().to_string();
    assert_eq!(lines[0]["keys"].as_array().unwrap().len(), 1);
    let (code, lines, err) = certreg(&["keys", "rotate", "--database", &url]);
    assert_eq!(code, 0, "{err}");
    let keys = lines[0]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{}", lines[0]);
    assert_eq!(keys[0]["kid"], lines[0]["current"]);
    assert_eq!(keys[0]["current"], true);
    assert_eq!(
        (&keys[1]["kid"], &keys[1]["current"]),
        (&serde_json::json!(first), &serde_json::json!(false))
    );
    assert!(keys[1]["publish_until"].is_string());
}

#[test]
fn crl_refresh_reports_each_source_and_exits_1_on_a_failure() {
    let good = [p("crl/moica.crl"), p("crl/moeaca.crl")].join(",");
    let (code, lines, err) = certreg_env(&["crl", "refresh"], &[("CERTREG_CRLS", &good)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert!(line["issuer"].as_str().unwrap().contains("O="), "{line}");
        assert!(line["this_update"].is_string() && line["next_update"].is_string());
        assert!(line["entries"].is_u64(), "{line}");
    }
    assert!(
        lines[0]["entries"].as_u64().unwrap() >= 1,
        "moica revokes a card"
    );
    let broken = format!("{},/nonexistent/x.crl", p("crl/moica.crl"));
    let (code, lines, _) = certreg_env(&["crl", "refresh"], &[("CERTREG_CRLS", &broken)]);
    assert_eq!(code, 1);
    assert!(lines[0]["issuer"].is_string());
    assert!(lines[1]["error"].as_str().unwrap().contains("nonexistent"));
}
