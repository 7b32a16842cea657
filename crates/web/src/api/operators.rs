//! F2 for API clients: the administrator's operator list, add, show, modify (with the version
//! read, so two administrators cannot silently overwrite each other) and delete. Only the
//! session's own agency is reachable; national IDs leave masked.

use super::flows::{FunctionView, functions_view};
use super::{Admin, ApiJson, ApiPath, ApiQuery, rfc3339};
use crate::AppState;
use crate::error::{ApiError, api};
use crate::security::ClientAddr;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::DomainError;
use domain::model::Operator;
use domain::service::OperatorForm;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// An operator (經辦人) as the list of 圖3-14 shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorView {
    pub id: i64,
    /// 憑證序號
    pub serial: String,
    /// 姓名
    pub name: String,
    /// 身分證統一編號, masked (A12****789).
    pub national_id: String,
    pub functions: Vec<FunctionView>,
    /// Last change.
    pub updated_at: String,
    /// Send it back with PUT and DELETE.
    pub version: i64,
    /// 授權期間: the first and last day (YYYY-MM-DD, Taipei) the grant holds; `null`: open.
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorList {
    /// 機關代號 of the administrator's agency.
    pub code: String,
    pub operators: Vec<OperatorView>,
}

/// 圖3-15 / 3-18. Either `certificate` (read from the operator's card through the agent, no
/// PIN: its serial and name are used and its ID last four must match `national_id`) or `serial`
/// and `name` typed (e.g. copied from R4.3).
#[derive(Debug, Deserialize, ToSchema)]
pub struct OperatorInput {
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub national_id: String,
    /// Function ids of the catalogue (at least one): enroll, withdraw, change, parental_leave,
    /// cash_benefit, premium, query.
    pub functions: Vec<String>,
    /// 授權期間 (optional, YYYY-MM-DD, both days included): outside it the operator's card
    /// logs in no more (`grant_expired`, `grant_not_yet_valid`).
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub valid_until: Option<String>,
}

/// A modification names the version it read.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OperatorUpdate {
    pub version: i64,
    #[serde(flatten)]
    pub input: OperatorInput,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// The version the administrator read.
    pub version: i64,
}

fn form(input: OperatorInput) -> OperatorForm {
    OperatorForm {
        read_certificate: input
            .certificate
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec()),
        serial: input.serial.unwrap_or_default(),
        name: input.name.unwrap_or_default(),
        national_id: input.national_id,
        functions: input.functions,
        valid_from: input.valid_from.unwrap_or_default(),
        valid_until: input.valid_until.unwrap_or_default(),
    }
}

fn view(state: &AppState, o: &Operator) -> OperatorView {
    OperatorView {
        id: o.id,
        serial: o.serial.as_str().to_string(),
        name: o.name.as_str().to_string(),
        national_id: o.national_id.masked(),
        functions: functions_view(state, &o.functions),
        updated_at: rfc3339(o.updated_at),
        version: o.version,
        valid_from: o.validity.from.map(|d| d.to_string()),
        valid_until: o.validity.until.map(|d| d.to_string()),
    }
}

/// Ids are numbers; anything else names no operator.
fn operator_id(raw: &str) -> Result<i64, Response> {
    raw.parse::<i64>()
        .map_err(|_| api(&DomainError::OperatorNotFound))
}

