//! What the domain needs from storage. Reads are plain queries; every state change is one
//! [`Commit`], which the store applies in one transaction — all of it or none of it — mapping
//! its constraints to domain errors (already registered, duplicate operator, conflict).

use crate::calendar::CalendarDay;
use crate::error::Result;
use crate::flow::{Flow, Step};
use crate::model::*;
use crate::types::{CertSerial, InstitutionCode};
use std::future::Future;
use time::OffsetDateTime;

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
}

/// Ids the store assigned while applying a commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub operator_id: Option<i64>,
    pub review_id: Option<i64>,
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
/// PostgreSQL, and by an in-memory store in the domain's tests.
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
    /// never pass the cap together.
    fn insert_flow_capped(
        &self,
        flow: &Flow,
        max: u64,
        live_since: OffsetDateTime,
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
