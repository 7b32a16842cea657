//! What every response and every state change go through: security headers, the CSRF token and
//! Origin check, the client's address (behind trusted proxies), and rate limits per client
//! address and per institution code.

use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use time::OffsetDateTime;

/// 32 random bytes as hex: session ids, CSRF tokens, flow ids.
/// Whether `s` has the form [`random_token`] gives: 64 lowercase hex digits. A token a
/// client brings back (the CSRF cookie) is taken only in that form, so a planted short or
/// guessable value is never a page's token.
pub fn is_token(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

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

/// The authority (`host[:port]`) of an origin such as `https://certreg.example.gov.tw`.
fn origin_authority(origin: &str) -> &str {
    let rest = origin.split_once("://").map_or(origin, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Whether `host` names the same authority as the public origin; a default port may be left
/// out (https 443, http 80).
fn same_authority(origin: &str, host: &str) -> bool {
    let want = origin_authority(origin).to_ascii_lowercase();
    let got = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if got == want {
        return true;
    }
    let default = if origin.starts_with("https://") {
        ":443"
    } else {
        ":80"
    };
    got.strip_suffix(default) == Some(want.as_str())
        || want.strip_suffix(default) == Some(got.as_str())
}

/// Requests must be addressed to the public origin's host (the `Host` header, or the
/// authority of an HTTP/2 request): an answer under another name (DNS rebinding, a stray
/// virtual host) could carry this site's cookies and pages to a foreign origin. A request
/// naming no host at all is let through.
pub async fn host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let named = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()));
    let origin = &state.config().public_origin;
    match named {
        Some(h) if !same_authority(origin, &h) => {
            let message = format!("請以本服務的正式網址 {origin} 連線");
            if req.uri().path().starts_with("/api/") {
                crate::error::api_code(StatusCode::MISDIRECTED_REQUEST, "wrong_host", &message)
            } else {
                crate::error::page(&state, StatusCode::MISDIRECTED_REQUEST, "網址不符", message)
            }
        }
        _ => next.run(req).await,
    }
}

/// The client's address: the peer, or the first untrusted hop of X-Forwarded-For when the peer
/// is a trusted proxy.
pub fn client_addr(state: &AppState, req: &Request) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    forwarded_client(peer, &state.config().trusted_proxies, req.headers())
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy, else the nearest
/// address of `X-Forwarded-For` (every header line, in order, read from the right) that is not
/// a trusted proxy. Addresses are compared in canonical form (an IPv4-mapped IPv6 address is
/// its IPv4 address); an entry that is not an address stops the walk at the proxy, since what
/// lies left of it was written by nobody trusted.
fn forwarded_client(
    peer: Option<IpAddr>,
    trusted: &[IpAddr],
    headers: &axum::http::HeaderMap,
) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.to_canonical() == ip);
    let peer = peer.map(|p| p.to_canonical())?;
    if !is_trusted(peer) {
        return Some(peer);
    }
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    for entry in lines.iter().rev().flat_map(|l| l.split(',').rev()) {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip.to_canonical()) => continue,
            Ok(ip) => return Some(ip.to_canonical()),
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
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
    /// Card steps (challenges issued) per client address.
    pub card_steps_per_client: u32,
    /// Card proofs per institution code and client that verified for the caller's own flow and
    /// were then refused (someone trying many cards against one agency). Proofs that never
    /// verified do not count, so junk cannot lock an agency out, and one client's refusals
    /// spend only its own budget, so neither can a real card.
    pub card_steps_per_code: u32,
    /// Receipt queries (R4.1, no card needed) per client address.
    pub receipt_queries_per_client: u32,
    /// Token introspections (`/api/v1/introspect`, no session needed) per client address:
    /// generous, a downstream system may ask for every request it serves.
    pub introspections_per_client: u32,
    /// API sessions made (`POST /api/v1/sessions`) and flows started from the pages per client
    /// address.
    pub sessions_per_client: u32,
    /// Flows one session may hold at a time (live or not yet swept).
    pub flows_per_session: u32,
    /// Keys the rate limiter tracks at most; beyond that (more distinct clients in one minute
    /// than this) a new key goes uncounted rather than refused.
    pub limiter_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            card_steps_per_client: 60,
            card_steps_per_code: 30,
            receipt_queries_per_client: 20,
            introspections_per_client: 1200,
            sessions_per_client: 60,
            flows_per_session: 20,
            limiter_entries: 65_536,
        }
    }
}

/// What a limit protects; each has its own budget per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Challenges issued for card steps, per client.
    CardStep,
    /// Verified card proofs refused, per institution code.
    CardRefusal,
    /// Receipt queries, per client.
    Receipts,
    /// Token introspections, per client.
    Introspect,
    /// Sessions and flows started, per client.
    Start,
}

/// A rate limit's key, built only from validated values: a client address (an IPv6 address by
/// its /64, the block one subscriber usually holds) or a parsed 機關代號. Fixed size, whatever a
/// request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitKey {
    bucket: Bucket,
    subject: Subject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    /// No address known (tests without a socket): one shared key.
    Unknown,
    V4([u8; 4]),
    V6Net([u8; 8]),
    /// A canonical 機關代號 (4–12 upper-case letters or digits), zero-padded, as asked for by
    /// one client (its subject above: 0 unknown, 4 bytes of IPv4, 8 bytes of an IPv6 /64).
    Code([u8; 12], u8, [u8; 8]),
}

