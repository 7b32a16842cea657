//! The card step, whichever door it comes through (the pages' form post or the API's JSON):
//! the flow must be the session's; the refusals counted for the agency's 機關代號 must leave
//! room; the domain spends the challenge, verifies the proof and applies the step's rule; the
//! outcome is counted in `certreg_card_steps_total`; a login puts its role in the session.
//! The pages and the API only translate the request in and the [`CardDone`] out.

use crate::AppState;
use crate::security::{Bucket, LimitKey};
use crate::session::{FlowResult, ReviewerSession, Role, Session, SessionHandle};
use domain::DomainError;
use domain::flow::Flow;
use domain::service::{AdminGrant, CardStepInput, LoginSession, OperatorGrant, StepOutcome};
use domain::store::{SessionSaved, SessionWrite};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// Which door the step came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    Pages,
    /// The JSON API: the back office is pages only, so no reviewer login through it.
    Api,
}

/// A card proof and the fields typed beside it, as sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct CardRequest {
    pub flow_id: String,
    pub challenge_id: String,
    pub signature: String,
    pub certificate: Option<String>,
    pub institution_code: Option<String>,
    pub national_id: Option<String>,
}

/// What an accepted card step did.
#[derive(Debug)]
pub(crate) enum CardDone {
    /// The flow moved on; `flow.step` says to what.
    Advanced(Box<Flow>),
    /// The organization card's identifier does not match: the flow waits for a review
    /// application (圖3-6).
    ReviewNeeded(Box<Flow>),
    /// 授權指派: the session is now the agency's administrator.
    Admin(AdminGrant),
    /// 經辦人登入: the session is now this operator.
    Operator(OperatorGrant),
    /// 本部審核人員登入: the session is now a reviewer's.
    Reviewer,
    /// A query answered (R4.2, R4.3). Through the pages it is also kept in the session for
    /// the flow's result page.
    Answered(FlowResult),
}

/// Why a card step was not accepted.
#[derive(Debug)]
pub(crate) enum CardFailure {
    /// Not this session's flow (or none): junk that is never counted against an agency.
    NoFlow(DomainError),
    /// Too many refusals for the 機關代號 typed or on file; nothing was tried.
    RateLimited,
    /// The domain refused the step.
    Refused(Box<Flow>, DomainError),
}

