//! The operator's token for other systems: verified as a downstream service does, from the
//! published JWKS alone (`jsonwebtoken` with the JWK Set, not certreg's key ring), its claims,
//! introspection ending with logout, a grant change and the operator's deletion, and key
//! rotation on the injected clock.
//!
//! A child of `api` so that it drives the service with the same API client.

use super::{Api, cert_b64, refused};
use crate::helpers::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use domain::clock::Clock as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use time::Duration;

impl Api {
    async fn jwks(&mut self) -> JwkSet {
        let (s, v) = self
            .raw(
                Request::get("/.well-known/jwks.json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn token(&mut self, session: &str) -> (StatusCode, Value) {
        self.post(session, "/api/v1/token", json!({})).await
    }

    /// Introspection needs no session: a downstream service has none.
    async fn introspect(&mut self, token: &str) -> Value {
        let (s, v) = self
            .call(
                Method::POST,
                "/api/v1/introspect",
                None,
                Some(json!({ "token": token })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// An agency with an operator logged in: (admin session, operator row, operator session).
    async fn operator_setup(&mut self, functions: &[&str]) -> (String, Value, String) {
        self.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = self.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let op = self
            .add_operator(&admin, "moica-operator-1", functions)
            .await;
        let (t, s, v) = self.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        (admin, op, t)
    }
}

/// What a downstream service does, with `jsonwebtoken`: pick the JWK by the header's kid and
/// verify ES256 and the issuer. `exp` is checked against the test's injected clock instead of
/// the library's system clock (the tokens are issued at the fixed test time).
fn verify_independently(jwks: &JwkSet, token: &str, now: time::OffsetDateTime) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.expect("a kid");
    let jwk = jwks
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} not published"));
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[ORIGIN]);
    validation.set_audience(&[web::DEFAULT_AUDIENCE]);
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims;
    assert!(claims["exp"].as_i64().unwrap() > now.unix_timestamp());
    claims
}

#[tokio::test]
async fn token_verifies_with_the_published_keys_and_carries_the_grant() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let (_admin, _op, t) = api.operator_setup(&["enroll", "query"]).await;
        let (s, v) = api.token(&t).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token = v["token"].as_str().unwrap().to_string();
        let jwks = api.jwks().await;
        assert_eq!(jwks.keys.len(), 1);
        let jwk = serde_json::to_value(&jwks.keys[0]).unwrap();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["use"], "sig");
        assert!(jwk["x"].is_string() && jwk["y"].is_string() && jwk["kid"].is_string());

        let now = api.app.clock.now();
        let claims = verify_independently(&jwks, &token, now);
        let serial = pki().card("moica-operator-1").issued.serial_hex();
        assert_eq!(claims["iss"], ORIGIN);
        assert_eq!(claims["aud"], web::DEFAULT_AUDIENCE);
        assert_eq!(claims["sub"], format!("operator:{serial}"));
        assert_eq!(claims["code"], TAIPEI);
        assert_eq!(claims["serial"], serial);
        assert_eq!(claims["functions"], json!(["enroll", "query"]));
        assert_eq!(claims["iat"], now.unix_timestamp());
        assert_eq!(
            claims["exp"],
            (now + Duration::minutes(15)).unix_timestamp()
        );
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
        let sid = claims["sid"].as_str().unwrap();
        assert!(
            sid.len() >= 16 && sid != t,
            "sid is a handle, not the session id"
        );
        assert!(
            !token.contains(&t),
            "the bearer session id is nowhere in the token"
        );
        let exp =
            time::OffsetDateTime::from_unix_timestamp(claims["exp"].as_i64().unwrap()).unwrap();
        assert_eq!(
            v["expires_at"],
            exp.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );

        // A tampered token fails the independent check and introspects inactive.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut forged = claims.clone();
        forged["functions"] = json!(["enroll", "query", "premium"]);
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            forged.to_string(),
        );
        let tampered = parts.join(".");
        let key = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        assert!(jsonwebtoken::decode::<Value>(&tampered, &key, &validation).is_err());
        assert_eq!(api.introspect(&tampered).await, json!({ "active": false }));
        assert_eq!(
            api.introspect("not.a.token").await,
            json!({ "active": false })
        );

        // Introspection answers the claims while active.
        let v = api.introspect(&token).await;
        assert_eq!(v["active"], true, "{v}");
        assert_eq!(v["sid"], claims["sid"]);
        assert_eq!(v["functions"], claims["functions"]);

        // Re-issued while the session lives, with the same sid; expired tokens are inactive.
        api.app.clock.advance(Duration::minutes(10));
        let (s, v2) = api.token(&t).await;
        assert_eq!(s, StatusCode::OK, "{v2}");
        let token2 = v2["token"].as_str().unwrap().to_string();
        let now = api.app.clock.now();
        let claims2 = verify_independently(&api.jwks().await, &token2, now);
        assert_eq!(claims2["sid"], claims["sid"]);
        assert_ne!(claims2["jti"], claims["jti"]);
        api.app.clock.advance(Duration::minutes(6));
        assert_eq!(api.introspect(&token).await["active"], false, "expired");
        assert_eq!(api.introspect(&token2).await["active"], true);

        // Only operator sessions get a token.
        let anon = api.session().await;
        refused(api.token(&anon).await, StatusCode::FORBIDDEN, "forbidden");
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        refused(api.token(&admin).await, StatusCode::FORBIDDEN, "forbidden");
        refused(
            api.token("nosuchsession").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
}

#[tokio::test]
async fn introspection_ends_with_logout_grant_change_and_deletion() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let (admin, op, t) = api.operator_setup(&["enroll", "query"]).await;

        // Logout.
        let token = api.token(&t).await.1["token"].as_str().unwrap().to_string();
        assert_eq!(api.introspect(&token).await["active"], true);
        let (s, _) = api
            .call(Method::DELETE, "/api/v1/sessions/current", Some(&t), None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert_eq!(api.introspect(&token).await, json!({ "active": false }));

        // The administrator changes the operator's functions.
        let (t, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token = api.token(&t).await.1["token"].as_str().unwrap().to_string();
        assert_eq!(api.introspect(&token).await["active"], true);
        let (s, op) = api
            .call(
                Method::PUT,
                &format!("/api/v1/operators/{}", op["id"]),
                Some(&admin),
                Some(
                    json!({ "version": op["version"], "certificate": cert_b64("moica-operator-1"),
                             "national_id": id_of("moica-operator-1"), "functions": ["premium"] }),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{op}");
        assert_eq!(api.introspect(&token).await["active"], false);
        // A new token carries today's grant and is active.
        let token = api.token(&t).await.1["token"].as_str().unwrap().to_string();
        let v = api.introspect(&token).await;
        assert_eq!(v["active"], true);
        assert_eq!(v["functions"], json!(["premium"]));

        // The administrator deletes the operator.
        let (s, _) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/operators/{}?version={}", op["id"], op["version"]),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert_eq!(api.introspect(&token).await, json!({ "active": false }));
        refused(api.token(&t).await, StatusCode::FORBIDDEN, "forbidden");
    }
}

#[tokio::test]
async fn rotation_keeps_the_previous_key_until_its_tokens_expire() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let (_admin, _op, t) = api.operator_setup(&["query"]).await;
        let old = api.token(&t).await.1["token"].as_str().unwrap().to_string();
        let old_kid = jsonwebtoken::decode_header(&old).unwrap().kid.unwrap();

        // The ring re-reads the keys from the database: one over the same database rotates for
        // every instance.
        let ring = web::token::KeyRing::new(crate::helpers::backend(&api.app.db));
        api.app.clock.advance(Duration::minutes(5));
        let new_kid = ring.rotate(api.app.clock.now()).await.unwrap();
        assert_ne!(new_kid, old_kid);

        let jwks = api.jwks().await;
        let kids: Vec<_> = jwks
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(kids, vec![new_kid.clone(), old_kid.clone()]);
        verify_independently(&jwks, &old, api.app.clock.now());
        assert_eq!(api.introspect(&old).await["active"], true);

        let new = api.token(&t).await.1["token"].as_str().unwrap().to_string();
        assert_eq!(
            jsonwebtoken::decode_header(&new).unwrap().kid.unwrap(),
            new_kid
        );
        verify_independently(&jwks, &new, api.app.clock.now());

        // The old key stays published for a token's longest life (15 minutes) after the
        // rotation, plus a minute of clock skew; then it is gone.
        api.app.clock.advance(Duration::minutes(10));
        let _ = api.token(&t).await; // keeps the session alive
        assert_eq!(api.jwks().await.keys.len(), 2);
        api.app
            .clock
            .advance(Duration::minutes(6) + Duration::seconds(1));
        let jwks = api.jwks().await;
        let kids: Vec<_> = jwks
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(kids, vec![new_kid.clone()]);
        assert_eq!(api.introspect(&old).await["active"], false);
    }
}

