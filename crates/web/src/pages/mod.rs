//! The pages of the manual, one module per function group.

use crate::AppState;
use crate::session::Session;
use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;

mod admin;
mod backoffice;
mod flows;
mod home;
mod operator;
mod receipts;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(home::router())
        .merge(flows::router())
        .merge(admin::router())
        .merge(operator::router())
        .merge(receipts::router())
        .merge(backoffice::router())
        .layer(axum::middleware::from_fn(backoffice::guard))
}

/// Every state change from a page: same origin and the session's CSRF token.
pub(crate) fn check_form(
    state: &AppState,
    session: &Session,
    method: &Method,
    headers: &HeaderMap,
    token: &str,
) -> Result<(), Response> {
    let header_token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token_ok = !session.data.csrf.is_empty()
        && (token == session.data.csrf || header_token == session.data.csrf);
    if !crate::security::same_origin(state, method, headers) || !token_ok {
        return Err(crate::error::page(
            state,
            StatusCode::FORBIDDEN,
            "無法完成作業",
            "頁面已逾時或來源不符，請重新整理頁面後再操作".into(),
        ));
    }
    Ok(())
}

/// 429 with a page that says when to try again.
pub(crate) fn too_many(state: &AppState) -> Response {
    crate::error::page(
        state,
        StatusCode::TOO_MANY_REQUESTS,
        "操作過於頻繁",
        "您的操作過於頻繁，請稍候一分鐘後再試".into(),
    )
}

/// A form whose only field is the CSRF token (buttons that change state).
#[derive(serde::Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub _csrf: String,
}

/// POST /admin/logout and /operator/logout: ends the session (record deleted, cookie cleared).
pub(crate) async fn logout(
    axum::extract::State(state): axum::extract::State<AppState>,
    session: crate::session::SessionHandle,
    method: Method,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    let s = session.get();
    if let Err(r) = check_form(&state, &s, &method, &headers, &form._csrf) {
        return r;
    }
    session.update(|s| s.end());
    axum::response::IntoResponse::into_response(axum::response::Redirect::to("/"))
}

/// A Taipei calendar date typed as YYYY-MM-DD or YYYY/MM/DD.
pub(crate) fn parse_day(s: &str) -> Option<time::Date> {
    let mut parts = s.trim().split(['-', '/']);
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let d: u8 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
}

/// The first instant of a Taipei calendar day.
pub(crate) fn start_of(d: time::Date) -> time::OffsetDateTime {
    d.midnight().assume_offset(domain::clock::TAIPEI)
}
