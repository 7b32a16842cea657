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
use der::{Any, Decode, Encode, Tag};
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
    /// The same certificates, parsed (in the same order).
    pub parsed_certificates: Vec<std::sync::Arc<crate::facts::ParsedCert>>,
    pub signer: Signer,
}

/// How a SignerInfo names its certificate (RFC 5652 §5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerId {
    /// `issuerAndSerialNumber`: the issuer Name and the serial INTEGER, each as its whole DER
    /// element (tag and length included), compared byte for byte with the certificate's.
    IssuerAndSerial { issuer: Vec<u8>, serial: Vec<u8> },
    /// `subjectKeyIdentifier` (`[0]`, primitive): the certificate's subjectKeyIdentifier.
    KeyId(Vec<u8>),
}

/// The one SignerInfo of a proof, read field by field from its place.
#[derive(Debug, Clone)]
pub struct Signer {
    pub sid: SignerId,
    /// The sid element as it arrived (tag and length included).
    pub sid_der: Vec<u8>,
    pub digest_alg: ObjectIdentifier,
    pub signed_attrs: Option<SignedAttributes>,
    pub signature_alg: ObjectIdentifier,
    pub signature: Vec<u8>,
}

/// The signed attributes: the constructed `[0]` that follows `digestAlgorithm`, kept as the
/// bytes the signature covers (tag replaced by SET, 0x31). Every attribute is read from these
/// same bytes, so what is checked is what is signed.
#[derive(Debug, Clone)]
pub struct SignedAttributes {
    der: Vec<u8>,
    /// Each attribute type once, with the positions of its values in `der`.
    attrs: Vec<(ObjectIdentifier, Vec<std::ops::Range<usize>>)>,
}

impl SignedAttributes {
    /// Reads `SET OF Attribute` (with its SET tag) and keeps it. The signature must cover the
    /// one DER encoding of what is read, as a verifier that re-encodes the attributes (OpenSSL
    /// does) sees it: every attribute has exactly one value (a SET OF with several would have to
    /// be sorted, and which value is read would be a choice), values are valid for their types,
    /// and no string is in the constructed form DER forbids.
    fn parse(der: Vec<u8>) -> Result<Self> {
        let attrs = attributes(&der, "signed attributes")?;
        for (kind, values) in &attrs {
            if values.len() != 1 {
                return Err(malformed(format!(
                    "signed attribute {kind} has {} values (exactly one allowed)",
                    values.len()
                )));
            }
        }
        crate::ber::check_values(&der)
            .and_then(|()| crate::ber::check_primitive_strings(&der))
            .map_err(|e| malformed(format!("signed attributes: {e}")))?;
        Ok(Self { der, attrs })
    }

    /// What the signature covers: the DER `SET OF Attribute`.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The attribute types present, in the order they arrived.
    pub fn types(&self) -> impl Iterator<Item = ObjectIdentifier> + '_ {
        self.attrs.iter().map(|(kind, _)| *kind)
    }

    /// The first (for the single-valued attributes: the only) value of attribute `kind`.
    pub fn get(&self, kind: ObjectIdentifier) -> Option<AnyRef<'_>> {
        let (_, values) = self.attrs.iter().find(|(k, _)| *k == kind)?;
        let range = values.first()?.clone();
        AnyRef::from_der(&self.der[range]).ok()
    }
}

/// Attributes that carry exactly one value and appear at most once (RFC 5652 §11).
const SINGLE_VALUED: [ObjectIdentifier; 3] = [
    oid::ATTR_CONTENT_TYPE,
    oid::ATTR_MESSAGE_DIGEST,
    oid::ATTR_SIGNING_TIME,
];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const CONSTRUCTED: u8 = 0x20;
const CONTEXT_0: u8 = 0xA0;
const CONTEXT_1: u8 = 0xA1;
/// `[0]` IMPLICIT OCTET STRING: the subjectKeyIdentifier form of the sid.
const CONTEXT_0_PRIMITIVE: u8 = 0x80;

/// One DER element: the whole encoding, and the contents.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    whole: &'a [u8],
    value: &'a [u8],
}

