//! Receipts (收件紀錄).

use super::*;

pub(crate) async fn receipts(pool: &Handle, code: &InstitutionCode) -> Result<Vec<Receipt>> {
    let rows = sql::query(
        "SELECT code, kind, at, review_id, terms_version FROM receipts WHERE code = $1 \
         ORDER BY at DESC, id DESC",
    )
    .bind(code.as_str())
    .fetch_all(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(Receipt {
                code: crate::codec::code(s(r, "code")?)?,
                kind: receipt_kind(&s(r, "kind")?)?,
                at: time_at(r, "at")?,
                review_id: col(r, "review_id")?,
                terms_version: col(r, "terms_version")?,
            })
        })
        .collect()
}
