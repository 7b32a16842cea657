//! The rule of each card step, once its proof has verified: what the card must be for the
//! flow's kind and step, what the flow collects, and what is committed.

use super::Services;
use super::card::{LoginSession, StepOutcome};
use super::operators::{AdminGrant, OperatorGrant};
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::flow::{Flow, FlowKind, Step};
use crate::model::*;
use crate::store::*;
use crate::types::*;

/// A later card step of a replacement or a login reads the registration again: it must be the
/// one the first step checked.
fn same_registration(flow: &Flow, registration: &Registration) -> Result<()> {
    match flow.data.registration_version {
        Some(v) if v != registration.version => Err(DomainError::RegistrationChanged),
        _ => Ok(()),
    }
}

fn org_card(v: &pki::validate::Validated) -> Result<OrgCard> {
    let f = &v.facts;
    let id = f.org_identifier.as_deref().ok_or_else(|| {
        DomainError::Pki(pki::PkiError::new(
            pki::ErrorCode::MissingAttribute,
            "organization identifier",
        ))
    })?;
    Ok(OrgCard {
        cert: CertRef::from_facts(f),
        org_identifier: OrgIdentifier::parse(id)?,
        org_name: f.holder_name().unwrap_or_default().to_string(),
    })
}

fn citizen_card(v: &pki::validate::Validated) -> CitizenCard {
    let f = &v.facts;
    CitizenCard {
        cert: CertRef::from_facts(f),
        holder_name: f.cn.clone().unwrap_or_default(),
        id_last4: f.id_last4.clone().unwrap_or_default(),
    }
}

impl<S: Store, C: Clock> Services<S, C> {
    pub(super) async fn registered(&self, code: &InstitutionCode) -> Result<Registration> {
        if self.store.agency(code).await?.is_none() {
            return Err(DomainError::UnknownAgency);
        }
        self.store
            .registration(code)
            .await?
            .ok_or(DomainError::NotRegistered)
    }

    /// R1.3: where the card stands against the identifier on file for the code, counting the
    /// latest review application of this card (an approval from its effective date).
    pub(super) async fn oid_verdict(&self, agency: &Agency, card: &OrgCard) -> Result<OidVerdict> {
        if agency.org_identifier.as_ref() == Some(&card.org_identifier) {
            return Ok(OidVerdict::OnFile);
        }
        let today = self.clock.today();
        let reviews = self.store.reviews(&agency.code).await?;
        let latest = reviews.iter().find(|r| r.org.cert.same_as(&card.cert));
        Ok(match latest.map(|r| &r.state) {
            Some(ReviewState::Pending) => OidVerdict::Pending,
            Some(ReviewState::Approved { effective, .. }) if *effective <= today => {
                OidVerdict::Approved
            }
            Some(ReviewState::Approved { effective, .. }) => OidVerdict::ApprovedFrom {
                effective: *effective,
            },
            Some(ReviewState::Rejected { .. }) | None => OidVerdict::Mismatch,
        })
    }

    /// [`Services::oid_verdict`] as a step's rule: accepted, or the reason the card must wait.
    pub(super) async fn check_identifier(&self, agency: &Agency, card: &OrgCard) -> Result<()> {
        match self.oid_verdict(agency, card).await? {
            OidVerdict::OnFile | OidVerdict::Approved => Ok(()),
            OidVerdict::Pending => Err(DomainError::ReviewPending),
            OidVerdict::ApprovedFrom { effective } => Err(DomainError::ReviewNotYetEffective {
                effective: effective.to_string(),
            }),
            OidVerdict::Mismatch => Err(DomainError::OrgIdMismatch),
        }
    }

