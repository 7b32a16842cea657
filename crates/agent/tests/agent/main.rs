//! The card agent end to end: a real server on 127.0.0.1 over soft cards written by the test PKI,
//! driven over HTTP as a page (or curl) would, with signatures checked by the `pki` crate and
//! by OpenSSL.

mod hardening;
mod helpers;
mod hipki;
mod origins;

use agent::backend::{CardBackend, CardCert, CardError, SlotInfo};
use agent::protocol::{last_error, ret};
use agent::softcard::SoftCards;
use helpers::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use testkit::openssl;
use testpki::{CaKind, KeyAlg, TestPki};

fn code(v: &Value) -> (u64, u64) {
    (
        v["ret_code"].as_u64().expect("ret_code"),
        v["last_error"].as_u64().expect("last_error"),
    )
}

fn card_number(pki: &TestPki, card: &str) -> String {
    pki.card(card).card_number.clone()
}

/// Checks a signature answer with `pki::proof::verify_proof`.
fn verify(
    pki: &TestPki,
    card: &str,
    c: &pki::challenge::Challenge,
    answer: &Value,
    beside: bool,
) -> pki::proof::VerifiedProof {
    assert_eq!(code(answer), (0, 0), "{answer}");
    let cert = b64(answer["certb64"].as_str().unwrap());
    assert_eq!(cert, pki.card(card).issued.cert_der);
    verify_at_issue(
        &validator(pki),
        c,
        answer["signature"].as_str().unwrap(),
        beside.then_some(&cert[..]),
        pki.card(card).role,
    )
    .unwrap_or_else(|e| panic!("proof of {card} does not verify: {e}"))
}

#[test]
fn lists_readers_cards_and_certificates_without_a_pin() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency", "moica-admin"]);
    let info = agent.pkcs11info();
    assert_eq!(code(&info), (0, 0), "{info}");
    assert_eq!(info["func"], "pkcs11info");
    let slots = info["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    assert_eq!(slots[0]["slotDescription"], "certreg soft reader 1");
    let org = &slots[0]["token"];
    assert_eq!(org["serialNumber"], card_number(pki(), "gca-agency"));
    assert_eq!(
        org["flags"],
        json!({"countLow": false, "finalTry": false, "locked": false})
    );
    let cert = &org["certs"][0];
    // Every key usage, joined as HiPKI does.
    assert_eq!(cert["usage"], "digitalSignature|nonRepudiation");
    assert_eq!(
        b64(cert["certb64"].as_str().unwrap()),
        pki().card("gca-agency").issued.cert_der
    );
    assert_eq!(
        cert["sn"],
        pki()
            .card("gca-agency")
            .issued
            .serial_hex()
            .trim_start_matches('0')
    );
    assert!(cert["subjectDN"].as_str().unwrap().contains("C=TW"));
    let citizen = &slots[1]["token"]["certs"][0];
    let id = pki().card("moica-admin").national_id.clone().unwrap();
    assert_eq!(citizen["subjectID"], id[id.len() - 4..]);
    assert_eq!(citizen["subjectCN"], pki().card("moica-admin").holder);

    // No key material, ever: not the PKCS#8 key, not a PEM key block.
    let raw = agent.post("/pkcs11info?withcert=true", b"").text();
    let key = &pki().card("gca-agency").issued.key.pkcs8_der;
    use base64::Engine as _;
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    assert!(!raw.contains(&key_b64[40..80]));
    assert!(!raw.contains("PRIVATE"));

    // Without ?withcert the certificates are described but not sent.
    let short = agent.post("/pkcs11info", b"").json();
    assert!(
        short["slots"][0]["token"]["certs"][0]
            .get("certb64")
            .is_none()
    );
    assert_eq!(short["slots"][0]["token"]["certs"][0]["sn"], cert["sn"]);
}