/// Reads DER elements one after the other: one-byte tags, minimal definite lengths only.
struct Walk<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Walk<'a> {
    fn new(content: &'a [u8], what: &'static str) -> Self {
        Self {
            rest: content,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn next(&mut self) -> Result<Tlv<'a>> {
        let what = self.what;
        let bad = |why: &str| malformed(format!("{what}: {why}"));
        let [tag, first, ..] = *self.rest else {
            return Err(bad("truncated element"));
        };
        if tag & 0x1f == 0x1f {
            return Err(bad("high tag numbers are not used in a proof"));
        }
        let (len, header) = match first {
            n if n < 0x80 => (usize::from(n), 2),
            0x81..=0x84 => {
                let n = usize::from(first & 0x7f);
                let bytes = self
                    .rest
                    .get(2..2 + n)
                    .ok_or_else(|| bad("truncated length"))?;
                let len = bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                if bytes[0] == 0 || len < 0x80 {
                    return Err(bad("length not in its shortest form"));
                }
                (len, 2 + n)
            }
            _ => return Err(bad("indefinite or oversized length")),
        };
        let end = header
            .checked_add(len)
            .filter(|end| *end <= self.rest.len())
            .ok_or_else(|| bad("element longer than its container"))?;
        let tlv = Tlv {
            whole: &self.rest[..end],
            value: &self.rest[header..end],
        };
        self.rest = &self.rest[end..];
        Ok(tlv)
    }

    /// The next element, which must carry `tag` (the constructed bit included).
    fn expect(&mut self, tag: u8, name: &str) -> Result<Tlv<'a>> {
        match self.peek() {
            Some(t) if t == tag => self.next(),
            Some(t) => Err(malformed(format!(
                "{}: {name} has tag {t:#04x}, expected {tag:#04x}",
                self.what
            ))),
            None => Err(malformed(format!("{}: {name} is missing", self.what))),
        }
    }

    /// The next element if it carries `tag`.
    fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>> {
        if self.peek() == Some(tag) {
            self.next().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Nothing may follow the fields read.
    fn end(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{}: unexpected data after the last field (tag {:#04x})",
                self.what, self.rest[0]
            )))
        }
    }
}

/// One element filling `input` exactly.
fn single<'a>(input: &'a [u8], tag: u8, what: &'static str) -> Result<Tlv<'a>> {
    let mut w = Walk::new(input, what);
    let tlv = w.expect(tag, what)?;
    w.end()?;
    Ok(tlv)
}

fn oid_of(tlv: Tlv<'_>, what: &str) -> Result<ObjectIdentifier> {
    ObjectIdentifier::from_der(tlv.whole).map_err(|e| malformed(format!("{what}: {e}")))
}

/// `AlgorithmIdentifier` with absent or NULL parameters (all certreg accepts in a proof).
fn algorithm(tlv: Tlv<'_>, what: &'static str) -> Result<ObjectIdentifier> {
    let mut w = Walk::new(tlv.value, what);
    let alg = oid_of(w.expect(OID, "algorithm")?, what)?;
    if let Some(params) = w.optional(NULL)?
        && !params.value.is_empty()
    {
        return Err(malformed(format!("{what}: NULL parameters with contents")));
    }
    w.end()?;
    Ok(alg)
}

/// `SET OF Attribute` (the element with its tag, as `whole`): each attribute type once, each
/// with one or more values; returns the positions of the values within `set`.
fn attributes(
    set: &[u8],
    what: &'static str,
) -> Result<Vec<(ObjectIdentifier, Vec<std::ops::Range<usize>>)>> {
    let outer = Walk::new(set, what).next()?;
    let base = outer.value.as_ptr() as usize - set.as_ptr() as usize;
    let mut attrs: Vec<(ObjectIdentifier, Vec<std::ops::Range<usize>>)> = Vec::new();
    let mut w = Walk::new(outer.value, what);
    if w.peek().is_none() {
        return Err(malformed(format!("{what}: empty")));
    }
    while w.peek().is_some() {
        let attr = w.expect(SEQUENCE, "Attribute")?;
        let mut a = Walk::new(attr.value, what);
        let kind = oid_of(a.expect(OID, "attribute type")?, what)?;
        let values = a.expect(SET, "attribute values")?;
        a.end()?;
        if attrs.iter().any(|(k, _)| *k == kind) {
            return Err(malformed(format!("{what}: attribute {kind} appears twice")));
        }
        let mut ranges = Vec::new();
        let mut v = Walk::new(values.value, what);
        while v.peek().is_some() {
            let value = v.next()?;
            let start = base + (value.whole.as_ptr() as usize - outer.value.as_ptr() as usize);
            ranges.push(start..start + value.whole.len());
        }
        if ranges.is_empty() {
            return Err(malformed(format!("{what}: attribute {kind} has no value")));
        }
        attrs.push((kind, ranges));
    }
    Ok(attrs)
}

