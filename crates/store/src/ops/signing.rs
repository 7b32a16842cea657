//! The token signing keys and the token session handles (`crate::signing`).

use super::*;
use crate::signing::{ENC_SIGNING_KEY, SigningKeyRecord};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;

fn bad(what: &str) -> DomainError {
    DomainError::Storage(format!("stored signing key is unreadable: {what}"))
}

pub(crate) async fn signing_keys(
    pool: &Handle,
    secrets: &Secrets,
    now: OffsetDateTime,
) -> Result<Vec<SigningKeyRecord>> {
    let rows = sql::query(
        "SELECT kid, public_key, private_enc, created_at, retired_at, publish_until \
         FROM signing_keys WHERE publish_until IS NULL OR publish_until > $1 \
         ORDER BY (retired_at IS NULL) DESC, created_at DESC, kid",
    )
    .bind(ts(now))
    .fetch_all(&mut *pool.reader().await.map_err(db)?)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            let get = |c: &str| sql::get::<String>(r, c).map_err(|e| bad(&e.to_string()));
            let int = |c: &str| sql::get::<Option<i64>>(r, c).map_err(|e| bad(&e.to_string()));
            let at = |v: Option<i64>| v.map(from_ts).transpose();
            Ok(SigningKeyRecord {
                kid: get("kid")?,
                public_key: B64U
                    .decode(get("public_key")?)
                    .map_err(|_| bad("public key"))?,
                private_pkcs8: secrets
                    .decrypt(
                        &row_aad(ENC_SIGNING_KEY, &get("kid")?),
                        &get("private_enc")?,
                    )
                    .map_err(DomainError::from)?,
                created_at: from_ts(int("created_at")?.ok_or_else(|| bad("created_at"))?)?,
                retired_at: at(int("retired_at")?)?,
                publish_until: at(int("publish_until")?)?,
            })
        })
        .collect()
}

const INSERT: &str =
    "INSERT INTO signing_keys (kid, public_key, private_enc, created_at) VALUES ($1, $2, $3, $4)";

pub(crate) async fn signing_key_add_first(
    pool: &Handle,
    secrets: &Secrets,
    k: &SigningKeyRecord,
) -> Result<bool> {
    let private = encrypt(secrets, &row_aad(ENC_SIGNING_KEY, &k.kid), &k.private_pkcs8)?;
    let mut w = begin_single(pool).await.map_err(db)?;
    // The unique index on the current key makes a second instance starting at the same moment
    // insert nothing; it uses the first one's key.
    let done = sql::query(
        "INSERT INTO signing_keys (kid, public_key, private_enc, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&k.kid)
    .bind(B64U.encode(&k.public_key))
    .bind(private)
    .bind(ts(k.created_at))
    .execute(&mut *w)
    .await
    .map_err(db)?;
    w.commit().await.map_err(db)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn signing_key_rotate(
    pool: &Handle,
    secrets: &Secrets,
    k: &SigningKeyRecord,
    publish_until: OffsetDateTime,
) -> Result<()> {
    let private = encrypt(secrets, &row_aad(ENC_SIGNING_KEY, &k.kid), &k.private_pkcs8)?;
    let mut tx = begin_write(pool).await.map_err(db)?;
    // Two instances rotating at once take turns: the second retires the first one's new key
    // rather than meeting the one-current-key index.
    serialize(&mut tx, "signing_keys").await.map_err(db)?;
    sql::query(
        "UPDATE signing_keys SET retired_at = $1, publish_until = $2 WHERE retired_at IS NULL",
    )
    .bind(ts(k.created_at))
    .bind(ts(publish_until))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    sql::query(INSERT)
        .bind(&k.kid)
        .bind(B64U.encode(&k.public_key))
        .bind(private)
        .bind(ts(k.created_at))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sql::query("DELETE FROM signing_keys WHERE publish_until <= $1")
        .bind(ts(k.created_at))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(())
}

pub(crate) async fn token_session_put(pool: &Handle, sid: &str, session_id: &str) -> Result<()> {
    let mut w = begin_single(pool).await.map_err(db)?;
    sql::query(
        "INSERT INTO token_sessions (sid, session_id) VALUES ($1, $2) \
         ON CONFLICT (sid) DO UPDATE SET session_id = excluded.session_id",
    )
    .bind(sid)
    .bind(session_id)
    .execute(&mut *w)
    .await
    .map_err(db)?;
    w.commit().await.map_err(db)
}

pub(crate) async fn token_session(pool: &Handle, sid: &str) -> Result<Option<String>> {
    sql::query_scalar("SELECT session_id FROM token_sessions WHERE sid = $1")
        .bind(sid)
        .fetch_optional(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)
}
