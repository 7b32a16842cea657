//! Review applications.

use super::*;

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
    pool: &Handle,
    filter: impl FnOnce(&mut sql::QueryBuilder),
) -> Result<Vec<ReviewApplication>> {
    let mut q = sql::QueryBuilder::new("SELECT ");
    q.push(REVIEW_COLUMNS).push(" FROM reviews ");
    filter(&mut q);
    let rows = q
        .build()
        .fetch_all(&mut *pool.reader().await.map_err(db)?)
        .await
        .map_err(db)?;
    rows.iter().map(review_row).collect()
}

pub(crate) async fn reviews(
    pool: &Handle,
    code: &InstitutionCode,
) -> Result<Vec<ReviewApplication>> {
    select_reviews(pool, |q| {
        q.push("WHERE code = ")
            .push_bind(code.as_str().to_string())
            .push(" ORDER BY filed_at DESC, id DESC");
    })
    .await
}

pub(crate) async fn review(pool: &Handle, id: i64) -> Result<Option<ReviewApplication>> {
    let mut found = select_reviews(pool, |q| {
        q.push("WHERE id = ").push_bind(id);
    })
    .await?;
    Ok(found.pop())
}

pub(crate) async fn pending_reviews(pool: &Handle) -> Result<Vec<ReviewApplication>> {
    select_reviews(pool, |q| {
        q.push("WHERE state = 'pending' ORDER BY filed_at, id");
    })
    .await
}

/// Decided applications, latest decision first.
pub(crate) async fn decided_reviews(pool: &Handle, limit: i64) -> Result<Vec<ReviewApplication>> {
    select_reviews(pool, |q| {
        q.push("WHERE state <> 'pending' ORDER BY decided_at DESC, id DESC LIMIT ")
            .push_bind(limit);
    })
    .await
}
