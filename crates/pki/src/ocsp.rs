//! OCSP (RFC 6960) client: request building, response verification, and a plain-HTTP transport.
//!
//! The ASN.1 types are written here on `der` 0.8 because `x509-ocsp` is still on the der 0.7 line.
//! Everything except [`HttpTransport`] is pure: time is an argument and I/O goes through
//! [`OcspTransport`].

use crate::error::{ErrorCode, PkiError, Result};
use crate::oid;
use crate::sig::{self, SigAlg};
use der::asn1::{AnyRef, BitString, Null, OctetString};
use der::{Choice, Decode, Encode, Enumerated, Reader, Sequence, SliceReader};
use spki::AlgorithmIdentifierOwned;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, CrlReason, ExtendedKeyUsage};
use x509_cert::ext::{Extension, Extensions};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

// ---------------------------------------------------------------------------------------------
// ASN.1 (RFC 6960 §4.1 and §4.2)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct OcspRequest {
    tbs_request: TbsRequest,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct TbsRequest {
    request_list: Vec<Request>,
    #[asn1(context_specific = "2", optional = "true", tag_mode = "EXPLICIT")]
    request_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Request {
    req_cert: CertId,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct CertId {
    hash_algorithm: AlgorithmIdentifierOwned,
    issuer_name_hash: OctetString,
    issuer_key_hash: OctetString,
    serial_number: SerialNumber,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct OcspResponse {
    response_status: OcspResponseStatus,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    response_bytes: Option<ResponseBytes>,
}

#[derive(Enumerated, Copy, Clone, Debug, Eq, PartialEq)]
#[repr(u32)]
enum OcspResponseStatus {
    Successful = 0,
    MalformedRequest = 1,
    InternalError = 2,
    TryLater = 3,
    SigRequired = 5,
    Unauthorized = 6,
}

impl OcspResponseStatus {
    fn name(self) -> &'static str {
        match self {
            Self::Successful => "successful",
            Self::MalformedRequest => "malformedRequest",
            Self::InternalError => "internalError",
            Self::TryLater => "tryLater",
            Self::SigRequired => "sigRequired",
            Self::Unauthorized => "unauthorized",
        }
    }
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct ResponseBytes {
    response_type: der::asn1::ObjectIdentifier,
    response: OctetString,
}

/// BasicOCSPResponse with the parts whose original bytes matter kept raw: the signature covers
/// `tbsResponseData` as sent, and each certificate's signature covers its own `tbsCertificate`.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct BasicOcspResponse<'a> {
    tbs_response_data: AnyRef<'a>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    certs: Option<Vec<AnyRef<'a>>>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct ResponseData {
    // v1 is the only version; read leniently (DER forbids encoding the default, some do anyway).
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    version: Option<u8>,
    responder_id: ResponderId,
    produced_at: OcspTime,
    responses: Vec<SingleResponse>,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    response_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Choice)]
enum ResponderId {
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", constructed = "true")]
    ByName(Name),
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", constructed = "true")]
    ByKey(OctetString),
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct SingleResponse {
    cert_id: CertId,
    cert_status: CertStatus,
    this_update: OcspTime,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    next_update: Option<OcspTime>,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    single_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Choice)]
enum CertStatus {
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    Good(Null),
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", constructed = "true")]
    Revoked(RevokedInfo),
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT")]
    Unknown(Null),
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct RevokedInfo {
    revocation_time: OcspTime,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    revocation_reason: Option<CrlReason>,
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// The digest of the CertID in requests (and expected back in responses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertIdHash {
    /// What deployed responders (GPKI's included) expect; CertID hashing is not a signature.
    #[default]
    Sha1,
    Sha256,
}

impl CertIdHash {
    fn oid(self) -> der::asn1::ObjectIdentifier {
        match self {
            Self::Sha1 => oid::SHA1,
            Self::Sha256 => oid::SHA256,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &ring::digest::SHA256,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

/// How certreg asks an OCSP responder and what it accepts back.
#[derive(Clone, Debug)]
pub struct OcspConfig {
    /// Responder URL to use instead of the certificate's AIA OCSP URL.
    pub url_override: Option<String>,
    /// For the whole HTTP exchange.
    pub timeout: Duration,
    pub max_response_bytes: usize,
    /// How old `thisUpdate` may be.
    pub max_age: Duration,
    /// How far in the future `thisUpdate` / `producedAt` may be.
    pub clock_skew: Duration,
    /// Send a nonce and require the response to echo it (replay protection).
    pub require_nonce: bool,
    pub hash: CertIdHash,
}

impl Default for OcspConfig {
    fn default() -> Self {
        Self {
            url_override: None,
            timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            clock_skew: Duration::from_secs(5 * 60),
            require_nonce: true,
            hash: CertIdHash::Sha1,
        }
    }
}

/// What a verified OCSP response says about a certificate. "unknown" is an error, not a status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked { at: OffsetDateTime },
}

/// The one network operation OCSP needs; tests and callers with their own HTTP stack implement it.
pub trait OcspTransport: Send + Sync {
    /// POSTs an application/ocsp-request; returns the body. Must enforce `timeout` and refuse
    /// bodies over `max_len`.
    fn post(
        &self,
        url: &str,
        request_der: &[u8],
        timeout: Duration,
        max_len: usize,
    ) -> Result<Vec<u8>, PkiError>;
}

/// Nonce length: RFC 8954 asks new clients for 32 octets.
const NONCE_LEN: usize = 32;

/// The OCSP URLs of the certificate's Authority Information Access extension, in order.
pub fn ocsp_urls(cert: &Certificate) -> Vec<String> {
    let Ok(Some((_, aia))) = cert
        .tbs_certificate()
        .get_extension::<AuthorityInfoAccessSyntax>()
    else {
        return Vec::new();
    };
    aia.0
        .iter()
        .filter(|ad| ad.access_method == oid::AD_OCSP)
        .filter_map(|ad| match &ad.access_location {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

/// DER OCSPRequest for `cert` (one CertID, unsigned), with a nonce extension when given.
pub fn build_request(
    cert: &Certificate,
    issuer: &Certificate,
    hash: CertIdHash,
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let req_cert = cert_id(cert, issuer, hash)?;
    let request_extensions = match nonce {
        Some(n) => Some(vec![Extension {
            extn_id: oid::OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(nonce_value(n)?)
                .map_err(|e| internal(format!("nonce extension: {e}")))?,
        }]),
        None => None,
    };
    OcspRequest {
        tbs_request: TbsRequest {
            request_list: vec![Request { req_cert }],
            request_extensions,
        },
    }
    .to_der()
    .map_err(|e| internal(format!("encoding the OCSP request: {e}")))
}

/// Verifies an OCSP response for `cert` and returns its status (see the module rules).
pub fn check_response(
    resp_der: &[u8],
    cert: &Certificate,
    issuer: &Certificate,
    cfg: &OcspConfig,
    nonce: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<OcspStatus> {
    if resp_der.len() > cfg.max_response_bytes {
        return Err(PkiError::new(
            ErrorCode::InputTooLarge,
            format!(
                "OCSP response of {} bytes exceeds the limit of {} bytes",
                resp_der.len(),
                cfg.max_response_bytes
            ),
        ));
    }
    let resp = OcspResponse::from_der(resp_der)
        .map_err(|e| invalid(format!("OCSP response does not decode: {e}")))?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(PkiError::new(
            ErrorCode::OcspUnavailable,
            format!("OCSP responder answered {}", resp.response_status.name()),
        ));
    }
    let bytes = resp
        .response_bytes
        .ok_or_else(|| invalid("successful OCSP response without responseBytes"))?;
    if bytes.response_type != oid::OCSP_BASIC {
        return Err(invalid(format!(
            "OCSP response type {} is not id-pkix-ocsp-basic",
            bytes.response_type
        )));
    }
    let basic_der = bytes.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der)
        .map_err(|e| invalid(format!("BasicOCSPResponse does not decode: {e}")))?;
    let tbs_raw = first_element(basic_der)
        .map_err(|e| invalid(format!("BasicOCSPResponse does not decode: {e}")))?;
    let data = ResponseData::from_der(tbs_raw)
        .map_err(|e| invalid(format!("OCSP ResponseData does not decode: {e}")))?;

    if let Some(v) = data.version.filter(|v| *v != 0) {
        return Err(invalid(format!("OCSP ResponseData version {v} is not v1")));
    }
    let certs = basic.certs.as_deref().unwrap_or(&[]);
    let signer_spki = responder_key(&data.responder_id, certs, issuer, now)?;
    let alg = SigAlg::from_oid(basic.signature_algorithm.oid)
        .map_err(|e| invalid(format!("OCSP response signature algorithm: {}", e.detail)))?;
    let signature = basic
        .signature
        .as_bytes()
        .ok_or_else(|| invalid("OCSP response signature has unused bits"))?;
    sig::verify(&signer_spki, alg, tbs_raw, signature)
        .map_err(|e| invalid(format!("OCSP response signature: {}", e.detail)))?;

    let expected = cert_id(cert, issuer, cfg.hash)?;
    let single = data
        .responses
        .iter()
        .find(|s| cert_id_matches(&s.cert_id, &expected))
        .ok_or_else(|| {
            invalid(format!(
                "OCSP response has no SingleResponse for serial {} with {:?} CertID",
                hex(expected.serial_number.as_bytes()),
                cfg.hash
            ))
        })?;

    let latest_ok = add(now, cfg.clock_skew);
    let produced_at = data.produced_at.0;
    let this_update = single.this_update.0;
    if latest_ok.is_some_and(|l| produced_at > l) {
        return Err(invalid(format!(
            "OCSP producedAt {produced_at} is in the future (now {now})"
        )));
    }
    if latest_ok.is_some_and(|l| this_update > l) {
        return Err(invalid(format!(
            "OCSP thisUpdate {this_update} is in the future (now {now})"
        )));
    }
    if add(this_update, cfg.max_age).is_some_and(|limit| limit < now) {
        return Err(PkiError::new(
            ErrorCode::RevocationStale,
            format!(
                "OCSP thisUpdate {this_update} is older than {:?} (now {now})",
                cfg.max_age
            ),
        ));
    }
    if let Some(next) = &single.next_update {
        let next = next.0;
        if next < now {
            return Err(PkiError::new(
                ErrorCode::RevocationStale,
                format!("OCSP nextUpdate {next} has passed (now {now})"),
            ));
        }
    }

    // RFC 5280 semantics: a critical extension we do not understand voids the answer.
    let mut exts = data
        .response_extensions
        .iter()
        .chain(&single.single_extensions)
        .flatten();
    if let Some(e) = exts.find(|e| e.critical && e.extn_id != oid::OCSP_NONCE) {
        return Err(invalid(format!(
            "OCSP response has unsupported critical extension {}",
            e.extn_id
        )));
    }
    if let Some(sent) = nonce {
        check_nonce(data.response_extensions.as_deref(), sent)?;
    }

    match &single.cert_status {
        CertStatus::Good(_) => Ok(OcspStatus::Good),
        CertStatus::Revoked(info) => Ok(OcspStatus::Revoked {
            at: info.revocation_time.0,
        }),
        CertStatus::Unknown(_) => Err(PkiError::new(
            ErrorCode::CertRevoked,
            "OCSP responder does not know the certificate (treated as revoked)",
        )),
    }
}

/// Builds a request (with a fresh nonce when configured), posts it, and checks the answer.
pub fn check(
    cert: &Certificate,
    issuer: &Certificate,
    cfg: &OcspConfig,
    transport: &dyn OcspTransport,
    now: OffsetDateTime,
) -> Result<OcspStatus> {
    let url = match &cfg.url_override {
        Some(u) => u.clone(),
        None => ocsp_urls(cert).into_iter().next().ok_or_else(|| {
            PkiError::new(
                ErrorCode::RevocationUnknown,
                "certificate has no OCSP URL in its Authority Information Access and none is configured",
            )
        })?,
    };
    let nonce = if cfg.require_nonce {
        let mut n = vec![0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n)
            .map_err(|_| internal("no randomness for the OCSP nonce"))?;
        Some(n)
    } else {
        None
    };
    let request = build_request(cert, issuer, cfg.hash, nonce.as_deref())?;
    let body = transport.post(&url, &request, cfg.timeout, cfg.max_response_bytes)?;
    check_response(&body, cert, issuer, cfg, nonce.as_deref(), now)
}

// ---------------------------------------------------------------------------------------------
// Verification helpers
// ---------------------------------------------------------------------------------------------

fn invalid(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::RevocationInvalid, detail)
}

/// Failures of our own encoding; they cannot be blamed on the responder.
fn internal(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::RevocationUnknown, detail)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn nonce_value(nonce: &[u8]) -> Result<Vec<u8>> {
    OctetString::new(nonce)
        .and_then(|o| o.to_der())
        .map_err(|e| internal(format!("nonce: {e}")))
}

/// The raw bytes of the first element inside a DER SEQUENCE (the signed part of signed data).
fn first_element(der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    let first = reader.sequence(|r| {
        let first = r.tlv_bytes()?;
        let rest = r.remaining_len();
        r.drain(rest)?;
        Ok::<_, der::Error>(first)
    })?;
    reader.finish()?;
    Ok(first)
}

fn cert_id(cert: &Certificate, issuer: &Certificate, hash: CertIdHash) -> Result<CertId> {
    let tbs = cert.tbs_certificate();
    if tbs.issuer() != issuer.tbs_certificate().subject() {
        return Err(invalid(
            "the issuer certificate's subject is not the certificate's issuer name",
        ));
    }
    let name_der = tbs
        .issuer()
        .to_der()
        .map_err(|e| internal(format!("encoding the issuer name: {e}")))?;
    let key = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let octets = |v: Vec<u8>| OctetString::new(v).map_err(|e| internal(format!("CertID: {e}")));
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: hash.oid(),
            parameters: Some(der::Any::null()),
        },
        issuer_name_hash: octets(hash.digest(&name_der))?,
        issuer_key_hash: octets(hash.digest(key))?,
        serial_number: tbs.serial_number().clone(),
    })
}

/// Hash parameters may be NULL or absent (both occur in the wild), so only the OID is compared.
fn cert_id_matches(got: &CertId, want: &CertId) -> bool {
    got.hash_algorithm.oid == want.hash_algorithm.oid
        && got.issuer_name_hash == want.issuer_name_hash
        && got.issuer_key_hash == want.issuer_key_hash
        && got.serial_number == want.serial_number
}

fn responder_id_matches(rid: &ResponderId, cert: &Certificate) -> bool {
    let tbs = cert.tbs_certificate();
    match rid {
        ResponderId::ByName(name) => name == tbs.subject(),
        ResponderId::ByKey(hash) => {
            let key = tbs.subject_public_key_info().subject_public_key.raw_bytes();
            hash.as_bytes() == CertIdHash::Sha1.digest(key).as_slice()
        }
    }
}

/// The DER SubjectPublicKeyInfo that must have signed the response: the issuer's, or that of a
/// delegated responder certificate the issuer authorised for OCSP signing (RFC 6960 §4.2.2.2).
fn responder_key(
    rid: &ResponderId,
    certs: &[AnyRef<'_>],
    issuer: &Certificate,
    now: OffsetDateTime,
) -> Result<Vec<u8>> {
    let spki_der = |c: &Certificate| {
        c.tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| invalid(format!("encoding the responder key: {e}")))
    };
    if responder_id_matches(rid, issuer) {
        return spki_der(issuer);
    }
    for raw in certs {
        let raw = raw
            .to_der()
            .map_err(|e| invalid(format!("responder certificate: {e}")))?;
        let cert = Certificate::from_der(&raw)
            .map_err(|e| invalid(format!("responder certificate does not decode: {e}")))?;
        if responder_id_matches(rid, &cert) {
            check_delegate(&raw, &cert, issuer, now)?;
            return spki_der(&cert);
        }
    }
    Err(invalid(
        "OCSP responder ID matches neither the issuer nor a certificate included in the response",
    ))
}

fn check_delegate(
    raw: &[u8],
    cert: &Certificate,
    issuer: &Certificate,
    now: OffsetDateTime,
) -> Result<()> {
    let tbs = cert.tbs_certificate();
    if tbs.issuer() != issuer.tbs_certificate().subject() {
        return Err(invalid(
            "delegated OCSP responder certificate was not issued by the certificate's issuer",
        ));
    }
    let signed = first_element(raw)
        .map_err(|e| invalid(format!("delegated OCSP responder certificate: {e}")))?;
    let alg = SigAlg::from_oid(cert.signature_algorithm().oid).map_err(|e| {
        invalid(format!(
            "delegated OCSP responder certificate: {}",
            e.detail
        ))
    })?;
    let signature = cert
        .signature()
        .as_bytes()
        .ok_or_else(|| invalid("delegated OCSP responder certificate signature has unused bits"))?;
    let issuer_spki = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| invalid(format!("encoding the issuer key: {e}")))?;
    sig::verify(&issuer_spki, alg, signed, signature).map_err(|e| {
        invalid(format!(
            "delegated OCSP responder certificate is not signed by the issuer: {}",
            e.detail
        ))
    })?;
    let eku = tbs
        .get_extension::<ExtendedKeyUsage>()
        .map_err(|e| invalid(format!("delegated OCSP responder extendedKeyUsage: {e}")))?;
    if !eku.is_some_and(|(_, eku)| eku.0.contains(&oid::KP_OCSP_SIGNING)) {
        return Err(invalid(
            "delegated OCSP responder certificate lacks extendedKeyUsage id-kp-OCSPSigning",
        ));
    }
    let validity = tbs.validity();
    let not_before = unix_to_offset(validity.not_before.to_unix_duration())?;
    let not_after = unix_to_offset(validity.not_after.to_unix_duration())?;
    if now < not_before || now > not_after {
        return Err(invalid(format!(
            "delegated OCSP responder certificate is valid from {not_before} to {not_after}, not at {now}"
        )));
    }
    Ok(())
}

fn check_nonce(exts: Option<&[Extension]>, sent: &[u8]) -> Result<()> {
    let echoed = exts
        .unwrap_or(&[])
        .iter()
        .find(|e| e.extn_id == oid::OCSP_NONCE)
        .ok_or_else(|| invalid("OCSP response does not echo the request nonce"))?;
    if echoed.extn_value.as_bytes() != nonce_value(sent)?.as_slice() {
        return Err(invalid(
            "OCSP response nonce differs from the request nonce",
        ));
    }
    Ok(())
}

fn unix_to_offset(d: Duration) -> Result<OffsetDateTime> {
    i64::try_from(d.as_secs())
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| invalid("time out of range"))
}

/// GeneralizedTime as OCSP responders send it: DER's `YYYYMMDDHHMMSSZ`, or with fractional
/// seconds (`YYYYMMDDHHMMSS.fffZ`), which some responders write and `der`'s type refuses. The
/// fraction is dropped (the freshness windows count whole seconds). The signature covers the
/// response's bytes as sent, so reading leniently changes nothing that is signed.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
struct OcspTime(OffsetDateTime);

impl der::FixedTag for OcspTime {
    const TAG: der::Tag = der::Tag::GeneralizedTime;
}

impl<'a> der::DecodeValue<'a> for OcspTime {
    type Error = der::Error;

    fn decode_value<R: Reader<'a>>(reader: &mut R, header: der::Header) -> der::Result<Self> {
        let bytes = reader.read_slice(header.length())?;
        parse_generalized_time(bytes)
            .map(OcspTime)
            .ok_or_else(|| reader.error(der::Tag::GeneralizedTime.value_error()))
    }
}

