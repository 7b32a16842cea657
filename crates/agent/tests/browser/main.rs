//! The page's card client (`crates/agent/js/card-client.js`) in real headless Chromium against a
//! real agent on soft cards, in direct and popup mode: this test starts the agent and a tiny
//! static "site" (plus a second, untrusted origin serving the same files), builds certreg
//! challenges, runs `run.mjs` (playwright-core driving Debian's `/usr/bin/chromium`) and verifies
//! the signatures the browser got with `pki::proof::verify_proof`.
//!
//! Needs `node`/`npm` and `chromium` (Debian packages `nodejs`, `npm`, `chromium`); it fails,
//! never skips, without them. `npm ci` runs here when `node_modules` is missing or stale, so
//! `cargo test --workspace` stays the one test command.

#[path = "../agent/helpers.rs"]
mod helpers;

use agent::server::AgentConfig;
use helpers::*;
use pki::challenge::Challenge;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testpki::KeyAlg;

/// run.mjs gives up by itself after 120 s; this is the backstop if node itself hangs.
const NODE_DEADLINE: Duration = Duration::from_secs(180);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn browser_dir() -> PathBuf {
    manifest_dir().join("tests/browser")
}

fn require_tools() -> PathBuf {
    testkit::require_tools(&browser_dir(), "the browser test")
}

/// The files the static site serves: URL path → (file, content type).
fn site_files() -> BTreeMap<&'static str, (PathBuf, &'static str)> {
    let js = "text/javascript; charset=utf-8";
    BTreeMap::from([
        (
            "/card-client.js",
            (manifest_dir().join("js/card-client.js"), js),
        ),
        (
            "/page.html",
            (browser_dir().join("page.html"), "text/html; charset=utf-8"),
        ),
        ("/page.js", (browser_dir().join("page.js"), js)),
        (
            "/hipki.html",
            (browser_dir().join("hipki.html"), "text/html; charset=utf-8"),
        ),
        ("/hipki.js", (browser_dir().join("hipki.js"), js)),
    ])
}

/// One HTTP/1.1 exchange of the static site, then close.
fn serve_one(mut stream: TcpStream, files: &BTreeMap<&'static str, (PathBuf, &'static str)>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/");
    let (status, content_type, body) = match files.get(path) {
        Some((file, ct)) => match std::fs::read(file) {
            Ok(b) => ("200 OK", *ct, b),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain",
                b"unreadable\n".to_vec(),
            ),
        },
        None => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    // The CSP certreg's pages will have: scripts from the site only (no inline, no eval), the
    // agent on the loopback (fetch, and its /p11Image.bmp for the HiPKI-style page). COOP same-origin-allow-popups keeps the popup's opener link.
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'self'; \
         connect-src http://127.0.0.1:*; img-src http://127.0.0.1:*; base-uri 'none'; \
         form-action 'none'; \
         frame-ancestors 'none'\r\n\
         Cross-Origin-Opener-Policy: same-origin-allow-popups\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

/// A static site on 127.0.0.1:<ephemeral>; its threads end with the test process.
fn start_site() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the static site");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(site_files());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let files = files.clone();
            std::thread::spawn(move || serve_one(stream, &files));
        }
    });
    url
}

/// A loopback port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback server that accepts connections and never answers (a hung agent).
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the silent server");
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    url
}

/// What run.mjs needs to know about a card.
fn card_case(name: &str, reader: u32) -> Value {
    use base64::Engine as _;
    let card = pki().card(name);
    json!({
        "name": name,
        "reader": agent::softcard::reader_description(reader),
        "cardNumber": card.card_number,
        "certb64": base64::engine::general_purpose::STANDARD.encode(&card.issued.cert_der),
        "sn": card.issued.serial_hex().trim_start_matches('0'),
        "pin": card.pin,
        // Same length as the real one: a PIN of another length could be refused for its length.
        "wrongPin": card.pin.chars().rev().map(|c| if c == '9' { '0' } else { '9' }).collect::<String>(),
    })
}

/// Runs node with a deadline; returns (exit code, stdout, stderr).
fn run_node(script: &Path, envs: &[(&str, String)]) -> (Option<i32>, String, String) {
    testkit::run_node(script, &browser_dir(), envs, NODE_DEADLINE, &mut || {})
}

