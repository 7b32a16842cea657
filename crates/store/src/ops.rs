//! Every query and the transaction of a commit, written once and compiled once per backend:
//! `sqlite.rs` and `pg.rs` both include this file as their `ops` module, and it runs against
//! their `DB`. One SQL text with `$n` placeholders serves both; the code stays concrete (no
//! `sqlx::Any`, no generic bounds).
//!
//! Every write waits for its backend's turn first (`begin_write` for a transaction, `write_turn`
//! around a single statement): on SQLite a lone statement that skipped the queue would sleep in
//! the busy handler behind the queued writers and hold up the next one in turn.

use super::{DB, Handle, WriteTx, begin_read, begin_write, serialize, wait_for_locks, write_turn};
use crate::audit::{AuditRow, ChainCheck, ChainKey, is_keyed, seal_row};
use crate::codec::*;
use crate::error::map_db_error;
use crate::secrets::Secrets;
use crate::{PersonRole, SessionRecord, SessionSaved};
use domain::calendar::{CalendarDay, check_days};
use domain::flow::Flow;
use domain::model::*;
use domain::store::*;
use domain::types::*;
use domain::{DomainError, Result};
use sqlx::{Pool, Row};
use time::OffsetDateTime;

type Tx = WriteTx;
type DbRow = <DB as sqlx::Database>::Row;
type Query<'q> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>;

fn db(e: sqlx::Error) -> DomainError {
    map_db_error(e, None)
}

/// For a statement that can violate exactly one foreign key (SQLite does not name it).
fn fk(name: &'static str) -> impl FnOnce(sqlx::Error) -> DomainError {
    move |e| map_db_error(e, Some(name))
}

fn col<'r, T>(row: &'r DbRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    row.try_get(name)
        .map_err(|e| DomainError::Storage(format!("column {name}: {e}")))
}

fn s(row: &DbRow, name: &str) -> Result<String> {
    col(row, name)
}

fn opt(row: &DbRow, name: &str) -> Result<Option<String>> {
    col(row, name)
}

fn int(row: &DbRow, name: &str) -> Result<i64> {
    col(row, name)
}

fn time_at(row: &DbRow, name: &str) -> Result<OffsetDateTime> {
    from_ts(int(row, name)?)
}

fn cert(row: &DbRow, p: &str) -> Result<CertRef> {
    Ok(CertRef {
        issuer: s(row, &format!("{p}_issuer"))?,
        serial: serial(s(row, &format!("{p}_serial"))?)?,
        subject: s(row, &format!("{p}_subject"))?,
        sha256: s(row, &format!("{p}_sha256"))?,
        not_before: time_at(row, &format!("{p}_not_before"))?,
        not_after: time_at(row, &format!("{p}_not_after"))?,
    })
}

