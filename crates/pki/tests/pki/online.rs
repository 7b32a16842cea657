//! The validator of `pki::online::wire` against real parts: certificates of the test PKI, a real
//! `openssl ocsp` responder for the test GCA, and a small HTTP server for distribution points.
//! The responder dates its answers by the system clock, so validation times are taken from it
//! and moved from there; nothing depends on the date the tests run on.

use pki::anchors::Role;
use pki::error::{ErrorCode, Result};
use pki::facts::ParsedCert;
use pki::ocsp::{CertIdHash, HttpTransport, OcspConfig, OcspTransport, build_request};
use pki::online::{
    CdpConfig, CrlSource, HttpCrlFetch, RevocationPolicy, RevocationSettings, Transports, wire,
};
use pki::revocation::{CrlStore, StalePolicy};
use pki::validate::{ValidationOptions, Validator};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use testkit::ocsp::OcspResponder;
use testpki::{CaKind, CrlSpec, TestPki, TestPkiOptions};
use time::OffsetDateTime;

struct Fixture {
    pki: TestPki,
    /// Generated at this instant (whole seconds).
    at: OffsetDateTime,
    /// `ca.pem`, `ca.key`, `index.txt` of the test GCA, and an impostor with its name.
    dir: PathBuf,
    /// A self-signed CA with the test GCA's name and another key.
    impostor: testpki::Issued,
}

/// The responder's clock (see `testkit::ocsp`): everything here is relative to it.
fn now() -> OffsetDateTime {
    testkit::ocsp::responder_clock()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let at = now();
        let pki = TestPki::generate(TestPkiOptions::new(at)).unwrap();
        let dir = std::env::temp_dir().join(format!("certreg-online-test-{}", std::process::id()));
        remove_stale_dirs();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gca = pki.ca(CaKind::Gca);
        std::fs::write(dir.join("ca.pem"), gca.cert_pem()).unwrap();
        std::fs::write(dir.join("ca.key"), gca.key.pem()).unwrap();
        let impostor = testpki::self_signed(&gca.spec);
        std::fs::write(dir.join("impostor.pem"), impostor.cert_pem()).unwrap();
        std::fs::write(dir.join("impostor.key"), impostor.key.pem()).unwrap();
        let good = pki.card("gca-agency").issued.serial_hex();
        let revoked = pki.card("gca-agency-revoked").issued.serial_hex();
        std::fs::write(
            dir.join("index.txt"),
            testkit::ocsp::index_line(&good, "good", false, at)
                + &testkit::ocsp::index_line(&revoked, "revoked", true, at),
        )
        .unwrap();
        Fixture {
            pki,
            at,
            dir,
            impostor,
        }
    })
}

/// Directories of runs that have ended.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("certreg-online-test-") else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A card of the test GCA issued again (same key and serial) with these URLs.
fn card(name: &str, ocsp_url: Option<&str>, crl_url: Option<&str>) -> ParsedCert {
    let f = fixture();
    let card = f.pki.card(name);
    let mut spec = card.issued.spec.clone();
    spec.ocsp_url = ocsp_url.map(str::to_string);
    spec.crl_url = crl_url.map(str::to_string);
    let issued = testpki::try_issue(&spec, card.issued.key.clone(), f.pki.ca(CaKind::Gca)).unwrap();
    ParsedCert::from_der(issued.cert_der).unwrap()
}

fn gca() -> ParsedCert {
    ParsedCert::from_der(fixture().pki.ca(CaKind::Gca).cert_der.clone()).unwrap()
}

/// A responder for the test GCA answering from `index.txt`, signing with `signer`/`key`
/// (files of the fixture directory), answers valid for five minutes.
fn responder(signer: &str, key: &str) -> OcspResponder {
    testkit::ocsp::ocsp_responder(&fixture().dir, signer, key, &[])
}

/// The network as the validator sees it: counts OCSP posts, may delay them, or answer with
/// canned bytes instead of asking the responder.
#[derive(Default)]
struct Net {
    posts: AtomicUsize,
    delay_ms: AtomicU64,
    canned: Mutex<Option<Vec<u8>>>,
}