impl der::EncodeValue for OcspTime {
    fn value_len(&self) -> der::Result<der::Length> {
        Ok(der::Length::new(15))
    }

    fn encode_value(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        let t = self.0;
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        writer.write(text.as_bytes())
    }
}

/// `YYYYMMDDHHMMSS[.f+]Z` in UTC.
fn parse_generalized_time(bytes: &[u8]) -> Option<OffsetDateTime> {
    let (zone, body) = bytes.split_last()?;
    if *zone != b'Z' || body.len() < 14 {
        return None;
    }
    let (whole, fraction) = body.split_at(14);
    if !whole.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !fraction.is_empty()
        && (fraction.len() < 2
            || !matches!(fraction[0], b'.' | b',')
            || !fraction[1..].iter().all(u8::is_ascii_digit))
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| {
        whole[r]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let date = time::Date::from_calendar_date(
        i32::try_from(n(0..4)).ok()?,
        time::Month::try_from(u8::try_from(n(4..6)).ok()?).ok()?,
        u8::try_from(n(6..8)).ok()?,
    )
    .ok()?;
    let at = time::Time::from_hms(
        u8::try_from(n(8..10)).ok()?,
        u8::try_from(n(10..12)).ok()?,
        u8::try_from(n(12..14)).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, at).assume_utc())
}

