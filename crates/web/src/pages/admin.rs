//! 授權指派 once both cards are proven (F2, 圖3-14 … 3-22): the agency's operator list, 新增,
//! 修改 and 刪除 with its confirmation step, and the administrator's logout. Every handler asks
//! the services again whether the session's grant still holds, so a replacement made from
//! another browser ends it at once. Operator ids of other agencies answer 404, exactly as ids
//! that do not exist, so nobody can probe another agency's operators.

use super::check_form;
use crate::AppState;
use crate::error;
use crate::render::{Layout, render};
use crate::security::ClientAddr;
use crate::session::{Session, SessionHandle};
use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use domain::DomainError;
use domain::expiry::FlagHolder;
use domain::model::Operator;
use domain::service::{AdminGrant, OperatorForm};

const ENDED: &str = "授權管理者作業階段已結束，請重新辦理授權指派";
const NOT_ADMIN: &str = "此功能僅限授權管理者使用，請先辦理授權指派";
const LIST: &str = "/admin/operators";

/// Dates and times are shown as Taipei sees them, whatever the server's zone.
pub(crate) fn taipei_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(domain::clock::TAIPEI);
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

#[derive(Template)]
#[template(path = "admin_denied.html")]
struct DeniedPage {
    layout: Layout,
    message: &'static str,
}

fn denied(state: &AppState, s: &Session, message: &'static str) -> Response {
    let page = DeniedPage {
        layout: state.layout_for(s),
        message,
    };
    (StatusCode::FORBIDDEN, render(&page)).into_response()
}

/// The session's administrator grant, or the page saying why there is none.
fn grant(state: &AppState, session: &SessionHandle) -> Result<(Session, AdminGrant), Response> {
    let s = session.get();
    match s.data.admin.clone() {
        Some(g) => Ok((s, g)),
        None if s.lost => Err(denied(state, &s, ENDED)),
        None => Err(denied(state, &s, NOT_ADMIN)),
    }
}

/// A refusal that is not about a form field. `Forbidden` from the services means the grant no
/// longer holds (the registration was replaced since): the session drops it.
fn refused(state: &AppState, session: &SessionHandle, e: &DomainError) -> Response {
    match e {
        DomainError::Forbidden => {
            session.update(|s| s.data_mut().admin = None);
            denied(state, &session.get(), ENDED)
        }
        DomainError::OperatorNotFound => not_found(state),
        _ => error::domain_page(state, e),
    }
}

fn not_found(state: &AppState) -> Response {
    error::domain_page(state, &DomainError::OperatorNotFound)
}

/// Path ids that are not numbers are as unknown as numbers nobody has.
fn operator_id(state: &AppState, raw: &str) -> Result<i64, Response> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| not_found(state))
}

fn labels(state: &AppState, functions: &[String]) -> Vec<String> {
    let catalogue = &state.svc().config().functions;
    functions
        .iter()
        .map(|f| catalogue.label(f).unwrap_or(f).to_string())
        .collect()
}

struct Row {
    id: i64,
    serial: String,
    name: String,
    national_id: String,
    functions: String,
    updated: String,
    /// 授權期間 as 「YYYY/MM/DD ～ YYYY/MM/DD」 (an open end left blank); empty when unset.
    validity: String,
    /// Outside its validity period today.
    lapsed: bool,
    /// 「憑證已廢止」 / 「憑證將於 YYYY/MM/DD 到期」.
    badge: Option<Badge>,
}

/// A grant's validity period as the list shows it.
fn validity_text(v: &domain::model::Validity) -> String {
    let day = |d: time::Date| format!("{:04}/{:02}/{:02}", d.year(), u8::from(d.month()), d.day());
    match (v.from, v.until) {
        (None, None) => String::new(),
        (f, u) => format!(
            "{} ～ {}",
            f.map(day).unwrap_or_default(),
            u.map(day).unwrap_or_default()
        ),
    }
}

/// A certificate's flag as shown: a notice (will expire) is a warning, the rest are errors.
struct Badge {
    text: String,
    notice: bool,
}

impl Badge {
    fn of(f: &domain::expiry::Flag, now: time::OffsetDateTime) -> Self {
        Self {
            text: f.badge_zh(now),
            notice: f.is_notice(now),
        }
    }
}

