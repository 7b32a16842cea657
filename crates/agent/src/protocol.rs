//! The HiPKI local server protocol as certreg's agent speaks it: return codes, the JSON of
//! `/pkcs11info` and `/sign`, and the parsing of a `tbsPackage`.
//!
//! Return codes are HiPKI's own where one exists (the page script and sites written for the real
//! agent know them); certreg adds its own in `0x76000C0x` for what the real agent never refuses.
//! `message` is the zh-TW sentence of the code, `message2` a secondary reason when there is one.
//!
//! Pages written for HiPKI `encodeURIComponent` the `tbs` and the `pin` of a package; both are
//! percent-decoded here exactly once (`+` stays `+`), whatever the transport. A certreg challenge
//! holds no `%`, so the decoded and the plain form of one challenge are the same bytes. A PIN
//! that, decoded, still holds a `%`, a space or anything but printable ASCII is refused before the
//! card sees it: such a PIN is an encoding left over (a form's `+` read as a space, an escape
//! decoded once too few), and trying it would only spend one of the card's tries.
//!
//! | ret_code     | last_error | meaning |
//! |--------------|------------|---------|
//! | `0`          | `0`        | success |
//! | `0x76000003` |            | no TBS (`tbs` missing or empty) |
//! | `0x76000006` |            | no card in the reader (or it was removed) |
//! | `0x7600000A` |            | request too large (HiPKI 檔案過大) |
//! | `0x7600000B` |            | not JSON (body, or `tbsPackage`) |
//! | `0x7600000C` |            | parameter error: missing `tbsPackage`, wrong JSON type, bad percent-encoding, a PIN with `%`, whitespace or non-ASCII |
//! | `0x7600000E` |            | unsupported method (`func` of a popup request) |
//! | `0x76000031` |            | the requesting site is not trusted (Origin not allowed) |
//! | `0x76000C01` |            | certreg: TBS refused, not a certreg challenge |
//! | `0x76000C02` |            | certreg: unsupported `hashAlgorithm`, `signatureType` or `tbsEncoding` |
//! | `0x76000C03` |            | certreg: the challenge names another site than the caller (refused relay) |
//! | `0x76000C04` |            | certreg: a signing request without Origin (a local program; needs `allow_no_origin`) |
//! | `0x76000C05` |            | certreg: a request without Origin that a web page could have made (form body, `Sec-Fetch-Site` not `none`) |
//! | `0x76000C06` |            | certreg: a PIN too soon after a wrong PIN on the same card (the card is not asked; try again after the wait) |
//! | `0x76000998` |            | no PIN |
//! | `0x76000999` |            | cancelled |
//! | `0x76100003` |            | no card reader |
//! | `0x76100004` |            | reading the readers failed |
//! | `0x76100006` | `0xA0`     | login failed: wrong PIN (`triesLeft`, `flags` tell how many are left) |
//! | `0x76100006` | `0xA2`     | login failed: PIN length out of range |
//! | `0x76100006` | `0xA4`     | login failed: card locked |
//! | `0x7610000C` |            | no signing certificate on the card |
//! | `0x7610000D` |            | no private key for the certificate |
//! | `0x76300004` |            | signing failed (card or module error) |
//! | `0x76500001` |            | signing certificate not yet valid |
//! | `0x76500002` |            | signing certificate expired |
//! | `0x76600002` |            | base64 decoding failed (`tbs` with `tbsEncoding: base64`) |

use crate::backend::{CardError, PinState, SlotInfo};
use base64::Engine as _;
use pki::facts::ParsedCert;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use time::format_description::well_known::Rfc3339;

