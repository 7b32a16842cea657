//! Verification of a card proof over a challenge: CMS/PKCS#7 SignedData (attached or detached),
//! a raw PKCS#1 v1.5 signature with the certificate beside it, or ECDSA P-256 (DER or raw r‖s).
//! A verified proof yields the signer's validated certificate facts; nothing else is trusted.

use crate::anchors::Role;
use crate::challenge::Challenge;
use crate::cms::{self, CmsParts};
use crate::error::{ErrorCode, PkiError, Result};
use crate::facts::{ParsedCert, decode_input};
use crate::oid;
use crate::serial::hex_upper;
use crate::sig::{self, SigAlg};
use crate::validate::{Validated, Validator};
use base64::Engine as _;
use der::asn1::UtcTime;
use serde::Serialize;
use std::sync::Arc;
use time::OffsetDateTime;

/// The signature format a proof arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofFormat {
    CmsAttached,
    CmsDetached,
    Pkcs1,
    Ecdsa,
}

/// What the HiPKI agent adds to a CMS proof, for the flow to record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SignedAttrs {
    /// randomNonce (1.2.840.113549.1.9.25.3), hex.
    pub nonce: Option<String>,
    /// Card number (2.16.886.1.100.2.204).
    pub card_number: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub signing_time: Option<OffsetDateTime>,
}

/// A proof that verified: who signed, with what, and the validated certificate.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedProof {
    pub format: ProofFormat,
    pub attrs: SignedAttrs,
    pub certificate: Validated,
}

fn malformed(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::ProofMalformed, detail)
}

/// The bytes a base64 signature may hold: both alphabets, padding and ASCII whitespace as
/// Rust counts it (space, \t, \n, \x0C, \r; not \x0B, which makes an input binary).
const BASE64_TEXT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_')
            || c.is_ascii_whitespace();
        b += 1;
    }
    table
};

/// Signatures come as DER or base64 (the agent returns base64); this accepts both.
pub fn decode_signature(input: &[u8]) -> Result<Vec<u8>> {
    if input.len() > cms::MAX_CMS_BYTES * 2 {
        return Err(PkiError::new(
            ErrorCode::InputTooLarge,
            "signature too large",
        ));
    }
    let is_text = !input.is_empty() && input.iter().all(|&b| BASE64_TEXT[usize::from(b)]);
    if !is_text {
        // Binary: DER CMS, a raw PKCS#1 signature, or raw ECDSA r‖s.
        return Ok(input.to_vec());
    }
    // ASCII from here on: line breaks and spaces are dropped byte by byte.
    let text: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let unpadded = text
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(&text[..0], |last| &text[..=last]);
    let engine = if unpadded.iter().any(|&b| b == b'-' || b == b'_') {
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    };
    let bytes = engine
        .decode(unpadded)
        .map_err(|e| malformed(format!("signature base64: {e}")))?;
    if bytes.is_empty() {
        return Err(malformed("empty signature"));
    }
    Ok(bytes)
}

