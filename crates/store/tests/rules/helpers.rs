//! Fixtures for the rule tests: the test PKI, a fixed clock, testkit's seeded agencies and test
//! validator, the services over a fresh database (SQLite file, and PostgreSQL when
//! `TEST_DATABASE_URL` is set), and card steps made the way the agent makes them (CMS over the
//! challenge's TBS with the card's key).

#![allow(dead_code)]

use domain::Result;
use domain::calendar::BusinessCalendar;
use domain::clock::FixedClock;
use domain::flow::{Flow, FlowKind};
use domain::service::{
    CardStepInput, ContactInput, LoginSession, ServiceConfig, Services, StepOutcome,
};
use pki::validate::Validator;
use std::sync::{Arc, OnceLock};
use testpki::{TestPki, TestPkiOptions};
use time::OffsetDateTime;
use time::macros::datetime;

/// Thursday 2025-10-09 10:00 in Taipei: Friday 10-10 is 國慶日, so the next business day is
/// Monday 2025-10-13.
pub const NOW: OffsetDateTime = datetime!(2025-10-09 02:00 UTC);
pub const SESSION: &str = "session-1";

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate(TestPkiOptions::new(NOW)).expect("test PKI"))
}

pub fn validator() -> Arc<Validator> {
    Arc::new(plain_validator())
}

/// The test PKI's anchors and CRLs in force at `NOW`, before it is shared (to add an online check).
pub fn plain_validator() -> Validator {
    testkit::validator(pki(), NOW)
}

/// The seeded agencies (testkit's, the same in every suite).
pub use testkit::seed::{COMPANY, MISMATCH, SCHOOL, TAIPEI, agencies};

/// The services over the real store, behind a gate a race test can arm (see `paused.rs`).
pub type Svc = Services<crate::paused::Paused<store::Db>, Arc<FixedClock>>;

pub struct Env {
    /// Shared, so a race test can run a request on a task of its own.
    pub svc: Arc<Svc>,
    pub clock: Arc<FixedClock>,
    _db: testkit::db::FreshDb,
}

/// Services over each available database, with the master data seeded.
pub async fn envs() -> Vec<Env> {
    envs_with(validator).await
}

/// As `envs`, with the validator `make` builds for each database.
pub async fn envs_with(make: impl Fn() -> Arc<Validator>) -> Vec<Env> {
    let mut out = Vec::new();
    for fresh in testkit::db::FreshDb::all("certreg_rules").await {
        use domain::store::Store as _;
        let db = fresh.connect().await;
        db.upsert_agencies(&agencies()).await.unwrap();
        let clock = Arc::new(FixedClock::new(NOW));
        let svc = Services::new(
            crate::paused::Paused::new(db),
            clock.clone(),
            make(),
            BusinessCalendar::shipped(),
            ServiceConfig::default(),
        );
        out.push(Env {
            svc: Arc::new(svc),
            clock,
            _db: fresh,
        });
    }
    out
}

/// Signs `tbs` with the named test card, as our agent does (attached CMS).
pub fn cms(card: &str, tbs: &str) -> Vec<u8> {
    pki()
        .card(card)
        .sign_cms(tbs.as_bytes(), &Default::default())
        .unwrap()
}

pub fn id_of(card: &str) -> String {
    pki().card(card).national_id.clone().unwrap()
}

/// One card step: challenge, signature with `card`, submission with the typed fields.
pub async fn card_step(
    svc: &Svc,
    flow: &str,
    card: &str,
    code: Option<&str>,
    id: Option<&str>,
) -> Result<StepOutcome> {
    card_step_as(svc, flow, card, code, id, None).await
}

/// [`card_step`] for a caller whose session a login gives its role.
pub async fn card_step_as(
    svc: &Svc,
    flow: &str,
    card: &str,
    code: Option<&str>,
    id: Option<&str>,
    login_session: Option<Arc<dyn LoginSession>>,
) -> Result<StepOutcome> {
    let ch = svc.issue_challenge(flow, SESSION).await?;
    svc.submit_card(CardStepInput {
        flow_id: flow.into(),
        session: SESSION.into(),
        challenge_id: ch.id,
        signature: cms(card, &ch.tbs),
        certificate: None,
        institution_code: code.map(Into::into),
        national_id: id.map(Into::into),
        client: Some("127.0.0.1".into()),
        login_session,
    })
    .await
}

pub fn contact() -> ContactInput {
    ContactInput {
        name: "王大明".into(),
        email: "admin@example.gov.tw".into(),
        phone: "(02)2345-6789".into(),
        phone_ext: "123".into(),
        mobile: String::new(),
        unit: "人事處".into(),
        title: "科員".into(),
    }
}

pub fn advanced(o: StepOutcome) -> Flow {
    match o {
        StepOutcome::Advanced(f) => *f,
        other => panic!("expected Advanced, got {other:?}"),
    }
}

/// A complete first registration of `code` with `org_card` and `admin_card`.
pub async fn register(
    svc: &Svc,
    code: &str,
    org_card: &str,
    admin_card: &str,
) -> domain::model::Registration {
    let flow = svc
        .start_flow(FlowKind::FirstRegistration, SESSION)
        .await
        .unwrap();
    svc.agree_terms(&flow.id, SESSION).await.unwrap();
    advanced(
        card_step(svc, &flow.id, org_card, Some(code), None)
            .await
            .unwrap(),
    );
    advanced(
        card_step(svc, &flow.id, admin_card, None, Some(&id_of(admin_card)))
            .await
            .unwrap(),
    );
    svc.confirm(&flow.id, SESSION, &contact(), None)
        .await
        .unwrap()
}

/// F2: both cards, returning the administrator's grant.
pub async fn admin_login(
    svc: &Svc,
    code: &str,
    org_card: &str,
    admin_card: &str,
) -> Result<domain::service::AdminGrant> {
    let flow = svc.start_flow(FlowKind::AdminLogin, SESSION).await?;
    advanced(card_step(svc, &flow.id, org_card, Some(code), None).await?);
    match card_step(svc, &flow.id, admin_card, None, Some(&id_of(admin_card))).await? {
        StepOutcome::Admin(g) => Ok(g),
        other => panic!("expected Admin, got {other:?}"),
    }
}
