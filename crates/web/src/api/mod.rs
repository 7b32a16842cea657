//! The JSON API under `/api/v1`: every function of F1–F5 through the same domain services as the
//! pages, bearer-token sessions for API clients, errors as `{code, message, field?}`, and the
//! OpenAPI 3.1 document at `/api/v1/openapi.json`.

mod doc;
mod flows;
mod operators;
mod queries;
mod sessions;

use crate::AppState;
use crate::error::api_code;
use crate::session::{Session, SessionHandle};
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use domain::service::AdminGrant;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use doc::ApiDoc;

/// Every route of the API, mounted under `/api/v1`.
pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .route("/openapi.json", get(doc::openapi_json))
        .route("/sessions", post(sessions::create))
        .route("/sessions/current", axum::routing::delete(sessions::delete))
        .route("/session", get(sessions::current))
        .route("/token", post(crate::token::issue))
        .route("/flows", post(flows::start))
        .route("/flows/{id}", get(flows::show))
        .route("/flows/{id}/terms", post(flows::terms))
        .route("/flows/{id}/challenge", post(flows::challenge))
        .route("/flows/{id}/card", post(flows::card))
        .route("/flows/{id}/review", post(flows::review))
        .route("/flows/{id}/confirm", post(flows::confirm))
        .route("/operators", get(operators::list).post(operators::add))
        .route(
            "/operators/{id}",
            get(operators::show)
                .put(operators::modify)
                .delete(operators::delete),
        )
        .route("/agencies/{code}/receipts", get(queries::receipts))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    Router::new().nest("/api/v1", v1)
}

async fn not_found() -> Response {
    api_code(StatusCode::NOT_FOUND, "not_found", "查無此 API 路徑")
}

async fn method_not_allowed() -> Response {
    api_code(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "此 API 路徑不支援這個 HTTP 方法",
    )
}

pub(crate) fn unauthorized() -> Response {
    api_code(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "請先以 POST /api/v1/sessions 取得工作階段權杖，並以 Authorization: Bearer 送出",
    )
}

pub(crate) fn rate_limited() -> Response {
    api_code(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "您的操作過於頻繁，請稍候一分鐘後再試",
    )
}

fn payload_too_large() -> Response {
    api_code(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "請求內容過大",
    )
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The caller of an API request: a live session, from a bearer token (API client) or the
/// cookie (the pages' own script). A request naming no live session is refused with 401, and
/// a state change riding on a cookie must pass the same Origin and CSRF checks as a page form.
pub(crate) struct Caller {
    pub handle: SessionHandle,
    pub session: Session,
}

impl Caller {
    pub fn id(&self) -> &str {
        &self.session.id
    }
}

/// Whether the request carries only a bearer token, so no ambient (cookie) authority that a
/// foreign site could ride on.
fn bearer_only(session: &Session, parts: &Parts) -> bool {
    session.bearer && !parts.headers.contains_key(header::COOKIE)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    /// A back-office reviewer's session is the pages' only (/backoffice): it runs no agency
    /// function through the API (flows, operators, token, queries) and is refused with 403.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let caller = AnyCaller::from_request_parts(parts, state).await?.0;
        if caller.session.data.reviewer.is_some() {
            return Err(crate::error::api(&domain::DomainError::Forbidden));
        }
        Ok(caller)
    }
}

/// Any live session, a reviewer's too: only for ending it (`DELETE /api/v1/sessions/current`).
pub(crate) struct AnyCaller(pub Caller);

impl FromRequestParts<AppState> for AnyCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let handle = SessionHandle::from_request_parts(parts, state).await?;
        let session = handle.get();
        if session.is_new() {
            // The session layer started one for this request; nobody holds its id, so keep no
            // record of it.
            handle.update(|s| s.end());
            return Err(unauthorized());
        }
        // The body extractors would say the same later; saying it before any work is cheaper.
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > state.config().max_body) {
            return Err(payload_too_large());
        }
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe && !bearer_only(&session, parts) {
            let token = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let token_ok = !session.data.csrf.is_empty() && token == session.data.csrf;
            if !token_ok || !crate::security::same_origin(state, &parts.method, &parts.headers) {
                return Err(api_code(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "頁面已逾時或來源不符，請重新整理頁面後再操作",
                ));
            }
        }
        Ok(AnyCaller(Caller { handle, session }))
    }
}

/// A caller whose session holds an administrator grant (F2 done).
pub(crate) struct Admin {
    pub grant: AdminGrant,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let caller = Caller::from_request_parts(parts, state).await?;
        match caller.session.data.admin.clone() {
            Some(grant) => Ok(Admin { grant }),
            None => Err(crate::error::api(&domain::DomainError::Forbidden)),
        }
    }
}

/// `Json` whose refusals are API errors: `payload_too_large` (413) or `bad_request` (400),
/// never axum's plain-text rejections.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(&r)),
        }
    }
}

fn json_rejection(r: &JsonRejection) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return payload_too_large();
    }
    let message = match r {
        JsonRejection::MissingJsonContentType(_) => {
            "請以 Content-Type: application/json 送出".to_string()
        }
        other => format!("請求內容不是正確的 JSON：{}", other.body_text()),
    };
    api_code(StatusCode::BAD_REQUEST, "bad_request", &message)
}

/// `Query` whose refusals are `bad_request`.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(query_rejection(&r)),
        }
    }
}

fn query_rejection(r: &QueryRejection) -> Response {
    api_code(
        StatusCode::BAD_REQUEST,
        "bad_request",
        &format!("查詢參數錯誤：{}", r.body_text()),
    )
}

/// `Path` whose refusals (bad percent-encoding) are `bad_request`.
pub(crate) struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(api_code(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("路徑參數錯誤：{}", r.body_text()),
            )),
        }
    }
}
