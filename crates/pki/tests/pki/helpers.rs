//! Shared test fixtures: one standard test PKI per test binary, trust stores and validators.

use pki::anchors::TrustStore;
use pki::facts::ParsedCert;
use pki::revocation::CrlStore;
use pki::validate::{CrlMode, ValidationOptions, Validator};
use std::path::PathBuf;
use std::sync::OnceLock;
use testpki::{Issued, KeyAlg, TestPki, TestPkiOptions};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// The reference time of the standard test PKI: every test validates at or around it.
pub const NOW: OffsetDateTime = datetime!(2026-06-01 09:00 UTC);

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate(TestPkiOptions::new(NOW)).expect("test PKI"))
}

pub fn pki_p256() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        TestPki::generate(TestPkiOptions {
            key_alg: KeyAlg::P256,
            ..TestPkiOptions::new(NOW)
        })
        .expect("P-256 test PKI")
    })
}

pub fn parsed(issued: &Issued) -> ParsedCert {
    ParsedCert::from_der(issued.cert_der.clone()).expect("parses")
}

pub fn card(name: &str) -> ParsedCert {
    parsed(&pki().card(name).issued)
}

/// The five issuing CAs as anchors, as `certreg pki generate` writes them.
pub fn trust_of(pki: &TestPki) -> TrustStore {
    pki.trust_store().unwrap()
}

/// Current CRLs of every CA (this update = NOW − 1 h, next update = NOW + 7 days).
pub fn crls_of(pki: &TestPki) -> CrlStore {
    pki.crl_store(NOW - Duration::hours(1), NOW + Duration::days(7))
        .unwrap()
}

/// A validator with CRLs required, over the standard test PKI.
pub fn validator() -> Validator {
    Validator::new(
        trust_of(pki()),
        crls_of(pki()),
        ValidationOptions::default(),
    )
}

pub fn validator_with(crls: CrlStore, options: ValidationOptions) -> Validator {
    Validator::new(trust_of(pki()), crls, options)
}

pub fn no_crl_validator() -> Validator {
    Validator::new(
        trust_of(pki()),
        CrlStore::new(),
        ValidationOptions {
            crl: CrlMode::Off,
            ..ValidationOptions::default()
        },
    )
}

pub use testkit::TempDir;

pub use testkit::openssl;

/// `../shared/data/real-ca/NAME` from the repository root, where the tests read it.
pub fn real_ca(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/real-ca")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A validator with CRLs required over any test PKI (e.g. [`pki_p256`]).
pub fn validator_of(p: &TestPki) -> Validator {
    Validator::new(trust_of(p), crls_of(p), ValidationOptions::default())
}

/// `openssl cms -sign -binary -md sha256 -outform DER` over `content` with the key and
/// certificate of `card`, plus `extra` arguments (`-nodetach`, `-keyid`, `-noattr`, `-stream`;
/// an `-md` there replaces SHA-256).
pub fn openssl_cms_sign(card: &testpki::Card, content: &[u8], extra: &[&str]) -> Vec<u8> {
    let dir = TempDir::new("osign");
    let input = dir.write("tbs.txt", content);
    let cert = dir.write("card.pem", card.issued.cert_pem());
    let key = dir.write("card.key", card.issued.key.pem());
    let out = dir.path("sig.der");
    let mut args = vec!["cms", "-sign", "-binary"];
    if !extra.contains(&"-md") {
        args.extend_from_slice(&["-md", "sha256"]);
    }
    args.extend_from_slice(&[
        "-in",
        input.to_str().unwrap(),
        "-signer",
        cert.to_str().unwrap(),
        "-inkey",
        key.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        out.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    let (ok, _, err) = openssl(&args);
    assert!(ok, "openssl cms -sign {extra:?}: {err}");
    std::fs::read(out).unwrap()
}

/// Root and issuing CAs of `p` as one PEM bundle: what `openssl cms -verify -CAfile` needs.
pub fn ca_bundle_pem(p: &TestPki) -> String {
    let mut pem = p.root.cert_pem();
    for (_, ca) in &p.cas {
        pem.push_str(&ca.cert_pem());
    }
    pem
}

/// `openssl cms -verify` of a DER proof at [`NOW`] against the CAs of `p`; `content` for a
/// detached proof. Returns the content OpenSSL verified, or its error output.
pub fn openssl_cms_verify(
    p: &TestPki,
    proof: &[u8],
    content: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let dir = TempDir::new("overify");
    let sig = dir.write("sig.der", proof);
    let ca = dir.write("ca.pem", ca_bundle_pem(p));
    let out = dir.path("out.bin");
    let at = NOW.unix_timestamp().to_string();
    let mut args = vec![
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        sig.to_str().unwrap(),
        "-CAfile",
        ca.to_str().unwrap(),
        "-purpose",
        "any",
        "-attime",
        &at,
        "-out",
        out.to_str().unwrap(),
    ];
    let content_path;
    if let Some(c) = content {
        content_path = dir.write("content.bin", c);
        args.extend(["-content", content_path.to_str().unwrap()]);
    }
    let (ok, _, err) = openssl(&args);
    if ok {
        Ok(std::fs::read(out).unwrap_or_default())
    } else {
        Err(err)
    }
}
