//! OCSP (RFC 6960) client: request building, response verification, and a plain-HTTP transport.
//!
//! Everything except [`HttpTransport`] is pure: time is an argument and I/O goes through
//! [`OcspTransport`].
//!
//! `types` holds the ASN.1, `check` the verification of a response, `transport` the HTTP client.

mod check;
#[cfg(test)]
mod tests;
mod transport;
mod types;

pub use check::{check_response, check_response_answer};
pub use transport::{HttpTransport, http_get};

use crate::error::{ErrorCode, PkiError, Result};
use crate::oid;
use check::{cert_id, internal, nonce_value};
use der::Encode;
use der::asn1::OctetString;
use std::time::Duration;
use time::OffsetDateTime;
use types::{OcspRequest, Request, TbsRequest};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::AuthorityInfoAccessSyntax;
use x509_cert::ext::pkix::name::GeneralName;

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

/// A verified answer with the window it is valid in: from `this_update` until `next_update`
/// (none: newer information is always available, so the answer is not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspAnswer {
    pub status: OcspStatus,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
}

/// The DER CertID that asks about `cert` of `issuer` with `hash`: what a response must answer,
/// and the key answers are kept under.
pub fn cert_id_der(cert: &Certificate, issuer: &Certificate, hash: CertIdHash) -> Result<Vec<u8>> {
    cert_id(cert, issuer, hash)?
        .to_der()
        .map_err(|e| internal(format!("encoding the CertID: {e}")))
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

/// Builds a request (with a fresh nonce when configured), posts it, and checks the answer.
pub fn check(
    cert: &Certificate,
    issuer: &Certificate,
    cfg: &OcspConfig,
    transport: &dyn OcspTransport,
    now: OffsetDateTime,
) -> Result<OcspStatus> {
    check_answer(cert, issuer, cfg, transport, now).map(|a| a.status)
}

/// [`check`], with the validity window of the answer.
pub fn check_answer(
    cert: &Certificate,
    issuer: &Certificate,
    cfg: &OcspConfig,
    transport: &dyn OcspTransport,
    now: OffsetDateTime,
) -> Result<OcspAnswer> {
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
    check_response_answer(&body, cert, issuer, cfg, nonce.as_deref(), now)
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
