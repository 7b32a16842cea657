//! The flows of F1, F2 (its card steps), F3, F4.2, F4.3 and F5 as JSON: start, show, terms,
//! challenge, card proof, mismatch review and the final confirmation, each through the same
//! domain services as the pages.

use super::{ApiJson, ApiPath, Caller, rate_limited, rfc3339};
use crate::AppState;
use crate::card_step::{self, CardDone, CardFailure, CardRequest, Door};
use crate::error::{ApiError, api};
use crate::security::{Bucket, ClientAddr, LimitKey};
use crate::session::FlowResult;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::DomainError;
use domain::flow::{Flow, FlowKind, Step};
use domain::model::{AdminContact, CertRef, OidVerdict, Registration};
use domain::service::ContactInput;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which flow to start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// F1 首次註冊
    FirstRegistration,
    /// F2 授權指派 (organization card + administrator card → administrator session)
    AdminLogin,
    /// R3.1 更換機關憑證
    ReplaceOrg,
    /// R3.2 更換授權管理者自然人憑證
    ReplaceAdmin,
    /// R3.3 更換機關憑證和更換授權管理者自然人憑證
    ReplaceBoth,
    /// R4.2 查詢機關憑證 OID
    QueryOrgOid,
    /// R4.3 查詢自然人憑證序號
    QueryCitizenSerial,
    /// R5.1 經辦人登入
    OperatorLogin,
}

