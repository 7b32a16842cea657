//! Revocation asked online while serving: OCSP from the certificate's Authority Information
//! Access, and the CRL of the certificate's own distribution point, each fetched on demand,
//! kept for its validity and verified before use. Fetches run on the caller's (blocking)
//! thread, each within its timeout and a shared limit of fetches at once, and concurrent
//! validations of one certificate (or one distribution point) make one fetch.
//!
//! [`wire`] builds the validator `certreg serve` uses from [`RevocationSettings`]: which of
//! CRL and OCSP a deployment requires ([`RevocationPolicy`]) and where CRLs come from
//! ([`CrlSource`]).

mod cdp;
mod flight;
mod ocsp_cache;
mod seen;

pub use cdp::{CdpCache, CdpConfig, CrlFetch, HttpCrlFetch};
pub use flight::FetchLimit;
pub use ocsp_cache::{OCSP_CACHE_CAPACITY, OcspCache};
pub use seen::CARDS_KEPT;

use crate::anchors::TrustStore;
use crate::error::{ErrorCode, PkiError, Result};
use crate::facts::ParsedCert;
use crate::ocsp::{HttpTransport, OcspConfig, OcspStatus, OcspTransport};
use crate::revocation::{CrlStore, StalePolicy};
use crate::serial::CertSerial;
use crate::validate::{CrlMode, OnlineStatus, ValidationOptions, Validator};
use pki_types::{CertificateDer, UnixTime};
use seen::SeenCards;
use std::sync::{Arc, Weak};
use time::OffsetDateTime;
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyPurposeIdIter, RevocationCheckDepth,
    RevocationOptionsBuilder, UnknownStatusPolicy,
};

/// Which revocation sources a deployment requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationPolicy {
    /// A CRL of the issuer must cover the certificate and not list it (the default).
    #[default]
    Crl,
    /// The issuer's OCSP responder must answer "good".
    Ocsp,
    /// Both: a CRL that does not list the certificate and an OCSP "good".
    CrlAndOcsp,
    /// OCSP, and when the responder cannot give a valid answer, a CRL. A "revoked" answer of
    /// either is final.
    CrlOrOcsp,
}

impl RevocationPolicy {
    pub const NAMES: [&'static str; 4] = ["crl", "ocsp", "crl_and_ocsp", "crl_or_ocsp"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crl => "crl",
            Self::Ocsp => "ocsp",
            Self::CrlAndOcsp => "crl_and_ocsp",
            Self::CrlOrOcsp => "crl_or_ocsp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "crl" => Self::Crl,
            "ocsp" => Self::Ocsp,
            "crl_and_ocsp" => Self::CrlAndOcsp,
            "crl_or_ocsp" => Self::CrlOrOcsp,
            _ => return None,
        })
    }

    /// Whether a CRL is ever consulted.
    pub fn uses_crl(self) -> bool {
        self != Self::Ocsp
    }
}

/// Where the CRLs that decide revocation come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrlSource {
    /// The CRLs of the settings (`crls`), loaded at start and refreshed on an interval (the
    /// default).
    #[default]
    Configured,
    /// The CRL at the certificate's own CRL distribution point (`http://`), fetched when a
    /// certificate is checked and kept until its nextUpdate.
    DistributionPoint,
}

impl CrlSource {
    pub const NAMES: [&'static str; 2] = ["configured", "distribution_point"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::DistributionPoint => "distribution_point",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "configured" => Self::Configured,
            "distribution_point" => Self::DistributionPoint,
            _ => return None,
        })
    }
}

/// Upper bound of fetches (OCSP and distribution points together) in progress at once.
pub const DEFAULT_MAX_FETCHES: usize = 16;

/// How revocation is established while serving.
#[derive(Clone, Debug)]
pub struct RevocationSettings {
    pub policy: RevocationPolicy,
    pub crl_source: CrlSource,
    /// OCSP requests: timeout, nonce, freshness windows (the responder is the certificate's AIA
    /// URL unless `url_override` names one).
    pub ocsp: OcspConfig,
    /// Distribution point downloads: timeout, size cap, what is kept.
    pub cdp: CdpConfig,
    /// Fetches in progress at once; a fetch that finds no free slot within its timeout fails
    /// as its responder being unavailable.
    pub max_fetches: usize,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            policy: RevocationPolicy::default(),
            crl_source: CrlSource::default(),
            ocsp: OcspConfig::default(),
            cdp: CdpConfig::default(),
            max_fetches: DEFAULT_MAX_FETCHES,
        }
    }
}

