//! Test databases and fixtures: every test runs on a fresh SQLite file, and on a fresh
//! PostgreSQL database when `TEST_DATABASE_URL` is set (testkit's `FreshDb`).

use domain::flow::{Flow, FlowKind, Step};
use domain::model::*;
use domain::store::StoredChallenge;
use domain::types::*;
use sqlx::{AssertSqlSafe, Connection};
use std::future::Future;
use std::path::PathBuf;
use store::{Backend, Db, Secrets};
use testkit::db::FreshDb;
use time::OffsetDateTime;
use time::macros::datetime;

pub struct TestDb {
    pub db: Db,
    pub url: String,
    pub secrets: Secrets,
    /// The SQLite file (None on PostgreSQL).
    pub file: Option<PathBuf>,
}

impl TestDb {
    /// The store opened on a fresh database (which lives as long as `fresh`).
    async fn open(fresh: &FreshDb) -> Self {
        Self {
            db: fresh.connect().await,
            url: fresh.url.clone(),
            secrets: fresh.secrets.clone(),
            file: fresh.file.clone(),
        }
    }

    /// A handle on a database made outside `each_db`.
    pub fn for_url(db: Db, url: &str, secrets: &Secrets) -> Self {
        Self {
            db,
            url: url.to_string(),
            secrets: secrets.clone(),
            file: None,
        }
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// Runs SQL outside the store, on a connection of its own (tampering, inspection).
    pub async fn raw(&self, sql: &str) {
        testkit::outside::exec(&self.url, sql).await;
    }

    /// A single integer from a query run outside the store.
    pub async fn count(&self, sql: &str) -> i64 {
        testkit::outside::integer(&self.url, sql).await
    }

    /// A statement run outside the store (an attacker's, or an older version's, write).
    pub async fn exec(&self, sql: String) {
        testkit::outside::exec(&self.url, &sql).await;
    }

    /// Text of query results outside the store (every column cast to text on PostgreSQL).
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_all(&mut c)
            .await
            .unwrap()
    }
}

/// Runs `test` on a fresh PostgreSQL database of `TEST_DATABASE_URL` (which must be set),
/// dropped even when the test panics.
pub async fn each_postgres<F, Fut>(test: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let fresh = FreshDb::postgres("certreg_test").await;
    let outcome = tokio::spawn(test(TestDb::open(&fresh).await)).await;
    drop(fresh);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Runs `test` on SQLite, then on PostgreSQL if `TEST_DATABASE_URL` is set. The PostgreSQL
/// database is dropped even when the test panics.
pub async fn each_db<F, Fut>(test: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    for backend in testkit::db::backends() {
        let fresh = FreshDb::on(backend, "certreg_test").await;
        let outcome = tokio::spawn(test(TestDb::open(&fresh).await)).await;
        drop(fresh);
        if let Err(e) = outcome {
            eprintln!(
                "failed on {}",
                match backend {
                    Backend::Sqlite => "SQLite",
                    Backend::Postgres => "PostgreSQL",
                }
            );
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

pub const T0: OffsetDateTime = datetime!(2026-06-01 09:00:00 UTC);

/// A checksum-valid national ID from a letter, a sex digit and seven digits.
pub fn nid(prefix9: &str) -> NationalId {
    let d = pki::ids::national_id_check_digit(prefix9).unwrap();
    NationalId::parse(&format!("{prefix9}{d}")).unwrap()
}

pub fn code(s: &str) -> InstitutionCode {
    InstitutionCode::parse(s).unwrap()
}

pub fn serial(s: &str) -> CertSerial {
    CertSerial::parse(s).unwrap()
}

pub fn agency(c: &str) -> Agency {
    Agency {
        code: code(c),
        name: format!("測試機關 {c}"),
        county: "臺北市".into(),
        org_identifier: Some(OrgIdentifier::parse("2.16.886.101.20003.20065").unwrap()),
    }
}

pub fn cert(issuer: &str, s: &str) -> CertRef {
    CertRef {
        issuer: issuer.into(),
        serial: serial(s),
        subject: format!("CN=subject {s}"),
        sha256: format!("{:0>64}", s.to_lowercase()),
        not_before: datetime!(2025-01-01 00:00:00 UTC),
        not_after: datetime!(2030-01-01 00:00:00 UTC),
    }
}

pub fn org_card(s: &str) -> OrgCard {
    OrgCard {
        cert: cert("CN=GCA", s),
        org_identifier: OrgIdentifier::parse("2.16.886.101.20003.20065").unwrap(),
        org_name: "測試機關".into(),
    }
}

pub fn registration(c: &str, admin_id: &NationalId) -> Registration {
    Registration {
        code: code(c),
        org: org_card("0A01"),
        admin_card: CitizenCard {
            cert: cert("CN=MOICA", "0B01"),
            holder_name: "王大明".into(),
            id_last4: admin_id.last4().to_string(),
        },
        admin_id: admin_id.clone(),
        admin: AdminContact {
            name: PersonName::parse("name", "王大明").unwrap(),
            email: Email::parse("admin@example.gov.tw").unwrap(),
            phone: Phone::parse("phone", "連絡電話", "(02)2701-3411").unwrap(),
            phone_ext: Some("5312".into()),
            mobile: Some(Phone::parse("mobile", "行動電話", "0912-345-678").unwrap()),
            unit: Some("人事室".into()),
            title: None,
        },
        registered_at: T0,
        updated_at: T0,
        version: 1,
    }
}

pub fn operator_input(s: &str, id: &NationalId) -> OperatorInput {
    OperatorInput {
        serial: serial(s),
        name: PersonName::parse("name", "李小華").unwrap(),
        national_id: id.clone(),
        functions: vec!["enroll".into(), "query".into()],
        cert: None,
        validity: Default::default(),
    }
}

pub fn flow(id: &str, kind: FlowKind) -> Flow {
    Flow::new(id.into(), kind, "session-1", T0)
}

pub fn challenge(id: &str, flow_id: &str) -> StoredChallenge {
    StoredChallenge {
        id: id.into(),
        flow_id: flow_id.into(),
        session: "session-1".into(),
        step: Step::OrgCard,
        purpose: "first_registration/org_card".into(),
        origin: "https://certreg.example".into(),
        nonce: vec![1, 2, 3, 4, 0, 255],
        issued_at: T0,
        expires_at: T0 + time::Duration::minutes(5),
    }
}

pub fn review_app(c: &str) -> ReviewApplication {
    ReviewApplication {
        id: 0,
        code: code(c),
        org: org_card("0A77"),
        on_file: Some(OrgIdentifier::parse("2.16.886.101.20003.20065").unwrap()),
        applicant_name: PersonName::parse("name", "陳申請").unwrap(),
        applicant_phone: Phone::parse("phone", "電話", "02-2701-3411").unwrap(),
        filed_at: T0,
        state: ReviewState::Pending,
    }
}

pub fn event(action: &str) -> AuditEvent {
    AuditEvent::new(T0, "system", action, "ok").detail(serde_json::json!({"n": action}))
}
