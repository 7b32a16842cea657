//! Registrations, their replaced certificates, and who is bound to which agency.

use super::*;

const REGISTRATION_COLUMNS: &str = "code, \
    org_issuer, org_serial, org_subject, org_sha256, org_not_before, org_not_after, \
    org_identifier, org_name, \
    admin_issuer, admin_serial, admin_subject, admin_sha256, admin_not_before, admin_not_after, \
    admin_holder_name, admin_id_last4, admin_id_enc, \
    contact_name, contact_email, contact_phone, contact_phone_ext, contact_mobile, contact_unit, \
    contact_title, registered_at, updated_at, version";

pub(crate) async fn registration(
    pool: &Handle,
    secrets: &Secrets,
    code: &InstitutionCode,
) -> Result<Option<Registration>> {
    let mut q = sql::QueryBuilder::new("SELECT ");
    q.push(REGISTRATION_COLUMNS)
        .push(" FROM registrations WHERE code = ")
        .push_bind(code.as_str());
    let row = q
        .build()
        .fetch_optional(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    row.map(|r| {
        Ok(Registration {
            code: crate::codec::code(s(&r, "code")?)?,
            org: OrgCard {
                cert: cert(&r, "org")?,
                org_identifier: org_identifier(s(&r, "org_identifier")?)?,
                org_name: s(&r, "org_name")?,
            },
            admin_card: CitizenCard {
                cert: cert(&r, "admin")?,
                holder_name: s(&r, "admin_holder_name")?,
                id_last4: s(&r, "admin_id_last4")?,
            },
            admin_id: decrypt_id(
                secrets,
                &row_aad(ENC_ADMIN_ID, &s(&r, "code")?),
                &s(&r, "admin_id_enc")?,
            )?,
            admin: AdminContact {
                name: person_name(s(&r, "contact_name")?)?,
                email: email(s(&r, "contact_email")?)?,
                phone: phone(s(&r, "contact_phone")?)?,
                phone_ext: opt(&r, "contact_phone_ext")?,
                mobile: opt(&r, "contact_mobile")?.map(phone).transpose()?,
                unit: opt(&r, "contact_unit")?,
                title: opt(&r, "contact_title")?,
            },
            registered_at: time_at(&r, "registered_at")?,
            updated_at: time_at(&r, "updated_at")?,
            version: int(&r, "version")?,
        })
    })
    .transpose()
}

pub(crate) async fn cert_history(
    pool: &Handle,
    code: &InstitutionCode,
) -> Result<Vec<ReplacedCert>> {
    let rows = sql::query(
        "SELECT code, kind, cert_issuer, cert_serial, cert_subject, cert_sha256, \
         cert_not_before, cert_not_after, replaced_at FROM cert_history WHERE code = $1 \
         ORDER BY id",
    )
    .bind(code.as_str())
    .fetch_all(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(ReplacedCert {
                code: crate::codec::code(s(r, "code")?)?,
                kind: cert_kind(&s(r, "kind")?)?,
                cert: cert(r, "cert")?,
                replaced_at: time_at(r, "replaced_at")?,
            })
        })
        .collect()
}

/// Codes whose registration holds a certificate with this serial (organization or
/// administrator).
pub(crate) async fn codes_by_serial(
    pool: &Handle,
    serial: &CertSerial,
) -> Result<Vec<InstitutionCode>> {
    let rows = sql::query(
        "SELECT code FROM registrations WHERE org_serial = $1 OR admin_serial = $1 ORDER BY code",
    )
    .bind(serial.as_str().to_string())
    .fetch_all(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| crate::codec::code(s(r, "code")?))
        .collect()
}

/// Every registered agency's code, in order.
pub(crate) async fn registered_codes(pool: &Handle) -> Result<Vec<InstitutionCode>> {
    let rows = sql::query("SELECT code FROM registrations ORDER BY code")
        .fetch_all(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| crate::codec::code(s(r, "code")?))
        .collect()
}

pub(crate) async fn agencies_of_person(
    pool: &Handle,
    hash: &str,
) -> Result<Vec<(InstitutionCode, PersonRole)>> {
    let rows = sql::query(
        "SELECT code, 'administrator' AS role FROM registrations WHERE admin_id_hash = $1 \
         UNION ALL SELECT code, 'operator' AS role FROM operators WHERE national_id_hash = $1 \
         ORDER BY code, role",
    )
    .bind(hash)
    .fetch_all(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            let role = match s(r, "role")?.as_str() {
                "administrator" => PersonRole::Administrator,
                _ => PersonRole::Operator,
            };
            Ok((crate::codec::code(s(r, "code")?)?, role))
        })
        .collect()
}
