//! Operators (授權經辦人).

use super::*;

fn operator_row(r: &DbRow, secrets: &Secrets) -> Result<Operator> {
    Ok(Operator {
        id: int(r, "id")?,
        code: crate::codec::code(s(r, "code")?)?,
        serial: serial(s(r, "serial")?)?,
        name: person_name(s(r, "name")?)?,
        national_id: decrypt_id(
            secrets,
            &operator_aad(&s(r, "code")?, &s(r, "serial")?),
            &s(r, "national_id_enc")?,
        )?,
        functions: functions(&s(r, "functions")?)?,
        cert: match (
            opt(r, "cert_issuer")?,
            col::<Option<i64>>(r, "cert_not_after")?,
        ) {
            (Some(issuer), Some(not_after)) => Some(OperatorCert {
                issuer,
                not_after: from_ts(not_after)?,
            }),
            _ => None,
        },
        validity: Validity {
            from: opt(r, "valid_from")?.map(|d| parse_date(&d)).transpose()?,
            until: opt(r, "valid_until")?.map(|d| parse_date(&d)).transpose()?,
        },
        updated_at: time_at(r, "updated_at")?,
        version: int(r, "version")?,
    })
}

const OPERATOR_COLUMNS: &str = "id, code, serial, name, national_id_enc, functions, updated_at, version, cert_issuer, \
     cert_not_after, valid_from, valid_until";

pub(crate) async fn operators(
    pool: &Handle,
    secrets: &Secrets,
    code: &InstitutionCode,
) -> Result<Vec<Operator>> {
    let mut q = sql::QueryBuilder::new("SELECT ");
    q.push(OPERATOR_COLUMNS)
        .push(" FROM operators WHERE code = ")
        .push_bind(code.as_str())
        .push(" ORDER BY id");
    let rows = q
        .build()
        .fetch_all(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    rows.iter().map(|r| operator_row(r, secrets)).collect()
}

pub(crate) async fn operator(
    pool: &Handle,
    secrets: &Secrets,
    code: &InstitutionCode,
    id: i64,
) -> Result<Option<Operator>> {
    let mut q = sql::QueryBuilder::new("SELECT ");
    q.push(OPERATOR_COLUMNS)
        .push(" FROM operators WHERE code = ")
        .push_bind(code.as_str())
        .push(" AND id = ")
        .push_bind(id);
    let row = q
        .build()
        .fetch_optional(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    row.map(|r| operator_row(&r, secrets)).transpose()
}

pub(crate) async fn operator_by_serial(
    pool: &Handle,
    secrets: &Secrets,
    code: &InstitutionCode,
    serial: &CertSerial,
) -> Result<Option<Operator>> {
    let mut q = sql::QueryBuilder::new("SELECT ");
    q.push(OPERATOR_COLUMNS)
        .push(" FROM operators WHERE code = ")
        .push_bind(code.as_str())
        .push(" AND serial = ")
        .push_bind(serial.as_str());
    let row = q
        .build()
        .fetch_optional(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    row.map(|r| operator_row(&r, secrets)).transpose()
}
