//! Certificate revocation lists held for validation: parsed once, replaced when a newer one of
//! the same issuer and partition arrives (by thisUpdate and cRLNumber), with a generation counter
//! that invalidates cached paths.

use crate::error::{ErrorCode, PkiError, Result};
use crate::facts::{dn_string, sha256_hex};
use der::Decode;
use time::OffsetDateTime;
use webpki::{CertRevocationList, OwnedCertRevocationList};
use x509_cert::crl::CertificateList;

/// CRLs larger than this are refused (GPKI's largest full CRLs are a few MiB).
pub const MAX_CRL_BYTES: usize = 64 * 1024 * 1024;

/// What to do when the only CRL for a certificate is past its `nextUpdate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StalePolicy {
    /// Refuse with `revocation_stale` (the default).
    #[default]
    Reject,
    /// Accept, and report a warning with the validation result.
    Warn,
}

/// The largest cRLNumber RFC 5280 §5.2.3 allows, in octets.
pub const MAX_CRL_NUMBER_OCTETS: usize = 20;

/// A CRL's cRLNumber: a non-negative integer, held as its big-endian magnitude without leading
/// zero bytes (zero is a single `00`), so that numbers of any length compare by value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CrlNumber(Vec<u8>);

impl CrlNumber {
    /// Reads the DER INTEGER a cRLNumber extension holds, refusing a negative number and one
    /// longer than [`MAX_CRL_NUMBER_OCTETS`].
    pub fn from_der(der_bytes: &[u8]) -> Result<Self> {
        let int =
            der::asn1::Int::from_der(der_bytes).map_err(|e| crl_err(format!("cRLNumber: {e}")))?;
        let bytes = int.as_bytes();
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(crl_err("cRLNumber is negative"));
        }
        // DER keeps one 00 before a high first byte, and zero is a lone 00.
        let magnitude = match bytes {
            [0, rest @ ..] if !rest.is_empty() => rest,
            _ => bytes,
        };
        if magnitude.len() > MAX_CRL_NUMBER_OCTETS {
            return Err(crl_err(format!(
                "cRLNumber of {} octets (RFC 5280 allows {MAX_CRL_NUMBER_OCTETS})",
                magnitude.len()
            )));
        }
        Ok(Self(magnitude.to_vec()))
    }

    /// Big-endian magnitude, no leading zero bytes (zero is `[0]`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Ord for CrlNumber {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Without leading zeros, the longer number is the larger one.
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for CrlNumber {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for CrlNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::serial::hex_upper(&self.0))
    }
}

/// The cRLNumber extension of `tbs`, if it has one.
fn crl_number_of(
    tbs: &x509_cert::crl::TbsCertList<x509_cert::certificate::Rfc5280>,
) -> Result<Option<CrlNumber>> {
    let mut found = tbs
        .crl_extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == crate::oid::EXT_CRL_NUMBER);
    let Some(ext) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(crl_err("cRLNumber appears twice"));
    }
    CrlNumber::from_der(ext.extn_value.as_bytes()).map(Some)
}

/// Which certificates a partitioned CRL covers, as its issuingDistributionPoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdpScope {
    /// onlyContainsUserCerts: the CRL says nothing about CA certificates.
    user_certs_only: bool,
    /// URIs of the distributionPoint's fullName.
    uris: Vec<Vec<u8>>,
}

/// The contents of the BER element `tlv`, which `elements_of` has already delimited.
fn contents(tlv: &[u8]) -> &[u8] {
    let header = match tlv.get(1) {
        Some(n) if n & 0x80 != 0 => 2 + usize::from(n & 0x7f),
        _ => 2,
    };
    tlv.get(header..).unwrap_or_default()
}

impl IdpScope {
    /// Reads an IssuingDistributionPoint (RFC 5280 §5.2.5). webpki has already refused what it
    /// cannot honour (indirect CRLs, reason partitions, no fullName), so only onlyContainsUserCerts
    /// and the fullName URIs are left to read (onlyContainsCACerts leaves CAs covered).
    fn from_der(idp: &[u8]) -> Result<Self> {
        let bad = |e: String| crl_err(format!("issuingDistributionPoint: {e}"));
        let mut scope = IdpScope {
            user_certs_only: false,
            uris: Vec::new(),
        };
        for field in crate::ber::elements_of(idp).map_err(bad)? {
            match field.first() {
                // distributionPoint [0] { fullName [0] GeneralNames }
                Some(0xA0) => {
                    for name in crate::ber::elements_of(field).map_err(bad)? {
                        if name.first() != Some(&0xA0) {
                            continue;
                        }
                        for general in crate::ber::elements_of(name).map_err(bad)? {
                            if general.first() == Some(&0x86) {
                                scope.uris.push(contents(general).to_vec());
                            }
                        }
                    }
                }
                Some(0x81) => scope.user_certs_only = contents(field) == [0xFF],
                _ => {}
            }
        }
        Ok(scope)
    }
}

