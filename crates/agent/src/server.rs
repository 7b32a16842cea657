//! The agent's HTTP server on the loopback (127.0.0.1 and [::1]): `/pkcs11info` and `/sign` (HiPKI protocol, CORS for
//! configured origins only), `/popupForm` (the postMessage bridge for sites that use the real
//! agent's popup mode), `/p11Image.bmp` (the `pkcs11info` answer packed into an image, HiPKI's
//! installation check), and `/`, a zh-TW status page with soft-card insert/eject.
//!
//! Safety rules, each enforced here: the sockets are bound to the loopback addresses only, the
//! IPv4 and, where the machine has one, the IPv6 loopback on the same port, and the agent does not
//! start when another program holds either (browsers try `[::1]` first for `localhost`, so a
//! program there would get the pages' requests, PINs included); the Host header must name the
//! loopback (a DNS-rebinding page cannot read the agent); a request whose
//! Origin is not configured gets "site not trusted" and no CORS headers; bodies are size-limited;
//! only certreg challenges are signed, and only for the site that asks: the challenge's `origin=`
//! must be the request's Origin (or, through the popup, the origin of the page that posted to
//! it); a signing request without Origin is refused unless the agent was started to allow local
//! programs, and even then never in a shape a web page can send; one operation at a time per
//! card; after a wrong PIN the card takes no PIN for a short while (a program cannot spend its
//! tries in a burst); a PIN mangled by its encoding is never tried; the PIN is never logged.
//!
//! What the Origin checks are not: a barrier against programs on this machine. Any local
//! program can send any Origin header, an allowed site's included, so `allow_no_origin` and the
//! allowed origins decide which web pages may use the agent, not which programs may; what limits
//! a local program is the PIN, the rule that only certreg challenges are signed and the wrong-PIN
//! wait.

use crate::backend::{CardBackend, CardCert, CardError, SlotInfo, TokenInfo};
use crate::origin::{self, OriginError};
use crate::protocol::{
    self, Pkcs11InfoResponse, Refusal, SignRequest, SignResponse, SignatureType, ret,
};
use crate::softcard::SoftCards;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use pki::challenge::Challenge;
use pki::facts::ParsedCert;
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::net::TcpListener;

/// The HiPKI local server's port.
pub const DEFAULT_PORT: u16 = 61161;
/// A `tbsPackage` is a few KiB at most (a TBS is ≤ 2 KiB).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// How long a card takes no PIN after a wrong one.
pub const DEFAULT_WRONG_PIN_DELAY: Duration = Duration::from_secs(2);

/// How the agent is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// TCP port on 127.0.0.1 and [::1] (0 = any free port, for tests).
    pub port: u16,
    /// Origins (`https://certreg.example.gov.tw`) whose pages may call the agent; checked by
    /// [`origin::parse_allowed`] when the server starts.
    pub allowed_origins: Vec<String>,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Sign for requests without an Origin header (local programs). Off: only web pages of the
    /// allowed origins, for their own challenges.
    ///
    /// Not a security boundary against programs on this machine: off or on, any local program
    /// can send an allowed site's Origin header and be taken for that site. What holds a local
    /// program back is the PIN, the certreg-challenge-only rule and `wrong_pin_delay`.
    pub allow_no_origin: bool,
    /// Accept plain `http://` allowed origins on hosts other than the loopback.
    pub allow_insecure_origin: bool,
    /// After a wrong PIN, PINs for that card are refused ([`ret::PIN_WAIT`], the card is not
    /// asked) for this long, so that a program cannot spend a card's tries in a burst.
    pub wrong_pin_delay: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            allowed_origins: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            allow_no_origin: false,
            allow_insecure_origin: false,
            wrong_pin_delay: DEFAULT_WRONG_PIN_DELAY,
        }
    }
}

/// The header by which the agent's popup names the origin of the page that posted the request
/// to it (`MessageEvent.origin`). Honoured only on requests from the agent's own origin.
pub const RELAY_ORIGIN_HEADER: &str = "x-certreg-relay-origin";

struct Inner {
    config: AgentConfig,
    backend: Arc<dyn CardBackend>,
    soft_cards: Option<Arc<SoftCards>>,
    /// The agent's own origins (`http://127.0.0.1:<port>` …): its pages call it from there.
    own_origins: Vec<String>,
    /// Hosts accepted in the Host header: the loopback addresses the agent listens on, and
    /// `localhost`.
    own_hosts: Vec<String>,
    /// One lock per card number: operations on one card never interleave.
    token_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Card number → until when PINs for it are refused (set by a wrong PIN).
    pin_wait_until: Mutex<HashMap<String, Instant>>,
    /// Per-process token of the status page's forms (with the Origin check, against CSRF).
    form_token: String,
    popup_html: String,
    popup_csp: String,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AgentState(Arc<Inner>);

fn random_token() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    // Without OS randomness the forms would be guessable; refuse to start rather than degrade.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("operating system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl AgentState {
    /// State for a server on `config.port` of both loopbacks (the port actually bound: own
    /// origins depend on it). Refuses allowed origins that would open the agent to every page.
    pub fn new(
        config: AgentConfig,
        backend: Arc<dyn CardBackend>,
        soft_cards: Option<Arc<SoftCards>>,
    ) -> Result<Self, OriginError> {
        Self::with_loopbacks(config, backend, soft_cards, true)
    }