/// HiPKI `ret_code` values (and certreg's additions); see the module table.
pub mod ret {
    pub const OK: u32 = 0;
    pub const NO_TBS: u32 = 0x7600_0003;
    pub const NO_CARD: u32 = 0x7600_0006;
    pub const TOO_LARGE: u32 = 0x7600_000A;
    pub const JSON_FORMAT: u32 = 0x7600_000B;
    pub const PARAMETER: u32 = 0x7600_000C;
    pub const UNSUPPORTED_METHOD: u32 = 0x7600_000E;
    pub const SITE_NOT_TRUSTED: u32 = 0x7600_0031;
    /// certreg: the TBS is not a certreg challenge.
    pub const TBS_REFUSED: u32 = 0x7600_0C01;
    /// certreg: a parameter value the agent does not support (SHA-1, CMS variants …).
    pub const UNSUPPORTED_PARAMETER: u32 = 0x7600_0C02;
    /// certreg: the challenge's `origin=` is not the site asking (directly or through the popup).
    pub const ORIGIN_MISMATCH: u32 = 0x7600_0C03;
    /// certreg: a signing request that names no site, refused unless the agent allows it.
    pub const NO_ORIGIN: u32 = 0x7600_0C04;
    /// certreg: a request without Origin shaped like one a web page can send (a form body, a
    /// `Sec-Fetch-Site` other than `none`).
    pub const UNSAFE_REQUEST: u32 = 0x7600_0C05;
    /// certreg: a PIN sent too soon after a wrong PIN on the same card; not tried.
    pub const PIN_WAIT: u32 = 0x7600_0C06;
    pub const NO_PIN: u32 = 0x7600_0998;
    pub const CANCELLED: u32 = 0x7600_0999;
    pub const NO_READER: u32 = 0x7610_0003;
    pub const READER_INFO: u32 = 0x7610_0004;
    pub const LOGIN_FAILED: u32 = 0x7610_0006;
    pub const CERT_NOT_FOUND: u32 = 0x7610_000C;
    pub const KEY_NOT_FOUND: u32 = 0x7610_000D;
    pub const SIGN_FAILED: u32 = 0x7630_0004;
    pub const CERT_NOT_YET_VALID: u32 = 0x7650_0001;
    pub const CERT_EXPIRED: u32 = 0x7650_0002;
    pub const BASE64_DECODE: u32 = 0x7660_0002;
}

/// HiPKI `last_error` values: the PKCS#11 return value behind a login failure.
pub mod last_error {
    pub const NONE: u32 = 0;
    /// CKR_PIN_INCORRECT
    pub const PIN_INCORRECT: u32 = 0xA0;
    /// CKR_PIN_LEN_RANGE
    pub const PIN_LEN_RANGE: u32 = 0xA2;
    /// CKR_PIN_LOCKED
    pub const PIN_LOCKED: u32 = 0xA4;
}

/// The zh-TW message of a return code (HiPKI's wording where it has one).
pub fn message_zh(ret_code: u32, last_error: u32) -> &'static str {
    match (ret_code, last_error) {
        (ret::OK, _) => "成功",
        (ret::NO_TBS, _) => "未輸入待簽訊息",
        (ret::NO_CARD, _) => "未插入IC卡",
        (ret::TOO_LARGE, _) => "請求資料過大",
        (ret::JSON_FORMAT, _) => "JSON格式錯誤",
        (ret::PARAMETER, _) => "參數錯誤",
        (ret::UNSUPPORTED_METHOD, _) => "不支援的方法",
        (ret::SITE_NOT_TRUSTED, _) => "非信任網站，本元件不接受此網站的請求",
        (ret::TBS_REFUSED, _) => "待簽內容不是 certreg 的簽章挑戰，已拒絕簽章",
        (ret::UNSUPPORTED_PARAMETER, _) => "不支援的簽章參數",
        (ret::ORIGIN_MISMATCH, _) => "簽章挑戰屬於其他網站，本元件拒絕代為簽章",
        (ret::NO_ORIGIN, _) => "請求未標示來源網站，本元件拒絕簽章",
        (ret::UNSAFE_REQUEST, _) => "請求方式不安全，本元件拒絕處理",
        (ret::PIN_WAIT, _) => "PIN碼輸入錯誤後須稍候數秒才能再試，本次未使用IC卡",
        (ret::NO_PIN, _) => "未輸入PIN碼",
        (ret::CANCELLED, _) => "使用者已取消動作",
        (ret::NO_READER, _) => "無可用讀卡機",
        (ret::READER_INFO, _) => "取得讀卡機資訊失敗",
        (ret::LOGIN_FAILED, last_error::PIN_INCORRECT) => "PIN碼錯誤",
        (ret::LOGIN_FAILED, last_error::PIN_LEN_RANGE) => "PIN碼長度錯誤",
        (ret::LOGIN_FAILED, last_error::PIN_LOCKED) => "PIN碼錯誤次數過多，IC卡已鎖卡",
        (ret::LOGIN_FAILED, _) => "IC卡登入失敗",
        (ret::CERT_NOT_FOUND, _) => "找不到可簽章的憑證",
        (ret::KEY_NOT_FOUND, _) => "找不到指定金鑰",
        (ret::SIGN_FAILED, _) => "簽章執行錯誤",
        (ret::CERT_NOT_YET_VALID, _) => "憑證尚未生效",
        (ret::CERT_EXPIRED, _) => "憑證已逾期",
        (ret::BASE64_DECODE, _) => "Base64解碼錯誤",
        _ => "未知的錯誤",
    }
}

