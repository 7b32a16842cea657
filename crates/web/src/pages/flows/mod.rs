//! The flows of F1, F2 (its two card steps), F3, F4.2, F4.3 and F5 as pages: terms, card steps
//! (the page's script asks for a challenge, has the card agent sign it, and posts the proof —
//! the PIN never reaches certreg), the mismatch review form, the confirmation page and the
//! result pages. Every POST redirects (post/redirect/get), so back and refresh repeat nothing.

mod views;

use super::{CsrfForm, check_form, too_many};
use crate::AppState;
use crate::card_step::{self, CardDone, CardFailure, CardRequest, Door};
use crate::error;
use crate::render::render;
use crate::security::{Bucket, ClientAddr, LimitKey};
use crate::session::{FlowResult, SessionHandle};
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
use views::*;

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

/// GET /flows/new/{kind}: the flow's door; reading it stores nothing.
async fn start_page(
    State(state): State<AppState>,
    session: SessionHandle,
    Path(kind): Path<String>,
) -> Response {
    let Some(kind) = FlowKind::parse(&kind) else {
        return no_such_function(&state);
    };
    let s = session.get();
    // An administrator already signed in for an agency goes back to its 授權經辦人清單 rather
    // than presenting both cards again.
    if kind == FlowKind::AdminLogin && s.data.admin.is_some() {
        return Redirect::to("/admin/operators").into_response();
    }
    let (figure, intro) = start_intro(kind);
    render(&StartPage {
        layout: flow_layout(&state, &s, kind),
        kind: kind.as_str(),
        title: kind_title(kind),
        figure,
        intro,
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
            terms: state.config().terms.clone(),
        }),
        Step::Confirm => render(&confirm_page(layout, &flow, None, None)),
        Step::OrgCard | Step::NewOrgCard if flow.data.mismatch => {
            render(&review_page(layout, &flow, None, None, "", ""))
        }
        _ => render(&CardStepPage {
            layout,
            flow_id: flow.id.clone(),
            view: step_view(flow.kind, flow.step),
            error: None,
            contacts: None,
            another_card: false,
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
    match state
        .svc()
        .issue_challenge_read(session.take_flow(&id), &id, &s.id)
        .await
    {
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
    // While an application waits (or its approval has not yet taken effect) the card gets the
    // 圖3-7 message again, with the numbers to call.
    let contacts = match &e {
        DomainError::ReviewPending | DomainError::ReviewNotYetEffective { .. } => {
            Some(review_contacts(&state, &form.institution_code).await)
        }
        _ => None,
    };
    let page = CardStepPage {
        layout: flow_layout(&state, &session.get(), flow.kind),
        flow_id: id,
        view: step_view(flow.kind, flow.step),
        error: general,
        contacts,
        another_card: needs_another_card(&e),
        code_error,
        id_error,
        code_value: form.institution_code,
        id_value: form.national_id,
    };
    (error::status_of(&e), render(&page)).into_response()
}

/// A refusal of the card itself (of the wrong kind, expired or revoked): the user needs
/// another card, and 憑證申請說明 says where to apply.
fn needs_another_card(e: &DomainError) -> bool {
    use pki::ErrorCode as C;
    matches!(
        e,
        DomainError::Pki(p) if matches!(
            p.code,
            C::WrongRole | C::CertExpired | C::CertRevoked | C::CertNotYetValid | C::KeyUsage
                | C::MissingAttribute
        )
    )
}

/// The numbers to call for the agency of `code`: its section, or every section when its
/// county is unknown (or the agency cannot be read now).
async fn review_contacts(state: &AppState, code: &str) -> ContactsView {
    let directory = &state.svc().config().contacts;
    let county = match domain::types::InstitutionCode::parse(code) {
        Ok(code) => state
            .svc()
            .agency(&code)
            .await
            .ok()
            .flatten()
            .map(|a| a.county),
        Err(_) => None,
    };
    let in_charge = county
        .and_then(|c| directory.section_for(&c))
        .map(|s| s.section);
    contacts_view(directory, in_charge)
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
                in_charge: section.map(|c| c.section),
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
                    terms_version: flow.data.terms_version.clone(),
                    at: reg.updated_at.unix_timestamp(),
                    org_serial: reg.org.cert.serial.as_str().to_string(),
                    admin_serial: reg.admin_card.cert.serial.as_str().to_string(),
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
            let page = confirm_page(state.layout_for(&s), &flow, Some(values), Some(errors));
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
    let contacts = &state.svc().config().contacts;
    render(&views::result_page(
        state.layout_for(&s),
        flow.kind,
        &r,
        contacts,
    ))
}

/// GET /flows/{id}/receipt: the printable receipt of 首次註冊 or a replacement.
async fn print_receipt(
    State(state): State<AppState>,
    session: SessionHandle,
    Path(id): Path<String>,
) -> Response {
    let s = session.get();
    let flow = match owned_flow(&state, &id, &s.id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match s.data.result.clone().filter(|r| r.flow_id() == id) {
        Some(FlowResult::Registration {
            code,
            org_name,
            terms_version,
            at,
            org_serial,
            admin_serial,
            ..
        }) => render(&PrintReceipt {
            layout: state.layout_for(&s),
            flow_id: id,
            title: kind_title(flow.kind),
            at: time::OffsetDateTime::from_unix_timestamp(at)
                .map(crate::pages::admin::taipei_time)
                .unwrap_or_default(),
            code,
            org_name,
            org_serial,
            admin_serial,
            terms_version,
        }),
        _ => Redirect::to(&format!("/flows/{id}")).into_response(),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/flows/{id}/receipt", get(print_receipt))
        .route("/flows/new/{kind}", get(start_page).post(start))
        .route("/flows/{id}", get(show))
        .route("/flows/{id}/terms", post(agree))
        .route("/flows/{id}/challenge", post(challenge))
        .route("/flows/{id}/card", post(card))
        .route("/flows/{id}/review", post(review))
        .route("/flows/{id}/confirm", post(confirm))
        .route("/flows/{id}/result", get(result))
}
