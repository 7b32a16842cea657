//! These tests run a real `openssl ocsp` responder over a throwaway CA made with the
//! `openssl` CLI, so request encoding and response parsing are checked against OpenSSL itself.

use super::types::OcspRequest;
use super::*;
use der::{Decode, DecodePem};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use testkit::ocsp::OcspResponder;

struct TestPki {
    dir: PathBuf,
    ca: Certificate,
    leaf: Certificate,
    revoked: Certificate,
    unknown: Certificate,
    /// When `index.txt` was written: the revoked entry is dated a day before.
    indexed_at: OffsetDateTime,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EXTENSIONS: &str = "\
[leaf]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
authorityInfoAccess=OCSP;URI:http://ocsp.example.test/ocsp,caIssuers;URI:http://ca.example.test/ca.crt,OCSP;URI:http://127.0.0.1:9/second
[resp]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=OCSPSigning
[noeku]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
";

/// Serial 1003 ("unknown") is issued by the CA but left out of index.txt on purpose.
fn index(at: OffsetDateTime) -> String {
    [
        ("1001", "leaf", false),
        ("1002", "revoked", true),
        ("2001", "resp", false),
        ("2002", "noeku", false),
    ]
    .map(|(serial, cn, revoked)| testkit::ocsp::index_line(serial, cn, revoked, at))
    .concat()
}

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("certreg-ocsp-test-{}", std::process::id()));
        remove_stale_dirs();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ext.cnf"), EXTENSIONS).unwrap();
        let indexed_at = now();
        std::fs::write(dir.join("index.txt"), index(indexed_at)).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/C=TW/O=certreg test/CN=Test OCSP CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        // One end-entity key for every certificate keeps RSA key generation to two keys.
        openssl(
            &dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "ee.key",
            ],
        );
        for (name, serial, section) in [
            ("leaf", "0x1001", "leaf"),
            ("revoked", "0x1002", "leaf"),
            ("unknown", "0x1003", "leaf"),
            ("resp", "0x2001", "resp"),
            ("noeku", "0x2002", "noeku"),
        ] {
            let subj = format!("/C=TW/O=certreg test/CN={name}");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            openssl(
                &dir,
                &[
                    "req", "-new", "-key", "ee.key", "-subj", &subj, "-out", &csr,
                ],
            );
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    serial,
                    "-days",
                    "10",
                    "-extfile",
                    "ext.cnf",
                    "-extensions",
                    section,
                    "-out",
                    &pem,
                ],
            );
        }
        let load = |n: &str| {
            Certificate::from_pem(std::fs::read(dir.join(format!("{n}.pem"))).unwrap()).unwrap()
        };
        TestPki {
            ca: load("ca"),
            leaf: load("leaf"),
            revoked: load("revoked"),
            unknown: load("unknown"),
            indexed_at,
            dir,
        }
    })
}

/// Test directories outlive their run (the statics holding them are never dropped), so each
/// run removes those of runs that have ended.
fn remove_stale_dirs() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("certreg-ocsp-test-") else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `signer`/`key` name files in the PKI directory; `extra` goes to `openssl ocsp` as is.
fn responder(signer: &str, key: &str, extra: &[&str]) -> OcspResponder {
    testkit::ocsp::ocsp_responder(&pki().dir, signer, key, extra)
}

fn cfg(url: &str) -> OcspConfig {
    OcspConfig {
        url_override: Some(url.to_string()),
        ..OcspConfig::default()
    }
}

/// The responder's clock (see `testkit::ocsp`): everything here is relative to it.
fn now() -> OffsetDateTime {
    testkit::ocsp::responder_clock()
}

/// A raw response from `r` for `cert`, with the given nonce.
fn fetch(r: &OcspResponder, cert: &Certificate, nonce: Option<&[u8]>) -> Vec<u8> {
    let req = build_request(cert, &pki().ca, CertIdHash::Sha1, nonce).unwrap();
    HttpTransport
        .post(&r.url, &req, Duration::from_secs(5), 64 * 1024)
        .unwrap()
}

