//! The audit log's hash chain: how a row's hash is computed and how the chain is checked.
//! Each row's hash is SHA-256 over the previous row's hash and the canonical JSON of the row
//! (its sequence number included), so a changed, deleted or reordered row breaks a link.

use crate::codec::ts;
use domain::model::AuditEvent;
use domain::store::AuditReport;
use ring::digest;
use serde::Serialize;

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
    /// The row that follows `prev_hash` as number `seq`.
    pub fn new(seq: i64, prev_hash: String, e: &AuditEvent) -> Self {
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
        row.hash = row.compute_hash();
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

    /// SHA-256(prev_hash ‖ canonical JSON), hex.
    pub fn compute_hash(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(self.prev_hash.as_bytes());
        ctx.update(self.canonical_json().as_bytes());
        crate::secrets::hex(ctx.finish().as_ref())
    }
}

/// Walks the chain in `seq` order. Rows arrive in pages, so the walk keeps its state here.
#[derive(Debug)]
pub struct ChainCheck {
    expected_seq: i64,
    prev_hash: String,
    events: u64,
    broken: Option<(u64, String)>,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS.to_string(),
            events: 0,
            broken: None,
        }
    }
}

impl ChainCheck {
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
        } else if row.compute_hash() != row.hash {
            self.fail(seq, format!("row {seq} was changed after it was written"));
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
