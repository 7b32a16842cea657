//! Domain records to column values and back, the same for both backends: times as unix
//! seconds, dates as `YYYY-MM-DD`, enums as their stable names, national IDs and flow data
//! encrypted.

use crate::secrets::Secrets;
use domain::flow::{Flow, FlowData, FlowKind, Step};
use domain::model::*;
use domain::types::*;
use domain::{DomainError, Result};
use time::{Date, OffsetDateTime};

// Associated data for each encrypted column, so a ciphertext only decrypts where it was written.
pub(crate) const ENC_ADMIN_ID: &str = "registrations.admin_id";
pub(crate) const ENC_OPERATOR_ID: &str = "operators.national_id";
pub(crate) const ENC_FLOW_DATA: &str = "flows.data";
pub(crate) const ENC_SESSION_DATA: &str = "sessions.data";

/// Stored data that no longer parses: a storage failure, never a user error.
pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> DomainError {
    DomainError::Storage(format!("stored {what} is unreadable: {e}"))
}

/// Times are kept to the second: sub-second precision means nothing to any rule here.
pub(crate) fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub(crate) fn from_ts(secs: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| corrupt("time", e))
}

const DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day]");

pub(crate) fn date_text(d: Date) -> String {
    d.format(DATE_FORMAT).unwrap_or_default()
}

pub(crate) fn parse_date(s: &str) -> Result<Date> {
    Date::parse(s, DATE_FORMAT).map_err(|e| corrupt("date", e))
}

pub(crate) fn encrypt(s: &Secrets, purpose: &str, plain: &[u8]) -> Result<String> {
    s.encrypt(purpose, plain).map_err(DomainError::from)
}

/// The associated data of a value: its column (`purpose`) and its row, so a ciphertext moved
/// to another column or another row (another agency's administrator, another operator) does
/// not decrypt there.
pub(crate) fn row_aad(purpose: &str, row: &str) -> String {
    format!("{purpose}|{row}")
}

/// The row an operator's national ID is bound to: its agency and its card serial, unique
/// together (the id is assigned only by the insert).
pub(crate) fn operator_aad(code: &str, serial: &str) -> String {
    row_aad(ENC_OPERATOR_ID, &format!("{code}|{serial}"))
}

pub(crate) fn decrypt_id(s: &Secrets, purpose: &str, stored: &str) -> Result<NationalId> {
    let plain = s.decrypt(purpose, stored).map_err(DomainError::from)?;
    let text = String::from_utf8(plain).map_err(|e| corrupt(purpose, e))?;
    NationalId::parse(&text).map_err(|e| corrupt(purpose, e))
}

pub(crate) fn code(s: String) -> Result<InstitutionCode> {
    InstitutionCode::parse(&s).map_err(|e| corrupt("institution code", e))
}

pub(crate) fn serial(s: String) -> Result<CertSerial> {
    CertSerial::parse(&s).map_err(|e| corrupt("certificate serial", e))
}

pub(crate) fn org_identifier(s: String) -> Result<OrgIdentifier> {
    OrgIdentifier::parse(&s).map_err(|e| corrupt("organization identifier", e))
}

pub(crate) fn person_name(s: String) -> Result<PersonName> {
    PersonName::parse("name", &s).map_err(|e| corrupt("name", e))
}

pub(crate) fn phone(s: String) -> Result<Phone> {
    Phone::parse("phone", "電話", &s).map_err(|e| corrupt("phone", e))
}

pub(crate) fn email(s: String) -> Result<Email> {
    Email::parse(&s).map_err(|e| corrupt("email", e))
}

pub(crate) fn section_str(s: Section) -> &'static str {
    match s {
        Section::First => "first",
        Section::Second => "second",
    }
}

pub(crate) fn section(s: &str) -> Result<Section> {
    match s {
        "first" => Ok(Section::First),
        "second" => Ok(Section::Second),
        other => Err(corrupt("section", other)),
    }
}

pub(crate) fn cert_kind_str(k: CertKind) -> &'static str {
    match k {
        CertKind::Organization => "organization",
        CertKind::Administrator => "administrator",
    }
}

