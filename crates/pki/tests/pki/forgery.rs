//! The signer identifier in its key-identifier form: honest proofs verify (OpenSSL's `-keyid`
//! and our builder, RSA and ECDSA, attached and detached), and the proof forged from one card
//! signature over `31 14 ‖ SKI` is refused with its own code, here and by OpenSSL.

use crate::helpers::*;
use crate::proofs::challenge;
use pki::ErrorCode;
use pki::anchors::Role;
use pki::cms::{CmsSignOptions, SignerId, SignerIdForm};
use pki::proof::{ProofFormat, verify_proof};
use pki::sig::sign_pkcs8;
use testpki::TestPki;

/// The cards tried, on the RSA and the P-256 test PKI.
fn cases() -> [(&'static TestPki, &'static str, Role); 4] {
    [
        (pki(), "gca-agency", Role::Organization),
        (pki(), "moica-admin", Role::Citizen),
        (pki_p256(), "gca-agency", Role::Organization),
        (pki_p256(), "moica-admin", Role::Citizen),
    ]
}

fn ski_of(p: &TestPki, card: &str) -> Vec<u8> {
    let facts = parsed(&p.card(card).issued).facts;
    let hex = facts
        .subject_key_id
        .expect("test cards carry a subjectKeyIdentifier");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn openssl_keyid_proofs_verify_attached_and_detached() {
    for (p, card, role) in cases() {
        let c = challenge("org_card");
        let tbs = c.tbs();
        for (extra, format) in [
            (&["-keyid", "-nodetach"][..], ProofFormat::CmsAttached),
            (&["-keyid"][..], ProofFormat::CmsDetached),
            (
                &["-keyid", "-nodetach", "-noattr"][..],
                ProofFormat::CmsAttached,
            ),
            (
                &["-keyid", "-stream", "-nodetach"][..],
                ProofFormat::CmsAttached,
            ),
        ] {
            let proof = openssl_cms_sign(p.card(card), tbs.as_bytes(), extra);
            let parts = pki::cms::parse(&proof).unwrap();
            assert_eq!(
                parts.signer.sid,
                SignerId::KeyId(ski_of(p, card)),
                "{extra:?}"
            );
            let ok = verify_proof(&validator_of(p), &c, &proof, None, role, NOW)
                .unwrap_or_else(|e| panic!("{card} {extra:?}: {e}"));
            assert_eq!(ok.format, format);
        }
    }
}

#[test]
fn our_keyid_proofs_verify_here_and_with_openssl() {
    for (p, card, role) in cases() {
        let c = challenge("admin_card");
        let tbs = c.tbs();
        for detached in [false, true] {
            let opts = CmsSignOptions {
                detached,
                signing_time: Some(NOW),
                nonce: Some(vec![7; 16]),
                signer_id: SignerIdForm::KeyId,
                ..Default::default()
            };
            let proof = p.card(card).sign_cms(tbs.as_bytes(), &opts).unwrap();
            assert_eq!(
                pki::cms::parse(&proof).unwrap().signer.sid,
                SignerId::KeyId(ski_of(p, card))
            );
            let ok = verify_proof(&validator_of(p), &c, &proof, None, role, NOW).unwrap();
            assert_eq!(ok.attrs.nonce.as_deref(), Some("07".repeat(16).as_str()));
            let content = detached.then_some(tbs.as_bytes());
            let out = openssl_cms_verify(p, &proof, content).unwrap();
            assert_eq!(out, tbs.as_bytes());
        }
    }
}

/// One signature by the card over `31 14 ‖ SKI`, obtained once from any page or tool that has
/// the card sign chosen bytes, put into SignerInfos that carry real signed attributes
/// (contentType, messageDigest of each new challenge) after digestAlgorithm. A reader that took
/// the first `[0]` of the SignerInfo (the sid) as the signed attributes verified this signature
/// over those 22 bytes and checked the digest in attributes nothing signs: it accepted every
/// such proof. certreg verifies the signature over the signed attributes: it fails, and the
/// refusal names the forgery.
#[test]
fn proof_forged_from_one_signature_over_the_key_id_is_refused() {
    for (p, card, role) in cases() {
        let tc = p.card(card);
        let ski = ski_of(p, card);
        assert_eq!(ski.len(), 20);
        let mut sid_as_set = vec![0x31, 0x14];
        sid_as_set.extend_from_slice(&ski);
        let one_signature = sign_pkcs8(&tc.issued.key.pkcs8_der, &sid_as_set).unwrap();

        for step in ["org_card", "admin_card"] {
            let c = challenge(step);
            let tbs = c.tbs();
            for detached in [false, true] {
                let opts = CmsSignOptions {
                    detached,
                    signer_id: SignerIdForm::KeyId,
                    ..Default::default()
                };
                let forged = pki::cms::build_signed_data(
                    tbs.as_bytes(),
                    &tc.issued.cert_der,
                    &opts,
                    |_signed_attrs| Ok(one_signature.clone()),
                )
                .unwrap();
                let parts = pki::cms::parse(&forged).unwrap();
                // The structure the old reader fell for: the first [0] of the SignerInfo is the
                // primitive sid, whose SET form is what the card signed.
                assert_eq!(parts.signer.sid_as_set(), sid_as_set);
                assert!(parts.signer.signed_attrs.is_some());
                let signer_info_at = forged
                    .windows(2 + ski.len())
                    .position(|w| w[..2] == [0x80, 0x14] && w[2..] == ski[..])
                    .expect("sid in the proof");
                assert_eq!(&forged[signer_info_at - 3..signer_info_at], [2, 1, 3]);

                let e = verify_proof(&validator_of(p), &c, &forged, None, role, NOW).unwrap_err();
                assert_eq!(e.code, ErrorCode::SignatureOverSignerId, "{card}: {e}");
                assert_eq!(e.code.as_str(), "signature_over_signer_id");

                let content = detached.then_some(tbs.as_bytes());
                let err = openssl_cms_verify(p, &forged, content).unwrap_err();
                assert!(err.contains("failure"), "{err}");
            }
        }
    }
}

/// A signature over anything else that fails is plain `signature_invalid`: only the forgery's
/// shape gets the forgery's code.
#[test]
fn other_bad_signatures_in_the_key_id_form_are_signature_invalid() {
    let tc = pki().card("gca-agency");
    let c = challenge("org_card");
    let opts = CmsSignOptions {
        signer_id: SignerIdForm::KeyId,
        ..Default::default()
    };
    let proof = pki::cms::build_signed_data(c.tbs().as_bytes(), &tc.issued.cert_der, &opts, |_| {
        sign_pkcs8(&tc.issued.key.pkcs8_der, b"something else")
    })
    .unwrap();
    let e = verify_proof(&validator(), &c, &proof, None, Role::Organization, NOW).unwrap_err();
    assert_eq!(e.code, ErrorCode::SignatureInvalid, "{e}");
}