/// `t + d`, or `None` past the end of representable time (treated as "never").
fn add(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
}

// ---------------------------------------------------------------------------------------------
// HTTP transport
// ---------------------------------------------------------------------------------------------

/// Minimal HTTP/1.1 client over `std::net`, for `http://` URLs only: OCSP responses are signed,
/// and GPKI serves them over plain HTTP.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpTransport;

/// Cap on the status line and headers together.
const MAX_HEAD: usize = 16 * 1024;

impl OcspTransport for HttpTransport {
    fn post(
        &self,
        url: &str,
        request_der: &[u8],
        timeout: Duration,
        max_len: usize,
    ) -> Result<Vec<u8>, PkiError> {
        exchange(
            HttpCall {
                what: "OCSP",
                code: ErrorCode::OcspUnavailable,
                method: "POST",
                headers: "Content-Type: application/ocsp-request\r\nAccept: application/ocsp-response\r\n",
                body: request_der,
            },
            url,
            timeout,
            max_len,
        )
    }
}

/// Fetches an `http://` URL (a CRL distribution point) with the same client: the whole exchange
/// within `timeout`, a body of at most `max_len` bytes. Failures are `revocation_unknown`
/// (a body over the limit `input_too_large`). CRLs are signed, so plain HTTP is enough.
pub fn http_get(url: &str, timeout: Duration, max_len: usize) -> Result<Vec<u8>, PkiError> {
    exchange(
        HttpCall {
            what: "GET",
            code: ErrorCode::RevocationUnknown,
            method: "GET",
            headers: "",
            body: &[],
        },
        url,
        timeout,
        max_len,
    )
}

