//! OCSP (RFC 6960) client: request building, response verification, and a plain-HTTP transport.
//!
//! The ASN.1 types are written here on `der` 0.8 because `x509-ocsp` is still on the der 0.7 line.
//! Everything except [`HttpTransport`] is pure: time is an argument and I/O goes through
//! [`OcspTransport`].

use crate::error::{ErrorCode, PkiError, Result};
use crate::oid;
use crate::sig::{self, SigAlg};
use der::asn1::{AnyRef, BitString, GeneralizedTime, Null, OctetString};
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
    produced_at: GeneralizedTime,
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
    this_update: GeneralizedTime,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    next_update: Option<GeneralizedTime>,
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
    revocation_time: GeneralizedTime,
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
    let produced_at = to_offset(&data.produced_at)?;
    let this_update = to_offset(&single.this_update)?;
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
        let next = to_offset(next)?;
        if next < now {
            return Err(PkiError::new(
                ErrorCode::RevocationStale,
                format!("OCSP nextUpdate {next} has passed (now {now})"),
            ));
        }
    }

    if let Some(sent) = nonce {
        check_nonce(data.response_extensions.as_deref(), sent)?;
    }

    match &single.cert_status {
        CertStatus::Good(_) => Ok(OcspStatus::Good),
        CertStatus::Revoked(info) => Ok(OcspStatus::Revoked {
            at: to_offset(&info.revocation_time)?,
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

fn to_offset(t: &GeneralizedTime) -> Result<OffsetDateTime> {
    unix_to_offset(t.to_unix_duration())
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
        let (host, port, path) = parse_http_url(url)?;
        let deadline = Instant::now() + timeout;
        let unavailable =
            |what: String| PkiError::new(ErrorCode::OcspUnavailable, format!("OCSP {url}: {what}"));
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

        let host_header = if port == 80 {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let mut msg = format!(
            "POST {path} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/ocsp-request\r\n\
             Accept: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            request_der.len()
        )
        .into_bytes();
        msg.extend_from_slice(request_der);
        let left = remaining(deadline)
            .ok_or_else(|| unavailable(format!("no answer within {timeout:?}")))?;
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
                    "OCSP {url}: response body of {n} bytes or more exceeds the limit of {max_len} bytes"
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
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn parse_http_url(url: &str) -> Result<(String, u16, String)> {
    let bad = |why: &str| {
        PkiError::new(
            ErrorCode::OcspUnavailable,
            format!("OCSP URL {url:?}: {why}"),
        )
    };
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
