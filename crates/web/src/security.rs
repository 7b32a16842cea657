//! What every response and every state change go through: security headers, the CSRF token and
//! Origin check, the client's address (behind trusted proxies), and rate limits per client
//! address and per institution code.

use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use time::OffsetDateTime;

/// 32 random bytes as hex: session ids, CSRF tokens, flow ids.
pub fn random_token() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    // SystemRandom fails only when the OS has no randomness; a zero token then fails loudly
    // in the session store's uniqueness rather than silently.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    pki::serial::hex_upper(&bytes).to_ascii_lowercase()
}

/// Security headers on every response.
pub async fn headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    let agent = state.config().agent_url.trim_end_matches('/').to_string();
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {agent}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
         object-src 'none'"
    );
    let pairs: [(&str, String); 6] = [
        ("content-security-policy", csp),
        ("x-content-type-options", "nosniff".into()),
        // Nothing leaves the site; `no-referrer` would also make Chromium send `Origin: null` on
        // the pages' own form POSTs (Fetch: the Origin of a no-cors request follows the
        // referrer policy), and the Origin check would refuse every one of them.
        ("referrer-policy", "same-origin".into()),
        ("x-frame-options", "DENY".into()),
        // The card client's popup mode needs the agent's window to reach back to this page.
        (
            "cross-origin-opener-policy",
            "same-origin-allow-popups".into(),
        ),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()".into(),
        ),
    ];
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    if state.config().secure_cookies() {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// State-changing requests from a browser must come from this site: same Origin (or, when a
/// browser sends none, same Referer). API clients with a bearer token and no cookie are exempt;
/// they carry no ambient authority.
pub fn same_origin(state: &AppState, method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    let origin = state.config().public_origin.trim_end_matches('/');
    if let Some(o) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return o == origin;
    }
    if let Some(r) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
        return r == origin || r.starts_with(&format!("{origin}/"));
    }
    headers.contains_key(header::AUTHORIZATION) && !headers.contains_key(header::COOKIE)
}

/// The client's address: the peer, or the first untrusted hop of X-Forwarded-For when the peer
/// is a trusted proxy.
pub fn client_addr(state: &AppState, req: &Request) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let trusted = &state.config().trusted_proxies;
    match peer {
        Some(p) if trusted.contains(&p) => {
            let forwarded = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            forwarded
                .split(',')
                .rev()
                .filter_map(|s| s.trim().parse::<IpAddr>().ok())
                .find(|ip| !trusted.contains(ip))
                .or(Some(p))
        }
        other => other,
    }
}

/// Where the client address is kept for handlers and audit events.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    pub fn text(&self) -> Option<String> {
        self.0.map(|a| a.to_string())
    }
}

pub async fn client(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let addr = ClientAddr(client_addr(&state, &req));
    req.extensions_mut().insert(addr);
    next.run(req).await
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(None)))
    }
}

/// Limits per minute.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Card steps (challenge + proof) per client address.
    pub card_steps_per_client: u32,
    /// Card steps per institution code (someone trying many cards against one agency).
    pub card_steps_per_code: u32,
    /// Receipt queries (R4.1, no card needed) per client address.
    pub receipt_queries_per_client: u32,
    /// Token introspections (`/api/v1/introspect`, no session needed) per client address:
    /// generous, a downstream system may ask for every request it serves.
    pub introspections_per_client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            card_steps_per_client: 60,
            card_steps_per_code: 30,
            receipt_queries_per_client: 20,
            introspections_per_client: 1200,
        }
    }
}

/// Fixed one-minute windows per key; cheap and good enough for abuse limits. Each service
/// instance counts for itself.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (i64, u32)>>,
}

impl RateLimiter {
    /// Counts one hit for `key`; false when the key is over `per_minute` in this minute.
    pub fn hit(&self, key: &str, per_minute: u32, now: OffsetDateTime) -> bool {
        let minute = now.unix_timestamp() / 60;
        let Ok(mut w) = self.windows.lock() else {
            return true;
        };
        if w.len() > 100_000 {
            w.retain(|_, (m, _)| *m == minute);
        }
        let slot = w.entry(key.to_string()).or_insert((minute, 0));
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 += 1;
        slot.1 <= per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_key_and_minute() {
        let l = RateLimiter::default();
        let t = time::macros::datetime!(2026-01-01 00:00:10 UTC);
        assert!(l.hit("a", 2, t));
        assert!(l.hit("a", 2, t));
        assert!(!l.hit("a", 2, t));
        assert!(l.hit("b", 2, t));
        assert!(l.hit("a", 2, t + time::Duration::minutes(1)));
    }
}
