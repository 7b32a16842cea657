//! Card proofs over challenges: CMS attached/detached, PKCS#1, ECDSA, and every refusal.

use crate::helpers::*;
use base64::Engine as _;
use pki::ErrorCode;
use pki::anchors::Role;
use pki::challenge::Challenge;
use pki::cms::CmsSignOptions;
use pki::proof::{ProofFormat, verify_proof};
use pki::sig::sign_pkcs8;
use testpki::TestPki;
use time::Duration;

const ORIGIN: &str = "https://certreg.example.gov.tw";

pub fn challenge(step: &str) -> Challenge {
    Challenge::new("first_registration", ORIGIN, "flow-1", step, NOW).unwrap()
}

/// What our agent sends: CMS over the TBS with the card's key.
pub fn cms_proof(p: &TestPki, card: &str, content: &[u8], opts: &CmsSignOptions) -> Vec<u8> {
    p.card(card).sign_cms(content, opts).unwrap()
}

fn hipki_opts() -> CmsSignOptions {
    CmsSignOptions {
        signing_time: Some(NOW),
        nonce: Some(vec![0xAB; 16]),
        card_number: Some("TP03000000000001".into()),
        ..Default::default()
    }
}

#[test]
fn spec_2_2_cms_attached_with_hipki_attributes() {
    let c = challenge("org_card");
    let proof = cms_proof(pki(), "gca-agency", c.tbs().as_bytes(), &hipki_opts());
    let ok = verify_proof(&validator(), &c, &proof, None, Role::Organization, NOW).unwrap();
    assert_eq!(ok.format, ProofFormat::CmsAttached);
    assert_eq!(ok.attrs.nonce.as_deref(), Some("AB".repeat(16).as_str()));
    assert_eq!(ok.attrs.card_number.as_deref(), Some("TP03000000000001"));
    assert_eq!(ok.attrs.signing_time, Some(NOW));
    assert_eq!(
        ok.certificate.facts.org_identifier,
        pki().card("gca-agency").org_identifier
    );
}

#[test]
fn spec_2_2_cms_detached_and_base64() {
    let c = challenge("admin_card");
    let opts = CmsSignOptions {
        detached: true,
        ..Default::default()
    };
    let proof = cms_proof(pki(), "moica-admin", c.tbs().as_bytes(), &opts);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&proof);
    let ok = verify_proof(&validator(), &c, b64.as_bytes(), None, Role::Citizen, NOW).unwrap();
    assert_eq!(ok.format, ProofFormat::CmsDetached);
    assert_eq!(
        ok.certificate.facts.id_last4.as_deref(),
        Some(&pki().card("moica-admin").national_id.as_deref().unwrap()[6..])
    );
}

#[test]
fn cms_without_signed_attributes_sha256() {
    let c = challenge("admin_card");
    let opts = CmsSignOptions {
        without_signed_attrs: true,
        ..Default::default()
    };
    let proof = cms_proof(pki(), "moica-admin", c.tbs().as_bytes(), &opts);
    assert!(verify_proof(&validator(), &c, &proof, None, Role::Citizen, NOW).is_ok());
}

#[test]
fn spec_2_2_replayed_proof_for_another_challenge() {
    let first = challenge("org_card");
    let proof = cms_proof(pki(), "gca-agency", first.tbs().as_bytes(), &hipki_opts());
    let second = challenge("org_card");
    let e = verify_proof(&validator(), &second, &proof, None, Role::Organization, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::ChallengeMismatch);
    assert!(e.detail.contains("nonce"), "{e}");
}

#[test]
fn spec_2_2_proof_for_another_step_flow_or_origin() {
    let base = challenge("org_card");
    let variants = [
        Challenge::with_nonce(
            "first_registration",
            ORIGIN,
            "flow-1",
            "admin_card",
            base.nonce.clone(),
            base.issued_at,
        )
        .unwrap(),
        Challenge::with_nonce(
            "first_registration",
            ORIGIN,
            "flow-2",
            "org_card",
            base.nonce.clone(),
            base.issued_at,
        )
        .unwrap(),
        Challenge::with_nonce(
            "first_registration",
            "https://evil.example",
            "flow-1",
            "org_card",
            base.nonce.clone(),
            base.issued_at,
        )
        .unwrap(),
        Challenge::with_nonce(
            "operator_login",
            ORIGIN,
            "flow-1",
            "org_card",
            base.nonce.clone(),
            base.issued_at,
        )
        .unwrap(),
    ];
    for signed_for in variants {
        let proof = cms_proof(
            pki(),
            "gca-agency",
            signed_for.tbs().as_bytes(),
            &hipki_opts(),
        );
        let e =
            verify_proof(&validator(), &base, &proof, None, Role::Organization, NOW).unwrap_err();
        assert_eq!(e.code, ErrorCode::ChallengeMismatch, "{e}");
    }
}