    /// The rule of the flow's step for a card whose proof verified. `code` and `id` are the
    /// typed 機關代號 and 身分證統一編號, already well-formed, where the step asks for them.
    pub(super) async fn apply_card(
        &self,
        session: Option<&dyn LoginSession>,
        flow: Flow,
        code: Option<InstitutionCode>,
        id: Option<NationalId>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        use FlowKind as K;
        use Step as S;
        match (flow.kind, flow.step) {
            (K::FirstRegistration, S::OrgCard)
            | (K::ReplaceOrg | K::ReplaceBoth, S::NewOrgCard) => {
                self.presented_org_card(flow, code, v).await
            }
            (K::AdminLogin | K::ReplaceAdmin, S::OrgCard) => {
                self.registered_org_card(flow, code, v).await
            }
            (K::FirstRegistration, S::AdminCard)
            | (K::ReplaceAdmin | K::ReplaceBoth, S::NewAdminCard) => {
                self.new_admin_card(flow, id, v).await
            }
            (K::AdminLogin | K::ReplaceOrg, S::AdminCard) => {
                self.registered_admin_card(session, flow, id, v).await
            }
            (K::QueryOrgOid, S::QueryOrgCard) => self.query_org_oid(flow, code, v).await,
            (K::QueryCitizenSerial, S::QueryCitizenCard) => {
                self.query_citizen_serial(flow, id, v).await
            }
            (K::OperatorLogin, S::OperatorCard) => {
                self.operator_login(session, flow, code, id, v).await
            }
            (K::ReviewerLogin, S::ReviewerCard) => self.reviewer_login(session, flow, v).await,
            _ => Err(DomainError::WrongStep),
        }
    }

    /// R1.2–R1.3, R3.1/R3.3 (new organization card): the code on file, the identifier checked;
    /// a mismatch keeps the flow on this step for a review application.
    async fn presented_org_card(
        &self,
        mut flow: Flow,
        code: Option<InstitutionCode>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let code = code.ok_or(DomainError::UnknownAgency)?;
        let agency = self
            .store
            .agency(&code)
            .await?
            .ok_or(DomainError::UnknownAgency)?;
        let registration = self.store.registration(&code).await?;
        let card = org_card(v)?;
        match (&registration, flow.kind) {
            (Some(_), FlowKind::FirstRegistration) => return Err(DomainError::AlreadyRegistered),
            (None, FlowKind::ReplaceOrg | FlowKind::ReplaceBoth) => {
                return Err(DomainError::NotRegistered);
            }
            (Some(r), _) if r.org.cert.same_as(&card.cert) => {
                return Err(DomainError::SameCertificate);
            }
            _ => {}
        }
        flow.data.code = Some(code);
        if let Some(r) = &registration {
            flow.data.admin_contact = Some(r.admin.clone());
            flow.data.registration_version = Some(r.version);
        }
        match self.check_identifier(&agency, &card).await {
            Ok(()) => {
                flow.data.org = Some(card);
                flow.data.mismatch = false;
                self.advance(flow).await
            }
            Err(DomainError::OrgIdMismatch) => {
                flow.data.org = Some(card);
                flow.data.mismatch = true;
                flow.touch(self.clock.now());
                self.save_flow(&flow, vec![], None).await?;
                Ok(StepOutcome::ReviewNeeded(Box::new(flow)))
            }
            Err(e) => Err(e),
        }
    }

    /// R2.1, R3.2: the registered organization card.
    async fn registered_org_card(
        &self,
        mut flow: Flow,
        code: Option<InstitutionCode>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let code = code.ok_or(DomainError::UnknownAgency)?;
        let registration = self.registered(&code).await?;
        let card = org_card(v)?;
        if !registration.org.cert.same_as(&card.cert) {
            return Err(if card.org_identifier == registration.org.org_identifier {
                DomainError::OrgCardChanged
            } else {
                DomainError::Forbidden
            });
        }
        flow.data.code = Some(code);
        flow.data.org = Some(card);
        flow.data.admin_contact = Some(registration.admin.clone());
        flow.data.registration_version = Some(registration.version);
        self.advance(flow).await
    }

    /// R1.4, R3.2/R3.3 (new administrator): the ID's last four must match the card.
    async fn new_admin_card(
        &self,
        mut flow: Flow,
        id: Option<NationalId>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let id = id.ok_or(DomainError::IdMismatch)?;
        let card = citizen_card(v);
        if !card.id_last4.eq_ignore_ascii_case(id.last4()) {
            return Err(DomainError::IdMismatch);
        }
        if flow.kind != FlowKind::FirstRegistration {
            let code = flow.data.code.clone().ok_or(DomainError::WrongStep)?;
            let registration = self.registered(&code).await?;
            same_registration(&flow, &registration)?;
            if registration.admin_card.cert.same_as(&card.cert) {
                return Err(DomainError::SameCertificate);
            }
        }
        flow.data.admin_card = Some(card);
        flow.data.admin_id = Some(id);
        self.advance(flow).await
    }

