//! CMS/PKCS#7 SignedData as card agents make it: reading the parts certreg needs (over their
//! original bytes, since `der` re-sorts SET OF on decode) and building it for our own agent.

use crate::error::{ErrorCode, PkiError, Result};
use crate::oid;
use cms::content_info::CmsVersion;
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use const_oid::ObjectIdentifier;
use der::asn1::{AnyRef, OctetString, SetOfVec};
use der::{Any, Decode, Encode, Tag, Tagged};
use spki::AlgorithmIdentifierOwned;
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;

/// Proofs larger than this are refused before parsing.
pub const MAX_CMS_BYTES: usize = 256 * 1024;

fn malformed(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::ProofMalformed, detail)
}

/// The parts of a SignedData with exactly one signer, as the bytes that were signed.
#[derive(Debug, Clone)]
pub struct CmsParts {
    pub econtent_type: ObjectIdentifier,
    /// The encapsulated content; `None` when detached.
    pub content: Option<Vec<u8>>,
    /// The certificates carried, as their original DER.
    pub certificates: Vec<Vec<u8>>,
    pub signer: SignerInfo,
    /// The signed attributes exactly as encoded, with the `[0]` tag replaced by SET (0x31):
    /// what the signature covers.
    pub signed_attrs_der: Option<Vec<u8>>,
}

/// Reads a DER TLV's parts.
fn tlvs(content: &[u8]) -> Result<Vec<AnyRef<'_>>> {
    let mut reader = der::SliceReader::new(content).map_err(|e| malformed(format!("CMS: {e}")))?;
    let mut out = Vec::new();
    while !der::Reader::is_finished(&reader) {
        out.push(AnyRef::decode(&mut reader).map_err(|e| malformed(format!("CMS: {e}")))?);
    }
    Ok(out)
}

fn tlv_bytes(any: AnyRef<'_>) -> Result<Vec<u8>> {
    any.to_der().map_err(|e| malformed(format!("CMS: {e}")))
}

fn context(any: &AnyRef<'_>, n: u8) -> bool {
    matches!(any.tag(), Tag::ContextSpecific { number, .. } if number.value() == u32::from(n))
}

/// Parses a ContentInfo holding SignedData, in DER or in BER with indefinite lengths and
/// chunked OCTET STRINGs (as streaming signers write it; see [`crate::ber`]).
pub fn parse(input: &[u8]) -> Result<CmsParts> {
    if input.len() > MAX_CMS_BYTES {
        return Err(PkiError::new(
            ErrorCode::InputTooLarge,
            format!("signature of {} bytes (limit {MAX_CMS_BYTES})", input.len()),
        ));
    }
    let der = crate::ber::to_der(input).map_err(|e| malformed(format!("CMS: {e}")))?;
    let ci = AnyRef::from_der(&der).map_err(|e| malformed(format!("not DER ContentInfo: {e}")))?;
    if ci.tag() != Tag::Sequence {
        return Err(malformed("ContentInfo is not a SEQUENCE"));
    }
    let parts = tlvs(ci.value())?;
    let [ct, content] = parts.as_slice() else {
        return Err(malformed("ContentInfo has the wrong number of fields"));
    };
    let ct: ObjectIdentifier = ct
        .decode_as()
        .map_err(|e| malformed(format!("contentType: {e}")))?;
    if ct != oid::CMS_SIGNED_DATA {
        return Err(malformed(format!("content type {ct} is not signedData")));
    }
    if !context(content, 0) {
        return Err(malformed("ContentInfo content is not [0]"));
    }
    let sd = tlvs(content.value())?;
    let [sd] = sd.as_slice() else {
        return Err(malformed("[0] must hold one SignedData"));
    };
    let fields = tlvs(sd.value())?;
    if fields.len() < 4 {
        return Err(malformed("SignedData has too few fields"));
    }
    let encap = tlvs(fields[2].value())?;
    let econtent_type: ObjectIdentifier = encap
        .first()
        .ok_or_else(|| malformed("encapContentInfo is empty"))?
        .decode_as()
        .map_err(|e| malformed(format!("eContentType: {e}")))?;
    let content = match encap.get(1) {
        None => None,
        Some(e) if context(e, 0) => {
            let inner = tlvs(e.value())?;
            let [octets] = inner.as_slice() else {
                return Err(malformed("eContent must hold one OCTET STRING"));
            };
            if octets.tag() != Tag::OctetString {
                return Err(malformed("eContent is not an OCTET STRING"));
            }
            Some(octets.value().to_vec())
        }
        Some(_) => return Err(malformed("encapContentInfo has an unexpected field")),
    };
    let mut certificates = Vec::new();
    let mut rest = &fields[3..];
    while let Some(first) = rest.first() {
        if context(first, 0) {
            for c in tlvs(first.value())? {
                if c.tag() == Tag::Sequence {
                    certificates.push(tlv_bytes(c)?);
                }
            }
        } else if !context(first, 1) {
            break;
        }
        rest = &rest[1..];
    }
    let [signer_infos] = rest else {
        return Err(malformed("SignedData has no signerInfos"));
    };
    let signers = tlvs(signer_infos.value())?;
    let [signer] = signers.as_slice() else {
        return Err(malformed(format!(
            "{} signers (exactly one accepted)",
            signers.len()
        )));
    };
    let signed_attrs_der = tlvs(signer.value())?
        .into_iter()
        .find(|f| context(f, 0))
        .map(|attrs| {
            let mut bytes = tlv_bytes(attrs)?;
            bytes[0] = 0x31;
            Ok::<_, PkiError>(bytes)
        })
        .transpose()?;
    let signer = SignerInfo::from_der(&tlv_bytes(*signer)?)
        .map_err(|e| malformed(format!("SignerInfo: {e}")))?;
    Ok(CmsParts {
        econtent_type,
        content,
        certificates,
        signer,
        signed_attrs_der,
    })
}