impl LimitKey {
    pub fn client(bucket: Bucket, addr: Option<IpAddr>) -> Self {
        let subject = match addr.map(|a| a.to_canonical()) {
            None => Subject::Unknown,
            Some(IpAddr::V4(v4)) => Subject::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut net = [0u8; 8];
                net.copy_from_slice(&v6.octets()[..8]);
                Subject::V6Net(net)
            }
        };
        Self { bucket, subject }
    }

    /// A 機關代號 as one client asks for it: the refusals of one client's cards for an agency
    /// spend that client's budget for the agency, never everyone's, so nobody with a card of
    /// their own can lock an agency out for others.
    pub fn code(
        bucket: Bucket,
        code: &domain::types::InstitutionCode,
        addr: Option<IpAddr>,
    ) -> Self {
        let mut bytes = [0u8; 12];
        for (b, c) in bytes.iter_mut().zip(code.as_str().bytes()) {
            *b = c;
        }
        let (kind, net) = match Self::client(bucket, addr).subject {
            Subject::V4(v4) => {
                let mut net = [0u8; 8];
                net[..4].copy_from_slice(&v4);
                (4, net)
            }
            Subject::V6Net(net) => (6, net),
            _ => (0, [0u8; 8]),
        };
        Self {
            bucket,
            subject: Subject::Code(bytes, kind, net),
        }
    }
}

/// The 機關代號 a card step acts for, parsed: the typed one at the steps that ask for it, else
/// the one an earlier step of the flow established. `None` for junk.
pub fn step_code(
    flow: &domain::flow::Flow,
    typed: Option<&str>,
) -> Option<domain::types::InstitutionCode> {
    use domain::flow::Step;
    match flow.step {
        Step::OrgCard | Step::NewOrgCard | Step::QueryOrgCard | Step::OperatorCard => {
            domain::types::InstitutionCode::parse(typed?).ok()
        }
        _ => flow.data.code.clone(),
    }
}

/// One hit in `slot`'s window (a new one if `minute` moved on); false when it is over
/// `per_minute`.
fn count(slot: &mut (i64, u32), minute: i64, per_minute: u32) -> bool {
    if slot.0 != minute {
        *slot = (minute, 0);
    }
    slot.1 = slot.1.saturating_add(1);
    slot.1 <= per_minute
}

/// Fixed one-minute windows per key; cheap and good enough for abuse limits. Each service
/// instance counts for itself. The table holds at most `capacity` keys: when it is full, the
/// windows of past minutes are dropped (at most once a minute), and if it is still full a new
/// key is counted in its bucket's one overflow window: a flood of distinct keys costs bounded
/// memory, the clients already in the table keep their own budgets, and the keys the table has
/// no room for share one budget instead of going uncounted.
#[derive(Debug)]
pub struct RateLimiter {
    table: Mutex<Table>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Table {
    windows: HashMap<LimitKey, (i64, u32)>,
    /// Per bucket: the window shared by the keys the table has no room for.
    overflow: HashMap<Bucket, (i64, u32)>,
    purged: i64,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(Limits::default().limiter_entries)
    }
}

