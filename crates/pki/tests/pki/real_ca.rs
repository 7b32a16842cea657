//! The real GPKI CA certificates (`shared/data/real-ca`): facts, fingerprints, signatures, anchors.

use crate::helpers::*;
use pki::ErrorCode;
use pki::anchors::{Role, TrustStore};
use pki::facts::ParsedCert;
use pki::sig::{self, SigAlg};

fn cert(name: &str) -> ParsedCert {
    ParsedCert::from_input(&real_ca(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Verifies `child`'s signature with `parent`'s key.
fn signed_by(child: &ParsedCert, parent: &ParsedCert) -> Result<(), pki::PkiError> {
    use der::Encode;
    let tbs = child.cert.tbs_certificate().to_der().unwrap();
    let alg = SigAlg::from_oid(child.cert.signature_algorithm().oid)?;
    sig::verify(
        &parent.spki_der()?,
        alg,
        &tbs,
        child.cert.signature().raw_bytes(),
    )
}

#[test]
fn real_fingerprints_match_the_published_ones() {
    for (file, fp) in [
        (
            "GRCA-G3.cer",
            "57DF6F20E04C588E85F35BE8832F5D4E78958336AE3B18FB7C9BAE0DFEAD4044",
        ),
        (
            "MOICA-G3.cer",
            "ED793FD0D50A2A398049D598982CF01E75F873B532066CAEC238F800A06CA9DA",
        ),
        (
            "MOEACA-G2_2013.der",
            "0CF08B01E554EB7631D4916E9E8C5398AF994242A26CA388638622A0E59FF379",
        ),
        (
            "GRCA-G1_selfsigned.der",
            "7600295EEFE85B9E1FD624DB76062AAAAE59818A54D2774CD4C0B2C01131E1B3",
        ),
        (
            "GRCA-G2key_linkcert_signed_by_G1.der",
            "D87AAD615FE7C2385032244D08CDFE06EB005675AA1892D6E5B82780F19FB87F",
        ),
    ] {
        assert_eq!(cert(file).facts.sha256, fp, "{file}");
    }
}

#[test]
fn real_names_decode() {
    let grca = cert("GRCA-G3.cer").facts;
    assert_eq!(
        grca.subject,
        "C=TW, O=行政院, CN=Government Root Certification Authority - G3"
    );
    assert!(grca.is_ca);
    let moica = cert("MOICA-G3.cer").facts;
    assert_eq!(moica.subject, "C=TW, O=行政院, OU=內政部憑證管理中心");
    assert_eq!(moica.issuer, grca.subject);
    assert!(moica.is_ca);
    assert!(moica.authority_key_id.is_some());
    assert_eq!(moica.authority_key_id, grca.subject_key_id);
    assert_eq!(
        cert("MOEACA-G2_2013.der").facts.subject,
        "C=TW, O=行政院, OU=工商憑證管理中心"
    );
    assert!(
        cert("GRCA-G1_selfsigned.der")
            .facts
            .subject
            .contains("Government Root Certification Authority")
    );
}

#[test]
fn real_moica_g3_is_signed_by_grca_g3() {
    let grca = cert("GRCA-G3.cer");
    let moica = cert("MOICA-G3.cer");
    signed_by(&moica, &grca).unwrap();
    signed_by(&grca, &grca).unwrap();
    // And not by another key.
    let e = signed_by(&moica, &cert("MOEACA-G2_2013.der")).unwrap_err();
    assert!(
        matches!(
            e.code,
            ErrorCode::SignatureInvalid | ErrorCode::UnsupportedAlgorithm
        ),
        "{e}"
    );
}

#[test]
fn real_sha1_link_certificate_is_refused_with_its_own_code() {
    let link = cert("GRCA-G2key_linkcert_signed_by_G1.der");
    let g1 = cert("GRCA-G1_selfsigned.der");
    let e = signed_by(&link, &g1).unwrap_err();
    assert_eq!(e.code, ErrorCode::Sha1Refused, "{e}");
}

#[test]
fn real_anchors_load_from_a_manifest_and_issue_for_their_role() {
    let base =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real-ca");
    let manifest = r#"
[[anchor]]
name = "MOICA G3"
file = "MOICA-G3.cer"
role = "citizen"
sha256 = "ED793FD0D50A2A398049D598982CF01E75F873B532066CAEC238F800A06CA9DA"

[[anchor]]
name = "MOEACA G2"
file = "MOEACA-G2_2013.der"
role = "organization"
org_id_attr = "uniform_number"

[[intermediate]]
file = "GRCA-G3.cer"
"#;
    let store = TrustStore::from_manifest(manifest, &base).unwrap();
    assert_eq!(store.anchors_for(Role::Citizen).count(), 1);
    assert_eq!(store.anchors_for(Role::Organization).count(), 1);
    // A card that claims MOICA G3 as issuer but was signed by another key is refused.
    let mut spec = pki().card("moica-admin").issued.spec.clone();
    spec.serial = vec![0x31, 0x41];
    let mut issuer_spec = pki().ca(testpki::CaKind::Moica).spec.clone();
    issuer_spec.subject = vec![
        testpki::NameAttr::printable("2.5.4.6", "TW"),
        testpki::NameAttr::utf8("2.5.4.10", "行政院"),
        testpki::NameAttr::utf8("2.5.4.11", "內政部憑證管理中心"),
    ];
    let fake_moica = testpki::self_signed(&issuer_spec);
    let forged = parsed(&testpki::issue(&spec, &fake_moica));
    assert_eq!(forged.facts.issuer, "C=TW, O=行政院, OU=內政部憑證管理中心");
    let v = pki::validate::Validator::new(
        store,
        pki::revocation::CrlStore::new(),
        pki::validate::ValidationOptions {
            crl: pki::validate::CrlMode::Off,
            ..Default::default()
        },
    );
    let e = v.validate(&forged, &[], Role::Citizen, NOW).unwrap_err();
    assert!(
        matches!(
            e.code,
            ErrorCode::SignatureInvalid | ErrorCode::CertUntrusted
        ),
        "{e}"
    );
}