impl OcspTransport for Net {
    fn post(&self, url: &str, req: &[u8], timeout: Duration, max: usize) -> Result<Vec<u8>> {
        self.posts.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
        if let Some(c) = self.canned.lock().unwrap().clone() {
            return Ok(c);
        }
        HttpTransport.post(url, req, timeout, max)
    }
}

impl Net {
    fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }
    fn can(&self, reply: Option<Vec<u8>>) {
        *self.canned.lock().unwrap() = reply;
    }
}

/// A raw answer of `r` about `cert`, without a nonce.
fn raw_answer(r: &OcspResponder, cert: &ParsedCert) -> Vec<u8> {
    let req = build_request(&cert.cert, &gca().cert, CertIdHash::Sha1, None).unwrap();
    HttpTransport
        .post(&r.url, &req, Duration::from_secs(5), 64 * 1024)
        .unwrap()
}

fn settings(policy: RevocationPolicy, crl_source: CrlSource) -> RevocationSettings {
    RevocationSettings {
        policy,
        crl_source,
        ocsp: OcspConfig {
            timeout: Duration::from_secs(3),
            ..OcspConfig::default()
        },
        cdp: CdpConfig {
            timeout: Duration::from_secs(3),
            ..CdpConfig::default()
        },
        ..RevocationSettings::default()
    }
}

fn validator(
    s: &RevocationSettings,
    crls: CrlStore,
    stale: StalePolicy,
    net: &Arc<Net>,
) -> Arc<Validator> {
    wire(
        fixture().pki.trust_store().unwrap(),
        crls,
        ValidationOptions {
            stale_crl: stale,
            ..ValidationOptions::default()
        },
        s,
        Transports {
            ocsp: net.clone(),
            crl: Arc::new(HttpCrlFetch),
        },
    )
}

fn validate(v: &Validator, cert: &ParsedCert, at: OffsetDateTime) -> Result<&'static str> {
    v.validate(cert, &[], Role::Organization, at)
        .map(|r| r.revocation)
}

fn code(r: Result<&'static str>) -> ErrorCode {
    r.unwrap_err().code
}

#[test]
fn ocsp_accepts_a_good_card_refuses_a_revoked_one_and_keeps_answers() {
    let r = responder("ca.pem", "ca.key");
    let net = Arc::new(Net::default());
    let v = validator(
        &settings(RevocationPolicy::Ocsp, CrlSource::Configured),
        CrlStore::new(),
        StalePolicy::Reject,
        &net,
    );
    let good = card("gca-agency", Some(&r.url), None);
    let revoked = card("gca-agency-revoked", Some(&r.url), None);
    assert_eq!(validate(&v, &good, now()).unwrap(), "ocsp");
    let e = v
        .validate(&revoked, &[], Role::Organization, now())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked, "{e}");
    assert!(e.detail.contains("OCSP"), "{e}");
    assert_eq!(net.posts(), 2);
    // Both answers are kept for their five minutes.
    for _ in 0..3 {
        assert_eq!(validate(&v, &good, now()).unwrap(), "ocsp");
        assert_eq!(code(validate(&v, &revoked, now())), ErrorCode::CertRevoked);
    }
    assert_eq!(net.posts(), 2);
    // Past its nextUpdate an answer is not used: the responder is asked again, and what it
    // answers now (dated by the system clock) is itself past its nextUpdate at that time.
    let later = now() + time::Duration::minutes(6);
    assert_eq!(code(validate(&v, &good, later)), ErrorCode::RevocationStale);
    assert_eq!(net.posts(), 3);
}

#[test]
fn sixty_four_concurrent_validations_of_one_card_make_one_fetch() {
    let r = responder("ca.pem", "ca.key");
    let net = Arc::new(Net::default());
    net.delay_ms.store(300, Ordering::SeqCst);
    let v = validator(
        &settings(RevocationPolicy::Ocsp, CrlSource::Configured),
        CrlStore::new(),
        StalePolicy::Reject,
        &net,
    );
    let good = Arc::new(card("gca-agency", Some(&r.url), None));
    let barrier = Arc::new(std::sync::Barrier::new(64));
    let at = now();
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (v, good, barrier) = (v.clone(), good.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                validate(&v, &good, at)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), "ocsp");
    }
    assert_eq!(net.posts(), 1);
}

