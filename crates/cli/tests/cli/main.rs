//! The `certreg pki` commands as operators and acceptance checks call them: the real binary, a
//! generated test PKI on disk, JSON on stdout and the exit codes.

use base64::Engine as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn certreg(args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_certreg"))
        .args(args)
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
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("certreg.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use domain::store::Store;
        let secrets = store::Secrets::generate().unwrap();
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

    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "DROP TRIGGER audit_log_no_update; \
             UPDATE audit_log SET actor = 'someone else' WHERE seq = 3",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    });
    let (code, lines, err) = certreg(&["audit", "verify", "--database", &url]);
    assert_eq!(code, 1);
    assert_eq!(lines[0]["first_broken"], 3);
    assert!(err.contains("seq 3"), "{err}");
}
