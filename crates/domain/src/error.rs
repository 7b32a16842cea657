//! The domain's failures: each has a stable code (for the API) and a zh-TW message (for pages).

use pki::PkiError;

/// Which input field a validation error belongs to, so pages can show the message beside it.
pub type Field = &'static str;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Bad input in a field (`field` names it); `message_zh` is shown beside the field.
    #[error("invalid {field}: {detail}")]
    Invalid {
        field: Field,
        detail: String,
        message_zh: String,
    },
    /// A certificate or proof was refused by the pki checks.
    #[error("{0}")]
    Pki(PkiError),
    #[error("institution code is not on file")]
    UnknownAgency,
    #[error("the agency is already registered")]
    AlreadyRegistered,
    #[error("the agency is not registered")]
    NotRegistered,
    /// The card's organization identifier differs from the one on file: a review is needed.
    #[error("organization identifier does not match the one on file")]
    OrgIdMismatch,
    /// A review application for this card is pending (圖3-7 message again).
    #[error("a review application for this card is pending")]
    ReviewPending,
    /// An approved review takes effect on the next business day.
    #[error("the review was approved; it takes effect on {effective}")]
    ReviewNotYetEffective { effective: String },
    /// A valid card of the agency, but not the registered one.
    #[error("the organization certificate is not the registered one (renewed or replaced)")]
    OrgCardChanged,
    /// A valid citizen card of the administrator, but not the registered one.
    #[error("the administrator certificate is not the registered one (renewed or replaced)")]
    AdminCardChanged,
    /// The citizen card is not the registered administrator's.
    #[error("the card is not the registered administrator's")]
    NotAdministrator,
    /// The ID's last four characters differ from the certificate's.
    #[error("national ID does not match the certificate")]
    IdMismatch,
    /// A replacement presented the certificate already registered.
    #[error("this certificate is already the registered one")]
    SameCertificate,
    #[error("an operator with this certificate serial is already granted in this agency")]
    DuplicateOperator,
    #[error("operator not found")]
    OperatorNotFound,
    /// Someone else changed the record since it was read.
    #[error("the record was changed by someone else")]
    Conflict,
    /// The operator's serial is not granted (or the ID differs).
    #[error("not an operator of this agency")]
    NotOperator,
    /// The operator's card was renewed: the administrator must update the serial.
    #[error("operator certificate serial changed")]
    OperatorSerialChanged,
    /// No such review application, or one of another section's agencies: the back office
    /// answers both alike.
    #[error("review application not found")]
    ReviewNotFound,
    /// The operator's grant ended on its validity period's last day.
    #[error("the operator's grant ended on {until}")]
    GrantExpired { until: String },
    /// The operator's grant starts on a later day.
    #[error("the operator's grant starts on {from}")]
    GrantNotYetValid { from: String },
    /// The citizen card is not an active back-office reviewer's (R6.1).
    #[error("not a back-office reviewer")]
    NotReviewer,
    #[error("the flow has expired")]
    FlowExpired,
    #[error("the flow does not exist")]
    FlowNotFound,
    /// A step was skipped, repeated, or does not belong to this flow.
    #[error("this step is not the flow's next step")]
    WrongStep,
    #[error("the flow was already confirmed")]
    AlreadyConfirmed,
    /// The registration changed (a replacement) after the flow's card steps or the
    /// administrator's login checked it: the change was not applied.
    #[error("the registration changed since it was checked")]
    RegistrationChanged,
    /// The challenge was already used, or never issued for this session/flow/step.
    #[error("the challenge was already used or is unknown")]
    ChallengeUsed,
    /// The session may not act for this agency (or is not an administrator session).
    #[error("not allowed")]
    Forbidden,
    /// The session holds as many flows as it may.
    #[error("too many flows in this session")]
    TooManyFlows,
    /// The database could not take the write now (a deadlock, a lock held past the lock
    /// timeout, a serialization failure) and retrying did not help: nothing was written.
    #[error("the database is busy; nothing was written")]
    Busy,
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<PkiError> for DomainError {
    fn from(e: PkiError) -> Self {
        DomainError::Pki(e)
    }
}

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

