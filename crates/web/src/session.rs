//! Browser and API sessions, stored in the database (so several instances on PostgreSQL share
//! them): a random id in a cookie (or a bearer token for API clients), idle timeout 15 minutes,
//! absolute limit 8 hours, a CSRF token, and what the user has proven so far (an administrator
//! grant after F2, an operator grant after F5).

use crate::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domain::flow::Flow;
use domain::model::Section;
use domain::service::{AdminGrant, OperatorGrant};
use domain::store::{
    Backend, SUPERSEDED, SessionRecord, SessionSaved, SessionStore as _, SessionWrite, session_key,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

pub const IDLE: Duration = Duration::minutes(15);
/// A session read but not changed is written back (its idle timeout moved on) only when its
/// last write is at least this old: reading it again sooner costs no write. The idle timeout
/// runs from that write, so a session ends between `IDLE - TOUCH_EVERY` and `IDLE` after its
/// last request, never later.
pub const TOUCH_EVERY: Duration = Duration::seconds(30);
pub const ABSOLUTE: Duration = Duration::hours(8);

/// What a session holds. Serialised, encrypted at rest by the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionData {
    pub csrf: String,
    pub admin: Option<AdminGrant>,
    pub operator: Option<OperatorGrant>,
    /// The outcome of the last finished flow, shown on its result page.
    pub result: Option<FlowResult>,
    /// A message for the next page after a redirect (「新增成功」), shown once.
    pub flash: Option<String>,
    /// A back-office reviewer after 本部審核人員登入 (R6.1).
    #[serde(default)]
    pub reviewer: Option<ReviewerSession>,
    /// The random handle the operator's tokens name this session by (`sid`; see `token.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sid: Option<String>,
}

/// What a finished flow did, kept for its result page (post/redirect/get), which shows it only
/// for its own flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FlowResult {
    /// 首次註冊 or a replacement confirmed.
    Registration {
        flow_id: String,
        code: String,
        org_name: String,
        admin_name: String,
        /// The version of 用戶約定條款 agreed to (首次註冊 and the replacements with terms).
        #[serde(default)]
        terms_version: Option<String>,
        /// For the printable receipt: when it was received (unix seconds) and the serials of
        /// the registered certificates.
        #[serde(default)]
        at: i64,
        #[serde(default)]
        org_serial: String,
        #[serde(default)]
        admin_serial: String,
    },
    /// A review application filed (圖3-7), with the numbers to call.
    Review {
        flow_id: String,
        application: i64,
        /// The section in charge of the agency's county; `None`: both are named.
        #[serde(default)]
        in_charge: Option<domain::model::Section>,
    },
    /// 查詢機關憑證 OID (R4.2).
    OrgOid {
        flow_id: String,
        agency_name: String,
        org_name: String,
        org_identifier: String,
        verdict: domain::model::OidVerdict,
    },
    /// 查詢自然人憑證序號 (R4.3).
    CitizenSerial {
        flow_id: String,
        name: String,
        serial: String,
    },
}

impl FlowResult {
    pub fn flow_id(&self) -> &str {
        match self {
            Self::Registration { flow_id, .. }
            | Self::Review { flow_id, .. }
            | Self::OrgOid { flow_id, .. }
            | Self::CitizenSerial { flow_id, .. } => flow_id,
        }
    }
}

/// Who the back-office reviewer is (R6.1): checked against the store on every back-office page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewerSession {
    pub id: i64,
    pub name: String,
    pub section: Section,
}

/// The session of the current request.
#[derive(Clone)]
pub struct Session {
    /// The key the store, flows and challenges know this session by (`session_key` of
    /// the token); the token itself is only ever in the cookie or the bearer header.
    pub id: String,
    token: String,
    pub data: SessionData,
    pub created_at: OffsetDateTime,
    /// Came from `Authorization: Bearer` (API client) rather than the cookie.
    pub bearer: bool,
    /// The request named a session that is no longer on file (timed out, logged out, or ended
    /// by a replacement), so pages can say the session ended rather than that it never began.
    pub lost: bool,
    dirty: bool,
    new: bool,
    ended: bool,
    /// The request dropped the administrator grant itself (see [`Session::drop_admin`]).
    admin_dropped: bool,
    /// The request named a session a login has since replaced: it is served as a visitor
    /// that stores nothing, sets no cookie (the browser holds the login's) and holds no CSRF
    /// token, so a form it posts is refused.
    superseded: bool,
    /// The data and version as loaded: a save names the version, and on a concurrent change
    /// re-applies only the fields this request changed.
    loaded: Option<(SessionData, i64)>,
    /// When the stored row was last written (this request's time for a new session).
    touched_at: OffsetDateTime,
    /// A login's commit stored this session under a fresh id: the response sets the cookie.
    cookie_due: bool,
}

