//! What the flow pages show: each step's screen as the manual draws it (figures, titles,
//! instructions), the templates, and the result page of each finished flow.

use crate::AppState;
use crate::render::Layout;
use crate::session::FlowResult;
use askama::Template;
use domain::flow::{Flow, FlowKind, Step};

/// What a step's page says, from the manual's figures.
pub(crate) struct StepView {
    pub figure: &'static str,
    pub title: &'static str,
    pub instructions: &'static str,
    pub ask_code: bool,
    pub ask_id: bool,
    /// `organization` or `citizen`: which card to insert.
    pub card: &'static str,
    /// The label of the 機關代號 field (圖3-5 says 公保機關代號).
    pub code_label: &'static str,
    /// The label of the PIN field, as the step's figure writes it.
    pub pin_label: &'static str,
}

pub(crate) fn kind_title(kind: FlowKind) -> &'static str {
    match kind {
        FlowKind::FirstRegistration => "首次註冊",
        FlowKind::AdminLogin => "授權指派",
        FlowKind::ReplaceOrg => "更換機關憑證",
        FlowKind::ReplaceAdmin => "更換授權管理者自然人憑證",
        FlowKind::ReplaceBoth => "更換機關憑證和更換授權管理者自然人憑證",
        FlowKind::QueryOrgOid => "查詢機關憑證 OID",
        FlowKind::QueryCitizenSerial => "查詢自然人憑證序號",
        FlowKind::OperatorLogin => "經辦人登入",
        FlowKind::ReviewerLogin => "本部審核人員登入",
    }
}

pub(super) const ORG_INSTR: &str =
    "請插入機關憑證，並輸入機關代號與機關憑證密碼(PIN 碼)，點選確認按鈕。";
/// 圖3-5 names the code 公保機關代號.
pub(super) const FIRST_ORG_INSTR: &str =
    "請插入機關憑證，並輸入公保機關代號與機關憑證密碼(PIN 碼)，點選確認按鈕。";
pub(super) const NEW_ORG_INSTR: &str =
    "請插入更換後機關憑證，並輸入機關代號與更換後機關憑證密碼(PIN 碼)，點選確認按鈕。";
pub(super) const ADMIN_INSTR: &str = "請插入授權管理者自然人憑證，並輸入授權管理者身分證統一編號與自然人憑證密碼(PIN 碼)，點選確認按鈕。";
pub(super) const NEW_ADMIN_INSTR: &str = "請插入更換後授權管理者自然人憑證，並輸入授權管理者身分證統一編號與自然人憑證密碼(PIN 碼)，點選確認按鈕。";

