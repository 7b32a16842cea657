//! The flows of F1, F2 (its two card steps), F3, F4.2, F4.3 and F5 as pages: terms, card steps
//! (the page's script asks for a challenge, has the card agent sign it, and posts the proof —
//! the PIN never reaches certreg), the mismatch review form, the confirmation page and the
//! result pages. Every POST redirects (post/redirect/get), so back and refresh repeat nothing.

use super::{CsrfForm, check_form, too_many};
use crate::AppState;
use crate::card_step::{self, CardDone, CardFailure, CardRequest, Door};
use crate::error;
use crate::render::{Layout, render};
use crate::security::{Bucket, ClientAddr, LimitKey};
use crate::session::{FlowResult, SessionHandle};
use askama::Template;
use axum::Json;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use domain::DomainError;
use domain::flow::{Flow, FlowKind, Step};
use domain::service::ContactInput;
use serde::Deserialize;
use serde_json::json;

/// What a step's page says, from the manual's figures.
pub(crate) struct StepView {
    pub figure: &'static str,
    pub title: &'static str,
    pub instructions: &'static str,
    pub ask_code: bool,
    pub ask_id: bool,
    /// `organization` or `citizen`: which card to insert.
    pub card: &'static str,
}

pub(crate) fn kind_title(kind: FlowKind) -> &'static str {
    match kind {
        FlowKind::FirstRegistration => "首次註冊",
        FlowKind::AdminLogin => "授權指派",
        FlowKind::ReplaceOrg => "更換機關憑證",
        FlowKind::ReplaceAdmin => "更換授權管理者自然人憑證",
        FlowKind::ReplaceBoth => "更換機關憑證和更換授權管理者自然人憑證",
        FlowKind::QueryOrgOid => "查詢機關憑證 OID",
        FlowKind::QueryCitizenSerial => "查詢自然人憑證序號",
        FlowKind::OperatorLogin => "經辦人登入",
        FlowKind::ReviewerLogin => "本部審核人員登入",
    }
}

const ORG_INSTR: &str = "請插入機關憑證，並輸入機關代號與機關憑證密碼(PIN 碼)，點選確認按鈕。";
const NEW_ORG_INSTR: &str =
    "請插入更換後機關憑證，並輸入機關代號與更換後機關憑證密碼(PIN 碼)，點選確認按鈕。";
const ADMIN_INSTR: &str = "請插入授權管理者自然人憑證，並輸入授權管理者身分證統一編號與自然人憑證密碼(PIN 碼)，點選確認按鈕。";
const NEW_ADMIN_INSTR: &str = "請插入更換後授權管理者自然人憑證，並輸入授權管理者身分證統一編號與自然人憑證密碼(PIN 碼)，點選確認按鈕。";