    /// State for a server on 127.0.0.1 and, when `ipv6`, on [::1]: `[::1]:<port>` is one of the
    /// agent's own hosts and origins only when the agent listens there. `localhost` always is:
    /// without an IPv6 loopback it can only reach 127.0.0.1.
    fn with_loopbacks(
        config: AgentConfig,
        backend: Arc<dyn CardBackend>,
        soft_cards: Option<Arc<SoftCards>>,
        ipv6: bool,
    ) -> Result<Self, OriginError> {
        let mut config = config;
        let mut allowed = Vec::new();
        for o in &config.allowed_origins {
            let o = origin::parse_allowed(o, config.allow_insecure_origin)?;
            if !allowed.contains(&o) {
                allowed.push(o);
            }
        }
        config.allowed_origins = allowed;
        let port = config.port;
        let mut own_hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")];
        if ipv6 {
            own_hosts.push(format!("[::1]:{port}"));
        }
        let own_origins = own_hosts
            .iter()
            .filter_map(|h| origin::normalize(&format!("http://{h}")))
            .collect();
        let (popup_html, popup_script) = popup_page(&config.allowed_origins);
        let script_hash = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            popup_script.as_bytes(),
        ));
        let popup_csp = format!(
            "default-src 'none'; script-src 'sha256-{script_hash}'; connect-src 'self'; \
             style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
        );
        Ok(Self(Arc::new(Inner {
            config,
            backend,
            soft_cards,
            own_origins,
            own_hosts,
            token_locks: Mutex::new(HashMap::new()),
            pin_wait_until: Mutex::new(HashMap::new()),
            form_token: random_token(),
            popup_html,
            popup_csp,
        })))
    }

    pub fn config(&self) -> &AgentConfig {
        &self.0.config
    }

    fn token_lock(&self, serial: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.token_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(serial.to_string()).or_default().clone()
    }

    fn is_own_origin(&self, origin: &str) -> bool {
        self.0.own_origins.iter().any(|o| o == origin)
    }

    /// How much longer card `serial` takes no PIN (after a wrong one); `None` when it takes one.
    fn pin_wait(&self, serial: &str) -> Option<Duration> {
        let waits = self
            .0
            .pin_wait_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let until = *waits.get(serial)?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Records the outcome of a PIN tried on card `serial`: a wrong PIN starts its wait.
    fn note_pin_outcome(&self, serial: &str, wrong: bool) {
        let mut waits = self
            .0
            .pin_wait_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if wrong {
            waits.insert(
                serial.to_string(),
                Instant::now() + self.0.config.wrong_pin_delay,
            );
        } else {
            waits.remove(serial);
        }
    }
}

/// Who is asking, by the Origin header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    /// No Origin: curl, a native program, a same-origin GET.
    Local,
    /// The agent's own pages (the popup, the status page).
    Own,
    /// A configured site: gets CORS headers.
    Allowed(String),
    /// Anyone else.
    Refused(String),
}

fn caller(state: &AgentState, headers: &HeaderMap) -> Caller {
    let Some(raw) = headers.get(header::ORIGIN) else {
        return Caller::Local;
    };
    let text = String::from_utf8_lossy(raw.as_bytes()).into_owned();
    let Some(origin) = origin::normalize(&text) else {
        // `null` (sandboxed frames, file: pages) and anything unreadable.
        return Caller::Refused(text);
    };
    if state.is_own_origin(&origin) {
        Caller::Own
    } else if state.0.config.allowed_origins.contains(&origin) {
        Caller::Allowed(origin)
    } else {
        Caller::Refused(origin)
    }
}

/// `Sec-Fetch-Site`, lower case; `None` when the client did not send it (not a current browser).
fn fetch_site(headers: &HeaderMap) -> Option<String> {
    headers
        .get("sec-fetch-site")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
}

/// A request without Origin that a browser made for another site's page: a current browser
/// says so in `Sec-Fetch-Site` (an old one sends neither header, see [`signing_origin`]).
fn cross_site_without_origin(who: &Caller, headers: &HeaderMap) -> bool {
    *who == Caller::Local && fetch_site(headers).is_some_and(|s| s != "none" && s != "same-origin")
}

