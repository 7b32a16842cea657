//! Attacks on what the validator keeps between validations: CRL signatures checked once per
//! key, the compact index of revoked serials, and parsed certificates kept by their bytes.

use crate::helpers::*;
use pki::anchors::Role;
use pki::certcache::CertCache;
use pki::challenge::Challenge;
use pki::cms::{CmsSignOptions, build_signed_data};
use pki::error::ErrorCode;
use pki::proof::verify_proof;
use pki::revocation::CrlStore;
use pki::sig::sign_pkcs8;
use pki::validate::{ValidationOptions, Validator};
use std::sync::Arc;
use testpki::CaKind;
use time::Duration;

/// A CA with the same name as an issuing CA but another key.
fn impostor(kind: CaKind) -> testpki::Issued {
    let real = pki().ca(kind);
    let mut spec = real.spec.clone();
    spec.serial = vec![0x66, 0x67];
    testpki::self_signed(&spec)
}

fn serial_of(name: &str) -> Vec<u8> {
    pki().card(name).issued.serial().to_vec()
}

/// A MOICA CRL signed by `signer`, listing `revoked`, partitioned to `idp` when given.
fn moica_crl(
    signer: &testpki::Issued,
    revoked: &[&str],
    number: u64,
    idp: Option<&str>,
) -> Vec<u8> {
    let listed: Vec<(Vec<u8>, time::OffsetDateTime)> = revoked
        .iter()
        .map(|n| (serial_of(n), NOW - Duration::days(3)))
        .collect();
    testpki::crl(
        signer,
        &listed,
        NOW - Duration::hours(1),
        NOW + Duration::days(1),
        number,
        idp,
    )
}

fn store(crls: &[&[u8]]) -> CrlStore {
    let mut store = CrlStore::new();
    for crl in crls {
        store.add(crl).unwrap();
    }
    store
}

fn validators(crls: impl Fn() -> CrlStore) -> [Validator; 2] {
    [
        validator_with(crls(), ValidationOptions::default()),
        validator_with(crls(), ValidationOptions::default()).with_cache(),
    ]
}

fn code_of(v: &Validator, name: &str) -> Option<ErrorCode> {
    v.validate(&card(name), &[], Role::Citizen, NOW)
        .err()
        .map(|e| e.code)
}

#[test]
fn a_crl_signed_by_another_key_revokes_nothing() {
    let fake = impostor(CaKind::Moica);
    // Alone, the impostor's CRL listing a good card is refused as a CRL, never as a revocation.
    let forged = moica_crl(&fake, &["moica-admin"], 9, None);
    for v in validators(|| store(&[&forged])) {
        for _ in 0..2 {
            assert_eq!(
                code_of(&v, "moica-admin"),
                Some(ErrorCode::RevocationInvalid)
            );
        }
        let admin = card("moica-admin");
        assert_eq!(
            v.revoked_at(Some(&admin.facts.issuer), &admin.facts.serial),
            None
        );
    }
    // Beside the real CRL (a partition covering the same cards), it changes nothing.
    let dp = card("moica-admin").facts.crl_urls[0].clone();
    let real = moica_crl(pki().ca(CaKind::Moica), &["moica-revoked"], 10, Some(&dp));
    for v in validators(|| store(&[&forged, &real])) {
        for _ in 0..2 {
            assert_eq!(code_of(&v, "moica-admin"), None);
            assert_eq!(code_of(&v, "moica-revoked"), Some(ErrorCode::CertRevoked));
        }
    }
}

#[test]
fn a_crl_signed_by_another_key_cannot_hide_a_revocation() {
    let fake = impostor(CaKind::Moica);
    let dp = card("moica-admin").facts.crl_urls[0].clone();
    // The impostor says nothing is revoked; the real partition lists the revoked card.
    let forged = moica_crl(&fake, &[], 11, None);
    let real = moica_crl(pki().ca(CaKind::Moica), &["moica-revoked"], 12, Some(&dp));
    for order in [[&forged, &real], [&real, &forged]] {
        for v in validators(|| store(&[order[0], order[1]])) {
            for _ in 0..2 {
                assert_eq!(code_of(&v, "moica-revoked"), Some(ErrorCode::CertRevoked));
                assert_eq!(code_of(&v, "moica-admin"), None);
            }
        }
    }
    // Alone, it makes no card look good.
    for v in validators(|| store(&[&forged])) {
        assert_eq!(
            code_of(&v, "moica-revoked"),
            Some(ErrorCode::RevocationInvalid)
        );
    }
}

