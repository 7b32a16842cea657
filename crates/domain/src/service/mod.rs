//! The services pages and the API call, one file per use case: flows (start, terms,
//! challenge), the card step and the rule of each step, review applications, the back office,
//! the final confirmation, the administrator's operators and their activity, the receipts
//! query. Each applies the rule of its step and persists through one [`Commit`].

mod activity;
mod backoffice;
mod card;
mod confirm;
mod flows;
mod operators;
mod queries;
mod reviews;
mod steps;

pub use activity::{ACTIVITY_ACTIONS, ActivityFilter};
pub use backoffice::{
    AgencyRecord, DECIDED_LIMIT, ReviewCase, ReviewList, SearchCriteria, SearchResult,
};
pub use card::{CardAttempt, CardStepInput, LoginSession, StepOutcome};
pub use confirm::ContactInput;
pub use flows::IssuedChallenge;
pub use operators::{
    AdminGrant, OperatorForm, OperatorGrant, grant_certificates, revocation_ending,
};

use crate::calendar::BusinessCalendar;
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::model::*;
use crate::store::*;
use pki::validate::Validator;
use ring::rand::SecureRandom as _;
use std::sync::{Arc, RwLock};
use time::OffsetDateTime;

/// Service configuration.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The public origin card proofs are bound to, e.g. `https://certreg.example.gov.tw`.
    pub origin: String,
    /// The version of 用戶約定條款 users agree to (recorded with each flow).
    pub terms_version: String,
    pub functions: FunctionCatalogue,
    pub contacts: ContactDirectory,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            origin: "http://127.0.0.1:8080".into(),
            terms_version: "2026-01".into(),
            functions: FunctionCatalogue::default(),
            contacts: ContactDirectory::default(),
        }
    }
}

pub struct Services<S, C> {
    store: S,
    clock: C,
    validator: Arc<Validator>,
    calendar: RwLock<BusinessCalendar>,
    config: ServiceConfig,
}

/// Runs a certificate check (signatures, path building, and OCSP or a distribution point,
/// which wait on the network) where it belongs: with an online check, on a thread where
/// blocking is allowed, so a slow responder never holds up the async workers that serve every
/// other request; without one, the check is bounded CPU work (tens of microseconds) and runs
/// on the calling task, sparing the two thread switches of a hand-off.
async fn certificate_check<T: Send + 'static>(
    validator: &pki::validate::Validator,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    if !validator.has_online() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DomainError::Storage(format!("certificate check did not finish: {e}")))
}

/// A new flow or challenge id: 32 lowercase hex digits, the wall clock's milliseconds (48
/// bits, never going back within the process) then 80 random bits. The random bits make it
/// unguessable; the time makes ids taken one after another sort together, so a group of new
/// rows lands in the same few index pages instead of one random page each. The prefix is a
/// time, not a count: two ids do not tell how many were taken between them.
fn random_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // A wall clock set back does not send ids back before those already taken.
    let ms = LAST.fetch_max(now, Ordering::Relaxed).max(now) & 0xffff_ffff_ffff;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    // SystemRandom only fails when the OS has no randomness at all; ids would then collide.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes[6..]);
    pki::serial::hex_upper(&bytes).to_ascii_lowercase()
}

/// The shipped calendar with the store's imported years over it.
pub async fn stored_calendar<S: Store>(store: &S) -> Result<BusinessCalendar> {
    let days = store.calendar_days().await?;
    // The store only ever accepted whole years, so a refusal here means damaged data.
    BusinessCalendar::with_imported(days)
        .map_err(|e| DomainError::Storage(format!("stored office calendar: {e}")))
}

impl<S: Store, C: Clock> Services<S, C> {
    pub fn new(
        store: S,
        clock: C,
        validator: Arc<Validator>,
        calendar: BusinessCalendar,
        config: ServiceConfig,
    ) -> Self {
        Self {
            store,
            clock,
            validator,
            calendar: RwLock::new(calendar),
            config,
        }
    }

    /// Services whose business calendar is the shipped years plus the years imported into the
    /// store (`certreg calendar import`): how a server starts.
    pub async fn with_stored_calendar(
        store: S,
        clock: C,
        validator: Arc<Validator>,
        config: ServiceConfig,
    ) -> Result<Self> {
        let calendar = stored_calendar(&store).await?;
        Ok(Self::new(store, clock, validator, calendar, config))
    }

    /// Re-reads the imported years (another process may have imported since); returns the
    /// years now loaded.
    pub async fn reload_calendar(&self) -> Result<Vec<i32>> {
        let calendar = stored_calendar(&self.store).await?;
        let years = calendar.years();
        self.set_calendar(calendar);
        Ok(years)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Replaces the business calendar (after `certreg calendar import`), keeping the record of
    /// years the fallback answered so the health check goes on showing those still missing.
    pub fn set_calendar(&self, calendar: BusinessCalendar) {
        if let Ok(mut c) = self.calendar.write() {
            *c = calendar.remembering_fallbacks_of(&c);
        }
    }

    /// The years the office calendar holds (shipped and imported), sorted.
    pub fn calendar_years(&self) -> Vec<i32> {
        self.calendar.read().map(|c| c.years()).unwrap_or_default()
    }

    pub fn calendar_warnings(&self) -> Vec<String> {
        self.calendar
            .read()
            .map(|c| c.warnings_for(self.clock.today()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::random_id;

    /// Ids taken one after another never sort before an earlier one's millisecond (so new
    /// rows share index pages), and their last 80 bits are not a sequence.
    #[test]
    fn ids_sort_in_the_order_taken_and_end_in_random_bits() {
        let ids: Vec<String> = (0..200).map(|_| random_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        assert!(
            ids.windows(2).all(|w| w[0][..12] <= w[1][..12]),
            "ids out of order"
        );
        let tails: std::collections::HashSet<&str> = ids.iter().map(|id| &id[12..]).collect();
        assert_eq!(tails.len(), ids.len());
        let ascending = ids.windows(2).filter(|w| w[0][12..] < w[1][12..]).count();
        assert!(
            (40..160).contains(&ascending),
            "{ascending} of 199 tails ascend"
        );
    }
}
