//! The services pages and the API call: start a flow, agree to the terms, issue a challenge,
//! submit a card proof, file a review application, confirm; the administrator's operator list;
//! operator login; the queries of F4; reviewer decisions. Each applies the rule of its step and
//! persists through one [`Commit`].

use crate::calendar::BusinessCalendar;
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::flow::{Flow, FlowKind, Step};
use crate::model::*;
use crate::store::*;
use crate::types::*;
use pki::challenge::Challenge;
use pki::validate::Validator;
use ring::rand::SecureRandom as _;
use std::sync::{Arc, RwLock};
use time::OffsetDateTime;

/// Service configuration.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The public origin card proofs are bound to, e.g. `https://certreg.example.gov.tw`.
    pub origin: String,
    /// The version of 用戶約定條款 users agree to (recorded with each flow).
    pub terms_version: String,
    pub functions: FunctionCatalogue,
    pub contacts: ContactDirectory,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            origin: "http://127.0.0.1:8080".into(),
            terms_version: "2026-01".into(),
            functions: FunctionCatalogue::default(),
            contacts: ContactDirectory::default(),
        }
    }
}

/// A challenge handed to the page: the id to send back and the text the card signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedChallenge {
    pub id: String,
    pub tbs: String,
    pub expires_at: OffsetDateTime,
}

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
}

/// An administrator's right to manage one agency's operators (F2, after both cards).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdminGrant {
    pub code: InstitutionCode,
    /// The registration version when the grant was made: a replacement ends the grant.
    pub registration_version: i64,
}

/// An operator's login (R5.1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OperatorGrant {
    pub code: InstitutionCode,
    pub operator_id: i64,
    pub serial: CertSerial,
    /// The issuer of the card presented at login (a DN as the certificate facts write it):
    /// with the serial, the certificate's identity.
    #[serde(default)]
    pub issuer: Option<String>,
    pub name: String,
    pub functions: Vec<FunctionId>,
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
        matches: bool,
    },
    /// R4.3
    CitizenSerial { name: String, serial: CertSerial },
    /// R5.1
    Operator(OperatorGrant),
    /// R6.1: an active back-office reviewer.
    Reviewer(Reviewer),
}

/// The administrator data typed on the confirmation page (圖3-9).
#[derive(Debug, Clone, Default)]
pub struct ContactInput {
    pub name: String,
    pub email: String,
    pub phone: String,
    pub phone_ext: String,
    pub mobile: String,
    pub unit: String,
    pub title: String,
}

impl ContactInput {
    pub fn validate(&self) -> Result<AdminContact> {
        let mobile = self.mobile.trim();
        Ok(AdminContact {
            name: PersonName::parse("name", &self.name)?,
            email: Email::parse(&self.email)?,
            phone: Phone::parse("phone", "連絡電話", &self.phone)?,
            phone_ext: optional_text("phone_ext", "分機", &self.phone_ext, 10)?,
            mobile: if mobile.is_empty() {
                None
            } else {
                Some(Phone::parse("mobile", "行動電話", mobile)?)
            },
            unit: optional_text("unit", "服務單位", &self.unit, 100)?,
            title: optional_text("title", "職稱", &self.title, 50)?,
        })
    }
}

/// What an administrator types to add or modify an operator (圖3-15, 3-18).
#[derive(Debug, Clone, Default)]
pub struct OperatorForm {
    /// Certificate read from the operator's card through the agent (no PIN), if it was read.
    pub read_certificate: Option<Vec<u8>>,
    /// 憑證序號 typed or pasted (ignored when a certificate was read).
    pub serial: String,
    /// 姓名 (ignored when a certificate was read).
    pub name: String,
    pub national_id: String,
    pub functions: Vec<String>,
}

pub struct Services<S, C> {
    store: S,
    clock: C,
    validator: Arc<Validator>,
    calendar: RwLock<BusinessCalendar>,
    config: ServiceConfig,
}

/// Runs certificate checks (signatures, path building, and OCSP, which waits on the network) on
/// a thread where blocking is allowed, so a slow responder never holds up the async workers
/// that serve every other request.
/// A later card step of a replacement or a login reads the registration again: it must be the
/// one the first step checked.
fn same_registration(flow: &Flow, registration: &Registration) -> Result<()> {
    match flow.data.registration_version {
        Some(v) if v != registration.version => Err(DomainError::RegistrationChanged),
        _ => Ok(()),
    }
}

