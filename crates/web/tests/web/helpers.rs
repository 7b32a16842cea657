//! A test instance of the web service, built as `certreg serve` builds it, over a fresh SQLite
//! file (and PostgreSQL when `TEST_DATABASE_URL` is set) with testkit's seeded agencies, driven
//! request by request with a cookie jar, the way a browser would, plus card proofs made with
//! the test PKI's cards.

#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use domain::clock::{Clock as _, FixedClock};
use domain::store::Store as _;
use pki::validate::Validator;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use testpki::{TestPki, TestPkiOptions};
use time::OffsetDateTime;
use time::macros::datetime;
use tower::ServiceExt as _;
use web::{AppState, WebConfig};

pub const NOW: OffsetDateTime = datetime!(2026-06-01 02:00 UTC);
pub const ORIGIN: &str = "http://certreg.test";
/// The agencies every test app has on file, and the databases a test runs on.
pub use testkit::db::backends;
pub use testkit::seed::{self, HOSPITAL, MISMATCH, SCHOOL, TAIPEI};

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate(TestPkiOptions::new(NOW)).expect("test PKI"))
}

pub struct TestApp {
    pub router: axum::Router,
    /// The app's state, for routes a test adds behind the same layers.
    pub state: AppState,
    pub clock: Arc<FixedClock>,
    pub db: store::Db,
    /// The database's URL and keys, for a second instance on the same database.
    pub db_url: String,
    pub secrets: store::Secrets,
    /// The service's validator: tests put new CRLs in force with `replace_crls`.
    pub validator: Arc<Validator>,
    /// Cards proofs are made with instead of the test PKI's of the same name.
    cards: HashMap<String, testpki::Card>,
    cookies: Vec<(String, String)>,
    _fresh: testkit::db::FreshDb,
}

impl TestApp {
    /// The revocation sweep `certreg serve` runs after each CRL refresh, at [`NOW`]; returns the
    /// number of sessions it ended.
    pub async fn end_revoked_sessions(&self) -> u64 {
        web::session::end_revoked_sessions(&backend(&self.db), &self.validator, NOW)
            .await
            .unwrap()
    }

    /// The revocation sweep at the app's clock.
    pub async fn sweep(&self) -> u64 {
        web::session::end_revoked_sessions(&backend(&self.db), &self.validator, self.clock.now())
            .await
            .unwrap()
    }