#[derive(Template)]
#[template(path = "admin_operators.html")]
struct ListPage {
    layout: Layout,
    code: String,
    flash: Option<String>,
    rows: Vec<Row>,
    /// The registration's own certificates that are flagged: (which, badge).
    cert_flags: Vec<(&'static str, Badge)>,
    /// 圖3-14, or the figure of the change just made (3-16 新增, 3-19 修改, 3-22 刪除).
    figure: &'static str,
}

/// GET /admin/operators: 授權經辦人清單 (圖3-14, 3-16, 3-19, 3-22).
async fn list(State(state): State<AppState>, session: SessionHandle) -> Response {
    let (_, g) = match grant(&state, &session) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let operators = match state.svc().operators(&g).await {
        Ok(o) => o,
        Err(e) => return refused(&state, &session, &e),
    };
    // Taken only once the list is shown, so a refused request does not eat the message.
    let flash = session.update(|s| {
        if s.data.flash.is_some() {
            s.data_mut().flash.take()
        } else {
            None
        }
    });
    // Flags are advice: a failure to compute them must not hide the list.
    let flags = state.svc().expiry_flags(&g).await.unwrap_or_default();
    let now = state.svc().now();
    let badge = |id: i64| {
        flags
            .iter()
            .find(|f| f.holder == FlagHolder::Operator { id })
            .map(|f| Badge::of(f, now))
    };
    let cert_flags = flags
        .iter()
        .filter(|f| !matches!(f.holder, FlagHolder::Operator { .. }))
        .map(|f| (f.holder.label_zh(), Badge::of(f, now)))
        .collect();
    let rows = operators
        .iter()
        .map(|o| Row {
            badge: badge(o.id),
            id: o.id,
            serial: o.serial.as_str().to_string(),
            name: o.name.as_str().to_string(),
            national_id: o.national_id.masked(),
            functions: labels(&state, &o.functions).join("、"),
            updated: taipei_time(o.updated_at),
            validity: validity_text(&o.validity),
            lapsed: o
                .validity
                .check(now.to_offset(domain::clock::TAIPEI).date())
                .is_err(),
        })
        .collect();
    let figure = match flash.as_deref() {
        Some("新增成功") => "圖3-16",
        Some("修改成功") => "圖3-19",
        Some("刪除成功") => "圖3-22",
        _ => "圖3-14",
    };
    render(&ListPage {
        layout: state.layout_for(&session.get()),
        code: g.code.as_str().to_string(),
        figure,
        flash,
        rows,
        cert_flags,
    })
}

struct FunctionBox {
    id: String,
    label: String,
    checked: bool,
}

/// What the operator form shows: typed values (or the record's), and errors beside fields.
#[derive(Default)]
struct FormValues {
    serial: String,
    name: String,
    national_id: String,
    certificate: String,
    functions: Vec<String>,
    valid_from: String,
    valid_until: String,
    version: String,
    csrf: String,
    /// 修改: the national ID on file, masked as the list shows it; the field itself starts
    /// empty and an empty field keeps the ID on file.
    national_id_on_file: Option<String>,
}

impl FormValues {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut v = FormValues::default();
        for (k, val) in pairs {
            match k.as_str() {
                "_csrf" => v.csrf = val,
                "serial" => v.serial = val,
                "name" => v.name = val,
                "national_id" => v.national_id = val,
                "certificate" => v.certificate = val,
                "version" => v.version = val,
                "functions" => v.functions.push(val),
                "valid_from" => v.valid_from = val,
                "valid_until" => v.valid_until = val,
                _ => {}
            }
        }
        v
    }

    fn of(o: &Operator) -> Self {
        FormValues {
            serial: o.serial.as_str().to_string(),
            name: o.name.as_str().to_string(),
            national_id_on_file: Some(o.national_id.masked()),
            functions: o.functions.clone(),
            valid_from: o.validity.from.map(|d| d.to_string()).unwrap_or_default(),
            valid_until: o.validity.until.map(|d| d.to_string()).unwrap_or_default(),
            version: o.version.to_string(),
            ..Default::default()
        }
    }

    fn form(&self) -> OperatorForm {
        let cert = self.certificate.trim();
        OperatorForm {
            read_certificate: (!cert.is_empty()).then(|| cert.as_bytes().to_vec()),
            serial: self.serial.clone(),
            name: self.name.clone(),
            national_id: self.national_id.clone(),
            functions: self.functions.clone(),
            valid_from: self.valid_from.clone(),
            valid_until: self.valid_until.clone(),
        }
    }
}