async fn off_the_workers<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DomainError::Storage(format!("certificate check did not finish: {e}")))
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails when the OS has no randomness at all; ids would then collide.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    pki::serial::hex_upper(&bytes).to_ascii_lowercase()
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

/// The shipped calendar with the store's imported years over it.
pub async fn stored_calendar<S: Store>(store: &S) -> Result<BusinessCalendar> {
    let days = store.calendar_days().await?;
    // The store only ever accepted whole years, so a refusal here means damaged data.
    BusinessCalendar::with_imported(days)
        .map_err(|e| DomainError::Storage(format!("stored office calendar: {e}")))
}

impl<S: Store, C: Clock> Services<S, C> {
    pub fn new(
        store: S,
        clock: C,
        validator: Arc<Validator>,
        calendar: BusinessCalendar,
        config: ServiceConfig,
    ) -> Self {
        Self {
            store,
            clock,
            validator,
            calendar: RwLock::new(calendar),
            config,
        }
    }

    /// Services whose business calendar is the shipped years plus the years imported into the
    /// store (`certreg calendar import`): how a server starts.
    pub async fn with_stored_calendar(
        store: S,
        clock: C,
        validator: Arc<Validator>,
        config: ServiceConfig,
    ) -> Result<Self> {
        let calendar = stored_calendar(&store).await?;
        Ok(Self::new(store, clock, validator, calendar, config))
    }