#[test]
fn answers_for_another_serial_or_signed_by_another_key_are_refused_and_never_kept() {
    let r = responder("ca.pem", "ca.key");
    let forger = responder("impostor.pem", "impostor.key");
    let net = Arc::new(Net::default());
    let v = validator(
        &settings(RevocationPolicy::Ocsp, CrlSource::Configured),
        CrlStore::new(),
        StalePolicy::Reject,
        &net,
    );
    let good = card("gca-agency", Some(&r.url), None);
    let revoked = card("gca-agency-revoked", Some(&r.url), None);

    // A genuine "good" answer, but about the revoked card's serial.
    net.can(Some(raw_answer(&r, &good)));
    let e = v
        .validate(&revoked, &[], Role::Organization, now())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid, "{e}");
    assert!(e.detail.contains("no SingleResponse"), "{e}");
    // Signed by a key that is not the issuer's, under the issuer's name.
    net.can(Some(raw_answer(&forger, &good)));
    let e = v
        .validate(&good, &[], Role::Organization, now())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid, "{e}");
    assert!(e.detail.contains("signature"), "{e}");
    assert_eq!(net.posts(), 2);

    // Neither was kept: the responder is asked, and decides.
    net.can(None);
    assert_eq!(code(validate(&v, &revoked, now())), ErrorCode::CertRevoked);
    assert_eq!(validate(&v, &good, now()).unwrap(), "ocsp");
    assert_eq!(net.posts(), 4);
}

#[test]
fn a_replayed_answer_past_its_next_update_is_refused() {
    let r = responder("ca.pem", "ca.key");
    let net = Arc::new(Net::default());
    let mut s = settings(RevocationPolicy::Ocsp, CrlSource::Configured);
    // Without a nonce, only the answer's times stand between a replay and acceptance.
    s.ocsp.require_nonce = false;
    let v = validator(&s, CrlStore::new(), StalePolicy::Reject, &net);
    let good = card("gca-agency", Some(&r.url), None);
    let old = raw_answer(&r, &good);
    net.can(Some(old));
    assert_eq!(validate(&v, &good, now()).unwrap(), "ocsp");
    let later = now() + time::Duration::minutes(6);
    let e = v
        .validate(&good, &[], Role::Organization, later)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationStale, "{e}");
    assert!(e.detail.contains("nextUpdate"), "{e}");
    assert_eq!(net.posts(), 2);
}

/// Accepts connections and never answers.
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    url
}

#[test]
fn a_silent_responder_is_bounded_by_the_timeout_and_the_fetch_limit() {
    let silent = silent_server();
    let net = Arc::new(Net::default());
    let mut s = settings(RevocationPolicy::Ocsp, CrlSource::Configured);
    s.ocsp.timeout = Duration::from_millis(300);
    s.max_fetches = 1;
    let v = validator(&s, CrlStore::new(), StalePolicy::Reject, &net);
    let good = Arc::new(card("gca-agency", Some(&silent), None));
    let revoked = Arc::new(card("gca-agency-revoked", Some(&silent), None));
    let started = Instant::now();
    let at = now();
    let threads: Vec<_> = [good, revoked]
        .into_iter()
        .map(|c| {
            let v = v.clone();
            std::thread::spawn(move || v.validate(&c, &[], Role::Organization, at).unwrap_err())
        })
        .collect();
    for t in threads {
        let e = t.join().unwrap();
        assert_eq!(e.code, ErrorCode::OcspUnavailable, "{e}");
    }
    // One waited for the only slot while the other waited for the responder.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// What the distribution point server answers.
enum Reply {
    Crl(Vec<u8>),
    /// This many bytes of junk, without a length, then the connection is closed.
    Junk(usize),
    Status(u16),
}

/// A distribution point: answers every GET with the current reply and counts them.
struct CdpServer {
    base: String,
    reply: Arc<Mutex<Reply>>,
    gets: Arc<AtomicUsize>,
}

impl CdpServer {
    fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let reply = Arc::new(Mutex::new(reply));
        let gets = Arc::new(AtomicUsize::new(0));
        let (r, g) = (reply.clone(), gets.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let (r, g) = (r.clone(), g.clone());
                std::thread::spawn(move || answer(&mut s, &r, &g));
            }
        });
        Self { base, reply, gets }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

