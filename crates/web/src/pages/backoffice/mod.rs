//! 本部 back-office pages (F6): the reviewer's citizen-card login (R6.1), the review queue of the
//! reviewer's section with 核准 / 駁回 (R6.2), the decided applications, and the search of
//! agencies, registrations, receipts and the audit log (R6.3). They have their own layout (no
//! agency menu); [`guard`] keeps reviewer sessions off the agency pages and agency sessions off
//! these. Applications of the other section answer 404, exactly as ids nobody has.

mod search;

use super::check_form;
use crate::AppState;
use crate::error;
use crate::render::{Layout, render};
use crate::security::ClientAddr;
use crate::session::{Session, SessionHandle};
use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use domain::DomainError;
use domain::flow::FlowKind;
use domain::model::{ReviewState, Reviewer};
use domain::service::{ReviewCase, ReviewList};
use serde::Deserialize;

pub(crate) const LOGIN: &str = "/backoffice/login";
const QUEUE: &str = "/backoffice/reviews";

#[derive(Template)]
#[template(path = "backoffice_denied.html")]
struct DeniedPage {
    layout: Layout,
    message: &'static str,
    login: bool,
}

fn denied(layout: Layout, message: &'static str, login: bool) -> Response {
    (
        StatusCode::FORBIDDEN,
        render(&DeniedPage {
            layout,
            message,
            login,
        }),
    )
        .into_response()
}

/// Role separation (SPEC §4.7): reviewer sessions reach only the back office (and the flow
/// pages of their own login); agency sessions reach the back office only to log in.
pub(crate) async fn guard(req: Request, next: Next) -> Response {
    let Some(handle) = req.extensions().get::<SessionHandle>().cloned() else {
        return next.run(req).await;
    };
    let s = handle.get();
    let path = req.uri().path();
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let reviewer = s.data.reviewer.is_some();
    if reviewer {
        let agency_page = under("/admin")
            || under("/operator")
            || (path.starts_with("/flows/new/")
                && path != format!("/flows/new/{}", FlowKind::ReviewerLogin.as_str()));
        if agency_page {
            let layout = Layout {
                csrf: s.data.csrf.clone(),
                backoffice: true,
                reviewer: s
                    .data
                    .reviewer
                    .as_ref()
                    .map(|r| (r.name.clone(), r.section.label_zh())),
                ..Layout::default()
            };
            return denied(layout, "本部審核人員不得使用要保機關之功能", false);
        }
    } else if under("/backoffice") && path != LOGIN {
        if s.data.admin.is_some() || s.data.operator.is_some() {
            let layout = Layout {
                csrf: s.data.csrf.clone(),
                backoffice: true,
                ..Layout::default()
            };
            return denied(layout, "此功能僅限本部審核人員使用", true);
        }
        return Redirect::to(LOGIN).into_response();
    }
    next.run(req).await
}

/// The session's reviewer as the store has it now: a disabled (or removed) account ends it.
async fn reviewer(
    state: &AppState,
    session: &SessionHandle,
) -> Result<(Session, Reviewer), Response> {
    let s = session.get();
    let Some(r) = s.data.reviewer.clone() else {
        return Err(Redirect::to(LOGIN).into_response());
    };
    match state.svc().reviewer(r.id).await {
        Ok(x) => Ok((s, x)),
        Err(DomainError::NotReviewer) => {
            session.update(|s| s.end());
            Err(denied(
                Layout {
                    backoffice: true,
                    ..Layout::default()
                },
                "審核人員帳號已停用，請洽系統管理者",
                true,
            ))
        }
        Err(e) => Err(error::domain_page(state, &e)),
    }
}

fn not_found(state: &AppState, s: &Session) -> Response {
    let page = DeniedPage {
        layout: state.layout_for(s),
        message: "查無此申請案件",
        login: false,
    };
    (StatusCode::NOT_FOUND, render(&page)).into_response()
}