/// A refusal: the codes and an English detail for logs (never containing the PIN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub ret_code: u32,
    pub last_error: u32,
    pub detail: String,
    /// PIN counter, for login failures.
    pub pin: Option<PinState>,
    /// A secondary reason in zh-TW (`message2` of the answer), empty when there is none.
    pub message2: String,
}

impl Refusal {
    pub fn new(ret_code: u32, detail: impl Into<String>) -> Self {
        Self {
            ret_code,
            last_error: last_error::NONE,
            detail: detail.into(),
            pin: None,
            message2: String::new(),
        }
    }

    pub fn with_message2(mut self, message2: impl Into<String>) -> Self {
        self.message2 = message2.into();
        self
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#010x}/{:#x}: {}",
            self.ret_code, self.last_error, self.detail
        )
    }
}

impl From<&CardError> for Refusal {
    fn from(e: &CardError) -> Self {
        let (ret_code, last, pin) = match e {
            CardError::NoReader => (ret::NO_READER, last_error::NONE, None),
            CardError::NoCard | CardError::TokenRemoved => (ret::NO_CARD, last_error::NONE, None),
            CardError::NoPin => (ret::NO_PIN, last_error::NONE, None),
            CardError::PinIncorrect { pin } => {
                (ret::LOGIN_FAILED, last_error::PIN_INCORRECT, Some(*pin))
            }
            CardError::PinLenRange => (ret::LOGIN_FAILED, last_error::PIN_LEN_RANGE, None),
            CardError::PinLocked => (
                ret::LOGIN_FAILED,
                last_error::PIN_LOCKED,
                Some(PinState {
                    count_low: true,
                    final_try: false,
                    locked: true,
                    tries_left: Some(0),
                }),
            ),
            CardError::NoKey => (ret::KEY_NOT_FOUND, last_error::NONE, None),
            CardError::Device(_) => (ret::SIGN_FAILED, last_error::NONE, None),
        };
        let message2 = match pin.and_then(|p| p.tries_left) {
            Some(n) if ret_code == ret::LOGIN_FAILED && n > 0 => format!("剩餘 {n} 次機會"),
            _ => String::new(),
        };
        Self {
            ret_code,
            last_error: last,
            detail: e.to_string(),
            pin,
            message2,
        }
    }
}

/// The PIN counter flags of a token, as `/pkcs11info` and a failed `/sign` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenFlags {
    pub count_low: bool,
    pub final_try: bool,
    pub locked: bool,
}

impl From<PinState> for TokenFlags {
    fn from(p: PinState) -> Self {
        Self {
            count_low: p.count_low,
            final_try: p.final_try,
            locked: p.locked,
        }
    }
}

/// One certificate in `/pkcs11info`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertJson {
    pub label: String,
    /// Every keyUsage bit of the certificate in bit order, joined with `|`
    /// (`digitalSignature|nonRepudiation`, `keyEncipherment|dataEncipherment`); empty when the
    /// certificate has no keyUsage extension.
    pub usage: String,
    /// DER, base64; only with `?withcert=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certb64: Option<String>,
    /// Serial number in certreg's canonical form (upper-case hex of the integer's bytes, as
    /// `openssl x509 -serial` prints it: a leading `0` of the first byte stays).
    pub sn: String,
    /// The subject in HiPKI's form: `key=value` in certificate order joined with `,` (no space),
    /// keys `C`, `O`, `OU`, `CN`, `serialNumber` …; see [`hipki_dn`].
    #[serde(rename = "subjectDN")]
    pub subject_dn: String,
    #[serde(rename = "subjectCN")]
    pub subject_cn: String,
    /// Last four characters of the holder's national ID (citizen cards), else empty.
    #[serde(rename = "subjectID")]
    pub subject_id: String,
    #[serde(rename = "issuerDN")]
    pub issuer_dn: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    /// The same instants in Unix seconds, as HiPKI gives them.
    #[serde(rename = "notBeforeT")]
    pub not_before_t: i64,
    #[serde(rename = "notAfterT")]
    pub not_after_t: i64,
}

/// A card in `/pkcs11info`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenJson {
    pub label: String,
    /// The card number.
    pub serial_number: String,
    pub flags: TokenFlags,
    /// certreg: wrong PINs left, when the backend knows (soft cards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
    pub certs: Vec<CertJson>,
}

/// A reader in `/pkcs11info`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotJson {
    #[serde(rename = "slotID")]
    pub slot_id: u64,
    pub slot_description: String,
    pub token: Option<TokenJson>,
}

