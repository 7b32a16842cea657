//! The schema migrations, embedded in the binary. Each migration exists once per backend under
//! the same file name (`migrations/sqlite/N_name.sql`, `migrations/postgres/N_name.sql`);
//! pairing them here makes a migration for only one backend impossible to register.

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use std::borrow::Cow;

pub struct MigrationPair {
    pub version: i64,
    pub file_name: &'static str,
    pub description: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

// Embedded by hand rather than with `sqlx::migrate!`: the macro needs sqlx's proc-macro crate
// built with both drivers, bundled SQLite included, a second time for the host.
pub const MIGRATIONS: &[MigrationPair] = &[
    MigrationPair {
        version: 1,
        file_name: "0001_init.sql",
        description: "init",
        sqlite: include_str!("../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../migrations/postgres/0001_init.sql"),
    },
    MigrationPair {
        version: 2,
        file_name: "0002_calendar.sql",
        description: "calendar",
        sqlite: include_str!("../migrations/sqlite/0002_calendar.sql"),
        postgres: include_str!("../migrations/postgres/0002_calendar.sql"),
    },
    MigrationPair {
        version: 3,
        file_name: "0003_signing_keys.sql",
        description: "signing keys",
        sqlite: include_str!("../migrations/sqlite/0003_signing_keys.sql"),
        postgres: include_str!("../migrations/postgres/0003_signing_keys.sql"),
    },
    MigrationPair {
        version: 4,
        file_name: "0004_operator_cert.sql",
        description: "operator cert",
        sqlite: include_str!("../migrations/sqlite/0004_operator_cert.sql"),
        postgres: include_str!("../migrations/postgres/0004_operator_cert.sql"),
    },
    MigrationPair {
        version: 5,
        file_name: "0005_notices_sent.sql",
        description: "notices sent",
        sqlite: include_str!("../migrations/sqlite/0005_notices_sent.sql"),
        postgres: include_str!("../migrations/postgres/0005_notices_sent.sql"),
    },
    MigrationPair {
        version: 6,
        file_name: "0006_session_keys.sql",
        description: "session keys",
        sqlite: include_str!("../migrations/sqlite/0006_session_keys.sql"),
        postgres: include_str!("../migrations/postgres/0006_session_keys.sql"),
    },
    MigrationPair {
        version: 7,
        file_name: "0007_flows_session_idx.sql",
        description: "flows session idx",
        sqlite: include_str!("../migrations/sqlite/0007_flows_session_idx.sql"),
        postgres: include_str!("../migrations/postgres/0007_flows_session_idx.sql"),
    },
    MigrationPair {
        version: 8,
        file_name: "0008_reviews_pending_card.sql",
        description: "reviews pending card",
        sqlite: include_str!("../migrations/sqlite/0008_reviews_pending_card.sql"),
        postgres: include_str!("../migrations/postgres/0008_reviews_pending_card.sql"),
    },
    MigrationPair {
        version: 9,
        file_name: "0009_row_bound_values.sql",
        description: "row bound values",
        sqlite: include_str!("../migrations/sqlite/0009_row_bound_values.sql"),
        postgres: include_str!("../migrations/postgres/0009_row_bound_values.sql"),
    },
    MigrationPair {
        version: 10,
        file_name: "0010_operator_validity.sql",
        description: "operator validity",
        sqlite: include_str!("../migrations/sqlite/0010_operator_validity.sql"),
        postgres: include_str!("../migrations/postgres/0010_operator_validity.sql"),
    },
    MigrationPair {
        version: 11,
        file_name: "0011_receipt_terms.sql",
        description: "receipt terms",
        sqlite: include_str!("../migrations/sqlite/0011_receipt_terms.sql"),
        postgres: include_str!("../migrations/postgres/0011_receipt_terms.sql"),
    },
    MigrationPair {
        version: 12,
        file_name: "0012_flow_start.sql",
        description: "flow start",
        sqlite: include_str!("../migrations/sqlite/0012_flow_start.sql"),
        postgres: include_str!("../migrations/postgres/0012_flow_start.sql"),
    },
];

/// A migration's checksum as sqlx records it: SHA-384 of its text.
pub(crate) fn checksum(sql: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA384, sql.as_bytes())
        .as_ref()
        .to_vec()
}

/// PostgreSQL's migrator (SQLite's migrations run in `sqlite::migrate`).
pub(crate) fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|m| {
                let sql = m.postgres;
                Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}
