//! Sessions resting on cards that OCSP or a distribution point's CRL revokes after the login,
//! with no configured CRL: a real `openssl ocsp` responder for each of the test GCA and MOICA
//! (the cards issued again naming them), or a distribution point serving their CRLs. The sweep
//! ends exactly the session of the revoked card; a source that cannot answer ends nobody.
//!
//! A child of `api` so that it drives the service with the same API client. The responders
//! date their answers by the system clock, so the OCSP tests take their time from
//! `testkit::ocsp::responder_clock` and move the app's clock from there.

use super::{Api, refused};
use crate::helpers::*;
use axum::http::StatusCode;
use pki::online::{CrlSource, RevocationPolicy, RevocationSettings, Transports};
use pki::revocation::CrlStore;
use std::collections::HashMap;
use std::sync::OnceLock;
use testkit::ocsp::{OcspResponder, index_line, ocsp_responder, responder_clock};
use testpki::{CaKind, Card, TestPki, TestPkiOptions};
use time::{Duration, OffsetDateTime};

/// The cards of these tests: the agency's organization card, its administrator's card and two
/// operators'.
const CARDS: [&str; 4] = [
    "gca-agency",
    "moica-admin",
    "moica-operator-1",
    "moica-operator-2",
];

/// A test PKI made at the responders' clock (the cards are valid for two years from it).
fn online_pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate(TestPkiOptions::new(responder_clock())).expect("test PKI"))
}

/// `name`'s card issued again (same key and serial) with these URLs.
fn reissued(name: &str, ocsp_url: Option<&str>, crl_url: Option<&str>) -> (String, Card) {
    let pki = online_pki();
    let card = pki.card(name);
    let mut spec = card.issued.spec.clone();
    spec.ocsp_url = ocsp_url.map(str::to_string);
    spec.crl_url = crl_url.map(str::to_string);
    let issued = testpki::try_issue(&spec, card.issued.key.clone(), pki.ca(card.ca)).unwrap();
    (
        name.to_string(),
        Card {
            issued,
            ..card.clone()
        },
    )
}

/// An `openssl ocsp` responder of one CA in a directory of its own, answering from an index
/// the test rewrites.
struct Responder {
    dir: tempfile::TempDir,
    kind: CaKind,
    server: OcspResponder,
}

impl Responder {
    /// For `kind`, knowing `cards` as good at `at`.
    fn start(kind: CaKind, cards: &[&str], at: OffsetDateTime) -> Self {
        let ca = online_pki().ca(kind);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("ca.key"), ca.key.pem()).unwrap();
        let r = Self {
            kind,
            server: {
                Self::write_index(dir.path(), cards, &[], at);
                ocsp_responder(dir.path(), "ca.pem", "ca.key", &[])
            },
            dir,
        };
        assert!(cards.iter().all(|c| online_pki().card(c).ca == r.kind));
        r
    }

    fn write_index(dir: &std::path::Path, good: &[&str], revoked: &[&str], at: OffsetDateTime) {
        let pki = online_pki();
        let line = |name: &&str, revoked| {
            index_line(&pki.card(name).issued.serial_hex(), name, revoked, at)
        };
        let index: String = good
            .iter()
            .map(|c| line(c, false))
            .chain(revoked.iter().map(|c| line(c, true)))
            .collect();
        // A new file (inode) in its place: openssl's check for a changed index compares the
        // modification time in whole seconds, and the inode.
        std::fs::write(dir.join("index.txt.new"), index).unwrap();
        std::fs::rename(dir.join("index.txt.new"), dir.join("index.txt")).unwrap();
    }

    /// From now on `revoked` are revoked (a day before `at`) and `good` good.
    fn index(&self, good: &[&str], revoked: &[&str], at: OffsetDateTime) {
        Self::write_index(self.dir.path(), good, revoked, at);
        // openssl looks for a changed index after each request, before it waits for the next:
        // one request, whose answer is of no interest, makes it read this one.
        let pki = online_pki();
        let card = pki.card(good.first().or(revoked.first()).expect("a card"));
        let cert = pki::facts::ParsedCert::from_der(card.issued.cert_der.clone()).unwrap();
        let issuer = pki::facts::ParsedCert::from_der(pki.ca(self.kind).cert_der.clone()).unwrap();
        let req =
            pki::ocsp::build_request(&cert.cert, &issuer.cert, pki::ocsp::CertIdHash::Sha1, None)
                .unwrap();
        pki::ocsp::OcspTransport::post(
            &pki::ocsp::HttpTransport,
            &self.server.url,
            &req,
            std::time::Duration::from_secs(5),
            64 * 1024,
        )
        .unwrap();
    }
}

