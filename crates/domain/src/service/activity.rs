//! 登入與異動紀錄: what the agency's administrator sees of the agency's own audit trail — card
//! logins of the administrator and the operators, grants added, changed and deleted, first
//! registration and replacements — newest first, by date and by person.

use super::Services;
use super::operators::AdminGrant;
use crate::clock::Clock;
use crate::error::Result;
use crate::model::*;
use crate::store::*;
use time::OffsetDateTime;

/// The actions the administrator's activity view lists.
pub const ACTIVITY_ACTIONS: [&str; 9] = [
    "admin.login",
    "operator.login",
    "operator.add",
    "operator.modify",
    "operator.delete",
    "registration.first_registration",
    "registration.replace_org",
    "registration.replace_admin",
    "registration.replace_both",
];

/// What the view is narrowed to; every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityFilter {
    /// From this instant (inclusive).
    pub from: Option<OffsetDateTime>,
    /// Up to this instant (exclusive).
    pub to: Option<OffsetDateTime>,
    /// One person: the actor as recorded (`admin:<code>`, `operator:<serial>`).
    pub actor: Option<String>,
}

impl<S: Store, C: Clock> Services<S, C> {
    /// The agency's activity, newest first: at most [`AUDIT_SEARCH_MAX`] events are read for
    /// the dates asked, of which those of [`ACTIVITY_ACTIONS`] (and the person asked) are kept.
    /// Audit events never hold a full national ID.
    pub async fn agency_activity(
        &self,
        grant: &AdminGrant,
        filter: &ActivityFilter,
    ) -> Result<Vec<AuditEvent>> {
        self.check_admin(grant).await?;
        let events = self
            .store
            .audit_search(&AuditFilter {
                code: Some(grant.code.clone()),
                from: filter.from,
                to: filter.to,
                outcome: Some("ok".into()),
                limit: AUDIT_SEARCH_MAX,
                ..Default::default()
            })
            .await?;
        Ok(events
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| ACTIVITY_ACTIONS.contains(&e.action.as_str()))
            .filter(|e| filter.actor.as_ref().is_none_or(|a| *a == e.actor))
            .collect())
    }
}
