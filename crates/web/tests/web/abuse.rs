//! Abuse by one client must not hurt anyone else: junk card posts lock no agency out and cost
//! bounded memory, anonymous reads write no rows, sessions and flows are bounded per client and
//! per session — each with the honest user going on unaffected. Also what an outsider may no
//! longer learn: the identifier on file, the operations detail, a token's audience.
//!
//! A child of `api` so that it drives the service with the same API client.

use super::{Api, refused};
use crate::helpers::*;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tower::ServiceExt as _;

/// Rows in `table` of the app's database, counted with SQL of its own.
async fn rows(app: &TestApp, table: &str) -> i64 {
    let sql = match table {
        "sessions" => "SELECT COUNT(*) FROM sessions",
        "flows" => "SELECT COUNT(*) FROM flows",
        other => panic!("{other}"),
    };
    testkit::outside::integer(&app.db_url, sql).await
}

/// A JSON request from the client at `addr` (as the listener's connect-info names it).
fn from(addr: &str, method: Method, path: &str, token: Option<&str>, body: Value) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let mut req = req.body(Body::from(body.to_string())).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

#[tokio::test]
async fn junk_card_posts_lock_no_agency_out_and_cost_bounded_memory() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let junk = api.session().await;
        let post = |flow: &str, code: &str| json!({ "challenge_id": "x", "signature": "x", "institution_code": code, "flow": flow });
        // More junk than the agency's budget, to a flow that does not exist.
        for _ in 0..31 {
            let body = post("none", TAIPEI);
            let (s, v) = api
                .post(&junk, "/api/v1/flows/no-such-flow/card", body)
                .await;
            refused((s, v), StatusCode::NOT_FOUND, "flow_not_found");
        }
        // … and to the attacker's own flow, with challenges never issued.
        let own = api.start(&junk, "query_org_oid").await;
        for _ in 0..31 {
            let (s, v) = api
                .post(
                    &junk,
                    &format!("/api/v1/flows/{own}/card"),
                    post("own", TAIPEI),
                )
                .await;
            refused((s, v), StatusCode::GONE, "challenge_used");
        }
        // Huge codes: nothing of them is kept.
        let huge = "A".repeat(200 * 1024);
        let before = api.app.state.limiter().len();
        for _ in 0..400 {
            let (s, _) = api
                .post(
                    &junk,
                    "/api/v1/flows/no-such-flow/card",
                    post("none", &huge),
                )
                .await;
            assert_eq!(s, StatusCode::NOT_FOUND);
        }
        assert_eq!(
            api.app.state.limiter().len(),
            before,
            "junk adds no limiter key"
        );

        // The honest agency completes its card step meanwhile.
        let honest = api.session().await;
        let flow = api.start(&honest, "query_org_oid").await;
        let (s, v) = api.org_step(&honest, &flow, "gca-agency", TAIPEI).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["outcome"], "org_oid");
        assert_eq!(v["matches"], true);
    }
}

