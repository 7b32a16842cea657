//! The home page with the manual's left function menu (圖3-2), and 憑證申請說明: where to apply
//! for each card (the manual's sections 二 and 三).

use crate::AppState;
use crate::render::{Layout, render};
use crate::session::SessionHandle;
use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    layout: Layout,
}

async fn home(State(state): State<AppState>, session: SessionHandle) -> Response {
    render(&Home {
        layout: state.layout_for(&session.get()),
    })
}

#[derive(Template)]
#[template(path = "cert_help.html")]
struct CertHelp {
    layout: Layout,
}

/// The page card refusals that mean "you need another card" link to.
pub(crate) const CERT_HELP: &str = "/help/certificates";

async fn cert_help(State(state): State<AppState>, session: SessionHandle) -> Response {
    render(&CertHelp {
        layout: state.layout_for(&session.get()),
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route(CERT_HELP, get(cert_help))
}