/// Without the token (the cookie value or bearer token) and the CSRF token: a log line or a
/// panic message never carries a credential.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, code) = kind_of(&self.data);
        f.debug_struct("Session")
            .field("kind", &kind)
            .field("code", &code)
            .field("bearer", &self.bearer)
            .field("new", &self.new)
            .field("dirty", &self.dirty)
            .field("ended", &self.ended)
            .field("version", &self.loaded.as_ref().map(|(_, v)| *v))
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn data_mut(&mut self) -> &mut SessionData {
        self.dirty = true;
        &mut self.data
    }

    /// Started by this request: no cookie or bearer token named a live session.
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// What the client presents: the cookie value or the bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Ends the administrator grant but keeps the session and its flows: a replacement ends the
    /// agency's administrator sessions in the store, and the browser that made it still has to
    /// see its result (the session goes on without any grant).
    pub fn drop_admin(&mut self) {
        self.data.admin = None;
        self.data.operator = None;
        self.data.reviewer = None;
        self.data.token_sid = None;
        self.dirty = true;
        self.admin_dropped = true;
    }

    /// Logs out: the record is deleted and the cookie cleared.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// A fresh id after a privilege change (login), so a planted id is worth nothing.
    pub fn rotate(&mut self) {
        self.token = crate::security::random_token();
        self.id = session_key(&self.token);
        self.new = true;
        self.dirty = true;
    }

    /// A login: a fresh id, and the one role `grant` gives (a session holds one role; the
    /// grants of the others, a token handle included, go).
    pub fn login(&mut self, grant: Role) {
        self.rotate();
        let data = self.data_mut();
        data.admin = None;
        data.operator = None;
        data.reviewer = None;
        data.token_sid = None;
        // A token the pages showed before the login is worth nothing after it.
        data.csrf = crate::security::random_token();
        match grant {
            Role::Admin(g) => data.admin = Some(g),
            Role::Operator(g) => data.operator = Some(g),
            Role::Reviewer(r) => data.reviewer = Some(r),
        }
    }

    /// This session after a login with `grant` (a cookie session gets a fresh id, a bearer
    /// session keeps the token its client holds), and the write that stores it in the login's
    /// own commit; `None` for a session that is neither on file nor given a fresh id.
    pub(crate) fn logged_in(
        &self,
        grant: Role,
        now: OffsetDateTime,
    ) -> (Session, Option<SessionWrite>) {
        let mut next = self.clone();
        if next.bearer {
            next.login_in_place(grant);
        } else {
            next.login(grant);
        }
        let write = if next.id != self.id {
            Some(SessionWrite::Rotate {
                old: self.loaded.is_some().then(|| self.id.clone()),
                until: now + SUPERSEDED_FOR,
                record: record(&next, &next.data, 1, now),
            })
        } else {
            self.loaded
                .as_ref()
                .map(|(_, version)| SessionWrite::Update(record(&next, &next.data, *version, now)))
        };
        (next, write)
    }

    /// The login's commit stored this session at `version`: nothing is left to write, and a
    /// cookie session's fresh id goes out in the cookie.
    pub(crate) fn stored_by_login(&mut self, version: i64, now: OffsetDateTime) {
        self.loaded = Some((self.data.clone(), version));
        self.dirty = false;
        self.cookie_due = self.new && !self.bearer;
        self.new = false;
        self.touched_at = now;
    }

    /// The same for an API client's bearer session, which keeps its token (the client holds
    /// it); the role it held before still goes.
    pub fn login_in_place(&mut self, grant: Role) {
        let (token, id) = (self.token.clone(), self.id.clone());
        let new = self.new;
        self.login(grant);
        self.token = token;
        self.id = id;
        self.new = new;
    }
}

