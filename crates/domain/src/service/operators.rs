//! The administrator's operators (F2): the grant checked on every use, the list, 新增, 修改,
//! 刪除.

use super::{Services, certificate_check};
use crate::clock::Clock;
use crate::error::{DomainError, Result};
use crate::model::*;
use crate::store::*;
use crate::types::*;
use time::OffsetDateTime;

/// An administrator's right to manage one agency's operators (F2, after both cards).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdminGrant {
    pub code: InstitutionCode,
    /// The registration version when the grant was made: a replacement ends the grant.
    pub registration_version: i64,
}

/// An operator's login (R5.1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OperatorGrant {
    pub code: InstitutionCode,
    pub operator_id: i64,
    pub serial: CertSerial,
    /// The issuer of the card presented at login (a DN as the certificate facts write it):
    /// with the serial, the certificate's identity.
    #[serde(default)]
    pub issuer: Option<String>,
    pub name: String,
    pub functions: Vec<FunctionId>,
}

/// The first of a registration's two cards revoked on a CRL in force or as the online check
/// last learned ([`pki::validate::Validator::revoked_at`]): which it is (`organization`,
/// `administrator`), the certificate and when it was revoked.
fn revoked_card<'r>(
    validator: &pki::validate::Validator,
    registration: &'r Registration,
) -> Option<(&'static str, &'r CertRef, OffsetDateTime)> {
    [
        ("organization", &registration.org.cert),
        ("administrator", &registration.admin_card.cert),
    ]
    .into_iter()
    .find_map(|(role, cert)| {
        validator
            .revoked_at(Some(&cert.issuer), &cert.serial)
            .map(|at| (role, cert, at))
    })
}

/// The certificates a session holding these grants rests on, by issuer (`None`: any issuer,
/// for a grant made before its issuer was known) and serial: an operator's card, and for an
/// administrator the agency's registered organization card and administrator card. The sweep
/// asks the online revocation check about these before it judges the sessions.
pub async fn grant_certificates<S: Store>(
    store: &S,
    admin: Option<&AdminGrant>,
    operator: Option<&OperatorGrant>,
) -> Result<Vec<(Option<String>, CertSerial)>> {
    let mut certs = Vec::new();
    if let Some(grant) = operator {
        certs.push((grant.issuer.clone(), grant.serial.clone()));
    }
    if let Some(grant) = admin
        && let Some(registration) = store.registration(&grant.code).await?
    {
        for cert in [&registration.org.cert, &registration.admin_card.cert] {
            certs.push((Some(cert.issuer.clone()), cert.serial.clone()));
        }
    }
    Ok(certs)
}

/// Whether a session holding these grants must end because a card they rest on is revoked
/// ([`pki::validate::Validator::revoked_at`]: on a CRL in force, or as the online check's
/// sources last said): the audit event that records its end, or `None` while they hold. An
/// operator's card is judged by issuer and serial (any issuer for a grant made before its
/// issuer was known); an administrator's by the agency's registered organization card and
/// administrator card. The sweep of live sessions asks this for each.
pub async fn revocation_ending<S: Store>(
    store: &S,
    validator: &pki::validate::Validator,
    now: OffsetDateTime,
    admin: Option<&AdminGrant>,
    operator: Option<&OperatorGrant>,
) -> Result<Option<AuditEvent>> {
    let ending = |code: &InstitutionCode, detail: serde_json::Value| {
        AuditEvent::new(now, "system", "session.end", "ok")
            .agency(code)
            .detail(detail)
    };
    if let Some(grant) = operator
        && let Some(at) = validator.revoked_at(grant.issuer.as_deref(), &grant.serial)
    {
        return Ok(Some(ending(
            &grant.code,
            serde_json::json!({
                "reason": "certificate_revoked",
                "operator_id": grant.operator_id,
                "serial": grant.serial.as_str(),
                "revoked_at": at.unix_timestamp(),
            }),
        )));
    }
    if let Some(grant) = admin
        && let Some(registration) = store.registration(&grant.code).await?
        && let Some((role, cert, at)) = revoked_card(validator, &registration)
    {
        return Ok(Some(ending(
            &grant.code,
            serde_json::json!({
                "reason": "certificate_revoked",
                "role": "admin",
                "certificate": role,
                "serial": cert.serial.as_str(),
                "revoked_at": at.unix_timestamp(),
            }),
        )));
    }
    Ok(None)
}

