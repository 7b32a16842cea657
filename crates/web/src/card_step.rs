//! The card step, whichever door it comes through (the pages' form post or the API's JSON):
//! the flow must be the session's; the refusals counted for the agency's 機關代號 must leave
//! room; the domain spends the challenge, verifies the proof and applies the step's rule; the
//! outcome is counted in `certreg_card_steps_total`; a login puts its role in the session.
//! The pages and the API only translate the request in and the [`CardDone`] out.

use crate::AppState;
use crate::security::{Bucket, LimitKey};
use crate::session::{FlowResult, ReviewerSession, Role, SessionHandle};
use domain::DomainError;
use domain::flow::Flow;
use domain::service::{AdminGrant, CardStepInput, OperatorGrant, StepOutcome};
use std::net::IpAddr;

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
        .session_flow(&req.flow_id, &s.id)
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
    let input = CardStepInput {
        flow_id: req.flow_id,
        session: s.id.clone(),
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
    };
    let attempt = state.svc().attempt_card_on(flow.clone(), input).await;
    if let Some(code) = &attempt.refused_code {
        state.limiter().hit(
            LimitKey::code(Bucket::CardRefusal, code, addr),
            per_code,
            state.now(),
        );
    }
    let result = match attempt.result {
        Ok(StepOutcome::Reviewer(_)) if door == Door::Api => Err(DomainError::Forbidden),
        other => other,
    };
    let outcome = result.as_ref().map_or_else(DomainError::code, |_| "ok");
    state.metrics().card_step(kind, step, outcome);
    let outcome = result.map_err(|e| CardFailure::Refused(Box::new(flow.clone()), e))?;
    // A cookie session gets a fresh id at login; a bearer client keeps the token it holds.
    // Either way the session holds this role only.
    let login = |role: Role| {
        session.update(|s| {
            if s.bearer {
                s.login_in_place(role);
            } else {
                s.login(role);
            }
        })
    };
    Ok(match outcome {
        StepOutcome::Advanced(f) => CardDone::Advanced(f),
        StepOutcome::ReviewNeeded(f) => CardDone::ReviewNeeded(f),
        StepOutcome::Admin(grant) => {
            login(Role::Admin(grant.clone()));
            CardDone::Admin(grant)
        }
        StepOutcome::Operator(grant) => {
            login(Role::Operator(grant.clone()));
            CardDone::Operator(grant)
        }
        StepOutcome::Reviewer(r) => {
            login(Role::Reviewer(ReviewerSession {
                id: r.id,
                name: r.name,
                section: r.section,
            }));
            CardDone::Reviewer
        }
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

fn answered(session: &SessionHandle, door: Door, result: FlowResult) -> CardDone {
    if door == Door::Pages {
        session.update(|s| s.data_mut().result = Some(result.clone()));
    }
    CardDone::Answered(result)
}