/// A CA certificate of a built path, as the checks of its issuer's CRLs read it.
#[derive(Debug, Clone)]
pub(crate) struct PathCa {
    pub der: Vec<u8>,
    /// The issuer name as webpki gives it (the Name's contents, without its SEQUENCE header).
    pub issuer: Vec<u8>,
    /// The serial's INTEGER contents, sign byte included, as CRLs list it.
    pub serial: Vec<u8>,
    /// DER SubjectPublicKeyInfo: the key that signs the next CA's CRLs.
    pub spki: Vec<u8>,
}

impl PathCa {
    /// The URIs of the certificate's cRLDistributionPoints that a partitioned CRL may match, as
    /// webpki takes them (fullName URIs of points without reasons or cRLIssuer); `None` when it
    /// has no such extension.
    fn distribution_points(&self) -> Option<Vec<Vec<u8>>> {
        use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
        let cert = x509_cert::Certificate::from_der(&self.der).ok()?;
        let ext = cert
            .tbs_certificate()
            .extensions()?
            .iter()
            .find(|e| e.extn_id == crate::oid::EXT_CRL_DISTRIBUTION_POINTS)?;
        let Ok(points) =
            x509_cert::ext::pkix::CrlDistributionPoints::from_der(ext.extn_value.as_bytes())
        else {
            // Present but unreadable: no partition can match it.
            return Some(Vec::new());
        };
        let mut uris = Vec::new();
        for dp in points.0 {
            if dp.reasons.is_some() || dp.crl_issuer.is_some() {
                continue;
            }
            if let Some(DistributionPointName::FullName(names)) = dp.distribution_point {
                for name in names {
                    if let GeneralName::UniformResourceIdentifier(uri) = name {
                        uris.push(uri.as_bytes().to_vec());
                    }
                }
            }
        }
        Some(uris)
    }
}

/// What the CRLs in force say about a CA certificate of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaStatus {
    /// No CRL of its issuer that verifies with the issuer's key covers it.
    NotCovered,
    /// A current CRL covers it and does not list it.
    Good,
    /// Listed as revoked at `at` on a CRL of `crl_issuer`.
    Revoked {
        at: OffsetDateTime,
        crl_issuer: String,
    },
    /// Only CRLs past their nextUpdate cover it (the latest of them expired at `next_update`),
    /// and none lists it.
    Stale {
        next_update: OffsetDateTime,
        crl_issuer: String,
    },
}

/// One CRL and what was read from it.
#[derive(Debug)]
pub struct CrlEntry {
    pub issuer: String,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    /// The cRLNumber, when the CRL has one.
    pub number: Option<CrlNumber>,
    pub revoked: usize,
    pub sha256: String,
    pub(crate) idp: Option<Vec<u8>>,
    /// What the issuingDistributionPoint limits the CRL to (`None`: no such extension).
    scope: Option<IdpScope>,
    pub(crate) issuer_raw: Vec<u8>,
    pub(crate) list: CertRevocationList<'static>,
    /// What the signature covers, and the signature, for [`CrlEntry::signed_by`].
    tbs_der: Vec<u8>,
    sig_alg: const_oid::ObjectIdentifier,
    signature: Vec<u8>,
}

impl CrlEntry {
    /// Whether this CRL may replace `held`, a CRL of the same issuer and partition: never by one
    /// issued earlier (thisUpdate), nor by one with a lower cRLNumber, nor, issued at the same
    /// time, by one whose number is not higher. A refresh that brings the held CRL again
    /// changes nothing.
    /// Whether `other` is a CRL of the same issuer (by its encoded name) and partition
    /// (issuingDistributionPoint): the only CRL this one may replace or be replaced by.
    pub fn same_scope(&self, other: &CrlEntry) -> bool {
        self.issuer_raw == other.issuer_raw && self.idp == other.idp
    }

    pub fn supersedes(&self, held: &CrlEntry) -> bool {
        if self.sha256 == held.sha256 || self.this_update < held.this_update {
            return false;
        }
        match (&self.number, &held.number) {
            (Some(new), Some(old)) => {
                new > old || (new == old && self.this_update > held.this_update)
            }
            _ => true,
        }
    }

