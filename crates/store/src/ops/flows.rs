//! Flows and their challenges.

use super::*;

pub(crate) async fn insert_flow(pool: &Handle, secrets: &Secrets, flow: &Flow) -> Result<()> {
    let f = FlowRow::new(flow, secrets)?;
    let mut w = begin_single(pool).await.map_err(db)?;
    sql::query(
        "INSERT INTO flows (id, kind, session, step, data_enc, created_at, touched_at, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(f.id)
    .bind(f.kind)
    .bind(f.session)
    .bind(f.step)
    .bind(f.data_enc)
    .bind(f.created_at)
    .bind(f.touched_at)
    .bind(f.version)
    .execute(&mut *w)
    .await
    .map_err(db)?;
    w.commit().await.map_err(db)
}

pub(crate) async fn insert_flow_capped(
    pool: &Handle,
    secrets: &Secrets,
    flow: &Flow,
    max: u64,
    live_since: OffsetDateTime,
    challenge: Option<&StoredChallenge>,
) -> Result<()> {
    if let Some(c) = challenge
        && (c.flow_id != flow.id || c.session != flow.session || c.step != flow.step)
    {
        return Err(DomainError::Storage(
            "a flow's first challenge must be for that flow, its session and its step".into(),
        ));
    }
    let f = FlowRow::new(flow, secrets)?;
    let (live_since, max) = (ts(live_since), i64::try_from(max).unwrap_or(i64::MAX));
    // One statement counts and inserts. SQLite's writers take turns, so no other write comes
    // in between; on PostgreSQL a function makes the starts of one session take turns on a
    // lock and counts after it, so the count each checks is the one it adds to. The flow's
    // first challenge goes in with it or not at all: in the same transaction on SQLite, in
    // the same statement on PostgreSQL (a round trip and a commit fewer).
    const CAPPED: &str = "INSERT INTO flows (id, kind, session, step, data_enc, created_at, \
        touched_at, version) SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE (SELECT COUNT(*) FROM \
        flows WHERE session = $3 AND touched_at > $9) < $10";
    const CAPPED_FN: &str =
        "SELECT certreg_insert_flow_capped($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) AS ok";
    const CAPPED_FN_WITH_CHALLENGE: &str = "WITH started AS MATERIALIZED (SELECT \
        certreg_insert_flow_capped($10, $11, $12, $13, $14, $15, $16, $17, $18, $19) AS ok), \
        challenge AS (INSERT INTO challenges (id, flow_id, session, step, purpose, origin, nonce, \
        issued_at, expires_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM started WHERE ok) \
        SELECT ok FROM started";
    let bind_flow = |q: Query<'static>| {
        q.bind(f.id.clone())
            .bind(f.kind)
            .bind(f.session.clone())
            .bind(f.step)
            .bind(f.data_enc.clone())
            .bind(f.created_at)
            .bind(f.touched_at)
            .bind(f.version)
            .bind(live_since)
            .bind(max)
    };
    let mut w = match challenge {
        Some(_) if ONE_WRITER => begin_write(pool).await,
        _ => begin_single(pool).await,
    }
    .map_err(db)?;
    let inserted = if ONE_WRITER {
        let inserted = bind_flow(sql::query(CAPPED))
            .execute(&mut *w)
            .await
            .map_err(db)?
            .rows_affected()
            == 1;
        if let (true, Some(c)) = (inserted, challenge) {
            bind_challenge(sql::query(INSERT_CHALLENGE), c)
                .execute(&mut *w)
                .await
                .map_err(fk("challenges_flow_id_fkey"))?;
        }
        inserted
    } else {
        let q = match challenge {
            Some(c) => bind_flow(bind_challenge(sql::query(CAPPED_FN_WITH_CHALLENGE), c)),
            None => bind_flow(sql::query(CAPPED_FN)),
        };
        let row = q
            .fetch_one(&mut *w)
            .await
            .map_err(fk("challenges_flow_id_fkey"))?;
        col::<bool>(&row, "ok")?
    };
    w.commit().await.map_err(db)?;
    if inserted {
        Ok(())
    } else {
        Err(DomainError::TooManyFlows)
    }
}

const INSERT_CHALLENGE: &str = "INSERT INTO challenges \
    (id, flow_id, session, step, purpose, origin, nonce, issued_at, expires_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Binds a challenge's columns as `$1` … `$9`, in the order of [`INSERT_CHALLENGE`].