#[derive(Default)]
struct FormErrors {
    serial: Option<String>,
    name: Option<String>,
    national_id: Option<String>,
    functions: Option<String>,
    valid_from: Option<String>,
    valid_until: Option<String>,
    general: Option<String>,
}

#[derive(Template)]
#[template(path = "admin_operator_form.html")]
struct FormPage {
    layout: Layout,
    title: &'static str,
    figure: &'static str,
    action: String,
    /// 修改: the record's version goes back with the form and a reload link is offered.
    edit_id: Option<i64>,
    values: FormValues,
    boxes: Vec<FunctionBox>,
    errors: FormErrors,
}

fn form_page(
    state: &AppState,
    s: &Session,
    edit_id: Option<i64>,
    values: FormValues,
    errors: FormErrors,
) -> FormPage {
    let boxes = state
        .svc()
        .config()
        .functions
        .items
        .iter()
        .map(|(id, label)| FunctionBox {
            id: id.clone(),
            label: label.clone(),
            checked: values.functions.contains(id),
        })
        .collect();
    let (title, figure, action) = match edit_id {
        Some(id) => ("修改授權經辦人", "圖3-18", format!("/admin/operators/{id}")),
        None => ("新增授權經辦人", "圖3-15", LIST.to_string()),
    };
    FormPage {
        layout: state.layout_for(s),
        title,
        figure,
        action,
        edit_id,
        values,
        boxes,
        errors,
    }
}

/// The form again with the refusal beside its field, or the page for refusals that are not
/// about the input.
fn form_refused(
    state: &AppState,
    session: &SessionHandle,
    edit_id: Option<i64>,
    values: FormValues,
    e: DomainError,
) -> Response {
    let mut errors = FormErrors::default();
    match &e {
        DomainError::Invalid {
            field, message_zh, ..
        } => {
            let slot = match *field {
                "serial" => &mut errors.serial,
                "name" => &mut errors.name,
                "national_id" => &mut errors.national_id,
                "functions" => &mut errors.functions,
                "valid_from" => &mut errors.valid_from,
                "valid_until" => &mut errors.valid_until,
                _ => &mut errors.general,
            };
            *slot = Some(message_zh.clone());
        }
        DomainError::IdMismatch => errors.national_id = Some(e.message_zh()),
        DomainError::DuplicateOperator => errors.serial = Some(e.message_zh()),
        // The certificate read from the card could not be used: it stands for the serial.
        DomainError::Pki(_) => errors.serial = Some(e.message_zh()),
        DomainError::Conflict => errors.general = Some(e.message_zh()),
        _ => return refused(state, session, &e),
    }
    let page = form_page(state, &session.get(), edit_id, values, errors);
    (error::status_of(&e), render(&page)).into_response()
}

/// GET /admin/operators/new: 新增授權經辦人 (圖3-15).
async fn new_form(State(state): State<AppState>, session: SessionHandle) -> Response {
    let (s, g) = match grant(&state, &session) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // The grant is checked here too, so an ended session is told before anything is typed.
    if let Err(e) = state.svc().operators(&g).await {
        return refused(&state, &session, &e);
    }
    render(&form_page(
        &state,
        &s,
        None,
        FormValues::default(),
        FormErrors::default(),
    ))
}

/// POST /admin/operators: 確認 on 圖3-15.
async fn create(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    method: Method,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let (s, g) = match grant(&state, &session) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let values = FormValues::from_pairs(pairs);
    if let Err(r) = check_form(&state, &s, &method, &headers, &values.csrf) {
        return r;
    }
    let client = addr.map(|a| a.to_string());
    match state
        .svc()
        .add_operator(&g, &values.form(), client.as_deref())
        .await
    {
        Ok(_) => {
            session.update(|s| s.data_mut().flash = Some("新增成功".into()));
            Redirect::to(LIST).into_response()
        }
        Err(e) => form_refused(&state, &session, None, values, e),
    }
}

