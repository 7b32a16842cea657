//! The audit log: appends, the keyed chain's seal and head, its verification, and the back
//! office's search.

use super::*;

pub(crate) async fn append_audit(pool: &Handle, secrets: &Secrets, e: &AuditEvent) -> Result<()> {
    let mut tx = begin_write(pool).await.map_err(db)?;
    append(&mut tx, e, &ChainKey::new(secrets)).await?;
    tx.commit().await.map_err(db)
}

/// Appends `e` to the log inside `tx`, chained to the head and keyed with `key`.
pub(super) async fn append(tx: &mut Tx, e: &AuditEvent, key: &ChainKey) -> Result<()> {
    // Bumping the head takes its row lock (PostgreSQL) and returns the previous link.
    let head = sql::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    append_at(tx, head_of(&head)?, e, key).await
}

/// The chain head in a row of `audit_head` (`seq`, `hash`): as read, or as a bump handed it
/// out (`… RETURNING seq, hash`), the place of the next row and its previous link.
pub(super) fn head_of(head: &DbRow) -> Result<(i64, String)> {
    Ok((int(head, "seq")?, s(head, "hash")?))
}

/// Appends `e` as number `seq` after `prev_hash`: a place in the chain the head was already
/// bumped for, inside `tx`.
pub(super) async fn append_at(
    tx: &mut Tx,
    (seq, prev_hash): (i64, String),
    e: &AuditEvent,
    key: &ChainKey,
) -> Result<()> {
    let row = AuditRow::new(seq, prev_hash, e, key);
    // The row and the head's new link: one statement where an INSERT can run inside a WITH
    // (PostgreSQL: a round trip fewer), two on SQLite.
    const INSERT: &str = "INSERT INTO audit_log (seq, at, actor, code, cert, client, action, \
        outcome, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    const INSERT_AND_LINK: &str = "WITH logged AS (INSERT INTO audit_log (seq, at, actor, code, \
        cert, client, action, outcome, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, \
        $7, $8, $9, $10, $11) RETURNING hash) UPDATE audit_head SET hash = (SELECT hash FROM \
        logged) WHERE id = 1";
    let statement = if WRITING_WITH {
        INSERT_AND_LINK
    } else {
        INSERT
    };
    sql::query(statement)
        .bind(row.seq)
        .bind(row.at)
        .bind(row.actor)
        .bind(row.code)
        .bind(row.cert)
        .bind(row.client)
        .bind(row.action)
        .bind(row.outcome)
        .bind(row.detail)
        .bind(row.prev_hash)
        .bind(&row.hash)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    if !WRITING_WITH {
        sql::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
            .bind(row.hash)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// Seals a chain that ends in unkeyed (version 1) rows with a keyed row naming its head;
/// whether it did.
pub(crate) async fn seal_audit_chain(
    pool: &Handle,
    secrets: &Secrets,
    at: OffsetDateTime,
) -> Result<bool> {
    let mut tx = begin_write(pool).await.map_err(db)?;
    // Taking the head's row lock first: two instances starting together seal once.
    let head = sql::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let (seq, hash) = head_of(&head)?;
    if seq == 0 || is_keyed(&hash) {
        tx.rollback().await.map_err(db)?;
        return Ok(false);
    }
    append(&mut tx, &seal_row(at, seq, &hash), &ChainKey::new(secrets)).await?;
    tx.commit().await.map_err(db)?;
    Ok(true)
}

/// The chain head: the last row's sequence number and hash (0 and the genesis before any).
pub(crate) async fn audit_head(pool: &Handle) -> Result<(i64, String)> {
    let head = sql::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    head_of(&head)
}

/// Audit events matching the filter, newest first, at most `filter.limit` (≤ 200).
pub(crate) async fn audit_search(
    pool: &Handle,
    f: &crate::AuditFilter,
) -> Result<Vec<(i64, AuditEvent)>> {
    let mut q = sql::QueryBuilder::new(
        "SELECT seq, at, actor, code, cert, client, action, outcome, detail FROM audit_log \
         WHERE 1 = 1",
    );
    if let Some(code) = &f.code {
        q.push(" AND code = ").push_bind(code.as_str().to_string());
    }
    if let Some(serial) = &f.serial {
        // `issuer|serial`; serials are upper-case hex, so no LIKE wildcard can hide in one.
        q.push(" AND cert LIKE ")
            .push_bind(format!("%|{}", serial.as_str()));
    }
    if let Some(from) = f.from {
        q.push(" AND at >= ").push_bind(ts(from));
    }
    if let Some(to) = f.to {
        q.push(" AND at < ").push_bind(ts(to));
    }
    if let Some(outcome) = &f.outcome {
        q.push(" AND outcome = ").push_bind(outcome.clone());
    }
    q.push(" ORDER BY seq DESC LIMIT ")
        .push_bind(f.limit.clamp(1, crate::AUDIT_SEARCH_MAX));
    let rows = q
        .build()
        .fetch_all(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let detail = s(r, "detail")?;
            Ok((
                int(r, "seq")?,
                AuditEvent {
                    at: time_at(r, "at")?,
                    actor: s(r, "actor")?,
                    code: opt(r, "code")?.map(crate::codec::code).transpose()?,
                    cert: opt(r, "cert")?,
                    client: opt(r, "client")?,
                    action: s(r, "action")?,
                    outcome: s(r, "outcome")?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                },
            ))
        })
        .collect()
}

pub(crate) async fn verify_audit(pool: &Handle, secrets: &Secrets) -> Result<AuditReport> {
    // One read transaction: the head and the rows come from the same snapshot even while
    // appends go on.
    let mut tx = begin_read(pool).await.map_err(db)?;
    let head = sql::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let mut check = ChainCheck::new(ChainKey::new(secrets));
    let mut after = 0i64;
    loop {
        let rows = sql::query(
            "SELECT seq, at, actor, code, cert, client, action, outcome, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let Some(last) = rows.last() else { break };
        after = int(last, "seq")?;
        for r in &rows {
            check.push(&AuditRow {
                seq: int(r, "seq")?,
                at: int(r, "at")?,
                actor: s(r, "actor")?,
                code: opt(r, "code")?,
                cert: opt(r, "cert")?,
                client: opt(r, "client")?,
                action: s(r, "action")?,
                outcome: s(r, "outcome")?,
                detail: s(r, "detail")?,
                prev_hash: s(r, "prev_hash")?,
                hash: s(r, "hash")?,
            });
        }
    }
    let (seq, hash) = head_of(&head)?;
    let report = check.finish(seq, &hash);
    tx.rollback().await.map_err(db)?;
    Ok(report)
}