/// One request of [`exchange`]: what it is for (in messages) and what it sends.
struct HttpCall<'a> {
    what: &'static str,
    code: ErrorCode,
    method: &'static str,
    /// Extra header lines, each ending in CRLF.
    headers: &'static str,
    body: &'a [u8],
}

fn exchange(
    call: HttpCall<'_>,
    url: &str,
    timeout: Duration,
    max_len: usize,
) -> Result<Vec<u8>, PkiError> {
    let request_der = call.body;
    let (host, port, path) = parse_http_url(url, call.code, call.what)?;
    let deadline = Instant::now() + timeout;
    let what = call.what;
    let unavailable = |detail: String| PkiError::new(call.code, format!("{what} {url}: {detail}"));
    let map_io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            unavailable(format!("no answer within {timeout:?}"))
        } else {
            unavailable(e.to_string())
        }
    };
    // Name resolution has no timeout in std; GPKI URLs resolve through the local resolver.
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| unavailable(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut stream = None;
    let mut last_err = unavailable(format!("{host} resolves to no address"));
    for addr in addrs {
        let Some(left) = remaining(deadline) else {
            return Err(unavailable(format!("no answer within {timeout:?}")));
        };
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = map_io(e),
        }
    }
    let mut stream = stream.ok_or(last_err)?;

    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let host_header = if port == 80 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let body_headers = if call.method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", request_der.len())
    };
    let mut msg = format!(
        "{} {path} HTTP/1.1\r\nHost: {host_header}\r\n{}{body_headers}Connection: close\r\n\r\n",
        call.method, call.headers,
    )
    .into_bytes();
    msg.extend_from_slice(request_der);
    let left =
        remaining(deadline).ok_or_else(|| unavailable(format!("no answer within {timeout:?}")))?;
    stream.set_write_timeout(Some(left)).map_err(map_io)?;
    stream.write_all(&msg).map_err(map_io)?;

    let mut conn = Conn {
        stream,
        deadline,
        buf: Vec::new(),
    };
    let head = conn
        .read_head()
        .map_err(|e| e.into_pki(&unavailable, &map_io))?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (proto, code) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !proto.starts_with("HTTP/1.") {
        return Err(unavailable(format!(
            "not an HTTP response: {status_line:?}"
        )));
    }
    if code != "200" {
        return Err(unavailable(format!("HTTP status {}", status_line.trim())));
    }
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| unavailable(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let too_large = |n: usize| {
        PkiError::new(
            ErrorCode::InputTooLarge,
            format!(
                "{what} {url}: response body of {n} bytes or more exceeds the limit of {max_len} bytes"
            ),
        )
    };
    let body = if chunked {
        conn.read_chunked(max_len)
    } else if let Some(n) = content_length {
        if n > max_len {
            return Err(too_large(n));
        }
        conn.read_exact_body(n)
    } else {
        conn.read_to_close(max_len)
    };
    body.map_err(|e| match e {
        HttpErr::TooLarge(n) => too_large(n),
        e => e.into_pki(&unavailable, &map_io),
    })
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn parse_http_url(url: &str, code: ErrorCode, what: &str) -> Result<(String, u16, String)> {
    let bad = |why: &str| PkiError::new(code, format!("{what} URL {url:?}: {why}"));
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') || path.contains(char::is_whitespace) {
        return Err(bad("unsupported characters"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unterminated IPv6 address"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_string(), port, path))
}

enum HttpErr {
    Io(std::io::Error),
    Protocol(String),
    TooLarge(usize),
    Timeout,
}

impl HttpErr {
    fn into_pki(
        self,
        unavailable: &dyn Fn(String) -> PkiError,
        map_io: &dyn Fn(std::io::Error) -> PkiError,
    ) -> PkiError {
        match self {
            Self::Io(e) => map_io(e),
            Self::Protocol(s) => unavailable(s),
            Self::TooLarge(n) => unavailable(format!("{n} bytes is too large")),
            Self::Timeout => map_io(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// A response being read: `buf` holds bytes received but not yet consumed.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes into `buf`; `Ok(0)` at end of stream.
    fn fill(&mut self) -> Result<usize, HttpErr> {
        let left = remaining(self.deadline).ok_or(HttpErr::Timeout)?;
        self.stream
            .set_read_timeout(Some(left))
            .map_err(HttpErr::Io)?;
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HttpErr::Io(e)),
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// Status line and headers, without the blank line.
    fn read_head(&mut self) -> Result<Vec<u8>, HttpErr> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.take(i);
                self.take(4);
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(HttpErr::Protocol("response headers too long".into()));
            }
            if self.fill()? == 0 {
                return Err(HttpErr::Protocol(
                    "connection closed before the end of the headers".into(),
                ));
            }
        }
    }

    fn read_line(&mut self) -> Result<Vec<u8>, HttpErr> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i);
                self.take(2);
                return Ok(line);
            }
            if self.buf.len() > 1024 {
                return Err(HttpErr::Protocol("chunk header too long".into()));
            }
            if self.fill()? == 0 {
                return Err(HttpErr::Protocol(
                    "connection closed inside a chunk header".into(),
                ));
            }
        }
    }

    fn read_exact_body(&mut self, n: usize) -> Result<Vec<u8>, HttpErr> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(HttpErr::Protocol(format!(
                    "connection closed after {} of {n} body bytes",
                    self.buf.len()
                )));
            }
        }
        Ok(self.take(n))
    }

    fn read_to_close(&mut self, max_len: usize) -> Result<Vec<u8>, HttpErr> {
        while self.fill()? > 0 {
            if self.buf.len() > max_len {
                return Err(HttpErr::TooLarge(self.buf.len()));
            }
        }
        if self.buf.len() > max_len {
            return Err(HttpErr::TooLarge(self.buf.len()));
        }
        Ok(std::mem::take(&mut self.buf))
    }

    fn read_chunked(&mut self, max_len: usize) -> Result<Vec<u8>, HttpErr> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| HttpErr::Protocol(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailers are ignored; the body is complete.
                return Ok(body);
            }
            let total = body.len().saturating_add(size);
            if total > max_len {
                return Err(HttpErr::TooLarge(total));
            }
            body.extend(self.read_exact_body(size)?);
            if !self.read_line()?.is_empty() {
                return Err(HttpErr::Protocol("chunk not followed by CRLF".into()));
            }
        }
    }
}

