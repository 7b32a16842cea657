//! Revoked intermediate CAs: where the CRL of an intermediate's issuer (the root's ARL) is
//! loaded, it refuses the cards under a CA it lists; checked against `openssl verify
//! -crl_check_all`.

use crate::helpers::*;
use pki::ErrorCode;
use pki::anchors::{Role, TrustStore};
use pki::facts::{OrgIdAttr, ParsedCert};
use pki::revocation::{CrlStore, StalePolicy};
use pki::validate::{Validated, ValidationOptions, Validator};
use std::sync::OnceLock;
use testpki::{CertSpec, CrlScope, CrlSpec, Issued, KeyAlg, KeyUsage, NameAttr, SdaValue, StrKind};
use time::Duration;

/// Where the intermediate says its issuer's ARL is published.
const ARL_URL: &str = "http://crl.test.certreg.invalid/arl-test.crl";

/// root → intermediate → card. The root is the standard test PKI's; the intermediate's serial
/// has its high bit set, so DER gives it a sign byte that CRL lookups must keep.
struct Hierarchy {
    inter: Issued,
    card: Issued,
}

fn root() -> &'static Issued {
    &pki().root
}

fn hierarchy() -> &'static Hierarchy {
    static H: OnceLock<Hierarchy> = OnceLock::new();
    H.get_or_init(|| {
        let mut spec = CertSpec::new(
            vec![
                NameAttr::printable("2.5.4.6", "TW"),
                NameAttr::utf8("2.5.4.10", "行政院"),
                NameAttr::utf8("2.5.4.11", "ARL 測試用中繼憑證管理中心"),
            ],
            vec![0xC7, 0x01],
            NOW - Duration::days(365),
            NOW + Duration::days(3650),
            KeyAlg::P256,
        );
        spec.key_usage = vec![KeyUsage::KeyCertSign, KeyUsage::CrlSign];
        spec.is_ca = Some(0);
        spec.crl_url = Some(ARL_URL.into());
        let inter = testpki::issue(&spec, root());

        let mut spec = CertSpec::new(
            vec![
                NameAttr::printable("2.5.4.6", "TW"),
                NameAttr::utf8("2.5.4.3", "中繼測試人員"),
                NameAttr::printable("2.5.4.5", "0000000000000077"),
            ],
            vec![0x5B, 0x01],
            NOW - Duration::days(10),
            NOW + Duration::days(300),
            KeyAlg::P256,
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
        let card = testpki::issue(&spec, &inter);
        Hierarchy { inter, card }
    })
}

/// The root's name with another key: what a forged ARL would be signed with.
fn impostor_root() -> &'static Issued {
    static I: OnceLock<Issued> = OnceLock::new();
    I.get_or_init(|| {
        let mut spec = root().spec.clone();
        spec.serial = vec![0x66, 0x01];
        spec.key_alg = KeyAlg::P256;
        testpki::self_signed(&spec)
    })
}

fn card() -> ParsedCert {
    parsed(&hierarchy().card)
}

/// The intermediate's own (current, empty) CRL: the card needs one under the default options.
fn inter_crl() -> Vec<u8> {
    testpki::crl(
        &hierarchy().inter,
        &[],
        NOW - Duration::hours(1),
        NOW + Duration::days(7),
        1,
        None,
    )
}

/// An ARL of `signer` (named as the root), current unless `stale`, listing the intermediate
/// when `revoking`.
fn arl(signer: &Issued, revoking: bool, stale: bool) -> Vec<u8> {
    let mut spec = if stale {
        CrlSpec::new(NOW - Duration::days(8), NOW - Duration::days(1))
    } else {
        CrlSpec::new(NOW - Duration::hours(1), NOW + Duration::days(7))
    };
    if revoking {
        spec.revoked = vec![(hierarchy().inter.serial().to_vec(), NOW - Duration::days(2))];
    }
    testpki::crl_from(signer, &spec)
}

fn store_of(crls: &[&[u8]]) -> CrlStore {
    let mut store = CrlStore::new();
    for crl in crls {
        store.add(crl).unwrap();
    }
    store
}

