//! Certificate revocation lists held for validation: parsed once, replaced when a newer one of
//! the same issuer and partition arrives (by thisUpdate and cRLNumber), with a generation counter
//! that invalidates cached paths.
//!
//! A CRL is read in one pass over its DER: the revoked serials go into a compact sorted index
//! (one flat byte array per serial length, with the revocation dates beside it), and the raw CRL
//! is kept only until its signature has verified with its issuer's key. A signature is checked
//! once per key and the outcome remembered, so validations look serials up without hashing the
//! list again; a CRL is consulted only for an issuer key its signature verified with.

use crate::error::{ErrorCode, PkiError, Result};
use crate::facts::{dn_string, sha256_hex};
use der::Decode;
use std::borrow::Cow;
use std::sync::Mutex;
use time::OffsetDateTime;
use webpki::{BorrowedCertRevocationList, CertRevocationList};
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
    /// onlyContainsCACerts: the CRL says nothing about end-entity certificates.
    ca_certs_only: bool,
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
    /// cannot honour (indirect CRLs, reason partitions, no fullName), so only the two scope
    /// flags and the fullName URIs are left to read.
    fn from_der(idp: &[u8]) -> Result<Self> {
        let bad = |e: String| crl_err(format!("issuingDistributionPoint: {e}"));
        let mut scope = IdpScope {
            user_certs_only: false,
            ca_certs_only: false,
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
                Some(0x82) => scope.ca_certs_only = contents(field) == [0xFF],
                _ => {}
            }
        }
        Ok(scope)
    }
}

/// The URIs of the cRLDistributionPoints of `cert` that a partitioned CRL may match, as webpki
/// takes them (fullName URIs of points without reasons or cRLIssuer); `None` when it has no
/// such extension.
pub(crate) fn distribution_points(cert: &x509_cert::Certificate) -> Option<Vec<Vec<u8>>> {
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
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

/// Whether `cert` may sign CRLs: it has no keyUsage, or one with cRLSign (as webpki asks of
/// the issuer of a CRL it uses).
pub(crate) fn may_sign_crls(cert: &x509_cert::Certificate) -> bool {
    let Some(ext) = cert
        .tbs_certificate()
        .extensions()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == crate::oid::EXT_KEY_USAGE))
    else {
        return true;
    };
    x509_cert::ext::pkix::KeyUsage::from_der(ext.extn_value.as_bytes())
        .is_ok_and(|ku| ku.crl_sign())
}

/// A certificate of a path, as the CRLs of its issuer are matched against it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CrlSubject<'a> {
    /// The issuer name as webpki gives it (the Name's contents, without its SEQUENCE header).
    pub issuer: &'a [u8],
    /// The serial's INTEGER contents, sign byte included, as CRLs list it.
    pub serial: &'a [u8],
    /// A CA certificate (an intermediate of the path) rather than the end entity.
    pub is_ca: bool,
    /// See [`distribution_points`].
    pub dps: Option<&'a [Vec<u8>]>,
}

/// A CA certificate of a built path, as the checks of its issuer's CRLs read it.
#[derive(Debug, Clone)]
pub(crate) struct PathCa {
    pub cert: std::sync::Arc<crate::facts::ParsedCert>,
    /// The issuer name as webpki gives it (the Name's contents, without its SEQUENCE header).
    pub issuer: Vec<u8>,
    /// The serial's INTEGER contents, sign byte included, as CRLs list it.
    pub serial: Vec<u8>,
    /// DER SubjectPublicKeyInfo: the key that signs the next CA's CRLs.
    pub spki: Vec<u8>,
    pub dps: Option<Vec<Vec<u8>>>,
    /// Whether this CA may sign CRLs (see [`may_sign_crls`]).
    pub crl_sign: bool,
}

