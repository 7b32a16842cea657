//! Signature verification by algorithm identifier, with ring: RSA PKCS#1 v1.5 and ECDSA.

use crate::error::{ErrorCode, PkiError, Result};
use crate::oid;
use const_oid::ObjectIdentifier;
use der::{Decode, asn1::BitStringRef};
use ring::signature as rs;
use spki::SubjectPublicKeyInfoRef;

/// The signature algorithms certreg accepts, named by what they are rather than by OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlg {
    RsaSha256,
    RsaSha384,
    RsaSha512,
    EcdsaSha256,
    EcdsaSha384,
}

impl SigAlg {
    /// Maps a signatureAlgorithm OID; SHA-1 gets its own code so that users learn why.
    pub fn from_oid(o: ObjectIdentifier) -> Result<Self> {
        Ok(match o {
            oid::SHA256_WITH_RSA => Self::RsaSha256,
            oid::SHA384_WITH_RSA => Self::RsaSha384,
            oid::SHA512_WITH_RSA => Self::RsaSha512,
            oid::ECDSA_WITH_SHA256 => Self::EcdsaSha256,
            o if o == const_oid::db::rfc5912::ECDSA_WITH_SHA_384 => Self::EcdsaSha384,
            oid::SHA1_WITH_RSA | oid::ECDSA_WITH_SHA1 => {
                return Err(PkiError::new(
                    ErrorCode::Sha1Refused,
                    "SHA-1 signature algorithm",
                ));
            }
            other => {
                return Err(PkiError::new(
                    ErrorCode::UnsupportedAlgorithm,
                    format!("signature algorithm {other} is not supported"),
                ));
            }
        })
    }

    /// The algorithm for a digest OID (CMS `digestAlgorithm`) and the signer's key type.
    pub fn from_digest_and_key(digest: ObjectIdentifier, spki_der: &[u8]) -> Result<Self> {
        let spki = SubjectPublicKeyInfoRef::from_der(spki_der)
            .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("public key: {e}")))?;
        let rsa = spki.algorithm.oid == oid::RSA_ENCRYPTION;
        let ec = spki.algorithm.oid == oid::EC_PUBLIC_KEY;
        Ok(match (digest, rsa, ec) {
            (oid::SHA256, true, _) => Self::RsaSha256,
            (oid::SHA384, true, _) => Self::RsaSha384,
            (oid::SHA512, true, _) => Self::RsaSha512,
            (oid::SHA256, _, true) => Self::EcdsaSha256,
            (oid::SHA384, _, true) => Self::EcdsaSha384,
            (oid::SHA1, _, _) => {
                return Err(PkiError::new(ErrorCode::Sha1Refused, "SHA-1 digest"));
            }
            (d, _, _) => {
                return Err(PkiError::new(
                    ErrorCode::UnsupportedAlgorithm,
                    format!("digest {d} with key algorithm {}", spki.algorithm.oid),
                ));
            }
        })
    }
}

/// Verifies `signature` over `message` with the key of a DER SubjectPublicKeyInfo.
/// ECDSA signatures are DER `Ecdsa-Sig-Value`; see [`ecdsa_raw_to_der`] for raw r‖s.
pub fn verify(spki_der: &[u8], alg: SigAlg, message: &[u8], signature: &[u8]) -> Result<()> {
    let spki = SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("public key: {e}")))?;
    let key: &BitStringRef<'_> = &spki.subject_public_key;
    let key = key.as_bytes().ok_or_else(|| {
        PkiError::new(
            ErrorCode::CertMalformed,
            "public key bit string has unused bits",
        )
    })?;
    let is_rsa = spki.algorithm.oid == oid::RSA_ENCRYPTION;
    let is_ec = spki.algorithm.oid == oid::EC_PUBLIC_KEY;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let algorithm: &dyn rs::VerificationAlgorithm = match alg {
        SigAlg::RsaSha256 if is_rsa => &rs::RSA_PKCS1_2048_8192_SHA256,
        SigAlg::RsaSha384 if is_rsa => &rs::RSA_PKCS1_2048_8192_SHA384,
        SigAlg::RsaSha512 if is_rsa => &rs::RSA_PKCS1_2048_8192_SHA512,
        SigAlg::EcdsaSha256 if is_ec && curve == Some(oid::SECP256R1) => {
            &rs::ECDSA_P256_SHA256_ASN1
        }
        SigAlg::EcdsaSha384 if is_ec && curve == Some(oid::SECP256R1) => {
            &rs::ECDSA_P256_SHA384_ASN1
        }
        SigAlg::EcdsaSha256 if is_ec && curve == Some(const_oid::db::rfc5912::SECP_384_R_1) => {
            &rs::ECDSA_P384_SHA256_ASN1
        }
        SigAlg::EcdsaSha384 if is_ec && curve == Some(const_oid::db::rfc5912::SECP_384_R_1) => {
            &rs::ECDSA_P384_SHA384_ASN1
        }
        _ => {
            return Err(PkiError::new(
                ErrorCode::UnsupportedAlgorithm,
                format!(
                    "{alg:?} with key algorithm {} (curve {curve:?})",
                    spki.algorithm.oid
                ),
            ));
        }
    };
    rs::UnparsedPublicKey::new(algorithm, key)
        .verify(message, signature)
        .map_err(|_| PkiError::new(ErrorCode::SignatureInvalid, "signature does not verify"))
}

/// Converts a raw ECDSA signature r‖s (as PKCS#11 tokens return it) to DER `Ecdsa-Sig-Value`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return Err(PkiError::new(
            ErrorCode::ProofMalformed,
            "raw ECDSA signature length",
        ));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    fn int(v: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        if v.is_empty() || v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    }
    let body: Vec<u8> = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    Ok(out)
}

/// Signs `message` with a PKCS#8 private key: RSA → PKCS#1 v1.5 SHA-256, EC P-256 → ECDSA
/// SHA-256 (DER). What soft cards, the test PKI and benchmarks use; real cards sign on the card.
pub fn sign_pkcs8(pkcs8_der: &[u8], message: &[u8]) -> Result<Vec<u8>> {
    let rng = ring::rand::SystemRandom::new();
    let bad_key =
        |what: &str| PkiError::new(ErrorCode::CertMalformed, format!("private key: {what}"));
    if let Ok(key) = rs::RsaKeyPair::from_pkcs8(pkcs8_der) {
        let mut out = vec![0u8; key.public().modulus_len()];
        key.sign(&rs::RSA_PKCS1_SHA256, &rng, message, &mut out)
            .map_err(|_| bad_key("RSA signing failed"))?;
        return Ok(out);
    }
    let key = rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8_der, &rng)
        .map_err(|_| bad_key("neither an RSA nor a P-256 PKCS#8 key"))?;
    key.sign(&rng, message)
        .map(|s| s.as_ref().to_vec())
        .map_err(|_| bad_key("ECDSA signing failed"))
}
