//! Page tests of 授權指派's operator pages (R2.3–R2.6), 查詢憑證註冊收件紀錄 (R4.1) and the
//! operator's home (R5.1): agencies registered through the flow pages first, then signed in with
//! the admin_login card steps, as a browser would.

use crate::helpers::*;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use domain::model::ReviewState;
use domain::store::{Commit, ReviewWrite, Store as _};
use domain::types::InstitutionCode;

const ENDED: &str = "授權管理者作業階段已結束，請重新辦理授權指派";

const CONTACT: [(&str, &str); 7] = [
    ("name", "王大明"),
    ("email", "admin@example.gov.tw"),
    ("phone", "02-2345-6789"),
    ("phone_ext", ""),
    ("mobile", ""),
    ("unit", ""),
    ("title", ""),
];

/// 首次註冊 through the pages.
pub(crate) async fn register(app: &mut TestApp, org: &str, code: &str, admin: &str) {
    let flow = app.start("first_registration").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    let (status, _, body) = app
        .card_step(&flow, org, &[("institution_code", code)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let id = id_of(admin);
    let (status, _, body) = app.card_step(&flow, admin, &[("national_id", &id)]).await;
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

/// 授權指派's two card steps; returns this browser's session cookie.
async fn admin_login(app: &mut TestApp, org: &str, code: &str, admin: &str) -> String {
    let flow = app.start("admin_login").await;
    let (status, _, body) = app
        .card_step(&flow, org, &[("institution_code", code)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let id = id_of(admin);
    let (status, headers, body) = app.card_step(&flow, admin, &[("national_id", &id)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location(&headers), "/admin/operators");
    session_cookie(&headers)
}

fn session_cookie(headers: &HeaderMap) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("certreg_session="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string()
}

/// Agency A (臺北市政府人事處) registered and its administrator signed in.
async fn signed_in() -> TestApp {
    let mut app = TestApp::default().await;
    register(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    admin_login(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    app
}

fn serial_of(card: &str) -> String {
    pki().card(card).issued.serial_hex()
}

fn cert_b64(card: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(&pki().card(card).issued.cert_der)
}

/// 新增 with a typed serial.
async fn add_typed(
    app: &mut TestApp,
    card: &str,
    name: &str,
    functions: &[&str],
) -> (StatusCode, HeaderMap, String) {
    let serial = serial_of(card);
    let id = id_of(card);
    let mut fields = vec![
        ("serial", serial.as_str()),
        ("name", name),
        ("national_id", id.as_str()),
        ("certificate", ""),
    ];
    fields.extend(functions.iter().map(|f| ("functions", *f)));
    app.post_form("/admin/operators", &fields).await
}

async fn operators(app: &TestApp, code: &str) -> Vec<domain::model::Operator> {
    app.db
        .operators(&InstitutionCode::parse(code).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn r2_3_list_columns_and_required_marks_then_add_by_typed_serial() {
    let mut app = signed_in().await;
    let (status, _, html) = app.get("/admin/operators").await;
    assert_eq!(status, StatusCode::OK);
    for text in [
        "授權經辦人清單",
        "圖3-14",
        "新增",
        "登出",
        "授權管理者（機關代號 A0001）",
    ] {
        assert!(html.contains(text), "list lacks {text}: {html}");
    }

    let (status, _, html) = app.get("/admin/operators/new").await;
    assert_eq!(status, StatusCode::OK);
    for label in ["憑證序號", "姓名", "身分證統一編號", "功能選單"] {
        assert!(
            html.contains(&format!("{label} <span class=\"req\">(必填)</span>")),
            "{label} lacks its 必填 mark: {html}"
        );
    }
    assert!(html.contains("<button type=\"button\" id=\"read-card\">讀取憑證</button>"));
    assert!(html.contains("src=\"/static/operator-form.js\"") && !html.contains("<script>"));
    for label in ["加保作業", "異動作業(含保俸調整)", "查詢作業"] {
        assert!(html.contains(label), "catalogue lacks {label}");
    }
    assert!(html.contains("type=\"hidden\" name=\"certificate\""));
    let (status, headers, js) = app.get("/static/operator-form.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert!(
        js.contains("readCards") && !js.contains("sign("),
        "reads without a PIN"
    );

    let (status, headers, body) =
        add_typed(&mut app, "moica-operator-1", "林志明", &["enroll", "query"]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location(&headers), "/admin/operators");
    let (_, _, html) = app.get("/admin/operators").await;
    assert!(html.contains("新增成功"), "{html}");
    for column in [
        "憑證序號",
        "姓名",
        "身分證統一編號",
        "功能選單",
        "最後異動時間",
    ] {
        assert!(
            html.contains(&format!("<th scope=\"col\">{column}</th>")),
            "{column}"
        );
    }
    assert!(html.contains(&serial_of("moica-operator-1")));
    assert!(html.contains("林志明"));
    assert!(html.contains("B12****008"), "the ID is masked: {html}");
    assert!(!html.contains("B120000008"), "never the whole ID in a list");
    assert!(html.contains("加保作業、查詢作業"));
    // NOW is 02:00 UTC: Taipei is eight hours ahead.
    assert!(html.contains("2026/06/01 10:00"), "{html}");
    assert!(html.contains(">修改</button>") && html.contains(">刪除</button>"));
    // Shown once.
    let (_, _, html) = app.get("/admin/operators").await;
    assert!(!html.contains("新增成功"));
}

#[tokio::test]
async fn r2_4_add_by_read_certificate_checks_the_last_four() {
    let mut app = signed_in().await;
    let cert = cert_b64("moica-operator-2");
    // The page script fills serial and name from the card; the server reads them from the
    // certificate itself. A123456789 is a valid ID whose last four are not the card's.
    let wrong = [
        ("serial", "ignored"),
        ("name", "ignored"),
        ("national_id", "A123456789"),
        ("certificate", cert.as_str()),
        ("functions", "premium"),
    ];
    let (status, _, html) = app.post_form("/admin/operators", &wrong).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("id=\"national_id-error\">身分證統一編號與自然人憑證不符"),
        "{html}"
    );
    assert!(html.contains("aria-describedby=\"national_id-error\""));
    assert!(
        html.contains(&format!("value=\"{cert}\"")),
        "the certificate read is kept"
    );
    assert!(operators(&app, TAIPEI).await.is_empty());

    let id = id_of("moica-operator-2");
    let right = [
        ("serial", ""),
        ("name", ""),
        ("national_id", id.as_str()),
        ("certificate", cert.as_str()),
        ("functions", "premium"),
    ];
    let (status, _, body) = app.post_form("/admin/operators", &right).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let (_, _, html) = app.get("/admin/operators").await;
    assert!(
        html.contains("新增成功") && html.contains("張淑芬"),
        "{html}"
    );
    assert!(html.contains(&serial_of("moica-operator-2")));
    let ops = operators(&app, TAIPEI).await;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].serial.as_str(), serial_of("moica-operator-2"));
}

#[tokio::test]
async fn r2_4_bad_input_is_shown_beside_its_field() {
    let mut app = signed_in().await;
    let serial = serial_of("moica-operator-1");
    let id = id_of("moica-operator-1");

    // No function.
    let (status, _, html) = app
        .post_form(
            "/admin/operators",
            &[
                ("serial", &serial),
                ("name", "林志明"),
                ("national_id", &id),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("id=\"functions-error\">請至少勾選一項功能選單"),
        "{html}"
    );
    assert!(html.contains(&format!("value=\"{serial}\"")) && html.contains("value=\"林志明\""));

    // Bad checksum.
    let (status, _, html) = app
        .post_form(
            "/admin/operators",
            &[
                ("serial", &serial),
                ("name", "林志明"),
                ("national_id", "A123456788"),
                ("functions", "enroll"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("id=\"national_id-error\""), "{html}");
    assert!(html.contains("aria-invalid=\"true\" aria-describedby=\"national_id-error\""));
    assert!(
        html.contains("name=\"functions\" value=\"enroll\" checked"),
        "ticked boxes stay ticked"
    );

    // Bad serial.
    let (status, _, html) = app
        .post_form(
            "/admin/operators",
            &[
                ("serial", "not hex!"),
                ("name", "林志明"),
                ("national_id", &id),
                ("functions", "enroll"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("id=\"serial-error\""), "{html}");

    // Duplicate serial (typed another way: lower case with colons).
    add_typed(&mut app, "moica-operator-1", "林志明", &["enroll"]).await;
    let spaced = serial
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":");
    let (status, _, html) = app
        .post_form(
            "/admin/operators",
            &[
                ("serial", &spaced),
                ("name", "林志明"),
                ("national_id", &id),
                ("functions", "query"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        html.contains("id=\"serial-error\">此憑證序號已授權於本機關，請勿重複新增"),
        "{html}"
    );
    assert_eq!(operators(&app, TAIPEI).await.len(), 1);
}

#[tokio::test]
async fn r2_5_modify_and_a_stale_version_is_refused() {
    let mut app = signed_in().await;
    add_typed(&mut app, "moica-operator-1", "林志明", &["enroll"]).await;
    let op = operators(&app, TAIPEI).await.remove(0);
    let (status, _, html) = app.get(&format!("/admin/operators/{}/edit", op.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("修改授權經辦人") && html.contains("圖3-18"),
        "{html}"
    );
    // 圖3-18's own labels.
    for label in ["憑證序號(SN)", "授權經辦人姓名", "功能選單"] {
        assert!(
            html.contains(&format!("{label} <span class=\"req\">(必填)</span>")),
            "{label}: {html}"
        );
    }
    assert!(html.contains("請修改憑證序號(SN)、授權經辦人姓名、身分證統一編號及功能選單項目後"));
    // The national ID on file is shown masked as the list shows it, never in full; an empty
    // field keeps it.
    let on_file = id_of("moica-operator-1");
    assert!(!html.contains(&on_file), "{html}");
    assert!(
        html.contains(&format!("目前為 {}", &on_file[..3])),
        "{html}"
    );
    assert!(html.contains("身分證統一編號 <span class=\"note\">(不變更請留空)</span>"));
    assert!(html.contains(&format!("name=\"version\" value=\"{}\"", op.version)));
    assert!(html.contains("name=\"functions\" value=\"enroll\" checked"));
    assert!(html.contains(&format!("action=\"/admin/operators/{}\"", op.id)));

    let serial = serial_of("moica-operator-1");
    let id = id_of("moica-operator-1");
    let version = op.version.to_string();
    let fields = |v: &'static str| {
        vec![
            ("serial", serial.clone()),
            ("name", "林志明".to_string()),
            ("national_id", id.clone()),
            ("functions", v.to_string()),
            ("functions", "query".to_string()),
        ]
    };
    let mut first = fields("withdraw");
    first.push(("version", version.clone()));
    let first: Vec<(&str, &str)> = first.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, headers, body) = app
        .post_form(&format!("/admin/operators/{}", op.id), &first)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location(&headers), "/admin/operators");
    let (_, _, html) = app.get("/admin/operators").await;
    assert!(
        html.contains("修改成功") && html.contains("退保作業、查詢作業"),
        "{html}"
    );

    // A second tab still holding the old version.
    let mut stale = fields("premium");
    stale.push(("version", version));
    let stale: Vec<(&str, &str)> = stale.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, html) = app
        .post_form(&format!("/admin/operators/{}", op.id), &stale)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        html.contains("資料已被其他使用者修改，請重新讀取後再操作"),
        "{html}"
    );
    assert!(html.contains(&format!("href=\"/admin/operators/{}/edit\"", op.id)));
    let now = operators(&app, TAIPEI).await.remove(0);
    assert_eq!(now.functions, vec!["withdraw", "query"], "not overwritten");

    // Empty 姓名 on 修改 is refused beside the field.
    let mut empty = fields("query");
    empty[1].1 = String::new();
    empty.push(("version", now.version.to_string()));
    let empty: Vec<(&str, &str)> = empty.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, html) = app
        .post_form(&format!("/admin/operators/{}", op.id), &empty)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("id=\"name-error\""), "{html}");
}

#[tokio::test]
async fn r2_6_delete_after_the_confirmation() {
    let mut app = signed_in().await;
    add_typed(&mut app, "moica-operator-1", "林志明", &["enroll"]).await;
    add_typed(&mut app, "moica-operator-2", "張淑芬", &["query"]).await;
    let op = operators(&app, TAIPEI).await.remove(1);
    let (status, _, html) = app.get(&format!("/admin/operators/{}/delete", op.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("確定刪除？") && html.contains("張淑芬") && html.contains("B22****000"),
        "{html}"
    );
    assert!(html.contains(&format!("name=\"version\" value=\"{}\"", op.version)));
    assert_eq!(
        operators(&app, TAIPEI).await.len(),
        2,
        "nothing deleted yet"
    );

    // A stale version: asked again, nothing deleted.
    let stale = (op.version - 1).to_string();
    let (status, _, html) = app
        .post_form(
            &format!("/admin/operators/{}/delete", op.id),
            &[("version", &stale)],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(html.contains("資料已被其他使用者修改") && html.contains("確定刪除？"));
    assert_eq!(operators(&app, TAIPEI).await.len(), 2);

    let version = op.version.to_string();
    let (status, headers, _) = app
        .post_form(
            &format!("/admin/operators/{}/delete", op.id),
            &[("version", &version)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/admin/operators");
    let (_, _, html) = app.get("/admin/operators").await;
    assert!(html.contains("刪除成功") && !html.contains("張淑芬") && html.contains("林志明"));
    assert_eq!(operators(&app, TAIPEI).await.len(), 1);
}

#[tokio::test]
async fn spec_4_7_another_agencys_operator_ids_answer_404() {
    let mut app = signed_in().await;
    add_typed(&mut app, "moica-operator-1", "林志明", &["enroll"]).await;
    let theirs = operators(&app, TAIPEI).await.remove(0);

    // Agency B, registered and signed in from another browser.
    app.forget_cookies();
    register(&mut app, "xca-school", SCHOOL, "moica-admin2").await;
    admin_login(&mut app, "xca-school", SCHOOL, "moica-admin2").await;
    let (_, _, html) = app.get("/admin/operators").await;
    assert!(!html.contains("林志明"), "B's list has only B's operators");

    let serial = serial_of("moica-operator-1");
    let id = id_of("moica-operator-1");
    let version = theirs.version.to_string();
    let modify = [
        ("serial", serial.as_str()),
        ("name", "冒用"),
        ("national_id", id.as_str()),
        ("functions", "query"),
        ("version", version.as_str()),
    ];
    let mut bodies = Vec::new();
    for target in [theirs.id, 999_999] {
        let (status, _, edit) = app.get(&format!("/admin/operators/{target}/edit")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = app
            .post_form(&format!("/admin/operators/{target}"), &modify)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // Even with bad input, nothing tells an existing id from a missing one.
        let (status, _, _) = app
            .post_form(
                &format!("/admin/operators/{target}"),
                &[("national_id", "bad"), ("version", "1")],
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = app.get(&format!("/admin/operators/{target}/delete")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = app
            .post_form(
                &format!("/admin/operators/{target}/delete"),
                &[("version", &version)],
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        bodies.push(edit);
    }
    assert_eq!(
        bodies[0], bodies[1],
        "an existing id looks like a missing one"
    );
    let (status, _, _) = app.get("/admin/operators/abc/edit").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let still = operators(&app, TAIPEI).await.remove(0);
    assert_eq!(still, theirs, "A's operator untouched");
}

#[tokio::test]
async fn r3_4_a_replacement_ends_the_admin_session() {
    let mut app = TestApp::default().await;
    register(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    let first = admin_login(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    let get_as = |path: &str| {
        Request::get(path)
            .header(header::COOKIE, &first)
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, _) = app.send(get_as("/admin/operators")).await;
    assert_eq!(status, StatusCode::OK);
    let record = app
        .db
        .session_get(
            &store::session_key(first.trim_start_matches("certreg_session=")),
            NOW,
        )
        .await
        .unwrap()
        .expect("the administrator's session");

    // 更換機關憑證 in another browser.
    app.forget_cookies();
    let flow = app.start("replace_org").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    let (status, _, body) = app
        .card_step(&flow, "gca-agency-renewed", &[("institution_code", TAIPEI)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let id = id_of("moica-admin");
    app.card_step(&flow, "moica-admin", &[("national_id", &id)])
        .await;
    let (_, headers, body) = app
        .post_form(&format!("/flows/{flow}/confirm"), &CONTACT)
        .await;
    assert_eq!(
        location(&headers),
        format!("/flows/{flow}/result"),
        "{body}"
    );

    // The first browser's list: its session record was deleted with the replacement.
    let (status, _, html) = app.send(get_as("/admin/operators")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains(ENDED), "{html}");
    assert!(html.contains("href=\"/flows/new/admin_login\""));
    let (status, _, html) = app.send(get_as("/admin/operators/new")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains(ENDED));

    // A request of the first browser that was in flight saves its session after the
    // replacement: it stays ended.
    assert_eq!(
        app.db.session_update(&record).await.unwrap(),
        store::SessionSaved::Gone
    );
    let (status, _, html) = app.send(get_as("/admin/operators")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains(ENDED), "{html}");
    // Were it written back anyway, the services refuse the stale grant and the session drops
    // it.
    app.db.session_insert(&record).await.unwrap();
    let (status, _, html) = app.send(get_as("/admin/operators")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains(ENDED), "{html}");
    let (status, _, html) = app.send(get_as("/admin/operators")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        html.contains("請先辦理授權指派"),
        "the grant is gone: {html}"
    );
}

#[tokio::test]
async fn r3_4_a_replacement_in_the_administrators_own_browser_shows_its_result() {
    // The administrator signed in for 授權指派, then replaces the organization card in the same
    // browser: the session goes on without the grant, so the flow and its result stay its own.
    let mut app = signed_in().await;
    let flow = app.start("replace_org").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    let (status, _, body) = app
        .card_step(&flow, "gca-agency-renewed", &[("institution_code", TAIPEI)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let id = id_of("moica-admin");
    app.card_step(&flow, "moica-admin", &[("national_id", &id)])
        .await;
    let (_, headers, body) = app
        .post_form(&format!("/flows/{flow}/confirm"), &CONTACT)
        .await;
    assert_eq!(
        location(&headers),
        format!("/flows/{flow}/result"),
        "{body}"
    );
    let (status, _, html) = app.get(&format!("/flows/{flow}/result")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("更換機關憑證成功"), "{html}");
    // The grant is gone with the replacement.
    let (status, _, _) = app.get("/admin/operators").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn admin_pages_need_the_administrator_and_logout_ends_it() {
    let mut app = TestApp::default().await;
    let (status, _, html) = app.get("/admin/operators").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("請先辦理授權指派") && html.contains("/flows/new/admin_login"));
    let (status, _, _) = app.post_form("/admin/operators", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    register(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    admin_login(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    assert_eq!(app.get("/admin/operators").await.0, StatusCode::OK);
    let (status, headers, _) = app.post_form("/admin/logout", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(app.get("/admin/operators").await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn r4_1_receipts_by_code_newest_first_without_personal_data() {
    let mut app = TestApp::default().await;
    let (status, _, html) = app.get("/receipts").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("圖3-38")
            && html.contains("機關代號 <span class=\"req\">(必填)</span>")
            && html.contains(">查詢</button>"),
        "{html}"
    );

    register(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    // A review application for the other agency (its card's OID is not the one on file).
    app.forget_cookies();
    let flow = app.start("first_registration").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    app.card_step(
        &flow,
        "gca-agency-mismatch",
        &[("institution_code", MISMATCH)],
    )
    .await;
    app.post_form(
        &format!("/flows/{flow}/review"),
        &[("name", "林小華"), ("phone", "0223456789")],
    )
    .await;

    let (status, _, html) = app.get(&format!("/receipts?code={}", "a0002")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("圖3-39")
            && html.contains("新北市政府主計處")
            && html.contains("憑證註冊審核申請")
            && html.contains("審核中")
            && html.contains("2026/06/01 10:00"),
        "{html}"
    );
    assert!(!html.contains("林小華") && !html.contains("0223456789"));

    // Approved by the back office: the state says from when.
    let review = app
        .db
        .reviews(&InstitutionCode::parse(MISMATCH).unwrap())
        .await
        .unwrap()
        .remove(0);
    let reviewer = app
        .db
        .add_reviewer(
            "李建國",
            domain::model::Section::First,
            &domain::types::CertSerial::parse("7A01").unwrap(),
        )
        .await
        .unwrap();
    app.db
        .commit(Commit {
            review: Some(ReviewWrite::Decide {
                reviewer_id: reviewer,
                id: review.id,
                state: ReviewState::Approved {
                    decided_at: NOW,
                    effective: time::macros::date!(2026 - 06 - 02),
                    reviewer: "李建國".into(),
                    note: String::new(),
                },
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, _, html) = app.get(&format!("/receipts?code={MISMATCH}")).await;
    assert!(html.contains("核准（生效日 2026/06/02）"), "{html}");
    assert!(!html.contains("李建國"));

    // A later replacement is listed above the first registration.
    app.clock.advance(time::Duration::hours(1));
    app.forget_cookies();
    let flow = app.start("replace_org").await;
    app.post_form(&format!("/flows/{flow}/terms"), &[]).await;
    app.card_step(&flow, "gca-agency-renewed", &[("institution_code", TAIPEI)])
        .await;
    let id = id_of("moica-admin");
    app.card_step(&flow, "moica-admin", &[("national_id", &id)])
        .await;
    app.post_form(&format!("/flows/{flow}/confirm"), &CONTACT)
        .await;
    let (_, _, html) = app.get(&format!("/receipts?code={TAIPEI}")).await;
    assert!(html.contains("臺北市政府人事處"), "{html}");
    let replaced = html
        .find("<td>更換機關憑證</td>")
        .expect("replacement listed");
    let first = html.find("<td>首次註冊</td>").expect("registration listed");
    assert!(replaced < first, "newest first");
    assert!(html.contains("2026/06/01 11:00"));
    assert!(!html.contains("王大明") && !html.contains("admin@example.gov.tw"));

    let (status, _, html) = app.get("/receipts?code=Z9999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        html.contains("id=\"code-error\">查無此機關代號") && html.contains("value=\"Z9999\""),
        "{html}"
    );
    let (status, _, html) = app.get("/receipts?code=").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("id=\"code-error\">請輸入機關代號"), "{html}");
    let (status, _, html) = app.get("/receipts?code=%3Cb%3E").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("機關代號格式錯誤") && !html.contains("<b>"));
}

#[tokio::test]
async fn r4_1_receipt_queries_are_rate_limited_per_client() {
    let limits = web::security::Limits {
        receipt_queries_per_client: 2,
        ..Default::default()
    };
    let mut app = TestApp::new(web::WebConfig {
        limits,
        ..Default::default()
    })
    .await;
    // The empty query form is not a query.
    for _ in 0..3 {
        assert_eq!(app.get("/receipts").await.0, StatusCode::OK);
    }
    assert_eq!(app.get("/receipts?code=A0001").await.0, StatusCode::OK);
    assert_eq!(
        app.get("/receipts?code=Z9999").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, html) = app.get("/receipts?code=A0001").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(html.contains("操作過於頻繁"), "{html}");
    app.clock.advance(time::Duration::minutes(1));
    assert_eq!(app.get("/receipts?code=A0001").await.0, StatusCode::OK);
}

#[tokio::test]
async fn r5_1_operator_home_shows_only_the_granted_functions() {
    let mut app = TestApp::default().await;
    let (status, headers, _) = app.get("/operator").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/flows/new/operator_login");

    register(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    admin_login(&mut app, "gca-agency", TAIPEI, "moica-admin").await;
    add_typed(&mut app, "moica-operator-1", "林志明", &["enroll", "query"]).await;

    app.forget_cookies();
    let flow = app.start("operator_login").await;
    let id = id_of("moica-operator-1");
    let (status, headers, body) = app
        .card_step(
            &flow,
            "moica-operator-1",
            &[("institution_code", TAIPEI), ("national_id", &id)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location(&headers), "/operator");
    let (status, _, html) = app.get("/operator").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("林志明 您好") && html.contains(TAIPEI) && html.contains("臺北市政府人事處"),
        "{html}"
    );
    assert!(html.contains("<li>加保作業</li>") && html.contains("<li>查詢作業</li>"));
    for other in ["退保作業", "保費作業", "現金給付請領", "育嬰留職停薪作業"]
    {
        assert!(
            !html.contains(&format!("<li>{other}</li>")),
            "{other} was not granted"
        );
    }

    let (status, headers, _) = app.post_form("/operator/logout", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/");
    let (status, headers, _) = app.get("/operator").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/flows/new/operator_login");
}

/// While the administrator is signed in, 授權指派 leads back to 授權經辦人清單 without both
/// cards again; signed out, it is the flow's home page (圖3-11).
#[tokio::test]
async fn admin_login_while_signed_in_goes_back_to_the_list() {
    let mut app = signed_in().await;
    let (status, headers, _) = app.get("/flows/new/admin_login").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/admin/operators");
    app.forget_cookies();
    let (status, _, html) = app.get("/flows/new/admin_login").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("data-figure=\"圖3-11\""), "{html}");
}

/// 圖3-15 ※ sends the administrator to 查詢自然人憑證序號 for an operator's serial: while signed
/// in, its result leads back to 授權經辦人清單; signed out, it does not.
#[tokio::test]
async fn a_serial_looked_up_while_signed_in_leads_back_to_the_list() {
    async fn lookup(app: &mut TestApp) -> String {
        let flow = app.start("query_citizen_serial").await;
        let id = id_of("moica-operator-1");
        let (status, headers, body) = app
            .card_step(&flow, "moica-operator-1", &[("national_id", &id)])
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let (_, _, html) = app.get(&location(&headers)).await;
        assert!(html.contains("請複製下列憑證序號"), "{html}");
        html
    }
    let mut app = signed_in().await;
    let html = lookup(&mut app).await;
    assert!(
        html.contains("<a class=\"button primary\" href=\"/admin/operators\">回授權經辦人清單</a>"),
        "{html}"
    );
    app.forget_cookies();
    let html = lookup(&mut app).await;
    assert!(!html.contains("/admin/operators"), "{html}");
}

/// 登入與異動紀錄: the agency's own logins and grant changes, newest first, by person and
/// date, national IDs masked; another agency's events never appear.
#[tokio::test]
async fn the_administrator_sees_the_agencys_logins_and_changes() {
    let mut app = signed_in().await;
    add_typed(&mut app, "moica-operator-1", "林志明", &["enroll"]).await;
    // The operator logs in on a browser of its own.
    app.forget_cookies();
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
    app.forget_cookies();
    admin_login(&mut app, "gca-agency", TAIPEI, "moica-admin").await;

    let (status, _, html) = app.get("/admin/activity").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let actions: Vec<&str> = html
        .split("<tr><td>")
        .skip(1)
        .filter_map(|row| row.split("</td><td>").nth(2))
        .collect();
    assert_eq!(
        actions,
        [
            "授權管理者登入",
            "經辦人登入",
            "新增授權經辦人",
            "授權管理者登入",
            "首次註冊"
        ],
        "newest first: {html}"
    );
    assert!(!html.contains(&id), "a full national ID: {html}");
    assert!(html.contains("林志明（"), "{html}");
    // One person only.
    let serial = serial_of("moica-operator-1");
    let (_, _, html) = app
        .get(&format!("/admin/activity?who=operator:{serial}"))
        .await;
    let body = html.split("<tbody>").nth(1).unwrap_or_default();
    assert!(
        body.contains("經辦人登入") && !body.contains("授權管理者登入"),
        "{html}"
    );
    // A day with nothing, and a date that is not one.
    let (_, _, html) = app.get("/admin/activity?from=2030-01-01").await;
    assert!(html.contains("查無紀錄"), "{html}");
    let (status, _, html) = app.get("/admin/activity?to=2026-13-40").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("to-error"), "{html}");
    // Signed out: not shown.
    app.forget_cookies();
    let (status, _, _) = app.get("/admin/activity").await;
    assert_ne!(status, StatusCode::OK);
}

/// 授權期間 on 新增授權經辦人: shown in the list, refused beside its field when it is not a
/// date or ends before it starts.
#[tokio::test]
async fn a_grant_may_have_a_validity_period() {
    let mut app = signed_in().await;
    let serial = serial_of("moica-operator-1");
    let id = id_of("moica-operator-1");
    let post = |from: &'static str, until: &'static str| {
        vec![
            ("serial", serial.clone()),
            ("name", "林志明".to_string()),
            ("national_id", id.clone()),
            ("certificate", String::new()),
            ("functions", "enroll".to_string()),
            ("valid_from", from.to_string()),
            ("valid_until", until.to_string()),
        ]
    };
    for (from, until, field) in [
        ("2026-02-30", "", "valid_from"),
        ("2026-06-30", "2026-06-01", "valid_until"),
    ] {
        let fields = post(from, until);
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, html) = app.post_form("/admin/operators", &pairs).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
        assert!(
            html.contains(&format!("id=\"{field}-error\"")),
            "{field}: {html}"
        );
    }
    let fields = post("2026-06-01", "2026-06-30");
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, html) = app.post_form("/admin/operators", &pairs).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    let (_, _, html) = app.get("/admin/operators").await;
    assert!(html.contains("2026/06/01 ～ 2026/06/30"), "{html}");
    assert!(!html.contains("不在授權期間"), "{html}");
}
