//! Verification of an OCSP response: signature, responder authorisation, CertID, freshness,
//! nonce and critical extensions.

use super::types::{
    BasicOcspResponse, CertId, CertStatus, OcspResponse, OcspResponseStatus, ResponderId,
    ResponseData,
};
use super::{CertIdHash, OcspAnswer, OcspConfig, OcspStatus};
use crate::error::{ErrorCode, PkiError, Result};
use crate::oid;
use crate::sig::{self, SigAlg};
use der::asn1::{AnyRef, OctetString};
use der::{Decode, Encode, Reader, SliceReader};
use spki::AlgorithmIdentifierOwned;
use std::time::Duration;
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::ExtendedKeyUsage;

/// Verifies an OCSP response for `cert` and returns its status (see the module rules).
pub fn check_response(
    resp_der: &[u8],
    cert: &Certificate,
    issuer: &Certificate,
    cfg: &OcspConfig,
    nonce: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<OcspStatus> {
    check_response_answer(resp_der, cert, issuer, cfg, nonce, now).map(|a| a.status)
}

/// [`check_response`], with the validity window of the answer (for caching it).
pub fn check_response_answer(
    resp_der: &[u8],
    cert: &Certificate,
    issuer: &Certificate,
    cfg: &OcspConfig,
    nonce: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<OcspAnswer> {
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

    let status = match &single.cert_status {
        CertStatus::Good(_) => OcspStatus::Good,
        CertStatus::Revoked(info) => OcspStatus::Revoked {
            at: info.revocation_time.0,
        },
        CertStatus::Unknown(_) => {
            return Err(PkiError::new(
                ErrorCode::CertRevoked,
                "OCSP responder does not know the certificate (treated as revoked)",
            ));
        }
    };
    Ok(OcspAnswer {
        status,
        this_update,
        next_update: single.next_update.map(|n| n.0),
    })
}

fn invalid(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::RevocationInvalid, detail)
}

/// Failures of our own encoding; they cannot be blamed on the responder.
pub(super) fn internal(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::RevocationUnknown, detail)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

pub(super) fn nonce_value(nonce: &[u8]) -> Result<Vec<u8>> {
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

pub(super) fn cert_id(
    cert: &Certificate,
    issuer: &Certificate,
    hash: CertIdHash,
) -> Result<CertId> {
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

/// `t + d`, or `None` past the end of representable time (treated as "never").
fn add(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
}