    /// Re-reads the imported years (another process may have imported since); returns the
    /// years now loaded.
    pub async fn reload_calendar(&self) -> Result<Vec<i32>> {
        let calendar = stored_calendar(&self.store).await?;
        let years = calendar.years();
        self.set_calendar(calendar);
        Ok(years)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Replaces the business calendar (after `certreg calendar import`), keeping the record of
    /// years the fallback answered so the health check goes on showing those still missing.
    pub fn set_calendar(&self, calendar: BusinessCalendar) {
        if let Ok(mut c) = self.calendar.write() {
            *c = calendar.remembering_fallbacks_of(&c);
        }
    }

    /// The years the office calendar holds (shipped and imported), sorted.
    pub fn calendar_years(&self) -> Vec<i32> {
        self.calendar.read().map(|c| c.years()).unwrap_or_default()
    }

    pub fn calendar_warnings(&self) -> Vec<String> {
        self.calendar
            .read()
            .map(|c| c.warnings_for(self.clock.today()))
            .unwrap_or_default()
    }

    // ---- flows -------------------------------------------------------------------------

    pub async fn start_flow(&self, kind: FlowKind, session: &str) -> Result<Flow> {
        let flow = Flow::new(random_id(), kind, session, self.clock.now());
        self.store.insert_flow(&flow).await?;
        Ok(flow)
    }

    /// [`Services::start_flow`] for a session holding fewer than `max` live flows (touched
    /// within the idle limit; expired ones wait for the sweep but no longer count); else
    /// [`DomainError::TooManyFlows`].
    pub async fn start_flow_capped(&self, kind: FlowKind, session: &str, max: u32) -> Result<Flow> {
        let now = self.clock.now();
        let flow = Flow::new(random_id(), kind, session, now);
        self.store
            .insert_flow_capped(&flow, u64::from(max), now - crate::flow::FLOW_IDLE_LIMIT)
            .await?;
        Ok(flow)
    }

    async fn load_flow(&self, id: &str, session: &str, step: Step) -> Result<Flow> {
        let flow = self
            .store
            .flow(id)
            .await?
            .ok_or(DomainError::FlowNotFound)?;
        flow.expect(session, step, self.clock.now())?;
        Ok(flow)
    }

    /// R1.1: the terms must be agreed before anything else; the version is recorded.
    pub async fn agree_terms(&self, flow_id: &str, session: &str) -> Result<Flow> {
        let mut flow = self.load_flow(flow_id, session, Step::Terms).await?;
        flow.data.terms_version = Some(self.config.terms_version.clone());
        flow.advance(self.clock.now());
        flow.version += 1;
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
        let flow = self
            .store
            .flow(flow_id)
            .await?
            .ok_or(DomainError::FlowNotFound)?;
        flow.expect(session, flow.step, self.clock.now())?;
        if !flow.step.is_card_step() {
            return Err(DomainError::WrongStep);
        }
        let now = self.clock.now();
        let challenge = Challenge::new(
            flow.kind.as_str(),
            &self.config.origin,
            &flow.id,
            flow.step.as_str(),
            now,
        )?;
        let stored = StoredChallenge {
            id: random_id(),
            flow_id: flow.id.clone(),
            session: session.to_string(),
            step: flow.step,
            purpose: challenge.purpose.clone(),
            origin: challenge.origin.clone(),
            nonce: challenge.nonce.clone(),
            issued_at: challenge.issued_at,
            expires_at: challenge.expires_at(),
        };
        self.store.insert_challenge(&stored).await?;
        Ok(IssuedChallenge {
            id: stored.id,
            tbs: challenge.tbs(),
            expires_at: stored.expires_at,
        })
    }

    /// Verifies the proof over the stored challenge for the step's role, and audits a refusal.
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
        let verified = off_the_workers(move || {
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
        let mut refused_code = None;
        let result = self.card_step(input, &mut refused_code).await;
        CardAttempt {
            refused_code: refused_code.filter(|_| result.is_err()),
            result,
        }
    }

    async fn card_step(
        &self,
        input: CardStepInput,
        refused_code: &mut Option<InstitutionCode>,
    ) -> Result<StepOutcome> {
        let flow = self
            .store
            .flow(&input.flow_id)
            .await?
            .ok_or(DomainError::FlowNotFound)?;
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
            .apply_card(flow.clone(), code.clone(), id, &validated)
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

    async fn registered(&self, code: &InstitutionCode) -> Result<Registration> {
        if self.store.agency(code).await?.is_none() {
            return Err(DomainError::UnknownAgency);
        }
        self.store
            .registration(code)
            .await?
            .ok_or(DomainError::NotRegistered)
    }

    /// R1.3: the identifier on file for the code, counting approved reviews of this card from
    /// their effective date; or the reason the card must wait.
    async fn check_identifier(&self, agency: &Agency, card: &OrgCard) -> Result<()> {
        if agency.org_identifier.as_ref() == Some(&card.org_identifier) {
            return Ok(());
        }
        let today = self.clock.today();
        let reviews = self.store.reviews(&agency.code).await?;
        let latest = reviews.iter().find(|r| r.org.cert.same_as(&card.cert));
        match latest.map(|r| &r.state) {
            Some(ReviewState::Pending) => Err(DomainError::ReviewPending),
            Some(ReviewState::Approved { effective, .. }) if *effective <= today => Ok(()),
            Some(ReviewState::Approved { effective, .. }) => {
                Err(DomainError::ReviewNotYetEffective {
                    effective: effective.to_string(),
                })
            }
            Some(ReviewState::Rejected { .. }) | None => Err(DomainError::OrgIdMismatch),
        }
    }

    async fn apply_card(
        &self,
        mut flow: Flow,
        code: Option<InstitutionCode>,
        id: Option<NationalId>,
        v: &pki::validate::Validated,
    ) -> Result<StepOutcome> {
        let now = self.clock.now();
        let kind = flow.kind;
        let step = flow.step;
        match (kind, step) {
            // R1.2–R1.3, R3.1/R3.3 (new organization card): code on file, identifier checked.
            (FlowKind::FirstRegistration, Step::OrgCard)
            | (FlowKind::ReplaceOrg | FlowKind::ReplaceBoth, Step::NewOrgCard) => {
                let code = code.ok_or(DomainError::UnknownAgency)?;
                let agency = self
                    .store
                    .agency(&code)
                    .await?
                    .ok_or(DomainError::UnknownAgency)?;
                let registration = self.store.registration(&code).await?;
                let card = org_card(v)?;
                match (&registration, kind) {
                    (Some(_), FlowKind::FirstRegistration) => {
                        return Err(DomainError::AlreadyRegistered);
                    }
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
                        // The flow waits on this step for the applicant's contact data.
                        flow.data.org = Some(card);
                        flow.data.mismatch = true;
                        flow.touched_at = now;
                        flow.version += 1;
                        self.store
                            .commit(Commit {
                                flow: Some(flow.clone()),
                                ..Default::default()
                            })
                            .await?;
                        Ok(StepOutcome::ReviewNeeded(Box::new(flow)))
                    }
                    Err(e) => Err(e),
                }
            }
            // R2.1, R3.2: the registered organization card.
            (FlowKind::AdminLogin | FlowKind::ReplaceAdmin, Step::OrgCard) => {
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
            // R1.4, R3.2/R3.3 (new administrator): the ID's last four must match the card.
            (FlowKind::FirstRegistration, Step::AdminCard)
            | (FlowKind::ReplaceAdmin | FlowKind::ReplaceBoth, Step::NewAdminCard) => {
                let id = id.ok_or(DomainError::IdMismatch)?;
                let card = citizen_card(v);
                if !card.id_last4.eq_ignore_ascii_case(id.last4()) {
                    return Err(DomainError::IdMismatch);
                }
                if kind != FlowKind::FirstRegistration {
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
            // R2.2, R3.1: the registered administrator's card and ID.
            (FlowKind::AdminLogin | FlowKind::ReplaceOrg, Step::AdminCard) => {
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
                if kind == FlowKind::AdminLogin {
                    flow.advance(now);
                    flow.version += 1;
                    let grant = AdminGrant {
                        code: code.clone(),
                        registration_version: registration.version,
                    };
                    let audit = AuditEvent::new(now, format!("admin:{code}"), "admin.login", "ok")
                        .agency(&code)
                        .cert(&card.cert);
                    self.store
                        .commit(Commit {
                            flow: Some(flow),
                            audit: vec![audit],
                            ..Default::default()
                        })
                        .await?;
                    return Ok(StepOutcome::Admin(grant));
                }
                flow.data.admin_card = Some(card);
                flow.data.admin_id = Some(id);
                self.advance(flow).await
            }
            // R4.2
            (FlowKind::QueryOrgOid, Step::QueryOrgCard) => {
                let code = code.ok_or(DomainError::UnknownAgency)?;
                let agency = self
                    .store
                    .agency(&code)
                    .await?
                    .ok_or(DomainError::UnknownAgency)?;
                let card = org_card(v)?;
                let matches = self.check_identifier(&agency, &card).await.is_ok();
                flow.advance(now);
                flow.version += 1;
                let audit = AuditEvent::new(now, "anonymous", "query.org_oid", "ok")
                    .agency(&code)
                    .cert(&card.cert);
                self.store
                    .commit(Commit {
                        flow: Some(flow),
                        audit: vec![audit],
                        ..Default::default()
                    })
                    .await?;
                Ok(StepOutcome::OrgOid {
                    agency_name: agency.name,
                    org_name: card.org_name,
                    org_identifier: card.org_identifier,
                    on_file: agency.org_identifier,
                    matches,
                })
            }
            // R4.3
            (FlowKind::QueryCitizenSerial, Step::QueryCitizenCard) => {
                let id = id.ok_or(DomainError::IdMismatch)?;
                let card = citizen_card(v);
                if !card.id_last4.eq_ignore_ascii_case(id.last4()) {
                    return Err(DomainError::IdMismatch);
                }
                flow.advance(now);
                flow.version += 1;
                let audit = AuditEvent::new(now, "anonymous", "query.citizen_serial", "ok")
                    .cert(&card.cert);
                self.store
                    .commit(Commit {
                        flow: Some(flow),
                        audit: vec![audit],
                        ..Default::default()
                    })
                    .await?;
                Ok(StepOutcome::CitizenSerial {
                    name: card.holder_name,
                    serial: card.cert.serial,
                })
            }
            // R5.1
            (FlowKind::OperatorLogin, Step::OperatorCard) => {
                let code = code.ok_or(DomainError::UnknownAgency)?;
                let id = id.ok_or(DomainError::NotOperator)?;
                if self.store.agency(&code).await?.is_none() {
                    return Err(DomainError::UnknownAgency);
                }
                let card = citizen_card(v);
                if !card.id_last4.eq_ignore_ascii_case(id.last4()) {
                    return Err(DomainError::IdMismatch);
                }
                let op = match self
                    .store
                    .operator_by_serial(&code, &card.cert.serial)
                    .await?
                {
                    // A certificate is issuer + serial: a grant whose card's issuer is known
                    // matches only a card of that issuer.
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
                flow.advance(now);
                flow.version += 1;
                let audit = AuditEvent::new(
                    now,
                    format!("operator:{}", op.serial),
                    "operator.login",
                    "ok",
                )
                .agency(&code)
                .cert(&card.cert);
                // A grant made with a typed serial learns its certificate's issuer and notAfter
                // here, so that revocation by issuer and the expiry report cover it too.
                let learn = op.cert.is_none().then(|| OperatorWrite::LearnCert {
                    code: code.clone(),
                    id: op.id,
                    serial: op.serial.clone(),
                    cert: crate::model::OperatorCert {
                        issuer: card.cert.issuer.clone(),
                        not_after: card.cert.not_after,
                    },
                });
                self.store
                    .commit(Commit {
                        flow: Some(flow),
                        operator: learn,
                        audit: vec![audit],
                        ..Default::default()
                    })
                    .await?;
                Ok(StepOutcome::Operator(OperatorGrant {
                    code,
                    operator_id: op.id,
                    serial: op.serial,
                    issuer: Some(card.cert.issuer.clone()),
                    name: op.name.as_str().to_string(),
                    functions: op.functions,
                }))
            }
            // R6.1: an active reviewer's citizen card, by issuer and serial.
            (FlowKind::ReviewerLogin, Step::ReviewerCard) => {
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
                // An account created with a serial alone learns its card's issuer here; from
                // then on only that issuer's card with the serial logs in.
                if reviewer.cert_issuer.is_none() {
                    self.store
                        .learn_reviewer_issuer(reviewer.id, &card.cert.serial, &card.cert.issuer)
                        .await?;
                }
                flow.advance(now);
                flow.version += 1;
                let audit = AuditEvent::new(
                    now,
                    format!("reviewer:{}", reviewer.id),
                    "reviewer.login",
                    "ok",
                )
                .cert(&card.cert);
                self.store
                    .commit(Commit {
                        flow: Some(flow),
                        audit: vec![audit],
                        ..Default::default()
                    })
                    .await?;
                Ok(StepOutcome::Reviewer(reviewer))
            }
            _ => Err(DomainError::WrongStep),
        }
    }

    async fn advance(&self, mut flow: Flow) -> Result<StepOutcome> {
        flow.advance(self.clock.now());
        flow.version += 1;
        self.store
            .commit(Commit {
                flow: Some(flow.clone()),
                ..Default::default()
            })
            .await?;
        Ok(StepOutcome::Advanced(Box::new(flow)))
    }

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
        done.step = Step::Done;
        done.touched_at = now;
        done.version += 1;
        let committed = self
            .store
            .commit(Commit {
                flow: Some(done),
                review: Some(ReviewWrite::Insert(Box::new(application.clone()))),
                receipt: Some(Receipt { code: code.clone(), kind: ReceiptKind::ReviewApplication, at: now, review_id: None }),
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

    /// The final 確認 of F1 and F3 (R1.5, R3.4): takes effect exactly once.
    pub async fn confirm(
        &self,
        flow_id: &str,
        session: &str,
        contact: &ContactInput,
        client: Option<&str>,
    ) -> Result<Registration> {
        let mut flow = self.load_flow(flow_id, session, Step::Confirm).await?;
        let contact = contact.validate()?;
        let now = self.clock.now();
        let code = flow.data.code.clone().ok_or(DomainError::WrongStep)?;
        let kind = flow.kind;
        flow.advance(now);
        flow.version += 1;
        let (registration, write, history, receipt_kind) = if kind == FlowKind::FirstRegistration {
            let registration = Registration {
                code: code.clone(),
                org: flow.data.org.clone().ok_or(DomainError::WrongStep)?,
                admin_card: flow.data.admin_card.clone().ok_or(DomainError::WrongStep)?,
                admin_id: flow.data.admin_id.clone().ok_or(DomainError::WrongStep)?,
                admin: contact,
                registered_at: now,
                updated_at: now,
                version: 1,
            };
            (
                registration.clone(),
                RegistrationWrite::Insert(registration),
                vec![],
                ReceiptKind::FirstRegistration,
            )
        } else {
            let current = self.registered(&code).await?;
            // The registration the card steps checked, not whatever is current: a replacement
            // committed meanwhile refuses this one (here, and inside the commit).
            let checked = flow
                .data
                .registration_version
                .ok_or(DomainError::WrongStep)?;
            if current.version != checked {
                return Err(DomainError::RegistrationChanged);
            }
            let mut next = current.clone();
            let mut history = Vec::new();
            if matches!(kind, FlowKind::ReplaceOrg | FlowKind::ReplaceBoth) {
                next.org = flow.data.org.clone().ok_or(DomainError::WrongStep)?;
                history.push(ReplacedCert {
                    code: code.clone(),
                    kind: CertKind::Organization,
                    cert: current.org.cert.clone(),
                    replaced_at: now,
                });
            }
            if matches!(kind, FlowKind::ReplaceAdmin | FlowKind::ReplaceBoth) {
                next.admin_card = flow.data.admin_card.clone().ok_or(DomainError::WrongStep)?;
                next.admin_id = flow.data.admin_id.clone().ok_or(DomainError::WrongStep)?;
                history.push(ReplacedCert {
                    code: code.clone(),
                    kind: CertKind::Administrator,
                    cert: current.admin_card.cert.clone(),
                    replaced_at: now,
                });
            }
            next.admin = contact;
            next.updated_at = now;
            next.version = checked + 1;
            let receipt = match kind {
                FlowKind::ReplaceOrg => ReceiptKind::ReplaceOrg,
                FlowKind::ReplaceAdmin => ReceiptKind::ReplaceAdmin,
                _ => ReceiptKind::ReplaceBoth,
            };
            (
                next.clone(),
                RegistrationWrite::Replace {
                    registration: next,
                    expected_version: checked,
                },
                history,
                receipt,
            )
        };
        let audit = AuditEvent::new(now, format!("agency:{code}"), &format!("registration.{}", receipt_kind.as_str()), "ok")
            .agency(&code)
            .cert(&registration.org.cert)
            .client(client)
            .detail(serde_json::json!({"admin_cert": format!("{}|{}", registration.admin_card.cert.issuer, registration.admin_card.cert.serial), "terms_version": flow.data.terms_version}));
        self.store
            .commit(Commit {
                flow: Some(flow),
                registration: Some(write),
                history,
                receipt: Some(Receipt {
                    code: code.clone(),
                    kind: receipt_kind,
                    at: now,
                    review_id: None,
                }),
                audit: vec![audit],
                end_admin_sessions: (kind != FlowKind::FirstRegistration).then(|| code.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                if e == DomainError::Conflict {
                    DomainError::AlreadyConfirmed
                } else {
                    e
                }
            })?;
        Ok(registration)
    }

    // ---- F2: the administrator's operators ------------------------------------------------

    /// The grant still holds: same agency, registration not replaced since.
    async fn check_admin(&self, grant: &AdminGrant) -> Result<Registration> {
        let registration = self
            .store
            .registration(&grant.code)
            .await?
            .ok_or(DomainError::Forbidden)?;
        if registration.version != grant.registration_version {
            return Err(DomainError::Forbidden);
        }
        // Checked on every use, not only by the sweep after a CRL refresh: a login that was
        // in flight while the sweep ran holds no revoked card past its next request.
        for cert in [&registration.org.cert, &registration.admin_card.cert] {
            if self
                .validator
                .revoked_at(Some(&cert.issuer), &cert.serial)
                .is_some()
            {
                return Err(DomainError::Pki(pki::PkiError::new(
                    pki::ErrorCode::CertRevoked,
                    format!("certificate {} is revoked", cert.serial.as_str()),
                )));
            }
        }
        Ok(registration)
    }

    /// R2.3
    pub async fn operators(&self, grant: &AdminGrant) -> Result<Vec<Operator>> {
        self.check_admin(grant).await?;
        self.store.operators(&grant.code).await
    }

    pub async fn operator(&self, grant: &AdminGrant, id: i64) -> Result<Operator> {
        self.check_admin(grant).await?;
        self.store
            .operator(&grant.code, id)
            .await?
            .ok_or(DomainError::OperatorNotFound)
    }

    async fn operator_input(&self, form: &OperatorForm) -> Result<OperatorInput> {
        let national_id = national_id("national_id", &form.national_id)?;
        let (serial, name, read) = match &form.read_certificate {
            Some(der) => {
                // A certificate read from the card must be a valid citizen card of a trusted
                // CA: otherwise a crafted one could name any serial and holder.
                let (validator, der, now) = (self.validator.clone(), der.clone(), self.clock.now());
                let cert = off_the_workers(move || {
                    let parsed = pki::facts::ParsedCert::from_input(&der)?;
                    validator.validate(&parsed, &[], pki::anchors::Role::Citizen, now)
                })
                .await??;
                let last4 = cert.facts.id_last4.clone().unwrap_or_default();
                if !last4.eq_ignore_ascii_case(national_id.last4()) {
                    return Err(DomainError::IdMismatch);
                }
                let name = cert.facts.cn.clone().unwrap_or_default();
                let read = crate::model::OperatorCert {
                    issuer: cert.facts.issuer.clone(),
                    not_after: cert.facts.not_after,
                };
                (
                    cert.facts.serial.clone(),
                    PersonName::parse("name", &name)?,
                    Some(read),
                )
            }
            None => (
                cert_serial("serial", &form.serial)?,
                PersonName::parse("name", &form.name)?,
                None,
            ),
        };
        let functions = self.config.functions.validate(&form.functions)?;
        Ok(OperatorInput {
            serial,
            name,
            national_id,
            functions,
            cert: read,
        })
    }

    /// R2.4: 新增.
    pub async fn add_operator(
        &self,
        grant: &AdminGrant,
        form: &OperatorForm,
        client: Option<&str>,
    ) -> Result<i64> {
        self.check_admin(grant).await?;
        let input = self.operator_input(form).await?;
        let now = self.clock.now();
        let detail =
            serde_json::json!({"serial": input.serial.as_str(), "functions": input.functions});
        let write = OperatorWrite::Insert {
            code: grant.code.clone(),
            input,
            at: now,
        };
        let committed = self
            .commit_operator(grant, "operator.add", detail, write, client, now)
            .await?;
        committed
            .operator_id
            .ok_or_else(|| DomainError::Storage("no operator id".into()))
    }

    /// R2.5: 修改, refusing to overwrite a change made since `expected_version` was read.
    pub async fn modify_operator(
        &self,
        grant: &AdminGrant,
        id: i64,
        expected_version: i64,
        form: &OperatorForm,
        client: Option<&str>,
    ) -> Result<()> {
        self.check_admin(grant).await?;
        let input = self.operator_input(form).await?;
        let now = self.clock.now();
        let detail = serde_json::json!({"id": id, "serial": input.serial.as_str(), "functions": input.functions});
        let write = OperatorWrite::Update {
            code: grant.code.clone(),
            id,
            input,
            expected_version,
            at: now,
        };
        self.commit_operator(grant, "operator.modify", detail, write, client, now)
            .await
            .map(|_| ())
    }

    /// R2.6: 刪除 (after the confirmation page).
    pub async fn delete_operator(
        &self,
        grant: &AdminGrant,
        id: i64,
        expected_version: i64,
        client: Option<&str>,
    ) -> Result<()> {
        self.check_admin(grant).await?;
        let write = OperatorWrite::Delete {
            code: grant.code.clone(),
            id,
            expected_version,
        };
        let detail = serde_json::json!({"id": id});
        self.commit_operator(
            grant,
            "operator.delete",
            detail,
            write,
            client,
            self.clock.now(),
        )
        .await
        .map(|_| ())
    }

    /// One administrator's operator change and its audit event, in one commit.
    async fn commit_operator(
        &self,
        grant: &AdminGrant,
        action: &str,
        detail: serde_json::Value,
        write: OperatorWrite,
        client: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Committed> {
        let audit = AuditEvent::new(now, format!("admin:{}", grant.code), action, "ok")
            .agency(&grant.code)
            .client(client)
            .detail(detail);
        self.store
            .commit(Commit {
                operator: Some(write),
                audit: vec![audit],
                // The registration the administrator's login checked, re-checked inside the
                // transaction: a replacement committed since refuses the change.
                registration_guard: Some((grant.code.clone(), grant.registration_version)),
                ..Default::default()
            })
            .await
    }

    // ---- F4 ------------------------------------------------------------------------------

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

    // ---- F6 ------------------------------------------------------------------------------

    /// R6.2: 核准 / 駁回. An approval takes effect on the next business day (Taipei).
    pub async fn decide_review(
        &self,
        reviewer: &Reviewer,
        id: i64,
        approve: bool,
        note: &str,
    ) -> Result<ReviewState> {
        if !reviewer.active {
            return Err(DomainError::Forbidden);
        }
        let application = self.store.review(id).await?.ok_or(DomainError::Forbidden)?;
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
}