#[test]
fn a_crl_signature_is_checked_per_key_and_remembered() {
    let real_ca = pki().ca(CaKind::Moica);
    let fake = impostor(CaKind::Moica);
    let real_key = parsed(real_ca).spki_der().unwrap();
    let fake_key = parsed(&fake).spki_der().unwrap();
    let crl = moica_crl(real_ca, &["moica-revoked"], 13, None);

    // Added before any issuer key is known: held, not verified.
    let crls = store(&[&crl]);
    let entry = &crls.entries()[0];
    assert!(!entry.signature_verified());
    assert!(!entry.signed_by(&fake_key));
    assert!(!entry.signature_verified());
    assert!(entry.signed_by(&real_key));
    assert!(entry.signature_verified());
    // Once verified, the raw CRL is let go and no other key is accepted.
    assert!(!entry.signed_by(&fake_key));
    assert!(entry.signed_by(&real_key));

    // A validator checks the CRLs of the CAs it trusts when it receives them.
    let v = validator_with(store(&[&crl]), ValidationOptions::default());
    assert!(v.crls().entries()[0].signature_verified());
    let v2 = validator_with(CrlStore::new(), ValidationOptions::default());
    v2.replace_crls(store(&[&crl]));
    assert!(v2.crls().entries()[0].signature_verified());
    // The impostor's CRL verifies with no trusted key and stays unverified.
    let v3 = validator_with(
        store(&[&moica_crl(&fake, &[], 14, None)]),
        ValidationOptions::default(),
    );
    assert!(!v3.crls().entries()[0].signature_verified());
}

#[test]
fn a_refresh_puts_a_new_revocation_in_force_at_once() {
    for v in validators(|| store(&[&moica_crl(pki().ca(CaKind::Moica), &[], 20, None)])) {
        assert_eq!(code_of(&v, "moica-admin"), None);
        assert_eq!(code_of(&v, "moica-admin"), None);
        let mut newer = CrlStore::new();
        newer
            .add(&testpki::crl(
                pki().ca(CaKind::Moica),
                &[(serial_of("moica-admin"), NOW - Duration::minutes(5))],
                NOW - Duration::minutes(1),
                NOW + Duration::days(1),
                21,
                None,
            ))
            .unwrap();
        v.replace_crls(newer);
        assert_eq!(code_of(&v, "moica-admin"), Some(ErrorCode::CertRevoked));
        let admin = card("moica-admin");
        let at = v
            .revoked_at(Some(&admin.facts.issuer), &admin.facts.serial)
            .expect("revoked");
        assert_eq!(at, NOW - Duration::minutes(5));
        // And a refresh that lifts it (a later CRL without the serial) lifts it at once too.
        v.replace_crls(store(&[&moica_crl(pki().ca(CaKind::Moica), &[], 22, None)]));
        assert_eq!(code_of(&v, "moica-admin"), None);
    }
}