#[test]
fn card_client_in_headless_chromium_direct_and_popup() {
    let started = Instant::now();
    let chromium = require_tools();

    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let cards = Arc::new(agent::softcard::SoftCards::open(&dir).expect("soft cards"));
    // Reader numbers follow the insertion order.
    let inserted = [
        "gca-agency",
        "moica-admin",
        "moica-expired",
        "moica-operator-1",
    ];
    for (i, name) in inserted.iter().enumerate() {
        assert_eq!(cards.insert(name).unwrap(), i as u32 + 1);
    }

    let site = start_site();
    let foreign = start_site();
    // A second trusted site: its challenge must not be signed for a page of `site`.
    let other = start_site();
    let agent = TestAgent::start(
        AgentConfig {
            port: 0,
            allowed_origins: vec![site.clone(), other.clone()],
            // Wrong PINs back to back (the count-down to the lock); the wait has its own tests.
            wrong_pin_delay: Duration::ZERO,
            ..AgentConfig::default()
        },
        cards.clone(),
        Some(cards.clone()),
    );
    let agent_url = format!("http://{}", agent.addr);

    // A real certreg challenge per signature, bound to the site's origin as the server will.
    let keys = [
        "direct-pkcs7",
        "direct-pkcs1",
        "popup-pkcs7",
        "popup-pkcs1",
        "expired",
        "lock",
        "nocard",
        "foreign",
        "blocked-late",
        "blocked-early",
        "relay-swap",
    ];
    let mut challenges: BTreeMap<&str, Challenge> = keys
        .iter()
        .map(|k| (*k, challenge_on(&site, "f-browser", k)))
        .collect();
    challenges.insert("other", challenge_on(&other, "f-browser", "other"));
    let nonce = "browser-nonce-1";
    let cases = json!({
        "cards": {
            "org": card_case("gca-agency", 1),
            "admin": card_case("moica-admin", 2),
            "expired": card_case("moica-expired", 3),
            "lockme": card_case("moica-operator-1", 4),
        },
        "tbs": challenges.iter().map(|(k, c)| (k.to_string(), json!(c.tbs()))).collect::<serde_json::Map<_, _>>(),
        "badTbs": "本人同意支付新臺幣壹萬元整（this is not a certreg challenge）",
        "nonce": nonce,
    });
    let shots = manifest_dir().join("../../target/browser-screenshots");
    // Only this run's failures in there.
    let _ = std::fs::remove_dir_all(&shots);

    let (code, stdout, stderr) = run_node(
        &browser_dir().join("run.mjs"),
        &[
            ("CERTREG_SITE_URL", site.clone()),
            ("CERTREG_FOREIGN_URL", foreign.clone()),
            ("CERTREG_AGENT_URL", agent_url.clone()),
            (
                "CERTREG_DEAD_AGENT_URL",
                format!("http://127.0.0.1:{}", dead_port()),
            ),
            ("CERTREG_SILENT_AGENT_URL", silent_server()),
            ("CERTREG_BROWSER_CASES", cases.to_string()),
            ("CERTREG_SCREENSHOT_DIR", shots.display().to_string()),
            ("CERTREG_CHROMIUM", chromium.display().to_string()),
        ],
    );
    eprintln!("--- run.mjs (stderr) ---\n{stderr}--- end of run.mjs ---");
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!("run.mjs printed no JSON report (exit {code:?}):\n{stdout}\n{stderr}")
        });
    let checks = report["checks"].as_array().expect("checks");
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect();
    assert!(
        failed.is_empty() && code == Some(0),
        "browser checks failed (exit {code:?}; screenshots in {}):\n{}",
        shots.display(),
        failed.join("\n")
    );
    // Every check of run.mjs ran (a check that silently disappeared would pass otherwise).
    assert_eq!(checks.len(), 31, "checks: {checks:#?}");

    // The signatures the browser got verify as certreg proofs of the right cards.
    let signatures = report["signatures"].as_array().expect("signatures");
    assert_eq!(signatures.len(), 5, "{signatures:#?}");
    let validator = validator(pki());
    for s in signatures {
        let key = s["key"].as_str().unwrap();
        let card = pki().card(s["card"].as_str().unwrap());
        let cert = b64(s["certb64"].as_str().unwrap());
        assert_eq!(cert, card.issued.cert_der, "{key}: certificate");
        let pkcs1 = s["type"] == "PKCS1";
        let proof = verify_at_issue(
            &validator,
            &challenges[key],
            s["signature"].as_str().unwrap(),
            pkcs1.then_some(&cert[..]),
            card.role,
        )
        .unwrap_or_else(|e| panic!("{key}: the browser's signature does not verify: {e}"));
        if pkcs1 {
            assert_eq!(proof.format, pki::proof::ProofFormat::Pkcs1, "{key}");
        } else {
            assert_eq!(proof.format, pki::proof::ProofFormat::CmsAttached, "{key}");
            assert_eq!(
                proof.attrs.card_number.as_deref(),
                Some(card.card_number.as_str()),
                "{key}"
            );
            let hex: String = nonce.bytes().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                proof.attrs.nonce.as_deref().map(str::to_ascii_lowercase),
                Some(hex),
                "{key}"
            );
        }
    }

    // What the browser did to the cards is what the agent recorded.
    let state = cards.cards().unwrap();
    assert!(
        state.iter().all(|c| c.reader.is_none()),
        "status page eject: {state:?}"
    );
    let locked = state.iter().find(|c| c.name == "moica-operator-1").unwrap();
    assert!(locked.locked, "{locked:?}");
    let org = state.iter().find(|c| c.name == "gca-agency").unwrap();
    // The last PIN on it was right (that the foreign page's wrong PIN and the swapped challenge
    // never reached it, run.mjs checks right after each).
    assert_eq!(org.wrong_pins, 0, "a right PIN resets the counter");

    eprintln!(
        "browser test: {} checks in {} ms in the browser, {} ms in all",
        checks.len(),
        report["elapsedMs"],
        started.elapsed().as_millis()
    );
}

