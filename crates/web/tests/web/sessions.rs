//! Sessions under revocation, logout, login and concurrent requests: a session ended in the
//! store stays ended whatever requests were in flight (a login among them), a session holds
//! one role, an administrator's session ends with a revoked card, and the table holds no
//! usable id.
//!
//! A child of `api` so that it drives the service with the same API client. Requests "in
//! flight" are held inside a handler by barriers, never by sleeps.

use super::{Api, refused};
use crate::helpers::*;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;
use testpki::CaKind;
use time::Duration;
use tokio::sync::Barrier;
use tower::ServiceExt as _;
use web::session::SessionHandle;

/// Puts in force a CRL of `ca` listing `cards`.
fn revoke(api: &Api, ca: CaKind, cards: &[&str]) {
    let p = pki();
    let mut crls = p
        .crl_store(NOW - Duration::hours(1), NOW + Duration::days(30))
        .unwrap();
    let this_update = NOW - Duration::minutes(30);
    let revoked: Vec<_> = cards
        .iter()
        .map(|c| {
            (
                p.card(c).issued.serial().to_vec(),
                NOW - Duration::minutes(40),
            )
        })
        .collect();
    crls.add(&testpki::crl(
        p.ca(ca),
        &revoked,
        this_update,
        NOW + Duration::days(7),
        this_update.unix_timestamp() as u64,
        None,
    ))
    .unwrap();
    api.app.validator.replace_crls(crls);
}

/// Barriers a handler waits on: every request arrives, the test acts, then all go on.
#[derive(Clone)]
struct Gate {
    arrived: Arc<Barrier>,
    release: Arc<Barrier>,
}

/// `GET /held`: changes the session (as a handler storing a message would), then waits at the
/// gate — a request in flight across whatever the test does meanwhile.
async fn held(State(gate): State<Gate>, session: SessionHandle) -> StatusCode {
    session.update(|s| s.data_mut().flash = Some("in flight".into()));
    gate.arrived.wait().await;
    gate.release.wait().await;
    StatusCode::OK
}

/// `GET /stored`: stores something in the session (so it is written and its cookie set).
async fn stored(session: SessionHandle) -> StatusCode {
    session.update(|s| s.data_mut().flash = Some("stored".into()));
    StatusCode::OK
}

/// `GET /rotate`: what a login does to the session: a fresh id, and something stored.
async fn rotate(session: SessionHandle) -> StatusCode {
    session.update(|s| {
        s.rotate();
        s.data_mut().flash = Some("logged in".into());
    });
    StatusCode::OK
}

/// The session cookie a response sets, as `name=value`.
fn session_cookie(res: &axum::http::Response<Body>) -> Option<String> {
    res.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_string())
        .find(|kv| kv.starts_with("certreg_session="))
}

/// The app with `/held` and `/stored` behind the same session layer.
fn with_held_route(api: &Api, gate: &Gate) -> axum::Router {
    let held = axum::Router::new()
        .route("/held", get(held))
        .route("/stored", get(stored))
        .route("/rotate", get(rotate))
        .with_state(gate.clone())
        .layer(axum::middleware::from_fn_with_state(
            api.app.state.clone(),
            web::session::layer,
        ));
    api.app.router.clone().merge(held)
}

