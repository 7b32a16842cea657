//! API tests of `/api/v1`: every requirement R1.1 … R5.1 with its success path and its refusals,
//! the security checks (replayed and misdirected proofs, IDOR, stale administrator sessions,
//! body limits, malformed JSON, missing bearer, CSRF on cookie requests) and the OpenAPI
//! document. Each test runs on SQLite and, when `TEST_DATABASE_URL` is set, on PostgreSQL.

use crate::helpers::*;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use domain::store::Store as _;
use domain::types::InstitutionCode;
use serde_json::{Value, json};

/// An API client over a test app: bearer tokens, JSON in and out.
struct Api {
    app: TestApp,
}

impl Api {
    async fn on(backend: Backend) -> Self {
        Self::with(backend, web::WebConfig::default()).await
    }

    /// `SCHOOL`, registered with the XCA school card, serves the IDOR and foreign-card tests.
    async fn with(backend: Backend, config: web::WebConfig) -> Self {
        let app = TestApp::on(backend, config).await;
        Self { app }
    }

    async fn raw(&mut self, req: Request<Body>) -> (StatusCode, Value) {
        let (status, headers, body) = self.app.send(req).await;
        if status != StatusCode::NO_CONTENT {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            assert!(ct.starts_with("application/json"), "{status}: {ct} {body}");
        }
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
        };
        (status, v)
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.raw(req).await
    }

    async fn get(&mut self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&mut self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// A new API session.
    async fn session(&mut self) -> String {
        let (status, v) = self
            .call(Method::POST, "/api/v1/sessions", None, None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    async fn start(&mut self, token: &str, kind: &str) -> String {
        let (status, v) = self
            .post(token, "/api/v1/flows", json!({ "kind": kind }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert_eq!(v["kind"], kind);
        v["id"].as_str().unwrap().to_string()
    }

    /// Starts a flow and agrees to the terms when it has them.
    async fn start_past_terms(&mut self, token: &str, kind: &str) -> String {
        let flow = self.start(token, kind).await;
        let (_, v) = self.get(token, &format!("/api/v1/flows/{flow}")).await;
        if v["step"] == "terms" {
            let (status, v) = self
                .post(token, &format!("/api/v1/flows/{flow}/terms"), json!({}))
                .await;
            assert_eq!(status, StatusCode::OK, "{v}");
        }
        flow
    }

    async fn challenge(&mut self, token: &str, flow: &str) -> (String, String) {
        let (status, v) = self
            .post(token, &format!("/api/v1/flows/{flow}/challenge"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        (
            v["challenge_id"].as_str().unwrap().to_string(),
            v["tbs"].as_str().unwrap().to_string(),
        )
    }

    /// What a client does for a card step: challenge, the card signs the TBS, the proof goes in.
    async fn card(
        &mut self,
        token: &str,
        flow: &str,
        card: &str,
        fields: Value,
    ) -> (StatusCode, Value) {
        let (challenge_id, tbs) = self.challenge(token, flow).await;
        let signature = self.app.sign(card, &tbs);
        self.submit(token, flow, &challenge_id, &signature, fields)
            .await
    }

    async fn submit(
        &mut self,
        token: &str,
        flow: &str,
        challenge_id: &str,
        signature: &str,
        fields: Value,
    ) -> (StatusCode, Value) {
        let mut body = json!({ "challenge_id": challenge_id, "signature": signature });
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.post(token, &format!("/api/v1/flows/{flow}/card"), body)
            .await
    }

    async fn org_step(
        &mut self,
        token: &str,
        flow: &str,
        card: &str,
        code: &str,
    ) -> (StatusCode, Value) {
        self.card(token, flow, card, json!({ "institution_code": code }))
            .await
    }

    async fn citizen_step(&mut self, token: &str, flow: &str, card: &str) -> (StatusCode, Value) {
        let id = id_of(card);
        self.card(token, flow, card, json!({ "national_id": id }))
            .await
    }

    async fn confirm(&mut self, token: &str, flow: &str, name: &str) -> (StatusCode, Value) {
        self.post(
            token,
            &format!("/api/v1/flows/{flow}/confirm"),
            json!({ "name": name, "email": "admin@example.gov.tw", "phone": "02-2345-6789",
                    "phone_ext": "123", "unit": "人事處", "title": "科員" }),
        )
        .await
    }

    /// F1 end to end: the agency `code` registered with `org` and `admin`.
    async fn register(&mut self, code: &str, org: &str, admin: &str) -> Value {
        let t = self.session().await;
        let flow = self.start_past_terms(&t, "first_registration").await;
        let (s, v) = self.org_step(&t, &flow, org, code).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = self.citizen_step(&t, &flow, admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = self.confirm(&t, &flow, &pki().card(admin).holder).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// F2's two card steps: a bearer session holding the administrator grant of `code`.
    async fn admin_login(&mut self, code: &str, org: &str, admin: &str) -> String {
        let t = self.session().await;
        let flow = self.start(&t, "admin_login").await;
        let (s, v) = self.org_step(&t, &flow, org, code).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = self.citizen_step(&t, &flow, admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({ "outcome": "admin", "code": code }));
        t
    }

    /// R2.4 with the operator's card read through the agent.
    async fn add_operator(&mut self, admin: &str, card: &str, functions: &[&str]) -> Value {
        let (s, v) = self
            .post(
                admin,
                "/api/v1/operators",
                json!({ "certificate": base64::engine::general_purpose::STANDARD.encode(&self.app.card(card).issued.cert_der), "national_id": id_of(card), "functions": functions }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// R5.1: a bearer session of the operator holding `card`.
    async fn operator_login(&mut self, code: &str, card: &str) -> (String, StatusCode, Value) {
        let t = self.session().await;
        let flow = self.start(&t, "operator_login").await;
        let (s, v) = self
            .card(
                &t,
                &flow,
                card,
                json!({ "institution_code": code, "national_id": id_of(card) }),
            )
            .await;
        (t, s, v)
    }
}

fn cert_b64(card: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(&pki().card(card).issued.cert_der)
}

#[track_caller]
fn refused(got: (StatusCode, Value), status: StatusCode, code: &str) -> Value {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
    got.1
}

// ---- F1 -------------------------------------------------------------------------------------

#[tokio::test]
async fn r1_1_terms_come_first_and_once() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start(&t, "first_registration").await;
        let (s, v) = api.get(&t, &format!("/api/v1/flows/{flow}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["step"], "terms");
        assert_eq!(v["data"]["mismatch"], false);
        // No card step before the terms.
        refused(
            api.post(&t, &format!("/api/v1/flows/{flow}/challenge"), json!({}))
                .await,
            StatusCode::CONFLICT,
            "wrong_step",
        );
        let (s, v) = api
            .post(&t, &format!("/api/v1/flows/{flow}/terms"), json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["step"], "org_card");
        refused(
            api.post(&t, &format!("/api/v1/flows/{flow}/terms"), json!({}))
                .await,
            StatusCode::CONFLICT,
            "wrong_step",
        );
        let flow = api.app.db.flow(&flow).await.unwrap().unwrap();
        assert_eq!(flow.data.terms_version.as_deref(), Some("2026-01"));
    }
}

#[tokio::test]
async fn r1_2_organization_card_and_its_refusals() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start_past_terms(&t, "first_registration").await;
        refused(
            api.org_step(&t, &flow, "gca-agency", "Z9999").await,
            StatusCode::NOT_FOUND,
            "unknown_agency",
        );
        let v = refused(
            api.org_step(&t, &flow, "gca-agency", "no!").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        );
        assert_eq!(v["field"], "institution_code");
        // A citizen card where the organization card belongs.
        refused(
            api.org_step(&t, &flow, "moica-admin", TAIPEI).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_role",
        );
        for (card, code) in [
            ("gca-agency-expired", "cert_expired"),
            ("gca-agency-revoked", "cert_revoked"),
            ("gca-agency-wrongku", "key_usage"),
        ] {
            refused(
                api.org_step(&t, &flow, card, TAIPEI).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                code,
            );
        }
        let (s, v) = api.org_step(&t, &flow, "gca-agency", TAIPEI).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({ "outcome": "advanced", "step": "admin_card" }));

        // Once registered, a first registration of the same agency points elsewhere.
        api.register(SCHOOL, "xca-school", "moica-admin2").await;
        let flow = api.start_past_terms(&t, "first_registration").await;
        let v = refused(
            api.org_step(&t, &flow, "xca-school", SCHOOL).await,
            StatusCode::CONFLICT,
            "already_registered",
        );
        assert!(v["message"].as_str().unwrap().contains("更換憑證"));
    }
}

/// The API's card steps are the pages' card steps: the same use case, so the same series in
/// `certreg_card_steps_total` (as the pages' count in `ops.rs`).
#[tokio::test]
async fn api_card_steps_are_counted_like_the_pages() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start_past_terms(&t, "first_registration").await;
        refused(
            api.org_step(&t, &flow, "gca-agency", "Z9999").await,
            StatusCode::NOT_FOUND,
            "unknown_agency",
        );
        let (s, v) = api.org_step(&t, &flow, "gca-agency", TAIPEI).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (_, _, text) = api.app.get("/metrics").await;
        for outcome in ["unknown_agency", "ok"] {
            let series = format!(
                "certreg_card_steps_total{{flow=\"first_registration\",step=\"org_card\",outcome=\"{outcome}\"}} 1"
            );
            assert!(text.lines().any(|l| l == series), "{series}\n{text}");
        }
    }
}

#[tokio::test]
async fn r1_3_mismatch_review_filed_then_pending() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start_past_terms(&t, "first_registration").await;
        let (s, v) = api
            .org_step(&t, &flow, "gca-agency-mismatch", MISMATCH)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["outcome"], "review_needed");
        assert_eq!(v["org"]["org_identifier"], testpki::GCA_MISMATCH_OID);
        assert!(v["message"].as_str().unwrap().contains("比對不符"));
        let (_, v) = api.get(&t, &format!("/api/v1/flows/{flow}")).await;
        assert_eq!(v["data"]["mismatch"], true);
        assert_eq!(v["data"]["code"], MISMATCH);

        let v = refused(
            api.post(
                &t,
                &format!("/api/v1/flows/{flow}/review"),
                json!({ "name": "", "phone": "0223456789" }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        );
        assert_eq!(v["field"], "applicant_name");
        let (s, v) = api
            .post(
                &t,
                &format!("/api/v1/flows/{flow}/review"),
                json!({ "name": "林小華", "phone": "0223456789" }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["state"], "pending");
        assert_eq!(v["switchboard"], "(02)27013411");
        // 新北市: 承保第一科.
        assert_eq!(v["section"], "承保第一科");
        assert_eq!(v["extension"], "5312");
        assert!(v["message"].as_str().unwrap().contains("次一營業日"));
        // The flow is over.
        refused(
            api.post(
                &t,
                &format!("/api/v1/flows/{flow}/review"),
                json!({ "name": "林小華", "phone": "0223456789" }),
            )
            .await,
            StatusCode::CONFLICT,
            "wrong_step",
        );

        // Until a reviewer decides, the same card gets the 圖3-7 message again.
        let flow = api.start_past_terms(&t, "first_registration").await;
        refused(
            api.org_step(&t, &flow, "gca-agency-mismatch", MISMATCH)
                .await,
            StatusCode::CONFLICT,
            "review_pending",
        );
        let (_, v) = api
            .get(&t, &format!("/api/v1/agencies/{MISMATCH}/receipts"))
            .await;
        assert_eq!(v["receipts"][0]["kind"], "review_application");
        assert_eq!(v["receipts"][0]["review_state"], "pending");
        assert_eq!(
            v["receipts"][0].get("terms_version"),
            None,
            "nothing accepted yet"
        );
    }
}

#[tokio::test]
async fn r1_4_administrator_card_and_id() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start_past_terms(&t, "first_registration").await;
        api.org_step(&t, &flow, "gca-agency", TAIPEI).await;
        // Checksum-valid, but another person's ID.
        refused(
            api.card(
                &t,
                &flow,
                "moica-admin",
                json!({ "national_id": id_of("moica-admin2") }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "id_mismatch",
        );
        let v = refused(
            api.card(
                &t,
                &flow,
                "moica-admin",
                json!({ "national_id": "A123456788" }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        );
        assert_eq!(v["field"], "national_id");
        refused(
            api.card(
                &t,
                &flow,
                "gca-agency",
                json!({ "national_id": id_of("moica-admin") }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_role",
        );
        let (s, v) = api.citizen_step(&t, &flow, "moica-admin").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({ "outcome": "advanced", "step": "confirm" }));
    }
}

#[tokio::test]
async fn r1_5_r1_6_confirmation_takes_effect_once() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start_past_terms(&t, "first_registration").await;
        api.org_step(&t, &flow, "gca-agency", TAIPEI).await;
        api.citizen_step(&t, &flow, "moica-admin").await;

        let (s, v) = api.get(&t, &format!("/api/v1/flows/{flow}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["step"], "confirm");
        let org = &pki().card("gca-agency").issued;
        assert_eq!(v["data"]["org"]["serial"], org.serial_hex());
        assert_eq!(v["data"]["org"]["org_identifier"], testpki::GCA_AGENCY_OID);
        assert_eq!(v["data"]["admin"]["name"], "王大明");
        assert!(
            !v.to_string().contains(&id_of("moica-admin")),
            "the national ID never leaves: {v}"
        );

        let v = refused(
            api.post(
                &t,
                &format!("/api/v1/flows/{flow}/confirm"),
                json!({ "name": "王大明", "email": "bad", "phone": "02-2345-6789" }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        );
        assert_eq!(v["field"], "email");
        // Nothing was written by the refusal.
        let (_, v) = api
            .get(&t, &format!("/api/v1/agencies/{TAIPEI}/receipts"))
            .await;
        assert_eq!(v["receipts"], json!([]));

        let (s, v) = api.confirm(&t, &flow, "王大明").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["flow"], "first_registration");
        assert_eq!(v["code"], TAIPEI);
        assert_eq!(v["org"]["serial"], org.serial_hex());
        assert_eq!(v["admin_card"]["name"], "王大明");
        assert_eq!(v["admin"]["email"], "admin@example.gov.tw");
        assert_eq!(v["admin"]["phone_ext"], "123");
        assert_eq!(v["version"], 1);
        assert!(!v.to_string().contains(&id_of("moica-admin")), "{v}");

        // Double submit: refused, one registration, one receipt.
        refused(
            api.confirm(&t, &flow, "王大明").await,
            StatusCode::CONFLICT,
            "already_confirmed",
        );
        let (_, v) = api.get(&t, &format!("/api/v1/flows/{flow}")).await;
        assert_eq!(v["step"], "done");
        let (_, v) = api
            .get(&t, &format!("/api/v1/agencies/{TAIPEI}/receipts"))
            .await;
        assert_eq!(v["receipts"].as_array().unwrap().len(), 1);
        assert_eq!(v["receipts"][0]["kind"], "first_registration");
        assert_eq!(v["receipts"][0]["label"], "首次註冊");
        assert_eq!(v["receipts"][0]["terms_version"], "2026-01");
    }
}

// ---- F2 -------------------------------------------------------------------------------------

#[tokio::test]
async fn r2_1_registered_organization_card_only() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start(&t, "admin_login").await;
        refused(
            api.org_step(&t, &flow, "gca-agency", TAIPEI).await,
            StatusCode::CONFLICT,
            "not_registered",
        );
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        api.register(SCHOOL, "xca-school", "moica-admin2").await;
        let v = refused(
            api.org_step(&t, &flow, "gca-agency-renewed", TAIPEI).await,
            StatusCode::CONFLICT,
            "org_card_changed",
        );
        assert_eq!(v["message"], "機關憑證已更換或展期，請先辦理更換機關憑證");
        // Another agency's (valid, registered) card.
        refused(
            api.org_step(&t, &flow, "xca-school", TAIPEI).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        refused(
            api.org_step(&t, &flow, "gca-agency", "Z9999").await,
            StatusCode::NOT_FOUND,
            "unknown_agency",
        );
        let (s, v) = api.org_step(&t, &flow, "gca-agency", TAIPEI).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["step"], "admin_card");
    }
}

#[tokio::test]
async fn r2_2_registered_administrator_card_gives_an_admin_session() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let t = api.session().await;
        let flow = api.start(&t, "admin_login").await;
        api.org_step(&t, &flow, "gca-agency", TAIPEI).await;
        refused(
            api.citizen_step(&t, &flow, "moica-admin2").await,
            StatusCode::FORBIDDEN,
            "not_administrator",
        );
        let v = refused(
            api.citizen_step(&t, &flow, "moica-admin-renewed").await,
            StatusCode::CONFLICT,
            "admin_card_changed",
        );
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("更換授權管理者自然人憑證")
        );
        // Before the grant, the operator list is closed.
        refused(
            api.get(&t, "/api/v1/operators").await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        let (s, v) = api.citizen_step(&t, &flow, "moica-admin").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({ "outcome": "admin", "code": TAIPEI }));
        let (s, v) = api.get(&t, "/api/v1/session").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!({ "kind": "admin", "code": TAIPEI }));
        let (s, _) = api.get(&t, "/api/v1/operators").await;
        assert_eq!(s, StatusCode::OK);
    }
}

#[tokio::test]
async fn r2_3_r2_4_operator_list_and_add() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let t = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let (s, v) = api.get(&t, "/api/v1/operators").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, json!({ "code": TAIPEI, "operators": [] }));

        // Read from the card (no PIN): serial and name come from the certificate.
        let op1 = api
            .add_operator(&t, "moica-operator-1", &["query", "enroll"])
            .await;
        assert_eq!(
            op1["serial"],
            pki().card("moica-operator-1").issued.serial_hex()
        );
        assert_eq!(op1["name"], "林志明");
        assert_eq!(op1["national_id"], "B12****008");
        assert_eq!(
            op1["functions"],
            json!([{ "id": "enroll", "label": "加保作業" }, { "id": "query", "label": "查詢作業" }])
        );
        // Typed (copied from R4.3), in any serial spelling.
        let serial = pki()
            .card("moica-operator-2")
            .issued
            .serial_hex()
            .to_lowercase();
        let (s, op2) = api
            .post(
                &t,
                "/api/v1/operators",
                json!({ "serial": format!("0x{serial}"), "name": "張淑芬",
                        "national_id": id_of("moica-operator-2"), "functions": ["premium"] }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{op2}");
        assert_eq!(op2["serial"], serial.to_uppercase());

        refused(
            api.post(
                &t,
                "/api/v1/operators",
                json!({ "certificate": cert_b64("moica-operator-1"),
                        "national_id": id_of("moica-operator-1"), "functions": ["query"] }),
            )
            .await,
            StatusCode::CONFLICT,
            "duplicate_operator",
        );
        refused(
            api.post(
                &t,
                "/api/v1/operators",
                json!({ "certificate": cert_b64("moica-bmp"),
                        "national_id": id_of("moica-operator-1"), "functions": ["query"] }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "id_mismatch",
        );
        for (body, field) in [
            (
                json!({ "certificate": cert_b64("moica-bmp"), "national_id": id_of("moica-bmp"), "functions": [] }),
                "functions",
            ),
            (
                json!({ "certificate": cert_b64("moica-bmp"), "national_id": id_of("moica-bmp"), "functions": ["launch"] }),
                "functions",
            ),
            (
                json!({ "serial": "xyz", "name": "某人", "national_id": id_of("moica-bmp"), "functions": ["query"] }),
                "serial",
            ),
            (
                json!({ "serial": "0A", "name": "某人", "national_id": "B120000009", "functions": ["query"] }),
                "national_id",
            ),
        ] {
            let v = refused(
                api.post(&t, "/api/v1/operators", body).await,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
            );
            assert_eq!(v["field"], field, "{v}");
        }

        let (_, v) = api.get(&t, "/api/v1/operators").await;
        let list = v["operators"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert!(!v.to_string().contains(&id_of("moica-operator-1")), "{v}");
        let (s, v) = api
            .get(&t, &format!("/api/v1/operators/{}", op1["id"]))
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, op1);
        refused(
            api.get(&t, "/api/v1/operators/999999").await,
            StatusCode::NOT_FOUND,
            "operator_not_found",
        );
        refused(
            api.get(&t, "/api/v1/operators/abc").await,
            StatusCode::NOT_FOUND,
            "operator_not_found",
        );
    }
}

#[tokio::test]
async fn r2_5_r2_6_operator_modify_delete_and_conflicts() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let t = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let op = api.add_operator(&t, "moica-operator-1", &["query"]).await;
        let id = op["id"].as_i64().unwrap();
        let version = op["version"].as_i64().unwrap();
        let path = format!("/api/v1/operators/{id}");

        // The card read again, the functions changed.
        let change = |version: i64, functions: Value| {
            json!({ "version": version, "certificate": cert_b64("moica-operator-1"),
                    "national_id": id_of("moica-operator-1"), "functions": functions })
        };
        let (s, v) = api
            .call(
                Method::PUT,
                &path,
                Some(&t),
                Some(change(version, json!(["enroll", "withdraw"]))),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["version"], version + 1);
        assert_eq!(v["functions"][1]["id"], "withdraw");

        // A second administrator tab still holding the old version.
        refused(
            api.call(
                Method::PUT,
                &path,
                Some(&t),
                Some(change(version, json!(["premium"]))),
            )
            .await,
            StatusCode::CONFLICT,
            "conflict",
        );
        refused(
            api.call(
                Method::DELETE,
                &format!("{path}?version={version}"),
                Some(&t),
                None,
            )
            .await,
            StatusCode::CONFLICT,
            "conflict",
        );
        refused(
            api.call(Method::DELETE, &path, Some(&t), None).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
        refused(
            api.call(
                Method::PUT,
                "/api/v1/operators/424242",
                Some(&t),
                Some(change(1, json!(["query"]))),
            )
            .await,
            StatusCode::NOT_FOUND,
            "operator_not_found",
        );
        // Modify onto a serial already granted to another operator.
        let other = api.add_operator(&t, "moica-operator-2", &["query"]).await;
        refused(
            api.call(
                Method::PUT,
                &format!("/api/v1/operators/{}", other["id"]),
                Some(&t),
                Some(json!({ "version": other["version"], "certificate": cert_b64("moica-operator-1"),
                             "national_id": id_of("moica-operator-1"), "functions": ["query"] })),
            )
            .await,
            StatusCode::CONFLICT,
            "duplicate_operator",
        );

        let (s, _) = api
            .call(
                Method::DELETE,
                &format!("{path}?version={}", version + 1),
                Some(&t),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        refused(
            api.get(&t, &path).await,
            StatusCode::NOT_FOUND,
            "operator_not_found",
        );
        let (_, v) = api.get(&t, "/api/v1/operators").await;
        assert_eq!(v["operators"].as_array().unwrap().len(), 1);
    }
}

// ---- F3 -------------------------------------------------------------------------------------

#[tokio::test]
async fn r3_1_replace_organization_card() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        api.add_operator(&admin, "moica-operator-1", &["query"])
            .await;

        let t = api.session().await;
        let flow = api.start_past_terms(&t, "replace_org").await;
        // The registered certificate is not a new one.
        refused(
            api.org_step(&t, &flow, "gca-agency", TAIPEI).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "same_certificate",
        );
        let (s, v) = api.org_step(&t, &flow, "gca-agency-renewed", TAIPEI).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["step"], "admin_card");
        refused(
            api.citizen_step(&t, &flow, "moica-admin2").await,
            StatusCode::FORBIDDEN,
            "not_administrator",
        );
        api.citizen_step(&t, &flow, "moica-admin").await;
        let (s, v) = api.confirm(&t, &flow, "王大明").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["flow"], "replace_org");
        assert_eq!(v["version"], 2);
        assert_eq!(
            v["org"]["serial"],
            pki().card("gca-agency-renewed").issued.serial_hex()
        );

        // The replaced card no longer opens F2; the new one does, and the operators are kept.
        let t2 = api.session().await;
        let f2 = api.start(&t2, "admin_login").await;
        refused(
            api.org_step(&t2, &f2, "gca-agency", TAIPEI).await,
            StatusCode::CONFLICT,
            "org_card_changed",
        );
        let admin = api
            .admin_login(TAIPEI, "gca-agency-renewed", "moica-admin")
            .await;
        let (_, v) = api.get(&admin, "/api/v1/operators").await;
        assert_eq!(v["operators"].as_array().unwrap().len(), 1);
        let (_, v) = api
            .get(&t, &format!("/api/v1/agencies/{TAIPEI}/receipts"))
            .await;
        assert_eq!(v["receipts"][0]["kind"], "replace_org");
    }
}

#[tokio::test]
async fn r3_2_replace_administrator_card() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let t = api.session().await;
        let flow = api.start_past_terms(&t, "replace_admin").await;
        refused(
            api.org_step(&t, &flow, "gca-agency-renewed", TAIPEI).await,
            StatusCode::CONFLICT,
            "org_card_changed",
        );
        api.org_step(&t, &flow, "gca-agency", TAIPEI).await;
        refused(
            api.citizen_step(&t, &flow, "moica-admin").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "same_certificate",
        );
        // A different person may take over.
        let (s, v) = api.citizen_step(&t, &flow, "moica-admin2").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = api.confirm(&t, &flow, "陳美玲").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["admin_card"]["name"], "陳美玲");
        assert_eq!(v["admin"]["name"], "陳美玲");
        api.admin_login(TAIPEI, "gca-agency", "moica-admin2").await;
        let (_, v) = api
            .get(&t, &format!("/api/v1/agencies/{TAIPEI}/receipts"))
            .await;
        assert_eq!(v["receipts"][0]["kind"], "replace_admin");
    }
}