/// The answer of `/pkcs11info`.
#[derive(Debug, Clone, Serialize)]
pub struct Pkcs11InfoResponse {
    pub func: &'static str,
    pub ret_code: u32,
    pub last_error: u32,
    #[serde(rename = "serverVersion")]
    pub server_version: &'static str,
    pub message: String,
    pub message2: String,
    pub slots: Vec<SlotJson>,
}

/// What this agent reports as `serverVersion`.
pub const SERVER_VERSION: &str = concat!("certreg-agent/", env!("CARGO_PKG_VERSION"));

impl Pkcs11InfoResponse {
    pub fn ok(slots: Vec<SlotJson>) -> Self {
        Self {
            func: "pkcs11info",
            ret_code: ret::OK,
            last_error: last_error::NONE,
            server_version: SERVER_VERSION,
            message: message_zh(ret::OK, 0).into(),
            message2: String::new(),
            slots,
        }
    }

    pub fn refused(r: &Refusal) -> Self {
        Self {
            ret_code: r.ret_code,
            last_error: r.last_error,
            message: message_zh(r.ret_code, r.last_error).into(),
            message2: r.message2.clone(),
            ..Self::ok(Vec::new())
        }
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Escapes what a value may not hold in HiPKI's DN form (RFC 4514's specials, so that a page
/// splitting on `,` and `=` never takes part of a value for a key).
fn dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn dn_key(oid: &str) -> String {
    match oid {
        "2.5.4.6" => "C",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.3" => "CN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "1.2.840.113549.1.9.1" => "E",
        "0.9.2342.19200300.100.1.25" => "DC",
        other => other,
    }
    .to_string()
}

/// A certificate's subject (or issuer) in HiPKI's form: `C=TW,O=行政院,OU=…,CN=…` — every
/// attribute in certificate order as `key=value`, joined with `,` and no space, so that pages
/// that split on `","` and `"="` find `C`, `CN` and `serialNumber`. A value that is no string
/// is written `#` + hex of its content.
pub fn hipki_dn(parsed: &ParsedCert, issuer: bool) -> String {
    let tbs = parsed.cert.tbs_certificate();
    let name = if issuer { tbs.issuer() } else { tbs.subject() };
    name.iter()
        .map(|atv| {
            let value = pki::facts::any_to_string(atv.value.to_ref())
                .map(|v| dn_value(&v))
                .unwrap_or_else(|| {
                    let hex: String = atv
                        .value
                        .value()
                        .iter()
                        .map(|b| format!("{b:02X}"))
                        .collect();
                    format!("#{hex}")
                });
            format!("{}={value}", dn_key(&atv.oid.to_string()))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The JSON of one certificate; `None` for a certificate that does not parse (a real card may
/// hold odd objects; they are left out rather than failing the whole listing).
pub fn cert_json(label: &str, der: &[u8], with_cert: bool) -> Option<CertJson> {
    let parsed = ParsedCert::from_der(der.to_vec()).ok()?;
    let f = &parsed.facts;
    Some(CertJson {
        label: label.to_string(),
        usage: f.key_usage.join("|"),
        certb64: with_cert.then(|| base64::engine::general_purpose::STANDARD.encode(der)),
        sn: f.serial.to_string(),
        subject_dn: hipki_dn(&parsed, false),
        // Organization certificates carry no CN; the unit's name is what a page would show.
        subject_cn: f
            .cn
            .clone()
            .or_else(|| f.holder_name().map(str::to_string))
            .unwrap_or_default(),
        subject_id: f.id_last4.clone().unwrap_or_default(),
        issuer_dn: hipki_dn(&parsed, true),
        not_before: rfc3339(f.not_before),
        not_after: rfc3339(f.not_after),
        not_before_t: f.not_before.unix_timestamp(),
        not_after_t: f.not_after.unix_timestamp(),
    })
}

/// The JSON of one reader and its card.
pub fn slot_json(slot: &SlotInfo, with_cert: bool) -> SlotJson {
    SlotJson {
        slot_id: slot.id,
        slot_description: slot.description.clone(),
        token: slot.token.as_ref().map(|t| TokenJson {
            label: t.label.clone(),
            serial_number: t.serial_number.clone(),
            flags: t.pin.into(),
            tries_left: t.pin.tries_left,
            certs: t
                .certs
                .iter()
                .filter_map(|c| cert_json(&c.label, &c.der, with_cert))
                .collect(),
        }),
    }
}

/// The answer of `/sign`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SignResponse {
    pub func: &'static str,
    pub ret_code: u32,
    pub last_error: u32,
    /// base64: DER CMS SignedData (PKCS7) or the raw signature (PKCS1; DER ECDSA for EC keys).
    pub signature: String,
    /// The signer's certificate, DER base64.
    pub certb64: String,
    /// The card number, when `withCardSN` asked for it.
    #[serde(rename = "cardSN")]
    pub card_sn: String,
    pub message: String,
    /// A secondary reason (zh-TW), empty when there is none.
    pub message2: String,
    /// certreg: PIN counter after a login failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<TokenFlags>,
    #[serde(rename = "triesLeft", skip_serializing_if = "Option::is_none")]
    pub tries_left: Option<u32>,
}

impl SignResponse {
    pub fn ok(signature: &[u8], cert_der: &[u8], card_sn: Option<&str>) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            func: "sign",
            ret_code: ret::OK,
            last_error: last_error::NONE,
            signature: b64.encode(signature),
            certb64: b64.encode(cert_der),
            card_sn: card_sn.unwrap_or_default().to_string(),
            message: message_zh(ret::OK, 0).into(),
            message2: String::new(),
            flags: None,
            tries_left: None,
        }
    }

    pub fn refused(r: &Refusal) -> Self {
        Self {
            func: "sign",
            ret_code: r.ret_code,
            last_error: r.last_error,
            message: message_zh(r.ret_code, r.last_error).into(),
            message2: r.message2.clone(),
            flags: r.pin.map(TokenFlags::from),
            tries_left: r.pin.and_then(|p| p.tries_left),
            ..Self::default()
        }
    }
}

/// `signatureType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureType {
    /// CMS SignedData, content attached.
    Pkcs7,
    /// The bare signature (PKCS#1 v1.5 for RSA, DER ECDSA for EC keys).
    Pkcs1,
}

/// A parsed `tbsPackage`.
#[derive(Clone, PartialEq, Eq)]
pub struct SignRequest {
    /// `MakeSignature` from the popup; absent on a direct `/sign`.
    pub func: Option<String>,
    /// The bytes to sign (after `tbsEncoding`).
    pub tbs: Vec<u8>,
    pub signature_type: SignatureType,
    /// Empty when not given; the handler answers "no PIN" then.
    pub pin: String,
    /// `nonce` as sent (HiPKI sends text); its bytes become the randomNonce attribute.
    pub nonce: Option<Vec<u8>>,
    pub with_card_sn: bool,
    pub slot_description: Option<String>,
}

impl fmt::Debug for SignRequest {
    // The PIN must never reach a log line, a panic message or a test failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignRequest")
            .field("func", &self.func)
            .field("tbs", &format_args!("<{} bytes>", self.tbs.len()))
            .field("signature_type", &self.signature_type)
            .field("pin", &format_args!("<redacted>"))
            .field("nonce", &self.nonce.as_ref().map(Vec::len))
            .field("with_card_sn", &self.with_card_sn)
            .field("slot_description", &self.slot_description)
            .finish()
    }
}

/// Whether every `%` in `s` starts an escape of exactly two ASCII hex digits (a sign is no
/// digit: `%+A` is no escape).
fn escapes_are_whole(s: &str) -> bool {
    s.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Decodes `%XX` escapes the way JavaScript's `decodeURIComponent` does (`+` stays `+`); `None`
/// for a stray or short `%`, a non-hex digit, or bytes that are not UTF-8. The one decoder of
/// percent-encoded values and (through [`url_decode`]) of form bodies: `percent-encoding` decodes,
/// after the escapes are checked here, since on its own it passes a stray `%` through, and its
/// strict UTF-8 reading refuses what would otherwise become U+FFFD.
pub fn percent_decode(s: &str) -> Option<String> {
    if !escapes_are_whole(s) {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte), as strictly
/// as [`percent_decode`]. Not `form_urlencoded::parse`: it reads bytes that are not UTF-8 as
/// U+FFFD and passes a stray `%` through, with no way to tell, and an agent refuses both.
fn url_decode(s: &str) -> Option<String> {
    // A `+` is never part of an escape, so spaces can come first.
    percent_decode(&s.replace('+', " "))
}

/// JSON text with raw control characters inside its strings written as `\u00XX` escapes. A
/// form-encoded package whose values were percent-encoded arrives, once the form is decoded, with
/// a real newline inside the `tbs` string; HiPKI reads that, strict JSON does not.
fn escape_controls_in_strings(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.bytes().any(|b| b < 0x20) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            } else if (c as u32) < 0x20 {
                out.push_str(&format!("\\u{:04x}", c as u32));
                continue;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// The value of form field `name` in an urlencoded body.
pub fn form_field(body: &str, name: &str) -> Result<Option<String>, Refusal> {
    for pair in body.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = url_decode(k).ok_or_else(|| Refusal::new(ret::PARAMETER, "bad form encoding"))?;
        if k == name {
            return url_decode(v)
                .map(Some)
                .ok_or_else(|| Refusal::new(ret::PARAMETER, "bad form encoding"));
        }
    }
    Ok(None)
}

/// The `tbsPackage` JSON of a `/sign` body: the form field, or the body itself when it is JSON.
pub fn package_of(body: &[u8]) -> Result<Value, Refusal> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Refusal::new(ret::JSON_FORMAT, "body is not UTF-8"))?;
    let json_text = if text.trim_start().starts_with(['{', '[']) {
        text.to_string()
    } else {
        form_field(text, "tbsPackage")?
            .ok_or_else(|| Refusal::new(ret::PARAMETER, "no tbsPackage field"))?
    };
    let value: Value = serde_json::from_str(&escape_controls_in_strings(&json_text))
        .map_err(|e| Refusal::new(ret::JSON_FORMAT, format!("tbsPackage is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Refusal::new(
            ret::JSON_FORMAT,
            "tbsPackage is not a JSON object",
        ));
    }
    Ok(value)
}

fn opt_str<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, Refusal> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Refusal::new(
            ret::PARAMETER,
            format!("{key} is not a string"),
        )),
    }
}

