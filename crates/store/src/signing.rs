//! Storage of the keys that sign the operators' tokens for other systems (the web crate's
//! `token.rs`), and of the handles by which those tokens name their sessions.
//!
//! The keys live in the database (table `signing_keys`, migration 0003), not in a file: every
//! instance sharing a PostgreSQL database signs with, and publishes, the same keys, and a backup
//! of the database and its key file carries them. The private keys (PKCS#8) are encrypted with
//! the store's secrets, like session data.

use crate::Db;
use domain::Result;
use time::OffsetDateTime;

pub(crate) const ENC_SIGNING_KEY: &str = "signing_keys.private";

pub use domain::store::SigningKeyRecord;

impl Db {
    /// The keys still published at `now`, newest first (the current one, if any, first).
    pub async fn signing_keys(&self, now: OffsetDateTime) -> Result<Vec<SigningKeyRecord>> {
        dispatch!(self, ops, p => ops::signing_keys(p, &self.secrets, now).await)
    }

    /// Stores `key` as the current key unless there already is one; whether it was stored.
    pub async fn signing_key_add_first(&self, key: &SigningKeyRecord) -> Result<bool> {
        write_dispatch!(self, ops, p => ops::signing_key_add_first(p, &self.secrets, key).await)
    }

    /// Makes `key` the current key: the current one is retired at `key.created_at` and stays
    /// published until `publish_until`; keys past their `publish_until` are deleted.
    pub async fn signing_key_rotate(
        &self,
        key: &SigningKeyRecord,
        publish_until: OffsetDateTime,
    ) -> Result<()> {
        write_dispatch!(self, ops, p => ops::signing_key_rotate(p, &self.secrets, key, publish_until).await)
    }

    /// Records that the token handle `sid` names the session `session_id` (the record goes
    /// when the session is deleted).
    pub async fn token_session_put(&self, sid: &str, session_id: &str) -> Result<()> {
        write_dispatch!(self, ops, p => ops::token_session_put(p, sid, session_id).await)
    }

    /// The session a token handle names, if that session is still on file.
    pub async fn token_session(&self, sid: &str) -> Result<Option<String>> {
        dispatch!(self, ops, p => ops::token_session(p, sid).await)
    }
}
