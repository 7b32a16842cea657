//! Page tests of the web service: the flows walked request by request, CSRF and Origin
//! refusals, security headers, body limits and rate limits.

mod admin;
mod api;
mod backoffice;
mod helpers;
mod ops;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use helpers::*;

#[tokio::test]
async fn home_has_the_manuals_menu_and_security_headers() {
    let mut app = TestApp::default().await;
    let (status, headers, html) = app.get("/").await;
    assert_eq!(status, StatusCode::OK);
    for item in [
        "首次註冊",
        "授權指派",
        "更換機關憑證",
        "更換授權管理者自然人憑證",
        "更換機關憑證和更換授權管理者自然人憑證",
        "查詢憑證註冊收件紀錄",
        "查詢機關憑證 OID",
        "查詢自然人憑證序號",
        "經辦人登入",
    ] {
        assert!(html.contains(item), "menu lacks {item}");
    }
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'")
            && csp.contains("script-src 'self'")
            && !csp.contains("unsafe-inline")
    );
    // Not `no-referrer`: a browser would then send `Origin: null` on the pages' own form posts.
    assert_eq!(headers["referrer-policy"], "same-origin");
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "http origin: no Secure flag");
}

#[tokio::test]
async fn r1_first_registration_walked_through_the_pages() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(
        html.contains("用戶約定條款") && html.contains("同意條款內容"),
        "{html}"
    );
    let (status, headers, _) = app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), format!("/flows/{flow}"));
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(
        html.contains("首次註冊－機關憑證確認")
            && html.contains("機關代號 <span class=\"req\">(必填)</span>"),
        "{html}"
    );
    assert!(
        !html.contains("name=\"pin\""),
        "the PIN field must not be posted to certreg"
    );

    // A wrong code: the message beside the field, status 404, the typed value kept.
    let (status, _, html) = app
        .card_step(&flow, "gca-agency", &[("institution_code", "Z9999")])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        html.contains("institution_code-error") && html.contains("查無此機關代號"),
        "{html}"
    );
    assert!(html.contains("value=\"Z9999\""));

    let (status, headers, _) = app
        .card_step(&flow, "gca-agency", &[("institution_code", TAIPEI)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), format!("/flows/{flow}"));
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(html.contains("首次註冊－自然人憑證確認") && html.contains("身分證統一編號"));

    let (status, _, html) = app
        .card_step(&flow, "moica-admin", &[("national_id", "A123456788")])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("national_id-error"), "{html}");
    let id = id_of("moica-admin");
    app.card_step(&flow, "moica-admin", &[("national_id", &id)])
        .await;
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(
        html.contains("圖3-9") && html.contains("電子信箱 <span class=\"req\">(必填)</span>"),
        "{html}"
    );
    assert!(
        html.contains(&pki().card("gca-agency").issued.serial_hex()),
        "the organization certificate is shown"
    );

    // Bad email: beside the field, nothing written.
    let contact = [
        ("name", "王大明"),
        ("email", "bad"),
        ("phone", "02-2345-6789"),
        ("phone_ext", ""),
        ("mobile", ""),
        ("unit", ""),
        ("title", ""),
    ];
    let (status, _, html) = app
        .post_form(&format!("/flows/{flow}/confirm"), &contact)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("email-error") && html.contains("電子信箱格式錯誤"),
        "{html}"
    );
    let mut ok = contact;
    ok[1] = ("email", "admin@example.gov.tw");
    let (status, headers, _) = app.post_form(&format!("/flows/{flow}/confirm"), &ok).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), format!("/flows/{flow}/result"));
    let (_, _, html) = app.get(&format!("/flows/{flow}/result")).await;
    assert!(
        html.contains("首次註冊成功") && html.contains("圖3-10"),
        "{html}"
    );
    assert!(
        html.contains("同意之用戶約定條款版本</dt><dd><span class=\"copy\">2026-01"),
        "{html}"
    );
    // The printable receipt, for the agency's files.
    assert!(
        html.contains(&format!("href=\"/flows/{flow}/receipt\"")),
        "{html}"
    );
    let (status, _, receipt) = app.get(&format!("/flows/{flow}/receipt")).await;
    assert_eq!(status, StatusCode::OK);
    let org_serial = pki().card("gca-agency").issued.serial_hex();
    for want in [
        "首次註冊收據",
        "收件時間",
        "2026/06/01 10:00",
        TAIPEI,
        "臺北市政府人事處",
    ] {
        assert!(receipt.contains(want), "{want}: {receipt}");
    }
    assert!(
        receipt
            .to_ascii_uppercase()
            .contains(&org_serial.to_ascii_uppercase()),
        "{org_serial}: {receipt}"
    );
    assert!(receipt.contains("/static/print.js"), "{receipt}");
    // Refresh or back + resubmit: shown again, not registered twice.
    let (status, headers, _) = app.post_form(&format!("/flows/{flow}/confirm"), &ok).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), format!("/flows/{flow}/result"));
}

