//! The ASN.1 of OCSP (RFC 6960 §4.1 and §4.2), written on `der` 0.8 because `x509-ocsp` is still
//! on the der 0.7 line, and the GeneralizedTime of responses read leniently.

use der::asn1::{AnyRef, BitString, Null, OctetString};
use der::{Choice, Enumerated, Reader, Sequence};
use spki::AlgorithmIdentifierOwned;
use time::OffsetDateTime;
use x509_cert::ext::Extensions;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct OcspRequest {
    pub(super) tbs_request: TbsRequest,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct TbsRequest {
    pub(super) request_list: Vec<Request>,
    #[asn1(context_specific = "2", optional = "true", tag_mode = "EXPLICIT")]
    pub(super) request_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct Request {
    pub(super) req_cert: CertId,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct CertId {
    pub(super) hash_algorithm: AlgorithmIdentifierOwned,
    pub(super) issuer_name_hash: OctetString,
    pub(super) issuer_key_hash: OctetString,
    pub(super) serial_number: SerialNumber,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct OcspResponse {
    pub(super) response_status: OcspResponseStatus,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub(super) response_bytes: Option<ResponseBytes>,
}

#[derive(Enumerated, Copy, Clone, Debug, Eq, PartialEq)]
#[repr(u32)]
pub(super) enum OcspResponseStatus {
    Successful = 0,
    MalformedRequest = 1,
    InternalError = 2,
    TryLater = 3,
    SigRequired = 5,
    Unauthorized = 6,
}

impl OcspResponseStatus {
    pub(super) fn name(self) -> &'static str {
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
pub(super) struct ResponseBytes {
    pub(super) response_type: der::asn1::ObjectIdentifier,
    pub(super) response: OctetString,
}

/// BasicOCSPResponse with the parts whose original bytes matter kept raw: the signature covers
/// `tbsResponseData` as sent, and each certificate's signature covers its own `tbsCertificate`.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct BasicOcspResponse<'a> {
    pub(super) tbs_response_data: AnyRef<'a>,
    pub(super) signature_algorithm: AlgorithmIdentifierOwned,
    pub(super) signature: BitString,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub(super) certs: Option<Vec<AnyRef<'a>>>,
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct ResponseData {
    // v1 is the only version; read leniently (DER forbids encoding the default, some do anyway).
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub(super) version: Option<u8>,
    pub(super) responder_id: ResponderId,
    pub(super) produced_at: OcspTime,
    pub(super) responses: Vec<SingleResponse>,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    pub(super) response_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Choice)]
pub(super) enum ResponderId {
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", constructed = "true")]
    ByName(Name),
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", constructed = "true")]
    ByKey(OctetString),
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct SingleResponse {
    pub(super) cert_id: CertId,
    pub(super) cert_status: CertStatus,
    pub(super) this_update: OcspTime,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub(super) next_update: Option<OcspTime>,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "EXPLICIT")]
    pub(super) single_extensions: Option<Extensions>,
}

#[derive(Clone, Debug, Eq, PartialEq, Choice)]
pub(super) enum CertStatus {
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    Good(Null),
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", constructed = "true")]
    Revoked(RevokedInfo),
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT")]
    Unknown(Null),
}

#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(super) struct RevokedInfo {
    pub(super) revocation_time: OcspTime,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub(super) revocation_reason: Option<CrlReason>,
}

/// GeneralizedTime as OCSP responders send it: DER's `YYYYMMDDHHMMSSZ`, or with fractional
/// seconds (`YYYYMMDDHHMMSS.fffZ`), which some responders write and `der`'s type refuses. The
/// fraction is dropped (the freshness windows count whole seconds). The signature covers the
/// response's bytes as sent, so reading leniently changes nothing that is signed.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(super) struct OcspTime(pub(super) OffsetDateTime);

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

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Encode};

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
}