/// The one role a login gives a session.
#[derive(Debug, Clone)]
pub enum Role {
    Admin(AdminGrant),
    Operator(OperatorGrant),
    Reviewer(ReviewerSession),
}

/// Shared handle: handlers take it as an extractor and the middleware saves it afterwards.
#[derive(Clone)]
pub struct SessionHandle {
    session: Arc<Mutex<Session>>,
    /// The flow the request's path names (`/flows/{id}/…`, `/api/v1/flows/{id}/…`), read
    /// with the session when it is that session's: the handler's own read of it, one round
    /// trip earlier. Taken once.
    flow: Arc<Mutex<Option<Flow>>>,
}

impl SessionHandle {
    fn new(session: Session, flow: Option<Flow>) -> Self {
        Self {
            session: Arc::new(Mutex::new(session)),
            flow: Arc::new(Mutex::new(flow)),
        }
    }

    pub fn get(&self) -> Session {
        self.session
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn update<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        let mut guard = self.session.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// The flow `id` as read with the session, if it was (and not taken yet).
    pub fn take_flow(&self, id: &str) -> Option<Flow> {
        let mut flow = self.flow.lock().unwrap_or_else(|e| e.into_inner());
        flow.take_if(|f| f.id == id)
    }
}

/// The flow id in a path on one of a session's flows (`/flows/{id}/challenge`,
/// `/api/v1/flows/{id}/card`, …), for the card steps that read it first thing (a POST).
fn flow_in_path(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/api/v1/flows/")
        .or_else(|| path.strip_prefix("/flows/"))?;
    let (id, action) = rest.split_once('/')?;
    matches!(action, "challenge" | "card").then_some(id)
}

impl<S: Send + Sync> FromRequestParts<S> for SessionHandle {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<SessionHandle>()
            .cloned()
            .ok_or_else(|| {
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "session layer missing",
                )
                    .into_response()
            })
    }
}

fn cookie_name(state: &AppState) -> &'static str {
    // `__Host-` binds the cookie to this host, path `/` and https.
    if state.config().secure_cookies() {
        "__Host-certreg"
    } else {
        "certreg_session"
    }
}

/// The cookie holding the CSRF token of a visitor without a stored session.
fn csrf_cookie_name(state: &AppState) -> &'static str {
    if state.config().secure_cookies() {
        "__Host-certreg_csrf"
    } else {
        "certreg_csrf"
    }
}

fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = v.strip_prefix("Bearer ")?.trim();
    (token.len() <= 128 && token.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| token.to_string())
}