fn settings(policy: RevocationPolicy, crl_source: CrlSource) -> RevocationSettings {
    let mut s = RevocationSettings {
        policy,
        crl_source,
        ..RevocationSettings::default()
    };
    s.ocsp.timeout = std::time::Duration::from_secs(3);
    s.cdp.timeout = std::time::Duration::from_secs(3);
    s
}

/// The service as `certreg serve` builds it with these revocation settings and no configured
/// CRL, its clock at `now`, proofs made with `cards`.
async fn app(
    b: Backend,
    settings: &RevocationSettings,
    now: OffsetDateTime,
    cards: HashMap<String, Card>,
) -> Api {
    let validator = pki::online::wire(
        online_pki().trust_store().unwrap(),
        CrlStore::new(),
        pki::validate::ValidationOptions::default(),
        settings,
        Transports::default(),
    );
    Api {
        app: TestApp::with_cards(b, web::WebConfig::default(), validator, now, cards).await,
    }
}

/// [`app`] asking OCSP only, with a responder for GCA and one for MOICA started at `at` and
/// every card reissued to point at its CA's responder.
async fn ocsp_app(b: Backend, at: OffsetDateTime) -> (Responder, Responder, Api) {
    let gca = Responder::start(CaKind::Gca, &["gca-agency"], at);
    let moica = Responder::start(CaKind::Moica, &CARDS[1..], at);
    let cards = CARDS
        .iter()
        .map(|c| {
            let url = if c.starts_with("gca") { &gca } else { &moica }
                .server
                .url
                .clone();
            reissued(c, Some(&url), None)
        })
        .collect();
    let api = app(
        b,
        &settings(RevocationPolicy::Ocsp, CrlSource::Configured),
        at,
        cards,
    )
    .await;
    (gca, moica, api)
}

/// The agency registered, its administrator's session, operators 1 and 2 added and each
/// logged in: (administrator, operator 1, operator 2) bearer tokens.
async fn sessions(api: &mut Api) -> (String, String, String) {
    api.register(TAIPEI, "gca-agency", "moica-admin").await;
    let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
    api.add_operator(&admin, "moica-operator-1", &["enroll"])
        .await;
    api.add_operator(&admin, "moica-operator-2", &["enroll"])
        .await;
    let (op1, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (op2, s, v) = api.operator_login(TAIPEI, "moica-operator-2").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    (admin, op1, op2)
}

/// Whether each session still holds: the administrator's lists the operators, the operators'
/// answer who they are.
async fn holds(api: &mut Api, admin: &str, operators: &[&str]) {
    let (s, v) = api.get(admin, "/api/v1/operators").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for op in operators {
        let (s, v) = api.get(op, "/api/v1/session").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["kind"], "operator", "{v}");
    }
}

/// The `session.end` events the sweep recorded.
async fn ends(api: &Api) -> Vec<serde_json::Value> {
    api.app
        .audit()
        .await
        .into_iter()
        .filter(|(_, e)| e.action == "session.end")
        .map(|(_, e)| e.detail)
        .collect()
}