/// What hipki.mjs compares the page's reading of a certificate with.
fn subject_case(name: &str) -> (String, Value) {
    use base64::Engine as _;
    let card = pki().card(name);
    let facts = pki::facts::ParsedCert::from_der(card.issued.cert_der.clone())
        .unwrap()
        .facts;
    (
        card.card_number.clone(),
        json!({
            "cn": facts.cn,
            "serialNumber": facts.subject_serial_number,
            "notAfterT": facts.not_after.unix_timestamp(),
            "certb64": base64::engine::general_purpose::STANDARD.encode(&card.issued.cert_der),
        }),
    )
}

/// A page of this project's own written in the style of pages for the real HiPKI local server
/// (`hipki.html`, `hipki.js`): percent-encoded package, popup bridge, `/p11Image.bmp` check,
/// subjectDN split — read, sign a certreg challenge (popup and form POST), wrong PIN, lock,
/// refused relay, a base64 TBS with U+0085 inside, a window that is not the popup's opener.
#[test]
fn a_page_written_for_hipki_uses_the_agent() {
    let chromium = require_tools();
    let (_tmp, dir) = soft_card_dir(KeyAlg::Rsa2048);
    let cards = Arc::new(agent::softcard::SoftCards::open(&dir).expect("soft cards"));
    for name in ["gca-agency", "moica-admin", "moica-operator-1"] {
        cards.insert(name).unwrap();
    }
    let site = start_site();
    let other = start_site();
    let foreign = start_site();
    let agent = TestAgent::start(
        AgentConfig {
            port: 0,
            allowed_origins: vec![site.clone(), other.clone()],
            // Wrong PINs back to back (the count-down to the lock); the wait has its own tests.
            wrong_pin_delay: Duration::ZERO,
            ..AgentConfig::default()
        },
        cards.clone(),
        Some(cards.clone()),
    );
    let mut challenges: BTreeMap<&str, Challenge> = [
        "hipki-popup",
        "hipki-direct",
        "hipki-wrong",
        "hipki-lock",
        "hipki-unused",
        "hipki-b64",
    ]
    .into_iter()
    .map(|k| (k, challenge_on(&site, "f-hipki", k)))
    .collect();
    // The other trusted site's challenge, which a page of `site` must not get signed.
    challenges.insert("hipki-other", challenge_on(&other, "f-hipki", "other"));
    let subjects: serde_json::Map<String, Value> =
        ["gca-agency", "moica-admin", "moica-operator-1"]
            .iter()
            .map(|n| subject_case(n))
            .collect();
    let cases = json!({
        "cards": {
            "org": card_case("gca-agency", 1),
            "lockme": card_case("moica-operator-1", 3),
        },
        "subjects": subjects,
        "tbs": challenges.iter().map(|(k, c)| (k.to_string(), json!(c.tbs()))).collect::<serde_json::Map<_, _>>(),
    });
    let (code, stdout, stderr) = run_node(
        &browser_dir().join("hipki.mjs"),
        &[
            ("CERTREG_SITE_URL", site.clone()),
            ("CERTREG_FOREIGN_URL", foreign.clone()),
            ("CERTREG_AGENT_URL", format!("http://{}", agent.addr)),
            ("CERTREG_BROWSER_CASES", cases.to_string()),
            ("CERTREG_CHROMIUM", chromium.display().to_string()),
        ],
    );
    eprintln!("--- hipki.mjs (stderr) ---\n{stderr}--- end of hipki.mjs ---");
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("hipki.mjs printed no JSON report (exit {code:?}):\n{stdout}"));
    let checks = report["checks"].as_array().expect("checks");
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect();
    assert!(
        failed.is_empty() && code == Some(0),
        "HiPKI-style page checks failed (exit {code:?}):\n{}",
        failed.join("\n")
    );
    assert_eq!(checks.len(), 11, "checks: {checks:#?}");

    let signatures = report["signatures"].as_array().expect("signatures");
    assert_eq!(signatures.len(), 2, "{signatures:#?}");
    let validator = validator(pki());
    for s in signatures {
        let key = s["key"].as_str().unwrap();
        let card = pki().card(s["card"].as_str().unwrap());
        assert_eq!(b64(s["certb64"].as_str().unwrap()), card.issued.cert_der);
        verify_at_issue(
            &validator,
            &challenges[key],
            s["signature"].as_str().unwrap(),
            None,
            card.role,
        )
        .unwrap_or_else(|e| panic!("{key}: the page's signature does not verify: {e}"));
    }
    let state = cards.cards().unwrap();
    let org = state.iter().find(|c| c.name == "gca-agency").unwrap();
    // One wrong PIN by popup, then none: the refused relays, the refused base64 TBS (sent with
    // the right PIN, which would have reset the counter) and the window that was not the opener
    // never reached the card.
    assert_eq!(org.wrong_pins, 1, "{org:?}");
    assert!(
        state
            .iter()
            .find(|c| c.name == "moica-operator-1")
            .unwrap()
            .locked
    );
}
