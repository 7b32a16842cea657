//! The operator's token for other systems: after 經辦人登入 an operator
//! session may ask for a short-lived ES256 JWT that names the agency, the operator's certificate
//! serial and the functions granted today. Downstream services verify it with the keys published
//! at `/.well-known/jwks.json` and may ask `/api/v1/introspect` whether it is still active.
//!
//! Keys are P-256 pairs made with `ring`; tokens are JWS compact serializations (RFC 7515)
//! signed and verified with `ring` (ES256 only: any other `alg`, a `crit` header, a second
//! base64 encoding of the same bytes or a signature of another length is refused). The tests
//! check every token with `jsonwebtoken`, as a downstream service would. The keys are kept in the database (`signing_keys`,
//! encrypted with the store's secrets, through `domain::store::SessionStore`), so every
//! instance on one PostgreSQL database signs with and publishes the same keys. [`KeyRing::rotate`] makes a new current key
//! and keeps the previous one published until the last token it signed has expired.
//!
//! A token's `sid` is a random handle of its session, never the session id (a bearer
//! credential): the table `token_sessions` maps it to the session and goes with it.

use crate::AppState;
use crate::api::{ApiJson, Caller};
use crate::error::{ApiError, api};
use crate::security::ClientAddr;
use crate::session::{ABSOLUTE, SessionData, SessionHandle};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use domain::DomainError;
use domain::store::{Backend, SessionStore as _, SigningKeyRecord};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// A token lives at most this long (and never past its session's absolute limit); a client asks
/// for a new one while the session lives.
pub const TOKEN_TTL: Duration = Duration::minutes(15);

/// A retired key stays published this long after the last moment a token it signed can expire,
/// for downstream clocks running a little behind.
pub const CLOCK_SKEW: Duration = Duration::minutes(1);

/// The claims of an operator token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claims {
    /// certreg's public origin.
    pub iss: String,
    /// The downstream system the token is for (one of the configured audiences).
    pub aud: String,
    /// `operator:<certificate serial>`.
    pub sub: String,
    /// 機關代號
    pub code: String,
    /// The operator's certificate serial (hex).
    pub serial: String,
    /// The functions granted when the token was issued.
    pub functions: Vec<String>,
    /// A random handle of the session (not the session id).
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// A token longer than this is not one of certreg's (they are well under 1 KiB).
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A JWS header as certreg writes it: any other member (`crit` above all, RFC 7515 §4.1.11,
/// even as `null`) makes the token one certreg did not sign.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwsHeader {
    alg: String,
    kid: Option<String>,
    #[allow(dead_code)]
    typ: Option<String>,
}

/// The order of P-256, and half of it: certreg's signatures carry s ≤ n/2 (the low of the two
/// values that verify), so a token has one signature, not two.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// `n − s` for a big-endian 32-byte `s < n`.
fn negate_s(s: &mut [u8]) {
    let mut borrow = 0i16;
    for (d, n) in s.iter_mut().zip(P256_N).rev() {
        let v = n as i16 - *d as i16 - borrow;
        borrow = i16::from(v < 0);
        *d = v.rem_euclid(256) as u8;
    }
}

/// The JWS compact serialization of `claims`, signed ES256 with the PKCS#8 key `pkcs8`.
fn jws_sign(kid: &str, claims: &Claims, pkcs8: &[u8]) -> Result<String, DomainError> {
    let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": kid });
    let signing_input = format!(
        "{}.{}",
        B64U.encode(serde_json::to_vec(&header).map_err(storage)?),
        B64U.encode(serde_json::to_vec(claims).map_err(storage)?)
    );
    let rng = SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
        .map_err(|_| storage(format!("signing key {kid} does not parse")))?;
    let signature = pair
        .sign(&rng, signing_input.as_bytes())
        .map_err(|_| storage(format!("signing with key {kid} failed")))?;
    let mut signature = signature.as_ref().to_vec();
    if signature.len() == 64 && signature[32..] > P256_HALF_N[..] {
        negate_s(&mut signature[32..]);
    }
    Ok(format!("{signing_input}.{}", B64U.encode(signature)))
}

