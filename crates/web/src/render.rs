//! Rendering askama templates, and what every page's layout needs (the left function menu,
//! who is signed in, the CSRF token).

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Shared by every page: the menu of 圖3-2 and the session's state.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub csrf: String,
    /// 授權管理者 of this agency is signed in.
    pub admin_code: Option<String>,
    /// 經辦人 name, when an operator is signed in.
    pub operator_name: Option<String>,
    pub agent_url: String,
    /// 本部 back-office pages: their own banner and menu, no agency menu.
    pub backoffice: bool,
    /// The back-office reviewer signed in (name, section label).
    pub reviewer: Option<(String, &'static str)>,
}

pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}