pub(crate) fn step_view(kind: FlowKind, step: Step) -> StepView {
    use FlowKind as K;
    use Step as S;
    let org = |figure, title, instructions| StepView {
        figure,
        title,
        instructions,
        ask_code: true,
        ask_id: false,
        card: "organization",
        code_label: "機關代號",
        pin_label: if step == S::NewOrgCard {
            "更換後機關憑證密碼(PIN 碼)"
        } else {
            "機關憑證密碼(PIN 碼)"
        },
    };
    let citizen = |figure, title, instructions| StepView {
        figure,
        title,
        instructions,
        ask_code: false,
        ask_id: true,
        card: "citizen",
        code_label: "機關代號",
        pin_label: "自然人憑證密碼(PIN 碼)",
    };
    match (kind, step) {
        (K::FirstRegistration, S::OrgCard) => StepView {
            code_label: "公保機關代號",
            ..org("圖3-5", "首次註冊－機關憑證確認", FIRST_ORG_INSTR)
        },
        (K::FirstRegistration, _) => citizen("圖3-8", "首次註冊－自然人憑證確認", ADMIN_INSTR),
        (K::AdminLogin, S::OrgCard) => org("圖3-12", "授權指派－機關憑證確認", ORG_INSTR),
        (K::AdminLogin, _) => citizen("圖3-13", "授權指派－自然人憑證確認", ADMIN_INSTR),
        (K::ReplaceOrg, S::NewOrgCard) => {
            org("圖3-24", "更換機關憑證－機關憑證確認", NEW_ORG_INSTR)
        }
        (K::ReplaceOrg, _) => citizen("圖3-25", "更換機關憑證－自然人憑證確認", ADMIN_INSTR),
        (K::ReplaceAdmin, S::OrgCard) => org(
            "圖3-29",
            "更換授權管理者自然人憑證－機關憑證確認",
            ORG_INSTR,
        ),
        (K::ReplaceAdmin, _) => citizen(
            "圖3-30",
            "更換授權管理者自然人憑證－自然人憑證確認",
            NEW_ADMIN_INSTR,
        ),
        (K::ReplaceBoth, S::NewOrgCard) => org(
            "圖3-34",
            "更換機關憑證和更換授權管理者自然人憑證－機關憑證確認",
            NEW_ORG_INSTR,
        ),
        (K::ReplaceBoth, _) => citizen(
            "圖3-35",
            "更換機關憑證和更換授權管理者自然人憑證－自然人憑證確認",
            NEW_ADMIN_INSTR,
        ),
        (K::QueryOrgOid, _) => org("圖3-40", "查詢機關憑證 OID－機關憑證確認", ORG_INSTR),
        (K::QueryCitizenSerial, _) => StepView {
            pin_label: "自然人憑證 IC 卡密碼(PIN 碼)",
            ..citizen(
                "圖3-42",
                "查詢自然人憑證序號－自然人憑證確認",
                "請插入自然人憑證，並輸入身分證統一編號與自然人憑證 IC 卡密碼(PIN 碼)，點選確認按鈕。",
            )
        },
        (K::OperatorLogin, _) => StepView {
            figure: "",
            title: "經辦人登入",
            instructions: "請插入經辦人自然人憑證，並輸入機關代號、身分證統一編號與自然人憑證密碼(PIN 碼)，點選確認按鈕。",
            ask_code: true,
            ask_id: true,
            card: "citizen",
            code_label: "機關代號",
            pin_label: "自然人憑證密碼(PIN 碼)",
        },
        (K::ReviewerLogin, _) => StepView {
            figure: "",
            title: "本部審核人員登入",
            instructions: "請插入審核人員自然人憑證，並輸入自然人憑證密碼(PIN 碼)，點選確認按鈕。",
            ask_code: false,
            ask_id: false,
            card: "citizen",
            code_label: "機關代號",
            pin_label: "自然人憑證密碼(PIN 碼)",
        },
    }
}

/// The layout of a flow's page: the reviewer login has the back office's (no agency menu).
pub(super) fn flow_layout(state: &AppState, s: &crate::session::Session, kind: FlowKind) -> Layout {
    let mut layout = state.layout_for(s);
    layout.backoffice |= kind == FlowKind::ReviewerLogin;
    layout
}

pub(super) fn terms_figure(kind: FlowKind) -> &'static str {
    match kind {
        FlowKind::ReplaceOrg => "圖3-23",
        FlowKind::ReplaceAdmin => "圖3-28",
        FlowKind::ReplaceBoth => "圖3-33",
        _ => "圖3-4",
    }
}

pub(super) fn confirm_figure(kind: FlowKind) -> (&'static str, &'static str) {
    match kind {
        FlowKind::ReplaceOrg => ("圖3-26", "更換機關憑證"),
        FlowKind::ReplaceAdmin => ("圖3-31", "更換授權管理者自然人憑證"),
        FlowKind::ReplaceBoth => ("圖3-36", "更換機關憑證和更換授權管理者自然人憑證"),
        _ => ("圖3-9", "首次註冊"),
    }
}

#[derive(Template)]
#[template(path = "terms.html")]
pub(super) struct TermsPage {
    pub(super) layout: Layout,
    pub(super) flow_id: String,
    pub(super) figure: &'static str,
    pub(super) title: String,
    pub(super) terms_version: String,
    pub(super) terms: crate::Terms,
}

#[derive(Template)]
#[template(path = "card_step.html")]
pub(super) struct CardStepPage {
    pub(super) layout: Layout,
    pub(super) flow_id: String,
    pub(super) view: StepView,
    pub(super) error: Option<String>,
    /// The numbers to call, beside a refusal for a review application that waits.
    pub(super) contacts: Option<ContactsView>,
    /// The refusal means the user needs another card: link 憑證申請說明.
    pub(super) another_card: bool,
    pub(super) code_error: Option<String>,
    pub(super) id_error: Option<String>,
    pub(super) code_value: String,
    pub(super) id_value: String,
}