fn date(d: time::Date) -> String {
    format!("{:04}/{:02}/{:02}", d.year(), u8::from(d.month()), d.day())
}

fn taipei_date(t: time::OffsetDateTime) -> String {
    date(t.to_offset(domain::clock::TAIPEI).date())
}

fn state_label(state: &ReviewState) -> String {
    match state {
        ReviewState::Pending => "審核中".into(),
        ReviewState::Approved { effective, .. } => format!("核准（生效日 {}）", date(*effective)),
        ReviewState::Rejected { .. } => "駁回".into(),
    }
}

/// One application as the back office sees it.
struct Row {
    id: i64,
    code: String,
    agency_name: String,
    county: String,
    on_file: String,
    org_name: String,
    org_identifier: String,
    serial: String,
    validity: String,
    issuer: String,
    applicant_name: String,
    applicant_phone: String,
    filed: String,
    state: String,
    pending: bool,
    decided: String,
    decided_by: String,
    note: String,
}

/// Beside the county of an agency no section is in charge of.
const NO_SECTION: &str = "（未屬任一科，各科皆可審核）";

fn row(c: &ReviewCase) -> Row {
    let a = &c.application;
    let (decided, decided_by, note) = match &a.state {
        ReviewState::Pending => Default::default(),
        ReviewState::Approved {
            decided_at,
            reviewer,
            note,
            ..
        }
        | ReviewState::Rejected {
            decided_at,
            reviewer,
            note,
        } => (
            super::admin::taipei_time(*decided_at),
            reviewer.clone(),
            note.clone(),
        ),
    };
    Row {
        id: a.id,
        code: a.code.as_str().to_string(),
        agency_name: c.agency_name.clone(),
        county: if c.unassigned {
            format!("{}{NO_SECTION}", c.county)
        } else {
            c.county.clone()
        },
        on_file: a
            .on_file
            .as_ref()
            .map(|o| o.as_str().to_string())
            .unwrap_or_else(|| "（無）".into()),
        org_name: a.org.org_name.clone(),
        org_identifier: a.org.org_identifier.as_str().to_string(),
        serial: a.org.cert.serial.as_str().to_string(),
        validity: format!(
            "{} ～ {}",
            taipei_date(a.org.cert.not_before),
            taipei_date(a.org.cert.not_after)
        ),
        issuer: a.org.cert.issuer.clone(),
        applicant_name: a.applicant_name.as_str().to_string(),
        applicant_phone: a.applicant_phone.as_str().to_string(),
        filed: super::admin::taipei_time(a.filed_at),
        state: state_label(&a.state),
        pending: a.state == ReviewState::Pending,
        decided,
        decided_by,
        note,
    }
}

/// GET /backoffice/login: 本部審核人員登入 starts at its flow's door like every flow (its card
/// step is the usual card step page); reading it stores nothing.
async fn login(session: SessionHandle) -> Response {
    if session.get().data.reviewer.is_some() {
        return Redirect::to(QUEUE).into_response();
    }
    Redirect::to(&format!("/flows/new/{}", FlowKind::ReviewerLogin.as_str())).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    _csrf: String,
}

/// POST /backoffice/logout
async fn logout(
    State(state): State<AppState>,
    session: SessionHandle,
    method: Method,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let s = session.get();
    if let Err(r) = check_form(&state, &s, &method, &headers, &form._csrf) {
        return r;
    }
    session.update(|s| s.end());
    Redirect::to(LOGIN).into_response()
}

#[derive(Template)]
#[template(path = "backoffice_reviews.html")]
struct QueuePage {
    layout: Layout,
    decided: bool,
    section: &'static str,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct QueueQuery {
    state: Option<String>,
}