#[test]
fn pkcs7_signature_verifies_with_the_pki_crate_and_openssl() {
    let (tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let c = challenge();
    let mut pkg = package(&c.tbs(), &pin_of(pki(), "gca-agency"), "PKCS7");
    pkg["nonce"] = json!("n-123");
    pkg["withCardSN"] = json!(true);
    let answer = agent.sign(&pkg);
    assert_eq!(answer["func"], "sign");
    assert_eq!(answer["cardSN"], card_number(pki(), "gca-agency"));
    let proof = verify(pki(), "gca-agency", &c, &answer, false);
    assert_eq!(proof.format, pki::proof::ProofFormat::CmsAttached);
    assert_eq!(
        proof.attrs.card_number.as_deref(),
        Some(&card_number(pki(), "gca-agency")[..])
    );
    assert_eq!(
        proof.attrs.nonce.as_deref(),
        Some("6E2D313233"),
        "nonce text as bytes"
    );
    assert!(proof.attrs.signing_time.is_some());

    let sig = tmp.write("sig.der", b64(answer["signature"].as_str().unwrap()));
    let ca = tmp.write(
        "ca.pem",
        format!(
            "{}{}",
            pki().root.cert_pem(),
            pki().ca(CaKind::Gca).cert_pem()
        ),
    );
    let out = tmp.path("out.txt");
    let (ok, _, err) = openssl(&[
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        sig.to_str().unwrap(),
        "-CAfile",
        ca.to_str().unwrap(),
        "-purpose",
        "any",
        "-out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "openssl cms -verify: {err}");
    assert_eq!(std::fs::read(out).unwrap(), c.tbs().as_bytes());
}

#[test]
fn pkcs1_and_ecdsa_signatures_verify() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["moica-admin"]);
    let c = challenge();
    let answer = agent.sign(&package(&c.tbs(), &pin_of(pki(), "moica-admin"), "PKCS1"));
    let proof = verify(pki(), "moica-admin", &c, &answer, true);
    assert_eq!(proof.format, pki::proof::ProofFormat::Pkcs1);
    drop(agent);

    let (_tmp, dir) = soft_card_dir(KeyAlg::P256);
    let agent = TestAgent::soft(&dir, &["moica-admin"]);
    let pin = pin_of(pki_p256(), "moica-admin");
    let c = challenge();
    let answer = agent.sign(&package(&c.tbs(), &pin, "PKCS1"));
    let proof = verify(pki_p256(), "moica-admin", &c, &answer, true);
    assert_eq!(proof.format, pki::proof::ProofFormat::Ecdsa);
    let c = challenge();
    let answer = agent.sign(&package(&c.tbs(), &pin, "PKCS7"));
    verify(pki_p256(), "moica-admin", &c, &answer, false);
}

#[test]
fn wrong_pins_count_down_lock_the_card_and_survive_a_restart() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let tbs = challenge().tbs();
    let wrong = package(&tbs, "000000000", "PKCS7");

    let first = agent.sign(&wrong);
    assert_eq!(
        code(&first),
        (ret::LOGIN_FAILED as u64, last_error::PIN_INCORRECT as u64)
    );
    assert_eq!(first["triesLeft"], 2);
    assert_eq!(first["flags"]["countLow"], true);
    assert_eq!(first["flags"]["finalTry"], false);
    assert_eq!(first["message"], "PIN碼錯誤");
    assert_eq!(agent.pkcs11info()["slots"][0]["token"]["triesLeft"], 2);

    let second = agent.sign(&wrong);
    assert_eq!(
        code(&second),
        (ret::LOGIN_FAILED as u64, last_error::PIN_INCORRECT as u64)
    );
    assert_eq!(second["triesLeft"], 1);
    assert_eq!(second["flags"]["finalTry"], true);

    // The agent never retries a PIN by itself: a third wrong PIN locks.
    let third = agent.sign(&wrong);
    assert_eq!(
        code(&third),
        (ret::LOGIN_FAILED as u64, last_error::PIN_LOCKED as u64)
    );
    let right = package(&challenge().tbs(), &pin_of(pki(), "gca-agency"), "PKCS7");
    let after = agent.sign(&right);
    assert_eq!(
        code(&after),
        (ret::LOGIN_FAILED as u64, last_error::PIN_LOCKED as u64)
    );
    assert_eq!(
        agent.pkcs11info()["slots"][0]["token"]["flags"]["locked"],
        true
    );
    agent.stop();

    // A new agent over the same folder: still locked, still inserted.
    let again = TestAgent::soft(&dir, &[]);
    let info = again.pkcs11info();
    assert_eq!(
        info["slots"][0]["token"]["serialNumber"],
        card_number(pki(), "gca-agency")
    );
    assert_eq!(info["slots"][0]["token"]["flags"]["locked"], true);
    assert_eq!(
        code(&again.sign(&right)),
        (ret::LOGIN_FAILED as u64, last_error::PIN_LOCKED as u64)
    );
}