/// What an administrator types to add or modify an operator (圖3-15, 3-18).
#[derive(Debug, Clone, Default)]
pub struct OperatorForm {
    /// Certificate read from the operator's card through the agent (no PIN), if it was read.
    pub read_certificate: Option<Vec<u8>>,
    /// 憑證序號 typed or pasted (ignored when a certificate was read).
    pub serial: String,
    /// 姓名 (ignored when a certificate was read).
    pub name: String,
    pub national_id: String,
    pub functions: Vec<String>,
    /// 授權期間 從 / 至 (YYYY-MM-DD or YYYY/MM/DD; empty: open).
    pub valid_from: String,
    pub valid_until: String,
}

impl OperatorForm {
    /// The validity period typed, both ends optional; 至 not before 從.
    pub fn validity(&self) -> Result<Validity> {
        let from = optional_date("valid_from", "授權期間起日", &self.valid_from)?;
        let until = optional_date("valid_until", "授權期間迄日", &self.valid_until)?;
        if let (Some(f), Some(u)) = (from, until)
            && u < f
        {
            return Err(DomainError::invalid(
                "valid_until",
                "until before from",
                "授權期間迄日不可早於起日",
            ));
        }
        Ok(Validity { from, until })
    }
}

impl<S: Store, C: Clock> Services<S, C> {
    /// The grant still holds: same agency, registration not replaced since.
    pub(super) async fn check_admin(&self, grant: &AdminGrant) -> Result<Registration> {
        let registration = self
            .store
            .registration(&grant.code)
            .await?
            .ok_or(DomainError::Forbidden)?;
        if registration.version != grant.registration_version {
            return Err(DomainError::Forbidden);
        }
        // Checked on every use, not only by the sweep: a login that was in flight while the
        // sweep ran holds no revoked card past its next request, nor one a card step has
        // meanwhile found revoked online. Nothing is fetched here.
        if let Some((_, cert, _)) = revoked_card(&self.validator, &registration) {
            return Err(DomainError::Pki(pki::PkiError::new(
                pki::ErrorCode::CertRevoked,
                format!("certificate {} is revoked", cert.serial.as_str()),
            )));
        }
        Ok(registration)
    }

    /// The operator grant of a login as it stands now: the operator re-read (deleted, or
    /// re-bound to another card, is no longer one) and its card not revoked on a CRL in force
    /// nor as the online check last learned (checked on every use, whether or not the sweep
    /// has reached the session; nothing is fetched). `None` when the grant no longer holds.
    pub async fn current_operator(&self, grant: &OperatorGrant) -> Result<Option<Operator>> {
        if self
            .validator
            .revoked_at(grant.issuer.as_deref(), &grant.serial)
            .is_some()
        {
            return Ok(None);
        }
        let today = self.clock.today();
        Ok(self
            .store
            .operator(&grant.code, grant.operator_id)
            .await?
            .filter(|o| o.serial == grant.serial && o.validity.check(today).is_ok()))
    }

    /// R2.3
    pub async fn operators(&self, grant: &AdminGrant) -> Result<Vec<Operator>> {
        self.check_admin(grant).await?;
        self.store.operators(&grant.code).await
    }

    pub async fn operator(&self, grant: &AdminGrant, id: i64) -> Result<Operator> {
        self.check_admin(grant).await?;
        self.store
            .operator(&grant.code, id)
            .await?
            .ok_or(DomainError::OperatorNotFound)
    }