/// Whether a body is JSON by its Content-Type (`application/json`, parameters allowed).
fn is_json_content(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The site a signature may be made for, by who asks: an allowed site for itself; the agent's
/// popup for the page that posted to it (the relay header, which must name an allowed site);
/// a local program (no Origin) for any site, only when the agent allows that, and only in a
/// request no web page can send — JSON or a custom header (both need a CORS preflight, which
/// only allowed sites pass) and no cross-site `Sec-Fetch-Site` — so that a page in an old
/// browser that sends no Origin cannot spend a card's PIN tries. `Ok(None)`: any site.
fn signing_origin(
    state: &AgentState,
    who: &Caller,
    headers: &HeaderMap,
) -> Result<Option<String>, Refusal> {
    match who {
        Caller::Allowed(o) => Ok(Some(o.clone())),
        Caller::Refused(o) => Err(Refusal::new(
            ret::SITE_NOT_TRUSTED,
            format!("origin {o} is not allowed"),
        )),
        Caller::Own => {
            let Some(raw) = headers.get(RELAY_ORIGIN_HEADER) else {
                return Err(Refusal::new(
                    ret::NO_ORIGIN,
                    "a request of the agent's own page without the relayed origin",
                ));
            };
            let text = String::from_utf8_lossy(raw.as_bytes());
            match origin::normalize(&text) {
                Some(o) if state.0.config.allowed_origins.contains(&o) => Ok(Some(o)),
                _ => Err(Refusal::new(
                    ret::SITE_NOT_TRUSTED,
                    format!("relayed origin {text:?} is not allowed"),
                )),
            }
        }
        Caller::Local => {
            if !state.0.config.allow_no_origin {
                return Err(Refusal::new(ret::NO_ORIGIN, "no Origin header")
                    .with_message2("本機程式須於元件啟動時以 --allow-no-origin 允許"));
            }
            if cross_site_without_origin(who, headers) {
                return Err(Refusal::new(
                    ret::UNSAFE_REQUEST,
                    "no Origin, Sec-Fetch-Site says another site",
                ));
            }
            if !is_json_content(headers) && !headers.contains_key("x-requested-with") {
                return Err(Refusal::new(
                    ret::UNSAFE_REQUEST,
                    "no Origin and a body a form can send (JSON or X-Requested-With required)",
                ));
            }
            Ok(None)
        }
    }
}

/// JSON with `Vary: Origin` and, for an allowed site, its CORS header.
fn api_response(caller: &Caller, body: impl serde::Serialize) -> Response {
    with_cors(caller, Json(body).into_response())
}

/// `Vary: Origin`, no caching, no sniffing and, for an allowed site, its CORS header.
fn with_cors(caller: &Caller, mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Caller::Allowed(origin) = caller
        && let Ok(v) = HeaderValue::from_str(origin)
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    resp
}

/// The request headers a preflight asks for, when each is a plain header name (pages written for
/// HiPKI add their own to `GET /pkcs11info`); otherwise just Content-Type. Never the relay
/// header: only the agent's own popup sends it.
fn allowed_request_headers(headers: &HeaderMap) -> HeaderValue {
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let names: Vec<&str> = asked
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case(RELAY_ORIGIN_HEADER))
        .collect();
    let plain = names.len() <= 16
        && names.iter().all(|n| {
            n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if names.is_empty() || !plain {
        return HeaderValue::from_static("Content-Type");
    }
    HeaderValue::from_str(&names.join(", "))
        .unwrap_or_else(|_| HeaderValue::from_static("Content-Type"))
}

/// Answers the CORS preflight of every route.
async fn preflight(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    let Caller::Allowed(origin) = caller(&state, &headers) else {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "preflight refused");
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return resp;
    };
    if let Ok(v) = HeaderValue::from_str(&origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        allowed_request_headers(&headers),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    // Chrome's Private Network Access: a public page asking a loopback server.
    if headers
        .get("access-control-request-private-network")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        h.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
    }
    resp
}

/// Runs a blocking backend call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CardError> + Send + 'static,
) -> Result<T, CardError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(CardError::Device(format!("backend task failed: {e}"))))
}

fn wants_certs(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.eq_ignore_ascii_case("withcert=true") || p == "withcert=1")
    })
}

/// The `pkcs11info` answer for `who`.
async fn info_answer(
    state: &AgentState,
    who: &Caller,
    headers: &HeaderMap,
    with_cert: bool,
) -> Pkcs11InfoResponse {
    if let Caller::Refused(origin) = who {
        tracing::info!(%origin, "pkcs11info refused: site not trusted");
        return Pkcs11InfoResponse::refused(&Refusal::new(ret::SITE_NOT_TRUSTED, "origin"));
    }
    if cross_site_without_origin(who, headers) {
        return Pkcs11InfoResponse::refused(&Refusal::new(ret::UNSAFE_REQUEST, "cross-site"));
    }
    let backend = state.0.backend.clone();
    match blocking(move || backend.slots()).await {
        Ok(slots) if slots.is_empty() => {
            Pkcs11InfoResponse::refused(&Refusal::from(&CardError::NoReader))
        }
        Ok(slots) => Pkcs11InfoResponse::ok(
            slots
                .iter()
                .map(|s| protocol::slot_json(s, with_cert))
                .collect(),
        ),
        Err(CardError::Device(detail)) => {
            tracing::warn!(%detail, "listing readers failed");
            Pkcs11InfoResponse::refused(&Refusal::new(ret::READER_INFO, detail))
        }
        Err(e) => Pkcs11InfoResponse::refused(&Refusal::from(&e)),
    }
}

/// `GET` or `POST /pkcs11info[?withcert=true]`; the body, if any, is not read.
async fn pkcs11info(
    State(state): State<AgentState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let who = caller(&state, &headers);
    let answer = match body {
        Err(e) if !matches!(who, Caller::Refused(_)) => {
            Pkcs11InfoResponse::refused(&Refusal::new(ret::TOO_LARGE, e.to_string()))
        }
        _ => info_answer(&state, &who, &headers, wants_certs(&uri)).await,
    };
    tracing::info!(
        func = "pkcs11info",
        ret_code = format_args!("{:#x}", answer.ret_code),
        slots = answer.slots.len(),
        "answered"
    );
    api_response(&who, answer)
}

