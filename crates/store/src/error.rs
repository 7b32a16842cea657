//! The store's own failures (connecting, migrating, keys) and the mapping of database
//! constraint violations to domain errors, by constraint name.

use domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Only `sqlite:`, `postgres://` and `postgresql://` URLs are accepted, so that a typo never
    /// creates a new empty database.
    #[error(
        "unsupported database URL {0:?}: use sqlite://PATH, sqlite::memory:, postgres://… or postgresql://…"
    )]
    UnsupportedScheme(String),
    // The cause is in the message and deliberately not a `source`, so that a printed chain
    // does not repeat it.
    #[error("database: {0}")]
    Db(sqlx::Error),
    #[error("database: {0}")]
    Sqlite(crate::lite::Error),
    #[error("migration: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("key: {0}")]
    Key(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e)
    }
}

impl From<crate::lite::Error> for StoreError {
    fn from(e: crate::lite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

impl From<StoreError> for DomainError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => map_db_error(e, None),
            StoreError::Sqlite(e) => map_db_error(e, None),
            other => DomainError::Storage(other.to_string()),
        }
    }
}

/// Every named constraint the domain cares about, and what its violation means. The migrations
/// of both backends name their constraints with exactly these names.
type MakeError = fn() -> DomainError;

const CONSTRAINTS: &[(&str, MakeError)] = &[
    ("registrations_pkey", || DomainError::AlreadyRegistered),
    ("registrations_code_fkey", || DomainError::UnknownAgency),
    ("cert_history_code_fkey", || DomainError::NotRegistered),
    ("operators_code_serial_key", || {
        DomainError::DuplicateOperator
    }),
    ("operators_code_fkey", || DomainError::NotRegistered),
    ("reviews_code_fkey", || DomainError::UnknownAgency),
    ("receipts_code_fkey", || DomainError::UnknownAgency),
    ("flows_pkey", || DomainError::Conflict),
    ("challenges_pkey", || DomainError::Conflict),
    ("challenges_flow_id_fkey", || DomainError::FlowNotFound),
    ("reviews_pending_card_key", || DomainError::ReviewPending),
    ("signing_keys_one_current_idx", || DomainError::Conflict),
    ("reviewers_cert_serial_key", || {
        DomainError::invalid(
            "cert_serial",
            "a reviewer with this certificate serial exists",
            "此憑證序號已建立審核人員帳號",
        )
    }),
];

/// SQLite names the columns of a violated UNIQUE or PRIMARY KEY constraint, never the
/// constraint: this maps SQLite's `table.column, …` list back to the constraint's name.
const SQLITE_UNIQUE_COLUMNS: &[(&str, &str)] = &[
    ("registrations.code", "registrations_pkey"),
    (
        "operators.code, operators.serial",
        "operators_code_serial_key",
    ),
    ("flows.id", "flows_pkey"),
    ("challenges.id", "challenges_pkey"),
    ("reviewers.cert_serial", "reviewers_cert_serial_key"),
    (
        "reviews.org_issuer, reviews.org_serial",
        "reviews_pending_card_key",
    ),
];

/// What the mapping needs to know of a driver's failure.
pub(crate) trait DbFailure: std::fmt::Display {
    /// The database could not take the request now, and rolled it back: PostgreSQL's
    /// serialization failure, deadlock and lock timeout; SQLite's busy (another process's
    /// writer outlasted the busy timeout). SQLite's "locked" is a conflict inside one
    /// connection: a bug, reported as such.
    fn busy(&self) -> bool;

    /// The name of the violated constraint. PostgreSQL reports it; SQLite reports the columns
    /// of a unique key and nothing at all for a foreign key, so a statement that can violate
    /// one foreign key passes its name as `fk`.
    fn constraint(&self, fk: Option<&'static str>) -> Option<String>;

    /// Tells the driver's connection pool of the failure (one that may have broken its
    /// connection is checked before the connection is used again).
    fn note(&self) {}
}

impl DbFailure for sqlx::Error {
    fn note(&self) {
        crate::write::note_failure(self);
    }

    fn busy(&self) -> bool {
        let sqlx::Error::Database(e) = self else {
            return false;
        };
        e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some()
            && matches!(e.code().as_deref(), Some("40001" | "40P01" | "55P03"))
    }

    fn constraint(&self, fk: Option<&'static str>) -> Option<String> {
        let sqlx::Error::Database(e) = self else {
            return None;
        };
        match e.constraint() {
            Some(name) => Some(name.to_string()),
            None => matches!(e.kind(), sqlx::error::ErrorKind::ForeignKeyViolation)
                .then(|| fk.map(str::to_string))
                .flatten(),
        }
    }
}

/// SQLite's extended result codes of the constraints the mapping knows.
const SQLITE_CONSTRAINT_FOREIGNKEY: i32 = 787;
const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;
const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;

impl DbFailure for crate::lite::Error {
    fn busy(&self) -> bool {
        // Extended result codes carry the primary code in their low byte.
        self.extended_code().is_some_and(|c| c & 0xff == 5)
    }

    fn constraint(&self, fk: Option<&'static str>) -> Option<String> {
        match self.extended_code()? {
            SQLITE_CONSTRAINT_FOREIGNKEY => fk.map(str::to_string),
            SQLITE_CONSTRAINT_PRIMARYKEY | SQLITE_CONSTRAINT_UNIQUE => {
                let columns = self.message()?.split_once("constraint failed: ")?.1.trim();
                // An index on an expression is named rather than listed by columns.
                if let Some(index) = columns.strip_prefix("index '") {
                    return index.strip_suffix('\'').map(str::to_string);
                }
                SQLITE_UNIQUE_COLUMNS
                    .iter()
                    .find(|(cols, _)| *cols == columns)
                    .map(|(_, name)| name.to_string())
            }
            _ => None,
        }
    }
}

/// A database error as the domain sees it: a known constraint becomes its domain error,
/// anything else is a storage failure.
pub(crate) fn map_db_error(e: impl DbFailure, fk: Option<&'static str>) -> DomainError {
    e.note();
    if e.busy() {
        tracing::warn!(error = %e, "database busy");
        return DomainError::Busy;
    }
    if let Some(name) = e.constraint(fk)
        && let Some((_, make)) = CONSTRAINTS.iter().find(|(n, _)| *n == name)
    {
        return make();
    }
    tracing::error!(error = %e, "database error");
    DomainError::Storage(e.to_string())
}

/// The constraint names the mapping knows, for the test that checks both migrations name them.
pub fn mapped_constraints() -> impl Iterator<Item = &'static str> {
    CONSTRAINTS.iter().map(|(n, _)| *n)
}
