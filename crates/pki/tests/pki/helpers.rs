//! Shared test fixtures: one standard test PKI per test binary, trust stores and validators.

#![allow(dead_code)]

use pki::anchors::TrustStore;
use pki::facts::ParsedCert;
use pki::revocation::CrlStore;
use pki::testpki::{Issued, KeyAlg, TestPki, TestPkiOptions};
use pki::validate::{CrlMode, ValidationOptions, Validator};
use std::path::PathBuf;
use std::sync::OnceLock;
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

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("certreg-pki-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the OpenSSL CLI; returns (success, stdout, stderr).
pub fn openssl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `../shared/data/real-ca/NAME` from the repository root, where the tests read it.
pub fn real_ca(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/real-ca")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
