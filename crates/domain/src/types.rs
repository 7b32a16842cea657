//! Validated values: once built, they are valid. Built with `parse` at the edge (pages, API, CSV).

use crate::error::{DomainError, Field, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

pub use pki::ids::{NationalId, UniformNumber};
pub use pki::serial::CertSerial;

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

/// 機關代號: the insurer's code for an insured agency (4–12 letters or digits; stored upper case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstitutionCode(String);
string_newtype!(InstitutionCode);

impl InstitutionCode {
    pub const FIELD: Field = "institution_code";

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DomainError::invalid(Self::FIELD, "empty", "請輸入機關代號"));
        }
        if !(4..=12).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(DomainError::invalid(
                Self::FIELD,
                format!("{s:?} is not 4-12 letters or digits"),
                "機關代號格式錯誤（應為 4 至 12 碼英數字）",
            ));
        }
        Ok(Self(s.to_ascii_uppercase()))
    }
}

/// An organization identifier as shown to users (機關憑證 OID): a dotted OID (GCA, XCA, HCA) or
/// an 8-digit 統一編號 (MOEACA).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgIdentifier(String);
string_newtype!(OrgIdentifier);

impl OrgIdentifier {
    pub const FIELD: Field = "org_identifier";

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || {
            DomainError::invalid(
                Self::FIELD,
                format!("{s:?} is neither a dotted OID nor an 8-digit 統一編號"),
                "機關憑證 OID 格式錯誤",
            )
        };
        if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Self(s.to_string()));
        }
        let arcs: Vec<&str> = s.split('.').collect();
        if arcs.len() < 2
            || s.len() > 128
            || arcs
                .iter()
                .any(|a| a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        Ok(Self(s.to_string()))
    }
}

/// 電子信箱.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);
string_newtype!(Email);

impl Email {
    pub const FIELD: Field = "email";

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DomainError::invalid(Self::FIELD, "empty", "請輸入電子信箱"));
        }
        let ok = s.len() <= 254
            && s.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !s.contains(char::is_whitespace)
                    && domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            });
        if !ok {
            return Err(DomainError::invalid(
                Self::FIELD,
                format!("{s:?}"),
                "電子信箱格式錯誤",
            ));
        }
        Ok(Self(s.to_string()))
    }
}

/// A telephone number as people type it: digits with optional `(02)`, `-`, spaces and `#`;
/// 6–20 digits. `field` says which field it came from (連絡電話, 行動電話 …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Phone(String);

impl Phone {
    pub fn parse(field: Field, label_zh: &str, s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DomainError::invalid(
                field,
                "empty",
                format!("請輸入{label_zh}"),
            ));
        }
        let digits = s.bytes().filter(u8::is_ascii_digit).count();
        let ok = s.len() <= 30
            && (6..=20).contains(&digits)
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b"()-+ #".contains(&b));
        if !ok {
            return Err(DomainError::invalid(
                field,
                format!("{s:?} is not a phone number"),
                format!("{label_zh}格式錯誤"),
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's name (姓名): 1–50 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(field: Field, s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DomainError::invalid(field, "empty", "請輸入姓名"));
        }
        if s.chars().count() > 50 || s.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                field,
                "too long or control characters",
                "姓名格式錯誤",
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Optional short free text (服務單位, 職稱, 分機): up to `max` characters, no control characters.
pub fn optional_text(field: Field, label_zh: &str, s: &str, max: usize) -> Result<Option<String>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            format!("longer than {max} characters or control characters"),
            format!("{label_zh}不可超過 {max} 字"),
        ));
    }
    Ok(Some(s.to_string()))
}

/// A national ID or resident number from a form field, with the field's zh-TW message.
pub fn national_id(field: Field, s: &str) -> Result<NationalId> {
    NationalId::parse(s).map_err(|e| DomainError::invalid(field, e.to_string(), e.message_zh()))
}

/// A certificate serial from a form field.
pub fn cert_serial(field: Field, s: &str) -> Result<CertSerial> {
    CertSerial::parse(s).map_err(|e| DomainError::invalid(field, e.to_string(), e.message_zh()))
}

/// A calendar date typed as YYYY-MM-DD or YYYY/MM/DD; empty: `None`.
pub fn optional_date(field: Field, label_zh: &str, s: &str) -> Result<Option<time::Date>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let parsed = (|| {
        let mut parts = s.split(['-', '/']);
        let y: i32 = parts.next()?.parse().ok()?;
        let m: u8 = parts.next()?.parse().ok()?;
        let d: u8 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(1900..=9999).contains(&y) {
            return None;
        }
        time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
    })();
    parsed.map(Some).ok_or_else(|| {
        DomainError::invalid(
            field,
            format!("not a date: {s:?}"),
            format!("{label_zh}格式錯誤，請輸入 YYYY-MM-DD"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn institution_codes() {
        assert_eq!(InstitutionCode::parse(" ab12 ").unwrap().as_str(), "AB12");
        assert_eq!(
            InstitutionCode::parse("").unwrap_err().code(),
            "invalid_input"
        );
        assert!(InstitutionCode::parse("AB-12").is_err());
        assert!(InstitutionCode::parse("ABC").is_err());
        assert!(InstitutionCode::parse("機關代號").is_err());
    }

    #[test]
    fn org_identifiers() {
        assert!(OrgIdentifier::parse("2.16.886.101.20003.20065.20020").is_ok());
        assert!(OrgIdentifier::parse("12345675").is_ok());
        assert!(OrgIdentifier::parse("2..16").is_err());
        assert!(OrgIdentifier::parse("1234").is_err());
        assert!(OrgIdentifier::parse("abc").is_err());
    }

    #[test]
    fn contact_fields() {
        assert!(Email::parse("a.b@example.gov.tw").is_ok());
        for bad in ["", "a@b", "@x.tw", "a b@x.tw", "a@.tw"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Phone::parse("phone", "連絡電話", "(02)2701-3411").is_ok());
        assert!(Phone::parse("phone", "連絡電話", "0912 345 678").is_ok());
        let e = Phone::parse("phone", "連絡電話", "abc").unwrap_err();
        assert_eq!(e.message_zh(), "連絡電話格式錯誤");
        assert!(PersonName::parse("name", " ").is_err());
        assert_eq!(
            optional_text("ext", "分機", " 5312 ", 10)
                .unwrap()
                .as_deref(),
            Some("5312")
        );
        assert!(optional_text("ext", "分機", "12345678901", 10).is_err());
    }
}