#[tokio::test]
async fn r1_3_mismatch_review_through_the_pages() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    app.card_step(
        &flow,
        "gca-agency-mismatch",
        &[("institution_code", MISMATCH)],
    )
    .await;
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(
        html.contains("貴機關申請憑證註冊，因申請資料比對不符，需進行審核，請填聯絡資料"),
        "{html}"
    );
    let (status, _, html) = app
        .post_form(
            &format!("/flows/{flow}/review"),
            &[("name", ""), ("phone", "0223456789")],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("name-error"));
    let (_, headers, _) = app
        .post_form(
            &format!("/flows/{flow}/review"),
            &[("name", "林小華"), ("phone", "0223456789")],
        )
        .await;
    let (_, _, html) = app.get(&location(&headers)).await;
    assert!(
        html.contains("次一營業日")
            && html.contains("(02)27013411")
            && html.contains("承保第一科")
            && html.contains("5312"),
        "{html}"
    );
}

/// The page's text as a person reads it: tags (and the attributes in them) left out.
fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Manual figure numbers are for tests (a data attribute), never printed on the page.
#[tokio::test]
async fn figure_numbers_are_never_on_the_visible_page() {
    let mut app = TestApp::default().await;
    let (_, _, home) = app.get("/").await;
    let (_, _, door) = app.get("/flows/new/first_registration").await;
    let flow = app.start("first_registration").await;
    let (_, _, terms) = app.get(&format!("/flows/{flow}")).await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    let (_, _, org) = app.get(&format!("/flows/{flow}")).await;
    for (page, figure) in [
        (&home, "圖3-2"),
        (&door, "圖3-3"),
        (&terms, "圖3-4"),
        (&org, "圖3-5"),
    ] {
        assert!(
            page.contains(&format!("data-figure=\"{figure}\"")),
            "{figure}: {page}"
        );
        assert!(!visible_text(page).contains("圖3-"), "{page}");
    }
    // 圖3-2: 【首次註冊】 in the page itself, not only in the menu.
    assert!(
        home.contains(
            "<a class=\"button primary\" href=\"/flows/new/first_registration\">首次註冊</a>"
        ),
        "{home}"
    );
    // 圖3-5's own words: 公保機關代號.
    assert!(
        org.contains("公保機關代號 <span class=\"req\">(必填)</span>"),
        "{org}"
    );
    // 授權指派's home page is 圖3-11.
    let (_, _, door) = app.get("/flows/new/admin_login").await;
    assert!(door.contains("data-figure=\"圖3-11\""), "{door}");
}