#[tokio::test]
async fn r3_3_replace_both_cards() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let t = api.session().await;
        let flow = api.start_past_terms(&t, "replace_both").await;
        api.org_step(&t, &flow, "gca-agency-renewed", TAIPEI).await;
        let (s, v) = api.citizen_step(&t, &flow, "moica-admin-renewed").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["step"], "confirm");
        let (s, v) = api.confirm(&t, &flow, "王大明").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["flow"], "replace_both");
        assert_eq!(
            v["admin_card"]["serial"],
            pki().card("moica-admin-renewed").issued.serial_hex()
        );
        api.admin_login(TAIPEI, "gca-agency-renewed", "moica-admin-renewed")
            .await;
        let (_, v) = api
            .get(&t, &format!("/api/v1/agencies/{TAIPEI}/receipts"))
            .await;
        assert_eq!(
            v["receipts"][0]["label"],
            "更換機關憑證和更換授權管理者自然人憑證"
        );
    }
}

#[tokio::test]
async fn r3_4_new_card_goes_through_the_identifier_check() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start_past_terms(&t, "replace_org").await;
        refused(
            api.org_step(&t, &flow, "gca-agency", TAIPEI).await,
            StatusCode::CONFLICT,
            "not_registered",
        );
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        // A card whose identifier differs from the one on file: the review path of R1.3.
        let (s, v) = api.org_step(&t, &flow, "gca-agency-mismatch", TAIPEI).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["outcome"], "review_needed");
        let (s, v) = api
            .post(
                &t,
                &format!("/api/v1/flows/{flow}/review"),
                json!({ "name": "王大明", "phone": "0223456789" }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["section"], "承保第一科");
    }
}

