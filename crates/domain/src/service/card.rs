//! The card step: the challenge spent, the typed fields checked, the proof verified, then the
//! rule of the flow's step (`steps.rs`) applied; refusals are audit events.

use super::operators::{AdminGrant, OperatorGrant};
use super::{Services, certificate_check};
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::flow::{Flow, Step};
use crate::model::*;
use crate::store::*;
use crate::types::*;
use pki::challenge::Challenge;

/// What [`Services::attempt_card`] did: the step's result and, for a refusal of a proof that had
/// verified for the caller's own flow, the 機關代號 it was refused for.
#[derive(Debug)]
pub struct CardAttempt {
    pub result: Result<StepOutcome>,
    pub refused_code: Option<InstitutionCode>,
}

/// A card step's input: the proof, and the fields typed on the same screen.
#[derive(Debug, Clone, Default)]
pub struct CardStepInput {
    pub flow_id: String,
    pub session: String,
    pub challenge_id: String,
    /// CMS (base64 or DER), or a raw signature with `certificate`.
    pub signature: Vec<u8>,
    pub certificate: Option<Vec<u8>>,
    /// 機關代號, on organization card steps and operator login.
    pub institution_code: Option<String>,
    /// 身分證統一編號, on citizen card steps.
    pub national_id: Option<String>,
    pub client: Option<String>,
    /// The caller's session, given the role of a login in the login's own commit.
    pub login_session: Option<std::sync::Arc<dyn LoginSession>>,
}

/// A caller's session as a login step sees it: what to write for the role the step grants,
/// and what became of that write.
pub trait LoginSession: std::fmt::Debug + Send + Sync {
    /// The session with the role `outcome` grants, or `None` to leave the session as it is
    /// (the outcome grants no role); an error refuses the login before anything is written
    /// (a role not granted through the caller's door).
    fn write(&self, outcome: &StepOutcome) -> Result<Option<SessionWrite>>;
    /// Called once the login's commit is done, with what became of the write.
    fn saved(&self, saved: SessionSaved);
}

/// What a card step led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The flow moved on; `flow.step` says to what.
    Advanced(Box<Flow>),
    /// The organization card's identifier does not match: ask for 姓名 and 電話 (圖3-6).
    ReviewNeeded(Box<Flow>),
    /// F2 done: the administrator may manage operators.
    Admin(AdminGrant),
    /// R4.2
    OrgOid {
        agency_name: String,
        org_name: String,
        org_identifier: OrgIdentifier,
        on_file: Option<OrgIdentifier>,
        verdict: OidVerdict,
    },
    /// R4.3
    CitizenSerial { name: String, serial: CertSerial },
    /// R5.1
    Operator(OperatorGrant),
    /// R6.1: an active back-office reviewer.
    Reviewer(Reviewer),
}

impl<S: Store, C: Clock> Services<S, C> {
    async fn verify_step(
        &self,
        flow: &Flow,
        input: &CardStepInput,
        stored: &StoredChallenge,
    ) -> Result<pki::validate::Validated> {
        let now = self.clock.now();
        let challenge = Challenge::with_nonce(
            &stored.purpose,
            &stored.origin,
            &stored.flow_id,
            stored.step.as_str(),
            stored.nonce.clone(),
            stored.issued_at,
        )?;
        let role = flow.step.role().ok_or(DomainError::WrongStep)?;
        let validator = self.validator.clone();
        let (signature, certificate) = (input.signature.clone(), input.certificate.clone());
        let verified = certificate_check(&self.validator, move || {
            pki::proof::verify_proof(
                &validator,
                &challenge,
                &signature,
                certificate.as_deref(),
                role,
                now,
            )
        })
        .await?;
        match verified {
            Ok(p) => Ok(p.certificate),
            Err(e) => {
                let event = AuditEvent::new(now, "anonymous", "proof.verify", e.code.as_str())
                    .client(input.client.as_deref())
                    .detail(serde_json::json!({"flow": flow.kind.as_str(), "step": flow.step.as_str(), "detail": e.detail}));
                self.store.append_audit(&event).await?;
                Err(e.into())
            }
        }
    }