#[test]
fn the_revoked_index_is_compact_and_exact() {
    const N: usize = 20_000;
    let ca = pki().ca(CaKind::Moica);
    let mut revoked: Vec<(Vec<u8>, time::OffsetDateTime)> = (0..N as u64)
        .map(|i| {
            // Serials of 9 to 12 bytes, positive, first byte nonzero.
            let width = 9 + (i % 4) as usize;
            let mut s = vec![0x11; width];
            s[width - 8..].copy_from_slice(&(i * 7919 + 1).to_be_bytes());
            s[0] = 0x11;
            (s, NOW - Duration::seconds(i as i64))
        })
        .collect();
    revoked.push((serial_of("moica-revoked"), NOW - Duration::days(2)));
    let der = testpki::crl(
        ca,
        &revoked,
        NOW - Duration::hours(1),
        NOW + Duration::days(1),
        30,
        None,
    );
    let v = validator_with(store(&[&der]), ValidationOptions::default());
    let crls = v.crls();
    assert_eq!(crls.entries()[0].revoked, N + 1);
    let held = crls.held_bytes();
    assert!(
        held < (N + 1) * 32,
        "{held} bytes held for {} entries",
        N + 1
    );
    let issuer = card("moica-admin").facts.issuer.clone();
    for (serial, at) in revoked.iter().step_by(997) {
        let serial = pki::serial::CertSerial::from_der_bytes(serial).unwrap();
        assert_eq!(crls.is_revoked(Some(&issuer), &serial), Some(*at));
    }
    assert_eq!(code_of(&v, "moica-revoked"), Some(ErrorCode::CertRevoked));
    assert_eq!(code_of(&v, "moica-admin"), None);
    let unlisted =
        pki::serial::CertSerial::from_der_bytes(&[0x11, 0x22, 0x33, 0x44, 0x55]).unwrap();
    assert_eq!(crls.is_revoked(Some(&issuer), &unlisted), None);
}

#[test]
fn a_malformed_revoked_entry_refuses_the_crl() {
    let serial = serial_of("moica-revoked");
    let good = moica_crl(pki().ca(CaKind::Moica), &["moica-revoked"], 40, None);
    // The entry: SEQUENCE { INTEGER serial, UTCTime ... }; retag its time as an OCTET STRING.
    let mut needle = vec![0x02, serial.len() as u8];
    needle.extend_from_slice(&serial);
    let at = good
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the entry");
    let time_tag = at + needle.len();
    assert_eq!(good[time_tag], 0x17);
    let mut bad = good.clone();
    bad[time_tag] = 0x04;
    let e = CrlStore::new().add(&bad).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid, "{e}");
    // And a truncated list.
    let e = CrlStore::new().add(&good[..at + 3]).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid, "{e}");
}

/// The card's certificate with one byte of its signature changed: other bytes, same TBS.
fn with_signature_byte_changed(der: &[u8], from_end: usize) -> Vec<u8> {
    let mut other = der.to_vec();
    let i = other.len() - 1 - from_end;
    other[i] ^= 0x01;
    other
}

#[test]
fn the_cert_cache_keeps_facts_only_for_identical_bytes() {
    let good = pki().card("moica-admin").issued.cert_der.clone();
    let other = with_signature_byte_changed(&good, 0);
    for first_good in [true, false] {
        let v = validator();
        let order = if first_good {
            [&good, &other]
        } else {
            [&other, &good]
        };
        let parsed: Vec<Arc<_>> = order.iter().map(|d| v.parse_cert(d).unwrap()).collect();
        assert!(!Arc::ptr_eq(&parsed[0], &parsed[1]));
        assert_eq!(v.cert_cache().len(), 2);
        for (der, p) in order.iter().zip(&parsed) {
            assert_eq!(p.der, **der);
            assert_eq!(p.facts.sha256, pki::facts::sha256_hex(der));
        }
        // The same bytes give the same parsed certificate back.
        assert!(Arc::ptr_eq(
            &v.parse_cert(&good).unwrap(),
            &v.parse_cert(&good).unwrap()
        ));
        for _ in 0..2 {
            let ok = v.validate(&v.parse_cert(&good).unwrap(), &[], Role::Citizen, NOW);
            assert!(ok.is_ok(), "{ok:?}");
            let e = v
                .validate(&v.parse_cert(&other).unwrap(), &[], Role::Citizen, NOW)
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
        }
    }
}