/// OCSP as the validator's online status check: asks the responder about every end-entity
/// certificate after its path and CRL checks passed.
pub struct OcspChecker {
    config: OcspConfig,
    transport: std::sync::Arc<dyn OcspTransport>,
}

impl OcspChecker {
    pub fn new(config: OcspConfig, transport: std::sync::Arc<dyn OcspTransport>) -> Self {
        Self { config, transport }
    }
}

impl crate::validate::OnlineStatus for OcspChecker {
    fn check(
        &self,
        cert: &crate::facts::ParsedCert,
        issuer: &crate::facts::ParsedCert,
        now: OffsetDateTime,
    ) -> Result<(), PkiError> {
        match check(
            &cert.cert,
            &issuer.cert,
            &self.config,
            self.transport.as_ref(),
            now,
        )? {
            OcspStatus::Good => Ok(()),
            OcspStatus::Revoked { at } => Err(PkiError::new(
                ErrorCode::CertRevoked,
                format!("the OCSP responder reports the certificate revoked at {at}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    //! These tests run a real `openssl ocsp` responder over a throwaway CA made with the
    //! `openssl` CLI, so request encoding and response parsing are checked against OpenSSL itself.

    use super::*;
    use der::DecodePem;
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;

    #[test]
    fn times_with_and_without_fractional_seconds() {
        use time::macros::datetime;
        let decode = |text: &str| {
            let mut der = vec![0x18, text.len() as u8];
            der.extend_from_slice(text.as_bytes());
            OcspTime::from_der(&der).map(|t| t.0)
        };
        assert_eq!(
            decode("20260601090000Z").unwrap(),
            datetime!(2026-06-01 09:00:00 UTC)
        );
        assert_eq!(
            decode("20260601090001.123Z").unwrap(),
            datetime!(2026-06-01 09:00:01 UTC)
        );
        assert_eq!(
            decode("20261231235959,5Z").unwrap(),
            datetime!(2026-12-31 23:59:59 UTC)
        );
        for bad in [
            "20260601090000",      // no zone
            "20260601090000+0800", // not UTC
            "202606010900Z",       // no seconds
            "20260601090000.Z",    // empty fraction
            "20260601090000.1aZ",  // not digits
            "20261301090000Z",     // month 13
            "20260230090000Z",     // 30 February
            "20260601250000Z",     // hour 25
            "2026060109000xZ",
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        // Encoded as DER: whole seconds.
        let t = OcspTime(datetime!(2026-06-01 09:00:01 UTC));
        assert_eq!(t.to_der().unwrap()[2..], *b"20260601090001Z");
    }

    struct TestPki {
        dir: PathBuf,
        ca: Certificate,
        leaf: Certificate,
        revoked: Certificate,
        unknown: Certificate,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const EXTENSIONS: &str = "\
[leaf]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
authorityInfoAccess=OCSP;URI:http://ocsp.example.test/ocsp,caIssuers;URI:http://ca.example.test/ca.crt,OCSP;URI:http://127.0.0.1:9/second
[resp]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=OCSPSigning
[noeku]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
";

    /// Serial 1003 ("unknown") is issued by the CA but left out of index.txt on purpose.
    const INDEX: &str = "V\t351231235959Z\t\t1001\tunknown\t/CN=leaf\n\
R\t351231235959Z\t240101000000Z\t1002\tunknown\t/CN=revoked\n\
V\t351231235959Z\t\t2001\tunknown\t/CN=resp\n\
V\t351231235959Z\t\t2002\tunknown\t/CN=noeku\n";

    fn pki() -> &'static TestPki {
        static PKI: OnceLock<TestPki> = OnceLock::new();
        PKI.get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("certreg-ocsp-test-{}", std::process::id()));
            remove_stale_dirs();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ext.cnf"), EXTENSIONS).unwrap();
            std::fs::write(dir.join("index.txt"), INDEX).unwrap();
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "30",
                    "-subj",
                    "/C=TW/O=certreg test/CN=Test OCSP CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
            // One end-entity key for every certificate keeps RSA key generation to two keys.
            openssl(
                &dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    "ee.key",
                ],
            );
            for (name, serial, section) in [
                ("leaf", "0x1001", "leaf"),
                ("revoked", "0x1002", "leaf"),
                ("unknown", "0x1003", "leaf"),
                ("resp", "0x2001", "resp"),
                ("noeku", "0x2002", "noeku"),
            ] {
                let subj = format!("/C=TW/O=certreg test/CN={name}");
                let csr = format!("{name}.csr");
                let pem = format!("{name}.pem");
                openssl(
                    &dir,
                    &[
                        "req", "-new", "-key", "ee.key", "-subj", &subj, "-out", &csr,
                    ],
                );
                openssl(
                    &dir,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                        "-set_serial",
                        serial,
                        "-days",
                        "10",
                        "-extfile",
                        "ext.cnf",
                        "-extensions",
                        section,
                        "-out",
                        &pem,
                    ],
                );
            }
            let load = |n: &str| {
                Certificate::from_pem(std::fs::read(dir.join(format!("{n}.pem"))).unwrap()).unwrap()
            };
            TestPki {
                ca: load("ca"),
                leaf: load("leaf"),
                revoked: load("revoked"),
                unknown: load("unknown"),
                dir,
            }
        })
    }

    /// Test directories outlive their run (the statics holding them are never dropped), so each
    /// run removes those of runs that have ended.
    fn remove_stale_dirs() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("certreg-ocsp-test-") else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// An `openssl ocsp` server process, killed when the test ends.
    struct Responder {
        child: Child,
        url: String,
    }

    impl Drop for Responder {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// `signer`/`key` name files in the PKI directory; `extra` goes to `openssl ocsp` as is.
    fn responder(signer: &str, key: &str, extra: &[&str]) -> Responder {
        let pki = pki();
        // Another process may take the port between our probe and openssl's bind: retry.
        for _ in 0..5 {
            let port = free_port().to_string();
            let mut args = vec![
                "ocsp",
                "-index",
                "index.txt",
                "-port",
                &port,
                "-rsigner",
                signer,
                "-rkey",
                key,
                "-CA",
                "ca.pem",
                "-ignore_err",
            ];
            // Five-minute validity unless the test sets its own.
            if !extra.contains(&"-ndays") {
                args.extend_from_slice(&["-nmin", "5"]);
            }
            args.extend_from_slice(extra);
            let mut child = Command::new("openssl")
                .args(&args)
                .current_dir(&pki.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start openssl ocsp");
            // A bare connect-and-close probe wedges openssl 3.0's responder loop, so readiness
            // comes from its log line instead. The thread keeps draining the pipe afterwards.
            let stderr = child.stderr.take().unwrap();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("waiting for OCSP client connections") {
                        let _ = ready_tx.send(());
                    }
                }
            });
            let r = Responder {
                child,
                url: format!("http://127.0.0.1:{port}/"),
            };
            if ready_rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                return r;
            }
        }
        panic!("openssl ocsp did not start");
    }

    fn cfg(url: &str) -> OcspConfig {
        OcspConfig {
            url_override: Some(url.to_string()),
            ..OcspConfig::default()
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// A raw response from `r` for `cert`, with the given nonce.
    fn fetch(r: &Responder, cert: &Certificate, nonce: Option<&[u8]>) -> Vec<u8> {
        let req = build_request(cert, &pki().ca, CertIdHash::Sha1, nonce).unwrap();
        HttpTransport
            .post(&r.url, &req, Duration::from_secs(5), 64 * 1024)
            .unwrap()
    }

    #[test]
    fn good_leaf_is_good_through_http() {
        let r = responder("resp.pem", "ee.key", &[]);
        let p = pki();
        let status = check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap();
        assert_eq!(status, OcspStatus::Good);
    }

    #[test]
    fn sha256_cert_id_is_answered() {
        let r = responder("resp.pem", "ee.key", &[]);
        let p = pki();
        let c = OcspConfig {
            hash: CertIdHash::Sha256,
            ..cfg(&r.url)
        };
        assert_eq!(
            check(&p.leaf, &p.ca, &c, &HttpTransport, now()).unwrap(),
            OcspStatus::Good
        );
    }

    #[test]
    fn revoked_leaf_is_revoked_with_time() {
        let r = responder("resp.pem", "ee.key", &[]);
        let p = pki();
        let status = check(&p.revoked, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap();
        let at = time::macros::datetime!(2024-01-01 00:00:00 UTC);
        assert_eq!(status, OcspStatus::Revoked { at });
    }

    #[test]
    fn unknown_serial_counts_as_revoked() {
        let r = responder("resp.pem", "ee.key", &[]);
        let p = pki();
        let e = check(&p.unknown, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::CertRevoked);
        assert_eq!(
            e.detail,
            "OCSP responder does not know the certificate (treated as revoked)"
        );
    }

    #[test]
    fn nonce_must_be_echoed_exactly() {
        let r = responder("resp.pem", "ee.key", &[]);
        let p = pki();
        let c = cfg(&r.url);
        let nonce = [7u8; 32];
        let resp = fetch(&r, &p.leaf, Some(&nonce));
        assert_eq!(
            check_response(&resp, &p.leaf, &p.ca, &c, Some(&nonce), now()).unwrap(),
            OcspStatus::Good
        );
        let e = check_response(&resp, &p.leaf, &p.ca, &c, Some(&[8u8; 32]), now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        assert!(e.detail.contains("nonce differs"), "{e}");

        let without = fetch(&r, &p.leaf, None);
        let e = check_response(&without, &p.leaf, &p.ca, &c, Some(&nonce), now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        assert!(e.detail.contains("does not echo"), "{e}");
        // Without a nonce requirement the same response is fine.
        let c = OcspConfig {
            require_nonce: false,
            ..c
        };
        assert_eq!(
            check_response(&without, &p.leaf, &p.ca, &c, None, now()).unwrap(),
            OcspStatus::Good
        );
    }

    #[test]
    fn issuer_signed_response_by_name_and_by_key() {
        let p = pki();
        for extra in [&[][..], &["-resp_key_id"][..]] {
            let r = responder("ca.pem", "ca.key", extra);
            let status = check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap();
            assert_eq!(status, OcspStatus::Good, "{extra:?}");
        }
    }

    #[test]
    fn delegated_responder_by_key_is_accepted() {
        let r = responder("resp.pem", "ee.key", &["-resp_key_id"]);
        let p = pki();
        assert_eq!(
            check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap(),
            OcspStatus::Good
        );
    }

    #[test]
    fn delegated_responder_without_ocsp_signing_eku_is_invalid() {
        let r = responder("noeku.pem", "ee.key", &[]);
        let p = pki();
        let e = check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        assert!(e.detail.contains("OCSPSigning"), "{e}");
    }

    #[test]
    fn expired_delegated_responder_is_invalid() {
        // Responses valid for 30 days, the responder certificate for 10.
        let r = responder("resp.pem", "ee.key", &["-ndays", "30"]);
        let p = pki();
        let c = OcspConfig {
            max_age: Duration::from_secs(40 * 86400),
            ..cfg(&r.url)
        };
        let resp = fetch(&r, &p.leaf, None);
        let ok = check_response(
            &resp,
            &p.leaf,
            &p.ca,
            &c,
            None,
            now() + time::Duration::days(9),
        );
        assert_eq!(ok.unwrap(), OcspStatus::Good);
        let e = check_response(
            &resp,
            &p.leaf,
            &p.ca,
            &c,
            None,
            now() + time::Duration::days(11),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        assert!(e.detail.contains("is valid from"), "{e}");
    }

    #[test]
    fn delegated_responder_certificate_is_required() {
        // Without the responder certificate in the response, the signer cannot be authorised.
        let r = responder("resp.pem", "ee.key", &["-resp_no_certs"]);
        let p = pki();
        let e = check(&p.leaf, &p.ca, &cfg(&r.url), &HttpTransport, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        assert!(e.detail.contains("responder ID matches neither"), "{e}");
    }

    #[test]
    fn response_times_are_enforced() {
        let r = responder("ca.pem", "ca.key", &[]);
        let p = pki();
        let c = cfg(&r.url);
        let resp = fetch(&r, &p.leaf, None);
        let check_at = |c: &OcspConfig, at| check_response(&resp, &p.leaf, &p.ca, c, None, at);

        // -nmin 5: nextUpdate five minutes after thisUpdate.
        let e = check_at(&c, now() + time::Duration::minutes(10)).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationStale);
        assert!(e.detail.contains("nextUpdate"), "{e}");
        // Far in the future, max_age (one day) is exceeded first.
        let e = check_at(&c, now() + time::Duration::days(2)).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationStale);

        let short = OcspConfig {
            max_age: Duration::from_secs(10),
            ..c.clone()
        };
        let e = check_at(&short, now() + time::Duration::minutes(1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationStale);
        assert!(e.detail.contains("older than"), "{e}");

        let e = check_at(&c, now() - time::Duration::hours(1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        assert!(e.detail.contains("in the future"), "{e}");

        // Within the allowed skew the same response is fine.
        assert_eq!(
            check_at(&c, now() - time::Duration::minutes(2)).unwrap(),
            OcspStatus::Good
        );
    }

    /// The body of a plain HTTP/1.0 GET, read to the end of the connection.
    fn http_get(base: &str, path: &str) -> Vec<u8> {
        let addr = base.trim_start_matches("http://").trim_end_matches('/');
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /{path} HTTP/1.0\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let body = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        all[body..].to_vec()
    }

    #[test]
    fn error_status_is_unavailable() {
        let r = responder("resp.pem", "ee.key", &[]);
        let p = pki();
        let c = cfg(&r.url);
        // An OCSPRequest with an empty requestList makes openssl answer malformedRequest. openssl
        // 3.0 only answers it over GET (base64 in the path); POSTed, such a body (or any non-DER
        // body) gets no answer at all, which the client sees as a timeout.
        let resp = http_get(&r.url, "MAQwAjAA");
        let e = check_response(&resp, &p.leaf, &p.ca, &c, None, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
        assert!(e.detail.contains("malformedRequest"), "{e}");

        let unauthorized = [0x30, 0x03, 0x0a, 0x01, 0x06];
        let e = check_response(&unauthorized, &p.leaf, &p.ca, &c, None, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
        assert!(e.detail.contains("unauthorized"), "{e}");
    }

    #[test]
    fn response_for_another_certificate_is_invalid() {
        let r = responder("resp.pem", "ee.key", &[]);
        let p = pki();
        let resp = fetch(&r, &p.leaf, None);
        let c = cfg(&r.url);
        let e = check_response(&resp, &p.revoked, &p.ca, &c, None, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        assert!(e.detail.contains("no SingleResponse"), "{e}");
        // A SHA-1 CertID does not answer a SHA-256 question.
        let sha256 = OcspConfig {
            hash: CertIdHash::Sha256,
            ..c
        };
        let e = check_response(&resp, &p.leaf, &p.ca, &sha256, None, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
    }

    #[test]
    fn damaged_responses_are_errors_without_panics() {
        let r = responder("resp.pem", "ee.key", &[]);
        let p = pki();
        let c = cfg(&r.url);
        let resp = fetch(&r, &p.leaf, None);
        assert!(check_response(&resp, &p.leaf, &p.ca, &c, None, now()).is_ok());

        for len in 0..resp.len() {
            let e = check_response(&resp[..len], &p.leaf, &p.ca, &c, None, now()).unwrap_err();
            assert_eq!(e.code, ErrorCode::RevocationInvalid, "truncated to {len}");
        }
        // Every single-byte change must be caught (or be harmless) without a panic.
        for i in 0..resp.len() {
            let mut bad = resp.clone();
            bad[i] ^= 0x01;
            let _ = check_response(&bad, &p.leaf, &p.ca, &c, None, now());
        }
        // A changed signed byte that still decodes: a seconds digit of producedAt, the first
        // GeneralizedTime in the response.
        let produced = resp.windows(2).position(|w| w == [0x18, 0x0f]).unwrap();
        let mut forged = resp.clone();
        forged[produced + 2 + 13] ^= 0x01;
        let e = check_response(&forged, &p.leaf, &p.ca, &c, None, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        assert!(e.detail.contains("signature"), "{e}");

        let e = check_response(b"garbage", &p.leaf, &p.ca, &c, None, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
        let mut trailing = resp.clone();
        trailing.push(0);
        assert!(check_response(&trailing, &p.leaf, &p.ca, &c, None, now()).is_err());

        let small = OcspConfig {
            max_response_bytes: resp.len() - 1,
            ..c
        };
        let e = check_response(&resp, &p.leaf, &p.ca, &small, None, now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge);
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let p = pki();
        // The leaf is not issued by itself.
        let e = build_request(&p.leaf, &p.leaf, CertIdHash::Sha1, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationInvalid);
    }

    #[test]
    fn ocsp_urls_come_from_aia() {
        let p = pki();
        assert_eq!(
            ocsp_urls(&p.leaf),
            vec![
                "http://ocsp.example.test/ocsp".to_string(),
                "http://127.0.0.1:9/second".into()
            ]
        );
        assert!(ocsp_urls(&p.ca).is_empty());
        let e = check(
            &p.ca,
            &p.ca,
            &OcspConfig::default(),
            &Recorder::default(),
            now(),
        );
        assert_eq!(e.unwrap_err().code, ErrorCode::RevocationUnknown);
    }

    /// Records what `check` posts and answers like an unreachable responder.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<(String, Vec<u8>)>>);

    impl OcspTransport for Recorder {
        fn post(&self, url: &str, req: &[u8], _: Duration, _: usize) -> Result<Vec<u8>> {
            self.0.lock().unwrap().push((url.to_string(), req.to_vec()));
            Err(PkiError::new(ErrorCode::OcspUnavailable, "recorder"))
        }
    }

    #[test]
    fn check_posts_to_the_aia_url_with_a_fresh_nonce() {
        let p = pki();
        let rec = Recorder::default();
        for _ in 0..2 {
            let e = check(&p.leaf, &p.ca, &OcspConfig::default(), &rec, now()).unwrap_err();
            assert_eq!(e.code, ErrorCode::OcspUnavailable);
        }
        let c = OcspConfig {
            require_nonce: false,
            ..OcspConfig::default()
        };
        let _ = check(&p.leaf, &p.ca, &c, &rec, now());
        let sent = rec.0.lock().unwrap().clone();
        let nonces: Vec<_> = sent
            .iter()
            .map(|(url, der)| {
                assert_eq!(url, "http://ocsp.example.test/ocsp");
                let req = OcspRequest::from_der(der).unwrap();
                assert_eq!(req.tbs_request.request_list.len(), 1);
                req.tbs_request.request_extensions.map(|exts| {
                    assert_eq!(exts.len(), 1);
                    assert_eq!(exts[0].extn_id, oid::OCSP_NONCE);
                    let n = OctetString::from_der(exts[0].extn_value.as_bytes()).unwrap();
                    assert_eq!(n.as_bytes().len(), NONCE_LEN);
                    n
                })
            })
            .collect();
        assert!(nonces[0].is_some() && nonces[1].is_some() && nonces[2].is_none());
        assert_ne!(nonces[0], nonces[1]);
    }

    /// Serves one connection with `reply` after reading the request; returns the URL.
    fn fake_server(reply: Vec<u8>, delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/ocsp",
            listener.local_addr().unwrap().port()
        );
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = s.read(&mut buf);
            std::thread::sleep(delay);
            let _ = s.write_all(&reply);
        });
        url
    }

    #[test]
    fn silent_responder_times_out() {
        let url = fake_server(Vec::new(), Duration::from_secs(5));
        let started = Instant::now();
        let e = HttpTransport
            .post(&url, b"x", Duration::from_millis(400), 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable, "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn http_body_size_is_capped() {
        let big = vec![0x41u8; 100_000];
        let mut with_length = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        with_length.extend_from_slice(&big);
        let url = fake_server(with_length, Duration::ZERO);
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 64 * 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{e}");

        let mut to_close = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        to_close.extend_from_slice(&big);
        let url = fake_server(to_close, Duration::ZERO);
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 64 * 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{e}");

        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8000\r\n".to_vec();
        let mut chunked = chunked;
        chunked.extend_from_slice(&big[..0x8000]);
        chunked.extend_from_slice(b"\r\n8000\r\n");
        chunked.extend_from_slice(&big[..0x8000]);
        chunked.extend_from_slice(b"\r\n1\r\nA\r\n0\r\n\r\n");
        let url = fake_server(chunked, Duration::ZERO);
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 64 * 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{e}");
    }

    #[test]
    fn http_bodies_and_statuses() {
        let url = fake_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
                .to_vec(),
            Duration::ZERO,
        );
        assert_eq!(
            HttpTransport
                .post(&url, b"x", Duration::from_secs(5), 1024)
                .unwrap(),
            b"abcde"
        );

        let url = fake_server(
            b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nxyz".to_vec(),
            Duration::ZERO,
        );
        assert_eq!(
            HttpTransport
                .post(&url, b"x", Duration::from_secs(5), 1024)
                .unwrap(),
            b"xyz"
        );

        let url = fake_server(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n".to_vec(),
            Duration::ZERO,
        );
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
        assert!(e.detail.contains("503"), "{e}");

        let url = fake_server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            Duration::ZERO,
        );
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(5), 1024)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);

        let e = HttpTransport
            .post("https://x.test/", b"x", Duration::from_secs(1), 10)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
        // Nothing listens on a port we just released.
        let url = format!("http://127.0.0.1:{}/", free_port());
        let e = HttpTransport
            .post(&url, b"x", Duration::from_secs(1), 10)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OcspUnavailable);
    }

    #[test]
    fn http_get_fetches_a_body_within_its_cap() {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/gca.crl", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    .unwrap();
            }
            requests
        });
        assert_eq!(
            super::http_get(&url, Duration::from_secs(5), 100).unwrap(),
            b"hello"
        );
        let e = super::http_get(&url, Duration::from_secs(5), 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge);
        let requests = server.join().unwrap();
        assert!(
            requests[0].starts_with("GET /gca.crl HTTP/1.1\r\n"),
            "{}",
            requests[0]
        );
        assert!(!requests[0].contains("Content-Length"));
        let e = super::http_get("ftp://x/", Duration::from_secs(1), 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::RevocationUnknown);
    }

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_http_url("http://a.test", ErrorCode::OcspUnavailable, "OCSP").unwrap(),
            ("a.test".into(), 80, "/".into())
        );
        assert_eq!(
            parse_http_url(
                "HTTP://a.test:8080/x/y?z",
                ErrorCode::OcspUnavailable,
                "OCSP"
            )
            .unwrap(),
            ("a.test".into(), 8080, "/x/y?z".into())
        );
        assert_eq!(
            parse_http_url("http://[::1]:81/", ErrorCode::OcspUnavailable, "OCSP").unwrap(),
            ("::1".into(), 81, "/".into())
        );
        assert!(parse_http_url("http://u@a.test/", ErrorCode::OcspUnavailable, "OCSP").is_err());
        assert!(parse_http_url("http://:80/", ErrorCode::OcspUnavailable, "OCSP").is_err());
        assert!(parse_http_url("ftp://a.test/", ErrorCode::OcspUnavailable, "OCSP").is_err());
    }
}
