//! What the services need from storage ([`Store`]), and what the web layer keeps there of its
//! own: sessions and token signing keys ([`SessionStore`]). Reads are plain queries; every
//! state change of the services is one [`Commit`], which the store applies in one transaction
//! — all of it or none of it — mapping its constraints to domain errors (already registered,
//! duplicate operator, conflict). The `store` crate implements both for SQLite and PostgreSQL;
//! [`Backend`] is either, behind one pointer, for callers that must not name the store.

use crate::calendar::CalendarDay;
use crate::error::Result;
use crate::flow::{Flow, Step};
use crate::model::*;
use crate::types::{CertSerial, InstitutionCode};
use std::future::Future;
use time::{Date, OffsetDateTime};

/// The most audit events one back-office search returns.
pub const AUDIT_SEARCH_MAX: i64 = 200;

/// What the back office searches the audit log by (R6.3); every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub code: Option<InstitutionCode>,
    /// The certificate serial (any issuer).
    pub serial: Option<CertSerial>,
    /// From this instant (inclusive).
    pub from: Option<OffsetDateTime>,
    /// Up to this instant (exclusive).
    pub to: Option<OffsetDateTime>,
    /// `ok` or an error code.
    pub outcome: Option<String>,
    /// At most [`AUDIT_SEARCH_MAX`].
    pub limit: i64,
}

/// A challenge as stored: single use, bound to a session, a flow and a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChallenge {
    pub id: String,
    pub flow_id: String,
    pub session: String,
    pub step: Step,
    pub purpose: String,
    pub origin: String,
    pub nonce: Vec<u8>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Writes to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationWrite {
    /// First registration: fails with `AlreadyRegistered` if the agency has one.
    Insert(Registration),
    /// A replacement: `RegistrationChanged` unless the stored version is `expected_version`;
    /// the stored row gets `expected_version + 1`.
    Replace {
        registration: Registration,
        expected_version: i64,
    },
}

/// Writes to operators. Versions work as for registrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorWrite {
    /// `DuplicateOperator` if the serial is already granted in the agency.
    Insert {
        code: InstitutionCode,
        input: OperatorInput,
        at: OffsetDateTime,
    },
    Update {
        code: InstitutionCode,
        id: i64,
        input: OperatorInput,
        expected_version: i64,
        at: OffsetDateTime,
    },
    /// What the operator's card showed at login (R5.1): fills the issuer and notAfter of a
    /// grant whose serial the administrator typed, while the grant still names that serial.
    /// Not a change of the grant: the version stays, and nothing happens when they are known.
    LearnCert {
        code: InstitutionCode,
        id: i64,
        serial: CertSerial,
        cert: OperatorCert,
    },
    /// `OperatorNotFound` if absent in that agency; `Conflict` on another version.
    Delete {
        code: InstitutionCode,
        id: i64,
        expected_version: i64,
    },
}

/// Writes to review applications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewWrite {
    /// The id is assigned by the store.
    Insert(Box<ReviewApplication>),
    /// Only a pending application can be decided (`Conflict` otherwise), and only by a
    /// reviewer still active when the decision is written (`NotReviewer` otherwise).
    Decide {
        id: i64,
        state: ReviewState,
        reviewer_id: i64,
    },
}

/// One state change, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    /// The flow as it is after this change; `Conflict` unless the stored version is
    /// `flow.version - 1` (so a double submit of one step takes effect once).
    pub flow: Option<Flow>,
    pub registration: Option<RegistrationWrite>,
    pub history: Vec<ReplacedCert>,
    pub operator: Option<OperatorWrite>,
    pub review: Option<ReviewWrite>,
    /// A receipt; its `review_id` is filled with the id of a review inserted in this commit.
    pub receipt: Option<Receipt>,
    pub audit: Vec<AuditEvent>,
    /// Ends every administrator session of this agency (after a replacement).
    pub end_admin_sessions: Option<InstitutionCode>,
    /// The registration version this change rests on (the one an administrator's login
    /// checked): `RegistrationChanged` unless the agency's registration is still at that
    /// version inside the transaction, whose row lock then holds off a replacement until the
    /// commit ends.
    pub registration_guard: Option<(InstitutionCode, i64)>,
    /// The web session a login gives its role, written with the login's flow.
    pub session: Option<SessionWrite>,
}

