//! Interoperability with the OpenSSL CLI: CMS it makes verifies here, CMS we make verifies there.

use crate::helpers::*;
use crate::proofs::{challenge, cms_proof};
use pki::ErrorCode;
use pki::anchors::Role;
use pki::cms::CmsSignOptions;
use pki::proof::{ProofFormat, verify_proof};
use testpki::CaKind;

fn openssl_sign(card: &str, content: &[u8], extra: &[&str]) -> Vec<u8> {
    openssl_cms_sign(pki().card(card), content, extra)
}

#[test]
fn cms_made_by_openssl_attached() {
    let c = challenge("org_card");
    let proof = openssl_sign(
        "gca-agency",
        c.tbs().as_bytes(),
        &["-nodetach", "-md", "sha256"],
    );
    let ok = verify_proof(&validator(), &c, &proof, None, Role::Organization, NOW).unwrap();
    assert_eq!(ok.format, ProofFormat::CmsAttached);
}

/// `-stream` makes OpenSSL write BER as streaming signers do: indefinite lengths everywhere and
/// the content as a chunked OCTET STRING.
#[test]
fn cms_streamed_by_openssl_in_ber() {
    let c = challenge("org_card");
    let attached = openssl_sign(
        "gca-agency",
        c.tbs().as_bytes(),
        &["-stream", "-nodetach", "-md", "sha256"],
    );
    assert_eq!(attached[..2], [0x30, 0x80], "BER, indefinite length");
    let ok = verify_proof(&validator(), &c, &attached, None, Role::Organization, NOW).unwrap();
    assert_eq!(ok.format, ProofFormat::CmsAttached);
    let parts = pki::cms::parse(&attached).unwrap();
    assert_eq!(parts.content.as_deref(), Some(c.tbs().as_bytes()));

    // Still bound to its challenge: BER changes the encoding, not what is accepted.
    let other = challenge("org_card");
    let err = verify_proof(
        &validator(),
        &other,
        &attached,
        None,
        Role::Organization,
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ChallengeMismatch, "{err}");
}

#[test]
fn cms_made_by_openssl_detached_without_smime_capabilities() {
    let c = challenge("admin_card");
    let proof = openssl_sign(
        "moica-admin",
        c.tbs().as_bytes(),
        &["-md", "sha256", "-nosmimecap"],
    );
    let ok = verify_proof(&validator(), &c, &proof, None, Role::Citizen, NOW).unwrap();
    assert_eq!(ok.format, ProofFormat::CmsDetached);
}

#[test]
fn cms_made_by_openssl_without_signed_attributes() {
    let c = challenge("admin_card");
    let proof = openssl_sign(
        "moica-admin",
        c.tbs().as_bytes(),
        &["-nodetach", "-md", "sha256", "-noattr"],
    );
    assert!(verify_proof(&validator(), &c, &proof, None, Role::Citizen, NOW).is_ok());
}

#[test]
fn cms_with_sha1_is_refused_with_its_own_code() {
    let c = challenge("admin_card");
    let proof = openssl_sign(
        "moica-admin",
        c.tbs().as_bytes(),
        &["-nodetach", "-md", "sha1", "-noattr"],
    );
    let e = verify_proof(&validator(), &c, &proof, None, Role::Citizen, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::Sha1Refused, "{e}");
}

#[test]
fn our_cms_verifies_with_openssl() {
    let dir = TempDir::new("ours");
    let c = challenge("org_card");
    let opts = CmsSignOptions {
        signing_time: Some(NOW),
        nonce: Some(vec![1; 16]),
        card_number: Some("GC00000000000001".into()),
        ..Default::default()
    };
    let proof = cms_proof(pki(), "gca-agency", c.tbs().as_bytes(), &opts);
    let sig = dir.write("sig.der", &proof);
    // OpenSSL wants the intermediate in -CAfile beside the root.
    let bundle = format!(
        "{}{}",
        pki().root.cert_pem(),
        pki().ca(CaKind::Gca).cert_pem()
    );
    let ca = dir.write("ca.pem", bundle);
    let out = dir.path("out.txt");
    let (ok, _, err) = openssl(&[
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        sig.to_str().unwrap(),
        "-CAfile",
        ca.to_str().unwrap(),
        "-purpose",
        "any",
        "-attime",
        &NOW.unix_timestamp().to_string(),
        "-out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "openssl cms -verify: {err}");
    assert_eq!(std::fs::read(out).unwrap(), c.tbs().as_bytes());

    let detached = cms_proof(
        pki(),
        "gca-agency",
        c.tbs().as_bytes(),
        &CmsSignOptions {
            detached: true,
            ..opts
        },
    );
    let sig = dir.write("det.der", &detached);
    let content = dir.write("tbs.txt", c.tbs());
    let (ok, _, err) = openssl(&[
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        sig.to_str().unwrap(),
        "-content",
        content.to_str().unwrap(),
        "-CAfile",
        ca.to_str().unwrap(),
        "-purpose",
        "any",
        "-attime",
        &NOW.unix_timestamp().to_string(),
        "-out",
        dir.path("o2").to_str().unwrap(),
    ]);
    assert!(ok, "openssl cms -verify detached: {err}");
    let (_, printed, _) = openssl(&[
        "cms",
        "-cmsout",
        "-print",
        "-inform",
        "DER",
        "-in",
        sig.to_str().unwrap(),
    ]);
    assert!(
        printed.contains("1.2.840.113549.1.9.25.3") || printed.contains("randomNonce"),
        "{printed}"
    );
    assert!(printed.contains("2.16.886.1.100.2.204"), "{printed}");
}
