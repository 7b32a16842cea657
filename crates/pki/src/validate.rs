//! Validation of a card certificate for a role at a given time: path to an anchor of that role
//! (rustls-webpki), validity of every certificate in the path, revocation by CRL and optionally
//! online (OCSP), then the GPKI profile checks webpki does not make (key usage, subject type,
//! required attributes). Validated paths may be cached until revocation data changes.

use crate::anchors::{Anchor, Role, TrustStore};
use crate::certcache::CertCache;
use crate::error::{ErrorCode, PkiError, Result};
use crate::facts::{CertFacts, ParsedCert};
use crate::revocation::{
    CaStatus, CrlStore, CrlSubject, PathCa, StalePolicy, distribution_points, may_sign_crls,
};
use crate::sig::SigAlg;
pub use crate::sigmemo::SIGNATURE_MEMO_CAPACITY;
use crate::sigmemo::{Memoized, SignatureMemo};
use pki_types::{CertificateDer, Der, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyPurposeIdIter};

/// Signature algorithms accepted in certificate paths and CRLs. SHA-1 is absent on purpose.
pub(crate) static PATH_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
];

/// Card certificates carry no EKU, or one naming document signing or e-mail protection: the
/// role is decided by the anchor and the subject type, so any EKU is acceptable here.
struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, _iter: KeyPurposeIdIter<'_, '_>) -> std::result::Result<(), webpki::Error> {
        Ok(())
    }
}

/// An online status check (OCSP) made after the path and CRL checks.
pub trait OnlineStatus: Send + Sync {
    fn check(&self, cert: &ParsedCert, issuer: &ParsedCert, now: OffsetDateTime) -> Result<()>;

    /// [`OnlineStatus::check`] with the issuer as the validator holds it; what the caller is to
    /// be warned about when the certificate is accepted (a CRL used past its nextUpdate) goes
    /// to `warnings`.
    fn check_noting(
        &self,
        cert: &ParsedCert,
        issuer: &Arc<ParsedCert>,
        now: OffsetDateTime,
        _warnings: &mut Vec<String>,
    ) -> Result<()> {
        self.check(cert, issuer, now)
    }

    /// What the check consults, for [`Validated::revocation`] (`ocsp`, `crl`, `crl+ocsp`,
    /// `crl_or_ocsp`).
    fn label(&self) -> &'static str {
        "ocsp"
    }

    /// When the certificate `serial` of `issuer` (a DN as the certificate facts write it, or
    /// `None` for any issuer) was revoked as the check's sources said when it last judged the
    /// certificate; `None` when they did not say so, or it never judged it. Nothing is fetched.
    fn revoked(
        &self,
        _issuer: Option<&str>,
        _serial: &crate::serial::CertSerial,
    ) -> Option<OffsetDateTime> {
        None
    }

    /// [`OnlineStatus::revoked`] after asking the sources again about a certificate judged
    /// before, where what they said has run out at `now` (fetching on the caller's thread).
    fn ask_again(
        &self,
        _issuer: Option<&str>,
        _serial: &crate::serial::CertSerial,
        _now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        None
    }
}

/// How many certificates [`Validator::ask_revocation`] asks about at once: a quarter of the
/// default fetch limit, so card steps keep the rest.
pub const SWEEP_ASKS_AT_ONCE: usize = 4;

/// How revocation is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrlMode {
    /// No CRL check (diagnostics without CRLs; the result carries a warning).
    Off,
    /// A CRL of the certificate's issuer must be present and must not list it (default).
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationOptions {
    pub crl: CrlMode,
    pub stale_crl: StalePolicy,
    /// Demand a CRL for every level of the path. Without it, an intermediate is still judged by
    /// the CRLs of its issuer (an ARL) that are loaded, and accepted when none is.
    pub crl_whole_chain: bool,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        Self {
            crl: CrlMode::Required,
            stale_crl: StalePolicy::Reject,
            crl_whole_chain: false,
        }
    }
}

