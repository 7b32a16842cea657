//! certreg's storage: the domain's [`Store`] on SQLite (one embedded file, the default) and on
//! PostgreSQL (production, several service instances), chosen by the URL scheme. National IDs
//! and flow data are encrypted at rest, the audit log is hash-chained, and constraint
//! violations come back as domain errors.

pub mod audit;
mod codec;
pub mod error;
mod lite;
pub mod migrations;
mod pg;
pub mod secrets;
mod sqlite;
mod write;

pub use error::StoreError;
pub use secrets::{Secrets, mask_national_id};

use domain::Result;
use domain::calendar::CalendarDay;
use domain::flow::Flow;
use domain::model::*;
use domain::store::*;
use domain::types::{CertSerial, InstitutionCode, NationalId};
use std::path::PathBuf;
use std::sync::Arc;
use time::OffsetDateTime;

/// The database, for either backend. Cheap to clone (pools are shared).
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    secrets: Arc<Secrets>,
}

#[derive(Clone)]
enum Pool {
    Sqlite(sqlite::Handle),
    Pg(pg::Handle),
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `$body` with `$ops` naming the backend's query module and `$pool` its handle: the body is
/// compiled once per backend against concrete types.
macro_rules! dispatch {
    ($db:expr, $ops:ident, $pool:ident => $body:expr) => {
        match &$db.pool {
            crate::Pool::Sqlite($pool) => {
                use crate::sqlite::ops as $ops;
                $body
            }
            crate::Pool::Pg($pool) => {
                use crate::pg::ops as $ops;
                $body
            }
        }
    };
}

/// How many times a write that met [`domain::DomainError::Busy`] on PostgreSQL is tried again
/// (a deadlock victim or a lock timeout rolled back, so running it again is safe). SQLite's
/// busy comes only after its 30-second busy timeout and is not retried.
const BUSY_RETRIES: u32 = 3;

/// A short, growing, jittered pause before a retry, so that two deadlocked writers do not meet
/// again at once.
async fn busy_backoff(attempt: u32) {
    let mut jitter = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jitter);
    let ms = (20u64 << attempt.min(4)) + u64::from(jitter[0] % 20);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// [`dispatch!`] for a write: on PostgreSQL a `Busy` outcome is run again, up to
/// [`BUSY_RETRIES`] times. The body must be safe to run again (it re-reads what it checks).
macro_rules! write_dispatch {
    ($db:expr, $($rest:tt)*) => {{
        let retries = match &$db.pool {
            crate::Pool::Pg(_) => crate::BUSY_RETRIES,
            crate::Pool::Sqlite(_) => 0,
        };
        let mut attempt = 0u32;
        loop {
            match dispatch!($db, $($rest)*) {
                Err(domain::DomainError::Busy) if attempt < retries => {
                    attempt += 1;
                    crate::busy_backoff(attempt).await;
                }
                other => break other,
            }
        }
    }};
}

mod notices;
mod signing;
pub use domain::store::SigningKeyRecord;

pub use domain::store::{SUPERSEDED, SessionRecord, SessionSaved, session_key};

pub use domain::store::{AUDIT_SEARCH_MAX, AuditFilter};

/// How a person (found by national ID) is bound to an agency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonRole {
    Administrator,
    Operator,
}

/// The backend a URL names, refusing anything else (a typo must not create an empty database).
///
/// ```
/// use store::{Backend, backend_of};
/// assert_eq!(backend_of("sqlite://data/certreg.db").unwrap(), Backend::Sqlite);
/// assert_eq!(backend_of("postgres://certreg@db/certreg").unwrap(), Backend::Postgres);
/// assert!(backend_of("data/certreg.db").is_err());
/// ```
pub fn backend_of(url: &str) -> std::result::Result<Backend, StoreError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::UnsupportedScheme(url.to_string()))
    }
}

