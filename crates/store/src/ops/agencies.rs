//! Agencies (master data).

use super::*;

pub(crate) async fn agency(pool: &Handle, code: &InstitutionCode) -> Result<Option<Agency>> {
    let row = sql::query("SELECT code, name, county, org_identifier FROM agencies WHERE code = $1")
        .bind(code.as_str())
        .fetch_optional(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    row.map(|r| {
        Ok(Agency {
            code: crate::codec::code(s(&r, "code")?)?,
            name: s(&r, "name")?,
            county: s(&r, "county")?,
            org_identifier: opt(&r, "org_identifier")?.map(org_identifier).transpose()?,
        })
    })
    .transpose()
}

pub(crate) async fn upsert_agencies(pool: &Handle, agencies: &[Agency]) -> Result<u64> {
    let mut tx = begin_write(pool).await.map_err(db)?;
    // Imports take turns: two files naming the same agencies in different orders would
    // otherwise lock each other's rows.
    serialize(&mut tx, "agencies").await.map_err(db)?;
    for a in agencies {
        sql::query(
            "INSERT INTO agencies (code, name, county, org_identifier) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (code) DO UPDATE SET name = excluded.name, county = excluded.county, \
             org_identifier = excluded.org_identifier",
        )
        .bind(a.code.as_str())
        .bind(&a.name)
        .bind(&a.county)
        .bind(a.org_identifier.as_ref().map(|o| o.as_str()))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(agencies.len() as u64)
}
