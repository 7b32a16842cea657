//! A store that can hold one chosen commit at a gate: the service has made every check it
//! makes and handed its change to the store, and waits there while the test lets a rival
//! request run to the end. Races are then replayed in one exact order, on either database.

use domain::Result;
use domain::calendar::CalendarDay;
use domain::flow::Flow;
use domain::model::*;
use domain::store::*;
use domain::types::{CertSerial, InstitutionCode};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::sync::Barrier;

type Pick = Box<dyn Fn(&Commit) -> bool + Send + Sync>;

struct Gate {
    pick: Pick,
    arrived: Arc<Barrier>,
    release: Arc<Barrier>,
}

/// The real store, with a gate that can be armed for one commit.
#[derive(Clone)]
pub struct Paused<S> {
    inner: S,
    gate: Arc<Mutex<Option<Gate>>>,
}

/// The test's side of an armed gate.
pub struct Held {
    arrived: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl Held {
    /// Returns once the chosen commit has reached the store.
    pub async fn arrived(&self) {
        self.arrived.wait().await;
    }

    /// Lets it go on.
    pub async fn release(&self) {
        self.release.wait().await;
    }
}

impl<S> Paused<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            gate: Arc::new(Mutex::new(None)),
        }
    }

    /// Holds the next commit `pick` chooses (once).
    pub fn hold(&self, pick: impl Fn(&Commit) -> bool + Send + Sync + 'static) -> Held {
        let (arrived, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        *self.gate.lock().unwrap() = Some(Gate {
            pick: Box::new(pick),
            arrived: arrived.clone(),
            release: release.clone(),
        });
        Held { arrived, release }
    }
}

impl<S> std::ops::Deref for Paused<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.inner
    }
}

impl<S: Store + Clone + 'static> Store for Paused<S> {
    async fn agency(&self, code: &InstitutionCode) -> Result<Option<Agency>> {
        self.inner.agency(code).await
    }
    async fn upsert_agencies(&self, agencies: &[Agency]) -> Result<u64> {
        self.inner.upsert_agencies(agencies).await
    }
    async fn insert_flow(&self, flow: &Flow) -> Result<()> {
        self.inner.insert_flow(flow).await
    }
    async fn flow(&self, id: &str) -> Result<Option<Flow>> {
        self.inner.flow(id).await
    }
    async fn insert_flow_capped(
        &self,
        flow: &Flow,
        max: u64,
        since: OffsetDateTime,
        challenge: Option<&StoredChallenge>,
    ) -> Result<()> {
        self.inner
            .insert_flow_capped(flow, max, since, challenge)
            .await
    }
    async fn insert_challenge(&self, challenge: &StoredChallenge) -> Result<()> {
        self.inner.insert_challenge(challenge).await
    }
    async fn consume_challenge(&self, id: &str, now: OffsetDateTime) -> Result<StoredChallenge> {
        self.inner.consume_challenge(id, now).await
    }
    async fn commit(&self, commit: Commit) -> Result<Committed> {
        let gate = {
            let mut gate = self.gate.lock().unwrap();
            match gate.as_ref() {
                Some(g) if (g.pick)(&commit) => gate.take(),
                _ => None,
            }
        };
        if let Some(g) = gate {
            g.arrived.wait().await;
            g.release.wait().await;
        }
        self.inner.commit(commit).await
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<()> {
        self.inner.append_audit(event).await
    }
    async fn registration(&self, code: &InstitutionCode) -> Result<Option<Registration>> {
        self.inner.registration(code).await
    }
    async fn cert_history(&self, code: &InstitutionCode) -> Result<Vec<ReplacedCert>> {
        self.inner.cert_history(code).await
    }
    async fn operators(&self, code: &InstitutionCode) -> Result<Vec<Operator>> {
        self.inner.operators(code).await
    }
    async fn operator(&self, code: &InstitutionCode, id: i64) -> Result<Option<Operator>> {
        self.inner.operator(code, id).await
    }
    async fn operator_by_serial(
        &self,
        code: &InstitutionCode,
        serial: &CertSerial,
    ) -> Result<Option<Operator>> {
        self.inner.operator_by_serial(code, serial).await
    }
    async fn receipts(&self, code: &InstitutionCode) -> Result<Vec<Receipt>> {
        self.inner.receipts(code).await
    }
    async fn reviews(&self, code: &InstitutionCode) -> Result<Vec<ReviewApplication>> {
        self.inner.reviews(code).await
    }
    async fn review(&self, id: i64) -> Result<Option<ReviewApplication>> {
        self.inner.review(id).await
    }
    async fn pending_reviews(&self) -> Result<Vec<ReviewApplication>> {
        self.inner.pending_reviews().await
    }
    async fn add_reviewer(&self, name: &str, section: Section, serial: &CertSerial) -> Result<i64> {
        self.inner.add_reviewer(name, section, serial).await
    }
    async fn reviewers(&self) -> Result<Vec<Reviewer>> {
        self.inner.reviewers().await
    }
    async fn learn_reviewer_issuer(
        &self,
        id: i64,
        serial: &CertSerial,
        issuer: &str,
    ) -> Result<()> {
        self.inner.learn_reviewer_issuer(id, serial, issuer).await
    }
    async fn set_reviewer_active(&self, id: i64, active: bool) -> Result<()> {
        self.inner.set_reviewer_active(id, active).await
    }
    async fn calendar_days(&self) -> Result<Vec<CalendarDay>> {
        self.inner.calendar_days().await
    }
    async fn import_calendar(&self, days: &[CalendarDay]) -> Result<()> {
        self.inner.import_calendar(days).await
    }
    async fn verify_audit(&self) -> Result<AuditReport> {
        self.inner.verify_audit().await
    }
    async fn decided_reviews(&self, limit: i64) -> Result<Vec<ReviewApplication>> {
        self.inner.decided_reviews(limit).await
    }
    async fn codes_by_serial(&self, serial: &CertSerial) -> Result<Vec<InstitutionCode>> {
        self.inner.codes_by_serial(serial).await
    }
    async fn audit_search(&self, filter: &AuditFilter) -> Result<Vec<(i64, AuditEvent)>> {
        self.inner.audit_search(filter).await
    }
    async fn registered_codes(&self) -> Result<Vec<InstitutionCode>> {
        self.inner.registered_codes().await
    }
    async fn notice_claim(&self, day: time::Date, keys: &[String]) -> Result<Vec<bool>> {
        self.inner.notice_claim(day, keys).await
    }
    async fn notice_release(&self, day: time::Date, keys: &[String]) -> Result<()> {
        self.inner.notice_release(day, keys).await
    }
}
