//! Review applications: filed when an organization card's identifier does not match (R1.3).
//! The back office decides them (`backoffice.rs`).

use super::Services;
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::flow::Step;
use crate::model::*;
use crate::store::*;
use crate::types::*;

impl<S: Store, C: Clock> Services<S, C> {
    /// R1.3 確認 on 圖3-6: files the review application with the applicant's contact data. The
    /// flow ends; the agency tries again on the next business day.
    pub async fn file_review(
        &self,
        flow_id: &str,
        session: &str,
        name: &str,
        phone: &str,
        client: Option<&str>,
    ) -> Result<(ReviewApplication, Option<SectionContact>)> {
        let flow = self
            .store
            .flow(flow_id)
            .await?
            .ok_or(DomainError::FlowNotFound)?;
        flow.expect(session, flow.step, self.clock.now())?;
        if !flow.data.mismatch || !matches!(flow.step, Step::OrgCard | Step::NewOrgCard) {
            return Err(DomainError::WrongStep);
        }
        let name = PersonName::parse("applicant_name", name)?;
        let phone = Phone::parse("applicant_phone", "電話", phone)?;
        let code = flow.data.code.clone().ok_or(DomainError::WrongStep)?;
        let org = flow.data.org.clone().ok_or(DomainError::WrongStep)?;
        let agency = self
            .store
            .agency(&code)
            .await?
            .ok_or(DomainError::UnknownAgency)?;
        // Re-checked now, not taken from the card step: another flow of the same card may have
        // filed meanwhile (the store's one-pending-per-card index catches the last instant).
        match self.check_identifier(&agency, &org).await {
            Err(DomainError::OrgIdMismatch) => {}
            Err(e) => return Err(e),
            Ok(()) => return Err(DomainError::Conflict),
        }
        let now = self.clock.now();
        let application = ReviewApplication {
            id: 0,
            code: code.clone(),
            org: org.clone(),
            on_file: agency.org_identifier.clone(),
            applicant_name: name,
            applicant_phone: phone,
            filed_at: now,
            state: ReviewState::Pending,
        };
        let mut done = flow.clone();
        done.finish(now);
        let committed = self
            .store
            .commit(Commit {
                flow: Some(done),
                review: Some(ReviewWrite::Insert(Box::new(application.clone()))),
                receipt: Some(Receipt { code: code.clone(), kind: ReceiptKind::ReviewApplication, at: now, review_id: None, terms_version: None }),
                audit: vec![AuditEvent::new(now, format!("agency:{code}"), "review.file", "ok")
                    .agency(&code)
                    .cert(&org.cert)
                    .client(client)
                    .detail(serde_json::json!({"presented": org.org_identifier.as_str(), "on_file": agency.org_identifier.as_ref().map(|o| o.as_str().to_string())}))],
                ..Default::default()
            })
            .await?;
        let application = ReviewApplication {
            id: committed.review_id.unwrap_or_default(),
            ..application
        };
        Ok((
            application,
            self.config.contacts.section_for(&agency.county).cloned(),
        ))
    }
}