// ---- F4 -------------------------------------------------------------------------------------

#[tokio::test]
async fn r4_1_receipts_query_is_impersonal_and_rate_limited() {
    for b in backends() {
        let limits = web::security::Limits {
            receipt_queries_per_client: 3,
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
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let t = api.session().await;
        let (s, v) = api
            .get(&t, &format!("/api/v1/agencies/{TAIPEI}/receipts"))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["name"], "臺北市政府人事處");
        assert_eq!(v["receipts"][0]["kind"], "first_registration");
        assert!(
            v["receipts"][0]["at"]
                .as_str()
                .unwrap()
                .starts_with("2026-06-01T")
        );
        assert!(!v.to_string().contains("王大明"), "nothing personal: {v}");
        refused(
            api.get(&t, "/api/v1/agencies/Z9999/receipts").await,
            StatusCode::NOT_FOUND,
            "unknown_agency",
        );
        refused(
            api.get(&t, "/api/v1/agencies/%21%21/receipts").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        );
        refused(
            api.get(&t, &format!("/api/v1/agencies/{TAIPEI}/receipts"))
                .await,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
        );
    }
}

#[tokio::test]
async fn r4_2_organization_oid_query() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start(&t, "query_org_oid").await;
        refused(
            api.org_step(&t, &flow, "gca-agency", "Z9999").await,
            StatusCode::NOT_FOUND,
            "unknown_agency",
        );
        refused(
            api.org_step(&t, &flow, "moica-admin", TAIPEI).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_role",
        );
        let (s, v) = api.org_step(&t, &flow, "gca-agency", TAIPEI).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["outcome"], "org_oid");
        assert_eq!(v["org_identifier"], testpki::GCA_AGENCY_OID);
        assert_eq!(v["matches"], true);
        assert_eq!(v["verdict"], "on_file");
        assert_eq!(v["agency_name"], "臺北市政府人事處");

        let flow = api.start(&t, "query_org_oid").await;
        let (_, v) = api
            .org_step(&t, &flow, "gca-agency-mismatch", MISMATCH)
            .await;
        assert_eq!(v["matches"], false);
        assert_eq!(v["verdict"], "mismatch");
        assert!(v["message"].as_str().unwrap().contains("將需審核"), "{v}");
        // Whether it matches, as the page shows; never the identifier on file.
        assert!(v.get("on_file").is_none(), "{v}");
        assert!(
            !v.to_string().contains("2.16.886.101.20003.20065.11111"),
            "{v}"
        );
        assert_eq!(v["org_identifier"], testpki::GCA_MISMATCH_OID);
    }
}