#[test]
fn a_right_pin_resets_the_counter_and_state_survives_a_restart() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency", "moica-admin"]);
    let tbs = challenge().tbs();
    assert_eq!(
        code(&agent.sign(&package(&tbs, "111111", "PKCS7"))).0,
        ret::LOGIN_FAILED as u64
    );
    // moica-admin in reader 2: one wrong PIN on it, then eject gca-agency.
    let mut wrong2 = package(&tbs, "111111", "PKCS7");
    wrong2["slotDescription"] = json!("certreg soft reader 2");
    assert_eq!(agent.sign(&wrong2)["triesLeft"], 2);
    let ok = agent.sign(&package(&tbs, &pin_of(pki(), "gca-agency"), "PKCS7"));
    assert_eq!(code(&ok), (0, 0));
    assert_eq!(agent.pkcs11info()["slots"][0]["token"]["triesLeft"], 3);
    agent.cards.as_ref().unwrap().eject("gca-agency").unwrap();
    agent.stop();

    let again = TestAgent::soft(&dir, &[]);
    let info = again.pkcs11info();
    let slots = info["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{info}");
    assert!(slots[0]["token"].is_null(), "reader 1 stays empty");
    assert_eq!(slots[1]["token"]["label"], "moica-admin");
    assert_eq!(slots[1]["token"]["triesLeft"], 2);
}

#[test]
fn no_card_in_any_reader() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    agent.cards.as_ref().unwrap().eject("gca-agency").unwrap();
    let info = agent.pkcs11info();
    assert_eq!(code(&info), (0, 0));
    assert!(info["slots"][0]["token"].is_null());
    let answer = agent.sign(&package(
        &challenge().tbs(),
        &pin_of(pki(), "gca-agency"),
        "PKCS7",
    ));
    assert_eq!(code(&answer).0, ret::NO_CARD as u64);
    assert_eq!(answer["message"], "未插入IC卡");
}

#[test]
fn card_ejected_between_list_and_sign() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["moica-admin", "gca-agency"]);
    let info = agent.pkcs11info();
    let slot = info["slots"][1]["slotDescription"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(info["slots"][1]["token"]["label"], "gca-agency");
    agent.cards.as_ref().unwrap().eject("gca-agency").unwrap();
    let mut pkg = package(&challenge().tbs(), &pin_of(pki(), "gca-agency"), "PKCS7");
    pkg["slotDescription"] = json!(slot);
    // Reader 2 is empty now; the card in reader 1 is not used in its place.
    assert_eq!(code(&agent.sign(&pkg)).0, ret::NO_CARD as u64);
}

/// A backend that signs slowly and records how many signatures run at once.
struct Slow {
    inner: Arc<SoftCards>,
    now: AtomicUsize,
    max: AtomicUsize,
}