    /// R2.2, R3.1: the registered administrator's card and ID; for 授權指派 the login.
    async fn registered_admin_card(
        &self,
        session: Option<&dyn LoginSession>,
        mut flow: Flow,
        id: Option<NationalId>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let id = id.ok_or(DomainError::NotAdministrator)?;
        let code = flow.data.code.clone().ok_or(DomainError::WrongStep)?;
        let registration = self.registered(&code).await?;
        same_registration(&flow, &registration)?;
        let card = citizen_card(v);
        if !card.id_last4.eq_ignore_ascii_case(id.last4()) {
            return Err(DomainError::IdMismatch);
        }
        if registration.admin_id != id {
            return Err(DomainError::NotAdministrator);
        }
        if !registration.admin_card.cert.same_as(&card.cert) {
            return Err(DomainError::AdminCardChanged);
        }
        if flow.kind != FlowKind::AdminLogin {
            flow.data.admin_card = Some(card);
            flow.data.admin_id = Some(id);
            return self.advance(flow).await;
        }
        let now = self.clock.now();
        flow.advance(now);
        let audit = AuditEvent::new(now, format!("admin:{code}"), "admin.login", "ok")
            .agency(&code)
            .cert(&card.cert);
        let grant = StepOutcome::Admin(AdminGrant {
            code,
            registration_version: registration.version,
        });
        self.save_login(session, &flow, audit, None, grant).await
    }

    /// R4.2: the card's identifier beside the one on file.
    async fn query_org_oid(
        &self,
        mut flow: Flow,
        code: Option<InstitutionCode>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let code = code.ok_or(DomainError::UnknownAgency)?;
        let agency = self
            .store
            .agency(&code)
            .await?
            .ok_or(DomainError::UnknownAgency)?;
        let card = org_card(v)?;
        let verdict = self.oid_verdict(&agency, &card).await?;
        let now = self.clock.now();
        flow.advance(now);
        let audit = AuditEvent::new(now, "anonymous", "query.org_oid", "ok")
            .agency(&code)
            .cert(&card.cert);
        self.save_flow(&flow, vec![audit], None).await?;
        Ok(StepOutcome::OrgOid {
            agency_name: agency.name,
            org_name: card.org_name,
            org_identifier: card.org_identifier,
            on_file: agency.org_identifier,
            verdict,
        })
    }

    /// R4.3: the card's serial, for the holder to hand to the administrator.
    async fn query_citizen_serial(
        &self,
        mut flow: Flow,
        id: Option<NationalId>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let id = id.ok_or(DomainError::IdMismatch)?;
        let card = citizen_card(v);
        if !card.id_last4.eq_ignore_ascii_case(id.last4()) {
            return Err(DomainError::IdMismatch);
        }
        let now = self.clock.now();
        flow.advance(now);
        let audit =
            AuditEvent::new(now, "anonymous", "query.citizen_serial", "ok").cert(&card.cert);
        self.save_flow(&flow, vec![audit], None).await?;
        Ok(StepOutcome::CitizenSerial {
            name: card.holder_name,
            serial: card.cert.serial,
        })
    }