#[derive(Template)]
#[template(path = "review.html")]
pub(super) struct ReviewPage {
    pub(super) layout: Layout,
    pub(super) flow_id: String,
    pub(super) title: String,
    pub(super) org_name: String,
    pub(super) org_identifier: String,
    pub(super) name_error: Option<String>,
    pub(super) phone_error: Option<String>,
    pub(super) name_value: String,
    pub(super) phone_value: String,
}

/// Certificate lines shown on the confirmation page.
pub(super) struct CertLine {
    pub(super) label: &'static str,
    pub(super) value: String,
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub(super) struct ConfirmPage {
    pub(super) layout: Layout,
    pub(super) flow_id: String,
    pub(super) figure: &'static str,
    pub(super) title: &'static str,
    pub(super) org_lines: Vec<CertLine>,
    pub(super) admin_lines: Vec<CertLine>,
    pub(super) values: ContactValues,
    pub(super) errors: ContactErrors,
}

#[derive(Default)]
pub(super) struct ContactValues {
    pub(super) name: String,
    pub(super) email: String,
    pub(super) phone: String,
    pub(super) phone_ext: String,
    pub(super) mobile: String,
    pub(super) unit: String,
    pub(super) title: String,
}

#[derive(Default)]
pub(super) struct ContactErrors {
    pub(super) name: Option<String>,
    pub(super) email: Option<String>,
    pub(super) phone: Option<String>,
    pub(super) phone_ext: Option<String>,
    pub(super) mobile: Option<String>,
    pub(super) unit: Option<String>,
    pub(super) title: Option<String>,
    pub(super) general: Option<String>,
}

#[derive(Template)]
#[template(path = "result.html")]
pub(super) struct ResultPage {
    pub(super) layout: Layout,
    /// The numbers to call about a review application.
    pub(super) contacts: Option<ContactsView>,
    /// The printable receipt of a registration or replacement.
    pub(super) print: Option<String>,
    pub(super) figure: &'static str,
    pub(super) title: String,
    pub(super) ok: bool,
    pub(super) message: String,
    pub(super) lines: Vec<CertLine>,
    pub(super) next: Option<(&'static str, &'static str)>,
}

pub(super) fn fmt_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(domain::clock::TAIPEI);
    format!("{:04}/{:02}/{:02}", t.year(), u8::from(t.month()), t.day())
}

#[derive(Template)]
#[template(path = "flow_start.html")]
pub(super) struct StartPage {
    pub(super) layout: Layout,
    pub(super) kind: &'static str,
    pub(super) title: &'static str,
    /// The function's home page in the manual (圖3-3 首次註冊, 圖3-11 授權指派), if it has one.
    pub(super) figure: &'static str,
    /// What the function does and what to have at hand.
    pub(super) intro: &'static str,
}

/// The function's home page: its figure and what it asks the user to have ready.
pub(super) fn start_intro(kind: FlowKind) -> (&'static str, &'static str) {
    match kind {
        FlowKind::FirstRegistration => (
            "圖3-3",
            "第一次使用本 e 系統之要保機關需先以機關憑證及自然人憑證進行註冊。請備妥機關憑證及授權管理者自然人憑證。",
        ),
        FlowKind::AdminLogin => (
            "圖3-11",
            "請備妥機關憑證及授權管理者自然人憑證。已辦理憑證註冊之要保機關由授權管理者授權經辦人及設定系統權限（授權管理者 1 人，經辦人不限定人數）。",
        ),
        FlowKind::ReplaceOrg | FlowKind::ReplaceBoth => {
            ("", "請備妥更換後機關憑證及授權管理者自然人憑證。")
        }
        FlowKind::ReplaceAdmin => ("", "請備妥機關憑證及更換後授權管理者自然人憑證。"),
        FlowKind::QueryOrgOid => ("", "請備妥機關憑證。"),
        FlowKind::QueryCitizenSerial | FlowKind::OperatorLogin | FlowKind::ReviewerLogin => {
            ("", "請備妥自然人憑證。")
        }
    }
}

