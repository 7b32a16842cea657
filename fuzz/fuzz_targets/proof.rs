//! Fuzz target: proof input — `cms::parse`, `proof::decode_signature`, and `verify_proof`
//! (without and with a certificate beside) against a validator over a small P-256 test PKI
//! generated once. Nothing here may panic; a forged proof must never verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pki::anchors::{Role, TrustStore};
use pki::challenge::Challenge;
use pki::facts::{OrgIdAttr, ParsedCert};
use pki::revocation::CrlStore;
use pki::testpki::{CaKind, KeyAlg, TestPki, TestPkiOptions};
use pki::validate::{ValidationOptions, Validator};
use std::sync::OnceLock;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2026-06-01 09:00 UTC);

struct Fixture {
    validator: Validator,
    challenge: Challenge,
}

/// P-256 keys: generating the hierarchy takes milliseconds, not the seconds RSA would.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let pki = TestPki::generate(TestPkiOptions {
            key_alg: KeyAlg::P256,
            ..TestPkiOptions::new(NOW)
        })
        .expect("test PKI");
        let mut trust = TrustStore::new();
        let mut crls = CrlStore::new();
        for kind in CaKind::ISSUING {
            let attr = if kind == CaKind::Moeaca {
                OrgIdAttr::UniformNumber
            } else {
                OrgIdAttr::Oid
            };
            let ca = ParsedCert::from_der(pki.ca(kind).cert_der.clone()).expect("CA");
            trust
                .add_anchor(&format!("{kind:?}"), kind.role(), attr, ca)
                .expect("anchor");
            crls.add(&pki.crl_for(kind, NOW - Duration::hours(1), NOW + Duration::days(7)))
                .expect("CRL");
        }
        let challenge = Challenge::with_nonce(
            "first_registration",
            "https://certreg.example.gov.tw",
            "flow-fuzz",
            "org_card",
            vec![0x5A; 32],
            NOW,
        )
        .expect("challenge");
        Fixture {
            validator: Validator::new(trust, crls, ValidationOptions::default()),
            challenge,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = pki::cms::parse(data);
    let _ = pki::proof::decode_signature(data);

    let f = fixture();
    let at = NOW + Duration::minutes(1);
    for role in [Role::Organization, Role::Citizen] {
        let r = pki::proof::verify_proof(&f.validator, &f.challenge, data, None, role, at);
        assert!(r.is_err(), "a proof without the card's key verified");
    }
    // First byte: where to split the input into signature and certificate beside it.
    if let Some((&cut, rest)) = data.split_first() {
        let (sig, cert) = rest.split_at(cut as usize * rest.len() / 256);
        let r = pki::proof::verify_proof(
            &f.validator,
            &f.challenge,
            sig,
            Some(cert),
            Role::Organization,
            at,
        );
        assert!(r.is_err(), "a proof without the card's key verified");
    }
});
