//! The transaction of a commit: everything one state change of the services writes, all of it
//! or none.

use super::*;

pub(super) const INSERT_REGISTRATION: &str = "INSERT INTO registrations (code, \
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
    session: Option<super::sessions::PreparedSession>,
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
        // Every part named: a part added to `Commit` and not written here does not compile.
        let Commit {
            flow,
            registration,
            history,
            operator,
            review,
            receipt,
            audit,
            end_admin_sessions,
            registration_guard,
            session,
        } = c;
        let registration = match &registration {
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
        let operator = match &operator {
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
            flow: flow
                .as_ref()
                .map(|f| FlowRow::new(f, secrets))
                .transpose()?,
            registration,
            history,
            operator,
            review,
            receipt,
            audit,
            end_admin_sessions,
            registration_guard,
            session: session
                .map(|w| super::sessions::PreparedSession::new(w, secrets))
                .transpose()?,
        })
    }

    /// Whether the flow is the only row this commit writes besides the audit log.
    fn writes_only_the_flow(&self) -> bool {
        let Self {
            flow,
            registration,
            history,
            operator,
            review,
            receipt,
            audit: _,
            end_admin_sessions,
            registration_guard,
            session,
        } = self;
        flow.is_some()
            && registration.is_none()
            && history.is_empty()
            && operator.is_none()
            && review.is_none()
            && receipt.is_none()
            && end_admin_sessions.is_none()
            && registration_guard.is_none()
            && session.is_none()
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

    // Where an UPDATE can run inside a WITH (PostgreSQL) and the flow is all a commit writes
    // besides its audit events (a card step that answers a query), the flow's statement also
    // bumps the chain head for the first event: a round trip fewer, the locks taken in the
    // same order (the flow's row, then the head's).
    let flow_then_head = WRITING_WITH && !p.audit.is_empty() && p.writes_only_the_flow();
    let mut head = None;

    // The flow first: a double submit of one step stops here, before touching anything else.
    if let Some(f) = p.flow {
        const MOVE: &str = "UPDATE flows SET step = $2, data_enc = $3, touched_at = $4, \
            version = $5 WHERE id = $1 AND version = $6";
        const MOVE_AND_BUMP: &str = "WITH moved AS (UPDATE flows SET step = $2, data_enc = $3, \
            touched_at = $4, version = $5 WHERE id = $1 AND version = $6 RETURNING id) \
            UPDATE audit_head SET seq = seq + 1 WHERE id = 1 AND EXISTS (SELECT 1 FROM moved) \
            RETURNING seq, hash";
        let q = sql::query(if flow_then_head { MOVE_AND_BUMP } else { MOVE })
            .bind(f.id)
            .bind(f.step)
            .bind(f.data_enc)
            .bind(f.touched_at)
            .bind(f.version)
            .bind(f.version - 1);
        let moved = if flow_then_head {
            // No head row back: the flow did not move, so the head did not either.
            let bumped = q.fetch_optional(&mut **tx).await.map_err(db)?;
            head = bumped.as_ref().map(super::audit::head_of).transpose()?;
            head.is_some()
        } else {
            q.execute(&mut **tx).await.map_err(db)?.rows_affected() == 1
        };
        if !moved {
            return Err(DomainError::Conflict);
        }
    }

    // The version the change was checked against, re-checked under the row's lock.
    if let Some((code, version)) = p.registration_guard {
        let n = sql::query(
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
            bind_registration(sql::query(INSERT_REGISTRATION), row)
                .execute(&mut **tx)
                .await
                .map_err(fk("registrations_code_fkey"))?;
        }
        Some((row, Some(expected))) => {
            let n = bind_registration(sql::query(REPLACE_REGISTRATION), row)
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
        let q = sql::query(
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
            let row = sql::query(
                "INSERT INTO operators (code, serial, name, national_id_enc, national_id_hash, \
                 functions, updated_at, version, cert_issuer, cert_not_after, valid_from, \
                 valid_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11) RETURNING id",
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
            .bind(o.valid_from)
            .bind(o.valid_until)
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
            let n = sql::query(
                "UPDATE operators SET \
                 cert_issuer = CASE WHEN $10 THEN $11 WHEN serial = $3 THEN cert_issuer END, \
                 cert_not_after = CASE WHEN $10 THEN $12 WHEN serial = $3 THEN cert_not_after END, \
                 serial = $3, name = $4, national_id_enc = $5, \
                 national_id_hash = $6, functions = $7, updated_at = $8, valid_from = $13, \
                 valid_until = $14, version = version + 1 \
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
            .bind(o.valid_from)
            .bind(o.valid_until)
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
            sql::query(
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
                sql::query("DELETE FROM operators WHERE id = $1 AND code = $2 AND version = $3")
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
            let q = sql::query(
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
                sql::query("UPDATE reviewers SET active = active WHERE id = $1 AND active")
                    .bind(reviewer_id)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?
                    .rows_affected();
            if active != 1 {
                return Err(DomainError::NotReviewer);
            }
            let d = DecisionCols::new(&state);
            let n = sql::query(
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
        sql::query(
            "INSERT INTO receipts (code, kind, at, review_id, terms_version) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(r.code.as_str().to_string())
        .bind(r.kind.as_str())
        .bind(ts(r.at))
        .bind(done.review_id.or(r.review_id))
        .bind(r.terms_version)
        .execute(&mut **tx)
        .await
        .map_err(fk("receipts_code_fkey"))?;
    }

    if let Some(code) = p.end_admin_sessions {
        sql::query("DELETE FROM sessions WHERE kind = 'admin' AND code = $1")
            .bind(code.as_str().to_string())
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }

    if let Some(session) = p.session {
        done.session = Some(session.apply(tx).await?);
    }

    // Last: appenders wait on the chain head's row lock, and holding it last means a
    // transaction that holds it never waits for anything else (no deadlock). A commit that
    // writes only its flow took it already, in the flow's statement, after the flow's row.
    for e in &p.audit {
        match head.take() {
            Some(place) => super::audit::append_at(tx, place, e, key).await?,
            None => append(tx, e, key).await?,
        }
    }
    Ok(done)
}

async fn missing_or_conflict(tx: &mut Tx, id: i64, code: &str) -> DomainError {
    let found = sql::query("SELECT id FROM operators WHERE id = $1 AND code = $2")
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