/// A certificate accepted for a role.
#[derive(Debug, Clone, Serialize)]
pub struct Validated {
    pub role: Role,
    pub anchor: String,
    /// SHA-256 fingerprints from the certificate up to the anchor.
    pub path: Vec<String>,
    /// How revocation was established: `crl`, `ocsp`, `crl+ocsp`, `crl_or_ocsp` (one of
    /// them answered), or `not_checked`.
    pub revocation: &'static str,
    pub warnings: Vec<String>,
    pub facts: CertFacts,
    /// Served from the path cache.
    #[serde(skip)]
    pub cached: bool,
}

struct CacheEntry {
    generation: u64,
    valid_from: OffsetDateTime,
    valid_until: OffsetDateTime,
    result: Validated,
    issuer: Arc<ParsedCert>,
}

/// Upper bound of cached paths; the cache is cleared when it is full (cards are few per agency).
const CACHE_CAPACITY: usize = 10_000;

/// Validates certificates against a trust store and the CRLs in force.
pub struct Validator {
    trust: TrustStore,
    crls: RwLock<Arc<CrlStore>>,
    options: ValidationOptions,
    online: Option<Arc<dyn OnlineStatus>>,
    cache: Option<Mutex<HashMap<(String, Role), CacheEntry>>>,
    /// Parsed certificates by the SHA-256 of their DER (always on: they depend on nothing else).
    certs: CertCache,
    /// Certificate signatures of paths that verified (see [`crate::sigmemo`]).
    signatures: SignatureMemo,
}

fn unix(now: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        now.unix_timestamp().max(0) as u64
    ))
}

impl Validator {
    /// The CRLs whose issuer is a CA of `trust` have their signatures checked here, once.
    pub fn new(trust: TrustStore, crls: CrlStore, options: ValidationOptions) -> Self {
        crls.verify_signatures(|name| trust.keys_named(name));
        Self {
            trust,
            crls: RwLock::new(Arc::new(crls)),
            options,
            online: None,
            cache: None,
            certs: CertCache::default(),
            signatures: SignatureMemo::new(SIGNATURE_MEMO_CAPACITY),
        }
    }

    /// The certificate of exactly these DER bytes, parsed once and then taken from the
    /// validator's certificate cache (see [`CertCache`]).
    pub fn parse_cert(&self, der: &[u8]) -> Result<Arc<ParsedCert>> {
        self.certs.parse(der)
    }

    /// The certificates parsed so far, by the SHA-256 of their DER.
    pub fn cert_cache(&self) -> &CertCache {
        &self.certs
    }

    /// Remembers at most `capacity` verified certificate signatures of paths (the default is
    /// [`SIGNATURE_MEMO_CAPACITY`]); 0 verifies every signature every time.
    pub fn with_signature_memo(mut self, capacity: usize) -> Self {
        self.signatures = SignatureMemo::new(capacity);
        self
    }

    /// How many certificate signatures of paths are remembered as verified (at most
    /// [`SIGNATURE_MEMO_CAPACITY`]).
    pub fn remembered_signatures(&self) -> usize {
        self.signatures.len()
    }

    /// Adds an online status check (OCSP) for every end-entity certificate.
    pub fn with_online(mut self, online: Arc<dyn OnlineStatus>) -> Self {
        self.online = Some(online);
        self
    }

    /// Caches validated paths by certificate fingerprint and role; the cache is dropped
    /// whenever the CRLs change.
    pub fn with_cache(mut self) -> Self {
        self.cache = Some(Mutex::new(HashMap::new()));
        self
    }

    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// How revocation is checked (the health check asks whether a stale CRL refuses cards).
    pub fn options(&self) -> &ValidationOptions {
        &self.options
    }