fn answer(s: &mut TcpStream, reply: &Mutex<Reply>, gets: &AtomicUsize) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    gets.fetch_add(1, Ordering::SeqCst);
    let out = match &*reply.lock().unwrap() {
        Reply::Crl(der) => {
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", der.len()).into_bytes();
            out.extend_from_slice(der);
            out
        }
        Reply::Junk(n) => {
            let mut out = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
            out.resize(out.len() + n, b'J');
            out
        }
        Reply::Status(code) => {
            format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\n\r\n").into_bytes()
        }
    };
    let _ = s.write_all(&out);
}

/// A partitioned CRL of the test GCA for the distribution point `url`, listing the revoked
/// card, issued by `signer`.
fn partition(
    signer: &testpki::Issued,
    url: &str,
    this: OffsetDateTime,
    next: OffsetDateTime,
) -> Vec<u8> {
    let f = fixture();
    let revoked = f.pki.card("gca-agency-revoked").issued.serial().to_vec();
    testpki::crl_from(
        signer,
        &CrlSpec {
            revoked: vec![(revoked, f.at - time::Duration::days(10))],
            number: this.unix_timestamp().to_be_bytes().to_vec(),
            idp_url: Some(url.to_string()),
            ..CrlSpec::new(this, next)
        },
    )
}

fn cdp_validator(stale: StalePolicy) -> Arc<Validator> {
    validator(
        &settings(RevocationPolicy::Crl, CrlSource::DistributionPoint),
        CrlStore::new(),
        stale,
        &Arc::new(Net::default()),
    )
}

#[test]
fn the_distribution_point_crl_decides_and_is_kept_until_its_next_update() {
    let f = fixture();
    let gca = f.pki.ca(CaKind::Gca);
    let hour = time::Duration::hours(1);
    let server = CdpServer::start(Reply::Status(404));
    let url = server.url("gca-1.crl");
    server.set(Reply::Crl(partition(gca, &url, f.at, f.at + hour)));
    let v = cdp_validator(StalePolicy::Reject);
    let good = card("gca-agency", None, Some(&url));
    let revoked = card("gca-agency-revoked", None, Some(&url));
    assert_eq!(validate(&v, &good, f.at).unwrap(), "crl");
    let e = v
        .validate(&revoked, &[], Role::Organization, f.at)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked, "{e}");
    assert!(e.detail.contains(&url), "{e}");
    for _ in 0..3 {
        assert!(validate(&v, &good, f.at + time::Duration::minutes(59)).is_ok());
    }
    assert_eq!(server.gets(), 1);

    // Past its nextUpdate the CRL is fetched again; a newer one is taken.
    server.set(Reply::Crl(partition(
        gca,
        &url,
        f.at + hour,
        f.at + hour * 2,
    )));
    assert!(validate(&v, &good, f.at + hour).is_ok());
    assert_eq!(server.gets(), 2);
    // The old one served again (a replay) does not replace it, and is not used past the
    // newer one's nextUpdate either.
    server.set(Reply::Crl(partition(gca, &url, f.at, f.at + hour)));
    let e = v
        .validate(&good, &[], Role::Organization, f.at + hour * 3)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationStale, "{e}");
    assert_eq!(server.gets(), 3);

    // A CRL of another partition does not speak for these cards.
    let other = server.url("gca-2.crl");
    let elsewhere = card("gca-agency", None, Some(&other));
    server.set(Reply::Crl(partition(gca, &url, f.at, f.at + hour)));
    let e = v
        .validate(&elsewhere, &[], Role::Organization, f.at)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationUnknown, "{e}");
}

