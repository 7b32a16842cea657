//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers' annotations and served as
//! JSON (no bundled UI: any OpenAPI viewer can read it).

use super::{flows, operators, queries, sessions};
use crate::error::ApiError;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

const DESCRIPTION: &str = "\
certreg's JSON API: every function of F1–F5 through the same domain services as the pages.

**Sessions.** `POST /api/v1/sessions` returns a token; send it as `Authorization: Bearer <token>`. \
A session gains rights through its card flows: `admin_login` (F2) makes it the agency's \
administrator session, `operator_login` (R5.1) the operator's. Idle timeout 15 minutes, absolute \
8 hours. Requests with the bearer token and no cookie need no CSRF token; requests riding on the \
browser cookie must send the page's `x-csrf-token` and a same-site `Origin` on every state change.

**Card steps.** `POST /flows/{id}/challenge` gives a TBS; the card signs it (CMS SignedData, or \
PKCS#1 with the certificate beside it) through the local card agent — the PIN never reaches \
certreg — and `POST /flows/{id}/card` hands in the proof. A challenge is single use, expires after \
5 minutes and is bound to the session, the flow, the step and this service's origin.

**Errors** are `{code, message, field?}`: `message` in zh-TW, `field` naming the input at fault. \
Stable codes: \
API: `unauthorized` 401, `forbidden` 403, `csrf` 403, `not_found` 404, `method_not_allowed` 405, \
`payload_too_large` 413, `bad_request` 400 (malformed JSON, query or path), `rate_limited` 429, \
`too_many_flows` 429, `wrong_host` 421 (the request did not name the public origin's host), \
`audience_not_allowed` 422, `busy` 503 (the database could not take the write now; nothing \
was written, try again), `internal` 500. \
Domain: `invalid_input` 422, `unknown_agency` 404, `already_registered` 409, `not_registered` 409, \
`oid_mismatch` 422, `review_pending` 409, `review_not_yet_effective` 409, `org_card_changed` 409, \
`admin_card_changed` 409, `not_administrator` 403, `id_mismatch` 422, `same_certificate` 422, \
`duplicate_operator` 409, `operator_not_found` 404, `conflict` 409, `not_operator` 403, \
`grant_expired` 403 and `grant_not_yet_valid` 403 (outside the operator grant's validity \
period), `review_not_found` 404, `flow_expired` 410, `flow_not_found` 404, `wrong_step` 409, \
`already_confirmed` 409, `registration_changed` 409 (the registration changed after the card \
steps were checked; start again), `challenge_used` 410, `challenge_expired` 410. \
Certificate and proof checks (422): `cert_malformed`, `input_too_large`, `cert_untrusted`, \
`cert_expired`, `cert_not_yet_valid`, `cert_revoked`, `revocation_stale`, `revocation_unknown`, \
`revocation_invalid`, `ocsp_unavailable`, `wrong_role`, `key_usage`, `missing_attribute`, \
`unsupported_algorithm`, `sha1_refused`, `signature_invalid`, `signature_over_signer_id`, \
`proof_malformed`, \
`challenge_mismatch`, `challenge_expired`, `invalid_identifier`.";

#[derive(OpenApi)]
#[openapi(
    info(title = "certreg API", description = DESCRIPTION),
    paths(
        sessions::create,
        sessions::delete,
        sessions::current,
        flows::start,
        flows::show,
        flows::terms,
        flows::challenge,
        flows::card,
        flows::review,
        flows::confirm,
        operators::list,
        operators::add,
        operators::show,
        operators::modify,
        operators::delete,
        queries::receipts,
        crate::token::issue,
        crate::token::introspect,
        openapi_json,
    ),
    components(schemas(ApiError)),
    modifiers(&BearerScheme),
    tags(
        (name = "sessions", description = "API sessions and who they are (R5.1)"),
        (name = "flows", description = "F1, F2 card steps, F3, R4.2, R4.3, R5.1"),
        (name = "operators", description = "F2: the administrator's operators (R2.3–R2.6)"),
        (name = "queries", description = "R4.1"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The token of POST /api/v1/sessions (the session id)"))
                    .build(),
            ),
        );
    }
}

fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").into();
        doc.to_json().unwrap_or_default()
    })
}

#[utoipa::path(
    get, path = "/api/v1/openapi.json", operation_id = "openapi_document", tag = "meta",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(super) async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
        .into_response()
}
