//! The back office (F6): the reviewer's account checked on every use, the applications of the
//! reviewer's section (R6.1), 核准 / 駁回 (R6.2) and the search (R6.3). A reviewer sees and
//! decides only the applications of agencies in the counties their section is in charge of;
//! an agency whose county no section is in charge of is left to nobody, so every section may.
//! Every list and search is an audit event.

use super::Services;
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::expiry::{Flag, expiry_report};
use crate::model::*;
use crate::store::*;
use crate::types::*;
use time::OffsetDateTime;

/// An application as the back office shows it, with its agency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewCase {
    pub application: ReviewApplication,
    pub agency_name: String,
    pub county: String,
    /// No section is in charge of the agency's county: every section may decide it.
    pub unassigned: bool,
}

/// Which applications a reviewer lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewList {
    /// Pending, oldest first.
    Pending,
    /// Decided, the latest decision first (at most [`DECIDED_LIMIT`]).
    Decided,
}

/// The most decided applications listed.
pub const DECIDED_LIMIT: i64 = 200;

/// What the back office searches by (R6.3); every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchCriteria {
    pub code: Option<InstitutionCode>,
    pub serial: Option<CertSerial>,
    /// From this instant (inclusive).
    pub from: Option<OffsetDateTime>,
    /// Up to this instant (exclusive).
    pub to: Option<OffsetDateTime>,
    /// `ok` or an error code.
    pub outcome: Option<String>,
}

/// One agency found: master data, registration, its certificates' expiry and revocation
/// flags, and its receipts within the dates asked (with the state of their reviews).
#[derive(Debug, Clone)]
pub struct AgencyRecord {
    pub agency: Agency,
    pub registration: Option<Registration>,
    pub flags: Vec<Flag>,
    pub receipts: Vec<(Receipt, Option<ReviewState>)>,
}

/// What a search found: agencies, and audit events with their sequence numbers (newest first,
/// at most [`AUDIT_SEARCH_MAX`]).
#[derive(Debug, Clone, Default)]
pub struct SearchResult {
    pub agencies: Vec<AgencyRecord>,
    pub audit: Vec<(i64, AuditEvent)>,
}

impl<S: Store, C: Clock> Services<S, C> {
    /// The reviewer as the store has it now: a disabled or removed account is `NotReviewer`.
    pub async fn reviewer(&self, id: i64) -> Result<Reviewer> {
        self.store
            .reviewers()
            .await?
            .into_iter()
            .find(|r| r.id == id && r.active)
            .ok_or(DomainError::NotReviewer)
    }

    /// The application with its agency, if `section` may see it.
    async fn case_for(
        &self,
        application: ReviewApplication,
        section: Section,
    ) -> Result<Option<ReviewCase>> {
        let agency = self.store.agency(&application.code).await?;
        let (agency_name, county) = agency.map(|g| (g.name, g.county)).unwrap_or_default();
        let in_charge = self.config.contacts.section_for(&county).map(|c| c.section);
        Ok(match in_charge {
            Some(s) if s != section => None,
            _ => Some(ReviewCase {
                application,
                agency_name,
                county,
                unassigned: in_charge.is_none(),
            }),
        })
    }

    /// The applications of the reviewer's section; the view is audited.
    pub async fn review_list(
        &self,
        reviewer: &Reviewer,
        list: ReviewList,
        client: Option<&str>,
    ) -> Result<Vec<ReviewCase>> {
        let applications = match list {
            ReviewList::Pending => self.store.pending_reviews().await?,
            ReviewList::Decided => self.store.decided_reviews(DECIDED_LIMIT).await?,
        };
        let mut cases = Vec::new();
        for a in applications {
            if let Some(c) = self.case_for(a, reviewer.section).await? {
                cases.push(c);
            }
        }
        let detail = serde_json::json!({
            "view": if list == ReviewList::Decided { "decided" } else { "queue" },
            "section": reviewer.section,
            "rows": cases.len(),
        });
        self.audit_backoffice(reviewer, client, detail).await?;
        Ok(cases)
    }

    /// One application of the reviewer's section; `ReviewNotFound` for an id nobody has and
    /// for another section's application alike.
    pub async fn review_case(&self, reviewer: &Reviewer, id: i64) -> Result<ReviewCase> {
        let application = self
            .store
            .review(id)
            .await?
            .ok_or(DomainError::ReviewNotFound)?;
        self.case_for(application, reviewer.section)
            .await?
            .ok_or(DomainError::ReviewNotFound)
    }