/// The three parts of a compact JWS, decoded: its header, the signed bytes, the payload and the
/// signature. `None` for anything that is not exactly that (base64url without padding, in its
/// one canonical encoding).
fn jws_parts(token: &str) -> Option<(JwsHeader, &str, Vec<u8>, Vec<u8>)> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (h, p, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: JwsHeader = serde_json::from_slice(&B64U.decode(h).ok()?).ok()?;
    let payload = B64U.decode(p).ok()?;
    let signature = B64U.decode(sig).ok()?;
    let signed = &token[..h.len() + 1 + p.len()];
    Some((header, signed, payload, signature))
}

/// The signing keys: the current one and the previous ones still published. The rows are
/// re-read every time, so a rotation by another instance is seen at once.
pub struct KeyRing {
    db: Backend,
}

fn storage(e: impl std::fmt::Display) -> DomainError {
    DomainError::Storage(e.to_string())
}

/// RFC 7638 thumbprint of the public key: the same key always gets the same kid.
fn thumbprint(public: &[u8]) -> String {
    let (x, y) = xy(public);
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    B64U.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// base64url x and y of an uncompressed P-256 point.
fn xy(public: &[u8]) -> (String, String) {
    let body = public.get(1..).unwrap_or_default();
    let (x, y) = body.split_at(body.len() / 2);
    (B64U.encode(x), B64U.encode(y))
}

fn new_record(now: OffsetDateTime) -> Result<SigningKeyRecord, DomainError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| storage("generating a signing key failed"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| storage("a generated signing key does not parse"))?;
    let public = pair.public_key().as_ref().to_vec();
    Ok(SigningKeyRecord {
        kid: thumbprint(&public),
        public_key: public,
        private_pkcs8: pkcs8.as_ref().to_vec(),
        created_at: now,
        retired_at: None,
        publish_until: None,
    })
}

impl KeyRing {
    pub fn new(db: Backend) -> Self {
        Self { db }
    }

    /// The published keys at `now`, the current one first; the first key is made on first use.
    async fn keys(&self, now: OffsetDateTime) -> Result<Vec<SigningKeyRecord>, DomainError> {
        let mut records = self.db.signing_keys(now).await?;
        if !records.iter().any(|r| r.retired_at.is_none()) {
            self.db.signing_key_add_first(&new_record(now)?).await?;
            records = self.db.signing_keys(now).await?;
        }
        // The current key first.
        records.sort_by_key(|r| r.retired_at.is_some());
        Ok(records)
    }

    /// The kid new tokens are signed with.
    pub async fn current_kid(&self, now: OffsetDateTime) -> Result<String, DomainError> {
        let keys = self.keys(now).await?;
        keys.into_iter()
            .next()
            .map(|k| k.kid)
            .ok_or_else(|| storage("no signing key"))
    }

    /// A new current key; the previous one stays published until every token it signed has
    /// expired (plus [`CLOCK_SKEW`]). Returns the new kid.
    pub async fn rotate(&self, now: OffsetDateTime) -> Result<String, DomainError> {
        // Make sure there is a current key to retire (a first rotation on a fresh database).
        self.keys(now).await?;
        let record = new_record(now)?;
        self.db
            .signing_key_rotate(&record, now + TOKEN_TTL + CLOCK_SKEW)
            .await?;
        Ok(record.kid)
    }

