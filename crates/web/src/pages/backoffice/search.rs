//! 本部 search (R6.3): agencies, registrations, receipts and the audit log by 機關代號, 憑證序號,
//! date range and outcome. The domain finds and audits; this page parses the criteria typed
//! and shows what was found.

use super::{reviewer, state_label, taipei_date};
use crate::AppState;
use crate::error;
use crate::pages::{parse_day, start_of};
use crate::render::{Layout, render};
use crate::security::ClientAddr;
use crate::session::SessionHandle;
use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use domain::service::{AgencyRecord, SearchCriteria};
use domain::store::AUDIT_SEARCH_MAX;
use serde::Deserialize;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/backoffice/search", get(search))
}

#[derive(Deserialize, Default)]
struct SearchQuery {
    #[serde(default)]
    code: String,
    #[serde(default)]
    serial: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    outcome: String,
}

#[derive(Default)]
struct SearchErrors {
    code: Option<String>,
    serial: Option<String>,
    from: Option<String>,
    to: Option<String>,
    outcome: Option<String>,
}

impl SearchErrors {
    fn any(&self) -> bool {
        self.code.is_some()
            || self.serial.is_some()
            || self.from.is_some()
            || self.to.is_some()
            || self.outcome.is_some()
    }
}

struct Line {
    label: &'static str,
    value: String,
}

struct AgencyHit {
    code: String,
    lines: Vec<Line>,
    /// Expiry and revocation flags: (whose certificate, serial, badge).
    flags: Vec<(&'static str, String, String)>,
    /// (收件時間, 註冊項目, 審核狀態, accepted terms version).
    receipts: Vec<(String, &'static str, String, String)>,
}

struct AuditHit {
    seq: i64,
    at: String,
    actor: String,
    code: String,
    cert: String,
    action: String,
    outcome: String,
}

#[derive(Template)]
#[template(path = "backoffice_search.html")]
struct SearchPage {
    layout: Layout,
    q: SearchQuery,
    errors: SearchErrors,
    searched: bool,
    agencies: Vec<AgencyHit>,
    audit: Vec<AuditHit>,
    limit: i64,
}

/// One agency found, as shown (nothing of the national ID).
fn agency_hit(now: time::OffsetDateTime, record: &AgencyRecord) -> AgencyHit {
    let agency = &record.agency;
    let line = |label, value| Line { label, value };
    let mut lines = vec![
        line("機關名稱", agency.name.clone()),
        line("縣市", agency.county.clone()),
        line(
            "本部資料識別碼",
            agency
                .org_identifier
                .as_ref()
                .map(|o| o.as_str().to_string())
                .unwrap_or_else(|| "（無）".into()),
        ),
    ];
    match &record.registration {
        Some(r) => lines.extend([
            line("註冊狀態", "已註冊".into()),
            line("機關憑證序號", r.org.cert.serial.as_str().to_string()),
            line(
                "機關憑證有效期限",
                format!(
                    "{} ～ {}",
                    taipei_date(r.org.cert.not_before),
                    taipei_date(r.org.cert.not_after)
                ),
            ),
            line("授權管理者", r.admin_card.holder_name.clone()),
            line(
                "授權管理者憑證序號",
                r.admin_card.cert.serial.as_str().to_string(),
            ),
            line(
                "註冊時間",
                crate::pages::admin::taipei_time(r.registered_at),
            ),
            line(
                "最近異動時間",
                crate::pages::admin::taipei_time(r.updated_at),
            ),
        ]),
        None => lines.push(line("註冊狀態", "未註冊".into())),
    }
    AgencyHit {
        code: agency.code.as_str().to_string(),
        lines,
        flags: record
            .flags
            .iter()
            .map(|f| {
                (
                    f.holder.label_zh(),
                    f.serial.as_str().to_string(),
                    f.badge_zh(now),
                )
            })
            .collect(),
        receipts: record
            .receipts
            .iter()
            .map(|(r, review)| {
                (
                    crate::pages::admin::taipei_time(r.at),
                    r.kind.label_zh(),
                    review.as_ref().map(state_label).unwrap_or_default(),
                    r.terms_version.clone().unwrap_or_default(),
                )
            })
            .collect(),
    }
}

/// GET /backoffice/search: agencies, registrations, receipts and the audit log by 機關代號,
/// 憑證序號, date range and outcome (R6.3). Every search is audited.
async fn search(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    Query(q): Query<SearchQuery>,
) -> Response {
    let (s, r) = match reviewer(&state, &session).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let mut errors = SearchErrors::default();
    let (code_s, serial_s, from_s, to_s, outcome_s) = (
        q.code.trim(),
        q.serial.trim(),
        q.from.trim(),
        q.to.trim(),
        q.outcome.trim(),
    );
    let searched = [code_s, serial_s, from_s, to_s, outcome_s]
        .iter()
        .any(|v| !v.is_empty());
    let code = (!code_s.is_empty())
        .then(|| domain::types::InstitutionCode::parse(code_s))
        .transpose()
        .unwrap_or_else(|e| {
            errors.code = Some(e.message_zh());
            None
        });
    let serial = (!serial_s.is_empty())
        .then(|| domain::types::cert_serial("serial", serial_s))
        .transpose()
        .unwrap_or_else(|e| {
            errors.serial = Some(e.message_zh());
            None
        });
    let day = |v: &str, slot: &mut Option<String>| {
        if v.is_empty() {
            return None;
        }
        let d = parse_day(v);
        if d.is_none() {
            *slot = Some("日期格式錯誤，請輸入 YYYY-MM-DD".into());
        }
        d
    };
    let from = day(from_s, &mut errors.from).map(start_of);
    let to = day(to_s, &mut errors.to)
        .and_then(|d| d.next_day())
        .map(start_of);
    let outcome_ok = outcome_s.len() <= 40
        && outcome_s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !outcome_ok {
        errors.outcome = Some("結果請輸入 ok 或錯誤代碼（英文小寫）".into());
    }
    let mut page = SearchPage {
        layout: state.layout_for(&s),
        q: SearchQuery::default(),
        errors: SearchErrors::default(),
        searched: false,
        agencies: vec![],
        audit: vec![],
        limit: AUDIT_SEARCH_MAX,
    };
    if errors.any() {
        page.errors = errors;
        page.q = q;
        return (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response();
    }
    if !searched {
        return render(&page);
    }
    let criteria = SearchCriteria {
        code,
        serial,
        from,
        to,
        outcome: (!outcome_s.is_empty()).then(|| outcome_s.to_string()),
    };
    let client = addr.map(|a| a.to_string());
    let found = match state
        .svc()
        .backoffice_search(&r, &criteria, client.as_deref())
        .await
    {
        Ok(f) => f,
        Err(e) => return error::domain_page(&state, &e),
    };
    let now = state.now();
    page.agencies = found.agencies.iter().map(|a| agency_hit(now, a)).collect();
    page.audit = found
        .audit
        .into_iter()
        .map(|(seq, e)| AuditHit {
            seq,
            at: crate::pages::admin::taipei_time(e.at),
            actor: e.actor,
            code: e.code.map(|c| c.as_str().to_string()).unwrap_or_default(),
            cert: e.cert.unwrap_or_default(),
            action: e.action,
            outcome: e.outcome,
        })
        .collect();
    page.q = q;
    page.searched = true;
    render(&page)
}