/// A start that asks for its challenge gets the first card step's challenge with the flow. It
/// is a challenge like any other: it proves the step once; a flow that starts at the terms
/// gets none; and it counts against the per-client challenge limit, refused with nothing
/// started.
#[tokio::test]
async fn a_start_can_bring_its_first_challenge() {
    for b in backends() {
        let limits = web::security::Limits {
            card_steps_per_client: 2,
            flows_per_session: 5,
            ..Default::default()
        };
        let config = web::WebConfig {
            limits,
            ..Default::default()
        };
        let mut api = Api::with(b, config).await;
        let t = api.session().await;
        let start = |kind: &str, challenge: bool| json!({ "kind": kind, "challenge": challenge });
        let (status, v) = api
            .post(&t, "/api/v1/flows", start("query_citizen_serial", true))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert_eq!(v["step"], "query_citizen_card");
        let flow = v["id"].as_str().unwrap().to_string();
        let challenge = v["challenge"]["challenge_id"].as_str().unwrap().to_string();
        let tbs = v["challenge"]["tbs"].as_str().unwrap().to_string();
        assert!(v["challenge"]["expires_at"].is_string(), "{v}");
        let signature = api.app.sign("moica-operator-1", &tbs);
        let id = json!({ "national_id": id_of("moica-operator-1") });
        let (status, v) = api
            .submit(&t, &flow, &challenge, &signature, id.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["outcome"], "citizen_serial", "{v}");
        // Once only, and for its own flow only.
        let (status, v) = api
            .post(&t, "/api/v1/flows", start("query_citizen_serial", false))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert!(v.get("challenge").is_none(), "not asked for: {v}");
        let other = v["id"].as_str().unwrap().to_string();
        for f in [&flow, &other] {
            let (status, v) = api.submit(&t, f, &challenge, &signature, id.clone()).await;
            assert!(status.is_client_error(), "{f}: {status} {v}");
        }
        // A flow that starts at the terms: no challenge, nothing counted.
        let (status, v) = api
            .post(&t, "/api/v1/flows", start("first_registration", true))
            .await;
        assert_eq!((status, &v["step"]), (StatusCode::CREATED, &json!("terms")));
        assert!(v.get("challenge").is_none(), "{v}");
        // The limit: the second challenge is the last; the third start is refused and starts
        // nothing (the session still has room for exactly one more flow).
        let (status, v) = api
            .post(&t, "/api/v1/flows", start("operator_login", true))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let (status, v) = api
            .post(&t, "/api/v1/flows", start("query_org_oid", true))
            .await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::TOO_MANY_REQUESTS, &json!("rate_limited"))
        );
        let (status, v) = api
            .post(&t, "/api/v1/flows", start("query_org_oid", false))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let (status, v) = api
            .post(&t, "/api/v1/flows", start("query_org_oid", false))
            .await;
        assert_eq!(
            (status, &v["code"]),
            (StatusCode::TOO_MANY_REQUESTS, &json!("too_many_flows"))
        );
    }
}