impl CardBackend for Slow {
    fn name(&self) -> String {
        "slow".into()
    }
    fn slots(&self) -> Result<Vec<SlotInfo>, CardError> {
        self.inner.slots()
    }
    fn sign(
        &self,
        serial: &str,
        cert: &CardCert,
        pin: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, CardError> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        let r = self.inner.sign(serial, cert, pin, message);
        self.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

#[test]
fn two_signatures_at_once_on_one_card_are_serialised() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let cards = Arc::new(SoftCards::open(&dir).unwrap());
    cards.insert("gca-agency").unwrap();
    let slow = Arc::new(Slow {
        inner: cards.clone(),
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    });
    let agent = TestAgent::start(default_config(), slow.clone(), Some(cards));
    let pin = pin_of(pki(), "gca-agency");
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let pkg = package(&challenge().tbs(), &pin, "PKCS7");
                let agent = &agent;
                s.spawn(move || agent.sign(&pkg))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(code(a), (0, 0), "{a}");
    }
    assert_eq!(
        slow.max.load(Ordering::SeqCst),
        1,
        "signatures on one card interleaved"
    );
}

#[test]
fn only_configured_origins_get_answers_and_cors() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let pkg = package(&challenge().tbs(), &pin_of(pki(), "gca-agency"), "PKCS7");
    let body = format!("tbsPackage={}", urlencode(&pkg.to_string()));

    let evil = agent.request(
        "POST",
        "/sign",
        &[("Origin", "https://evil.example")],
        body.as_bytes(),
    );
    assert_eq!(code(&evil.json()).0, ret::SITE_NOT_TRUSTED as u64);
    assert!(evil.header("access-control-allow-origin").is_none());
    assert!(evil.json()["signature"].as_str().unwrap().is_empty());
    let evil_info = agent.request(
        "POST",
        "/pkcs11info?withcert=true",
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(code(&evil_info.json()).0, ret::SITE_NOT_TRUSTED as u64);
    assert!(evil_info.json()["slots"].as_array().unwrap().is_empty());
    assert!(evil_info.header("access-control-allow-origin").is_none());
    // The PIN was not tried.
    assert_eq!(agent.pkcs11info()["slots"][0]["token"]["triesLeft"], 3);

    let good = agent.request("POST", "/sign", &[("Origin", SITE)], body.as_bytes());
    assert_eq!(code(&good.json()), (0, 0));
    assert_eq!(good.header("access-control-allow-origin"), Some(SITE));
    assert_eq!(good.header("vary"), Some("Origin"));

    // The agent's own pages (the popup's fetch) need no CORS and are answered.
    let own = format!("http://127.0.0.1:{}", agent.addr.port());
    let pkg = package(&challenge().tbs(), &pin_of(pki(), "gca-agency"), "PKCS7");
    let from_popup = agent.request(
        "POST",
        "/sign",
        &[
            ("Origin", &own),
            ("Content-Type", "application/json"),
            ("X-Certreg-Relay-Origin", SITE),
        ],
        pkg.to_string().as_bytes(),
    );
    assert_eq!(code(&from_popup.json()), (0, 0));
    assert!(from_popup.header("access-control-allow-origin").is_none());
}

#[test]
fn preflight_allows_private_network_for_configured_origins_only() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &[]);
    let ask = |origin: &str| {
        agent.request(
            "OPTIONS",
            "/sign",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
                ("Access-Control-Request-Private-Network", "true"),
            ],
            b"",
        )
    };
    let ok = ask(SITE);
    assert_eq!(ok.status, 204);
    assert_eq!(ok.header("access-control-allow-origin"), Some(SITE));
    assert_eq!(
        ok.header("access-control-allow-private-network"),
        Some("true")
    );
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("content-type")
    );
    let bad = ask("https://evil.example");
    assert_eq!(bad.status, 403);
    assert!(bad.header("access-control-allow-origin").is_none());
    assert!(bad.header("access-control-allow-private-network").is_none());
}