    /// Whether this CRL speaks for the CA certificate `ca`: it has the same issuer, its
    /// partition holds CA certificates, and, when both name distribution points, they share a
    /// URI (webpki's rule for the certificates it checks itself).
    fn covers_ca(&self, ca: &PathCa) -> bool {
        if self.issuer_raw != ca.issuer {
            return false;
        }
        let Some(scope) = &self.scope else {
            return true;
        };
        if scope.user_certs_only {
            return false;
        }
        match ca.distribution_points() {
            None => true,
            Some(points) => points.iter().any(|p| scope.uris.contains(p)),
        }
    }

    /// Whether the CRL's signature verifies with the key of `spki_der`.
    pub fn signed_by(&self, spki_der: &[u8]) -> bool {
        crate::sig::SigAlg::from_oid(self.sig_alg)
            .and_then(|alg| crate::sig::verify(spki_der, alg, &self.tbs_der, &self.signature))
            .is_ok()
    }
}

/// The CRLs in force.
#[derive(Debug, Default)]
pub struct CrlStore {
    entries: Vec<CrlEntry>,
    generation: u64,
}

fn crl_err(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::RevocationInvalid, detail)
}

fn time_of(t: &x509_cert::time::Time) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.to_unix_duration().as_secs() as i64)
        .map_err(|e| crl_err(format!("CRL time: {e}")))
}

