//! OCSP answers kept for their validity, keyed by CertID: one fetch per certificate however
//! many validations ask at once, each fetch within the configured timeout and the shared
//! [`FetchLimit`].

use super::flight::{FetchLimit, Flights};
use crate::error::{ErrorCode, PkiError, Result};
use crate::facts::ParsedCert;
use crate::ocsp::{self, OcspAnswer, OcspConfig, OcspStatus, OcspTransport};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// Upper bound of kept answers (one per certificate asked about).
pub const OCSP_CACHE_CAPACITY: usize = 10_000;

struct Kept {
    answer: OcspAnswer,
    /// The end of its use: its nextUpdate, or thisUpdate plus the configured maximum age if
    /// that comes first.
    until: OffsetDateTime,
}

/// Asks OCSP responders (the certificate's AIA URL, or the configured one) and keeps what they
/// answer. Only answers that passed every check of [`ocsp::check_response`] (signature,
/// responder, CertID, times, nonce) are kept, so one for another certificate, one signed by
/// another key, or one already past its nextUpdate never is; answers without a nextUpdate are
/// not kept either.
pub struct OcspCache {
    config: OcspConfig,
    transport: Arc<dyn OcspTransport>,
    limit: Arc<FetchLimit>,
    kept: Mutex<HashMap<Vec<u8>, Kept>>,
    flights: Flights<Vec<u8>, Result<OcspAnswer>>,
    capacity: usize,
}

fn add(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
}

impl OcspCache {
    pub fn new(
        config: OcspConfig,
        transport: Arc<dyn OcspTransport>,
        limit: Arc<FetchLimit>,
    ) -> Self {
        Self {
            config,
            transport,
            limit,
            kept: Mutex::new(HashMap::new()),
            flights: Flights::new(),
            capacity: OCSP_CACHE_CAPACITY,
        }
    }

    /// The same cache holding at most `capacity` answers.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.kept.lock().map_or(0, |k| k.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lookup(&self, key: &[u8], now: OffsetDateTime) -> Option<OcspAnswer> {
        let kept = self.kept.lock().ok()?;
        let k = kept.get(key)?;
        let earliest =
            k.answer.this_update - time::Duration::try_from(self.config.clock_skew).ok()?;
        (earliest <= now && now < k.until).then(|| k.answer.clone())
    }

    fn keep(&self, key: Vec<u8>, answer: &OcspAnswer, now: OffsetDateTime) {
        let Some(next) = answer.next_update else {
            return;
        };
        let until = add(answer.this_update, self.config.max_age).map_or(next, |m| m.min(next));
        if until <= now {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.len() >= self.capacity && !kept.contains_key(&key) {
            kept.retain(|_, k| now < k.until);
            while kept.len() >= self.capacity {
                // The answer that runs out first goes.
                let Some(first) = kept
                    .iter()
                    .min_by_key(|(_, k)| k.until)
                    .map(|(key, _)| key.clone())
                else {
                    break;
                };
                kept.remove(&first);
            }
        }
        kept.insert(
            key,
            Kept {
                answer: answer.clone(),
                until,
            },
        );
    }

    /// The status of `cert` (issued by `issuer`) at `now`: a kept answer valid at `now`, or a
    /// fresh one (fetched once for all concurrent callers).
    pub fn status(
        &self,
        cert: &ParsedCert,
        issuer: &ParsedCert,
        now: OffsetDateTime,
    ) -> Result<OcspStatus> {
        let key = ocsp::cert_id_der(&cert.cert, &issuer.cert, self.config.hash)?;
        if let Some(answer) = self.lookup(&key, now) {
            return Ok(answer.status);
        }
        let timeout = self.config.timeout;
        // The first caller may wait for a slot, then for the responder.
        let wait = timeout * 2 + Duration::from_secs(1);
        let answer = self
            .flights
            .run(&key, wait, || {
                if let Some(answer) = self.lookup(&key, now) {
                    return Ok(answer);
                }
                let _slot = self.limit.acquire(timeout).ok_or_else(|| {
                    PkiError::new(
                        ErrorCode::OcspUnavailable,
                        format!("too many status requests in progress; no slot within {timeout:?}"),
                    )
                })?;
                let answer = ocsp::check_answer(
                    &cert.cert,
                    &issuer.cert,
                    &self.config,
                    self.transport.as_ref(),
                    now,
                )?;
                self.keep(key.clone(), &answer, now);
                Ok(answer)
            })
            .unwrap_or_else(|| {
                Err(PkiError::new(
                    ErrorCode::OcspUnavailable,
                    format!("no OCSP answer within {wait:?}"),
                ))
            })?;
        // Callers that shared another caller's fetch check the window at their own time.
        if let Some(next) = answer.next_update
            && next < now
        {
            return Err(PkiError::new(
                ErrorCode::RevocationStale,
                format!("OCSP nextUpdate {next} has passed (now {now})"),
            ));
        }
        Ok(answer.status)
    }
}
