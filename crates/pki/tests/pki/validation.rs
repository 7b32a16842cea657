//! The validation matrix: every failure code, path and CRL variants, roles, caching, anchors.

use crate::helpers::*;
use pki::ErrorCode;
use pki::anchors::{Role, TrustStore};
use pki::facts::{OrgIdAttr, ParsedCert};
use pki::revocation::{CrlStore, StalePolicy};
use pki::validate::{CrlMode, ValidationOptions, Validator};
use testpki::{CaKind, CertSpec, KeyAlg, KeyUsage, NameAttr, SdaValue, StrKind};
use time::Duration;

fn expect(name: &str, role: Role, code: Option<ErrorCode>) {
    let result = validator().validate(&card(name), &[], role, NOW);
    match (code, result) {
        (None, Ok(v)) => {
            assert_eq!(v.role, role);
            assert_eq!(v.revocation, "crl");
            assert!(v.warnings.is_empty(), "{name}: {:?}", v.warnings);
        }
        (Some(code), Err(e)) => assert_eq!(e.code, code, "{name} as {role:?}: {e}"),
        (want, got) => panic!("{name} as {role:?}: wanted {want:?}, got {got:?}"),
    }
}

#[test]
fn spec_2_1_valid_cards_of_every_ca_pass() {
    for name in [
        "gca-agency",
        "gca-agency-renewed",
        "gca-agency-mismatch",
        "xca-school",
        "moeaca-company",
        "hca-hospital",
    ] {
        expect(name, Role::Organization, None);
    }
    for name in [
        "moica-admin",
        "moica-admin-renewed",
        "moica-admin2",
        "moica-operator-1",
        "moica-operator-2",
        "moica-reviewer",
        "moica-bmp",
    ] {
        expect(name, Role::Citizen, None);
    }
}

#[test]
fn spec_2_1_anchor_decides_the_org_identifier_attribute() {
    let v = validator()
        .validate(&card("moeaca-company"), &[], Role::Organization, NOW)
        .unwrap();
    assert_eq!(
        v.facts.org_identifier,
        pki().card("moeaca-company").org_identifier
    );
    assert_eq!(v.anchor, "MOEACA (test)");
    let v = validator()
        .validate(&card("gca-agency"), &[], Role::Organization, NOW)
        .unwrap();
    assert_eq!(
        v.facts.org_identifier,
        pki().card("gca-agency").org_identifier
    );
    assert_eq!(v.path.len(), 2);
}

#[test]
fn spec_2_1_expired_and_not_yet_valid() {
    expect(
        "gca-agency-expired",
        Role::Organization,
        Some(ErrorCode::CertExpired),
    );
    expect("moica-expired", Role::Citizen, Some(ErrorCode::CertExpired));
    expect(
        "gca-agency-notyet",
        Role::Organization,
        Some(ErrorCode::CertNotYetValid),
    );
    expect(
        "moica-notyet",
        Role::Citizen,
        Some(ErrorCode::CertNotYetValid),
    );
}

#[test]
fn spec_2_1_validity_boundaries() {
    let c = card("moica-admin");
    let v = validator();
    let after = c.facts.not_after + Duration::seconds(1);
    // The CRL is stale by then too; judge the certificate without it.
    let v2 = no_crl_validator();
    assert_eq!(
        v2.validate(&c, &[], Role::Citizen, after).unwrap_err().code,
        ErrorCode::CertExpired
    );
    assert!(
        v2.validate(&c, &[], Role::Citizen, c.facts.not_before)
            .is_ok()
    );
    assert_eq!(
        v2.validate(
            &c,
            &[],
            Role::Citizen,
            c.facts.not_before - Duration::seconds(1)
        )
        .unwrap_err()
        .code,
        ErrorCode::CertNotYetValid
    );
    assert!(v.validate(&c, &[], Role::Citizen, NOW).is_ok());
}

#[test]
fn spec_2_1_revoked_cards() {
    expect(
        "gca-agency-revoked",
        Role::Organization,
        Some(ErrorCode::CertRevoked),
    );
    expect("moica-revoked", Role::Citizen, Some(ErrorCode::CertRevoked));
}

#[test]
fn spec_2_1_key_usage_must_allow_signing() {
    expect(
        "gca-agency-wrongku",
        Role::Organization,
        Some(ErrorCode::KeyUsage),
    );
    expect("moica-wrongku", Role::Citizen, Some(ErrorCode::KeyUsage));
}

