//! Back-office reviewer accounts.

use super::*;

pub(crate) async fn add_reviewer(
    pool: &Handle,
    name: &str,
    section: Section,
    serial: &CertSerial,
) -> Result<i64> {
    let mut w = begin_single(pool).await.map_err(db)?;
    let row = sql::query(
        "INSERT INTO reviewers (name, section, cert_serial, active) VALUES ($1, $2, $3, $4) \
         RETURNING id",
    )
    .bind(name)
    .bind(section_str(section))
    .bind(serial.as_str())
    .bind(true)
    .fetch_one(&mut *w)
    .await
    .map_err(db)?;
    w.commit().await.map_err(db)?;
    int(&row, "id")
}

pub(crate) async fn reviewers(pool: &Handle) -> Result<Vec<Reviewer>> {
    let rows = sql::query(
        "SELECT id, name, section, cert_serial, cert_issuer, active FROM reviewers ORDER BY id",
    )
    .fetch_all(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(Reviewer {
                id: int(r, "id")?,
                name: s(r, "name")?,
                section: section(&s(r, "section")?)?,
                cert_serial: serial(s(r, "cert_serial")?)?,
                cert_issuer: opt(r, "cert_issuer")?,
                active: col(r, "active")?,
            })
        })
        .collect()
}

pub(crate) async fn learn_reviewer_issuer(
    pool: &Handle,
    id: i64,
    serial: &CertSerial,
    issuer: &str,
) -> Result<()> {
    let mut w = begin_single(pool).await.map_err(db)?;
    sql::query(
        "UPDATE reviewers SET cert_issuer = $3 \
         WHERE id = $1 AND cert_serial = $2 AND cert_issuer IS NULL",
    )
    .bind(id)
    .bind(serial.as_str())
    .bind(issuer)
    .execute(&mut *w)
    .await
    .map_err(db)?;
    w.commit().await.map_err(db)
}

pub(crate) async fn set_reviewer_active(pool: &Handle, id: i64, active: bool) -> Result<()> {
    let mut w = begin_single(pool).await.map_err(db)?;
    let n = sql::query("UPDATE reviewers SET active = $2 WHERE id = $1")
        .bind(id)
        .bind(active)
        .execute(&mut *w)
        .await
        .map_err(db)?
        .rows_affected();
    w.commit().await.map_err(db)?;
    if n == 0 {
        return Err(DomainError::invalid(
            "reviewer",
            format!("no reviewer {id}"),
            "查無此審核人員",
        ));
    }
    Ok(())
}