#[test]
fn a_distribution_point_crl_signed_by_another_key_is_refused_and_not_kept() {
    let f = fixture();
    let server = CdpServer::start(Reply::Status(404));
    let url = server.url("gca-1.crl");
    let hour = time::Duration::hours(1);
    server.set(Reply::Crl(partition(&f.impostor, &url, f.at, f.at + hour)));
    let v = cdp_validator(StalePolicy::Reject);
    let revoked = card("gca-agency-revoked", None, Some(&url));
    let good = card("gca-agency", None, Some(&url));
    let e = v
        .validate(&good, &[], Role::Organization, f.at)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid, "{e}");
    assert!(e.detail.contains("not signed by the key"), "{e}");
    server.set(Reply::Crl(partition(
        f.pki.ca(CaKind::Gca),
        &url,
        f.at,
        f.at + hour,
    )));
    assert!(validate(&v, &good, f.at).is_ok());
    assert_eq!(code(validate(&v, &revoked, f.at)), ErrorCode::CertRevoked);
    assert_eq!(server.gets(), 2);
}

#[test]
fn fifty_megabytes_of_junk_at_a_distribution_point_are_refused() {
    let f = fixture();
    let server = CdpServer::start(Reply::Junk(50 * 1024 * 1024));
    let url = server.url("gca-1.crl");
    let v = cdp_validator(StalePolicy::Reject);
    let good = card("gca-agency", None, Some(&url));
    let started = Instant::now();
    let e = v
        .validate(&good, &[], Role::Organization, f.at)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationUnknown, "{e}");
    assert!(e.detail.contains("exceeds the limit"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_distribution_point_that_is_down_leaves_the_stale_policy_to_decide() {
    let f = fixture();
    let hour = time::Duration::hours(1);
    let server = CdpServer::start(Reply::Status(404));
    let url = server.url("gca-1.crl");
    let good = card("gca-agency", None, Some(&url));
    let revoked = card("gca-agency-revoked", None, Some(&url));
    // Nothing ever fetched: the step is refused.
    for stale in [StalePolicy::Reject, StalePolicy::Warn] {
        let e = cdp_validator(stale)
            .validate(&good, &[], Role::Organization, f.at)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationUnknown, "{e}");
        assert!(e.detail.contains("404"), "{e}");
    }
    for stale in [StalePolicy::Reject, StalePolicy::Warn] {
        let v = cdp_validator(stale);
        server.set(Reply::Crl(partition(
            f.pki.ca(CaKind::Gca),
            &url,
            f.at,
            f.at + hour,
        )));
        assert!(validate(&v, &good, f.at).is_ok());
        server.set(Reply::Status(503));
        let later = f.at + hour * 2;
        let got = validate(&v, &good, later);
        match stale {
            StalePolicy::Reject => {
                let e = got.unwrap_err();
                assert_eq!(e.code, ErrorCode::RevocationStale, "{e}");
                assert!(e.detail.contains("503"), "{e}");
            }
            StalePolicy::Warn => {
                assert!(got.is_ok(), "{got:?}");
                // The stale CRL still revokes what it lists.
                assert_eq!(code(validate(&v, &revoked, later)), ErrorCode::CertRevoked);
            }
        }
    }
}

#[test]
fn crl_or_ocsp_falls_back_to_the_crl_when_the_responder_is_silent() {
    let f = fixture();
    let silent = silent_server();
    let hour = time::Duration::hours(1);
    let server = CdpServer::start(Reply::Status(404));
    let url = server.url("gca-1.crl");
    server.set(Reply::Crl(partition(
        f.pki.ca(CaKind::Gca),
        &url,
        f.at,
        f.at + hour,
    )));
    let good = card("gca-agency", Some(&silent), Some(&url));
    let revoked = card("gca-agency-revoked", Some(&silent), Some(&url));
    let configured = || f.pki.crl_store(f.at, f.at + hour).unwrap();
    for (source, crls) in [
        (CrlSource::DistributionPoint, CrlStore::new()),
        (CrlSource::Configured, configured()),
    ] {
        let mut s = settings(RevocationPolicy::CrlOrOcsp, source);
        s.ocsp.timeout = Duration::from_millis(200);
        let v = validator(&s, crls, StalePolicy::Reject, &Arc::new(Net::default()));
        assert_eq!(
            validate(&v, &good, f.at).unwrap(),
            "crl_or_ocsp",
            "{source:?}"
        );
        let e = v
            .validate(&revoked, &[], Role::Organization, f.at)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::CertRevoked, "{source:?}: {e}");
        // Neither source answers: the step is refused with both reasons.
        let e = v
            .validate(&good, &[], Role::Organization, f.at + hour * 2)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationStale, "{source:?}: {e}");
        assert!(e.detail.contains("OCSP gave no answer either"), "{e}");
    }
}