impl CrlStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a DER (or PEM) CRL and adds it, replacing an older CRL of the same issuer and
    /// partition (see [`CrlEntry::supersedes`]); when the held CRL is kept, it is the one
    /// returned. The signature is checked when the CRL is used, against the issuer in the path.
    pub fn add(&mut self, input: &[u8]) -> Result<&CrlEntry> {
        if input.len() > MAX_CRL_BYTES {
            return Err(PkiError::new(
                ErrorCode::InputTooLarge,
                format!("CRL of {} bytes (limit {MAX_CRL_BYTES})", input.len()),
            ));
        }
        let der = if input.starts_with(b"-----BEGIN") {
            let (_, der) = der::pem::decode_vec(input).map_err(|e| crl_err(format!("PEM: {e}")))?;
            der
        } else {
            input.to_vec()
        };
        let parsed = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der)
            .map_err(|e| crl_err(format!("CRL: {e}")))?;
        let number = crl_number_of(&parsed.tbs_cert_list)?;
        let owned =
            OwnedCertRevocationList::from_der(&der).map_err(|e| crl_err(format!("CRL: {e:?}")))?;
        let list = CertRevocationList::Owned(owned);
        let tbs = &parsed.tbs_cert_list;
        // Names and values held to their types, as for certificates.
        crate::ber::check_values(&der).map_err(|e| crl_err(format!("CRL: {e}")))?;
        crate::facts::check_name(&tbs.issuer, "CRL issuer").map_err(|e| crl_err(e.detail))?;
        // The signature covers the tbsCertList as it arrived, not a re-encoding of it.
        let tbs_der = crate::ber::elements_of(&der)
            .ok()
            .and_then(|fields| fields.first().map(|f| f.to_vec()))
            .ok_or_else(|| crl_err("CRL: no tbsCertList"))?;
        let entry = CrlEntry {
            tbs_der,
            sig_alg: parsed.signature_algorithm.oid,
            signature: parsed.signature.raw_bytes().to_vec(),
            issuer: dn_string(&tbs.issuer),
            this_update: time_of(&tbs.this_update)?,
            next_update: tbs.next_update.as_ref().map(time_of).transpose()?,
            number,
            revoked: tbs.revoked_certificates.as_ref().map_or(0, Vec::len),
            sha256: sha256_hex(&der),
            idp: list.issuing_distribution_point().map(<[u8]>::to_vec),
            scope: list
                .issuing_distribution_point()
                .map(IdpScope::from_der)
                .transpose()?,
            issuer_raw: list.issuer().to_vec(),
            list,
        };
        let same = self
            .entries
            .iter()
            .position(|e| e.issuer_raw == entry.issuer_raw && e.idp == entry.idp);
        let index = match same {
            Some(i) if !entry.supersedes(&self.entries[i]) => i,
            Some(i) => {
                self.entries[i] = entry;
                self.generation += 1;
                i
            }
            None => {
                self.entries.push(entry);
                self.generation += 1;
                self.entries.len() - 1
            }
        };
        Ok(&self.entries[index])
    }

    pub fn entries(&self) -> &[CrlEntry] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<CrlEntry> {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Changes whenever the set of CRLs changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn lists(&self) -> Vec<&CertRevocationList<'static>> {
        self.entries.iter().map(|e| &e.list).collect()
    }

    /// What the CRLs in force say about `ca`, a CA certificate of a built path whose issuer has
    /// the key `issuer_spki`. Only CRLs that verify with that key count: one with the issuer's
    /// name and another key neither revokes nor covers anything. A CRL past its nextUpdate still
    /// revokes what it lists.
    pub(crate) fn ca_status(
        &self,
        ca: &PathCa,
        issuer_spki: &[u8],
        now: OffsetDateTime,
    ) -> CaStatus {
        let mut stale: Option<(OffsetDateTime, &str)> = None;
        let mut current = false;
        for e in self.entries.iter().filter(|e| e.covers_ca(ca)) {
            if !e.signed_by(issuer_spki) {
                continue;
            }
            if let Ok(Some(found)) = e.list.find_serial(&ca.serial) {
                let at =
                    OffsetDateTime::from_unix_timestamp(found.revocation_date.as_secs() as i64)
                        .unwrap_or(e.this_update);
                return CaStatus::Revoked {
                    at,
                    crl_issuer: e.issuer.clone(),
                };
            }
            match e.next_update {
                Some(next) if now >= next => {
                    if stale.is_none_or(|(latest, _)| next > latest) {
                        stale = Some((next, &e.issuer));
                    }
                }
                _ => current = true,
            }
        }
        match stale {
            _ if current => CaStatus::Good,
            Some((next_update, issuer)) => CaStatus::Stale {
                next_update,
                crl_issuer: issuer.to_string(),
            },
            None => CaStatus::NotCovered,
        }
    }

    /// The earliest `nextUpdate` of all CRLs: cached results are not trusted past it.
    pub fn earliest_next_update(&self) -> Option<OffsetDateTime> {
        self.entries.iter().filter_map(|e| e.next_update).min()
    }

    /// When the certificate `serial` of `issuer` was revoked, counting only CRLs whose
    /// signature verifies with one of `issuer_keys` (DER SubjectPublicKeyInfo of CA
    /// certificates with the CRL's issuer name: see `Validator::revoked_at`).
    pub fn is_revoked_signed(
        &self,
        issuer: Option<&str>,
        serial: &crate::serial::CertSerial,
        issuer_keys: impl Fn(&str) -> Vec<Vec<u8>>,
    ) -> Option<OffsetDateTime> {
        let bytes = serial.to_bytes();
        let mut signed = vec![0u8];
        signed.extend_from_slice(&bytes);
        self.entries
            .iter()
            .filter(|e| issuer.is_none_or(|i| e.issuer == i))
            .filter_map(|e| {
                let at = [&bytes, &signed].into_iter().find_map(|b| {
                    let found = e.list.find_serial(b).ok().flatten()?;
                    OffsetDateTime::from_unix_timestamp(found.revocation_date.as_secs() as i64).ok()
                })?;
                issuer_keys(&e.issuer)
                    .iter()
                    .any(|k| e.signed_by(k))
                    .then_some(at)
            })
            .next()
    }

    /// When the certificate `serial` of `issuer` (a distinguished name as [`dn_string`] writes
    /// it, or `None` for any issuer) was revoked, per the CRLs in force. Only the list is read:
    /// the CRL's signature is checked when validation uses it, not here.
    pub fn is_revoked(
        &self,
        issuer: Option<&str>,
        serial: &crate::serial::CertSerial,
    ) -> Option<OffsetDateTime> {
        let bytes = serial.to_bytes();
        // The DER integer may carry a 00 sign byte that the canonical form drops.
        let mut signed = vec![0u8];
        signed.extend_from_slice(&bytes);
        self.entries
            .iter()
            .filter(|e| issuer.is_none_or(|i| e.issuer == i))
            .find_map(|e| {
                [&bytes, &signed].into_iter().find_map(|b| {
                    let found = e.list.find_serial(b).ok().flatten()?;
                    OffsetDateTime::from_unix_timestamp(found.revocation_date.as_secs() as i64).ok()
                })
            })
    }
}

impl CrlStore {
    /// Makes this store's generation larger than `previous`, so that results cached under an
    /// older store never match this one.
    pub(crate) fn bump_generation_past(&mut self, previous: u64) {
        self.generation = self.generation.max(previous) + 1;
    }
}