impl PathCa {
    pub(crate) fn subject(&self) -> CrlSubject<'_> {
        CrlSubject {
            issuer: &self.issuer,
            serial: &self.serial,
            is_ca: true,
            dps: self.dps.as_deref(),
        }
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

/// The revoked serials of one CRL: for each serial length, the serials of that length sorted
/// and laid end to end in one byte array, with their revocation dates (Unix seconds) in the
/// same order. About (length + 8) bytes per entry; looked up by binary search.
#[derive(Debug, Default)]
struct RevokedSet {
    widths: Vec<Serials>,
}

#[derive(Debug)]
struct Serials {
    width: usize,
    bytes: Vec<u8>,
    dates: Vec<i64>,
}

impl RevokedSet {
    fn build(mut all: Vec<(&[u8], i64)>) -> Self {
        all.sort_unstable_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(b.0)));
        let mut widths = Vec::new();
        let mut rest = all.as_slice();
        while let Some(first) = rest.first() {
            let width = first.0.len();
            let n = rest.partition_point(|e| e.0.len() == width);
            let (same, tail) = rest.split_at(n);
            let mut bytes = Vec::with_capacity(width * n);
            let mut dates = Vec::with_capacity(n);
            for (serial, date) in same {
                bytes.extend_from_slice(serial);
                dates.push(*date);
            }
            widths.push(Serials {
                width,
                bytes,
                dates,
            });
            rest = tail;
        }
        Self { widths }
    }

    /// The revocation date of `serial` (INTEGER contents), if listed.
    fn find(&self, serial: &[u8]) -> Option<i64> {
        let s = self.widths.iter().find(|s| s.width == serial.len())?;
        let (mut lo, mut hi) = (0, s.dates.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = s.bytes.get(mid * s.width..(mid + 1) * s.width)?;
            match at.cmp(serial) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return s.dates.get(mid).copied(),
            }
        }
        None
    }

    /// Bytes held on the heap.
    fn heap_bytes(&self) -> usize {
        self.widths
            .iter()
            .map(|s| s.bytes.capacity() + s.dates.capacity() * 8)
            .sum::<usize>()
            + self.widths.capacity() * std::mem::size_of::<Serials>()
    }
}

/// How many keys a CRL's signature is remembered not to verify with.
const MAX_REFUSED_KEYS: usize = 16;

/// Where a CRL's signature stands: the key it verified with, the keys it did not, and, until it
/// has verified, the signed bytes to check it against a key not tried yet.
#[derive(Debug, Default)]
struct SignatureState {
    /// SHA-256 of the SubjectPublicKeyInfo the signature verified with.
    verified: Option<[u8; 32]>,
    refused: Vec<[u8; 32]>,
    pending: Option<Signed>,
}

/// The CRL as it arrived, where its tbsCertList lies in it, and its signature.
#[derive(Debug)]
struct Signed {
    der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    alg: const_oid::ObjectIdentifier,
    signature: Vec<u8>,
}

fn key_id(spki_der: &[u8]) -> [u8; 32] {
    let mut id = [0u8; 32];
    id.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, spki_der).as_ref());
    id
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
    serials: RevokedSet,
    signature: Mutex<SignatureState>,
}

impl CrlEntry {
    /// Whether `other` is a CRL of the same issuer (by its encoded name) and partition
    /// (issuingDistributionPoint): the only CRL this one may replace or be replaced by.
    pub fn same_scope(&self, other: &CrlEntry) -> bool {
        self.issuer_raw == other.issuer_raw && self.idp == other.idp
    }

    /// Whether this CRL may replace `held`, a CRL of the same issuer and partition: never by one
    /// issued earlier (thisUpdate), nor by one with a lower cRLNumber, nor, issued at the same
    /// time, by one whose number is not higher. A refresh that brings the held CRL again
    /// changes nothing.
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

    /// Whether this CRL speaks for `cert`: it has the same issuer, its partition holds
    /// certificates of that kind (CA or end entity), and, when both name distribution points,
    /// they share a URI (webpki's rule).
    fn covers(&self, cert: &CrlSubject<'_>) -> bool {
        if self.issuer_raw != cert.issuer {
            return false;
        }
        let Some(scope) = &self.scope else {
            return true;
        };
        if scope.user_certs_only && cert.is_ca || scope.ca_certs_only && !cert.is_ca {
            return false;
        }
        match cert.dps {
            None => true,
            Some(points) => points.iter().any(|p| scope.uris.contains(p)),
        }
    }

    /// Whether the CRL's signature verifies with the key of `spki_der`. The outcome is
    /// remembered per key; once the signature has verified with a key, the CRL's bytes are let
    /// go and every other key is refused.
    pub fn signed_by(&self, spki_der: &[u8]) -> bool {
        let key = key_id(spki_der);
        let Ok(mut state) = self.signature.lock() else {
            return false;
        };
        if let Some(verified) = state.verified {
            return verified == key;
        }
        if state.refused.contains(&key) {
            return false;
        }
        let Some(signed) = &state.pending else {
            return false;
        };
        let ok = signed.der.get(signed.tbs.clone()).is_some_and(|tbs| {
            crate::sig::SigAlg::from_oid(signed.alg)
                .and_then(|alg| crate::sig::verify(spki_der, alg, tbs, &signed.signature))
                .is_ok()
        });
        if ok {
            state.verified = Some(key);
            state.pending = None;
        } else if state.refused.len() < MAX_REFUSED_KEYS {
            state.refused.push(key);
        }
        ok
    }