    /// The JWK Set of every published key.
    pub async fn jwks(&self, now: OffsetDateTime) -> Result<serde_json::Value, DomainError> {
        let keys = self.keys(now).await?;
        let keys: Vec<_> = keys
            .iter()
            .map(|k| {
                let (x, y) = xy(&k.public_key);
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "x": x, "y": y,
                    "kid": k.kid, "alg": "ES256", "use": "sig",
                })
            })
            .collect();
        Ok(serde_json::json!({ "keys": keys }))
    }

    /// The JWS compact form of `claims`, signed with the current key (header `alg` ES256,
    /// `typ` JWT, `kid`).
    pub async fn sign(&self, claims: &Claims, now: OffsetDateTime) -> Result<String, DomainError> {
        let keys = self.keys(now).await?;
        let key = keys.first().ok_or_else(|| storage("no signing key"))?;
        jws_sign(&key.kid, claims, &key.private_pkcs8)
    }

    /// The claims of `token` if it is an ES256 JWT signed by a published key (named by its
    /// `kid`), issued by `iss` and not expired at `now`.
    pub async fn verify(
        &self,
        token: &str,
        iss: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Claims>, DomainError> {
        let Some((header, signed, payload, signature)) = jws_parts(token) else {
            return Ok(None);
        };
        let (Some(kid), "ES256") = (header.kid, header.alg.as_str()) else {
            return Ok(None);
        };
        // The high s of a signature certreg made (see P256_HALF_N): not a token it issued.
        if signature.len() != 64 || signature[32..] > P256_HALF_N[..] {
            return Ok(None);
        }
        let keys = self.keys(now).await?;
        let Some(key) = keys.iter().find(|k| k.kid == kid) else {
            return Ok(None);
        };
        if UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.public_key)
            .verify(signed.as_bytes(), &signature)
            .is_err()
        {
            return Ok(None);
        }
        // Only now are the claims read: every one is required (exp, iss, …). The audience is
        // the introspecting system's business (`introspect`); time is the injected clock.
        let Ok(claims) = serde_json::from_slice::<Claims>(&payload) else {
            return Ok(None);
        };
        let t = now.unix_timestamp();
        if claims.iss != iss || claims.exp <= t || claims.iat > t + CLOCK_SKEW.whole_seconds() {
            return Ok(None);
        }
        Ok(Some(claims))
    }
}

/// The routes that need no session: the published keys and introspection (mounted outside the
/// session layer, so a downstream service's calls leave no session records behind).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/api/v1/introspect", post(introspect))
}

