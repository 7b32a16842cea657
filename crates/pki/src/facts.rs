//! Reading a certificate (DER, PEM, or base64 as the HiPKI agent returns it) into the facts the
//! Taiwan GPKI profile carries: names, subject type, organization identifier, ID last four, ...

use crate::error::{ErrorCode, PkiError, Result};
use crate::oid;
use crate::serial::{CertSerial, hex_upper};
use base64::Engine as _;
use const_oid::ObjectIdentifier;
use der::{Decode, Encode, Tag, Tagged, asn1::AnyRef};
use serde::Serialize;
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, CertificatePolicies, CrlDistributionPoints, ExtendedKeyUsage,
    KeyUsage, name::DistributionPointName, name::GeneralName,
};
use x509_cert::name::Name;

/// Certificates larger than this are refused before parsing (real card certificates are < 3 KiB).
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// Which subjectDirectoryAttributes attribute carries an organization's identifier. A property
/// of the issuing CA, so it is configured on the trust anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgIdAttr {
    /// `2.16.886.1.100.2.102`, an OBJECT IDENTIFIER (GCA, XCA, HCA).
    #[default]
    Oid,
    /// `2.16.886.1.100.2.101`, the 8-digit 統一編號 (MOEACA).
    UniformNumber,
}

/// What certreg knows about one certificate, independent of whether it is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertFacts {
    pub serial: CertSerial,
    pub issuer: String,
    pub subject: String,
    pub cn: Option<String>,
    pub o: Option<String>,
    pub ou: Vec<String>,
    /// The subject's `serialNumber` name attribute (on MOICA cards a 16-digit number that is
    /// neither the national ID nor the certificate serial).
    pub subject_serial_number: Option<String>,
    /// `2.16.886.1.100.2.1` as a dotted OID.
    pub subject_type: Option<String>,
    /// The organization identifier (機關憑證 OID or 統一編號), chosen by [`OrgIdAttr`]; without
    /// anchor configuration `.2.102` is preferred over `.2.101`.
    pub org_identifier: Option<String>,
    /// `2.16.886.1.100.2.102` as found.
    pub org_oid: Option<String>,
    /// `2.16.886.1.100.2.101` as found.
    pub uniform_number: Option<String>,
    /// `2.16.886.1.100.2.51`.
    pub id_last4: Option<String>,
    /// `2.16.886.1.100.2.2` (`primary`, `secondary`, `mobile`).
    pub card_kind: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub key_usage: Vec<&'static str>,
    pub ext_key_usage: Vec<String>,
    pub policies: Vec<String>,
    pub crl_urls: Vec<String>,
    pub ocsp_urls: Vec<String>,
    pub is_ca: bool,
    pub public_key: String,
    pub signature_algorithm: String,
    pub subject_key_id: Option<String>,
    pub authority_key_id: Option<String>,
    /// SHA-256 of the DER certificate, upper-case hex.
    pub sha256: String,
}

impl CertFacts {
    /// The holder's name as the manual shows it: the CN of a person, the unit (last OU, else O,
    /// else CN) of an organization.
    pub fn holder_name(&self) -> Option<&str> {
        if self.is_citizen() {
            return self.cn.as_deref();
        }
        self.ou
            .last()
            .map(String::as_str)
            .or(self.o.as_deref())
            .or(self.cn.as_deref())
    }

    /// The subject type says natural person (自然人).
    pub fn is_citizen(&self) -> bool {
        self.subject_type.as_deref() == Some("2.16.886.1.100.3.1.1")
    }

    /// The subject type lies under the organization arc `2.16.886.1.100.3.2`.
    pub fn is_organization(&self) -> bool {
        self.subject_type
            .as_deref()
            .and_then(|s| s.parse::<ObjectIdentifier>().ok())
            .is_some_and(|o| o.starts_with(oid::SUBJECT_TYPE_ORG_ARC))
    }