impl CmsParts {
    /// The first value of a signed attribute.
    pub fn signed_attr(&self, kind: ObjectIdentifier) -> Option<&Any> {
        self.signer
            .signed_attrs
            .as_ref()?
            .iter()
            .find(|a| a.oid == kind)
            .and_then(|a| a.values.iter().next())
    }

    /// The certificate the SignerIdentifier names, among `candidates` (DER).
    pub fn find_signer<'c>(&self, candidates: &'c [Vec<u8>]) -> Option<&'c Vec<u8>> {
        candidates.iter().find(|der| {
            let Ok(cert) = Certificate::from_der(der) else {
                return false;
            };
            let tbs = cert.tbs_certificate();
            match &self.signer.sid {
                SignerIdentifier::IssuerAndSerialNumber(ias) => {
                    ias.issuer == *tbs.issuer() && ias.serial_number == *tbs.serial_number()
                }
                SignerIdentifier::SubjectKeyIdentifier(ski) => tbs
                    .get_extension::<x509_cert::ext::pkix::SubjectKeyIdentifier>()
                    .ok()
                    .flatten()
                    .is_some_and(|(_, own)| own.0 == ski.0),
            }
        })
    }
}

/// How our agent (and the tests) build a SignedData.
#[derive(Debug, Clone, Default)]
pub struct CmsSignOptions {
    /// Leave the content out (detached signature).
    pub detached: bool,
    pub signing_time: Option<OffsetDateTime>,
    /// HiPKI randomNonce attribute (1.2.840.113549.1.9.25.3).
    pub nonce: Option<Vec<u8>>,
    /// Card number attribute (2.16.886.1.100.2.204).
    pub card_number: Option<String>,
    /// Further certificates to include (the signer's is always included).
    pub chain: Vec<Vec<u8>>,
    /// Sign the content directly, without signed attributes, as old card components did.
    pub without_signed_attrs: bool,
}

fn enc(e: der::Error) -> PkiError {
    PkiError::new(ErrorCode::ProofMalformed, format!("CMS encoding: {e}"))
}

