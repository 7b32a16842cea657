//! The agent's HTTP server on 127.0.0.1: `/pkcs11info` and `/sign` (HiPKI protocol, CORS for
//! configured origins only), `/popupForm` (the postMessage bridge for sites that use the real
//! agent's popup mode), and `/`, a zh-TW status page with soft-card insert/eject.
//!
//! Safety rules, each enforced here: the socket is bound to the loopback address only; the Host
//! header must name the loopback (a DNS-rebinding page cannot read the agent); a request whose
//! Origin is not configured gets "site not trusted" and no CORS headers; bodies are size-limited;
//! only certreg challenges are signed; one operation at a time per card; the PIN is never logged.

use crate::backend::{CardBackend, CardCert, CardError, SlotInfo, TokenInfo};
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
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::net::TcpListener;

/// The HiPKI local server's port.
pub const DEFAULT_PORT: u16 = 61161;
/// A `tbsPackage` is a few KiB at most (a TBS is ≤ 2 KiB).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// How the agent is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// TCP port on 127.0.0.1 (0 = any free port, for tests).
    pub port: u16,
    /// Origins (`https://certreg.example.gov.tw`) whose pages may call the agent.
    pub allowed_origins: Vec<String>,
    /// Largest request body accepted.
    pub max_body: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            allowed_origins: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// Normalises a configured origin: scheme and host lower case, no trailing slash.
pub fn normalize_origin(origin: &str) -> String {
    let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    // Browsers leave the scheme's default port out of Origin; a configured one must match that.
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        if o.starts_with(scheme) && o.ends_with(port) {
            return o[..o.len() - port.len()].to_string();
        }
    }
    o
}

struct Inner {
    config: AgentConfig,
    backend: Arc<dyn CardBackend>,
    soft_cards: Option<Arc<SoftCards>>,
    /// The agent's own origins (`http://127.0.0.1:<port>` …): its pages call it from there.
    own_origins: Vec<String>,
    /// Hosts accepted in the Host header.
    own_hosts: Vec<String>,
    /// One lock per card number: operations on one card never interleave.
    token_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
    /// State for a server on `config.port` (the port actually bound: own origins depend on it).
    pub fn new(
        config: AgentConfig,
        backend: Arc<dyn CardBackend>,
        soft_cards: Option<Arc<SoftCards>>,
    ) -> Self {
        let mut config = config;
        config.allowed_origins = config
            .allowed_origins
            .iter()
            .map(|o| normalize_origin(o))
            .collect();
        let port = config.port;
        let own_hosts = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        let own_origins = own_hosts.iter().map(|h| format!("http://{h}")).collect();
        let (popup_html, popup_script) = popup_page(&config.allowed_origins);
        let script_hash = base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            popup_script.as_bytes(),
        ));
        let popup_csp = format!(
            "default-src 'none'; script-src 'sha256-{script_hash}'; connect-src 'self'; \
             style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
        );
        Self(Arc::new(Inner {
            config,
            backend,
            soft_cards,
            own_origins,
            own_hosts,
            token_locks: Mutex::new(HashMap::new()),
            form_token: random_token(),
            popup_html,
            popup_csp,
        }))
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
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Caller::Local;
    };
    let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
    if state.is_own_origin(&origin) {
        Caller::Own
    } else if state.0.config.allowed_origins.contains(&origin) {
        Caller::Allowed(origin)
    } else {
        Caller::Refused(origin)
    }
}

