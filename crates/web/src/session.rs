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
use domain::model::Section;
use domain::service::{AdminGrant, OperatorGrant};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

pub const IDLE: Duration = Duration::minutes(15);
pub const ABSOLUTE: Duration = Duration::hours(8);

/// What a session holds. Serialised, encrypted at rest by the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionData {
    pub csrf: String,
    pub admin: Option<AdminGrant>,
    pub operator: Option<OperatorGrant>,
    /// The outcome of the last finished flow, shown once on its result page.
    pub result: Option<serde_json::Value>,
    /// A message for the next page after a redirect (「新增成功」), shown once.
    pub flash: Option<String>,
    /// A back-office reviewer after 本部審核人員登入 (R6.1).
    #[serde(default)]
    pub reviewer: Option<ReviewerSession>,
    /// The random handle the operator's tokens name this session by (`sid`; see `token.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sid: Option<String>,
}

/// Who the back-office reviewer is (R6.1): checked against the store on every back-office page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewerSession {
    pub id: i64,
    pub name: String,
    pub section: Section,
}

/// The session of the current request.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
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

    /// Ends the administrator grant but keeps the session and its flows: a replacement ends the
    /// agency's administrator sessions in the store, and the browser that made it still has to
    /// see its result (the session goes on without the grant).
    pub fn drop_admin(&mut self) {
        self.data.admin = None;
        self.dirty = true;
        self.admin_dropped = true;
    }

    /// Logs out: the record is deleted and the cookie cleared.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// A fresh id after a privilege change (login), so a planted id is worth nothing.
    pub fn rotate(&mut self) {
        self.id = crate::security::random_token();
        self.new = true;
        self.dirty = true;
    }

    fn kind(&self) -> (&'static str, Option<String>) {
        if let Some(a) = &self.data.admin {
            return ("admin", Some(a.code.as_str().to_string()));
        }
        if let Some(o) = &self.data.operator {
            return ("operator", Some(o.code.as_str().to_string()));
        }
        if self.data.reviewer.is_some() {
            return ("reviewer", None);
        }
        ("anonymous", None)
    }
}

/// Shared handle: handlers take it as an extractor and the middleware saves it afterwards.
#[derive(Clone)]
pub struct SessionHandle(pub Arc<Mutex<Session>>);

impl SessionHandle {
    pub fn get(&self) -> Session {
        self.0
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn update<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
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
    let id = token.or_else(|| read_cookie(req.headers(), name));
    let mut loaded = None;
    if let Some(id) = &id {
        match state.db().session_get(id, now).await {
            Ok(Some(rec)) if now - rec.created_at <= ABSOLUTE => {
                if let Ok(data) = serde_json::from_str::<SessionData>(&rec.data) {
                    loaded = Some(Session {
                        id: rec.id,
                        data,
                        created_at: rec.created_at,
                        bearer: from_bearer,
                        lost: false,
                        dirty: false,
                        new: false,
                        ended: false,
                        admin_dropped: false,
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
    let session = loaded.unwrap_or_else(|| Session {
        id: crate::security::random_token(),
        data: SessionData {
            csrf: crate::security::random_token(),
            ..Default::default()
        },
        created_at: now,
        bearer: false,
        lost: id.is_some(),
        dirty: true,
        new: true,
        ended: false,
        admin_dropped: false,
    });
    let old_id = session.id.clone();
    let handle = SessionHandle(Arc::new(Mutex::new(session)));
    req.extensions_mut().insert(handle.clone());
    let mut response = next.run(req).await;

    let session = handle.get();
    if session.ended {
        let _ = state.db().session_delete(&old_id).await;
        let _ = state.db().session_delete(&session.id).await;
        set_cookie(&state, &mut response, name, "", true);
        return response;
    }
    if session.id != old_id {
        let _ = state.db().session_delete(&old_id).await;
    } else if !session.new {
        // A replacement may have ended this session while the request ran (the store deletes
        // the agency's administrator sessions): saving it now would bring it back.
        match state.db().session_get(&session.id, now).await {
            Ok(Some(_)) => {}
            // This request gave the grant up itself: the session is saved again without it.
            Ok(None) if session.admin_dropped && session.data.admin.is_none() => {}
            Ok(None) => {
                set_cookie(&state, &mut response, name, "", true);
                return response;
            }
            Err(e) => {
                tracing::error!(error = %e, "re-reading a session");
                return crate::error::internal(&state, "session store unavailable");
            }
        }
    }
    // Every request counts as activity; the record is rewritten with a new idle deadline.
    let (kind, code) = session.kind();
    let record = store::SessionRecord {
        id: session.id.clone(),
        kind: kind.to_string(),
        code,
        data: serde_json::to_string(&session.data).unwrap_or_default(),
        created_at: session.created_at,
        touched_at: now,
        expires_at: (now + IDLE).min(session.created_at + ABSOLUTE),
    };
    if let Err(e) = state.db().session_put(&record).await {
        tracing::error!(error = %e, "saving a session");
        return crate::error::internal(&state, "session store unavailable");
    }
    if (session.new || session.dirty) && !session.bearer {
        set_cookie(&state, &mut response, name, &session.id, false);
    }
    response
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

/// Ends every live operator session whose grant's certificate serial is revoked on a CRL in
/// force of `validator` (any issuer: operators are granted by serial; only CRLs signed by a
/// trusted CA count), each with an audit event; returns how many ended.
/// `certreg serve` calls it after each CRL refresh.
pub async fn end_revoked_operator_sessions(
    db: &store::Db,
    validator: &pki::validate::Validator,
    now: OffsetDateTime,
) -> domain::Result<u64> {
    use domain::store::Store as _;
    let mut ended = 0;
    for record in db.sessions_of_kind("operator", now).await? {
        let Ok(data) = serde_json::from_str::<SessionData>(&record.data) else {
            continue;
        };
        let Some(grant) = data.operator else {
            continue;
        };
        let Some(revoked_at) = validator.revoked_at(None, &grant.serial) else {
            continue;
        };
        db.session_delete(&record.id).await?;
        ended += 1;
        let event = domain::model::AuditEvent::new(now, "system", "session.end", "ok")
            .agency(&grant.code)
            .detail(serde_json::json!({
                "reason": "certificate_revoked",
                "operator_id": grant.operator_id,
                "serial": grant.serial.as_str(),
                "revoked_at": revoked_at.unix_timestamp(),
            }));
        db.append_audit(&event).await?;
    }
    Ok(ended)
}
