//! Errors as the user sees them: a zh-TW page with the status and, for unexpected failures, an
//! opaque message with a request id (the cause goes to the log); the API gets `{code, message}`.

use crate::AppState;
use crate::render::{Layout, render};
use askama::Template;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::DomainError;

/// The HTTP status of a domain refusal.
pub fn status_of(e: &DomainError) -> StatusCode {
    use DomainError as E;
    match e {
        // One code, one status: the proof check's expiry answers like the store's.
        E::Pki(p) if p.code == pki::ErrorCode::ChallengeExpired => StatusCode::GONE,
        E::Invalid { .. } | E::Pki(_) | E::IdMismatch | E::SameCertificate | E::OrgIdMismatch => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        E::UnknownAgency | E::FlowNotFound | E::OperatorNotFound | E::ReviewNotFound => {
            StatusCode::NOT_FOUND
        }
        E::AlreadyRegistered
        | E::DuplicateOperator
        | E::Conflict
        | E::AlreadyConfirmed
        | E::RegistrationChanged
        | E::ReviewPending
        | E::ReviewNotYetEffective { .. } => StatusCode::CONFLICT,
        E::NotRegistered | E::WrongStep | E::OrgCardChanged | E::AdminCardChanged => {
            StatusCode::CONFLICT
        }
        E::NotAdministrator
        | E::NotOperator
        | E::OperatorSerialChanged
        | E::NotReviewer
        | E::GrantExpired { .. }
        | E::GrantNotYetValid { .. }
        | E::Forbidden => StatusCode::FORBIDDEN,
        E::FlowExpired | E::ChallengeUsed => StatusCode::GONE,
        E::TooManyFlows => StatusCode::TOO_MANY_REQUESTS,
        E::Busy => StatusCode::SERVICE_UNAVAILABLE,
        E::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    title: &'a str,
    message: String,
    request_id: Option<String>,
}

/// A page showing `message` with `status`.
pub fn page(state: &AppState, status: StatusCode, title: &str, message: String) -> Response {
    let body = ErrorPage {
        layout: state.layout(),
        title,
        message,
        request_id: None,
    };
    (status, render(&body)).into_response()
}

/// An unexpected failure: logged with an id the user can quote, shown without detail.
pub fn internal(state: &AppState, cause: &str) -> Response {
    let id = crate::ops::request_id();
    tracing::error!(request_id = %id, cause, "internal error");
    let body = ErrorPage {
        layout: state.layout(),
        title: "系統錯誤",
        message: "系統暫時無法處理您的要求，請稍後再試。如持續發生，請告知客服人員以下代碼。"
            .into(),
        request_id: Some(id),
    };
    (StatusCode::INTERNAL_SERVER_ERROR, render(&body)).into_response()
}

/// A domain refusal as a page (for failures that are not shown beside a form field).
pub fn domain_page(state: &AppState, e: &DomainError) -> Response {
    if let DomainError::Storage(cause) = e {
        return internal(state, cause);
    }
    page(state, status_of(e), "無法完成作業", e.message_zh())
}

/// The API's error body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

pub fn api(e: &DomainError) -> Response {
    if let DomainError::Storage(cause) = e {
        let id = crate::ops::request_id();
        tracing::error!(request_id = %id, cause, "internal error");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(ApiError {
                code: "internal".into(),
                message: format!("internal error {id}"),
                field: None,
            }),
        )
            .into_response();
    }
    let field = match e {
        DomainError::Invalid { field, .. } => Some(field.to_string()),
        _ => None,
    };
    (
        status_of(e),
        Json(ApiError {
            code: e.code().into(),
            message: e.message_zh(),
            field,
        }),
    )
        .into_response()
}

/// A refusal the API makes itself (`csrf`, `rate_limited`, …).
pub fn api_code(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ApiError {
            code: code.into(),
            message: message.into(),
            field: None,
        }),
    )
        .into_response()
}