#[test]
fn crl_and_ocsp_needs_both() {
    let f = fixture();
    let r = responder("ca.pem", "ca.key");
    let hour = time::Duration::hours(1);
    let at = now();
    let good = card("gca-agency", Some(&r.url), None);
    let revoked = card("gca-agency-revoked", Some(&r.url), None);
    let net = Arc::new(Net::default());
    let v = validator(
        &settings(RevocationPolicy::CrlAndOcsp, CrlSource::Configured),
        f.pki.crl_store(at - hour, at + hour).unwrap(),
        StalePolicy::Reject,
        &net,
    );
    assert_eq!(validate(&v, &good, at).unwrap(), "crl+ocsp");
    // Refused by the CRL during path building, before OCSP is asked.
    let e = v
        .validate(&revoked, &[], Role::Organization, at)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked, "{e}");
    assert_eq!(net.posts(), 1);
    // Without a CRL of the issuer, OCSP alone is not enough.
    let v = validator(
        &settings(RevocationPolicy::CrlAndOcsp, CrlSource::Configured),
        CrlStore::new(),
        StalePolicy::Reject,
        &net,
    );
    assert_eq!(code(validate(&v, &good, at)), ErrorCode::RevocationUnknown);
}

#[test]
fn the_kept_answers_and_crls_are_bounded() {
    let f = fixture();
    let r = responder("ca.pem", "ca.key");
    let net = Arc::new(Net::default());
    let ocsp = pki::online::OcspCache::new(
        OcspConfig::default(),
        net.clone(),
        Arc::new(pki::online::FetchLimit::new(4)),
    )
    .with_capacity(1);
    let good = card("gca-agency", Some(&r.url), None);
    let revoked = card("gca-agency-revoked", Some(&r.url), None);
    let issuer = gca();
    let at = now();
    for cert in [&good, &good, &revoked, &revoked, &good] {
        let _ = ocsp.status(cert, &issuer, at);
        assert_eq!(ocsp.len(), 1);
    }
    // good, revoked (the good answer goes), good again.
    assert_eq!(net.posts(), 3);

    let hour = time::Duration::hours(1);
    let server = CdpServer::start(Reply::Status(404));
    let (a, b) = (server.url("gca-1.crl"), server.url("gca-2.crl"));
    let mut s = settings(RevocationPolicy::Crl, CrlSource::DistributionPoint);
    s.cdp.capacity = 1;
    let v = validator(&s, CrlStore::new(), StalePolicy::Reject, &net);
    let on_a = card("gca-agency", None, Some(&a));
    let on_b = card("gca-agency", None, Some(&b));
    let gca_ca = f.pki.ca(CaKind::Gca);
    for (cert, url) in [(&on_a, &a), (&on_a, &a), (&on_b, &b), (&on_a, &a)] {
        server.set(Reply::Crl(partition(gca_ca, url, f.at, f.at + hour)));
        assert!(validate(&v, cert, f.at).is_ok());
    }
    assert_eq!(server.gets(), 3);
    // By bytes: a budget smaller than two CRLs keeps one.
    let small = partition(gca_ca, &a, f.at, f.at + hour).len();
    let mut s = settings(RevocationPolicy::Crl, CrlSource::DistributionPoint);
    s.cdp.max_total_bytes = small * 3 / 2;
    let v = validator(&s, CrlStore::new(), StalePolicy::Reject, &net);
    for (cert, url) in [(&on_a, &a), (&on_b, &b), (&on_b, &b), (&on_a, &a)] {
        server.set(Reply::Crl(partition(gca_ca, url, f.at, f.at + hour)));
        assert!(validate(&v, cert, f.at).is_ok());
    }
    assert_eq!(server.gets(), 6);
}