/// The network of [`wire`]: plain HTTP unless a test gives its own.
#[derive(Clone)]
pub struct Transports {
    pub ocsp: Arc<dyn OcspTransport>,
    pub crl: Arc<dyn CrlFetch>,
}

impl Default for Transports {
    fn default() -> Self {
        Self {
            ocsp: Arc::new(HttpTransport),
            crl: Arc::new(HttpCrlFetch),
        }
    }
}

/// Whether the validator's own CRL check (over the configured CRLs, during path building)
/// decides revocation: only with configured CRLs that are required in every case.
pub fn crl_in_path(settings: &RevocationSettings) -> bool {
    settings.crl_source == CrlSource::Configured
        && matches!(
            settings.policy,
            RevocationPolicy::Crl | RevocationPolicy::CrlAndOcsp
        )
}

/// The validator `certreg serve` uses: `trust`, the configured `crls`, `options` (the stale
/// policy applies to every CRL) and the checks `settings` ask for, with the path cache.
///
/// | policy | CRLs from | path building checks | then the online check asks |
/// |---|---|---|---|
/// | `crl` | configured | the configured CRLs | nothing |
/// | `crl` | distribution point | no CRL | the distribution point's CRL |
/// | `ocsp` | — | no CRL | OCSP |
/// | `crl_and_ocsp` | configured | the configured CRLs | OCSP |
/// | `crl_and_ocsp` | distribution point | no CRL | the distribution point's CRL, then OCSP |
/// | `crl_or_ocsp` | either | no CRL | OCSP, else the CRL |
///
/// Where path building checks no CRL, intermediate CAs are not checked against CRLs of their
/// issuers (the online check covers the card certificate).
pub fn wire(
    trust: TrustStore,
    crls: CrlStore,
    options: ValidationOptions,
    settings: &RevocationSettings,
    transports: Transports,
) -> Arc<Validator> {
    let in_path = crl_in_path(settings);
    let options = ValidationOptions {
        crl: if in_path {
            CrlMode::Required
        } else {
            CrlMode::Off
        },
        ..options
    };
    let need = match settings.policy {
        RevocationPolicy::Crl if in_path => {
            return Arc::new(Validator::new(trust, crls, options).with_cache());
        }
        RevocationPolicy::Crl => Need::Crl,
        RevocationPolicy::Ocsp => Need::Ocsp,
        RevocationPolicy::CrlAndOcsp if in_path => Need::Ocsp,
        RevocationPolicy::CrlAndOcsp => Need::Both,
        RevocationPolicy::CrlOrOcsp => Need::Either,
    };
    let limit = Arc::new(FetchLimit::new(settings.max_fetches));
    Arc::new_cyclic(|validator: &Weak<Validator>| {
        let crl =
            match (need, settings.crl_source) {
                (Need::Ocsp, _) => None,
                (_, CrlSource::Configured) => Some(CrlPart::Configured(validator.clone())),
                (_, CrlSource::DistributionPoint) => Some(CrlPart::DistributionPoint(
                    CdpCache::new(settings.cdp.clone(), transports.crl.clone(), limit.clone()),
                )),
            };
        let ocsp = (need != Need::Crl).then(|| {
            OcspCache::new(
                settings.ocsp.clone(),
                transports.ocsp.clone(),
                limit.clone(),
            )
        });
        let online = OnlineRevocation {
            need,
            ocsp,
            crl,
            stale: options.stale_crl,
            seen: SeenCards::new(CARDS_KEPT),
        };
        Validator::new(trust, crls, options)
            .with_online(Arc::new(online))
            .with_cache()
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Crl,
    Ocsp,
    Both,
    Either,
}

enum CrlPart {
    /// The CRLs in force in the validator this check belongs to.
    Configured(Weak<Validator>),
    DistributionPoint(CdpCache),
}

/// What one revocation source says about a certificate it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceVerdict {
    /// Not revoked. `stale` says what to warn about when the CRL that says so is past its
    /// nextUpdate and the stale policy let it be used.
    Good { stale: Option<String> },
    /// Revoked at `at`; `detail` says by which source.
    Revoked { at: OffsetDateTime, detail: String },
}

/// The online check of [`wire`]'s validator. Every certificate it judges is remembered (at
/// most [`CARDS_KEPT`], by issuer and serial) with what its sources said, so that a card a
/// session rests on can be asked about again by issuer and serial alone
/// ([`OnlineStatus::ask_again`]).
pub struct OnlineRevocation {
    need: Need,
    ocsp: Option<OcspCache>,
    crl: Option<CrlPart>,
    stale: StalePolicy,
    seen: SeenCards,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl OnlineRevocation {
    fn ocsp(
        &self,
        cert: &ParsedCert,
        issuer: &ParsedCert,
        now: OffsetDateTime,
    ) -> Result<SourceVerdict> {
        let Some(ocsp) = &self.ocsp else {
            return Err(PkiError::new(
                ErrorCode::RevocationUnknown,
                "no OCSP check is configured",
            ));
        };
        Ok(match ocsp.status(cert, issuer, now)? {
            OcspStatus::Good => SourceVerdict::Good { stale: None },
            OcspStatus::Revoked { at } => SourceVerdict::Revoked {
                at,
                detail: format!("the OCSP responder reports the certificate revoked at {at}"),
            },
        })
    }

    fn crl(
        &self,
        cert: &ParsedCert,
        issuer: &ParsedCert,
        now: OffsetDateTime,
    ) -> Result<SourceVerdict> {
        match &self.crl {
            Some(CrlPart::DistributionPoint(cdp)) => cdp.check(cert, issuer, now, self.stale),
            Some(CrlPart::Configured(validator)) => {
                let crls = validator.upgrade().map(|v| v.crls()).unwrap_or_default();
                if crls.is_empty() {
                    return Err(PkiError::new(
                        ErrorCode::RevocationUnknown,
                        "no CRL is loaded, so revocation cannot be checked",
                    ));
                }
                let judged = match crls.check_end_entity(cert, issuer, now, true) {
                    Err(e)
                        if e.code == ErrorCode::RevocationStale
                            && self.stale == StalePolicy::Warn =>
                    {
                        crls.check_end_entity(cert, issuer, now, false)
                    }
                    other => other,
                };
                match judged {
                    Ok(stale) => Ok(SourceVerdict::Good {
                        stale: stale.map(|next| {
                            format!("the CRL's nextUpdate {} has passed", rfc3339(next))
                        }),
                    }),
                    Err(e) if e.code == ErrorCode::CertRevoked => Ok(SourceVerdict::Revoked {
                        at: crls
                            .is_revoked(Some(&cert.facts.issuer), &cert.facts.serial)
                            .unwrap_or(now),
                        detail: e.detail,
                    }),
                    Err(e) => Err(e),
                }
            }
            None => Err(PkiError::new(
                ErrorCode::RevocationUnknown,
                "no CRL check is configured",
            )),
        }
    }

    /// The verdict a card step needs under the policy: an error when the certificate is refused
    /// for want of an answer.
    fn verdict(
        &self,
        cert: &ParsedCert,
        issuer: &ParsedCert,
        now: OffsetDateTime,
    ) -> Result<SourceVerdict> {
        match self.need {
            Need::Crl => self.crl(cert, issuer, now),
            Need::Ocsp => self.ocsp(cert, issuer, now),
            Need::Both => match self.crl(cert, issuer, now)? {
                revoked @ SourceVerdict::Revoked { .. } => Ok(revoked),
                SourceVerdict::Good { stale } => match self.ocsp(cert, issuer, now)? {
                    SourceVerdict::Good { .. } => Ok(SourceVerdict::Good { stale }),
                    revoked => Ok(revoked),
                },
            },
            Need::Either => match self.ocsp(cert, issuer, now) {
                Ok(v) => Ok(v),
                Err(ocsp) => self.crl(cert, issuer, now).map_err(|e| {
                    PkiError::new(
                        e.code,
                        format!("{}; OCSP gave no answer either: {ocsp}", e.detail),
                    )
                }),
            },
        }
    }

    /// Whether the sources of the policy say a certificate that was accepted is revoked:
    /// `Some(at)` when one of them does (with both required, either suffices), `Some(None)`
    /// when they say it is not, `None` when none that decides could answer. Where a card step
    /// would be refused for want of an answer, this is only "no answer": it does not end what
    /// rests on the card.
    fn revoked_verdict(
        &self,
        cert: &ParsedCert,
        issuer: &ParsedCert,
        now: OffsetDateTime,
    ) -> Option<Option<OffsetDateTime>> {
        let revoked = |v: &SourceVerdict| match v {
            SourceVerdict::Revoked { at, .. } => Some(*at),
            SourceVerdict::Good { .. } => None,
        };
        match self.need {
            Need::Both => {
                let crl = self.crl(cert, issuer, now).ok();
                if let Some(at) = crl.as_ref().and_then(revoked) {
                    return Some(Some(at));
                }
                let ocsp = self.ocsp(cert, issuer, now).ok();
                if let Some(at) = ocsp.as_ref().and_then(revoked) {
                    return Some(Some(at));
                }
                (crl.is_some() && ocsp.is_some()).then_some(None)
            }
            _ => self.verdict(cert, issuer, now).ok().map(|v| revoked(&v)),
        }
    }
}

impl OnlineStatus for OnlineRevocation {
    fn label(&self) -> &'static str {
        match self.need {
            Need::Crl => "crl",
            Need::Ocsp => "ocsp",
            Need::Both => "crl+ocsp",
            Need::Either => "crl_or_ocsp",
        }
    }

    fn check(&self, cert: &ParsedCert, issuer: &ParsedCert, now: OffsetDateTime) -> Result<()> {
        self.check_noting(cert, &Arc::new(issuer.clone()), now, &mut Vec::new())
    }

    fn check_noting(
        &self,
        cert: &ParsedCert,
        issuer: &Arc<ParsedCert>,
        now: OffsetDateTime,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let verdict = self.verdict(cert, issuer, now);
        let noted = match &verdict {
            Ok(SourceVerdict::Revoked { at, .. }) => Some(Some(*at)),
            Ok(SourceVerdict::Good { .. }) => Some(None),
            Err(_) => None,
        };
        self.seen.note(cert, issuer, noted);
        match verdict? {
            SourceVerdict::Good { stale } => {
                if let Some(stale) = stale {
                    warnings.push(format!("accepted with a stale CRL: {stale}"));
                }
                Ok(())
            }
            SourceVerdict::Revoked { detail, .. } => {
                Err(PkiError::new(ErrorCode::CertRevoked, detail))
            }
        }
    }

    fn revoked(&self, issuer: Option<&str>, serial: &CertSerial) -> Option<OffsetDateTime> {
        self.seen
            .find(issuer, serial)
            .iter()
            .find_map(|k| k.revoked)
    }

    fn ask_again(
        &self,
        issuer: Option<&str>,
        serial: &CertSerial,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        let known = self.seen.find(issuer, serial);
        // A revocation is final: what said so is not asked again.
        if let Some(at) = known.iter().find_map(|k| k.revoked) {
            return Some(at);
        }
        for k in known {
            let Ok(cert) = ParsedCert::from_der(k.der.to_vec()) else {
                continue;
            };
            let verdict = self.revoked_verdict(&cert, &k.issuer, now);
            self.seen.note(&cert, &k.issuer, verdict);
            if let Some(Some(at)) = verdict {
                return Some(at);
            }
        }
        None
    }
}

/// Card certificates carry any EKU (the validator decides the role otherwise).
struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, _iter: KeyPurposeIdIter<'_, '_>) -> std::result::Result<(), webpki::Error> {
        Ok(())
    }
}

