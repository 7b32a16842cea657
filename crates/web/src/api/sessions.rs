//! API sessions: a bearer token (the session id) for API clients, logout, and who the session
//! is (R5.1: other systems ask certreg who the session's operator is and what it may do).

use super::flows::{FunctionView, functions_view};
use super::{AnyCaller, Caller};
use crate::AppState;
use crate::error::{ApiError, api};
use crate::security::{Bucket, ClientAddr, LimitKey};
use crate::session::{SessionData, SessionHandle};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionToken {
    /// Send as `Authorization: Bearer <token>`. Idle timeout 15 minutes, absolute 8 hours.
    pub token: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorIdentity {
    /// 憑證序號
    pub serial: String,
    /// 姓名
    pub name: String,
    /// The functions currently granted (the administrator may have changed them since login).
    pub functions: Vec<FunctionView>,
}

/// Who the session is.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// `anonymous`, `admin` (授權管理者 of `code`) or `operator` (經辦人 of `code`).
    #[schema(example = "operator")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<OperatorIdentity>,
}

#[utoipa::path(
    post, path = "/api/v1/sessions", operation_id = "create_session", tag = "sessions",
    responses(
        (status = 201, description = "A new, unauthenticated API session; its card flows (admin_login, operator_login) give it rights", body = SessionToken),
        (status = 429, description = "rate_limited: sessions made per client address", body = ApiError),
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    handle: SessionHandle,
) -> Response {
    let now = state.now();
    let key = LimitKey::client(Bucket::Start, addr);
    if !state
        .limiter()
        .hit(key, state.config().limits.sessions_per_client, now)
    {
        return super::rate_limited();
    }
    let fresh = handle.get();
    let token = if fresh.is_new() {
        // The session layer started one for this request: hand it out as a bearer session (no
        // cookie is set for it).
        handle.update(|s| {
            s.bearer = true;
            s.data_mut();
            s.token().to_string()
        })
    } else {
        // The caller already has a session (cookie or bearer): the new one is separate and
        // leaves that one alone.
        let data = SessionData {
            csrf: crate::security::random_token(),
            ..Default::default()
        };
        let token = crate::security::random_token();
        let record = domain::store::SessionRecord {
            id: domain::store::session_key(&token),
            kind: "anonymous".into(),
            code: None,
            data: serde_json::to_string(&data).unwrap_or_default(),
            created_at: now,
            touched_at: now,
            expires_at: now + crate::session::IDLE,
            version: 1,
        };
        if let Err(e) = state.db().session_insert(&record).await {
            return api(&domain::DomainError::Storage(e.to_string()));
        }
        token
    };
    (
        StatusCode::CREATED,
        Json(SessionToken {
            token,
            expires_at: super::rfc3339(now + crate::session::IDLE),
        }),
    )
        .into_response()
}

#[utoipa::path(
    delete, path = "/api/v1/sessions/current", operation_id = "end_session", tag = "sessions",
    responses(
        (status = 204, description = "Logged out: the session and its grants are gone"),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "csrf (cookie requests only)", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(AnyCaller(caller): AnyCaller) -> Response {
    caller.handle.update(|s| s.end());
    StatusCode::NO_CONTENT.into_response()
}

#[utoipa::path(
    get, path = "/api/v1/session", operation_id = "current_session", tag = "sessions",
    responses(
        (status = 200, description = "R5.1: who the session is and, for an operator, what it may do now", body = SessionView),
        (status = 401, description = "unauthorized", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn current(State(state): State<AppState>, caller: Caller) -> Response {
    let data = &caller.session.data;
    if let Some(a) = &data.admin {
        return Json(SessionView {
            kind: "admin".into(),
            code: Some(a.code.as_str().into()),
            operator: None,
        })
        .into_response();
    }
    let Some(grant) = &data.operator else {
        return Json(SessionView {
            kind: "anonymous".into(),
            code: None,
            operator: None,
        })
        .into_response();
    };
    // Other systems act on this answer, so it is today's grant: an operator deleted, re-bound
    // to another card or whose card was revoked since login is no longer one.
    let current = match state.svc().current_operator(grant).await {
        Ok(op) => op,
        Err(e) => return api(&e),
    };
    match current {
        Some(op) => Json(SessionView {
            kind: "operator".into(),
            code: Some(grant.code.as_str().into()),
            operator: Some(OperatorIdentity {
                serial: op.serial.as_str().into(),
                name: op.name.as_str().into(),
                functions: functions_view(&state, &op.functions),
            }),
        })
        .into_response(),
        None => {
            caller.handle.update(|s| s.data_mut().operator = None);
            Json(SessionView {
                kind: "anonymous".into(),
                code: None,
                operator: None,
            })
            .into_response()
        }
    }
}
