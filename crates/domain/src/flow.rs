//! The flows of the manual as server-side state machines: which steps each flow has, in which
//! order, and what a flow has collected so far. A flow belongs to one browser session, expires
//! after 15 minutes without progress, and its final confirmation takes effect once.

use crate::error::{DomainError, Result};
use crate::model::{AdminContact, CitizenCard, OrgCard};
use crate::types::{InstitutionCode, NationalId};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// A flow expires after this long without progress (SPEC §4.1).
pub const FLOW_IDLE_LIMIT: Duration = Duration::minutes(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// F1 首次註冊
    FirstRegistration,
    /// F2 授權指派: organization card + administrator card → administrator session.
    AdminLogin,
    /// R3.1 更換機關憑證
    ReplaceOrg,
    /// R3.2 更換授權管理者自然人憑證
    ReplaceAdmin,
    /// R3.3 更換機關憑證和更換授權管理者自然人憑證
    ReplaceBoth,
    /// R4.2 查詢機關憑證 OID
    QueryOrgOid,
    /// R4.3 查詢自然人憑證序號
    QueryCitizenSerial,
    /// R5.1 經辦人登入
    OperatorLogin,
    /// R6.1 本部審核人員登入
    ReviewerLogin,
}

impl FlowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstRegistration => "first_registration",
            Self::AdminLogin => "admin_login",
            Self::ReplaceOrg => "replace_org",
            Self::ReplaceAdmin => "replace_admin",
            Self::ReplaceBoth => "replace_both",
            Self::QueryOrgOid => "query_org_oid",
            Self::QueryCitizenSerial => "query_citizen_serial",
            Self::OperatorLogin => "operator_login",
            Self::ReviewerLogin => "reviewer_login",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub const ALL: [FlowKind; 9] = [
        Self::FirstRegistration,
        Self::AdminLogin,
        Self::ReplaceOrg,
        Self::ReplaceAdmin,
        Self::ReplaceBoth,
        Self::QueryOrgOid,
        Self::QueryCitizenSerial,
        Self::OperatorLogin,
        Self::ReviewerLogin,
    ];

    /// The step a new flow of this kind waits at.
    pub fn first_step(self) -> Step {
        self.steps()[0]
    }

    /// The steps in order. `Done` is implicit after the last.
    pub fn steps(self) -> &'static [Step] {
        use Step::*;
        match self {
            Self::FirstRegistration => &[Terms, OrgCard, AdminCard, Confirm],
            Self::AdminLogin => &[OrgCard, AdminCard],
            Self::ReplaceOrg => &[Terms, NewOrgCard, AdminCard, Confirm],
            Self::ReplaceAdmin => &[Terms, OrgCard, NewAdminCard, Confirm],
            Self::ReplaceBoth => &[Terms, NewOrgCard, NewAdminCard, Confirm],
            Self::QueryOrgOid => &[QueryOrgCard],
            Self::QueryCitizenSerial => &[QueryCitizenCard],
            Self::OperatorLogin => &[OperatorCard],
            Self::ReviewerLogin => &[ReviewerCard],
        }
    }
}

/// A step of a flow. Card steps take a proof; `Terms` takes the agreed version; `Confirm` takes
/// the administrator's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Terms,
    /// The registered (or, in F1, the presented) organization card.
    OrgCard,
    /// A new organization card (replacements).
    NewOrgCard,
    /// The registered administrator's card (or, in F1, the new administrator's).
    AdminCard,
    /// A new administrator card (replacements).
    NewAdminCard,
    Confirm,
    QueryOrgCard,
    QueryCitizenCard,
    OperatorCard,
    /// The reviewer's citizen card (R6.1).
    ReviewerCard,
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terms => "terms",
            Self::OrgCard => "org_card",
            Self::NewOrgCard => "new_org_card",
            Self::AdminCard => "admin_card",
            Self::NewAdminCard => "new_admin_card",
            Self::Confirm => "confirm",
            Self::QueryOrgCard => "query_org_card",
            Self::QueryCitizenCard => "query_citizen_card",
            Self::OperatorCard => "operator_card",
            Self::ReviewerCard => "reviewer_card",
            Self::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use Step::*;
        [
            Terms,
            OrgCard,
            NewOrgCard,
            AdminCard,
            NewAdminCard,
            Confirm,
            QueryOrgCard,
            QueryCitizenCard,
            OperatorCard,
            ReviewerCard,
            Done,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether this step is answered with a card proof.
    pub fn is_card_step(self) -> bool {
        !matches!(self, Step::Terms | Step::Confirm | Step::Done)
    }

    /// The role of the card this step asks for.
    pub fn role(self) -> Option<pki::anchors::Role> {
        use pki::anchors::Role;
        match self {
            Step::OrgCard | Step::NewOrgCard | Step::QueryOrgCard => Some(Role::Organization),
            Step::AdminCard
            | Step::NewAdminCard
            | Step::QueryCitizenCard
            | Step::OperatorCard
            | Step::ReviewerCard => Some(Role::Citizen),
            _ => None,
        }
    }
}