#[test]
fn a_proof_carrying_another_encoding_of_a_cached_cert_is_refused() {
    let issued = &pki().card("moica-admin").issued;
    let challenge = Challenge::new(
        "first_registration",
        "https://certreg.example.gov.tw",
        "flow-cache",
        "admin_card",
        NOW,
    )
    .unwrap();
    let proof_with = |cert: &[u8]| {
        build_signed_data(
            challenge.tbs().as_bytes(),
            cert,
            &CmsSignOptions::default(),
            |m| sign_pkcs8(&issued.key.pkcs8_der, m),
        )
        .unwrap()
    };
    let v = validator().with_cache();
    let at = NOW + Duration::minutes(1);
    let good = proof_with(&issued.cert_der);
    let ok = verify_proof(&v, &challenge, &good, None, Role::Citizen, at);
    assert!(ok.is_ok(), "{ok:?}");
    // Same signer (issuer and serial), same key, other certificate bytes.
    let other = proof_with(&with_signature_byte_changed(&issued.cert_der, 1));
    let e = verify_proof(&v, &challenge, &other, None, Role::Citizen, at).unwrap_err();
    assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
    // Beside the proof, too.
    let raw = sign_pkcs8(&issued.key.pkcs8_der, challenge.tbs().as_bytes()).unwrap();
    let other_cert = with_signature_byte_changed(&issued.cert_der, 2);
    let e = verify_proof(&v, &challenge, &raw, Some(&other_cert), Role::Citizen, at).unwrap_err();
    assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
    let ok = verify_proof(
        &v,
        &challenge,
        &raw,
        Some(&issued.cert_der),
        Role::Citizen,
        at,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn a_flood_of_certificates_keeps_the_cache_bounded() {
    let cache = CertCache::new(8);
    // Junk is refused each time and never kept.
    for i in 0u32..2_000 {
        let mut junk = vec![0x30, 0x06];
        junk.extend_from_slice(&i.to_be_bytes());
        junk.extend_from_slice(&[0x05, 0x00]);
        assert!(cache.parse(&junk).is_err());
    }
    assert_eq!(cache.len(), 0);
    // Distinct certificates that parse fill it up to its capacity, never past it.
    let good = &pki().card("moica-admin").issued.cert_der;
    for i in 0..100 {
        cache
            .parse(&with_signature_byte_changed(good, i))
            .expect("parses");
        assert!(cache.len() <= cache.capacity(), "{}", cache.len());
    }
    assert!(!cache.is_empty());
    // The validator's own cache, under the same flood.
    let v = validator();
    for i in 0..3_000 {
        let _ = v.parse_cert(&with_signature_byte_changed(good, i % 200));
        let _ = v.parse_cert(&[0x30, 0x03, 0x02, 0x01, (i % 256) as u8]);
    }
    assert!(v.cert_cache().len() <= v.cert_cache().capacity());
    assert!(v.cert_cache().len() <= 200);
}

#[test]
fn the_signature_memo_remembers_only_what_verified() {
    let good = pki().card("moica-admin").issued.cert_der.clone();
    let v = validator();
    assert_eq!(v.remembered_signatures(), 0);
    for _ in 0..3 {
        assert!(
            v.validate(&v.parse_cert(&good).unwrap(), &[], Role::Citizen, NOW)
                .is_ok()
        );
    }
    assert_eq!(v.remembered_signatures(), 1);
    // Another signature over the same certificate body verifies with nothing and is refused
    // every time, however often the genuine one was checked.
    let other = with_signature_byte_changed(&good, 3);
    for _ in 0..3 {
        let e = v
            .validate(&v.parse_cert(&other).unwrap(), &[], Role::Citizen, NOW)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
    }
    assert_eq!(v.remembered_signatures(), 1);
    // The same certificate under an impostor CA of the same name and another key.
    let fake = impostor(CaKind::Moica);
    let forged = testpki::issue(&pki().card("moica-admin").issued.spec, &fake);
    let e = v
        .validate(
            &v.parse_cert(&forged.cert_der).unwrap(),
            std::slice::from_ref(&fake.cert_der),
            Role::Citizen,
            NOW,
        )
        .unwrap_err();
    assert!(
        matches!(
            e.code,
            ErrorCode::SignatureInvalid | ErrorCode::CertUntrusted
        ),
        "{e}"
    );
    // Without a memo, nothing is remembered and the answers are the same.
    let v = validator().with_signature_memo(0);
    assert!(
        v.validate(&v.parse_cert(&good).unwrap(), &[], Role::Citizen, NOW)
            .is_ok()
    );
    assert_eq!(v.remembered_signatures(), 0);
}