/// Ids the store assigned while applying a commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub operator_id: Option<i64>,
    pub review_id: Option<i64>,
    /// What became of the commit's [`SessionWrite`].
    pub session: Option<SessionSaved>,
}

/// The audit log's verdict (`certreg audit verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub events: u64,
    /// Sequence number of the first event whose link does not hold.
    pub first_broken: Option<u64>,
    pub detail: Option<String>,
}

/// Storage of everything the domain keeps. Implemented by the `store` crate for SQLite and
/// PostgreSQL; the rule tests (`crates/store/tests/rules`) run the services over it, and wrap
/// it to hold a chosen commit at a barrier.
pub trait Store: Send + Sync {
    // master data
    fn agency(&self, code: &InstitutionCode)
    -> impl Future<Output = Result<Option<Agency>>> + Send;
    /// Inserts or updates agencies, all or nothing.
    fn upsert_agencies(&self, agencies: &[Agency]) -> impl Future<Output = Result<u64>> + Send;

    // flows and challenges
    fn insert_flow(&self, flow: &Flow) -> impl Future<Output = Result<()>> + Send;
    fn flow(&self, id: &str) -> impl Future<Output = Result<Option<Flow>>> + Send;
    /// Inserts `flow` unless its session already holds `max` flows touched after `live_since`
    /// (`TooManyFlows`): counted and inserted as one step, so concurrent starts of one session
    /// never pass the cap together. `challenge`, the flow's first, is inserted with it or not
    /// at all.
    fn insert_flow_capped(
        &self,
        flow: &Flow,
        max: u64,
        live_since: OffsetDateTime,
        challenge: Option<&StoredChallenge>,
    ) -> impl Future<Output = Result<()>> + Send;
    fn insert_challenge(
        &self,
        challenge: &StoredChallenge,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Marks the challenge used and returns it — exactly once, even when two requests race;
    /// `ChallengeUsed` for a used or unknown one. Expiry is the caller's check.
    fn consume_challenge(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<StoredChallenge>> + Send;

    // state changes
    fn commit(&self, commit: Commit) -> impl Future<Output = Result<Committed>> + Send;
    /// Appends one audit event on its own (failed verifications, searches).
    fn append_audit(&self, event: &AuditEvent) -> impl Future<Output = Result<()>> + Send;

    // reads
    fn registration(
        &self,
        code: &InstitutionCode,
    ) -> impl Future<Output = Result<Option<Registration>>> + Send;
    fn cert_history(
        &self,
        code: &InstitutionCode,
    ) -> impl Future<Output = Result<Vec<ReplacedCert>>> + Send;
    fn operators(
        &self,
        code: &InstitutionCode,
    ) -> impl Future<Output = Result<Vec<Operator>>> + Send;
    fn operator(
        &self,
        code: &InstitutionCode,
        id: i64,
    ) -> impl Future<Output = Result<Option<Operator>>> + Send;
    fn operator_by_serial(
        &self,
        code: &InstitutionCode,
        serial: &CertSerial,
    ) -> impl Future<Output = Result<Option<Operator>>> + Send;
    /// Newest first.
    fn receipts(&self, code: &InstitutionCode)
    -> impl Future<Output = Result<Vec<Receipt>>> + Send;
    /// Newest first.
    fn reviews(
        &self,
        code: &InstitutionCode,
    ) -> impl Future<Output = Result<Vec<ReviewApplication>>> + Send;
    fn review(&self, id: i64) -> impl Future<Output = Result<Option<ReviewApplication>>> + Send;
    /// Oldest first.
    fn pending_reviews(&self) -> impl Future<Output = Result<Vec<ReviewApplication>>> + Send;
    /// At most `limit` decided applications, the latest decision first.
    fn decided_reviews(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ReviewApplication>>> + Send;
    /// The agencies whose registration holds a certificate with this serial.
    fn codes_by_serial(
        &self,
        serial: &CertSerial,
    ) -> impl Future<Output = Result<Vec<InstitutionCode>>> + Send;
    /// The codes of every agency with a registration, in order.
    fn registered_codes(&self) -> impl Future<Output = Result<Vec<InstitutionCode>>> + Send;

    // expiry and revocation notices (`crate::notices`)
    /// Claims the notices `keys` for `day` (a Taipei date): for each key, whether this call
    /// claimed it (false: already sent or being sent that day, by this process or another on the
    /// same database). Claims of earlier days are deleted.
    fn notice_claim(
        &self,
        day: Date,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
    /// Gives back claims whose notice could not be sent, so that the next walk tries again.
    fn notice_release(&self, day: Date, keys: &[String])
    -> impl Future<Output = Result<()>> + Send;

    // reviewers
    fn add_reviewer(
        &self,
        name: &str,
        section: Section,
        serial: &CertSerial,
    ) -> impl Future<Output = Result<i64>> + Send;
    fn reviewers(&self) -> impl Future<Output = Result<Vec<Reviewer>>> + Send;
    /// Records the issuer of the reviewer's card, once: only while none is known and the
    /// account still names `serial`.
    fn learn_reviewer_issuer(
        &self,
        id: i64,
        serial: &CertSerial,
        issuer: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    fn set_reviewer_active(&self, id: i64, active: bool)
    -> impl Future<Output = Result<()>> + Send;

    // business calendar (SPEC §4.2)
    /// Every imported office calendar day, oldest first (whole years; the shipped years are
    /// not stored unless they were imported again).
    fn calendar_days(&self) -> impl Future<Output = Result<Vec<CalendarDay>>> + Send;
    /// Replaces the years `days` cover, in one transaction: all of each year or nothing.
    /// `Invalid` unless the days are whole years without a date twice.
    fn import_calendar(&self, days: &[CalendarDay]) -> impl Future<Output = Result<()>> + Send;

    // audit
    fn verify_audit(&self) -> impl Future<Output = Result<AuditReport>> + Send;
    /// Audit events matching `filter`, newest first, with their sequence numbers; at most
    /// [`AUDIT_SEARCH_MAX`] rows.
    fn audit_search(
        &self,
        filter: &AuditFilter,
    ) -> impl Future<Output = Result<Vec<(i64, AuditEvent)>>> + Send;
}

/// A web session as the web layer keeps it. `data` is opaque to the store and encrypted at
/// rest, bound to the row's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session's key: a hash of the id its holder presents (cookie value or bearer
    /// token). The id itself is never stored.
    pub id: String,
    /// `admin`, `operator`, `reviewer`, `anonymous` …: administrator sessions of an agency end
    /// when its registration is replaced.
    pub kind: String,
    pub code: Option<String>,
    pub data: String,
    pub created_at: OffsetDateTime,
    pub touched_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Bumped by every change of `data` (1 for a new session). An update names the version it
    /// read.
    pub version: i64,
}

/// The key a session is stored under: hex SHA-256 of its id (the cookie value or the bearer
/// token), so a copy of the table holds nothing a client could present.
///
/// ```
/// let key = domain::store::session_key("abc");
/// assert_eq!(key.len(), 64);
/// assert_ne!(key, "abc");
/// ```
pub fn session_key(id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    pki::serial::hex_upper(digest.as_ref()).to_ascii_lowercase()
}

/// The kind of a session's tombstone (see [`SessionStore::session_supersede`]).
pub const SUPERSEDED: &str = "superseded";

/// What became of a session update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSaved {
    /// Written; the session's version now.
    Saved(i64),
    /// The session is no longer on file (logged out, ended by a replacement or a revocation,
    /// expired and swept): it stays ended.
    Gone,
    /// Another request changed the session since the version named: re-read and apply again.
    Changed,
}

/// A session written in a login's own commit, so the role and the flow that earned it are
/// stored together or not at all. A session ended while the login ran (logged out, ended by a
/// revocation or a replacement, or already replaced by another login) stays ended: the whole
/// commit is refused with `FlowNotFound`, as the flows of an ended session are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionWrite {
    /// A fresh id: `old`, when it was stored, becomes a tombstone until `until` (and loses its
    /// token handles); `record` is inserted at version 1.
    Rotate {
        old: Option<String>,
        until: OffsetDateTime,
        record: SessionRecord,
    },
    /// The same id (a bearer session): written only if still at `record.version`; a change
    /// made meanwhile is reported (`Changed`) and does not hold off the flow's commit.
    Update(SessionRecord),
}

/// One token signing key as stored (the private key decrypted).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// The uncompressed P-256 point (0x04 ‖ x ‖ y).
    pub public_key: Vec<u8>,
    pub private_pkcs8: Vec<u8>,
    pub created_at: OffsetDateTime,
    /// When a newer key replaced it; `None` for the current key.
    pub retired_at: Option<OffsetDateTime>,
    /// Published (and trusted) until then: the last token it signed has expired.
    pub publish_until: Option<OffsetDateTime>,
}

// Private keys never reach a log.
impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .field("publish_until", &self.publish_until)
            .finish_non_exhaustive()
    }
}