/// What a flow has collected so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowData {
    pub code: Option<InstitutionCode>,
    pub terms_version: Option<String>,
    pub org: Option<OrgCard>,
    pub admin_card: Option<CitizenCard>,
    pub admin_id: Option<NationalId>,
    /// The administrator data on file (replacements pre-fill the confirmation page with it).
    pub admin_contact: Option<AdminContact>,
    /// The identifier of a presented organization card that did not match: a review may be filed.
    pub mismatch: bool,
    /// The version of the registration the card steps checked: a replacement's 確認 applies
    /// against it, never against whatever is current by then.
    #[serde(default)]
    pub registration_version: Option<i64>,
}

/// A flow in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub id: String,
    pub kind: FlowKind,
    /// The browser session the flow belongs to.
    pub session: String,
    pub step: Step,
    pub data: FlowData,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last progress: the idle limit counts from here.
    #[serde(with = "time::serde::rfc3339")]
    pub touched_at: OffsetDateTime,
    /// Optimistic concurrency: every save names the version it read.
    pub version: i64,
}

impl Flow {
    pub fn new(id: String, kind: FlowKind, session: &str, now: OffsetDateTime) -> Self {
        Self {
            id,
            kind,
            session: session.to_string(),
            step: kind.first_step(),
            data: FlowData::default(),
            created_at: now,
            touched_at: now,
            version: 0,
        }
    }

    /// Refuses a flow of another session, an expired flow, a finished flow, or the wrong step.
    pub fn expect(&self, session: &str, step: Step, now: OffsetDateTime) -> Result<()> {
        if self.session != session {
            return Err(DomainError::FlowNotFound);
        }
        if self.step == Step::Done {
            return Err(if step == Step::Confirm {
                DomainError::AlreadyConfirmed
            } else {
                DomainError::WrongStep
            });
        }
        if now - self.touched_at > FLOW_IDLE_LIMIT {
            return Err(DomainError::FlowExpired);
        }
        if self.step != step {
            return Err(DomainError::WrongStep);
        }
        Ok(())
    }

    /// Moves to the next step and records progress as a new version: saving it names the
    /// version read, so of two saves of the same step only one takes effect.
    pub fn advance(&mut self, now: OffsetDateTime) {
        let steps = self.kind.steps();
        let next = steps
            .iter()
            .position(|s| *s == self.step)
            .and_then(|i| steps.get(i + 1));
        self.step = next.copied().unwrap_or(Step::Done);
        self.touch(now);
    }

    /// Records progress that stays on the current step (what it collected changed).
    pub fn touch(&mut self, now: OffsetDateTime) {
        self.touched_at = now;
        self.version += 1;
    }

    /// Ends the flow where it is (a review application filed instead of going on).
    pub fn finish(&mut self, now: OffsetDateTime) {
        self.step = Step::Done;
        self.touch(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn spec_4_1_steps_run_in_order_and_end_done() {
        let now = datetime!(2026-06-01 09:00 UTC);
        let mut f = Flow::new("f".into(), FlowKind::FirstRegistration, "s", now);
        assert_eq!(f.step, Step::Terms);
        assert_eq!(
            f.expect("s", Step::OrgCard, now).unwrap_err(),
            DomainError::WrongStep
        );
        for step in [Step::Terms, Step::OrgCard, Step::AdminCard, Step::Confirm] {
            f.expect("s", step, now).unwrap();
            f.advance(now);
        }
        assert_eq!(f.step, Step::Done);
        assert_eq!(
            f.expect("s", Step::Confirm, now).unwrap_err(),
            DomainError::AlreadyConfirmed
        );
    }

    #[test]
    fn spec_4_1_idle_flow_expires_and_belongs_to_its_session() {
        let now = datetime!(2026-06-01 09:00 UTC);
        let f = Flow::new("f".into(), FlowKind::AdminLogin, "s", now);
        assert!(f.expect("s", Step::OrgCard, now + FLOW_IDLE_LIMIT).is_ok());
        assert_eq!(
            f.expect(
                "s",
                Step::OrgCard,
                now + FLOW_IDLE_LIMIT + Duration::seconds(1)
            )
            .unwrap_err(),
            DomainError::FlowExpired
        );
        assert_eq!(
            f.expect("other", Step::OrgCard, now).unwrap_err(),
            DomainError::FlowNotFound
        );
    }
}