/// The page with a raw token is for agencies whose other systems take it: off unless set.
#[tokio::test]
async fn the_operator_token_page_is_off_unless_set() {
    let mut api = Api::on(Backend::Sqlite).await;
    api.register(TAIPEI, "gca-agency", "moica-admin").await;
    let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
    api.add_operator(&admin, "moica-operator-1", &["query"])
        .await;
    let app = &mut api.app;
    let flow = app.start("operator_login").await;
    let id = id_of("moica-operator-1");
    let (status, _, body) = app
        .card_step(
            &flow,
            "moica-operator-1",
            &[("institution_code", TAIPEI), ("national_id", &id)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (_, _, html) = app.get("/operator").await;
    assert!(html.contains("經辦人作業"), "{html}");
    assert!(!html.contains("/operator/token"), "{html}");
    let (status, _, html) = app.post_form("/operator/token", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert!(!html.contains("eyJ"), "{html}");
}

#[tokio::test]
async fn the_operator_home_gives_a_token_too() {
    let mut api = Api::with(
        Backend::Sqlite,
        web::WebConfig {
            operator_token_page: true,
            ..web::WebConfig::default()
        },
    )
    .await;
    api.register(TAIPEI, "gca-agency", "moica-admin").await;
    let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
    api.add_operator(&admin, "moica-operator-1", &["query"])
        .await;

    // 經辦人登入 on the pages, in a browser (cookie jar).
    let app = &mut api.app;
    let (_, _, html) = app.post_form("/operator/token", &[]).await;
    assert!(!html.contains("eyJ"), "no operator session, no token");
    let flow = app.start("operator_login").await;
    let id = id_of("moica-operator-1");
    let (status, _, body) = app
        .card_step(
            &flow,
            "moica-operator-1",
            &[("institution_code", TAIPEI), ("national_id", &id)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (_, _, html) = app.get("/operator").await;
    assert!(html.contains("action=\"/operator/token\""), "{html}");
    let (status, headers, html) = app.post_form("/operator/token", &[]).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(headers["cache-control"], "no-store");
    let token = html
        .split("aria-label=\"權杖\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap()
        .to_string();
    let now = api.app.clock.now();
    let claims = verify_independently(&api.jwks().await, &token, now);
    assert_eq!(claims["functions"], json!(["query"]));
    assert_eq!(api.introspect(&token).await["active"], true);

    let (status, _, _) = api.app.post_form("/operator/logout", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(api.introspect(&token).await["active"], false);
}

#[tokio::test]
async fn a_token_is_refused_after_the_operators_certificate_is_revoked() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let (_admin, _op, t) = api.operator_setup(&["enroll"]).await;
        let (s, v) = api.token(&t).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token = v["token"].as_str().unwrap().to_string();
        assert_eq!(api.introspect(&token).await["active"], true);

        // A newer MOICA CRL lists the operator's card and is put in force.
        let p = pki();
        let mut crls = p
            .crl_store(NOW - Duration::hours(1), NOW + Duration::days(30))
            .unwrap();
        let this_update = NOW - Duration::minutes(30);
        crls.add(&testpki::crl(
            p.ca(testpki::CaKind::Moica),
            &[(
                p.card("moica-operator-1").issued.serial().to_vec(),
                NOW - Duration::minutes(40),
            )],
            this_update,
            NOW + Duration::days(7),
            this_update.unix_timestamp() as u64,
            None,
        ))
        .unwrap();
        api.app.validator.replace_crls(crls);
        let ended = api.app.end_revoked_sessions().await;
        assert_eq!(ended, 1);

        // The token's session is gone: introspection says inactive, and no new token is issued.
        assert_eq!(api.introspect(&token).await, json!({ "active": false }));
        let (s, _) = api.token(&t).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn introspection_is_rate_limited_per_client() {
    let limits = web::security::Limits {
        introspections_per_client: 2,
        ..Default::default()
    };
    let config = web::WebConfig {
        limits,
        ..Default::default()
    };
    let mut api = Api::with(Backend::Sqlite, config).await;
    assert_eq!(api.introspect("not.a.token").await["active"], false);
    assert_eq!(api.introspect("not.a.token").await["active"], false);
    let answer = api
        .call(
            Method::POST,
            "/api/v1/introspect",
            None,
            Some(json!({ "token": "not.a.token" })),
        )
        .await;
    refused(answer, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // The next minute counts afresh.
    api.app.clock.advance(Duration::minutes(1));
    assert_eq!(api.introspect("not.a.token").await["active"], false);
}