/// Parses a ContentInfo holding SignedData with exactly one signer, in DER or in BER with
/// indefinite lengths and chunked OCTET STRINGs (as streaming signers write it; see
/// [`crate::ber`], which rewrites those to DER first). Every field is read from its place in
/// RFC 5652's order; a missing, extra, repeated or wrongly tagged field refuses the proof.
pub fn parse(input: &[u8]) -> Result<CmsParts> {
    parse_with(input, None)
}

/// [`parse`], taking the certificates the SignedData carries from `certs` (parsing and keeping
/// there those it does not hold yet).
pub fn parse_with(input: &[u8], certs: Option<&crate::certcache::CertCache>) -> Result<CmsParts> {
    if input.len() > MAX_CMS_BYTES {
        return Err(PkiError::new(
            ErrorCode::InputTooLarge,
            format!("signature of {} bytes (limit {MAX_CMS_BYTES})", input.len()),
        ));
    }
    let der = crate::ber::to_der(input).map_err(|e| malformed(format!("CMS: {e}")))?;
    // Parsed for its structure first (on the DER), so that the walk over what was sent meets
    // the fields where the DER has them.
    let parts = parse_der(&der, certs)?;
    if matches!(der, std::borrow::Cow::Owned(_)) {
        der_where_signed(input)?;
    }
    Ok(parts)
}

fn parse_der(der: &[u8], cache: Option<&crate::certcache::CertCache>) -> Result<CmsParts> {
    // ContentInfo ::= SEQUENCE { contentType, [0] EXPLICIT content }
    let ci = single(der, SEQUENCE, "ContentInfo")?;
    let mut w = Walk::new(ci.value, "ContentInfo");
    let ct = oid_of(w.expect(OID, "contentType")?, "contentType")?;
    if ct != oid::CMS_SIGNED_DATA {
        return Err(malformed(format!("content type {ct} is not signedData")));
    }
    let content = w.expect(CONTEXT_0, "content")?;
    w.end()?;
    let sd = single(content.value, SEQUENCE, "SignedData")?;

    // SignedData ::= SEQUENCE { version, digestAlgorithms, encapContentInfo,
    //   certificates [0] IMPLICIT OPTIONAL, crls [1] IMPLICIT OPTIONAL, signerInfos }
    let mut w = Walk::new(sd.value, "SignedData");
    let sd_version = w.expect(INTEGER, "version")?;
    let digest_algs = w.expect(SET, "digestAlgorithms")?;
    let encap = w.expect(SEQUENCE, "encapContentInfo")?;
    let certs = w.optional(CONTEXT_0)?;
    if w.peek() == Some(CONTEXT_1) {
        return Err(malformed("SignedData: a proof carries no CRLs"));
    }
    let signer_infos = w.expect(SET, "signerInfos")?;
    w.end()?;

    let mut e = Walk::new(encap.value, "encapContentInfo");
    let econtent_type = oid_of(e.expect(OID, "eContentType")?, "eContentType")?;
    let content = match e.optional(CONTEXT_0)? {
        Some(wrapper) => Some(
            single(wrapper.value, OCTET_STRING, "eContent")?
                .value
                .to_vec(),
        ),
        None => None,
    };
    e.end()?;

    let mut certificates = Vec::new();
    let mut parsed_certificates = Vec::new();
    if let Some(certs) = certs {
        let mut c = Walk::new(certs.value, "certificates");
        while c.peek().is_some() {
            // Only X.509 certificates (no attribute or other certificate formats), each one
            // decodable: a proof is refused rather than read around a part that is not.
            let cert = c.expect(SEQUENCE, "certificate")?;
            let parsed = match cache {
                Some(cache) => cache.parse(cert.whole),
                None => {
                    crate::facts::ParsedCert::from_der(cert.whole.to_vec()).map(std::sync::Arc::new)
                }
            }
            .map_err(|e| malformed(format!("certificate in the proof: {}", e.detail)))?;
            certificates.push(cert.whole.to_vec());
            parsed_certificates.push(parsed);
        }
    }

    let mut s = Walk::new(signer_infos.value, "signerInfos");
    let signer_info = s.expect(SEQUENCE, "SignerInfo")?;
    if s.peek().is_some() {
        return Err(malformed("more than one SignerInfo (exactly one accepted)"));
    }
    let (signer, version) = signer(signer_info)?;

    // RFC 5652 §5.1: version 3 exactly when a SignerInfo is version 3 (with id-data content
    // and X.509 certificates only, as here); §5.3: version 3 exactly for the key-identifier sid.
    if sd_version.whole != version {
        return Err(malformed(
            "SignedData version does not match its SignerInfo",
        ));
    }
    let mut d = Walk::new(digest_algs.value, "digestAlgorithms");
    let only = algorithm(d.expect(SEQUENCE, "digestAlgorithm")?, "digestAlgorithms")?;
    d.end()?;
    if only != signer.digest_alg {
        return Err(malformed(
            "digestAlgorithms is not the one digest algorithm of the signer",
        ));
    }
    Ok(CmsParts {
        econtent_type,
        content,
        certificates,
        parsed_certificates,
        signer,
    })
}

