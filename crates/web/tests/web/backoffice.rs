//! Page tests of the back office (F6): the reviewer's citizen-card login, the review queue of
//! the reviewer's section, 核准 / 駁回 and what they mean for the agency's next registration, and
//! the separation of reviewer and agency sessions.

use crate::helpers::*;
use axum::http::{HeaderMap, StatusCode};
use domain::model::Section;
use domain::store::Store as _;
use domain::types::cert_serial;
use time::macros::datetime;

const CONTACT: [(&str, &str); 7] = [
    ("name", "王大明"),
    ("email", "admin@example.gov.tw"),
    ("phone", "02-2345-6789"),
    ("phone_ext", ""),
    ("mobile", ""),
    ("unit", ""),
    ("title", ""),
];

/// A central agency's code, not one of the seeded agencies.
const CENTRAL: &str = "A0009";

fn serial_of(card: &str) -> domain::types::CertSerial {
    cert_serial("serial", &pki().card(card).issued.serial_hex()).unwrap()
}

/// A reviewer account for `moica-reviewer` (as `certreg staff add` makes it).
async fn add_reviewer(app: &TestApp, section: Section) -> i64 {
    app.db
        .add_reviewer("李建國", section, &serial_of("moica-reviewer"))
        .await
        .unwrap()
}

/// 本部審核人員登入 with `card`: the card step's answer.
async fn reviewer_login(app: &mut TestApp, card: &str) -> (StatusCode, HeaderMap, String) {
    let (status, headers, _) = app.get("/backoffice/login").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/flows/new/reviewer_login");
    let flow = app.start("reviewer_login").await;
    let (status, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("本部審核人員登入")
            && !html.contains("name=\"national_id\"")
            && !html.contains("/flows/new/first_registration"),
        "the reviewer's card step, without the agency menu: {html}"
    );
    app.card_step(&flow, card, &[]).await
}

/// 首次註冊 up to the organization card step with `org` for `code`: the step's answer.
async fn org_step(app: &mut TestApp, org: &str, code: &str) -> (String, StatusCode, String) {
    let flow = app.start("first_registration").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    let (status, _, body) = app
        .card_step(&flow, org, &[("institution_code", code)])
        .await;
    (flow, status, body)
}

/// Files a mismatch review application (R1.3) in a browser of its own.
async fn file_review(app: &mut TestApp, org: &str, code: &str) {
    app.forget_cookies();
    let (flow, status, body) = org_step(app, org, code).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (_, headers, body) = app
        .post_form(
            &format!("/flows/{flow}/review"),
            &[("name", "林小華"), ("phone", "0223456789")],
        )
        .await;
    assert_eq!(
        location(&headers),
        format!("/flows/{flow}/result"),
        "{body}"
    );
    app.forget_cookies();
}

/// The application ids of an agency, newest first.
async fn review_ids(app: &TestApp, code: &str) -> Vec<i64> {
    let code = domain::types::InstitutionCode::parse(code).unwrap();
    app.db
        .reviews(&code)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

#[tokio::test]
async fn r6_1_reviewer_login_by_citizen_card() {
    let mut app = TestApp::default().await;
    add_reviewer(&app, Section::First).await;
    let (status, headers, body) = reviewer_login(&mut app, "moica-reviewer").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location(&headers), "/backoffice/reviews");
    let (status, _, html) = app.get("/backoffice/reviews").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("審核人員 李建國（承保第一科）") && html.contains("待審核申請"),
        "{html}"
    );
    assert!(
        !html.contains("/flows/new/first_registration"),
        "no agency menu"
    );
    // Every queue view is audited.
    let events = app.audit().await;
    assert!(
        events
            .iter()
            .any(|(_, e)| e.action == "backoffice.search" && e.actor.starts_with("reviewer:"))
    );
    assert!(events.iter().any(|(_, e)| e.action == "reviewer.login"));
}

#[tokio::test]
async fn r6_1_a_card_without_a_reviewer_account_is_refused() {
    let mut app = TestApp::default().await;
    add_reviewer(&app, Section::First).await;
    let (status, _, html) = reviewer_login(&mut app, "moica-operator-1").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        html.contains("此自然人憑證未建立本部審核人員帳號"),
        "{html}"
    );
    let (status, headers, _) = app.get("/backoffice/reviews").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/backoffice/login");
}