fn opt_bool(v: &Value, key: &str) -> Result<bool, Refusal> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        // Page scripts written for HiPKI send "true" and 1 as well.
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") || s == "0" || s.is_empty() => {
            Ok(false)
        }
        Some(Value::Number(n)) => Ok(n.as_u64() != Some(0)),
        Some(_) => Err(Refusal::new(
            ret::PARAMETER,
            format!("{key} is not a boolean"),
        )),
    }
}

/// The PIN of a package, percent-decoded once; refused (PARAMETER) when the decoded text holds
/// anything but printable ASCII other than `%` — a `%` left over, a space (a form's `+`), a
/// control or a non-ASCII character — so that a PIN mangled by its encoding is never tried on
/// the card. Empty stays empty (the handler answers "no PIN").
fn checked_pin(raw: &str) -> Result<String, Refusal> {
    let pin = percent_decode(raw)
        .ok_or_else(|| Refusal::new(ret::PARAMETER, "pin: bad percent-encoding"))?;
    if pin.bytes().any(|b| !b.is_ascii_graphic() || b == b'%') {
        return Err(Refusal::new(
            ret::PARAMETER,
            "pin: a character that no card PIN holds (%, whitespace, control or non-ASCII)",
        )
        .with_message2("PIN碼含有空白、%或非英數字元，未送至IC卡，剩餘次數不變"));
    }
    Ok(pin)
}