/// A time at which every answer the responders have given so far has run out (each is valid
/// five minutes from when it was given) while one given from now on is still valid: the
/// responders' clock is read after those answers, and again once it has moved two seconds on.
async fn once_the_answers_given_have_run_out() -> OffsetDateTime {
    let given = responder_clock();
    loop {
        let now = responder_clock();
        if now >= given + Duration::seconds(2) {
            return now + Duration::minutes(5) - Duration::seconds(1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_card_the_ocsp_responder_revokes_after_the_login_ends_that_session_only() {
    for b in backends() {
        let at = responder_clock();
        let (_gca, moica, mut api) = ocsp_app(b, at).await;
        let (admin, op1, op2) = sessions(&mut api).await;
        assert_eq!(api.app.sweep().await, 0);

        moica.index(
            &["moica-admin", "moica-operator-2"],
            &["moica-operator-1"],
            at,
        );
        // What the responder answered at the logins holds until its nextUpdate.
        assert_eq!(api.app.sweep().await, 0);
        holds(&mut api, &admin, &[&op1, &op2]).await;

        // Once it has run out, the sweep asks again and ends the session of the revoked card.
        let later = once_the_answers_given_have_run_out().await;
        api.app.clock.set(later);
        assert_eq!(api.app.sweep().await, 1);
        refused(
            api.get(&op1, "/api/v1/session").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        holds(&mut api, &admin, &[&op2]).await;
        let ended = ends(&api).await;
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0]["reason"], "certificate_revoked");
        assert_eq!(
            ended[0]["serial"],
            online_pki().card("moica-operator-1").issued.serial_hex()
        );
        // The administrator's list flags the card, and it logs in no more.
        let page = api.page(&admin, "/admin/operators").await;
        assert_eq!(page.matches("憑證已廢止").count(), 1, "{page}");
        let (_, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(v["code"], "cert_revoked", "{s}: {v}");
        // Swept again, nothing more ends.
        assert_eq!(api.app.sweep().await, 0);
    }
}

#[tokio::test]
async fn a_card_step_that_finds_a_card_revoked_stops_the_sessions_resting_on_it_at_once() {
    let b = backends()[0];
    let at = responder_clock();
    let (_gca, moica, mut api) = ocsp_app(b, at).await;
    let (admin, op1, op2) = sessions(&mut api).await;
    moica.index(
        &["moica-admin", "moica-operator-2"],
        &["moica-operator-1"],
        at,
    );
    // Another login with the card, once the answers kept have run out: refused, and every use
    // of the session already resting on the card is refused from then on, before any sweep.
    api.app
        .clock
        .set(once_the_answers_given_have_run_out().await);
    let (_, _, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
    assert_eq!(v["code"], "cert_revoked", "{v}");
    let (s, v) = api.get(&op1, "/api/v1/session").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "anonymous", "{v}");
    holds(&mut api, &admin, &[&op2]).await;
}

#[tokio::test]
async fn a_responder_that_is_down_ends_nobody() {
    for b in backends() {
        let at = responder_clock();
        let (gca, moica, mut api) = ocsp_app(b, at).await;
        let (admin, op1, op2) = sessions(&mut api).await;
        drop((gca, moica));
        // Past every answer given (five minutes each): nothing kept, nobody to ask.
        api.app.clock.set(responder_clock() + Duration::minutes(6));
        assert_eq!(api.app.sweep().await, 0);
        holds(&mut api, &admin, &[&op1, &op2]).await;
        assert!(ends(&api).await.is_empty());
        // The responder is down indeed: a card step is refused for it.
        let (_, _, v) = api.operator_login(TAIPEI, "moica-operator-2").await;
        assert_eq!(v["code"], "ocsp_unavailable", "{v}");
    }
}

#[tokio::test]
async fn a_card_its_distribution_point_revokes_after_the_login_ends_that_session_only() {
    for b in backends() {
        let pki = online_pki();
        let at = pki.card("gca-agency").issued.spec.not_before + Duration::days(30);
        let server = testkit::cdp::CrlServer::start();
        let path = |kind: CaKind| format!("{}.crl", kind.slug());
        let publish = |kind: CaKind, revoked: &[&str], this: OffsetDateTime| {
            let listed: Vec<_> = revoked
                .iter()
                .map(|c| (pki.card(c).issued.serial().to_vec(), this))
                .collect();
            let crl = testpki::crl(
                pki.ca(kind),
                &listed,
                this,
                this + Duration::minutes(5),
                this.unix_timestamp() as u64,
                None,
            );
            server.put(&path(kind), crl);
        };
        publish(CaKind::Gca, &[], at);
        publish(CaKind::Moica, &[], at);
        let cards = CARDS
            .iter()
            .map(|c| {
                let kind = if c.starts_with("gca") {
                    CaKind::Gca
                } else {
                    CaKind::Moica
                };
                reissued(c, None, Some(&server.url(&path(kind))))
            })
            .collect();
        let mut api = app(
            b,
            &settings(RevocationPolicy::Crl, CrlSource::DistributionPoint),
            at,
            cards,
        )
        .await;
        let (admin, op1, op2) = sessions(&mut api).await;
        assert_eq!(api.app.sweep().await, 0);
        let fetched = server.gets();

        // Five minutes on, the next CRLs: MOICA's lists operator 1's card.
        let next = at + Duration::minutes(5);
        publish(CaKind::Gca, &[], next);
        publish(CaKind::Moica, &["moica-operator-1"], next);
        // The CRLs kept hold until their nextUpdate, and nothing is fetched before it.
        api.app.clock.set(at + Duration::minutes(4));
        assert_eq!(api.app.sweep().await, 0);
        assert_eq!(server.gets(), fetched);
        holds(&mut api, &admin, &[&op1, &op2]).await;

        api.app.clock.set(next + Duration::minutes(1));
        assert_eq!(api.app.sweep().await, 1);
        assert_eq!(server.gets(), fetched + 2);
        refused(
            api.get(&op1, "/api/v1/session").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        holds(&mut api, &admin, &[&op2]).await;
        let ended = ends(&api).await;
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0]["reason"], "certificate_revoked");
        assert_eq!(
            ended[0]["revoked_at"],
            next.unix_timestamp(),
            "{:?}",
            ended[0]
        );

        // The distribution points go down and their CRLs run out: nobody else is ended.
        server.fail(Some(503));
        api.app.clock.set(next + Duration::minutes(7));
        assert_eq!(api.app.sweep().await, 0);
        holds(&mut api, &admin, &[&op2]).await;
        assert_eq!(ends(&api).await.len(), 1);
    }
}