    /// Re-reads the organization identifier from the attribute a trust anchor names.
    pub fn set_org_id_attr(&mut self, attr: OrgIdAttr) {
        self.org_identifier = match attr {
            OrgIdAttr::Oid => self.org_oid.clone(),
            OrgIdAttr::UniformNumber => self.uniform_number.clone(),
        };
    }

    /// Whether keyUsage allows signing (digitalSignature or nonRepudiation). A certificate
    /// without keyUsage is unrestricted.
    pub fn can_sign(&self) -> bool {
        self.key_usage.is_empty()
            || self
                .key_usage
                .iter()
                .any(|k| *k == "digitalSignature" || *k == "nonRepudiation")
    }
}

/// A decoded certificate: its DER, the parsed structure, and its facts.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    pub der: Vec<u8>,
    pub cert: Certificate,
    pub facts: CertFacts,
    /// DER SubjectPublicKeyInfo, encoded once.
    spki: Vec<u8>,
}

impl ParsedCert {
    /// Reads DER, PEM, or base64 (with or without line breaks, standard or URL-safe alphabet).
    pub fn from_input(input: &[u8]) -> Result<Self> {
        Self::from_der(decode_input(input)?)
    }

    pub fn from_der(der: Vec<u8>) -> Result<Self> {
        if der.len() > MAX_CERT_BYTES {
            return Err(PkiError::new(
                ErrorCode::InputTooLarge,
                format!(
                    "certificate of {} bytes (limit {MAX_CERT_BYTES})",
                    der.len()
                ),
            ));
        }
        let cert = Certificate::from_der(&der).map_err(|e| {
            PkiError::new(ErrorCode::CertMalformed, format!("not a certificate: {e}"))
        })?;
        // Values the typed decoder takes as ANY (algorithm parameters, name values ...) are
        // held to the rules of their own types too.
        crate::ber::check_values(&der).map_err(|e| malformed("certificate", e))?;
        let facts = facts_of(&cert, &der)?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("public key: {e}")))?;
        Ok(Self {
            der,
            cert,
            facts,
            spki,
        })
    }

    /// DER of the SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Result<Vec<u8>> {
        Ok(self.spki.clone())
    }

    /// DER of the SubjectPublicKeyInfo, borrowed.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }
}

/// Turns DER, PEM or base64 input into DER bytes, refusing oversized input.
pub fn decode_input(input: &[u8]) -> Result<Vec<u8>> {
    // base64 and PEM are 4/3 larger than the DER they carry, plus line breaks.
    if input.len() > MAX_CERT_BYTES * 2 {
        return Err(PkiError::new(
            ErrorCode::InputTooLarge,
            format!(
                "input of {} bytes (limit {})",
                input.len(),
                MAX_CERT_BYTES * 2
            ),
        ));
    }
    if input.first() == Some(&0x30) {
        return Ok(input.to_vec());
    }
    let text = std::str::from_utf8(input)
        .map_err(|_| PkiError::new(ErrorCode::CertMalformed, "neither DER nor text"))?;
    let body: String = if let Some(start) = text.find("-----BEGIN") {
        let rest = &text[start..];
        let after_header = rest.find('\n').map(|i| &rest[i + 1..]).unwrap_or("");
        let end = after_header
            .find("-----END")
            .ok_or_else(|| PkiError::new(ErrorCode::CertMalformed, "PEM without an END line"))?;
        after_header[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect()
    } else {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    };
    if body.is_empty() {
        return Err(PkiError::new(ErrorCode::CertMalformed, "empty input"));
    }
    let unpadded = body.trim_end_matches('=');
    let engine = if unpadded.contains(['-', '_']) {
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    };
    engine
        .decode(unpadded)
        .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("not base64: {e}")))
}

/// SHA-256 of `data` as upper-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex_upper(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn malformed(what: &str, e: impl std::fmt::Display) -> PkiError {
    PkiError::new(ErrorCode::CertMalformed, format!("{what}: {e}"))
}