/// GET /admin/operators/{id}/edit: 修改授權經辦人 (圖3-18).
async fn edit_form(
    State(state): State<AppState>,
    session: SessionHandle,
    Path(raw): Path<String>,
) -> Response {
    let (s, g) = match grant(&state, &session) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = match operator_id(&state, &raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.svc().operator(&g, id).await {
        Ok(o) => render(&form_page(
            &state,
            &s,
            Some(id),
            FormValues::of(&o),
            FormErrors::default(),
        )),
        Err(e) => refused(&state, &session, &e),
    }
}

/// POST /admin/operators/{id}: 確認 on 圖3-18, against the version the form was read at.
async fn modify(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    method: Method,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let (s, g) = match grant(&state, &session) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = match operator_id(&state, &raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let values = FormValues::from_pairs(pairs);
    if let Err(r) = check_form(&state, &s, &method, &headers, &values.csrf) {
        return r;
    }
    // Looked up before the input is judged, so another agency's id gets the same 404 whatever
    // was posted.
    let on_file = match state.svc().operator(&g, id).await {
        Ok(o) => o,
        Err(e) => return refused(&state, &session, &e),
    };
    let mut values = values;
    values.national_id_on_file = Some(on_file.national_id.masked());
    let mut form = values.form();
    if form.national_id.trim().is_empty() {
        form.national_id = on_file.national_id.as_str().to_string();
    }
    // A version that is not a number was not read from any record: treat it as stale.
    let version = values.version.trim().parse::<i64>().unwrap_or(-1);
    let client = addr.map(|a| a.to_string());
    match state
        .svc()
        .modify_operator(&g, id, version, &form, client.as_deref())
        .await
    {
        Ok(()) => {
            session.update(|s| s.data_mut().flash = Some("修改成功".into()));
            Redirect::to(LIST).into_response()
        }
        Err(e) => form_refused(&state, &session, Some(id), values, e),
    }
}

#[derive(Template)]
#[template(path = "admin_operator_delete.html")]
struct DeletePage {
    layout: Layout,
    id: i64,
    version: i64,
    serial: String,
    name: String,
    national_id: String,
    functions: String,
    error: Option<String>,
}

fn delete_page(state: &AppState, s: &Session, o: &Operator, error: Option<String>) -> DeletePage {
    DeletePage {
        layout: state.layout_for(s),
        id: o.id,
        version: o.version,
        serial: o.serial.as_str().to_string(),
        name: o.name.as_str().to_string(),
        national_id: o.national_id.masked(),
        functions: labels(state, &o.functions).join("、"),
        error,
    }
}

/// GET /admin/operators/{id}/delete: 「確定刪除？」 (圖3-21).
async fn delete_confirm(
    State(state): State<AppState>,
    session: SessionHandle,
    Path(raw): Path<String>,
) -> Response {
    let (s, g) = match grant(&state, &session) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = match operator_id(&state, &raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match state.svc().operator(&g, id).await {
        Ok(o) => render(&delete_page(&state, &s, &o, None)),
        Err(e) => refused(&state, &session, &e),
    }
}

#[derive(serde::Deserialize)]
struct DeleteForm {
    #[serde(default)]
    _csrf: String,
    #[serde(default)]
    version: String,
}

/// POST /admin/operators/{id}/delete: 確定 on 圖3-21.
async fn delete(
    State(state): State<AppState>,
    session: SessionHandle,
    ClientAddr(addr): ClientAddr,
    method: Method,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Response {
    let (s, g) = match grant(&state, &session) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = match operator_id(&state, &raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if let Err(r) = check_form(&state, &s, &method, &headers, &form._csrf) {
        return r;
    }
    let version = form.version.trim().parse::<i64>().unwrap_or(-1);
    let client = addr.map(|a| a.to_string());
    match state
        .svc()
        .delete_operator(&g, id, version, client.as_deref())
        .await
    {
        Ok(()) => {
            session.update(|s| s.data_mut().flash = Some("刪除成功".into()));
            Redirect::to(LIST).into_response()
        }
        // Changed since the confirmation was shown: confirm again what it is now.
        Err(DomainError::Conflict) => match state.svc().operator(&g, id).await {
            Ok(o) => {
                let page = delete_page(&state, &s, &o, Some(DomainError::Conflict.message_zh()));
                (StatusCode::CONFLICT, render(&page)).into_response()
            }
            Err(e) => refused(&state, &session, &e),
        },
        Err(e) => refused(&state, &session, &e),
    }
}

#[derive(Template)]
#[template(path = "admin_activity.html")]
struct ActivityPage {
    layout: Layout,
    code: String,
    from_value: String,
    to_value: String,
    from_error: Option<String>,
    to_error: Option<String>,
    /// (actor, label, selected)
    people: Vec<(String, String, bool)>,
    rows: Vec<ActivityRow>,
}

struct ActivityRow {
    at: String,
    who: String,
    action: &'static str,
    serial: String,
}

#[derive(serde::Deserialize, Default)]
struct ActivityQuery {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    who: String,
}

fn action_zh(action: &str) -> &'static str {
    match action {
        "admin.login" => "授權管理者登入",
        "operator.login" => "經辦人登入",
        "operator.add" => "新增授權經辦人",
        "operator.modify" => "修改授權經辦人",
        "operator.delete" => "刪除授權經辦人",
        "registration.first_registration" => "首次註冊",
        "registration.replace_org" => "更換機關憑證",
        "registration.replace_admin" => "更換授權管理者自然人憑證",
        "registration.replace_both" => "更換機關憑證和更換授權管理者自然人憑證",
        _ => "其他",
    }
}

/// GET /admin/activity: 登入與異動紀錄 of the agency, by date and person (national IDs masked).
async fn activity(
    State(state): State<AppState>,
    session: SessionHandle,
    axum::extract::Query(q): axum::extract::Query<ActivityQuery>,
) -> Response {
    let (s, g) = match grant(&state, &session) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let operators = match state.svc().operators(&g).await {
        Ok(o) => o,
        Err(e) => return refused(&state, &session, &e),
    };
    let admin_actor = format!("admin:{}", g.code);
    let mut people = vec![(admin_actor.clone(), "授權管理者".to_string())];
    people.extend(operators.iter().map(|o| {
        (
            format!("operator:{}", o.serial),
            format!("經辦人 {}（{}）", o.name.as_str(), o.national_id.masked()),
        )
    }));
    let mut from_error = None;
    let mut to_error = None;
    let day = |v: &str, slot: &mut Option<String>| {
        if v.trim().is_empty() {
            return None;
        }
        let d = super::parse_day(v);
        if d.is_none() {
            *slot = Some("日期格式錯誤，請輸入 YYYY-MM-DD".into());
        }
        d
    };
    let from = day(&q.from, &mut from_error).map(super::start_of);
    let to = day(&q.to, &mut to_error)
        .and_then(|d| d.next_day())
        .map(super::start_of);
    let actor = people
        .iter()
        .find(|(a, _)| *a == q.who)
        .map(|(a, _)| a.clone());
    let events = if from_error.is_some() || to_error.is_some() {
        Vec::new()
    } else {
        let filter = domain::service::ActivityFilter { from, to, actor };
        match state.svc().agency_activity(&g, &filter).await {
            Ok(e) => e,
            Err(e) => return refused(&state, &session, &e),
        }
    };
    let who = |actor: &str| {
        people
            .iter()
            .find(|(a, _)| a == actor)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| match actor.strip_prefix("operator:") {
                Some(serial) => format!("經辦人（憑證序號 {serial}）"),
                None => "本機關".to_string(),
            })
    };
    let rows = events
        .iter()
        .map(|e| ActivityRow {
            at: taipei_time(e.at),
            who: who(&e.actor),
            action: action_zh(&e.action),
            serial: e
                .cert
                .as_deref()
                .and_then(|c| c.rsplit_once('|'))
                .map(|(_, serial)| serial.to_string())
                .or_else(|| e.detail["serial"].as_str().map(str::to_string))
                .unwrap_or_default(),
        })
        .collect();
    let invalid = from_error.is_some() || to_error.is_some();
    let page = ActivityPage {
        layout: state.layout_for(&s),
        code: g.code.as_str().to_string(),
        from_value: q.from.clone(),
        to_value: q.to.clone(),
        from_error,
        to_error,
        people: people
            .into_iter()
            .map(|(a, l)| {
                let selected = a == q.who;
                (a, l, selected)
            })
            .collect(),
        rows,
    };
    if invalid {
        return (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response();
    }
    render(&page)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/activity", get(activity))
        .route(LIST, get(list).post(create))
        .route("/admin/operators/new", get(new_form))
        .route("/admin/operators/{id}", post(modify))
        .route("/admin/operators/{id}/edit", get(edit_form))
        .route(
            "/admin/operators/{id}/delete",
            get(delete_confirm).post(delete),
        )
        .route("/admin/logout", post(super::logout))
}