#[test]
fn a_stale_crl_used_by_the_online_check_is_named_in_the_warnings() {
    let f = fixture();
    let gca = f.pki.ca(CaKind::Gca);
    let hour = time::Duration::hours(1);
    let server = CdpServer::start(Reply::Status(404));
    let url = server.url("gca-1.crl");
    let good = card("gca-agency", None, Some(&url));
    let other = card("gca-agency-renewed", None, Some(&url));
    server.set(Reply::Crl(partition(gca, &url, f.at, f.at + hour)));
    let v = cdp_validator(StalePolicy::Warn);
    let fresh = v.validate(&good, &[], Role::Organization, f.at).unwrap();
    assert!(fresh.warnings.is_empty(), "{:?}", fresh.warnings);

    // The distribution point is down and its CRL past its nextUpdate: used, with a warning,
    // whether the path is built (`other`) or taken from the path cache (`good`, then `other`).
    server.set(Reply::Status(503));
    let later = f.at + hour * 2;
    for (cert, cached) in [(&other, false), (&good, true), (&other, true)] {
        let r = v.validate(cert, &[], Role::Organization, later).unwrap();
        assert_eq!((r.revocation, r.cached), ("crl", cached));
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with("accepted with a stale CRL: the CRL from")
                && r.warnings[0].contains(&url),
            "{:?}",
            r.warnings
        );
    }
    // A fresh CRL again: no warning, from the path cache too.
    server.set(Reply::Crl(partition(gca, &url, later, later + hour)));
    let r = v.validate(&good, &[], Role::Organization, later).unwrap();
    assert!(r.cached && r.warnings.is_empty(), "{:?}", r.warnings);

    // The configured CRLs as the fallback of `crl_or_ocsp` say the same.
    let silent = silent_server();
    let mut s = settings(RevocationPolicy::CrlOrOcsp, CrlSource::Configured);
    s.ocsp.timeout = Duration::from_millis(200);
    let v = validator(
        &s,
        f.pki.crl_store(f.at, f.at + hour).unwrap(),
        StalePolicy::Warn,
        &Arc::new(Net::default()),
    );
    let good = card("gca-agency", Some(&silent), None);
    let r = v.validate(&good, &[], Role::Organization, later).unwrap();
    assert_eq!(r.revocation, "crl_or_ocsp");
    assert!(
        r.warnings.len() == 1 && r.warnings[0].starts_with("accepted with a stale CRL: "),
        "{:?}",
        r.warnings
    );
}

/// A CRL of the test GCA for `url` listing `revoked` (serial bytes) at `this`.
fn listing(url: &str, revoked: &[&[u8]], this: OffsetDateTime, next: OffsetDateTime) -> Vec<u8> {
    testpki::crl_from(
        fixture().pki.ca(CaKind::Gca),
        &CrlSpec {
            revoked: revoked.iter().map(|s| (s.to_vec(), this)).collect(),
            number: this.unix_timestamp().to_be_bytes().to_vec(),
            idp_url: Some(url.to_string()),
            ..CrlSpec::new(this, next)
        },
    )
}