/// Loads (or starts) the session before the handler and saves it after.
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let now = state.now();
    let name = cookie_name(&state);
    let token = bearer(req.headers());
    let from_bearer = token.is_some();
    let presented = token.or_else(|| read_cookie(req.headers(), name));
    let mut loaded = None;
    let mut superseded = false;
    let mut flow_read = None;
    if let Some(token) = &presented {
        let key = session_key(token);
        let on_flow = (req.method() == axum::http::Method::POST)
            .then(|| flow_in_path(req.uri().path()))
            .flatten();
        let got = match on_flow {
            Some(flow_id) => state
                .db()
                .session_get_with_flow(&key, now, flow_id)
                .await
                .map(|(rec, flow)| {
                    flow_read = flow;
                    rec
                }),
            None => state.db().session_get(&key, now).await,
        };
        match got {
            Ok(Some(rec)) if rec.kind == SUPERSEDED => superseded = true,
            Ok(Some(rec)) if now - rec.created_at <= ABSOLUTE => {
                if let Ok(data) = serde_json::from_str::<SessionData>(&rec.data) {
                    loaded = Some(Session {
                        id: rec.id,
                        token: token.clone(),
                        data: data.clone(),
                        created_at: rec.created_at,
                        bearer: from_bearer,
                        lost: false,
                        dirty: false,
                        new: false,
                        ended: false,
                        admin_dropped: false,
                        superseded: false,
                        loaded: Some((data, rec.version)),
                        touched_at: rec.touched_at,
                        cookie_due: false,
                    });
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "loading a session");
                return crate::error::internal(&state, "session store unavailable");
            }
        }
    }
    // A session that is not stored yet takes its CSRF token from a cookie of its own, so the
    // pages an anonymous visitor reads cost no row and their forms still carry a token.
    let csrf_cookie = read_cookie(req.headers(), csrf_cookie_name(&state))
        .filter(|c| crate::security::is_token(c));
    let session = loaded.unwrap_or_else(|| {
        let token = crate::security::random_token();
        Session {
            id: session_key(&token),
            token,
            data: SessionData {
                csrf: if superseded {
                    String::new()
                } else {
                    csrf_cookie
                        .clone()
                        .unwrap_or_else(crate::security::random_token)
                },
                ..Default::default()
            },
            created_at: now,
            bearer: false,
            lost: presented.is_some(),
            dirty: false,
            new: true,
            ended: false,
            admin_dropped: false,
            superseded,
            loaded: None,
            touched_at: now,
            cookie_due: false,
        }
    });
    let old_id = session.id.clone();
    // Only a flow of the session as loaded: a new session (none presented, or the one
    // presented ended) owns no flow yet.
    let flow_read = flow_read.filter(|f: &Flow| session.loaded.is_some() && f.session == old_id);
    let handle = SessionHandle::new(session, flow_read);
    req.extensions_mut().insert(handle.clone());
    let mut response = next.run(req).await;

    let session = handle.get();
    match save(&state, &session, &old_id, now).await {
        Ok(Saved::Cookie) => {
            if !session.bearer {
                set_cookie(&state, &mut response, name, session.token(), false);
            }
        }
        Ok(Saved::Quiet) => {
            if session.cookie_due {
                set_cookie(&state, &mut response, name, session.token(), false);
            }
        }
        Ok(Saved::Ended) => set_cookie(&state, &mut response, name, "", true),
        Err(e) => {
            tracing::error!(error = %e, "saving a session");
            return crate::error::internal(&state, "session store unavailable");
        }
    }
    // Only a page shows the token, so only a page needs the cookie.
    let page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if page && session.new && !session.dirty && !from_bearer && csrf_cookie.is_none() {
        let csrf = csrf_cookie_name(&state);
        set_cookie(&state, &mut response, csrf, &session.data.csrf, false);
    }
    response
}

/// What the response says about the cookie after a save.
enum Saved {
    /// Set it to the session's token (a new or rotated session).
    Cookie,
    /// Leave it alone: unchanged, or the session ended elsewhere while this request ran (the
    /// browser may already hold a newer cookie, say from a login, which must stay).
    Quiet,
    /// Clear it (logout).
    Ended,
}

/// How long a rotated id is remembered as replaced.
const SUPERSEDED_FOR: time::Duration = time::Duration::minutes(5);

/// Re-tries of a save that met a concurrent change of the same session.
const SAVE_TRIES: usize = 8;

/// A version no request in flight can hold, for a session written again by the request whose
/// own commit ended it (see [`Session::drop_admin`]): a concurrent request's save then meets
/// a changed session and re-applies only its own fields, never the grant this one dropped.
const RESTART_VERSION_GAP: i64 = 1 << 20;

