//! Expiry and revocation notices: once a day, each agency whose registration or operators hold
//! a flagged certificate ([`crate::expiry`]) is sent one notice, addressed to its administrator
//! (the registration's 電子信箱), listing the certificates not yet notified that day.
//!
//! The once-per-day memory is the store's ([`Store::notice_claim`]): a notice is claimed there
//! before it is sent, so neither a restart nor a second instance on the same database sends it
//! twice in one day. How a notice travels (SMTP, stdout, nowhere) is the [`NoticeSender`]'s
//! business.

use crate::clock::TAIPEI;
use crate::error::Result;
use crate::expiry::{Flag, expiry_report};
use crate::model::Registration;
use crate::store::Store;
use crate::types::InstitutionCode;
use pki::validate::Validator;
use std::future::Future;
use time::{Date, OffsetDateTime};

/// A mail to an agency's administrator (電子信箱 of the registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub code: InstitutionCode,
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Why a notice could not be sent (the transport's own error).
pub type SendError = Box<dyn std::error::Error + Send + Sync>;

/// Where notices go.
pub trait NoticeSender: Send + Sync {
    /// Whether notices go anywhere: when not, [`notify_once`] claims and sends nothing.
    fn is_enabled(&self) -> bool;
    /// Sends one notice; an error gives its claims back, to be tried again on the next walk.
    fn send(
        &self,
        notice: &Notice,
    ) -> impl Future<Output = std::result::Result<(), SendError>> + Send;
}

/// The zh-TW expiry/revocation notice of `flags` (all of `registration`'s agency) at `now`.
pub fn notice_zh(registration: &Registration, flags: &[Flag], now: OffsetDateTime) -> Notice {
    let mut body = format!(
        "{} 您好：\n\n貴機關（機關代號 {}，{}）在「公教人員保險 要保機關憑證註冊與授權指派服務」\
         登錄的下列憑證需要處理：\n\n",
        registration.admin.name.as_str(),
        registration.code.as_str(),
        registration.org.org_name,
    );
    for f in flags {
        body.push_str(&format!(
            "・{}（憑證序號 {}）：{}\n",
            f.holder.label_zh(),
            f.serial.as_str(),
            f.badge_zh(now)
        ));
    }
    body.push_str(
        "\n已廢止或過期的憑證無法登入。機關憑證或授權管理者自然人憑證請於到期前辦理更換；\
         經辦人憑證已廢止或換發者，請由授權管理者修改該經辦人的憑證序號。\n\n\
         本信件由系統自動寄送，請勿直接回覆。\n",
    );
    Notice {
        code: registration.code.clone(),
        to: registration.admin.email.as_str().to_string(),
        subject: format!(
            "憑證到期／廢止通知（機關代號 {}）",
            registration.code.as_str()
        ),
        body,
    }
}

/// What a flag is claimed under for the day: agency, holder, issuer and serial (one notice a day
/// per certificate, whatever it says of it).
pub fn notice_key(f: &Flag) -> String {
    format!(
        "{}|{:?}|{}|{}",
        f.code.as_str(),
        f.holder,
        f.issuer.as_deref().unwrap_or(""),
        f.serial.as_str()
    )
}

/// Sends each agency's administrator one notice of its flagged certificates not yet notified
/// today (a Taipei day; claimed in the store first); returns how many notices went out. A notice
/// that could not be sent is logged, its claims are given back, and it is tried again next time.
/// One agency's failure (a row that cannot be read, a claim the store refused) is logged and the
/// walk goes on to the next agency.
pub async fn notify_once<S: Store, N: NoticeSender>(
    store: &S,
    validator: &Validator,
    now: OffsetDateTime,
    sender: &N,
) -> Result<usize> {
    if !sender.is_enabled() {
        return Ok(0);
    }
    let today = now.to_offset(TAIPEI).date();
    let mut sent = 0;
    for code in store.registered_codes().await? {
        match notify_agency(store, validator, now, today, sender, &code).await {
            Ok(went) => sent += usize::from(went),
            Err(e) => {
                tracing::error!(code = code.as_str(), error = %e, "expiry notice skipped");
            }
        }
    }
    Ok(sent)
}

/// One agency's notice; whether it went out.
async fn notify_agency<S: Store, N: NoticeSender>(
    store: &S,
    validator: &Validator,
    now: OffsetDateTime,
    today: Date,
    sender: &N,
    code: &InstitutionCode,
) -> Result<bool> {
    let Some(registration) = store.registration(code).await? else {
        return Ok(false);
    };
    let operators = store.operators(code).await?;
    let flags = expiry_report(
        now,
        validator,
        std::slice::from_ref(&registration),
        &operators,
    );
    if flags.is_empty() {
        return Ok(false);
    }
    let keys: Vec<String> = flags.iter().map(notice_key).collect();
    let claimed = store.notice_claim(today, &keys).await?;
    let (flags, keys): (Vec<Flag>, Vec<String>) = flags
        .into_iter()
        .zip(keys)
        .zip(claimed)
        .filter_map(|(pair, mine)| mine.then_some(pair))
        .unzip();
    if flags.is_empty() {
        return Ok(false);
    }
    let notice = notice_zh(&registration, &flags, now);
    match sender.send(&notice).await {
        Ok(()) => {
            tracing::info!(
                code = code.as_str(),
                certificates = flags.len(),
                "expiry notice sent"
            );
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(code = code.as_str(), error = %e, "expiry notice not sent");
            store.notice_release(today, &keys).await?;
            Ok(false)
        }
    }
}