    /// The newest 200 audit events with their sequence numbers, newest first.
    pub async fn audit(&self) -> Vec<(i64, domain::model::AuditEvent)> {
        self.db
            .audit_search(&store::AuditFilter {
                limit: 200,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// The card of that name this app's proofs are made with.
    pub fn card(&self, name: &str) -> &testpki::Card {
        self.cards.get(name).unwrap_or_else(|| pki().card(name))
    }

    /// Base64 CMS over `tbs` with the named card.
    pub fn sign(&self, card: &str, tbs: &str) -> String {
        use base64::Engine as _;
        let der = self
            .card(card)
            .sign_cms(tbs.as_bytes(), &Default::default())
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(der)
    }

    pub async fn new(config: WebConfig) -> Self {
        Self::on(Backend::Sqlite, config).await
    }

    /// A test app on a fresh database of `backend` (a PostgreSQL one is dropped with the app),
    /// the seeded agencies on file.
    pub async fn on(backend: Backend, config: WebConfig) -> Self {
        Self::with_validator(backend, config, Arc::new(testkit::validator(pki(), NOW))).await
    }

    /// [`TestApp::on`] with the service checking cards with `validator`.
    pub async fn with_validator(
        backend: Backend,
        config: WebConfig,
        validator: Arc<Validator>,
    ) -> Self {
        Self::with_cards(backend, config, validator, NOW, HashMap::new()).await
    }

    /// [`TestApp::with_validator`] with its clock at `now` and proofs made with `cards` where
    /// they name a card (the test PKI's cards otherwise).
    pub async fn with_cards(
        backend: Backend,
        config: WebConfig,
        validator: Arc<Validator>,
        now: OffsetDateTime,
        cards: HashMap<String, testpki::Card>,
    ) -> Self {
        let fresh = testkit::db::FreshDb::on(backend, "certreg_web").await;
        let clock = Arc::new(FixedClock::new(now));
        let service = server::build(server::Settings {
            web: WebConfig {
                public_origin: ORIGIN.into(),
                ..config
            },
            ..server::Settings::new(
                fresh.url.clone(),
                fresh.secrets.clone(),
                validator,
                clock.clone(),
            )
        })
        .await
        .unwrap();
        assert_eq!(service.db.backend(), backend);
        service.db.upsert_agencies(&seed::agencies()).await.unwrap();
        Self {
            router: service.router(),
            state: service.state,
            clock,
            db: service.db,
            db_url: fresh.url.clone(),
            secrets: fresh.secrets.clone(),
            validator: service.validator,
            cards,
            cookies: Vec::new(),
            _fresh: fresh,
        }
    }

    /// The value of the jar's cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// A new browser: no cookies.
    pub fn forget_cookies(&mut self) {
        self.cookies.clear();
    }

    pub async fn default() -> Self {
        Self::new(WebConfig::default()).await
    }

    /// Sends a request with the jar's cookies and the site's Origin on POSTs; keeps Set-Cookie.
    pub async fn send(
        &mut self,
        mut req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        if !self.cookies.is_empty() && !req.headers().contains_key(header::COOKIE) {
            let jar = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req.headers_mut()
                .insert(header::COOKIE, jar.parse().unwrap());
        }
        let res: Response<Body> = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        for c in headers.get_all(header::SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !attrs.contains("Max-Age=0") {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
        let body = axum::body::to_bytes(res.into_body(), 4 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    /// A form POST from the site (Origin set), with the page's CSRF token added.
    pub async fn post_form(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let csrf = self.csrf().await;
        let mut all: Vec<(&str, &str)> = vec![("_csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        let body = serde_urlencoded_pairs(&all);
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, ORIGIN)
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    /// The CSRF token the pages carry (from the home page's meta tag).
    pub async fn csrf(&mut self) -> String {
        let (_, _, html) = self.get("/").await;
        let start = html.find("name=\"csrf-token\" content=\"").unwrap() + 27;
        html[start..start + 64].to_string()
    }

    /// Starts a flow as the page does (its door, then 開始); returns its id.
    pub async fn start(&mut self, kind: &str) -> String {
        let (status, _, html) = self.get(&format!("/flows/new/{kind}")).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        let (status, headers, body) = self.post_form(&format!("/flows/new/{kind}"), &[]).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let loc = headers[header::LOCATION].to_str().unwrap();
        loc.trim_start_matches("/flows/").to_string()
    }

    /// What the page script does for a card step: challenge, signature with `card`, post.
    pub async fn card_step(
        &mut self,
        flow: &str,
        card: &str,
        fields: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let csrf = self.csrf().await;
        let req = Request::post(format!("/flows/{flow}/challenge"))
            .header(header::ORIGIN, ORIGIN)
            .header("x-csrf-token", csrf)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = self.send(req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let tbs = v["tbs"].as_str().unwrap();
        let sig = cms(card, tbs);
        let challenge_id = v["challenge_id"].as_str().unwrap().to_string();
        let mut all: Vec<(&str, &str)> = vec![("challenge_id", &challenge_id), ("signature", &sig)];
        all.extend_from_slice(fields);
        self.post_form(&format!("/flows/{flow}/card"), &all).await
    }
}

pub fn serde_urlencoded_pairs(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Base64 CMS over `tbs` with the named test card.
pub fn cms(card: &str, tbs: &str) -> String {
    use base64::Engine as _;
    let der = pki()
        .card(card)
        .sign_cms(tbs.as_bytes(), &Default::default())
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(der)
}

pub fn id_of(card: &str) -> String {
    pki().card(card).national_id.clone().unwrap()
}

pub fn location(h: &axum::http::HeaderMap) -> String {
    h.get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Which database a test app runs on.
pub use store::Backend;

/// The store as the web layer holds it.
pub fn backend(db: &store::Db) -> domain::store::Backend {
    std::sync::Arc::new(db.clone())
}
