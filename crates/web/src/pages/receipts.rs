//! 查詢憑證註冊收件紀錄 (R4.1, 圖3-38, 3-39): anyone may ask by 機關代號 without a card, so the
//! page shows only the agency's name and what was received when, nothing personal, and each
//! client may ask only so often.

use super::too_many;
use crate::AppState;
use crate::error;
use crate::render::{Layout, render};
use crate::security::ClientAddr;
use crate::session::SessionHandle;
use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use domain::DomainError;
use domain::model::ReviewState;

struct Line {
    at: String,
    item: &'static str,
    state: String,
}

#[derive(Template)]
#[template(path = "receipts.html")]
struct ReceiptsPage {
    layout: Layout,
    code_value: String,
    code_error: Option<String>,
    /// Some once a query was answered (圖3-39).
    agency_name: Option<String>,
    lines: Vec<Line>,
}

#[derive(serde::Deserialize)]
struct ReceiptQuery {
    code: Option<String>,
}

fn review_state(state: &ReviewState) -> String {
    match state {
        ReviewState::Pending => "審核中".into(),
        ReviewState::Approved { effective, .. } => format!(
            "核准（生效日 {:04}/{:02}/{:02}）",
            effective.year(),
            u8::from(effective.month()),
            effective.day()
        ),
        ReviewState::Rejected { .. } => "駁回".into(),
    }
}

/// GET /receipts (圖3-38) and GET /receipts?code=… (圖3-39).
async fn receipts(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    Query(q): Query<ReceiptQuery>,
) -> Response {
    let layout = state.layout_for(&session.get());
    let Some(code) = q.code else {
        return render(&ReceiptsPage {
            layout,
            code_value: String::new(),
            code_error: None,
            agency_name: None,
            lines: vec![],
        });
    };
    // Every answered query counts, found or not: probing codes costs the same as reading.
    if !state.limiter().hit(
        crate::security::LimitKey::client(crate::security::Bucket::Receipts, addr),
        state.config().limits.receipt_queries_per_client,
        state.now(),
    ) {
        return too_many(&state);
    }
    match state.svc().receipts(&code).await {
        Ok((agency, receipts)) => {
            let lines = receipts
                .iter()
                .map(|(r, review)| Line {
                    at: super::admin::taipei_time(r.at),
                    item: r.kind.label_zh(),
                    state: review.as_ref().map(review_state).unwrap_or_default(),
                })
                .collect();
            render(&ReceiptsPage {
                layout,
                code_value: agency.code.as_str().to_string(),
                code_error: None,
                agency_name: Some(agency.name),
                lines,
            })
        }
        Err(e @ (DomainError::Invalid { .. } | DomainError::UnknownAgency)) => {
            let page = ReceiptsPage {
                layout,
                code_value: code,
                code_error: Some(e.message_zh()),
                agency_name: None,
                lines: vec![],
            };
            (error::status_of(&e), render(&page)).into_response()
        }
        Err(e) => error::domain_page(&state, &e),
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/receipts", get(receipts))
}
