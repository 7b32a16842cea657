//! The records certreg keeps: agencies (master data), registrations with their certificates and
//! administrator, operators and their grants, review applications, receipts, audit events,
//! reviewers, and the configured function catalogue and contact directory.

use crate::types::*;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

/// An insured agency as the insurer's master data has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agency {
    pub code: InstitutionCode,
    pub name: String,
    /// 縣市, which decides the section in charge (承保第一科 / 承保第二科).
    pub county: String,
    /// The organization identifier on file (機關憑證 OID or 統一編號), if any.
    pub org_identifier: Option<OrgIdentifier>,
}

/// A certificate as certreg records it: identity is issuer + serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRef {
    pub issuer: String,
    pub serial: CertSerial,
    pub subject: String,
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

impl CertRef {
    pub fn from_facts(f: &pki::facts::CertFacts) -> Self {
        Self {
            issuer: f.issuer.clone(),
            serial: f.serial.clone(),
            subject: f.subject.clone(),
            sha256: f.sha256.clone(),
            not_before: f.not_before,
            not_after: f.not_after,
        }
    }

    /// Same certificate (issuer + serial).
    pub fn same_as(&self, other: &CertRef) -> bool {
        self.issuer == other.issuer && self.serial == other.serial
    }
}

/// An organization card that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgCard {
    pub cert: CertRef,
    pub org_identifier: OrgIdentifier,
    /// 機關名稱 as the certificate names it.
    pub org_name: String,
}

/// A citizen card that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitizenCard {
    pub cert: CertRef,
    /// 姓名 (subject CN).
    pub holder_name: String,
    pub id_last4: String,
}

/// The administrator's contact data (圖3-9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminContact {
    pub name: PersonName,
    pub email: Email,
    pub phone: Phone,
    pub phone_ext: Option<String>,
    pub mobile: Option<Phone>,
    pub unit: Option<String>,
    pub title: Option<String>,
}

/// A registered agency: its organization certificate and its one administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub code: InstitutionCode,
    pub org: OrgCard,
    pub admin_card: CitizenCard,
    pub admin_id: NationalId,
    pub admin: AdminContact,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Incremented by every replacement.
    pub version: i64,
}

/// Which certificate of a registration a history entry or replacement concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertKind {
    Organization,
    Administrator,
}

/// A certificate that was replaced, kept in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedCert {
    pub code: InstitutionCode,
    pub kind: CertKind,
    pub cert: CertRef,
    #[serde(with = "time::serde::rfc3339")]
    pub replaced_at: OffsetDateTime,
}

/// A function an operator may be granted (功能選單).
pub type FunctionId = String;

/// An operator (經辦人) of an agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub id: i64,
    pub code: InstitutionCode,
    pub serial: CertSerial,
    pub name: PersonName,
    pub national_id: NationalId,
    pub functions: Vec<FunctionId>,
    /// The certificate's issuer and notAfter, known only when it was read from the card (not
    /// when its serial was typed).
    pub cert: Option<OperatorCert>,
    /// The grant's validity period, if the administrator set one.
    #[serde(default)]
    pub validity: Validity,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Optimistic concurrency: an update names the version it read.
    pub version: i64,
}

/// What certreg knows of an operator's certificate beyond its serial, when it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCert {
    pub issuer: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// What an administrator submits to add or modify an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorInput {
    pub serial: CertSerial,
    pub name: PersonName,
    pub national_id: NationalId,
    pub functions: Vec<FunctionId>,
    /// Set when the certificate was read; `None` for a typed serial (an update with the same
    /// serial then keeps what is on file).
    pub cert: Option<OperatorCert>,
    pub validity: Validity,
}

/// A grant's validity period (從/至): Taipei calendar dates, both inclusive; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    pub from: Option<time::Date>,
    pub until: Option<time::Date>,
}

impl Validity {
    /// Whether the grant holds on `today` (Taipei): `Ok`, or the refusal that says why not.
    pub fn check(&self, today: time::Date) -> crate::error::Result<()> {
        if let Some(from) = self.from.filter(|f| today < *f) {
            return Err(crate::error::DomainError::GrantNotYetValid {
                from: from.to_string(),
            });
        }
        if let Some(until) = self.until.filter(|u| today > *u) {
            return Err(crate::error::DomainError::GrantExpired {
                until: until.to_string(),
            });
        }
        Ok(())
    }
}