#[tokio::test]
async fn many_clients_keep_the_limiter_within_its_size() {
    let limits = web::security::Limits {
        limiter_entries: 64,
        ..Default::default()
    };
    let per_client = limits.sessions_per_client as usize;
    let mut api = Api::with(
        Backend::Sqlite,
        web::WebConfig {
            limits,
            ..Default::default()
        },
    )
    .await;
    // An honest client holds its key before the flood.
    let honest = "192.0.2.1:4000";
    let (s, v) = api
        .raw(from(
            honest,
            Method::POST,
            "/api/v1/sessions",
            None,
            json!({}),
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let honest_token = v["token"].as_str().unwrap().to_string();
    // 500 addresses from distinct IPv6 /64s each ask for a session: those the table has room
    // for are counted on their own, the rest share one overflow budget, so the flood cannot
    // make the limiter forget to count.
    let mut created = 0;
    for i in 0..500u32 {
        let addr = format!("[2001:db8:{:x}:{:x}::1]:4000", i >> 8, i & 0xff);
        let (s, v) = api
            .raw(from(
                &addr,
                Method::POST,
                "/api/v1/sessions",
                None,
                json!({}),
            ))
            .await;
        match s {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(v["code"], "rate_limited", "{v}"),
            other => panic!("{other}: {v}"),
        }
    }
    assert!(created <= 64 + per_client, "{created} sessions made");
    assert!(
        api.app.state.limiter().len() <= 64,
        "{}",
        api.app.state.limiter().len()
    );
    // The honest client goes on.
    let (s, v) = api
        .raw(from(
            honest,
            Method::POST,
            "/api/v1/flows",
            Some(&honest_token),
            json!({ "kind": "query_org_oid" }),
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn anonymous_reads_write_no_session_or_flow_rows() {
    for b in backends() {
        let mut app = TestApp::on(b, web::WebConfig::default()).await;
        let sessions = rows(&app, "sessions").await;
        let flows = rows(&app, "flows").await;
        for i in 0..400 {
            let path = if i % 2 == 0 {
                "/"
            } else {
                "/flows/new/query_org_oid"
            };
            let res = app
                .router
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
        }
        assert_eq!(rows(&app, "sessions").await, sessions);
        assert_eq!(rows(&app, "flows").await, flows);

        // A visitor who reads pages and then starts a flow: one session, one flow, and the
        // start page's token is the one the form carries.
        let (_, _, html) = app.get("/flows/new/query_org_oid").await;
        assert!(
            html.contains("action=\"/flows/new/query_org_oid\""),
            "{html}"
        );
        let flow = app.start("query_org_oid").await;
        assert_eq!(rows(&app, "sessions").await, sessions + 1);
        assert_eq!(rows(&app, "flows").await, flows + 1);
        let (status, _, html) = app.get(&format!("/flows/{flow}")).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        // Starting is a state change: without the token (or from elsewhere) it is refused.
        let mut stranger = TestApp::on(b, web::WebConfig::default()).await;
        let req = Request::post("/flows/new/query_org_oid")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, ORIGIN)
            .body(Body::from("_csrf=forged"))
            .unwrap();
        assert_eq!(stranger.send(req).await.0, StatusCode::FORBIDDEN);
        assert_eq!(rows(&stranger, "flows").await, 0);
    }
}

#[tokio::test]
async fn sessions_per_client_and_flows_per_session_are_bounded() {
    for b in backends() {
        let limits = web::security::Limits {
            sessions_per_client: 3,
            flows_per_session: 2,
            ..Default::default()
        };
        let mut api = Api::with(
            b,
            web::WebConfig {
                limits,
                ..Default::default()
            },
        )
        .await;
        let flood = "198.51.100.7:5000";
        let new_session =
            |addr: &str| from(addr, Method::POST, "/api/v1/sessions", None, json!({}));
        let mut tokens = Vec::new();
        for _ in 0..3 {
            let (s, v) = api.raw(new_session(flood)).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            tokens.push(v["token"].as_str().unwrap().to_string());
        }
        let (s, v) = api.raw(new_session(flood)).await;
        let v = refused((s, v), StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        assert!(v["message"].as_str().unwrap().contains("過於頻繁"));
        // Another client is unaffected.
        let (s, v) = api.raw(new_session("198.51.100.8:5000")).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let other = v["token"].as_str().unwrap().to_string();

        // Flows per session.
        let t = &tokens[0];
        api.start(t, "query_org_oid").await;
        api.start(t, "query_org_oid").await;
        let (s, v) = api
            .post(t, "/api/v1/flows", json!({ "kind": "query_org_oid" }))
            .await;
        let v = refused((s, v), StatusCode::TOO_MANY_REQUESTS, "too_many_flows");
        assert!(v["message"].as_str().unwrap().contains("作業過多"));
        // Another session starts and completes its own.
        let flow = api.start(&other, "query_org_oid").await;
        let (s, v) = api.org_step(&other, &flow, "gca-agency", TAIPEI).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

#[tokio::test]
async fn requests_for_another_host_are_refused() {
    let mut app = TestApp::default().await;
    let host = |h: &str, path: &str| {
        Request::get(path)
            .header(header::HOST, h)
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, html) = app.send(host("certreg.test", "/")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let (status, _, html) = app.send(host("rebound.example", "/")).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert!(html.contains(ORIGIN), "{html}");
    let (status, _, body) = app.send(host("rebound.example", "/api/v1/session")).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "wrong_host");
    // Probes reach an instance by its address.
    let (status, _, _) = app.send(host("10.0.0.5:8080", "/healthz")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn with_an_internal_address_the_public_listener_tells_only_the_health_status() {
    let mut app = TestApp::new(web::WebConfig {
        internal_ops: true,
        ..Default::default()
    })
    .await;
    let (status, _, body) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({ "status": "ok" }));
    let (status, _, _) = app.get("/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The internal router has the detail and the metrics.
    let internal = web::ops::internal_app(app.state.clone());
    let res = internal
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["database"]["ok"], true, "{v}");
    let res = internal
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_carry_the_audience_asked_for_and_introspection_reports_it() {
    for b in backends() {
        let mut api = Api::with(
            b,
            web::WebConfig {
                token_audiences: vec!["enrollment".into(), "premium".into()],
                ..Default::default()
            },
        )
        .await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        api.add_operator(&admin, "moica-operator-1", &["query"])
            .await;
        let (t, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(s, StatusCode::OK, "{v}");

        let refusal = api
            .post(&t, "/api/v1/token", json!({ "audience": "elsewhere" }))
            .await;
        refused(
            refusal,
            StatusCode::UNPROCESSABLE_ENTITY,
            "audience_not_allowed",
        );
        let (s, v) = api
            .post(&t, "/api/v1/token", json!({ "audience": "premium" }))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token = v["token"].as_str().unwrap().to_string();
        let (s, v) = api.post(&t, "/api/v1/token", json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let first = v["token"].as_str().unwrap().to_string();

        let introspect = |token: &str, audience: Option<&str>| {
            let mut body = json!({ "token": token });
            if let Some(a) = audience {
                body["audience"] = json!(a);
            }
            Request::post("/api/v1/introspect")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        // With two audiences configured, an asker that does not name itself gets nothing.
        let (_, v) = api.raw(introspect(&token, None)).await;
        assert_eq!(v, json!({ "active": false }));
        let (_, v) = api.raw(introspect(&token, Some("premium"))).await;
        assert_eq!(v["active"], true, "{v}");
        assert_eq!(v["aud"], "premium");
        // Another system asking about a token made for "premium" gets nothing.
        let (_, v) = api.raw(introspect(&token, Some("enrollment"))).await;
        assert_eq!(v, json!({ "active": false }));
        let (_, v) = api.raw(introspect(&first, Some("enrollment"))).await;
        assert_eq!(v["aud"], "enrollment", "none asked: the first configured");
    }
}
