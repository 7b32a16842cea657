//! Operations: `/healthz` (database, office calendar coverage, CRL freshness), `/metrics`
//! (Prometheus text, written by hand: requests, card steps by outcome, latency histograms), and
//! the middleware that gives every request an id — in the `x-request-id` header, in a tracing
//! span around the request, and on the opaque error page of an unexpected failure.

use crate::AppState;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pki::revocation::StalePolicy;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;
use time::format_description::well_known::Rfc3339;
use tracing::Instrument as _;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled (a fresh one outside a request), so that an error page
/// and the log lines of one request quote the same id.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| new_id())
}

/// 16 hex digits: a keyed hash (SipHash, keys random per process) of a counter. Unique for
/// this process (up to the 64-bit hash's collisions), and telling nothing of how many requests
/// came before; no system call per request, as asking the kernel for random bytes would be.
fn new_id() -> String {
    use std::hash::BuildHasher as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEYS: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:016x}",
        KEYS.hash_one(NEXT.fetch_add(1, Ordering::Relaxed))
    )
}

/// Upper bounds (seconds) of the latency histogram: a page is a few ms, a card step with CRL
/// checks tens of ms, anything over a second is worth seeing.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Per bucket, not cumulative; made cumulative when written.
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: BTreeMap<(&'static str, String, u16), u64>,
    durations: BTreeMap<(&'static str, String), Histogram>,
    card_steps: BTreeMap<(&'static str, &'static str, &'static str), u64>,
}

/// The service's counters. Labels come from closed sets (methods, route templates, flow
/// kinds, steps, error codes), so the series stay few whatever clients send.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Counters>);

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    pub fn request(&self, method: &Method, route: &str, status: StatusCode, seconds: f64) {
        let Ok(mut c) = self.0.lock() else { return };
        let m = method_label(method);
        *c.requests
            .entry((m, route.to_string(), status.as_u16()))
            .or_default() += 1;
        let h = c.durations.entry((m, route.to_string())).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.counts[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// One card step (a proof submitted): `outcome` is `ok` or the refusal's stable code.
    pub fn card_step(&self, flow: &'static str, step: &'static str, outcome: &'static str) {
        if let Ok(mut c) = self.0.lock() {
            *c.card_steps.entry((flow, step, outcome)).or_default() += 1;
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let Ok(c) = self.0.lock() else {
            return String::new();
        };
        let mut out = String::new();
        out.push_str(
            "# HELP certreg_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE certreg_http_requests_total counter\n");
        for ((m, route, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "certreg_http_requests_total{{method=\"{m}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str("# HELP certreg_card_steps_total Card steps (proofs submitted) by flow, step and outcome.\n");
        out.push_str("# TYPE certreg_card_steps_total counter\n");
        for ((flow, step, outcome), n) in &c.card_steps {
            let _ = writeln!(
                out,
                "certreg_card_steps_total{{flow=\"{flow}\",step=\"{step}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP certreg_http_request_duration_seconds Time to answer a request, by method and route.\n",
        );
        out.push_str("# TYPE certreg_http_request_duration_seconds histogram\n");
        for ((m, route), h) in &c.durations {
            let labels = format!("method=\"{m}\",route=\"{}\"", escape(route));
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "certreg_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "certreg_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "certreg_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "certreg_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Outermost layer: request id, span, access log line, request metrics.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = new_id();
    let method = req.method().clone();
    // The route template, not the path: flow ids must not become metric series.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let start = Instant::now();
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    let elapsed = start.elapsed();
    let status = response.status();
    state
        .metrics()
        .request(&method, &route, status, elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        )
    });
    response
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// GET /healthz: 200 when the service can do its work, 503 when it cannot (database
/// unreachable, or a CRL past its nextUpdate while stale CRLs refuse cards). Calendar gaps are
/// reported as warnings with 200: the service still works (Monday–Friday fallback), and taking
/// every instance out of a load balancer over a missing holiday file would be worse.
async fn healthz(State(state): State<AppState>) -> Response {
    let (code, body) = health(&state).await;
    (code, axum::Json(body)).into_response()
}

/// GET /healthz on the public listener when the operations routes have an internal address of
/// their own: the status alone (`ok`, `warn`, `fail`; 503 when failing), nothing about the
/// database, the calendar or the CRLs.
async fn healthz_minimal(State(state): State<AppState>) -> Response {
    let (code, body) = health(&state).await;
    (code, axum::Json(json!({"status": body["status"]}))).into_response()
}

async fn health(state: &AppState) -> (StatusCode, serde_json::Value) {
    let now = state.now();
    // The cheapest query every backend answers: a session lookup by primary key.
    let database = match state.db().session_get("healthz", now).await {
        Ok(_) => json!({"ok": true}),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            json!({"ok": false, "error": e.to_string()})
        }
    };
    let calendar = state.svc().calendar_warnings();
    let validator = state.svc().validator();
    // Configured CRLs refuse cards by themselves only where path building checks them.
    let stale_refuses = validator.options().stale_crl == StalePolicy::Reject
        && validator.options().crl == pki::validate::CrlMode::Required;
    let crls = validator.crls();
    let mut any_stale = false;
    let crl_list: Vec<_> = crls
        .entries()
        .iter()
        .map(|e| {
            let stale = e.next_update.is_some_and(|n| n <= now);
            any_stale |= stale;
            json!({
                "issuer": e.issuer,
                "this_update": rfc3339(e.this_update),
                "next_update": e.next_update.map(rfc3339),
                "stale": stale,
            })
        })
        .collect();
    let failing = database["ok"] == false || (any_stale && stale_refuses);
    let status = if failing {
        "fail"
    } else if !calendar.is_empty() || any_stale {
        "warn"
    } else {
        "ok"
    };
    let body = json!({
        "status": status,
        "time": rfc3339(now),
        "database": database,
        "calendar": {
            "ok": calendar.is_empty(),
            "years": state.svc().calendar_years(),
            "warnings": calendar,
        },
        "crls": {"ok": !any_stale, "stale_refuses_cards": stale_refuses, "lists": crl_list},
    });
    let code = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body)
}

/// GET /metrics
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
}

/// Served outside the session layer: probes and scrapers must not create sessions. With
/// `internal` (the operations routes have their own address, see [`internal_app`]) the public
/// listener answers only the minimal health status.
pub fn router(internal: bool) -> Router<AppState> {
    if internal {
        Router::new().route("/healthz", get(healthz_minimal))
    } else {
        internal_router()
    }
}

fn internal_router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// The operations routes alone (`/metrics` and the detailed `/healthz`), for an internal
/// address that only monitoring reaches.
pub fn internal_app(state: AppState) -> Router {
    internal_router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::security::headers,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request ids are distinct and do not count: one does not give away the next, or how many
    /// requests came between two.
    #[test]
    fn request_ids_are_distinct_and_do_not_count() {
        let ids: Vec<String> = (0..2000).map(|_| new_id()).collect();
        let values: Vec<u64> = ids
            .iter()
            .map(|id| {
                assert_eq!(id.len(), 16);
                u64::from_str_radix(id, 16).unwrap()
            })
            .collect();
        let distinct: std::collections::HashSet<u64> = values.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len());
        let ascending = values.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(
            (800..1200).contains(&ascending),
            "{ascending} of 1999 ascend"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request(&Method::GET, "/", StatusCode::OK, 0.003);
        m.request(&Method::GET, "/", StatusCode::OK, 0.2);
        m.request(&Method::GET, "/", StatusCode::OK, 30.0);
        let text = m.render();
        assert!(text.contains(
            "certreg_http_request_duration_seconds_bucket{method=\"GET\",route=\"/\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "certreg_http_request_duration_seconds_bucket{method=\"GET\",route=\"/\",le=\"0.25\"} 2"
        ));
        assert!(text.contains(
            "certreg_http_request_duration_seconds_bucket{method=\"GET\",route=\"/\",le=\"+Inf\"} 3"
        ));
        assert!(
            text.contains(
                "certreg_http_requests_total{method=\"GET\",route=\"/\",status=\"200\"} 3"
            )
        );
    }
}