/// The BMP of `GET /p11Image.bmp`: 2000×1 pixels, 24 bits, each pixel three bytes of `json`
/// (blue, green, red — the order a BMP stores them in, so the pixel data is the text itself),
/// the rest zero. `json` must be ASCII and at most 6000 bytes.
fn p11_image(json: &str) -> Vec<u8> {
    const WIDTH: usize = 2000;
    const DATA: usize = WIDTH * 3; // a multiple of 4: the one row needs no padding
    let mut out = Vec::with_capacity(54 + DATA);
    out.extend_from_slice(b"BM");
    out.extend_from_slice(&((54 + DATA) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    out.extend_from_slice(&(WIDTH as i32).to_le_bytes());
    out.extend_from_slice(&1i32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // planes
    out.extend_from_slice(&24u16.to_le_bytes()); // bits per pixel
    out.extend_from_slice(&0u32.to_le_bytes()); // BI_RGB
    out.extend_from_slice(&(DATA as u32).to_le_bytes());
    out.extend_from_slice(&2835i32.to_le_bytes()); // 72 dpi
    out.extend_from_slice(&2835i32.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // palette sizes
    let mut data = json.as_bytes()[..json.len().min(DATA)].to_vec();
    data.resize(DATA, 0);
    out.extend_from_slice(&data);
    out
}

/// The `pkcs11info` JSON as the image carries it: ASCII only (`\uXXXX` escapes, the pixels
/// hold bytes), padded with spaces to whole pixels (a reader stops at the first pixel whose blue
/// byte is 0, so a last pixel with one or two characters would add NULs to the text). When the
/// certificates make it too long for 2000 pixels they are left out, then the readers.
fn p11_image_json(answer: &Pkcs11InfoResponse) -> String {
    let ascii = |a: &Pkcs11InfoResponse| {
        let text = serde_json::to_string(a).unwrap_or_default();
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
        while !out.len().is_multiple_of(3) {
            out.push(' ');
        }
        out
    };
    let full = ascii(answer);
    if full.len() <= 6000 {
        return full;
    }
    let mut lean = answer.clone();
    for slot in &mut lean.slots {
        if let Some(t) = &mut slot.token {
            t.certs.clear();
        }
    }
    let text = ascii(&lean);
    if text.len() <= 6000 {
        return text;
    }
    lean.slots.clear();
    ascii(&lean)
}

/// `GET /p11Image.bmp`: HiPKI's installation check, readable by the allowed sites through CORS
/// (`<img crossOrigin>` on a canvas).
async fn p11_image_bmp(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    let who = caller(&state, &headers);
    if matches!(who, Caller::Refused(_)) || cross_site_without_origin(&who, &headers) {
        return with_cors(&who, StatusCode::FORBIDDEN.into_response());
    }
    let answer = info_answer(&state, &who, &headers, false).await;
    let mut resp = p11_image(&p11_image_json(&answer)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/bmp"));
    with_cors(&who, resp)
}

async fn sign(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let who = caller(&state, &headers);
    let result = match (signing_origin(&state, &who, &headers), body) {
        (Err(r), _) => Err(r),
        (_, Err(e)) => Err(Refusal::new(ret::TOO_LARGE, e.to_string())),
        (Ok(site), Ok(body)) => match SignRequest::from_body(&body) {
            Ok(req) => do_sign(&state, req, site).await,
            Err(r) => Err(r),
        },
    };
    let answer = match result {
        Ok(a) => a,
        Err(r) => {
            tracing::info!(func = "sign", refusal = %r, "refused");
            SignResponse::refused(&r)
        }
    };
    tracing::info!(
        func = "sign",
        ret_code = format_args!("{:#x}", answer.ret_code),
        "answered"
    );
    api_response(&who, answer)
}

/// The reader the request names, else the first with a card that can sign.
fn choose_slot(slots: &[SlotInfo], wanted: Option<&str>) -> Result<(TokenInfo, CardCert), Refusal> {
    if slots.is_empty() {
        return Err(Refusal::from(&CardError::NoReader));
    }
    let signing_cert = |t: &TokenInfo| {
        t.certs
            .iter()
            .find(|c| ParsedCert::from_der(c.der.clone()).is_ok_and(|p| p.facts.can_sign()))
            .cloned()
    };
    let candidates: Vec<&SlotInfo> = match wanted {
        Some(desc) => slots.iter().filter(|s| s.description == desc).collect(),
        None => slots.iter().collect(),
    };
    let tokens: Vec<&TokenInfo> = candidates.iter().filter_map(|s| s.token.as_ref()).collect();
    if tokens.is_empty() {
        return Err(Refusal::new(
            ret::NO_CARD,
            match wanted {
                Some(d) => format!("no card in reader {d:?}"),
                None => "no card in any reader".into(),
            },
        ));
    }
    tokens
        .iter()
        .find_map(|t| signing_cert(t).map(|c| ((*t).clone(), c)))
        .ok_or_else(|| Refusal::new(ret::CERT_NOT_FOUND, "no certificate that may sign"))
}

/// Signs `req` for `site` (`None`: a local program allowed to sign for any site).
async fn do_sign(
    state: &AgentState,
    req: SignRequest,
    site: Option<String>,
) -> Result<SignResponse, Refusal> {
    // Only certreg challenges: a page of an allowed site still cannot make the card sign
    // arbitrary documents with the user's PIN.
    let challenge = Challenge::parse_tbs(&req.tbs).map_err(|e| {
        Refusal::new(ret::TBS_REFUSED, format!("TBS refused: {}", e.detail))
            .with_message2("待簽內容須為 certreg 簽章挑戰（certreg-challenge/1）")
    })?;
    // Only for the site that asks: with two trusted sites, one must not get the card to sign
    // the other's challenge. Both sides are in the one form of `origin::normalize`.
    if let Some(site) = site
        && origin::normalize(&challenge.origin).as_deref() != Some(site.as_str())
    {
        return Err(Refusal::new(
            ret::ORIGIN_MISMATCH,
            format!("challenge for {} asked by {site}", challenge.origin),
        )
        .with_message2(format!(
            "挑戰所屬網站：{}；提出請求的網站：{site}",
            challenge.origin
        )));
    }
    if req.pin.is_empty() {
        return Err(Refusal::new(ret::NO_PIN, "no PIN"));
    }
    let backend = state.0.backend.clone();
    let slots = blocking(move || backend.slots())
        .await
        .map_err(|e| Refusal::from(&e))?;
    let (token, cert) = choose_slot(&slots, req.slot_description.as_deref())?;

    // Checked before the PIN is tried, so an expired card does not cost a PIN try.
    let now = OffsetDateTime::now_utc();
    let parsed = ParsedCert::from_der(cert.der.clone())
        .map_err(|e| Refusal::new(ret::CERT_NOT_FOUND, e.to_string()))?;
    if now > parsed.facts.not_after {
        return Err(Refusal::new(
            ret::CERT_EXPIRED,
            format!("certificate expired at {}", parsed.facts.not_after),
        ));
    }
    if now < parsed.facts.not_before {
        return Err(Refusal::new(
            ret::CERT_NOT_YET_VALID,
            format!("certificate valid from {}", parsed.facts.not_before),
        ));
    }

    let lock = state.token_lock(&token.serial_number);
    let _held = lock.lock_owned().await;
    // Checked under the card's lock, so that requests queued behind a wrong PIN wait too.
    if let Some(left) = state.pin_wait(&token.serial_number) {
        let secs = left.as_millis().div_ceil(1000).max(1);
        return Err(Refusal::new(
            ret::PIN_WAIT,
            format!(
                "card {}: a PIN {} ms too soon after a wrong one",
                token.serial_number,
                left.as_millis()
            ),
        )
        .with_message2(format!("請於 {secs} 秒後再輸入PIN碼")));
    }
    let backend = state.0.backend.clone();
    let serial = token.serial_number.clone();
    let signature_type = req.signature_type;
    let opts = pki::cms::CmsSignOptions {
        signing_time: Some(now),
        nonce: req.nonce.clone(),
        card_number: req.with_card_sn.then(|| serial.clone()),
        ..Default::default()
    };
    let cert_for_sign = cert.clone();
    let SignRequest { tbs, pin, .. } = req;
    let started = std::time::Instant::now();
    let signature = blocking(move || match signature_type {
        SignatureType::Pkcs1 => backend.sign(&serial, &cert_for_sign, &pin, &tbs),
        SignatureType::Pkcs7 => {
            let mut card_error = None;
            let built = pki::cms::build_signed_data(&tbs, &cert_for_sign.der, &opts, |to_sign| {
                backend
                    .sign(&serial, &cert_for_sign, &pin, to_sign)
                    .map_err(|e| {
                        card_error = Some(e);
                        pki::PkiError::new(pki::ErrorCode::SignatureInvalid, "card")
                    })
            });
            match (built, card_error) {
                (_, Some(e)) => Err(e),
                (Ok(der), None) => Ok(der),
                (Err(e), None) => Err(CardError::Device(e.to_string())),
            }
        }
    })
    .await;
    match &signature {
        Err(CardError::PinIncorrect { .. }) => state.note_pin_outcome(&token.serial_number, true),
        Ok(_) => state.note_pin_outcome(&token.serial_number, false),
        Err(_) => {}
    }
    let signature = signature.map_err(|e| Refusal::from(&e))?;
    tracing::info!(
        card = %token.serial_number,
        millis = started.elapsed().as_millis() as u64,
        "signed"
    );
    Ok(SignResponse::ok(
        &signature,
        &cert.der,
        Some(&token.serial_number),
    ))
}

/// Refuses requests whose Host is not the loopback: a DNS-rebinding page (evil.example resolving
/// to 127.0.0.1) would otherwise be same-origin with the agent.
async fn check_host(State(state): State<AgentState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    match host {
        Some(h) if state.0.own_hosts.contains(&h) => next.run(req).await,
        _ => {
            tracing::info!(host = ?host, "request for a foreign Host refused");
            (
                StatusCode::MISDIRECTED_REQUEST,
                "certreg agent: wrong Host\n",
            )
                .into_response()
        }
    }
}

/// Builds the popup page; returns (page, its inline script) so the CSP can name the script's hash.
fn popup_page(allowed: &[String]) -> (String, String) {
    // `<` escaped so that no origin string can close the script element.
    let origins = serde_json::to_string(allowed)
        .unwrap_or_else(|_| "[]".into())
        .replace('<', "\\u003c");
    let script = POPUP_SCRIPT.replace("__ALLOWED__", &origins);
    let page = format!(
        "<!doctype html>\n<html lang=\"zh-Hant\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>certreg 讀卡元件</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}</style>\n</head>\n<body>\n\
         <p id=\"status\">certreg 讀卡元件：等待網頁的請求…</p>\n<script>{script}</script>\n\
         </body>\n</html>\n"
    );
    (page, script)
}

/// The bridge for pages that talk to the agent by postMessage (HiPKI's popup mode): ready signal
/// `{"func":"getTbs"}` (a JSON string, as HiPKI sends it) to each allowed origin — the browser
/// delivers it only if the opener has that origin; then ONE request, accepted only from the
/// window that opened the popup and only from an allowed origin, performed against the agent's
/// own endpoints with that origin in the relay header (the agent signs only a challenge naming
/// it), answered to that origin only, and the window closes. A challenge naming another site is
/// refused here already, before the agent is asked.
const POPUP_SCRIPT: &str = r#"
(function () {
  "use strict";
  var ALLOWED = __ALLOWED__;
  var done = false;
  var status = document.getElementById("status");
  function endpoint(req) {
    switch (req.func) {
      case "MakeSignature": case "sign": return "/sign";
      case "GetUserCert": return "/pkcs11info?withcert=true";
      case "CheckEnvir": return "/pkcs11info";
      case "pkcs11info":
        return (req.withcert === false || req.withcert === "false") ? "/pkcs11info" : "/pkcs11info?withcert=true";
      default: return null;
    }
  }
  // The origin= line of a certreg challenge (tbs as the agent reads it: percent-decoded, then
  // base64 when tbsEncoding says so); null when the tbs is no challenge (the agent refuses it).
  function challengeOrigin(req) {
    try {
      var tbs = decodeURIComponent(String(req.tbs || ""));
      if (String(req.tbsEncoding || "").toLowerCase() === "base64") {
        // ASCII whitespace only, as the agent reads it (atob alone would also drop form feeds).
        var b64 = tbs.replace(/[ \t\r\n]+/g, "");
        if (/[^A-Za-z0-9+\/=]/.test(b64)) return null;
        var bin = atob(b64);
        var bytes = new Uint8Array(bin.length);
        for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
        tbs = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      }
      var lines = tbs.split("\n");
      if (lines[0] !== "certreg-challenge/1" || !/^origin=/.test(lines[2] || "")) return null;
      return lines[2].slice(7);
    } catch (e) { return null; }
  }
  function sameOrigin(a, b) {
    try { return new URL(a).origin === b && /^https?:\/\/[^\/?#@]+$/.test(a); } catch (e) { return false; }
  }
  window.addEventListener("message", function (ev) {
    if (done || !window.opener || ev.source !== window.opener || ALLOWED.indexOf(ev.origin) < 0) return;
    var req;
    try { req = typeof ev.data === "string" ? JSON.parse(ev.data) : ev.data; } catch (e) { return; }
    if (!req || typeof req !== "object" || req.func === "getTbs") return;
    done = true;
    var source = ev.source, origin = ev.origin;
    function answer(text) {
      source.postMessage(text, origin);
      status.textContent = "完成，視窗即將關閉。";
      window.close();
    }
    var url = endpoint(req);
    if (!url) {
      answer(JSON.stringify({ func: String(req.func), ret_code: 0x7600000E, last_error: 0, message: "不支援的方法", message2: "" }));
      return;
    }
    if (url === "/sign") {
      var named = challengeOrigin(req);
      if (named !== null && !sameOrigin(named, origin)) {
        answer(JSON.stringify({ func: "sign", ret_code: 0x76000C03, last_error: 0,
          message: "簽章挑戰屬於其他網站，本元件拒絕代為簽章",
          message2: "挑戰所屬網站：" + named + "；提出請求的網站：" + origin,
          signature: "", certb64: "", cardSN: "" }));
        return;
      }
    }
    status.textContent = "處理中，請稍候…";
    fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Certreg-Relay-Origin": origin },
      body: url === "/sign" ? JSON.stringify(req) : "",
      credentials: "omit",
      cache: "no-store"
    }).then(function (r) { return r.text(); }).then(answer, function () {
      answer(JSON.stringify({ func: String(req.func), ret_code: 0x76100004, last_error: 0, message: "讀卡元件無回應", message2: "" }));
    });
  });
  if (window.opener) {
    var ready = JSON.stringify({ func: "getTbs" });
    ALLOWED.forEach(function (o) { try { window.opener.postMessage(ready, o); } catch (e) { } });
  } else {
    status.textContent = "此頁面須由網頁開啟。";
  }
})();
"#;

async fn popup_form(State(state): State<AgentState>) -> Response {
    let mut resp = Html(state.0.popup_html.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&state.0.popup_csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pin_text(p: &crate::backend::PinState) -> String {
    if p.locked {
        "已鎖卡".into()
    } else if let Some(n) = p.tries_left {
        if p.count_low {
            format!("曾輸入錯誤，剩餘 {n} 次")
        } else {
            format!("正常（剩餘 {n} 次）")
        }
    } else if p.final_try {
        "剩最後一次機會".into()
    } else if p.count_low {
        "曾輸入錯誤".into()
    } else {
        "正常".into()
    }
}

/// The status page: readers, cards, soft cards and trusted sites. The insert/eject buttons are
/// shown only to a page the user opened in the agent itself (`Sec-Fetch-Site` `none` or
/// `same-origin`); the page may not be framed (a click on a framed button would be the framing
/// site's).
async fn status_page(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    let buttons = matches!(
        fetch_site(&headers).as_deref(),
        Some("none" | "same-origin")
    );
    let backend = state.0.backend.clone();
    let slots = blocking(move || backend.slots()).await;
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>certreg 讀卡元件</h1>\n<p>後端：{}　版本：{}</p>\n",
        esc(&state.0.backend.name()),
        protocol::SERVER_VERSION
    ));
    body.push_str("<h2>讀卡機與卡片</h2>\n");
    match slots {
        Err(e) => body.push_str(&format!(
            "<p class=\"err\">{}（{}）</p>\n",
            protocol::message_zh(Refusal::from(&e).ret_code, Refusal::from(&e).last_error),
            esc(&e.to_string())
        )),
        Ok(slots) if slots.is_empty() => body.push_str("<p>無可用讀卡機</p>\n"),
        Ok(slots) => {
            body.push_str(
                "<table>\n<tr><th>讀卡機</th><th>卡號</th><th>PIN 狀態</th><th>憑證</th></tr>\n",
            );
            for s in &slots {
                match &s.token {
                    None => body.push_str(&format!(
                        "<tr><td>{}</td><td colspan=\"3\">未插入IC卡</td></tr>\n",
                        esc(&s.description)
                    )),
                    Some(t) => {
                        let certs: Vec<String> = t
                            .certs
                            .iter()
                            .filter_map(|c| protocol::cert_json(&c.label, &c.der, false))
                            .map(|c| {
                                format!(
                                    "{}（序號 {}，{} 至 {}，用途 {}）",
                                    esc(&c.subject_cn),
                                    esc(&c.sn),
                                    esc(&c.not_before[..10.min(c.not_before.len())]),
                                    esc(&c.not_after[..10.min(c.not_after.len())]),
                                    esc(&c.usage)
                                )
                            })
                            .collect();
                        body.push_str(&format!(
                            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                            esc(&s.description),
                            esc(&t.serial_number),
                            pin_text(&t.pin),
                            certs.join("<br>")
                        ));
                    }
                }
            }
            body.push_str("</table>\n");
        }
    }
    if let Some(cards) = &state.0.soft_cards {
        let cards2 = cards.clone();
        body.push_str(&format!(
            "<h2>軟體卡片（{}）</h2>\n",
            esc(&cards.dir().display().to_string())
        ));
        match blocking(move || cards2.cards()).await {
            Err(e) => body.push_str(&format!("<p class=\"err\">{}</p>\n", esc(&e.to_string()))),
            Ok(list) => {
                body.push_str(
                    "<table>\n<tr><th>卡片</th><th>卡號</th><th>位置</th><th>PIN 狀態</th><th></th></tr>\n",
                );
                for c in list {
                    let (where_, action, label) = match c.reader {
                        Some(r) => (
                            esc(&crate::softcard::reader_description(r)),
                            "eject",
                            "退出",
                        ),
                        None => ("未插入".to_string(), "insert", "插入"),
                    };
                    let button = if c.problem.is_some() && c.reader.is_none() {
                        esc(c.problem.as_deref().unwrap_or(""))
                    } else if !buttons {
                        String::new()
                    } else {
                        format!(
                            "<form method=\"post\" action=\"/softcards/{action}\">\
                             <input type=\"hidden\" name=\"name\" value=\"{}\">\
                             <input type=\"hidden\" name=\"token\" value=\"{}\">\
                             <button type=\"submit\">{label}</button></form>",
                            esc(&c.name),
                            esc(&state.0.form_token)
                        )
                    };
                    body.push_str(&format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                        esc(&c.name),
                        esc(&c.card_number),
                        where_,
                        pin_text(&c.pin),
                        button
                    ));
                }
                body.push_str("</table>\n");
            }
        }
    }
    body.push_str("<h2>信任網站</h2>\n<ul>\n");
    if state.0.config.allowed_origins.is_empty() {
        body.push_str("<li>（未設定：任何網站的請求都會被拒絕）</li>\n");
    }
    for o in &state.0.config.allowed_origins {
        body.push_str(&format!("<li>{}</li>\n", esc(o)));
    }
    body.push_str("</ul>\n");
    let page = format!(
        "<!doctype html>\n<html lang=\"zh-Hant\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>certreg 讀卡元件狀態</title>\n<style>body{{font-family:sans-serif;margin:2em;\
         color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.3em .6em;\
         text-align:left}}.err{{color:#b00}}form{{margin:0}}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    );
    let mut resp = Html(page).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Sec-Fetch-Site"));
    resp
}

/// `POST /softcards/insert|eject`: only from the status page itself (its Origin, a same-origin
/// `Sec-Fetch-Site` when the browser sends one, and its token).
async fn softcard_action(
    state: AgentState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    insert: bool,
) -> Response {
    let site = fetch_site(&headers);
    if caller(&state, &headers) != Caller::Own || site.is_some_and(|s| s != "same-origin") {
        return (StatusCode::FORBIDDEN, "只接受本元件狀態頁的操作\n").into_response();
    }
    let Ok(body) = body else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "請求資料過大\n").into_response();
    };
    let text = String::from_utf8_lossy(&body);
    let field = |n: &str| protocol::form_field(&text, n).ok().flatten();
    if field("token").as_deref() != Some(state.0.form_token.as_str()) {
        return (StatusCode::FORBIDDEN, "表單已失效，請重新整理狀態頁\n").into_response();
    }
    let (Some(cards), Some(name)) = (state.0.soft_cards.clone(), field("name")) else {
        return (StatusCode::BAD_REQUEST, "非軟體卡片模式或缺少卡片名稱\n").into_response();
    };
    let result = blocking(move || {
        if insert {
            cards.insert(&name).map(|_| ())
        } else {
            cards.eject(&name).map(|_| ())
        }
    })
    .await;
    match result {
        Ok(()) => Redirect::to("/").into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn softcard_insert(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    softcard_action(state, headers, body, true).await
}

async fn softcard_eject(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    softcard_action(state, headers, body, false).await
}

/// Unknown paths and methods get the HiPKI "unsupported method" answer.
async fn fallback(method: Method, uri: Uri) -> Response {
    tracing::debug!(%method, %uri, "unknown endpoint");
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "ret_code": ret::UNSUPPORTED_METHOD,
            "last_error": 0,
            "message": protocol::message_zh(ret::UNSUPPORTED_METHOD, 0),
        })),
    )
        .into_response()
}

/// All endpoints.
pub fn router(state: AgentState) -> Router {
    Router::new()
        .route(
            "/pkcs11info",
            get(pkcs11info).post(pkcs11info).options(preflight),
        )
        .route("/sign", post(sign).options(preflight))
        .route("/popupForm", get(popup_form).options(preflight))
        .route("/p11Image.bmp", get(p11_image_bmp).options(preflight))
        .route("/", get(status_page))
        .route("/softcards/insert", post(softcard_insert))
        .route("/softcards/eject", post(softcard_eject))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(state.0.config.max_body))
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}

