//! Bulk loading (benchmarks and large imports; see `Db::bulk_load_*`).

use super::*;

/// Rows per transaction of a bulk load: big enough that commits are not the cost, small enough
/// that one transaction does not hold the SQLite write lock for long.
const BULK_ROWS_PER_TX: usize = 50_000;

/// Binds one statement may carry: SQLite's limit (SQLITE_MAX_VARIABLE_NUMBER, 32,766 since
/// 3.32); PostgreSQL's is 65,535.
const MAX_BINDS: usize = 32_766;

pub(crate) async fn bulk_load_agencies(pool: &Handle, agencies: &[Agency]) -> Result<u64> {
    bulk(pool, agencies, 4, |q, rows| {
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
    bulk(pool, registrations, 29, |q, rows| {
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
    bulk(pool, operators, 11, |q, rows| {
        let rows = rows
            .iter()
            .map(|(code, input)| OperatorRow::new(code, input, at, secrets))
            .collect::<Result<Vec<_>>>()?;
        q.push(
            "INSERT INTO operators (code, serial, name, national_id_enc, national_id_hash, \
             functions, updated_at, cert_issuer, cert_not_after, valid_from, valid_until, \
             version) ",
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
                .push_bind(o.valid_from)
                .push_bind(o.valid_until)
                .push_unseparated(", 1");
        });
        Ok(())
    })
    .await
}

pub(crate) async fn bulk_load_receipts(pool: &Handle, receipts: &[Receipt]) -> Result<u64> {
    bulk(pool, receipts, 5, |q, rows| {
        q.push("INSERT INTO receipts (code, kind, at, review_id, terms_version) ");
        q.push_values(rows, |mut b, r| {
            b.push_bind(r.code.as_str().to_string())
                .push_bind(r.kind.as_str())
                .push_bind(ts(r.at))
                .push_bind(r.review_id)
                .push_bind(r.terms_version.clone());
        });
        Ok(())
    })
    .await
}

use super::sql::Separated;

fn push_cert(b: &mut Separated<'_>, c: CertCols) {
    b.push_bind(c.issuer)
        .push_bind(c.serial)
        .push_bind(c.subject)
        .push_bind(c.sha256)
        .push_bind(c.not_before)
        .push_bind(c.not_after);
}

/// Inserts `items` with multi-row INSERTs that `build` writes, `binds_per_row` binds a row, as
/// many rows a statement as [`MAX_BINDS`] allows, committing every [`BULK_ROWS_PER_TX`] rows.
/// A statement whose binds are not `binds_per_row` a row is refused before it is sent.
/// Constraint violations map as everywhere else.
async fn bulk<T>(
    pool: &Handle,
    items: &[T],
    binds_per_row: usize,
    build: impl Fn(&mut sql::QueryBuilder, &[T]) -> Result<()>,
) -> Result<u64> {
    let per_insert = MAX_BINDS / binds_per_row;
    let mut done = 0u64;
    for batch in items.chunks(BULK_ROWS_PER_TX) {
        let mut tx = begin_write(pool).await.map_err(db)?;
        for rows in batch.chunks(per_insert) {
            let mut q = sql::QueryBuilder::new("");
            build(&mut q, rows)?;
            // Placeholders are `?` (SQLite) or `$n` (PostgreSQL); the statements have no others.
            let binds = q.sql().as_str().matches(['?', '$']).count();
            if binds != rows.len() * binds_per_row {
                return Err(DomainError::Storage(format!(
                    "bulk insert: {binds} binds for {} rows of {binds_per_row}",
                    rows.len()
                )));
            }
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