async fn jwks(State(state): State<AppState>) -> Response {
    match state.keys().jwks(state.now()).await {
        Ok(v) => {
            let mut r = Json(v).into_response();
            // Short: a rotation's new key must reach downstream caches well within a token's life.
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            r
        }
        Err(e) => api(&e),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    /// The JWT (ES256).
    pub token: String,
    pub expires_at: String,
}

/// The operator grant of the session as it stands today: the operator re-read (deleted, or
/// re-bound to another card, is no longer one).
async fn current_operator(
    state: &AppState,
    data: &SessionData,
) -> Result<Option<domain::model::Operator>, DomainError> {
    match &data.operator {
        Some(grant) => state.svc().current_operator(grant).await,
        None => Ok(None),
    }
}

/// `POST /api/v1/token`: a token for the caller's operator session.
#[utoipa::path(
    post, path = "/api/v1/token", operation_id = "issue_token", tag = "sessions",
    request_body(content = Option<TokenRequest>, description = "Optional: the audience the token is for"),
    responses(
        (status = 200, description = "An ES256 JWT for other systems: agency code, operator certificate serial, today's functions, a session handle; at most 15 minutes and never past the session. Verify with /.well-known/jwks.json", body = IssuedToken),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "forbidden: not an operator session (or the operator is no longer granted); csrf (cookie requests only)", body = ApiError),
        (status = 422, description = "audience_not_allowed: the audience asked for is not configured", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn issue(
    State(state): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Response {
    // The body is optional: none (or `{}`) asks for the first configured audience.
    let audience = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<TokenRequest>(&body) {
            Ok(r) => r.audience,
            Err(e) => {
                return crate::error::api_code(
                    axum::http::StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("請求內容不是正確的 JSON：{e}"),
                );
            }
        }
    };
    let audience = match allowed_audience(&state, audience.as_deref()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    match mint(&state, &caller.handle, &audience).await {
        Ok(Some(issued)) => Json(issued).into_response(),
        Ok(None) => api(&DomainError::Forbidden),
        Err(e) => api(&e),
    }
}

/// `POST /api/v1/token`'s optional body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The downstream system the token is for (`aud`); one of the configured audiences.
    /// Omitted: the first configured one.
    #[serde(default)]
    pub audience: Option<String>,
}

/// The audience asked for, if configured (none asked: the first configured one).
pub(crate) fn allowed_audience(state: &AppState, asked: Option<&str>) -> Result<String, Response> {
    let allowed = &state.config().token_audiences;
    let found = match asked {
        Some(a) => allowed.iter().find(|x| x.as_str() == a),
        None => allowed.first(),
    };
    found.cloned().ok_or_else(|| {
        crate::error::api_code(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "audience_not_allowed",
            "此系統（audience）未經設定，無法核發權杖",
        )
    })
}

/// A token for the session's operator grant as it stands today; `None` when the session holds
/// none (or the operator has since been deleted or re-bound: the grant is then dropped). The
/// pages' operator home uses it too.
pub(crate) async fn mint(
    state: &AppState,
    handle: &SessionHandle,
    audience: &str,
) -> Result<Option<IssuedToken>, DomainError> {
    let now = state.now();
    let session = handle.get();
    let data = &session.data;
    let Some(op) = current_operator(state, data).await? else {
        if data.operator.is_some() {
            handle.update(|s| s.data_mut().operator = None);
        }
        return Ok(None);
    };
    let Some(grant) = &data.operator else {
        return Ok(None);
    };
    let sid = match &data.token_sid {
        Some(sid) => sid.clone(),
        None => {
            let sid = crate::security::random_token();
            handle.update(|s| s.data_mut().token_sid = Some(sid.clone()));
            sid
        }
    };
    state.db().token_session_put(&sid, &session.id).await?;
    let exp = (now + TOKEN_TTL).min(session.created_at + ABSOLUTE);
    let claims = Claims {
        iss: state.config().public_origin.clone(),
        aud: audience.to_string(),
        sub: format!("operator:{}", op.serial.as_str()),
        code: grant.code.as_str().to_string(),
        serial: op.serial.as_str().to_string(),
        functions: op.functions.clone(),
        sid,
        iat: now.unix_timestamp(),
        exp: exp.unix_timestamp(),
        jti: crate::security::random_token(),
    };
    let token = state.keys().sign(&claims, now).await?;
    Ok(Some(IssuedToken {
        token,
        expires_at: crate::api::rfc3339(exp),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct IntrospectRequest {
    /// The JWT from `POST /api/v1/token`.
    pub token: String,
    /// The asking system's audience: a token issued for another audience is not active for
    /// it.
    #[serde(default)]
    pub audience: Option<String>,
}

/// RFC 7662 style: `active`, and the token's claims only when it is active.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Introspection {
    pub active: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Claims>,
}

/// `POST /api/v1/introspect {token}` (RFC 7662 style): `{active: true, …claims}` while the token
/// verifies, is unexpired, and its session still holds the same operator grant with the same
/// functions; `{active: false}` otherwise.
#[utoipa::path(
    post, path = "/api/v1/introspect", operation_id = "introspect_token", tag = "sessions",
    request_body = IntrospectRequest,
    responses(
        (status = 200, description = "Whether the token is active: it verifies, has not expired, and its session still holds the same operator grant with the same functions (logout, a grant change or the operator's deletion end it)", body = Introspection),
        (status = 400, description = "bad_request", body = ApiError),
        (status = 429, description = "rate_limited: introspections per client address", body = ApiError),
    )
)]
pub(crate) async fn introspect(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    ApiJson(req): ApiJson<IntrospectRequest>,
) -> Response {
    let key = crate::security::LimitKey::client(crate::security::Bucket::Introspect, addr);
    let limit = state.config().limits.introspections_per_client;
    if !state.limiter().hit(key, limit, state.now()) {
        return crate::api::rate_limited();
    }
    let claims = active_claims(&state, &req.token).await.map(|c| {
        // With several audiences configured the asker must say which system it is: a token
        // made for one system is never active for another that did not name itself.
        let audiences = &state.config().token_audiences;
        c.filter(|c| {
            let named = match req.audience.as_deref() {
                Some(a) => a == c.aud,
                None => audiences.len() <= 1,
            };
            named && audiences.contains(&c.aud)
        })
    });
    match claims {
        Ok(claims) => Json(Introspection {
            active: claims.is_some(),
            claims,
        })
        .into_response(),
        Err(e) => api(&e),
    }
}

async fn active_claims(state: &AppState, token: &str) -> Result<Option<Claims>, DomainError> {
    let now = state.now();
    if token.len() > 4096 {
        return Ok(None);
    }
    let Some(claims) = state
        .keys()
        .verify(token, &state.config().public_origin, now)
        .await?
    else {
        return Ok(None);
    };
    let Some(session_id) = state.db().token_session(&claims.sid).await? else {
        return Ok(None);
    };
    let Some(record) = state.db().session_get(&session_id, now).await? else {
        return Ok(None);
    };
    if now - record.created_at > ABSOLUTE {
        return Ok(None);
    }
    let Ok(data) = serde_json::from_str::<SessionData>(&record.data) else {
        return Ok(None);
    };
    if data.token_sid.as_deref() != Some(claims.sid.as_str()) {
        return Ok(None);
    }
    let (Some(grant), Some(op)) = (&data.operator, current_operator(state, &data).await?) else {
        return Ok(None);
    };
    let mut granted = op.functions.clone();
    let mut named = claims.functions.clone();
    granted.sort();
    named.sort();
    let same = grant.code.as_str() == claims.code
        && op.serial.as_str() == claims.serial
        && claims.sub == format!("operator:{}", claims.serial)
        && granted == named;
    Ok(same.then_some(claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-02 02:00 UTC);
    const ISS: &str = "https://certreg.example.gov.tw";

    async fn ring_on_a_fresh_database() -> (KeyRing, Backend, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = store::Db::connect(&url, &store::Secrets::generate().unwrap())
            .await
            .unwrap();
        let backend: Backend = Arc::new(db);
        (KeyRing::new(backend.clone()), backend, dir)
    }

    fn claims(iat: OffsetDateTime, exp: OffsetDateTime) -> Claims {
        Claims {
            iss: ISS.into(),
            aud: "certreg-downstream".into(),
            sub: "operator:0A".into(),
            code: "A0001".into(),
            serial: "0A".into(),
            functions: vec!["enroll".into()],
            sid: "handle".into(),
            iat: iat.unix_timestamp(),
            exp: exp.unix_timestamp(),
            jti: "jti".into(),
        }
    }

    /// A JWS with this header and payload, signed by ring with the stored current key, low s (or
    /// `sig` as the signature).
    async fn forge(db: &Backend, header: &str, payload: &str, sig: Option<&[u8]>) -> String {
        let key = db.signing_keys(NOW).await.unwrap().remove(0);
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.private_pkcs8,
            &SystemRandom::new(),
        )
        .unwrap();
        let signed = format!("{}.{}", B64U.encode(header), B64U.encode(payload));
        let sig = match sig {
            Some(s) => s.to_vec(),
            None => {
                let mut sig = pair
                    .sign(&SystemRandom::new(), signed.as_bytes())
                    .unwrap()
                    .as_ref()
                    .to_vec();
                // As certreg signs: the low s.
                if sig[32..] > P256_HALF_N[..] {
                    negate_s(&mut sig[32..]);
                }
                sig
            }
        };
        format!("{signed}.{}", B64U.encode(sig))
    }

    #[tokio::test]
    async fn a_signed_token_verifies_until_it_expires() {
        let (ring, _db, _dir) = ring_on_a_fresh_database().await;
        let c = claims(NOW, NOW + TOKEN_TTL);
        let token = ring.sign(&c, NOW).await.unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&B64U.decode(token.split('.').next().unwrap()).unwrap())
                .unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], ring.current_kid(NOW).await.unwrap());
        assert_eq!(
            ring.verify(&token, ISS, NOW).await.unwrap(),
            Some(c.clone())
        );
        let last = NOW + TOKEN_TTL - Duration::seconds(1);
        assert_eq!(ring.verify(&token, ISS, last).await.unwrap(), Some(c));
        // No leeway past exp: the injected clock decides, not the system's.
        assert_eq!(
            ring.verify(&token, ISS, NOW + TOKEN_TTL).await.unwrap(),
            None
        );
        // Another issuer's.
        assert_eq!(
            ring.verify(&token, "https://other.example", NOW)
                .await
                .unwrap(),
            None
        );
        // Issued more than the clock skew ahead of now.
        let early = ring
            .sign(&claims(NOW + Duration::seconds(61), NOW + TOKEN_TTL), NOW)
            .await
            .unwrap();
        assert_eq!(ring.verify(&early, ISS, NOW).await.unwrap(), None);
        let skewed = ring
            .sign(&claims(NOW + Duration::seconds(60), NOW + TOKEN_TTL), NOW)
            .await
            .unwrap();
        assert!(ring.verify(&skewed, ISS, NOW).await.unwrap().is_some());
    }

    /// The same r and s as `token`'s signature, DER-encoded (SEQUENCE of two INTEGERs).
    fn der_signature(token: &str) -> Vec<u8> {
        let sig = B64U.decode(token.rsplit('.').next().unwrap()).unwrap();
        let int = |b: &[u8]| {
            let b = &b[b.iter().take_while(|&&x| x == 0).count()..];
            let mut v = vec![0x02];
            if b[0] & 0x80 != 0 {
                v.extend([b.len() as u8 + 1, 0]);
            } else {
                v.push(b.len() as u8);
            }
            v.extend(b);
            v
        };
        let body = [int(&sig[..32]), int(&sig[32..])].concat();
        [vec![0x30, body.len() as u8], body].concat()
    }

    /// `token` with its signature's last character changed so that only the unused low bits
    /// differ: the same bytes to a lenient decoder.
    fn second_encoding(token: &str) -> String {
        let last = token.chars().last().unwrap();
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let i = ALPHABET.find(last).unwrap();
        // 64 bytes take 86 characters: the last carries 2 bits of data and 4 unused ones.
        let other = ALPHABET.as_bytes()[(i & !0b1111) | 0b0101] as char;
        format!("{}{other}", &token[..token.len() - 1])
    }

    /// A signature's other valid form (s ↦ n − s) is not a second token: certreg signs with the
    /// low s only and refuses the high one.
    #[tokio::test]
    async fn a_signature_has_one_form() {
        let (ring, _db, _dir) = ring_on_a_fresh_database().await;
        for i in 0..40 {
            let c = claims(NOW, NOW + TOKEN_TTL + Duration::seconds(i));
            let token = ring.sign(&c, NOW).await.unwrap();
            let (head, sig) = token.rsplit_once('.').unwrap();
            let mut sig = B64U.decode(sig).unwrap();
            assert!(sig[32..] <= P256_HALF_N[..], "signed with a high s");
            assert_eq!(ring.verify(&token, ISS, NOW).await.unwrap(), Some(c));
            negate_s(&mut sig[32..]);
            let other = format!("{head}.{}", B64U.encode(&sig));
            assert_eq!(ring.verify(&other, ISS, NOW).await.unwrap(), None);
        }
        // n − (n − s) = s.
        let mut s = P256_HALF_N;
        negate_s(&mut s);
        negate_s(&mut s);
        assert_eq!(s, P256_HALF_N);
    }

    /// Whatever certreg's verifier accepts, `jsonwebtoken` accepts too: one-character changes
    /// of a good token everywhere, and the good token itself.
    #[tokio::test]
    async fn certreg_accepts_no_token_jsonwebtoken_refuses() {
        let (ring, db, _dir) = ring_on_a_fresh_database().await;
        let good = ring.sign(&claims(NOW, NOW + TOKEN_TTL), NOW).await.unwrap();
        let key = db.signing_keys(NOW).await.unwrap().remove(0);
        let decoding = jsonwebtoken::DecodingKey::from_ec_der(&key.public_key);
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        let standard = |t: &str| jsonwebtoken::decode::<Claims>(t, &decoding, &validation).is_ok();
        assert!(standard(&good) && ring.verify(&good, ISS, NOW).await.unwrap().is_some());
        let mut accepted = 0;
        for i in 0..good.len() {
            for c in ['A', 'B', 'f', '-', '_', '.', '='] {
                let mut t = good.clone().into_bytes();
                if t[i] == c as u8 {
                    continue;
                }
                t[i] = c as u8;
                let t = String::from_utf8(t).unwrap();
                if ring.verify(&t, ISS, NOW).await.unwrap().is_some() {
                    accepted += 1;
                    assert!(
                        standard(&t),
                        "certreg accepts what jsonwebtoken refuses: {t}"
                    );
                }
            }
        }
        // Changing a character of a signed token leaves nothing certreg accepts.
        assert_eq!(accepted, 0);
    }

    #[tokio::test]
    async fn only_es256_with_a_published_kid_and_a_valid_signature_verifies() {
        let (ring, db, _dir) = ring_on_a_fresh_database().await;
        let kid = ring.current_kid(NOW).await.unwrap();
        let payload = serde_json::to_string(&claims(NOW, NOW + TOKEN_TTL)).unwrap();
        let header = |alg: &str, kid: Option<&str>| {
            let mut h = serde_json::json!({ "alg": alg, "typ": "JWT" });
            if let Some(k) = kid {
                h["kid"] = k.into();
            }
            h.to_string()
        };
        let good = forge(&db, &header("ES256", Some(&kid)), &payload, None).await;
        assert!(ring.verify(&good, ISS, NOW).await.unwrap().is_some());
        for refused in [
            forge(&db, &header("ES256", None), &payload, None).await,
            forge(&db, &header("ES256", Some("other")), &payload, None).await,
            forge(&db, &header("ES384", Some(&kid)), &payload, None).await,
            forge(&db, &header("HS256", Some(&kid)), &payload, None).await,
            forge(&db, &header("none", Some(&kid)), &payload, Some(b"")).await,
            forge(
                &db,
                &header("ES256", Some(&kid)),
                &payload,
                Some(&[0u8; 64]),
            )
            .await,
            forge(&db, &header("ES256", Some(&kid)), "{\"iss\":1}", None).await,
            format!("{good}.x"),
            good.replace('.', ".."),
            "not.a.token".to_string(),
            String::new(),
            // A critical extension certreg does not understand, even as null.
            forge(
                &db,
                &format!(r#"{{"alg":"ES256","kid":"{kid}","crit":["exp"],"exp":1}}"#),
                &payload,
                None,
            )
            .await,
            forge(
                &db,
                &format!(r#"{{"alg":"ES256","kid":"{kid}","crit":null}}"#),
                &payload,
                None,
            )
            .await,
            // The signature DER-encoded (ASN.1) rather than r‖s.
            forge(
                &db,
                &header("ES256", Some(&kid)),
                &payload,
                Some(&der_signature(&good)),
            )
            .await,
            // A claim missing (exp).
            forge(
                &db,
                &header("ES256", Some(&kid)),
                &payload.replace(",\"exp\":", ",\"xp\":"),
                None,
            )
            .await,
            // Padding, and a second encoding of the same signature bytes (trailing bits set).
            format!("{good}=="),
            second_encoding(&good),
            // Whitespace around the parts.
            format!(" {good}"),
            good.replacen('.', ". ", 1),
            // Longer than any token certreg signs.
            format!("{good}{}", "A".repeat(MAX_TOKEN_LEN)),
        ] {
            assert_eq!(
                ring.verify(&refused, ISS, NOW).await.unwrap(),
                None,
                "{refused}"
            );
        }
    }

    #[tokio::test]
    async fn the_jwks_publishes_the_current_and_retired_keys() {
        let (ring, _db, _dir) = ring_on_a_fresh_database().await;
        let old = ring.sign(&claims(NOW, NOW + TOKEN_TTL), NOW).await.unwrap();
        let old_kid = ring.current_kid(NOW).await.unwrap();
        let new_kid = ring.rotate(NOW).await.unwrap();
        let jwks = ring.jwks(NOW).await.unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], new_kid.as_str());
        assert_eq!(keys[1]["kid"], old_kid.as_str());
        for k in keys {
            let fields: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(fields, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
            assert_eq!(k["alg"], "ES256");
            assert_eq!(k["use"], "sig");
        }
        // A token of the retired key verifies until the key is no longer published.
        assert!(ring.verify(&old, ISS, NOW).await.unwrap().is_some());
        let new = ring.sign(&claims(NOW, NOW + TOKEN_TTL), NOW).await.unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&B64U.decode(new.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["kid"], new_kid.as_str());
        assert!(ring.verify(&new, ISS, NOW).await.unwrap().is_some());
    }
}