pub(crate) fn cert_kind(s: &str) -> Result<CertKind> {
    match s {
        "organization" => Ok(CertKind::Organization),
        "administrator" => Ok(CertKind::Administrator),
        other => Err(corrupt("certificate kind", other)),
    }
}

pub(crate) fn flow_kind(s: &str) -> Result<FlowKind> {
    FlowKind::parse(s).ok_or_else(|| corrupt("flow kind", s))
}

pub(crate) fn step(s: &str) -> Result<Step> {
    Step::parse(s).ok_or_else(|| corrupt("step", s))
}

pub(crate) fn receipt_kind(s: &str) -> Result<ReceiptKind> {
    ReceiptKind::parse(s).ok_or_else(|| corrupt("receipt kind", s))
}

pub(crate) fn functions_json(f: &[FunctionId]) -> String {
    serde_json::to_string(f).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn functions(s: &str) -> Result<Vec<FunctionId>> {
    serde_json::from_str(s).map_err(|e| corrupt("functions", e))
}

/// The six columns of a certificate (`<prefix>_issuer`, `_serial`, …).
pub(crate) struct CertCols {
    pub issuer: String,
    pub serial: String,
    pub subject: String,
    pub sha256: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertCols {
    pub fn new(c: &CertRef) -> Self {
        Self {
            issuer: c.issuer.clone(),
            serial: c.serial.as_str().to_string(),
            subject: c.subject.clone(),
            sha256: c.sha256.clone(),
            not_before: ts(c.not_before),
            not_after: ts(c.not_after),
        }
    }
}

/// A registration's columns, in the order of the `$n` placeholders of both its INSERT and its
/// UPDATE.
pub(crate) struct RegistrationRow {
    pub code: String,
    pub org: CertCols,
    pub org_identifier: String,
    pub org_name: String,
    pub admin: CertCols,
    pub admin_holder_name: String,
    pub admin_id_last4: String,
    pub admin_id_enc: String,
    pub admin_id_hash: String,
    pub contact_name: String,
    pub contact_email: String,
    pub contact_phone: String,
    pub contact_phone_ext: Option<String>,
    pub contact_mobile: Option<String>,
    pub contact_unit: Option<String>,
    pub contact_title: Option<String>,
    pub registered_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

impl RegistrationRow {
    pub fn new(r: &Registration, s: &Secrets) -> Result<Self> {
        Ok(Self {
            code: r.code.as_str().to_string(),
            org: CertCols::new(&r.org.cert),
            org_identifier: r.org.org_identifier.as_str().to_string(),
            org_name: r.org.org_name.clone(),
            admin: CertCols::new(&r.admin_card.cert),
            admin_holder_name: r.admin_card.holder_name.clone(),
            admin_id_last4: r.admin_card.id_last4.clone(),
            admin_id_enc: encrypt(
                s,
                &row_aad(ENC_ADMIN_ID, r.code.as_str()),
                r.admin_id.as_str().as_bytes(),
            )?,
            admin_id_hash: s.id_hash(&r.admin_id),
            contact_name: r.admin.name.as_str().to_string(),
            contact_email: r.admin.email.as_str().to_string(),
            contact_phone: r.admin.phone.as_str().to_string(),
            contact_phone_ext: r.admin.phone_ext.clone(),
            contact_mobile: r.admin.mobile.as_ref().map(|p| p.as_str().to_string()),
            contact_unit: r.admin.unit.clone(),
            contact_title: r.admin.title.clone(),
            registered_at: ts(r.registered_at),
            updated_at: ts(r.updated_at),
            version: r.version,
        })
    }
}

/// An operator's columns as written by insert and update.
pub(crate) struct OperatorRow {
    pub code: String,
    pub serial: String,
    pub name: String,
    pub national_id_enc: String,
    pub national_id_hash: String,
    pub functions: String,
    pub updated_at: i64,
    pub cert_issuer: Option<String>,
    pub cert_not_after: Option<i64>,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
}

impl OperatorRow {
    pub fn new(
        code: &InstitutionCode,
        i: &OperatorInput,
        at: OffsetDateTime,
        s: &Secrets,
    ) -> Result<Self> {
        Ok(Self {
            code: code.as_str().to_string(),
            serial: i.serial.as_str().to_string(),
            name: i.name.as_str().to_string(),
            national_id_enc: encrypt(
                s,
                &operator_aad(code.as_str(), i.serial.as_str()),
                i.national_id.as_str().as_bytes(),
            )?,
            national_id_hash: s.id_hash(&i.national_id),
            functions: functions_json(&i.functions),
            updated_at: ts(at),
            cert_issuer: i.cert.as_ref().map(|c| c.issuer.clone()),
            cert_not_after: i.cert.as_ref().map(|c| ts(c.not_after)),
            valid_from: i.validity.from.map(date_text),
            valid_until: i.validity.until.map(date_text),
        })
    }
}

/// A review decision's columns.
pub(crate) struct DecisionCols {
    pub state: &'static str,
    pub decided_at: Option<i64>,
    pub effective: Option<String>,
    pub reviewer: Option<String>,
    pub note: Option<String>,
}

impl DecisionCols {
    pub fn new(s: &ReviewState) -> Self {
        match s {
            ReviewState::Pending => Self {
                state: "pending",
                decided_at: None,
                effective: None,
                reviewer: None,
                note: None,
            },
            ReviewState::Approved {
                decided_at,
                effective,
                reviewer,
                note,
            } => Self {
                state: "approved",
                decided_at: Some(ts(*decided_at)),
                effective: Some(date_text(*effective)),
                reviewer: Some(reviewer.clone()),
                note: Some(note.clone()),
            },
            ReviewState::Rejected {
                decided_at,
                reviewer,
                note,
            } => Self {
                state: "rejected",
                decided_at: Some(ts(*decided_at)),
                effective: None,
                reviewer: Some(reviewer.clone()),
                note: Some(note.clone()),
            },
        }
    }

    pub fn into_state(self) -> Result<ReviewState> {
        let decided = || -> Result<(OffsetDateTime, String, String)> {
            Ok((
                from_ts(
                    self.decided_at
                        .ok_or_else(|| corrupt("review", "no decision time"))?,
                )?,
                self.reviewer.clone().unwrap_or_default(),
                self.note.clone().unwrap_or_default(),
            ))
        };
        match self.state {
            "pending" => Ok(ReviewState::Pending),
            "approved" => {
                let (decided_at, reviewer, note) = decided()?;
                let effective = parse_date(
                    self.effective
                        .as_deref()
                        .ok_or_else(|| corrupt("review", "no effective date"))?,
                )?;
                Ok(ReviewState::Approved {
                    decided_at,
                    effective,
                    reviewer,
                    note,
                })
            }
            _ => {
                let (decided_at, reviewer, note) = decided()?;
                Ok(ReviewState::Rejected {
                    decided_at,
                    reviewer,
                    note,
                })
            }
        }
    }
}

pub(crate) fn review_state_name(s: &str) -> Result<&'static str> {
    match s {
        "pending" => Ok("pending"),
        "approved" => Ok("approved"),
        "rejected" => Ok("rejected"),
        other => Err(corrupt("review state", other)),
    }
}

/// A flow's columns; the collected data is encrypted as a whole, since it may hold an
/// administrator's national ID.
pub(crate) struct FlowRow {
    pub id: String,
    pub kind: &'static str,
    pub session: String,
    pub step: &'static str,
    pub data_enc: String,
    pub created_at: i64,
    pub touched_at: i64,
    pub version: i64,
}

impl FlowRow {
    pub fn new(f: &Flow, s: &Secrets) -> Result<Self> {
        let json = serde_json::to_vec(&f.data).map_err(|e| DomainError::Storage(e.to_string()))?;
        Ok(Self {
            id: f.id.clone(),
            kind: f.kind.as_str(),
            session: f.session.clone(),
            step: f.step.as_str(),
            data_enc: encrypt(s, &row_aad(ENC_FLOW_DATA, &f.id), &json)?,
            created_at: ts(f.created_at),
            touched_at: ts(f.touched_at),
            version: f.version,
        })
    }
}

pub(crate) fn flow_data(s: &Secrets, id: &str, stored: &str) -> Result<FlowData> {
    let plain = s
        .decrypt(&row_aad(ENC_FLOW_DATA, id), stored)
        .map_err(DomainError::from)?;
    serde_json::from_slice(&plain).map_err(|e| corrupt("flow data", e))
}
