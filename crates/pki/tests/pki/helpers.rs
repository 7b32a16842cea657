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

pub use testkit::TempDir;

pub use testkit::openssl;

/// `../shared/data/real-ca/NAME` from the repository root, where the tests read it.
pub fn real_ca(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/real-ca")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