#[tokio::test]
async fn r6_1_a_disabled_reviewer_is_refused_and_loses_the_session() {
    let mut app = TestApp::default().await;
    let id = add_reviewer(&app, Section::First).await;
    let (status, _, _) = reviewer_login(&mut app, "moica-reviewer").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    app.db.set_reviewer_active(id, false).await.unwrap();
    // A session made before the account was disabled ends at its next page.
    let (status, _, html) = app.get("/backoffice/reviews").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("帳號已停用"), "{html}");
    let (status, _, html) = reviewer_login(&mut app, "moica-reviewer").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        html.contains("此自然人憑證未建立本部審核人員帳號"),
        "{html}"
    );
}

#[tokio::test]
async fn r6_2_the_queue_shows_only_the_reviewers_section() {
    let mut app = TestApp::default().await;
    // 臺北市 → 承保第一科; 臺中市 → 承保第二科.
    file_review(&mut app, "gca-agency-mismatch", TAIPEI).await;
    file_review(&mut app, "gca-agency", HOSPITAL).await;
    let taipei = review_ids(&app, TAIPEI).await[0];
    let taichung = review_ids(&app, HOSPITAL).await[0];

    let id = add_reviewer(&app, Section::First).await;
    reviewer_login(&mut app, "moica-reviewer").await;
    let (_, _, html) = app.get("/backoffice/reviews").await;
    assert!(
        html.contains(TAIPEI)
            && html.contains("臺北市政府人事處")
            && html.contains("林小華")
            && html.contains("0223456789")
            && html.contains(testpki::GCA_AGENCY_OID),
        "{html}"
    );
    assert!(!html.contains(HOSPITAL), "{html}");
    let (status, _, html) = app.get(&format!("/backoffice/reviews/{taipei}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("核准") && html.contains("駁回") && html.contains("備註"));
    // The other section's application is as unknown as one nobody filed.
    let (status, _, _) = app.get(&format!("/backoffice/reviews/{taichung}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = app
        .post_form(
            &format!("/backoffice/reviews/{taichung}"),
            &[("decision", "approve"), ("note", "")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = app.get("/backoffice/reviews/99999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The second section sees the other one.
    app.db.set_reviewer_active(id, false).await.unwrap();
    app.forget_cookies();
    app.db
        .add_reviewer("張審核", Section::Second, &serial_of("moica-admin2"))
        .await
        .unwrap();
    let (status, _, body) = reviewer_login(&mut app, "moica-admin2").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (_, _, html) = app.get("/backoffice/reviews").await;
    assert!(
        html.contains(HOSPITAL) && html.contains("承保第二科") && !html.contains(TAIPEI),
        "{html}"
    );
}

#[tokio::test]
async fn r6_2_an_agency_no_section_is_in_charge_of_is_in_every_queue() {
    let mut app = TestApp::default().await;
    // A central agency: its county names no region of the contact directory.
    let central = domain::model::Agency {
        code: domain::types::InstitutionCode::parse(CENTRAL).unwrap(),
        name: "中央測試署".into(),
        county: "中央".into(),
        org_identifier: None,
    };
    app.db.upsert_agencies(&[central]).await.unwrap();
    file_review(&mut app, "gca-agency", CENTRAL).await;
    let id = review_ids(&app, CENTRAL).await[0];

    let first = add_reviewer(&app, Section::First).await;
    reviewer_login(&mut app, "moica-reviewer").await;
    let (_, _, html) = app.get("/backoffice/reviews").await;
    assert!(
        html.contains(CENTRAL) && html.contains("中央（未屬任一科，各科皆可審核）"),
        "{html}"
    );
    app.db.set_reviewer_active(first, false).await.unwrap();
    app.forget_cookies();
    app.db
        .add_reviewer("張審核", Section::Second, &serial_of("moica-admin2"))
        .await
        .unwrap();
    reviewer_login(&mut app, "moica-admin2").await;
    let (_, _, html) = app.get("/backoffice/reviews").await;
    assert!(html.contains(CENTRAL), "{html}");
    let (status, headers, _) = app
        .post_form(
            &format!("/backoffice/reviews/{id}"),
            &[("decision", "reject"), ("note", "查無此機關資料")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, html) = app.get(&location(&headers)).await;
    assert!(html.contains("已駁回"), "{html}");
}

#[tokio::test]
async fn r6_2_approval_takes_effect_on_the_next_business_day() {
    let mut app = TestApp::default().await;
    file_review(&mut app, "gca-agency", MISMATCH).await;
    let id = review_ids(&app, MISMATCH).await[0];
    // The section in charge of 新北市.
    add_reviewer(&app, Section::First).await;
    reviewer_login(&mut app, "moica-reviewer").await;
    let (status, headers, _) = app
        .post_form(
            &format!("/backoffice/reviews/{id}"),
            &[("decision", "approve"), ("note", "已電話確認")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), format!("/backoffice/reviews/{id}"));
    // 2026-06-01 is a Monday: effective the next day.
    let (_, _, html) = app.get(&location(&headers)).await;
    assert!(html.contains("已核准，生效日 2026/06/02"), "{html}");
    // Shown once (PRG), and no second decision.
    let (_, _, html) = app.get(&format!("/backoffice/reviews/{id}")).await;
    assert!(!html.contains("已核准，生效日") && !html.contains("name=\"decision\""));
    let (status, _, _) = app
        .post_form(
            &format!("/backoffice/reviews/{id}"),
            &[("decision", "reject"), ("note", "")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, _, html) = app.get("/backoffice/reviews?state=decided").await;
    assert!(
        html.contains("核准（生效日 2026/06/02）") && html.contains("已電話確認"),
        "{html}"
    );
    let (_, _, html) = app.get("/backoffice/reviews").await;
    assert!(!html.contains(MISMATCH), "no longer pending: {html}");

    // The same day: not yet.
    app.forget_cookies();
    let (_, status, html) = org_step(&mut app, "gca-agency", MISMATCH).await;
    assert_eq!(status, StatusCode::CONFLICT, "{html}");
    assert!(html.contains("請於 2026/06/02 起重新辦理註冊"), "{html}");
    assert!(html.contains("(02)27013411"), "{html}");
    // On the effective date: the card is accepted and the flow goes on.
    app.clock.set(datetime!(2026-06-02 01:00 UTC));
    app.forget_cookies();
    let (flow, status, body) = org_step(&mut app, "gca-agency", MISMATCH).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let id = id_of("moica-admin");
    let (status, _, body) = app
        .card_step(&flow, "moica-admin", &[("national_id", &id)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (_, headers, body) = app
        .post_form(&format!("/flows/{flow}/confirm"), &CONTACT)
        .await;
    assert_eq!(
        location(&headers),
        format!("/flows/{flow}/result"),
        "{body}"
    );
}

#[tokio::test]
async fn r6_2_after_a_rejection_the_agency_may_apply_again() {
    let mut app = TestApp::default().await;
    file_review(&mut app, "gca-agency", MISMATCH).await;
    let id = review_ids(&app, MISMATCH).await[0];
    // The section in charge of 新北市.
    add_reviewer(&app, Section::First).await;
    reviewer_login(&mut app, "moica-reviewer").await;
    let (_, headers, _) = app
        .post_form(
            &format!("/backoffice/reviews/{id}"),
            &[("decision", "reject"), ("note", "識別碼不符")],
        )
        .await;
    let (_, _, html) = app.get(&location(&headers)).await;
    assert!(html.contains("已駁回"), "{html}");
    // A new application for the same card.
    file_review(&mut app, "gca-agency", MISMATCH).await;
    assert_eq!(review_ids(&app, MISMATCH).await.len(), 2);
}

#[tokio::test]
async fn spec_4_7_reviewer_and_agency_sessions_are_kept_apart() {
    let mut app = TestApp::default().await;
    // Anonymous: the back office's login only.
    let (status, headers, _) = app.get("/backoffice/reviews").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/backoffice/login");

    // An administrator cannot reach the back office.
    let (flow, status, body) = org_step(&mut app, "gca-agency", TAIPEI).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let nid = id_of("moica-admin");
    app.card_step(&flow, "moica-admin", &[("national_id", &nid)])
        .await;
    app.post_form(&format!("/flows/{flow}/confirm"), &CONTACT)
        .await;
    let flow = app.start("admin_login").await;
    app.card_step(&flow, "gca-agency", &[("institution_code", TAIPEI)])
        .await;
    let (_, headers, _) = app
        .card_step(&flow, "moica-admin", &[("national_id", &nid)])
        .await;
    assert_eq!(location(&headers), "/admin/operators");
    for path in ["/backoffice/reviews", "/backoffice/reviews/1"] {
        let (status, _, html) = app.get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(html.contains("此功能僅限本部審核人員使用"), "{html}");
    }
    let (status, _, _) = app
        .post_form("/backoffice/reviews/1", &[("decision", "approve")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Nor can an operator.
    let serial = pki().card("moica-operator-1").issued.serial_hex();
    let op_id = id_of("moica-operator-1");
    let (status, _, body) = app
        .post_form(
            "/admin/operators",
            &[
                ("serial", serial.as_str()),
                ("name", "林志明"),
                ("national_id", op_id.as_str()),
                ("certificate", ""),
                ("functions", "enroll"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    app.forget_cookies();
    let flow = app.start("operator_login").await;
    let (_, headers, body) = app
        .card_step(
            &flow,
            "moica-operator-1",
            &[("institution_code", TAIPEI), ("national_id", &op_id)],
        )
        .await;
    assert_eq!(location(&headers), "/operator", "{body}");
    let (status, _, html) = app.get("/backoffice/search?code=A0001").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("此功能僅限本部審核人員使用"), "{html}");

    // A reviewer cannot reach the agency's administrator or operator pages.
    app.forget_cookies();
    add_reviewer(&app, Section::First).await;
    reviewer_login(&mut app, "moica-reviewer").await;
    for path in ["/admin/operators", "/admin/operators/new", "/operator"] {
        let (status, _, html) = app.get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            html.contains("本部審核人員不得使用要保機關之功能"),
            "{html}"
        );
    }
    let (status, _, _) = app.get("/flows/new/first_registration").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Logout ends the reviewer's session.
    let (status, _, _) = app.post_form("/backoffice/logout", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, headers, _) = app.get("/backoffice/reviews").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/backoffice/login");
}

#[tokio::test]
async fn r6_3_search_by_code_serial_date_and_outcome_is_audited() {
    let mut app = TestApp::default().await;
    file_review(&mut app, "gca-agency", MISMATCH).await;
    add_reviewer(&app, Section::First).await;
    reviewer_login(&mut app, "moica-reviewer").await;
    let (status, _, html) = app.get("/backoffice/search").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("憑證序號") && !html.contains("稽核紀錄</h2>"));

    let (status, _, html) = app
        .get(&format!(
            "/backoffice/search?code={MISMATCH}&from=2026-06-01&to=2026-06-01"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("新北市政府主計處")
            && html.contains("未註冊")
            && html.contains("憑證註冊審核申請")
            && html.contains("審核中")
            && html.contains("review.file"),
        "{html}"
    );
    // Another day: no receipts, no events.
    let (_, _, html) = app
        .get(&format!(
            "/backoffice/search?code={MISMATCH}&from=2026-06-02"
        ))
        .await;
    assert!(
        html.contains("查無收件紀錄") && html.contains("查無符合之稽核紀錄"),
        "{html}"
    );

    // By the presented certificate's serial, and by outcome.
    let serial = pki().card("gca-agency").issued.serial_hex();
    let (_, _, html) = app
        .get(&format!("/backoffice/search?serial={serial}&outcome=ok"))
        .await;
    assert!(
        html.contains("review.file") && html.contains(MISMATCH),
        "{html}"
    );
    let (_, _, html) = app
        .get(&format!(
            "/backoffice/search?serial={serial}&outcome=oid_mismatch"
        ))
        .await;
    assert!(!html.contains("review.file"), "{html}");

    // Bad input: said beside the field.
    let (status, _, html) = app
        .get("/backoffice/search?from=2026-13-01&code=%3Cx%3E")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("from-error") && html.contains("code-error") && !html.contains("<x>"),
        "{html}"
    );

    let events = app.audit().await;
    let searches = events
        .iter()
        .filter(|(_, e)| e.action == "backoffice.search" && e.detail["view"] == "search")
        .count();
    assert_eq!(searches, 4, "every answered search is audited");
}

/// A reviewer's session, by its cookie (with the page's CSRF token) or as a bearer token, runs
/// no agency function through `/api/v1`: 403 `forbidden` on flows, operators, token and the
/// session view; it may still end itself.
#[tokio::test]
async fn a_reviewer_session_cannot_run_agency_functions_through_the_api() {
    use axum::body::Body;
    use axum::http::{Method, Request, header};
    let mut app = TestApp::default().await;
    add_reviewer(&app, Section::First).await;
    let (status, _, body) = reviewer_login(&mut app, "moica-reviewer").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let sid = app.cookie("certreg_session").expect("the session cookie");
    let csrf = app.csrf().await;

    let calls: [(Method, &str, Option<&str>); 9] = [
        (Method::GET, "/api/v1/session", None),
        (Method::POST, "/api/v1/token", Some("{}")),
        (
            Method::POST,
            "/api/v1/flows",
            Some(r#"{"kind":"operator_login"}"#),
        ),
        (Method::GET, "/api/v1/flows/nope", None),
        (Method::GET, "/api/v1/operators", None),
        (
            Method::POST,
            "/api/v1/operators",
            Some(r#"{"certificate":"","national_id":"","functions":[]}"#),
        ),
        (Method::GET, "/api/v1/operators/1", None),
        (Method::DELETE, "/api/v1/operators/1?version=1", None),
        (Method::GET, "/api/v1/agencies/A0001/receipts", None),
    ];
    // The back-office pages work for that session.
    let (status, _, html) = app.get("/backoffice/reviews").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    for bearer in [false, true] {
        if bearer {
            app.forget_cookies();
        }
        for (method, path, body) in &calls {
            let mut req = Request::builder().method(method.clone()).uri(*path);
            if bearer {
                // No cookie: the session id alone, as an API client would send it.
                req = req.header(header::AUTHORIZATION, format!("Bearer {sid}"));
            } else {
                req = req
                    .header(header::ORIGIN, ORIGIN)
                    .header("x-csrf-token", &csrf);
            }
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
                .unwrap();
            let (status, _, text) = app.send(req).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path} bearer={bearer}: {text}"
            );
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v["code"], "forbidden",
                "{method} {path} bearer={bearer}: {v}"
            );
        }
    }
}

/// A reviewer's card sent through the API's door is refused before anything is written (the
/// back office is pages only): no reviewer role stored anywhere, the browser's id still its
/// own, the back office still closed to it, the flow not moved on, no login in the log.
#[tokio::test]
async fn a_reviewer_card_through_the_api_gives_the_session_no_role() {
    use axum::body::Body;
    use axum::http::{Request, header};
    let mut app = TestApp::default().await;
    add_reviewer(&app, Section::First).await;
    app.get("/backoffice/login").await;
    let flow = app.start("reviewer_login").await;
    let sid = app.cookie("certreg_session").expect("the session cookie");
    let csrf = app.csrf().await;
    let post = |path: String, body: String| {
        Request::post(path)
            .header(header::ORIGIN, ORIGIN)
            .header("x-csrf-token", &csrf)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let (status, _, text) = app
        .send(post(
            format!("/api/v1/flows/{flow}/challenge"),
            String::new(),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let proof = serde_json::json!({
        "challenge_id": v["challenge_id"],
        "signature": cms("moica-reviewer", v["tbs"].as_str().unwrap()),
    });
    let (status, _, text) = app
        .send(post(
            format!("/api/v1/flows/{flow}/card"),
            proof.to_string(),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["code"], "forbidden", "{v}");

    assert_eq!(app.cookie("certreg_session"), Some(sid.clone()));
    let now = domain::clock::Clock::now(&*app.clock);
    let live = app.db.sessions_live(now).await.unwrap();
    assert!(
        live.iter().all(|r| r.kind != "reviewer"),
        "{:?}",
        live.iter().map(|r| &r.kind).collect::<Vec<_>>()
    );
    let own = app.db.session_get(&store::session_key(&sid), now).await;
    assert_eq!(own.unwrap().map(|r| r.kind), Some("anonymous".to_string()));
    let (status, headers, _) = app.get("/backoffice/reviews").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/backoffice/login");
    // Refused before the commit: the flow still waits for a card, and the log holds the
    // refusal, not a login.
    let stored = app.db.flow(&flow).await.unwrap().unwrap();
    assert_eq!(stored.step, domain::flow::Step::ReviewerCard);
    let events = app.audit().await;
    let actions: Vec<_> = events
        .iter()
        .map(|(_, e)| (e.action.as_str(), e.outcome.as_str()))
        .filter(|(a, _)| a.starts_with("reviewer"))
        .collect();
    assert_eq!(
        actions,
        [("reviewer_login.reviewer_card", "forbidden")],
        "the refusal, and no login"
    );
}

/// The reviewer's search flags a registration's certificates: 「憑證將於 YYYY/MM/DD 到期」 within
/// 60 days of notAfter, 「憑證已廢止」 when a CRL in force lists it.
#[tokio::test]
async fn the_search_flags_expiring_and_revoked_registration_certificates() {
    let mut app = TestApp::default().await;
    crate::admin::register(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    app.forget_cookies();
    add_reviewer(&app, Section::First).await;

    // Nothing to flag today.
    reviewer_login(&mut app, "moica-reviewer").await;
    let (status, _, html) = app.get(&format!("/backoffice/search?code={TAIPEI}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("機關代號 A0001"), "{html}");
    assert!(
        html.contains("<th scope=\"col\">約定條款版本</th>")
            && html.contains("<td>首次註冊</td><td></td><td>2026-01</td>"),
        "the receipt names the accepted terms version: {html}"
    );
    assert!(
        !html.contains("到期") && !html.contains("憑證已廢止"),
        "{html}"
    );
    app.forget_cookies();

    // 30 days before the organization certificate's notAfter, with CRLs fresh then; the
    // administrator's card is on the MOICA CRL.
    let p = pki();
    let not_after = p.card("gca-agency").issued.spec.not_after;
    let later = not_after - time::Duration::days(30);
    app.clock.set(later);
    let mut crls = p
        .crl_store(
            later - time::Duration::hours(1),
            later + time::Duration::days(30),
        )
        .unwrap();
    let this_update = later - time::Duration::minutes(30);
    crls.add(&testpki::crl(
        p.ca(testpki::CaKind::Moica),
        &[(
            p.card("moica-admin").issued.serial().to_vec(),
            later - time::Duration::minutes(40),
        )],
        this_update,
        later + time::Duration::days(7),
        this_update.unix_timestamp() as u64,
        None,
    ))
    .unwrap();
    app.validator.replace_crls(crls);

    let (status, _, body) = reviewer_login(&mut app, "moica-reviewer").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (status, _, html) = app.get(&format!("/backoffice/search?code={TAIPEI}")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let expiring = format!(
        "機關憑證（序號 {}）：<span class=\"badge\">憑證將於 {} 到期</span>",
        p.card("gca-agency").issued.serial_hex(),
        domain::expiry::taipei_date(not_after)
    );
    assert!(html.contains(&expiring), "{expiring} in {html}");
    let revoked = format!(
        "授權管理者自然人憑證（序號 {}）：<span class=\"badge\">憑證已廢止</span>",
        p.card("moica-admin").issued.serial_hex()
    );
    assert!(html.contains(&revoked), "{revoked} in {html}");
    // Found by the certificate serial too.
    let (_, _, html) = app
        .get(&format!(
            "/backoffice/search?serial={}",
            p.card("moica-admin").issued.serial_hex()
        ))
        .await;
    assert!(html.contains(&revoked), "{html}");
}