#[test]
fn a_card_judged_before_is_asked_about_again_once_its_crl_runs_out() {
    let f = fixture();
    let min = time::Duration::minutes(1);
    let server = CdpServer::start(Reply::Status(404));
    let url = server.url("gca-1.crl");
    let good = card("gca-agency", None, Some(&url));
    let serial_bytes = f.pki.card("gca-agency").issued.serial().to_vec();
    server.set(Reply::Crl(listing(&url, &[], f.at, f.at + min * 10)));
    let v = cdp_validator(StalePolicy::Reject);
    let issuer = good.facts.issuer.clone();
    let serial = good.facts.serial.clone();
    let asked = [(Some(issuer.clone()), serial.clone())];

    // Never judged: nothing to ask about, nothing fetched.
    assert_eq!(v.ask_revocation(&asked, f.at), 0);
    assert_eq!(server.gets(), 0);
    assert!(validate(&v, &good, f.at).is_ok());
    assert_eq!(server.gets(), 1);

    // Revoked at the distribution point: the CRL kept speaks until its nextUpdate.
    let revoked_at = f.at + min * 5;
    server.set(Reply::Crl(listing(
        &url,
        &[&serial_bytes],
        revoked_at,
        f.at + min * 30,
    )));
    assert_eq!(v.ask_revocation(&asked, f.at + min * 9), 0);
    assert_eq!(server.gets(), 1);
    assert_eq!(v.revoked_at(Some(&issuer), &serial), None);
    // Past it, the newer CRL is fetched and says so; the validator remembers it without
    // fetching, by issuer and serial and by serial alone.
    assert_eq!(v.ask_revocation(&asked, f.at + min * 11), 1);
    assert_eq!(server.gets(), 2);
    assert_eq!(v.revoked_at(Some(&issuer), &serial), Some(revoked_at));
    assert_eq!(v.revoked_at(None, &serial), Some(revoked_at));
    assert_eq!(v.revoked_at(Some("CN=another issuer"), &serial), None);
    // A revocation is final: asked again, nothing is fetched.
    assert_eq!(v.ask_revocation(&asked, f.at + min * 40), 1);
    assert_eq!(server.gets(), 2);
}

#[test]
fn with_both_required_either_source_revokes_and_neither_answering_revokes_nothing() {
    let f = fixture();
    let r = responder("ca.pem", "ca.key");
    let min = time::Duration::minutes(1);
    let at = now();
    let server = CdpServer::start(Reply::Status(404));
    let url = server.url("gca-1.crl");
    let good = card("gca-agency", Some(&r.url), Some(&url));
    let net = Arc::new(Net::default());
    let v = validator(
        &settings(RevocationPolicy::CrlAndOcsp, CrlSource::DistributionPoint),
        CrlStore::new(),
        StalePolicy::Reject,
        &net,
    );
    server.set(Reply::Crl(listing(&url, &[], at - min, at + min * 10)));
    assert_eq!(validate(&v, &good, at).unwrap(), "crl+ocsp");
    assert_eq!(net.posts(), 1);
    let key = |c: &ParsedCert| (Some(c.facts.issuer.clone()), c.facts.serial.clone());

    // Eleven minutes on, the responder's answers (five minutes, dated by the system clock) are
    // stale however often it is asked, and the distribution point is down: no source answers,
    // nothing is revoked.
    let later = at + min * 11;
    server.set(Reply::Status(503));
    assert_eq!(v.ask_revocation(&[key(&good)], later), 0);
    assert_eq!(net.posts(), 2);
    assert_eq!(
        v.revoked_at(Some(&good.facts.issuer), &good.facts.serial),
        None
    );
    // The distribution point lists it: revoked, whatever OCSP cannot say.
    let serial = f.pki.card("gca-agency").issued.serial().to_vec();
    server.set(Reply::Crl(listing(&url, &[&serial], at, at + min * 30)));
    assert_eq!(v.ask_revocation(&[key(&good)], later), 1);
    assert_eq!(
        v.revoked_at(Some(&good.facts.issuer), &good.facts.serial),
        Some(at)
    );

    // A card refused at its step for want of a CRL (its distribution point has none) and
    // reported revoked by the responder: revoked too.
    let revoked = card(
        "gca-agency-revoked",
        Some(&r.url),
        Some(&server.url("none.crl")),
    );
    server.set(Reply::Status(404));
    assert_eq!(
        code(validate(&v, &revoked, at)),
        ErrorCode::RevocationUnknown
    );
    assert_eq!(
        v.revoked_at(Some(&revoked.facts.issuer), &revoked.facts.serial),
        None
    );
    assert_eq!(v.ask_revocation(&[key(&revoked)], now()), 1);
    assert!(
        v.revoked_at(Some(&revoked.facts.issuer), &revoked.facts.serial)
            .is_some()
    );
}