#[tokio::test]
async fn a_revoked_operator_with_20_requests_in_flight_is_out_after_the_sweep() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        api.add_operator(&admin, "moica-operator-1", &["enroll"])
            .await;
        let (t, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(s, StatusCode::OK, "{v}");

        const IN_FLIGHT: usize = 20;
        let gate = Gate {
            arrived: Arc::new(Barrier::new(IN_FLIGHT + 1)),
            release: Arc::new(Barrier::new(IN_FLIGHT + 1)),
        };
        let router = with_held_route(&api, &gate);
        let mut requests = Vec::new();
        for _ in 0..IN_FLIGHT {
            let req = Request::get("/held")
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .body(Body::empty())
                .unwrap();
            requests.push(tokio::spawn(router.clone().oneshot(req)));
        }
        // All twenty have loaded the operator's session and changed it.
        gate.arrived.wait().await;
        revoke(&api, CaKind::Moica, &["moica-operator-1"]);
        let ended = api.app.end_revoked_sessions().await;
        assert_eq!(ended, 1);
        gate.release.wait().await;
        for r in requests {
            let res = r.await.unwrap().unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }

        // None of them brought the session back.
        assert!(
            api.app
                .db
                .sessions_live(NOW)
                .await
                .unwrap()
                .iter()
                .all(|r| r.kind != "operator")
        );
        refused(
            api.get(&t, "/api/v1/session").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        let (s, _) = api.post(&t, "/api/v1/token", json!({})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn an_administrator_session_ends_when_a_card_it_rests_on_is_revoked() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let (s, v) = api.get(&admin, "/api/v1/operators").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            api.app.end_revoked_sessions().await,
            0,
            "nothing revoked yet"
        );

        // The administrator's citizen card.
        revoke(&api, CaKind::Moica, &["moica-admin"]);
        assert_eq!(api.app.end_revoked_sessions().await, 1);
        refused(
            api.get(&admin, "/api/v1/operators").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );

        // The organization card, in a fresh administrator session.
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        revoke(&api, CaKind::Gca, &["gca-agency"]);
        assert_eq!(api.app.end_revoked_sessions().await, 1);
        refused(
            api.get(&admin, "/api/v1/operators").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        let events = api.app.audit().await;
        assert!(
            events.iter().any(
                |(_, e)| e.action == "session.end" && e.detail["certificate"] == "organization"
            ),
            "{events:?}"
        );
    }
}

#[tokio::test]
async fn a_session_holds_one_role_and_the_sweep_finds_it_by_its_grant() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        api.add_operator(&admin, "moica-operator-1", &["enroll"])
            .await;
        // The administrator's bearer session logs in as an operator too: it is now an
        // operator's session only.
        let flow = api.start(&admin, "operator_login").await;
        let (s, v) = api
            .card(
                &admin,
                &flow,
                "moica-operator-1",
                json!({ "institution_code": TAIPEI, "national_id": id_of("moica-operator-1") }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (_, v) = api.get(&admin, "/api/v1/session").await;
        assert_eq!(v["kind"], "operator", "{v}");
        refused(
            api.get(&admin, "/api/v1/operators").await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        // And the operator's revoked card ends it.
        revoke(&api, CaKind::Moica, &["moica-operator-1"]);
        assert_eq!(api.app.end_revoked_sessions().await, 1);
        refused(
            api.get(&admin, "/api/v1/session").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
}

#[tokio::test]
async fn session_ids_and_bearer_tokens_are_stored_as_hashes() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let db = &api.app.db;
        assert!(db.session_get(&admin, NOW).await.unwrap().is_none());
        let stored = db
            .session_get(&store::session_key(&admin), NOW)
            .await
            .unwrap()
            .expect("stored under its hash");
        assert_eq!(stored.kind, "admin");
        assert!(!stored.data.contains(&admin));
        // Nor does any flow name the token.
        let live = db.sessions_live(NOW).await.unwrap();
        assert!(
            live.iter()
                .all(|r| r.id != admin && !r.data.contains(&admin))
        );
    }
}

/// A request sent with the id a login has since replaced (a page loading in another tab) must
/// not take the new login cookie away from the browser.
#[tokio::test]
async fn a_request_holding_the_pre_login_id_cannot_erase_the_login_cookie() {
    for b in backends() {
        let api = Api::on(b).await;
        let gate = Gate {
            arrived: Arc::new(Barrier::new(2)),
            release: Arc::new(Barrier::new(2)),
        };
        let router = with_held_route(&api, &gate);
        // A browser session with a cookie.
        let res = router
            .clone()
            .oneshot(Request::get("/stored").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let cookie = session_cookie(&res).expect("a session cookie");
        let key = store::session_key(cookie.split_once('=').unwrap().1);
        let req = Request::get("/held")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap();
        let in_flight = tokio::spawn(router.clone().oneshot(req));
        gate.arrived.wait().await;
        // Meanwhile a login replaces the session (its id is rotated: the old row goes).
        api.app.db.session_delete(&key).await.unwrap();
        gate.release.wait().await;
        let res = in_flight.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(session_cookie(&res), None, "{:?}", res.headers());
        assert!(api.app.db.session_get(&key, NOW).await.unwrap().is_none());
        // And one that arrives after the login with the old id sets no cookie either unless it
        // stores something.
        let res = router
            .clone()
            .oneshot(
                Request::get("/")
                    .header(header::COOKIE, &cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(session_cookie(&res), None);
    }
}

/// A request sent with the id a login has replaced, arriving after the login (a form posted
/// from another tab, a page that was slow to load): it stores nothing, sets no cookie, and a
/// form it posts is refused — the login's cookie and session stay as they are.
#[tokio::test]
async fn a_request_arriving_after_the_login_with_the_old_id_can_neither_act_nor_set_a_cookie() {
    for b in backends() {
        let api = Api::on(b).await;
        let gate = Gate {
            arrived: Arc::new(Barrier::new(2)),
            release: Arc::new(Barrier::new(2)),
        };
        let router = with_held_route(&api, &gate);
        let send = |path: &str, cookie: &str| {
            router.clone().oneshot(
                Request::get(path)
                    .header(header::COOKIE, cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
        };
        let res = router
            .clone()
            .oneshot(Request::get("/stored").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let before = session_cookie(&res).expect("a session cookie");
        let res = send("/rotate", &before).await.unwrap();
        let after = session_cookie(&res).expect("the login's cookie");
        assert_ne!(before, after);
        let old_key = store::session_key(before.split_once('=').unwrap().1);
        let new_key = store::session_key(after.split_once('=').unwrap().1);

        // A late request that stores something: no row, no cookie.
        let res = send("/stored", &before).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(session_cookie(&res), None, "{:?}", res.headers());
        let old = api
            .app
            .db
            .session_get(&old_key, NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (old.kind.as_str(), old.data.as_str()),
            (store::SUPERSEDED, "{}")
        );

        // A form posted with the old id and the visitor's CSRF cookie: refused.
        let csrf = "c".repeat(64);
        let res = router
            .clone()
            .oneshot(
                Request::post("/flows/new/query_org_oid")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::ORIGIN, ORIGIN)
                    .header(header::COOKIE, format!("{before}; certreg_csrf={csrf}"))
                    .body(Body::from(format!("_csrf={csrf}")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(session_cookie(&res), None);
        // The same form from a visitor whose cookie names nothing at all starts the flow (so
        // the refusal above is the old id's, not the form's).
        let res = router
            .clone()
            .oneshot(
                Request::post("/flows/new/query_org_oid")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::ORIGIN, ORIGIN)
                    .header(header::COOKIE, format!("certreg_csrf={csrf}"))
                    .body(Body::from(format!("_csrf={csrf}")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);

        // The login's session is untouched and still live.
        let new = api
            .app
            .db
            .session_get(&new_key, NOW)
            .await
            .unwrap()
            .unwrap();
        assert!(new.data.contains("logged in"), "{}", new.data);
        let old = api
            .app
            .db
            .session_get(&old_key, NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(old.data, "{}");
    }
}

/// A CSRF cookie planted by someone else (a sibling host over http, a script on another
/// site's subdomain) is taken only in the form the service itself gives: a short or
/// guessable value is never a page's token.
#[tokio::test]
async fn a_planted_csrf_cookie_of_the_wrong_form_is_never_a_token() {
    for b in backends() {
        let api = Api::on(b).await;
        for planted in ["a", "", &"A".repeat(64), &"0".repeat(63), &"g".repeat(64)] {
            let res = api
                .app
                .router
                .clone()
                .oneshot(
                    Request::post("/flows/new/query_org_oid")
                        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .header(header::ORIGIN, ORIGIN)
                        .header(header::COOKIE, format!("certreg_csrf={planted}"))
                        .body(Body::from(format!("_csrf={planted}")))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{planted:?}");
            // A page read with it gets a token of its own in a fresh cookie.
            let res = api
                .app
                .router
                .clone()
                .oneshot(
                    Request::get("/")
                        .header(header::COOKIE, format!("certreg_csrf={planted}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let set: Vec<_> = res
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| v.strip_prefix("certreg_csrf="))
                .map(|v| v.split(';').next().unwrap().to_string())
                .collect();
            assert_eq!(set.len(), 1, "{planted:?}");
            assert!(web::security::is_token(&set[0]));
        }
        // The service's own form of token is taken (the refusals above are the form's).
        let token = "5".repeat(64);
        let res = api
            .app
            .router
            .clone()
            .oneshot(
                Request::post("/flows/new/query_org_oid")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::ORIGIN, ORIGIN)
                    .header(header::COOKIE, format!("certreg_csrf={token}"))
                    .body(Body::from(format!("_csrf={token}")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
    }
}

/// A session the sweep has not reached (a login that was in flight while it ran, saved after
/// it) holds no revoked card past its next request: every use checks the CRLs in force.
#[tokio::test]
async fn a_revoked_card_is_refused_on_its_next_use_before_any_sweep() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        api.add_operator(&admin, "moica-operator-1", &["enroll"])
            .await;
        let (operator, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = api.post(&operator, "/api/v1/token", json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");

        // The operator's card is revoked; no sweep runs.
        revoke(&api, CaKind::Moica, &["moica-operator-1"]);
        let (s, v) = api.post(&operator, "/api/v1/token", json!({})).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        // The administrator's cards are not: the administrator carries on.
        let (s, v) = api.get(&admin, "/api/v1/operators").await;
        assert_eq!(s, StatusCode::OK, "{v}");

        // The organization card is revoked; still no sweep.
        revoke(&api, CaKind::Gca, &["gca-agency"]);
        let (s, v) = api.get(&admin, "/api/v1/operators").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["code"], "cert_revoked");
    }
}

/// An operator's login whose session is logged out while its card is being checked: the
/// login is refused, the session stays ended, and no role is written anywhere; the same login
/// left alone goes through (so it is the logout that refuses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_session_logs_out_meanwhile_is_refused_and_grants_nothing() {
    for b in backends() {
        let hold = testkit::gate::HeldCheck::new();
        let validator = testkit::validator(pki(), NOW).with_online(hold.clone());
        let app = TestApp::with_validator(b, web::WebConfig::default(), Arc::new(validator)).await;
        let mut api = Api { app };
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        api.add_operator(&admin, "moica-operator-1", &["enroll"])
            .await;

        for logout in [true, false] {
            let t = api.session().await;
            let flow = api.start(&t, "operator_login").await;
            let (challenge_id, tbs) = api.challenge(&t, &flow).await;
            let body = json!({
                "challenge_id": challenge_id,
                "signature": api.app.sign("moica-operator-1", &tbs),
                "institution_code": TAIPEI,
                "national_id": id_of("moica-operator-1"),
            });
            let req = Request::post(format!("/api/v1/flows/{flow}/card"))
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            hold.hold_next();
            let in_flight = tokio::spawn(api.app.router.clone().oneshot(req));
            hold.entered().await;
            if logout {
                let (s, _) = api
                    .call(
                        axum::http::Method::DELETE,
                        "/api/v1/sessions/current",
                        Some(&t),
                        None,
                    )
                    .await;
                assert_eq!(s, StatusCode::NO_CONTENT);
            }
            hold.release();
            let res = in_flight.await.unwrap().unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let logins = api
                .app
                .audit()
                .await
                .into_iter()
                .filter(|(_, e)| e.action == "operator.login" && e.outcome == "ok")
                .count();
            let stored = api
                .app
                .db
                .session_get(&store::session_key(&t), NOW)
                .await
                .unwrap();
            if logout {
                refused((status, v), StatusCode::NOT_FOUND, "flow_not_found");
                assert!(stored.is_none(), "{stored:?}");
                refused(
                    api.get(&t, "/api/v1/session").await,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                );
                assert_eq!(logins, 0, "no login is logged");
            } else {
                assert_eq!(status, StatusCode::OK, "{v}");
                assert_eq!(v["outcome"], "operator", "{v}");
                assert_eq!(stored.expect("the session").kind, "operator");
                assert_eq!(logins, 1);
            }
        }
    }
}
