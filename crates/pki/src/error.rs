//! Stable failure codes of every certificate, revocation and proof check, and the error type.

use std::fmt;

/// A stable, machine-readable reason for refusing a certificate or a proof.
///
/// The string forms (`as_str`) are part of certreg's public API: pages, the JSON API and the CLI
/// print them, and they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a certificate, or one that does not decode (truncated, trailing bytes, bad encoding).
    CertMalformed,
    /// Input larger than certreg accepts.
    InputTooLarge,
    /// No path to a trust anchor.
    CertUntrusted,
    /// The certificate (or one in its path) has expired.
    CertExpired,
    /// The certificate (or one in its path) is not valid yet.
    CertNotYetValid,
    /// Listed on a CRL or reported revoked by OCSP (OCSP "unknown" counts as revoked).
    CertRevoked,
    /// The revocation data is past its `nextUpdate` (or the OCSP answer outside its window).
    RevocationStale,
    /// No revocation data covers the certificate.
    RevocationUnknown,
    /// The revocation data itself is bad: CRL or OCSP signature, responder, nonce, CertID.
    RevocationInvalid,
    /// The OCSP responder could not be reached in time or answered with an error.
    OcspUnavailable,
    /// A citizen card where an organization card is expected, or the reverse.
    WrongRole,
    /// keyUsage allows neither digitalSignature nor nonRepudiation.
    KeyUsage,
    /// A required attribute (subject type, organization identifier, ID last four, ...) is absent.
    MissingAttribute,
    /// A certificate or signature uses an algorithm certreg does not accept (SHA-1, small RSA ...).
    UnsupportedAlgorithm,
    /// SHA-1 signatures, as older card components make them: refused by default.
    Sha1Refused,
    /// A signature does not verify.
    SignatureInvalid,
    /// The proof does not decode or lacks a required part (signed attributes, certificate ...).
    ProofMalformed,
    /// A CMS proof whose signature covers its own signer identifier (the key identifier wrapped
    /// as a SET) instead of its signed attributes: the shape of a forgery made from one card
    /// signature over those 22 bytes, which a reader taking the first `[0]` of the SignerInfo
    /// as the signed attributes would accept for any content.
    SignatureOverSignerId,
    /// The signed content is not the challenge that was issued (other nonce, step, flow, origin).
    ChallengeMismatch,
    /// The challenge is past its lifetime.
    ChallengeExpired,
    /// A trust anchor directory or manifest is wrong.
    AnchorConfig,
    /// An identity number (national ID, resident number, 統一編號) is not valid.
    InvalidIdentifier,
    /// A password (PKCS#12 soft card PIN) does not open the file: its MAC does not verify.
    WrongPassword,
    /// A PKCS#12 file that does not decode or lacks its key or certificate.
    Pkcs12Malformed,
}

impl ErrorCode {
    /// The stable code string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CertMalformed => "cert_malformed",
            Self::InputTooLarge => "input_too_large",
            Self::CertUntrusted => "cert_untrusted",
            Self::CertExpired => "cert_expired",
            Self::CertNotYetValid => "cert_not_yet_valid",
            Self::CertRevoked => "cert_revoked",
            Self::RevocationStale => "revocation_stale",
            Self::RevocationUnknown => "revocation_unknown",
            Self::RevocationInvalid => "revocation_invalid",
            Self::OcspUnavailable => "ocsp_unavailable",
            Self::WrongRole => "wrong_role",
            Self::KeyUsage => "key_usage",
            Self::MissingAttribute => "missing_attribute",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::Sha1Refused => "sha1_refused",
            Self::SignatureInvalid => "signature_invalid",
            Self::ProofMalformed => "proof_malformed",
            Self::SignatureOverSignerId => "signature_over_signer_id",
            Self::ChallengeMismatch => "challenge_mismatch",
            Self::ChallengeExpired => "challenge_expired",
            Self::AnchorConfig => "anchor_config",
            Self::InvalidIdentifier => "invalid_identifier",
            Self::WrongPassword => "wrong_password",
            Self::Pkcs12Malformed => "pkcs12_malformed",
        }
    }

    /// The message a user of the zh-TW pages sees for this code.
    pub fn message_zh(self) -> &'static str {
        match self {
            Self::CertMalformed => "憑證格式錯誤，無法讀取",
            Self::InputTooLarge => "資料過大，無法處理",
            Self::CertUntrusted => "憑證非由受信任的憑證管理中心簽發",
            Self::CertExpired => "憑證已逾有效期限",
            Self::CertNotYetValid => "憑證尚未生效",
            Self::CertRevoked => "憑證已被廢止",
            Self::RevocationStale => "憑證廢止清冊已逾更新期限，暫時無法確認憑證狀態",
            Self::RevocationUnknown => "無法確認憑證是否已被廢止",
            Self::RevocationInvalid => "憑證狀態資料無效",
            Self::OcspUnavailable => "憑證狀態查詢服務暫時無法使用，請稍後再試",
            Self::WrongRole => "憑證種類不符（機關憑證與自然人憑證不可互用）",
            Self::KeyUsage => "憑證用途不符，無法用於簽章",
            Self::MissingAttribute => "憑證缺少必要的資料欄位",
            Self::UnsupportedAlgorithm => "不支援的簽章演算法",
            Self::Sha1Refused => "簽章使用已淘汰的 SHA-1 演算法，請更新憑證元件",
            Self::SignatureInvalid => "簽章驗證失敗",
            Self::ProofMalformed => "簽章資料格式錯誤",
            Self::SignatureOverSignerId => "簽章資料遭偽造（簽章未涵蓋簽署屬性），已拒絕",
            Self::ChallengeMismatch => "簽章內容與本次作業不符",
            Self::ChallengeExpired => "作業已逾時，請重新操作",
            Self::AnchorConfig => "信任憑證設定錯誤",
            Self::InvalidIdentifier => "證號格式或檢查碼錯誤",
            Self::WrongPassword => "密碼錯誤",
            Self::Pkcs12Malformed => "憑證檔案格式錯誤，無法讀取",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused certificate or proof: a stable code and a precise English detail for logs and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct PkiError {
    pub code: ErrorCode,
    pub detail: String,
}

impl PkiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;
