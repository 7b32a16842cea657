//! Test fixtures: one test PKI per key algorithm written once as soft cards, a real agent bound
//! to the loopback port 0 per test, and a tiny HTTP/1.1 client over `std::net::TcpStream`.

#![allow(dead_code)]

use agent::backend::CardBackend;
use agent::server::{AgentConfig, serve_on};
use agent::softcard::SoftCards;
use pki::challenge::Challenge;
use pki::validate::{ValidationOptions, Validator};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use testpki::{KeyAlg, TestPki, TestPkiOptions};
use time::OffsetDateTime;

/// The site the tests' agents trust.
pub const SITE: &str = "https://certreg.example.gov.tw";

/// When the test PKIs were made: the agent checks validity against the real clock, so the
/// hierarchy is generated around the real "now".
pub fn now() -> OffsetDateTime {
    static NOW: OnceLock<OffsetDateTime> = OnceLock::new();
    *NOW.get_or_init(|| {
        let t = OffsetDateTime::now_utc();
        t.replace_nanosecond(0).unwrap_or(t)
    })
}

struct Written {
    pki: TestPki,
    dir: PathBuf,
}

fn written(alg: KeyAlg) -> &'static Written {
    static RSA: OnceLock<Written> = OnceLock::new();
    static P256: OnceLock<Written> = OnceLock::new();
    let cell = match alg {
        KeyAlg::P256 => &P256,
        _ => &RSA,
    };
    cell.get_or_init(|| {
        let pki = TestPki::generate(TestPkiOptions {
            key_alg: alg,
            ..TestPkiOptions::new(now())
        })
        .expect("test PKI");
        let dir =
            std::env::temp_dir().join(format!("certreg-agent-pki-{alg:?}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        pki.write_dir(&dir).expect("write test PKI");
        Written { pki, dir }
    })
}

pub fn pki() -> &'static TestPki {
    &written(KeyAlg::Rsa2048).pki
}

pub fn pki_p256() -> &'static TestPki {
    &written(KeyAlg::P256).pki
}

pub use testkit::TempDir;

/// A private copy of a written test PKI's `cards/` and `index.json`: each test has its own
/// readers and PIN counters.
pub fn soft_card_dir(alg: KeyAlg) -> (TempDir, PathBuf) {
    let src = &written(alg).dir;
    let tmp = TempDir::new("cards");
    std::fs::copy(src.join("index.json"), tmp.path("index.json")).unwrap();
    let cards = tmp.path("cards");
    std::fs::create_dir_all(&cards).unwrap();
    for entry in std::fs::read_dir(src.join("cards")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), cards.join(entry.file_name())).unwrap();
    }
    (tmp, cards)
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Http {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[eol + 2 + size + 2..];
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Http {
    let mut s = TcpStream::connect(addr).expect("connect to the agent");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (and stop reading) before an oversized body is sent in full.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Http {
        status,
        headers,
        body,
    }
}

/// A running agent on 127.0.0.1:<ephemeral> (and [::1] on the same port), stopped when dropped.
pub struct TestAgent {
    pub addr: SocketAddr,
    pub cards: Option<Arc<SoftCards>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestAgent {
    /// An agent over the soft cards in `dir` with `insert`ed cards in readers.
    pub fn soft(dir: &Path, insert: &[&str]) -> Self {
        let cards = Arc::new(SoftCards::open(dir).expect("soft cards"));
        for name in insert {
            cards.insert(name).expect("insert");
        }
        Self::start(default_config(), cards.clone(), Some(cards))
    }

    pub fn start(
        config: AgentConfig,
        backend: Arc<dyn CardBackend>,
        cards: Option<Arc<SoftCards>>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(agent::server::bind(0))
            .expect("bind the loopback port 0");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cards2 = cards.clone();
        let handle = runtime.handle().clone();
        let thread = std::thread::spawn(move || {
            handle
                .block_on(serve_on(listener, config, backend, cards2, async move {
                    let _ = rx.await;
                }))
                .expect("serve");
        });
        Self {
            addr,
            cards,
            shutdown: Some(tx),
            runtime: Some(runtime),
            thread: Some(thread),
        }
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Http {
        http(self.addr, method, path, headers, body)
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Http {
        self.request("POST", path, &[], body)
    }

    pub fn pkcs11info(&self) -> Value {
        self.post("/pkcs11info?withcert=true", b"").json()
    }

    /// `/sign` with a JSON `tbsPackage` in the form encoding HiPKI pages use, from a page of
    /// [`SITE`] (the site the tests' challenges name).
    pub fn sign(&self, package: &Value) -> Value {
        self.sign_from(package, Some(SITE))
    }

    pub fn sign_from(&self, package: &Value, origin: Option<&str>) -> Value {
        let body = format!("tbsPackage={}", urlencode(&package.to_string()));
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        self.request("POST", "/sign", &headers, body.as_bytes())
            .json()
    }

    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// The tests' agent: trusts [`SITE`]; no wait after a wrong PIN (tests that count a card's tries
/// down send wrong PINs back to back; the wait has its own tests).
pub fn default_config() -> AgentConfig {
    AgentConfig {
        port: 0,
        allowed_origins: vec![SITE.to_string()],
        wrong_pin_delay: Duration::ZERO,
        ..AgentConfig::default()
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A fresh challenge for `step` of flow `f-1` on [`SITE`].
pub fn challenge() -> Challenge {
    challenge_on(SITE, "f-1", "org_card")
}

/// A fresh challenge for `step` of `flow` on `origin`, issued at [`now`]: the agent never reads a
/// challenge's time, and [`verify_at_issue`] checks the proof at that same instant, so no test
/// depends on how long it runs.
pub fn challenge_on(origin: &str, flow: &str, step: &str) -> Challenge {
    Challenge::new("first_registration", origin, flow, step, now()).unwrap()
}

/// `pki::proof::verify_proof` at the moment `challenge` was issued.
pub fn verify_at_issue(
    validator: &Validator,
    challenge: &Challenge,
    signature: &str,
    beside: Option<&[u8]>,
    role: pki::anchors::Role,
) -> pki::error::Result<pki::proof::VerifiedProof> {
    pki::proof::verify_proof(
        validator,
        challenge,
        signature.as_bytes(),
        beside,
        role,
        challenge.issued_at,
    )
}

/// A `tbsPackage` for `tbs` with `pin`.
pub fn package(tbs: &str, pin: &str, signature_type: &str) -> Value {
    serde_json::json!({
        "func": "MakeSignature",
        "tbs": tbs,
        "tbsEncoding": "NONE",
        "hashAlgorithm": "SHA256",
        "signatureType": signature_type,
        "pin": pin,
        "nonce": "",
        "withCardSN": false,
    })
}

pub fn pin_of(pki: &TestPki, card: &str) -> String {
    pki.card(card).pin.clone()
}

/// A validator over `pki` with its current CRLs.
pub fn validator(pki: &TestPki) -> Validator {
    Validator::new(
        pki.trust_store().unwrap(),
        pki.crl_store(
            now() - time::Duration::hours(1),
            now() + time::Duration::days(7),
        )
        .unwrap(),
        ValidationOptions::default(),
    )
}

pub fn b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