#[test]
fn good_leaf_is_good_through_http() {
    let r = responder("resp.pem", "ee.key", &[]);
    let p = pki();
    let status = check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap();
    assert_eq!(status, OcspStatus::Good);
}

#[test]
fn sha256_cert_id_is_answered() {
    let r = responder("resp.pem", "ee.key", &[]);
    let p = pki();
    let c = OcspConfig {
        hash: CertIdHash::Sha256,
        ..cfg(&r.url)
    };
    assert_eq!(
        check(&p.leaf, &p.ca, &c, &HttpTransport, now()).unwrap(),
        OcspStatus::Good
    );
}

#[test]
fn revoked_leaf_is_revoked_with_time() {
    let r = responder("resp.pem", "ee.key", &[]);
    let p = pki();
    let status = check(&p.revoked, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap();
    let at = p.indexed_at - time::Duration::days(1);
    assert_eq!(status, OcspStatus::Revoked { at });
}

#[test]
fn unknown_serial_counts_as_revoked() {
    let r = responder("resp.pem", "ee.key", &[]);
    let p = pki();
    let e = check(&p.unknown, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked);
    assert_eq!(
        e.detail,
        "OCSP responder does not know the certificate (treated as revoked)"
    );
}

#[test]
fn nonce_must_be_echoed_exactly() {
    let r = responder("resp.pem", "ee.key", &[]);
    let p = pki();
    let c = cfg(&r.url);
    let nonce = [7u8; 32];
    let resp = fetch(&r, &p.leaf, Some(&nonce));
    assert_eq!(
        check_response(&resp, &p.leaf, &p.ca, &c, Some(&nonce), now()).unwrap(),
        OcspStatus::Good
    );
    let e = check_response(&resp, &p.leaf, &p.ca, &c, Some(&[8u8; 32]), now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    assert!(e.detail.contains("nonce differs"), "{e}");

    let without = fetch(&r, &p.leaf, None);
    let e = check_response(&without, &p.leaf, &p.ca, &c, Some(&nonce), now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    assert!(e.detail.contains("does not echo"), "{e}");
    // Without a nonce requirement the same response is fine.
    let c = OcspConfig {
        require_nonce: false,
        ..c
    };
    assert_eq!(
        check_response(&without, &p.leaf, &p.ca, &c, None, now()).unwrap(),
        OcspStatus::Good
    );
}

#[test]
fn issuer_signed_response_by_name_and_by_key() {
    let p = pki();
    for extra in [&[][..], &["-resp_key_id"][..]] {
        let r = responder("ca.pem", "ca.key", extra);
        let status = check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap();
        assert_eq!(status, OcspStatus::Good, "{extra:?}");
    }
}

#[test]
fn delegated_responder_by_key_is_accepted() {
    let r = responder("resp.pem", "ee.key", &["-resp_key_id"]);
    let p = pki();
    assert_eq!(
        check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap(),
        OcspStatus::Good
    );
}

#[test]
fn delegated_responder_without_ocsp_signing_eku_is_invalid() {
    let r = responder("noeku.pem", "ee.key", &[]);
    let p = pki();
    let e = check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    assert!(e.detail.contains("OCSPSigning"), "{e}");
}

#[test]
fn expired_delegated_responder_is_invalid() {
    // Responses valid for 30 days, the responder certificate for 10.
    let r = responder("resp.pem", "ee.key", &["-ndays", "30"]);
    let p = pki();
    let c = OcspConfig {
        max_age: Duration::from_secs(40 * 86400),
        ..cfg(&r.url)
    };
    let resp = fetch(&r, &p.leaf, None);
    let ok = check_response(
        &resp,
        &p.leaf,
        &p.ca,
        &c,
        None,
        now() + time::Duration::days(9),
    );
    assert_eq!(ok.unwrap(), OcspStatus::Good);
    let e = check_response(
        &resp,
        &p.leaf,
        &p.ca,
        &c,
        None,
        now() + time::Duration::days(11),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    assert!(e.detail.contains("is valid from"), "{e}");
}

#[test]
fn delegated_responder_certificate_is_required() {
    // Without the responder certificate in the response, the signer cannot be authorised.
    let r = responder("resp.pem", "ee.key", &["-resp_no_certs"]);
    let p = pki();
    let e = check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    assert!(e.detail.contains("responder ID matches neither"), "{e}");
}

#[test]
fn response_times_are_enforced() {
    let r = responder("ca.pem", "ca.key", &[]);
    let p = pki();
    let c = cfg(&r.url);
    let resp = fetch(&r, &p.leaf, None);
    let check_at = |c: &OcspConfig, at| check_response(&resp, &p.leaf, &p.ca, c, None, at);

    // -nmin 5: nextUpdate five minutes after thisUpdate.
    let e = check_at(&c, now() + time::Duration::minutes(10)).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationStale);
    assert!(e.detail.contains("nextUpdate"), "{e}");
    // Far in the future, max_age (one day) is exceeded first.
    let e = check_at(&c, now() + time::Duration::days(2)).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationStale);

    let short = OcspConfig {
        max_age: Duration::from_secs(10),
        ..c.clone()
    };
    let e = check_at(&short, now() + time::Duration::minutes(1)).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationStale);
    assert!(e.detail.contains("older than"), "{e}");

    let e = check_at(&c, now() - time::Duration::hours(1)).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    assert!(e.detail.contains("in the future"), "{e}");

    // Within the allowed skew the same response is fine.
    assert_eq!(
        check_at(&c, now() - time::Duration::minutes(2)).unwrap(),
        OcspStatus::Good
    );
}

/// The body of a plain HTTP/1.0 GET, read to the end of the connection.
fn http_get(base: &str, path: &str) -> Vec<u8> {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /{path} HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let body = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    all[body..].to_vec()
}

#[test]
fn error_status_is_unavailable() {
    let r = responder("resp.pem", "ee.key", &[]);
    let p = pki();
    let c = cfg(&r.url);
    // An OCSPRequest with an empty requestList makes openssl answer malformedRequest. openssl
    // 3.0 only answers it over GET (base64 in the path); POSTed, such a body (or any non-DER
    // body) gets no answer at all, which the client sees as a timeout.
    let resp = http_get(&r.url, "MAQwAjAA");
    let e = check_response(&resp, &p.leaf, &p.ca, &c, None, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::OcspUnavailable);
    assert!(e.detail.contains("malformedRequest"), "{e}");

    let unauthorized = [0x30, 0x03, 0x0a, 0x01, 0x06];
    let e = check_response(&unauthorized, &p.leaf, &p.ca, &c, None, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::OcspUnavailable);
    assert!(e.detail.contains("unauthorized"), "{e}");
}

#[test]
fn response_for_another_certificate_is_invalid() {
    let r = responder("resp.pem", "ee.key", &[]);
    let p = pki();
    let resp = fetch(&r, &p.leaf, None);
    let c = cfg(&r.url);
    let e = check_response(&resp, &p.revoked, &p.ca, &c, None, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    assert!(e.detail.contains("no SingleResponse"), "{e}");
    // A SHA-1 CertID does not answer a SHA-256 question.
    let sha256 = OcspConfig {
        hash: CertIdHash::Sha256,
        ..c
    };
    let e = check_response(&resp, &p.leaf, &p.ca, &sha256, None, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
}

#[test]
fn damaged_responses_are_errors_without_panics() {
    let r = responder("resp.pem", "ee.key", &[]);
    let p = pki();
    let c = cfg(&r.url);
    let resp = fetch(&r, &p.leaf, None);
    assert!(check_response(&resp, &p.leaf, &p.ca, &c, None, now()).is_ok());

    for len in 0..resp.len() {
        let e = check_response(&resp[..len], &p.leaf, &p.ca, &c, None, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid, "truncated to {len}");
    }
    // Every single-byte change must be caught (or be harmless) without a panic.
    for i in 0..resp.len() {
        let mut bad = resp.clone();
        bad[i] ^= 0x01;
        let _ = check_response(&bad, &p.leaf, &p.ca, &c, None, now());
    }
    // A changed signed byte that still decodes: a seconds digit of producedAt, the first
    // GeneralizedTime in the response.
    let produced = resp.windows(2).position(|w| w == [0x18, 0x0f]).unwrap();
    let mut forged = resp.clone();
    forged[produced + 2 + 13] ^= 0x01;
    let e = check_response(&forged, &p.leaf, &p.ca, &c, None, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    assert!(e.detail.contains("signature"), "{e}");

    let e = check_response(b"garbage", &p.leaf, &p.ca, &c, None, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
    let mut trailing = resp.clone();
    trailing.push(0);
    assert!(check_response(&trailing, &p.leaf, &p.ca, &c, None, now()).is_err());

    let small = OcspConfig {
        max_response_bytes: resp.len() - 1,
        ..c
    };
    let e = check_response(&resp, &p.leaf, &p.ca, &small, None, now()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InputTooLarge);
}

#[test]
fn wrong_issuer_is_refused() {
    let p = pki();
    // The leaf is not issued by itself.
    let e = build_request(&p.leaf, &p.leaf, CertIdHash::Sha1, None).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid);
}

#[test]
fn ocsp_urls_come_from_aia() {
    let p = pki();
    assert_eq!(
        ocsp_urls(&p.leaf),
        vec![
            "http://ocsp.example.test/ocsp".to_string(),
            "http://127.0.0.1:9/second".into()
        ]
    );
    assert!(ocsp_urls(&p.ca).is_empty());
    let e = check(
        &p.ca,
        &p.ca,
        &OcspConfig::default(),
        &Recorder::default(),
        now(),
    );
    assert_eq!(e.unwrap_err().code, ErrorCode::RevocationUnknown);
}

/// Records what `check` posts and answers like an unreachable responder.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(String, Vec<u8>)>>);

impl OcspTransport for Recorder {
    fn post(&self, url: &str, req: &[u8], _: Duration, _: usize) -> Result<Vec<u8>> {
        self.0.lock().unwrap().push((url.to_string(), req.to_vec()));
        Err(PkiError::new(ErrorCode::OcspUnavailable, "recorder"))
    }
}

#[test]
fn check_posts_to_the_aia_url_with_a_fresh_nonce() {
    let p = pki();
    let rec = Recorder::default();
    for _ in 0..2 {
        let e = check(&p.leaf, &p.ca, &OcspConfig::default(), &rec, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
    }
    let c = OcspConfig {
        require_nonce: false,
        ..OcspConfig::default()
    };
    let _ = check(&p.leaf, &p.ca, &c, &rec, now());
    let sent = rec.0.lock().unwrap().clone();
    let nonces: Vec<_> = sent
        .iter()
        .map(|(url, der)| {
            assert_eq!(url, "http://ocsp.example.test/ocsp");
            let req = OcspRequest::from_der(der).unwrap();
            assert_eq!(req.tbs_request.request_list.len(), 1);
            req.tbs_request.request_extensions.map(|exts| {
                assert_eq!(exts.len(), 1);
                assert_eq!(exts[0].extn_id, oid::OCSP_NONCE);
                let n = OctetString::from_der(exts[0].extn_value.as_bytes()).unwrap();
                assert_eq!(n.as_bytes().len(), NONCE_LEN);
                n
            })
        })
        .collect();
    assert!(nonces[0].is_some() && nonces[1].is_some() && nonces[2].is_none());
    assert_ne!(nonces[0], nonces[1]);
}