/// What `lists` say about `cert`, issued by `issuer`, at `now`: webpki's CRL check of the
/// validator (issuer name and key of the CRL, issuingDistributionPoint scope against the
/// certificate's distribution points, nextUpdate per `expiration`, the serial) over the one
/// step from the certificate to its issuer, whose path the validator has already built.
pub(crate) fn crl_verdict(
    cert: &ParsedCert,
    issuer: &ParsedCert,
    lists: &[&CertRevocationList<'_>],
    now: OffsetDateTime,
    expiration: ExpirationPolicy,
) -> Result<()> {
    let issuer_der = CertificateDer::from(issuer.der.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&issuer_der).map_err(|e| {
        PkiError::new(
            ErrorCode::CertMalformed,
            format!("issuer certificate: {e:?}"),
        )
    })?;
    let ee_der = CertificateDer::from(cert.der.as_slice());
    let ee = EndEntityCert::try_from(&ee_der)
        .map_err(|e| PkiError::new(ErrorCode::CertMalformed, format!("certificate: {e:?}")))?;
    let revocation = RevocationOptionsBuilder::new(lists)
        .map_err(|_| {
            PkiError::new(
                ErrorCode::RevocationUnknown,
                "no CRL is loaded, so revocation cannot be checked",
            )
        })?
        .with_depth(RevocationCheckDepth::EndEntity)
        .with_status_policy(UnknownStatusPolicy::Deny)
        .with_expiration_policy(expiration)
        .build();
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        now.unix_timestamp().max(0) as u64,
    ));
    ee.verify_for_usage(
        crate::validate::PATH_ALGS,
        &[anchor],
        &[],
        at,
        AnyEku,
        Some(revocation),
        None,
    )
    .map(|_| ())
    .map_err(crate::validate::map_webpki)
}