pub(super) fn review_page(
    layout: Layout,
    flow: &Flow,
    name_error: Option<String>,
    phone_error: Option<String>,
    name: &str,
    phone: &str,
) -> ReviewPage {
    let org = flow.data.org.as_ref();
    ReviewPage {
        layout,
        flow_id: flow.id.clone(),
        title: format!("{}－機關憑證註冊申請人確認", kind_title(flow.kind)),
        org_name: org.map(|o| o.org_name.clone()).unwrap_or_default(),
        org_identifier: org
            .map(|o| o.org_identifier.as_str().to_string())
            .unwrap_or_default(),
        name_error,
        phone_error,
        name_value: name.to_string(),
        phone_value: phone.to_string(),
    }
}

pub(super) fn confirm_page(
    layout: Layout,
    flow: &Flow,
    values: Option<ContactValues>,
    errors: Option<ContactErrors>,
) -> ConfirmPage {
    let (figure, title) = confirm_figure(flow.kind);
    let mut org_lines = Vec::new();
    let mut admin_lines = Vec::new();
    // Replacements that keep a certificate show the registered one.
    let org = flow.data.org.clone();
    if let Some(o) = &org {
        org_lines = vec![
            CertLine {
                label: "機關名稱",
                value: o.org_name.clone(),
            },
            CertLine {
                label: "機關憑證 OID",
                value: o.org_identifier.as_str().to_string(),
            },
            CertLine {
                label: "憑證序號",
                value: o.cert.serial.as_str().to_string(),
            },
            CertLine {
                label: "有效期限",
                value: format!(
                    "{} ～ {}",
                    fmt_date(o.cert.not_before),
                    fmt_date(o.cert.not_after)
                ),
            },
            CertLine {
                label: "簽發單位",
                value: o.cert.issuer.clone(),
            },
        ];
    }
    if let Some(a) = &flow.data.admin_card {
        admin_lines = vec![
            CertLine {
                label: "姓名",
                value: a.holder_name.clone(),
            },
            CertLine {
                label: "憑證序號",
                value: a.cert.serial.as_str().to_string(),
            },
            CertLine {
                label: "有效期限",
                value: format!(
                    "{} ～ {}",
                    fmt_date(a.cert.not_before),
                    fmt_date(a.cert.not_after)
                ),
            },
        ];
    }
    // 更換機關憑證 keeps the administrator: the data on file is offered for editing. The other
    // replacements ask for it anew (R3.2, R3.3).
    let values = values.unwrap_or_else(|| match (&flow.data.admin_contact, flow.kind) {
        (Some(c), FlowKind::ReplaceOrg) => ContactValues {
            name: c.name.as_str().to_string(),
            email: c.email.as_str().to_string(),
            phone: c.phone.as_str().to_string(),
            phone_ext: c.phone_ext.clone().unwrap_or_default(),
            mobile: c
                .mobile
                .as_ref()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
            unit: c.unit.clone().unwrap_or_default(),
            title: c.title.clone().unwrap_or_default(),
        },
        _ => ContactValues::default(),
    });
    ConfirmPage {
        layout,
        flow_id: flow.id.clone(),
        figure,
        title,
        org_lines,
        admin_lines,
        values,
        errors: errors.unwrap_or_default(),
    }
}

/// One section's line of the numbers to call (圖3-7).
pub(super) struct SectionLine {
    pub(super) label: &'static str,
    pub(super) extension: String,
    /// 「宜蘭、基隆、…等地要保機關」.
    pub(super) counties: String,
}

/// Who to call about a review application (圖3-7): the switchboard and the section in charge
/// of the agency's county, or every section with its counties when the county is unknown.
pub(super) struct ContactsView {
    pub(super) switchboard: String,
    pub(super) sections: Vec<SectionLine>,
}

pub(super) fn contacts_view(
    directory: &domain::model::ContactDirectory,
    in_charge: Option<domain::model::Section>,
) -> ContactsView {
    let sections = directory
        .sections
        .iter()
        .filter(|s| in_charge.is_none_or(|c| c == s.section))
        .map(|s| SectionLine {
            label: s.section.label_zh(),
            extension: s.extension.clone(),
            counties: format!("{}等地要保機關", s.counties.join("、")),
        })
        .collect();
    ContactsView {
        switchboard: directory.switchboard.clone(),
        sections,
    }
}