    async fn operator_input(&self, form: &OperatorForm) -> Result<OperatorInput> {
        let national_id = national_id("national_id", &form.national_id)?;
        let (serial, name, read) = match &form.read_certificate {
            Some(der) => {
                // A certificate read from the card must be a valid citizen card of a trusted
                // CA: otherwise a crafted one could name any serial and holder.
                let (validator, der, now) = (self.validator.clone(), der.clone(), self.clock.now());
                let cert = certificate_check(&self.validator, move || {
                    let parsed = pki::facts::ParsedCert::from_input(&der)?;
                    validator.validate(&parsed, &[], pki::anchors::Role::Citizen, now)
                })
                .await??;
                let last4 = cert.facts.id_last4.clone().unwrap_or_default();
                if !last4.eq_ignore_ascii_case(national_id.last4()) {
                    return Err(DomainError::IdMismatch);
                }
                let name = cert.facts.cn.clone().unwrap_or_default();
                let read = crate::model::OperatorCert {
                    issuer: cert.facts.issuer.clone(),
                    not_after: cert.facts.not_after,
                };
                (
                    cert.facts.serial.clone(),
                    PersonName::parse("name", &name)?,
                    Some(read),
                )
            }
            None => (
                cert_serial("serial", &form.serial)?,
                PersonName::parse("name", &form.name)?,
                None,
            ),
        };
        let functions = self.config.functions.validate(&form.functions)?;
        Ok(OperatorInput {
            serial,
            name,
            national_id,
            functions,
            cert: read,
            validity: form.validity()?,
        })
    }

    /// R2.4: 新增.
    pub async fn add_operator(
        &self,
        grant: &AdminGrant,
        form: &OperatorForm,
        client: Option<&str>,
    ) -> Result<i64> {
        self.check_admin(grant).await?;
        let input = self.operator_input(form).await?;
        let now = self.clock.now();
        let detail =
            serde_json::json!({"serial": input.serial.as_str(), "functions": input.functions});
        let write = OperatorWrite::Insert {
            code: grant.code.clone(),
            input,
            at: now,
        };
        let committed = self
            .commit_operator(grant, "operator.add", detail, write, client, now)
            .await?;
        committed
            .operator_id
            .ok_or_else(|| DomainError::Storage("no operator id".into()))
    }

    /// R2.5: 修改, refusing to overwrite a change made since `expected_version` was read.
    pub async fn modify_operator(
        &self,
        grant: &AdminGrant,
        id: i64,
        expected_version: i64,
        form: &OperatorForm,
        client: Option<&str>,
    ) -> Result<()> {
        self.check_admin(grant).await?;
        let input = self.operator_input(form).await?;
        let now = self.clock.now();
        let detail = serde_json::json!({"id": id, "serial": input.serial.as_str(), "functions": input.functions});
        let write = OperatorWrite::Update {
            code: grant.code.clone(),
            id,
            input,
            expected_version,
            at: now,
        };
        self.commit_operator(grant, "operator.modify", detail, write, client, now)
            .await
            .map(|_| ())
    }

    /// R2.6: 刪除 (after the confirmation page).
    pub async fn delete_operator(
        &self,
        grant: &AdminGrant,
        id: i64,
        expected_version: i64,
        client: Option<&str>,
    ) -> Result<()> {
        self.check_admin(grant).await?;
        let write = OperatorWrite::Delete {
            code: grant.code.clone(),
            id,
            expected_version,
        };
        let detail = serde_json::json!({"id": id});
        self.commit_operator(
            grant,
            "operator.delete",
            detail,
            write,
            client,
            self.clock.now(),
        )
        .await
        .map(|_| ())
    }

    /// One administrator's operator change and its audit event, in one commit.
    async fn commit_operator(
        &self,
        grant: &AdminGrant,
        action: &str,
        detail: serde_json::Value,
        write: OperatorWrite,
        client: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Committed> {
        let audit = AuditEvent::new(now, format!("admin:{}", grant.code), action, "ok")
            .agency(&grant.code)
            .client(client)
            .detail(detail);
        self.store
            .commit(Commit {
                operator: Some(write),
                audit: vec![audit],
                // The registration the administrator's login checked, re-checked inside the
                // transaction: a replacement committed since refuses the change.
                registration_guard: Some((grant.code.clone(), grant.registration_version)),
                ..Default::default()
            })
            .await
    }
}