    /// Whether the signature has verified with some key (and the raw CRL been let go).
    pub fn signature_verified(&self) -> bool {
        self.signature
            .lock()
            .is_ok_and(|state| state.verified.is_some())
    }

    /// Heap bytes held for this CRL: the serial index and, while its signature has not yet
    /// verified, the CRL as it arrived.
    pub fn held_bytes(&self) -> usize {
        let pending = self.signature.lock().map_or(0, |s| {
            s.pending
                .as_ref()
                .map_or(0, |p| p.der.capacity() + p.signature.capacity())
        });
        self.serials.heap_bytes() + pending
    }

    /// When `serial` (INTEGER contents, sign byte included) was revoked, if this CRL lists it.
    fn revoked_at(&self, serial: &[u8]) -> Option<OffsetDateTime> {
        let at = self.serials.find(serial)?;
        Some(OffsetDateTime::from_unix_timestamp(at).unwrap_or(self.this_update))
    }

    /// Reads a DER CRL: every field webpki and the typed reader check, every revoked entry
    /// (each one decoded on its own, so no list of decoded entries is ever built), and the
    /// serial index.
    fn parse(der: Vec<u8>) -> Result<Self> {
        let (tbs_range, revoked_seq, stripped) = split_crl(&der)?;
        // The typed reader sees the CRL without its entries; they are read one by one below.
        let parsed = CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&stripped)
            .map_err(|e| crl_err(format!("CRL: {e}")))?;
        drop(stripped);
        let tbs = &parsed.tbs_cert_list;
        let number = crl_number_of(tbs)?;
        let list = CertRevocationList::from(
            BorrowedCertRevocationList::from_der(&der)
                .map_err(|e| crl_err(format!("CRL: {e:?}")))?,
        );
        let CertRevocationList::Borrowed(borrowed) = &list else {
            return Err(crl_err("CRL: not read in place"));
        };
        let mut all: Vec<(&[u8], i64)> = Vec::new();
        for entry in borrowed {
            let entry = entry.map_err(|e| crl_err(format!("CRL: {e:?}")))?;
            all.push((
                entry.serial_number,
                i64::try_from(entry.revocation_date.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        // Each entry through the typed reader too, one at a time.
        let mut count = 0usize;
        if let Some(seq) = revoked_seq {
            let mut rest = contents(&der[seq]);
            while !rest.is_empty() {
                let size = crate::ber::element_size(rest)
                    .map_err(|e| crl_err(format!("CRL revokedCertificates: {e}")))?;
                x509_cert::crl::RevokedCert::<x509_cert::certificate::Rfc5280>::from_der(
                    &rest[..size],
                )
                .map_err(|e| crl_err(format!("CRL: {e}")))?;
                count += 1;
                rest = &rest[size..];
            }
        }
        if count != all.len() {
            return Err(crl_err("CRL: revokedCertificates read two ways differ"));
        }
        // Names and values held to their types, as for certificates.
        crate::ber::check_values(&der).map_err(|e| crl_err(format!("CRL: {e}")))?;
        crate::facts::check_name(&tbs.issuer, "CRL issuer").map_err(|e| crl_err(e.detail))?;
        let serials = RevokedSet::build(all);
        let idp = list.issuing_distribution_point().map(<[u8]>::to_vec);
        let scope = idp.as_deref().map(IdpScope::from_der).transpose()?;
        let issuer_raw = list.issuer().to_vec();
        drop(list);
        let entry = CrlEntry {
            issuer: dn_string(&tbs.issuer),
            this_update: time_of(&tbs.this_update)?,
            next_update: tbs.next_update.as_ref().map(time_of).transpose()?,
            number,
            revoked: count,
            sha256: sha256_hex(&der),
            idp,
            scope,
            issuer_raw,
            serials,
            signature: Mutex::new(SignatureState {
                pending: Some(Signed {
                    tbs: tbs_range,
                    alg: parsed.signature_algorithm.oid,
                    signature: parsed.signature.raw_bytes().to_vec(),
                    der,
                }),
                ..SignatureState::default()
            }),
        };
        Ok(entry)
    }
}

/// Where the tbsCertList lies in the CRL `der` (what the signature covers, as it arrived),
/// where its revokedCertificates element lies (if it has one), and the CRL re-encoded without
/// that element. The offsets are found by walking the element headers; webpki's reading of the
/// whole CRL checks them (DER lengths, nothing trailing).
type Split<'a> = (
    std::ops::Range<usize>,
    Option<std::ops::Range<usize>>,
    Cow<'a, [u8]>,
);

fn split_crl(der: &[u8]) -> Result<Split<'_>> {
    let bad = |e: String| crl_err(format!("CRL: {e}"));
    let outer = crate::ber::elements_of(der).map_err(bad)?;
    let tbs = *outer
        .first()
        .ok_or_else(|| crl_err("CRL: no tbsCertList"))?;
    let offset = |part: &[u8]| part.as_ptr() as usize - der.as_ptr() as usize;
    let tbs_range = offset(tbs)..offset(tbs) + tbs.len();
    if tbs.first() != Some(&0x30) {
        return Err(crl_err("CRL: tbsCertList is not a SEQUENCE"));
    }
    let fields = crate::ber::elements_of(tbs).map_err(bad)?;
    // revokedCertificates is the SEQUENCE that follows thisUpdate (or nextUpdate).
    let revoked = (1..fields.len()).find(|&i| {
        fields[i].first() == Some(&0x30) && matches!(fields[i - 1].first(), Some(0x17 | 0x18))
    });
    let Some(r) = revoked else {
        return Ok((tbs_range, None, Cow::Borrowed(der)));
    };
    let revoked_range = offset(fields[r])..offset(fields[r]) + fields[r].len();
    let body: usize = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != r)
        .map(|(_, f)| f.len())
        .sum();
    let mut new_tbs = Vec::with_capacity(body + 6);
    new_tbs.push(0x30);
    crate::ber::put_length(&mut new_tbs, body);
    for (i, f) in fields.iter().enumerate() {
        if i != r {
            new_tbs.extend_from_slice(f);
        }
    }
    let outer_body = new_tbs.len() + outer[1..].iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(outer_body + 6);
    out.push(0x30);
    crate::ber::put_length(&mut out, outer_body);
    out.extend_from_slice(&new_tbs);
    for part in &outer[1..] {
        out.extend_from_slice(part);
    }
    Ok((tbs_range, Some(revoked_range), Cow::Owned(out)))
}

