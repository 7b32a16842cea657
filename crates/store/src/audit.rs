//! The audit log's hash chain: how a row's hash is computed and how the chain is checked.
//! Each row's hash is HMAC-SHA256, keyed with a key derived from the key file (never stored in
//! the database), over the previous row's hash and the canonical JSON of the row (its sequence
//! number included), so a changed, deleted or reordered row breaks a link, and someone who can
//! write the database but has no key file cannot forge new links.
//!
//! Chain versions: a keyed hash is written `v2:` + hex. Rows written before the chain was keyed
//! carry bare hex SHA-256 (version 1); they are still checked, may only come before every keyed
//! row, and must be followed by one: [`seal_row`] appends a keyed `audit.chain_keyed` row when
//! a database whose chain ends unkeyed is first opened with its key (`certreg serve`,
//! `certreg migrate`), so a chain that ends unkeyed was rewritten.

use crate::codec::ts;
use domain::model::AuditEvent;
use domain::store::AuditReport;
use ring::{digest, hmac};
use serde::Serialize;

/// The prefix of a keyed (version 2) hash.
pub const KEYED: &str = "v2:";

/// The action of the row that seals an unkeyed (version 1) chain under the key.
pub const CHAIN_KEYED_ACTION: &str = "audit.chain_keyed";

/// The key of the chain: derived from the key file's hash key, so it is never in the database.
#[derive(Clone)]
pub struct ChainKey(hmac::Key);

impl ChainKey {
    /// The key of `secrets` (derived once, when the secrets are read).
    pub fn new(secrets: &crate::secrets::Secrets) -> Self {
        secrets.chain_key().clone()
    }

    /// The key derived from the key file's hash key.
    pub(crate) fn derive(hash_key: &[u8; 32]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, hash_key);
        let derived = hmac::sign(&root, b"certreg audit chain v2");
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

/// Whether a stored hash is of the keyed chain.
pub fn is_keyed(hash: &str) -> bool {
    hash.starts_with(KEYED)
}

/// The event that seals an unkeyed chain of `seq` rows ending in `hash`.
pub fn seal_row(at: time::OffsetDateTime, seq: i64, hash: &str) -> AuditEvent {
    AuditEvent::new(at, "system", CHAIN_KEYED_ACTION, "ok")
        .detail(serde_json::json!({"unkeyed_rows": seq, "unkeyed_head": hash}))
}

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit row as stored: exactly the values that are hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub code: Option<String>,
    pub cert: Option<String>,
    pub client: Option<String>,
    pub action: String,
    pub outcome: String,
    /// The detail as JSON text, hashed as text: re-serialising could reorder keys.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Field order is the canonical order; changing it invalidates every stored chain.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    at: i64,
    actor: &'a str,
    code: Option<&'a str>,
    cert: Option<&'a str>,
    client: Option<&'a str>,
    action: &'a str,
    outcome: &'a str,
    detail: &'a str,
}

impl AuditRow {
    /// The row that follows `prev_hash` as number `seq`, linked with `key`.
    pub fn new(seq: i64, prev_hash: String, e: &AuditEvent, key: &ChainKey) -> Self {
        let mut row = Self {
            seq,
            at: ts(e.at),
            actor: e.actor.clone(),
            code: e.code.as_ref().map(|c| c.as_str().to_string()),
            cert: e.cert.clone(),
            client: e.client.clone(),
            action: e.action.clone(),
            outcome: e.outcome.clone(),
            detail: e.detail.to_string(),
            prev_hash,
            hash: String::new(),
        };
        row.hash = row.keyed_hash(key);
        row
    }

    pub fn canonical_json(&self) -> String {
        let c = Canonical {
            seq: self.seq,
            at: self.at,
            actor: &self.actor,
            code: self.code.as_deref(),
            cert: self.cert.as_deref(),
            client: self.client.as_deref(),
            action: &self.action,
            outcome: &self.outcome,
            detail: &self.detail,
        };
        // Serialising strings and integers cannot fail.
        serde_json::to_string(&c).unwrap_or_default()
    }

