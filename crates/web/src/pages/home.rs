//! The home page with the manual's left function menu (圖3-2).

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

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(home))
}