#[test]
fn spec_2_1_citizen_card_where_organization_expected_and_reverse() {
    expect(
        "moica-admin",
        Role::Organization,
        Some(ErrorCode::WrongRole),
    );
    expect("gca-agency", Role::Citizen, Some(ErrorCode::WrongRole));
    expect("moeaca-company", Role::Citizen, Some(ErrorCode::WrongRole));
}

#[test]
fn spec_2_1_ca_certificate_is_not_a_card() {
    let ca = parsed(pki().ca(CaKind::Gca));
    let e = validator()
        .validate(&ca, &[], Role::Organization, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::WrongRole, "{e}");
}

#[test]
fn crl_required_but_absent_is_unknown() {
    let v = validator_with(CrlStore::new(), ValidationOptions::default());
    let e = v
        .validate(&card("moica-admin"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationUnknown, "{e}");
}

#[test]
fn crl_of_another_ca_only_is_unknown() {
    let mut crls = CrlStore::new();
    crls.add(&pki().crl_for(
        CaKind::Gca,
        NOW - Duration::hours(1),
        NOW + Duration::days(1),
    ))
    .unwrap();
    let v = validator_with(crls, ValidationOptions::default());
    let e = v
        .validate(&card("moica-admin"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationUnknown, "{e}");
    assert!(
        v.validate(&card("gca-agency"), &[], Role::Organization, NOW)
            .is_ok()
    );
}

fn stale_crls() -> CrlStore {
    let mut crls = CrlStore::new();
    crls.add(&pki().crl_for(
        CaKind::Moica,
        NOW - Duration::days(8),
        NOW - Duration::days(1),
    ))
    .unwrap();
    crls
}

#[test]
fn stale_crl_is_rejected_by_default() {
    let v = validator_with(stale_crls(), ValidationOptions::default());
    let e = v
        .validate(&card("moica-admin"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationStale, "{e}");
}

#[test]
fn stale_crl_accepted_with_warning_by_configuration() {
    let v = validator_with(
        stale_crls(),
        ValidationOptions {
            stale_crl: StalePolicy::Warn,
            ..ValidationOptions::default()
        },
    );
    let ok = v
        .validate(&card("moica-admin"), &[], Role::Citizen, NOW)
        .unwrap();
    assert_eq!(ok.warnings.len(), 1, "{:?}", ok.warnings);
    assert!(ok.warnings[0].contains("stale"));
    // A stale CRL still revokes what it lists.
    let e = v
        .validate(&card("moica-revoked"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked);
}

/// A CA with the same name as an issuing CA but another key.
fn impostor(kind: CaKind) -> testpki::Issued {
    let real = pki().ca(kind);
    let mut spec = real.spec.clone();
    spec.serial = vec![0x66, 0x66];
    testpki::self_signed(&spec)
}

#[test]
fn crl_with_a_bad_signature_is_invalid() {
    let fake = impostor(CaKind::Moica);
    let mut crls = CrlStore::new();
    crls.add(&testpki::crl(
        &fake,
        &[],
        NOW - Duration::hours(1),
        NOW + Duration::days(1),
        1,
        None,
    ))
    .unwrap();
    let v = validator_with(crls, ValidationOptions::default());
    let e = v
        .validate(&card("moica-admin"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationInvalid, "{e}");
}

#[test]
fn card_signed_by_an_impostor_ca_is_refused() {
    let fake = impostor(CaKind::Moica);
    let spec = pki().card("moica-admin").issued.spec.clone();
    let forged = parsed(&testpki::issue(&spec, &fake));
    let e = validator()
        .validate(&forged, &[], Role::Citizen, NOW)
        .unwrap_err();
    assert!(
        matches!(
            e.code,
            ErrorCode::SignatureInvalid | ErrorCode::CertUntrusted
        ),
        "{e}"
    );
    // Even with the impostor CA offered as an intermediate.
    let e = validator()
        .validate(
            &forged,
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
}

#[test]
fn partitioned_crl_must_match_the_distribution_point() {
    let ca = pki().ca(CaKind::Moica);
    let dp = card("moica-revoked").facts.crl_urls[0].clone();
    let revoked = (
        pki().card("moica-revoked").issued.serial().to_vec(),
        NOW - Duration::days(2),
    );

    let mut other = CrlStore::new();
    other
        .add(&testpki::crl(
            ca,
            std::slice::from_ref(&revoked),
            NOW - Duration::hours(1),
            NOW + Duration::days(1),
            2,
            Some("http://crl.test.certreg.invalid/other-partition.crl"),
        ))
        .unwrap();
    let v = validator_with(other, ValidationOptions::default());
    assert_eq!(
        v.validate(&card("moica-admin"), &[], Role::Citizen, NOW)
            .unwrap_err()
            .code,
        ErrorCode::RevocationUnknown
    );

    let mut matching = CrlStore::new();
    matching
        .add(&testpki::crl(
            ca,
            &[revoked],
            NOW - Duration::hours(1),
            NOW + Duration::days(1),
            3,
            Some(&dp),
        ))
        .unwrap();
    let v = validator_with(matching, ValidationOptions::default());
    assert!(
        v.validate(&card("moica-admin"), &[], Role::Citizen, NOW)
            .is_ok()
    );
    assert_eq!(
        v.validate(&card("moica-revoked"), &[], Role::Citizen, NOW)
            .unwrap_err()
            .code,
        ErrorCode::CertRevoked
    );
}

#[test]
fn newer_crl_replaces_older_and_older_does_not_replace_newer() {
    let ca = pki().ca(CaKind::Moica);
    let serial = pki().card("moica-admin").issued.serial().to_vec();
    let mut crls = CrlStore::new();
    crls.add(&testpki::crl(
        ca,
        &[],
        NOW - Duration::hours(2),
        NOW + Duration::days(1),
        1,
        None,
    ))
    .unwrap();
    let g1 = crls.generation();
    crls.add(&testpki::crl(
        ca,
        &[(serial.clone(), NOW - Duration::hours(1))],
        NOW - Duration::hours(1),
        NOW + Duration::days(1),
        2,
        None,
    ))
    .unwrap();
    assert!(crls.generation() > g1);
    crls.add(&testpki::crl(
        ca,
        &[],
        NOW - Duration::hours(3),
        NOW + Duration::days(1),
        0,
        None,
    ))
    .unwrap();
    assert_eq!(crls.entries().len(), 1);
    assert_eq!(crls.entries()[0].revoked, 1);
    let v = validator_with(crls, ValidationOptions::default());
    assert_eq!(
        v.validate(&card("moica-admin"), &[], Role::Citizen, NOW)
            .unwrap_err()
            .code,
        ErrorCode::CertRevoked
    );
}

/// A MOICA CRL issued at `NOW + hours` with cRLNumber `number`, listing nothing.
fn moica_crl_numbered(hours: i64, number: &[u8]) -> Vec<u8> {
    let mut spec = testpki::CrlSpec::new(
        NOW + Duration::hours(hours),
        NOW + Duration::days(1) + Duration::hours(hours),
    );
    spec.number = number.to_vec();
    testpki::crl_from(pki().ca(CaKind::Moica), &spec)
}

#[test]
fn crl_number_is_read_as_an_unsigned_integer() {
    let n = |bytes: &[u8]| {
        CrlStore::new()
            .add(&moica_crl_numbered(0, bytes))
            .unwrap()
            .number
            .clone()
            .unwrap()
    };
    assert_eq!(n(&[0, 0, 0x2A]).as_bytes(), [0x2A]);
    assert_eq!(n(&[0]).as_bytes(), [0]);
    // A high first byte gets a sign byte in DER, which the number does not keep.
    assert_eq!(n(&[0xC8, 0x01]).as_bytes(), [0xC8, 0x01]);
    assert_eq!(n(&[0xC8, 0x01]).to_string(), "C801");
    // Numbers compare by value, past 64 bits and whatever their first bytes.
    assert!(n(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0]) > n(&[0xFF; 8]));
    assert!(n(&[0x02]) > n(&[0x01]));
    assert!(n(&[0xFF; 20]) > n(&[0x7F; 20]));
    // The CRLs of the standard test PKI carry their thisUpdate as number.
    let mut crls = CrlStore::new();
    let entry = crls
        .add(&pki().crl_for(CaKind::Gca, NOW, NOW + Duration::days(1)))
        .unwrap();
    let want = (NOW.unix_timestamp() as u64).to_be_bytes();
    let start = want.iter().position(|b| *b != 0).unwrap();
    assert_eq!(entry.number.as_ref().unwrap().as_bytes(), &want[start..]);
}

#[test]
fn crl_with_a_lower_number_never_replaces_the_held_one() {
    let mut crls = CrlStore::new();
    let held = crls
        .add(&moica_crl_numbered(0, &[0x10]))
        .unwrap()
        .sha256
        .clone();
    let g = crls.generation();
    // Issued later, but numbered lower: an old CRL re-dated, or a rollback.
    let kept = crls.add(&moica_crl_numbered(2, &[0x0F])).unwrap();
    assert_eq!(kept.sha256, held);
    assert_eq!(kept.this_update, NOW);
    assert_eq!(crls.generation(), g);
    assert_eq!(crls.entries().len(), 1);
    // Issued at the same time with a lower or the same number: kept too.
    crls.add(&moica_crl_numbered(0, &[0x0F])).unwrap();
    crls.add(&moica_crl_numbered(0, &[0x00, 0x10])).unwrap();
    assert_eq!(crls.entries()[0].sha256, held);
    assert_eq!(crls.generation(), g);
    // Issued earlier with a higher number: still older by thisUpdate.
    crls.add(&moica_crl_numbered(-1, &[0x11])).unwrap();
    assert_eq!(crls.entries()[0].sha256, held);
    assert_eq!(crls.generation(), g);
    // The same CRL again changes nothing.
    crls.add(&moica_crl_numbered(0, &[0x10])).unwrap();
    assert_eq!(crls.generation(), g);
}

#[test]
fn crl_with_a_higher_number_replaces_the_held_one() {
    let mut crls = CrlStore::new();
    crls.add(&moica_crl_numbered(0, &[0x10])).unwrap();
    let g = crls.generation();
    // Same thisUpdate, higher number.
    let new = crls.add(&moica_crl_numbered(0, &[0x11])).unwrap();
    assert_eq!(new.number.as_ref().unwrap().as_bytes(), [0x11]);
    assert!(crls.generation() > g);
    // Later and higher, a number past 64 bits.
    let big = [0x01, 0, 0, 0, 0, 0, 0, 0, 0];
    let new = crls.add(&moica_crl_numbered(1, &big)).unwrap();
    assert_eq!(new.number.as_ref().unwrap().as_bytes(), big);
    assert_eq!(new.this_update, NOW + Duration::hours(1));
    // Later with the same number is a newer issue of the same CRL.
    let g = crls.generation();
    let new = crls.add(&moica_crl_numbered(2, &big)).unwrap();
    assert_eq!(new.this_update, NOW + Duration::hours(2));
    assert!(crls.generation() > g);
    assert_eq!(crls.entries().len(), 1);
}

/// `der` with the content of its cRLNumber INTEGER replaced by `content` of the same length
/// (the signature no longer verifies; the store reads a CRL before anything checks it).
fn with_crl_number(der: &[u8], content: &[u8]) -> Vec<u8> {
    // extnID 2.5.29.20, then the OCTET STRING holding the INTEGER.
    let oid = [0x06, 0x03, 0x55, 0x1D, 0x14];
    let at = der.windows(oid.len()).position(|w| w == oid).unwrap() + oid.len();
    assert_eq!((der[at], der[at + 2]), (0x04, 0x02));
    assert_eq!(usize::from(der[at + 3]), content.len());
    let mut out = der.to_vec();
    out[at + 4..at + 4 + content.len()].copy_from_slice(content);
    out
}

#[test]
fn malformed_crl_numbers_are_refused() {
    // The largest number RFC 5280 allows: 20 octets, 21 with the sign byte.
    let good = moica_crl_numbered(0, &[0xFF; 20]);
    let entry = CrlStore::new().add(&good).unwrap().number.clone().unwrap();
    assert_eq!(entry.as_bytes(), [0xFF; 20]);
    let cases: [(&str, Vec<u8>); 4] = [
        ("negative", [[0x80].as_slice(), &[0; 20]].concat()),
        ("minus one", vec![0xFF; 21]),
        ("21 octets", [[0x01].as_slice(), &[0; 20]].concat()),
        ("not minimal", [[0x00, 0x01].as_slice(), &[0; 19]].concat()),
    ];
    for (what, content) in cases {
        let e = CrlStore::new()
            .add(&with_crl_number(&good, &content))
            .expect_err(what);
        assert_eq!(e.code, ErrorCode::RevocationInvalid, "{what}: {e}");
        assert!(e.detail.contains("cRLNumber"), "{what}: {e}");
    }
}

#[test]
fn garbage_crl_is_refused() {
    let mut crls = CrlStore::new();
    assert_eq!(
        crls.add(b"not a crl").unwrap_err().code,
        ErrorCode::RevocationInvalid
    );
    assert_eq!(
        crls.add(&[0x30, 0x03, 0x02, 0x01, 0x01]).unwrap_err().code,
        ErrorCode::RevocationInvalid
    );
    let good = pki().crl_for(CaKind::Gca, NOW, NOW + Duration::days(1));
    assert_eq!(
        crls.add(&good[..good.len() - 3]).unwrap_err().code,
        ErrorCode::RevocationInvalid
    );
    assert!(crls.is_empty());
}

#[test]
fn no_crl_mode_warns_that_revocation_was_not_checked() {
    let v = no_crl_validator()
        .validate(&card("moica-revoked"), &[], Role::Citizen, NOW)
        .unwrap();
    assert_eq!(v.revocation, "not_checked");
    assert!(v.warnings[0].contains("revocation not checked"));
}

fn citizen_spec(serial: u8) -> CertSpec {
    let mut spec = CertSpec::new(
        vec![
            NameAttr::printable("2.5.4.6", "TW"),
            NameAttr::utf8("2.5.4.3", "測試人員"),
            NameAttr::printable("2.5.4.5", "0000000000000099"),
        ],
        vec![0x5A, serial],
        NOW - Duration::days(10),
        NOW + Duration::days(300),
        KeyAlg::Rsa2048,
    );
    spec.key_usage = vec![KeyUsage::DigitalSignature, KeyUsage::NonRepudiation];
    spec.sda = vec![
        (
            "2.16.886.1.100.2.1".into(),
            SdaValue::Oid("2.16.886.1.100.3.1.1".into()),
        ),
        (
            "2.16.886.1.100.2.51".into(),
            SdaValue::Str("6789".into(), StrKind::Utf8),
        ),
    ];
    spec
}

fn issue_by(kind: CaKind, spec: &CertSpec) -> ParsedCert {
    parsed(&testpki::issue(spec, pki().ca(kind)))
}

#[test]
fn missing_attributes_are_named() {
    let v = no_crl_validator();
    let mut spec = citizen_spec(1);
    spec.sda.retain(|(o, _)| o != "2.16.886.1.100.2.51");
    let e = v
        .validate(&issue_by(CaKind::Moica, &spec), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::MissingAttribute);
    assert!(e.detail.contains("2.16.886.1.100.2.51"), "{e}");

    let mut spec = citizen_spec(2);
    spec.sda.clear();
    let e = v
        .validate(&issue_by(CaKind::Moica, &spec), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::MissingAttribute);
    assert!(e.detail.contains("2.16.886.1.100.2.1"), "{e}");

    let mut spec = citizen_spec(3);
    spec.sda = vec![(
        "2.16.886.1.100.2.1".into(),
        SdaValue::Oid("2.16.886.1.100.3.2.1.1".into()),
    )];
    let e = v
        .validate(&issue_by(CaKind::Gca, &spec), &[], Role::Organization, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::MissingAttribute);
    assert!(e.detail.contains("organization identifier"), "{e}");

    // A MOEACA card with only an OID identifier: the anchor asks for the 統一編號.
    let mut spec = citizen_spec(4);
    spec.sda = vec![
        (
            "2.16.886.1.100.2.1".into(),
            SdaValue::Oid("2.16.886.1.100.3.2.2.1.1".into()),
        ),
        (
            "2.16.886.1.100.2.102".into(),
            SdaValue::Oid("2.16.886.101.1.2".into()),
        ),
    ];
    let e = v
        .validate(
            &issue_by(CaKind::Moeaca, &spec),
            &[],
            Role::Organization,
            NOW,
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::MissingAttribute);
}

#[test]
fn unknown_subject_type_is_wrong_role() {
    let mut spec = citizen_spec(5);
    spec.sda[0].1 = SdaValue::Oid("2.16.886.1.100.3.9".into());
    let e = no_crl_validator()
        .validate(&issue_by(CaKind::Moica, &spec), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::WrongRole, "{e}");
}

#[test]
fn sda_values_of_any_string_type_are_read() {
    let mut spec = citizen_spec(6);
    spec.sda[1].1 = SdaValue::Str("6789".into(), StrKind::Printable);
    let ok = no_crl_validator()
        .validate(&issue_by(CaKind::Moica, &spec), &[], Role::Citizen, NOW)
        .unwrap();
    assert_eq!(ok.facts.id_last4.as_deref(), Some("6789"));
    spec.sda[1].1 = SdaValue::Str("6789".into(), StrKind::Bmp);
    spec.serial = vec![0x5A, 7];
    let ok = no_crl_validator()
        .validate(&issue_by(CaKind::Moica, &spec), &[], Role::Citizen, NOW)
        .unwrap();
    assert_eq!(ok.facts.id_last4.as_deref(), Some("6789"));
}

#[test]
fn unknown_critical_extension_is_refused() {
    let mut spec = citizen_spec(8);
    spec.extra_extensions
        .push(("1.3.6.1.4.1.99999.1".into(), true, vec![0x05, 0x00]));
    let e = no_crl_validator()
        .validate(&issue_by(CaKind::Moica, &spec), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertMalformed, "{e}");
    // The same extension, not critical, is fine.
    spec.extra_extensions[0].1 = false;
    spec.serial = vec![0x5A, 9];
    assert!(
        no_crl_validator()
            .validate(&issue_by(CaKind::Moica, &spec), &[], Role::Citizen, NOW)
            .is_ok()
    );
}

#[test]
fn card_with_any_eku_is_accepted() {
    let mut spec = citizen_spec(10);
    spec.ext_key_usage = vec!["1.3.6.1.5.5.7.3.4".into()];
    assert!(
        no_crl_validator()
            .validate(&issue_by(CaKind::Moica, &spec), &[], Role::Citizen, NOW)
            .is_ok()
    );
}

/// root → intermediate → card, with the root as the only anchor.
fn three_levels(intermediate_expired: bool) -> (TrustStore, Vec<u8>, ParsedCert) {
    let root = pki().root.clone();
    let mut ca_spec = pki().ca(CaKind::Moica).spec.clone();
    ca_spec.serial = vec![0x77, if intermediate_expired { 1 } else { 2 }];
    if intermediate_expired {
        ca_spec.not_after = NOW - Duration::days(1);
    }
    let ca = testpki::issue(&ca_spec, &root);
    let leaf = parsed(&testpki::issue(&citizen_spec(11), &ca));
    let mut store = TrustStore::new();
    store
        .add_anchor("root", Role::Citizen, OrgIdAttr::Oid, parsed(&root))
        .unwrap();
    (store, ca.cert_der.clone(), leaf)
}

#[test]
fn path_through_an_intermediate_sent_with_the_card() {
    let (store, ca, leaf) = three_levels(false);
    let v = Validator::new(
        store,
        CrlStore::new(),
        ValidationOptions {
            crl: CrlMode::Off,
            ..Default::default()
        },
    );
    let ok = v
        .validate(&leaf, std::slice::from_ref(&ca), Role::Citizen, NOW)
        .unwrap();
    assert_eq!(ok.path.len(), 3);
    // Without the intermediate there is no path.
    assert_eq!(
        v.validate(&leaf, &[], Role::Citizen, NOW).unwrap_err().code,
        ErrorCode::CertUntrusted
    );
}

#[test]
fn configured_intermediate_completes_the_path() {
    let (mut store, ca, leaf) = three_levels(false);
    store
        .add_intermediate(ParsedCert::from_der(ca).unwrap())
        .unwrap();
    let v = Validator::new(
        store,
        CrlStore::new(),
        ValidationOptions {
            crl: CrlMode::Off,
            ..Default::default()
        },
    );
    assert!(v.validate(&leaf, &[], Role::Citizen, NOW).is_ok());
}

#[test]
fn expired_intermediate_fails_the_path() {
    let (store, ca, leaf) = three_levels(true);
    let v = Validator::new(
        store,
        CrlStore::new(),
        ValidationOptions {
            crl: CrlMode::Off,
            ..Default::default()
        },
    );
    let e = v.validate(&leaf, &[ca], Role::Citizen, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::CertExpired, "{e}");
}

#[test]
fn no_anchor_of_the_role() {
    let mut store = TrustStore::new();
    store
        .add_anchor(
            "gca",
            Role::Organization,
            OrgIdAttr::Oid,
            parsed(pki().ca(CaKind::Gca)),
        )
        .unwrap();
    let v = Validator::new(
        store,
        CrlStore::new(),
        ValidationOptions {
            crl: CrlMode::Off,
            ..Default::default()
        },
    );
    let e = v
        .validate(&card("moica-admin"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertUntrusted, "{e}");
}

#[test]
fn foreign_hierarchy_is_untrusted() {
    let mut spec = pki().root.spec.clone();
    spec.subject = vec![
        NameAttr::printable("2.5.4.6", "TW"),
        NameAttr::utf8("2.5.4.3", "Somebody Else's Root"),
    ];
    let other_root = testpki::self_signed(&spec);
    let leaf = parsed(&testpki::issue(&citizen_spec(12), &other_root));
    let e = validator()
        .validate(&leaf, &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertUntrusted, "{e}");
}

#[test]
fn cache_serves_repeats_and_is_dropped_when_crls_change() {
    let v = validator().with_cache();
    let c = card("moica-operator-1");
    assert!(!v.validate(&c, &[], Role::Citizen, NOW).unwrap().cached);
    assert!(v.validate(&c, &[], Role::Citizen, NOW).unwrap().cached);
    // The role is part of the key.
    assert_eq!(
        v.validate(&c, &[], Role::Organization, NOW)
            .unwrap_err()
            .code,
        ErrorCode::WrongRole
    );
    // Past the CRL's nextUpdate the cache is not used.
    let e = v
        .validate(&c, &[], Role::Citizen, NOW + Duration::days(8))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationStale);

    let ca = pki().ca(CaKind::Moica);
    let serial = pki().card("moica-operator-1").issued.serial().to_vec();
    let mut crls = crls_of(pki());
    crls.add(&testpki::crl(
        ca,
        &[(serial, NOW)],
        NOW,
        NOW + Duration::days(7),
        NOW.unix_timestamp() as u64,
        None,
    ))
    .unwrap();
    v.replace_crls(crls);
    assert_eq!(
        v.validate(&c, &[], Role::Citizen, NOW + Duration::minutes(1))
            .unwrap_err()
            .code,
        ErrorCode::CertRevoked
    );
}

#[test]
fn p256_hierarchy_validates() {
    let p = pki_p256();
    let v = Validator::new(trust_of(p), crls_of(p), ValidationOptions::default());
    let c = parsed(&p.card("moica-admin").issued);
    assert_eq!(c.facts.public_key, "EC-P256");
    assert!(v.validate(&c, &[], Role::Citizen, NOW).is_ok());
    let revoked = parsed(&p.card("moica-revoked").issued);
    assert_eq!(
        v.validate(&revoked, &[], Role::Citizen, NOW)
            .unwrap_err()
            .code,
        ErrorCode::CertRevoked
    );
}

#[test]
fn sha1_signed_card_gets_its_own_code() {
    let dir = TempDir::new("sha1");
    let tc = pki().card("moica-admin");
    let ca = pki().ca(CaKind::Moica);
    let key = dir.write("card.key", tc.issued.key.pem());
    let ca_key = dir.write("ca.key", ca.key.pem());
    let ca_pem = dir.write("ca.pem", ca.cert_pem());
    let csr = dir.path("card.csr");
    let out = dir.path("card.pem");
    let (ok, _, err) = openssl(&[
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/C=TW/CN=SHA1 Test",
        "-out",
        csr.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca_pem.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-set_serial",
        "4242",
        "-days",
        "30",
        "-sha1",
        "-out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let c = ParsedCert::from_input(&std::fs::read(out).unwrap()).unwrap();
    let e = validator()
        .validate(&c, &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Sha1Refused, "{e}");
}

#[test]
fn anchors_directory_from_generate_loads() {
    let dir = TempDir::new("anchors");
    pki().write_dir(&dir.0).unwrap();
    let store = TrustStore::load_dir(&dir.path("anchors")).unwrap();
    assert_eq!(store.anchors_for(Role::Organization).count(), 4);
    assert_eq!(store.anchors_for(Role::Citizen).count(), 1);
    let moeaca = store
        .anchors()
        .iter()
        .find(|a| a.org_id_attr == OrgIdAttr::UniformNumber)
        .unwrap();
    assert_eq!(moeaca.role, Role::Organization);
    let v = Validator::new(store, crls_of(pki()), ValidationOptions::default());
    assert!(
        v.validate(&card("moeaca-company"), &[], Role::Organization, NOW)
            .is_ok()
    );
}

#[test]
fn bad_manifests_are_refused_with_anchor_config() {
    let dir = TempDir::new("manifest");
    let ca = pki().ca(CaKind::Gca);
    dir.write("gca.pem", ca.cert_pem());
    dir.write("card.pem", pki().card("gca-agency").issued.cert_pem());
    let fp = parsed(ca).facts.sha256;
    let cases = [
        ("syntax", "[[anchor]\nname=".to_string()),
        (
            "unknown key",
            "[[anchor]]\nname='g'\nfile='gca.pem'\nrole='organization'\ncolour='red'".to_string(),
        ),
        (
            "bad role",
            "[[anchor]]\nname='g'\nfile='gca.pem'\nrole='admin'".to_string(),
        ),
        (
            "missing file",
            "[[anchor]]\nname='g'\nfile='nope.pem'\nrole='organization'".to_string(),
        ),
        (
            "not a CA",
            "[[anchor]]\nname='g'\nfile='card.pem'\nrole='organization'".to_string(),
        ),
        (
            "pin mismatch",
            format!(
                "[[anchor]]\nname='g'\nfile='gca.pem'\nrole='organization'\nsha256='{}'",
                "00".repeat(32)
            ),
        ),
        (
            "org attr on citizen",
            "[[anchor]]\nname='g'\nfile='gca.pem'\nrole='citizen'\norg_id_attr='oid'".to_string(),
        ),
        ("empty", String::new()),
    ];
    for (name, text) in cases {
        let e = TrustStore::from_manifest(&text, &dir.0).expect_err(name);
        assert_eq!(e.code, ErrorCode::AnchorConfig, "{name}: {e}");
    }
    let pinned = format!(
        "[[anchor]]\nname='g'\nfile='gca.pem'\nrole='organization'\nsha256='{}'",
        fp.to_lowercase()
    );
    assert!(TrustStore::from_manifest(&pinned, &dir.0).is_ok());
}

/// A transport that records the URL and answers with an error, as an unreachable responder does.
struct Unreachable(std::sync::Mutex<Vec<String>>);

impl pki::ocsp::OcspTransport for Unreachable {
    fn post(
        &self,
        url: &str,
        _req: &[u8],
        _t: std::time::Duration,
        _max: usize,
    ) -> Result<Vec<u8>, pki::PkiError> {
        self.0.lock().unwrap().push(url.to_string());
        Err(pki::PkiError::new(
            ErrorCode::OcspUnavailable,
            "connection refused",
        ))
    }
}

#[test]
fn ocsp_is_asked_after_the_path_and_its_failure_is_reported() {
    use pki::ocsp::{OcspChecker, OcspConfig};
    use std::sync::Arc;
    let transport = Arc::new(Unreachable(Default::default()));
    let config = OcspConfig {
        url_override: Some("http://127.0.0.1:9/ocsp".into()),
        ..Default::default()
    };
    let v = validator()
        .with_cache()
        .with_online(Arc::new(OcspChecker::new(config, transport.clone())));
    let e = v
        .validate(&card("moica-admin"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::OcspUnavailable, "{e}");
    assert_eq!(
        transport.0.lock().unwrap().as_slice(),
        ["http://127.0.0.1:9/ocsp"]
    );
    // A certificate refused by the path checks never reaches the responder.
    let e = v
        .validate(&card("moica-expired"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertExpired);
    assert_eq!(transport.0.lock().unwrap().len(), 1);

    // Without a configured URL, a card without an AIA OCSP URL cannot be checked online.
    let v = validator().with_online(Arc::new(OcspChecker::new(
        OcspConfig::default(),
        transport.clone(),
    )));
    let e = v
        .validate(&card("moica-admin"), &[], Role::Citizen, NOW)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationUnknown, "{e}");
}

#[test]
fn is_revoked_finds_a_serial_by_issuer() {
    let ca = pki().ca(CaKind::Moica);
    let revoked = card("moica-revoked");
    let at = NOW - Duration::days(2);
    let mut crls = CrlStore::new();
    crls.add(&testpki::crl(
        ca,
        &[(pki().card("moica-revoked").issued.serial().to_vec(), at)],
        NOW - Duration::hours(1),
        NOW + Duration::days(1),
        4,
        None,
    ))
    .unwrap();
    let found = crls.is_revoked(Some(&revoked.facts.issuer), &revoked.facts.serial);
    assert_eq!(found.map(|t| t.unix_timestamp()), Some(at.unix_timestamp()));
    assert!(crls.is_revoked(None, &revoked.facts.serial).is_some());
    assert!(
        crls.is_revoked(Some("CN=other"), &revoked.facts.serial)
            .is_none()
    );
    let good = card("moica-admin");
    assert!(
        crls.is_revoked(Some(&good.facts.issuer), &good.facts.serial)
            .is_none()
    );
}

#[test]
fn revoked_at_counts_only_crls_signed_by_a_trusted_ca() {
    let revoked = card("moica-revoked");
    let serial = pki().card("moica-revoked").issued.serial().to_vec();
    let at = NOW - Duration::days(2);
    let signed_by = |ca: &testpki::Issued| {
        let mut crls = CrlStore::new();
        crls.add(&testpki::crl(
            ca,
            &[(serial.clone(), at)],
            NOW - Duration::hours(1),
            NOW + Duration::days(1),
            5,
            None,
        ))
        .unwrap();
        validator_with(crls, ValidationOptions::default())
    };
    let real = signed_by(pki().ca(CaKind::Moica));
    assert_eq!(
        real.revoked_at(Some(&revoked.facts.issuer), &revoked.facts.serial)
            .map(|t| t.unix_timestamp()),
        Some(at.unix_timestamp())
    );
    assert!(real.revoked_at(None, &revoked.facts.serial).is_some());
    // Same issuer name, another key: listed, but it revokes nothing.
    let forged = signed_by(&impostor(CaKind::Moica));
    assert!(
        forged
            .crls()
            .is_revoked(None, &revoked.facts.serial)
            .is_some()
    );
    assert!(forged.revoked_at(None, &revoked.facts.serial).is_none());
}
