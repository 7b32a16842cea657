//! certreg's web service: the pages of the manual (zh-TW, askama templates), sessions stored in
//! the database, CSRF and Origin checks, rate limits, security headers, and static files (the
//! page script that talks to the card agent). `app(state)` builds the whole router.

// Handlers return `Result<_, Response>`, the idiomatic axum early exit; boxing every refusal
// would buy nothing.
#![allow(clippy::result_large_err)]

pub mod api;
mod assets;
mod card_step;
pub mod error;
pub mod mail;
pub mod ops;
pub mod pages;
pub mod render;
pub mod security;
pub mod session;
pub mod token;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use domain::clock::Clock;
use domain::service::Services;
use domain::store::Backend;
use render::Layout;
use security::{Limits, RateLimiter};
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;

/// The services the web layer calls.
pub type Svc = Services<Backend, Arc<dyn Clock>>;

/// The audience of operator tokens when none is configured: the insurer's other systems.
pub const DEFAULT_AUDIENCE: &str = "certreg-downstream";

#[derive(Debug, Clone)]
pub struct WebConfig {
    /// The public origin (scheme://host[:port]); card proofs and the Origin check are bound to it.
    pub public_origin: String,
    /// Where the page's card client finds the local agent.
    pub agent_url: String,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpAddr>,
    pub limits: Limits,
    /// Request bodies larger than this are refused (413).
    pub max_body: usize,
    /// `/metrics` and the detailed `/healthz` are served on an internal address of their own
    /// ([`ops::internal_app`]); the public listener then answers only a minimal health status.
    pub internal_ops: bool,
    /// The audiences (`aud`) a downstream system may ask operator tokens for; a request naming
    /// none gets the first.
    pub token_audiences: Vec<String>,
    /// The text of 用戶約定條款 the terms pages show (its version is the services').
    pub terms: Terms,
    /// The operator's page 「取得其他系統用權杖」, which shows a raw token: only for agencies
    /// whose other systems take it (the API's `/api/v1/token` is there either way).
    pub operator_token_page: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            public_origin: "http://127.0.0.1:8080".into(),
            agent_url: "http://127.0.0.1:61161".into(),
            trusted_proxies: Vec::new(),
            limits: Limits::default(),
            max_body: 256 * 1024,
            internal_ops: false,
            token_audiences: vec![DEFAULT_AUDIENCE.to_string()],
            operator_token_page: false,
            terms: Terms::sample(),
        }
    }
}

/// 用戶約定條款 as the insurer words it: read from the file the settings name; without one,
/// a sample that every terms page marks 範例.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// One clause per paragraph.
    pub clauses: Vec<String>,
    /// The shipped sample, not the insurer's text.
    pub sample: bool,
}

impl Terms {
    /// Clauses are the text's paragraphs (separated by blank lines; a paragraph's lines are
    /// joined). `None` for a text without any.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text
            .strip_prefix('\u{feff}')
            .unwrap_or(text)
            .replace("\r\n", "\n");
        let clauses: Vec<String> = text
            .split("\n\n")
            .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(""))
            .filter(|p| !p.is_empty())
            .collect();
        (!clauses.is_empty()).then_some(Self {
            clauses,
            sample: false,
        })
    }

    /// The sample shipped for the demo and tests, marked 範例 on the page.
    pub fn sample() -> Self {
        Self {
            sample: true,
            ..Self::parse(include_str!("terms-sample.txt")).unwrap_or(Self {
                clauses: Vec::new(),
                sample: true,
            })
        }
    }
}

impl WebConfig {
    /// Cookies are `Secure` (and HSTS is sent) when the public origin is https.
    pub fn secure_cookies(&self) -> bool {
        self.public_origin.starts_with("https://")
    }
}

struct Inner {
    svc: Svc,
    config: WebConfig,
    limiter: RateLimiter,
    metrics: ops::Metrics,
    keys: token::KeyRing,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// The state over `svc`; sessions and signing keys are kept in the same store.
    pub fn new(svc: Svc, config: WebConfig) -> Self {
        let keys = token::KeyRing::new(svc.store().clone());
        let limiter = RateLimiter::new(config.limits.limiter_entries);
        Self(Arc::new(Inner {
            svc,
            config,
            limiter,
            metrics: ops::Metrics::default(),
            keys,
        }))
    }

    pub fn svc(&self) -> &Svc {
        &self.0.svc
    }

    /// The store, for what the web layer keeps of its own (sessions, signing keys).
    pub fn db(&self) -> &Backend {
        self.0.svc.store()
    }

    pub fn config(&self) -> &WebConfig {
        &self.0.config
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.0.limiter
    }

    pub fn metrics(&self) -> &ops::Metrics {
        &self.0.metrics
    }

    /// The keys of the operators' tokens for other systems.
    pub fn keys(&self) -> &token::KeyRing {
        &self.0.keys
    }

    pub fn now(&self) -> OffsetDateTime {
        self.0.svc.now()
    }

    /// The layout of a page for the session (or a blank one for error pages).
    pub fn layout(&self) -> Layout {
        Layout {
            agent_url: self.0.config.agent_url.clone(),
            ..Layout::default()
        }
    }

    pub fn layout_for(&self, session: &session::Session) -> Layout {
        Layout {
            csrf: session.data.csrf.clone(),
            admin_code: session
                .data
                .admin
                .as_ref()
                .map(|a| a.code.as_str().to_string()),
            operator_name: session.data.operator.as_ref().map(|o| o.name.clone()),
            agent_url: self.0.config.agent_url.clone(),
            backoffice: session.data.reviewer.is_some(),
            reviewer: session
                .data
                .reviewer
                .as_ref()
                .map(|r| (r.name.clone(), r.section.label_zh())),
        }
    }
}

/// The whole public service.
pub fn app(state: AppState) -> Router {
    let max_body = state.config().max_body;
    let internal_ops = state.config().internal_ops;
    Router::new()
        .merge(pages::router())
        .merge(api::router())
        .merge(assets::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::host,
        ))
        // Downstream systems (keys, introspection; no cookies, no pages) and probes may reach an
        // instance by its address rather than by the public name.
        .merge(token::router())
        .merge(ops::router(internal_ops))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::client,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::headers,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::observe,
        ))
        .with_state(state)
}