#[test]
fn spec_2_2_expired_challenge() {
    let c = challenge("org_card");
    let proof = cms_proof(pki(), "gca-agency", c.tbs().as_bytes(), &hipki_opts());
    let e = verify_proof(
        &validator(),
        &c,
        &proof,
        None,
        Role::Organization,
        NOW + Duration::minutes(5),
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::ChallengeExpired);
    assert!(
        verify_proof(
            &validator(),
            &c,
            &proof,
            None,
            Role::Organization,
            NOW + Duration::seconds(299)
        )
        .is_ok()
    );
}

#[test]
fn tampered_signature_and_digest() {
    let c = challenge("org_card");
    let mut proof = cms_proof(pki(), "gca-agency", c.tbs().as_bytes(), &hipki_opts());
    // The RSA signature is the last 256 bytes of our encoding.
    let n = proof.len();
    proof[n - 10] ^= 0x40;
    let e = verify_proof(&validator(), &c, &proof, None, Role::Organization, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");

    // Signed attributes over other content, presented as a detached proof of the challenge.
    let opts = CmsSignOptions {
        detached: true,
        ..hipki_opts()
    };
    let other = cms_proof(pki(), "gca-agency", b"something else", &opts);
    let e = verify_proof(&validator(), &c, &other, None, Role::Organization, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
    assert!(e.detail.contains("messageDigest"), "{e}");
}

#[test]
fn spec_2_2_pkcs1_with_certificate_beside() {
    let c = challenge("admin_card");
    let tc = pki().card("moica-admin");
    let sig = sign_pkcs8(&tc.issued.key.pkcs8_der, c.tbs().as_bytes()).unwrap();
    let cert = tc.issued.cert_pem();
    let ok = verify_proof(
        &validator(),
        &c,
        &sig,
        Some(cert.as_bytes()),
        Role::Citizen,
        NOW,
    )
    .unwrap();
    assert_eq!(ok.format, ProofFormat::Pkcs1);

    let e = verify_proof(&validator(), &c, &sig, None, Role::Citizen, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::ProofMalformed, "{e}");
    let other = pki().card("moica-admin2").issued.cert_pem();
    let e = verify_proof(
        &validator(),
        &c,
        &sig,
        Some(other.as_bytes()),
        Role::Citizen,
        NOW,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
    let other_tbs = sign_pkcs8(
        &tc.issued.key.pkcs8_der,
        challenge("admin_card").tbs().as_bytes(),
    )
    .unwrap();
    let e = verify_proof(
        &validator(),
        &c,
        &other_tbs,
        Some(cert.as_bytes()),
        Role::Citizen,
        NOW,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
}

#[test]
fn spec_2_2_ecdsa_p256_der_and_raw() {
    let p = pki_p256();
    let v = pki::validate::Validator::new(trust_of(p), crls_of(p), Default::default());
    let c = challenge("admin_card");
    let tc = p.card("moica-admin");
    let der_sig = sign_pkcs8(&tc.issued.key.pkcs8_der, c.tbs().as_bytes()).unwrap();
    let cert = tc.issued.cert_der.clone();
    let ok = verify_proof(&v, &c, &der_sig, Some(&cert), Role::Citizen, NOW).unwrap();
    assert_eq!(ok.format, ProofFormat::Ecdsa);
    let raw = der_to_raw(&der_sig);
    assert_eq!(raw.len(), 64);
    assert!(verify_proof(&v, &c, &raw, Some(&cert), Role::Citizen, NOW).is_ok());
    // And CMS with an EC key.
    let proof = cms_proof(p, "moica-admin", c.tbs().as_bytes(), &hipki_opts());
    assert!(verify_proof(&v, &c, &proof, None, Role::Citizen, NOW).is_ok());
    let mut bad = raw.clone();
    bad[5] ^= 1;
    assert_eq!(
        verify_proof(&v, &c, &bad, Some(&cert), Role::Citizen, NOW)
            .unwrap_err()
            .code,
        ErrorCode::SignatureInvalid
    );
}

/// DER Ecdsa-Sig-Value → raw r‖s (32 bytes each).
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 2;
    for _ in 0..2 {
        let len = der[i + 1] as usize;
        let int = &der[i + 2..i + 2 + len];
        let int = if int.len() > 32 {
            &int[int.len() - 32..]
        } else {
            int
        };
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

#[test]
fn proof_from_the_wrong_kind_of_card() {
    let c = challenge("org_card");
    let proof = cms_proof(pki(), "moica-admin", c.tbs().as_bytes(), &hipki_opts());
    let e = verify_proof(&validator(), &c, &proof, None, Role::Organization, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::WrongRole, "{e}");
}

#[test]
fn proof_from_revoked_expired_and_wrong_usage_cards() {
    for (card, role, code) in [
        ("moica-revoked", Role::Citizen, ErrorCode::CertRevoked),
        (
            "gca-agency-expired",
            Role::Organization,
            ErrorCode::CertExpired,
        ),
        ("moica-wrongku", Role::Citizen, ErrorCode::KeyUsage),
    ] {
        let c = challenge("step");
        let proof = cms_proof(pki(), card, c.tbs().as_bytes(), &hipki_opts());
        let e = verify_proof(&validator(), &c, &proof, None, role, NOW).unwrap_err();
        assert_eq!(e.code, code, "{card}: {e}");
    }
}

#[test]
fn certificate_beside_must_be_the_signer() {
    let c = challenge("org_card");
    let proof = cms_proof(pki(), "gca-agency", c.tbs().as_bytes(), &hipki_opts());
    let other = pki().card("gca-agency-renewed").issued.cert_der.clone();
    let e = verify_proof(
        &validator(),
        &c,
        &proof,
        Some(&other),
        Role::Organization,
        NOW,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::ProofMalformed, "{e}");
    let same = pki().card("gca-agency").issued.cert_der.clone();
    assert!(
        verify_proof(
            &validator(),
            &c,
            &proof,
            Some(&same),
            Role::Organization,
            NOW
        )
        .is_ok()
    );
}

#[test]
fn malformed_proofs() {
    let c = challenge("org_card");
    let proof = cms_proof(pki(), "gca-agency", c.tbs().as_bytes(), &hipki_opts());
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("empty", vec![], ErrorCode::ProofMalformed),
        (
            "garbage text",
            b"hello world".to_vec(),
            ErrorCode::ProofMalformed,
        ),
        (
            "truncated CMS",
            proof[..proof.len() - 40].to_vec(),
            ErrorCode::ProofMalformed,
        ),
        (
            "CMS with trailing junk",
            [proof.clone(), vec![0, 0]].concat(),
            ErrorCode::ProofMalformed,
        ),
        (
            "oversized",
            vec![b'A'; 600 * 1024],
            ErrorCode::InputTooLarge,
        ),
        (
            "a certificate instead",
            pki().card("gca-agency").issued.cert_der.clone(),
            ErrorCode::ProofMalformed,
        ),
    ];
    for (name, input, code) in cases {
        let e =
            verify_proof(&validator(), &c, &input, None, Role::Organization, NOW).expect_err(name);
        assert_eq!(e.code, code, "{name}: {e}");
    }
}

#[test]
fn path_cache_is_used_by_proofs() {
    let v = validator().with_cache();
    for _ in 0..2 {
        let c = challenge("admin_card");
        let proof = cms_proof(pki(), "moica-operator-2", c.tbs().as_bytes(), &hipki_opts());
        let ok = verify_proof(&v, &c, &proof, None, Role::Citizen, NOW).unwrap();
        let _ = ok.certificate.cached;
    }
    let c = challenge("admin_card");
    let proof = cms_proof(pki(), "moica-operator-2", c.tbs().as_bytes(), &hipki_opts());
    assert!(
        verify_proof(&v, &c, &proof, None, Role::Citizen, NOW)
            .unwrap()
            .certificate
            .cached
    );
}

/// The edges of telling base64 from binary: a vertical tab makes an input binary (passed on
/// as it is), the two alphabets do not mix, and padding alone is no signature.
#[test]
fn signature_text_edges() {
    use pki::proof::decode_signature;
    assert_eq!(decode_signature(b"QUJD\x0b").unwrap(), b"QUJD\x0b");
    assert_eq!(decode_signature(b"QUJD\x0c").unwrap(), b"ABC");
    assert_eq!(decode_signature(b"QUJD\xa0").unwrap(), b"QUJD\xa0");
    for junk in [&b"A+B-"[..], b"====", b" \n ", b"QQ==QQ"] {
        let e = decode_signature(junk).unwrap_err();
        assert_eq!(e.code, ErrorCode::ProofMalformed, "{junk:?}");
    }
    assert_eq!(decode_signature(b"QQ=====").unwrap(), b"A");
}
