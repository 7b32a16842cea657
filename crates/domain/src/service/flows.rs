//! Starting a flow, agreeing to the terms, and the challenge of a card step.

use super::{Services, random_id};
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::flow::{Flow, FlowKind, Step};
use crate::store::*;
use pki::challenge::Challenge;
use time::OffsetDateTime;

/// A challenge handed to the page: the id to send back and the text the card signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedChallenge {
    pub id: String,
    pub tbs: String,
    pub expires_at: OffsetDateTime,
}

impl<S: Store, C: Clock> Services<S, C> {
    pub async fn start_flow(&self, kind: FlowKind, session: &str) -> Result<Flow> {
        let flow = Flow::new(random_id(), kind, session, self.clock.now());
        self.store.insert_flow(&flow).await?;
        Ok(flow)
    }

    /// [`Services::start_flow`] for a session holding fewer than `max` live flows (touched
    /// within the idle limit; expired ones wait for the sweep but no longer count); else
    /// [`DomainError::TooManyFlows`].
    pub async fn start_flow_capped(&self, kind: FlowKind, session: &str, max: u32) -> Result<Flow> {
        let flow = Flow::new(random_id(), kind, session, self.clock.now());
        self.insert_capped(&flow, max, None).await?;
        Ok(flow)
    }

    /// Stores a new `flow` (and its first challenge) within the session's cap of `max`.
    async fn insert_capped(
        &self,
        flow: &Flow,
        max: u32,
        challenge: Option<&StoredChallenge>,
    ) -> Result<()> {
        let live_since = flow.created_at - crate::flow::FLOW_IDLE_LIMIT;
        self.store
            .insert_flow_capped(flow, u64::from(max), live_since, challenge)
            .await
    }

    pub(super) async fn load_flow(&self, id: &str, session: &str, step: Step) -> Result<Flow> {
        let flow = self
            .store
            .flow(id)
            .await?
            .ok_or(DomainError::FlowNotFound)?;
        flow.expect(session, step, self.clock.now())?;
        Ok(flow)
    }

    /// The session's flow as stored, whatever its step; another session's flow does not exist
    /// for this one (`FlowNotFound`).
    pub async fn session_flow(&self, id: &str, session: &str) -> Result<Flow> {
        self.session_flow_read(None, id, session).await
    }

    /// [`Services::session_flow`] on `read`, the flow as the caller has already read it,
    /// when it is the flow `id` (it is read here otherwise).
    pub async fn session_flow_read(
        &self,
        read: Option<Flow>,
        id: &str,
        session: &str,
    ) -> Result<Flow> {
        self.read_or_load(read, id)
            .await?
            .filter(|f| f.session == session)
            .ok_or(DomainError::FlowNotFound)
    }

    /// `read` when it is the flow `id`, else the flow as stored.
    async fn read_or_load(&self, read: Option<Flow>, id: &str) -> Result<Option<Flow>> {
        match read.filter(|f| f.id == id) {
            Some(f) => Ok(Some(f)),
            None => self.store.flow(id).await,
        }
    }

    /// R1.1: the terms must be agreed before anything else; the version is recorded.
    pub async fn agree_terms(&self, flow_id: &str, session: &str) -> Result<Flow> {
        let mut flow = self.load_flow(flow_id, session, Step::Terms).await?;
        flow.data.terms_version = Some(self.config.terms_version.clone());
        flow.advance(self.clock.now());
        self.store
            .commit(Commit {
                flow: Some(flow.clone()),
                ..Default::default()
            })
            .await?;
        Ok(flow)
    }

    /// Issues the challenge for the flow's current card step (SPEC §2.2).
    pub async fn issue_challenge(&self, flow_id: &str, session: &str) -> Result<IssuedChallenge> {
        self.issue_challenge_read(None, flow_id, session).await
    }

    /// [`Services::issue_challenge`] on `read`, the flow as the caller has already read it,
    /// when it is the flow `flow_id` (it is read here otherwise).
    pub async fn issue_challenge_read(
        &self,
        read: Option<Flow>,
        flow_id: &str,
        session: &str,
    ) -> Result<IssuedChallenge> {
        let flow = self
            .read_or_load(read, flow_id)
            .await?
            .ok_or(DomainError::FlowNotFound)?;
        flow.expect(session, flow.step, self.clock.now())?;
        self.challenge_for(&flow).await
    }

    /// [`Services::start_flow_capped`], and for a flow that starts at a card step (the
    /// queries, the logins) its first challenge too, stored with the flow or not at all: one
    /// request fewer for the caller, no read of the flow just written, and one write.
    pub async fn start_flow_with_challenge(
        &self,
        kind: FlowKind,
        session: &str,
        max: u32,
    ) -> Result<(Flow, Option<IssuedChallenge>)> {
        let flow = Flow::new(random_id(), kind, session, self.clock.now());
        if !flow.step.is_card_step() {
            self.insert_capped(&flow, max, None).await?;
            return Ok((flow, None));
        }
        let (stored, issued) = self.new_challenge(&flow)?;
        self.insert_capped(&flow, max, Some(&stored)).await?;
        Ok((flow, Some(issued)))
    }

    /// A challenge for the card step `flow` waits at, for the flow's session (the caller has
    /// checked that it is the requester's).
    async fn challenge_for(&self, flow: &Flow) -> Result<IssuedChallenge> {
        let (stored, issued) = self.new_challenge(flow)?;
        self.store.insert_challenge(&stored).await?;
        Ok(issued)
    }

    /// A new challenge for the card step `flow` waits at: as stored, and as the caller gets it.
    fn new_challenge(&self, flow: &Flow) -> Result<(StoredChallenge, IssuedChallenge)> {
        if !flow.step.is_card_step() {
            return Err(DomainError::WrongStep);
        }
        let challenge = Challenge::new(
            flow.kind.as_str(),
            &self.config.origin,
            &flow.id,
            flow.step.as_str(),
            self.clock.now(),
        )?;
        let stored = StoredChallenge {
            id: random_id(),
            flow_id: flow.id.clone(),
            session: flow.session.clone(),
            step: flow.step,
            purpose: challenge.purpose.clone(),
            origin: challenge.origin.clone(),
            nonce: challenge.nonce.clone(),
            issued_at: challenge.issued_at,
            expires_at: challenge.expires_at(),
        };
        let issued = IssuedChallenge {
            id: stored.id.clone(),
            tbs: challenge.tbs(),
            expires_at: stored.expires_at,
        };
        Ok((stored, issued))
    }
}