#[test]
fn only_certreg_challenges_are_signed() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let pin = pin_of(pki(), "gca-agency");
    let refused = agent.sign(&package("我同意將本機關所有財產轉讓", &pin, "PKCS7"));
    assert_eq!(code(&refused).0, ret::TBS_REFUSED as u64);
    // A challenge with one byte changed is not canonical: refused too.
    let bent = challenge().tbs().replace("flow=f-1", "flow=f-1\n");
    assert_eq!(
        code(&agent.sign(&package(&bent, &pin, "PKCS1"))).0,
        ret::TBS_REFUSED as u64
    );
    // The PIN was not tried for either.
    assert_eq!(agent.pkcs11info()["slots"][0]["token"]["triesLeft"], 3);

    // The same challenge as base64 is signed.
    use base64::Engine as _;
    let c = challenge();
    let mut pkg = package(
        &base64::engine::general_purpose::STANDARD.encode(c.tbs()),
        &pin,
        "PKCS7",
    );
    pkg["tbsEncoding"] = json!("base64");
    verify(pki(), "gca-agency", &c, &agent.sign(&pkg), false);
}

#[test]
fn malformed_and_oversized_requests_get_their_codes() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let post = |body: &[u8]| {
        code(
            &agent
                .request("POST", "/sign", &[("Origin", SITE)], body)
                .json(),
        )
        .0
    };
    assert_eq!(post(b"tbsPackage=%7Bnot%20json"), ret::JSON_FORMAT as u64);
    assert_eq!(post(b"{\"tbs\": "), ret::JSON_FORMAT as u64);
    assert_eq!(post(b"nothing=here"), ret::PARAMETER as u64);
    assert_eq!(post(br#"{"pin":"123456"}"#), ret::NO_TBS as u64);
    assert_eq!(post(br#"{"tbs":["x"],"pin":"1"}"#), ret::PARAMETER as u64);
    assert_eq!(
        post(br#"{"tbs":"@@@","tbsEncoding":"base64","pin":"1"}"#),
        ret::BASE64_DECODE as u64
    );
    let tbs = challenge().tbs();
    let mut sha1 = package(&tbs, "123456", "PKCS7");
    sha1["hashAlgorithm"] = json!("SHA1");
    assert_eq!(
        code(&agent.sign(&sha1)).0,
        ret::UNSUPPORTED_PARAMETER as u64
    );
    assert_eq!(
        code(&agent.sign(&package(&tbs, "", "PKCS7"))).0,
        ret::NO_PIN as u64
    );
    assert_eq!(
        code(&agent.sign(&package(&tbs, "1", "CMS-XML"))).0,
        ret::UNSUPPORTED_PARAMETER as u64
    );

    let big = format!("tbsPackage={}", "A".repeat(100 * 1024));
    let answer = agent.request("POST", "/sign", &[("Origin", SITE)], big.as_bytes());
    assert_eq!(code(&answer.json()).0, ret::TOO_LARGE as u64);
    let answer = agent.post("/pkcs11info", big.as_bytes());
    assert_eq!(code(&answer.json()).0, ret::TOO_LARGE as u64);
    // Nothing was counted against the card.
    assert_eq!(agent.pkcs11info()["slots"][0]["token"]["triesLeft"], 3);
}

#[test]
fn an_expired_card_is_refused_before_its_pin_is_tried() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency-expired"]);
    let answer = agent.sign(&package(&challenge().tbs(), "000000", "PKCS7"));
    assert_eq!(code(&answer).0, ret::CERT_EXPIRED as u64);
    assert_eq!(answer["message"], "憑證已逾期");
    assert_eq!(agent.pkcs11info()["slots"][0]["token"]["triesLeft"], 3);
}

#[test]
fn a_foreign_host_header_is_refused() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let host = format!("rebind.evil.example:{}", agent.addr.port());
    let r = agent.request("GET", "/", &[("Host", &host)], b"");
    assert_eq!(r.status, 421);
    let r = agent.request("POST", "/pkcs11info", &[("Host", &host)], b"");
    assert_eq!(r.status, 421);
    let localhost = format!("localhost:{}", agent.addr.port());
    assert_eq!(
        agent
            .request("GET", "/", &[("Host", &localhost)], b"")
            .status,
        200
    );
}

#[test]
fn the_popup_page_answers_only_allowed_openers() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &[]);
    let page = agent.request("GET", "/popupForm", &[], b"");
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains(r#"var ALLOWED = ["https://certreg.example.gov.tw"];"#),
        "{html}"
    );
    assert!(html.contains(r#"JSON.stringify({ func: "getTbs" })"#));
    assert!(html.contains("ALLOWED.indexOf(ev.origin) < 0"));
    assert!(html.contains("ev.source !== window.opener"));
    assert!(html.contains(r#""X-Certreg-Relay-Origin": origin"#));
    assert!(html.contains("source.postMessage(text, origin)"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("connect-src 'self'"));
}

#[test]
fn the_status_page_inserts_and_ejects_only_for_itself() {
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["gca-agency"]);
    let page = agent
        .request("GET", "/", &[("Sec-Fetch-Site", "none")], b"")
        .text();
    assert!(page.contains("certreg soft reader 1"));
    assert!(page.contains("moica-admin"));
    assert!(page.contains("未插入"));
    let token = page
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let own = format!("http://127.0.0.1:{}", agent.addr.port());
    let form = format!("name=moica-admin&token={token}");

    let no_origin = agent.request("POST", "/softcards/insert", &[], form.as_bytes());
    assert_eq!(no_origin.status, 403);
    let evil = agent.request(
        "POST",
        "/softcards/insert",
        &[("Origin", SITE)],
        form.as_bytes(),
    );
    assert_eq!(
        evil.status, 403,
        "even an allowed site cannot change the readers"
    );
    let bad_token = agent.request(
        "POST",
        "/softcards/insert",
        &[("Origin", &own)],
        b"name=moica-admin&token=guess",
    );
    assert_eq!(bad_token.status, 403);
    let ok = agent.request(
        "POST",
        "/softcards/insert",
        &[("Origin", &own)],
        form.as_bytes(),
    );
    assert_eq!(ok.status, 303);
    assert_eq!(
        agent.pkcs11info()["slots"][1]["token"]["label"],
        "moica-admin"
    );
    let out = format!("name=gca-agency&token={token}");
    let ok = agent.request(
        "POST",
        "/softcards/eject",
        &[("Origin", &own)],
        out.as_bytes(),
    );
    assert_eq!(ok.status, 303);
    assert!(agent.pkcs11info()["slots"][0]["token"].is_null());
}

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_pin_never_reaches_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    // Global: the server's tasks run on other threads. Other tests' logs land here too, which
    // only widens the check.
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let agent = TestAgent::soft(&dir, &["moica-admin"]);
    let right = pin_of(pki(), "moica-admin");
    let wrong = "wrong-PIN-7f3a9";
    let tbs = challenge().tbs();
    assert_eq!(
        code(&agent.sign(&package(&tbs, wrong, "PKCS7"))).1,
        last_error::PIN_INCORRECT as u64
    );
    assert_eq!(code(&agent.sign(&package(&tbs, &right, "PKCS7"))), (0, 0));
    let mut tooling = package("not a challenge", wrong, "PKCS7");
    tooling["hashAlgorithm"] = json!("SHA256");
    agent.sign(&tooling);
    agent.stop();

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("func=\"sign\""), "nothing captured: {logs}");
    assert!(logs.contains("wrong PIN"), "{logs}");
    assert!(!logs.contains(wrong), "wrong PIN in the logs:\n{logs}");
    assert!(!logs.contains(&right), "PIN in the logs:\n{logs}");
}