/// BER is accepted where streaming signers write it: the ContentInfo, SignedData and
/// encapContentInfo layers and the (chunked) content. What is signed is signed over its DER,
/// so the certificates and the SignerInfo must arrive in DER: a rewrite would quietly repair
/// them, and a verifier that reads them as sent (OpenSSL keeps the received bytes of a
/// certificate and of a SEQUENCE inside an attribute value) would refuse their signatures.
fn der_where_signed(input: &[u8]) -> Result<()> {
    fn of(element: &[u8]) -> Result<Vec<&[u8]>> {
        crate::ber::elements_of(element).map_err(|e| malformed(format!("CMS: {e}")))
    }
    let ci = of(input)?;
    let content = ci.get(1).ok_or_else(|| malformed("ContentInfo content"))?;
    let sd = of(content)?;
    let sd = sd.first().ok_or_else(|| malformed("SignedData"))?;
    let fields = of(sd)?;
    if let Some(certs) = fields.get(3).filter(|f| f.first() == Some(&CONTEXT_0)) {
        for cert in of(certs)? {
            if !crate::ber::is_der(cert) {
                return Err(malformed("a certificate in the proof is not DER"));
            }
        }
    }
    let signer_infos = fields.last().ok_or_else(|| malformed("signerInfos"))?;
    for signer_info in of(signer_infos)? {
        if !crate::ber::is_der(signer_info) {
            return Err(malformed("the SignerInfo is not DER"));
        }
    }
    Ok(())
}

/// `02 01 01` and `02 01 03`: the versions a SignerInfo (and its SignedData) may carry.
const V1: &[u8] = &[INTEGER, 1, 1];
const V3: &[u8] = &[INTEGER, 1, 3];

