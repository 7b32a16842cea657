//! Static files, compiled into the binary: the stylesheet, the page scripts, and the card
//! client shared with the agent crate.

use crate::AppState;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const FILES: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../static/app.css"),
    ),
    (
        "card-step.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/card-step.js"),
    ),
    (
        "operator-form.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/operator-form.js"),
    ),
    (
        "print.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/print.js"),
    ),
    (
        "card-client.js",
        "text/javascript; charset=utf-8",
        include_str!("../../agent/js/card-client.js"),
    ),
];

async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => {
            let mut r = (*body).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            r
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/static/{name}", get(file))
}