/// The root as the only anchor; the intermediate configured unless it is sent with the card.
fn validator_over(crls: &[&[u8]], options: ValidationOptions, configured: bool) -> Validator {
    let mut trust = TrustStore::new();
    trust
        .add_anchor("root", Role::Citizen, OrgIdAttr::Oid, parsed(root()))
        .unwrap();
    if configured {
        trust.add_intermediate(parsed(&hierarchy().inter)).unwrap();
    }
    Validator::new(trust, store_of(crls), options)
}

fn validate(crls: &[&[u8]], options: ValidationOptions) -> Result<Validated, pki::PkiError> {
    validator_over(crls, options, true).validate(&card(), &[], Role::Citizen, NOW)
}

fn warn() -> ValidationOptions {
    ValidationOptions {
        stale_crl: StalePolicy::Warn,
        ..ValidationOptions::default()
    }
}

#[test]
fn an_arl_listing_the_intermediate_refuses_its_cards() {
    let revoking = arl(root(), true, false);
    let e = validate(&[&inter_crl(), &revoking], ValidationOptions::default()).unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked, "{e}");
    assert!(e.detail.contains("ARL 測試用中繼憑證管理中心"), "{e}");
    assert!(e.detail.contains("C701"), "{e}");
    // The same with the intermediate sent with the card instead of configured.
    let e = validator_over(
        &[&inter_crl(), &revoking],
        ValidationOptions::default(),
        false,
    )
    .validate(
        &card(),
        std::slice::from_ref(&hierarchy().inter.cert_der),
        Role::Citizen,
        NOW,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked, "{e}");
    // And when every level's CRL is demanded, webpki itself finds it.
    let whole = ValidationOptions {
        crl_whole_chain: true,
        ..ValidationOptions::default()
    };
    let e = validate(&[&inter_crl(), &revoking], whole).unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked, "{e}");
}

#[test]
fn an_arl_not_listing_the_intermediate_accepts() {
    let ok = validate(
        &[&inter_crl(), &arl(root(), false, false)],
        ValidationOptions::default(),
    )
    .unwrap();
    assert_eq!(ok.revocation, "crl");
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
    assert_eq!(ok.path.len(), 3);
}

#[test]
fn without_an_arl_the_intermediate_is_accepted() {
    let ok = validate(&[&inter_crl()], ValidationOptions::default()).unwrap();
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
}

#[test]
fn an_arl_signed_by_another_key_is_ignored() {
    let forged = arl(impostor_root(), true, false);
    let ok = validate(&[&inter_crl(), &forged], ValidationOptions::default()).unwrap();
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
    // Stale, it is not counted as present either.
    let forged_stale = arl(impostor_root(), false, true);
    let ok = validate(&[&inter_crl(), &forged_stale], ValidationOptions::default()).unwrap();
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
}

#[test]
fn a_stale_arl_follows_the_stale_policy() {
    let stale = arl(root(), false, true);
    let e = validate(&[&inter_crl(), &stale], ValidationOptions::default()).unwrap_err();
    assert_eq!(e.code, ErrorCode::RevocationStale, "{e}");
    assert!(e.detail.contains("ARL 測試用中繼憑證管理中心"), "{e}");

    let ok = validate(&[&inter_crl(), &stale], warn()).unwrap();
    assert_eq!(ok.warnings.len(), 1, "{:?}", ok.warnings);
    assert!(ok.warnings[0].contains("stale"), "{:?}", ok.warnings);

    // A stale ARL still revokes what it lists, whatever the policy.
    let stale_revoking = arl(root(), true, true);
    for options in [ValidationOptions::default(), warn()] {
        let e = validate(&[&inter_crl(), &stale_revoking], options).unwrap_err();
        assert_eq!(e.code, ErrorCode::CertRevoked, "{e}");
    }
}

#[test]
fn an_arl_loaded_after_a_cached_validation_takes_effect_at_once() {
    let v = validator_over(&[&inter_crl()], ValidationOptions::default(), true).with_cache();
    let c = card();
    assert!(!v.validate(&c, &[], Role::Citizen, NOW).unwrap().cached);
    assert!(v.validate(&c, &[], Role::Citizen, NOW).unwrap().cached);
    v.replace_crls(store_of(&[&inter_crl(), &arl(root(), true, false)]));
    let e = v.validate(&c, &[], Role::Citizen, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::CertRevoked, "{e}");
}