async fn save(
    state: &AppState,
    session: &Session,
    old_id: &str,
    now: OffsetDateTime,
) -> domain::Result<Saved> {
    let db = state.db();
    if session.superseded {
        return Ok(Saved::Quiet);
    }
    if session.ended {
        if session.loaded.is_none() {
            // Never stored: nothing to delete, and the cookie the request came with (if any)
            // named no live session — it may be older than one a login has just set.
            return Ok(Saved::Quiet);
        }
        db.session_delete(old_id).await?;
        if session.id != old_id {
            db.session_delete(&session.id).await?;
        }
        return Ok(Saved::Ended);
    }
    let expires_at = expires_at(session, now);
    let record = |data: &SessionData, version: i64| record(session, data, version, now);
    if session.new {
        if session.id != old_id && session.loaded.is_some() {
            // Rotated by a login: the old id becomes a tombstone for as long as a request
            // sent with it can still be in flight or queued in a browser.
            db.session_supersede(old_id, now + SUPERSEDED_FOR).await?;
        }
        // A request that stored nothing writes no row and sets no session cookie (reading
        // pages costs no row; and a request that named a session no longer on file may have
        // been sent with the id a login has just replaced).
        if session.loaded.is_none() && !session.dirty {
            return Ok(Saved::Quiet);
        }
        db.session_insert(&record(&session.data, 1)).await?;
        return Ok(Saved::Cookie);
    }
    let Some((loaded, mut version)) = session.loaded.clone() else {
        return Ok(Saved::Quiet);
    };
    if !session.dirty || session.data == loaded {
        if now - session.touched_at >= TOUCH_EVERY {
            db.session_touch(&session.id, now, expires_at).await?;
        }
        return Ok(Saved::Quiet);
    }
    let mut data = session.data.clone();
    for _ in 0..SAVE_TRIES {
        match db.session_update(&record(&data, version)).await? {
            SessionSaved::Saved(_) => return Ok(Saved::Quiet),
            SessionSaved::Gone => {
                // Ended while this request ran: it stays ended, unless this request ended it
                // itself with a replacement and goes on without any grant to show its result.
                if session.admin_dropped && !holds_a_role(&data) {
                    db.session_insert(&record(&data, version + RESTART_VERSION_GAP))
                        .await?;
                }
                return Ok(Saved::Quiet);
            }
            SessionSaved::Changed => {
                let Some(current) = db.session_get(&session.id, now).await? else {
                    return Ok(Saved::Quiet);
                };
                let Ok(theirs) = serde_json::from_str::<SessionData>(&current.data) else {
                    return Ok(Saved::Quiet);
                };
                data = merge(&loaded, &session.data, theirs);
                version = current.version;
            }
        }
    }
    Err(domain::DomainError::Storage(
        "a session kept changing under concurrent requests".into(),
    ))
}

/// The row of `session` holding `data`, written at `now`.
fn record(
    session: &Session,
    data: &SessionData,
    version: i64,
    now: OffsetDateTime,
) -> SessionRecord {
    let (kind, code) = kind_of(data);
    SessionRecord {
        id: session.id.clone(),
        kind: kind.to_string(),
        code,
        data: serde_json::to_string(data).unwrap_or_default(),
        created_at: session.created_at,
        touched_at: now,
        expires_at: expires_at(session, now),
        version,
    }
}

/// When `session`, written at `now`, expires: idle for [`IDLE`], and never past [`ABSOLUTE`].
fn expires_at(session: &Session, now: OffsetDateTime) -> OffsetDateTime {
    (now + IDLE).min(session.created_at + ABSOLUTE)
}

fn holds_a_role(data: &SessionData) -> bool {
    data.admin.is_some() || data.operator.is_some() || data.reviewer.is_some()
}

/// `theirs` (stored meanwhile by another request) with the fields this request changed from
/// `before` to `mine`. The role fields go together: a session holds one role.
fn merge(before: &SessionData, mine: &SessionData, mut theirs: SessionData) -> SessionData {
    let role_changed = before.admin != mine.admin
        || before.operator != mine.operator
        || before.reviewer != mine.reviewer
        || before.token_sid != mine.token_sid;
    if role_changed {
        theirs.admin = mine.admin.clone();
        theirs.operator = mine.operator.clone();
        theirs.reviewer = mine.reviewer.clone();
        theirs.token_sid = mine.token_sid.clone();
    }
    if before.csrf != mine.csrf {
        theirs.csrf = mine.csrf.clone();
    }
    if before.result != mine.result {
        theirs.result = mine.result.clone();
    }
    if before.flash != mine.flash {
        theirs.flash = mine.flash.clone();
    }
    theirs
}

fn kind_of(data: &SessionData) -> (&'static str, Option<String>) {
    if let Some(a) = &data.admin {
        return ("admin", Some(a.code.as_str().to_string()));
    }
    if let Some(o) = &data.operator {
        return ("operator", Some(o.code.as_str().to_string()));
    }
    if data.reviewer.is_some() {
        return ("reviewer", None);
    }
    ("anonymous", None)
}

