//! The operator's home after 經辦人登入 (R5.1): who is signed in for which agency, and as its
//! menu only the functions the administrator granted, as they stand now (a change or deletion by
//! the administrator applies at once).

use super::check_form;
use crate::AppState;
use crate::error;
use crate::render::{Layout, render};
use crate::session::SessionHandle;
use askama::Template;
use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

const LOGIN: &str = "/flows/new/operator_login";

#[derive(Template)]
#[template(path = "operator_home.html")]
struct OperatorHome {
    layout: Layout,
    name: String,
    code: String,
    agency_name: String,
    functions: Vec<String>,
    /// 「取得其他系統用權杖」 is offered (a setting; off by default).
    token_page: bool,
}

/// GET /operator
async fn home(State(state): State<AppState>, session: SessionHandle) -> Response {
    let s = session.get();
    let Some(grant) = s.data.operator.clone() else {
        return Redirect::to(LOGIN).into_response();
    };
    // Deleted, re-bound to another card, or its card revoked since the login: the login no
    // longer stands.
    let op = match state.svc().current_operator(&grant).await {
        Ok(Some(op)) => op,
        Ok(None) => {
            session.update(|s| s.data_mut().operator = None);
            return Redirect::to(LOGIN).into_response();
        }
        Err(e) => return error::domain_page(&state, &e),
    };
    let agency_name = match state.svc().agency(&grant.code).await {
        Ok(a) => a.map(|a| a.name).unwrap_or_default(),
        Err(e) => return error::domain_page(&state, &e),
    };
    let catalogue = &state.svc().config().functions;
    let functions = op
        .functions
        .iter()
        .filter_map(|f| catalogue.label(f).map(str::to_string))
        .collect();
    render(&OperatorHome {
        layout: state.layout_for(&s),
        name: op.name.as_str().to_string(),
        code: grant.code.as_str().to_string(),
        agency_name,
        functions,
        token_page: state.config().operator_token_page,
    })
}

#[derive(Template)]
#[template(path = "operator_token.html")]
struct OperatorToken {
    layout: Layout,
    token: String,
    expires_at: String,
}

/// POST /operator/token: a token for other systems (see docs/downstream.md), shown once.
async fn token(
    State(state): State<AppState>,
    session: SessionHandle,
    method: Method,
    headers: HeaderMap,
    Form(form): Form<super::CsrfForm>,
) -> Response {
    if !state.config().operator_token_page {
        return error::page(
            &state,
            axum::http::StatusCode::NOT_FOUND,
            "查無此功能",
            "查無此功能".into(),
        );
    }
    let s = session.get();
    if let Err(r) = check_form(&state, &s, &method, &headers, &form._csrf) {
        return r;
    }
    let audience = match crate::token::allowed_audience(&state, None) {
        Ok(a) => a,
        Err(_) => {
            return error::page(
                &state,
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "無法取得權杖",
                "尚未設定可使用權杖的其他系統，請洽系統管理者".into(),
            );
        }
    };
    match crate::token::mint(&state, &session, &audience).await {
        Ok(Some(issued)) => {
            let mut r = render(&OperatorToken {
                layout: state.layout_for(&session.get()),
                token: issued.token,
                expires_at: issued.expires_at,
            });
            r.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            r
        }
        Ok(None) => Redirect::to(LOGIN).into_response(),
        Err(e) => error::domain_page(&state, &e),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/operator", get(home))
        .route("/operator/logout", post(super::logout))
        .route("/operator/token", post(token))
}