/// JSON with `Vary: Origin` and, for an allowed site, its CORS header.
fn api_response(caller: &Caller, body: impl serde::Serialize) -> Response {
    let mut resp = Json(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Caller::Allowed(origin) = caller
        && let Ok(v) = HeaderValue::from_str(origin)
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    resp
}

/// Answers the CORS preflight of `/pkcs11info` and `/sign`.
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
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
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

async fn pkcs11info(
    State(state): State<AgentState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let who = caller(&state, &headers);
    let answer = match (&who, body) {
        (Caller::Refused(origin), _) => {
            tracing::info!(%origin, "pkcs11info refused: site not trusted");
            Pkcs11InfoResponse::refused(&Refusal::new(ret::SITE_NOT_TRUSTED, "origin"))
        }
        (_, Err(e)) => Pkcs11InfoResponse::refused(&Refusal::new(ret::TOO_LARGE, e.to_string())),
        (_, Ok(_)) => {
            let with_cert = wants_certs(&uri);
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
    };
    tracing::info!(
        func = "pkcs11info",
        ret_code = format_args!("{:#x}", answer.ret_code),
        slots = answer.slots.len(),
        "answered"
    );
    api_response(&who, answer)
}

async fn sign(
    State(state): State<AgentState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let who = caller(&state, &headers);
    let result = match (&who, body) {
        (Caller::Refused(origin), _) => Err(Refusal::new(
            ret::SITE_NOT_TRUSTED,
            format!("origin {origin} is not allowed"),
        )),
        (_, Err(e)) => Err(Refusal::new(ret::TOO_LARGE, e.to_string())),
        (_, Ok(body)) => match SignRequest::from_body(&body) {
            Ok(req) => do_sign(&state, req).await,
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

async fn do_sign(state: &AgentState, req: SignRequest) -> Result<SignResponse, Refusal> {
    // Only certreg challenges: a page of an allowed site still cannot make the card sign
    // arbitrary documents with the user's PIN.
    Challenge::parse_tbs(&req.tbs)
        .map_err(|e| Refusal::new(ret::TBS_REFUSED, format!("TBS refused: {}", e.detail)))?;
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
    .await
    .map_err(|e| Refusal::from(&e))?;
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
/// delivers it only if the opener has that origin; then ONE request from an allowed origin,
/// performed against the agent's own endpoints, answered to that origin only, and the window
/// closes.
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
  window.addEventListener("message", function (ev) {
    if (done || ALLOWED.indexOf(ev.origin) < 0 || !ev.source) return;
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
      answer(JSON.stringify({ func: String(req.func), ret_code: 0x7600000E, last_error: 0, message: "不支援的方法" }));
      return;
    }
    status.textContent = "處理中，請稍候…";
    fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: url === "/sign" ? JSON.stringify(req) : "",
      credentials: "omit",
      cache: "no-store"
    }).then(function (r) { return r.text(); }).then(answer, function () {
      answer(JSON.stringify({ func: String(req.func), ret_code: 0x76100004, last_error: 0, message: "讀卡元件無回應" }));
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

async fn status_page(State(state): State<AgentState>) -> Response {
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
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /softcards/insert|eject`: only from the status page itself (its Origin and its token).
async fn softcard_action(
    state: AgentState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    insert: bool,
) -> Response {
    if caller(&state, &headers) != Caller::Own {
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
        .route("/pkcs11info", post(pkcs11info).options(preflight))
        .route("/sign", post(sign).options(preflight))
        .route("/popupForm", get(popup_form))
        .route("/", get(status_page))
        .route("/softcards/insert", post(softcard_insert))
        .route("/softcards/eject", post(softcard_eject))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(state.0.config.max_body))
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}

/// Binds `127.0.0.1:port` (never another interface).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
}

/// Serves on an already bound loopback listener until `shutdown` completes.
pub async fn serve_on(
    listener: TcpListener,
    config: AgentConfig,
    backend: Arc<dyn CardBackend>,
    soft_cards: Option<Arc<SoftCards>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "the card agent listens on the loopback address only, not {addr}"
        )));
    }
    let config = AgentConfig {
        port: addr.port(),
        ..config
    };
    tracing::info!(%addr, backend = %backend.name(), origins = ?config.allowed_origins, "card agent listening");
    let state = AgentState::new(config, backend, soft_cards);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `127.0.0.1:<config.port>` and serves until `shutdown` completes.
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
    #[test]
    fn default_ports_are_left_out_like_browsers_do() {
        assert_eq!(
            super::normalize_origin("https://Certreg.Example:443/"),
            "https://certreg.example"
        );
        assert_eq!(
            super::normalize_origin("http://localhost:80"),
            "http://localhost"
        );
        assert_eq!(
            super::normalize_origin("http://localhost:8080"),
            "http://localhost:8080"
        );
    }
}