#[derive(Template)]
#[template(path = "print_receipt.html")]
pub(super) struct PrintReceipt {
    pub(super) layout: Layout,
    pub(super) flow_id: String,
    pub(super) title: &'static str,
    pub(super) at: String,
    pub(super) code: String,
    pub(super) org_name: String,
    pub(super) org_serial: String,
    pub(super) admin_serial: String,
    pub(super) terms_version: Option<String>,
}

/// The result page of a finished flow of `kind`.
pub(super) fn result_page(
    layout: Layout,
    kind: FlowKind,
    r: &FlowResult,
    directory: &domain::model::ContactDirectory,
) -> ResultPage {
    let line = |label: &'static str, value: &str| CertLine {
        label,
        value: value.to_string(),
    };
    // A query made while the agency's administrator is signed in (圖3-15 ※ sends them to look
    // up a serial) leads back to the list.
    let back_to_list = layout
        .admin_code
        .as_ref()
        .map(|_| ("/admin/operators", "回授權經辦人清單"));
    match r {
        FlowResult::Registration {
            flow_id,
            code,
            org_name,
            admin_name,
            terms_version,
            ..
        } => {
            let print = Some(format!("/flows/{flow_id}/receipt"));
            let mut lines = vec![
                line("機關代號", code),
                line("機關名稱", org_name),
                line("授權管理者", admin_name),
            ];
            if let Some(v) = terms_version {
                lines.push(line("同意之用戶約定條款版本", v));
            }
            let next = Some(("/flows/new/admin_login", "授權指派"));
            if kind == FlowKind::FirstRegistration {
                ResultPage {
                    layout,
                    contacts: None,
                    print: print.clone(),
                    figure: "圖3-10",
                    title: "首次註冊".into(),
                    ok: true,
                    message: "首次註冊成功。請點選左方功能列【授權指派】，設定經辦人及其系統權限。"
                        .into(),
                    lines,
                    next,
                }
            } else {
                ResultPage {
                    layout,
                    contacts: None,
                    print: print.clone(),
                    figure: match kind {
                        FlowKind::ReplaceOrg => "圖3-27",
                        FlowKind::ReplaceAdmin => "圖3-32",
                        _ => "圖3-37",
                    },
                    title: kind_title(kind).into(),
                    ok: true,
                    message: format!("{}成功。", kind_title(kind)),
                    lines,
                    next,
                }
            }
        }
        FlowResult::Review { in_charge, .. } => {
            let msg = "已送出憑證註冊審核申請。送出申請後請於次一營業日再重新註冊，如審核不通過，本部會主動聯絡申請人。".to_string();
            ResultPage {
                contacts: Some(contacts_view(directory, *in_charge)),
                print: None,
                layout,
                figure: "圖3-7",
                title: format!("{}－機關憑證比對不符", kind_title(kind)),
                ok: true,
                message: msg,
                lines: vec![],
                next: None,
            }
        }
        // 圖3-41: the card's 機關名稱 and 機關憑證 OID, then where it stands.
        FlowResult::OrgOid {
            org_name,
            org_identifier,
            verdict,
            ..
        } => ResultPage {
            layout,
            contacts: None,
            print: None,
            figure: "圖3-41",
            title: "查詢機關憑證 OID－查詢結果".into(),
            ok: true,
            message: verdict.message_zh(),
            lines: vec![
                line("機關名稱", org_name),
                line("機關憑證 OID", org_identifier),
            ],
            next: back_to_list,
        },
        FlowResult::CitizenSerial { name, serial, .. } => ResultPage {
            layout,
            contacts: None,
            print: None,
            figure: "圖3-43",
            title: "查詢自然人憑證序號－查詢結果".into(),
            ok: true,
            message: "請複製下列憑證序號，提供授權管理者設定經辦人使用。".into(),
            lines: vec![line("姓名", name), line("自然人憑證序號", serial)],
            next: back_to_list,
        },
    }
}