fn bind_cert(q: Query<'_>, c: CertCols) -> Query<'_> {
    q.bind(c.issuer)
        .bind(c.serial)
        .bind(c.subject)
        .bind(c.sha256)
        .bind(c.not_before)
        .bind(c.not_after)
}

// ---------------------------------------------------------------------------------------------
// Agencies

pub(crate) async fn agency(pool: &Pool<DB>, code: &InstitutionCode) -> Result<Option<Agency>> {
    let row =
        sqlx::query("SELECT code, name, county, org_identifier FROM agencies WHERE code = $1")
            .bind(code.as_str())
            .fetch_optional(pool)
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
        sqlx::query(
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

// ---------------------------------------------------------------------------------------------
// Flows and challenges

pub(crate) async fn insert_flow(pool: &Handle, secrets: &Secrets, flow: &Flow) -> Result<()> {
    let f = FlowRow::new(flow, secrets)?;
    let _turn = write_turn(pool).await;
    sqlx::query(
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
    .execute(&**pool)
    .await
    .map_err(db)?;
    Ok(())
}

pub(crate) async fn insert_flow_capped(
    pool: &Handle,
    secrets: &Secrets,
    flow: &Flow,
    max: u64,
    live_since: OffsetDateTime,
) -> Result<()> {
    let f = FlowRow::new(flow, secrets)?;
    let mut tx = begin_write(pool).await.map_err(db)?;
    // The starts of one session take turns, so the count each checks is the one it adds to.
    serialize(&mut tx, &format!("flows:{}", f.session))
        .await
        .map_err(db)?;
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM flows WHERE session = $1 AND touched_at > $2")
            .bind(&f.session)
            .bind(ts(live_since))
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
    if u64::try_from(n).unwrap_or(0) >= max {
        tx.rollback().await.map_err(db)?;
        return Err(DomainError::TooManyFlows);
    }
    sqlx::query(
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
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(crate) async fn flow(pool: &Pool<DB>, secrets: &Secrets, id: &str) -> Result<Option<Flow>> {
    let row = sqlx::query(
        "SELECT id, kind, session, step, data_enc, created_at, touched_at, version \
         FROM flows WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    row.map(|r| {
        Ok(Flow {
            id: s(&r, "id")?,
            kind: flow_kind(&s(&r, "kind")?)?,
            session: s(&r, "session")?,
            step: step(&s(&r, "step")?)?,
            data: flow_data(secrets, &s(&r, "id")?, &s(&r, "data_enc")?)?,
            created_at: time_at(&r, "created_at")?,
            touched_at: time_at(&r, "touched_at")?,
            version: int(&r, "version")?,
        })
    })
    .transpose()
}

pub(crate) async fn insert_challenge(pool: &Handle, c: &StoredChallenge) -> Result<()> {
    let _turn = write_turn(pool).await;
    sqlx::query(
        "INSERT INTO challenges \
         (id, flow_id, session, step, purpose, origin, nonce, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&c.id)
    .bind(&c.flow_id)
    .bind(&c.session)
    .bind(c.step.as_str())
    .bind(&c.purpose)
    .bind(&c.origin)
    .bind(&c.nonce)
    .bind(ts(c.issued_at))
    .bind(ts(c.expires_at))
    .execute(&**pool)
    .await
    .map_err(fk("challenges_flow_id_fkey"))?;
    Ok(())
}

pub(crate) async fn consume_challenge(
    pool: &Handle,
    id: &str,
    now: OffsetDateTime,
) -> Result<StoredChallenge> {
    let _turn = write_turn(pool).await;
    // One statement: the database decides which of two racing requests marks it used.
    let row = sqlx::query(
        "UPDATE challenges SET used_at = $2 WHERE id = $1 AND used_at IS NULL \
         RETURNING id, flow_id, session, step, purpose, origin, nonce, issued_at, expires_at",
    )
    .bind(id)
    .bind(ts(now))
    .fetch_optional(&**pool)
    .await
    .map_err(db)?
    .ok_or(DomainError::ChallengeUsed)?;
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

// ---------------------------------------------------------------------------------------------
// Commit

const INSERT_REGISTRATION: &str = "INSERT INTO registrations (code, \
    org_issuer, org_serial, org_subject, org_sha256, org_not_before, org_not_after, \
    org_identifier, org_name, \
    admin_issuer, admin_serial, admin_subject, admin_sha256, admin_not_before, admin_not_after, \
    admin_holder_name, admin_id_last4, admin_id_enc, admin_id_hash, \
    contact_name, contact_email, contact_phone, contact_phone_ext, contact_mobile, contact_unit, \
    contact_title, registered_at, updated_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
    $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, \
    $27, $28, $29)";

// Same placeholders as the INSERT; $30 is the version the caller read.
const REPLACE_REGISTRATION: &str = "UPDATE registrations SET \
    org_issuer = $2, org_serial = $3, org_subject = $4, org_sha256 = $5, org_not_before = $6, \
    org_not_after = $7, org_identifier = $8, org_name = $9, \
    admin_issuer = $10, admin_serial = $11, admin_subject = $12, admin_sha256 = $13, \
    admin_not_before = $14, admin_not_after = $15, admin_holder_name = $16, \
    admin_id_last4 = $17, admin_id_enc = $18, admin_id_hash = $19, \
    contact_name = $20, contact_email = $21, contact_phone = $22, contact_phone_ext = $23, \
    contact_mobile = $24, contact_unit = $25, contact_title = $26, registered_at = $27, \
    updated_at = $28, version = $29 WHERE code = $1 AND version = $30";

fn bind_registration(q: Query<'_>, r: RegistrationRow) -> Query<'_> {
    let q = bind_cert(q.bind(r.code), r.org)
        .bind(r.org_identifier)
        .bind(r.org_name);
    bind_cert(q, r.admin)
        .bind(r.admin_holder_name)
        .bind(r.admin_id_last4)
        .bind(r.admin_id_enc)
        .bind(r.admin_id_hash)
        .bind(r.contact_name)
        .bind(r.contact_email)
        .bind(r.contact_phone)
        .bind(r.contact_phone_ext)
        .bind(r.contact_mobile)
        .bind(r.contact_unit)
        .bind(r.contact_title)
        .bind(r.registered_at)
        .bind(r.updated_at)
        .bind(r.version)
}

/// A commit with everything encrypted and converted before the transaction starts, so the
/// write lock is held only for the statements.
struct Prepared {
    flow: Option<FlowRow>,
    registration: Option<(RegistrationRow, Option<i64>)>,
    history: Vec<ReplacedCert>,
    operator: Option<PreparedOperator>,
    review: Option<ReviewWrite>,
    receipt: Option<Receipt>,
    audit: Vec<AuditEvent>,
    end_admin_sessions: Option<InstitutionCode>,
    registration_guard: Option<(InstitutionCode, i64)>,
}

enum PreparedOperator {
    Insert(OperatorRow),
    Update {
        id: i64,
        row: OperatorRow,
        expected_version: i64,
    },
    LearnCert {
        code: String,
        id: i64,
        serial: String,
        issuer: String,
        not_after: i64,
    },
    Delete {
        code: String,
        id: i64,
        expected_version: i64,
    },
}

impl Prepared {
    fn new(c: Commit, secrets: &Secrets) -> Result<Self> {
        let registration = match &c.registration {
            None => None,
            Some(RegistrationWrite::Insert(r)) => Some((RegistrationRow::new(r, secrets)?, None)),
            Some(RegistrationWrite::Replace {
                registration,
                expected_version,
            }) => {
                let mut row = RegistrationRow::new(registration, secrets)?;
                // The trait's contract: the stored row gets expected_version + 1.
                row.version = expected_version + 1;
                Some((row, Some(*expected_version)))
            }
        };
        let operator = match &c.operator {
            None => None,
            Some(OperatorWrite::Insert { code, input, at }) => Some(PreparedOperator::Insert(
                OperatorRow::new(code, input, *at, secrets)?,
            )),
            Some(OperatorWrite::Update {
                code,
                id,
                input,
                expected_version,
                at,
            }) => Some(PreparedOperator::Update {
                id: *id,
                row: OperatorRow::new(code, input, *at, secrets)?,
                expected_version: *expected_version,
            }),
            Some(OperatorWrite::LearnCert {
                code,
                id,
                serial,
                cert,
            }) => Some(PreparedOperator::LearnCert {
                code: code.as_str().to_string(),
                id: *id,
                serial: serial.as_str().to_string(),
                issuer: cert.issuer.clone(),
                not_after: ts(cert.not_after),
            }),
            Some(OperatorWrite::Delete {
                code,
                id,
                expected_version,
            }) => Some(PreparedOperator::Delete {
                code: code.as_str().to_string(),
                id: *id,
                expected_version: *expected_version,
            }),
        };
        Ok(Self {
            flow: c
                .flow
                .as_ref()
                .map(|f| FlowRow::new(f, secrets))
                .transpose()?,
            registration,
            history: c.history,
            operator,
            review: c.review,
            receipt: c.receipt,
            audit: c.audit,
            end_admin_sessions: c.end_admin_sessions,
            registration_guard: c.registration_guard,
        })
    }
}

pub(crate) async fn commit(pool: &Handle, secrets: &Secrets, c: Commit) -> Result<Committed> {
    let p = Prepared::new(c, secrets)?;
    let key = ChainKey::new(secrets);
    let mut tx = begin_write(pool).await.map_err(db)?;
    match apply(&mut tx, p, &key).await {
        Ok(done) => {
            tx.commit().await.map_err(db)?;
            Ok(done)
        }
        Err(e) => {
            // Dropping the transaction would roll back too; this returns the connection clean.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

async fn apply(tx: &mut Tx, p: Prepared, key: &ChainKey) -> Result<Committed> {
    let mut done = Committed::default();

    // The flow first: a double submit of one step stops here, before touching anything else.
    if let Some(f) = p.flow {
        let n = sqlx::query(
            "UPDATE flows SET step = $2, data_enc = $3, touched_at = $4, version = $5 \
             WHERE id = $1 AND version = $6",
        )
        .bind(f.id)
        .bind(f.step)
        .bind(f.data_enc)
        .bind(f.touched_at)
        .bind(f.version)
        .bind(f.version - 1)
        .execute(&mut **tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n != 1 {
            return Err(DomainError::Conflict);
        }
    }

    // The version the change was checked against, re-checked under the row's lock.
    if let Some((code, version)) = p.registration_guard {
        let n = sqlx::query(
            "UPDATE registrations SET version = version WHERE code = $1 AND version = $2",
        )
        .bind(code.as_str().to_string())
        .bind(version)
        .execute(&mut **tx)
        .await
        .map_err(db)?
        .rows_affected();
        if n != 1 {
            return Err(DomainError::RegistrationChanged);
        }
    }

    match p.registration {
        None => {}
        Some((row, None)) => {
            bind_registration(sqlx::query(INSERT_REGISTRATION), row)
                .execute(&mut **tx)
                .await
                .map_err(fk("registrations_code_fkey"))?;
        }
        Some((row, Some(expected))) => {
            let n = bind_registration(sqlx::query(REPLACE_REGISTRATION), row)
                .bind(expected)
                .execute(&mut **tx)
                .await
                .map_err(db)?
                .rows_affected();
            if n != 1 {
                return Err(DomainError::RegistrationChanged);
            }
        }
    }

    for h in p.history {
        let q = sqlx::query(
            "INSERT INTO cert_history (code, kind, cert_issuer, cert_serial, cert_subject, \
             cert_sha256, cert_not_before, cert_not_after, replaced_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(h.code.as_str().to_string())
        .bind(cert_kind_str(h.kind));
        bind_cert(q, CertCols::new(&h.cert))
            .bind(ts(h.replaced_at))
            .execute(&mut **tx)
            .await
            .map_err(fk("cert_history_code_fkey"))?;
    }

    match p.operator {
        None => {}
        Some(PreparedOperator::Insert(o)) => {
            let row = sqlx::query(
                "INSERT INTO operators (code, serial, name, national_id_enc, national_id_hash, \
                 functions, updated_at, version, cert_issuer, cert_not_after) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9) RETURNING id",
            )
            .bind(o.code)
            .bind(o.serial)
            .bind(o.name)
            .bind(o.national_id_enc)
            .bind(o.national_id_hash)
            .bind(o.functions)
            .bind(o.updated_at)
            .bind(o.cert_issuer)
            .bind(o.cert_not_after)
            .fetch_one(&mut **tx)
            .await
            .map_err(fk("operators_code_fkey"))?;
            done.operator_id = Some(int(&row, "id")?);
        }
        Some(PreparedOperator::Update {
            id,
            row: o,
            expected_version,
        }) => {
            let code = o.code.clone();
            // A read certificate replaces what is on file; a typed serial keeps it only while
            // the serial stays the same (another card's issuer and notAfter are unknown).
            let n = sqlx::query(
                "UPDATE operators SET \
                 cert_issuer = CASE WHEN $10 THEN $11 WHEN serial = $3 THEN cert_issuer END, \
                 cert_not_after = CASE WHEN $10 THEN $12 WHEN serial = $3 THEN cert_not_after END, \
                 serial = $3, name = $4, national_id_enc = $5, \
                 national_id_hash = $6, functions = $7, updated_at = $8, version = version + 1 \
                 WHERE id = $1 AND code = $2 AND version = $9",
            )
            .bind(id)
            .bind(o.code)
            .bind(o.serial)
            .bind(o.name)
            .bind(o.national_id_enc)
            .bind(o.national_id_hash)
            .bind(o.functions)
            .bind(o.updated_at)
            .bind(expected_version)
            .bind(o.cert_issuer.is_some())
            .bind(o.cert_issuer)
            .bind(o.cert_not_after)
            .execute(&mut **tx)
            .await
            .map_err(db)?
            .rows_affected();
            if n != 1 {
                return Err(missing_or_conflict(tx, id, &code).await);
            }
        }
        Some(PreparedOperator::LearnCert {
            code,
            id,
            serial,
            issuer,
            not_after,
        }) => {
            sqlx::query(
                "UPDATE operators SET cert_issuer = $1, cert_not_after = $2 \
                 WHERE id = $3 AND code = $4 AND serial = $5 AND cert_issuer IS NULL",
            )
            .bind(issuer)
            .bind(not_after)
            .bind(id)
            .bind(code)
            .bind(serial)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        }
        Some(PreparedOperator::Delete {
            code,
            id,
            expected_version,
        }) => {
            let n =
                sqlx::query("DELETE FROM operators WHERE id = $1 AND code = $2 AND version = $3")
                    .bind(id)
                    .bind(&code)
                    .bind(expected_version)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?
                    .rows_affected();
            if n != 1 {
                return Err(missing_or_conflict(tx, id, &code).await);
            }
        }
    }

    match p.review {
        None => {}
        Some(ReviewWrite::Insert(r)) => {
            let d = DecisionCols::new(&r.state);
            let q = sqlx::query(
                "INSERT INTO reviews (code, org_issuer, org_serial, org_subject, org_sha256, \
                 org_not_before, org_not_after, org_identifier, org_name, on_file, \
                 applicant_name, applicant_phone, filed_at, state, decided_at, effective, \
                 reviewer, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                 $14, $15, $16, $17, $18) RETURNING id",
            )
            .bind(r.code.as_str().to_string());
            let row = bind_cert(q, CertCols::new(&r.org.cert))
                .bind(r.org.org_identifier.as_str().to_string())
                .bind(r.org.org_name.clone())
                .bind(r.on_file.as_ref().map(|o| o.as_str().to_string()))
                .bind(r.applicant_name.as_str().to_string())
                .bind(r.applicant_phone.as_str().to_string())
                .bind(ts(r.filed_at))
                .bind(d.state)
                .bind(d.decided_at)
                .bind(d.effective)
                .bind(d.reviewer)
                .bind(d.note)
                .fetch_one(&mut **tx)
                .await
                .map_err(fk("reviews_code_fkey"))?;
            done.review_id = Some(int(&row, "id")?);
        }
        Some(ReviewWrite::Decide {
            id,
            state,
            reviewer_id,
        }) => {
            if state == ReviewState::Pending {
                return Err(DomainError::Conflict);
            }
            // The reviewer's row, locked until the commit: a reviewer disabled before this
            // point records nothing, and one being disabled now waits for the decision.
            let active =
                sqlx::query("UPDATE reviewers SET active = active WHERE id = $1 AND active")
                    .bind(reviewer_id)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?
                    .rows_affected();
            if active != 1 {
                return Err(DomainError::NotReviewer);
            }
            let d = DecisionCols::new(&state);
            let n = sqlx::query(
                "UPDATE reviews SET state = $2, decided_at = $3, effective = $4, reviewer = $5, \
                 note = $6 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(d.state)
            .bind(d.decided_at)
            .bind(d.effective)
            .bind(d.reviewer)
            .bind(d.note)
            .execute(&mut **tx)
            .await
            .map_err(db)?
            .rows_affected();
            if n != 1 {
                return Err(DomainError::Conflict);
            }
        }
    }

    if let Some(r) = p.receipt {
        sqlx::query("INSERT INTO receipts (code, kind, at, review_id) VALUES ($1, $2, $3, $4)")
            .bind(r.code.as_str().to_string())
            .bind(r.kind.as_str())
            .bind(ts(r.at))
            .bind(done.review_id.or(r.review_id))
            .execute(&mut **tx)
            .await
            .map_err(fk("receipts_code_fkey"))?;
    }

    if let Some(code) = p.end_admin_sessions {
        sqlx::query("DELETE FROM sessions WHERE kind = 'admin' AND code = $1")
            .bind(code.as_str().to_string())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }

    // Last: appenders wait on the chain head's row lock, and holding it last means a
    // transaction that holds it never waits for anything else (no deadlock).
    for e in &p.audit {
        append(tx, e, key).await?;
    }
    Ok(done)
}

async fn missing_or_conflict(tx: &mut Tx, id: i64, code: &str) -> DomainError {
    let found = sqlx::query("SELECT id FROM operators WHERE id = $1 AND code = $2")
        .bind(id)
        .bind(code)
        .fetch_optional(&mut **tx)
        .await;
    match found {
        Ok(Some(_)) => DomainError::Conflict,
        Ok(None) => DomainError::OperatorNotFound,
        Err(e) => db(e),
    }
}

async fn append(tx: &mut Tx, e: &AuditEvent, key: &ChainKey) -> Result<()> {
    // Bumping the head takes its row lock (PostgreSQL) and returns the previous link.
    let head = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut **tx)
        .await
        .map_err(db)?;
    let row = AuditRow::new(int(&head, "seq")?, s(&head, "hash")?, e, key);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, code, cert, client, action, outcome, detail, \
         prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
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
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(row.hash)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

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
    let claimed = sqlx::query("DELETE FROM pending_rebinds WHERE name = 'row_bound_values'")
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
        for r in sqlx::query(sealed.select)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
        {
            let row = row_aad(sealed.column, &s(&r, "bound")?);
            let Some(value) = rebind(secrets, sealed.column, &row, &s(&r, "value")?)? else {
                continue;
            };
            let update = sqlx::query(sealed.update);
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

pub(crate) async fn append_audit(pool: &Handle, secrets: &Secrets, e: &AuditEvent) -> Result<()> {
    let mut tx = begin_write(pool).await.map_err(db)?;
    append(&mut tx, e, &ChainKey::new(secrets)).await?;
    tx.commit().await.map_err(db)
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
    let head = sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let (seq, hash) = (int(&head, "seq")?, s(&head, "hash")?);
    if seq == 0 || is_keyed(&hash) {
        tx.rollback().await.map_err(db)?;
        return Ok(false);
    }
    append(&mut tx, &seal_row(at, seq, &hash), &ChainKey::new(secrets)).await?;
    tx.commit().await.map_err(db)?;
    Ok(true)
}

/// The chain head: the last row's sequence number and hash (0 and the genesis before any).
pub(crate) async fn audit_head(pool: &Pool<DB>) -> Result<(i64, String)> {
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    Ok((int(&head, "seq")?, s(&head, "hash")?))
}

// ---------------------------------------------------------------------------------------------
// Reads

const REGISTRATION_COLUMNS: &str = "code, \
    org_issuer, org_serial, org_subject, org_sha256, org_not_before, org_not_after, \
    org_identifier, org_name, \
    admin_issuer, admin_serial, admin_subject, admin_sha256, admin_not_before, admin_not_after, \
    admin_holder_name, admin_id_last4, admin_id_enc, \
    contact_name, contact_email, contact_phone, contact_phone_ext, contact_mobile, contact_unit, \
    contact_title, registered_at, updated_at, version";

pub(crate) async fn registration(
    pool: &Pool<DB>,
    secrets: &Secrets,
    code: &InstitutionCode,
) -> Result<Option<Registration>> {
    let mut q = sqlx::QueryBuilder::<DB>::new("SELECT ");
    q.push(REGISTRATION_COLUMNS)
        .push(" FROM registrations WHERE code = ")
        .push_bind(code.as_str());
    let row = q.build().fetch_optional(pool).await.map_err(db)?;
    row.map(|r| {
        Ok(Registration {
            code: crate::codec::code(s(&r, "code")?)?,
            org: OrgCard {
                cert: cert(&r, "org")?,
                org_identifier: org_identifier(s(&r, "org_identifier")?)?,
                org_name: s(&r, "org_name")?,
            },
            admin_card: CitizenCard {
                cert: cert(&r, "admin")?,
                holder_name: s(&r, "admin_holder_name")?,
                id_last4: s(&r, "admin_id_last4")?,
            },
            admin_id: decrypt_id(
                secrets,
                &row_aad(ENC_ADMIN_ID, &s(&r, "code")?),
                &s(&r, "admin_id_enc")?,
            )?,
            admin: AdminContact {
                name: person_name(s(&r, "contact_name")?)?,
                email: email(s(&r, "contact_email")?)?,
                phone: phone(s(&r, "contact_phone")?)?,
                phone_ext: opt(&r, "contact_phone_ext")?,
                mobile: opt(&r, "contact_mobile")?.map(phone).transpose()?,
                unit: opt(&r, "contact_unit")?,
                title: opt(&r, "contact_title")?,
            },
            registered_at: time_at(&r, "registered_at")?,
            updated_at: time_at(&r, "updated_at")?,
            version: int(&r, "version")?,
        })
    })
    .transpose()
}

pub(crate) async fn cert_history(
    pool: &Pool<DB>,
    code: &InstitutionCode,
) -> Result<Vec<ReplacedCert>> {
    let rows = sqlx::query(
        "SELECT code, kind, cert_issuer, cert_serial, cert_subject, cert_sha256, \
         cert_not_before, cert_not_after, replaced_at FROM cert_history WHERE code = $1 \
         ORDER BY id",
    )
    .bind(code.as_str())
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(ReplacedCert {
                code: crate::codec::code(s(r, "code")?)?,
                kind: cert_kind(&s(r, "kind")?)?,
                cert: cert(r, "cert")?,
                replaced_at: time_at(r, "replaced_at")?,
            })
        })
        .collect()
}

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
        updated_at: time_at(r, "updated_at")?,
        version: int(r, "version")?,
    })
}

const OPERATOR_COLUMNS: &str = "id, code, serial, name, national_id_enc, functions, updated_at, version, cert_issuer, \
     cert_not_after";

pub(crate) async fn operators(
    pool: &Pool<DB>,
    secrets: &Secrets,
    code: &InstitutionCode,
) -> Result<Vec<Operator>> {
    let mut q = sqlx::QueryBuilder::<DB>::new("SELECT ");
    q.push(OPERATOR_COLUMNS)
        .push(" FROM operators WHERE code = ")
        .push_bind(code.as_str())
        .push(" ORDER BY id");
    let rows = q.build().fetch_all(pool).await.map_err(db)?;
    rows.iter().map(|r| operator_row(r, secrets)).collect()
}

pub(crate) async fn operator(
    pool: &Pool<DB>,
    secrets: &Secrets,
    code: &InstitutionCode,
    id: i64,
) -> Result<Option<Operator>> {
    let mut q = sqlx::QueryBuilder::<DB>::new("SELECT ");
    q.push(OPERATOR_COLUMNS)
        .push(" FROM operators WHERE code = ")
        .push_bind(code.as_str())
        .push(" AND id = ")
        .push_bind(id);
    let row = q.build().fetch_optional(pool).await.map_err(db)?;
    row.map(|r| operator_row(&r, secrets)).transpose()
}

pub(crate) async fn operator_by_serial(
    pool: &Pool<DB>,
    secrets: &Secrets,
    code: &InstitutionCode,
    serial: &CertSerial,
) -> Result<Option<Operator>> {
    let mut q = sqlx::QueryBuilder::<DB>::new("SELECT ");
    q.push(OPERATOR_COLUMNS)
        .push(" FROM operators WHERE code = ")
        .push_bind(code.as_str())
        .push(" AND serial = ")
        .push_bind(serial.as_str());
    let row = q.build().fetch_optional(pool).await.map_err(db)?;
    row.map(|r| operator_row(&r, secrets)).transpose()
}

pub(crate) async fn receipts(pool: &Pool<DB>, code: &InstitutionCode) -> Result<Vec<Receipt>> {
    let rows = sqlx::query(
        "SELECT code, kind, at, review_id FROM receipts WHERE code = $1 \
         ORDER BY at DESC, id DESC",
    )
    .bind(code.as_str())
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(Receipt {
                code: crate::codec::code(s(r, "code")?)?,
                kind: receipt_kind(&s(r, "kind")?)?,
                at: time_at(r, "at")?,
                review_id: col(r, "review_id")?,
            })
        })
        .collect()
}

const REVIEW_COLUMNS: &str = "id, code, org_issuer, org_serial, org_subject, org_sha256, \
    org_not_before, org_not_after, org_identifier, org_name, on_file, applicant_name, \
    applicant_phone, filed_at, state, decided_at, effective, reviewer, note";

fn review_row(r: &DbRow) -> Result<ReviewApplication> {
    let state = DecisionCols {
        state: review_state_name(&s(r, "state")?)?,
        decided_at: col(r, "decided_at")?,
        effective: opt(r, "effective")?,
        reviewer: opt(r, "reviewer")?,
        note: opt(r, "note")?,
    }
    .into_state()?;
    Ok(ReviewApplication {
        id: int(r, "id")?,
        code: crate::codec::code(s(r, "code")?)?,
        org: OrgCard {
            cert: cert(r, "org")?,
            org_identifier: org_identifier(s(r, "org_identifier")?)?,
            org_name: s(r, "org_name")?,
        },
        on_file: opt(r, "on_file")?.map(org_identifier).transpose()?,
        applicant_name: person_name(s(r, "applicant_name")?)?,
        applicant_phone: phone(s(r, "applicant_phone")?)?,
        filed_at: time_at(r, "filed_at")?,
        state,
    })
}

/// `filter` adds the WHERE and ORDER BY clauses; the builder numbers their binds.
async fn select_reviews(
    pool: &Pool<DB>,
    filter: impl FnOnce(&mut sqlx::QueryBuilder<DB>),
) -> Result<Vec<ReviewApplication>> {
    let mut q = sqlx::QueryBuilder::<DB>::new("SELECT ");
    q.push(REVIEW_COLUMNS).push(" FROM reviews ");
    filter(&mut q);
    let rows = q.build().fetch_all(pool).await.map_err(db)?;
    rows.iter().map(review_row).collect()
}

pub(crate) async fn reviews(
    pool: &Pool<DB>,
    code: &InstitutionCode,
) -> Result<Vec<ReviewApplication>> {
    select_reviews(pool, |q| {
        q.push("WHERE code = ")
            .push_bind(code.as_str().to_string())
            .push(" ORDER BY filed_at DESC, id DESC");
    })
    .await
}

pub(crate) async fn review(pool: &Pool<DB>, id: i64) -> Result<Option<ReviewApplication>> {
    let mut found = select_reviews(pool, |q| {
        q.push("WHERE id = ").push_bind(id);
    })
    .await?;
    Ok(found.pop())
}

pub(crate) async fn pending_reviews(pool: &Pool<DB>) -> Result<Vec<ReviewApplication>> {
    select_reviews(pool, |q| {
        q.push("WHERE state = 'pending' ORDER BY filed_at, id");
    })
    .await
}

/// Decided applications, latest decision first.
pub(crate) async fn decided_reviews(pool: &Pool<DB>, limit: i64) -> Result<Vec<ReviewApplication>> {
    select_reviews(pool, |q| {
        q.push("WHERE state <> 'pending' ORDER BY decided_at DESC, id DESC LIMIT ")
            .push_bind(limit);
    })
    .await
}

/// Codes whose registration holds a certificate with this serial (organization or
/// administrator).
pub(crate) async fn codes_by_serial(
    pool: &Pool<DB>,
    serial: &CertSerial,
) -> Result<Vec<InstitutionCode>> {
    let rows = sqlx::query(
        "SELECT code FROM registrations WHERE org_serial = $1 OR admin_serial = $1 ORDER BY code",
    )
    .bind(serial.as_str().to_string())
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| crate::codec::code(s(r, "code")?))
        .collect()
}

/// Audit events matching the filter, newest first, at most `filter.limit` (≤ 200).
pub(crate) async fn audit_search(
    pool: &Pool<DB>,
    f: &crate::AuditFilter,
) -> Result<Vec<(i64, AuditEvent)>> {
    let mut q = sqlx::QueryBuilder::<DB>::new(
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
    let rows = q.build().fetch_all(pool).await.map_err(db)?;
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

// ---------------------------------------------------------------------------------------------
// Reviewers

pub(crate) async fn add_reviewer(
    pool: &Handle,
    name: &str,
    section: Section,
    serial: &CertSerial,
) -> Result<i64> {
    let _turn = write_turn(pool).await;
    let row = sqlx::query(
        "INSERT INTO reviewers (name, section, cert_serial, active) VALUES ($1, $2, $3, $4) \
         RETURNING id",
    )
    .bind(name)
    .bind(section_str(section))
    .bind(serial.as_str())
    .bind(true)
    .fetch_one(&**pool)
    .await
    .map_err(db)?;
    int(&row, "id")
}

pub(crate) async fn reviewers(pool: &Pool<DB>) -> Result<Vec<Reviewer>> {
    let rows = sqlx::query(
        "SELECT id, name, section, cert_serial, cert_issuer, active FROM reviewers ORDER BY id",
    )
    .fetch_all(pool)
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
    let _turn = write_turn(pool).await;
    sqlx::query(
        "UPDATE reviewers SET cert_issuer = $3 \
         WHERE id = $1 AND cert_serial = $2 AND cert_issuer IS NULL",
    )
    .bind(id)
    .bind(serial.as_str())
    .bind(issuer)
    .execute(&**pool)
    .await
    .map_err(db)?;
    Ok(())
}

pub(crate) async fn set_reviewer_active(pool: &Handle, id: i64, active: bool) -> Result<()> {
    let _turn = write_turn(pool).await;
    let n = sqlx::query("UPDATE reviewers SET active = $2 WHERE id = $1")
        .bind(id)
        .bind(active)
        .execute(&**pool)
        .await
        .map_err(db)?
        .rows_affected();
    if n == 0 {
        return Err(DomainError::invalid(
            "reviewer",
            format!("no reviewer {id}"),
            "查無此審核人員",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Business calendar

pub(crate) async fn calendar_days(pool: &Pool<DB>) -> Result<Vec<CalendarDay>> {
    let rows = sqlx::query("SELECT day, day_off, name FROM calendar_days ORDER BY day")
        .fetch_all(pool)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(CalendarDay {
                date: parse_date(&s(r, "day")?)?,
                day_off: col(r, "day_off")?,
                name: s(r, "name")?,
            })
        })
        .collect()
}

/// Rows per multi-row INSERT: well under SQLite's 32766 bound variables for every table here.
const CALENDAR_ROWS_PER_INSERT: usize = 1000;

pub(crate) async fn import_calendar(pool: &Handle, days: &[CalendarDay]) -> Result<()> {
    let years = check_days(days)
        .map_err(|e| DomainError::invalid("calendar", e.to_string(), e.message_zh()))?;
    if years.is_empty() {
        return Ok(());
    }
    let mut tx = begin_write(pool).await.map_err(db)?;
    // Two imports of one year take turns: the second's DELETE sees the first's rows instead
    // of inserting beside them into a unique-key violation.
    serialize(&mut tx, "calendar").await.map_err(db)?;
    for year in &years {
        sqlx::query("DELETE FROM calendar_days WHERE year = $1")
            .bind(*year)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    for chunk in days.chunks(CALENDAR_ROWS_PER_INSERT) {
        let mut q =
            sqlx::QueryBuilder::<DB>::new("INSERT INTO calendar_days (day, year, day_off, name) ");
        q.push_values(chunk, |mut b, d| {
            b.push_bind(date_text(d.date))
                .push_bind(d.date.year())
                .push_bind(d.day_off)
                .push_bind(d.name.clone());
        });
        q.build().execute(&mut *tx).await.map_err(db)?;
    }
    // An error above drops the transaction, which rolls it back: no year is left half-replaced.
    tx.commit().await.map_err(db)
}

// ---------------------------------------------------------------------------------------------
// Bulk loading (benchmarks and large imports; see `Db::bulk_load_*`)

/// Rows per transaction of a bulk load: big enough that commits are not the cost, small enough
/// that one transaction does not hold the SQLite write lock for long.
const BULK_ROWS_PER_TX: usize = 50_000;

pub(crate) async fn bulk_load_agencies(pool: &Handle, agencies: &[Agency]) -> Result<u64> {
    // 4 binds per row.
    bulk(pool, agencies, 5_000, |q, rows| {
        q.push("INSERT INTO agencies (code, name, county, org_identifier) ");
        q.push_values(rows, |mut b, a| {
            b.push_bind(a.code.as_str().to_string())
                .push_bind(a.name.clone())
                .push_bind(a.county.clone())
                .push_bind(a.org_identifier.as_ref().map(|o| o.as_str().to_string()));
        });
        Ok(())
    })
    .await
}

pub(crate) async fn bulk_load_registrations(
    pool: &Handle,
    secrets: &Secrets,
    registrations: &[Registration],
) -> Result<u64> {
    // 29 binds per row.
    bulk(pool, registrations, 1_000, |q, rows| {
        let rows = rows
            .iter()
            .map(|r| RegistrationRow::new(r, secrets))
            .collect::<Result<Vec<_>>>()?;
        q.push(
            INSERT_REGISTRATION
                .split_once(" VALUES")
                .map(|(head, _)| head)
                .unwrap_or(INSERT_REGISTRATION),
        )
        .push(" ");
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.code);
            push_cert(&mut b, r.org);
            b.push_bind(r.org_identifier).push_bind(r.org_name);
            push_cert(&mut b, r.admin);
            b.push_bind(r.admin_holder_name)
                .push_bind(r.admin_id_last4)
                .push_bind(r.admin_id_enc)
                .push_bind(r.admin_id_hash)
                .push_bind(r.contact_name)
                .push_bind(r.contact_email)
                .push_bind(r.contact_phone)
                .push_bind(r.contact_phone_ext)
                .push_bind(r.contact_mobile)
                .push_bind(r.contact_unit)
                .push_bind(r.contact_title)
                .push_bind(r.registered_at)
                .push_bind(r.updated_at)
                .push_bind(r.version);
        });
        Ok(())
    })
    .await
}

pub(crate) async fn bulk_load_operators(
    pool: &Handle,
    secrets: &Secrets,
    operators: &[(InstitutionCode, OperatorInput)],
    at: OffsetDateTime,
) -> Result<u64> {
    // 9 binds per row.
    bulk(pool, operators, 3_000, |q, rows| {
        let rows = rows
            .iter()
            .map(|(code, input)| OperatorRow::new(code, input, at, secrets))
            .collect::<Result<Vec<_>>>()?;
        q.push(
            "INSERT INTO operators (code, serial, name, national_id_enc, national_id_hash, \
             functions, updated_at, cert_issuer, cert_not_after, version) ",
        );
        q.push_values(rows, |mut b, o| {
            b.push_bind(o.code)
                .push_bind(o.serial)
                .push_bind(o.name)
                .push_bind(o.national_id_enc)
                .push_bind(o.national_id_hash)
                .push_bind(o.functions)
                .push_bind(o.updated_at)
                .push_bind(o.cert_issuer)
                .push_bind(o.cert_not_after)
                .push_unseparated(", 1");
        });
        Ok(())
    })
    .await
}

pub(crate) async fn bulk_load_receipts(pool: &Handle, receipts: &[Receipt]) -> Result<u64> {
    // 4 binds per row.
    bulk(pool, receipts, 5_000, |q, rows| {
        q.push("INSERT INTO receipts (code, kind, at, review_id) ");
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.code.as_str().to_string())
                .push_bind(r.kind.as_str())
                .push_bind(ts(r.at))
                .push_bind(r.review_id);
        });
        Ok(())
    })
    .await
}

type Separated<'q> = sqlx::query_builder::Separated<'q, DB, &'static str>;

fn push_cert(b: &mut Separated<'_>, c: CertCols) {
    b.push_bind(c.issuer)
        .push_bind(c.serial)
        .push_bind(c.subject)
        .push_bind(c.sha256)
        .push_bind(c.not_before)
        .push_bind(c.not_after);
}

/// Inserts `items` with multi-row INSERTs of `per_insert` rows that `build` writes, committing
/// every [`BULK_ROWS_PER_TX`] rows. Constraint violations map as everywhere else.
async fn bulk<T>(
    pool: &Handle,
    items: &[T],
    per_insert: usize,
    build: impl Fn(&mut sqlx::QueryBuilder<DB>, &[T]) -> Result<()>,
) -> Result<u64> {
    let mut done = 0u64;
    for batch in items.chunks(BULK_ROWS_PER_TX) {
        let mut tx = begin_write(pool).await.map_err(db)?;
        for rows in batch.chunks(per_insert) {
            let mut q = sqlx::QueryBuilder::<DB>::new("");
            build(&mut q, rows)?;
            done += q
                .build()
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
        }
        tx.commit().await.map_err(db)?;
    }
    Ok(done)
}

// ---------------------------------------------------------------------------------------------
// Audit

pub(crate) async fn verify_audit(pool: &Pool<DB>, secrets: &Secrets) -> Result<AuditReport> {
    // One read transaction: the head and the rows come from the same snapshot even while
    // appends go on.
    let mut tx = begin_read(pool).await.map_err(db)?;
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
    let mut check = ChainCheck::new(ChainKey::new(secrets));
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(
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
    let report = check.finish(int(&head, "seq")?, &s(&head, "hash")?);
    tx.rollback().await.map_err(db)?;
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Sessions and lookups outside the domain trait

fn session_aad(id: &str) -> String {
    format!("{ENC_SESSION_DATA}|{id}")
}

pub(crate) async fn session_insert(
    pool: &Handle,
    secrets: &Secrets,
    r: &SessionRecord,
) -> Result<()> {
    let data = encrypt(secrets, &session_aad(&r.id), r.data.as_bytes())?;
    let _turn = write_turn(pool).await;
    sqlx::query(
        "INSERT INTO sessions (id, kind, code, data_enc, created_at, touched_at, expires_at, \
         version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&r.id)
    .bind(&r.kind)
    .bind(r.code.as_deref())
    .bind(data)
    .bind(ts(r.created_at))
    .bind(ts(r.touched_at))
    .bind(ts(r.expires_at))
    .bind(r.version)
    .execute(&**pool)
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
    let _turn = write_turn(pool).await;
    let done = sqlx::query(
        "UPDATE sessions SET kind = $3, code = $4, data_enc = $5, touched_at = $6, \
         expires_at = $7, version = version + 1 WHERE id = $1 AND version = $2 AND kind <> $8",
    )
    .bind(&r.id)
    .bind(r.version)
    .bind(&r.kind)
    .bind(r.code.as_deref())
    .bind(data)
    .bind(ts(r.touched_at))
    .bind(ts(r.expires_at))
    .bind(crate::SUPERSEDED)
    .execute(&**pool)
    .await
    .map_err(db)?
    .rows_affected();
    if done == 1 {
        return Ok(SessionSaved::Saved(r.version + 1));
    }
    // A tombstone left by a login is as ended as a deleted row: never written to again.
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT version FROM sessions WHERE id = $1 AND kind <> $2")
            .bind(&r.id)
            .bind(crate::SUPERSEDED)
            .fetch_optional(&**pool)
            .await
            .map_err(db)?;
    Ok(match exists {
        Some(_) => SessionSaved::Changed,
        None => SessionSaved::Gone,
    })
}

pub(crate) async fn session_touch(
    pool: &Handle,
    id: &str,
    touched_at: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<bool> {
    let _turn = write_turn(pool).await;
    let done = sqlx::query(
        "UPDATE sessions SET touched_at = $2, expires_at = $3 WHERE id = $1 AND kind <> $4",
    )
    .bind(id)
    .bind(ts(touched_at))
    .bind(ts(expires_at))
    .bind(crate::SUPERSEDED)
    .execute(&**pool)
    .await
    .map_err(db)?
    .rows_affected();
    Ok(done == 1)
}

pub(crate) async fn session_get(
    pool: &Pool<DB>,
    secrets: &Secrets,
    id: &str,
    now: OffsetDateTime,
) -> Result<Option<SessionRecord>> {
    let row = sqlx::query(
        "SELECT id, kind, code, data_enc, created_at, touched_at, expires_at, version \
         FROM sessions WHERE id = $1 AND expires_at > $2",
    )
    .bind(id)
    .bind(ts(now))
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    row.map(|r| session_of_row(secrets, &r)).transpose()
}

fn session_of_row(secrets: &Secrets, r: &<DB as sqlx::Database>::Row) -> Result<SessionRecord> {
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
    pool: &Pool<DB>,
    secrets: &Secrets,
    now: OffsetDateTime,
) -> Result<Vec<SessionRecord>> {
    let rows = sqlx::query(
        "SELECT id, kind, code, data_enc, created_at, touched_at, expires_at, version \
         FROM sessions WHERE expires_at > $1 ORDER BY created_at, id",
    )
    .bind(ts(now))
    .fetch_all(pool)
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
    let empty = encrypt(secrets, &session_aad(id), b"{}")?;
    let mut tx = begin_write(pool).await.map_err(db)?;
    sqlx::query("DELETE FROM token_sessions WHERE session_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::query(
        "UPDATE sessions SET kind = $2, code = NULL, data_enc = $3, expires_at = $4, \
         version = version + 1 WHERE id = $1",
    )
    .bind(id)
    .bind(crate::SUPERSEDED)
    .bind(empty)
    .bind(ts(until))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(crate) async fn session_delete(pool: &Handle, id: &str) -> Result<()> {
    let _turn = write_turn(pool).await;
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(id)
        .execute(&**pool)
        .await
        .map_err(db)?;
    Ok(())
}

pub(crate) async fn session_delete_expired(pool: &Handle, now: OffsetDateTime) -> Result<u64> {
    let _turn = write_turn(pool).await;
    Ok(sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(ts(now))
        .execute(&**pool)
        .await
        .map_err(db)?
        .rows_affected())
}

pub(crate) async fn flow_delete_idle(pool: &Handle, before: OffsetDateTime) -> Result<u64> {
    let _turn = write_turn(pool).await;
    Ok(sqlx::query("DELETE FROM flows WHERE touched_at < $1")
        .bind(ts(before))
        .execute(&**pool)
        .await
        .map_err(db)?
        .rows_affected())
}

/// Every registered agency's code, in order.
pub(crate) async fn registered_codes(pool: &Pool<DB>) -> Result<Vec<InstitutionCode>> {
    let rows = sqlx::query("SELECT code FROM registrations ORDER BY code")
        .fetch_all(pool)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| crate::codec::code(s(r, "code")?))
        .collect()
}

pub(crate) async fn agencies_of_person(
    pool: &Pool<DB>,
    hash: &str,
) -> Result<Vec<(InstitutionCode, PersonRole)>> {
    let rows = sqlx::query(
        "SELECT code, 'administrator' AS role FROM registrations WHERE admin_id_hash = $1 \
         UNION ALL SELECT code, 'operator' AS role FROM operators WHERE national_id_hash = $1 \
         ORDER BY code, role",
    )
    .bind(hash)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            let role = match s(r, "role")?.as_str() {
                "administrator" => PersonRole::Administrator,
                _ => PersonRole::Operator,
            };
            Ok((crate::codec::code(s(r, "code")?)?, role))
        })
        .collect()
}