/// The CRLs in force.
#[derive(Debug, Default)]
pub struct CrlStore {
    /// Shared, so that a refresh can keep a CRL in force without a copy of its index.
    entries: Vec<std::sync::Arc<CrlEntry>>,
    generation: u64,
}

fn crl_err(detail: impl Into<String>) -> PkiError {
    PkiError::new(ErrorCode::RevocationInvalid, detail)
}

fn time_of(t: &x509_cert::time::Time) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.to_unix_duration().as_secs() as i64)
        .map_err(|e| crl_err(format!("CRL time: {e}")))
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl CrlStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a DER (or PEM) CRL and adds it, replacing an older CRL of the same issuer and
    /// partition (see [`CrlEntry::supersedes`]); when the held CRL is kept, it is the one
    /// returned. The signature is checked against the issuer's key when the CRL is first used
    /// with that key (or by [`CrlStore::verify_signatures`]), and only then is the CRL consulted.
    pub fn add(&mut self, input: &[u8]) -> Result<&CrlEntry> {
        Self::check_size(input)?;
        self.add_owned(input.to_vec())
    }

    /// [`CrlStore::add`], taking the bytes (DER or PEM) without copying them.
    pub fn add_owned(&mut self, input: Vec<u8>) -> Result<&CrlEntry> {
        Self::check_size(&input)?;
        let der = if input.starts_with(b"-----BEGIN") {
            let (_, der) =
                der::pem::decode_vec(&input).map_err(|e| crl_err(format!("PEM: {e}")))?;
            der
        } else {
            input
        };
        self.insert(std::sync::Arc::new(CrlEntry::parse(der)?))
    }

    /// Adds a CRL already read (see [`CrlStore::add`]), sharing it rather than copying it.
    pub fn insert(&mut self, entry: std::sync::Arc<CrlEntry>) -> Result<&CrlEntry> {
        let same = self.entries.iter().position(|e| e.same_scope(&entry));
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

    fn check_size(input: &[u8]) -> Result<()> {
        if input.len() > MAX_CRL_BYTES {
            return Err(PkiError::new(
                ErrorCode::InputTooLarge,
                format!("CRL of {} bytes (limit {MAX_CRL_BYTES})", input.len()),
            ));
        }
        Ok(())
    }

    /// Checks the signature of every CRL not verified yet against the keys `issuer_keys` gives
    /// for its issuer name (DER SubjectPublicKeyInfo), so that the raw CRLs whose issuer is
    /// known are let go now rather than at their first use.
    pub fn verify_signatures(&self, issuer_keys: impl Fn(&str) -> Vec<Vec<u8>>) {
        for e in self.entries.iter().filter(|e| !e.signature_verified()) {
            for key in issuer_keys(&e.issuer) {
                if e.signed_by(&key) {
                    break;
                }
            }
        }
    }

    pub fn entries(&self) -> &[std::sync::Arc<CrlEntry>] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<std::sync::Arc<CrlEntry>> {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Changes whenever the set of CRLs changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Heap bytes held for all CRLs (see [`CrlEntry::held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.held_bytes()).sum()
    }

    /// webpki's judgement of `cert` by the CRLs of its issuer (key `issuer_spki`, allowed to
    /// sign CRLs or not), counting only CRLs whose signature verifies with that key: none
    /// covers it → `revocation_unknown`; those that cover it do not verify → `revocation_invalid`;
    /// all that verify are past their nextUpdate → `revocation_stale` when `enforce_next_update`;
    /// the issuer may not sign CRLs → `revocation_invalid`; one lists it → `cert_revoked`.
    /// `Ok(Some(next_update))` when it was judged by stale CRLs only.
    pub(crate) fn check(
        &self,
        cert: &CrlSubject<'_>,
        issuer_spki: &[u8],
        issuer_crl_sign: bool,
        now: OffsetDateTime,
        enforce_next_update: bool,
    ) -> Result<Option<OffsetDateTime>> {
        let covering: Vec<&CrlEntry> = self
            .entries
            .iter()
            .map(|e| &**e)
            .filter(|e| e.covers(cert))
            .collect();
        let Some(first) = covering.first() else {
            return Err(PkiError::new(
                ErrorCode::RevocationUnknown,
                "no CRL of the issuer (and partition) is loaded",
            ));
        };
        let signed: Vec<&CrlEntry> = covering
            .iter()
            .copied()
            .filter(|e| e.signed_by(issuer_spki))
            .collect();
        if signed.is_empty() {
            return Err(crl_err(format!(
                "CRL refused: the CRL of {} does not verify with the issuer's key",
                first.issuer
            )));
        }
        let current = signed
            .iter()
            .any(|e| e.next_update.is_none_or(|next| now < next));
        let stale = if current {
            None
        } else {
            signed.iter().filter_map(|e| e.next_update).max()
        };
        if enforce_next_update && let Some(next) = stale {
            return Err(PkiError::new(
                ErrorCode::RevocationStale,
                format!("the CRL's nextUpdate {} has passed", fmt_time(next)),
            ));
        }
        if !issuer_crl_sign {
            return Err(crl_err("CRL refused: IssuerNotCrlSigner"));
        }
        if signed.iter().any(|e| e.revoked_at(cert.serial).is_some()) {
            return Err(PkiError::new(
                ErrorCode::CertRevoked,
                "listed on the issuer's CRL",
            ));
        }
        Ok(stale)
    }

    /// [`CrlStore::check`] of an end-entity `cert` issued by `issuer`, read from their DER.
    pub(crate) fn check_end_entity(
        &self,
        cert: &crate::facts::ParsedCert,
        issuer: &crate::facts::ParsedCert,
        now: OffsetDateTime,
        enforce_next_update: bool,
    ) -> Result<Option<OffsetDateTime>> {
        let der = pki_types::CertificateDer::from(cert.der.as_slice());
        let ee = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("certificate: {e:?}")))?;
        let dps = distribution_points(&cert.cert);
        let subject = CrlSubject {
            issuer: ee.issuer(),
            serial: ee.serial(),
            is_ca: false,
            dps: dps.as_deref(),
        };
        let crl_sign = may_sign_crls(&issuer.cert);
        self.check(&subject, issuer.spki(), crl_sign, now, enforce_next_update)
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
        let subject = ca.subject();
        let mut stale: Option<(OffsetDateTime, &str)> = None;
        let mut current = false;
        for e in self.entries.iter().filter(|e| e.covers(&subject)) {
            if !e.signed_by(issuer_spki) {
                continue;
            }
            if let Some(at) = e.revoked_at(&ca.serial) {
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
                let at = [&bytes, &signed]
                    .into_iter()
                    .find_map(|b| e.revoked_at(b))?;
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
            .find_map(|e| [&bytes, &signed].into_iter().find_map(|b| e.revoked_at(b)))
    }
}

impl CrlStore {
    /// Makes this store's generation larger than `previous`, so that results cached under an
    /// older store never match this one.
    pub(crate) fn bump_generation_past(&mut self, previous: u64) {
        self.generation = self.generation.max(previous) + 1;
    }
}