    /// `v2:` + hex HMAC-SHA256(key, prev_hash ‖ canonical JSON).
    pub fn keyed_hash(&self, key: &ChainKey) -> String {
        let mut ctx = hmac::Context::with_key(&key.0);
        ctx.update(self.prev_hash.as_bytes());
        ctx.update(self.canonical_json().as_bytes());
        format!("{KEYED}{}", crate::secrets::hex(ctx.sign().as_ref()))
    }

    /// Version 1 (before the chain was keyed): SHA-256(prev_hash ‖ canonical JSON), hex.
    pub fn unkeyed_hash(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(self.prev_hash.as_bytes());
        ctx.update(self.canonical_json().as_bytes());
        crate::secrets::hex(ctx.finish().as_ref())
    }
}

/// Walks the chain in `seq` order. Rows arrive in pages, so the walk keeps its state here.
#[derive(Debug)]
pub struct ChainCheck {
    key: ChainKey,
    expected_seq: i64,
    prev_hash: String,
    events: u64,
    /// The first of the unkeyed rows at the end of the chain so far.
    unkeyed_tail: Option<i64>,
    broken: Option<(u64, String)>,
}

impl ChainCheck {
    pub fn new(key: ChainKey) -> Self {
        Self {
            key,
            expected_seq: 1,
            prev_hash: GENESIS.to_string(),
            events: 0,
            unkeyed_tail: None,
            broken: None,
        }
    }

    /// Checks the next row; after the first broken link the rest is only counted.
    pub fn push(&mut self, row: &AuditRow) {
        self.events += 1;
        if self.broken.is_some() {
            return;
        }
        let seq = self.expected_seq;
        if row.seq != seq {
            self.fail(
                seq,
                format!("row {seq} is missing (the next row is {})", row.seq),
            );
        } else if row.prev_hash != self.prev_hash {
            self.fail(seq, format!("row {seq} does not link to the row before it (deleted, inserted or reordered rows)"));
        } else if is_keyed(&row.hash) {
            if row.keyed_hash(&self.key) != row.hash {
                self.fail(seq, format!("row {seq} was changed after it was written (or the key file is not this database's)"));
            } else if self.unkeyed_tail.is_some() && row.action != CHAIN_KEYED_ACTION {
                // Unkeyed rows are only ever taken in by the seal written under the key; any
                // other keyed row on top of them means they were written after the keying.
                self.fail(
                    seq,
                    format!("row {seq} is keyed but the unkeyed rows before it were never sealed: the chain was rewritten"),
                );
            }
            self.unkeyed_tail = None;
        } else if is_keyed(&self.prev_hash) {
            self.fail(
                seq,
                format!("row {seq} is not keyed but follows keyed rows: the chain was rewritten"),
            );
        } else if row.unkeyed_hash() != row.hash {
            self.fail(seq, format!("row {seq} was changed after it was written"));
        } else {
            self.unkeyed_tail.get_or_insert(seq);
        }
        self.expected_seq = row.seq + 1;
        self.prev_hash = row.hash.clone();
    }

    /// The last row seen against the chain head, which every append updates: rows deleted from
    /// the end leave the head pointing past them.
    pub fn finish(mut self, head_seq: i64, head_hash: &str) -> AuditReport {
        let last = self.expected_seq - 1;
        if self.broken.is_none() {
            if head_seq > last {
                self.fail(
                    last + 1,
                    format!("rows {} to {head_seq} are missing from the end", last + 1),
                );
            } else if head_seq < last {
                self.fail(
                    head_seq + 1,
                    format!("rows after {head_seq} were added outside the store"),
                );
            } else if head_hash != self.prev_hash {
                self.fail(last, format!("row {last} does not match the chain head"));
            } else if let Some(first) = self.unkeyed_tail {
                self.fail(
                    first,
                    format!("rows {first} to {last} are not keyed: the chain was rewritten, or it predates keying and the database has not been opened with its key file since (certreg migrate or certreg serve seals it)"),
                );
            }
        }
        let (first_broken, detail) = match self.broken {
            Some((seq, detail)) => (Some(seq), Some(detail)),
            None => (None, None),
        };
        AuditReport {
            events: self.events,
            first_broken,
            detail,
        }
    }

    fn fail(&mut self, seq: i64, detail: String) {
        self.broken = Some((seq as u64, detail));
    }
}