/// Every value in a name is a directory string that reads as text: the types X.509 names use
/// (and OpenSSL reads), with valid contents. Anything else (a nested structure, an invalid
/// UTF-8 or UTF-16 string) refuses the certificate rather than being shown as hex.
pub(crate) fn check_name(name: &Name, which: &str) -> Result<()> {
    for atv in name.iter() {
        let value = atv.value.to_ref();
        let string_type = matches!(
            value.tag(),
            Tag::Utf8String
                | Tag::PrintableString
                | Tag::Ia5String
                | Tag::NumericString
                | Tag::BmpString
                | Tag::TeletexString
        ) || value.tag().number().value() == 28 && !value.tag().is_constructed();
        if !string_type || any_to_string(value).is_none() {
            return Err(malformed(
                which,
                format!("attribute {} is not a valid directory string", atv.oid),
            ));
        }
    }
    Ok(())
}

fn facts_of(cert: &Certificate, der: &[u8]) -> Result<CertFacts> {
    let tbs = cert.tbs_certificate();
    check_name(tbs.issuer(), "issuer")?;
    check_name(tbs.subject(), "subject")?;
    // A negative serial (RFC 5280 requires positive ones) would read as the positive serial
    // with the same bytes: two certificates, one canonical serial.
    if tbs
        .serial_number()
        .as_bytes()
        .first()
        .is_some_and(|b| b & 0x80 != 0)
    {
        return Err(malformed("serial number", "negative"));
    }
    let serial = CertSerial::from_der_bytes(tbs.serial_number().as_bytes())
        .map_err(|e| malformed("serial number", e))?;
    let subject = tbs.subject();
    let validity = tbs.validity();
    let mut facts = CertFacts {
        serial,
        issuer: dn_string(tbs.issuer()),
        subject: dn_string(subject),
        cn: name_attr(subject, oid::AT_COMMON_NAME)
            .into_iter()
            .next_back(),
        o: name_attr(subject, oid::AT_ORGANIZATION)
            .into_iter()
            .next_back(),
        ou: name_attr(subject, oid::AT_ORG_UNIT),
        subject_serial_number: name_attr(subject, oid::AT_SERIAL_NUMBER).into_iter().next(),
        subject_type: None,
        org_identifier: None,
        org_oid: None,
        uniform_number: None,
        id_last4: None,
        card_kind: None,
        not_before: to_offset(validity.not_before.to_unix_duration())?,
        not_after: to_offset(validity.not_after.to_unix_duration())?,
        key_usage: Vec::new(),
        ext_key_usage: Vec::new(),
        policies: Vec::new(),
        crl_urls: Vec::new(),
        ocsp_urls: Vec::new(),
        is_ca: false,
        public_key: key_description(tbs.subject_public_key_info()),
        signature_algorithm: cert.signature_algorithm().oid.to_string(),
        subject_key_id: None,
        authority_key_id: None,
        sha256: sha256_hex(der),
    };
    for ext in tbs.extensions().map(|e| e.as_slice()).unwrap_or_default() {
        let value = ext.extn_value.as_bytes();
        match ext.extn_id {
            oid::EXT_KEY_USAGE => {
                let ku = KeyUsage::from_der(value).map_err(|e| malformed("keyUsage", e))?;
                facts.key_usage = key_usage_names(&ku);
            }
            oid::EXT_BASIC_CONSTRAINTS => {
                let bc = x509_cert::ext::pkix::BasicConstraints::from_der(value)
                    .map_err(|e| malformed("basicConstraints", e))?;
                facts.is_ca = bc.ca;
            }
            oid::SUBJECT_DIRECTORY_ATTRIBUTES => read_sda(value, &mut facts)?,
            // The remaining extensions are informational: a damaged non-critical one is left
            // out of the facts rather than making the whole certificate unreadable.
            oid::EXT_EXTENDED_KEY_USAGE => {
                if let Ok(eku) = ExtendedKeyUsage::from_der(value) {
                    facts.ext_key_usage = eku.0.iter().map(ToString::to_string).collect();
                }
            }
            oid::EXT_CERT_POLICIES => {
                if let Ok(p) = CertificatePolicies::from_der(value) {
                    facts.policies =
                        p.0.iter()
                            .map(|p| p.policy_identifier.to_string())
                            .collect();
                }
            }
            oid::EXT_CRL_DISTRIBUTION_POINTS => {
                if let Ok(dps) = CrlDistributionPoints::from_der(value) {
                    for dp in &dps.0 {
                        if let Some(DistributionPointName::FullName(names)) = &dp.distribution_point
                        {
                            facts.crl_urls.extend(uris(names));
                        }
                    }
                }
            }
            oid::EXT_AUTHORITY_INFO_ACCESS => {
                if let Ok(aia) = AuthorityInfoAccessSyntax::from_der(value) {
                    for ad in aia.0.iter().filter(|ad| ad.access_method == oid::AD_OCSP) {
                        facts
                            .ocsp_urls
                            .extend(uris(std::slice::from_ref(&ad.access_location)));
                    }
                }
            }
            oid::EXT_SUBJECT_KEY_ID => {
                if let Ok(ski) = x509_cert::ext::pkix::SubjectKeyIdentifier::from_der(value) {
                    facts.subject_key_id = Some(hex_upper(ski.0.as_bytes()));
                }
            }
            oid::EXT_AUTHORITY_KEY_ID => {
                if let Ok(aki) = x509_cert::ext::pkix::AuthorityKeyIdentifier::from_der(value) {
                    facts.authority_key_id = aki.key_identifier.map(|k| hex_upper(k.as_bytes()));
                }
            }
            _ => {}
        }
    }
    facts.org_identifier = facts
        .org_oid
        .clone()
        .or_else(|| facts.uniform_number.clone());
    Ok(facts)
}