/// SignerInfo ::= SEQUENCE { version, sid, digestAlgorithm, signedAttrs [0] IMPLICIT
/// OPTIONAL, signatureAlgorithm, signature, unsignedAttrs [1] IMPLICIT OPTIONAL }.
/// Returns the signer and its version element.
fn signer(info: Tlv<'_>) -> Result<(Signer, &'static [u8])> {
    let mut w = Walk::new(info.value, "SignerInfo");
    let version = w.expect(INTEGER, "version")?;
    let ((sid, sid_tlv), expected_version) = match w.peek() {
        Some(SEQUENCE) => {
            let ias = w.next()?;
            let mut i = Walk::new(ias.value, "issuerAndSerialNumber");
            let issuer = i.expect(SEQUENCE, "issuer")?;
            let serial = i.expect(INTEGER, "serialNumber")?;
            i.end()?;
            let sid = SignerId::IssuerAndSerial {
                issuer: issuer.whole.to_vec(),
                serial: serial.whole.to_vec(),
            };
            ((sid, ias), V1)
        }
        Some(CONTEXT_0_PRIMITIVE) => {
            let ski = w.next()?;
            if ski.value.is_empty() {
                return Err(malformed("SignerInfo: empty subjectKeyIdentifier"));
            }
            ((SignerId::KeyId(ski.value.to_vec()), ski), V3)
        }
        Some(t) => {
            return Err(malformed(format!(
                "SignerInfo: sid has tag {t:#04x}, neither issuerAndSerialNumber nor [0] \
                 subjectKeyIdentifier"
            )));
        }
        None => return Err(malformed("SignerInfo: sid is missing")),
    };
    if version.whole != expected_version {
        return Err(malformed(
            "SignerInfo version does not match its signer identifier form",
        ));
    }
    let digest_alg = algorithm(w.expect(SEQUENCE, "digestAlgorithm")?, "digestAlgorithm")?;
    let signed_attrs = match w.peek() {
        Some(CONTEXT_0) => {
            let attrs = w.next()?;
            let mut der = attrs.whole.to_vec();
            der[0] = SET;
            Some(SignedAttributes::parse(der)?)
        }
        Some(t) if t & !CONSTRUCTED == CONTEXT_0_PRIMITIVE => {
            return Err(malformed(
                "SignerInfo: signedAttrs must be a constructed [0]",
            ));
        }
        _ => None,
    };
    let signature_alg = algorithm(
        w.expect(SEQUENCE, "signatureAlgorithm")?,
        "signatureAlgorithm",
    )?;
    let signature = w.expect(OCTET_STRING, "signature")?.value.to_vec();
    if signature.is_empty() {
        return Err(malformed("SignerInfo: empty signature"));
    }
    if let Some(unsigned) = w.optional(CONTEXT_1)? {
        for (kind, _) in attributes(unsigned.whole, "unsigned attributes")? {
            if SINGLE_VALUED.contains(&kind) {
                return Err(malformed(format!(
                    "attribute {kind} is allowed among the signed attributes only"
                )));
            }
        }
    }
    w.end()?;
    Ok((
        Signer {
            sid,
            sid_der: sid_tlv.whole.to_vec(),
            digest_alg,
            signed_attrs,
            signature_alg,
            signature,
        },
        expected_version,
    ))
}

/// The issuer Name and serial INTEGER of a DER certificate, as whole elements.
fn issuer_and_serial(cert_der: &[u8]) -> Option<(&[u8], &[u8])> {
    let cert = single(cert_der, SEQUENCE, "certificate").ok()?;
    let tbs = Walk::new(cert.value, "certificate")
        .expect(SEQUENCE, "tbsCertificate")
        .ok()?;
    let mut t = Walk::new(tbs.value, "tbsCertificate");
    t.optional(CONTEXT_0).ok()?;
    let serial = t.expect(INTEGER, "serialNumber").ok()?;
    t.expect(SEQUENCE, "signature").ok()?;
    let issuer = t.expect(SEQUENCE, "issuer").ok()?;
    Some((issuer.whole, serial.whole))
}

impl Signer {
    /// Whether `cert_der` is the certificate this signer names: the same issuer Name and serial
    /// (byte for byte), or a subjectKeyIdentifier extension equal to the key identifier.
    pub fn names(&self, cert_der: &[u8]) -> bool {
        match &self.sid {
            SignerId::IssuerAndSerial { issuer, serial } => issuer_and_serial(cert_der)
                .is_some_and(|(i, s)| i == issuer.as_slice() && s == serial.as_slice()),
            SignerId::KeyId(ski) => Certificate::from_der(cert_der).is_ok_and(|cert| {
                cert.tbs_certificate()
                    .get_extension::<x509_cert::ext::pkix::SubjectKeyIdentifier>()
                    .ok()
                    .flatten()
                    .is_some_and(|(_, own)| own.0.as_bytes() == ski.as_slice())
            }),
        }
    }