/// An ARL partitioned by an issuingDistributionPoint at `url` with `scope`, listing the
/// intermediate.
fn partitioned_arl(url: &str, scope: Option<CrlScope>) -> Vec<u8> {
    let mut spec = CrlSpec::new(NOW - Duration::hours(1), NOW + Duration::days(7));
    spec.revoked = vec![(hierarchy().inter.serial().to_vec(), NOW - Duration::days(2))];
    spec.idp_url = Some(url.into());
    spec.scope = scope;
    testpki::crl_from(root(), &spec)
}

#[test]
fn a_partition_covers_the_intermediate_only_when_its_scope_and_point_do() {
    let refused = |crl: Vec<u8>| {
        validate(&[&inter_crl(), &crl], ValidationOptions::default())
            .map(|_| ())
            .map_err(|e| e.code)
    };
    assert_eq!(
        refused(partitioned_arl(ARL_URL, Some(CrlScope::CaCertsOnly))),
        Err(ErrorCode::CertRevoked)
    );
    assert_eq!(
        refused(partitioned_arl(ARL_URL, None)),
        Err(ErrorCode::CertRevoked)
    );
    // onlyContainsUserCerts: it does not speak for CA certificates.
    assert_eq!(
        refused(partitioned_arl(ARL_URL, Some(CrlScope::UserCertsOnly))),
        Ok(())
    );
    // Another distribution point than the one the intermediate names.
    assert_eq!(
        refused(partitioned_arl(
            "http://crl.test.certreg.invalid/other.crl",
            Some(CrlScope::CaCertsOnly)
        )),
        Ok(())
    );
}

/// `openssl verify -crl_check_all` of the card at [`NOW`], root trusted, intermediate untrusted,
/// with the intermediate's CRL and `arl`: whether OpenSSL accepts, and its output.
fn openssl_verify(arl: &[u8]) -> (bool, String) {
    let h = hierarchy();
    let dir = TempDir::new("arl");
    let root_pem = dir.write("root.pem", root().cert_pem());
    let inter_pem = dir.write("inter.pem", h.inter.cert_pem());
    let card_pem = dir.write("card.pem", h.card.cert_pem());
    let arl_pem = dir.write("arl.pem", pem_of("X509 CRL", arl));
    let inter_crl_pem = dir.write("inter_crl.pem", pem_of("X509 CRL", &inter_crl()));
    let at = NOW.unix_timestamp().to_string();
    let (ok, out, err) = openssl(&[
        "verify",
        "-crl_check_all",
        "-attime",
        &at,
        "-CAfile",
        root_pem.to_str().unwrap(),
        "-untrusted",
        inter_pem.to_str().unwrap(),
        "-CRLfile",
        arl_pem.to_str().unwrap(),
        "-CRLfile",
        inter_crl_pem.to_str().unwrap(),
        card_pem.to_str().unwrap(),
    ]);
    (ok, format!("{out}{err}"))
}

fn pem_of(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap()
}

#[test]
fn certreg_never_accepts_a_path_openssl_refuses_for_a_revoked_intermediate() {
    let cases = [
        ("revoking ARL", arl(root(), true, false)),
        ("current ARL", arl(root(), false, false)),
        ("stale revoking ARL", arl(root(), true, true)),
        ("stale ARL", arl(root(), false, true)),
        (
            "CA-only revoking ARL",
            partitioned_arl(ARL_URL, Some(CrlScope::CaCertsOnly)),
        ),
    ];
    for (what, crl) in &cases {
        let (openssl_ok, output) = openssl_verify(crl);
        let ours = validate(&[&inter_crl(), crl], ValidationOptions::default());
        if !openssl_ok {
            assert!(
                ours.is_err(),
                "{what}: OpenSSL refuses ({output}), certreg accepts"
            );
        }
        match *what {
            "revoking ARL" | "CA-only revoking ARL" => {
                assert!(
                    !openssl_ok && output.contains("certificate revoked"),
                    "{what}: {output}"
                );
                assert_eq!(ours.unwrap_err().code, ErrorCode::CertRevoked, "{what}");
            }
            "current ARL" => {
                assert!(openssl_ok, "{what}: {output}");
                assert!(ours.is_ok(), "{what}: {ours:?}");
            }
            _ => assert!(!openssl_ok, "{what}: {output}"),
        }
    }
}