/// State of a review application (憑證註冊審核申請).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ReviewState {
    Pending,
    Approved {
        #[serde(with = "time::serde::rfc3339")]
        decided_at: OffsetDateTime,
        /// The card's identifier is on file from this business day.
        effective: Date,
        reviewer: String,
        note: String,
    },
    Rejected {
        #[serde(with = "time::serde::rfc3339")]
        decided_at: OffsetDateTime,
        reviewer: String,
        note: String,
    },
}

/// A mismatch review application (R1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewApplication {
    pub id: i64,
    pub code: InstitutionCode,
    pub org: OrgCard,
    /// What was on file when the application was filed.
    pub on_file: Option<OrgIdentifier>,
    pub applicant_name: PersonName,
    pub applicant_phone: Phone,
    #[serde(with = "time::serde::rfc3339")]
    pub filed_at: OffsetDateTime,
    pub state: ReviewState,
}

/// 註冊項目 of a receipt (收件紀錄).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    FirstRegistration,
    ReplaceOrg,
    ReplaceAdmin,
    ReplaceBoth,
    ReviewApplication,
}

impl ReceiptKind {
    pub fn label_zh(self) -> &'static str {
        match self {
            Self::FirstRegistration => "首次註冊",
            Self::ReplaceOrg => "更換機關憑證",
            Self::ReplaceAdmin => "更換授權管理者自然人憑證",
            Self::ReplaceBoth => "更換機關憑證和更換授權管理者自然人憑證",
            Self::ReviewApplication => "憑證註冊審核申請",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstRegistration => "first_registration",
            Self::ReplaceOrg => "replace_org",
            Self::ReplaceAdmin => "replace_admin",
            Self::ReplaceBoth => "replace_both",
            Self::ReviewApplication => "review_application",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::FirstRegistration,
            Self::ReplaceOrg,
            Self::ReplaceAdmin,
            Self::ReplaceBoth,
            Self::ReviewApplication,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A receipt (收件紀錄): shown by R4.1 without any personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub code: InstitutionCode,
    pub kind: ReceiptKind,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub review_id: Option<i64>,
    /// The version of the terms accepted with a registration or a replacement.
    #[serde(default)]
    pub terms_version: Option<String>,
}

/// An audit event (SPEC §4.5). The store chains them by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `agency:<code>`, `admin:<code>`, `operator:<serial>`, `reviewer:<id>`, `system`, `anonymous`.
    pub actor: String,
    pub code: Option<InstitutionCode>,
    /// `issuer|serial` of the certificate concerned.
    pub cert: Option<String>,
    pub client: Option<String>,
    /// What happened: `registration.confirm`, `operator.add`, `proof.verify`, ...
    pub action: String,
    /// `ok` or a stable error code.
    pub outcome: String,
    /// Extra facts, never a full national ID or a PIN.
    pub detail: serde_json::Value,
}

impl AuditEvent {
    pub fn new(at: OffsetDateTime, actor: impl Into<String>, action: &str, outcome: &str) -> Self {
        Self {
            at,
            actor: actor.into(),
            code: None,
            cert: None,
            client: None,
            action: action.into(),
            outcome: outcome.into(),
            detail: serde_json::Value::Null,
        }
    }

    pub fn agency(mut self, code: &InstitutionCode) -> Self {
        self.code = Some(code.clone());
        self
    }

    pub fn cert(mut self, cert: &CertRef) -> Self {
        self.cert = Some(format!("{}|{}", cert.issuer, cert.serial));
        self
    }

    pub fn client(mut self, client: Option<&str>) -> Self {
        self.client = client.map(str::to_string);
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// The back office's two sections; an agency's county decides which one is in charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// 承保第一科
    First,
    /// 承保第二科
    Second,
}

impl Section {
    pub fn label_zh(self) -> &'static str {
        match self {
            Section::First => "承保第一科",
            Section::Second => "承保第二科",
        }
    }
}

/// A back-office reviewer account (made with `certreg staff add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reviewer {
    pub id: i64,
    pub name: String,
    pub section: Section,
    pub cert_serial: CertSerial,
    /// The card's issuer, learnt at the first login of an account created with a serial.
    pub cert_issuer: Option<String>,
    pub active: bool,
}

/// The function catalogue (功能選單): configuration with zh-TW labels (R2.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCatalogue {
    pub items: Vec<(FunctionId, String)>,
}