    /// The sid element with its tag replaced by SET (0x31): the bytes a parser that took the
    /// first `[0]` in the SignerInfo as the signed attributes would verify the signature over.
    pub fn sid_as_set(&self) -> Vec<u8> {
        let mut bytes = self.sid_der.clone();
        bytes[0] = SET;
        bytes
    }
}

impl CmsParts {
    /// The certificate the SignerIdentifier names, among `candidates` (DER).
    pub fn find_signer<'c>(&self, candidates: &'c [Vec<u8>]) -> Option<&'c Vec<u8>> {
        candidates.iter().find(|der| self.signer.names(der))
    }
}

/// Which form of SignerIdentifier the builder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignerIdForm {
    /// issuerAndSerialNumber (SignerInfo version 1), as HiPKI writes it.
    #[default]
    IssuerAndSerial,
    /// subjectKeyIdentifier (SignerInfo version 3), as `openssl cms -sign -keyid` writes it;
    /// the certificate must carry the extension.
    KeyId,
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
    /// How the SignerInfo names the signer's certificate.
    pub signer_id: SignerIdForm,
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
    let (version, sid) = match opts.signer_id {
        SignerIdForm::IssuerAndSerial => (
            CmsVersion::V1,
            SignerIdentifier::IssuerAndSerialNumber(cms::cert::IssuerAndSerialNumber {
                issuer: tbs.issuer().clone(),
                serial_number: tbs.serial_number().clone(),
            }),
        ),
        SignerIdForm::KeyId => {
            let (_, ski) = tbs
                .get_extension::<x509_cert::ext::pkix::SubjectKeyIdentifier>()
                .map_err(|e| {
                    PkiError::new(
                        ErrorCode::CertMalformed,
                        format!("subjectKeyIdentifier: {e}"),
                    )
                })?
                .ok_or_else(|| {
                    PkiError::new(
                        ErrorCode::MissingAttribute,
                        "the signer certificate has no subjectKeyIdentifier",
                    )
                })?;
            (CmsVersion::V3, SignerIdentifier::SubjectKeyIdentifier(ski))
        }
    };
    let signer = SignerInfo {
        version,
        sid,
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
        version,
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

#[cfg(test)]
mod tests {
    use super::SignedAttributes;

    /// `SET { SEQUENCE { OID 1.2.840.113549.1.9.25.3 (randomNonce), SET { values } } }`.
    fn attrs(values: &[u8]) -> Vec<u8> {
        let oid = [
            0x06, 0x0A, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x19, 0x03,
        ];
        let mut set = vec![0x31, values.len() as u8];
        set.extend_from_slice(values);
        let mut seq = vec![0x30, (oid.len() + set.len()) as u8];
        seq.extend_from_slice(&oid);
        seq.extend_from_slice(&set);
        let mut out = vec![0x31, seq.len() as u8];
        out.extend_from_slice(&seq);
        out
    }

    // What a verifier that re-encodes the attributes would sign differently is refused: the
    // signature must cover the one DER encoding of what certreg reads.
    #[test]
    fn signed_attributes_are_one_value_each_in_der() {
        let one = [0x04, 0x02, 0xAB, 0xCD];
        assert!(SignedAttributes::parse(attrs(&one)).is_ok());
        // Two values (here in unsorted order).
        let two = [0x04, 0x01, 0xFF, 0x04, 0x01, 0x00];
        let e = SignedAttributes::parse(attrs(&two)).unwrap_err();
        assert!(e.detail.contains("2 values"), "{e:?}");
        // A constructed UTF8String.
        let constructed = [0x2C, 0x04, 0x0C, 0x02, 0x41, 0x42];
        let e = SignedAttributes::parse(attrs(&constructed)).unwrap_err();
        assert!(e.detail.contains("constructed form"), "{e:?}");
        // A BOOLEAN that is not 00 or FF.
        let boolean = [0x01, 0x01, 0x01];
        let e = SignedAttributes::parse(attrs(&boolean)).unwrap_err();
        assert!(e.detail.contains("invalid value"), "{e:?}");
    }
}
