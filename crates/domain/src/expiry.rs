//! Expiry and revocation awareness: which certificates of registrations and
//! operators are revoked on the CRLs in force or expire within [`WARN_DAYS`].
//!
//! Registrations keep the whole certificate reference (issuer, serial, notAfter), so both checks
//! are exact. An operator added or modified with the certificate read from the card keeps its
//! issuer and notAfter too ([`crate::model::OperatorCert`]), so it is checked the same way. An
//! operator whose serial was typed learns them at its first card login (R5.1); until then it is
//! known by serial only: it is checked by serial against every CRL in force (any issuer), and its
//! expiry is not known, so it is not flagged for expiry.

use crate::clock::TAIPEI;
use crate::model::{CertRef, Operator, Registration};
use crate::types::{CertSerial, InstitutionCode};
use pki::validate::Validator;
use serde::Serialize;
use time::{Duration, OffsetDateTime};

/// Certificates expiring within this many days are flagged.
pub const WARN_DAYS: i64 = 60;

/// Whose certificate a flag concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "holder", rename_all = "snake_case")]
pub enum FlagHolder {
    /// The registration's organization certificate (機關憑證).
    Organization,
    /// The registration's administrator certificate (授權管理者自然人憑證).
    Administrator,
    /// An operator (經辦人), by id.
    Operator { id: i64 },
}

impl FlagHolder {
    pub fn label_zh(self) -> &'static str {
        match self {
            Self::Organization => "機關憑證",
            Self::Administrator => "授權管理者自然人憑證",
            Self::Operator { .. } => "經辦人自然人憑證",
        }
    }
}

/// What is wrong with the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FlagKind {
    Revoked {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// Expires (or expired) at `not_after`, within [`WARN_DAYS`] of now.
    Expiring {
        #[serde(with = "time::serde::rfc3339")]
        not_after: OffsetDateTime,
    },
}

/// One flagged certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    pub code: InstitutionCode,
    pub holder: FlagHolder,
    pub serial: CertSerial,
    /// Unknown for operators whose serial was typed.
    pub issuer: Option<String>,
    pub kind: FlagKind,
}

/// A date as Taipei sees it: `YYYY/MM/DD`.
pub fn taipei_date(t: OffsetDateTime) -> String {
    let d = t.to_offset(TAIPEI).date();
    format!("{:04}/{:02}/{:02}", d.year(), u8::from(d.month()), d.day())
}

impl Flag {
    /// A certificate that will expire is a notice (a warning); one revoked or already expired
    /// is an error.
    pub fn is_notice(&self, now: OffsetDateTime) -> bool {
        matches!(self.kind, FlagKind::Expiring { not_after } if not_after > now)
    }

    /// The badge: 「憑證已廢止」, 「憑證將於 YYYY/MM/DD 到期」 or 「憑證已於 YYYY/MM/DD 到期」.
    pub fn badge_zh(&self, now: OffsetDateTime) -> String {
        match self.kind {
            FlagKind::Revoked { .. } => "憑證已廢止".into(),
            FlagKind::Expiring { not_after } if not_after <= now => {
                format!("憑證已於 {} 到期", taipei_date(not_after))
            }
            FlagKind::Expiring { not_after } => {
                format!("憑證將於 {} 到期", taipei_date(not_after))
            }
        }
    }
}

fn cert_flag(
    now: OffsetDateTime,
    validator: &Validator,
    code: &InstitutionCode,
    holder: FlagHolder,
    cert: &CertRef,
) -> Option<Flag> {
    let kind = if let Some(at) = validator.revoked_at(Some(&cert.issuer), &cert.serial) {
        FlagKind::Revoked { at }
    } else if cert.not_after <= now + Duration::days(WARN_DAYS) {
        FlagKind::Expiring {
            not_after: cert.not_after,
        }
    } else {
        return None;
    };
    Some(Flag {
        code: code.clone(),
        holder,
        serial: cert.serial.clone(),
        issuer: Some(cert.issuer.clone()),
        kind,
    })
}

/// The flags of `registrations` (organization and administrator certificates) and `operators`
/// at `now` against the CRLs in force of `validator` (those whose signature verifies with a
/// trusted CA): revoked first, else expiring within [`WARN_DAYS`]. Operators whose certificate
/// was read (or learnt at login) are checked the same way; those with a typed serial not yet seen
/// at a login for revocation only, by serial on any CRL.
pub fn expiry_report(
    now: OffsetDateTime,
    validator: &Validator,
    registrations: &[Registration],
    operators: &[Operator],
) -> Vec<Flag> {
    let mut flags = Vec::new();
    for r in registrations {
        flags.extend(cert_flag(
            now,
            validator,
            &r.code,
            FlagHolder::Organization,
            &r.org.cert,
        ));
        flags.extend(cert_flag(
            now,
            validator,
            &r.code,
            FlagHolder::Administrator,
            &r.admin_card.cert,
        ));
    }
    for o in operators {
        let issuer = o.cert.as_ref().map(|c| c.issuer.clone());
        let kind = if let Some(at) = validator.revoked_at(issuer.as_deref(), &o.serial) {
            FlagKind::Revoked { at }
        } else {
            match &o.cert {
                Some(c) if c.not_after <= now + Duration::days(WARN_DAYS) => FlagKind::Expiring {
                    not_after: c.not_after,
                },
                _ => continue,
            }
        };
        flags.push(Flag {
            code: o.code.clone(),
            holder: FlagHolder::Operator { id: o.id },
            serial: o.serial.clone(),
            issuer,
            kind,
        });
    }
    flags
}

impl<S: crate::store::Store, C: crate::clock::Clock> crate::service::Services<S, C> {
    /// The flags of the administrator's agency now: its registration's two certificates and
    /// its operators, against the CRLs in force.
    pub async fn expiry_flags(
        &self,
        grant: &crate::service::AdminGrant,
    ) -> crate::Result<Vec<Flag>> {
        let operators = self.operators(grant).await?;
        let registration = self.store().registration(&grant.code).await?;
        Ok(expiry_report(
            self.now(),
            self.validator(),
            registration.as_slice(),
            &operators,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn badges_in_taipei_dates() {
        let now = datetime!(2026-06-01 02:00 UTC);
        let mut f = Flag {
            code: InstitutionCode::parse("A0001").unwrap(),
            holder: FlagHolder::Administrator,
            serial: CertSerial::parse("01").unwrap(),
            issuer: None,
            kind: FlagKind::Expiring {
                not_after: datetime!(2026-07-01 17:00 UTC),
            },
        };
        assert_eq!(f.badge_zh(now), "憑證將於 2026/07/02 到期");
        f.kind = FlagKind::Expiring {
            not_after: datetime!(2026-05-01 00:00 UTC),
        };
        assert_eq!(f.badge_zh(now), "憑證已於 2026/05/01 到期");
        f.kind = FlagKind::Revoked { at: now };
        assert_eq!(f.badge_zh(now), "憑證已廢止");
        assert_eq!(
            serde_json::to_value(&f).unwrap()["kind"]["state"],
            "revoked"
        );
    }
}