impl Kind {
    fn domain(self) -> FlowKind {
        match self {
            Kind::FirstRegistration => FlowKind::FirstRegistration,
            Kind::AdminLogin => FlowKind::AdminLogin,
            Kind::ReplaceOrg => FlowKind::ReplaceOrg,
            Kind::ReplaceAdmin => FlowKind::ReplaceAdmin,
            Kind::ReplaceBoth => FlowKind::ReplaceBoth,
            Kind::QueryOrgOid => FlowKind::QueryOrgOid,
            Kind::QueryCitizenSerial => FlowKind::QueryCitizenSerial,
            Kind::OperatorLogin => FlowKind::OperatorLogin,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StartFlow {
    pub kind: Kind,
    /// Also issue the first challenge when the flow starts at a card step (the queries and
    /// the logins): the answer's `challenge` then saves the `POST /flows/{id}/challenge`
    /// request. It counts against the same per-client limit as that request.
    #[serde(default)]
    pub challenge: bool,
}

/// A flow and the step it waits for: `terms`, `org_card`, `new_org_card`, `admin_card`,
/// `new_admin_card`, `confirm`, `query_org_card`, `query_citizen_card`, `operator_card` or
/// `done`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowState {
    pub id: String,
    #[schema(example = "first_registration")]
    pub kind: String,
    #[schema(example = "terms")]
    pub step: String,
    /// The first step's challenge, when the start asked for it and the flow starts at a card
    /// step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge: Option<ChallengeView>,
}

fn state_of(flow: &Flow) -> FlowState {
    FlowState {
        id: flow.id.clone(),
        kind: flow.kind.as_str().into(),
        step: flow.step.as_str().into(),
        challenge: None,
    }
}

/// The organization certificate a flow has verified (圖3-9 upper half).
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgCertView {
    /// 機關名稱 as the certificate names it.
    pub name: String,
    /// 機關憑證 OID (or 統一編號 for MOEACA cards).
    pub org_identifier: String,
    /// 憑證序號, canonical upper-case hex.
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub issuer: String,
}

/// A citizen certificate a flow has verified (圖3-9 lower half); never the national ID.
#[derive(Debug, Serialize, ToSchema)]
pub struct CitizenCertView {
    /// 姓名
    pub name: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub issuer: String,
}

fn citizen_view(name: &str, cert: &CertRef) -> CitizenCertView {
    CitizenCertView {
        name: name.to_string(),
        serial: cert.serial.as_str().to_string(),
        not_before: rfc3339(cert.not_before),
        not_after: rfc3339(cert.not_after),
        issuer: cert.issuer.clone(),
    }
}

fn org_view(o: &domain::model::OrgCard) -> OrgCertView {
    OrgCertView {
        name: o.org_name.clone(),
        org_identifier: o.org_identifier.as_str().to_string(),
        serial: o.cert.serial.as_str().to_string(),
        not_before: rfc3339(o.cert.not_before),
        not_after: rfc3339(o.cert.not_after),
        issuer: o.cert.issuer.clone(),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowDataView {
    /// 機關代號, once a step has named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgCertView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<CitizenCertView>,
    /// The organization card's identifier differs from the one on file: the flow waits for a
    /// review application (`POST /flows/{id}/review`, 圖3-6).
    pub mismatch: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowView {
    pub id: String,
    pub kind: String,
    pub step: String,
    pub data: FlowDataView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChallengeView {
    pub challenge_id: String,
    /// The text the card signs (CMS SignedData over these UTF-8 bytes).
    pub tbs: String,
    pub expires_at: String,
}

/// A card proof and the fields typed beside it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CardProof {
    pub challenge_id: String,
    /// CMS SignedData (base64), or a raw PKCS#1 signature (base64) with `certificate`.
    pub signature: String,
    /// The signer's certificate (base64 DER or PEM), for raw signatures.
    #[serde(default)]
    pub certificate: Option<String>,
    /// 機關代號: organization card steps and operator login.
    #[serde(default)]
    pub institution_code: Option<String>,
    /// 身分證統一編號: citizen card steps.
    #[serde(default)]
    pub national_id: Option<String>,
}

/// A function an operator is granted (功能選單, R2.7).
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionView {
    pub id: String,
    /// zh-TW label, e.g. 加保作業.
    pub label: String,
}

pub(crate) fn functions_view(state: &AppState, ids: &[String]) -> Vec<FunctionView> {
    let catalogue = &state.svc().config().functions;
    ids.iter()
        .map(|id| FunctionView {
            id: id.clone(),
            label: catalogue.label(id).unwrap_or_default().to_string(),
        })
        .collect()
}

/// What a card step led to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CardOutcome {
    /// The flow moved on to `step`.
    Advanced { step: String },
    /// The organization card's identifier does not match the one on file (圖3-6): file a
    /// review application with `POST /flows/{id}/review`.
    ReviewNeeded { message: String, org: OrgCertView },
    /// F2 done: this session now holds the administrator grant for `code`.
    Admin { code: String },
    /// R4.2
    OrgOid {
        agency_name: String,
        org_name: String,
        org_identifier: String,
        /// Whether a registration with the card may go on now: its identifier is the one on
        /// file for the code, or an approved review application of it is in effect (the
        /// identifier on file itself is not told).
        matches: bool,
        /// `on_file`, `approved`, `review_pending`, `approved_from` (see `effective`) or
        /// `mismatch` (registering will ask for a review application).
        verdict: String,
        /// For `approved_from`: the date (YYYY-MM-DD) registration may be made from.
        effective: Option<String>,
        /// What the pages say of it.
        message: String,
    },
    /// R4.3
    CitizenSerial { name: String, serial: String },
    /// R5.1: this session is now the operator's.
    Operator {
        code: String,
        serial: String,
        name: String,
        functions: Vec<FunctionView>,
    },
}

/// 姓名 and 電話 of the applicant (圖3-6).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReviewForm {
    pub name: String,
    pub phone: String,
}

/// The review application filed (圖3-7).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewFiled {
    pub application_id: i64,
    /// Always `pending` when filed.
    pub state: String,
    /// 圖3-7: try again on the next business day; the insurer calls if it is rejected.
    pub message: String,
    /// 總機
    pub switchboard: String,
    /// The section in charge of the agency's region (承保第一科 / 承保第二科).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
}

/// The administrator data of 圖3-9.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ConfirmForm {
    pub name: String,
    pub email: String,
    pub phone: String,
    #[serde(default)]
    pub phone_ext: Option<String>,
    #[serde(default)]
    pub mobile: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    pub name: String,
    pub email: String,
    pub phone: String,
    pub phone_ext: Option<String>,
    pub mobile: Option<String>,
    pub unit: Option<String>,
    pub title: Option<String>,
}

fn contact_view(c: &AdminContact) -> ContactView {
    ContactView {
        name: c.name.as_str().to_string(),
        email: c.email.as_str().to_string(),
        phone: c.phone.as_str().to_string(),
        phone_ext: c.phone_ext.clone(),
        mobile: c.mobile.as_ref().map(|m| m.as_str().to_string()),
        unit: c.unit.clone(),
        title: c.title.clone(),
    }
}

/// The registration as the confirmation left it (圖3-10, 3-27, 3-32, 3-37).
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationView {
    /// The flow that made it: `first_registration`, `replace_org`, `replace_admin`, `replace_both`.
    pub flow: String,
    pub code: String,
    pub org: OrgCertView,
    pub admin_card: CitizenCertView,
    pub admin: ContactView,
    pub registered_at: String,
    pub updated_at: String,
    /// Incremented by every replacement.
    pub version: i64,
}

fn registration_view(kind: FlowKind, r: &Registration) -> RegistrationView {
    RegistrationView {
        flow: kind.as_str().into(),
        code: r.code.as_str().into(),
        org: org_view(&r.org),
        admin_card: citizen_view(&r.admin_card.holder_name, &r.admin_card.cert),
        admin: contact_view(&r.admin),
        registered_at: rfc3339(r.registered_at),
        updated_at: rfc3339(r.updated_at),
        version: r.version,
    }
}

/// The flow, if it is this session's; another session's flow does not exist for this one.
async fn owned_flow(state: &AppState, id: &str, session: &str) -> Result<Flow, Response> {
    state
        .svc()
        .session_flow(id, session)
        .await
        .map_err(|e| api(&e))
}

#[utoipa::path(
    post, path = "/api/v1/flows", operation_id = "start_flow", tag = "flows",
    request_body = StartFlow,
    responses(
        (status = 201, description = "Started; the first step is `terms` (F1, F3) or a card step, whose challenge comes with it when asked for", body = FlowState),
        (status = 400, description = "bad_request: malformed JSON or unknown kind", body = ApiError),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "csrf (cookie requests only)", body = ApiError),
        (status = 429, description = "too_many_flows: the session holds as many flows as it may; rate_limited: challenges per client address (with `challenge`)", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    ApiJson(body): ApiJson<StartFlow>,
) -> Response {
    let max = state.config().limits.flows_per_session;
    let kind = body.kind.domain();
    // The challenge counts as `POST /flows/{id}/challenge` does; refused, nothing starts.
    let with_challenge = body.challenge && kind.first_step().is_card_step();
    if with_challenge && !challenge_allowed(&state, addr) {
        return rate_limited();
    }
    let started = if with_challenge {
        state
            .svc()
            .start_flow_with_challenge(kind, caller.id(), max)
            .await
    } else {
        let flow = state.svc().start_flow_capped(kind, caller.id(), max).await;
        flow.map(|f| (f, None))
    };
    match started {
        Ok((flow, challenge)) => {
            let view = FlowState {
                challenge: challenge.map(|c| challenge_view(&c)),
                ..state_of(&flow)
            };
            (StatusCode::CREATED, Json(view)).into_response()
        }
        Err(e) => api(&e),
    }
}

/// One more challenge for this client, within `card_steps_per_client` (whichever door).
fn challenge_allowed(state: &AppState, addr: Option<std::net::IpAddr>) -> bool {
    state.limiter().hit(
        LimitKey::client(Bucket::CardStep, addr),
        state.config().limits.card_steps_per_client,
        state.now(),
    )
}

fn challenge_view(c: &domain::service::IssuedChallenge) -> ChallengeView {
    ChallengeView {
        challenge_id: c.id.clone(),
        tbs: c.tbs.clone(),
        expires_at: rfc3339(c.expires_at),
    }
}

#[utoipa::path(
    get, path = "/api/v1/flows/{id}", operation_id = "get_flow", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    responses(
        (status = 200, description = "The flow, what it has verified so far (never a national ID)", body = FlowView),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 404, description = "flow_not_found (also another session's flow)", body = ApiError),
        (status = 410, description = "flow_expired: 15 minutes without progress", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Response {
    let flow = match owned_flow(&state, &id, caller.id()).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if flow.step != Step::Done
        && let Err(e) = flow.expect(caller.id(), flow.step, state.now())
    {
        return api(&e);
    }
    let d = &flow.data;
    Json(FlowView {
        id: flow.id.clone(),
        kind: flow.kind.as_str().into(),
        step: flow.step.as_str().into(),
        data: FlowDataView {
            code: d.code.as_ref().map(|c| c.as_str().to_string()),
            org: d.org.as_ref().map(org_view),
            admin: d
                .admin_card
                .as_ref()
                .map(|a| citizen_view(&a.holder_name, &a.cert)),
            mismatch: d.mismatch,
        },
    })
    .into_response()
}

#[utoipa::path(
    post, path = "/api/v1/flows/{id}/terms", operation_id = "agree_terms", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    responses(
        (status = 200, description = "R1.1: 用戶約定條款 agreed (the version is recorded); the flow moves on", body = FlowState),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "csrf (cookie requests only)", body = ApiError),
        (status = 404, description = "flow_not_found", body = ApiError),
        (status = 409, description = "wrong_step", body = ApiError),
        (status = 410, description = "flow_expired", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn terms(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Response {
    match state.svc().agree_terms(&id, caller.id()).await {
        Ok(flow) => Json(state_of(&flow)).into_response(),
        Err(e) => api(&e),
    }
}

#[utoipa::path(
    post, path = "/api/v1/flows/{id}/challenge", operation_id = "issue_challenge", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    responses(
        (status = 200, description = "A single-use challenge for the flow's current card step (5 minutes)", body = ChallengeView),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "csrf (cookie requests only)", body = ApiError),
        (status = 404, description = "flow_not_found", body = ApiError),
        (status = 409, description = "wrong_step: the flow is not at a card step", body = ApiError),
        (status = 410, description = "flow_expired", body = ApiError),
        (status = 429, description = "rate_limited: card steps per client address", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn challenge(
    State(state): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
) -> Response {
    // Same key as the pages' card steps: one budget per client, whichever door it uses.
    if !challenge_allowed(&state, addr) {
        return rate_limited();
    }
    let read = caller.handle.take_flow(&id);
    match state
        .svc()
        .issue_challenge_read(read, &id, caller.id())
        .await
    {
        Ok(c) => Json(challenge_view(&c)).into_response(),
        Err(e) => api(&e),
    }
}

#[utoipa::path(
    post, path = "/api/v1/flows/{id}/card", operation_id = "submit_card", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    request_body = CardProof,
    responses(
        (status = 200, description = "The step's outcome", body = CardOutcome),
        (status = 400, description = "bad_request", body = ApiError),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "csrf; forbidden (a card of another agency); not_administrator; not_operator", body = ApiError),
        (status = 404, description = "flow_not_found; unknown_agency", body = ApiError),
        (status = 409, description = "already_registered; not_registered; org_card_changed; admin_card_changed; review_pending; review_not_yet_effective; wrong_step", body = ApiError),
        (status = 410, description = "challenge_used (replayed, or another flow's challenge); challenge_expired; flow_expired", body = ApiError),
        (status = 413, description = "payload_too_large", body = ApiError),
        (status = 422, description = "invalid_input (with field); id_mismatch; same_certificate; the pki codes: wrong_role, cert_expired, cert_revoked, challenge_mismatch (a TBS of another origin, flow or step), signature_invalid …", body = ApiError),
        (status = 429, description = "rate_limited: verified card proofs refused for this institution code", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn card(
    State(state): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CardProof>,
) -> Response {
    let req = CardRequest {
        flow_id: id,
        challenge_id: body.challenge_id,
        signature: body.signature,
        certificate: body.certificate,
        institution_code: body.institution_code,
        national_id: body.national_id,
    };
    let view = match card_step::submit(&state, &caller.handle, addr, Door::Api, req).await {
        Ok(CardDone::Advanced(flow)) => CardOutcome::Advanced {
            step: flow.step.as_str().into(),
        },
        Ok(CardDone::ReviewNeeded(flow)) => CardOutcome::ReviewNeeded {
            message: DomainError::OrgIdMismatch.message_zh(),
            org: match flow.data.org.as_ref() {
                Some(o) => org_view(o),
                None => return api(&DomainError::WrongStep),
            },
        },
        Ok(CardDone::Admin(grant)) => CardOutcome::Admin {
            code: grant.code.as_str().into(),
        },
        Ok(CardDone::Operator(grant)) => CardOutcome::Operator {
            code: grant.code.as_str().into(),
            serial: grant.serial.as_str().into(),
            name: grant.name.clone(),
            functions: functions_view(&state, &grant.functions),
        },
        Ok(CardDone::Answered(FlowResult::OrgOid {
            agency_name,
            org_name,
            org_identifier,
            verdict,
            ..
        })) => CardOutcome::OrgOid {
            agency_name,
            org_name,
            org_identifier,
            matches: verdict.accepted(),
            verdict: verdict.code().into(),
            effective: match verdict {
                OidVerdict::ApprovedFrom { effective } => Some(effective.to_string()),
                _ => None,
            },
            message: verdict.message_zh(),
        },
        Ok(CardDone::Answered(FlowResult::CitizenSerial { name, serial, .. })) => {
            CardOutcome::CitizenSerial { name, serial }
        }
        // Neither comes out of the API's door: reviewer logins are refused there, and the
        // other results come from the review and confirm steps.
        Ok(CardDone::Reviewer | CardDone::Answered(_)) => return api(&DomainError::Forbidden),
        Err(CardFailure::NoFlow(e) | CardFailure::Refused(_, e)) => return api(&e),
        Err(CardFailure::RateLimited) => return rate_limited(),
    };
    Json(view).into_response()
}

#[utoipa::path(
    post, path = "/api/v1/flows/{id}/review", operation_id = "file_review", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    request_body = ReviewForm,
    responses(
        (status = 201, description = "R1.3: the review application is filed; the flow ends (圖3-7)", body = ReviewFiled),
        (status = 400, description = "bad_request", body = ApiError),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "csrf (cookie requests only)", body = ApiError),
        (status = 404, description = "flow_not_found", body = ApiError),
        (status = 409, description = "wrong_step: no mismatch to review", body = ApiError),
        (status = 422, description = "invalid_input: field applicant_name or applicant_phone", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn review(
    State(state): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ReviewForm>,
) -> Response {
    let client = addr.map(|a| a.to_string());
    match state
        .svc()
        .file_review(&id, caller.id(), &body.name, &body.phone, client.as_deref())
        .await
    {
        Ok((application, section)) => (
            StatusCode::CREATED,
            Json(ReviewFiled {
                application_id: application.id,
                state: "pending".into(),
                message: DomainError::ReviewPending.message_zh(),
                switchboard: state.svc().config().contacts.switchboard.clone(),
                section: section.as_ref().map(|c| c.section.label_zh().to_string()),
                extension: section.map(|c| c.extension),
            }),
        )
            .into_response(),
        Err(e) => api(&e),
    }
}

#[utoipa::path(
    post, path = "/api/v1/flows/{id}/confirm", operation_id = "confirm_flow", tag = "flows",
    params(("id" = String, Path, description = "Flow id")),
    request_body = ConfirmForm,
    responses(
        (status = 200, description = "R1.5 / R3.x: registered (or replaced) in one transaction, with a receipt and an audit event", body = RegistrationView),
        (status = 400, description = "bad_request", body = ApiError),
        (status = 401, description = "unauthorized", body = ApiError),
        (status = 403, description = "csrf (cookie requests only)", body = ApiError),
        (status = 404, description = "flow_not_found", body = ApiError),
        (status = 409, description = "already_confirmed (takes effect once); wrong_step", body = ApiError),
        (status = 410, description = "flow_expired", body = ApiError),
        (status = 422, description = "invalid_input with field name, email, phone, phone_ext, mobile, unit or title", body = ApiError),
    ),
    security(("bearer" = []))
)]
pub(super) async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    ClientAddr(addr): ClientAddr,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ConfirmForm>,
) -> Response {
    let flow = match owned_flow(&state, &id, caller.id()).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let contact = ContactInput {
        name: body.name,
        email: body.email,
        phone: body.phone,
        phone_ext: body.phone_ext.unwrap_or_default(),
        mobile: body.mobile.unwrap_or_default(),
        unit: body.unit.unwrap_or_default(),
        title: body.title.unwrap_or_default(),
    };
    let client = addr.map(|a| a.to_string());
    match state
        .svc()
        .confirm(&id, caller.id(), &contact, client.as_deref())
        .await
    {
        Ok(reg) => {
            if flow.kind != FlowKind::FirstRegistration {
                // The replacement ended the agency's administrator sessions in the store; this
                // request's session is saved again after the handler, so drop a grant it holds
                // for that agency here too (R3.4).
                caller.handle.update(|s| {
                    if s.data.admin.as_ref().is_some_and(|a| a.code == reg.code) {
                        s.data_mut().admin = None;
                    }
                });
            }
            Json(registration_view(flow.kind, &reg)).into_response()
        }
        Err(e) => api(&e),
    }
}