/// 憑證申請說明 (the manual's sections 二 and 三) is in the menu, and a refusal that means
/// "another card is needed" links to it; other refusals do not.
#[tokio::test]
async fn card_refusals_that_need_another_card_link_the_application_guide() {
    let mut app = TestApp::default().await;
    let (status, _, help) = app.get("/help/certificates").await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        "(GCA)",
        "(XCA)",
        "(MOEACA)",
        "(HCA)",
        "(MOICA)",
        "0800-080-117",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
    let (_, _, home) = app.get("/").await;
    assert!(home.contains("href=\"/help/certificates\""), "{home}");
    let flow = app.start("first_registration").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    // A citizen card on the organization card step.
    let (status, _, html) = app
        .card_step(&flow, "moica-admin", &[("institution_code", TAIPEI)])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(
        html.contains("請參閱<a href=\"/help/certificates\">"),
        "{html}"
    );
    // A typo in the code is not a card problem.
    let (status, _, html) = app
        .card_step(&flow, "gca-agency", &[("institution_code", "Z9999")])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
    assert!(!html.contains("請參閱<a href"), "{html}");
}

/// 用戶約定條款 are the insurer's text from the settings; the shipped sample says it is one.
#[tokio::test]
async fn the_terms_are_the_configured_text_and_the_sample_says_so() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(
        html.contains("範例") && html.contains("非本部公告"),
        "{html}"
    );
    let terms = web::Terms::parse("第一條　甲。\n\n第二條　乙，\n續行。\n").unwrap();
    assert_eq!(terms.clauses, ["第一條　甲。", "第二條　乙，續行。"]);
    let mut app = TestApp::new(web::WebConfig {
        terms,
        ..web::WebConfig::default()
    })
    .await;
    let flow = app.start("first_registration").await;
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(html.contains("<li>第二條　乙，續行。</li>"), "{html}");
    assert!(!html.contains("範例"), "{html}");
    assert!(web::Terms::parse("\n \n").is_none());
}

/// Each card step's PIN field is labelled as its figure labels it.
#[tokio::test]
async fn pin_labels_follow_the_manual() {
    let mut app = TestApp::default().await;
    let flow = app.start("query_citizen_serial").await;
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(
        html.contains("自然人憑證 IC 卡密碼(PIN 碼) <span class=\"req\">"),
        "圖3-42: {html}"
    );
    let flow = app.start("query_org_oid").await;
    let (_, _, html) = app.get(&format!("/flows/{flow}")).await;
    assert!(
        html.contains(">機關憑證密碼(PIN 碼) <span"),
        "圖3-40: {html}"
    );
}

/// While an application waits, the card gets the 圖3-7 message again with the numbers to call:
/// the section in charge of the agency's county, or both sections with their counties when
/// the county is unknown.
#[tokio::test]
async fn a_pending_review_is_answered_with_the_numbers_to_call() {
    let mut app = TestApp::default().await;
    let unknown = domain::model::Agency {
        code: domain::types::InstitutionCode::parse("Z0001").unwrap(),
        name: "海外測試機關".into(),
        county: "海外".into(),
        org_identifier: Some(
            domain::types::OrgIdentifier::parse("2.16.886.101.20003.20065.99999").unwrap(),
        ),
    };
    domain::store::Store::upsert_agencies(&app.db, &[unknown])
        .await
        .unwrap();
    // One pending application per card: each agency files with a card of its own.
    for (code, card, want, not) in [
        (
            HOSPITAL,
            "gca-agency-mismatch",
            vec!["承保第二科", "5353", "臺中"],
            Some("承保第一科"),
        ),
        (
            "Z0001",
            "moeaca-company",
            vec!["承保第一科", "5312", "承保第二科", "5353", "宜蘭", "臺東"],
            None,
        ),
    ] {
        app.forget_cookies();
        for attempt in 0..2 {
            let flow = app.start("first_registration").await;
            app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
            let (status, _, html) = app
                .card_step(&flow, card, &[("institution_code", code)])
                .await;
            if attempt == 0 {
                assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
                let (status, _, html) = app
                    .post_form(
                        &format!("/flows/{flow}/review"),
                        &[("name", "林小華"), ("phone", "0223456789")],
                    )
                    .await;
                assert_eq!(status, StatusCode::SEE_OTHER, "{code}: {html}");
                continue;
            }
            assert_eq!(status, StatusCode::CONFLICT, "{code}: {html}");
            let text = visible_text(&html);
            assert!(
                text.contains("次一營業日") && text.contains("(02)27013411"),
                "{text}"
            );
            for w in &want {
                assert!(text.contains(w), "{code}: {w} missing: {text}");
            }
            if let Some(n) = not {
                assert!(!text.contains(n), "{code}: {n} shown: {text}");
            }
        }
    }
}

