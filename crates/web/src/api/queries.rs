//! R4.1 查詢憑證註冊收件紀錄 for API clients: no card needed, so nothing personal in the answer
//! and a rate limit per client address.

use super::{ApiPath, Caller, rate_limited, rfc3339};
use crate::AppState;
use crate::error::{ApiError, api};
use crate::security::ClientAddr;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use domain::model::ReviewState;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptView {
    /// 收件時間
    pub at: String,
    /// 註冊項目: first_registration, replace_org, replace_admin, replace_both, review_application.
    pub kind: String,
    /// 註冊項目 in zh-TW.
    pub label: String,
    /// A review application's state: pending, approved or rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_state: Option<String>,
    /// The version of 用戶約定條款 accepted with a registration or a replacement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms_version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptList {
    pub code: String,
    /// 機關名稱
    pub name: String,
    /// Newest first.
    pub receipts: Vec<ReceiptView>,
}

#[utoipa::path(
    get, path = "/api/v1/agencies/{code}/receipts", operation_id = "list_receipts", tag = "queries",
    params(("code" = String, Path, description = "機關代號")),
    responses(
        (status = 200, description = "R4.1: the agency's receipts, newest first", body = ReceiptList),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 404, description = "unknown_agency", body = ApiError),
        (status = 422, description = "invalid_input: field institution_code", body = ApiError),
        (status = 429, description = "rate_limited: receipt queries per client address", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn receipts(
    State(state): State<AppState>,
    _caller: Caller,
    ClientAddr(addr): ClientAddr,
    ApiPath(code): ApiPath<String>,
) -> Response {
    if !state.limiter().hit(
        crate::security::LimitKey::client(crate::security::Bucket::Receipts, addr),
        state.config().limits.receipt_queries_per_client,
        state.now(),
    ) {
        return rate_limited();
    }
    match state.svc().receipts(&code).await {
        Ok((agency, receipts)) => Json(ReceiptList {
            code: agency.code.as_str().into(),
            name: agency.name,
            receipts: receipts
                .into_iter()
                .map(|(r, review)| ReceiptView {
                    at: rfc3339(r.at),
                    kind: r.kind.as_str().into(),
                    label: r.kind.label_zh().into(),
                    review_state: review.map(|s| {
                        match s {
                            ReviewState::Pending => "pending",
                            ReviewState::Approved { .. } => "approved",
                            ReviewState::Rejected { .. } => "rejected",
                        }
                        .to_string()
                    }),
                    terms_version: r.terms_version,
                })
                .collect(),
        })
        .into_response(),
        Err(e) => api(&e),
    }
}