pub(crate) fn step_view(kind: FlowKind, step: Step) -> StepView {
    use FlowKind as K;
    use Step as S;
    let org = |figure, title, instructions| StepView {
        figure,
        title,
        instructions,
        ask_code: true,
        ask_id: false,
        card: "organization",
    };
    let citizen = |figure, title, instructions| StepView {
        figure,
        title,
        instructions,
        ask_code: false,
        ask_id: true,
        card: "citizen",
    };
    match (kind, step) {
        (K::FirstRegistration, S::OrgCard) => org("圖3-5", "首次註冊－機關憑證確認", ORG_INSTR),
        (K::FirstRegistration, _) => citizen("圖3-8", "首次註冊－自然人憑證確認", ADMIN_INSTR),
        (K::AdminLogin, S::OrgCard) => org("圖3-12", "授權指派－機關憑證確認", ORG_INSTR),
        (K::AdminLogin, _) => citizen("圖3-13", "授權指派－自然人憑證確認", ADMIN_INSTR),
        (K::ReplaceOrg, S::NewOrgCard) => {
            org("圖3-24", "更換機關憑證－機關憑證確認", NEW_ORG_INSTR)
        }
        (K::ReplaceOrg, _) => citizen("圖3-25", "更換機關憑證－自然人憑證確認", ADMIN_INSTR),
        (K::ReplaceAdmin, S::OrgCard) => org(
            "圖3-29",
            "更換授權管理者自然人憑證－機關憑證確認",
            ORG_INSTR,
        ),
        (K::ReplaceAdmin, _) => citizen(
            "圖3-30",
            "更換授權管理者自然人憑證－自然人憑證確認",
            NEW_ADMIN_INSTR,
        ),
        (K::ReplaceBoth, S::NewOrgCard) => org(
            "圖3-34",
            "更換機關憑證和更換授權管理者自然人憑證－機關憑證確認",
            NEW_ORG_INSTR,
        ),
        (K::ReplaceBoth, _) => citizen(
            "圖3-35",
            "更換機關憑證和更換授權管理者自然人憑證－自然人憑證確認",
            NEW_ADMIN_INSTR,
        ),
        (K::QueryOrgOid, _) => org("圖3-40", "查詢機關憑證 OID－機關憑證確認", ORG_INSTR),
        (K::QueryCitizenSerial, _) => citizen(
            "圖3-42",
            "查詢自然人憑證序號－自然人憑證確認",
            "請插入自然人憑證，並輸入身分證統一編號與自然人憑證 IC 卡密碼(PIN 碼)，點選確認按鈕。",
        ),
        (K::OperatorLogin, _) => StepView {
            figure: "",
            title: "經辦人登入",
            instructions: "請插入經辦人自然人憑證，並輸入機關代號、身分證統一編號與自然人憑證密碼(PIN 碼)，點選確認按鈕。",
            ask_code: true,
            ask_id: true,
            card: "citizen",
        },
        (K::ReviewerLogin, _) => StepView {
            figure: "",
            title: "本部審核人員登入",
            instructions: "請插入審核人員自然人憑證，並輸入自然人憑證密碼(PIN 碼)，點選確認按鈕。",
            ask_code: false,
            ask_id: false,
            card: "citizen",
        },
    }
}

/// The layout of a flow's page: the reviewer login has the back office's (no agency menu).
fn flow_layout(state: &AppState, s: &crate::session::Session, kind: FlowKind) -> Layout {
    let mut layout = state.layout_for(s);
    layout.backoffice |= kind == FlowKind::ReviewerLogin;
    layout
}

fn terms_figure(kind: FlowKind) -> &'static str {
    match kind {
        FlowKind::ReplaceOrg => "圖3-23",
        FlowKind::ReplaceAdmin => "圖3-28",
        FlowKind::ReplaceBoth => "圖3-33",
        _ => "圖3-4",
    }
}

fn confirm_figure(kind: FlowKind) -> (&'static str, &'static str) {
    match kind {
        FlowKind::ReplaceOrg => ("圖3-26", "更換機關憑證"),
        FlowKind::ReplaceAdmin => ("圖3-31", "更換授權管理者自然人憑證"),
        FlowKind::ReplaceBoth => ("圖3-36", "更換機關憑證和更換授權管理者自然人憑證"),
        _ => ("圖3-9", "首次註冊"),
    }
}

#[derive(Template)]
#[template(path = "terms.html")]
struct TermsPage {
    layout: Layout,
    flow_id: String,
    figure: &'static str,
    title: String,
    terms_version: String,
}

#[derive(Template)]
#[template(path = "card_step.html")]
struct CardStepPage {
    layout: Layout,
    flow_id: String,
    view: StepView,
    error: Option<String>,
    code_error: Option<String>,
    id_error: Option<String>,
    code_value: String,
    id_value: String,
}

#[derive(Template)]
#[template(path = "review.html")]
struct ReviewPage {
    layout: Layout,
    flow_id: String,
    title: String,
    org_name: String,
    org_identifier: String,
    name_error: Option<String>,
    phone_error: Option<String>,
    name_value: String,
    phone_value: String,
}

/// Certificate lines shown on the confirmation page.
struct CertLine {
    label: &'static str,
    value: String,
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    layout: Layout,
    flow_id: String,
    figure: &'static str,
    title: &'static str,
    org_lines: Vec<CertLine>,
    admin_lines: Vec<CertLine>,
    values: ContactValues,
    errors: ContactErrors,
}