    async fn audit_refusal(
        &self,
        flow: &Flow,
        input: &CardStepInput,
        cert: Option<&CertRef>,
        code: Option<&InstitutionCode>,
        e: &DomainError,
    ) -> Result<()> {
        let mut event = AuditEvent::new(
            self.clock.now(),
            "anonymous",
            &format!("{}.{}", flow.kind.as_str(), flow.step.as_str()),
            e.code(),
        )
        .client(input.client.as_deref());
        if let Some(c) = cert {
            event = event.cert(c);
        }
        if let Some(code) = code {
            event = event.agency(code);
        }
        self.store.append_audit(&event).await
    }

    /// Submits a card proof for the flow's current step and applies that step's rule.
    pub async fn submit_card(&self, input: CardStepInput) -> Result<StepOutcome> {
        self.attempt_card(input).await.result
    }

    /// [`Services::submit_card`], also saying whether a refusal came after the proof had
    /// verified for the caller's own flow (a real card refused by a business rule), and for
    /// which 機關代號: the only refusals a per-agency limit should count.
    pub async fn attempt_card(&self, input: CardStepInput) -> CardAttempt {
        match self.store.flow(&input.flow_id).await {
            Ok(Some(flow)) => self.attempt_card_on(flow, input).await,
            Ok(None) => CardAttempt {
                refused_code: None,
                result: Err(DomainError::FlowNotFound),
            },
            Err(e) => CardAttempt {
                refused_code: None,
                result: Err(e),
            },
        }
    }

    /// [`Services::attempt_card`] on the flow as the caller has just read it (the flow named
    /// by `input.flow_id`; it must still be the session's, at a card step, and live).
    pub async fn attempt_card_on(&self, flow: Flow, input: CardStepInput) -> CardAttempt {
        let mut refused_code = None;
        let result = self.card_step(flow, input, &mut refused_code).await;
        CardAttempt {
            refused_code: refused_code.filter(|_| result.is_err()),
            result,
        }
    }

    async fn card_step(
        &self,
        flow: Flow,
        input: CardStepInput,
        refused_code: &mut Option<InstitutionCode>,
    ) -> Result<StepOutcome> {
        if flow.id != input.flow_id {
            return Err(DomainError::FlowNotFound);
        }
        flow.expect(&input.session, flow.step, self.clock.now())?;
        if !flow.step.is_card_step() {
            return Err(DomainError::WrongStep);
        }
        // The challenge is spent first: any submission, even one with a typo, uses it up, so
        // a proof can never be tried twice.
        let stored = self
            .store
            .consume_challenge(&input.challenge_id, self.clock.now())
            .await?;
        if stored.flow_id != flow.id || stored.session != input.session || stored.step != flow.step
        {
            return Err(DomainError::ChallengeUsed);
        }
        // The typed fields are checked before the (costlier) proof verification.
        let code = match flow.step {
            Step::OrgCard | Step::NewOrgCard | Step::QueryOrgCard | Step::OperatorCard => Some(
                InstitutionCode::parse(input.institution_code.as_deref().unwrap_or(""))?,
            ),
            _ => flow.data.code.clone(),
        };
        let id = match flow.step {
            Step::AdminCard | Step::NewAdminCard | Step::QueryCitizenCard | Step::OperatorCard => {
                Some(national_id(
                    "national_id",
                    input.national_id.as_deref().unwrap_or(""),
                )?)
            }
            _ => None,
        };
        let validated = self.verify_step(&flow, &input, &stored).await?;
        let cert = CertRef::from_facts(&validated.facts);
        match self
            .apply_card(
                input.login_session.as_deref(),
                flow.clone(),
                code.clone(),
                id,
                &validated,
            )
            .await
        {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                if !matches!(e, DomainError::Storage(_)) {
                    refused_code.clone_from(&code);
                }
                self.audit_refusal(&flow, &input, Some(&cert), code.as_ref(), &e)
                    .await?;
                // The audit keeps the precise reason; the caller learns only that this card
                // is not an operator's here, not whether the typed national ID belongs to one.
                Err(match e {
                    DomainError::OperatorSerialChanged => DomainError::NotOperator,
                    other => other,
                })
            }
        }
    }
}
