//! Web sessions (the web layer's own storage).

use super::*;

fn session_aad(id: &str) -> String {
    format!("{ENC_SESSION_DATA}|{id}")
}

pub(crate) async fn session_insert(
    pool: &Handle,
    secrets: &Secrets,
    r: &SessionRecord,
) -> Result<()> {
    let data = encrypt(secrets, &session_aad(&r.id), r.data.as_bytes())?;
    let mut w = begin_single(pool).await.map_err(db)?;
    insert_row(&mut w, r, data).await?;
    w.commit().await.map_err(db)
}

async fn insert_row(tx: &mut Tx, r: &SessionRecord, data_enc: String) -> Result<()> {
    sql::query(
        "INSERT INTO sessions (id, kind, code, data_enc, created_at, touched_at, expires_at, \
         version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&r.id)
    .bind(&r.kind)
    .bind(r.code.as_deref())
    .bind(data_enc)
    .bind(ts(r.created_at))
    .bind(ts(r.touched_at))
    .bind(ts(r.expires_at))
    .bind(r.version)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// An UPDATE guarded by the version read: a deleted session stays deleted, and a change made
/// meanwhile is reported rather than overwritten.
pub(crate) async fn session_update(
    pool: &Handle,
    secrets: &Secrets,
    r: &SessionRecord,
) -> Result<SessionSaved> {
    let data = encrypt(secrets, &session_aad(&r.id), r.data.as_bytes())?;
    let mut w = begin_single(pool).await.map_err(db)?;
    let saved = update_row(&mut w, r, data).await?;
    w.commit().await.map_err(db)?;
    Ok(saved)
}

async fn update_row(tx: &mut Tx, r: &SessionRecord, data_enc: String) -> Result<SessionSaved> {
    let done = sql::query(
        "UPDATE sessions SET kind = $3, code = $4, data_enc = $5, touched_at = $6, \
         expires_at = $7, version = version + 1 WHERE id = $1 AND version = $2 AND kind <> $8",
    )
    .bind(&r.id)
    .bind(r.version)
    .bind(&r.kind)
    .bind(r.code.as_deref())
    .bind(data_enc)
    .bind(ts(r.touched_at))
    .bind(ts(r.expires_at))
    .bind(crate::SUPERSEDED)
    .execute(&mut **tx)
    .await
    .map_err(db)?
    .rows_affected();
    if done == 1 {
        return Ok(SessionSaved::Saved(r.version + 1));
    }
    // A tombstone left by a login is as ended as a deleted row: never written to again.
    let exists: Option<i64> =
        sql::query_scalar("SELECT version FROM sessions WHERE id = $1 AND kind <> $2")
            .bind(&r.id)
            .bind(crate::SUPERSEDED)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
    Ok(match exists {
        Some(_) => SessionSaved::Changed,
        None => SessionSaved::Gone,
    })
}

/// A login's [`SessionWrite`], encrypted before the commit's transaction starts.
pub(crate) enum PreparedSession {
    Rotate {
        /// The old id and its emptied data.
        old: Option<(String, String)>,
        until: OffsetDateTime,
        record: SessionRecord,
        data_enc: String,
    },
    Update {
        record: SessionRecord,
        data_enc: String,
    },
}

impl PreparedSession {
    pub(crate) fn new(w: SessionWrite, secrets: &Secrets) -> Result<Self> {
        let data = |r: &SessionRecord| encrypt(secrets, &session_aad(&r.id), r.data.as_bytes());
        Ok(match w {
            SessionWrite::Rotate { old, until, record } => Self::Rotate {
                old: old
                    .map(|id| emptied(secrets, &id).map(|empty| (id, empty)))
                    .transpose()?,
                until,
                data_enc: data(&record)?,
                record,
            },
            SessionWrite::Update(record) => Self::Update {
                data_enc: data(&record)?,
                record,
            },
        })
    }

    /// Applies it inside the commit's transaction.
    pub(crate) async fn apply(self, tx: &mut Tx) -> Result<SessionSaved> {
        match self {
            Self::Rotate {
                old,
                until,
                record,
                data_enc,
            } => {
                if let Some((id, empty)) = old
                    && !supersede_row(tx, &id, empty, until).await?
                {
                    return Err(DomainError::FlowNotFound);
                }
                insert_row(tx, &record, data_enc).await?;
                Ok(SessionSaved::Saved(record.version))
            }
            Self::Update { record, data_enc } => match update_row(tx, &record, data_enc).await? {
                SessionSaved::Gone => Err(DomainError::FlowNotFound),
                saved => Ok(saved),
            },
        }
    }
}

/// What a tombstone holds: no data.
fn emptied(secrets: &Secrets, id: &str) -> Result<String> {
    encrypt(secrets, &session_aad(id), b"{}")
}

pub(crate) async fn session_touch(
    pool: &Handle,
    id: &str,
    touched_at: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<bool> {
    let mut w = begin_single(pool).await.map_err(db)?;
    let done = sql::query(
        "UPDATE sessions SET touched_at = $2, expires_at = $3 WHERE id = $1 AND kind <> $4",
    )
    .bind(id)
    .bind(ts(touched_at))
    .bind(ts(expires_at))
    .bind(crate::SUPERSEDED)
    .execute(&mut *w)
    .await
    .map_err(db)?
    .rows_affected();
    w.commit().await.map_err(db)?;
    Ok(done == 1)
}

pub(crate) async fn session_get(
    pool: &Handle,
    secrets: &Secrets,
    id: &str,
    now: OffsetDateTime,
) -> Result<Option<SessionRecord>> {
    let row = sql::query(
        "SELECT id, kind, code, data_enc, created_at, touched_at, expires_at, version \
         FROM sessions WHERE id = $1 AND expires_at > $2",
    )
    .bind(id)
    .bind(ts(now))
    .fetch_optional(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    row.map(|r| session_of_row(secrets, &r)).transpose()
}

/// [`session_get`] and, in the same read, the flow `flow_id` when it is that session's.
pub(crate) async fn session_get_with_flow(
    pool: &Handle,
    secrets: &Secrets,
    id: &str,
    now: OffsetDateTime,
    flow_id: &str,
) -> Result<(Option<SessionRecord>, Option<Flow>)> {
    let row = sql::query(
        "SELECT s.id, s.kind, s.code, s.data_enc, s.created_at, s.touched_at, s.expires_at, \
         s.version, f.id AS f_id, f.kind AS f_kind, f.session AS f_session, f.step AS f_step, \
         f.data_enc AS f_data_enc, f.created_at AS f_created_at, f.touched_at AS f_touched_at, \
         f.version AS f_version \
         FROM sessions s LEFT JOIN flows f ON f.id = $3 AND f.session = s.id \
         WHERE s.id = $1 AND s.expires_at > $2",
    )
    .bind(id)
    .bind(ts(now))
    .bind(flow_id)
    .fetch_optional(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    let Some(r) = row else {
        return Ok((None, None));
    };
    let session = session_of_row(secrets, &r)?;
    // A flow that cannot be read is left to the caller's own read of it, which fails as it
    // always has; the session stays readable.
    let flow = match opt(&r, "f_id")? {
        Some(_) => super::flows::flow_of_row(secrets, &r, &super::flows::FLOW_AS_F)
            .inspect_err(|e| tracing::warn!(error = %e, "reading a flow with its session"))
            .ok(),
        None => None,
    };
    Ok((Some(session), flow))
}

fn session_of_row(secrets: &Secrets, r: &DbRow) -> Result<SessionRecord> {
    let id = s(r, "id")?;
    let plain = secrets
        .decrypt(&session_aad(&id), &s(r, "data_enc")?)
        .map_err(DomainError::from)?;
    Ok(SessionRecord {
        id,
        kind: s(r, "kind")?,
        code: opt(r, "code")?,
        data: String::from_utf8(plain).map_err(|e| corrupt("session", e))?,
        created_at: time_at(r, "created_at")?,
        touched_at: time_at(r, "touched_at")?,
        expires_at: time_at(r, "expires_at")?,
        version: int(r, "version")?,
    })
}

/// Every live session, oldest first.
pub(crate) async fn sessions_live(
    pool: &Handle,
    secrets: &Secrets,
    now: OffsetDateTime,
) -> Result<Vec<SessionRecord>> {
    let rows = sql::query(
        "SELECT id, kind, code, data_enc, created_at, touched_at, expires_at, version \
         FROM sessions WHERE expires_at > $1 ORDER BY created_at, id",
    )
    .bind(ts(now))
    .fetch_all(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    rows.iter().map(|r| session_of_row(secrets, r)).collect()
}

pub(crate) async fn session_supersede(
    pool: &Handle,
    secrets: &Secrets,
    id: &str,
    until: OffsetDateTime,
) -> Result<()> {
    let empty = emptied(secrets, id)?;
    let mut tx = begin_write(pool).await.map_err(db)?;
    supersede_row(&mut tx, id, empty, until).await?;
    tx.commit().await.map_err(db)
}

/// The live session `id` becomes a tombstone until `until`, and its token handles go; whether
/// there was one. The session's row is locked before its token handles, in the order a delete
/// of the session (which cascades to them) takes.
async fn supersede_row(
    tx: &mut Tx,
    id: &str,
    empty: String,
    until: OffsetDateTime,
) -> Result<bool> {
    let n = sql::query(
        "UPDATE sessions SET kind = $2, code = NULL, data_enc = $3, expires_at = $4, \
         version = version + 1 WHERE id = $1 AND kind <> $2",
    )
    .bind(id)
    .bind(crate::SUPERSEDED)
    .bind(empty)
    .bind(ts(until))
    .execute(&mut **tx)
    .await
    .map_err(db)?
    .rows_affected();
    sql::query("DELETE FROM token_sessions WHERE session_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(n == 1)
}

pub(crate) async fn session_delete(pool: &Handle, id: &str) -> Result<()> {
    let mut w = begin_single(pool).await.map_err(db)?;
    sql::query("DELETE FROM sessions WHERE id = $1")
        .bind(id)
        .execute(&mut *w)
        .await
        .map_err(db)?;
    w.commit().await.map_err(db)
}

pub(crate) async fn session_delete_expired(pool: &Handle, now: OffsetDateTime) -> Result<u64> {
    let mut w = begin_single(pool).await.map_err(db)?;
    let n = sql::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(ts(now))
        .execute(&mut *w)
        .await
        .map_err(db)?
        .rows_affected();
    w.commit().await.map_err(db)?;
    Ok(n)
}
