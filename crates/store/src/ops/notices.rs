//! The once-a-day notice claims (`crate::notices`).

use super::*;

pub(crate) async fn notice_claim(pool: &Handle, day: &str, keys: &[String]) -> Result<Vec<bool>> {
    let mut tx = begin_write(pool).await.map_err(db)?;
    sql::query("DELETE FROM notices_sent WHERE day < $1")
        .bind(day)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let mut claimed = Vec::with_capacity(keys.len());
    for key in keys {
        let done = sql::query(
            "INSERT INTO notices_sent (day, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(day)
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        claimed.push(done.rows_affected() == 1);
    }
    tx.commit().await.map_err(db)?;
    Ok(claimed)
}

pub(crate) async fn notice_release(pool: &Handle, day: &str, keys: &[String]) -> Result<()> {
    let mut tx = begin_write(pool).await.map_err(db)?;
    for key in keys {
        sql::query("DELETE FROM notices_sent WHERE day = $1 AND key = $2")
            .bind(day)
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}
