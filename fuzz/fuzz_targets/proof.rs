//! Fuzz target: proof input — `cms::parse`, `proof::decode_signature`, and `verify_proof`
//! (without and with a certificate beside) against a validator over a small P-256 test PKI
//! generated once. Inputs are either raw bytes or edits of valid proofs made at start-up (CMS
//! in both signer forms, attached and detached, with and without signed attributes, raw ECDSA,
//! and the forgery over the key identifier). Nothing may panic, and whatever `verify_proof`
//! accepts must pass an oracle that does not use certreg's CMS reader: the signature verifies
//! over the bytes the parse reports as signed, those bytes carry the digest of the challenge,
//! and attached content is the challenge.
#![no_main]

use der::Decode as _;
use libfuzzer_sys::fuzz_target;
use pki::anchors::{Role, TrustStore};
use pki::challenge::Challenge;
use pki::cms::{CmsSignOptions, SignerIdForm};
use pki::facts::{OrgIdAttr, ParsedCert};
use pki::proof::{ProofFormat, VerifiedProof};
use pki::revocation::CrlStore;
use pki::sig::{self, SigAlg};
use testpki::{CaKind, KeyAlg, TestPki, TestPkiOptions};
use pki::validate::{ValidationOptions, Validator};
use std::sync::OnceLock;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2026-06-01 09:00 UTC);

struct Fixture {
    validator: Validator,
    challenge: Challenge,
    card_der: Vec<u8>,
    /// Valid proofs (and one forgery) to edit.
    seeds: Vec<Vec<u8>>,
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
        let card = pki.card("gca-agency");
        let tbs = challenge.tbs();
        let mut seeds = Vec::new();
        for opts in [
            CmsSignOptions {
                signing_time: Some(NOW),
                nonce: Some(vec![1; 16]),
                card_number: Some("GC00000000000001".into()),
                ..Default::default()
            },
            CmsSignOptions {
                detached: true,
                signer_id: SignerIdForm::KeyId,
                ..Default::default()
            },
            CmsSignOptions {
                without_signed_attrs: true,
                signer_id: SignerIdForm::KeyId,
                ..Default::default()
            },
            CmsSignOptions {
                chain: vec![pki.ca(CaKind::Gca).cert_der.clone()],
                ..Default::default()
            },
        ] {
            seeds.push(card.sign_cms(tbs.as_bytes(), &opts).expect("proof"));
        }
        seeds.push(sig::sign_pkcs8(&card.issued.key.pkcs8_der, tbs.as_bytes()).expect("ECDSA"));
        // The forgery: one signature over `31 14 ‖ SKI`, real signed attributes beside it.
        let ski = card.issued.key.key_id().expect("key id");
        let mut sid_set = vec![0x31, ski.len() as u8];
        sid_set.extend_from_slice(&ski);
        let one = sig::sign_pkcs8(&card.issued.key.pkcs8_der, &sid_set).expect("signature");
        let forged_opts = CmsSignOptions {
            signer_id: SignerIdForm::KeyId,
            ..Default::default()
        };
        seeds.push(
            pki::cms::build_signed_data(
                tbs.as_bytes(),
                &card.issued.cert_der,
                &forged_opts,
                |_| Ok(one.clone()),
            )
            .expect("forgery"),
        );
        Fixture {
            validator: Validator::new(trust, crls, ValidationOptions::default()),
            challenge,
            card_der: card.issued.cert_der.clone(),
            seeds,
        }
    })
}

/// Edits of a seed: triples (operation, position, byte) read from `ops`.
fn edited(seed: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for op in ops.chunks_exact(4) {
        if v.is_empty() {
            break;
        }
        let pos = usize::from(u16::from_be_bytes([op[1], op[2]])) % v.len();
        match op[0] % 4 {
            0 => v[pos] ^= op[3],
            1 => v.insert(pos, op[3]),
            2 => {
                v.remove(pos);
            }
            _ => v[pos] = op[3],
        }
    }
    v
}