/// Verifies a proof for `expected`, then validates the signer's certificate for `role`.
///
/// Order: cheap checks first (format, challenge text and freshness), then the signature, then
/// the certificate path and revocation — so replays and garbage cost no path building.
pub fn verify_proof(
    validator: &Validator,
    expected: &Challenge,
    signature: &[u8],
    certificate: Option<&[u8]>,
    role: Role,
    now: OffsetDateTime,
) -> Result<VerifiedProof> {
    let signature = decode_signature(signature)?;
    let beside = certificate
        .map(|c| decode_input(c).and_then(|der| validator.parse_cert(&der)))
        .transpose()?;
    let tbs = expected.tbs();

    if let Ok(parts) = cms::parse_with(&signature, Some(validator.cert_cache())) {
        return verify_cms(validator, expected, &tbs, &parts, beside, role, now);
    }
    if looks_like_content_info(&signature) {
        // It claims to be CMS but did not parse: say why, rather than "bad PKCS#1".
        cms::parse(&signature)?;
    }
    let cert = beside.ok_or_else(|| {
        malformed("a raw signature needs the signer's certificate sent beside it")
    })?;
    expected.check_signed(tbs.as_bytes(), now)?;
    let spki = cert.spki();
    let format = match cert
        .cert
        .tbs_certificate()
        .subject_public_key_info()
        .algorithm
        .oid
    {
        oid::RSA_ENCRYPTION => {
            sig::verify(spki, SigAlg::RsaSha256, tbs.as_bytes(), &signature)?;
            ProofFormat::Pkcs1
        }
        oid::EC_PUBLIC_KEY => {
            let der_sig = if signature.first() == Some(&0x30) && signature.len() != 64 {
                signature.clone()
            } else {
                sig::ecdsa_raw_to_der(&signature)?
            };
            sig::verify(spki, SigAlg::EcdsaSha256, tbs.as_bytes(), &der_sig)?;
            ProofFormat::Ecdsa
        }
        other => {
            return Err(PkiError::new(
                ErrorCode::UnsupportedAlgorithm,
                format!("signer key algorithm {other}"),
            ));
        }
    };
    let certificate = validator.validate(&cert, &[], role, now)?;
    Ok(VerifiedProof {
        format,
        attrs: SignedAttrs::default(),
        certificate,
    })
}

fn looks_like_content_info(der: &[u8]) -> bool {
    // SEQUENCE { OBJECT IDENTIFIER 1.2.840.113549.1.7.2 ...
    const SIGNED_DATA_OID: &[u8] = &[
        0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02,
    ];
    der.len() > 16
        && der[0] == 0x30
        && der[..16]
            .windows(SIGNED_DATA_OID.len())
            .any(|w| w == SIGNED_DATA_OID)
}

fn verify_cms(
    validator: &Validator,
    expected: &Challenge,
    tbs: &str,
    parts: &CmsParts,
    beside: Option<Arc<ParsedCert>>,
    role: Role,
    now: OffsetDateTime,
) -> Result<VerifiedProof> {
    if parts.econtent_type != oid::CMS_DATA {
        return Err(malformed(format!(
            "eContentType {} is not id-data",
            parts.econtent_type
        )));
    }
    let (content, format) = match &parts.content {
        Some(c) => (c.as_slice(), ProofFormat::CmsAttached),
        None => (tbs.as_bytes(), ProofFormat::CmsDetached),
    };
    expected.check_signed(content, now)?;

    let carried = parts
        .certificates
        .iter()
        .position(|der| parts.signer.names(der))
        .and_then(|i| parts.parsed_certificates.get(i));
    let signer = match carried {
        Some(parsed) => parsed.clone(),
        None => match &beside {
            Some(c) if parts.signer.names(&c.der) => c.clone(),
            _ => return Err(malformed("the signer's certificate is not in the proof")),
        },
    };
    if let Some(b) = &beside
        && b.der != signer.der
    {
        return Err(malformed(
            "the certificate sent beside the proof is not the signer's",
        ));
    }
    let spki = signer.spki();
    let alg = SigAlg::from_digest_and_key(parts.signer.digest_alg, spki)?;
    check_signature_algorithm(parts.signer.signature_alg, alg)?;
    let signature = parts.signer.signature.as_slice();

    let mut attrs = SignedAttrs::default();
    // What the signature covers: the signed attributes (read from their place after
    // digestAlgorithm, and checked in those same bytes) or, without them, the content.
    let signed: &[u8] = match &parts.signer.signed_attrs {
        Some(signed_attrs) => {
            let content_type = signed_attrs
                .get(oid::ATTR_CONTENT_TYPE)
                .ok_or_else(|| malformed("signed attributes lack contentType"))?
                .decode_as::<const_oid::ObjectIdentifier>()
                .map_err(|e| malformed(format!("contentType attribute: {e}")))?;
            if content_type != parts.econtent_type {
                return Err(malformed("contentType attribute differs from eContentType"));
            }
            let digest = signed_attrs
                .get(oid::ATTR_MESSAGE_DIGEST)
                .ok_or_else(|| malformed("signed attributes lack messageDigest"))?
                .decode_as::<der::asn1::OctetString>()
                .map_err(|e| malformed(format!("messageDigest attribute: {e}")))?;
            let actual = digest_of(parts.signer.digest_alg, content)?;
            if digest.as_bytes() != actual.as_slice() {
                return Err(PkiError::new(
                    ErrorCode::SignatureInvalid,
                    "messageDigest does not match the signed content",
                ));
            }
            attrs = read_attrs(signed_attrs);
            signed_attrs.der()
        }
        None => content,
    };
    if let Err(e) = sig::verify(spki, alg, signed, signature) {
        // The card's signature over its own key identifier says nothing about any content;
        // a proof built around one is a forgery, and is named as one.
        if matches!(parts.signer.sid, cms::SignerId::KeyId(_))
            && sig::verify(spki, alg, &parts.signer.sid_as_set(), signature).is_ok()
        {
            return Err(PkiError::new(
                ErrorCode::SignatureOverSignerId,
                "the signature covers the signer identifier, not the signed attributes",
            ));
        }
        return Err(e);
    }
    let certificate = validator.validate(&signer, &parts.certificates, role, now)?;
    Ok(VerifiedProof {
        format,
        attrs,
        certificate,
    })
}

