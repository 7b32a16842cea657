//! Reads that need no card: an agency's master data, its receipts (R4.1).

use super::Services;
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::model::*;
use crate::store::*;
use crate::types::*;

impl<S: Store, C: Clock> Services<S, C> {
    /// The agency's master data, if the code is on file.
    pub async fn agency(&self, code: &InstitutionCode) -> Result<Option<Agency>> {
        self.store.agency(code).await
    }

    /// R4.1: the agency's name and its receipts, newest first. Nothing personal.
    pub async fn receipts(
        &self,
        code: &str,
    ) -> Result<(Agency, Vec<(Receipt, Option<ReviewState>)>)> {
        let code = InstitutionCode::parse(code)?;
        let agency = self
            .store
            .agency(&code)
            .await?
            .ok_or(DomainError::UnknownAgency)?;
        let reviews = self.store.reviews(&code).await?;
        let receipts = self
            .store
            .receipts(&code)
            .await?
            .into_iter()
            .map(|r| {
                let state = r
                    .review_id
                    .and_then(|id| reviews.iter().find(|a| a.id == id))
                    .map(|a| a.state.clone());
                (r, state)
            })
            .collect();
        Ok((agency, receipts))
    }
}