#[tokio::test]
async fn spec_4_7_csrf_and_origin_are_checked() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    // No token.
    let req = Request::post(format!("/flows/{flow}/terms"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ORIGIN, ORIGIN)
        .body(Body::from("_csrf=wrong"))
        .unwrap();
    let (status, _, html) = app.send(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("請重新整理頁面"));
    // Right token, foreign origin.
    let csrf = app.csrf().await;
    let req = Request::post(format!("/flows/{flow}/terms"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::from(format!("_csrf={csrf}")))
        .unwrap();
    assert_eq!(app.send(req).await.0, StatusCode::FORBIDDEN);
    // Challenge without the header token.
    let req = Request::post(format!("/flows/{flow}/challenge"))
        .header(header::ORIGIN, ORIGIN)
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn flows_belong_to_their_session() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    assert_eq!(app.get(&format!("/flows/{flow}")).await.0, StatusCode::OK);
    // Another browser on the same service cannot see or drive it.
    app.forget_cookies();
    assert_eq!(
        app.get(&format!("/flows/{flow}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post_form(&format!("/flows/{flow}/terms"), &[]).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn session_expires_after_15_idle_minutes() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    app.clock.advance(time::Duration::minutes(16));
    let (status, _, _) = app.get(&format!("/flows/{flow}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a new session does not own the old flow"
    );
}

/// A session read again within 30 s of its last write is not written again, so its idle
/// timeout runs from that write: it ends 15 minutes after it, never later.
#[tokio::test]
async fn a_session_read_again_soon_is_not_rewritten() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    app.clock.advance(time::Duration::seconds(20));
    let (status, _, _) = app.get(&format!("/flows/{flow}")).await;
    assert_eq!(status, StatusCode::OK);
    app.clock.advance(time::Duration::seconds(14 * 60 + 41));
    let (status, _, _) = app.get(&format!("/flows/{flow}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "15 min after the last write");

    // Read again 40 s after the write: written, so the session lives on.
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    app.clock.advance(time::Duration::seconds(40));
    let (status, _, _) = app.get(&format!("/flows/{flow}")).await;
    assert_eq!(status, StatusCode::OK);
    app.clock.advance(time::Duration::seconds(14 * 60 + 21));
    let (status, _, _) = app.get(&format!("/flows/{flow}")).await;
    // The session still owns the flow: the flow's own timeout answers (410), not another
    // session's 404.
    assert_eq!(status, StatusCode::GONE, "14 min 21 s after the last write");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let mut app = TestApp::default().await;
    let flow = app.start("first_registration").await;
    let big = "a".repeat(300 * 1024);
    let (status, _, _) = app
        .post_form(&format!("/flows/{flow}/card"), &[("signature", &big)])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn card_steps_are_rate_limited_per_client() {
    let limits = web::security::Limits {
        card_steps_per_client: 3,
        ..Default::default()
    };
    let mut app = TestApp::new(web::WebConfig {
        limits,
        ..Default::default()
    })
    .await;
    let flow = app.start("query_org_oid").await;
    let csrf = app.csrf().await;
    let mut last = StatusCode::OK;
    for _ in 0..4 {
        let req = Request::post(format!("/flows/{flow}/challenge"))
            .header(header::ORIGIN, ORIGIN)
            .header("x-csrf-token", &csrf)
            .body(Body::empty())
            .unwrap();
        last = app.send(req).await.0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}
