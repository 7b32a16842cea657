//! CRLs fetched on demand from a certificate's own CRL distribution point (`http://` only),
//! kept until their nextUpdate, and used only once they verify with the issuer's key.

use super::SourceVerdict;
use super::flight::{FetchLimit, Flights};
use crate::error::{ErrorCode, PkiError, Result};
use crate::facts::ParsedCert;
use crate::revocation::{CrlNumber, CrlStore, StalePolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use webpki::{CertRevocationList, ExpirationPolicy, OwnedCertRevocationList};

/// The one network operation of distribution points; tests and callers with their own HTTP
/// stack implement it.
pub trait CrlFetch: Send + Sync {
    /// GETs `url`; must enforce `timeout` and refuse bodies over `max_len`.
    fn get(&self, url: &str, timeout: Duration, max_len: usize) -> Result<Vec<u8>>;
}

/// [`crate::ocsp::http_get`]: plain HTTP/1.1, no redirects, no proxy.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpCrlFetch;

impl CrlFetch for HttpCrlFetch {
    fn get(&self, url: &str, timeout: Duration, max_len: usize) -> Result<Vec<u8>> {
        crate::ocsp::http_get(url, timeout, max_len)
    }
}

/// How distribution points are asked and what is kept.
#[derive(Clone, Debug)]
pub struct CdpConfig {
    /// For the whole HTTP exchange.
    pub timeout: Duration,
    /// A larger CRL is refused while it is read.
    pub max_bytes: usize,
    /// How far ahead of the clock a CRL's thisUpdate may be.
    pub clock_skew: Duration,
    /// Upper bound of CRLs kept (one per distribution point and issuer key).
    pub capacity: usize,
    /// Upper bound of the DER bytes of all CRLs kept.
    pub max_total_bytes: usize,
}

impl Default for CdpConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_bytes: 32 * 1024 * 1024,
            clock_skew: Duration::from_secs(5 * 60),
            capacity: 1024,
            max_total_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A CRL fetched from a distribution point whose signature verified with the issuer's key.
struct Held {
    url: String,
    list: CertRevocationList<'static>,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    number: Option<CrlNumber>,
    sha256: String,
    size: usize,
    /// What this CRL said about certificates (by SHA-256 and whether its nextUpdate was
    /// enforced): the CRL does not change, so its signature is verified once per certificate,
    /// not once per validation.
    verdicts: Mutex<HashMap<(String, bool), Result<()>>>,
}

/// Upper bound of verdicts kept per CRL; they are dropped together when it is reached.
const VERDICTS_KEPT: usize = 4096;

/// How long a CRL without nextUpdate is used before it is fetched again.
const NO_NEXT_UPDATE_KEPT: time::Duration = time::Duration::hours(1);

impl Held {
    fn fresh_until(&self) -> OffsetDateTime {
        self.next_update
            .unwrap_or(self.this_update + NO_NEXT_UPDATE_KEPT)
    }

    fn fresh(&self, now: OffsetDateTime) -> bool {
        now < self.fresh_until()
    }

    /// Whether this CRL may replace `held` (the rule of `CrlEntry::supersedes`): never by one
    /// issued earlier, nor by one numbered lower, nor, issued at the same time, by one whose
    /// number is not higher.
    fn supersedes(&self, held: &Held) -> bool {
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

    /// The CRL of `der` from `url` if it is one of `issuer`, signed with its key, and not
    /// dated ahead of `now`.
    fn read(
        der: &[u8],
        url: &str,
        issuer: &ParsedCert,
        issuer_spki: &[u8],
        now: OffsetDateTime,
        skew: Duration,
    ) -> Result<Held> {
        let invalid = |detail: String| {
            PkiError::new(
                ErrorCode::RevocationInvalid,
                format!("CRL from {url}: {detail}"),
            )
        };
        let owned =
            OwnedCertRevocationList::from_der(der).map_err(|e| invalid(format!("{e:?}")))?;
        let mut one = CrlStore::new();
        let entry = one
            .add(der)
            .map_err(|e| PkiError::new(e.code, format!("CRL from {url}: {}", e.detail)))?;
        if entry.issuer != issuer.facts.subject {
            return Err(invalid(format!(
                "issued by {}, not by the certificate's issuer {}",
                entry.issuer, issuer.facts.subject
            )));
        }
        if !entry.signed_by(issuer_spki) {
            return Err(invalid(format!(
                "not signed by the key of {}",
                issuer.facts.subject
            )));
        }
        let skew = time::Duration::try_from(skew).unwrap_or(time::Duration::ZERO);
        if entry.this_update > now + skew {
            return Err(invalid(format!(
                "dated {} (thisUpdate), ahead of the clock ({now})",
                entry.this_update
            )));
        }
        Ok(Held {
            url: url.to_string(),
            list: CertRevocationList::Owned(owned),
            this_update: entry.this_update,
            next_update: entry.next_update,
            number: entry.number.clone(),
            sha256: entry.sha256.clone(),
            size: der.len(),
            verdicts: Mutex::new(HashMap::new()),
        })
    }

    /// What this CRL says about `cert` (see [`super::crl_verdict`]), worked out once per
    /// certificate and expiration policy. The validator has checked the certificate's validity
    /// at `now` already, and a CRL is applied with its nextUpdate enforced only before it.
    fn verdict(
        &self,
        cert: &ParsedCert,
        issuer: &ParsedCert,
        now: OffsetDateTime,
        expiration: ExpirationPolicy,
    ) -> Result<()> {
        let key = (
            cert.facts.sha256.clone(),
            matches!(expiration, ExpirationPolicy::Enforce),
        );
        if let Some(v) = self.verdicts.lock().ok().and_then(|v| v.get(&key).cloned()) {
            return v;
        }
        let v = super::crl_verdict(cert, issuer, &[&self.list], now, expiration);
        if let Ok(mut kept) = self.verdicts.lock() {
            if kept.len() >= VERDICTS_KEPT {
                kept.clear();
            }
            kept.insert(key, v.clone());
        }
        v
    }

    /// When this CRL says `cert` was revoked (its revocationDate), if it lists it.
    fn revocation_date(&self, cert: &ParsedCert) -> Option<OffsetDateTime> {
        let serial = cert.cert.tbs_certificate().serial_number().as_bytes();
        let listed = self.list.find_serial(serial).ok().flatten()?;
        OffsetDateTime::from_unix_timestamp(listed.revocation_date.as_secs() as i64).ok()
    }
}

/// The key of a kept CRL: the distribution point and the issuer key it verified with.
type Key = (String, Vec<u8>);

/// CRLs of distribution points, fetched when a certificate names one and kept (bounded) until
/// their nextUpdate; a CRL past it is kept too, for the stale policy when the distribution
/// point cannot be reached.
pub struct CdpCache {
    config: CdpConfig,
    fetch: Arc<dyn CrlFetch>,
    limit: Arc<FetchLimit>,
    held: Mutex<HashMap<Key, Arc<Held>>>,
    flights: Flights<Key, Result<Arc<Held>>>,
}

/// Whether `url` is one this client fetches.
fn is_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

impl CdpCache {
    pub fn new(config: CdpConfig, fetch: Arc<dyn CrlFetch>, limit: Arc<FetchLimit>) -> Self {
        Self {
            config,
            fetch,
            limit,
            held: Mutex::new(HashMap::new()),
            flights: Flights::new(),
        }
    }

    /// How many CRLs are kept.
    pub fn len(&self) -> usize {
        self.held.lock().map_or(0, |h| h.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &Key) -> Option<Arc<Held>> {
        self.held.lock().ok()?.get(key).cloned()
    }

    /// Keeps `fresh` unless what is held for `key` is newer (a replayed older CRL never
    /// replaces a newer one); returns what is held afterwards.
    fn keep(&self, key: Key, fresh: Held) -> Arc<Held> {
        let Ok(mut held) = self.held.lock() else {
            return Arc::new(fresh);
        };
        if let Some(old) = held.get(&key)
            && !fresh.supersedes(old)
        {
            return old.clone();
        }
        let fresh = Arc::new(fresh);
        held.remove(&key);
        let mut total: usize = held.values().map(|h| h.size).sum();
        while !held.is_empty()
            && (held.len() >= self.config.capacity
                || total + fresh.size > self.config.max_total_bytes)
        {
            // The CRL that runs out first goes.
            let Some(first) = held
                .iter()
                .min_by_key(|(_, h)| h.fresh_until())
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = held.remove(&first) {
                total -= gone.size;
            }
        }
        held.insert(key, fresh.clone());
        fresh
    }

    /// The CRL of `url` for `issuer` at `now`, and how its nextUpdate is to be enforced.
    fn crl(
        &self,
        url: &str,
        issuer: &ParsedCert,
        issuer_spki: &[u8],
        now: OffsetDateTime,
        stale: StalePolicy,
    ) -> Result<(Arc<Held>, ExpirationPolicy)> {
        let key: Key = (url.to_string(), issuer_spki.to_vec());
        let held = self.get(&key);
        if let Some(h) = &held
            && h.fresh(now)
        {
            return Ok((h.clone(), ExpirationPolicy::Enforce));
        }
        let timeout = self.config.timeout;
        let wait = timeout * 2 + Duration::from_secs(1);
        let fetched = self
            .flights
            .run(&key, wait, || {
                if let Some(h) = self.get(&key)
                    && h.fresh(now)
                {
                    return Ok(h);
                }
                let _slot = self.limit.acquire(timeout).ok_or_else(|| {
                    PkiError::new(
                        ErrorCode::RevocationUnknown,
                        format!("too many revocation fetches in progress; no slot within {timeout:?} for the CRL at {url}"),
                    )
                })?;
                let der = self
                    .fetch
                    .get(url, timeout, self.config.max_bytes)
                    .map_err(|e| {
                        // Down, slow or oversized: the CRL could not be had.
                        PkiError::new(
                            ErrorCode::RevocationUnknown,
                            format!("the CRL distribution point cannot be read: {}", e.detail),
                        )
                    })?;
                let fresh = Held::read(&der, url, issuer, issuer_spki, now, self.config.clock_skew)?;
                Ok(self.keep(key.clone(), fresh))
            })
            .unwrap_or_else(|| {
                Err(PkiError::new(
                    ErrorCode::RevocationUnknown,
                    format!("no CRL from {url} within {wait:?}"),
                ))
            });
        let (candidate, failure) = match fetched {
            Ok(h) if h.fresh(now) => return Ok((h, ExpirationPolicy::Enforce)),
            Ok(h) => (h, None),
            Err(e) => match held {
                Some(h) => (h, Some(e)),
                None => return Err(e),
            },
        };
        match stale {
            StalePolicy::Warn => Ok((candidate, ExpirationPolicy::Ignore)),
            StalePolicy::Reject => Err(PkiError::new(
                ErrorCode::RevocationStale,
                format!(
                    "the CRL from {} is past its nextUpdate {}{}",
                    candidate.url,
                    candidate.fresh_until(),
                    failure.map_or(String::new(), |e| format!(
                        ", and no newer one could be had: {}",
                        e.detail
                    ))
                ),
            )),
        }
    }

    /// What the CRL of the first `http://` distribution point of `cert` whose CRL covers it (its
    /// issuingDistributionPoint, as webpki reads it for the configured CRLs) says about it: not
    /// revoked (with the warning to give when that CRL is past its nextUpdate and `stale` let
    /// it be used), or revoked and when. An error when no such CRL could be had or used.
    pub fn check(
        &self,
        cert: &ParsedCert,
        issuer: &ParsedCert,
        now: OffsetDateTime,
        stale: StalePolicy,
    ) -> Result<SourceVerdict> {
        let issuer_spki = issuer.spki_der()?;
        let mut last = PkiError::new(
            ErrorCode::RevocationUnknown,
            "the certificate names no http:// CRL distribution point",
        );
        for url in cert.facts.crl_urls.iter().filter(|u| is_http(u)) {
            let verdict =
                self.crl(url, issuer, &issuer_spki, now, stale)
                    .and_then(|(held, expiration)| {
                        match held.verdict(cert, issuer, now, expiration) {
                            Ok(()) => Ok(SourceVerdict::Good {
                                stale: matches!(expiration, ExpirationPolicy::Ignore).then(|| {
                                    format!(
                                        "the CRL from {url} is past its nextUpdate {}",
                                        super::rfc3339(held.fresh_until())
                                    )
                                }),
                            }),
                            Err(e) if e.code == ErrorCode::CertRevoked => {
                                Ok(SourceVerdict::Revoked {
                                    at: held.revocation_date(cert).unwrap_or(held.this_update),
                                    detail: format!("{} (CRL from {url})", e.detail),
                                })
                            }
                            Err(e) => Err(PkiError::new(
                                e.code,
                                format!("{} (CRL from {url})", e.detail),
                            )),
                        }
                    });
            match verdict {
                Err(e) if e.code == ErrorCode::RevocationUnknown => last = e,
                other => return other,
            }
        }
        Err(last)
    }
}