fn attribute(kind: ObjectIdentifier, value: Any) -> Result<Attribute> {
    Ok(Attribute {
        oid: kind,
        values: SetOfVec::try_from(vec![value]).map_err(enc)?,
    })
}

/// Builds a SHA-256 SignedData over `content`. `sign` receives the bytes to sign (the DER SET
/// of signed attributes, or the content itself) and returns a PKCS#1 v1.5 or DER ECDSA
/// signature made with the key of `signer_cert_der`.
pub fn build_signed_data(
    content: &[u8],
    signer_cert_der: &[u8],
    opts: &CmsSignOptions,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let cert = Certificate::from_der(signer_cert_der)
        .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("signer certificate: {e}")))?;
    let key_alg = cert
        .tbs_certificate()
        .subject_public_key_info()
        .algorithm
        .oid;
    let (sig_oid, sig_params) = match key_alg {
        oid::RSA_ENCRYPTION => (oid::SHA256_WITH_RSA, Some(Any::null())),
        oid::EC_PUBLIC_KEY => (oid::ECDSA_WITH_SHA256, None),
        other => {
            return Err(PkiError::new(
                ErrorCode::UnsupportedAlgorithm,
                format!("signer key algorithm {other}"),
            ));
        }
    };
    let sha256 = AlgorithmIdentifierOwned {
        oid: oid::SHA256,
        parameters: None,
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, content);

    let (signed_attrs, to_sign) = if opts.without_signed_attrs {
        (None, content.to_vec())
    } else {
        let mut attrs = vec![
            attribute(
                oid::ATTR_CONTENT_TYPE,
                Any::encode_from(&oid::CMS_DATA).map_err(enc)?,
            )?,
            attribute(
                oid::ATTR_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(digest.as_ref()).map_err(enc)?).map_err(enc)?,
            )?,
        ];
        if let Some(t) = opts.signing_time {
            let secs = std::time::Duration::from_secs(t.unix_timestamp().max(0) as u64);
            let utc = der::asn1::UtcTime::from_unix_duration(secs).map_err(enc)?;
            attrs.push(attribute(
                oid::ATTR_SIGNING_TIME,
                Any::encode_from(&utc).map_err(enc)?,
            )?);
        }
        if let Some(n) = &opts.nonce {
            let octets = OctetString::new(n.clone()).map_err(enc)?;
            attrs.push(attribute(
                oid::ATTR_RANDOM_NONCE,
                Any::encode_from(&octets).map_err(enc)?,
            )?);
        }
        if let Some(card) = &opts.card_number {
            let s = der::asn1::Utf8StringRef::new(card).map_err(enc)?;
            attrs.push(attribute(
                oid::GPKI_CARD_NUMBER,
                Any::encode_from(&s).map_err(enc)?,
            )?);
        }
        let set: SetOfVec<Attribute> = SetOfVec::try_from(attrs).map_err(enc)?;
        let der = set.to_der().map_err(enc)?;
        (Some(set), der)
    };
    let signature = sign(&to_sign)?;

    let tbs = cert.tbs_certificate();
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(cms::cert::IssuerAndSerialNumber {
            issuer: tbs.issuer().clone(),
            serial_number: tbs.serial_number().clone(),
        }),
        digest_alg: sha256.clone(),
        signed_attrs,
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: sig_oid,
            parameters: sig_params,
        },
        signature: OctetString::new(signature).map_err(enc)?,
        unsigned_attrs: None,
    };
    let mut certs = vec![cms::cert::CertificateChoices::Certificate(cert.clone())];
    for der in &opts.chain {
        let c = Certificate::from_der(der)
            .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("chain: {e}")))?;
        certs.push(cms::cert::CertificateChoices::Certificate(c));
    }
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256]).map_err(enc)?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid::CMS_DATA,
            econtent: if opts.detached {
                None
            } else {
                Some(Any::new(Tag::OctetString, content).map_err(enc)?)
            },
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(certs).map_err(enc)?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).map_err(enc)?),
    };
    let ci = cms::content_info::ContentInfo {
        content_type: oid::CMS_SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(enc)?,
    };
    ci.to_der().map_err(enc)
}