/// The file of a `sqlite://PATH` or `sqlite:PATH` URL (`None` for in-memory and other URLs),
/// `%XX` escapes decoded: the key file lives beside it by default.
///
/// ```
/// use std::path::PathBuf;
/// assert_eq!(store::sqlite_path("sqlite://data/my%20db.sqlite"), Some(PathBuf::from("data/my db.sqlite")));
/// assert_eq!(store::sqlite_path("sqlite::memory:"), None);
/// ```
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = percent_decoded(rest.split('?').next().unwrap_or(rest));
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// `%XX` escapes decoded, as in any URL (`sqlite://my%20data/certreg.db` is the directory
/// `my data`); a `%` not followed by two hex digits stays as it is.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Db {
    /// Connects and applies pending migrations. `sqlite:` URLs create the file if missing;
    /// `postgres://` and `postgresql://` need an existing database; anything else is refused
    /// before any file is touched.
    pub async fn connect(url: &str, secrets: &Secrets) -> std::result::Result<Db, StoreError> {
        let db = Self::connect_only(url, secrets).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Connects without migrating (`certreg migrate` reports what it applies itself).
    pub async fn connect_only(url: &str, secrets: &Secrets) -> std::result::Result<Db, StoreError> {
        Self::connect_tuned(url, secrets, pg::LOCK_TIMEOUT).await
    }

    /// As [`Db::connect_only`], with PostgreSQL's lock timeout set: how long a write waits for
    /// a row another transaction holds before it is rolled back and retried (SQLite writers
    /// queue instead).
    pub async fn connect_tuned(
        url: &str,
        secrets: &Secrets,
        lock_timeout: std::time::Duration,
    ) -> std::result::Result<Db, StoreError> {
        let pool = match backend_of(url)? {
            Backend::Sqlite => Pool::Sqlite(sqlite::connect(url).await?),
            Backend::Postgres => Pool::Pg(pg::connect(url, lock_timeout).await?),
        };
        Ok(Db {
            pool,
            secrets: Arc::new(secrets.clone()),
        })
    }

    /// Applies the migrations not yet applied; returns how many there were.
    pub async fn migrate(&self) -> std::result::Result<usize, StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => {
                // Migrations write too: a live `Db`'s queued writers must not meet them at the
                // busy timeout.
                let turn = sqlite::write_turn(p).await;
                // sqlx locks migrations on PostgreSQL only; counted under the lock, so a
                // process that waited reports none applied.
                let _file = sqlite::migration_lock(p)
                    .await
                    .map_err(|e| StoreError::Sqlite(e.into()))?;
                let before = self.applied_migrations().await?;
                let mut turn = turn;
                sqlite::migrate(p, &mut turn).await?;
                // The data step queues for its own turn, still under the file lock.
                drop(turn);
                self.rebind_row_values().await?;
                Ok(self.applied_migrations().await? - before)
            }
            Pool::Pg(p) => {
                let before = self.applied_migrations().await?;
                // On a connection of its own, without the pool's lock timeout: an instance
                // starting while another migrates waits for it however long it takes.
                let own = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with((*p.connect_options()).clone())
                    .await?;
                let done = migrations::migrator().run(&own).await;
                own.close().await;
                done?;
                self.rebind_row_values().await?;
                Ok(self.applied_migrations().await?.saturating_sub(before))
            }
        }
    }

    /// The data step of the migration that bound encrypted values to their rows.
    async fn rebind_row_values(&self) -> std::result::Result<(), StoreError> {
        let done = dispatch!(self, ops, p => ops::rebind_row_values(p, &self.secrets).await)
            .map_err(|e| {
                StoreError::Corrupt(format!("binding encrypted values to their rows: {e}"))
            })?;
        if let Some(n) = done {
            tracing::info!(values = n, "encrypted values bound to their rows");
        }
        Ok(())
    }

    async fn applied_migrations(&self) -> std::result::Result<usize, StoreError> {
        // Before the first migration the bookkeeping table does not exist yet.
        let sql = "SELECT COUNT(*) FROM _sqlx_migrations WHERE success";
        let n: Option<i64> = match &self.pool {
            Pool::Sqlite(p) => match p.reader().await {
                Ok(mut conn) => sqlite::sql::query_scalar(sql)
                    .fetch_one(&mut *conn)
                    .await
                    .ok(),
                Err(_) => None,
            },
            Pool::Pg(p) => match p.reader().await {
                Ok(mut conn) => sqlx::query_scalar(sql).fetch_one(&mut *conn).await.ok(),
                Err(_) => None,
            },
        };
        Ok(n.map_or(0, |n| n as usize))
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Pg(_) => Backend::Postgres,
        }
    }

    /// Closes the pool (waits for connections to be returned); SQLite checkpoints its WAL.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Pg(p) => p.close().await,
        }
    }

    /// Stores a new session at `record.version` (1 for a new one); a storage error if the key
    /// is taken.
    pub async fn session_insert(&self, record: &SessionRecord) -> Result<()> {
        write_dispatch!(self, ops, p => ops::session_insert(p, &self.secrets, record).await)
    }

    /// Writes `record`'s data if the stored session is still at `record.version`; never
    /// brings back a session that is no longer on file.
    pub async fn session_update(&self, record: &SessionRecord) -> Result<SessionSaved> {
        write_dispatch!(self, ops, p => ops::session_update(p, &self.secrets, record).await)
    }

    /// A request that changed nothing: only the idle deadline moves (the data is neither
    /// re-encrypted nor overwritten). `false` when the session is no longer on file.
    pub async fn session_touch(
        &self,
        id: &str,
        touched_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool> {
        write_dispatch!(self, ops, p => ops::session_touch(p, id, touched_at, expires_at).await)
    }

    /// The session, unless it does not exist or has expired at `now`.
    pub async fn session_get(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>> {
        dispatch!(self, ops, p => ops::session_get(p, &self.secrets, id, now).await)
    }

    /// [`Db::session_get`] and, in the same read, the flow `flow_id` when it is that session's.
    pub async fn session_get_with_flow(
        &self,
        id: &str,
        now: OffsetDateTime,
        flow_id: &str,
    ) -> Result<(Option<SessionRecord>, Option<Flow>)> {
        dispatch!(self, ops, p => ops::session_get_with_flow(p, &self.secrets, id, now, flow_id).await)
    }

    /// Replaces the session by a tombstone of kind [`SUPERSEDED`] that holds nothing, until
    /// `until`: a request still carrying the id (sent before a login rotated it) is known for
    /// what it is and may neither act nor set a cookie. Token handles naming it go.
    pub async fn session_supersede(&self, id: &str, until: OffsetDateTime) -> Result<()> {
        write_dispatch!(self, ops, p => ops::session_supersede(p, &self.secrets, id, until).await)
    }

    pub async fn session_delete(&self, id: &str) -> Result<()> {
        write_dispatch!(self, ops, p => ops::session_delete(p, id).await)
    }

    /// Seals an audit chain that ends in rows written before it was keyed with a keyed row
    /// naming their head (see [`audit`]); whether there was anything to seal. Needs this
    /// database's real key file: `certreg serve` and `certreg migrate` call it.
    pub async fn seal_audit_chain(&self, at: OffsetDateTime) -> Result<bool> {
        dispatch!(self, ops, p => ops::seal_audit_chain(p, &self.secrets, at).await)
    }

    /// The audit chain's head: the last row's sequence number and hash, for recording outside
    /// the database (`certreg audit head`).
    pub async fn audit_head(&self) -> Result<(i64, String)> {
        dispatch!(self, ops, p => ops::audit_head(p).await)
    }

    /// Every registered agency's code, in order (the expiry notices walk them).
    pub async fn registered_codes(&self) -> Result<Vec<InstitutionCode>> {
        dispatch!(self, ops, p => ops::registered_codes(p).await)
    }

    /// Every live session, oldest first: for ending those whose grant no longer holds (a
    /// certificate revoked on a new CRL), judged by the grant the data holds.
    pub async fn sessions_live(&self, now: OffsetDateTime) -> Result<Vec<SessionRecord>> {
        dispatch!(self, ops, p => ops::sessions_live(p, &self.secrets, now).await)
    }

    pub async fn session_delete_expired(&self, now: OffsetDateTime) -> Result<u64> {
        dispatch!(self, ops, p => ops::session_delete_expired(p, now).await)
    }

    /// Deletes the flows untouched since `before`, with their challenges (long expired: a flow
    /// expires after 15 idle minutes); how many flows went.
    pub async fn flow_delete_idle(&self, before: OffsetDateTime) -> Result<u64> {
        dispatch!(self, ops, p => ops::flow_delete_idle(p, before).await)
    }

    /// The agencies where this person is the administrator or an operator, found by keyed hash
    /// (the stored IDs are never decrypted for a search).
    pub async fn agencies_of_person(
        &self,
        id: &NationalId,
    ) -> Result<Vec<(InstitutionCode, PersonRole)>> {
        let hash = self.secrets.id_hash(id);
        dispatch!(self, ops, p => ops::agencies_of_person(p, &hash).await)
    }

    // Bulk loading. For benchmarks and one-off loads of large data sets only: rows go in with
    // multi-row INSERTs committed every 50 000 rows, so a failure part-way leaves the batches
    // before it in place (not all or nothing), and nothing is audited and no receipt is
    // written. The services never use these; `upsert_agencies` and `commit` are the way in.

    /// Inserts new agencies (an existing code is a storage error, not an update); returns the
    /// rows written.
    pub async fn bulk_load_agencies(&self, agencies: &[Agency]) -> Result<u64> {
        dispatch!(self, ops, p => ops::bulk_load_agencies(p, agencies).await)
    }

    /// Inserts registrations as they are (versions included) for agencies on file;
    /// `AlreadyRegistered` for a code registered before.
    pub async fn bulk_load_registrations(&self, registrations: &[Registration]) -> Result<u64> {
        dispatch!(self, ops, p => ops::bulk_load_registrations(p, &self.secrets, registrations).await)
    }

    /// Inserts receipts as they are (no audit event goes with them).
    pub async fn bulk_load_receipts(&self, receipts: &[Receipt]) -> Result<u64> {
        dispatch!(self, ops, p => ops::bulk_load_receipts(p, receipts).await)
    }

    /// Inserts operators (version 1, `updated_at` = `at`) of registered agencies, national IDs
    /// encrypted and hashed as `commit` does; `DuplicateOperator` for a serial granted twice.
    pub async fn bulk_load_operators(
        &self,
        operators: &[(InstitutionCode, OperatorInput)],
        at: OffsetDateTime,
    ) -> Result<u64> {
        dispatch!(self, ops, p => ops::bulk_load_operators(p, &self.secrets, operators, at).await)
    }
}

impl Store for Db {
    async fn agency(&self, code: &InstitutionCode) -> Result<Option<Agency>> {
        dispatch!(self, ops, p => ops::agency(p, code).await)
    }

    async fn upsert_agencies(&self, agencies: &[Agency]) -> Result<u64> {
        write_dispatch!(self, ops, p => ops::upsert_agencies(p, agencies).await)
    }

    async fn insert_flow(&self, flow: &Flow) -> Result<()> {
        write_dispatch!(self, ops, p => ops::insert_flow(p, &self.secrets, flow).await)
    }

    async fn flow(&self, id: &str) -> Result<Option<Flow>> {
        dispatch!(self, ops, p => ops::flow(p, &self.secrets, id).await)
    }

    async fn insert_flow_capped(
        &self,
        flow: &Flow,
        max: u64,
        live_since: OffsetDateTime,
        challenge: Option<&StoredChallenge>,
    ) -> Result<()> {
        write_dispatch!(self, ops, p => ops::insert_flow_capped(p, &self.secrets, flow, max, live_since, challenge).await)
    }

    async fn insert_challenge(&self, challenge: &StoredChallenge) -> Result<()> {
        write_dispatch!(self, ops, p => ops::insert_challenge(p, challenge).await)
    }

    async fn consume_challenge(&self, id: &str, now: OffsetDateTime) -> Result<StoredChallenge> {
        write_dispatch!(self, ops, p => ops::consume_challenge(p, id, now).await)
    }

    async fn commit(&self, commit: Commit) -> Result<Committed> {
        write_dispatch!(self, ops, p => ops::commit(p, &self.secrets, commit.clone()).await)
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<()> {
        write_dispatch!(self, ops, p => ops::append_audit(p, &self.secrets, event).await)
    }

    async fn registration(&self, code: &InstitutionCode) -> Result<Option<Registration>> {
        dispatch!(self, ops, p => ops::registration(p, &self.secrets, code).await)
    }

    async fn cert_history(&self, code: &InstitutionCode) -> Result<Vec<ReplacedCert>> {
        dispatch!(self, ops, p => ops::cert_history(p, code).await)
    }

    async fn operators(&self, code: &InstitutionCode) -> Result<Vec<Operator>> {
        dispatch!(self, ops, p => ops::operators(p, &self.secrets, code).await)
    }

    async fn operator(&self, code: &InstitutionCode, id: i64) -> Result<Option<Operator>> {
        dispatch!(self, ops, p => ops::operator(p, &self.secrets, code, id).await)
    }

    async fn operator_by_serial(
        &self,
        code: &InstitutionCode,
        serial: &CertSerial,
    ) -> Result<Option<Operator>> {
        dispatch!(self, ops, p => ops::operator_by_serial(p, &self.secrets, code, serial).await)
    }

    async fn receipts(&self, code: &InstitutionCode) -> Result<Vec<Receipt>> {
        dispatch!(self, ops, p => ops::receipts(p, code).await)
    }

    async fn reviews(&self, code: &InstitutionCode) -> Result<Vec<ReviewApplication>> {
        dispatch!(self, ops, p => ops::reviews(p, code).await)
    }

    async fn review(&self, id: i64) -> Result<Option<ReviewApplication>> {
        dispatch!(self, ops, p => ops::review(p, id).await)
    }

    async fn pending_reviews(&self) -> Result<Vec<ReviewApplication>> {
        dispatch!(self, ops, p => ops::pending_reviews(p).await)
    }

    async fn add_reviewer(&self, name: &str, section: Section, serial: &CertSerial) -> Result<i64> {
        write_dispatch!(self, ops, p => ops::add_reviewer(p, name, section, serial).await)
    }

    async fn reviewers(&self) -> Result<Vec<Reviewer>> {
        dispatch!(self, ops, p => ops::reviewers(p).await)
    }

    async fn learn_reviewer_issuer(
        &self,
        id: i64,
        serial: &CertSerial,
        issuer: &str,
    ) -> Result<()> {
        write_dispatch!(self, ops, p => ops::learn_reviewer_issuer(p, id, serial, issuer).await)
    }

    async fn set_reviewer_active(&self, id: i64, active: bool) -> Result<()> {
        write_dispatch!(self, ops, p => ops::set_reviewer_active(p, id, active).await)
    }

    async fn calendar_days(&self) -> Result<Vec<CalendarDay>> {
        dispatch!(self, ops, p => ops::calendar_days(p).await)
    }

    async fn import_calendar(&self, days: &[CalendarDay]) -> Result<()> {
        write_dispatch!(self, ops, p => ops::import_calendar(p, days).await)
    }

    async fn verify_audit(&self) -> Result<AuditReport> {
        dispatch!(self, ops, p => ops::verify_audit(p, &self.secrets).await)
    }

    async fn decided_reviews(&self, limit: i64) -> Result<Vec<ReviewApplication>> {
        dispatch!(self, ops, p => ops::decided_reviews(p, limit).await)
    }

    async fn codes_by_serial(&self, serial: &CertSerial) -> Result<Vec<InstitutionCode>> {
        dispatch!(self, ops, p => ops::codes_by_serial(p, serial).await)
    }

    async fn audit_search(&self, filter: &AuditFilter) -> Result<Vec<(i64, AuditEvent)>> {
        dispatch!(self, ops, p => ops::audit_search(p, filter).await)
    }

    async fn registered_codes(&self) -> Result<Vec<InstitutionCode>> {
        Db::registered_codes(self).await
    }

    // The notice claims, as the inherent methods in `notices.rs` do them.
    async fn notice_claim(&self, day: time::Date, keys: &[String]) -> Result<Vec<bool>> {
        Db::notice_claim(self, day, keys).await
    }

    async fn notice_release(&self, day: time::Date, keys: &[String]) -> Result<()> {
        Db::notice_release(self, day, keys).await
    }
}

/// The web layer's storage, as the inherent methods above and in `signing.rs` do it.
impl domain::store::SessionStore for Db {
    async fn session_insert(&self, record: &SessionRecord) -> Result<()> {
        Db::session_insert(self, record).await
    }
    async fn session_update(&self, record: &SessionRecord) -> Result<SessionSaved> {
        Db::session_update(self, record).await
    }
    async fn session_touch(
        &self,
        id: &str,
        touched_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool> {
        Db::session_touch(self, id, touched_at, expires_at).await
    }
    async fn session_get(&self, id: &str, now: OffsetDateTime) -> Result<Option<SessionRecord>> {
        Db::session_get(self, id, now).await
    }
    async fn session_get_with_flow(
        &self,
        id: &str,
        now: OffsetDateTime,
        flow_id: &str,
    ) -> Result<(Option<SessionRecord>, Option<Flow>)> {
        Db::session_get_with_flow(self, id, now, flow_id).await
    }
    async fn session_supersede(&self, id: &str, until: OffsetDateTime) -> Result<()> {
        Db::session_supersede(self, id, until).await
    }
    async fn session_delete(&self, id: &str) -> Result<()> {
        Db::session_delete(self, id).await
    }
    async fn sessions_live(&self, now: OffsetDateTime) -> Result<Vec<SessionRecord>> {
        Db::sessions_live(self, now).await
    }
    async fn token_session_put(&self, sid: &str, session_id: &str) -> Result<()> {
        Db::token_session_put(self, sid, session_id).await
    }
    async fn token_session(&self, sid: &str) -> Result<Option<String>> {
        Db::token_session(self, sid).await
    }
    async fn signing_keys(&self, now: OffsetDateTime) -> Result<Vec<SigningKeyRecord>> {
        Db::signing_keys(self, now).await
    }
    async fn signing_key_add_first(&self, key: &SigningKeyRecord) -> Result<bool> {
        Db::signing_key_add_first(self, key).await
    }
    async fn signing_key_rotate(
        &self,
        key: &SigningKeyRecord,
        publish_until: OffsetDateTime,
    ) -> Result<()> {
        Db::signing_key_rotate(self, key, publish_until).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[cfg(unix)]
    #[tokio::test]
    async fn sqlite_file_and_its_directory_are_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("certreg.db");
        let db = Db::connect(
            &format!("sqlite://{}", path.display()),
            &Secrets::generate().unwrap(),
        )
        .await
        .unwrap();
        let event = AuditEvent::new(OffsetDateTime::UNIX_EPOCH, "system", "perm.test", "ok");
        db.append_audit(&event).await.unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        let wal = path.with_extension("db-wal");
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600);
        }
        db.close().await;
    }

    // Holding the turn with SQLite's own lock free shows that writes wait in the queue, not in
    // the busy handler (which would let them straight through here), and that reads don't.
    #[tokio::test]
    async fn sqlite_writes_wait_for_the_turn_and_reads_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("turn.db").display());
        let db = Db::connect(&url, &Secrets::generate().unwrap())
            .await
            .unwrap();
        let Pool::Sqlite(handle) = &db.pool else {
            unreachable!("a sqlite URL")
        };
        let at = OffsetDateTime::UNIX_EPOCH;
        let event = AuditEvent::new(at, "system", "turn.test", "ok");
        let session = sqlite::tests::session("s");
        let wait = Duration::from_millis(200);

        let turn = sqlite::write_turn(handle).await;
        assert!(
            tokio::time::timeout(wait, db.append_audit(&event))
                .await
                .is_err()
        );
        assert!(
            tokio::time::timeout(wait, db.session_insert(&session))
                .await
                .is_err()
        );
        assert_eq!(db.verify_audit().await.unwrap().events, 0);
        drop(turn);

        db.append_audit(&event).await.unwrap();
        db.session_insert(&session).await.unwrap();
        assert_eq!(db.verify_audit().await.unwrap().events, 1);
    }
}