    /// R6.2: 核准 / 駁回 an application of the reviewer's section. An approval takes effect
    /// on the next business day (Taipei). The store re-checks inside the transaction that
    /// the application is still pending (`Conflict`) and the reviewer still active
    /// (`NotReviewer`).
    pub async fn decide_review(
        &self,
        reviewer: &Reviewer,
        id: i64,
        approve: bool,
        note: &str,
    ) -> Result<ReviewState> {
        if !reviewer.active {
            return Err(DomainError::NotReviewer);
        }
        let application = self.review_case(reviewer, id).await?.application;
        let now = self.clock.now();
        let note = optional_text("note", "備註", note, 500)?.unwrap_or_default();
        let state = if approve {
            let (effective, _) = self
                .calendar
                .read()
                .map(|c| c.next_business_day(self.clock.today()))
                .map_err(|_| DomainError::Storage("calendar lock".into()))?;
            ReviewState::Approved {
                decided_at: now,
                effective,
                reviewer: reviewer.name.clone(),
                note,
            }
        } else {
            ReviewState::Rejected {
                decided_at: now,
                reviewer: reviewer.name.clone(),
                note,
            }
        };
        let audit = AuditEvent::new(
            now,
            format!("reviewer:{}", reviewer.id),
            if approve {
                "review.approve"
            } else {
                "review.reject"
            },
            "ok",
        )
        .agency(&application.code)
        .cert(&application.org.cert);
        self.store
            .commit(Commit {
                review: Some(ReviewWrite::Decide {
                    id,
                    state: state.clone(),
                    reviewer_id: reviewer.id,
                }),
                audit: vec![audit],
                ..Default::default()
            })
            .await?;
        Ok(state)
    }

    /// R6.3: agencies by 機關代號 or by a serial their registration holds (both must hold when
    /// both are given), and the audit log by all the criteria. The search is audited.
    pub async fn backoffice_search(
        &self,
        reviewer: &Reviewer,
        criteria: &SearchCriteria,
        client: Option<&str>,
    ) -> Result<SearchResult> {
        let mut codes: Vec<InstitutionCode> = criteria.code.iter().cloned().collect();
        if let Some(serial) = &criteria.serial
            && criteria.code.is_none()
        {
            for c in self.store.codes_by_serial(serial).await? {
                if !codes.contains(&c) {
                    codes.push(c);
                }
            }
        }
        let mut agencies = Vec::new();
        for code in &codes {
            if let Some(record) = self.agency_record(code, criteria).await? {
                agencies.push(record);
            }
        }
        let audit = self
            .store
            .audit_search(&AuditFilter {
                code: criteria.code.clone(),
                serial: criteria.serial.clone(),
                from: criteria.from,
                to: criteria.to,
                outcome: criteria.outcome.clone(),
                limit: AUDIT_SEARCH_MAX,
            })
            .await?;
        let rfc3339 = |t: Option<OffsetDateTime>| {
            t.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        let detail = serde_json::json!({
            "view": "search",
            "code": criteria.code.as_ref().map(|c| c.as_str().to_string()),
            "serial": criteria.serial.as_ref().map(|c| c.as_str().to_string()),
            "from": rfc3339(criteria.from), "to": rfc3339(criteria.to),
            "outcome": criteria.outcome,
            "agencies": agencies.len(), "audit": audit.len(),
        });
        self.audit_backoffice(reviewer, client, detail).await?;
        Ok(SearchResult { agencies, audit })
    }

    async fn agency_record(
        &self,
        code: &InstitutionCode,
        criteria: &SearchCriteria,
    ) -> Result<Option<AgencyRecord>> {
        let Some(agency) = self.store.agency(code).await? else {
            return Ok(None);
        };
        let registration = self.store.registration(code).await?;
        let operators = self.store.operators(code).await?;
        let flags = expiry_report(
            self.clock.now(),
            &self.validator,
            registration.as_slice(),
            &operators,
        );
        let reviews = self.store.reviews(code).await?;
        let receipts = self
            .store
            .receipts(code)
            .await?
            .into_iter()
            .filter(|r| {
                criteria.from.is_none_or(|f| r.at >= f) && criteria.to.is_none_or(|t| r.at < t)
            })
            .map(|r| {
                let state = r
                    .review_id
                    .and_then(|id| reviews.iter().find(|a| a.id == id))
                    .map(|a| a.state.clone());
                (r, state)
            })
            .collect();
        Ok(Some(AgencyRecord {
            agency,
            registration,
            flags,
            receipts,
        }))
    }

    async fn audit_backoffice(
        &self,
        reviewer: &Reviewer,
        client: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<()> {
        let event = AuditEvent::new(
            self.clock.now(),
            format!("reviewer:{}", reviewer.id),
            "backoffice.search",
            "ok",
        )
        .client(client)
        .detail(detail);
        self.store.append_audit(&event).await
    }
}