fn set_cookie(state: &AppState, response: &mut Response, name: &str, value: &str, clear: bool) {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if state.config().secure_cookies() {
        cookie.push_str("; Secure");
    }
    if clear {
        cookie.push_str("; Max-Age=0");
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Ends every live session whose grant rests on a certificate that `validator` says is revoked
/// ([`pki::validate::Validator::revoked_at`]: on a CRL in force signed by a trusted CA, or as
/// its online check's sources say), each with an audit event; returns how many ended. With an
/// online check (OCSP, distribution points), the certificates the live sessions rest on are
/// first asked about again where what their sources said has run out
/// ([`pki::validate::Validator::ask_revocation`], off the async workers): a source that cannot
/// answer ends nothing. The domain judges each session by the grants its data holds
/// ([`domain::service::revocation_ending`]). `certreg serve` calls it after each CRL refresh
/// and, with an online check, every few minutes besides.
pub async fn end_revoked_sessions(
    db: &Backend,
    validator: &std::sync::Arc<pki::validate::Validator>,
    now: OffsetDateTime,
) -> domain::Result<u64> {
    use domain::store::Store as _;
    let sessions: Vec<(String, SessionData)> = db
        .sessions_live(now)
        .await?
        .into_iter()
        .filter_map(|record| {
            let data = serde_json::from_str::<SessionData>(&record.data).ok()?;
            (data.admin.is_some() || data.operator.is_some()).then_some((record.id, data))
        })
        .collect();
    if validator.has_online() && !sessions.is_empty() {
        let mut certs = std::collections::BTreeSet::new();
        for (_, data) in &sessions {
            certs.extend(
                domain::service::grant_certificates(
                    db,
                    data.admin.as_ref(),
                    data.operator.as_ref(),
                )
                .await?,
            );
        }
        let certs: Vec<_> = certs.into_iter().collect();
        let validator = validator.clone();
        tokio::task::spawn_blocking(move || validator.ask_revocation(&certs, now))
            .await
            .map_err(|e| {
                domain::DomainError::Storage(format!("the revocation check did not finish: {e}"))
            })?;
    }
    let mut ended = 0;
    for (id, data) in sessions {
        let ending = domain::service::revocation_ending(
            db,
            validator,
            now,
            data.admin.as_ref(),
            data.operator.as_ref(),
        )
        .await?;
        let Some(event) = ending else {
            continue;
        };
        db.session_delete(&id).await?;
        ended += 1;
        db.append_audit(&event).await?;
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_card_steps_on_a_flow_read_it_with_the_session() {
        for (path, id) in [
            ("/api/v1/flows/f1/challenge", Some("f1")),
            ("/api/v1/flows/f1/card", Some("f1")),
            ("/flows/f1/challenge", Some("f1")),
            ("/flows/f1/card", Some("f1")),
            ("/flows/f1", None),
            ("/flows/f1/confirm", None),
            ("/flows/f1/card/x", None),
            ("/flows/new/operator_login", None),
            ("/api/v1/flows", None),
            ("/api/v1/operators/1/card", None),
            // Routed to a flow's start, not a card step: a read of flow "new", which no flow
            // is (ids are random), and nobody takes.
            ("/flows/new/card", Some("new")),
        ] {
            assert_eq!(flow_in_path(path), id, "{path}");
        }
    }

    #[test]
    fn a_session_printed_for_a_log_shows_no_credential() {
        let token = crate::security::random_token();
        let csrf = crate::security::random_token();
        let now = OffsetDateTime::UNIX_EPOCH;
        let session = Session {
            id: session_key(&token),
            token: token.clone(),
            data: SessionData {
                csrf: csrf.clone(),
                ..Default::default()
            },
            created_at: now,
            bearer: true,
            lost: false,
            dirty: false,
            new: true,
            ended: false,
            admin_dropped: false,
            superseded: false,
            loaded: None,
            touched_at: now,
            cookie_due: false,
        };
        let printed = format!("{session:?} {:#?}", session.clone());
        assert!(printed.contains("anonymous"), "{printed}");
        for secret in [&token, &csrf, &session.id] {
            assert!(!printed.contains(secret.as_str()), "{printed}");
        }
    }
}