#[derive(Default)]
struct ContactValues {
    name: String,
    email: String,
    phone: String,
    phone_ext: String,
    mobile: String,
    unit: String,
    title: String,
}

#[derive(Default)]
struct ContactErrors {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    phone_ext: Option<String>,
    mobile: Option<String>,
    unit: Option<String>,
    title: Option<String>,
    general: Option<String>,
}

#[derive(Template)]
#[template(path = "result.html")]
struct ResultPage {
    layout: Layout,
    figure: &'static str,
    title: String,
    ok: bool,
    message: String,
    lines: Vec<CertLine>,
    next: Option<(&'static str, &'static str)>,
}

fn fmt_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(domain::clock::TAIPEI);
    format!("{:04}/{:02}/{:02}", t.year(), u8::from(t.month()), t.day())
}

async fn owned_flow(state: &AppState, id: &str, session_id: &str) -> Result<Flow, Response> {
    state
        .svc()
        .session_flow(id, session_id)
        .await
        .map_err(|e| error::domain_page(state, &e))
}

/// A state change on one of the session's flows: CSRF and Origin first, then ownership.
async fn posted_flow(
    state: &AppState,
    session: &crate::session::Session,
    method: &Method,
    headers: &HeaderMap,
    csrf: &str,
    id: &str,
) -> Result<Flow, Response> {
    check_form(state, session, method, headers, csrf)?;
    owned_flow(state, id, &session.id).await
}

fn no_such_function(state: &AppState) -> Response {
    error::page(
        state,
        StatusCode::NOT_FOUND,
        "查無此功能",
        "查無此功能".into(),
    )
}

#[derive(Template)]
#[template(path = "flow_start.html")]
struct StartPage {
    layout: Layout,
    kind: &'static str,
    title: &'static str,
}

/// GET /flows/new/{kind}: the flow's door; reading it stores nothing.
async fn start_page(
    State(state): State<AppState>,
    session: SessionHandle,
    Path(kind): Path<String>,
) -> Response {
    let Some(kind) = FlowKind::parse(&kind) else {
        return no_such_function(&state);
    };
    render(&StartPage {
        layout: flow_layout(&state, &session.get(), kind),
        kind: kind.as_str(),
        title: kind_title(kind),
    })
}

/// POST /flows/new/{kind}: starts a flow (the session is stored from here on) and shows its
/// first step. Starts count per client address, and a session holds a bounded number of flows.
async fn start(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    method: Method,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(kind) = FlowKind::parse(&kind) else {
        return no_such_function(&state);
    };
    let s = session.get();
    if let Err(r) = check_form(&state, &s, &method, &headers, &form._csrf) {
        return r;
    }
    let limits = state.config().limits;
    if !state.limiter().hit(
        LimitKey::client(Bucket::Start, addr),
        limits.sessions_per_client,
        state.now(),
    ) {
        return too_many(&state);
    }
    match state
        .svc()
        .start_flow_capped(kind, &s.id, limits.flows_per_session)
        .await
    {
        Ok(flow) => {
            // The flow names this session: it must be on file from now on.
            session.update(|s| {
                s.data_mut();
            });
            Redirect::to(&format!("/flows/{}", flow.id)).into_response()
        }
        Err(e) => error::domain_page(&state, &e),
    }
}