/// What an accepted proof must satisfy, checked without certreg's CMS attribute reader.
fn oracle(f: &Fixture, input: &[u8], beside: Option<&[u8]>, ok: &VerifiedProof) {
    let tbs = f.challenge.tbs();
    let bytes = pki::proof::decode_signature(input).expect("accepted input decodes");
    let sha256 = |m: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, m)
            .as_ref()
            .to_vec()
    };
    match ok.format {
        ProofFormat::Pkcs1 | ProofFormat::Ecdsa => {
            let cert = pki::proof::read_certificate(beside.expect("raw proofs need a certificate"))
                .expect("certificate beside");
            assert_eq!(cert.facts.sha256, ok.certificate.facts.sha256);
            let spki = cert.spki_der().unwrap();
            let der_sig = if bytes[0] == 0x30 && bytes.len() != 64 {
                bytes.clone()
            } else {
                sig::ecdsa_raw_to_der(&bytes).unwrap()
            };
            let alg = if ok.format == ProofFormat::Pkcs1 {
                SigAlg::RsaSha256
            } else {
                SigAlg::EcdsaSha256
            };
            sig::verify(&spki, alg, tbs.as_bytes(), &der_sig).expect("raw signature over the TBS");
        }
        ProofFormat::CmsAttached | ProofFormat::CmsDetached => {
            let parts = pki::cms::parse(&bytes).expect("accepted proof parses");
            let mut candidates = parts.certificates.clone();
            candidates.extend(beside.map(|b| pki::proof::read_certificate(b).unwrap().der));
            let signer = candidates
                .iter()
                .find(|c| pki::facts::sha256_hex(c) == ok.certificate.facts.sha256)
                .expect("the validated certificate is in the proof or beside it");
            let spki = ParsedCert::from_der(signer.clone())
                .unwrap()
                .spki_der()
                .unwrap();
            let content = match (&parts.content, ok.format) {
                (Some(c), ProofFormat::CmsAttached) => c.as_slice(),
                (None, ProofFormat::CmsDetached) => tbs.as_bytes(),
                _ => panic!("format does not match the content"),
            };
            assert_eq!(content, tbs.as_bytes(), "signed content is the challenge");
            let alg = SigAlg::from_digest_and_key(parts.signer.digest_alg, &spki).unwrap();
            let signed = match &parts.signer.signed_attrs {
                Some(attrs) => {
                    // Read the attributes as a SEQUENCE OF with the `der` crate: the
                    // messageDigest in the signed bytes is the challenge's digest.
                    let mut seq = attrs.der().to_vec();
                    seq[0] = 0x30;
                    let list = Vec::<x509_cert::attr::Attribute>::from_der(&seq)
                        .expect("signed attributes decode");
                    let digest_oid =
                        const_oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
                    let digests: Vec<_> = list.iter().filter(|a| a.oid == digest_oid).collect();
                    assert_eq!(digests.len(), 1, "one messageDigest");
                    let values: Vec<_> = digests[0].values.iter().collect();
                    assert_eq!(values.len(), 1);
                    let d = values[0]
                        .decode_as::<der::asn1::OctetString>()
                        .expect("messageDigest is an OCTET STRING");
                    assert_eq!(
                        d.as_bytes(),
                        sha256(tbs.as_bytes()),
                        "digest of the challenge"
                    );
                    attrs.der()
                }
                None => content,
            };
            let der_sig = parts.signer.signature.as_slice();
            sig::verify(&spki, alg, signed, der_sig).expect("signature over the reported bytes");
        }
    }
}

fn check(f: &Fixture, data: &[u8], beside: Option<&[u8]>, role: Role) {
    let at = NOW + Duration::minutes(1);
    if let Ok(ok) = pki::proof::verify_proof(&f.validator, &f.challenge, data, beside, role, at) {
        oracle(f, data, beside, &ok);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = pki::cms::parse(data);
    let _ = pki::proof::decode_signature(data);

    let f = fixture();
    match data.split_first() {
        // Edits of a valid proof (raw ECDSA seeds get the card's certificate beside them).
        Some((&mode, rest)) if mode >= 0xC0 && !rest.is_empty() => {
            let seed = &f.seeds[usize::from(rest[0]) % f.seeds.len()];
            let proof = edited(seed, &rest[1..]);
            let beside = (mode & 1 == 1).then_some(f.card_der.as_slice());
            check(f, &proof, beside, Role::Organization);
        }
        _ => {
            for role in [Role::Organization, Role::Citizen] {
                check(f, data, None, role);
            }
            // First byte: where to split the input into signature and certificate beside it.
            if let Some((&cut, rest)) = data.split_first() {
                let (sig, cert) = rest.split_at(cut as usize * rest.len() / 256);
                check(f, sig, Some(cert), Role::Organization);
            }
        }
    }
});