impl DomainError {
    pub fn invalid(field: Field, detail: impl Into<String>, message_zh: impl Into<String>) -> Self {
        DomainError::Invalid {
            field,
            detail: detail.into(),
            message_zh: message_zh.into(),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_input",
            Self::Pki(e) => e.code.as_str(),
            Self::UnknownAgency => "unknown_agency",
            Self::AlreadyRegistered => "already_registered",
            Self::NotRegistered => "not_registered",
            Self::OrgIdMismatch => "oid_mismatch",
            Self::ReviewPending => "review_pending",
            Self::ReviewNotYetEffective { .. } => "review_not_yet_effective",
            Self::OrgCardChanged => "org_card_changed",
            Self::AdminCardChanged => "admin_card_changed",
            Self::NotAdministrator => "not_administrator",
            Self::IdMismatch => "id_mismatch",
            Self::SameCertificate => "same_certificate",
            Self::DuplicateOperator => "duplicate_operator",
            Self::OperatorNotFound => "operator_not_found",
            Self::Conflict => "conflict",
            Self::NotOperator => "not_operator",
            Self::OperatorSerialChanged => "operator_serial_changed",
            Self::ReviewNotFound => "review_not_found",
            Self::GrantExpired { .. } => "grant_expired",
            Self::GrantNotYetValid { .. } => "grant_not_yet_valid",
            Self::NotReviewer => "not_reviewer",
            Self::FlowExpired => "flow_expired",
            Self::FlowNotFound => "flow_not_found",
            Self::WrongStep => "wrong_step",
            Self::AlreadyConfirmed => "already_confirmed",
            Self::RegistrationChanged => "registration_changed",
            Self::ChallengeUsed => "challenge_used",
            Self::Forbidden => "forbidden",
            Self::TooManyFlows => "too_many_flows",
            Self::Busy => "busy",
            Self::Storage(_) => "internal",
        }
    }

    /// What the zh-TW pages show (the manual's wording where it has one).
    pub fn message_zh(&self) -> String {
        match self {
            Self::Invalid { message_zh, .. } => message_zh.clone(),
            Self::Pki(e) => e.code.message_zh().to_string(),
            Self::UnknownAgency => "查無此機關代號，請確認後重新輸入".into(),
            Self::AlreadyRegistered => {
                "貴機關已完成憑證註冊，如需更換憑證請使用「更換憑證」，如需設定經辦人請使用「授權指派」".into()
            }
            Self::NotRegistered => "貴機關尚未辦理憑證註冊，請先辦理「首次註冊」".into(),
            Self::OrgIdMismatch => {
                "貴機關申請憑證註冊，因申請資料比對不符，需進行審核，請填聯絡資料".into()
            }
            Self::ReviewPending => {
                "送出申請後請於次一營業日再重新註冊，如審核不通過，本部會主動聯絡申請人".into()
            }
            Self::ReviewNotYetEffective { effective } => format!(
                "貴機關之憑證註冊審核申請已通過，請於 {} 起重新辦理註冊",
                effective.replace('-', "/")
            ),
            Self::OrgCardChanged => "機關憑證已更換或展期，請先辦理更換機關憑證".into(),
            Self::AdminCardChanged => {
                "授權管理者自然人憑證已更換或展期，請先辦理更換授權管理者自然人憑證".into()
            }
            Self::NotAdministrator => "此自然人憑證非本機關之授權管理者".into(),
            Self::IdMismatch => "身分證統一編號與自然人憑證不符".into(),
            Self::SameCertificate => "此憑證即為目前註冊之憑證，無須更換".into(),
            Self::DuplicateOperator => "此憑證序號已授權於本機關，請勿重複新增".into(),
            Self::OperatorNotFound => "查無此經辦人資料".into(),
            Self::Conflict => "資料已被其他使用者修改，請重新讀取後再操作".into(),
            Self::NotOperator => "您未被授權為本機關之經辦人；如您的自然人憑證已更換或展期，請洽授權管理者修改憑證序號".into(),
            Self::OperatorSerialChanged => "憑證序號已變更，請洽授權管理者修改".into(),
            Self::ReviewNotFound => "查無此申請案件".into(),
            Self::GrantExpired { until } => format!(
                "您的經辦人授權期間已於 {} 屆滿，請洽授權管理者",
                until.replace('-', "/")
            ),
            Self::GrantNotYetValid { from } => format!(
                "您的經辦人授權自 {} 起生效，請於生效日後再登入",
                from.replace('-', "/")
            ),
            Self::NotReviewer => "此自然人憑證未建立本部審核人員帳號".into(),
            Self::FlowExpired => "作業已逾時（閒置超過 15 分鐘），請重新操作".into(),
            Self::FlowNotFound | Self::WrongStep => "作業步驟錯誤，請由首頁重新操作".into(),
            Self::AlreadyConfirmed => "此作業已完成，請勿重複送出".into(),
            Self::RegistrationChanged => {
                "貴機關的註冊資料已於作業期間變更（例如已完成更換憑證），本次作業未生效，請重新辦理".into()
            }
            Self::ChallengeUsed => "此簽章已使用過，請重新操作".into(),
            Self::Forbidden => "您沒有執行此功能的權限".into(),
            Self::TooManyFlows => {
                "同時進行中的作業過多，請先完成已開始的作業，或等候 15 分鐘後再試".into()
            }
            Self::Busy => "系統忙碌中，本次作業未生效，請稍後再試".into(),
            Self::Storage(_) => "系統忙碌中，請稍後再試".into(),
        }
    }
}
