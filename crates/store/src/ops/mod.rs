//! Every query and the transaction of a commit, one file per table, written once and compiled
//! once per backend: `sqlite.rs` and `pg.rs` both include this directory as their `ops`
//! module, and it runs against their `DB`. One SQL text with `$n` placeholders serves both;
//! the code stays concrete (no `sqlx::Any`, no generic bounds). Each backend names its query
//! API `sql`: sqlx's on PostgreSQL, rusqlite's behind the same calls on SQLite (`lite.rs`).
//!
//! Every write runs on what its backend hands it: `begin_write` for a transaction,
//! `begin_single` for one statement, then `commit`. On SQLite both wait for the writers' turn
//! (a lone statement that skipped the queue would sleep in the busy handler behind the queued
//! writers) and may share one commit with the writers queued beside them.

use super::{
    Handle, ONE_WRITER, WRITING_WITH, WriteTx, begin_read, begin_single, begin_write, serialize,
    sql, wait_for_locks,
};
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
use time::OffsetDateTime;

type Tx = WriteTx;
type DbRow = sql::Row;
type Query<'q> = sql::Query<'q>;

fn db(e: sql::Error) -> DomainError {
    map_db_error(e, None)
}

/// For a statement that can violate exactly one foreign key (SQLite does not name it).
fn fk(name: &'static str) -> impl FnOnce(sql::Error) -> DomainError {
    move |e| map_db_error(e, Some(name))
}

fn col<T: sql::Column>(row: &DbRow, name: &str) -> Result<T> {
    sql::get(row, name).map_err(|e| DomainError::Storage(format!("column {name}: {e}")))
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

mod agencies;
mod audit;
mod bulk;
mod calendar;
mod commit;
mod flows;
mod notices;
mod operators;
mod rebind;
mod receipts;
mod registrations;
mod reviewers;
mod reviews;
mod sessions;
mod signing;

pub(crate) use agencies::*;
pub(crate) use audit::*;
pub(crate) use bulk::*;
pub(crate) use calendar::*;
pub(crate) use commit::*;
pub(crate) use flows::*;
pub(crate) use notices::*;
pub(crate) use operators::*;
pub(crate) use rebind::*;
pub(crate) use receipts::*;
pub(crate) use registrations::*;
pub(crate) use reviewers::*;
pub(crate) use reviews::*;
pub(crate) use sessions::*;
pub(crate) use signing::*;