/// The web layer's own storage: sessions, the handles operator tokens name them by, and the
/// keys tokens are signed with.
pub trait SessionStore: Send + Sync {
    /// Stores a new session at `record.version` (1 for a new one); a storage error if the key
    /// is taken.
    fn session_insert(&self, record: &SessionRecord) -> impl Future<Output = Result<()>> + Send;
    /// Writes `record`'s data if the stored session is still at `record.version`; never
    /// brings back a session that is no longer on file.
    fn session_update(
        &self,
        record: &SessionRecord,
    ) -> impl Future<Output = Result<SessionSaved>> + Send;
    /// A request that changed nothing: only the idle deadline moves. `false` when the session
    /// is no longer on file.
    fn session_touch(
        &self,
        id: &str,
        touched_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The session, unless it does not exist or has expired at `now`.
    fn session_get(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<SessionRecord>>> + Send;
    /// [`SessionStore::session_get`] and, in the same read, the flow `flow_id` when it is
    /// that session's (a request on one of its flows: one round trip instead of two).
    fn session_get_with_flow(
        &self,
        id: &str,
        now: OffsetDateTime,
        flow_id: &str,
    ) -> impl Future<Output = Result<(Option<SessionRecord>, Option<Flow>)>> + Send;
    /// Replaces the session by a tombstone of kind [`SUPERSEDED`] that holds nothing, until
    /// `until`; token handles naming it go.
    fn session_supersede(
        &self,
        id: &str,
        until: OffsetDateTime,
    ) -> impl Future<Output = Result<()>> + Send;
    fn session_delete(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Every live session, oldest first.
    fn sessions_live(
        &self,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<SessionRecord>>> + Send;
    /// Records that the token handle `sid` names the session `session_id`.
    fn token_session_put(
        &self,
        sid: &str,
        session_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The session a token handle names, if that session is still on file.
    fn token_session(&self, sid: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// The signing keys still published at `now`, newest first (the current one first).
    fn signing_keys(
        &self,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<SigningKeyRecord>>> + Send;
    /// Stores `key` as the current key unless there already is one; whether it was stored.
    fn signing_key_add_first(
        &self,
        key: &SigningKeyRecord,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Makes `key` the current key: the current one is retired and stays published until
    /// `publish_until`; keys past their `publish_until` are deleted.
    fn signing_key_rotate(
        &self,
        key: &SigningKeyRecord,
        publish_until: OffsetDateTime,
    ) -> impl Future<Output = Result<()>> + Send;
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The dyn-compatible form of [`Store`] + [`SessionStore`]: every method boxes its future.
/// Generated with the forwarding impls from one list, so the three never drift apart.
macro_rules! erased_backend {
    ($( $trait:ident { $( fn $name:ident( $( $mode:ident $arg:ident : $ty:ty ),* ) -> $ret:ty; )* } )*) => {
        /// The trait object behind [`Backend`], in a module of its own so that a glob import
        /// of this one does not put two methods of each name in scope.
        pub mod erased {
            use super::*;

            /// [`Store`] and [`SessionStore`] as one trait object (see [`Backend`]).
            pub trait DynBackend: Send + Sync {
                $( $(
                    fn $name<'a>(&'a self $(, $arg: erased_backend!(@ty 'a $mode $ty))*)
                        -> BoxFuture<'a, Result<$ret>>;
                )* )*
            }

            impl<T: $($trait +)* Send + Sync> DynBackend for T {
                $( $(
                    fn $name<'a>(&'a self $(, $arg: erased_backend!(@ty 'a $mode $ty))*)
                        -> BoxFuture<'a, Result<$ret>> {
                        Box::pin($trait::$name(self $(, $arg)*))
                    }
                )* )*
            }
        }

        $(
            // For every lifetime of the object, not only 'static: the futures' Send checks in
            // the web handlers ask for it in that general form.
            impl<'d> $trait for std::sync::Arc<dyn erased::DynBackend + 'd> {
                $(
                    fn $name(&self $(, $arg: erased_backend!(@ty $mode $ty))*)
                        -> impl Future<Output = Result<$ret>> + Send {
                        // An async block names each borrowed argument's lifetime on its own
                        // (the boxed future alone would name only their intersection).
                        async move { erased::DynBackend::$name(&**self $(, $arg)*).await }
                    }
                )*
            }
        )*
    };
    (@ty $l:lifetime ref $ty:ty) => { &$l $ty };
    (@ty $l:lifetime opt $ty:ty) => { Option<&$l $ty> };
    (@ty $l:lifetime val $ty:ty) => { $ty };
    (@ty ref $ty:ty) => { &$ty };
    (@ty opt $ty:ty) => { Option<&$ty> };
    (@ty val $ty:ty) => { $ty };
}

/// A store of either database behind one pointer: what the web layer holds, so that it never
/// names the store crate. Each call boxes its future (one allocation per query).
pub type Backend = std::sync::Arc<dyn erased::DynBackend>;

erased_backend! {
    Store {
        fn agency(ref code: InstitutionCode) -> Option<Agency>;
        fn upsert_agencies(ref agencies: [Agency]) -> u64;
        fn insert_flow(ref flow: Flow) -> ();
        fn flow(ref id: str) -> Option<Flow>;
        fn insert_flow_capped(ref flow: Flow, val max: u64, val live_since: OffsetDateTime, opt challenge: StoredChallenge) -> ();
        fn insert_challenge(ref challenge: StoredChallenge) -> ();
        fn consume_challenge(ref id: str, val now: OffsetDateTime) -> StoredChallenge;
        fn commit(val commit: Commit) -> Committed;
        fn append_audit(ref event: AuditEvent) -> ();
        fn registration(ref code: InstitutionCode) -> Option<Registration>;
        fn cert_history(ref code: InstitutionCode) -> Vec<ReplacedCert>;
        fn operators(ref code: InstitutionCode) -> Vec<Operator>;
        fn operator(ref code: InstitutionCode, val id: i64) -> Option<Operator>;
        fn operator_by_serial(ref code: InstitutionCode, ref serial: CertSerial) -> Option<Operator>;
        fn receipts(ref code: InstitutionCode) -> Vec<Receipt>;
        fn reviews(ref code: InstitutionCode) -> Vec<ReviewApplication>;
        fn review(val id: i64) -> Option<ReviewApplication>;
        fn pending_reviews() -> Vec<ReviewApplication>;
        fn decided_reviews(val limit: i64) -> Vec<ReviewApplication>;
        fn codes_by_serial(ref serial: CertSerial) -> Vec<InstitutionCode>;
        fn registered_codes() -> Vec<InstitutionCode>;
        fn notice_claim(val day: Date, ref keys: [String]) -> Vec<bool>;
        fn notice_release(val day: Date, ref keys: [String]) -> ();
        fn add_reviewer(ref name: str, val section: Section, ref serial: CertSerial) -> i64;
        fn reviewers() -> Vec<Reviewer>;
        fn learn_reviewer_issuer(val id: i64, ref serial: CertSerial, ref issuer: str) -> ();
        fn set_reviewer_active(val id: i64, val active: bool) -> ();
        fn calendar_days() -> Vec<CalendarDay>;
        fn import_calendar(ref days: [CalendarDay]) -> ();
        fn verify_audit() -> AuditReport;
        fn audit_search(ref filter: AuditFilter) -> Vec<(i64, AuditEvent)>;
    }
    SessionStore {
        fn session_insert(ref record: SessionRecord) -> ();
        fn session_update(ref record: SessionRecord) -> SessionSaved;
        fn session_touch(ref id: str, val touched_at: OffsetDateTime, val expires_at: OffsetDateTime) -> bool;
        fn session_get(ref id: str, val now: OffsetDateTime) -> Option<SessionRecord>;
        fn session_get_with_flow(ref id: str, val now: OffsetDateTime, ref flow_id: str) -> (Option<SessionRecord>, Option<Flow>);
        fn session_supersede(ref id: str, val until: OffsetDateTime) -> ();
        fn session_delete(ref id: str) -> ();
        fn sessions_live(val now: OffsetDateTime) -> Vec<SessionRecord>;
        fn token_session_put(ref sid: str, ref session_id: str) -> ();
        fn token_session(ref sid: str) -> Option<String>;
        fn signing_keys(val now: OffsetDateTime) -> Vec<SigningKeyRecord>;
        fn signing_key_add_first(ref key: SigningKeyRecord) -> bool;
        fn signing_key_rotate(ref key: SigningKeyRecord, val publish_until: OffsetDateTime) -> ();
    }
}