impl Default for FunctionCatalogue {
    fn default() -> Self {
        let items = [
            ("enroll", "加保作業"),
            ("withdraw", "退保作業"),
            ("change", "異動作業(含保俸調整)"),
            ("parental_leave", "育嬰留職停薪作業"),
            ("cash_benefit", "現金給付請領"),
            ("premium", "保費作業"),
            ("query", "查詢作業"),
        ];
        Self {
            items: items
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

impl FunctionCatalogue {
    pub fn label(&self, id: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v.as_str())
    }

    /// Validates a selection: at least one, all known, no repeats (kept in catalogue order).
    pub fn validate(&self, selected: &[String]) -> crate::error::Result<Vec<FunctionId>> {
        if selected.is_empty() {
            return Err(crate::error::DomainError::invalid(
                "functions",
                "no function selected",
                "請至少勾選一項功能選單",
            ));
        }
        if let Some(unknown) = selected.iter().find(|s| self.label(s).is_none()) {
            return Err(crate::error::DomainError::invalid(
                "functions",
                format!("unknown function {unknown:?}"),
                "功能選單項目不存在",
            ));
        }
        Ok(self
            .items
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| selected.contains(k))
            .collect())
    }
}

/// Who to call (圖3-7): configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDirectory {
    pub switchboard: String,
    pub sections: Vec<SectionContact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionContact {
    pub section: Section,
    pub extension: String,
    /// County name prefixes the section is in charge of (臺北 matches 臺北市).
    pub counties: Vec<String>,
}

impl Default for ContactDirectory {
    fn default() -> Self {
        let first = [
            "宜蘭", "基隆", "臺北", "新北", "桃園", "苗栗", "新竹", "花蓮", "澎湖", "金門", "馬祖",
            "連江",
        ];
        let second = [
            "彰化", "臺中", "南投", "雲林", "嘉義", "臺南", "高雄", "屏東", "臺東",
        ];
        Self {
            switchboard: "(02)27013411".into(),
            sections: vec![
                SectionContact {
                    section: Section::First,
                    extension: "5312".into(),
                    counties: first.iter().map(|s| s.to_string()).collect(),
                },
                SectionContact {
                    section: Section::Second,
                    extension: "5353".into(),
                    counties: second.iter().map(|s| s.to_string()).collect(),
                },
            ],
        }
    }
}

impl ContactDirectory {
    /// The section in charge of a county (縣市 name, e.g. 臺北市, 台中市: 台 and 臺 are the same).
    pub fn section_for(&self, county: &str) -> Option<&SectionContact> {
        let county = county.trim().replace('台', "臺");
        self.sections
            .iter()
            .find(|s| s.counties.iter().any(|c| county.starts_with(c.as_str())))
    }
}

/// Where an organization card stands against the identifier on file for its 機關代號
/// (R1.3, R4.2): what 查詢機關憑證 OID tells, and what a registration with it would meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OidVerdict {
    /// The card's identifier is the one on file.
    OnFile,
    /// It differs, but an approval of a review application for this card is in effect.
    Approved,
    /// It differs, and an application for this card waits for a decision.
    Pending,
    /// It differs; an application was approved and takes effect on this date.
    ApprovedFrom { effective: time::Date },
    /// It differs and no application stands (none filed, or the last was rejected):
    /// registering will ask for one.
    Mismatch,
}

impl OidVerdict {
    /// Whether a registration with the card may go on now.
    pub fn accepted(self) -> bool {
        matches!(self, Self::OnFile | Self::Approved)
    }

    /// The stable code (API).
    pub fn code(self) -> &'static str {
        match self {
            Self::OnFile => "on_file",
            Self::Approved => "approved",
            Self::Pending => "review_pending",
            Self::ApprovedFrom { .. } => "approved_from",
            Self::Mismatch => "mismatch",
        }
    }

    /// What 查詢機關憑證 OID says of it.
    pub fn message_zh(self) -> String {
        match self {
            Self::OnFile => "此機關憑證 OID 與本部資料相符。".into(),
            Self::Approved => {
                "此機關憑證 OID 與本部資料不符，惟審核申請已核准並生效，可辦理註冊。".into()
            }
            Self::Pending => {
                "此機關憑證 OID 與本部資料不符，審核申請審核中；審核通過後，於生效日起可辦理註冊。"
                    .into()
            }
            Self::ApprovedFrom { effective } => format!(
                "此機關憑證 OID 與本部資料不符，審核申請已核准，請於 {:04}/{:02}/{:02} 起辦理註冊。",
                effective.year(),
                u8::from(effective.month()),
                effective.day()
            ),
            Self::Mismatch => "此機關憑證 OID 與本部資料不符，辦理註冊時將需審核。".into(),
        }
    }
}