fn bind_challenge<'q>(q: Query<'q>, c: &StoredChallenge) -> Query<'q> {
    q.bind(c.id.clone())
        .bind(c.flow_id.clone())
        .bind(c.session.clone())
        .bind(c.step.as_str())
        .bind(c.purpose.clone())
        .bind(c.origin.clone())
        .bind(c.nonce.clone())
        .bind(ts(c.issued_at))
        .bind(ts(c.expires_at))
}

pub(crate) async fn flow(pool: &Handle, secrets: &Secrets, id: &str) -> Result<Option<Flow>> {
    let row = sql::query(
        "SELECT id, kind, session, step, data_enc, created_at, touched_at, version \
         FROM flows WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    row.map(|r| flow_of_row(secrets, &r, &FLOW)).transpose()
}

/// The names a query gives a flow's columns.
pub(super) struct FlowColumns([&'static str; 8]);

/// As the table names them.
pub(super) const FLOW: FlowColumns = FlowColumns([
    "id",
    "kind",
    "session",
    "step",
    "data_enc",
    "created_at",
    "touched_at",
    "version",
]);

/// With `f_` before each name, beside another table's columns.
pub(super) const FLOW_AS_F: FlowColumns = FlowColumns([
    "f_id",
    "f_kind",
    "f_session",
    "f_step",
    "f_data_enc",
    "f_created_at",
    "f_touched_at",
    "f_version",
]);

/// The flow in `r`, its columns named as `names` says.
pub(super) fn flow_of_row(secrets: &Secrets, r: &DbRow, names: &FlowColumns) -> Result<Flow> {
    let [
        id,
        kind,
        session,
        flow_step,
        data_enc,
        created_at,
        touched_at,
        version,
    ] = names.0;
    let id = s(r, id)?;
    Ok(Flow {
        kind: flow_kind(&s(r, kind)?)?,
        session: s(r, session)?,
        step: step(&s(r, flow_step)?)?,
        data: flow_data(secrets, &id, &s(r, data_enc)?)?,
        created_at: time_at(r, created_at)?,
        touched_at: time_at(r, touched_at)?,
        version: int(r, version)?,
        id,
    })
}

pub(crate) async fn insert_challenge(pool: &Handle, c: &StoredChallenge) -> Result<()> {
    let mut w = begin_single(pool).await.map_err(db)?;
    bind_challenge(sql::query(INSERT_CHALLENGE), c)
        .execute(&mut *w)
        .await
        .map_err(fk("challenges_flow_id_fkey"))?;
    w.commit().await.map_err(db)
}

pub(crate) async fn consume_challenge(
    pool: &Handle,
    id: &str,
    now: OffsetDateTime,
) -> Result<StoredChallenge> {
    let mut w = begin_single(pool).await.map_err(db)?;
    // One statement: the database decides which of two racing requests marks it used.
    let row = sql::query(
        "UPDATE challenges SET used_at = $2 WHERE id = $1 AND used_at IS NULL \
         RETURNING id, flow_id, session, step, purpose, origin, nonce, issued_at, expires_at",
    )
    .bind(id)
    .bind(ts(now))
    .fetch_optional(&mut *w)
    .await
    .map_err(db)?
    .ok_or(DomainError::ChallengeUsed)?;
    w.commit().await.map_err(db)?;
    Ok(StoredChallenge {
        id: s(&row, "id")?,
        flow_id: s(&row, "flow_id")?,
        session: s(&row, "session")?,
        step: step(&s(&row, "step")?)?,
        purpose: s(&row, "purpose")?,
        origin: s(&row, "origin")?,
        nonce: col(&row, "nonce")?,
        issued_at: time_at(&row, "issued_at")?,
        expires_at: time_at(&row, "expires_at")?,
    })
}

pub(crate) async fn flow_delete_idle(pool: &Handle, before: OffsetDateTime) -> Result<u64> {
    let mut w = begin_single(pool).await.map_err(db)?;
    let n = sql::query("DELETE FROM flows WHERE touched_at < $1")
        .bind(ts(before))
        .execute(&mut *w)
        .await
        .map_err(db)?
        .rows_affected();
    w.commit().await.map_err(db)?;
    Ok(n)
}