/// GET /backoffice/reviews (pending, oldest first) and ?state=decided (latest decision first):
/// the applications of the reviewer's section.
async fn queue(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    Query(q): Query<QueueQuery>,
) -> Response {
    let (s, r) = match reviewer(&state, &session).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let decided = q.state.as_deref() == Some("decided");
    let list = if decided {
        ReviewList::Decided
    } else {
        ReviewList::Pending
    };
    let client = addr.map(|a| a.to_string());
    let rows = match state.svc().review_list(&r, list, client.as_deref()).await {
        Ok(cases) => cases.iter().map(row).collect(),
        Err(e) => return error::domain_page(&state, &e),
    };
    render(&QueuePage {
        layout: state.layout_for(&s),
        decided,
        section: r.section.label_zh(),
        rows,
    })
}

#[derive(Template)]
#[template(path = "backoffice_review.html")]
struct DetailPage {
    layout: Layout,
    row: Row,
    flash: Option<String>,
    error: Option<String>,
    note_value: String,
}

/// The application if it exists and belongs to the reviewer's section; another section's
/// answers 404 like an id nobody has.
async fn own_application(
    state: &AppState,
    s: &Session,
    r: &Reviewer,
    raw: &str,
) -> Result<ReviewCase, Response> {
    let Some(id) = raw.parse::<i64>().ok().filter(|id| *id > 0) else {
        return Err(not_found(state, s));
    };
    match state.svc().review_case(r, id).await {
        Ok(c) => Ok(c),
        Err(DomainError::ReviewNotFound) => Err(not_found(state, s)),
        Err(e) => Err(error::domain_page(state, &e)),
    }
}

/// GET /backoffice/reviews/{id}
async fn detail(
    State(state): State<AppState>,
    session: SessionHandle,
    Path(id): Path<String>,
) -> Response {
    let (s, r) = match reviewer(&state, &session).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let case = match own_application(&state, &s, &r, &id).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let flash = session.update(|s| {
        if s.data.flash.is_some() {
            s.data_mut().flash.take()
        } else {
            None
        }
    });
    render(&DetailPage {
        layout: state.layout_for(&s),
        row: row(&case),
        flash,
        error: None,
        note_value: String::new(),
    })
}

#[derive(Deserialize)]
struct DecideForm {
    #[serde(default)]
    _csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    note: String,
}

/// POST /backoffice/reviews/{id}: 核准 / 駁回 with a note, then back to the application (PRG).
async fn decide(
    State(state): State<AppState>,
    session: SessionHandle,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecideForm>,
) -> Response {
    let (s, r) = match reviewer(&state, &session).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_form(&state, &s, &method, &headers, &form._csrf) {
        return resp;
    }
    let case = match own_application(&state, &s, &r, &id).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let approve = match form.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => {
            let page = DetailPage {
                layout: state.layout_for(&s),
                row: row(&case),
                flash: None,
                error: Some("請選擇核准或駁回".into()),
                note_value: form.note,
            };
            return (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response();
        }
    };
    match state
        .svc()
        .decide_review(&r, case.application.id, approve, &form.note)
        .await
    {
        Ok(decided) => {
            let message = match decided {
                ReviewState::Approved { effective, .. } => {
                    format!("已核准，生效日 {}", date(effective))
                }
                _ => "已駁回".to_string(),
            };
            session.update(|s| s.data_mut().flash = Some(message));
            Redirect::to(&format!("{QUEUE}/{}", case.application.id)).into_response()
        }
        Err(e @ (DomainError::Invalid { .. } | DomainError::Conflict)) => {
            let message = if e == DomainError::Conflict {
                "此申請案件已審核完成，請勿重複送出".to_string()
            } else {
                e.message_zh()
            };
            let page = DetailPage {
                layout: state.layout_for(&s),
                row: row(&case),
                flash: None,
                error: Some(message),
                note_value: form.note,
            };
            (error::status_of(&e), render(&page)).into_response()
        }
        Err(e) => error::domain_page(&state, &e),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(LOGIN, get(login))
        .route("/backoffice/logout", post(logout))
        .route(QUEUE, get(queue))
        .route("/backoffice/reviews/{id}", get(detail).post(decide))
        .merge(search::router())
}
