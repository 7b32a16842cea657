//! Encrypted values bound to their rows: the one-time re-encryption of values sealed for their
//! column only.

use super::*;

/// One encrypted column to bind to its rows: `select` yields `key` (what `update` names the
/// row by, as `$1`), `bound` (the row part of the associated data) and `value`.
struct SealedColumn {
    column: &'static str,
    select: &'static str,
    update: &'static str,
    int_key: bool,
}

const SEALED_COLUMNS: [SealedColumn; 4] = [
    SealedColumn {
        column: ENC_ADMIN_ID,
        select: "SELECT code AS key, code AS bound, admin_id_enc AS value FROM registrations",
        update: "UPDATE registrations SET admin_id_enc = $2 WHERE code = $1",
        int_key: false,
    },
    SealedColumn {
        column: ENC_OPERATOR_ID,
        select: "SELECT id AS key, code || '|' || serial AS bound, national_id_enc AS value \
                 FROM operators",
        update: "UPDATE operators SET national_id_enc = $2 WHERE id = $1",
        int_key: true,
    },
    SealedColumn {
        column: ENC_FLOW_DATA,
        select: "SELECT id AS key, id AS bound, data_enc AS value FROM flows",
        update: "UPDATE flows SET data_enc = $2 WHERE id = $1",
        int_key: false,
    },
    SealedColumn {
        column: crate::signing::ENC_SIGNING_KEY,
        select: "SELECT kid AS key, kid AS bound, private_enc AS value FROM signing_keys",
        update: "UPDATE signing_keys SET private_enc = $2 WHERE kid = $1",
        int_key: false,
    },
];

/// Re-encrypts the values written before ciphertexts were bound to their rows, once per
/// database (the `pending_rebinds` row is claimed by deleting it), in one transaction; how
/// many values, or `None` when there was nothing to do.
pub(crate) async fn rebind_row_values(pool: &Handle, secrets: &Secrets) -> Result<Option<u64>> {
    let mut tx = begin_write(pool).await.map_err(db)?;
    wait_for_locks(&mut tx).await.map_err(db)?;
    let claimed = sql::query("DELETE FROM pending_rebinds WHERE name = 'row_bound_values'")
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
    if claimed == 0 {
        tx.rollback().await.map_err(db)?;
        return Ok(None);
    }
    let mut n = 0;
    for sealed in &SEALED_COLUMNS {
        for r in sql::query(sealed.select)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
        {
            let row = row_aad(sealed.column, &s(&r, "bound")?);
            let Some(value) = rebind(secrets, sealed.column, &row, &s(&r, "value")?)? else {
                continue;
            };
            let update = sql::query(sealed.update);
            let update = if sealed.int_key {
                update.bind(int(&r, "key")?)
            } else {
                update.bind(s(&r, "key")?)
            };
            update.bind(value).execute(&mut *tx).await.map_err(db)?;
            n += 1;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(Some(n))
}

/// A value sealed for its column only, sealed again for its row too; `None` for a value
/// already bound to its row (written since), and for one that opens under neither (left as
/// it is and logged: it was unreadable before and stays so, and one bad row must not keep
/// every instance from starting).
fn rebind(secrets: &Secrets, column: &str, row: &str, stored: &str) -> Result<Option<String>> {
    if secrets.decrypt(row, stored).is_ok() {
        return Ok(None);
    }
    match secrets.decrypt(column, stored) {
        Ok(plain) => encrypt(secrets, row, &plain).map(Some),
        Err(e) => {
            tracing::error!(row, error = %e, "a stored value opens under no binding; left as it is");
            Ok(None)
        }
    }
}