#[utoipa::path(
    get, path = "/api/v1/operators", operation_id = "list_operators", tag = "operators",
    responses(
        (status = 200, description = "R2.3: the agency's operators", body = OperatorList),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "forbidden: not an administrator session, or the registration was replaced since login", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(State(state): State<AppState>, admin: Admin) -> Response {
    match state.svc().operators(&admin.grant).await {
        Ok(ops) => Json(OperatorList {
            code: admin.grant.code.as_str().into(),
            operators: ops.iter().map(|o| view(&state, o)).collect(),
        })
        .into_response(),
        Err(e) => api(&e),
    }
}

#[utoipa::path(
    post, path = "/api/v1/operators", operation_id = "add_operator", tag = "operators",
    request_body = OperatorInput,
    responses(
        (status = 201, description = "R2.4: 新增成功", body = OperatorView),
        (status = 400, description = "bad_request", body = ApiError),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "forbidden; csrf (cookie requests only)", body = ApiError),
        (status = 409, description = "duplicate_operator: the serial is already granted in this agency", body = ApiError),
        (status = 422, description = "invalid_input (field national_id, serial, name or functions); id_mismatch; cert_malformed", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn add(
    State(state): State<AppState>,
    admin: Admin,
    ClientAddr(addr): ClientAddr,
    ApiJson(body): ApiJson<OperatorInput>,
) -> Response {
    let client = addr.map(|a| a.to_string());
    let svc = state.svc();
    let id = match svc
        .add_operator(&admin.grant, &form(body), client.as_deref())
        .await
    {
        Ok(id) => id,
        Err(e) => return api(&e),
    };
    match svc.operator(&admin.grant, id).await {
        Ok(o) => (StatusCode::CREATED, Json(view(&state, &o))).into_response(),
        Err(e) => api(&e),
    }
}

#[utoipa::path(
    get, path = "/api/v1/operators/{id}", operation_id = "get_operator", tag = "operators",
    params(("id" = i64, Path, description = "Operator id")),
    responses(
        (status = 200, description = "One operator of the agency", body = OperatorView),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "forbidden", body = ApiError),
        (status = 404, description = "operator_not_found (also another agency's operator)", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn show(
    State(state): State<AppState>,
    admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Response {
    let id = match operator_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.svc().operator(&admin.grant, id).await {
        Ok(o) => Json(view(&state, &o)).into_response(),
        Err(e) => api(&e),
    }
}

#[utoipa::path(
    put, path = "/api/v1/operators/{id}", operation_id = "modify_operator", tag = "operators",
    params(("id" = i64, Path, description = "Operator id")),
    request_body = OperatorUpdate,
    responses(
        (status = 200, description = "R2.5: 修改成功", body = OperatorView),
        (status = 400, description = "bad_request", body = ApiError),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "forbidden; csrf (cookie requests only)", body = ApiError),
        (status = 404, description = "operator_not_found (also another agency's operator)", body = ApiError),
        (status = 409, description = "conflict: changed by someone else since `version`; duplicate_operator", body = ApiError),
        (status = 422, description = "invalid_input; id_mismatch", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn modify(
    State(state): State<AppState>,
    admin: Admin,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<OperatorUpdate>,
) -> Response {
    let id = match operator_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let client = addr.map(|a| a.to_string());
    let svc = state.svc();
    if let Err(e) = svc
        .modify_operator(
            &admin.grant,
            id,
            body.version,
            &form(body.input),
            client.as_deref(),
        )
        .await
    {
        return api(&e);
    }
    match svc.operator(&admin.grant, id).await {
        Ok(o) => Json(view(&state, &o)).into_response(),
        Err(e) => api(&e),
    }
}

#[utoipa::path(
    delete, path = "/api/v1/operators/{id}", operation_id = "delete_operator", tag = "operators",
    params(("id" = i64, Path, description = "Operator id"), VersionQuery),
    responses(
        (status = 204, description = "R2.6: 刪除成功"),
        (status = 400, description = "bad_request: version missing", body = ApiError),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "forbidden; csrf (cookie requests only)", body = ApiError),
        (status = 404, description = "operator_not_found (also another agency's operator)", body = ApiError),
        (status = 409, description = "conflict: changed by someone else since `version`", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    admin: Admin,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> Response {
    let id = match operator_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let client = addr.map(|a| a.to_string());
    match state
        .svc()
        .delete_operator(&admin.grant, id, q.version, client.as_deref())
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api(&e),
    }
}