#[tokio::test]
async fn r4_3_citizen_serial_query() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start(&t, "query_citizen_serial").await;
        refused(
            api.card(
                &t,
                &flow,
                "moica-operator-1",
                json!({ "national_id": id_of("moica-operator-2") }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "id_mismatch",
        );
        refused(
            api.citizen_step(&t, &flow, "moica-revoked").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "cert_revoked",
        );
        // A raw PKCS#1 signature needs the certificate beside it.
        let (challenge, tbs) = api.challenge(&t, &flow).await;
        let issued = &pki().card("moica-operator-1").issued;
        let raw = pki::sig::sign_pkcs8(&issued.key.pkcs8_der, tbs.as_bytes()).unwrap();
        let raw = base64::engine::general_purpose::STANDARD.encode(raw);
        let id = json!({ "national_id": id_of("moica-operator-1") });
        refused(
            api.submit(&t, &flow, &challenge, &raw, id.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "proof_malformed",
        );
        let (challenge, tbs) = api.challenge(&t, &flow).await;
        let raw = pki::sig::sign_pkcs8(&issued.key.pkcs8_der, tbs.as_bytes()).unwrap();
        let mut fields = id;
        fields["certificate"] = json!(cert_b64("moica-operator-1"));
        let (s, v) = api
            .submit(
                &t,
                &flow,
                &challenge,
                &base64::engine::general_purpose::STANDARD.encode(raw),
                fields,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v,
            json!({ "outcome": "citizen_serial", "name": "林志明",
                    "serial": issued.serial_hex() })
        );
    }
}

// ---- F5 -------------------------------------------------------------------------------------

#[tokio::test]
async fn r5_1_operator_login_and_who_the_session_is() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let op = api
            .add_operator(&admin, "moica-operator-1", &["enroll", "query"])
            .await;

        let (t, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["outcome"], "operator");
        assert_eq!(v["code"], TAIPEI);
        assert_eq!(v["name"], "林志明");
        assert_eq!(v["functions"][0]["id"], "enroll");
        let (s, v) = api.get(&t, "/api/v1/session").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["kind"], "operator");
        assert_eq!(v["code"], TAIPEI);
        assert_eq!(
            v["operator"]["serial"],
            pki().card("moica-operator-1").issued.serial_hex()
        );
        assert_eq!(
            v["operator"]["functions"],
            json!([{ "id": "enroll", "label": "加保作業" }, { "id": "query", "label": "查詢作業" }])
        );
        // An operator session is no administrator session.
        refused(
            api.get(&t, "/api/v1/operators").await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );

        // What it may do is today's grant.
        let (s, _) = api
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
        assert_eq!(s, StatusCode::OK);
        let (_, v) = api.get(&t, "/api/v1/session").await;
        assert_eq!(
            v["operator"]["functions"],
            json!([{ "id": "premium", "label": "保費作業" }])
        );

        // Not granted here.
        let (_, s, v) = api.operator_login(TAIPEI, "moica-operator-2").await;
        let never = refused((s, v), StatusCode::FORBIDDEN, "not_operator");
        let (_, s, v) = api.operator_login("Z9999", "moica-operator-1").await;
        refused((s, v), StatusCode::NOT_FOUND, "unknown_agency");
        // Granted under the serial of an earlier card: the same refusal as for someone never
        // granted (whether an ID is an operator's here is not told), its message naming renewal.
        let (st, v) = api
            .post(
                &admin,
                "/api/v1/operators",
                json!({ "serial": pki().card("moica-bmp").issued.serial_hex(), "name": "張淑芬",
                        "national_id": id_of("moica-operator-2"), "functions": ["query"] }),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let (_, s, v) = api.operator_login(TAIPEI, "moica-operator-2").await;
        let v = refused((s, v), StatusCode::FORBIDDEN, "not_operator");
        assert_eq!(v, never);
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("請洽授權管理者修改憑證序號")
        );

        // Logout ends the token; deleting the operator ends what the session may do.
        let (s, _) = api
            .call(
                Method::DELETE,
                &format!(
                    "/api/v1/operators/{}?version={}",
                    op["id"],
                    op["version"].as_i64().unwrap() + 1
                ),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (_, v) = api.get(&t, "/api/v1/session").await;
        assert_eq!(v, json!({ "kind": "anonymous" }));
        let (s, _) = api
            .call(Method::DELETE, "/api/v1/sessions/current", Some(&t), None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        refused(
            api.get(&t, "/api/v1/session").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
}

// ---- security -------------------------------------------------------------------------------

#[tokio::test]
async fn security_no_bearer_or_a_dead_one_is_401() {
    for b in backends() {
        let mut api = Api::on(b).await;
        for (method, path) in [
            (Method::GET, "/api/v1/session"),
            (Method::POST, "/api/v1/flows"),
            (Method::GET, "/api/v1/operators"),
            (Method::GET, "/api/v1/agencies/A0001/receipts"),
        ] {
            refused(
                api.call(
                    method.clone(),
                    path,
                    None,
                    Some(json!({ "kind": "query_org_oid" })),
                )
                .await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
            refused(
                api.call(method, path, Some("0123abcd"), None).await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
        }
        let (_, headers, _) = api
            .app
            .send(Request::get("/api/v1/session").body(Body::empty()).unwrap())
            .await;
        assert!(
            headers
                .get_all(header::SET_COOKIE)
                .iter()
                .all(|c| c.to_str().unwrap().contains("Max-Age=0")),
            "an API refusal hands out no session cookie"
        );
        // Idle for more than 15 minutes.
        let t = api.session().await;
        assert_eq!(api.get(&t, "/api/v1/session").await.0, StatusCode::OK);
        api.app.clock.advance(time::Duration::minutes(16));
        refused(
            api.get(&t, "/api/v1/session").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
}

#[tokio::test]
async fn security_replayed_proof_is_refused() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start(&t, "query_citizen_serial").await;
        let (challenge, tbs) = api.challenge(&t, &flow).await;
        let proof = cms("moica-operator-1", &tbs);
        let id = json!({ "national_id": id_of("moica-operator-1") });
        let (s, v) = api.submit(&t, &flow, &challenge, &proof, id.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        // The same proof again, in a new flow of the same kind and session.
        let again = api.start(&t, "query_citizen_serial").await;
        refused(
            api.submit(&t, &flow, &challenge, &proof, id.clone()).await,
            StatusCode::CONFLICT,
            "wrong_step",
        );
        refused(
            api.submit(&t, &again, &challenge, &proof, id.clone()).await,
            StatusCode::GONE,
            "challenge_used",
        );
        // A refused submission spends its challenge too.
        let (challenge, tbs) = api.challenge(&t, &again).await;
        let wrong = json!({ "national_id": id_of("moica-operator-2") });
        refused(
            api.submit(
                &t,
                &again,
                &challenge,
                &cms("moica-operator-1", &tbs),
                wrong,
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "id_mismatch",
        );
        refused(
            api.submit(&t, &again, &challenge, &cms("moica-operator-1", &tbs), id)
                .await,
            StatusCode::GONE,
            "challenge_used",
        );
    }
}

#[tokio::test]
async fn security_proof_for_another_flow_step_or_origin_is_refused() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let id = json!({ "national_id": id_of("moica-operator-1") });
        let a = api.start(&t, "query_citizen_serial").await;
        let other = api.start(&t, "query_citizen_serial").await;

        // Flow A's challenge handed in to flow B.
        let (challenge_a, tbs_a) = api.challenge(&t, &a).await;
        refused(
            api.submit(
                &t,
                &other,
                &challenge_a,
                &cms("moica-operator-1", &tbs_a),
                id.clone(),
            )
            .await,
            StatusCode::GONE,
            "challenge_used",
        );
        // Flow A's signed TBS with flow B's own challenge.
        let (_, tbs_a) = api.challenge(&t, &a).await;
        let (challenge_b, _) = api.challenge(&t, &other).await;
        refused(
            api.submit(
                &t,
                &other,
                &challenge_b,
                &cms("moica-operator-1", &tbs_a),
                id.clone(),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "challenge_mismatch",
        );
        // Another session's flow does not exist for this one.
        let stranger = api.session().await;
        refused(
            api.get(&stranger, &format!("/api/v1/flows/{a}")).await,
            StatusCode::NOT_FOUND,
            "flow_not_found",
        );
        refused(
            api.post(
                &stranger,
                &format!("/api/v1/flows/{a}/challenge"),
                json!({}),
            )
            .await,
            StatusCode::NOT_FOUND,
            "flow_not_found",
        );

        // The right challenge, re-made for another origin or another step, then signed.
        for tamper in ["origin", "step"] {
            let (challenge, tbs) = api.challenge(&t, &a).await;
            let mut c = pki::challenge::Challenge::parse_tbs(tbs.as_bytes()).unwrap();
            match tamper {
                "origin" => c.origin = "https://evil.example".into(),
                _ => c.step = "query_org_card".into(),
            }
            refused(
                api.submit(
                    &t,
                    &a,
                    &challenge,
                    &cms("moica-operator-1", &c.tbs()),
                    id.clone(),
                )
                .await,
                StatusCode::UNPROCESSABLE_ENTITY,
                "challenge_mismatch",
            );
        }
        // Expired: five minutes is the limit.
        let (challenge, tbs) = api.challenge(&t, &a).await;
        api.app.clock.advance(time::Duration::minutes(6));
        let t_alive = api.get(&t, "/api/v1/session").await.0;
        assert_eq!(t_alive, StatusCode::OK);
        let v = refused(
            api.submit(&t, &a, &challenge, &cms("moica-operator-1", &tbs), id)
                .await,
            StatusCode::GONE,
            "challenge_expired",
        );
        assert!(v["message"].as_str().is_some());
    }
}

#[tokio::test]
async fn security_another_agencys_operator_ids_are_not_found() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        api.register(SCHOOL, "xca-school", "moica-admin2").await;
        let taipei = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let school = api.admin_login(SCHOOL, "xca-school", "moica-admin2").await;
        let theirs = api
            .add_operator(&school, "moica-operator-2", &["query"])
            .await;
        let path = format!("/api/v1/operators/{}", theirs["id"]);
        let version = theirs["version"].as_i64().unwrap();

        refused(
            api.get(&taipei, &path).await,
            StatusCode::NOT_FOUND,
            "operator_not_found",
        );
        refused(
            api.call(
                Method::PUT,
                &path,
                Some(&taipei),
                Some(
                    json!({ "version": version, "certificate": cert_b64("moica-operator-1"),
                             "national_id": id_of("moica-operator-1"), "functions": ["enroll"] }),
                ),
            )
            .await,
            StatusCode::NOT_FOUND,
            "operator_not_found",
        );
        refused(
            api.call(
                Method::DELETE,
                &format!("{path}?version={version}"),
                Some(&taipei),
                None,
            )
            .await,
            StatusCode::NOT_FOUND,
            "operator_not_found",
        );
        let (_, v) = api.get(&taipei, "/api/v1/operators").await;
        assert_eq!(v["operators"], json!([]));
        // Untouched for its own agency.
        let (s, v) = api.get(&school, &path).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v, theirs);
    }
}

#[tokio::test]
async fn security_administrator_session_after_a_replacement() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let other_tab = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let in_flight = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let same = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        // The record of a session whose request is still running while the replacement commits:
        // that request saves it again afterwards.
        let late_save = api
            .app
            .db
            .session_get(&store::session_key(&in_flight), NOW)
            .await
            .unwrap()
            .unwrap();

        // The administrator replaces the organization card in one of their own sessions.
        let flow = api.start_past_terms(&same, "replace_org").await;
        api.org_step(&same, &flow, "gca-agency-renewed", TAIPEI)
            .await;
        api.citizen_step(&same, &flow, "moica-admin").await;
        let (s, v) = api.confirm(&same, &flow, "王大明").await;
        assert_eq!(s, StatusCode::OK, "{v}");

        // The replacement ended every administrator session of the agency, the one that made
        // it included: the request that confirmed does not bring its own session back.
        refused(
            api.get(&same, "/api/v1/operators").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        refused(
            api.get(&same, "/api/v1/session").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        // The agency's other administrator sessions were ended with the replacement.
        refused(
            api.get(&other_tab, "/api/v1/operators").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        // A late request's save does not bring a session back…
        assert_eq!(
            api.app.db.session_update(&late_save).await.unwrap(),
            store::SessionSaved::Gone
        );
        refused(
            api.get(&in_flight, "/api/v1/operators").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        // …and were one written back anyway, its grant of the old registration is refused.
        api.app.db.session_insert(&late_save).await.unwrap();
        refused(
            api.get(&in_flight, "/api/v1/operators").await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        refused(
            api.post(
                &in_flight,
                "/api/v1/operators",
                json!({ "certificate": cert_b64("moica-operator-1"),
                        "national_id": id_of("moica-operator-1"), "functions": ["query"] }),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
}

#[tokio::test]
async fn spec_4_7_card_steps_are_rate_limited_per_client_and_per_code() {
    for b in backends() {
        let limits = web::security::Limits {
            card_steps_per_client: 4,
            card_steps_per_code: 1,
            ..Default::default()
        };
        let config = web::WebConfig {
            limits,
            ..Default::default()
        };
        let mut api = Api::with(b, config).await;
        let t = api.session().await;
        let flow = api.start(&t, "operator_login").await;
        let typed = |card: &str| json!({ "institution_code": TAIPEI, "national_id": id_of(card) });
        // A proof that does not verify is not counted against the agency.
        refused(
            api.card(&t, &flow, "gca-agency", typed("moica-operator-2"))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_role",
        );
        // A card that verified and was refused for the agency is.
        refused(
            api.card(&t, &flow, "moica-operator-2", typed("moica-operator-2"))
                .await,
            StatusCode::FORBIDDEN,
            "not_operator",
        );
        // The agency's budget of refusals is spent for this minute.
        refused(
            api.card(&t, &flow, "moica-operator-2", typed("moica-operator-2"))
                .await,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
        );
        api.challenge(&t, &flow).await;
        refused(
            api.post(&t, &format!("/api/v1/flows/{flow}/challenge"), json!({}))
                .await,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
        );
        // A new minute, a new budget.
        api.app.clock.advance(time::Duration::minutes(1));
        refused(
            api.card(&t, &flow, "moica-operator-2", typed("moica-operator-2"))
                .await,
            StatusCode::FORBIDDEN,
            "not_operator",
        );
    }
}

#[tokio::test]
async fn security_oversized_bodies_are_413() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        let flow = api.start(&t, "query_org_oid").await;
        let big = json!({ "challenge_id": "x", "signature": "a".repeat(300 * 1024) }).to_string();
        // Declared length over the limit, and a body that only turns out too large.
        for declared in [true, false] {
            let mut req = Request::post(format!("/api/v1/flows/{flow}/card"))
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .header(header::CONTENT_TYPE, "application/json");
            if declared {
                req = req.header(header::CONTENT_LENGTH, big.len());
            }
            let got = api.raw(req.body(Body::from(big.clone())).unwrap()).await;
            refused(got, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        }
    }
}

#[tokio::test]
async fn security_malformed_requests_are_400_in_the_api_shape() {
    for b in backends() {
        let mut api = Api::on(b).await;
        let t = api.session().await;
        for body in [
            r#"{"kind":"#,
            r#"{"kind": 5}"#,
            r#"{"kind": "launch_rockets"}"#,
            "[]",
        ] {
            let req = Request::post("/api/v1/flows")
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap();
            refused(api.raw(req).await, StatusCode::BAD_REQUEST, "bad_request");
        }
        let req = Request::post("/api/v1/flows")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .body(Body::from(r#"{"kind": "query_org_oid"}"#))
            .unwrap();
        refused(api.raw(req).await, StatusCode::BAD_REQUEST, "bad_request");
        let flow = api.start(&t, "query_org_oid").await;
        refused(
            api.post(
                &t,
                &format!("/api/v1/flows/{flow}/card"),
                json!({ "signature": "x" }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
        refused(
            api.get(&t, "/api/v1/no-such-thing").await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        refused(
            api.call(Method::PATCH, "/api/v1/flows", Some(&t), None)
                .await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        refused(
            api.get(&t, "/api/v1/flows/nope").await,
            StatusCode::NOT_FOUND,
            "flow_not_found",
        );
    }
}

#[tokio::test]
async fn security_cookie_requests_need_csrf_and_origin() {
    for b in backends() {
        let mut api = Api::on(b).await;
        // The pages' own script: a browser session (cookie, stored once a flow is started) and
        // its CSRF token.
        api.app.start("query_org_oid").await;
        let csrf = api.app.csrf().await;
        let post = |origin: Option<&str>, token: Option<&str>| {
            let mut req =
                Request::post("/api/v1/flows").header(header::CONTENT_TYPE, "application/json");
            if let Some(o) = origin {
                req = req.header(header::ORIGIN, o);
            }
            if let Some(t) = token {
                req = req.header("x-csrf-token", t);
            }
            req.body(Body::from(r#"{"kind": "query_org_oid"}"#))
                .unwrap()
        };
        refused(
            api.raw(post(Some(ORIGIN), None)).await,
            StatusCode::FORBIDDEN,
            "csrf",
        );
        refused(
            api.raw(post(Some("https://evil.example"), Some(&csrf)))
                .await,
            StatusCode::FORBIDDEN,
            "csrf",
        );
        refused(
            api.raw(post(None, Some(&csrf))).await,
            StatusCode::FORBIDDEN,
            "csrf",
        );
        let (s, v) = api.raw(post(Some(ORIGIN), Some(&csrf))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        // Reads need no token.
        let (s, v) = api
            .raw(Request::get("/api/v1/session").body(Body::empty()).unwrap())
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["kind"], "anonymous");
        // A bearer token sent with cookies gets no exemption.
        let t = api.session().await;
        refused(
            api.post(&t, "/api/v1/flows", json!({ "kind": "query_org_oid" }))
                .await,
            StatusCode::FORBIDDEN,
            "csrf",
        );
        api.app.forget_cookies();
        let (s, _) = api
            .post(&t, "/api/v1/flows", json!({ "kind": "query_org_oid" }))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
}

// ---- the OpenAPI document -------------------------------------------------------------------

/// Every route the API serves. A route added to the router without its documentation (or the
/// reverse) fails `openapi_document_lists_every_route`.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/sessions"),
    ("delete", "/api/v1/sessions/current"),
    ("get", "/api/v1/session"),
    ("post", "/api/v1/flows"),
    ("get", "/api/v1/flows/{id}"),
    ("post", "/api/v1/flows/{id}/terms"),
    ("post", "/api/v1/flows/{id}/challenge"),
    ("post", "/api/v1/flows/{id}/card"),
    ("post", "/api/v1/flows/{id}/review"),
    ("post", "/api/v1/flows/{id}/confirm"),
    ("get", "/api/v1/operators"),
    ("post", "/api/v1/operators"),
    ("get", "/api/v1/operators/{id}"),
    ("put", "/api/v1/operators/{id}"),
    ("delete", "/api/v1/operators/{id}"),
    ("get", "/api/v1/agencies/{code}/receipts"),
    ("post", "/api/v1/token"),
    ("post", "/api/v1/introspect"),
];

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let mut api = Api::on(Backend::Sqlite).await;
    let (status, v) = api
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        v["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        v["openapi"]
    );
    assert_eq!(v["info"]["title"], "certreg API");

    let mut documented = Vec::new();
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in v["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.push((method.clone(), path.clone()));
            let op_id = op["operationId"].as_str().unwrap();
            assert!(
                operation_ids.insert(op_id.to_string()),
                "operationId {op_id} repeats"
            );
            if let Some(params) = op["parameters"].as_array() {
                for p in params {
                    let name = format!("{{{}}}", p["name"].as_str().unwrap());
                    assert_eq!(
                        p["in"] == "path",
                        path.contains(&name),
                        "{method} {path} {p}"
                    );
                }
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}");
            // Every refusal is documented with the error shape.
            for (code, r) in responses {
                if code.starts_with('4') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ApiError",
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented, expected);

    let schemas = v["components"]["schemas"].as_object().unwrap();
    for name in [
        "ApiError",
        "StartFlow",
        "FlowState",
        "FlowView",
        "ChallengeView",
        "CardProof",
        "CardOutcome",
        "ReviewForm",
        "ReviewFiled",
        "ConfirmForm",
        "RegistrationView",
        "OperatorInput",
        "OperatorUpdate",
        "OperatorView",
        "OperatorList",
        "ReceiptList",
        "SessionToken",
        "SessionView",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert_eq!(schemas["ApiError"]["required"], json!(["code", "message"]));
    assert_eq!(
        v["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // And the router serves each of them (whatever it answers, it is not "no such route").
    let t = api.session().await;
    for (method, path) in ROUTES {
        let path = path.replace("{id}", "1").replace("{code}", TAIPEI);
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (_, v) = api.call(method.clone(), &path, Some(&t), None).await;
        assert!(
            v["code"] != "not_found" && v["code"] != "method_not_allowed",
            "{method} {path} is not served: {v}"
        );
    }
}

// The operator's token for other systems, driven with the `Api` client above.
#[path = "token.rs"]
mod token;

// Sessions under revocation, logout, login and concurrent requests.
#[path = "sessions.rs"]
mod sessions;

// Abuse by one client, and what an outsider may learn.
#[path = "abuse.rs"]
mod abuse;

// Sessions whose cards OCSP or a distribution point revokes.
#[path = "online.rs"]
mod online;

// ---- revocation awareness ---------------------------------------------------------------------

#[tokio::test]
async fn a_crl_revoking_an_operators_certificate_ends_its_session_and_flags_it() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let op = api
            .add_operator(&admin, "moica-operator-1", &["enroll"])
            .await;
        let (t, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (t2, s, v) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_eq!(s, StatusCode::OK, "{v}");

        // Nothing revoked yet: nothing ends, nothing is flagged.
        let ended = api.app.end_revoked_sessions().await;
        assert_eq!(ended, 0);
        let page = api.page(&admin, "/admin/operators").await;
        assert!(!page.contains("憑證已廢止"), "{page}");

        // A newer MOICA CRL lists the operator's card.
        let p = pki();
        let mut crls = p
            .crl_store(
                NOW - time::Duration::hours(1),
                NOW + time::Duration::days(30),
            )
            .unwrap();
        let this_update = NOW - time::Duration::minutes(30);
        crls.add(&testpki::crl(
            p.ca(testpki::CaKind::Moica),
            &[(
                p.card("moica-operator-1").issued.serial().to_vec(),
                NOW - time::Duration::minutes(40),
            )],
            this_update,
            NOW + time::Duration::days(7),
            this_update.unix_timestamp() as u64,
            None,
        ))
        .unwrap();
        api.app.validator.replace_crls(crls);
        let ended = api.app.end_revoked_sessions().await;
        assert_eq!(ended, 2, "both sessions of that operator");

        // The session record is gone: its bearer token names no session any more.
        for token in [&t, &t2] {
            refused(
                api.get(token, "/api/v1/session").await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
        }
        // The administrator's session goes on, and the list shows the flag on that operator.
        let page = api.page(&admin, "/admin/operators").await;
        assert!(page.contains("憑證已廢止"), "{page}");
        assert_eq!(page.matches("憑證已廢止").count(), 1, "{page}");
        assert!(page.contains(&p.card("moica-operator-1").issued.serial_hex()));
        assert_eq!(op["name"], "林志明");
        // And the card no longer logs in.
        let (_, s, _) = api.operator_login(TAIPEI, "moica-operator-1").await;
        assert_ne!(s, StatusCode::OK);
    }
}

/// An operator added with the certificate read from the card keeps its issuer and notAfter and
/// is flagged 60 days before it expires; a typed serial keeps neither and is never flagged for
/// expiry. A modification with the same typed serial keeps what is on file, another serial
/// drops it.
#[tokio::test]
async fn an_operator_added_by_its_read_certificate_is_flagged_before_it_expires() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let admin = api.admin_login(TAIPEI, "gca-agency", "moica-admin").await;
        let read = api
            .add_operator(&admin, "moica-operator-1", &["enroll"])
            .await;
        let (s, typed) = api
            .post(
                &admin,
                "/api/v1/operators",
                json!({ "serial": "ABCDEF0123", "name": "陳小明",
                        "national_id": id_of("moica-operator-2"), "functions": ["query"] }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{typed}");

        let code = InstitutionCode::parse(TAIPEI).unwrap();
        let card = &pki().card("moica-operator-1").issued;
        let not_after = card.spec.not_after;
        let ops = api.app.db.operators(&code).await.unwrap();
        let by_id = |ops: &[domain::model::Operator], id: &Value| {
            ops.iter()
                .find(|o| o.id == id.as_i64().unwrap())
                .unwrap()
                .clone()
        };
        let cert = by_id(&ops, &read["id"])
            .cert
            .expect("kept from the read card");
        assert_eq!(cert.not_after, not_after);
        assert!(!cert.issuer.is_empty());
        assert_eq!(by_id(&ops, &typed["id"]).cert, None);

        // Nothing today; 30 days before notAfter only the read operator is flagged.
        let validator = api.app.validator.clone();
        let report = |at, ops: &[domain::model::Operator]| {
            domain::expiry::expiry_report(at, &validator, &[], ops)
        };
        assert!(report(NOW, &ops).is_empty());
        let later = not_after - time::Duration::days(30);
        let flags = report(later, &ops);
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_eq!(
            flags[0].holder,
            domain::expiry::FlagHolder::Operator {
                id: read["id"].as_i64().unwrap()
            }
        );
        assert_eq!(flags[0].issuer.as_deref(), Some(cert.issuer.as_str()));
        assert_eq!(
            flags[0].badge_zh(later),
            format!("憑證將於 {} 到期", domain::expiry::taipei_date(not_after))
        );

        // Modified with the same serial typed: still known. With another serial: unknown.
        let put = |serial: String, version: &Value| {
            json!({ "version": version, "serial": serial, "name": "林志明",
                    "national_id": id_of("moica-operator-1"), "functions": ["premium"] })
        };
        let path = format!("/api/v1/operators/{}", read["id"]);
        let (s, v) = api
            .call(
                Method::PUT,
                &path,
                Some(&admin),
                Some(put(card.serial_hex(), &read["version"])),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let ops = api.app.db.operators(&code).await.unwrap();
        assert_eq!(by_id(&ops, &read["id"]).cert, Some(cert.clone()));
        assert_eq!(report(later, &ops).len(), 1);
        let (s, v) = api
            .call(
                Method::PUT,
                &path,
                Some(&admin),
                Some(put("0123456789AB".into(), &v["version"])),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let ops = api.app.db.operators(&code).await.unwrap();
        assert_eq!(by_id(&ops, &read["id"]).cert, None);
        assert!(report(later, &ops).is_empty());
    }
}

impl Api {
    /// A page (HTML) with the bearer session `token`.
    async fn page(&mut self, token: &str, path: &str) -> String {
        let req = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = self.app.send(req).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }
}

/// A local SMTP sink for one message: answers just enough SMTP and hands back the envelope
/// recipient and the DATA text.
async fn smtp_sink() -> (u16, tokio::task::JoinHandle<(String, String)>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
        let (mut rcpt, mut data) = (String::new(), String::new());
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    w.write_all(b"250 queued\r\n").await.unwrap();
                } else {
                    data.push_str(&line);
                }
                continue;
            }
            let upper = line.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-sink\r\n250 8BITMIME\r\n"
            } else if upper.starts_with("RCPT TO:") {
                rcpt = line[8..].trim().trim_matches(['<', '>']).to_string();
                b"250 ok\r\n"
            } else if upper.starts_with("DATA") {
                in_data = true;
                b"354 go ahead\r\n"
            } else if upper.starts_with("QUIT") {
                w.write_all(b"221 bye\r\n").await.unwrap();
                break;
            } else {
                b"250 ok\r\n"
            };
            w.write_all(reply).await.unwrap();
        }
        (rcpt, data)
    });
    (port, task)
}

/// The subject (RFC 2047 words) and body (base64) of a message as the sink captured it.
fn decode_mail(data: &str) -> (String, String) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (head, body) = data.split_once("\r\n\r\n").unwrap();
    let unfolded = head.replace("\r\n ", " ");
    let subject_line = unfolded
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap();
    let mut subject = Vec::new();
    for word in subject_line.split(' ') {
        // RFC 2047: the charset and the encoding are case-insensitive.
        let inner = word
            .get(..10)
            .filter(|p| p.eq_ignore_ascii_case("=?UTF-8?B?"))
            .and_then(|_| word[10..].strip_suffix("?="))
            .unwrap();
        subject.extend(b64.decode(inner).unwrap());
    }
    let body: String = body.lines().collect();
    (
        String::from_utf8(subject).unwrap(),
        String::from_utf8(b64.decode(body).unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn an_expiring_administrator_certificate_is_mailed_to_the_administrator_once_a_day() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let code = InstitutionCode::parse(TAIPEI).unwrap();
        let registration = api.app.db.registration(&code).await.unwrap().unwrap();
        let (port, sink) = smtp_sink().await;
        let mailer = web::mail::Mailer::Smtp(web::mail::SmtpConfig::new(
            "127.0.0.1",
            port,
            "certreg@example.gov.tw",
        ));
        let validator = api.app.validator.clone();

        // Two years of validity left: nothing to say.
        let n = domain::notices::notify_once(&api.app.db, &validator, NOW, &mailer)
            .await
            .unwrap();
        assert_eq!(n, 0);

        // Thirty days before the administrator's card expires. The mail server is down at
        // first: the notice is not marked sent, and goes out on the next walk.
        let not_after = registration.admin_card.cert.not_after;
        let later = not_after - time::Duration::days(30);
        let down = web::mail::Mailer::Smtp(web::mail::SmtpConfig::new(
            "127.0.0.1",
            closed_port().await,
            "certreg@example.gov.tw",
        ));
        let n = domain::notices::notify_once(&api.app.db, &validator, later, &down)
            .await
            .unwrap();
        assert_eq!(n, 0);
        let n = domain::notices::notify_once(&api.app.db, &validator, later, &mailer)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let (rcpt, data) = sink.await.unwrap();
        assert_eq!(rcpt, "admin@example.gov.tw");
        assert!(data.contains("To: admin@example.gov.tw\r\n"), "{data}");
        let (subject, body) = decode_mail(&data);
        assert_eq!(subject, format!("憑證到期／廢止通知（機關代號 {TAIPEI}）"));
        let date = domain::expiry::taipei_date(not_after);
        assert!(
            body.contains(&format!(
                "授權管理者自然人憑證（憑證序號 {}）：憑證將於 {date} 到期",
                registration.admin_card.cert.serial.as_str()
            )),
            "{body}"
        );
        assert!(
            body.contains(&registration.admin.name.as_str().to_string()),
            "{body}"
        );

        // Once per certificate per day, whatever the process: another instance on the same
        // database (its own pool) sends nothing more the same day (no sink listens).
        let other = store::Db::connect(&api.app.db_url, &api.app.secrets)
            .await
            .unwrap();
        let n = domain::notices::notify_once(&other, &validator, later, &mailer)
            .await
            .unwrap();
        assert_eq!(n, 0);
        let n = domain::notices::notify_once(&api.app.db, &validator, later, &mailer)
            .await
            .unwrap();
        assert_eq!(n, 0);
        // The next day it is said again.
        let (port, sink) = smtp_sink().await;
        let mailer = web::mail::Mailer::Smtp(web::mail::SmtpConfig::new(
            "127.0.0.1",
            port,
            "certreg@example.gov.tw",
        ));
        let next_day = later + time::Duration::days(1);
        let n = domain::notices::notify_once(&other, &validator, next_day, &mailer)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(sink.await.unwrap().0, "admin@example.gov.tw");
        other.close().await;
    }
}

/// SQL run on the app's database outside the store, one connection, statement after statement.
async fn run_sql(app: &TestApp, statements: &[&'static str]) {
    testkit::outside::exec(&app.db_url, &statements.join(";\n")).await;
}

#[tokio::test]
async fn one_agency_that_cannot_be_read_does_not_stop_the_notices_of_the_others() {
    for b in backends() {
        let mut api = Api::on(b).await;
        api.register(TAIPEI, "gca-agency", "moica-admin").await;
        let code = InstitutionCode::parse(TAIPEI).unwrap();
        let registration = api.app.db.registration(&code).await.unwrap().unwrap();
        // An agency walked first whose stored administrator ID no longer decrypts.
        run_sql(
            &api.app,
            &[
                "INSERT INTO agencies (code, name, county) VALUES ('A0000', '測試機關', '臺北市')",
                "CREATE TEMPORARY TABLE broken AS SELECT * FROM registrations WHERE code = 'A0001'",
                "UPDATE broken SET code = 'A0000', admin_id_enc = 'not a ciphertext'",
                "INSERT INTO registrations SELECT * FROM broken",
            ],
        )
        .await;
        assert!(
            api.app
                .db
                .registration(&InstitutionCode::parse("A0000").unwrap())
                .await
                .is_err()
        );
        let (port, sink) = smtp_sink().await;
        let mailer = web::mail::Mailer::Smtp(web::mail::SmtpConfig::new(
            "127.0.0.1",
            port,
            "certreg@example.gov.tw",
        ));
        let later = registration.admin_card.cert.not_after - time::Duration::days(30);
        let n = domain::notices::notify_once(&api.app.db, &api.app.validator, later, &mailer)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let (rcpt, data) = sink.await.unwrap();
        assert_eq!(rcpt, "admin@example.gov.tw");
        assert!(decode_mail(&data).0.contains(TAIPEI));
    }
}

/// A loopback port with nothing listening.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}