fn to_offset(d: std::time::Duration) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(d.as_secs() as i64).map_err(|e| malformed("validity", e))
}

fn uris(names: &[GeneralName]) -> Vec<String> {
    names
        .iter()
        .filter_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

fn key_usage_names(ku: &KeyUsage) -> Vec<&'static str> {
    let checks: [(bool, &'static str); 9] = [
        (ku.digital_signature(), "digitalSignature"),
        (ku.non_repudiation(), "nonRepudiation"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.data_encipherment(), "dataEncipherment"),
        (ku.key_agreement(), "keyAgreement"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
        (ku.encipher_only(), "encipherOnly"),
        (ku.decipher_only(), "decipherOnly"),
    ];
    checks
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, n)| n)
        .collect()
}

fn key_description(spki: &spki::SubjectPublicKeyInfoOwned) -> String {
    match spki.algorithm.oid {
        oid::RSA_ENCRYPTION => {
            // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
            let bits = spki.subject_public_key.raw_bytes();
            let modulus_bits = AnyRef::from_der(bits)
                .ok()
                .and_then(|seq| {
                    seq.sequence(|r| {
                        let m = der::asn1::UintRef::decode(r)?;
                        let _e = der::asn1::UintRef::decode(r)?;
                        Ok::<_, der::Error>(m.as_bytes().len() * 8)
                    })
                    .ok()
                })
                .unwrap_or(0);
            format!("RSA-{modulus_bits}")
        }
        oid::EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            match curve {
                Some(oid::SECP256R1) => "EC-P256".to_string(),
                Some(c) => format!("EC-{c}"),
                None => "EC".to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// subjectDirectoryAttributes, read leniently: real certificates do not always sort their SET OF
/// values the way DER demands, and `der` would refuse or re-sort them.
fn read_sda(value: &[u8], facts: &mut CertFacts) -> Result<()> {
    let outer = AnyRef::from_der(value).map_err(|e| malformed("subjectDirectoryAttributes", e))?;
    if outer.tag() != Tag::Sequence {
        return Err(malformed("subjectDirectoryAttributes", "not a SEQUENCE"));
    }
    let attrs: Vec<(ObjectIdentifier, Vec<AnyRef<'_>>)> = read_all(outer.value(), |attr| {
        if attr.tag() != Tag::Sequence {
            return Err(der::Tag::Sequence.value_error().into());
        }
        let items = read_all(attr.value(), Ok)?;
        let [kind, values] = items.as_slice() else {
            return Err(der::Tag::Sequence.value_error().into());
        };
        let oid = kind.decode_as::<ObjectIdentifier>()?;
        if values.tag() != Tag::Set {
            return Err(der::Tag::Set.value_error().into());
        }
        Ok((oid, read_all(values.value(), Ok)?))
    })
    .map_err(|e: der::Error| malformed("subjectDirectoryAttributes", e))?;
    for (kind, values) in attrs {
        let Some(first) = values.first() else {
            continue;
        };
        let text = any_to_string(*first);
        match kind {
            oid::GPKI_SUBJECT_TYPE => facts.subject_type = text,
            oid::GPKI_ORG_OID => facts.org_oid = text,
            oid::GPKI_UNIFORM_NUMBER => facts.uniform_number = text.map(|t| t.trim().to_string()),
            oid::GPKI_ID_LAST4 => facts.id_last4 = text.map(|t| t.trim().to_ascii_uppercase()),
            oid::GPKI_CARD_KIND => facts.card_kind = text,
            _ => {}
        }
    }
    Ok(())
}

/// Decodes every TLV in `content` with `f`.
fn read_all<'a, T>(
    content: &'a [u8],
    mut f: impl FnMut(AnyRef<'a>) -> der::Result<T>,
) -> der::Result<Vec<T>> {
    let mut reader = der::SliceReader::new(content)?;
    let mut out = Vec::new();
    while !der::Reader::is_finished(&reader) {
        out.push(f(AnyRef::decode(&mut reader)?)?);
    }
    Ok(out)
}

/// A directory string of any ASN.1 string type, or an OBJECT IDENTIFIER, as text.
pub fn any_to_string(any: AnyRef<'_>) -> Option<String> {
    let bytes = any.value();
    match any.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::NumericString => String::from_utf8(bytes.to_vec()).ok(),
        Tag::BmpString => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::TeletexString => Some(bytes.iter().map(|b| *b as char).collect()),
        Tag::ObjectIdentifier => any
            .decode_as::<ObjectIdentifier>()
            .ok()
            .map(|o| o.to_string()),
        // UniversalString (tag 28): UCS-4 big-endian.
        _ if any.tag().number().value() == 28 && !any.tag().is_constructed() => {
            if !bytes.len().is_multiple_of(4) {
                return None;
            }
            bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

fn attr_short_name(o: ObjectIdentifier) -> String {
    match o.to_string().as_str() {
        "2.5.4.6" => "C".into(),
        "2.5.4.10" => "O".into(),
        "2.5.4.11" => "OU".into(),
        "2.5.4.3" => "CN".into(),
        "2.5.4.5" => "serialNumber".into(),
        "2.5.4.7" => "L".into(),
        "2.5.4.8" => "ST".into(),
        "2.5.4.9" => "street".into(),
        "2.5.4.4" => "SN".into(),
        "2.5.4.42" => "GN".into(),
        "2.5.4.12" => "title".into(),
        "1.2.840.113549.1.9.1" => "emailAddress".into(),
        "0.9.2342.19200300.100.1.25" => "DC".into(),
        other => other.into(),
    }
}

/// The name in certificate order, `C=TW, O=行政院, OU=...`, as `openssl -nameopt` shows it.
/// Values that decode to no text are shown as `#` + hex of their DER.
pub fn dn_string(name: &Name) -> String {
    name.iter()
        .map(|atv| {
            let value = any_to_string(atv.value.to_ref()).unwrap_or_else(|| {
                format!("#{}", hex_upper(&atv.value.to_der().unwrap_or_default()))
            });
            format!("{}={}", attr_short_name(atv.oid), value)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every value of one attribute type in a name, in order.
pub fn name_attr(name: &Name, kind: ObjectIdentifier) -> Vec<String> {
    name.iter()
        .filter(|atv| atv.oid == kind)
        .filter_map(|atv| any_to_string(atv.value.to_ref()))
        .collect()
}