impl RateLimiter {
    pub fn new(capacity: usize) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            capacity: capacity.max(1),
        }
    }

    /// Counts one hit for `key`; false when the key is over `per_minute` in this minute.
    pub fn hit(&self, key: LimitKey, per_minute: u32, now: OffsetDateTime) -> bool {
        let minute = now.unix_timestamp() / 60;
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !t.windows.contains_key(&key) && t.windows.len() >= self.capacity {
            if t.purged != minute {
                t.windows.retain(|_, (m, _)| *m == minute);
                t.purged = minute;
            }
            if t.windows.len() >= self.capacity {
                let slot = t.overflow.entry(key.bucket).or_insert((minute, 0));
                return count(slot, minute, per_minute);
            }
        }
        count(
            t.windows.entry(key).or_insert((minute, 0)),
            minute,
            per_minute,
        )
    }

    /// Whether `key` has already used up `per_minute` in this minute (its overflow window's,
    /// when the full table does not hold it); counts nothing.
    pub fn exhausted(&self, key: LimitKey, per_minute: u32, now: OffsetDateTime) -> bool {
        let minute = now.unix_timestamp() / 60;
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let window = match t.windows.get(&key) {
            Some(w) => Some(w),
            None if t.windows.len() >= self.capacity => t.overflow.get(&key.bucket),
            None => None,
        };
        window.is_some_and(|(m, n)| *m == minute && *n >= per_minute)
    }

    /// How many keys the table holds now.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .windows
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_behind_trusted_proxies_is_read_from_every_forwarded_line() {
        use axum::http::{HeaderMap, HeaderValue};
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = [ip("10.0.0.5")];
        let headers = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
            }
            h
        };
        let client = |peer: &str, lines: &[&str]| {
            super::forwarded_client(Some(ip(peer)), &trusted, &headers(lines))
        };
        // Not from a proxy: the peer, whatever it says.
        assert_eq!(
            client("198.51.100.7", &["192.0.2.1"]),
            Some(ip("198.51.100.7"))
        );
        // From the proxy, also as an IPv4-mapped address on a dual-stack listener.
        for proxy in ["10.0.0.5", "::ffff:10.0.0.5"] {
            assert_eq!(client(proxy, &["192.0.2.1"]), Some(ip("192.0.2.1")));
        }
        // A client's own header comes first; the proxy's appended line (or entry) wins.
        assert_eq!(
            client("10.0.0.5", &["6.6.6.6", "192.0.2.1"]),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            client("10.0.0.5", &["6.6.6.6, 192.0.2.1"]),
            Some(ip("192.0.2.1"))
        );
        // Junk where the proxy's entry should be: the proxy, not what stands left of it.
        assert_eq!(client("10.0.0.5", &["6.6.6.6, junk"]), Some(ip("10.0.0.5")));
        // An IPv4-mapped client is its IPv4 address.
        assert_eq!(
            client("10.0.0.5", &["::ffff:192.0.2.1"]),
            Some(ip("192.0.2.1"))
        );
    }

    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> LimitKey {
        LimitKey::client(
            Bucket::CardStep,
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))),
        )
    }

    #[test]
    fn limiter_counts_per_key_and_minute() {
        let l = RateLimiter::default();
        let t = time::macros::datetime!(2026-01-01 00:00:10 UTC);
        assert!(l.hit(v4(1), 2, t));
        assert!(l.hit(v4(1), 2, t));
        assert!(!l.hit(v4(1), 2, t));
        assert!(l.exhausted(v4(1), 2, t));
        assert!(l.hit(v4(2), 2, t));
        assert!(!l.exhausted(v4(2), 2, t));
        assert!(l.hit(v4(1), 2, t + time::Duration::minutes(1)));
        // Another bucket of the same client has its own budget.
        let other = LimitKey::client(
            Bucket::Receipts,
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        );
        assert!(l.hit(other, 1, t));
    }

    #[test]
    fn host_must_be_the_public_origins() {
        assert!(same_authority(
            "https://certreg.example.gov.tw",
            "certreg.example.gov.tw"
        ));
        assert!(same_authority(
            "https://certreg.example.gov.tw",
            "CERTREG.example.gov.tw:443"
        ));
        assert!(same_authority("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(!same_authority("http://127.0.0.1:8080", "127.0.0.1:8081"));
        assert!(!same_authority(
            "https://certreg.example.gov.tw",
            "evil.example"
        ));
        assert!(!same_authority(
            "https://certreg.example.gov.tw",
            "certreg.example.gov.tw.evil.example"
        ));
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        let k = |ip: Ipv6Addr| LimitKey::client(Bucket::CardStep, Some(IpAddr::V6(ip)));
        assert_eq!(k(a), k(b));
        assert_ne!(k(a), k(c));
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(k(mapped), v4(1));
    }

    #[test]
    fn many_distinct_keys_stay_bounded_and_known_keys_keep_counting() {
        let l = RateLimiter::new(1000);
        let t = time::macros::datetime!(2026-01-01 00:00:10 UTC);
        assert!(l.hit(v4(1), 2, t));
        assert!(l.hit(v4(1), 2, t));
        let mut let_through = 0;
        for i in 0..200_000u32 {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&i.to_be_bytes());
            let key = LimitKey::client(Bucket::CardStep, Some(IpAddr::V6(Ipv6Addr::from(o))));
            let_through += usize::from(l.hit(key, 2, t));
        }
        assert!(l.len() <= 1000, "{}", l.len());
        // The keys the table had no room for shared one budget: they did not go uncounted.
        assert!(let_through <= 1000 + 2, "{let_through}");
        // The key counted before the flood is still over its limit.
        assert!(!l.hit(v4(1), 2, t));
        // A later minute makes room again.
        let later = t + time::Duration::minutes(1);
        assert!(l.hit(v4(9), 2, later));
        assert!(l.len() <= 1000);
        // Keys are small and fixed whatever the input was.
        assert!(std::mem::size_of::<LimitKey>() <= 24);
        let long = domain::types::InstitutionCode::parse("ABCDEFGHIJKL").unwrap();
        let from = |a: &str| Some(a.parse::<IpAddr>().unwrap());
        let k = LimitKey::code(Bucket::CardRefusal, &long, from("192.0.2.1"));
        assert!(l.hit(k, 1, later));
        assert!(!l.hit(k, 1, later));
        // Another client's budget for the same agency is its own; the same client written as
        // an IPv4-mapped IPv6 address is the same client.
        let other = LimitKey::code(Bucket::CardRefusal, &long, from("192.0.2.2"));
        assert!(l.hit(other, 1, later));
        let mapped = LimitKey::code(Bucket::CardRefusal, &long, from("::ffff:192.0.2.1"));
        assert!(!l.hit(mapped, 1, later));
    }
}