/// SignerInfo.signatureAlgorithm may name the bare key algorithm (rsaEncryption, as HiPKI
/// writes) or the combined one; either must agree with the digest and key.
fn check_signature_algorithm(named: const_oid::ObjectIdentifier, alg: SigAlg) -> Result<()> {
    if named == oid::RSA_ENCRYPTION || named == oid::EC_PUBLIC_KEY {
        return Ok(());
    }
    let by_name = SigAlg::from_oid(named)?;
    if by_name != alg {
        return Err(malformed(format!(
            "signatureAlgorithm {named} disagrees with the digest algorithm and key"
        )));
    }
    Ok(())
}

fn digest_of(alg: const_oid::ObjectIdentifier, content: &[u8]) -> Result<Vec<u8>> {
    let algorithm = match alg {
        oid::SHA256 => &ring::digest::SHA256,
        oid::SHA384 => &ring::digest::SHA384,
        oid::SHA512 => &ring::digest::SHA512,
        oid::SHA1 => return Err(PkiError::new(ErrorCode::Sha1Refused, "SHA-1 digest")),
        other => {
            return Err(PkiError::new(
                ErrorCode::UnsupportedAlgorithm,
                format!("digest {other}"),
            ));
        }
    };
    Ok(ring::digest::digest(algorithm, content).as_ref().to_vec())
}

fn read_attrs(signed: &cms::SignedAttributes) -> SignedAttrs {
    let text = |kind| signed.get(kind).and_then(crate::facts::any_to_string);
    SignedAttrs {
        nonce: signed
            .get(oid::ATTR_RANDOM_NONCE)
            .and_then(|a| a.decode_as::<der::asn1::OctetString>().ok())
            .map(|o| hex_upper(o.as_bytes())),
        card_number: text(oid::GPKI_CARD_NUMBER),
        signing_time: signed
            .get(oid::ATTR_SIGNING_TIME)
            .and_then(|a| a.decode_as::<UtcTime>().ok())
            .and_then(|t| {
                OffsetDateTime::from_unix_timestamp(t.to_unix_duration().as_secs() as i64).ok()
            }),
    }
}

/// Reads a certificate the same way a proof's certificate is read (for callers that hold the
/// certificate separately from the signature).
pub fn read_certificate(input: &[u8]) -> Result<ParsedCert> {
    ParsedCert::from_der(decode_input(input)?)
}