    pub fn crls(&self) -> Arc<CrlStore> {
        self.crls.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// When the certificate `serial` of `issuer` (a DN as `dn_string` writes it, or `None` for
    /// any issuer) was revoked on a CRL in force whose signature verifies with a CA certificate
    /// of the trust store (anchor or intermediate) named as the CRL's issuer (a CRL from an
    /// unauthenticated download cannot revoke anything by itself), or, with an online check,
    /// as its sources (OCSP, the distribution point's CRL) last said when it judged the
    /// certificate. Nothing is fetched.
    pub fn revoked_at(
        &self,
        issuer: Option<&str>,
        serial: &crate::serial::CertSerial,
    ) -> Option<time::OffsetDateTime> {
        self.crls()
            .is_revoked_signed(issuer, serial, |name| self.trust.keys_named(name))
            .or_else(|| self.online.as_ref()?.revoked(issuer, serial))
    }

    /// Whether the validator has an online check (OCSP or distribution points), whose answers
    /// run out and are worth asking for again ([`Validator::ask_revocation`]).
    pub fn has_online(&self) -> bool {
        self.online.is_some()
    }

    /// Asks the online check again about each of `certs` (issuer as in [`Validator::revoked_at`],
    /// serial) it has judged before, where what its sources said has run out, so that
    /// [`Validator::revoked_at`] gives what they say at `now`; at most
    /// [`SWEEP_ASKS_AT_ONCE`] at a time, each within the fetch timeouts and limit of the check.
    /// Blocks the calling thread. Returns how many of them are revoked.
    pub fn ask_revocation(
        &self,
        certs: &[(Option<String>, crate::serial::CertSerial)],
        now: OffsetDateTime,
    ) -> usize {
        let Some(online) = &self.online else {
            return 0;
        };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let revoked = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..SWEEP_ASKS_AT_ONCE.min(certs.len()) {
                scope.spawn(|| {
                    use std::sync::atomic::Ordering::Relaxed;
                    while let Some((issuer, serial)) = certs.get(next.fetch_add(1, Relaxed)) {
                        if online.ask_again(issuer.as_deref(), serial, now).is_some() {
                            revoked.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        });
        revoked.into_inner()
    }

    /// Replaces the CRLs in force (after a refresh); cached paths are no longer used.
    pub fn replace_crls(&self, mut crls: CrlStore) {
        crls.verify_signatures(|name| self.trust.keys_named(name));
        if let Ok(mut slot) = self.crls.write() {
            // Generations only grow, so a cached entry can never match a newer store by chance.
            crls.bump_generation_past(slot.generation());
            *slot = Arc::new(crls);
        }
        if let Some(cache) = &self.cache
            && let Ok(mut c) = cache.lock()
        {
            c.clear();
        }
    }

    /// Validates `cert` for `role` at `now`. `extra` are intermediates sent with the
    /// certificate (for instance the certificates of a CMS SignedData).
    pub fn validate(
        &self,
        cert: &ParsedCert,
        extra: &[Vec<u8>],
        role: Role,
        now: OffsetDateTime,
    ) -> Result<Validated> {
        let crls = self.crls();
        let key = (cert.facts.sha256.clone(), role);
        if let Some(cache) = &self.cache
            && let Ok(c) = cache.lock()
            && let Some(hit) = c.get(&key)
            && hit.generation == crls.generation()
            && hit.valid_from <= now
            && now < hit.valid_until
        {
            let mut result = hit.result.clone();
            result.cached = true;
            let issuer = hit.issuer.clone();
            drop(c);
            if let Some(online) = &self.online {
                online.check_noting(cert, &issuer, now, &mut result.warnings)?;
            }
            return Ok(result);
        }

        let (mut result, issuer, valid_from, valid_until) =
            self.validate_uncached(cert, extra, role, now, &crls)?;
        // Kept apart from the cached result: the online check is made again on every hit.
        let mut online_warnings = Vec::new();
        if let Some(online) = &self.online {
            online.check_noting(cert, &issuer, now, &mut online_warnings)?;
            result.revocation = match (result.revocation, online.label()) {
                ("crl", "ocsp") => "crl+ocsp",
                (_, label) => label,
            };
            result
                .warnings
                .retain(|w| !w.starts_with("revocation not checked"));
        }
        if let Some(cache) = &self.cache
            && let Ok(mut c) = cache.lock()
        {
            if c.len() >= CACHE_CAPACITY {
                c.clear();
            }
            let valid_until = crls
                .earliest_next_update()
                .map_or(valid_until, |n| n.min(valid_until));
            c.insert(
                key,
                CacheEntry {
                    generation: crls.generation(),
                    valid_from,
                    valid_until,
                    result: result.clone(),
                    issuer,
                },
            );
        }
        result.warnings.extend(online_warnings);
        Ok(result)
    }

    fn validate_uncached(
        &self,
        cert: &ParsedCert,
        extra: &[Vec<u8>],
        role: Role,
        now: OffsetDateTime,
        crls: &CrlStore,
    ) -> Result<(Validated, Arc<ParsedCert>, OffsetDateTime, OffsetDateTime)> {
        // SHA-1 and unknown algorithms get their own code before webpki reports them generically.
        SigAlg::from_oid(cert.cert.signature_algorithm().oid)?;
        if cert.facts.is_ca {
            return Err(PkiError::new(
                ErrorCode::WrongRole,
                "a CA certificate is not a card certificate",
            ));
        }
        let mut warnings = Vec::new();
        let path = match self.build_path(cert, extra, role, now, crls, &mut warnings) {
            Ok(path) => path,
            Err(e) if e.code == ErrorCode::CertUntrusted => {
                // A card of the other kind chains to an anchor of the other role: say so.
                let mut ignored = Vec::new();
                let other = role.other();
                if self.trust.anchors_for(other).next().is_some()
                    && self
                        .build_path(cert, extra, other, now, crls, &mut ignored)
                        .is_ok()
                {
                    return Err(PkiError::new(
                        ErrorCode::WrongRole,
                        format!(
                            "the certificate is {} card, not {} card",
                            article(other),
                            article(role)
                        ),
                    ));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let BuiltPath {
            anchor,
            chain,
            revocation,
        } = path;

        let mut facts = cert.facts.clone();
        if role == Role::Organization {
            facts.set_org_id_attr(anchor.org_id_attr);
        }
        check_profile(&facts, role)?;

        let issuer = match chain.first() {
            Some(ca) => ca.cert.clone(),
            None => self.certs.parse(&anchor.cert.der)?,
        };
        let mut fingerprints = vec![facts.sha256.clone()];
        let mut valid_from = facts.not_before;
        let mut valid_until = facts.not_after;
        for ca in &chain {
            let c = &ca.cert;
            valid_from = valid_from.max(c.facts.not_before);
            valid_until = valid_until.min(c.facts.not_after);
            fingerprints.push(c.facts.sha256.clone());
        }
        valid_from = valid_from.max(anchor.cert.facts.not_before);
        valid_until = valid_until.min(anchor.cert.facts.not_after);
        fingerprints.push(anchor.cert.facts.sha256.clone());
        let result = Validated {
            role,
            anchor: anchor.name.clone(),
            path: fingerprints,
            revocation,
            warnings,
            facts,
            cached: false,
        };
        Ok((result, issuer, valid_from, valid_until))
    }

    fn build_path(
        &self,
        cert: &ParsedCert,
        extra: &[Vec<u8>],
        role: Role,
        now: OffsetDateTime,
        crls: &CrlStore,
        warnings: &mut Vec<String>,
    ) -> Result<BuiltPath<'_>> {
        let anchors: Vec<&Anchor> = self.trust.anchors_for(role).collect();
        if anchors.is_empty() {
            return Err(PkiError::new(
                ErrorCode::CertUntrusted,
                format!(
                    "no trust anchor is configured for the {} role",
                    role.as_str()
                ),
            ));
        }
        let tas: Vec<TrustAnchor<'_>> = anchors
            .iter()
            .map(|a| TrustAnchor {
                subject: Der::from(a.trust_anchor.subject.as_ref()),
                subject_public_key_info: Der::from(a.trust_anchor.subject_public_key_info.as_ref()),
                name_constraints: a
                    .trust_anchor
                    .name_constraints
                    .as_ref()
                    .map(|n| Der::from(n.as_ref())),
            })
            .collect();
        let intermediates: Vec<CertificateDer<'_>> = self
            .trust
            .intermediates()
            .iter()
            .map(|c| CertificateDer::from(c.as_ref()))
            .chain(extra.iter().map(|d| CertificateDer::from(d.as_slice())))
            .collect();
        let der = CertificateDer::from(cert.der.as_slice());
        let ee = EndEntityCert::try_from(&der)
            .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("certificate: {e:?}")))?;

        if self.options.crl == CrlMode::Required && crls.is_empty() {
            return Err(PkiError::new(
                ErrorCode::RevocationUnknown,
                "no CRL is loaded, so revocation cannot be checked",
            ));
        }
        // The path is built by webpki; revocation is judged below from the CRL index, with
        // each CRL's signature checked once per issuer key rather than on every validation.
        let memoized: Vec<Memoized<'_>> = PATH_ALGS
            .iter()
            .map(|inner| Memoized {
                inner: *inner,
                memo: &self.signatures,
            })
            .collect();
        let algs: Vec<&dyn SignatureVerificationAlgorithm> = if self.signatures.enabled() {
            memoized
                .iter()
                .map(|a| a as &dyn SignatureVerificationAlgorithm)
                .collect()
        } else {
            PATH_ALGS.to_vec()
        };
        let path = ee
            .verify_for_usage(&algs, &tas, &intermediates, unix(now), AnyEku, None, None)
            .map_err(map_webpki)?;
        let mut chain = Vec::new();
        for c in path.intermediate_certificates() {
            let parsed = self.certs.parse(c.der().as_ref())?;
            chain.push(PathCa {
                issuer: c.issuer().to_vec(),
                serial: c.serial().to_vec(),
                spki: c.subject_public_key_info().as_ref().to_vec(),
                dps: distribution_points(&parsed.cert),
                crl_sign: may_sign_crls(&parsed.cert),
                cert: parsed,
            });
        }
        let ta = path.anchor();
        let idx = tas
            .iter()
            .position(|t| {
                t.subject == ta.subject && t.subject_public_key_info == ta.subject_public_key_info
            })
            .unwrap_or(0);
        if self.options.crl == CrlMode::Required {
            let anchor = anchors[idx];
            let issuer_of = |i: usize| match chain.get(i) {
                Some(ca) => (ca.spki.as_slice(), ca.crl_sign),
                None => (anchor.cert.spki(), may_sign_crls(&anchor.cert.cert)),
            };
            let ee_dps = distribution_points(&cert.cert);
            let ee_subject = CrlSubject {
                issuer: ee.issuer(),
                serial: ee.serial(),
                is_ca: false,
                dps: ee_dps.as_deref(),
            };
            let (spki, crl_sign) = issuer_of(0);
            self.check_crls(crls, &ee_subject, spki, crl_sign, now, warnings)?;
            if self.options.crl_whole_chain {
                for (i, ca) in chain.iter().enumerate() {
                    let (spki, crl_sign) = issuer_of(i + 1);
                    self.check_crls(crls, &ca.subject(), spki, crl_sign, now, warnings)?;
                }
            } else {
                self.check_path_cas(&chain, anchor, now, crls, warnings)?;
            }
        }
        let revocation = match self.options.crl {
            CrlMode::Off => {
                warnings.push("revocation not checked: no CRL check configured".to_string());
                "not_checked"
            }
            CrlMode::Required => "crl",
        };
        Ok(BuiltPath {
            anchor: anchors[idx],
            chain,
            revocation,
        })
    }

    /// The revocation of one certificate of a path by the CRLs of its issuer (see
    /// [`CrlStore::check`]); with the stale policy `warn`, CRLs past their nextUpdate are used
    /// with a warning.
    fn check_crls(
        &self,
        crls: &CrlStore,
        subject: &CrlSubject<'_>,
        issuer_spki: &[u8],
        issuer_crl_sign: bool,
        now: OffsetDateTime,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        match crls.check(subject, issuer_spki, issuer_crl_sign, now, true) {
            Err(e)
                if e.code == ErrorCode::RevocationStale
                    && self.options.stale_crl == StalePolicy::Warn =>
            {
                crls.check(subject, issuer_spki, issuer_crl_sign, now, false)?;
                warnings.push(format!("accepted with a stale CRL: {}", e.detail));
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// The revocation of the intermediates of a path built with end-entity CRL checks: each is
    /// judged by the CRLs of its issuer (an ARL of the root, for instance) that verify with the
    /// issuer's key, where such CRLs are loaded; an intermediate whose issuer has none loaded is
    /// accepted, since deployments do not load the CRL of every level.
    fn check_path_cas(
        &self,
        chain: &[PathCa],
        anchor: &Anchor,
        now: OffsetDateTime,
        crls: &CrlStore,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        for (i, ca) in chain.iter().enumerate() {
            let issuer_spki = match chain.get(i + 1) {
                Some(up) => up.spki.clone(),
                None => anchor.cert.spki().to_vec(),
            };
            let name = || {
                format!(
                    "{} (serial {})",
                    ca.cert.facts.subject,
                    ca.cert.facts.serial.as_str()
                )
            };
            match crls.ca_status(ca, &issuer_spki, now) {
                CaStatus::Revoked { at, crl_issuer } => {
                    return Err(PkiError::new(
                        ErrorCode::CertRevoked,
                        format!(
                            "the CA certificate {} in the path is listed on the CRL of {crl_issuer}, revoked at {}",
                            name(),
                            fmt_time(at)
                        ),
                    ));
                }
                CaStatus::Stale {
                    next_update,
                    crl_issuer,
                } => {
                    let detail = format!(
                        "the CRL of {crl_issuer} covering the CA certificate {} is past its nextUpdate {}",
                        name(),
                        fmt_time(next_update)
                    );
                    match self.options.stale_crl {
                        StalePolicy::Reject => {
                            return Err(PkiError::new(ErrorCode::RevocationStale, detail));
                        }
                        StalePolicy::Warn => {
                            warnings.push(format!("accepted with a stale CRL: {detail}"));
                        }
                    }
                }
                CaStatus::Good | CaStatus::NotCovered => {}
            }
        }
        Ok(())
    }
}

struct BuiltPath<'a> {
    anchor: &'a Anchor,
    /// Intermediates between the certificate and the anchor, nearest first.
    chain: Vec<PathCa>,
    revocation: &'static str,
}

fn article(role: Role) -> &'static str {
    match role {
        Role::Organization => "an organization",
        Role::Citizen => "a citizen",
    }
}

/// The GPKI profile checks after a path is found.
pub fn check_profile(facts: &CertFacts, role: Role) -> Result<()> {
    if !facts.can_sign() {
        return Err(PkiError::new(
            ErrorCode::KeyUsage,
            format!(
                "keyUsage {} allows neither digitalSignature nor nonRepudiation",
                facts.key_usage.join(",")
            ),
        ));
    }
    let Some(subject_type) = facts.subject_type.as_deref() else {
        return Err(PkiError::new(
            ErrorCode::MissingAttribute,
            "subject type (2.16.886.1.100.2.1) is missing",
        ));
    };
    match role {
        Role::Citizen if facts.is_organization() => {
            return Err(PkiError::new(
                ErrorCode::WrongRole,
                format!("subject type {subject_type} is an organization, not a natural person"),
            ));
        }
        Role::Citizen if !facts.is_citizen() => {
            return Err(PkiError::new(
                ErrorCode::WrongRole,
                format!("subject type {subject_type} is not a natural person"),
            ));
        }
        Role::Organization if facts.is_citizen() => {
            return Err(PkiError::new(
                ErrorCode::WrongRole,
                "subject type is a natural person, not an organization",
            ));
        }
        Role::Organization if !facts.is_organization() => {
            return Err(PkiError::new(
                ErrorCode::WrongRole,
                format!("subject type {subject_type} is not an organization"),
            ));
        }
        _ => {}
    }
    match role {
        Role::Citizen if facts.id_last4.is_none() => Err(PkiError::new(
            ErrorCode::MissingAttribute,
            "ID last four (2.16.886.1.100.2.51) is missing",
        )),
        Role::Citizen if facts.cn.is_none() => Err(PkiError::new(
            ErrorCode::MissingAttribute,
            "subject CN is missing",
        )),
        Role::Organization if facts.org_identifier.is_none() => Err(PkiError::new(
            ErrorCode::MissingAttribute,
            "organization identifier (2.16.886.1.100.2.102 / .2.101, as the anchor says) is missing",
        )),
        _ => Ok(()),
    }
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn fmt_unix(t: UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(t.as_secs() as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.as_secs().to_string())
}

/// webpki's reasons, in certreg's stable codes.
#[allow(deprecated)] // webpki may still return the variants it deprecated
pub(crate) fn map_webpki(e: webpki::Error) -> PkiError {
    use webpki::Error as E;
    let (code, detail) = match &e {
        E::CertExpired { not_after, .. } => (
            ErrorCode::CertExpired,
            format!(
                "a certificate in the path expired at {}",
                fmt_unix(*not_after)
            ),
        ),
        E::CertNotValidYet { not_before, .. } => (
            ErrorCode::CertNotYetValid,
            format!(
                "a certificate in the path is valid from {}",
                fmt_unix(*not_before)
            ),
        ),
        E::CertRevoked => (
            ErrorCode::CertRevoked,
            "listed on the issuer's CRL".to_string(),
        ),
        E::CrlExpired { next_update, .. } => (
            ErrorCode::RevocationStale,
            format!("the CRL's nextUpdate {} has passed", fmt_unix(*next_update)),
        ),
        E::UnknownRevocationStatus => (
            ErrorCode::RevocationUnknown,
            "no CRL of the issuer (and partition) is loaded".to_string(),
        ),
        E::InvalidCrlSignatureForPublicKey
        | E::UnsupportedCrlSignatureAlgorithm
        | E::UnsupportedCrlSignatureAlgorithmContext(_)
        | E::UnsupportedCrlSignatureAlgorithmForPublicKey
        | E::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_)
        | E::IssuerNotCrlSigner
        | E::InvalidCrlNumber
        | E::UnsupportedCrlVersion
        | E::UnsupportedDeltaCrl
        | E::UnsupportedIndirectCrl
        | E::UnsupportedCrlIssuingDistributionPoint
        | E::UnsupportedRevocationReason
        | E::UnsupportedRevocationReasonsPartitioning => {
            (ErrorCode::RevocationInvalid, format!("CRL refused: {e:?}"))
        }
        E::UnknownIssuer => (
            ErrorCode::CertUntrusted,
            "no path to a trust anchor of this role".to_string(),
        ),
        E::InvalidSignatureForPublicKey => (
            ErrorCode::SignatureInvalid,
            "a certificate signature in the path does not verify".to_string(),
        ),
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::SignatureAlgorithmMismatch => (
            ErrorCode::UnsupportedAlgorithm,
            format!("path signature algorithm: {e:?}"),
        ),
        E::CaUsedAsEndEntity => (
            ErrorCode::WrongRole,
            "a CA certificate is not a card certificate".to_string(),
        ),
        E::UnsupportedCriticalExtension => (
            ErrorCode::CertMalformed,
            "an unknown critical extension is present".to_string(),
        ),
        E::PathLenConstraintViolated | E::EndEntityUsedAsCa | E::NameConstraintViolation => {
            (ErrorCode::CertUntrusted, format!("path constraint: {e:?}"))
        }
        E::MaximumPathBuildCallsExceeded
        | E::MaximumPathDepthExceeded
        | E::MaximumSignatureChecksExceeded => (
            ErrorCode::CertUntrusted,
            format!("path building gave up: {e:?}"),
        ),
        _ => (
            ErrorCode::CertMalformed,
            format!("certificate refused: {e:?}"),
        ),
    };
    PkiError::new(code, detail)
}