fn backend_name(state: &AgentState) -> String {
    state.0.backend.name()
}

/// The agent's sockets: `127.0.0.1:<port>` and, when the machine has an IPv6 loopback,
/// `[::1]:<port>` (browsers try `[::1]` first for `localhost`; a program listening there instead
/// of the agent would get the requests of pages that call `localhost`). Made by [`bind`].
#[derive(Debug)]
pub struct Loopback {
    v4: TcpListener,
    v6: Option<TcpListener>,
}

impl Loopback {
    /// The IPv4 address (`127.0.0.1:<port>`); the IPv6 one, when there is one, has the same port.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.v4.local_addr()
    }

    /// Whether the agent also listens on `[::1]`.
    pub fn has_ipv6(&self) -> bool {
        self.v6.is_some()
    }
}

impl axum::serve::Listener for Loopback {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The trait's accept: it logs and retries accept errors rather than returning them.
        use axum::serve::Listener;
        match &mut self.v6 {
            None => Listener::accept(&mut self.v4).await,
            Some(v6) => tokio::select! {
                c = Listener::accept(&mut self.v4) => c,
                c = Listener::accept(v6) => c,
            },
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.v4.local_addr()
    }
}

/// Whether binding `[::1]` failed because this machine has no IPv6 loopback (IPv6 disabled or
/// not built in), as opposed to the address being taken or refused.
fn no_ipv6_loopback(e: &std::io::Error) -> bool {
    // EAFNOSUPPORT: Linux 97, the BSDs and macOS 47, Windows WSAEAFNOSUPPORT 10047.
    const AF_NOT_SUPPORTED: &[i32] = if cfg!(target_os = "linux") {
        &[97]
    } else if cfg!(windows) {
        &[10047]
    } else {
        &[47]
    };
    e.kind() == std::io::ErrorKind::AddrNotAvailable
        || e.raw_os_error()
            .is_some_and(|c| AF_NOT_SUPPORTED.contains(&c))
}