/// GET /flows/{id}: the flow's current step.
async fn show(
    State(state): State<AppState>,
    session: SessionHandle,
    Path(id): Path<String>,
) -> Response {
    let s = session.get();
    let flow = match owned_flow(&state, &id, &s.id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Err(e) = flow.expect(&s.id, flow.step, state.now()) {
        if flow.step == Step::Done {
            return Redirect::to(&format!("/flows/{id}/result")).into_response();
        }
        return error::domain_page(&state, &e);
    }
    let layout = flow_layout(&state, &s, flow.kind);
    match flow.step {
        Step::Terms => render(&TermsPage {
            layout,
            flow_id: flow.id.clone(),
            figure: terms_figure(flow.kind),
            title: format!("{}－用戶約定條款", kind_title(flow.kind)),
            terms_version: state.svc().config().terms_version.clone(),
        }),
        Step::Confirm => render(&confirm_page(&state, layout, &flow, None, None)),
        Step::OrgCard | Step::NewOrgCard if flow.data.mismatch => {
            render(&review_page(layout, &flow, None, None, "", ""))
        }
        _ => render(&CardStepPage {
            layout,
            flow_id: flow.id.clone(),
            view: step_view(flow.kind, flow.step),
            error: None,
            code_error: None,
            id_error: None,
            code_value: flow
                .data
                .code
                .as_ref()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default(),
            id_value: String::new(),
        }),
    }
}

fn review_page(
    layout: Layout,
    flow: &Flow,
    name_error: Option<String>,
    phone_error: Option<String>,
    name: &str,
    phone: &str,
) -> ReviewPage {
    let org = flow.data.org.as_ref();
    ReviewPage {
        layout,
        flow_id: flow.id.clone(),
        title: format!("{}－機關憑證比對不符", kind_title(flow.kind)),
        org_name: org.map(|o| o.org_name.clone()).unwrap_or_default(),
        org_identifier: org
            .map(|o| o.org_identifier.as_str().to_string())
            .unwrap_or_default(),
        name_error,
        phone_error,
        name_value: name.to_string(),
        phone_value: phone.to_string(),
    }
}

fn confirm_page(
    state: &AppState,
    layout: Layout,
    flow: &Flow,
    values: Option<ContactValues>,
    errors: Option<ContactErrors>,
) -> ConfirmPage {
    let (figure, title) = confirm_figure(flow.kind);
    let mut org_lines = Vec::new();
    let mut admin_lines = Vec::new();
    // Replacements that keep a certificate show the registered one.
    let org = flow.data.org.clone();
    if let Some(o) = &org {
        org_lines = vec![
            CertLine {
                label: "機關名稱",
                value: o.org_name.clone(),
            },
            CertLine {
                label: "機關憑證 OID",
                value: o.org_identifier.as_str().to_string(),
            },
            CertLine {
                label: "憑證序號",
                value: o.cert.serial.as_str().to_string(),
            },
            CertLine {
                label: "有效期限",
                value: format!(
                    "{} ～ {}",
                    fmt_date(o.cert.not_before),
                    fmt_date(o.cert.not_after)
                ),
            },
            CertLine {
                label: "簽發單位",
                value: o.cert.issuer.clone(),
            },
        ];
    }
    if let Some(a) = &flow.data.admin_card {
        admin_lines = vec![
            CertLine {
                label: "姓名",
                value: a.holder_name.clone(),
            },
            CertLine {
                label: "憑證序號",
                value: a.cert.serial.as_str().to_string(),
            },
            CertLine {
                label: "有效期限",
                value: format!(
                    "{} ～ {}",
                    fmt_date(a.cert.not_before),
                    fmt_date(a.cert.not_after)
                ),
            },
        ];
    }
    let _ = state;
    // 更換機關憑證 keeps the administrator: the data on file is offered for editing. The other
    // replacements ask for it anew (R3.2, R3.3).
    let values = values.unwrap_or_else(|| match (&flow.data.admin_contact, flow.kind) {
        (Some(c), FlowKind::ReplaceOrg) => ContactValues {
            name: c.name.as_str().to_string(),
            email: c.email.as_str().to_string(),
            phone: c.phone.as_str().to_string(),
            phone_ext: c.phone_ext.clone().unwrap_or_default(),
            mobile: c
                .mobile
                .as_ref()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
            unit: c.unit.clone().unwrap_or_default(),
            title: c.title.clone().unwrap_or_default(),
        },
        _ => ContactValues::default(),
    });
    ConfirmPage {
        layout,
        flow_id: flow.id.clone(),
        figure,
        title,
        org_lines,
        admin_lines,
        values,
        errors: errors.unwrap_or_default(),
    }
}

/// POST /flows/{id}/terms: 同意條款內容.
async fn agree(
    State(state): State<AppState>,
    session: SessionHandle,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let s = session.get();
    if let Err(r) = check_form(&state, &s, &method, &headers, &form._csrf) {
        return r;
    }
    match state.svc().agree_terms(&id, &s.id).await {
        Ok(_) | Err(DomainError::WrongStep) => {
            Redirect::to(&format!("/flows/{id}")).into_response()
        }
        Err(e) => error::domain_page(&state, &e),
    }
}

/// POST /flows/{id}/challenge (fetch from the page): a challenge for the current card step.
async fn challenge(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = session.get();
    if check_form(&state, &s, &method, &headers, "").is_err() {
        return error::api_code(
            StatusCode::FORBIDDEN,
            "csrf",
            "頁面已逾時或來源不符，請重新整理頁面後再操作",
        );
    }
    if !state.limiter().hit(
        LimitKey::client(Bucket::CardStep, addr),
        state.config().limits.card_steps_per_client,
        state.now(),
    ) {
        return error::api_code(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "您的操作過於頻繁，請稍候一分鐘後再試",
        );
    }
    match state.svc().issue_challenge(&id, &s.id).await {
        Ok(c) => Json(json!({"challenge_id": c.id, "tbs": c.tbs})).into_response(),
        Err(e) => error::api(&e),
    }
}

#[derive(Deserialize)]
struct CardForm {
    #[serde(default)]
    _csrf: String,
    #[serde(default)]
    challenge_id: String,
    #[serde(default)]
    signature: String,
    #[serde(default)]
    certificate: String,
    #[serde(default)]
    institution_code: String,
    #[serde(default)]
    national_id: String,
}

/// POST /flows/{id}/card: the proof and the fields typed beside it (`card_step.rs`).
async fn card(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CardForm>,
) -> Response {
    let s = session.get();
    if let Err(r) = check_form(&state, &s, &method, &headers, &form._csrf) {
        return r;
    }
    let req = CardRequest {
        flow_id: id.clone(),
        challenge_id: form.challenge_id,
        signature: form.signature,
        certificate: Some(form.certificate),
        institution_code: Some(form.institution_code.clone()),
        national_id: Some(form.national_id.clone()),
    };
    let (flow, e) = match card_step::submit(&state, &session, addr, Door::Pages, req).await {
        Ok(CardDone::Advanced(_) | CardDone::ReviewNeeded(_)) => {
            return Redirect::to(&format!("/flows/{id}")).into_response();
        }
        Ok(CardDone::Admin(_)) => return Redirect::to("/admin/operators").into_response(),
        Ok(CardDone::Operator(_)) => return Redirect::to("/operator").into_response(),
        Ok(CardDone::Reviewer) => return Redirect::to("/backoffice/reviews").into_response(),
        Ok(CardDone::Answered(_)) => {
            return Redirect::to(&format!("/flows/{id}/result")).into_response();
        }
        Err(CardFailure::NoFlow(e)) => return error::domain_page(&state, &e),
        Err(CardFailure::RateLimited) => return too_many(&state),
        Err(CardFailure::Refused(_, e @ DomainError::Storage(_))) => {
            return error::domain_page(&state, &e);
        }
        Err(CardFailure::Refused(flow, e)) => (flow, e),
    };
    let (mut code_error, mut id_error, mut general) = (None, None, None);
    match &e {
        DomainError::Invalid {
            field: "institution_code",
            ..
        }
        | DomainError::UnknownAgency => code_error = Some(e.message_zh()),
        DomainError::Invalid {
            field: "national_id",
            ..
        }
        | DomainError::IdMismatch => id_error = Some(e.message_zh()),
        _ => general = Some(e.message_zh()),
    }
    let page = CardStepPage {
        layout: flow_layout(&state, &session.get(), flow.kind),
        flow_id: id,
        view: step_view(flow.kind, flow.step),
        error: general,
        code_error,
        id_error,
        code_value: form.institution_code,
        id_value: form.national_id,
    };
    (error::status_of(&e), render(&page)).into_response()
}

#[derive(Deserialize)]
struct ReviewForm {
    #[serde(default)]
    _csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    phone: String,
}

/// POST /flows/{id}/review: 確認 on 圖3-6.
async fn review(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReviewForm>,
) -> Response {
    let s = session.get();
    let flow = match posted_flow(&state, &s, &method, &headers, &form._csrf, &id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let client = addr.map(|a| a.to_string());
    match state
        .svc()
        .file_review(&id, &s.id, &form.name, &form.phone, client.as_deref())
        .await
    {
        Ok((application, section)) => {
            let result = FlowResult::Review {
                flow_id: id.clone(),
                application: application.id,
                switchboard: state.svc().config().contacts.switchboard.clone(),
                section: section.as_ref().map(|c| c.section.label_zh().to_string()),
                extension: section.map(|c| c.extension),
            };
            session.update(|s| s.data_mut().result = Some(result));
            Redirect::to(&format!("/flows/{id}/result")).into_response()
        }
        Err(DomainError::Invalid {
            field, message_zh, ..
        }) => {
            let (n, p) = if field == "applicant_name" {
                (Some(message_zh), None)
            } else {
                (None, Some(message_zh))
            };
            let page = review_page(state.layout_for(&s), &flow, n, p, &form.name, &form.phone);
            (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response()
        }
        Err(e) => error::domain_page(&state, &e),
    }
}

#[derive(Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    _csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    phone_ext: String,
    #[serde(default)]
    mobile: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    title: String,
}

/// POST /flows/{id}/confirm: the final 確認 (R1.5, R3.x) — takes effect once.
async fn confirm(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ConfirmForm>,
) -> Response {
    let s = session.get();
    let flow = match posted_flow(&state, &s, &method, &headers, &form._csrf, &id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let contact = ContactInput {
        name: form.name.clone(),
        email: form.email.clone(),
        phone: form.phone.clone(),
        phone_ext: form.phone_ext.clone(),
        mobile: form.mobile.clone(),
        unit: form.unit.clone(),
        title: form.title.clone(),
    };
    let client = addr.map(|a| a.to_string());
    match state
        .svc()
        .confirm(&id, &s.id, &contact, client.as_deref())
        .await
    {
        Ok(reg) => {
            session.update(|s| {
                // A replacement ended the agency's administrator sessions, this one's too when
                // it was one: it goes on without the grant, so the result below still shows.
                if flow.kind != FlowKind::FirstRegistration
                    && s.data.admin.as_ref().is_some_and(|a| a.code == reg.code)
                {
                    s.drop_admin();
                }
                s.data_mut().result = Some(FlowResult::Registration {
                    flow_id: id.clone(),
                    code: reg.code.as_str().to_string(),
                    org_name: reg.org.org_name.clone(),
                    admin_name: reg.admin.name.as_str().to_string(),
                })
            });
            Redirect::to(&format!("/flows/{id}/result")).into_response()
        }
        // Back button or double click after success: show the result again.
        Err(DomainError::AlreadyConfirmed) => {
            Redirect::to(&format!("/flows/{id}/result")).into_response()
        }
        Err(e) => {
            let mut errors = ContactErrors::default();
            match &e {
                DomainError::Invalid {
                    field, message_zh, ..
                } => {
                    let slot = match *field {
                        "name" => &mut errors.name,
                        "email" => &mut errors.email,
                        "phone" => &mut errors.phone,
                        "phone_ext" => &mut errors.phone_ext,
                        "mobile" => &mut errors.mobile,
                        "unit" => &mut errors.unit,
                        "title" => &mut errors.title,
                        _ => &mut errors.general,
                    };
                    *slot = Some(message_zh.clone());
                }
                DomainError::Storage(_) => return error::domain_page(&state, &e),
                other => errors.general = Some(other.message_zh()),
            }
            let values = ContactValues {
                name: form.name,
                email: form.email,
                phone: form.phone,
                phone_ext: form.phone_ext,
                mobile: form.mobile,
                unit: form.unit,
                title: form.title,
            };
            let page = confirm_page(
                &state,
                state.layout_for(&s),
                &flow,
                Some(values),
                Some(errors),
            );
            (error::status_of(&e), render(&page)).into_response()
        }
    }
}

/// GET /flows/{id}/result: what the finished flow did.
async fn result(
    State(state): State<AppState>,
    session: SessionHandle,
    Path(id): Path<String>,
) -> Response {
    let s = session.get();
    let flow = match owned_flow(&state, &id, &s.id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    // The result kept in the session is shown only on its own flow's page.
    let Some(r) = s.data.result.clone().filter(|r| r.flow_id() == id) else {
        return Redirect::to(&format!("/flows/{id}")).into_response();
    };
    let line = |label: &'static str, value: &str| CertLine {
        label,
        value: value.to_string(),
    };
    let layout = state.layout_for(&s);
    let page = match &r {
        FlowResult::Registration {
            code,
            org_name,
            admin_name,
            ..
        } => {
            let lines = vec![
                line("機關代號", code),
                line("機關名稱", org_name),
                line("授權管理者", admin_name),
            ];
            let next = Some(("/flows/new/admin_login", "授權指派"));
            if flow.kind == FlowKind::FirstRegistration {
                ResultPage {
                    layout,
                    figure: "圖3-10",
                    title: "首次註冊".into(),
                    ok: true,
                    message: "首次註冊成功。請點選左方功能列【授權指派】，設定經辦人及其系統權限。"
                        .into(),
                    lines,
                    next,
                }
            } else {
                ResultPage {
                    layout,
                    figure: match flow.kind {
                        FlowKind::ReplaceOrg => "圖3-27",
                        FlowKind::ReplaceAdmin => "圖3-32",
                        _ => "圖3-37",
                    },
                    title: kind_title(flow.kind).into(),
                    ok: true,
                    message: format!("{}成功。", kind_title(flow.kind)),
                    lines,
                    next,
                }
            }
        }
        FlowResult::Review {
            switchboard,
            section,
            extension,
            ..
        } => {
            let mut msg = "已送出憑證註冊審核申請。送出申請後請於次一營業日再重新註冊，如審核不通過，本部會主動聯絡申請人。".to_string();
            msg.push_str(&format!(" 連絡電話：總機 {switchboard}"));
            if let Some(section) = section.as_deref().filter(|s| !s.is_empty()) {
                let extension = extension.as_deref().unwrap_or_default();
                msg.push_str(&format!("，{section} 分機 {extension}"));
            }
            ResultPage {
                layout,
                figure: "圖3-7",
                title: format!("{}－機關憑證比對不符", kind_title(flow.kind)),
                ok: true,
                message: msg,
                lines: vec![],
                next: None,
            }
        }
        FlowResult::OrgOid {
            agency_name,
            org_name,
            org_identifier,
            matches,
            ..
        } => ResultPage {
            layout,
            figure: "圖3-41",
            title: "查詢機關憑證 OID－查詢結果".into(),
            ok: true,
            message: if *matches {
                "此機關憑證 OID 與本部資料相符。".into()
            } else {
                "此機關憑證 OID 與本部資料不符，辦理註冊時將需審核。".into()
            },
            lines: vec![
                line("機關名稱", agency_name),
                line("憑證機關名稱", org_name),
                line("機關憑證 OID", org_identifier),
            ],
            next: None,
        },
        FlowResult::CitizenSerial { name, serial, .. } => ResultPage {
            layout,
            figure: "圖3-43",
            title: "查詢自然人憑證序號－查詢結果".into(),
            ok: true,
            message: "請複製下列憑證序號，提供授權管理者設定經辦人使用。".into(),
            lines: vec![line("姓名", name), line("自然人憑證序號", serial)],
            next: None,
        },
    };
    render(&page)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/flows/new/{kind}", get(start_page).post(start))
        .route("/flows/{id}", get(show))
        .route("/flows/{id}/terms", post(agree))
        .route("/flows/{id}/challenge", post(challenge))
        .route("/flows/{id}/card", post(card))
        .route("/flows/{id}/review", post(review))
        .route("/flows/{id}/confirm", post(confirm))
        .route("/flows/{id}/result", get(result))
}
