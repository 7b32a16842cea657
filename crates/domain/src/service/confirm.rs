//! The final 確認 of first registration and the replacements (R1.5, R3.x).

use super::Services;
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::flow::{FlowKind, Step};
use crate::model::*;
use crate::store::*;
use crate::types::*;

/// The administrator data typed on the confirmation page (圖3-9).
#[derive(Debug, Clone, Default)]
pub struct ContactInput {
    pub name: String,
    pub email: String,
    pub phone: String,
    pub phone_ext: String,
    pub mobile: String,
    pub unit: String,
    pub title: String,
}

impl ContactInput {
    pub fn validate(&self) -> Result<AdminContact> {
        let mobile = self.mobile.trim();
        Ok(AdminContact {
            name: PersonName::parse("name", &self.name)?,
            email: Email::parse(&self.email)?,
            phone: Phone::parse("phone", "連絡電話", &self.phone)?,
            phone_ext: optional_text("phone_ext", "分機", &self.phone_ext, 10)?,
            mobile: if mobile.is_empty() {
                None
            } else {
                Some(Phone::parse("mobile", "行動電話", mobile)?)
            },
            unit: optional_text("unit", "服務單位", &self.unit, 100)?,
            title: optional_text("title", "職稱", &self.title, 50)?,
        })
    }
}

impl<S: Store, C: Clock> Services<S, C> {
    /// The final 確認 of F1 and F3 (R1.5, R3.4): takes effect exactly once.
    pub async fn confirm(
        &self,
        flow_id: &str,
        session: &str,
        contact: &ContactInput,
        client: Option<&str>,
    ) -> Result<Registration> {
        let mut flow = self.load_flow(flow_id, session, Step::Confirm).await?;
        let contact = contact.validate()?;
        let now = self.clock.now();
        let code = flow.data.code.clone().ok_or(DomainError::WrongStep)?;
        let kind = flow.kind;
        flow.advance(now);
        let (registration, write, history, receipt_kind) = if kind == FlowKind::FirstRegistration {
            let registration = Registration {
                code: code.clone(),
                org: flow.data.org.clone().ok_or(DomainError::WrongStep)?,
                admin_card: flow.data.admin_card.clone().ok_or(DomainError::WrongStep)?,
                admin_id: flow.data.admin_id.clone().ok_or(DomainError::WrongStep)?,
                admin: contact,
                registered_at: now,
                updated_at: now,
                version: 1,
            };
            (
                registration.clone(),
                RegistrationWrite::Insert(registration),
                vec![],
                ReceiptKind::FirstRegistration,
            )
        } else {
            let current = self.registered(&code).await?;
            // The registration the card steps checked, not whatever is current: a replacement
            // committed meanwhile refuses this one (here, and inside the commit).
            let checked = flow
                .data
                .registration_version
                .ok_or(DomainError::WrongStep)?;
            if current.version != checked {
                return Err(DomainError::RegistrationChanged);
            }
            let mut next = current.clone();
            let mut history = Vec::new();
            if matches!(kind, FlowKind::ReplaceOrg | FlowKind::ReplaceBoth) {
                next.org = flow.data.org.clone().ok_or(DomainError::WrongStep)?;
                history.push(ReplacedCert {
                    code: code.clone(),
                    kind: CertKind::Organization,
                    cert: current.org.cert.clone(),
                    replaced_at: now,
                });
            }
            if matches!(kind, FlowKind::ReplaceAdmin | FlowKind::ReplaceBoth) {
                next.admin_card = flow.data.admin_card.clone().ok_or(DomainError::WrongStep)?;
                next.admin_id = flow.data.admin_id.clone().ok_or(DomainError::WrongStep)?;
                history.push(ReplacedCert {
                    code: code.clone(),
                    kind: CertKind::Administrator,
                    cert: current.admin_card.cert.clone(),
                    replaced_at: now,
                });
            }
            next.admin = contact;
            next.updated_at = now;
            next.version = checked + 1;
            let receipt = match kind {
                FlowKind::ReplaceOrg => ReceiptKind::ReplaceOrg,
                FlowKind::ReplaceAdmin => ReceiptKind::ReplaceAdmin,
                _ => ReceiptKind::ReplaceBoth,
            };
            (
                next.clone(),
                RegistrationWrite::Replace {
                    registration: next,
                    expected_version: checked,
                },
                history,
                receipt,
            )
        };
        let audit = AuditEvent::new(now, format!("agency:{code}"), &format!("registration.{}", receipt_kind.as_str()), "ok")
            .agency(&code)
            .cert(&registration.org.cert)
            .client(client)
            .detail(serde_json::json!({"admin_cert": format!("{}|{}", registration.admin_card.cert.issuer, registration.admin_card.cert.serial), "terms_version": flow.data.terms_version}));
        let terms_version = flow.data.terms_version.clone();
        self.store
            .commit(Commit {
                flow: Some(flow),
                registration: Some(write),
                history,
                receipt: Some(Receipt {
                    code: code.clone(),
                    kind: receipt_kind,
                    at: now,
                    review_id: None,
                    terms_version,
                }),
                audit: vec![audit],
                end_admin_sessions: (kind != FlowKind::FirstRegistration).then(|| code.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                if e == DomainError::Conflict {
                    DomainError::AlreadyConfirmed
                } else {
                    e
                }
            })?;
        Ok(registration)
    }
}