    /// R5.1: an operator granted in the agency under this card and ID.
    async fn operator_login(
        &self,
        session: Option<&dyn LoginSession>,
        mut flow: Flow,
        code: Option<InstitutionCode>,
        id: Option<NationalId>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let code = code.ok_or(DomainError::UnknownAgency)?;
        let id = id.ok_or(DomainError::NotOperator)?;
        let card = citizen_card(v);
        let op = self
            .store
            .operator_by_serial(&code, &card.cert.serial)
            .await?;
        // A grant on file means its agency is (operators reference registrations, which
        // reference agencies): the agency is looked up only when no grant was found.
        if op.is_none() && self.store.agency(&code).await?.is_none() {
            return Err(DomainError::UnknownAgency);
        }
        if !card.id_last4.eq_ignore_ascii_case(id.last4()) {
            return Err(DomainError::IdMismatch);
        }
        let op = match op {
            // A certificate is issuer + serial: a grant whose card's issuer is known matches
            // only a card of that issuer.
            Some(op)
                if op.national_id == id
                    && op
                        .cert
                        .as_ref()
                        .is_none_or(|c| c.issuer == card.cert.issuer) =>
            {
                op
            }
            Some(_) => return Err(DomainError::NotOperator),
            None => {
                let renewed = self
                    .store
                    .operators(&code)
                    .await?
                    .iter()
                    .any(|o| o.national_id == id);
                return Err(if renewed {
                    DomainError::OperatorSerialChanged
                } else {
                    DomainError::NotOperator
                });
            }
        };
        // A grant with a validity period logs in only within it.
        op.validity.check(self.clock.today())?;
        let now = self.clock.now();
        flow.advance(now);
        let audit = AuditEvent::new(
            now,
            format!("operator:{}", op.serial),
            "operator.login",
            "ok",
        )
        .agency(&code)
        .cert(&card.cert);
        // A grant made with a typed serial learns its certificate's issuer and notAfter here,
        // so that revocation by issuer and the expiry report cover it too.
        let learn = op.cert.is_none().then(|| OperatorWrite::LearnCert {
            code: code.clone(),
            id: op.id,
            serial: op.serial.clone(),
            cert: crate::model::OperatorCert {
                issuer: card.cert.issuer.clone(),
                not_after: card.cert.not_after,
            },
        });
        let grant = StepOutcome::Operator(OperatorGrant {
            code,
            operator_id: op.id,
            serial: op.serial,
            issuer: Some(card.cert.issuer.clone()),
            name: op.name.as_str().to_string(),
            functions: op.functions,
        });
        self.save_login(session, &flow, audit, learn, grant).await
    }

    /// R6.1: an active reviewer's citizen card, by issuer and serial.
    async fn reviewer_login(
        &self,
        session: Option<&dyn LoginSession>,
        mut flow: Flow,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let card = citizen_card(v);
        let reviewer = self
            .store
            .reviewers()
            .await?
            .into_iter()
            .find(|r| {
                r.active
                    && r.cert_serial == card.cert.serial
                    && r.cert_issuer
                        .as_ref()
                        .is_none_or(|i| *i == card.cert.issuer)
            })
            .ok_or(DomainError::NotReviewer)?;
        // An account created with a serial alone learns its card's issuer here; from then on
        // only that issuer's card with the serial logs in.
        if reviewer.cert_issuer.is_none() {
            self.store
                .learn_reviewer_issuer(reviewer.id, &card.cert.serial, &card.cert.issuer)
                .await?;
        }
        let now = self.clock.now();
        flow.advance(now);
        let audit = AuditEvent::new(
            now,
            format!("reviewer:{}", reviewer.id),
            "reviewer.login",
            "ok",
        )
        .cert(&card.cert);
        self.save_login(session, &flow, audit, None, StepOutcome::Reviewer(reviewer))
            .await
    }

    /// Moves the flow to its next step and saves it.
    async fn advance(&self, mut flow: Flow) -> Result<StepOutcome> {
        flow.advance(self.clock.now());
        self.save_flow(&flow, vec![], None).await?;
        Ok(StepOutcome::Advanced(Box::new(flow)))
    }

    /// Saves a login's flow, and the session's new role with it, in one commit.
    async fn save_login(
        &self,
        session: Option<&dyn LoginSession>,
        flow: &Flow,
        audit: AuditEvent,
        operator: Option<OperatorWrite>,
        outcome: StepOutcome,
    ) -> Result<StepOutcome> {
        let write = match session {
            Some(s) => s.write(&outcome)?,
            None => None,
        };
        let done = self
            .store
            .commit(Commit {
                flow: Some(flow.clone()),
                operator,
                audit: vec![audit],
                session: write,
                ..Default::default()
            })
            .await?;
        if let (Some(s), Some(saved)) = (session, done.session) {
            s.saved(saved);
        }
        Ok(outcome)
    }

    /// Saves the flow with what the step records beside it, in one commit.
    async fn save_flow(
        &self,
        flow: &Flow,
        audit: Vec<AuditEvent>,
        operator: Option<OperatorWrite>,
    ) -> Result<Committed> {
        self.store
            .commit(Commit {
                flow: Some(flow.clone()),
                operator,
                audit,
                ..Default::default()
            })
            .await
    }
}