impl SignRequest {
    /// Reads a `/sign` body (form with `tbsPackage`, or the JSON itself).
    pub fn from_body(body: &[u8]) -> Result<Self, Refusal> {
        Self::from_package(&package_of(body)?)
    }

    /// Reads a `tbsPackage` object.
    pub fn from_package(v: &Value) -> Result<Self, Refusal> {
        let tbs_text = percent_decode(opt_str(v, "tbs")?.unwrap_or_default())
            .ok_or_else(|| Refusal::new(ret::PARAMETER, "tbs: bad percent-encoding"))?;
        let tbs_text = tbs_text.as_str();
        if tbs_text.is_empty() {
            return Err(Refusal::new(ret::NO_TBS, "no tbs"));
        }
        let tbs = match opt_str(v, "tbsEncoding")?.unwrap_or("NONE") {
            e if e.eq_ignore_ascii_case("NONE") || e.is_empty() => tbs_text.as_bytes().to_vec(),
            e if e.eq_ignore_ascii_case("base64") => {
                // ASCII whitespace only (the popup's script reads the same characters): any
                // other character, Unicode spaces included, makes the base64 invalid.
                let cleaned: String = tbs_text
                    .chars()
                    .filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\n'))
                    .collect();
                base64::engine::general_purpose::STANDARD
                    .decode(&cleaned)
                    .map_err(|e| Refusal::new(ret::BASE64_DECODE, format!("tbs base64: {e}")))?
            }
            other => {
                return Err(Refusal::new(
                    ret::UNSUPPORTED_PARAMETER,
                    format!("tbsEncoding {other:?}"),
                ));
            }
        };
        match opt_str(v, "hashAlgorithm")?.unwrap_or("SHA256") {
            h if h.eq_ignore_ascii_case("SHA256") || h.eq_ignore_ascii_case("SHA-256") => {}
            other => {
                return Err(Refusal::new(
                    ret::UNSUPPORTED_PARAMETER,
                    format!("hashAlgorithm {other:?} (only SHA256)"),
                ));
            }
        }
        let signature_type = match opt_str(v, "signatureType")?.unwrap_or("PKCS7") {
            t if t.eq_ignore_ascii_case("PKCS7") => SignatureType::Pkcs7,
            t if t.eq_ignore_ascii_case("PKCS1") => SignatureType::Pkcs1,
            other => {
                return Err(Refusal::new(
                    ret::UNSUPPORTED_PARAMETER,
                    format!("signatureType {other:?} (PKCS7 or PKCS1)"),
                ));
            }
        };
        let nonce = opt_str(v, "nonce")?
            .filter(|n| !n.is_empty())
            .map(|n| n.as_bytes().to_vec());
        Ok(Self {
            func: opt_str(v, "func")?.map(str::to_string),
            tbs,
            signature_type,
            pin: checked_pin(opt_str(v, "pin")?.unwrap_or_default())?,
            nonce,
            with_card_sn: opt_bool(v, "withCardSN")?,
            slot_description: opt_str(v, "slotDescription")?
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_json_bodies_give_the_same_request() {
        let json = r#"{"tbs":"a b+c","pin":"123456","nonce":"n1","withCardSN":"true"}"#;
        let form = format!(
            "x=1&tbsPackage={}",
            json.bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        );
        let a = SignRequest::from_body(json.as_bytes()).unwrap();
        let b = SignRequest::from_body(form.as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.tbs, b"a b+c");
        assert_eq!(a.signature_type, SignatureType::Pkcs7);
        assert!(a.with_card_sn);
        assert_eq!(a.nonce.as_deref(), Some(&b"n1"[..]));
    }

    #[test]
    fn percent_encoded_values_and_decoded_newlines_read_as_the_plain_package() {
        let plain = SignRequest::from_body(
            br#"{"tbs":"certreg-challenge/1\npurpose=x+y","pin":"12+34!","nonce":"a+b"}"#,
        )
        .unwrap();
        // As HiPKI pages send it: tbs and pin through encodeURIComponent, '+' as %2B.
        let encoded = r#"{"tbs":"certreg-challenge%2F1%0Apurpose%3Dx%2By","pin":"12%2B34%21","nonce":"a%2Bb"}"#;
        let form = format!("tbsPackage={encoded}");
        let from_form = SignRequest::from_body(form.as_bytes()).unwrap();
        assert_eq!(from_form, plain);
        let from_json = SignRequest::from_body(
            br#"{"tbs":"certreg-challenge%2F1%0Apurpose%3Dx%2By","pin":"12%2B34%21","nonce":"a+b"}"#,
        )
        .unwrap();
        assert_eq!(from_json, plain);
        assert_eq!(plain.tbs, b"certreg-challenge/1\npurpose=x+y");
        // Decoded once only: an encoded '%' stays a '%'.
        let twice = SignRequest::from_body(br#"{"tbs":"%2541"}"#).unwrap();
        assert_eq!(twice.tbs, b"%41");
        let code = |b: &[u8]| SignRequest::from_body(b).unwrap_err().ret_code;
        assert_eq!(code(br#"{"tbs":"100%"}"#), ret::PARAMETER);
        assert_eq!(code(br#"{"tbs":"x","pin":"%zz"}"#), ret::PARAMETER);
        assert_eq!(code(br#"{"tbs":"%FF"}"#), ret::PARAMETER);
        // Control characters are repaired inside strings only.
        assert_eq!(code(b"tbsPackage=%7B%0B%22tbs%22:1%7D"), ret::JSON_FORMAT);
    }

    #[test]
    fn an_escape_is_a_percent_sign_and_exactly_two_hex_digits() {
        for bad in ["%+A", "%-1", "%+F", "% A", "%A", "%", "%G0", "%0G", "a%2"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
            assert_eq!(url_decode(bad), None, "{bad}");
        }
        assert_eq!(percent_decode("%41%2b%2B+").as_deref(), Some("A+++"));
        assert_eq!(url_decode("%41%2b+").as_deref(), Some("A+ "));
        assert_eq!(percent_decode("%E6%86%91").as_deref(), Some("憑"));
        assert_eq!(percent_decode("%C3"), None);
        // The form parser of the status page and of `tbsPackage` uses the same decoder.
        assert_eq!(
            form_field("name=%+Acard&token=t", "name")
                .unwrap_err()
                .ret_code,
            ret::PARAMETER
        );
        assert_eq!(
            form_field("na%6De=a+b%21&token=t", "name")
                .unwrap()
                .as_deref(),
            Some("a b!")
        );
        let code = |b: &[u8]| SignRequest::from_body(b).unwrap_err().ret_code;
        assert_eq!(code(br#"{"tbs":"x%+Ay"}"#), ret::PARAMETER);
        assert_eq!(
            code(b"tbsPackage=%7B%22tbs%22:%22x%22%+A%7D"),
            ret::PARAMETER
        );
    }

    #[test]
    fn a_pin_that_is_an_encoding_left_over_is_refused_in_every_transport() {
        let json = |pin: &str| format!(r#"{{"tbs":"x","pin":"{pin}"}}"#);
        let form = |pin: &str| {
            let text = json(pin);
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            format!("tbsPackage={encoded}")
        };
        // As the JSON value, then inside a form body (decoded once more by the form): each
        // decodes to a PIN holding a '%', whitespace, a control or a non-ASCII character.
        for pin in [
            "12%2534",
            "%2512",
            "12%2034",
            "12 34",
            "12\t34",
            "1234\n",
            "%0A1234",
            "\u{a0}123456",
            "%C2%A0123456",
            "１２３４５６",
            "%EF%BC%9123456",
            "123456\u{85}",
        ] {
            for (how, body) in [("json", json(pin)), ("form", form(pin))] {
                let r = SignRequest::from_body(body.as_bytes()).unwrap_err();
                assert_eq!(r.ret_code, ret::PARAMETER, "{how} {pin:?}: {r}");
            }
        }
        // In a form body a '+' that was not encoded is a space: refused, never tried as a PIN.
        let raw_plus = r#"tbsPackage={"tbs":"x","pin":"12+34"}"#;
        assert_eq!(
            SignRequest::from_body(raw_plus.as_bytes())
                .unwrap_err()
                .ret_code,
            ret::PARAMETER
        );
        // Printable ASCII reads the same from both transports.
        for pin in ["123456", "Ab3!x+y", "12%2B34"] {
            let a = SignRequest::from_body(json(pin).as_bytes()).unwrap();
            let b = SignRequest::from_body(form(pin).as_bytes()).unwrap();
            assert_eq!(a.pin, b.pin, "{pin}");
            assert!(a.pin.bytes().all(|c| c.is_ascii_graphic() && c != b'%'));
        }
        // No PIN stays "no PIN" for the handler.
        assert_eq!(SignRequest::from_body(br#"{"tbs":"x"}"#).unwrap().pin, "");
    }

    #[test]
    fn base64_tbs_allows_ascii_whitespace_only() {
        let tbs = |b64: &str| format!(r#"{{"tbs":"{b64}","tbsEncoding":"base64"}}"#);
        let r = SignRequest::from_body(tbs("Y2Vy \t\r\ndHJl\nZw==").as_bytes()).unwrap();
        assert_eq!(r.tbs, b"certreg");
        for odd in [
            "\\u0085",
            "\\u00a0",
            "\\u2028",
            "\\u3000",
            "\\u000b",
            "\\u000c",
            "%C2%85",
            "%E3%80%80",
        ] {
            let r =
                SignRequest::from_body(tbs(&format!("Y2Vy{odd}dHJlZw==")).as_bytes()).unwrap_err();
            assert_eq!(r.ret_code, ret::BASE64_DECODE, "{odd}: {r}");
        }
    }

    #[test]
    fn debug_output_hides_the_pin() {
        let r = SignRequest::from_body(br#"{"tbs":"x","pin":"98765432"}"#).unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("98765432"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn malformed_packages_get_their_codes() {
        let code = |b: &[u8]| SignRequest::from_body(b).unwrap_err().ret_code;
        assert_eq!(code(b"tbsPackage=%7Bnot json"), ret::JSON_FORMAT);
        assert_eq!(code(b"other=1"), ret::PARAMETER);
        assert_eq!(code(br#"{"pin":"1"}"#), ret::NO_TBS);
        assert_eq!(code(br#"{"tbs":5}"#), ret::PARAMETER);
        assert_eq!(
            code(br#"{"tbs":"***","tbsEncoding":"base64"}"#),
            ret::BASE64_DECODE
        );
        assert_eq!(
            code(br#"{"tbs":"x","hashAlgorithm":"SHA1"}"#),
            ret::UNSUPPORTED_PARAMETER
        );
        assert_eq!(
            code(br#"{"tbs":"x","signatureType":"XML"}"#),
            ret::UNSUPPORTED_PARAMETER
        );
        assert_eq!(code(b"[1]"), ret::JSON_FORMAT);
    }
}