/// Runs one card step for the session behind `session`.
pub(crate) async fn submit(
    state: &AppState,
    session: &SessionHandle,
    addr: Option<IpAddr>,
    door: Door,
    req: CardRequest,
) -> Result<CardDone, CardFailure> {
    let s = session.get();
    let flow = state
        .svc()
        .session_flow_read(session.take_flow(&req.flow_id), &req.flow_id, &s.id)
        .await
        .map_err(CardFailure::NoFlow)?;
    let (kind, step) = (flow.kind.as_str(), flow.step.as_str());
    let per_code = state.config().limits.card_steps_per_code;
    let code_key = crate::security::step_code(&flow, req.institution_code.as_deref())
        .map(|c| LimitKey::code(Bucket::CardRefusal, &c, addr));
    if code_key.is_some_and(|k| state.limiter().exhausted(k, per_code, state.now())) {
        state.metrics().card_step(kind, step, "rate_limited");
        return Err(CardFailure::RateLimited);
    }
    let trimmed = |v: &str| v.trim().as_bytes().to_vec();
    let login = Arc::new(LoginWrite {
        before: s,
        door,
        now: state.now(),
        after: Mutex::default(),
    });
    let input = CardStepInput {
        flow_id: req.flow_id,
        session: login.before.id.clone(),
        challenge_id: req.challenge_id,
        signature: trimmed(&req.signature),
        certificate: req
            .certificate
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .map(trimmed),
        institution_code: req.institution_code,
        national_id: req.national_id,
        client: addr.map(|a| a.to_string()),
        login_session: Some(login.clone()),
    };
    let attempt = state.svc().attempt_card_on(flow.clone(), input).await;
    if let Some(code) = &attempt.refused_code {
        state.limiter().hit(
            LimitKey::code(Bucket::CardRefusal, code, addr),
            per_code,
            state.now(),
        );
    }
    let outcome = attempt
        .result
        .as_ref()
        .map_or_else(DomainError::code, |_| "ok");
    state.metrics().card_step(kind, step, outcome);
    let outcome = attempt
        .result
        .map_err(|e| CardFailure::Refused(Box::new(flow.clone()), e))?;
    // The session as the login's commit left it; one the commit could not write (changed
    // meanwhile by another request) is saved after the request as any other, merged.
    if let Some(role) = role_of(&outcome) {
        let written = login.after.lock().unwrap_or_else(|e| e.into_inner()).take();
        debug_assert!(written.is_some(), "a login that did not write its session");
        let (after, saved) =
            written.unwrap_or_else(|| (login.before.logged_in(role, login.now).0, None));
        session.update(|s| {
            *s = after;
            if let Some(SessionSaved::Saved(version)) = saved {
                s.stored_by_login(version, login.now);
            }
        });
    }
    Ok(match outcome {
        StepOutcome::Advanced(f) => CardDone::Advanced(f),
        StepOutcome::ReviewNeeded(f) => CardDone::ReviewNeeded(f),
        StepOutcome::Admin(grant) => CardDone::Admin(grant),
        StepOutcome::Operator(grant) => CardDone::Operator(grant),
        StepOutcome::Reviewer(_) => CardDone::Reviewer,
        StepOutcome::OrgOid {
            agency_name,
            org_name,
            org_identifier,
            verdict,
            ..
        } => answered(
            session,
            door,
            FlowResult::OrgOid {
                flow_id: flow.id,
                agency_name,
                org_name,
                org_identifier: org_identifier.as_str().to_string(),
                verdict,
            },
        ),
        StepOutcome::CitizenSerial { name, serial } => answered(
            session,
            door,
            FlowResult::CitizenSerial {
                flow_id: flow.id,
                name,
                serial: serial.as_str().to_string(),
            },
        ),
    })
}

/// The one role a login outcome gives the session (a session holds one role: the grants of
/// the others go).
fn role_of(outcome: &StepOutcome) -> Option<Role> {
    match outcome {
        StepOutcome::Admin(grant) => Some(Role::Admin(grant.clone())),
        StepOutcome::Operator(grant) => Some(Role::Operator(grant.clone())),
        StepOutcome::Reviewer(r) => Some(Role::Reviewer(ReviewerSession {
            id: r.id,
            name: r.name.clone(),
            section: r.section,
        })),
        _ => None,
    }
}

/// The caller's session for the domain's login commit: the role goes in with the flow, and
/// the session as written is kept for the response.
struct LoginWrite {
    /// The session as the request found it.
    before: Session,
    door: Door,
    now: OffsetDateTime,
    /// The session after the login, and what the commit did with it.
    after: Mutex<Option<(Session, Option<SessionSaved>)>>,
}

/// Without the sessions: they hold the cookie or bearer token and the CSRF token.
impl std::fmt::Debug for LoginWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginWrite")
            .field("door", &self.door)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl LoginSession for LoginWrite {
    fn write(&self, outcome: &StepOutcome) -> domain::Result<Option<SessionWrite>> {
        // The back office is pages only: a reviewer's card through the API logs in nowhere.
        if matches!(outcome, StepOutcome::Reviewer(_)) && self.door == Door::Api {
            return Err(DomainError::Forbidden);
        }
        let Some(role) = role_of(outcome) else {
            return Ok(None);
        };
        let (after, write) = self.before.logged_in(role, self.now);
        *self.after.lock().unwrap_or_else(|e| e.into_inner()) = Some((after, None));
        Ok(write)
    }

    fn saved(&self, saved: SessionSaved) {
        if let Some((_, s)) = self
            .after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            *s = Some(saved);
        }
    }
}

fn answered(session: &SessionHandle, door: Door, result: FlowResult) -> CardDone {
    if door == Door::Pages {
        session.update(|s| s.data_mut().result = Some(result.clone()));
    }
    CardDone::Answered(result)
}