/// Binds `127.0.0.1:port` and `[::1]:port` (never another interface). Fails when either is
/// taken: the agent does not start beside a program that would get its pages' requests. Binds
/// 127.0.0.1 alone only on a machine without an IPv6 loopback. Port 0 picks a port free on both.
pub async fn bind(port: u16) -> std::io::Result<Loopback> {
    // With port 0, the port the system chose on 127.0.0.1 may be taken on [::1]: choose again.
    const ATTEMPTS: usize = 32;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let v4 = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        let bound = v4.local_addr()?.port();
        match TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, bound))).await {
            Ok(v6) => return Ok(Loopback { v4, v6: Some(v6) }),
            Err(e) if no_ipv6_loopback(&e) => {
                tracing::warn!(error = %e, "no IPv6 loopback: listening on 127.0.0.1 only");
                return Ok(Loopback { v4, v6: None });
            }
            Err(e)
                if port == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempt < ATTEMPTS =>
            {
                continue;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen on [::1]:{bound} ({e}); the card agent does not start \
                         while another program holds the IPv6 loopback port: browsers try \
                         [::1] first for localhost, so that program would get the pages' \
                         requests and PINs. Stop it or choose another port"
                    ),
                ));
            }
        }
    }
}

/// Serves on the loopback sockets of [`bind`] until `shutdown` completes.
pub async fn serve_on(
    listener: Loopback,
    config: AgentConfig,
    backend: Arc<dyn CardBackend>,
    soft_cards: Option<Arc<SoftCards>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let ipv6 = listener.has_ipv6();
    let config = AgentConfig {
        port: addr.port(),
        ..config
    };
    let state = AgentState::with_loopbacks(config, backend, soft_cards, ipv6)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tracing::info!(%addr, ipv6, backend = %backend_name(&state), origins = ?state.config().allowed_origins,
        allow_no_origin = state.config().allow_no_origin, "card agent listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `127.0.0.1:<config.port>` and `[::1]:<config.port>` and serves until `shutdown`
/// completes.
pub async fn serve(
    config: AgentConfig,
    backend: Arc<dyn CardBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = bind(config.port).await?;
    serve_on(listener, config, backend, None, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoCards;

    impl CardBackend for NoCards {
        fn name(&self) -> String {
            "none".into()
        }
        fn slots(&self) -> Result<Vec<SlotInfo>, CardError> {
            Ok(Vec::new())
        }
        fn sign(&self, _: &str, _: &CardCert, _: &str, _: &[u8]) -> Result<Vec<u8>, CardError> {
            Err(CardError::NoCard)
        }
    }

    fn state(ipv6: bool) -> AgentState {
        let config = AgentConfig {
            port: 61161,
            ..AgentConfig::default()
        };
        AgentState::with_loopbacks(config, Arc::new(NoCards), None, ipv6).unwrap()
    }

    #[test]
    fn without_an_ipv6_loopback_the_agent_does_not_take_ipv6_for_its_own() {
        let v4 = state(false);
        assert_eq!(v4.0.own_hosts, ["127.0.0.1:61161", "localhost:61161"]);
        assert!(v4.is_own_origin("http://localhost:61161"));
        assert!(!v4.is_own_origin("http://[::1]:61161"));
        let both = state(true);
        assert!(both.0.own_hosts.iter().any(|h| h == "[::1]:61161"));
        assert!(both.is_own_origin("http://[::1]:61161"));
    }

    #[test]
    fn only_a_missing_ipv6_loopback_lets_the_agent_start_on_ipv4_alone() {
        use std::io::{Error, ErrorKind};
        assert!(no_ipv6_loopback(&Error::from(ErrorKind::AddrNotAvailable)));
        #[cfg(target_os = "linux")]
        assert!(no_ipv6_loopback(&Error::from_raw_os_error(97)));
        for taken in [
            ErrorKind::AddrInUse,
            ErrorKind::PermissionDenied,
            ErrorKind::Other,
        ] {
            assert!(!no_ipv6_loopback(&Error::from(taken)), "{taken:?}");
        }
    }

    #[test]
    fn a_wrong_pin_starts_the_wait_and_a_right_one_ends_it() {
        let s = state(true);
        assert_eq!(s.pin_wait("card-1"), None);
        s.note_pin_outcome("card-1", true);
        let left = s.pin_wait("card-1").expect("waiting");
        assert!(left <= DEFAULT_WRONG_PIN_DELAY);
        assert_eq!(s.pin_wait("card-2"), None, "per card");
        s.note_pin_outcome("card-1", false);
        assert_eq!(s.pin_wait("card-1"), None);
    }
}
